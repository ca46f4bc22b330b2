//! Issue 12, items 4 and 5: DSN (RFC 3461) and CHUNKING (RFC 3030) through mxguard to the
//! real Postfix. DSN parameters reach Postfix verbatim (its success DSN carries the
//! envelope id and the original recipient, and only the headers for RET=HDRS); BDAT
//! chunks are read exactly — a `CRLF.CRLF` inside a chunk is content — and the message
//! arrives byte for byte.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::client::RawClient;
use support::mxguard::{MxGuard, MxOpts};
use support::postfix::Postfix;

fn setup() -> Option<(Postfix, MxGuard)> {
    if !support::require(support::postfix::TOOLS, true) {
        return None;
    }
    let pf = Postfix::start();
    let mx = MxGuard::start(MxOpts::new(pf.addr));
    Some((pf, mx))
}

#[test]
fn dsn_parameters_reach_postfix_and_its_success_notice_names_them() {
    let Some((pf, mx)) = setup() else { return };
    let mut c = RawClient::connect(mx.addr);
    let ehlo = c.ehlo("client.example").raw();
    assert!(ehlo.contains("DSN"), "Postfix offers DSN, so do we: {ehlo}");
    let r = c.cmd("MAIL FROM:<bob@test.example> RET=HDRS ENVID=QQ314159");
    assert_eq!(r.code, 250, "{r}");
    let r = c.cmd(
        "RCPT TO:<alice@test.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;alice+40test.example",
    );
    assert_eq!(r.code, 250, "{r}");
    assert_eq!(c.cmd("DATA").code, 354);
    c.send(b"From: bob@test.example\r\nTo: alice@test.example\r\nSubject: dsn test\r\n\r\nsecret body text\r\n.\r\n");
    assert_eq!(c.reply().code, 250);
    // The message to alice, and Postfix's success DSN to the sender.
    let got = pf.wait_delivered(2, Duration::from_secs(30));
    let dsn = got
        .iter()
        .find(|d| d.env("recipient") == "bob@test.example")
        .unwrap_or_else(|| panic!("no DSN for the sender: {got:#?}"));
    let text = String::from_utf8_lossy(&dsn.eml);
    assert!(text.contains("Original-Envelope-Id: QQ314159"), "{text}");
    assert!(
        text.contains("Original-Recipient: rfc822;alice@test.example"),
        "{text}"
    );
    // Postfix reports a pipe delivery as "relayed"; either way a success.
    assert!(text.contains("Status: 2.0.0"), "{text}");
    assert!(
        text.contains("text/rfc822-headers"),
        "RET=HDRS: headers only\n{text}"
    );
    assert!(
        !text.contains("secret body text"),
        "RET=HDRS returned the body\n{text}"
    );
}

#[test]
fn msmtp_asks_for_dsn_and_gets_it() {
    let Some((pf, mx)) = setup() else { return };
    if !support::require(&["msmtp"], false) {
        return;
    }
    let mut child = Command::new(support::which("msmtp").unwrap())
        .args([
            "-C",
            "/dev/null",
            "--host=127.0.0.1",
            &format!("--port={}", mx.addr.port()),
            "--domain=client.example",
            "--tls=off",
            "--auth=off",
            "--from=bob@test.example",
            "--dsn-notify=success",
            "--dsn-return=headers",
            "alice@test.example",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Subject: from msmtp\n\nhello\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "msmtp: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        mx.log()
    );
    let got = pf.wait_delivered(2, Duration::from_secs(30));
    assert!(got.iter().any(|d| d.env("recipient") == "bob@test.example"));
}

/// The message in chunks, pipelined in one write, then `BDAT 0 LAST`.
fn bdat_write(chunks: &[&[u8]]) -> Vec<u8> {
    let mut w = b"MAIL FROM:<bob@test.example>\r\nRCPT TO:<alice@test.example>\r\n".to_vec();
    for chunk in chunks {
        w.extend_from_slice(format!("BDAT {}\r\n", chunk.len()).as_bytes());
        w.extend_from_slice(chunk);
    }
    w.extend_from_slice(b"BDAT 0 LAST\r\n");
    w
}

#[test]
fn bdat_chunks_reach_postfix_byte_for_byte() {
    let Some((pf, mx)) = setup() else { return };
    let mut c = RawClient::connect(mx.addr);
    assert!(c.ehlo("client.example").raw().contains("CHUNKING"));
    let msg: &[u8] = b"From: bob@test.example\r\nSubject: chunks\r\n\r\nline one\r\n.\r\nnot the end: a lone dot inside a chunk is content\r\n..two dots\r\n.leading dot\r\nend\r\n";
    // Boundaries inside CRLF.CRLF and inside a dot line.
    let p1 = msg.windows(5).position(|w| w == b"\r\n.\r\n").unwrap() + 2;
    let p2 = msg.windows(4).position(|w| w == b"..tw").unwrap() + 1;
    c.send(&bdat_write(&[&msg[..p1], &msg[p1..p2], &msg[p2..]]));
    let mut codes = Vec::new();
    for _ in 0..6 {
        codes.push(c.reply().code);
    }
    assert_eq!(codes, [250; 6], "{}", mx.log());
    let d = pf.wait_delivered(1, Duration::from_secs(20));
    support::assert_bytes_eq(
        d[0].without_first_received(),
        &support::crlf_to_lf(msg),
        "delivered",
    );
    // Postfix was given the message as BDAT too (its session summary counts them).
    assert_eq!(c.cmd("QUIT").code, 221);
    support::wait_for(Duration::from_secs(10), "Postfix's session summary", || {
        pf.maillog().contains("bdat=1").then_some(())
    });
}

#[test]
fn bdat_after_a_refused_recipient_set_is_refused_in_step() {
    let Some((pf, mx)) = setup() else { return };
    let mut c = RawClient::connect(mx.addr);
    c.ehlo("client.example");
    assert_eq!(c.cmd("MAIL FROM:<bob@test.example>").code, 250);
    assert!(c.cmd("RCPT TO:<nosuchuser@test.example>").is("550 5.1.1"));
    c.send(b"BDAT 10 LAST\r\n0123456789");
    assert!(c.reply().is("554 5.5.1"));
    assert_eq!(c.cmd("RSET").code, 250);
    assert_eq!(c.cmd("NOOP").code, 250, "in step after the refused chunk");
    assert_eq!(c.cmd("QUIT").code, 221);
    drop(mx); // its warm pooled upstream connections stay open while it runs
    assert!(pf.settle(Duration::from_secs(10)).is_empty());
}
