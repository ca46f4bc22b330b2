//! How a highly available Redis is named in `store:` and `--store`: Sentinel (a master
//! and its replicas, found through the sentinels) and Cluster (shards, found from any
//! node). Parsed and checked at load time, so a typo fails the start, not the first mail.

use std::fmt;

use redis::ConnectionAddr;

/// The default port of a sentinel when an address has none.
const SENTINEL_PORT: u16 = 26379;

/// `store: { redis_sentinel: { master, sentinels, db } }` or
/// `redis+sentinel://[USER:PASS@]HOST:PORT,HOST:PORT/MASTER[/DB]`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SentinelSpec {
    /// The name the sentinels monitor (`sentinel monitor <master> …`).
    pub master: String,
    /// The sentinels, `host:port` (port 26379 when left out); any one that answers is
    /// enough, list them all.
    pub sentinels: Vec<String>,
    /// The database on the master.
    #[serde(default)]
    pub db: i64,
    /// Credentials on the master (and replicas).
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// Credentials on the sentinels, when they have their own.
    #[serde(default)]
    pub sentinel_username: Option<String>,
    #[serde(default)]
    pub sentinel_password: Option<String>,
}

/// `store: { redis_cluster: [URL, …] }` or `redis+cluster://[USER:PASS@]HOST:PORT,…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSpec {
    /// Seed nodes as `redis://` URLs; the client learns the others from them.
    pub nodes: Vec<String>,
}

impl SentinelSpec {
    /// `redis+sentinel://[USER:PASS@]HOST:PORT,HOST:PORT/MASTER[/DB]`.
    pub fn from_url(url: &str) -> Result<SentinelSpec, String> {
        let rest = url
            .strip_prefix("redis+sentinel://")
            .ok_or_else(|| format!("{url:?} does not start with redis+sentinel://"))?;
        let (userinfo, rest) = split_userinfo(rest);
        let (username, password) = credentials(userinfo)?;
        let (hosts, path) = rest.split_once('/').ok_or_else(|| {
            format!("{url:?}: the master name is missing (redis+sentinel://HOST:PORT,…/MASTER/DB)")
        })?;
        let (master, db) = match path.split_once('/') {
            Some((m, "")) => (m, 0),
            Some((m, db)) => (m, parse_db(db, url)?),
            None => (path, 0),
        };
        let spec = SentinelSpec {
            master: master.to_owned(),
            sentinels: split_hosts(hosts),
            db,
            username,
            password,
            sentinel_username: None,
            sentinel_password: None,
        };
        spec.validate()?;
        Ok(spec)
    }

    /// Checks what can be checked without a network: a master name, sentinel addresses
    /// with ports, and that the client can be built from them.
    pub fn validate(&self) -> Result<(), String> {
        if self.master.is_empty() {
            return Err("redis_sentinel: `master` is empty".into());
        }
        if self.sentinels.is_empty() {
            return Err("redis_sentinel: `sentinels` is empty (list every sentinel)".into());
        }
        if self.db < 0 {
            return Err(format!("redis_sentinel: invalid db {}", self.db));
        }
        self.client().map(drop)
    }

    /// The sentinel addresses, parsed.
    pub fn addresses(&self) -> Result<Vec<ConnectionAddr>, String> {
        self.sentinels
            .iter()
            .map(|s| {
                let (host, port) = parse_host_port(s, SENTINEL_PORT)
                    .map_err(|e| format!("redis_sentinel: sentinel {s:?}: {e}"))?;
                Ok(ConnectionAddr::Tcp(host, port))
            })
            .collect()
    }

    /// A client that asks the sentinels for the current master of [`Self::master`].
    pub fn client(&self) -> Result<redis::sentinel::SentinelClient, String> {
        self.client_starting_at(0)
    }

