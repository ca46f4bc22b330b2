//! `then: { greylist: { delay: 5m, retry_window: 2d, expire: 35d, auto_allow_after: 5 } }`
//!
//! Compiles the action and, at evaluation, derives the triplet from the facts (pure);
//! the session asks the store (see [`crate::checks`]).

use serde_yaml_ng::Value;

use super::super::load::Decoder;
use super::super::subject::Subject;
use super::super::yaml::{KeyPath, kind_of};
use super::common;
use crate::checks::greylist::{net_key, normalize_sender};
use crate::checks::{FailMode, GreylistCheck};
use crate::envelope::Stage;
use crate::store::GreyParams;

/// One part of the greylist key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GreyKey {
    ClientNet,
    /// The domain SPF passed for (MAIL FROM's; the HELO name's for the null sender), so
    /// senders retrying from other networks are recognised; the client network when
    /// SPF does not pass.
    SpfDomain,
    Sender,
    Recipient,
}

impl GreyKey {
    fn as_str(self) -> &'static str {
        match self {
            GreyKey::ClientNet => "client_net",
            GreyKey::SpfDomain => "spf_domain",
            GreyKey::Sender => "sender",
            GreyKey::Recipient => "recipient",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct GreylistAction {
    pub params: GreyParams,
    pub key: Vec<GreyKey>,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    pub fail: FailMode,
}

const MIN_US: u64 = 60_000_000;

impl Default for GreylistAction {
    fn default() -> Self {
        GreylistAction {
            params: GreyParams {
                delay: 5 * MIN_US,
                retry_window: 2 * 24 * 60 * MIN_US,
                expire: 35 * 24 * 60 * MIN_US,
                auto_allow_after: 5,
            },
            key: vec![GreyKey::ClientNet, GreyKey::Sender, GreyKey::Recipient],
            ipv4_prefix: 24,
            ipv6_prefix: 64,
            fail: FailMode::Open,
        }
    }
}

impl std::fmt::Display for GreylistAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<&str> = self.key.iter().map(|k| k.as_str()).collect();
        write!(
            f,
            "greylist delay={}s retry_window={}s expire={}s auto_allow_after={} key=[{}] fail={}",
            self.params.delay / 1_000_000,
            self.params.retry_window / 1_000_000,
            self.params.expire / 1_000_000,
            self.params.auto_allow_after,
            keys.join(","),
            self.fail.as_str()
        )
    }
}

impl GreylistAction {
    /// The check for these facts: pure.
    pub fn check(&self, s: &Subject<'_>) -> GreylistCheck {
        let net = net_key(s.client_ip, self.ipv4_prefix, self.ipv6_prefix);
        let parts: Vec<String> = self
            .key
            .iter()
            .map(|k| match k {
                GreyKey::ClientNet => net.clone(),
                GreyKey::SpfDomain => spf_domain_or_net(s, &net),
                GreyKey::Sender => normalize_sender(s.sender.as_ref().map_or("", |t| t.orig)),
                GreyKey::Recipient => s
                    .recipients
                    .first()
                    .map(|t| t.lower.to_string())
                    .unwrap_or_default(),
            })
            .collect();
        GreylistCheck {
            triplet: parts.join("|"),
            net,
            params: self.params,
        }
    }
}

/// Large senders retry from other addresses of a pool: when SPF passed for the MAIL FROM
/// domain, that domain stands for the client instead of its network, so a retry from
/// another authorised address finds the same triplet. Otherwise the network, as usual.
fn spf_domain_or_net(s: &Subject<'_>, net: &str) -> String {
    match s.facts.auth.spf.as_ref() {
        Some(spf) if spf.status == crate::envelope::AuthStatus::Pass && !spf.domain.is_empty() => {
            format!("spf:{}", spf.domain.to_ascii_lowercase())
        }
        _ => net.to_owned(),
    }
}

