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
    pub async fn verify_message(
        &self,
        raw: &[u8],
        mail_from_domain: &str,
        spf: Option<&SpfFact>,
        opts: MessageOptions,
    ) -> MessageResults {
        let MessageOptions {
            max_signatures,
            max_rsa_bits,
            dmarc,
            arc,
        } = opts;
        let Some(mut msg) = AuthenticatedMessage::parse(raw) else {
            // Not parseable as a message: no signature we could check.
            return MessageResults {
                dkim: Vec::new(),
                dmarc: dmarc.then(|| DmarcFact {
                    status: AuthStatus::PermError,
                    domain: String::new(),
                    policy: "none",
                }),
                arc: arc.then_some(AuthStatus::None),
            };
        };
        msg.dkim_headers.truncate(max_signatures);
        // Signatures whose RSA key is too large are not verified at all (the lookup
        // here fills the shared cache that mail-auth's own lookup then hits).
        let mut oversized = Vec::new();
        let mut kept = Vec::with_capacity(msg.dkim_headers.len());
        for h in std::mem::take(&mut msg.dkim_headers) {
            let name = format!("{}._domainkey.{}.", h.header.s, h.header.d);
            let too_large = match self.0.0.txt_lookup(name.as_str()).await {
                Ok(l) => l.answers().iter().any(|r| match &r.data {
                    RData::TXT(t) => {
                        let rec: Vec<u8> =
                            t.txt_data.iter().flat_map(|c| c.iter().copied()).collect();
                        rsa_key_too_large(&String::from_utf8_lossy(&rec), max_rsa_bits)
                    }
                    _ => false,
                }),
                Err(_) => false,
            };
            if too_large {
                oversized.push(DkimSignatureFact {
                    status: AuthStatus::PermError,
                    domain: h.header.d.to_ascii_lowercase(),
                    selector: h.header.s.clone(),
                    algorithm: "rsa".into(),
                    reason: Some(format!("key larger than {max_rsa_bits} bits")),
                });
            } else {
                kept.push(h);
            }
        }
        msg.dkim_headers = kept;
        let mut outputs = self.0.verify_dkim(&msg).await;
        // mail-auth 0.13.3 bug #62: relaxed body canonicalisation keeps trailing
        // whitespace-only lines, so a correct signature over such a body fails on the
        // body hash. RFC 6376 §3.4.4 drops those lines; verify once more on a copy
        // without them, for relaxed-body signatures without `l=` that failed only on
        // the body hash. Fixed upstream in 0.15: remove this with the upgrade.
        let retry_idx: Vec<usize> = outputs
            .iter()
            .enumerate()
            .filter(|(_, o)| body_hash_only_failure(o))
            .map(|(i, _)| i)
            .collect();
        let stripped;
        if !retry_idx.is_empty()
            && let Some(copy) = strip_trailing_blank_lines(raw)
        {
            stripped = copy;
            if let Some(mut msg2) = AuthenticatedMessage::parse(&stripped) {
                msg2.dkim_headers.truncate(max_signatures);
                let again = self.0.verify_dkim(&msg2).await;
                for i in retry_idx {
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
        }
        let mut dkim: Vec<DkimSignatureFact> = outputs.iter().map(dkim_fact).collect();
        dkim.extend(oversized);
        let dmarc = if dmarc {
            let spf_out = spf.map_or_else(
                || SpfOutput::new(mail_from_domain.to_owned()),
                |f| SpfOutput::new(f.domain.clone()).with_result(spf_result_back(f.status)),
            );
            let out = self
                .0
                .verify_dmarc(DmarcParameters::new(
                    &msg,
                    &outputs,
                    mail_from_domain,
                    &spf_out,
                ))
                .await;
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
            let domain = msg
                .from
                .first()
                .and_then(|f| f.rsplit_once('@'))
                .map_or(String::new(), |(_, d)| d.to_ascii_lowercase());
            Some(DmarcFact {
                status,
                domain,
                policy,
            })
        } else {
            None
        };
        let arc = if arc {
            let out = self.0.verify_arc(&msg).await;
            Some(dkim_status(out.result()))
        } else {
            None
        };
        MessageResults { dkim, dmarc, arc }
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
        let a = match s.a {
            mail_auth::common::crypto::Algorithm::RsaSha1 => "rsa-sha1",
            mail_auth::common::crypto::Algorithm::RsaSha256 => "rsa-sha256",
            mail_auth::common::crypto::Algorithm::Ed25519Sha256 => "ed25519-sha256",
        };
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
