//! Counts failed AUTH attempts per client network and per user name, so password
//! guessing through mxguard is cut off before it reaches the upstream's SASL backend.
//!
//! The upstream decides whether a password is right; this only remembers failures. The
//! reply to a refused attempt is the upstream's own, the same for an unknown user and a
//! wrong password.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures per key within a fixed window.
#[derive(Debug)]
pub struct AuthGuard {
    window: Duration,
    per_network: u32,
    per_user: u32,
    failures: Mutex<HashMap<String, (u32, Instant)>>,
}

impl AuthGuard {
    pub fn new(window: Duration, per_network: u32, per_user: u32) -> Self {
        AuthGuard {
            window,
            per_network,
            per_user,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Whether the network (or the user, once known) is over its limit.
    pub fn blocked(&self, network: &str, user: Option<&str>) -> bool {
        let now = Instant::now();
        let map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let over = |key: String, limit: u32| {
            map.get(&key)
                .is_some_and(|(n, since)| now.duration_since(*since) < self.window && *n >= limit)
        };
        over(format!("net:{network}"), self.per_network)
            || user.is_some_and(|u| over(format!("user:{}", u.to_ascii_lowercase()), self.per_user))
    }

    /// Records one failure for the network and the user.
    pub fn record_failure(&self, network: &str, user: Option<&str>) {
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 100_000 {
            // Bounded memory: forget windows that are over.
            map.retain(|_, (_, since)| now.duration_since(*since) < self.window);
        }
        let mut bump = |key: String| {
            let e = map.entry(key).or_insert((0, now));
            if now.duration_since(e.1) >= self.window {
                *e = (0, now);
            }
            e.0 += 1;
        };
        bump(format!("net:{network}"));
        if let Some(u) = user {
            bump(format!("user:{}", u.to_ascii_lowercase()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_limit_per_network_and_user() {
        let g = AuthGuard::new(Duration::from_secs(60), 3, 2);
        assert!(!g.blocked("192.0.2.0/24", Some("alice")));
        g.record_failure("192.0.2.0/24", Some("alice"));
        g.record_failure("198.51.100.0/24", Some("alice"));
        // Two failures for alice from two networks: the user is blocked everywhere.
        assert!(g.blocked("203.0.113.0/24", Some("alice")));
        assert!(!g.blocked("203.0.113.0/24", Some("bob")));
        g.record_failure("192.0.2.0/24", None);
        g.record_failure("192.0.2.0/24", None);
        assert!(g.blocked("192.0.2.0/24", None));
        assert!(!g.blocked("198.51.100.0/24", None));
    }
}
