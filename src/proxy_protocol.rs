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
        let parsed = HeaderResult::parse(&buf[..n]);
        if parsed.is_incomplete() {
            if n == buf.len() {
                if buf.len() >= MAX_HEADER {
                    return Err(ProxyError::Invalid("header too long".into()));
                }
                let grow = (buf.len() * 2).min(MAX_HEADER);
                buf.resize(grow, 0);
            } else {
                // Wait for more bytes to arrive before peeking again.
                tcp.readable().await?;
            }
            continue;
        }
        let (len, addr) = match parsed {
            HeaderResult::V1(Ok(h)) => {
                if !cfg.v1 {
                    return Err(ProxyError::VersionNotEnabled(1));
                }
                (h.header.len(), v1_source(&h.addresses))
            }
            HeaderResult::V2(Ok(h)) => {
                if !cfg.v2 {
                    return Err(ProxyError::VersionNotEnabled(2));
                }
                let addr = match h.command {
                    v2::Command::Local => None,
                    v2::Command::Proxy => v2_source(&h.addresses),
                };
                (h.len(), addr)
            }
            HeaderResult::V1(Err(e)) => return Err(ProxyError::Invalid(e.to_string())),
            HeaderResult::V2(Err(e)) => return Err(ProxyError::Invalid(e.to_string())),
        };
        let mut consumed = vec![0u8; len];
        tcp.read_exact(&mut consumed).await?;
        return Ok(addr);
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
    async fn v1_header_split_anywhere() {
        let msg = b"PROXY TCP4 203.0.113.7 192.0.2.1 40001 25\r\nEHLO x\r\n".to_vec();
        for cut in [0, 5, 20, 44, 45] {
            let (res, rest) = roundtrip(msg.clone(), cut, cfg()).await;
            assert_eq!(
                res.unwrap(),
                Some("203.0.113.7:40001".parse().unwrap()),
                "cut {cut}"
            );
            assert_eq!(rest, b"EHLO x\r\n");
        }
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
}
