//! DNS block and allow lists (RFC 5782): every configured zone is asked about the
//! client address at once; each listing zone adds its weight to the score.
//!
//! An answer outside 127.0.0.0/8, or one of the 127.255.255.x codes lists use to say
//! "you are not allowed to query me" (e.g. an open resolver used for Spamhaus), marks
//! the zone *unusable* — never "listed" — so a list's failure cannot reject mail.
//! Other answers count only when the zone's `codes` (addresses, ranges) and `mask`
//! (bits) accept them; an allow list must name its codes (the configuration refuses
//! one without), so an error answer never allow-lists a client.
//!
//! Everything outside the query itself — facts, replies, logs, metrics — names a zone
//! by its display name: a Spamhaus DQS zone carries the customer's key.

use std::net::{IpAddr, Ipv4Addr};

use crate::config::{DnsblZone, canonical_ip};
use crate::dns::{Dns, Lookup, dnsbl_name};
use crate::envelope::{DnsblFact, DnsblHit};

/// How one zone answered.
#[derive(Debug, PartialEq, Eq)]
pub enum ZoneAnswer {
    NotListed,
    Listed(Vec<Ipv4Addr>),
    Unusable,
}

/// Classifies the A records a zone returned for a query.
pub fn classify(answers: &[Ipv4Addr], zone: &DnsblZone) -> ZoneAnswer {
    let bad = |a: &Ipv4Addr| a.octets()[0] != 127 || (a.octets()[1] == 255 && a.octets()[2] == 255);
    if answers.is_empty() {
        return ZoneAnswer::NotListed;
    }
    if answers.iter().any(bad) {
        return ZoneAnswer::Unusable;
    }
    let hits: Vec<Ipv4Addr> = answers
        .iter()
        .copied()
        .filter(|a| zone.counts(*a))
        .collect();
    if hits.is_empty() {
        ZoneAnswer::NotListed
    } else {
        ZoneAnswer::Listed(hits)
    }
}

pub async fn check(dns: &Dns, ip: IpAddr, zones: &[DnsblZone]) -> (DnsblFact, bool) {
    let ip = canonical_ip(ip);
    let mut set = tokio::task::JoinSet::new();
    for (i, z) in zones.iter().enumerate() {
        let dns = dns.clone();
        let name = dnsbl_name(ip, &z.zone);
        set.spawn(async move { (i, dns.ipv4(&name).await, name) });
    }
    let mut answers = Vec::with_capacity(zones.len());
    while let Some(r) = set.join_next().await {
        if let Ok(a) = r {
            answers.push(a);
        }
    }
    answers.sort_by_key(|a| a.0);
    let mut fact = DnsblFact::default();
    let mut trouble = false;
    for (i, lookup, name) in answers {
        let z = &zones[i];
        let zone = z.display_name();
        let answer = match lookup {
            Lookup::Found(a) => classify(&a, z),
            Lookup::NotFound => ZoneAnswer::NotListed,
            Lookup::Error(_) => {
                trouble = true;
                ZoneAnswer::Unusable
            }
        };
        match answer {
            ZoneAnswer::NotListed => {}
            ZoneAnswer::Unusable => fact.unusable.push(zone),
            ZoneAnswer::Listed(codes) => {
                let reason = match dns.txt(&name).await {
                    Lookup::Found(t) => t.into_iter().next().map(|r| clean(&r)),
                    _ => None,
                };
                fact.score += z.weight;
                fact.hits.push(DnsblHit {
                    zone,
                    codes,
                    weight: z.weight,
                    reason,
                });
            }
        }
    }
    (fact, trouble)
}

/// A list's TXT reason ends up in replies: printable ASCII, bounded.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                ' '
            }
        })
        .take(200)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CodeRange;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn zone(codes: &[&str], mask: Option<u32>, weight: i64) -> DnsblZone {
        DnsblZone {
            codes: codes
                .iter()
                .map(|c| c.parse::<CodeRange>().unwrap())
                .collect(),
            mask,
            weight,
            ..DnsblZone::new("bl.example")
        }
    }

    #[test]
    fn error_codes_and_foreign_answers_are_unusable() {
        let any = zone(&[], None, 1);
        assert_eq!(
            classify(&[ip("127.255.255.254")], &any),
            ZoneAnswer::Unusable
        );
        assert_eq!(classify(&[ip("192.0.2.1")], &any), ZoneAnswer::Unusable);
        assert_eq!(classify(&[], &any), ZoneAnswer::NotListed);
        assert_eq!(
            classify(&[ip("127.0.0.2")], &any),
            ZoneAnswer::Listed(vec![ip("127.0.0.2")])
        );
        assert_eq!(
            classify(&[ip("127.0.0.4")], &zone(&["127.0.0.2"], None, 1)),
            ZoneAnswer::NotListed
        );
    }

    #[test]
    fn ranges_masks_and_allow_lists() {
        let spamhaus = zone(&["127.0.0.2-127.0.0.11"], None, 3);
        let uribl = zone(&[], Some(0x04), 2);
        let dnswl = zone(&["127.0.2.0-127.0.20.3"], None, -5);
        let table: &[(&DnsblZone, &[&str], &[&str])] = &[
            (&spamhaus, &["127.0.0.3"], &["127.0.0.3"]),
            (&spamhaus, &["127.0.0.10", "127.0.0.12"], &["127.0.0.10"]),
            (&spamhaus, &["127.0.1.2"], &[]),
            (&uribl, &["127.0.0.4"], &["127.0.0.4"]),
            (&uribl, &["127.0.0.6"], &["127.0.0.6"]),
            (&uribl, &["127.0.0.2"], &[]),
            // dnswl: a trust answer allow-lists; "access refused" (127.0.0.255) never.
            (&dnswl, &["127.0.15.1"], &["127.0.15.1"]),
            (&dnswl, &["127.0.0.255"], &[]),
        ];
        for (z, answers, listed) in table {
            let a: Vec<Ipv4Addr> = answers.iter().map(|s| ip(s)).collect();
            let want = if listed.is_empty() {
                ZoneAnswer::NotListed
            } else {
                ZoneAnswer::Listed(listed.iter().map(|s| ip(s)).collect())
            };
            assert_eq!(classify(&a, z), want, "{answers:?} in {z:?}");
        }
    }
}
