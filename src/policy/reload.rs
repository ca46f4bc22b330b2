//! The live rule set and how it changes: [`Policy`].
//!
//! Sessions take a snapshot with [`Policy::current`] once and decide on it to the end,
//! so a reload never changes the rules under a session in flight. A reload loads and
//! validates the whole directory first and swaps only a fully valid set (all or
//! nothing): on any error the running set stays and every error is logged with its
//! `file:line:column`.
//!
//! SIGHUP and file changes take one path: both produce a [`ReloadRequest`] on one
//! channel, and [`Policy::run_reloads`] serves that channel, reloading on a blocking
//! thread (compiling a large set must not stall the sessions' worker threads) and
//! handing each [`ReloadOutcome`] to the caller, who owns the metrics.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};

use super::{LoadErrors, RuleSet};

/// How long the watcher waits after the first change event before asking for a
/// reload, gathering the burst of events an editor's save makes.
pub const DEBOUNCE: Duration = Duration::from_millis(75);

/// Why a reload was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadRequest {
    /// SIGHUP (or an operator's request).
    Signal,
    /// The watcher saw these rule or list files change.
    FilesChanged(Vec<PathBuf>),
}

/// How a reload went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The new set is live.
    Applied { rules: usize, hash: String },
    /// The new set was invalid; the previous one stays live.
    Rejected { errors: LoadErrors },
}

impl ReloadOutcome {
    pub fn is_applied(&self) -> bool {
        matches!(self, ReloadOutcome::Applied { .. })
    }
}

/// The live rule set of a running server.
#[derive(Debug)]
pub struct Policy {
    dir: PathBuf,
    current: ArcSwap<RuleSet>,
    /// Bumped on every applied reload, so the watcher can follow new list files.
    generation: watch::Sender<u64>,
    /// Sets replaced by a reload. Keeping a reference here means the session that
    /// drops the last snapshot never frees a whole rule set (hundreds of ms for a large
    /// one) on a worker thread; [`Policy::reload`] frees the unused ones on its own
    /// (blocking) thread.
    retired: std::sync::Mutex<Vec<Arc<RuleSet>>>,
}

impl Policy {
    /// Loads `dir` for the first time; an invalid set is an error (the server should
    /// not start on rules it cannot read).
    pub fn load(dir: impl Into<PathBuf>) -> Result<Policy, LoadErrors> {
        let dir = dir.into();
        let set = RuleSet::load(&dir)?;
        Ok(Policy::with_rules(dir, set))
    }

