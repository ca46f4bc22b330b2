//! The authentication conditions as a table: facts in, verdicts out (pure, no DNS),
//! their load errors with places, which checks each stage needs, and the failure
//! policy turning a reject that rests on DNS trouble into a 4xx.

use super::RuleSet;
use super::tests::load_files;
use crate::envelope::{
    AuthFacts, AuthStatus, Checks, ClientInfo, Decision, DkimSignatureFact, DmarcFact, DnsblFact,
    DnsblHit, Facts, RdnsFact, RdnsStatus, SpfFact, Stage,
};

const RULES: &str = r#"
rules:
  - name: listed
    stage: connect
    if: { dnsbl: { zone: bl.example, code: 127.0.0.2 } }
    then: { reject: "554 5.7.1 listed: {dnsbl_reason}" }
  - name: score
    stage: connect
    if: { dnsbl_score: { over: 2 } }
    then: reject
  - name: no-rdns
    stage: helo
    if: { rdns: [none, generic] }
    then: tempfail
  - name: spf-fail
    stage: mail
    if: { spf: { in: [fail] } }
    then: reject
  - name: helo-fail
    stage: mail
    if: { spf: { identity: helo, in: [fail] } }
    then: reject
  - name: dmarc
    stage: data
    if: { dmarc: { result: fail, policy: [reject] } }
    then: reject
  - name: dkim-none
    stage: data
    if: { dkim: none }
    then: { add_header: "X-DKIM: none ({auth})" }
"#;

fn set() -> RuleSet {
    let (_d, r) = load_files(&[("a.yaml", RULES)]);
    r.unwrap_or_else(|e| panic!("{e}"))
}

fn decide(set: &RuleSet, stage: Stage, auth: &AuthFacts) -> Decision {
    let client = ClientInfo {
        ip: "192.0.2.1".parse().unwrap(),
        port: 1,
        listener: "mx".into(),
        submission: false,
        tls: false,
        auth_user: None,
    };
    let tx = super::tests::transaction("a@s.example", None, &[]);
    let msg = crate::envelope::MessageView::default();
    let facts = Facts {
        stage,
        client: &client,
        helo: Some("h.example"),
        transaction: (stage >= Stage::Mail).then_some(&tx),
        recipient: None,
        message: (stage == Stage::Data).then_some(&msg),
        auth,
        filters: &[],
    };
    set.evaluate(&facts).decision
}

fn spf(s: AuthStatus) -> Option<SpfFact> {
    Some(SpfFact {
        status: s,
        domain: "s.example".into(),
    })
}

#[test]
fn conditions_decide_on_the_facts() {
    let set = set();
    let code = |d: &Decision| match d {
        Decision::Reject(r) | Decision::Tempfail(r) => r.code,
        _ => 0,
    };
    // Nothing ran: nothing matches.
    for st in Stage::ALL {
        assert_eq!(decide(&set, st, &AuthFacts::default()), Decision::Continue);
    }
    let hit = |zone: &str, code: &str, w: i64| DnsblHit {
        zone: zone.into(),
        codes: vec![code.parse().unwrap()],
        weight: w,
        reason: Some("because".into()),
    };
    let mut a = AuthFacts {
        dnsbl: Some(DnsblFact {
            hits: vec![hit("bl.example", "127.0.0.2", 1)],
            score: 1,
            unusable: vec![],
        }),
        ..AuthFacts::default()
    };
    match decide(&set, Stage::Connect, &a) {
        Decision::Reject(r) => assert_eq!(r.to_string(), "554 5.7.1 listed: because"),
        d => panic!("{d:?}"),
    }
    a.dnsbl = Some(DnsblFact {
        hits: vec![hit("other.example", "127.0.0.4", 3)],
        score: 3,
        unusable: vec![],
    });
    // The default reject reply at connect.
    assert_eq!(code(&decide(&set, Stage::Connect, &a)), 554);
    a.rdns = Some(RdnsFact {
        status: RdnsStatus::Pass,
        name: Some("dyn-1.pool.example".into()),
        generic: true,
    });
    assert_eq!(code(&decide(&set, Stage::Helo, &a)), 451);
    a.spf = spf(AuthStatus::Fail);
    a.spf_helo = spf(AuthStatus::Pass);
    assert_eq!(code(&decide(&set, Stage::Mail, &a)), 550);
    a.spf = spf(AuthStatus::SoftFail);
    assert_eq!(decide(&set, Stage::Mail, &a), Decision::Continue);
    a.spf_helo = spf(AuthStatus::Fail);
    assert_eq!(code(&decide(&set, Stage::Mail, &a)), 550);
    a.dmarc = Some(DmarcFact {
        status: AuthStatus::Fail,
        domain: "f.example".into(),
        policy: "quarantine",
        reason: None,
    });
    a.dkim = Some(vec![DkimSignatureFact {
        status: AuthStatus::Fail,
        domain: "f.example".into(),
        selector: "s".into(),
        algorithm: "rsa-sha256".into(),
        reason: None,
    }]);
    assert_eq!(decide(&set, Stage::Data, &a), Decision::Continue);
    a.dmarc.as_mut().unwrap().policy = "reject";
    assert_eq!(code(&decide(&set, Stage::Data, &a)), 550);
    // The same reject, resting on a DMARC result that met DNS trouble: 451 4.4.3.
    a.degraded = Checks::DMARC;
    match decide(&set, Stage::Data, &a) {
        Decision::Tempfail(r) => assert!(r.to_string().starts_with("451 4.4.3"), "{r}"),
        d => panic!("{d:?}"),
    }
}

