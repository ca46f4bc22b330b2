//! The SMTP server side: one [`Session`] per client connection.
//!
//! # How a session reads
//!
//! One read loop ([`Session::serve`]) takes bytes into the connection's buffer and hands
//! them to the current [`Input`] state: command lines, DATA content up to `CRLF.CRLF`,
//! the octets of a BDAT chunk, or a SASL response line. What one state does not
//! consume stays buffered for the next, so pipelined commands, pipelined BDAT chunks and
//! a SASL answer are all read the same way, and the replies of a pipelined group are
//! flushed together when the input runs dry (RFC 2920).
//!
//! # Layout
//!
//! | file | owns |
//! |---|---|
//! | this file | the session state, the read loop, limits, replies, the transaction's end |
//! | `input` | the input states, command lines, deadlines (per line, stress, data rate) |
//! | `decide` | the checks a stage needs and the policy's stepper, driven against the store |
//! | `ehlo`, `mail`, `rcpt`, `auth`, `misc` | one file per verb, preconditions first |
//! | `data` | DATA and BDAT: receiving the message, end-of-data checks, the relay |
//!
//! Every limit is enforced here: line length, errors, junk commands, recipients, message
//! size, per-line deadlines and the minimum data rate.

mod auth;
mod data;
mod decide;
mod ehlo;
mod fault;
mod filters;
mod input;
mod mail;
mod misc;
mod pipeline;
mod rcpt;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Instant as StdInstant;

use smtp_proto::Request;
use tokio::time::Instant;
use tracing::info;

use crate::envelope::{AuthFacts, ClientInfo, Stage};
use crate::policy::RuleSet;
use crate::relay::{ClientIdentity, Upstream};
use crate::reply::{Reply, StatusCode, reply};
use crate::runtime::Runtime;
use crate::stream::{BufferedConn, Stream, Transport};
use crate::telemetry::{ProtocolErrorKind, TransactionOutcome};
use crate::transaction::Transaction;

use ehlo::Offer;
use input::Input;

/// Read size while commands are expected; message content reads in larger chunks.
const COMMAND_CHUNK: usize = 1024;

/// Per-listener settings the session needs.
#[derive(Clone)]
pub struct ListenerContext {
    pub name: String,
    /// Present when the listener has a certificate (STARTTLS or implicit TLS).
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// A submission listener: AUTH after TLS, and MAIL only when authenticated.
    pub submission: bool,
    /// The milter macro `{daemon_name}` (the host name unless the listener sets one).
    pub milter_daemon_name: Option<String>,
}

/// What the loop does after a piece of input.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    /// Flush the replies, then close the connection.
    Close,
    /// QUIT: flush `221`, then close.
    Quit,
    /// Flush `220`, then run the TLS handshake.
    StartTls,
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
pub struct Session<S: Transport = tokio::net::TcpStream> {
    rt: Arc<Runtime>,
    listener: ListenerContext,
    rules: Arc<RuleSet>,
    /// The client connection; it also queues our replies (`conn.out()`).
    conn: BufferedConn<S>,
    id: String,
    client: ClientInfo,
    /// The HELO/EHLO argument, once given.
    helo: Option<String>,
    esmtp: bool,
    /// The upstream-dependent extensions this client was offered at its EHLO.
    offered: Offer,
    /// The client's own checks (DNS lists, reverse DNS), for the whole session.
    client_auth: AuthFacts,
    /// The transaction in progress, from MAIL to its end; a reset replaces it.
    tx: Option<Box<Transaction>>,
    input: Input,
    /// The message being received (DATA, or the BDAT chunks so far).
    receiving: Option<Box<data::Receiving>>,
    /// The reply for the BDAT chunk being read, when it is refused (its octets are read
    /// and dropped first).
    chunk_refusal: Option<Reply>,
    /// A BDAT chunk of this transaction failed: later chunks get the same reply.
    failed_chunk: Option<Reply>,
    /// An `accept` verdict at connect/helo: no more rules this session.
    session_accepted: bool,
    upstream: Option<Box<Upstream>>,
    /// The upstream has MAIL of an unfinished transaction and needs RSET before reuse.
    upstream_in_transaction: bool,
    errors: u32,
    junk: u32,
    transactions: u32,
    /// A command line overflowed the limit: discard up to its end, then answer 500 5.5.2.
    discarding_long_line: bool,
    /// When we began waiting for the command line now expected (see `wait_for_input`).
    line_started: Option<Instant>,
    /// The server was under stress while this line was awaited: its short timeout holds.
    line_stressed: bool,
    /// The content filters for this client, once made (at the first MAIL).
    filters: Option<Box<crate::filters::chain::FilterChain>>,
    filters_made: bool,
    /// The SASL mechanism the client authenticated with.
    auth_mechanism: Option<String>,
    /// A reply queued at the end of a message closes the session (a filter's shutdown).
    close_after_reply: bool,
    /// MAIL and RCPT sent upstream as one group, and the client replies held behind them.
    pipeline: pipeline::Pipeline,
    started: StdInstant,
}

