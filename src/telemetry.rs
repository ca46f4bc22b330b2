//! Metrics, health endpoints and logging.
//!
//! Metrics are one struct of families registered into a registry that is passed in (no
//! global statics), so tests encode a fresh registry and assert exact lines. Label values
//! are bounded sets (stage, outcome, rule name, listener name), never an address.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio::net::TcpListener;

/// The kinds of client protocol errors and limit hits (`mxguard_protocol_errors_total`'s
/// `kind` label): one list that both counts and initialises the series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtocolErrorKind {
    Syntax,
    UnknownCommand,
    LineTooLong,
    NulInCommand,
    BareLineEnd,
    BadUtf8,
    BadHelo,
    ForbiddenCommand,
    ControlCommand,
    UnsupportedParameter,
    Size,
    HeaderSize,
    NulInData,
    Timeout,
    SlowCommand,
    StressTimeout,
    DataTimeout,
    Pregreet,
    PipeliningAfterData,
    TooManyErrors,
    TooManyJunkCommands,
    TooManyRecipients,
    TooManyTransactions,
    AuthRequired,
    AuthFailed,
    AuthRateLimited,
    AuthDelayed,
    Bdat,
    StarttlsInjection,
    TlsHandshake,
    ProxyProtocol,
}

impl ProtocolErrorKind {
    pub const ALL: [ProtocolErrorKind; 31] = [
        ProtocolErrorKind::Syntax,
        ProtocolErrorKind::UnknownCommand,
        ProtocolErrorKind::LineTooLong,
        ProtocolErrorKind::NulInCommand,
        ProtocolErrorKind::BareLineEnd,
        ProtocolErrorKind::BadUtf8,
        ProtocolErrorKind::BadHelo,
        ProtocolErrorKind::ForbiddenCommand,
        ProtocolErrorKind::ControlCommand,
        ProtocolErrorKind::UnsupportedParameter,
        ProtocolErrorKind::Size,
        ProtocolErrorKind::HeaderSize,
        ProtocolErrorKind::NulInData,
        ProtocolErrorKind::Timeout,
        ProtocolErrorKind::SlowCommand,
        ProtocolErrorKind::StressTimeout,
        ProtocolErrorKind::DataTimeout,
        ProtocolErrorKind::Pregreet,
        ProtocolErrorKind::PipeliningAfterData,
        ProtocolErrorKind::TooManyErrors,
        ProtocolErrorKind::TooManyJunkCommands,
        ProtocolErrorKind::TooManyRecipients,
        ProtocolErrorKind::TooManyTransactions,
        ProtocolErrorKind::AuthRequired,
        ProtocolErrorKind::AuthFailed,
        ProtocolErrorKind::AuthRateLimited,
        ProtocolErrorKind::AuthDelayed,
        ProtocolErrorKind::Bdat,
        ProtocolErrorKind::StarttlsInjection,
        ProtocolErrorKind::TlsHandshake,
        ProtocolErrorKind::ProxyProtocol,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProtocolErrorKind::Syntax => "syntax",
            ProtocolErrorKind::UnknownCommand => "unknown_command",
            ProtocolErrorKind::LineTooLong => "line_too_long",
            ProtocolErrorKind::NulInCommand => "nul_in_command",
            ProtocolErrorKind::BareLineEnd => "bare_line_end",
            ProtocolErrorKind::BadUtf8 => "bad_utf8",
            ProtocolErrorKind::BadHelo => "bad_helo",
            ProtocolErrorKind::ForbiddenCommand => "forbidden_command",
            ProtocolErrorKind::ControlCommand => "control_command",
            ProtocolErrorKind::UnsupportedParameter => "unsupported_parameter",
            ProtocolErrorKind::Size => "size",
            ProtocolErrorKind::HeaderSize => "header_size",
            ProtocolErrorKind::NulInData => "nul_in_data",
            ProtocolErrorKind::Timeout => "timeout",
            ProtocolErrorKind::SlowCommand => "slow_command",
            ProtocolErrorKind::StressTimeout => "stress_timeout",
            ProtocolErrorKind::DataTimeout => "data_timeout",
            ProtocolErrorKind::Pregreet => "pregreet",
            ProtocolErrorKind::PipeliningAfterData => "pipelining_after_data",
            ProtocolErrorKind::TooManyErrors => "too_many_errors",
            ProtocolErrorKind::TooManyJunkCommands => "too_many_junk_commands",
            ProtocolErrorKind::TooManyRecipients => "too_many_recipients",
            ProtocolErrorKind::TooManyTransactions => "too_many_transactions",
            ProtocolErrorKind::AuthRequired => "auth_required",
            ProtocolErrorKind::AuthFailed => "auth_failed",
            ProtocolErrorKind::AuthRateLimited => "auth_rate_limited",
            ProtocolErrorKind::AuthDelayed => "auth_delayed",
            ProtocolErrorKind::Bdat => "bdat",
            ProtocolErrorKind::StarttlsInjection => "starttls_injection",
            ProtocolErrorKind::TlsHandshake => "tls_handshake",
            ProtocolErrorKind::ProxyProtocol => "proxy_protocol",
        }
    }
}

