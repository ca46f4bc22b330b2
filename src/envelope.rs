//! The types every piece shares: the stage, what is known about the client and the
//! transaction (the facts a rule can test), and the verdict a policy returns.
//!
//! Pieces talk to each other only through these types, so the session never reaches
//! into the policy's compiled rules and the policy never sees a socket.

use std::net::IpAddr;

use crate::reply::Reply;

/// The SMTP command stage at which rules run, in session order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    /// After accept, before the banner.
    Connect,
    /// After HELO/EHLO syntax checks.
    Helo,
    /// After MAIL FROM syntax and size checks, before the upstream sees it.
    Mail,
    /// For each RCPT TO, before the upstream sees it.
    Rcpt,
    /// After the final dot, with the whole message, before it is relayed.
    Data,
}

impl Stage {
    pub const ALL: [Stage; 5] = [
        Stage::Connect,
        Stage::Helo,
        Stage::Mail,
        Stage::Rcpt,
        Stage::Data,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::Helo => "helo",
            Stage::Mail => "mail",
            Stage::Rcpt => "rcpt",
            Stage::Data => "data",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What is known about the connected client for the whole session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    /// The client's address (from PROXY protocol when the listener trusts it).
    pub ip: IpAddr,
    pub port: u16,
    /// The listener's configured name (e.g. "mx", "submission").
    pub listener: String,
    /// The listener takes mail clients (`mode: submission`), not other MTAs.
    pub submission: bool,
    /// Whether the session is (now) under TLS.
    pub tls: bool,
    /// The SASL user once authenticated.
    pub auth_user: Option<String>,
}

/// The received message at the `data` stage: enough for header and body rules without
/// handing the policy the spool itself.
#[derive(Debug, Clone, Default)]
pub struct MessageView {
    /// Header fields in order as (name, unfolded value).
    pub headers: Vec<(String, String)>,
    /// The first bytes of the body (the configured body scan limit).
    pub body_prefix: Vec<u8>,
    /// The real size of the message in octets (CRLF line ends, un-stuffed).
    pub size: u64,
}

/// Everything a policy may look at for one decision.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub stage: Stage,
    pub client: &'a ClientInfo,
    /// The HELO/EHLO argument, once given.
    pub helo: Option<&'a str>,
    /// The transaction, from MAIL on.
    pub transaction: Option<&'a crate::transaction::Transaction>,
    /// At `rcpt`: the recipient being decided.
    pub recipient: Option<&'a crate::transaction::Recipient>,
    pub message: Option<&'a MessageView>,
    /// Results of the DNS-based checks run before this decision (see [`AuthFacts`]).
    pub auth: &'a AuthFacts,
    /// At `data`: what each content filter said about the message.
    pub filters: &'a [FilterFact],
}

/// A content filter's verdict, as a class rules can test whatever the filter's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FilterResult {
    /// Accept, continue, rspamd's `no action` / `add header` / `rewrite subject`.
    Pass,
    /// A permanent refusal (milter reject or 5xx reply code, rspamd `reject`).
    Reject,
    /// A temporary refusal (milter tempfail or 4xx, rspamd `soft reject` / `greylist`).
    Tempfail,
    /// Accept and drop silently (milter `discard`).
    Discard,
    /// Hold for review (milter quarantine).
    Quarantine,
    /// Close the client connection (milter shutdown).
    Shutdown,
    /// The filter was down, too slow or broken (its `default_action` applies).
    Error,
}

