//! Warm upstream connections: a few per upstream, connected and greeted (banner, EHLO,
//! STARTTLS when configured) ahead of time, so a client's first MAIL does not wait for the
//! upstream's handshake.
//!
//! **A pooled connection serves exactly one client session, and is never given back.**
//! After `XCLIENT ADDR=<client>` Postfix re-checks `smtpd_authorized_xclient_hosts`
//! against the *impersonated* address, so a second XCLIENT on the same connection gets
//! `550 5.7.0 insufficient authorization`; and a connection that carried one client's
//! XFORWARD or MAIL must never carry another client's mail as if it came from the first.
//! So what the pool holds has said nothing but EHLO: the identity commands go out only
//! when a session takes the connection ([`super::Upstreams::connect`]), and the session
//! QUITs it at its end, as it does a connection it opened itself.
//!
//! Before a session gets a pooled connection it is checked (one non-blocking read: the
//! upstream may have closed it while it idled, e.g. Postfix's `smtpd_timeout`); a dead one
//! is discarded and the next one, or a fresh connection, is used instead.
//!
//! [`keep_warm`] refills in the background and never blocks a session. It fills the first
//! upstream that answers (the one sessions try first, so a later upstream stays cold while
//! an earlier one is up), backs off from one that fails (one attempt at a time, 0.5 s
//! doubling to 30 s: an upstream that is down is never hammered), opens at most
//! [`MAX_REFILLS`] connections at once, closes (QUIT) connections idle longer than
//! `max_idle`, and QUITs every idle connection at shutdown.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{Connector, RelayError, Upstream};
use crate::config::UpstreamPoolConfig;
use crate::telemetry::{PoolMetrics, PoolMiss, PoolSeries};

/// Connections the refiller opens at once, over all upstreams.
pub const MAX_REFILLS: usize = 2;
/// The pause after a failed refill; it doubles with each failure, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long shutdown waits for the idle connections' QUIT replies.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

struct Idle {
    up: Upstream,
    since: Instant,
}

/// The idle connections of every upstream, in configured order.
pub struct Pool {
    size: usize,
    max_idle: Duration,
    /// Per upstream; the newest last (taken first: the least likely to have died).
    idle: Vec<Mutex<Vec<Idle>>>,
    series: Vec<PoolSeries>,
    /// Wakes the refiller: a connection was taken or found dead.
    wake: Notify,
    /// Set at shutdown: nothing is pooled any more.
    closed: AtomicBool,
}

impl Pool {
    pub fn new(config: &UpstreamPoolConfig, upstreams: usize, metrics: &PoolMetrics) -> Pool {
        metrics.size.set(config.size as i64);
        Pool {
            size: config.size,
            max_idle: config.max_idle,
            idle: (0..upstreams).map(|_| Mutex::new(Vec::new())).collect(),
            series: (0..upstreams).map(|i| metrics.series(i)).collect(),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
        }
    }

    /// A pool that is off: every take is a `disabled` miss.
    pub fn disabled(upstreams: usize, metrics: &PoolMetrics) -> Pool {
        let off = UpstreamPoolConfig {
            size: 0,
            ..UpstreamPoolConfig::default()
        };
        Pool::new(&off, upstreams, metrics)
    }

    pub fn size(&self) -> usize {
        self.size
    }

