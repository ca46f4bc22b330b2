//! The systemd contract: the unit file verifies, and the binary speaks the notify
//! protocol (READY=1 once listening, RELOADING=1/READY=1 around SIGHUP, STOPPING=1 on
//! SIGTERM, then exit 0).

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child's PID.
    let rc = unsafe { libc::kill(child.id() as i32, sig) };
    assert_eq!(rc, 0, "kill failed");
}

/// Receives notify datagrams until one contains `wanted`.
fn expect_notify(sock: &UnixDatagram, wanted: &str) -> String {
    let mut buf = [0u8; 4096];
    loop {
        let n = sock
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no notification containing {wanted:?}: {e}"));
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        if msg.lines().any(|l| l == wanted) {
            return msg;
        }
    }
}

#[test]
fn notify_protocol_ready_reload_stop() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_mxguard"))
        .args(["run", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--upstream", &format!("127.0.0.1:{}", free_port())])
        .arg("--rules")
        .arg(&rules)
        .arg("--state")
        .arg(dir.path().join("state"))
        .env("NOTIFY_SOCKET", &sock_path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut proc = Proc(child);

    let ready = expect_notify(&sock, "READY=1");
    assert!(ready.contains("STATUS=listening"), "{ready}");
    // READY=1 means the port is already bound.
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("listening when READY=1");

    signal(&proc.0, libc::SIGHUP);
    let reloading = expect_notify(&sock, "RELOADING=1");
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    let again = expect_notify(&sock, "READY=1");
    assert!(again.contains("STATUS=reloaded"), "{again}");

    signal(&proc.0, libc::SIGTERM);
    expect_notify(&sock, "STOPPING=1");
    let status = proc.0.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    let mut log = String::new();
    for line in BufReader::new(proc.0.stderr.take().unwrap()).lines() {
        log.push_str(&line.unwrap());
        log.push('\n');
    }
    assert!(log.contains("rules reloaded"), "{log}");
    assert!(log.contains("stopped"), "{log}");
}

#[test]
fn unit_file_verifies() {
    let analyze = Path::new("/usr/bin/systemd-analyze");
    if !analyze.exists() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "systemd-analyze is required under CI"
        );
        eprintln!("SKIP: systemd-analyze not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/mxguard.service"
    ))
    .unwrap()
    .replace("/usr/local/bin/mxguard", env!("CARGO_BIN_EXE_mxguard"));
    let path = dir.path().join("mxguard.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed: {stderr}"
    );
    assert!(
        !stderr.contains("mxguard.service") && !stderr.contains("mxguard.socket"),
        "systemd-analyze complained about the units: {stderr}"
    );
}

#[test]
fn example_config_checks() {
    let out = Command::new(env!("CARGO_BIN_EXE_mxguard"))
        .args(["check", "--config"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/mxguard.yaml"))
        .args(["--rules", concat!(env!("CARGO_MANIFEST_DIR"), "/rules")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
