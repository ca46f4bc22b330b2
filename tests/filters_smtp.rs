//! Issue 13, "How it is shown": content filters through the real binary, between real
//! SMTP clients and a real private Postfix. ClamAV (clamd + clamav-milter), Rspamd over
//! HTTP and as a milter, OpenDKIM signing on submission and verifying on mx, OpenDMARC;
//! and scripted milters for exact faults (killed, stalled, garbage, not a milter),
//! edits, discard, quarantine and the rules taking a filter's verdict over.
//!
//! Every fault test asserts the client's reply (the filter's `default_action`), the
//! metric, and that Postfix received exactly the messages answered `250` — once.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use support::client::{RawClient, dot_stuff, python};
use support::filters::{
    ClamavMilter, Clamd, EICAR, FakeConn, FakeMilter, GTUBE, OpenDkim, OpenDmarc, Rspamd,
};
use support::mxguard::{MxGuard, MxOpts};
use support::postfix::{Postfix, PostfixOpts};

const TOOLS: &[&str] = &["postfix", "curl"];

fn message(from: &str, subject: &str, body: &str) -> Vec<u8> {
    let date = support::date_now();
    format!(
        "From: Sender <{from}>\r\nTo: Alice <alice@test.example>\r\nSubject: {subject}\r\n\
         Date: {date}\r\nMessage-ID: <{subject}.7@example.com>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}"
    )
    .into_bytes()
}

fn eicar_attachment() -> Vec<u8> {
    format!(
        "From: Sender <sender@example.com>\r\nTo: Alice <alice@test.example>\r\n\
         Subject: invoice\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\n\
         Content-Type: text/plain\r\n\r\nsee attached\r\n--b1\r\n\
         Content-Type: application/octet-stream; name=\"eicar.com\"\r\n\
         Content-Disposition: attachment; filename=\"eicar.com\"\r\n\r\n{EICAR}\r\n--b1--\r\n"
    )
    .into_bytes()
}

fn metrics_port() -> SocketAddr {
    ([127, 0, 0, 1], support::free_port()).into()
}

fn metrics(addr: SocketAddr) -> String {
    support::metrics(addr)
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// mxguard in front of `pf` with `filters` (YAML list items, indented two spaces) and
/// `extra` config; rules as `(file, yaml)`.
fn proxy(
    pf: &Postfix,
    filters: &str,
    extra: &str,
    rules: &[(&str, &str)],
) -> (MxGuard, SocketAddr) {
    let m = metrics_port();
    let mut opts = MxOpts::new(pf.addr).config(&format!(
        "metrics: {m}\nlisteners:\n  - name: mx\n    address: {{listen}}\nfilters:\n{filters}{extra}"
    ));
    opts.hostname = "mx.test".into();
    opts.rules = rules
        .iter()
        .map(|(n, y)| (n.to_string(), y.to_string()))
        .collect();
    (MxGuard::start(opts), m)
}

/// One transaction on a fresh connection: every reply.
fn send(mx: &MxGuard, rcpts: &[&str], msg: &[u8]) -> Vec<support::client::Reply> {
    let mut c = RawClient::connect(mx.addr);
    c.ehlo("client.example");
    let r = c.transaction("sender@example.com", rcpts, &dot_stuff(msg));
    c.cmd("QUIT");
    r
}

fn last(replies: &[support::client::Reply]) -> String {
    replies.last().map(|r| r.raw()).unwrap_or_default()
}

/// A background runtime for scripted milters (the clients here are blocking).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// A scripted milter: negotiates (`actions`: the edits it may make), answers connect
/// and HELO with continue, then `script` decides the rest of each connection.
fn scripted<F, Fut>(rt: &tokio::runtime::Runtime, actions: u32, script: F) -> FakeMilter
where
    F: Fn(FakeConn) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let script = Arc::new(script);
    rt.block_on(FakeMilter::start(move |mut c| {
        let script = script.clone();
        async move {
            c.negotiate(6, actions, 0).await;
            script(c).await
        }
    }))
}

