//! Shared helpers for the integration tests: real components on loopback.
//!
//! # Layout
//!
//! | module | gives |
//! |---|---|
//! | this file | tool checks (fail under `CI=true`, skip loudly otherwise), free ports, a process guard, banner readiness |
//! | [`postfix`] | a private Postfix instance delivering to files, XCLIENT trusted from 127.0.0.1 only |
//! | [`redis`] | a private `redis-server`, a Redis Cluster, or a master + replica + three sentinels, for the shared store |
//! | [`sendmail`] | a private Sendmail 8.17 (unpacked, not installed), the upstream without XCLIENT |
//! | [`sink`] | Postfix's `smtp-sink`, for load |
//! | [`filters`] | clamd + clamav-milter, opendkim (sign/verify), opendmarc, rspamd (HTTP and milter), a scripted fake milter |
//! | [`fake_upstream`] | a scripted SMTP server for fault injection that records what it got |
//! | [`chaos_upstream`] | an SMTP server that misbehaves at every point (seeded), recording each message and what became of its reply |
//! | [`rng`] | a seeded generator (SplitMix64) so a soak run can be repeated |
//! | [`procstat`] | descriptors, resident memory and CPU time of a process, from `/proc` |
//! | [`certs`] | a test CA and a leaf for `mx.test`, `localhost`, `127.0.0.1` |
//! | [`authzone`] | the SPF/DKIM/DMARC/DNSBL/PTR test zone, DKIM keys generated at test time, signing |
//! | [`dns`] | an in-process authoritative DNS server (hickory-server) on a loopback port; names under `timeout.test.` never get an answer |
//! | [`mxguard`] | the binary under test: config in a tempdir, start, log capture, SIGTERM |
//! | [`client`] | a raw-socket SMTP client (exact bytes, source address), `smtplib` and `swaks` runners |
//!
//! Every helper is used by some test file but not by all, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod authzone;
pub mod certs;
pub mod chaos_upstream;
pub mod client;
pub mod dns;
pub mod fake_upstream;
pub mod filters;
pub mod mxguard;
pub mod postfix;
pub mod procstat;
pub mod redis;
pub mod rng;
pub mod sendmail;
pub mod sink;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// True when running under CI (`CI=true` or `CI=1`): missing components fail, never skip.
pub fn in_ci() -> bool {
    matches!(
        std::env::var("CI").as_deref(),
        Ok("true") | Ok("1") | Ok("TRUE") | Ok("True")
    )
}

/// Finds an executable by absolute path or on `PATH` (plus the sbin directories, which a
/// non-login root shell may lack).
pub fn which(tool: &str) -> Option<PathBuf> {
    let p = Path::new(tool);
    if p.is_absolute() {
        return p.is_file().then(|| p.to_path_buf());
    }
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin", "/usr/bin", "/bin"])
        .map(|d| Path::new(d).join(tool))
        .find(|c| c.is_file())
}

/// Checks that every real component a test needs is present (and that we are root when
/// `root` is set, which a private Postfix needs). Returns `false` — after a loud message —
/// when something is missing outside CI; panics under CI, because a skipped test proves
/// nothing there.
pub fn require(tools: &[&str], root: bool) -> bool {
    let mut missing: Vec<String> = tools
        .iter()
        .filter(|t| which(t).is_none())
        .map(|t| t.to_string())
        .collect();
    if root && unsafe { libc::geteuid() } != 0 {
        missing.push("root privileges (a private Postfix needs them)".into());
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "missing real component(s): {}; install them with `sudo bash scripts/install-test-deps.sh`",
        missing.join(", ")
    );
    if in_ci() {
        panic!("{msg} (CI=true: a missing component fails the test, it is never skipped)");
    }
    eprintln!("\n!!!!!!!! SKIPPED: {msg} !!!!!!!!\n");
    false
}

/// A port that was free a moment ago on `ip` (bind to port 0 and read it back).
pub fn free_port_on(ip: &str) -> u16 {
    TcpListener::bind((ip, 0))
        .expect("bind port 0")
        .local_addr()
        .unwrap()
        .port()
}

pub fn free_port() -> u16 {
    free_port_on("127.0.0.1")
}

/// Connects to `addr` until a `220 ` greeting line arrives (then says QUIT), or panics
/// after `timeout` naming `what`. `alive` is polled so a process that died is reported at
/// once instead of after the timeout.
pub fn wait_banner(
    addr: SocketAddr,
    timeout: Duration,
    what: &str,
    mut alive: impl FnMut() -> Result<(), String>,
) {
    let t0 = Instant::now();
    let mut last: String;
    loop {
        if let Err(e) = alive() {
            panic!("{what} died before greeting on {addr}: {e}");
        }
        match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            Ok(s) => {
                s.set_read_timeout(Some(Duration::from_secs(5))).ok();
                let mut r = BufReader::new(&s);
                let mut line = String::new();
                // multi-line banners: read until the last line ("220 ")
                loop {
                    line.clear();
                    match r.read_line(&mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) if line.starts_with("220-") => continue,
                        Ok(_) => break,
                    }
                }
                if line.starts_with("220 ") {
                    let _ = (&s).write_all(b"QUIT\r\n");
                    return;
                }
                last = format!("got {line:?}");
            }
            Err(e) => last = e.to_string(),
        }
        if t0.elapsed() > timeout {
            panic!("{what} on {addr}: no 220 greeting after {timeout:?} ({last})");
        }
        // polling interval while the server is not yet listening (not a synchronisation sleep)
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Owns a child process; Drop stops it by PID (or by process group when it leads one):
/// SIGTERM, a bounded wait, then SIGKILL.
pub struct ProcGuard {
    pub child: Child,
    pub name: String,
    /// The child leads its own process group: signal the group on kill.
    pub group: bool,
    pub term_wait: Duration,
    stopped: Option<ExitStatus>,
}

