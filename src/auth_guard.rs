//! Failed AUTH attempts, counted so that password guessing through mxguard is cut off
//! before it reaches the upstream's SASL backend — without handing the attacker an
//! oracle, and without letting the attacker lock the real user out.
//!
//! The upstream decides whether a password is right; this decides, *before* an attempt
//! is relayed, whether it may be relayed at all ([`AuthGuard::gate`]):
//!
//! * **per client network**: past `auth_failures_per_network` failures in the window,
//!   the network may not authenticate at all;
//! * **per (user, network)**: past `auth_failures_per_user` failures for one user from
//!   one network, that network may not try that user. A refused attempt is never
//!   relayed, so the right password and a wrong one get the same answer;
//! * **per user, everywhere — a delay, not a lock**: once a user has had
//!   `auth_failures_per_user` failures in the window across all networks (a guessing
//!   attack spread over many networks), each attempt for that user from a network with
//!   no recent success for it waits an exponential delay before it is relayed. A hard
//!   global lock would let an attacker lock the real user out of their own mailbox; the
//!   delay slows a distributed attack to a crawl while the user, from a network that
//!   logged in before, is never slowed.
//!
//! User names are counted case-insensitively by their local part (`alice`,
//! `Alice@mx.test` and `alice@other.realm` are one key): a backend such as Cyrus with
//! `smtpd_sasl_local_domain` treats the qualified and unqualified forms as one account,
//! and counting too much together only ever makes the limit stricter.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What may happen with one authentication attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthGate {
    /// Relay it now.
    Allow,
    /// Relay it after this delay (the user is under a distributed attack).
    Delay(Duration),
    /// Do not relay it: this network, or this user from this network, is over its limit.
    Refuse,
}

/// How long a successful login keeps a (user, network) pair exempt from the delay.
const REMEMBER_SUCCESS: Duration = Duration::from_secs(30 * 24 * 3600);

/// Counted keys beyond this are pruned of expired entries.
const MAX_KEYS: usize = 100_000;

#[derive(Debug, Clone)]
pub struct AuthLimits {
    pub window: Duration,
    pub per_network: u32,
    pub per_user: u32,
    /// The first delay once a user is over its limit across networks; doubles per failure.
    pub backoff: Duration,
    pub max_backoff: Duration,
}

/// Failures per key within a fixed window, and recent successes.
#[derive(Debug)]
pub struct AuthGuard {
    limits: AuthLimits,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// key → (failures, start of the window)
    failures: HashMap<String, (u32, Instant)>,
    /// "user|network" → time of the last success
    successes: HashMap<String, Instant>,
}

/// The key a user name is counted under.
pub fn canonical_user(user: &str) -> String {
    let local = user.rsplit_once('@').map_or(user, |(l, _)| l);
    local.to_lowercase()
}

