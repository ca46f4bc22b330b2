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
//!
//! What mail-auth 0.13 gets wrong, handled here and in the wrapper:
//!
//! * **Author domains** (RFC 7489 §6.6.1). mail-auth skips DMARC when From names more
//!   than one domain, so a second From field would switch DMARC off for a spoofed one.
//!   The wrapper evaluates every author domain of every From field ([`authors`]) and
//!   keeps the strictest result ([`strictest`]); more than one From field, or none with
//!   a domain, is recorded as the [`DmarcReason`] a rule can refuse (the shipped
//!   `dmarc-from` rule does).
//! * **Several records** (RFC 7489 §6.6.3): more than one DMARC record at the name that
//!   applies means no policy. mail-auth takes the first that parses; [`discover`] counts
//!   them first (and the `pct` lookup uses it too).

use std::hash::{Hash, Hasher};

use crate::dns::{Dns, Lookup};
use crate::envelope::{AuthFacts, AuthStatus, DmarcFact, DmarcReason};
use crate::message::HeaderIndex;

/// The RFC5322.From addresses to evaluate: one per author domain, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authors {
    pub addresses: Vec<String>,
    /// `multiple_from` (more than one From field) or `no_from` (no domain at all).
    pub reason: Option<DmarcReason>,
}

/// The author domains of a message with `from_fields` From header fields whose
/// addresses (all fields together) are `from`.
pub fn authors(from_fields: usize, from: &[String]) -> Authors {
    let mut addresses: Vec<String> = Vec::new();
    let mut domains: Vec<String> = Vec::new();
    for a in from {
        let Some((_, d)) = a.rsplit_once('@') else {
            continue;
        };
        let d = d.trim().trim_end_matches('.').to_ascii_lowercase();
        if d.is_empty() || domains.contains(&d) {
            continue;
        }
        domains.push(d);
        addresses.push(a.to_ascii_lowercase());
    }
    let reason = if addresses.is_empty() {
        Some(DmarcReason::NoFrom)
    } else if from_fields > 1 {
        Some(DmarcReason::MultipleFrom)
    } else {
        None
    };
    Authors { addresses, reason }
}

/// Of two author domains' results, the one to act on: a failure before a temporary
/// error, before a permanent error, before none, before a pass; between two of the
/// same result, the stricter published policy.
pub fn strictest(a: DmarcFact, b: DmarcFact) -> DmarcFact {
    let rank = |f: &DmarcFact| {
        let status = match f.status {
            AuthStatus::Fail => 4,
            AuthStatus::TempError => 3,
            AuthStatus::PermError => 2,
            AuthStatus::None => 1,
            _ => 0,
        };
        let policy = match f.policy {
            "reject" => 2,
            "quarantine" => 1,
            _ => 0,
        };
        (status, policy)
    };
    if rank(&b) > rank(&a) { b } else { a }
}

/// The DMARC record that applies to an author domain, as far as counting goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovered {
    /// Exactly one record at the first name of the walk that has any.
    Record(String),
    /// More than one there: no policy (RFC 7489 §6.6.3).
    Multiple,
    /// No record anywhere on the walk.
    NotFound,
    /// A lookup failed: whoever evaluates must say temperror.
    DnsError,
}

/// The DMARC records among the TXT records of one name (`v=DMARC1` first, RFC 7489
/// §6.6.3 step 3).
fn dmarc_records(txts: &[String]) -> Vec<&String> {
    txts.iter()
        .filter(|t| {
            t.trim_start()
                .get(..8)
                .is_some_and(|v| v.eq_ignore_ascii_case("v=DMARC1"))
        })
        .collect()
}

/// The names mail-auth's tree walk queries (DMARCbis): the domain, then (at most
/// eight queries) its parents down to the top-level domain.
fn walk_names(domain: &str) -> Vec<String> {
    let labels: Vec<&str> = domain
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
        .collect();
    let total = labels.len();
    let mut out = Vec::new();
    if total < 2 {
        return out;
    }
    let mut count = total;
    loop {
        out.push(labels[total - count..].join("."));
        if count == 1 {
            break;
        }
        count = if count >= 8 { 7 } else { count - 1 };
    }
    out
}

/// Walks from `domain` up to the first name with a DMARC record and counts them.
/// Lookups go through the shared cache (mail-auth's walk asks the same names).
pub async fn discover(dns: &Dns, domain: &str) -> Discovered {
    for name in walk_names(domain) {
        match dns.txt(&format!("_dmarc.{name}")).await {
            Lookup::Found(txts) => match dmarc_records(&txts).as_slice() {
                [] => {}
                [one] => return Discovered::Record((*one).clone()),
                _ => return Discovered::Multiple,
            },
            Lookup::NotFound => {}
            Lookup::Error(_) => return Discovered::DnsError,
        }
    }
    Discovered::NotFound
}

