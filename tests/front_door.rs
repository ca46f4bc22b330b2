//! Issue 10, "Front door": the abuse holes that outside tools found, one test each,
//! against the scripted fake upstream (which records every byte it got) and, where the
//! real thing matters, the private Postfix.

mod support;

use std::time::{Duration, Instant};

use support::client::RawClient;
use support::fake_upstream::{FakeUpstream, Fault, Script, Stage};
use support::mxguard::{MxGuard, MxOpts};

fn start(script: Script, config: Option<&str>, rules: &[(&str, &str)]) -> (FakeUpstream, MxGuard) {
    let up = FakeUpstream::start(script);
    let mut opts = MxOpts::new(up.addr);
    if let Some(c) = config {
        opts = opts.config(c);
    }
    opts.rules = rules
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect();
    let mx = MxGuard::start(opts);
    (up, mx)
}

/// Upstream connections that carried a transaction (not the start-up probe).
fn session_connections(up: &FakeUpstream) -> usize {
    up.connections()
        .iter()
        .filter(|c| c.commands.iter().any(|l| l.starts_with("MAIL")))
        .count()
}

/// Every command line the upstream received, on every connection.
fn upstream_commands(up: &FakeUpstream) -> Vec<String> {
    up.connections()
        .into_iter()
        .flat_map(|c| c.commands)
        .collect()
}

fn metrics_config() -> (String, String) {
    let addr = format!("127.0.0.1:{}", support::free_port());
    (format!("metrics: {addr}\n"), addr)
}

fn metrics(addr: &str) -> String {
    support::metrics(addr)
}

fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

const MESSAGE: &[u8] = b"From: a@x.test\r\nTo: b@d.test\r\nSubject: front door\r\n\r\nhello\r\n";

#[test]
fn addresses_reach_the_upstream_exactly_as_the_client_wrote_them() {
    let (up, mx) = start(Script::default(), None, &[]);
    let mut c = RawClient::connect(mx.addr);
    c.ehlo("client.example");
    let sent = [
        "MAIL FROM:<\"a> SIZE=1\"@x.test>",
        "RCPT TO:<\"evil@outside.test>\"@d.test>",
        "RCPT TO:<\"john smith\"@d.test>",
        "RCPT TO:<Postmaster>",
        "RCPT TO:<a@[127.0.0.1]>",
        "RCPT TO:<a@[IPv6:::1]>",
        "RCPT TO:<b@d.test.>",
    ];
    for line in sent {
        let r = c.cmd(line);
        assert_eq!(r.code, 250, "{line}: {r}\n{}", mx.log());
    }
    assert_eq!(c.cmd("DATA").code, 354);
    c.send(MESSAGE);
    c.send(b".\r\n");
    assert_eq!(c.reply().code, 250);
    let got = upstream_commands(&up);
    let want = [
        "MAIL FROM:<\"a> SIZE=1\"@x.test>",
        "RCPT TO:<\"evil@outside.test>\"@d.test>",
        "RCPT TO:<\"john smith\"@d.test>",
        "RCPT TO:<Postmaster>",
        "RCPT TO:<a@[127.0.0.1]>",
        "RCPT TO:<a@[IPv6:::1]>",
        // one trailing dot removed, as the upstream itself would
        "RCPT TO:<b@d.test>",
    ];
    for w in want {
        assert!(
            got.iter().any(|g| g == w),
            "upstream never got {w:?}: {got:#?}"
        );
    }
    // What the upstream got parses as the same command the client sent.
    for (client_line, upstream_line) in sent.iter().zip(&want) {
        if client_line.starts_with("MAIL") {
            assert_eq!(
                mxguard::smtp::parse_mail(client_line).unwrap(),
                mxguard::smtp::parse_mail(upstream_line).unwrap()
            );
        } else {
            assert_eq!(
                mxguard::smtp::parse_rcpt(client_line).unwrap(),
                mxguard::smtp::parse_rcpt(upstream_line).unwrap()
            );
        }
    }
    assert!(
        !got.iter().any(|g| g.contains("SIZE=1@")),
        "a quoted local part was restructured: {got:#?}"
    );
}