    /// A policy for `dir` that starts with `set` (e.g. [`RuleSet::empty`] in tests).
    pub fn with_rules(dir: impl Into<PathBuf>, set: RuleSet) -> Policy {
        Policy {
            dir: dir.into(),
            current: ArcSwap::from_pointee(set),
            generation: watch::Sender::new(0),
            retired: std::sync::Mutex::new(Vec::new()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The live set. Take it once per session and keep the `Arc`.
    pub fn current(&self) -> Arc<RuleSet> {
        self.current.load_full()
    }

    /// Loads and validates the directory and swaps the new set in if it is fully
    /// valid. Logs the outcome. Blocking (file I/O, compiling): from async code use
    /// [`Policy::run_reloads`] or `spawn_blocking`.
    pub fn reload(&self) -> ReloadOutcome {
        let started = std::time::Instant::now();
        match RuleSet::load(&self.dir) {
            Ok(set) => {
                let rules = set.rule_count();
                let hash = set.content_hash();
                let old = self.current.swap(Arc::new(set));
                self.generation.send_modify(|g| *g += 1);
                self.retire(old);
                tracing::info!(
                    rules,
                    hash = %hash,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "rules reloaded"
                );
                ReloadOutcome::Applied { rules, hash }
            }
            Err(errors) => {
                for e in &errors {
                    tracing::error!(error = %e, "rule error");
                }
                tracing::warn!(
                    errors = errors.len(),
                    hash = %self.current().content_hash(),
                    "rules reload rejected; keeping the running rules"
                );
                ReloadOutcome::Rejected { errors }
            }
        }
    }

    /// Keeps `old` until no session holds it any more, and frees (here, on the calling
    /// thread) every retired set no session holds now.
    fn retire(&self, old: Arc<RuleSet>) {
        self.retired
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(old);
        self.sweep_retired();
    }

    /// Frees replaced rule sets that no session uses any more. Reload does this
    /// itself; call it from a blocking thread to release memory between reloads.
    pub fn sweep_retired(&self) {
        let unused: Vec<Arc<RuleSet>> = {
            let mut retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
            let (unused, in_use) = std::mem::take(&mut *retired)
                .into_iter()
                .partition(|s| Arc::strong_count(s) == 1);
            *retired = in_use;
            unused
        };
        drop(unused);
    }

    /// Serves reload requests until every sender is gone: coalesces requests queued
    /// meanwhile into one reload, runs it on a blocking thread and hands the outcome to
    /// `on_outcome` (count `mxguard_rules_reload_total{result}` there).
    pub async fn run_reloads(
        self: Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<ReloadRequest>,
        mut on_outcome: impl FnMut(&ReloadRequest, &ReloadOutcome) + Send,
    ) {
        while let Some(req) = rx.recv().await {
            while rx.try_recv().is_ok() {}
            let me = self.clone();
            let outcome = match tokio::task::spawn_blocking(move || me.reload()).await {
                Ok(o) => o,
                Err(e) => {
                    tracing::error!(error = %e, "rules reload task failed");
                    continue;
                }
            };
            on_outcome(&req, &outcome);
        }
    }

    /// Watches the rules directory and the directories of every included list file
    /// (directories, not files: editors save by writing a temporary file and renaming
    /// it over the original, which replaces the inode a file watch would follow).
    /// Changes to `*.yaml` in the rules directory or to a list file in use become one
    /// [`ReloadRequest::FilesChanged`] on `tx` after [`DEBOUNCE`]. After each applied
    /// reload the watched directories follow the new set's list files.
    ///
    /// Must be called inside a tokio runtime. The task ends when `tx`'s receiver is
    /// dropped; dropping the returned handle does not stop it (abort it for that).
    pub fn spawn_watcher(
        self: Arc<Self>,
        tx: mpsc::UnboundedSender<ReloadRequest>,
    ) -> Result<tokio::task::JoinHandle<()>, notify::Error> {
        let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<notify::Event>();
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
                Ok(ev) => {
                    let _ = ev_tx.send(ev);
                }
                Err(e) => tracing::warn!(error = %e, "rules watcher error"),
            })?;
        let dir = canonical(&self.dir);
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
        let mut state = Watched {
            dir: dir.clone(),
            dirs: HashSet::from([dir]),
            list_files: HashSet::new(),
        };
        state.sync(&mut watcher, &self.current());
        let mut gen_rx = self.generation.subscribe();

        Ok(tokio::spawn(async move {
            loop {
                tokio::select! {
                    ev = ev_rx.recv() => {
                        let Some(ev) = ev else { break };
                        let mut changed = state.relevant(&ev);
                        let deadline = tokio::time::sleep(DEBOUNCE);
                        tokio::pin!(deadline);
                        loop {
                            tokio::select! {
                                _ = &mut deadline => break,
                                more = ev_rx.recv() => match more {
                                    Some(ev) => changed.extend(state.relevant(&ev)),
                                    None => break,
                                },
                            }
                        }
                        if !changed.is_empty() {
                            changed.sort();
                            changed.dedup();
                            tracing::debug!(files = ?changed, "rule files changed");
                            if tx.send(ReloadRequest::FilesChanged(changed)).is_err() {
                                break;
                            }
                        }
                    }
                    r = gen_rx.changed() => {
                        if r.is_err() { break }
                        state.sync(&mut watcher, &self.current());
                    }
                    _ = tx.closed() => break,
                }
            }
            drop(watcher);
        }))
    }
}

struct Watched {
    dir: PathBuf,
    dirs: HashSet<PathBuf>,
    list_files: HashSet<PathBuf>,
}

impl Watched {
    /// Follows the set's list files: watch their directories (the rules directory
    /// always stays watched).
    fn sync(&mut self, watcher: &mut notify::RecommendedWatcher, set: &RuleSet) {
        self.list_files = set
            .watched_paths()
            .iter()
            .filter(|p| p.parent().map(canonical).as_ref() != Some(&self.dir))
            .map(|p| canonical_file(p))
            .collect();
        let want: HashSet<PathBuf> = self
            .list_files
            .iter()
            .filter_map(|p| p.parent().map(Path::to_path_buf))
            .chain([self.dir.clone()])
            .collect();
        for d in want.difference(&self.dirs) {
            if let Err(e) = watcher.watch(d, RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %d.display(), error = %e, "cannot watch list directory");
            }
        }
        for d in self.dirs.difference(&want) {
            let _ = watcher.unwatch(d);
        }
        self.dirs = want;
    }

