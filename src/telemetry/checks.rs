//! What the checks count: each check's result and duration, per DNS list zone, and
//! mxguard's own DNS lookups.

use std::time::Duration;

use prometheus::{HistogramVec, IntCounterVec, Registry};

use super::labels::{counter_vec, histogram_vec, label_values};
use crate::envelope::{AuthStatus, DmarcReason, RdnsStatus};

label_values! {
    /// The `check` label of `mxguard_auth_results_total` and `mxguard_auth_check_seconds`.
    pub enum CheckName {
        Spf => "spf",
        SpfHelo => "spf_helo",
        Dkim => "dkim",
        Dmarc => "dmarc",
        /// Why DMARC could not be applied the usual way, counted beside its result
        /// (not timed).
        DmarcReason => "dmarc_reason",
        Arc => "arc",
        Dnsbl => "dnsbl",
        Rdns => "rdns",
    }
}

/// DKIM and ARC know no `softfail`.
const DKIM_RESULTS: [AuthStatus; 6] = [
    AuthStatus::Pass,
    AuthStatus::Fail,
    AuthStatus::Neutral,
    AuthStatus::None,
    AuthStatus::TempError,
    AuthStatus::PermError,
];

/// DMARC knows no `softfail` and no `neutral` (RFC 7489 §11.2).
const DMARC_RESULTS: [AuthStatus; 5] = [
    AuthStatus::Pass,
    AuthStatus::Fail,
    AuthStatus::None,
    AuthStatus::TempError,
    AuthStatus::PermError,
];

impl CheckName {
    /// The results this check reports, each created at zero.
    pub fn results(self) -> Vec<&'static str> {
        fn strs<T: Copy>(all: &[T], f: fn(T) -> &'static str) -> Vec<&'static str> {
            all.iter().map(|&v| f(v)).collect()
        }
        match self {
            CheckName::Spf | CheckName::SpfHelo => strs(&AuthStatus::ALL, AuthStatus::as_str),
            CheckName::Dkim | CheckName::Arc => strs(&DKIM_RESULTS, AuthStatus::as_str),
            CheckName::Dmarc => strs(&DMARC_RESULTS, AuthStatus::as_str),
            CheckName::DmarcReason => strs(&DmarcReason::ALL, DmarcReason::as_str),
            CheckName::Dnsbl => strs(&DnsblResult::ALL, DnsblResult::as_str),
            CheckName::Rdns => strs(&RdnsStatus::ALL, RdnsStatus::as_str),
        }
    }

    /// Whether the check has a duration of its own (`dmarc_reason` is part of `dmarc`).
    fn timed(self) -> bool {
        self != CheckName::DmarcReason
    }
}

label_values! {
    /// What the DNS lists said about the client, overall or per zone
    /// (`mxguard_dnsbl_zone_results_total{result}`).
    pub enum DnsblResult {
        Listed => "listed",
        Clean => "clean",
        /// The zone could not be asked, or answered outside 127.0.0.0/8.
        Unusable => "unusable",
    }
}

label_values! {
    /// The record type of one of mxguard's own lookups (`mxguard_dns_lookups_total{type}`).
    pub enum DnsRecordType {
        A => "A",
        Aaaa => "AAAA",
        Mx => "MX",
        Txt => "TXT",
        Ptr => "PTR",
        /// The addresses of a name, both families (`lookup_ip`).
        Addresses => "A_AAAA",
    }
}

label_values! {
    /// How a lookup went (`mxguard_dns_lookups_total{result}`).
    pub enum DnsResult {
        Ok => "ok",
        NxDomain => "nxdomain",
        NoData => "nodata",
        Timeout => "timeout",
        /// SERVFAIL, refused, or no server reachable.
        Error => "error",
    }
}

/// The families of the checks and the resolver.
#[derive(Clone)]
pub struct CheckMetrics {
    pub auth_results_total: IntCounterVec,
    pub auth_check_seconds: HistogramVec,
    pub dns_lookups_total: IntCounterVec,
    pub dns_lookup_seconds: HistogramVec,
    pub dnsbl_zone_results_total: IntCounterVec,
}

