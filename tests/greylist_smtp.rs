//! Greylisting and rate limits through the real binary: the whole greylist cycle over
//! SMTP, a pass that survives a restart with the `file` store, and two mxguard processes
//! sharing one real `redis-server` (greylist seen by both, one rate budget for both, an
//! outage handled by the fail mode, then recovery).
//!
//! The greylist delay is the shortest allowed (1 s): a retry before it is refused, and
//! retries are polled until one passes. The timing rules themselves are covered with a
//! fake clock in the store tests.

mod support;

use std::time::{Duration, Instant};

use support::client::RawClient;
use support::fake_upstream::{FakeUpstream, Script};
use support::mxguard::{MxGuard, MxOpts};
use support::redis::RedisServer;
use support::tempdir;

const GREYLIST: &str = r#"
rules:
  - name: greylist-all
    stage: rcpt
    then: { greylist: { delay: 1s, retry_window: 1h, expire: 1d, auto_allow_after: 0 } }
"#;

const RATE: &str = r#"
rules:
  - name: per-client-messages
    stage: mail
    if: { client_ip: { in: [127.0.0.3] } }
    then: { rate_limit: { key: [client_ip], rate: 3/1h, burst: 3 } }
"#;

fn start(up: &FakeUpstream, store: &str, rules: &[(&str, &str)]) -> MxGuard {
    let mut opts = MxOpts::new(up.addr);
    opts.rules = rules
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect();
    opts.args = vec!["--store".into(), store.into()];
    MxGuard::start(opts)
}

/// MAIL + RCPT from a fresh session from 127.0.0.2; returns the RCPT reply (or the MAIL
/// reply if refused).
fn try_rcpt(mx: &MxGuard, from: &str, to: &str) -> support::client::Reply {
    try_rcpt_from(mx, "127.0.0.2", from, to)
}

fn try_rcpt_from(mx: &MxGuard, source: &str, from: &str, to: &str) -> support::client::Reply {
    let mut c = RawClient::connect_from(mx.addr, Some(source)).expect("connect");
    assert_eq!(c.reply().code, 220);
    c.ehlo("client.example");
    let m = c.cmd(&format!("MAIL FROM:<{from}>"));
    if m.code != 250 {
        return m;
    }
    let r = c.cmd(&format!("RCPT TO:<{to}>"));
    c.cmd("QUIT");
    r
}

/// Retries a greylisted triplet until it is accepted (each try a real SMTP session).
fn retry_until_accepted(mx: &MxGuard, from: &str, to: &str) {
    support::wait_for(
        Duration::from_secs(10),
        "the greylisted retry to pass",
        || {
            let r = try_rcpt(mx, from, to);
            assert!(r.code == 250 || r.is("451 4.7.1"), "{r}");
            (r.code == 250).then_some(())
        },
    );
}

#[test]
fn greylist_cycle_and_a_pass_survive_a_restart_with_the_file_store() {
    let up = FakeUpstream::start(Script::default());
    let dir = tempdir("mxg-grey.");
    let store = format!("file:{}", dir.path().join("grey.redb").display());
    let mx = start(&up, &store, &[("10-grey.yaml", GREYLIST)]);
    let t0 = Instant::now();
    let first = try_rcpt(&mx, "prvs=1234abcd=alice@example.org", "bob@example.net");
    assert!(first.is("451 4.7.1"), "{first}");
    assert!(first.raw().contains("try again"), "{first}");
    // Same triplet (the BATV tag changes on each attempt): too early, then it passes.
    let early = try_rcpt(&mx, "prvs=5555eeee=alice@example.org", "bob@example.net");
    assert!(
        early.is("451 4.7.1"),
        "a retry before the delay passed: {early}"
    );
    retry_until_accepted(&mx, "prvs=9999ffff=alice@example.org", "bob@example.net");
    assert!(
        t0.elapsed() >= Duration::from_secs(1),
        "passed before the delay"
    );
    // Another recipient is another triplet.
    assert!(try_rcpt(&mx, "alice@example.org", "carol@example.net").is("451 4.7.1"));
    drop(mx);

    let mx = start(&up, &store, &[("10-grey.yaml", GREYLIST)]);
    let after_restart = try_rcpt(&mx, "alice@example.org", "bob@example.net");
    assert_eq!(
        after_restart.code, 250,
        "the pass was lost on restart: {after_restart}"
    );
}