    fn lock(&self, index: usize) -> MutexGuard<'_, Vec<Idle>> {
        // Nothing panics while holding the lock; a poisoned one is still consistent.
        self.idle[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A live pooled connection to upstream `index`, checked just now, or `None` (a miss:
    /// the pool is off or empty, or every pooled connection had died while idle).
    pub async fn take(&self, index: usize) -> Option<Upstream> {
        let series = &self.series[index];
        if self.size == 0 {
            series.miss(PoolMiss::Disabled);
            return None;
        }
        let mut found_dead = false;
        while let Some(mut up) = self.pop(index) {
            self.wake.notify_one();
            match up.still_open().await {
                Ok(()) => {
                    series.hit();
                    up.from_pool = true;
                    return Some(up);
                }
                Err(e) => {
                    found_dead = true;
                    self.discarded_dead(index);
                    debug!(upstream = %up.address, error = %e, "pooled upstream connection died while idle; discarded");
                }
            }
        }
        series.miss(if found_dead {
            PoolMiss::Dead
        } else {
            PoolMiss::Empty
        });
        None
    }

    /// Counts a pooled connection that turned out dead (also when it failed at the
    /// session's first command, after the check).
    pub fn discarded_dead(&self, index: usize) {
        self.series[index].discarded_dead();
    }

    fn pop(&self, index: usize) -> Option<Upstream> {
        let mut idle = self.lock(index);
        let up = idle.pop().map(|i| i.up);
        self.series[index].idle(idle.len());
        up
    }

    /// Pools a freshly greeted connection; hands it back when the pool is full or closed.
    fn put(&self, index: usize, up: Upstream) -> Option<Upstream> {
        let mut idle = self.lock(index);
        if self.closed.load(Ordering::Acquire) || idle.len() >= self.size {
            return Some(up);
        }
        idle.push(Idle {
            up,
            since: Instant::now(),
        });
        self.series[index].idle(idle.len());
        None
    }

    pub fn idle_len(&self, index: usize) -> usize {
        self.lock(index).len()
    }

    /// Removes the connections idle for `max_idle` or longer, for closing.
    fn expire(&self, now: Instant) -> Vec<Upstream> {
        let mut expired = Vec::new();
        for index in 0..self.idle.len() {
            let mut idle = self.lock(index);
            let keep_from = idle
                .iter()
                .position(|i| now < i.since + self.max_idle)
                .unwrap_or(idle.len());
            expired.extend(idle.drain(..keep_from).map(|i| i.up));
            self.series[index].expired(keep_from);
            self.series[index].idle(idle.len());
        }
        expired
    }

    /// When the oldest idle connection reaches `max_idle`.
    fn next_expiry(&self) -> Option<Instant> {
        (0..self.idle.len())
            .filter_map(|i| self.lock(i).first().map(|c| c.since + self.max_idle))
            .min()
    }

    /// Closes the pool: nothing is pooled any more, and every idle connection is QUIT
    /// (waiting at most [`CLOSE_WAIT`] for the replies).
    pub async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let mut quits = JoinSet::new();
        for index in 0..self.idle.len() {
            let mut idle = self.lock(index);
            for i in idle.drain(..) {
                quits.spawn(i.up.quit());
            }
            self.series[index].idle(0);
        }
        let n = quits.len();
        let all = async { while quits.join_next().await.is_some() {} };
        if tokio::time::timeout(CLOSE_WAIT, all).await.is_err() {
            warn!(
                connections = n,
                "closing the upstream pool: QUIT unanswered"
            );
        }
    }
}

/// What the refiller knows of one upstream.
#[derive(Debug, Clone, Copy, Default)]
struct Health {
    /// Failed refills in a row.
    failures: u32,
    /// No refill before this.
    retry_at: Option<Instant>,
}

impl Health {
    fn backing_off(&self, now: Instant) -> bool {
        self.retry_at.is_some_and(|t| now < t)
    }

    fn failed(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        let doublings = self.failures.saturating_sub(1).min(16);
        let pause = FIRST_BACKOFF
            .saturating_mul(1 << doublings)
            .min(MAX_BACKOFF);
        self.retry_at = Some(now + pause);
    }
}

/// The refills in flight and what they taught us.
struct Refiller {
    tasks: JoinSet<Result<Upstream, RelayError>>,
    opening: HashMap<tokio::task::Id, usize>,
    in_flight: Vec<usize>,
    health: Vec<Health>,
}

impl Refiller {
    fn new(upstreams: usize) -> Refiller {
        Refiller {
            tasks: JoinSet::new(),
            opening: HashMap::new(),
            in_flight: vec![0; upstreams],
            health: vec![Health::default(); upstreams],
        }
    }

    /// Starts the refills the pool needs now: up to `size` for the first upstream that
    /// answers, one probing attempt for each failed upstream before it whose pause is
    /// over, nothing for later upstreams.
    fn start(&mut self, connector: &Arc<Connector>, pool: &Pool, now: Instant) {
        for index in 0..self.health.len() {
            let health = self.health[index];
            if health.backing_off(now) {
                continue;
            }
            let want = if health.failures > 0 { 1 } else { pool.size };
            while pool.idle_len(index) + self.in_flight[index] < want
                && self.tasks.len() < MAX_REFILLS
            {
                let c = connector.clone();
                // Boxed, like a session: the task holds a pointer, not the whole state
                // of a connect with its TLS handshake, which tokio would copy around.
                let task = self
                    .tasks
                    .spawn(async move { Box::pin(c.open(index)).await });
                self.opening.insert(task.id(), index);
                self.in_flight[index] += 1;
            }
            if health.failures == 0 {
                return;
            }
        }
    }

