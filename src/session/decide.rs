//! Deciding a stage: run the checks its rules need, then drive the policy's stepper,
//! answering its store checks from the state store.

use tracing::{debug, info};

use super::Session;
use crate::checks::CheckInput;
use crate::envelope::{AuthFacts, Checks, Decision, Facts, MessageView, Stage};
use crate::policy::{Mode, StageOutcome, Step};
use crate::reply::Reply;
use crate::stream::Transport;
use crate::transaction::Recipient;

impl<S: Transport> Session<S> {
    /// Runs the checks `stage` needs, then its rules, unless an earlier `accept` ended
    /// evaluation. At `rcpt`, `rcpt` is the recipient being decided; at `data`, the
    /// message view is passed with [`Session::decide`]. Returns the refusal, if any;
    /// `add_header` lines go to the transaction.
    pub(super) async fn evaluate(
        &mut self,
        stage: Stage,
        rcpt: Option<&Recipient>,
    ) -> Option<Reply> {
        let want = self.checks_wanted(stage);
        self.run_checks(want, None).await;
        self.decide(stage, rcpt, None).await
    }

    /// The checks to run before `stage`'s rules: those its rules test and, at `mail`
    /// and `data`, those the Authentication-Results header needs (with
    /// `auth_results: true`). None after an `accept`, except what the header needs.
    pub(super) fn checks_wanted(&self, stage: Stage) -> Checks {
        let rules = if self.accepted_before(stage) {
            Checks::NONE
        } else {
            self.rules.needs(stage)
        };
        self.rt
            .checker
            .wanted(rules, stage == Stage::Data, stage == Stage::Mail)
    }

    /// Runs the checks in `want` that have not run yet; `message` is the whole message
    /// at end of data. Results go to the transaction, or to the session's client facts
    /// before MAIL.
    pub(super) async fn run_checks(&mut self, want: Checks, message: Option<&[u8]>) {
        if want.is_empty() {
            return;
        }
        let (sender, facts): (Option<&str>, &mut AuthFacts) = match self.tx.as_mut() {
            Some(tx) => (Some(tx.sender_text.as_str()), &mut tx.auth),
            None => (None, &mut self.client_auth),
        };
        let input = CheckInput {
            ip: self.client.ip,
            helo: self.helo.as_deref(),
            sender,
            message,
        };
        // Boxed, as the store answer below: DNS checks are kilobytes of state, which
        // every MAIL and RCPT would otherwise allocate and copy, checks wanted or not.
        Box::pin(self.rt.checker.run(want, &input, facts)).await;
    }

    /// Drives the stage's stepper to its outcome: each store check it yields is resolved
    /// against the store ([`crate::checks::resolve`]), then stepping goes on. Counts and
    /// logs the hits and the decision; records `add_header` lines in the transaction.
    pub(super) async fn decide(
        &mut self,
        stage: Stage,
        rcpt: Option<&Recipient>,
        message: Option<&MessageView>,
    ) -> Option<Reply> {
        if self.accepted_before(stage) {
            return None;
        }
        let rules = self.rules.clone();
        let mut stepper = rules.stepper(stage);
        let outcome = loop {
            let step = {
                let facts = Facts {
                    stage,
                    client: &self.client,
                    helo: self.helo.as_deref(),
                    transaction: self.tx.as_deref(),
                    recipient: rcpt,
                    message,
                    auth: self.tx.as_ref().map_or(&self.client_auth, |t| &t.auth),
                    filters: self.tx.as_ref().map_or(&[], |t| &t.filters),
                };
                stepper.step(&facts)
            };
            match step {
                Step::Done(outcome) => break outcome,
                Step::NeedStore(pending) => {
                    let refusal = Box::pin(crate::checks::resolve(
                        &*self.rt.store,
                        &self.rt.metrics,
                        stage,
                        &pending,
                    ))
                    .await;
                    stepper.store_answered(refusal);
                }
            }
        };
        self.act_on(stage, outcome)
    }

    /// Metrics and log lines for a stage's outcome; the refusal to send, if any.
    fn act_on(&mut self, stage: Stage, outcome: StageOutcome) -> Option<Reply> {
        for hit in &outcome.hits {
            self.rt.metrics.policy.verdict(
                stage,
                &hit.rule,
                hit.action.as_str(),
                hit.mode.as_str(),
            );
            if hit.mode == Mode::Monitor {
                info!(
                    session = %self.id,
                    client = %self.client.ip,
                    stage = %stage,
                    rule = %hit.rule,
                    action = hit.action.as_str(),
                    "policy monitor: rule matched, not enforced"
                );
            }
        }
        if let Some(tx) = self.tx.as_mut() {
            tx.add_headers.extend(outcome.edits);
        }
        let rule = outcome.rule.as_deref().unwrap_or_default();
        let (action, refusal) = match outcome.decision {
            Decision::Continue => return None,
            Decision::Accept => {
                if stage <= Stage::Helo {
                    self.session_accepted = true;
                } else if let Some(tx) = self.tx.as_mut() {
                    tx.accepted_by_rule = true;
                }
                ("accept", None)
            }
            Decision::Reject(r) => ("reject", Some(r)),
            Decision::Tempfail(r) => ("tempfail", Some(r)),
        };
        if let Some(r) = &refusal {
            info!(
                session = %self.id,
                client = %self.client.ip,
                stage = %stage,
                rule = %rule,
                action,
                reply = %r,
                "policy refusal"
            );
        } else {
            debug!(session = %self.id, stage = %stage, rule = %rule, "policy accept");
        }
        refusal
    }

    /// Whether an earlier `accept` ended rule evaluation for `stage`: for the session at
    /// connect/helo, for the transaction at mail and later.
    pub(super) fn accepted_before(&self, stage: Stage) -> bool {
        self.session_accepted
            || (stage >= Stage::Mail && self.tx.as_ref().is_some_and(|t| t.accepted_by_rule))
    }
}
