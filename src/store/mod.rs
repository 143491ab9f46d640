//! Where regwatch keeps what it knows: per-repository snapshots, per-registry watch sets, and the
//! outbox of events not yet acknowledged by the sink.
//!
//! State is keyed by a registry's [`identity`], never by its display name, so that pointing a
//! name at another registry takes a new baseline instead of diffing two registries. The scanner
//! sees only the [`StateStore`] trait; [`Store`] (redb, single node) implements it, and cluster
//! mode can implement it on Kafka.

pub mod kafka;
mod redb;

use std::path::PathBuf;

use crate::config::{Provider, RegistryConfig};
use crate::event::Event;
use crate::watch::diff::Snapshot;

pub use self::redb::{FILE_NAME, ReadOnlyStore, Store};

/// What the store knows of one repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepoState {
    /// Seen in a listing but not yet scanned successfully; `emit` says whether its tags are news
    /// (it appeared after the baseline) or a baseline (first run, or added by a config change).
    Pending {
        /// Emit its tags as added on the first successful scan.
        emit: bool,
        /// The revision the first scan diffs against, kept so that a retried first scan gives
        /// its events the same ids.
        revision: u64,
    },
    /// The last complete listing, with its revision.
    Known(Snapshot),
}

impl RepoState {
    /// The revision it carries.
    pub(crate) fn revision(&self) -> u64 {
        match self {
            RepoState::Pending { revision, .. } => *revision,
            RepoState::Known(s) => s.revision,
        }
    }
}

/// A store failure, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The state directory or file cannot be created or opened.
    #[error("cannot open state store {path}: {reason}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The file is damaged.
    #[error(
        "state store {path} is corrupted ({reason}); stop regwatch and move the file aside to rebuild it: \
         the next scan takes a fresh baseline and emits nothing for what is already there"
    )]
    Corrupted {
        /// The file.
        path: PathBuf,
        /// What redb reported.
        reason: String,
    },
    /// The file was written by a newer regwatch, in a layout this binary does not know.
    #[error(
        "state store {path} has schema {found}, newer than the schema {known} this regwatch \
         reads: it was written by a newer release. Run that release (or a later one) again, or, \
         to go on with this one, stop regwatch and move the file aside: the next scan takes a \
         fresh baseline and emits nothing for what is already there"
    )]
    NewerSchema {
        /// The file.
        path: PathBuf,
        /// The schema it carries.
        found: u64,
        /// The newest schema this binary reads.
        known: u64,
    },
    /// Reading or writing failed (disk full, I/O error, bad record).
    #[error("state store I/O failed: {0}")]
    Io(String),
    /// The store cannot take writes for now (cluster mode: Kafka is down). Nothing was recorded;
    /// the scan is retried later.
    #[error("state not recorded: {0}")]
    Unavailable(String),
    /// Cluster mode: the repository's state partition stopped being this replica's during the
    /// cycle (a rebalance moved it, or it is being restored again). Nothing was recorded; its
    /// owner scans it. Not this replica's failure, so it never makes the replica unready.
    #[error("state not recorded here: {0}")]
    Moved(String),
    /// Cluster mode: the repository's state records cannot be read here (written by a newer
    /// release?). The repository is set aside, as a failing one is; the others go on.
    #[error("state set aside: {0}")]
    SetAside(String),
    /// Another writer (a second loop on the same registry identity) committed the repository
    /// since the scan read it. Nothing was recorded; the next scan diffs against what is stored.
    #[error(
        "state of {repository} not recorded: it changed since it was read (diffed against revision \
         {base:?}, stored {stored:?}); scanning it again"
    )]
    Conflict {
        /// The repository.
        repository: String,
        /// The revision the scan diffed against (`None`: no known snapshot).
        base: Option<u64>,
        /// The revision stored now (`None`: no known snapshot).
        stored: Option<u64>,
    },
}

impl StoreError {
    /// Whether retrying later can succeed without a restart.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable(_)
                | StoreError::Moved(_)
                | StoreError::Conflict { .. }
                | StoreError::SetAside(_)
        )
    }
}

/// The revision a commit of `repository` must find stored: that of its known snapshot, or `None`
/// when it has none (never seen, pending, or unreadable). Refuses `base` when it is not that.
pub(crate) fn check_base(
    repository: &str,
    base: Option<u64>,
    stored: Option<&RepoState>,
) -> Result<(), StoreError> {
    let stored = match stored {
        Some(RepoState::Known(s)) => Some(s.revision),
        _ => None,
    };
    if stored == base {
        Ok(())
    } else {
        Err(StoreError::Conflict {
            repository: repository.to_owned(),
            base,
            stored,
        })
    }
}

