//! What the content filters count, per configured filter: calls and their latency by
//! session stage, verdicts, errors and the `default_action`s applied when a filter failed.
//!
//! Stages are the session's (`connect` = opening the milter connection with the connect
//! and HELO events, `mail`, `rcpt`, `data`, `message` = the end of the message, which is
//! the only one rspamd over HTTP has). Verdicts are the classes rules test
//! ([`FilterResult`]), whatever the filter's kind, and count whether or not the verdict
//! acted (monitor mode, a rule deciding): they are the would-have counts.

use std::time::Duration;

use prometheus::{HistogramVec, IntCounterVec, Registry};

use super::labels::{counter_vec, histogram_vec};
use crate::envelope::FilterResult;
use crate::filters::{Filter, FilterConfig, rspamd};
use crate::milter::{self, DefaultAction};

/// Which client a filter speaks: it picks the stages and error kinds whose series are
/// created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterKind {
    Milter,
    Rspamd,
}

impl FilterKind {
    pub fn of(filter: &Filter) -> FilterKind {
        match filter.kind {
            FilterConfig::Milter(_) => FilterKind::Milter,
            FilterConfig::Rspamd(_) => FilterKind::Rspamd,
        }
    }

    fn stages(self) -> &'static [&'static str] {
        match self {
            FilterKind::Milter => &MILTER_STAGES,
            FilterKind::Rspamd => &[MESSAGE_STAGE],
        }
    }

    fn error_kinds(self) -> Vec<&'static str> {
        match self {
            FilterKind::Milter => milter::ErrorClass::ALL.iter().map(|c| c.as_str()).collect(),
            FilterKind::Rspamd => rspamd::ErrorClass::ALL.iter().map(|c| c.as_str()).collect(),
        }
    }
}

/// The session stages at which a milter is called.
const MILTER_STAGES: [&str; 5] = ["connect", "mail", "rcpt", "data", MESSAGE_STAGE];
/// The end of the message.
const MESSAGE_STAGE: &str = "message";

/// One call, as the session reports it.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    pub filter: &'a str,
    pub stage: &'a str,
    pub took: Duration,
    pub verdict: FilterResult,
    /// The failure's kind, when the call failed.
    pub error: Option<&'a str>,
    /// The default action that answered for the failed filter.
    pub default_action: Option<DefaultAction>,
}

/// The families of the content filters.
#[derive(Clone)]
pub struct FilterMetrics {
    pub filter_calls_total: IntCounterVec,
    pub filter_verdicts_total: IntCounterVec,
    pub filter_errors_total: IntCounterVec,
    pub filter_default_actions_total: IntCounterVec,
    pub filter_seconds: HistogramVec,
}

