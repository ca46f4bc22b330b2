//! Metrics, health endpoints and logging.
//!
//! Metrics are one struct of families per area, each registered into the registry the
//! caller passes (the server creates it; no global statics), so tests encode a fresh
//! registry and assert exact lines. Label values are bounded sets declared as enums
//! (stage, outcome, result, kind), or configured names (listener, upstream, zone,
//! filter, rule) — never an address. Each enum's `ALL` both counts and creates the
//! series at zero on start, so dashboards see `0` rather than "no data".
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | [`session`] | sessions, refusals, transactions, client protocol errors, message sizes |
//! | [`upstream`] | upstream replies, their latency, failed connections |
//! | [`pool`] | warm upstream connections: hits, misses, dead and expired ones, idle |
//! | [`policy`] | rule verdicts, rule loads and reloads |
//! | [`checks`] | SPF/DKIM/DMARC/ARC/DNS list/reverse DNS results, mxguard's DNS lookups |
//! | [`store`] | greylist and rate-limit decisions, state store failures |
//! | [`ops`] | build information, certificate reloads |
//! | [`filters`] | content filters: calls, verdicts, errors, default actions, latency |
//! | `http` | `/metrics`, `/healthz`, `/readyz` and the greylist admin endpoints |
//! | `logging` | the tracing subscriber |

pub mod checks;
pub mod filters;
mod http;
mod labels;
mod logging;
pub mod ops;
pub mod policy;
pub mod pool;
pub mod session;
pub mod store;
pub mod upstream;

/// The registry families are registered into (the server creates one).
pub use prometheus::Registry;
use prometheus::{Encoder, TextEncoder};

use crate::config::Config;
use crate::filters::Filter;

pub use checks::{CheckMetrics, CheckName, DnsRecordType, DnsResult, DnsblResult};
pub use filters::{Call as FilterCallMetric, FilterKind, FilterMetrics};
pub use http::{Health, bind_http, serve_http};
pub use labels::ReloadResult;
pub use logging::{LogFormat, init_logging};
pub use ops::OpsMetrics;
pub use policy::PolicyMetrics;
pub use pool::{PoolMetrics, PoolMiss, PoolSeries};
pub use session::{
    AcceptErrorKind, FaultSource, ProtocolErrorKind, RefusalReason, SessionMetrics,
    TransactionOutcome,
};
pub use store::{GreylistOutcome, RateResult, StoreMetrics, StoreOp};
pub use upstream::{ConnectFailure, ReplyClass, UpstreamMetrics};

/// Every metric family mxguard exports, by area: count through the areas' methods,
/// which take the label enums (`metrics.session.transaction(TransactionOutcome::Delivered)`).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub session: SessionMetrics,
    pub upstream: UpstreamMetrics,
    pub pool: PoolMetrics,
    pub policy: PolicyMetrics,
    pub checks: CheckMetrics,
    pub store: StoreMetrics,
    pub ops: OpsMetrics,
    pub filters: FilterMetrics,
}

/// The configured names whose series are created at zero on start.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    pub listeners: Vec<String>,
    /// How many upstreams are configured (their label is the index).
    pub upstreams: usize,
    /// DNS list zones, by display name.
    pub dnsbl_zones: Vec<String>,
    pub filters: Vec<(String, FilterKind)>,
}

impl Scope {
    /// The listeners, upstreams and DNS list zones of `config`.
    pub fn of(config: &Config) -> Scope {
        Scope {
            listeners: config.listeners.iter().map(|l| l.name.clone()).collect(),
            upstreams: config.upstreams.len(),
            dnsbl_zones: config
                .checks
                .dnsbl
                .zones
                .iter()
                .map(|z| z.display_name())
                .collect(),
            filters: Vec::new(),
        }
    }

    /// Adds the configured content filters.
    pub fn with_filters(mut self, filters: &[Filter]) -> Scope {
        self.filters = filters
            .iter()
            .map(|f| (f.name().to_owned(), FilterKind::of(f)))
            .collect();
        self
    }
}

impl Metrics {
    /// Registers every area's families into `registry` and creates the series of every
    /// label value and of every name in `scope` at zero.
    pub fn register(registry: &Registry, scope: &Scope) -> Metrics {
        let m = Metrics {
            registry: registry.clone(),
            session: SessionMetrics::register(registry),
            upstream: UpstreamMetrics::register(registry),
            pool: PoolMetrics::register(registry),
            policy: PolicyMetrics::register(registry),
            checks: CheckMetrics::register(registry),
            store: StoreMetrics::register(registry),
            ops: OpsMetrics::register(registry),
            filters: FilterMetrics::register(registry),
        };
        for listener in &scope.listeners {
            m.session.add_listener(listener);
        }
        for index in 0..scope.upstreams {
            m.upstream.add_upstream(index);
            m.pool.add_upstream(index);
        }
        for zone in &scope.dnsbl_zones {
            m.checks.add_zone(zone);
        }
        for (name, kind) in &scope.filters {
            m.filters.add_filter(name, *kind);
        }
        m
    }

    /// The families in a registry of their own, with no configured names: for tools
    /// and tests that count but serve no `/metrics` (`mxguard explain`, check suites).
    pub fn standalone() -> Metrics {
        Metrics::register(&Registry::new(), &Scope::default())
    }

    /// The registry the families live in.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The text exposition of every family.
    pub fn encode(&self) -> String {
        encode(&self.registry)
    }
}

/// The text exposition of every family in `registry`.
pub fn encode(registry: &Registry) -> String {
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut buf)
        .expect("text encoding cannot fail");
    String::from_utf8(buf).expect("text format is UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_areas_register_into_the_registry_passed_in() {
        let registry = Registry::new();
        let scope = Scope {
            listeners: vec!["mx".into()],
            upstreams: 1,
            dnsbl_zones: vec!["dqs".into()],
            filters: vec![("clamav".into(), FilterKind::Milter)],
        };
        let m = Metrics::register(&registry, &scope);
        m.session.transaction(TransactionOutcome::Delivered);
        m.session.transaction(TransactionOutcome::Delivered);
        m.upstream
            .reply("rcpt", 550, std::time::Duration::from_millis(1));
        // Encoded from the caller's registry, not a copy.
        let text = encode(&registry);
        assert_eq!(text, m.encode());
        for line in [
            "mxguard_transactions_total{outcome=\"delivered\"} 2\n",
            "mxguard_upstream_replies_total{class=\"5xx\",stage=\"rcpt\"} 1\n",
            "mxguard_sessions_open{listener=\"mx\"} 0\n",
            "mxguard_upstream_connect_failures_total{reason=\"timeout\",upstream=\"0\"} 0\n",
            "mxguard_dnsbl_zone_results_total{result=\"clean\",zone=\"dqs\"} 0\n",
            "mxguard_filter_calls_total{filter=\"clamav\",stage=\"message\"} 0\n",
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
        assert!(text.contains("mxguard_build_info{version=\""));
    }
}
