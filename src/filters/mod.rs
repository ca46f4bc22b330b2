//! Content filters: the configuration list `filters: [...]` and the clients behind it —
//! milters ([`crate::milter`]) and rspamd over HTTP ([`rspamd`]).
//!
//! ```yaml
//! filters:
//!   - name: clamav                 # logs, metrics, rule conditions
//!     milter: 127.0.0.1:7357       # host:port, or unix:/path
//!     default_action: tempfail     # tempfail | accept | reject | shutdown
//!   - name: rspamd
//!     rspamd: http://127.0.0.1:11333
//!     default_action: accept
//! ```
//!
//! Each entry is a milter (`milter:` plus `connect_timeout`, `command_timeout`,
//! `content_timeout`, `tolerate_unoffered_actions`) or an rspamd instance (`rspamd:` plus
//! `timeout`); a key of the other kind is an error that says so.

pub mod chain;
pub mod offline;
pub mod rspamd;

use std::time::Duration;

use serde::Deserialize;

pub use crate::milter::{DefaultAction, MilterConfig, MilterEndpoint};
pub use rspamd::{RspamdClient, RspamdConfig, RspamdUrl, RspamdVerdict};

/// One configured content filter.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawFilter")]
pub enum FilterConfig {
    Milter(MilterConfig),
    Rspamd(RspamdConfig),
}

impl FilterConfig {
    pub fn name(&self) -> &str {
        match self {
            FilterConfig::Milter(m) => &m.name,
            FilterConfig::Rspamd(r) => &r.name,
        }
    }

    pub fn default_action(&self) -> DefaultAction {
        match self {
            FilterConfig::Milter(m) => m.default_action,
            FilterConfig::Rspamd(r) => r.default_action,
        }
    }
}

/// Whether a filter's verdicts act or are only reported (for trying a filter on live
/// traffic before trusting it: what it would have done is logged and counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FilterMode {
    #[default]
    Enforce,
    Monitor,
}

/// What a milter's `discard` (accept the message and drop it silently) does: mxguard
/// answers `250` only for what the upstream accepted, so by default a discard is a
/// refusal; `drop` is the explicit opt-in to Sendmail's and Postfix's silent discard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDiscard {
    #[default]
    Reject,
    Drop,
}

/// One entry of `filters:`: the filter, and where and how it applies (Postfix's
/// `smtpd_milters` per listener and `smtpd_milter_maps` per client network).
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    pub kind: FilterConfig,
    /// Listener names it runs on; empty: all (e.g. a signing milter on submission only).
    pub listeners: Vec<String>,
    /// Clients it never sees (e.g. your own relays).
    pub skip_networks: Vec<crate::config::IpNet>,
    /// Authenticated clients are not filtered (submission users).
    pub skip_authenticated: bool,
    pub mode: FilterMode,
    pub on_discard: OnDiscard,
}

impl Filter {
    pub fn name(&self) -> &str {
        self.kind.name()
    }

    /// Whether this session's client is filtered.
    pub fn applies(&self, listener: &str, ip: std::net::IpAddr, authenticated: bool) -> bool {
        (self.listeners.is_empty() || self.listeners.iter().any(|l| l == listener))
            && !self.skip_networks.iter().any(|n| n.contains(ip))
            && !(self.skip_authenticated && authenticated)
    }
}

impl<'de> Deserialize<'de> for Filter {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut map = serde_yaml_ng::Mapping::deserialize(d)?;
        fn field<T: serde::de::DeserializeOwned, E: Error>(
            map: &mut serde_yaml_ng::Mapping,
            key: &str,
        ) -> Result<Option<T>, E> {
            map.remove(serde_yaml_ng::Value::String(key.into()))
                .map(|v| serde_yaml_ng::from_value(v).map_err(|e| E::custom(format!("{key}: {e}"))))
                .transpose()
        }
        let listeners = field::<Vec<String>, D::Error>(&mut map, "listeners")?.unwrap_or_default();
        let skip_networks = field(&mut map, "skip_networks")?.unwrap_or_default();
        let skip_authenticated = field(&mut map, "skip_authenticated")?.unwrap_or(false);
        let mode = field(&mut map, "mode")?.unwrap_or_default();
        let on_discard = field(&mut map, "on_discard")?.unwrap_or_default();
        let kind: FilterConfig = serde_yaml_ng::from_value(serde_yaml_ng::Value::Mapping(map))
            .map_err(D::Error::custom)?;
        Ok(Filter {
            kind,
            listeners,
            skip_networks,
            skip_authenticated,
            mode,
            on_discard,
        })
    }
}

