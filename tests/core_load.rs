//! Issue 2, scale: 1,000 concurrent sessions complete (through mxguard to Postfix's
//! smtp-sink), and a 50 MB message streams through without mxguard holding 50 MB in
//! memory more than once (peak RSS from /proc/PID/status VmHWM).

mod support;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpSocket;
use tokio::sync::Barrier;

use support::client::RawClient;
use support::mxguard::{MxGuard, MxOpts};
use support::sink::SmtpSink;

const SESSIONS: usize = 1000;

/// Raise our soft fd limit to the hard one; children (mxguard, smtp-sink) inherit it.
fn raise_nofile() {
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

async fn reply(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> std::io::Result<String> {
    let mut all = String::new();
    loop {
        let mut l = String::new();
        if r.read_line(&mut l).await? == 0 {
            return Err(std::io::Error::other(format!("closed after {all:?}")));
        }
        all += &l;
        if l.as_bytes().get(3) != Some(&b'-') {
            return Ok(all);
        }
    }
}

async fn expect(
    r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    code: &str,
) -> Result<(), String> {
    let got = reply(r).await.map_err(|e| e.to_string())?;
    if got.starts_with(code) {
        Ok(())
    } else {
        Err(format!("expected {code}, got {got:?}"))
    }
}

/// One session: connect from `src`, greeting, EHLO, wait until every session is open,
/// one transaction, QUIT.
async fn session(
    addr: SocketAddr,
    src: IpAddr,
    i: usize,
    all_open: Arc<Barrier>,
) -> Result<(), String> {
    let sock = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    sock.bind(SocketAddr::new(src, 0))
        .map_err(|e| format!("bind {src}: {e}"))?;
    let stream = match sock.connect(addr).await {
        Ok(s) => s,
        Err(e) => {
            all_open.wait().await;
            return Err(format!("connect: {e}"));
        }
    };
    stream.set_nodelay(true).ok();
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let opened = async {
        expect(&mut rd, "220").await?;
        wr.write_all(b"EHLO load.example\r\n")
            .await
            .map_err(|e| e.to_string())?;
        expect(&mut rd, "250").await
    }
    .await;
    all_open.wait().await;
    opened?;
    let cmds =
        format!("MAIL FROM:<load{i}@example.org>\r\nRCPT TO:<rcpt{i}@example.net>\r\nDATA\r\n");
    wr.write_all(cmds.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    expect(&mut rd, "250").await?;
    expect(&mut rd, "250").await?;
    expect(&mut rd, "354").await?;
    let body = format!("Subject: load {i}\r\n\r\nmessage {i}\r\n.\r\n");
    wr.write_all(body.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    expect(&mut rd, "250").await?;
    wr.write_all(b"QUIT\r\n").await.map_err(|e| e.to_string())?;
    expect(&mut rd, "221").await
}

#[test]
fn one_thousand_concurrent_sessions_complete() {
    if !support::require(support::sink::TOOLS, false) {
        return;
    }
    raise_nofile();
    let sink = SmtpSink::start(2048, true);
    let mx = MxGuard::start(MxOpts::new(sink.addr));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let t0 = Instant::now();
    let barrier = Arc::new(Barrier::new(SESSIONS));
    let results: Vec<Result<(), String>> = rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..SESSIONS {
            // 25 clients per /24, so the per-network session limit (default 50) is not hit
            let src = IpAddr::from([127, 0, 10 + (i / 25) as u8, 2 + (i % 25) as u8]);
            tasks.push(tokio::spawn(session(mx.addr, src, i, barrier.clone())));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(
                match tokio::time::timeout(Duration::from_secs(120), t).await {
                    Ok(Ok(r)) => r,
                    Ok(Err(e)) => Err(format!("task: {e}")),
                    Err(_) => Err("timed out".into()),
                },
            );
        }
        out
    });
    let failed: Vec<(usize, &String)> = results
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.as_ref().err().map(|e| (i, e)))
        .collect();
    let (hwm, rss) = mx.mem_kib();
    eprintln!(
        "{SESSIONS} sessions in {:?}; mxguard VmHWM {hwm} KiB, VmRSS {rss} KiB",
        t0.elapsed()
    );
    assert!(
        failed.is_empty(),
        "{} of {SESSIONS} sessions failed, first: {:?}\n--- mxguard log (tail) ---\n{}",
        failed.len(),
        &failed[..failed.len().min(5)],
        tail(&mx.log(), 40)
    );
    support::wait_for(Duration::from_secs(30), "1000 dumps at the sink", || {
        (sink.dumped() >= SESSIONS).then_some(())
    });
    assert_eq!(sink.dumped(), SESSIONS);
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[test]
fn fifty_megabyte_message_streams_through_without_holding_it_twice() {
    if !support::require(support::sink::TOOLS, false) {
        return;
    }
    const SIZE: usize = 50 * 1024 * 1024;
    let sink = SmtpSink::start(64, true);
    // ASSUMED config key: limits.max_message_size (the default 25 MB is below 50 MB)
    let mx = MxGuard::start(MxOpts::new(sink.addr).config("limits:\n  max_message_size: 200M\n"));
    let (hwm_before, _) = mx.mem_kib();
    let mut c = RawClient::connect(mx.addr);
    c.timeout = Duration::from_secs(300);
    c.ehlo("client.example");
    assert_eq!(
        c.cmd(&format!("MAIL FROM:<big@example.org> SIZE={SIZE}"))
            .code,
        250
    );
    assert_eq!(c.cmd("RCPT TO:<b@example.net>").code, 250);
    assert_eq!(c.cmd("DATA").code, 354);
    let line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-0123456789\r\n";
    let mut chunk = Vec::with_capacity(1 << 20);
    while chunk.len() + line.len() <= 1 << 20 {
        chunk.extend_from_slice(line);
    }
    let t0 = Instant::now();
    c.send(b"Subject: fifty megabytes\r\n\r\n");
    let mut sent = 0;
    while sent < SIZE {
        c.send(&chunk);
        sent += chunk.len();
    }
    c.send(b".\r\n");
    let r = c.reply();
    let took = t0.elapsed();
    assert_eq!(r.code, 250, "{r}\n{}", tail(&mx.log(), 20));
    let (hwm, rss) = mx.mem_kib();
    eprintln!(
        "{} MB through mxguard in {took:?}; VmHWM {hwm_before} -> {hwm} KiB, VmRSS {rss} KiB",
        sent >> 20
    );
    // "without holding 50 MB in memory more than once": well under 2 x 50 MB
    let limit_kib = (SIZE as u64 * 3 / 2) / 1024;
    assert!(
        hwm < limit_kib,
        "mxguard peak RSS {hwm} KiB for a {} MiB message (limit {limit_kib} KiB)",
        SIZE >> 20
    );
    // the spool file is gone once the transaction has ended
    support::wait_for(Duration::from_secs(10), "the spool to be emptied", || {
        (dir_bytes(&mx.dir.join("state")) < 4 << 20).then_some(())
    });
    c.cmd("QUIT");
    // the sink got it all
    let dump = support::wait_for(Duration::from_secs(30), "the sink's dump", || {
        let d = sink.dump_dir.as_ref()?;
        let f = std::fs::read_dir(d).ok()?.flatten().next()?;
        let len = f.metadata().ok()?.len();
        // the dump has LF line ends: one byte less per line
        (len as usize >= sent / line.len() * (line.len() - 1)).then_some(len)
    });
    assert!(dump as usize >= sent / line.len() * (line.len() - 1));
}

/// Total size of the regular files under `dir`.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

#[test]
fn a_client_that_vanishes_mid_data_leaves_no_spool_and_no_message() {
    let up = support::fake_upstream::FakeUpstream::start(support::fake_upstream::Script::default());
    let mx = MxGuard::start(MxOpts::new(up.addr));
    let mut c = RawClient::connect(mx.addr);
    c.ehlo("client.example");
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<b@example.net>").code, 250);
    assert_eq!(c.cmd("DATA").code, 354);
    c.send(b"Subject: vanishing\r\n\r\n");
    let line = [b'x'; 998];
    let mut chunk = Vec::new();
    for _ in 0..1000 {
        chunk.extend_from_slice(&line);
        chunk.extend_from_slice(b"\r\n");
    }
    for _ in 0..8 {
        c.send(&chunk); // 8 MB, beyond the in-memory threshold: it goes to a spool file
    }
    let state = mx.dir.join("state");
    support::wait_for(Duration::from_secs(10), "a spool file", || {
        (dir_bytes(&state) > 1 << 20).then_some(())
    });
    drop(c);
    support::wait_for(
        Duration::from_secs(10),
        "the spool file to be removed",
        || (dir_bytes(&state) < 1 << 20).then_some(()),
    );
    assert!(
        up.messages().is_empty(),
        "a vanished client's message must not be relayed"
    );
}
