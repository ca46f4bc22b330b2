//! The handles every session shares: configuration, rules, upstreams, metrics and the
//! shutdown signal. Passed in, never global, so tests build their own.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

use crate::config::Config;
use crate::policy::Policy;
use crate::relay::Upstreams;
use crate::store::Store;
use crate::telemetry::{Health, Metrics};

pub struct Runtime {
    pub config: Arc<Config>,
    /// The live rule set; each session takes one snapshot at its start.
    pub policy: Arc<Policy>,
    pub upstreams: Upstreams,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    /// Becomes `true` when the server drains (SIGTERM).
    pub shutdown: watch::Receiver<bool>,
    /// Where message bodies spill to.
    pub spool_dir: PathBuf,
    /// Failed AUTH attempts per network and user.
    pub auth_guard: crate::auth_guard::AuthGuard,
    /// Greylist and rate-limit state (memory, file or Redis); it carries the clock.
    pub store: Arc<dyn Store>,
    /// SPF, DKIM, DMARC, ARC, DNS lists and reverse DNS over the shared resolver.
    pub checker: Arc<crate::checks::Checker>,
    /// Open sessions, in total and per client network; whether we are under stress.
    pub sessions: Arc<crate::listener::ConnectionLimits>,
}

impl Runtime {
    /// Whether a client's bare CR/LF is normalised rather than refused.
    pub fn normalizes(&self, ip: IpAddr) -> bool {
        self.config
            .data
            .normalize_networks
            .iter()
            .any(|n| n.contains(ip))
    }

    /// The command deadline now: `stress_command_timeout` while under stress.
    pub fn command_timeout(&self) -> std::time::Duration {
        let l = &self.config.limits;
        if self.sessions.stressed() {
            l.command_timeout.min(l.stress_command_timeout)
        } else {
            l.command_timeout
        }
    }

    /// The error limit now: `stress_hard_error_limit` while under stress.
    pub fn hard_error_limit(&self) -> u32 {
        let l = &self.config.limits;
        if self.sessions.stressed() {
            l.hard_error_limit.min(l.stress_hard_error_limit)
        } else {
            l.hard_error_limit
        }
    }
}

/// Resolves when the shutdown flag is set (or its sender is gone).
pub async fn shutdown_signalled(rx: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is dropped here, so callers' futures stay `Send`.
    let _ = rx.wait_for(|s| *s).await;
}
