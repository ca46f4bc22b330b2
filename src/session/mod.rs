//! The SMTP server side: one [`Session`] per client connection.
//!
//! The session reads command lines out of its own buffer (so it knows exactly what was
//! pipelined), answers each in order, and flushes the replies as a group when the input
//! runs dry (RFC 2920). Each verb lives in its own file as an `impl Session` block whose
//! preconditions come first. Every limit is enforced here: line length, errors, junk
//! commands, recipients, message size, per-command deadlines and the minimum data rate.

mod auth;
mod data;
mod ehlo;
mod mail;
mod misc;
mod rcpt;

use std::sync::Arc;
use std::time::Instant as StdInstant;

use smtp_proto::Request;
use tokio::time::Instant;
use tracing::{debug, info};

use crate::checks::CheckInput;
use crate::envelope::{
    AuthFacts, Checks, ClientInfo, Decision, Envelope, Facts, MessageView, Stage,
};
use crate::policy::{Mode, RuleSet};
use crate::relay::{ClientIdentity, Upstream};
use crate::reply::{Reply, StatusCode, reply};
use crate::runtime::Runtime;
use crate::stream::{BufferedConn, ReadError, Stream};
use crate::telemetry::ProtocolErrorKind;

/// Read size while commands are expected; DATA reads in larger chunks.
const COMMAND_CHUNK: usize = 1024;

/// Per-listener settings the session needs.
#[derive(Clone)]
pub struct ListenerContext {
    pub name: String,
    /// Present when the listener has a certificate (STARTTLS or implicit TLS).
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// A submission listener: AUTH after TLS, and MAIL only when authenticated.
    pub submission: bool,
}

/// What the dispatcher tells the loop to do after a command.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    /// Flush the replies, then close the connection.
    Close,
    /// QUIT: flush `221`, then close.
    Quit,
    /// Flush `220`, then run the TLS handshake.
    StartTls,
    /// Flush `354`, then receive the message.
    Data,
}

/// Why a session ended (for the disconnect log line).
#[derive(Debug)]
enum End {
    Quit,
    ClientClosed,
    Timeout,
    Shutdown,
    Limit(&'static str),
    Io(String),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Quit => f.write_str("quit"),
            End::ClientClosed => f.write_str("client closed"),
            End::Timeout => f.write_str("timeout"),
            End::Shutdown => f.write_str("shutdown"),
            End::Limit(what) => write!(f, "{what}"),
            End::Io(e) => write!(f, "i/o error: {e}"),
        }
    }
}

/// One client connection from accept to close.
pub struct Session {
    rt: Arc<Runtime>,
    listener: ListenerContext,
    rules: Arc<RuleSet>,
    conn: BufferedConn,
    out: Vec<u8>,
    id: String,
    client: ClientInfo,
    env: Envelope,
    esmtp: bool,
    /// An `accept` verdict at connect/helo: no more rules this session.
    session_accepted: bool,
    /// An `accept` verdict at mail or later: no more rules this transaction.
    transaction_accepted: bool,
    /// Headers that rules asked to add to the current message.
    pending_headers: Vec<String>,
    /// Recipients tried in this transaction (accepted or not), for "no valid recipients".
    rcpts_tried: usize,
    /// RCPTs refused in this transaction because `max_recipients` was reached.
    rcpts_over_limit: usize,
    upstream: Option<Upstream>,
    /// The upstream has MAIL of an unfinished transaction and needs RSET before reuse.
    upstream_in_transaction: bool,
    /// The upstream was lost in the middle of this transaction: it is counted and logged
    /// as failed, and every further RCPT and DATA gets `451 4.4.1` until it is reset.
    upstream_failed: bool,
    errors: u32,
    junk: u32,
    transactions: u32,
    /// Octets of the last message received (for the transaction log line).
    message_size: u64,
    /// A command line overflowed the limit: discard up to its end, then answer 500 5.5.2.
    discarding_long_line: bool,
    /// When we began waiting for the command line now expected (see `wait_for_input`).
    line_started: Option<Instant>,
    /// The server was under stress while this line was awaited: its short timeout holds.
    line_stressed: bool,
    started: StdInstant,
    transaction_started: StdInstant,
    /// What the DNS checks found: the client's for the session, the sender's and the
    /// message's for the current transaction.
    auth_facts: AuthFacts,
}

