//! Issue 15: restarts. `kill -9` in the middle of a message and after the final dot while
//! the upstream is still deciding: no client is ever told `250` for a message the upstream
//! did not accept, the spool files the crash left are removed at the next start, and the
//! file store opens cleanly with its greylist passes. SIGTERM under load finishes the
//! transactions in flight (each `250` is the upstream's), tells idle sessions `421 4.3.2`
//! and exits 0 within `shutdown_grace`; SIGHUP under load reloads the rules without
//! failing a session.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::chaos_upstream::{ChaosUpstream, ConnFault, Fate, Planner, Timing, TxnFault};
use support::client::{RawClient, Reply, dot_stuff};
use support::fake_upstream::{FakeUpstream, Fault, Script, Stage};
use support::mxguard::{MxGuard, MxOpts};
use support::wait_for;

fn spool_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "spool"))
                .collect()
        })
        .unwrap_or_default()
}

fn message(tag: &str, size: usize) -> Vec<u8> {
    let mut b = format!("Subject: {tag}\r\nMessage-ID: <{tag}@example.org>\r\n\r\n").into_bytes();
    let mut i = 0;
    while b.len() < size {
        b.extend_from_slice(format!("{tag} line {i:06} of the message body\r\n").as_bytes());
        i += 1;
    }
    b
}

/// EHLO, MAIL, RCPT, DATA up to the 354.
fn open_data(addr: SocketAddr, from: &str) -> RawClient {
    let mut c = RawClient::connect(addr);
    c.ehlo("client.example");
    assert_eq!(c.cmd(&format!("MAIL FROM:<{from}>")).code, 250);
    assert_eq!(c.cmd("RCPT TO:<rcpt@dest.example>").code, 250);
    assert_eq!(c.cmd("DATA").code, 354);
    c
}

const SPOOLING: &str = "store: memory\nlimits:\n  memory_spool_threshold: 16KiB\n";

/// After a crash: the next start removes the spool files left behind, and serves.
#[track_caller]
fn restart_cleans_spool(mx: &mut MxGuard, up_addr_ok: impl Fn(&MxGuard)) {
    let spool = mx.state_dir().join("spool");
    assert!(
        !spool_files(&spool).is_empty(),
        "the crash should have left a spool file behind (else this proves nothing)"
    );
    mx.restart();
    assert!(
        spool_files(&spool).is_empty(),
        "spool files after the restart: {:?}",
        spool_files(&spool)
    );
    up_addr_ok(mx);
}

#[test]
fn kill_9_mid_data_tells_nobody_250_and_the_next_start_removes_the_spool_file() {
    let up = FakeUpstream::start(Script::default());
    let mut mx = MxGuard::start(MxOpts::new(up.addr).config(SPOOLING));
    let spool = mx.state_dir().join("spool");
    let mut c = open_data(mx.addr, "crash@example.org");
    let body = dot_stuff(&message("crash", 400 * 1024));
    c.send(&body[..body.len() / 2]);
    wait_for(
        Duration::from_secs(10),
        "the message to spill to a spool file",
        || (!spool_files(&spool).is_empty()).then_some(()),
    );
    let status = mx.kill();
    assert_eq!(status.code(), None, "killed by a signal: {status}");
    let _ = c.try_send(&body[body.len() / 2..]);
    let _ = c.try_send(b".\r\n");
    assert_eq!(
        c.reply_within(Duration::from_secs(5)),
        None,
        "a reply after kill -9?"
    );
    assert!(up.messages().is_empty(), "{}", up.transcript());
    restart_cleans_spool(&mut mx, |mx| {
        let mut c = open_data(mx.addr, "after@example.org");
        c.send(&dot_stuff(b"Subject: after\r\n\r\nback\r\n"));
        c.send(b".\r\n");
        assert_eq!(c.reply().code, 250);
    });
    assert_eq!(up.accepted().len(), 1);
}

#[test]
fn kill_9_after_the_dot_while_the_upstream_decides_tells_nobody_250() {
    let up = FakeUpstream::start(Script::with_fault(Fault::Stall(Stage::DataEnd)));
    let mut mx = MxGuard::start(MxOpts::new(up.addr).config(SPOOLING));
    let mut c = open_data(mx.addr, "waiting@example.org");
    let body = message("waiting", 100 * 1024);
    c.send(&dot_stuff(&body));
    c.send(b".\r\n");
    // The upstream has the whole message and has not answered: mxguard is waiting.
    wait_for(
        Duration::from_secs(10),
        "the upstream to read the final dot",
        || (up.messages().len() == 1).then_some(()),
    );
    assert_eq!(up.messages()[0].final_reply, None);
    support::assert_bytes_eq(
        &up.messages()[0].content(),
        &body,
        "relayed before the crash",
    );
    mx.kill();
    let r = c.reply_within(Duration::from_secs(5));
    assert!(
        r.as_ref().is_none_or(|r| r.code != 250),
        "told {r:?} for a message the upstream never accepted"
    );
    restart_cleans_spool(&mut mx, |_| {});
}

