//! The instruments tested against the real mxguard binary, with a counting sink as its
//! upstream: STARTTLS with resumption (later connections must resume), without it (none
//! may), plaintext with pipelining, every message counted at the sink; then a small flood
//! of every kind held open while a legitimate load gets through.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustls_pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_rustls::TlsConnector;

use crate::certs::TestCerts;
use crate::flood::{self, Counters, FloodArgs};
use crate::load::{self, LoadArgs, LoadReport};

const BIN: &str = env!("CARGO_BIN_EXE_mxguard");

pub fn run() -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    rt.block_on(async {
        let certs = TestCerts::generate();
        let (sink, delivered) = sink().await?;
        let mx = Mx::start(sink, &certs).await?;
        let sent = load_runs(mx.addr, &certs).await?;
        let at_sink = delivered.load(Ordering::SeqCst);
        check(
            at_sink == sent,
            format!("the sink received {at_sink} messages, {sent} were accepted"),
        )?;
        flood_run(mx.addr).await?;
        println!("tls_load self-test: ok (load over STARTTLS with and without resumption, plaintext pipelined, flood of 40)");
        Ok(())
    })
}

fn check(ok: bool, what: String) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(format!("self-test: {what}"))
    }
}

fn args(target: SocketAddr) -> LoadArgs {
    LoadArgs {
        target,
        sessions: 3,
        messages: 12,
        size: 1024,
        per_conn: 1,
        no_tls: false,
        no_resume: false,
        ca: None,
        server_name: "mx.test".into(),
        source: Some([127, 0, 0, 1].into()),
        pipelining: false,
        max_time: Duration::from_secs(60),
        io_timeout: Duration::from_secs(20),
        threads: 2,
    }
}

fn connector(
    certs: &TestCerts,
    resume: bool,
) -> Result<(TlsConnector, ServerName<'static>), String> {
    let cfg = crate::client_tls::client_config(certs.ca_pem.as_bytes(), resume)?;
    Ok((
        TlsConnector::from(cfg),
        ServerName::try_from("mx.test").unwrap(),
    ))
}

fn all_delivered(what: &str, r: &LoadReport, want: u64) -> Result<(), String> {
    check(
        r.ok == want && r.failed == 0 && r.latencies_us.len() as u64 == want,
        format!(
            "{what}: {} ok, {} failed of {want}; errors {:?}",
            r.ok, r.failed, r.errors
        ),
    )
}

/// The three load runs; returns how many messages they sent.
async fn load_runs(target: SocketAddr, certs: &TestCerts) -> Result<u64, String> {
    let a = args(target);
    let resumed = load::run_with(a.clone(), Some(connector(certs, true)?)).await?;
    all_delivered("STARTTLS, resumption on", &resumed, 12)?;
    // the first connection of each session has nothing to resume; every later one must
    check(
        resumed.handshakes == 12 && resumed.resumed >= 12 - a.sessions as u64,
        format!(
            "resumption on: {} of {} handshakes resumed",
            resumed.resumed, resumed.handshakes
        ),
    )?;
    let full = load::run_with(a.clone(), Some(connector(certs, false)?)).await?;
    all_delivered("STARTTLS, resumption off", &full, 12)?;
    check(
        full.handshakes == 12 && full.resumed == 0,
        format!(
            "resumption off: {} of {} handshakes resumed",
            full.resumed, full.handshakes
        ),
    )?;
    let plain = LoadArgs {
        no_tls: true,
        per_conn: 0,
        pipelining: true,
        ..a
    };
    let plain = load::run_with(plain, None).await?;
    all_delivered(
        "plaintext, pipelined, one connection per session",
        &plain,
        12,
    )?;
    check(
        plain.connections == 3 && plain.handshakes == 0,
        format!(
            "plaintext: {} connections, {} handshakes",
            plain.connections, plain.handshakes
        ),
    )?;
    Ok(36)
}

