//! Postfix's `smtp-sink` on a free loopback port: accepts everything, dumps each
//! transaction to a file (optional), for load tests.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{ProcGuard, tempdir, user_ids, wait_banner};

pub const TOOLS: &[&str] = &["smtp-sink"];

pub struct SmtpSink {
    pub addr: SocketAddr,
    pub dump_dir: Option<std::path::PathBuf>,
    proc: ProcGuard,
    _tmp: tempfile::TempDir,
}

impl SmtpSink {
    /// Starts `smtp-sink -u nobody` with a listen backlog of `backlog`; with `dump`, one
    /// file per transaction in a temp directory ([`SmtpSink::dumped`] counts them).
    pub fn start(backlog: u32, dump: bool) -> SmtpSink {
        let tmp = tempdir("mxg-sink.");
        let port = super::free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut cmd = Command::new(super::which("smtp-sink").expect("smtp-sink"));
        cmd.args(["-4", "-a", "-u", "nobody", "-h", "sink.test"]);
        let dump_dir = dump.then(|| {
            let d = tmp.path().join("dump");
            std::fs::create_dir_all(&d).unwrap();
            let (uid, gid) = user_ids("nobody").expect("user nobody");
            std::os::unix::fs::chown(&d, Some(uid), Some(gid)).unwrap();
            cmd.arg("-d").arg(format!("{}/m.", d.display()));
            d
        });
        cmd.arg(format!("{addr}"))
            .arg(backlog.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(tmp.path().join("sink.err")).unwrap());
        let child = cmd.spawn().expect("spawn smtp-sink");
        let mut proc = ProcGuard::new(child, "smtp-sink", false);
        proc.term_wait = Duration::from_secs(2);
        let errf = tmp.path().join("sink.err");
        wait_banner(addr, Duration::from_secs(10), "smtp-sink", || {
            proc.check_alive().map_err(|e| {
                format!(
                    "{e}: {}",
                    std::fs::read_to_string(&errf).unwrap_or_default()
                )
            })
        });
        SmtpSink {
            addr,
            dump_dir,
            proc,
            _tmp: tmp,
        }
    }

    /// Transactions dumped so far (needs `dump`).
    pub fn dumped(&self) -> usize {
        let d = self.dump_dir.as_ref().expect("sink started without dump");
        std::fs::read_dir(d).map(|r| r.count()).unwrap_or(0)
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }
}
