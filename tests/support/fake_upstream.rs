//! A scripted upstream SMTP server for fault injection (tokio, on its own runtime so that
//! plain `#[test]` functions can use it). It speaks just enough SMTP for a proxy's relay
//! (EHLO with configurable capabilities, XCLIENT answered with a new greeting as Postfix
//! does, MAIL, RCPT, DATA with a strict `CRLF.CRLF` end) and records everything it got:
//! every byte per connection, and every message whose DATA it read to the end.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Where a fault strikes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Greeting,
    Ehlo,
    /// The first XCLIENT of a connection.
    Xclient,
    Mail,
    Rcpt,
    Data,
    /// After the final dot of DATA.
    DataEnd,
}

/// What the fake upstream does wrong. Applies on every connection that gets that far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Answer this command stage with `reply` (e.g. `421 4.3.2 going down`), then close
    /// the connection if `close`.
    Reply {
        stage: Stage,
        reply: String,
        close: bool,
    },
    /// Reset the connection (RST, SO_LINGER 0) after `after` bytes of message content.
    ResetMidData {
        after: usize,
    },
    /// Never answer at this stage; keep the connection open (until the test ends).
    Stall(Stage),
    /// After accepting each message, say this (e.g. Postfix's idle
    /// `421 4.4.2 fake.test Error: timeout exceeded`) and close: a reused upstream
    /// connection that died between two transactions.
    CloseAfterMessage(String),
    /// A connection that says nothing for this long after its EHLO reply, before any
    /// XCLIENT or MAIL (a warm pooled connection waiting for a session), gets Postfix's
    /// idle `421 4.4.2 fake.test Error: timeout exceeded` and is closed. Connections that
    /// go on at once (a session's own) never notice.
    IdleAfterEhlo(Duration),
}

#[derive(Clone, Debug)]
pub struct Script {
    pub greeting: String,
    pub hostname: String,
    /// EHLO keywords after the hostname line.
    pub caps: Vec<String>,
    pub fault: Fault,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            greeting: "220 fake.test ESMTP fake-upstream".into(),
            hostname: "fake.test".into(),
            caps: vec![
                "PIPELINING".into(),
                "SIZE 104857600".into(),
                "ENHANCEDSTATUSCODES".into(),
                "8BITMIME".into(),
                "SMTPUTF8".into(),
                "XCLIENT NAME ADDR PROTO HELO REVERSE_NAME PORT LOGIN DESTADDR DESTPORT".into(),
            ],
            fault: Fault::None,
        }
    }
}

impl Script {
    pub fn with_fault(fault: Fault) -> Script {
        Script {
            fault,
            ..Script::default()
        }
    }
}

/// One message as the upstream read it.
#[derive(Clone, Debug, Default)]
pub struct Message {
    pub conn: usize,
    pub mail_from: String,
    pub rcpts: Vec<String>,
    /// The DATA bytes exactly as received, from after the 354 up to and including the
    /// terminating `CRLF.CRLF` (the leading CRLF of the terminator belongs to the content).
    pub raw: Vec<u8>,
    /// The reply the fake sent after the final dot (`None`: stalled or reset).
    pub final_reply: Option<String>,
}

impl Message {
    /// The content: `raw` without the final `.CRLF`, dot-unstuffed.
    pub fn content(&self) -> Vec<u8> {
        let body = &self.raw[..self.raw.len().saturating_sub(3)];
        let mut out = Vec::with_capacity(body.len());
        let mut line_start = true;
        let mut i = 0;
        while i < body.len() {
            if line_start && body[i] == b'.' {
                i += 1; // remove one stuffing dot
                line_start = false;
                continue;
            }
            line_start = body[i] == b'\n' && i > 0 && body[i - 1] == b'\r';
            out.push(body[i]);
            i += 1;
        }
        out
    }

    pub fn accepted(&self) -> bool {
        self.final_reply
            .as_deref()
            .is_some_and(|r| r.starts_with("250"))
    }
}

#[derive(Clone, Debug, Default)]
pub struct ConnRecord {
    /// Every byte the upstream received on this connection.
    pub raw: Vec<u8>,
    /// Command lines (without CRLF), in order.
    pub commands: Vec<String>,
    /// For each command line: whether bytes of the next one had already arrived when
    /// it was read, i.e. the sender did not wait for its reply (it pipelined).
    pub followed_at_once: Vec<bool>,
}

