//! Issue 2 / DESIGN invariant 4: one strict end of data, a re-serialised replay.
//! Every SMTP-smuggling end-of-data variant yields at most one message at a Postfix that
//! is itself vulnerable (`smtpd_forbid_bare_newline = no`), never the smuggled one; dot
//! lines survive the round trip; plaintext injected after STARTTLS is discarded.

mod support;

use std::io::Write;
use std::time::Duration;

use support::client::{RawClient, Reply, read_reply_from};
use support::fake_upstream::{FakeUpstream, Script};
use support::mxguard::{MxGuard, MxOpts};
use support::postfix::Postfix;

const TOOLS: &[&str] = &["postfix", "/usr/lib/postfix/sbin/master"];

/// Bogus end-of-data sequences (CVE-2023-51764/5/6 and friends). After each comes a
/// complete smuggled transaction, then the real `CRLF.CRLF`.
const VARIANTS: &[(&str, &[u8])] = &[
    ("lf_dot_lf", b"\n.\n"),
    ("lf_dot_crlf", b"\n.\r\n"),
    ("cr_dot_cr", b"\r.\r"),
    ("cr_dot_crlf", b"\r.\r\n"),
    ("crlf_dot_lf", b"\r\n.\n"),
    ("crlf_dot_cr", b"\r\n.\r"),
    ("lf_dot_cr", b"\n.\r"),
    ("crlf_nul_dot_crlf", b"\r\n\x00.\r\n"),
    ("crlf_dot_nul_crlf", b"\r\n.\x00\r\n"),
    ("crlf_dot_space_crlf", b"\r\n. \r\n"),
    ("crlf_dot_cr_cr_lf", b"\r\n.\r\r\n"),
];

const SMUGGLED: &[u8] = b"MAIL FROM:<smuggler@example.org>\r\nRCPT TO:<bob@test.example>\r\nDATA\r\nFrom: smuggler@example.org\r\nTo: bob@test.example\r\nSubject: SMUGGLED\r\n\r\nsmuggled body\r\n";

fn smuggling_payload(variant: &[u8]) -> Vec<u8> {
    let mut p =
        b"From: a@example.org\r\nTo: alice@test.example\r\nSubject: outer\r\n\r\nouter body"
            .to_vec();
    p.extend_from_slice(variant);
    p.extend_from_slice(SMUGGLED);
    p.extend_from_slice(b".\r\n");
    p
}

/// Sends the payload through mxguard; returns the replies after DATA (all of them, until
/// the connection closes or goes quiet).
fn smuggle(addr: std::net::SocketAddr, variant: &[u8]) -> Vec<Reply> {
    let mut c = RawClient::connect(addr);
    c.ehlo("client.example");
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<alice@test.example>").code, 250);
    let r = c.cmd("DATA");
    assert_eq!(r.code, 354, "{r}");
    c.send(&smuggling_payload(variant));
    let _ = c.try_send(b"QUIT\r\n");
    let mut out = Vec::new();
    while let Some(r) = c.reply_within(Duration::from_secs(10)) {
        let quit = r.code == 221;
        out.push(r);
        if quit {
            break;
        }
    }
    out
}

/// ASSUMED config key: data.normalize_networks (bare CR/LF normalised instead of refused).
const NORMALIZE_LOOPBACK: &str = "data:\n  normalize_networks: [\"127.0.0.0/8\"]\n";

