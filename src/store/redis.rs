//! The shared store: Redis, for several mxguard instances behind MX records or an L4
//! balancer. Each decision is one atomic Lua script (EVALSHA, EVAL on NOSCRIPT) that
//! mirrors [`super::greylist_step`] or computes GCRA, with the proxy's clock passed in
//! as ARGV and a TTL on every key it writes, so Redis never fills with idle keys.
//!
//! | module | gives |
//! |---|---|
//! | [`connection`] | one Redis, a Sentinel-managed master, or a Cluster; the 1 s deadline |
//! | [`keys`] | the key layout (hash tags in a cluster, so a script's keys share a slot) |
//! | [`spec`] | the `redis_sentinel` / `redis_cluster` settings and URLs |
//!
//! Nothing connects before the first call (mxguard starts while Redis is down), and a
//! lost connection or a failed-over master is found again by itself. A failing call is
//! an error; the checks turn it into the action's `fail:` mode.

pub mod connection;
pub mod keys;
pub mod spec;

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use connection::{Link, Lua, Request};
use keys::KeyLayout;
use spec::{ClusterSpec, SentinelSpec};

use super::{
    AllowTarget, BoxFuture, Clock, GreyEntry, GreyOutcome, GreyParams, GreyRecord, NetRecord,
    RateOutcome, RateParams, Store, StoreError,
};

/// Greylisting, atomically. KEYS: triplet, network. ARGV: now, delay, retry_window,
/// expire, auto_allow_after (times in µs). Returns {outcome, retry_in}: 0 new,
/// 1 too early, 2 passed, 3 known, 4 auto-allowed. Numbers are written with `%.0f`:
/// Lua's `tostring` would print microsecond timestamps in exponent form.
const GREY_LUA: &str = r#"
local now, delay, rw, exp, aa = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local function ms(us) return math.max(1, math.ceil(us / 1000)) end
local function num(x) return string.format('%.0f', x) end
local n = redis.call('HMGET', KEYS[2], 'c', 'e')
local passes = 0
if n[1] and tonumber(n[2]) > now then passes = tonumber(n[1]) end
if aa > 0 and passes >= aa then return {4, 0} end
local t = redis.call('HMGET', KEYS[1], 'f', 'e', 'p')
if not t[1] or tonumber(t[2]) <= now then
  redis.call('HSET', KEYS[1], 'f', num(now), 'e', num(now + rw), 'p', '0')
  redis.call('PEXPIRE', KEYS[1], ms(rw))
  return {0, delay}
end
local first = tonumber(t[1])
if t[3] == '1' then
  redis.call('HSET', KEYS[1], 'e', num(now + exp))
  redis.call('PEXPIRE', KEYS[1], ms(exp))
  return {3, 0}
end
if now < first + delay then return {1, first + delay - now} end
redis.call('HSET', KEYS[1], 'e', num(now + exp), 'p', '1')
redis.call('PEXPIRE', KEYS[1], ms(exp))
if aa > 0 then
  redis.call('HSET', KEYS[2], 'c', num(passes + 1), 'e', num(now + exp))
  redis.call('PEXPIRE', KEYS[2], ms(exp))
end
return {2, 0}
"#;

/// GCRA, atomically. KEYS: rate key. ARGV: now, interval, burst, cost (µs). Returns
/// {1, 0} allowed or {0, retry_in}. The TAT's TTL is the time until it is past.
const RATE_LUA: &str = r#"
local now, interval, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new = tat + interval * cost
local allow_at = new - interval * burst
if now < allow_at then return {0, allow_at - now} end
redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', math.max(1, math.ceil((new - now) / 1000)))
return {1, 0}
"#;

static GREY_SCRIPT: LazyLock<Lua> = LazyLock::new(|| Lua::new(GREY_LUA));
static RATE_SCRIPT: LazyLock<Lua> = LazyLock::new(|| Lua::new(RATE_LUA));

pub struct RedisStore {
    link: Link,
    layout: KeyLayout,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisStore")
    }
}

