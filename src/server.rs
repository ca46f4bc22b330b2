//! Wiring: builds the runtime from a configuration, binds every listener, and runs until
//! SIGTERM, reloading rules on SIGHUP.
//!
//! Start-up order matters to an administrator: rules are validated and sockets bound
//! before the process says it is listening, so a bad rule file or a taken port stops the
//! start instead of producing a proxy that refuses everything.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::listener::{ConnectionLimits, Listener};
use crate::policy::{Policy, ReloadOutcome, ReloadRequest, RuleSet};
use crate::relay::Upstreams;
use crate::runtime::Runtime;
use crate::session::ListenerContext;
use crate::telemetry::{Health, Metrics, ReloadResult, Scope, StoreOp};
use crate::tls::ReloadableCert;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("rules in {dir}:\n{errors}")]
    Rules { dir: String, errors: String },
    #[error("state directory {dir}: {source}")]
    State { dir: String, source: std::io::Error },
    #[error("listener {name} ({addr}): {source}")]
    Bind {
        name: String,
        addr: String,
        source: std::io::Error,
    },
    #[error("metrics listener {addr}: {source}")]
    Metrics {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("state store {store}: {source}")]
    Store {
        store: String,
        source: crate::store::StoreError,
    },
    #[error(transparent)]
    Dns(#[from] crate::dns::DnsSetupError),
}

/// A started server: listeners bound, rules loaded, not yet accepting.
pub struct Server {
    rt: Arc<Runtime>,
    listeners: Vec<Listener>,
    reload: ReloadHandle,
    shutdown_tx: watch::Sender<bool>,
}

/// Builds the handles every session shares from a configuration: the rules (validated
/// first), the spool directory, the upstreams, the state store, the resolver and the
/// checks, and the metrics. The server's own start-up uses it; so do the session's
/// in-process tests, which may swap the upstreams for scripted in-memory ones.
pub async fn build_runtime(
    config: Config,
    shutdown: watch::Receiver<bool>,
) -> Result<Runtime, StartError> {
    let config = Arc::new(config);
    let registry = crate::telemetry::Registry::new();
    let metrics = Arc::new(Metrics::register(
        &registry,
        &Scope::of(&config).with_filters(&config.filters),
    ));
    let health = Arc::new(Health::default());
    let policy = Arc::new(load_policy(&config.rules_dir)?);
    record_success(&metrics, &health, &policy.current());
    let spool_dir = config.state_dir.join("spool");
    prepare_spool_dir(&spool_dir).map_err(|source| StartError::State {
        dir: spool_dir.display().to_string(),
        source,
    })?;
    let upstreams = Upstreams::new(
        config.upstreams.clone(),
        config.hostname.clone(),
        metrics.clone(),
    )?
    .with_pool(&config.upstream_pool);
    let store = config
        .store
        .open(&config.state_dir, Arc::new(crate::store::SystemClock))
        .await
        .map_err(|source| StartError::Store {
            store: config.store.to_string(),
            source,
        })?;
    let dns = crate::dns::Dns::new(&config.dns, metrics.clone())?;
    let checker = Arc::new(crate::checks::Checker::new(
        config.clone(),
        dns,
        metrics.clone(),
    ));
    Ok(Runtime {
        config: config.clone(),
        policy,
        upstreams,
        metrics,
        health,
        shutdown,
        spool_dir,
        auth_guard: crate::auth_guard::AuthGuard::new(crate::auth_guard::AuthLimits {
            window: config.limits.auth_failure_window,
            per_network: config.limits.auth_failures_per_network,
            per_user: config.limits.auth_failures_per_user,
            backoff: config.limits.auth_backoff,
            max_backoff: config.limits.auth_max_backoff,
        }),
        store,
        checker,
        sessions: Arc::new(ConnectionLimits::new(&config.limits)),
    })
}

/// Asks a running server to reload its rules and certificates (what SIGHUP does).
#[derive(Clone)]
pub struct ReloadHandle {
    rt: Arc<Runtime>,
    certs: Arc<Vec<(Arc<ReloadableCert>, crate::config::TlsFiles)>>,
    requests: tokio::sync::mpsc::UnboundedSender<ReloadRequest>,
}

impl ReloadHandle {
    /// Reloads the certificates now and queues a rules reload (READY=1 follows it).
    pub fn reload(&self) {
        crate::systemd::reloading();
        reload_certs(&self.rt, &self.certs);
        let _ = self.requests.send(ReloadRequest::Signal);
    }
}

