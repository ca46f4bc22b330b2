//! State for greylisting and rate limits: one [`Store`] trait, three back ends.
//!
//! | store | module | use |
//! |---|---|---|
//! | `memory` | [`memory`] | one process, lost on restart; governor's GCRA for rates |
//! | `file` (default) | [`file`] | redb under the state directory: passes survive restarts |
//! | `redis`, `redis_sentinel`, `redis_cluster` | [`redis`] | shared by every instance behind MX records or a balancer; one Redis, a Sentinel-managed master, or a Cluster |
//!
//! The greylist rule is a pure function here ([`greylist_step`]) over stored records and
//! a time passed in, so every back end decides the same way; rate limits are GCRA
//! (governor's in process, the same arithmetic as a Lua script in Redis; one test runs
//! every back end through the same expectations). Tests need no sleeps: the stores read
//! their [`Clock`] handle, which tests replace with a [`FakeClock`]. The Redis scripts
//! take the proxy's clock as an argument (scripts must not read time themselves, for
//! replication).
//!
//! Times are microseconds since the Unix epoch: wall time, because records outlive the
//! process and are shared between machines.

pub mod file;
pub mod memory;
pub mod redis;

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A boxed future, so [`Store`] can be used as `dyn Store`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Wall-clock time in microseconds since the Unix epoch.
pub trait Clock: Send + Sync + fmt::Debug {
    fn now_us(&self) -> u64;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_us(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to: for tests of delays measured in minutes and days.
#[derive(Debug)]
pub struct FakeClock(AtomicU64);

impl FakeClock {
    /// Starts at a fixed, realistic time (2026-01-01) so TTL arithmetic sees real magnitudes.
    pub fn new() -> Arc<FakeClock> {
        Arc::new(FakeClock(AtomicU64::new(1_767_225_600_000_000)))
    }

    pub fn advance(&self, d: Duration) {
        self.0.fetch_add(d.as_micros() as u64, Ordering::SeqCst);
    }
}

impl Clock for FakeClock {
    fn now_us(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A store failure. Checks turn it into their `fail:` mode (open or tempfail).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("file store: {0}")]
    File(String),
    #[error("store timed out after {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Other(String),
}

/// Greylisting timings of one rule, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GreyParams {
    /// How long a new triplet must wait before a retry passes.
    pub delay: u64,
    /// How long a new triplet waits for its retry before it is forgotten.
    pub retry_window: u64,
    /// How long a passed triplet (and a network's pass count) is remembered after its
    /// last use.
    pub expire: u64,
    /// Passes after which a client network skips greylisting; 0 disables.
    pub auto_allow_after: u32,
}

/// A greylist triplet as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GreyRecord {
    pub first_seen: u64,
    /// Absolute expiry; an expired record counts as absent.
    pub expires: u64,
    pub passed: bool,
}

/// How many triplets a client network has passed, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetRecord {
    pub passes: u32,
    pub expires: u64,
}

/// What the greylist decided for one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GreyOutcome {
    /// First attempt: refused; retry in this many microseconds.
    New { retry_in: u64 },
    /// A retry before the delay is over: refused again.
    TooEarly { retry_in: u64 },
    /// A retry after the delay: passes, and the triplet is remembered.
    Passed,
    /// A triplet that passed before: passes.
    Known,
    /// The client network passed often enough to skip greylisting.
    AutoAllowed,
}

impl GreyOutcome {
    pub fn passes(self) -> bool {
        matches!(
            self,
            GreyOutcome::Passed | GreyOutcome::Known | GreyOutcome::AutoAllowed
        )
    }
}

/// One greylist decision: the outcome and what to write back (`None`: leave as is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GreyStep {
    pub outcome: GreyOutcome,
    pub triplet: Option<GreyRecord>,
    pub net: Option<NetRecord>,
}

