//! The connection to Redis, for each way of running it:
//!
//! - **one Redis**: redis's [`ConnectionManager`], which reconnects to the same address;
//! - **Sentinel**: the sentinels name the master; we keep one multiplexed connection to
//!   it and forget it when it fails (the master died, or it was demoted and answers
//!   `READONLY`), so the next call asks the sentinels again and finds the new master;
//! - **Cluster**: redis's async cluster connection, which routes each command to the
//!   shard of its key and follows `MOVED` and failovers itself.
//!
//! Every call runs under one deadline ([`CALL_TIMEOUT`]), the lookup of a Sentinel master
//! included. Nothing connects before the first call: mxguard starts while Redis is down.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::{ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::sentinel::SentinelClient;
use redis::{
    AsyncConnectionConfig, Cmd, ErrorKind, FromRedisValue, Pipeline, RedisError, RedisFuture,
    RedisResult, ServerErrorKind, Value,
};
use tracing::{info, warn};

use super::spec::{ClusterSpec, SentinelSpec};
use crate::store::StoreError;

/// Deadline of one store operation: a store that is down must not hold sessions for long.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(1);
/// Deadline of one TCP connect to a Redis node.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// After a failed Sentinel lookup, calls fail at once for this long instead of each
/// asking the sentinels again: in a failover window every session gets its answer (the
/// rule's `fail:` mode) without waiting, and the sentinels are not flooded.
const LOOKUP_BACKOFF: Duration = Duration::from_millis(200);
/// Deadline of one Sentinel lookup (ask, check the master's role, connect): shorter
/// than the call's, so a lookup that hangs is recorded as failed.
const LOOKUP_TIMEOUT: Duration = Duration::from_millis(800);
/// SCAN page size.
const SCAN_COUNT: u32 = 1000;

/// A Lua script run by its SHA1 (`EVALSHA`), sent whole (`EVAL`) to a node that does
/// not know it yet. `EVAL` is routed by key like `EVALSHA`, so in a cluster the script
/// reaches exactly the shard that runs it, even while another shard is down.
pub struct Lua {
    code: &'static str,
    sha1: String,
}

impl Lua {
    pub fn new(code: &'static str) -> Lua {
        Lua {
            code,
            sha1: redis::Script::new(code).get_hash().to_owned(),
        }
    }
}

/// One request: a command, a pipeline or a script call.
pub enum Request<'a> {
    Cmd(&'a Cmd),
    Pipe(&'a Pipeline),
    Lua {
        script: &'a Lua,
        keys: &'a [String],
        args: &'a [u64],
    },
}

impl Request<'_> {
    async fn run<T: FromRedisValue>(&self, con: &mut Con) -> RedisResult<T> {
        match self {
            Request::Cmd(c) => c.query_async(con).await,
            Request::Pipe(p) => p.query_async(con).await,
            Request::Lua { script, keys, args } => {
                let call = |name: &str, body: &str| {
                    let mut c = redis::cmd(name);
                    c.arg(body).arg(keys.len()).arg(*keys).arg(*args);
                    c
                };
                match call("EVALSHA", &script.sha1).query_async(con).await {
                    Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                        call("EVAL", script.code).query_async(con).await
                    }
                    r => r,
                }
            }
        }
    }
}

/// How mxguard reaches Redis.
pub enum Link {
    Single(ConnectionManager),
    Sentinel(Box<SentinelLink>),
    Cluster(ClusterConnection),
}

impl Link {
    /// One Redis at `url`.
    pub fn single(url: &str) -> Result<Link, RedisError> {
        let client = redis::Client::open(url)?;
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        Ok(Link::Single(ConnectionManager::new_lazy_with_config(
            client, cfg,
        )?))
    }

    /// The master the sentinels of `spec` name, whichever it is at the time.
    pub fn sentinel(spec: &SentinelSpec) -> Result<Link, StoreError> {
        Ok(Link::Sentinel(Box::new(SentinelLink {
            lookup: tokio::sync::Mutex::new(Lookup {
                client: spec.client().map_err(StoreError::Other)?,
                first: 0,
            }),
            spec: spec.clone(),
            master: spec.master.clone(),
            current: Mutex::new(None),
            generation: AtomicU64::new(0),
            failed_lookup: Mutex::new(None),
            known_master: Mutex::new(None),
        })))
    }

