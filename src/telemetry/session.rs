//! What the listeners and the SMTP session count: sessions, refusals, transactions,
//! client protocol errors, message sizes and the time from the final dot to our reply.

use std::time::Duration;

use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry};

use super::labels::{counter, counter_vec, gauge, gauge_vec, histogram, label_values, yes_no};

label_values! {
    /// Who caused a failure (`mxguard_faults_total{source}`): the client's mistakes are
    /// 5xx and count towards its error limit; the upstream's and ours are 4xx, so the
    /// sender retries, and never count against the client.
    pub enum FaultSource {
        Client => "client",
        Upstream => "upstream",
        /// mxguard itself: its spool, a content filter.
        Ours => "ours",
    }
}

label_values! {
    /// The kinds of client protocol errors and limit hits
    /// (`mxguard_protocol_errors_total{kind}`).
    pub enum ProtocolErrorKind {
        Syntax => "syntax",
        UnknownCommand => "unknown_command",
        LineTooLong => "line_too_long",
        NulInCommand => "nul_in_command",
        BareLineEnd => "bare_line_end",
        BadUtf8 => "bad_utf8",
        BadHelo => "bad_helo",
        ForbiddenCommand => "forbidden_command",
        ControlCommand => "control_command",
        UnsupportedParameter => "unsupported_parameter",
        Size => "size",
        HeaderSize => "header_size",
        NulInData => "nul_in_data",
        Timeout => "timeout",
        SlowCommand => "slow_command",
        StressTimeout => "stress_timeout",
        DataTimeout => "data_timeout",
        Pregreet => "pregreet",
        PipeliningAfterData => "pipelining_after_data",
        TooManyErrors => "too_many_errors",
        TooManyJunkCommands => "too_many_junk_commands",
        TooManyRecipients => "too_many_recipients",
        TooManyTransactions => "too_many_transactions",
        AuthRequired => "auth_required",
        AuthFailed => "auth_failed",
        AuthRateLimited => "auth_rate_limited",
        AuthDelayed => "auth_delayed",
        Bdat => "bdat",
        StarttlsInjection => "starttls_injection",
        TlsHandshake => "tls_handshake",
        ProxyProtocol => "proxy_protocol",
    }
}

label_values! {
    /// How a transaction ended (`mxguard_transactions_total{outcome}`).
    pub enum TransactionOutcome {
        /// The upstream accepted the message (250 after the dot).
        Delivered => "delivered",
        /// A rule or a limit refused it with a 5xx.
        Rejected => "rejected",
        /// A rule, a limit or a check refused it with a 4xx.
        Tempfailed => "tempfailed",
        /// The upstream refused it with a 5xx.
        UpstreamRejected => "upstream_rejected",
        /// The upstream refused it with a 4xx (or lacks an extension it uses).
        UpstreamTempfailed => "upstream_tempfailed",
        /// The upstream was unreachable, broke the connection or gave no usable answer.
        UpstreamFailed => "upstream_failed",
        /// Our own fault (the spool): the client got a 4xx, the upstream is not blamed.
        LocalError => "local_error",
        /// A content filter discarded it and `on_discard: drop` asked for silence: the
        /// client got 250, nothing was relayed.
        Discarded => "discarded",
        /// The client reset, quit or was cut off before the transaction ended.
        Aborted => "aborted",
    }
}

label_values! {
    /// Why a connection was refused before the banner
    /// (`mxguard_sessions_refused_total{reason}`).
    pub enum RefusalReason {
        MaxSessions => "max_sessions",
        MaxSessionsPerNetwork => "max_sessions_per_network",
        /// Out of file descriptors: answered from the reserve descriptor.
        Descriptors => "descriptors",
    }
}

label_values! {
    /// Why an accept failed (`mxguard_accept_errors_total{kind}`).
    pub enum AcceptErrorKind {
        Descriptors => "descriptors",
        Memory => "memory",
        /// The client gave up before we accepted: nothing wrong here.
        Aborted => "aborted",
        Other => "other",
    }
}

/// The families of the listeners and the session.
#[derive(Clone)]
pub struct SessionMetrics {
    pub sessions_total: IntCounterVec,
    pub sessions_open: IntGaugeVec,
    pub sessions_refused_total: IntCounterVec,
    pub accept_errors_total: IntCounterVec,
    pub stress_active: IntGauge,
    pub transactions_total: IntCounterVec,
    pub protocol_errors_total: IntCounterVec,
    pub faults_total: IntCounterVec,
    pub end_of_data_seconds: Histogram,
    pub message_size_bytes: Histogram,
    pub starttls_injection_total: IntCounter,
}

