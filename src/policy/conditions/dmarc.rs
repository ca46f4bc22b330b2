//! `dmarc`: the DMARC result (RFC 7489) of the From domain, and the policy it publishes.
//!
//! ```yaml
//! dmarc: fail
//! dmarc: { result: fail, policy: reject }          # a failure the owner wants rejected
//! dmarc: { result: fail, policy: [quarantine, reject] }
//! dmarc: { reason: [multiple_from, no_from] }      # the From fields are not one
//! ```
//!
//! Policies: `none quarantine reject`; a record with the testing flag (`t=y`) counts
//! one step lower, as DMARCbis says. Reasons: `multiple_from` (more than one From
//! field; the result is the strictest of all author domains), `no_from` (no author
//! domain; `permerror`), `multiple_records` (several DMARC records; `none`). A mapping
//! with `reason` and without `result` matches any result.

use serde_yaml_ng::Value;

use super::Condition;
use super::spf::{names, statuses};
use crate::envelope::{AuthStatus, Checks, DmarcReason};
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
    /// Empty: any result.
    want: Vec<AuthStatus>,
    policies: Vec<&'static str>,
    reasons: Vec<DmarcReason>,
}

impl Condition for Dmarc {
    fn matches(&self, s: &Subject<'_>) -> bool {
        s.facts.auth.dmarc.as_ref().is_some_and(|f| {
            (self.want.is_empty() || self.want.contains(&f.status))
                && (self.policies.is_empty() || self.policies.contains(&f.policy))
                && (self.reasons.is_empty() || f.reason.is_some_and(|r| self.reasons.contains(&r)))
        })
    }
    fn describe(&self) -> String {
        let mut d = if self.want.is_empty() {
            "dmarc".to_owned()
        } else {
            format!("dmarc in [{}]", names(&self.want))
        };
        if !self.policies.is_empty() {
            d.push_str(&format!(" with policy in [{}]", self.policies.join(", ")));
        }
        if !self.reasons.is_empty() {
            let r: Vec<&str> = self.reasons.iter().map(|r| r.as_str()).collect();
            d.push_str(&format!(" with reason in [{}]", r.join(", ")));
        }
        d
    }
    fn observed(&self, s: &Subject<'_>) -> String {
        match &s.facts.auth.dmarc {
            Some(f) => {
                let mut o = format!("dmarc={} policy={} from={}", f.status, f.policy, f.domain);
                if let Some(r) = f.reason {
                    o.push_str(&format!(" reason={}", r.as_str()));
                }
                o
            }
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

fn reasons(d: &mut Decoder<'_>, v: &Value, path: &KeyPath) -> Option<Vec<DmarcReason>> {
    let items = match v {
        Value::Sequence(_) | Value::String(_) => one_or_many(v, path),
        other => {
            d.error(
                path,
                format!("expected a reason or a list, found {}", kind_of(other)),
            );
            return None;
        }
    };
    let mut out = Vec::new();
    for (p, item) in items {
        let name = d.string(item, &p)?;
        match DmarcReason::parse(name) {
            Some(r) => out.push(r),
            None => {
                d.error(
                    &p,
                    format!(
                        "unknown reason {name:?}, expected multiple_from, no_from or multiple_records"
                    ),
                );
                return None;
            }
        }
    }
    Some(out)
}

pub(super) fn parse(d: &mut Decoder<'_>, v: &Value, path: &KeyPath) -> Option<Box<dyn Condition>> {
    if let Value::Mapping(_) = v {
        let entries = d.mapping(v, path, &["result", "policy", "reason"])?;
        let mut want = None;
        let mut pols = Vec::new();
        let mut why = Vec::new();
        for (k, val) in entries {
            let p = path.key(k);
            match k {
                "result" => want = Some(statuses(d, val, &p, RESULTS)?),
                "policy" => pols = policies(d, val, &p)?,
                _ => why = reasons(d, val, &p)?,
            }
        }
        // `{ policy: … }` alone means a failure under that policy; `{ reason: … }`
        // alone means that reason, whatever the result.
        let want = want.unwrap_or_else(|| {
            if why.is_empty() {
                vec![AuthStatus::Fail]
            } else {
                Vec::new()
            }
        });
        return Some(Box::new(Dmarc {
            want,
            policies: pols,
            reasons: why,
        }));
    }
    Some(Box::new(Dmarc {
        want: statuses(d, v, path, RESULTS)?,
        policies: Vec::new(),
        reasons: Vec::new(),
    }))
}
