//! Sendmail 8.17 as the upstream: no XCLIENT, no XFORWARD, no SMTPUTF8, no CHUNKING. The
//! core delivery, rejection and fault cases run against it: mxguard adds its own
//! `Received:` header for the client hop, advertises only what Sendmail supports, and
//! passes Sendmail's replies through.

mod support;

use std::time::Duration;

use support::client::{RawClient, dot_stuff};
use support::mxguard::{MxGuard, MxOpts};
use support::postfix::Delivered;
use support::sendmail::{self, Sendmail};

fn setup() -> Option<(Sendmail, MxGuard)> {
    if !support::require(sendmail::TOOLS, true) {
        return None;
    }
    let sm = Sendmail::start();
    let mx = MxGuard::start(MxOpts::new(sm.addr));
    Some((sm, mx))
}

/// A delivered message without its first header field (and its continuation lines).
fn strip_first_header(eml: &[u8]) -> (&[u8], &[u8]) {
    let mut i = 0;
    loop {
        i += eml[i..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|p| p + 1)
            .unwrap_or(eml.len() - i);
        if i >= eml.len() || !(eml[i] == b' ' || eml[i] == b'\t') {
            return (&eml[..i], &eml[i..]);
        }
    }
}

/// Sendmail's own Received header, then ours for the client hop, then the message.
fn split_trace(d: &Delivered) -> (String, String, Vec<u8>) {
    let (theirs, rest) = strip_first_header(&d.eml);
    let (ours, body) = strip_first_header(rest);
    (
        String::from_utf8_lossy(theirs).into_owned(),
        String::from_utf8_lossy(ours).into_owned(),
        body.to_vec(),
    )
}

#[test]
fn ehlo_offers_only_what_sendmail_supports() {
    let Some((_sm, mx)) = setup() else { return };
    let mut c = RawClient::connect(mx.addr);
    let e = c.ehlo("client.example");
    let has = |k: &str| {
        e.lines
            .iter()
            .any(|l| l.to_ascii_uppercase().starts_with(k))
    };
    assert!(!has("SMTPUTF8"), "{e}");
    assert!(
        !has("CHUNKING") && !has("XCLIENT") && !has("XFORWARD"),
        "{e}"
    );
    assert!(
        has("PIPELINING") && has("8BITMIME") && has("SIZE") && has("ENHANCEDSTATUSCODES"),
        "{e}"
    );
    let r = c.cmd("MAIL FROM:<a@example.org> SMTPUTF8");
    assert!(r.is("555 5.5.4"), "{r}");
}

#[test]
fn message_arrives_intact_with_our_received_header_for_the_client() {
    let Some((sm, mx)) = setup() else { return };
    let msg = b"From: a@example.org\r\nTo: alice@test.example\r\nSubject: via sendmail\r\nMessage-Id: <1@example.org>\r\nDate: Mon, 30 Nov 2026 00:00:00 +0000\r\n\r\n.leading dot\r\n..two dots\r\ntrailing space \r\n\ttab\r\nend\r\n";
    let mut c = RawClient::connect_from(mx.addr, Some("127.0.0.2")).unwrap();
    assert_eq!(c.reply().code, 220);
    c.ehlo("client.example");
    let codes: Vec<u16> = c
        .transaction("a@example.org", &["alice@test.example"], &dot_stuff(msg))
        .iter()
        .map(|r| r.code)
        .collect();
    assert_eq!(codes, [250, 250, 354, 250]);
    let got = sm.wait_delivered(1, Duration::from_secs(20));
    let (theirs, ours, body) = split_trace(&got[0]);
    assert!(theirs.starts_with("Received: from "), "{theirs}");
    assert!(
        ours.starts_with("Received: from client.example ([127.0.0.2])\n\tby mx.proxy.test (mxguard) with ESMTP id "),
        "{ours}"
    );
    support::assert_bytes_eq(
        &body,
        &support::crlf_to_lf(msg),
        "message body after the trace headers",
    );
}

#[test]
fn sendmail_rejections_pass_through_verbatim() {
    let Some((sm, mx)) = setup() else { return };
    let mut c = RawClient::connect(mx.addr);
    c.ehlo("client.example");
    let r = c.cmd("MAIL FROM:<reject-mail@any.example>");
    assert!(r.is("550 5.7.1"), "{r}");
    assert!(
        r.raw().contains("upstream rejects this sender at MAIL"),
        "{r}"
    );
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").code, 250);
    let r = c.cmd("RCPT TO:<nosuch@test.example>");
    assert!(r.is("550 5.1.1"), "{r}");
    assert!(r.raw().contains("User unknown"), "{r}");
    let r = c.cmd("RCPT TO:<tempfail@test.example>");
    assert!(r.is("450 4.2.0"), "{r}");
    assert!(c.cmd("DATA").is("554 5.5.1"), "no valid recipients");
    assert!(sm.delivered().is_empty());
}

#[test]
fn smuggling_and_bare_lf_never_reach_sendmail() {
    let Some((sm, mx)) = setup() else { return };
    let mut c = RawClient::connect(mx.addr);
    c.ehlo("client.example");
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<bob@test.example>").code, 250);
    assert_eq!(c.cmd("DATA").code, 354);
    c.send(b"Subject: smuggle\r\n\r\nx\n.\nMAIL FROM:<evil@example.net>\r\nRCPT TO:<carol@test.example>\r\nDATA\r\nSubject: smuggled\r\n\r\n.\r\n");
    let r = c.reply();
    assert!(r.is("550 5.6.0"), "{r}");
    assert_eq!(c.cmd("QUIT").code, 221);
    drop(mx);
    assert!(sm.delivered().is_empty(), "nothing may reach Sendmail");
    assert!(!sm.trace().contains("evil@example.net"), "{}", sm.trace());
}

#[test]
fn sendmail_gone_means_4xx_never_250() {
    let Some((sm, mx)) = setup() else { return };
    drop(sm);
    let mut c = RawClient::connect(mx.addr);
    c.ehlo("client.example");
    let r = c.cmd("MAIL FROM:<a@example.org>");
    assert!(r.is("451 4.4.1"), "{r}");
}
