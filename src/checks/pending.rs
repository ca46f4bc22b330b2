//! Checks that need the state store (greylisting and rate limits): the pending check a
//! rule leaves for the session, and its resolution.
//!
//! The policy stays pure: a matching `greylist` or `rate_limit` rule makes the policy's
//! stepper yield a [`Pending`] check — the keys already derived from the facts and the
//! rule's parameters. The session resolves it with one store call ([`resolve`]): a
//! refusal ends the stage, a pass lets the stage's later rules run.

use tracing::warn;

use crate::envelope::Stage;
use crate::reply::{Reply, StatusCode};
use crate::store::Store;
use crate::telemetry::{Metrics, StoreOp};

use super::greylist::GreylistCheck;
use super::ratelimit::RateLimitCheck;

/// What a check does when the store fails (Redis down, file store error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailMode {
    /// Let the mail through: losing greylisting for a while beats refusing all mail.
    #[default]
    Open,
    /// Refuse with `451 4.3.0` so the sender retries once the store is back.
    Tempfail,
}

impl FailMode {
    pub fn as_str(self) -> &'static str {
        match self {
            FailMode::Open => "open",
            FailMode::Tempfail => "tempfail",
        }
    }
}

/// A check a rule asked for, prepared by the pure evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    Greylist(GreylistCheck),
    RateLimit(RateLimitCheck),
}

/// A pending check and the rule that asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub check: Check,
    pub fail: FailMode,
    pub rule: std::sync::Arc<str>,
}

/// Runs a pending check against the store: `Some(reply)` refuses, `None` passes.
pub async fn resolve(
    store: &dyn Store,
    metrics: &Metrics,
    stage: Stage,
    pending: &Pending,
) -> Option<Reply> {
    let rule = &*pending.rule;
    let (op, result) = match &pending.check {
        Check::Greylist(g) => (StoreOp::Greylist, g.run(store, metrics).await),
        Check::RateLimit(r) => (StoreOp::RateLimit, r.run(store, metrics).await),
    };
    match result {
        Ok(refusal) => refusal,
        Err(e) => {
            metrics.store.store_error(op);
            warn!(stage = %stage, rule, op = op.as_str(), fail = pending.fail.as_str(), error = %e, "state store failed");
            match pending.fail {
                FailMode::Open => None,
                FailMode::Tempfail => Some(Reply::new(
                    451,
                    StatusCode(4, 3, 0),
                    "Temporary local problem, please try again later".to_owned(),
                )),
            }
        }
    }
}

/// Whole seconds for a reply text, rounded up so "try again in N s" is never early.
pub(crate) fn secs_ceil(us: u64) -> u64 {
    us.div_ceil(1_000_000).max(1)
}
