//! Issue 2: TLS on the client side, with real clients and the real Postfix behind.
//! STARTTLS (RFC 3207) with Python `smtplib` verifying the test CA and `swaks --tls`, and
//! an implicit-TLS listener (port 465 style); in each case the message reaches Postfix
//! byte-identical below the trace lines, Postfix records the real client address, and
//! our trace line records the client's TLS (issue 10).

mod support;

use std::time::Duration;

use support::certs::TestCerts;
use support::client::{cmd_on, read_reply_from, start_tls, swaks_send};
use support::mxguard::{MxGuard, MxOpts, tls_config};
use support::postfix::Postfix;

const TOOLS: &[&str] = &["postfix", "/usr/lib/postfix/sbin/master"];

/// The client used TLS: below Postfix's own Received line (which can only say `ESMTP`:
/// XCLIENT has no way to tell it about TLS) is ours for the client hop, with the cipher.
#[track_caller]
fn assert_client_tls_traced(d: &support::postfix::Delivered) {
    let trace = d.trace();
    assert_eq!(trace.len(), 2, "{trace:#?}");
    assert!(trace[0].contains("(Postfix)"), "{trace:#?}");
    assert!(
        trace[1].contains("(using TLSv1.3 with cipher TLS13_")
            && trace[1].contains("(mxguard) with ESMTPS"),
        "{trace:#?}"
    );
}

fn message(subject: &str) -> Vec<u8> {
    format!(
        "From: a@example.org\r\nTo: alice@test.example\r\nSubject: {subject}\r\nDate: Sun, 29 Nov 2026 12:00:00 +0000\r\nMessage-ID: <{subject}@example.org>\r\n\r\nover TLS\r\n.dot\r\n"
    )
    .into_bytes()
}

const SMTPLIB_STARTTLS: &str = r#"
import sys, smtplib, ssl
host, port, src, ca, msgfile = sys.argv[1:6]
ctx = ssl.create_default_context(cafile=ca)
s = smtplib.SMTP(host, int(port), local_hostname="tls-client.example", source_address=(src, 0), timeout=60)
s.ehlo()
assert s.has_extn("starttls"), s.esmtp_features
s.starttls(context=ctx)
s.ehlo()
assert not s.has_extn("starttls"), "STARTTLS offered again inside TLS"
print("cipher", s.sock.cipher())
s.sendmail("a@example.org", ["alice@test.example"], open(msgfile, "rb").read())
s.quit()
print("OK")
"#;

#[test]
fn smtplib_starttls_with_verified_certificate() {
    if !support::require(TOOLS, true) || !support::require(&["python3"], false) {
        return;
    }
    let certs = TestCerts::generate();
    let pf = Postfix::start();
    let mx = MxGuard::start(MxOpts::new(pf.addr).config(&tls_config(
        &certs.leaf_chain,
        &certs.leaf_key,
        false,
    )));
    let msg = message("smtplib-tls");
    let tmp = support::tempdir("mxg-msg.");
    let f = tmp.path().join("m.eml");
    std::fs::write(&f, &msg).unwrap();
    // 127.0.0.1 is in the leaf's SANs: the host name check passes for the address
    let out = support::client::python(
        SMTPLIB_STARTTLS,
        &[
            "127.0.0.1",
            &mx.addr.port().to_string(),
            "127.0.0.4",
            &certs.ca_cert.display().to_string(),
            &f.display().to_string(),
        ],
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("OK"),
        "{text}\n{}",
        mx.log()
    );
    let d = pf.wait_delivered(1, Duration::from_secs(20));
    support::assert_bytes_eq(
        d[0].without_trace(),
        &support::crlf_to_lf(&msg),
        "delivered",
    );
    assert_eq!(d[0].env("client_address"), "127.0.0.4");
    assert_eq!(d[0].env("client_helo"), "tls-client.example");
    assert_client_tls_traced(&d[0]);
}

#[test]
fn swaks_starttls() {
    if !support::require(TOOLS, true) || !support::require(&["swaks"], false) {
        return;
    }
    let certs = TestCerts::generate();
    let pf = Postfix::start();
    let mx = MxGuard::start(MxOpts::new(pf.addr).config(&tls_config(
        &certs.leaf_chain,
        &certs.leaf_key,
        false,
    )));
    let msg = message("swaks-tls");
    let ca = certs.ca_cert.display().to_string();
    let (ok, out) = swaks_send(
        mx.addr,
        "127.0.0.5",
        "swaks-tls.example",
        "a@example.org",
        "alice@test.example",
        &msg,
        &["--tls", "--tls-verify", "--tls-ca-path", &ca],
    );
    assert!(ok, "{out}\n{}", mx.log());
    let d = pf.wait_delivered(1, Duration::from_secs(20));
    support::assert_bytes_eq(
        d[0].without_trace(),
        &support::crlf_to_lf(&msg),
        "delivered",
    );
    assert_eq!(d[0].env("client_address"), "127.0.0.5");
    assert_client_tls_traced(&d[0]);
}

