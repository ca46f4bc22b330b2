//! Throughput with SPF + DKIM + DMARC on versus off, end to end through the real
//! binary: 100 concurrent sessions over loopback send pre-signed 10 KiB messages
//! (rsa-sha256, aligned, SPF pass) to mxguard, which checks them against an
//! in-process DNS server and relays them to a sink upstream. Prints messages/s for
//! both runs and their ratio (issue 4 target: checks-on ≥ 70 % of checks-off).
//!
//! Also SPF alone, in process: `check_host()` evaluations per second for a typical
//! record (`a mx include ip4 ~all`, five lookups, answered from the warm resolver
//! cache) and record parses per second.
//!
//! Run: `cargo bench --bench auth_checks` (full: 100 sessions × 30 messages per
//! run). Without `--bench` (as `cargo test --all-targets` runs it) it is a smoke run
//! of a few messages, so the test suite stays fast.

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mail_auth::dkim::Canonicalization;
use support::authzone::{Keys, message, zones};
use support::dns::TestDns;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket};

const BIN: &str = env!("CARGO_BIN_EXE_mxguard");

/// An upstream that accepts everything (reads DATA to the final dot, answers 250).
async fn sink() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut r = BufReader::new(r);
                w.write_all(b"220 sink ESMTP\r\n").await?;
                let mut line = Vec::new();
                loop {
                    line.clear();
                    if r.read_until(b'\n', &mut line).await? == 0 {
                        return Ok::<_, std::io::Error>(());
                    }
                    let verb = line.get(..4).unwrap_or(b"").to_ascii_uppercase();
                    match &verb[..] {
                        b"EHLO" => {
                            w.write_all(b"250-sink\r\n250-8BITMIME\r\n250 SIZE 104857600\r\n")
                                .await?
                        }
                        b"DATA" => {
                            w.write_all(b"354 go\r\n").await?;
                            loop {
                                line.clear();
                                if r.read_until(b'\n', &mut line).await? == 0 {
                                    return Ok(());
                                }
                                if line == b".\r\n" {
                                    break;
                                }
                            }
                            w.write_all(b"250 2.0.0 queued\r\n").await?;
                        }
                        b"QUIT" => {
                            w.write_all(b"221 bye\r\n").await?;
                            return Ok(());
                        }
                        _ => w.write_all(b"250 2.0.0 ok\r\n").await?,
                    }
                }
            });
        }
    });
    addr
}

