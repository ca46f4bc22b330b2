//! Policy evaluation and reload cost with a large rule set.
//!
//! Builds 1,000 rules (200 per stage, mixing network lists, globs, regexes, exact
//! lists, header and body regexes) plus a 100,000-entry CIDR list file, then prints the
//! median time of one evaluation per stage, the median reload time, and evaluation
//! latency while reloads run on another thread. Every rule misses, so each evaluation
//! walks all 200 rules of its stage: the worst case.
//!
//! Run: `cargo bench --bench policy_eval`. Targets (issue 3): < 50 µs per stage
//! evaluation, < 500 ms per reload.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mxguard::envelope::{ClientInfo, Facts, MessageView, Stage};
use mxguard::policy::{Policy, RuleSet};
use mxguard::smtp::{parse_mail, parse_rcpt};
use mxguard::transaction::{Recipient, Transaction};

const RULES_PER_STAGE: usize = 200;
const CIDR_ENTRIES: usize = 100_000;

/// A small deterministic generator, so every run benches the same set.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 32) as u32
    }
}

fn write_rules(dir: &Path) {
    let mut rng = Lcg(42);
    std::fs::create_dir_all(dir.join("lists")).unwrap();
    let mut nets = String::new();
    for i in 0..CIDR_ENTRIES {
        // Networks in 10.0.0.0/8 and 172.16.0.0/12 only; the benched client is outside.
        let a = rng.next();
        if i % 2 == 0 {
            let _ = writeln!(nets, "10.{}.{}.0/24", (a >> 8) & 0xff, a & 0xff);
        } else {
            let _ = writeln!(
                nets,
                "172.{}.{}.{}/32",
                16 + (a >> 16) % 16,
                (a >> 8) & 0xff,
                a & 0xff
            );
        }
    }
    std::fs::write(dir.join("lists/big-nets.txt"), nets).unwrap();
    let mut domains = String::new();
    for i in 0..5_000 {
        let _ = writeln!(domains, "domain{i}.example");
    }
    std::fs::write(dir.join("lists/domains.txt"), domains).unwrap();
    std::fs::write(
        dir.join("00-lists.yaml"),
        "lists:\n  big_nets: [\"file:lists/big-nets.txt\"]\n  domains: [\"file:lists/domains.txt\", \"*.spam.example\", \"/^[0-9]+\\\\.bad$/\"]\n",
    )
    .unwrap();

    for stage in Stage::ALL {
        let mut y = String::from("rules:\n");
        for i in 0..RULES_PER_STAGE {
            let name = format!("{stage}-{i}");
            let cond = match (stage, i % 5) {
                (_, 0) => "{ client_ip: { in: big_nets } }".to_owned(),
                (Stage::Connect, 1) => format!(
                    "{{ client_ip: [198.51.{}.0/24, 2001:db8:{i}::/48] }}",
                    i % 250
                ),
                (Stage::Connect, _) => {
                    format!("{{ not: {{ client_ip: 0.0.0.0/0 }}, tls: {} }}", i % 2 == 0)
                }
                (_, 1) => format!("{{ helo: {{ glob: \"*.host{i}.example\" }} }}"),
                (_, 2) => format!("{{ helo: \"/^bot[0-9]+\\\\.x{i}\\\\.example$/\" }}"),
                (Stage::Helo, _) => {
                    format!("{{ helo: {{ is_ip_literal: true }}, tls: {} }}", i % 2 == 0)
                }
                (Stage::Mail, 3) => "{ sender_domain: { in: domains } }".to_owned(),
                (Stage::Mail, _) => format!(
                    "{{ any: [ {{ sender: [\"spam{i}@x.example\", \"*@bulk{i}.example\"] }}, {{ size: {{ over: {}MiB }} }} ] }}",
                    50 + i
                ),
                (Stage::Rcpt, 3) => "{ recipient_domain: { in: domains } }".to_owned(),
                (Stage::Rcpt, _) => format!(
                    "{{ all: [ {{ recipient: \"/^user{i}-/\" }}, {{ recipient_count: {{ over: 10 }} }} ] }}"
                ),
                (Stage::Data, 3) => {
                    format!("{{ header: {{ name: Subject, matches: \"(?i)offer{i}\" }} }}")
                }
                (Stage::Data, _) => format!("{{ body: {{ matches: \"lottery{i}\" }} }}"),
            };
            let _ = writeln!(
                y,
                "  - name: {name}\n    stage: {stage}\n    if: {cond}\n    then: reject"
            );
        }
        std::fs::write(dir.join(format!("{}-{stage}.yaml", stage as usize + 1)), y).unwrap();
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    write_rules(dir.path());

    // Reload time: load + validate + compile the whole set.
    let mut loads = Vec::new();
    let mut set = None;
    for _ in 0..7 {
        let t = Instant::now();
        let s = RuleSet::load(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        loads.push(t.elapsed());
        set = Some(s);
    }
    let set = set.unwrap();
    println!(
        "rule set: {} rules, {CIDR_ENTRIES}-entry CIDR list, hash {}",
        set.rule_count(),
        set.content_hash()
    );
    println!(
        "reload (load+validate+compile): median {:?} over {} runs",
        median(loads),
        7
    );

    let client = ClientInfo {
        ip: "192.0.2.77".parse().unwrap(),
        port: 5000,
        listener: "mx".into(),
        submission: false,
        tls: false,
        auth_user: None,
    };
    let mail = parse_mail("MAIL FROM:<alice@sender.example> SIZE=20000").unwrap();
    let mut tx = Transaction::new(mail.from, mail.params, &mxguard::envelope::AuthFacts::EMPTY);
    let rcpt = |a: &str| {
        let r = parse_rcpt(&format!("RCPT TO:<{a}>")).unwrap();
        Recipient::new(r.to, r.params)
    };
    tx.recipients = (0..5)
        .map(|i| rcpt(&format!("rcpt{i}@example.org")))
        .collect();
    let current = rcpt("bob@example.org");
    let helo = Some("mail.client.example");
    let mut body = Vec::new();
    for i in 0..1000 {
        body.extend_from_slice(format!("line {i} of an ordinary message body text\r\n").as_bytes());
    }
    let msg = MessageView {
        headers: (0..20)
            .map(|i| (format!("X-Header-{i}"), format!("value {i}")))
            .chain([("Subject".into(), "quarterly report".into())])
            .collect(),
        body_prefix: body,
        size: 45_000,
    };

    let eval_median = |set: &RuleSet, stage: Stage| -> Duration {
        let facts = Facts {
            stage,
            client: &client,
            helo,
            transaction: Some(&tx),
            recipient: (stage == Stage::Rcpt).then_some(&current),
            message: (stage == Stage::Data).then_some(&msg),
            auth: &mxguard::envelope::AuthFacts::EMPTY,
            filters: &[],
        };
        const BATCH: u32 = 50;
        let mut samples = Vec::new();
        for _ in 0..200 {
            let t = Instant::now();
            for _ in 0..BATCH {
                let ev = set.evaluate(std::hint::black_box(&facts));
                assert!(ev.hits.is_empty());
                std::hint::black_box(ev);
            }
            samples.push(t.elapsed() / BATCH);
        }
        median(samples)
    };
    println!("evaluation per stage ({RULES_PER_STAGE} rules each, all missing):");
    for stage in Stage::ALL {
        println!(
            "  {:<8} median {:?}",
            stage.as_str(),
            eval_median(&set, stage)
        );
    }

    // Evaluation latency while reloads run on another thread.
    let policy = Arc::new(Policy::with_rules(dir.path(), set));
    let stop = Arc::new(AtomicBool::new(false));
    let reloader = {
        let (p, stop) = (policy.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                assert!(p.reload().is_applied());
                n += 1;
            }
            n
        })
    };
    let mut lat = Vec::new();
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let t = Instant::now();
        let set = policy.current();
        let facts = Facts {
            stage: Stage::Rcpt,
            client: &client,
            helo,
            transaction: Some(&tx),
            recipient: Some(&current),
            message: None,
            auth: &mxguard::envelope::AuthFacts::EMPTY,
            filters: &[],
        };
        std::hint::black_box(set.evaluate(&facts));
        lat.push(t.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    let reloads = reloader.join().unwrap();
    lat.sort();
    println!(
        "rcpt evaluation during {reloads} concurrent reloads: median {:?}, p99 {:?}, max {:?} ({} evaluations)",
        lat[lat.len() / 2],
        lat[lat.len() * 99 / 100],
        lat[lat.len() - 1],
        lat.len()
    );
}
