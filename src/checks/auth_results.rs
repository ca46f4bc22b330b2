//! The Authentication-Results header (RFC 8601) we add, and the removal of any incoming
//! one that claims to be ours (RFC 8601 §5: a forged header under our authserv-id would
//! let a sender vouch for itself to everything downstream).

use std::net::IpAddr;

use crate::envelope::{AuthFacts, AuthStatus, RdnsStatus};
use crate::message::HeaderIndex;

/// `Authentication-Results: <id>; …` with one CRLF-TAB folded line per result, ending
/// in CRLF. Only checks that ran appear; with none, the result is `none`.
pub fn header(
    authserv_id: &str,
    facts: &AuthFacts,
    ip: IpAddr,
    helo: &str,
    sender: &str,
) -> String {
    let mut parts: Vec<String> = Vec::new();
    if let Some(r) = &facts.rdns {
        let st = match r.status {
            RdnsStatus::Pass => "pass",
            RdnsStatus::Mismatch | RdnsStatus::None => "fail",
            RdnsStatus::TempError => "temperror",
        };
        parts.push(format!(
            "iprev={st} policy.iprev={}",
            crate::config::canonical_ip(ip)
        ));
    }
    if let Some(s) = &facts.spf {
        let from = if sender.is_empty() {
            format!("postmaster@{helo}")
        } else {
            sender.to_owned()
        };
        parts.push(format!("spf={} smtp.mailfrom={}", s.status, pvalue(&from)));
    }
    if let Some(s) = &facts.spf_helo
        && s.status != AuthStatus::None
    {
        parts.push(format!("spf={} smtp.helo={}", s.status, pvalue(helo)));
    }
    if let Some(sigs) = &facts.dkim {
        if sigs.is_empty() {
            parts.push("dkim=none".into());
        }
        for g in sigs {
            let mut p = format!("dkim={}", g.status);
            if let Some(r) = &g.reason {
                p.push_str(&format!(" reason={}", quoted(r)));
            }
            // A malformed signature may lack some of these: name what it has.
            for (prop, v) in [
                ("header.d", &g.domain),
                ("header.s", &g.selector),
                ("header.a", &g.algorithm),
            ] {
                if !v.is_empty() {
                    p.push_str(&format!(" {prop}={}", pvalue(v)));
                }
            }
            parts.push(p);
        }
    }
    if let Some(d) = &facts.dmarc {
        let mut p = format!("dmarc={}", d.status);
        if let Some(r) = d.reason {
            p.push_str(&format!(" reason={}", quoted(r.describe())));
        }
        if !d.domain.is_empty() {
            p.push_str(&format!(" header.from={}", pvalue(&d.domain)));
        }
        p.push_str(&format!(" policy.dmarc={}", d.policy));
        parts.push(p);
    }
    if let Some(a) = facts.arc {
        parts.push(format!("arc={a}"));
    }
    let mut h = format!("Authentication-Results: {}", pvalue(authserv_id));
    if parts.is_empty() {
        h.push_str("; none");
    }
    for p in parts {
        h.push_str(";\r\n\t");
        h.push_str(&p);
    }
    h.push_str("\r\n");
    h
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_graphic() && !"()<>@,;:\\\"/[]?=".contains(c)
}

fn is_dot_atom(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c))
        })
}

/// A pvalue (RFC 8601 §2.2): a token, `local@domain` as written, else a quoted string.
pub fn pvalue(v: &str) -> String {
    if !v.is_empty() && v.chars().all(is_token_char) {
        return v.to_owned();
    }
    if let Some((l, d)) = v.rsplit_once('@')
        && (l.is_empty() || is_dot_atom(l))
        && is_dot_atom(d)
    {
        return v.to_owned();
    }
    quoted(v)
}

