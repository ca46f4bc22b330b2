//! Issue 2, relay side, against the scripted fake upstream: the upstream session is
//! reused across a client's transactions; the client is carried by XCLIENT (xtext-encoded
//! values), else XFORWARD, else a Received header; several upstreams fail over in order.

mod support;

use std::time::Duration;

use support::client::RawClient;
use support::fake_upstream::{FakeUpstream, Script};
use support::mxguard::{MxGuard, MxOpts};

fn send_n(mx: &MxGuard, helo: &str, n: usize) {
    let mut c = RawClient::connect(mx.addr);
    c.ehlo(helo);
    for i in 0..n {
        let body = format!("Subject: m{i}\r\n\r\nbody {i}\r\n");
        let r = c.transaction("a@example.org", &["b@example.net"], body.as_bytes());
        assert_eq!(r.last().unwrap().code, 250, "{r:?}\n{}", mx.log());
    }
    assert_eq!(c.cmd("QUIT").code, 221);
}

/// Connections on which the upstream saw a MAIL command (start-up probes only say EHLO).
fn relay_connections(up: &FakeUpstream) -> Vec<support::fake_upstream::ConnRecord> {
    up.connections()
        .into_iter()
        .filter(|c| {
            c.commands
                .iter()
                .any(|l| l.to_ascii_uppercase().starts_with("MAIL"))
        })
        .collect()
}

#[test]
fn upstream_session_is_reused_across_a_clients_transactions() {
    let up = FakeUpstream::start(Script::default());
    let mx = MxGuard::start(MxOpts::new(up.addr));
    send_n(&mx, "client.example", 3);
    assert_eq!(up.messages().len(), 3);
    let conns = relay_connections(&up);
    assert_eq!(
        conns.len(),
        1,
        "three transactions of one client should share one upstream session: {:?}",
        conns.iter().map(|c| &c.commands).collect::<Vec<_>>()
    );
    let xclients = conns[0]
        .commands
        .iter()
        .filter(|l| l.starts_with("XCLIENT"))
        .count();
    assert_eq!(
        xclients, 1,
        "one XCLIENT per upstream connection: {:?}",
        conns[0].commands
    );
}

/// A large message goes upstream as exactly its canonical DATA form: the long ordinary
/// stretches written straight from the spool, the dot lines stuffed, whether the spool
/// held it in memory or spilled it to a file.
#[test]
fn a_large_message_reaches_the_upstream_stuffed_exactly_from_memory_and_from_a_file() {
    let msg = support::client::large_message_with_dot_lines("big", 300 * 1024);
    let stuffed = support::client::dot_stuff(&msg);
    let mut want = stuffed.clone();
    want.extend_from_slice(b".\r\n");
    for (spool, config) in [
        ("memory", ""),
        ("file", "limits:\n  memory_spool_threshold: 16KiB\n"),
    ] {
        let up = FakeUpstream::start(Script::default());
        let mx = MxGuard::start(MxOpts::new(up.addr).config(config));
        let mut c = RawClient::connect(mx.addr);
        c.ehlo("client.example");
        let r = c.transaction("a@example.org", &["b@example.net"], &stuffed);
        assert_eq!(r.last().unwrap().code, 250, "{spool}: {r:?}\n{}", mx.log());
        let got = up.messages();
        assert_eq!(got.len(), 1, "{spool}");
        support::assert_bytes_eq(&got[0].raw, &want, spool);
    }
}

#[test]
fn xclient_values_are_xtext_encoded_and_followed_by_ehlo() {
    let up = FakeUpstream::start(Script::default());
    let mx = MxGuard::start(MxOpts::new(up.addr));
    send_n(&mx, "weird+name=x", 1);
    let conns = relay_connections(&up);
    let cmds = &conns[0].commands;
    let i = cmds
        .iter()
        .position(|l| l.starts_with("XCLIENT"))
        .unwrap_or_else(|| panic!("no XCLIENT: {cmds:?}"));
    let x = &cmds[i];
    assert!(x.contains("ADDR=127.0.0.2"), "{x}");
    assert!(
        x.contains("HELO=weird+2Bname+3Dx"),
        "HELO must be xtext-encoded: {x}"
    );
    assert!(x.contains("PROTO=ESMTP"), "{x}");
    assert!(
        cmds[i + 1].to_ascii_uppercase().starts_with("EHLO"),
        "EHLO again after XCLIENT: {cmds:?}"
    );
    for param in x.split_whitespace().skip(1) {
        assert!(param.len() <= 255 + 10, "{param}");
    }
}

