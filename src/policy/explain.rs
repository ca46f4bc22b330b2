//! `mxguard explain`: a session run offline through the rules, printed the way an
//! administrator asks "why was this rejected?": per stage, each rule, whether it
//! matched and on what, and the verdict.

use std::fmt::Write as _;
use std::net::IpAddr;

use super::subject::Subject;
use super::{Mode, RuleSet, apply};
use crate::envelope::{ClientInfo, Decision, Envelope, Facts, MessageView, Stage, Verdict};

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
        }
    }
}

/// The default body scan limit for `explain`, matching the session's default.
pub const DEFAULT_BODY_SCAN: usize = 64 * 1024;

/// Builds the [`MessageView`] of a raw message: header fields in order (unfolded),
/// the first `body_limit` bytes of the body, and the size with CRLF line ends.
/// Lines may end in CRLF or LF (files on disk usually have LF).
pub fn message_view(raw: &[u8], body_limit: usize) -> MessageView {
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut pos = 0;
    let mut body_start = raw.len();
    while pos < raw.len() {
        let end = raw[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(raw.len(), |i| pos + i);
        let next = (end + 1).min(raw.len());
        let mut line = &raw[pos..end];
        if let [rest @ .., b'\r'] = line {
            line = rest;
        }
        if line.is_empty() {
            body_start = next;
            break;
        }
        let text = String::from_utf8_lossy(line);
        if line[0] == b' ' || line[0] == b'\t' {
            if let Some((_, v)) = headers.last_mut() {
                v.push_str(&text);
            }
        } else if let Some((n, v)) = text.split_once(':') {
            headers.push((n.trim().to_owned(), v.trim_start().to_owned()));
        }
        pos = next;
    }
    for (_, v) in &mut headers {
        let t = v.trim_end().len();
        v.truncate(t);
    }
    let body = &raw[body_start.min(raw.len())..];
    let bare_lf = raw
        .iter()
        .enumerate()
        .filter(|&(i, &b)| b == b'\n' && (i == 0 || raw[i - 1] != b'\r'))
        .count();
    MessageView {
        headers,
        body_prefix: body[..body.len().min(body_limit)].to_vec(),
        size: (raw.len() + bare_lf) as u64,
    }
}

pub(super) fn explain_stage(rules: &RuleSet, facts: &Facts<'_>) -> Vec<String> {
    let s = Subject::new(facts);
    let mut out = Vec::new();
    let mut verdict = Verdict::continue_();
    let mut decided: Option<String> = None;
    let mut count = 0;
    for rule in rules.stage_rules(facts.stage) {
        count += 1;
        let head = format!(
            "  rule {} ({}, {}):",
            rule.name,
            rule.origin,
            rule.mode.as_str()
        );
        if let Some(by) = &decided {
            out.push(format!("{head} not evaluated (decided by {by})"));
            continue;
        }
        let at = out.len();
        out.push(String::new());
        let m = rule.cond.explain(&s, 2, &mut out);
        let what = if !m {
            "no match".to_owned()
        } else if rule.mode == Mode::Monitor {
            format!("MATCH, monitor only: would {}", rule.action)
        } else {
            let decisive = apply(rule, &s, count, &mut verdict);
            if let Decision::Check(p) = &verdict.decision {
                // Offline there is no store: show the check and go on as if it passed.
                let note = check_text(p);
                verdict.decision = Decision::Continue;
                verdict.rule = None;
                format!("MATCH -> {note}")
            } else {
                if decisive {
                    decided = Some(rule.name.to_string());
                }
                format!("MATCH -> {}", rule.action)
            }
        };
        out[at] = format!("{head} {what}");
    }
    if count == 0 {
        out.push("  (no rules at this stage)".into());
    }
    out.push(format!("  verdict: {}", verdict_text(&verdict)));
    for h in &verdict.add_headers {
        out.push(format!("  add header: {h}"));
    }
    out
}

fn verdict_text(v: &Verdict) -> String {
    let by = v
        .rule
        .as_deref()
        .map(|r| format!(" (rule {r})"))
        .unwrap_or_default();
    match &v.decision {
        Decision::Continue => "continue".into(),
        Decision::Accept => format!("accept{by}"),
        Decision::Reject(r) => format!("reject {r}{by}"),
        Decision::Tempfail(r) => format!("tempfail {r}{by}"),
        Decision::Check(p) => format!("{}{by}", check_text(p)),
    }
}

/// A pending store check as `explain` shows it (offline, the store is not asked).
fn check_text(p: &crate::checks::Pending) -> String {
    match &p.check {
        crate::checks::Check::Greylist(g) => format!(
            "greylist check, triplet {:?} (the store decides; explain assumes it passes)",
            g.triplet
        ),
        crate::checks::Check::RateLimit(r) => format!(
            "rate-limit check, key {:?} cost {} (the store decides; explain assumes it passes)",
            r.key, r.cost
        ),
    }
}

pub(super) fn explain_session(rules: &RuleSet, input: &ExplainInput<'_>) -> String {
    let mut out = String::new();
    let client = ClientInfo {
        ip: input.client_ip,
        port: 0,
        listener: "explain".into(),
        submission: false,
        tls: input.tls,
        auth_user: input.auth_user.map(str::to_owned),
    };
    let mut env = Envelope::default();
    let from = input.from.trim();
    let from = from
        .strip_prefix('<')
        .and_then(|f| f.strip_suffix('>'))
        .unwrap_or(from);
    let message = input
        .message
        .map(|m| message_view(m, input.body_scan_limit));
    let _ = writeln!(
        out,
        "rules: {} (hash {})",
        rules.rule_count(),
        rules.content_hash()
    );
    let _ = writeln!(out, "checks: {}", input.auth.summary());

    let run = |out: &mut String, stage: Stage, env: &Envelope, note: String| -> Decision {
        let facts = Facts {
            stage,
            client: &client,
            envelope: env,
            message: if stage == Stage::Data {
                message.as_ref()
            } else {
                None
            },
            auth: &input.auth,
        };
        let _ = writeln!(out, "\n== {stage}: {note}");
        for line in rules.explain(&facts) {
            let _ = writeln!(out, "{line}");
        }
        rules.evaluate(&facts).verdict.decision
    };

    let ends = |out: &mut String, d: &Decision, what: &str| -> bool {
        match d {
            Decision::Reject(_) | Decision::Tempfail(_) => {
                let _ = writeln!(out, "\nresult: {what} refused; the session goes no further");
                true
            }
            Decision::Accept => {
                let _ = writeln!(
                    out,
                    "\nresult: accepted by policy at {what}; no later rules run for the {}",
                    if what == "connect" || what == "helo" {
                        "session"
                    } else {
                        "transaction"
                    }
                );
                true
            }
            Decision::Continue | Decision::Check(_) => false,
        }
    };

    let d = run(
        &mut out,
        Stage::Connect,
        &env,
        format!("client_ip={} tls={}", input.client_ip, input.tls),
    );
    if ends(&mut out, &d, "connect") {
        return out;
    }
    env.helo = Some(input.helo.to_owned());
    let d = run(
        &mut out,
        Stage::Helo,
        &env,
        format!("helo={:?}", input.helo),
    );
    if ends(&mut out, &d, "helo") {
        return out;
    }
    env.sender = Some(from.to_owned());
    env.declared_size = message.as_ref().map(|m| m.size);
    let size_note = env
        .declared_size
        .map(|s| format!(" SIZE={s}"))
        .unwrap_or_default();
    let d = run(
        &mut out,
        Stage::Mail,
        &env,
        format!("sender=<{from}>{size_note}"),
    );
    if ends(&mut out, &d, "mail") {
        return out;
    }
    for rcpt in &input.to {
        env.current_recipient = Some(rcpt.clone());
        let d = run(&mut out, Stage::Rcpt, &env, format!("recipient=<{rcpt}>"));
        env.current_recipient = None;
        match d {
            Decision::Reject(r) | Decision::Tempfail(r) => {
                let _ = writeln!(out, "  -> recipient <{rcpt}> refused: {r}");
            }
            Decision::Accept => {
                env.recipients.push(rcpt.clone());
                let _ = writeln!(
                    out,
                    "\nresult: transaction accepted by policy at rcpt; later recipients and data are not checked"
                );
                return out;
            }
            Decision::Continue | Decision::Check(_) => env.recipients.push(rcpt.clone()),
        }
    }
    if env.recipients.is_empty() {
        let _ = writeln!(
            out,
            "\nresult: no recipient accepted; DATA would be refused"
        );
        return out;
    }
    if message.is_none() {
        let _ = writeln!(
            out,
            "\nresult: {} recipient(s) accepted; no message given, data stage not run",
            env.recipients.len()
        );
        return out;
    }
    let note = format!(
        "{} header fields, size={}, recipients={}",
        message.as_ref().map_or(0, |m| m.headers.len()),
        message.as_ref().map_or(0, |m| m.size),
        env.recipients.len()
    );
    let d = run(&mut out, Stage::Data, &env, note);
    let _ = match d {
        Decision::Reject(r) | Decision::Tempfail(r) => {
            writeln!(out, "\nresult: message refused: {r}")
        }
        Decision::Accept => writeln!(
            out,
            "\nresult: message accepted by policy; relayed upstream"
        ),
        Decision::Continue | Decision::Check(_) => {
            writeln!(out, "\nresult: message passes the rules; relayed upstream")
        }
    };
    out
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
        assert_eq!(m.size, raw.len() as u64 + 5);
    }
}