/// Answers every event with continue, except what `at` answers (code, data); `None`
/// from `at` means stall (read on, never answer).
async fn answer(mut c: FakeConn, at: impl Fn(u8) -> Option<Vec<(u8, Vec<u8>)>>) {
    while let Some(f) = c.recv().await {
        if matches!(f.code, b'D' | b'A' | b'Q') {
            if f.code == b'Q' {
                return;
            }
            continue;
        }
        match at(f.code) {
            Some(frames) => {
                for (code, data) in frames {
                    c.send(code, &data).await;
                }
            }
            None => {
                while c.recv().await.is_some() {}
                return;
            }
        }
    }
}

fn cont() -> Option<Vec<(u8, Vec<u8>)>> {
    Some(vec![(b'c', vec![])])
}

fn require_postfix() -> bool {
    support::require(TOOLS, true)
}

// ---- the real daemons ----

#[test]
fn clamav_refuses_eicar_with_its_reply_and_marks_clean_mail() {
    if !require_postfix() {
        return;
    }
    let Some(clamd) = Clamd::start() else { return };
    let milter = ClamavMilter::start(&clamd);
    let pf = Postfix::start();
    let (mx, m) = proxy(
        &pf,
        &format!("  - name: clamav\n    milter: {}\n", milter.addr),
        "",
        &[],
    );
    let clean = send(
        &mx,
        &["alice@test.example"],
        &message("sender@example.com", "clean", "Nothing to see.\r\n"),
    );
    assert!(last(&clean).starts_with("250 "), "{clean:?}\n{}", mx.log());
    let infected = send(&mx, &["alice@test.example"], &eicar_attachment());
    assert_eq!(
        last(&infected),
        "550 5.7.1 Command rejected",
        "{}",
        mx.log()
    );

    let got = pf.wait_delivered(1, Duration::from_secs(20));
    let text = String::from_utf8_lossy(&got[0].eml).into_owned();
    assert!(text.contains("X-Virus-Status: Clean"), "{text}");
    assert!(text.contains("Subject: clean"), "{text}");
    let log = mx.log();
    assert!(
        log.contains("filters=clamav=pass") && log.contains("filters=clamav=reject"),
        "the transaction lines name the verdicts: {log}"
    );
    let text = metrics(m);
    assert_eq!(
        metric(
            &text,
            "mxguard_filter_verdicts_total{filter=\"clamav\",verdict=\"reject\"}"
        ),
        1.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "mxguard_filter_calls_total{filter=\"clamav\",stage=\"message\"}"
        ) >= 2.0
    );
    assert!(text.contains("mxguard_filter_seconds_bucket{filter=\"clamav\",stage=\"message\""));
    drop(mx);
    assert_eq!(
        pf.settle(Duration::from_secs(20)).len(),
        1,
        "EICAR never reached Postfix"
    );
}