    /// A Redis Cluster seeded by `spec`'s nodes. Must run inside a tokio runtime.
    pub fn cluster(spec: &ClusterSpec) -> Result<Link, StoreError> {
        let client = spec.client().map_err(StoreError::Other)?;
        let cfg = ClusterConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(CALL_TIMEOUT);
        Ok(Link::Cluster(
            client.get_pending_async_connection_with_config(cfg),
        ))
    }

    /// Runs `req` under the deadline; a Sentinel master that refuses a write because it
    /// was just demoted (`READONLY`) is forgotten and the request sent once more to the
    /// new one (it wrote nothing, so the retry cannot count twice).
    pub async fn query<T: FromRedisValue>(&self, req: Request<'_>) -> Result<T, StoreError> {
        let deadline = tokio::time::Instant::now() + CALL_TIMEOUT;
        let late = || StoreError::Timeout(CALL_TIMEOUT);
        let mut retried = false;
        loop {
            let mut lease = tokio::time::timeout_at(deadline, self.lease())
                .await
                .map_err(|_| late())??;
            match tokio::time::timeout_at(deadline, req.run(&mut lease.con)).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => {
                    if self.failed(&lease, &e) && !retried {
                        retried = true;
                        continue;
                    }
                    return Err(e.into());
                }
                Err(_) => {
                    // A master that does not answer within the deadline may be cut off
                    // (no reset ever arrives): the next call asks the sentinels again.
                    self.silent(&lease);
                    return Err(late());
                }
            }
        }
    }

    /// Every key matching `pattern`, by SCAN (never KEYS: it blocks the server) on each
    /// node that holds keys: the master, or every master of a cluster.
    pub async fn scan(&self, pattern: &str) -> Result<Vec<String>, StoreError> {
        let nodes: Vec<Option<NodeAddr>> = match self {
            Link::Cluster(c) => cluster_masters(c.clone())
                .await?
                .into_iter()
                .map(Some)
                .collect(),
            _ => vec![None],
        };
        let mut keys = Vec::new();
        for node in &nodes {
            let mut cursor: u64 = 0;
            loop {
                let mut cmd = redis::cmd("SCAN");
                cmd.arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(SCAN_COUNT);
                let (next, batch) = self.scan_page(node.as_ref(), cmd).await?;
                keys.extend(batch);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(keys)
    }

    /// One SCAN page: on `node` of a cluster, else wherever the link sends commands.
    async fn scan_page(
        &self,
        node: Option<&NodeAddr>,
        cmd: Cmd,
    ) -> Result<(u64, Vec<String>), StoreError> {
        match (self, node) {
            (Link::Cluster(c), Some((host, port))) => {
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.clone(),
                    port: *port,
                });
                let mut c = c.clone();
                let page = within_deadline(async {
                    c.route_command(cmd, routing)
                        .await
                        .map_err(StoreError::from)
                })
                .await?;
                Ok(redis::from_redis_value(page).map_err(RedisError::from)?)
            }
            _ => self.query(Request::Cmd(&cmd)).await,
        }
    }

    async fn lease(&self) -> Result<Lease, StoreError> {
        Ok(match self {
            Link::Single(m) => Lease::plain(Con::Manager(m.clone())),
            Link::Cluster(c) => Lease::plain(Con::Cluster(c.clone())),
            Link::Sentinel(s) => s.lease().await?,
        })
    }

    /// Tells the link that a call on `lease` failed with `e`; true when sending the
    /// request again is safe and may succeed.
    fn failed(&self, lease: &Lease, e: &RedisError) -> bool {
        match self {
            Link::Sentinel(s) => s.failed(lease, e),
            _ => false,
        }
    }

    /// Tells the link that a call on `lease` got no answer within the deadline.
    fn silent(&self, lease: &Lease) {
        if let Link::Sentinel(s) = self {
            s.forget(lease, "no answer within the deadline");
        }
    }
}

/// A cluster node's host and port, as the cluster names it.
type NodeAddr = (String, u16);

