//! Sender authentication end to end: the real binary with `--dns` pointing at an
//! in-process DNS server, the shipped `rules/60-auth.yaml`, clients on loopback
//! addresses, and a fake upstream that records what was relayed. Verdicts show in the
//! replies; the Authentication-Results header (and the removal of a forged one) shows
//! at the upstream.

mod support;

use std::time::Duration;

use mail_auth::dkim::Canonicalization;
use support::authzone::{Keys, message, zones};
use support::client::{RawClient, dot_stuff};
use support::dns::TestDns;
use support::fake_upstream::{FakeUpstream, Script};
use support::mxguard::{MxGuard, MxOpts};

const SHIPPED: &str = include_str!("../rules/60-auth.yaml");

const CONFIG: &str = r#"
dns:
  timeout: 500ms
  attempts: 1
checks:
  auth_results: true
  timeout: 3s
  dnsbl:
    zones:
      - { zone: bl.test, weight: 3 }
      - { zone: bl2.test, weight: 1, codes: [127.0.0.4] }
"#;

struct Rig {
    keys: Keys,
    up: FakeUpstream,
    mx: MxGuard,
    _dns: TestDns,
}

fn start(rules: &[(&str, &str)]) -> Rig {
    let keys = Keys::generate();
    let dns = TestDns::start(&zones(&keys));
    let up = FakeUpstream::start(Script::default());
    let mut opts = MxOpts::new(up.addr).config(CONFIG);
    opts.rules = rules
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect();
    opts.args = vec!["--dns".into(), dns.addr.to_string()];
    let mx = MxGuard::start(opts);
    Rig {
        keys,
        up,
        mx,
        _dns: dns,
    }
}

fn client(rig: &Rig, source: &str) -> RawClient {
    let mut c = RawClient::connect_from(rig.mx.addr, Some(source)).expect("connect");
    c.timeout = Duration::from_secs(10);
    let banner = c.reply();
    assert_eq!(banner.code, 220, "{banner}");
    c.ehlo("client.example");
    c
}

fn send(rig: &Rig, source: &str, from: &str, msg: &[u8]) -> Vec<support::client::Reply> {
    let mut c = client(rig, source);
    let r = c.transaction(from, &["rcpt@example.org"], &dot_stuff(msg));
    c.cmd("QUIT");
    r
}

#[test]
fn shipped_auth_rules_over_smtp() {
    let rig = start(&[("60-auth.yaml", SHIPPED)]);

    // DNS list score 3 (> 2): refused at connect, with the list's TXT reason.
    let mut c = RawClient::connect_from(rig.mx.addr, Some("127.0.0.10")).unwrap();
    let banner = c.reply();
    assert!(banner.is("554 5.7.1"), "{banner}");
    assert!(
        banner
            .raw()
            .contains("Listed: see https://bl.test/127.0.0.10"),
        "{banner}"
    );
    // An unusable list answer (127.255.255.254) never counts as listed.
    let mut c = RawClient::connect_from(rig.mx.addr, Some("127.0.0.11")).unwrap();
    assert_eq!(c.reply().code, 220);

    // SPF temperror (an include that never answers): 451, never 5xx.
    let r = send(&rig, "127.0.0.20", "a@slow.test", b"x");
    assert!(r[0].is("451 4.4.3"), "{r:?}");

    // DMARC fail under p=reject: signed by another domain, SPF fails.
    let m = message("bob@reject.test", "unaligned", "Hi.\r\n");
    let signed = rig
        .keys
        .sign_rsa(&m, "other.test", Canonicalization::Relaxed);
    let r = send(&rig, "127.0.0.20", "bob@fail.test", &signed);
    let last = r.last().unwrap();
    assert!(last.is("550 5.7.1"), "{r:?}");
    assert!(
        rig.up.accepted().is_empty(),
        "a rejected message reached the upstream"
    );

    // Aligned and signed: relayed with our Authentication-Results on top; a forged one
    // claiming our authserv-id is removed, someone else's is kept.
    let m = message("alice@signed.test", "good", "Hello.\r\n");
    let signed = rig.keys.sign_ed(&m, "signed.test");
    let forged = [
        &b"Authentication-Results: mx.proxy.test; dkim=pass header.d=bank.example\r\n"[..],
        b"Authentication-Results: other.example;\r\n\tspf=pass smtp.mailfrom=x@y.example\r\n",
        &signed,
    ]
    .concat();
    let r = send(&rig, "127.0.0.20", "alice@signed.test", &forged);
    assert_eq!(r.last().unwrap().code, 250, "{r:?}");
    let got = rig.up.accepted();
    let content = String::from_utf8(got[0].content()).unwrap();
    assert!(
        content.starts_with("Authentication-Results: mx.proxy.test;\r\n\tspf=pass smtp.mailfrom=alice@signed.test;\r\n"),
        "{content}"
    );
    assert!(
        content
            .contains("\tdkim=pass header.d=signed.test header.s=ed header.a=ed25519-sha256;\r\n"),
        "{content}"
    );
    assert!(
        content.contains(
            "\tdmarc=pass header.from=signed.test policy.dmarc=reject;\r\n\tarc=none\r\n"
        ),
        "{content}"
    );
    assert!(
        !content.contains("bank.example"),
        "forged A-R relayed: {content}"
    );
    assert!(
        content.contains("Authentication-Results: other.example;"),
        "{content}"
    );
    assert!(content.ends_with("Hello.\r\n"), "{content}");

    // SPF softfail: relayed, tagged by the rule.
    let m = message("x@soft.test", "soft", "Hi.\r\n");
    let r = send(&rig, "127.0.0.20", "x@soft.test", &m);
    assert_eq!(r.last().unwrap().code, 250, "{r:?}");
    let got = rig.up.accepted();
    let content = String::from_utf8(got[1].content()).unwrap();
    assert!(
        content.contains("\tspf=softfail smtp.mailfrom=x@soft.test;"),
        "{content}"
    );
    assert!(
        content.contains("X-Spam-Flag: YES (SPF softfail for x@soft.test)\r\n"),
        "{content}"
    );

    let log = rig.mx.log();
    assert!(
        log.contains("dmarc=fail(p=reject)"),
        "transaction log lacks the results:\n{log}"
    );
}

