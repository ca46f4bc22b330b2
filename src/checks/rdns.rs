//! Reverse DNS: a PTR record, forward-confirmed (FCrDNS: a PTR name whose A/AAAA
//! records contain the client address), and "generic" names (dynamic pools).

use std::net::IpAddr;

use regex::RegexSet;

use crate::config::canonical_ip;
use crate::dns::{Dns, Lookup};
use crate::envelope::{RdnsFact, RdnsStatus};

/// PTR names and forward lookups per check: bounded like every other DNS use.
const MAX_NAMES: usize = 10;

pub async fn check(dns: &Dns, ip: IpAddr, generic: &RegexSet) -> RdnsFact {
    let ip = canonical_ip(ip);
    let names = match dns.ptr(ip).await {
        Lookup::Found(n) if !n.is_empty() => n,
        Lookup::Found(_) | Lookup::NotFound => {
            return RdnsFact {
                status: RdnsStatus::None,
                name: None,
                generic: false,
            };
        }
        Lookup::Error(_) => {
            return RdnsFact {
                status: RdnsStatus::TempError,
                name: None,
                generic: false,
            };
        }
    };
    let mut temp = false;
    for name in names.iter().take(MAX_NAMES) {
        match dns.ips(name).await {
            Lookup::Found(ips) if ips.iter().any(|a| canonical_ip(*a) == ip) => {
                return RdnsFact {
                    status: RdnsStatus::Pass,
                    generic: generic.is_match(&name.to_ascii_lowercase()),
                    name: Some(name.clone()),
                };
            }
            Lookup::Error(_) => temp = true,
            _ => {}
        }
    }
    let first = names[0].clone();
    RdnsFact {
        status: if temp {
            RdnsStatus::TempError
        } else {
            RdnsStatus::Mismatch
        },
        generic: generic.is_match(&first.to_ascii_lowercase()),
        name: Some(first),
    }
}
