//! `dkim`: the DKIM result (RFC 6376, RFC 8463) of the message.
//!
//! ```yaml
//! dkim: pass                               # some signature verified
//! dkim: [fail, permerror]                  # no signature passed; the first one failed so
//! dkim: none                               # no signature at all
//! dkim: { in: [pass], domain: example.com } # a passing signature with d=example.com
//! ```
//!
//! The overall result is `pass` when any signature passed, otherwise the first
//! signature's result. With `domain`, only signatures of that domain count.

use serde_yaml_ng::Value;

use super::Condition;
use super::spf::{names, statuses};
use crate::envelope::{AuthStatus, Checks};
use crate::policy::load::Decoder;
use crate::policy::subject::Subject;
use crate::policy::yaml::KeyPath;

const RESULTS: &[AuthStatus] = &[
    AuthStatus::Pass,
    AuthStatus::Fail,
    AuthStatus::Neutral,
    AuthStatus::None,
    AuthStatus::TempError,
    AuthStatus::PermError,
];

#[derive(Debug)]
struct Dkim {
    want: Vec<AuthStatus>,
    domain: Option<String>,
}

impl Dkim {
    fn status(&self, s: &Subject<'_>) -> Option<AuthStatus> {
        let a = s.facts.auth;
        let Some(domain) = &self.domain else {
            return a.dkim_status();
        };
        let sigs: Vec<_> = a
            .dkim
            .as_ref()?
            .iter()
            .filter(|g| g.domain.eq_ignore_ascii_case(domain))
            .collect();
        if sigs.iter().any(|g| g.status == AuthStatus::Pass) {
            return Some(AuthStatus::Pass);
        }
        Some(sigs.first().map_or(AuthStatus::None, |g| g.status))
    }
}

impl Condition for Dkim {
    fn matches(&self, s: &Subject<'_>) -> bool {
        self.status(s).is_some_and(|st| self.want.contains(&st))
    }
    fn describe(&self) -> String {
        match &self.domain {
            Some(d) => format!("dkim (d={d}) in [{}]", names(&self.want)),
            None => format!("dkim in [{}]", names(&self.want)),
        }
    }
    fn observed(&self, s: &Subject<'_>) -> String {
        let Some(sigs) = s.facts.auth.dkim.as_ref() else {
            return "dkim not checked".into();
        };
        let each: Vec<String> = sigs
            .iter()
            .map(|g| match &g.reason {
                Some(r) => format!("{}:{}/{} ({r})", g.status, g.domain, g.selector),
                None => format!("{}:{}/{}", g.status, g.domain, g.selector),
            })
            .collect();
        format!(
            "dkim={} [{}]",
            self.status(s).map_or("-", AuthStatus::as_str),
            each.join(" ")
        )
    }
    fn needs(&self) -> Checks {
        Checks::DKIM
    }
}

pub(super) fn parse(d: &mut Decoder<'_>, v: &Value, path: &KeyPath) -> Option<Box<dyn Condition>> {
    if let Value::Mapping(_) = v {
        let entries = d.mapping(v, path, &["in", "domain"])?;
        let mut want = None;
        let mut domain = None;
        for (k, val) in entries {
            let p = path.key(k);
            if k == "domain" {
                domain = Some(
                    d.string(val, &p)?
                        .trim_end_matches('.')
                        .to_ascii_lowercase(),
                );
            } else {
                want = Some(statuses(d, val, &p, RESULTS)?);
            }
        }
        let want = want.unwrap_or_else(|| vec![AuthStatus::Pass]);
        return Some(Box::new(Dkim { want, domain }));
    }
    Some(Box::new(Dkim {
        want: statuses(d, v, path, RESULTS)?,
        domain: None,
    }))
}
