//! The store-backed actions: parsing with located errors, the pending check the policy's
//! stepper yields (keys derived from the facts), and stepping on after it.

use super::tests::{load_files, recipient, transaction};
use super::*;
use crate::checks::{Check, FailMode};
use crate::envelope::{ClientInfo, Decision};
use crate::transaction::{Recipient, Transaction};

fn client(ip: &str) -> ClientInfo {
    ClientInfo {
        ip: ip.parse().unwrap(),
        port: 4000,
        listener: "mx".into(),
        submission: false,
        tls: false,
        auth_user: None,
    }
}

fn env(sender: &str, rcpt: &str) -> (Transaction, Recipient) {
    (transaction(sender, Some(1000), &[]), recipient(rcpt))
}

/// Facts at `stage` for the transaction and recipient of `e`.
fn facts<'a>(
    stage: Stage,
    c: &'a ClientInfo,
    e: &'a (Transaction, Recipient),
    auth: &'a crate::envelope::AuthFacts,
) -> Facts<'a> {
    Facts {
        stage,
        client: c,
        helo: Some("mail.client.example"),
        transaction: Some(&e.0),
        recipient: (stage == Stage::Rcpt).then_some(&e.1),
        message: None,
        auth,
        filters: &[],
    }
}

/// The next store check the stepper yields, or its outcome.
fn next(
    stepper: &mut Stepper<'_>,
    facts: &Facts<'_>,
) -> Result<crate::checks::Pending, StageOutcome> {
    match stepper.step(facts) {
        Step::NeedStore(p) => Ok(p),
        Step::Done(o) => Err(o),
    }
}

fn load(yaml: &str) -> RuleSet {
    let (_d, r) = load_files(&[("r.yaml", yaml)]);
    r.unwrap_or_else(|e| panic!("rules did not load:\n{e}"))
}

const RULES: &str = r#"
rules:
  - name: greylist-unknown
    stage: rcpt
    if: { not: { client_ip: 10.0.0.0/8 } }
    then: { greylist: { delay: 5m, retry_window: 2d, expire: 35d, auto_allow_after: 5 } }
  - name: per-sender-recipients
    stage: rcpt
    if: { not: { sender: "" } }
    then: { rate_limit: { key: [sender_domain], rate: 500/1h, count: recipients } }
  - name: tag
    stage: rcpt
    then: continue
  - name: per-net-messages
    stage: mail
    then: { rate_limit: { key: [client_net, helo], rate: 30/1m, burst: 10, fail: tempfail } }
"#;

#[test]
fn greylist_yields_a_pending_check_then_resumes() {
    let rules = load(RULES);
    let c = client("::ffff:192.0.2.77");
    let e = env("prvs=1234abcd=Alice@Sender.Example", "Bob@Example.org");
    let f = facts(Stage::Rcpt, &c, &e, &crate::envelope::AuthFacts::EMPTY);
    let mut st = rules.stepper(Stage::Rcpt);
    let p = next(&mut st, &f).expect("a greylist check");
    assert_eq!(&*p.rule, "greylist-unknown");
    let Check::Greylist(g) = &p.check else {
        panic!()
    };
    assert_eq!(
        g.triplet,
        "192.0.2.0/24|alice@sender.example|bob@example.org"
    );
    assert_eq!(g.net, "192.0.2.0/24");
    assert_eq!(g.params.delay, 300_000_000);
    assert_eq!(p.fail, FailMode::Open);
    // Stepping on after the greylist check passed reaches the rate limit.
    st.store_answered(None);
    let p = next(&mut st, &f).expect("a rate-limit check");
    let Check::RateLimit(r) = &p.check else {
        panic!()
    };
    assert_eq!(r.key, "per-sender-recipients|sender_domain=sender.example");
    assert_eq!(
        (r.cost, r.count, r.params.burst),
        (1, crate::store::RateCount::Recipients, 500)
    );
    assert_eq!(r.params.interval, 7_200_000);
    st.store_answered(None);
    let o = next(&mut st, &f).expect_err("done");
    assert_eq!(o.decision, Decision::Continue);
    // Both checks and the `continue` rule matched.
    assert_eq!(o.hits.len(), 3);
    // A refusal by the store ends the stage with the store's reply and the rule's name.
    let mut st = rules.stepper(Stage::Rcpt);
    next(&mut st, &f).unwrap();
    let r = crate::reply::reply(451, (4, 7, 1), "Greylisted");
    st.store_answered(Some(r.clone()));
    let o = next(&mut st, &f).expect_err("done");
    assert_eq!(o.decision, Decision::Tempfail(r));
    assert_eq!(o.rule.as_deref(), Some("greylist-unknown"));
}

