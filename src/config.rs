//! The YAML configuration file, its defaults, and command-line overrides.
//!
//! Every field has a default that serves, so `mxguard run` with no file works:
//! listen on `127.0.0.1:2525`, relay to `127.0.0.1:25`, rules in `./rules`, state in
//! `./state`. Limits mirror Postfix's own defaults where Postfix has one, so mxguard
//! never becomes the stricter (or the looser) hop by accident.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Name used in the banner, EHLO reply, Received headers and replies.
    pub hostname: String,
    /// Directory of rule files (`*.yaml`), loaded in file-name order.
    pub rules_dir: PathBuf,
    /// Directory for spool files and the embedded store.
    pub state_dir: PathBuf,
    pub listeners: Vec<ListenerConfig>,
    /// Upstream MTAs, tried in order (failover).
    pub upstreams: Vec<UpstreamConfig>,
    /// Warm upstream connections, each for one client session (`size: 0` turns it off).
    pub upstream_pool: UpstreamPoolConfig,
    pub limits: Limits,
    pub data: DataConfig,
    /// Address for the HTTP metrics and health endpoints (`/metrics`, `/healthz`, `/readyz`).
    pub metrics: Option<SocketAddr>,
    /// Serve the greylist admin endpoints (`GET /greylist`, `POST /greylist/allow`,
    /// `POST /greylist/purge`) on the `metrics` listener. They change state: enable them
    /// only with `metrics` bound to loopback or a management network.
    pub admin_endpoints: bool,
    /// How long SIGTERM waits for transactions in flight before exiting.
    #[serde(deserialize_with = "de_duration")]
    pub shutdown_grace: Duration,
    /// Where greylist and rate-limit state lives: `memory`, `file` (the default,
    /// `<state_dir>/mxguard.redb`), `{ file: PATH }` or `{ redis: "redis://host:port/db" }`
    /// (shared by every instance). `mxguard run --store URL` overrides it.
    pub store: crate::store::StoreConfig,
    /// The resolver every DNS check shares.
    pub dns: DnsConfig,
    /// SPF, DKIM, DMARC, ARC, DNS lists, reverse DNS and the Authentication-Results header.
    pub checks: ChecksConfig,
    /// Content filters (milters, rspamd over HTTP), in the order they run.
    pub filters: Vec<crate::filters::Filter>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            hostname: default_hostname(),
            rules_dir: PathBuf::from("rules"),
            state_dir: PathBuf::from("state"),
            listeners: vec![ListenerConfig::default()],
            upstreams: vec![UpstreamConfig::default()],
            upstream_pool: UpstreamPoolConfig::default(),
            limits: Limits::default(),
            data: DataConfig::default(),
            metrics: None,
            admin_endpoints: false,
            shutdown_grace: Duration::from_secs(30),
            store: crate::store::StoreConfig::default(),
            dns: DnsConfig::default(),
            checks: ChecksConfig::default(),
            filters: Vec::new(),
        }
    }
}

/// One listening socket and how it treats its clients.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerConfig {
    /// Shown in logs and metric labels.
    pub name: String,
    pub address: SocketAddr,
    /// Certificate chain and key (PEM); enables STARTTLS (or implicit TLS).
    pub tls: Option<TlsFiles>,
    /// TLS from the first byte (port 465 style) instead of STARTTLS.
    pub implicit_tls: bool,
    /// Expect a PROXY protocol header from trusted load balancers.
    pub proxy_protocol: Option<ProxyProtocolConfig>,
    /// `mx` (default): port 25, no AUTH. `submission`: mail clients (587/465); AUTH
    /// is offered after TLS and relayed to the upstream, and MAIL requires it.
    pub mode: ListenerMode,
    /// The milter macro `{daemon_name}` for sessions on this listener (Postfix's
    /// `milter_macro_daemon_name`, by default the host name). Signing milters key on it:
    /// OpenDKIM's `MacroList daemon_name|ORIGINATING` with `ORIGINATING` here on the
    /// submission listener.
    pub milter_daemon_name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerMode {
    #[default]
    Mx,
    Submission,
}

/// PROXY protocol settings of a listener behind an L4 load balancer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyProtocolConfig {
    /// Accept the v1 (text) header.
    pub v1: bool,
    /// Accept the v2 (binary) header.
    pub v2: bool,
    /// Peers that must send a header; anyone else is served as a direct client.
    pub trusted: Vec<IpNet>,
    /// How long to wait for the header.
    #[serde(deserialize_with = "de_duration")]
    pub timeout: Duration,
}

