//! The only file that speaks mail-auth (0.13.3). Everything else sees our own result
//! types ([`crate::envelope`]), so the move to mail-auth 0.15 (new parameter names, one
//! `DnsCache` trait, `MessageAuthenticator::new`) touches this file alone.
//!
//! mail-auth 0.13 takes our resolver (`MessageAuthenticator` has a public field), so
//! its DKIM/DMARC lookups share the cache of [`crate::dns::Dns`]. SPF is ours
//! ([`super::spf`]); DMARC gets our SPF result through `verify_message`.

use mail_auth::dkim::Canonicalization;
use mail_auth::dkim::DkimError;
use mail_auth::dmarc::Policy;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::{
    AuthenticatedMessage, DkimOutput, DkimResult, DmarcResult, Error, MessageAuthenticator,
    SpfOutput, SpfResult,
};

use hickory_resolver::proto::rr::RData;

use super::dkim::{rsa_key_too_large, strip_trailing_blank_lines};
use crate::envelope::{AuthStatus, DkimSignatureFact, DmarcFact, SpfFact};

use mail_auth::DmarcOutput;
use mail_auth::common::crypto::Algorithm;
use mail_auth::common::headers::Header;
use mail_auth::dkim::Signature;

use super::dkim::{MIN_RSA_BITS, Screened, rsa_key_bits, screen_signature};
use super::dmarc::{self, Discovered};
use crate::dns::Dns;
use crate::envelope::DmarcReason;

/// mail-auth over our shared resolver.
pub struct Authenticator(MessageAuthenticator);

/// Which message checks to run, and their limits.
#[derive(Debug, Clone, Copy)]
pub struct MessageOptions {
    /// Signatures verified; later ones are ignored.
    pub max_signatures: usize,
    /// RSA keys larger than this are a `permerror` without any RSA work.
    pub max_rsa_bits: usize,
    pub dmarc: bool,
    pub arc: bool,
}

/// What one message yielded at end of data.
#[derive(Debug, Default)]
pub struct MessageResults {
    pub dkim: Vec<DkimSignatureFact>,
    pub dmarc: Option<DmarcFact>,
    pub arc: Option<AuthStatus>,
}

impl Authenticator {
    pub fn new(dns: &crate::dns::Dns) -> Self {
        Authenticator(MessageAuthenticator(dns.resolver().clone()))
    }

    /// DKIM (within the limits of `opts`), then DMARC and ARC when asked, on a raw
    /// message with CRLF line ends. `spf` is the MAIL FROM result DMARC aligns with.
    ///
    /// Every DKIM-Signature field (up to `max_signatures`) yields one result, in
    /// header order: those [`screen_signature`] or the key checks refuse are a
    /// `permerror` with the reason and are never verified, so no rsa-sha1 or short-key
    /// signature can pass or count for DMARC. DMARC is evaluated per author domain.
    pub async fn verify_message(
        &self,
        dns: &Dns,
        raw: &[u8],
        mail_from_domain: &str,
        spf: Option<&SpfFact>,
        opts: MessageOptions,
    ) -> MessageResults {
        let Some(mut msg) = AuthenticatedMessage::parse(raw) else {
            // Not parseable as a message: no signature we could check, no author.
            return MessageResults {
                dkim: Vec::new(),
                dmarc: opts.dmarc.then(|| DmarcFact {
                    status: AuthStatus::PermError,
                    domain: String::new(),
                    policy: "none",
                    reason: Some(DmarcReason::NoFrom),
                }),
                arc: opts.arc.then_some(AuthStatus::None),
            };
        };
        let slots = self.screen(&mut msg, opts).await;
        let mut outputs = self.0.verify_dkim(&msg).await;
        // Signatures mail-auth could not parse come back without one: `screen` has
        // reported each of them already.
        outputs.retain(|o| o.signature().is_some());
        self.retry_relaxed_bodies(raw, &msg, &mut outputs).await;
        let dkim = slots
            .into_iter()
            .map(|slot| match slot {
                Slot::Refused(f) => f,
                Slot::Verify(j) => {
                    let sig = &msg.dkim_headers[j].header;
                    outputs
                        .iter()
                        .find(|o| o.signature().is_some_and(|s| std::ptr::eq(s, sig)))
                        .map_or_else(|| refused(&screened_of(sig), "not verified"), dkim_fact)
                }
            })
            .collect();
        let dmarc = if opts.dmarc {
            Some(self.dmarc(dns, &msg, &outputs, mail_from_domain, spf).await)
        } else {
            None
        };
        let arc = if opts.arc {
            let out = self.0.verify_arc(&msg).await;
            Some(dkim_status(out.result()))
        } else {
            None
        };
        MessageResults { dkim, dmarc, arc }
    }