#[test]
fn null_sender_is_greylisted_but_not_rate_limited() {
    let rules = load(RULES);
    let c = client("2001:db8:1:2::99");
    let e = env("", "bob@example.org");
    let f = facts(Stage::Rcpt, &c, &e, &crate::envelope::AuthFacts::EMPTY);
    let mut st = rules.stepper(Stage::Rcpt);
    let p = next(&mut st, &f).unwrap();
    let Check::Greylist(g) = &p.check else {
        panic!()
    };
    assert_eq!(g.triplet, "2001:db8:1:2::/64||bob@example.org");
    st.store_answered(None);
    let o = next(&mut st, &f).expect_err("no rate limit for <>");
    assert_eq!(o.decision, Decision::Continue);
}

#[test]
fn rate_limit_key_and_fail_mode_at_mail() {
    let rules = load(RULES);
    let c = client("198.51.100.7");
    let e = env("a@b.example", "x@y");
    let f = facts(Stage::Mail, &c, &e, &crate::envelope::AuthFacts::EMPTY);
    let p = next(&mut rules.stepper(Stage::Mail), &f).unwrap();
    let Check::RateLimit(r) = &p.check else {
        panic!()
    };
    assert_eq!(
        r.key,
        "per-net-messages|client_net=198.51.100.0/24|helo=mail.client.example"
    );
    assert_eq!(
        (r.cost, r.params.burst, p.fail),
        (1, 10, FailMode::Tempfail)
    );
}

#[test]
fn bad_options_are_located() {
    let (dir, r) = load_files(&[(
        "r.yaml",
        r#"rules:
  - name: a
    stage: rcpt
    then: { greylist: { delay: 5x, key: [client_net, spf_domain] } }
  - name: b
    stage: mail
    then: { greylist: {} }
  - name: c
    stage: rcpt
    then: { rate_limit: { key: [sender, color], rate: 30/1m } }
  - name: d
    stage: mail
    then: { rate_limit: { key: [recipient], rate: "x/1m", count: recipients, fail: maybe } }
  - name: e
    stage: connect
    then: { rate_limit: { key: [client_ip], rate: 10/1m, burst: 0 } }
"#,
    )]);
    let prefix = format!("{}/", dir.path().display());
    let got: Vec<String> = r
        .expect_err("must fail")
        .iter()
        .map(|e| e.to_string().replace(&prefix, ""))
        .collect();
    assert_eq!(
        got,
        [
            "r.yaml:4:32: rules[0].then.greylist.delay: invalid duration unit in \"5x\" (ms, s, m, h, d, w)",
            "r.yaml:4:41: rules[0].then.greylist.key: use either `client_net` or `spf_domain`, not both",
            "r.yaml:7:23: rules[1].then.greylist: action `greylist` is not allowed at stage mail (only at rcpt (the key has a recipient))",
            "r.yaml:10:41: rules[2].then.rate_limit.key[1]: unknown rate key `color`, expected one of `client_ip`, `client_net`, `helo`, `sender`, `sender_domain`, `recipient`, `recipient_domain`, `auth_user`",
            "r.yaml:13:33: rules[3].then.rate_limit.key[0]: rate key `recipient` is not known at stage mail",
            "r.yaml:13:51: rules[3].then.rate_limit.rate: invalid rate \"x/1m\": \"x\" is not a whole number",
            "r.yaml:13:66: rules[3].then.rate_limit.count: `count: recipients` is not possible at stage mail (only at rcpt or data)",
            "r.yaml:13:84: rules[3].then.rate_limit.fail: unknown fail mode `maybe`, expected `open` or `tempfail`",
            "r.yaml:16:65: rules[4].then.rate_limit.burst: burst must be at least 1",
        ]
    );
}

#[test]
fn spf_domain_key_uses_the_authorised_domain_when_spf_passes() {
    let rules = load(
        "rules:\n  - name: grey-pool\n    stage: rcpt\n    then: { greylist: { key: [spf_domain, sender, recipient] } }\n",
    );
    assert!(
        rules
            .needs(Stage::Rcpt)
            .contains(crate::envelope::Checks::SPF)
    );
    let e = env("alice@bigsender.example", "bob@example.org");
    let triplet = |ip: &str, auth: &crate::envelope::AuthFacts| {
        let c = client(ip);
        let f = facts(Stage::Rcpt, &c, &e, auth);
        let p = next(&mut rules.stepper(Stage::Rcpt), &f).unwrap();
        let Check::Greylist(g) = &p.check else {
            panic!()
        };
        g.triplet.clone()
    };
    let pass = crate::envelope::AuthFacts {
        spf: Some(crate::envelope::SpfFact {
            status: crate::envelope::AuthStatus::Pass,
            domain: "BigSender.example".into(),
        }),
        ..Default::default()
    };
    // Two addresses of the sender's pool: one triplet.
    let a = triplet("192.0.2.10", &pass);
    assert_eq!(
        a,
        "spf:bigsender.example|alice@bigsender.example|bob@example.org"
    );
    assert_eq!(triplet("203.0.113.99", &pass), a);
    // Without an SPF pass: the client network, as with client_net.
    let none = crate::envelope::AuthFacts::default();
    assert_eq!(
        triplet("192.0.2.10", &none),
        "192.0.2.0/24|alice@bigsender.example|bob@example.org"
    );
}