/// The address of every master that serves slots, from `CLUSTER NODES`.
async fn cluster_masters(mut c: ClusterConnection) -> Result<Vec<NodeAddr>, StoreError> {
    let text: String = within_deadline(async {
        redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut c)
            .await
            .map_err(StoreError::from)
    })
    .await?;
    Ok(parse_cluster_masters(&text))
}

/// `<id> <ip:port@cport[,host]> <flags> <master> <ping> <pong> <epoch> <link> <slot>…`:
/// the masters that are not failed and own at least one slot.
fn parse_cluster_masters(text: &str) -> Vec<NodeAddr> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let flags: Vec<&str> = f.get(2)?.split(',').collect();
            let serving = flags.contains(&"master")
                && !flags
                    .iter()
                    .any(|x| matches!(*x, "fail" | "noaddr" | "handshake"))
                && f.len() > 8;
            if !serving {
                return None;
            }
            let addr = f[1].split(['@', ',']).next()?;
            let (host, port) = addr.rsplit_once(':')?;
            Some((host.to_owned(), port.parse().ok()?))
        })
        .collect()
}

async fn within_deadline<T>(
    f: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(r) => r,
        Err(_) => Err(StoreError::Timeout(CALL_TIMEOUT)),
    }
}

/// The cluster client with mxguard's deadlines: few, short retries (a request must fit
/// in [`CALL_TIMEOUT`]; the library's default waits seconds between retries).
pub fn cluster_builder(nodes: &[String]) -> ClusterClientBuilder {
    ClusterClientBuilder::new(nodes.iter().map(String::as_str))
        .connection_timeout(CONNECT_TIMEOUT)
        .response_timeout(CALL_TIMEOUT)
        .retries(3)
        .min_retry_wait(10)
        .max_retry_wait(200)
}

/// A connection of any shape, as redis's commands and pipelines take it.
#[derive(Clone)]
pub enum Con {
    Manager(ConnectionManager),
    Master(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Con {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Con::Manager(c) => c.req_packed_command(cmd),
            Con::Master(c) => c.req_packed_command(cmd),
            Con::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Con::Manager(c) => c.req_packed_commands(pipeline, offset, count),
            Con::Master(c) => c.req_packed_commands(pipeline, offset, count),
            Con::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Con::Manager(c) => c.get_db(),
            Con::Master(c) => c.get_db(),
            Con::Cluster(c) => c.get_db(),
        }
    }
}

/// A connection handed to one call, with the generation of the Sentinel master
/// connection it is, so a failure forgets that connection and not a newer one.
struct Lease {
    con: Con,
    generation: u64,
}

impl Lease {
    fn plain(con: Con) -> Lease {
        Lease { con, generation: 0 }
    }
}

/// The Sentinel-managed master: the current connection, and how to find a new one.
pub struct SentinelLink {
    /// Asks the sentinels; one lookup at a time (the client keeps its sentinel connections).
    lookup: tokio::sync::Mutex<Lookup>,
    spec: SentinelSpec,
    master: String,
    current: Mutex<Option<(u64, MultiplexedConnection)>>,
    generation: AtomicU64,
    /// When the last lookup failed, and why: calls fail fast for [`LOOKUP_BACKOFF`].
    failed_lookup: Mutex<Option<(Instant, String)>>,
    /// The master's address as last found, to log each change once.
    known_master: Mutex<Option<String>>,
}

/// The sentinel client, and which sentinel it asks first.
struct Lookup {
    client: SentinelClient,
    first: usize,
}

impl SentinelLink {
    fn cached(&self) -> Option<Lease> {
        let cur = self.current.lock().expect("sentinel connection lock");
        cur.as_ref().map(|(generation, con)| Lease {
            con: Con::Master(con.clone()),
            generation: *generation,
        })
    }

