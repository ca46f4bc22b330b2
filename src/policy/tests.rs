//! Table-driven tests of the evaluator and of the loader's errors.

use std::net::IpAddr;
use std::path::Path;

use super::*;
use crate::envelope::{ClientInfo, Decision, MessageView};
use crate::reply::reply;
use crate::smtp::{ForwardPath, MailParams, RcptParams, ReversePath};
use crate::transaction::{Recipient, Transaction};

/// Writes `files` (name, content) into a fresh directory and loads it.
pub(super) fn load_files(
    files: &[(&str, &str)],
) -> (tempfile::TempDir, Result<RuleSet, LoadErrors>) {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let p = dir.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    let r = RuleSet::load(dir.path());
    (dir, r)
}

fn rules(yaml: &str) -> RuleSet {
    let (_d, r) = load_files(&[("r.yaml", yaml)]);
    match r {
        Ok(r) => r,
        Err(e) => panic!("rules did not load:\n{e}\n---\n{yaml}"),
    }
}

/// Errors of a failed load, with the temporary directory stripped off.
fn errors(files: &[(&str, &str)]) -> Vec<String> {
    let (dir, r) = load_files(files);
    let e = r.expect_err("load should fail");
    let prefix = format!("{}/", dir.path().display());
    e.iter()
        .map(|e| e.to_string().replace(&prefix, ""))
        .collect()
}

/// One session's facts, built up step by step. Addresses are taken as the rules' text
/// as given (so tests can hand the policy hostile text the address parser would refuse).
#[derive(Clone)]
struct S {
    client: ClientInfo,
    helo: Option<String>,
    sender: Option<String>,
    size: Option<u64>,
    rcpt: Option<String>,
    rcpts: Vec<String>,
    msg: Option<MessageView>,
    filters: Vec<crate::envelope::FilterFact>,
}

/// A recipient whose rule text is `text` (the path is not what rules look at).
pub(super) fn recipient(text: &str) -> Recipient {
    Recipient {
        path: ForwardPath::Postmaster("postmaster".into()),
        text: text.into(),
        params: RcptParams::default(),
    }
}

/// A transaction whose sender text is `sender`.
pub(super) fn transaction(sender: &str, size: Option<u64>, rcpts: &[String]) -> Transaction {
    let params = MailParams {
        size,
        ..MailParams::default()
    };
    let mut tx = Transaction::new(
        ReversePath::Null,
        params,
        &crate::envelope::AuthFacts::EMPTY,
    );
    tx.sender_text = sender.into();
    tx.recipients = rcpts.iter().map(|r| recipient(r)).collect();
    tx
}

fn s() -> S {
    S {
        client: ClientInfo {
            ip: "192.0.2.10".parse().unwrap(),
            port: 4000,
            listener: "mx".into(),
            submission: false,
            tls: false,
            auth_user: None,
        },
        helo: Some("mail.client.example".into()),
        sender: Some("Alice@Sender.Example".into()),
        size: Some(1000),
        rcpt: Some("bob@example.org".into()),
        rcpts: vec![],
        msg: Some(MessageView {
            headers: vec![
                ("Subject".into(), "Cheap VIAGRA now".into()),
                ("From".into(), "alice@sender.example".into()),
            ],
            body_prefix: b"Hello,\r\nclick here to unsubscribe\r\n".to_vec(),
            size: 5000,
        }),
        filters: vec![],
    }
}

impl S {
    fn ip(mut self, ip: &str) -> S {
        self.client.ip = ip.parse::<IpAddr>().unwrap();
        self
    }
    fn tls(mut self) -> S {
        self.client.tls = true;
        self
    }
    fn auth(mut self, u: &str) -> S {
        self.client.auth_user = Some(u.into());
        self
    }
    fn helo(mut self, h: &str) -> S {
        self.helo = Some(h.into());
        self
    }
    fn sender(mut self, a: &str) -> S {
        self.sender = Some(a.into());
        self
    }
    fn size(mut self, n: Option<u64>) -> S {
        self.size = n;
        self
    }
    fn rcpt(mut self, a: &str) -> S {
        self.rcpt = Some(a.into());
        self
    }
    fn rcpts(mut self, all: &[&str]) -> S {
        self.rcpts = all.iter().map(|a| a.to_string()).collect();
        self.rcpt = None;
        self
    }
    fn filter(mut self, f: crate::envelope::FilterFact) -> S {
        self.filters.push(f);
        self
    }
    fn msize(mut self, n: u64) -> S {
        self.msg.as_mut().unwrap().size = n;
        self
    }
    fn eval(&self, set: &RuleSet, stage: Stage) -> StageOutcome {
        let tx = self
            .sender
            .as_deref()
            .map(|snd| transaction(snd, self.size, &self.rcpts));
        let rcpt = self.rcpt.as_deref().map(recipient);
        let facts = Facts {
            stage,
            client: &self.client,
            helo: self.helo.as_deref(),
            transaction: tx.as_ref(),
            recipient: if stage == Stage::Rcpt {
                rcpt.as_ref()
            } else {
                None
            },
            message: if stage == Stage::Data {
                self.msg.as_ref()
            } else {
                None
            },
            auth: &crate::envelope::AuthFacts::EMPTY,
            filters: &self.filters,
        };
        set.evaluate(&facts)
    }
}

