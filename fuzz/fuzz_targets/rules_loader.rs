//! The rules loader: YAML text → a compiled `RuleSet`, or `LoadErrors` that each name
//! their place (`RuleSet::load_text`, the loader `RuleSet::load` runs on every file).
//!
//! Properties: no panic; a refused file gets at least one error, and every error is
//! located — in the rules file (line and column within the text) or in a list file it
//! included (line and column from 1) — with a message; loading is deterministic (the
//! same text gives the same errors, or rule sets with the same hash and rules).
//!
//! `file:` lists are read from the shipped `rules/` directory; an input that names a
//! path outside it (absolute, `..`) is skipped, so the fuzzer never reads the machine's
//! files (`/dev/zero` would never end).
#![no_main]

use std::path::{Component, Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use mxguard::policy::RuleSet;
use serde_yaml_ng::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(doc) = serde_yaml_ng::from_str::<Value>(text)
        && !includes_stay_inside(&doc)
    {
        return;
    }
    let dir = rules_dir();
    let first = RuleSet::load_text(&dir, "fuzz.yaml", text);
    let second = RuleSet::load_text(&dir, "fuzz.yaml", text);
    match (&first, &second) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.content_hash(), b.content_hash());
            assert_eq!(a.rule_count(), b.rule_count());
        }
        (Err(a), Err(b)) => assert_eq!(a, b, "errors differ between two loads"),
        _ => panic!("two loads of the same text disagree"),
    }
    let Err(errors) = first else { return };
    assert!(!errors.is_empty(), "a refused load with no error");
    let lines = yaml_lines(text);
    let rules_file = dir.join("fuzz.yaml");
    for e in &errors {
        assert!(!e.message.is_empty(), "{e:?}");
        assert!(e.line >= 1 && e.column >= 1, "unlocated error {e:?}");
        if e.file == rules_file {
            // libyaml puts the end of a stream without a final line break on a line
            // of its own, one past the last.
            assert!(e.line <= lines + 1, "line {} of {lines}: {e:?}", e.line);
        } else {
            assert!(
                e.file.starts_with(&dir),
                "error in an unexpected file: {e:?}"
            );
        }
        let shown = e.to_string();
        assert!(
            shown.contains(&format!(":{}:{}: ", e.line, e.column)),
            "{shown}"
        );
    }
});

/// The number of lines as YAML counts them (libyaml): CRLF, and each lone CR, LF, NEL,
/// LS or PS, ends a line. A file with bare CRs has more lines than `str::lines` sees.
fn yaml_lines(text: &str) -> usize {
    let breaks = text.replace("\r\n", "\n");
    1 + breaks
        .chars()
        .filter(|c| matches!(c, '\r' | '\n' | '\u{85}' | '\u{2028}' | '\u{2029}'))
        .count()
}

fn rules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules")
}

/// Whether every `file:` string in the document names a relative path without `..`.
fn includes_stay_inside(v: &Value) -> bool {
    match v {
        Value::String(s) => match s.strip_prefix("file:") {
            Some(rel) => {
                let rel = rel.trim();
                Path::new(rel)
                    .components()
                    .all(|c| matches!(c, Component::Normal(_)))
            }
            None => true,
        },
        Value::Sequence(items) => items.iter().all(includes_stay_inside),
        Value::Mapping(m) => m
            .iter()
            .all(|(k, v)| includes_stay_inside(k) && includes_stay_inside(v)),
        Value::Tagged(t) => includes_stay_inside(&t.value),
        _ => true,
    }
}
