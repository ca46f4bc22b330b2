//! What the state store's checks count: greylist and rate-limit decisions, and store
//! failures.

use prometheus::{IntCounterVec, Registry};

use super::labels::{counter_vec, label_values};
use crate::store::{GreyOutcome, RateCount, RateOutcome};

label_values! {
    /// A greylist decision (`mxguard_greylist_decisions_total{outcome}`).
    pub enum GreylistOutcome {
        /// First attempt: refused.
        New => "new",
        /// A retry before the delay is over: refused again.
        TooEarly => "too_early",
        /// A retry after the delay: passes, the triplet is remembered.
        Passed => "passed",
        /// A triplet that passed before.
        Known => "known",
        /// The client network passed often enough to skip greylisting.
        AutoAllowed => "auto_allowed",
    }
}

impl From<GreyOutcome> for GreylistOutcome {
    fn from(o: GreyOutcome) -> Self {
        match o {
            GreyOutcome::New { .. } => GreylistOutcome::New,
            GreyOutcome::TooEarly { .. } => GreylistOutcome::TooEarly,
            GreyOutcome::Passed => GreylistOutcome::Passed,
            GreyOutcome::Known => GreylistOutcome::Known,
            GreyOutcome::AutoAllowed => GreylistOutcome::AutoAllowed,
        }
    }
}

label_values! {
    /// A rate-limit decision (`mxguard_rate_limit_decisions_total{result}`).
    pub enum RateResult {
        Allowed => "allowed",
        Limited => "limited",
    }
}

impl From<RateOutcome> for RateResult {
    fn from(o: RateOutcome) -> Self {
        match o {
            RateOutcome::Allowed => RateResult::Allowed,
            RateOutcome::Limited { .. } => RateResult::Limited,
        }
    }
}

label_values! {
    /// What the store was doing when it failed (`mxguard_store_errors_total{op}`).
    pub enum StoreOp {
        Greylist => "greylist",
        RateLimit => "rate_limit",
        /// The minutely removal of expired records.
        Sweep => "sweep",
    }
}

/// The families of the state store's checks.
#[derive(Clone)]
pub struct StoreMetrics {
    pub greylist_decisions_total: IntCounterVec,
    pub rate_limit_decisions_total: IntCounterVec,
    pub store_errors_total: IntCounterVec,
}

impl StoreMetrics {
    /// Registers the families; every outcome, count and operation starts at zero.
    pub fn register(registry: &Registry) -> Self {
        let m = StoreMetrics {
            greylist_decisions_total: counter_vec(
                registry,
                "mxguard_greylist_decisions_total",
                "Greylist decisions by outcome (new, too_early, passed, known, auto_allowed)",
                &["outcome"],
            ),
            rate_limit_decisions_total: counter_vec(
                registry,
                "mxguard_rate_limit_decisions_total",
                "Rate-limit decisions by what is counted and result (allowed, limited)",
                &["count", "result"],
            ),
            store_errors_total: counter_vec(
                registry,
                "mxguard_store_errors_total",
                "State store failures by operation (greylist, rate_limit, sweep); the rule's fail mode applied",
                &["op"],
            ),
        };
        for outcome in GreylistOutcome::ALL {
            m.greylist_decisions_total
                .with_label_values(&[outcome.as_str()]);
        }
        for count in RateCount::ALL {
            for result in RateResult::ALL {
                m.rate_limit_decisions_total
                    .with_label_values(&[count.as_str(), result.as_str()]);
            }
        }
        for op in StoreOp::ALL {
            m.store_errors_total.with_label_values(&[op.as_str()]);
        }
        m
    }

    pub fn greylist(&self, outcome: GreyOutcome) {
        self.greylist_decisions_total
            .with_label_values(&[GreylistOutcome::from(outcome).as_str()])
            .inc();
    }

    pub fn rate_limit(&self, count: RateCount, outcome: RateOutcome) {
        self.rate_limit_decisions_total
            .with_label_values(&[count.as_str(), RateResult::from(outcome).as_str()])
            .inc();
    }

    pub fn store_error(&self, op: StoreOp) {
        self.store_errors_total
            .with_label_values(&[op.as_str()])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::encode;

    #[test]
    fn decisions_and_errors_start_at_zero_and_count() {
        let registry = Registry::new();
        let m = StoreMetrics::register(&registry);
        let text = encode(&registry);
        for outcome in GreylistOutcome::ALL {
            let line = format!("mxguard_greylist_decisions_total{{outcome=\"{outcome}\"}} 0\n");
            assert!(text.contains(&line), "{line}");
        }
        for count in RateCount::ALL {
            for result in RateResult::ALL {
                let line = format!(
                    "mxguard_rate_limit_decisions_total{{count=\"{}\",result=\"{result}\"}} 0\n",
                    count.as_str()
                );
                assert!(text.contains(&line), "{line}");
            }
        }
        for op in StoreOp::ALL {
            let line = format!("mxguard_store_errors_total{{op=\"{op}\"}} 0\n");
            assert!(text.contains(&line), "{line}");
        }
        m.greylist(GreyOutcome::TooEarly { retry_in: 5 });
        m.greylist(GreyOutcome::AutoAllowed);
        m.rate_limit(RateCount::Bytes, RateOutcome::Limited { retry_in: 1 });
        m.store_error(StoreOp::Sweep);
        let text = encode(&registry);
        for line in [
            "mxguard_greylist_decisions_total{outcome=\"too_early\"} 1\n",
            "mxguard_greylist_decisions_total{outcome=\"auto_allowed\"} 1\n",
            "mxguard_greylist_decisions_total{outcome=\"new\"} 0\n",
            "mxguard_rate_limit_decisions_total{count=\"bytes\",result=\"limited\"} 1\n",
            "mxguard_store_errors_total{op=\"sweep\"} 1\n",
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
    }
}
