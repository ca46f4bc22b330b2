//! The session in process: a client on one end of an in-memory pipe, scripted upstreams
//! on others (through the relay's test dialer), the real runtime in between. Timeouts run
//! on tokio's paused clock, so a 300-second deadline takes no time and is exact.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::time::Instant;

use super::{ListenerContext, Session};
use crate::config::Config;
use crate::envelope::ClientInfo;
use crate::relay::Upstreams;
use crate::runtime::Runtime;
use crate::stream::Stream;

/// What the scripted upstream offers and does.
#[derive(Clone, Default)]
struct UpScript {
    chunking: bool,
    /// CHUNKING only on the first connection (the start-up probe): a later connection
    /// lacks what the client was offered.
    chunking_only_first: bool,
    dsn: bool,
    /// Never answer this verb (e.g. "RCPT").
    stall: Option<&'static str>,
    /// Answer MAIL only once the next command (a RCPT) has arrived: a client that waits
    /// for each reply would wait forever.
    mail_waits_for_rcpt: bool,
    /// The reply to a RCPT whose line contains the key (default `250 2.1.5 Ok`).
    rcpt_replies: Vec<(&'static str, &'static str)>,
    /// The reply to MAIL (default `250 2.1.0 Ok`).
    mail_reply: Option<&'static str>,
    /// After this many RCPTs answered, say `421` and close.
    close_after_rcpts: Option<usize>,
    /// On this connection (by index, 0 is the start-up probe), answer the second MAIL
    /// with `421` and close: a session that died while idle.
    stale_second_mail_on: Option<usize>,
    /// On this connection, answer the first MAIL with `421` and close: a warm pooled
    /// connection that passed its check and XCLIENT, then died.
    stale_first_mail_on: Option<usize>,
}

/// What the scripted upstream received.
#[derive(Default)]
struct UpLog {
    commands: Vec<String>,
    /// Each message as relayed (DATA: dot-stuffed wire bytes without the terminator;
    /// BDAT: the chunk bytes).
    messages: Vec<Vec<u8>>,
}

async fn read_line(io: &mut DuplexStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(p) = buf.windows(2).position(|w| w == b"\r\n") {
            let line: Vec<u8> = buf.drain(..p + 2).collect();
            return Some(String::from_utf8_lossy(&line[..p]).into_owned());
        }
        let mut tmp = [0u8; 8192];
        match io.read(&mut tmp).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
}

async fn read_exact(io: &mut DuplexStream, buf: &mut Vec<u8>, n: usize) -> Option<Vec<u8>> {
    while buf.len() < n {
        let mut tmp = [0u8; 8192];
        match io.read(&mut tmp).await {
            Ok(0) | Err(_) => return None,
            Ok(k) => buf.extend_from_slice(&tmp[..k]),
        }
    }
    Some(buf.drain(..n).collect())
}

async fn say(io: &mut DuplexStream, s: String) {
    let _ = io.write_all(format!("{s}\r\n").as_bytes()).await;
}

