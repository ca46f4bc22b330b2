//! SMTP clients for the tests: a raw-socket client that sends exact bytes (smuggling,
//! pipelining, over-long lines) from a chosen loopback source address, and runners for
//! the real clients Python `smtplib` and `swaks`.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// One SMTP reply (possibly multi-line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// Text of each line after `NNN-` / `NNN `.
    pub lines: Vec<String>,
}

impl Reply {
    /// The reply as it was on the wire, lines joined with `\n`.
    pub fn raw(&self) -> String {
        let n = self.lines.len();
        self.lines
            .iter()
            .enumerate()
            .map(|(i, l)| format!("{}{}{l}", self.code, if i + 1 == n { ' ' } else { '-' }))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `"550 5.1.1"`-style prefix check on the first line (code + enhanced code).
    pub fn is(&self, prefix: &str) -> bool {
        format!(
            "{} {}",
            self.code,
            self.lines.first().map(String::as_str).unwrap_or("")
        )
        .starts_with(prefix)
    }

    pub fn class(&self) -> u16 {
        self.code / 100
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.raw())
    }
}

/// A blocking SMTP client on a raw TCP socket.
pub struct RawClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
    /// Everything received, for diagnostics.
    pub received: Vec<u8>,
    pub timeout: Duration,
}

/// Source addresses for simulated clients: 127.0.0.2 and up (never the proxy's 127.0.0.1).
pub const CLIENT_IP: &str = "127.0.0.2";

impl RawClient {
    /// Connects from `source` (e.g. `127.0.0.2`; `None` = kernel's choice).
    pub fn connect_from(addr: SocketAddr, source: Option<&str>) -> std::io::Result<RawClient> {
        let sock = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        if let Some(src) = source {
            let ip: IpAddr = src.parse().expect("source ip");
            sock.bind(&SocketAddr::new(ip, 0).into())?;
        }
        sock.connect_timeout(&addr.into(), Duration::from_secs(5))?;
        let stream: TcpStream = sock.into();
        stream.set_nodelay(true).ok();
        Ok(RawClient {
            stream,
            buf: Vec::new(),
            received: Vec::new(),
            timeout: Duration::from_secs(30),
        })
    }

    /// Connects from 127.0.0.2 and reads the greeting, which must be `220`.
    pub fn connect(addr: SocketAddr) -> RawClient {
        let mut c = RawClient::connect_from(addr, Some(CLIENT_IP)).expect("connect");
        let g = c.reply();
        assert_eq!(g.code, 220, "greeting: {g}");
        c
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// Sends without panicking (the peer may have closed already).
    pub fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads one reply; `None` on EOF/reset or after `timeout`.
    pub fn reply_within(&mut self, timeout: Duration) -> Option<Reply> {
        let deadline = Instant::now() + timeout;
        let mut lines = Vec::new();
        let mut code = 0;
        loop {
            while let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..p + 2).collect();
                let l = String::from_utf8_lossy(&line[..p]).into_owned();
                if l.len() < 3 {
                    panic!("malformed reply line {l:?}");
                }
                code = l[..3]
                    .parse()
                    .unwrap_or_else(|_| panic!("malformed reply line {l:?}"));
                let sep = l.as_bytes().get(3).copied().unwrap_or(b' ');
                lines.push(l.get(4..).unwrap_or("").to_string());
                if sep != b'-' {
                    return Some(Reply { code, lines });
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.stream.set_read_timeout(Some(left)).ok();
            let mut tmp = [0u8; 65536];
            match self.stream.read(&mut tmp) {
                Ok(0) => return None,
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    self.received.extend_from_slice(&tmp[..n]);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    let _ = code;
                    return None;
                }
            }
        }
    }

    /// Reads one reply or panics (with what was received so far).
    pub fn reply(&mut self) -> Reply {
        let t = self.timeout;
        self.reply_within(t).unwrap_or_else(|| {
            panic!(
                "no reply within {t:?} (connection closed or silent); received so far:\n{}",
                String::from_utf8_lossy(&self.received)
            )
        })
    }

