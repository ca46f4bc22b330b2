//! The PROXY protocol (HAProxy, v1 text and v2 binary) on listeners behind an L4 load
//! balancer: the balancer's header names the real client, which then is the client for
//! every rule, log line, metric and XCLIENT.
//!
//! The header is read only on listeners configured for it and only from trusted peers,
//! which must send it; anyone else is served as a direct client, so an untrusted peer can
//! never choose its own address. Parsing is done by the `ppp` crate; this module only
//! decides whom to believe and reads exactly the header's bytes (with `peek`), so nothing
//! that follows it is consumed here.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ppp::{HeaderResult, PartialResult, v1, v2};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::config::ProxyProtocolConfig;

/// The largest header: v1 lines are at most 107 octets; v2 is 16 + a 16-bit length.
const MAX_HEADER: usize = 16 + 65535;

/// How long to wait before peeking again at a header that is not complete yet (rare:
/// balancers write the header in one piece).
const PEEK_AGAIN: Duration = Duration::from_millis(5);

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no PROXY header within {0:?}")]
    Timeout(Duration),
    #[error("invalid PROXY header: {0}")]
    Invalid(String),
    #[error("PROXY header version {0} is not enabled on this listener")]
    VersionNotEnabled(u8),
    #[error("connection closed before the PROXY header ended")]
    Closed,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Whether this listener expects a PROXY header from `peer`.
pub fn expected_from(cfg: &ProxyProtocolConfig, peer: IpAddr) -> bool {
    cfg.trusted.iter().any(|n| n.contains(peer))
}

/// Reads and consumes the PROXY header; returns the client address it carries, or `None`
/// for a header that names no client (v2 LOCAL health checks, v1 UNKNOWN).
pub async fn read_header(
    tcp: &mut TcpStream,
    cfg: &ProxyProtocolConfig,
) -> Result<Option<SocketAddr>, ProxyError> {
    tokio::time::timeout(cfg.timeout, read_header_inner(tcp, cfg))
        .await
        .map_err(|_| ProxyError::Timeout(cfg.timeout))?
}

async fn read_header_inner(
    tcp: &mut TcpStream,
    cfg: &ProxyProtocolConfig,
) -> Result<Option<SocketAddr>, ProxyError> {
    let mut buf = vec![0u8; 232];
    loop {
        let n = tcp.peek(&mut buf).await?;
        if n == 0 {
            return Err(ProxyError::Closed);
        }
        match parse_header(&buf[..n], cfg.v1, cfg.v2)? {
            Peeked::Incomplete if n == buf.len() => {
                if buf.len() >= MAX_HEADER {
                    return Err(ProxyError::Invalid("header too long".into()));
                }
                let grow = (buf.len() * 2).min(MAX_HEADER);
                buf.resize(grow, 0);
            }
            Peeked::Incomplete => {
                // Wait for more bytes before peeking again. Not `readable()`: a peek
                // leaves the socket readable, so that returns at once and the loop
                // would spin on a core until the header is complete or the timeout.
                tokio::time::sleep(PEEK_AGAIN).await;
            }
            Peeked::Header(h) => {
                let mut consumed = vec![0u8; h.len];
                tcp.read_exact(&mut consumed).await?;
                return Ok(h.source);
            }
        }
    }
}

/// What the bytes at the start of a connection hold (see [`parse_header`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peeked {
    /// A header may still be completed by more bytes.
    Incomplete,
    Header(ProxyHeader),
}

/// A header as mxguard uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyHeader {
    /// 1 (text) or 2 (binary).
    pub version: u8,
    /// The header's octets: exactly what is consumed from the connection.
    pub len: usize,
    /// The client it names; `None` for v2 LOCAL and v1 UNKNOWN (and v2 families
    /// without an IP address).
    pub source: Option<SocketAddr>,
}