impl Session {
    pub fn new(
        rt: Arc<Runtime>,
        listener: ListenerContext,
        stream: Stream,
        client: ClientInfo,
    ) -> Self {
        let rules = rt.policy.current();
        Session {
            id: new_session_id(),
            rules,
            listener,
            conn: BufferedConn::new(stream, COMMAND_CHUNK),
            out: Vec::with_capacity(256),
            client,
            env: Envelope::default(),
            esmtp: false,
            session_accepted: false,
            transaction_accepted: false,
            pending_headers: Vec::new(),
            rcpts_tried: 0,
            rcpts_over_limit: 0,
            upstream: None,
            upstream_in_transaction: false,
            upstream_failed: false,
            errors: 0,
            junk: 0,
            transactions: 0,
            message_size: 0,
            discarding_long_line: false,
            line_started: None,
            line_stressed: false,
            started: StdInstant::now(),
            transaction_started: StdInstant::now(),
            auth_facts: AuthFacts::default(),
            rt,
        }
    }

    /// Runs the session to its end; never panics on client input.
    pub async fn run(mut self) {
        let end = self.serve().await;
        if self.env.sender.is_some() && !self.upstream_failed {
            self.rt.metrics.transaction("aborted");
            self.log_transaction("aborted", None);
        }
        if let Some(up) = self.upstream.take() {
            up.quit().await;
        }
        let tls = if self.client.tls { "yes" } else { "no" };
        self.rt
            .metrics
            .sessions_total
            .with_label_values(&[&self.listener.name, tls])
            .inc();
        info!(
            session = %self.id,
            client = %self.client.ip,
            helo = self.env.helo.as_deref().unwrap_or(""),
            transactions = self.transactions,
            errors = self.errors,
            reason = %end,
            duration_ms = self.started.elapsed().as_millis() as u64,
            "disconnect"
        );
    }

    async fn serve(&mut self) -> End {
        // The handlers below are boxed: a task's future is as large as its largest state,
        // and an idle session should not carry the state of a DKIM check or a TLS
        // handshake it is not doing.
        if let Err(end) = Box::pin(self.greet()).await {
            return end;
        }
        loop {
            while let Some(line) = self.next_line() {
                let flow = Box::pin(self.handle_line(&line)).await;
                let flow = if flow == Flow::Continue {
                    self.check_limits()
                } else {
                    flow
                };
                match flow {
                    Flow::Continue => {}
                    Flow::Close => {
                        let _ = self.flush().await;
                        return End::Limit("closed by server");
                    }
                    Flow::Quit => {
                        let _ = self.flush().await;
                        return End::Quit;
                    }
                    Flow::StartTls => {
                        if let Err(end) = Box::pin(self.start_tls()).await {
                            return end;
                        }
                    }
                    Flow::Data => {
                        if let Err(end) = Box::pin(self.receive_data()).await {
                            return end;
                        }
                    }
                }
            }
            if let Err(end) = self.flush().await {
                return end;
            }
            self.conn.shrink_if_idle();
            if let Err(end) = self.wait_for_input().await {
                return end;
            }
        }
    }

    /// Connect-stage rules, the pre-greeting check, and the banner.
    async fn greet(&mut self) -> Result<(), End> {
        if let Some(refusal) = self.evaluate(Stage::Connect).await {
            // A refusal at connect is the greeting itself: 554 (or 421), then close.
            let code = if refusal.is_permanent() { 554 } else { 421 };
            let r = Reply::new(code, refusal.status, refusal.text());
            self.push(&r);
            let _ = self.flush().await;
            return Err(End::Limit("refused at connect"));
        }
        if self.talked_before_greeting().await {
            let r = reply(554, (5, 5, 0), "Error: SMTP protocol synchronization");
            self.note_bad_input(ProtocolErrorKind::Pregreet, &r);
            self.push(&r);
            let _ = self.flush().await;
            return Err(End::Limit("pregreet"));
        }
        let banner = Reply::new(
            220,
            StatusCode(2, 0, 0),
            format!("{} ESMTP", self.rt.config.hostname),
        )
        .without_status();
        self.push(&banner);
        self.flush().await
    }

