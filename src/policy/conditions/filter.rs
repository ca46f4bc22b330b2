//! `filter` and `rspamd`: what the content filters said about the message (at `data`).
//!
//! ```yaml
//! filter: { name: clamav, result: reject }      # pass reject tempfail discard quarantine shutdown error
//! filter: { name: rspamd, action: reject }      # rspamd's own action name
//! rspamd: { score: { over: 15 } }               # the first rspamd filter, or { name: … }
//! rspamd: { symbol: GTUBE }                     # a symbol that fired (or a list: any)
//! ```
//!
//! A rule that tests a filter takes the decision over from it: that filter's own verdict
//! no longer applies by itself (the rule decides, or lets the message pass). A filter
//! that did not run for the message (not configured, not applicable) matches nothing.

use serde_yaml_ng::Value;

use super::Condition;
use crate::envelope::{FilterFact, FilterResult};
use crate::policy::load::Decoder;
use crate::policy::subject::Subject;
use crate::policy::yaml::{KeyPath, kind_of, one_or_many};

#[derive(Debug)]
struct FilterCond {
    name: String,
    results: Vec<FilterResult>,
    actions: Vec<String>,
}

fn fact<'a>(s: &'a Subject<'_>, name: &str) -> Option<&'a FilterFact> {
    s.facts.filters.iter().find(|f| f.name == name)
}

impl Condition for FilterCond {
    fn matches(&self, s: &Subject<'_>) -> bool {
        fact(s, &self.name).is_some_and(|f| {
            (self.results.is_empty() || self.results.contains(&f.result))
                && (self.actions.is_empty()
                    || f.action.as_ref().is_some_and(|a| self.actions.contains(a)))
        })
    }
    fn describe(&self) -> String {
        let mut d = format!("filter {}", self.name);
        if !self.results.is_empty() {
            let r: Vec<&str> = self.results.iter().map(|r| r.as_str()).collect();
            d.push_str(&format!(" result in [{}]", r.join(", ")));
        }
        if !self.actions.is_empty() {
            d.push_str(&format!(" action in [{}]", self.actions.join(", ")));
        }
        d
    }
    fn observed(&self, s: &Subject<'_>) -> String {
        observed(s, &self.name)
    }
    fn filters(&self) -> Vec<String> {
        vec![self.name.clone()]
    }
}

