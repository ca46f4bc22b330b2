//! RCPT TO: each recipient decided by the rules, then by the upstream.

use smtp_proto::RcptTo;
use tracing::warn;

use super::{Flow, Session};
use crate::envelope::Stage;
use crate::reply::reply;

impl Session {
    pub(super) async fn rcpt(&mut self, to: RcptTo<String>) -> Flow {
        if self.env.sender.is_none() {
            self.error_reply(reply(503, (5, 5, 1), "Error: need MAIL command"));
            return Flow::Continue;
        }
        if self.env.recipients.len() >= self.rt.config.limits.max_recipients {
            let r = reply(452, (4, 5, 3), "Error: too many recipients");
            self.note_bad_input("too_many_recipients", &r);
            self.push(&r);
            return Flow::Continue;
        }
        if to.orcpt.is_some() || to.flags != 0 {
            self.bad_input(
                "unsupported_parameter",
                reply(555, (5, 5, 4), "Error: DSN parameters not supported"),
            );
            return Flow::Continue;
        }
        self.rcpts_tried += 1;
        self.env.current_recipient = Some(to.address.clone());
        let refusal = self.evaluate(Stage::Rcpt).await;
        self.env.current_recipient = None;
        if let Some(refusal) = refusal {
            self.error_reply(refusal);
            return Flow::Continue;
        }
        let line = format!("RCPT TO:<{}>\r\n", to.address);
        let Some(up) = self.upstream.as_mut() else {
            // MAIL succeeded, so the upstream is open unless it failed since.
            self.push(&reply(
                421,
                (4, 4, 2),
                "Error: upstream connection lost, closing",
            ));
            return Flow::Close;
        };
        match up.rcpt(&line).await {
            Ok(r) if r.is_positive() => {
                self.env.recipients.push(to.address);
                self.push(&r);
                Flow::Continue
            }
            Ok(r) => {
                let closing = r.code == 421;
                self.error_reply(r);
                if closing {
                    self.upstream = None;
                    self.upstream_in_transaction = false;
                    Flow::Close
                } else {
                    Flow::Continue
                }
            }
            Err(e) => {
                // The upstream transaction is gone; the client must start over later.
                warn!(session = %self.id, error = %e, "upstream failed at RCPT");
                self.upstream = None;
                self.upstream_in_transaction = false;
                self.finish_transaction("upstream_failed", None);
                self.push(&reply(
                    421,
                    (4, 4, 2),
                    "Error: upstream connection lost, closing",
                ));
                Flow::Close
            }
        }
    }
}
