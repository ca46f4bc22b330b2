//! Greylisting: refuse the first attempt of an unknown (client network, sender,
//! recipient) triplet with `451 4.7.1`; real MTAs retry, most spam engines do not.
//!
//! The triplet is built so that real senders are not hurt: the client's network, not
//! its address (a pool of outgoing servers in one /24 or /64 retries from another
//! address; IPv4-mapped IPv6 counts as IPv4), and the sender without BATV or SRS tags
//! (which change on every attempt). A client network that passed `auto_allow_after`
//! times is not greylisted at all.

use std::net::IpAddr;

use crate::config::IpNet;
use crate::reply::{Reply, StatusCode};
use crate::store::{GreyOutcome, GreyParams, Store, StoreError};
use crate::telemetry::Metrics;

/// A greylist decision prepared from the facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GreylistCheck {
    /// `net|sender|recipient` (parts left out of the rule's key are empty).
    pub triplet: String,
    /// The client network, for auto-allow.
    pub net: String,
    pub params: GreyParams,
}

/// The client network key: IPv4 /`v4` (default 24), IPv6 /`v6` (default 64), mapped
/// IPv4 folded first.
pub fn net_key(ip: IpAddr, v4: u8, v6: u8) -> String {
    IpNet::containing(ip, v4, v6).to_string()
}

/// The sender as greylisting sees it: lower case, BATV (`prvs=TAG=local@d`) and SRS
/// (`SRS0=H=TT=orig.domain=local@fwd`, `SRS1=H=fwd==H=TT=orig.domain=local@fwd2`)
/// tags removed, so the address is the same on every retry.
pub fn normalize_sender(sender: &str) -> String {
    let lower = sender.to_ascii_lowercase();
    let Some((local, domain)) = lower.rsplit_once('@') else {
        return lower;
    };
    // SRS: the original address is inside the local part.
    let srs_tail = if let Some(rest) = local.strip_prefix("srs0=") {
        Some(rest)
    } else if local.starts_with("srs1=") {
        local.split_once("==").map(|(_, t)| t)
    } else {
        None
    };
    if let Some(tail) = srs_tail {
        let parts: Vec<&str> = tail.splitn(4, '=').collect();
        if let [_hash, _stamp, orig_domain, orig_local] = parts[..]
            && !orig_domain.is_empty()
            && !orig_local.is_empty()
        {
            return format!("{orig_local}@{orig_domain}");
        }
    }
    // BATV: prvs=TAG=local (RFC draft), also the msprvs1 and btv1 variants.
    for prefix in ["prvs=", "msprvs1=", "btv1="] {
        if let Some(rest) = local.strip_prefix(prefix)
            && let Some((_tag, orig_local)) = rest.split_once('=')
            && !orig_local.is_empty()
        {
            return format!("{orig_local}@{domain}");
        }
    }
    lower
}

impl GreylistCheck {
    pub(crate) async fn run(
        &self,
        store: &dyn Store,
        metrics: &Metrics,
    ) -> Result<Option<Reply>, StoreError> {
        let outcome = store
            .greylist(&self.triplet, &self.net, &self.params)
            .await?;
        metrics.store.greylist(outcome);
        Ok(match outcome {
            GreyOutcome::New { retry_in } | GreyOutcome::TooEarly { retry_in } => Some(Reply::new(
                451,
                StatusCode(4, 7, 1),
                format!(
                    "Greylisted, please try again in {} seconds",
                    super::secs_ceil(retry_in)
                ),
            )),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_fold() {
        let k = |s: &str| net_key(s.parse().unwrap(), 24, 64);
        assert_eq!(k("192.0.2.77"), "192.0.2.0/24");
        assert_eq!(k("::ffff:192.0.2.200"), "192.0.2.0/24");
        assert_eq!(k("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
        assert_eq!(k("2001:db8:1:2:ffff::9"), k("2001:db8:1:2::1"));
        assert_ne!(k("2001:db8:1:3::1"), k("2001:db8:1:2::1"));
    }

    #[test]
    fn batv_and_srs_are_stripped() {
        for (raw, want) in [
            ("Alice@Example.COM", "alice@example.com"),
            ("prvs=1234abcdef=alice@example.com", "alice@example.com"),
            ("PRVS=0999FFEE12=Alice@Example.com", "alice@example.com"),
            ("msprvs1=17abcdEF=bob@example.org", "bob@example.org"),
            (
                "SRS0=HHH=TT=orig.example=alice@forwarder.example",
                "alice@orig.example",
            ),
            (
                "SRS1=XXX=fwd1.example==HHH=TT=orig.example=alice@fwd2.example",
                "alice@orig.example",
            ),
            ("", ""),
            ("postmaster", "postmaster"),
            ("prvs=broken@example.com", "prvs=broken@example.com"),
        ] {
            assert_eq!(normalize_sender(raw), want, "{raw}");
        }
    }
}
