//! SPF (RFC 7208) for the HELO and the MAIL FROM identities.
//!
//! mail-auth enforces the 10 DNS-lookup and 2 void-lookup limits (a `permerror`).
//! The null sender is checked as `postmaster@<HELO>` (RFC 7208 §2.4); a HELO that is an
//! address literal has no SPF identity (`none`).

use std::net::IpAddr;

use super::mailauth::Authenticator;
use crate::envelope::{AuthStatus, SpfFact};

fn none(domain: &str) -> SpfFact {
    SpfFact {
        status: AuthStatus::None,
        domain: domain.to_ascii_lowercase(),
    }
}

fn is_domain(helo: &str) -> bool {
    !helo.starts_with('[') && helo.parse::<IpAddr>().is_err() && helo.contains('.')
}

/// `(HELO result, MAIL FROM result)`.
pub async fn check(
    auth: &Authenticator,
    ip: IpAddr,
    helo: &str,
    host: &str,
    sender: &str,
) -> (SpfFact, SpfFact) {
    let helo_fact = if is_domain(helo) {
        auth.spf_helo(ip, helo, host).await
    } else {
        none(helo)
    };
    let from = if sender.is_empty() {
        if !is_domain(helo) {
            return (helo_fact, none(helo));
        }
        format!("postmaster@{helo}")
    } else {
        sender.to_owned()
    };
    let Some((_, domain)) = from.rsplit_once('@').filter(|(_, d)| d.contains('.')) else {
        return (helo_fact, none(&from));
    };
    if sender.is_empty() {
        // The null sender's identity *is* the HELO: one check serves both.
        let mut f = helo_fact.clone();
        f.domain = domain.to_ascii_lowercase();
        return (helo_fact, f);
    }
    let mf = auth.spf_mail_from(ip, helo, host, &from).await;
    (helo_fact, mf)
}
