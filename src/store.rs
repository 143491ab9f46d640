//! The embedded ACID store (redb) in `state_dir`: per-repository snapshots, per-registry watch sets,
//! and the outbox of events not yet acknowledged by the sink. Every byte on disk is written here.
//!
//! The interface is deliberately small (load a repository's state; commit a snapshot with its
//! events; drain the outbox) so that a Kafka-backed store can replace this one later.

use std::fs::{DirBuilder, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::event::Event;
use crate::watch::diff::Snapshot;

/// `registry \0 repository` → encoded [`RepoState`].
const REPOS: TableDefinition<&str, &[u8]> = TableDefinition::new("repos");
/// `registry` → JSON list of the `repositories` patterns of its last completed listing.
const WATCH_SETS: TableDefinition<&str, &[u8]> = TableDefinition::new("watch_sets");
/// sequence number → JSON [`Event`], oldest first.
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");

/// The file inside `state_dir`.
pub const FILE_NAME: &str = "regwatch.redb";

/// What the store knows of one repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepoState {
    /// Seen in a listing but not yet scanned successfully; `emit` says whether its tags are news
    /// (it appeared after the baseline) or a baseline (first run, or added by a config change).
    Pending {
        /// Emit its tags as added on the first successful scan.
        emit: bool,
    },
    /// The last complete listing.
    Known(Snapshot),
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
    /// Reading or writing failed (disk full, I/O error, bad record).
    #[error("state store I/O failed: {0}")]
    Io(String),
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

/// The embedded store.
pub struct Store {
    db: Database,
}

fn repo_key(registry: &str, repository: &str) -> String {
    format!("{registry}\0{repository}")
}

// Encoding of RepoState: one tag byte, then for Known a JSON list of [tag, digest] pairs.
const PENDING_BASELINE: u8 = b'b';
const PENDING_EMIT: u8 = b'e';
const KNOWN: u8 = b'k';

fn encode_state(state: &RepoState) -> Vec<u8> {
    match state {
        RepoState::Pending { emit: false } => vec![PENDING_BASELINE],
        RepoState::Pending { emit: true } => vec![PENDING_EMIT],
        RepoState::Known(s) => {
            let mut out = vec![KNOWN];
            serde_json::to_writer(&mut out, &s.tags).expect("snapshot serializes");
            out
        }
    }
}

fn decode_state(bytes: &[u8]) -> Result<RepoState, StoreError> {
    match bytes.split_first() {
        Some((&PENDING_BASELINE, [])) => Ok(RepoState::Pending { emit: false }),
        Some((&PENDING_EMIT, [])) => Ok(RepoState::Pending { emit: true }),
        Some((&KNOWN, json)) => serde_json::from_slice(json)
            .map(|tags| RepoState::Known(Snapshot { tags }))
            .map_err(|e| StoreError::Io(format!("undecodable snapshot record: {e}"))),
        _ => Err(StoreError::Io("unknown repository record".into())),
    }
}

impl Store {
    /// Opens (creating if needed) the store in `dir`, with 0700 / 0600 permissions.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let path = dir.join(FILE_NAME);
        let open_err = |reason: String| StoreError::Open {
            path: path.clone(),
            reason,
        };
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| open_err(format!("cannot create state_dir: {e}")))?;
        if !path.exists() {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| open_err(e.to_string()))?;
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| open_err(e.to_string()))?;
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::Storage(redb::StorageError::Corrupted(reason)) => {
                StoreError::Corrupted {
                    path: path.clone(),
                    reason,
                }
            }
            // A file that is not a redb file at all (overwritten, truncated header) is corrupt too.
            redb::DatabaseError::Storage(redb::StorageError::Io(e))
                if e.kind() == std::io::ErrorKind::InvalidData =>
            {
                StoreError::Corrupted {
                    path: path.clone(),
                    reason: e.to_string(),
                }
            }
            redb::DatabaseError::DatabaseAlreadyOpen => open_err(
                "already in use by another regwatch process (one state_dir per daemon)".into(),
            ),
            other => open_err(other.to_string()),
        })?;
        let store = Store { db };
        // Create the tables up front so readers never meet a missing table.
        let tx = store.db.begin_write().map_err(io)?;
        tx.open_table(REPOS).map_err(io)?;
        tx.open_table(WATCH_SETS).map_err(io)?;
        tx.open_table(OUTBOX).map_err(io)?;
        tx.commit().map_err(io)?;
        Ok(store)
    }

    /// What the store knows of `registry`/`repository`.
    pub fn repo_state(
        &self,
        registry: &str,
        repository: &str,
    ) -> Result<Option<RepoState>, StoreError> {
        let tx = self.db.begin_read().map_err(io)?;
        let table = tx.open_table(REPOS).map_err(io)?;
        match table
            .get(repo_key(registry, repository).as_str())
            .map_err(io)?
        {
            Some(v) => decode_state(v.value()).map(Some),
            None => Ok(None),
        }
    }

    /// The `repositories` patterns of `registry`'s last completed listing, if it ever had one.
    pub fn watch_set(&self, registry: &str) -> Result<Option<Vec<String>>, StoreError> {
        let tx = self.db.begin_read().map_err(io)?;
        let table = tx.open_table(WATCH_SETS).map_err(io)?;
        match table.get(registry).map_err(io)? {
            Some(v) => serde_json::from_slice(v.value()).map(Some).map_err(io),
            None => Ok(None),
        }
    }

    /// Records the `repositories` patterns of a complete listing of `registry`.
    pub fn set_watch_set(&self, registry: &str, patterns: &[String]) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(io)?;
        {
            let mut sets = tx.open_table(WATCH_SETS).map_err(io)?;
            let encoded = serde_json::to_vec(patterns).expect("patterns serialize");
            sets.insert(registry, encoded.as_slice()).map_err(io)?;
        }
        tx.commit().map_err(io)
    }

    /// Remembers, for a repository whose first scan failed, whether that scan was to emit, so a
    /// later watch-set change cannot turn the decision around.
    pub fn record_pending(
        &self,
        registry: &str,
        repository: &str,
        emit: bool,
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(io)?;
        {
            let mut repos = tx.open_table(REPOS).map_err(io)?;
            let state = encode_state(&RepoState::Pending { emit });
            repos
                .insert(repo_key(registry, repository).as_str(), state.as_slice())
                .map_err(io)?;
        }
        tx.commit().map_err(io)
    }

    /// Stores a repository's new snapshot and appends its events to the outbox, atomically.
    pub fn commit_scan(
        &self,
        registry: &str,
        repository: &str,
        snapshot: &Snapshot,
        events: &[Event],
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(io)?;
        {
            let mut repos = tx.open_table(REPOS).map_err(io)?;
            let state = encode_state(&RepoState::Known(snapshot.clone()));
            repos
                .insert(repo_key(registry, repository).as_str(), state.as_slice())
                .map_err(io)?;
            let mut outbox = tx.open_table(OUTBOX).map_err(io)?;
            let first = outbox.last().map_err(io)?.map_or(0, |(k, _)| k.value() + 1);
            for (seq, event) in (first..).zip(events) {
                let encoded = serde_json::to_vec(event).expect("event serializes");
                outbox.insert(seq, encoded.as_slice()).map_err(io)?;
            }
        }
        tx.commit().map_err(io)
    }

    /// Up to `limit` pending events, oldest first, with their sequence numbers.
    pub fn outbox_batch(&self, limit: usize) -> Result<Vec<(u64, Event)>, StoreError> {
        let tx = self.db.begin_read().map_err(io)?;
        let table = tx.open_table(OUTBOX).map_err(io)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(io)?.take(limit) {
            let (k, v) = entry.map_err(io)?;
            let event: Event = serde_json::from_slice(v.value()).map_err(io)?;
            out.push((k.value(), event));
        }
        Ok(out)
    }

    /// Removes acknowledged events.
    pub fn outbox_remove(&self, sequences: &[u64]) -> Result<(), StoreError> {
        if sequences.is_empty() {
            return Ok(());
        }
        let tx = self.db.begin_write().map_err(io)?;
        {
            let mut table = tx.open_table(OUTBOX).map_err(io)?;
            for seq in sequences {
                table.remove(*seq).map_err(io)?;
            }
        }
        tx.commit().map_err(io)
    }

    /// How many events wait in the outbox.
    pub fn outbox_len(&self) -> Result<u64, StoreError> {
        let tx = self.db.begin_read().map_err(io)?;
        tx.open_table(OUTBOX).map_err(io)?.len().map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: u32) -> Event {
        Event {
            id: format!("id{n}"),
            key: "h/r".into(),
            payload: format!("{{\"n\":{n}}}"),
        }
    }

    #[test]
    fn snapshot_and_outbox_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        {
            let store = Store::open(&state_dir).unwrap();
            assert_eq!(store.repo_state("r", "a").unwrap(), None);
            store.set_watch_set("r", &["team/*".into()]).unwrap();
            store.record_pending("r", "a", true).unwrap();
            assert_eq!(
                store.repo_state("r", "a").unwrap(),
                Some(RepoState::Pending { emit: true })
            );
            let mut snap = Snapshot::default();
            snap.tags.insert("v1".into(), Some("sha256:1".into()));
            snap.tags.insert("v0".into(), None);
            store
                .commit_scan("r", "a", &snap, &[event(1), event(2)])
                .unwrap();
        }
        let store = Store::open(&state_dir).unwrap();
        let Some(RepoState::Known(snap)) = store.repo_state("r", "a").unwrap() else {
            panic!()
        };
        assert_eq!(snap.tags.len(), 2);
        assert_eq!(
            store.watch_set("r").unwrap(),
            Some(vec!["team/*".to_string()])
        );
        let batch = store.outbox_batch(10).unwrap();
        assert_eq!(
            batch.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>(),
            vec![event(1), event(2)]
        );
        store.outbox_remove(&[batch[0].0]).unwrap();
        assert_eq!(store.outbox_len().unwrap(), 1);
        // Sequence numbers keep rising past removed entries.
        store.commit_scan("r", "a", &snap, &[event(3)]).unwrap();
        let ids: Vec<String> = store
            .outbox_batch(10)
            .unwrap()
            .into_iter()
            .map(|(_, e)| e.id)
            .collect();
        assert_eq!(ids, vec!["id2", "id3"]);
    }

    #[test]
    fn files_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("s");
        Store::open(&state_dir).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state_dir), 0o700);
        assert_eq!(mode(&state_dir.join(FILE_NAME)), 0o600);
    }

    #[test]
    fn garbage_file_is_reported_as_corrupt_or_unopenable() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), vec![0xAB; 8192]).unwrap();
        let err = Store::open(dir.path())
            .err()
            .expect("garbage must not open");
        let text = err.to_string();
        assert!(text.contains(FILE_NAME), "{text}");
    }

    #[test]
    fn second_open_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path()).unwrap();
        let err = Store::open(dir.path())
            .err()
            .expect("second open must fail");
        assert!(
            err.to_string().contains("another regwatch process"),
            "{err}"
        );
    }
}