impl AuthGuard {
    pub fn new(limits: AuthLimits) -> Self {
        AuthGuard {
            limits,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count(&self, state: &State, key: &str, now: Instant) -> u32 {
        state
            .failures
            .get(key)
            .filter(|(_, since)| now.duration_since(*since) < self.limits.window)
            .map_or(0, |(n, _)| *n)
    }

    /// Whether the network may authenticate at all (checked before the user is known).
    pub fn network_allowed(&self, network: &str) -> bool {
        let state = self.lock();
        self.count(&state, &net_key(network), Instant::now()) < self.limits.per_network
    }

    /// Decides an attempt for `user` (canonical, see [`canonical_user`]) from `network`.
    pub fn gate(&self, network: &str, user: &str) -> AuthGate {
        let now = Instant::now();
        let state = self.lock();
        let l = &self.limits;
        if self.count(&state, &net_key(network), now) >= l.per_network
            || self.count(&state, &pair_key(user, network), now) >= l.per_user
        {
            return AuthGate::Refuse;
        }
        let everywhere = self.count(&state, &user_key(user), now);
        let known = state
            .successes
            .get(&pair_key(user, network))
            .is_some_and(|t| now.duration_since(*t) < REMEMBER_SUCCESS);
        if everywhere < l.per_user || known {
            return AuthGate::Allow;
        }
        let doublings = (everywhere - l.per_user).min(20);
        let delay = l.backoff.saturating_mul(1 << doublings).min(l.max_backoff);
        AuthGate::Delay(delay)
    }

    /// Records one failure for the network and, when known, the user.
    pub fn record_failure(&self, network: &str, user: Option<&str>) {
        let now = Instant::now();
        let window = self.limits.window;
        let mut state = self.lock();
        if state.failures.len() > MAX_KEYS {
            state
                .failures
                .retain(|_, (_, since)| now.duration_since(*since) < window);
        }
        let mut bump = |key: String| {
            let e = state.failures.entry(key).or_insert((0, now));
            if now.duration_since(e.1) >= window {
                *e = (0, now);
            }
            e.0 += 1;
        };
        bump(net_key(network));
        if let Some(u) = user {
            bump(pair_key(u, network));
            bump(user_key(u));
        }
    }

    /// Records a successful login: the pair's failures are forgotten and the network
    /// is exempt from the user's global delay from now on.
    pub fn record_success(&self, network: &str, user: &str) {
        let now = Instant::now();
        let mut state = self.lock();
        state.failures.remove(&pair_key(user, network));
        if state.successes.len() > MAX_KEYS {
            state
                .successes
                .retain(|_, t| now.duration_since(*t) < REMEMBER_SUCCESS);
        }
        state.successes.insert(pair_key(user, network), now);
    }
}

fn net_key(network: &str) -> String {
    format!("net:{network}")
}

fn user_key(user: &str) -> String {
    format!("user:{user}")
}

fn pair_key(user: &str, network: &str) -> String {
    format!("pair:{user}|{network}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> AuthGuard {
        AuthGuard::new(AuthLimits {
            window: Duration::from_secs(60),
            per_network: 5,
            per_user: 2,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        })
    }

    const A: &str = "192.0.2.0/24";
    const B: &str = "198.51.100.0/24";
    const C: &str = "203.0.113.0/24";

    #[test]
    fn a_guessing_network_is_refused_for_that_user_only() {
        let g = guard();
        assert_eq!(g.gate(A, "alice"), AuthGate::Allow);
        g.record_failure(A, Some("alice"));
        g.record_failure(A, Some("alice"));
        assert_eq!(g.gate(A, "alice"), AuthGate::Refuse);
        assert_eq!(g.gate(A, "bob"), AuthGate::Allow);
        assert!(g.network_allowed(A));
    }

    #[test]
    fn a_spread_attack_delays_unknown_networks_but_not_the_users_own() {
        let g = guard();
        g.record_failure(B, Some("alice"));
        g.record_success(C, "alice");
        g.record_failure(A, Some("alice"));
        // Two failures everywhere: unknown networks wait, the one she used does not.
        assert_eq!(
            g.gate("10.0.0.0/24", "alice"),
            AuthGate::Delay(Duration::from_millis(100))
        );
        assert_eq!(g.gate(C, "alice"), AuthGate::Allow);
        g.record_failure("10.9.0.0/24", Some("alice"));
        g.record_failure("10.8.0.0/24", Some("alice"));
        assert_eq!(
            g.gate("10.0.0.0/24", "alice"),
            AuthGate::Delay(Duration::from_millis(400))
        );
        for i in 0..10 {
            g.record_failure(&format!("10.7.{i}.0/24"), Some("alice"));
        }
        assert_eq!(
            g.gate("10.0.0.0/24", "alice"),
            AuthGate::Delay(Duration::from_secs(1))
        );
        assert_eq!(g.gate(C, "alice"), AuthGate::Allow);
    }

    #[test]
    fn a_network_over_its_limit_is_refused_for_everyone() {
        let g = guard();
        for u in ["a", "b", "c", "d", "e"] {
            g.record_failure(A, Some(u));
        }
        assert!(!g.network_allowed(A));
        assert_eq!(g.gate(A, "zed"), AuthGate::Refuse);
        assert!(g.network_allowed(B));
    }

    #[test]
    fn realm_and_case_forms_are_one_user() {
        assert_eq!(canonical_user("Alice@MX.test"), "alice");
        assert_eq!(canonical_user("alice"), "alice");
        assert_eq!(canonical_user("weird@x@y"), "weird@x");
    }
}
