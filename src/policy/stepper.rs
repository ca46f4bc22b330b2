//! The one evaluation loop of a stage, without I/O: the rules of the stage in file order,
//! the first decisive action ends it, monitor-mode rules only report. A `greylist` or
//! `rate_limit` rule needs the state store: the stepper yields [`Step::NeedStore`], the
//! driver asks the store (or, offline, assumes the check passes) and answers with
//! [`Stepper::store_answered`], and stepping goes on after the rule — or ends with the
//! store's refusal.
//!
//! The session, `mxguard explain` and the tests drive this same loop, so the offline walk
//! cannot decide differently from a live session. With tracing on, every rule leaves
//! the lines `explain` prints: whether it matched, on which facts, and what it did.

use std::sync::Arc;

use super::actions::{self, Action};
use super::subject::Subject;
use super::{Mode, Rule, RuleHit, RuleSet};
use crate::checks::{Check, Pending};
use crate::envelope::{Decision, Facts, Stage};
use crate::reply::{Reply, StatusCode};

/// What a stage decided, and everything that led there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageOutcome {
    pub decision: Decision,
    /// The rule that made the decision (a refusing store check's rule too).
    pub rule: Option<Arc<str>>,
    /// `Name: value` header lines that matching `add_header` rules asked for.
    pub edits: Vec<String>,
    /// Every rule that matched, in order, monitor-mode ones included.
    pub hits: Vec<RuleHit>,
}

/// What the driver must do next.
#[derive(Debug)]
pub enum Step {
    /// Ask the store (see [`crate::checks::resolve`]), then [`Stepper::store_answered`].
    NeedStore(Pending),
    Done(StageOutcome),
}

/// One stage's evaluation in progress.
pub struct Stepper<'r> {
    set: &'r RuleSet,
    stage: Stage,
    /// The next position in the stage's rule list.
    next: usize,
    outcome: StageOutcome,
    /// The rule whose store check is out.
    waiting: Option<Arc<str>>,
    /// `explain` lines, when tracing.
    trace: Option<Vec<String>>,
    /// Rules of the stage seen so far (for "no rules at this stage").
    seen: usize,
}

impl<'r> Stepper<'r> {
    pub(super) fn new(set: &'r RuleSet, stage: Stage) -> Self {
        Stepper {
            set,
            stage,
            next: 0,
            outcome: StageOutcome {
                decision: Decision::Continue,
                rule: None,
                edits: Vec::new(),
                hits: Vec::new(),
            },
            waiting: None,
            trace: None,
            seen: 0,
        }
    }

    /// Records the `explain` lines of every rule (see [`Stepper::trace`]).
    pub fn traced(mut self) -> Self {
        self.trace = Some(Vec::new());
        self
    }

    /// The lines recorded so far (empty unless [`Stepper::traced`]).
    pub fn trace(&self) -> &[String] {
        self.trace.as_deref().unwrap_or(&[])
    }

