//! MAIL FROM: start a transaction, here and (once the rules pass) at the upstream.

use tracing::{debug, warn};

use super::{Flow, Session};
use crate::envelope::Stage;
use crate::reply::{Reply, reply};
use crate::smtp::{Body, MailCommand};
use crate::telemetry::ProtocolErrorKind;

impl Session {
    pub(super) async fn mail(&mut self, cmd: MailCommand) -> Flow {
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
                ProtocolErrorKind::AuthRequired,
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
            self.note_bad_input(ProtocolErrorKind::TooManyTransactions, &r);
            self.push(&r);
            return Flow::Close;
        }
        if let Some(r) = self.unsupported_mail_parameter(&cmd) {
            self.bad_input(ProtocolErrorKind::UnsupportedParameter, r);
            return Flow::Continue;
        }
        let max = self.rt.config.limits.max_message_size;
        if cmd.params.size.is_some_and(|s| s > max) {
            self.bad_input(
                ProtocolErrorKind::Size,
                reply(552, (5, 3, 4), "Error: message size exceeds fixed limit"),
            );
            return Flow::Continue;
        }
        self.transaction_started = std::time::Instant::now();
        self.env.declared_size = cmd.params.size.filter(|s| *s > 0);
        self.env.sender = Some(cmd.from.to_string());
        if let Some(refusal) = self.evaluate(Stage::Mail).await {
            self.finish_transaction(refusal_outcome(&refusal), None);
            self.error_reply(refusal);
            return Flow::Continue;
        }
        let line = self.upstream_mail_line(&cmd);
        match self.relay_mail(&line).await {
            Ok(r) if r.is_positive() => {
                self.upstream_in_transaction = true;
                self.transactions += 1;
                self.push(&r);
                Flow::Continue
            }
            Ok(r) if r.code != 421 => {
                self.finish_transaction(upstream_outcome(&r), Some(&r));
                self.error_reply(r);
                Flow::Continue
            }
            outcome => {
                // Unreachable, broken, or closing its connection (421 is about the
                // upstream's connection, not the client's mail: never passed through).
                match outcome {
                    Err(e) => warn!(session = %self.id, error = %e, "upstream failed at MAIL"),
                    Ok(r) => warn!(session = %self.id, reply = %r, "upstream closing at MAIL"),
                }
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

    /// Sends MAIL upstream, opening the upstream session first if there is none. A
    /// session kept from an earlier transaction may have died while idle (Postfix's own
    /// timeout): it is checked first, and on a failure or a `421` the MAIL is retried
    /// once on a fresh connection, so the client never sees the upstream's stale state.
    async fn relay_mail(&mut self, line: &str) -> Result<Reply, crate::relay::RelayError> {
        let identity = self.identity();
        let mut reused = false;
        if let Some(up) = self.upstream.as_mut() {
            match up.still_open().await {
                Ok(()) => reused = true,
                Err(e) => {
                    debug!(session = %self.id, error = %e, "upstream session died while idle; reconnecting");
                    self.upstream = None;
                }
            }
        }
        if self.upstream.is_none() {
            self.upstream = Some(self.rt.upstreams.connect(&identity).await?);
        }
        let up = self.upstream.as_mut().expect("connected above");
        let first = up.mail(&identity, line).await;
        let stale = match &first {
            Ok(r) => r.code == 421,
            Err(_) => true,
        };
        if !(reused && stale) {
            return first;
        }
        debug!(session = %self.id, "reused upstream session failed at MAIL; retrying on a new one");
        self.upstream = None;
        let mut up = self.rt.upstreams.connect(&identity).await?;
        let retried = up.mail(&identity, line).await;
        self.upstream = Some(up);
        retried
    }

    /// MAIL parameters we did not advertise (or cannot relay) are refused, as Postfix does.
    fn unsupported_mail_parameter(&self, cmd: &MailCommand) -> Option<Reply> {
        let caps = self.rt.upstreams.capabilities();
        let has = |f: fn(&crate::relay::Capabilities) -> bool| caps.as_deref().is_some_and(f);
        let p = &cmd.params;
        if p.body == Some(Body::BinaryMime) {
            return Some(reply(
                555,
                (5, 5, 4),
                "Error: BODY=BINARYMIME not supported",
            ));
        }
        if p.smtputf8 && !has(|c| c.smtputf8) {
            return Some(reply(555, (5, 5, 4), "Error: SMTPUTF8 not supported"));
        }
        if p.body == Some(Body::EightBitMime) && !has(|c| c.eight_bit_mime) {
            return Some(reply(555, (5, 5, 4), "Error: BODY=8BITMIME not supported"));
        }
        if p.has_dsn() {
            return Some(reply(555, (5, 5, 4), "Error: DSN parameters not supported"));
        }
        None
    }

    /// The MAIL command as the upstream gets it: the address rendered so it parses as the
    /// client meant it, only parameters it understands, never `AUTH=` from the client.
    fn upstream_mail_line(&self, cmd: &MailCommand) -> String {
        let mut line = format!("MAIL FROM:<{}>", cmd.from);
        if let Some(size) = cmd.params.size.filter(|s| *s > 0) {
            line.push_str(&format!(" SIZE={size}"));
        }
        if let Some(body) = cmd.params.body {
            line.push_str(" BODY=");
            line.push_str(body.as_str());
        }
        if cmd.params.smtputf8 {
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
