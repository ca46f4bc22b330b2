//! Issue 2, "How it is shown", first part: mxguard in front of a real private Postfix.
//! Messages from Python `smtplib` and `swaks` arrive byte-identical (apart from Postfix's
//! Received line), that Received line shows the real client (127.0.0.2, via XCLIENT), and
//! Postfix's own verdicts (unknown user `550 5.1.1`, access-map rejects) reach the client
//! verbatim.

mod support;

use std::time::Duration;

use support::client::{CLIENT_IP, RawClient, dot_stuff, smtplib_send, swaks_send};
use support::mxguard::{MxGuard, MxOpts};
use support::postfix::Postfix;

const TOOLS: &[&str] = &["postfix", "/usr/lib/postfix/sbin/master"];

fn message(subject: &str) -> Vec<u8> {
    format!(
        "From: Sender <sender@example.org>\r\n\
         To: Alice <alice@test.example>\r\n\
         Subject: {subject}\r\n\
         Date: Sun, 29 Nov 2026 12:00:00 +0000\r\n\
         Message-ID: <{subject}.1@example.org>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n\
         Hello Alice,\r\n\
         .a line that starts with a dot\r\n\
         ..two dots\r\n\
         .\r\n\
         \ttabbed line with trailing space \r\n\
         \r\n\
         last line\r\n"
    )
    .into_bytes()
}

fn setup() -> Option<(Postfix, MxGuard)> {
    if !support::require(TOOLS, true) {
        return None;
    }
    let pf = Postfix::start();
    let mx = MxGuard::start(MxOpts::new(pf.addr));
    Some((pf, mx))
}

#[test]
fn logs_listening_address_on_start() {
    let Some((_pf, mx)) = setup() else { return };
    let log = mx.wait_log(&format!("addr={}", mx.addr), Duration::from_secs(5));
    assert!(
        log.lines()
            .any(|l| l.contains(" listening ") && l.contains(&format!("addr={}", mx.addr))),
        "{log}"
    );
}

#[test]
fn smtplib_message_arrives_byte_identical_with_real_client_address() {
    let Some((pf, mx)) = setup() else { return };
    if !support::require(&["python3"], false) {
        return;
    }
    let msg = message("smtplib");
    let tmp = support::tempdir("mxg-msg.");
    let f = tmp.path().join("m.eml");
    std::fs::write(&f, &msg).unwrap();
    let (ok, out) = smtplib_send(
        mx.addr,
        CLIENT_IP,
        "client.example",
        "sender@example.org",
        &["alice@test.example"],
        &f,
    );
    assert!(ok, "smtplib through mxguard failed: {out}\n{}", mx.log());
    let d = pf.wait_delivered(1, Duration::from_secs(20));
    support::assert_bytes_eq(
        d[0].without_first_received(),
        &support::crlf_to_lf(&msg),
        "message delivered by Postfix (after its Received line)",
    );
    let received = d[0].first_received();
    assert!(
        received.contains("[127.0.0.2]"),
        "Postfix's Received line must show the real client 127.0.0.2 (XCLIENT): {received}"
    );
    assert!(
        !received.contains("[127.0.0.1]"),
        "Received shows the proxy, not the client: {received}"
    );
    assert!(received.contains("client.example"), "HELO name: {received}");
    assert_eq!(d[0].env("client_address"), "127.0.0.2");
    assert_eq!(d[0].env("client_helo"), "client.example");
    assert_eq!(d[0].env("sender"), "sender@example.org");
    assert_eq!(d[0].env("recipient"), "alice@test.example");
}

#[test]
fn swaks_message_arrives_byte_identical_with_real_client_address() {
    let Some((pf, mx)) = setup() else { return };
    if !support::require(&["swaks"], false) {
        return;
    }
    let msg = message("swaks");
    let (ok, out) = swaks_send(
        mx.addr,
        "127.0.0.3",
        "swaks.example",
        "sender@example.org",
        "bob@test.example",
        &msg,
        &[],
    );
    assert!(ok, "swaks through mxguard failed: {out}\n{}", mx.log());
    let d = pf.wait_delivered(1, Duration::from_secs(20));
    support::assert_bytes_eq(
        d[0].without_first_received(),
        &support::crlf_to_lf(&msg),
        "message delivered by Postfix (after its Received line)",
    );
    let received = d[0].first_received();
    assert!(received.contains("[127.0.0.3]"), "{received}");
    assert_eq!(d[0].env("client_address"), "127.0.0.3");
    assert_eq!(d[0].env("client_helo"), "swaks.example");
    assert_eq!(d[0].env("recipient"), "bob@test.example");
}