impl FilterMetrics {
    pub fn register(registry: &Registry) -> Self {
        FilterMetrics {
            filter_calls_total: counter_vec(
                registry,
                "mxguard_filter_calls_total",
                "Calls to a content filter (a milter command, an rspamd request), by filter and stage, whatever their result",
                &["filter", "stage"],
            ),
            filter_verdicts_total: counter_vec(
                registry,
                "mxguard_filter_verdicts_total",
                "Content filter verdicts by filter and verdict (a milter's reply, rspamd's action)",
                &["filter", "verdict"],
            ),
            filter_errors_total: counter_vec(
                registry,
                "mxguard_filter_errors_total",
                "Content filter failures by filter and kind (connect, timeout, protocol, ...)",
                &["filter", "kind"],
            ),
            filter_default_actions_total: counter_vec(
                registry,
                "mxguard_filter_default_actions_total",
                "default_action applied because a content filter failed, by filter and action",
                &["filter", "action"],
            ),
            filter_seconds: histogram_vec(
                registry,
                "mxguard_filter_seconds",
                "Time from a call to a content filter to its answer, by filter and stage",
                &["filter", "stage"],
                vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0, 60.0,
                ],
            ),
        }
    }

    /// Creates a configured filter's counter series at zero: its stages, verdicts,
    /// error kinds and default actions. The latency histogram is left to its first
    /// observation.
    pub fn add_filter(&self, filter: &str, kind: FilterKind) {
        for stage in kind.stages() {
            self.filter_calls_total.with_label_values(&[filter, stage]);
        }
        for verdict in FilterResult::ALL {
            self.filter_verdicts_total
                .with_label_values(&[filter, verdict.as_str()]);
        }
        for error in kind.error_kinds() {
            self.filter_errors_total.with_label_values(&[filter, error]);
        }
        for action in DefaultAction::ALL {
            self.filter_default_actions_total
                .with_label_values(&[filter, action.as_str()]);
        }
    }

    /// One call to a filter: counted, timed, its verdict, failure and default action.
    pub fn call(&self, c: &Call<'_>) {
        self.filter_calls_total
            .with_label_values(&[c.filter, c.stage])
            .inc();
        self.filter_seconds
            .with_label_values(&[c.filter, c.stage])
            .observe(c.took.as_secs_f64());
        self.filter_verdicts_total
            .with_label_values(&[c.filter, c.verdict.as_str()])
            .inc();
        if let Some(kind) = c.error {
            self.filter_errors_total
                .with_label_values(&[c.filter, kind])
                .inc();
        }
        if let Some(action) = c.default_action {
            self.filter_default_actions_total
                .with_label_values(&[c.filter, action.as_str()])
                .inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::encode;

    fn lines_of<'t>(text: &'t str, family: &str, filter: &str) -> Vec<&'t str> {
        let prefix = format!("{family}{{");
        let label = format!("filter=\"{filter}\"");
        text.lines()
            .filter(|l| l.starts_with(&prefix) && l.contains(&label))
            .collect()
    }

    #[test]
    fn a_milter_and_rspamd_get_their_own_series_at_zero() {
        let registry = Registry::new();
        let m = FilterMetrics::register(&registry);
        m.add_filter("clamav", FilterKind::Milter);
        m.add_filter("rspamd", FilterKind::Rspamd);
        let text = encode(&registry);
        let calls = lines_of(&text, "mxguard_filter_calls_total", "clamav");
        assert_eq!(calls.len(), MILTER_STAGES.len(), "{calls:?}");
        assert_eq!(
            lines_of(&text, "mxguard_filter_calls_total", "rspamd"),
            ["mxguard_filter_calls_total{filter=\"rspamd\",stage=\"message\"} 0"]
        );
        for filter in ["clamav", "rspamd"] {
            assert_eq!(
                lines_of(&text, "mxguard_filter_verdicts_total", filter).len(),
                FilterResult::ALL.len()
            );
            for action in DefaultAction::ALL {
                let line = format!(
                    "mxguard_filter_default_actions_total{{action=\"{}\",filter=\"{filter}\"}} 0\n",
                    action.as_str()
                );
                assert!(text.contains(&line), "{line}");
            }
        }
        assert_eq!(
            lines_of(&text, "mxguard_filter_errors_total", "clamav").len(),
            milter::ErrorClass::ALL.len()
        );
        assert_eq!(
            lines_of(&text, "mxguard_filter_errors_total", "rspamd").len(),
            rspamd::ErrorClass::ALL.len()
        );
        assert!(!text.contains("mxguard_filter_seconds_bucket"), "{text}");
    }

    #[test]
    fn a_call_counts_its_stage_verdict_failure_and_default_action() {
        let registry = Registry::new();
        let m = FilterMetrics::register(&registry);
        m.call(&Call {
            filter: "clamav",
            stage: "message",
            took: Duration::from_millis(3),
            verdict: FilterResult::Reject,
            error: None,
            default_action: None,
        });
        m.call(&Call {
            filter: "clamav",
            stage: "mail",
            took: Duration::from_secs(1),
            verdict: FilterResult::Error,
            error: Some("timeout"),
            default_action: Some(DefaultAction::Tempfail),
        });
        let text = encode(&registry);
        for line in [
            "mxguard_filter_calls_total{filter=\"clamav\",stage=\"message\"} 1\n",
            "mxguard_filter_calls_total{filter=\"clamav\",stage=\"mail\"} 1\n",
            "mxguard_filter_seconds_bucket{filter=\"clamav\",stage=\"message\",le=\"0.0025\"} 0\n",
            "mxguard_filter_seconds_bucket{filter=\"clamav\",stage=\"message\",le=\"0.005\"} 1\n",
            "mxguard_filter_verdicts_total{filter=\"clamav\",verdict=\"reject\"} 1\n",
            "mxguard_filter_verdicts_total{filter=\"clamav\",verdict=\"error\"} 1\n",
            "mxguard_filter_errors_total{filter=\"clamav\",kind=\"timeout\"} 1\n",
            "mxguard_filter_default_actions_total{action=\"tempfail\",filter=\"clamav\"} 1\n",
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
    }
}
