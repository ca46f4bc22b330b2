//! Policy: compiled rules and their evaluation at each SMTP stage.
//!
//! The administrator writes `rules/*.yaml` (reference: README.md, "Rules");
//! [`RuleSet::load`] validates the whole directory, reporting *every* problem with its
//! `file:line:column`, and compiles it into matchers (network ranges, hash sets, regex
//! sets). Evaluating a stage is a pure, sans-IO [`Stepper`] over the [`Facts`] of one
//! decision: the stage's rules in file order, the first decisive verdict wins; a rule that
//! needs the state store (greylist, rate limit) makes the stepper yield, and whoever
//! drives it — the session, `mxguard explain`, a test — answers and steps on. [`Policy`] holds
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
//! | `stepper` | the one evaluation loop: rules in order, store checks yielded, an outcome |
//! | `explain` | the offline walk through every stage for `mxguard explain`, on the stepper |
//! | [`reload`] | [`Policy`]: the live set, reload outcomes, the file watcher |

mod actions;
mod conditions;
mod error;
mod explain;
mod lists;
mod load;
pub mod reload;
mod stepper;
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
pub use stepper::{StageOutcome, Step, Stepper};

use crate::checks::Pending;
use crate::envelope::{Checks, Facts, Stage};
use crate::reply::Reply;
use actions::Action;
use conditions::Condition;

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
    /// The content filters some rule tests: their verdicts no longer apply by themselves
    /// (`""`: a rule tests whichever rspamd filter ran).
    filters_tested: Vec<String>,
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

    /// Loads one rules file given as text, as if `dir` held it under `name` (its
    /// `file:` lists are read from `dir`). For the fuzzer, which must not touch the disk
    /// for every input.
    #[doc(hidden)]
    pub fn load_text(dir: &Path, name: &str, text: &str) -> Result<RuleSet, LoadErrors> {
        let file = load::SourceFile {
            path: dir.join(name),
            text: text.to_owned(),
        };
        load::load_sources(dir, vec![file], load::Diag::default())
    }

    pub(crate) fn from_parts(rules: Vec<Rule>, hash: String, watched: Vec<PathBuf>) -> Self {
        let mut by_stage: [Vec<usize>; 5] = Default::default();
        let mut needs = [Checks::NONE; 5];
        let mut filters_tested = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            by_stage[r.stage as usize].push(i);
            needs[r.stage as usize] |= r.cond.needs() | r.action.needs();
            // A monitor-mode rule only watches: the filter keeps deciding.
            if r.mode == Mode::Enforce {
                filters_tested.extend(r.cond.filters());
            }
        }
        filters_tested.sort();
        filters_tested.dedup();
        RuleSet {
            rules,
            by_stage,
            hash,
            watched,
            needs,
            filters_tested,
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

    /// Whether any rule runs at `stage` (without one, its facts need not be gathered).
    pub fn has_rules(&self, stage: Stage) -> bool {
        !self.by_stage[stage as usize].is_empty()
    }

    /// Whether an enforcing rule tests this filter's verdict (`rspamd` for an rspamd
    /// filter: a rule testing "the first rspamd filter" counts for each).
    pub fn tests_filter(&self, name: &str, is_rspamd: bool) -> bool {
        self.filters_tested
            .iter()
            .any(|f| f == name || (is_rspamd && f.is_empty()))
    }

    pub fn rule_count(&self) -> usize {
        self.rules.len()
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

    /// A stepper for one stage: the policy's one evaluation loop, which the session,
    /// `mxguard explain` and the tests all drive (see [`Stepper`]).
    pub fn stepper(&self, stage: Stage) -> Stepper<'_> {
        Stepper::new(self, stage)
    }

    /// Runs one stage to its outcome, answering every store check with `store` (`None`:
    /// the check passed). For tests, benches and offline use; the session answers
    /// store checks from the real store.
    pub fn decide(
        &self,
        facts: &Facts<'_>,
        mut store: impl FnMut(&Pending) -> Option<Reply>,
    ) -> StageOutcome {
        let mut stepper = self.stepper(facts.stage);
        loop {
            match stepper.step(facts) {
                Step::Done(outcome) => return outcome,
                Step::NeedStore(p) => {
                    let answer = store(&p);
                    stepper.store_answered(answer);
                }
            }
        }
    }

    /// [`RuleSet::decide`] with every store check passing.
    pub fn evaluate(&self, facts: &Facts<'_>) -> StageOutcome {
        self.decide(facts, |_| None)
    }

    /// Explains one stage: for each rule of the stage, whether it matched and why, then
    /// the verdict. One line per entry, indented for conditions.
    pub fn explain(&self, facts: &Facts<'_>) -> Vec<String> {
        explain::explain_stage(self, facts).0
    }

    /// Runs a whole session offline (connect, helo, mail, each rcpt, data) and returns
    /// the printed report, as `mxguard explain` shows it.
    pub fn explain_session(&self, input: &ExplainInput<'_>) -> String {
        explain::explain_session(self, input)
    }
}