    /// The paths of `ev` that matter: rule files in the rules directory, list files.
    fn relevant(&self, ev: &notify::Event) -> Vec<PathBuf> {
        if !matches!(
            ev.kind,
            EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) | EventKind::Any
        ) {
            return Vec::new();
        }
        ev.paths
            .iter()
            .filter(|p| {
                let is_rule = p.parent() == Some(self.dir.as_path())
                    && p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.ends_with(".yaml") && !n.starts_with('.'));
                is_rule || self.list_files.contains(p.as_path())
            })
            .cloned()
            .collect()
    }
}

fn canonical(p: &Path) -> PathBuf {
    p.canonicalize().unwrap_or_else(|_| p.to_path_buf())
}

/// The canonical form of a file that may be missing for a moment (mid-rename): its
/// directory canonicalised, its name kept.
fn canonical_file(p: &Path) -> PathBuf {
    match (p.parent(), p.file_name()) {
        (Some(d), Some(n)) => canonical(d).join(n),
        _ => p.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{ClientInfo, Decision, Facts, Stage};

    const NETS_RULE: &str = "lists:\n  blocked: [\"file:lists/blocked.txt\"]\nrules:\n  - { name: block, stage: connect, if: { client_ip: blocked }, then: reject }\n";

    fn setup() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("lists")).unwrap();
        std::fs::write(dir.path().join("lists/blocked.txt"), "192.0.2.0/24\n").unwrap();
        std::fs::write(dir.path().join("a.yaml"), NETS_RULE).unwrap();
        dir
    }

    fn blocks(set: &RuleSet, ip: &str) -> bool {
        let client = ClientInfo {
            ip: ip.parse().unwrap(),
            port: 1,
            listener: "mx".into(),
            submission: false,
            tls: false,
            auth_user: None,
        };
        let facts = Facts {
            stage: Stage::Connect,
            client: &client,
            helo: None,
            transaction: None,
            recipient: None,
            message: None,
            auth: &crate::envelope::AuthFacts::EMPTY,
            filters: &[],
        };
        matches!(set.evaluate(&facts).decision, Decision::Reject(_))
    }

    #[test]
    fn reload_is_all_or_nothing() {
        let dir = setup();
        let policy = Policy::load(dir.path()).unwrap();
        let before = policy.current();
        assert_eq!(before.rule_count(), 1);

        std::fs::write(
            dir.path().join("b.yaml"),
            "rules:\n  - { name: two, stage: mail, then: continue }\n",
        )
        .unwrap();
        let out = policy.reload();
        let ReloadOutcome::Applied { rules, hash } = &out else {
            panic!("{out:?}")
        };
        assert_eq!(
            (*rules, hash.as_str()),
            (2, policy.current().content_hash().as_str())
        );
        assert!(out.is_applied());
        assert_eq!(before.rule_count(), 1, "a snapshot never changes");

        std::fs::write(
            dir.path().join("b.yaml"),
            "rules:\n  - { name: two, stage: mail, then: continue }\n  - { name: three, stage: helo, if: { helo: { is_ip: true } }, then: reject }\n",
        )
        .unwrap();
        let out = policy.reload();
        let ReloadOutcome::Rejected { errors } = &out else {
            panic!("{out:?}")
        };
        assert!(!out.is_applied());
        let shown = errors.to_string();
        assert!(
            shown.ends_with("b.yaml:3:47: rules[1].if.helo.is_ip: unknown field `is_ip`, expected one of `equals`, `glob`, `regex`, `in`, `is_ip_literal`, `is_fqdn`"),
            "{shown}"
        );
        assert_eq!(policy.current().rule_count(), 2, "the running set stays");
    }

    /// Starts the watcher and the reload loop; outcomes arrive on the returned channel.
    fn start(dir: &Path) -> (Arc<Policy>, mpsc::UnboundedReceiver<ReloadOutcome>) {
        let policy = Arc::new(Policy::load(dir).unwrap());
        let (tx, rx) = mpsc::unbounded_channel();
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        policy.clone().spawn_watcher(tx).unwrap();
        tokio::spawn(policy.clone().run_reloads(rx, move |_, o| {
            let _ = out_tx.send(o.clone());
        }));
        (policy, out_rx)
    }

    /// Waits for an outcome satisfying `pred` (editors' saves may produce more than one
    /// reload); fails after 10 s.
    async fn wait_for(
        rx: &mut mpsc::UnboundedReceiver<ReloadOutcome>,
        pred: impl Fn(&ReloadOutcome) -> bool,
    ) -> ReloadOutcome {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let o = rx.recv().await.expect("reload loop ended");
                if pred(&o) {
                    return o;
                }
            }
        })
        .await
        .expect("no matching reload outcome within 10 s")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn editing_a_list_file_reloads() {
        let dir = setup();
        let (policy, mut out) = start(dir.path());
        assert!(!blocks(&policy.current(), "198.51.100.7"));
        std::fs::write(
            dir.path().join("lists/blocked.txt"),
            "192.0.2.0/24\n198.51.100.0/24\n",
        )
        .unwrap();
        wait_for(&mut out, |o| o.is_applied()).await;
        assert!(blocks(&policy.current(), "198.51.100.7"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn write_temp_then_rename_is_picked_up() {
        let dir = setup();
        let (policy, mut out) = start(dir.path());
        let tmp = dir.path().join(".a.yaml.swp");
        std::fs::write(&tmp, NETS_RULE.replace("then: reject", "then: accept")).unwrap();
        std::fs::rename(&tmp, dir.path().join("a.yaml")).unwrap();
        wait_for(&mut out, |o| o.is_applied()).await;
        assert!(!blocks(&policy.current(), "192.0.2.1"), "now accepts");

        // The same for a list file, replaced by rename.
        let tmp = dir.path().join("lists/blocked.txt.new");
        std::fs::write(&tmp, "203.0.113.0/24\n").unwrap();
        std::fs::rename(&tmp, dir.path().join("lists/blocked.txt")).unwrap();
        let hash = policy.current().content_hash();
        wait_for(
            &mut out,
            |o| matches!(o, ReloadOutcome::Applied { hash: h, .. } if *h != hash),
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn invalid_change_via_watcher_keeps_the_old_set() {
        let dir = setup();
        let (policy, mut out) = start(dir.path());
        let hash = policy.current().content_hash();
        std::fs::write(
            dir.path().join("lists/blocked.txt"),
            "192.0.2.0/24\n10.0.0/8\n",
        )
        .unwrap();
        let o = wait_for(&mut out, |o| !o.is_applied()).await;
        let ReloadOutcome::Rejected { errors } = o else {
            unreachable!()
        };
        let e = &errors.0[0];
        assert!(e.file.ends_with("lists/blocked.txt"));
        assert_eq!(
            (e.line, e.column, e.key_path.as_str()),
            (2, 1, "lists.blocked")
        );
        assert_eq!(e.message, "invalid network \"10.0.0/8\"");
        assert_eq!(policy.current().content_hash(), hash);
        assert!(blocks(&policy.current(), "192.0.2.9"));
    }
}
