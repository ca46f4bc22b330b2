//! Checks the test helpers themselves against the real components (no mxguard needed):
//! the private Postfix delivers byte for byte and trusts XCLIENT only from 127.0.0.1, and it
//! is vulnerable to smuggling (so the smuggling tests can see a smuggled message), the fake
//! upstream records messages, smtp-sink accepts.

mod support;

use std::time::Duration;

use support::client::{CLIENT_IP, RawClient, dot_stuff, smtplib_send, swaks_send};
use support::fake_upstream::{FakeUpstream, Script};
use support::postfix::Postfix;

fn sample_message(subject: &str) -> Vec<u8> {
    format!(
        "From: Sender <sender@example.org>\r\nTo: alice@test.example\r\nSubject: {subject}\r\nDate: Sun, 29 Nov 2026 12:00:00 +0000\r\nMessage-ID: <{subject}@example.org>\r\n\r\nhello\r\n.dot line\r\n..two dots\r\n.\r\nlast line\r\n"
    )
    .into_bytes()
}

#[test]
fn postfix_delivers_byte_identical_and_records_client() {
    if !support::require(support::postfix::TOOLS, true) {
        return;
    }
    let pf = Postfix::start();
    let msg = sample_message("direct");
    let mut c = RawClient::connect(pf.addr);
    c.ehlo("client.example");
    let r = c.transaction(
        "sender@example.org",
        &["alice@test.example"],
        &dot_stuff(&msg),
    );
    assert_eq!(r.last().unwrap().code, 250, "{r:?}");
    // unknown user
    let r = c.cmd("MAIL FROM:<sender@example.org>");
    assert_eq!(r.code, 250);
    let r = c.cmd("RCPT TO:<nobody@test.example>");
    assert!(r.is("550 5.1.1"), "{r}");
    c.cmd("QUIT");
    let d = pf.wait_delivered(1, Duration::from_secs(10));
    assert_eq!(
        d[0].without_first_received(),
        support::crlf_to_lf(&msg).as_slice()
    );
    assert_eq!(d[0].env("client_address"), CLIENT_IP);
    assert!(
        d[0].first_received().contains("[127.0.0.2]"),
        "{}",
        d[0].first_received()
    );
}

#[test]
fn postfix_xclient_only_from_127_0_0_1() {
    if !support::require(support::postfix::TOOLS, true) {
        return;
    }
    let pf = Postfix::start();
    // from 127.0.0.2: refused
    let mut c = RawClient::connect(pf.addr);
    c.ehlo("client.example");
    let r = c.cmd("XCLIENT ADDR=203.0.113.7");
    assert_eq!(
        r.code / 100,
        5,
        "XCLIENT from a client must be refused: {r}"
    );
    // from 127.0.0.1: accepted, new greeting
    let mut c = RawClient::connect_from(pf.addr, Some("127.0.0.1")).unwrap();
    assert_eq!(c.reply().code, 220);
    c.ehlo("proxy.test");
    let r = c.cmd("XCLIENT ADDR=203.0.113.7 NAME=[UNAVAILABLE] HELO=client.example PROTO=ESMTP");
    assert_eq!(r.code, 220, "{r}");
    c.ehlo("client.example");
    let r = c.transaction(
        "a@example.org",
        &["bob@test.example"],
        b"Subject: x\r\n\r\nx\r\n",
    );
    assert_eq!(r.last().unwrap().code, 250, "{r:?}");
    let d = pf.wait_delivered(1, Duration::from_secs(10));
    assert_eq!(d[0].env("client_address"), "203.0.113.7");
}

#[test]
fn postfix_is_vulnerable_to_smuggling_on_purpose() {
    if !support::require(support::postfix::TOOLS, true) {
        return;
    }
    let pf = Postfix::start();
    let mut c = RawClient::connect(pf.addr);
    c.ehlo("client.example");
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<alice@test.example>").code, 250);
    assert_eq!(c.cmd("DATA").code, 354);
    c.send(b"Subject: outer\r\n\r\nouter\n.\nMAIL FROM:<smuggler@example.org>\r\nRCPT TO:<bob@test.example>\r\nDATA\r\nSubject: SMUGGLED\r\n\r\nx\r\n.\r\nQUIT\r\n");
    while c.reply_within(Duration::from_secs(5)).is_some() {}
    let d = pf.settle(Duration::from_secs(10));
    assert_eq!(
        d.len(),
        2,
        "the private Postfix must accept the smuggled message, else the smuggling tests prove nothing"
    );
    assert!(d.iter().any(|m| m.env("recipient") == "bob@test.example"));
}

#[test]
fn real_clients_against_postfix() {
    if !support::require(&["postfix", "python3", "swaks"], true) {
        return;
    }
    let pf = Postfix::start();
    let dir = support::tempdir("mxg-msg.");
    let f = dir.path().join("m.eml");
    std::fs::write(&f, sample_message("smtplib")).unwrap();
    let (ok, out) = smtplib_send(
        pf.addr,
        CLIENT_IP,
        "client.example",
        "a@example.org",
        &["alice@test.example"],
        &f,
    );
    assert!(ok, "{out}");
    let (ok, out) = swaks_send(
        pf.addr,
        CLIENT_IP,
        "client.example",
        "a@example.org",
        "bob@test.example",
        &sample_message("smtplib"),
        &[],
    );
    assert!(ok, "{out}");
    let d = pf.wait_delivered(2, Duration::from_secs(10));
    let want = support::crlf_to_lf(&sample_message("smtplib"));
    for m in &d {
        support::assert_bytes_eq(m.without_first_received(), &want, "delivered");
    }
}

#[test]
fn fake_upstream_records_one_message() {
    let up = FakeUpstream::start(Script::default());
    let mut c = RawClient::connect(up.addr);
    c.ehlo("x");
    let r = c.transaction(
        "a@example.org",
        &["b@example.net"],
        b"Subject: hi\r\n\r\n..x\r\n",
    );
    assert_eq!(r.last().unwrap().code, 250);
    c.cmd("QUIT");
    let m = up.messages();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].content(), b"Subject: hi\r\n\r\n.x\r\n");
    assert_eq!(m[0].raw, b"Subject: hi\r\n\r\n..x\r\n.\r\n");
}

#[test]
fn smtp_sink_accepts() {
    if !support::require(support::sink::TOOLS, true) {
        return;
    }
    let sink = support::sink::SmtpSink::start(64, true);
    let mut c = RawClient::connect(sink.addr);
    c.ehlo("x");
    let r = c.transaction(
        "a@example.org",
        &["b@example.net"],
        b"Subject: hi\r\n\r\nx\r\n",
    );
    assert_eq!(r.last().unwrap().code, 250);
    c.cmd("QUIT");
    support::wait_for(Duration::from_secs(5), "sink dump", || {
        (sink.dumped() == 1).then_some(())
    });
}

#[test]
fn test_certs_are_valid_for_rustls() {
    let certs = support::certs::TestCerts::generate();
    let _ = certs.rustls_client_config();
    assert!(
        std::fs::read_to_string(&certs.leaf_chain)
            .unwrap()
            .matches("BEGIN CERTIFICATE")
            .count()
            == 2
    );
}