fn check_variant_against_postfix(name: &str, variant: &[u8], normalize: bool) {
    if !support::require(TOOLS, true) {
        return;
    }
    let pf = Postfix::start();
    let mut opts = MxOpts::new(pf.addr);
    if normalize {
        opts = opts.config(NORMALIZE_LOOPBACK);
    }
    let mut mx = MxGuard::start(opts);
    let replies = smuggle(mx.addr, variant);
    // stop the proxy so its upstream sessions close, then let Postfix finish everything
    mx.stop(Duration::from_secs(40));
    let d = pf.settle(Duration::from_secs(30));
    eprintln!(
        "variant {name} normalize={normalize}: replies {replies:?}, {} delivered",
        d.len()
    );
    let ctx = format!(
        "variant {name} {variant:?}: client replies {replies:?}\n--- delivered ---\n{}\n--- mxguard log ---\n{}",
        d.iter()
            .map(|m| String::from_utf8_lossy(&m.eml).into_owned())
            .collect::<Vec<_>>()
            .join("\n-----\n"),
        mx.log()
    );
    assert!(d.len() <= 1, "more than one message reached Postfix: {ctx}");
    for m in &d {
        assert_ne!(
            m.env("recipient"),
            "bob@test.example",
            "the smuggled message was delivered: {ctx}"
        );
        assert_ne!(
            m.env("sender"),
            "smuggler@example.org",
            "the smuggled message was delivered: {ctx}"
        );
        assert_eq!(m.env("recipient"), "alice@test.example", "{ctx}");
        let body = m.without_first_received();
        assert!(!body.starts_with(b"From: smuggler"), "{ctx}");
    }
    // the client got at most one final verdict for the DATA, and never a reply to the
    // smuggled commands (they were message content, not commands)
    let verdicts: Vec<&Reply> = replies.iter().filter(|r| r.code != 221).collect();
    assert!(
        verdicts.len() <= 1,
        "extra replies (smuggled commands executed?): {ctx}"
    );
    if let Some(v) = verdicts.first() {
        assert!(
            v.code == 250 || v.is("550 5.6.0") || v.class() == 5,
            "{ctx}"
        );
        assert_eq!(
            v.code == 250,
            d.len() == 1,
            "a 250 means exactly one delivered message: {ctx}"
        );
    }
    // refused by default (550 5.6.0) when the variant has a bare CR, bare LF or NUL;
    // accepted as one message when normalised for the client's network
    let verdict = verdicts.first().map(|r| r.code);
    if normalize || !has_bare_cr_lf_or_nul(variant) {
        assert_eq!(verdict, Some(250), "expected one accepted message: {ctx}");
    } else {
        assert!(
            verdicts.first().is_some_and(|r| r.is("550 5.6.0")),
            "expected 550 5.6.0: {ctx}"
        );
    }
    if normalize && d.len() == 1 {
        // normalised, the smuggled lines are content of the one message
        let body = String::from_utf8_lossy(d[0].without_first_received()).into_owned();
        assert!(
            body.contains("smuggled body") && body.contains("MAIL FROM:<smuggler@example.org>"),
            "normalised: the smuggling attempt must stay inside the message: {ctx}"
        );
    }
}

fn has_bare_cr_lf_or_nul(v: &[u8]) -> bool {
    v.iter().enumerate().any(|(i, &b)| {
        b == 0
            || (b == b'\r' && v.get(i + 1) != Some(&b'\n'))
            || (b == b'\n' && (i == 0 || v[i - 1] != b'\r'))
    })
}

macro_rules! variant_tests {
    ($($name:ident => $idx:expr),* $(,)?) => {$(
        #[test]
        fn $name() {
            let (n, v) = VARIANTS[$idx];
            check_variant_against_postfix(n, v, false);
        }
    )*
        /// The same variants for a client in a network whose bare CR/LF is normalised.
        mod normalized {
            use super::*;
            $(
                #[test]
                fn $name() {
                    let (n, v) = VARIANTS[$idx];
                    check_variant_against_postfix(n, v, true);
                }
            )*
        }
    };
}

variant_tests! {
    smuggling_lf_dot_lf => 0,
    smuggling_lf_dot_crlf => 1,
    smuggling_cr_dot_cr => 2,
    smuggling_cr_dot_crlf => 3,
    smuggling_crlf_dot_lf => 4,
    smuggling_crlf_dot_cr => 5,
    smuggling_lf_dot_cr => 6,
    smuggling_crlf_nul_dot_crlf => 7,
    smuggling_crlf_dot_nul_crlf => 8,
    smuggling_crlf_dot_space_crlf => 9,
    smuggling_crlf_dot_cr_cr_lf => 10,
}

