//! Issue 12, item 3: what a client is offered depends on every configured upstream (seen
//! so far), never on whichever upstream connection was opened last; a transaction that
//! fails over to an upstream lacking an extension it uses gets a 4xx, never a silently
//! dropped parameter.

mod support;

use std::time::Duration;

use support::client::RawClient;
use support::fake_upstream::{FakeUpstream, Script};
use support::mxguard::{MxGuard, MxOpts};

fn script(caps: &[&str]) -> Script {
    let mut caps: Vec<String> = caps.iter().map(|c| c.to_string()).collect();
    caps.push("XCLIENT NAME ADDR PROTO HELO PORT".into());
    Script {
        caps,
        ..Script::default()
    }
}

fn two_upstreams(a: std::net::SocketAddr, b: std::net::SocketAddr) -> String {
    format!(
        "upstreams:\n  - {{ address: \"{a}\", connect_timeout: 2s, command_timeout: 5s }}\n  - {{ address: \"{b}\", connect_timeout: 2s, command_timeout: 5s }}\n"
    )
}

fn ehlo_keywords(c: &mut RawClient) -> String {
    c.ehlo("client.example").raw()
}

#[test]
fn the_offer_is_what_every_upstream_seen_supports() {
    let a = FakeUpstream::start(script(&[
        "PIPELINING",
        "8BITMIME",
        "SMTPUTF8",
        "DSN",
        "SIZE 1000000",
    ]));
    let b = FakeUpstream::start(script(&["PIPELINING", "8BITMIME", "SIZE 2000000"]));
    let mut opts = MxOpts::new(a.addr).config(&two_upstreams(a.addr, b.addr));
    opts.upstream_flag = false;
    let mx = MxGuard::start(opts);
    let mut c = RawClient::connect(mx.addr);
    let offer = ehlo_keywords(&mut c);
    assert!(offer.contains("8BITMIME"), "{offer}");
    assert!(
        !offer.contains("SMTPUTF8") && !offer.contains("DSN"),
        "{offer}"
    );
    assert!(offer.contains("SIZE 1000000"), "the smaller limit: {offer}");
    // What was not offered is refused, whichever upstream would carry the mail.
    assert!(c.cmd("MAIL FROM:<a@x.test> SMTPUTF8").is("555 5.5.4"));
    assert!(c.cmd("MAIL FROM:<a@x.test> RET=HDRS").is("555 5.5.4"));
    assert_eq!(c.cmd("MAIL FROM:<a@x.test> BODY=8BITMIME").code, 250);
}

#[test]
fn failing_over_to_an_upstream_without_an_extension_in_use_is_a_4xx() {
    let a = FakeUpstream::start(script(&[
        "PIPELINING",
        "8BITMIME",
        "SMTPUTF8",
        "SIZE 1000000",
    ]));
    // The second upstream is down at start-up (nothing listens on its port yet).
    let b_addr: std::net::SocketAddr = ([127, 0, 0, 1], support::free_port()).into();
    let mut opts = MxOpts::new(a.addr).config(&two_upstreams(a.addr, b_addr));
    opts.upstream_flag = false;
    let mx = MxGuard::start(opts);
    let mut c = RawClient::connect(mx.addr);
    assert!(
        ehlo_keywords(&mut c).contains("SMTPUTF8"),
        "only the first was seen"
    );
    assert_eq!(c.cmd("MAIL FROM:<zoë@x.test> SMTPUTF8").code, 250);
    assert_eq!(c.cmd("RCPT TO:<b@d.test>").code, 250);
    assert_eq!(c.cmd("DATA").code, 354);
    c.send(b"Subject: one\r\n\r\nhi\r\n.\r\n");
    assert_eq!(c.reply().code, 250);
    assert!(
        a.connections()
            .iter()
            .any(|c| c.commands.iter().any(|l| l.contains("SMTPUTF8"))),
        "{}",
        a.transcript()
    );
    // Now the first goes away (with the connections it has open, e.g. warm pooled ones)
    // and the second (without SMTPUTF8) comes up.
    drop(a);
    let b = FakeUpstream::start_on(b_addr, script(&["PIPELINING", "8BITMIME", "SIZE 1000000"]));
    let mut c = RawClient::connect(mx.addr);
    assert!(
        ehlo_keywords(&mut c).contains("SMTPUTF8"),
        "still as offered before"
    );
    let r = c.cmd("MAIL FROM:<zoë@x.test> SMTPUTF8");
    assert!(r.is("451 4.3.3"), "{r}\n{}", mx.log());
    assert!(
        !b.connections()
            .iter()
            .any(|c| c.commands.iter().any(|l| l.starts_with("MAIL"))),
        "the parameter was dropped and MAIL sent: {}",
        b.transcript()
    );
    // Mail without the extension goes through the second upstream.
    let r = c.transaction("a@x.test", &["b@d.test"], b"Subject: two\r\n\r\nhi\r\n");
    assert_eq!(r.last().unwrap().code, 250, "{r:?}");
    // Once seen, the second upstream narrows what new sessions are offered.
    let mut c = RawClient::connect(mx.addr);
    support::wait_for(Duration::from_secs(5), "the narrowed offer", || {
        (!ehlo_keywords(&mut c).contains("SMTPUTF8")).then_some(())
    });
}