impl Server {
    /// Loads rules, prepares the state directory, binds every socket.
    pub async fn start(config: Config) -> Result<Server, StartError> {
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let rt = Arc::new(build_runtime(config, shutdown_rx).await?);
        let config = rt.config.clone();
        let mut listeners = Vec::new();
        let mut certs = Vec::new();
        let mut activated = crate::systemd::activated_listeners();
        for (i, l) in config.listeners.iter().enumerate() {
            let tls = match &l.tls {
                Some(files) => {
                    let cert = Arc::new(ReloadableCert::load(files)?);
                    certs.push((cert.clone(), files.clone()));
                    Some(tokio_rustls::TlsAcceptor::from(crate::tls::server_config(
                        cert,
                    )?))
                }
                None => None,
            };
            let inherited = activated
                .remove(&l.name)
                .or_else(|| activated.remove(&i.to_string()));
            let tcp = match inherited {
                Some(std_listener) => tokio::net::TcpListener::from_std(std_listener),
                None => bind(l.address),
            }
            .map_err(|source| StartError::Bind {
                name: l.name.clone(),
                addr: l.address.to_string(),
                source,
            })?;
            listeners.push(Listener {
                tcp,
                context: ListenerContext {
                    name: l.name.clone(),
                    tls,
                    submission: l.mode == crate::config::ListenerMode::Submission,
                    milter_daemon_name: l.milter_daemon_name.clone(),
                },
                implicit_tls: l.implicit_tls,
                proxy_protocol: l.proxy_protocol.clone().map(Arc::new),
            });
        }
        let reloads = spawn_reloader(&rt);
        let reload = ReloadHandle {
            rt: rt.clone(),
            certs: Arc::new(certs),
            requests: reloads,
        };
        Ok(Server {
            rt,
            listeners,
            reload,
            shutdown_tx,
        })
    }

    /// What SIGHUP does, for `main`'s signal handler.
    pub fn reload_handle(&self) -> ReloadHandle {
        self.reload.clone()
    }

    /// Serves until `shutdown` resolves (`main` wires SIGTERM and SIGINT to it), then
    /// drains: idle sessions get `421 4.3.2`, transactions in flight may finish within
    /// `shutdown_grace`.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), StartError> {
        let rt = self.rt.clone();
        if let Some(addr) = rt.config.metrics {
            let http =
                crate::telemetry::bind_http(addr)
                    .await
                    .map_err(|source| StartError::Metrics {
                        addr: addr.to_string(),
                        source,
                    })?;
            info!(addr = %http.local_addr().map(|a| a.to_string()).unwrap_or_default(), "metrics listening");
            let admin = rt.config.admin_endpoints.then(|| rt.store.clone());
            tokio::spawn(crate::telemetry::serve_http(
                http,
                rt.metrics.clone(),
                rt.health.clone(),
                admin,
            ));
        }
        // Learn the upstreams' extensions before the first client: EHLO must never offer
        // what an upstream lacks, nor withhold what all have. If no upstream answers in
        // time, start anyway (offering only what needs no upstream) and keep trying.
        let (probed_tx, probed_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(probe_upstreams(rt.clone(), probed_tx));
        let wait = rt.config.upstreams[0]
            .connect_timeout
            .min(Duration::from_secs(5));
        let _ = tokio::time::timeout(wait, probed_rx).await;
        let pool = tokio::spawn(rt.upstreams.keep_warm(rt.shutdown.clone()));
        tokio::spawn(sweep_store(rt.clone()));
        let limits = rt.sessions.clone();
        let tracker = TaskTracker::new();
        let mut accept_loops = Vec::new();
        for l in self.listeners {
            let addr = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
            info!(listener = %l.context.name, addr = %addr, tls = l.context.tls.is_some(), implicit_tls = l.implicit_tls, "listening");
            accept_loops.push(tokio::spawn(l.run(
                rt.clone(),
                limits.clone(),
                tracker.clone(),
            )));
        }
        crate::systemd::spawn_watchdog();
        crate::systemd::ready(&format!(
            "listening; {} rules",
            rt.policy.current().rule_count()
        ));
        shutdown.await;
        crate::systemd::stopping();
        info!(
            grace_s = rt.config.shutdown_grace.as_secs(),
            "shutting down: draining sessions"
        );
        let _ = self.shutdown_tx.send(true);
        for a in accept_loops {
            let _ = a.await;
        }
        tracker.close();
        if tokio::time::timeout(rt.config.shutdown_grace, tracker.wait())
            .await
            .is_err()
        {
            warn!(
                open = tracker.len(),
                "shutdown grace period over; closing remaining sessions"
            );
        }
        // The pool closed its idle connections when the drain began; this waits for the
        // last QUIT replies (bounded inside).
        let _ = pool.await;
        info!("stopped");
        Ok(())
    }
}