    /// The earliest end of a backoff pause still to come.
    fn next_retry(&self, now: Instant) -> Option<Instant> {
        self.health
            .iter()
            .filter_map(|h| h.retry_at)
            .filter(|t| now < *t)
            .min()
    }

    /// Pools a connection that opened; backs off from an upstream that failed.
    fn finished(
        &mut self,
        done: Result<(tokio::task::Id, Result<Upstream, RelayError>), JoinError>,
        connector: &Connector,
        pool: &Pool,
    ) {
        let (id, outcome) = match done {
            Ok((id, outcome)) => (id, Some(outcome)),
            Err(e) => (e.id(), None),
        };
        let Some(index) = self.opening.remove(&id) else {
            return;
        };
        self.in_flight[index] -= 1;
        let health = &mut self.health[index];
        match outcome {
            Some(Ok(up)) => {
                if health.failures > 0 {
                    info!(upstream = %up.address, "upstream answers again; pooling connections to it");
                }
                *health = Health::default();
                if let Some(extra) = pool.put(index, up) {
                    tokio::spawn(extra.quit());
                }
            }
            Some(Err(e)) => {
                connector.count_connect_failure(index, &e);
                if health.failures == 0 {
                    warn!(upstream = %connector.address(index), error = %e, "upstream pool: connecting failed; backing off");
                } else {
                    debug!(upstream = %connector.address(index), error = %e, failures = health.failures, "upstream pool: still failing");
                }
                health.failed(Instant::now());
            }
            None => health.failed(Instant::now()),
        }
    }
}

/// Keeps the pool filled until shutdown, then closes it. Returns at once when the pool
/// is off.
pub async fn keep_warm(
    connector: Arc<Connector>,
    pool: Arc<Pool>,
    mut shutdown: watch::Receiver<bool>,
) {
    if pool.size == 0 {
        return;
    }
    let mut refiller = Refiller::new(connector.count());
    loop {
        let now = Instant::now();
        for up in pool.expire(now) {
            tokio::spawn(up.quit());
        }
        refiller.start(&connector, &pool, now);
        let wake_at = [refiller.next_retry(now), pool.next_expiry()]
            .into_iter()
            .flatten()
            .min();
        tokio::select! {
            _ = crate::runtime::shutdown_signalled(&mut shutdown) => break,
            _ = pool.wake.notified() => {}
            Some(done) = refiller.tasks.join_next_with_id(), if !refiller.tasks.is_empty() => {
                refiller.finished(done, &connector, &pool);
            }
            _ = sleep_until(wake_at) => {}
        }
    }
    refiller.tasks.abort_all();
    pool.close().await;
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream};

    use super::*;
    use crate::config::UpstreamConfig;
    use crate::relay::{ClientIdentity, Upstreams};

    #[test]
    fn the_backoff_doubles_up_to_its_ceiling() {
        let now = Instant::now();
        let mut h = Health::default();
        let pauses: Vec<Duration> = (0..10)
            .map(|_| {
                h.failed(now);
                h.retry_at.unwrap() - now
            })
            .collect();
        assert_eq!(pauses[0], Duration::from_millis(500));
        assert_eq!(pauses[1], Duration::from_secs(1));
        assert_eq!(pauses[5], Duration::from_secs(16));
        assert_eq!(pauses[9], MAX_BACKOFF);
        assert!(h.backing_off(now) && !h.backing_off(now + MAX_BACKOFF));
    }

