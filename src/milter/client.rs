//! The tokio driver: one milter connection per client session, over TCP or a unix socket,
//! with Postfix's timeouts.
//!
//! # Timeouts
//!
//! * `connect_timeout` (30 s): connecting plus option negotiation.
//! * `command_timeout` (30 s): each write and each reply wait at connect, helo, mail,
//!   rcpt, data.
//! * `content_timeout` (300 s): the same at header, end of headers, body and end of
//!   message.
//!
//! `SMFIR_PROGRESS` means "still working": like Postfix, every frame the milter sends
//! restarts the reply timer. Unlike Postfix, the total wait for one event is bounded by
//! `content_timeout` even then — a milter that says PROGRESS forever would otherwise keep
//! the SMTP client waiting past its own 10-minute DATA timeout (RFC 5321 §4.5.3.2.6), and
//! it would resend the message.
//!
//! # Failures
//!
//! Every failure is a [`MilterError`] tagged with the milter's name, the [`Stage`] and an
//! [`ErrorKind`], so the caller can apply the milter's `default_action` and count it. After
//! one, the connection is closed and every later call answers
//! [`ErrorKind::Failed`] at once: as in Postfix, a broken milter stays broken for the rest
//! of the SMTP session (the default action applies to everything after it). Refused input
//! ([`ErrorKind::Input`]) is the exception: nothing was sent, the connection stays usable.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, timeout, timeout_at};

use super::codec::{CodecError, DEFAULT_MAX_FRAME, FrameDecoder};
use super::config::{MilterConfig, MilterEndpoint};
use super::conversation::{
    BODY_CHUNK, Conversation, EditLimits, EomOutcome, Event, Plan, ProtocolError, Stage, Step,
};
use super::macros::MacroValues;
use super::negotiate::{Negotiated, NegotiationError, Offer, negotiate};
use super::protocol::{MilterReply, valid_header_name};

/// A byte stream to a milter (TCP, unix socket, or an in-memory pipe in tests).
pub trait MilterIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> MilterIo for T {}

/// A failure talking to one milter.
#[derive(Debug, thiserror::Error)]
#[error("milter {milter}: {kind} (at {stage})")]
pub struct MilterError {
    pub milter: String,
    pub stage: Stage,
    #[source]
    pub kind: ErrorKind,
}

