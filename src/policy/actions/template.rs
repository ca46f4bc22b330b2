//! Reply and header templates: `{client_ip} {helo} {sender} {recipient}
//! {recipient_domain} {rule} {auth} {dnsbl_zone} {dnsbl_reason}`, parsed and checked at load, filled in per decision.
//! `{dnsbl_zone}` is the first listing zone's display name (`name`), never the queried
//! zone, which may hold an access key.
//!
//! Substituted values come from the client and may hold anything; the reply text is
//! made safe by [`crate::reply::Reply`] (control characters become spaces) and header
//! values by [`sanitize`], so no value can add a reply line or a header of its own.

use std::fmt;

use crate::policy::subject::Subject;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Var {
    ClientIp,
    Helo,
    Sender,
    Recipient,
    RecipientDomain,
    Rule,
    Auth,
    DnsblZone,
    DnsblReason,
}

const VARS: &[(&str, Var)] = &[
    ("client_ip", Var::ClientIp),
    ("helo", Var::Helo),
    ("sender", Var::Sender),
    ("recipient", Var::Recipient),
    ("recipient_domain", Var::RecipientDomain),
    ("rule", Var::Rule),
    ("auth", Var::Auth),
    ("dnsbl_zone", Var::DnsblZone),
    ("dnsbl_reason", Var::DnsblReason),
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Lit(String),
    Var(Var),
}

/// A parsed template. `{{` and `}}` stand for literal braces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template(Vec<Piece>);

impl Template {
    pub fn parse(s: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut chars = s.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|x| x.1) == Some('{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek().map(|x| x.1) == Some('}') => {
                    chars.next();
                    lit.push('}');
                }
                '{' => {
                    let rest = &s[i + 1..];
                    let Some(end) = rest.find('}') else {
                        return Err(format!("unclosed `{{` at offset {i}"));
                    };
                    let name = &rest[..end];
                    let Some((_, var)) = VARS.iter().find(|(n, _)| *n == name) else {
                        let known: Vec<String> =
                            VARS.iter().map(|(n, _)| format!("{{{n}}}")).collect();
                        return Err(format!(
                            "unknown placeholder `{{{name}}}`, expected one of {}",
                            known.join(" ")
                        ));
                    };
                    if !lit.is_empty() {
                        pieces.push(Piece::Lit(std::mem::take(&mut lit)));
                    }
                    pieces.push(Piece::Var(*var));
                    for _ in 0..=name.chars().count() {
                        chars.next();
                    }
                }
                '}' => {
                    return Err(format!(
                        "unmatched `}}` at offset {i} (write `}}}}` for a brace)"
                    ));
                }
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            pieces.push(Piece::Lit(lit));
        }
        Ok(Template(pieces))
    }

    /// Fills in the placeholders. Values not known at the stage (no recipient at `mail`)
    /// are empty; the null sender is `<>`. At `data`, `{recipient}` is the first
    /// recipient and `{recipient_domain}` the distinct domains joined by commas.
    pub fn render(&self, s: &Subject<'_>, rule: &str) -> String {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Piece::Lit(l) => out.push_str(l),
                Piece::Var(v) => match v {
                    Var::ClientIp => out.push_str(&s.client_ip.to_string()),
                    Var::Helo => out.push_str(s.helo.as_ref().map_or("", |t| t.orig)),
                    Var::Sender => match &s.sender {
                        Some(t) if t.orig.is_empty() => out.push_str("<>"),
                        Some(t) => out.push_str(t.orig),
                        None => {}
                    },
                    Var::Recipient => {
                        out.push_str(s.recipients.first().map_or("", |t| t.orig));
                    }
                    Var::RecipientDomain => {
                        let mut seen: Vec<&str> = Vec::new();
                        for d in &s.recipient_domains {
                            if !seen.contains(&d.lower.as_ref()) {
                                seen.push(d.lower.as_ref());
                            }
                        }
                        out.push_str(&seen.join(","));
                    }
                    Var::Rule => out.push_str(rule),
                    Var::Auth => out.push_str(&s.facts.auth.summary()),
                    Var::DnsblZone | Var::DnsblReason => {
                        // The first listing zone: the one a `dnsbl` reply usually names.
                        if let Some(hit) = s.facts.auth.dnsbl.as_ref().and_then(|d| d.hits.first())
                        {
                            match v {
                                Var::DnsblZone => out.push_str(&hit.zone),
                                _ => out.push_str(hit.reason.as_deref().unwrap_or(&hit.zone)),
                            }
                        }
                    }
                },
            }
        }
        let trimmed = out.trim_end().len();
        out.truncate(trimmed);
        out
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.0 {
            match p {
                Piece::Lit(l) => f.write_str(&l.replace('{', "{{").replace('}', "}}"))?,
                Piece::Var(v) => {
                    let name = VARS.iter().find(|(_, x)| x == v).map_or("?", |(n, _)| n);
                    write!(f, "{{{name}}}")?;
                }
            }
        }
        Ok(())
    }
}

/// Replaces control characters (CR, LF, NUL, …) with spaces.
pub(crate) fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_placeholders_and_escapes() {
        let t = Template::parse("for {recipient_domain} by {rule} {{x}}").unwrap();
        assert_eq!(t.to_string(), "for {recipient_domain} by {rule} {{x}}");
        assert_eq!(
            Template::parse("x {nope}").unwrap_err(),
            "unknown placeholder `{nope}`, expected one of {client_ip} {helo} {sender} {recipient} {recipient_domain} {rule} {auth} {dnsbl_zone} {dnsbl_reason}"
        );
        assert!(Template::parse("x {rule").is_err());
        assert!(Template::parse("x }").is_err());
    }
}