impl FilterResult {
    pub const ALL: [FilterResult; 7] = [
        FilterResult::Pass,
        FilterResult::Reject,
        FilterResult::Tempfail,
        FilterResult::Discard,
        FilterResult::Quarantine,
        FilterResult::Shutdown,
        FilterResult::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FilterResult::Pass => "pass",
            FilterResult::Reject => "reject",
            FilterResult::Tempfail => "tempfail",
            FilterResult::Discard => "discard",
            FilterResult::Quarantine => "quarantine",
            FilterResult::Shutdown => "shutdown",
            FilterResult::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<FilterResult> {
        FilterResult::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// What one content filter said about the message at end of data.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterFact {
    pub name: String,
    pub result: FilterResult,
    /// rspamd's action as it named it (`no action`, `add header`, `rewrite subject`,
    /// `greylist`, `soft reject`, `reject`).
    pub action: Option<String>,
    /// rspamd's score and the symbols that fired.
    pub score: Option<f64>,
    pub symbols: Vec<String>,
    /// The filter's own reply, for a refusal.
    pub reply: Option<Reply>,
    /// Why: the quarantine reason, or the failure.
    pub reason: Option<String>,
}

/// The decisive part of a policy evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No decisive rule matched: go on to the upstream.
    Continue,
    /// Skip every later rule for the session (connect/helo) or transaction.
    Accept,
    /// Permanent refusal with this reply (5xx).
    Reject(Reply),
    /// Temporary refusal with this reply (4xx).
    Tempfail(Reply),
}

/// A set of checks, as bits: which checks a rule needs, which ones had DNS trouble.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Checks(pub u8);

impl Checks {
    pub const NONE: Checks = Checks(0);
    pub const SPF: Checks = Checks(1);
    pub const DKIM: Checks = Checks(2);
    pub const DMARC: Checks = Checks(4);
    pub const ARC: Checks = Checks(8);
    pub const DNSBL: Checks = Checks(16);
    pub const RDNS: Checks = Checks(32);
    /// SPF of the HELO identity: computed with [`Checks::SPF`], but its DNS trouble
    /// only affects rules that test it.
    pub const SPF_HELO: Checks = Checks(64);
    pub const ALL: Checks = Checks(127);

    pub const fn union(self, o: Checks) -> Checks {
        Checks(self.0 | o.0)
    }
    pub const fn contains(self, o: Checks) -> bool {
        self.0 & o.0 == o.0
    }
    pub const fn intersects(self, o: Checks) -> bool {
        self.0 & o.0 != 0
    }
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl std::ops::BitOr for Checks {
    type Output = Checks;
    fn bitor(self, o: Checks) -> Checks {
        self.union(o)
    }
}

impl std::ops::BitOrAssign for Checks {
    fn bitor_assign(&mut self, o: Checks) {
        *self = self.union(o);
    }
}

/// The outcome of one authentication check, with the RFC 8601 result names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthStatus {
    Pass,
    Fail,
    SoftFail,
    Neutral,
    None,
    /// A transient error: a DNS timeout or SERVFAIL (ours or the sender's).
    TempError,
    /// A permanent error: a broken record, too many lookups.
    PermError,
}

impl AuthStatus {
    pub const ALL: [AuthStatus; 7] = [
        AuthStatus::Pass,
        AuthStatus::Fail,
        AuthStatus::SoftFail,
        AuthStatus::Neutral,
        AuthStatus::None,
        AuthStatus::TempError,
        AuthStatus::PermError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuthStatus::Pass => "pass",
            AuthStatus::Fail => "fail",
            AuthStatus::SoftFail => "softfail",
            AuthStatus::Neutral => "neutral",
            AuthStatus::None => "none",
            AuthStatus::TempError => "temperror",
            AuthStatus::PermError => "permerror",
        }
    }

    pub fn parse(s: &str) -> Option<AuthStatus> {
        AuthStatus::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

impl std::fmt::Display for AuthStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// SPF for one identity (RFC 7208).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpfFact {
    pub status: AuthStatus,
    /// The domain whose record was checked.
    pub domain: String,
}

/// One DKIM signature's verification (RFC 6376, RFC 8463).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DkimSignatureFact {
    pub status: AuthStatus,
    /// `d=`, `s=` and `a=` of the signature (empty when it could not be parsed).
    pub domain: String,
    pub selector: String,
    pub algorithm: String,
    /// Why it did not pass, for logs and the A-R comment.
    pub reason: Option<String>,
}