/// Every metric family mxguard exports.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub sessions_total: IntCounterVec,
    pub sessions_open: IntGaugeVec,
    pub sessions_refused_total: IntCounterVec,
    pub accept_errors_total: IntCounterVec,
    pub stress_active: IntGauge,
    pub transactions_total: IntCounterVec,
    pub protocol_errors_total: IntCounterVec,
    pub upstream_replies_total: IntCounterVec,
    pub upstream_connect_failures_total: IntCounterVec,
    pub upstream_protocol_errors_total: IntCounterVec,
    pub upstream_reply_seconds: HistogramVec,
    pub end_of_data_seconds: Histogram,
    pub message_size_bytes: Histogram,
    pub verdicts_total: IntCounterVec,
    pub rules_reload_total: IntCounterVec,
    pub rules_loaded: IntGauge,
    pub rules_last_reload_success_timestamp_seconds: IntGauge,
    pub starttls_injection_total: IntCounter,
    pub tls_reload_total: IntCounterVec,
    pub build_info: IntGaugeVec,
    pub greylist_decisions_total: IntCounterVec,
    pub rate_limit_decisions_total: IntCounterVec,
    pub store_errors_total: IntCounterVec,
    pub auth_results_total: IntCounterVec,
    pub auth_check_seconds: HistogramVec,
    pub dns_lookups_total: IntCounterVec,
    pub dns_lookup_seconds: HistogramVec,
    pub dnsbl_zone_results_total: IntCounterVec,
    pub filter_calls_total: IntCounterVec,
    pub filter_verdicts_total: IntCounterVec,
    pub filter_errors_total: IntCounterVec,
    pub filter_default_actions_total: IntCounterVec,
    pub filter_seconds: HistogramVec,
}