impl MilterError {
    /// A short label for metrics and logs: `connect`, `timeout`, `not_a_milter`,
    /// `negotiation`, `protocol`, `closed`, `io`, `input`, `failed`.
    pub fn label(&self) -> &'static str {
        self.kind.label()
    }

    /// Whether the milter is at fault (not the caller's input): the `default_action`
    /// applies.
    pub fn is_milter_failure(&self) -> bool {
        !matches!(self.kind, ErrorKind::Input(_))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ErrorKind {
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The peer speaks some text protocol: a wrong port (clamd's instead of
    /// clamav-milter's, rspamd's HTTP worker instead of its proxy).
    #[error("peer at {endpoint} is not a milter: it sent {text:?} (is this the milter's port?)")]
    NotAMilter { endpoint: String, text: String },
    #[error("negotiation refused: {0}")]
    Negotiation(#[from] NegotiationError),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("connection closed by the milter")]
    Closed,
    #[error("I/O error: {0}")]
    Io(#[source] std::io::Error),
    /// The caller's data cannot be sent (NUL, a bad header name); nothing was sent.
    #[error("{0}")]
    Input(String),
    /// The connection failed earlier in this session.
    #[error("unusable after an earlier failure: {0}")]
    Failed(String),
}

impl ErrorKind {
    pub fn class(&self) -> ErrorClass {
        match self {
            ErrorKind::Connect { .. } => ErrorClass::Connect,
            ErrorKind::Timeout(_) => ErrorClass::Timeout,
            ErrorKind::NotAMilter { .. } => ErrorClass::NotAMilter,
            ErrorKind::Negotiation(_) => ErrorClass::Negotiation,
            ErrorKind::Protocol(_) => ErrorClass::Protocol,
            ErrorKind::Closed => ErrorClass::Closed,
            ErrorKind::Io(_) => ErrorClass::Io,
            ErrorKind::Input(_) => ErrorClass::Input,
            ErrorKind::Failed(_) => ErrorClass::Failed,
        }
    }

    pub fn label(&self) -> &'static str {
        self.class().as_str()
    }
}

/// An [`ErrorKind`] without its details: the `kind` of log lines and of
/// `mxguard_filter_errors_total`, one list that counts and initialises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    Connect,
    Timeout,
    NotAMilter,
    Negotiation,
    Protocol,
    Closed,
    Io,
    Input,
    Failed,
}

impl ErrorClass {
    pub const ALL: [ErrorClass; 9] = [
        ErrorClass::Connect,
        ErrorClass::Timeout,
        ErrorClass::NotAMilter,
        ErrorClass::Negotiation,
        ErrorClass::Protocol,
        ErrorClass::Closed,
        ErrorClass::Io,
        ErrorClass::Input,
        ErrorClass::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Connect => "connect",
            ErrorClass::Timeout => "timeout",
            ErrorClass::NotAMilter => "not_a_milter",
            ErrorClass::Negotiation => "negotiation",
            ErrorClass::Protocol => "protocol",
            ErrorClass::Closed => "closed",
            ErrorClass::Io => "io",
            ErrorClass::Input => "input",
            ErrorClass::Failed => "failed",
        }
    }
}

/// One negotiated connection to a milter, for one SMTP session.
pub struct MilterClient {
    name: String,
    endpoint: String,
    io: Option<Box<dyn MilterIo>>,
    decoder: FrameDecoder,
    conv: Conversation,
    command_timeout: Duration,
    content_timeout: Duration,
    /// Why the connection is unusable, once it is.
    failed: Option<String>,
    out: Vec<u8>,
    read_buf: Vec<u8>,
}

impl std::fmt::Debug for MilterClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MilterClient")
            .field("name", &self.name)
            .field("endpoint", &self.endpoint)
            .field("negotiated", self.conv.negotiated())
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl MilterClient {
    /// Connects to the configured milter and negotiates, all within `connect_timeout`.
    pub async fn open(cfg: &MilterConfig) -> Result<MilterClient, MilterError> {
        let endpoint = cfg.milter.to_string();
        let fail = |kind| MilterError {
            milter: cfg.name.clone(),
            stage: Stage::Negotiate,
            kind,
        };
        let deadline = Instant::now() + cfg.connect_timeout;
        let io: Box<dyn MilterIo> = match timeout_at(deadline, connect(&cfg.milter)).await {
            Err(_) => return Err(fail(ErrorKind::Timeout(cfg.connect_timeout))),
            Ok(Err(source)) => return Err(fail(ErrorKind::Connect { endpoint, source })),
            Ok(Ok(io)) => io,
        };
        Self::negotiate_until(cfg, endpoint, io, deadline).await
    }

    /// Negotiates over an already connected stream (within `connect_timeout`).
    pub async fn over_stream(
        cfg: &MilterConfig,
        io: impl MilterIo + 'static,
    ) -> Result<MilterClient, MilterError> {
        let deadline = Instant::now() + cfg.connect_timeout;
        Self::negotiate_until(cfg, cfg.milter.to_string(), Box::new(io), deadline).await
    }

    async fn negotiate_until(
        cfg: &MilterConfig,
        endpoint: String,
        io: Box<dyn MilterIo>,
        deadline: Instant,
    ) -> Result<MilterClient, MilterError> {
        let mut io = io;
        let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
        let offer = Offer::mxguard();
        let result = timeout_at(deadline, async {
            let mut out = Vec::new();
            offer
                .encode(&mut out)
                .map_err(|e| ErrorKind::Protocol(e.to_string()))?;
            write_all(&mut io, &out).await?;
            let mut buf = vec![0u8; 4096];
            loop {
                match decoder.next_frame() {
                    Ok(Some(frame)) => {
                        return negotiate(&offer, &frame, cfg.tolerate_unoffered_actions)
                            .map_err(ErrorKind::from);
                    }
                    Ok(None) => {}
                    Err(e) => return Err(codec_error(e, &endpoint)),
                }
                read_some(&mut io, &mut decoder, &mut buf, &endpoint).await?;
            }
        })
        .await;
        let fail = |kind| MilterError {
            milter: cfg.name.clone(),
            stage: Stage::Negotiate,
            kind,
        };
        let negotiated = match result {
            Err(_) => {
                return Err(fail(match decoder.pending_text() {
                    Some(text) => ErrorKind::NotAMilter { endpoint, text },
                    None => ErrorKind::Timeout(cfg.connect_timeout),
                }));
            }
            Ok(Err(kind)) => return Err(fail(kind)),
            Ok(Ok(n)) => n,
        };
        log_negotiation(&cfg.name, &negotiated);
        Ok(MilterClient {
            name: cfg.name.clone(),
            endpoint,
            io: Some(io),
            decoder,
            conv: Conversation::new(negotiated, EditLimits::default()),
            command_timeout: cfg.command_timeout,
            content_timeout: cfg.content_timeout,
            failed: None,
            out: Vec::new(),
            read_buf: vec![0u8; 16 * 1024],
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the milter negotiated (version, actions, protocol flags, macro lists).
    pub fn negotiated(&self) -> &Negotiated {
        self.conv.negotiated()
    }

    /// The client connected: `hostname` is its verified name (`None`: sent as
    /// `[address]`). `Accept` here means: no more events for this connection.
    pub async fn connect(
        &mut self,
        hostname: Option<&str>,
        addr: Option<SocketAddr>,
        macros: &MacroValues,
    ) -> Result<MilterReply, MilterError> {
        self.event(Event::Connect { hostname, addr }, macros).await
    }

    /// HELO/EHLO (also the EHLO after STARTTLS, with the TLS macros set).
    pub async fn helo(
        &mut self,
        name: &str,
        macros: &MacroValues,
    ) -> Result<MilterReply, MilterError> {
        self.event(Event::Helo(name), macros).await
    }

    /// MAIL FROM: `sender` without angle brackets, `params` the ESMTP parameters. A
    /// transaction still open on the milter is aborted first.
    pub async fn mail(
        &mut self,
        sender: &str,
        params: &[&str],
        macros: &MacroValues,
    ) -> Result<MilterReply, MilterError> {
        self.event(Event::Mail { sender, params }, macros).await
    }

    /// RCPT TO (set `{rcpt_addr}` etc. in `macros` first).
    pub async fn rcpt(
        &mut self,
        recipient: &str,
        params: &[&str],
        macros: &MacroValues,
    ) -> Result<MilterReply, MilterError> {
        self.event(Event::Rcpt { recipient, params }, macros).await
    }

    pub async fn data(&mut self, macros: &MacroValues) -> Result<MilterReply, MilterError> {
        self.event(Event::Data, macros).await
    }

    /// One header field, in message order: `value` is everything after the colon up to
    /// (not including) the field's final CRLF.
    pub async fn header(
        &mut self,
        name: &str,
        value: &[u8],
        macros: &MacroValues,
    ) -> Result<MilterReply, MilterError> {
        self.event(Event::Header { name, value }, macros).await
    }

    pub async fn end_of_headers(
        &mut self,
        macros: &MacroValues,
    ) -> Result<MilterReply, MilterError> {
        self.event(Event::Eoh, macros).await
    }

    /// Body bytes (CRLF line ends), sent in chunks of at most 65,535 bytes. Returns the
    /// first answer that is not `Continue`: `Skip` means the milter wants no more body.
    pub async fn body(
        &mut self,
        body: &[u8],
        macros: &MacroValues,
    ) -> Result<MilterReply, MilterError> {
        for chunk in body.chunks(BODY_CHUNK) {
            let r = self.event(Event::Body(chunk), macros).await?;
            if r != MilterReply::Continue {
                return Ok(r);
            }
        }
        Ok(MilterReply::Continue)
    }

    /// End of message: the decision with the edits requested before it.
    pub async fn end_of_message(
        &mut self,
        macros: &MacroValues,
    ) -> Result<EomOutcome, MilterError> {
        let reply = self.event(Event::Eom, macros).await?;
        Ok(self.conv.take_eom_outcome(reply))
    }

    /// Sends a whole message (CRLF line ends): each header field, end of headers, the body,
    /// end of message — stopping at the first decisive answer. For callers without their
    /// own header index.
    pub async fn message(
        &mut self,
        message: &[u8],
        macros: &MacroValues,
    ) -> Result<EomOutcome, MilterError> {
        let (fields, body) = split_message(message);
        for (name, value) in fields {
            let r = self.header(name, value, macros).await?;
            if is_decisive(&r) {
                return Ok(self.conv.take_eom_outcome(r));
            }
        }
        let r = self.end_of_headers(macros).await?;
        if is_decisive(&r) {
            return Ok(self.conv.take_eom_outcome(r));
        }
        if !body.is_empty() {
            let r = self.body(body, macros).await?;
            if is_decisive(&r) {
                return Ok(self.conv.take_eom_outcome(r));
            }
        }
        self.end_of_message(macros).await
    }

    /// Ends the transaction on the milter (RSET, a refused MAIL, after end of message,
    /// HELO again). `mail` does it by itself when needed.
    pub async fn abort(&mut self) -> Result<(), MilterError> {
        self.usable(Stage::Abort)?;
        if let Err(e) = self.conv.abort(&mut self.out) {
            return Err(self.protocol_failure(Stage::Abort, e));
        }
        self.flush(Stage::Abort).await
    }

    /// Says QUIT (when the milter still listens) and closes the connection.
    pub async fn quit(mut self) {
        if self.failed.is_some() || self.io.is_none() {
            return;
        }
        if self.conv.quit(&mut self.out).is_ok() {
            let _ = self.flush(Stage::Quit).await;
        }
        if let Some(mut io) = self.io.take() {
            let _ = timeout(self.command_timeout, io.shutdown()).await;
        }
    }

    async fn event(
        &mut self,
        event: Event<'_>,
        macros: &MacroValues,
    ) -> Result<MilterReply, MilterError> {
        let stage = event.stage();
        self.usable(stage)?;
        let plan = match self.conv.begin(&event, macros, &mut self.out) {
            Ok(p) => p,
            Err(e) => return Err(self.protocol_failure(stage, e)),
        };
        self.flush(stage).await?;
        let reply = match plan {
            Plan::Answered(r) => r,
            Plan::Sent => MilterReply::Continue,
            Plan::Await => self.await_final(stage).await?,
        };
        if self.conv.connection_done() {
            self.io = None;
        }
        Ok(reply)
    }

    fn usable(&self, stage: Stage) -> Result<(), MilterError> {
        match &self.failed {
            Some(why) => Err(self.error(stage, ErrorKind::Failed(why.clone()))),
            None => Ok(()),
        }
    }

    fn stage_timeout(&self, stage: Stage) -> Duration {
        if stage.is_content() {
            self.content_timeout
        } else {
            self.command_timeout
        }
    }

    async fn flush(&mut self, stage: Stage) -> Result<(), MilterError> {
        if self.out.is_empty() {
            return Ok(());
        }
        let limit = self.stage_timeout(stage);
        let Some(io) = self.io.as_mut() else {
            self.out.clear();
            return Ok(());
        };
        let result = timeout(limit, write_all(io, &self.out)).await;
        self.out.clear();
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(kind)) => Err(self.fail(stage, kind)),
            Err(_) => Err(self.fail(stage, ErrorKind::Timeout(limit))),
        }
    }

    /// Reads replies until the final one. Every frame restarts the reply timer; the whole
    /// wait is capped at the content timeout (see the module documentation).
    async fn await_final(&mut self, stage: Stage) -> Result<MilterReply, MilterError> {
        let per_reply = self.stage_timeout(stage);
        let cap = Instant::now() + per_reply.max(self.content_timeout);
        let mut deadline = (Instant::now() + per_reply).min(cap);
        loop {
            loop {
                let frame = match self.decoder.next_frame() {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => {
                        let kind = codec_error(e, &self.endpoint);
                        return Err(self.fail(stage, kind));
                    }
                };
                match self.conv.on_frame(frame) {
                    Ok(Step::Final(reply)) => return Ok(reply),
                    Ok(Step::Wait) => deadline = (Instant::now() + per_reply).min(cap),
                    Err(e) => return Err(self.protocol_failure(stage, e)),
                }
            }
            let Some(io) = self.io.as_mut() else {
                return Err(self.fail(stage, ErrorKind::Closed));
            };
            let read = read_some(io, &mut self.decoder, &mut self.read_buf, &self.endpoint);
            match timeout_at(deadline, read).await {
                Ok(Ok(())) => {}
                Ok(Err(kind)) => return Err(self.fail(stage, kind)),
                Err(_) => {
                    let waited = if deadline == cap {
                        per_reply.max(self.content_timeout)
                    } else {
                        per_reply
                    };
                    let kind = self.timeout_kind(waited);
                    return Err(self.fail(stage, kind));
                }
            }
        }
    }

    /// A timeout, unless what arrived meanwhile shows the peer speaks text.
    fn timeout_kind(&self, waited: Duration) -> ErrorKind {
        match self.decoder.pending_text() {
            Some(text) => ErrorKind::NotAMilter {
                endpoint: self.endpoint.clone(),
                text,
            },
            None => ErrorKind::Timeout(waited),
        }
    }

    fn error(&self, stage: Stage, kind: ErrorKind) -> MilterError {
        MilterError {
            milter: self.name.clone(),
            stage,
            kind,
        }
    }

    /// Marks the connection broken, closes it, and returns the error.
    fn fail(&mut self, stage: Stage, kind: ErrorKind) -> MilterError {
        self.io = None;
        self.failed = Some(format!("{} at {stage}", kind));
        let e = self.error(stage, kind);
        tracing::warn!(milter = %self.name, stage = %stage, error = %e.kind, kind = e.label(), "milter failed");
        e
    }

    fn protocol_failure(&mut self, stage: Stage, e: ProtocolError) -> MilterError {
        match e {
            ProtocolError::Input(msg) => self.error(stage, ErrorKind::Input(msg)),
            ProtocolError::Usage(msg) => {
                self.fail(stage, ErrorKind::Protocol(format!("mxguard bug: {msg}")))
            }
            ProtocolError::Milter(msg) => self.fail(stage, ErrorKind::Protocol(msg)),
        }
    }
}

fn is_decisive(r: &MilterReply) -> bool {
    !matches!(r, MilterReply::Continue | MilterReply::Skip)
}

async fn connect(endpoint: &MilterEndpoint) -> std::io::Result<Box<dyn MilterIo>> {
    Ok(match endpoint {
        MilterEndpoint::Tcp { host, port } => {
            let s = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
            s.set_nodelay(true)?;
            Box::new(s)
        }
        MilterEndpoint::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
    })
}

async fn write_all(io: &mut Box<dyn MilterIo>, bytes: &[u8]) -> Result<(), ErrorKind> {
    io.write_all(bytes).await.map_err(io_error)?;
    io.flush().await.map_err(io_error)
}

/// Reads once into the decoder; end of stream is `Closed` (or "not a milter" when what
/// was left is text).
async fn read_some(
    io: &mut Box<dyn MilterIo>,
    decoder: &mut FrameDecoder,
    buf: &mut [u8],
    endpoint: &str,
) -> Result<(), ErrorKind> {
    let n = io.read(buf).await.map_err(io_error)?;
    if n == 0 {
        return Err(match decoder.pending_text() {
            Some(text) => ErrorKind::NotAMilter {
                endpoint: endpoint.to_owned(),
                text,
            },
            None => ErrorKind::Closed,
        });
    }
    decoder.feed(&buf[..n]);
    Ok(())
}

fn io_error(e: std::io::Error) -> ErrorKind {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionReset | K::BrokenPipe | K::UnexpectedEof | K::ConnectionAborted => {
            ErrorKind::Closed
        }
        _ => ErrorKind::Io(e),
    }
}

fn codec_error(e: CodecError, endpoint: &str) -> ErrorKind {
    match e {
        CodecError::NotAMilter(text) => ErrorKind::NotAMilter {
            endpoint: endpoint.to_owned(),
            text,
        },
        other => ErrorKind::Protocol(other.to_string()),
    }
}

fn log_negotiation(name: &str, n: &Negotiated) {
    for w in &n.warnings {
        tracing::warn!(milter = %name, "{w}");
    }
    if !n.unoffered_actions.is_empty() {
        tracing::info!(
            milter = %name,
            unoffered = %n.unoffered_actions,
            "milter asked for actions mxguard does not offer (tolerated): any such request is a protocol error"
        );
    }
    tracing::debug!(
        milter = %name,
        version = n.version,
        actions = %n.actions,
        protocol = %n.protocol,
        "milter negotiated"
    );
}

/// Splits a message into its header fields `(name, raw value)` and its body. The header
/// section ends at the empty line, or — as in Postfix — at the first line that is neither
/// a field nor a continuation (that line then starts the body).
pub fn split_message(message: &[u8]) -> (Vec<(&str, &[u8])>, &[u8]) {
    type Fields<'m> = Vec<(&'m str, &'m [u8])>;
    fn close<'m>(
        fields: &mut Fields<'m>,
        message: &'m [u8],
        cur: Option<(&'m str, usize)>,
        end: usize,
    ) {
        if let Some((name, start)) = cur {
            let value = &message[start..end];
            fields.push((name, value.strip_suffix(b"\r\n").unwrap_or(value)));
        }
    }
    let mut fields: Fields<'_> = Vec::new();
    let mut pos = 0;
    let mut current: Option<(&str, usize)> = None; // name, value start
    while pos < message.len() {
        let line_end = memchr::memmem::find(&message[pos..], b"\r\n")
            .map(|i| pos + i + 2)
            .unwrap_or(message.len());
        let line = &message[pos..line_end];
        if line == b"\r\n" {
            close(&mut fields, message, current.take(), pos);
            return (fields, &message[line_end..]);
        }
        if matches!(line[0], b' ' | b'\t') && current.is_some() {
            pos = line_end;
            continue;
        }
        let field = line.iter().position(|b| *b == b':').and_then(|colon| {
            let name = std::str::from_utf8(&line[..colon]).ok()?;
            valid_header_name(name.trim_end_matches([' ', '\t'])).then_some((name, colon))
        });
        match field {
            Some((name, colon)) => {
                close(&mut fields, message, current.take(), pos);
                current = Some((name.trim_end_matches([' ', '\t']), pos + colon + 1));
            }
            None => {
                close(&mut fields, message, current.take(), pos);
                return (fields, &message[pos..]);
            }
        }
        pos = line_end;
    }
    close(&mut fields, message, current.take(), message.len());
    (fields, &message[message.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::milter::codec::{Frame, encode};
    use tokio::io::DuplexStream;

    #[test]
    fn split_message_fields_and_body() {
        let msg = b"From: a@example.com\r\nSubject: one\r\n two\r\nX-Empty:\r\n\r\nbody\r\n";
        let (fields, body) = split_message(msg);
        assert_eq!(
            fields,
            [
                ("From", &b" a@example.com"[..]),
                ("Subject", b" one\r\n two"),
                ("X-Empty", b""),
            ]
        );
        assert_eq!(body, b"body\r\n");
        let (fields, body) = split_message(b"Subject: x\r\nnot a header line\r\n");
        assert_eq!(fields, [("Subject", &b" x"[..])]);
        assert_eq!(body, b"not a header line\r\n");
        let (fields, body) = split_message(b"Subject: no body");
        assert_eq!(fields, [("Subject", &b" no body"[..])]);
        assert!(body.is_empty());
    }

    fn cfg() -> MilterConfig {
        let mut c = MilterConfig::new("fake", "127.0.0.1:9".parse().unwrap());
        c.command_timeout = Duration::from_secs(30);
        c.content_timeout = Duration::from_secs(300);
        c
    }

    /// The milter side of an in-memory pipe.
    struct Peer {
        io: DuplexStream,
        dec: FrameDecoder,
    }

    impl Peer {
        async fn recv(&mut self) -> Frame {
            let mut buf = [0u8; 4096];
            loop {
                if let Some(f) = self.dec.next_frame().unwrap() {
                    return f;
                }
                let n = self.io.read(&mut buf).await.unwrap();
                assert!(n > 0, "client closed");
                self.dec.feed(&buf[..n]);
            }
        }
        async fn send(&mut self, code: u8, data: &[u8]) -> std::io::Result<()> {
            let mut out = Vec::new();
            encode(&mut out, code, &[data]).unwrap();
            self.io.write_all(&out).await
        }
    }

    async fn pair(protocol: u32) -> (MilterClient, Peer) {
        let (a, b) = tokio::io::duplex(1 << 20);
        let mut peer = Peer {
            io: b,
            dec: FrameDecoder::new(1 << 20),
        };
        let client = tokio::spawn(async move { MilterClient::over_stream(&cfg(), a).await });
        assert_eq!(peer.recv().await.code, b'O');
        let mut data = 6u32.to_be_bytes().to_vec();
        data.extend_from_slice(&0x11u32.to_be_bytes());
        // NOCONNECT: the connect event sends nothing, so tests start at HELO or MAIL.
        data.extend_from_slice(&(protocol | 1).to_be_bytes());
        peer.send(b'O', &data).await.unwrap();
        let mut client = client.await.unwrap().unwrap();
        let r = client.connect(None, None, &MacroValues::default()).await;
        assert_eq!(r.unwrap(), MilterReply::Continue);
        (client, peer)
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_milter_times_out_at_the_command_timeout() {
        let (mut c, mut peer) = pair(0).await;
        let start = Instant::now();
        let t = tokio::spawn(async move {
            let r = c.helo("client.example", &MacroValues::default()).await;
            (r, c)
        });
        assert_eq!(peer.recv().await.code, b'H');
        let (r, mut c) = t.await.unwrap();
        let e = r.unwrap_err();
        assert_eq!((e.stage, e.label()), (Stage::Helo, "timeout"));
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_secs(30) && waited < Duration::from_millis(30_010),
            "{waited:?}"
        );
        let again = c
            .mail("a@b", &[], &MacroValues::default())
            .await
            .unwrap_err();
        assert_eq!(again.label(), "failed");
        assert!(
            again.to_string().contains("no answer within 30s at helo"),
            "{again}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn progress_keeps_waiting_but_not_past_the_content_timeout() {
        let (mut c, mut peer) = pair(0).await;
        let start = Instant::now();
        let t = tokio::spawn(async move {
            let r = c.mail("a@b", &[], &MacroValues::default()).await;
            (r, start.elapsed())
        });
        assert_eq!(peer.recv().await.code, b'M');
        // A PROGRESS every 20 s: each restarts the 30 s reply timer, but the total wait
        // ends at the 300 s content timeout.
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_secs(20)).await;
            if peer.send(b'p', b"").await.is_err() {
                break;
            }
        }
        let (r, waited) = t.await.unwrap();
        let e = r.unwrap_err();
        assert_eq!(e.label(), "timeout");
        assert!(
            waited >= Duration::from_secs(300) && waited < Duration::from_millis(300_010),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn progress_then_continue() {
        let (mut c, mut peer) = pair(0).await;
        let t = tokio::spawn(async move { c.mail("a@b", &[], &MacroValues::default()).await });
        assert_eq!(peer.recv().await.code, b'M');
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(25)).await;
            peer.send(b'p', b"").await.unwrap();
        }
        peer.send(b'c', b"").await.unwrap();
        assert_eq!(t.await.unwrap().unwrap(), MilterReply::Continue);
    }
}
