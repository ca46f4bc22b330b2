//! `check_host()` (RFC 7208 §4–§6) over a small DNS trait, so that every rule is
//! testable without a network ([`SpfDns`] has an in-memory implementation in the
//! tests, and one over the shared resolver in `super`).
//!
//! Limits (§4.6.4): more than 10 terms that query DNS (`include a mx ptr exists
//! redirect`, across includes and redirects) or more than 2 void lookups (NXDOMAIN or
//! no answer) is a `permerror`; an `mx` with more than 10 names is a `permerror`; `ptr`
//! and `%{p}` look at the first 10 PTR names only. The `exp=` lookup happens once, only
//! for a `fail`, and counts against nothing. DNS trouble is a `temperror`, except in
//! `ptr` and `%{p}`, where a failed lookup just does not match (§5.5).

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::pin::Pin;

use super::macros::{self, Context, MacroEnv, MacroString};
use super::record::{DomainSpec, Mechanism, Qualifier, Record, is_spf_record};
use crate::dns::Answer;

/// The lookups `check_host()` needs. Names are given without a trailing dot, exactly
/// as the record and its macros produced them.
pub trait SpfDns: Sync {
    /// TXT records, each one's strings joined, as bytes.
    fn txt(&self, name: &str) -> impl Future<Output = Answer<Vec<Vec<u8>>>> + Send;
    fn a(&self, name: &str) -> impl Future<Output = Answer<Vec<Ipv4Addr>>> + Send;
    fn aaaa(&self, name: &str) -> impl Future<Output = Answer<Vec<Ipv6Addr>>> + Send;
    /// `(preference, exchange)`; the root (a null MX) as `""`.
    fn mx(&self, name: &str) -> impl Future<Output = Answer<Vec<(u16, String)>>> + Send;
    /// The PTR names of the address's reverse name.
    fn ptr(&self, ip: IpAddr) -> impl Future<Output = Answer<Vec<String>>> + Send;
}

/// The SPF results (§2.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpfResult {
    None,
    Neutral,
    Pass,
    Fail,
    SoftFail,
    TempError,
    PermError,
}

impl SpfResult {
    pub fn as_str(self) -> &'static str {
        match self {
            SpfResult::None => "none",
            SpfResult::Neutral => "neutral",
            SpfResult::Pass => "pass",
            SpfResult::Fail => "fail",
            SpfResult::SoftFail => "softfail",
            SpfResult::TempError => "temperror",
            SpfResult::PermError => "permerror",
        }
    }
}

impl std::fmt::Display for SpfResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The arguments of `check_host()` (§4.1) and what the macros need besides.
#[derive(Debug, Clone, Copy)]
pub struct Params<'a> {
    /// The client address; an IPv4-mapped IPv6 address counts as IPv4 (§5).
    pub ip: IpAddr,
    /// The domain whose record is checked first.
    pub domain: &'a str,
    /// `local@domain`; an empty local-part is `postmaster` (§4.3).
    pub sender: &'a str,
    /// The HELO/EHLO argument as given (`%{h}`).
    pub helo: &'a str,
    /// Our own host name (`%{r}` in explanations).
    pub receiver: &'a str,
    /// Seconds since the epoch (`%{t}` in explanations).
    pub timestamp: u64,
}

/// What `check_host()` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpfOutcome {
    pub result: SpfResult,
    /// The domain's `exp=` text, for a `fail` whose record has one that resolved.
    pub explanation: Option<String>,
    /// Why: the directive that matched, or the error, for logs.
    pub reason: String,
}

/// At most this many terms that query DNS, in all records one check evaluates.
pub const MAX_DNS_TERMS: usize = 10;
/// At most this many lookups that find nothing.
pub const MAX_VOID_LOOKUPS: usize = 2;
/// At most this many MX names (more is a `permerror`) or PTR names (the rest ignored).
pub const MAX_NAMES: usize = 10;

/// Runs `check_host()`. A domain that is not a valid multi-label domain name (an
/// address literal, an empty or over-long label) has no record: `none` (§4.3).
pub async fn check_host<D: SpfDns>(dns: &D, p: &Params<'_>) -> SpfOutcome {
    if !is_valid_domain(p.domain) {
        return SpfOutcome {
            result: SpfResult::None,
            explanation: None,
            reason: format!("{:?} is not a domain name", p.domain),
        };
    }
    let (local, sender_domain) = match p.sender.rsplit_once('@') {
        Some(("", d)) => ("postmaster", d),
        Some((l, d)) => (l, d),
        None => ("postmaster", p.domain),
    };
    let mut ev = Evaluator {
        dns,
        ip: p.ip.to_canonical(),
        local,
        sender_domain,
        helo: p.helo,
        receiver: p.receiver,
        timestamp: p.timestamp,
        dns_terms: 0,
        voids: 0,
    };
    match ev.evaluate(p.domain.to_owned()).await {
        Ok(v) => {
            let explanation = match (&v.result, &v.exp) {
                (SpfResult::Fail, Some((spec, domain))) => ev.explain(spec, domain).await,
                _ => None,
            };
            SpfOutcome {
                result: v.result,
                explanation,
                reason: v.why,
            }
        }
        Err(Abort::Temp(why)) => SpfOutcome {
            result: SpfResult::TempError,
            explanation: None,
            reason: why,
        },
        Err(Abort::Perm(why)) => SpfOutcome {
            result: SpfResult::PermError,
            explanation: None,
            reason: why,
        },
    }
}

