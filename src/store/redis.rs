//! The shared store: Redis, for several mxguard instances behind MX records or an L4
//! balancer. Each decision is one atomic Lua script (EVALSHA, EVAL on NOSCRIPT) that
//! mirrors [`super::greylist_step`] and [`super::gcra`], with the proxy's clock passed in
//! as ARGV and a TTL on every key it writes, so Redis never fills with idle keys.
//!
//! The connection is a [`ConnectionManager`]: created lazily (mxguard starts while Redis
//! is down), multiplexed, and reconnecting by itself. Every call has a short deadline;
//! the checks turn a failure into the action's `fail:` mode.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};

use super::{
    AllowTarget, BoxFuture, Clock, GreyEntry, GreyOutcome, GreyParams, GreyRecord, NET_PREFIX,
    NetRecord, RATE_PREFIX, RateOutcome, RateParams, Store, StoreError, TRIPLET_PREFIX,
};

/// Deadline of one Redis call: a store that is down must not hold sessions for long.
const CALL_TIMEOUT: Duration = Duration::from_secs(1);

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

static GREY_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(GREY_LUA));
static RATE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RATE_LUA));

pub struct RedisStore {
    con: ConnectionManager,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisStore")
    }
}

async fn timed<T>(
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(r) => r.map_err(StoreError::from),
        Err(_) => Err(StoreError::Timeout(CALL_TIMEOUT)),
    }
}

impl RedisStore {
    /// Prepares the connection without connecting: the first call connects, and a lost
    /// connection is re-established in the background. Must run inside a tokio runtime.
    pub fn connect(url: &str, clock: Arc<dyn Clock>) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(url)?;
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(CALL_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let con = ConnectionManager::new_lazy_with_config(client, cfg)?;
        Ok(RedisStore { con, clock })
    }

    /// Every key under `prefix`, by SCAN (never KEYS: it blocks the server).
    async fn scan(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut con = self.con.clone();
        let mut cursor: u64 = 0;
        let mut keys = Vec::new();
        loop {
            let (next, batch): (u64, Vec<String>) = timed(
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(format!("{prefix}*"))
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut con),
            )
            .await?;
            keys.extend(batch);
            if next == 0 {
                return Ok(keys);
            }
            cursor = next;
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
            let mut con = self.con.clone();
            let mut inv = GREY_SCRIPT.prepare_invoke();
            inv.key(format!("{TRIPLET_PREFIX}{triplet}"))
                .key(format!("{NET_PREFIX}{net}"))
                .arg(self.clock.now_us())
                .arg(p.delay)
                .arg(p.retry_window)
                .arg(p.expire)
                .arg(p.auto_allow_after);
            let (code, retry_in): (i64, i64) = timed(inv.invoke_async(&mut con)).await?;
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
            let mut con = self.con.clone();
            let mut inv = RATE_SCRIPT.prepare_invoke();
            inv.key(format!("{RATE_PREFIX}{key}"))
                .arg(self.clock.now_us())
                .arg(p.interval)
                .arg(p.burst)
                .arg(cost.min(u64::from(p.burst)));
            let (ok, retry_in): (i64, i64) = timed(inv.invoke_async(&mut con)).await?;
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
            let mut con = self.con.clone();
            let mut out = Vec::new();
            for k in self.scan(TRIPLET_PREFIX).await? {
                let (f, e, p): (Option<u64>, Option<u64>, Option<String>) = timed(
                    redis::cmd("HMGET")
                        .arg(&k)
                        .arg(&["f", "e", "p"])
                        .query_async(&mut con),
                )
                .await?;
                if let (Some(first_seen), Some(expires)) = (f, e)
                    && expires > now
                {
                    out.push(GreyEntry::Triplet {
                        key: k[TRIPLET_PREFIX.len()..].to_owned(),
                        record: GreyRecord {
                            first_seen,
                            expires,
                            passed: p.as_deref() == Some("1"),
                        },
                    });
                }
            }
            for k in self.scan(NET_PREFIX).await? {
                let (c, e): (Option<u64>, Option<u64>) = timed(
                    redis::cmd("HMGET")
                        .arg(&k)
                        .arg(&["c", "e"])
                        .query_async(&mut con),
                )
                .await?;
                if let (Some(passes), Some(expires)) = (c, e)
                    && expires > now
                {
                    out.push(GreyEntry::Network {
                        net: k[NET_PREFIX.len()..].to_owned(),
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
            let mut con = self.con.clone();
            let (key, fields): (String, Vec<(&str, String)>) = match target {
                AllowTarget::Triplet(k) => (
                    format!("{TRIPLET_PREFIX}{k}"),
                    vec![("f", now.to_string()), ("e", expires), ("p", "1".into())],
                ),
                AllowTarget::Network(k) => (
                    format!("{NET_PREFIX}{k}"),
                    vec![("c", u32::MAX.to_string()), ("e", expires)],
                ),
            };
            let ms = ttl.as_millis().max(1) as i64;
            timed(
                redis::pipe()
                    .atomic()
                    .hset_multiple(&key, &fields)
                    .ignore()
                    .pexpire(&key, ms)
                    .ignore()
                    .query_async::<()>(&mut con),
            )
            .await
        })
    }

    fn purge<'a>(&'a self, pattern: &'a str) -> BoxFuture<'a, Result<usize, StoreError>> {
        Box::pin(async move {
            let mut keys = self.scan(TRIPLET_PREFIX).await?;
            keys.extend(self.scan(NET_PREFIX).await?);
            keys.retain(|k| k.contains(pattern));
            let mut con = self.con.clone();
            let mut n = 0;
            for chunk in keys.chunks(500) {
                let deleted: usize = timed(con.del(chunk)).await?;
                n += deleted;
            }
            Ok(n)
        })
    }

    fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }
}
