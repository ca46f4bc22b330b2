//! Hostile connections held open against a server while a legitimate load runs: clients
//! idle after the banner, drippers (one byte every few seconds), pre-greeting talkers and
//! junk senders. Each connection slot reconnects (after a jittered delay) when the server
//! drops it, as a botnet does, so the server faces the same pressure for the whole run.
//!
//! The slots come from many loopback networks (127.10.0.0/24, 127.10.1.0/24, …, each
//! host address used once per network), `per_network` to a /24: per-network limits then
//! see what a distributed flood looks like, not one noisy neighbour.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

#[derive(clap::Args, Debug, Clone)]
pub struct FloodArgs {
    /// The server under attack, `ADDR:PORT`.
    #[arg(long)]
    pub target: SocketAddr,
    /// Hostile connections held open at once.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Shares of the kinds, in percent (summing to 100).
    #[arg(long, default_value = "idle=40,drip=30,pregreet=15,junk=15")]
    pub mix: String,
    /// Connections per /24 source network (at most 254: one per host address).
    #[arg(long, default_value_t = 20)]
    pub per_network: usize,
    /// The first source network; the next ones follow it (127.10.0.0, 127.10.1.0, …).
    #[arg(long, default_value = "127.10.0.0")]
    pub first_network: Ipv4Addr,
    /// Safety bound: the flood ends by itself after this long (SIGTERM ends it sooner).
    #[arg(long, value_parser = mxguard::config::parse_duration, default_value = "600s")]
    pub duration: Duration,
    /// A dripper sends one byte this often.
    #[arg(long, value_parser = mxguard::config::parse_duration, default_value = "3s")]
    pub drip_interval: Duration,
    /// A junk sender sends one junk line this often.
    #[arg(long, value_parser = mxguard::config::parse_duration, default_value = "1s")]
    pub junk_interval: Duration,
    /// Wait before a dropped slot reconnects (jittered between half and one and a half).
    #[arg(long, value_parser = mxguard::config::parse_duration, default_value = "1s")]
    pub reconnect_delay: Duration,
    /// Connection attempts in flight at once (a ramp that does not overflow the
    /// server's listen backlog by itself).
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Deadline of one connection attempt.
    #[arg(long, value_parser = mxguard::config::parse_duration, default_value = "10s")]
    pub connect_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Reads the banner, then says nothing.
    Idle,
    /// Reads the banner, then sends `EHLO …` and NOOPs one byte at a time.
    Drip,
    /// Talks before the banner (what postscreen's pregreet test and greet_pause catch).
    Pregreet,
    /// Reads the banner, then sends a line of junk every `junk_interval`.
    Junk,
}

const KINDS: [(&str, Kind); 4] = [
    ("idle", Kind::Idle),
    ("drip", Kind::Drip),
    ("pregreet", Kind::Pregreet),
    ("junk", Kind::Junk),
];

/// Live counters, shared with whoever watches the flood (the status line, the self-test).
#[derive(Default)]
pub struct Counters {
    pub attempts: AtomicU64,
    pub connected: AtomicU64,
    pub connect_failed: AtomicU64,
    pub closed_by_server: AtomicU64,
    pub open: AtomicI64,
    pub peak_open: AtomicI64,
    /// Slots that have made their first connection attempt (the ramp is done when all have).
    pub ramped: AtomicU64,
    pub banner_2xx: AtomicU64,
    pub banner_4xx: AtomicU64,
    pub banner_5xx: AtomicU64,
    /// Reply lines starting with 5 that junk senders and drippers received.
    pub replies_5xx: AtomicU64,
    pub bytes_sent: AtomicU64,
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    fn opened(&self) {
        let now = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_open.fetch_max(now, Ordering::Relaxed);
    }

    pub fn open_now(&self) -> i64 {
        self.open.load(Ordering::Relaxed)
    }

    pub fn ramped(&self) -> u64 {
        get(&self.ramped)
    }

    fn status(&self, t0: Instant) -> String {
        format!(
            "t={:.1}s open={} peak={} connects={} failed={} closed_by_server={} banners 2xx/4xx/5xx={}/{}/{} 5xx_replies={}",
            t0.elapsed().as_secs_f64(),
            self.open_now(),
            self.peak_open.load(Ordering::Relaxed),
            get(&self.connected),
            get(&self.connect_failed),
            get(&self.closed_by_server),
            get(&self.banner_2xx),
            get(&self.banner_4xx),
            get(&self.banner_5xx),
            get(&self.replies_5xx),
        )
    }
}

/// Each slot's kind and source address, checked before anything connects.
pub struct Plan {
    pub slots: Vec<(Kind, Ipv4Addr)>,
    pub networks: usize,
}