/// Problems across the list: empty or duplicate names (names key logs, metrics and rules).
pub fn validate(filters: &[FilterConfig]) -> Vec<String> {
    let mut errors = Vec::new();
    for (i, f) in filters.iter().enumerate() {
        if f.name().trim().is_empty() {
            errors.push(format!("filters[{i}].name: must not be empty"));
        } else if filters[..i].iter().any(|g| g.name() == f.name()) {
            errors.push(format!("filters[{i}].name: {:?} is used twice", f.name()));
        }
    }
    errors
}

/// A timeout as written in the file.
#[derive(Debug, Clone, Copy)]
struct Timeout(Duration);

impl<'de> Deserialize<'de> for Timeout {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::milter::config::de_duration(d).map(Timeout)
    }
}

/// Every key either kind may have; sorted out in `TryFrom`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFilter {
    name: String,
    milter: Option<MilterEndpoint>,
    rspamd: Option<RspamdUrl>,
    default_action: Option<DefaultAction>,
    connect_timeout: Option<Timeout>,
    command_timeout: Option<Timeout>,
    content_timeout: Option<Timeout>,
    tolerate_unoffered_actions: Option<bool>,
    timeout: Option<Timeout>,
}

impl TryFrom<RawFilter> for FilterConfig {
    type Error = String;

