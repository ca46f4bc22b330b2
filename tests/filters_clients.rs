//! The content-filter clients against the real daemons (clamav-milter + clamd, opendkim,
//! opendmarc, rspamd as a milter and over HTTP), driven directly — no mxguard session —
//! and against scripted fake milters for the faults (killed, stalled, garbage, not a
//! milter at all).

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use mxguard::filters::rspamd::{RspamdAction, RspamdClient, RspamdConfig, RspamdRequest};
use mxguard::milter::{
    MacroValues, MilterClient, MilterConfig, MilterEdit, MilterReply, Stage, split_message,
};
use support::filters::{
    ClamavMilter, Clamd, EICAR, FakeMilter, GTUBE, OpenDkim, OpenDmarc, Rspamd,
};

fn config(name: &str, endpoint: &str) -> MilterConfig {
    MilterConfig::new(name, endpoint.parse().expect("endpoint"))
}

fn message(from: &str, subject: &str, body: &str) -> Vec<u8> {
    let date = support::date_now();
    format!(
        "From: Alice <{from}>\r\nTo: bob@example.org\r\nSubject: {subject}\r\n\
         Message-ID: <{subject}.1@example.com>\r\nDate: {date}\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n{body}"
    )
    .into_bytes()
}

/// A MIME message whose attachment is the EICAR file.
fn eicar_message() -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(EICAR);
    let date = support::date_now();
    format!(
        "From: Alice <alice@example.com>\r\nTo: bob@example.org\r\nSubject: invoice\r\n\
         Message-ID: <eicar.1@example.com>\r\nDate: {date}\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
         --b1\r\nContent-Type: text/plain\r\n\r\nSee the attachment.\r\n\
         --b1\r\nContent-Type: application/octet-stream\r\n\
         Content-Disposition: attachment; filename=\"invoice.com\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{b64}\r\n--b1--\r\n"
    )
    .into_bytes()
}

fn macros(queue_id: &str) -> MacroValues {
    MacroValues {
        hostname: Some("mx.test".into()),
        // Postfix's milter_macro_daemon_name default is $myhostname; rspamd uses it as
        // the authserv-id of its Authentication-Results.
        daemon_name: Some("mx.test".into()),
        version: Some("mxguard 0.1.0".into()),
        queue_id: Some(queue_id.into()),
        ..MacroValues::default()
    }
}

/// CONNECT, HELO, MAIL, RCPT, DATA, each expected to go on.
async fn envelope(m: &mut MilterClient, client: SocketAddr, mv: &mut MacroValues, from: &str) {
    envelope_from(m, client, None, mv, from).await
}

/// The same, with a verified client name (sent at connect and as `{client_name}`).
async fn envelope_from(
    m: &mut MilterClient,
    client: SocketAddr,
    name: Option<&str>,
    mv: &mut MacroValues,
    from: &str,
) {
    mv.client_addr = Some(client.ip().to_string());
    mv.client_port = Some(client.port().to_string());
    mv.client_name = name.map(str::to_owned);
    assert_eq!(
        m.connect(name, Some(client), mv).await.unwrap(),
        MilterReply::Continue
    );
    let helo = name.unwrap_or("client.example.net");
    assert_eq!(m.helo(helo, mv).await.unwrap(), MilterReply::Continue);
    transaction(m, mv, from).await;
}

async fn transaction(m: &mut MilterClient, mv: &mut MacroValues, from: &str) {
    mv.mail_addr = Some(from.into());
    assert_eq!(m.mail(from, &[], mv).await.unwrap(), MilterReply::Continue);
    mv.rcpt_addr = Some("bob@example.org".into());
    assert_eq!(
        m.rcpt("bob@example.org", &[], mv).await.unwrap(),
        MilterReply::Continue
    );
    assert_eq!(m.data(mv).await.unwrap(), MilterReply::Continue);
}

