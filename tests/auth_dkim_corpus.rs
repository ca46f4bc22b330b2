//! The Mail::DKIM test corpus (`../shared/testdata/dkim/mail-dkim-corpus/`: 79 messages
//! from 2006–2023, old drafts, broken keys, DomainKeys) as a regression set for the
//! DKIM, DMARC and ARC checks, with its `FAKE_DNS.dat` served by the in-process DNS
//! server. For every file: the checks finish (no panic, no hang) within their deadline,
//! every DKIM-Signature gets exactly one result, and no signature that uses rsa-sha1,
//! lacks `v=`, or names an RSA key under 1024 bits passes. The key sizes are measured
//! independently, with `openssl pkey`. The one modern, valid signature in the corpus
//! (ed25519, RFC 8463) must pass, so a broken DNS set-up cannot pass for a strict
//! verifier. Without the corpus the test skips loudly, and fails under `CI=true`.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mxguard::checks::dkim::to_crlf;
use mxguard::checks::{CheckInput, Checker};
use mxguard::config::Config;
use mxguard::dns::Dns;
use mxguard::envelope::{AuthFacts, AuthStatus, Checks};
use mxguard::telemetry::Metrics;
use support::dns::{TestDns, soa, txt};

const CORPUS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/testdata/dkim/mail-dkim-corpus"
);

/// `FAKE_DNS.dat`: one `name value` per line; the value is a TXT record, `NXDOMAIN`,
/// or `~~Query timed out~~` / `~~SERVFAIL~~` (both served as "never answered").
struct FakeDns {
    records: Vec<(String, String)>,
    silent: Vec<String>,
}

fn read_fake_dns(text: &str) -> FakeDns {
    let mut records = Vec::new();
    let mut silent = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, value) = line.split_once(char::is_whitespace).unwrap();
        let (name, value) = (name.to_ascii_lowercase(), value.trim());
        match value {
            "NXDOMAIN" => {}
            v if v.starts_with("~~") => silent.push(format!("{name}.")),
            v => records.push((name, v.to_owned())),
        }
    }
    FakeDns { records, silent }
}

/// One zone per registered domain (its last two labels), each with its records; names
/// FAKE_DNS.dat lists as NXDOMAIN are simply absent.
fn zones(fake: &FakeDns) -> Vec<(String, String)> {
    let mut by_zone: HashMap<String, String> = HashMap::new();
    let zone_of = |name: &str| {
        let labels: Vec<&str> = name.split('.').collect();
        format!("{}.", labels[labels.len() - 2..].join("."))
    };
    for (name, value) in &fake.records {
        let zone = zone_of(name);
        let text = by_zone.entry(zone.clone()).or_insert_with(|| soa(&zone));
        let data = if value == "\"\"" {
            "\"\"".to_owned()
        } else {
            txt(value)
        };
        text.push_str(&format!("{name}. 60 IN TXT {data}\n"));
    }
    for name in &fake.silent {
        let zone = zone_of(name.trim_end_matches('.'));
        by_zone.entry(zone.clone()).or_insert_with(|| soa(&zone));
    }
    by_zone.into_iter().collect()
}

/// The tags of one DKIM-Signature field value, read with a plain split (the test's own
/// reading, independent of mxguard's).
fn tags(value: &str) -> HashMap<String, String> {
    value
        .split(';')
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| {
            let v: String = v.split_whitespace().collect();
            (k.trim().to_ascii_lowercase(), v)
        })
        .collect()
}

/// The DKIM-Signature field values of a message's header section, unfolded.
fn dkim_fields(msg: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(msg);
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    let mut fields: Vec<String> = Vec::new();
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = fields.last_mut() {
                last.push(' ');
                last.push_str(line.trim());
            }
        } else {
            fields.push(line.to_owned());
        }
    }
    fields
        .into_iter()
        .filter_map(|f| {
            let (name, value) = f.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("DKIM-Signature")
                .then(|| value.trim().to_owned())
        })
        .collect()
}

/// RSA key sizes per `selector._domainkey.domain`, measured by openssl.
fn rsa_key_bits(fake: &FakeDns) -> HashMap<String, usize> {
    let dir = support::tempdir("mxg-corpus-keys.");
    let mut out = HashMap::new();
    for (name, value) in &fake.records {
        let t = tags(value);
        let rsa = t.get("k").is_none_or(|k| k.eq_ignore_ascii_case("rsa"));
        let Some(p) = t.get("p").filter(|p| rsa && !p.is_empty()) else {
            continue;
        };
        use base64::Engine as _;
        let Ok(der) = base64::engine::general_purpose::STANDARD.decode(p) else {
            continue;
        };
        let file = dir.path().join("key.der");
        std::fs::write(&file, der).unwrap();
        let text = std::process::Command::new("openssl")
            .args(["pkey", "-pubin", "-inform", "DER", "-noout", "-text", "-in"])
            .arg(&file)
            .output()
            .expect("openssl");
        let text = String::from_utf8_lossy(&text.stdout);
        // "Public-Key: (512 bit)"
        if let Some(bits) = text
            .split_once("Public-Key: (")
            .and_then(|(_, r)| r.split_once(" bit)"))
            .and_then(|(b, _)| b.parse().ok())
        {
            out.insert(name.clone(), bits);
        }
    }
    out
}

