//! `rdns`: the client's reverse DNS.
//!
//! ```yaml
//! rdns: none                  # no PTR record
//! rdns: mismatch              # PTR names, none resolving back to the address
//! rdns: [none, mismatch]
//! rdns: generic               # the PTR name matches a `checks.rdns.generic` pattern
//! rdns: pass                  # forward-confirmed (FCrDNS)
//! ```
//!
//! `temperror` is the lookup failing (timeout, SERVFAIL).

use serde_yaml_ng::Value;

use super::Condition;
use crate::envelope::{Checks, RdnsStatus};
use crate::policy::load::Decoder;
use crate::policy::subject::Subject;
use crate::policy::yaml::{KeyPath, kind_of};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Status(RdnsStatus),
    Generic,
}

#[derive(Debug)]
struct Rdns(Vec<Want>);

impl Condition for Rdns {
    fn matches(&self, s: &Subject<'_>) -> bool {
        let Some(f) = &s.facts.auth.rdns else {
            return false;
        };
        self.0.iter().any(|w| match w {
            Want::Status(st) => f.status == *st,
            Want::Generic => f.generic,
        })
    }
    fn describe(&self) -> String {
        let v: Vec<&str> = self
            .0
            .iter()
            .map(|w| match w {
                Want::Status(s) => s.as_str(),
                Want::Generic => "generic",
            })
            .collect();
        format!("rdns in [{}]", v.join(", "))
    }
    fn observed(&self, s: &Subject<'_>) -> String {
        match &s.facts.auth.rdns {
            Some(f) => format!(
                "rdns={} name={} generic={}",
                f.status.as_str(),
                f.name.as_deref().unwrap_or("-"),
                f.generic
            ),
            None => "rdns not checked".into(),
        }
    }
    fn needs(&self) -> Checks {
        Checks::RDNS
    }
}

fn one(d: &mut Decoder<'_>, v: &Value, path: &KeyPath) -> Option<Want> {
    let name = d.string(v, path)?;
    Some(match name {
        "pass" => Want::Status(RdnsStatus::Pass),
        "mismatch" => Want::Status(RdnsStatus::Mismatch),
        "none" => Want::Status(RdnsStatus::None),
        "temperror" => Want::Status(RdnsStatus::TempError),
        "generic" => Want::Generic,
        other => {
            d.error(
                path,
                format!("unknown rdns result {other:?}, expected pass, mismatch, none, generic or temperror"),
            );
            return None;
        }
    })
}

pub(super) fn parse(d: &mut Decoder<'_>, v: &Value, path: &KeyPath) -> Option<Box<dyn Condition>> {
    let v = match v {
        Value::Mapping(_) => {
            let entries = d.mapping(v, path, &["in"])?;
            match entries.first() {
                Some((_, val)) => *val,
                None => {
                    d.error(path, "expected `in: [results]`");
                    return None;
                }
            }
        }
        v => v,
    };
    let wants = match v {
        Value::String(_) => vec![one(d, v, path)?],
        Value::Sequence(items) if !items.is_empty() => {
            let mut out = Vec::new();
            for (i, item) in items.iter().enumerate() {
                out.push(one(d, item, &path.index(i))?);
            }
            out
        }
        other => {
            d.error(
                path,
                format!("expected a result or a list, found {}", kind_of(other)),
            );
            return None;
        }
    };
    Some(Box::new(Rdns(wants)))
}
