//! A private Sendmail 8.17 on a free loopback port: the upstream that has no XCLIENT, no
//! XFORWARD, no SMTPUTF8 and no CHUNKING. The Debian packages conflict with Postfix, so
//! `sendmail-instance.sh` unpacks them once (cached) instead of installing them, and runs
//! the daemon in its own UTS namespace (Sendmail insists on a qualified host name).

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::postfix::{Delivered, read_mail_dir};
use super::{ProcGuard, tempdir, wait_banner, wait_for};

pub const TOOLS: &[&str] = &["m4", "unshare", "apt-get", "dpkg-deb"];

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/support/sendmail-instance.sh"
);

pub struct Sendmail {
    pub addr: SocketAddr,
    pub dir: PathBuf,
    proc: ProcGuard,
    _tmp: tempfile::TempDir,
}

impl Sendmail {
    /// Creates and starts an instance; returns once it has sent its `220` greeting.
    pub fn start() -> Sendmail {
        let tmp = tempdir("mxg-sm.");
        let dir = tmp.path().to_path_buf();
        let port = super::free_port();
        let out = Command::new("bash")
            .arg(SCRIPT)
            .arg("create")
            .arg(&dir)
            .arg(port.to_string())
            .stdin(Stdio::null())
            .output()
            .expect("run sendmail-instance.sh");
        assert!(
            out.status.success(),
            "sendmail-instance.sh create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let log = std::fs::File::create(dir.join("sendmail.out")).unwrap();
        let child = Command::new("bash")
            .arg(SCRIPT)
            .arg("run")
            .arg(&dir)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start sendmail");
        let mut proc = ProcGuard::new(child, "sendmail", true);
        proc.term_wait = Duration::from_secs(5);
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let d = dir.clone();
        wait_banner(addr, Duration::from_secs(30), "sendmail", || {
            proc.check_alive().map_err(|e| {
                format!(
                    "{e}\n{}",
                    std::fs::read_to_string(d.join("sendmail.out")).unwrap_or_default()
                )
            })
        });
        Sendmail {
            addr,
            dir,
            proc,
            _tmp: tmp,
        }
    }

    pub fn delivered(&self) -> Vec<Delivered> {
        read_mail_dir(&self.dir.join("mail"))
    }

    /// Waits until at least `n` messages were delivered.
    pub fn wait_delivered(&self, n: usize, timeout: Duration) -> Vec<Delivered> {
        wait_for(
            timeout,
            &format!("{n} message(s) delivered by sendmail"),
            || {
                let d = self.delivered();
                (d.len() >= n).then_some(d)
            },
        )
    }

    /// Every SMTP line Sendmail saw and sent (its `-X` trace).
    pub fn trace(&self) -> String {
        std::fs::read_to_string(self.dir.join("smtp-trace.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }
}