impl GreylistAction {
    /// The checks the key needs before the rule runs: SPF for `spf_domain`.
    pub fn needs(&self) -> crate::envelope::Checks {
        if self.key.contains(&GreyKey::SpfDomain) {
            crate::envelope::Checks::SPF
        } else {
            crate::envelope::Checks::NONE
        }
    }
}

/// Parses the argument of `greylist` (absent: every default).
pub(crate) fn parse(
    d: &mut Decoder<'_>,
    arg: Option<&Value>,
    path: &KeyPath,
) -> Option<GreylistAction> {
    let mut a = GreylistAction::default();
    let mut ok = true;
    if let Some(v) = arg {
        let fields = d.mapping(
            v,
            path,
            &[
                "delay",
                "retry_window",
                "expire",
                "auto_allow_after",
                "key",
                "ipv4_prefix",
                "ipv6_prefix",
                "fail",
            ],
        )?;
        for (k, v) in fields {
            let p = path.key(k);
            let r = match k {
                "delay" => common::duration_us(d, v, &p).map(|x| a.params.delay = x),
                "retry_window" => common::duration_us(d, v, &p).map(|x| a.params.retry_window = x),
                "expire" => common::duration_us(d, v, &p).map(|x| a.params.expire = x),
                "auto_allow_after" => d
                    .u64(v, &p)
                    .map(|n| a.params.auto_allow_after = n.min(u64::from(u32::MAX)) as u32),
                "ipv4_prefix" => common::prefix(d, v, &p, 32).map(|n| a.ipv4_prefix = n),
                "ipv6_prefix" => common::prefix(d, v, &p, 128).map(|n| a.ipv6_prefix = n),
                "fail" => common::fail_mode(d, v, &p).map(|f| a.fail = f),
                "key" => parse_key(d, v, &p).map(|k| a.key = k),
                _ => None,
            };
            ok &= r.is_some();
        }
    }
    if !ok {
        return None;
    }
    if a.params.retry_window <= a.params.delay {
        d.error(
            &path.key("retry_window"),
            "retry_window must be longer than delay (a retry after the delay must still be in time)",
        );
        return None;
    }
    let needs_rcpt = a.key.contains(&GreyKey::Recipient);
    match d.stage {
        Some(Stage::Rcpt) => {}
        Some(Stage::Mail) if !needs_rcpt => {}
        Some(stage) => {
            let only = if needs_rcpt {
                "rcpt (the key has a recipient)"
            } else {
                "mail or rcpt"
            };
            d.error(
                path,
                format!("action `greylist` is not allowed at stage {stage} (only at {only})"),
            );
            return None;
        }
        None => return None,
    }
    Some(a)
}

fn parse_key(d: &mut Decoder<'_>, v: &Value, path: &KeyPath) -> Option<Vec<GreyKey>> {
    let Value::Sequence(items) = v else {
        d.error(
            path,
            format!(
                "expected a list like [client_net, sender, recipient], found {}",
                kind_of(v)
            ),
        );
        return None;
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let p = path.index(i);
        let k = match d.string(item, &p)? {
            "client_net" => GreyKey::ClientNet,
            "spf_domain" => GreyKey::SpfDomain,
            "sender" => GreyKey::Sender,
            "recipient" => GreyKey::Recipient,
            other => {
                d.error(
                    &p,
                    format!(
                        "unknown greylist key `{other}`, expected `client_net`, `spf_domain`, `sender` or `recipient`"
                    ),
                );
                return None;
            }
        };
        if out.contains(&k) {
            d.error(&p, format!("greylist key `{}` given twice", k.as_str()));
            return None;
        }
        out.push(k);
    }
    if out.contains(&GreyKey::ClientNet) && out.contains(&GreyKey::SpfDomain) {
        d.error(path, "use either `client_net` or `spf_domain`, not both");
        return None;
    }
    if out.is_empty() {
        d.error(path, "the greylist key needs at least one part");
        return None;
    }
    Some(out)
}