/// 40 hostile connections of every kind, then a legitimate load from the exempt address.
async fn flood_run(target: SocketAddr) -> Result<(), String> {
    let fa = FloodArgs {
        target,
        connections: 40,
        mix: "idle=25,drip=25,pregreet=25,junk=25".into(),
        per_network: 5,
        first_network: [127, 10, 0, 0].into(),
        duration: Duration::from_secs(60),
        drip_interval: Duration::from_millis(100),
        junk_interval: Duration::from_millis(50),
        reconnect_delay: Duration::from_millis(200),
        connect_concurrency: 16,
        connect_timeout: Duration::from_secs(5),
    };
    let counters = Arc::new(Counters::default());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let flood = tokio::spawn(flood::run(fa, counters.clone(), async move {
        let _ = stop_rx.await;
    }));
    let deadline = Instant::now() + Duration::from_secs(20);
    // every slot connected, and junk got its 5xx replies: the flood is doing its job
    while counters.ramped() < 40 || counters.replies_5xx.load(Ordering::Relaxed) == 0 {
        check(
            Instant::now() < deadline,
            "the flood did not ramp up and draw 5xx replies within 20 s".into(),
        )?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let legit = LoadArgs {
        no_tls: true,
        sessions: 2,
        per_conn: 3,
        ..args(target)
    };
    let legit = load::run_with(legit, None).await?;
    let _ = stop_tx.send(());
    let report = flood.await.map_err(|e| format!("flood task: {e}"))??;
    all_delivered("legitimate load under the flood", &legit, 12)?;
    let n = |k: &str| report[k].as_u64().unwrap_or(0);
    let each_kind = ["idle", "drip", "pregreet", "junk"]
        .iter()
        .all(|k| report["kinds"][k].as_u64() == Some(10));
    check(
        each_kind && n("connected") >= 40 && n("banner_2xx") > 0 && n("banner_4xx") == 0,
        format!("flood report: {report}"),
    )
}

/// An upstream that accepts every message and counts them.
async fn sink() -> Result<(SocketAddr, Arc<AtomicU64>), String> {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("sink: {e}"))?;
    let addr = l.local_addr().map_err(|e| format!("sink: {e}"))?;
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(sink_session(s, c.clone()));
        }
    });
    Ok((addr, count))
}

async fn sink_session(s: tokio::net::TcpStream, count: Arc<AtomicU64>) -> std::io::Result<()> {
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    w.write_all(b"220 sink ESMTP\r\n").await?;
    let mut line = Vec::new();
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        match &line.get(..4).unwrap_or(b"").to_ascii_uppercase()[..] {
            b"EHLO" => {
                w.write_all(b"250-sink\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
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
                count.fetch_add(1, Ordering::SeqCst);
                w.write_all(b"250 2.0.0 queued\r\n").await?;
            }
            b"QUIT" => {
                w.write_all(b"221 bye\r\n").await?;
                return Ok(());
            }
            _ => w.write_all(b"250 2.0.0 ok\r\n").await?,
        }
    }
}

/// mxguard with a STARTTLS listener; only 127.0.0.1 (the load) is exempt from the
/// per-network limit, the flood's networks are not.
struct Mx {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Mx {
    async fn start(upstream: SocketAddr, certs: &TestCerts) -> Result<Mx, String> {
        let dir = crate::tempdir("mxg-tls-load.");
        let rules = dir.path().join("rules");
        std::fs::create_dir_all(&rules).map_err(|e| format!("rules dir: {e}"))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("free port: {e}"))?
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let cfg = format!(
            "listeners:\n  - name: mx\n    address: {addr}\n    tls: {{ cert: {}, key: {} }}\nlimits:\n  exempt_networks: [127.0.0.1/32]\n",
            certs.leaf_chain.display(),
            certs.leaf_key.display()
        );
        let cfg_path = dir.path().join("mxguard.yaml");
        std::fs::write(&cfg_path, cfg).map_err(|e| format!("config: {e}"))?;
        let child = Command::new(BIN)
            .arg("run")
            .arg("--config")
            .arg(&cfg_path)
            .arg("--rules")
            .arg(&rules)
            .arg("--state")
            .arg(dir.path().join("state"))
            .args(["--upstream", &upstream.to_string(), "--hostname", "mx.test"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("spawn {BIN}: {e}"))?;
        let mx = Mx {
            child,
            addr,
            _dir: dir,
        };
        mx.wait_banner().await?;
        Ok(mx)
    }

    async fn wait_banner(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut s) = tokio::net::TcpStream::connect(self.addr).await {
                let mut b = [0u8; 4];
                if s.read_exact(&mut b).await.is_ok() && &b == b"220 " {
                    return Ok(());
                }
            }
            check(
                Instant::now() < deadline,
                "mxguard sent no banner within 20 s".into(),
            )?;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Mx {
    fn drop(&mut self) {
        // SAFETY: signals the child this test started, by its PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}
