//! `mxguard check` and `mxguard explain` as an administrator runs them.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_mxguard");

fn write_rules(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

#[test]
fn check_reports_every_error_located_and_exits_1() {
    let dir = write_rules(&[
        (
            "10-a.yaml",
            "rules:\n  - name: one\n    stage: mail\n    if: { client_ip: { in: [10.0.0/8] } }\n    then: reject\n",
        ),
        (
            "20-b.yaml",
            concat!(
                "rules:\n",
                "  - name: one\n", // 2: duplicate name
                "    stage: helo\n",
                "    if: { helo: \"/(/\" }\n", // 4: bad regex
                "    then: reject\n",
                "  - name: two\n",
                "    stage: connect\n",
                "    then: { add_header: \"X: y\" }\n", // 8: not at connect
                "  - name: three\n",
                "    stage: mail\n",
                "    then: reject\n",
                "    colour: blue\n", // 12: unknown field
                "  - name: four\n",
                "    stage: rcpt\n",
                "    if: { sender: { in: nosuchlist } }\n", // 15: unknown list
                "    then: reject\n",
            ),
        ),
    ]);
    let out = Command::new(BIN)
        .arg("check")
        .arg("--rules")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let a = dir.path().join("10-a.yaml").display().to_string();
    let b = dir.path().join("20-b.yaml").display().to_string();
    for want in [
        format!("{a}:4:"),  // bad CIDR
        format!("{b}:2:"),  // duplicate rule name
        format!("{b}:4:"),  // bad regex
        format!("{b}:8:"),  // action not allowed at this stage
        format!("{b}:12:"), // unknown field
        format!("{b}:15:"), // unknown list
    ] {
        assert!(
            err.lines().any(|l| l.starts_with(&want)),
            "no error at {want}:\n{err}"
        );
    }
}

#[test]
fn check_accepts_the_shipped_rules_and_example_config() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(BIN)
        .args(["check", "--config", &format!("{root}/systemd/mxguard.yaml")])
        .args(["--rules", &format!("{root}/rules")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok: configuration valid"));
}

#[test]
fn explain_shows_why_a_sender_is_rejected() {
    let dir = write_rules(&[(
        "10-mail.yaml",
        "lists:\n  blocked: [\"*@bad.example\"]\nrules:\n  - name: blocked-senders\n    stage: mail\n    if: { sender: { in: blocked } }\n    then: reject\n",
    )]);
    let out = Command::new(BIN)
        .arg("explain")
        .arg("--rules")
        .arg(dir.path())
        .args([
            "--client-ip",
            "192.0.2.1",
            "--helo",
            "mail.example",
            "--from",
            "x@bad.example",
        ])
        .args(["--to", "bob@example.org"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("rule blocked-senders"), "{text}");
    assert!(text.contains("MATCH"), "{text}");
    assert!(text.contains("550 5.7.1"), "{text}");
}