/// The state a scanner reads and commits. `registry` is always a registry [`identity`].
pub trait StateStore: Send + Sync {
    /// What the store knows of `registry`/`repository`.
    fn repo_state(&self, registry: &str, repository: &str)
    -> Result<Option<RepoState>, StoreError>;
    /// The `repositories` patterns of `registry`'s last complete listing, if it ever had one.
    fn watch_set(&self, registry: &str) -> Result<Option<Vec<String>>, StoreError>;
    /// Records the `repositories` patterns of a complete listing of `registry` that began at
    /// ownership `epoch` (see [`ownership_epoch`](StateStore::ownership_epoch)); in cluster mode,
    /// nothing is recorded if ownership changed since, as the listing did not cover what was gained.
    fn set_watch_set(
        &self,
        registry: &str,
        patterns: &[String],
        epoch: u64,
    ) -> Result<(), StoreError>;
    /// Remembers a first scan's decision (emit or baseline, and its revision) after it failed,
    /// so a later watch-set change cannot turn it around. A repository that has a known snapshot
    /// by then (another writer's first scan won) keeps it.
    fn record_pending(
        &self,
        registry: &str,
        repository: &str,
        emit: bool,
        revision: u64,
    ) -> Result<(), StoreError>;
    /// Stores a repository's new snapshot and appends its events to the outbox, atomically, if
    /// its stored state is still the one the scan diffed against: `base` is the revision of the
    /// known snapshot it read, `None` if it read none. Otherwise nothing is written and the
    /// answer is [`StoreError::Conflict`], so of two writers only one ever commits.
    fn commit_scan(
        &self,
        registry: &str,
        repository: &str,
        base: Option<u64>,
        snapshot: &Snapshot,
        events: &[Event],
    ) -> Result<(), StoreError>;
    /// Every repository of `registry` the store holds state for.
    fn repositories(&self, registry: &str) -> Result<Vec<String>, StoreError>;
    /// Drops the state of repositories that left `registry`'s watch set.
    fn forget_repositories(
        &self,
        registry: &str,
        repositories: &[String],
    ) -> Result<(), StoreError>;
    /// Whether this process scans `repository` now. Always, on a single node; in cluster mode,
    /// when its partition is assigned here and restored.
    fn owns(&self, _registry: &str, _repository: &str) -> bool {
        true
    }
    /// A number that changes whenever what this process [`owns`](StateStore::owns) changes
    /// (never, on a single node): a listing that saw it change was not complete for what it owns.
    fn ownership_epoch(&self) -> u64 {
        0
    }
    /// Cluster mode: the watch set recorded where `repository`'s state lives (its partition's),
    /// which decides whether it is new when first seen; `Some(None)` when none is recorded there.
    /// `None` (a single node): the registry's [`watch_set`](StateStore::watch_set) decides.
    fn watch_set_of(
        &self,
        _registry: &str,
        _repository: &str,
    ) -> Result<Option<Option<Vec<String>>>, StoreError> {
        Ok(None)
    }
    /// A revision counter start for a repository seen for the first time: the clock
    /// ([`fresh_revision`]), but above every revision the store has recorded, so that a clock
    /// stepped back cannot make a repository forgotten and watched again reuse one (and so an
    /// event id).
    fn fresh_revision(&self) -> u64 {
        fresh_revision()
    }
    /// Whether other processes, whose configuration may differ during a rolling rollout, write
    /// this store too (cluster mode): state a process finds that its configuration does not
    /// select may be theirs, and is forgotten only when this process deselected it itself.
    fn shared(&self) -> bool {
        false
    }
    /// Passes a webhook hint for a repository this process does not own to the one that does.
    fn forward_hint(&self, _registry: &str, _repository: &str) -> Result<(), StoreError> {
        Ok(())
    }
}

/// The identity state is keyed by: the normalised URL, plus the account and region for ECR and
/// the project for GCR (one URL serves many of those).
pub fn identity(config: &RegistryConfig) -> String {
    let url = &config.url;
    let mut id = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
    if let Some(port) = url.port() {
        id.push_str(&format!(":{port}"));
    }
    id.push_str(url.path().trim_end_matches('/'));
    match &config.provider {
        // ACR's identity is its URL, as before it had keys of its own.
        Provider::Distribution | Provider::Acr(_) => {}
        Provider::Ecr(ecr) => id.push_str(&format!("#ecr={}/{}", ecr.registry_id, ecr.region)),
        Provider::Gcr(gcr) => id.push_str(&format!("#project={}", gcr.project_id)),
    }
    id
}

/// The identity of registry `r` within `config`. Two entries on one registry (per-team globs,
/// other credentials) each keep their own state: their identity also names the entry, so renaming
/// such an entry takes a new baseline.
pub fn identity_in(config: &crate::config::Config, r: &RegistryConfig) -> String {
    let own = identity(r);
    let shared = config
        .registries
        .iter()
        .filter(|o| identity(o) == own)
        .count()
        > 1;
    if shared {
        format!("{own}#name={}", r.name)
    } else {
        own
    }
}

/// A revision counter start from the clock: the current time in microseconds. A repository
/// forgotten and watched again later so never reuses an event id, as long as the clock never
/// goes back; [`StateStore::fresh_revision`] holds even when it does.
pub fn fresh_revision() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// [`fresh_revision`], but above `high_water`, the highest revision a store has recorded.
pub(crate) fn fresh_revision_above(high_water: u64) -> u64 {
    fresh_revision().max(high_water.saturating_add(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> RegistryConfig {
        crate::config::parse(text).unwrap().registries.remove(0)
    }

    #[test]
    fn identity_follows_the_registry_not_the_name() {
        let a = one(
            "[[registry]]\nname = \"x\"\nkind = \"oci\"\nurl = \"HTTPS://Reg.Example.com:443/\"\n",
        );
        let b =
            one("[[registry]]\nname = \"y\"\nkind = \"oci\"\nurl = \"https://reg.example.com\"\n");
        let c = one(
            "[[registry]]\nname = \"x\"\nkind = \"oci\"\nurl = \"https://other.example.com\"\n",
        );
        assert_eq!(identity(&a), "https://reg.example.com");
        assert_eq!(identity(&a), identity(&b), "a rename keeps the state");
        assert_ne!(identity(&a), identity(&c), "a new URL is a new registry");
    }
}
