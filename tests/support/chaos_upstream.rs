//! A chaos upstream for the fault soak: an SMTP server (tokio, on its own runtime) that,
//! when armed, misbehaves at every point of a relay session — refuses connections,
//! resets, tempfails and permfails at every stage, stalls past the proxy's deadlines,
//! answers DATA with `250`, and writes unsolicited reply lines — and records every
//! message it read to the final dot together with what became of its reply.
//!
//! What it does is decided by a [`Planner`]: [`RandomPlanner`] for the soak (seeded; a
//! transaction's fault depends only on the seed, the upstream and the MAIL FROM address,
//! so a run's faults repeat with its seed), [`FixedPlanner`] for tests that need one
//! fault every time. Until [`ChaosUpstream::arm`] it behaves (so the proxy's start-up
//! probe sees an honest upstream).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use super::rng::{Rng, hash_str};

/// An unsolicited reply line (the kind a confused upstream leaves in the buffer).
pub const STALE_LINE: &str = "250 2.0.0 Ok: stale unsolicited reply";

/// A fault of the connection, before or outside any transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnFault {
    None,
    /// Reset (RST) right after accepting: to the proxy, a refused connection.
    ResetOnAccept,
    /// This banner (`421 …`, `554 …`) instead of 220, then close.
    BannerReply(&'static str),
    /// No banner; wait until the proxy gives up.
    BannerStall,
    /// The banner, then RST.
    ResetAfterBanner,
    /// The banner and an unsolicited reply line in the same write.
    BannerExtra,
    /// This reply to the first EHLO, then close.
    EhloReply(&'static str),
    /// Half of the multi-line EHLO reply, then RST.
    EhloResetMid,
    EhloStall,
    /// This reply to XCLIENT, then close.
    XclientReply(&'static str),
    XclientReset,
    XclientStall,
    /// RST at the first RSET.
    RsetReset,
    /// This reply to the first RSET, then close.
    RsetReply(&'static str),
}

/// A fault of one transaction (chosen when MAIL arrives). `nth` counts RCPTs from 0;
/// `after` is a number of message octets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnFault {
    None,
    /// This reply to MAIL (`421` closes).
    MailReply(&'static str),
    MailReset,
    MailStall,
    /// `250` and an unsolicited line in the same write.
    MailExtra,
    /// A legal multi-line `250` reply.
    MailMultiline,
    RcptReply {
        nth: usize,
        reply: &'static str,
    },
    RcptReset {
        nth: usize,
    },
    RcptStall {
        nth: usize,
    },
    RcptExtra {
        nth: usize,
    },
    DataReply(&'static str),
    DataReset,
    DataStall,
    /// `250` instead of `354` (the message is never read).
    DataAnswered250,
    MidDataReset {
        after: usize,
    },
    /// Stops reading the message; waits until the proxy gives up.
    MidDataStall {
        after: usize,
    },
    /// This reply in the middle of the message, then close.
    MidDataReply {
        after: usize,
        reply: &'static str,
    },
    /// This reply after the final dot; the message is not accepted.
    EndReply(&'static str),
    /// RST after the final dot, before any reply: not accepted.
    EndResetBefore,
    /// No reply after the final dot, not accepted; waits until the proxy gives up.
    EndStall,
    /// Accepted: `250` written, then RST at once.
    EndAcceptReset,
    /// Accepted, but the `250` is written only after the proxy's data deadline.
    EndAcceptLate,
    /// Accepted; the `250` comes after this delay (within the proxy's deadline).
    EndAcceptSlow(Duration),
    /// Accepted; `250` and an unsolicited line in the same write.
    EndAcceptExtra,
}

/// A label for coverage counts: the variant, with the reply code where there is one.
fn label<T: std::fmt::Debug>(fault: &T) -> String {
    let s = format!("{fault:?}");
    let name: String = s
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    match s.find('"') {
        Some(q) => format!("{name} {}", &s[q + 1..(q + 4).min(s.len())]),
        None => name,
    }
}

impl ConnFault {
    /// The stale-reply-line faults (the relay must notice the line, not use it).
    pub fn is_stale_line(&self) -> bool {
        matches!(self, ConnFault::BannerExtra)
    }
}

impl TxnFault {
    /// Faults that make a naive relay read a wrong reply: the issue-10 cases.
    pub fn is_stale_line(&self) -> bool {
        matches!(
            self,
            TxnFault::MailExtra
                | TxnFault::RcptExtra { .. }
                | TxnFault::EndAcceptExtra
                | TxnFault::DataAnswered250
        )
    }
}

/// Decides the faults of an armed upstream.
pub trait Planner: Send + Sync {
    /// The fault of connection number `conn` (from 0, per upstream).
    fn conn(&self, upstream: usize, conn: usize) -> ConnFault;
    /// The fault of the transaction whose MAIL FROM address is `sender`.
    fn txn(&self, upstream: usize, sender: &str) -> TxnFault;
    /// How long the listener stays open, then closed (connections refused), in turn;
    /// `None`: always open.
    fn refusal_windows(&self, _upstream: usize, _n: u64) -> Option<(Duration, Duration)> {
        None
    }
}

/// The same faults every time.
pub struct FixedPlanner {
    pub conn: ConnFault,
    pub txn: TxnFault,
}

impl Planner for FixedPlanner {
    fn conn(&self, _: usize, _: usize) -> ConnFault {
        self.conn.clone()
    }
    fn txn(&self, _: usize, _: &str) -> TxnFault {
        self.txn.clone()
    }
}

/// Seeded random faults for the soak.
pub struct RandomPlanner {
    pub seed: u64,
    /// Percent of connections with a connection fault.
    pub conn_percent: u64,
    /// Percent of transactions with a transaction fault.
    pub txn_percent: u64,
    /// Include the faults that leave a stale reply line or answer DATA with 250.
    pub stale_lines: bool,
    /// Close the listener now and then.
    pub refusals: bool,
}

impl Planner for RandomPlanner {
    fn conn(&self, upstream: usize, conn: usize) -> ConnFault {
        let mut r = Rng::derive(self.seed, &[1, upstream as u64, conn as u64]);
        if !r.chance(self.conn_percent) {
            return ConnFault::None;
        }
        loop {
            let f = match r.below(14) {
                0 => ConnFault::ResetOnAccept,
                1 => ConnFault::BannerReply("421 4.3.2 chaos: service not available"),
                2 => ConnFault::BannerReply("554 5.3.2 chaos: no SMTP service here"),
                3 => ConnFault::BannerStall,
                4 => ConnFault::ResetAfterBanner,
                5 => ConnFault::BannerExtra,
                6 => ConnFault::EhloReply("421 4.3.2 chaos: closing"),
                7 => ConnFault::EhloReply("554 5.5.1 chaos: EHLO refused"),
                8 => ConnFault::EhloResetMid,
                9 => ConnFault::EhloStall,
                10 if r.chance(50) => ConnFault::XclientReply("421 4.3.2 chaos: closing"),
                10 => ConnFault::XclientReply("550 5.7.0 chaos: XCLIENT denied"),
                11 => ConnFault::XclientReset,
                12 => ConnFault::XclientStall,
                _ => match r.below(3) {
                    0 => ConnFault::RsetReset,
                    1 => ConnFault::RsetReply("421 4.3.2 chaos: closing at RSET"),
                    _ => ConnFault::RsetReply("554 5.5.1 chaos: RSET refused"),
                },
            };
            if self.stale_lines || !f.is_stale_line() {
                return f;
            }
        }
    }

    fn txn(&self, upstream: usize, sender: &str) -> TxnFault {
        let mut r = Rng::derive(self.seed, &[2, upstream as u64, hash_str(sender)]);
        if !r.chance(self.txn_percent) {
            return TxnFault::None;
        }
        let nth = r.below(2) as usize;
        let after = r.below(256) as usize;
        loop {
            let f = match r.below(29) {
                0 => TxnFault::MailReply("451 4.3.0 chaos: MAIL tempfail"),
                1 => TxnFault::MailReply("550 5.7.1 chaos: MAIL refused"),
                2 => TxnFault::MailReply("421 4.3.2 chaos: closing at MAIL"),
                3 => TxnFault::MailReset,
                4 => TxnFault::MailStall,
                5 => TxnFault::MailExtra,
                6 => TxnFault::MailMultiline,
                7 => TxnFault::RcptReply {
                    nth,
                    reply: "450 4.2.1 chaos: mailbox busy",
                },
                8 => TxnFault::RcptReply {
                    nth,
                    reply: "550 5.1.1 chaos: no such user",
                },
                9 => TxnFault::RcptReply {
                    nth,
                    reply: "421 4.3.2 chaos: closing at RCPT",
                },
                10 => TxnFault::RcptReset { nth },
                11 => TxnFault::RcptStall { nth },
                12 => TxnFault::RcptExtra { nth },
                13 => TxnFault::DataReply("451 4.3.0 chaos: DATA tempfail"),
                14 => TxnFault::DataReply("554 5.5.1 chaos: DATA refused"),
                15 => TxnFault::DataReset,
                16 => TxnFault::DataStall,
                17 => TxnFault::DataAnswered250,
                18 => TxnFault::MidDataReset { after },
                19 => TxnFault::MidDataStall { after },
                20 => TxnFault::MidDataReply {
                    after,
                    reply: "421 4.4.2 chaos: closing mid-DATA",
                },
                21 => TxnFault::EndReply("451 4.3.0 chaos: queue trouble"),
                22 => TxnFault::EndReply("554 5.7.1 chaos: content refused"),
                23 => TxnFault::EndResetBefore,
                24 => TxnFault::EndStall,
                25 => TxnFault::EndAcceptReset,
                26 => TxnFault::EndAcceptLate,
                27 => TxnFault::EndAcceptSlow(Duration::from_millis(r.range(100, 600))),
                _ => TxnFault::EndAcceptExtra,
            };
            if self.stale_lines || !f.is_stale_line() {
                return f;
            }
        }
    }

    fn refusal_windows(&self, upstream: usize, n: u64) -> Option<(Duration, Duration)> {
        if !self.refusals {
            return None;
        }
        let mut r = Rng::derive(self.seed, &[3, upstream as u64, n]);
        Some((
            Duration::from_millis(r.range(800, 3000)),
            Duration::from_millis(r.range(100, 500)),
        ))
    }
}

/// What became of the upstream's answer to a message it read to the final dot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Not accepted (no reply, a reset, or a 4xx/5xx).
    Refused,
    /// Accepted; `250` written promptly, the connection left open.
    Clean,
    /// Accepted; `250` written, then the connection reset at once.
    ResetAfter,
    /// Accepted; `250` written only after the proxy's deadline (or the write failed).
    Late,
    /// Accepted; `250` written promptly, but the proxy then closed the connection without
    /// another command (no RSET, MAIL or QUIT): it may not have read the reply in time.
    Unconfirmed,
}

/// One message the upstream read to the final dot.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub upstream: usize,
    pub conn: usize,
    pub queue_id: String,
    /// The MAIL command line as received (without CRLF).
    pub mail_line: String,
    /// The RCPT command lines the upstream accepted, in order.
    pub rcpt_lines: Vec<String>,
    /// The DATA bytes as received, up to and including the final `.CRLF` (kept only for
    /// accepted messages).
    pub raw: Vec<u8>,
    pub fault: String,
    pub fate: Fate,
}

impl Delivery {
    pub fn accepted(&self) -> bool {
        self.fate != Fate::Refused
    }

    /// The message: `raw` without the final `.CRLF`, dot-unstuffed.
    pub fn content(&self) -> Vec<u8> {
        unstuff(&self.raw[..self.raw.len().saturating_sub(3)])
    }
}

/// Removes one leading dot from every line.
pub fn unstuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut line_start = true;
    for (i, &b) in body.iter().enumerate() {
        if line_start && b == b'.' {
            line_start = false;
            continue;
        }
        line_start = b == b'\n' && i > 0 && body[i - 1] == b'\r';
        out.push(b);
    }
    out
}

/// Counts of what the upstream did.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub connections: usize,
    /// Times the listener was closed.
    pub refusal_windows: u64,
    /// Messages whose DATA started but did not reach the final dot.
    pub partial: usize,
    /// Faults applied, by label.
    pub faults: BTreeMap<String, u64>,
}

#[derive(Default)]
struct Shared {
    deliveries: Vec<Delivery>,
    stats: Stats,
}

/// Timing of the chaos: how long stalls last and when a late reply comes.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// A stall ends after this (or when the proxy closes).
    pub stall: Duration,
    /// A late `250` is written after this.
    pub late: Duration,
}

