//! SIGHUP and certificates: a valid new certificate is served to new sessions; a broken
//! one is refused loudly (log line and metric) and the old one stays — STARTTLS never
//! silently disappears.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::certs::TestCerts;
use support::fake_upstream::{FakeUpstream, Script};
use support::mxguard::{MxGuard, MxOpts, tls_config};

/// The SHA-256 fingerprint of the certificate a STARTTLS handshake presents (OpenSSL's
/// s_client, a real client).
fn served_fingerprint(mx: &MxGuard) -> String {
    let s_client = Command::new("openssl")
        .args([
            "s_client",
            "-starttls",
            "smtp",
            "-connect",
            &mx.addr.to_string(),
        ])
        .stdin(Stdio::null())
        .output()
        .expect("openssl s_client");
    let pem = String::from_utf8_lossy(&s_client.stdout).into_owned();
    assert!(
        pem.contains("BEGIN CERTIFICATE"),
        "no certificate served:\n{pem}"
    );
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    x509.stdin
        .take()
        .unwrap()
        .write_all(pem.as_bytes())
        .unwrap();
    let out = x509.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn sighup(mx: &MxGuard) {
    // SAFETY: kill(2) on the PID of the process this test started.
    assert_eq!(unsafe { libc::kill(mx.pid() as i32, libc::SIGHUP) }, 0);
}

#[test]
fn sighup_swaps_a_good_certificate_and_keeps_the_old_one_on_a_bad_one() {
    if !support::require(&["openssl"], false) {
        return;
    }
    let first = TestCerts::generate();
    let dir = support::tempdir("mxg-tlsreload.");
    let chain = dir.path().join("chain.pem");
    let key = dir.path().join("key.pem");
    std::fs::copy(&first.leaf_chain, &chain).unwrap();
    std::fs::copy(&first.leaf_key, &key).unwrap();
    let up = FakeUpstream::start(Script::default());
    let metrics = format!("127.0.0.1:{}", support::free_port());
    let mut opts = MxOpts::new(up.addr).config(&tls_config(&chain, &key, false));
    opts.args = vec!["--metrics".into(), metrics.clone()];
    let mx = MxGuard::start(opts);
    let original = served_fingerprint(&mx);

    // A broken certificate: refused, logged, counted; the old one is still served.
    std::fs::write(
        &chain,
        "-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    sighup(&mx);
    mx.wait_log("TLS certificate reload FAILED", Duration::from_secs(10));
    assert_eq!(served_fingerprint(&mx), original);
    let text = String::from_utf8(
        Command::new("curl")
            .args(["-s", &format!("http://{metrics}/metrics")])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(
        text.contains("mxguard_tls_reload_total{result=\"error\"} 1"),
        "{text}"
    );

    // A good new certificate: new sessions get it.
    let second = TestCerts::generate();
    std::fs::copy(&second.leaf_chain, &chain).unwrap();
    std::fs::copy(&second.leaf_key, &key).unwrap();
    sighup(&mx);
    support::wait_for(
        Duration::from_secs(10),
        "the new certificate to be served",
        || {
            let f = served_fingerprint(&mx);
            (f != original).then_some(())
        },
    );
}
