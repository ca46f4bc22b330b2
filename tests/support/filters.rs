//! Real content filters from Debian 12, each a private instance on free loopback ports in
//! a temp dir (configs from `../shared/notes/filters/`), stopped by PID on drop; and a
//! scripted fake milter for exact fault injection.
//!
//! | harness | daemon | ready when |
//! |---|---|---|
//! | [`Clamd`] | clamd with a two-line EICAR signature database (never freshclam) | it answers `zPING` with `PONG` |
//! | [`ClamavMilter`] | clamav-milter in front of a [`Clamd`] | its milter port accepts |
//! | [`OpenDkim`] | opendkim signing (`Mode sv`, TCP) or verifying (`Mode v`, unix socket) with a key made by opendkim-genkey | its socket accepts |
//! | [`OpenDmarc`] | opendmarc (no DNS: `dmarc=none`) | its port accepts |
//! | [`Rspamd`] | rspamd 3.4: normal worker (HTTP) and proxy worker in milter mode with `self_scan` (~13 s to start on 2 cores) | `/ping` answers `pong` and the proxy process started |
//! | [`FakeMilter`] | a scripted milter (tokio task) | at once |

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{ProcGuard, free_port, require, tempdir, wait_for, which};

pub const CLAMAV_TOOLS: &[&str] = &["clamd", "clamav-milter"];
pub const OPENDKIM_TOOLS: &[&str] = &["opendkim", "opendkim-genkey"];
pub const OPENDMARC_TOOLS: &[&str] = &["opendmarc"];
pub const RSPAMD_TOOLS: &[&str] = &["rspamd", "curl"];

/// The EICAR test string (68 bytes), the one thing the test signature database knows.
pub const EICAR: &str = "X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";
/// GTUBE: rspamd rejects a message containing it.
pub const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";

/// Spawns `tool` with stdout and stderr going to `log`.
fn spawn(tool: &str, args: &[&str], log: &Path, name: &str) -> ProcGuard {
    let out = std::fs::File::create(log).expect("log file");
    let err = out.try_clone().unwrap();
    let child = Command::new(which(tool).unwrap_or_else(|| panic!("{tool} not found")))
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {tool}: {e}"));
    let mut g = ProcGuard::new(child, name, false);
    g.term_wait = Duration::from_secs(5);
    g
}

fn log_tail(log: &Path) -> String {
    let s = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Waits until `addr` accepts a TCP connection, failing early if the process died.
fn wait_accepting(addr: SocketAddr, guard: &mut ProcGuard, log: &Path, timeout: Duration) {
    wait_for(timeout, &format!("{} on {addr}", guard.name), || {
        if let Err(e) = guard.check_alive() {
            panic!("{e}; log:\n{}", log_tail(log));
        }
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()
    });
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// clamd on a loopback TCP port, with only the two custom EICAR signatures.
pub struct Clamd {
    pub addr: SocketAddr,
    pub guard: ProcGuard,
    pub dir: tempfile::TempDir,
}

impl Clamd {
    /// `None` when clamd is missing outside CI (under `CI=true` that panics).
    pub fn start() -> Option<Clamd> {
        if !require(CLAMAV_TOOLS, true) {
            return None;
        }
        let dir = tempdir("mxg-clamd.");
        let d = dir.path();
        std::fs::create_dir_all(d.join("db")).unwrap();
        std::fs::create_dir_all(d.join("run")).unwrap();
        write(
            &d.join("db/test.hdb"),
            "44d88612fea8a8f36de82e1278abb02f:68:Local.EICAR.hdb\n",
        );
        write(
            &d.join("db/test.ndb"),
            "Local.EICAR.ndb:0:*:45494341522d5354414e444152442d414e544956495255532d544553542d46494c45\n",
        );
        let port = free_port();
        let conf = d.join("clamd.conf");
        write(
            &conf,
            &format!(
                "Foreground yes\nDatabaseDirectory {db}\nTCPSocket {port}\nTCPAddr 127.0.0.1\n\
                 LogFile {dir}/clamd.log\nLogVerbose yes\nPidFile {dir}/run/clamd.pid\n\
                 TemporaryDirectory {dir}/run\nUser root\n",
                db = d.join("db").display(),
                dir = d.display()
            ),
        );
        let log = d.join("clamd.out");
        let mut guard = spawn("clamd", &["-c", conf.to_str().unwrap()], &log, "clamd");
        let addr = loopback(port);
        wait_for(Duration::from_secs(120), "clamd to answer PING", || {
            if let Err(e) = guard.check_alive() {
                panic!("{e}; log:\n{}", log_tail(&log));
            }
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(2))).ok();
            s.write_all(b"zPING\0").ok()?;
            let mut buf = [0u8; 16];
            let n = s.read(&mut buf).ok()?;
            (buf[..n] == *b"PONG\0").then_some(())
        });
        Some(Clamd { addr, guard, dir })
    }
}

