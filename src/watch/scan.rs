//! One scan cycle of one registry: resolve the watch set, list each repository completely, look up
//! the digests that matter, diff against the stored snapshot, and commit snapshot and events together.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use futures_util::{StreamExt, stream};
use indicatif::ProgressBar;
use tokio::sync::Notify;

use super::backoff::{RepoBackoff, RepoResult};
use super::diff::{self, Snapshot};
use crate::config::{FirstRun, RegistryConfig, RepoPattern};
use crate::event::{self, Event, Origin};
use crate::registry::{Registry, RegistryError};
use crate::store::{RepoState, StateStore, StoreError, fresh_revision};

/// Scans a tag waits on a failed lookup before one WARN line says so; also the scans in which a
/// newly waiting tag brings its repository's next scan forward (see the scheduler).
const WARN_AFTER_WAITS: u32 = 3;
/// Scans in a row whose lookup of one tag failed with an error that may be the registry's (a
/// 5xx after retries, a malformed answer) before that tag waits on its own. Until then such a
/// failure fails the repository's scan, loudly, as a registry outage should.
const FAILURES_BEFORE_WAITING: u32 = 3;

/// Whether a failed digest or platforms lookup says something of that one tag only: its manifest
/// is missing (404). The tag waits at once; its siblings do not.
fn confined_to_one_tag(e: &RegistryError) -> bool {
    matches!(e, RegistryError::NotFound(_))
}

/// Locks `m`, also after a panic elsewhere poisoned it: every update behind these locks leaves
/// the data consistent, and the registry's loop must outlive the panic.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What a cycle does with its results.
#[derive(Clone)]
pub enum Output {
    /// Commit snapshots and events to the store, and wake the publisher.
    Commit {
        /// The store.
        store: Arc<dyn StateStore>,
        /// Woken after each commit that added events.
        published: Arc<Notify>,
    },
    /// Print events to stdout and store nothing; reads the store, when there is one, for context.
    DryRun {
        /// The existing store, if any.
        store: Option<Arc<dyn StateStore>>,
    },
}

impl Output {
    fn store(&self) -> Option<&dyn StateStore> {
        match self {
            Output::Commit { store, .. } => Some(store.as_ref()),
            Output::DryRun { store } => store.as_deref(),
        }
    }
}

/// Runs a store write (fsync, write lock) on the blocking pool, off the async workers that serve
/// heartbeats and the admin endpoint.
async fn blocking<T: Send + 'static>(
    store: &Arc<dyn StateStore>,
    write: impl FnOnce(&dyn StateStore) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || write(store.as_ref()))
        .await
        .map_err(|e| StoreError::Io(format!("store task failed: {e}")))?
}

/// Why a cycle or a repository scan failed.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The registry failed or answered nonsense.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What one cycle did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CycleReport {
    /// Repositories in the watch set.
    pub repositories: usize,
    /// Repositories whose scan failed (their snapshots are untouched).
    pub failed: usize,
    /// Repositories sitting out their backoff this cycle (not failures).
    pub skipped: usize,
    /// Repositories the store could not record for now (retried next cycle, not failures).
    pub unrecorded: usize,
    /// Repositories whose state partition moved to another replica during the cycle (cluster
    /// mode): theirs to scan now, so neither retried here nor unrecorded.
    pub moved: usize,
    /// Repositories with a new tag whose digest or platforms could not be looked up (a push
    /// still being written, or a dangling manifest): the rest was reported, and the tag is
    /// looked up again at the next scan, which the scheduler brings forward.
    pub waiting: Vec<String>,
    /// The failures are the registry's as a whole (see [`super::backoff`]), not single repositories'.
    pub registry_wide: bool,
    /// Events committed (or printed, in a dry run).
    pub events: usize,
    /// Digest lookups (HEAD requests) made.
    pub digest_lookups: usize,
}

/// What one repository scan did.
struct RepoOutcome {
    events: usize,
    digest_lookups: usize,
    /// The tags a baseline recorded, when this scan was one.
    baseline_tags: Option<usize>,
    /// New tags held back because a lookup confined to them failed.
    waiting: usize,
}

