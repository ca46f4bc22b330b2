//! Accept loops: one per configured listener, with connection limits in total and per
//! client network, and the TLS handshake for implicit-TLS listeners.
//!
//! A refused connection still gets an SMTP answer (`421 4.7.0`), never a silent reset,
//! so a legitimate sender knows to retry later.
//!
//! When accept itself fails (the process is out of descriptors, the kernel out of
//! memory), the loop backs off exponentially instead of spinning on a listening socket
//! that stays readable, writes one log line per kind and interval, and counts every
//! failure in `mxguard_accept_errors_total`. Out of descriptors, it releases a descriptor
//! kept in reserve for the purpose, accepts the waiting connection, answers it
//! `421 4.3.2` and closes it, so clients hear "try later" instead of hanging in the
//! backlog; it serves normally again as soon as descriptors are free.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::{IpNet, Limits, ProxyProtocolConfig, canonical_ip};
use crate::envelope::ClientInfo;
use crate::log_limit::LogLimiter;
use crate::runtime::Runtime;
use crate::session::{ListenerContext, Session};
use crate::stream::Stream;
use crate::telemetry::{AcceptErrorKind, ProtocolErrorKind, RefusalReason};

/// Session limits shared by every listener of the process.
pub struct ConnectionLimits {
    total: Arc<Semaphore>,
    max_sessions: usize,
    /// Open sessions above which the server is under stress.
    stress_above: usize,
    /// Flips when the stress state changes, so waiting sessions shorten their deadlines.
    stress: tokio::sync::watch::Sender<bool>,
    per_network: Arc<Mutex<HashMap<IpNet, usize>>>,
    max_per_network: usize,
    exempt: Vec<IpNet>,
    v4_prefix: u8,
    v6_prefix: u8,
}

/// Holds one client network's slot until the session ends.
pub struct NetworkSlot {
    net: IpNet,
    table: Arc<Mutex<HashMap<IpNet, usize>>>,
}

impl Drop for NetworkSlot {
    fn drop(&mut self) {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = table.get_mut(&self.net) {
            *n -= 1;
            if *n == 0 {
                table.remove(&self.net);
            }
        }
    }
}

impl ConnectionLimits {
    pub fn new(limits: &Limits) -> Self {
        ConnectionLimits {
            total: Arc::new(Semaphore::new(limits.max_sessions)),
            max_sessions: limits.max_sessions,
            stress_above: (limits.max_sessions as f64 * limits.stress_threshold) as usize,
            stress: tokio::sync::watch::Sender::new(false),
            per_network: Arc::new(Mutex::new(HashMap::new())),
            max_per_network: limits.max_sessions_per_network,
            exempt: limits.exempt_networks.clone(),
            v4_prefix: limits.ipv4_prefix,
            v6_prefix: limits.ipv6_prefix,
        }
    }

    /// Sessions open now, in every listener.
    pub fn open(&self) -> usize {
        self.max_sessions - self.total.available_permits()
    }

    /// Whether so many sessions are open that the stress limits apply: then a client
    /// holding a slot idle (or dripping bytes) is cut off much sooner.
    pub fn stressed(&self) -> bool {
        self.open() > self.stress_above
    }

    /// A receiver that wakes when the stress state changes.
    pub fn stress_changes(&self) -> tokio::sync::watch::Receiver<bool> {
        self.stress.subscribe()
    }

    /// Re-evaluates the stress state after a session opened or closed; returns it.
    pub fn update_stress(&self) -> bool {
        let now = self.stressed();
        self.stress
            .send_if_modified(|s| std::mem::replace(s, now) != now);
        now
    }

    fn session_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.total.clone().try_acquire_owned().ok()
    }

    /// A slot for the client's network; `Some(None)` for exempt networks.
    fn network_slot(&self, ip: IpAddr) -> Option<Option<NetworkSlot>> {
        if self.exempt.iter().any(|n| n.contains(ip)) {
            return Some(None);
        }
        let net = IpNet::containing(ip, self.v4_prefix, self.v6_prefix);
        let mut table = self.per_network.lock().unwrap_or_else(|p| p.into_inner());
        let n = table.entry(net).or_insert(0);
        if *n >= self.max_per_network {
            return None;
        }
        *n += 1;
        Some(Some(NetworkSlot {
            net,
            table: self.per_network.clone(),
        }))
    }
}