/// clamav-milter (`OnInfected Reject`, `AddHeader Replace`) in front of `clamd`.
pub struct ClamavMilter {
    pub addr: SocketAddr,
    pub guard: ProcGuard,
    pub dir: tempfile::TempDir,
}

impl ClamavMilter {
    pub fn start(clamd: &Clamd) -> ClamavMilter {
        let dir = tempdir("mxg-clamav-milter.");
        let d = dir.path();
        let port = free_port();
        let conf = d.join("clamav-milter.conf");
        write(
            &conf,
            &format!(
                "Foreground yes\nMilterSocket inet:{port}@127.0.0.1\nClamdSocket tcp:127.0.0.1:{cport}\n\
                 OnInfected Reject\nOnFail Defer\nAddHeader Replace\nLogFile {dir}/milter.log\n\
                 LogVerbose yes\nLogInfected Full\nPidFile {dir}/milter.pid\n\
                 TemporaryDirectory {dir}\nUser root\n",
                cport = clamd.addr.port(),
                dir = d.display()
            ),
        );
        let log = d.join("milter.out");
        let mut guard = spawn(
            "clamav-milter",
            &["-c", conf.to_str().unwrap()],
            &log,
            "clamav-milter",
        );
        let addr = loopback(port);
        wait_accepting(addr, &mut guard, &log, Duration::from_secs(30));
        ClamavMilter { addr, guard, dir }
    }
}

/// An RSA key for `sel._domainkey.example.com` made by opendkim-genkey, and the
/// `TestPublicKeys` file a verifier reads instead of DNS.
pub struct DkimKey {
    pub private_key: PathBuf,
    pub test_keys: PathBuf,
}

impl DkimKey {
    pub fn generate(dir: &Path) -> DkimKey {
        let ok = Command::new(which("opendkim-genkey").expect("opendkim-genkey"))
            .args(["-b", "2048", "-d", "example.com", "-s", "sel", "-D"])
            .arg(dir)
            .status()
            .expect("opendkim-genkey")
            .success();
        assert!(ok, "opendkim-genkey failed");
        // sel.txt: sel._domainkey IN TXT ( "v=DKIM1; h=sha256; k=rsa; " "p=MIIB..." "..." ) ; comment
        let txt = std::fs::read_to_string(dir.join("sel.txt")).expect("sel.txt");
        let record: String = txt
            .split('"')
            .skip(1)
            .step_by(2)
            .collect::<Vec<_>>()
            .concat();
        assert!(record.contains("p="), "no key in sel.txt: {txt}");
        let test_keys = dir.join("testkeys");
        write(
            &test_keys,
            &format!("sel._domainkey.example.com {record}\n"),
        );
        DkimKey {
            private_key: dir.join("sel.private"),
            test_keys,
        }
    }
}

