//! The one DNS resolver every check shares: DKIM, DMARC and ARC (through mail-auth),
//! SPF, DNS lists and reverse DNS (our own lookups below). One resolver means one
//! cache: the A record an SPF `a:` mechanism fetched serves the FCrDNS check too.
//!
//! The name servers come from `dns.servers` (or `/etc/resolv.conf`), replaced by
//! `--dns ADDR:PORT`; `/etc/hosts` is never consulted, because a local hosts entry must
//! not be able to vouch for a sender. Every query has the configured timeout and
//! attempts; our own lookups are counted and timed in the metrics.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{Name, RData, RecordType};

use crate::config::DnsConfig;
use crate::telemetry::{DnsRecordType, DnsResult, Metrics};

#[derive(Debug, thiserror::Error)]
pub enum DnsSetupError {
    #[error("dns: cannot build the resolver: {0}")]
    Build(String),
}

/// How one of our lookups ended. NXDOMAIN and "no records of this type" are answers
/// ("not listed", "no PTR"); only `Error` means we do not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<T> {
    Found(T),
    NotFound,
    Error(LookupError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupError {
    Timeout,
    /// SERVFAIL, REFUSED, a broken answer, a network error.
    Failed,
}

/// The answer to one query, with the cases SPF must tell apart (RFC 7208 §4.6.4: a
/// "void lookup" is NXDOMAIN or an empty answer; §5: a server failure or a timeout is
/// a `temperror`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer<T> {
    /// At least one record of the type asked for.
    Records(T),
    /// The name exists but has no record of this type.
    NoData,
    /// The name does not exist (also: a name that cannot exist, such as one with an
    /// empty or over-long label, which is never sent).
    NxDomain,
    /// SERVFAIL, REFUSED, a broken answer, a network error.
    ServFail,
    Timeout,
}

impl<T> Answer<T> {
    /// How the lookup went, for the metric.
    fn result(&self) -> DnsResult {
        match self {
            Answer::Records(_) => DnsResult::Ok,
            Answer::NoData => DnsResult::NoData,
            Answer::NxDomain => DnsResult::NxDomain,
            Answer::ServFail => DnsResult::Error,
            Answer::Timeout => DnsResult::Timeout,
        }
    }
}

/// The shared resolver and its metrics. Cheap to clone (the cache is shared).
#[derive(Clone)]
pub struct Dns {
    resolver: TokioResolver,
    metrics: Arc<Metrics>,
}

impl Dns {
    /// Builds the resolver from the configuration.
    pub fn new(cfg: &DnsConfig, metrics: Arc<Metrics>) -> Result<Dns, DnsSetupError> {
        let (config, mut opts) = if cfg.servers.is_empty() {
            match hickory_resolver::system_conf::read_system_conf() {
                Ok(c) => c,
                Err(e) => {
                    // Not fatal: mxguard without any DNS check must still start. Every
                    // lookup then fails, which checks report as `temperror`.
                    tracing::warn!(error = %e, "dns: /etc/resolv.conf unusable and no dns.servers configured; DNS checks will fail");
                    (
                        ResolverConfig::from_parts(None, vec![], vec![]),
                        ResolverOpts::default(),
                    )
                }
            }
        } else {
            let servers = cfg.servers.iter().map(|a| name_server(*a)).collect();
            (
                ResolverConfig::from_parts(None, vec![], servers),
                ResolverOpts::default(),
            )
        };
        opts.timeout = cfg.timeout;
        opts.attempts = cfg.attempts;
        opts.cache_size = cfg.cache_size;
        opts.use_hosts_file = ResolveHosts::Never;
        // Names are always queried fully qualified; no search list surprises.
        opts.ndots = 0;
        let resolver = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(opts)
            .build()
            .map_err(|e| DnsSetupError::Build(e.to_string()))?;
        Ok(Dns { resolver, metrics })
    }

    /// The hickory resolver, for mail-auth.
    pub fn resolver(&self) -> &TokioResolver {
        &self.resolver
    }

