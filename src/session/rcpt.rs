//! RCPT TO: each recipient decided by the rules, then by the upstream.

use tracing::warn;

use super::{Flow, Session};
use crate::envelope::Stage;
use crate::reply::reply;
use crate::smtp::RcptCommand;
use crate::telemetry::ProtocolErrorKind;

impl Session {
    pub(super) async fn rcpt(&mut self, cmd: RcptCommand) -> Flow {
        if self.env.sender.is_none() {
            self.error_reply(reply(503, (5, 5, 1), "Error: need MAIL command"));
            return Flow::Continue;
        }
        if self.upstream_failed {
            self.push(&upstream_aborted());
            return Flow::Continue;
        }
        let limits = &self.rt.config.limits;
        if self.env.recipients.len() >= limits.max_recipients {
            // Past the limit, 452 asks for the rest in another transaction; a client that
            // keeps going beyond the overshoot allowance earns an error per recipient
            // (Postfix smtpd_recipient_overshoot_limit), so the error limit closes it.
            self.rcpts_over_limit += 1;
            let overshoot = self.rcpts_over_limit > limits.recipient_overshoot_limit;
            let r = reply(452, (4, 5, 3), "Error: too many recipients");
            self.note_bad_input(ProtocolErrorKind::TooManyRecipients, &r);
            if overshoot {
                self.error_reply(r);
            } else {
                self.push(&r);
            }
            return Flow::Continue;
        }
        if cmd.params.has_dsn() {
            self.bad_input(
                ProtocolErrorKind::UnsupportedParameter,
                reply(555, (5, 5, 4), "Error: DSN parameters not supported"),
            );
            return Flow::Continue;
        }
        self.rcpts_tried += 1;
        let address = cmd.to.to_string();
        self.env.current_recipient = Some(address.clone());
        let refusal = self.evaluate(Stage::Rcpt).await;
        self.env.current_recipient = None;
        if let Some(refusal) = refusal {
            self.error_reply(refusal);
            return Flow::Continue;
        }
        let line = format!("RCPT TO:<{address}>\r\n");
        let outcome = match self.upstream.as_mut() {
            Some(up) => up.rcpt(&line).await,
            // MAIL succeeded, so the upstream is open unless it failed since.
            None => Err(crate::relay::RelayError::Unavailable(
                "upstream session lost since MAIL".into(),
            )),
        };
        match outcome {
            Ok(r) if r.is_positive() => {
                self.env.recipients.push(address);
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
                    Err(e) => warn!(session = %self.id, error = %e, "upstream failed at RCPT"),
                    Ok(r) => warn!(session = %self.id, reply = %r, "upstream closing at RCPT"),
                }
                self.upstream = None;
                self.upstream_in_transaction = false;
                self.fail_transaction_upstream();
                self.push(&upstream_aborted());
                Flow::Continue
            }
        }
    }
}

/// The reply to every RCPT and DATA of a transaction whose upstream side was lost.
pub(super) fn upstream_aborted() -> crate::reply::Reply {
    reply(
        451,
        (4, 4, 1),
        "Error: upstream unavailable, transaction aborted, try again later",
    )
}