    /// An upstream on a pipe: banner, EHLO (with XCLIENT), XCLIENT answered `220` or,
    /// when `drop_at_xclient`, Postfix's idle `421` and a close; EHLO again, QUIT.
    async fn upstream(io: DuplexStream, drop_at_xclient: bool, log: Arc<Mutex<Vec<String>>>) {
        let (r, mut w) = tokio::io::split(io);
        let mut lines = BufReader::new(r).lines();
        let _ = w.write_all(b"220 up.test ESMTP\r\n").await;
        while let Ok(Some(line)) = lines.next_line().await {
            log.lock().unwrap().push(line.clone());
            let reply: &[u8] = match line.split(' ').next().unwrap_or("") {
                "EHLO" => b"250-up.test\r\n250-PIPELINING\r\n250 XCLIENT ADDR NAME HELO PROTO\r\n",
                "XCLIENT" if drop_at_xclient => {
                    let _ = w
                        .write_all(b"421 4.4.2 up.test Error: timeout exceeded\r\n")
                        .await;
                    return;
                }
                "XCLIENT" => b"220 up.test ESMTP\r\n",
                "QUIT" => b"221 2.0.0 Bye\r\n",
                _ => b"250 2.0.0 Ok\r\n",
            };
            let _ = w.write_all(reply).await;
        }
    }

    fn client() -> ClientIdentity {
        ClientIdentity {
            ip: "192.0.2.7".parse().unwrap(),
            port: 40000,
            helo: "client.example".into(),
            esmtp: true,
            tls: false,
            tls_description: None,
            auth_user: None,
            session_id: "S1".into(),
        }
    }

    #[tokio::test]
    async fn a_pooled_connection_that_fails_at_xclient_is_replaced_by_a_fresh_one() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let dials = Arc::new(AtomicUsize::new(0));
        let (l, d) = (log.clone(), dials.clone());
        let all = Arc::new(crate::telemetry::Metrics::standalone());
        let metrics = all.pool.clone();
        let config = UpstreamPoolConfig {
            size: 1,
            max_idle: Duration::from_secs(30),
        };
        let upstreams = Upstreams::new(vec![UpstreamConfig::default()], "mx.test".into(), all)
            .unwrap()
            .with_pool(&config)
            .with_dialer(Box::new(move |_| {
                let (ours, theirs) = tokio::io::duplex(1 << 16);
                // The first connection (the pooled one) dies at its first command.
                let first = d.fetch_add(1, Ordering::Relaxed) == 0;
                tokio::spawn(upstream(theirs, first, l.clone()));
                Ok(Box::new(ours))
            }));
        let warm = upstreams.connector.open(0).await.unwrap();
        assert!(upstreams.pool.put(0, warm).is_none());
        let up = upstreams.connect(&client()).await.unwrap();
        assert_eq!(up.trace, crate::relay::TraceMode::Xclient);
        assert!(
            !up.came_from_pool(),
            "the fresh connection carries the session"
        );
        assert_eq!(dials.load(Ordering::Relaxed), 2);
        let xclients = log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with("XCLIENT"))
            .count();
        assert_eq!(xclients, 2, "one per connection");
        assert_eq!(metrics.hits_total.with_label_values(&["0"]).get(), 1);
        assert_eq!(
            metrics.discarded_dead_total.with_label_values(&["0"]).get(),
            1
        );
    }

    #[tokio::test]
    async fn expiry_takes_the_oldest_and_a_full_pool_refuses_more() {
        let all = Arc::new(crate::telemetry::Metrics::standalone());
        let metrics = all.pool.clone();
        let config = UpstreamPoolConfig {
            size: 2,
            max_idle: Duration::from_secs(30),
        };
        let upstreams = Upstreams::new(vec![UpstreamConfig::default()], "mx.test".into(), all)
            .unwrap()
            .with_pool(&config)
            .with_dialer(Box::new(|_| {
                let (ours, theirs) = tokio::io::duplex(1 << 16);
                tokio::spawn(upstream(theirs, false, Arc::default()));
                Ok(Box::new(ours))
            }));
        let pool = &upstreams.pool;
        let t0 = Instant::now();
        for _ in 0..2 {
            let up = upstreams.connector.open(0).await.unwrap();
            assert!(pool.put(0, up).is_none());
        }
        let extra = upstreams.connector.open(0).await.unwrap();
        assert!(pool.put(0, extra).is_some(), "full");
        assert!(pool.expire(t0).is_empty());
        let later = Instant::now() + Duration::from_secs(30);
        assert_eq!(pool.expire(later).len(), 2);
        assert_eq!(pool.idle_len(0), 0);
        assert_eq!(metrics.expired_total.with_label_values(&["0"]).get(), 2);
        assert_eq!(metrics.idle.with_label_values(&["0"]).get(), 0);
        assert!(pool.take(0).await.is_none());
        let empty = metrics
            .misses_total
            .with_label_values(&["0", "empty"])
            .get();
        assert_eq!(empty, 1);
    }
}