/// A minimal SMTP server for the relay: banner, EHLO with the script's extensions,
/// XCLIENT (a new greeting, as Postfix), MAIL/RCPT/RSET/NOOP, DATA, BDAT.
async fn fake_upstream(mut io: DuplexStream, script: UpScript, log: Arc<Mutex<UpLog>>, nth: usize) {
    let chunking = script.chunking && !(script.chunking_only_first && nth > 0);
    let mut buf = Vec::new();
    let mut rcpts = 0;
    let mut mails = 0;
    say(&mut io, "220 up.test ESMTP".into()).await;
    while let Some(line) = read_line(&mut io, &mut buf).await {
        log.lock().unwrap().commands.push(line.clone());
        let verb = line.split(' ').next().unwrap_or("").to_ascii_uppercase();
        if script.stall.is_some_and(|v| v == verb) {
            std::future::pending::<()>().await;
        }
        match verb.as_str() {
            "EHLO" => {
                let mut r = "250-up.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-8BITMIME\r\n250-XCLIENT ADDR NAME PORT PROTO HELO LOGIN".to_owned();
                if chunking {
                    r.push_str("\r\n250-CHUNKING");
                }
                if script.dsn {
                    r.push_str("\r\n250-DSN");
                }
                r.push_str("\r\n250 ENHANCEDSTATUSCODES");
                say(&mut io, r).await;
            }
            "XCLIENT" => say(&mut io, "220 up.test ESMTP".into()).await,
            "MAIL" => {
                mails += 1;
                if (mails == 2 && script.stale_second_mail_on == Some(nth))
                    || (mails == 1 && script.stale_first_mail_on == Some(nth))
                {
                    say(&mut io, "421 4.4.2 up.test Error: timeout exceeded".into()).await;
                    return;
                }
                while script.mail_waits_for_rcpt && !buf.starts_with(b"RCPT") {
                    let mut tmp = [0u8; 8192];
                    match io.read(&mut tmp).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&tmp[..n]),
                    }
                }
                say(&mut io, script.mail_reply.unwrap_or("250 2.1.0 Ok").into()).await;
            }
            "RCPT" => {
                if script.close_after_rcpts == Some(rcpts) {
                    say(&mut io, "421 4.3.2 up.test Service shutting down".into()).await;
                    return;
                }
                rcpts += 1;
                let r = script
                    .rcpt_replies
                    .iter()
                    .find(|(k, _)| line.contains(k))
                    .map_or("250 2.1.5 Ok", |(_, r)| r);
                say(&mut io, r.into()).await;
            }
            "RSET" | "NOOP" => say(&mut io, "250 2.0.0 Ok".into()).await,
            "DATA" => {
                say(&mut io, "354 go".into()).await;
                let mut msg = Vec::new();
                loop {
                    let Some(l) = read_line(&mut io, &mut buf).await else {
                        return;
                    };
                    if l == "." {
                        break;
                    }
                    msg.extend_from_slice(l.as_bytes());
                    msg.extend_from_slice(b"\r\n");
                }
                log.lock().unwrap().messages.push(msg);
                say(&mut io, "250 2.0.0 Ok: queued".into()).await;
            }
            "BDAT" => {
                let n: usize = line
                    .split(' ')
                    .nth(1)
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                let Some(chunk) = read_exact(&mut io, &mut buf, n).await else {
                    return;
                };
                log.lock().unwrap().messages.push(chunk);
                say(&mut io, "250 2.0.0 Ok: queued".into()).await;
            }
            "QUIT" => {
                say(&mut io, "221 2.0.0 Bye".into()).await;
                return;
            }
            _ => say(&mut io, "502 5.5.2 unknown".into()).await,
        }
    }
}

struct Harness {
    rt: Arc<Runtime>,
    up: Arc<Mutex<UpLog>>,
    _dir: tempfile::TempDir,
}

async fn harness(config: &str, rules: &[(&str, &str)], script: UpScript) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let rules_dir = dir.path().join("rules");
    std::fs::create_dir_all(&rules_dir).unwrap();
    for (name, text) in rules {
        std::fs::write(rules_dir.join(name), text).unwrap();
    }
    let mut cfg = Config::parse(
        &format!(
            "hostname: mx.test\nstore: memory\ndns: {{ servers: [\"127.0.0.1:9\"] }}\n{config}"
        ),
        "test.yaml",
    )
    .unwrap();
    cfg.rules_dir = rules_dir;
    cfg.state_dir = dir.path().join("state");
    let (_tx, shutdown) = tokio::sync::watch::channel(false);
    std::mem::forget(_tx);
    let mut rt = crate::server::build_runtime(cfg, shutdown).await.unwrap();
    let up = Arc::new(Mutex::new(UpLog::default()));
    let log = up.clone();
    let dials = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    rt.upstreams = Upstreams::new(
        rt.config.upstreams.clone(),
        rt.config.hostname.clone(),
        rt.metrics.clone(),
    )
    .unwrap()
    .with_pool(&rt.config.upstream_pool)
    .with_dialer(Box::new(move |_| {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        let nth = dials.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::spawn(fake_upstream(theirs, script.clone(), log.clone(), nth));
        Ok(Box::new(ours))
    }));
    rt.upstreams.probe().await.unwrap();
    Harness {
        rt: Arc::new(rt),
        up,
        _dir: dir,
    }
}

/// The client end of one session.
/// A plaintext session on the `mx` listener for a client at 192.0.2.7.
fn session_on(h: &Harness, server: DuplexStream) -> Session<DuplexStream> {
    let info = ClientInfo {
        ip: "192.0.2.7".parse().unwrap(),
        port: 40000,
        listener: "mx".into(),
        submission: false,
        tls: false,
        auth_user: None,
    };
    let ctx = ListenerContext {
        milter_daemon_name: None,
        name: "mx".into(),
        tls: None,
        submission: false,
    };
    Session::new(h.rt.clone(), ctx, Stream::Plain(server), info)
}

struct Client {
    io: DuplexStream,
    buf: Vec<u8>,
}

impl Client {
    fn start(h: &Harness) -> Client {
        Client::start_on_pipe(h, 1 << 16)
    }

    /// A session whose every read returns at most `capacity` bytes.
    fn start_on_pipe(h: &Harness, capacity: usize) -> Client {
        let (client, server) = tokio::io::duplex(capacity);
        tokio::spawn(session_on(h, server).run());
        Client {
            io: client,
            buf: Vec::new(),
        }
    }