/// Where a milter listens, as both the test and the milter config spell it.
pub enum MilterSocket {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl MilterSocket {
    /// The address in mxguard's syntax (`127.0.0.1:port`, `unix:/path`).
    pub fn endpoint(&self) -> String {
        match self {
            MilterSocket::Tcp(a) => a.to_string(),
            MilterSocket::Unix(p) => format!("unix:{}", p.display()),
        }
    }

    /// The address in libmilter's syntax (`inet:port@127.0.0.1`, `local:/path`).
    fn libmilter(&self) -> String {
        match self {
            MilterSocket::Tcp(a) => format!("inet:{}@{}", a.port(), a.ip()),
            MilterSocket::Unix(p) => format!("local:{}", p.display()),
        }
    }
}

/// opendkim, signing for example.com (clients from 192.0.2.0/24) or verifying with the
/// test key (A-R with `AuthservID mx.test`).
pub struct OpenDkim {
    pub socket: MilterSocket,
    pub guard: ProcGuard,
    pub dir: tempfile::TempDir,
}

impl OpenDkim {
    /// `None` when opendkim is missing outside CI.
    pub fn key() -> Option<(tempfile::TempDir, DkimKey)> {
        if !require(OPENDKIM_TOOLS, true) {
            return None;
        }
        let dir = tempdir("mxg-dkim-key.");
        let key = DkimKey::generate(dir.path());
        Some((dir, key))
    }

    pub fn signer(key: &DkimKey) -> OpenDkim {
        let socket = MilterSocket::Tcp(loopback(free_port()));
        let conf = format!(
            "Mode sv\nDomain example.com\nSelector sel\nKeyFile {}\nInternalHosts 192.0.2.0/24\n\
             Canonicalization relaxed/relaxed\nRequireSafeKeys no\n",
            key.private_key.display()
        );
        OpenDkim::start(tempdir("mxg-opendkim."), socket, &conf, "opendkim-sign")
    }

    /// Signing only for sessions whose `{daemon_name}` (mxguard's listener name) is
    /// `daemon`: the loopback client is not an internal host, so the macro decides.
    pub fn signer_for_daemon(key: &DkimKey, daemon: &str) -> OpenDkim {
        let socket = MilterSocket::Tcp(loopback(free_port()));
        let conf = format!(
            "Mode sv\nDomain example.com\nSelector sel\nKeyFile {}\nInternalHosts 192.0.2.0/24\n\
             MacroList daemon_name|{daemon}\nCanonicalization relaxed/relaxed\nRequireSafeKeys no\n",
            key.private_key.display()
        );
        OpenDkim::start(tempdir("mxg-opendkim."), socket, &conf, "opendkim-sign")
    }

    /// Verifying on a unix socket (so the unix transport is tested with a real milter).
    pub fn verifier(key: &DkimKey) -> OpenDkim {
        let dir = tempdir("mxg-opendkim.");
        let socket = MilterSocket::Unix(dir.path().join("verify.sock"));
        let conf = format!(
            "Mode v\nTestPublicKeys {}\nAlwaysAddARHeader yes\nAuthservID mx.test\n\
             InternalHosts 127.0.0.1\n",
            key.test_keys.display()
        );
        OpenDkim::start(dir, socket, &conf, "opendkim-verify")
    }

