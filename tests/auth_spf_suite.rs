//! The OpenSPF RFC 7208 test suite (`../shared/testdata/spf/rfc7208-tests.yml`, 16
//! scenarios, 203 tests) run against mxguard's SPF check (`checks::spf`, the mail-auth
//! wrapper with our void-lookup limit, null-sender and HELO handling): each scenario's
//! zone data is served by a real DNS server (one root zone; `SPF` entries served as
//! TXT where a name has no TXT, `TIMEOUT` names never answered).
//!
//! Extra conformance data: skipped with a message where the file is absent. The
//! known deviations of mail-auth 0.13.3 are listed in `KNOWN`; any other failure, or a
//! known one that starts passing, fails the test so the list stays true.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use mxguard::checks::Authenticator;
use mxguard::config::Config;
use mxguard::dns::Dns;
use mxguard::telemetry::Metrics;
use serde_yaml_ng::Value;
use support::dns::{TestDns, soa, txt};

/// `scenario/test => want, got` for the 59 of 203 tests that do not give the
/// suite's result today. Most are mail-auth 0.13.3's lenient record parser (bad CIDR
/// lengths, unknown modifiers, numeric top labels, multiple records: `pass`, `fail` or
/// `neutral` where RFC 7208 says `permerror`) and its SPF-over-IPv6 mapping; the
/// `temperror` ones are names and records with empty, over-long, non-ASCII or
/// control-character labels, which this zone-file-based DNS server cannot serve
/// faithfully. Revisit with mail-auth 0.15.
const KNOWN: &[&str] = &[
    "A mechanism syntax/a-bad-cidr4 => want [\"permerror\"], got fail",
    "A mechanism syntax/a-bad-cidr6 => want [\"permerror\"], got fail",
    "A mechanism syntax/a-bad-domain => want [\"permerror\"], got temperror",
    "A mechanism syntax/a-bad-toplabel => want [\"permerror\"], got temperror",
    "A mechanism syntax/a-cidr6-0-ip4mapped => want [\"fail\"], got pass",
    "A mechanism syntax/a-colon-domain => want [\"pass\"], got permerror",
    "A mechanism syntax/a-colon-domain-ip4mapped => want [\"pass\"], got permerror",
    "A mechanism syntax/a-dual-cidr-ip4-err => want [\"permerror\"], got pass",
    "A mechanism syntax/a-null => want [\"permerror\"], got temperror",
    "A mechanism syntax/a-numeric => want [\"permerror\"], got neutral",
    "A mechanism syntax/a-numeric-toplabel => want [\"permerror\"], got neutral",
    "A mechanism syntax/a-only-toplabel => want [\"permerror\"], got neutral",
    "A mechanism syntax/a-only-toplabel-trailing-dot => want [\"permerror\"], got neutral",
    "EXISTS mechanism syntax/exists-ip6only => want [\"fail\"], got pass",
    "IP4 mechanism syntax/cidr4-032 => want [\"permerror\"], got pass",
    "IP4 mechanism syntax/cidr4-33 => want [\"permerror\"], got pass",
    "IP6 mechanism syntax/cidr6-0-ip4 => want [\"neutral\"], got pass",
    "IP6 mechanism syntax/cidr6-129 => want [\"permerror\"], got neutral",
    "IP6 mechanism syntax/cidr6-ip4 => want [\"neutral\"], got pass",
    "Initial processing/badip4 => want [\"permerror\"], got temperror",
    "Initial processing/control-char-policy => want [\"permerror\"], got temperror",
    "Initial processing/domain-literal => want [\"none\"], got permerror",
    "Initial processing/emptylabel => want [\"none\"], got permerror",
    "Initial processing/longlabel => want [\"fail\"], got temperror",
    "Initial processing/non-ascii-mech => want [\"permerror\"], got temperror",
    "Initial processing/non-ascii-non-spf => want [\"fail\"], got temperror",
    "Initial processing/non-ascii-policy => want [\"permerror\"], got temperror",
    "Initial processing/non-ascii-result => want [\"permerror\"], got temperror",
    "Initial processing/null-text => want [\"pass\"], got temperror",
    "Initial processing/trailing-space => want [\"fail\"], got temperror",
    "Initial processing/two-spaces => want [\"fail\"], got temperror",
    "MX mechanism syntax/mx-bad-cidr4 => want [\"permerror\"], got fail",
    "MX mechanism syntax/mx-bad-cidr6 => want [\"permerror\"], got fail",
    "MX mechanism syntax/mx-bad-domain => want [\"permerror\"], got temperror",
    "MX mechanism syntax/mx-bad-toplab => want [\"permerror\"], got temperror",
    "MX mechanism syntax/mx-cidr6-0-ip4mapped => want [\"fail\"], got pass",
    "MX mechanism syntax/mx-colon-domain => want [\"pass\"], got permerror",
    "MX mechanism syntax/mx-colon-domain-ip4mapped => want [\"pass\"], got permerror",
    "MX mechanism syntax/mx-null => want [\"permerror\"], got temperror",
    "MX mechanism syntax/mx-numeric-top-label => want [\"permerror\"], got neutral",
    "Macro expansion rules/hello-domain-literal => want [\"fail\"], got temperror",
    "Macro expansion rules/invalid-hello-macro => want [\"fail\"], got temperror",
    "Macro expansion rules/macro-mania-in-domain => want [\"pass\"], got temperror",
    "Macro expansion rules/p-macro-multiple => want [\"pass\", \"softfail\"], got temperror",
    "PTR mechanism syntax/ptr-match-implicit => want [\"pass\"], got fail",
    "PTR mechanism syntax/ptr-match-ip6 => want [\"pass\"], got fail",
    "Record evaluation/invalid-domain => want [\"permerror\"], got fail",
    "Record evaluation/invalid-domain-empty-label => want [\"fail\", \"permerror\"], got temperror",
    "Record evaluation/invalid-domain-long => want [\"fail\", \"permerror\"], got temperror",
    "Record evaluation/invalid-domain-long-via-macro => want [\"fail\", \"permerror\"], got temperror",
    "Record evaluation/modifier-charset-good => want [\"pass\"], got permerror",
    "Record evaluation/redirect-after-mechanisms2 => want [\"fail\"], got permerror",
    "Record lookup/spftimeout => want [\"fail\"], got temperror",
    "Selecting records/multitxt1 => want [\"permerror\"], got fail",
    "Selecting records/multitxt2 => want [\"permerror\"], got fail",
    "Semantics of exp and other modifiers/empty-modifier-name => want [\"permerror\"], got neutral",
    "Semantics of exp and other modifiers/exp-syntax-error => want [\"permerror\"], got neutral",
    "Semantics of exp and other modifiers/invalid-modifier => want [\"permerror\"], got neutral",
    "Semantics of exp and other modifiers/redirect-syntax-error => want [\"permerror\"], got neutral",
];