const DENY_RULES: &str = r#"
lists:
  blocked_senders: ["spammer@example.net", "*.bad.example"]
rules:
  - name: blocked-senders
    stage: mail
    if: { sender: { in: blocked_senders } }
    then: reject
  - name: no-outside
    stage: rcpt
    if: { recipient_domain: outside.test }
    then: { reject: "550 5.7.1 not for outside.test" }
"#;

#[test]
fn a_trailing_dot_or_quoting_cannot_slip_past_the_rules() {
    let (up, mx) = start(Script::default(), None, &[("10-deny.yaml", DENY_RULES)]);
    let mut c = RawClient::connect(mx.addr);
    c.ehlo("client.example");
    for sender in [
        "spammer@example.net.",
        "SPAMMER@Example.NET.",
        "x@host.bad.example.",
    ] {
        let r = c.cmd(&format!("MAIL FROM:<{sender}>"));
        assert!(r.is("550 5.7.1"), "{sender}: {r}");
    }
    assert!(
        !upstream_commands(&up).iter().any(|l| l.starts_with("MAIL")),
        "a refused sender reached the upstream"
    );
    assert_eq!(c.cmd("MAIL FROM:<ok@example.org>").code, 250);
    // The domain of a quoted local part is the real one.
    let r = c.cmd("RCPT TO:<\"evil@outside.test>\"@d.test>");
    assert_eq!(r.code, 250, "{r}");
    let r = c.cmd("RCPT TO:<evil@outside.test.>");
    assert!(r.is("550 5.7.1 not for outside.test"), "{r}");
}

#[test]
fn malformed_addresses_and_parameters_get_their_replies_and_go_nowhere() {
    let (up, mx) = start(Script::default(), None, &[]);
    let mut c = RawClient::connect(mx.addr);
    c.ehlo("client.example");
    let cases: [(&[u8], &str); 6] = [
        (b"MAIL FROM:<\xffbad@x.test>\r\n", "501 5.5.2"),
        (b"MAIL FROM:<a@b.test>SIZE=3\r\n", "501 5.5.4"),
        (
            b"MAIL FROM:<a@b.test> SIZE=18446744073709551616\r\n",
            "552 5.3.4",
        ),
        (b"MAIL FROM:<a b@x.test>\r\n", "501 5.1.7"),
        (b"MAIL FROM:<\"unterminated@x.test>\r\n", "501"),
        (b"MAIL FROM:<a@b.test> BODY=9BIT\r\n", "501 5.5.4"),
    ];
    for (line, want) in cases {
        c.send(line);
        let r = c.reply();
        assert!(r.is(want), "{:?}: {r}", String::from_utf8_lossy(line));
    }
    // A 2 KB parameter is not echoed back: every reply line fits in 512 octets.
    let long = format!("MAIL FROM:<a@b.test> X{}=1\r\n", "Y".repeat(2000));
    c.send(long.as_bytes());
    let r = c.reply();
    assert!(r.is("555 5.5.4"), "{r}");
    assert!(r.raw().len() <= 510, "reply of {} octets", r.raw().len());
    assert!(
        !upstream_commands(&up).iter().any(|l| l.starts_with("MAIL")),
        "{:#?}",
        upstream_commands(&up)
    );
}

#[test]
fn control_characters_in_helo_never_reach_the_upstream() {
    let (up, mx) = start(Script::default(), None, &[]);
    let mut c = RawClient::connect(mx.addr);
    for bad in [
        &b"EHLO a\x01b\r\n"[..],
        b"HELO a\x7fb\r\n",
        b"EHLO a\x1bc\r\n",
    ] {
        c.send(bad);
        let r = c.reply();
        assert!(r.is("501 5.5.2"), "{:?}: {r}", String::from_utf8_lossy(bad));
    }
    c.ehlo("good.example");
    assert_eq!(c.cmd("MAIL FROM:<a@x.test>").code, 250);
    let raw: Vec<u8> = up.connections().into_iter().flat_map(|c| c.raw).collect();
    assert!(
        !raw.iter().any(|&b| b == 1 || b == 0x7f || b == 0x1b),
        "a control character reached the upstream"
    );
    assert!(
        upstream_commands(&up)
            .iter()
            .any(|l| l.starts_with("XCLIENT") && l.contains("HELO=good.example")),
        "{:#?}",
        upstream_commands(&up)
    );
}