fn bind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Loads the rules directory; a missing directory is an empty set (with a warning), a
/// broken one is a start-up error listing every problem.
pub fn load_policy(dir: &Path) -> Result<Policy, StartError> {
    if !dir.exists() {
        warn!(dir = %dir.display(), "rules directory does not exist: running without rules");
        return Ok(Policy::with_rules(dir, RuleSet::empty()));
    }
    Policy::load(dir).map_err(|errors| StartError::Rules {
        dir: dir.display().to_string(),
        errors: errors.to_string(),
    })
}

fn record_success(metrics: &Metrics, health: &Health, rules: &RuleSet) {
    metrics
        .policy
        .applied(rules.rule_count(), std::time::SystemTime::now());
    health
        .rules_loaded
        .store(true, std::sync::atomic::Ordering::Relaxed);
}

/// One reload path for SIGHUP and the file watcher: requests go through one channel,
/// reloads run one at a time, and each outcome is counted (and, for SIGHUP, reported to
/// systemd with READY=1).
fn spawn_reloader(rt: &Arc<Runtime>) -> tokio::sync::mpsc::UnboundedSender<ReloadRequest> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let policy = rt.policy.clone();
    if policy.dir().exists()
        && let Err(e) = policy.clone().spawn_watcher(tx.clone())
    {
        warn!(dir = %policy.dir().display(), error = %e, "cannot watch the rules directory; reload with SIGHUP");
    }
    let rt2 = rt.clone();
    tokio::spawn(policy.run_reloads(rx, move |req, outcome| {
        match outcome {
            ReloadOutcome::Applied { .. } => {
                record_success(&rt2.metrics, &rt2.health, &rt2.policy.current());
            }
            ReloadOutcome::Rejected { .. } => {
                rt2.metrics.policy.rejected();
            }
        }
        if matches!(req, ReloadRequest::Signal) {
            crate::systemd::ready(&format!(
                "reloaded; {} rules",
                rt2.policy.current().rule_count()
            ));
        }
    }));
    tx
}

/// SIGHUP: new certificates for new sessions; a bad one keeps the old, loudly.
fn reload_certs(rt: &Runtime, certs: &[(Arc<ReloadableCert>, crate::config::TlsFiles)]) {
    for (cert, files) in certs {
        match cert.reload(files) {
            Ok(()) => {
                rt.metrics.ops.tls_reload(ReloadResult::Success);
                info!(cert = %files.cert.display(), "TLS certificate reloaded");
            }
            Err(e) => {
                rt.metrics.ops.tls_reload(ReloadResult::Error);
                error!(
                    "TLS certificate reload FAILED, keeping the old certificate (STARTTLS stays on with it): {e}"
                );
            }
        }
    }
}

/// Deletes expired greylist records and idle rate keys every minute, so the state is
/// bounded by the traffic of the last `expire`, not by all traffic ever seen.
async fn sweep_store(rt: Arc<Runtime>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match rt.store.sweep().await {
            Ok(n) if n > 0 => tracing::debug!(removed = n, "state store swept"),
            Ok(_) => {}
            Err(e) => {
                rt.metrics.store.store_error(StoreOp::Sweep);
                warn!(error = %e, "state store sweep failed");
            }
        }
    }
}

/// Learns the upstream's capabilities at start-up, retrying until one answers; `probed`
/// fires on success.
async fn probe_upstreams(rt: Arc<Runtime>, probed: tokio::sync::oneshot::Sender<()>) {
    let mut delay = Duration::from_millis(500);
    loop {
        match rt.upstreams.probe().await {
            Ok(caps) => {
                rt.health
                    .upstream_reachable
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                info!(?caps, "upstream capabilities");
                let _ = probed.send(());
                return;
            }
            Err(e) => {
                warn!(error = %e, retry_in_s = delay.as_secs_f32(), "upstream probe failed");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Creates the spool directory and removes files a crashed run left behind: a spool
/// file never outlives its transaction, so any found at start-up is garbage.
fn prepare_spool_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "spool") {
            let _ = std::fs::remove_file(path);
        }
    }
    Ok(())
}
