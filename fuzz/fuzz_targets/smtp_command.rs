//! MAIL FROM / RCPT TO lines and the address parser.
//!
//! Properties: a command that parses renders — as the session sends it upstream
//! (`Transaction::sender_text` with the MAIL parameters, `Recipient::upstream_line`) —
//! into one line without CR, LF or NUL that parses back to the same path and the same
//! parameters; an address that parses displays as text that parses to the same address,
//! and that text is a fixed point.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mxguard::envelope::AuthFacts;
use mxguard::smtp::{Address, MailCommand, RcptCommand, parse_mail, parse_rcpt};
use mxguard::transaction::{Recipient, Transaction};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The input as a whole line, and as the path of each command (so most inputs
    // reach the address grammar instead of dying on the verb).
    for line in [
        text.to_owned(),
        format!("MAIL FROM:<{text}"),
        format!("RCPT TO:<{text}"),
    ] {
        if let Ok(m) = parse_mail(&line) {
            check_mail(&m);
        }
        if let Ok(r) = parse_rcpt(&line) {
            check_rcpt(&r);
        }
    }
    if let Ok(a) = Address::parse(text) {
        let shown = a.to_string();
        let again = Address::parse(&shown)
            .unwrap_or_else(|e| panic!("{a:?} displayed as {shown:?}, which fails: {e}"));
        assert_eq!(again, a, "{shown:?}");
        assert_eq!(again.to_string(), shown, "display is not a fixed point");
    }
});

fn assert_one_line(line: &str) {
    assert!(
        !line.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)),
        "line break or NUL in {line:?}"
    );
}

fn check_mail(m: &MailCommand) {
    let tx = Transaction::new(m.from.clone(), m.params.clone(), &AuthFacts::default());
    assert_eq!(tx.sender_text, m.from.to_string());
    // What the upstream gets (the relay adds only SIZE/BODY/SMTPUTF8/RET/ENVID, each as
    // `to_strings` writes it), plus AUTH= so that every parameter is checked.
    let mut line = format!("MAIL FROM:<{}>", tx.sender_text);
    for p in m.params.to_strings() {
        line.push(' ');
        line.push_str(&p);
    }
    if let Some(auth) = &m.params.auth {
        line.push_str(&format!(" AUTH={auth}"));
    }
    assert_one_line(&line);
    let again = parse_mail(&line).unwrap_or_else(|e| panic!("{m:?} rendered as {line:?}: {e}"));
    assert_eq!(&again, m, "{line:?}");
}

fn check_rcpt(r: &RcptCommand) {
    let rcpt = Recipient::new(r.to.clone(), r.params.clone());
    assert_eq!(rcpt.text, r.to.to_string());
    let wire = rcpt.upstream_line();
    let line = wire
        .strip_suffix("\r\n")
        .unwrap_or_else(|| panic!("{wire:?} does not end in CRLF"));
    assert_one_line(line);
    let again = parse_rcpt(line).unwrap_or_else(|e| panic!("{r:?} rendered as {line:?}: {e}"));
    assert_eq!(again.to, r.to, "{line:?}");
    assert_eq!(again.params, r.params, "{line:?}");
}