#[test]
fn rspamd_over_http_and_as_milter_refuses_gtube_and_relays_clean_mail_with_its_headers() {
    if !require_postfix() {
        return;
    }
    let Some(rspamd) = Rspamd::start() else {
        return;
    };
    let pf = Postfix::start();
    let (http, hm) = proxy(
        &pf,
        &format!("  - name: rspamd\n    rspamd: http://{}\n", rspamd.http),
        "",
        &[],
    );
    let (milter, _) = proxy(
        &pf,
        &format!(
            "  - name: rspamd-milter\n    milter: {}\n    tolerate_unoffered_actions: true\n",
            rspamd.milter
        ),
        "",
        &[],
    );
    let gtube = message("sender@example.com", "gtube", &format!("{GTUBE}\r\n"));
    for mx in [&http, &milter] {
        let r = send(mx, &["alice@test.example"], &gtube);
        assert_eq!(last(&r), "554 5.7.1 Gtube pattern", "{}", mx.log());
    }
    for (i, mx) in [&http, &milter].into_iter().enumerate() {
        let subject = format!("clean{i}");
        let r = send(
            mx,
            &["alice@test.example"],
            &message("sender@example.com", &subject, "A friendly note.\r\n"),
        );
        assert!(last(&r).starts_with("250 "), "{r:?}\n{}", mx.log());
    }
    let got = pf.wait_delivered(2, Duration::from_secs(20));
    for d in &got {
        let text = String::from_utf8_lossy(&d.eml).into_owned();
        assert!(
            text.contains("X-Spamd-Result: default: False"),
            "{text}\n{}\n{}",
            http.log(),
            milter.log()
        );
        assert!(text.contains("X-Spam-Status: No, score="), "{text}");
        // rspamd's A-R goes after the first field, as rspamd's milter mode puts it.
        let fields: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with([' ', '\t']))
            .take_while(|l| !l.is_empty())
            .collect();
        let ar = fields
            .iter()
            .position(|f| f.starts_with("Authentication-Results: mx.test"))
            .unwrap_or_else(|| panic!("rspamd's A-R: {text}"));
        assert_eq!(
            fields[ar - 1],
            "From: Sender <sender@example.com>",
            "{text}"
        );
    }
    let log = http.log();
    assert!(
        log.contains("filters=rspamd=reject(score="),
        "score in the log line: {log}"
    );
    let text = metrics(hm);
    assert_eq!(
        metric(
            &text,
            "mxguard_filter_verdicts_total{filter=\"rspamd\",verdict=\"reject\"}"
        ),
        1.0,
        "{text}"
    );
    drop(http);
    drop(milter);
    assert_eq!(
        pf.settle(Duration::from_secs(20)).len(),
        2,
        "GTUBE never reached Postfix"
    );
}

#[test]
fn rules_take_over_rspamd_verdicts_by_symbol_and_score() {
    if !require_postfix() {
        return;
    }
    let Some(rspamd) = Rspamd::start() else {
        return;
    };
    let pf = Postfix::start();
    let rules = "rules:\n  - name: gtube-by-rule\n    stage: data\n    if: { rspamd: { symbol: GTUBE } }\n    then: { tempfail: \"451 4.7.1 Held for review by rule {rule}\" }\n  - name: low-score-tag\n    stage: data\n    if: { rspamd: { score: { under: 5 } } }\n    then: { add_header: \"X-Low-Score: yes\" }\n";
    let (mx, _) = proxy(
        &pf,
        &format!("  - name: rspamd\n    rspamd: http://{}\n", rspamd.http),
        "",
        &[("90-filters.yaml", rules)],
    );
    let r = send(
        &mx,
        &["alice@test.example"],
        &message("sender@example.com", "gtube", &format!("{GTUBE}\r\n")),
    );
    assert_eq!(
        last(&r),
        "451 4.7.1 Held for review by rule gtube-by-rule",
        "{}",
        mx.log()
    );
    let r = send(
        &mx,
        &["alice@test.example"],
        &message("sender@example.com", "clean", "A friendly note.\r\n"),
    );
    assert!(last(&r).starts_with("250 "), "{r:?}");
    let got = pf.wait_delivered(1, Duration::from_secs(20));
    let text = String::from_utf8_lossy(&got[0].eml).into_owned();
    assert!(text.contains("X-Low-Score: yes"), "{text}");
}

