//! Policy: compiled rules and their evaluation at each stage.
//!
//! Placeholder until the rule engine lands: an empty rule set that lets everything
//! continue to the upstream.

use std::path::Path;

use crate::envelope::{Facts, Verdict};

/// A compiled, validated set of rules. Immutable; swapped whole on reload.
#[derive(Debug, Default)]
pub struct RuleSet {}

impl RuleSet {
    /// The set with no rules: every stage continues.
    pub fn empty() -> Self {
        RuleSet {}
    }

    /// Loads every `*.yaml` file in `dir` (file-name order).
    pub fn load(_dir: &Path) -> Result<RuleSet, Vec<String>> {
        Ok(RuleSet {})
    }

    pub fn rule_count(&self) -> usize {
        0
    }

    /// Decides one stage. Pure: no I/O, no clock.
    pub fn evaluate(&self, _facts: &Facts<'_>) -> Verdict {
        Verdict::continue_()
    }
}