impl RedisStore {
    /// One Redis at `url` (plain key layout). Prepares the connection without
    /// connecting. Must run inside a tokio runtime.
    pub fn connect(url: &str, clock: Arc<dyn Clock>) -> Result<RedisStore, StoreError> {
        Ok(RedisStore {
            link: Link::single(url)?,
            layout: KeyLayout::Plain,
            clock,
        })
    }

    /// The master that the sentinels name (plain key layout: the same keys as one Redis,
    /// so moving a single Redis under Sentinel keeps its entries).
    pub fn sentinel(spec: &SentinelSpec, clock: Arc<dyn Clock>) -> Result<RedisStore, StoreError> {
        Ok(RedisStore {
            link: Link::sentinel(spec)?,
            layout: KeyLayout::Plain,
            clock,
        })
    }

    /// A Redis Cluster (hash-tagged key layout). Must run inside a tokio runtime.
    pub fn cluster(spec: &ClusterSpec, clock: Arc<dyn Clock>) -> Result<RedisStore, StoreError> {
        Ok(RedisStore {
            link: Link::cluster(spec)?,
            layout: KeyLayout::HashTagged,
            clock,
        })
    }

    async fn hmget<T: redis::FromRedisValue>(
        &self,
        key: &str,
        fields: &[&str],
    ) -> Result<T, StoreError> {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(key).arg(fields);
        self.link.query(Request::Cmd(&cmd)).await
    }

    /// The key of triplet `k` for `allow`: where it already is (under any network, as a
    /// cluster tags it by network), else under the network it starts with.
    async fn triplet_key_for_allow(&self, k: &str) -> Result<Vec<String>, StoreError> {
        if self.layout == KeyLayout::Plain {
            return Ok(vec![self.layout.triplet("", k)]);
        }
        let found: Vec<String> = self
            .link
            .scan(&self.layout.triplet_anywhere_pattern(k))
            .await?
            .into_iter()
            .filter(|key| self.layout.parse_triplet(key) == Some(k))
            .collect();
        if !found.is_empty() {
            return Ok(found);
        }
        let first = k.split('|').next().unwrap_or_default();
        match first.parse::<crate::config::IpNet>() {
            Ok(net) => Ok(vec![self.layout.triplet(&net.to_string(), k)]),
            Err(_) => Err(StoreError::Other(format!(
                "triplet {k:?} is not in the cluster yet and does not start with a client \
                 network: allow it after its first attempt"
            ))),
        }
    }
}