impl<S: Transport> Session<S> {
    pub fn new(
        rt: Arc<Runtime>,
        listener: ListenerContext,
        stream: Stream<S>,
        client: ClientInfo,
    ) -> Self {
        let rules = rt.policy.current();
        Session {
            id: new_session_id(),
            rules,
            listener,
            conn: BufferedConn::new(stream, COMMAND_CHUNK).releasing_buffers_while_waiting(),
            client,
            helo: None,
            esmtp: false,
            offered: Offer::default(),
            client_auth: AuthFacts::default(),
            tx: None,
            input: Input::Command,
            receiving: None,
            chunk_refusal: None,
            failed_chunk: None,
            session_accepted: false,
            upstream: None,
            upstream_in_transaction: false,
            errors: 0,
            junk: 0,
            transactions: 0,
            discarding_long_line: false,
            line_started: None,
            line_stressed: false,
            filters: None,
            filters_made: false,
            auth_mechanism: None,
            close_after_reply: false,
            pipeline: pipeline::Pipeline::default(),
            started: StdInstant::now(),
            rt,
        }
    }

    /// Runs the session to its end; never panics on client input.
    ///
    /// Not an `async fn`: one moves its `self` argument into a local of its own, and the
    /// task's future would hold the session twice (4.8 KB instead of 2.7 KB per idle
    /// session). The block below uses the captured session in place (the test
    /// `a_session_task_holds_the_session_once` fails with the `async fn`).
    #[allow(clippy::manual_async_fn)]
    pub fn run(mut self) -> impl Future<Output = ()> {
        async move {
            let end = self.serve().await;
            if self.tx.is_some() {
                self.finish_transaction(TransactionOutcome::Aborted, None);
            }
            // Boxed, like the handlers in `serve`: inline, these closing steps (kilobytes of
            // milter and upstream state) would make every idle session's task that large.
            Box::pin(self.filters_quit()).await;
            if let Some(up) = self.upstream.take() {
                Box::pin(up.quit()).await;
            }
            self.rt
                .metrics
                .session
                .session_ended(&self.listener.name, self.client.tls);
            info!(
                session = %self.id,
                client = %self.client.ip,
                helo = self.helo.as_deref().unwrap_or(""),
                transactions = self.transactions,
                errors = self.errors,
                reason = %end,
                duration_ms = self.started.elapsed().as_millis() as u64,
                "disconnect"
            );
        }
    }