pub fn plan(args: &FloodArgs) -> Result<Plan, String> {
    if args.per_network == 0 || args.per_network > 254 {
        return Err("--per-network must be between 1 and 254".into());
    }
    let shares = parse_mix(&args.mix)?;
    let networks = args.connections.div_ceil(args.per_network).max(1);
    let base = u32::from(args.first_network) & 0xffff_ff00;
    let slots = kinds(args.connections, &shares)
        .into_iter()
        .enumerate()
        .map(|(i, kind)| {
            // round robin over the networks, so each holds a mix of kinds
            let net = (i % networks) as u32;
            let host = (i / networks) as u32 + 1;
            (kind, Ipv4Addr::from(base + net * 256 + host))
        })
        .collect();
    Ok(Plan { slots, networks })
}

fn parse_mix(mix: &str) -> Result<[u32; 4], String> {
    let mut shares = [0u32; 4];
    for part in mix.split(',').filter(|p| !p.trim().is_empty()) {
        let (name, pct) = part
            .split_once('=')
            .ok_or_else(|| format!("--mix {mix:?}: expected kind=percent, got {part:?}"))?;
        let i = KINDS
            .iter()
            .position(|(n, _)| *n == name.trim())
            .ok_or_else(|| format!("--mix: unknown kind {name:?} (idle, drip, pregreet, junk)"))?;
        shares[i] = pct
            .trim()
            .parse()
            .map_err(|_| format!("--mix: {part:?}: percent must be a number"))?;
    }
    if shares.iter().sum::<u32>() != 100 {
        return Err(format!("--mix {mix:?}: the shares must sum to 100"));
    }
    Ok(shares)
}

/// The slots' kinds in the shares' proportions, interleaved: each slot gets the kind
/// furthest behind its share so far, so any number of slots, and any run of them,
/// holds the mix.
fn kinds(n: usize, shares: &[u32; 4]) -> Vec<Kind> {
    let mut given = [0usize; 4];
    (0..n)
        .map(|i| {
            let behind = |k: usize| f64::from(shares[k]) * (i + 1) as f64 / 100.0 - given[k] as f64;
            let k = (0..4)
                .max_by(|&a, &b| behind(a).total_cmp(&behind(b)))
                .unwrap_or(0);
            given[k] += 1;
            KINDS[k].1
        })
        .collect()
}

/// Runs the flood until `stop` completes; returns the final counters as JSON.
pub async fn run(
    args: FloodArgs,
    counters: Arc<Counters>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<serde_json::Value, String> {
    let plan = plan(&args)?;
    let args = Arc::new(args);
    let permits = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (kind, src)) in plan.slots.iter().copied().enumerate() {
        tasks.spawn(slot(
            i,
            kind,
            src,
            args.clone(),
            counters.clone(),
            permits.clone(),
        ));
    }
    tasks.spawn(report_status(args.connections as u64, counters.clone(), t0));
    tokio::pin!(stop);
    tokio::select! {
        _ = &mut stop => {}
        _ = tokio::time::sleep(args.duration) => {}
    }
    let secs = t0.elapsed().as_secs_f64();
    let open_at_end = counters.open_now();
    tasks.abort_all();
    let mut kinds = serde_json::Map::new();
    for (name, kind) in KINDS {
        let n = plan.slots.iter().filter(|(k, _)| *k == kind).count();
        kinds.insert(name.into(), n.into());
    }
    let c = &counters;
    Ok(json!({
        "mode": "flood",
        "target": args.target.to_string(),
        "connections": args.connections,
        "kinds": kinds,
        "networks": plan.networks,
        "per_network": args.per_network,
        "secs": secs,
        "open_at_end": open_at_end,
        "peak_open": c.peak_open.load(Ordering::Relaxed),
        "attempts": get(&c.attempts),
        "connected": get(&c.connected),
        "connect_failed": get(&c.connect_failed),
        "closed_by_server": get(&c.closed_by_server),
        "banner_2xx": get(&c.banner_2xx),
        "banner_4xx": get(&c.banner_4xx),
        "banner_5xx": get(&c.banner_5xx),
        "replies_5xx": get(&c.replies_5xx),
        "bytes_sent": get(&c.bytes_sent),
    }))
}

/// "flood: ready …" once every slot has tried to connect (bench.sh waits for that line),
/// then a status line every 5 seconds, on stderr.
async fn report_status(slots: u64, counters: Arc<Counters>, t0: Instant) {
    while counters.ramped() < slots {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("flood: ready {}", counters.status(t0));
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        eprintln!("flood: {}", counters.status(t0));
    }
}

