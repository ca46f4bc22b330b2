//! `dnsbl` and `dnsbl_score`: DNS block/allow lists (RFC 5782) for the client address.
//!
//! ```yaml
//! dnsbl: true                          # listed by any configured zone
//! dnsbl: zen.example                   # listed by this zone (its display name)
//! dnsbl: { zone: zen.example, code: 127.0.0.4 }
//! dnsbl_score: { over: 2 }             # sum of the weights of the listing zones
//! ```
//!
//! Zones, their expected answers (codes, ranges, a bitmask) and weights are configured
//! under `checks.dnsbl`; a rule names a zone by its display name (`name`, by default
//! the zone itself), so a zone that carries an access key (Spamhaus DQS) is written
//! here as its name. A zone that answers outside 127.0.0.0/8 or with 127.255.255.x is
//! "unusable" and never counts as a listing.

use std::net::Ipv4Addr;

use serde_yaml_ng::Value;

use super::Condition;
use crate::envelope::{Checks, DnsblHit};
use crate::policy::load::Decoder;
use crate::policy::subject::Subject;
use crate::policy::yaml::{KeyPath, kind_of};

#[derive(Debug)]
struct Listed {
    zone: Option<String>,
    code: Option<Ipv4Addr>,
}

impl Listed {
    fn hit<'s>(&self, s: &'s Subject<'_>) -> Option<&'s DnsblHit> {
        s.facts.auth.dnsbl.as_ref()?.hits.iter().find(|h| {
            self.zone
                .as_ref()
                .is_none_or(|z| h.zone.eq_ignore_ascii_case(z))
                && self.code.is_none_or(|c| h.codes.contains(&c))
        })
    }
}

impl Condition for Listed {
    fn matches(&self, s: &Subject<'_>) -> bool {
        self.hit(s).is_some()
    }
    fn describe(&self) -> String {
        let zone = self.zone.as_deref().unwrap_or("any zone");
        match self.code {
            Some(c) => format!("dnsbl listed by {zone} with {c}"),
            None => format!("dnsbl listed by {zone}"),
        }
    }
    fn observed(&self, s: &Subject<'_>) -> String {
        let Some(f) = s.facts.auth.dnsbl.as_ref() else {
            return "dnsbl not checked".into();
        };
        let hits: Vec<String> = f
            .hits
            .iter()
            .map(|h| {
                let c: Vec<String> = h.codes.iter().map(|c| c.to_string()).collect();
                format!("{}={}", h.zone, c.join("+"))
            })
            .collect();
        let mut o = format!("listed=[{}]", hits.join(" "));
        if !f.unusable.is_empty() {
            o.push_str(&format!(" unusable=[{}]", f.unusable.join(" ")));
        }
        o
    }
    fn needs(&self) -> Checks {
        Checks::DNSBL
    }
}

#[derive(Debug)]
struct Score {
    over: Option<i64>,
    under: Option<i64>,
}

impl Condition for Score {
    fn matches(&self, s: &Subject<'_>) -> bool {
        s.facts.auth.dnsbl.as_ref().is_some_and(|f| {
            self.over.is_none_or(|o| f.score > o) && self.under.is_none_or(|u| f.score < u)
        })
    }
    fn describe(&self) -> String {
        let mut p = Vec::new();
        if let Some(o) = self.over {
            p.push(format!("over {o}"));
        }
        if let Some(u) = self.under {
            p.push(format!("under {u}"));
        }
        format!("dnsbl_score {}", p.join(" and "))
    }
    fn observed(&self, s: &Subject<'_>) -> String {
        match &s.facts.auth.dnsbl {
            Some(f) => format!("dnsbl_score={}", f.score),
            None => "dnsbl not checked".into(),
        }
    }
    fn needs(&self) -> Checks {
        Checks::DNSBL
    }
}

fn zone_name(d: &mut Decoder<'_>, v: &Value, path: &KeyPath) -> Option<String> {
    let z = d
        .string(v, path)?
        .trim_end_matches('.')
        .to_ascii_lowercase();
    if z.is_empty() || z.contains(char::is_whitespace) {
        d.error(path, format!("invalid zone name {z:?}"));
        return None;
    }
    Some(z)
}

pub(super) fn parse_dnsbl(
    d: &mut Decoder<'_>,
    v: &Value,
    path: &KeyPath,
) -> Option<Box<dyn Condition>> {
    match v {
        Value::Bool(true) => Some(Box::new(Listed {
            zone: None,
            code: None,
        })),
        Value::String(_) => Some(Box::new(Listed {
            zone: Some(zone_name(d, v, path)?),
            code: None,
        })),
        Value::Mapping(_) => {
            let entries = d.mapping(v, path, &["zone", "code"])?;
            let mut l = Listed {
                zone: None,
                code: None,
            };
            for (k, val) in entries {
                let p = path.key(k);
                if k == "zone" {
                    l.zone = Some(zone_name(d, val, &p)?);
                } else {
                    let c = d.string(val, &p)?;
                    match c.parse::<Ipv4Addr>() {
                        Ok(ip) => l.code = Some(ip),
                        Err(_) => {
                            d.error(
                                &p,
                                format!("invalid return code {c:?}, expected e.g. 127.0.0.2"),
                            );
                            return None;
                        }
                    }
                }
            }
            Some(Box::new(l))
        }
        other => {
            d.error(
                path,
                format!(
                    "expected true, a zone name or {{ zone, code }}, found {}",
                    kind_of(other)
                ),
            );
            None
        }
    }
}

pub(super) fn parse_score(
    d: &mut Decoder<'_>,
    v: &Value,
    path: &KeyPath,
) -> Option<Box<dyn Condition>> {
    let entries = d.mapping(v, path, &["over", "under"])?;
    let mut s = Score {
        over: None,
        under: None,
    };
    for (k, val) in entries {
        let Some(n) = val.as_i64() else {
            d.error(
                &path.key(k),
                format!("expected an integer, found {}", kind_of(val)),
            );
            return None;
        };
        if k == "over" {
            s.over = Some(n);
        } else {
            s.under = Some(n);
        }
    }
    if s.over.is_none() && s.under.is_none() {
        d.error(path, "expected `over` and/or `under`");
        return None;
    }
    Some(Box::new(s))
}