/// A strict rule (`not: { spf: pass }` → reject) must not turn our DNS trouble into
/// a 5xx: with the default failure policy (`tempfail`) it answers 451 4.4.3, while a
/// real SPF fail is still rejected.
#[test]
fn dns_trouble_never_rejects() {
    let strict = r#"
rules:
  - name: strict-spf
    stage: mail
    if: { not: { spf: pass } }
    then: { reject: "550 5.7.23 SPF says no" }
"#;
    let rig = start(&[("10-strict.yaml", strict)]);
    let r = send(&rig, "127.0.0.20", "a@slow.test", b"x");
    assert!(r[0].is("451 4.4.3"), "{r:?}");
    let r = send(&rig, "127.0.0.20", "a@fail.test", b"x");
    assert!(r[0].is("550 5.7.23"), "{r:?}");
    let m = message("a@pass.test", "ok", "Hi.\r\n");
    let r = send(&rig, "127.0.0.20", "a@pass.test", &m);
    assert_eq!(r.last().unwrap().code, 250, "{r:?}");
}

/// `mxguard explain --dns` prints every check result for the given client and message.
#[test]
fn explain_prints_check_results() {
    let keys = Keys::generate();
    let dns = TestDns::start(&zones(&keys));
    let dir = support::tempdir("mxg-explain.");
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(rules.join("60-auth.yaml"), SHIPPED).unwrap();
    let cfg = dir.path().join("mxguard.yaml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let m = message("alice@signed.test", "explain", "Hello.\r\n");
    let msg = dir.path().join("m.eml");
    std::fs::write(
        &msg,
        keys.sign_rsa(&m, "signed.test", Canonicalization::Relaxed),
    )
    .unwrap();
    let out = std::process::Command::new(support::mxguard::BIN)
        .arg("explain")
        .arg("--config")
        .arg(&cfg)
        .arg("--rules")
        .arg(&rules)
        .args(["--dns", &dns.addr.to_string(), "--client-ip", "127.0.0.13"])
        .args([
            "--helo",
            "helo.test",
            "--from",
            "alice@signed.test",
            "--to",
            "r@example.org",
        ])
        .arg("--message")
        .arg(&msg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("checks: spf=pass spf_helo=fail dkim=pass dmarc=pass(p=reject) arc=none dnsbl=listed:bl.test,bl2.test(score=4)"),
        "{text}"
    );
    assert!(text.contains("rule dnsbl-score"), "{text}");
    assert!(text.contains("dnsbl_score=4"), "{text}");
}

/// Reverse DNS end to end: loopback clients have no PTR of their own (the resolver answers
/// `localhost` for 127/8), so the client addresses come from a trusted PROXY header — the
/// deployment behind an L4 balancer — and the rules see the PTR/FCrDNS of 192.0.2.x.
#[test]
fn reverse_dns_rules_over_smtp_behind_a_proxy_header() {
    let keys = Keys::generate();
    let dns = TestDns::start(&zones(&keys));
    let up = FakeUpstream::start(Script::default());
    let config = format!(
        "{CONFIG}listeners:\n  - name: mx\n    address: {{listen}}\n    proxy_protocol: {{ trusted: [127.0.0.7/32] }}\n"
    );
    let mut opts = MxOpts::new(up.addr).config(&config);
    opts.rules = vec![(
        "10-rdns.yaml".into(),
        "rules:\n  - name: need-fcrdns\n    stage: connect\n    if: { rdns: { in: [none, mismatch] } }\n    then: { reject: \"550 5.7.25 Reverse DNS of {client_ip} does not match\" }\n  - name: generic-names\n    stage: helo\n    if: { rdns: generic }\n    then: { tempfail: \"450 4.7.25 Generic reverse DNS\" }\n".into(),
    )];
    opts.args = vec!["--dns".into(), dns.addr.to_string()];
    let mx = MxGuard::start(opts);
    let greet = |ip: &str| {
        let mut c = RawClient::connect_from(mx.addr, Some("127.0.0.7")).unwrap();
        c.timeout = Duration::from_secs(10);
        c.send(format!("PROXY TCP4 {ip} 192.0.2.254 40000 25\r\n").as_bytes());
        let banner = c.reply();
        (c, banner)
    };
    // FCrDNS passes: welcome, and HELO passes.
    let (mut c, banner) = greet("192.0.2.10");
    assert_eq!(banner.code, 220, "{banner}");
    assert_eq!(c.cmd("EHLO mail.pass.test").code, 250);
    // PTR whose name points elsewhere, and no PTR at all: refused at connect.
    for ip in ["192.0.2.11", "192.0.2.12"] {
        let (_, banner) = greet(ip);
        assert_eq!(
            banner.raw(),
            format!("554 5.7.25 Reverse DNS of {ip} does not match"),
            "{ip}"
        );
    }
    // A generic-looking name (confirmed): tempfailed at HELO.
    let (mut c, banner) = greet("192.0.2.13");
    assert_eq!(banner.code, 220, "{banner}");
    assert!(c.cmd("EHLO dyn.example").is("450 4.7.25"));
    assert!(up.messages().is_empty());
}