fn record_lines(name: &str, entry: &Value, has_txt: bool, stall: &mut Vec<String>) -> Vec<String> {
    let fq = format!("{}.", name.trim_end_matches('.'));
    let str_list = |v: &Value| -> Option<String> {
        match v {
            Value::String(s) => Some(txt(s)),
            Value::Sequence(items) if !items.is_empty() => Some(
                items
                    .iter()
                    .filter_map(|i| i.as_str())
                    .map(|s| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")))
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            _ => None,
        }
    };
    match entry {
        Value::String(s) if s == "TIMEOUT" => {
            stall.push(fq);
            vec![]
        }
        Value::Mapping(m) => {
            let mut out = Vec::new();
            for (k, v) in m {
                let line = match k.as_str().unwrap_or("") {
                    "SPF" if !has_txt => str_list(v).map(|t| format!("{fq} 60 IN TXT {t}")),
                    "TXT" => str_list(v).map(|t| format!("{fq} 60 IN TXT {t}")),
                    "A" => v.as_str().map(|a| format!("{fq} 60 IN A {a}")),
                    "AAAA" => v.as_str().map(|a| format!("{fq} 60 IN AAAA {a}")),
                    "PTR" => v
                        .as_str()
                        .map(|a| format!("{fq} 60 IN PTR {}.", a.trim_end_matches('.'))),
                    "CNAME" => v
                        .as_str()
                        .map(|a| format!("{fq} 60 IN CNAME {}.", a.trim_end_matches('.'))),
                    "MX" => match v {
                        Value::Sequence(p) if p.len() == 2 => Some(format!(
                            "{fq} 60 IN MX {} {}.",
                            p[0].as_u64().unwrap_or(0),
                            p[1].as_str().unwrap_or("").trim_end_matches('.')
                        )),
                        _ => None,
                    },
                    _ => None,
                };
                out.extend(line);
            }
            out
        }
        _ => vec![],
    }
}

/// The zone text of a scenario (lines the zone parser rejects, such as over-long
/// labels, are left out: such names then do not exist, as the suite intends).
fn zone_of(zonedata: &Value, stall: &mut Vec<String>) -> String {
    let mut lines = Vec::new();
    if let Value::Mapping(m) = zonedata {
        for (name, entries) in m {
            let name = name.as_str().unwrap_or("");
            let entries = entries.as_sequence().cloned().unwrap_or_default();
            let has_txt = entries
                .iter()
                .any(|e| e.as_mapping().is_some_and(|m| m.contains_key("TXT")));
            for e in &entries {
                lines.extend(record_lines(name, e, has_txt, stall));
            }
        }
    }
    let head = soa(".");
    let ok = |l: &String| {
        let text = format!("{head}{l}\n");
        hickory_server::proto::serialize::txt::Parser::new(
            text.as_str(),
            None,
            Some(hickory_server::proto::rr::Name::root()),
        )
        .parse()
        .is_ok()
    };
    let kept: Vec<String> = lines.into_iter().filter(ok).collect();
    format!("{head}{}\n", kept.join("\n"))
}

#[test]
fn openspf_rfc7208_suite() {
    let path = [
        "../shared/testdata/spf/rfc7208-tests.yml",
        "/work/shared/testdata/spf/rfc7208-tests.yml",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).is_file());
    let Some(path) = path else {
        assert!(!support::in_ci(), "testdata missing under CI");
        eprintln!("SKIPPED: ../shared/testdata/spf/rfc7208-tests.yml not present");
        return;
    };
    let text = std::fs::read_to_string(path).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut failures = BTreeMap::new();
    let mut total = 0;
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let scenario: Value = serde::Deserialize::deserialize(doc).unwrap();
        let desc = scenario["description"].as_str().unwrap_or("?").to_owned();
        let mut stall = Vec::new();
        let zone = zone_of(&scenario["zonedata"], &mut stall);
        let dns = TestDns::start_stalling(&[(".", zone)], &stall);
        let mut cfg = Config::default();
        cfg.dns.servers = vec![dns.addr];
        cfg.dns.timeout = Duration::from_millis(300);
        cfg.dns.attempts = 1;
        let Value::Mapping(tests) = &scenario["tests"] else {
            continue;
        };
        for (name, t) in tests {
            total += 1;
            let name = format!("{desc}/{}", name.as_str().unwrap_or("?"));
            let ip: IpAddr = t["host"].as_str().unwrap().parse().unwrap();
            let helo = t["helo"].as_str().unwrap_or("");
            let from = t["mailfrom"].as_str().unwrap_or("");
            let want: Vec<String> = match &t["result"] {
                Value::String(s) => vec![s.clone()],
                Value::Sequence(v) => v
                    .iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect(),
                _ => vec![],
            };
            let got = rt.block_on(async {
                let d = Dns::new(&cfg.dns, Arc::new(Metrics::new())).unwrap();
                let auth = Authenticator::new(&d);
                let (h, m) = mxguard::checks::spf::check(&auth, ip, helo, "mx.test", from).await;
                // A null sender's result is the HELO identity's.
                if from.is_empty() { h.status } else { m.status }
            });
            if !want.iter().any(|w| w == got.as_str()) {
                failures.insert(name, format!("want {want:?}, got {got}"));
            }
        }
    }
    let known: BTreeSet<&str> = KNOWN
        .iter()
        .map(|k| k.split(" => ").next().unwrap())
        .collect();
    let unexpected: Vec<String> = failures
        .iter()
        .filter(|(n, _)| !known.contains(n.as_str()))
        .map(|(n, e)| format!("{n} => {e}"))
        .collect();
    let fixed: Vec<&&str> = known
        .iter()
        .filter(|k| !failures.contains_key(**k))
        .collect();
    eprintln!(
        "OpenSPF RFC 7208: {} of {total} pass",
        total - failures.len()
    );
    assert!(
        unexpected.is_empty() && fixed.is_empty(),
        "unexpected failures:\n{}\nknown failures now passing: {fixed:?}",
        unexpected.join("\n")
    );
}