    fn start(dir: tempfile::TempDir, socket: MilterSocket, extra: &str, name: &str) -> OpenDkim {
        let d = dir.path();
        let conf = d.join("opendkim.conf");
        write(
            &conf,
            &format!(
                "Socket {}\nBackground no\nPidFile {}/opendkim.pid\nSyslog no\nLogWhy yes\n{extra}",
                socket.libmilter(),
                d.display()
            ),
        );
        let log = d.join("opendkim.out");
        let mut guard = spawn("opendkim", &["-x", conf.to_str().unwrap()], &log, name);
        match &socket {
            MilterSocket::Tcp(addr) => {
                wait_accepting(*addr, &mut guard, &log, Duration::from_secs(30))
            }
            MilterSocket::Unix(path) => {
                wait_for(Duration::from_secs(30), &format!("{name} socket"), || {
                    if let Err(e) = guard.check_alive() {
                        panic!("{e}; log:\n{}", log_tail(&log));
                    }
                    std::os::unix::net::UnixStream::connect(path).ok()
                });
            }
        }
        OpenDkim { socket, guard, dir }
    }
}

/// opendmarc (`AuthservID mx.test`); without a test DNS it answers `dmarc=none`.
pub struct OpenDmarc {
    pub addr: SocketAddr,
    pub guard: ProcGuard,
    pub dir: tempfile::TempDir,
}

impl OpenDmarc {
    pub fn start() -> Option<OpenDmarc> {
        if !require(OPENDMARC_TOOLS, true) {
            return None;
        }
        let dir = tempdir("mxg-opendmarc.");
        let d = dir.path();
        let addr = loopback(free_port());
        let conf = d.join("opendmarc.conf");
        write(
            &conf,
            &format!(
                "Socket inet:{}@127.0.0.1\nBackground no\nAuthservID mx.test\n\
                 TrustedAuthservIDs mx.test\nPidFile {}/opendmarc.pid\nSyslog false\n\
                 SPFSelfValidate false\nRejectFailures true\nDNSTimeout 2\n",
                addr.port(),
                d.display()
            ),
        );
        let log = d.join("opendmarc.out");
        let mut guard = spawn(
            "opendmarc",
            &["-c", conf.to_str().unwrap()],
            &log,
            "opendmarc",
        );
        wait_accepting(addr, &mut guard, &log, Duration::from_secs(30));
        Some(OpenDmarc { addr, guard, dir })
    }
}

/// rspamd 3.4 with its normal worker (HTTP `/checkv2`) and a proxy worker in milter mode
/// scanning by itself; DNS pointed at a closed loopback port so lookups fail fast;
/// `milter_headers` adds `X-Spamd-Result`, `X-Spam-Status` and Authentication-Results.
pub struct Rspamd {
    pub http: SocketAddr,
    pub milter: SocketAddr,
    pub guard: ProcGuard,
    pub dir: tempfile::TempDir,
}

impl Rspamd {
    pub fn start() -> Option<Rspamd> {
        if !require(RSPAMD_TOOLS, true) {
            return None;
        }
        let dir = tempdir("mxg-rspamd.");
        let d = dir.path();
        for sub in ["run", "db", "log", "local.d", "override.d"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        let (http, milter, dns) = (free_port(), free_port(), free_port());
        write(
            &d.join("local.d/milter_headers.conf"),
            // Also for loopback clients (mxguard's tests): rspamd skips local ones by default.
            "use = [\"x-spamd-result\", \"authentication-results\", \"x-spam-status\"];\n\
             skip_local = false;\nskip_authenticated = false;\n",
        );
        let conf = d.join("rspamd.conf");
        write(
            &conf,
            &format!(
                r#".include "$CONFDIR/common.conf"
options {{
    pidfile = "$RUNDIR/rspamd.pid";
    .include "$CONFDIR/options.inc"
    dns {{ nameserver = ["127.0.0.1:{dns}"]; timeout = 1s; retransmits = 1; }}
    disable_hyperscan = true;
}}
logging {{ type = "console"; level = "info"; }}
worker "normal" {{
    bind_socket = "127.0.0.1:{http}";
    .include "$CONFDIR/worker-normal.inc"
    count = 1;
}}
worker "rspamd_proxy" {{
    bind_socket = "127.0.0.1:{milter}";
    milter = yes;
    timeout = 120s;
    upstream "local" {{ default = yes; self_scan = yes; }}
    count = 1;
    spam_header = "X-Spam";
    reject_message = "Spam message rejected";
}}
"#
            ),
        );
        let var = |k: &str, v: &Path| format!("--var={k}={}", v.display());
        let args = [
            "-f".to_string(),
            "-i".into(),
            "-u".into(),
            "root".into(),
            "-g".into(),
            "root".into(),
            "-c".into(),
            conf.display().to_string(),
            var("CONFDIR", Path::new("/etc/rspamd")),
            var("LOCAL_CONFDIR", d),
            var("RUNDIR", &d.join("run")),
            var("DBDIR", &d.join("db")),
            var("LOGDIR", &d.join("log")),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let log = d.join("rspamd.out");
        let mut guard = spawn("rspamd", &args, &log, "rspamd");
        // The main process leads the workers it forks; SIGTERM to it stops them all.
        guard.term_wait = Duration::from_secs(10);
        let url = format!("http://127.0.0.1:{http}/ping");
        // ~13 s on an idle 2-core machine, over a minute when it is busy compiling.
        wait_for(Duration::from_secs(240), "rspamd to answer /ping", || {
            if let Err(e) = guard.check_alive() {
                panic!("{e}; log:\n{}", log_tail(&log));
            }
            // Cheap first: both workers forked (the log says so); only then ask /ping.
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if !(text.contains("starting rspamd_proxy process")
                && text.contains("starting normal process"))
            {
                return None;
            }
            let out = Command::new("curl")
                .args(["-s", "--max-time", "2", &url])
                .output()
                .ok()?;
            out.stdout.starts_with(b"pong").then_some(())
        });
        Some(Rspamd {
            http: loopback(http),
            milter: loopback(milter),
            guard,
            dir,
        })
    }
}

/// A scripted milter for fault injection: each accepted connection runs `script`.
pub struct FakeMilter {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl FakeMilter {
    pub async fn start<F, Fut>(script: F) -> FakeMilter
    where
        F: Fn(FakeConn) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let script = std::sync::Arc::new(script);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let script = script.clone();
                tokio::spawn(async move { script(FakeConn::new(stream)).await });
            }
        });
        FakeMilter { addr, task }
    }
}