impl Default for ProxyProtocolConfig {
    fn default() -> Self {
        ProxyProtocolConfig {
            v1: true,
            v2: true,
            trusted: Vec::new(),
            timeout: Duration::from_secs(5),
        }
    }
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            name: "mx".into(),
            address: "127.0.0.1:2525".parse().expect("valid default address"),
            tls: None,
            implicit_tls: false,
            proxy_protocol: None,
            mode: ListenerMode::Mx,
            milter_daemon_name: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// How mxguard talks to one upstream MTA.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// `host:port`.
    pub address: String,
    /// `none` (default), `starttls` (use it when offered) or `require` (fail over if not offered).
    pub tls: UpstreamTls,
    /// Verify the upstream's certificate (against `ca_file`, or the system bundle).
    pub tls_verify: bool,
    /// CA bundle for verification; default `/etc/ssl/certs/ca-certificates.crt`.
    pub ca_file: Option<PathBuf>,
    /// Name to verify in the certificate; default the host part of `address`.
    pub tls_name: Option<String>,
    #[serde(deserialize_with = "de_duration")]
    pub connect_timeout: Duration,
    /// Deadline for each upstream reply (Postfix's `smtp_*_timeout` are 300 s).
    #[serde(deserialize_with = "de_duration")]
    pub command_timeout: Duration,
    /// Deadline for the reply after the final dot (Postfix `smtp_data_done_timeout` 600 s).
    #[serde(deserialize_with = "de_duration")]
    pub data_timeout: Duration,
    /// While a client is still sending a message, a NOOP goes upstream this often, so the
    /// upstream's idle timeout (Postfix `smtpd_timeout`, 300 s) never ends the waiting
    /// transaction of a slow, large message.
    #[serde(deserialize_with = "de_duration")]
    pub keepalive: Duration,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            address: "127.0.0.1:25".into(),
            tls: UpstreamTls::None,
            tls_verify: true,
            ca_file: None,
            tls_name: None,
            connect_timeout: Duration::from_secs(10),
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
            keepalive: Duration::from_secs(60),
        }
    }
}

/// Warm upstream connections: connected and greeted (EHLO, STARTTLS) ahead of time, so a
/// client's first MAIL does not wait for the upstream's handshake. Each serves exactly
/// one client session and is then closed: after XCLIENT an upstream connection belongs to
/// that client (Postfix refuses a second XCLIENT on it).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamPoolConfig {
    /// Idle connections kept ready for the first upstream that answers (0: no pool).
    #[serde(deserialize_with = "de_pool_size")]
    pub size: usize,
    /// An idle connection is closed (QUIT) after this long and replaced; keep it below
    /// the upstream's own idle timeout (Postfix `smtpd_timeout`, 300 s).
    #[serde(deserialize_with = "de_pool_max_idle")]
    pub max_idle: Duration,
}

/// The most warm connections one may ask for: each is an upstream smtpd process waiting.
pub const MAX_POOL_SIZE: usize = 100;

/// `upstream_pool.size`, refused at its place in the file when out of range.
fn de_pool_size<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let n = usize::deserialize(d)?;
    if n > MAX_POOL_SIZE {
        return Err(serde::de::Error::custom(format!(
            "size: {n} is more than {MAX_POOL_SIZE}"
        )));
    }
    Ok(n)
}

/// `upstream_pool.max_idle`, between a second and an hour (an upstream closes idle
/// connections long before that: Postfix after 300 s).
fn de_pool_max_idle<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let t = de_duration(d)?;
    if t < Duration::from_secs(1) || t > Duration::from_secs(3600) {
        return Err(serde::de::Error::custom(format!(
            "max_idle: {}s is not between 1s and 1h",
            t.as_secs_f64()
        )));
    }
    Ok(t)
}

