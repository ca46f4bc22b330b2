//! MAIL FROM: start a transaction, here and (once the rules pass) at the upstream.

use smtp_proto::{MAIL_BODY_8BITMIME, MAIL_BODY_BINARYMIME, MAIL_SMTPUTF8, MailFrom};
use tracing::warn;

use super::{Flow, Session};
use crate::envelope::Stage;
use crate::reply::{Reply, reply};

impl Session {
    pub(super) async fn mail(&mut self, from: MailFrom<String>) -> Flow {
        if self.env.helo.is_none() {
            self.error_reply(reply(503, (5, 5, 1), "Error: send HELO/EHLO first"));
            return Flow::Continue;
        }
        if self.env.sender.is_some() {
            self.error_reply(reply(503, (5, 5, 1), "Error: nested MAIL command"));
            return Flow::Continue;
        }
        if self.listener.submission && self.client.auth_user.is_none() {
            self.bad_input(
                "auth_required",
                reply(530, (5, 7, 0), "Authentication required"),
            );
            return Flow::Continue;
        }
        if self.transactions >= self.rt.config.limits.max_transactions {
            let r = reply(
                421,
                (4, 7, 0),
                "Error: too many transactions in one session",
            );
            self.note_bad_input("too_many_transactions", &r);
            self.push(&r);
            return Flow::Close;
        }
        if let Some(r) = self.unsupported_mail_parameter(&from) {
            self.bad_input("unsupported_parameter", r);
            return Flow::Continue;
        }
        let max = self.rt.config.limits.max_message_size;
        if from.size as u64 > max {
            self.bad_input(
                "size",
                reply(552, (5, 3, 4), "Error: message size exceeds fixed limit"),
            );
            return Flow::Continue;
        }
        self.transaction_started = std::time::Instant::now();
        self.env.declared_size = (from.size > 0).then_some(from.size as u64);
        self.env.sender = Some(from.address.clone());
        if let Some(refusal) = self.evaluate(Stage::Mail).await {
            self.finish_transaction(refusal_outcome(&refusal), None);
            self.error_reply(refusal);
            return Flow::Continue;
        }
        let line = self.upstream_mail_line(&from);
        match self.relay_mail(&line).await {
            Ok(r) if r.is_positive() => {
                self.upstream_in_transaction = true;
                self.transactions += 1;
                self.push(&r);
                Flow::Continue
            }
            Ok(r) => {
                let closing = r.code == 421;
                self.finish_transaction(upstream_outcome(&r), Some(&r));
                self.error_reply(r);
                if closing { Flow::Close } else { Flow::Continue }
            }
            Err(e) => {
                warn!(session = %self.id, error = %e, "upstream failed at MAIL");
                self.upstream = None;
                self.finish_transaction("upstream_failed", None);
                self.push(&reply(
                    451,
                    (4, 4, 1),
                    "Error: upstream unavailable, try again later",
                ));
                Flow::Continue
            }
        }
    }

    /// Opens the upstream session on the first MAIL, then sends MAIL through it.
    async fn relay_mail(&mut self, line: &str) -> Result<Reply, crate::relay::RelayError> {
        let identity = self.identity();
        if self.upstream.is_none() {
            let up = self.rt.upstreams.connect(&identity).await?;
            self.upstream = Some(up);
        }
        let up = self.upstream.as_mut().expect("connected above");
        up.mail(&identity, line).await
    }

    /// MAIL parameters we did not advertise (or cannot relay) are refused, as Postfix does.
    fn unsupported_mail_parameter(&self, from: &MailFrom<String>) -> Option<Reply> {
        let caps = self.rt.upstreams.capabilities();
        let has = |f: fn(&crate::relay::Capabilities) -> bool| caps.as_deref().is_some_and(f);
        if from.flags & MAIL_BODY_BINARYMIME != 0 {
            return Some(reply(
                555,
                (5, 5, 4),
                "Error: BODY=BINARYMIME not supported",
            ));
        }
        if from.flags & MAIL_SMTPUTF8 != 0 && !has(|c| c.smtputf8) {
            return Some(reply(555, (5, 5, 4), "Error: SMTPUTF8 not supported"));
        }
        if from.flags & MAIL_BODY_8BITMIME != 0 && !has(|c| c.eight_bit_mime) {
            return Some(reply(555, (5, 5, 4), "Error: BODY=8BITMIME not supported"));
        }
        if from.env_id.is_some()
            || from.flags & (smtp_proto::MAIL_RET_FULL | smtp_proto::MAIL_RET_HDRS) != 0
        {
            return Some(reply(555, (5, 5, 4), "Error: DSN parameters not supported"));
        }
        None
    }

    /// The MAIL command as the upstream gets it: only parameters it understands, never
    /// `AUTH=` from the client.
    fn upstream_mail_line(&self, from: &MailFrom<String>) -> String {
        let mut line = format!("MAIL FROM:<{}>", from.address);
        if from.size > 0 {
            line.push_str(&format!(" SIZE={}", from.size));
        }
        if from.flags & MAIL_BODY_8BITMIME != 0 {
            line.push_str(" BODY=8BITMIME");
        } else if from.flags & smtp_proto::MAIL_BODY_7BIT != 0 {
            line.push_str(" BODY=7BIT");
        }
        if from.flags & MAIL_SMTPUTF8 != 0 {
            line.push_str(" SMTPUTF8");
        }
        line.push_str("\r\n");
        line
    }
}

/// The transaction outcome label for a policy refusal.
pub(super) fn refusal_outcome(r: &Reply) -> &'static str {
    if r.is_transient() {
        "tempfailed"
    } else {
        "rejected"
    }
}

/// The transaction outcome label for an upstream refusal.
pub(super) fn upstream_outcome(r: &Reply) -> &'static str {
    if r.is_transient() {
        "upstream_tempfailed"
    } else {
        "upstream_rejected"
    }
}