impl Drop for FakeMilter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The milter side of one connection.
pub struct FakeConn {
    pub stream: tokio::net::TcpStream,
    decoder: mxguard::milter::codec::FrameDecoder,
}

impl FakeConn {
    fn new(stream: tokio::net::TcpStream) -> Self {
        FakeConn {
            stream,
            decoder: mxguard::milter::codec::FrameDecoder::new(1 << 20),
        }
    }

    /// The next frame from the MTA; `None` when it closed.
    pub async fn recv(&mut self) -> Option<mxguard::milter::codec::Frame> {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 8192];
        loop {
            if let Some(f) = self.decoder.next_frame().expect("MTA sent a bad frame") {
                return Some(f);
            }
            let n = self.stream.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            self.decoder.feed(&buf[..n]);
        }
    }

    /// Reads frames until one with `code` (macros and others before it are skipped).
    pub async fn recv_until(&mut self, code: u8) -> Option<mxguard::milter::codec::Frame> {
        loop {
            let f = self.recv().await?;
            if f.code == code {
                return Some(f);
            }
        }
    }

    pub async fn send(&mut self, code: u8, data: &[u8]) {
        let mut out = Vec::new();
        mxguard::milter::codec::encode(&mut out, code, &[data]).unwrap();
        self.send_raw(&out).await;
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        let _ = self.stream.write_all(bytes).await;
    }

    /// Answers the MTA's option negotiation.
    pub async fn negotiate(&mut self, version: u32, actions: u32, protocol: u32) {
        let f = self.recv().await.expect("OPTNEG");
        assert_eq!(f.code, b'O');
        let mut data = version.to_be_bytes().to_vec();
        data.extend_from_slice(&actions.to_be_bytes());
        data.extend_from_slice(&protocol.to_be_bytes());
        self.send(b'O', &data).await;
    }
}
