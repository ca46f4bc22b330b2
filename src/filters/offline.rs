//! `mxguard explain --filters`: the configured filters asked about a message file, as a
//! session would ask them (the same chain, events and edits), and what each said.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use super::Filter;
use super::chain::{ClientFacts, FilterAction, FilterChain, MessageOutcome, Verdict};
use crate::envelope::FilterFact;
use crate::message::{Edits, HeaderIndex, rewrite};

/// The session `explain` pretends to be.
#[derive(Debug, Clone)]
pub struct OfflineSession<'a> {
    pub listener: &'a str,
    pub client_ip: IpAddr,
    pub helo: &'a str,
    pub hostname: &'a str,
    pub from: &'a str,
    pub to: &'a [String],
    pub auth_user: Option<&'a str>,
}

/// What the filters said, for the report and the `data` rules.
#[derive(Debug, Default)]
pub struct OfflineReport {
    pub facts: Vec<FilterFact>,
    pub text: String,
}

/// Runs the filters that apply to `session` on `message` (CRLF line ends) and reports
/// each verdict, the reply it gives, and the message's header after their edits.
/// `taken_over` says which filters a rule decides for.
pub async fn run(
    filters: &[Filter],
    session: &OfflineSession<'_>,
    message: &[u8],
    taken_over: impl Fn(&Filter) -> bool,
) -> OfflineReport {
    let mut report = OfflineReport::default();
    let client = ClientFacts {
        session_id: "explain".into(),
        hostname: session.hostname.to_owned(),
        listener: session.listener.to_owned(),
        daemon_name: session.hostname.to_owned(),
        addr: Some(SocketAddr::new(session.client_ip, 0)),
        helo: session.helo.to_owned(),
        auth_user: session.auth_user.map(str::to_owned),
        ..ClientFacts::default()
    };
    let Some(mut chain) = FilterChain::for_session(
        filters,
        session.listener,
        session.client_ip,
        session.auth_user.is_some(),
        || client,
    ) else {
        let _ = writeln!(
            report.text,
            "filters: none applies to listener {} and client {}",
            session.listener, session.client_ip
        );
        return report;
    };
    let _ = writeln!(report.text, "filters: {}", chain.names().join(", "));
    if let Some(v) = chain.mail(session.from, &[]).await {
        stopped(&mut report.text, "mail", &v);
        chain.quit().await;
        return report;
    }
    for rcpt in session.to {
        if let Some(v) = chain.rcpt(rcpt, &[]).await {
            stopped(&mut report.text, "rcpt", &v);
        }
    }
    if let Some(v) = chain.data().await {
        stopped(&mut report.text, "data", &v);
        chain.quit().await;
        return report;
    }
    let index = HeaderIndex::build(message);
    let mut edits = Edits::new();
    let outcome = chain
        .end_of_message(message, &index, &mut edits, &taken_over)
        .await;
    for call in chain.take_calls() {
        if let Some(kind) = call.error {
            let _ = writeln!(
                report.text,
                "  {} at {}: failed ({kind}) after {:?}",
                call.filter, call.stage, call.elapsed
            );
        }
    }
    chain.quit().await;
    describe(&mut report.text, filters, &outcome, &taken_over);
    describe_edits(&mut report.text, message, &index, &edits);
    report.facts = outcome.facts;
    report
}

fn stopped(out: &mut String, stage: &str, v: &Verdict) {
    let _ = writeln!(out, "  {} at {stage}: {}", v.filter, action_text(&v.action));
}

fn action_text(a: &FilterAction) -> String {
    match a {
        FilterAction::Refuse(r) => format!("refuses: {r}"),
        FilterAction::Close(r) => format!("closes the session: {r}"),
        FilterAction::Drop => "accepts and drops the message (on_discard: drop)".into(),
    }
}

fn describe(
    out: &mut String,
    filters: &[Filter],
    outcome: &MessageOutcome,
    taken_over: &impl Fn(&Filter) -> bool,
) {
    for f in &outcome.facts {
        let mut line = format!("  {}: {}", f.name, f.result.as_str());
        if let Some(a) = &f.action {
            let _ = write!(line, " (action {a:?})");
        }
        if let Some(s) = f.score {
            let _ = write!(line, " score={s:.2}");
        }
        if !f.symbols.is_empty() {
            let _ = write!(line, " symbols=[{}]", f.symbols.join(","));
        }
        if let Some(r) = &f.reply {
            let _ = write!(line, " reply \"{r}\"");
        }
        if let Some(r) = &f.reason {
            let _ = write!(line, " reason {r:?}");
        }
        let filter = filters.iter().find(|c| c.name() == f.name);
        let who = match filter {
            Some(c) if c.mode == super::FilterMode::Monitor => " [monitor: reported only]",
            Some(c) if taken_over(c) => " [a rule tests it: the rules decide]",
            _ => "",
        };
        let _ = writeln!(out, "{line}{who}");
    }
    match &outcome.verdict {
        Some(v) => {
            let _ = writeln!(out, "  => {} {}", v.filter, action_text(&v.action));
        }
        None => {
            let _ = writeln!(out, "  => no filter's own verdict stops the message");
        }
    }
    for q in &outcome.quarantine {
        let _ = writeln!(out, "  quarantine: {q} (X-Mxguard-Quarantine added)");
    }
}

fn describe_edits(out: &mut String, message: &[u8], index: &HeaderIndex, edits: &Edits) {
    if edits.is_empty() {
        let _ = writeln!(out, "  modifications: none");
        return;
    }
    let _ = writeln!(out, "  modifications: {}", edits.len());
    let m = rewrite(index, edits.clone());
    let _ = writeln!(out, "  header after the filters:");
    for line in String::from_utf8_lossy(&m.header).lines() {
        let _ = writeln!(out, "    {line}");
    }
    if edits.body().is_some() {
        let _ = writeln!(
            out,
            "  body replaced ({} bytes, was {})",
            edits.body().map_or(0, <[u8]>::len),
            message.len() - index.header_len()
        );
    }
}