/// Scans one registry.
pub struct Scanner {
    /// The registry's configuration.
    pub config: Arc<RegistryConfig>,
    /// Its adapter.
    pub registry: Arc<dyn Registry>,
    /// `daemon.first_run`.
    pub first_run: FirstRun,
    /// `daemon.emit_removed`.
    pub emit_removed: bool,
    /// Advanced once per repository scanned (interactive `once`); hidden elsewhere.
    pub progress: Option<ProgressBar>,
    /// What the store keys this registry's state by (`store::identity`; the daemon sets
    /// `store::identity_in` for its whole config).
    pub identity: String,
    /// The repositories of the last complete listing, to see which ones left; `None` until the
    /// first complete listing since start, which compares with what the store holds instead.
    listed: Mutex<Option<BTreeSet<String>>>,
    /// Repositories left out of the last complete listing whose own `tags/list` showed them gone.
    gone: Mutex<BTreeSet<String>>,
    /// Per repository, its tags waiting on a failed lookup and for how many scans in a row.
    unresolved: Mutex<std::collections::HashMap<String, std::collections::BTreeMap<String, u32>>>,
    /// Which repositories sit out cycles after failing.
    pub backoff: RepoBackoff,
}

impl Scanner {
    /// A scanner for one registry entry, with its adapter connected.
    pub fn new(
        config: &RegistryConfig,
        first_run: FirstRun,
        emit_removed: bool,
    ) -> Result<Scanner, RegistryError> {
        Ok(Scanner {
            registry: crate::registry::connect(config)?,
            config: Arc::new(config.clone()),
            first_run,
            emit_removed,
            progress: None,
            identity: crate::store::identity(config),
            listed: Mutex::new(None),
            gone: Mutex::new(BTreeSet::new()),
            unresolved: Mutex::default(),
            backoff: RepoBackoff::default(),
        })
    }

    /// The repositories the config selects: exact names, plus catalog entries matching a glob.
    pub async fn watch_set(&self) -> Result<Vec<String>, RegistryError> {
        let mut repos: Vec<String> = self
            .config
            .repositories
            .iter()
            .filter_map(|p| match p {
                RepoPattern::Exact(name) => Some(name.clone()),
                RepoPattern::Glob(_) => None,
            })
            .collect();
        if self.config.needs_catalog() {
            let catalog = self.registry.list_repositories().await?;
            repos.extend(
                catalog
                    .into_iter()
                    .filter(|r| self.config.repositories.iter().any(|p| p.matches(r))),
            );
        }
        repos.sort_unstable();
        repos.dedup();
        Ok(repos)
    }

    /// Runs one cycle over the whole watch set. Stops starting repositories once `stop()` is true;
    /// those in flight finish. Returns an error only when the watch set itself could not be listed.
    pub async fn cycle(
        &self,
        output: &Output,
        stop: impl Fn() -> bool,
    ) -> Result<CycleReport, ScanError> {
        let mut repos = self.watch_set().await?;
        // In cluster mode this replica scans its share only: what it owns as the listing starts.
        let mut epoch = 0;
        if let Some(store) = output.store() {
            epoch = store.ownership_epoch();
            repos.retain(|r| store.owns(&self.identity, r));
        }
        self.scan_set(output, repos, Some(epoch), stop).await
    }

    /// Scans the named repositories now (a webhook hint), whatever their backoff: a push is news.
    /// Names outside the watch set are ignored. In cluster mode, those another replica owns are
    /// passed on to it when `forward` (a hint as received), else left to it. Stops starting
    /// repositories once `stop()` is true.
    pub async fn scan_hinted(
        &self,
        output: &Output,
        repos: Vec<String>,
        forward: bool,
        stop: impl Fn() -> bool,
    ) -> Result<CycleReport, ScanError> {
        let mut repos: Vec<String> = repos.iter().map(|r| self.config.qualified(r)).collect();
        repos.retain(|r| self.config.repositories.iter().any(|p| p.matches(r)));
        repos.sort_unstable();
        repos.dedup();
        // In cluster mode another replica may own some: the hint is passed on to it.
        if let Output::Commit { store, .. } = output {
            let (mine, theirs): (Vec<String>, Vec<String>) = repos
                .into_iter()
                .partition(|r| store.owns(&self.identity, r));
            repos = mine;
            for repo in theirs.into_iter().filter(|_| forward) {
                let (identity, store) = (self.identity.clone(), store.clone());
                if let Err(e) = blocking(&store, move |s| s.forward_hint(&identity, &repo)).await {
                    tracing::warn!(registry = %self.config.name, error = %e, "webhook hint not passed on; the periodic scan covers it");
                }
            }
        }
        self.scan_set(output, repos, None, stop).await
    }

