//! Issue 14, item 1: pipelining towards a real Postfix. A client group of MAIL, mixed
//! recipients and DATA (RFC 2920) is decided, sent upstream as one group, and answered
//! in order; Postfix's own 550 and 450 land on the right recipients; the message is
//! delivered once, to the accepted ones.

mod support;

use std::time::Duration;

use support::client::RawClient;
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
