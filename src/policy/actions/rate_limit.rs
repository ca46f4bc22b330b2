//! `then: { rate_limit: { key: [client_net], rate: 30/1m, burst: 10, count: messages } }`
//!
//! Compiles the action and, at evaluation, derives the key and the cost from the facts
//! (pure); the session asks the store (see [`crate::checks`]).

use std::fmt::Write as _;
use std::time::Duration;

use serde_yaml_ng::Value;

use super::super::load::Decoder;
use super::super::subject::Subject;
use super::super::yaml::{KeyPath, kind_of};
use super::common;
use crate::checks::greylist::net_key;
use crate::checks::{FailMode, RateLimitCheck};
use crate::envelope::Stage;
use crate::store::{RateCount as Count, RateParams};

/// A field the rate is counted per.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RateKey {
    ClientIp,
    ClientNet,
    Helo,
    Sender,
    SenderDomain,
    Recipient,
    RecipientDomain,
    AuthUser,
}

const KEYS: [(&str, RateKey); 8] = [
    ("client_ip", RateKey::ClientIp),
    ("client_net", RateKey::ClientNet),
    ("helo", RateKey::Helo),
    ("sender", RateKey::Sender),
    ("sender_domain", RateKey::SenderDomain),
    ("recipient", RateKey::Recipient),
    ("recipient_domain", RateKey::RecipientDomain),
    ("auth_user", RateKey::AuthUser),
];

impl RateKey {
    fn as_str(self) -> &'static str {
        KEYS.iter()
            .find(|(_, k)| *k == self)
            .map(|(n, _)| *n)
            .unwrap_or("?")
    }

    /// The first stage at which the field is known (recipient fields only at `rcpt`).
    fn known_at(self, stage: Stage) -> bool {
        match self {
            RateKey::ClientIp | RateKey::ClientNet | RateKey::AuthUser => true,
            RateKey::Helo => stage >= Stage::Helo,
            RateKey::Sender | RateKey::SenderDomain => stage >= Stage::Mail,
            RateKey::Recipient | RateKey::RecipientDomain => stage == Stage::Rcpt,
        }
    }
}

/// The stages where a count can be spent.
fn count_stages(c: Count) -> &'static [Stage] {
    match c {
        Count::Connections => &[Stage::Connect, Stage::Helo],
        Count::Messages => &[Stage::Mail, Stage::Data],
        Count::Recipients => &[Stage::Rcpt, Stage::Data],
        Count::Bytes => &[Stage::Mail, Stage::Data],
    }
}

/// What a rule counts when it does not say.
fn default_count(stage: Stage) -> Count {
    match stage {
        Stage::Connect | Stage::Helo => Count::Connections,
        Stage::Mail | Stage::Data => Count::Messages,
        Stage::Rcpt => Count::Recipients,
    }
}

#[derive(Debug, Clone)]
pub(crate) struct RateLimitAction {
    pub keys: Vec<RateKey>,
    pub params: RateParams,
    /// The `rate:` as written, for display.
    pub rate: String,
    pub count: Count,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    pub fail: FailMode,
}

impl std::fmt::Display for RateLimitAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<&str> = self.keys.iter().map(|k| k.as_str()).collect();
        write!(
            f,
            "rate_limit key=[{}] rate={} burst={} count={} fail={}",
            keys.join(","),
            self.rate,
            self.params.burst,
            self.count.as_str(),
            self.fail.as_str()
        )
    }
}

impl RateLimitAction {
    /// The check for these facts: pure. Absent fields (no AUTH, the null sender's
    /// domain) are empty strings, so they share one budget.
    pub fn check(&self, s: &Subject<'_>, rule: &str) -> RateLimitCheck {
        let mut key = String::with_capacity(64);
        key.push_str(rule);
        let first = |v: &[super::super::subject::Text<'_>]| {
            v.first().map(|t| t.lower.to_string()).unwrap_or_default()
        };
        for k in &self.keys {
            let v = match k {
                RateKey::ClientIp => s.client_ip.to_string(),
                RateKey::ClientNet => net_key(s.client_ip, self.ipv4_prefix, self.ipv6_prefix),
                RateKey::Helo => s
                    .helo
                    .as_ref()
                    .map_or(String::new(), |t| t.lower.to_string()),
                RateKey::Sender => s
                    .sender
                    .as_ref()
                    .map_or(String::new(), |t| t.lower.to_string()),
                RateKey::SenderDomain => s
                    .sender_domain
                    .as_ref()
                    .map_or(String::new(), |t| t.lower.to_string()),
                RateKey::Recipient => first(&s.recipients),
                RateKey::RecipientDomain => first(&s.recipient_domains),
                RateKey::AuthUser => s
                    .auth_user
                    .as_ref()
                    .map_or(String::new(), |t| t.orig.to_owned()),
            };
            let _ = write!(key, "|{}={v}", k.as_str());
        }
        let cost = match (self.count, s.stage) {
            (Count::Connections | Count::Messages, _) => 1,
            (Count::Recipients, Stage::Data) => s.recipient_count(),
            (Count::Recipients, _) => 1,
            (Count::Bytes, Stage::Data) => s.facts.message.map_or(0, |m| m.size),
            (Count::Bytes, _) => s.size().unwrap_or(0),
        };
        RateLimitCheck {
            key,
            params: self.params,
            cost,
            count: self.count,
        }
    }
}