impl Metrics {
    /// Creates every family and registers it into a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let m = Metrics {
            sessions_total: counter_vec(
                "mxguard_sessions_total",
                "SMTP sessions accepted, by listener and whether TLS was used at the end",
                &["listener", "tls"],
            ),
            sessions_open: gauge_vec(
                "mxguard_sessions_open",
                "SMTP sessions open now, by listener",
                &["listener"],
            ),
            sessions_refused_total: counter_vec(
                "mxguard_sessions_refused_total",
                "Connections refused before the banner, by reason",
                &["listener", "reason"],
            ),
            accept_errors_total: counter_vec(
                "mxguard_accept_errors_total",
                "Failed accepts by listener and kind (descriptors, memory, aborted, other)",
                &["listener", "kind"],
            ),
            stress_active: IntGauge::new(
                "mxguard_stress_active",
                "1 while more than limits.stress_threshold of max_sessions are open (stress timeouts and error limits apply)",
            )
            .expect("valid gauge"),
            transactions_total: counter_vec(
                "mxguard_transactions_total",
                "Transactions by outcome (delivered, rejected, tempfailed, upstream_rejected, upstream_failed, aborted)",
                &["outcome"],
            ),
            protocol_errors_total: counter_vec(
                "mxguard_protocol_errors_total",
                "Client protocol errors and limit hits, by kind",
                &["kind"],
            ),
            upstream_replies_total: counter_vec(
                "mxguard_upstream_replies_total",
                "Upstream replies by command stage and class (2xx, 3xx, 4xx, 5xx)",
                &["stage", "class"],
            ),
            upstream_connect_failures_total: counter_vec(
                "mxguard_upstream_connect_failures_total",
                "Failed connections to an upstream, by upstream index and reason",
                &["upstream", "reason"],
            ),
            upstream_protocol_errors_total: counter_vec(
                "mxguard_upstream_protocol_errors_total",
                "Upstream replies that did not fit the command (a 250 to DATA, unsolicited or unparsable replies), by stage; the connection was dropped",
                &["stage"],
            ),
            upstream_reply_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "mxguard_upstream_reply_seconds",
                    "Time from sending a command upstream to its reply, by stage",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
                ]),
                &["stage"],
            )
            .expect("valid histogram"),
            end_of_data_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "mxguard_end_of_data_seconds",
                    "Time from the client's final dot to our reply (checks and relay)",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
                ]),
            )
            .expect("valid histogram"),
            message_size_bytes: Histogram::with_opts(
                HistogramOpts::new("mxguard_message_size_bytes", "Size of messages received")
                    .buckets(prometheus::exponential_buckets(1024.0, 4.0, 10).expect("buckets")),
            )
            .expect("valid histogram"),
            verdicts_total: counter_vec(
                "mxguard_verdicts_total",
                "Rule verdicts by stage, rule, action and mode (monitor = would have acted)",
                &["stage", "rule", "action", "mode"],
            ),
            rules_reload_total: counter_vec(
                "mxguard_rules_reload_total",
                "Rule reloads by result (success, error)",
                &["result"],
            ),
            rules_loaded: IntGauge::new("mxguard_rules_loaded", "Rules in the live set")
                .expect("valid gauge"),
            rules_last_reload_success_timestamp_seconds: IntGauge::new(
                "mxguard_rules_last_reload_success_timestamp_seconds",
                "Unix time of the last successful rules load",
            )
            .expect("valid gauge"),
            starttls_injection_total: IntCounter::new(
                "mxguard_starttls_injection_total",
                "Plaintext pipelined after STARTTLS and discarded",
            )
            .expect("valid counter"),
            tls_reload_total: counter_vec(
                "mxguard_tls_reload_total",
                "Certificate reloads on SIGHUP by result (success, error: the old certificate stays)",
                &["result"],
            ),
            build_info: gauge_vec("mxguard_build_info", "Build information", &["version"]),
            greylist_decisions_total: counter_vec(
                "mxguard_greylist_decisions_total",
                "Greylist decisions by outcome (new, too_early, passed, known, auto_allowed)",
                &["outcome"],
            ),
            rate_limit_decisions_total: counter_vec(
                "mxguard_rate_limit_decisions_total",
                "Rate-limit decisions by what is counted and result (allowed, limited)",
                &["count", "result"],
            ),
            store_errors_total: counter_vec(
                "mxguard_store_errors_total",
                "State store failures by operation (greylist, rate_limit, sweep); the rule's fail mode applied",
                &["op"],
            ),
            auth_results_total: counter_vec(
                "mxguard_auth_results_total",
                "Results of the authentication and reputation checks (spf, spf_helo, dkim, dmarc, dmarc_reason, arc, dnsbl, rdns)",
                &["check", "result"],
            ),
            auth_check_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "mxguard_auth_check_seconds",
                    "Time one check took, all of its DNS lookups included",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
                ]),
                &["check"],
            )
            .expect("valid histogram"),
            dns_lookups_total: counter_vec(
                "mxguard_dns_lookups_total",
                "DNS lookups made by mxguard itself (SPF, DNS lists, reverse DNS) by record type and result (ok, nxdomain, nodata, timeout, error)",
                &["type", "result"],
            ),
            dns_lookup_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "mxguard_dns_lookup_seconds",
                    "DNS lookup latency (cache hits included) by record type",
                )
                .buckets(vec![
                    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                    2.5, 5.0,
                ]),
                &["type"],
            )
            .expect("valid histogram"),
            dnsbl_zone_results_total: counter_vec(
                "mxguard_dnsbl_zone_results_total",
                "DNS list answers per zone (its display name) and result (listed, clean, unusable)",
                &["zone", "result"],
            ),
            filter_calls_total: counter_vec(
                "mxguard_filter_calls_total",
                "Calls to a content filter, by filter and stage (connect, mail, rcpt, data, message)",
                &["filter", "stage"],
            ),
            filter_verdicts_total: counter_vec(
                "mxguard_filter_verdicts_total",
                "Content filter verdicts (pass, reject, tempfail, discard, quarantine, shutdown, error)",
                &["filter", "verdict"],
            ),
            filter_errors_total: counter_vec(
                "mxguard_filter_errors_total",
                "Content filter failures by kind (connect, timeout, not_a_milter, protocol, closed, http, ...)",
                &["filter", "kind"],
            ),
            filter_default_actions_total: counter_vec(
                "mxguard_filter_default_actions_total",
                "Times a filter's default_action answered for it after a failure",
                &["filter", "action"],
            ),
            filter_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "mxguard_filter_seconds",
                    "Time one call to a content filter took, by filter and stage",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0,
                ]),
                &["filter", "stage"],
            )
            .expect("valid histogram"),
            registry,
        };
        m.register_all();
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        m
    }

    fn register_all(&self) {
        let r = &self.registry;
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(self.sessions_total.clone()),
            Box::new(self.sessions_open.clone()),
            Box::new(self.sessions_refused_total.clone()),
            Box::new(self.accept_errors_total.clone()),
            Box::new(self.stress_active.clone()),
            Box::new(self.transactions_total.clone()),
            Box::new(self.protocol_errors_total.clone()),
            Box::new(self.upstream_replies_total.clone()),
            Box::new(self.upstream_connect_failures_total.clone()),
            Box::new(self.upstream_protocol_errors_total.clone()),
            Box::new(self.upstream_reply_seconds.clone()),
            Box::new(self.end_of_data_seconds.clone()),
            Box::new(self.message_size_bytes.clone()),
            Box::new(self.verdicts_total.clone()),
            Box::new(self.rules_reload_total.clone()),
            Box::new(self.rules_loaded.clone()),
            Box::new(self.rules_last_reload_success_timestamp_seconds.clone()),
            Box::new(self.starttls_injection_total.clone()),
            Box::new(self.tls_reload_total.clone()),
            Box::new(self.build_info.clone()),
            Box::new(self.greylist_decisions_total.clone()),
            Box::new(self.rate_limit_decisions_total.clone()),
            Box::new(self.store_errors_total.clone()),
            Box::new(self.auth_results_total.clone()),
            Box::new(self.auth_check_seconds.clone()),
            Box::new(self.dns_lookups_total.clone()),
            Box::new(self.dns_lookup_seconds.clone()),
            Box::new(self.dnsbl_zone_results_total.clone()),
            Box::new(self.filter_calls_total.clone()),
            Box::new(self.filter_verdicts_total.clone()),
            Box::new(self.filter_errors_total.clone()),
            Box::new(self.filter_default_actions_total.clone()),
            Box::new(self.filter_seconds.clone()),
        ];
        for c in collectors {
            r.register(c).expect("metric names are unique");
        }
    }

    /// Creates the series of every known label combination at zero, so dashboards and
    /// alerts see `0` rather than "no data" before the first event (Prometheus advice:
    /// initialise your metrics).
    pub fn initialize_series(&self, listeners: &[String], upstreams: usize) {
        for outcome in [
            "delivered",
            "rejected",
            "tempfailed",
            "upstream_rejected",
            "upstream_tempfailed",
            "upstream_failed",
            "aborted",
        ] {
            self.transactions_total.with_label_values(&[outcome]);
        }
        for l in listeners {
            self.sessions_open.with_label_values(&[l]);
            for tls in ["yes", "no"] {
                self.sessions_total.with_label_values(&[l, tls]);
            }
            for reason in ["max_sessions", "max_sessions_per_network", "descriptors"] {
                self.sessions_refused_total.with_label_values(&[l, reason]);
            }
            for kind in ["descriptors", "memory", "aborted", "other"] {
                self.accept_errors_total.with_label_values(&[l, kind]);
            }
        }
        for i in 0..upstreams {
            for reason in ["timeout", "refused", "error"] {
                self.upstream_connect_failures_total
                    .with_label_values(&[&i.to_string(), reason]);
            }
        }
        for (check, results) in [
            ("spf", crate::checks::SPF_RESULTS),
            ("spf_helo", crate::checks::SPF_RESULTS),
            ("dkim", crate::checks::DKIM_RESULTS),
            ("dmarc", crate::checks::DMARC_RESULTS),
            ("dmarc_reason", crate::checks::DMARC_REASONS),
            ("arc", crate::checks::DKIM_RESULTS),
            ("dnsbl", crate::checks::DNSBL_RESULTS),
            ("rdns", crate::checks::RDNS_RESULTS),
        ] {
            for r in results {
                self.auth_results_total.with_label_values(&[check, r]);
            }
        }
        for rtype in ["A", "AAAA", "MX", "TXT", "PTR", "A_AAAA"] {
            self.dns_lookup_seconds.with_label_values(&[rtype]);
            for result in ["ok", "nxdomain", "nodata", "timeout", "error"] {
                self.dns_lookups_total.with_label_values(&[rtype, result]);
            }
        }
        for check in ["spf", "spf_helo", "dkim", "dmarc", "arc", "dnsbl", "rdns"] {
            self.auth_check_seconds.with_label_values(&[check]);
        }
        for result in ["success", "error"] {
            self.rules_reload_total.with_label_values(&[result]);
            self.tls_reload_total.with_label_values(&[result]);
        }
        for outcome in ["new", "too_early", "passed", "known", "auto_allowed"] {
            self.greylist_decisions_total.with_label_values(&[outcome]);
        }
        for count in ["connections", "messages", "recipients", "bytes"] {
            for result in ["allowed", "limited"] {
                self.rate_limit_decisions_total
                    .with_label_values(&[count, result]);
            }
        }
        for op in ["greylist", "rate_limit", "sweep"] {
            self.store_errors_total.with_label_values(&[op]);
        }
        for kind in ProtocolErrorKind::ALL {
            self.protocol_errors_total
                .with_label_values(&[kind.as_str()]);
        }
    }

    /// Counts a client protocol error or limit hit.
    pub fn protocol_error(&self, kind: ProtocolErrorKind) {
        self.protocol_errors_total
            .with_label_values(&[kind.as_str()])
            .inc();
    }

    /// One call to a content filter: its stage, verdict (`error` on a failure, with
    /// its kind), and the default action that answered for it, if any.
    pub fn filter_call(
        &self,
        filter: &str,
        stage: &str,
        seconds: f64,
        verdict: &str,
        error: Option<&str>,
        default_action: Option<&str>,
    ) {
        self.filter_calls_total
            .with_label_values(&[filter, stage])
            .inc();
        self.filter_seconds
            .with_label_values(&[filter, stage])
            .observe(seconds);
        self.filter_verdicts_total
            .with_label_values(&[filter, verdict])
            .inc();
        if let Some(kind) = error {
            self.filter_errors_total
                .with_label_values(&[filter, kind])
                .inc();
        }
        if let Some(action) = default_action {
            self.filter_default_actions_total
                .with_label_values(&[filter, action])
                .inc();
        }
    }

    pub fn transaction(&self, outcome: &str) {
        self.transactions_total.with_label_values(&[outcome]).inc();
    }

    pub fn upstream_reply(&self, stage: &str, code: u16) {
        let class = match code / 100 {
            2 => "2xx",
            3 => "3xx",
            4 => "4xx",
            _ => "5xx",
        };
        self.upstream_replies_total
            .with_label_values(&[stage, class])
            .inc();
    }

    /// The text exposition of every family.
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter")
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge")
}

