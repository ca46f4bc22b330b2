//! A TCP connection that may be upgraded to TLS in place, with the read buffer both
//! sides of the proxy parse from.
//!
//! The session and the relay both read replies or commands out of a buffer they own, so
//! they can tell exactly which bytes arrived before a STARTTLS handshake (to discard
//! them) and which belong to the next command.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Plain TCP, or TLS as either side of the handshake.
pub enum Stream {
    Plain(TcpStream),
    ServerTls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    ClientTls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// Transiently empty while a handshake owns the socket.
    Detached,
}

impl Stream {
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::ServerTls(_) | Stream::ClientTls(_))
    }

    /// Takes the plain socket out for a TLS handshake.
    pub fn take_plain(&mut self) -> Option<TcpStream> {
        match std::mem::replace(self, Stream::Detached) {
            Stream::Plain(tcp) => Some(tcp),
            other => {
                *self = other;
                None
            }
        }
    }

    /// The TLS protocol version and cipher suite, for logs and Received headers.
    pub fn tls_description(&self) -> Option<String> {
        let conn: &rustls::CommonState = match self {
            Stream::ServerTls(s) => s.get_ref().1,
            Stream::ClientTls(s) => s.get_ref().1,
            _ => return None,
        };
        // `TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384`, as Postfix words it.
        let version = conn
            .protocol_version()
            .map(|v| format!("{v:?}").replace('_', "."))
            .unwrap_or_default();
        let suite = conn
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_default();
        Some(format!("{version} with cipher {suite}"))
    }
}

fn detached() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "stream detached for TLS handshake",
    )
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::ServerTls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::ClientTls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Detached => Poll::Ready(Err(detached())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::ServerTls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::ClientTls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Detached => Poll::Ready(Err(detached())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::ServerTls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::ClientTls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Detached => Poll::Ready(Err(detached())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::ServerTls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::ClientTls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Detached => Poll::Ready(Ok(())),
        }
    }
}

/// Why reading stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("connection closed by peer")]
    Closed,
    #[error("timed out")]
    Timeout,
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// A stream with an input buffer: bytes are read in, parsed from the front, consumed.
pub struct BufferedConn {
    pub stream: Stream,
    buf: Vec<u8>,
    start: usize,
    /// Read granularity; the buffer grows only as far as unparsed input requires.
    chunk: usize,
}

impl BufferedConn {
    pub fn new(stream: Stream, chunk: usize) -> Self {
        BufferedConn {
            stream,
            buf: Vec::new(),
            start: 0,
            chunk,
        }
    }

    /// Changes the read size (large during DATA, small while waiting for commands).
    pub fn set_chunk(&mut self, chunk: usize) {
        self.chunk = chunk;
    }

    /// Unparsed input.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Marks `n` bytes at the front of [`Self::buffered`] as parsed.
    pub fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start >= self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
    }

    /// Drops all unparsed input (plaintext injected before a TLS handshake).
    pub fn discard_buffered(&mut self) -> usize {
        let n = self.buf.len() - self.start;
        self.buf.clear();
        self.start = 0;
        n
    }

    /// Releases memory held by a large buffer once it is empty (after DATA), so an idle
    /// session stays small.
    pub fn shrink_if_idle(&mut self) {
        if self.start == 0 && self.buf.is_empty() && self.buf.capacity() > 4 * self.chunk {
            self.buf = Vec::new();
        }
    }

    /// Reads more input, waiting until `deadline`.
    pub async fn fill(&mut self, deadline: Instant) -> Result<usize, ReadError> {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 0 && self.start > self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        // Read into spare capacity: no zeroing of the read buffer on every call.
        self.buf.reserve(self.chunk);
        let res = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await;
        let n = match res {
            Err(_) => return Err(ReadError::Timeout),
            Ok(Err(e)) => return Err(ReadError::Io(e)),
            Ok(Ok(n)) => n,
        };
        if n == 0 {
            return Err(ReadError::Closed);
        }
        Ok(n)
    }

    /// Writes and flushes `bytes`, failing after `timeout`.
    pub async fn send(&mut self, bytes: &[u8], timeout: Duration) -> io::Result<()> {
        let write = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        };
        tokio::time::timeout(timeout, write)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "write timed out"))?
    }
}