    /// Decides, for each DKIM-Signature field in header order, whether it is refused
    /// (malformed, rsa-sha1, no `v=`, `i=` outside `d=`, a key too small or too large)
    /// or verified; leaves only the latter in `msg.dkim_headers`.
    async fn screen<'x>(
        &self,
        msg: &mut AuthenticatedMessage<'x>,
        opts: MessageOptions,
    ) -> Vec<Slot> {
        let mut parsed: Vec<Option<Header<'x, Signature>>> = std::mem::take(&mut msg.dkim_headers)
            .into_iter()
            .map(Some)
            .collect();
        let fields: Vec<&'x [u8]> = msg
            .headers
            .iter()
            .filter(|(name, _)| name.trim_ascii().eq_ignore_ascii_case(b"DKIM-Signature"))
            .map(|(_, value)| *value)
            .take(opts.max_signatures)
            .collect();
        let mut slots = Vec::with_capacity(fields.len());
        for value in fields {
            let screened = screen_signature(value);
            if let Some(why) = &screened.refusal {
                slots.push(Slot::Refused(refused(&screened, why)));
                continue;
            }
            let same = |v: &[u8]| std::ptr::eq(v.as_ptr(), value.as_ptr());
            let Some(h) = parsed
                .iter_mut()
                .find(|h| h.as_ref().is_some_and(|h| same(h.value)))
                .and_then(Option::take)
            else {
                // Well-formed to us, refused by mail-auth's parser (e.g. `l=`).
                let why = msg.errors.iter().find(|e| same(e.value)).map_or_else(
                    || "unparsable signature".to_owned(),
                    |e| e.header.to_string(),
                );
                slots.push(Slot::Refused(refused(&screened, &why)));
                continue;
            };
            match self.key_refusal(&h.header, opts.max_rsa_bits).await {
                Some(why) => slots.push(Slot::Refused(refused(&screened, &why))),
                None => {
                    msg.dkim_headers.push(h);
                    slots.push(Slot::Verify(msg.dkim_headers.len() - 1));
                }
            }
        }
        slots
    }

    /// Why the signature's RSA key is not acceptable, read from its key record before
    /// any RSA work: larger than `max_rsa_bits`, or under 1024 bits (RFC 8301). The
    /// lookup fills the shared cache that mail-auth's own lookup then hits.
    async fn key_refusal(&self, sig: &Signature, max_rsa_bits: usize) -> Option<String> {
        let name = format!("{}._domainkey.{}.", sig.s, sig.d);
        let lookup = self.0.0.txt_lookup(name.as_str()).await.ok()?;
        let records = lookup.answers().iter().filter_map(|r| match &r.data {
            RData::TXT(t) => {
                let rec: Vec<u8> = t.txt_data.iter().flat_map(|c| c.iter().copied()).collect();
                Some(String::from_utf8_lossy(&rec).into_owned())
            }
            _ => None,
        });
        for rec in records {
            if rsa_key_too_large(&rec, max_rsa_bits) {
                return Some(format!("key larger than {max_rsa_bits} bits"));
            }
            if sig.a != Algorithm::Ed25519Sha256
                && let Some(bits) = rsa_key_bits(&rec)
                && bits < MIN_RSA_BITS
            {
                return Some(format!(
                    "RSA key of {bits} bits is under {MIN_RSA_BITS} bits (RFC 8301)"
                ));
            }
        }
        None
    }

    /// mail-auth 0.13.3 bug #62: relaxed body canonicalisation keeps trailing
    /// whitespace-only lines, so a correct signature over such a body fails on the body
    /// hash. RFC 6376 §3.4.4 drops those lines; verify once more on a copy without them,
    /// for relaxed-body signatures without `l=` that failed only on the body hash.
    /// Fixed upstream in 0.15: remove this with the upgrade.
    async fn retry_relaxed_bodies<'x>(
        &self,
        raw: &[u8],
        msg: &'x AuthenticatedMessage<'x>,
        outputs: &mut [DkimOutput<'x>],
    ) {
        let retry: Vec<usize> = outputs
            .iter()
            .enumerate()
            .filter(|(_, o)| body_hash_only_failure(o))
            .map(|(i, _)| i)
            .collect();
        if retry.is_empty() {
            return;
        }
        let Some(stripped) = strip_trailing_blank_lines(raw) else {
            return;
        };
        let Some(mut msg2) = AuthenticatedMessage::parse(&stripped) else {
            return;
        };
        let wanted: Vec<Vec<u8>> = retry
            .iter()
            .filter_map(|i| outputs[*i].signature().map(|s| s.b.clone()))
            .collect();
        msg2.dkim_headers.retain(|h| wanted.contains(&h.header.b));
        let again = self.0.verify_dkim(&msg2).await;
        for i in retry {
            let Some(b) = outputs[i].signature().map(|s| s.b.clone()) else {
                continue;
            };
            let passed = again.iter().any(|a| {
                a.result() == &DkimResult::Pass && a.signature().is_some_and(|s| s.b == b)
            });
            if passed && let Some(h) = msg.dkim_headers.iter().find(|h| h.header.b == b) {
                outputs[i] = DkimOutput::pass().with_signature(&h.header);
            }
        }
    }

    /// DMARC for every author domain of every From field, the strictest result kept
    /// (RFC 7489 §6.6.1: mail-auth alone skips a From with several domains), with the
    /// reason when the From fields are not one, and `none` for an author domain with
    /// several DMARC records (§6.6.3).
    async fn dmarc(
        &self,
        dns: &Dns,
        msg: &AuthenticatedMessage<'_>,
        dkim: &[DkimOutput<'_>],
        mail_from_domain: &str,
        spf: Option<&SpfFact>,
    ) -> DmarcFact {
        let from_fields = msg
            .headers
            .iter()
            .filter(|(name, _)| name.trim_ascii().eq_ignore_ascii_case(b"From"))
            .count();
        let authors = dmarc::authors(from_fields, &msg.from);
        let spf_out = spf.map_or_else(
            || SpfOutput::new(mail_from_domain.to_owned()),
            |f| SpfOutput::new(f.domain.clone()).with_result(spf_result_back(f.status)),
        );
        let mut strictest: Option<DmarcFact> = None;
        for address in &authors.addresses {
            let domain = address.rsplit_once('@').map_or("", |(_, d)| d);
            let fact = if dmarc::discover(dns, domain).await == Discovered::Multiple {
                dmarc::several_records(domain)
            } else {
                let author = AuthenticatedMessage {
                    from: vec![address.clone()],
                    ..AuthenticatedMessage::default()
                };
                let out = self
                    .0
                    .verify_dmarc(DmarcParameters::new(
                        &author,
                        dkim,
                        mail_from_domain,
                        &spf_out,
                    ))
                    .await;
                dmarc_fact(&out, domain)
            };
            strictest = Some(match strictest {
                Some(s) => dmarc::strictest(s, fact),
                None => fact,
            });
        }
        let mut fact = strictest.unwrap_or(DmarcFact {
            status: AuthStatus::PermError,
            domain: String::new(),
            policy: "none",
            reason: None,
        });
        if authors.reason.is_some() {
            fact.reason = authors.reason;
        }
        fact
    }
}

