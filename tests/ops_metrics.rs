//! What an operator sees: after a scripted mix of traffic, `/metrics` shows the exact
//! counter values; a real Prometheus scrapes mxguard and every query of the Grafana
//! dashboard returns data; the dashboard is well-formed Grafana JSON.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::client::RawClient;
use support::mxguard::{MxGuard, MxOpts};
use support::postfix::Postfix;
use support::{ProcGuard, free_port, tempdir, wait_for};

const RULES: &str = r#"
rules:
  - name: blocked-sender
    stage: mail
    if: { sender: "spammer@example.net" }
    then: reject
  - name: greylist-some
    stage: rcpt
    if: { recipient: "bob@test.example" }
    then: { greylist: { delay: 5m } }
  - name: watch-subject
    stage: data
    if: { header: { name: Subject, matches: "monitor-me" } }
    then: reject
    mode: monitor
"#;

/// Fetches a URL with curl (tests use real clients; the product never hand-writes HTTP).
fn http_get(url: &str) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", url])
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "GET {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 body")
}

fn start_with_metrics(pf: &Postfix) -> (MxGuard, String) {
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut opts = MxOpts::new(pf.addr);
    opts.rules = vec![("10-rules.yaml".into(), RULES.into())];
    opts.args = vec!["--metrics".into(), metrics.clone()];
    // A content filter that is down (nothing listens there) and fails open: every
    // transaction counts a filter call, a failure and its default action.
    opts.config = Some(format!(
        "filters:\n  - name: scanner\n    milter: 127.0.0.1:{}\n    default_action: accept\n",
        free_port()
    ));
    let mx = MxGuard::start(opts);
    wait_for(Duration::from_secs(10), "the metrics endpoint", || {
        let out = Command::new("curl")
            .args(["-sf", &format!("http://{metrics}/readyz")])
            .output()
            .ok()?;
        out.status.success().then_some(())
    });
    (mx, metrics)
}

fn send(c: &mut RawClient, from: &str, to: &str, subject: &str) -> Vec<u16> {
    let body = format!("Subject: {subject}\r\n\r\nbody\r\n");
    c.transaction(from, &[to], body.as_bytes())
        .iter()
        .map(|r| r.code)
        .collect()
}

/// Delivered x3 (one matched by a monitor rule), rejected by a rule x1, greylisted x1
/// (then RSET: aborted), an upstream reject at RCPT then RSET (aborted) x1, one unknown
/// command.
fn scripted_traffic(mx: &MxGuard, pf: &Postfix) {
    let mut c = RawClient::connect_from(mx.addr, Some("127.0.0.2")).unwrap();
    assert_eq!(c.reply().code, 220);
    c.ehlo("client.example");
    assert_eq!(
        send(&mut c, "a@example.org", "alice@test.example", "one"),
        [250, 250, 354, 250]
    );
    assert_eq!(
        send(&mut c, "a@example.org", "alice@test.example", "two"),
        [250, 250, 354, 250]
    );
    assert_eq!(
        send(&mut c, "a@example.org", "bob@test.example", "grey"),
        [250, 451]
    );
    assert_eq!(c.cmd("RSET").code, 250);
    assert_eq!(
        send(&mut c, "a@example.org", "alice@test.example", "monitor-me"),
        [250, 250, 354, 250]
    );
    assert_eq!(
        send(&mut c, "spammer@example.net", "alice@test.example", "x"),
        [550]
    );
    assert_eq!(
        send(&mut c, "a@example.org", "nosuchuser@test.example", "x"),
        [250, 550]
    );
    assert_eq!(c.cmd("RSET").code, 250);
    assert_eq!(c.cmd("FROBNICATE").code, 500);
    assert_eq!(c.cmd("QUIT").code, 221);
    assert!(c.closed_within(Duration::from_secs(5)));
    pf.wait_delivered(3, Duration::from_secs(20));
}

fn metric_line(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l[series.len()..].trim().parse().ok())
}

