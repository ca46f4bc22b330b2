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

    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }
}

/// Resolves when the shutdown flag is set (or its sender is gone).
pub async fn shutdown_signalled(rx: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is dropped here, so callers' futures stay `Send`.
    let _ = rx.wait_for(|s| *s).await;
}