impl CheckMetrics {
    /// Registers the families; every check's results and every lookup type and result
    /// start at zero.
    pub fn register(registry: &Registry) -> Self {
        let m = CheckMetrics {
            auth_results_total: counter_vec(
                registry,
                "mxguard_auth_results_total",
                "Results of the authentication and reputation checks (spf, spf_helo, dkim, dmarc, dmarc_reason, arc, dnsbl, rdns)",
                &["check", "result"],
            ),
            auth_check_seconds: histogram_vec(
                registry,
                "mxguard_auth_check_seconds",
                "Time one check took, all of its DNS lookups included",
                &["check"],
                vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
                ],
            ),
            dns_lookups_total: counter_vec(
                registry,
                "mxguard_dns_lookups_total",
                "DNS lookups made by mxguard itself (SPF, DNS lists, reverse DNS) by record type and result (ok, nxdomain, nodata, timeout, error)",
                &["type", "result"],
            ),
            dns_lookup_seconds: histogram_vec(
                registry,
                "mxguard_dns_lookup_seconds",
                "DNS lookup latency (cache hits included) by record type",
                &["type"],
                vec![
                    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                    2.5, 5.0,
                ],
            ),
            dnsbl_zone_results_total: counter_vec(
                registry,
                "mxguard_dnsbl_zone_results_total",
                "DNS list answers per zone (its display name) and result (listed, clean, unusable)",
                &["zone", "result"],
            ),
        };
        for check in CheckName::ALL {
            for result in check.results() {
                m.auth_results_total
                    .with_label_values(&[check.as_str(), result]);
            }
            if check.timed() {
                m.auth_check_seconds.with_label_values(&[check.as_str()]);
            }
        }
        for rtype in DnsRecordType::ALL {
            m.dns_lookup_seconds.with_label_values(&[rtype.as_str()]);
            for result in DnsResult::ALL {
                m.dns_lookups_total
                    .with_label_values(&[rtype.as_str(), result.as_str()]);
            }
        }
        m
    }

    /// Creates a DNS list zone's series (by its display name) at zero.
    pub fn add_zone(&self, zone: &str) {
        for result in DnsblResult::ALL {
            self.dnsbl_zone_results_total
                .with_label_values(&[zone, result.as_str()]);
        }
    }

    /// SPF of both identities, checked together.
    pub fn spf(&self, helo: AuthStatus, mail_from: AuthStatus, took: Duration) {
        self.record(CheckName::SpfHelo, helo.as_str(), took);
        self.record(CheckName::Spf, mail_from.as_str(), took);
    }

    pub fn dkim(&self, status: AuthStatus, took: Duration) {
        self.record(CheckName::Dkim, status.as_str(), took);
    }

    /// DMARC's result, and why it could not be applied the usual way, if so.
    pub fn dmarc(&self, status: AuthStatus, reason: Option<DmarcReason>, took: Duration) {
        self.record(CheckName::Dmarc, status.as_str(), took);
        if let Some(r) = reason {
            self.auth_results_total
                .with_label_values(&[CheckName::DmarcReason.as_str(), r.as_str()])
                .inc();
        }
    }

    pub fn arc(&self, status: AuthStatus, took: Duration) {
        self.record(CheckName::Arc, status.as_str(), took);
    }

    /// The DNS lists' verdict on the client (all zones together).
    pub fn dnsbl(&self, result: DnsblResult, took: Duration) {
        self.record(CheckName::Dnsbl, result.as_str(), took);
    }

    /// One zone's answer, by its display name.
    pub fn dnsbl_zone(&self, zone: &str, result: DnsblResult) {
        self.dnsbl_zone_results_total
            .with_label_values(&[zone, result.as_str()])
            .inc();
    }

    pub fn rdns(&self, status: RdnsStatus, took: Duration) {
        self.record(CheckName::Rdns, status.as_str(), took);
    }

    /// One of mxguard's own DNS lookups.
    pub fn dns_lookup(&self, rtype: DnsRecordType, result: DnsResult, took: Duration) {
        self.dns_lookups_total
            .with_label_values(&[rtype.as_str(), result.as_str()])
            .inc();
        self.dns_lookup_seconds
            .with_label_values(&[rtype.as_str()])
            .observe(took.as_secs_f64());
    }

    fn record(&self, check: CheckName, result: &str, took: Duration) {
        self.auth_results_total
            .with_label_values(&[check.as_str(), result])
            .inc();
        self.auth_check_seconds
            .with_label_values(&[check.as_str()])
            .observe(took.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::encode;

    fn has(text: &str, line: &str) {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }

    #[test]
    fn every_result_of_every_check_starts_at_zero() {
        let registry = Registry::new();
        let m = CheckMetrics::register(&registry);
        m.add_zone("dqs");
        let text = encode(&registry);
        let results = |check: &str| -> Vec<String> {
            let prefix = format!("mxguard_auth_results_total{{check=\"{check}\",result=\"");
            text.lines()
                .filter_map(|l| l.strip_prefix(prefix.as_str()))
                .map(|rest| rest.to_owned())
                .collect()
        };
        // Exact sets, as dashboards have seen them since the checks exist.
        let spf = [
            "fail\"} 0",
            "neutral\"} 0",
            "none\"} 0",
            "pass\"} 0",
            "permerror\"} 0",
            "softfail\"} 0",
            "temperror\"} 0",
        ];
        assert_eq!(results("spf"), spf);
        assert_eq!(results("spf_helo"), spf);
        let dkim = [
            "fail\"} 0",
            "neutral\"} 0",
            "none\"} 0",
            "pass\"} 0",
            "permerror\"} 0",
            "temperror\"} 0",
        ];
        assert_eq!(results("dkim"), dkim);
        assert_eq!(results("arc"), dkim);
        assert_eq!(
            results("dmarc"),
            [
                "fail\"} 0",
                "none\"} 0",
                "pass\"} 0",
                "permerror\"} 0",
                "temperror\"} 0"
            ]
        );
        assert_eq!(
            results("dmarc_reason"),
            [
                "multiple_from\"} 0",
                "multiple_records\"} 0",
                "no_from\"} 0"
            ]
        );
        assert_eq!(
            results("dnsbl"),
            ["clean\"} 0", "listed\"} 0", "unusable\"} 0"]
        );
        assert_eq!(
            results("rdns"),
            ["mismatch\"} 0", "none\"} 0", "pass\"} 0", "temperror\"} 0"]
        );
        for check in CheckName::ALL {
            let line = format!("mxguard_auth_check_seconds_count{{check=\"{check}\"}} 0\n");
            assert_eq!(text.contains(&line), check.timed(), "{line}");
        }
        for rtype in DnsRecordType::ALL {
            has(
                &text,
                &format!("mxguard_dns_lookup_seconds_count{{type=\"{rtype}\"}} 0\n"),
            );
            for result in DnsResult::ALL {
                has(
                    &text,
                    &format!(
                        "mxguard_dns_lookups_total{{result=\"{result}\",type=\"{rtype}\"}} 0\n"
                    ),
                );
            }
        }
        for result in DnsblResult::ALL {
            has(
                &text,
                &format!(
                    "mxguard_dnsbl_zone_results_total{{result=\"{result}\",zone=\"dqs\"}} 0\n"
                ),
            );
        }
    }

    #[test]
    fn each_check_counts_under_its_own_name() {
        let registry = Registry::new();
        let m = CheckMetrics::register(&registry);
        let ms = Duration::from_millis(1);
        m.spf(AuthStatus::None, AuthStatus::SoftFail, ms);
        m.dkim(AuthStatus::Pass, ms);
        m.dmarc(AuthStatus::PermError, Some(DmarcReason::NoFrom), ms);
        m.arc(AuthStatus::Fail, ms);
        m.dnsbl(DnsblResult::Listed, ms);
        m.dnsbl_zone("dqs", DnsblResult::Listed);
        m.rdns(RdnsStatus::Mismatch, ms);
        m.dns_lookup(DnsRecordType::Addresses, DnsResult::NxDomain, ms);
        let text = encode(&registry);
        for line in [
            "mxguard_auth_results_total{check=\"spf_helo\",result=\"none\"} 1\n",
            "mxguard_auth_results_total{check=\"spf\",result=\"softfail\"} 1\n",
            "mxguard_auth_results_total{check=\"dkim\",result=\"pass\"} 1\n",
            "mxguard_auth_results_total{check=\"dmarc\",result=\"permerror\"} 1\n",
            "mxguard_auth_results_total{check=\"dmarc_reason\",result=\"no_from\"} 1\n",
            "mxguard_auth_results_total{check=\"arc\",result=\"fail\"} 1\n",
            "mxguard_auth_results_total{check=\"dnsbl\",result=\"listed\"} 1\n",
            "mxguard_auth_results_total{check=\"rdns\",result=\"mismatch\"} 1\n",
            "mxguard_auth_check_seconds_count{check=\"spf\"} 1\n",
            "mxguard_auth_check_seconds_count{check=\"dmarc\"} 1\n",
            "mxguard_dnsbl_zone_results_total{result=\"listed\",zone=\"dqs\"} 1\n",
            "mxguard_dns_lookups_total{result=\"nxdomain\",type=\"A_AAAA\"} 1\n",
            "mxguard_dns_lookup_seconds_count{type=\"A_AAAA\"} 1\n",
        ] {
            has(&text, line);
        }
    }
}
