//! Issue 2: upstream faults against a scripted fake upstream. In every case the client
//! never sees `250` for a message the upstream did not accept with `250`, gets a `4xx`
//! (so the sender retries), and the upstream got no message (or exactly one).
//! Invariant 1 of DESIGN.md: nothing is lost, nothing is faked.

mod support;

use std::time::{Duration, Instant};

use support::client::{RawClient, Reply};
use support::fake_upstream::{FakeUpstream, Fault, Script, Stage};
use support::mxguard::{MxGuard, MxOpts};

/// Upstream deadlines short enough for a test. ASSUMED config keys (see support/mxguard.rs).
const SHORT_UPSTREAM_TIMEOUTS: &str = "upstreams:\n  - address: \"{upstream}\"\n    connect_timeout: 2s\n    command_timeout: 2s\n    data_timeout: 2s\n";

fn body() -> Vec<u8> {
    let mut b = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: fault test\r\n\r\n".to_vec();
    for i in 0..4000 {
        b.extend_from_slice(
            format!("line {i:05} of the body, long enough to need several writes\r\n").as_bytes(),
        );
    }
    b
}

/// One transaction, tolerant of the proxy failing at any step (4xx at MAIL, RCPT, DATA or
/// the end, or a closed connection). Returns the replies seen.
fn attempt(mx: &MxGuard, within: Duration) -> Vec<Reply> {
    let mut c = RawClient::connect(mx.addr);
    c.timeout = within;
    c.ehlo("client.example");
    let mut replies = Vec::new();
    let steps: [&[u8]; 3] = [
        b"MAIL FROM:<a@example.org>\r\n",
        b"RCPT TO:<b@example.net>\r\n",
        b"DATA\r\n",
    ];
    for s in steps {
        if c.try_send(s).is_err() {
            return replies;
        }
        match c.reply_within(within) {
            Some(r) => {
                let go = r.code == 250 || r.code == 354;
                replies.push(r);
                if !go {
                    return replies;
                }
            }
            None => return replies,
        }
    }
    let _ = c.try_send(&body());
    let _ = c.try_send(b".\r\n");
    if let Some(r) = c.reply_within(within) {
        replies.push(r);
    }
    let _ = c.try_send(b"QUIT\r\n");
    replies
}

#[track_caller]
fn assert_no_false_250(replies: &[Reply], what: &str, mx: &MxGuard, up: &FakeUpstream) {
    let ctx = || {
        format!(
            "{what}: replies {replies:?}\n--- mxguard log ---\n{}\n--- upstream ---\n{}",
            mx.log(),
            up.transcript()
        )
    };
    let last = replies.last().unwrap_or_else(|| {
        panic!(
            "no reply at all (connection dropped without a 4xx) — {}",
            ctx()
        )
    });
    // the client was told to come back later: 4xx, never 250 for the message, never 5xx
    // for an upstream fault (that would make the sender bounce a message nobody refused)
    assert_eq!(last.class(), 4, "the last reply must be a 4xx — {}", ctx());
    let got_354 = replies.iter().any(|r| r.code == 354);
    if got_354 {
        assert_ne!(last.code, 250, "{}", ctx());
    }
    assert!(
        last.is("451 4.4.1")
            || last.is("421 4.4.2")
            || last.code == 421
            || last.code == 451
            || last.code == 450,
        "expected 451 4.4.1 / 421 4.4.2 (or the upstream's own 4xx) — {}",
        ctx()
    );
}

#[test]
fn control_a_healthy_upstream_gets_exactly_one_canonical_message() {
    let up = FakeUpstream::start(Script::default());
    let mx = MxGuard::start(MxOpts::new(up.addr));
    let r = attempt(&mx, Duration::from_secs(20));
    assert_eq!(r.last().map(|r| r.code), Some(250), "{r:?}\n{}", mx.log());
    let m = up.messages();
    assert_eq!(m.len(), 1, "{}", up.transcript());
    support::assert_bytes_eq(&m[0].content(), &body(), "content relayed upstream");
    assert!(m[0].raw.ends_with(b"\r\n.\r\n"));
    // XCLIENT carried the real client
    let cmds: Vec<String> = up
        .connections()
        .into_iter()
        .flat_map(|c| c.commands)
        .collect();
    assert!(
        cmds.iter()
            .any(|c| c.starts_with("XCLIENT") && c.contains("ADDR=127.0.0.2")),
        "XCLIENT with the client's address expected upstream: {cmds:?}"
    );
}

#[test]
fn upstream_refusing_connections_gives_4xx_and_no_message() {
    let mut up = FakeUpstream::start(Script::default());
    // No warm pool: connections it opened before the listener closed would (rightly)
    // still carry the mail.
    let config = format!("{SHORT_UPSTREAM_TIMEOUTS}upstream_pool: {{ size: 0 }}\n");
    let mx = MxGuard::start(MxOpts::new(up.addr).config(&config));
    up.stop_listening();
    let r = attempt(&mx, Duration::from_secs(20));
    assert_no_false_250(&r, "upstream refuses connections", &mx, &up);
    assert!(up.messages().is_empty());
}

#[test]
fn upstream_down_from_the_start_gives_4xx() {
    // nothing listens on this port; mxguard must still start and answer 4xx, not crash
    let port = support::free_port();
    let addr = ([127, 0, 0, 1], port).into();
    let up = FakeUpstream::start(Script::default()); // only for the diagnostics helper
    let mx = MxGuard::start(MxOpts::new(addr).config(SHORT_UPSTREAM_TIMEOUTS));
    let r = attempt(&mx, Duration::from_secs(20));
    assert_no_false_250(&r, "no upstream at all", &mx, &up);
}