#[test]
fn stages_need_only_their_checks() {
    let set = set();
    assert_eq!(set.needs(Stage::Connect), Checks::DNSBL);
    assert_eq!(set.needs(Stage::Helo), Checks::RDNS);
    assert_eq!(set.needs(Stage::Mail), Checks::SPF | Checks::SPF_HELO);
    assert_eq!(set.needs(Stage::Rcpt), Checks::NONE);
    // DMARC needs DKIM and SPF results.
    assert_eq!(
        set.needs(Stage::Data),
        Checks::DMARC | Checks::DKIM | Checks::SPF
    );
}

#[test]
fn bad_auth_conditions_are_located() {
    let (dir, r) = load_files(&[(
        "a.yaml",
        "rules:
  - name: a
    stage: connect
    if: { spf: fail }
    then: reject
  - name: b
    stage: mail
    if: { spf: failed }
    then: reject
  - name: c
    stage: data
    if: { dmarc: { result: fail, policy: block } }
    then: reject
  - name: d
    stage: connect
    if: { dnsbl: { zone: bl.example, code: nope } }
    then: reject
  - name: e
    stage: connect
    if: { rdns: sometimes }
    then: reject
",
    )]);
    let prefix = format!("{}/", dir.path().display());
    let e: Vec<String> = r
        .expect_err("must fail")
        .iter()
        .map(|e| e.to_string().replace(&prefix, ""))
        .collect();
    assert_eq!(
        e,
        vec![
            "a.yaml:4:11: rules[0].if.spf: `spf` is not known at stage connect (available at: mail, rcpt, data)",
            "a.yaml:8:16: rules[1].if.spf: unknown result \"failed\", expected one of pass, fail, softfail, neutral, none, temperror, permerror",
            "a.yaml:12:42: rules[2].if.dmarc.policy: unknown policy \"block\", expected none, quarantine or reject",
            "a.yaml:16:44: rules[3].if.dnsbl.code: invalid return code \"nope\", expected e.g. 127.0.0.2",
            "a.yaml:20:17: rules[4].if.rdns: unknown rdns result \"sometimes\", expected pass, mismatch, none, generic or temperror",
        ]
    );
}

#[test]
fn dmarc_reasons_are_conditions() {
    use crate::envelope::DmarcReason;
    let (_d, r) = load_files(&[(
        "a.yaml",
        r#"
rules:
  - name: dmarc-from
    stage: data
    if: { dmarc: { reason: [multiple_from, no_from] } }
    then: { reject: "550 5.7.1 From fields" }
  - name: dmarc-records
    stage: data
    if: { dmarc: { result: none, reason: multiple_records } }
    then: { add_header: "X-DMARC: ambiguous" }
"#,
    )]);
    let set = r.unwrap_or_else(|e| panic!("{e}"));
    let with = |status, reason| AuthFacts {
        dmarc: Some(DmarcFact {
            status,
            domain: "a.example".into(),
            policy: "none",
            reason,
        }),
        ..AuthFacts::default()
    };
    let refused =
        |d: &Decision| matches!(d, Decision::Reject(r) if r.to_string() == "550 5.7.1 From fields");
    // Whatever the result, more than one From field or none is refused.
    for status in [AuthStatus::Pass, AuthStatus::Fail, AuthStatus::PermError] {
        for reason in [DmarcReason::MultipleFrom, DmarcReason::NoFrom] {
            let d = decide(&set, Stage::Data, &with(status, Some(reason)));
            assert!(refused(&d), "{status:?} {reason:?}: {d:?}");
        }
    }
    let d = decide(&set, Stage::Data, &with(AuthStatus::Pass, None));
    assert_eq!(d, Decision::Continue);
    let d = decide(
        &set,
        Stage::Data,
        &with(AuthStatus::None, Some(DmarcReason::MultipleRecords)),
    );
    assert_eq!(d, Decision::Continue);
    let (dir, r) = load_files(&[(
        "b.yaml",
        "rules:\n  - name: x\n    stage: data\n    if: { dmarc: { reason: two_froms } }\n    then: reject\n",
    )]);
    let prefix = format!("{}/", dir.path().display());
    let e = r.expect_err("must fail").to_string().replace(&prefix, "");
    assert!(
        e.contains("b.yaml:4:28: rules[0].if.dmarc.reason: unknown reason \"two_froms\", expected multiple_from, no_from or multiple_records"),
        "{e}"
    );
}
