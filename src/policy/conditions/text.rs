//! Text conditions on the envelope: `helo`, `sender`, `sender_domain`, `recipient`,
//! `recipient_domain`, `auth_user`.
//!
//! ```yaml
//! sender: ""                            # the null sender <>
//! sender: "*@example.net"               # exact, *-glob, or /regex/
//! sender_domain: [example.net, "*.example.org"]
//! recipient_domain: { in: our_domains } # a named list (or inline items)
//! helo: { is_ip_literal: true }         # also is_fqdn, equals, glob, regex
//! auth_user: true                       # any authenticated user
//! ```
//!
//! Exact items and globs ignore ASCII case (domains and, in practice, local parts are
//! case-insensitive); regexes are used as written, so add `(?i)` where wanted. At
//! `data`, `recipient` and `recipient_domain` hold when *any* recipient matches. A
//! value that does not exist (no HELO yet, the null sender's domain, no AUTH) matches
//! nothing.

use std::sync::Arc;

use serde_yaml_ng::Value;

use super::Condition;
use crate::policy::lists::{Pattern, TextSet, is_fqdn, is_ip_literal};
use crate::policy::load::Decoder;
use crate::policy::subject::{Subject, Text};
use crate::policy::yaml::{KeyPath, kind_of};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Helo,
    Sender,
    SenderDomain,
    Recipient,
    RecipientDomain,
    AuthUser,
}

impl Field {
    fn name(self) -> &'static str {
        match self {
            Field::Helo => "helo",
            Field::Sender => "sender",
            Field::SenderDomain => "sender_domain",
            Field::Recipient => "recipient",
            Field::RecipientDomain => "recipient_domain",
            Field::AuthUser => "auth_user",
        }
    }

    fn values<'s, 'a>(self, s: &'s Subject<'a>) -> &'s [Text<'a>] {
        fn one<'s, 'a>(t: &'s Option<Text<'a>>) -> &'s [Text<'a>] {
            t.as_ref().map(std::slice::from_ref).unwrap_or(&[])
        }
        match self {
            Field::Helo => one(&s.helo),
            Field::Sender => one(&s.sender),
            Field::SenderDomain => one(&s.sender_domain),
            Field::AuthUser => one(&s.auth_user),
            Field::Recipient => &s.recipients,
            Field::RecipientDomain => &s.recipient_domains,
        }
    }

    fn observed(self, s: &Subject<'_>) -> String {
        let vals = self.values(s);
        match vals {
            [] => format!("{} not set", self.name()),
            [one] => format!("{}={:?}", self.name(), one.orig),
            many => {
                let v: Vec<String> = many.iter().map(|t| format!("{:?}", t.orig)).collect();
                format!("{}=[{}]", self.name(), v.join(", "))
            }
        }
    }
}

#[derive(Debug)]
enum Test {
    Set { set: Arc<TextSet>, label: String },
    IpLiteral(bool),
    Fqdn(bool),
    Present(bool),
}

#[derive(Debug)]
struct TextCond {
    field: Field,
    test: Test,
}

impl Condition for TextCond {
    fn matches(&self, s: &Subject<'_>) -> bool {
        let vals = self.field.values(s);
        match &self.test {
            Test::Set { set, .. } => vals.iter().any(|t| set.is_match(t.orig, &t.lower)),
            Test::IpLiteral(want) => vals.iter().any(|t| is_ip_literal(t.orig) == *want),
            Test::Fqdn(want) => vals.iter().any(|t| is_fqdn(t.orig) == *want),
            Test::Present(want) => vals.is_empty() != *want,
        }
    }

    fn describe(&self) -> String {
        let f = self.field.name();
        match &self.test {
            Test::Set { label, .. } => format!("{f} matches {label}"),
            Test::IpLiteral(b) => format!("{f} is_ip_literal is {b}"),
            Test::Fqdn(b) => format!("{f} is_fqdn is {b}"),
            Test::Present(b) => format!("{f} present is {b}"),
        }
    }

    fn observed(&self, s: &Subject<'_>) -> String {
        let mut o = self.field.observed(s);
        if let Test::Set { set, .. } = &self.test {
            let hit = self
                .field
                .values(s)
                .iter()
                .find_map(|t| set.find(t.orig, &t.lower));
            if let Some(p) = hit {
                o.push_str(&format!("; matched item {p}"));
            }
        }
        o
    }
}

