//! A private Postfix instance on a loopback port, owned by the test (a port of the team's
//! `postfix-instance.sh`): own config, queue, data and mail directories, `master -d` in its
//! own process group, delivery to files by a pipe(8) script.
//!
//! Trust is deliberately narrow: `mynetworks` and `smtpd_authorized_xclient_hosts` are
//! `127.0.0.1/32` only (the proxy's address); simulated clients bind 127.0.0.2 and up, so a
//! test that shows their address in Postfix's Received line proves XCLIENT, not luck.
//! `smtpd_forbid_bare_newline = no`: this upstream stays vulnerable to SMTP smuggling on
//! purpose, so that the smuggling tests would see a smuggled message if the proxy let it by.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use super::{ProcGuard, tempdir, user_ids, wait_banner, wait_for};

pub const MASTER: &str = "/usr/lib/postfix/sbin/master";

/// Tools a Postfix test needs (checked with [`super::require`], root required).
pub const TOOLS: &[&str] = &["postfix", MASTER];

/// Options for [`Postfix::start`].
#[derive(Clone, Debug)]
pub struct PostfixOpts {
    pub hostname: String,
    /// Extra `main.cf` lines (`key = value`), each replacing any earlier setting of its key.
    pub extra_main_cf: Vec<String>,
    /// `(user, password)` pairs for AUTH PLAIN/LOGIN through Cyrus SASL with a private
    /// sasldb (Debian's Postfix reads `smtpd.conf` from `$config_directory/sasl`).
    pub sasl_users: Vec<(String, String)>,
    /// SENDING mode: relay all mail (from loopback clients) to this host, e.g.
    /// `[127.0.0.1]:2525`, instead of delivering to files. Postfix as a client MTA.
    pub relayhost: Option<String>,
    /// Source address of the outbound SMTP client in sending mode (e.g. `127.0.0.7`).
    pub smtp_bind_address: Option<String>,
}

impl Default for PostfixOpts {
    fn default() -> Self {
        PostfixOpts {
            hostname: "mx.test".into(),
            extra_main_cf: Vec::new(),
            sasl_users: Vec::new(),
            relayhost: None,
            smtp_bind_address: None,
        }
    }
}

/// A running private Postfix. Dropping it stops master (SIGTERM to its group) and removes
/// the directory (unless `MXGUARD_TEST_KEEP=1`).
pub struct Postfix {
    pub addr: SocketAddr,
    pub dir: PathBuf,
    master: Option<ProcGuard>,
    _tmp: tempfile::TempDir,
}

/// One delivered message: the file as Postfix queued it (its Received line first, LF line
/// ends, dot-unstuffed) and the envelope the `deliver` script recorded.
#[derive(Clone, Debug)]
pub struct Delivered {
    pub path: PathBuf,
    pub eml: Vec<u8>,
    pub env: BTreeMap<String, String>,
}

impl Delivered {
    /// The message without Postfix's own (first) `Received:` header and its continuations.
    pub fn without_first_received(&self) -> &[u8] {
        assert!(
            self.eml.starts_with(b"Received: "),
            "delivered message does not start with Postfix's Received line: {:?}",
            String::from_utf8_lossy(&self.eml[..self.eml.len().min(200)])
        );
        let mut i = 0;
        loop {
            let nl = self.eml[i..]
                .iter()
                .position(|&b| b == b'\n')
                .map(|p| i + p + 1)
                .unwrap_or(self.eml.len());
            i = nl;
            if i >= self.eml.len() || !(self.eml[i] == b' ' || self.eml[i] == b'\t') {
                return &self.eml[i..];
            }
        }
    }