pub struct ChaosUpstream {
    pub addr: SocketAddr,
    pub index: usize,
    shared: Arc<Mutex<Shared>>,
    armed: Arc<AtomicBool>,
    rt: Option<tokio::runtime::Runtime>,
}

struct Ctx {
    index: usize,
    planner: Arc<dyn Planner>,
    shared: Arc<Mutex<Shared>>,
    armed: Arc<AtomicBool>,
    timing: Timing,
}

impl Ctx {
    fn count(&self, fault: String) {
        *self
            .shared
            .lock()
            .unwrap()
            .stats
            .faults
            .entry(fault)
            .or_default() += 1;
    }

    fn armed(&self) -> bool {
        self.armed.load(Ordering::Relaxed)
    }
}

impl ChaosUpstream {
    /// Starts upstream number `index` (used in queue ids and by the planner).
    pub fn start(index: usize, planner: Arc<dyn Planner>, timing: Timing) -> ChaosUpstream {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(async { listen(([127, 0, 0, 1], 0).into()) })
            .expect("bind chaos upstream");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let armed = Arc::new(AtomicBool::new(false));
        let ctx = Arc::new(Ctx {
            index,
            planner,
            shared: shared.clone(),
            armed: armed.clone(),
            timing,
        });
        rt.spawn(accept_loop(listener, addr, ctx));
        ChaosUpstream {
            addr,
            index,
            shared,
            armed,
            rt: Some(rt),
        }
    }

