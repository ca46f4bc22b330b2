//! The embedded on-disk store (the default): redb, one file under the state directory,
//! so greylist passes and auto-allow counts survive restarts.
//!
//! redb is synchronous, so every operation runs in `spawn_blocking`. A greylist decision
//! first looks in a read transaction: the common outcomes (an auto-allowed network, a
//! known triplet whose expiry is recent enough) change nothing and need no write. Only a
//! new, passing or long-unseen triplet takes the write transaction, which makes its
//! read-decide-write atomic (one writer at a time). A triplet's pass, an `allow` and the
//! periodic sweep are fsynced; expiry refreshes are not (`Durability::None`).
//!
//! Rate limits are kept in memory (governor's GCRA, as in the memory store), not in the
//! file: a budget is a matter of minutes, so persisting it would cost a disk write per
//! message to survive a restart that at worst resets the budgets once. Limits shared by
//! several instances belong in Redis.
//! redb locks the file: one process at a time (`mxguard greylist` on a file store works
//! while the server is stopped; use Redis to share state between live instances).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};

use super::memory::MemoryStore;
use super::{
    AllowTarget, BoxFuture, Clock, GreyEntry, GreyOutcome, GreyParams, GreyRecord, NetRecord,
    RateOutcome, RateParams, Store, StoreError, greylist_step,
};

/// Triplets: key → (first_seen, expires, passed 0/1).
const TRIPLETS: TableDefinition<&str, (u64, u64, u32)> = TableDefinition::new("greylist_v1");
/// Client networks: key → (passes, expires).
const NETS: TableDefinition<&str, (u32, u64)> = TableDefinition::new("greylist_nets_v1");

pub struct FileStore {
    db: Arc<Database>,
    clock: Arc<dyn Clock>,
    /// Rate limits (see the module documentation).
    rates: MemoryStore,
}

impl std::fmt::Debug for FileStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileStore")
    }
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::File(e.to_string())
}

impl FileStore {
    /// Creates or opens the file (and its directory) and makes sure every table exists.
    pub fn open(path: &Path, clock: Arc<dyn Clock>) -> Result<FileStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;
        }
        let db = Database::create(path).map_err(|e| err(format!("{}: {e}", path.display())))?;
        let tx = db.begin_write().map_err(err)?;
        tx.open_table(TRIPLETS).map_err(err)?;
        tx.open_table(NETS).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(FileStore {
            db: Arc::new(db),
            rates: MemoryStore::new(clock.clone()),
            clock,
        })
    }

    /// Runs `f` in a write transaction on the blocking pool; `f` says whether the commit
    /// must be durable.
    fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&WriteTransaction, u64) -> Result<(T, bool), StoreError> + Send + 'static,
    ) -> BoxFuture<'_, Result<T, StoreError>> {
        let db = self.db.clone();
        let now = self.clock.now_us();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut tx = db.begin_write().map_err(err)?;
                let (out, durable) = f(&tx, now)?;
                if !durable {
                    tx.set_durability(Durability::None).map_err(err)?;
                }
                tx.commit().map_err(err)?;
                Ok(out)
            })
            .await
            .map_err(err)?
        })
    }
}

impl FileStore {
    /// Deletes expired triplets and networks (fsynced, which also persists every cheaper
    /// commit before it).
    fn sweep_file(&self) -> BoxFuture<'_, Result<usize, StoreError>> {
        self.write(move |tx, now| {
            let mut n = 0;
            n += tx
                .open_table(TRIPLETS)
                .map_err(err)?
                .extract_if(|_, (_, exp, _)| exp <= now)
                .map_err(err)?
                .count();
            n += tx
                .open_table(NETS)
                .map_err(err)?
                .extract_if(|_, (_, exp)| exp <= now)
                .map_err(err)?
                .count();
            Ok((n, true))
        })
    }
}

/// The greylist decision from a read transaction, when it changes nothing on disk: an
/// auto-allowed network, a too-early retry, or a known triplet whose expiry was refreshed
/// within the last tenth of `expire` (at most a day). `None`: a write is needed.
fn read_only_decision(
    db: &Database,
    triplet: &str,
    net: &str,
    now: u64,
    p: &GreyParams,
) -> Result<Option<GreyOutcome>, StoreError> {
    let rt = db.begin_read().map_err(err)?;
    let cur_t = rt
        .open_table(TRIPLETS)
        .map_err(err)?
        .get(triplet)
        .map_err(err)?
        .map(|g| {
            let (first_seen, expires, passed) = g.value();
            GreyRecord {
                first_seen,
                expires,
                passed: passed != 0,
            }
        });
    let cur_n = rt
        .open_table(NETS)
        .map_err(err)?
        .get(net)
        .map_err(err)?
        .map(|g| {
            let (passes, expires) = g.value();
            NetRecord { passes, expires }
        });
    let step = greylist_step(cur_t, cur_n, now, p);
    let refresh_every = (p.expire / 10).min(86_400_000_000);
    let fresh = |t: &Option<GreyRecord>| {
        t.is_some_and(|t| t.expires.saturating_add(refresh_every) > now.saturating_add(p.expire))
    };
    let unchanged = match step.outcome {
        GreyOutcome::Known => fresh(&cur_t),
        _ => step.triplet.is_none() && step.net.is_none(),
    };
    Ok(unchanged.then_some(step.outcome))
}