#[derive(Default)]
struct State {
    conns: Vec<ConnRecord>,
    messages: Vec<Message>,
    /// Messages whose DATA started but never ended (reset or stall mid-DATA).
    partial: usize,
    /// Connections closed by [`Fault::IdleAfterEhlo`].
    idle_closed: usize,
}

pub struct FakeUpstream {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    accept_task: Option<tokio::task::JoinHandle<()>>,
    rt: Option<tokio::runtime::Runtime>,
}

impl FakeUpstream {
    pub fn start(script: Script) -> FakeUpstream {
        FakeUpstream::start_on("127.0.0.1:0".parse().unwrap(), script)
    }

    /// Listens on `addr` (e.g. a port reserved earlier, where nothing listened so far).
    pub fn start_on(addr: SocketAddr, script: Script) -> FakeUpstream {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(TcpListener::bind(addr))
            .expect("bind fake upstream");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        let script = Arc::new(script);
        let accept_task = rt.spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                let idx = {
                    let mut s = st.lock().unwrap();
                    s.conns.push(ConnRecord::default());
                    s.conns.len() - 1
                };
                let st = st.clone();
                let script = script.clone();
                tokio::spawn(async move {
                    let _ = serve(sock, idx, &script, &st).await;
                });
            }
        });
        FakeUpstream {
            addr,
            state,
            accept_task: Some(accept_task),
            rt: Some(rt),
        }
    }

    /// Closes the listening socket: from now on connections are refused. Connections
    /// already open are left alone.
    pub fn stop_listening(&mut self) {
        if let Some(t) = self.accept_task.take() {
            t.abort();
            // wait until the task (and with it the listener) is gone
            let rt = self.rt.as_ref().unwrap();
            let _ = rt.block_on(t);
        }
    }

    pub fn connections(&self) -> Vec<ConnRecord> {
        self.state.lock().unwrap().conns.clone()
    }

    /// Messages whose DATA was read to the final dot.
    pub fn messages(&self) -> Vec<Message> {
        self.state.lock().unwrap().messages.clone()
    }

    /// Messages the fake answered 250 to.
    pub fn accepted(&self) -> Vec<Message> {
        self.messages()
            .into_iter()
            .filter(|m| m.accepted())
            .collect()
    }

    /// DATA transfers that started but did not end.
    pub fn partial(&self) -> usize {
        self.state.lock().unwrap().partial
    }

    /// Connections the fake closed because they idled after EHLO ([`Fault::IdleAfterEhlo`]).
    pub fn idle_closed(&self) -> usize {
        self.state.lock().unwrap().idle_closed
    }

    /// All bytes received, on all connections, for diagnostics.
    pub fn transcript(&self) -> String {
        let s = self.state.lock().unwrap();
        let mut out = String::new();
        for (i, c) in s.conns.iter().enumerate() {
            let shown = &c.raw[..c.raw.len().min(4000)];
            out += &format!(
                "--- conn {i} ({} bytes) ---\n{}\n",
                c.raw.len(),
                String::from_utf8_lossy(shown)
            );
        }
        out
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        // Dropped means gone: its port and every connection closed when drop returns
        // (shutdown_background left them to close a moment later, and a test that
        // kills an upstream raced its own sessions). Inside a runtime a blocking wait is
        // not allowed; there the closing stays in the background.
        if let Some(rt) = self.rt.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                rt.shutdown_background();
            } else {
                rt.shutdown_timeout(std::time::Duration::from_secs(5));
            }
        }
    }
}

struct Conn<'a> {
    sock: TcpStream,
    buf: Vec<u8>,
    idx: usize,
    st: &'a Mutex<State>,
}