    /// The one read loop: process what is buffered in the current input state, flush the
    /// replies when the input runs dry, wait for more.
    async fn serve(&mut self) -> End {
        // The handlers below are boxed: a task's future is as large as its largest state,
        // and an idle session should not carry the state of a DKIM check or a TLS
        // handshake it is not doing.
        if let Err(end) = Box::pin(self.greet()).await {
            return end;
        }
        loop {
            let flow = Box::pin(self.process_input()).await;
            // The client's group ended: the upstream's answers complete the replies.
            // (Asked first: boxing a future that has nothing to do still allocates.)
            if self.pipeline.is_active() {
                Box::pin(self.resolve_pipeline()).await;
            }
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
                    continue;
                }
            }
            if let Err(end) = self.flush().await {
                return end;
            }
            if let Err(end) = self.wait_for_input().await {
                return end;
            }
        }
    }

    /// Consumes buffered input in the current state until it needs more bytes (then
    /// `Flow::Continue`) or the session must close or change streams.
    async fn process_input(&mut self) -> Flow {
        loop {
            let flow = match self.input {
                Input::Command => match self.next_line() {
                    Some(line) => {
                        if self.pipeline.is_active() && !pipeline::joins_group(&line) {
                            Box::pin(self.resolve_pipeline()).await;
                        }
                        match self.handle_line(&line).await {
                            Flow::Continue => self.check_limits(),
                            other => other,
                        }
                    }
                    None => return Flow::Continue,
                },
                Input::Data | Input::Bdat { .. } => {
                    if !self.take_message_bytes().await {
                        return Flow::Continue;
                    }
                    self.message_input_done().await
                }
                // Boxed: relaying a SASL step upstream is kilobytes of state, which every
                // read of every session would otherwise allocate and copy.
                Input::Sasl(_) => match self.next_line() {
                    Some(line) => Box::pin(self.sasl_line(&line)).await,
                    None => return Flow::Continue,
                },
            };
            if flow != Flow::Continue {
                return flow;
            }
        }
    }

    /// Connect-stage rules, the pre-greeting check, and the banner.
    async fn greet(&mut self) -> Result<(), End> {
        if let Some(refusal) = self.evaluate(Stage::Connect, None).await {
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
        match &self.conn.stream {
            Stream::Plain(s) => s.first_byte_within(pause).await,
            _ => false,
        }
    }

    /// Writes the queued replies.
    async fn flush(&mut self) -> Result<(), End> {
        let timeout = self.rt.command_timeout();
        self.conn
            .flush_out(timeout)
            .await
            .map_err(|e| End::Io(e.to_string()))
    }

    /// Queues a reply for the client, in order: behind pipelined commands still
    /// awaiting the upstream when there are any.
    fn push(&mut self, r: &Reply) {
        if self.pipeline.is_active() {
            self.pipeline.hold(r);
        } else {
            r.write_to(self.conn.out());
        }
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
        self.rt.metrics.session.protocol_error(kind);
        if crate::log_limit::BAD_INPUT.allow(kind.as_str()) {
            info!(session = %self.id, client = %self.client.ip, source = "client", kind = kind.as_str(), reply = %r, "refused client input");
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

    /// Parses and answers one command line (it ends in LF; see `next_line`).
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
        let is = |v: &[u8]| verb.eq_ignore_ascii_case(v);
        if is(b"XCLIENT") || is(b"XFORWARD") || is(b"PROXY") {
            self.bad_input(
                ProtocolErrorKind::ControlCommand,
                reply(550, (5, 7, 0), "Error: insufficient authorization"),
            );
            return Flow::Continue;
        }
        if is(b"MAIL") {
            return match crate::smtp::parse_mail(&line) {
                Ok(cmd) => Box::pin(self.mail(cmd)).await,
                Err(e) => self.command_error(e, "sender"),
            };
        }
        if is(b"RCPT") {
            return match crate::smtp::parse_rcpt(&line) {
                Ok(cmd) => Box::pin(self.rcpt(cmd)).await,
                Err(e) => self.command_error(e, "recipient"),
            };
        }
        if is(b"BDAT") {
            return self.bdat(&line);
        }
        if (is(b"EHLO") || is(b"HELO")) && line.bytes().any(|b| b.is_ascii_control()) {
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
            Request::Ehlo { host } => Box::pin(self.ehlo(host, true)).await,
            Request::Helo { host } => Box::pin(self.ehlo(host, false)).await,
            Request::Data => Box::pin(self.data()).await,
            Request::Rset => Box::pin(self.rset()).await,
            Request::Noop { .. } => self.noop(),
            Request::Quit => self.quit(),
            Request::Vrfy { .. } => self.vrfy(),
            Request::Expn { .. } => self.expn(),
            Request::Help { .. } => self.help(),
            Request::StartTls => self.starttls_command(),
            Request::Auth {
                mechanism,
                initial_response,
            } => Box::pin(self.auth(mechanism, initial_response)).await,
            Request::Mail { .. } | Request::Rcpt { .. } | Request::Bdat { .. } => {
                unreachable!("parsed above")
            }
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

    /// The identity the upstream should see for this client.
    fn identity(&self) -> ClientIdentity {
        ClientIdentity {
            ip: self.client.ip,
            port: self.client.port,
            helo: self.helo.clone().unwrap_or_default(),
            esmtp: self.esmtp,
            tls: self.client.tls,
            tls_description: self.conn.stream.tls_description(),
            auth_user: self.client.auth_user.clone(),
            session_id: self.id.clone(),
        }
    }

    /// Ends the current transaction: log line, counters; the next one starts afresh.
    fn finish_transaction(&mut self, outcome: TransactionOutcome, upstream_reply: Option<&Reply>) {
        let Some(tx) = self.tx.take() else {
            return;
        };
        self.receiving = None;
        // The client's own check results (e.g. a DNS list first needed at rcpt) stay
        // for the rest of the session; the sender's and the message's go.
        self.client_auth = tx.auth.client_part();
        // A transaction whose upstream failed was counted and logged when it failed.
        if !tx.upstream_failed {
            self.rt.metrics.session.transaction(outcome);
            self.log_transaction(&tx, outcome, upstream_reply);
        }
    }

    /// Records the transaction as failed at the upstream (metric and log line now), but
    /// keeps it open: the client learns of it from 4xx replies until it resets.
    fn fail_transaction_upstream(&mut self) {
        let Some(tx) = self.tx.as_ref() else {
            return;
        };
        if !tx.upstream_failed {
            let outcome = TransactionOutcome::UpstreamFailed;
            self.rt.metrics.session.transaction(outcome);
            self.log_transaction(tx, outcome, None);
        }
        if let Some(tx) = self.tx.as_mut() {
            tx.upstream_failed = true;
        }
    }

    /// One structured line per transaction outcome.
    fn log_transaction(
        &self,
        tx: &Transaction,
        outcome: TransactionOutcome,
        upstream_reply: Option<&Reply>,
    ) {
        info!(
            session = %self.id,
            client = %self.client.ip,
            helo = self.helo.as_deref().unwrap_or(""),
            from = tx.sender_text.as_str(),
            rcpts = %tx.recipient_list(),
            size = tx.size,
            upstream_reply = %upstream_reply.map(|r| r.to_string()).unwrap_or_default(),
            duration_ms = tx.started.elapsed().as_millis() as u64,
            auth = %tx.auth.summary(),
            filters = %tx.filter_summary(),
            outcome = outcome.as_str(),
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

/// A short random id for log correlation.
fn new_session_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    // `{:X}{:04X}`, written by hand: one per connection, and `format!` cost 1,000
    // instructions of it.
    let mut id = String::with_capacity(16);
    push_hex(&mut id, t & 0x00FF_FFFF_FFFF, 1);
    push_hex(&mut id, seq & 0xFFFF, 4);
    id
}

/// Appends `n` in upper-case hex, at least `width` digits.
fn push_hex(out: &mut String, n: u64, width: usize) {
    let digits = (64 - n.leading_zeros() as usize).div_ceil(4).max(width);
    for i in (0..digits).rev() {
        let nibble = ((n >> (i * 4)) & 0xF) as u8;
        out.push(char::from(if nibble < 10 {
            b'0' + nibble
        } else {
            b'A' + nibble - 10
        }));
    }
}
