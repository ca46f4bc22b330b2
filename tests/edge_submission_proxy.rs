//! Submission (587 STARTTLS, 465 implicit TLS) with AUTH relayed to a real Postfix with
//! Cyrus SASL users, and the PROXY protocol from trusted and untrusted peers, with real
//! clients: Python smtplib, swaks and curl.

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use support::certs::TestCerts;
use support::client::{RawClient, python};
use support::mxguard::{MxGuard, MxOpts};
use support::postfix::{Postfix, PostfixOpts};
use support::{free_port, tempdir};

const TOOLS: &[&str] = &["postfix", "saslpasswd2", "swaks", "curl", "python3"];

/// A private Postfix whose smtpd authenticates `user`/`pass` from a sasldb and relays
/// only for authenticated clients.
fn sasl_postfix() -> Postfix {
    Postfix::start_with(PostfixOpts {
        sasl_users: vec![("user".into(), "pass".into())],
        extra_main_cf: vec![
            "smtpd_tls_auth_only = no".into(),
            "smtpd_relay_restrictions = permit_sasl_authenticated, reject_unauth_destination"
                .into(),
        ],
        ..PostfixOpts::default()
    })
}

struct Submission {
    pf: Postfix,
    mx: MxGuard,
    certs: TestCerts,
    smtps: SocketAddr,
}

fn submission(extra_limits: &str) -> Option<Submission> {
    if !support::require(TOOLS, true) {
        return None;
    }
    let pf = sasl_postfix();
    let certs = TestCerts::generate();
    let smtps: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let config = format!(
        "listeners:\n  - name: submission\n    address: {{listen}}\n    mode: submission\n    tls: {{ cert: {chain}, key: {key} }}\n  - name: smtps\n    address: {smtps}\n    mode: submission\n    implicit_tls: true\n    tls: {{ cert: {chain}, key: {key} }}\nlimits:\n{extra_limits}",
        chain = certs.leaf_chain.display(),
        key = certs.leaf_key.display(),
    );
    let mut opts = MxOpts::new(pf.addr).config(&config);
    opts.hostname = "mx.test".into();
    let mx = MxGuard::start(opts);
    Some(Submission {
        pf,
        mx,
        certs,
        smtps,
    })
}

const SMTPLIB_AUTH: &str = r#"
import sys, smtplib, ssl
host, port, ca, user, password, login = sys.argv[1:7]
ctx = ssl.create_default_context(cafile=ca)
s = smtplib.SMTP(host, int(port), local_hostname="client.example", timeout=30)
s.starttls(context=ctx)
try:
    if login == "yes":
        s.login(user, password)
    s.sendmail("a@example.org", ["alice@test.example"], b"Subject: submitted\r\n\r\nhello\r\n")
    print("OK")
except smtplib.SMTPResponseException as e:
    print("ERR", e.smtp_code, e.smtp_error.decode())
"#;