/// The signer on a submission listener (TLS, AUTH relayed to Postfix's SASL), the
/// verifier on the mx listener of the same mxguard: the signed message, submitted, then
/// received again from outside, gets `dkim=pass` from opendkim at the top of its header.
#[test]
fn opendkim_signs_on_submission_and_verifies_on_mx() {
    if !support::require(&["postfix", "saslpasswd2", "python3"], true) {
        return;
    }
    let Some((_keydir, key)) = OpenDkim::key() else {
        return;
    };
    let signer = OpenDkim::signer_for_daemon(&key, "ORIGINATING");
    let verifier = OpenDkim::verifier(&key);
    let pf = Postfix::start_with(PostfixOpts {
        sasl_users: vec![("user".into(), "pass".into())],
        extra_main_cf: vec![
            "smtpd_tls_auth_only = no".into(),
            "smtpd_relay_restrictions = permit_sasl_authenticated, reject_unauth_destination"
                .into(),
        ],
        ..PostfixOpts::default()
    });
    let certs = support::certs::TestCerts::generate();
    let submission: SocketAddr = ([127, 0, 0, 1], support::free_port()).into();
    let config = format!(
        "listeners:\n  - name: mx\n    address: {{listen}}\n  - name: submission\n    address: {submission}\n    mode: submission\n    milter_daemon_name: ORIGINATING\n    tls: {{ cert: {chain}, key: {key} }}\n\
         filters:\n  - name: dkim-sign\n    milter: {sign}\n    listeners: [submission]\n  - name: dkim-verify\n    milter: {verify}\n    listeners: [mx]\n",
        chain = certs.leaf_chain.display(),
        key = certs.leaf_key.display(),
        sign = signer.socket.endpoint(),
        verify = verifier.socket.endpoint(),
    );
    let mut opts = MxOpts::new(pf.addr).config(&config);
    opts.hostname = "mx.test".into();
    let mx = MxGuard::start(opts);

    let script = r#"
import sys, smtplib, ssl
host, port, ca = sys.argv[1:4]
ctx = ssl.create_default_context(cafile=ca)
s = smtplib.SMTP(host, int(port), local_hostname="client.example", timeout=30)
s.starttls(context=ctx)
s.login("user", "pass")
msg = (b"From: Alice <alice@example.com>\r\nTo: Bob <alice@test.example>\r\n"
       b"Subject: signed\r\nDate: Tue, 01 Dec 2026 12:00:00 +0000\r\n"
       b"Message-ID: <signed.1@example.com>\r\n\r\nSigned on the way out.\r\n")
s.sendmail("alice@example.com", ["alice@test.example"], msg)
s.quit()
print("OK")
"#;
    let out = python(
        script,
        &[
            "127.0.0.1",
            &submission.port().to_string(),
            &certs.ca_cert.display().to_string(),
        ],
    );
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(said.starts_with("OK"), "{said}\n{}", mx.log());
    let first = pf.wait_delivered(1, Duration::from_secs(20));
    let signed = String::from_utf8_lossy(&first[0].eml).into_owned();
    assert!(
        signed.contains("DKIM-Signature: v=1; a=rsa-sha256;"),
        "{signed}"
    );
    assert!(
        signed.contains("d=example.com") && signed.contains("s=sel"),
        "{signed}"
    );

    // The signed message from outside, on the mx listener (CRLF, as on the wire).
    let wire = support::lf_to_crlf(first[0].without_first_received());
    let r = send(&mx, &["alice@test.example"], &wire);
    assert!(last(&r).starts_with("250 "), "{r:?}\n{}", mx.log());
    let second = pf.wait_delivered(2, Duration::from_secs(20));
    let verified = String::from_utf8_lossy(second[1].without_first_received()).into_owned();
    let top = verified.lines().next().unwrap_or("");
    assert!(
        top.starts_with("Authentication-Results: mx.test;"),
        "opendkim inserts its A-R at index 0, the first field of the message: {verified}"
    );
    assert!(verified.contains("dkim=pass"), "{verified}");
    assert!(
        verified.matches("DKIM-Signature:").count() == 1,
        "the verifier does not sign: {verified}"
    );
}

#[test]
fn opendmarc_adds_its_authentication_results() {
    if !require_postfix() {
        return;
    }
    let Some(dmarc) = OpenDmarc::start() else {
        return;
    };
    let pf = Postfix::start();
    let (mx, _) = proxy(
        &pf,
        &format!("  - name: dmarc\n    milter: {}\n", dmarc.addr),
        "",
        &[],
    );
    let r = send(
        &mx,
        &["alice@test.example"],
        &message("sender@example.com", "dmarc", "Hello.\r\n"),
    );
    assert!(last(&r).starts_with("250 "), "{r:?}\n{}", mx.log());
    let got = pf.wait_delivered(1, Duration::from_secs(20));
    let text = String::from_utf8_lossy(&got[0].eml).into_owned();
    assert!(
        text.contains(
            "Authentication-Results: mx.test; dmarc=none (p=none dis=none) header.from=example.com"
        ),
        "{text}"
    );
}

// ---- faults: each gets its default_action; nothing lost, nothing relayed twice ----

