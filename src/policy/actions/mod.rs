//! Actions: what a matching rule's `then:` does.
//!
//! `accept`, `reject`, `tempfail` are decisive (the first one ends the stage);
//! `add_header` and `continue` are not. `greylist` and `rate_limit` (one module each)
//! end the evaluation with a pending check that the session resolves against the state
//! store: a refusal, or evaluation resumes after the rule.

mod common;
pub(crate) mod greylist;
pub(crate) mod rate_limit;
mod template;

use std::fmt;

use serde_yaml_ng::Value;

pub(crate) use template::{Template, sanitize};

use super::load::Decoder;
use super::subject::Subject;
use super::yaml::{KeyPath, kind_of};
use crate::envelope::Stage;
use crate::reply::{Reply, StatusCode};

/// The kind of action a rule takes, as reported in [`super::RuleHit`] and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActionKind {
    Accept,
    Reject,
    Tempfail,
    AddHeader,
    Continue,
    Greylist,
    RateLimit,
}

impl ActionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Accept => "accept",
            ActionKind::Reject => "reject",
            ActionKind::Tempfail => "tempfail",
            ActionKind::AddHeader => "add_header",
            ActionKind::Continue => "continue",
            ActionKind::Greylist => "greylist",
            ActionKind::RateLimit => "rate_limit",
        }
    }

    /// Whether this action ends the stage's evaluation when it acts.
    pub fn is_decisive(self) -> bool {
        matches!(
            self,
            ActionKind::Accept | ActionKind::Reject | ActionKind::Tempfail
        )
    }

    /// Where the action makes sense: headers can only be added to a message.
    fn stages(self) -> &'static [Stage] {
        match self {
            ActionKind::AddHeader => &[Stage::Data],
            _ => &Stage::ALL,
        }
    }
}

impl fmt::Display for ActionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A reply with a text template, checked at load.
#[derive(Debug, Clone)]
pub(crate) struct ReplyTemplate {
    pub code: u16,
    pub status: StatusCode,
    pub text: Template,
}

impl ReplyTemplate {
    pub fn render(&self, s: &Subject<'_>, rule: &str) -> Reply {
        Reply::new(self.code, self.status, self.text.render(s, rule))
    }
}

impl fmt::Display for ReplyTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.code, self.status, self.text)
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Action {
    Accept,
    Continue,
    Reject(ReplyTemplate),
    Tempfail(ReplyTemplate),
    /// Header field name and value template.
    AddHeader(String, Template),
    Greylist(greylist::GreylistAction),
    RateLimit(rate_limit::RateLimitAction),
}

impl Action {
    /// The checks the action itself needs before its rule runs.
    pub fn needs(&self) -> crate::envelope::Checks {
        match self {
            Action::Greylist(g) => g.needs(),
            _ => crate::envelope::Checks::NONE,
        }
    }

    pub fn kind(&self) -> ActionKind {
        match self {
            Action::Accept => ActionKind::Accept,
            Action::Continue => ActionKind::Continue,
            Action::Reject(_) => ActionKind::Reject,
            Action::Tempfail(_) => ActionKind::Tempfail,
            Action::AddHeader(..) => ActionKind::AddHeader,
            Action::Greylist(_) => ActionKind::Greylist,
            Action::RateLimit(_) => ActionKind::RateLimit,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Accept => f.write_str("accept"),
            Action::Continue => f.write_str("continue"),
            Action::Reject(r) => write!(f, "reject \"{r}\""),
            Action::Tempfail(r) => write!(f, "tempfail \"{r}\""),
            Action::AddHeader(n, v) => write!(f, "add_header \"{n}: {v}\""),
            Action::Greylist(g) => write!(f, "{g}"),
            Action::RateLimit(r) => write!(f, "{r}"),
        }
    }
}

/// The reply used by `then: reject` / `then: tempfail` without a reply of its own:
/// an enhanced code of class 7 ("security or policy status", RFC 3463) and a text that
/// says what was refused.
pub(crate) fn default_reply(kind: ActionKind, stage: Stage) -> ReplyTemplate {
    let (code, status, text) = match (kind, stage) {
        (ActionKind::Tempfail, Stage::Connect) => (
            421,
            StatusCode(4, 7, 1),
            "Service temporarily unavailable by policy, try again later",
        ),
        (ActionKind::Tempfail, Stage::Helo) => (
            451,
            StatusCode(4, 7, 1),
            "HELO deferred by policy, try again later",
        ),
        (ActionKind::Tempfail, Stage::Mail) => (
            451,
            StatusCode(4, 7, 1),
            "Sender deferred by policy, try again later",
        ),
        (ActionKind::Tempfail, Stage::Rcpt) => (
            451,
            StatusCode(4, 7, 1),
            "Recipient deferred by policy, try again later",
        ),
        (ActionKind::Tempfail, Stage::Data) => (
            451,
            StatusCode(4, 7, 1),
            "Message deferred by policy, try again later",
        ),
        (_, Stage::Connect) => (554, StatusCode(5, 7, 1), "Connection rejected by policy"),
        (_, Stage::Helo) => (550, StatusCode(5, 7, 1), "HELO rejected by policy"),
        (_, Stage::Mail) => (550, StatusCode(5, 7, 1), "Sender rejected by policy"),
        (_, Stage::Rcpt) => (550, StatusCode(5, 7, 1), "Recipient rejected by policy"),
        (_, Stage::Data) => (550, StatusCode(5, 7, 1), "Message rejected by policy"),
    };
    ReplyTemplate {
        code,
        status,
        text: Template::parse(text).expect("default reply texts have no placeholders"),
    }
}

