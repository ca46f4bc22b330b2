//! Checks: sender authentication (SPF, DKIM, DMARC, ARC) and client reputation (DNS
//! lists, reverse DNS), run by the session *before* a stage's rules, lazily — only the
//! checks some rule of the stage tests, or the Authentication-Results header needs —
//! each under a deadline. Results go into [`AuthFacts`], so the rule evaluation stays
//! a pure function of the facts.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | `mailauth` | the one wrapper over mail-auth 0.13 for DKIM, DMARC, ARC (the 0.15 upgrade touches only it); ARC (RFC 8617) is reported in the header only: no rule condition uses it until there is a list of trusted sealers |
//! | `spf` | our RFC 7208 evaluator: record parser, macros, `check_host()`, identities |
//! | `dkim` | signatures RFC 6376/8301 refuse (rsa-sha1, no `v=`, short keys, …), the relaxed-body workaround for mail-auth bug #62 |
//! | `dmarc` | author domains of every From field, several records, RFC 7489 `pct`, DNS trouble behind a failure |
//! | `dnsbl` | DNS block/allow lists: display names, codes, masks, weights, unusable zones |
//! | `rdns` | PTR, FCrDNS, generic names |
//! | `auth_results` | the RFC 8601 header and removal of forged ones |
//! | `greylist` | the greylist triplet and its store call |
//! | `ratelimit` | rate-limit keys and their store call |
//! | `pending` | a store-backed check left by a rule, resolved by the session |

pub mod auth_results;
pub mod dkim;
pub mod dmarc;
pub mod dnsbl;
pub mod greylist;
mod mailauth;
pub mod pending;
pub mod ratelimit;
pub mod rdns;
pub mod spf;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use regex::RegexSet;

use crate::config::{Config, OnDnsError};
use crate::dns::Dns;
use crate::envelope::{
    AuthFacts, AuthStatus, Checks, DmarcFact, DnsblFact, RdnsFact, RdnsStatus, SpfFact,
};
use crate::telemetry::{DnsblResult, Metrics};

pub use greylist::GreylistCheck;
pub use mailauth::Authenticator;
pub(crate) use pending::secs_ceil;
pub use pending::{Check, FailMode, Pending, resolve};
pub use ratelimit::RateLimitCheck;

/// What the checks look at: the client, the envelope, and at end of data the message.
#[derive(Debug, Clone, Copy)]
pub struct CheckInput<'a> {
    pub ip: IpAddr,
    pub helo: Option<&'a str>,
    /// MAIL FROM (`""` for the null sender), once given.
    pub sender: Option<&'a str>,
    /// The whole message with CRLF line ends, at end of data.
    pub message: Option<&'a [u8]>,
}

/// The checks and their shared handles (resolver, mail-auth, settings, metrics).
pub struct Checker {
    dns: Dns,
    auth: Authenticator,
    config: Arc<Config>,
    generic: RegexSet,
    metrics: Arc<Metrics>,
}

impl Checker {
    pub fn new(config: Arc<Config>, dns: Dns, metrics: Arc<Metrics>) -> Checker {
        let generic = RegexSet::new(
            config
                .checks
                .rdns
                .generic
                .iter()
                .map(|g| format!("(?i){g}")),
        )
        .unwrap_or_else(|_| RegexSet::empty());
        Checker {
            auth: Authenticator::new(&dns),
            dns,
            config,
            generic,
            metrics,
        }
    }

    /// The checks to run before `stage_needs`' rules: those, plus with
    /// `auth_results: true` what the header reports (SPF from `mail` on, the message
    /// checks at `data`). `auto` adds nothing: the header reports what ran.
    pub fn wanted(&self, stage_needs: Checks, at_data: bool, at_mail: bool) -> Checks {
        let mut w = stage_needs;
        if self.config.checks.auth_results.runs_all() {
            if at_mail || at_data {
                w |= Checks::SPF;
            }
            if at_data {
                w |= Checks::DKIM | Checks::DMARC | Checks::ARC;
            }
        }
        w
    }