#[test]
fn bare_line_ends_in_commands_are_refused_except_for_normalised_networks() {
    let (_up, mx) = start(
        Script::default(),
        Some("data:\n  normalize_networks: [127.0.0.3/32]\n"),
        &[],
    );
    let mut c = RawClient::connect(mx.addr);
    c.send(b"EHLO bare.example\n");
    assert!(c.reply().is("500 5.5.2"));
    c.send(b"NOOP\rNOOP\r\n");
    assert!(c.reply().is("500 5.5.2"));
    // The session stays in step.
    c.ehlo("fine.example");
    let mut n = RawClient::connect_from(mx.addr, Some("127.0.0.3")).unwrap();
    assert_eq!(n.reply().code, 220);
    n.send(b"EHLO legacy.example\n");
    assert_eq!(n.reply().code, 250);
}

#[test]
fn http_proxy_and_binary_clients_are_sent_away_at_once() {
    let (mcfg, maddr) = metrics_config();
    let (up, mx) = start(Script::default(), Some(&mcfg), &[]);
    let requests: [&[u8]; 4] = [
        b"GET / HTTP/1.1\r\nHost: mx\r\n\r\n",
        b"POST /smtp HTTP/1.1\r\nHost: mx\r\nContent-Length: 60\r\n\r\nEHLO x\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@d.test>\r\nDATA\r\n",
        b"CONNECT 10.0.0.1:25 HTTP/1.0\r\n\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n",
    ];
    for req in requests {
        let mut c = RawClient::connect(mx.addr);
        c.send(req);
        let r = c.reply();
        assert!(r.is("221 2.7.0"), "{:?}: {r}", String::from_utf8_lossy(req));
        assert!(
            c.closed_within(Duration::from_secs(5)),
            "still open after {r}"
        );
    }
    assert_eq!(
        session_connections(&up),
        0,
        "the upstream got a transaction: {}",
        up.transcript()
    );
    let m = metrics(&maddr);
    assert_eq!(
        metric_value(
            &m,
            "mxguard_protocol_errors_total{kind=\"forbidden_command\"}"
        ),
        Some(4.0),
        "{m}"
    );
}

#[test]
fn every_protocol_error_kind_has_a_series_from_the_start() {
    let (mcfg, maddr) = metrics_config();
    let (_up, _mx) = start(Script::default(), Some(&mcfg), &[]);
    let m = metrics(&maddr);
    for kind in mxguard::telemetry::ProtocolErrorKind::ALL {
        let series = format!(
            "mxguard_protocol_errors_total{{kind=\"{}\"}}",
            kind.as_str()
        );
        assert_eq!(
            metric_value(&m, &series),
            Some(0.0),
            "{series} missing:\n{m}"
        );
    }
    assert_eq!(metric_value(&m, "mxguard_stress_active"), Some(0.0));
}