#[test]
fn a_milter_killed_mid_session_gets_its_default_action_on_the_next_message() {
    if !require_postfix() {
        return;
    }
    let Some(clamd) = Clamd::start() else { return };
    let mut milter = ClamavMilter::start(&clamd);
    let pf = Postfix::start();
    let (mx, m) = proxy(
        &pf,
        &format!(
            "  - name: clamav\n    milter: {}\n    default_action: tempfail\n    connect_timeout: 1s\n",
            milter.addr
        ),
        "",
        &[],
    );
    let mut c = RawClient::connect(mx.addr);
    c.ehlo("client.example");
    let one = c.transaction(
        "sender@example.com",
        &["alice@test.example"],
        &dot_stuff(&message("sender@example.com", "before", "first\r\n")),
    );
    assert!(last(&one).starts_with("250 "), "{one:?}");
    milter.guard.signal(libc::SIGKILL);
    support::wait_for(Duration::from_secs(10), "clamav-milter to die", || {
        milter.guard.check_alive().is_err().then_some(())
    });
    let two = c.transaction(
        "sender@example.com",
        &["alice@test.example"],
        &dot_stuff(&message("sender@example.com", "after", "second\r\n")),
    );
    assert_eq!(
        two[0].raw(),
        "451 4.7.1 Service unavailable - try again later",
        "{two:?}\n{}",
        mx.log()
    );
    // The session goes on: the next MAIL tries the milter again (still down).
    let r = c.cmd("MAIL FROM:<sender@example.com>");
    assert_eq!(r.code, 451, "{r}");
    c.cmd("QUIT");
    let text = metrics(m);
    assert!(
        metric(
            &text,
            "mxguard_filter_default_actions_total{action=\"tempfail\",filter=\"clamav\"}"
        ) >= 2.0,
        "{text}"
    );
    drop(mx);
    let got = pf.settle(Duration::from_secs(20));
    assert_eq!(got.len(), 1, "only the message answered 250");
    assert!(String::from_utf8_lossy(&got[0].eml).contains("Subject: before"));
}

#[test]
fn a_milter_that_stalls_past_its_timeout_gets_its_default_action() {
    if !require_postfix() {
        return;
    }
    let rt = runtime();
    // Stalls at end of message; with `accept`, the message goes on unfiltered.
    let fake = scripted(&rt, 0x01, |c| {
        answer(c, |code| if code == b'E' { None } else { cont() })
    });
    let pf = Postfix::start();
    let (mx, m) = proxy(
        &pf,
        &format!(
            "  - name: slow\n    milter: {}\n    default_action: accept\n    content_timeout: 700ms\n",
            fake.addr
        ),
        "",
        &[],
    );
    let t0 = std::time::Instant::now();
    let r = send(
        &mx,
        &["alice@test.example"],
        &message("sender@example.com", "stalled", "x\r\n"),
    );
    let took = t0.elapsed();
    assert!(last(&r).starts_with("250 "), "{r:?}\n{}", mx.log());
    assert!(took >= Duration::from_millis(700), "{took:?}");
    let log = mx.log();
    assert!(
        log.contains("filter unavailable") && log.contains("slow"),
        "{log}"
    );
    assert!(log.contains("filters=slow=error"), "{log}");
    let text = metrics(m);
    assert_eq!(
        metric(
            &text,
            "mxguard_filter_errors_total{filter=\"slow\",kind=\"timeout\"}"
        ),
        1.0,
        "{text}"
    );
    drop(mx);
    assert_eq!(pf.settle(Duration::from_secs(20)).len(), 1);
}

