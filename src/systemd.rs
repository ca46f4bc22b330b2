//! The service manager's protocol: readiness, reload and watchdog notifications, and
//! sockets passed in by socket activation.
//!
//! Everything here is a no-op without systemd (`NOTIFY_SOCKET`/`LISTEN_FDS` unset), so the
//! same binary runs under systemd, in a container, or from a shell.

use std::collections::HashMap;
use std::os::fd::{FromRawFd, RawFd};
use std::time::Duration;

use sd_notify::NotifyState;
use tracing::{debug, warn};

/// `READY=1` with a status line: listeners are bound and rules loaded.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `RELOADING=1` with the monotonic timestamp `Type=notify-reload` wants.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// `STOPPING=1`: draining after SIGTERM.
pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("draining sessions"),
    ]);
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!(error = %e, "sd_notify failed");
    }
}

/// Sends `WATCHDOG=1` at half the configured interval while the runtime is alive.
pub fn spawn_watchdog() {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let period = (interval / 2).max(Duration::from_millis(100));
    debug!(?period, "systemd watchdog enabled");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            send(&[NotifyState::Watchdog]);
        }
    });
}

/// Listening sockets passed by systemd socket activation, by `FileDescriptorName=` (or
/// by position as `"0"`, `"1"`, … when unnamed).
pub fn activated_listeners() -> HashMap<String, std::net::TcpListener> {
    let mut out = HashMap::new();
    let Ok(fds) = sd_notify::listen_fds_with_names() else {
        return out;
    };
    for (i, (fd, name)) in fds.enumerate() {
        let key = if name.is_empty() || name == "unknown" {
            i.to_string()
        } else {
            name
        };
        out.insert(key, listener_from_fd(fd));
    }
    out
}

fn listener_from_fd(fd: RawFd) -> std::net::TcpListener {
    // SAFETY: systemd passes these descriptors to this process alone, each once; we take
    // ownership of each exactly once here.
    let l = unsafe { std::net::TcpListener::from_raw_fd(fd) };
    let _ = l.set_nonblocking(true);
    l
}
