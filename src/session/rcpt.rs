//! RCPT TO: each recipient decided by the rules, then by the upstream.

use tracing::warn;

use super::fault::upstream_aborted;
use super::{Flow, Session};
use crate::envelope::Stage;
use crate::reply::reply;
use crate::smtp::RcptCommand;
use crate::stream::Transport;
use crate::telemetry::ProtocolErrorKind;
use crate::transaction::Recipient;

impl<S: Transport> Session<S> {
    pub(super) async fn rcpt(&mut self, cmd: RcptCommand) -> Flow {
        let Some(tx) = self.tx.as_mut() else {
            self.error_reply(reply(503, (5, 5, 1), "Error: need MAIL command"));
            return Flow::Continue;
        };
        if tx.upstream_failed {
            self.push(&upstream_aborted());
            return Flow::Continue;
        }
        let limits = &self.rt.config.limits;
        if tx.recipient_count() >= limits.max_recipients {
            // Past the limit, 452 asks for the rest in another transaction; a client that
            // keeps going beyond the overshoot allowance earns an error per recipient
            // (Postfix smtpd_recipient_overshoot_limit), so the error limit closes it.
            tx.rcpts_over_limit += 1;
            let overshoot = tx.rcpts_over_limit > limits.recipient_overshoot_limit;
            let r = reply(452, (4, 5, 3), "Error: too many recipients");
            self.note_bad_input(ProtocolErrorKind::TooManyRecipients, &r);
            if overshoot {
                self.error_reply(r);
            } else {
                self.push(&r);
            }
            return Flow::Continue;
        }
        if cmd.params.has_dsn() && !self.offered.dsn {
            self.bad_input(
                ProtocolErrorKind::UnsupportedParameter,
                reply(555, (5, 5, 4), "Error: DSN parameters not supported"),
            );
            return Flow::Continue;
        }
        tx.rcpts_tried += 1;
        let rcpt = Recipient::new(cmd.to, cmd.params);
        if let Some(refusal) = self.evaluate(Stage::Rcpt, Some(&rcpt)).await {
            self.error_reply(refusal);
            return Flow::Continue;
        }
        if let Some(chain) = self.filters.as_mut() {
            let params = rcpt.params.to_strings();
            let verdict = Box::pin(chain.rcpt(&rcpt.text, &params)).await;
            self.note_filter_calls();
            if let Some(v) = verdict {
                let stop = self.filter_stop(v, "rcpt");
                return self.answer_filter_stop(stop);
            }
        }
        let outcome = match self.upstream.as_mut() {
            Some(up) if up.pipelines() && (up.caps.dsn || !rcpt.params.has_dsn()) => {
                if let Some(tx) = self.tx.as_mut() {
                    tx.pending_rcpts += 1;
                }
                self.pipeline.queue_rcpt(rcpt);
                return Flow::Continue;
            }
            Some(up) if rcpt.params.has_dsn() && !up.caps.dsn => {
                // Failed over to an upstream without DSN: never drop NOTIFY/ORCPT.
                warn!(session = %self.id, "the upstream lacks DSN, which the recipient uses");
                self.push(&reply(
                    451,
                    (4, 3, 3),
                    "Error: the upstream cannot take DSN now, try again later",
                ));
                return Flow::Continue;
            }
            Some(up) => up.rcpt(&rcpt.upstream_line()).await,
            // MAIL succeeded, so the upstream is open unless it failed since.
            None => Err(crate::relay::RelayError::Unavailable(
                "upstream session lost since MAIL".into(),
            )),
        };
        self.rcpt_answered(rcpt, outcome)
    }

    /// The upstream's answer to RCPT (in lockstep, or from a pipelined group).
    pub(super) fn rcpt_answered(
        &mut self,
        rcpt: Recipient,
        outcome: Result<crate::reply::Reply, crate::relay::RelayError>,
    ) -> Flow {
        match outcome {
            Ok(r) if r.is_positive() => {
                if let Some(tx) = self.tx.as_mut() {
                    tx.recipients.push(rcpt);
                }
                self.push(&r);
                Flow::Continue
            }
            Ok(r) if r.code != 421 => {
                self.error_reply(r);
                Flow::Continue
            }
            outcome => {
                // The upstream is gone or out of step (a 421 is about the upstream's own
                // connection and names its host: never passed through). The transaction
                // cannot go on there; it stays open for the client, whose every further
                // RCPT and DATA gets the same 4xx until it starts over — never a 5xx for an
                // upstream's fault.
                match outcome {
                    Err(e) => self.upstream_fault("rcpt", &e),
                    Ok(r) => self.upstream_fault("rcpt", &format!("closing: {r}")),
                }
                self.fail_transaction_upstream();
                self.push(&upstream_aborted());
                Flow::Continue
            }
        }
    }
}