/// The greylisting rule, pure: the stored triplet and network records (expired ones
/// count as absent), the time, the rule's timings → outcome and updates.
///
/// Only a triplet that completes greylisting (`Passed`) counts towards the network's
/// auto-allow, so one sender hammering retries cannot whitelist its network; a known
/// triplet refreshes its expiry, so regular correspondents are never greylisted again.
pub fn greylist_step(
    triplet: Option<GreyRecord>,
    net: Option<NetRecord>,
    now: u64,
    p: &GreyParams,
) -> GreyStep {
    let triplet = triplet.filter(|t| t.expires > now);
    let net = net.filter(|n| n.expires > now);
    if p.auto_allow_after > 0
        && let Some(n) = net
        && n.passes >= p.auto_allow_after
    {
        return GreyStep {
            outcome: GreyOutcome::AutoAllowed,
            triplet: None,
            net: None,
        };
    }
    match triplet {
        None => GreyStep {
            outcome: GreyOutcome::New { retry_in: p.delay },
            triplet: Some(GreyRecord {
                first_seen: now,
                expires: now.saturating_add(p.retry_window),
                passed: false,
            }),
            net: None,
        },
        Some(t) if t.passed => GreyStep {
            outcome: GreyOutcome::Known,
            triplet: Some(GreyRecord {
                expires: now.saturating_add(p.expire),
                ..t
            }),
            net: None,
        },
        Some(t) if now < t.first_seen.saturating_add(p.delay) => GreyStep {
            outcome: GreyOutcome::TooEarly {
                retry_in: t.first_seen + p.delay - now,
            },
            triplet: None,
            net: None,
        },
        Some(t) => GreyStep {
            outcome: GreyOutcome::Passed,
            triplet: Some(GreyRecord {
                first_seen: t.first_seen,
                expires: now.saturating_add(p.expire),
                passed: true,
            }),
            net: (p.auto_allow_after > 0).then(|| NetRecord {
                passes: net.map_or(0, |n| n.passes).saturating_add(1),
                expires: now.saturating_add(p.expire),
            }),
        },
    }
}

/// A rate of one rule: `count` per `period`, with `burst` allowed at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateParams {
    /// The emission interval: period / count, in microseconds (at least 1).
    pub interval: u64,
    /// How many units may be spent at once (the bucket size).
    pub burst: u32,
}

impl RateParams {
    pub fn new(count: u64, period: Duration, burst: u32) -> RateParams {
        let interval = (period.as_micros() as u64 / count.max(1)).max(1);
        RateParams {
            interval,
            burst: burst.max(1),
        }
    }
}

/// What one rate-limit event spends: the unit a rule's budget is counted in (its
/// `count:` key, the `count` label of `mxguard_rate_limit_decisions_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateCount {
    Connections,
    Messages,
    Recipients,
    Bytes,
}

impl RateCount {
    pub const ALL: [RateCount; 4] = [
        RateCount::Connections,
        RateCount::Messages,
        RateCount::Recipients,
        RateCount::Bytes,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RateCount::Connections => "connections",
            RateCount::Messages => "messages",
            RateCount::Recipients => "recipients",
            RateCount::Bytes => "bytes",
        }
    }
}

/// What a rate limit decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateOutcome {
    Allowed,
    /// Over the limit: allowed again in this many microseconds.
    Limited {
        retry_in: u64,
    },
}

/// One greylist entry for `mxguard greylist list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GreyEntry {
    Triplet { key: String, record: GreyRecord },
    Network { net: String, record: NetRecord },
}

