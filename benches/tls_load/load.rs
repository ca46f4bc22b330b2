//! The legitimate load: `sessions` concurrent clients share a fixed number of messages;
//! each connection sends up to `per_conn` of them (0: all it can take, like smtp-source
//! `-d`), over STARTTLS or in plaintext, and every message's latency is recorded.
//!
//! Latency of a message: from the moment its client started working on it until the
//! `250` after its final dot. For the first message of a connection that includes
//! connecting, the banner, EHLO and, under TLS, STARTTLS, the handshake and the second
//! EHLO, which is what a sender waits for when every message comes on a new connection;
//! for later messages on a connection it starts at MAIL FROM.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use rustls::HandshakeKind;
use rustls_pki_types::ServerName;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::smtp::{Conn, SmtpError};

#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// The server under test, `ADDR:PORT`.
    #[arg(long)]
    pub target: SocketAddr,
    /// Concurrent client sessions.
    #[arg(long, default_value_t = 10)]
    pub sessions: usize,
    /// Messages in the whole run.
    #[arg(long, default_value_t = 1000)]
    pub messages: u64,
    /// Message size in bytes (headers included, before the final dot).
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Messages per connection; 0 keeps each session's connection for as many as it gets.
    #[arg(long, default_value_t = 1)]
    pub per_conn: u64,
    /// Plaintext: no STARTTLS.
    #[arg(long)]
    pub no_tls: bool,
    /// Disable TLS session resumption (default: one session cache for the whole run).
    #[arg(long)]
    pub no_resume: bool,
    /// The CA that signed the server's certificate (PEM); required with TLS.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// The name verified in the server's certificate.
    #[arg(long, default_value = "mx.test")]
    pub server_name: String,
    /// Local address to connect from (e.g. an exempt network's address).
    #[arg(long)]
    pub source: Option<IpAddr>,
    /// Send MAIL, RCPT and DATA in one write when the server offers PIPELINING.
    #[arg(long)]
    pub pipelining: bool,
    /// The run ends after this long even if messages are left: clients still at work
    /// are stopped, their messages counted as unfinished.
    #[arg(long, value_parser = mxguard::config::parse_duration, default_value = "300s")]
    pub max_time: Duration,
    /// Deadline for each read, write, connect and handshake.
    #[arg(long, value_parser = mxguard::config::parse_duration, default_value = "30s")]
    pub io_timeout: Duration,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

/// What a run did; printed as one JSON object.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub ok: u64,
    pub failed: u64,
    /// Messages a client was still working on when `max_time` stopped the run (one per
    /// session is usual: the one in flight), and how many of them for over a second.
    pub unfinished: u64,
    pub unfinished_over_1s: u64,
    pub oldest_unfinished_ms: f64,
    pub secs: f64,
    pub latencies_us: Vec<u64>,
    pub handshakes: u64,
    pub resumed: u64,
    pub connections: u64,
    pub errors: BTreeMap<String, u64>,
    pub deadline_hit: bool,
}

impl LoadReport {
    pub fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.ok as f64 / self.secs
        } else {
            0.0
        }
    }

    /// Nearest-rank percentile of the message latencies, in milliseconds.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * self.latencies_us.len() as f64).ceil() as usize;
        let i = rank.clamp(1, self.latencies_us.len()) - 1;
        self.latencies_us[i] as f64 / 1000.0
    }

    pub fn to_json(&self, args: &LoadArgs) -> serde_json::Value {
        let max_ms = self.latencies_us.last().map(|&u| u as f64 / 1000.0);
        json!({
            "mode": "load",
            "target": args.target.to_string(),
            "tls": !args.no_tls,
            "resume": !args.no_tls && !args.no_resume,
            "sessions": args.sessions,
            "size": args.size,
            "per_conn": args.per_conn,
            "pipelining": args.pipelining,
            "ok": self.ok,
            "failed": self.failed,
            "unfinished": self.unfinished,
            "unfinished_over_1s": self.unfinished_over_1s,
            "oldest_unfinished_ms": self.oldest_unfinished_ms,
            "secs": self.secs,
            "rate": self.rate(),
            "p50_ms": self.percentile_ms(50.0),
            "p90_ms": self.percentile_ms(90.0),
            "p99_ms": self.percentile_ms(99.0),
            "max_ms": max_ms,
            "connections": self.connections,
            "handshakes": self.handshakes,
            "resumed": self.resumed,
            "errors": self.errors,
            "deadline_hit": self.deadline_hit,
        })
    }
}

/// What every client task shares.
struct Shared {
    args: LoadArgs,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    message: Vec<u8>,
    next: AtomicU64,
    deadline: Instant,
}