    /// Whether the client sent anything before the banner (within `greet_pause`).
    async fn talked_before_greeting(&mut self) -> bool {
        let pause = self.rt.config.limits.greet_pause;
        let Stream::Plain(tcp) = &self.conn.stream else {
            return false;
        };
        if !pause.is_zero() {
            // Wait the whole pause for a first byte (without consuming it); `readable()` is
            // not enough: it can report a fresh socket ready before anything arrived.
            let mut probe = [0u8; 1];
            return matches!(
                tokio::time::timeout(pause, tcp.peek(&mut probe)).await,
                Ok(Ok(n)) if n > 0
            );
        }
        // No pause: a non-blocking peek ("nothing yet" is WouldBlock).
        let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        matches!(socket2::SockRef::from(tcp).peek(&mut probe), Ok(n) if n > 0)
    }

    /// Takes the next complete command line out of the buffer, enforcing the length limit.
    fn next_line(&mut self) -> Option<Vec<u8>> {
        let max = self.rt.config.limits.max_line_length;
        loop {
            let buf = self.conn.buffered();
            match memchr_lf(buf) {
                Some(pos) => {
                    let line = buf[..=pos].to_vec();
                    self.conn.consume(pos + 1);
                    // The next line gets a deadline of its own.
                    self.line_started = None;
                    self.line_stressed = false;
                    if self.discarding_long_line || line.len() > max {
                        self.discarding_long_line = false;
                        self.line_too_long();
                        continue;
                    }
                    return Some(line);
                }
                None if buf.len() > max => {
                    // No end in sight: drop what we have and skip to the end of the line.
                    let n = buf.len();
                    self.conn.consume(n);
                    self.discarding_long_line = true;
                    return None;
                }
                None => return None,
            }
        }
    }

    fn line_too_long(&mut self) {
        self.bad_input(
            ProtocolErrorKind::LineTooLong,
            reply(500, (5, 5, 2), "Error: line too long"),
        );
    }

    /// Waits for more input, or for shutdown. The deadline is per command line: it runs
    /// from when we began waiting for the line, so a client dripping one byte at a time
    /// cannot hold its slot longer than one timeout. When the server comes under stress
    /// the (shorter) stress timeout applies at once, also to lines already awaited.
    async fn wait_for_input(&mut self) -> Result<(), End> {
        let started = *self.line_started.get_or_insert_with(Instant::now);
        let mut shutdown = self.rt.shutdown.clone();
        let mut stress = self.rt.sessions.stress_changes();
        let in_transaction = self.env.sender.is_some();
        let result = loop {
            // Once stress has cut this line's deadline, it stays cut (even if the stress
            // ends a moment later): the short timeout is what the client was given.
            self.line_stressed |= self.rt.sessions.stressed();
            let deadline = started + self.command_timeout();
            tokio::select! {
                r = self.conn.fill(deadline) => break r,
                _ = stress.changed() => continue,
                _ = crate::runtime::shutdown_signalled(&mut shutdown), if !in_transaction => {
                    self.push(&reply(421, (4, 3, 2), format!("{} Service shutting down, closing transmission channel", self.rt.config.hostname)));
                    let _ = self.flush().await;
                    return Err(End::Shutdown);
                }
            }
        };
        match result {
            Ok(_) => Ok(()),
            Err(ReadError::Timeout) => {
                let r = reply(
                    421,
                    (4, 4, 2),
                    format!("{} Error: timeout exceeded", self.rt.config.hostname),
                );
                // A partial line pending: a dripper, not an idle client.
                let kind = if self.line_stressed {
                    ProtocolErrorKind::StressTimeout
                } else if self.conn.buffered().is_empty() && !self.discarding_long_line {
                    ProtocolErrorKind::Timeout
                } else {
                    ProtocolErrorKind::SlowCommand
                };
                self.note_bad_input(kind, &r);
                self.push(&r);
                let _ = self.flush().await;
                Err(End::Timeout)
            }
            Err(ReadError::Closed) => Err(End::ClientClosed),
            Err(ReadError::Io(e)) => Err(End::Io(e.to_string())),
        }
    }

