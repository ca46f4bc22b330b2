//! Every check against a real DNS server (hickory-server in process, on a loopback
//! port) through the library's own resolver and checker: SPF results and limits, DKIM
//! rsa-sha256 and ed25519-sha256 with keys generated now, a tampered body, the relaxed
//! body workaround, signatures RFC 6376/8301 refuse (rsa-sha1, 512-bit keys, no `v=`,
//! `i=` outside `d=`, malformed), DMARC alignment and policies per author domain and
//! with several records, DNS lists (names, ranges, masks, allow lists), reverse DNS,
//! DNS timeouts, and the RFC 8463 example.

mod support;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use mail_auth::dkim::Canonicalization;
use mxguard::checks::{CheckInput, Checker};
use mxguard::config::{Config, DnsblZone};
use mxguard::dns::Dns;
use mxguard::envelope::{AuthFacts, AuthStatus, Checks, DmarcReason, RdnsStatus};
use mxguard::telemetry::Metrics;
use support::authzone::{Keys, message, zones};
use support::dns::TestDns;

fn config(dns: &TestDns) -> Config {
    let mut c = Config {
        hostname: "mx.proxy.test".into(),
        ..Config::default()
    };
    c.dns.servers = vec![dns.addr];
    c.dns.timeout = Duration::from_millis(500);
    c.dns.attempts = 1;
    c.checks.timeout = Duration::from_secs(3);
    c.checks.dnsbl.zones = vec![
        DnsblZone {
            weight: 3,
            ..DnsblZone::new("bl.test")
        },
        DnsblZone {
            codes: vec!["127.0.0.4".parse().unwrap()],
            ..DnsblZone::new("bl2.test")
        },
    ];
    c
}

struct Env {
    rt: tokio::runtime::Runtime,
    checker: Checker,
    metrics: Arc<Metrics>,
    keys: Keys,
    _dns: TestDns,
}

fn env_with(cfg: impl FnOnce(&mut Config)) -> Env {
    let keys = Keys::generate();
    let dns = TestDns::start(&zones(&keys));
    let mut c = config(&dns);
    cfg(&mut c);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let metrics = Arc::new(Metrics::standalone());
    let checker = rt.block_on(async {
        let d = Dns::new(&c.dns, metrics.clone()).unwrap();
        Checker::new(Arc::new(c), d, metrics.clone())
    });
    Env {
        rt,
        checker,
        metrics,
        keys,
        _dns: dns,
    }
}

fn env() -> Env {
    env_with(|_| {})
}

impl Env {
    fn run(&self, want: Checks, ip: &str, helo: &str, from: &str, msg: Option<&[u8]>) -> AuthFacts {
        let ip: IpAddr = ip.parse().unwrap();
        let mut f = AuthFacts::default();
        let input = CheckInput {
            ip,
            helo: Some(helo),
            sender: Some(from),
            message: msg,
        };
        self.rt.block_on(self.checker.run(want, &input, &mut f));
        f
    }

    fn spf(&self, from: &str) -> AuthStatus {
        self.run(Checks::SPF, "127.0.0.10", "client.example", from, None)
            .spf
            .unwrap()
            .status
    }
}