/// Sends the same commands to Postfix directly and through mxguard: the replies at MAIL,
/// RCPT and end of DATA must be Postfix's own (code, enhanced code, text).
#[test]
fn upstream_verdicts_reach_the_client_verbatim() {
    let Some((pf, mx)) = setup() else { return };
    let cases: &[(&str, &str, &str, &str)] = &[
        // (mail from, rcpt to, subject, expected prefix)
        (
            "sender@example.org",
            "nobody@test.example",
            "x",
            "550 5.1.1",
        ),
        (
            "reject-mail@any.example",
            "alice@test.example",
            "x",
            "550 5.7.1",
        ),
        (
            "tempfail-mail@any.example",
            "alice@test.example",
            "x",
            "451 4.7.1",
        ),
        (
            "sender@example.org",
            "tempfail@test.example",
            "x",
            "450 4.2.0",
        ),
        (
            "sender@example.org",
            "reject-rcpt@any.example",
            "x",
            "550 5.7.1",
        ),
        (
            "tempfail-eod@any.example",
            "alice@test.example",
            "x",
            "451 4.7.1",
        ),
        (
            "sender@example.org",
            "alice@test.example",
            "bad [upstream-reject]",
            "550 5.7.1",
        ),
    ];
    for (from, to, subject, want) in cases {
        let body = format!("Subject: {subject}\r\n\r\nbody\r\n");
        let run = |addr| {
            let mut c = RawClient::connect(addr);
            c.ehlo("client.example");
            let replies = c.transaction(from, &[to], body.as_bytes());
            let _ = c.try_send(b"QUIT\r\n");
            replies
        };
        let direct = run(pf.addr);
        let proxied = run(mx.addr);
        let d_last = direct.last().unwrap();
        let p_last = proxied.last().unwrap();
        assert!(
            d_last.is(want),
            "test setup: Postfix itself answered {d_last} for {from} -> {to}"
        );
        assert_eq!(
            p_last, d_last,
            "mxguard must pass Postfix's reply through verbatim for {from} -> {to} ({subject})\n\
             direct:  {direct:?}\nproxied: {proxied:?}"
        );
        assert_eq!(
            direct.len(),
            proxied.len(),
            "same number of replies: {direct:?} vs {proxied:?}"
        );
    }
    // nothing was delivered: every case was refused somewhere (stop the proxy first: its
    // warm pooled upstream connections stay open while it runs)
    drop(mx);
    let d = pf.settle(Duration::from_secs(20));
    assert!(d.is_empty(), "{} message(s) delivered", d.len());
}

#[test]
fn unknown_recipient_gets_postfix_550_5_1_1_text() {
    let Some((_pf, mx)) = setup() else { return };
    let mut c = RawClient::connect(mx.addr);
    c.ehlo("client.example");
    assert_eq!(c.cmd("MAIL FROM:<sender@example.org>").code, 250);
    let r = c.cmd("RCPT TO:<nobody@test.example>");
    assert!(r.is("550 5.1.1"), "{r}");
    assert!(
        r.raw().contains("User unknown in virtual mailbox table"),
        "Postfix's own text must pass through: {r}"
    );
    // the transaction goes on with a good recipient
    let r = c.cmd("RCPT TO:<alice@test.example>");
    assert_eq!(r.code, 250, "{r}");
}

#[test]
fn several_transactions_in_one_session_and_pipelining() {
    let Some((pf, mx)) = setup() else { return };
    let mut c = RawClient::connect(mx.addr);
    let ehlo = c.ehlo("client.example");
    assert!(
        ehlo.lines
            .iter()
            .any(|l| l.eq_ignore_ascii_case("PIPELINING")),
        "{ehlo}"
    );
    for i in 0..3 {
        let body = dot_stuff(format!("Subject: n{i}\r\n\r\n.body {i}\r\n").as_bytes());
        let mut group = format!(
            "MAIL FROM:<s{i}@example.org>\r\nRCPT TO:<alice@test.example>\r\nRCPT TO:<u{i}@any.example>\r\nDATA\r\n"
        )
        .into_bytes();
        c.send(&group);
        for _ in 0..3 {
            let r = c.reply();
            assert_eq!(r.code, 250, "{r}");
        }
        assert_eq!(c.reply().code, 354);
        group.clear();
        c.send(&body);
        c.send(b".\r\n");
        let r = c.reply();
        assert_eq!(r.code, 250, "{r}");
    }
    assert_eq!(c.cmd("QUIT").code, 221);
    let d = pf.wait_delivered(6, Duration::from_secs(20));
    assert_eq!(d.len(), 6);
    for m in &d {
        assert_eq!(m.env("client_address"), "127.0.0.2");
    }
}