/// Parses a PROXY header at the start of `buf`, without I/O: the decision
/// [`read_header`] makes on the bytes it has peeked.
pub fn parse_header(buf: &[u8], v1: bool, v2: bool) -> Result<Peeked, ProxyError> {
    let line = v1_line(buf);
    if line == V1Line::Pending {
        return Ok(Peeked::Incomplete);
    }
    let parsed = HeaderResult::parse(buf);
    if parsed.is_incomplete() {
        let V1Line::Complete(len) = line else {
            return Ok(Peeked::Incomplete);
        };
        // ppp waits for more on some whole lines: `UNKNOWN` followed by five or more
        // words (which the spec says to ignore), or too few fields (an error).
        if !buf.starts_with(b"PROXY UNKNOWN") || buf[len - 1] != b'\n' {
            return Err(ProxyError::Invalid("incomplete PROXY v1 line".into()));
        }
        if !v1 {
            return Err(ProxyError::VersionNotEnabled(1));
        }
        return Ok(Peeked::Header(ProxyHeader {
            version: 1,
            len,
            source: None,
        }));
    }
    let header = match parsed {
        HeaderResult::V1(Ok(h)) => {
            if !v1 {
                return Err(ProxyError::VersionNotEnabled(1));
            }
            ProxyHeader {
                version: 1,
                len: h.header.len(),
                source: v1_source(&h.addresses),
            }
        }
        HeaderResult::V2(Ok(h)) => {
            if !v2 {
                return Err(ProxyError::VersionNotEnabled(2));
            }
            let source = match h.command {
                v2::Command::Local => None,
                v2::Command::Proxy => v2_source(&h.addresses),
            };
            ProxyHeader {
                version: 2,
                len: h.len(),
                source,
            }
        }
        HeaderResult::V1(Err(e)) => return Err(ProxyError::Invalid(e.to_string())),
        HeaderResult::V2(Err(e)) => return Err(ProxyError::Invalid(e.to_string())),
    };
    Ok(Peeked::Header(header))
}

/// The longest v1 line, CRLF included.
const MAX_V1_LINE: usize = 107;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum V1Line {
    /// Not a v1 header (or too long to be one).
    NotV1,
    /// The start of a v1 line whose CRLF has not arrived.
    Pending,
    /// A v1 line of this many octets (up to the LF after the first CR).
    Complete(usize),
}

/// A v1 header is given to ppp only once its line is whole: ppp takes some prefixes of
/// a valid line for errors (`PROXY TCP4 192.0.2.1 ` — the destination "" is not an
/// address), so a header split across reads would be refused.
fn v1_line(buf: &[u8]) -> V1Line {
    let head = &buf[..buf.len().min(5)];
    if head.is_empty() || !b"PROXY".starts_with(head) {
        return V1Line::NotV1;
    }
    match buf.iter().take(MAX_V1_LINE).position(|&b| b == b'\r') {
        Some(cr) if cr + 1 < buf.len() => V1Line::Complete(cr + 2),
        Some(_) => V1Line::Pending,
        None if buf.len() < MAX_V1_LINE => V1Line::Pending,
        None => V1Line::NotV1,
    }
}

fn v1_source(a: &v1::Addresses) -> Option<SocketAddr> {
    match a {
        v1::Addresses::Tcp4(x) => Some(SocketAddr::new(x.source_address.into(), x.source_port)),
        v1::Addresses::Tcp6(x) => Some(SocketAddr::new(x.source_address.into(), x.source_port)),
        v1::Addresses::Unknown => None,
    }
}