/// Whatever mxguard does with each variant, the stream it writes upstream is canonical:
/// CRLF only, no NUL, exactly one terminator per message.
#[test]
fn upstream_stream_is_canonical_for_every_variant() {
    let up = FakeUpstream::start(Script::default());
    let mx = MxGuard::start(MxOpts::new(up.addr));
    for (name, v) in VARIANTS {
        let before = up.messages().len();
        let replies = smuggle(mx.addr, v);
        let msgs = up.messages();
        assert!(
            msgs.len() - before <= 1,
            "{name}: {} messages upstream; {replies:?}",
            msgs.len() - before
        );
        for m in &msgs[before..] {
            let content = &m.raw[..m.raw.len() - 3];
            for (i, &b) in content.iter().enumerate() {
                assert_ne!(b, 0, "{name}: NUL relayed upstream");
                if b == b'\n' {
                    assert!(
                        i > 0 && content[i - 1] == b'\r',
                        "{name}: bare LF relayed upstream at {i}"
                    );
                }
                if b == b'\r' {
                    assert_eq!(
                        content.get(i + 1),
                        Some(&b'\n'),
                        "{name}: bare CR relayed upstream at {i}"
                    );
                }
            }
            assert!(
                !content.windows(5).any(|w| w == b"\r\n.\r\n"),
                "{name}: a second terminator inside the relayed message"
            );
            assert!(m.rcpts.iter().all(|r| !r.contains("bob@")), "{name}");
        }
    }
    let cmds: Vec<String> = up
        .connections()
        .into_iter()
        .flat_map(|c| c.commands)
        .collect();
    assert!(
        !cmds.iter().any(|c| c.contains("smuggler@")),
        "smuggled command reached the upstream: {cmds:?}"
    );
}

#[test]
fn bare_lf_in_data_is_refused_with_550_5_6_0() {
    let up = FakeUpstream::start(Script::default());
    let mx = MxGuard::start(MxOpts::new(up.addr));
    let mut c = RawClient::connect(mx.addr);
    c.ehlo("client.example");
    let r = c.transaction(
        "a@example.org",
        &["b@example.net"],
        b"Subject: x\r\n\r\nbare\nlf\r\n",
    );
    assert!(r.last().unwrap().is("550 5.6.0"), "{r:?}");
    // the session stays usable
    let r = c.transaction(
        "a@example.org",
        &["b@example.net"],
        b"Subject: y\r\n\r\nclean\r\n",
    );
    assert_eq!(r.last().unwrap().code, 250, "{r:?}");
    assert_eq!(up.messages().len(), 1);
}

#[test]
fn dot_lines_survive_the_round_trip() {
    if !support::require(TOOLS, true) {
        return;
    }
    let msg: &[u8] = b"From: a@example.org\r\nTo: alice@test.example\r\nSubject: dots\r\n\r\n.x\r\n..x\r\n.\r\n..\r\n...\r\n. \r\nx.\r\n.\r\nend\r\n";
    assert_delivered_unchanged_through_postfix(msg, "dot lines");
}

/// Sends `msg` (CRLF, unstuffed) through mxguard to a private Postfix and checks the
/// delivered file holds exactly it, below the trace line.
fn assert_delivered_unchanged_through_postfix(msg: &[u8], what: &str) {
    let pf = Postfix::start();
    let mx = MxGuard::start(MxOpts::new(pf.addr));
    let mut c = RawClient::connect(mx.addr);
    c.ehlo("client.example");
    let r = c.transaction(
        "a@example.org",
        &["alice@test.example"],
        &support::client::dot_stuff(msg),
    );
    assert_eq!(r.last().unwrap().code, 250, "{r:?}");
    let d = pf.wait_delivered(1, Duration::from_secs(20));
    support::assert_bytes_eq(
        d[0].without_first_received(),
        &support::crlf_to_lf(msg),
        what,
    );
}