struct Proxy {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn start_proxy(upstream: SocketAddr, dns: SocketAddr, checks: bool) -> Proxy {
    let dir = support::tempdir("mxg-bench.");
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut cfg = "limits:\n  max_sessions_per_network: 1000\n".to_string();
    if checks {
        std::fs::write(
            rules.join("60-auth.yaml"),
            "rules:\n  - name: dmarc-reject\n    stage: data\n    if: { dmarc: { result: fail, policy: reject } }\n    then: reject\n",
        )
        .unwrap();
        cfg.push_str("checks:\n  auth_results: true\n");
    }
    let cfg_path = dir.path().join("mxguard.yaml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let child = Command::new(BIN)
        .arg("run")
        .arg("--config")
        .arg(&cfg_path)
        .arg("--rules")
        .arg(&rules)
        .arg("--state")
        .arg(dir.path().join("state"))
        .args([
            "--listen",
            &addr.to_string(),
            "--upstream",
            &upstream.to_string(),
        ])
        .args(["--dns", &dns.to_string(), "--hostname", "mx.bench.test"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "mxguard did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Proxy {
        child,
        addr,
        _dir: dir,
    }
}

async fn read_reply(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> u16 {
    let mut line = String::new();
    loop {
        line.clear();
        r.read_line(&mut line).await.unwrap();
        assert!(line.len() >= 4, "connection closed");
        if line.as_bytes()[3] == b' ' {
            return line[..3].parse().unwrap();
        }
    }
}

/// One session: EHLO, then `n` transactions of `msg` (already dot-stuffed, CRLF).
async fn session(proxy: SocketAddr, msg: std::sync::Arc<Vec<u8>>, n: usize) {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.20:0".parse().unwrap()).unwrap();
    let s = sock.connect(proxy).await.unwrap();
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    assert_eq!(read_reply(&mut r).await, 220);
    w.write_all(b"EHLO client.example\r\n").await.unwrap();
    assert_eq!(read_reply(&mut r).await, 250);
    for _ in 0..n {
        for (cmd, want) in [
            (&b"MAIL FROM:<alice@signed.test>\r\n"[..], 250),
            (b"RCPT TO:<r@example.org>\r\n", 250),
            (b"DATA\r\n", 354),
        ] {
            w.write_all(cmd).await.unwrap();
            assert_eq!(read_reply(&mut r).await, want);
        }
        w.write_all(&msg).await.unwrap();
        w.write_all(b".\r\n").await.unwrap();
        assert_eq!(read_reply(&mut r).await, 250, "message refused");
    }
    w.write_all(b"QUIT\r\n").await.unwrap();
    let mut rest = Vec::new();
    let _ = r.read_to_end(&mut rest).await;
}

async fn run(proxy: SocketAddr, msg: &std::sync::Arc<Vec<u8>>, sessions: usize, per: usize) -> f64 {
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..sessions {
        set.spawn(session(proxy, msg.clone(), per));
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    (sessions * per) as f64 / started.elapsed().as_secs_f64()
}

/// SPF evaluations per second for a typical record, one after the other on one
/// thread, every lookup a cache hit after the first evaluation; then parses per second.
fn spf_rate(full: bool) {
    let mut zone = support::dns::soa("bench.test.");
    zone.push_str(
        r#"
typical   TXT "v=spf1 a mx include:_spf.bench.test ip4:198.51.100.0/24 ~all"
typical   A   192.0.2.10
typical   MX  10 mx1.bench.test.
mx1       A   192.0.2.11
_spf      TXT "v=spf1 ip4:203.0.113.0/24 ip6:2001:db8::/32 -all"
"#,
    );
    let dns = TestDns::start(&[("bench.test.", zone)]);
    let mut cfg = mxguard::config::Config::default();
    cfg.dns.servers = vec![dns.addr];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let n = if full { 50_000 } else { 200 };
    let rate = rt.block_on(async {
        let metrics = std::sync::Arc::new(mxguard::telemetry::Metrics::standalone());
        let d = mxguard::dns::Dns::new(&cfg.dns, metrics).unwrap();
        let p = mxguard::checks::spf::Params {
            ip: "203.0.113.5".parse().unwrap(),
            domain: "typical.bench.test",
            sender: "alice@typical.bench.test",
            helo: "client.example",
            receiver: "mx.bench.test",
            timestamp: 0,
        };
        let pass = mxguard::checks::spf::SpfResult::Pass;
        assert_eq!(mxguard::checks::spf::check_host(&d, &p).await.result, pass);
        let started = Instant::now();
        for _ in 0..n {
            assert_eq!(mxguard::checks::spf::check_host(&d, &p).await.result, pass);
        }
        n as f64 / started.elapsed().as_secs_f64()
    });
    println!(
        "auth_checks: SPF check_host(): {rate:9.0} evaluations/s (typical record, warm cache, one thread)"
    );
    let record =
        "v=spf1 a mx include:_spf.bench.test ip4:198.51.100.0/24 exists:%{i}.%{l2r-}.x.%{d2} ~all";
    let started = Instant::now();
    for _ in 0..n * 4 {
        assert!(mxguard::checks::spf::Record::parse(std::hint::black_box(record)).is_ok());
    }
    let parses = (n * 4) as f64 / started.elapsed().as_secs_f64();
    println!("auth_checks: SPF Record::parse(): {parses:9.0} records/s");
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    spf_rate(full);
    let (sessions, per) = if full { (100, 30) } else { (4, 2) };
    let keys = Keys::generate();
    let dns = TestDns::start(&zones(&keys));
    // A 10 KiB body of 78-character lines.
    let line = "The quick brown fox jumps over the lazy dog. 0123456789 abcdefghijklmnopqrstu\r\n";
    let body: String = line.repeat(10 * 1024 / line.len() + 1);
    let m = message("alice@signed.test", "bench", &body);
    let signed = keys.sign_rsa(&m, "signed.test", Canonicalization::Relaxed);
    let msg = std::sync::Arc::new(signed);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let upstream = rt.block_on(sink());
    let mut results = Vec::new();
    for checks in [false, true] {
        let proxy = start_proxy(upstream, dns.addr, checks);
        // Warm-up (and, with checks on, the DNS cache), then the measured run.
        rt.block_on(run(proxy.addr, &msg, 2, 2));
        let rate = rt.block_on(run(proxy.addr, &msg, sessions, per));
        println!(
            "auth_checks: checks {:3}: {:8.1} messages/s ({} sessions x {} messages of {} bytes)",
            if checks { "on" } else { "off" },
            rate,
            sessions,
            per,
            msg.len()
        );
        results.push(rate);
    }
    println!(
        "auth_checks: checks-on throughput = {:.0} % of checks-off{}",
        100.0 * results[1] / results[0],
        if full {
            ""
        } else {
            " (smoke run; use `cargo bench --bench auth_checks`)"
        }
    );
}
