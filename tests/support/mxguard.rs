//! The binary under test: writes a config and rules to a temp directory, starts
//! `mxguard run` with flags, waits for its greeting, captures stderr (the log) to a file,
//! stops it with SIGTERM by PID.
//!
//! Interface relied on (checked against the merged core):
//! - `mxguard run --config FILE --listen ADDR --upstream HOST:PORT --rules DIR --state DIR
//!   --hostname NAME [--log-format json]`, logs `listening ... addr=...` at info, honours
//!   `RUST_LOG`; `mxguard check --config FILE` exits non-zero with `file:line:col`;
//! - flags override the file: `--listen` sets the first listener's address (keeping its
//!   `tls`/`implicit_tls`); `--upstream` replaces the upstream list with one upstream that
//!   keeps the first configured upstream's settings (so tests with several upstreams set
//!   `upstream_flag = false`);
//! - YAML keys: `listeners: [{name, address, tls: {cert, key}, implicit_tls}]`,
//!   `upstreams: [{address, tls, tls_verify, ca_file, tls_name, connect_timeout,
//!   command_timeout, data_timeout}]`, `limits: {max_message_size, max_recipients,
//!   command_timeout, min_data_rate, max_sessions, max_sessions_per_network,
//!   exempt_networks, greet_pause, ...}`, `data: {normalize_networks}`; durations like
//!   `2s`, sizes like `100M` or plain numbers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use super::{ProcGuard, tempdir, wait_banner, wait_for};

pub const BIN: &str = env!("CARGO_BIN_EXE_mxguard");

#[derive(Clone, Debug)]
pub struct MxOpts {
    /// `--upstream HOST:PORT`.
    pub upstream: SocketAddr,
    /// `--hostname`.
    pub hostname: String,
    /// YAML written to `mxguard.yaml` and passed with `--config` (None: no config file).
    /// `{listen}` and `{upstream}` are replaced by the addresses.
    pub config: Option<String>,
    /// Rule files `(name, yaml)` written into the rules directory.
    pub rules: Vec<(String, String)>,
    /// Extra arguments after `run`.
    pub args: Vec<String>,
    /// `RUST_LOG` for the process.
    pub rust_log: String,
    /// The listener speaks TLS from the first byte: readiness is a TLS handshake (with
    /// this client config, name `mx.test`) and then the `220 ` greeting.
    pub implicit_tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// Pass `--upstream` (it replaces the configured upstream list); off for tests whose
    /// config lists several upstreams.
    pub upstream_flag: bool,
    /// `RLIMIT_NOFILE` for the process (soft and hard), set before it starts.
    pub nofile: Option<u64>,
}

impl MxOpts {
    pub fn new(upstream: SocketAddr) -> MxOpts {
        MxOpts {
            upstream,
            hostname: "mx.proxy.test".into(),
            config: None,
            rules: Vec::new(),
            args: Vec::new(),
            rust_log: "info".into(),
            implicit_tls: None,
            upstream_flag: true,
            nofile: None,
        }
    }

    pub fn config(mut self, yaml: &str) -> MxOpts {
        self.config = Some(yaml.to_string());
        self
    }
}

pub struct MxGuard {
    pub addr: SocketAddr,
    pub dir: PathBuf,
    pub log_path: PathBuf,
    proc: ProcGuard,
    /// How it was started, for [`MxGuard::restart`].
    opts: MxOpts,
    _tmp: tempfile::TempDir,
}

impl MxGuard {
    pub fn start(opts: MxOpts) -> MxGuard {
        let tmp = tempdir("mxg-run.");
        let dir = tmp.path().to_path_buf();
        let rules = dir.join("rules");
        let state = dir.join("state");
        std::fs::create_dir_all(&rules).unwrap();
        std::fs::create_dir_all(&state).unwrap();
        for (name, text) in &opts.rules {
            let path = rules.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let log_path = dir.join("mxguard.log");
        let (proc, addr) = spawn(&opts, &dir, &log_path);
        MxGuard {
            addr,
            dir,
            log_path,
            proc,
            opts,
            _tmp: tmp,
        }
    }

    /// Starts the process again with the same directory, config and state (after
    /// [`MxGuard::kill`] or [`MxGuard::stop`]); the previous log moves to `mxguard.log.1`.
    pub fn restart(&mut self) {
        let _ = std::fs::rename(&self.log_path, self.dir.join("mxguard.log.1"));
        let (proc, addr) = spawn(&self.opts, &self.dir, &self.log_path);
        self.proc = proc;
        self.addr = addr;
    }

    /// SIGKILL (a crash: no draining, nothing flushed) and reap.
    pub fn kill(&mut self) -> ExitStatus {
        self.proc.signal(libc::SIGKILL);
        wait_for(Duration::from_secs(10), "mxguard to die of SIGKILL", || {
            self.proc.check_alive().err()
        });
        self.proc.child.wait().expect("reap mxguard")
    }

    /// Sends `sig` (by PID) without waiting.
    pub fn signal(&self, sig: i32) {
        self.proc.signal(sig);
    }

    /// The exit status, if the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.proc.child.try_wait().ok().flatten()
    }

