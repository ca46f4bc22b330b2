//! The configuration of one milter, and what to do when a filter cannot be asked.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::reply::{Reply, StatusCode};

/// What a filter's verdict is when the filter is down, too slow or broken (Postfix's
/// `milter_default_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultAction {
    /// `451 4.7.1`: the sender retries later. The default, as in the issue; note that
    /// Postfix 3.11 moved its own default to `shutdown`, because on a long-lived connection
    /// tempfail refuses message after message.
    #[default]
    Tempfail,
    /// Go on as if the filter had said nothing (fail open).
    Accept,
    /// `550 5.5.0`: refuse (fail closed).
    Reject,
    /// `421 4.7.1` and close the client connection.
    Shutdown,
}

impl DefaultAction {
    pub const ALL: [DefaultAction; 4] = [
        DefaultAction::Tempfail,
        DefaultAction::Accept,
        DefaultAction::Reject,
        DefaultAction::Shutdown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DefaultAction::Tempfail => "tempfail",
            DefaultAction::Accept => "accept",
            DefaultAction::Reject => "reject",
            DefaultAction::Shutdown => "shutdown",
        }
    }

    /// The reply Postfix gives for a milter communication failure; `None` for accept.
    pub fn reply(self) -> Option<Reply> {
        match self {
            DefaultAction::Accept => None,
            DefaultAction::Tempfail => Some(Reply::new(
                451,
                StatusCode(4, 7, 1),
                "Service unavailable - try again later",
            )),
            DefaultAction::Reject => {
                Some(Reply::new(550, StatusCode(5, 5, 0), "Service unavailable"))
            }
            DefaultAction::Shutdown => Some(Reply::new(
                421,
                StatusCode(4, 7, 1),
                "Service unavailable - try again later",
            )),
        }
    }
}

impl fmt::Display for DefaultAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a milter listens: `host:port` (also `inet:host:port`, `[::1]:port`) or
/// `unix:/path` (also `local:/path`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MilterEndpoint {
    Tcp { host: String, port: u16 },
    Unix(PathBuf),
}