/// A bound listening socket and what its sessions need.
pub struct Listener {
    pub tcp: TcpListener,
    pub context: ListenerContext,
    pub implicit_tls: bool,
    pub proxy_protocol: Option<Arc<ProxyProtocolConfig>>,
}

impl Listener {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// Accepts until shutdown; every session is spawned on `tracker`.
    pub async fn run(self, rt: Arc<Runtime>, limits: Arc<ConnectionLimits>, tracker: TaskTracker) {
        let mut shutdown = rt.shutdown.clone();
        let mut trouble = AcceptTrouble::new();
        // Linux gives accepted sockets the listening socket's TCP_NODELAY: one system call
        // per connection saved when it is set there (always, unless systemd passed us a
        // socket without it).
        let inherits_nodelay = socket2::SockRef::from(&self.tcp).nodelay().unwrap_or(false);
        loop {
            let accepted = tokio::select! {
                a = self.tcp.accept() => a,
                _ = crate::runtime::shutdown_signalled(&mut shutdown) => break,
            };
            let (tcp, peer) = match accepted {
                Ok(x) => {
                    trouble.recovered(&self.context.name);
                    x
                }
                Err(e) => {
                    let pause = self.accept_failed(&rt, &mut trouble, &e).await;
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = crate::runtime::shutdown_signalled(&mut shutdown) => break,
                    }
                    continue;
                }
            };
            if !inherits_nodelay {
                let _ = tcp.set_nodelay(true);
            }
            let Some(permit) = limits.session_permit() else {
                // Answered off the accept loop, so a client that does not read cannot stall it.
                tokio::spawn(refuse(
                    rt.clone(),
                    self.context.name.clone(),
                    tcp,
                    peer.ip(),
                    RefusalReason::MaxSessions,
                    "Error: too many connections",
                ));
                continue;
            };
            let conn = Accepted {
                rt: rt.clone(),
                context: self.context.clone(),
                implicit_tls: self.implicit_tls,
                proxy_protocol: self.proxy_protocol.clone(),
                limits: limits.clone(),
                tcp,
                peer,
            };
            let rt = rt.clone();
            tracker.spawn(async move {
                conn.serve().await;
                drop(permit);
                rt.metrics.session.set_stress(rt.sessions.update_stress());
            });
        }
        info!(listener = %self.context.name, "listener stopped accepting");
    }

    /// Counts and logs a failed accept, answers a waiting client `421` when the process
    /// is out of descriptors, and says how long to pause before accepting again.
    async fn accept_failed(
        &self,
        rt: &Runtime,
        trouble: &mut AcceptTrouble,
        e: &std::io::Error,
    ) -> Duration {
        let kind = accept_error_kind(e);
        let name = &self.context.name;
        rt.metrics.session.accept_error(name, kind);
        if kind == AcceptErrorKind::Aborted {
            // The client gave up before we accepted: nothing wrong here.
            return Duration::ZERO;
        }
        trouble.failures += 1;
        if ACCEPT_ERRORS.allow(kind.as_str()) {
            warn!(listener = %name, kind = kind.as_str(), error = %e, "accept failed; backing off");
        }
        if kind == AcceptErrorKind::Descriptors {
            match self.refuse_with_reserve(rt, trouble).await {
                // One waiting client was answered: look for the next at once.
                Reserve::Answered => return Duration::ZERO,
                // Nobody waiting (the kernel says EMFILE before it looks): the socket's
                // readiness is cleared now, so the next accept waits for a client; the
                // short pause only bounds the loop should it not be.
                Reserve::NobodyWaiting => return BACKOFF_MIN,
                Reserve::Unavailable => {}
            }
        }
        trouble.next_pause()
    }

    /// Out of descriptors: frees the reserve, accepts one waiting connection, answers it
    /// `421 4.3.2` and closes it, then takes the reserve back.
    async fn refuse_with_reserve(&self, rt: &Runtime, trouble: &mut AcceptTrouble) -> Reserve {
        let Some(reserve) = trouble.reserve.take() else {
            trouble.reserve = open_reserve();
            return Reserve::Unavailable;
        };
        drop(reserve);
        // Only a connection that is already waiting: never block here.
        let accepted = tokio::time::timeout(Duration::ZERO, self.tcp.accept()).await;
        let outcome = match accepted {
            Err(_) => Reserve::NobodyWaiting,
            Ok(Err(_)) => Reserve::Unavailable,
            Ok(Ok((tcp, peer))) => {
                let line = format!(
                    "421 4.3.2 {} Error: too busy, try again later\r\n",
                    rt.config.hostname
                );
                // A fresh socket's send buffer is empty: the line fits without waiting, and
                // the descriptor is back before the reserve is taken again.
                let _ = tcp.try_write(line.as_bytes());
                drop(tcp);
                let reason = RefusalReason::Descriptors;
                rt.metrics.session.refused(&self.context.name, reason);
                if REFUSALS.allow(reason.as_str()) {
                    info!(listener = %self.context.name, client = %peer.ip(), reason = reason.as_str(), "connection refused");
                }
                Reserve::Answered
            }
        };
        trouble.reserve = open_reserve();
        outcome
    }
}