/// The fact for an author domain whose record set is ambiguous.
pub fn several_records(domain: &str) -> DmarcFact {
    DmarcFact {
        status: AuthStatus::None,
        domain: domain.to_owned(),
        policy: "none",
        reason: Some(DmarcReason::MultipleRecords),
    }
}

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
/// parent's (the same tree walk mail-auth does). 100 when the record has none; `None`
/// without a record, or with several (no policy, RFC 7489 §6.6.3).
async fn record_pct(dns: &Dns, domain: &str) -> Option<u8> {
    match discover(dns, domain).await {
        Discovered::Record(r) => Some(parse_pct(&r)),
        _ => None,
    }
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
    let id = HeaderIndex::build(message).message_id();
    let key = id
        .as_ref()
        .map_or(&message[..message.len().min(1024)], |id| id.as_bytes());
    // DefaultHasher::new() has fixed keys: the same message samples the same way after a
    // restart, too.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() % 100) as u8
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

    fn fact(status: AuthStatus, domain: &str, policy: &'static str) -> DmarcFact {
        DmarcFact {
            status,
            domain: domain.into(),
            policy,
            reason: None,
        }
    }

    #[test]
    fn author_domains_of_the_from_fields() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // (From fields, their addresses, the addresses evaluated, the reason)
        type Row<'a> = (usize, &'a [&'a str], &'a [&'a str], Option<DmarcReason>);
        let table: &[Row] = &[
            (1, &["a@x.test"], &["a@x.test"], None),
            // One field, several authors: every domain, once each; not a refusal reason.
            (
                1,
                &["a@x.test", "b@Y.test", "c@x.test"],
                &["a@x.test", "b@y.test"],
                None,
            ),
            // A second From field: evaluated too, and recorded.
            (
                2,
                &["boss@a.test", "me@b.test"],
                &["boss@a.test", "me@b.test"],
                Some(DmarcReason::MultipleFrom),
            ),
            (
                2,
                &["a@x.test", "a@x.test"],
                &["a@x.test"],
                Some(DmarcReason::MultipleFrom),
            ),
            // No field, or nothing with a domain in it.
            (0, &[], &[], Some(DmarcReason::NoFrom)),
            (1, &[], &[], Some(DmarcReason::NoFrom)),
            (1, &["undisclosed"], &[], Some(DmarcReason::NoFrom)),
            (1, &["user@"], &[], Some(DmarcReason::NoFrom)),
            (2, &[], &[], Some(DmarcReason::NoFrom)),
        ];
        for (fields, from, want, reason) in table {
            let a = authors(*fields, &v(from));
            assert_eq!(a.addresses, v(want), "{fields} {from:?}");
            assert_eq!(a.reason, *reason, "{fields} {from:?}");
        }
    }

    #[test]
    fn the_strictest_author_result_wins() {
        use AuthStatus::*;
        let table = [
            (fact(Pass, "a", "reject"), fact(Fail, "b", "reject"), "b"),
            (fact(Fail, "a", "reject"), fact(Pass, "b", "none"), "a"),
            (fact(Fail, "a", "none"), fact(Fail, "b", "quarantine"), "b"),
            (
                fact(Fail, "a", "reject"),
                fact(Fail, "b", "quarantine"),
                "a",
            ),
            (fact(Pass, "a", "reject"), fact(TempError, "b", "none"), "b"),
            (fact(None, "a", "none"), fact(PermError, "b", "none"), "b"),
            (fact(Pass, "a", "reject"), fact(None, "b", "none"), "b"),
            (fact(Pass, "a", "reject"), fact(Pass, "b", "none"), "a"),
        ];
        for (a, b, want) in table {
            let what = format!("{a:?} vs {b:?}");
            assert_eq!(strictest(a, b).domain, want, "{what}");
        }
    }

    #[test]
    fn dmarc_records_are_counted_and_walked() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(dmarc_records(&v(&["v=DMARC1; p=reject"])).len(), 1);
        assert_eq!(
            dmarc_records(&v(&["v=DMARC1; p=reject", "v=dmarc1; p=none"])).len(),
            2
        );
        assert_eq!(
            dmarc_records(&v(&[
                "v=spf1 -all",
                "google-site-verification=x",
                "v=DMARC1; p=none"
            ]))
            .len(),
            1
        );
        assert_eq!(dmarc_records(&v(&["v=DMARC", "x"])).len(), 0);
        assert_eq!(
            walk_names("a.b.example.com."),
            ["a.b.example.com", "b.example.com", "example.com", "com"]
        );
        assert_eq!(walk_names("com"), Vec::<String>::new());
        let deep = walk_names("1.2.3.4.5.6.7.8.9.example");
        assert_eq!(deep[1], "4.5.6.7.8.9.example");
        assert_eq!(deep.len(), 8);
    }

    #[test]
    fn sample_follows_the_message_id() {
        let a = b"Message-ID: <1@x>\r\nSubject: a\r\n\r\nbody one";
        let b = b"Subject: b\r\nMessage-Id: <1@x>\r\n\r\nbody two";
        assert_eq!(sample(a), sample(b));
        assert!(sample(a) < 100);
        // The key is the id itself (as before the header index), folded or not.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        b"<1@x>"[..].hash(&mut h);
        assert_eq!(sample(a), (h.finish() % 100) as u8);
        assert_eq!(
            sample(b"Message-ID:\r\n <1@x>\r\n\r\nbody three"),
            sample(a)
        );
        assert_eq!(lower("reject"), "quarantine");
        assert_eq!(lower("quarantine"), "none");
    }
}
