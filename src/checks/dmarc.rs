//! DMARC (RFC 7489): evaluated by mail-auth in [`super::mailauth`] from the DKIM and
//! SPF results. mail-auth 0.13.3 follows DMARCbis: the organisational domain comes
//! from the DNS tree walk, and `t=y` (testing) replaces `pct` — mail-auth lowers the
//! policy of a record in testing mode one step (`reject` → `quarantine` → `none`).
//!
//! Senders still publish RFC 7489's `pct` to roll a policy out gradually, so it is
//! applied here on top: for a failing message, the record's `pct` percent keep the
//! policy and the rest get it lowered one step (RFC 7489 §6.6.4). The sample is a hash
//! of the message's `Message-ID` (or its first bytes): a retried message lands on the
//! same side every time.

use std::hash::{Hash, Hasher};

use crate::dns::{Dns, Lookup};
use crate::envelope::{AuthFacts, AuthStatus, DmarcFact};

/// Whether a DMARC failure may be our DNS trouble rather than the sender's: DMARC,
/// or one of the results it rests on, is a temporary error.
pub fn maybe_dns_trouble(f: &AuthFacts) -> bool {
    let dmarc_temp = f
        .dmarc
        .as_ref()
        .is_some_and(|d| d.status == AuthStatus::TempError);
    let inputs_temp = f
        .dmarc
        .as_ref()
        .is_some_and(|d| d.status == AuthStatus::Fail)
        && (f
            .spf
            .as_ref()
            .is_some_and(|s| s.status == AuthStatus::TempError)
            || f.dkim
                .as_ref()
                .is_some_and(|v| v.iter().any(|s| s.status == AuthStatus::TempError)));
    dmarc_temp || inputs_temp
}

/// Applies the record's `pct` to a failing message: outside the sample the policy is
/// lowered one step. Lookups hit the resolver cache mail-auth just filled.
pub async fn apply_pct(dns: &Dns, fact: &mut DmarcFact, message: &[u8]) {
    if fact.status != AuthStatus::Fail || fact.policy == "none" {
        return;
    }
    let Some(pct) = record_pct(dns, &fact.domain).await else {
        return;
    };
    if sample(message) >= pct {
        fact.policy = lower(fact.policy);
    }
}

/// `pct` of the DMARC record that applies to `domain`: its own, else the nearest
/// parent's (the same tree walk mail-auth does). 100 when the record has none.
async fn record_pct(dns: &Dns, domain: &str) -> Option<u8> {
    let mut d = domain.trim_end_matches('.');
    for _ in 0..8 {
        if let Lookup::Found(txts) = dns.txt(&format!("_dmarc.{d}")).await
            && let Some(record) = txts
                .iter()
                .find(|t| t.trim_start().to_ascii_lowercase().starts_with("v=dmarc1"))
        {
            return Some(parse_pct(record));
        }
        match d.split_once('.') {
            Some((_, parent)) if parent.contains('.') => d = parent,
            _ => return None,
        }
    }
    None
}

/// The `pct` tag (0–100; default 100; an invalid value counts as 100, as RFC 7489
/// §6.3 asks receivers to ignore invalid tags).
fn parse_pct(record: &str) -> u8 {
    record
        .split(';')
        .filter_map(|tag| tag.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("pct"))
        .and_then(|(_, v)| v.trim().parse::<u8>().ok())
        .filter(|p| *p <= 100)
        .unwrap_or(100)
}

/// A number in 0..100 fixed for the message: from its Message-ID, else its first bytes.
fn sample(message: &[u8]) -> u8 {
    let key = message_id(message).unwrap_or(&message[..message.len().min(1024)]);
    // DefaultHasher::new() has fixed keys: the same message samples the same way after a
    // restart, too.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() % 100) as u8
}

fn message_id(message: &[u8]) -> Option<&[u8]> {
    let head_end = memchr::memmem::find(message, b"\r\n\r\n").unwrap_or(message.len());
    message[..head_end]
        .split(|&b| b == b'\n')
        .find(|line| line.len() > 11 && line[..11].eq_ignore_ascii_case(b"message-id:"))
        .map(|line| line[11..].trim_ascii())
}

fn lower(policy: &'static str) -> &'static str {
    match policy {
        "reject" => "quarantine",
        _ => "none",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pct_tag_is_parsed_with_a_safe_default() {
        assert_eq!(parse_pct("v=DMARC1; p=reject; pct=25"), 25);
        assert_eq!(parse_pct("v=DMARC1; p=reject"), 100);
        assert_eq!(parse_pct("v=DMARC1; p=reject; PCT = 0 ;"), 0);
        assert_eq!(parse_pct("v=DMARC1; p=reject; pct=250"), 100);
        assert_eq!(parse_pct("v=DMARC1; p=reject; pct=abc"), 100);
    }

    #[test]
    fn sample_follows_the_message_id() {
        let a = b"Message-ID: <1@x>\r\nSubject: a\r\n\r\nbody one";
        let b = b"Subject: b\r\nMessage-Id: <1@x>\r\n\r\nbody two";
        assert_eq!(sample(a), sample(b));
        assert!(sample(a) < 100);
        assert_eq!(lower("reject"), "quarantine");
        assert_eq!(lower("quarantine"), "none");
    }
}
