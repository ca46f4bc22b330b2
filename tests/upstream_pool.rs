//! Issue 14, item 2: warm upstream connections (`upstream_pool`). A pooled connection is
//! greeted (banner, EHLO) ahead of time and serves exactly one client session: the
//! client's identity (XCLIENT) goes out only when a session takes it, and it is never
//! given back. A connection that died while idle is replaced without the client noticing;
//! an upstream that is down is not hammered; a cold second upstream still carries mail;
//! idle connections are closed (QUIT) after `max_idle` and at shutdown; `size: 0` is the
//! old behaviour.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use support::certs::TestCerts;
use support::client::RawClient;
use support::fake_upstream::{ConnRecord, FakeUpstream, Fault, Script, Stage};
use support::mxguard::{MxGuard, MxOpts};
use support::postfix::Postfix;

const WAIT: Duration = Duration::from_secs(20);
/// A recipient the private Postfix delivers to.
const POSTFIX_RCPT: &str = "alice@test.example";

fn metrics_addr() -> SocketAddr {
    ([127, 0, 0, 1], support::free_port()).into()
}

/// `/metrics`, fetched with curl.
fn metrics(addr: SocketAddr) -> String {
    support::metrics(addr)
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

fn idle(upstream: usize) -> String {
    format!("mxguard_upstream_pool_idle{{upstream=\"{upstream}\"}}")
}

fn hits(upstream: usize) -> String {
    format!("mxguard_upstream_pool_hits_total{{upstream=\"{upstream}\"}}")
}

fn misses(upstream: usize, reason: &str) -> String {
    format!("mxguard_upstream_pool_misses_total{{reason=\"{reason}\",upstream=\"{upstream}\"}}")
}

fn discarded(upstream: usize) -> String {
    format!("mxguard_upstream_pool_discarded_dead_total{{upstream=\"{upstream}\"}}")
}

/// Waits until `series` reads `value` at the metrics endpoint.
fn wait_metric(addr: SocketAddr, series: &str, value: f64) -> String {
    support::wait_for(WAIT, &format!("{series} = {value}"), || {
        let text = metrics(addr);
        (metric(&text, series) == value).then_some(text)
    })
}

fn pool_config(metrics: SocketAddr, size: usize, max_idle: &str) -> String {
    format!("metrics: {metrics}\nupstream_pool: {{ size: {size}, max_idle: {max_idle} }}\n")
}

fn two_upstreams(a: SocketAddr, b: SocketAddr) -> String {
    format!(
        "upstreams:\n  - {{ address: \"{a}\", connect_timeout: 2s, command_timeout: 5s }}\n  - {{ address: \"{b}\", connect_timeout: 2s, command_timeout: 5s }}\n"
    )
}

fn body(subject: &str) -> Vec<u8> {
    format!("From: a@x.test\r\nTo: b@d.test\r\nSubject: {subject}\r\n\r\nhello\r\n").into_bytes()
}

/// A whole session from `source`: EHLO, one message, QUIT; every reply must be positive.
fn send_one(mx: &MxGuard, source: &str, subject: &str) {
    send_one_to(mx, source, subject, "b@d.test");
}

/// [`send_one`] to `rcpt` (the private Postfix takes `alice@test.example`).
fn send_one_to(mx: &MxGuard, source: &str, subject: &str, rcpt: &str) {
    let mut c = RawClient::connect_from(mx.addr, Some(source)).expect("connect");
    assert_eq!(c.reply().code, 220);
    c.ehlo(&format!("client-{source}.example"));
    let replies = c.transaction("a@x.test", &[rcpt], &body(subject));
    assert!(
        replies.len() == 4 && replies.iter().all(|r| r.code < 400),
        "{source}: {replies:?}\n{}",
        mx.log()
    );
    assert_eq!(c.cmd("QUIT").code, 221);
}

fn xclients(c: &ConnRecord) -> Vec<&String> {
    c.commands
        .iter()
        .filter(|l| l.to_ascii_uppercase().starts_with("XCLIENT"))
        .collect()
}

/// The `ADDR=` of an XCLIENT line.
fn xclient_addr(line: &str) -> &str {
    line.split_whitespace()
        .find_map(|a| a.strip_prefix("ADDR="))
        .unwrap_or("")
}

#[test]
fn pooled_connections_carry_each_clients_own_address_to_postfix() {
    if !support::require(support::postfix::TOOLS, true) || !support::require(&["curl"], false) {
        return;
    }
    let pf = Postfix::start();
    let m = metrics_addr();
    let mx = MxGuard::start(MxOpts::new(pf.addr).config(&pool_config(m, 2, "60s")));
    wait_metric(m, &idle(0), 2.0);
    // Two clients at once, interleaved command by command: each takes its own pooled
    // connection, and Postfix learns each one's address from its own XCLIENT.
    let mut c2 = RawClient::connect_from(mx.addr, Some("127.0.0.2")).unwrap();
    let mut c3 = RawClient::connect_from(mx.addr, Some("127.0.0.3")).unwrap();
    for (c, name) in [(&mut c2, "two"), (&mut c3, "three")] {
        assert_eq!(c.reply().code, 220);
        c.ehlo(&format!("client-{name}.example"));
    }
    for c in [&mut c2, &mut c3] {
        let r = c.cmd("MAIL FROM:<sender@example.org>");
        assert_eq!(r.code, 250, "{r}\n{}", mx.log());
    }
    for c in [&mut c2, &mut c3] {
        assert_eq!(c.cmd("RCPT TO:<alice@test.example>").code, 250);
    }
    for c in [&mut c2, &mut c3] {
        assert_eq!(c.cmd("DATA").code, 354);
    }
    for (c, name) in [(&mut c2, "two"), (&mut c3, "three")] {
        c.send(&body(name));
        c.send(b".\r\n");
        let r = c.reply();
        assert_eq!(r.code, 250, "{r}\n{}", mx.log());
        assert_eq!(c.cmd("QUIT").code, 221);
    }
    let text = metrics(m);
    assert_eq!(metric(&text, &hits(0)), 2.0, "both sessions from the pool");
    // Then two more in a row, each once the pool is full again: a connection that
    // carried a session is never handed to the next one.
    for (source, subject) in [("127.0.0.4", "four"), ("127.0.0.5", "five")] {
        wait_metric(m, &idle(0), 2.0);
        send_one_to(&mx, source, subject, POSTFIX_RCPT);
    }
    assert_eq!(
        metric(&metrics(m), &hits(0)),
        4.0,
        "every session from the pool"
    );
    pf.wait_delivered(4, WAIT);
    // Stopped, mxguard QUITs its idle pooled connections: then Postfix can settle, and
    // what it delivered is everything it will deliver.
    let mut mx = mx;
    assert!(mx.stop(WAIT).is_some_and(|s| s.success()), "{}", mx.log());
    let mut by_subject: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for d in pf.settle(WAIT) {
        let text = String::from_utf8_lossy(&d.eml).into_owned();
        let subject = text
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .unwrap_or("")
            .to_owned();
        by_subject.entry(subject).or_default().push(format!(
            "{} {}",
            d.env("client_address"),
            d.first_received()
        ));
    }
    assert_eq!(by_subject.len(), 4, "{by_subject:?}");
    for (subject, ip) in [
        ("two", "127.0.0.2"),
        ("three", "127.0.0.3"),
        ("four", "127.0.0.4"),
        ("five", "127.0.0.5"),
    ] {
        let got = &by_subject[subject];
        assert_eq!(got.len(), 1, "delivered once: {got:?}");
        assert!(
            got[0].starts_with(&format!("{ip} ")) && got[0].contains(&format!("[{ip}]")),
            "message {subject} must show its own client {ip}: {got:?}"
        );
    }
    assert!(
        !pf.maillog().contains("insufficient authorization"),
        "{}",
        pf.maillog()
    );
}

#[test]
fn pooled_connections_to_a_tls_upstream_are_starttlsed_ahead_of_time() {
    if !support::require(support::postfix::TOOLS, true) || !support::require(&["curl"], false) {
        return;
    }
    let certs = TestCerts::generate();
    let pf = Postfix::start_with(support::postfix::PostfixOpts {
        extra_main_cf: vec![
            "smtpd_tls_security_level = may".into(),
            format!(
                "smtpd_tls_chain_files = {}, {}",
                certs.leaf_key.display(),
                certs.leaf_chain.display()
            ),
            "smtpd_tls_received_header = yes".into(),
            "smtpd_tls_loglevel = 1".into(),
        ],
        ..Default::default()
    });
    let m = metrics_addr();
    let upstream = format!(
        "upstreams:\n  - address: \"{}\"\n    tls: require\n    tls_verify: true\n    ca_file: {}\n    tls_name: mx.test\n    command_timeout: 5s\n",
        pf.addr,
        certs.ca_cert.display()
    );
    let mut opts = MxOpts::new(pf.addr).config(&format!("{upstream}{}", pool_config(m, 1, "60s")));
    opts.upstream_flag = false;
    let mx = MxGuard::start(opts);
    wait_metric(m, &idle(0), 1.0);
    send_one_to(&mx, "127.0.0.6", "over tls", POSTFIX_RCPT);
    assert_eq!(metric(&metrics(m), &hits(0)), 1.0);
    let d = pf.wait_delivered(1, WAIT);
    assert_eq!(d[0].env("client_address"), "127.0.0.6");
    // The session took the warm connection (a hit), and Postfix received its mail under
    // TLS: the STARTTLS was done before the client came.
    let received = d[0].first_received();
    assert!(received.contains("using TLS"), "{received}");
}

#[test]
fn a_pooled_connection_that_died_while_idle_is_replaced_unnoticed() {
    if !support::require(&["curl"], false) {
        return;
    }
    // Every connection left idle after EHLO gets Postfix's idle 421 and is closed.
    let up = FakeUpstream::start(Script::with_fault(Fault::IdleAfterEhlo(
        Duration::from_millis(300),
    )));
    let m = metrics_addr();
    let mx = MxGuard::start(MxOpts::new(up.addr).config(&pool_config(m, 2, "60s")));
    wait_metric(m, &idle(0), 2.0);
    support::wait_for(
        WAIT,
        "both pooled connections closed by the upstream",
        || (up.idle_closed() >= 2).then_some(()),
    );
    send_one(&mx, "127.0.0.2", "after the idle timeout");
    let text = metrics(m);
    assert_eq!(metric(&text, &discarded(0)), 2.0, "{text}");
    assert_eq!(metric(&text, &misses(0, "dead")), 1.0);
    assert_eq!(metric(&text, &hits(0)), 0.0);
    let accepted = up.accepted();
    assert_eq!(accepted.len(), 1, "{}", up.transcript());
    let conn = &up.connections()[accepted[0].conn];
    let x = xclients(conn);
    assert!(
        x.len() == 1 && xclient_addr(x[0]) == "127.0.0.2",
        "{}",
        up.transcript()
    );
}

#[test]
fn with_the_first_upstream_down_the_pool_warms_the_second_without_hammering_the_first() {
    if !support::require(&["curl"], false) {
        return;
    }
    let a = FakeUpstream::start(Script::with_fault(Fault::Reply {
        stage: Stage::Greeting,
        reply: "421 4.3.2 a.test Service not available".into(),
        close: true,
    }));
    let b = FakeUpstream::start(Script::default());
    let m = metrics_addr();
    let mut opts = MxOpts::new(a.addr).config(&format!(
        "{}{}",
        two_upstreams(a.addr, b.addr),
        pool_config(m, 2, "60s")
    ));
    opts.upstream_flag = false;
    let mx = MxGuard::start(opts);
    wait_metric(m, &idle(1), 2.0);
    send_one(&mx, "127.0.0.2", "failed over");
    let text = metrics(m);
    assert_eq!(metric(&text, &hits(1)), 1.0, "{text}");
    assert_eq!(metric(&text, &misses(0, "empty")), 1.0, "{text}");
    assert_eq!(b.accepted().len(), 1, "{}", b.transcript());
    // The first upstream was tried by the start-up probe, by the session, and by the
    // refiller with a pause doubling from 0.5 s: a handful of connections, never a spin
    // (which would be thousands in the time this test takes).
    let tries = a.connections().len();
    assert!(
        (2..=12).contains(&tries),
        "{tries} connections to the upstream that is down"
    );
}

#[test]
fn a_cold_second_upstream_carries_the_mail_when_the_warm_first_dies() {
    if !support::require(&["curl"], false) {
        return;
    }
    let a = FakeUpstream::start(Script::default());
    let b = FakeUpstream::start(Script::default());
    let m = metrics_addr();
    let mut opts = MxOpts::new(a.addr).config(&format!(
        "{}{}",
        two_upstreams(a.addr, b.addr),
        pool_config(m, 2, "60s")
    ));
    opts.upstream_flag = false;
    let mx = MxGuard::start(opts);
    wait_metric(m, &idle(0), 2.0);
    // Only the first upstream is kept warm: the second saw the start-up probe, nothing else.
    assert_eq!(b.connections().len(), 1, "{}", b.transcript());
    assert_eq!(metric(&metrics(m), &idle(1)), 0.0);
    // The first upstream dies: its port is closed, and so are its pooled connections.
    drop(a);
    send_one(&mx, "127.0.0.2", "to the second");
    let text = metrics(m);
    assert_eq!(metric(&text, &discarded(0)), 2.0, "{text}");
    let accepted = b.accepted();
    assert_eq!(accepted.len(), 1, "{}", b.transcript());
    let x = xclients(&b.connections()[accepted[0].conn]).len();
    assert_eq!(x, 1, "{}", b.transcript());
}

#[test]
fn a_pooled_connection_never_serves_two_sessions() {
    if !support::require(&["curl"], false) {
        return;
    }
    // The fake, like Postfix, refuses a second XCLIENT on one connection.
    let up = FakeUpstream::start(Script::default());
    let m = metrics_addr();
    let mx = MxGuard::start(MxOpts::new(up.addr).config(&pool_config(m, 2, "60s")));
    wait_metric(m, &idle(0), 2.0);
    // Three clients at a time, four rounds, two messages per session (a session reuses
    // its own connection; no one else does).
    let sources: Vec<String> = (2..14).map(|i| format!("127.0.0.{i}")).collect();
    for round in sources.chunks(3) {
        std::thread::scope(|s| {
            for source in round {
                let mx = &mx;
                s.spawn(move || {
                    let mut c = RawClient::connect_from(mx.addr, Some(source)).unwrap();
                    assert_eq!(c.reply().code, 220);
                    c.ehlo("client.example");
                    for n in 0..2 {
                        let r = c.transaction(
                            "a@x.test",
                            &["b@d.test"],
                            &body(&format!("{source} {n}")),
                        );
                        assert!(
                            r.iter().all(|r| r.code < 400),
                            "{source}: {r:?}\n{}",
                            mx.log()
                        );
                    }
                    assert_eq!(c.cmd("QUIT").code, 221);
                });
            }
        });
    }
    assert!(
        metric(&metrics(m), &hits(0)) >= 2.0,
        "the pool served sessions"
    );
    let conns = up.connections();
    let mut sessions_per_client: BTreeMap<String, usize> = BTreeMap::new();
    for c in &conns {
        let x = xclients(c);
        assert!(
            x.len() <= 1,
            "two XCLIENTs on one connection: {:?}",
            c.commands
        );
        if let Some(line) = x.first() {
            *sessions_per_client
                .entry(xclient_addr(line).to_owned())
                .or_default() += 1;
        }
        let mail = c.commands.iter().position(|l| l.starts_with("MAIL"));
        if let Some(mail) = mail {
            let xclient = c.commands.iter().position(|l| l.starts_with("XCLIENT"));
            assert!(
                xclient.is_some_and(|x| x < mail),
                "MAIL before XCLIENT: {:?}",
                c.commands
            );
        }
    }
    let expected: BTreeMap<String, usize> = sources.iter().map(|s| (s.clone(), 1)).collect();
    assert_eq!(sessions_per_client, expected, "one connection per session");
    let accepted = up.accepted();
    assert_eq!(accepted.len(), 2 * sources.len());
    for msg in &accepted {
        let source = String::from_utf8_lossy(&msg.raw)
            .lines()
            .find_map(|l| l.strip_prefix("Subject: 127.0.0."))
            .map(|rest| format!("127.0.0.{}", rest.split(' ').next().unwrap_or("")))
            .unwrap_or_default();
        let x = xclients(&conns[msg.conn]);
        assert_eq!(
            xclient_addr(x[0]),
            source,
            "a message went upstream as another client"
        );
    }
}

#[test]
fn with_the_pool_off_sessions_connect_as_before() {
    if !support::require(&["curl"], false) {
        return;
    }
    let up = FakeUpstream::start(Script::default());
    let m = metrics_addr();
    let mx = MxGuard::start(MxOpts::new(up.addr).config(&pool_config(m, 0, "30s")));
    send_one(&mx, "127.0.0.2", "no pool");
    let text = metrics(m);
    assert_eq!(metric(&text, &misses(0, "disabled")), 1.0, "{text}");
    assert_eq!(metric(&text, &hits(0)), 0.0);
    assert_eq!(metric(&text, &idle(0)), 0.0);
    // The start-up probe and the session's own connection, nothing else.
    let conns = up.connections();
    assert_eq!(conns.len(), 2, "{}", up.transcript());
    assert_eq!(conns[0].commands.last().map(String::as_str), Some("QUIT"));
    assert!(
        conns[1].commands[1].starts_with("XCLIENT"),
        "XCLIENT right after our EHLO: {:?}",
        conns[1].commands
    );
    assert_eq!(up.accepted().len(), 1);
}

#[test]
fn idle_connections_are_closed_after_max_idle_and_refilled() {
    if !support::require(&["curl"], false) {
        return;
    }
    let up = FakeUpstream::start(Script::default());
    let m = metrics_addr();
    let _mx = MxGuard::start(MxOpts::new(up.addr).config(&pool_config(m, 2, "1s")));
    // Each pooled connection is QUIT unused after a second, and replaced.
    let text = support::wait_for(WAIT, "two connections expired", || {
        let text = metrics(m);
        (metric(&text, "mxguard_upstream_pool_expired_total{upstream=\"0\"}") >= 2.0)
            .then_some(text)
    });
    let unused: Vec<ConnRecord> = support::wait_for(WAIT, "the QUITs at the upstream", || {
        let unused: Vec<ConnRecord> = up
            .connections()
            .into_iter()
            .skip(1) // the start-up probe
            .filter(|c| c.commands.len() == 2 && c.commands[1] == "QUIT")
            .collect();
        (unused.len() >= 2).then_some(unused)
    });
    assert!(
        unused.iter().all(|c| c.commands[0].starts_with("EHLO ")),
        "{unused:?}"
    );
    wait_metric(m, &idle(0), 2.0);
    assert!(up.connections().len() >= 5, "{text}\n{}", up.transcript());
}

#[test]
fn idle_connections_are_quit_at_shutdown() {
    if !support::require(&["curl"], false) {
        return;
    }
    let up = FakeUpstream::start(Script::default());
    let m = metrics_addr();
    let mut mx = MxGuard::start(MxOpts::new(up.addr).config(&pool_config(m, 2, "60s")));
    wait_metric(m, &idle(0), 2.0);
    let status = mx.stop(Duration::from_secs(20)).expect("a clean exit");
    assert!(status.success(), "{status:?}\n{}", mx.log());
    let conns = up.connections();
    assert_eq!(
        conns.len(),
        3,
        "the probe and two pooled: {}",
        up.transcript()
    );
    for c in &conns {
        assert_eq!(
            c.commands.last().map(String::as_str),
            Some("QUIT"),
            "{:?}",
            c.commands
        );
    }
}
