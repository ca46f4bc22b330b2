//! The in-process store: greylist records in a map, rate limits in governor's keyed
//! GCRA limiters (one per distinct rate), both read through the store's clock.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::Clock as _;
use governor::nanos::Nanos;
use governor::{Quota, RateLimiter};

use super::{
    AllowTarget, BoxFuture, Clock, GreyEntry, GreyOutcome, GreyParams, GreyRecord, NetRecord,
    RateOutcome, RateParams, Store, StoreError, greylist_step,
};

/// Bound on greylist records: past it, every insert first sweeps expired ones (the
/// periodic sweep keeps the map well under it in normal operation).
const MAX_GREY_RECORDS: usize = 1_000_000;

/// governor reads time through this adapter, so a [`super::FakeClock`] drives it too.
#[derive(Debug, Clone)]
struct GovClock(Arc<dyn Clock>);

impl governor::clock::Clock for GovClock {
    type Instant = Nanos;
    fn now(&self) -> Nanos {
        Nanos::from(self.0.now_us().saturating_mul(1_000))
    }
}

type Limiter = RateLimiter<
    String,
    governor::state::keyed::DefaultKeyedStateStore<String>,
    GovClock,
    governor::middleware::NoOpMiddleware<Nanos>,
>;

#[derive(Default)]
struct Grey {
    triplets: HashMap<String, GreyRecord>,
    nets: HashMap<String, NetRecord>,
}

pub struct MemoryStore {
    clock: Arc<dyn Clock>,
    grey: Mutex<Grey>,
    limiters: Mutex<HashMap<RateParams, Arc<Limiter>>>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryStore")
    }
}

impl MemoryStore {
    pub fn new(clock: Arc<dyn Clock>) -> MemoryStore {
        MemoryStore {
            clock,
            grey: Mutex::new(Grey::default()),
            limiters: Mutex::new(HashMap::new()),
        }
    }

    fn limiter(&self, p: &RateParams) -> Arc<Limiter> {
        let mut map = self.limiters.lock().expect("limiters lock");
        map.entry(*p)
            .or_insert_with(|| {
                let burst = NonZeroU32::new(p.burst).unwrap_or(NonZeroU32::MIN);
                let quota = Quota::with_period(Duration::from_micros(p.interval))
                    .expect("interval is at least 1 µs")
                    .allow_burst(burst);
                Arc::new(RateLimiter::dashmap_with_clock(
                    quota,
                    GovClock(self.clock.clone()),
                ))
            })
            .clone()
    }

    fn greylist_sync(&self, triplet: &str, net: &str, p: &GreyParams) -> GreyOutcome {
        let now = self.clock.now_us();
        let mut g = self.grey.lock().expect("greylist lock");
        if g.triplets.len() >= MAX_GREY_RECORDS {
            sweep_grey(&mut g, now);
        }
        let step = greylist_step(
            g.triplets.get(triplet).copied(),
            g.nets.get(net).copied(),
            now,
            p,
        );
        if let Some(t) = step.triplet {
            g.triplets.insert(triplet.to_owned(), t);
        }
        if let Some(n) = step.net {
            g.nets.insert(net.to_owned(), n);
        }
        step.outcome
    }

    fn rate_sync(&self, key: &str, p: &RateParams, cost: u64) -> RateOutcome {
        let lim = self.limiter(p);
        let Some(n) = NonZeroU32::new(cost.min(u64::from(p.burst)) as u32) else {
            return RateOutcome::Allowed;
        };
        // governor's keyed state takes owned keys; the key is built per decision anyway.
        match lim.check_key_n(&key.to_owned(), n) {
            Ok(Ok(())) => RateOutcome::Allowed,
            Ok(Err(not_until)) => {
                let now = GovClock(self.clock.clone()).now();
                RateOutcome::Limited {
                    retry_in: (not_until.wait_time_from(now).as_micros() as u64).max(1),
                }
            }
            // Cannot happen: cost is clamped to the burst.
            Err(_) => RateOutcome::Limited {
                retry_in: p.interval,
            },
        }
    }
}

fn sweep_grey(g: &mut Grey, now: u64) -> usize {
    let before = g.triplets.len() + g.nets.len();
    g.triplets.retain(|_, r| r.expires > now);
    g.nets.retain(|_, r| r.expires > now);
    g.triplets.shrink_to_fit();
    g.nets.shrink_to_fit();
    before - g.triplets.len() - g.nets.len()
}

impl Store for MemoryStore {
    fn greylist<'a>(
        &'a self,
        triplet: &'a str,
        net: &'a str,
        p: &'a GreyParams,
    ) -> BoxFuture<'a, Result<GreyOutcome, StoreError>> {
        Box::pin(async move { Ok(self.greylist_sync(triplet, net, p)) })
    }

    fn rate<'a>(
        &'a self,
        key: &'a str,
        p: &'a RateParams,
        cost: u64,
    ) -> BoxFuture<'a, Result<RateOutcome, StoreError>> {
        Box::pin(async move { Ok(self.rate_sync(key, p, cost)) })
    }

    fn sweep(&self) -> BoxFuture<'_, Result<usize, StoreError>> {
        Box::pin(async move {
            let now = self.clock.now_us();
            let mut n = sweep_grey(&mut self.grey.lock().expect("greylist lock"), now);
            let mut lims = self.limiters.lock().expect("limiters lock");
            for l in lims.values() {
                let before = l.len();
                l.retain_recent();
                l.shrink_to_fit();
                n += before - l.len();
            }
            lims.retain(|_, l| !l.is_empty());
            Ok(n)
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<GreyEntry>, StoreError>> {
        Box::pin(async move {
            let now = self.clock.now_us();
            let g = self.grey.lock().expect("greylist lock");
            let mut out: Vec<GreyEntry> = g
                .triplets
                .iter()
                .filter(|(_, r)| r.expires > now)
                .map(|(k, r)| GreyEntry::Triplet {
                    key: k.clone(),
                    record: *r,
                })
                .collect();
            out.extend(
                g.nets
                    .iter()
                    .filter(|(_, r)| r.expires > now)
                    .map(|(k, r)| GreyEntry::Network {
                        net: k.clone(),
                        record: *r,
                    }),
            );
            Ok(out)
        })
    }

    fn allow<'a>(
        &'a self,
        target: &'a AllowTarget,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let now = self.clock.now_us();
            let expires = now + ttl.as_micros() as u64;
            let mut g = self.grey.lock().expect("greylist lock");
            match target {
                AllowTarget::Triplet(k) => {
                    g.triplets.insert(
                        k.clone(),
                        GreyRecord {
                            first_seen: now,
                            expires,
                            passed: true,
                        },
                    );
                }
                AllowTarget::Network(n) => {
                    g.nets.insert(
                        n.clone(),
                        NetRecord {
                            passes: u32::MAX,
                            expires,
                        },
                    );
                }
            }
            Ok(())
        })
    }

    fn purge<'a>(&'a self, pattern: &'a str) -> BoxFuture<'a, Result<usize, StoreError>> {
        Box::pin(async move {
            let mut g = self.grey.lock().expect("greylist lock");
            let before = g.triplets.len() + g.nets.len();
            g.triplets.retain(|k, _| !k.contains(pattern));
            g.nets.retain(|k, _| !k.contains(pattern));
            Ok(before - g.triplets.len() - g.nets.len())
        })
    }

    fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }
}