    /// The message without every `Received:` field at its top: Postfix's, and ours for a
    /// client hop Postfix cannot describe itself (e.g. the client's TLS).
    pub fn without_trace(&self) -> &[u8] {
        let mut rest: &[u8] = &self.eml;
        while rest.starts_with(b"Received: ") {
            let mut i = 0;
            loop {
                i = rest[i..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map(|p| i + p + 1)
                    .unwrap_or(rest.len());
                if i >= rest.len() || !(rest[i] == b' ' || rest[i] == b'\t') {
                    break;
                }
            }
            rest = &rest[i..];
        }
        rest
    }

    /// Every `Received:` field at the top of the message, unfolded, in order.
    pub fn trace(&self) -> Vec<String> {
        let head = &self.eml[..self.eml.len() - self.without_trace().len()];
        let text = String::from_utf8_lossy(head)
            .replace("\n\t", " ")
            .replace("\n ", " ");
        text.lines().map(str::to_owned).collect()
    }

    /// Postfix's Received header (with continuation lines), as text.
    pub fn first_received(&self) -> String {
        let rest = self.without_first_received().len();
        String::from_utf8_lossy(&self.eml[..self.eml.len() - rest]).into_owned()
    }

    pub fn env(&self, key: &str) -> &str {
        self.env.get(key).map(String::as_str).unwrap_or("")
    }
}

impl Postfix {
    /// Writes a fresh instance and starts it on a free port of 127.0.0.1; returns once it
    /// has sent its `220 ` greeting.
    pub fn start() -> Postfix {
        Postfix::start_with(PostfixOpts::default())
    }

    /// Starts an instance; a master that exits before its greeting (another process won
    /// the race for the free port) is retried on a fresh port, at most three times.
    pub fn start_with(opts: PostfixOpts) -> Postfix {
        let mut last = String::new();
        for _ in 0..3 {
            match Postfix::try_start(&opts) {
                Ok(pf) => return pf,
                Err(e) => last = e,
            }
        }
        panic!("postfix did not start three times: {last}");
    }