    /// One reply, whole (lines joined by `\n`); `None` once the session closed.
    async fn reply(&mut self) -> Option<String> {
        let mut lines = Vec::new();
        loop {
            let line = read_line(&mut self.io, &mut self.buf).await?;
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                return Some(lines.join("\n"));
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        let _ = self.io.write_all(bytes).await;
    }

    async fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await.unwrap_or_default()
    }

    async fn greeted(h: &Harness) -> Client {
        let mut c = Client::start(h);
        assert!(c.reply().await.unwrap().starts_with("220 "));
        c
    }
}

const LIMITS: &str = "limits:\n  command_timeout: 300s\n  min_data_rate: 500\n";

#[tokio::test(start_paused = true)]
async fn an_idle_client_is_cut_off_after_the_command_timeout() {
    let h = harness(LIMITS, &[], UpScript::default()).await;
    let mut c = Client::greeted(&h).await;
    let t0 = Instant::now();
    let r = c.reply().await.unwrap();
    assert!(
        r.starts_with("421 4.4.2 mx.test Error: timeout exceeded"),
        "{r}"
    );
    assert_eq!(t0.elapsed().as_secs(), 300);
    assert!(c.reply().await.is_none(), "closed after the 421");
}

#[tokio::test(start_paused = true)]
async fn bytes_dripped_into_a_line_do_not_extend_its_deadline() {
    let h = harness(LIMITS, &[], UpScript::default()).await;
    let mut c = Client::greeted(&h).await;
    let t0 = Instant::now();
    let mut answer = None;
    for b in b"EHLO slow.example\r\n" {
        c.send(&[*b]).await;
        tokio::select! {
            r = c.reply() => { answer = r; break; }
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
    }
    let r = answer.expect("cut off before the line was complete");
    assert!(r.starts_with("421 4.4.2"), "{r}");
    assert_eq!(
        t0.elapsed().as_secs(),
        300,
        "one timeout from the line's start"
    );
    let m = crate::telemetry::ProtocolErrorKind::SlowCommand;
    let count =
        h.rt.metrics
            .session
            .protocol_errors_total
            .with_label_values(&[m.as_str()])
            .get();
    assert_eq!(count, 1);
}

#[tokio::test(start_paused = true)]
async fn a_message_slower_than_the_minimum_rate_is_cut_off() {
    let h = harness(LIMITS, &[], UpScript::default()).await;
    let mut c = Client::greeted(&h).await;
    assert!(c.cmd("EHLO client.example").await.starts_with("250"));
    assert!(c.cmd("MAIL FROM:<a@x.test>").await.starts_with("250"));
    assert!(c.cmd("RCPT TO:<b@d.test>").await.starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("354"));
    let t0 = Instant::now();
    let mut answer = None;
    // 10 octets a minute: each read is well within the per-read timeout, but the whole
    // transfer falls far below 500 octets/s.
    for _ in 0..100 {
        c.send(b"0123456789").await;
        tokio::select! {
            r = c.reply() => { answer = r; break; }
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
    }
    let r = answer.expect("cut off");
    assert!(r.starts_with("421 4.4.2"), "{r}");
    let s = t0.elapsed().as_secs();
    assert!((300..=302).contains(&s), "after {s} s");
    // Meanwhile the waiting upstream transaction got NOOPs (keepalive 60 s).
    let noops =
        h.up.lock()
            .unwrap()
            .commands
            .iter()
            .filter(|c| *c == "NOOP")
            .count();
    assert!(noops >= 4, "{noops} NOOPs");
    assert!(h.up.lock().unwrap().messages.is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_upstream_that_stalls_at_rcpt_costs_the_client_a_4xx_after_its_timeout() {
    let config =
        format!("{LIMITS}upstreams:\n  - address: 127.0.0.1:25\n    command_timeout: 120s\n");
    let h = harness(
        &config,
        &[],
        UpScript {
            stall: Some("RCPT"),
            ..UpScript::default()
        },
    )
    .await;
    let mut c = Client::greeted(&h).await;
    assert!(c.cmd("EHLO client.example").await.starts_with("250"));
    assert!(c.cmd("MAIL FROM:<a@x.test>").await.starts_with("250"));
    let t0 = Instant::now();
    let r = c.cmd("RCPT TO:<b@d.test>").await;
    assert!(r.starts_with("451 4.4.1"), "{r}");
    assert_eq!(t0.elapsed().as_secs(), 120);
    assert!(c.cmd("DATA").await.starts_with("451 4.4.1"));
    // The upstream's fault, once; nothing counts against the client.
    assert_eq!(faults(&h, "upstream"), 1);
    assert_eq!(faults(&h, "client"), 0);
}

const MESSAGE: &[u8] = b"Subject: chunks\r\n\r\n.leading dot\r\nline two\r\n";

/// DATA content is decoded where it is read into the body (when nothing else is
/// buffered), or from the read buffer: whichever way, and wherever a read ends (between
/// CR and LF, inside a stuffed dot, inside the terminator, with the next command behind
/// it), the upstream gets the message exactly and the command after it is answered.
#[tokio::test(start_paused = true)]
async fn message_content_in_pieces_of_any_size_reaches_the_upstream_exactly() {
    let content: &[u8] = b"Subject: pieces\r\n\r\n..leading dot\r\n\r\n\r\n...\r\nx.\r\n.\r\n";
    // What the upstream reads: the same stuffed lines, up to the terminator.
    let relayed: &[u8] = b"Subject: pieces\r\n\r\n..leading dot\r\n\r\n\r\n...\r\nx.\r\n";
    for capacity in [1, 2, 3, 5, 8, 9, 13, 64, 1 << 16] {
        let h = harness(LIMITS, &[], UpScript::default()).await;
        let mut c = Client::start_on_pipe(&h, capacity);
        assert!(c.reply().await.unwrap().starts_with("220 "));
        assert!(c.cmd("EHLO client.example").await.starts_with("250"));
        assert!(c.cmd("MAIL FROM:<a@x.test>").await.starts_with("250"));
        assert!(c.cmd("RCPT TO:<b@d.test>").await.starts_with("250"));
        assert!(c.cmd("DATA").await.starts_with("354"));
        // The next command behind the terminator, in the same write, when the pipe holds
        // it: in a smaller one the client's write and the session's reply would wait
        // for each other.
        let behind = capacity >= 8;
        let mut w = content.to_vec();
        if behind {
            w.extend_from_slice(b"NOOP\r\n");
        }
        c.send(&w).await;
        let queued = c.reply().await.unwrap_or_default();
        assert!(
            queued.starts_with("250 2.0.0 Ok: queued"),
            "{capacity}: {queued}"
        );
        if !behind {
            c.send(b"NOOP\r\n").await;
        }
        assert!(
            c.reply().await.unwrap_or_default().starts_with("250 2.0.0"),
            "{capacity}: NOOP"
        );
        assert!(c.cmd("QUIT").await.starts_with("221"));
        let log = h.up.lock().unwrap();
        assert_eq!(log.messages, [relayed], "pieces of {capacity}");
    }
}

#[tokio::test(start_paused = true)]
async fn pipelined_bdat_chunks_are_read_exactly_and_relayed_as_bdat() {
    let h = harness(
        LIMITS,
        &[],
        UpScript {
            chunking: true,
            ..UpScript::default()
        },
    )
    .await;
    let mut c = Client::greeted(&h).await;
    let ehlo = c.cmd("EHLO client.example").await;
    assert!(
        ehlo.contains("CHUNKING") && !ehlo.contains("BINARYMIME"),
        "{ehlo}"
    );
    // One write: MAIL, RCPT and three chunks (a boundary between CR and LF, one inside
    // the dot line), then BDAT 0 LAST.
    let (a, rest) = MESSAGE.split_at(16);
    let (b, d) = rest.split_at(3);
    let mut w = b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@d.test>\r\n".to_vec();
    for chunk in [a, b, d] {
        w.extend_from_slice(format!("BDAT {}\r\n", chunk.len()).as_bytes());
        w.extend_from_slice(chunk);
    }
    w.extend_from_slice(b"BDAT 0 LAST\r\n");
    c.send(&w).await;
    let replies: Vec<String> = [(); 6].iter().map(|_| String::new()).collect();
    let mut got = Vec::new();
    for _ in replies {
        got.push(c.reply().await.unwrap());
    }
    assert!(
        got[0].starts_with("250") && got[1].starts_with("250"),
        "{got:?}"
    );
    assert_eq!(got[2], format!("250 2.0.0 Ok: {} octets received", a.len()));
    assert_eq!(got[4], format!("250 2.0.0 Ok: {} octets received", d.len()));
    assert!(got[5].starts_with("250 2.0.0 Ok: queued"), "{got:?}");
    let log = h.up.lock().unwrap();
    assert_eq!(log.messages.len(), 1);
    assert!(
        log.commands
            .iter()
            .any(|c| c.starts_with("BDAT ") && c.ends_with(" LAST"))
    );
    assert_eq!(
        log.messages[0], MESSAGE,
        "the content, unchanged, in one BDAT"
    );
}

#[tokio::test(start_paused = true)]
async fn bdat_is_relayed_as_canonical_data_to_an_upstream_without_chunking() {
    let h = harness(
        LIMITS,
        &[],
        UpScript {
            chunking: true,
            chunking_only_first: true,
            ..UpScript::default()
        },
    )
    .await;
    let mut c = Client::greeted(&h).await;
    assert!(c.cmd("EHLO client.example").await.contains("CHUNKING"));
    assert!(c.cmd("MAIL FROM:<a@x.test>").await.starts_with("250"));
    assert!(c.cmd("RCPT TO:<b@d.test>").await.starts_with("250"));
    let mut w = format!("BDAT {} LAST\r\n", MESSAGE.len()).into_bytes();
    w.extend_from_slice(MESSAGE);
    c.send(&w).await;
    let r = c.reply().await.unwrap();
    assert!(r.starts_with("250 2.0.0 Ok: queued"), "{r}");
    let log = h.up.lock().unwrap();
    assert!(
        log.commands.iter().any(|c| c == "DATA"),
        "{:?}",
        log.commands
    );
    assert_eq!(
        log.messages[0], b"Subject: chunks\r\n\r\n..leading dot\r\nline two\r\n",
        "canonical DATA: the leading dot stuffed"
    );
}

#[tokio::test(start_paused = true)]
async fn bdat_errors_keep_the_session_in_step() {
    let h = harness(
        LIMITS,
        &[(
            "r.yaml",
            "rules:\n  - { name: no, stage: rcpt, if: { recipient: no@d.test }, then: reject }\n",
        )],
        UpScript {
            chunking: true,
            ..UpScript::default()
        },
    )
    .await;
    let mut c = Client::greeted(&h).await;
    c.cmd("EHLO client.example").await;
    // BDAT without MAIL: its octets (which look like a command) are read and refused;
    // the real command after them is in step.
    c.send(b"BDAT 5\r\nNOOP\rNOOP\r\n").await;
    assert!(c.reply().await.unwrap().starts_with("503 5.5.1"));
    assert!(c.reply().await.unwrap().starts_with("250"));
    // After a refused RCPT set: no valid recipients, still in step.
    assert!(c.cmd("MAIL FROM:<a@x.test>").await.starts_with("250"));
    assert!(c.cmd("RCPT TO:<no@d.test>").await.starts_with("550"));
    c.send(b"BDAT 4 LAST\r\nabcd").await;
    assert!(c.reply().await.unwrap().starts_with("554 5.5.1"));
    assert!(c.cmd("RSET").await.starts_with("250"));
    // DATA after BDAT is a bad sequence.
    assert!(c.cmd("MAIL FROM:<a@x.test>").await.starts_with("250"));
    assert!(c.cmd("RCPT TO:<b@d.test>").await.starts_with("250"));
    c.send(b"BDAT 3\r\nabc").await;
    assert!(c.reply().await.unwrap().starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("503 5.5.1"));
    // A chunk with a bare LF is refused at once, as DATA's message would be at its end;
    // a chunk still in the pipeline after it gets the same answer.
    c.send(b"BDAT 3\r\nab\nBDAT 0 LAST\r\n").await;
    assert!(c.reply().await.unwrap().starts_with("550 5.6.0"));
    assert!(c.reply().await.unwrap().starts_with("550 5.6.0"));
    // A chunk size we could never take closes the session.
    c.cmd("MAIL FROM:<a@x.test>").await;
    c.cmd("RCPT TO:<b@d.test>").await;
    let r = c.cmd("BDAT 999999999999").await;
    assert!(r.starts_with("552 5.3.4"), "{r}");
    assert!(c.reply().await.is_none());
    assert!(h.up.lock().unwrap().messages.is_empty());
}

/// One rule set and the recipients of one transaction: the session and `mxguard explain`
/// must decide each recipient the same way.
struct Agreement {
    name: &'static str,
    rules: &'static str,
    rcpts: &'static [&'static str],
    /// Greylist triplets to allow in the store first (explain assumes store checks pass:
    /// the session's store must then let them pass too).
    allowed: &'static [&'static str],
}

const AGREEMENT: &[Agreement] = &[
    Agreement {
        name: "greylist then reject",
        rules: "rules:\n  - { name: grey, stage: rcpt, then: { greylist: { delay: 5m } } }\n  - { name: no-evil, stage: rcpt, if: { recipient: evil@d.test }, then: reject }\n",
        rcpts: &["b@d.test", "evil@d.test"],
        allowed: &[
            "192.0.2.0/24|a@x.test|b@d.test",
            "192.0.2.0/24|a@x.test|evil@d.test",
        ],
    },
    Agreement {
        name: "accept then reject",
        rules: "rules:\n  - { name: vip, stage: rcpt, if: { recipient: vip@d.test }, then: accept }\n  - { name: none, stage: rcpt, then: reject }\n",
        rcpts: &["x@d.test", "vip@d.test", "y@d.test"],
        allowed: &[],
    },
    Agreement {
        name: "monitor rules do not act",
        rules: "rules:\n  - { name: watch, stage: rcpt, then: reject, mode: monitor }\n  - { name: no-z, stage: rcpt, if: { recipient: z@d.test }, then: { tempfail: \"450 4.2.1 busy\" } }\n",
        rcpts: &["b@d.test", "z@d.test"],
        allowed: &[],
    },
    Agreement {
        name: "rate limit then reject",
        rules: "rules:\n  - { name: rate, stage: rcpt, then: { rate_limit: { key: [recipient], rate: 100/1h } } }\n  - { name: no-q, stage: rcpt, if: { recipient_domain: q.test }, then: reject }\n",
        rcpts: &["b@d.test", "c@q.test"],
        allowed: &[],
    },
];

#[tokio::test(start_paused = true)]
async fn explain_and_the_session_decide_alike() {
    for case in AGREEMENT {
        let h = harness(LIMITS, &[("r.yaml", case.rules)], UpScript::default()).await;
        for t in case.allowed {
            let target = crate::store::AllowTarget::Triplet((*t).into());
            h.rt.store
                .allow(&target, Duration::from_secs(3600))
                .await
                .unwrap();
        }
        let mut c = Client::greeted(&h).await;
        c.cmd("EHLO client.example").await;
        assert!(c.cmd("MAIL FROM:<a@x.test>").await.starts_with("250"));
        let mut live = Vec::new();
        for r in case.rcpts {
            let reply = c.cmd(&format!("RCPT TO:<{r}>")).await;
            live.push(!reply.starts_with('2'));
        }
        let input = crate::policy::ExplainInput::new(
            "192.0.2.7".parse().unwrap(),
            "client.example",
            "a@x.test",
            case.rcpts.iter().map(|r| r.to_string()).collect(),
        );
        let report = h.rt.policy.current().explain_session(&input);
        let offline: Vec<bool> = case
            .rcpts
            .iter()
            .map(|r| report.contains(&format!("-> recipient <{r}> refused")))
            .collect();
        assert_eq!(live, offline, "{}:\n{report}", case.name);
    }
}

fn faults(h: &Harness, source: &str) -> u64 {
    h.rt.metrics
        .session
        .faults_total
        .with_label_values(&[source])
        .get()
}

#[tokio::test(start_paused = true)]
async fn each_failure_is_told_logged_and_counted_as_its_source() {
    let config = format!("{LIMITS}  memory_spool_threshold: 16\n");
    let h = harness(&config, &[], UpScript::default()).await;
    // Our spool cannot spill: where its directory should be is a file.
    let spool = h.rt.spool_dir.clone();
    std::fs::remove_dir_all(&spool).unwrap();
    std::fs::write(&spool, b"not a directory").unwrap();

    let mut c = Client::greeted(&h).await;
    assert!(c.cmd("EHLO client.example").await.starts_with("250"));
    // The client's mistake: a 5xx, counted as the client's.
    assert!(
        c.cmd("MAIL FROM:<a@x.test> BOGUS=1")
            .await
            .starts_with("555 5.5.4")
    );
    assert_eq!(faults(&h, "client"), 1);
    // Ours: a 4xx, not the upstream's fault, and its connection is kept.
    assert!(c.cmd("MAIL FROM:<a@x.test>").await.starts_with("250"));
    assert!(c.cmd("RCPT TO:<b@d.test>").await.starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send(b"Subject: spills\r\n\r\nmore than sixteen bytes of body\r\n.\r\n")
        .await;
    let r = c.reply().await.unwrap();
    assert!(r.starts_with("451 4.3.0"), "{r}");
    assert_eq!(faults(&h, "ours"), 1);
    assert_eq!(faults(&h, "upstream"), 0);
    assert_eq!(faults(&h, "client"), 1, "our failure is not the client's");
    // The same upstream connection takes the next transaction.
    std::fs::remove_file(&spool).unwrap();
    assert!(c.cmd("MAIL FROM:<a@x.test>").await.starts_with("250"));
    assert!(c.cmd("RCPT TO:<b@d.test>").await.starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send(b"Subject: spills\r\n\r\nmore than sixteen bytes of body\r\n.\r\n")
        .await;
    let r = c.reply().await.unwrap();
    assert!(r.starts_with("250"), "{r}");
    let log = h.up.lock().unwrap().commands.clone();
    // One upstream session (one XCLIENT), reset after our failure, never replaced.
    let xclients = log.iter().filter(|c| c.starts_with("XCLIENT")).count();
    assert_eq!(xclients, 1, "the upstream was not blamed: {log:?}");
    assert!(log.iter().any(|c| c == "RSET"), "{log:?}");
}

/// Every reply of a pipelined group, in order.
async fn replies(c: &mut Client, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(c.reply().await.unwrap_or_default());
    }
    out
}

fn codes(rs: &[String]) -> Vec<&str> {
    rs.iter().map(|r| &r[..r.len().min(9)]).collect()
}

#[tokio::test(start_paused = true)]
async fn a_pipelined_group_goes_upstream_at_once_and_its_replies_keep_their_order() {
    let rules = "rules:\n  - name: ours\n    stage: rcpt\n    if: { recipient: refused-by-rule@d.test }\n    then: { reject: \"550 5.7.1 refused by our rule\" }\n";
    let h = harness(
        LIMITS,
        &[("r.yaml", rules)],
        UpScript {
            mail_waits_for_rcpt: true,
            rcpt_replies: vec![
                ("rejected", "550 5.1.1 <rejected@d.test>: unknown user"),
                ("later", "450 4.2.0 <later@d.test>: try later"),
            ],
            ..UpScript::default()
        },
    )
    .await;
    let mut c = Client::greeted(&h).await;
    assert!(c.cmd("EHLO client.example").await.starts_with("250"));
    let t0 = Instant::now();
    c.send(
        b"MAIL FROM:<a@x.test>\r\nRCPT TO:<one@d.test>\r\nRCPT TO:<rejected@d.test>\r\n\
          RCPT TO:<refused-by-rule@d.test>\r\nRCPT TO:<later@d.test>\r\nRCPT TO:<two@d.test>\r\nDATA\r\n",
    )
    .await;
    let rs = replies(&mut c, 7).await;
    assert_eq!(
        codes(&rs),
        [
            "250 2.1.0",
            "250 2.1.5",
            "550 5.1.1",
            "550 5.7.1",
            "450 4.2.0",
            "250 2.1.5",
            "354 End d"
        ],
        "{rs:?}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "no command waited for the upstream's timeout: {:?}",
        t0.elapsed()
    );
    c.send(b"Subject: group\r\n\r\nbody\r\n.\r\n").await;
    assert!(c.reply().await.unwrap().starts_with("250"));
    let log = h.up.lock().unwrap();
    let rcpts: Vec<&String> = log
        .commands
        .iter()
        .filter(|c| c.starts_with("RCPT"))
        .collect();
    // Our own refusal never reached the upstream; the others went in order.
    assert_eq!(
        rcpts,
        [
            "RCPT TO:<one@d.test>",
            "RCPT TO:<rejected@d.test>",
            "RCPT TO:<later@d.test>",
            "RCPT TO:<two@d.test>"
        ]
    );
    assert_eq!(log.messages.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_upstream_that_refuses_mid_group_answers_the_rest_as_lockstep_would() {
    // MAIL refused: the group's recipients get what they get without a transaction.
    let h = harness(
        LIMITS,
        &[],
        UpScript {
            mail_reply: Some("550 5.7.1 sender refused upstream"),
            ..UpScript::default()
        },
    )
    .await;
    let mut c = Client::greeted(&h).await;
    assert!(c.cmd("EHLO client.example").await.starts_with("250"));
    c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<one@d.test>\r\nRCPT TO:<two@d.test>\r\nDATA\r\n")
        .await;
    let rs = replies(&mut c, 4).await;
    assert_eq!(
        codes(&rs),
        ["550 5.7.1", "503 5.5.1", "503 5.5.1", "503 5.5.1"],
        "{rs:?}"
    );

    // The upstream closes after the first recipient: the rest get 451 4.4.1.
    let h = harness(
        LIMITS,
        &[],
        UpScript {
            close_after_rcpts: Some(1),
            ..UpScript::default()
        },
    )
    .await;
    let mut c = Client::greeted(&h).await;
    assert!(c.cmd("EHLO client.example").await.starts_with("250"));
    c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<one@d.test>\r\nRCPT TO:<two@d.test>\r\nRCPT TO:<three@d.test>\r\nDATA\r\n")
        .await;
    let rs = replies(&mut c, 5).await;
    assert_eq!(
        codes(&rs),
        [
            "250 2.1.0",
            "250 2.1.5",
            "451 4.4.1",
            "451 4.4.1",
            "451 4.4.1"
        ],
        "{rs:?}"
    );
    assert_eq!(faults(&h, "upstream"), 1);
    // RSET starts over; the next transaction opens a new upstream session.
    assert!(c.cmd("RSET").await.starts_with("250"));
    c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<one@d.test>\r\n")
        .await;
    assert_eq!(codes(&replies(&mut c, 2).await), ["250 2.1.0", "250 2.1.5"]);
}

#[tokio::test(start_paused = true)]
async fn a_reused_upstream_that_died_idle_is_replaced_under_a_pipelined_mail() {
    let h = harness(
        LIMITS,
        &[],
        UpScript {
            // Connection 1 is the session's first: its second MAIL finds it timed out.
            stale_second_mail_on: Some(1),
            ..UpScript::default()
        },
    )
    .await;
    let mut c = Client::greeted(&h).await;
    assert!(c.cmd("EHLO client.example").await.starts_with("250"));
    for subject in ["first", "second"] {
        c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<one@d.test>\r\nRCPT TO:<two@d.test>\r\nDATA\r\n")
            .await;
        let rs = replies(&mut c, 4).await;
        assert_eq!(
            codes(&rs),
            ["250 2.1.0", "250 2.1.5", "250 2.1.5", "354 End d"],
            "{subject}: {rs:?}"
        );
        c.send(format!("Subject: {subject}\r\n\r\nbody\r\n.\r\n").as_bytes())
            .await;
        assert!(c.reply().await.unwrap().starts_with("250"), "{subject}");
    }
    let log = h.up.lock().unwrap();
    assert_eq!(log.messages.len(), 2, "each message relayed once");
    assert_eq!(
        log.commands
            .iter()
            .filter(|c| c.starts_with("XCLIENT"))
            .count(),
        2,
        "a second upstream session replaced the stale one: {:?}",
        log.commands
    );
}

#[tokio::test(start_paused = true)]
async fn a_pooled_upstream_that_dies_at_its_first_mail_is_replaced_unnoticed() {
    let h = harness(
        "upstream_pool: { size: 1 }\n",
        &[],
        UpScript {
            // Connection 0 is the start-up probe, 1 the pooled one.
            stale_first_mail_on: Some(1),
            ..UpScript::default()
        },
    )
    .await;
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    tokio::spawn(h.rt.upstreams.keep_warm(shutdown));
    let idle = h.rt.metrics.pool.idle.with_label_values(&["0"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while idle.get() < 1 {
        assert!(Instant::now() < deadline, "the pool never filled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut c = Client::greeted(&h).await;
    assert!(c.cmd("EHLO client.example").await.starts_with("250"));
    c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<one@d.test>\r\nDATA\r\n")
        .await;
    let rs = replies(&mut c, 3).await;
    assert_eq!(
        codes(&rs),
        ["250 2.1.0", "250 2.1.5", "354 End d"],
        "{rs:?}"
    );
    c.send(b"Subject: s\r\n\r\nbody\r\n.\r\n").await;
    assert!(c.reply().await.unwrap().starts_with("250"));
    let hits = h.rt.metrics.pool.hits_total.with_label_values(&["0"]).get();
    assert!(hits >= 1, "the session took the pooled connection first");
    let log = h.up.lock().unwrap();
    assert_eq!(log.messages.len(), 1, "relayed once");
    let xclients = log.commands.iter().filter(|c| c.starts_with("XCLIENT"));
    assert_eq!(
        xclients.count(),
        2,
        "the pooled and the fresh one: {:?}",
        log.commands
    );
}

/// An idle session's memory is mostly its task's future: it must hold the session once
/// (an `async fn run(self)` held it twice) and no closing step's state inline.
#[tokio::test]
async fn a_session_task_holds_the_session_once() {
    let h = harness(LIMITS, &[], UpScript::default()).await;
    let (server, _client) = tokio::io::duplex(1024);
    let session = session_on(&h, server);
    let held = std::mem::size_of_val(&session);
    let task = session.run();
    let size = std::mem::size_of_val(&task);
    assert!(
        size < held + 1024,
        "the session is {held} bytes, its task's future {size}"
    );
}

/// Session ids are written by hand: the same text as `{:X}` with a minimum width.
#[test]
fn hex_digits_match_the_formatter() {
    for n in [
        0u64,
        1,
        9,
        10,
        15,
        16,
        0xFFFF,
        0x1_0000,
        0xFF_FFFF_FFFF,
        u64::MAX,
    ] {
        for width in [1, 4] {
            let mut s = String::new();
            super::push_hex(&mut s, n, width);
            assert_eq!(s, format!("{n:0width$X}"));
        }
    }
    let id = super::new_session_id();
    assert!(
        id.len() >= 5 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
}