    /// A records of `name` (fully qualified, trailing dot added if missing).
    pub async fn ipv4(&self, name: &str) -> Lookup<Vec<Ipv4Addr>> {
        let name = fqdn(name);
        let started = Instant::now();
        let r = self.resolver.ipv4_lookup(name.as_str()).await;
        let out = match r {
            Ok(l) => Lookup::Found(
                l.answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::A(a) => Some(a.0),
                        _ => None,
                    })
                    .collect(),
            ),
            Err(e) => classify(&e),
        };
        self.observe(DnsRecordType::A, started, &out);
        out
    }

    /// TXT records of `name`, each one's strings joined.
    pub async fn txt(&self, name: &str) -> Lookup<Vec<String>> {
        let name = fqdn(name);
        let started = Instant::now();
        let r = self.resolver.txt_lookup(name.as_str()).await;
        let out = match r {
            Ok(l) => Lookup::Found(
                l.answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::TXT(t) => Some(
                            t.txt_data
                                .iter()
                                .map(|c| String::from_utf8_lossy(c).into_owned())
                                .collect::<String>(),
                        ),
                        _ => None,
                    })
                    .collect(),
            ),
            Err(e) => classify(&e),
        };
        self.observe(DnsRecordType::Txt, started, &out);
        out
    }

    /// PTR names of `ip` (without the trailing dot).
    pub async fn ptr(&self, ip: IpAddr) -> Lookup<Vec<String>> {
        let started = Instant::now();
        let r = self.resolver.reverse_lookup(ip).await;
        let out = match r {
            Ok(l) => Lookup::Found(
                l.answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::PTR(p) => Some(p.0.to_ascii().trim_end_matches('.').to_owned()),
                        _ => None,
                    })
                    .collect(),
            ),
            Err(e) => classify(&e),
        };
        self.observe(DnsRecordType::Ptr, started, &out);
        out
    }

    /// The addresses (A and AAAA) of `name`.
    pub async fn ips(&self, name: &str) -> Lookup<Vec<IpAddr>> {
        let name = fqdn(name);
        let started = Instant::now();
        let r = self.resolver.lookup_ip(name.as_str()).await;
        let out = match r {
            Ok(l) => Lookup::Found(l.iter().collect()),
            Err(e) => classify(&e),
        };
        self.observe(DnsRecordType::Addresses, started, &out);
        out
    }

    /// TXT records of `name`, each one's strings joined as raw bytes (SPF must see a
    /// non-ASCII byte to refuse it). `name` is sent as written: no IDNA conversion.
    pub async fn txt_records(&self, name: &str) -> Answer<Vec<Vec<u8>>> {
        self.records(name, RecordType::TXT, DnsRecordType::Txt, |d| match d {
            RData::TXT(t) => Some(t.txt_data.iter().flat_map(|c| c.iter().copied()).collect()),
            _ => None,
        })
        .await
    }

    /// A records of `name` (sent as written).
    pub async fn a_records(&self, name: &str) -> Answer<Vec<Ipv4Addr>> {
        self.records(name, RecordType::A, DnsRecordType::A, |d| match d {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .await
    }

    /// AAAA records of `name` (sent as written).
    pub async fn aaaa_records(&self, name: &str) -> Answer<Vec<Ipv6Addr>> {
        self.records(name, RecordType::AAAA, DnsRecordType::Aaaa, |d| match d {
            RData::AAAA(a) => Some(a.0),
            _ => None,
        })
        .await
    }

    /// MX records of `name` as `(preference, exchange)`, the exchange without its
    /// trailing dot (`""` for the root, a null MX).
    pub async fn mx_records(&self, name: &str) -> Answer<Vec<(u16, String)>> {
        self.records(name, RecordType::MX, DnsRecordType::Mx, |d| match d {
            RData::MX(mx) => Some((mx.preference, raw_text(&mx.exchange))),
            _ => None,
        })
        .await
    }

    /// PTR names of `ip`, without the trailing dot.
    pub async fn ptr_records(&self, ip: IpAddr) -> Answer<Vec<String>> {
        let name = raw_text(&Name::from(ip));
        self.records(&name, RecordType::PTR, DnsRecordType::Ptr, |d| match d {
            RData::PTR(p) => Some(raw_text(&p.0)),
            _ => None,
        })
        .await
    }

    /// One query of `rtype`, the answer's records of that type (CNAMEs followed by the
    /// resolver) through `pick`, timed and counted under `label`.
    async fn records<T>(
        &self,
        name: &str,
        rtype: RecordType,
        label: DnsRecordType,
        pick: impl Fn(&RData) -> Option<T>,
    ) -> Answer<Vec<T>> {
        let started = Instant::now();
        let out = match raw_name(name) {
            None => Answer::NxDomain,
            Some(query) => match self.resolver.lookup(query, rtype).await {
                Ok(l) => {
                    let found: Vec<T> = l.answers().iter().filter_map(|r| pick(&r.data)).collect();
                    if found.is_empty() {
                        Answer::NoData
                    } else {
                        Answer::Records(found)
                    }
                }
                Err(e) => answer_of(&e),
            },
        };
        self.count(label, started, out.result());
        out
    }

    fn observe<T>(&self, rtype: DnsRecordType, started: Instant, out: &Lookup<T>) {
        let result = match out {
            Lookup::Found(_) => DnsResult::Ok,
            Lookup::NotFound => DnsResult::NxDomain,
            Lookup::Error(LookupError::Timeout) => DnsResult::Timeout,
            Lookup::Error(LookupError::Failed) => DnsResult::Error,
        };
        self.count(rtype, started, result);
    }

    fn count(&self, rtype: DnsRecordType, started: Instant, result: DnsResult) {
        self.metrics
            .checks
            .dns_lookup(rtype, result, started.elapsed());
    }
}

fn name_server(addr: SocketAddr) -> NameServerConfig {
    let mut udp = ConnectionConfig::udp();
    udp.port = addr.port();
    // TCP for answers that do not fit in UDP (long DKIM keys, big SPF records).
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = addr.port();
    NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
}

fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_owned()
    } else {
        format!("{name}.")
    }
}