#[test]
fn a_recipient_flood_is_cut_off_after_the_overshoot() {
    let (up, mx) = start(
        Script::default(),
        Some(
            "limits:\n  max_recipients: 5\n  recipient_overshoot_limit: 5\n  hard_error_limit: 3\n",
        ),
        &[],
    );
    let mut c = RawClient::connect(mx.addr);
    c.ehlo("client.example");
    let mut flood = b"MAIL FROM:<a@x.test>\r\n".to_vec();
    for i in 0..2000 {
        flood.extend_from_slice(format!("RCPT TO:<r{i}@d.test>\r\n").as_bytes());
    }
    // The server may close before the whole flood is written: ignore write errors.
    let _ = c.try_send(&flood);
    let mut codes = Vec::new();
    while let Some(r) = c.reply_within(Duration::from_secs(10)) {
        codes.push(r.code);
        if r.code == 421 {
            break;
        }
    }
    let accepted = codes.iter().filter(|&&c| c == 250).count();
    let over = codes.iter().filter(|&&c| c == 452).count();
    assert_eq!(accepted, 1 + 5, "MAIL + 5 recipients: {codes:?}");
    assert_eq!(
        over,
        5 + 3,
        "5 refused, then 3 counted as errors: {codes:?}"
    );
    assert_eq!(codes.last(), Some(&421), "{codes:?}");
    assert!(c.closed_within(Duration::from_secs(5)));
    let rcpts = upstream_commands(&up)
        .iter()
        .filter(|l| l.starts_with("RCPT"))
        .count();
    assert_eq!(rcpts, 5);
}

/// One transaction; returns the final reply's code and text.
fn send_one(c: &mut RawClient) -> Vec<support::client::Reply> {
    c.transaction("a@x.test", &["b@d.test"], MESSAGE)
}

#[test]
fn an_upstream_250_to_data_never_becomes_a_250_for_the_client() {
    let (mcfg, maddr) = metrics_config();
    let (up, mx) = start(
        Script::with_fault(Fault::Reply {
            stage: Stage::Data,
            reply: "250 2.0.0 Ok".into(),
            close: false,
        }),
        Some(&mcfg),
        &[],
    );
    let mut c = RawClient::connect(mx.addr);
    c.ehlo("client.example");
    let replies = send_one(&mut c);
    let last = replies.last().unwrap();
    assert!(last.is("451 4.4.1"), "{replies:?}\n{}", mx.log());
    assert!(up.messages().is_empty());
    // The broken connection is not reused: the next transaction opens another.
    let replies = send_one(&mut c);
    assert!(replies.last().unwrap().is("451 4.4.1"), "{replies:?}");
    assert_eq!(session_connections(&up), 2, "{}", up.transcript());
    let m = metrics(&maddr);
    assert_eq!(
        metric_value(&m, "mxguard_upstream_protocol_errors_total{stage=\"data\"}"),
        Some(2.0),
        "{m}"
    );
}

#[test]
fn a_stale_upstream_reply_is_never_taken_for_the_next_one() {
    let (up, mx) = start(
        Script::with_fault(Fault::Reply {
            stage: Stage::Mail,
            reply: "250 2.1.0 Ok\r\n250 2.1.5 stale extra line".into(),
            close: false,
        }),
        None,
        &[],
    );
    let mut c = RawClient::connect(mx.addr);
    c.ehlo("client.example");
    assert_eq!(c.cmd("MAIL FROM:<a@x.test>").code, 250);
    let r = c.cmd("RCPT TO:<b@d.test>");
    assert!(r.is("451 4.4.1"), "{r}\n{}", mx.log());
    // The rest of the transaction gets the same 4xx (never a 5xx for the upstream's
    // fault); after RSET the client starts again.
    assert!(c.cmd("RCPT TO:<c@d.test>").is("451 4.4.1"));
    assert!(c.cmd("DATA").is("451 4.4.1"));
    assert_eq!(c.cmd("RSET").code, 250);
    assert!(up.messages().is_empty());
}

#[test]
fn a_reused_upstream_connection_that_died_while_idle_is_replaced_transparently() {
    let (up, mx) = start(
        Script::with_fault(Fault::CloseAfterMessage(
            "421 4.4.2 fake.test Error: timeout exceeded".into(),
        )),
        None,
        &[],
    );
    let mut c = RawClient::connect(mx.addr);
    c.ehlo("client.example");
    for round in 0..3 {
        let replies = send_one(&mut c);
        assert_eq!(
            replies.last().unwrap().code,
            250,
            "round {round}: {replies:?}\n{}",
            mx.log()
        );
    }
    assert_eq!(up.accepted().len(), 3);
    assert_eq!(session_connections(&up), 3, "{}", up.transcript());
    let seen = String::from_utf8_lossy(&c.received).into_owned();
    assert!(
        !seen.contains("fake.test"),
        "the upstream's own 421 reached the client: {seen}"
    );
}