    /// The command timeout for the line now awaited: the stress timeout once stress hit it.
    fn command_timeout(&self) -> std::time::Duration {
        let l = &self.rt.config.limits;
        if self.line_stressed {
            l.command_timeout.min(l.stress_command_timeout)
        } else {
            l.command_timeout
        }
    }

    /// Writes the queued replies.
    async fn flush(&mut self) -> Result<(), End> {
        if self.out.is_empty() {
            return Ok(());
        }
        let timeout = self.rt.command_timeout();
        let res = self.conn.send(&self.out, timeout).await;
        self.out.clear();
        if self.out.capacity() > 4096 {
            self.out = Vec::with_capacity(256);
        }
        res.map_err(|e| End::Io(e.to_string()))
    }

    fn push(&mut self, r: &Reply) {
        r.write_to(&mut self.out);
    }

    /// Bad input: counted by kind, logged with the reply, answered (and counted towards
    /// the error limit).
    fn bad_input(&mut self, kind: ProtocolErrorKind, r: Reply) {
        self.note_bad_input(kind, &r);
        self.error_reply(r);
    }

    /// The metric and the log line for bad input whose reply is sent elsewhere; the line
    /// is rate-limited per kind (a flood of junk must not fill the disk), the metric not.
    fn note_bad_input(&self, kind: ProtocolErrorKind, r: &Reply) {
        self.rt.metrics.protocol_error(kind);
        if crate::log_limit::BAD_INPUT.allow(kind.as_str()) {
            info!(session = %self.id, client = %self.client.ip, kind = kind.as_str(), reply = %r, "refused client input");
        }
    }

    /// Queues a reply that counts as a client error.
    fn error_reply(&mut self, r: Reply) {
        self.errors += 1;
        self.push(&r);
    }

    /// Closes the session when a per-session limit is reached.
    fn check_limits(&mut self) -> Flow {
        let limits = &self.rt.config.limits;
        let host = &self.rt.config.hostname;
        if self.errors >= self.rt.hard_error_limit() {
            let r = reply(421, (4, 7, 0), format!("{host} Error: too many errors"));
            self.note_bad_input(ProtocolErrorKind::TooManyErrors, &r);
            self.push(&r);
            return Flow::Close;
        }
        if self.junk > limits.junk_command_limit {
            let r = reply(
                421,
                (4, 7, 0),
                format!("{host} Error: too many junk commands"),
            );
            self.note_bad_input(ProtocolErrorKind::TooManyJunkCommands, &r);
            self.push(&r);
            return Flow::Close;
        }
        Flow::Continue
    }