#[test]
fn garbage_from_a_milter_gets_reject_and_a_non_milter_port_gets_shutdown() {
    if !require_postfix() {
        return;
    }
    let rt = runtime();
    let garbage = scripted(&rt, 0x01, |c| {
        answer(c, |code| {
            if code == b'M' {
                Some(vec![(b'Z', b"\x01\x02".to_vec())])
            } else {
                cont()
            }
        })
    });
    let pf = Postfix::start();
    let (mx, m) = proxy(
        &pf,
        &format!(
            "  - name: garbage\n    milter: {}\n    default_action: reject\n",
            garbage.addr
        ),
        "",
        &[],
    );
    let r = send(
        &mx,
        &["alice@test.example"],
        &message("sender@example.com", "g", "x\r\n"),
    );
    assert_eq!(r[0].raw(), "550 5.5.0 Service unavailable", "{}", mx.log());
    let text = metrics(m);
    assert_eq!(
        metric(
            &text,
            "mxguard_filter_errors_total{filter=\"garbage\",kind=\"protocol\"}"
        ),
        1.0,
        "{text}"
    );

    // Postfix's SMTP port is no milter: said so in the log, and `shutdown` closes.
    let (mx2, m2) = proxy(
        &pf,
        &format!(
            "  - name: wrong-port\n    milter: {}\n    default_action: shutdown\n",
            pf.addr
        ),
        "",
        &[],
    );
    let mut c = RawClient::connect(mx2.addr);
    c.ehlo("client.example");
    let r = c.cmd("MAIL FROM:<sender@example.com>");
    assert_eq!(r.raw(), "421 4.7.1 Service unavailable - try again later");
    assert!(
        c.closed_within(Duration::from_secs(5)),
        "shutdown closes the session"
    );
    let log = mx2.log();
    assert!(log.contains("is not a milter"), "{log}");
    let text = metrics(m2);
    assert_eq!(
        metric(
            &text,
            "mxguard_filter_errors_total{filter=\"wrong-port\",kind=\"not_a_milter\"}"
        ),
        1.0,
        "{text}"
    );
    drop(mx);
    drop(mx2);
    assert_eq!(pf.settle(Duration::from_secs(20)).len(), 0);
}

// ---- what a milter's answers do ----

#[test]
fn milter_edits_reach_the_upstream_in_order_and_quarantine_marks_the_message() {
    if !require_postfix() {
        return;
    }
    let rt = runtime();
    // ADDHDRS | CHGBODY | CHGHDRS | QUARANTINE
    let fake = scripted(&rt, 0x01 | 0x02 | 0x10 | 0x20, |c| {
        answer(c, |code| {
            if code != b'E' {
                return cont();
            }
            Some(vec![
                (b'i', b"\0\0\0\x01X-Inserted\0folded\n\tvalue\0".to_vec()),
                (b'm', b"\0\0\0\x01Subject\0[scanned] edits\0".to_vec()),
                (b'h', b"X-Appended\0yes\0".to_vec()),
                (b'm', b"\0\0\0\x01X-Remove-Me\0\0".to_vec()),
                (b'b', b"new body\n".to_vec()),
                (b'q', b"looks odd\0".to_vec()),
                (b'c', vec![]),
            ])
        })
    });
    let pf = Postfix::start();
    let (mx, _) = proxy(
        &pf,
        &format!("  - name: editor\n    milter: {}\n", fake.addr),
        "",
        &[],
    );
    let msg = b"From: Sender <sender@example.com>\r\nX-Remove-Me: 1\r\nSubject: edits\r\nTo: Alice <alice@test.example>\r\n\r\nold body\r\n";
    let r = send(&mx, &["alice@test.example"], msg);
    assert!(last(&r).starts_with("250 "), "{r:?}\n{}", mx.log());
    let got = pf.wait_delivered(1, Duration::from_secs(20));
    let text = String::from_utf8_lossy(got[0].without_first_received()).into_owned();
    assert_eq!(
        text,
        "X-Mxguard-Quarantine: editor: looks odd\n\
         From: Sender <sender@example.com>\n\
         X-Inserted: folded\n\tvalue\n\
         Subject: [scanned] edits\n\
         To: Alice <alice@test.example>\n\
         X-Appended: yes\n\
         \n\
         new body\n",
        "{}",
        mx.log()
    );
}