#[test]
fn metrics_show_exact_counts_after_scripted_traffic() {
    if !support::require(&["postfix", "curl"], true) {
        return;
    }
    let pf = Postfix::start();
    let (mx, metrics) = start_with_metrics(&pf);
    scripted_traffic(&mx, &pf);
    // The session-end counters move when the session has been torn down.
    let text = wait_for(Duration::from_secs(10), "the session to be counted", || {
        let t = http_get(&format!("http://{metrics}/metrics"));
        (metric_line(&t, r#"mxguard_sessions_total{listener="mx",tls="no"}"#) == Some(2.0))
            .then_some(t)
    });
    let expect = [
        (r#"mxguard_transactions_total{outcome="delivered"}"#, 3.0),
        (r#"mxguard_transactions_total{outcome="rejected"}"#, 1.0),
        (r#"mxguard_transactions_total{outcome="aborted"}"#, 2.0),
        (r#"mxguard_greylist_decisions_total{outcome="new"}"#, 1.0),
        (r#"mxguard_greylist_decisions_total{outcome="passed"}"#, 0.0),
        (
            r#"mxguard_verdicts_total{action="reject",mode="enforce",rule="blocked-sender",stage="mail"}"#,
            1.0,
        ),
        (
            r#"mxguard_verdicts_total{action="reject",mode="monitor",rule="watch-subject",stage="data"}"#,
            1.0,
        ),
        (
            r#"mxguard_upstream_replies_total{class="5xx",stage="rcpt"}"#,
            1.0,
        ),
        (
            r#"mxguard_upstream_replies_total{class="2xx",stage="rcpt"}"#,
            3.0,
        ),
        (
            r#"mxguard_upstream_replies_total{class="2xx",stage="end_of_data"}"#,
            3.0,
        ),
        (
            r#"mxguard_protocol_errors_total{kind="unknown_command"}"#,
            1.0,
        ),
        // Two: the harness's readiness probe (it waits for the banner) is a session too.
        (r#"mxguard_sessions_total{listener="mx",tls="no"}"#, 2.0),
        (r#"mxguard_sessions_total{listener="mx",tls="yes"}"#, 0.0),
        (
            r#"mxguard_transactions_total{outcome="upstream_failed"}"#,
            0.0,
        ),
        (r#"mxguard_sessions_open{listener="mx"}"#, 0.0),
        ("mxguard_message_size_bytes_count", 3.0),
        ("mxguard_end_of_data_seconds_count", 3.0),
        (r#"mxguard_rules_reload_total{result="success"}"#, 1.0),
        ("mxguard_rules_loaded", 3.0),
    ];
    for (series, want) in expect {
        assert_eq!(metric_line(&text, series), Some(want), "{series}\n{text}");
    }
    assert_eq!(http_get(&format!("http://{metrics}/healthz")), "ok\n");
    // The greylist admin endpoints are off unless configured.
    let code = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://{metrics}/greylist"),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&code.stdout), "404");
    assert_eq!(http_get(&format!("http://{metrics}/readyz")), "ready\n");
    drop(mx);
}

fn dashboard() -> Value {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/grafana/mxguard.json"))
            .expect("grafana/mxguard.json");
    serde_json::from_str(&text).expect("dashboard is JSON")
}

/// Every (panel title, expression) of the dashboard.
fn dashboard_queries(d: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        if p["type"] == "row" {
            continue;
        }
        for t in p["targets"].as_array().expect("targets") {
            out.push((
                p["title"].as_str().unwrap().to_owned(),
                t["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    out
}

#[test]
fn dashboard_is_well_formed_grafana_json() {
    let d = dashboard();
    assert!(d["title"].is_string() && d["uid"].is_string());
    assert!(d["schemaVersion"].as_u64().unwrap() >= 30);
    let vars = d["templating"]["list"].as_array().unwrap();
    assert!(
        vars.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "a Prometheus datasource variable"
    );
    let mut ids = std::collections::HashSet::new();
    for p in d["panels"].as_array().unwrap() {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "unique panel ids");
        let pos = &p["gridPos"];
        for k in ["h", "w", "x", "y"] {
            assert!(pos[k].is_u64(), "gridPos.{k} of {}", p["title"]);
        }
        assert!(pos["x"].as_u64().unwrap() + pos["w"].as_u64().unwrap() <= 24);
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{} has no query", p["title"]);
        for t in targets {
            assert!(t["refId"].is_string() && t["expr"].is_string());
            assert_eq!(t["datasource"]["uid"], "${datasource}");
        }
    }
    assert!(dashboard_queries(&d).len() >= 15);
}

#[test]
fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    if !support::require(&["postfix", "curl", "prometheus"], true) {
        return;
    }
    let pf = Postfix::start();
    let (mx, metrics) = start_with_metrics(&pf);
    scripted_traffic(&mx, &pf);

    let dir = tempdir("mxg-prom.");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: mxguard\n    static_configs:\n      - targets: ['{metrics}']\n"
        ),
    )
    .unwrap();
    let web = format!("127.0.0.1:{}", free_port());
    let child = Command::new(support::which("prometheus").unwrap())
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
        .spawn()
        .expect("start prometheus");
    let _prom = ProcGuard::new(child, "prometheus", false);

    let query = |expr: &str| -> Value {
        let out = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                "-G",
                &format!("http://{web}/api/v1/query"),
            ])
            .arg("--data-urlencode")
            .arg(format!("query={expr}"))
            .output()
            .expect("curl");
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    };
    // Ready when Prometheus holds at least three scrapes of mxguard (rate() needs two).
    wait_for(Duration::from_secs(60), "three scrapes of mxguard", || {
        let v = query("count_over_time(mxguard_build_info[1m])");
        let n: f64 = v["data"]["result"][0]["value"][1].as_str()?.parse().ok()?;
        (n >= 3.0).then_some(())
    });
    let d = dashboard();
    let mut empty = Vec::new();
    for (title, expr) in dashboard_queries(&d) {
        let expr = expr
            .replace("$__rate_interval", "1m")
            .replace("$__interval", "1m");
        let v = query(&expr);
        assert_eq!(v["status"], "success", "{title}: {expr}: {v}");
        if v["data"]["result"].as_array().is_none_or(|r| r.is_empty()) {
            empty.push(format!("{title}: {expr}"));
        }
    }
    assert!(
        empty.is_empty(),
        "queries without data:\n{}",
        empty.join("\n")
    );
}