    /// From now on the planner's faults apply.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::Relaxed);
    }

    /// Back to honest behaviour (connections already open keep their fault).
    pub fn disarm(&self) {
        self.armed.store(false, Ordering::Relaxed);
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.shared.lock().unwrap().deliveries.clone()
    }

    pub fn accepted(&self) -> Vec<Delivery> {
        self.deliveries()
            .into_iter()
            .filter(Delivery::accepted)
            .collect()
    }

    pub fn stats(&self) -> Stats {
        self.shared.lock().unwrap().stats.clone()
    }
}

impl Drop for ChaosUpstream {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let s = tokio::net::TcpSocket::new_v4()?;
    s.set_reuseaddr(true)?;
    s.bind(addr)?;
    s.listen(1024)
}

/// Accepts connections; while armed and the planner asks for it, closes the listener for
/// a while now and then, so connections are refused.
async fn accept_loop(first: TcpListener, addr: SocketAddr, ctx: Arc<Ctx>) {
    let mut listener = Some(first);
    let mut conn = 0usize;
    let mut window = 0u64;
    loop {
        let l = match listener.take() {
            Some(l) => l,
            None => match listen(addr) {
                Ok(l) => l,
                Err(_) => {
                    // the port is briefly taken (TIME_WAIT, a connecting socket): retry
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let plan = if ctx.armed() {
            ctx.planner.refusal_windows(ctx.index, window)
        } else {
            None
        };
        // Without a plan, look at it again shortly, so arming takes effect.
        let until = Instant::now() + plan.map_or(Duration::from_millis(500), |(open, _)| open);
        loop {
            let accepted = tokio::select! {
                a = l.accept() => a,
                _ = tokio::time::sleep_until(until) => break,
            };
            let Ok((sock, _)) = accepted else { continue };
            let n = conn;
            conn += 1;
            ctx.shared.lock().unwrap().stats.connections += 1;
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let _ = serve(sock, n, &ctx).await;
            });
        }
        match plan {
            Some((_, closed)) => {
                drop(l);
                window += 1;
                ctx.shared.lock().unwrap().stats.refusal_windows += 1;
                tokio::time::sleep(closed).await;
            }
            None => listener = Some(l),
        }
    }
}

struct Conn {
    sock: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn fill(&mut self) -> std::io::Result<usize> {
        let mut tmp = [0u8; 16384];
        let n = self.sock.read(&mut tmp).await?;
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(n)
    }

    async fn line(&mut self) -> std::io::Result<Option<String>> {
        loop {
            if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..p + 2).collect();
                return Ok(Some(String::from_utf8_lossy(&line[..p]).into_owned()));
            }
            if self.fill().await? == 0 {
                return Ok(None);
            }
        }
    }

    /// Writes `lines` (each gets CRLF) in one write.
    async fn say(&mut self, lines: &[&str]) -> std::io::Result<()> {
        let mut out = String::new();
        for l in lines {
            out.push_str(l);
            out.push_str("\r\n");
        }
        self.sock.write_all(out.as_bytes()).await
    }

    /// RST instead of FIN.
    fn reset(self) -> std::io::Result<()> {
        socket2::SockRef::from(&self.sock).set_linger(Some(Duration::ZERO))?;
        drop(self);
        Ok(())
    }

    /// Reads and discards until the peer closes or `d` has passed, then closes.
    async fn stall(mut self, d: Duration) -> std::io::Result<()> {
        let _ = tokio::time::timeout(d, async {
            while self.fill().await.unwrap_or(0) > 0 {
                self.buf.clear();
            }
        })
        .await;
        Ok(())
    }

    /// Waits (without reading) until the peer closes or `d` has passed.
    async fn wait_closed(&mut self, d: Duration) {
        let _ = tokio::time::timeout(d, async {
            let mut probe = [0u8; 1];
            loop {
                match self.sock.peek(&mut probe).await {
                    Ok(0) | Err(_) => return,
                    // data pending (a QUIT): the peer is alive; look again shortly
                    Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        })
        .await;
    }
}

fn closes(reply: &str) -> bool {
    reply.starts_with("421")
}

fn address_of(line: &str) -> String {
    let start = line.find('<').map(|p| p + 1).unwrap_or(0);
    let end = line[start..]
        .find('>')
        .map(|p| start + p)
        .unwrap_or(line.len());
    line[start..end].to_string()
}

const GREETING: &str = "220 chaos.test ESMTP chaos-upstream";

fn ehlo_lines() -> Vec<&'static str> {
    vec![
        "250-chaos.test",
        "250-PIPELINING",
        "250-SIZE 104857600",
        "250-ENHANCEDSTATUSCODES",
        "250-8BITMIME",
        "250-SMTPUTF8",
        "250 XCLIENT NAME ADDR PROTO HELO REVERSE_NAME PORT LOGIN DESTADDR DESTPORT",
    ]
}