    /// Parses and answers one command line (it ends in LF; see [`Self::next_line`]).
    async fn handle_line(&mut self, raw: &[u8]) -> Flow {
        if is_forbidden_command(raw) {
            // An HTTP or proxy client, or binary junk (a TLS hello on a plaintext port):
            // not a mail client. Postfix's smtpd_forbidden_commands answers the same.
            let r = reply(221, (2, 7, 0), "Error: I can break rules, too. Goodbye.");
            self.note_bad_input(ProtocolErrorKind::ForbiddenCommand, &r);
            self.push(&r);
            return Flow::Close;
        }
        let line = match self.command_text(raw) {
            Ok(line) => line,
            Err(r) => {
                let (kind, r) = *r;
                self.bad_input(kind, r);
                return Flow::Continue;
            }
        };
        let verb = verb_of(line.as_bytes());
        let control = [&b"XCLIENT"[..], b"XFORWARD", b"PROXY"];
        if control.iter().any(|c| verb.eq_ignore_ascii_case(c)) {
            self.bad_input(
                ProtocolErrorKind::ControlCommand,
                reply(550, (5, 7, 0), "Error: insufficient authorization"),
            );
            return Flow::Continue;
        }
        if verb.eq_ignore_ascii_case(b"MAIL") {
            return match crate::smtp::parse_mail(&line) {
                Ok(cmd) => self.mail(cmd).await,
                Err(e) => self.command_error(e, "sender"),
            };
        }
        if verb.eq_ignore_ascii_case(b"RCPT") {
            return match crate::smtp::parse_rcpt(&line) {
                Ok(cmd) => self.rcpt(cmd).await,
                Err(e) => self.command_error(e, "recipient"),
            };
        }
        if (verb.eq_ignore_ascii_case(b"EHLO") || verb.eq_ignore_ascii_case(b"HELO"))
            && line.bytes().any(|b| b.is_ascii_control())
        {
            // Control characters must never reach our own EHLO/XCLIENT upstream.
            self.bad_input(
                ProtocolErrorKind::BadHelo,
                reply(501, (5, 5, 2), "Error: control characters in the HELO name"),
            );
            return Flow::Continue;
        }
        let mut with_crlf = line.into_bytes();
        with_crlf.extend_from_slice(b"\r\n");
        let request = match Request::parse(&mut with_crlf.iter()) {
            Ok(req) => req.into_owned(),
            Err(e) => {
                self.syntax_error(e);
                return Flow::Continue;
            }
        };
        match request {
            Request::Ehlo { host } => self.ehlo(host, true).await,
            Request::Helo { host } => self.ehlo(host, false).await,
            Request::Mail { .. } | Request::Rcpt { .. } => unreachable!("parsed above"),
            Request::Data => self.data().await,
            Request::Rset => self.rset().await,
            Request::Noop { .. } => self.noop(),
            Request::Quit => self.quit(),
            Request::Vrfy { .. } => self.vrfy(),
            Request::Expn { .. } => self.expn(),
            Request::Help { .. } => self.help(),
            Request::StartTls => self.starttls_command(),
            Request::Bdat { .. } => {
                // Chunk bytes would follow; without CHUNKING we cannot stay in sync.
                let r = reply(502, (5, 5, 1), "Error: BDAT not supported, closing");
                self.note_bad_input(ProtocolErrorKind::Bdat, &r);
                self.push(&r);
                Flow::Close
            }
            Request::Auth {
                mechanism,
                initial_response,
            } => self.auth(mechanism, initial_response).await,
            Request::Lhlo { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. } => {
                self.error_reply(reply(502, (5, 5, 1), "Error: command not implemented"));
                Flow::Continue
            }
        }
    }

    /// The text of a command line without its CRLF, or the refusal for a line that is no
    /// command: NUL, a bare LF or CR (Postfix `smtpd_forbid_bare_newline = reject`;
    /// normalised for `data.normalize_networks`), invalid UTF-8.
    fn command_text(&self, raw: &[u8]) -> Result<String, Box<(ProtocolErrorKind, Reply)>> {
        let refuse =
            |kind, code, status, text: &str| Err(Box::new((kind, reply(code, status, text))));
        if raw.contains(&0) {
            return refuse(
                ProtocolErrorKind::NulInCommand,
                500,
                (5, 5, 2),
                "Error: NUL character in command",
            );
        }
        let body = raw.strip_suffix(b"\n").unwrap_or(raw);
        let crlf = body.ends_with(b"\r");
        let body = body.strip_suffix(b"\r").unwrap_or(body);
        let bare_cr = body.contains(&b'\r');
        let normalize = self.rt.normalizes(self.client.ip);
        if (!crlf || bare_cr) && !normalize {
            return refuse(
                ProtocolErrorKind::BareLineEnd,
                500,
                (5, 5, 2),
                "Error: bare <CR> or <LF> received (see RFC 5321 section 2.3.8)",
            );
        }
        let text: Vec<u8> = if bare_cr {
            body.iter()
                .map(|&b| if b == b'\r' { b' ' } else { b })
                .collect()
        } else {
            body.to_vec()
        };
        String::from_utf8(text).map_err(|_| {
            Box::new((
                ProtocolErrorKind::BadUtf8,
                reply(501, (5, 5, 2), "Error: invalid UTF-8 in command"),
            ))
        })
    }