    async fn lease(&self) -> Result<Lease, StoreError> {
        if let Some(l) = self.cached() {
            return Ok(l);
        }
        let mut lookup = self.lookup.lock().await;
        // Another call may have found the master while this one waited for the lock.
        if let Some(l) = self.cached() {
            return Ok(l);
        }
        if let Some((at, why)) = &*self.failed_lookup.lock().expect("lookup lock")
            && at.elapsed() < LOOKUP_BACKOFF
        {
            return Err(StoreError::Other(format!(
                "no Redis master for {:?} (Sentinel lookup failed {} ms ago: {why})",
                self.master,
                at.elapsed().as_millis()
            )));
        }
        let found = tokio::time::timeout(LOOKUP_TIMEOUT, self.connect_master(&mut lookup.client))
            .await
            .unwrap_or_else(|_| {
                Err(RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {LOOKUP_TIMEOUT:?}"),
                )))
            });
        match found {
            Ok((addr, con)) => {
                *self.failed_lookup.lock().expect("lookup lock") = None;
                self.note_master(addr);
                let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
                *self.current.lock().expect("sentinel connection lock") =
                    Some((generation, con.clone()));
                Ok(Lease {
                    con: Con::Master(con),
                    generation,
                })
            }
            Err(e) => {
                *self.failed_lookup.lock().expect("lookup lock") =
                    Some((Instant::now(), e.to_string()));
                self.start_with_next_sentinel(&mut lookup);
                Err(e.into())
            }
        }
    }

    /// Asks the sentinels for the master (the library checks it with `ROLE`) and
    /// connects to it.
    async fn connect_master(
        &self,
        client: &mut SentinelClient,
    ) -> RedisResult<(String, MultiplexedConnection)> {
        let master = client.async_get_client().await?;
        let addr = master.get_connection_info().addr().to_string();
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT));
        let con = master
            .get_multiplexed_async_connection_with_config(&cfg)
            .await?;
        Ok((addr, con))
    }

    /// After a failed lookup: the next one asks another sentinel first.
    fn start_with_next_sentinel(&self, lookup: &mut Lookup) {
        let first = (lookup.first + 1) % self.spec.sentinels.len().max(1);
        if let Ok(client) = self.spec.client_starting_at(first) {
            *lookup = Lookup { client, first };
        }
    }

    fn note_master(&self, addr: String) {
        let mut known = self.known_master.lock().expect("master lock");
        match known.as_deref() {
            Some(old) if old == addr => {}
            Some(old) => {
                warn!(master = %self.master, old = %old, new = %addr, "redis sentinel: the master moved");
            }
            None => info!(master = %self.master, addr = %addr, "redis sentinel: master found"),
        }
        *known = Some(addr);
    }

    /// Forgets the connection of `lease` when `e` says it is dead or no longer a
    /// master's; true for `READONLY` (nothing was written: safe to send again).
    fn failed(&self, lease: &Lease, e: &RedisError) -> bool {
        let demoted = e.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly);
        let gone = demoted
            || e.is_unrecoverable_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_timeout()
            || matches!(
                e.kind(),
                ErrorKind::Server(ServerErrorKind::MasterDown | ServerErrorKind::BusyLoading)
            );
        if gone {
            self.forget(lease, &e.to_string());
        }
        demoted
    }

    /// Drops the connection `lease` came from (not a newer one): the next call asks the
    /// sentinels again.
    fn forget(&self, lease: &Lease, why: &str) {
        let mut cur = self.current.lock().expect("sentinel connection lock");
        if cur.as_ref().is_some_and(|(g, _)| *g == lease.generation) {
            *cur = None;
            info!(master = %self.master, error = why, "redis sentinel: connection to the master dropped; asking the sentinels again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_lists_serving_masters() {
        let text = "\
07c3 127.0.0.1:30004@40004 slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@40002 master - 0 1426238316232 2 connected 5461-10922
292f 127.0.0.1:30003@40003,h3 master - 0 1426238318243 3 connected 10923-16383
6ec2 127.0.0.1:30005@40005 master,fail - 1426238316232 1426238316232 5 disconnected 0-1
e7d1 ::1:30001@40001 myself,master - 0 0 1 connected 0-5460
9999 127.0.0.1:30006@40006 master - 0 0 6 connected
";
        assert_eq!(
            parse_cluster_masters(text),
            [
                ("127.0.0.1".to_owned(), 30002),
                ("127.0.0.1".to_owned(), 30003),
                ("::1".to_owned(), 30001),
            ]
        );
    }
}