impl Default for UpstreamPoolConfig {
    fn default() -> Self {
        UpstreamPoolConfig {
            size: 2,
            max_idle: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamTls {
    None,
    Starttls,
    Require,
}

/// Resource bounds. Postfix's defaults where it has one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest message accepted (advertised as SIZE, enforced on the real byte count).
    #[serde(deserialize_with = "de_size")]
    pub max_message_size: u64,
    /// Largest header section; a message over it is refused with `552 5.3.4`.
    #[serde(deserialize_with = "de_size")]
    pub max_header_size: u64,
    /// Recipients per transaction (`smtpd_recipient_limit`); the next gets `452 4.5.3`.
    pub max_recipients: usize,
    /// RCPTs beyond `max_recipients` that are only refused; each one after these also
    /// counts as an error, so `hard_error_limit` ends the session
    /// (`smtpd_recipient_overshoot_limit`).
    pub recipient_overshoot_limit: usize,
    /// Longest command line in octets including CRLF (`line_length_limit`).
    pub max_line_length: usize,
    /// Deadline for each command line, from the moment we wait for it to its CRLF:
    /// bytes dripped in one at a time do not extend it (`smtpd_timeout` together with
    /// `smtpd_per_record_deadline`).
    #[serde(deserialize_with = "de_duration")]
    pub command_timeout: Duration,
    /// Above this share of `max_sessions` open, the server is under stress and the
    /// `stress_*` limits apply (Postfix's stress-dependent `smtpd_timeout` and error
    /// limits). `100%` never.
    #[serde(deserialize_with = "de_percent")]
    pub stress_threshold: f64,
    /// `command_timeout` under stress.
    #[serde(deserialize_with = "de_duration")]
    pub stress_command_timeout: Duration,
    /// `hard_error_limit` under stress.
    pub stress_hard_error_limit: u32,
    /// Minimum DATA transfer rate in bytes/s (`smtpd_min_data_rate`).
    pub min_data_rate: u64,
    /// Concurrent sessions in total.
    pub max_sessions: usize,
    /// Concurrent sessions per client network (see `ipv4_prefix`/`ipv6_prefix`).
    pub max_sessions_per_network: usize,
    /// Networks not subject to `max_sessions_per_network` (Postfix exempts `$mynetworks`
    /// the same way). Default: loopback.
    pub exempt_networks: Vec<IpNet>,
    /// Prefix that groups IPv4 clients into one network.
    pub ipv4_prefix: u8,
    /// Prefix that groups IPv6 clients into one network.
    pub ipv6_prefix: u8,
    /// NOOP, RSET, VRFY, HELP and unknown commands per session (`smtpd_junk_command_limit`).
    pub junk_command_limit: u32,
    /// Errors after which the session is closed (`smtpd_hard_error_limit`).
    pub hard_error_limit: u32,
    /// Transactions per session.
    pub max_transactions: u32,
    /// Failed AUTH attempts per client network within `auth_failure_window`; beyond it
    /// `421 4.7.0` and close.
    pub auth_failures_per_network: u32,
    /// Failed AUTH attempts per user name from one client network within
    /// `auth_failure_window`; beyond it that network may not try that user (`421 4.7.0`,
    /// nothing relayed). Across all networks, the same count starts `auth_backoff`.
    pub auth_failures_per_user: u32,
    #[serde(deserialize_with = "de_duration")]
    pub auth_failure_window: Duration,
    /// Delay before relaying an attempt for a user who had `auth_failures_per_user`
    /// failures across networks, from a network it never logged in from; doubles per
    /// further failure, up to `auth_max_backoff`.
    #[serde(deserialize_with = "de_duration")]
    pub auth_backoff: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub auth_max_backoff: Duration,
    /// Message bytes held in memory before spilling to a file in the state directory.
    #[serde(deserialize_with = "de_size")]
    pub memory_spool_threshold: u64,
    /// Body bytes given to `body` rules.
    #[serde(deserialize_with = "de_size")]
    pub body_scan_limit: u64,
    /// Wait this long before the banner and refuse clients that talk first (`554 5.5.0`).
    #[serde(deserialize_with = "de_duration")]
    pub greet_pause: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_size: 25 * 1024 * 1024,
            max_header_size: 1024 * 1024,
            max_recipients: 1000,
            recipient_overshoot_limit: 1000,
            max_line_length: 2048,
            command_timeout: Duration::from_secs(300),
            stress_threshold: 0.8,
            stress_command_timeout: Duration::from_secs(10),
            stress_hard_error_limit: 1,
            min_data_rate: 500,
            max_sessions: 10_000,
            max_sessions_per_network: 50,
            exempt_networks: vec![
                "127.0.0.0/8".parse().expect("valid network"),
                "::1/128".parse().expect("valid network"),
            ],
            ipv4_prefix: 24,
            ipv6_prefix: 64,
            junk_command_limit: 100,
            hard_error_limit: 20,
            max_transactions: 10_000,
            auth_failures_per_network: 20,
            auth_failures_per_user: 10,
            auth_failure_window: Duration::from_secs(900),
            auth_backoff: Duration::from_secs(1),
            auth_max_backoff: Duration::from_secs(30),
            memory_spool_threshold: 1024 * 1024,
            body_scan_limit: 64 * 1024,
            greet_pause: Duration::ZERO,
        }
    }
}

/// How message content with bare CR, bare LF or NUL is treated.
/// The one resolver (and cache) behind every check. `/etc/hosts` is never read: a
/// local hosts entry must not be able to make a spammer's address "forward-confirmed".
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Recursive resolvers as `ADDR:PORT` (`[v6]:PORT`). Empty: the name servers of
    /// `/etc/resolv.conf`. `mxguard run --dns ADDR:PORT` replaces the list.
    pub servers: Vec<SocketAddr>,
    /// How long one query waits for an answer.
    #[serde(deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// Tries per query (per server).
    pub attempts: usize,
    /// Answers kept in the shared cache.
    pub cache_size: u64,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            servers: Vec::new(),
            timeout: Duration::from_secs(2),
            attempts: 2,
            cache_size: 16384,
        }
    }
}

/// What a check's DNS trouble (timeout, SERVFAIL) means for the rules that use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDnsError {
    /// A rule that depends on the check and would reject answers `451 4.4.3` instead,
    /// so the sender retries when DNS works again.
    Tempfail,
    /// The check's result (`temperror`, or "zone unusable") is all rules see.
    Ignore,
}

/// Settings every check has.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckPolicy {
    pub on_dns_error: OnDnsError,
}

impl Default for CheckPolicy {
    fn default() -> Self {
        CheckPolicy::tempfail()
    }
}

impl CheckPolicy {
    fn tempfail() -> Self {
        CheckPolicy {
            on_dns_error: OnDnsError::Tempfail,
        }
    }
    fn ignore() -> Self {
        CheckPolicy {
            on_dns_error: OnDnsError::Ignore,
        }
    }
}

/// The authentication and reputation checks. Each runs only when a rule tests its
/// result (or the Authentication-Results header needs it).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChecksConfig {
    /// Our name in Authentication-Results (RFC 8601 authserv-id); default `hostname`.
    pub authserv_id: Option<String>,
    /// The Authentication-Results header on relayed messages: `auto` (default) reports
    /// the checks that ran for the message anyway, `true` runs SPF, DKIM, DMARC and ARC
    /// for every message to report them, `false` never adds the header.
    pub auth_results: AuthResults,
    /// Deadline for one check (all its DNS lookups together).
    #[serde(deserialize_with = "de_duration")]
    pub timeout: Duration,
    pub spf: CheckPolicy,
    pub dkim: DkimConfig,
    pub dmarc: CheckPolicy,
    pub arc: CheckPolicy,
    pub dnsbl: DnsblConfig,
    pub rdns: RdnsConfig,
}