#[test]
fn discard_is_a_refusal_unless_drop_is_asked_for() {
    if !require_postfix() {
        return;
    }
    let rt = runtime();
    let discarding = || {
        |c| {
            answer(c, |code| {
                if code == b'E' {
                    Some(vec![(b'd', vec![])])
                } else {
                    cont()
                }
            })
        }
    };
    let a = scripted(&rt, 0x01, discarding());
    let b = scripted(&rt, 0x01, discarding());
    let pf = Postfix::start();
    let (refusing, _) = proxy(
        &pf,
        &format!("  - name: d\n    milter: {}\n", a.addr),
        "",
        &[],
    );
    let r = send(
        &refusing,
        &["alice@test.example"],
        &message("sender@example.com", "d1", "x\r\n"),
    );
    assert_eq!(
        last(&r),
        "550 5.7.1 Error: message refused by content filter"
    );
    let (dropping, dm) = proxy(
        &pf,
        &format!(
            "  - name: d\n    milter: {}\n    on_discard: drop\n",
            b.addr
        ),
        "",
        &[],
    );
    let r = send(
        &dropping,
        &["alice@test.example"],
        &message("sender@example.com", "d2", "x\r\n"),
    );
    assert_eq!(last(&r), "250 2.0.0 Ok");
    assert!(
        dropping.log().contains("outcome=\"discarded\"")
            || dropping.log().contains("outcome=discarded"),
        "{}",
        dropping.log()
    );
    let text = metrics(dm);
    assert_eq!(
        metric(
            &text,
            "mxguard_filter_verdicts_total{filter=\"d\",verdict=\"discard\"}"
        ),
        1.0,
        "{text}"
    );
    drop(refusing);
    drop(dropping);
    assert_eq!(
        pf.settle(Duration::from_secs(20)).len(),
        0,
        "a discarded message is never relayed"
    );
}

#[test]
fn milter_replies_at_rcpt_refuse_one_recipient_only() {
    if !require_postfix() {
        return;
    }
    let rt = runtime();
    let fake = scripted(&rt, 0x01, |mut c| async move {
        while let Some(f) = c.recv().await {
            match f.code {
                b'D' | b'A' => {}
                b'Q' => return,
                b'R' if f.data.windows(3).any(|w| w == b"bad") => {
                    c.send(b'y', b"550 5.1.1 <bad@test.example>: no such user here\0")
                        .await
                }
                _ => c.send(b'c', b"").await,
            }
        }
    });
    let pf = Postfix::start();
    let (mx, _) = proxy(
        &pf,
        &format!("  - name: users\n    milter: {}\n", fake.addr),
        "",
        &[],
    );
    let r = send(
        &mx,
        &["bad@test.example", "alice@test.example"],
        &message("sender@example.com", "rcpt", "x\r\n"),
    );
    assert_eq!(
        r[1].raw(),
        "550 5.1.1 <bad@test.example>: no such user here"
    );
    assert!(r[2].raw().starts_with("250 "), "{r:?}");
    assert!(last(&r).starts_with("250 "), "{r:?}");
    let got = pf.wait_delivered(1, Duration::from_secs(20));
    assert_eq!(
        got[0].env("recipient"),
        "alice@test.example",
        "{:?}",
        got[0].env
    );
    drop(mx);
    assert_eq!(pf.settle(Duration::from_secs(20)).len(), 1);
}