fn one_rule(stage: Stage, cond: &str) -> RuleSet {
    rules(&format!(
        "rules:\n  - name: r\n    stage: {stage}\n    if: {cond}\n    then: reject\n"
    ))
}

#[test]
fn each_condition_matches_as_documented() {
    use Stage::*;
    let cases: Vec<(Stage, &str, S, bool)> = vec![
        // client_ip / client_net
        (Connect, "{ client_ip: 192.0.2.0/24 }", s(), true),
        (
            Connect,
            "{ client_ip: 192.0.2.0/24 }",
            s().ip("198.51.100.1"),
            false,
        ),
        (
            Connect,
            "{ client_net: [10.0.0.0/8, 192.0.2.10] }",
            s(),
            true,
        ),
        (
            Connect,
            "{ client_ip: { in: [2001:db8::/32] } }",
            s().ip("2001:db8::1"),
            true,
        ),
        (
            Connect,
            "{ client_ip: 192.0.2.0/24 }",
            s().ip("::ffff:192.0.2.1"),
            true,
        ),
        // helo
        (Helo, "{ helo: mail.client.example }", s(), true),
        (Helo, "{ helo: MAIL.client.EXAMPLE }", s(), true),
        (Helo, "{ helo: \"*.client.example\" }", s(), true),
        (Helo, "{ helo: \"/^mail\\\\./\" }", s(), true),
        (Helo, "{ helo: { equals: other.example } }", s(), false),
        (Helo, "{ helo: { glob: \"mail.*\" } }", s(), true),
        (Helo, "{ helo: { regex: \"^MAIL\" } }", s(), false),
        (Helo, "{ helo: { regex: \"(?i)^MAIL\" } }", s(), true),
        (
            Helo,
            "{ helo: { is_ip_literal: true } }",
            s().helo("[192.0.2.1]"),
            true,
        ),
        (Helo, "{ helo: { is_ip_literal: true } }", s(), false),
        (
            Helo,
            "{ helo: { is_fqdn: false } }",
            s().helo("localhost"),
            true,
        ),
        (Helo, "{ helo: { is_fqdn: true } }", s(), true),
        // sender, sender_domain
        (Mail, "{ sender: alice@sender.example }", s(), true),
        (Mail, "{ sender: \"\" }", s().sender(""), true),
        (Mail, "{ sender: \"\" }", s(), false),
        (Mail, "{ sender_domain: sender.example }", s(), true),
        (
            Mail,
            "{ sender_domain: \"*.example\" }",
            s().sender(""),
            false,
        ),
        (
            Mail,
            "{ sender: { in: [\"/^[0-9]+@/\"] } }",
            s().sender("123@x.example"),
            true,
        ),
        // recipient, recipient_domain (rcpt: current; data: any)
        (Rcpt, "{ recipient: BOB@example.org }", s(), true),
        (
            Rcpt,
            "{ recipient_domain: example.org }",
            s().rcpt("x@other.example"),
            false,
        ),
        (
            Data,
            "{ recipient_domain: example.org }",
            s().rcpts(&["a@x.example", "b@example.org"]),
            true,
        ),
        (
            Data,
            "{ recipient: a@y.example }",
            s().rcpts(&["a@x.example"]),
            false,
        ),
        // recipient_count: at rcpt counts the one being decided
        (
            Rcpt,
            "{ recipient_count: { over: 2 } }",
            s().rcpts(&["a@x", "b@x"]).rcpt("c@x"),
            true,
        ),
        (
            Rcpt,
            "{ recipient_count: { over: 2 } }",
            s().rcpts(&["a@x"]).rcpt("c@x"),
            false,
        ),
        (
            Data,
            "{ recipient_count: 2 }",
            s().rcpts(&["a@x", "b@x"]),
            true,
        ),
        (
            Data,
            "{ recipient_count: { under: 2 } }",
            s().rcpts(&["a@x", "b@x"]),
            false,
        ),
        // size: SIZE= at mail, real size at data
        (Mail, "{ size: { over: 1KB } }", s().size(Some(1001)), true),
        (
            Mail,
            "{ size: { over: 1KiB } }",
            s().size(Some(1001)),
            false,
        ),
        (Mail, "{ size: { over: 0 } }", s().size(None), false),
        (Data, "{ size: { over: 25MiB } }", s().msize(26 << 20), true),
        (Data, "{ size: { over: 4KB, under: 6000 } }", s(), true),
        // tls, auth_user
        (Mail, "{ tls: true }", s().tls(), true),
        (Mail, "{ tls: false }", s().tls(), false),
        (Mail, "{ auth_user: true }", s().auth("alice"), true),
        (Mail, "{ auth_user: true }", s(), false),
        (Mail, "{ auth_user: false }", s(), true),
        (Mail, "{ auth_user: \"ali*\" }", s().auth("alice"), true),
        // header, body
        (
            Data,
            "{ header: { name: subject, matches: \"(?i)viagra\" } }",
            s(),
            true,
        ),
        (
            Data,
            "{ header: { name: Subject, matches: \"viagra\" } }",
            s(),
            false,
        ),
        (Data, "{ header: { name: X-Mailer } }", s(), false),
        (Data, "{ header: { name: From } }", s(), true),
        (
            Data,
            "{ body: { matches: \"(?i)UNSUBSCRIBE\" } }",
            s(),
            true,
        ),
        (Data, "{ body: { matches: \"lottery\" } }", s(), false),
        // combinators and implicit all
        (
            Mail,
            "{ tls: false, sender_domain: sender.example }",
            s(),
            true,
        ),
        (
            Mail,
            "{ tls: true, sender_domain: sender.example }",
            s(),
            false,
        ),
        (
            Mail,
            "{ all: [ { tls: false }, { sender: \"*@sender.example\" } ] }",
            s(),
            true,
        ),
        (
            Mail,
            "{ any: [ { tls: true }, { sender: nobody@x } ] }",
            s(),
            false,
        ),
        (
            Mail,
            "{ any: [ { tls: true }, { sender: \"*\" } ] }",
            s(),
            true,
        ),
        (Mail, "{ not: { tls: true } }", s(), true),
        (Mail, "{ not: { any: [ { tls: false } ] } }", s(), false),
        (
            Mail,
            "[ { tls: false }, { size: { under: 2000 } } ]",
            s(),
            true,
        ),
    ];
    for (stage, cond, facts, want) in cases {
        let set = one_rule(stage, cond);
        let ev = facts.eval(&set, stage);
        let got = matches!(ev.decision, Decision::Reject(_));
        assert_eq!(got, want, "stage {stage}: {cond}");
        assert_eq!(ev.hits.len(), usize::from(want), "{cond}");
    }
}