#[test]
fn implicit_tls_listener() {
    if !support::require(TOOLS, true) {
        return;
    }
    let certs = TestCerts::generate();
    let pf = Postfix::start();
    let mut opts =
        MxOpts::new(pf.addr).config(&tls_config(&certs.leaf_chain, &certs.leaf_key, true));
    opts.implicit_tls = Some(certs.rustls_client_config());
    let mx = MxGuard::start(opts);
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&std::net::SocketAddr::from(([127, 0, 0, 6], 0)).into())
        .unwrap();
    sock.connect(&mx.addr.into()).unwrap();
    let mut tls =
        start_tls(sock.into(), certs.rustls_client_config(), "mx.test").expect("TLS handshake");
    let mut buf = Vec::new();
    let g = read_reply_from(&mut tls, &mut buf).expect("greeting");
    assert_eq!(g.code, 220, "{g}");
    let e = cmd_on(&mut tls, &mut buf, "EHLO implicit.example").expect("EHLO");
    assert_eq!(e.code, 250, "{e}");
    assert!(
        !e.lines.iter().any(|l| l.eq_ignore_ascii_case("STARTTLS")),
        "no STARTTLS inside implicit TLS: {e}"
    );
    for (c, want) in [
        ("MAIL FROM:<a@example.org>", 250),
        ("RCPT TO:<alice@test.example>", 250),
        ("DATA", 354),
    ] {
        let r = cmd_on(&mut tls, &mut buf, c).expect("reply");
        assert_eq!(r.code, want, "{c}: {r}");
    }
    let msg = message("implicit");
    std::io::Write::write_all(&mut tls, &support::client::dot_stuff(&msg)).unwrap();
    let r = cmd_on(&mut tls, &mut buf, ".").expect("final reply");
    assert_eq!(r.code, 250, "{r}");
    let d = pf.wait_delivered(1, Duration::from_secs(20));
    support::assert_bytes_eq(
        d[0].without_trace(),
        &support::crlf_to_lf(&msg),
        "delivered",
    );
    assert_eq!(d[0].env("client_address"), "127.0.0.6");
    assert_client_tls_traced(&d[0]);
}

fn postfix_with_tls(certs: &TestCerts) -> Postfix {
    Postfix::start_with(support::postfix::PostfixOpts {
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
    })
}

/// ASSUMED upstream keys (core config draft): tls, tls_verify, ca_file, tls_name.
fn upstream_tls_config(certs: &TestCerts, name: &str) -> String {
    format!(
        "upstreams:\n  - address: \"{{upstream}}\"\n    tls: require\n    tls_verify: true\n    ca_file: {}\n    tls_name: {name}\n    command_timeout: 5s\n",
        certs.ca_cert.display()
    )
}

#[test]
fn starttls_to_the_upstream_with_verification() {
    if !support::require(TOOLS, true) {
        return;
    }
    let certs = TestCerts::generate();
    let pf = postfix_with_tls(&certs);
    let mx = MxGuard::start(MxOpts::new(pf.addr).config(&upstream_tls_config(&certs, "mx.test")));
    let msg = message("upstream-tls");
    let mut c = support::client::RawClient::connect(mx.addr);
    c.ehlo("client.example");
    let r = c.transaction(
        "a@example.org",
        &["alice@test.example"],
        &support::client::dot_stuff(&msg),
    );
    assert_eq!(r.last().unwrap().code, 250, "{r:?}\n{}", mx.log());
    let d = pf.wait_delivered(1, Duration::from_secs(20));
    support::assert_bytes_eq(
        d[0].without_first_received(),
        &support::crlf_to_lf(&msg),
        "delivered",
    );
    let received = d[0].first_received();
    assert!(
        received.contains("using TLS"),
        "Postfix saw a TLS session: {received}"
    );
    assert_eq!(d[0].env("client_address"), "127.0.0.2");
}

#[test]
fn upstream_certificate_name_mismatch_gives_4xx_never_250() {
    if !support::require(TOOLS, true) {
        return;
    }
    let certs = TestCerts::generate();
    let pf = postfix_with_tls(&certs);
    let mx =
        MxGuard::start(MxOpts::new(pf.addr).config(&upstream_tls_config(&certs, "wrong.example")));
    let mut c = support::client::RawClient::connect(mx.addr);
    c.ehlo("client.example");
    let r = c.transaction(
        "a@example.org",
        &["alice@test.example"],
        b"Subject: x\r\n\r\nx\r\n",
    );
    let last = r.last().unwrap();
    assert_eq!(
        last.class(),
        4,
        "an unverifiable upstream is a temporary failure: {r:?}"
    );
    drop(mx); // its pool may be opening a connection (to be refused) while it runs
    let d = pf.settle(Duration::from_secs(20));
    assert!(
        d.is_empty(),
        "nothing may be delivered over an unverified upstream"
    );
}

#[test]
fn the_server_picks_its_own_cipher_order() {
    if !support::require(TOOLS, true) {
        return;
    }
    let certs = TestCerts::generate();
    let pf = Postfix::start();
    let mx = MxGuard::start(MxOpts::new(pf.addr).config(&tls_config(
        &certs.leaf_chain,
        &certs.leaf_key,
        false,
    )));
    // A client that prefers ChaCha20 (listed first) still gets our first choice.
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![
        rustls::crypto::ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
        rustls::crypto::ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
    ];
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(certs.ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut c = support::client::RawClient::connect(mx.addr);
    c.ehlo("client.example");
    assert_eq!(c.cmd("STARTTLS").code, 220);
    let tls = start_tls(c.stream, std::sync::Arc::new(cfg), "mx.test").unwrap();
    let suite = tls.conn.negotiated_cipher_suite().unwrap().suite();
    assert_eq!(suite, rustls::CipherSuite::TLS13_AES_256_GCM_SHA384);
}