    /// The reply to a MAIL or RCPT command that did not parse.
    fn command_error(&mut self, e: crate::smtp::CommandError, what: &str) -> Flow {
        use crate::smtp::CommandError as E;
        let (kind, r) = match &e {
            E::Syntax(syntax) => (
                ProtocolErrorKind::Syntax,
                reply(501, (5, 5, 4), format!("Syntax: {syntax}")),
            ),
            E::BadAddress(why) => {
                let status = if what == "sender" {
                    (5, 1, 7)
                } else {
                    (5, 1, 3)
                };
                (
                    ProtocolErrorKind::Syntax,
                    reply(
                        501,
                        status,
                        format!("Error: bad {what} address syntax ({why})"),
                    ),
                )
            }
            E::BadParameter(p) => (
                ProtocolErrorKind::Syntax,
                reply(501, (5, 5, 4), format!("Error: invalid parameter {p}")),
            ),
            E::UnknownParameter(p) => (
                ProtocolErrorKind::UnsupportedParameter,
                reply(555, (5, 5, 4), format!("Error: unsupported parameter {p}")),
            ),
            E::SizeTooLarge => (
                ProtocolErrorKind::Size,
                reply(552, (5, 3, 4), "Error: message size exceeds fixed limit"),
            ),
        };
        self.bad_input(kind, r);
        Flow::Continue
    }

    fn syntax_error(&mut self, e: smtp_proto::Error) {
        use smtp_proto::Error as E;
        let (kind, r) = match e {
            E::UnknownCommand => {
                self.junk += 1;
                (
                    ProtocolErrorKind::UnknownCommand,
                    reply(500, (5, 5, 1), "Error: command not recognized"),
                )
            }
            E::InvalidSenderAddress => (
                ProtocolErrorKind::Syntax,
                reply(501, (5, 1, 7), "Error: bad sender address syntax"),
            ),
            E::InvalidRecipientAddress => (
                ProtocolErrorKind::Syntax,
                reply(501, (5, 1, 3), "Error: bad recipient address syntax"),
            ),
            E::SyntaxError { syntax } => (
                ProtocolErrorKind::Syntax,
                reply(501, (5, 5, 4), format!("Syntax: {syntax}")),
            ),
            E::InvalidParameter { param } => (
                ProtocolErrorKind::Syntax,
                reply(501, (5, 5, 4), format!("Error: invalid parameter {param}")),
            ),
            E::UnsupportedParameter { param } => (
                ProtocolErrorKind::UnsupportedParameter,
                reply(
                    555,
                    (5, 5, 4),
                    format!("Error: unsupported parameter {param}"),
                ),
            ),
            _ => (
                ProtocolErrorKind::Syntax,
                reply(501, (5, 5, 4), "Error: syntax error"),
            ),
        };
        self.bad_input(kind, r);
    }

    /// Runs the checks this stage needs, then its rules, unless an earlier `accept`
    /// ended evaluation. Returns the refusal to send, if any; `add_header` results are
    /// kept for the relay.
    async fn evaluate(&mut self, stage: Stage) -> Option<Reply> {
        let want = self.checks_wanted(stage);
        self.run_checks(want, None).await;
        self.evaluate_with(stage, None).await
    }

    /// The checks to run before `stage`'s rules: those its rules test and, at `mail`
    /// and `data`, those the Authentication-Results header reports. None after an
    /// `accept` (nothing left to decide), except what the header needs.
    fn checks_wanted(&self, stage: Stage) -> Checks {
        let rules = if self.accepted_before(stage) {
            Checks::NONE
        } else {
            self.rules.needs(stage)
        };
        self.rt
            .checker
            .wanted(rules, stage == Stage::Data, stage == Stage::Mail)
    }