#[test]
fn spf_results_and_limits() {
    let e = env();
    assert_eq!(e.spf("a@pass.test"), AuthStatus::Pass);
    assert_eq!(e.spf("a@fail.test"), AuthStatus::Fail);
    assert_eq!(e.spf("a@soft.test"), AuthStatus::SoftFail);
    assert_eq!(e.spf("a@neutral.test"), AuthStatus::Neutral);
    assert_eq!(e.spf("a@nospf.test"), AuthStatus::None);
    assert_eq!(e.spf("a@nowhere.test"), AuthStatus::None);
    // include: and redirect= of a domain without SPF record (RFC 7208 §5.2, §6.1).
    assert_eq!(e.spf("a@perm.test"), AuthStatus::PermError);
    assert_eq!(e.spf("a@perm2.test"), AuthStatus::PermError);
    // 11 `a:` mechanisms before the matching ip4: over the 10-lookup limit.
    assert_eq!(e.spf("a@lookups10.test"), AuthStatus::PermError);
    // Two void lookups are allowed, a third is a permerror (RFC 7208 §4.6.4).
    assert_eq!(e.spf("a@void2.test"), AuthStatus::Pass);
    assert_eq!(e.spf("a@void3.test"), AuthStatus::PermError);
    // An include that never answers: temperror, and SPF is marked degraded (tempfail
    // is the default failure policy) so a reject that rests on it becomes a 4xx.
    let f = e.run(
        Checks::SPF,
        "127.0.0.10",
        "client.example",
        "a@slow.test",
        None,
    );
    assert_eq!(f.spf.unwrap().status, AuthStatus::TempError);
    assert!(f.degraded.contains(Checks::SPF));
    // HELO identity, and the null sender checked as postmaster@HELO.
    let f = e.run(Checks::SPF, "127.0.0.10", "helo.test", "", None);
    assert_eq!(f.spf_helo.as_ref().unwrap().status, AuthStatus::Pass);
    assert_eq!(f.spf.unwrap().status, AuthStatus::Pass);
    let f = e.run(Checks::SPF, "127.0.0.99", "helo.test", "", None);
    assert_eq!(f.spf.unwrap().status, AuthStatus::Fail);
    let m = e.metrics.encode();
    assert!(
        m.contains(r#"mxguard_auth_results_total{check="spf",result="permerror"} 4"#),
        "{m}"
    );
}

#[test]
fn dkim_rsa_ed25519_tampered_and_dmarc() {
    let e = env();
    let all = Checks::DKIM | Checks::DMARC | Checks::SPF;
    let msg = message("alice@signed.test", "rsa", "Hello.\r\n");
    let signed = e
        .keys
        .sign_rsa(&msg, "signed.test", Canonicalization::Relaxed);
    let f = e.run(
        all,
        "127.0.0.10",
        "c.example",
        "alice@signed.test",
        Some(&signed),
    );
    let sig = &f.dkim.as_ref().unwrap()[0];
    assert_eq!(
        (sig.status, sig.algorithm.as_str()),
        (AuthStatus::Pass, "rsa-sha256"),
        "{sig:?}"
    );
    let d = f.dmarc.unwrap();
    assert_eq!(
        (d.status, d.policy, d.domain.as_str()),
        (AuthStatus::Pass, "reject", "signed.test")
    );

    let signed = e.keys.sign_ed(&msg, "signed.test");
    let f = e.run(
        all,
        "127.0.0.10",
        "c.example",
        "alice@signed.test",
        Some(&signed),
    );
    let sig = &f.dkim.as_ref().unwrap()[0];
    assert_eq!(
        (sig.status, sig.algorithm.as_str()),
        (AuthStatus::Pass, "ed25519-sha256"),
        "{sig:?}"
    );

    // A key over `max_rsa_bits` (4096) is refused before any RSA work: permerror.
    let s = String::from_utf8(
        e.keys
            .sign_rsa(&msg, "signed.test", Canonicalization::Relaxed),
    )
    .unwrap()
    .replacen("s=rsa;", "s=big;", 1);
    let f = e.run(
        Checks::DKIM,
        "127.0.0.10",
        "c.example",
        "alice@signed.test",
        Some(s.as_bytes()),
    );
    let sig = &f.dkim.as_ref().unwrap()[0];
    assert_eq!(sig.status, AuthStatus::PermError, "{sig:?}");
    assert_eq!(sig.reason.as_deref(), Some("key larger than 4096 bits"));

    // A body changed after signing: the signature fails; SPF for the MAIL FROM domain
    // fails too (other address), so DMARC fails under p=reject.
    let mut tampered = e
        .keys
        .sign_rsa(&msg, "signed.test", Canonicalization::Relaxed);
    let n = tampered.len();
    tampered[n - 3] = b'!';
    let f = e.run(
        all,
        "192.0.2.99",
        "c.example",
        "alice@signed.test",
        Some(&tampered),
    );
    assert_eq!(f.dkim_status(), Some(AuthStatus::Fail), "{:?}", f.dkim);
    let d = f.dmarc.unwrap();
    assert_eq!((d.status, d.policy), (AuthStatus::Fail, "reject"));

    // Signed by another domain than From (DKIM passes, unaligned), SPF fails: DMARC
    // fails with the From domain's policy, reject or quarantine; t=y lowers it one step.
    for (dom, policy) in [
        ("reject.test", "reject"),
        ("quarantine.test", "quarantine"),
        ("testing.test", "quarantine"),
        // RFC 7489 pct: 0 % keep the policy (lowered one step), 100 % all do.
        ("sampled.test", "quarantine"),
        ("fullpct.test", "reject"),
    ] {
        let m = message(&format!("bob@{dom}"), "unaligned", "Hi.\r\n");
        let s = e.keys.sign_rsa(&m, "other.test", Canonicalization::Relaxed);
        let f = e.run(all, "127.0.0.10", "c.example", "bob@fail.test", Some(&s));
        assert_eq!(f.dkim_status(), Some(AuthStatus::Pass));
        let d = f.dmarc.unwrap();
        assert_eq!((d.status, d.policy), (AuthStatus::Fail, policy), "{dom}");
    }
    // Aligned through SPF alone (no signature).
    let m = message("carol@signed.test", "spf-aligned", "Hi.\r\n");
    let f = e.run(
        all,
        "127.0.0.10",
        "c.example",
        "carol@signed.test",
        Some(&m),
    );
    assert_eq!(f.dkim_status(), Some(AuthStatus::None));
    assert_eq!(f.dmarc.unwrap().status, AuthStatus::Pass);
}

/// `signed` with the tag `name=` removed from its (first) DKIM-Signature.
fn drop_tag(signed: &[u8], name: &str) -> Vec<u8> {
    let s = String::from_utf8(signed.to_vec()).unwrap();
    let at = s.find(&format!("{name}=")).unwrap();
    let end = at + s[at..].find(';').unwrap() + 1;
    format!("{}{}", &s[..at], &s[end..]).into_bytes()
}

/// Signatures that RFC 8301 and RFC 6376 do not accept are `permerror`, each with its
/// reason, before any RSA work; none can pass or satisfy DMARC. Every DKIM-Signature
/// gets one result, in header order.
#[test]
fn signatures_rfc_8301_and_6376_refuse() {
    let e = env();
    let all = Checks::DKIM | Checks::DMARC | Checks::SPF;
    let msg = message("alice@signed.test", "refused", "Hello.\r\n");
    let check = |signed: &[u8]| {
        // SPF fails (192.0.2.99 is not in signed.test's record): DMARC rests on DKIM.
        e.run(
            all,
            "192.0.2.99",
            "c.example",
            "alice@signed.test",
            Some(signed),
        )
    };
    let one = |f: &AuthFacts| {
        let sigs = f.dkim.as_ref().unwrap();
        assert_eq!(sigs.len(), 1, "{sigs:?}");
        (sigs[0].status, sigs[0].reason.clone().unwrap_or_default())
    };
    // rsa-sha1 with the 2048-bit key: a real signature, and still not valid.
    let f = check(&e.keys.sign_rsa_sha1(&msg, "signed.test"));
    assert_eq!(
        one(&f),
        (
            AuthStatus::PermError,
            "rsa-sha1 is not acceptable (RFC 8301)".into()
        )
    );
    assert_eq!(f.dkim.as_ref().unwrap()[0].algorithm, "rsa-sha1");
    let d = f.dmarc.unwrap();
    assert_eq!((d.status, d.policy), (AuthStatus::Fail, "reject"), "{d:?}");
    // A 512-bit key: refused from its size, not "signature verification failed".
    let f = check(&e.keys.sign_small_rsa(&msg, "signed.test", 512));
    assert_eq!(
        one(&f),
        (
            AuthStatus::PermError,
            "RSA key of 512 bits is under 1024 bits (RFC 8301)".into()
        )
    );
    assert_eq!(f.dmarc.unwrap().status, AuthStatus::Fail);
    // 1024 bits is the smallest acceptable key.
    let f = check(&e.keys.sign_small_rsa(&msg, "signed.test", 1024));
    assert_eq!(one(&f), (AuthStatus::Pass, String::new()));
    assert_eq!(f.dmarc.unwrap().status, AuthStatus::Pass);
    // i= outside d=, no v=, no bh=, a garbage tag.
    let f = check(
        &e.keys
            .sign_rsa_auid(&msg, "signed.test", "ceo@elsewhere.test"),
    );
    assert_eq!(
        one(&f),
        (
            AuthStatus::PermError,
            "i= is not within d= (RFC 6376 section 3.5)".into()
        )
    );
    // l= lets anyone append to the signed body: mail-auth's strict parser refuses it.
    let f = check(&e.keys.sign_rsa_body_length(&msg, "signed.test"));
    assert_eq!(
        one(&f),
        (
            AuthStatus::PermError,
            "Insecure 'l=' tag found in Signature".into()
        )
    );
    let good = e
        .keys
        .sign_rsa(&msg, "signed.test", Canonicalization::Relaxed);
    let f = check(&drop_tag(&good, "v"));
    assert_eq!(
        one(&f),
        (
            AuthStatus::PermError,
            "v= tag missing (RFC 6376 section 3.5)".into()
        )
    );
    assert_eq!(f.dmarc.unwrap().status, AuthStatus::Fail);
    let f = check(&drop_tag(&good, "bh"));
    assert_eq!(
        one(&f),
        (
            AuthStatus::PermError,
            "missing bh= tag (RFC 6376 section 3.5)".into()
        )
    );
    let garbage = String::from_utf8(good.clone())
        .unwrap()
        .replacen("v=1;", "v=1; )garbage(;", 1);
    let f = check(garbage.as_bytes());
    assert_eq!(
        one(&f),
        (
            AuthStatus::PermError,
            "malformed tag list (RFC 6376 section 3.2)".into()
        )
    );
    let sig = &f.dkim.as_ref().unwrap()[0];
    assert_eq!(
        (sig.domain.as_str(), sig.selector.as_str()),
        ("signed.test", "rsa")
    );
    // Three signatures (malformed, good, rsa-sha1): three results in header order; the
    // good one passes and DMARC passes on it alone.
    let ed = e.keys.sign_ed(&msg, "signed.test");
    let ed_header = &ed[..ed.len() - msg.len()];
    let sha1 = e.keys.sign_rsa_sha1(&msg, "signed.test");
    let sha1_header = &sha1[..sha1.len() - msg.len()];
    let no_bh = drop_tag(&good, "bh");
    let no_bh_header = &no_bh[..no_bh.len() - msg.len()];
    let three = [no_bh_header, ed_header, sha1_header, &msg].concat();
    let f = check(&three);
    let got: Vec<(AuthStatus, &str)> = f
        .dkim
        .as_ref()
        .unwrap()
        .iter()
        .map(|s| (s.status, s.algorithm.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (AuthStatus::PermError, "rsa-sha256"),
            (AuthStatus::Pass, "ed25519-sha256"),
            (AuthStatus::PermError, "rsa-sha1"),
        ]
    );
    assert_eq!(f.dkim_status(), Some(AuthStatus::Pass));
    assert_eq!(f.dmarc.unwrap().status, AuthStatus::Pass);
}

/// RFC 7489 §6.6.1: every author domain is evaluated and the strictest result applies;
/// more than one From field, or none with a domain, carries its reason. §6.6.3: two
/// DMARC records at the name that applies mean no policy.
#[test]
fn dmarc_per_author_domain_and_several_records() {
    let e = env();
    let all = Checks::DKIM | Checks::DMARC | Checks::SPF;
    let with_from = |from_lines: &str, subject: &str| {
        format!(
            "{from_lines}To: <rcpt@example.org>\r\nSubject: {subject}\r\nDate: Mon, 30 Nov 2026 00:00:00 +0000\r\nMessage-ID: <{subject}@test>\r\n\r\nHi.\r\n"
        )
        .into_bytes()
    };
    // The spoof: a second From field for a p=reject domain, signed and SPF-aligned for
    // the attacker's own domain. mail-auth alone says `none`; mxguard evaluates both.
    let m = with_from(
        "From: <boss@reject.test>\r\nFrom: <mallory@signed.test>\r\n",
        "two-from",
    );
    let signed = e.keys.sign_ed(&m, "signed.test");
    let f = e.run(
        all,
        "127.0.0.10",
        "c.example",
        "mallory@signed.test",
        Some(&signed),
    );
    let d = f.dmarc.unwrap();
    assert_eq!(
        (d.status, d.policy, d.domain.as_str(), d.reason),
        (
            AuthStatus::Fail,
            "reject",
            "reject.test",
            Some(DmarcReason::MultipleFrom)
        ),
        "{d:?}"
    );
    // One From field with two authors: both evaluated, the strictest kept, no reason.
    let m = with_from(
        "From: <mallory@signed.test>, <boss@reject.test>\r\n",
        "two-authors",
    );
    let signed = e.keys.sign_ed(&m, "signed.test");
    let f = e.run(
        all,
        "127.0.0.10",
        "c.example",
        "mallory@signed.test",
        Some(&signed),
    );
    let d = f.dmarc.unwrap();
    assert_eq!(
        (d.status, d.policy, d.domain.as_str(), d.reason),
        (AuthStatus::Fail, "reject", "reject.test", None),
        "{d:?}"
    );
    // Both authors aligned: pass.
    let m = with_from("From: <a@signed.test>, <b@signed.test>\r\n", "same-domain");
    let signed = e.keys.sign_ed(&m, "signed.test");
    let f = e.run(
        all,
        "127.0.0.10",
        "c.example",
        "a@signed.test",
        Some(&signed),
    );
    assert_eq!(f.dmarc.unwrap().status, AuthStatus::Pass);
    // No From field, an empty group, an address without a domain: no author domain.
    for from in ["", "From: undisclosed-recipients:;\r\n", "From: boss\r\n"] {
        let m = with_from(from, "no-from");
        let f = e.run(all, "127.0.0.10", "c.example", "a@signed.test", Some(&m));
        let d = f.dmarc.unwrap();
        assert_eq!(
            (d.status, d.reason),
            (AuthStatus::PermError, Some(DmarcReason::NoFrom)),
            "{from:?}: {d:?}"
        );
    }
    // Two records at the author domain, or at the parent that applies: no policy,
    // although the message is unaligned and SPF fails.
    for from in ["x@twice.test", "x@sub.subtwice.test"] {
        let m = message(from, "twice", "Hi.\r\n");
        let s = e.keys.sign_rsa(&m, "other.test", Canonicalization::Relaxed);
        let f = e.run(all, "127.0.0.10", "c.example", "x@fail.test", Some(&s));
        let d = f.dmarc.unwrap();
        assert_eq!(
            (d.status, d.policy, d.reason),
            (AuthStatus::None, "none", Some(DmarcReason::MultipleRecords)),
            "{from}: {d:?}"
        );
    }
    let m = e.metrics.encode();
    assert!(
        m.contains(r#"mxguard_auth_results_total{check="dmarc_reason",result="multiple_from"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"mxguard_auth_results_total{check="dmarc_reason",result="no_from"} 3"#),
        "{m}"
    );
}

/// mail-auth 0.13.3 bug #62: relaxed body canonicalisation keeps whitespace-only lines
/// at the end of the body. A message signed per RFC 6376 (the signature covers the
/// body without those lines, which is what relaxed canonicalisation hashes) must pass.
#[test]
fn relaxed_body_with_trailing_whitespace_lines_passes() {
    let e = env();
    let msg = message("alice@signed.test", "ws", "Hello.\r\n");
    let signed = e
        .keys
        .sign_rsa(&msg, "signed.test", Canonicalization::Relaxed);
    let mut with_ws = signed.clone();
    with_ws.extend_from_slice(b"  \r\n\t\r\n");
    let f = e.run(
        Checks::DKIM,
        "127.0.0.10",
        "c.example",
        "a@signed.test",
        Some(&with_ws),
    );
    assert_eq!(f.dkim_status(), Some(AuthStatus::Pass), "{:?}", f.dkim);
    // Never for simple body canonicalisation, where those lines count.
    let simple = e
        .keys
        .sign_rsa(&msg, "signed.test", Canonicalization::Simple);
    let mut with_ws = simple.clone();
    with_ws.extend_from_slice(b"  \r\n\t\r\n");
    let f = e.run(
        Checks::DKIM,
        "127.0.0.10",
        "c.example",
        "a@signed.test",
        Some(&with_ws),
    );
    assert_eq!(f.dkim_status(), Some(AuthStatus::Fail), "{:?}", f.dkim);
}

#[test]
fn dnsbl_listed_clean_error_and_foreign_answers() {
    let e = env();
    let f = e
        .run(Checks::DNSBL, "127.0.0.10", "c", "a@b.c", None)
        .dnsbl
        .unwrap();
    assert_eq!(f.hits.len(), 1);
    assert_eq!(f.hits[0].zone, "bl.test");
    assert_eq!(
        f.hits[0].reason.as_deref(),
        Some("Listed: see https://bl.test/127.0.0.10")
    );
    assert_eq!(f.score, 3);
    let f = e
        .run(Checks::DNSBL, "127.0.0.99", "c", "a@b.c", None)
        .dnsbl
        .unwrap();
    assert!(
        f.hits.is_empty() && f.unusable.is_empty() && f.score == 0,
        "{f:?}"
    );
    // The 127.255.255.x error answer and an answer outside 127/8: unusable, never listed.
    for ip in ["127.0.0.11", "127.0.0.12"] {
        let f = e.run(Checks::DNSBL, ip, "c", "a@b.c", None).dnsbl.unwrap();
        assert!(f.hits.is_empty(), "{ip}: {f:?}");
        assert_eq!(f.unusable, vec!["bl.test".to_string()], "{ip}");
    }
    // Two zones with weights; bl2 only counts its expected code.
    let f = e
        .run(Checks::DNSBL, "127.0.0.13", "c", "a@b.c", None)
        .dnsbl
        .unwrap();
    assert_eq!(f.score, 4, "{f:?}");
}

/// A zone with an access key is shown by its name everywhere; answer codes in ranges and
/// bitmasks; an allow list counts only its listed codes (never dnswl's 127.0.0.255).
#[test]
fn dnsbl_names_ranges_masks_and_allow_lists() {
    let e = env_with(|c| {
        c.checks.dnsbl.zones = vec![
            DnsblZone {
                name: Some("dqs".into()),
                codes: vec!["127.0.0.2-127.0.0.11".parse().unwrap()],
                weight: 3,
                ..DnsblZone::new("s3cr3tkey.dqs.test")
            },
            DnsblZone {
                codes: vec!["127.0.2.0-127.0.20.3".parse().unwrap()],
                weight: -5,
                ..DnsblZone::new("wl.test")
            },
            DnsblZone {
                mask: Some(0x04),
                weight: 2,
                ..DnsblZone::new("multi.test")
            },
        ];
    });
    let f = |ip: &str| e.run(Checks::DNSBL, ip, "c", "a@b.c", None).dnsbl.unwrap();
    let listed = f("127.0.0.10");
    assert_eq!(listed.hits.len(), 1, "{listed:?}");
    assert_eq!(listed.hits[0].zone, "dqs");
    assert_eq!(
        listed.score, 3,
        "127.0.0.255 from the allow list must not count"
    );
    let trusted = f("127.0.0.14");
    let zones: Vec<&str> = trusted.hits.iter().map(|h| h.zone.as_str()).collect();
    assert_eq!(zones, ["wl.test", "multi.test"]);
    assert_eq!(trusted.score, -3);
    assert!(
        f("127.0.0.15").hits.is_empty(),
        "bit 0x04 is not set in 127.0.0.2"
    );
    let m = e.metrics.encode();
    assert!(
        m.contains(r#"mxguard_dnsbl_zone_results_total{result="listed",zone="dqs"} 1"#),
        "{m}"
    );
    assert!(
        !m.contains("s3cr3tkey"),
        "the key leaked into the metrics:\n{m}"
    );
}

#[test]
fn reverse_dns_variants() {
    let e = env();
    let r = |ip: &str| e.run(Checks::RDNS, ip, "c", "a@b.c", None).rdns.unwrap();
    let p = r("192.0.2.10");
    assert_eq!(
        (p.status, p.name.as_deref(), p.generic),
        (RdnsStatus::Pass, Some("mail.pass.test"), false)
    );
    assert_eq!(r("192.0.2.11").status, RdnsStatus::Mismatch);
    assert_eq!(r("192.0.2.12").status, RdnsStatus::None);
    let g = r("192.0.2.13");
    assert_eq!((g.status, g.generic), (RdnsStatus::Pass, true));
    assert_eq!(r("192.0.2.14").status, RdnsStatus::TempError);
}

/// RFC 8463 Appendix A: the ed25519 and RSA signatures of the example message verify
/// against the published keys (served by our DNS server). Extra conformance data from
/// `../shared/testdata`; skipped with a message where it is absent.
#[test]
fn rfc8463_example_verifies() {
    let dir = [
        "../shared/testdata/dkim/rfc8463",
        "/work/shared/testdata/dkim/rfc8463",
    ]
    .into_iter()
    .map(std::path::PathBuf::from)
    .find(|p| p.is_dir());
    let Some(dir) = dir else {
        assert!(!support::in_ci(), "testdata missing under CI");
        eprintln!("SKIPPED: ../shared/testdata/dkim/rfc8463 not present");
        return;
    };
    // The file writes each TXT in parentheses; hickory's zone lexer wants them on one
    // line without, so drop the parentheses (the record data is unchanged).
    let zone = std::fs::read_to_string(dir.join("A2-keys.zone"))
        .unwrap()
        .replace("(\"", "\"")
        .replace("\")", "\"");
    let text = format!("{}{}", support::dns::soa("football.example.com."), zone);
    let dns = TestDns::start(&[("football.example.com.", text)]);
    let mut c = config(&dns);
    c.checks.dnsbl.zones.clear();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let metrics = Arc::new(Metrics::standalone());
    let msg = std::fs::read(dir.join("A3-signed-message.eml")).unwrap();
    let f = rt.block_on(async {
        let d = Dns::new(&c.dns, metrics.clone()).unwrap();
        let checker = Checker::new(Arc::new(c), d, metrics);
        let mut f = AuthFacts::default();
        let input = CheckInput {
            ip: "127.0.0.10".parse().unwrap(),
            helo: Some("football.example.com"),
            sender: Some("joe@football.example.com"),
            message: Some(&msg),
        };
        checker.run(Checks::DKIM, &input, &mut f).await;
        f
    });
    let sigs = f.dkim.unwrap();
    assert_eq!(sigs.len(), 2);
    for s in &sigs {
        assert_eq!(s.status, AuthStatus::Pass, "{s:?}");
    }
    assert_eq!(sigs[0].algorithm, "ed25519-sha256");
    assert_eq!(sigs[1].algorithm, "rsa-sha256");
}