/// The state store every check uses. Implementations are cheap to share (`Arc`).
pub trait Store: Send + Sync + fmt::Debug {
    /// Decides one greylist attempt atomically: `triplet` is the triplet key, `net` the
    /// client network key for auto-allow.
    fn greylist<'a>(
        &'a self,
        triplet: &'a str,
        net: &'a str,
        p: &'a GreyParams,
    ) -> BoxFuture<'a, Result<GreyOutcome, StoreError>>;

    /// Spends `cost` units of the rate limit `key` atomically.
    fn rate<'a>(
        &'a self,
        key: &'a str,
        p: &'a RateParams,
        cost: u64,
    ) -> BoxFuture<'a, Result<RateOutcome, StoreError>>;

    /// Deletes expired greylist records and idle rate keys; returns how many went.
    fn sweep(&self) -> BoxFuture<'_, Result<usize, StoreError>>;

    /// Every live greylist record (for `mxguard greylist list`).
    fn list(&self) -> BoxFuture<'_, Result<Vec<GreyEntry>, StoreError>>;

    /// Marks a triplet as passed, or a network as auto-allowed, for `ttl`.
    fn allow<'a>(
        &'a self,
        entry: &'a AllowTarget,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Removes greylist records whose key contains `pattern` (all when empty); returns
    /// how many went.
    fn purge<'a>(&'a self, pattern: &'a str) -> BoxFuture<'a, Result<usize, StoreError>>;

    /// The store's clock.
    fn clock(&self) -> &Arc<dyn Clock>;
}

/// What `mxguard greylist allow` marks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowTarget {
    /// A triplet key (`net|sender|recipient`).
    Triplet(String),
    /// A client network key (`192.0.2.0/24`): it skips greylisting.
    Network(String),
}

/// Where the state lives: the `store:` setting and `mxguard run --store`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StoreConfig {
    /// In process; lost on restart.
    Memory,
    /// redb file; `None` = `<state_dir>/mxguard.redb`.
    #[default]
    File,
    /// A file at this path.
    FileAt(PathBuf),
    /// `redis://host:port/db`.
    Redis(String),
    /// A master and its replicas behind Redis Sentinel.
    RedisSentinel(redis::spec::SentinelSpec),
    /// A Redis Cluster.
    RedisCluster(redis::spec::ClusterSpec),
}

impl FromStr for StoreConfig {
    type Err = String;

    /// `memory`, `memory:`, `file`, `file:`, `file:PATH`, `redis://host:port/db`,
    /// `redis+sentinel://host:port,…/master/db`, `redis+cluster://host:port,…`.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        match s {
            "memory" | "memory:" => Ok(StoreConfig::Memory),
            "file" | "file:" => Ok(StoreConfig::File),
            _ if s.starts_with("file:") => Ok(StoreConfig::FileAt(PathBuf::from(&s[5..]))),
            _ if s.starts_with("redis://") || s.starts_with("rediss://") => {
                ::redis::Client::open(s).map_err(|e| format!("invalid redis URL {s:?}: {e}"))?;
                Ok(StoreConfig::Redis(s.to_owned()))
            }
            _ if s.starts_with("redis+sentinel://") => {
                redis::spec::SentinelSpec::from_url(s).map(StoreConfig::RedisSentinel)
            }
            _ if s.starts_with("redis+cluster://") => {
                redis::spec::ClusterSpec::from_url(s).map(StoreConfig::RedisCluster)
            }
            _ => Err(format!(
                "invalid store {s:?}: expected memory:, file:PATH, redis://host:port/db, \
                 redis+sentinel://host:port,…/master/db or redis+cluster://host:port,…"
            )),
        }
    }
}

impl<'de> serde::Deserialize<'de> for StoreConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Name(String),
            Map(std::collections::BTreeMap<String, serde_yaml_ng::Value>),
        }
        let err = |m: String| serde::de::Error::custom(m);
        match Raw::deserialize(d)? {
            Raw::Name(n) if n == "memory" || n == "file" => n.parse().map_err(err),
            Raw::Name(n) => Err(err(format!(
                "unknown store {n:?}, expected memory, file, {{ file: PATH }}, {{ redis: URL }}, \
                 {{ redis_sentinel: … }} or {{ redis_cluster: [URL, …] }}"
            ))),
            Raw::Map(m) if m.len() == 1 => {
                let (k, v) = m.into_iter().next().expect("one entry");
                store_from_map_entry(&k, v).map_err(err)
            }
            Raw::Map(_) => Err(err(
                "expected exactly one of `file`, `redis`, `redis_sentinel` or `redis_cluster`"
                    .into(),
            )),
        }
    }
}