    async fn scan_set(
        &self,
        output: &Output,
        repos: Vec<String>,
        listing_epoch: Option<u64>,
        stop: impl Fn() -> bool,
    ) -> Result<CycleReport, ScanError> {
        // A complete listing (not a webhook's few repositories), with the ownership it began with.
        let complete_listing = listing_epoch.is_some();
        let stored_patterns = match output.store() {
            Some(store) => store.watch_set(&self.identity)?,
            None => None,
        };
        let current: Vec<String> = self
            .config
            .repositories
            .iter()
            .map(|p| p.as_str().to_owned())
            .collect();
        // The watch set of the last complete listing; compiled only when a config edit changed it.
        let previous: Option<Cow<'_, [RepoPattern]>> = stored_patterns.as_ref().map(|ps| {
            if *ps == current {
                Cow::Borrowed(self.config.repositories.as_slice())
            } else {
                Cow::Owned(
                    ps.iter()
                        .filter_map(|p| RepoPattern::parse(p).ok())
                        .collect(),
                )
            }
        });

        let mut report = CycleReport {
            repositories: repos.len(),
            ..CycleReport::default()
        };
        if let Some(p) = &self.progress {
            p.set_length(repos.len() as u64);
        }
        let previous = previous.as_deref();
        let listed: BTreeSet<String> = repos.iter().cloned().collect();
        let due = if complete_listing {
            let (due, skipped) = self.backoff.due(repos.clone());
            report.skipped = skipped;
            due
        } else {
            repos
        };
        let results: Vec<(String, Result<RepoOutcome, ScanError>)> = stream::iter(due)
            .take_while(|_| std::future::ready(!stop()))
            .map(|repo| async move {
                let result = self.scan_repository_guarded(&repo, previous, output).await;
                if let Some(p) = &self.progress {
                    p.inc(1);
                }
                (repo, result)
            })
            .buffer_unordered(self.config.concurrency)
            .collect()
            .await;
        // A cycle cut short by shutdown has not decided for every repository. One sitting out its
        // backoff has: its first failure recorded its decision.
        let scanned_all = results.len() + report.skipped == report.repositories;
        // The store failing is not the registry's fault and will not heal by itself (unless it
        // says it will: Kafka away in cluster mode).
        let broken = |r: &Result<RepoOutcome, ScanError>| matches!(r, Err(ScanError::Store(e)) if !e.is_transient());
        if results.iter().any(|(_, r)| broken(r)) {
            let e = results.into_iter().find_map(|(_, r)| match r {
                Err(ScanError::Store(e)) if !e.is_transient() => Some(e),
                _ => None,
            });
            return Err(e.expect("a store error").into());
        }
        let mut judged = Vec::with_capacity(results.len());
        // Repositories whose decision the store could not record: the watch set stays put.
        let mut unrecorded = 0usize;
        let (mut baselines, mut baseline_tags) = (0usize, 0usize);
        for (repo, result) in &results {
            let judgement = match result {
                Ok(outcome) => {
                    report.events += outcome.events;
                    report.digest_lookups += outcome.digest_lookups;
                    if let Some(tags) = outcome.baseline_tags {
                        baselines += 1;
                        baseline_tags += tags;
                    }
                    if outcome.waiting > 0 {
                        report.waiting.push(repo.clone());
                    }
                    RepoResult::Scanned
                }
                Err(ScanError::Store(StoreError::Moved(why))) => {
                    tracing::debug!(registry = %self.config.name, repository = %repo, reason = %why, "not recorded here: its new owner scans it");
                    // Holds the watch set still, as an unrecorded one does (compared afresh).
                    unrecorded += 1;
                    report.moved += 1;
                    RepoResult::Moved
                }
                Err(ScanError::Store(e)) => {
                    // Transient (see above): nothing was recorded, so the next scan detects the
                    // same changes again, with the same ids.
                    tracing::warn!(registry = %self.config.name, repository = %repo, error = %e, "changes not recorded; scanning again next cycle");
                    unrecorded += 1;
                    RepoResult::Unrecorded
                }
                Err(ScanError::Registry(e)) => {
                    crate::metrics::get()
                        .repository_errors
                        .get_or_create(&crate::metrics::registry_label(&self.config.name))
                        .inc();
                    tracing::warn!(registry = %self.config.name, repository = %repo, error = %e, "scan failed; snapshot left unchanged");
                    RepoResult::Failed(e)
                }
            };
            judged.push((repo.as_str(), judgement));
        }
        let verdict = if complete_listing {
            self.backoff.record(judged)
        } else {
            self.backoff.hinted(judged)
        };
        report.failed = verdict.failed;
        report.unrecorded = verdict.unrecorded;
        report.registry_wide = verdict.registry_wide;
        if baselines > 0 {
            // One line per registry: a line per repository would bury everything else.
            tracing::info!(registry = %self.config.name, repositories = baselines, tags = baseline_tags, "baseline recorded");
        }
        let Output::Commit { store, .. } = output else {
            return Ok(report);
        };
        if !complete_listing {
            // Hinted repositories join the known set, so they are forgotten too once they leave.
            if let Some(known) = lock(&self.listed).as_mut() {
                known.extend(listed);
            }
            return Ok(report);
        }
        // Only a complete listing moves the watch set that decides "new or baseline", and only
        // after every first-seen repository has its decision recorded (scanned, or pending).
        // Ownership that changed during the cycle (cluster mode) makes the listing incomplete for
        // the partitions gained and says nothing of those lost: compare afresh next cycle.
        let Some(epoch) = listing_epoch.filter(|e| *e == store.ownership_epoch()) else {
            *lock(&self.listed) = None;
            return Ok(report);
        };
        if scanned_all && unrecorded == 0 {
            let (identity, patterns) = (self.identity.clone(), current.clone());
            let recorded = async {
                // Always: the store skips an unchanged set, and in cluster mode fills in the
                // partitions this replica took over since.
                blocking(store, move |s| s.set_watch_set(&identity, &patterns, epoch)).await?;
                self.forget_departed(output, store, listed, &stop).await
            };
            match recorded.await {
                Err(e) if e.is_transient() => {
                    tracing::warn!(registry = %self.config.name, error = %e, "watch set not recorded; trying again next cycle");
                }
                other => other?,
            }
        }
        Ok(report)
    }

    /// Forgets the state of repositories that are no longer in the (complete) watch set, so that
    /// the store does not grow as repositories churn and a repository watched again later is a
    /// config edit, with a baseline, not a diff against a stale snapshot.
    ///
    /// A repository a config edit deselected is forgotten at once. One the patterns still select
    /// but the catalog no longer lists is forgotten only once its own `tags/list` has shown it
    /// gone (404, or no tags) in two complete cycles running: a catalog that lags or was cut
    /// short is no proof, nor is one 404 (the first-scan rule calls that a glitch), and forgetting
    /// a live repository would re-emit all its tags as news when the catalog recovers.
    async fn forget_departed(
        &self,
        output: &Output,
        store: &Arc<dyn StateStore>,
        mut listed: BTreeSet<String>,
        stop: &impl Fn() -> bool,
    ) -> Result<(), StoreError> {
        let before = lock(&self.listed).take();
        let own_listing = before.is_some();
        let mut departed: Vec<String> = match before {
            Some(before) => before.difference(&listed).cloned().collect(),
            None => {
                let identity = self.identity.clone();
                blocking(store, move |s| s.repositories(&identity))
                    .await?
                    .into_iter()
                    .filter(|r| !listed.contains(r))
                    .collect()
            }
        };
        // A repository whose partition moved to another replica did not depart.
        departed.retain(|r| store.owns(&self.identity, r));
        let (unlisted, mut forget): (Vec<String>, Vec<String>) = departed
            .into_iter()
            .partition(|r| self.config.repositories.iter().any(|p| p.matches(r)));
        if store.shared() && !own_listing {
            // Held in the store but never listed by this process, and not selected by its
            // patterns: another replica's (a newer config during a rollout), not departed.
            forget.clear();
        }
        let probed: Vec<(String, bool)> = stream::iter(unlisted.iter().cloned())
            .take_while(|_| std::future::ready(!stop()))
            .map(|repo| async move {
                let gone = match self.registry.list_tags(&repo).await {
                    Ok(tags) => tags.is_empty(),
                    Err(RegistryError::NotFound(_)) => true,
                    Err(_) => false,
                };
                (repo, gone)
            })
            .buffer_unordered(self.config.concurrency)
            .collect()
            .await;
        let gone_before = std::mem::take(&mut *lock(&self.gone));
        let mut gone_now = BTreeSet::new();
        for (repo, gone) in probed {
            if gone && gone_before.contains(&repo) {
                if self.emit_removed {
                    self.record_deletion(output, &repo).await?;
                }
                forget.push(repo);
            } else if gone {
                gone_now.insert(repo);
            }
        }
        // Everything not forgotten (alive, gone once, or not probed before a stop) is looked at
        // again after the next complete listing.
        listed.extend(unlisted.into_iter().filter(|r| !forget.contains(r)));
        *lock(&self.gone) = gone_now;
        if !forget.is_empty() {
            tracing::info!(registry = %self.config.name, repositories = forget.len(), first = %forget[0], "forgetting repositories that left the watch set");
            let identity = self.identity.clone();
            blocking(store, move |s| s.forget_repositories(&identity, &forget)).await?;
        }
        // Lookup failures of repositories that left are forgotten with them.
        lock(&self.unresolved).retain(|repo, _| listed.contains(repo));
        *lock(&self.listed) = Some(listed);
        Ok(())
    }

    /// Whether the first scan of a repository the store has never seen emits its tags: only if
    /// the registry was listed before and the repository already matched the watch set then (so it
    /// is genuinely new, not brought in by a config edit or a first run).
    fn first_scan_emits(&self, repo: &str, previous: Option<&[RepoPattern]>) -> bool {
        match previous {
            None => self.first_run == FirstRun::Emit,
            Some(patterns) => patterns.iter().any(|p| p.matches(repo)),
        }
    }

    /// [`Scanner::first_scan_emits`] with the watch set the store keeps for `repo` itself, when it
    /// keeps one per repository (cluster mode: per partition), else the registry's (`previous`).
    fn first_seen_emits(
        &self,
        repo: &str,
        previous: Option<&[RepoPattern]>,
        output: &Output,
    ) -> Result<bool, StoreError> {
        let own = match output.store() {
            Some(store) => store.watch_set_of(&self.identity, repo)?,
            None => None,
        };
        Ok(match own {
            None => self.first_scan_emits(repo, previous),
            Some(None) => self.first_scan_emits(repo, None),
            Some(Some(recorded))
                if recorded.iter().map(String::as_str).eq(self
                    .config
                    .repositories
                    .iter()
                    .map(RepoPattern::as_str)) =>
            {
                self.first_scan_emits(repo, Some(&self.config.repositories))
            }
            Some(Some(recorded)) => {
                let patterns: Vec<RepoPattern> = recorded
                    .iter()
                    .filter_map(|p| RepoPattern::parse(p).ok())
                    .collect();
                self.first_scan_emits(repo, Some(&patterns))
            }
        })
    }

    /// [`Scanner::scan_repository`], with a panic confined to this repository: it is counted and
    /// logged at ERROR, and the repository fails (and backs off) alone while its siblings go on.
    async fn scan_repository_guarded(
        &self,
        repo: &str,
        previous_watch_set: Option<&[RepoPattern]>,
        output: &Output,
    ) -> Result<RepoOutcome, ScanError> {
        use futures_util::FutureExt;
        let scan = self.scan_repository(repo, previous_watch_set, output);
        match std::panic::AssertUnwindSafe(scan).catch_unwind().await {
            Ok(result) => result,
            Err(_) => {
                crate::metrics::get()
                    .scan_panics
                    .get_or_create(&crate::metrics::registry_label(&self.config.name))
                    .inc();
                tracing::error!(registry = %self.config.name, repository = %repo, "the scan of this repository panicked (the panic is logged above); nothing of it was recorded, and it backs off alone");
                Err(ScanError::Registry(RegistryError::Protocol(
                    "the scan panicked".into(),
                )))
            }
        }
    }

    /// Scans one repository. Any failure leaves the store as it was.
    async fn scan_repository(
        &self,
        repo: &str,
        previous_watch_set: Option<&[RepoPattern]>,
        output: &Output,
    ) -> Result<RepoOutcome, ScanError> {
        let stored = match output.store() {
            Some(store) => match store.repo_state(&self.identity, repo) {
                // A failing repository, as far as the cycle goes: counted, backed off, and not
                // "unrecorded" (which would hold the registry's watch set still for good).
                Err(StoreError::SetAside(why)) => {
                    return Err(ScanError::Registry(RegistryError::Protocol(why)));
                }
                other => other?,
            },
            None => None,
        };
        let first_seen = stored.is_none();
        let state = match stored {
            Some(state) => state,
            None => RepoState::Pending {
                emit: self.first_seen_emits(repo, previous_watch_set, output)?,
                revision: output
                    .store()
                    .map_or_else(fresh_revision, |s| s.fresh_revision()),
            },
        };
        // A new repository's events are diffed against a revision drawn now: record it first, so
        // that detecting them again after a lost commit gives them the same ids.
        if first_seen
            && let (
                Output::Commit { store, .. },
                RepoState::Pending {
                    emit: true,
                    revision,
                },
            ) = (output, &state)
        {
            let (identity, repo, revision) = (self.identity.clone(), repo.to_owned(), *revision);
            blocking(store, move |s| {
                s.record_pending(&identity, &repo, true, revision)
            })
            .await?;
        }
        let result = self.scan_known(repo, state.clone(), output).await;
        // A first scan that failed keeps its decision (and revision) for the next try.
        if first_seen
            && result.is_err()
            && let (Output::Commit { store, .. }, RepoState::Pending { emit, revision }) =
                (output, state)
        {
            let (identity, repo) = (self.identity.clone(), repo.to_owned());
            blocking(store, move |s| {
                s.record_pending(&identity, &repo, emit, revision)
            })
            .await?;
        }
        result
    }

    /// Whether a 404 on `tags/list` means "no tags" rather than a failed scan: for a repository
    /// known to be empty, or named in `repositories` (it may not exist yet; once it does, its
    /// tags are news). A repository the catalog listed but whose tags 404 is a registry glitch
    /// (eventual consistency, a deletion in progress): failing keeps its first-scan decision.
    fn absent_means_empty(&self, repo: &str, previous: Option<&Snapshot>, was_known: bool) -> bool {
        if was_known {
            previous.is_some_and(|p| p.tags.is_empty())
        } else {
            self.config
                .repositories
                .iter()
                .any(|p| matches!(p, RepoPattern::Exact(name) if name == repo))
        }
    }

    /// Scans one repository whose state (stored, or just decided) is `state`.
    async fn scan_known(
        &self,
        repo: &str,
        state: RepoState,
        output: &Output,
    ) -> Result<RepoOutcome, ScanError> {
        // The revision the changes are diffed against; the commit stores the next one.
        let (previous, revision, was_known) = match state {
            RepoState::Known(s) => {
                let revision = s.revision;
                (Some(s), revision, true)
            }
            RepoState::Pending {
                emit: true,
                revision,
            } => (
                Some(Snapshot {
                    revision,
                    ..Snapshot::default()
                }),
                revision,
                false,
            ),
            RepoState::Pending {
                emit: false,
                revision,
            } => (None, revision, false),
        };
        // Read under these version rules from here on: every later use (lookups, the diff, what
        // a failed lookup withholds) sees the same upgraded snapshot, and the upgrade is stored
        // even by an idle cycle, so that it is decided once, under the config of that moment.
        let upgraded = previous
            .as_ref()
            .is_some_and(|p| was_known && p.version_rules < crate::watch::versions::RULES);
        let previous = previous.map(|mut p| {
            diff::upgrade(&mut p, &self.config.tags);
            p
        });

        let listing = match self.registry.list_tags(repo).await {
            Ok(tags) => tags,
            Err(RegistryError::NotFound(_))
                if self.absent_means_empty(repo, previous.as_ref(), was_known) =>
            {
                Vec::new()
            }
            Err(e) => return Err(e.into()),
        };

        // Before the lookups: a tag listed twice with two digests needs its digest looked up.
        let mut listing = diff::one_entry_per_tag(listing);
        let wanted = diff::needs_digest(previous.as_ref(), &listing, &self.config.tags);
        let lookups = wanted.len();
        let looked_up: Vec<(usize, Result<String, RegistryError>)> = stream::iter(wanted)
            .map(|i| {
                let tag = listing[i].name.clone();
                async move { (i, self.registry.digest(repo, &tag).await) }
            })
            .buffer_unordered(self.config.concurrency)
            .collect()
            .await;
        let (mut unresolved, mut failed) = (BTreeSet::new(), BTreeSet::new());
        let mut failure = None;
        for (i, result) in looked_up {
            match result {
                Ok(d) => listing[i].digest = Some(d),
                Err(e) => {
                    if self.waits_on_its_own(repo, &listing[i].name, &e) {
                        unresolved.insert(listing[i].name.clone());
                    } else {
                        failure.get_or_insert(e);
                    }
                    failed.insert(listing[i].name.clone());
                }
            }
        }
        if let Some(e) = failure {
            self.count_lookup_failures(repo, &failed);
            return Err(e.into());
        }
        // A new tag whose digest cannot be had (its push still being written, or its manifest
        // garbage collected) is left out: not recorded, so it is new again at the next scan and
        // reported once it resolves. A known tag keeps what was known, and a baseline records
        // the name, as baselines do. The rest of the repository is reported as usual.
        let is_known = |tag: &str| previous.as_ref().is_none_or(|p| p.tags.contains_key(tag));
        if !unresolved.is_empty() {
            listing.retain(|t| !unresolved.contains(&t.name) || is_known(&t.name));
        }

        let mut outcome = diff::evaluate(
            previous.as_ref(),
            listing,
            &self.config.tags,
            self.emit_removed,
        );
        if self.config.platforms {
            match self.lookup_platforms(repo, &mut outcome).await {
                Ok(failed) if failed.is_empty() => {}
                Ok(failed) => {
                    // Their tags wait, as an unresolvable digest does; the others are reported.
                    let tags: BTreeSet<String> = outcome
                        .changes
                        .iter()
                        .filter(|c| c.digest().is_some_and(|d| failed.contains(d)))
                        .map(|c| c.tag().to_owned())
                        .collect();
                    diff::withhold(&mut outcome, previous.as_ref(), &tags);
                    unresolved.extend(tags);
                }
                Err((e, failed_tags)) => {
                    failed.extend(failed_tags);
                    self.count_lookup_failures(repo, &failed);
                    // Nothing is reported, but what was read stays read: digests are immutable,
                    // and every GET may be a pull. Only for a known repository: a first scan's
                    // failure keeps its pending decision instead.
                    if let Some(prev) = previous.as_ref().filter(|_| was_known) {
                        let mut kept = prev.clone();
                        for (digest, platforms) in outcome.snapshot.platforms {
                            kept.platforms.entry(digest).or_insert(platforms);
                        }
                        if !kept.same_content(prev) {
                            let unchanged = diff::Diff {
                                snapshot: kept,
                                changes: Vec::new(),
                            };
                            self.record(
                                output,
                                repo,
                                unchanged,
                                revision,
                                Some(revision),
                                SystemTime::now(),
                            )
                            .await?;
                        }
                    }
                    return Err(e);
                }
            }
            diff::annotate_platforms(
                &mut outcome,
                previous.as_ref(),
                &self.config.require_platforms,
            );
        }
        let waiting = self.note_unresolved(repo, &unresolved, &is_known);
        // One instant for the deadlines and the events' detected_at, so that a tag.matured is
        // never less than mature_after after its tag.added, even to the millisecond.
        let detected = SystemTime::now();
        diff::mature(&mut outcome, self.config.mature_after, detected);
        if was_known
            && !upgraded
            && outcome.changes.is_empty()
            && previous
                .as_ref()
                .is_some_and(|p| p.same_content(&outcome.snapshot))
        {
            return Ok(RepoOutcome {
                events: 0,
                digest_lookups: lookups,
                baseline_tags: None,
                waiting,
            });
        }
        let baseline_tags = previous.is_none().then_some(outcome.snapshot.tags.len());
        let base = was_known.then_some(revision);
        let event_count = self
            .record(output, repo, outcome, revision, base, detected)
            .await?;
        if let Some(tags) = baseline_tags {
            tracing::debug!(registry = %self.config.name, repository = %repo, tags, "baseline recorded");
        }
        Ok(RepoOutcome {
            events: event_count,
            digest_lookups: lookups,
            baseline_tags,
            waiting,
        })
    }

    /// Looks up the platforms of the new digests `outcome` reports (`platforms`), once per digest
    /// ever: the snapshot keeps them. Returns the digests whose lookup failed for a tag that now
    /// waits on its own (see [`Scanner::waits_on_its_own`]); any other failure fails the scan, so
    /// no event goes without its platforms, and comes with the tags whose lookups failed. After
    /// one, no further lookup starts, and those that succeeded are still in `outcome`.
    async fn lookup_platforms(
        &self,
        repo: &str,
        outcome: &mut diff::Diff,
    ) -> Result<BTreeSet<String>, (ScanError, BTreeSet<String>)> {
        let failed = std::sync::atomic::AtomicBool::new(false);
        let results: Vec<(String, String, Result<Vec<String>, RegistryError>)> =
            stream::iter(diff::needs_platforms(outcome))
                .take_while(|_| std::future::ready(!failed.load(Ordering::Relaxed)))
                .map(|(digest, tag)| {
                    let failed = &failed;
                    async move {
                        let result = self.registry.platforms(repo, &digest).await;
                        let fatal = result
                            .as_ref()
                            .is_err_and(|e| !self.waits_on_its_own(repo, &tag, e));
                        failed.fetch_or(fatal, Ordering::Relaxed);
                        (digest, tag, result)
                    }
                })
                .buffer_unordered(self.config.concurrency)
                .collect()
                .await;
        let mut first_error = None;
        let (mut unresolved, mut failed_tags) = (BTreeSet::new(), BTreeSet::new());
        for (digest, tag, result) in results {
            match result {
                Ok(platforms) => {
                    outcome.snapshot.platforms.insert(digest, platforms);
                }
                Err(e) => {
                    if self.waits_on_its_own(repo, &tag, &e) {
                        unresolved.insert(digest);
                    } else {
                        first_error.get_or_insert(e);
                    }
                    failed_tags.insert(tag);
                }
            }
        }
        match first_error {
            None => Ok(unresolved),
            Some(e) => Err((e.into(), failed_tags)),
        }
    }

    /// Whether the failed lookup `e` of `repo:tag` makes the tag wait rather than fail the scan:
    /// at once for a 404; for other errors, once they have failed [`FAILURES_BEFORE_WAITING`]
    /// scans of the repository in a row.
    fn waits_on_its_own(&self, repo: &str, tag: &str, e: &RegistryError) -> bool {
        confined_to_one_tag(e)
            || lock(&self.unresolved)
                .get(repo)
                .and_then(|tags| tags.get(tag))
                .is_some_and(|n| *n + 1 >= FAILURES_BEFORE_WAITING)
    }

    /// Records that the lookups of `failed` tags of `repo` failed in this scan (any other tag's
    /// count starts again), counting them in the metric; returns each one's scans in a row.
    fn count_lookup_failures(
        &self,
        repo: &str,
        failed: &BTreeSet<String>,
    ) -> std::collections::BTreeMap<String, u32> {
        let mut counts = lock(&self.unresolved);
        let before = counts.remove(repo).unwrap_or_default();
        if failed.is_empty() {
            return Default::default();
        }
        crate::metrics::get()
            .tag_lookup_failures
            .get_or_create(&crate::metrics::registry_label(&self.config.name))
            .inc_by(failed.len() as u64);
        let now: std::collections::BTreeMap<String, u32> = failed
            .iter()
            .map(|t| {
                (
                    t.clone(),
                    before.get(t).copied().unwrap_or(0).saturating_add(1),
                )
            })
            .collect();
        counts.insert(repo.to_owned(), now.clone());
        now
    }

    /// Counts the tags of `repo` waiting on a failed lookup after a scan that succeeded, with one
    /// WARN once a tag has waited [`WARN_AFTER_WAITS`] scans in a row; returns how many new tags
    /// started waiting within the last [`WARN_AFTER_WAITS`] scans (those bring the repository's
    /// next scan forward: a push may still be being written).
    fn note_unresolved(
        &self,
        repo: &str,
        unresolved: &BTreeSet<String>,
        is_known: &impl Fn(&str) -> bool,
    ) -> usize {
        let counts = self.count_lookup_failures(repo, unresolved);
        for (tag, n) in &counts {
            if *n == WARN_AFTER_WAITS {
                tracing::warn!(registry = %self.config.name, repository = %repo, tag = %tag, scans = n, "a listed tag's manifest cannot be looked up (dangling after garbage collection?); it is reported once it resolves, and the repository's other tags are reported as usual");
            }
        }
        counts
            .iter()
            .filter(|(tag, n)| **n <= WARN_AFTER_WAITS && !is_known(tag))
            .count()
    }

    /// Records a diff of `repo` against snapshot `revision`, detected at `detected`: commits the
    /// next snapshot with the changes' events (or, in a dry run, prints them), provided the store
    /// still holds the known snapshot `base` the scan read (see [`StateStore::commit_scan`]).
    /// Returns the number of events.
    async fn record(
        &self,
        output: &Output,
        repo: &str,
        mut outcome: diff::Diff,
        revision: u64,
        base: Option<u64>,
        detected: SystemTime,
    ) -> Result<usize, StoreError> {
        // The revision comes from the state file: at its ceiling it stays there rather than panic
        // (or wrap to 0, below the revisions already used).
        outcome.snapshot.revision = revision.saturating_add(1);
        let origin = Origin {
            registry: &self.config.name,
            identity: &self.identity,
            kind: self.config.kind,
            host: &self.config.host,
            repository: repo,
        };
        let events: Vec<Event> = outcome
            .changes
            .iter()
            .map(|c| event::build(origin, c, revision, detected))
            .collect();
        let event_count = events.len();
        match output {
            Output::Commit { store, published } => {
                let (identity, name, snapshot) =
                    (self.identity.clone(), repo.to_owned(), outcome.snapshot);
                blocking(store, move |s| {
                    s.commit_scan(&identity, &name, base, &snapshot, &events)
                })
                .await?;
                if event_count > 0 {
                    published.notify_one();
                }
                for c in &outcome.changes {
                    crate::metrics::get()
                        .events_produced
                        .get_or_create(&vec![("type", c.kind().event_type().to_owned())])
                        .inc();
                }
            }
            Output::DryRun { .. } => {
                let mut out = std::io::stdout().lock();
                for e in &events {
                    use std::io::Write;
                    // A closed stdout in a dry run is the reader's choice; nothing to recover.
                    let _ = writeln!(out, "{}", e.payload);
                }
            }
        }
        for c in &outcome.changes {
            tracing::info!(registry = %self.config.name, repository = %repo, tag = %c.tag(), change = c.kind().event_type(), "change detected");
        }
        Ok(event_count)
    }

    /// With `emit_removed`, a repository shown gone reports its selected tags as removed before
    /// it is forgotten (a crash in between leaves an empty snapshot: nothing is reported twice).
    async fn record_deletion(&self, output: &Output, repo: &str) -> Result<(), StoreError> {
        let Some(store) = output.store() else {
            return Ok(());
        };
        let Some(RepoState::Known(previous)) = store.repo_state(&self.identity, repo)? else {
            return Ok(());
        };
        let outcome = diff::evaluate(Some(&previous), Vec::new(), &self.config.tags, true);
        if !outcome.changes.is_empty() {
            let revision = previous.revision;
            self.record(
                output,
                repo,
                outcome,
                revision,
                Some(revision),
                SystemTime::now(),
            )
            .await?;
        }
        Ok(())
    }
}