    fn try_start(opts: &PostfixOpts) -> Result<Postfix, String> {
        let tmp = tempdir("mxg-pfx.");
        let dir = tmp.path().to_path_buf();
        let port = super::free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        write_instance(&dir, addr, opts);
        let log = std::fs::File::create(dir.join("master.out")).unwrap();
        let child = Command::new(MASTER)
            .arg("-c")
            .arg(dir.join("etc"))
            .arg("-d")
            // crash safety net: the instance exits by itself after 10 minutes
            .args(["-e", "600"])
            // REQUIRED: master's SIGTERM handler signals its own process group
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn postfix master");
        let mut guard = ProcGuard::new(child, "postfix master", true);
        guard.term_wait = Duration::from_secs(5);
        let mut pf = Postfix {
            addr,
            dir,
            master: Some(guard),
            _tmp: tmp,
        };
        let dir = pf.dir.clone();
        let master = pf.master.as_mut().unwrap();
        let died = std::cell::Cell::new(None);
        let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_banner(addr, Duration::from_secs(20), "postfix", || {
                master.check_alive().map_err(|e| {
                    let why = format!(
                        "{e}\n--- master.out ---\n{}\n--- maillog ---\n{}",
                        std::fs::read_to_string(dir.join("master.out")).unwrap_or_default(),
                        std::fs::read_to_string(dir.join("maillog")).unwrap_or_default()
                    );
                    died.set(Some(why.clone()));
                    why
                })
            })
        }));
        match (started, died.take()) {
            (Ok(()), _) => Ok(pf),
            // The master exited: worth another try on another port.
            (Err(_), Some(why)) => Err(why),
            // No greeting in time from a live master: a real failure.
            (Err(p), None) => std::panic::resume_unwind(p),
        }
    }

    pub fn mail_dir(&self) -> PathBuf {
        self.dir.join("mail")
    }

    /// Submits a message with Postfix's own `sendmail -C DIR/etc` (as root: no postdrop
    /// trouble); the message goes through the queue like any local submission.
    pub fn sendmail(&self, from: &str, to: &[&str], msg: &[u8]) {
        use std::io::Write;
        let mut child = Command::new("/usr/sbin/sendmail")
            .arg("-C")
            .arg(self.dir.join("etc"))
            // -i: a line with a lone "." is content, not the end of input
            .arg("-i")
            .arg("-f")
            .arg(from)
            .args(to)
            .stdin(Stdio::piped())
            .spawn()
            .expect("postfix sendmail");
        child.stdin.take().unwrap().write_all(msg).unwrap();
        let st = child.wait().unwrap();
        assert!(st.success(), "sendmail -C: {st}\n{}", self.maillog());
    }

    pub fn maillog(&self) -> String {
        std::fs::read_to_string(self.dir.join("maillog")).unwrap_or_default()
    }

    /// Messages delivered so far, oldest first.
    pub fn delivered(&self) -> Vec<Delivered> {
        read_mail_dir(&self.mail_dir())
    }

    /// Waits until at least `n` messages are delivered (panics with the mail log after
    /// `timeout`), then returns all of them.
    pub fn wait_delivered(&self, n: usize, timeout: Duration) -> Vec<Delivered> {
        let t0 = std::time::Instant::now();
        loop {
            let d = self.delivered();
            if d.len() >= n {
                return d;
            }
            if t0.elapsed() > timeout {
                panic!(
                    "postfix delivered {} message(s), expected {n} within {timeout:?}\n--- maillog ---\n{}",
                    d.len(),
                    self.maillog()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until Postfix has nothing left to do: every smtpd session has disconnected,
    /// the queue directories are empty and every message that entered the active queue was
    /// removed (delivered). Then returns what was delivered. Use after the client and the
    /// proxy have finished (stop the proxy first: it may keep upstream sessions open), to
    /// assert "exactly N, no more".
    pub fn settle(&self, timeout: Duration) -> Vec<Delivered> {
        wait_for(
            timeout,
            "postfix to settle (sessions closed, queue empty)",
            || {
                let log = self.maillog();
                let connects = log.matches(": connect from ").count();
                let disconnects = log.matches(": disconnect from ").count();
                let active = log.matches(" (queue active)").count();
                let removed = log.matches(": removed").count();
                (connects == disconnects && active == removed && self.no_pending_queue())
                    .then_some(())
            },
        );
        self.delivered()
    }

    fn no_pending_queue(&self) -> bool {
        ["incoming", "active", "deferred", "maildrop"]
            .iter()
            .all(|q| {
                let p = self.dir.join("spool").join(q);
                count_files(&p) == 0
            })
    }

    /// The PID of master.
    pub fn pid(&self) -> u32 {
        self.master.as_ref().map(|m| m.pid()).unwrap_or(0)
    }
}

fn count_files(p: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(p) else {
        return 0;
    };
    rd.flatten()
        .map(|e| {
            if e.path().is_dir() {
                count_files(&e.path())
            } else {
                1
            }
        })
        .sum()
}

impl Drop for Postfix {
    fn drop(&mut self) {
        // master's SIGTERM handler takes its whole process group down
        drop(self.master.take());
    }
}

const DELIVER: &str = r#"#!/bin/sh
# deliver OUTDIR QUEUE_ID SENDER RECIPIENT ORIG_RCPT CLIENT_ADDR CLIENT_NAME CLIENT_HELO PROTO SASL_USER SIZE
out=$1 qid=$2
tmp=$(mktemp "$out/.tmp.$qid.XXXXXX") || exit 75
cat > "$tmp" || { rm -f "$tmp"; exit 75; }
base="$out/$qid.${tmp##*.}"
printf 'queue_id=%s\nsender=%s\nrecipient=%s\noriginal_recipient=%s\nclient_address=%s\nclient_hostname=%s\nclient_helo=%s\nclient_protocol=%s\nsasl_username=%s\nsize=%s\n' \
  "$2" "$3" "$4" "$5" "$6" "$7" "$8" "$9" "${10}" "${11}" > "$base.env.tmp" || exit 75
chmod 644 "$tmp" "$base.env.tmp"
mv "$base.env.tmp" "$base.env" && mv "$tmp" "$base.eml" || exit 75
exit 0
"#;

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn write_instance(dir: &Path, addr: SocketAddr, opts: &PostfixOpts) {
    let d = dir.display();
    for sub in ["etc", "spool", "data", "mail", "bin"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let (pf_uid, pf_gid) = user_ids("postfix").expect("user postfix (apt-get install postfix)");
    let (nb_uid, nb_gid) = user_ids("nobody").expect("user nobody");
    let chmod = |p: PathBuf, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
    };
    std::os::unix::fs::chown(dir.join("data"), Some(pf_uid), Some(pf_gid)).unwrap();
    chmod(dir.join("data"), 0o700);
    std::os::unix::fs::chown(dir.join("mail"), Some(nb_uid), Some(nb_gid)).unwrap();
    chmod(dir.join("mail"), 0o755);
    chmod(dir.join("spool"), 0o755);
    chmod(dir.join("bin"), 0o755);
    write(&dir.join("maillog"), "");
    chmod(dir.join("maillog"), 0o644);
    write(&dir.join("bin/deliver"), DELIVER);
    chmod(dir.join("bin/deliver"), 0o755);

    let domains = "test.example";
    let catchall = "any.example";
    let mut recipients = String::new();
    for u in ["alice", "bob", "carol", "tempfail"] {
        recipients += &format!("{u}@{domains} ok\n");
    }
    recipients += &format!("@{catchall} ok\n");
    write(&dir.join("etc/recipients"), &recipients);
    write(
        &dir.join("etc/sender_access"),
        "reject-mail@any.example\t550 5.7.1 upstream rejects this sender at MAIL\n\
         tempfail-mail@any.example\t451 4.7.1 upstream tempfails this sender at MAIL\n",
    );
    write(
        &dir.join("etc/recipient_access"),
        "tempfail@test.example\t450 4.2.0 upstream tempfails this recipient at RCPT\n\
         reject-rcpt@any.example\t550 5.7.1 upstream rejects this recipient at RCPT\n",
    );
    write(
        &dir.join("etc/data_access"),
        "reject-data@any.example\t554 5.7.1 upstream rejects at DATA\n",
    );
    write(
        &dir.join("etc/eod_access"),
        "tempfail-eod@any.example\t451 4.7.1 upstream tempfails at end of DATA\n",
    );
    write(
        &dir.join("etc/header_checks"),
        "/^Subject:.*\\[upstream-reject\\]/\tREJECT 5.7.1 upstream rejects content at end of DATA\n",
    );

    let ip = addr.ip();
    let port = addr.port();
    let host = &opts.hostname;
    let mydomain = host.split_once('.').map(|x| x.1).unwrap_or("test");
    let mut main_cf = format!(
        "compatibility_level = 3.6
queue_directory = {d}/spool
data_directory = {d}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = {host}
mydomain = {mydomain}
myorigin = $myhostname
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = {ip}
# all (not ipv4): XCLIENT ADDR=IPV6:... must be accepted
inet_protocols = all
smtpd_authorized_xclient_hosts = 127.0.0.1/32
smtpd_authorized_xforward_hosts = 127.0.0.1/32
biff = no
maillog_file = {d}/maillog
maillog_file_prefixes = {d}
smtpd_peername_lookup = no
local_header_rewrite_clients =
smtp_dns_support_level = disabled
smtpd_error_sleep_time = 0
in_flow_delay = 0
queue_run_delay = 10s
minimal_backoff_time = 10s
maximal_backoff_time = 20s
smtpd_banner = $myhostname ESMTP test-upstream
# vulnerable to SMTP smuggling on purpose: the proxy must protect it
smtpd_forbid_bare_newline = no
smtpd_delay_reject = no
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_client_message_rate_limit = 0
smtpd_client_recipient_rate_limit = 0
default_process_limit = 200
smtpd_sender_restrictions = check_sender_access texthash:{d}/etc/sender_access
smtpd_recipient_restrictions = check_recipient_access texthash:{d}/etc/recipient_access
smtpd_data_restrictions = check_sender_access texthash:{d}/etc/data_access
smtpd_end_of_data_restrictions = check_sender_access texthash:{d}/etc/eod_access
header_checks = regexp:{d}/etc/header_checks
message_size_limit = 104857600
"
    );
    // No key may appear twice in main.cf: Postfix then logs "overriding earlier entry"
    // from every process, and under load that logging has been seen to wedge the
    // instance (smtpd and postlogd stuck writing to the postlog socket).
    if let Some(relayhost) = &opts.relayhost {
        // SENDING mode: everything from loopback goes to the relay host, nothing to files
        main_cf += &format!(
            "relayhost = {relayhost}\n\
             mynetworks = 127.0.0.0/8\n\
             smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination\n\
             smtp_tls_security_level = none\n"
        );
        if let Some(src) = &opts.smtp_bind_address {
            main_cf += &format!("smtp_bind_address = {src}\n");
        }
    } else {
        // RECEIVING mode: virtual mailbox domains delivered to files; trust only the
        // proxy's own address (test clients bind 127.0.0.2 and up)
        main_cf += &format!(
            "mynetworks = 127.0.0.1/32\n\
             virtual_mailbox_domains = {domains} {catchall}\n\
             virtual_mailbox_maps = texthash:{d}/etc/recipients\n\
             virtual_transport = filesink\n\
             filesink_destination_recipient_limit = 1\n\
             smtpd_relay_restrictions = reject_unauth_destination\n\
             default_transport = error:5.7.1 test instance does not deliver outside\n\
             relay_transport = error:5.7.1 test instance does not relay\n"
        );
    }
    if !opts.sasl_users.is_empty() {
        main_cf += &write_sasl(dir, opts, pf_gid);
    }
    for l in &opts.extra_main_cf {
        main_cf = set_main_cf(&main_cf, l);
    }
    write(&dir.join("etc/main.cf"), &main_cf);

    let master_cf = format!(
        "{ip}:{port} inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
filesink  unix  -       n       n       -       -       pipe
  flags= user=nobody null_sender= argv={d}/bin/deliver {d}/mail ${{queue_id}} ${{sender}} ${{recipient}} ${{original_recipient}} ${{client_address}} ${{client_hostname}} ${{client_helo}} ${{client_protocol}} ${{sasl_username}} ${{size}}
"
    );
    write(&dir.join("etc/master.cf"), &master_cf);

    // Postfix re-reads files changed "very recently" (300 ms sleeps, ~2 s in all):
    // backdate them so the first command is fast.
    let past = SystemTime::now() - Duration::from_secs(10);
    for e in std::fs::read_dir(dir.join("etc")).unwrap().flatten() {
        if let Ok(f) = std::fs::File::options().write(true).open(e.path()) {
            let _ = f.set_modified(past);
        }
    }
    // post-install create-missing: spool subdirectories with the right owners and modes
    let out = Command::new(super::which("postfix").expect("postfix"))
        .arg("-c")
        .arg(dir.join("etc"))
        .arg("check")
        .stdin(Stdio::null())
        .output()
        .expect("postfix check");
    if !out.status.success() {
        panic!(
            "postfix -c {d}/etc check failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Writes `etc/sasl/smtpd.conf` and a sasldb with the users; returns the main.cf lines.
fn write_sasl(dir: &Path, opts: &PostfixOpts, postfix_gid: u32) -> String {
    let sasl = dir.join("etc/sasl");
    std::fs::create_dir_all(&sasl).unwrap();
    let db = sasl.join("sasldb2");
    write(
        &sasl.join("smtpd.conf"),
        &format!(
            "pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: PLAIN LOGIN\nsasldb_path: {}\n",
            db.display()
        ),
    );
    for (user, password) in &opts.sasl_users {
        let mut child = Command::new(super::which("saslpasswd2").expect("saslpasswd2 (sasl2-bin)"))
            .args(["-p", "-c", "-f"])
            .arg(&db)
            .args(["-u", &opts.hostname, user])
            .stdin(Stdio::piped())
            .spawn()
            .expect("saslpasswd2");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(password.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "saslpasswd2 for {user}");
    }
    std::os::unix::fs::chown(&db, Some(0), Some(postfix_gid)).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o640)).unwrap();
    format!(
        "smtpd_sasl_auth_enable = yes\nsmtpd_sasl_type = cyrus\nsmtpd_sasl_path = smtpd\ncyrus_sasl_config_path = {}\nsmtpd_sasl_local_domain = $myhostname\n",
        sasl.display()
    )
}

/// The `*.eml` files (with their `.env` envelopes) a delivery script wrote to `dir`,
/// oldest first. Shared by the Postfix and Sendmail harnesses.
pub fn read_mail_dir(dir: &Path) -> Vec<Delivered> {
    let mut out: Vec<(SystemTime, Delivered)> = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("eml") {
            continue;
        }
        let mtime = e
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let eml = std::fs::read(&p).unwrap_or_default();
        let env = std::fs::read_to_string(p.with_extension("env"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        out.push((mtime, Delivered { path: p, eml, env }));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.path.cmp(&b.1.path)));
    out.into_iter().map(|(_, d)| d).collect()
}

/// Appends `line` (`key = value`) to a main.cf text, dropping an earlier setting of the
/// same key (and its continuation lines): later settings win without the duplicate-key
/// warnings that can wedge an instance's logging.
fn set_main_cf(main_cf: &str, line: &str) -> String {
    let key = |l: &str| l.split('=').next().unwrap_or("").trim().to_string();
    let k = key(line);
    let mut out = String::new();
    let mut skipping = false;
    for l in main_cf.lines() {
        let continuation = l.starts_with(' ') || l.starts_with('\t');
        if continuation && skipping {
            continue;
        }
        skipping = !continuation && !l.starts_with('#') && l.contains('=') && key(l) == k;
        if !skipping {
            out += l;
            out += "\n";
        }
    }
    out += line;
    out += "\n";
    out
}