#[test]
fn two_instances_share_greylist_and_rate_limits_through_redis() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let up = FakeUpstream::start(Script::default());
    let rules = [("10-rate.yaml", RATE), ("20-grey.yaml", GREYLIST)];
    let a = start(&up, &redis.url(), &rules);
    let b = start(&up, &redis.url(), &rules);

    // Greylisted through A, passed through B after the delay.
    assert!(try_rcpt(&a, "x@example.org", "y@example.net").is("451 4.7.1"));
    retry_until_accepted(&b, "x@example.org", "y@example.net");
    assert_eq!(try_rcpt(&a, "x@example.org", "y@example.net").code, 250);

    // Three messages per client address in all, whichever instance gets them (this client
    // is 127.0.0.3; its RCPTs are greylisted, its MAILs count).
    let mail = |mx: &MxGuard| try_rcpt_from(mx, "127.0.0.3", "r@example.org", "s@example.net");
    assert!(mail(&a).is("451 4.7.1"));
    assert!(mail(&b).is("451 4.7.1"));
    assert!(mail(&a).is("451 4.7.1"));
    let refused = mail(&b);
    assert!(
        refused.is("451 4.7.0"),
        "the fourth MAIL must hit the shared limit: {refused}"
    );
    assert!(refused.raw().contains("try again"), "{refused}");
    assert!(mail(&a).is("451 4.7.0"));

    // Redis down: the default fail mode is open for both actions, and it is counted.
    let port = redis.port;
    redis.kill();
    let during = try_rcpt(&a, "new@example.org", "y@example.net");
    assert_eq!(during.code, 250, "fail open while Redis is down: {during}");
    let log = a.wait_log("store", Duration::from_secs(10));
    assert!(log.contains("WARN"), "{log}");

    // Redis back on the same port: both instances use it again by themselves.
    let _redis = RedisServer::start_on(Some(port)).expect("restart redis");
    support::wait_for(
        Duration::from_secs(20),
        "greylisting after Redis returns",
        || {
            try_rcpt(&b, "later@example.org", "z@example.net")
                .is("451 4.7.1")
                .then_some(())
        },
    );
    retry_until_accepted(&a, "later@example.org", "z@example.net");
}

/// `mxguard greylist --admin` edits a running server's (locked) file store: list the
/// pending triplet, allow it so the retry passes at once, purge it so it is new again.
#[test]
fn admin_endpoint_lists_allows_and_purges_on_a_running_server() {
    let up = FakeUpstream::start(Script::default());
    let metrics = format!("127.0.0.1:{}", support::free_port());
    let mut opts = MxOpts::new(up.addr).config("admin_endpoints: true\n");
    opts.rules = vec![(
        "10-grey.yaml".into(),
        GREYLIST
            .replace("delay: 1s", "delay: 1h")
            .replace("retry_window: 1h", "retry_window: 2h"),
    )];
    opts.args = vec!["--metrics".into(), metrics.clone()];
    let mx = MxGuard::start(opts);
    let admin = |args: &[&str]| -> String {
        let out = std::process::Command::new(support::mxguard::BIN)
            .args(["greylist", "--admin", &metrics])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(try_rcpt(&mx, "a@example.org", "b@example.net").is("451 4.7.1"));
    let list = admin(&["list"]);
    let line = list
        .lines()
        .find(|l| l.contains("a@example.org") && l.contains("pending"))
        .unwrap_or_else(|| panic!("{list}"));
    let key = line.split_whitespace().nth(1).unwrap().to_owned();
    assert_eq!(admin(&["allow", &key]), format!("allowed {key}\n"));
    assert_eq!(try_rcpt(&mx, "a@example.org", "b@example.net").code, 250);
    assert!(admin(&["purge", "a@example.org"]).starts_with("purged 1 entries"));
    assert!(try_rcpt(&mx, "a@example.org", "b@example.net").is("451 4.7.1"));
    assert!(
        mx.log()
            .contains("greylist changed through the admin endpoint")
    );
}
