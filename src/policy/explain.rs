//! `mxguard explain`: a session run offline through the rules, printed the way an
//! administrator asks "why was this rejected?": per stage, each rule, whether it
//! matched and on what, and the verdict.

use std::fmt::Write as _;
use std::net::IpAddr;

use super::{RuleSet, StageOutcome, Step};
use crate::envelope::{ClientInfo, Decision, Facts, MessageView, Stage};
use crate::message::HeaderIndex;
use crate::smtp::{ForwardPath, MailParams, RcptParams, ReversePath, strip_angle_brackets};
use crate::transaction::{Recipient, Transaction};

/// What `mxguard explain` knows about the session to replay.
#[derive(Debug, Clone)]
pub struct ExplainInput<'a> {
    pub client_ip: IpAddr,
    pub helo: &'a str,
    /// `MAIL FROM` address; `""` or `"<>"` is the null sender. Angle brackets are
    /// optional.
    pub from: &'a str,
    pub to: Vec<String>,
    /// The raw message (`.eml`); without it the `data` stage is not run.
    pub message: Option<&'a [u8]>,
    pub tls: bool,
    pub auth_user: Option<&'a str>,
    /// How many body bytes `body` rules see (the session's scan limit).
    pub body_scan_limit: usize,
    /// Results of the DNS checks, computed by the caller (with `--dns`) before the
    /// offline run; every stage sees them.
    pub auth: crate::envelope::AuthFacts,
    /// What the content filters said about the message (`explain --filters`).
    pub filters: Vec<crate::envelope::FilterFact>,
}

impl<'a> ExplainInput<'a> {
    /// An input with the common defaults: no TLS, no AUTH, a 64 KiB body scan.
    pub fn new(client_ip: IpAddr, helo: &'a str, from: &'a str, to: Vec<String>) -> Self {
        ExplainInput {
            client_ip,
            helo,
            from,
            to,
            message: None,
            tls: false,
            auth_user: None,
            body_scan_limit: DEFAULT_BODY_SCAN,
            auth: crate::envelope::AuthFacts::default(),
            filters: Vec::new(),
        }
    }
}

/// The default body scan limit for `explain`, matching the session's default.
pub const DEFAULT_BODY_SCAN: usize = 64 * 1024;

/// The rules' view of a message file: lines may end in CRLF or LF (files on disk usually
/// have LF), so it is read as the CRLF message the session would have received, and
/// indexed the way the session indexes it.
pub fn message_view(raw: &[u8], body_limit: usize) -> MessageView {
    let crlf = crate::checks::dkim::to_crlf(raw);
    HeaderIndex::build(&crlf).message_view(&crlf, body_limit)
}

/// One stage through the stepper with tracing on: its lines, and its outcome. Offline
/// there is no store: every store check is shown, and taken as passed.
pub(super) fn explain_stage(rules: &RuleSet, facts: &Facts<'_>) -> (Vec<String>, StageOutcome) {
    let mut stepper = rules.stepper(facts.stage).traced();
    let outcome = loop {
        match stepper.step(facts) {
            Step::Done(outcome) => break outcome,
            Step::NeedStore(_) => stepper.store_answered(None),
        }
    };
    let lines = stepper
        .trace()
        .iter()
        .map(|l| {
            if l == "    store: passed" {
                "    store: not asked offline; explain assumes the check passes".to_owned()
            } else {
                l.clone()
            }
        })
        .collect();
    (lines, outcome)
}

/// The walk's mutable state: what a session would know by each stage.
struct Walk<'a> {
    rules: &'a RuleSet,
    input: &'a ExplainInput<'a>,
    client: ClientInfo,
    message: Option<MessageView>,
    out: String,
}

impl Walk<'_> {
    /// Prints one stage and returns what it decided.
    fn stage(
        &mut self,
        stage: Stage,
        tx: Option<&Transaction>,
        rcpt: Option<&Recipient>,
        note: String,
    ) -> Decision {
        let facts = Facts {
            stage,
            client: &self.client,
            helo: (stage != Stage::Connect).then_some(self.input.helo),
            transaction: tx,
            recipient: rcpt,
            message: if stage == Stage::Data {
                self.message.as_ref()
            } else {
                None
            },
            auth: &self.input.auth,
            filters: if stage == Stage::Data {
                &self.input.filters
            } else {
                &[]
            },
        };
        let (lines, outcome) = explain_stage(self.rules, &facts);
        let _ = writeln!(self.out, "\n== {stage}: {note}");
        for line in lines {
            let _ = writeln!(self.out, "{line}");
        }
        outcome.decision
    }

    /// Whether the decision ends the walk (a refusal or an accept), with the result line.
    fn ends(&mut self, d: &Decision, what: &str) -> bool {
        match d {
            Decision::Reject(_) | Decision::Tempfail(_) => {
                let _ = writeln!(
                    self.out,
                    "\nresult: {what} refused; the session goes no further"
                );
                true
            }
            Decision::Accept => {
                let scope = if what == "connect" || what == "helo" {
                    "session"
                } else {
                    "transaction"
                };
                let _ = writeln!(
                    self.out,
                    "\nresult: accepted by policy at {what}; no later rules run for the {scope}"
                );
                true
            }
            Decision::Continue => false,
        }
    }
}