impl Store for FileStore {
    fn greylist<'a>(
        &'a self,
        triplet: &'a str,
        net: &'a str,
        p: &'a GreyParams,
    ) -> BoxFuture<'a, Result<GreyOutcome, StoreError>> {
        let (triplet, net, p) = (triplet.to_owned(), net.to_owned(), *p);
        let db = self.db.clone();
        let now = self.clock.now_us();
        let (t, n) = (triplet.clone(), net.clone());
        Box::pin(async move {
            let unchanged =
                tokio::task::spawn_blocking(move || read_only_decision(&db, &t, &n, now, &p))
                    .await
                    .map_err(err)??;
            if let Some(outcome) = unchanged {
                return Ok(outcome);
            }
            self.write(move |tx, now| {
                let mut t = tx.open_table(TRIPLETS).map_err(err)?;
                let mut n = tx.open_table(NETS).map_err(err)?;
                let cur_t = t.get(triplet.as_str()).map_err(err)?.map(|g| {
                    let (first_seen, expires, passed) = g.value();
                    GreyRecord {
                        first_seen,
                        expires,
                        passed: passed != 0,
                    }
                });
                let cur_n = n.get(net.as_str()).map_err(err)?.map(|g| {
                    let (passes, expires) = g.value();
                    NetRecord { passes, expires }
                });
                let step = greylist_step(cur_t, cur_n, now, &p);
                if let Some(r) = step.triplet {
                    t.insert(
                        triplet.as_str(),
                        (r.first_seen, r.expires, u32::from(r.passed)),
                    )
                    .map_err(err)?;
                }
                if let Some(r) = step.net {
                    n.insert(net.as_str(), (r.passes, r.expires)).map_err(err)?;
                }
                let durable = step.outcome == GreyOutcome::Passed;
                Ok((step.outcome, durable))
            })
            .await
        })
    }

    fn rate<'a>(
        &'a self,
        key: &'a str,
        p: &'a RateParams,
        cost: u64,
    ) -> BoxFuture<'a, Result<RateOutcome, StoreError>> {
        self.rates.rate(key, p, cost)
    }

    fn sweep(&self) -> BoxFuture<'_, Result<usize, StoreError>> {
        Box::pin(async move {
            let rates = self.rates.sweep().await?;
            Ok(rates + self.sweep_file().await?)
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<GreyEntry>, StoreError>> {
        let db = self.db.clone();
        let now = self.clock.now_us();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let rt = db.begin_read().map_err(err)?;
                let mut out = Vec::new();
                for item in rt.open_table(TRIPLETS).map_err(err)?.iter().map_err(err)? {
                    let (k, v) = item.map_err(err)?;
                    let (first_seen, expires, passed) = v.value();
                    if expires > now {
                        out.push(GreyEntry::Triplet {
                            key: k.value().to_owned(),
                            record: GreyRecord {
                                first_seen,
                                expires,
                                passed: passed != 0,
                            },
                        });
                    }
                }
                for item in rt.open_table(NETS).map_err(err)?.iter().map_err(err)? {
                    let (k, v) = item.map_err(err)?;
                    let (passes, expires) = v.value();
                    if expires > now {
                        out.push(GreyEntry::Network {
                            net: k.value().to_owned(),
                            record: NetRecord { passes, expires },
                        });
                    }
                }
                Ok(out)
            })
            .await
            .map_err(err)?
        })
    }

    fn allow<'a>(
        &'a self,
        target: &'a AllowTarget,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let target = target.clone();
        self.write(move |tx, now| {
            let expires = now + ttl.as_micros() as u64;
            match &target {
                AllowTarget::Triplet(k) => {
                    tx.open_table(TRIPLETS)
                        .map_err(err)?
                        .insert(k.as_str(), (now, expires, 1))
                        .map_err(err)?;
                }
                AllowTarget::Network(k) => {
                    tx.open_table(NETS)
                        .map_err(err)?
                        .insert(k.as_str(), (u32::MAX, expires))
                        .map_err(err)?;
                }
            }
            Ok(((), true))
        })
    }

    fn purge<'a>(&'a self, pattern: &'a str) -> BoxFuture<'a, Result<usize, StoreError>> {
        let pattern = pattern.to_owned();
        self.write(move |tx, _| {
            let mut n = 0;
            n += tx
                .open_table(TRIPLETS)
                .map_err(err)?
                .extract_if(|k, _| k.contains(pattern.as_str()))
                .map_err(err)?
                .count();
            n += tx
                .open_table(NETS)
                .map_err(err)?
                .extract_if(|k, _| k.contains(pattern.as_str()))
                .map_err(err)?
                .count();
            Ok((n, true))
        })
    }

    fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }
}
