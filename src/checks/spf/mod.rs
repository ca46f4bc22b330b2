//! SPF (RFC 7208) for the HELO and the MAIL FROM identities: mxguard's own evaluator
//! over the shared resolver (mail-auth's SPF is lenient where RFC 7208 says
//! `permerror`, and has no void-lookup limit; DMARC still gets our result).
//!
//! The null sender is checked as `postmaster@<HELO>` (RFC 7208 §2.4); a HELO that is
//! an address literal or not a multi-label name has no SPF identity (`none`).
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | [`record`] | the strict record parser, and a `Display` that parses back |
//! | [`macros`] | macro strings: parsing, expansion, the query-name rules |
//! | [`eval`] | `check_host()` over the [`SpfDns`] trait, with its limits |
//! | this file | the identities, and [`SpfDns`] over [`crate::dns::Dns`] |

pub mod eval;
pub mod macros;
pub mod record;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{SystemTime, UNIX_EPOCH};

pub use eval::{Params, SpfDns, SpfOutcome, SpfResult, check_host, is_valid_domain};
pub use record::Record;

use crate::dns::{Answer, Dns};
use crate::envelope::{AuthStatus, SpfFact};

impl SpfDns for Dns {
    fn txt(&self, name: &str) -> impl Future<Output = Answer<Vec<Vec<u8>>>> + Send {
        self.txt_records(name)
    }
    fn a(&self, name: &str) -> impl Future<Output = Answer<Vec<Ipv4Addr>>> + Send {
        self.a_records(name)
    }
    fn aaaa(&self, name: &str) -> impl Future<Output = Answer<Vec<Ipv6Addr>>> + Send {
        self.aaaa_records(name)
    }
    fn mx(&self, name: &str) -> impl Future<Output = Answer<Vec<(u16, String)>>> + Send {
        self.mx_records(name)
    }
    fn ptr(&self, ip: IpAddr) -> impl Future<Output = Answer<Vec<String>>> + Send {
        self.ptr_records(ip)
    }
}

impl From<SpfResult> for AuthStatus {
    fn from(r: SpfResult) -> AuthStatus {
        match r {
            SpfResult::None => AuthStatus::None,
            SpfResult::Neutral => AuthStatus::Neutral,
            SpfResult::Pass => AuthStatus::Pass,
            SpfResult::Fail => AuthStatus::Fail,
            SpfResult::SoftFail => AuthStatus::SoftFail,
            SpfResult::TempError => AuthStatus::TempError,
            SpfResult::PermError => AuthStatus::PermError,
        }
    }
}

/// `(HELO result, MAIL FROM result)` for a client at `ip`; `host` is our own name
/// (`%{r}`), `sender` the MAIL FROM address (`""` for the null sender).
pub async fn check<D: SpfDns>(
    dns: &D,
    ip: IpAddr,
    helo: &str,
    host: &str,
    sender: &str,
) -> (SpfFact, SpfFact) {
    let (h, m) = check_outcomes(dns, ip, helo, host, sender).await;
    (fact(h), fact(m))
}

/// One identity's outcome and the domain it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// The domain whose record was checked (lower case).
    pub domain: String,
    pub result: SpfResult,
    pub explanation: Option<String>,
    pub reason: String,
}

/// Like [`check`], with the explanations and reasons.
pub async fn check_outcomes<D: SpfDns>(
    dns: &D,
    ip: IpAddr,
    helo: &str,
    host: &str,
    sender: &str,
) -> (Checked, Checked) {
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let params = Params {
        ip,
        domain: helo,
        sender: "",
        helo,
        receiver: host,
        timestamp,
    };
    let helo_checked = if is_valid_domain(helo) {
        let postmaster = format!("postmaster@{helo}");
        let p = Params {
            sender: &postmaster,
            ..params
        };
        evaluate(dns, "helo", &p).await
    } else {
        none(helo, "the HELO name is not a domain name")
    };
    if sender.is_empty() {
        // The null sender's identity *is* the HELO: one check serves both.
        return (helo_checked.clone(), helo_checked);
    }
    let Some((_, domain)) = sender.rsplit_once('@') else {
        return (helo_checked, none(sender, "the sender has no domain"));
    };
    let p = Params {
        domain,
        sender,
        ..params
    };
    let mail_from = evaluate(dns, "mailfrom", &p).await;
    (helo_checked, mail_from)
}

async fn evaluate<D: SpfDns>(dns: &D, identity: &str, p: &Params<'_>) -> Checked {
    let out = check_host(dns, p).await;
    tracing::debug!(
        identity,
        domain = p.domain,
        client = %p.ip,
        result = out.result.as_str(),
        reason = out.reason,
        explanation = out.explanation.as_deref().unwrap_or(""),
        "spf"
    );
    Checked {
        domain: p.domain.to_ascii_lowercase(),
        result: out.result,
        explanation: out.explanation,
        reason: out.reason,
    }
}

fn none(domain: &str, reason: &str) -> Checked {
    Checked {
        domain: domain.to_ascii_lowercase(),
        result: SpfResult::None,
        explanation: None,
        reason: reason.to_owned(),
    }
}

fn fact(c: Checked) -> SpfFact {
    SpfFact {
        status: c.result.into(),
        domain: c.domain,
    }
}