/// One DKIM-Signature field on its way to a result.
enum Slot {
    /// Refused before verification: this is its result.
    Refused(DkimSignatureFact),
    /// Verified by mail-auth: the index in `dkim_headers`.
    Verify(usize),
}

fn refused(s: &Screened, why: &str) -> DkimSignatureFact {
    DkimSignatureFact {
        status: AuthStatus::PermError,
        domain: s.domain.clone(),
        selector: s.selector.clone(),
        algorithm: s.algorithm.clone(),
        reason: Some(why.to_owned()),
    }
}

fn screened_of(sig: &Signature) -> Screened {
    Screened {
        domain: sig.d.to_ascii_lowercase(),
        selector: sig.s.clone(),
        algorithm: algorithm_name(sig.a).to_owned(),
        refusal: None,
    }
}

fn algorithm_name(a: Algorithm) -> &'static str {
    match a {
        Algorithm::RsaSha1 => "rsa-sha1",
        Algorithm::RsaSha256 => "rsa-sha256",
        Algorithm::Ed25519Sha256 => "ed25519-sha256",
    }
}

/// Our fact from mail-auth's DMARC output for one author domain.
fn dmarc_fact(out: &DmarcOutput, domain: &str) -> DmarcFact {
    let status = match out.result() {
        DmarcResult::Pass => AuthStatus::Pass,
        DmarcResult::Fail(_) => AuthStatus::Fail,
        DmarcResult::TempError(_) => AuthStatus::TempError,
        DmarcResult::PermError(_) => AuthStatus::PermError,
        DmarcResult::None => AuthStatus::None,
    };
    // mail-auth already lowers the policy one step for `t=y` (testing).
    let policy = match out.policy() {
        Policy::Reject => "reject",
        Policy::Quarantine => "quarantine",
        Policy::None | Policy::Unspecified => "none",
    };
    DmarcFact {
        status,
        domain: domain.to_ascii_lowercase(),
        policy,
        reason: None,
    }
}

