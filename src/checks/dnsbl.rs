//! DNS block and allow lists (RFC 5782): every configured zone is asked about the
//! client address at once; each listing zone adds its weight to the score.
//!
//! An answer outside 127.0.0.0/8, or one of the 127.255.255.x codes lists use to say
//! "you are not allowed to query me" (e.g. an open resolver used for Spamhaus), marks
//! the zone *unusable* — never "listed" — so a list's failure cannot reject mail.

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
pub fn classify(answers: &[Ipv4Addr], codes: &[Ipv4Addr]) -> ZoneAnswer {
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
        .filter(|a| codes.is_empty() || codes.contains(a))
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
        let zone = z.zone.trim_end_matches('.').to_ascii_lowercase();
        let answer = match lookup {
            Lookup::Found(a) => classify(&a, &z.codes),
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

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn error_codes_and_foreign_answers_are_unusable() {
        assert_eq!(
            classify(&[ip("127.255.255.254")], &[]),
            ZoneAnswer::Unusable
        );
        assert_eq!(classify(&[ip("192.0.2.1")], &[]), ZoneAnswer::Unusable);
        assert_eq!(classify(&[], &[]), ZoneAnswer::NotListed);
        assert_eq!(
            classify(&[ip("127.0.0.2")], &[]),
            ZoneAnswer::Listed(vec![ip("127.0.0.2")])
        );
        assert_eq!(
            classify(&[ip("127.0.0.4")], &[ip("127.0.0.2")]),
            ZoneAnswer::NotListed
        );
    }
}
