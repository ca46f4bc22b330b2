//! `spf`: the SPF result (RFC 7208) of the MAIL FROM identity, or of the HELO identity.
//!
//! ```yaml
//! spf: fail                               # the MAIL FROM identity
//! spf: [fail, softfail]                   # any of these
//! spf: { in: [fail, softfail] }
//! spf: { identity: helo, in: [fail] }     # the HELO identity
//! ```
//!
//! Results: `pass fail softfail neutral none temperror permerror`. Nothing matches
//! when the check did not run. The shared helpers here parse a set of results for the
//! other authentication conditions too.

use serde_yaml_ng::Value;

use super::Condition;
use crate::envelope::{AuthStatus, Checks};
use crate::policy::load::Decoder;
use crate::policy::subject::Subject;
use crate::policy::yaml::{KeyPath, kind_of};

#[derive(Debug)]
struct Spf {
    helo: bool,
    want: Vec<AuthStatus>,
}

impl Spf {
    fn fact<'s>(&self, s: &'s Subject<'_>) -> Option<&'s crate::envelope::SpfFact> {
        let a = s.facts.auth;
        if self.helo {
            a.spf_helo.as_ref()
        } else {
            a.spf.as_ref()
        }
    }
}

impl Condition for Spf {
    fn matches(&self, s: &Subject<'_>) -> bool {
        self.fact(s).is_some_and(|f| self.want.contains(&f.status))
    }
    fn describe(&self) -> String {
        let id = if self.helo { "spf (helo)" } else { "spf" };
        format!("{id} in [{}]", names(&self.want))
    }
    fn observed(&self, s: &Subject<'_>) -> String {
        match self.fact(s) {
            Some(f) => format!("spf={} domain={}", f.status, f.domain),
            None => "spf not checked".into(),
        }
    }
    fn needs(&self) -> Checks {
        if self.helo {
            Checks::SPF_HELO
        } else {
            Checks::SPF
        }
    }
}

pub(super) fn names(v: &[AuthStatus]) -> String {
    v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
}

/// One result name, a list of them, or `{ in: [...] }` when `allow_in` (callers with
/// their own mapping keys handle `in` themselves).
pub(super) fn statuses(
    d: &mut Decoder<'_>,
    v: &Value,
    path: &KeyPath,
    allowed: &[AuthStatus],
) -> Option<Vec<AuthStatus>> {
    let one = |d: &mut Decoder<'_>, v: &Value, path: &KeyPath| -> Option<AuthStatus> {
        let name = d.string(v, path)?;
        match AuthStatus::parse(&name.to_ascii_lowercase()).filter(|a| allowed.contains(a)) {
            Some(a) => Some(a),
            None => {
                d.error(
                    path,
                    format!(
                        "unknown result {name:?}, expected one of {}",
                        names(allowed)
                    ),
                );
                None
            }
        }
    };
    match v {
        Value::String(_) => Some(vec![one(d, v, path)?]),
        Value::Sequence(items) if !items.is_empty() => {
            let mut out = Vec::new();
            let mut ok = true;
            for (i, item) in items.iter().enumerate() {
                match one(d, item, &path.index(i)) {
                    Some(a) => out.push(a),
                    None => ok = false,
                }
            }
            ok.then_some(out)
        }
        other => {
            d.error(
                path,
                format!(
                    "expected a result name or a list of them, found {}",
                    kind_of(other)
                ),
            );
            None
        }
    }
}

const SPF_RESULTS: &[AuthStatus] = &AuthStatus::ALL;

pub(super) fn parse(d: &mut Decoder<'_>, v: &Value, path: &KeyPath) -> Option<Box<dyn Condition>> {
    if let Value::Mapping(_) = v {
        let entries = d.mapping(v, path, &["in", "identity"])?;
        let mut helo = false;
        let mut want = None;
        for (k, val) in entries {
            let p = path.key(k);
            if k == "identity" {
                match d.string(val, &p)? {
                    "helo" => helo = true,
                    "mail_from" | "mailfrom" => helo = false,
                    other => {
                        d.error(
                            &p,
                            format!("unknown identity {other:?}, expected `mail_from` or `helo`"),
                        );
                        return None;
                    }
                }
            } else {
                want = Some(statuses(d, val, &p, SPF_RESULTS)?);
            }
        }
        let Some(want) = want else {
            d.error(path, "`spf` needs `in: [results]`");
            return None;
        };
        return Some(Box::new(Spf { helo, want }));
    }
    let want = statuses(d, v, path, SPF_RESULTS)?;
    Some(Box::new(Spf { helo: false, want }))
}
