//! Policy: compiled rules and their evaluation at each SMTP stage.
//!
//! The administrator writes `rules/*.yaml` (reference: README.md, "Rules");
//! [`RuleSet::load`] validates the whole directory, reporting *every* problem with its
//! `file:line:column`, and compiles it into matchers (network ranges, hash sets, regex
//! sets). [`RuleSet::evaluate`] is a pure function of the [`Facts`] of one decision:
//! the stage's rules in file order, the first decisive verdict wins. [`Policy`] holds
//! the live set for the server and swaps in a new one only when it is fully valid.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | `load` | reading files and lists, the three load passes, the content hash |
//! | `yaml` | key paths and finding their line and column |
//! | `conditions/` | one module per kind of condition, registered in `conditions::KINDS` |
//! | `actions/` | actions, default replies, reply and header templates |
//! | `lists` | compiled matchers: network ranges, exact/glob/regex sets |
//! | `explain` | the offline walk through every stage for `mxguard explain` |
//! | [`reload`] | [`Policy`]: the live set, reload outcomes, the file watcher |

mod actions;
mod conditions;
mod error;
mod explain;
mod lists;
mod load;
pub mod reload;
mod subject;
mod yaml;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_auth;
#[cfg(test)]
mod tests_checks;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use actions::ActionKind;
pub use error::{LoadError, LoadErrors};
pub use explain::{ExplainInput, message_view};
pub use reload::{Policy, ReloadOutcome, ReloadRequest};

use crate::checks::{Check, Pending};
use crate::envelope::{Checks, Decision, Facts, Stage, Verdict};
use crate::reply::{Reply, StatusCode};
use actions::Action;
use conditions::Condition;
use subject::Subject;

/// Whether a rule acts or only reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// The rule's action takes effect (the default).
    Enforce,
    /// The rule is evaluated and reported as a hit, but never acts: for trying a rule
    /// on live traffic before enforcing it.
    Monitor,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Monitor => "monitor",
        }
    }
}

/// A rule whose condition matched during one evaluation, for logs and the
/// `rule hits` metric. Monitor-mode rules are reported here although they do not act.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleHit {
    pub rule: Arc<str>,
    pub action: ActionKind,
    pub mode: Mode,
}

/// The outcome of evaluating one stage: the verdict the session acts on, and every rule
/// that matched up to and including the decisive one, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    pub verdict: Verdict,
    pub hits: Vec<RuleHit>,
}

#[derive(Debug)]
pub(crate) struct Rule {
    pub name: Arc<str>,
    pub stage: Stage,
    pub cond: Box<dyn Condition>,
    pub action: Action,
    pub mode: Mode,
    /// `rules/rcpt.yaml rules[2]`, for `explain`.
    pub origin: String,
}

/// A compiled, validated set of rules. Immutable; swapped whole on reload, so a
/// session that took a snapshot keeps deciding on the rules it started with.
#[derive(Debug, Default)]
pub struct RuleSet {
    rules: Vec<Rule>,
    /// Indices into `rules`, per stage (`Stage as usize`), in file order.
    by_stage: [Vec<usize>; 5],
    hash: String,
    watched: Vec<PathBuf>,
    /// The checks each stage's rules test (`Stage as usize`), so the session runs only
    /// the DNS checks some rule needs.
    needs: [Checks; 5],
}

impl RuleSet {
    /// The set with no rules: every stage continues.
    pub fn empty() -> Self {
        RuleSet {
            hash: "empty".into(),
            ..RuleSet::default()
        }
    }

    /// Loads every `*.yaml` file in `dir` in file-name order, with the list files they
    /// include, and validates everything. On failure, returns every error found.
    pub fn load(dir: &Path) -> Result<RuleSet, LoadErrors> {
        load::load_dir(dir)
    }

    pub(crate) fn from_parts(rules: Vec<Rule>, hash: String, watched: Vec<PathBuf>) -> Self {
        let mut by_stage: [Vec<usize>; 5] = Default::default();
        let mut needs = [Checks::NONE; 5];
        for (i, r) in rules.iter().enumerate() {
            by_stage[r.stage as usize].push(i);
            needs[r.stage as usize] |= r.cond.needs() | r.action.needs();
        }
        RuleSet {
            rules,
            by_stage,
            hash,
            watched,
            needs,
        }
    }

