//! The PROXY v1/v2 header as the listener reads it (`proxy_protocol::parse_header`,
//! the decision `read_header` makes on the bytes it peeked).
//!
//! Properties: no panic; a header never claims more bytes than it was given, and what
//! follows it changes nothing (the listener consumes exactly the header); every proper
//! prefix of a header is `Incomplete` (a header split across reads is still accepted);
//! a disabled version is refused; a header re-encoded from what was parsed (a v1 line,
//! a v2 binary header built with ppp's builder) parses to the same version and client,
//! with the encoding's length.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use mxguard::proxy_protocol::{Peeked, ProxyError, ProxyHeader, parse_header};
use ppp::v2;

fuzz_target!(|data: &[u8]| {
    let Ok(Peeked::Header(h)) = parse_header(data, true, true) else {
        return;
    };
    assert!(
        h.len > 0 && h.len <= data.len(),
        "{h:?} of {} bytes",
        data.len()
    );
    let header = &data[..h.len];
    assert_eq!(
        parse_header(header, true, true).unwrap(),
        Peeked::Header(h.clone())
    );
    let mut followed = header.to_vec();
    followed.extend_from_slice(b"EHLO x\r\n\0\r\n\r\n");
    assert_eq!(
        parse_header(&followed, true, true).unwrap(),
        Peeked::Header(h.clone())
    );
    for cut in prefixes(h.len) {
        match parse_header(&header[..cut], true, true) {
            Ok(Peeked::Incomplete) => {}
            other => panic!("prefix of {cut} bytes of {header:?}: {other:?}"),
        }
    }
    let (v1, v2) = (h.version == 2, h.version == 1);
    assert!(matches!(
        parse_header(data, v1, v2),
        Err(ProxyError::VersionNotEnabled(v)) if v == h.version
    ));
    let encoded = encode(&h);
    assert_eq!(
        parse_header(&encoded, true, true).unwrap(),
        Peeked::Header(ProxyHeader {
            len: encoded.len(),
            ..h
        }),
        "re-encoded as {encoded:?}"
    );
});

/// Every proper prefix of a short header; a sample of a long one (v2 with TLVs).
fn prefixes(len: usize) -> Vec<usize> {
    if len <= 300 {
        (0..len).collect()
    } else {
        (0..300).chain([len / 2, len - 2, len - 1]).collect()
    }
}

fn encode(h: &ProxyHeader) -> Vec<u8> {
    if h.version == 1 {
        return match h.source {
            Some(SocketAddr::V4(s)) => {
                format!("PROXY TCP4 {} 192.0.2.1 {} 25\r\n", s.ip(), s.port()).into_bytes()
            }
            Some(SocketAddr::V6(s)) => {
                format!("PROXY TCP6 {} 2001:db8::1 {} 25\r\n", s.ip(), s.port()).into_bytes()
            }
            None => b"PROXY UNKNOWN\r\n".to_vec(),
        };
    }
    let builder = match h.source {
        Some(source) => {
            let destination = match source.ip() {
                IpAddr::V4(_) => SocketAddr::new(Ipv4Addr::new(192, 0, 2, 1).into(), 25),
                IpAddr::V6(_) => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), 25),
            };
            v2::Builder::with_addresses(
                v2::Version::Two | v2::Command::Proxy,
                v2::Protocol::Stream,
                (source, destination),
            )
        }
        None => v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Local,
            v2::Protocol::Unspecified,
            v2::Addresses::Unspecified,
        ),
    };
    builder.build().expect("ppp builds a header")
}
