//! The upstream side: connect (with failover), EHLO, optional STARTTLS, XCLIENT or
//! XFORWARD, then replay the client's transaction in lockstep and hand back the
//! upstream's own replies.
//!
//! Connections can be opened ahead of time ([`pool`]): each serves one client session.
//!
//! Nothing here decides policy; the session calls [`Upstream::mail`], [`Upstream::rcpt`]
//! and [`Upstream::data`] only after the rules have passed the command, and every
//! [`RelayError`] becomes a 4xx for the client: our trouble or the upstream's is never the
//! sender's fault.

pub mod pool;
pub mod reply_reader;
pub mod trace;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::config::{UpstreamConfig, UpstreamPoolConfig, UpstreamTls};
use crate::dotstream::Encoder;
use crate::message::MessageOut;
use crate::reply::Reply;
use crate::spool::Spool;
use crate::stream::{BoxIo, BufferedConn, ReadError, Stream};
use crate::telemetry::{ConnectFailure, Metrics};
use reply_reader::{ReplyReader, Step};
pub use trace::ClientIdentity;

/// What an upstream offered in its EHLO reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub pipelining: bool,
    /// `SIZE n`; `Some(0)` means "SIZE without a limit".
    pub size: Option<u64>,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub starttls: bool,
    pub dsn: bool,
    /// CHUNKING (RFC 3030): BDAT.
    pub chunking: bool,
    /// XCLIENT attributes, when offered.
    pub xclient: Option<trace::Attributes>,
    /// XFORWARD attributes, when offered.
    pub xforward: Option<trace::Attributes>,
    /// SASL mechanisms offered (upper case).
    pub auth: Vec<String>,
}

impl Capabilities {
    /// Parses the lines of an EHLO reply joined by `\n` (the first line is the greeting).
    pub fn parse(message: &str) -> Self {
        Capabilities::from_lines(message.split('\n'))
    }

    /// Parses an EHLO reply's lines (the first is the greeting). Every pooled connection
    /// is greeted twice (before and after XCLIENT), so this allocates only for the
    /// arguments it keeps.
    pub fn from_lines<'l>(lines: impl IntoIterator<Item = &'l str>) -> Self {
        let mut caps = Capabilities::default();
        for line in lines.into_iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            let is = |name: &str| keyword.eq_ignore_ascii_case(name);
            if is("PIPELINING") {
                caps.pipelining = true;
            } else if is("SIZE") {
                caps.size = Some(words.next().and_then(|a| a.parse().ok()).unwrap_or(0));
            } else if is("8BITMIME") {
                caps.eight_bit_mime = true;
            } else if is("SMTPUTF8") {
                caps.smtputf8 = true;
            } else if is("STARTTLS") {
                caps.starttls = true;
            } else if is("DSN") {
                caps.dsn = true;
            } else if is("CHUNKING") {
                caps.chunking = true;
            } else if is("XCLIENT") {
                caps.xclient = Some(trace::Attributes::from_words(words));
            } else if is("XFORWARD") {
                caps.xforward = Some(trace::Attributes::from_words(words));
            } else if is("AUTH") {
                caps.auth = words.map(|a| a.to_ascii_uppercase()).collect();
            }
        }
        caps
    }

    /// What both offer: the extensions a client may be offered when either of two
    /// upstreams may carry its mail. SIZE is the smaller limit (0 = none).
    pub fn intersect(&self, o: &Capabilities) -> Capabilities {
        let size = match (self.size, o.size) {
            // 0 is "no limit": the other's limit applies.
            (Some(a), Some(b)) => Some(match (a, b) {
                (0, x) | (x, 0) => x,
                (a, b) => a.min(b),
            }),
            _ => None,
        };
        Capabilities {
            pipelining: self.pipelining && o.pipelining,
            size,
            eight_bit_mime: self.eight_bit_mime && o.eight_bit_mime,
            smtputf8: self.smtputf8 && o.smtputf8,
            starttls: self.starttls && o.starttls,
            dsn: self.dsn && o.dsn,
            chunking: self.chunking && o.chunking,
            xclient: None,
            xforward: None,
            auth: self
                .auth
                .iter()
                .filter(|m| o.auth.contains(m))
                .cloned()
                .collect(),
        }
    }
}