/// One hostile client, reconnecting whenever it is dropped.
async fn slot(
    i: usize,
    kind: Kind,
    src: Ipv4Addr,
    args: Arc<FloodArgs>,
    c: Arc<Counters>,
    permits: Arc<Semaphore>,
) {
    let mut jitter = Jitter::new(i as u64);
    let mut first = true;
    loop {
        let attempt = {
            let _permit = permits.acquire().await;
            bump(&c.attempts);
            connect(src, &args).await
        };
        if std::mem::take(&mut first) {
            bump(&c.ramped);
        }
        match attempt {
            Ok(tcp) => {
                bump(&c.connected);
                c.opened();
                hold(kind, tcp, &args, &c).await;
                c.open.fetch_sub(1, Ordering::Relaxed);
                bump(&c.closed_by_server);
            }
            Err(_) => bump(&c.connect_failed),
        }
        tokio::time::sleep(jitter.around(args.reconnect_delay)).await;
    }
}

async fn connect(src: Ipv4Addr, args: &FloodArgs) -> std::io::Result<TcpStream> {
    let sock = crate::source_addr::socket_from(Some(src.into()), args.target)?;
    match tokio::time::timeout(args.connect_timeout, sock.connect(args.target)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// Plays `kind` on the connection until the server closes it.
async fn hold(kind: Kind, mut tcp: TcpStream, args: &FloodArgs, c: &Counters) {
    if kind == Kind::Pregreet
        && send(&mut tcp, b"EHLO pregreet.example\r\n", c)
            .await
            .is_err()
    {
        return;
    }
    let period = match kind {
        Kind::Drip => Some(args.drip_interval),
        Kind::Junk => Some(args.junk_interval),
        Kind::Idle | Kind::Pregreet => None,
    };
    let mut ticks = period.map(|p| tokio::time::interval_at(tokio::time::Instant::now() + p, p));
    let mut buf = [0u8; 4096];
    let mut banner_seen = false;
    let mut at_line_start = true;
    let mut step = 0usize;
    loop {
        let tick = async {
            match ticks.as_mut() {
                Some(t) if banner_seen => {
                    t.tick().await;
                }
                _ => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            r = tcp.read(&mut buf) => {
                let n = match r {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if !banner_seen {
                    banner_seen = true;
                    match buf[0] {
                        b'2' => bump(&c.banner_2xx),
                        b'4' => bump(&c.banner_4xx),
                        _ => bump(&c.banner_5xx),
                    }
                } else {
                    count_5xx_lines(&buf[..n], &mut at_line_start, c);
                }
            }
            _ = tick => {
                let piece = match kind {
                    Kind::Drip => drip_byte(step),
                    _ => junk_line(step),
                };
                step += 1;
                if send(&mut tcp, piece, c).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn send(tcp: &mut TcpStream, bytes: &[u8], c: &Counters) -> std::io::Result<()> {
    tcp.write_all(bytes).await?;
    c.bytes_sent
        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
    Ok(())
}

fn count_5xx_lines(chunk: &[u8], at_line_start: &mut bool, c: &Counters) {
    for &b in chunk {
        if *at_line_start && b == b'5' {
            bump(&c.replies_5xx);
        }
        *at_line_start = b == b'\n';
    }
}

/// The dripper's stream, one byte per tick: an EHLO, then NOOPs.
fn drip_byte(step: usize) -> &'static [u8] {
    const EHLO: &[u8] = b"EHLO drip.example\r\n";
    const NOOP: &[u8] = b"NOOP\r\n";
    if step < EHLO.len() {
        &EHLO[step..=step]
    } else {
        let i = (step - EHLO.len()) % NOOP.len();
        &NOOP[i..=i]
    }
}

/// What junk senders send: HTTP, a TLS ClientHello fragment, unknown verbs, broken
/// addresses, an overlong line.
fn junk_line(step: usize) -> &'static [u8] {
    const JUNK: [&[u8]; 6] = [
        b"GET / HTTP/1.1\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\xfe\xed\xfa\xce\r\n",
        b"XYZZY plugh\r\n",
        b"MAIL FROM:<<<@>>>\r\n",
        b"RCPT TO:<nobody>\r\n",
        b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\r\n",
    ];
    JUNK[step % JUNK.len()]
}

/// Reconnect delays spread out per slot (xorshift), so dropped slots do not come back in
/// lockstep.
struct Jitter(u64);

impl Jitter {
    fn new(seed: u64) -> Self {
        Jitter(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// Between half and one and a half times `d`.
    fn around(&mut self, d: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let f = 0.5 + (self.0 % 1000) as f64 / 1000.0;
        d.mul_f64(f)
    }
}
