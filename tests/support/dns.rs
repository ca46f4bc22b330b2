//! A real DNS server for the tests: hickory-server in process, on a random loopback
//! port (UDP and TCP), serving zones given as zone-file text, or records built in code
//! ([`TestDns::start_records`], for names and data a zone file cannot express). Unknown
//! names get NXDOMAIN; names under `timeout.test.` are never answered, so the checks
//! see a DNS timeout (the "slow zone" of SPF temperror and the failure-policy tests).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::proto::rr::{LowerName, Name, Record, RecordType};
use hickory_server::proto::serialize::txt::Parser;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};

/// The SOA every test zone needs (hickory's in-memory zones require one).
pub fn soa(origin: &str) -> String {
    let under = origin.trim_start_matches('.');
    format!("$ORIGIN {origin}\n@ 60 IN SOA ns.{under} admin.{under} 1 3600 600 86400 60\n")
}

/// A TXT value as zone-file character-strings of at most 255 bytes each (long DKIM
/// keys), quotes and backslashes escaped.
pub fn txt(value: &str) -> String {
    let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    value
        .as_bytes()
        .chunks(200)
        .map(|c| format!("\"{}\"", esc(std::str::from_utf8(c).unwrap())))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Queries for exactly `name` are never answered, except those for the `answered`
/// types (the OpenSPF suites' `TIMEOUT` entry: types listed before it still answer).
pub struct Stall {
    pub name: Name,
    pub answered: Vec<RecordType>,
}

struct Stalling {
    catalog: Catalog,
    /// Whole subtrees that never answer.
    stall: Vec<LowerName>,
    exact: Vec<(LowerName, Vec<RecordType>)>,
}

impl Stalling {
    fn stalls(&self, name: &LowerName, rtype: RecordType) -> bool {
        self.stall.iter().any(|s| s.zone_of(name))
            || self
                .exact
                .iter()
                .any(|(n, answered)| n == name && !answered.contains(&rtype))
    }
}

#[async_trait::async_trait]
impl RequestHandler for Stalling {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        if let Ok(info) = request.request_info()
            && self.stalls(info.query.name(), info.query.query_type())
        {
            // Longer than any resolver timeout the tests configure.
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        self.catalog
            .handle_request::<R, T>(request, response_handle)
            .await
    }
}

pub struct TestDns {
    pub addr: SocketAddr,
    rt: Option<tokio::runtime::Runtime>,
    server: Option<Server<Stalling>>,
}

impl TestDns {
    /// Serves each `(origin, zone text)`; the text should start with [`soa`].
    pub fn start(zones: &[(&str, String)]) -> TestDns {
        TestDns::start_stalling(zones, &[])
    }

    /// Like [`TestDns::start`], and names under each of `stall` are never answered
    /// either.
    pub fn start_stalling(zones: &[(&str, String)], stall: &[String]) -> TestDns {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let mut catalog = Catalog::new();
        for (origin, text) in zones {
            let name = Name::from_ascii(origin).unwrap();
            let (_, records) = Parser::new(text.as_str(), None, Some(name.clone()))
                .parse()
                .unwrap_or_else(|e| panic!("zone {origin}: {e}\n{text}"));
            let handler =
                InMemoryZoneHandler::<hickory_server::net::runtime::TokioRuntimeProvider>::new(
                    name.clone(),
                    records,
                    ZoneType::Primary,
                    AxfrPolicy::Deny,
                )
                .unwrap();
            catalog.upsert(LowerName::from(name), vec![Arc::new(handler)]);
        }
        let handler = Stalling {
            catalog,
            stall: std::iter::once("timeout.test.")
                .chain(stall.iter().map(String::as_str))
                .filter_map(|n| Name::from_ascii(n).ok())
                .map(LowerName::from)
                .collect(),
            exact: Vec::new(),
        };
        TestDns::serve(rt, handler)
    }

    /// Serves `records` in one root zone exactly as built (raw labels with spaces or
    /// colons, TXT data with control characters or non-ASCII bytes, a TXT record with
    /// no strings), and never answers the `stalls`.
    pub fn start_records(records: Vec<Record>, stalls: Vec<Stall>) -> TestDns {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let text = soa(".");
        let (_, soa_records) = Parser::new(text.as_str(), None, Some(Name::root()))
            .parse()
            .expect("root SOA");
        let mut zone =
            InMemoryZoneHandler::<hickory_server::net::runtime::TokioRuntimeProvider>::new(
                Name::root(),
                soa_records,
                ZoneType::Primary,
                AxfrPolicy::Deny,
            )
            .unwrap();
        for r in records {
            let shown = r.to_string();
            assert!(zone.upsert_mut(r, 1), "test DNS: cannot serve {shown}");
        }
        let mut catalog = Catalog::new();
        catalog.upsert(LowerName::from(Name::root()), vec![Arc::new(zone)]);
        let handler = Stalling {
            catalog,
            stall: vec![LowerName::from(Name::from_ascii("timeout.test.").unwrap())],
            exact: stalls
                .into_iter()
                .map(|s| (LowerName::from(s.name), s.answered))
                .collect(),
        };
        TestDns::serve(rt, handler)
    }

    fn serve(rt: tokio::runtime::Runtime, handler: Stalling) -> TestDns {
        let (addr, server) = rt.block_on(async {
            // UDP and TCP on the same port: retry when another test took the TCP port.
            let mut tries = 0;
            let (udp, tcp, addr) = loop {
                let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
                let addr = udp.local_addr().unwrap();
                match tokio::net::TcpListener::bind(addr).await {
                    Ok(tcp) => break (udp, tcp, addr),
                    Err(e) if tries < 50 => {
                        tries += 1;
                        let _ = e;
                    }
                    Err(e) => panic!("test DNS server: {e}"),
                }
            };
            let mut server = Server::new(handler);
            server.register_socket(udp);
            server.register_listener(tcp, Duration::from_secs(5), 65535);
            (addr, server)
        });
        TestDns {
            addr,
            rt: Some(rt),
            server: Some(server),
        }
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        if let (Some(rt), Some(mut server)) = (self.rt.take(), self.server.take()) {
            let _ = rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(2), server.shutdown_gracefully()).await
            });
            rt.shutdown_background();
        }
    }
}