/// The DMARC evaluation (RFC 7489) of the message's From domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmarcFact {
    pub status: AuthStatus,
    /// The RFC 5322.From domain.
    pub domain: String,
    /// The published policy that applies (`none`, `quarantine`, `reject`), after the
    /// record's testing flag (`t=y`) lowered it one step.
    pub policy: &'static str,
    /// Why DMARC could not be applied the usual way, if so.
    pub reason: Option<DmarcReason>,
}

/// What made a DMARC evaluation unusual (RFC 7489 §6.6.1, §6.6.3). Rules can test it
/// (`dmarc: { reason: … }`); the shipped rules refuse `multiple_from` and `no_from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DmarcReason {
    /// More than one From header field (RFC 5322 allows one). Every author domain was
    /// evaluated and the strictest result is the one reported.
    MultipleFrom,
    /// No From field, or none with an address that has a domain: there is no author
    /// domain to evaluate (`permerror`).
    NoFrom,
    /// More than one DMARC record at the name that applies: no policy (`none`).
    MultipleRecords,
}

impl DmarcReason {
    pub const ALL: [DmarcReason; 3] = [
        DmarcReason::MultipleFrom,
        DmarcReason::NoFrom,
        DmarcReason::MultipleRecords,
    ];

    /// The name in rules, logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            DmarcReason::MultipleFrom => "multiple_from",
            DmarcReason::NoFrom => "no_from",
            DmarcReason::MultipleRecords => "multiple_records",
        }
    }

    /// A sentence for the Authentication-Results `reason=`.
    pub fn describe(self) -> &'static str {
        match self {
            DmarcReason::MultipleFrom => "more than one From header field",
            DmarcReason::NoFrom => "no From address with a domain",
            DmarcReason::MultipleRecords => "more than one DMARC record",
        }
    }

    pub fn parse(s: &str) -> Option<DmarcReason> {
        DmarcReason::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// One DNS list zone that listed the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsblHit {
    /// The zone's display name (`name`, by default the zone itself): never the queried
    /// zone when that differs, because it may hold an access key (Spamhaus DQS).
    pub zone: String,
    /// The answers (127.0.0.x) that matched the zone's expected codes.
    pub codes: Vec<std::net::Ipv4Addr>,
    pub weight: i64,
    /// The zone's TXT record, if any (usable in replies as `{dnsbl_reason}`).
    pub reason: Option<String>,
}

/// DNS block/allow lists for the client address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsblFact {
    pub hits: Vec<DnsblHit>,
    /// Sum of the weights of the zones that listed the client (allow lists weigh < 0).
    pub score: i64,
    /// Zones (display names) that answered with an error code (127.255.255.x), an
    /// address outside 127.0.0.0/8, or not at all: "list unusable", never "listed".
    pub unusable: Vec<String>,
}

/// Reverse DNS of the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RdnsStatus {
    /// A PTR name that resolves back to the client address (FCrDNS).
    Pass,
    /// PTR names exist but none resolves back to the address.
    Mismatch,
    /// No PTR record.
    None,
    /// The lookup failed (timeout, SERVFAIL).
    TempError,
}

impl RdnsStatus {
    pub const ALL: [RdnsStatus; 4] = [
        RdnsStatus::Pass,
        RdnsStatus::Mismatch,
        RdnsStatus::None,
        RdnsStatus::TempError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RdnsStatus::Pass => "pass",
            RdnsStatus::Mismatch => "mismatch",
            RdnsStatus::None => "none",
            RdnsStatus::TempError => "temperror",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RdnsFact {
    pub status: RdnsStatus,
    /// The confirmed name (on pass), else the first PTR name.
    pub name: Option<String>,
    /// The name matched one of the configured "generic" patterns (dynamic pools).
    pub generic: bool,
}

/// What the network checks found, gathered by the session before it runs a stage's
/// rules, so that evaluating the rules stays a pure function of the facts. A check that
/// did not run (no rule needed it) is `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthFacts {
    /// SPF for the HELO identity.
    pub spf_helo: Option<SpfFact>,
    /// SPF for the MAIL FROM identity (`postmaster@HELO` for the null sender).
    pub spf: Option<SpfFact>,
    /// One entry per DKIM signature checked; `Some(vec![])` means "no signature".
    pub dkim: Option<Vec<DkimSignatureFact>>,
    pub dmarc: Option<DmarcFact>,
    pub arc: Option<AuthStatus>,
    pub dnsbl: Option<DnsblFact>,
    pub rdns: Option<RdnsFact>,
    /// Checks that met DNS trouble and whose failure policy is `tempfail`: a rule that
    /// depends on one of them and would reject answers 4xx instead.
    pub degraded: Checks,
}

impl AuthFacts {
    /// No check has run.
    pub const EMPTY: AuthFacts = AuthFacts {
        spf_helo: None,
        spf: None,
        dkim: None,
        dmarc: None,
        arc: None,
        dnsbl: None,
        rdns: None,
        degraded: Checks::NONE,
    };

