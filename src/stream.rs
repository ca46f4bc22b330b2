//! A connection that may be upgraded to TLS in place, with the read buffer both sides
//! of the proxy parse from.
//!
//! The session and the relay both read replies or commands out of a buffer they own, so
//! they can tell exactly which bytes arrived before a STARTTLS handshake (to discard
//! them) and which belong to the next command. The transport underneath is a
//! [`Transport`]: a TCP socket in production, an in-memory pipe in the session tests.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// What a session can run over: a byte stream, and a way to see whether the peer has
/// already sent something without consuming it (to catch clients that talk before the
/// banner).
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Whether a first byte arrives within `wait` (zero: whether one is there now),
    /// without consuming it. Transports that cannot tell answer `false`.
    fn first_byte_within(&self, wait: Duration) -> impl Future<Output = bool> + Send {
        let _ = wait;
        std::future::ready(false)
    }

    /// Whether input can be read now; `Pending` wakes the task when it can. It lets an
    /// idle connection wait without holding a read buffer. Transports that cannot tell
    /// answer `Ready` (the read that follows then waits instead).
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let _ = cx;
        Poll::Ready(Ok(()))
    }
}

impl Transport for TcpStream {
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }

    async fn first_byte_within(&self, wait: Duration) -> bool {
        if wait.is_zero() {
            // One non-blocking peek through tokio, never waiting: a fresh socket is
            // assumed readable, so this is one `recvfrom`, and its "nothing yet" clears
            // that readiness — the read after the banner then waits for the first
            // event instead of costing a second `recvfrom` that finds nothing.
            let mut probe = [0u8; 1];
            let mut buf = ReadBuf::new(&mut probe);
            return std::future::poll_fn(|cx| match self.poll_peek(cx, &mut buf) {
                Poll::Ready(Ok(n)) => Poll::Ready(n > 0),
                Poll::Ready(Err(_)) | Poll::Pending => Poll::Ready(false),
            })
            .await;
        }
        // Wait the whole pause for a first byte (without consuming it); `readable()` is
        // not enough: it can report a fresh socket ready before anything arrived.
        let mut probe = [0u8; 1];
        matches!(
            tokio::time::timeout(wait, self.peek(&mut probe)).await,
            Ok(Ok(n)) if n > 0
        )
    }
}

/// In-memory transport for the session's own tests.
impl Transport for tokio::io::DuplexStream {}

/// Any byte stream, boxed: what the relay talks to the upstream over (TCP in
/// production, an in-memory pipe to a scripted upstream in the session tests).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

pub type BoxIo = Box<dyn Io>;

impl Transport for BoxIo {}

/// Plain, or TLS as either side of the handshake.
pub enum Stream<S = TcpStream> {
    Plain(S),
    ServerTls(Box<tokio_rustls::server::TlsStream<S>>),
    ClientTls(Box<tokio_rustls::client::TlsStream<S>>),
    /// Transiently empty while a handshake owns the socket.
    Detached,
}

