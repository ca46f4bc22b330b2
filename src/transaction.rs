//! One mail transaction, from MAIL FROM to the end of the message (or RSET): what the
//! client asked for, typed — the sender with its MAIL parameters, each recipient with
//! its RCPT parameters — what the checks found about it, and how the message will be
//! changed on its way upstream.
//!
//! A reset (RSET, a new EHLO, the end of a message) *replaces* the transaction: nothing
//! of one message can leak into the next, whatever fields are added here later.

use std::time::Instant;

use crate::envelope::AuthFacts;
use crate::smtp::{ForwardPath, MailParams, RcptParams, ReversePath};

/// A recipient the rules and the upstream accepted (or the one being decided).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub path: ForwardPath,
    /// The address as rules see it and the upstream receives it (canonical rendering).
    pub text: String,
    pub params: RcptParams,
}

impl Recipient {
    pub fn new(path: ForwardPath, params: RcptParams) -> Recipient {
        Recipient {
            text: path.to_string(),
            path,
            params,
        }
    }

    /// `RCPT TO:<…>` with the parameters the upstream gets (DSN ones verbatim).
    pub fn upstream_line(&self) -> String {
        let mut line = format!("RCPT TO:<{}>", self.text);
        if let Some(n) = &self.params.notify {
            line.push_str(&format!(" NOTIFY={n}"));
        }
        if let Some(o) = &self.params.orcpt {
            line.push_str(&format!(" ORCPT={};{}", o.addr_type, o.xtext));
        }
        line.push_str("\r\n");
        line
    }
}

/// How the message of the transaction arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transfer {
    /// No DATA or BDAT yet.
    #[default]
    None,
    /// DATA: dot-stuffed, ended by CRLF.CRLF.
    Data,
    /// BDAT chunks (RFC 3030); DATA is no longer allowed in this transaction.
    Bdat,
}

#[derive(Debug)]
pub struct Transaction {
    pub sender: ReversePath,
    /// The sender as rules see it and the upstream receives it (`""` for `<>`).
    pub sender_text: String,
    pub params: MailParams,
    /// Accepted by the rules and by the upstream, in order.
    pub recipients: Vec<Recipient>,
    /// RCPT commands seen (accepted or not), for "no valid recipients".
    pub rcpts_tried: usize,
    /// Recipients sent upstream in a pipelined group and not answered yet: they count
    /// towards the limits and `recipient_count` as they would in lockstep.
    pub pending_rcpts: usize,
    /// RCPTs refused because `max_recipients` was reached.
    pub rcpts_over_limit: usize,
    /// An `accept` rule ended rule evaluation for the rest of this transaction.
    pub accepted_by_rule: bool,
    /// The sender's and the message's checks; the client's (DNS lists, reverse DNS) are
    /// carried in from the session when the transaction starts.
    pub auth: AuthFacts,
    /// `Name: value` lines that rules asked to add above the message.
    pub add_headers: Vec<String>,
    pub transfer: Transfer,
    /// The upstream was lost mid-transaction: counted and logged as failed when it
    /// happened; every further RCPT, DATA and BDAT gets `451 4.4.1` until a reset.
    pub upstream_failed: bool,
    /// Octets of the message received (for the transaction log line).
    pub size: u64,
    pub started: Instant,
    /// What the content filters said about the message (at end of data).
    pub filters: Vec<crate::envelope::FilterFact>,
}

impl Transaction {
    pub fn new(sender: ReversePath, params: MailParams, client_auth: &AuthFacts) -> Self {
        Transaction {
            sender_text: sender.to_string(),
            sender,
            params,
            recipients: Vec::new(),
            rcpts_tried: 0,
            pending_rcpts: 0,
            rcpts_over_limit: 0,
            accepted_by_rule: false,
            auth: client_auth.client_part(),
            add_headers: Vec::new(),
            transfer: Transfer::None,
            upstream_failed: false,
            size: 0,
            started: Instant::now(),
            filters: Vec::new(),
        }
    }

    /// `clamav=pass rspamd=reject(score=15.2)` for the transaction's log line.
    pub fn filter_summary(&self) -> String {
        let parts: Vec<String> = self
            .filters
            .iter()
            .map(|f| match f.score {
                Some(s) => format!("{}={}(score={s:.2})", f.name, f.result.as_str()),
                None => format!("{}={}", f.name, f.result.as_str()),
            })
            .collect();
        parts.join(" ")
    }

    /// Recipients accepted, and those awaiting the upstream's answer.
    pub fn recipient_count(&self) -> usize {
        self.recipients.len() + self.pending_rcpts
    }

    /// Whether any DSN parameter (RFC 3461) is in use, on MAIL or a recipient.
    pub fn uses_dsn(&self) -> bool {
        self.params.has_dsn() || self.recipients.iter().any(|r| r.params.has_dsn())
    }

    /// The recipients joined for the log line.
    pub fn recipient_list(&self) -> String {
        let texts: Vec<&str> = self.recipients.iter().map(|r| r.text.as_str()).collect();
        texts.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::{parse_mail, parse_rcpt};

    #[test]
    fn recipients_relay_their_dsn_parameters_verbatim() {
        let r = parse_rcpt("RCPT TO:<b@d.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+40d.test")
            .unwrap();
        let rcpt = Recipient::new(r.to, r.params);
        assert_eq!(
            rcpt.upstream_line(),
            "RCPT TO:<b@d.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+40d.test\r\n"
        );
        let m = parse_mail("MAIL FROM:<\"a b\"@x.test> RET=HDRS").unwrap();
        let tx = Transaction::new(m.from, m.params, &AuthFacts::default());
        assert_eq!(tx.sender_text, "\"a b\"@x.test");
        assert!(tx.uses_dsn());
    }
}