#[test]
fn upstream_421_at_rcpt_gives_4xx_and_no_message() {
    let up = FakeUpstream::start(Script::with_fault(Fault::Reply {
        stage: Stage::Rcpt,
        reply: "421 4.3.2 fake upstream shutting down".into(),
        close: true,
    }));
    let mx = MxGuard::start(MxOpts::new(up.addr).config(SHORT_UPSTREAM_TIMEOUTS));
    let r = attempt(&mx, Duration::from_secs(20));
    assert_no_false_250(&r, "421 at RCPT", &mx, &up);
    assert!(
        r.iter().all(|r| r.code != 354),
        "no DATA after a failed RCPT: {r:?}"
    );
    assert!(up.messages().is_empty());
}

#[test]
fn upstream_reset_mid_data_gives_4xx_and_no_message() {
    let up = FakeUpstream::start(Script::with_fault(Fault::ResetMidData { after: 20_000 }));
    let mx = MxGuard::start(MxOpts::new(up.addr).config(SHORT_UPSTREAM_TIMEOUTS));
    let r = attempt(&mx, Duration::from_secs(20));
    assert_no_false_250(&r, "reset mid-DATA", &mx, &up);
    assert!(up.messages().is_empty(), "{:?}", up.messages().len());
    assert_eq!(up.partial(), 1, "the upstream saw the DATA start");
}

#[test]
fn upstream_stall_after_the_dot_gives_4xx_within_the_deadline() {
    let up = FakeUpstream::start(Script::with_fault(Fault::Stall(Stage::DataEnd)));
    let mx = MxGuard::start(MxOpts::new(up.addr).config(SHORT_UPSTREAM_TIMEOUTS));
    let t0 = Instant::now();
    let r = attempt(&mx, Duration::from_secs(30));
    assert_no_false_250(&r, "stall after the final dot", &mx, &up);
    assert!(
        t0.elapsed() < Duration::from_secs(25),
        "took {:?}",
        t0.elapsed()
    );
    assert!(up.messages().len() <= 1);
    assert!(up.accepted().is_empty());
}

#[test]
fn upstream_stall_at_rcpt_gives_4xx_within_the_deadline() {
    let up = FakeUpstream::start(Script::with_fault(Fault::Stall(Stage::Rcpt)));
    let mx = MxGuard::start(MxOpts::new(up.addr).config(SHORT_UPSTREAM_TIMEOUTS));
    let r = attempt(&mx, Duration::from_secs(30));
    assert_no_false_250(&r, "stall at RCPT", &mx, &up);
    assert!(up.messages().is_empty());
}

#[test]
fn upstream_451_after_the_dot_reaches_the_client_and_exactly_one_message_was_sent() {
    let up = FakeUpstream::start(Script::with_fault(Fault::Reply {
        stage: Stage::DataEnd,
        reply: "451 4.3.0 fake upstream tempfails after the dot".into(),
        close: false,
    }));
    let mx = MxGuard::start(MxOpts::new(up.addr).config(SHORT_UPSTREAM_TIMEOUTS));
    let r = attempt(&mx, Duration::from_secs(20));
    assert_no_false_250(&r, "451 after the dot", &mx, &up);
    assert_eq!(
        r.last().unwrap().raw(),
        "451 4.3.0 fake upstream tempfails after the dot",
        "the upstream's own reply passes through verbatim"
    );
    assert_eq!(up.messages().len(), 1);
    assert!(up.accepted().is_empty());
}

#[test]
fn upstream_554_after_the_dot_passes_through() {
    let up = FakeUpstream::start(Script::with_fault(Fault::Reply {
        stage: Stage::DataEnd,
        reply: "554 5.7.1 fake upstream rejects the content".into(),
        close: false,
    }));
    let mx = MxGuard::start(MxOpts::new(up.addr));
    let r = attempt(&mx, Duration::from_secs(20));
    assert_eq!(
        r.last().map(|r| r.raw()),
        Some("554 5.7.1 fake upstream rejects the content".to_string()),
        "{r:?}"
    );
    assert_eq!(up.messages().len(), 1);
}

#[test]
fn upstream_without_smtputf8_is_not_advertised() {
    let mut script = Script::default();
    script.caps.retain(|c| c != "SMTPUTF8");
    let up = FakeUpstream::start(script);
    let mx = MxGuard::start(MxOpts::new(up.addr));
    let mut c = RawClient::connect(mx.addr);
    let e = c.ehlo("client.example");
    assert!(
        !e.lines.iter().any(|l| l.eq_ignore_ascii_case("SMTPUTF8")),
        "mxguard advertises SMTPUTF8 although the upstream lacks it: {e}"
    );
    for want in ["PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES"] {
        assert!(
            e.lines.iter().any(|l| l.eq_ignore_ascii_case(want)),
            "{want} missing: {e}"
        );
    }
    assert!(
        e.lines
            .iter()
            .any(|l| l.to_ascii_uppercase().starts_with("SIZE")),
        "SIZE missing: {e}"
    );
    assert!(
        !e.lines
            .iter()
            .any(|l| l.to_ascii_uppercase().starts_with("XCLIENT")),
        "XCLIENT must never be offered to clients: {e}"
    );
}
