//! The client side of an SMTP conversation, as a load generator needs it: a reply is read
//! whole (all its lines) before it is judged, every read and write has a deadline, and
//! STARTTLS hands the bare socket to TLS only when nothing unread is left in the buffer.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// One SMTP reply: its code and every line's text, joined with `\n`.
#[derive(Debug, Clone)]
pub struct Reply {
    pub code: u16,
    pub text: String,
}

impl Reply {
    /// Whether an EHLO reply lists `keyword` (`STARTTLS`, `PIPELINING`).
    pub fn has_extension(&self, keyword: &str) -> bool {
        self.text.lines().any(|l| {
            l.split_whitespace()
                .next()
                .is_some_and(|w| w.eq_ignore_ascii_case(keyword))
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SmtpError {
    #[error("{stage}: {source}")]
    Io {
        stage: &'static str,
        source: std::io::Error,
    },
    #[error("{stage}: no answer within {after:?}")]
    Timeout {
        stage: &'static str,
        after: Duration,
    },
    #[error("{stage}: connection closed by the server")]
    Closed { stage: &'static str },
    #[error("{stage}: expected {want}, got {} {}", .got.code, .got.text)]
    Unexpected {
        stage: &'static str,
        want: u16,
        got: Reply,
    },
    #[error("{stage}: {what}")]
    Protocol {
        stage: &'static str,
        what: &'static str,
    },
}

impl SmtpError {
    /// A short label for counting errors by kind: the stage and, for a refusal, its code.
    pub fn label(&self) -> String {
        match self {
            SmtpError::Io { stage, source } => format!("{stage} io {:?}", source.kind()),
            SmtpError::Timeout { stage, .. } => format!("{stage} timeout"),
            SmtpError::Closed { stage } => format!("{stage} closed"),
            SmtpError::Unexpected { stage, got, .. } => format!("{stage} {}", got.code),
            SmtpError::Protocol { stage, what } => format!("{stage} {what}"),
        }
    }
}

/// A connection with its read buffer.
pub struct Conn<S> {
    io: S,
    buf: Vec<u8>,
    timeout: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    pub fn new(io: S, timeout: Duration) -> Self {
        Conn {
            io,
            buf: Vec::with_capacity(1024),
            timeout,
        }
    }

    /// Reads the next complete reply (a multi-line reply ends at its `NNN ` line).
    pub async fn reply(&mut self, stage: &'static str) -> Result<Reply, SmtpError> {
        loop {
            if let Some((reply, used)) = parse_reply(&self.buf) {
                self.buf.drain(..used);
                return Ok(reply);
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(self.timeout, self.io.read(&mut chunk))
                .await
                .map_err(|_| SmtpError::Timeout {
                    stage,
                    after: self.timeout,
                })?
                .map_err(|source| SmtpError::Io { stage, source })?;
            if n == 0 {
                return Err(SmtpError::Closed { stage });
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads a reply and checks its code.
    pub async fn expect(&mut self, want: u16, stage: &'static str) -> Result<Reply, SmtpError> {
        let got = self.reply(stage).await?;
        if got.code != want {
            return Err(SmtpError::Unexpected { stage, want, got });
        }
        Ok(got)
    }

    /// Writes bytes (one command, a pipelined group, or a message) in one call.
    pub async fn send(&mut self, bytes: &[u8], stage: &'static str) -> Result<(), SmtpError> {
        tokio::time::timeout(self.timeout, self.io.write_all(bytes))
            .await
            .map_err(|_| SmtpError::Timeout {
                stage,
                after: self.timeout,
            })?
            .map_err(|source| SmtpError::Io { stage, source })
    }

    /// Sends one command and checks the code of its reply.
    pub async fn command(
        &mut self,
        line: &[u8],
        want: u16,
        stage: &'static str,
    ) -> Result<Reply, SmtpError> {
        self.send(line, stage).await?;
        self.expect(want, stage).await
    }

    /// The socket, for the TLS handshake after `220` to STARTTLS. Bytes already buffered
    /// would have been sent before TLS and must not be taken as if they came under it.
    pub fn into_inner(self) -> Result<S, SmtpError> {
        if !self.buf.is_empty() {
            return Err(SmtpError::Protocol {
                stage: "STARTTLS",
                what: "data after the 220 reply",
            });
        }
        Ok(self.io)
    }
}

/// A complete reply at the start of `buf`, and how many bytes it took.
fn parse_reply(buf: &[u8]) -> Option<(Reply, usize)> {
    let mut pos = 0;
    let mut text = String::new();
    while let Some(nl) = memchr::memchr(b'\n', &buf[pos..]) {
        let line = &buf[pos..pos + nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        pos += nl + 1;
        let code = line
            .get(..3)
            .and_then(|c| std::str::from_utf8(c).ok())
            .and_then(|c| c.parse::<u16>().ok())
            .unwrap_or(0);
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(&String::from_utf8_lossy(line.get(4..).unwrap_or(b"")));
        // "250-..." continues; "250 ...", "250" and anything malformed end the reply
        if line.get(3) != Some(&b'-') {
            return Some((Reply { code, text }, pos));
        }
    }
    None
}