    /// The same, asking the sentinels from the `first`-th on (the client takes their
    /// answers in order: a sentinel that hangs at the head of the list would delay each
    /// lookup, so after a failed one the next starts with another sentinel).
    pub fn client_starting_at(
        &self,
        first: usize,
    ) -> Result<redis::sentinel::SentinelClient, String> {
        use redis::sentinel::{SentinelClientBuilder, SentinelServerType};
        let mut addrs = self.addresses()?;
        if !addrs.is_empty() {
            let n = addrs.len();
            addrs.rotate_left(first % n);
        }
        let mut b = SentinelClientBuilder::new(addrs, &self.master, SentinelServerType::Master)
            .map_err(|e| format!("redis_sentinel: {e}"))?
            .set_client_to_redis_db(self.db);
        if let Some(u) = &self.username {
            b = b.set_client_to_redis_username(u);
        }
        if let Some(p) = &self.password {
            b = b.set_client_to_redis_password(p);
        }
        if let Some(u) = &self.sentinel_username {
            b = b.set_client_to_sentinel_username(u);
        }
        if let Some(p) = &self.sentinel_password {
            b = b.set_client_to_sentinel_password(p);
        }
        b.build().map_err(|e| format!("redis_sentinel: {e}"))
    }
}

impl fmt::Display for SentinelSpec {
    /// The URL form, credentials hidden.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("redis+sentinel://")?;
        if self.username.is_some() || self.password.is_some() {
            write!(f, "{}:***@", self.username.as_deref().unwrap_or(""))?;
        }
        write!(
            f,
            "{}/{}/{}",
            self.sentinels.join(","),
            self.master,
            self.db
        )
    }
}

impl ClusterSpec {
    /// `redis+cluster://[USER:PASS@]HOST:PORT,HOST:PORT`.
    pub fn from_url(url: &str) -> Result<ClusterSpec, String> {
        let rest = url
            .strip_prefix("redis+cluster://")
            .ok_or_else(|| format!("{url:?} does not start with redis+cluster://"))?;
        let (userinfo, rest) = split_userinfo(rest);
        let hosts = match rest.split_once('/') {
            Some((h, "" | "0")) => h,
            Some(_) => return Err(format!("{url:?}: a Redis Cluster has only database 0")),
            None => rest,
        };
        // The userinfo goes into each node's URL as written: redis decodes it there.
        let userinfo = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
        let nodes = split_hosts(hosts)
            .into_iter()
            .map(|h| format!("redis://{userinfo}{h}"))
            .collect();
        ClusterSpec::from_nodes(nodes)
    }

    /// From the YAML list: `redis://HOST:PORT` URLs (a bare `HOST:PORT` is taken as one).
    pub fn from_nodes(nodes: Vec<String>) -> Result<ClusterSpec, String> {
        let nodes: Vec<String> = nodes
            .into_iter()
            .map(|n| {
                if n.starts_with("redis://") || n.starts_with("rediss://") {
                    n
                } else {
                    format!("redis://{n}")
                }
            })
            .collect();
        let spec = ClusterSpec { nodes };
        spec.client()?;
        Ok(spec)
    }

    /// A client for the cluster (no connection yet), with mxguard's deadlines.
    pub fn client(&self) -> Result<redis::cluster::ClusterClient, String> {
        if self.nodes.is_empty() {
            return Err("redis_cluster: no node given (list a few of the cluster's nodes)".into());
        }
        super::connection::cluster_builder(&self.nodes)
            .build()
            .map_err(|e| format!("redis_cluster: {e}"))
    }
}

impl fmt::Display for ClusterSpec {
    /// The URL form, credentials hidden.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hosts: Vec<&str> = self
            .nodes
            .iter()
            .map(|n| {
                let n = n.split_once("://").map_or(n.as_str(), |(_, r)| r);
                let n = n.rsplit_once('@').map_or(n, |(_, h)| h);
                n.split('/').next().unwrap_or(n)
            })
            .collect();
        write!(f, "redis+cluster://{}", hosts.join(","))
    }
}

/// Splits `[USERINFO@]REST` at the last `@` before the first `/`, as in URLs.
fn split_userinfo(s: &str) -> (Option<&str>, &str) {
    let authority_end = s.find('/').unwrap_or(s.len());
    match s[..authority_end].rfind('@') {
        Some(at) => (Some(&s[..at]), &s[at + 1..]),
        None => (None, s),
    }
}