/// Greylisting with a short delay and no auto-allow (every triplet counts by itself).
const GREYLIST: &str = r#"
rules:
  - name: grey
    stage: rcpt
    then: { greylist: { delay: 1s, auto_allow_after: 0 } }
"#;

fn rcpt_code(addr: SocketAddr, from: &str, to: &str) -> u16 {
    let mut c = RawClient::connect(addr);
    c.ehlo("client.example");
    assert_eq!(c.cmd(&format!("MAIL FROM:<{from}>")).code, 250);
    let r = c.cmd(&format!("RCPT TO:<{to}>"));
    let _ = c.try_send(b"QUIT\r\n");
    r.code
}

#[test]
fn the_file_store_opens_cleanly_after_kill_9_during_writes_and_keeps_greylist_passes() {
    let up = FakeUpstream::start(Script::default());
    let mut opts = MxOpts::new(up.addr);
    opts.rules = vec![("grey.yaml".into(), GREYLIST.into())];
    let mut mx = MxGuard::start(opts);
    assert!(mx.state_dir().join("mxguard.redb").exists());
    // One triplet passes: greylisted, retried after the delay, passed (fsynced).
    assert_eq!(
        rcpt_code(mx.addr, "old@example.org", "rcpt@dest.example"),
        451
    );
    std::thread::sleep(Duration::from_millis(1100)); // the greylist delay itself
    assert_eq!(
        rcpt_code(mx.addr, "old@example.org", "rcpt@dest.example"),
        250
    );

    // Then a stream of new triplets (store writes) while the process is killed.
    let stop = Arc::new(AtomicBool::new(false));
    let greylisted = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let (stop, greylisted, addr) = (stop.clone(), greylisted.clone(), mx.addr);
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut c) = RawClient::connect_from(addr, Some("127.0.0.2")) else {
                        return;
                    };
                    if c.reply_within(Duration::from_secs(2)).is_none()
                        || c.try_send(b"EHLO w.example\r\n").is_err()
                        || c.reply_within(Duration::from_secs(2)).is_none()
                    {
                        return;
                    }
                    loop {
                        n += 1;
                        let cmd = format!("MAIL FROM:<w{t}-{n}@example.org>\r\nRCPT TO:<r@dest.example>\r\nRSET\r\n");
                        if c.try_send(cmd.as_bytes()).is_err() {
                            break;
                        }
                        let replies: Vec<Option<Reply>> =
                            (0..3).map(|_| c.reply_within(Duration::from_secs(2))).collect();
                        match replies[1].as_ref() {
                            Some(r) if r.code == 451 => {
                                greylisted.fetch_add(1, Ordering::Relaxed);
                            }
                            // the session's error limit (or the kill): a new session
                            _ => break,
                        }
                    }
                }
            })
        })
        .collect();
    wait_for(Duration::from_secs(10), "greylist writes under way", || {
        (greylisted.load(Ordering::Relaxed) >= 200).then_some(())
    });
    mx.kill();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let before_kill = greylisted.load(Ordering::Relaxed);

    mx.restart(); // panics if the store does not open
    assert!(
        !mx.log().contains("state store"),
        "store trouble after the crash:\n{}",
        mx.log()
    );
    // The pass from before the crash holds: no greylisting for that triplet.
    assert_eq!(
        rcpt_code(mx.addr, "old@example.org", "rcpt@dest.example"),
        250
    );
    // Greylisting still works for strangers.
    assert_eq!(
        rcpt_code(mx.addr, "new@example.org", "rcpt@dest.example"),
        451
    );
    // How many of the first attempts greylisted just before the crash were remembered
    // (their commits are not fsynced; after a process crash the OS still has them).
    std::thread::sleep(Duration::from_millis(1100)); // the greylist delay itself
    let sample: Vec<u16> = (1..=20)
        .map(|n| rcpt_code(mx.addr, &format!("w0-{n}@example.org"), "r@dest.example"))
        .collect();
    let remembered = sample.iter().filter(|&&c| c == 250).count();
    eprintln!(
        "{before_kill} triplets greylisted before kill -9; of the first 20 retried after the restart, {remembered} passed (remembered)"
    );
    assert!(sample.iter().all(|&c| c == 250 || c == 451), "{sample:?}");
}

