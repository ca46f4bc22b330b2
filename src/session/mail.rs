//! MAIL FROM: start a transaction, here and (once the rules pass) at the upstream.

use tracing::{debug, warn};

use super::pipeline::MailSent;
use super::{Flow, Session};
use crate::envelope::Stage;
use crate::relay::{Capabilities, RelayError};
use crate::reply::{Reply, reply};
use crate::smtp::{Body, MailCommand};
use crate::stream::Transport;
use crate::telemetry::{ProtocolErrorKind, TransactionOutcome};
use crate::transaction::Transaction;

impl<S: Transport> Session<S> {
    pub(super) async fn mail(&mut self, cmd: MailCommand) -> Flow {
        if self.helo.is_none() {
            self.error_reply(reply(503, (5, 5, 1), "Error: send HELO/EHLO first"));
            return Flow::Continue;
        }
        if self.tx.is_some() {
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
        if let Some(r) = self.unoffered_mail_parameter(&cmd) {
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
        self.tx = Some(Box::new(Transaction::new(
            cmd.from,
            cmd.params,
            &self.client_auth,
        )));
        self.failed_chunk = None;
        if let Some(refusal) = self.evaluate(Stage::Mail, None).await {
            self.finish_transaction(refusal_outcome(&refusal), None);
            self.error_reply(refusal);
            return Flow::Continue;
        }
        if let Some(stop) = self.filter_mail().await {
            return self.answer_filter_stop(stop);
        }
        match self.relay_mail().await {
            Ok(MailSent::Queued) => Flow::Continue,
            Ok(MailSent::Answered(r)) => self.mail_answered(Ok(r)),
            Err(e) => self.mail_answered(Err(e)),
        }
    }

    /// The upstream's answer to MAIL (in lockstep, or from a pipelined group).
    pub(super) fn mail_answered(&mut self, answer: Result<Reply, MailError>) -> Flow {
        match answer {
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
            Ok(r) => self.upstream_unavailable_at_mail(&format!("upstream closing: {r}")),
            Err(MailError::Relay(e)) => self.upstream_unavailable_at_mail(&e.to_string()),
            Err(MailError::Lacks(ext)) => {
                // A failover to an upstream without an extension this transaction uses:
                // never drop the parameter silently; the sender tries again later.
                warn!(session = %self.id, extension = ext, "the upstream lacks an extension the transaction uses");
                self.finish_transaction(TransactionOutcome::UpstreamTempfailed, None);
                self.push(&reply(
                    451,
                    (4, 3, 3),
                    format!("Error: the upstream cannot take {ext} now, try again later"),
                ));
                Flow::Continue
            }
        }
    }

    /// The milters' answer to MAIL (the rules passed it; the upstream has not seen it).
    async fn filter_mail(&mut self) -> Option<super::filters::FilterStop> {
        // The chain is asked for first (it borrows the session): without one, the
        // sender and parameters below are not copied for nobody.
        self.filter_chain()?;
        let tx = self.tx.as_ref()?;
        let sender = tx.sender_text.clone();
        let params = tx.params.to_strings();
        let verdict = Box::pin(self.filter_chain()?.mail(&sender, &params)).await;
        self.note_filter_calls();
        let stop = self.filter_stop(verdict?, "mail");
        let outcome = match &stop {
            super::filters::FilterStop::Refuse(r) | super::filters::FilterStop::Close(r) => {
                refusal_outcome(r)
            }
        };
        self.finish_transaction(outcome, None);
        Some(stop)
    }

    /// Unreachable, broken, or closing its connection (a 421 is about the upstream's
    /// connection, not the client's mail: never passed through).
    fn upstream_unavailable_at_mail(&mut self, why: &str) -> Flow {
        self.upstream_fault("mail", &why);
        self.finish_transaction(TransactionOutcome::UpstreamFailed, None);
        self.push(&super::fault::upstream_unavailable());
        Flow::Continue
    }

    /// Sends MAIL upstream, opening the upstream session first if there is none. A
    /// session kept from an earlier transaction may have died while idle (Postfix's own
    /// timeout): it is checked first, and on a failure or a `421` the MAIL is retried
    /// once on a fresh connection, so the client never sees the upstream's stale state.
    async fn relay_mail(&mut self) -> Result<MailSent, MailError> {
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
            // Boxed, as the other rare steps here: opening a connection (and the
            // filters' calls) is kilobytes of state every MAIL would allocate and copy.
            let up = Box::pin(self.rt.upstreams.connect(&identity)).await?;
            // A warm pooled connection may have been closed a moment ago: retry as reused.
            reused = up.came_from_pool();
            self.upstream = Some(Box::new(up));
        }
        let tx = self.tx.as_ref().expect("MAIL opened the transaction");
        let up = self.upstream.as_mut().expect("connected above");
        let line = upstream_mail_line(tx, &up.caps)?;
        if up.pipelines() {
            self.pipeline.queue_mail(line, reused);
            return Ok(MailSent::Queued);
        }
        let first = up.mail(&identity, &line).await;
        let stale = match &first {
            Ok(r) => r.code == 421,
            Err(_) => true,
        };
        if !(reused && stale) {
            return Ok(MailSent::Answered(first?));
        }
        debug!(session = %self.id, "reused upstream session failed at MAIL; retrying on a new one");
        Ok(MailSent::Answered(
            Box::pin(self.mail_on_fresh_connection()).await?,
        ))
    }

    /// MAIL on a new upstream connection, replacing the current one (which died while
    /// idle).
    pub(super) async fn mail_on_fresh_connection(&mut self) -> Result<Reply, MailError> {
        self.upstream = None;
        let identity = self.identity();
        let mut up = self.rt.upstreams.connect(&identity).await?;
        let tx = self.tx.as_ref().expect("MAIL opened the transaction");
        let line = upstream_mail_line(tx, &up.caps)?;
        let answer = up.mail(&identity, &line).await;
        self.upstream = Some(Box::new(up));
        Ok(answer?)
    }

    /// MAIL parameters we did not offer this client are refused, as Postfix does.
    fn unoffered_mail_parameter(&self, cmd: &MailCommand) -> Option<Reply> {
        let p = &cmd.params;
        let o = &self.offered;
        let refuse = |what: &str| {
            Some(reply(
                555,
                (5, 5, 4),
                format!("Error: {what} not supported"),
            ))
        };
        if p.body == Some(Body::BinaryMime) {
            return refuse("BODY=BINARYMIME");
        }
        if p.smtputf8 && !o.smtputf8 {
            return refuse("SMTPUTF8");
        }
        if p.body == Some(Body::EightBitMime) && !o.eight_bit_mime {
            return refuse("BODY=8BITMIME");
        }
        if p.has_dsn() && !o.dsn {
            return refuse("DSN parameters");
        }
        None
    }
}

/// Why MAIL could not be relayed.
pub(super) enum MailError {
    Relay(RelayError),
    /// The upstream connection lacks an extension the transaction uses.
    Lacks(&'static str),
}

impl From<RelayError> for MailError {
    fn from(e: RelayError) -> Self {
        MailError::Relay(e)
    }
}

/// The MAIL command as the upstream gets it: the address rendered so it parses as the
/// client meant it, every parameter the client gave (DSN ones verbatim) except `AUTH=`,
/// which the upstream never takes from a client. SIZE is advisory: sent only when the
/// upstream offers SIZE. Any other parameter this upstream connection cannot take is an
/// error, never a silent drop.
fn upstream_mail_line(tx: &Transaction, caps: &Capabilities) -> Result<String, MailError> {
    let p = &tx.params;
    let mut line = format!("MAIL FROM:<{}>", tx.sender_text);
    if let Some(size) = p.size.filter(|s| *s > 0 && caps.size.is_some()) {
        line.push_str(&format!(" SIZE={size}"));
    }
    if let Some(body) = p.body {
        if body == Body::EightBitMime && !caps.eight_bit_mime {
            return Err(MailError::Lacks("8BITMIME"));
        }
        line.push_str(" BODY=");
        line.push_str(body.as_str());
    }
    if p.smtputf8 {
        if !caps.smtputf8 {
            return Err(MailError::Lacks("SMTPUTF8"));
        }
        line.push_str(" SMTPUTF8");
    }
    if p.has_dsn() && !caps.dsn {
        return Err(MailError::Lacks("DSN"));
    }
    if let Some(ret) = p.ret {
        line.push_str(" RET=");
        line.push_str(ret.as_str());
    }
    if let Some(envid) = &p.envid {
        line.push_str(" ENVID=");
        line.push_str(envid);
    }
    line.push_str("\r\n");
    Ok(line)
}

/// The transaction outcome label for a policy refusal.
pub(super) fn refusal_outcome(r: &Reply) -> TransactionOutcome {
    if r.is_transient() {
        TransactionOutcome::Tempfailed
    } else {
        TransactionOutcome::Rejected
    }
}

/// The transaction outcome label for an upstream refusal.
pub(super) fn upstream_outcome(r: &Reply) -> TransactionOutcome {
    if r.is_transient() {
        TransactionOutcome::UpstreamTempfailed
    } else {
        TransactionOutcome::UpstreamRejected
    }
}
