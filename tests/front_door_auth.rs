//! Issue 10, "AUTH cannot be brute-forced or turned against the user": a scripted brute
//! force through mxguard against a real Postfix with Cyrus SASL. Every limit is checked
//! before an attempt is relayed; once a limit applies, every password gets the same reply
//! and nothing reaches the upstream's SASL; `alice` and `alice@mx.test` are one account;
//! the real user, from the network she logged in from before, is never slowed.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use support::certs::TestCerts;
use support::client::{Reply, TlsStream, cmd_on, start_tls};
use support::mxguard::{MxGuard, MxOpts};
use support::postfix::{Postfix, PostfixOpts};

struct Setup {
    pf: Postfix,
    mx: MxGuard,
    certs: TestCerts,
}

fn setup() -> Option<Setup> {
    if !support::require(&["postfix", "saslpasswd2"], true) {
        return None;
    }
    let pf = Postfix::start_with(PostfixOpts {
        sasl_users: vec![("alice".into(), "right-password".into())],
        extra_main_cf: vec![
            "smtpd_tls_auth_only = no".into(),
            "smtpd_relay_restrictions = permit_sasl_authenticated, reject_unauth_destination"
                .into(),
        ],
        ..PostfixOpts::default()
    });
    let certs = TestCerts::generate();
    let config = format!(
        "listeners:\n  - name: submission\n    address: \"{{listen}}\"\n    mode: submission\n    tls: {{ cert: {chain}, key: {key} }}\nlimits:\n  auth_failures_per_user: 3\n  auth_failures_per_network: 50\n  auth_backoff: 300ms\n  auth_max_backoff: 1s\n  hard_error_limit: 100\n",
        chain = certs.leaf_chain.display(),
        key = certs.leaf_key.display(),
    );
    let mut opts = MxOpts::new(pf.addr).config(&config);
    opts.hostname = "mx.test".into();
    let mx = MxGuard::start(opts);
    Some(Setup { pf, mx, certs })
}

/// A submission session from `source`, under TLS, after EHLO.
fn session(s: &Setup, source: &str) -> (TlsStream, Vec<u8>) {
    let addr: SocketAddr = s.mx.addr;
    let mut plain = support::client::RawClient::connect_from(addr, Some(source)).unwrap();
    assert_eq!(plain.reply().code, 220);
    plain.ehlo("client.example");
    assert_eq!(plain.cmd("STARTTLS").code, 220);
    let mut tls = start_tls(plain.stream, s.certs.rustls_client_config(), "mx.test").unwrap();
    let mut buf = Vec::new();
    let r = cmd_on(&mut tls, &mut buf, "EHLO client.example").unwrap();
    assert!(r.raw().contains("AUTH PLAIN LOGIN"), "{r}");
    (tls, buf)
}

fn plain(user: &str, password: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"))
}

/// One AUTH PLAIN attempt on a fresh session; the reply.
fn attempt(s: &Setup, source: &str, user: &str, password: &str) -> Reply {
    let (mut tls, mut buf) = session(s, source);
    cmd_on(
        &mut tls,
        &mut buf,
        &format!("AUTH PLAIN {}", plain(user, password)),
    )
    .unwrap_or_else(|| panic!("no reply to AUTH\n{}", s.mx.log()))
}

/// Upstream sessions in which an AUTH reached Postfix's SASL: its `disconnect` line
/// counts them (`auth=0/1`, `auth=1`). A refused attempt opens no upstream session.
fn sasl_attempts(pf: &Postfix) -> usize {
    pf.maillog().matches(" auth=").count()
}

const A: &str = "127.0.1.2";
const B: &str = "127.0.2.2";
const HOME: &str = "127.0.3.2";