pub(super) fn explain_session(rules: &RuleSet, input: &ExplainInput<'_>) -> String {
    let mut w = Walk {
        rules,
        input,
        client: ClientInfo {
            ip: input.client_ip,
            port: 0,
            listener: "explain".into(),
            submission: false,
            tls: input.tls,
            auth_user: input.auth_user.map(str::to_owned),
        },
        message: input
            .message
            .map(|m| message_view(m, input.body_scan_limit)),
        out: String::new(),
    };
    let _ = writeln!(
        w.out,
        "rules: {} (hash {})",
        rules.rule_count(),
        rules.content_hash()
    );
    let _ = writeln!(w.out, "checks: {}", input.auth.summary());
    let d = w.stage(
        Stage::Connect,
        None,
        None,
        format!("client_ip={} tls={}", input.client_ip, input.tls),
    );
    if w.ends(&d, "connect") {
        return w.out;
    }
    let d = w.stage(Stage::Helo, None, None, format!("helo={:?}", input.helo));
    if w.ends(&d, "helo") {
        return w.out;
    }
    let from = strip_angle_brackets(input.from);
    let sender = match ReversePath::parse(from) {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(
                w.out,
                "\nresult: MAIL FROM:<{from}> is refused as syntax: {e}"
            );
            return w.out;
        }
    };
    let params = MailParams {
        size: w.message.as_ref().map(|m| m.size),
        ..MailParams::default()
    };
    let mut tx = Transaction::new(sender, params, &input.auth);
    let size_note = tx
        .params
        .size
        .map(|s| format!(" SIZE={s}"))
        .unwrap_or_default();
    let note = format!("sender=<{}>{size_note}", tx.sender_text);
    let d = w.stage(Stage::Mail, Some(&tx), None, note);
    if w.ends(&d, "mail") {
        return w.out;
    }
    for rcpt in &input.to {
        let path = match ForwardPath::parse(strip_angle_brackets(rcpt)) {
            Ok(p) => p,
            Err(e) => {
                let _ = writeln!(
                    w.out,
                    "\n== rcpt: RCPT TO:<{rcpt}> is refused as syntax: {e}"
                );
                continue;
            }
        };
        let r = Recipient::new(path, RcptParams::default());
        let note = format!("recipient=<{}>", r.text);
        let d = w.stage(Stage::Rcpt, Some(&tx), Some(&r), note);
        match d {
            Decision::Reject(reply) | Decision::Tempfail(reply) => {
                let _ = writeln!(w.out, "  -> recipient <{}> refused: {reply}", r.text);
            }
            Decision::Accept => {
                tx.recipients.push(r);
                let _ = writeln!(
                    w.out,
                    "\nresult: transaction accepted by policy at rcpt; later recipients and data are not checked"
                );
                return w.out;
            }
            Decision::Continue => tx.recipients.push(r),
        }
    }
    if tx.recipients.is_empty() {
        let _ = writeln!(
            w.out,
            "\nresult: no recipient accepted; DATA would be refused"
        );
        return w.out;
    }
    let Some(m) = &w.message else {
        let _ = writeln!(
            w.out,
            "\nresult: {} recipient(s) accepted; no message given, data stage not run",
            tx.recipients.len()
        );
        return w.out;
    };
    let note = format!(
        "{} header fields, size={}, recipients={}",
        m.headers.len(),
        m.size,
        tx.recipients.len()
    );
    let d = w.stage(Stage::Data, Some(&tx), None, note);
    let _ = match d {
        Decision::Reject(r) | Decision::Tempfail(r) => {
            writeln!(w.out, "\nresult: message refused: {r}")
        }
        Decision::Accept => writeln!(
            w.out,
            "\nresult: message accepted by policy; relayed upstream"
        ),
        Decision::Continue => {
            writeln!(
                w.out,
                "\nresult: message passes the rules; relayed upstream"
            )
        }
    };
    w.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_view_parses_headers_body_and_size() {
        let raw = b"Subject: hello\n  world\nX-A: 1\r\n\nbody line\nmore\n";
        let m = message_view(raw, 4);
        assert_eq!(
            m.headers,
            vec![
                ("Subject".to_owned(), "hello  world".to_owned()),
                ("X-A".to_owned(), "1".to_owned())
            ]
        );
        assert_eq!(m.body_prefix, b"body");
        assert_eq!(m.size, raw.len() as u64 + 5, "the CRLF message's size");
    }
}