fn body_hash_only_failure(o: &DkimOutput<'_>) -> bool {
    matches!(
        o.result(),
        DkimResult::Neutral(Error::Dkim(DkimError::FailedBodyHashMatch))
            | DkimResult::Fail(Error::Dkim(DkimError::FailedBodyHashMatch))
    ) && o
        .signature()
        .is_some_and(|s| s.cb == Canonicalization::Relaxed && s.l == 0)
}

fn spf_result_back(s: AuthStatus) -> SpfResult {
    match s {
        AuthStatus::Pass => SpfResult::Pass,
        AuthStatus::Fail => SpfResult::Fail,
        AuthStatus::SoftFail => SpfResult::SoftFail,
        AuthStatus::Neutral => SpfResult::Neutral,
        AuthStatus::TempError => SpfResult::TempError,
        AuthStatus::PermError => SpfResult::PermError,
        AuthStatus::None => SpfResult::None,
    }
}

/// RFC 8601 names: a body that does not match its hash is a `fail` (mail-auth says
/// "neutral"); other unprocessable signatures are `neutral`.
fn dkim_status(r: &DkimResult) -> AuthStatus {
    match r {
        DkimResult::Pass => AuthStatus::Pass,
        DkimResult::Fail(_) => AuthStatus::Fail,
        DkimResult::Neutral(Error::Dkim(DkimError::FailedBodyHashMatch)) => AuthStatus::Fail,
        DkimResult::Neutral(_) => AuthStatus::Neutral,
        DkimResult::TempError(_) => AuthStatus::TempError,
        DkimResult::PermError(_) => AuthStatus::PermError,
        DkimResult::None => AuthStatus::None,
    }
}

fn dkim_fact(o: &DkimOutput<'_>) -> DkimSignatureFact {
    let reason = match o.result() {
        DkimResult::Pass | DkimResult::None => None,
        DkimResult::Fail(e)
        | DkimResult::Neutral(e)
        | DkimResult::TempError(e)
        | DkimResult::PermError(e) => Some(e.to_string()),
    };
    let (domain, selector, algorithm) = o.signature().map_or_else(Default::default, |s| {
        let a = algorithm_name(s.a);
        (s.d.to_ascii_lowercase(), s.s.clone(), a.to_owned())
    });
    DkimSignatureFact {
        status: dkim_status(o.result()),
        domain,
        selector,
        algorithm,
        reason,
    }
}