/// Parses `550 5.7.1 Text {rule}` (the enhanced code is optional and defaults to
/// `x.7.1`; the text is optional and defaults to the stage's default text).
pub(crate) fn parse_reply(
    s: &str,
    kind: ActionKind,
    stage: Option<Stage>,
) -> Result<ReplyTemplate, String> {
    if s.contains(['\r', '\n']) {
        return Err("reply must be one line".into());
    }
    if s.chars().any(char::is_control) {
        return Err("reply must not contain control characters".into());
    }
    let want_class: u8 = if kind == ActionKind::Reject { 5 } else { 4 };
    let s = s.trim();
    let (code_str, rest) = s.split_once(' ').unwrap_or((s, ""));
    let code: u16 = match code_str.parse() {
        Ok(c) if code_str.len() == 3 => c,
        _ => {
            return Err(format!(
                "reply must start with a 3-digit code like {want_class}50, found {code_str:?}"
            ));
        }
    };
    if code / 100 != u16::from(want_class) || code % 100 / 10 > 5 {
        return Err(format!(
            "{kind} needs a {want_class}xx reply code, found {code}"
        ));
    }
    let rest = rest.trim_start();
    let (status, text) = match rest.split_once(' ').unwrap_or((rest, "")) {
        (first, text) if first.starts_with(|c: char| c.is_ascii_digit()) && first.contains('.') => {
            let parts: Vec<&str> = first.split('.').collect();
            let nums: Option<Vec<u16>> = parts.iter().map(|p| p.parse::<u16>().ok()).collect();
            match nums.as_deref() {
                Some([c, sub, det]) if parts.iter().all(|p| (1..=3).contains(&p.len())) => {
                    if u16::from(want_class) != *c {
                        return Err(format!(
                            "enhanced status code {first} does not match reply code {code} (expected {want_class}.x.x)"
                        ));
                    }
                    (StatusCode(want_class, *sub, *det), text.trim())
                }
                _ => {
                    return Err(format!(
                        "invalid enhanced status code {first:?}, expected class.subject.detail like {want_class}.7.1"
                    ));
                }
            }
        }
        _ => (StatusCode(want_class, 7, 1), rest),
    };
    if text.chars().count() > 400 {
        return Err("reply text is longer than 400 characters".into());
    }
    let text = if text.is_empty() {
        match stage {
            Some(st) => default_reply(kind, st).text,
            None => Template::parse("Rejected by policy").expect("static"),
        }
    } else {
        Template::parse(text)?
    };
    Ok(ReplyTemplate { code, status, text })
}

/// A legal header field name (RFC 5322 §3.6.8): printable ASCII except `:`.
pub(crate) fn valid_field_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (33..=126).contains(&b) && b != b':')
}

fn parse_header(s: &str) -> Result<(String, Template), String> {
    if s.contains(['\r', '\n']) {
        return Err("header must be one line".into());
    }
    if s.chars().any(char::is_control) {
        return Err("header must not contain control characters".into());
    }
    let Some((name, value)) = s.split_once(':') else {
        return Err(format!("expected \"Name: value\", found {s:?}"));
    };
    if !valid_field_name(name) {
        return Err(format!("invalid header field name {name:?}"));
    }
    if s.len() > 998 {
        return Err("header line is longer than 998 characters".into());
    }
    Ok((name.to_owned(), Template::parse(value.trim())?))
}

const ACTION_NAMES: &str =
    "`accept`, `reject`, `tempfail`, `add_header`, `continue`, `greylist`, `rate_limit`";