/// What the reserve descriptor achieved.
enum Reserve {
    Answered,
    NobodyWaiting,
    /// No reserve, or the accept failed even with it: back off.
    Unavailable,
}

/// Failed accepts: one line per kind per interval, the rest summarised.
static ACCEPT_ERRORS: LogLimiter = LogLimiter::new(
    "accept failed",
    tracing::Level::WARN,
    1,
    Duration::from_secs(10),
);
/// Refused connections (a connection flood past the limits): a few lines per reason per
/// interval, the rest summarised.
static REFUSALS: LogLimiter = LogLimiter::new(
    "connection refused",
    tracing::Level::INFO,
    10,
    Duration::from_secs(10),
);

const BACKOFF_MIN: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The accept loop's state while accepts fail.
struct AcceptTrouble {
    /// A descriptor held in reserve, released to answer one client when none are left.
    reserve: Option<std::fs::File>,
    backoff: Duration,
    /// Failures since the last successful accept.
    failures: u64,
}

impl AcceptTrouble {
    fn new() -> Self {
        AcceptTrouble {
            reserve: open_reserve(),
            backoff: BACKOFF_MIN,
            failures: 0,
        }
    }

    /// The pause before the next accept: doubling up to a second.
    fn next_pause(&mut self) -> Duration {
        let pause = self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        pause
    }

    /// An accept succeeded: say so once after trouble, and refill the reserve.
    fn recovered(&mut self, listener: &str) {
        if self.failures > 0 {
            info!(
                listener,
                failures = self.failures,
                "accepting connections again"
            );
            self.failures = 0;
            self.backoff = BACKOFF_MIN;
        }
        if self.reserve.is_none() {
            self.reserve = open_reserve();
        }
    }
}

fn open_reserve() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

/// The metric label for a failed accept.
fn accept_error_kind(e: &std::io::Error) -> AcceptErrorKind {
    match e.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE) => AcceptErrorKind::Descriptors,
        Some(libc::ENOBUFS | libc::ENOMEM) => AcceptErrorKind::Memory,
        Some(libc::ECONNABORTED | libc::EPROTO | libc::EPERM) => AcceptErrorKind::Aborted,
        _ => AcceptErrorKind::Other,
    }
}

/// Answers `421 4.7.0` and closes, without waiting long for a client that does not read.
async fn refuse(
    rt: Arc<Runtime>,
    listener: String,
    mut tcp: TcpStream,
    ip: IpAddr,
    reason: RefusalReason,
    text: &'static str,
) {
    rt.metrics.session.refused(&listener, reason);
    if REFUSALS.allow(reason.as_str()) {
        info!(listener = %listener, client = %ip, reason = reason.as_str(), "connection refused");
    }
    let line = format!("421 4.7.0 {} {text}\r\n", rt.config.hostname);
    let _ = tokio::time::timeout(Duration::from_millis(200), async {
        let _ = tcp.write_all(line.as_bytes()).await;
        let _ = tcp.shutdown().await;
    })
    .await;
}

/// One accepted connection, before its session starts.
struct Accepted {
    rt: Arc<Runtime>,
    context: ListenerContext,
    implicit_tls: bool,
    proxy_protocol: Option<Arc<ProxyProtocolConfig>>,
    limits: Arc<ConnectionLimits>,
    tcp: TcpStream,
    peer: SocketAddr,
}