fn observed(s: &Subject<'_>, name: &str) -> String {
    match fact(s, name) {
        None => format!("filter {name} did not run"),
        Some(f) => {
            let mut o = format!("{name}: result={}", f.result.as_str());
            if let Some(a) = &f.action {
                o.push_str(&format!(" action={a:?}"));
            }
            if let Some(sc) = f.score {
                o.push_str(&format!(" score={sc}"));
            }
            if !f.symbols.is_empty() {
                o.push_str(&format!(" symbols=[{}]", f.symbols.join(",")));
            }
            o
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Cmp {
    Over(f64),
    Under(f64),
}

#[derive(Debug)]
struct Rspamd {
    /// None: the first rspamd filter of the message's facts.
    name: Option<String>,
    score: Vec<Cmp>,
    symbols: Vec<String>,
    actions: Vec<String>,
}

impl Rspamd {
    fn fact<'a>(&self, s: &'a Subject<'_>) -> Option<&'a FilterFact> {
        match &self.name {
            Some(n) => fact(s, n),
            None => s.facts.filters.iter().find(|f| f.score.is_some()),
        }
    }
}

impl Condition for Rspamd {
    fn matches(&self, s: &Subject<'_>) -> bool {
        let Some(f) = self.fact(s) else {
            return false;
        };
        let score_ok = self.score.iter().all(|c| {
            f.score.is_some_and(|x| match c {
                Cmp::Over(n) => x > *n,
                Cmp::Under(n) => x < *n,
            })
        });
        let symbols_ok = self.symbols.is_empty()
            || self
                .symbols
                .iter()
                .any(|want| f.symbols.iter().any(|s| s == want));
        let actions_ok =
            self.actions.is_empty() || f.action.as_ref().is_some_and(|a| self.actions.contains(a));
        score_ok && symbols_ok && actions_ok
    }
    fn describe(&self) -> String {
        let mut d = format!("rspamd {}", self.name.as_deref().unwrap_or("(first)"));
        for c in &self.score {
            match c {
                Cmp::Over(n) => d.push_str(&format!(" score over {n}")),
                Cmp::Under(n) => d.push_str(&format!(" score under {n}")),
            }
        }
        if !self.symbols.is_empty() {
            d.push_str(&format!(" symbol in [{}]", self.symbols.join(", ")));
        }
        if !self.actions.is_empty() {
            d.push_str(&format!(" action in [{}]", self.actions.join(", ")));
        }
        d
    }
    fn observed(&self, s: &Subject<'_>) -> String {
        match self.fact(s) {
            Some(f) => observed(s, &f.name),
            None => "no rspamd filter ran".into(),
        }
    }
    fn filters(&self) -> Vec<String> {
        // Without a name, whichever rspamd filter answers: the rule takes over all of
        // them (an empty name is the marker).
        vec![self.name.clone().unwrap_or_default()]
    }
}

fn strings(d: &mut Decoder<'_>, v: &Value, path: &KeyPath) -> Option<Vec<String>> {
    match v {
        Value::Sequence(_) | Value::String(_) => {}
        other => {
            d.error(
                path,
                format!("expected a name or a list, found {}", kind_of(other)),
            );
            return None;
        }
    }
    let mut out = Vec::new();
    for (p, item) in one_or_many(v, path) {
        out.push(d.string(item, &p)?.to_owned());
    }
    Some(out)
}

pub(super) fn parse_filter(
    d: &mut Decoder<'_>,
    v: &Value,
    path: &KeyPath,
) -> Option<Box<dyn Condition>> {
    let entries = d.mapping(v, path, &["name", "result", "action"])?;
    let mut name = None;
    let mut results = Vec::new();
    let mut actions = Vec::new();
    for (k, val) in entries {
        let p = path.key(k);
        match k {
            "name" => name = Some(d.string(val, &p)?.to_owned()),
            "result" => {
                for r in strings(d, val, &p)? {
                    match FilterResult::parse(&r) {
                        Some(r) => results.push(r),
                        None => {
                            d.error(
                                &p,
                                format!("unknown result {r:?}, expected pass, reject, tempfail, discard, quarantine, shutdown or error"),
                            );
                            return None;
                        }
                    }
                }
            }
            "action" => actions = strings(d, val, &p)?,
            _ => unreachable!("mapping checked the keys"),
        }
    }
    let Some(name) = name else {
        d.error(path, "`filter` needs the filter's `name`");
        return None;
    };
    Some(Box::new(FilterCond {
        name,
        results,
        actions,
    }))
}

pub(super) fn parse_rspamd(
    d: &mut Decoder<'_>,
    v: &Value,
    path: &KeyPath,
) -> Option<Box<dyn Condition>> {
    let entries = d.mapping(v, path, &["name", "score", "symbol", "action"])?;
    let mut c = Rspamd {
        name: None,
        score: Vec::new(),
        symbols: Vec::new(),
        actions: Vec::new(),
    };
    for (k, val) in entries {
        let p = path.key(k);
        match k {
            "name" => c.name = Some(d.string(val, &p)?.to_owned()),
            "score" => {
                for (ck, cv) in d.mapping(val, &p, &["over", "under"])? {
                    let Some(n) = cv.as_f64() else {
                        d.error(
                            &p.key(ck),
                            format!("expected a number, found {}", kind_of(cv)),
                        );
                        return None;
                    };
                    c.score.push(if ck == "over" {
                        Cmp::Over(n)
                    } else {
                        Cmp::Under(n)
                    });
                }
            }
            "symbol" => c.symbols = strings(d, val, &p)?,
            "action" => c.actions = strings(d, val, &p)?,
            _ => unreachable!("mapping checked the keys"),
        }
    }
    Some(Box::new(c))
}