/// Transactions by MAIL FROM: `slow…` get their 250 after 1.5 s (within the grace),
/// `stuck…` never get an answer after the dot.
struct BySender;

impl Planner for BySender {
    fn conn(&self, _: usize, _: usize) -> ConnFault {
        ConnFault::None
    }
    fn txn(&self, _: usize, sender: &str) -> TxnFault {
        if sender.starts_with("stuck") {
            TxnFault::EndAcceptLate
        } else {
            TxnFault::EndAcceptSlow(Duration::from_millis(1500))
        }
    }
}

fn queue_id(r: &Reply) -> String {
    r.lines[0]
        .split_once("queued as ")
        .map(|(_, q)| q.to_string())
        .unwrap_or_default()
}

#[test]
fn sigterm_under_load_finishes_transactions_421s_idle_sessions_and_exits_0_within_the_grace() {
    let timing = Timing {
        stall: Duration::from_secs(30),
        late: Duration::from_secs(30),
    };
    let up = ChaosUpstream::start(0, Arc::new(BySender), timing);
    let grace = Duration::from_secs(4);
    let mut mx = MxGuard::start(MxOpts::new(up.addr).config(&format!(
        "store: memory\nshutdown_grace: {}s\n",
        grace.as_secs()
    )));
    up.arm();
    let addr = mx.addr;

    let mut idle: Vec<RawClient> = (0..4)
        .map(|_| {
            let mut c = RawClient::connect(addr);
            c.ehlo("idle.example");
            c
        })
        .collect();
    // Sent the dot; the upstream takes 1.5 s to answer.
    let mut waiting: Vec<RawClient> = (0..4)
        .map(|i| {
            let mut c = open_data(addr, &format!("slow{i}@example.org"));
            c.send(&dot_stuff(&message(&format!("slow{i}"), 2000)));
            c.send(b".\r\n");
            c
        })
        .collect();
    // In the middle of the message.
    let mut sending: Vec<(RawClient, Vec<u8>)> = (0..3)
        .map(|i| {
            let mut c = open_data(addr, &format!("sending{i}@example.org"));
            let body = dot_stuff(&message(&format!("sending{i}"), 60_000));
            c.send(&body[..30_000]);
            (c, body)
        })
        .collect();
    // Its upstream never answers the dot: the grace ends first.
    let mut stuck = open_data(addr, "stuck@example.org");
    stuck.send(&dot_stuff(&message("stuck", 2000)));
    stuck.send(b".\r\n");
    wait_for(
        Duration::from_secs(10),
        "the upstream to have every dot",
        || (up.deliveries().len() == 5).then_some(()),
    );

    let t0 = Instant::now();
    mx.signal(libc::SIGTERM);
    mx.wait_log("shutting down", Duration::from_secs(5));
    for c in &mut idle {
        let r = c.reply_within(Duration::from_secs(3));
        assert!(
            r.as_ref().is_some_and(|r| r.is("421 4.3.2")),
            "an idle session at SIGTERM: {r:?}"
        );
        assert!(c.closed_within(Duration::from_secs(3)));
    }
    // No new sessions once draining.
    let late = RawClient::connect_from(addr, Some("127.0.0.2"))
        .ok()
        .and_then(|mut c| c.reply_within(Duration::from_secs(2)));
    assert!(
        late.as_ref().is_none_or(|r| r.code != 220),
        "a new session after SIGTERM: {late:?}"
    );
    // The transactions in flight finish, each 250 with the upstream's own queue id.
    for (c, body) in &mut sending {
        c.send(&body[30_000..]);
        c.send(b".\r\n");
    }
    let mut told = Vec::new();
    for c in waiting.iter_mut().chain(sending.iter_mut().map(|(c, _)| c)) {
        let r = c.reply_within(grace + Duration::from_secs(2));
        let r = r.unwrap_or_else(|| panic!("a transaction in flight got no reply\n{}", mx.log()));
        assert_eq!(r.code, 250, "{r}");
        told.push(queue_id(&r));
    }
    let accepted_now: Vec<String> = up
        .accepted()
        .into_iter()
        .filter(|d| d.fate == Fate::Clean)
        .map(|d| d.queue_id)
        .collect();
    for q in &told {
        assert!(
            accepted_now.contains(q),
            "250 with queue id {q:?} the upstream never gave"
        );
    }
    // The stuck one is cut at the end of the grace: no reply, certainly no 250.
    let r = stuck.reply_within(grace + Duration::from_secs(3));
    assert!(
        r.as_ref().is_none_or(|r| r.code != 250),
        "a 250 for a message the upstream has not accepted: {r:?}"
    );
    let status = wait_for(grace + Duration::from_secs(3), "mxguard to exit", || {
        mx.try_wait()
    });
    let took = t0.elapsed();
    assert!(status.success(), "exit status {status}\n{}", mx.log());
    assert!(
        took <= grace + Duration::from_secs(2),
        "exit took {took:?} (grace {grace:?})"
    );
    assert!(
        mx.log().contains("shutdown grace period over"),
        "{}",
        mx.log()
    );
}