impl SessionMetrics {
    /// Registers the families; transaction outcomes and protocol errors start at zero.
    pub fn register(registry: &Registry) -> Self {
        let m = SessionMetrics {
            sessions_total: counter_vec(
                registry,
                "mxguard_sessions_total",
                "SMTP sessions accepted, by listener and whether TLS was used at the end",
                &["listener", "tls"],
            ),
            sessions_open: gauge_vec(
                registry,
                "mxguard_sessions_open",
                "SMTP sessions open now, by listener",
                &["listener"],
            ),
            sessions_refused_total: counter_vec(
                registry,
                "mxguard_sessions_refused_total",
                "Connections refused before the banner, by reason",
                &["listener", "reason"],
            ),
            accept_errors_total: counter_vec(
                registry,
                "mxguard_accept_errors_total",
                "Failed accepts by listener and kind (descriptors, memory, aborted, other)",
                &["listener", "kind"],
            ),
            stress_active: gauge(
                registry,
                "mxguard_stress_active",
                "1 while more than limits.stress_threshold of max_sessions are open (stress timeouts and error limits apply)",
            ),
            transactions_total: counter_vec(
                registry,
                "mxguard_transactions_total",
                "Transactions by outcome (delivered, rejected, tempfailed, upstream_rejected, upstream_tempfailed, upstream_failed, local_error, discarded, aborted)",
                &["outcome"],
            ),
            protocol_errors_total: counter_vec(
                registry,
                "mxguard_protocol_errors_total",
                "Client protocol errors and limit hits, by kind",
                &["kind"],
            ),
            faults_total: counter_vec(
                registry,
                "mxguard_faults_total",
                "Failures by who caused them: client (bad input, limits), upstream (unreachable, out of step, gone), ours (spool, content filters)",
                &["source"],
            ),
            end_of_data_seconds: histogram(
                registry,
                "mxguard_end_of_data_seconds",
                "Time from the client's final dot to our reply (checks and relay)",
                vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
                ],
            ),
            message_size_bytes: histogram(
                registry,
                "mxguard_message_size_bytes",
                "Size of messages received",
                prometheus::exponential_buckets(1024.0, 4.0, 10).expect("buckets"),
            ),
            starttls_injection_total: counter(
                registry,
                "mxguard_starttls_injection_total",
                "Plaintext pipelined after STARTTLS and discarded",
            ),
        };
        for outcome in TransactionOutcome::ALL {
            m.transactions_total.with_label_values(&[outcome.as_str()]);
        }
        for kind in ProtocolErrorKind::ALL {
            m.protocol_errors_total.with_label_values(&[kind.as_str()]);
        }
        for source in FaultSource::ALL {
            m.faults_total.with_label_values(&[source.as_str()]);
        }
        m
    }

    /// Creates a listener's series at zero.
    pub fn add_listener(&self, listener: &str) {
        self.sessions_open.with_label_values(&[listener]);
        for tls in [true, false] {
            self.sessions_total
                .with_label_values(&[listener, yes_no(tls)]);
        }
        for reason in RefusalReason::ALL {
            self.sessions_refused_total
                .with_label_values(&[listener, reason.as_str()]);
        }
        for kind in AcceptErrorKind::ALL {
            self.accept_errors_total
                .with_label_values(&[listener, kind.as_str()]);
        }
    }

    /// A session ended; `tls`: whether it used TLS at the end.
    pub fn session_ended(&self, listener: &str, tls: bool) {
        self.sessions_total
            .with_label_values(&[listener, yes_no(tls)])
            .inc();
    }

    /// The gauge of a listener's open sessions (the caller increments and decrements).
    pub fn open_sessions(&self, listener: &str) -> IntGauge {
        self.sessions_open.with_label_values(&[listener])
    }

    pub fn refused(&self, listener: &str, reason: RefusalReason) {
        self.sessions_refused_total
            .with_label_values(&[listener, reason.as_str()])
            .inc();
    }

    pub fn accept_error(&self, listener: &str, kind: AcceptErrorKind) {
        self.accept_errors_total
            .with_label_values(&[listener, kind.as_str()])
            .inc();
    }

    pub fn set_stress(&self, stressed: bool) {
        self.stress_active.set(i64::from(stressed));
    }

    pub fn transaction(&self, outcome: TransactionOutcome) {
        self.transactions_total
            .with_label_values(&[outcome.as_str()])
            .inc();
    }

    /// Counts a client protocol error or limit hit (a fault of the client's).
    pub fn protocol_error(&self, kind: ProtocolErrorKind) {
        self.protocol_errors_total
            .with_label_values(&[kind.as_str()])
            .inc();
        self.fault(FaultSource::Client);
    }

    /// Counts a failure by who caused it.
    pub fn fault(&self, source: FaultSource) {
        self.faults_total
            .with_label_values(&[source.as_str()])
            .inc();
    }

    /// The time from the final dot (or `BDAT … LAST`) to our reply.
    pub fn end_of_data(&self, took: Duration) {
        self.end_of_data_seconds.observe(took.as_secs_f64());
    }

    pub fn message_size(&self, bytes: u64) {
        self.message_size_bytes.observe(bytes as f64);
    }

    /// Plaintext pipelined after STARTTLS was discarded.
    pub fn starttls_injection(&self) {
        self.starttls_injection_total.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::encode;

    #[test]
    fn every_outcome_kind_and_listener_series_starts_at_zero() {
        let registry = Registry::new();
        let m = SessionMetrics::register(&registry);
        m.add_listener("mx");
        let text = encode(&registry);
        for outcome in TransactionOutcome::ALL {
            let line = format!("mxguard_transactions_total{{outcome=\"{outcome}\"}} 0\n");
            assert!(text.contains(&line), "{line}");
        }
        for kind in ProtocolErrorKind::ALL {
            let line = format!("mxguard_protocol_errors_total{{kind=\"{kind}\"}} 0\n");
            assert!(text.contains(&line), "{line}");
        }
        for reason in RefusalReason::ALL {
            let line = format!(
                "mxguard_sessions_refused_total{{listener=\"mx\",reason=\"{reason}\"}} 0\n"
            );
            assert!(text.contains(&line), "{line}");
        }
        for kind in AcceptErrorKind::ALL {
            let line =
                format!("mxguard_accept_errors_total{{kind=\"{kind}\",listener=\"mx\"}} 0\n");
            assert!(text.contains(&line), "{line}");
        }
        assert!(text.contains("mxguard_sessions_total{listener=\"mx\",tls=\"no\"} 0\n"));
        assert!(text.contains("mxguard_sessions_total{listener=\"mx\",tls=\"yes\"} 0\n"));
        assert!(text.contains("mxguard_sessions_open{listener=\"mx\"} 0\n"));
        assert!(text.contains("mxguard_stress_active 0\n"));
    }

    #[test]
    fn counts_land_on_their_labels() {
        let registry = Registry::new();
        let m = SessionMetrics::register(&registry);
        m.transaction(TransactionOutcome::LocalError);
        m.transaction(TransactionOutcome::Delivered);
        m.transaction(TransactionOutcome::Delivered);
        m.protocol_error(ProtocolErrorKind::BareLineEnd);
        m.session_ended("sub", true);
        m.refused("sub", RefusalReason::MaxSessionsPerNetwork);
        m.accept_error("sub", AcceptErrorKind::Memory);
        m.set_stress(true);
        m.message_size(2000);
        m.end_of_data(Duration::from_millis(3));
        m.starttls_injection();
        let text = encode(&registry);
        for line in [
            "mxguard_transactions_total{outcome=\"delivered\"} 2\n",
            "mxguard_transactions_total{outcome=\"local_error\"} 1\n",
            "mxguard_transactions_total{outcome=\"aborted\"} 0\n",
            "mxguard_protocol_errors_total{kind=\"bare_line_end\"} 1\n",
            "mxguard_sessions_total{listener=\"sub\",tls=\"yes\"} 1\n",
            "mxguard_sessions_refused_total{listener=\"sub\",reason=\"max_sessions_per_network\"} 1\n",
            "mxguard_accept_errors_total{kind=\"memory\",listener=\"sub\"} 1\n",
            "mxguard_stress_active 1\n",
            "mxguard_message_size_bytes_bucket{le=\"4096\"} 1\n",
            "mxguard_message_size_bytes_bucket{le=\"1024\"} 0\n",
            "mxguard_end_of_data_seconds_bucket{le=\"0.0025\"} 0\n",
            "mxguard_end_of_data_seconds_bucket{le=\"0.005\"} 1\n",
            "mxguard_starttls_injection_total 1\n",
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
    }
}