/// `USER:PASS` (percent-encoded, as in any Redis URL) → (username, password), decoded
/// by redis's own URL parser.
fn credentials(userinfo: Option<&str>) -> Result<(Option<String>, Option<String>), String> {
    let Some(userinfo) = userinfo else {
        return Ok((None, None));
    };
    let info =
        redis::IntoConnectionInfo::into_connection_info(format!("redis://{userinfo}@localhost"))
            .map_err(|e| format!("invalid credentials in the store URL: {e}"))?;
    let r = info.redis_settings();
    Ok((
        r.username().map(str::to_owned),
        r.password().map(str::to_owned),
    ))
}

fn split_hosts(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(str::to_owned)
        .collect()
}

fn parse_db(s: &str, url: &str) -> Result<i64, String> {
    s.parse::<i64>()
        .ok()
        .filter(|d| *d >= 0)
        .ok_or_else(|| format!("{url:?}: invalid database {s:?}"))
}

/// `host:port`, `[v6]:port`, or a host alone (`default` port).
fn parse_host_port(s: &str, default: u16) -> Result<(String, u16), String> {
    let s = s.trim();
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, tail) = rest.split_once(']').ok_or("unclosed [")?;
        match tail.strip_prefix(':') {
            Some(p) => (h, Some(p)),
            None if tail.is_empty() => (h, None),
            None => return Err("expected [IPV6]:PORT".into()),
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, Some(p)),
            Some(_) => return Err("an IPv6 address needs brackets: [IPV6]:PORT".into()),
            None => (s, None),
        }
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("invalid port {p:?}"))?,
        None => default,
    };
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls() {
        let s =
            SentinelSpec::from_url("redis+sentinel://10.0.0.1:26379,10.0.0.2,[::1]:5/mymaster/2")
                .unwrap();
        assert_eq!(s.master, "mymaster");
        assert_eq!(s.db, 2);
        assert_eq!(s.sentinels, ["10.0.0.1:26379", "10.0.0.2", "[::1]:5"]);
        assert_eq!(
            s.addresses().unwrap(),
            [
                ConnectionAddr::Tcp("10.0.0.1".into(), 26379),
                ConnectionAddr::Tcp("10.0.0.2".into(), 26379),
                ConnectionAddr::Tcp("::1".into(), 5),
            ]
        );
        assert_eq!(
            s.to_string(),
            "redis+sentinel://10.0.0.1:26379,10.0.0.2,[::1]:5/mymaster/2"
        );
        let s = SentinelSpec::from_url("redis+sentinel://:s3cret%40x@h:1/m").unwrap();
        assert_eq!((s.db, s.password.as_deref()), (0, Some("s3cret@x")));
        assert_eq!(s.username, None);
        assert_eq!(s.to_string(), "redis+sentinel://:***@h:1/m/0");
        for bad in [
            "redis+sentinel://h:1",
            "redis+sentinel://h:1/",
            "redis+sentinel:///m/0",
            "redis+sentinel://h:99999/m",
            "redis+sentinel://h:1/m/x",
            "redis+sentinel://::1:5/m",
        ] {
            assert!(SentinelSpec::from_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cluster_urls() {
        let c = ClusterSpec::from_url("redis+cluster://u:p@10.0.0.1:7000,10.0.0.2:7001").unwrap();
        assert_eq!(
            c.nodes,
            ["redis://u:p@10.0.0.1:7000", "redis://u:p@10.0.0.2:7001"]
        );
        assert_eq!(c.to_string(), "redis+cluster://10.0.0.1:7000,10.0.0.2:7001");
        let c = ClusterSpec::from_nodes(vec!["redis://h:1".into(), "h:2".into()]).unwrap();
        assert_eq!(c.nodes, ["redis://h:1", "redis://h:2"]);
        assert!(ClusterSpec::from_url("redis+cluster://h:1/3").is_err());
        assert!(ClusterSpec::from_url("redis+cluster://").is_err());
        assert!(ClusterSpec::from_nodes(vec!["redis://h:notaport".into()]).is_err());
    }
}