/// The same through Postfix, which takes it as BDAT: a 300 KiB message with dot lines
/// around every 32 KiB mark, the bulk sent straight from the spool.
#[test]
fn a_large_message_with_dot_lines_arrives_byte_identical() {
    if !support::require(TOOLS, true) {
        return;
    }
    let msg = support::client::large_message_with_dot_lines("bulk", 300 * 1024);
    assert_delivered_unchanged_through_postfix(&msg, "a large message");
}

// ---------------------------------------------------------------- STARTTLS injection

#[test]
fn plaintext_injected_after_starttls_is_discarded() {
    let certs = support::certs::TestCerts::generate();
    let up = FakeUpstream::start(Script::default());
    let mx = MxGuard::start(MxOpts::new(up.addr).config(&support::mxguard::tls_config(
        &certs.leaf_chain,
        &certs.leaf_key,
        false,
    )));
    let mut c = RawClient::connect(mx.addr);
    let e = c.ehlo("client.example");
    assert!(
        e.lines.iter().any(|l| l.eq_ignore_ascii_case("STARTTLS")),
        "STARTTLS not offered: {e}"
    );
    // the injection: commands after STARTTLS in the same packet
    c.send(b"STARTTLS\r\nMAIL FROM:<injected@example.org>\r\nRCPT TO:<b@example.net>\r\n");
    let r = c.reply();
    assert!(r.is("220"), "{r}");
    let tcp = c.stream.try_clone().unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let conn =
        rustls::ClientConnection::new(certs.rustls_client_config(), "mx.test".try_into().unwrap())
            .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut buf = Vec::new();
    // the session may also be dropped (allowed by the issue); then the handshake or the
    // next read fails and nothing was executed
    if tls.write_all(b"EHLO client.example\r\n").is_err() {
        assert!(up.messages().is_empty());
        return;
    }
    let Some(r) = read_reply_from(&mut tls, &mut buf) else {
        return;
    };
    assert_eq!(
        r.code, 250,
        "first reply after the handshake must be EHLO's: {r}"
    );
    assert!(
        !r.raw().contains("2.1.0") && !r.raw().contains("2.1.5"),
        "a reply to the injected MAIL/RCPT leaked: {r}"
    );
    assert!(
        !r.lines.iter().any(|l| l.eq_ignore_ascii_case("STARTTLS")),
        "STARTTLS offered again inside TLS: {r}"
    );
    tls.write_all(b"RCPT TO:<b@example.net>\r\n").unwrap();
    let r = read_reply_from(&mut tls, &mut buf).expect("reply to RCPT");
    assert!(
        r.is("503 5.5.1"),
        "the injected MAIL must not be in effect after STARTTLS: {r}"
    );
    tls.write_all(b"STARTTLS\r\n").unwrap();
    let r = read_reply_from(&mut tls, &mut buf).expect("reply to second STARTTLS");
    assert_eq!(r.class(), 5, "a second STARTTLS is refused: {r}");
    // a real transaction works inside TLS
    for (cmd, want) in [
        ("MAIL FROM:<a@example.org>", 250),
        ("RCPT TO:<b@example.net>", 250),
        ("DATA", 354),
    ] {
        tls.write_all(format!("{cmd}\r\n").as_bytes()).unwrap();
        let r = read_reply_from(&mut tls, &mut buf).expect("reply");
        assert_eq!(r.code, want, "{cmd}: {r}");
    }
    tls.write_all(b"Subject: tls\r\n\r\nover tls\r\n.\r\n")
        .unwrap();
    let r = read_reply_from(&mut tls, &mut buf).expect("final reply");
    assert_eq!(r.code, 250, "{r}");
    let cmds: Vec<String> = up
        .connections()
        .into_iter()
        .flat_map(|c| c.commands)
        .collect();
    assert!(
        !cmds.iter().any(|c| c.contains("injected@")),
        "injected command reached the upstream: {cmds:?}"
    );
    assert_eq!(up.messages().len(), 1);
}
