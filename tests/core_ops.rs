//! Issue 2, "Operation": `mxguard check` validates and names the place of an error
//! (`file:line:column`), and every transaction outcome is one structured log line with
//! session id, client, HELO, sender, recipients, size, upstream reply and duration
//! (in text and in `--log-format json`).

mod support;

use std::process::Command;
use std::time::Duration;

use support::client::RawClient;
use support::fake_upstream::{FakeUpstream, Script};
use support::mxguard::{BIN, MxGuard, MxOpts};

fn check(yaml: &str) -> (bool, String, std::path::PathBuf, tempfile::TempDir) {
    let dir = support::tempdir("mxg-check.");
    let p = dir.path().join("mxguard.yaml");
    std::fs::write(&p, yaml).unwrap();
    // `check` validates the rules too: give it an empty rules directory (default ./rules)
    std::fs::create_dir_all(dir.path().join("rules")).unwrap();
    let out = Command::new(BIN)
        .arg("check")
        .arg("--config")
        .arg(&p)
        .current_dir(dir.path())
        .output()
        .expect("run mxguard check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text, p, dir)
}

#[test]
fn check_accepts_a_valid_config() {
    let (ok, text, _, _d) = check("limits:\n  max_recipients: 50\n  command_timeout: 30s\n");
    assert!(ok, "{text}");
}

#[test]
fn check_rejects_a_bad_config_naming_file_line_and_column() {
    let (ok, text, path, _d) = check("limits:\n  max_recipients: 50\n  no_such_limit: 3\n");
    assert!(!ok, "an unknown key must fail the check: {text}");
    let want = format!("{}:3:", path.display());
    let short = "mxguard.yaml:3:";
    assert!(
        text.contains(&want) || text.contains(short),
        "error must start with file:line:column ({want}…): {text}"
    );
    let (ok, text, _, _d) = check("limits:\n  command_timeout: soon\n");
    assert!(!ok, "a bad duration must fail the check: {text}");
    assert!(text.contains(":2:"), "line of the bad value: {text}");
}

fn one_transaction(mx: &MxGuard) {
    let mut c = RawClient::connect(mx.addr);
    c.ehlo("logging.example");
    let r = c.transaction(
        "logger@example.org",
        &["r1@example.net", "r2@example.net"],
        b"Subject: log me\r\n\r\nbody\r\n",
    );
    assert_eq!(r.last().unwrap().code, 250, "{r:?}");
    c.cmd("QUIT");
}

#[test]
fn one_text_log_line_per_transaction() {
    let up = FakeUpstream::start(Script::default());
    let mx = MxGuard::start(MxOpts::new(up.addr));
    one_transaction(&mx);
    let log = mx.wait_log("logger@example.org", Duration::from_secs(10));
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("logger@example.org"))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "exactly one line per transaction: {lines:#?}"
    );
    let l = lines[0];
    for want in [
        "127.0.0.2",
        "logging.example",
        "r1@example.net",
        "r2@example.net",
        "250",
    ] {
        assert!(l.contains(want), "transaction line lacks {want:?}: {l}");
    }
    assert!(l.contains("session"), "{l}");
    assert!(l.contains("duration"), "{l}");
    assert!(l.contains("size"), "{l}");
}

#[test]
fn json_log_format_gives_parseable_transaction_records() {
    let up = FakeUpstream::start(Script::default());
    let mut opts = MxOpts::new(up.addr);
    opts.args = vec!["--log-format".into(), "json".into()];
    let mx = MxGuard::start(opts);
    one_transaction(&mx);
    let log = mx.wait_log("logger@example.org", Duration::from_secs(10));
    let mut found = None;
    for l in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(l)
            .unwrap_or_else(|e| panic!("--log-format json: a line that is not JSON ({e}): {l}"));
        if l.contains("logger@example.org") {
            found = Some(v);
        }
    }
    let v = found.expect("a JSON record for the transaction");
    let text = v.to_string();
    for want in ["127.0.0.2", "logging.example", "r1@example.net", "250"] {
        assert!(text.contains(want), "JSON record lacks {want:?}: {text}");
    }
}