impl ProcGuard {
    pub fn new(child: Child, name: &str, group: bool) -> Self {
        ProcGuard {
            child,
            name: name.into(),
            group,
            term_wait: Duration::from_secs(10),
            stopped: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Err` with the exit status when the process has exited.
    pub fn check_alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(st)) => {
                self.stopped = Some(st);
                Err(format!("{} exited: {st}", self.name))
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Sends `sig` to the process (only to the process, never to its group).
    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// SIGTERM, wait up to `wait`; returns the exit status, or `None` if it had to be
    /// killed with SIGKILL.
    pub fn terminate(&mut self, wait: Duration) -> Option<ExitStatus> {
        if let Some(st) = self.stopped {
            return Some(st);
        }
        if let Ok(Some(st)) = self.child.try_wait() {
            self.stopped = Some(st);
            return Some(st);
        }
        self.signal(libc::SIGTERM);
        let t0 = Instant::now();
        while t0.elapsed() < wait {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.stopped = Some(st);
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let pid = self.child.id() as i32;
        unsafe {
            if self.group {
                libc::kill(-pid, libc::SIGKILL);
            }
            libc::kill(pid, libc::SIGKILL);
        }
        let _ = self.child.wait();
        eprintln!(
            "{} (pid {pid}) ignored SIGTERM for {wait:?}: killed",
            self.name
        );
        None
    }
}

impl Drop for ProcGuard {
    fn drop(&mut self) {
        let wait = self.term_wait;
        self.terminate(wait);
        if self.group {
            // leftovers of the group (e.g. a pipe(8) child): they die with SIGKILL
            unsafe {
                libc::kill(-(self.child.id() as i32), libc::SIGKILL);
            }
        }
    }
}

/// A temporary directory under /tmp that other users (postfix, nobody) can traverse.
/// Kept after the test when `MXGUARD_TEST_KEEP=1`.
pub fn tempdir(prefix: &str) -> tempfile::TempDir {
    let mut d = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .expect("tempdir");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    if std::env::var("MXGUARD_TEST_KEEP").as_deref() == Ok("1") {
        eprintln!("keeping {}", d.path().display());
        d.disable_cleanup(true);
    }
    d
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if t0.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Peak resident set (`VmHWM`) and current (`VmRSS`) of a process, in KiB.
pub fn proc_mem_kib(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Looks a user up in /etc/passwd: (uid, gid).
pub fn user_ids(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() > 3 && f[0] == name {
            Some((f[2].parse().ok()?, f[3].parse().ok()?))
        } else {
            None
        }
    })
}

/// Now as an RFC 5322 `Date:` value: content filters score a fixed date that has fallen
/// into the past (Rspamd's DATE_IN_PAST), so a test message must not carry one.
pub fn date_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    ::mxguard::relay::trace::rfc5322_date(now as i64)
}

/// Converts CRLF line ends to LF (how Postfix stores a message).
pub fn crlf_to_lf(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\r' && b.get(i + 1) == Some(&b'\n') {
            out.push(b'\n');
            i += 2;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// LF line ends as CRLF (a delivered file as it crosses the wire again).
pub fn lf_to_crlf(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len() + b.len() / 16);
    for (i, &c) in b.iter().enumerate() {
        if c == b'\n' && (i == 0 || b[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(c);
    }
    out
}

/// Asserts two byte strings are equal, showing them as text when they are not.
#[track_caller]
pub fn assert_bytes_eq(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let pos = got
            .iter()
            .zip(want)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        panic!(
            "{what}: bytes differ at offset {pos} (got {} bytes, want {})\n--- got ---\n{:?}\n--- want ---\n{:?}",
            got.len(),
            want.len(),
            String::from_utf8_lossy(&got[..got.len().min(4000)]),
            String::from_utf8_lossy(&want[..want.len().min(4000)])
        );
    }
}

/// mxguard's `/metrics` text at `addr` (host:port), fetched with curl; `None` while the
/// endpoint does not answer.
pub fn try_metrics(addr: impl std::fmt::Display) -> Option<String> {
    let out = std::process::Command::new("curl")
        .args(["-sf", "--max-time", "5", &format!("http://{addr}/metrics")])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// mxguard's `/metrics` text at `addr`, waiting (bounded) for the endpoint to answer.
pub fn metrics(addr: impl std::fmt::Display + Copy) -> String {
    wait_for(Duration::from_secs(10), "the metrics endpoint", || {
        try_metrics(addr)
    })
}