    fn try_from(r: RawFilter) -> Result<Self, String> {
        let name = r.name;
        match (r.milter, r.rspamd) {
            (Some(endpoint), None) => {
                if r.timeout.is_some() {
                    return Err(format!(
                        "filter {name}: `timeout` is for rspamd; a milter has \
                         connect_timeout, command_timeout and content_timeout"
                    ));
                }
                let mut m = MilterConfig::new(name, endpoint);
                if let Some(a) = r.default_action {
                    m.default_action = a;
                }
                if let Some(t) = r.connect_timeout {
                    m.connect_timeout = t.0;
                }
                if let Some(t) = r.command_timeout {
                    m.command_timeout = t.0;
                }
                if let Some(t) = r.content_timeout {
                    m.content_timeout = t.0;
                }
                m.tolerate_unoffered_actions = r.tolerate_unoffered_actions.unwrap_or(false);
                Ok(FilterConfig::Milter(m))
            }
            (None, Some(url)) => {
                let milter_only = [
                    ("connect_timeout", r.connect_timeout.is_some()),
                    ("command_timeout", r.command_timeout.is_some()),
                    ("content_timeout", r.content_timeout.is_some()),
                    (
                        "tolerate_unoffered_actions",
                        r.tolerate_unoffered_actions.is_some(),
                    ),
                ];
                if let Some((key, _)) = milter_only.iter().find(|(_, set)| *set) {
                    return Err(format!(
                        "filter {name}: `{key}` is for milters; rspamd over HTTP has `timeout`"
                    ));
                }
                let mut c = RspamdConfig::new(name, url);
                if let Some(a) = r.default_action {
                    c.default_action = a;
                }
                if let Some(t) = r.timeout {
                    c.timeout = t.0;
                }
                Ok(FilterConfig::Rspamd(c))
            }
            (Some(_), Some(_)) => Err(format!(
                "filter {name}: give either `milter` or `rspamd`, not both"
            )),
            (None, None) => Err(format!(
                "filter {name}: needs `milter: host:port|unix:/path` or `rspamd: http://host:port`"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Vec<FilterConfig>, String> {
        serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn the_issue_example() {
        let f = parse(
            "- name: clamav\n  milter: 127.0.0.1:7357\n  default_action: tempfail\n\
             - name: rspamd\n  rspamd: http://127.0.0.1:11333\n  default_action: accept\n",
        )
        .unwrap();
        assert_eq!(
            f[0],
            FilterConfig::Milter(MilterConfig::new(
                "clamav",
                "127.0.0.1:7357".parse().unwrap()
            ))
        );
        match &f[1] {
            FilterConfig::Rspamd(r) => {
                assert_eq!(r.rspamd.port, 11333);
                assert_eq!(r.default_action, DefaultAction::Accept);
            }
            other => panic!("{other:?}"),
        }
        assert!(validate(&f).is_empty());
    }

    #[test]
    fn timeouts_per_kind() {
        let f = parse(
            "- name: dkim\n  milter: unix:/run/dkim.sock\n  content_timeout: 10s\n\
             - name: r\n  rspamd: http://127.0.0.1:11333\n  timeout: 5s\n",
        )
        .unwrap();
        let FilterConfig::Milter(m) = &f[0] else {
            panic!()
        };
        assert_eq!(m.content_timeout, Duration::from_secs(10));
        let FilterConfig::Rspamd(r) = &f[1] else {
            panic!()
        };
        assert_eq!(r.timeout, Duration::from_secs(5));
    }

    #[test]
    fn errors_say_what_is_wrong() {
        for (yaml, want) in [
            ("- name: a\n", "needs `milter"),
            (
                "- name: a\n  milter: h:1\n  rspamd: http://h:2\n",
                "not both",
            ),
            (
                "- name: a\n  milter: h:1\n  timeout: 3s\n",
                "`timeout` is for rspamd",
            ),
            (
                "- name: a\n  rspamd: http://h:2\n  command_timeout: 3s\n",
                "`command_timeout` is for milters",
            ),
            (
                "- name: a\n  milter: h:1\n  defualt_action: accept\n",
                "unknown field `defualt_action`",
            ),
            (
                "- name: a\n  milter: h:1\n  content_timeout: 0\n",
                "greater than zero",
            ),
        ] {
            let e = parse(yaml).unwrap_err();
            assert!(e.contains(want), "{yaml:?}: {e}");
        }
    }

    #[test]
    fn duplicate_names() {
        let f = parse("- name: a\n  milter: h:1\n- name: a\n  rspamd: http://h:2\n").unwrap();
        assert_eq!(validate(&f), ["filters[1].name: \"a\" is used twice"]);
    }

    #[test]
    fn where_a_filter_applies() {
        let f: Vec<Filter> = serde_yaml_ng::from_str(
            "- name: sign\n  milter: unix:/run/dkim.sock\n  listeners: [submission]\n\
             - name: spam\n  rspamd: http://127.0.0.1:11333\n  skip_networks: [10.0.0.0/8]\n  \
             skip_authenticated: true\n  mode: monitor\n\
             - name: av\n  milter: 127.0.0.1:7357\n  on_discard: drop\n",
        )
        .unwrap();
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert!(f[0].applies("submission", ip("192.0.2.1"), true));
        assert!(!f[0].applies("mx", ip("192.0.2.1"), true));
        assert!(f[1].applies("mx", ip("192.0.2.1"), false));
        assert!(!f[1].applies("mx", ip("10.1.2.3"), false));
        assert!(!f[1].applies("mx", ip("192.0.2.1"), true));
        assert_eq!(f[1].mode, FilterMode::Monitor);
        assert_eq!(f[0].mode, FilterMode::Enforce);
        assert_eq!(f[2].on_discard, OnDiscard::Drop);
        assert_eq!(f[0].on_discard, OnDiscard::Reject);
        assert!(f[2].applies("anything", ip("::1"), true));
    }

    #[test]
    fn placement_keys_are_checked() {
        for (yaml, want) in [
            (
                "- name: a\n  milter: h:1\n  mode: shadow\n",
                "mode: unknown variant `shadow`",
            ),
            (
                "- name: a\n  milter: h:1\n  listeners: mx\n",
                "listeners: invalid type",
            ),
            (
                "- name: a\n  milter: h:1\n  on_discard: accept\n",
                "on_discard: unknown variant",
            ),
            (
                "- name: a\n  milter: h:1\n  skip_networks: [bogus]\n",
                "skip_networks",
            ),
        ] {
            let e = serde_yaml_ng::from_str::<Vec<Filter>>(yaml)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{yaml:?}: {e}");
        }
    }
}