#[test]
fn sigterm_gives_idle_sessions_421_4_3_2_and_exits_0() {
    let Some((_pf, mut mx)) = setup() else { return };
    let mut c = RawClient::connect(mx.addr);
    c.ehlo("client.example");
    let st = mx.stop(Duration::from_secs(40));
    let r = c.reply_within(Duration::from_secs(5));
    assert!(
        r.as_ref().is_some_and(|r| r.is("421 4.3.2")),
        "idle session on SIGTERM: {r:?}"
    );
    let st = st.expect("mxguard did not exit after SIGTERM");
    assert!(
        st.success(),
        "exit status after SIGTERM: {st}\n{}",
        mx.log()
    );
}

#[test]
fn smtputf8_addresses_pass_through_to_postfix() {
    let Some((pf, mx)) = setup() else { return };
    let mut c = RawClient::connect(mx.addr);
    let e = c.ehlo("client.example");
    assert!(
        e.lines.iter().any(|l| l.eq_ignore_ascii_case("SMTPUTF8")),
        "{e}"
    );
    let r = c.cmd("MAIL FROM:<zoë@example.org> SMTPUTF8 BODY=8BITMIME");
    assert_eq!(r.code, 250, "{r}");
    let r = c.cmd("RCPT TO:<zoë@any.example>");
    assert_eq!(r.code, 250, "{r}");
    assert_eq!(c.cmd("DATA").code, 354);
    c.send("Subject: ünïcödé\r\n\r\nGrüße\r\n.\r\n".as_bytes());
    assert_eq!(c.reply().code, 250);
    let d = pf.wait_delivered(1, Duration::from_secs(20));
    assert_eq!(d[0].env("sender"), "zoë@example.org");
    assert_eq!(d[0].env("recipient"), "zoë@any.example");
    assert!(
        d[0].first_received().contains("UTF8SMTP"),
        "{}",
        d[0].first_received()
    );
    support::assert_bytes_eq(
        d[0].without_first_received(),
        "Subject: ünïcödé\n\nGrüße\n".as_bytes(),
        "8-bit body",
    );
}

#[test]
fn null_sender_bounce_reaches_postfix() {
    let Some((pf, mx)) = setup() else { return };
    let mut c = RawClient::connect(mx.addr);
    c.ehlo("client.example");
    let r = c.transaction("", &["bob@test.example"], b"Subject: DSN\r\n\r\nbounce\r\n");
    assert_eq!(r.last().unwrap().code, 250, "{r:?}");
    let d = pf.wait_delivered(1, Duration::from_secs(20));
    assert_eq!(d[0].env("sender"), "");
}

/// Postfix as the sending MTA (relayhost = mxguard) and Postfix as the upstream: a message
/// submitted at one end arrives at the other unchanged, with the sender MTA's address.
#[test]
fn postfix_relays_through_mxguard_to_postfix() {
    let Some((pf, mx)) = setup() else { return };
    let sender = Postfix::start_with(support::postfix::PostfixOpts {
        hostname: "client-mta.test".into(),
        relayhost: Some(format!("[{}]:{}", mx.addr.ip(), mx.addr.port())),
        smtp_bind_address: Some("127.0.0.7".into()),
        ..Default::default()
    });
    let msg = message("mta-to-mta");
    sender.sendmail(
        "sender@example.org",
        &["carol@test.example"],
        &support::crlf_to_lf(&msg),
    );
    let d = pf.wait_delivered(1, Duration::from_secs(30));
    assert_eq!(
        d[0].env("client_address"),
        "127.0.0.7",
        "{}",
        d[0].first_received()
    );
    assert_eq!(d[0].env("client_helo"), "client-mta.test");
    assert_eq!(d[0].env("recipient"), "carol@test.example");
    // the sending Postfix adds its own Received line (local pickup); everything after it is
    // the submitted message
    let body = d[0].without_first_received();
    let text = String::from_utf8_lossy(body);
    assert!(
        text.starts_with("Received: "),
        "the sender MTA's own trace: {text}"
    );
    let want = support::crlf_to_lf(&msg);
    assert!(
        body.ends_with(&want),
        "submitted message must arrive unchanged:\n{text}"
    );
    assert!(
        sender.maillog().contains("status=sent"),
        "{}",
        sender.maillog()
    );
}