#[test]
fn brute_force_is_cut_off_before_the_upstream_without_an_oracle() {
    let Some(s) = setup() else { return };
    // The user logs in from her usual network first.
    let r = attempt(&s, HOME, "alice", "right-password");
    assert!(r.is("235"), "{r}\n{}", s.mx.log());
    let before = sasl_attempts(&s.pf);
    // Three wrong guesses from network A reach the upstream and get its 535.
    for i in 0..3 {
        let r = attempt(&s, A, "alice", &format!("guess-{i}"));
        assert!(r.is("535 5.7.8"), "guess {i}: {r}");
    }
    support::wait_for(
        Duration::from_secs(10),
        "3 SASL failures in the maillog",
        || (sasl_attempts(&s.pf) == before + 3).then_some(()),
    );
    // From now on network A gets the same refusal for every password, and nothing
    // reaches the upstream: not a wrong guess, not the right password, not the
    // realm-qualified or upper-case form of the same account.
    for (user, password) in [
        ("alice", "guess-x"),
        ("alice", "right-password"),
        ("alice@mx.test", "right-password"),
        ("ALICE", "right-password"),
    ] {
        let r = attempt(&s, A, user, password);
        assert!(r.is("421 4.7.0"), "{user}/{password}: {r}");
    }
    // Another account from A is unaffected by alice's limit.
    let r = attempt(&s, A, "bob", "whatever");
    assert!(r.is("535 5.7.8"), "{r}");
    // A fresh network gets the upstream's real answers (after the spread-attack delay):
    // a wrong guess is a 535, the right password a 235 — and the user's own network is
    // never delayed.
    let r = attempt(&s, B, "alice", "guess-y");
    assert!(r.is("535 5.7.8"), "{r}");
    let r = attempt(&s, B, "alice@mx.test", "right-password");
    assert!(r.is("235"), "{r}");
    let r = attempt(&s, HOME, "alice", "right-password");
    assert!(r.is("235"), "{r}");
    // 3 (A) + bob + 2 (B) + HOME, nothing from the refused attempts.
    support::wait_for(
        Duration::from_secs(10),
        "the SASL attempts in the maillog",
        || (sasl_attempts(&s.pf) == before + 3 + 1 + 2 + 1).then_some(()),
    );
    let log = s.mx.log();
    let delayed: Vec<&str> = log.lines().filter(|l| l.contains("AUTH delayed")).collect();
    assert!(
        delayed.iter().any(|l| l.contains(&format!("client={B}"))),
        "the fresh network was not delayed:\n{log}"
    );
    assert!(
        !delayed
            .iter()
            .any(|l| l.contains(&format!("client={HOME}"))),
        "the user's own network was delayed:\n{log}"
    );
}

#[test]
fn auth_login_asks_for_the_user_name_itself_and_relays_the_rest() {
    let Some(s) = setup() else { return };
    let (mut tls, mut buf) = session(&s, HOME);
    let b64 = |t: &str| base64::engine::general_purpose::STANDARD.encode(t);
    let r = cmd_on(&mut tls, &mut buf, "AUTH LOGIN").unwrap();
    assert_eq!(r.raw(), "334 VXNlcm5hbWU6", "our own Username: challenge");
    let r = cmd_on(&mut tls, &mut buf, &b64("alice")).unwrap();
    assert_eq!(r.code, 334, "the upstream's Password: challenge: {r}");
    let r = cmd_on(&mut tls, &mut buf, &b64("right-password")).unwrap();
    assert!(r.is("235"), "{r}\n{}", s.mx.log());
    // AUTH PLAIN without an initial response: our empty challenge first.
    let (mut tls, mut buf) = session(&s, HOME);
    let r = cmd_on(&mut tls, &mut buf, "AUTH PLAIN").unwrap();
    assert_eq!(r.code, 334);
    let r = cmd_on(&mut tls, &mut buf, &plain("alice", "right-password")).unwrap();
    assert!(r.is("235"), "{r}");
    // A cancelled exchange never reaches the upstream.
    let (mut tls, mut buf) = session(&s, HOME);
    assert_eq!(cmd_on(&mut tls, &mut buf, "AUTH LOGIN").unwrap().code, 334);
    let r = cmd_on(&mut tls, &mut buf, "*").unwrap();
    assert!(r.is("501"), "{r}");
}