#[test]
fn lists_mix_inline_items_and_files() {
    let (_d, r) = load_files(&[
        (
            "a.yaml",
            "lists:\n  nets: [10.0.0.0/8, \"file:lists/nets.txt\"]\n  senders: [\"file:lists/senders.txt\", x@y.example]\n",
        ),
        (
            "lists/nets.txt",
            "# our networks\n192.0.2.0/24   # office\n\n  2001:db8::/32\n",
        ),
        ("lists/senders.txt", "*@spam.example\n/^[0-9]+@/\n"),
        (
            "b.yaml",
            "rules:\n  - { name: n, stage: connect, if: { client_ip: nets }, then: reject }\n  - { name: s, stage: mail, if: { sender: { in: senders } }, then: reject }\n",
        ),
    ]);
    let set = r.unwrap();
    assert_eq!(set.rule_count(), 2);
    let paths = set.watched_paths();
    assert_eq!(paths.len(), 4, "{paths:?}");
    let rejected = |e: StageOutcome| matches!(e.decision, Decision::Reject(_));
    assert!(rejected(s().eval(&set, Stage::Connect)));
    assert!(rejected(s().ip("2001:db8::5").eval(&set, Stage::Connect)));
    assert!(rejected(s().ip("10.1.2.3").eval(&set, Stage::Connect)));
    assert!(!rejected(s().ip("198.51.100.1").eval(&set, Stage::Connect)));
    assert!(rejected(
        s().sender("joe@SPAM.example").eval(&set, Stage::Mail)
    ));
    assert!(rejected(
        s().sender("42@ok.example").eval(&set, Stage::Mail)
    ));
    assert!(rejected(s().sender("X@Y.example").eval(&set, Stage::Mail)));
    assert!(!rejected(s().eval(&set, Stage::Mail)));
}