impl Default for ChecksConfig {
    fn default() -> Self {
        ChecksConfig {
            authserv_id: None,
            auth_results: AuthResults::Auto,
            timeout: Duration::from_secs(10),
            spf: CheckPolicy::tempfail(),
            dkim: DkimConfig::default(),
            dmarc: CheckPolicy::tempfail(),
            arc: CheckPolicy::ignore(),
            dnsbl: DnsblConfig::default(),
            rdns: RdnsConfig::default(),
        }
    }
}

/// `checks.auth_results`: `auto`, `true` or `false`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthResults {
    /// The header reports the checks the rules needed (no extra DNS); no header when
    /// none of them ran.
    #[default]
    Auto,
    /// Every message is checked (SPF, DKIM, DMARC, ARC) and gets the header.
    All,
    /// Never add the header (forged ones under our authserv-id are still removed).
    Off,
}

impl AuthResults {
    /// Whether SPF, DKIM, DMARC and ARC run for every message, for the header alone.
    pub fn runs_all(self) -> bool {
        self == AuthResults::All
    }

    /// Whether the relayed message gets our header, given what was checked.
    pub fn adds_header(self, facts: &crate::envelope::AuthFacts) -> bool {
        match self {
            AuthResults::All => true,
            AuthResults::Off => false,
            AuthResults::Auto => facts.has_header_results(),
        }
    }
}

impl<'de> Deserialize<'de> for AuthResults {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bool(true) => Ok(AuthResults::All),
            Raw::Bool(false) => Ok(AuthResults::Off),
            Raw::Str(s) if s == "auto" => Ok(AuthResults::Auto),
            Raw::Str(s) => Err(serde::de::Error::custom(format!(
                "invalid value {s:?}, expected auto, true or false"
            ))),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DkimConfig {
    pub on_dns_error: OnDnsError,
    /// Signatures verified per message; the rest are ignored (each costs a DNS lookup
    /// and a public-key operation).
    pub max_signatures: usize,
    /// Largest RSA key verified, in bits: a huge key costs CPU on every message that
    /// names it (RFC 8301 asks verifiers for 1024 to 4096). Larger keys give
    /// `permerror`.
    pub max_rsa_bits: usize,
}

impl Default for DkimConfig {
    fn default() -> Self {
        DkimConfig {
            on_dns_error: OnDnsError::Ignore,
            max_signatures: 5,
            max_rsa_bits: 4096,
        }
    }
}

/// One DNS list zone.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsblZone {
    /// The zone queried, e.g. `zen.spamhaus.org`, or a Spamhaus DQS zone with its
    /// access key (`KEY.zen.dq.spamhaus.net`). Only the queries see it.
    pub zone: String,
    /// What replies (`{dnsbl_zone}`), logs, `explain`, metric labels and `dnsbl:` rule
    /// conditions call the zone; default: the zone. Set it when the zone holds a key.
    #[serde(default)]
    pub name: Option<String>,
    /// Answers that count as "listed": addresses (`127.0.0.2`) or ranges
    /// (`127.0.0.2-127.0.0.11`). Empty: any 127.0.0.0/8 answer except the 127.255.255.x
    /// error codes (block lists only: an allow list needs `codes` or `mask`).
    #[serde(default)]
    pub codes: Vec<CodeRange>,
    /// Bitmask lists (URIBL, SURBL style): an answer counts when it has one of these bits
    /// (`0x04`). With `codes` too, an answer must satisfy both.
    #[serde(default, deserialize_with = "de_mask")]
    pub mask: Option<u32>,
    /// Added to the score when the zone lists the client; negative for allow lists.
    #[serde(default = "one")]
    pub weight: i64,
}

impl DnsblZone {
    /// A block list zone: the name is the zone, any answer counts, weight 1.
    pub fn new(zone: &str) -> DnsblZone {
        DnsblZone {
            zone: zone.to_owned(),
            name: None,
            codes: Vec::new(),
            mask: None,
            weight: 1,
        }
    }

    /// The name shown everywhere outside the DNS query (lower case, no trailing dot).
    pub fn display_name(&self) -> String {
        self.name
            .as_deref()
            .unwrap_or(&self.zone)
            .trim_end_matches('.')
            .to_ascii_lowercase()
    }

    /// Whether an answer (already known to be in 127.0.0.0/8 and no error code) is one
    /// this zone counts.
    pub fn counts(&self, answer: std::net::Ipv4Addr) -> bool {
        (self.codes.is_empty() || self.codes.iter().any(|c| c.contains(answer)))
            && self.mask.is_none_or(|m| u32::from(answer) & m != 0)
    }