    /// Runs the checks in `want` that have not run yet; `message` is the whole message
    /// at end of data.
    async fn run_checks(&mut self, want: Checks, message: Option<&[u8]>) {
        if want.is_empty() {
            return;
        }
        let mut facts = std::mem::take(&mut self.auth_facts);
        let input = CheckInput {
            ip: self.client.ip,
            helo: self.env.helo.as_deref(),
            sender: self.env.sender.as_deref(),
            message,
        };
        self.rt.checker.run(want, &input, &mut facts).await;
        self.auth_facts = facts;
    }

    /// A `greylist`/`rate_limit` rule ends an evaluation with [`Decision::Check`]: one
    /// store call ([`crate::checks::resolve`]) refuses, or the stage's later rules run.
    async fn evaluate_with(
        &mut self,
        stage: Stage,
        message: Option<&MessageView>,
    ) -> Option<Reply> {
        if self.accepted_before(stage) {
            return None;
        }
        let facts = Facts {
            stage,
            client: &self.client,
            envelope: &self.env,
            message,
            auth: &self.auth_facts,
        };
        let mut evaluation = self.rules.evaluate(&facts);
        let mut hits = std::mem::take(&mut evaluation.hits);
        let mut add_headers = Vec::new();
        while let Decision::Check(pending) = &evaluation.verdict.decision {
            let rule = evaluation.verdict.rule.as_deref().unwrap_or_default();
            let refusal =
                crate::checks::resolve(&*self.rt.store, &self.rt.metrics, stage, rule, pending)
                    .await;
            add_headers.append(&mut evaluation.verdict.add_headers);
            if let Some(r) = refusal {
                evaluation.verdict.decision = Decision::Tempfail(r);
                break;
            }
            let resume = pending.resume;
            evaluation = self.rules.evaluate_from(&facts, resume);
            hits.append(&mut evaluation.hits);
        }
        for hit in &hits {
            self.rt
                .metrics
                .verdicts_total
                .with_label_values(&[
                    stage.as_str(),
                    &hit.rule,
                    hit.action.as_str(),
                    hit.mode.as_str(),
                ])
                .inc();
            if hit.mode == Mode::Monitor {
                info!(
                    session = %self.id,
                    client = %self.client.ip,
                    stage = %stage,
                    rule = %hit.rule,
                    action = hit.action.as_str(),
                    "policy monitor: rule matched, not enforced"
                );
            }
        }
        let verdict = evaluation.verdict;
        self.pending_headers.extend(add_headers);
        self.pending_headers.extend(verdict.add_headers);
        let rule = verdict.rule.unwrap_or_default();
        let (action, refusal) = match verdict.decision {
            Decision::Continue => return None,
            Decision::Accept => {
                if stage <= Stage::Helo {
                    self.session_accepted = true;
                } else {
                    self.transaction_accepted = true;
                }
                ("accept", None)
            }
            Decision::Reject(r) => ("reject", Some(r)),
            Decision::Tempfail(r) => ("tempfail", Some(r)),
            Decision::Check(_) => unreachable!("checks are resolved above"),
        };
        if let Some(r) = &refusal {
            info!(
                session = %self.id,
                client = %self.client.ip,
                stage = %stage,
                rule = %rule,
                action,
                reply = %r,
                "policy refusal"
            );
        } else {
            debug!(session = %self.id, stage = %stage, rule = %rule, "policy accept");
        }
        refusal
    }

    /// Whether an earlier `accept` ended rule evaluation for `stage`: for the session at
    /// connect/helo, for the transaction at mail and later.
    fn accepted_before(&self, stage: Stage) -> bool {
        self.session_accepted || (self.transaction_accepted && stage >= Stage::Mail)
    }