/// A name `check_host()` can start from: a multi-label domain name whose labels are 1
/// to 63 octets, at most 253 in all, not an address literal.
pub fn is_valid_domain(domain: &str) -> bool {
    let d = domain.strip_suffix('.').unwrap_or(domain);
    d.contains('.')
        && !d.starts_with('[')
        && d.parse::<IpAddr>().is_err()
        && macros::query_name(d) == Some(d)
}

/// Ends evaluation: a `temperror` or a `permerror`, with the reason.
enum Abort {
    Temp(String),
    Perm(String),
}

/// The result of one record, and the `exp=` that explains it if it stays a `fail`.
struct Verdict {
    result: SpfResult,
    why: String,
    exp: Option<(DomainSpec, String)>,
}

type Step<'s> = Pin<Box<dyn Future<Output = Result<Verdict, Abort>> + Send + 's>>;

struct Evaluator<'a, D> {
    dns: &'a D,
    ip: IpAddr,
    local: &'a str,
    sender_domain: &'a str,
    helo: &'a str,
    receiver: &'a str,
    timestamp: u64,
    dns_terms: usize,
    voids: usize,
}

impl<'a, D: SpfDns> Evaluator<'a, D> {
    /// One record: its directives left to right, then `redirect=` (§4.6, §6.1).
    fn evaluate(&mut self, domain: String) -> Step<'_> {
        Box::pin(async move {
            let Some(record) = self.fetch_record(&domain).await? else {
                return Ok(Verdict {
                    result: SpfResult::None,
                    why: format!("no SPF record at {domain}"),
                    exp: None,
                });
            };
            for d in record.directives() {
                if self.matches(&d.mechanism, &domain).await? {
                    let result = match d.qualifier {
                        Qualifier::Pass => SpfResult::Pass,
                        Qualifier::Fail => SpfResult::Fail,
                        Qualifier::SoftFail => SpfResult::SoftFail,
                        Qualifier::Neutral => SpfResult::Neutral,
                    };
                    let exp = (result == SpfResult::Fail)
                        .then(|| record.explanation())
                        .flatten()
                        .map(|e| (e.clone(), domain.clone()));
                    return Ok(Verdict {
                        result,
                        why: format!("{domain}: matched {d}"),
                        exp,
                    });
                }
            }
            match record.redirect() {
                Some(target) if !record.has_all() => self.redirect(target, &domain).await,
                _ => Ok(Verdict {
                    result: SpfResult::Neutral,
                    why: format!("{domain}: no mechanism matched"),
                    exp: None,
                }),
            }
        })
    }

    /// The target's result replaces ours, its `exp=` too; no record there is a
    /// `permerror` (§6.1).
    async fn redirect(&mut self, target: &DomainSpec, domain: &str) -> Result<Verdict, Abort> {
        self.count_dns_term()?;
        let Some(name) = self.target_name(target, domain).await else {
            return Err(Abort::Perm(format!(
                "{domain}: redirect={target} is not a valid domain name"
            )));
        };
        let v = self.evaluate(name.clone()).await?;
        if v.result == SpfResult::None {
            return Err(Abort::Perm(format!(
                "{domain}: redirect={name} has no SPF record"
            )));
        }
        Ok(v)
    }

    /// The one SPF record at `domain`: `None` if there is none; several are a
    /// `permerror` (§4.5), so is a record that does not parse (§4.6).
    async fn fetch_record(&self, domain: &str) -> Result<Option<Record>, Abort> {
        let txts = match self.dns.txt(domain).await {
            Answer::Records(t) => t,
            Answer::NoData | Answer::NxDomain => return Ok(None),
            Answer::ServFail | Answer::Timeout => {
                return Err(Abort::Temp(format!("TXT lookup of {domain} failed")));
            }
        };
        let mut spf = txts.iter().filter(|t| is_spf_record(t));
        let Some(text) = spf.next() else {
            return Ok(None);
        };
        if spf.next().is_some() {
            return Err(Abort::Perm(format!("{domain}: more than one SPF record")));
        }
        Record::parse(&String::from_utf8_lossy(text))
            .map(Some)
            .map_err(|e| Abort::Perm(format!("{domain}: {e}")))
    }

    async fn matches(&mut self, m: &Mechanism, domain: &str) -> Result<bool, Abort> {
        match m {
            Mechanism::All => Ok(true),
            Mechanism::Ip4 { network, prefix } => {
                Ok(matches!(self.ip, IpAddr::V4(ip) if in_v4(ip, *network, *prefix)))
            }
            Mechanism::Ip6 { network, prefix } => {
                Ok(matches!(self.ip, IpAddr::V6(ip) if in_v6(ip, *network, *prefix)))
            }
            Mechanism::A { domain: spec, cidr } => {
                self.count_dns_term()?;
                match self.name_or(spec.as_ref(), domain).await {
                    Some(name) => self.address_matches(&name, cidr.v4, cidr.v6, true).await,
                    None => self.void().map(|()| false),
                }
            }
            Mechanism::Mx { domain: spec, cidr } => {
                self.count_dns_term()?;
                match self.name_or(spec.as_ref(), domain).await {
                    Some(name) => self.mx_matches(&name, cidr.v4, cidr.v6).await,
                    None => self.void().map(|()| false),
                }
            }
            Mechanism::Ptr(spec) => {
                self.count_dns_term()?;
                match self.name_or(spec.as_ref(), domain).await {
                    Some(target) => Ok(self.ptr_matches(&target).await?),
                    None => Ok(false),
                }
            }
            Mechanism::Exists(spec) => {
                self.count_dns_term()?;
                let Some(name) = self.target_name(spec, domain).await else {
                    return self.void().map(|()| false);
                };
                match self.dns.a(&name).await {
                    Answer::Records(_) => Ok(true),
                    Answer::NoData | Answer::NxDomain => self.void().map(|()| false),
                    Answer::ServFail | Answer::Timeout => {
                        Err(Abort::Temp(format!("exists: A lookup of {name} failed")))
                    }
                }
            }
            Mechanism::Include(spec) => {
                self.count_dns_term()?;
                let Some(name) = self.target_name(spec, domain).await else {
                    return Err(Abort::Perm(format!(
                        "{domain}: include:{spec} is not a valid domain name"
                    )));
                };
                let v = self.evaluate(name.clone()).await?;
                match v.result {
                    SpfResult::Pass => Ok(true),
                    SpfResult::None => Err(Abort::Perm(format!(
                        "{domain}: include:{name} has no SPF record"
                    ))),
                    _ => Ok(false),
                }
            }
        }
    }

    /// `a`: the client address within the prefix of any A (IPv4 client) or AAAA (IPv6
    /// client) record of `name`. For `mx` hosts (`count_void == false`) an empty answer
    /// is not a void lookup: the void limit is about terms.
    async fn address_matches(
        &mut self,
        name: &str,
        v4: u8,
        v6: u8,
        count_void: bool,
    ) -> Result<bool, Abort> {
        let found = match self.ip {
            IpAddr::V4(ip) => self
                .dns
                .a(name)
                .await
                .map_records(|addrs| addrs.iter().any(|a| in_v4(ip, *a, v4))),
            IpAddr::V6(ip) => self
                .dns
                .aaaa(name)
                .await
                .map_records(|addrs| addrs.iter().any(|a| in_v6(ip, *a, v6))),
        };
        match found {
            Answer::Records(m) => Ok(m),
            Answer::NoData | Answer::NxDomain if count_void => self.void().map(|()| false),
            Answer::NoData | Answer::NxDomain => Ok(false),
            Answer::ServFail | Answer::Timeout => {
                Err(Abort::Temp(format!("address lookup of {name} failed")))
            }
        }
    }

    /// `mx`: the addresses of each MX name (§5.4); more than 10 names is a `permerror`
    /// (§4.6.4), a null MX (`.`) has no address.
    async fn mx_matches(&mut self, name: &str, v4: u8, v6: u8) -> Result<bool, Abort> {
        let mut hosts = match self.dns.mx(name).await {
            Answer::Records(h) => h,
            Answer::NoData | Answer::NxDomain => return self.void().map(|()| false),
            Answer::ServFail | Answer::Timeout => {
                return Err(Abort::Temp(format!("MX lookup of {name} failed")));
            }
        };
        if hosts.len() > MAX_NAMES {
            return Err(Abort::Perm(format!(
                "mx: {name} has more than {MAX_NAMES} MX records"
            )));
        }
        hosts.sort_by_key(|(pref, _)| *pref);
        for (_, host) in hosts {
            let Some(host) = macros::query_name(&host).map(str::to_owned) else {
                continue;
            };
            if self.address_matches(&host, v4, v6, false).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// `ptr`: a validated PTR name equal to `target` or under it (§5.5). A failed PTR
    /// lookup does not match; an empty one is a void lookup.
    async fn ptr_matches(&mut self, target: &str) -> Result<bool, Abort> {
        let target = target.to_ascii_lowercase();
        let names = match self.dns.ptr(self.ip).await {
            Answer::Records(n) => n,
            Answer::NoData | Answer::NxDomain => return self.void().map(|()| false),
            Answer::ServFail | Answer::Timeout => return Ok(false),
        };
        for name in names.iter().take(MAX_NAMES) {
            if is_within(name, &target) && self.validates(name).await {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// A PTR name is validated when one of its addresses is the client's; a lookup
    /// error just skips the name (§5.5).
    async fn validates(&self, name: &str) -> bool {
        let Some(name) = macros::query_name(name) else {
            return false;
        };
        match self.ip {
            IpAddr::V4(ip) => {
                matches!(self.dns.a(name).await, Answer::Records(a) if a.contains(&ip))
            }
            IpAddr::V6(ip) => {
                matches!(self.dns.aaaa(name).await, Answer::Records(a) if a.contains(&ip))
            }
        }
    }

    /// `%{p}`: a validated name of the client, preferring `domain` itself, then a name
    /// under it, then any (§7.3). Its lookups count against no limit.
    async fn validated_name(&self, domain: &str) -> Option<String> {
        let Answer::Records(names) = self.dns.ptr(self.ip).await else {
            return None;
        };
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let mut names: Vec<&String> = names.iter().take(MAX_NAMES).collect();
        names.sort_by_key(|n| {
            let n = n.trim_end_matches('.').to_ascii_lowercase();
            if n == domain {
                0
            } else if is_within(&n, &domain) {
                1
            } else {
                2
            }
        });
        for name in names {
            if self.validates(name).await {
                return Some(name.trim_end_matches('.').to_owned());
            }
        }
        None
    }

    /// The explanation of a `fail`: the one TXT record at the expanded `exp=` name,
    /// itself macro-expanded; any problem means no explanation (§6.2).
    async fn explain(&self, spec: &DomainSpec, domain: &str) -> Option<String> {
        let name = self.target_name(spec, domain).await?;
        let Answer::Records(txts) = self.dns.txt(&name).await else {
            return None;
        };
        let [text] = txts.as_slice() else {
            return None;
        };
        let text = std::str::from_utf8(text).ok()?;
        let m = MacroString::parse(text, Context::Explanation).ok()?;
        let ptr = self.ptr_for(&m, domain).await;
        Some(m.expand_text(&self.env(domain, ptr.as_deref())))
    }

    /// The name a mechanism's domain-spec expands to, or `domain` without one.
    async fn name_or(&self, spec: Option<&DomainSpec>, domain: &str) -> Option<String> {
        match spec {
            Some(s) => self.target_name(s, domain).await,
            None => Some(domain.trim_end_matches('.').to_owned()),
        }
    }

    /// A domain-spec expanded into a name to query; `None` for one that cannot exist.
    async fn target_name(&self, spec: &DomainSpec, domain: &str) -> Option<String> {
        let ptr = self.ptr_for(&spec.0, domain).await;
        let expanded = spec.0.expand_name(&self.env(domain, ptr.as_deref()));
        macros::query_name(&expanded).map(str::to_owned)
    }

    /// The validated name for `%{p}`, looked up only when `m` uses it.
    async fn ptr_for(&self, m: &MacroString, domain: &str) -> Option<String> {
        if m.uses_ptr() {
            self.validated_name(domain).await
        } else {
            None
        }
    }

    fn env<'e>(&'e self, domain: &'e str, ptr: Option<&'e str>) -> MacroEnv<'e> {
        MacroEnv {
            local: self.local,
            sender_domain: self.sender_domain,
            domain,
            ip: self.ip,
            helo: self.helo,
            ptr,
            receiver: self.receiver,
            timestamp: self.timestamp,
        }
    }

    fn count_dns_term(&mut self) -> Result<(), Abort> {
        self.dns_terms += 1;
        if self.dns_terms > MAX_DNS_TERMS {
            return Err(Abort::Perm(format!(
                "more than {MAX_DNS_TERMS} DNS-querying terms"
            )));
        }
        Ok(())
    }

    fn void(&mut self) -> Result<(), Abort> {
        self.voids += 1;
        if self.voids > MAX_VOID_LOOKUPS {
            return Err(Abort::Perm(format!(
                "more than {MAX_VOID_LOOKUPS} void lookups"
            )));
        }
        Ok(())
    }
}

trait MapRecords<T> {
    fn map_records<U>(self, f: impl FnOnce(&T) -> U) -> Answer<U>;
}

impl<T> MapRecords<T> for Answer<T> {
    fn map_records<U>(self, f: impl FnOnce(&T) -> U) -> Answer<U> {
        match self {
            Answer::Records(r) => Answer::Records(f(&r)),
            Answer::NoData => Answer::NoData,
            Answer::NxDomain => Answer::NxDomain,
            Answer::ServFail => Answer::ServFail,
            Answer::Timeout => Answer::Timeout,
        }
    }
}

/// `name` is `target` or a name under it (case-insensitive, trailing dots ignored).
fn is_within(name: &str, target: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let target = target.trim_end_matches('.').to_ascii_lowercase();
    name == target
        || name
            .strip_suffix(target.as_str())
            .is_some_and(|head| head.ends_with('.'))
}

/// `ip` within `network/prefix`; `/0` matches everything (no shift overflow).
fn in_v4(ip: Ipv4Addr, network: Ipv4Addr, prefix: u8) -> bool {
    let shift = 32u32.saturating_sub(u32::from(prefix));
    let mask = u32::MAX.checked_shl(shift).unwrap_or(0);
    (u32::from(ip) ^ u32::from(network)) & mask == 0
}

fn in_v6(ip: Ipv6Addr, network: Ipv6Addr, prefix: u8) -> bool {
    let shift = 128u32.saturating_sub(u32::from(prefix));
    let mask = u128::MAX.checked_shl(shift).unwrap_or(0);
    (u128::from(ip) ^ u128::from(network)) & mask == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// DNS data in memory: `(name, type, value)` rows; a name listed under `timeout`
    /// times out for every type. Records every query it gets.
    #[derive(Default)]
    struct MemDns {
        rows: Vec<(String, &'static str, String)>,
        timeout: Vec<String>,
        queries: Mutex<Vec<String>>,
    }

    impl MemDns {
        fn new(rows: &[(&str, &'static str, &str)]) -> MemDns {
            MemDns {
                rows: rows
                    .iter()
                    .map(|(n, t, v)| (n.to_ascii_lowercase(), *t, (*v).to_owned()))
                    .collect(),
                ..MemDns::default()
            }
        }

        fn timing_out(mut self, name: &str) -> MemDns {
            self.timeout.push(name.to_owned());
            self
        }

        fn lookup<T>(&self, name: &str, rtype: &str, f: impl Fn(&str) -> T) -> Answer<Vec<T>> {
            let name = name.to_ascii_lowercase();
            self.queries.lock().unwrap().push(format!("{rtype} {name}"));
            if self.timeout.contains(&name) {
                return Answer::Timeout;
            }
            let found: Vec<T> = self
                .rows
                .iter()
                .filter(|(n, t, _)| *n == name && *t == rtype)
                .map(|(_, _, v)| f(v))
                .collect();
            if !found.is_empty() {
                Answer::Records(found)
            } else if self.rows.iter().any(|(n, _, _)| *n == name) {
                Answer::NoData
            } else {
                Answer::NxDomain
            }
        }

        fn queried(&self, q: &str) -> usize {
            self.queries
                .lock()
                .unwrap()
                .iter()
                .filter(|x| *x == q)
                .count()
        }
    }

    impl SpfDns for MemDns {
        async fn txt(&self, name: &str) -> Answer<Vec<Vec<u8>>> {
            self.lookup(name, "TXT", |v| v.as_bytes().to_vec())
        }
        async fn a(&self, name: &str) -> Answer<Vec<Ipv4Addr>> {
            self.lookup(name, "A", |v| v.parse().unwrap())
        }
        async fn aaaa(&self, name: &str) -> Answer<Vec<Ipv6Addr>> {
            self.lookup(name, "AAAA", |v| v.parse().unwrap())
        }
        async fn mx(&self, name: &str) -> Answer<Vec<(u16, String)>> {
            self.lookup(name, "MX", |v| {
                let (p, h) = v.split_once(' ').unwrap();
                (p.parse().unwrap(), h.to_owned())
            })
        }
        async fn ptr(&self, ip: IpAddr) -> Answer<Vec<String>> {
            self.lookup(&ip.to_string(), "PTR", str::to_owned)
        }
    }

    fn run(dns: &MemDns, ip: &str, sender: &str) -> SpfOutcome {
        let domain = sender.rsplit_once('@').unwrap().1;
        let p = Params {
            ip: ip.parse().unwrap(),
            domain,
            sender,
            helo: "mail.example.org",
            receiver: "mx.example.net",
            timestamp: 0,
        };
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(check_host(dns, &p))
    }

    fn result(dns: &MemDns, ip: &str, sender: &str) -> SpfResult {
        run(dns, ip, sender).result
    }

    #[test]
    fn directives_match_left_to_right() {
        let dns = MemDns::new(&[
            (
                "example.com",
                "TXT",
                "v=spf1 ip4:192.0.2.0/24 ~ip6:2001:db8::/32 a:mail.example.com -all",
            ),
            ("mail.example.com", "A", "198.51.100.7"),
        ]);
        assert_eq!(result(&dns, "192.0.2.99", "a@example.com"), SpfResult::Pass);
        assert_eq!(
            result(&dns, "2001:db8::5", "a@example.com"),
            SpfResult::SoftFail
        );
        assert_eq!(
            result(&dns, "198.51.100.7", "a@example.com"),
            SpfResult::Pass
        );
        assert_eq!(
            result(&dns, "203.0.113.1", "a@example.com"),
            SpfResult::Fail
        );
        let out = run(&dns, "203.0.113.1", "a@example.com");
        assert_eq!(out.reason, "example.com: matched -all");
    }

    #[test]
    fn no_record_is_none_and_several_are_a_permerror() {
        let dns = MemDns::new(&[
            ("other.example", "TXT", "hello"),
            ("two.example", "TXT", "v=spf1 -all"),
            ("two.example", "TXT", "V=SPF1 +all"),
            ("bad.example", "TXT", "v=spf1 a:abc.123"),
        ]);
        assert_eq!(result(&dns, "192.0.2.1", "a@nx.example"), SpfResult::None);
        assert_eq!(
            result(&dns, "192.0.2.1", "a@other.example"),
            SpfResult::None
        );
        assert_eq!(
            result(&dns, "192.0.2.1", "a@two.example"),
            SpfResult::PermError
        );
        assert_eq!(
            result(&dns, "192.0.2.1", "a@bad.example"),
            SpfResult::PermError
        );
        // Not a domain name at all: no lookup.
        assert_eq!(result(&dns, "192.0.2.1", "a@[192.0.2.1]"), SpfResult::None);
        assert_eq!(result(&dns, "192.0.2.1", "a@single"), SpfResult::None);
        assert_eq!(result(&dns, "192.0.2.1", "a@x..example"), SpfResult::None);
        assert_eq!(dns.queried("TXT [192.0.2.1]"), 0);
    }

    #[test]
    fn ten_dns_terms_at_most() {
        let ten = "v=spf1 a a a a a a a a a a ip4:192.0.2.1 -all";
        let eleven = "v=spf1 a a a a a a a a a a a ip4:192.0.2.1 -all";
        let dns = MemDns::new(&[
            ("ten.example", "TXT", ten),
            ("ten.example", "A", "198.51.100.1"),
            ("eleven.example", "TXT", eleven),
            ("eleven.example", "A", "198.51.100.1"),
            ("inc.example", "TXT", "v=spf1 include:ten.example"),
            ("loop.example", "TXT", "v=spf1 include:loop.example"),
            ("redir.example", "TXT", "v=spf1 redirect=redir.example"),
        ]);
        assert_eq!(result(&dns, "192.0.2.1", "a@ten.example"), SpfResult::Pass);
        assert_eq!(
            result(&dns, "192.0.2.1", "a@eleven.example"),
            SpfResult::PermError
        );
        // The include is the first term, so the tenth `a` in ten.example is the eleventh.
        assert_eq!(
            result(&dns, "192.0.2.1", "a@inc.example"),
            SpfResult::PermError
        );
        assert_eq!(
            result(&dns, "192.0.2.1", "a@loop.example"),
            SpfResult::PermError
        );
        let out = run(&dns, "192.0.2.1", "a@redir.example");
        assert_eq!(out.result, SpfResult::PermError);
        assert_eq!(out.reason, "more than 10 DNS-querying terms");
    }

    #[test]
    fn two_void_lookups_at_most_and_exp_is_not_one() {
        let dns = MemDns::new(&[
            (
                "two.example",
                "TXT",
                "v=spf1 a:nx1.example mx:nx2.example ?all",
            ),
            (
                "three.example",
                "TXT",
                "v=spf1 a:nx1.example mx:nx2.example exists:nx3.example ?all",
            ),
            (
                "exp.example",
                "TXT",
                "v=spf1 a:nx1.example a:nx2.example exp=nx3.example -all",
            ),
            ("empty.example", "TXT", "v=spf1 a a mx ?all"),
        ]);
        assert_eq!(
            result(&dns, "192.0.2.1", "a@two.example"),
            SpfResult::Neutral
        );
        assert_eq!(
            result(&dns, "192.0.2.1", "a@three.example"),
            SpfResult::PermError
        );
        assert_eq!(result(&dns, "192.0.2.1", "a@exp.example"), SpfResult::Fail);
        assert_eq!(dns.queried("TXT nx3.example"), 1);
        // No-data answers are void lookups too.
        assert_eq!(
            result(&dns, "192.0.2.1", "a@empty.example"),
            SpfResult::PermError
        );
    }

    #[test]
    fn include_semantics() {
        let dns = MemDns::new(&[
            (
                "top.example",
                "TXT",
                "v=spf1 include:pass.example include:fail.example ~all",
            ),
            ("pass.example", "TXT", "v=spf1 ip4:192.0.2.1 -all"),
            (
                "fail.example",
                "TXT",
                "v=spf1 ip4:192.0.2.2 -all exp=why.example",
            ),
            ("why.example", "TXT", "not this one"),
            ("none.example", "TXT", "v=spf1 include:nothing.example -all"),
            ("temp.example", "TXT", "v=spf1 include:slow.example -all"),
            ("perm.example", "TXT", "v=spf1 include:broken.example -all"),
            ("broken.example", "TXT", "v=spf1 include"),
        ])
        .timing_out("slow.example");
        assert_eq!(result(&dns, "192.0.2.1", "a@top.example"), SpfResult::Pass);
        let out = run(&dns, "192.0.2.9", "a@top.example");
        assert_eq!(out.result, SpfResult::SoftFail);
        assert_eq!(out.explanation, None);
        assert_eq!(
            result(&dns, "192.0.2.1", "a@none.example"),
            SpfResult::PermError
        );
        assert_eq!(
            result(&dns, "192.0.2.1", "a@temp.example"),
            SpfResult::TempError
        );
        assert_eq!(
            result(&dns, "192.0.2.1", "a@perm.example"),
            SpfResult::PermError
        );
    }

    #[test]
    fn redirect_semantics() {
        let dns = MemDns::new(&[
            (
                "r.example",
                "TXT",
                "v=spf1 ip4:192.0.2.1 exp=mine.example redirect=target.example",
            ),
            ("mine.example", "TXT", "from r"),
            ("target.example", "TXT", "v=spf1 a -all exp=theirs.example"),
            ("target.example", "A", "192.0.2.2"),
            ("theirs.example", "TXT", "%{d} says no to %{i}"),
            (
                "withall.example",
                "TXT",
                "v=spf1 redirect=target.example ?all",
            ),
            ("nowhere.example", "TXT", "v=spf1 redirect=nothing.example"),
        ]);
        assert_eq!(result(&dns, "192.0.2.1", "a@r.example"), SpfResult::Pass);
        // `a` of the target is the target's own name.
        assert_eq!(result(&dns, "192.0.2.2", "a@r.example"), SpfResult::Pass);
        let out = run(&dns, "192.0.2.3", "a@r.example");
        assert_eq!(out.result, SpfResult::Fail);
        assert_eq!(
            out.explanation.as_deref(),
            Some("target.example says no to 192.0.2.3")
        );
        assert_eq!(
            result(&dns, "192.0.2.3", "a@withall.example"),
            SpfResult::Neutral
        );
        assert_eq!(dns.queried("TXT target.example"), 2);
        assert_eq!(
            result(&dns, "192.0.2.3", "a@nowhere.example"),
            SpfResult::PermError
        );
    }

    #[test]
    fn exp_is_fetched_once_and_only_for_a_fail() {
        let dns = MemDns::new(&[
            ("e.example", "TXT", "v=spf1 ip4:192.0.2.1 -all exp=exp.%{d}"),
            (
                "exp.e.example",
                "TXT",
                "%{l} from %{c} at %{r}: see http://x/%{L}",
            ),
            ("bad.example", "TXT", "v=spf1 -all exp=badexp.example"),
            ("badexp.example", "TXT", "The %{x}-files"),
            ("two.example", "TXT", "v=spf1 -all exp=twoexp.example"),
            ("twoexp.example", "TXT", "one"),
            ("twoexp.example", "TXT", "two"),
        ]);
        assert_eq!(result(&dns, "192.0.2.1", "j&j@e.example"), SpfResult::Pass);
        assert_eq!(dns.queried("TXT exp.e.example"), 0);
        let out = run(&dns, "2001:db8::1", "j&j@e.example");
        assert_eq!(out.result, SpfResult::Fail);
        assert_eq!(
            out.explanation.as_deref(),
            Some("j&j from 2001:db8::1 at mx.example.net: see http://x/j%26j")
        );
        assert_eq!(dns.queried("TXT exp.e.example"), 1);
        assert_eq!(run(&dns, "192.0.2.1", "a@bad.example").explanation, None);
        assert_eq!(run(&dns, "192.0.2.1", "a@two.example").explanation, None);
        // An empty local-part is postmaster.
        let dns = MemDns::new(&[
            ("e.example", "TXT", "v=spf1 -all exp=x.example"),
            ("x.example", "TXT", "%{l}"),
        ]);
        assert_eq!(
            run(&dns, "192.0.2.1", "@e.example").explanation.as_deref(),
            Some("postmaster")
        );
    }

    #[test]
    fn mx_has_a_limit_of_ten_names_and_null_mx_matches_nothing() {
        let mut rows = vec![("big.example", "TXT", "v=spf1 mx -all")];
        let prefs: Vec<String> = (0..11).map(|i| format!("{i} mail.example")).collect();
        for p in &prefs {
            rows.push(("big.example", "MX", p.as_str()));
        }
        rows.extend([
            ("mail.example", "A", "192.0.2.1"),
            ("ok.example", "TXT", "v=spf1 mx/24 -all"),
            ("ok.example", "MX", "20 nx.example"),
            ("ok.example", "MX", "10 mail.example"),
            ("null.example", "TXT", "v=spf1 mx ?all"),
            ("null.example", "MX", "0 "),
        ]);
        let dns = MemDns::new(&rows);
        assert_eq!(
            result(&dns, "192.0.2.1", "a@big.example"),
            SpfResult::PermError
        );
        assert_eq!(result(&dns, "192.0.2.200", "a@ok.example"), SpfResult::Pass);
        assert_eq!(
            result(&dns, "198.51.100.1", "a@ok.example"),
            SpfResult::Fail
        );
        assert_eq!(
            result(&dns, "192.0.2.1", "a@null.example"),
            SpfResult::Neutral
        );
    }

    #[test]
    fn ptr_uses_validated_names_and_at_most_ten() {
        let mut rows = vec![
            ("p.example", "TXT", "v=spf1 ptr -all"),
            ("t.example", "TXT", "v=spf1 ptr:example.com -all"),
            ("192.0.2.1", "PTR", "fake.p.example"),
            ("192.0.2.1", "PTR", "mail.example.com"),
            ("mail.example.com", "A", "192.0.2.1"),
            ("fake.p.example", "A", "198.51.100.1"),
        ];
        let names: Vec<String> = (0..10).map(|i| format!("n{i}.example")).collect();
        for n in &names {
            rows.push(("192.0.2.2", "PTR", n.as_str()));
        }
        rows.push(("192.0.2.2", "PTR", "host.p.example"));
        rows.push(("host.p.example", "A", "192.0.2.2"));
        let dns = MemDns::new(&rows).timing_out("192.0.2.3");
        assert_eq!(result(&dns, "192.0.2.1", "a@p.example"), SpfResult::Fail);
        assert_eq!(result(&dns, "192.0.2.1", "a@t.example"), SpfResult::Pass);
        // The eleventh name is never looked at.
        assert_eq!(result(&dns, "192.0.2.2", "a@p.example"), SpfResult::Fail);
        assert_eq!(dns.queried("A host.p.example"), 0);
        // A failing PTR lookup does not match (no temperror).
        assert_eq!(result(&dns, "192.0.2.3", "a@p.example"), SpfResult::Fail);
    }

    #[test]
    fn p_macro_prefers_the_domain() {
        let dns = MemDns::new(&[
            ("e7.example", "TXT", "v=spf1 exists:%{p}.ok.example -all"),
            ("192.0.2.1", "PTR", "mx.other.example"),
            ("192.0.2.1", "PTR", "mx.e7.example"),
            ("mx.other.example", "A", "192.0.2.1"),
            ("mx.e7.example", "A", "192.0.2.1"),
            ("mx.e7.example.ok.example", "A", "127.0.0.2"),
        ]);
        assert_eq!(result(&dns, "192.0.2.1", "a@e7.example"), SpfResult::Pass);
        // No validated name: "unknown".
        let dns = MemDns::new(&[
            ("e.example", "TXT", "v=spf1 -all exp=x.example"),
            ("x.example", "TXT", "connect from %{p}"),
        ]);
        assert_eq!(
            run(&dns, "192.0.2.1", "a@e.example").explanation.as_deref(),
            Some("connect from unknown")
        );
    }

    #[test]
    fn ipv4_mapped_clients_are_ipv4_and_zero_prefixes_match_all() {
        let dns = MemDns::new(&[
            (
                "m.example",
                "TXT",
                "v=spf1 -ip4:192.0.2.1 ip6:::ffff:192.0.2.1 ?all",
            ),
            ("zero.example", "TXT", "v=spf1 ip4:0.0.0.0/0 ip6:::/0 -all"),
            ("v6only.example", "TXT", "v=spf1 a//0 -all"),
            ("v6only.example", "AAAA", "2001:db8::1"),
        ]);
        assert_eq!(
            result(&dns, "::ffff:192.0.2.1", "a@m.example"),
            SpfResult::Fail
        );
        assert_eq!(
            result(&dns, "203.0.113.9", "a@zero.example"),
            SpfResult::Pass
        );
        assert_eq!(
            result(&dns, "2001:db8:ffff::9", "a@zero.example"),
            SpfResult::Pass
        );
        assert_eq!(
            result(&dns, "::ffff:192.0.2.1", "a@v6only.example"),
            SpfResult::Fail
        );
        assert_eq!(
            result(&dns, "2001:db8:1::1", "a@v6only.example"),
            SpfResult::Pass
        );
        assert!(in_v4(
            "1.2.3.4".parse().unwrap(),
            "0.0.0.0".parse().unwrap(),
            0
        ));
        assert!(!in_v4(
            "1.2.3.4".parse().unwrap(),
            "1.2.3.5".parse().unwrap(),
            32
        ));
        assert!(in_v6("::1".parse().unwrap(), "ffff::".parse().unwrap(), 0));
    }

    #[test]
    fn dns_trouble_is_a_temperror() {
        let dns = MemDns::new(&[
            ("a.example", "TXT", "v=spf1 a:slow.example -all"),
            ("m.example", "TXT", "v=spf1 mx:slow.example -all"),
            ("x.example", "TXT", "v=spf1 exists:slow.example -all"),
            ("e.example", "TXT", "v=spf1 -all exp=slow.example"),
        ])
        .timing_out("slow.example")
        .timing_out("top.example");
        for d in ["a", "m", "x", "top"] {
            let sender = format!("u@{d}.example");
            assert_eq!(
                result(&dns, "192.0.2.1", &sender),
                SpfResult::TempError,
                "{d}"
            );
        }
        // An exp= that times out is just no explanation.
        let out = run(&dns, "192.0.2.1", "u@e.example");
        assert_eq!((out.result, out.explanation), (SpfResult::Fail, None));
    }

    #[test]
    fn invalid_target_names_do_not_exist() {
        let long = "a".repeat(64);
        let rec = format!("v=spf1 a:mail.example...com a:{long}.example.com ?all");
        let dns = MemDns::new(&[
            ("t.example", "TXT", rec.as_str()),
            ("i.example", "TXT", "v=spf1 include:x..example"),
        ]);
        assert_eq!(result(&dns, "192.0.2.1", "u@t.example"), SpfResult::Neutral);
        assert_eq!(
            result(&dns, "192.0.2.1", "u@i.example"),
            SpfResult::PermError
        );
    }
}