    /// The state directory (`--state`).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// The log so far (stdout and stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        wait_for(
            timeout,
            &format!("mxguard log line containing {needle:?}"),
            || {
                let l = self.log();
                l.contains(needle).then_some(l)
            },
        )
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// (VmHWM, VmRSS) in KiB.
    pub fn mem_kib(&self) -> (u64, u64) {
        super::proc_mem_kib(self.pid())
    }

    pub fn check_alive(&mut self) -> Result<(), String> {
        self.proc.check_alive()
    }

    /// SIGTERM by PID; waits up to `wait`. `None` if it had to be killed.
    pub fn stop(&mut self, wait: Duration) -> Option<ExitStatus> {
        self.proc.terminate(wait)
    }
}

/// Writes the config, starts `mxguard run`, waits for its address in the log and its
/// greeting.
fn spawn(
    opts: &MxOpts,
    dir: &std::path::Path,
    log_path: &std::path::Path,
) -> (ProcGuard, SocketAddr) {
    let rules = dir.join("rules");
    let state = dir.join("state");
    // Port 0: the kernel picks a free port and mxguard logs it, so parallel tests can
    // never race for the same "free" port.
    let requested: SocketAddr = ([127, 0, 0, 1], 0).into();
    let log = std::fs::File::create(log_path).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("run");
    if let Some(yaml) = &opts.config {
        let p = dir.join("mxguard.yaml");
        let text = yaml
            .replace("{listen}", &requested.to_string())
            .replace("{upstream}", &opts.upstream.to_string())
            .replace("{dir}", &dir.display().to_string());
        std::fs::write(&p, text).unwrap();
        cmd.arg("--config").arg(p);
    }
    if opts.upstream_flag {
        cmd.arg("--upstream").arg(opts.upstream.to_string());
    }
    cmd.arg("--listen")
        .arg(requested.to_string())
        .arg("--rules")
        .arg(&rules)
        .arg("--state")
        .arg(&state)
        .arg("--hostname")
        .arg(&opts.hostname)
        .args(&opts.args)
        .env("RUST_LOG", &opts.rust_log)
        .env_remove("RUST_BACKTRACE")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    if let Some(n) = opts.nofile {
        use std::os::unix::process::CommandExt;
        // SAFETY: only setrlimit (async-signal-safe) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: n,
                    rlim_max: n,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {BIN}: {e}"));
    let mut proc = ProcGuard::new(child, "mxguard", false);
    let addr = wait_for(
        Duration::from_secs(20),
        "mxguard to log its address",
        || {
            if let Err(e) = proc.check_alive() {
                panic!(
                    "mxguard died before listening: {e}\n--- mxguard log ---\n{}",
                    std::fs::read_to_string(log_path).unwrap_or_default()
                );
            }
            first_listening_addr(&std::fs::read_to_string(log_path).unwrap_or_default())
        },
    );
    let alive = || {
        proc.check_alive().map_err(|e| {
            format!(
                "{e}\n--- mxguard log ---\n{}",
                std::fs::read_to_string(log_path).unwrap_or_default()
            )
        })
    };
    match &opts.implicit_tls {
        None => wait_banner(addr, Duration::from_secs(20), "mxguard", alive),
        Some(cfg) => wait_banner_tls(addr, cfg.clone(), alive),
    }
    (proc, addr)
}

/// A config with a TLS listener (STARTTLS, or implicit TLS when `implicit`).
pub fn tls_config(cert_chain: &std::path::Path, key: &std::path::Path, implicit: bool) -> String {
    format!(
        "listeners:\n  - name: test\n    address: \"{{listen}}\"\n    implicit_tls: {implicit}\n    tls:\n      cert: {}\n      key: {}\nupstreams:\n  - address: \"{{upstream}}\"\n",
        cert_chain.display(),
        key.display()
    )
}

/// Readiness of an implicit-TLS listener: handshake, then a `220 ` greeting.
fn wait_banner_tls(
    addr: SocketAddr,
    cfg: std::sync::Arc<rustls::ClientConfig>,
    mut alive: impl FnMut() -> Result<(), String>,
) {
    let mut last = String::new();
    wait_for(Duration::from_secs(20), "mxguard's TLS greeting", || {
        if let Err(e) = alive() {
            panic!("mxguard died before greeting on {addr}: {e}");
        }
        let tcp = match std::net::TcpStream::connect(addr) {
            Ok(t) => t,
            Err(e) => {
                last = e.to_string();
                return None;
            }
        };
        match super::client::start_tls(tcp, cfg.clone(), "mx.test") {
            Ok(mut tls) => {
                let mut buf = Vec::new();
                let r = super::client::read_reply_from(&mut tls, &mut buf);
                if r.as_ref().is_some_and(|r| r.code == 220) {
                    let _ = std::io::Write::write_all(&mut tls, b"QUIT\r\n");
                    return Some(());
                }
                last = format!("{r:?}");
                None
            }
            Err(e) => {
                last = e.to_string();
                None
            }
        }
    });
    let _ = last;
}

/// The address of the first listener in mxguard's log (`listening … addr=IP:PORT` in text,
/// `"addr":"IP:PORT"` in JSON).
fn first_listening_addr(log: &str) -> Option<SocketAddr> {
    let line = log
        .lines()
        .find(|l| l.contains("listening") && l.contains("listener"))?;
    let rest = if let Some(i) = line.find("addr=") {
        &line[i + 5..]
    } else {
        let i = line.find("\"addr\":\"")?;
        &line[i + 8..]
    };
    let end = rest
        .find(|c: char| c.is_whitespace() || c == '"')
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}