    /// The checks that the rules of `stage` test (DMARC implies DKIM and SPF).
    pub fn needs(&self, stage: Stage) -> Checks {
        let n = self.needs[stage as usize];
        if n.contains(Checks::DMARC) {
            n | Checks::DKIM | Checks::SPF
        } else {
            n
        }
    }

    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// The rule names, in file order (e.g. to pre-register metric labels).
    pub fn rule_names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| &*r.name)
    }

    /// A short hex digest (SHA-256, 16 hex digits) of every rule file and included list
    /// file, names and contents: equal hashes mean identical rules, across reloads and
    /// across instances.
    pub fn content_hash(&self) -> String {
        self.hash.clone()
    }

    /// The rule files and list files this set was built from, for the watcher.
    pub fn watched_paths(&self) -> Vec<PathBuf> {
        self.watched.clone()
    }

    /// Decides one stage. Pure: no I/O, no clock.
    ///
    /// Runs the rules of `facts.stage` in file order. `accept`, `reject` and `tempfail`
    /// are decisive: the first one ends the evaluation. `add_header` collects its line
    /// into `verdict.add_headers` and `continue` only records a hit; both go on.
    /// Monitor-mode rules are reported in `hits` and never act. The caller handles
    /// what `accept` means beyond this stage (no more evaluation for the session or
    /// transaction).
    ///
    /// `greylist` and `rate_limit` end the evaluation with [`Decision::Check`]: the caller
    /// asks the store and, when the check passes, calls [`RuleSet::evaluate_from`] with
    /// the check's `resume` position to run the stage's later rules.
    pub fn evaluate(&self, facts: &Facts<'_>) -> Evaluation {
        self.evaluate_from(facts, 0)
    }

    /// [`RuleSet::evaluate`] from the `start`-th rule of the stage (after a passed check).
    pub fn evaluate_from(&self, facts: &Facts<'_>, start: usize) -> Evaluation {
        let mut verdict = Verdict::continue_();
        let mut hits = Vec::new();
        let rules = &self.by_stage[facts.stage as usize];
        if rules.len() <= start {
            return Evaluation { verdict, hits };
        }
        let s = Subject::new(facts);
        for (pos, &i) in rules.iter().enumerate().skip(start) {
            let rule = &self.rules[i];
            if !rule.cond.matches(&s) {
                continue;
            }
            hits.push(RuleHit {
                rule: rule.name.clone(),
                action: rule.action.kind(),
                mode: rule.mode,
            });
            if rule.mode == Mode::Monitor {
                continue;
            }
            if apply(rule, &s, pos + 1, &mut verdict) {
                break;
            }
        }
        Evaluation { verdict, hits }
    }

    /// Explains one stage: for each rule of the stage, whether it matched and why, then
    /// the verdict. One line per entry, indented for conditions.
    pub fn explain(&self, facts: &Facts<'_>) -> Vec<String> {
        explain::explain_stage(self, facts)
    }

    /// Runs a whole session offline (connect, helo, mail, each rcpt, data) and returns
    /// the printed report, as `mxguard explain` shows it.
    pub fn explain_session(&self, input: &ExplainInput<'_>) -> String {
        explain::explain_session(self, input)
    }

    pub(crate) fn stage_rules(&self, stage: Stage) -> impl Iterator<Item = &Rule> {
        self.by_stage[stage as usize]
            .iter()
            .map(|&i| &self.rules[i])
    }
}

/// Applies an enforced rule's action to the verdict; true when it is decisive (or a
/// pending check, which ends this evaluation; `resume` is where the next one starts).
fn apply(rule: &Rule, s: &Subject<'_>, resume: usize, verdict: &mut Verdict) -> bool {
    let decision = match &rule.action {
        Action::Continue => return false,
        Action::AddHeader(name, value) => {
            let v = actions::sanitize(&value.render(s, &rule.name));
            verdict.add_headers.push(format!("{name}: {v}"));
            return false;
        }
        Action::Accept => Decision::Accept,
        // A reject that rests on a check which met DNS trouble (with failure policy
        // `tempfail`) becomes a 4xx: our own DNS trouble never costs a sender a 5xx.
        Action::Reject(_) if rule.cond.needs().intersects(s.facts.auth.degraded) => {
            Decision::Tempfail(Reply::new(
                451,
                StatusCode(4, 4, 3),
                "Temporary DNS failure while checking the sender, try again later",
            ))
        }
        Action::Reject(t) => Decision::Reject(t.render(s, &rule.name)),
        Action::Tempfail(t) => Decision::Tempfail(t.render(s, &rule.name)),
        Action::Greylist(g) => Decision::Check(Box::new(Pending {
            check: Check::Greylist(g.check(s)),
            fail: g.fail,
            resume,
        })),
        Action::RateLimit(r) => Decision::Check(Box::new(Pending {
            check: Check::RateLimit(r.check(s, &rule.name)),
            fail: r.fail,
            resume,
        })),
    };
    verdict.decision = decision;
    verdict.rule = Some(rule.name.to_string());
    true
}
