//! Conditions on the session itself:
//!
//! ```yaml
//! tls: true                 # the session is (now) encrypted
//! submission: false         # the listener is not a submission listener (mode: mx)
//! listener: [mx, mx-backup] # the listener's name (one name or a list)
//! ```

use serde_yaml_ng::Value;

use super::Condition;
use crate::policy::load::Decoder;
use crate::policy::subject::Subject;
use crate::policy::yaml::KeyPath;

#[derive(Debug)]
struct Tls(bool);

impl Condition for Tls {
    fn matches(&self, s: &Subject<'_>) -> bool {
        s.facts.client.tls == self.0
    }
    fn describe(&self) -> String {
        format!("tls is {}", self.0)
    }
    fn observed(&self, s: &Subject<'_>) -> String {
        format!("tls={}", s.facts.client.tls)
    }
}

pub(super) fn parse_tls(
    d: &mut Decoder<'_>,
    v: &Value,
    path: &KeyPath,
) -> Option<Box<dyn Condition>> {
    Some(Box::new(Tls(d.bool(v, path)?)))
}

#[derive(Debug)]
struct Submission(bool);

impl Condition for Submission {
    fn matches(&self, s: &Subject<'_>) -> bool {
        s.facts.client.submission == self.0
    }
    fn describe(&self) -> String {
        format!("submission is {}", self.0)
    }
    fn observed(&self, s: &Subject<'_>) -> String {
        format!("submission={}", s.facts.client.submission)
    }
}

pub(super) fn parse_submission(
    d: &mut Decoder<'_>,
    v: &Value,
    path: &KeyPath,
) -> Option<Box<dyn Condition>> {
    Some(Box::new(Submission(d.bool(v, path)?)))
}

#[derive(Debug)]
struct Listener(Vec<String>);

impl Condition for Listener {
    fn matches(&self, s: &Subject<'_>) -> bool {
        self.0.contains(&s.facts.client.listener)
    }
    fn describe(&self) -> String {
        format!("listener in [{}]", self.0.join(", "))
    }
    fn observed(&self, s: &Subject<'_>) -> String {
        format!("listener={:?}", s.facts.client.listener)
    }
}

pub(super) fn parse_listener(
    d: &mut Decoder<'_>,
    v: &Value,
    path: &KeyPath,
) -> Option<Box<dyn Condition>> {
    let names = match v {
        Value::String(s) => vec![s.clone()],
        Value::Sequence(items) => {
            let mut names = Vec::new();
            for (i, item) in items.iter().enumerate() {
                match item {
                    Value::String(s) => names.push(s.clone()),
                    _ => {
                        d.error(&path.index(i), "expected a listener name");
                        return None;
                    }
                }
            }
            names
        }
        _ => {
            d.error(path, "expected a listener name or a list of names");
            return None;
        }
    };
    Some(Box::new(Listener(names)))
}