#[test]
fn actions_and_default_replies() {
    let set = rules(
        "rules:
  - { name: c-rej, stage: connect, if: { client_ip: 10.0.0.1 }, then: reject }
  - { name: c-tmp, stage: connect, if: { client_ip: 10.0.0.2 }, then: tempfail }
  - { name: h-rej, stage: helo, if: { helo: a.example }, then: reject }
  - { name: m-tmp, stage: mail, if: { sender: a@b.example }, then: tempfail }
  - { name: m-acc, stage: mail, if: { sender: ok@b.example }, then: accept }
  - { name: r-rej, stage: rcpt, if: { recipient: x@y.example }, then: reject }
  - { name: r-own, stage: rcpt, if: { recipient: z@y.example }, then: { tempfail: \"450 4.2.1 Mailbox {recipient} busy\" } }
  - { name: d-rej, stage: data, if: { body: { matches: lottery } }, then: { reject: \"554 5.7.0 No ({rule})\" } }
  - { name: d-tag, stage: data, then: { add_header: \"X-Checked: by {rule} for {client_ip}\" } }
  - { name: d-cont, stage: data, then: continue }
",
    );
    let d = |e: StageOutcome| e.decision;
    assert_eq!(
        d(s().ip("10.0.0.1").eval(&set, Stage::Connect)),
        Decision::Reject(reply(554, (5, 7, 1), "Connection rejected by policy"))
    );
    assert_eq!(
        d(s().ip("10.0.0.2").eval(&set, Stage::Connect)),
        Decision::Tempfail(reply(
            421,
            (4, 7, 1),
            "Service temporarily unavailable by policy, try again later"
        ))
    );
    assert_eq!(
        d(s().helo("a.example").eval(&set, Stage::Helo)),
        Decision::Reject(reply(550, (5, 7, 1), "HELO rejected by policy"))
    );
    assert_eq!(
        d(s().sender("a@b.example").eval(&set, Stage::Mail)),
        Decision::Tempfail(reply(
            451,
            (4, 7, 1),
            "Sender deferred by policy, try again later"
        ))
    );
    assert_eq!(
        d(s().sender("ok@b.example").eval(&set, Stage::Mail)),
        Decision::Accept
    );
    assert_eq!(
        d(s().rcpt("x@y.example").eval(&set, Stage::Rcpt)),
        Decision::Reject(reply(550, (5, 7, 1), "Recipient rejected by policy"))
    );
    assert_eq!(
        d(s().rcpt("z@y.example").eval(&set, Stage::Rcpt)),
        Decision::Tempfail(reply(450, (4, 2, 1), "Mailbox z@y.example busy"))
    );
    let ev = s().rcpts(&["a@b.example"]).eval(&set, Stage::Data);
    assert_eq!(ev.decision, Decision::Continue);
    assert_eq!(
        ev.edits,
        vec!["X-Checked: by d-tag for 192.0.2.10".to_owned()]
    );
    let kinds: Vec<ActionKind> = ev.hits.iter().map(|h| h.action).collect();
    assert_eq!(kinds, vec![ActionKind::AddHeader, ActionKind::Continue]);
    let mut lottery = s().rcpts(&["a@b.example"]);
    lottery.msg.as_mut().unwrap().body_prefix = b"you won the lottery".to_vec();
    let ev = lottery.eval(&set, Stage::Data);
    assert_eq!(
        ev.decision,
        Decision::Reject(reply(554, (5, 7, 0), "No (d-rej)"))
    );
    assert_eq!(ev.rule.as_deref(), Some("d-rej"));
    assert!(ev.edits.is_empty(), "evaluation stops at the decisive rule");
}

#[test]
fn first_decisive_wins_and_monitor_never_acts() {
    let set = rules(
        "rules:
  - { name: tag, stage: data, then: { add_header: \"X-A: 1\" } }
  - { name: watch, stage: data, then: reject, mode: monitor }
  - { name: watch-tag, stage: data, then: { add_header: \"X-B: 1\" }, mode: monitor }
  - { name: note, stage: data, then: continue }
  - { name: first, stage: data, if: { tls: false }, then: { tempfail: \"451 4.3.0 first\" } }
  - { name: second, stage: data, then: reject }
",
    );
    let ev = s().rcpts(&["a@b"]).eval(&set, Stage::Data);
    assert_eq!(
        ev.decision,
        Decision::Tempfail(reply(451, (4, 3, 0), "first"))
    );
    assert_eq!(ev.rule.as_deref(), Some("first"));
    assert_eq!(ev.edits, vec!["X-A: 1".to_owned()]);
    let hits: Vec<(&str, ActionKind, Mode)> = ev
        .hits
        .iter()
        .map(|h| (&*h.rule, h.action, h.mode))
        .collect();
    assert_eq!(
        hits,
        vec![
            ("tag", ActionKind::AddHeader, Mode::Enforce),
            ("watch", ActionKind::Reject, Mode::Monitor),
            ("watch-tag", ActionKind::AddHeader, Mode::Monitor),
            ("note", ActionKind::Continue, Mode::Enforce),
            ("first", ActionKind::Tempfail, Mode::Enforce),
        ]
    );
    // With TLS, `first` does not match and `second` decides.
    let ev = s().tls().rcpts(&["a@b"]).eval(&set, Stage::Data);
    assert_eq!(ev.rule.as_deref(), Some("second"));
    // Other stages have no rules: continue, no hits.
    let ev = s().eval(&set, Stage::Mail);
    assert_eq!(ev.decision, Decision::Continue);
    assert!(ev.edits.is_empty() && ev.rule.is_none());
    assert!(ev.hits.is_empty());
}

#[test]
fn templates_render_values_and_cannot_inject_lines() {
    let set = rules(
        "rules:
  - { name: m, stage: mail, then: { reject: \"550 5.7.1 {sender} from {client_ip} via {helo} to {recipient_domain}\" } }
  - { name: r, stage: rcpt, then: { reject: \"550 5.7.1 {recipient} at {recipient_domain} by {rule} {{literal}}\" } }
  - { name: d, stage: data, then: { add_header: \"X-Rcpt: {recipient_domain}\" } }
",
    );
    let text = |e: StageOutcome| match e.decision {
        Decision::Reject(r) => r.text(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        text(s().sender("").eval(&set, Stage::Mail)),
        "<> from 192.0.2.10 via mail.client.example to"
    );
    assert_eq!(
        text(s().eval(&set, Stage::Rcpt)),
        "bob@example.org at example.org by r {literal}"
    );
    let evil = s().rcpt("x@y\r\n250 2.0.0 fake");
    let r = match evil.eval(&set, Stage::Rcpt).decision {
        Decision::Reject(r) => r,
        other => panic!("{other:?}"),
    };
    let mut wire = Vec::new();
    r.write_to(&mut wire);
    assert_eq!(wire.iter().filter(|&&b| b == b'\n').count(), 1);
    let ev = s()
        .rcpts(&["a@X.example", "b@x.example", "c@z.example"])
        .eval(&set, Stage::Data);
    assert_eq!(ev.edits, vec!["X-Rcpt: x.example,z.example".to_owned()]);
    let ev = s().rcpts(&["a@x\nBcc: evil@x"]).eval(&set, Stage::Data);
    assert!(!ev.edits[0].contains('\n'));
}

#[test]
fn shipped_rules_load_and_behave_as_the_issue_shows() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let set = match RuleSet::load(&dir) {
        Ok(s) => s,
        Err(e) => panic!("shipped rules do not load:\n{e}"),
    };
    assert_eq!(set.rule_count(), 11);
    assert_eq!(set.content_hash().len(), 16);
    assert!(
        set.watched_paths()
            .iter()
            .any(|p| p.ends_with("lists/trusted-nets.txt"))
    );
    assert_eq!(
        s().ip("127.0.0.1").eval(&set, Stage::Connect).decision,
        Decision::Accept
    );
    assert_eq!(
        s().ip("::1").eval(&set, Stage::Connect).decision,
        Decision::Accept
    );
    assert_eq!(
        s().helo("[192.0.2.1]").eval(&set, Stage::Helo).decision,
        Decision::Reject(reply(550, (5, 7, 1), "Bare IP HELO not accepted"))
    );
    assert_eq!(
        s().sender("x@mx.bad.example")
            .eval(&set, Stage::Mail)
            .decision,
        Decision::Reject(reply(550, (5, 7, 1), "Sender rejected by policy"))
    );
    assert_eq!(
        s().size(Some(30 << 20)).eval(&set, Stage::Mail).decision,
        Decision::Reject(reply(552, (5, 3, 4), "Message too big for"))
    );
    assert_eq!(
        s().rcpt("x@elsewhere.example")
            .eval(&set, Stage::Rcpt)
            .decision,
        Decision::Reject(reply(550, (5, 7, 1), "Relaying denied"))
    );
    assert_eq!(s().eval(&set, Stage::Rcpt).decision, Decision::Continue);
    let ev = s().rcpts(&["bob@example.org"]).eval(&set, Stage::Data);
    assert_eq!(ev.decision, Decision::Continue);
    assert!(ev.edits.is_empty(), "monitor mode adds no header");
    assert_eq!(ev.hits[0].mode, Mode::Monitor);
}

#[test]
fn loader_reports_every_error_with_its_place() {
    let rcpt = "\
rules:
  - name: ok
    stage: rcpt
    then: continue
  - name: bad-net
    stage: connect
    if: { client_ip: \"10.0.0/8\" }
    then: accept
  - name: typo
    stage: mail
    iff: { tls: true }
    then: accept
  - name: ok
    stage: rcpt
    if:
      sender: \"/([a-z/\"
    then: reject
  - name: unknown-list
    stage: mail
    if: { sender: { in: nosuch } }
    then: reject
  - name: header-early
    stage: mail
    if: { header: { name: Subject } }
    then: { add_header: \"X-A: b\" }
  - name: size
    stage: mail
    if: { size: { over: 25 MeB } }
    then: { reject: \"450 4.7.1 wrong class\" }
  - name: tpl
    stage: rcpt
    if: { recipient: { in: [\"a@b\", \"/(/\"] } }
    then: { tempfail: \"451 4.7.1 for {user}\" }
  - stage: conect
    then: bounce
";
    let got = errors(&[
        ("rcpt.yaml", rcpt),
        (
            "z.yaml",
            "lists:\n  nets: [\"file:nets.txt\", 10.0.0.0/8]\nrules:\n  - { name: n, stage: connect, if: { client_ip: nets }, then: accept }\n",
        ),
        ("nets.txt", "192.0.2.0/24\n  192.0.2.0/33\n"),
    ]);
    let want = vec![
        "nets.txt:2:3: lists.nets: invalid network \"192.0.2.0/33\"",
        "rcpt.yaml:7:22: rules[1].if.client_ip: invalid network \"10.0.0/8\"",
        "rcpt.yaml:11:5: rules[2].iff: unknown field `iff`, expected one of `name`, `stage`, `if`, `then`, `mode`, `description`",
        "rcpt.yaml:13:11: rules[3].name: duplicate rule name `ok` (first defined in rcpt.yaml rules[0])",
        "rcpt.yaml:16:15: rules[3].if.sender: invalid regex: regex parse error: ([a-z ^ error: unclosed character class",
        "rcpt.yaml:20:25: rules[4].if.sender.in: unknown list `nosuch`",
        "rcpt.yaml:24:11: rules[5].if.header: `header` is not known at stage mail (available at: data)",
        "rcpt.yaml:25:13: rules[5].then.add_header: action `add_header` is not allowed at stage mail (only at data)",
        "rcpt.yaml:28:25: rules[6].if.size.over: invalid size \"25 MeB\": expected a number with an optional unit B, KB, MB, GB, KiB, MiB or GiB",
        "rcpt.yaml:29:21: rules[6].then.reject: reject needs a 5xx reply code, found 450",
        "rcpt.yaml:32:36: rules[7].if.recipient.in[1]: invalid regex: regex parse error: ( ^ error: unclosed group",
        "rcpt.yaml:33:23: rules[7].then.tempfail: unknown placeholder `{user}`, expected one of {client_ip} {helo} {sender} {recipient} {recipient_domain} {rule} {auth} {dnsbl_zone} {dnsbl_reason}",
        "rcpt.yaml:34:5: rules[8]: missing field `name`",
        "rcpt.yaml:34:12: rules[8].stage: unknown stage \"conect\", expected one of connect, helo, mail, rcpt, data",
        "rcpt.yaml:35:11: rules[8].then: unknown action `bounce`, expected one of `accept`, `reject`, `tempfail`, `add_header`, `continue`, `greylist`, `rate_limit`",
    ];
    assert_eq!(got, want);
}

#[test]
fn syntax_errors_and_unknown_top_level_keys_are_located() {
    let got = errors(&[
        ("a.yaml", "rules:\n  - name: x\n\tstage: mail\n"),
        ("b.yaml", "rule:\n  - name: x\n"),
        (
            "c.yaml",
            "lists:\n  l: [a]\n  l2: { x: 1 }\nrules:\n  - { name: x, stage: mail, if: { sender: l }, then: { reject: \"550 5.7.1 a\\nb\" } }\n",
        ),
        ("d.yaml", "lists:\n  l: [b]\n"),
    ]);
    let want = vec![
        "a.yaml:3:1: found a tab character that violates indentation, while scanning a plain scalar at line 2 column 11",
        "b.yaml:1:1: rule: unknown field `rule`, expected one of `lists`, `rules`",
        "c.yaml:3:7: lists.l2: expected a list of items, found a mapping",
        "c.yaml:5:64: rules[0].then.reject: reply must be one line",
        "d.yaml:2:3: lists.l: duplicate list `l`",
    ];
    assert_eq!(got, want);
}

#[test]
fn missing_list_file_and_directory_errors() {
    let got = errors(&[("a.yaml", "lists:\n  l: [\"file:nope.txt\"]\n")]);
    assert_eq!(got.len(), 1);
    assert!(
        got[0].starts_with("a.yaml:2:7: lists.l[0]: cannot read list file"),
        "{got:?}"
    );
    let e = RuleSet::load(Path::new("/nonexistent/rules")).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("/nonexistent/rules: cannot read rules directory:"),
        "{e}"
    );
}

#[test]
fn content_hash_follows_rule_and_list_files() {
    let base = [
        (
            "a.yaml",
            "lists:\n  l: [\"file:l.txt\"]\nrules:\n  - { name: x, stage: connect, if: { client_ip: l }, then: accept }\n",
        ),
        ("l.txt", "10.0.0.0/8\n"),
    ];
    let h = |files: &[(&str, &str)]| load_files(files).1.unwrap().content_hash();
    let h0 = h(&base);
    assert_eq!(h0, h(&base));
    assert_ne!(h0, h(&[base[0], ("l.txt", "10.0.0.0/9\n")]));
    assert_eq!(RuleSet::empty().rule_count(), 0);
}

#[test]
fn explain_reports_each_rule_and_verdict() {
    let set = rules(
        "rules:
  - { name: trusted, stage: connect, if: { client_ip: 10.0.0.0/8 }, then: accept }
  - { name: relay, stage: rcpt, if: { not: { recipient_domain: [example.org] } }, then: reject }
  - { name: after, stage: rcpt, then: continue }
  - { name: viagra, stage: data, if: { header: { name: Subject, matches: \"(?i)viagra\" } }, then: { add_header: \"X-Spam: yes\" } }
",
    );
    let mut input = ExplainInput::new(
        "192.0.2.1".parse().unwrap(),
        "mx.client.example",
        "<alice@sender.example>",
        vec!["bob@example.org".into(), "eve@other.example".into()],
    );
    let msg = b"Subject: cheap Viagra\r\n\r\nhi\r\n";
    input.message = Some(msg);
    let report = set.explain_session(&input);
    for want in [
        "== connect: client_ip=192.0.2.1 tls=false",
        "  rule trusted (",
        "    [no]  client_ip in 10.0.0.0/8 (client_ip=192.0.2.1)",
        "== rcpt: recipient=<eve@other.example>",
        "  rule relay (",
        "    [yes] not:",
        "      [no]  recipient_domain matches [\"example.org\"] (recipient_domain=\"other.example\")",
        "  rule after (",
        "not evaluated (decided by relay)",
        "  verdict: reject 550 5.7.1 Recipient rejected by policy (rule relay)",
        "  -> recipient <eve@other.example> refused: 550 5.7.1 Recipient rejected by policy",
        "MATCH -> add_header \"X-Spam: yes\"",
        "    [yes] header Subject matches /(?i)viagra/ (Subject: \"cheap Viagra\")",
        "  add header: X-Spam: yes",
        "result: message passes the rules; relayed upstream",
    ] {
        assert!(report.contains(want), "missing {want:?} in:\n{report}");
    }
    input.client_ip = "10.1.1.1".parse().unwrap();
    let report = set.explain_session(&input);
    assert!(
        report
            .contains("result: accepted by policy at connect; no later rules run for the session"),
        "{report}"
    );
    assert!(!report.contains("== helo"));
}

fn fact(name: &str, result: crate::envelope::FilterResult) -> crate::envelope::FilterFact {
    crate::envelope::FilterFact {
        name: name.into(),
        result,
        action: None,
        score: None,
        symbols: vec![],
        reply: None,
        reason: None,
    }
}

fn rspamd_fact(score: f64, action: &str, symbols: &[&str]) -> crate::envelope::FilterFact {
    crate::envelope::FilterFact {
        action: Some(action.into()),
        score: Some(score),
        symbols: symbols.iter().map(|s| s.to_string()).collect(),
        ..fact("spam", crate::envelope::FilterResult::Pass)
    }
}

#[test]
fn filter_conditions_test_the_verdicts_of_the_message() {
    use crate::envelope::FilterResult::*;
    let cases: Vec<(&str, S, bool)> = vec![
        (
            "{ filter: { name: clamav, result: reject } }",
            s().filter(fact("clamav", Reject)),
            true,
        ),
        (
            "{ filter: { name: clamav, result: reject } }",
            s().filter(fact("clamav", Pass)),
            false,
        ),
        (
            "{ filter: { name: clamav, result: [reject, tempfail] } }",
            s().filter(fact("clamav", Tempfail)),
            true,
        ),
        // A filter that did not run matches nothing.
        ("{ filter: { name: clamav } }", s(), false),
        (
            "{ filter: { name: clamav } }",
            s().filter(fact("clamav", Error)),
            true,
        ),
        (
            "{ filter: { name: spam, action: reject } }",
            s().filter(rspamd_fact(20.0, "reject", &[])),
            true,
        ),
        (
            "{ filter: { name: spam, action: reject } }",
            s().filter(rspamd_fact(2.0, "no action", &[])),
            false,
        ),
        (
            "{ rspamd: { score: { over: 15 } } }",
            s().filter(rspamd_fact(15.5, "reject", &[])),
            true,
        ),
        (
            "{ rspamd: { score: { over: 15 } } }",
            s().filter(rspamd_fact(15.0, "reject", &[])),
            false,
        ),
        (
            "{ rspamd: { score: { over: 5, under: 15 } } }",
            s().filter(rspamd_fact(7.0, "add header", &[])),
            true,
        ),
        (
            "{ rspamd: { symbol: GTUBE } }",
            s().filter(rspamd_fact(0.0, "reject", &["GTUBE", "MIME_GOOD"])),
            true,
        ),
        (
            "{ rspamd: { symbol: [BAYES_SPAM, GTUBE] } }",
            s().filter(rspamd_fact(0.0, "no action", &["MIME_GOOD"])),
            false,
        ),
        (
            "{ rspamd: { name: spam, action: [\"soft reject\", greylist] } }",
            s().filter(rspamd_fact(9.0, "soft reject", &[])),
            true,
        ),
        // Without a name: the first filter with a score (an rspamd one), not a milter.
        (
            "{ rspamd: { score: { under: 1 } } }",
            s().filter(fact("clamav", Pass)),
            false,
        ),
    ];
    for (cond, subject, want) in cases {
        let set = one_rule(Stage::Data, cond);
        let got = subject.eval(&set, Stage::Data).decision != Decision::Continue;
        assert_eq!(got, want, "{cond}");
    }
}

#[test]
fn filter_conditions_are_data_stage_only_and_checked_when_loading() {
    let e = errors(&[(
        "r.yaml",
        "rules:\n  - name: a\n    stage: rcpt\n    if: { filter: { name: clamav } }\n    then: reject\n\
         \x20 - name: b\n    stage: data\n    if: { filter: { result: reject } }\n    then: reject\n\
         \x20 - name: c\n    stage: data\n    if: { filter: { name: x, result: spam } }\n    then: reject\n\
         \x20 - name: d\n    stage: data\n    if: { rspamd: { score: { over: high } } }\n    then: reject\n",
    )]);
    let all = e.join("\n");
    assert_eq!(e.len(), 4, "{all}");
    assert!(all.contains("filter"), "{all}");
    assert!(all.contains("needs the filter's `name`"), "{all}");
    assert!(all.contains("unknown result \"spam\""), "{all}");
    assert!(all.contains("expected a number"), "{all}");
}

#[test]
fn an_enforcing_rule_that_tests_a_filter_takes_its_verdict_over() {
    let set = rules(
        "rules:\n  - name: a\n    stage: data\n    if: { any: [ { filter: { name: clamav, result: reject } }, { header: { name: Subject, matches: x } } ] }\n    then: reject\n\
         \x20 - name: b\n    stage: data\n    mode: monitor\n    if: { filter: { name: watched } }\n    then: reject\n\
         \x20 - name: c\n    stage: data\n    if: { rspamd: { symbol: GTUBE } }\n    then: reject\n",
    );
    assert!(set.tests_filter("clamav", false), "inside any:");
    assert!(
        !set.tests_filter("watched", false),
        "a monitor rule only watches"
    );
    assert!(!set.tests_filter("other-milter", false));
    assert!(
        set.tests_filter("any-rspamd", true),
        "a nameless rspamd condition covers each rspamd filter"
    );
}