/// One transaction in progress on a connection.
struct Txn {
    fault: TxnFault,
    mail_line: String,
    rcpts: Vec<String>,
    /// RCPT commands seen (accepted or not), for `nth`.
    rcpt_seen: usize,
}

async fn serve(sock: TcpStream, n: usize, ctx: &Ctx) -> std::io::Result<()> {
    sock.set_nodelay(true).ok();
    let cf = if ctx.armed() {
        ctx.planner.conn(ctx.index, n)
    } else {
        ConnFault::None
    };
    if cf != ConnFault::None {
        ctx.count(label(&cf));
    }
    let mut c = Conn {
        sock,
        buf: Vec::new(),
    };
    let stall = ctx.timing.stall;
    match cf {
        ConnFault::ResetOnAccept => return c.reset(),
        ConnFault::BannerReply(r) => return c.say(&[r]).await,
        ConnFault::BannerStall => return c.stall(stall).await,
        ConnFault::ResetAfterBanner => {
            c.say(&[GREETING]).await?;
            return c.reset();
        }
        ConnFault::BannerExtra => c.say(&[GREETING, STALE_LINE]).await?,
        _ => c.say(&[GREETING]).await?,
    }
    let mut ehlo_seen = false;
    let mut rset_seen = false;
    let mut txn: Option<Txn> = None;
    let mut txns = 0usize;
    // A clean 250 counts as read once the proxy sends another command after it.
    let mut unconfirmed: Option<usize> = None;
    loop {
        let line = match c.line().await {
            Ok(Some(line)) => line,
            _ => {
                if let Some(i) = unconfirmed {
                    ctx.shared.lock().unwrap().deliveries[i].fate = Fate::Unconfirmed;
                }
                return Ok(());
            }
        };
        unconfirmed = None;
        let verb = line
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" | "HELO" => {
                if !ehlo_seen {
                    ehlo_seen = true;
                    match cf {
                        ConnFault::EhloReply(r) => return c.say(&[r]).await,
                        ConnFault::EhloResetMid => {
                            c.say(&ehlo_lines()[..3]).await?;
                            return c.reset();
                        }
                        ConnFault::EhloStall => return c.stall(stall).await,
                        _ => {}
                    }
                }
                txn = None;
                if verb == "HELO" {
                    c.say(&["250 chaos.test"]).await?;
                } else {
                    c.say(&ehlo_lines()).await?;
                }
            }
            "XCLIENT" => {
                match cf {
                    ConnFault::XclientReply(r) => return c.say(&[r]).await,
                    ConnFault::XclientReset => return c.reset(),
                    ConnFault::XclientStall => return c.stall(stall).await,
                    _ => {}
                }
                // as Postfix: XCLIENT restarts the session with a new greeting
                txn = None;
                c.say(&[GREETING]).await?;
            }
            "MAIL" => {
                if txn.is_some() {
                    c.say(&["503 5.5.1 Error: nested MAIL command"]).await?;
                    continue;
                }
                let fault = if ctx.armed() {
                    ctx.planner.txn(ctx.index, &address_of(&line))
                } else {
                    TxnFault::None
                };
                if fault != TxnFault::None {
                    ctx.count(label(&fault));
                }
                match fault {
                    TxnFault::MailReply(r) => {
                        c.say(&[r]).await?;
                        if closes(r) {
                            return Ok(());
                        }
                        continue;
                    }
                    TxnFault::MailReset => return c.reset(),
                    TxnFault::MailStall => return c.stall(stall).await,
                    TxnFault::MailExtra => c.say(&["250 2.1.0 Ok", STALE_LINE]).await?,
                    TxnFault::MailMultiline => {
                        c.say(&["250-2.1.0 Sender accepted", "250 2.1.0 Ok"])
                            .await?
                    }
                    _ => c.say(&["250 2.1.0 Ok"]).await?,
                }
                txn = Some(Txn {
                    fault,
                    mail_line: line,
                    rcpts: Vec::new(),
                    rcpt_seen: 0,
                });
            }
            "RCPT" => {
                let Some(t) = txn.as_mut() else {
                    c.say(&["503 5.5.1 Error: need MAIL command"]).await?;
                    continue;
                };
                let nth = t.rcpt_seen;
                t.rcpt_seen += 1;
                match t.fault {
                    TxnFault::RcptReply { nth: k, reply } if k == nth => {
                        c.say(&[reply]).await?;
                        if closes(reply) {
                            return Ok(());
                        }
                        continue;
                    }
                    TxnFault::RcptReset { nth: k } if k == nth => return c.reset(),
                    TxnFault::RcptStall { nth: k } if k == nth => return c.stall(stall).await,
                    TxnFault::RcptExtra { nth: k } if k == nth => {
                        t.rcpts.push(line);
                        c.say(&["250 2.1.5 Ok", STALE_LINE]).await?;
                        continue;
                    }
                    _ => {}
                }
                t.rcpts.push(line);
                c.say(&["250 2.1.5 Ok"]).await?;
            }
            "DATA" => {
                let Some(t) = txn.take() else {
                    c.say(&["503 5.5.1 Error: need RCPT command"]).await?;
                    continue;
                };
                match t.fault {
                    TxnFault::DataReply(r) => {
                        c.say(&[r]).await?;
                        if closes(r) {
                            return Ok(());
                        }
                        continue;
                    }
                    TxnFault::DataReset => return c.reset(),
                    TxnFault::DataStall => return c.stall(stall).await,
                    TxnFault::DataAnswered250 => {
                        c.say(&["250 2.0.0 Ok"]).await?;
                        continue;
                    }
                    _ => {}
                }
                if t.rcpts.is_empty() {
                    c.say(&["554 5.5.1 Error: no valid recipients"]).await?;
                    continue;
                }
                c.say(&["354 End data with <CR><LF>.<CR><LF>"]).await?;
                let queue_id = format!("Q{}x{n}x{txns}", ctx.index);
                txns += 1;
                match receive(c, t, queue_id, n, ctx).await? {
                    Some((back, clean)) => {
                        c = back;
                        unconfirmed = clean;
                    }
                    None => return Ok(()),
                }
            }
            "RSET" => {
                if !rset_seen {
                    rset_seen = true;
                    match cf {
                        ConnFault::RsetReset => return c.reset(),
                        ConnFault::RsetReply(r) => return c.say(&[r]).await,
                        _ => {}
                    }
                }
                txn = None;
                c.say(&["250 2.0.0 Ok"]).await?;
            }
            "NOOP" => c.say(&["250 2.0.0 Ok"]).await?,
            "QUIT" => return c.say(&["221 2.0.0 Bye"]).await,
            _ => c.say(&["502 5.5.2 Error: command not recognized"]).await?,
        }
    }
}

