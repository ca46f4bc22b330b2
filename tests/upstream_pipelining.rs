//! Issue 14, item 1: pipelining towards a real Postfix. A client group of MAIL, mixed
//! recipients and DATA (RFC 2920) is decided, sent upstream as one group, and answered
//! in order; Postfix's own 550 and 450 land on the right recipients; the message is
//! delivered once, to the accepted ones. XCLIENT and the client's EHLO, which every
//! session sends to a pooled connection, go in one round trip.

mod support;

use std::time::Duration;

use support::client::RawClient;
use support::fake_upstream::{ConnRecord, FakeUpstream, Fault, Script, Stage};
use support::mxguard::{MxGuard, MxOpts};
use support::postfix::Postfix;

#[test]
fn a_mixed_recipient_group_through_postfix_keeps_its_order() {
    if !support::require(support::postfix::TOOLS, true) {
        return;
    }
    let pf = Postfix::start();
    let mut opts = MxOpts::new(pf.addr);
    opts.rules = vec![(
        "40-rcpt.yaml".into(),
        "rules:\n  - name: ours\n    stage: rcpt\n    if: { recipient: carol@test.example }\n    then: { reject: \"550 5.7.1 refused by our rule\" }\n".into(),
    )];
    let mx = MxGuard::start(opts);
    let mut c = RawClient::connect(mx.addr);
    c.ehlo("client.example");
    c.send(
        b"MAIL FROM:<sender@example.org>\r\n\
          RCPT TO:<alice@test.example>\r\n\
          RCPT TO:<reject-rcpt@any.example>\r\n\
          RCPT TO:<carol@test.example>\r\n\
          RCPT TO:<tempfail@test.example>\r\n\
          RCPT TO:<bob@test.example>\r\n\
          DATA\r\n",
    );
    let got: Vec<String> = (0..7).map(|_| c.reply().raw()).collect();
    let want = [
        "250 2.1.0 Ok",
        "250 2.1.5 Ok",
        "550 5.7.1 <reject-rcpt@any.example>: Recipient address rejected: upstream rejects",
        "550 5.7.1 refused by our rule",
        "450 4.2.0 <tempfail@test.example>: Recipient address rejected: upstream tempfails",
        "250 2.1.5 Ok",
    ];
    for (i, w) in want.iter().enumerate() {
        assert!(got[i].starts_with(w), "reply {i}: {:?}\n{got:?}", got[i]);
    }
    assert!(got[6].starts_with("354 "), "{got:?}");
    c.send(b"Subject: pipelined\r\n\r\nbody\r\n.\r\n");
    let r = c.reply();
    assert_eq!(r.code, 250, "{r}");
    c.cmd("QUIT");
    drop(mx);
    let delivered = pf.settle(Duration::from_secs(20));
    let mut rcpts: Vec<&str> = delivered.iter().map(|d| d.env("recipient")).collect();
    rcpts.sort_unstable();
    assert_eq!(
        rcpts,
        ["alice@test.example", "bob@test.example"],
        "delivered once each"
    );
}

/// The XCLIENT line of an upstream connection, and whether the next command (the
/// client's EHLO) came without waiting for its reply.
fn xclient_then(conn: &ConnRecord) -> Option<(bool, &str)> {
    let i = conn
        .commands
        .iter()
        .position(|l| l.to_ascii_uppercase().starts_with("XCLIENT"))?;
    Some((conn.followed_at_once[i], conn.commands.get(i + 1)?.as_str()))
}

fn one_message_from(mx: &MxGuard, source: &str) -> Vec<support::client::Reply> {
    let mut c = RawClient::connect_from(mx.addr, Some(source)).expect("connect");
    assert_eq!(c.reply().code, 220);
    c.ehlo("client.example");
    let replies = c.transaction(
        "a@x.test",
        &["b@d.test"],
        b"Subject: xclient\r\n\r\nhello\r\n",
    );
    c.cmd("QUIT");
    replies
}

#[test]
fn xclient_and_the_clients_ehlo_go_upstream_in_one_round_trip() {
    let up = FakeUpstream::start(Script::default());
    let mx = MxGuard::start(MxOpts::new(up.addr));
    let replies = one_message_from(&mx, "127.0.0.2");
    assert!(replies.iter().all(|r| r.code < 400), "{replies:?}");
    let accepted = up.accepted();
    assert_eq!(accepted.len(), 1, "{}", up.transcript());
    let conn = &up.connections()[accepted[0].conn];
    let (pipelined, next) = xclient_then(conn).expect("an XCLIENT, then a command");
    assert!(
        next.starts_with("EHLO client.example"),
        "{:?}",
        conn.commands
    );
    assert!(
        pipelined,
        "EHLO waited for XCLIENT's reply: {:?}",
        conn.commands
    );
}

#[test]
fn without_pipelining_the_upstream_gets_xclient_and_ehlo_in_lockstep() {
    let mut script = Script::default();
    script.caps.retain(|c| c != "PIPELINING");
    let up = FakeUpstream::start(script);
    let mx = MxGuard::start(MxOpts::new(up.addr));
    let replies = one_message_from(&mx, "127.0.0.2");
    assert!(replies.iter().all(|r| r.code < 400), "{replies:?}");
    let accepted = up.accepted();
    assert_eq!(accepted.len(), 1, "{}", up.transcript());
    let conns = up.connections();
    let (pipelined, next) = xclient_then(&conns[accepted[0].conn]).expect("XCLIENT");
    assert!(next.starts_with("EHLO client.example"));
    assert!(
        !pipelined,
        "pipelined to an upstream that does not offer it"
    );
}

/// A refused XCLIENT (Postfix: the proxy is not in smtpd_authorized_xclient_hosts) with
/// the EHLO already sent behind it: the client gets a temporary failure, and no MAIL ever
/// goes to an upstream that does not know who the client is.
#[test]
fn a_refused_pipelined_xclient_sends_no_mail_on_that_connection() {
    let up = FakeUpstream::start(Script::with_fault(Fault::Reply {
        stage: Stage::Xclient,
        reply: "550 5.7.0 Error: insufficient authorization".into(),
        close: false,
    }));
    let mx = MxGuard::start(MxOpts::new(up.addr));
    let mut c = RawClient::connect_from(mx.addr, Some("127.0.0.2")).expect("connect");
    assert_eq!(c.reply().code, 220);
    c.ehlo("client.example");
    let r = c.cmd("MAIL FROM:<a@x.test>");
    assert_eq!(
        (r.code, r.raw().starts_with("451 4.4.1")),
        (451, true),
        "{r}"
    );
    c.cmd("QUIT");
    drop(mx);
    let conns = up.connections();
    let refused: Vec<_> = conns.iter().filter_map(xclient_then).collect();
    assert!(!refused.is_empty(), "{}", up.transcript());
    for (pipelined, next) in refused {
        assert!(pipelined && next.starts_with("EHLO"), "{}", up.transcript());
    }
    assert!(
        conns.iter().all(|c| !c
            .commands
            .iter()
            .any(|l| l.to_ascii_uppercase().starts_with("MAIL"))),
        "MAIL sent after a refused XCLIENT: {}",
        up.transcript()
    );
}