    /// The identity the upstream should see for this client.
    fn identity(&self) -> ClientIdentity {
        ClientIdentity {
            ip: self.client.ip,
            port: self.client.port,
            helo: self.env.helo.clone().unwrap_or_default(),
            esmtp: self.esmtp,
            tls: self.client.tls,
            tls_description: self.conn.stream.tls_description(),
            auth_user: self.client.auth_user.clone(),
            session_id: self.id.clone(),
        }
    }

    /// Ends the current transaction: log line, counters, envelope reset.
    fn finish_transaction(&mut self, outcome: &'static str, upstream_reply: Option<&Reply>) {
        // A transaction whose upstream failed was counted and logged when it failed.
        if !std::mem::take(&mut self.upstream_failed) {
            self.rt.metrics.transaction(outcome);
            self.log_transaction(outcome, upstream_reply);
        }
        self.env.reset_transaction();
        // The sender's and the message's results belong to this transaction only; the
        // client's (DNS lists, reverse DNS) stay for the session.
        let a = &mut self.auth_facts;
        a.spf = None;
        a.spf_helo = None;
        a.dkim = None;
        a.dmarc = None;
        a.arc = None;
        a.degraded = Checks(a.degraded.0 & (Checks::DNSBL | Checks::RDNS).0);
        self.transaction_accepted = false;
        self.pending_headers.clear();
        self.rcpts_tried = 0;
        self.rcpts_over_limit = 0;
        self.message_size = 0;
    }

    /// Records the transaction as failed at the upstream (metric and log line now), but
    /// keeps it open: the client learns of it from 4xx replies until it resets.
    fn fail_transaction_upstream(&mut self) {
        if !self.upstream_failed {
            self.rt.metrics.transaction("upstream_failed");
            self.log_transaction("upstream_failed", None);
            self.upstream_failed = true;
        }
    }

    /// One structured line per transaction outcome.
    fn log_transaction(&self, outcome: &str, upstream_reply: Option<&Reply>) {
        info!(
            session = %self.id,
            client = %self.client.ip,
            helo = self.env.helo.as_deref().unwrap_or(""),
            from = self.env.sender.as_deref().unwrap_or(""),
            rcpts = %self.env.recipients.join(","),
            size = self.message_size,
            upstream_reply = %upstream_reply.map(|r| r.to_string()).unwrap_or_default(),
            duration_ms = self.transaction_started.elapsed().as_millis() as u64,
            auth = %self.auth_facts.summary(),
            outcome,
            "transaction"
        );
    }

    /// Aborts the upstream side of a transaction so the connection can be reused; a
    /// connection that cannot be reset is dropped.
    async fn reset_upstream(&mut self) {
        if !self.upstream_in_transaction {
            return;
        }
        self.upstream_in_transaction = false;
        if let Some(up) = self.upstream.as_mut()
            && up.rset().await.is_err()
        {
            self.upstream = None;
        }
    }
}

/// HTTP and proxy verbs, and lines that do not start with a letter (binary junk, a TLS
/// hello on a plaintext port): the client is not speaking SMTP.
fn is_forbidden_command(line: &[u8]) -> bool {
    const FORBIDDEN: [&[u8]; 6] = [b"GET", b"POST", b"CONNECT", b"HEAD", b"PUT", b"OPTIONS"];
    match line.first() {
        None | Some(b'\r' | b'\n') => false,
        Some(b) if !b.is_ascii_alphabetic() => true,
        Some(_) => FORBIDDEN
            .iter()
            .any(|f| verb_of(line).eq_ignore_ascii_case(f)),
    }
}

/// The first word of a command line.
fn verb_of(line: &[u8]) -> &[u8] {
    let end = line
        .iter()
        .position(|b| b.is_ascii_whitespace())
        .unwrap_or(line.len());
    &line[..end]
}

fn memchr_lf(buf: &[u8]) -> Option<usize> {
    memchr::memchr(b'\n', buf)
}

/// A short random id for log correlation.
fn new_session_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    format!("{:X}{:04X}", t & 0x00FF_FFFF_FFFF, seq & 0xFFFF)
}
