//! Rules over SMTP: each action at each stage answers with the configured reply, and
//! mail refused by a rule never reaches the upstream. Also live reloads: a valid change
//! applies to new sessions without dropping open ones; an invalid one keeps the old set.

mod support;

use std::time::Duration;

use support::client::RawClient;
use support::fake_upstream::{FakeUpstream, Script};
use support::mxguard::{MxGuard, MxOpts};

const LISTS: &str = r#"
lists:
  blocked_nets: [127.0.3.0/24]
  slow_nets: [127.0.4.0/24]
  trusted: [127.0.9.0/24]
  blocked_senders: ["spammer@example.net", "*@bad.example", "/^[0-9]+@/"]
"#;

const RULES: &str = r#"
rules:
  - name: trusted-bypass
    stage: connect
    if: { client_ip: { in: trusted } }
    then: accept
  - name: blocked-nets
    stage: connect
    if: { client_ip: { in: blocked_nets } }
    then: { reject: "554 5.7.1 {client_ip} is not welcome" }
  - name: slow-nets
    stage: connect
    if: { client_ip: { in: slow_nets } }
    then: tempfail
  - name: no-bare-ip-helo
    stage: helo
    if: { helo: { is_ip_literal: true } }
    then: { reject: "550 5.7.1 Bare IP HELO not accepted" }
  - name: helo-later
    stage: helo
    if: { helo: "later.example" }
    then: { tempfail: "450 4.7.1 Come back later, {helo}" }
  - name: blocked-senders
    stage: mail
    if: { sender: { in: blocked_senders } }
    then: { reject: "550 5.7.1 Sender {sender} blocked by {rule}" }
  - name: only-our-domains
    stage: rcpt
    if: { not: { recipient_domain: { in: [example.org, example.net] } } }
    then: { reject: "550 5.7.1 Relaying to {recipient_domain} denied" }
  - name: reject-viagra
    stage: data
    if: { header: { name: Subject, matches: "(?i)viagra" } }
    then: { reject: "550 5.7.1 Content rejected" }
  - name: tag-offers
    stage: data
    if: { header: { name: Subject, matches: "(?i)offer" } }
    then: { add_header: "X-Spam-Flag: YES" }
  - name: watch-casino
    stage: data
    if: { body: { matches: "(?i)casino" } }
    then: reject
    mode: monitor
"#;

fn start() -> (FakeUpstream, MxGuard) {
    let up = FakeUpstream::start(Script::default());
    let mut opts = MxOpts::new(up.addr);
    opts.rules = vec![
        ("00-lists.yaml".into(), LISTS.into()),
        ("10-rules.yaml".into(), RULES.into()),
    ];
    let mx = MxGuard::start(opts);
    (up, mx)
}

fn client(mx: &MxGuard, source: &str) -> RawClient {
    let mut c = RawClient::connect_from(mx.addr, Some(source)).expect("connect");
    let banner = c.reply();
    assert_eq!(banner.code, 220, "{banner}");
    c
}

/// MAIL commands the upstream received from any connection.
fn upstream_mail_commands(up: &FakeUpstream) -> Vec<String> {
    up.connections()
        .iter()
        .flat_map(|c| c.commands.clone())
        .filter(|c| c.to_ascii_uppercase().starts_with("MAIL"))
        .collect()
}

#[test]
fn connect_reject_and_tempfail_are_the_greeting() {
    let (up, mx) = start();
    let mut c = RawClient::connect_from(mx.addr, Some("127.0.3.7")).unwrap();
    let r = c.reply();
    assert_eq!(r.raw(), "554 5.7.1 127.0.3.7 is not welcome", "{r}");
    assert!(c.closed_within(Duration::from_secs(5)));
    let mut c = RawClient::connect_from(mx.addr, Some("127.0.4.7")).unwrap();
    let r = c.reply();
    assert!(r.is("421 4.7.1"), "{r}");
    assert!(c.closed_within(Duration::from_secs(5)));
    assert!(upstream_mail_commands(&up).is_empty());
    let log = mx.log();
    assert!(log.contains("rule=blocked-nets"), "{log}");
}

#[test]
fn helo_reject_and_tempfail_keep_the_session() {
    let (_up, mx) = start();
    let mut c = client(&mx, "127.0.0.2");
    let r = c.cmd("EHLO [192.0.2.1]");
    assert_eq!(r.raw(), "550 5.7.1 Bare IP HELO not accepted", "{r}");
    let r = c.cmd("HELO later.example");
    assert_eq!(r.raw(), "450 4.7.1 Come back later, later.example", "{r}");
    // MAIL without an accepted HELO is out of sequence.
    assert!(c.cmd("MAIL FROM:<a@example.org>").is("503 5.5.1"));
    c.ehlo("good.example");
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").code, 250);
}

#[test]
fn mail_reject_uses_the_template_and_never_reaches_the_upstream() {
    let (up, mx) = start();
    let mut c = client(&mx, "127.0.0.2");
    c.ehlo("client.example");
    for (sender, text) in [
        (
            "spammer@example.net",
            "550 5.7.1 Sender spammer@example.net blocked by blocked-senders",
        ),
        (
            "x@bad.example",
            "550 5.7.1 Sender x@bad.example blocked by blocked-senders",
        ),
        (
            "12345@example.org",
            "550 5.7.1 Sender 12345@example.org blocked by blocked-senders",
        ),
    ] {
        let r = c.cmd(&format!("MAIL FROM:<{sender}>"));
        assert_eq!(r.raw(), text);
        assert!(c.cmd("RCPT TO:<a@example.org>").is("503 5.5.1"));
    }
    assert!(
        upstream_mail_commands(&up).is_empty(),
        "{:?}",
        up.transcript()
    );
}

