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
    start_with(CONFIG, rules, &[])
}

fn start_with(config: &str, rules: &[(&str, &str)], args: &[&str]) -> Rig {
    let keys = Keys::generate();
    let dns = TestDns::start(&zones(&keys));
    let up = FakeUpstream::start(Script::default());
    let mut opts = MxOpts::new(up.addr).config(config);
    opts.rules = rules
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect();
    opts.args = vec!["--dns".into(), dns.addr.to_string()];
    opts.args.extend(args.iter().map(|a| a.to_string()));
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

/// A message (CRLF) with these From lines (each ending in CRLF, or none at all).
fn with_from(from_lines: &str, subject: &str) -> Vec<u8> {
    format!(
        "{from_lines}To: <rcpt@example.org>\r\nSubject: {subject}\r\nDate: Mon, 30 Nov 2026 00:00:00 +0000\r\nMessage-ID: <{subject}@test>\r\n\r\nHi.\r\n"
    )
    .into_bytes()
}

/// The content of the `n`-th message the upstream accepted, as text.
fn relayed(rig: &Rig, n: usize) -> String {
    String::from_utf8(rig.up.accepted()[n].content()).unwrap()
}

/// The spoofs that mail-auth 0.13 alone lets through, over SMTP with the shipped rules:
/// a second From field for a `p=reject` domain, no From, a From with two authors, and an
/// rsa-sha1 signature (2048-bit key) that must satisfy neither DKIM nor DMARC.
#[test]
fn spoofed_authors_and_refused_signatures_over_smtp() {
    let rig = start(&[("60-auth.yaml", SHIPPED)]);
    let refused_by = |r: &[support::client::Reply], text: &str| {
        let last = r.last().unwrap();
        assert!(last.is("550 5.7.1"), "{r:?}");
        assert!(last.raw().contains(text), "{r:?}");
    };
    // The attacker signs for its own domain and passes SPF; the first From field is
    // the boss's, whose domain publishes p=reject.
    let m = with_from(
        "From: <boss@reject.test>\r\nFrom: <mallory@signed.test>\r\n",
        "two-from",
    );
    let signed = rig.keys.sign_ed(&m, "signed.test");
    let r = send(&rig, "127.0.0.20", "mallory@signed.test", &signed);
    refused_by(&r, "exactly one From field");
    // No From at all, and a From without an address domain.
    for from in ["", "From: boss\r\n"] {
        let m = with_from(from, "no-from");
        let signed = rig.keys.sign_ed(&m, "signed.test");
        let r = send(&rig, "127.0.0.20", "mallory@signed.test", &signed);
        refused_by(&r, "exactly one From field");
    }
    // One From field, two authors: the p=reject author's failure decides.
    let m = with_from(
        "From: <mallory@signed.test>, <boss@reject.test>\r\n",
        "two-authors",
    );
    let signed = rig.keys.sign_ed(&m, "signed.test");
    let r = send(&rig, "127.0.0.20", "mallory@signed.test", &signed);
    refused_by(&r, "DMARC policy");
    // rsa-sha1 with the 2048-bit key, From aligned with d=, SPF failing (MAIL FROM in
    // another domain): DKIM is not a pass, so DMARC fails under p=reject.
    let m = message("alice@signed.test", "sha1", "Hello.\r\n");
    let r = send(
        &rig,
        "127.0.0.20",
        "bob@fail.test",
        &rig.keys.sign_rsa_sha1(&m, "signed.test"),
    );
    refused_by(&r, "DMARC policy");
    assert!(
        rig.up.accepted().is_empty(),
        "a refused message reached the upstream"
    );
    // Under p=none the same kind of signatures are relayed, and the header says why
    // neither counts: one result per signature, with its reason.
    let m = message("alice@lenient.test", "sha1-none", "Hello.\r\n");
    let sha1 = rig.keys.sign_rsa_sha1(&m, "lenient.test");
    let short = rig.keys.sign_small_rsa(&sha1, "lenient.test", 512);
    let r = send(&rig, "127.0.0.20", "bob@fail.test", &short);
    assert_eq!(r.last().unwrap().code, 250, "{r:?}");
    let content = relayed(&rig, 0);
    assert!(
        content.contains("\tdkim=permerror reason=\"RSA key of 512 bits is under 1024 bits (RFC 8301)\" header.d=lenient.test header.s=short header.a=rsa-sha256;\r\n\tdkim=permerror reason=\"rsa-sha1 is not acceptable (RFC 8301)\" header.d=lenient.test header.s=rsa header.a=rsa-sha1;\r\n"),
        "{content}"
    );
    assert!(
        content.contains("\tdmarc=fail header.from=lenient.test policy.dmarc=none;"),
        "{content}"
    );
    let log = rig.mx.log();
    assert!(
        log.contains("dmarc-from"),
        "the refusing rule is not logged:\n{log}"
    );
    assert!(
        log.contains("dmarc=fail(p=reject,multiple_from)"),
        "the reason is not logged:\n{log}"
    );
}

/// `auth_results` defaults to `auto`: the header reports the checks the rules ran (SPF,
/// DKIM, DMARC for the shipped rules; no ARC, which no rule tests), and no header when
/// no check ran. `false` never adds one.
#[test]
fn auth_results_auto_reports_what_ran() {
    let config = "dns:\n  timeout: 500ms\n  attempts: 1\nchecks:\n  timeout: 3s\n";
    let rig = start_with(config, &[("60-auth.yaml", SHIPPED)], &[]);
    let m = message("alice@signed.test", "auto", "Hello.\r\n");
    let signed = rig.keys.sign_ed(&m, "signed.test");
    let r = send(&rig, "127.0.0.20", "alice@signed.test", &signed);
    assert_eq!(r.last().unwrap().code, 250, "{r:?}");
    let content = relayed(&rig, 0);
    assert!(
        content.starts_with("Authentication-Results: mx.proxy.test;\r\n\tspf=pass smtp.mailfrom=alice@signed.test;\r\n"),
        "{content}"
    );
    assert!(
        content.contains("\tdmarc=pass header.from=signed.test policy.dmarc=reject\r\n"),
        "{content}"
    );
    assert!(!content.contains("\tarc="), "ARC did not run: {content}");

    let rig = start_with(config, &[], &[]);
    let r = send(&rig, "127.0.0.20", "alice@signed.test", &m);
    assert_eq!(r.last().unwrap().code, 250, "{r:?}");
    assert!(
        !relayed(&rig, 0).contains("Authentication-Results:"),
        "no check ran, yet a header was added"
    );

    let off = format!("{config}  auth_results: false\n");
    let rig = start_with(&off, &[("60-auth.yaml", SHIPPED)], &[]);
    let signed = rig.keys.sign_ed(&m, "signed.test");
    let r = send(&rig, "127.0.0.20", "alice@signed.test", &signed);
    assert_eq!(r.last().unwrap().code, 250, "{r:?}");
    assert!(!relayed(&rig, 0).contains("Authentication-Results:"));
}

/// A DNS list whose zone holds an access key (Spamhaus DQS) is known by its `name` in
/// the reply, the log and the metrics; the key never leaves the configuration.
#[test]
fn dnsbl_zone_keys_stay_in_the_configuration() {
    if !support::require(&["curl"], false) {
        return;
    }
    let config = r#"
dns:
  timeout: 500ms
  attempts: 1
checks:
  timeout: 3s
  dnsbl:
    zones:
      - { zone: s3cr3tkey.dqs.test, name: dqs, codes: ["127.0.0.2-127.0.0.11"], weight: 3 }
      - { zone: wl.test, weight: -5, codes: ["127.0.2.0-127.0.20.3"] }
"#;
    let rules = r#"
rules:
  - name: dqs-listed
    stage: connect
    if: { dnsbl: dqs }
    then: { reject: "554 5.7.1 {client_ip} listed by {dnsbl_zone}: {dnsbl_reason}" }
"#;
    let metrics = format!("127.0.0.1:{}", support::free_port());
    let rig = start_with(
        config,
        &[("10-dnsbl.yaml", rules)],
        &["--metrics", &metrics],
    );
    let mut c = RawClient::connect_from(rig.mx.addr, Some("127.0.0.10")).unwrap();
    let banner = c.reply();
    assert_eq!(
        banner.raw(),
        "554 5.7.1 127.0.0.10 listed by dqs: Listed by the DQS test list",
        "{banner}"
    );
    let text = support::wait_for(Duration::from_secs(10), "the metrics", || {
        let out = std::process::Command::new("curl")
            .args(["-sf", &format!("http://{metrics}/metrics")])
            .output()
            .ok()?;
        let t = String::from_utf8(out.stdout).ok()?;
        t.contains(r#"mxguard_dnsbl_zone_results_total{result="listed",zone="dqs"} 1"#)
            .then_some(t)
    });
    assert!(!text.contains("s3cr3tkey"), "key in the metrics:\n{text}");
    let log = rig.mx.log();
    assert!(log.contains("dqs"), "{log}");
    assert!(!log.contains("s3cr3tkey"), "key in the log:\n{log}");
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
    // Two signatures: rsa-sha256 on top of an rsa-sha1 one; one result each.
    let sha1 = keys.sign_rsa_sha1(&m, "signed.test");
    std::fs::write(
        &msg,
        keys.sign_rsa(&sha1, "signed.test", Canonicalization::Relaxed),
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
        text.contains("checks: spf=pass spf_helo=fail dkim=pass[pass:signed.test/rsa,permerror:signed.test/rsa] dmarc=pass(p=reject) arc=none dnsbl=listed:bl.test,bl2.test(score=4)"),
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