    fn rules(&self) -> &'r [usize] {
        &self.set.by_stage[self.stage as usize]
    }

    /// Runs rules until one needs the store or the stage is decided.
    pub fn step(&mut self, facts: &Facts<'_>) -> Step {
        assert!(
            self.waiting.is_none(),
            "store_answered must follow NeedStore"
        );
        if self.next == self.rules().len() {
            // Nothing (left) to evaluate: no subject to build for it.
            return self.finish();
        }
        let s = Subject::new(facts);
        while self.next < self.rules().len() {
            let rule = &self.set.rules[self.rules()[self.next]];
            self.next += 1;
            self.seen += 1;
            if self.outcome.decision != Decision::Continue {
                let by = self.outcome.rule.as_deref().unwrap_or("").to_owned();
                self.note(rule, &format!("not evaluated (decided by {by})"), &[]);
                continue;
            }
            if let Some(pending) = self.run_rule(rule, &s) {
                return Step::NeedStore(pending);
            }
        }
        self.finish()
    }

    /// The store's answer to the last [`Step::NeedStore`]: `Some(reply)` refuses (the
    /// stage ends with a tempfail), `None` lets the stage's later rules run.
    pub fn store_answered(&mut self, refusal: Option<Reply>) {
        let rule = self.waiting.take();
        if let Some(r) = refusal {
            if let Some(t) = &mut self.trace {
                t.push(format!("    store: refused -> tempfail {r}"));
            }
            self.outcome.decision = Decision::Tempfail(r);
            self.outcome.rule = rule;
        } else if let Some(t) = &mut self.trace {
            t.push("    store: passed".into());
        }
    }

    /// Evaluates one rule; `Some` when it needs the store.
    fn run_rule(&mut self, rule: &Rule, s: &Subject<'_>) -> Option<Pending> {
        let mut lines = Vec::new();
        let matched = if self.trace.is_some() {
            rule.cond.explain(s, 2, &mut lines)
        } else {
            rule.cond.matches(s)
        };
        if !matched {
            self.note(rule, "no match", &lines);
            return None;
        }
        self.outcome.hits.push(RuleHit {
            rule: rule.name.clone(),
            action: rule.action.kind(),
            mode: rule.mode,
        });
        if rule.mode == Mode::Monitor {
            let what = format!("MATCH, monitor only: would {}", rule.action);
            self.note(rule, &what, &lines);
            return None;
        }
        let resume_note = |what: String| format!("MATCH -> {what}");
        match &rule.action {
            Action::Continue => self.note(rule, &resume_note(rule.action.to_string()), &lines),
            Action::AddHeader(name, value) => {
                let v = actions::sanitize(&value.render(s, &rule.name));
                self.outcome.edits.push(format!("{name}: {v}"));
                self.note(rule, &resume_note(rule.action.to_string()), &lines);
            }
            Action::Accept => self.decide(rule, Decision::Accept, &lines),
            Action::Reject(t) => {
                // A reject that rests on a check which met DNS trouble (with failure
                // policy `tempfail`) becomes a 4xx: our own DNS trouble never costs a
                // sender a 5xx.
                let d = if rule.cond.needs().intersects(s.facts.auth.degraded) {
                    Decision::Tempfail(Reply::new(
                        451,
                        StatusCode(4, 4, 3),
                        "Temporary DNS failure while checking the sender, try again later",
                    ))
                } else {
                    Decision::Reject(t.render(s, &rule.name))
                };
                self.decide(rule, d, &lines);
            }
            Action::Tempfail(t) => {
                self.decide(rule, Decision::Tempfail(t.render(s, &rule.name)), &lines)
            }
            Action::Greylist(g) => {
                let p = Pending {
                    check: Check::Greylist(g.check(s)),
                    fail: g.fail,
                    rule: rule.name.clone(),
                };
                self.note(rule, &resume_note(check_text(&p)), &lines);
                self.waiting = Some(rule.name.clone());
                return Some(p);
            }
            Action::RateLimit(r) => {
                let p = Pending {
                    check: Check::RateLimit(r.check(s, &rule.name)),
                    fail: r.fail,
                    rule: rule.name.clone(),
                };
                self.note(rule, &resume_note(check_text(&p)), &lines);
                self.waiting = Some(rule.name.clone());
                return Some(p);
            }
        }
        None
    }

    fn decide(&mut self, rule: &Rule, decision: Decision, lines: &[String]) {
        self.note(rule, &format!("MATCH -> {}", rule.action), lines);
        self.outcome.decision = decision;
        self.outcome.rule = Some(rule.name.clone());
    }

    /// One `explain` entry: the rule's head line, then its condition lines.
    fn note(&mut self, rule: &Rule, what: &str, lines: &[String]) {
        if let Some(t) = &mut self.trace {
            t.push(format!(
                "  rule {} ({}, {}): {what}",
                rule.name,
                rule.origin,
                rule.mode.as_str()
            ));
            t.extend_from_slice(lines);
        }
    }

    fn finish(&mut self) -> Step {
        let outcome = std::mem::replace(
            &mut self.outcome,
            StageOutcome {
                decision: Decision::Continue,
                rule: None,
                edits: Vec::new(),
                hits: Vec::new(),
            },
        );
        if let Some(t) = &mut self.trace {
            if self.seen == 0 {
                t.push("  (no rules at this stage)".into());
            }
            t.push(format!("  verdict: {}", verdict_text(&outcome)));
            for h in &outcome.edits {
                t.push(format!("  add header: {h}"));
            }
        }
        Step::Done(outcome)
    }
}

fn verdict_text(o: &StageOutcome) -> String {
    let by = o
        .rule
        .as_deref()
        .map(|r| format!(" (rule {r})"))
        .unwrap_or_default();
    match &o.decision {
        Decision::Continue => "continue".into(),
        Decision::Accept => format!("accept{by}"),
        Decision::Reject(r) => format!("reject {r}{by}"),
        Decision::Tempfail(r) => format!("tempfail {r}{by}"),
    }
}

/// A pending store check as `explain` shows it.
pub(super) fn check_text(p: &Pending) -> String {
    match &p.check {
        Check::Greylist(g) => format!("greylist check, triplet {:?}", g.triplet),
        Check::RateLimit(r) => format!("rate-limit check, key {:?} cost {}", r.key, r.cost),
    }
}