/// `30/1m`, `500/1h`, `10/s`; with `count: bytes` the number may have a size unit
/// (`50MiB/1h`). Returns (count, period).
fn parse_rate(s: &str, bytes: bool) -> Result<(u64, Duration), String> {
    let Some((n, per)) = s.split_once('/') else {
        return Err(format!("invalid rate {s:?}, expected N/PERIOD like 30/1m"));
    };
    let n = if bytes {
        crate::config::parse_size(n)?
    } else {
        n.trim()
            .parse::<u64>()
            .map_err(|_| format!("invalid rate {s:?}: {n:?} is not a whole number"))?
    };
    if n == 0 {
        return Err(format!("invalid rate {s:?}: the count must be above 0"));
    }
    let per = per.trim();
    let per = if per.starts_with(|c: char| c.is_ascii_alphabetic()) {
        format!("1{per}")
    } else {
        per.to_owned()
    };
    let period = crate::config::parse_duration(&per)?;
    if period.is_zero() {
        return Err(format!("invalid rate {s:?}: the period must be above 0"));
    }
    Ok((n, period))
}

pub(crate) fn parse(
    d: &mut Decoder<'_>,
    arg: Option<&Value>,
    path: &KeyPath,
) -> Option<RateLimitAction> {
    let Some(v) = arg else {
        d.error(path, "`rate_limit` needs { key: [...], rate: N/PERIOD }");
        return None;
    };
    let fields = d.mapping(
        v,
        path,
        &[
            "key",
            "rate",
            "burst",
            "count",
            "fail",
            "ipv4_prefix",
            "ipv6_prefix",
        ],
    )?;
    let stage = d.stage?;
    let mut keys = None;
    let mut rate: Option<(&Value, KeyPath)> = None;
    let mut burst = None;
    let mut count = default_count(stage);
    let (mut v4, mut v6, mut fail) = (24, 64, FailMode::Open);
    let mut ok = true;
    for (k, v) in fields {
        let p = path.key(k);
        let r = match k {
            "key" => parse_keys(d, v, &p, stage).map(|x| keys = Some(x)),
            "rate" => {
                rate = Some((v, p));
                Some(())
            }
            "burst" => match d.u64(v, &p) {
                Some(0) => {
                    d.error(&p, "burst must be at least 1");
                    None
                }
                Some(b) => {
                    burst = Some(b);
                    Some(())
                }
                None => None,
            },
            "count" => parse_count(d, v, &p, stage).map(|c| count = c),
            "fail" => common::fail_mode(d, v, &p).map(|f| fail = f),
            "ipv4_prefix" => common::prefix(d, v, &p, 32).map(|n| v4 = n),
            "ipv6_prefix" => common::prefix(d, v, &p, 128).map(|n| v6 = n),
            _ => None,
        };
        ok &= r.is_some();
    }
    let Some((rate_v, rate_p)) = rate else {
        d.error(path, "`rate_limit` needs `rate: N/PERIOD` (like 30/1m)");
        return None;
    };
    let rate_s = match rate_v {
        Value::String(s) => s.clone(),
        other => {
            d.error(
                &rate_p,
                format!("expected a rate like 30/1m, found {}", kind_of(other)),
            );
            return None;
        }
    };
    let (n, period) = match parse_rate(&rate_s, count == Count::Bytes) {
        Ok(r) => r,
        Err(e) => {
            d.error(&rate_p, e);
            return None;
        }
    };
    let Some(keys) = keys else {
        if ok {
            d.error(path, "`rate_limit` needs `key: [...]` (like [client_net])");
        }
        return None;
    };
    if !ok {
        return None;
    }
    let burst = burst.unwrap_or(n).min(u64::from(u32::MAX)) as u32;
    Some(RateLimitAction {
        keys,
        params: RateParams::new(n, period, burst),
        rate: rate_s,
        count,
        ipv4_prefix: v4,
        ipv6_prefix: v6,
        fail,
    })
}

fn parse_keys(
    d: &mut Decoder<'_>,
    v: &Value,
    path: &KeyPath,
    stage: Stage,
) -> Option<Vec<RateKey>> {
    let Value::Sequence(items) = v else {
        d.error(
            path,
            format!(
                "expected a list like [client_net, sender_domain], found {}",
                kind_of(v)
            ),
        );
        return None;
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let p = path.index(i);
        let name = d.string(item, &p)?;
        let Some((_, k)) = KEYS.iter().find(|(n, _)| *n == name) else {
            let all: Vec<String> = KEYS.iter().map(|(n, _)| format!("`{n}`")).collect();
            d.error(
                &p,
                format!(
                    "unknown rate key `{name}`, expected one of {}",
                    all.join(", ")
                ),
            );
            return None;
        };
        if !k.known_at(stage) {
            d.error(
                &p,
                format!("rate key `{name}` is not known at stage {stage}"),
            );
            return None;
        }
        if out.contains(k) {
            d.error(&p, format!("rate key `{name}` given twice"));
            return None;
        }
        out.push(*k);
    }
    if out.is_empty() {
        d.error(path, "the rate key needs at least one field");
        return None;
    }
    Some(out)
}

fn parse_count(d: &mut Decoder<'_>, v: &Value, path: &KeyPath, stage: Stage) -> Option<Count> {
    let c = match d.string(v, path)? {
        "connections" => Count::Connections,
        "messages" => Count::Messages,
        "recipients" => Count::Recipients,
        "bytes" => Count::Bytes,
        other => {
            d.error(
                path,
                format!(
                    "unknown count `{other}`, expected `connections`, `messages`, `recipients` or `bytes`"
                ),
            );
            return None;
        }
    };
    if !count_stages(c).contains(&stage) {
        let at: Vec<&str> = count_stages(c).iter().map(|s| s.as_str()).collect();
        d.error(
            path,
            format!(
                "`count: {}` is not possible at stage {stage} (only at {})",
                c.as_str(),
                at.join(" or ")
            ),
        );
        return None;
    }
    Some(c)
}