/// The end of the message (`CRLF.CRLF`, the first CRLF possibly the DATA line's) in
/// `data`, as the length up to and including it.
fn find_end(data: &[u8], from: usize) -> Option<usize> {
    if data.starts_with(b".\r\n") {
        return Some(3);
    }
    let start = from.saturating_sub(4);
    data[start..]
        .windows(5)
        .position(|w| w == b"\r\n.\r\n")
        .map(|p| start + p + 5)
}

/// Reads the message and answers it as the transaction's fault says. Returns the
/// connection when the session goes on, with the index of the delivery whose clean `250`
/// awaits confirmation.
async fn receive(
    mut c: Conn,
    t: Txn,
    queue_id: String,
    n: usize,
    ctx: &Ctx,
) -> std::io::Result<Option<(Conn, Option<usize>)>> {
    let mut data: Vec<u8> = Vec::new();
    let mut scanned = 0;
    let end = loop {
        data.append(&mut c.buf);
        let end = find_end(&data, scanned);
        scanned = data.len();
        let cut = match t.fault {
            TxnFault::MidDataReset { after }
            | TxnFault::MidDataStall { after }
            | TxnFault::MidDataReply { after, .. } => {
                end.is_none_or(|e| after < e) && data.len() >= after
            }
            _ => false,
        };
        if cut {
            ctx.shared.lock().unwrap().stats.partial += 1;
            return match t.fault {
                TxnFault::MidDataReset { .. } => c.reset().map(|_| None),
                TxnFault::MidDataStall { .. } => c.stall(ctx.timing.stall).await.map(|_| None),
                TxnFault::MidDataReply { reply, .. } => c.say(&[reply]).await.map(|_| None),
                _ => unreachable!(),
            };
        }
        if let Some(e) = end {
            c.buf = data.split_off(e);
            break data;
        }
        if c.fill().await? == 0 {
            ctx.shared.lock().unwrap().stats.partial += 1;
            return Ok(None);
        }
    };
    let mut d = Delivery {
        upstream: ctx.index,
        conn: n,
        queue_id: queue_id.clone(),
        mail_line: t.mail_line,
        rcpt_lines: t.rcpts,
        raw: Vec::new(),
        fault: label(&t.fault),
        fate: Fate::Refused,
    };
    let ok = format!("250 2.0.0 Ok: queued as {queue_id}");
    let record = |d: Delivery, raw: Vec<u8>| {
        let mut d = d;
        if d.accepted() {
            d.raw = raw;
        }
        let mut sh = ctx.shared.lock().unwrap();
        sh.deliveries.push(d);
        sh.deliveries.len() - 1
    };
    let clean = match t.fault {
        TxnFault::EndReply(r) => {
            record(d, end);
            c.say(&[r]).await?;
            if closes(r) {
                return Ok(None);
            }
            None
        }
        TxnFault::EndResetBefore => {
            record(d, end);
            return c.reset().map(|_| None);
        }
        TxnFault::EndStall => {
            record(d, end);
            return c.stall(ctx.timing.stall).await.map(|_| None);
        }
        TxnFault::EndAcceptReset => {
            d.fate = Fate::ResetAfter;
            record(d, end);
            c.say(&[&ok]).await?;
            return c.reset().map(|_| None);
        }
        TxnFault::EndAcceptLate => {
            d.fate = Fate::Late;
            record(d, end);
            c.wait_closed(ctx.timing.late).await;
            let _ = c.say(&[&ok]).await;
            return Ok(None);
        }
        TxnFault::EndAcceptSlow(delay) => {
            d.fate = Fate::Clean;
            let i = record(d, end);
            tokio::time::sleep(delay).await;
            c.say(&[&ok]).await?;
            Some(i)
        }
        TxnFault::EndAcceptExtra => {
            d.fate = Fate::Clean;
            let i = record(d, end);
            c.say(&[&ok, STALE_LINE]).await?;
            Some(i)
        }
        _ => {
            d.fate = Fate::Clean;
            let i = record(d, end);
            c.say(&[&ok]).await?;
            Some(i)
        }
    };
    Ok(Some((c, clean)))
}
