//! What the warm upstream connection pool counts: sessions served from it (hits) or not
//! (misses, by reason), pooled connections found dead or expired, and how many wait.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry};

use super::labels::{counter_vec, gauge, gauge_vec, label_values};

label_values! {
    /// Why a session did not get a pooled connection
    /// (`mxguard_upstream_pool_misses_total{reason}`).
    pub enum PoolMiss {
        /// Nothing idle for that upstream.
        Empty => "empty",
        /// Every idle connection had died while idle (each also counted as discarded).
        Dead => "dead",
        /// The pool is off (`upstream_pool.size: 0`).
        Disabled => "disabled",
    }
}

/// The families of the upstream pool.
#[derive(Clone)]
pub struct PoolMetrics {
    pub hits_total: IntCounterVec,
    pub misses_total: IntCounterVec,
    pub discarded_dead_total: IntCounterVec,
    pub expired_total: IntCounterVec,
    pub idle: IntGaugeVec,
    pub size: IntGauge,
}

impl PoolMetrics {
    pub fn register(registry: &Registry) -> Self {
        PoolMetrics {
            hits_total: counter_vec(
                registry,
                "mxguard_upstream_pool_hits_total",
                "Client sessions that got a warm pooled upstream connection, by upstream index",
                &["upstream"],
            ),
            misses_total: counter_vec(
                registry,
                "mxguard_upstream_pool_misses_total",
                "Client sessions that opened an upstream connection themselves, by upstream index and reason (empty, dead, disabled)",
                &["upstream", "reason"],
            ),
            discarded_dead_total: counter_vec(
                registry,
                "mxguard_upstream_pool_discarded_dead_total",
                "Pooled upstream connections found closed by the upstream (when taken, or at their first command), discarded and replaced",
                &["upstream"],
            ),
            expired_total: counter_vec(
                registry,
                "mxguard_upstream_pool_expired_total",
                "Pooled upstream connections closed (QUIT) unused after upstream_pool.max_idle",
                &["upstream"],
            ),
            idle: gauge_vec(
                registry,
                "mxguard_upstream_pool_idle",
                "Warm upstream connections waiting in the pool, by upstream index",
                &["upstream"],
            ),
            size: gauge(
                registry,
                "mxguard_upstream_pool_size",
                "Configured upstream_pool.size: warm connections kept for the first upstream that answers (0: off)",
            ),
        }
    }

    /// Creates the series of upstream `index` at zero.
    pub fn add_upstream(&self, index: usize) {
        let _ = self.series(index);
    }

    /// The series of upstream `index`, looked up once (the pool holds them).
    pub fn series(&self, index: usize) -> PoolSeries {
        let i = index.to_string();
        PoolSeries {
            hits: self.hits_total.with_label_values(&[&i]),
            misses: PoolMiss::ALL.map(|r| self.misses_total.with_label_values(&[&i, r.as_str()])),
            dead: self.discarded_dead_total.with_label_values(&[&i]),
            expired: self.expired_total.with_label_values(&[&i]),
            idle: self.idle.with_label_values(&[&i]),
        }
    }
}

/// One upstream's pool series.
#[derive(Clone)]
pub struct PoolSeries {
    hits: IntCounter,
    misses: [IntCounter; PoolMiss::ALL.len()],
    dead: IntCounter,
    expired: IntCounter,
    idle: IntGauge,
}

impl PoolSeries {
    pub fn hit(&self) {
        self.hits.inc();
    }

    pub fn miss(&self, why: PoolMiss) {
        let slot = PoolMiss::ALL.iter().position(|m| *m == why).unwrap_or(0);
        self.misses[slot].inc();
    }

    pub fn discarded_dead(&self) {
        self.dead.inc();
    }

    pub fn expired(&self, n: usize) {
        self.expired.inc_by(n as u64);
    }

    pub fn idle(&self, n: usize) {
        self.idle.set(n as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::encode;

    #[test]
    fn every_upstreams_series_starts_at_zero_and_counts_by_reason() {
        let registry = Registry::new();
        let m = PoolMetrics::register(&registry);
        m.add_upstream(0);
        let s = m.series(1);
        s.hit();
        s.miss(PoolMiss::Dead);
        s.discarded_dead();
        s.expired(2);
        s.idle(3);
        m.size.set(2);
        let text = encode(&registry);
        for line in [
            "mxguard_upstream_pool_hits_total{upstream=\"0\"} 0\n",
            "mxguard_upstream_pool_misses_total{reason=\"disabled\",upstream=\"0\"} 0\n",
            "mxguard_upstream_pool_hits_total{upstream=\"1\"} 1\n",
            "mxguard_upstream_pool_misses_total{reason=\"dead\",upstream=\"1\"} 1\n",
            "mxguard_upstream_pool_misses_total{reason=\"empty\",upstream=\"1\"} 0\n",
            "mxguard_upstream_pool_discarded_dead_total{upstream=\"1\"} 1\n",
            "mxguard_upstream_pool_expired_total{upstream=\"1\"} 2\n",
            "mxguard_upstream_pool_idle{upstream=\"1\"} 3\n",
            "mxguard_upstream_pool_size 2\n",
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
    }
}