    fn validate(&self, i: usize) -> Result<(), String> {
        let place = format!("checks.dnsbl.zones[{i}]");
        let zone = self.zone.trim_end_matches('.');
        if zone.is_empty() || zone.contains(|c: char| c.is_whitespace() || c.is_control()) {
            return Err(format!("{place}.zone: invalid zone name"));
        }
        if let Some(n) = &self.name
            && (n.trim_end_matches('.').is_empty()
                || n.contains(|c: char| c.is_whitespace() || c.is_control()))
        {
            return Err(format!("{place}.name: invalid name {n:?}"));
        }
        if self.weight < 0 && self.codes.is_empty() && self.mask.is_none() {
            return Err(format!(
                "{place} ({}): an allow list (negative weight) needs `codes` or `mask`, so that \
                 only its listed answers allow-list a client (list.dnswl.org, for one, answers \
                 127.0.0.255 when it refuses the query), e.g. codes: [\"127.0.2.0-127.0.20.3\"]",
                self.display_name()
            ));
        }
        Ok(())
    }
}

/// An answer code or an inclusive range of them, written `127.0.0.2` or
/// `127.0.0.2-127.0.0.11`; always within 127.0.0.0/8 (RFC 5782 answers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeRange {
    pub first: std::net::Ipv4Addr,
    pub last: std::net::Ipv4Addr,
}

impl CodeRange {
    pub fn contains(&self, a: std::net::Ipv4Addr) -> bool {
        self.first <= a && a <= self.last
    }
}

impl FromStr for CodeRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parse = |p: &str| {
            p.trim()
                .parse::<std::net::Ipv4Addr>()
                .ok()
                .filter(|a| a.octets()[0] == 127)
                .ok_or_else(|| {
                    format!(
                        "invalid answer code {s:?}, expected 127.x.y.z or a range 127.0.0.2-127.0.0.11"
                    )
                })
        };
        let (first, last) = match s.split_once('-') {
            Some((a, b)) => (parse(a)?, parse(b)?),
            None => (parse(s)?, parse(s)?),
        };
        if first > last {
            return Err(format!(
                "invalid answer code range {s:?}: first is above last"
            ));
        }
        Ok(CodeRange { first, last })
    }
}

impl<'de> Deserialize<'de> for CodeRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A bitmask as a number (`0x04`, `4`) or a string (`"0x04"`); bits of the 24 bits
/// below the 127 octet only.
fn de_mask<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Num(u64),
        Str(String),
    }
    let n = match Raw::deserialize(d)? {
        Raw::Num(n) => Some(n),
        Raw::Str(s) => {
            let s = s.trim();
            match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
                Some(hex) => u64::from_str_radix(hex, 16).ok(),
                None => s.parse().ok(),
            }
        }
    };
    match n {
        Some(n) if (1..=0x00ff_ffff).contains(&n) => Ok(Some(n as u32)),
        _ => Err(serde::de::Error::custom(
            "invalid mask, expected a number from 0x000001 to 0xffffff (e.g. 0x04)",
        )),
    }
}