/// `name` (a trailing dot or not) as a fully qualified DNS name of raw labels: no IDNA,
/// no escapes, so what SPF macros produce is queried byte for byte. `None` when no
/// query can carry it (an empty or over-long label, more than 255 octets).
fn raw_name(name: &str) -> Option<Name> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return Some(Name::root());
    }
    Name::from_labels(name.split('.').map(str::as_bytes)).ok()
}

/// A name's labels joined with dots, as raw text (lossy for non-UTF-8 bytes), without
/// the trailing dot.
fn raw_text(name: &Name) -> String {
    name.iter()
        .map(String::from_utf8_lossy)
        .collect::<Vec<_>>()
        .join(".")
}

fn answer_of<T>(e: &NetError) -> Answer<T> {
    if e.is_nx_domain() {
        Answer::NxDomain
    } else if e.is_no_records_found() {
        Answer::NoData
    } else if matches!(e, NetError::Timeout)
        || e.to_string().to_ascii_lowercase().contains("timed out")
    {
        Answer::Timeout
    } else {
        Answer::ServFail
    }
}

fn classify<T>(e: &hickory_resolver::net::NetError) -> Lookup<T> {
    if e.is_nx_domain() || e.is_no_records_found() {
        return Lookup::NotFound;
    }
    let text = e.to_string().to_ascii_lowercase();
    if text.contains("timed out") || text.contains("timeout") {
        Lookup::Error(LookupError::Timeout)
    } else {
        Lookup::Error(LookupError::Failed)
    }
}

/// The DNS list query name for `ip` in `zone` (RFC 5782): reversed octets for IPv4,
/// reversed nibbles for IPv6.
pub fn dnsbl_name(ip: IpAddr, zone: &str) -> String {
    let zone = zone.trim_end_matches('.');
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.{zone}.", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut s = String::with_capacity(64 + zone.len());
            for b in v6.octets().iter().rev() {
                s.push_str(&format!("{:x}.{:x}.", b & 0xf, b >> 4));
            }
            format!("{s}{zone}.")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dnsbl_names_reverse_the_address() {
        assert_eq!(
            dnsbl_name("192.0.2.99".parse().unwrap(), "zen.example"),
            "99.2.0.192.zen.example."
        );
        let v6 = dnsbl_name("2001:db8::1".parse().unwrap(), "bl.test.");
        assert!(v6.starts_with("1.0.0.0.0.0.0.0."), "{v6}");
        assert!(v6.ends_with("8.b.d.0.1.0.0.2.bl.test."), "{v6}");
    }
}