    /// Runs every check in `want` that has not run yet and whose input exists, and
    /// records results, metrics and DNS trouble in `facts`.
    pub async fn run(&self, want: Checks, input: &CheckInput<'_>, facts: &mut AuthFacts) {
        let limit = self.config.checks.timeout;
        if want.contains(Checks::DNSBL) && facts.dnsbl.is_none() {
            let zones = &self.config.checks.dnsbl.zones;
            let started = Instant::now();
            let (fact, trouble) = deadline(limit, dnsbl::check(&self.dns, input.ip, zones))
                .await
                .unwrap_or_else(|| {
                    let unusable = zones.iter().map(|z| z.display_name()).collect();
                    (
                        DnsblFact {
                            unusable,
                            ..DnsblFact::default()
                        },
                        true,
                    )
                });
            let result = if !fact.hits.is_empty() {
                DnsblResult::Listed
            } else if !fact.unusable.is_empty() {
                DnsblResult::Unusable
            } else {
                DnsblResult::Clean
            };
            self.metrics.checks.dnsbl(result, started.elapsed());
            self.record_zones(&fact);
            if trouble && self.config.checks.dnsbl.on_dns_error == OnDnsError::Tempfail {
                facts.degraded |= Checks::DNSBL;
            }
            facts.dnsbl = Some(fact);
        }
        if want.contains(Checks::RDNS) && facts.rdns.is_none() {
            let started = Instant::now();
            let fact = deadline(limit, rdns::check(&self.dns, input.ip, &self.generic))
                .await
                .unwrap_or(RdnsFact {
                    status: RdnsStatus::TempError,
                    name: None,
                    generic: false,
                });
            self.metrics.checks.rdns(fact.status, started.elapsed());
            if fact.status == RdnsStatus::TempError
                && self.config.checks.rdns.on_dns_error == OnDnsError::Tempfail
            {
                facts.degraded |= Checks::RDNS;
            }
            facts.rdns = Some(fact);
        }
        let wants_spf = want.intersects(Checks::SPF | Checks::SPF_HELO | Checks::DMARC);
        if wants_spf
            && facts.spf.is_none()
            && let (Some(helo), Some(sender)) = (input.helo, input.sender)
        {
            let started = Instant::now();
            let host = &self.config.hostname;
            let temp = || SpfFact {
                status: AuthStatus::TempError,
                domain: String::new(),
            };
            let (h, m) = deadline(limit, spf::check(&self.dns, input.ip, helo, host, sender))
                .await
                .unwrap_or_else(|| (temp(), temp()));
            self.metrics
                .checks
                .spf(h.status, m.status, started.elapsed());
            if self.config.checks.spf.on_dns_error == OnDnsError::Tempfail {
                if m.status == AuthStatus::TempError {
                    facts.degraded |= Checks::SPF;
                }
                if h.status == AuthStatus::TempError {
                    facts.degraded |= Checks::SPF_HELO;
                }
            }
            facts.spf_helo = Some(h);
            facts.spf = Some(m);
        }
        let msg_checks = Checks::DKIM | Checks::DMARC | Checks::ARC;
        if want.intersects(msg_checks)
            && facts.dkim.is_none()
            && let Some(raw) = input.message
        {
            self.message_checks(want, input, raw, facts).await;
        }
    }

    async fn message_checks(
        &self,
        want: Checks,
        input: &CheckInput<'_>,
        raw: &[u8],
        facts: &mut AuthFacts,
    ) {
        let cfg = &self.config.checks;
        let started = Instant::now();
        let sender = input.sender.unwrap_or("");
        let mail_from_domain = match sender.rsplit_once('@') {
            Some((_, d)) => d.to_owned(),
            None => input.helo.unwrap_or("").to_owned(),
        };
        let want_dmarc = want.contains(Checks::DMARC);
        let want_arc = want.contains(Checks::ARC);
        let results = deadline(
            cfg.timeout,
            self.auth.verify_message(
                &self.dns,
                raw,
                &mail_from_domain,
                facts.spf.as_ref(),
                mailauth::MessageOptions {
                    max_signatures: cfg.dkim.max_signatures,
                    max_rsa_bits: cfg.dkim.max_rsa_bits,
                    dmarc: want_dmarc,
                    arc: want_arc,
                },
            ),
        )
        .await;
        let results = results.unwrap_or_else(|| mailauth::MessageResults {
            dkim: vec![crate::envelope::DkimSignatureFact {
                status: AuthStatus::TempError,
                domain: String::new(),
                selector: String::new(),
                algorithm: String::new(),
                reason: Some("deadline exceeded".into()),
            }],
            dmarc: want_dmarc.then(|| DmarcFact {
                status: AuthStatus::TempError,
                domain: String::new(),
                policy: "none",
                reason: None,
            }),
            arc: want_arc.then_some(AuthStatus::TempError),
        });
        facts.dkim = Some(results.dkim);
        facts.dmarc = results.dmarc;
        if let Some(d) = facts.dmarc.as_mut() {
            deadline(cfg.timeout, dmarc::apply_pct(&self.dns, d, raw)).await;
        }
        facts.arc = results.arc;
        let dkim = facts.dkim_status().unwrap_or(AuthStatus::None);
        self.metrics.checks.dkim(dkim, started.elapsed());
        if facts
            .dkim
            .as_ref()
            .is_some_and(|v| v.iter().any(|s| s.status == AuthStatus::TempError))
            && cfg.dkim.on_dns_error == OnDnsError::Tempfail
        {
            facts.degraded |= Checks::DKIM;
        }
        if let Some(d) = &facts.dmarc {
            self.metrics
                .checks
                .dmarc(d.status, d.reason, started.elapsed());
            if dmarc::maybe_dns_trouble(facts) && cfg.dmarc.on_dns_error == OnDnsError::Tempfail {
                facts.degraded |= Checks::DMARC;
            }
        }
        if let Some(a) = facts.arc {
            self.metrics.checks.arc(a, started.elapsed());
            if a == AuthStatus::TempError && cfg.arc.on_dns_error == OnDnsError::Tempfail {
                facts.degraded |= Checks::ARC;
            }
        }
    }

    /// Per zone, by display name: which list listed, which was unusable.
    fn record_zones(&self, fact: &DnsblFact) {
        for z in &self.config.checks.dnsbl.zones {
            let name = z.display_name();
            let result = if fact.hits.iter().any(|h| h.zone == name) {
                DnsblResult::Listed
            } else if fact.unusable.contains(&name) {
                DnsblResult::Unusable
            } else {
                DnsblResult::Clean
            };
            self.metrics.checks.dnsbl_zone(&name, result);
        }
    }
}

async fn deadline<T>(limit: Duration, f: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::time::timeout(limit, f).await.ok()
}