impl Conn<'_> {
    async fn fill(&mut self) -> std::io::Result<usize> {
        let mut tmp = [0u8; 16384];
        let n = self.sock.read(&mut tmp).await?;
        if n > 0 {
            self.buf.extend_from_slice(&tmp[..n]);
            self.st.lock().unwrap().conns[self.idx]
                .raw
                .extend_from_slice(&tmp[..n]);
        }
        Ok(n)
    }

    async fn line(&mut self) -> std::io::Result<Option<String>> {
        loop {
            if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..p + 2).collect();
                let l = String::from_utf8_lossy(&line[..p]).into_owned();
                let conn = &mut self.st.lock().unwrap().conns[self.idx];
                conn.commands.push(l.clone());
                conn.followed_at_once.push(!self.buf.is_empty());
                return Ok(Some(l));
            }
            if self.fill().await? == 0 {
                return Ok(None);
            }
        }
    }

    async fn say(&mut self, reply: &str) -> std::io::Result<()> {
        self.sock.write_all(reply.as_bytes()).await?;
        self.sock.write_all(b"\r\n").await
    }
}

async fn stall() {
    tokio::time::sleep(Duration::from_secs(3600)).await;
}

/// A fault for `stage`, if the script has one: `Some(true)` = connection is finished.
async fn fault_at(
    c: &mut Conn<'_>,
    script: &Script,
    stage: Stage,
) -> std::io::Result<Option<bool>> {
    match &script.fault {
        Fault::Reply {
            stage: s,
            reply,
            close,
        } if *s == stage => {
            c.say(reply).await?;
            if *close {
                return Ok(Some(true));
            }
            Ok(Some(false))
        }
        Fault::Stall(s) if *s == stage => {
            stall().await;
            Ok(Some(true))
        }
        _ => Ok(None),
    }
}