#[test]
fn xforward_when_the_upstream_lacks_xclient() {
    let mut script = Script::default();
    script.caps.retain(|c| !c.starts_with("XCLIENT"));
    script
        .caps
        .push("XFORWARD NAME ADDR PROTO HELO SOURCE PORT IDENT".into());
    let up = FakeUpstream::start(script);
    let mx = MxGuard::start(MxOpts::new(up.addr));
    send_n(&mx, "client.example", 1);
    let cmds: Vec<String> = relay_connections(&up)
        .into_iter()
        .flat_map(|c| c.commands)
        .collect();
    assert!(!cmds.iter().any(|l| l.starts_with("XCLIENT")), "{cmds:?}");
    let xf = cmds
        .iter()
        .filter(|l| l.starts_with("XFORWARD"))
        .cloned()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        xf.contains("ADDR=127.0.0.2"),
        "XFORWARD with the client's address: {cmds:?}"
    );
    assert!(xf.contains("HELO=client.example"), "{cmds:?}");
    let mail = cmds.iter().position(|l| l.starts_with("MAIL")).unwrap();
    let last_xf = cmds
        .iter()
        .rposition(|l| l.starts_with("XFORWARD"))
        .unwrap();
    assert!(last_xf < mail, "XFORWARD goes before MAIL: {cmds:?}");
}

#[test]
fn received_header_when_the_upstream_has_neither() {
    let mut script = Script::default();
    script.caps.retain(|c| !c.starts_with("XCLIENT"));
    let up = FakeUpstream::start(script);
    let mx = MxGuard::start(MxOpts::new(up.addr));
    send_n(&mx, "client.example", 1);
    let m = &up.messages()[0];
    let content = String::from_utf8_lossy(&m.content()).into_owned();
    assert!(
        content.starts_with("Received: "),
        "a Received trace header first: {content}"
    );
    let hdr: String = content
        .split("\r\n")
        .take_while(|l| !l.is_empty())
        .take(4)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(hdr.contains("127.0.0.2"), "{hdr}");
    assert!(hdr.contains("client.example"), "{hdr}");
    assert!(
        content.ends_with("Subject: m0\r\n\r\nbody 0\r\n"),
        "the message follows unchanged: {content}"
    );
}

#[test]
fn failover_to_the_second_upstream_when_the_first_refuses() {
    let up = FakeUpstream::start(Script::default());
    let dead = support::free_port();
    let mut opts = MxOpts::new(up.addr).config(&format!(
        "upstreams:\n  - address: \"127.0.0.1:{dead}\"\n    connect_timeout: 2s\n  - address: \"{{upstream}}\"\n"
    ));
    opts.upstream_flag = false;
    let mx = MxGuard::start(opts);
    send_n(&mx, "client.example", 1);
    assert_eq!(up.messages().len(), 1);
}

#[test]
fn sigterm_lets_the_transaction_in_flight_finish() {
    let up = FakeUpstream::start(Script::default());
    let mut mx = MxGuard::start(MxOpts::new(up.addr));
    let mut c = RawClient::connect(mx.addr);
    c.ehlo("client.example");
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<b@example.net>").code, 250);
    assert_eq!(c.cmd("DATA").code, 354);
    c.send(b"Subject: in flight\r\n\r\nfirst half\r\n");
    // SIGTERM now, finish the message after it
    let pid = mx.pid();
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    mx.wait_log("shutting down", Duration::from_secs(10));
    c.send(b"second half\r\n.\r\n");
    let r = c.reply_within(Duration::from_secs(20));
    assert_eq!(
        r.as_ref().map(|r| r.code),
        Some(250),
        "the transaction in flight completes: {r:?}\n{}",
        mx.log()
    );
    let st = mx.stop(Duration::from_secs(40)).expect("exits");
    assert!(st.success(), "{st}");
    assert_eq!(up.messages().len(), 1);
}

/// A slow client: while it is still sending its message, NOOPs keep the waiting upstream
/// transaction alive (Postfix would otherwise time the idle session out after
/// `smtpd_timeout`), and the message is then relayed on the same session.
#[test]
fn upstream_is_kept_alive_while_a_slow_client_sends() {
    let up = FakeUpstream::start(Script::default());
    let mx = MxGuard::start(
        MxOpts::new(up.addr)
            .config("upstreams:\n  - address: \"{upstream}\"\n    keepalive: 100ms\n"),
    );
    let mut c = RawClient::connect(mx.addr);
    c.ehlo("client.example");
    assert_eq!(c.cmd("MAIL FROM:<slow@example.org>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<b@example.net>").code, 250);
    assert_eq!(c.cmd("DATA").code, 354);
    c.send(b"Subject: slow\r\n\r\n");
    // The client's own pace (this is the behaviour under test, not a synchronisation):
    // well past several keepalive intervals.
    for i in 0..5 {
        std::thread::sleep(Duration::from_millis(150));
        c.send(format!("line {i}\r\n").as_bytes());
    }
    c.send(b".\r\n");
    assert_eq!(c.reply().code, 250);
    let conns = up.connections();
    let noops = conns
        .iter()
        .flat_map(|c| c.commands.iter())
        .filter(|c| c.eq_ignore_ascii_case("NOOP"))
        .count();
    assert!(
        noops >= 3,
        "expected keepalive NOOPs upstream, got {noops}: {:?}",
        up.transcript()
    );
    assert_eq!(up.accepted().len(), 1);
    assert!(up.accepted()[0].content().ends_with(b"line 4\r\n"));
}