#[test]
fn a_rule_testing_a_filter_decides_and_monitor_mode_only_reports() {
    if !require_postfix() {
        return;
    }
    let rt = runtime();
    let rejecting = || {
        |c| {
            answer(c, |code| {
                if code == b'E' {
                    Some(vec![(b'y', b"554 5.7.1 the scanner says no\0".to_vec())])
                } else {
                    cont()
                }
            })
        }
    };
    let a = scripted(&rt, 0x01, rejecting());
    let b = scripted(&rt, 0x01, rejecting());
    let pf = Postfix::start();
    // A rule takes the verdict over: here it lets the message through, tagged.
    let rules = "rules:\n  - name: scanner-tag\n    stage: data\n    if: { filter: { name: scanner, result: reject } }\n    then: { add_header: \"X-Scanner: would reject\" }\n";
    let (ruled, _) = proxy(
        &pf,
        &format!("  - name: scanner\n    milter: {}\n", a.addr),
        "",
        &[("90-filters.yaml", rules)],
    );
    let r = send(
        &ruled,
        &["alice@test.example"],
        &message("sender@example.com", "ruled", "x\r\n"),
    );
    assert!(last(&r).starts_with("250 "), "{r:?}\n{}", ruled.log());
    assert!(
        ruled
            .log()
            .contains("filter verdict not applied (a rule decides)"),
        "{}",
        ruled.log()
    );

    let (monitored, mm) = proxy(
        &pf,
        &format!(
            "  - name: scanner\n    milter: {}\n    mode: monitor\n",
            b.addr
        ),
        "",
        &[],
    );
    let r = send(
        &monitored,
        &["alice@test.example"],
        &message("sender@example.com", "monitored", "x\r\n"),
    );
    assert!(last(&r).starts_with("250 "), "{r:?}\n{}", monitored.log());
    let log = monitored.log();
    assert!(
        log.contains("filter verdict not applied (monitor mode)")
            && log.contains("the scanner says no"),
        "{log}"
    );
    let text = metrics(mm);
    assert_eq!(
        metric(
            &text,
            "mxguard_filter_verdicts_total{filter=\"scanner\",verdict=\"reject\"}"
        ),
        1.0,
        "would-have counts: {text}"
    );
    let got = pf.wait_delivered(2, Duration::from_secs(20));
    let tagged = got
        .iter()
        .find(|d| String::from_utf8_lossy(&d.eml).contains("Subject: ruled"))
        .expect("ruled message");
    assert!(String::from_utf8_lossy(&tagged.eml).contains("X-Scanner: would reject"));
    drop(ruled);
    drop(monitored);
    assert_eq!(pf.settle(Duration::from_secs(20)).len(), 2);
}

#[test]
fn explain_with_filters_shows_each_verdict_and_the_modified_header() {
    let rt = runtime();
    let tagger = scripted(&rt, 0x01, |c| {
        answer(c, |code| {
            if code == b'E' {
                Some(vec![
                    (b'h', b"X-Scanned\0by tagger\0".to_vec()),
                    (b'a', vec![]),
                ])
            } else {
                cont()
            }
        })
    });
    let scanner = scripted(&rt, 0x01, |c| {
        answer(c, |code| {
            if code == b'E' {
                Some(vec![(b'y', b"554 5.7.1 the scanner says no\0".to_vec())])
            } else {
                cont()
            }
        })
    });
    let dir = support::tempdir("mxg-explain-filters.");
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("90-filters.yaml"),
        "rules:\n  - name: scanner-says\n    stage: data\n    if: { filter: { name: scanner, result: reject } }\n    then: { reject: \"550 5.7.1 refused by rule {rule}\" }\n",
    )
    .unwrap();
    let config = dir.path().join("mxguard.yaml");
    std::fs::write(
        &config,
        format!(
            "filters:\n  - name: tagger\n    milter: {}\n  - name: scanner\n    milter: {}\n",
            tagger.addr, scanner.addr
        ),
    )
    .unwrap();
    let msg = dir.path().join("m.eml");
    // LF line ends, as files on disk have them.
    std::fs::write(&msg, "From: a@example.com\nSubject: explain me\n\nhello\n").unwrap();
    let out = std::process::Command::new(support::mxguard::BIN)
        .arg("explain")
        .arg("--config")
        .arg(&config)
        .arg("--rules")
        .arg(&rules)
        .args(["--client-ip", "192.0.2.1", "--helo", "mail.example"])
        .args(["--from", "a@example.com", "--to", "b@example.org"])
        .arg("--message")
        .arg(&msg)
        .arg("--filters")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("filters: tagger, scanner"), "{text}");
    assert!(text.contains("  tagger: pass"), "{text}");
    assert!(
        text.contains("  scanner: reject reply \"554 5.7.1 the scanner says no\" [a rule tests it: the rules decide]"),
        "{text}"
    );
    assert!(text.contains("    X-Scanned: by tagger"), "{text}");
    assert!(
        text.contains("result: message refused: 550 5.7.1 refused by rule scanner-says"),
        "{text}"
    );
}