impl Shared {
    /// Takes the next message of the run, unless all are taken or time is up.
    fn claim(&self) -> bool {
        Instant::now() < self.deadline
            && self.next.fetch_add(1, Ordering::Relaxed) < self.args.messages
    }
}

/// One client task's tally, read when the run ends (also from a client stopped at the
/// deadline, hence behind a lock rather than returned).
#[derive(Default)]
struct Tally {
    ok: u64,
    failed: u64,
    latencies_us: Vec<u64>,
    handshakes: u64,
    resumed: u64,
    connections: u64,
    errors: BTreeMap<String, u64>,
    /// The message being worked on, and since when.
    current: Option<Instant>,
}

pub async fn run(args: LoadArgs) -> Result<LoadReport, String> {
    let tls = if args.no_tls {
        None
    } else {
        let ca = args
            .ca
            .as_ref()
            .ok_or("--ca is required with TLS (or --no-tls)")?;
        let cfg: Arc<ClientConfig> =
            crate::client_tls::client_config_from_file(ca, !args.no_resume)?;
        let name = ServerName::try_from(args.server_name.clone())
            .map_err(|e| format!("--server-name {}: {e}", args.server_name))?;
        Some((TlsConnector::from(cfg), name))
    };
    run_with(args, tls).await
}

/// A run with an explicit TLS connector (the self-test passes its own CA).
pub async fn run_with(
    args: LoadArgs,
    tls: Option<(TlsConnector, ServerName<'static>)>,
) -> Result<LoadReport, String> {
    if args.sessions == 0 {
        return Err("--sessions must be at least 1".into());
    }
    let started = Instant::now();
    let deadline = started + args.max_time;
    let shared = Arc::new(Shared {
        message: message(args.size),
        deadline,
        next: AtomicU64::new(0),
        tls,
        args,
    });
    let tallies: Vec<Arc<Mutex<Tally>>> =
        (0..shared.args.sessions).map(|_| Arc::default()).collect();
    let mut tasks = tokio::task::JoinSet::new();
    for t in &tallies {
        tasks.spawn(client(shared.clone(), t.clone()));
    }
    let all_done = async {
        while let Some(t) = tasks.join_next().await {
            t.map_err(|e| format!("client task: {e}"))?;
        }
        Ok::<_, String>(())
    };
    let deadline_hit = tokio::select! {
        r = all_done => { r?; false }
        _ = tokio::time::sleep_until(deadline.into()) => true,
    };
    tasks.abort_all();
    let mut report = LoadReport {
        secs: started.elapsed().as_secs_f64(),
        deadline_hit,
        ..LoadReport::default()
    };
    let now = Instant::now();
    for t in tallies {
        let t = std::mem::take(&mut *lock(&t));
        if let Some(since) = t.current {
            let age = now - since;
            report.unfinished += 1;
            report.unfinished_over_1s += u64::from(age > Duration::from_secs(1));
            report.oldest_unfinished_ms = report.oldest_unfinished_ms.max(age.as_secs_f64() * 1e3);
        }
        report.ok += t.ok;
        report.failed += t.failed;
        report.latencies_us.extend(t.latencies_us);
        report.handshakes += t.handshakes;
        report.resumed += t.resumed;
        report.connections += t.connections;
        for (k, v) in t.errors {
            *report.errors.entry(k).or_default() += v;
        }
    }
    report.latencies_us.sort_unstable();
    Ok(report)
}

fn lock(t: &Mutex<Tally>) -> std::sync::MutexGuard<'_, Tally> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}

/// One client: connections one after another until the run's messages are gone.
async fn client(shared: Arc<Shared>, tally: Arc<Mutex<Tally>>) {
    while shared.claim() {
        {
            let mut t = lock(&tally);
            t.connections += 1;
            t.current = Some(Instant::now());
        }
        let Err(e) = connection(&shared, &tally).await else {
            continue;
        };
        {
            let mut t = lock(&tally);
            *t.errors.entry(e.label()).or_default() += 1;
            if t.current.take().is_some() {
                t.failed += 1;
            }
        }
        // a refused client does not hammer the server in a tight loop
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One connection, whose first message is already claimed.
async fn connection(shared: &Shared, tally: &Mutex<Tally>) -> Result<(), SmtpError> {
    let t0 = Instant::now();
    let args = &shared.args;
    let tcp = connect(args).await?;
    let mut conn = Conn::new(tcp, args.io_timeout);
    conn.expect(220, "banner").await?;
    let ehlo = conn
        .command(b"EHLO client.bench.test\r\n", 250, "EHLO")
        .await?;
    let Some((connector, name)) = &shared.tls else {
        let pipelining = ehlo.has_extension("PIPELINING");
        return transactions(shared, &mut conn, pipelining, t0, tally).await;
    };
    if !ehlo.has_extension("STARTTLS") {
        return Err(SmtpError::Protocol {
            stage: "EHLO",
            what: "no STARTTLS offered",
        });
    }
    conn.command(b"STARTTLS\r\n", 220, "STARTTLS").await?;
    let tcp = conn.into_inner()?;
    let tls = tokio::time::timeout(args.io_timeout, connector.connect(name.clone(), tcp))
        .await
        .map_err(|_| SmtpError::Timeout {
            stage: "handshake",
            after: args.io_timeout,
        })?
        .map_err(|source| SmtpError::Io {
            stage: "handshake",
            source,
        })?;
    {
        let mut t = lock(tally);
        t.handshakes += 1;
        if tls.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed) {
            t.resumed += 1;
        }
    }
    let mut conn = Conn::new(tls, args.io_timeout);
    let ehlo = conn
        .command(b"EHLO client.bench.test\r\n", 250, "EHLO after TLS")
        .await?;
    let pipelining = ehlo.has_extension("PIPELINING");
    transactions(shared, &mut conn, pipelining, t0, tally).await
}

async fn connect(args: &LoadArgs) -> Result<TcpStream, SmtpError> {
    let io = |source| SmtpError::Io {
        stage: "connect",
        source,
    };
    let sock = crate::source_addr::socket_from(args.source, args.target).map_err(io)?;
    let tcp = tokio::time::timeout(args.io_timeout, sock.connect(args.target))
        .await
        .map_err(|_| SmtpError::Timeout {
            stage: "connect",
            after: args.io_timeout,
        })?
        .map_err(io)?;
    tcp.set_nodelay(true).map_err(io)?;
    Ok(tcp)
}

/// The connection's transactions (the first already claimed), then QUIT.
async fn transactions<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    conn: &mut Conn<S>,
    pipelining: bool,
    mut started: Instant,
    tally: &Mutex<Tally>,
) -> Result<(), SmtpError> {
    let mut sent = 0u64;
    loop {
        transaction(shared, conn, pipelining).await?;
        {
            let mut t = lock(tally);
            t.ok += 1;
            t.latencies_us
                .push(started.elapsed().as_micros().min(u64::MAX as u128) as u64);
            t.current = None;
        }
        sent += 1;
        let per_conn = shared.args.per_conn;
        if (per_conn != 0 && sent >= per_conn) || !shared.claim() {
            break;
        }
        started = Instant::now();
        lock(tally).current = Some(started);
    }
    conn.command(b"QUIT\r\n", 221, "QUIT").await?;
    Ok(())
}

async fn transaction<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    conn: &mut Conn<S>,
    pipelining: bool,
) -> Result<(), SmtpError> {
    const MAIL: &[u8] = b"MAIL FROM:<bench@example.org>\r\n";
    const RCPT: &[u8] = b"RCPT TO:<rcpt@example.net>\r\n";
    const DATA: &[u8] = b"DATA\r\n";
    if pipelining && shared.args.pipelining {
        conn.send(&[MAIL, RCPT, DATA].concat(), "MAIL+RCPT+DATA")
            .await?;
        conn.expect(250, "MAIL").await?;
        conn.expect(250, "RCPT").await?;
        conn.expect(354, "DATA").await?;
    } else {
        conn.command(MAIL, 250, "MAIL").await?;
        conn.command(RCPT, 250, "RCPT").await?;
        conn.command(DATA, 354, "DATA").await?;
    }
    conn.send(&shared.message, "message").await?;
    conn.expect(250, "end of data").await?;
    Ok(())
}

/// A message of `size` bytes: a few headers, then 78-character lines (no line starts with
/// a dot, so nothing needs stuffing), then the final dot.
pub fn message(size: usize) -> Vec<u8> {
    let mut m = b"From: <bench@example.org>\r\nTo: <rcpt@example.net>\r\nSubject: tls_load\r\n\r\n"
        .to_vec();
    let line = b"0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789ab\r\n";
    while m.len() + line.len() <= size {
        m.extend_from_slice(line);
    }
    let rest = size.saturating_sub(m.len());
    if rest >= 3 {
        m.extend(std::iter::repeat_n(b'x', rest - 2));
        m.extend_from_slice(b"\r\n");
    }
    m.extend_from_slice(b".\r\n");
    m
}
