//! What the content filters count, per configured filter: calls and their latency by
//! stage, verdicts, errors and the `default_action`s applied when a filter failed.
//!
//! A milter is called at each stage of the conversation (`negotiate` … `eom`, `abort`,
//! `quit`, as [`Stage`] names them); rspamd once per message, counted as stage `eom`.

use std::time::Duration;

use prometheus::{HistogramVec, IntCounterVec, Registry};

use super::labels::{counter_vec, histogram_vec, label_values};
use crate::filters::FilterConfig;
use crate::filters::rspamd::{self, RspamdAction, RspamdError};
use crate::milter::{self, DefaultAction, MilterError, MilterReply, Stage};

/// Which client a filter speaks: it picks the stages, verdicts and error kinds whose
/// series are created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterKind {
    Milter,
    Rspamd,
}

impl FilterKind {
    pub fn of(config: &FilterConfig) -> FilterKind {
        match config {
            FilterConfig::Milter(_) => FilterKind::Milter,
            FilterConfig::Rspamd(_) => FilterKind::Rspamd,
        }
    }

    fn stages(self) -> &'static [Stage] {
        match self {
            FilterKind::Milter => &Stage::ALL,
            FilterKind::Rspamd => &[RSPAMD_STAGE],
        }
    }

    fn verdicts(self) -> Vec<&'static str> {
        match self {
            FilterKind::Milter => MilterVerdict::ALL.iter().map(|v| v.as_str()).collect(),
            FilterKind::Rspamd => RspamdVerdict::ALL.iter().map(|v| v.as_str()).collect(),
        }
    }

    fn error_kinds(self) -> Vec<&'static str> {
        match self {
            FilterKind::Milter => milter::ErrorClass::ALL.iter().map(|c| c.as_str()).collect(),
            FilterKind::Rspamd => rspamd::ErrorClass::ALL.iter().map(|c| c.as_str()).collect(),
        }
    }
}

/// Rspamd looks at the whole message, once, at its end.
const RSPAMD_STAGE: Stage = Stage::Eom;

label_values! {
    /// A milter's reply (`mxguard_filter_verdicts_total{verdict}` of a milter).
    pub enum MilterVerdict {
        Continue => "continue",
        Accept => "accept",
        Reject => "reject",
        Tempfail => "tempfail",
        /// The milter's own 4xx/5xx reply.
        ReplyCode => "replycode",
        Discard => "discard",
        Shutdown => "shutdown",
        Skip => "skip",
    }
}

impl From<&MilterReply> for MilterVerdict {
    fn from(r: &MilterReply) -> Self {
        match r {
            MilterReply::Continue => MilterVerdict::Continue,
            MilterReply::Accept => MilterVerdict::Accept,
            MilterReply::Reject => MilterVerdict::Reject,
            MilterReply::Tempfail => MilterVerdict::Tempfail,
            MilterReply::ReplyCode(_) => MilterVerdict::ReplyCode,
            MilterReply::Discard => MilterVerdict::Discard,
            MilterReply::Shutdown => MilterVerdict::Shutdown,
            MilterReply::Skip => MilterVerdict::Skip,
        }
    }
}

label_values! {
    /// Rspamd's action (`mxguard_filter_verdicts_total{verdict}` of rspamd), in snake case.
    pub enum RspamdVerdict {
        NoAction => "no_action",
        Greylist => "greylist",
        AddHeader => "add_header",
        RewriteSubject => "rewrite_subject",
        SoftReject => "soft_reject",
        Reject => "reject",
        /// A custom action (`discard`, `quarantine`, …): one series for all, the name is
        /// in the log line.
        Other => "other",
    }
}

impl From<&RspamdAction> for RspamdVerdict {
    fn from(a: &RspamdAction) -> Self {
        match a {
            RspamdAction::NoAction => RspamdVerdict::NoAction,
            RspamdAction::Greylist => RspamdVerdict::Greylist,
            RspamdAction::AddHeader => RspamdVerdict::AddHeader,
            RspamdAction::RewriteSubject => RspamdVerdict::RewriteSubject,
            RspamdAction::SoftReject => RspamdVerdict::SoftReject,
            RspamdAction::Reject => RspamdVerdict::Reject,
            RspamdAction::Other(_) => RspamdVerdict::Other,
        }
    }
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
    /// observation: twelve milter stages of empty buckets would say nothing.
    pub fn add_filter(&self, filter: &str, kind: FilterKind) {
        for stage in kind.stages() {
            self.filter_calls_total
                .with_label_values(&[filter, stage.as_str()]);
        }
        for verdict in kind.verdicts() {
            self.filter_verdicts_total
                .with_label_values(&[filter, verdict]);
        }
        for error in kind.error_kinds() {
            self.filter_errors_total.with_label_values(&[filter, error]);
        }
        for action in DefaultAction::ALL {
            self.filter_default_actions_total
                .with_label_values(&[filter, action.as_str()]);
        }
    }

    /// One call to a milter at `stage` (or to rspamd: use [`Self::rspamd_call`]), answered
    /// or failed after `took`.
    pub fn call(&self, filter: &str, stage: Stage, took: Duration) {
        self.filter_calls_total
            .with_label_values(&[filter, stage.as_str()])
            .inc();
        self.filter_seconds
            .with_label_values(&[filter, stage.as_str()])
            .observe(took.as_secs_f64());
    }

    /// One request to rspamd, answered or failed after `took`.
    pub fn rspamd_call(&self, filter: &str, took: Duration) {
        self.call(filter, RSPAMD_STAGE, took);
    }

    pub fn milter_verdict(&self, filter: &str, reply: &MilterReply) {
        self.verdict(filter, MilterVerdict::from(reply).as_str());
    }