/// `{ KIND: VALUE }`: the value's shape depends on the kind.
fn store_from_map_entry(kind: &str, v: serde_yaml_ng::Value) -> Result<StoreConfig, String> {
    let string = |v: serde_yaml_ng::Value| {
        serde_yaml_ng::from_value::<String>(v).map_err(|e| format!("store.{kind}: {e}"))
    };
    match kind {
        "file" => Ok(StoreConfig::FileAt(PathBuf::from(string(v)?))),
        "redis" => {
            let url = string(v)?;
            if url.starts_with("redis://") || url.starts_with("rediss://") {
                url.parse()
            } else {
                Err(format!("invalid redis URL {url:?}"))
            }
        }
        "redis_sentinel" => {
            let spec: redis::spec::SentinelSpec = serde_yaml_ng::from_value(v).map_err(|e| {
                format!("store.redis_sentinel: {e} (expected {{ master: NAME, sentinels: [HOST:PORT, …], db: N }})")
            })?;
            spec.validate()?;
            Ok(StoreConfig::RedisSentinel(spec))
        }
        "redis_cluster" => {
            let nodes: Vec<String> = serde_yaml_ng::from_value(v)
                .map_err(|e| format!("store.redis_cluster: {e} (expected a list of node URLs)"))?;
            redis::spec::ClusterSpec::from_nodes(nodes).map(StoreConfig::RedisCluster)
        }
        other => Err(format!(
            "unknown store `{other}`, expected `file`, `redis`, `redis_sentinel` or `redis_cluster`"
        )),
    }
}

impl StoreConfig {
    /// Opens the configured store. `state_dir` holds the default file.
    pub async fn open(
        &self,
        state_dir: &std::path::Path,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<dyn Store>, StoreError> {
        Ok(match self {
            StoreConfig::Memory => Arc::new(memory::MemoryStore::new(clock)),
            StoreConfig::File => Arc::new(file::FileStore::open(
                &state_dir.join("mxguard.redb"),
                clock,
            )?),
            StoreConfig::FileAt(p) => Arc::new(file::FileStore::open(p, clock)?),
            StoreConfig::Redis(url) => Arc::new(redis::RedisStore::connect(url, clock)?),
            StoreConfig::RedisSentinel(spec) => Arc::new(redis::RedisStore::sentinel(spec, clock)?),
            StoreConfig::RedisCluster(spec) => Arc::new(redis::RedisStore::cluster(spec, clock)?),
        })
    }
}

impl fmt::Display for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreConfig::Memory => f.write_str("memory:"),
            StoreConfig::File => f.write_str("file:"),
            StoreConfig::FileAt(p) => write!(f, "file:{}", p.display()),
            StoreConfig::Redis(u) => f.write_str(u),
            StoreConfig::RedisSentinel(s) => s.fmt(f),
            StoreConfig::RedisCluster(c) => c.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000_000;

    fn params() -> GreyParams {
        GreyParams {
            delay: 5 * MIN,
            retry_window: 2 * 24 * 60 * MIN,
            expire: 35 * 24 * 60 * MIN,
            auto_allow_after: 2,
        }
    }

    #[test]
    fn greylist_life_cycle() {
        let p = params();
        let t0 = 1_000 * MIN;
        let s = greylist_step(None, None, t0, &p);
        assert_eq!(s.outcome, GreyOutcome::New { retry_in: 5 * MIN });
        let rec = s.triplet.unwrap();
        let s = greylist_step(Some(rec), None, t0 + MIN, &p);
        assert_eq!(s.outcome, GreyOutcome::TooEarly { retry_in: 4 * MIN });
        assert_eq!(s.triplet, None);
        let s = greylist_step(Some(rec), None, t0 + 5 * MIN, &p);
        assert_eq!(s.outcome, GreyOutcome::Passed);
        let passed = s.triplet.unwrap();
        assert_eq!(s.net.unwrap().passes, 1);
        let s = greylist_step(Some(passed), s.net, t0 + 6 * MIN, &p);
        assert_eq!(s.outcome, GreyOutcome::Known);
        // Past the retry window, a never-retried triplet starts over.
        let late = t0 + p.retry_window + 1;
        assert!(matches!(
            greylist_step(Some(rec), None, late, &p).outcome,
            GreyOutcome::New { .. }
        ));
        // Past `expire`, a passed triplet is forgotten.
        let gone = t0 + 5 * MIN + p.expire;
        assert!(matches!(
            greylist_step(Some(passed), None, gone, &p).outcome,
            GreyOutcome::New { .. }
        ));
    }