/// Why the upstream could not do what we asked. Always a 4xx for the client.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("no upstream reachable: {0}")]
    Unavailable(String),
    #[error("upstream timed out during {0}")]
    Timeout(&'static str),
    #[error("upstream connection lost during {stage}: {reason}")]
    Lost { stage: &'static str, reason: String },
    /// The upstream is out of step: an unparsable or over-long reply, one that does not
    /// fit the command (a 250 to DATA), or bytes nobody asked for. The connection is
    /// dropped: nothing it says can be matched to a command any more.
    #[error("upstream protocol error during {stage}: {detail}")]
    Protocol { stage: &'static str, detail: String },
    #[error("upstream refused {stage}: {reply}")]
    Refused { stage: &'static str, reply: Reply },
    /// Our own failure while sending (reading the spooled message): not the upstream's
    /// fault, so it is not counted against it and its connection is not blamed.
    #[error("reading the spooled message: {0}")]
    Local(std::io::Error),
}

impl RelayError {
    /// Whether the failure is ours rather than the upstream's.
    pub fn is_local(&self) -> bool {
        matches!(self, RelayError::Local(_))
    }
}

/// How the real client's identity reaches the upstream on this connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceMode {
    Xclient,
    Xforward,
    ReceivedHeader,
}

/// The configured upstreams, their TLS settings, what each offered when last seen, and
/// the pool of warm connections to them.
pub struct Upstreams {
    connector: Arc<Connector>,
    pool: Arc<pool::Pool>,
}

/// Opens connections: what both a session and the pool's background refills need.
pub struct Connector {
    configs: Vec<UpstreamConfig>,
    tls: Vec<Option<Arc<ClientConfig>>>,
    hostname: String,
    /// Per configured upstream: its capabilities at its last EHLO (before XCLIENT).
    seen: Vec<ArcSwapOption<Capabilities>>,
    metrics: Arc<Metrics>,
    /// Tests: connects upstream `index` to an in-memory peer instead of TCP.
    dialer: Option<Dialer>,
}

/// Opens a byte stream to the upstream with the given index (see [`Upstreams::with_dialer`]).
pub type Dialer = Box<dyn Fn(usize) -> std::io::Result<BoxIo> + Send + Sync>;

impl Upstreams {
    /// The upstreams, without a pool until [`Upstreams::with_pool`].
    pub fn new(
        configs: Vec<UpstreamConfig>,
        hostname: String,
        metrics: Arc<Metrics>,
    ) -> Result<Self, crate::tls::TlsError> {
        let n = configs.len();
        let tls = configs
            .iter()
            .map(|c| match c.tls {
                UpstreamTls::None => Ok(None),
                _ => {
                    crate::tls::upstream_client_config(c.tls_verify, c.ca_file.as_deref()).map(Some)
                }
            })
            .collect::<Result<_, _>>()?;
        let pool = pool::Pool::disabled(n, &metrics.pool);
        Ok(Upstreams {
            connector: Arc::new(Connector {
                configs,
                tls,
                hostname,
                seen: configs_seen(n),
                metrics,
                dialer: None,
            }),
            pool: Arc::new(pool),
        })
    }

    /// Keeps `config.size` warm connections (none when 0); they are opened once
    /// [`Upstreams::keep_warm`] runs.
    pub fn with_pool(mut self, config: &UpstreamPoolConfig) -> Self {
        let c = &self.connector;
        self.pool = Arc::new(pool::Pool::new(config, c.configs.len(), &c.metrics.pool));
        self
    }

    /// The upstreams reached through `dialer` rather than TCP: the session's in-process
    /// tests put scripted upstreams on in-memory pipes, so their timeouts run on paused
    /// time. Call before anything else uses the upstreams.
    pub fn with_dialer(mut self, dialer: Dialer) -> Self {
        Arc::get_mut(&mut self.connector)
            .expect("the dialer is set before the upstreams are shared")
            .dialer = Some(dialer);
        self
    }

    /// Fills the pool in the background until `shutdown`, then closes its idle
    /// connections (see [`pool::keep_warm`]). Ends at once when the pool is off.
    pub fn keep_warm(
        &self,
        shutdown: watch::Receiver<bool>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        pool::keep_warm(self.connector.clone(), self.pool.clone(), shutdown)
    }

    /// What a client may be offered: the extensions every upstream seen so far supports
    /// (any of them may carry the client's mail, after a failover). `None` until one has
    /// been seen: then only what needs no upstream is offered.
    pub fn offered(&self) -> Option<Capabilities> {
        self.connector
            .seen
            .iter()
            .filter_map(|c| c.load_full())
            .map(|c| (*c).clone())
            .reduce(|a, b| a.intersect(&b))
    }

    /// Connects to each upstream, reads its EHLO capabilities, and says goodbye: run at
    /// start-up so the first client is offered only what every upstream supports.
    /// `Ok` with the capabilities offered once at least one answered.
    pub async fn probe(&self) -> Result<Capabilities, RelayError> {
        let mut reasons = Vec::new();
        for index in 0..self.connector.count() {
            match self.connector.open(index).await {
                Ok(up) => up.quit().await,
                Err(e) => reasons.push(format!("{}: {e}", self.connector.address(index))),
            }
        }
        self.offered()
            .ok_or_else(|| RelayError::Unavailable(reasons.join("; ")))
    }

    /// Opens a session for one client: with the first upstream that answers, in the
    /// configured order, with XCLIENT (or XFORWARD) set up for `client`. A warm pooled
    /// connection is used when there is one; a pooled one that fails at its first
    /// command (it died after the check) is replaced by a fresh connection, unnoticed.
    pub async fn connect(&self, client: &ClientIdentity) -> Result<Upstream, RelayError> {
        let mut reasons = Vec::new();
        for index in 0..self.connector.count() {
            if let Some(mut up) = self.pool.take(index).await {
                match up.identify(client).await {
                    Ok(()) => return Ok(up),
                    Err(e) => {
                        self.pool.discarded_dead(index);
                        debug!(upstream = %up.address, error = %e, "pooled upstream connection failed at its first command; connecting afresh");
                    }
                }
            }
            match self.connector.open(index).await {
                Ok(mut up) => {
                    up.identify(client).await?;
                    return Ok(up);
                }
                Err(e) => {
                    self.connector.count_connect_failure(index, &e);
                    warn!(upstream = %self.connector.address(index), error = %e, "upstream connect failed");
                    reasons.push(format!("{}: {e}", self.connector.address(index)));
                }
            }
        }
        Err(RelayError::Unavailable(reasons.join("; ")))
    }
}

impl Connector {
    fn count(&self) -> usize {
        self.configs.len()
    }

    fn address(&self, index: usize) -> &str {
        &self.configs[index].address
    }

    fn count_connect_failure(&self, index: usize, e: &RelayError) {
        let reason = match e {
            RelayError::Timeout(_) => ConnectFailure::Timeout,
            RelayError::Refused { .. } => ConnectFailure::Refused,
            _ => ConnectFailure::Error,
        };
        self.metrics.upstream.connect_failed(index, reason);
    }

    /// A byte stream to upstream `index`: TCP, or the test dialer's pipe.
    async fn dial(&self, index: usize) -> std::io::Result<BoxIo> {
        if let Some(dial) = &self.dialer {
            return dial(index);
        }
        let tcp = TcpStream::connect(&self.configs[index].address).await?;
        let _ = tcp.set_nodelay(true);
        Ok(Box::new(tcp))
    }

    /// Connects to one upstream: banner, EHLO, and STARTTLS when configured.
    async fn open(&self, index: usize) -> Result<Upstream, RelayError> {
        let cfg = &self.configs[index];
        let io = tokio::time::timeout(cfg.connect_timeout, self.dial(index))
            .await
            .map_err(|_| RelayError::Timeout("connect"))?
            .map_err(|e| RelayError::Lost {
                stage: "connect",
                reason: e.to_string(),
            })?;
        let mut up = Upstream {
            conn: BufferedConn::new(Stream::Plain(io), 4096),
            replies: ReplyReader::default(),
            caps: Capabilities::default(),
            trace: TraceMode::ReceivedHeader,
            command_timeout: cfg.command_timeout,
            data_timeout: cfg.data_timeout,
            keepalive: cfg.keepalive,
            metrics: self.metrics.clone(),
            address: cfg.address.clone(),
            from_pool: false,
        };
        let banner = up.read_reply("banner", cfg.command_timeout).await?;
        if banner.code != 220 {
            return Err(RelayError::Refused {
                stage: "banner",
                reply: banner,
            });
        }
        up.ehlo(&self.hostname).await?;
        if let Some(tls) = &self.tls[index] {
            if up.caps.starttls {
                let name = cfg
                    .tls_name
                    .clone()
                    .unwrap_or_else(|| host_part(&cfg.address).to_owned());
                up.starttls(tls.clone(), &name).await?;
                up.ehlo(&self.hostname).await?;
            } else if cfg.tls == UpstreamTls::Require {
                return Err(RelayError::Refused {
                    stage: "starttls",
                    reply: Reply::new(
                        454,
                        crate::reply::StatusCode(4, 7, 0),
                        "STARTTLS required but not offered",
                    ),
                });
            }
        }
        self.seen[index].store(Some(Arc::new(up.caps.clone())));
        Ok(up)
    }
}

/// A failed write to the upstream at `stage`: the connection is lost.
fn lost_at(stage: &'static str) -> impl FnOnce(std::io::Error) -> RelayError {
    move |e| RelayError::Lost {
        stage,
        reason: e.to_string(),
    }
}

fn configs_seen(n: usize) -> Vec<ArcSwapOption<Capabilities>> {
    (0..n).map(|_| ArcSwapOption::empty()).collect()
}

/// Message bytes per write to the upstream.
const WRITE_BATCH: usize = 32 * 1024;

/// A run of message bytes that need no stuffing this long is written from the spool
/// directly rather than copied into a write batch. Shorter runs are copied: below a
/// batch the copy costs less than the separate write of the terminator that a direct
/// run needs (the run never holds the message's last line end).
const VERBATIM_MIN: usize = WRITE_BATCH;

/// Whether a reply code can answer `stage`'s command: its positive code(s), or a
/// refusal. Anything else means the upstream is out of step with us.
///
/// Public (hidden) only so that the `upstream_reply` fuzz target checks it on what
/// the reply parser yields.
#[doc(hidden)]
pub fn reply_fits(stage: &str, code: u16) -> bool {
    if (400..600).contains(&code) {
        return true;
    }
    match stage {
        "banner" | "starttls" => code == 220,
        "xclient" => code == 220 || code == 250,
        "ehlo" => code == 250,
        "data" => code == 354,
        "auth" => code == 235 || code == 334,
        "quit" => true,
        // mail, rcpt, rset, noop, xforward, end_of_data
        _ => (200..300).contains(&code),
    }
}

fn host_part(address: &str) -> &str {
    let host = address.rsplit_once(':').map(|(h, _)| h).unwrap_or(address);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// One open upstream session, used for the transactions of one client session.
pub struct Upstream {
    conn: BufferedConn<BoxIo>,
    replies: ReplyReader,
    pub caps: Capabilities,
    pub trace: TraceMode,
    command_timeout: Duration,
    data_timeout: Duration,
    /// How often to NOOP while the client is still sending a message.
    pub keepalive: Duration,
    metrics: Arc<Metrics>,
    pub address: String,
    /// Taken warm from the pool: its first MAIL may meet an upstream that closed it a
    /// moment ago, so the session retries that MAIL once on a fresh connection.
    from_pool: bool,
}

impl Upstream {
    /// Reads one (possibly multi-line) reply and checks that it fits `stage`'s command.
    async fn read_reply(
        &mut self,
        stage: &'static str,
        timeout: Duration,
    ) -> Result<Reply, RelayError> {
        let deadline = Instant::now() + timeout;
        loop {
            let (used, step) = self.replies.read(self.conn.buffered());
            self.conn.consume(used);
            match step {
                Step::Reply(reply) => {
                    if !reply_fits(stage, reply.code) {
                        return Err(self.protocol_error(
                            stage,
                            format!("reply {} does not fit the command", reply.code),
                        ));
                    }
                    return Ok(reply);
                }
                Step::Invalid(detail) => return Err(self.protocol_error(stage, detail)),
                Step::NeedMore => {}
            }
            match self.conn.fill(deadline).await {
                Ok(_) => {}
                Err(ReadError::Timeout) => return Err(RelayError::Timeout(stage)),
                Err(e) => {
                    return Err(RelayError::Lost {
                        stage,
                        reason: e.to_string(),
                    });
                }
            }
        }
    }

    async fn write(&mut self, stage: &'static str, bytes: &[u8]) -> Result<(), RelayError> {
        self.conn
            .send(bytes, self.command_timeout)
            .await
            .map_err(lost_at(stage))
    }

    /// Writes `first`, then `second`, in vectored writes (one system call when the
    /// socket takes both).
    async fn write_pair(
        &mut self,
        stage: &'static str,
        first: &[u8],
        second: &[u8],
    ) -> Result<(), RelayError> {
        self.conn
            .send_pair(first, second, self.command_timeout)
            .await
            .map_err(lost_at(stage))
    }

    fn protocol_error(&self, stage: &'static str, detail: String) -> RelayError {
        self.metrics.upstream.protocol_error(stage);
        RelayError::Protocol { stage, detail }
    }

    /// Sends one command line and returns the reply, timing it.
    async fn command(&mut self, stage: &'static str, line: &[u8]) -> Result<Reply, RelayError> {
        self.nothing_unanswered(stage)?;
        let started = Instant::now();
        self.write(stage, line).await?;
        self.timed_reply(stage, started).await
    }

    /// Two commands in one write, and their replies in order.
    async fn command_pair(
        &mut self,
        first: (&'static str, &[u8]),
        second: (&'static str, &[u8]),
    ) -> Result<(Reply, Reply), RelayError> {
        self.nothing_unanswered(first.0)?;
        let started = Instant::now();
        let mut lines = Vec::with_capacity(first.1.len() + second.1.len());
        lines.extend_from_slice(first.1);
        lines.extend_from_slice(second.1);
        self.write(first.0, &lines).await?;
        let a = self.timed_reply(first.0, started).await?;
        let b = self.timed_reply(second.0, started).await?;
        Ok((a, b))
    }

    /// Bytes already waiting before a command are a reply to nothing: a protocol error,
    /// never the answer to what we send next.
    fn nothing_unanswered(&self, stage: &'static str) -> Result<(), RelayError> {
        if self.conn.buffered().is_empty() {
            Ok(())
        } else {
            Err(self.protocol_error(stage, "unsolicited reply before the command".into()))
        }
    }

    /// The next reply, for the command of `stage` sent at `since` (timed and counted).
    async fn timed_reply(
        &mut self,
        stage: &'static str,
        since: Instant,
    ) -> Result<Reply, RelayError> {
        let reply = self.read_reply(stage, self.command_timeout).await?;
        self.metrics
            .upstream
            .reply(stage, reply.code, since.elapsed());
        Ok(reply)
    }

    async fn ehlo(&mut self, name: &str) -> Result<(), RelayError> {
        let reply = self
            .command("ehlo", format!("EHLO {name}\r\n").as_bytes())
            .await?;
        if reply.code != 250 {
            return Err(RelayError::Refused {
                stage: "ehlo",
                reply,
            });
        }
        self.caps = Capabilities::from_lines(reply.lines());
        Ok(())
    }

    async fn starttls(&mut self, config: Arc<ClientConfig>, name: &str) -> Result<(), RelayError> {
        let reply = self.command("starttls", b"STARTTLS\r\n").await?;
        if reply.code != 220 {
            return Err(RelayError::Refused {
                stage: "starttls",
                reply,
            });
        }
        let server_name = ServerName::try_from(name.to_owned()).map_err(|_| RelayError::Lost {
            stage: "starttls",
            reason: format!("invalid TLS server name {name:?}"),
        })?;
        self.conn.discard_buffered();
        let tcp = self
            .conn
            .stream
            .take_plain()
            .ok_or_else(|| RelayError::Protocol {
                stage: "starttls",
                detail: "connection already under TLS".into(),
            })?;
        let connector = tokio_rustls::TlsConnector::from(config);
        let tls = tokio::time::timeout(self.command_timeout, connector.connect(server_name, tcp))
            .await
            .map_err(|_| RelayError::Timeout("starttls"))?
            .map_err(|e| RelayError::Lost {
                stage: "starttls",
                reason: e.to_string(),
            })?;
        self.conn.stream = Stream::ClientTls(Box::new(tls));
        Ok(())
    }

    /// Tells the upstream who the client is: XCLIENT (then EHLO again with the client's
    /// own HELO name, as Postfix restarts the session), else XFORWARD, else nothing here
    /// and a Received header at DATA.
    async fn identify(&mut self, client: &ClientIdentity) -> Result<(), RelayError> {
        if let Some(attrs) = self.caps.xclient {
            let cmd = trace::xclient_command(client, attrs);
            let helo = if client.helo.is_empty() {
                "unknown"
            } else {
                &client.helo
            };
            let verb = if client.esmtp { "EHLO" } else { "HELO" };
            let hello = format!("{verb} {helo}\r\n");
            let (xclient, hello_reply) = if self.caps.pipelining {
                // One round trip for both: XCLIENT may be followed by more commands
                // (Postfix's smtpd does not count it as the last of a group, as it does
                // EHLO), and the EHLO reply is read even when XCLIENT was refused, so
                // nothing is left unread.
                let (x, h) = self
                    .command_pair(("xclient", cmd.as_bytes()), ("ehlo", hello.as_bytes()))
                    .await?;
                (x, Some(h))
            } else {
                let x = self.command("xclient", cmd.as_bytes()).await?;
                let h = if xclient_accepted(&x) {
                    Some(self.command("ehlo", hello.as_bytes()).await?)
                } else {
                    None
                };
                (x, h)
            };
            let reply = match hello_reply {
                Some(h) if xclient_accepted(&xclient) => h,
                _ => {
                    return Err(RelayError::Refused {
                        stage: "xclient",
                        reply: xclient,
                    });
                }
            };
            if reply.code != 250 {
                return Err(RelayError::Refused {
                    stage: "ehlo",
                    reply,
                });
            }
            if client.esmtp {
                self.caps = Capabilities::from_lines(reply.lines());
            }
            self.trace = TraceMode::Xclient;
        } else if self.caps.xforward.is_some() {
            self.trace = TraceMode::Xforward;
        }
        Ok(())
    }

    /// MAIL FROM, preceded by XFORWARD when that is how this upstream learns the client.
    pub async fn mail(
        &mut self,
        client: &ClientIdentity,
        mail_line: &str,
    ) -> Result<Reply, RelayError> {
        if self.trace == TraceMode::Xforward {
            let attrs = self.caps.xforward.unwrap_or_default();
            let reply = self
                .command(
                    "xforward",
                    trace::xforward_command(client, attrs).as_bytes(),
                )
                .await?;
            if reply.code != 250 {
                return Err(RelayError::Refused {
                    stage: "xforward",
                    reply,
                });
            }
        }
        self.command("mail", mail_line.as_bytes()).await
    }

    /// One step of a SASL exchange: sends `line` (the AUTH command or a client response)
    /// and returns the upstream's reply (334 challenge, 235 success, or a refusal).
    pub async fn auth_step(&mut self, line: &[u8]) -> Result<Reply, RelayError> {
        self.command("auth", line).await
    }

    pub async fn rcpt(&mut self, rcpt_line: &str) -> Result<Reply, RelayError> {
        self.command("rcpt", rcpt_line.as_bytes()).await
    }

    /// Sends the message and returns the upstream's final reply: as `BDAT <n> LAST` when
    /// the upstream offers CHUNKING (no stuffing, no terminator to get wrong), else as
    /// DATA re-encoded canonically (dots stuffed, exactly one terminator). The header
    /// section comes from `out` (edited in memory), the body from the spool. A refusal of
    /// DATA itself is returned as the final reply.
    pub async fn send_message(
        &mut self,
        out: &MessageOut,
        spool: &mut Spool,
    ) -> Result<Reply, RelayError> {
        let started = Instant::now();
        let len = out.wire_len(spool.len());
        let reply = if self.caps.chunking {
            let mut wire = Vec::with_capacity((len as usize).min(WRITE_BATCH) + 32);
            wire.extend_from_slice(format!("BDAT {len} LAST\r\n").as_bytes());
            self.stream_message(out, spool, &mut wire, None).await?;
            self.read_reply("end_of_data", self.data_timeout).await?
        } else {
            let reply = self.command("data", b"DATA\r\n").await?;
            if reply.code != 354 {
                // A refusal (4xx/5xx): `reply_fits` let nothing else through.
                return Ok(reply);
            }
            // Sized for the message (stuffing adds little), up to one write batch: a
            // 1 KiB message should not cost a 65 KiB allocation.
            let batch = (len as usize).min(WRITE_BATCH);
            let mut wire = Vec::with_capacity(batch + batch / 32 + 1024);
            let mut encoder = Encoder::new();
            self.stream_message(out, spool, &mut wire, Some(&mut encoder))
                .await?;
            self.read_reply("end_of_data", self.data_timeout).await?
        };
        self.metrics
            .upstream
            .reply("end_of_data", reply.code, started.elapsed());
        Ok(reply)
    }

    /// Writes the message through `encoder` (DATA) or raw (BDAT), in batches; ends the
    /// DATA stream with its terminator.
    async fn stream_message(
        &mut self,
        out: &MessageOut,
        spool: &mut Spool,
        wire: &mut Vec<u8>,
        mut encoder: Option<&mut Encoder>,
    ) -> Result<(), RelayError> {
        let mut reader = out.reader();
        loop {
            let piece = reader.next(spool).await.map_err(RelayError::Local)?;
            let Some(mut rest) = piece else { break };
            while !rest.is_empty() {
                let run = match encoder.as_deref() {
                    // Too short to be worth a write of its own: not even measured.
                    _ if rest.len() < VERBATIM_MIN => 0,
                    Some(e) => e.verbatim_len(rest),
                    None => rest.len(),
                };
                if run >= VERBATIM_MIN {
                    // Sent from the spool itself, behind what is already encoded, in one
                    // vectored write: no copy of the bulk of the message.
                    self.write_pair("data", wire, &rest[..run]).await?;
                    wire.clear();
                    if let Some(e) = encoder.as_deref_mut() {
                        e.pass_verbatim(&rest[..run]);
                    }
                    rest = &rest[run..];
                    continue;
                }
                // Up to a write batch through the encoder.
                let part = &rest[..rest.len().min(WRITE_BATCH)];
                match encoder.as_deref_mut() {
                    Some(e) => e.encode(part, wire),
                    None => wire.extend_from_slice(part),
                }
                rest = &rest[part.len()..];
                if wire.len() >= WRITE_BATCH {
                    self.write("data", wire).await?;
                    wire.clear();
                }
            }
        }
        if let Some(e) = encoder {
            e.finish(wire);
        }
        self.write("data", wire).await
    }

    /// Whether a connection kept open between transactions (or waiting in the pool) is
    /// still usable: nothing may have arrived since the last reply (Postfix's idle
    /// `421 4.4.2 … timeout exceeded`, or a close). Never waits; costs no system call
    /// unless something did arrive.
    pub async fn still_open(&mut self) -> Result<(), RelayError> {
        if !self.conn.buffered().is_empty() {
            return Err(self.protocol_error("idle", "unsolicited bytes while idle".into()));
        }
        match self.conn.fill_ready().await {
            Ok(None) => Ok(()),
            Ok(Some(_)) => Err(RelayError::Lost {
                stage: "idle",
                reason: format!(
                    "upstream spoke while idle: {:?}",
                    String::from_utf8_lossy(
                        &self.conn.buffered()[..self.conn.buffered().len().min(80)]
                    )
                ),
            }),
            Err(e) => Err(RelayError::Lost {
                stage: "idle",
                reason: e.to_string(),
            }),
        }
    }

    /// Whether MAIL and RCPT can be pipelined here (RFC 2920): the upstream offers
    /// PIPELINING, and no XFORWARD must be answered before each MAIL.
    pub fn pipelines(&self) -> bool {
        self.caps.pipelining && self.trace != TraceMode::Xforward
    }

    /// Sends a group of pipelined commands (MAIL and RCPT lines) in one write; their
    /// replies are read in order with [`Upstream::pipelined_reply`]. Bytes waiting
    /// before the group are a reply to nothing: a protocol error.
    pub async fn send_group(&mut self, lines: &[u8]) -> Result<(), RelayError> {
        self.nothing_unanswered("mail")?;
        self.write("pipeline", lines).await
    }

    /// The next reply of a group sent with [`Upstream::send_group`], for its command at
    /// `stage` (`mail` or `rcpt`); `since` is when the group was sent.
    pub async fn pipelined_reply(
        &mut self,
        stage: &'static str,
        since: Instant,
    ) -> Result<Reply, RelayError> {
        self.timed_reply(stage, since).await
    }

    /// Whether this connection was taken warm from the pool (its first transaction may
    /// meet an upstream that closed it a moment ago: worth one retry on a fresh one).
    pub fn came_from_pool(&self) -> bool {
        self.from_pool
    }

    /// NOOP, to keep a waiting transaction alive: `Err` if the session is gone.
    pub async fn noop(&mut self) -> Result<(), RelayError> {
        let reply = self.command("noop", b"NOOP\r\n").await?;
        if reply.code == 250 {
            Ok(())
        } else {
            Err(RelayError::Refused {
                stage: "noop",
                reply,
            })
        }
    }

    /// Aborts the upstream transaction so the session can be reused.
    pub async fn rset(&mut self) -> Result<(), RelayError> {
        let reply = self.command("rset", b"RSET\r\n").await?;
        if reply.code == 250 {
            Ok(())
        } else {
            Err(RelayError::Refused {
                stage: "rset",
                reply,
            })
        }
    }

    /// Says goodbye politely, without waiting long for the answer.
    pub async fn quit(mut self) {
        if self.write("quit", b"QUIT\r\n").await.is_ok() {
            let _ = self.read_reply("quit", Duration::from_secs(2)).await;
        }
        tracing::debug!(upstream = %self.address, "upstream session closed");
    }
}

/// Postfix restarts the session with a new 220 after XCLIENT; smtp-sink just says 250.
fn xclient_accepted(reply: &Reply) -> bool {
    reply.code == 220 || reply.code == 250
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_postfix_ehlo() {
        let msg = "mx.test\nPIPELINING\nSIZE 10240000\nVRFY\nETRN\nSTARTTLS\nXCLIENT NAME ADDR PROTO HELO REVERSE_NAME PORT LOGIN DESTADDR DESTPORT\nXFORWARD NAME ADDR PROTO HELO SOURCE PORT IDENT\nENHANCEDSTATUSCODES\n8BITMIME\nDSN\nSMTPUTF8\nCHUNKING";
        let c = Capabilities::parse(msg);
        assert!(c.pipelining && c.starttls && c.smtputf8 && c.eight_bit_mime && c.dsn);
        assert_eq!(c.size, Some(10240000));
        use trace::Attributes as A;
        let all = [A::ADDR, A::PORT, A::NAME, A::HELO, A::PROTO, A::LOGIN];
        let xclient = c.xclient.unwrap();
        assert!(all.iter().all(|&a| xclient.contains(a)), "{xclient:?}");
        let xforward = c.xforward.unwrap();
        assert!(!xforward.contains(A::LOGIN), "{xforward:?}");
        assert!(
            all[..5].iter().all(|&a| xforward.contains(a)),
            "{xforward:?}"
        );
    }

    #[test]
    fn parses_sendmail_ehlo() {
        let msg = "sm.test Hello localhost [127.0.0.1], pleased to meet you\nENHANCEDSTATUSCODES\nPIPELINING\nEXPN\nVERB\n8BITMIME\nSIZE\nDSN\nETRN\nDELIVERBY\nHELP";
        let c = Capabilities::parse(msg);
        assert_eq!(c.size, Some(0));
        assert!(!c.smtputf8 && c.xclient.is_none() && c.xforward.is_none());
    }

    /// Keywords are matched without regard to case (RFC 5321 §2.4); SASL mechanisms are
    /// kept upper case, XCLIENT attributes in any case.
    #[test]
    fn keywords_in_any_case_are_understood() {
        let c = Capabilities::from_lines([
            "mx.test",
            "pipelining",
            "Size 100",
            "auth plain Login",
            "xclient addr name",
            "  ",
            "Chunking",
        ]);
        assert!(c.pipelining && c.chunking && !c.starttls);
        assert_eq!(c.size, Some(100));
        assert_eq!(c.auth, ["PLAIN", "LOGIN"]);
        use trace::Attributes as A;
        assert_eq!(c.xclient, Some(A::from_words(["ADDR", "NAME"])));
        assert!(!c.xclient.unwrap().contains(A::HELO));
    }

    #[test]
    fn replies_must_fit_their_command() {
        assert!(reply_fits("data", 354));
        assert!(reply_fits("data", 554));
        assert!(!reply_fits("data", 250));
        assert!(!reply_fits("mail", 354));
        assert!(reply_fits("mail", 250));
        assert!(!reply_fits("end_of_data", 354));
        assert!(reply_fits("auth", 334));
        assert!(!reply_fits("ehlo", 220));
        assert!(!reply_fits("rcpt", 199));
    }

    #[test]
    fn host_part_strips_port_and_brackets() {
        assert_eq!(host_part("mail.example:25"), "mail.example");
        assert_eq!(host_part("[::1]:25"), "::1");
    }
}