impl Store for RedisStore {
    fn greylist<'a>(
        &'a self,
        triplet: &'a str,
        net: &'a str,
        p: &'a GreyParams,
    ) -> BoxFuture<'a, Result<GreyOutcome, StoreError>> {
        Box::pin(async move {
            let keys = [self.layout.triplet(net, triplet), self.layout.network(net)];
            let args = [
                self.clock.now_us(),
                p.delay,
                p.retry_window,
                p.expire,
                u64::from(p.auto_allow_after),
            ];
            let (code, retry_in): (i64, i64) = self
                .link
                .query(Request::Lua {
                    script: &GREY_SCRIPT,
                    keys: &keys,
                    args: &args,
                })
                .await?;
            let retry_in = retry_in.max(0) as u64;
            Ok(match code {
                0 => GreyOutcome::New { retry_in },
                1 => GreyOutcome::TooEarly { retry_in },
                2 => GreyOutcome::Passed,
                3 => GreyOutcome::Known,
                4 => GreyOutcome::AutoAllowed,
                other => {
                    return Err(StoreError::Other(format!(
                        "greylist script returned {other}"
                    )));
                }
            })
        })
    }

    fn rate<'a>(
        &'a self,
        key: &'a str,
        p: &'a RateParams,
        cost: u64,
    ) -> BoxFuture<'a, Result<RateOutcome, StoreError>> {
        Box::pin(async move {
            let keys = [self.layout.rate(key)];
            let args = [
                self.clock.now_us(),
                p.interval,
                u64::from(p.burst),
                cost.min(u64::from(p.burst)),
            ];
            let (ok, retry_in): (i64, i64) = self
                .link
                .query(Request::Lua {
                    script: &RATE_SCRIPT,
                    keys: &keys,
                    args: &args,
                })
                .await?;
            Ok(if ok == 1 {
                RateOutcome::Allowed
            } else {
                RateOutcome::Limited {
                    retry_in: retry_in.max(1) as u64,
                }
            })
        })
    }

    /// Redis expires keys itself (every key has a TTL): nothing to sweep.
    fn sweep(&self) -> BoxFuture<'_, Result<usize, StoreError>> {
        Box::pin(async { Ok(0) })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<GreyEntry>, StoreError>> {
        Box::pin(async move {
            let now = self.clock.now_us();
            let mut out = Vec::new();
            for k in self.link.scan(&self.layout.triplet_pattern()).await? {
                let Some(triplet) = self.layout.parse_triplet(&k) else {
                    continue;
                };
                let (f, e, p): (Option<u64>, Option<u64>, Option<String>) =
                    self.hmget(&k, &["f", "e", "p"]).await?;
                if let (Some(first_seen), Some(expires)) = (f, e)
                    && expires > now
                {
                    out.push(GreyEntry::Triplet {
                        key: triplet.to_owned(),
                        record: GreyRecord {
                            first_seen,
                            expires,
                            passed: p.as_deref() == Some("1"),
                        },
                    });
                }
            }
            for k in self.link.scan(&self.layout.network_pattern()).await? {
                let Some(net) = self.layout.parse_network(&k) else {
                    continue;
                };
                let (c, e): (Option<u64>, Option<u64>) = self.hmget(&k, &["c", "e"]).await?;
                if let (Some(passes), Some(expires)) = (c, e)
                    && expires > now
                {
                    out.push(GreyEntry::Network {
                        net: net.to_owned(),
                        record: NetRecord {
                            passes: passes.min(u64::from(u32::MAX)) as u32,
                            expires,
                        },
                    });
                }
            }
            Ok(out)
        })
    }

    fn allow<'a>(
        &'a self,
        target: &'a AllowTarget,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let now = self.clock.now_us();
            let expires = (now + ttl.as_micros() as u64).to_string();
            let (keys, fields): (Vec<String>, Vec<(&str, String)>) = match target {
                AllowTarget::Triplet(k) => (
                    self.triplet_key_for_allow(k).await?,
                    vec![("f", now.to_string()), ("e", expires), ("p", "1".into())],
                ),
                AllowTarget::Network(k) => (
                    vec![self.layout.network(k)],
                    vec![("c", u32::MAX.to_string()), ("e", expires)],
                ),
            };
            let ms = ttl.as_millis().max(1) as i64;
            for key in keys {
                // One key per transaction: a cluster runs MULTI only within one slot.
                let mut pipe = redis::pipe();
                pipe.atomic()
                    .hset_multiple(&key, &fields)
                    .ignore()
                    .pexpire(&key, ms)
                    .ignore();
                self.link.query::<()>(Request::Pipe(&pipe)).await?;
            }
            Ok(())
        })
    }

    fn purge<'a>(&'a self, pattern: &'a str) -> BoxFuture<'a, Result<usize, StoreError>> {
        Box::pin(async move {
            let l = self.layout;
            let mut keys: Vec<String> = self
                .link
                .scan(&l.triplet_pattern())
                .await?
                .into_iter()
                .filter(|k| l.parse_triplet(k).is_some_and(|t| t.contains(pattern)))
                .collect();
            keys.extend(
                self.link
                    .scan(&l.network_pattern())
                    .await?
                    .into_iter()
                    .filter(|k| l.parse_network(k).is_some_and(|n| n.contains(pattern))),
            );
            let mut n = 0;
            // A cluster splits a multi-key DEL by slot itself.
            for chunk in keys.chunks(500) {
                let mut cmd = redis::cmd("DEL");
                cmd.arg(chunk);
                let deleted: usize = self.link.query(Request::Cmd(&cmd)).await?;
                n += deleted;
            }
            Ok(n)
        })
    }

    fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }
}
