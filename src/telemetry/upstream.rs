//! What the relay counts: upstream replies by stage and class, their latency, failed
//! connections and replies that did not fit the command.

use std::sync::Arc;
use std::time::Duration;

use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec, Registry};

use super::labels::{counter_vec, histogram_vec, label_values};

label_values! {
    /// The class of an upstream reply (`mxguard_upstream_replies_total{class}`).
    pub enum ReplyClass {
        Positive => "2xx",
        Intermediate => "3xx",
        Transient => "4xx",
        /// 5xx, and anything outside 2xx–4xx.
        Permanent => "5xx",
    }
}

impl ReplyClass {
    pub fn of(code: u16) -> ReplyClass {
        match code / 100 {
            2 => ReplyClass::Positive,
            3 => ReplyClass::Intermediate,
            4 => ReplyClass::Transient,
            _ => ReplyClass::Permanent,
        }
    }
}

label_values! {
    /// Why connecting to an upstream failed
    /// (`mxguard_upstream_connect_failures_total{reason}`).
    pub enum ConnectFailure {
        Timeout => "timeout",
        /// It answered, but refused us (banner or EHLO not 2xx).
        Refused => "refused",
        Error => "error",
    }
}

/// The families of the upstream client.
#[derive(Clone)]
pub struct UpstreamMetrics {
    pub upstream_replies_total: IntCounterVec,
    pub upstream_connect_failures_total: IntCounterVec,
    pub upstream_protocol_errors_total: IntCounterVec,
    pub upstream_reply_seconds: HistogramVec,
    /// The series of the stages every message goes through, looked up once: a label
    /// lookup hashes its values, and the relay counts about eight replies per message.
    hot: Arc<[StageSeries]>,
}

/// The stages whose reply series are resolved at start (and so exported from zero).
const HOT_STAGES: [&str; 9] = [
    "mail",
    "rcpt",
    "data",
    "end_of_data",
    "xclient",
    "ehlo",
    "rset",
    "quit",
    "banner",
];

struct StageSeries {
    stage: &'static str,
    seconds: Histogram,
    /// By [`ReplyClass`], in declaration order.
    replies: [IntCounter; 4],
}

impl UpstreamMetrics {
    pub fn register(registry: &Registry) -> Self {
        let upstream_replies_total = counter_vec(
            registry,
            "mxguard_upstream_replies_total",
            "Upstream replies by command stage and class (2xx, 3xx, 4xx, 5xx)",
            &["stage", "class"],
        );
        let upstream_reply_seconds = histogram_vec(
            registry,
            "mxguard_upstream_reply_seconds",
            "Time from sending a command upstream to its reply, by stage",
            &["stage"],
            vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
            ],
        );
        let hot = HOT_STAGES
            .iter()
            .map(|&stage| StageSeries {
                stage,
                seconds: upstream_reply_seconds.with_label_values(&[stage]),
                replies: ReplyClass::ALL.map(|class| {
                    upstream_replies_total.with_label_values(&[stage, class.as_str()])
                }),
            })
            .collect();
        UpstreamMetrics {
            upstream_replies_total,
            upstream_connect_failures_total: counter_vec(
                registry,
                "mxguard_upstream_connect_failures_total",
                "Failed connections to an upstream, by upstream index and reason",
                &["upstream", "reason"],
            ),
            upstream_protocol_errors_total: counter_vec(
                registry,
                "mxguard_upstream_protocol_errors_total",
                "Upstream replies that did not fit the command (a 250 to DATA, unsolicited or unparsable replies), by stage; the connection was dropped",
                &["stage"],
            ),
            upstream_reply_seconds,
            hot,
        }
    }

    /// Creates the connect-failure series of upstream `index` (its place in the
    /// configuration) at zero.
    pub fn add_upstream(&self, index: usize) {
        for reason in ConnectFailure::ALL {
            self.upstream_connect_failures_total
                .with_label_values(&[&index.to_string(), reason.as_str()]);
        }
    }

    /// A reply to the command of `stage`, `took` after the command was sent.
    pub fn reply(&self, stage: &str, code: u16, took: Duration) {
        let class = ReplyClass::of(code);
        if let Some(hot) = self.hot.iter().find(|h| h.stage == stage) {
            hot.seconds.observe(took.as_secs_f64());
            hot.replies[class as usize].inc();
            return;
        }
        self.upstream_reply_seconds
            .with_label_values(&[stage])
            .observe(took.as_secs_f64());
        self.upstream_replies_total
            .with_label_values(&[stage, class.as_str()])
            .inc();
    }

    pub fn connect_failed(&self, index: usize, reason: ConnectFailure) {
        self.upstream_connect_failures_total
            .with_label_values(&[&index.to_string(), reason.as_str()])
            .inc();
    }

    /// A reply that did not fit the command at `stage`.
    pub fn protocol_error(&self, stage: &str) {
        self.upstream_protocol_errors_total
            .with_label_values(&[stage])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::encode;

    #[test]
    fn replies_are_classed_and_timed_and_failures_start_at_zero() {
        let registry = Registry::new();
        let m = UpstreamMetrics::register(&registry);
        m.add_upstream(0);
        m.add_upstream(1);
        m.reply("rcpt", 550, Duration::from_millis(2));
        m.reply("rcpt", 250, Duration::from_millis(2));
        m.reply("data", 354, Duration::from_millis(2));
        m.reply("mail", 421, Duration::from_millis(2));
        m.reply("quit", 999, Duration::from_millis(2));
        m.reply("auth", 235, Duration::from_millis(2));
        m.connect_failed(1, ConnectFailure::Refused);
        m.protocol_error("data");
        let text = encode(&registry);
        for line in [
            "mxguard_upstream_replies_total{class=\"5xx\",stage=\"rcpt\"} 1\n",
            "mxguard_upstream_replies_total{class=\"2xx\",stage=\"rcpt\"} 1\n",
            "mxguard_upstream_replies_total{class=\"3xx\",stage=\"data\"} 1\n",
            "mxguard_upstream_replies_total{class=\"4xx\",stage=\"mail\"} 1\n",
            "mxguard_upstream_replies_total{class=\"5xx\",stage=\"quit\"} 1\n",
            // A stage outside the hot set, looked up by its labels.
            "mxguard_upstream_replies_total{class=\"2xx\",stage=\"auth\"} 1\n",
            "mxguard_upstream_reply_seconds_count{stage=\"auth\"} 1\n",
            // The hot stages' series exist from the start.
            "mxguard_upstream_replies_total{class=\"4xx\",stage=\"end_of_data\"} 0\n",
            "mxguard_upstream_reply_seconds_count{stage=\"rcpt\"} 2\n",
            "mxguard_upstream_reply_seconds_bucket{stage=\"rcpt\",le=\"0.001\"} 0\n",
            "mxguard_upstream_reply_seconds_bucket{stage=\"rcpt\",le=\"0.0025\"} 2\n",
            "mxguard_upstream_connect_failures_total{reason=\"refused\",upstream=\"1\"} 1\n",
            "mxguard_upstream_protocol_errors_total{stage=\"data\"} 1\n",
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
        for upstream in ["0", "1"] {
            for reason in ConnectFailure::ALL {
                let want = u64::from(upstream == "1" && reason == ConnectFailure::Refused);
                let line = format!(
                    "mxguard_upstream_connect_failures_total{{reason=\"{reason}\",upstream=\"{upstream}\"}} {want}\n"
                );
                assert!(text.contains(&line), "{line}");
            }
        }
    }
}
