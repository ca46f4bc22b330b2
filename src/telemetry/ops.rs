//! What operations count: the build, and certificate reloads.

use prometheus::{IntCounterVec, IntGaugeVec, Registry};

use super::labels::{ReloadResult, counter_vec, gauge_vec};

/// The families about the process itself.
#[derive(Clone)]
pub struct OpsMetrics {
    pub build_info: IntGaugeVec,
    pub tls_reload_total: IntCounterVec,
}

impl OpsMetrics {
    /// Registers the families: `build_info` is 1 for this version, both reload
    /// results start at zero.
    pub fn register(registry: &Registry) -> Self {
        let m = OpsMetrics {
            build_info: gauge_vec(
                registry,
                "mxguard_build_info",
                "Build information",
                &["version"],
            ),
            tls_reload_total: counter_vec(
                registry,
                "mxguard_tls_reload_total",
                "Certificate reloads on SIGHUP by result (success, error: the old certificate stays)",
                &["result"],
            ),
        };
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for result in ReloadResult::ALL {
            m.tls_reload_total.with_label_values(&[result.as_str()]);
        }
        m
    }

    pub fn tls_reload(&self, result: ReloadResult) {
        self.tls_reload_total
            .with_label_values(&[result.as_str()])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::encode;

    #[test]
    fn build_info_and_tls_reloads() {
        let registry = Registry::new();
        let m = OpsMetrics::register(&registry);
        m.tls_reload(ReloadResult::Error);
        let text = encode(&registry);
        let build = format!(
            "mxguard_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.contains(&build), "{text}");
        assert!(text.contains("mxguard_tls_reload_total{result=\"error\"} 1\n"));
        assert!(text.contains("mxguard_tls_reload_total{result=\"success\"} 0\n"));
    }
}
