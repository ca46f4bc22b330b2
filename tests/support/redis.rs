//! Private Redis deployments on loopback ports (no persistence), each process killed by
//! its own PID:
//!
//! - [`RedisServer`]: one `redis-server`;
//! - [`RedisCluster`]: masters and replicas with `cluster-enabled yes`, joined by
//!   `redis-cli --cluster create`;
//! - [`RedisSentinels`]: a master, a replica and three sentinels (`redis-server --sentinel`).
//!
//! Readiness and failovers are waited for by polling the servers' own state (`PING`,
//! `CLUSTER INFO`, `INFO replication`, `SENTINEL get-master-addr-by-name`), never by sleeping.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, require, tempdir, wait_for, which};

pub const TOOLS: &[&str] = &["redis-server"];
/// What the cluster and Sentinel deployments need (`redis-cli` comes with redis-tools).
pub const HA_TOOLS: &[&str] = &["redis-server", "redis-cli"];

/// How long a cluster node or a sentinel waits before it calls a silent master down. Long
/// enough for a test to see the failover window, short enough to keep tests quick.
pub const DOWN_AFTER: Duration = Duration::from_secs(2);

pub struct RedisServer {
    child: Child,
    pub port: u16,
    /// Its own working directory, when no deployment gave it one.
    _dir: Option<tempfile::TempDir>,
}

impl RedisServer {
    /// `None` when redis-server is missing outside CI (under `CI=true` that panics).
    pub fn start() -> Option<RedisServer> {
        RedisServer::start_on(None)
    }

    /// On `port` (to restart a killed server where its clients expect it).
    pub fn start_on(port: Option<u16>) -> Option<RedisServer> {
        if !require(TOOLS, false) {
            return None;
        }
        let dir = tempdir("mxg-redis.");
        let mut server = RedisServer::spawn(port.unwrap_or_else(free_port), dir.path(), &[]);
        server._dir = Some(dir);
        server.wait_ready();
        Some(server)
    }