    pub fn rspamd_verdict(&self, filter: &str, action: &RspamdAction) {
        self.verdict(filter, RspamdVerdict::from(action).as_str());
    }

    /// A milter failure, under the milter's name.
    pub fn milter_error(&self, e: &MilterError) {
        self.error(&e.milter, e.kind.class().as_str());
    }

    /// An rspamd failure, under the filter's name.
    pub fn rspamd_error(&self, e: &RspamdError) {
        self.error(&e.filter, e.class().as_str());
    }

    /// The filter failed and its `default_action` was applied.
    pub fn default_action(&self, filter: &str, action: DefaultAction) {
        self.filter_default_actions_total
            .with_label_values(&[filter, action.as_str()])
            .inc();
    }

    fn verdict(&self, filter: &str, verdict: &str) {
        self.filter_verdicts_total
            .with_label_values(&[filter, verdict])
            .inc();
    }

    fn error(&self, filter: &str, kind: &str) {
        self.filter_errors_total
            .with_label_values(&[filter, kind])
            .inc();
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
        assert_eq!(calls.len(), Stage::ALL.len(), "{calls:?}");
        assert!(calls.contains(&"mxguard_filter_calls_total{filter=\"clamav\",stage=\"eom\"} 0"));
        assert_eq!(
            lines_of(&text, "mxguard_filter_calls_total", "rspamd"),
            ["mxguard_filter_calls_total{filter=\"rspamd\",stage=\"eom\"} 0"]
        );
        assert_eq!(
            lines_of(&text, "mxguard_filter_verdicts_total", "clamav").len(),
            MilterVerdict::ALL.len()
        );
        assert_eq!(
            lines_of(&text, "mxguard_filter_verdicts_total", "rspamd"),
            [
                "mxguard_filter_verdicts_total{filter=\"rspamd\",verdict=\"add_header\"} 0",
                "mxguard_filter_verdicts_total{filter=\"rspamd\",verdict=\"greylist\"} 0",
                "mxguard_filter_verdicts_total{filter=\"rspamd\",verdict=\"no_action\"} 0",
                "mxguard_filter_verdicts_total{filter=\"rspamd\",verdict=\"other\"} 0",
                "mxguard_filter_verdicts_total{filter=\"rspamd\",verdict=\"reject\"} 0",
                "mxguard_filter_verdicts_total{filter=\"rspamd\",verdict=\"rewrite_subject\"} 0",
                "mxguard_filter_verdicts_total{filter=\"rspamd\",verdict=\"soft_reject\"} 0",
            ]
        );
        let milter_errors: Vec<String> = milter::ErrorClass::ALL
            .iter()
            .map(|c| {
                format!(
                    "mxguard_filter_errors_total{{filter=\"clamav\",kind=\"{}\"}} 0",
                    c.as_str()
                )
            })
            .collect();
        let mut got = lines_of(&text, "mxguard_filter_errors_total", "clamav");
        got.sort_unstable();
        let mut want: Vec<&str> = milter_errors.iter().map(String::as_str).collect();
        want.sort_unstable();
        assert_eq!(got, want);
        assert_eq!(
            lines_of(&text, "mxguard_filter_errors_total", "rspamd").len(),
            rspamd::ErrorClass::ALL.len()
        );
        for filter in ["clamav", "rspamd"] {
            for action in DefaultAction::ALL {
                let line = format!(
                    "mxguard_filter_default_actions_total{{action=\"{}\",filter=\"{filter}\"}} 0\n",
                    action.as_str()
                );
                assert!(text.contains(&line), "{line}");
            }
        }
        assert!(!text.contains("mxguard_filter_seconds_bucket"), "{text}");
    }

    #[test]
    fn calls_verdicts_errors_and_default_actions_count() {
        let registry = Registry::new();
        let m = FilterMetrics::register(&registry);
        m.call("clamav", Stage::Body, Duration::from_millis(3));
        m.rspamd_call("rspamd", Duration::from_millis(40));
        m.milter_verdict("clamav", &MilterReply::Reject);
        m.rspamd_verdict("rspamd", &RspamdAction::Other("quarantine".into()));
        m.rspamd_verdict("rspamd", &RspamdAction::SoftReject);
        m.milter_error(&MilterError {
            milter: "clamav".into(),
            stage: Stage::Eom,
            kind: milter::ErrorKind::Timeout(Duration::from_secs(1)),
        });
        m.default_action("clamav", DefaultAction::Tempfail);
        let text = encode(&registry);
        for line in [
            "mxguard_filter_calls_total{filter=\"clamav\",stage=\"body\"} 1\n",
            "mxguard_filter_calls_total{filter=\"rspamd\",stage=\"eom\"} 1\n",
            "mxguard_filter_seconds_bucket{filter=\"clamav\",stage=\"body\",le=\"0.0025\"} 0\n",
            "mxguard_filter_seconds_bucket{filter=\"clamav\",stage=\"body\",le=\"0.005\"} 1\n",
            "mxguard_filter_seconds_count{filter=\"rspamd\",stage=\"eom\"} 1\n",
            "mxguard_filter_verdicts_total{filter=\"clamav\",verdict=\"reject\"} 1\n",
            "mxguard_filter_verdicts_total{filter=\"rspamd\",verdict=\"other\"} 1\n",
            "mxguard_filter_verdicts_total{filter=\"rspamd\",verdict=\"soft_reject\"} 1\n",
            "mxguard_filter_errors_total{filter=\"clamav\",kind=\"timeout\"} 1\n",
            "mxguard_filter_default_actions_total{action=\"tempfail\",filter=\"clamav\"} 1\n",
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
    }
}