/// Applies header edits to a message the way the session's rewriter will: sequentially,
/// indexes counting the fields as they are at that point.
fn apply(message: &[u8], edits: &[MilterEdit]) -> Vec<u8> {
    let (fields, body) = split_message(message);
    let mut lines: Vec<(String, String)> = fields
        .iter()
        .map(|(n, v)| (n.to_string(), String::from_utf8(v.to_vec()).unwrap()))
        .collect();
    let nth = |lines: &Vec<(String, String)>, name: &str, index: u32| {
        lines
            .iter()
            .enumerate()
            .filter(|(_, (n, _))| n.eq_ignore_ascii_case(name))
            .nth(index as usize - 1)
            .map(|(i, _)| i)
    };
    for e in edits {
        match e.clone() {
            MilterEdit::AddHeader { name, value } => lines.push((name, value)),
            MilterEdit::InsertHeader { index, name, value } => {
                lines.insert((index as usize).min(lines.len()), (name, value))
            }
            MilterEdit::ChangeHeader { index, name, value } => match nth(&lines, &name, index) {
                Some(i) => lines[i].1 = value,
                None => lines.push((name, value)),
            },
            MilterEdit::DeleteHeader { index, name } => {
                if let Some(i) = nth(&lines, &name, index) {
                    lines.remove(i);
                }
            }
            MilterEdit::ReplaceBody(_) => panic!("no body edits expected"),
        }
    }
    let mut out = Vec::new();
    for (n, v) in lines {
        out.extend_from_slice(format!("{n}:{v}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

fn header_edit<'a>(edits: &'a [MilterEdit], want: &str) -> Option<(&'a str, &'a MilterEdit)> {
    edits.iter().find_map(|e| match e {
        MilterEdit::AddHeader { name, value }
        | MilterEdit::InsertHeader { name, value, .. }
        | MilterEdit::ChangeHeader { name, value, .. }
            if name.eq_ignore_ascii_case(want) =>
        {
            Some((value.as_str(), e))
        }
        _ => None,
    })
}

/// No bare LF or CR in a header value, and every line break is a fold.
fn assert_crlf_folded(value: &str) {
    let b = value.as_bytes();
    for (i, c) in b.iter().enumerate() {
        match c {
            b'\n' => assert!(i > 0 && b[i - 1] == b'\r', "bare LF in {value:?}"),
            b'\r' => {
                assert_eq!(b.get(i + 1), Some(&b'\n'), "bare CR in {value:?}");
                assert!(
                    matches!(b.get(i + 2), Some(b' ' | b'\t')),
                    "not a fold: {value:?}"
                );
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn clamav_milter_rejects_eicar_marks_clean_mail_and_clamd_is_not_a_milter() {
    let Some(clamd) = Clamd::start() else { return };
    let mut milter = ClamavMilter::start(&clamd);
    let cfg = config("clamav", &milter.addr.to_string());
    let mut m = MilterClient::open(&cfg).await.unwrap();
    let mut mv = macros("CLAM1");
    envelope(
        &mut m,
        "192.0.2.10:40001".parse().unwrap(),
        &mut mv,
        "alice@example.com",
    )
    .await;

    let infected = m.message(&eicar_message(), &mv).await.unwrap();
    assert_eq!(infected.reply, MilterReply::Reject, "{infected:?}");
    assert_eq!(
        infected.reply.smtp_reply().unwrap().to_string(),
        "550 5.7.1 Command rejected"
    );
    let (status, _) = header_edit(&infected.edits, "X-Virus-Status").expect("X-Virus-Status");
    assert!(
        status.contains("Infected") && status.contains("EICAR"),
        "{status:?}"
    );

    // The next transaction on the same milter connection (as after RSET).
    m.abort().await.unwrap();
    mv.queue_id = Some("CLAM2".into());
    transaction(&mut m, &mut mv, "alice@example.com").await;
    let clean = m
        .message(
            &message("alice@example.com", "hello", "Just a note.\r\n"),
            &mv,
        )
        .await
        .unwrap();
    assert_eq!(clean.reply, MilterReply::Accept, "{clean:?}");
    let (status, edit) = header_edit(&clean.edits, "X-Virus-Status").expect("X-Virus-Status");
    assert_eq!(status, " Clean", "{edit:?}");
    assert!(
        header_edit(&clean.edits, "X-Virus-Scanned").is_some(),
        "{:?}",
        clean.edits
    );
    m.quit().await;

    // clamd's own port answers with text: the client says so instead of "frame too large".
    let e = MilterClient::open(&config("clamd-by-mistake", &clamd.addr.to_string()))
        .await
        .unwrap_err();
    assert_eq!(
        (e.label(), e.stage),
        ("not_a_milter", Stage::Negotiate),
        "{e}"
    );
    assert!(e.to_string().contains("UNKNOWN COMMAND"), "{e}");

    // Killed mid-session: the next event fails as "closed", and the client stays failed.
    let mut m = MilterClient::open(&cfg).await.unwrap();
    let mut mv = macros("CLAM3");
    mv.client_addr = Some("192.0.2.10".into());
    m.connect(None, Some("192.0.2.10:40002".parse().unwrap()), &mv)
        .await
        .unwrap();
    m.mail("alice@example.com", &[], &mv).await.unwrap();
    milter.guard.signal(libc::SIGKILL);
    milter.guard.child.wait().unwrap();
    let e = m.rcpt("bob@example.org", &[], &mv).await.unwrap_err();
    assert_eq!((e.label(), e.stage), ("closed", Stage::Rcpt), "{e}");
    let e = m.data(&mv).await.unwrap_err();
    assert_eq!(e.label(), "failed", "{e}");
    let e = MilterClient::open(&cfg).await.unwrap_err();
    assert_eq!(e.label(), "connect", "{e}");
}

#[tokio::test]
async fn opendkim_signs_and_the_verifier_says_dkim_pass() {
    let Some((_keydir, key)) = OpenDkim::key() else {
        return;
    };
    let signer = OpenDkim::signer(&key);
    let verifier = OpenDkim::verifier(&key);
    let original = message("alice@example.com", "signed", "Body to be signed.\r\n");

    let mut m = MilterClient::open(&config("dkim-sign", &signer.socket.endpoint()))
        .await
        .unwrap();
    assert!(
        m.negotiated().leading_space(),
        "opendkim negotiates HDR_LEADSPC"
    );
    let mut mv = macros("SIGN1");
    // 192.0.2.0/24 is the signer's InternalHosts.
    envelope(
        &mut m,
        "192.0.2.20:40003".parse().unwrap(),
        &mut mv,
        "alice@example.com",
    )
    .await;
    let signed = m.message(&original, &mv).await.unwrap();
    m.quit().await;
    assert_eq!(signed.reply, MilterReply::Accept, "{signed:?}");
    let (sig, edit) = header_edit(&signed.edits, "DKIM-Signature").expect("DKIM-Signature");
    assert!(
        matches!(edit, MilterEdit::InsertHeader { index: 0, .. }),
        "signature at the top: {edit:?}"
    );
    assert!(sig.starts_with(' ') && sig.contains("d=example.com") && sig.contains("s=sel"));
    assert!(
        sig.contains("\r\n\t"),
        "opendkim folds; the client makes it CRLF: {sig:?}"
    );
    assert_crlf_folded(sig);
    let signed_message = apply(&original, &signed.edits);

    // The verifier listens on a unix socket.
    let mut m = MilterClient::open(&config("dkim-verify", &verifier.socket.endpoint()))
        .await
        .unwrap();
    let mut mv = macros("VERIFY1");
    envelope(
        &mut m,
        "198.51.100.7:40004".parse().unwrap(),
        &mut mv,
        "alice@example.com",
    )
    .await;
    let verified = m.message(&signed_message, &mv).await.unwrap();
    m.quit().await;
    assert_eq!(verified.reply, MilterReply::Accept, "{verified:?}");
    let (ar, edit) = header_edit(&verified.edits, "Authentication-Results").expect("A-R");
    assert!(
        matches!(edit, MilterEdit::InsertHeader { index: 0, .. }),
        "{edit:?}"
    );
    assert!(ar.contains("mx.test") && ar.contains("dkim=pass"), "{ar:?}");
    assert!(ar.contains("header.d=example.com"), "{ar:?}");
    assert_crlf_folded(ar);

    // The same message, altered after signing, does not pass.
    let tampered = String::from_utf8(signed_message)
        .unwrap()
        .replace("Body to be signed.", "Body was changed.");
    let mut m = MilterClient::open(&config("dkim-verify", &verifier.socket.endpoint()))
        .await
        .unwrap();
    let mut mv = macros("VERIFY2");
    envelope(
        &mut m,
        "198.51.100.7:40005".parse().unwrap(),
        &mut mv,
        "alice@example.com",
    )
    .await;
    let out = m.message(tampered.as_bytes(), &mv).await.unwrap();
    let (ar, _) = header_edit(&out.edits, "Authentication-Results").expect("A-R");
    assert!(
        ar.contains("dkim=fail") || ar.contains("dkim=neutral"),
        "{ar:?}"
    );
    assert!(!ar.contains("dkim=pass"), "{ar:?}");
}

#[tokio::test]
async fn opendmarc_adds_its_authentication_results() {
    let Some(dmarc) = OpenDmarc::start() else {
        return;
    };
    let mut m = MilterClient::open(&config("dmarc", &dmarc.addr.to_string()))
        .await
        .unwrap();
    let mut mv = macros("DMARC1");
    envelope(
        &mut m,
        "198.51.100.8:40006".parse().unwrap(),
        &mut mv,
        "alice@example.com",
    )
    .await;
    let out = m
        .message(&message("alice@example.com", "dmarc", "Hello.\r\n"), &mv)
        .await
        .unwrap();
    m.quit().await;
    assert_eq!(out.reply, MilterReply::Accept, "{out:?}");
    let (ar, edit) = header_edit(&out.edits, "Authentication-Results").expect("A-R");
    assert!(matches!(edit, MilterEdit::InsertHeader { .. }), "{edit:?}");
    assert!(ar.contains("mx.test") && ar.contains("dmarc="), "{ar:?}");
    assert!(ar.contains("header.from=example.com"), "{ar:?}");
}

#[tokio::test]
async fn rspamd_as_milter_and_over_http() {
    let started = Instant::now();
    let Some(rspamd) = Rspamd::start() else {
        return;
    };
    eprintln!("rspamd ready after {:?}", started.elapsed());
    let client: SocketAddr = "192.0.2.30:40007".parse().unwrap();

    // --- milter (proxy worker, self_scan) ---
    let strict = config("rspamd", &rspamd.milter.to_string());
    let e = MilterClient::open(&strict).await.unwrap_err();
    assert_eq!(e.label(), "negotiation", "{e}");
    assert!(e.to_string().contains("tolerate_unoffered_actions"), "{e}");
    let mut cfg = strict.clone();
    cfg.tolerate_unoffered_actions = true;

    let t0 = Instant::now();
    let mut m = MilterClient::open(&cfg).await.unwrap();
    let mut mv = macros("RSPAMD1");
    // The verified client name: without one rspamd scores HFILTER_HOSTNAME_UNKNOWN etc.
    envelope_from(
        &mut m,
        client,
        Some("mail.example.com"),
        &mut mv,
        "alice@example.com",
    )
    .await;
    let spam = m
        .message(
            &message("alice@example.com", "gtube", &format!("{GTUBE}\r\n")),
            &mv,
        )
        .await
        .unwrap();
    match &spam.reply {
        MilterReply::ReplyCode(rc) => {
            assert_eq!(
                rc.to_reply().to_string(),
                "554 5.7.1 Gtube pattern",
                "{rc:?}"
            )
        }
        other => panic!("GTUBE: {other:?}"),
    }

    m.abort().await.unwrap();
    mv.queue_id = Some("RSPAMD2".into());
    transaction(&mut m, &mut mv, "alice@example.com").await;
    let clean = m
        .message(
            &message("alice@example.com", "clean", "A friendly note.\r\n"),
            &mv,
        )
        .await
        .unwrap();
    m.quit().await;
    assert_eq!(clean.reply, MilterReply::Accept, "{clean:?}");
    let (ar, edit) = header_edit(&clean.edits, "Authentication-Results").expect("A-R");
    assert!(
        matches!(edit, MilterEdit::InsertHeader { index: 1, .. }),
        "{edit:?}"
    );
    assert!(
        ar.starts_with(" mx.test;"),
        "{{daemon_name}} reached rspamd: {ar:?}"
    );
    assert!(ar.contains("smtp.mailfrom=alice@example.com"), "{ar:?}");
    assert_crlf_folded(ar);
    let (status, _) = header_edit(&clean.edits, "X-Spam-Status").expect("X-Spam-Status");
    assert!(status.starts_with(" No, score="), "{status:?}");
    let (result, _) = header_edit(&clean.edits, "X-Spamd-Result").expect("X-Spamd-Result");
    assert!(
        result.contains("\r\n\t"),
        "multi-line, CRLF folded: {result:?}"
    );
    assert_crlf_folded(result);

    // --- HTTP /checkv2 (normal worker) ---
    let http = RspamdClient::new(RspamdConfig::new(
        "rspamd-http",
        format!("http://{}", rspamd.http).parse().unwrap(),
    ));
    let rcpts = ["bob@example.org"];
    let req = RspamdRequest {
        ip: Some(client.ip()),
        helo: Some("mail.example.com"),
        hostname: Some("mail.example.com"),
        from: Some("alice@example.com"),
        rcpts: &rcpts,
        queue_id: Some("HTTP1"),
        mta_name: Some("mx.test"),
        ..Default::default()
    };
    let v = http
        .check(
            &req,
            message("alice@example.com", "gtube", &format!("{GTUBE}\r\n")),
        )
        .await
        .unwrap();
    assert_eq!(v.action, RspamdAction::Reject, "{v:?}");
    assert_eq!(v.smtp_message.as_deref(), Some("Gtube pattern"));
    assert!(v.symbol("GTUBE").is_some(), "{:?}", v.symbols);

    let clean_msg = message("alice@example.com", "clean", "A friendly note.\r\n");
    let v = http.check(&req, clean_msg.clone()).await.unwrap();
    assert_eq!(v.action, RspamdAction::NoAction, "{v:?}");
    assert!(v.score < v.required_score, "{v:?}");
    assert!(
        !v.symbols.is_empty() && v.symbol("MIME_GOOD").is_some(),
        "{:?}",
        v.symbols
    );
    let (fields, _) = split_message(&clean_msg);
    let names: Vec<&str> = fields.iter().map(|(n, _)| *n).collect();
    let edits = v.header_edits(&names);
    let (ar, edit) = header_edit(&edits, "Authentication-Results").expect("A-R");
    assert!(
        matches!(edit, MilterEdit::InsertHeader { index: 1, .. }),
        "{edit:?}"
    );
    assert!(
        ar.contains("spf=") && ar.contains("mx.test"),
        "MTA-Name used: {ar:?}"
    );
    assert_crlf_folded(ar);

    eprintln!("rspamd: 2 milter + 2 HTTP checks took {:?}", t0.elapsed());
    // The HTTP client pointed at the milter port gets an error, not a verdict.
    let wrong = RspamdClient::new(RspamdConfig::new(
        "rspamd-wrong-port",
        format!("http://{}", rspamd.milter).parse().unwrap(),
    ));
    let e = wrong.check(&req, clean_msg.clone()).await.unwrap_err();
    assert!(matches!(e.label(), "http" | "reply"), "{e}");
    drop(rspamd);
    let e = http.check(&req, clean_msg).await.unwrap_err();
    assert_eq!(e.label(), "connect", "{e}");
}

// ---- faults, with scripted milters ----

fn fast(name: &str, addr: SocketAddr) -> MilterConfig {
    let mut c = config(name, &addr.to_string());
    c.connect_timeout = Duration::from_millis(500);
    c.command_timeout = Duration::from_millis(300);
    c.content_timeout = Duration::from_millis(600);
    c
}

/// A milter that negotiates (ADDHDRS, all events answered) and then runs `after`.
async fn scripted<F, Fut>(after: F) -> FakeMilter
where
    F: Fn(support::filters::FakeConn) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let after = std::sync::Arc::new(after);
    FakeMilter::start(move |mut c| {
        let after = after.clone();
        async move {
            c.negotiate(6, 0x01, 0).await;
            after(c).await
        }
    })
    .await
}

#[tokio::test]
async fn a_milter_that_dies_mid_session_is_closed_at_that_stage() {
    let fake = scripted(|mut c| async move {
        c.recv_until(b'C').await;
        c.send(b'c', b"").await;
        c.recv_until(b'M').await;
        c.send(b'c', b"").await;
        c.recv_until(b'R').await; // then drop the connection without answering
    })
    .await;
    let mut m = MilterClient::open(&fast("dies", fake.addr)).await.unwrap();
    let mv = macros("F1");
    m.connect(
        Some("client.example"),
        Some("192.0.2.1:1".parse().unwrap()),
        &mv,
    )
    .await
    .unwrap();
    m.mail("a@example.com", &[], &mv).await.unwrap();
    let e = m.rcpt("b@example.org", &[], &mv).await.unwrap_err();
    assert_eq!(
        (e.label(), e.stage, e.milter.as_str()),
        ("closed", Stage::Rcpt, "dies"),
        "{e}"
    );
    assert!(e.is_milter_failure());
}

#[tokio::test]
async fn a_stalled_milter_times_out_with_the_content_timeout_at_eom() {
    let fake = scripted(|mut c| async move {
        while let Some(f) = c.recv().await {
            match f.code {
                b'E' => {
                    // keep the connection open, never answer
                    let _ = c.recv().await;
                    return;
                }
                b'D' => {}
                _ => c.send(b'c', b"").await,
            }
        }
    })
    .await;
    let mut m = MilterClient::open(&fast("stalls", fake.addr))
        .await
        .unwrap();
    let mut mv = macros("F2");
    envelope(
        &mut m,
        "192.0.2.2:2".parse().unwrap(),
        &mut mv,
        "a@example.com",
    )
    .await;
    let t0 = Instant::now();
    let e = m
        .message(&message("a@example.com", "stall", "x\r\n"), &mv)
        .await
        .unwrap_err();
    let waited = t0.elapsed();
    assert_eq!((e.label(), e.stage), ("timeout", Stage::Eom), "{e}");
    assert!(
        waited >= Duration::from_millis(600) && waited < Duration::from_secs(3),
        "content timeout is 600 ms, waited {waited:?}"
    );
}

#[tokio::test]
async fn a_stalled_milter_times_out_with_the_command_timeout_at_mail() {
    let fake = scripted(|mut c| async move {
        c.recv_until(b'C').await;
        c.send(b'c', b"").await;
        c.recv_until(b'M').await;
        let _ = c.recv().await;
    })
    .await;
    let mut m = MilterClient::open(&fast("stalls", fake.addr))
        .await
        .unwrap();
    let mv = macros("F3");
    m.connect(None, Some("192.0.2.3:3".parse().unwrap()), &mv)
        .await
        .unwrap();
    let t0 = Instant::now();
    let e = m.mail("a@example.com", &[], &mv).await.unwrap_err();
    let waited = t0.elapsed();
    assert_eq!((e.label(), e.stage), ("timeout", Stage::Mail), "{e}");
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
}

#[tokio::test]
async fn garbage_replies_are_protocol_errors() {
    for (garbage, want) in [
        // a well-formed frame with a code no milter sends
        (&[0u8, 0, 0, 3, b'Z', 1, 2][..], "unexpected reply 'Z'"),
        // a binary length of 4 GB
        (&[0xff, 0xfe, 0xfd, 0xfc, 0, 1, 2, 3], "larger than the"),
        // a zero length
        (&[0, 0, 0, 0, 0, 0, 0, 0], "length 0"),
        // continue followed by data it must not have
        (&[0, 0, 0, 2, b'c', b'x'], "followed by 1 data bytes"),
    ] {
        let fake = scripted(move |mut c| async move {
            c.recv_until(b'C').await;
            c.send_raw(garbage).await;
            let _ = c.recv().await;
        })
        .await;
        let mut m = MilterClient::open(&fast("garbage", fake.addr))
            .await
            .unwrap();
        let e = m
            .connect(None, Some("192.0.2.4:4".parse().unwrap()), &macros("F4"))
            .await
            .unwrap_err();
        assert_eq!((e.label(), e.stage), ("protocol", Stage::Connect), "{e}");
        assert!(e.to_string().contains(want), "{e}");
    }
}

#[tokio::test]
async fn an_smtp_server_is_not_a_milter() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let (mut s, _) = listener.accept().await.unwrap();
        s.write_all(b"220 mx.example ESMTP ready\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let e = MilterClient::open(&fast("smtp", addr)).await.unwrap_err();
    assert_eq!(e.label(), "not_a_milter", "{e}");
    assert!(
        e.to_string().contains("\"220 mx.example ESMTP ready\""),
        "{e}"
    );
}

#[tokio::test]
async fn negotiation_refusals() {
    // A newer protocol version than ours.
    let fake = FakeMilter::start(|mut c| async move { c.negotiate(7, 1, 0).await }).await;
    let e = MilterClient::open(&fast("v7", fake.addr))
        .await
        .unwrap_err();
    assert_eq!(e.label(), "negotiation", "{e}");
    assert!(e.to_string().contains("version 7 is newer"), "{e}");
    // Envelope actions we did not offer.
    let fake = FakeMilter::start(|mut c| async move { c.negotiate(6, 0x04, 0).await }).await;
    let e = MilterClient::open(&fast("addrcpt", fake.addr))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("did not offer: ADDRCPT"), "{e}");
    // Nobody listening.
    let port = support::free_port();
    let e = MilterClient::open(&config("gone", &format!("127.0.0.1:{port}")))
        .await
        .unwrap_err();
    assert_eq!((e.label(), e.stage), ("connect", Stage::Negotiate), "{e}");
    // A milter that never answers the negotiation.
    let fake = FakeMilter::start(|mut c| async move {
        let _ = c.recv().await;
        let _ = c.recv().await;
    })
    .await;
    let e = MilterClient::open(&fast("mute", fake.addr))
        .await
        .unwrap_err();
    assert_eq!((e.label(), e.stage), ("timeout", Stage::Negotiate), "{e}");
}

#[tokio::test]
async fn an_envelope_change_at_eom_is_refused_and_edits_come_back_typed() {
    let fake = FakeMilter::start(|mut c| async move {
        // tolerated extra action, as rspamd does
        c.negotiate(6, 0x33 | 0x04, 0x27e).await; // of the envelope events only CONNECT
        while let Some(f) = c.recv().await {
            match f.code {
                b'C' => c.send(b'c', b"").await,
                b'E' => {
                    c.send(b'h', b"X-Checked\0yes\0").await;
                    c.send(b'+', b"<extra@example.org>\0").await;
                    let _ = c.recv().await;
                    return;
                }
                _ => {}
            }
        }
    })
    .await;
    let mut cfg = fast("envelope", fake.addr);
    cfg.tolerate_unoffered_actions = true;
    let mut m = MilterClient::open(&cfg).await.unwrap();
    let mut mv = macros("F5");
    m.connect(None, Some("192.0.2.5:5".parse().unwrap()), &mv)
        .await
        .unwrap();
    transaction(&mut m, &mut mv, "a@example.com").await;
    let e = m.end_of_message(&mv).await.unwrap_err();
    assert_eq!((e.label(), e.stage), ("protocol", Stage::Eom), "{e}");
    assert!(e.to_string().contains("lockstep"), "{e}");
}

#[tokio::test]
async fn replycode_progress_quarantine_and_body_replacement_from_a_scripted_milter() {
    let fake = FakeMilter::start(|mut c| async move {
        c.negotiate(6, 0x33, 0).await;
        while let Some(f) = c.recv().await {
            match f.code {
                b'D' => {}
                b'R' => {
                    c.send(b'y', b"550-5.7.1 first line\r\n550 5.7.1 100%% refused\0")
                        .await
                }
                b'E' => {
                    c.send(b'p', b"").await;
                    c.send(b'i', b"\0\0\0\x02X-Inserted\0folded\n\tvalue\0")
                        .await;
                    c.send(b'm', b"\0\0\0\x01Subject\0new subject\0").await;
                    c.send(b'b', b"line one\nline two\n").await;
                    c.send(b'q', b"suspicious\0").await;
                    c.send(b'c', b"").await;
                }
                _ => c.send(b'c', b"").await,
            }
        }
    })
    .await;
    let mut m = MilterClient::open(&fast("scripted", fake.addr))
        .await
        .unwrap();
    let mut mv = macros("F6");
    m.connect(None, Some("192.0.2.6:6".parse().unwrap()), &mv)
        .await
        .unwrap();
    m.mail("a@example.com", &[], &mv).await.unwrap();
    let r = m.rcpt("nobody@example.org", &[], &mv).await.unwrap();
    let mut wire = Vec::new();
    r.smtp_reply().unwrap().write_to(&mut wire);
    assert_eq!(wire, b"550-5.7.1 first line\r\n550 5.7.1 100% refused\r\n");
    mv.rcpt_addr = Some("bob@example.org".into());
    m.rcpt("bob@example.org", &[], &mv).await.unwrap();
    let out = m
        .message(&message("a@example.com", "old", "x\r\n"), &mv)
        .await
        .unwrap();
    assert_eq!(out.reply, MilterReply::Continue);
    assert_eq!(out.quarantine.as_deref(), Some("suspicious"));
    assert_eq!(
        out.edits,
        [
            MilterEdit::InsertHeader {
                index: 2,
                name: "X-Inserted".into(),
                value: " folded\r\n\tvalue".into()
            },
            MilterEdit::ChangeHeader {
                index: 1,
                name: "Subject".into(),
                value: " new subject".into()
            },
            MilterEdit::ReplaceBody(b"line one\r\nline two\r\n".to_vec()),
        ]
    );
}