impl<S: Transport> Stream<S> {
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::ServerTls(_) | Stream::ClientTls(_))
    }

    /// See [`Transport::poll_readable`]. Under TLS, rustls may hold decrypted input the
    /// socket no longer shows: always `Ready`, the read itself waits.
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Plain(s) => s.poll_readable(cx),
            _ => Poll::Ready(Ok(())),
        }
    }

    /// Takes the plain socket out for a TLS handshake.
    pub fn take_plain(&mut self) -> Option<S> {
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

impl<S: Transport> AsyncRead for Stream<S> {
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

impl<S: Transport> AsyncWrite for Stream<S> {
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

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::ServerTls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Stream::ClientTls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Stream::Detached => Poll::Ready(Err(detached())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::ServerTls(s) => s.is_write_vectored(),
            Stream::ClientTls(s) => s.is_write_vectored(),
            Stream::Detached => false,
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

/// Read sizes up to this (command lines, replies) release the buffers while waiting; the
/// large reads of message content keep theirs: a message comes in many reads, and
/// allocating a large buffer for each would cost more than the memory it saves.
const RELEASED_WHILE_WAITING: usize = 4096;

/// The output buffer's first allocation.
const OUT_CAPACITY: usize = 256;

/// A stream with an input buffer: bytes are read in, parsed from the front, consumed;
/// and an output buffer for what is sent next.
pub struct BufferedConn<S = TcpStream> {
    pub stream: Stream<S>,
    buf: Vec<u8>,
    start: usize,
    /// Read granularity; the buffer grows only as far as unparsed input requires.
    chunk: usize,
    /// What we send next, written by [`Self::flush_out`] (the session's replies).
    out: Vec<u8>,
    /// Release the empty buffers while waiting for input (see `fill`): for a client,
    /// which may sit idle for minutes, not for an upstream, which answers at once.
    release_while_waiting: bool,
}

impl<S: Transport> BufferedConn<S> {
    pub fn new(stream: Stream<S>, chunk: usize) -> Self {
        BufferedConn {
            stream,
            buf: Vec::new(),
            start: 0,
            chunk,
            out: Vec::new(),
            release_while_waiting: false,
        }
    }

    /// A connection to a client: its empty buffers are released while it is silent.
    pub fn releasing_buffers_while_waiting(mut self) -> Self {
        self.release_while_waiting = true;
        self
    }

    /// Bytes of buffer memory the connection holds (read and output buffers).
    pub fn buffer_bytes(&self) -> usize {
        self.buf.capacity() + self.out.capacity()
    }

    /// The output buffer, to queue bytes for [`Self::flush_out`].
    pub fn out(&mut self) -> &mut Vec<u8> {
        if self.out.capacity() == 0 {
            // Room for a group of short replies at once, not grown reply by reply.
            self.out.reserve(OUT_CAPACITY);
        }
        &mut self.out
    }

    /// Writes and flushes the queued output (nothing to do when none is queued).
    pub async fn flush_out(&mut self, timeout: Duration) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(&mut self.out);
        let res = self.send(&out, timeout).await;
        // Kept for the next replies, unless a long reply (EHLO, a multi-line refusal)
        // made it large.
        if out.capacity() <= 4096 {
            self.out = out;
            self.out.clear();
        }
        res
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

    /// Reads more input, waiting until `deadline`.
    pub async fn fill(&mut self, deadline: Instant) -> Result<usize, ReadError> {
        self.compact();
        if self.buf.is_empty() && self.buf.capacity() > 4 * self.chunk {
            // Emptied after a large read (a message): back to the read size, so an idle
            // connection does not keep a message's worth of buffer.
            self.buf = Vec::new();
        }
        let release = self.release_while_waiting
            && self.buf.is_empty()
            && self.chunk <= RELEASED_WHILE_WAITING;
        let read = async {
            if release {
                self.readable_releasing_buffers().await?;
            }
            // Read into spare capacity: no zeroing of the read buffer on every call.
            self.buf.reserve(self.chunk);
            self.stream.read_buf(&mut self.buf).await
        };
        read_by(deadline, read).await
    }

    /// Reads more input straight into `dst` (a message body), waiting until `deadline`,
    /// when nothing unparsed is buffered here: message content then lands where it is
    /// kept, with no copy out of this buffer. Bytes that `dst`'s owner finds after the
    /// message go back through [`Self::unread`].
    pub async fn fill_into(
        &mut self,
        dst: &mut Vec<u8>,
        deadline: Instant,
    ) -> Result<usize, ReadError> {
        debug_assert!(
            self.buffered().is_empty(),
            "unparsed input would be overtaken"
        );
        dst.reserve(self.chunk);
        read_by(deadline, self.stream.read_buf(dst)).await
    }

    /// Puts `bytes` back in front of the unparsed input: what a read through
    /// [`Self::fill_into`] brought after the message (the next pipelined command).
    pub fn unread(&mut self, bytes: &[u8]) {
        self.buf
            .splice(self.start..self.start, bytes.iter().copied());
    }

    /// Waits until the stream is readable. When it is not at once (the peer is silent,
    /// or its bytes are not reported yet), the empty read and output buffers are
    /// released first: an idle session then costs no buffer memory (3.3 instead of
    /// 4.5 KiB after EHLO). The price is one allocation per read that had to wait, which
    /// the allocator's thread cache serves.
    async fn readable_releasing_buffers(&mut self) -> io::Result<()> {
        // Moved in as `&mut`: a shared borrow of the stream held across the wait would
        // need the stream to be `Sync` for the task to be `Send`.
        let (stream, buf, out) = (&mut self.stream, &mut self.buf, &mut self.out);
        let mut released = false;
        std::future::poll_fn(move |cx| {
            let ready = stream.poll_readable(cx);
            if ready.is_pending() && !released {
                released = true;
                *buf = Vec::new();
                if out.is_empty() {
                    *out = Vec::new();
                }
            }
            ready
        })
        .await
    }

    /// Reads what has already arrived, without waiting: `Ok(None)` when nothing has.
    /// The read is polled once; tokio answers from the socket's cached readiness, so when
    /// nothing arrived since the last read this costs no system call (and, unlike a read
    /// under a zero timeout, no timer).
    pub async fn fill_ready(&mut self) -> Result<Option<usize>, ReadError> {
        let mut read = std::pin::pin!(self.fill_unbounded());
        std::future::poll_fn(|cx| match read.as_mut().poll(cx) {
            Poll::Ready(r) => Poll::Ready(r.map(Some)),
            Poll::Pending => Poll::Ready(Ok(None)),
        })
        .await
    }

    async fn fill_unbounded(&mut self) -> Result<usize, ReadError> {
        self.compact();
        self.buf.reserve(self.chunk);
        match self.stream.read_buf(&mut self.buf).await? {
            0 => Err(ReadError::Closed),
            n => Ok(n),
        }
    }

    /// Moves unparsed input to the front when most of the buffer is parsed.
    fn compact(&mut self) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 0 && self.start > self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }

    /// Writes and flushes `bytes`, failing after `timeout`.
    pub async fn send(&mut self, bytes: &[u8], timeout: Duration) -> io::Result<()> {
        let write = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        };
        write_within(timeout, write).await
    }

    /// Writes and flushes `first` then `second` as vectored writes, so both leave in one
    /// system call when the socket takes them (the message bulk straight from the spool,
    /// behind the bytes already encoded); failing after `timeout`.
    pub async fn send_pair(
        &mut self,
        first: &[u8],
        second: &[u8],
        timeout: Duration,
    ) -> io::Result<()> {
        let write = async {
            let mut slices = [io::IoSlice::new(first), io::IoSlice::new(second)];
            let mut bufs = &mut slices[..];
            // Drops empty slices first: nothing to write is no write, not `WriteZero`.
            io::IoSlice::advance_slices(&mut bufs, 0);
            while !bufs.is_empty() {
                match self.stream.write_vectored(bufs).await? {
                    0 => return Err(io::ErrorKind::WriteZero.into()),
                    n => io::IoSlice::advance_slices(&mut bufs, n),
                }
            }
            self.stream.flush().await
        };
        write_within(timeout, write).await
    }
}

/// A write (and its flush) that fails as `TimedOut` after `timeout`.
async fn write_within(
    timeout: Duration,
    write: impl std::future::Future<Output = io::Result<()>>,
) -> io::Result<()> {
    tokio::time::timeout(timeout, write)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "write timed out"))?
}