impl FromStr for MilterEndpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Some(path) = s.strip_prefix("unix:").or_else(|| s.strip_prefix("local:")) {
            if !path.starts_with('/') {
                return Err(format!("milter socket {s:?}: the path must be absolute"));
            }
            return Ok(MilterEndpoint::Unix(PathBuf::from(path)));
        }
        let hostport = s.strip_prefix("inet:").unwrap_or(s);
        let bad = || format!("milter address {s:?}: expected host:port or unix:/path");
        let (host, port) = hostport.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() || port == 0 {
            return Err(bad());
        }
        Ok(MilterEndpoint::Tcp {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for MilterEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MilterEndpoint::Tcp { host, port } if host.contains(':') => {
                write!(f, "[{host}]:{port}")
            }
            MilterEndpoint::Tcp { host, port } => write!(f, "{host}:{port}"),
            MilterEndpoint::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl<'de> Deserialize<'de> for MilterEndpoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// One milter, as configured:
///
/// ```yaml
/// name: clamav                  # logs, metrics, rule conditions
/// milter: 127.0.0.1:7357        # host:port, or unix:/path
/// default_action: tempfail      # tempfail | accept | reject | shutdown
/// connect_timeout: 30s          # connect + option negotiation
/// command_timeout: 30s          # each reply to connect/helo/mail/rcpt/data
/// content_timeout: 300s         # each reply to header/eoh/body/eom; also the total
///                               #   wait for any one event while the milter says PROGRESS
/// tolerate_unoffered_actions: false   # true for rspamd (see negotiate.rs)
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MilterConfig {
    pub name: String,
    pub milter: MilterEndpoint,
    #[serde(default)]
    pub default_action: DefaultAction,
    #[serde(default = "defaults::connect", deserialize_with = "de_duration")]
    pub connect_timeout: Duration,
    #[serde(default = "defaults::command", deserialize_with = "de_duration")]
    pub command_timeout: Duration,
    #[serde(default = "defaults::content", deserialize_with = "de_duration")]
    pub content_timeout: Duration,
    #[serde(default)]
    pub tolerate_unoffered_actions: bool,
}

impl MilterConfig {
    /// A milter with Postfix's default timeouts and `default_action: tempfail`.
    pub fn new(name: impl Into<String>, milter: MilterEndpoint) -> Self {
        MilterConfig {
            name: name.into(),
            milter,
            default_action: DefaultAction::default(),
            connect_timeout: defaults::connect(),
            command_timeout: defaults::command(),
            content_timeout: defaults::content(),
            tolerate_unoffered_actions: false,
        }
    }
}

/// Postfix's `milter_connect_timeout`, `milter_command_timeout`, `milter_content_timeout`.
pub mod defaults {
    use std::time::Duration;

    pub fn connect() -> Duration {
        Duration::from_secs(30)
    }
    pub fn command() -> Duration {
        Duration::from_secs(30)
    }
    pub fn content() -> Duration {
        Duration::from_secs(300)
    }
}

/// Durations as mxguard's config writes them: a number of seconds or `300s`, `5m`, `250ms`.
pub fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Num(f64),
        Str(String),
    }
    let dur = match Raw::deserialize(d)? {
        Raw::Num(n) if n >= 0.0 && n.is_finite() => Duration::from_secs_f64(n),
        Raw::Num(n) => return Err(serde::de::Error::custom(format!("invalid duration {n}"))),
        Raw::Str(s) => crate::config::parse_duration(&s).map_err(serde::de::Error::custom)?,
    };
    if dur.is_zero() {
        return Err(serde::de::Error::custom(
            "a timeout must be greater than zero",
        ));
    }
    Ok(dur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_and_print() {
        for (text, want, shown) in [
            (
                "127.0.0.1:7357",
                MilterEndpoint::Tcp {
                    host: "127.0.0.1".into(),
                    port: 7357,
                },
                "127.0.0.1:7357",
            ),
            (
                "inet:milter.example:11332",
                MilterEndpoint::Tcp {
                    host: "milter.example".into(),
                    port: 11332,
                },
                "milter.example:11332",
            ),
            (
                "[::1]:8891",
                MilterEndpoint::Tcp {
                    host: "::1".into(),
                    port: 8891,
                },
                "[::1]:8891",
            ),
            (
                "unix:/run/opendkim/opendkim.sock",
                MilterEndpoint::Unix("/run/opendkim/opendkim.sock".into()),
                "unix:/run/opendkim/opendkim.sock",
            ),
        ] {
            let got: MilterEndpoint = text.parse().unwrap();
            assert_eq!(got, want);
            assert_eq!(got.to_string(), shown);
        }
        for bad in ["127.0.0.1", "host:0", ":25", "unix:relative", "host:99999"] {
            assert!(bad.parse::<MilterEndpoint>().is_err(), "{bad}");
        }
    }

    #[test]
    fn yaml_with_defaults_and_overrides() {
        let c: MilterConfig =
            serde_yaml_ng::from_str("name: clamav\nmilter: 127.0.0.1:7357\n").unwrap();
        assert_eq!(
            c,
            MilterConfig::new("clamav", "127.0.0.1:7357".parse().unwrap())
        );
        let c: MilterConfig = serde_yaml_ng::from_str(
            "name: dkim\nmilter: unix:/run/dkim.sock\ndefault_action: accept\n\
             connect_timeout: 5s\ncommand_timeout: 2\ncontent_timeout: 1m\n",
        )
        .unwrap();
        assert_eq!(c.default_action, DefaultAction::Accept);
        assert_eq!(
            (c.connect_timeout, c.command_timeout, c.content_timeout),
            (
                Duration::from_secs(5),
                Duration::from_secs(2),
                Duration::from_secs(60)
            )
        );
    }

    #[test]
    fn yaml_errors_name_the_problem() {
        let e = serde_yaml_ng::from_str::<MilterConfig>("name: a\nmilter: x:1\ntimeout: 3s\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `timeout`"), "{e}");
        let e = serde_yaml_ng::from_str::<MilterConfig>(
            "name: a\nmilter: x:1\ndefault_action: quarantine\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown variant `quarantine`"), "{e}");
        let e = serde_yaml_ng::from_str::<MilterConfig>("name: a\nmilter: nowhere\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected host:port or unix:/path"), "{e}");
    }

    #[test]
    fn default_action_replies() {
        assert_eq!(DefaultAction::Accept.reply(), None);
        assert_eq!(DefaultAction::Tempfail.reply().unwrap().code, 451);
        assert_eq!(DefaultAction::Reject.reply().unwrap().code, 550);
        assert_eq!(DefaultAction::Shutdown.reply().unwrap().code, 421);
    }
}