    #[test]
    fn auto_allow() {
        let p = params();
        let net = NetRecord {
            passes: 2,
            expires: 10 * MIN,
        };
        assert_eq!(
            greylist_step(None, Some(net), MIN, &p).outcome,
            GreyOutcome::AutoAllowed
        );
        // Expired network record: greylisted again.
        assert!(matches!(
            greylist_step(None, Some(net), 10 * MIN, &p).outcome,
            GreyOutcome::New { .. }
        ));
        let off = GreyParams {
            auto_allow_after: 0,
            ..p
        };
        assert!(matches!(
            greylist_step(None, Some(net), MIN, &off).outcome,
            GreyOutcome::New { .. }
        ));
    }

    #[test]
    fn store_urls() {
        assert_eq!("memory:".parse::<StoreConfig>(), Ok(StoreConfig::Memory));
        assert_eq!(
            "file:/var/lib/x.redb".parse::<StoreConfig>(),
            Ok(StoreConfig::FileAt("/var/lib/x.redb".into()))
        );
        assert_eq!(
            "redis://127.0.0.1:6379/2".parse::<StoreConfig>(),
            Ok(StoreConfig::Redis("redis://127.0.0.1:6379/2".into()))
        );
        assert!("mysql://x".parse::<StoreConfig>().is_err());
        let c: StoreConfig = serde_yaml_ng::from_str("{ redis: \"redis://h:1/0\" }").unwrap();
        assert_eq!(c, StoreConfig::Redis("redis://h:1/0".into()));
        let c: StoreConfig = serde_yaml_ng::from_str("memory").unwrap();
        assert_eq!(c, StoreConfig::Memory);
        assert!(serde_yaml_ng::from_str::<StoreConfig>("sql").is_err());
    }

    #[test]
    fn sentinel_and_cluster_stores() {
        let url = "redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/mymaster/1";
        let StoreConfig::RedisSentinel(s) = url.parse::<StoreConfig>().unwrap() else {
            panic!("not a sentinel store");
        };
        let yaml = "{ redis_sentinel: { master: mymaster, db: 1, \
                    sentinels: [\"10.0.0.1:26379\", \"10.0.0.2:26379\"] } }";
        let c: StoreConfig = serde_yaml_ng::from_str(yaml).unwrap();
        assert_eq!(c, StoreConfig::RedisSentinel(s));
        assert_eq!(c.to_string(), url);

        let url = "redis+cluster://10.0.0.1:7000,10.0.0.2:7000";
        let from_url: StoreConfig = url.parse().unwrap();
        let yaml = "{ redis_cluster: [\"redis://10.0.0.1:7000\", \"redis://10.0.0.2:7000\"] }";
        let c: StoreConfig = serde_yaml_ng::from_str(yaml).unwrap();
        assert_eq!(c, from_url);
        assert_eq!(c.to_string(), url);

        for (bad, says) in [
            ("{ redis_sentinel: { master: m } }", "sentinels"),
            (
                "{ redis_sentinel: { master: m, sentinels: [] } }",
                "sentinels",
            ),
            (
                "{ redis_sentinel: { master: m, sentinels: [\"h:1\"], dbx: 1 } }",
                "dbx",
            ),
            (
                "{ redis_sentinel: { master: m, sentinels: [\"h:x\"] } }",
                "port",
            ),
            ("{ redis_cluster: [] }", "no node"),
            ("{ redis_cluster: \"redis://h:1\" }", "list"),
            ("{ redis_clusters: [] }", "unknown store"),
        ] {
            let e = serde_yaml_ng::from_str::<StoreConfig>(bad)
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert!("redis+sentinel://h:1".parse::<StoreConfig>().is_err());
    }
}