impl Accepted {
    /// The PROXY header (from trusted balancers), the per-network limit on the real
    /// client address, the TLS handshake for implicit TLS, then the session.
    async fn serve(mut self) {
        let rt = self.rt.clone();
        let Some(client) = self.client_address().await else {
            return;
        };
        let ip = canonical_ip(client.ip());
        let Some(_slot) = self.limits.network_slot(ip) else {
            refuse(
                rt.clone(),
                self.context.name.clone(),
                self.tcp,
                ip,
                RefusalReason::MaxSessionsPerNetwork,
                "Error: too many connections from your network",
            )
            .await;
            return;
        };
        let gauge = rt.metrics.session.open_sessions(&self.context.name);
        gauge.inc();
        rt.metrics.session.set_stress(rt.sessions.update_stress());
        // The handshake and the session are boxed: the task then holds a few pointers
        // instead of the largest of their states (about 8 KB), which tokio would copy
        // when spawning and again at each change of the task's stage.
        if let Some(stream) = Box::pin(handshake(
            &rt,
            &self.context,
            self.implicit_tls,
            self.tcp,
            self.peer,
        ))
        .await
        {
            let client = ClientInfo {
                ip,
                port: client.port(),
                listener: self.context.name.clone(),
                submission: self.context.submission,
                tls: stream.is_tls(),
                auth_user: None,
            };
            Box::pin(Session::new(rt.clone(), self.context, stream, client).run()).await;
        }
        gauge.dec();
    }

    /// The client's address: from the PROXY header when the peer is a trusted balancer
    /// (which must send one), else the peer itself.
    async fn client_address(&mut self) -> Option<SocketAddr> {
        let Some(pp) = &self.proxy_protocol else {
            return Some(self.peer);
        };
        if !crate::proxy_protocol::expected_from(pp, canonical_ip(self.peer.ip())) {
            return Some(self.peer);
        }
        match crate::proxy_protocol::read_header(&mut self.tcp, pp).await {
            Ok(Some(addr)) => Some(addr),
            Ok(None) => Some(self.peer),
            Err(e) => {
                self.rt
                    .metrics
                    .session
                    .protocol_error(ProtocolErrorKind::ProxyProtocol);
                warn!(listener = %self.context.name, peer = %self.peer, error = %e, "PROXY header refused; closing");
                None
            }
        }
    }
}

/// The TLS handshake of an implicit-TLS listener; plain listeners pass through.
async fn handshake(
    rt: &Runtime,
    context: &ListenerContext,
    implicit_tls: bool,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Option<Stream> {
    if !implicit_tls {
        return Some(Stream::Plain(tcp));
    }
    let acceptor = context
        .tls
        .clone()
        .expect("validated: implicit TLS has a certificate");
    match tokio::time::timeout(rt.config.limits.command_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => Some(Stream::ServerTls(Box::new(tls))),
        Ok(Err(e)) => {
            rt.metrics
                .session
                .protocol_error(ProtocolErrorKind::TlsHandshake);
            debug!(client = %peer.ip(), error = %e, "implicit TLS handshake failed");
            None
        }
        Err(_) => {
            rt.metrics
                .session
                .protocol_error(ProtocolErrorKind::Timeout);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_errors_by_kind() {
        let kind = |errno| accept_error_kind(&std::io::Error::from_raw_os_error(errno));
        assert_eq!(kind(libc::EMFILE), AcceptErrorKind::Descriptors);
        assert_eq!(kind(libc::ENFILE), AcceptErrorKind::Descriptors);
        assert_eq!(kind(libc::ENOBUFS), AcceptErrorKind::Memory);
        assert_eq!(kind(libc::ECONNABORTED), AcceptErrorKind::Aborted);
        assert_eq!(kind(libc::EINVAL), AcceptErrorKind::Other);
    }

    #[test]
    fn backoff_doubles_to_a_second_and_resets_on_recovery() {
        let mut t = AcceptTrouble::new();
        assert!(t.reserve.is_some(), "a reserve descriptor from the start");
        let pauses: Vec<u128> = (0..10).map(|_| t.next_pause().as_millis()).collect();
        assert_eq!(pauses, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        t.failures = 3;
        t.reserve = None;
        t.recovered("mx");
        assert_eq!((t.failures, t.next_pause()), (0, BACKOFF_MIN));
        assert!(t.reserve.is_some(), "the reserve is taken back");
    }
}