/// Readiness as the health endpoint reports it: rules loaded and upstream reachable.
#[derive(Debug, Default)]
pub struct Health {
    pub rules_loaded: AtomicBool,
    pub upstream_reachable: AtomicBool,
}

impl Health {
    pub fn ready(&self) -> bool {
        self.rules_loaded.load(Ordering::Relaxed) && self.upstream_reachable.load(Ordering::Relaxed)
    }
}

/// Failed accepts of the metrics listener: one line per interval.
static METRICS_ACCEPT_ERRORS: crate::log_limit::LogLimiter = crate::log_limit::LogLimiter::new(
    "metrics listener: accept failed",
    tracing::Level::WARN,
    1,
    std::time::Duration::from_secs(10),
);

/// Serves `/metrics`, `/healthz` and `/readyz` (and, given a store, the greylist admin
/// endpoints of [`crate::admin`]) until the task is dropped.
pub async fn serve_http(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    admin: Option<Arc<dyn crate::store::Store>>,
) -> std::io::Result<()> {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors: wait and go on. Returning would close the endpoint
                // for good, hiding the very trouble it should show.
                if METRICS_ACCEPT_ERRORS.allow("metrics") {
                    tracing::warn!(error = %e, "metrics listener: accept failed; retrying");
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        let health = health.clone();
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let metrics = metrics.clone();
                let health = health.clone();
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(route(req, &metrics, &health, admin.as_deref()).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Admin request bodies are a key or a pattern: anything longer is refused.
const MAX_ADMIN_BODY: usize = 64 * 1024;

async fn route(
    req: Request<hyper::body::Incoming>,
    metrics: &Metrics,
    health: &Health,
    admin: Option<&dyn crate::store::Store>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let (status, body) = match path.as_str() {
        "/metrics" => {
            return text_response(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                metrics.encode(),
            );
        }
        "/healthz" => (StatusCode::OK, "ok\n".to_owned()),
        "/readyz" if health.ready() => (StatusCode::OK, "ready\n".to_owned()),
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: rules_loaded={} upstream_reachable={}\n",
                health.rules_loaded.load(Ordering::Relaxed),
                health.upstream_reachable.load(Ordering::Relaxed)
            ),
        ),
        p if p.starts_with("/greylist") && admin.is_some() => {
            let method = req.method().clone();
            let body = match http_body_util::Limited::new(req.into_body(), MAX_ADMIN_BODY)
                .collect()
                .await
            {
                Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
                Err(_) => {
                    return text_response(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "text/plain",
                        "body too large\n".into(),
                    );
                }
            };
            match crate::admin::from_http(&method, &path, &body) {
                Some(cmd) => crate::admin::serve(admin.expect("checked above"), cmd).await,
                None => (StatusCode::NOT_FOUND, "not found\n".to_owned()),
            }
        }
        _ => (StatusCode::NOT_FOUND, "not found\n".to_owned()),
    };
    text_response(status, "text/plain", body)
}

fn text_response(status: StatusCode, ctype: &'static str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global tracing subscriber (`RUST_LOG` overrides the `info` default).
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Binds the metrics listener (separate so the caller can report the bound address).
pub async fn bind_http(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_encode_exact_lines() {
        let m = Metrics::new();
        m.transaction("delivered");
        m.transaction("delivered");
        m.upstream_reply("rcpt", 550);
        let text = m.encode();
        assert!(text.contains("mxguard_transactions_total{outcome=\"delivered\"} 2\n"));
        assert!(text.contains("mxguard_upstream_replies_total{class=\"5xx\",stage=\"rcpt\"} 1\n"));
        assert!(text.contains("mxguard_build_info{version=\""));
    }
}