fn smtplib(sub: &Submission, user: &str, password: &str, login: bool) -> String {
    let port = sub.mx.addr.port().to_string();
    let ca = sub.certs.ca_cert.display().to_string();
    let out = python(
        SMTPLIB_AUTH,
        &[
            "127.0.0.1",
            &port,
            &ca,
            user,
            password,
            if login { "yes" } else { "no" },
        ],
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn smtplib_starttls_auth_plain_relays_through_the_upstream_sasl() {
    let Some(sub) = submission("  max_recipients: 10\n") else {
        return;
    };
    let out = smtplib(&sub, "user", "pass", true);
    assert!(out.starts_with("OK"), "{out}\n{}", sub.mx.log());
    // Postfix's own SASL made the decision, and the message carries the login.
    let got = sub.pf.wait_delivered(1, Duration::from_secs(20));
    assert_eq!(got[0].env("sasl_username"), "user@mx.test");
    assert!(
        sub.pf.maillog().contains("sasl_method=PLAIN"),
        "{}",
        sub.pf.maillog()
    );
    let log = sub.mx.log();
    assert!(
        log.contains("authenticated") && log.contains("user=user"),
        "{log}"
    );
    assert!(
        !log.contains("pass\""),
        "password must never be logged: {log}"
    );
}

#[test]
fn wrong_password_gets_the_upstream_535_and_mail_needs_auth() {
    let Some(sub) = submission("  auth_failures_per_network: 3\n") else {
        return;
    };
    // smtplib tries PLAIN, then LOGIN: two failures.
    let out = smtplib(&sub, "user", "wrong", true);
    assert!(out.starts_with("ERR 535 5.7.8"), "{out}");
    let out = smtplib(&sub, "user", "pass", false);
    assert!(out.starts_with("ERR 530 5.7.0"), "{out}");
    // swaks with AUTH LOGIN and an unknown user: the third failure, the same 535.
    let out = Command::new(support::which("swaks").unwrap())
        .args([
            "--server",
            &sub.mx.addr.to_string(),
            "--tls",
            "--auth",
            "LOGIN",
        ])
        .args(["--auth-user", "nobody-here", "--auth-password", "x"])
        .args([
            "--from",
            "a@example.org",
            "--to",
            "b@example.org",
            "--timeout",
            "30",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("535 5.7.8"), "{text}");
    // Past the limit: even the right password is refused, and the session is closed.
    let out = Command::new(support::which("swaks").unwrap())
        .args([
            "--server",
            &sub.mx.addr.to_string(),
            "--tls",
            "--auth",
            "PLAIN",
        ])
        .args(["--auth-user", "user", "--auth-password", "pass"])
        .args([
            "--from",
            "a@example.org",
            "--to",
            "alice@test.example",
            "--timeout",
            "30",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("421 4.7.0"), "{text}");
    assert!(!text.contains("235 "), "{text}");
}

#[test]
fn auth_before_tls_is_refused_and_not_offered() {
    let Some(sub) = submission("  max_recipients: 10\n") else {
        return;
    };
    let mut c = RawClient::connect(sub.mx.addr);
    let ehlo = c.ehlo("client.example");
    assert!(
        !ehlo.raw().contains("AUTH"),
        "AUTH offered in plaintext: {ehlo}"
    );
    assert!(ehlo.raw().contains("STARTTLS"));
    let r = c.cmd("AUTH PLAIN AHVzZXIAcGFzcw==");
    assert!(r.is("538 5.7.11"), "{r}");
    assert!(c.cmd("MAIL FROM:<a@example.org>").is("530 5.7.0"));
}

#[test]
fn curl_implicit_tls_with_auth_and_plaintext_on_465_is_dropped() {
    let Some(sub) = submission("  max_recipients: 10\n") else {
        return;
    };
    let dir = tempdir("mxg-curl.");
    let msg = dir.path().join("msg.eml");
    std::fs::write(
        &msg,
        "From: a@example.org\r\nSubject: via curl\r\n\r\nhi\r\n",
    )
    .unwrap();
    let out = Command::new(support::which("curl").unwrap())
        .args(["-sS", "--ssl-reqd", "--cacert"])
        .arg(&sub.certs.ca_cert)
        .args([
            "--resolve",
            &format!("mx.test:{}:127.0.0.1", sub.smtps.port()),
        ])
        .arg(format!(
            "smtps://mx.test:{}/client.example",
            sub.smtps.port()
        ))
        .args([
            "--mail-from",
            "a@example.org",
            "--mail-rcpt",
            "alice@test.example",
        ])
        .args([
            "--user",
            "user:pass",
            "--login-options",
            "AUTH=PLAIN",
            "--upload-file",
        ])
        .arg(&msg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = sub.pf.wait_delivered(1, Duration::from_secs(20));
    assert_eq!(got[0].env("sasl_username"), "user@mx.test");
    // Plain SMTP on the implicit-TLS port gets no SMTP dialogue at all.
    let mut c = RawClient::connect_from(sub.smtps, Some("127.0.0.2")).unwrap();
    c.send(b"EHLO client.example\r\n");
    assert!(c.reply_within(Duration::from_secs(5)).is_none());
    assert!(c.closed_within(Duration::from_secs(10)));
}

fn proxy_setup() -> Option<(Postfix, MxGuard)> {
    if !support::require(&["postfix"], true) {
        return None;
    }
    let pf = Postfix::start();
    let config = "listeners:\n  - name: mx\n    address: {listen}\n    proxy_protocol: { trusted: [127.0.0.5/32] }\n";
    let mx = MxGuard::start(MxOpts::new(pf.addr).config(config));
    Some((pf, mx))
}

fn deliver_after(c: &mut RawClient, subject: &str) {
    assert_eq!(c.reply().code, 220);
    c.ehlo("client.example");
    let body = format!("Subject: {subject}\r\n\r\nbody\r\n");
    let codes: Vec<u16> = c
        .transaction("a@example.org", &["alice@test.example"], body.as_bytes())
        .iter()
        .map(|r| r.code)
        .collect();
    assert_eq!(codes, [250, 250, 354, 250]);
}

#[test]
fn proxy_v1_and_v2_from_a_trusted_peer_name_the_client_upstream() {
    let Some((pf, mx)) = proxy_setup() else {
        return;
    };
    let mut c = RawClient::connect_from(mx.addr, Some("127.0.0.5")).unwrap();
    c.send(b"PROXY TCP4 203.0.113.7 192.0.2.1 40001 25\r\n");
    deliver_after(&mut c, "v1");
    let mut v2 = vec![
        0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, 0x21, 0x11, 0x00,
        0x0C,
    ];
    v2.extend_from_slice(&[198, 51, 100, 9, 192, 0, 2, 1]);
    v2.extend_from_slice(&40002u16.to_be_bytes());
    v2.extend_from_slice(&25u16.to_be_bytes());
    let mut c = RawClient::connect_from(mx.addr, Some("127.0.0.5")).unwrap();
    c.send(&v2);
    deliver_after(&mut c, "v2");
    let got = pf.wait_delivered(2, Duration::from_secs(20));
    let mut received: Vec<String> = got.iter().map(|d| d.first_received()).collect();
    received.sort();
    assert!(
        received.iter().any(|r| r.contains("[203.0.113.7]")),
        "{received:?}"
    );
    assert!(
        received.iter().any(|r| r.contains("[198.51.100.9]")),
        "{received:?}"
    );
}

#[test]
fn proxy_header_from_an_untrusted_peer_is_never_believed() {
    let Some((pf, mx)) = proxy_setup() else {
        return;
    };
    let mut c = RawClient::connect_from(mx.addr, Some("127.0.0.2")).unwrap();
    assert_eq!(c.reply().code, 220);
    let r = c.cmd("PROXY TCP4 203.0.113.66 192.0.2.1 40001 25");
    assert!(r.is("550 5.7.0"), "{r}");
    c.ehlo("client.example");
    let codes: Vec<u16> = c
        .transaction(
            "a@example.org",
            &["alice@test.example"],
            b"Subject: u\r\n\r\nx\r\n",
        )
        .iter()
        .map(|r| r.code)
        .collect();
    assert_eq!(codes, [250, 250, 354, 250]);
    let got = pf.wait_delivered(1, Duration::from_secs(20));
    let rcv = got[0].first_received();
    assert!(
        rcv.contains("[127.0.0.2]") && !rcv.contains("203.0.113.66"),
        "{rcv}"
    );
    // A trusted peer that sends garbage instead of a header is disconnected.
    let mut c = RawClient::connect_from(mx.addr, Some("127.0.0.5")).unwrap();
    c.send(b"EHLO not-a-proxy-header\r\n");
    assert!(c.closed_within(Duration::from_secs(10)));
}

#[test]
fn auth_parameter_from_an_unauthenticated_client_is_never_passed_on() {
    use support::fake_upstream::{FakeUpstream, Script};
    let up = FakeUpstream::start(Script::default());
    let mx = MxGuard::start(MxOpts::new(up.addr));
    let mut c = RawClient::connect(mx.addr);
    c.ehlo("client.example");
    assert_eq!(c.cmd("MAIL FROM:<a@example.org> AUTH=<>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<b@example.net>").code, 250);
    c.cmd("QUIT");
    let mails: Vec<String> = up
        .connections()
        .iter()
        .flat_map(|c| c.commands.clone())
        .filter(|c| c.to_ascii_uppercase().starts_with("MAIL"))
        .collect();
    assert_eq!(mails, vec!["MAIL FROM:<a@example.org>".to_string()]);
}