fn one() -> i64 {
    1
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsblConfig {
    pub on_dns_error: OnDnsError,
    pub zones: Vec<DnsblZone>,
}

impl Default for DnsblConfig {
    fn default() -> Self {
        DnsblConfig {
            on_dns_error: OnDnsError::Ignore,
            zones: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RdnsConfig {
    pub on_dns_error: OnDnsError,
    /// Regexes (case-insensitive) for generic, dynamic-pool PTR names.
    pub generic: Vec<String>,
}

impl Default for RdnsConfig {
    fn default() -> Self {
        RdnsConfig {
            on_dns_error: OnDnsError::Ignore,
            generic: vec![
                r"(^|[.-])(dyn|dynamic|dhcp|dsl|adsl|pool|ppp|cable|client|host)[0-9.-]".into(),
                r"\d{1,3}[.-]\d{1,3}[.-]\d{1,3}[.-]\d{1,3}".into(),
            ],
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Clients in these networks get bare CR/LF normalised to CRLF instead of `550 5.6.0`.
    pub normalize_networks: Vec<IpNet>,
}

/// An IP network in CIDR notation (`192.0.2.0/24`, `2001:db8::/32`, or a bare address),
/// for the configuration and the rules alike. Host bits below the prefix are ignored
/// (masked), as most firewall syntaxes do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl IpNet {
    /// The network of `ip` with `prefix` bits (IPv4-mapped IPv6 is folded to IPv4 first).
    pub fn containing(ip: IpAddr, v4_prefix: u8, v6_prefix: u8) -> IpNet {
        let ip = canonical_ip(ip);
        let prefix = if ip.is_ipv4() { v4_prefix } else { v6_prefix };
        IpNet {
            addr: mask(ip, prefix),
            prefix,
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix) == self.addr
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for IpNet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| format!("invalid network {s:?}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => Some(p)
                .filter(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|p| p.parse::<u8>().ok())
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("invalid prefix length in {s:?}"))?,
            None => max,
        };
        Ok(IpNet {
            addr: mask(addr, prefix),
            prefix,
        })
    }
}

impl<'de> Deserialize<'de> for IpNet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`) are IPv4 clients on a dual-stack socket.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - prefix.min(32))
            };
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - prefix.min(128))
            };
            IpAddr::V6((bits & m).into())
        }
    }
}

/// Parses `300ms`, `30s`, `5m`, `2h`, `35d` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (e.g. 300s, 5m, 2d)"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        "w" => n * 7.0 * 86400.0,
        _ => {
            return Err(format!(
                "invalid duration unit in {s:?} (ms, s, m, h, d, w)"
            ));
        }
    };
    Ok(Duration::from_secs_f64(secs))
}

/// Parses `25MiB`, `10MB`, `512KiB`, `1G` or a plain number of octets.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?} (e.g. 25MiB, 10MB, 4096)"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "k" | "K" | "KB" | "kB" => 1000,
        "KiB" | "Ki" => 1024,
        "M" | "MB" => 1000 * 1000,
        "MiB" | "Mi" => 1024 * 1024,
        "G" | "GB" => 1000 * 1000 * 1000,
        "GiB" | "Gi" => 1024 * 1024 * 1024,
        _ => {
            return Err(format!(
                "invalid size unit in {s:?} (B, KB, KiB, MB, MiB, GB, GiB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// Numbers are seconds; strings take units.
fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Num(f64),
        Str(String),
    }
    match Raw::deserialize(d)? {
        Raw::Num(n) if n >= 0.0 => Ok(Duration::from_secs_f64(n)),
        Raw::Num(n) => Err(serde::de::Error::custom(format!("negative duration {n}"))),
        Raw::Str(s) => parse_duration(&s).map_err(serde::de::Error::custom),
    }
}

/// `80%`, `80` or `0.8` (a number up to 1 is a fraction) as a fraction in 0..=1.
fn de_percent<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Num(f64),
        Str(String),
    }
    let (n, pct) = match Raw::deserialize(d)? {
        Raw::Num(n) => (n, n > 1.0),
        Raw::Str(s) => {
            let t = s.trim();
            let (num, pct) = match t.strip_suffix('%') {
                Some(n) => (n.trim(), true),
                None => (t, false),
            };
            let n: f64 = num
                .parse()
                .map_err(|_| serde::de::Error::custom(format!("invalid percentage {s:?}")))?;
            (n, pct || n > 1.0)
        }
    };
    let f = if pct { n / 100.0 } else { n };
    if !(0.0..=1.0).contains(&f) {
        return Err(serde::de::Error::custom(format!(
            "percentage {n} out of range"
        )));
    }
    Ok(f)
}

/// Numbers are octets; strings take units.
fn de_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Num(u64),
        Str(String),
    }
    match Raw::deserialize(d)? {
        Raw::Num(n) => Ok(n),
        Raw::Str(s) => parse_size(&s).map_err(serde::de::Error::custom),
    }
}

fn default_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// A configuration error with its place: `file:line:column: message`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl Config {
    /// The authserv-id of our Authentication-Results header.
    pub fn authserv_id(&self) -> &str {
        self.checks.authserv_id.as_deref().unwrap_or(&self.hostname)
    }

    /// Whether a relayed message gets our Authentication-Results header, given what
    /// was checked for it (`checks.auth_results`).
    pub fn adds_auth_results(&self, facts: &crate::envelope::AuthFacts) -> bool {
        self.checks.auth_results.adds_header(facts)
    }

    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses configuration text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        // An empty file (or one with only comments) means "all defaults".
        let cfg: Config = if text.trim().lines().all(|l| {
            let l = l.trim();
            l.is_empty() || l.starts_with('#')
        }) {
            Config::default()
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| match e.location() {
                Some(loc) => ConfigError(format!(
                    "{origin}:{}:{}: {}",
                    loc.line(),
                    loc.column(),
                    strip_location(&e.to_string())
                )),
                None => ConfigError(format!("{origin}: {e}")),
            })?
        };
        cfg.validate()
            .map_err(|m| ConfigError(format!("{origin}: {m}")))?;
        Ok(cfg)
    }

    /// Checks relations between fields that serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        let kinds: Vec<crate::filters::FilterConfig> =
            self.filters.iter().map(|f| f.kind.clone()).collect();
        if let Some(e) = crate::filters::validate(&kinds).into_iter().next() {
            return Err(e);
        }
        for (i, f) in self.filters.iter().enumerate() {
            if let Some(l) = f
                .listeners
                .iter()
                .find(|l| !self.listeners.iter().any(|c| &c.name == *l))
            {
                return Err(format!("filters[{i}].listeners: no listener named {l:?}"));
            }
        }
        if self.listeners.is_empty() {
            return Err("listeners: at least one listener is required".into());
        }
        if self.upstreams.is_empty() {
            return Err("upstreams: at least one upstream is required".into());
        }
        for (i, l) in self.listeners.iter().enumerate() {
            if let Some(pp) = &l.proxy_protocol
                && (pp.trusted.is_empty() || !(pp.v1 || pp.v2))
            {
                return Err(format!(
                    "listeners[{i}].proxy_protocol: needs `trusted` networks and v1 or v2 enabled"
                ));
            }
            if l.implicit_tls && l.tls.is_none() {
                return Err(format!(
                    "listeners[{i}].implicit_tls: needs listeners[{i}].tls (cert and key)"
                ));
            }
        }
        let mut names: Vec<&str> = self.listeners.iter().map(|l| l.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("listeners: duplicate listener name {:?}", w[0]));
        }
        let l = &self.limits;
        if l.max_line_length < 512 {
            return Err("limits.max_line_length: must be at least 512 (RFC 5321)".into());
        }
        if l.ipv4_prefix > 32 || l.ipv6_prefix > 128 {
            return Err("limits.ipv4_prefix/ipv6_prefix: out of range".into());
        }
        if l.max_recipients == 0 || l.max_sessions == 0 || l.max_sessions_per_network == 0 {
            return Err(
                "limits: max_recipients, max_sessions and max_sessions_per_network must be > 0"
                    .into(),
            );
        }
        if self.hostname.is_empty() || self.hostname.chars().any(|c| c.is_whitespace()) {
            return Err(format!("hostname: invalid host name {:?}", self.hostname));
        }
        if self.checks.dkim.max_rsa_bits < 1024 {
            return Err("checks.dkim.max_rsa_bits: must be at least 1024 (RFC 8301)".into());
        }
        if self.dns.attempts == 0 || self.dns.timeout.is_zero() {
            return Err("dns: attempts and timeout must be > 0".into());
        }
        for (i, g) in self.checks.rdns.generic.iter().enumerate() {
            if let Err(e) = regex::Regex::new(g) {
                return Err(format!("checks.rdns.generic[{i}]: invalid regex: {e}"));
            }
        }
        for (i, z) in self.checks.dnsbl.zones.iter().enumerate() {
            z.validate(i)?;
        }
        let mut names: Vec<String> = self
            .checks
            .dnsbl
            .zones
            .iter()
            .map(DnsblZone::display_name)
            .collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!(
                "checks.dnsbl.zones: two zones are called {:?} (give one a `name`)",
                w[0]
            ));
        }
        if let Some(id) = &self.checks.authserv_id
            && (id.is_empty() || id.contains(|c: char| c.is_whitespace() || c == ';'))
        {
            return Err(format!("checks.authserv_id: invalid name {id:?}"));
        }
        Ok(())
    }
}

/// serde_yaml_ng ends messages with "at line L column C"; we print the place first instead.
fn strip_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_all_defaults() {
        let c = Config::parse("# nothing\n", "x.yaml").unwrap();
        assert_eq!(c.listeners[0].address.to_string(), "127.0.0.1:2525");
        assert_eq!(c.upstreams[0].address, "127.0.0.1:25");
        assert_eq!(c.limits.max_line_length, 2048);
        assert_eq!(c.upstream_pool.size, 2);
        assert_eq!(c.upstream_pool.max_idle, Duration::from_secs(30));
    }

    #[test]
    fn the_upstream_pool_is_bounded() {
        let c = Config::parse("upstream_pool: { size: 0 }\n", "x.yaml").unwrap();
        assert_eq!(c.upstream_pool.size, 0);
        let c = Config::parse("upstream_pool: { size: 8, max_idle: 2m }\n", "x.yaml").unwrap();
        assert_eq!(c.upstream_pool.max_idle, Duration::from_secs(120));
        let e = Config::parse("upstream_pool:\n  size: 2\n  max_idle: 0s\n", "x.yaml");
        let e = e.unwrap_err().to_string();
        assert!(
            e.starts_with("x.yaml:2:") && e.contains("max_idle: 0s"),
            "{e}"
        );
        let e = Config::parse(
            "hostname: mx.test\nupstream_pool: { size: 5000 }\n",
            "x.yaml",
        );
        let e = e.unwrap_err().to_string();
        assert!(
            e.starts_with("x.yaml:2:") && e.contains("size: 5000"),
            "{e}"
        );
        let e = Config::parse("upstream_pool: { size: -1 }\n", "x.yaml").unwrap_err();
        assert!(e.to_string().starts_with("x.yaml:1:"), "{e}");
        let e = Config::parse("upstream_pool: { sise: 2 }\n", "x.yaml").unwrap_err();
        assert!(e.to_string().contains("x.yaml:1:"), "{e}");
    }

    #[test]
    fn filters_are_checked_against_the_listeners() {
        let ok = Config::parse(
            "listeners:\n  - name: mx\n    address: 127.0.0.1:2525\n    milter_daemon_name: ORIGINATING\n\
             filters:\n  - name: av\n    milter: 127.0.0.1:7357\n    listeners: [mx]\n",
            "c.yaml",
        )
        .unwrap();
        assert_eq!(ok.filters[0].listeners, ["mx"]);
        assert_eq!(
            ok.listeners[0].milter_daemon_name.as_deref(),
            Some("ORIGINATING")
        );
        let e = Config::parse(
            "filters:\n  - name: av\n    milter: 127.0.0.1:7357\n    listeners: [submision]\n",
            "c.yaml",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "c.yaml: filters[0].listeners: no listener named \"submision\""
        );
        let e = Config::parse(
            "filters:\n  - name: av\n    milter: 127.0.0.1:7357\n  - name: av\n    rspamd: http://127.0.0.1:11333\n",
            "c.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("\"av\" is used twice"), "{e}");
    }

    #[test]
    fn unknown_field_is_located() {
        let e = Config::parse("hostname: mx.test\nlimits:\n  max_recipent: 5\n", "c.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("c.yaml:3:3: limits: unknown field `max_recipent`"),
            "{e}"
        );
    }

    #[test]
    fn units_parse() {
        assert_eq!(parse_size("25MiB").unwrap(), 25 * 1024 * 1024);
        assert_eq!(parse_size("10MB").unwrap(), 10_000_000);
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("5x").is_err());
        let c = Config::parse(
            "limits:\n  max_message_size: 1MiB\n  command_timeout: 2s\n",
            "c.yaml",
        )
        .unwrap();
        assert_eq!(c.limits.max_message_size, 1 << 20);
        assert_eq!(c.limits.command_timeout, Duration::from_secs(2));
    }

    #[test]
    fn auth_results_takes_auto_true_and_false() {
        let a = |y: &str| Config::parse(y, "c.yaml").map(|c| c.checks.auth_results);
        assert_eq!(a("# defaults\n").unwrap(), AuthResults::Auto);
        assert_eq!(
            a("checks: { auth_results: auto }").unwrap(),
            AuthResults::Auto
        );
        assert_eq!(
            a("checks: { auth_results: true }").unwrap(),
            AuthResults::All
        );
        assert_eq!(
            a("checks: { auth_results: false }").unwrap(),
            AuthResults::Off
        );
        let e = a("checks: { auth_results: sometimes }")
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected auto, true or false"), "{e}");
        let mut f = crate::envelope::AuthFacts::default();
        assert!(!AuthResults::Auto.adds_header(&f));
        assert!(AuthResults::All.adds_header(&f));
        f.dnsbl = Some(Default::default());
        assert!(
            !AuthResults::Auto.adds_header(&f),
            "DNS lists are not in the header"
        );
        f.spf = Some(crate::envelope::SpfFact {
            status: crate::envelope::AuthStatus::Pass,
            domain: "a.example".into(),
        });
        assert!(AuthResults::Auto.adds_header(&f));
        assert!(!AuthResults::Off.adds_header(&f));
    }

    #[test]
    fn dnsbl_zones_take_names_ranges_and_masks() {
        let zones = |y: &str| {
            Config::parse(&format!("checks:\n  dnsbl:\n    zones:\n{y}"), "c.yaml")
                .map(|c| c.checks.dnsbl.zones)
        };
        // An old configuration stays valid: single codes, no name.
        let z = zones("      - { zone: bl.example, codes: [127.0.0.2, 127.0.0.4], weight: 2 }\n")
            .unwrap();
        assert_eq!(z[0].display_name(), "bl.example");
        assert!(z[0].counts("127.0.0.4".parse().unwrap()));
        assert!(!z[0].counts("127.0.0.3".parse().unwrap()));
        let z = zones(concat!(
            "      - { zone: Key123.zen.dq.example., name: Zen, codes: [\"127.0.0.2-127.0.0.11\"] }\n",
            "      - { zone: multi.uribl.example, mask: 0x04 }\n",
            "      - { zone: wl.example, weight: -5, codes: [\"127.0.2.0-127.0.20.3\"] }\n",
        ))
        .unwrap();
        assert_eq!(z[0].display_name(), "zen");
        let ip = |s: &str| s.parse::<std::net::Ipv4Addr>().unwrap();
        let counted: Vec<bool> = ["127.0.0.1", "127.0.0.2", "127.0.0.11", "127.0.0.12"]
            .iter()
            .map(|a| z[0].counts(ip(a)))
            .collect();
        assert_eq!(counted, [false, true, true, false]);
        assert_eq!(z[1].mask, Some(4));
        assert!(z[1].counts(ip("127.0.0.4")) && z[1].counts(ip("127.0.0.14")));
        assert!(!z[1].counts(ip("127.0.0.2")) && !z[1].counts(ip("127.0.0.8")));
        assert!(z[2].counts(ip("127.0.10.1")) && !z[2].counts(ip("127.0.0.255")));
        assert_eq!(
            zones("      - { zone: u.example, mask: \"0x0c\" }\n").unwrap()[0].mask,
            Some(12)
        );
        for (bad, want) in [
            // An allow list without codes would count dnswl's "access refused" answer.
            (
                "{ zone: list.dnswl.org, weight: -5 }",
                "needs `codes` or `mask`",
            ),
            (
                "{ zone: a.example, codes: [\"127.0.0.9-127.0.0.2\"] }",
                "first is above last",
            ),
            (
                "{ zone: a.example, codes: [10.0.0.2] }",
                "invalid answer code",
            ),
            ("{ zone: a.example, mask: 0 }", "invalid mask"),
            ("{ zone: a.example, mask: 0x7f000000 }", "invalid mask"),
            ("{ zone: a.example, name: \"a b\" }", "invalid name"),
        ] {
            let e = zones(&format!("      - {bad}\n")).unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
        let e =
            zones("      - { zone: a.example }\n      - { zone: k.b.example, name: a.example }\n")
                .unwrap_err()
                .to_string();
        assert!(e.contains("two zones are called \"a.example\""), "{e}");
    }

    #[test]
    fn networks_fold_mapped_ipv4() {
        let mapped: IpAddr = "::ffff:192.0.2.77".parse().unwrap();
        let net = IpNet::containing(mapped, 24, 64);
        assert_eq!(net.to_string(), "192.0.2.0/24");
        let v6: IpAddr = "2001:db8:1:2:3::9".parse().unwrap();
        assert_eq!(
            IpNet::containing(v6, 24, 64).to_string(),
            "2001:db8:1:2::/64"
        );
        let n: IpNet = "10.0.0.0/8".parse().unwrap();
        assert!(n.contains("10.1.2.3".parse().unwrap()));
        assert!(!n.contains("11.1.2.3".parse().unwrap()));
        assert!("10.0.0/8".parse::<IpNet>().is_err());
    }
}