#[test]
fn rcpt_reject_refuses_that_recipient_only() {
    let (up, mx) = start();
    let mut c = client(&mx, "127.0.0.2");
    c.ehlo("client.example");
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").code, 250);
    let r = c.cmd("RCPT TO:<x@elsewhere.test>");
    assert_eq!(r.raw(), "550 5.7.1 Relaying to elsewhere.test denied");
    assert_eq!(c.cmd("RCPT TO:<b@example.net>").code, 250);
    assert_eq!(c.cmd("DATA").code, 354);
    c.send(b"Subject: hi\r\n\r\nhello\r\n.\r\n");
    assert_eq!(c.reply().code, 250);
    let msgs = up.accepted();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].rcpts, vec!["<b@example.net>".to_string()]);
    let rcpts: Vec<String> = up
        .connections()
        .iter()
        .flat_map(|c| c.commands.clone())
        .filter(|c| c.to_ascii_uppercase().starts_with("RCPT"))
        .collect();
    assert!(
        !rcpts.iter().any(|r| r.contains("elsewhere.test")),
        "{rcpts:?}"
    );
}

#[test]
fn data_reject_add_header_and_monitor() {
    let (up, mx) = start();
    let mut c = client(&mx, "127.0.0.2");
    c.ehlo("client.example");
    let send = |c: &mut RawClient, subject: &str, body: &str| {
        assert_eq!(c.cmd("MAIL FROM:<a@example.org>").code, 250);
        assert_eq!(c.cmd("RCPT TO:<b@example.org>").code, 250);
        assert_eq!(c.cmd("DATA").code, 354);
        c.send(format!("Subject: {subject}\r\n\r\n{body}\r\n.\r\n").as_bytes());
        c.reply()
    };
    let r = send(&mut c, "cheap VIAGRA", "buy");
    assert_eq!(r.raw(), "550 5.7.1 Content rejected");
    assert!(
        up.messages().is_empty(),
        "refused content reached the upstream"
    );

    let r = send(&mut c, "special offer", "hello");
    assert_eq!(r.code, 250, "{r}");
    let r = send(&mut c, "news", "visit our casino");
    assert_eq!(r.code, 250, "monitor mode must not act: {r}");
    let msgs = up.accepted();
    assert_eq!(msgs.len(), 2);
    assert!(
        msgs[0]
            .content()
            .starts_with(b"X-Spam-Flag: YES\r\nSubject: special offer\r\n"),
        "{}",
        String::from_utf8_lossy(&msgs[0].content())
    );
    assert!(msgs[1].content().starts_with(b"Subject: news\r\n"));
    let log = mx.wait_log("policy monitor", Duration::from_secs(5));
    assert!(log.contains("rule=watch-casino"), "{log}");
}

#[test]
fn accept_at_connect_skips_every_later_rule() {
    let (up, mx) = start();
    let mut c = client(&mx, "127.0.9.5");
    let r = c.cmd("EHLO [192.0.2.1]");
    assert_eq!(r.code, 250, "trusted client: HELO rules skipped: {r}");
    assert_eq!(c.cmd("MAIL FROM:<spammer@example.net>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<x@elsewhere.test>").code, 250);
    assert_eq!(c.cmd("DATA").code, 354);
    c.send(b"Subject: viagra\r\n\r\nx\r\n.\r\n");
    assert_eq!(c.reply().code, 250);
    assert_eq!(up.accepted().len(), 1);
}

#[test]
fn reload_applies_to_new_sessions_and_keeps_open_ones() {
    let (_up, mx) = start();
    let rules_dir = mx.dir.join("rules");
    // An open session, started on the old rules.
    let mut old = client(&mx, "127.0.0.2");
    old.ehlo("client.example");

    let extra = "rules:\n  - name: no-example-com\n    stage: mail\n    if: { sender_domain: example.com }\n    then: reject\n";
    // An editor's save: write a temporary file, then rename it over the target.
    let tmp = rules_dir.join(".20-extra.yaml.swp");
    std::fs::write(&tmp, extra).unwrap();
    std::fs::rename(&tmp, rules_dir.join("20-extra.yaml")).unwrap();
    mx.wait_log("rules reloaded", Duration::from_secs(10));

    let mut new = client(&mx, "127.0.0.2");
    new.ehlo("client.example");
    let r = new.cmd("MAIL FROM:<a@example.com>");
    assert!(r.is("550 5.7.1"), "new session uses the new rules: {r}");
    // The open session kept its snapshot and is still alive.
    let r = old.cmd("MAIL FROM:<a@example.com>");
    assert_eq!(
        r.code, 250,
        "open session keeps the rules it started with: {r}"
    );

    // An invalid change: the running set stays, the error is located.
    std::fs::write(
        rules_dir.join("30-bad.yaml"),
        "rules:\n  - name: broken\n    stage: mail\n    if: { client_ip: { in: [10.0.0/8] } }\n    then: reject\n",
    )
    .unwrap();
    let log = mx.wait_log("30-bad.yaml:4:", Duration::from_secs(10));
    assert!(log.contains("10.0.0/8"), "{log}");
    let mut after = client(&mx, "127.0.0.2");
    after.ehlo("client.example");
    assert!(after.cmd("MAIL FROM:<a@example.com>").is("550 5.7.1"));
    assert_eq!(after.cmd("RSET").code, 250);
    assert_eq!(after.cmd("MAIL FROM:<a@example.org>").code, 250);
}