/// One read of a connection's input, bounded by `deadline`: the bytes it brought, or why
/// it brought none (the peer went quiet, failed, or closed).
async fn read_by(
    deadline: Instant,
    read: impl Future<Output = io::Result<usize>>,
) -> Result<usize, ReadError> {
    match tokio::time::timeout_at(deadline, read).await {
        Err(_) => Err(ReadError::Timeout),
        Ok(Err(e)) => Err(ReadError::Io(e)),
        Ok(Ok(0)) => Err(ReadError::Closed),
        Ok(Ok(n)) => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    use super::*;

    /// The zero-wait pre-greeting check sees a first byte that arrived before the accept,
    /// without consuming it, and says `false` for a client that waits for the banner.
    #[tokio::test]
    async fn the_zero_wait_check_sees_a_byte_already_there_and_leaves_it() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut talker = tokio::net::TcpStream::connect(addr).await.unwrap();
        talker.write_all(b"EHLO early\r\n").await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        // Until the kernel holds the byte (asked directly, leaving tokio's state alone).
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        while !matches!(socket2::SockRef::from(&server).peek(&mut probe), Ok(1)) {
            assert!(
                std::time::Instant::now() < deadline,
                "the byte never arrived"
            );
            tokio::task::yield_now().await;
        }
        assert!(server.first_byte_within(Duration::ZERO).await);
        let mut conn = BufferedConn::new(Stream::Plain(server), 1024);
        conn.fill(Instant::now() + Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(conn.buffered(), b"EHLO early\r\n", "nothing consumed");

        let _waiter = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (quiet, _) = listener.accept().await.unwrap();
        assert!(!quiet.first_byte_within(Duration::ZERO).await);
    }

    async fn connected_pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    /// An idle session must not hold buffers while its client is silent (issue 14: at
    /// most 4 KiB per idle session).
    #[tokio::test]
    async fn a_connection_waiting_for_its_peer_holds_no_buffer() {
        let (mut client, server) = connected_pair().await;
        let mut conn =
            BufferedConn::new(Stream::Plain(server), 1024).releasing_buffers_while_waiting();
        client.write_all(b"EHLO a\r\n").await.unwrap();
        conn.fill(Instant::now() + Duration::from_secs(5))
            .await
            .unwrap();
        conn.out().extend_from_slice(b"250 ok\r\n");
        conn.flush_out(Duration::from_secs(5)).await.unwrap();
        let n = conn.buffered().len();
        conn.consume(n);
        assert!(conn.buffer_bytes() >= 1024, "buffers kept after the reply");

        // Nothing comes: the wait releases both buffers.
        {
            let mut wait = std::pin::pin!(conn.fill(Instant::now() + Duration::from_secs(60)));
            let polled = std::future::poll_fn(|cx| Poll::Ready(wait.as_mut().poll(cx))).await;
            assert!(polled.is_pending(), "the client sent nothing");
        }
        assert_eq!(
            conn.buffer_bytes(),
            0,
            "a waiting connection holds no buffer"
        );

        // And the next command is read as usual.
        client.write_all(b"QUIT\r\n").await.unwrap();
        conn.fill(Instant::now() + Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(conn.buffered(), b"QUIT\r\n");
    }
}