/// Compiles `then:`: a bare action name, or a mapping with exactly one action and its
/// argument (`{ reject: "550 5.7.1 No" }`, `{ add_header: "X-Tag: yes" }`).
pub(crate) fn parse(d: &mut Decoder<'_>, v: &Value, path: &KeyPath) -> Option<Action> {
    let (name, arg, apath, at_key) = match v {
        Value::String(s) => (s.as_str(), None, path.clone(), false),
        Value::Mapping(m) => {
            if m.len() != 1 {
                d.error(
                    path,
                    format!("expected exactly one action, found {} entries", m.len()),
                );
                return None;
            }
            let (k, val) = m.iter().next()?;
            let Some(k) = k.as_str() else {
                d.error(
                    path,
                    format!("expected an action name, found {}", kind_of(k)),
                );
                return None;
            };
            (k, Some(val), path.key(k), true)
        }
        other => {
            d.error(
                path,
                format!(
                    "expected an action ({ACTION_NAMES}), found {}",
                    kind_of(other)
                ),
            );
            return None;
        }
    };
    let kind = match name {
        "accept" => ActionKind::Accept,
        "reject" => ActionKind::Reject,
        "tempfail" => ActionKind::Tempfail,
        "add_header" => ActionKind::AddHeader,
        "continue" => ActionKind::Continue,
        "greylist" => ActionKind::Greylist,
        "rate_limit" => ActionKind::RateLimit,
        other => {
            let msg = format!("unknown action `{other}`, expected one of {ACTION_NAMES}");
            if at_key {
                d.error_at_key(&apath, msg);
            } else {
                d.error(&apath, msg);
            }
            return None;
        }
    };
    if let Some(stage) = d.stage
        && !kind.stages().contains(&stage)
    {
        let msg = format!("action `{kind}` is not allowed at stage {stage} (only at data)");
        if at_key {
            d.error_at_key(&apath, msg);
        } else {
            d.error(&apath, msg);
        }
        return None;
    }
    let arg = arg.filter(|a| !a.is_null());
    // The store-backed actions take a mapping of options and check their own stages.
    match kind {
        ActionKind::Greylist => return greylist::parse(d, arg, &apath).map(Action::Greylist),
        ActionKind::RateLimit => {
            return rate_limit::parse(d, arg, &apath).map(Action::RateLimit);
        }
        _ => {}
    }
    let text = match arg {
        None => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(other) => {
            d.error(
                &apath,
                format!("expected a string argument, found {}", kind_of(other)),
            );
            return None;
        }
    };
    let result = match (kind, text) {
        (ActionKind::Accept, None) => Ok(Action::Accept),
        (ActionKind::Continue, None) => Ok(Action::Continue),
        (ActionKind::Accept | ActionKind::Continue, Some(_)) => {
            Err(format!("`{kind}` takes no argument"))
        }
        (ActionKind::Reject | ActionKind::Tempfail, None) => {
            let stage = d.stage?;
            let t = default_reply(kind, stage);
            Ok(if kind == ActionKind::Reject {
                Action::Reject(t)
            } else {
                Action::Tempfail(t)
            })
        }
        (ActionKind::Reject, Some(s)) => parse_reply(s, kind, d.stage).map(Action::Reject),
        (ActionKind::Tempfail, Some(s)) => parse_reply(s, kind, d.stage).map(Action::Tempfail),
        (ActionKind::AddHeader, None) => Err("`add_header` needs a \"Name: value\" line".into()),
        (ActionKind::AddHeader, Some(s)) => parse_header(s).map(|(n, v)| Action::AddHeader(n, v)),
        (ActionKind::Greylist | ActionKind::RateLimit, _) => unreachable!("parsed above"),
    };
    match result {
        Ok(a) => Some(a),
        Err(e) => {
            d.error(&apath, e);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_validation() {
        let r = parse_reply(
            "550 5.7.1 Relaying denied",
            ActionKind::Reject,
            Some(Stage::Rcpt),
        )
        .unwrap();
        assert_eq!(r.to_string(), "550 5.7.1 Relaying denied");
        let r = parse_reply("554 No thanks", ActionKind::Reject, Some(Stage::Rcpt)).unwrap();
        assert_eq!(r.to_string(), "554 5.7.1 No thanks");
        let r = parse_reply("451", ActionKind::Tempfail, Some(Stage::Mail)).unwrap();
        assert_eq!(
            r.to_string(),
            "451 4.7.1 Sender deferred by policy, try again later"
        );
        for (s, kind, err) in [
            (
                "450 4.7.1 x",
                ActionKind::Reject,
                "reject needs a 5xx reply code, found 450",
            ),
            (
                "550 5.7.1 x",
                ActionKind::Tempfail,
                "tempfail needs a 4xx reply code, found 550",
            ),
            (
                "550 4.7.1 x",
                ActionKind::Reject,
                "enhanced status code 4.7.1 does not match reply code 550 (expected 5.x.x)",
            ),
            (
                "55 x",
                ActionKind::Reject,
                "reply must start with a 3-digit code like 550, found \"55\"",
            ),
            (
                "550 5.7.1 a\nb",
                ActionKind::Reject,
                "reply must be one line",
            ),
            (
                "550 5.7 x",
                ActionKind::Reject,
                "invalid enhanced status code \"5.7\", expected class.subject.detail like 5.7.1",
            ),
        ] {
            assert_eq!(
                parse_reply(s, kind, Some(Stage::Rcpt)).unwrap_err(),
                err,
                "{s}"
            );
        }
    }

    #[test]
    fn header_validation() {
        assert!(parse_header("X-Spam-Flag: YES").is_ok());
        assert!(parse_header("X Spam: YES").is_err());
        assert!(parse_header("NoColon").is_err());
        assert!(parse_header("X-A: b\r\nX-B: c").is_err());
    }
}