fn v2_source(a: &v2::Addresses) -> Option<SocketAddr> {
    match a {
        v2::Addresses::IPv4(x) => Some(SocketAddr::new(x.source_address.into(), x.source_port)),
        v2::Addresses::IPv6(x) => Some(SocketAddr::new(x.source_address.into(), x.source_port)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    fn cfg() -> ProxyProtocolConfig {
        ProxyProtocolConfig {
            v1: true,
            v2: true,
            trusted: vec!["127.0.0.0/8".parse().unwrap()],
            timeout: Duration::from_secs(2),
        }
    }

    /// Sends `bytes` in two pieces split at `cut` and returns what `read_header` saw plus
    /// the bytes left on the socket.
    async fn roundtrip(
        bytes: Vec<u8>,
        cut: usize,
        c: ProxyProtocolConfig,
    ) -> (Result<Option<SocketAddr>, ProxyError>, Vec<u8>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let writer = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(&bytes[..cut]).await.unwrap();
            s.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            s.write_all(&bytes[cut..]).await.unwrap();
            s.shutdown().await.unwrap();
        });
        let (mut tcp, _) = l.accept().await.unwrap();
        let res = read_header(&mut tcp, &c).await;
        let mut rest = Vec::new();
        if res.is_ok() {
            tcp.read_to_end(&mut rest).await.unwrap();
        }
        writer.await.unwrap();
        (res, rest)
    }

    #[tokio::test]
    async fn v2_header_and_local_command() {
        let header = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            (
                "[2001:db8::7]:4000".parse::<SocketAddr>().unwrap(),
                "[2001:db8::1]:25".parse::<SocketAddr>().unwrap(),
            ),
        )
        .build()
        .unwrap();
        let mut msg = header.clone();
        msg.extend_from_slice(b"QUIT\r\n");
        let (res, rest) = roundtrip(msg, 10, cfg()).await;
        assert_eq!(res.unwrap(), Some("[2001:db8::7]:4000".parse().unwrap()));
        assert_eq!(rest, b"QUIT\r\n");

        let local = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Local,
            v2::Protocol::Unspecified,
            v2::Addresses::Unspecified,
        )
        .build()
        .unwrap();
        let (res, _) = roundtrip(local, 0, cfg()).await;
        assert_eq!(res.unwrap(), None);
    }

    #[tokio::test]
    async fn garbage_and_disabled_versions_are_refused() {
        let (res, _) = roundtrip(b"EHLO client.example\r\n".to_vec(), 0, cfg()).await;
        assert!(matches!(res, Err(ProxyError::Invalid(_))), "{res:?}");
        let mut only_v2 = cfg();
        only_v2.v1 = false;
        let (res, _) = roundtrip(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(), 0, only_v2).await;
        assert!(
            matches!(res, Err(ProxyError::VersionNotEnabled(1))),
            "{res:?}"
        );
    }

    /// ppp reads some prefixes of a valid line as errors (`PROXY TCP4 203.0.113.7 `:
    /// the destination "" is no address), so the line is parsed only once it is whole.
    #[tokio::test]
    async fn v1_header_split_at_every_octet() {
        let header = b"PROXY TCP4 203.0.113.7 192.0.2.1 40001 25\r\n";
        let mut msg = header.to_vec();
        msg.extend_from_slice(b"EHLO x\r\n");
        for cut in 0..=header.len() {
            let (res, rest) = roundtrip(msg.clone(), cut, cfg()).await;
            assert_eq!(
                res.unwrap(),
                Some("203.0.113.7:40001".parse().unwrap()),
                "cut {cut}"
            );
            assert_eq!(rest, b"EHLO x\r\n", "cut {cut}");
        }
    }

    /// CPU time of the calling thread.
    fn thread_cpu() -> Duration {
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `usage` is a valid rusage for the call to fill.
        assert_eq!(
            unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) },
            0
        );
        let tv = |t: libc::timeval| {
            Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
        };
        tv(usage.ru_utime) + tv(usage.ru_stime)
    }

    /// A header that arrives slowly is waited for without spinning: a peek leaves the
    /// socket readable, so waiting on readiness would return at once, over and over.
    #[tokio::test]
    async fn waiting_for_the_rest_of_a_header_does_not_spin() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (gap_tx, gap_rx) = tokio::sync::oneshot::channel::<()>();
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.write_all(b"PROXY TCP4 203.0.113.7 ").unwrap();
            std::thread::sleep(Duration::from_millis(500));
            s.write_all(b"192.0.2.1 40001 25\r\n").unwrap();
            let _ = gap_tx.send(());
        });
        let (mut tcp, _) = l.accept().await.unwrap();
        let before = thread_cpu();
        let res = read_header(&mut tcp, &cfg()).await;
        let spent = thread_cpu() - before;
        assert_eq!(res.unwrap(), Some("203.0.113.7:40001".parse().unwrap()));
        gap_rx.await.unwrap();
        writer.join().unwrap();
        assert!(
            spent < Duration::from_millis(50),
            "{spent:?} of CPU over a 500 ms wait"
        );
    }
}
