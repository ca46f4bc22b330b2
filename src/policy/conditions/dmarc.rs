//! `dmarc`: the DMARC result (RFC 7489) of the From domain, and the policy it publishes.
//!
//! ```yaml
//! dmarc: fail
//! dmarc: { result: fail, policy: reject }          # a failure the owner wants rejected
//! dmarc: { result: fail, policy: [quarantine, reject] }
//! ```
//!
//! Policies: `none quarantine reject`; a record with the testing flag (`t=y`) counts
//! one step lower, as DMARCbis says.

use serde_yaml_ng::Value;

use super::Condition;
use super::spf::{names, statuses};
use crate::envelope::{AuthStatus, Checks};
use crate::policy::load::Decoder;
use crate::policy::subject::Subject;
use crate::policy::yaml::{KeyPath, kind_of, one_or_many};

const RESULTS: &[AuthStatus] = &[
    AuthStatus::Pass,
    AuthStatus::Fail,
    AuthStatus::None,
    AuthStatus::TempError,
    AuthStatus::PermError,
];
const POLICIES: &[&str] = &["none", "quarantine", "reject"];

#[derive(Debug)]
struct Dmarc {
    want: Vec<AuthStatus>,
    policies: Vec<&'static str>,
}

impl Condition for Dmarc {
    fn matches(&self, s: &Subject<'_>) -> bool {
        s.facts.auth.dmarc.as_ref().is_some_and(|f| {
            self.want.contains(&f.status)
                && (self.policies.is_empty() || self.policies.contains(&f.policy))
        })
    }
    fn describe(&self) -> String {
        let mut d = format!("dmarc in [{}]", names(&self.want));
        if !self.policies.is_empty() {
            d.push_str(&format!(" with policy in [{}]", self.policies.join(", ")));
        }
        d
    }
    fn observed(&self, s: &Subject<'_>) -> String {
        match &s.facts.auth.dmarc {
            Some(f) => format!("dmarc={} policy={} from={}", f.status, f.policy, f.domain),
            None => "dmarc not checked".into(),
        }
    }
    fn needs(&self) -> Checks {
        Checks::DMARC
    }
}

fn policies(d: &mut Decoder<'_>, v: &Value, path: &KeyPath) -> Option<Vec<&'static str>> {
    let items = match v {
        Value::Sequence(_) | Value::String(_) => one_or_many(v, path),
        other => {
            d.error(
                path,
                format!("expected a policy or a list, found {}", kind_of(other)),
            );
            return None;
        }
    };
    let mut out = Vec::new();
    for (p, item) in items {
        let name = d.string(item, &p)?;
        match POLICIES.iter().find(|x| **x == name) {
            Some(x) => out.push(*x),
            None => {
                d.error(
                    &p,
                    format!("unknown policy {name:?}, expected none, quarantine or reject"),
                );
                return None;
            }
        }
    }
    Some(out)
}

pub(super) fn parse(d: &mut Decoder<'_>, v: &Value, path: &KeyPath) -> Option<Box<dyn Condition>> {
    if let Value::Mapping(_) = v {
        let entries = d.mapping(v, path, &["result", "policy"])?;
        let mut want = vec![AuthStatus::Fail];
        let mut pols = Vec::new();
        for (k, val) in entries {
            let p = path.key(k);
            if k == "result" {
                want = statuses(d, val, &p, RESULTS)?;
            } else {
                pols = policies(d, val, &p)?;
            }
        }
        return Some(Box::new(Dmarc {
            want,
            policies: pols,
        }));
    }
    Some(Box::new(Dmarc {
        want: statuses(d, v, path, RESULTS)?,
        policies: Vec::new(),
    }))
}