    /// Starts `redis-server` on `port` with `extra` arguments, not waiting for it. Files
    /// it writes (a replica's copy of its master's data) go to `dir`, named by port.
    pub fn spawn(port: u16, dir: &Path, extra: &[String]) -> RedisServer {
        let child = Command::new(which("redis-server").expect("redis-server"))
            .args(extra)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir)
            .args(["--dbfilename", &format!("dump-{port}.rdb")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        RedisServer {
            child,
            port,
            _dir: None,
        }
    }

    /// Readiness: redis answers PING.
    pub fn wait_ready(&self) {
        wait_for(
            Duration::from_secs(10),
            &format!("redis-server on port {} to answer PING", self.port),
            || {
                let mut con = self.con()?;
                redis::cmd("PING").query::<String>(&mut con).ok()
            },
        );
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A fresh connection, or `None` while the server does not answer.
    pub fn con(&self) -> Option<redis::Connection> {
        let c = redis::Client::open(self.url()).ok()?;
        c.get_connection_with_timeout(Duration::from_secs(2)).ok()
    }

    /// `cmd` with `args` on this server.
    pub fn query<T: redis::FromRedisValue>(&self, cmd: &str, args: &[&str]) -> Option<T> {
        let mut con = self.con()?;
        redis::cmd(cmd).arg(args).query(&mut con).ok()
    }

    /// `INFO <section>` as `key → value`.
    pub fn info(&self, section: &str) -> HashMap<String, String> {
        let text: String = self.query("INFO", &[section]).unwrap_or_default();
        text.lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
            .collect()
    }

    /// True when this master has `replicas` replicas online, each at the master's
    /// replication offset: everything written so far survives a failover.
    pub fn replicas_caught_up(&self, replicas: usize) -> bool {
        let info = self.info("replication");
        let Some(offset) = info.get("master_repl_offset") else {
            return false;
        };
        let online = (0..replicas)
            .filter(|i| {
                info.get(&format!("slave{i}")).is_some_and(|s| {
                    s.contains("state=online") && s.contains(&format!("offset={offset},"))
                })
            })
            .count();
        online == replicas
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster: `masters` masters with `replicas` replicas each, on loopback.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    /// `None` when a tool is missing outside CI (under `CI=true` that panics).
    pub fn start(masters: usize, replicas: usize) -> Option<RedisCluster> {
        let ports: Vec<u16> = (0..masters * (1 + replicas)).map(|_| free_port()).collect();
        RedisCluster::start_on(&ports, replicas)
    }

    /// On `ports` (picked before, for a client started before the cluster): the first
    /// `ports.len() / (1 + replicas)` become masters.
    pub fn start_on(ports: &[u16], replicas: usize) -> Option<RedisCluster> {
        if !require(HA_TOOLS, false) {
            return None;
        }
        let dir = tempdir("mxg-rcluster.");
        let nodes: Vec<RedisServer> = ports
            .iter()
            .map(|&port| {
                // The bus port is set explicitly: port + 10000 may be taken or past 65535.
                RedisServer::spawn(
                    port,
                    dir.path(),
                    &[
                        "--cluster-enabled".into(),
                        "yes".into(),
                        "--cluster-port".into(),
                        free_port().to_string(),
                        "--cluster-config-file".into(),
                        dir.path()
                            .join(format!("nodes-{port}.conf"))
                            .display()
                            .to_string(),
                        "--cluster-node-timeout".into(),
                        DOWN_AFTER.as_millis().to_string(),
                    ],
                )
            })
            .collect();
        for n in &nodes {
            n.wait_ready();
        }
        let out = Command::new(which("redis-cli").expect("redis-cli"))
            .args(["--cluster", "create"])
            .args(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { nodes, _dir: dir };
        wait_for(
            Duration::from_secs(20),
            "every cluster node to report cluster_state:ok and its replicas in sync",
            || {
                let all_ok = cluster.nodes.iter().all(|n| {
                    let info = n.query::<String>("CLUSTER", &["INFO"]).unwrap_or_default();
                    info.contains("cluster_state:ok")
                        && info.contains(&format!("cluster_known_nodes:{}", cluster.nodes.len()))
                });
                let synced = cluster
                    .masters()
                    .iter()
                    .all(|&m| cluster.nodes[m].replicas_caught_up(replicas));
                (all_ok && synced).then_some(())
            },
        );
        Some(cluster)
    }

    /// `--store` for mxguard: every node as a seed.
    pub fn store_url(&self) -> String {
        let ports: Vec<u16> = self.nodes.iter().map(|n| n.port).collect();
        cluster_url(&ports)
    }

    /// `CLUSTER NODES` as seen from a node that answers (not `except`).
    fn nodes_view(&self, except: Option<usize>) -> Option<String> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != except)
            .find_map(|(_, n)| n.query::<String>("CLUSTER", &["NODES"]))
    }

    /// Indexes of the nodes that are masters serving slots.
    pub fn masters(&self) -> Vec<usize> {
        let view = self.nodes_view(None).unwrap_or_default();
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| {
                view.lines().any(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    f.len() > 8
                        && f[1].starts_with(&format!("127.0.0.1:{}@", n.port))
                        && f[2].contains("master")
                })
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// The slot of `key`, as the cluster computes it.
    pub fn keyslot(&self, key: &str) -> u16 {
        let any = &self.nodes[self.masters()[0]];
        any.query("CLUSTER", &["KEYSLOT", key])
            .expect("CLUSTER KEYSLOT")
    }

    /// The index of the node serving `slot` as master, as seen from nodes other than
    /// `except` (`None` while no answer).
    pub fn owner_of(&self, slot: u16, except: Option<usize>) -> Option<usize> {
        let any = self
            .nodes
            .iter()
            .enumerate()
            .find(|(i, n)| Some(*i) != except && n.con().is_some())?
            .1;
        let slots: redis::Value = any.query("CLUSTER", &["SLOTS"])?;
        let redis::Value::Array(ranges) = slots else {
            return None;
        };
        for r in ranges {
            let (start, end, master): (u16, u16, (String, u16)) = match r {
                redis::Value::Array(parts) if parts.len() >= 3 => (
                    redis::from_redis_value(parts[0].clone()).ok()?,
                    redis::from_redis_value(parts[1].clone()).ok()?,
                    {
                        let redis::Value::Array(m) = &parts[2] else {
                            return None;
                        };
                        (
                            redis::from_redis_value(m[0].clone()).ok()?,
                            redis::from_redis_value(m[1].clone()).ok()?,
                        )
                    },
                ),
                _ => return None,
            };
            if (start..=end).contains(&slot) {
                return self.nodes.iter().position(|n| n.port == master.1);
            }
        }
        None
    }

    /// Every key matching `pattern` on every master.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        self.masters()
            .into_iter()
            .flat_map(|m| {
                self.nodes[m]
                    .query::<Vec<String>>("KEYS", &[pattern])
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Waits until the writes on master `m` reached its replicas.
    pub fn wait_replicated(&self, m: usize, replicas: usize) {
        wait_for(
            Duration::from_secs(10),
            "the replicas to reach the master's offset",
            || self.nodes[m].replicas_caught_up(replicas).then_some(()),
        );
    }

    /// Kills node `i` by its PID (SIGKILL: no goodbye to the cluster).
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Waits until another node serves `slot` as master and the cluster is whole again;
    /// returns the new owner.
    pub fn wait_failover(&self, slot: u16, old: usize, timeout: Duration) -> usize {
        wait_for(timeout, "a replica to take over the slot", || {
            let owner = self.owner_of(slot, Some(old))?;
            let ok = self
                .nodes
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != old)
                .all(|(_, n)| {
                    n.query::<String>("CLUSTER", &["INFO"])
                        .is_some_and(|i| i.contains("cluster_state:ok"))
                });
            (owner != old && ok).then_some(owner)
        })
    }

    /// True while the nodes other than `old` still see `old` serving `slot`: the
    /// failover has not happened yet.
    pub fn still_owned_by(&self, slot: u16, old: usize) -> bool {
        self.owner_of(slot, Some(old)) == Some(old)
    }
}

/// `redis+cluster://` with the nodes on `ports` as seeds.
pub fn cluster_url(ports: &[u16]) -> String {
    let hosts: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    format!("redis+cluster://{}", hosts.join(","))
}

/// A master, one replica and three sentinels watching it under [`SENTINEL_MASTER`].
pub struct RedisSentinels {
    pub master: RedisServer,
    pub replica: RedisServer,
    pub sentinels: Vec<RedisServer>,
    _dir: tempfile::TempDir,
}

pub const SENTINEL_MASTER: &str = "mymaster";

impl RedisSentinels {
    /// `None` when a tool is missing outside CI (under `CI=true` that panics).
    pub fn start() -> Option<RedisSentinels> {
        if !require(HA_TOOLS, false) {
            return None;
        }
        let dir = tempdir("mxg-rsentinel.");
        let master = RedisServer::spawn(free_port(), dir.path(), &[]);
        master.wait_ready();
        let replica = RedisServer::spawn(
            free_port(),
            dir.path(),
            &[
                "--replicaof".into(),
                "127.0.0.1".into(),
                master.port.to_string(),
            ],
        );
        replica.wait_ready();
        wait_for(Duration::from_secs(10), "the replica to sync", || {
            master.replicas_caught_up(1).then_some(())
        });
        let sentinels = (0..3)
            .map(|_| {
                let port = free_port();
                let conf = sentinel_conf(dir.path(), port, master.port);
                let child = Command::new(which("redis-server").expect("redis-server"))
                    .arg(&conf)
                    .arg("--sentinel")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("spawn redis-server --sentinel");
                RedisServer {
                    child,
                    port,
                    _dir: None,
                }
            })
            .collect();
        let set = RedisSentinels {
            master,
            replica,
            sentinels,
            _dir: dir,
        };
        // A failover needs a quorum that knows the replica: wait until every sentinel
        // sees the master, its replica and the two other sentinels.
        wait_for(
            Duration::from_secs(20),
            "the sentinels to discover the replica and each other",
            || {
                set.sentinels
                    .iter()
                    .all(|s| {
                        let m = sentinel_master_info(s);
                        m.get("num-slaves").map(String::as_str) == Some("1")
                            && m.get("num-other-sentinels").map(String::as_str) == Some("2")
                            && m.get("flags").map(String::as_str) == Some("master")
                    })
                    .then_some(())
            },
        );
        Some(set)
    }

    /// `--store` for mxguard.
    pub fn store_url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!("redis+sentinel://{}/{SENTINEL_MASTER}/0", hosts.join(","))
    }

    /// The master's port as the sentinels name it (the first that answers).
    pub fn master_port(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|s| {
            let (_, port): (String, u16) =
                s.query("SENTINEL", &["get-master-addr-by-name", SENTINEL_MASTER])?;
            Some(port)
        })
    }

    /// Waits until every sentinel names the server on `port` as master and that server
    /// says it is one.
    pub fn wait_master(&self, port: u16, timeout: Duration) {
        wait_for(
            timeout,
            &format!("the sentinels to name port {port} master"),
            || {
                let all = self.sentinels.iter().all(|s| {
                    s.query::<(String, u16)>(
                        "SENTINEL",
                        &["get-master-addr-by-name", SENTINEL_MASTER],
                    )
                    .is_some_and(|(_, p)| p == port)
                });
                let server = [&self.master, &self.replica]
                    .into_iter()
                    .find(|s| s.port == port)
                    .expect("one of ours");
                let role = server.info("replication").get("role").cloned();
                (all && role.as_deref() == Some("master")).then_some(())
            },
        );
    }

    /// Asks a sentinel for a graceful failover (the master is demoted, not killed).
    pub fn failover(&self) {
        let ok: String = self.sentinels[0]
            .query("SENTINEL", &["FAILOVER", SENTINEL_MASTER])
            .expect("SENTINEL FAILOVER");
        assert_eq!(ok, "OK");
    }
}

/// `SENTINEL MASTER <name>` as `field → value`.
fn sentinel_master_info(s: &RedisServer) -> HashMap<String, String> {
    let flat: Vec<String> = s
        .query("SENTINEL", &["MASTER", SENTINEL_MASTER])
        .unwrap_or_default();
    flat.chunks(2)
        .filter(|c| c.len() == 2)
        .map(|c| (c[0].clone(), c[1].clone()))
        .collect()
}

/// A sentinel's config file (a sentinel rewrites it, so each has its own).
fn sentinel_conf(dir: &Path, port: u16, master_port: u16) -> std::path::PathBuf {
    let path = dir.join(format!("sentinel-{port}.conf"));
    let down = DOWN_AFTER.as_millis();
    std::fs::write(
        &path,
        format!(
            "port {port}\nbind 127.0.0.1\ndir {dir}\n\
             sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {master_port} 2\n\
             sentinel down-after-milliseconds {SENTINEL_MASTER} {down}\n\
             sentinel failover-timeout {SENTINEL_MASTER} 10000\n\
             sentinel parallel-syncs {SENTINEL_MASTER} 1\n",
            dir = dir.display()
        ),
    )
    .expect("write sentinel.conf");
    path
}
