//! SPF records (`checks::spf::Record::parse` and its `Display`) and the macro strings of
//! explanation texts (`MacroString::parse` in `Context::Explanation`).
//!
//! Properties: no panic; a record that parses displays as text that parses to an equal
//! record, and that text is a fixed point; the same for an explanation's macro string;
//! expanding any parsed macro string keeps within the documented bounds (a query name
//! of at most 2 × KEEP bytes whose end is the end of the full expansion, an explanation
//! of at most KEEP bytes that starts the full expansion).
#![no_main]

use std::net::{IpAddr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use mxguard::checks::spf::Record;
use mxguard::checks::spf::macros::{Context, KEEP, MacroEnv, MacroString, query_name};
use mxguard::checks::spf::record::Term;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // As given, and behind `v=spf1 ` so that most inputs reach the term grammar.
    for record in [text.to_owned(), format!("v=spf1 {text}")] {
        if let Ok(r) = Record::parse(&record) {
            let shown = r.to_string();
            let again = Record::parse(&shown)
                .unwrap_or_else(|e| panic!("{record:?} displayed as {shown:?}, which fails: {e}"));
            assert_eq!(again, r, "{record:?} displayed as {shown:?}");
            assert_eq!(again.to_string(), shown, "display is not a fixed point");
            for t in &r.terms {
                match t {
                    Term::Redirect(d) | Term::Explanation(d) => check_expansion(&d.0),
                    Term::Unknown { value, .. } => check_expansion(value),
                    Term::Directive(_) => {}
                }
            }
        }
    }
    if let Ok(m) = MacroString::parse(text, Context::Explanation) {
        let shown = m.to_string();
        let again = MacroString::parse(&shown, Context::Explanation)
            .unwrap_or_else(|e| panic!("{text:?} displayed as {shown:?}, which fails: {e}"));
        assert_eq!(again, m, "{shown:?}");
        assert_eq!(again.to_string(), shown);
        check_expansion(&m);
    }
});

fn check_expansion(m: &MacroString) {
    let env = MacroEnv {
        local: "strong-bad",
        sender_domain: "email.example.com",
        domain: "email.example.com",
        ip: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xcb01)),
        helo: "mx.example.org",
        ptr: Some("mx.example.org"),
        receiver: "receiver.example.net",
        timestamp: 1_700_000_000,
    };
    let full = m.expand(&env);
    let name = m.expand_name(&env);
    assert!(name.len() <= 2 * KEEP, "query name of {} bytes", name.len());
    assert!(
        full.ends_with(&name),
        "the query name is not the end of the expansion"
    );
    if let Some(q) = query_name(&name) {
        assert!(q.len() <= 253 && name.contains(q));
    }
    let explanation = m.expand_text(&env);
    assert!(
        explanation.len() <= KEEP,
        "explanation of {} bytes",
        explanation.len()
    );
    assert!(full.starts_with(&explanation));
}