/// A quoted-string: `"` and `\` escaped, control characters (CR, LF…) dropped, so a
/// value can never end the header or start another.
pub fn quoted(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    out.push('"');
    for c in v.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The original fields (their positions in `index`) that are Authentication-Results
/// claiming our authserv-id `ours` (ASCII case ignored): each becomes an
/// [`Edit::RemoveOriginal`](crate::message::Edit::RemoveOriginal).
///
/// The name is read more loosely than [`Field::is_named`](crate::message::Field::is_named):
/// whatever precedes the first colon anywhere in the field, trimmed, so that a forgery
/// behind leading white space or with a folded name is removed too.
pub fn forged_fields(index: &HeaderIndex, ours: &str) -> Vec<usize> {
    index
        .fields()
        .filter(|f| {
            let raw = f.raw();
            let Some(colon) = memchr::memchr(b':', raw) else {
                return false;
            };
            // Shorter than the name, even before trimming: not it (most fields).
            if colon < "Authentication-Results".len() {
                return false;
            }
            String::from_utf8_lossy(&raw[..colon])
                .trim()
                .eq_ignore_ascii_case("Authentication-Results")
                && authserv_id(&raw[colon + 1..]).is_some_and(|id| id.eq_ignore_ascii_case(ours))
        })
        .map(|f| f.index())
        .collect()
}

/// The authserv-id of an Authentication-Results value: its first word, after
/// whitespace and comments, before `;` or a version number.
fn authserv_id(value: &[u8]) -> Option<String> {
    let v = String::from_utf8_lossy(value);
    let mut s = String::new();
    let mut depth = 0;
    for c in v.chars() {
        match c {
            '(' => depth += 1,
            ')' if depth > 0 => depth -= 1,
            _ if depth > 0 => {}
            ';' => break,
            c if c.is_whitespace() => {
                if !s.is_empty() {
                    break;
                }
            }
            c => s.push(c),
        }
    }
    let s = s.trim_matches('"').to_owned();
    (!s.is_empty()).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvalues_are_quoted_when_needed() {
        assert_eq!(pvalue("example.com"), "example.com");
        assert_eq!(pvalue("alice@example.com"), "alice@example.com");
        assert_eq!(pvalue("a b@x"), "\"a b@x\"");
        assert_eq!(pvalue("x;y\r\nZ: 1"), "\"x;y  Z: 1\"");
        assert_eq!(quoted("say \"hi\""), "\"say \\\"hi\\\"\"");
    }

    #[test]
    fn each_signature_and_the_dmarc_reason_are_reported() {
        use crate::envelope::{DkimSignatureFact, DmarcFact, DmarcReason};
        let sig = |status, d: &str, s: &str, a: &str, reason: Option<&str>| DkimSignatureFact {
            status,
            domain: d.into(),
            selector: s.into(),
            algorithm: a.into(),
            reason: reason.map(str::to_owned),
        };
        let facts = AuthFacts {
            dkim: Some(vec![
                sig(
                    AuthStatus::PermError,
                    "a.example",
                    "s1",
                    "rsa-sha1",
                    Some("rsa-sha1 is not acceptable (RFC 8301)"),
                ),
                sig(
                    AuthStatus::PermError,
                    "a.example",
                    "",
                    "",
                    Some("missing s= tag (RFC 6376 section 3.5)"),
                ),
                sig(AuthStatus::Pass, "b.example", "s2", "ed25519-sha256", None),
            ]),
            dmarc: Some(DmarcFact {
                status: AuthStatus::Fail,
                domain: "a.example".into(),
                policy: "reject",
                reason: Some(DmarcReason::MultipleFrom),
            }),
            ..AuthFacts::default()
        };
        let h = header("mx.test", &facts, "192.0.2.1".parse().unwrap(), "h", "s@x");
        assert_eq!(
            h,
            "Authentication-Results: mx.test;\r\n\t\
             dkim=permerror reason=\"rsa-sha1 is not acceptable (RFC 8301)\" header.d=a.example header.s=s1 header.a=rsa-sha1;\r\n\t\
             dkim=permerror reason=\"missing s= tag (RFC 6376 section 3.5)\" header.d=a.example;\r\n\t\
             dkim=pass header.d=b.example header.s=s2 header.a=ed25519-sha256;\r\n\t\
             dmarc=fail reason=\"more than one From header field\" header.from=a.example policy.dmarc=reject\r\n"
        );
    }

    #[test]
    fn finds_only_fields_claiming_our_id() {
        let head = b"Received: x\r\nAuthentication-Results: mx.test;\r\n\tspf=pass\r\nauthentication-results: (c) MX.TEST 1; dkim=pass\r\nAuthentication-Results: other.example; spf=fail\r\nSubject: s\r\n\r\nbody Authentication-Results: mx.test\r\n";
        let index = HeaderIndex::build(head);
        assert_eq!(forged_fields(&index, "mx.test"), [1, 2]);
        let r: Vec<_> = [1, 2]
            .iter()
            .map(|&i| index.field(i).unwrap().range())
            .collect();
        assert!(head[r[0].clone()].starts_with(b"Authentication-Results: mx.test;"));
        assert!(head[r[0].clone()].ends_with(b"spf=pass\r\n"));
        assert!(head[r[1].clone()].starts_with(b"authentication-results: (c) MX.TEST"));
    }

    #[test]
    fn forgeries_in_odd_shapes_are_found() {
        let cases: &[(&[u8], &[usize])] = &[
            // Behind leading white space on the first line (it would otherwise follow
            // our own fields as a continuation).
            (b" Authentication-Results: mx.test; dkim=pass\r\nX: 1\r\n\r\n", &[0]),
            // White space before the colon, a quoted id.
            (b"X: 1\r\nAuthentication-Results :\t\"mx.test\"; spf=pass\r\n\r\n", &[1]),
            // The name folded before its colon.
            (b"Authentication-Results\r\n : mx.test; spf=pass\r\n\r\n", &[0]),
            // The last line without its CRLF.
            (b"X: 1\r\nAuthentication-Results: mx.test", &[1]),
            // Not ours, not an A-R, or in the body.
            (b"Authentication-Results: mx.test.evil; spf=pass\r\nX-Authentication-Results: mx.test\r\n\r\nAuthentication-Results: mx.test\r\n", &[]),
        ];
        for (head, want) in cases {
            let index = HeaderIndex::build(head);
            assert_eq!(
                forged_fields(&index, "mx.test"),
                *want,
                "{}",
                String::from_utf8_lossy(head)
            );
        }
    }
}
