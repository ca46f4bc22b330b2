#![allow(dead_code)]
//! The integration tests' DNS server and test zone, shared with the benchmark.

#[path = "../../tests/support/authzone.rs"]
pub mod authzone;
#[path = "../../tests/support/dns.rs"]
pub mod dns;

pub fn tempdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(prefix).tempdir().unwrap()
}