    /// Sends `line` + CRLF and reads the reply.
    pub fn cmd(&mut self, line: &str) -> Reply {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// True if the peer closes the connection (EOF or reset) within `timeout`, discarding
    /// anything it still sends.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.stream.set_read_timeout(Some(left)).ok();
            let mut tmp = [0u8; 65536];
            match self.stream.read(&mut tmp) {
                Ok(0) => return true,
                Ok(n) => self.received.extend_from_slice(&tmp[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return false;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
    }

    /// EHLO and return the reply (must be 250).
    pub fn ehlo(&mut self, name: &str) -> Reply {
        let r = self.cmd(&format!("EHLO {name}"));
        assert_eq!(r.code, 250, "EHLO: {r}");
        r
    }

    /// A whole transaction with an already dot-stuffed, CRLF-terminated body. Stops at the
    /// first non-2xx/3xx reply. Returns every reply (MAIL, RCPTs, DATA, final).
    pub fn transaction(&mut self, from: &str, rcpts: &[&str], stuffed_body: &[u8]) -> Vec<Reply> {
        let mut out = Vec::new();
        let r = self.cmd(&format!("MAIL FROM:<{from}>"));
        let ok = r.code == 250;
        out.push(r);
        if !ok {
            return out;
        }
        let mut any = false;
        for rc in rcpts {
            let r = self.cmd(&format!("RCPT TO:<{rc}>"));
            any |= r.code == 250 || r.code == 251;
            let fatal = r.code == 421;
            out.push(r);
            if fatal {
                return out;
            }
        }
        if !any {
            return out;
        }
        let r = self.cmd("DATA");
        let go = r.code == 354;
        out.push(r);
        if !go {
            return out;
        }
        self.send(stuffed_body);
        self.send(b".\r\n");
        out.push(self.reply());
        out
    }
}

/// A message of about `size` bytes: long stretches of ordinary lines and blank lines
/// (which the relay writes from its spool without a copy), and lines that start with a
/// dot — alone, doubled, or leading text — just before, at and after every 32 KiB mark
/// (where the relay's direct runs and its write batches meet). CRLF line ends.
pub fn large_message_with_dot_lines(tag: &str, size: usize) -> Vec<u8> {
    let mut m = format!(
        "From: a@example.org\r\nTo: alice@test.example\r\nSubject: {tag}\r\n\
         Message-ID: <{tag}@example.org>\r\n\r\n"
    )
    .into_bytes();
    let dot_lines: [&[u8]; 4] = [b".\r\n", b"..\r\n", b".leading dot\r\n", b"...\r\n"];
    let mut mark = 32 * 1024 - 40;
    let mut i = 0;
    while m.len() < size {
        if m.len() >= mark {
            for d in dot_lines {
                m.extend_from_slice(d);
                m.extend_from_slice(b"x\r\n");
            }
            mark += 32 * 1024 + 7;
        }
        m.extend_from_slice(
            format!("{tag} line {i:06}, ordinary text. of a long message\r\n").as_bytes(),
        );
        if i % 9 == 8 {
            m.extend_from_slice(b"\r\n");
        }
        i += 1;
    }
    m
}

/// Dot-stuffs a CRLF message for the wire (lines starting with `.` get another).
pub fn dot_stuff(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + 16);
    let mut line_start = true;
    for &b in msg {
        if line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        line_start = b == b'\n';
    }
    out
}

/// Runs a Python script with `python3 -c`, returns its output.
pub fn python(script: &str, args: &[&str]) -> Output {
    Command::new(super::which("python3").expect("python3"))
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run python3")
}

/// `smtplib` sending the bytes of `msg_file` as-is (CRLF, smtplib dot-stuffs) from
/// `source_ip`. Prints `OK <json of refused>` or `ERR <exception>`; returns (success, stdout+stderr).
pub const SMTPLIB_SEND: &str = r#"
import sys, smtplib, json
host, port, src, helo, sender, msgfile = sys.argv[1:7]
rcpts = sys.argv[7:]
data = open(msgfile, 'rb').read()
try:
    s = smtplib.SMTP(host, int(port), local_hostname=helo, source_address=(src, 0), timeout=60)
    try:
        refused = s.sendmail(sender, rcpts, data)
        print("OK", json.dumps({k: [v[0], v[1].decode()] for k, v in refused.items()}))
    finally:
        try:
            s.quit()
        except Exception:
            pass
except smtplib.SMTPRecipientsRefused as e:
    print("ERR RecipientsRefused", json.dumps({k: [v[0], v[1].decode()] for k, v in e.recipients.items()}))
    sys.exit(2)
except smtplib.SMTPResponseException as e:
    print("ERR", type(e).__name__, e.smtp_code, e.smtp_error.decode(errors="replace"))
    sys.exit(3)
except Exception as e:
    print("ERR", type(e).__name__, e)
    sys.exit(4)
"#;

pub fn smtplib_send(
    addr: SocketAddr,
    source_ip: &str,
    helo: &str,
    from: &str,
    rcpts: &[&str],
    msg_file: &Path,
) -> (bool, String) {
    let port = addr.port().to_string();
    let host = addr.ip().to_string();
    let mf = msg_file.display().to_string();
    let mut args = vec![
        host.as_str(),
        port.as_str(),
        source_ip,
        helo,
        from,
        mf.as_str(),
    ];
    args.extend_from_slice(rcpts);
    let out = python(SMTPLIB_SEND, &args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && text.starts_with("OK"), text)
}

/// `swaks` from `source_ip`, sending the CRLF message `msg` as the DATA. swaks always
/// adds a CRLF before the final dot, so the file it reads has the message's last CRLF
/// taken off: the upstream then gets exactly `msg`. Extra args are appended.
/// Returns the exit status success and the transcript.
pub fn swaks_send(
    addr: SocketAddr,
    source_ip: &str,
    helo: &str,
    from: &str,
    to: &str,
    msg: &[u8],
    extra: &[&str],
) -> (bool, String) {
    let tmp = super::tempdir("mxg-swaks.");
    let msg_file = tmp.path().join("msg.eml");
    std::fs::write(&msg_file, msg.strip_suffix(b"\r\n").unwrap_or(msg)).unwrap();
    let out = Command::new(super::which("swaks").expect("swaks"))
        .arg("--server")
        .arg(addr.to_string())
        .arg("--local-interface")
        .arg(source_ip)
        .args(["--ehlo", helo, "--from", from, "--to", to])
        .arg("--data")
        .arg(format!("@{}", msg_file.display()))
        .args(["--timeout", "60"])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("run swaks");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Reads one SMTP reply from any stream (e.g. a TLS stream); `None` on EOF or error.
/// `buf` carries bytes read past the reply to the next call.
pub fn read_reply_from<S: Read>(s: &mut S, buf: &mut Vec<u8>) -> Option<Reply> {
    let mut lines = Vec::new();
    loop {
        while let Some(p) = buf.windows(2).position(|w| w == b"\r\n") {
            let l: Vec<u8> = buf.drain(..p + 2).collect();
            let l = String::from_utf8_lossy(&l[..p]).into_owned();
            let code: u16 = l.get(..3)?.parse().ok()?;
            lines.push(l.get(4..).unwrap_or("").to_string());
            if l.as_bytes().get(3) != Some(&b'-') {
                return Some(Reply { code, lines });
            }
        }
        let mut tmp = [0u8; 16384];
        match s.read(&mut tmp) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
}

pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// Starts TLS on an open TCP stream, checking the certificate for `name`.
pub fn start_tls(
    tcp: TcpStream,
    cfg: std::sync::Arc<rustls::ClientConfig>,
    name: &str,
) -> std::io::Result<TlsStream> {
    tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
    let server_name = rustls_pki_types::ServerName::try_from(name.to_string())
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let conn = rustls::ClientConnection::new(cfg, server_name).map_err(std::io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

/// Sends `line` + CRLF over any stream and reads the reply.
pub fn cmd_on<S: Read + Write>(s: &mut S, buf: &mut Vec<u8>, line: &str) -> Option<Reply> {
    s.write_all(format!("{line}\r\n").as_bytes()).ok()?;
    s.flush().ok()?;
    read_reply_from(s, buf)
}
