//! Conditions: what a rule's `if:` may test.
//!
//! Each kind of condition lives in its own module and is listed once in [`KINDS`] with
//! the stages at which its facts exist and the function that compiles it from YAML.
//! The DNS checks (`spf`, `dkim`, `dmarc`, `dnsbl`, `dnsbl_score`, `rdns`) test facts
//! the session gathered before calling the policy; each says which checks it needs
//! ([`Condition::needs`]) so the session runs only those.

mod dkim;
mod dmarc;
mod dnsbl;
mod filter;
mod message;
mod network;
mod numeric;
mod rdns;
mod session;
mod spf;
mod text;

use std::fmt;

use serde_yaml_ng::Value;

use super::load::Decoder;
use super::subject::Subject;
use super::yaml::{KeyPath, kind_of};
use crate::envelope::{Checks, Stage};

/// A compiled test of the facts. Implementations are pure: no I/O, no clock.
pub(crate) trait Condition: Send + Sync + fmt::Debug {
    fn matches(&self, s: &Subject<'_>) -> bool;

    /// What the condition tests, e.g. `client_ip in list trusted_nets`.
    fn describe(&self) -> String;

    /// What the facts held for this condition, e.g. `client_ip=192.0.2.1`, and why it
    /// matched when that is not obvious (which list item).
    fn observed(&self, s: &Subject<'_>) -> String;

    /// The network checks whose results this condition tests (none for envelope tests).
    fn needs(&self) -> Checks {
        Checks::NONE
    }

    /// The content filters whose verdicts this condition tests (`""`: any rspamd filter).
    fn filters(&self) -> Vec<String> {
        Vec::new()
    }

    /// Appends one line per condition of this (sub)tree to `out`, indented by `depth`,
    /// and returns whether it matched. Leaves use this default; combinators recurse.
    fn explain(&self, s: &Subject<'_>, depth: usize, out: &mut Vec<String>) -> bool {
        let m = self.matches(s);
        out.push(format!(
            "{:indent$}{} {} ({})",
            "",
            mark(m),
            self.describe(),
            self.observed(s),
            indent = depth * 2
        ));
        m
    }
}

pub(crate) fn mark(m: bool) -> &'static str {
    if m { "[yes]" } else { "[no] " }
}

/// One kind of condition: its key in `if:`, where its facts exist, how to compile it.
pub(crate) struct ConditionKind {
    pub name: &'static str,
    pub stages: &'static [Stage],
    pub parse: fn(&mut Decoder<'_>, &Value, &KeyPath) -> Option<Box<dyn Condition>>,
}

const ALL: &[Stage] = &Stage::ALL;
const FROM_HELO: &[Stage] = &[Stage::Helo, Stage::Mail, Stage::Rcpt, Stage::Data];
const FROM_MAIL: &[Stage] = &[Stage::Mail, Stage::Rcpt, Stage::Data];
const FROM_RCPT: &[Stage] = &[Stage::Rcpt, Stage::Data];
const SIZED: &[Stage] = &[Stage::Mail, Stage::Data];
const DATA: &[Stage] = &[Stage::Data];

/// Every condition key, in the order the reference documents them.
pub(crate) const KINDS: &[ConditionKind] = &[
    ConditionKind {
        name: "client_ip",
        stages: ALL,
        parse: network::parse,
    },
    ConditionKind {
        name: "client_net",
        stages: ALL,
        parse: network::parse,
    },
    ConditionKind {
        name: "helo",
        stages: FROM_HELO,
        parse: text::parse_helo,
    },
    ConditionKind {
        name: "sender",
        stages: FROM_MAIL,
        parse: text::parse_sender,
    },
    ConditionKind {
        name: "sender_domain",
        stages: FROM_MAIL,
        parse: text::parse_sender_domain,
    },
    ConditionKind {
        name: "recipient",
        stages: FROM_RCPT,
        parse: text::parse_recipient,
    },
    ConditionKind {
        name: "recipient_domain",
        stages: FROM_RCPT,
        parse: text::parse_recipient_domain,
    },
    ConditionKind {
        name: "recipient_count",
        stages: FROM_RCPT,
        parse: numeric::parse_recipient_count,
    },
    ConditionKind {
        name: "size",
        stages: SIZED,
        parse: numeric::parse_size,
    },
    ConditionKind {
        name: "tls",
        stages: ALL,
        parse: session::parse_tls,
    },
    ConditionKind {
        name: "submission",
        stages: ALL,
        parse: session::parse_submission,
    },
    ConditionKind {
        name: "listener",
        stages: ALL,
        parse: session::parse_listener,
    },
    ConditionKind {
        name: "auth_user",
        stages: FROM_MAIL,
        parse: text::parse_auth_user,
    },
    ConditionKind {
        name: "spf",
        stages: FROM_MAIL,
        parse: spf::parse,
    },
    ConditionKind {
        name: "dkim",
        stages: DATA,
        parse: dkim::parse,
    },
    ConditionKind {
        name: "dmarc",
        stages: DATA,
        parse: dmarc::parse,
    },
    ConditionKind {
        name: "dnsbl",
        stages: ALL,
        parse: dnsbl::parse_dnsbl,
    },
    ConditionKind {
        name: "dnsbl_score",
        stages: ALL,
        parse: dnsbl::parse_score,
    },
    ConditionKind {
        name: "rdns",
        stages: ALL,
        parse: rdns::parse,
    },
    ConditionKind {
        name: "filter",
        stages: DATA,
        parse: filter::parse_filter,
    },
    ConditionKind {
        name: "rspamd",
        stages: DATA,
        parse: filter::parse_rspamd,
    },
    ConditionKind {
        name: "header",
        stages: DATA,
        parse: message::parse_header,
    },
    ConditionKind {
        name: "body",
        stages: DATA,
        parse: message::parse_body,
    },
];

const COMBINATORS: &[&str] = &["all", "any", "not"];

fn expected_keys() -> String {
    KINDS
        .iter()
        .map(|k| k.name)
        .chain(COMBINATORS.iter().copied())
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Compiles an `if:` value: a mapping whose entries must all hold, or a list of such
/// mappings (all must hold).
pub(crate) fn parse_if(
    d: &mut Decoder<'_>,
    v: &Value,
    path: &KeyPath,
) -> Option<Box<dyn Condition>> {
    match v {
        Value::Mapping(m) => {
            if m.is_empty() {
                d.error(path, "empty condition: leave out `if` to match always");
                return None;
            }
            let mut parts = Vec::new();
            let mut ok = true;
            for (k, val) in m {
                let Some(key) = k.as_str() else {
                    d.error(
                        path,
                        format!("condition keys are names, found {}", kind_of(k)),
                    );
                    ok = false;
                    continue;
                };
                match parse_entry(d, key, val, &path.key(key)) {
                    Some(c) => parts.push(c),
                    None => ok = false,
                }
            }
            if !ok {
                return None;
            }
            if parts.len() == 1 {
                parts.pop()
            } else {
                Some(Box::new(All(parts)))
            }
        }
        Value::Sequence(items) => {
            let parts = parse_list(d, items, path)?;
            Some(Box::new(All(parts)))
        }
        other => {
            d.error(
                path,
                format!("expected a mapping of conditions, found {}", kind_of(other)),
            );
            None
        }
    }
}

fn parse_list(
    d: &mut Decoder<'_>,
    items: &[Value],
    path: &KeyPath,
) -> Option<Vec<Box<dyn Condition>>> {
    if items.is_empty() {
        d.error(path, "empty list of conditions");
        return None;
    }
    let mut parts = Vec::new();
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        match parse_if(d, item, &path.index(i)) {
            Some(c) => parts.push(c),
            None => ok = false,
        }
    }
    ok.then_some(parts)
}

fn parse_entry(
    d: &mut Decoder<'_>,
    key: &str,
    v: &Value,
    path: &KeyPath,
) -> Option<Box<dyn Condition>> {
    match key {
        "all" | "any" => {
            let parts = match v {
                Value::Sequence(items) => parse_list(d, items, path)?,
                other => {
                    d.error(
                        path,
                        format!(
                            "`{key}` takes a list of conditions, found {}",
                            kind_of(other)
                        ),
                    );
                    return None;
                }
            };
            if key == "all" {
                Some(Box::new(All(parts)))
            } else {
                Some(Box::new(Any(parts)))
            }
        }
        "not" => Some(Box::new(Not(parse_if(d, v, path)?))),
        _ => {
            let Some(kind) = KINDS.iter().find(|k| k.name == key) else {
                d.error_at_key(
                    path,
                    format!(
                        "unknown condition `{key}`, expected one of {}",
                        expected_keys()
                    ),
                );
                return None;
            };
            if let Some(stage) = d.stage
                && !kind.stages.contains(&stage)
            {
                let at = kind
                    .stages
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ");
                d.error_at_key(
                    path,
                    format!("`{key}` is not known at stage {stage} (available at: {at})"),
                );
                return None;
            }
            (kind.parse)(d, v, path)
        }
    }
}

/// Matches always: a rule without `if:`.
#[derive(Debug)]
pub(crate) struct Always;

impl Condition for Always {
    fn matches(&self, _: &Subject<'_>) -> bool {
        true
    }
    fn describe(&self) -> String {
        "always (no `if`)".into()
    }
    fn observed(&self, _: &Subject<'_>) -> String {
        "-".into()
    }
}

#[derive(Debug)]
pub(crate) struct All(pub Vec<Box<dyn Condition>>);

impl Condition for All {
    fn matches(&self, s: &Subject<'_>) -> bool {
        self.0.iter().all(|c| c.matches(s))
    }
    fn needs(&self) -> Checks {
        self.0.iter().fold(Checks::NONE, |n, c| n | c.needs())
    }
    fn filters(&self) -> Vec<String> {
        self.0.iter().flat_map(|c| c.filters()).collect()
    }
    fn describe(&self) -> String {
        "all of".into()
    }
    fn observed(&self, _: &Subject<'_>) -> String {
        String::new()
    }
    fn explain(&self, s: &Subject<'_>, depth: usize, out: &mut Vec<String>) -> bool {
        let at = out.len();
        out.push(String::new());
        let mut m = true;
        for c in &self.0 {
            m &= c.explain(s, depth + 1, out);
        }
        out[at] = format!("{:w$}{} all of:", "", mark(m), w = depth * 2);
        m
    }
}

#[derive(Debug)]
pub(crate) struct Any(pub Vec<Box<dyn Condition>>);

impl Condition for Any {
    fn matches(&self, s: &Subject<'_>) -> bool {
        self.0.iter().any(|c| c.matches(s))
    }
    fn needs(&self) -> Checks {
        self.0.iter().fold(Checks::NONE, |n, c| n | c.needs())
    }
    fn filters(&self) -> Vec<String> {
        self.0.iter().flat_map(|c| c.filters()).collect()
    }
    fn describe(&self) -> String {
        "any of".into()
    }
    fn observed(&self, _: &Subject<'_>) -> String {
        String::new()
    }
    fn explain(&self, s: &Subject<'_>, depth: usize, out: &mut Vec<String>) -> bool {
        let at = out.len();
        out.push(String::new());
        let mut m = false;
        for c in &self.0 {
            m |= c.explain(s, depth + 1, out);
        }
        out[at] = format!("{:w$}{} any of:", "", mark(m), w = depth * 2);
        m
    }
}

#[derive(Debug)]
pub(crate) struct Not(pub Box<dyn Condition>);

impl Condition for Not {
    fn matches(&self, s: &Subject<'_>) -> bool {
        !self.0.matches(s)
    }
    fn needs(&self) -> Checks {
        self.0.needs()
    }
    fn filters(&self) -> Vec<String> {
        self.0.filters()
    }
    fn describe(&self) -> String {
        "not".into()
    }
    fn observed(&self, _: &Subject<'_>) -> String {
        String::new()
    }
    fn explain(&self, s: &Subject<'_>, depth: usize, out: &mut Vec<String>) -> bool {
        let at = out.len();
        out.push(String::new());
        let m = !self.0.explain(s, depth + 1, out);
        out[at] = format!("{:w$}{} not:", "", mark(m), w = depth * 2);
        m
    }
}