#[test]
fn a_client_dripping_a_command_is_cut_off_by_the_line_deadline() {
    let (_up, mx) = start(
        Script::default(),
        Some("limits:\n  command_timeout: 2s\n"),
        &[],
    );
    let mut c = RawClient::connect(mx.addr);
    let t0 = Instant::now();
    let mut sent = 0;
    for b in b"EHLO slow.example\r\n" {
        if c.try_send(&[*b]).is_err() {
            break;
        }
        sent += 1;
        // The drip is the scenario: one byte every 400 ms, 7.6 s for the whole line.
        std::thread::sleep(Duration::from_millis(400));
        if t0.elapsed() > Duration::from_secs(4) {
            break;
        }
    }
    let r = c.reply_within(Duration::from_secs(5));
    assert!(
        r.as_ref().is_some_and(|r| r.is("421 4.4.2")),
        "{r:?} after {sent} bytes in {:?}",
        t0.elapsed()
    );
    assert!(c.closed_within(Duration::from_secs(5)));
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "held the slot {:?}",
        t0.elapsed()
    );
    assert!(mx.log().contains("slow_command"), "{}", mx.log());
}

#[test]
fn under_stress_idle_and_dripping_clients_get_the_short_timeout() {
    let (mcfg, maddr) = metrics_config();
    let config = format!(
        "{mcfg}limits:\n  max_sessions: 10\n  stress_threshold: 50%\n  stress_command_timeout: 1s\n  command_timeout: 60s\n"
    );
    let (_up, mx) = start(Script::default(), Some(&config), &[]);
    // Five idle sessions: not yet under stress (5 of 10 is the threshold).
    let mut idle: Vec<RawClient> = (0..5).map(|_| RawClient::connect(mx.addr)).collect();
    let m = metrics(&maddr);
    assert_eq!(metric_value(&m, "mxguard_stress_active"), Some(0.0), "{m}");
    // The sixth puts the server under stress: every waiting session now has 1 s.
    let t0 = Instant::now();
    let mut sixth = RawClient::connect(mx.addr);
    for c in idle.iter_mut().chain(std::iter::once(&mut sixth)) {
        let r = c.reply_within(Duration::from_secs(10));
        assert!(
            r.as_ref().is_some_and(|r| r.is("421 4.4.2")),
            "{r:?} after {:?}\n{}",
            t0.elapsed(),
            mx.log()
        );
    }
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    let m = metrics(&maddr);
    assert!(
        metric_value(&m, "mxguard_protocol_errors_total{kind=\"stress_timeout\"}")
            .is_some_and(|v| v >= 6.0),
        "{m}"
    );
}