#[test]
fn mail_dkim_corpus_never_passes_what_rfc_8301_and_6376_refuse() {
    let dir = Path::new(CORPUS);
    if !dir.join("FAKE_DNS.dat").is_file() {
        assert!(
            !support::in_ci(),
            "the Mail::DKIM corpus is missing under CI: {CORPUS}"
        );
        eprintln!("SKIPPED: {CORPUS} not present");
        return;
    }
    if !support::require(&["openssl"], false) {
        return;
    }
    let fake = read_fake_dns(&std::fs::read_to_string(dir.join("FAKE_DNS.dat")).unwrap());
    let key_bits = rsa_key_bits(&fake);
    assert!(
        key_bits.values().any(|b| *b < 1024),
        "openssl measured no short key: {key_bits:?}"
    );
    let zones = zones(&fake);
    let zone_refs: Vec<(&str, String)> =
        zones.iter().map(|(o, t)| (o.as_str(), t.clone())).collect();
    let dns = TestDns::start_stalling(&zone_refs, &fake.silent);
    let mut c = Config::default();
    c.dns.servers = vec![dns.addr];
    c.dns.timeout = Duration::from_millis(500);
    c.dns.attempts = 1;
    c.checks.timeout = Duration::from_secs(3);
    let deadline = c.checks.timeout;
    let max_signatures = c.checks.dkim.max_signatures;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let metrics = Arc::new(Metrics::standalone());
    let checker = rt.block_on(async {
        let d = Dns::new(&c.dns, metrics.clone()).unwrap();
        Checker::new(Arc::new(c), d, metrics)
    });

    let mut files: Vec<_> = std::fs::read_dir(dir.join("corpus"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 70,
        "corpus incomplete: {} files",
        files.len()
    );
    let mut passed = Vec::new();
    let mut signatures = 0;
    for path in &files {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let msg = to_crlf(&std::fs::read(path).unwrap());
        let fields = dkim_fields(&msg);
        let mut facts = AuthFacts::default();
        let input = CheckInput {
            ip: "192.0.2.1".parse().unwrap(),
            helo: Some("corpus.example"),
            sender: Some("sender@corpus.example"),
            message: Some(&msg),
        };
        let started = Instant::now();
        rt.block_on(checker.run(
            Checks::DKIM | Checks::DMARC | Checks::ARC,
            &input,
            &mut facts,
        ));
        let took = started.elapsed();
        assert!(
            took < deadline + Duration::from_secs(1),
            "{file}: the checks took {took:?}"
        );
        let results = facts.dkim.as_ref().unwrap();
        assert!(facts.dmarc.is_some() && facts.arc.is_some(), "{file}");
        assert_eq!(
            results.len(),
            fields.len().min(max_signatures),
            "{file}: one result per DKIM-Signature: {results:?}"
        );
        for (field, result) in fields.iter().zip(results) {
            signatures += 1;
            let t = tags(field);
            let key = format!(
                "{}._domainkey.{}",
                t.get("s").map_or("", String::as_str).to_ascii_lowercase(),
                t.get("d").map_or("", String::as_str).to_ascii_lowercase()
            );
            let refused = t
                .get("a")
                .is_some_and(|a| a.eq_ignore_ascii_case("rsa-sha1"))
                || !t.contains_key("v")
                || key_bits.get(&key).is_some_and(|b| *b < 1024);
            if refused {
                assert_ne!(
                    result.status,
                    AuthStatus::Pass,
                    "{file}: {field} must not pass ({result:?})"
                );
                assert!(result.reason.is_some(), "{file}: no reason: {result:?}");
            }
            if result.status == AuthStatus::Pass {
                passed.push(file.clone());
            }
            eprintln!(
                "{file}: {} {} ({})",
                result.status,
                result.algorithm,
                result.reason.as_deref().unwrap_or("-")
            );
        }
    }
    eprintln!(
        "{} files, {signatures} signatures, passing: {passed:?}",
        files.len()
    );
    assert!(signatures >= 60, "only {signatures} signatures seen");
    assert_eq!(passed, ["goodkey_ed25519.txt"]);
}