    /// A copy of the results that belong to the client rather than to one message (DNS
    /// lists, reverse DNS), for the start of a new transaction.
    pub fn client_part(&self) -> AuthFacts {
        AuthFacts {
            dnsbl: self.dnsbl.clone(),
            rdns: self.rdns.clone(),
            degraded: Checks(self.degraded.0 & (Checks::DNSBL | Checks::RDNS).0),
            ..AuthFacts::EMPTY
        }
    }

    /// The overall DKIM result: `pass` if any signature passed, else the first
    /// signature's result, `none` without signatures.
    pub fn dkim_status(&self) -> Option<AuthStatus> {
        let sigs = self.dkim.as_ref()?;
        if sigs.iter().any(|s| s.status == AuthStatus::Pass) {
            return Some(AuthStatus::Pass);
        }
        Some(sigs.first().map_or(AuthStatus::None, |s| s.status))
    }

    /// `pass[permerror:a.example/s1,pass:b.example/s2]`: the overall DKIM result, then
    /// each signature's (`-` when DKIM did not run, `none` without signatures).
    fn dkim_summary(&self) -> String {
        let Some(overall) = self.dkim_status() else {
            return "-".into();
        };
        let sigs = self.dkim.as_deref().unwrap_or_default();
        if sigs.is_empty() {
            return overall.as_str().into();
        }
        let each: Vec<String> = sigs
            .iter()
            .map(|s| format!("{}:{}/{}", s.status, s.domain, s.selector))
            .collect();
        format!("{overall}[{}]", each.join(","))
    }

    /// Whether a check that the Authentication-Results header reports has run (reverse
    /// DNS as `iprev`, SPF, DKIM, DMARC, ARC; DNS lists have no A-R method).
    pub fn has_header_results(&self) -> bool {
        self.rdns.is_some()
            || self.spf.is_some()
            || self.spf_helo.is_some()
            || self.dkim.is_some()
            || self.dmarc.is_some()
            || self.arc.is_some()
    }

    /// `spf=… dkim=… dmarc=… dnsbl=… rdns=…` for logs and `mxguard explain`.
    pub fn summary(&self) -> String {
        let spf = self.spf.as_ref().map_or("-", |s| s.status.as_str());
        let helo = self.spf_helo.as_ref().map_or("-", |s| s.status.as_str());
        let dkim = self.dkim_summary();
        let dmarc = self
            .dmarc
            .as_ref()
            .map_or("-".to_owned(), |d| match d.reason {
                Some(r) => format!("{}(p={},{})", d.status.as_str(), d.policy, r.as_str()),
                None => format!("{}(p={})", d.status.as_str(), d.policy),
            });
        let arc = self.arc.map_or("-", AuthStatus::as_str);
        let dnsbl = self.dnsbl.as_ref().map_or("-".to_owned(), |d| {
            if d.hits.is_empty() {
                format!("clean(score={})", d.score)
            } else {
                let z: Vec<&str> = d.hits.iter().map(|h| h.zone.as_str()).collect();
                format!("listed:{}(score={})", z.join(","), d.score)
            }
        });
        let rdns = self.rdns.as_ref().map_or("-", |r| r.status.as_str());
        format!(
            "spf={spf} spf_helo={helo} dkim={dkim} dmarc={dmarc} arc={arc} dnsbl={dnsbl} rdns={rdns}"
        )
    }
}