pub(super) fn parse_helo(
    d: &mut Decoder<'_>,
    v: &Value,
    p: &KeyPath,
) -> Option<Box<dyn Condition>> {
    parse(d, Field::Helo, v, p)
}
pub(super) fn parse_sender(
    d: &mut Decoder<'_>,
    v: &Value,
    p: &KeyPath,
) -> Option<Box<dyn Condition>> {
    parse(d, Field::Sender, v, p)
}
pub(super) fn parse_sender_domain(
    d: &mut Decoder<'_>,
    v: &Value,
    p: &KeyPath,
) -> Option<Box<dyn Condition>> {
    parse(d, Field::SenderDomain, v, p)
}
pub(super) fn parse_recipient(
    d: &mut Decoder<'_>,
    v: &Value,
    p: &KeyPath,
) -> Option<Box<dyn Condition>> {
    parse(d, Field::Recipient, v, p)
}
pub(super) fn parse_recipient_domain(
    d: &mut Decoder<'_>,
    v: &Value,
    p: &KeyPath,
) -> Option<Box<dyn Condition>> {
    parse(d, Field::RecipientDomain, v, p)
}
pub(super) fn parse_auth_user(
    d: &mut Decoder<'_>,
    v: &Value,
    p: &KeyPath,
) -> Option<Box<dyn Condition>> {
    parse(d, Field::AuthUser, v, p)
}

fn boxed(field: Field, test: Test) -> Box<dyn Condition> {
    Box::new(TextCond { field, test })
}

fn parse(
    d: &mut Decoder<'_>,
    field: Field,
    v: &Value,
    path: &KeyPath,
) -> Option<Box<dyn Condition>> {
    match v {
        Value::String(_) | Value::Sequence(_) => {
            let (set, label) = d.inline_patterns(v, path, Pattern::classify)?;
            Some(boxed(field, Test::Set { set, label }))
        }
        Value::Bool(b) if field == Field::AuthUser => Some(boxed(field, Test::Present(*b))),
        Value::Mapping(_) => {
            let mut keys = vec!["equals", "glob", "regex", "in"];
            if field == Field::Helo {
                keys.extend(["is_ip_literal", "is_fqdn"]);
            }
            let entries = d.mapping(v, path, &keys)?;
            if entries.is_empty() {
                d.error(path, format!("expected one of {}", keys.join(", ")));
                return None;
            }
            let mut parts: Vec<Box<dyn Condition>> = Vec::new();
            let mut ok = true;
            for (k, val) in entries {
                let p = path.key(k);
                let test = match k {
                    "is_ip_literal" => d.bool(val, &p).map(Test::IpLiteral),
                    "is_fqdn" => d.bool(val, &p).map(Test::Fqdn),
                    "in" => d
                        .text_in(val, &p)
                        .map(|(set, label)| Test::Set { set, label }),
                    "equals" => d
                        .inline_patterns(val, &p, |s| Pattern::Exact(s.to_owned()))
                        .map(|(set, label)| Test::Set { set, label }),
                    "glob" => d
                        .inline_patterns(val, &p, |s| Pattern::Glob(s.to_owned()))
                        .map(|(set, label)| Test::Set { set, label }),
                    _ => d
                        .inline_patterns(val, &p, |s| Pattern::Regex(strip_slashes(s).to_owned()))
                        .map(|(set, label)| Test::Set { set, label }),
                };
                match test {
                    Some(t) => parts.push(boxed(field, t)),
                    None => ok = false,
                }
            }
            if !ok {
                return None;
            }
            if parts.len() == 1 {
                parts.pop()
            } else {
                Some(Box::new(super::All(parts)))
            }
        }
        other => {
            let extra = if field == Field::AuthUser {
                ", a boolean"
            } else {
                ""
            };
            d.error(
                path,
                format!(
                    "expected a pattern, a list of patterns{extra} or a mapping, found {}",
                    kind_of(other)
                ),
            );
            None
        }
    }
}

/// `regex: "/x/"` and `regex: "x"` mean the same.
pub(crate) fn strip_slashes(s: &str) -> &str {
    if s.len() >= 2 && s.starts_with('/') && s.ends_with('/') {
        &s[1..s.len() - 1]
    } else {
        s
    }
}