#[test]
fn the_shipped_rules_fit_mail_clients_and_accept_postmaster() {
    let root = env!("CARGO_MANIFEST_DIR");
    let shipped = |name: &str| std::fs::read_to_string(format!("{root}/rules/{name}")).unwrap();
    let lists = shipped("00-lists.yaml");
    let helo = shipped("20-helo.yaml");
    let rcpt = shipped("40-rcpt.yaml");
    let nets = shipped("lists/trusted-nets.txt");
    let up = FakeUpstream::start(Script::default());
    let mut opts = MxOpts::new(up.addr).config(
        "listeners:\n  - name: mx\n    address: \"{listen}\"\n  - name: submission\n    address: 127.0.0.1:0\n    mode: submission\n",
    );
    opts.rules = vec![
        ("00-lists.yaml".into(), lists),
        ("20-helo.yaml".into(), helo),
        ("40-rcpt.yaml".into(), rcpt),
        ("lists/trusted-nets.txt".into(), nets),
    ];
    let mx = MxGuard::start(opts);
    let mut c = RawClient::connect(mx.addr);
    assert!(
        c.cmd("EHLO [127.0.0.1]").is("550 5.7.1"),
        "an MTA's bare IP HELO"
    );
    c.ehlo("client.example");
    assert_eq!(c.cmd("MAIL FROM:<a@x.test>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<postmaster>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<Postmaster>").code, 250);
    assert!(c.cmd("RCPT TO:<someone@elsewhere.test>").is("550 5.7.1"));
    // The same HELO on the submission listener (a mail client) is fine.
    let sub = mx.log();
    let sub_addr: std::net::SocketAddr = sub
        .lines()
        .find(|l| l.contains("listening") && l.contains("listener=submission"))
        .and_then(|l| l.split("addr=").nth(1))
        .and_then(|a| a.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no submission listener address in the log:\n{sub}"));
    let mut m = RawClient::connect(sub_addr);
    assert_eq!(m.cmd("EHLO [127.0.0.1]").code, 250);
}

fn postfix_message(subject: &str) -> Vec<u8> {
    format!("From: a@example.org\r\nTo: b@any.example\r\nSubject: {subject}\r\n\r\nhello\r\n")
        .into_bytes()
}

#[test]
fn postfix_gets_quoted_local_parts_and_literals_as_written() {
    if !support::require(support::postfix::TOOLS, true) {
        return;
    }
    let pf = support::postfix::Postfix::start();
    let mx = MxGuard::start(MxOpts::new(pf.addr));
    let mut c = RawClient::connect(mx.addr);
    c.ehlo("client.example");
    assert_eq!(c.cmd("MAIL FROM:<\"odd sender\"@example.org>").code, 250);
    for rcpt in ["\"john smith\"@any.example", "x@[127.0.0.1]"] {
        let r = c.cmd(&format!("RCPT TO:<{rcpt}>"));
        // Postfix itself decides: the quoted name is one of its mailboxes, the literal
        // is not one of its domains (so a refusal of its own, not a syntax error).
        assert!(r.code == 250 || r.is("554 5.7.1"), "{rcpt}: {r}");
        if rcpt.starts_with('"') {
            assert_eq!(r.code, 250, "{r}");
        }
    }
    assert_eq!(c.cmd("DATA").code, 354);
    c.send(&postfix_message("quoted"));
    c.send(b".\r\n");
    assert_eq!(c.reply().code, 250);
    let d = pf.wait_delivered(1, Duration::from_secs(20));
    // Postfix's internal (unquoted) form of the same mailboxes.
    assert_eq!(d[0].env("recipient"), "john smith@any.example");
    assert_eq!(d[0].env("sender"), "odd sender@example.org");
}

#[test]
fn postfix_closing_an_idle_reused_connection_is_invisible_to_the_client() {
    if !support::require(support::postfix::TOOLS, true) {
        return;
    }
    let pf = support::postfix::Postfix::start_with(support::postfix::PostfixOpts {
        extra_main_cf: vec!["smtpd_timeout = 1s".into()],
        ..Default::default()
    });
    let mx = MxGuard::start(MxOpts::new(pf.addr));
    let mut c = RawClient::connect(mx.addr);
    c.ehlo("client.example");
    let r = c.transaction(
        "a@example.org",
        &["b@any.example"],
        &postfix_message("first"),
    );
    assert_eq!(r.last().unwrap().code, 250, "{r:?}");
    // Postfix drops the upstream session mxguard kept for the client's next transaction.
    support::wait_for(Duration::from_secs(15), "Postfix's idle timeout", || {
        pf.maillog().contains("timeout after").then_some(())
    });
    let r = c.transaction(
        "a@example.org",
        &["b@any.example"],
        &postfix_message("second"),
    );
    assert_eq!(r.last().unwrap().code, 250, "{r:?}\n{}", mx.log());
    assert_eq!(pf.wait_delivered(2, Duration::from_secs(20)).len(), 2);
    let seen = String::from_utf8_lossy(&c.received).into_owned();
    assert!(
        !seen.contains("mx.test ") && !seen.contains("timeout exceeded"),
        "Postfix's own 421 reached the client: {seen}"
    );
}
