//! Rate limits: GCRA over any combination of client and envelope fields, counting
//! connections, messages, recipients or bytes. Over the limit → `451 4.7.0` (the
//! session turns it into `421 4.7.0` and closes at connect) with the wait.

use crate::reply::{Reply, StatusCode};
use crate::store::{RateCount, RateOutcome, RateParams, Store, StoreError};
use crate::telemetry::Metrics;

/// A rate-limit decision prepared from the facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitCheck {
    /// `rule-name|client_net=192.0.2.0/24|sender_domain=example.com`: the rule name
    /// keeps different rules' budgets apart.
    pub key: String,
    pub params: RateParams,
    /// Units this event spends (1 message, N recipients, N bytes); clamped to the burst.
    pub cost: u64,
    /// What the rule counts (the `count` label of the decision metric).
    pub count: RateCount,
}

impl RateLimitCheck {
    pub(crate) async fn run(
        &self,
        store: &dyn Store,
        metrics: &Metrics,
    ) -> Result<Option<Reply>, StoreError> {
        let outcome = store.rate(&self.key, &self.params, self.cost).await?;
        metrics.store.rate_limit(self.count, outcome);
        Ok(match outcome {
            RateOutcome::Allowed => None,
            RateOutcome::Limited { retry_in } => Some(Reply::new(
                451,
                StatusCode(4, 7, 0),
                format!(
                    "Rate limit exceeded, please try again in {} seconds",
                    super::secs_ceil(retry_in)
                ),
            )),
        })
    }
}