fn rules_blocking(sender: &str) -> String {
    format!(
        "rules:\n  - name: block-{n}\n    stage: mail\n    if: {{ sender: \"{sender}\" }}\n    then: reject\n",
        n = sender.split('@').next().unwrap()
    )
}

#[test]
fn sighup_under_load_reloads_the_rules_and_no_session_fails() {
    let up = FakeUpstream::start(Script::default());
    let mut opts = MxOpts::new(up.addr).config("store: memory\n");
    opts.rules = vec![(
        "10-block.yaml".into(),
        rules_blocking("blocked0@example.net"),
    )];
    let mut mx = MxGuard::start(opts);
    let rules_file = mx.dir.join("rules").join("10-block.yaml");
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..6)
        .map(|t| {
            let (stop, addr) = (stop.clone(), mx.addr);
            std::thread::spawn(move || {
                let mut results: Vec<(String, Vec<u16>)> = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let mut c = RawClient::connect(addr);
                    c.ehlo("load.example");
                    for _ in 0..5 {
                        n += 1;
                        let from = format!("c{t}-{n}@example.org");
                        let body = format!("Subject: {from}\r\n\r\nunder reload\r\n");
                        let r = c.transaction(&from, &["rcpt@dest.example"], body.as_bytes());
                        results.push((from, r.iter().map(|r| r.code).collect()));
                    }
                    assert_eq!(c.cmd("QUIT").code, 221);
                }
                results
            })
        })
        .collect();
    let mut reloads = 0;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(4) {
        reloads += 1;
        // as an editor saves: a temporary file renamed over the old one
        let tmp = rules_file.with_extension("tmp");
        std::fs::write(
            &tmp,
            rules_blocking(&format!("blocked{reloads}@example.net")),
        )
        .unwrap();
        std::fs::rename(&tmp, &rules_file).unwrap();
        mx.signal(libc::SIGHUP);
        std::thread::sleep(Duration::from_millis(150)); // the pace of the reloads
    }
    stop.store(true, Ordering::Relaxed);
    let results: Vec<(String, Vec<u16>)> = clients
        .into_iter()
        .flat_map(|t| t.join().expect("a client failed"))
        .collect();
    let failed: Vec<_> = results
        .iter()
        .filter(|(_, codes)| codes != &[250, 250, 354, 250])
        .collect();
    assert!(
        failed.is_empty(),
        "transactions failed during reloads: {failed:?}"
    );
    assert_eq!(up.accepted().len(), results.len());
    // The last rule set is the live one.
    let log = mx.wait_log("rules reloaded", Duration::from_secs(5));
    let applied = log.lines().filter(|l| l.contains("rules reloaded")).count();
    eprintln!(
        "{} transactions in {} sessions' worth of load, {reloads} SIGHUPs, {applied} reloads applied",
        results.len(),
        results.len() / 5
    );
    assert!(
        applied >= reloads / 2,
        "{applied} reloads for {reloads} SIGHUPs"
    );
    let last = format!("blocked{reloads}@example.net");
    let mut c = RawClient::connect(mx.addr);
    c.ehlo("check.example");
    let r = wait_for(Duration::from_secs(5), "the last rule set", || {
        let r = c.cmd(&format!("MAIL FROM:<{last}>"));
        if r.code == 250 {
            c.cmd("RSET");
            None
        } else {
            Some(r)
        }
    });
    assert_eq!(r.code, 550, "{r}");
    assert_eq!(c.cmd("MAIL FROM:<blocked0@example.net>").code, 250);
    assert!(mx.check_alive().is_ok());
}
