//! What the rules count: verdicts, and how the rule set loads and reloads.

use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::{IntCounterVec, IntGauge, Registry};

use super::labels::{ReloadResult, counter_vec, gauge};
use crate::envelope::Stage;

/// The families of the rules.
#[derive(Clone)]
pub struct PolicyMetrics {
    pub verdicts_total: IntCounterVec,
    pub rules_reload_total: IntCounterVec,
    pub rules_loaded: IntGauge,
    pub rules_last_reload_success_timestamp_seconds: IntGauge,
}

impl PolicyMetrics {
    /// Registers the families; both reload results start at zero.
    pub fn register(registry: &Registry) -> Self {
        let m = PolicyMetrics {
            verdicts_total: counter_vec(
                registry,
                "mxguard_verdicts_total",
                "Rule verdicts by stage, rule, action and mode (monitor = would have acted)",
                &["stage", "rule", "action", "mode"],
            ),
            rules_reload_total: counter_vec(
                registry,
                "mxguard_rules_reload_total",
                "Rule reloads by result (success, error)",
                &["result"],
            ),
            rules_loaded: gauge(registry, "mxguard_rules_loaded", "Rules in the live set"),
            rules_last_reload_success_timestamp_seconds: gauge(
                registry,
                "mxguard_rules_last_reload_success_timestamp_seconds",
                "Unix time of the last successful rules load",
            ),
        };
        for result in ReloadResult::ALL {
            m.rules_reload_total.with_label_values(&[result.as_str()]);
        }
        m
    }

    /// A matching rule at `stage`: its name, action and mode (`enforce`, `monitor`).
    pub fn verdict(&self, stage: Stage, rule: &str, action: &str, mode: &str) {
        self.verdicts_total
            .with_label_values(&[stage.as_str(), rule, action, mode])
            .inc();
    }

    /// A rule set of `rules` rules went live at `at` (at start or on reload).
    pub fn applied(&self, rules: usize, at: SystemTime) {
        self.rules_reload_total
            .with_label_values(&[ReloadResult::Success.as_str()])
            .inc();
        self.rules_loaded
            .set(i64::try_from(rules).unwrap_or(i64::MAX));
        let unix = at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        self.rules_last_reload_success_timestamp_seconds.set(unix);
    }

    /// A reload was refused; the previous rules stay live.
    pub fn rejected(&self) {
        self.rules_reload_total
            .with_label_values(&[ReloadResult::Error.as_str()])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::encode;
    use std::time::Duration;

    #[test]
    fn reloads_are_counted_as_success_or_error() {
        let registry = Registry::new();
        let m = PolicyMetrics::register(&registry);
        let text = encode(&registry);
        for result in ReloadResult::ALL {
            let line = format!("mxguard_rules_reload_total{{result=\"{result}\"}} 0\n");
            assert!(text.contains(&line), "{line}");
        }
        m.applied(3, UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        m.rejected();
        m.applied(2, UNIX_EPOCH + Duration::from_secs(1_700_000_060));
        m.verdict(Stage::Rcpt, "no-spam", "reject", "monitor");
        let text = encode(&registry);
        for line in [
            "mxguard_rules_reload_total{result=\"success\"} 2\n",
            "mxguard_rules_reload_total{result=\"error\"} 1\n",
            "mxguard_rules_loaded 2\n",
            "mxguard_rules_last_reload_success_timestamp_seconds 1700000060\n",
            "mxguard_verdicts_total{action=\"reject\",mode=\"monitor\",rule=\"no-spam\",stage=\"rcpt\"} 1\n",
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
    }
}