async fn serve(
    sock: TcpStream,
    idx: usize,
    script: &Script,
    st: &Mutex<State>,
) -> std::io::Result<()> {
    sock.set_nodelay(true).ok();
    let mut c = Conn {
        sock,
        buf: Vec::new(),
        idx,
        st,
    };
    if fault_at(&mut c, script, Stage::Greeting).await?.is_none() {
        c.say(&script.greeting).await?;
    }
    let mut mail_from = String::new();
    let mut rcpts: Vec<String> = Vec::new();
    // Greeted with EHLO but not yet told who the client is (nor given a MAIL).
    let mut waiting_after_ehlo = false;
    let mut xclients = 0;
    loop {
        let line = match (&script.fault, waiting_after_ehlo) {
            (Fault::IdleAfterEhlo(idle), true) => {
                match tokio::time::timeout(*idle, c.line()).await {
                    Ok(line) => line?,
                    Err(_) => {
                        st.lock().unwrap().idle_closed += 1;
                        c.say("421 4.4.2 fake.test Error: timeout exceeded").await?;
                        return Ok(());
                    }
                }
            }
            _ => c.line().await?,
        };
        let Some(line) = line else { break };
        let upper = line.to_ascii_uppercase();
        let verb = upper.split_whitespace().next().unwrap_or("").to_string();
        match verb.as_str() {
            "EHLO" | "HELO" => {
                if let Some(close) = fault_at(&mut c, script, Stage::Ehlo).await? {
                    if close {
                        return Ok(());
                    }
                    continue;
                }
                if verb == "HELO" {
                    c.say(&format!("250 {}", script.hostname)).await?;
                    continue;
                }
                waiting_after_ehlo = xclients == 0 && mail_from.is_empty();
                let mut r = String::new();
                let n = script.caps.len();
                r += &format!("250{}{}", if n == 0 { " " } else { "-" }, script.hostname);
                for (i, cap) in script.caps.iter().enumerate() {
                    r += &format!("\r\n250{}{cap}", if i + 1 == n { " " } else { "-" });
                }
                c.say(&r).await?;
            }
            "XCLIENT" => {
                waiting_after_ehlo = false;
                xclients += 1;
                if xclients > 1 {
                    // Postfix re-checks smtpd_authorized_xclient_hosts against the
                    // address the first XCLIENT impersonated: one client per connection.
                    c.say("550 5.7.0 Error: insufficient authorization").await?;
                    continue;
                }
                if let Some(close) = fault_at(&mut c, script, Stage::Xclient).await? {
                    if close {
                        return Ok(());
                    }
                    continue;
                }
                // Postfix: XCLIENT restarts the session with a new greeting
                mail_from.clear();
                rcpts.clear();
                c.say(&script.greeting).await?;
            }
            "XFORWARD" => c.say("250 2.0.0 Ok").await?,
            "MAIL" => {
                waiting_after_ehlo = false;
                if let Some(close) = fault_at(&mut c, script, Stage::Mail).await? {
                    if close {
                        return Ok(());
                    }
                    continue;
                }
                mail_from = line[line.find(':').map(|p| p + 1).unwrap_or(0)..]
                    .trim()
                    .to_string();
                rcpts.clear();
                c.say("250 2.1.0 Ok").await?;
            }
            "RCPT" => {
                if let Some(close) = fault_at(&mut c, script, Stage::Rcpt).await? {
                    if close {
                        return Ok(());
                    }
                    continue;
                }
                rcpts.push(
                    line[line.find(':').map(|p| p + 1).unwrap_or(0)..]
                        .trim()
                        .to_string(),
                );
                c.say("250 2.1.5 Ok").await?;
            }
            "DATA" => {
                if let Some(close) = fault_at(&mut c, script, Stage::Data).await? {
                    if close {
                        return Ok(());
                    }
                    continue;
                }
                if rcpts.is_empty() {
                    c.say("554 5.5.1 Error: no valid recipients").await?;
                    continue;
                }
                c.say("354 End data with <CR><LF>.<CR><LF>").await?;
                // strict end of data: CRLF . CRLF, where the first CRLF may be the DATA line's
                let mut data: Vec<u8> = Vec::new();
                let end = loop {
                    // Bytes already buffered belong to the message. Scan only the new
                    // bytes plus the last 4 already seen (a terminator may straddle reads);
                    // the virtual CRLF in front is the DATA line's.
                    let mut tail: Vec<u8> = b"\r\n".to_vec();
                    tail.extend_from_slice(&data);
                    let keep = tail.len().min(4);
                    let tail = tail.split_off(tail.len() - keep);
                    let mut scan = tail;
                    scan.extend_from_slice(&c.buf);
                    if let Some(p) = scan.windows(5).position(|w| w == b"\r\n.\r\n") {
                        // bytes of c.buf up to the end of the terminator
                        let from_buf = p + 5 - keep;
                        data.extend(c.buf.drain(..from_buf));
                        break true;
                    }
                    data.append(&mut c.buf);
                    if let Fault::ResetMidData { after } = script.fault
                        && data.len() >= after
                    {
                        st.lock().unwrap().partial += 1;
                        // RST instead of FIN
                        let std = c.sock.into_std()?;
                        socket2::SockRef::from(&std).set_linger(Some(Duration::ZERO))?;
                        drop(std);
                        return Ok(());
                    }
                    if c.fill().await? == 0 {
                        break false;
                    }
                };
                if !end {
                    st.lock().unwrap().partial += 1;
                    return Ok(());
                }
                let mut msg = Message {
                    conn: idx,
                    mail_from: std::mem::take(&mut mail_from),
                    rcpts: std::mem::take(&mut rcpts),
                    raw: data,
                    final_reply: None,
                };
                let reply = match &script.fault {
                    Fault::Reply {
                        stage: Stage::DataEnd,
                        reply,
                        ..
                    } => reply.clone(),
                    Fault::Stall(Stage::DataEnd) => {
                        st.lock().unwrap().messages.push(msg);
                        stall().await;
                        return Ok(());
                    }
                    _ => "250 2.0.0 Ok: queued as FAKE".into(),
                };
                msg.final_reply = Some(reply.clone());
                st.lock().unwrap().messages.push(msg);
                c.say(&reply).await?;
                if let Fault::CloseAfterMessage(last_words) = &script.fault {
                    c.say(last_words).await?;
                    return Ok(());
                }
                if let Fault::Reply {
                    stage: Stage::DataEnd,
                    close: true,
                    ..
                } = script.fault
                {
                    return Ok(());
                }
            }
            "RSET" => {
                mail_from.clear();
                rcpts.clear();
                c.say("250 2.0.0 Ok").await?;
            }
            "NOOP" => c.say("250 2.0.0 Ok").await?,
            "QUIT" => {
                c.say("221 2.0.0 Bye").await?;
                return Ok(());
            }
            _ => c.say("502 5.5.2 Error: command not recognized").await?,
        }
    }
    Ok(())
}
