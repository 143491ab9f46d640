//! The embedded ACID store (redb) in `state_dir`, single-node mode. Every byte on disk is written
//! here: snapshots keyed by `identity \0 repository`, watch sets and display names keyed by
//! identity, and the outbox.
//!
//! Schema 2 keys state by registry identity. A file written by schema 1 (keyed by registry name)
//! is migrated by [`Store::adopt_registries`], which knows the names' identities: no baseline, no
//! events. Schema 3 is schema 2 with the `S` record kind, which came without a bump of its own;
//! a schema-2 file is marked 3 at open and read as it is. A file of a newer schema is refused at
//! open ([`StoreError::NewerSchema`]), and one repository record that cannot be decoded is that
//! repository's new baseline, not the whole store's failure. META also keeps the highest revision
//! ever recorded ([`HIGH_WATER`]; taken from the records when a schema-2 file is opened), so that
//! revisions drawn from a clock stepped back still start above every revision used before.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{DirBuilder, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::{RepoState, StateStore, StoreError};
use crate::event::Event;
use crate::watch::diff::Snapshot;

/// `identity \0 repository` → encoded [`RepoState`].
const REPOS: TableDefinition<&str, &[u8]> = TableDefinition::new("repos");
/// `identity` → JSON list of the `repositories` patterns of its last completed listing.
const WATCH_SETS: TableDefinition<&str, &[u8]> = TableDefinition::new("watch_sets");
/// `identity` → the registry's display name, to say what is forgotten when it leaves the config.
const REGISTRIES: TableDefinition<&str, &str> = TableDefinition::new("registries");
/// `"schema"` → the layout version of this file; [`HIGH_WATER`] → the highest revision recorded.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The META key of the highest revision any repository's record ever carried: revisions drawn
/// later start above it, whatever the clock says (see [`StateStore::fresh_revision`]).
const HIGH_WATER: &str = "revision_high_water";
/// sequence number → JSON [`Event`], oldest first.
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");

/// The layout this code writes, and the newest it reads.
const SCHEMA: u64 = 3;

/// The file inside `state_dir`.
pub const FILE_NAME: &str = "regwatch.redb";

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

/// The embedded store.
pub struct Store {
    db: Database,
    unreadable: Unreadable,
    /// [`HIGH_WATER`] as committed (the file is this process's alone while open).
    high_water: AtomicU64,
}

/// Repository records found undecodable, each logged and counted once per process.
#[derive(Default)]
struct Unreadable(Mutex<HashSet<String>>);

impl Unreadable {
    /// Reports `registry`/`repository`'s undecodable record, the first time it is met.
    fn report(&self, registry: &str, repository: &str, error: &StoreError) {
        let first = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(repo_key(registry, repository));
        if first {
            crate::metrics::get().store_records_unreadable.inc();
            tracing::error!(registry = %registry, repository = %repository, error = %error, "unreadable state record; taking a new baseline of this repository (no events for the tags it holds now)");
        }
    }
}

fn repo_key(registry: &str, repository: &str) -> String {
    format!("{registry}\0{repository}")
}

/// The key range holding every repository of `registry` (`\0` separates, `\x01` sorts after it).
fn registry_range(registry: &str) -> (String, String) {
    (format!("{registry}\0"), format!("{registry}\x01"))
}

// Encoding of RepoState. Schema 2: `P` + emit byte + revision; `K` + revision + a JSON object of
// tag to digest for a snapshot with tags alone; `S` + revision + the whole snapshot as JSON
// (revisions big-endian u64). Schema 1 had `b`/`e`
// (pending baseline/emit) and `k` + JSON, with no revision.
const PENDING: u8 = b'P';
const KNOWN: u8 = b'K';
const SNAPSHOT: u8 = b'S';

pub(super) fn encode_state(state: &RepoState) -> Vec<u8> {
    match state {
        RepoState::Pending { emit, revision } => {
            let mut out = vec![PENDING, u8::from(*emit)];
            out.extend_from_slice(&revision.to_be_bytes());
            out
        }
        RepoState::Known(s) => {
            // A snapshot with tags alone, from before `version_rules`, keeps the `K` form, which
            // a release without deadlines, platforms or held-back versions still reads. The `K`
            // form has no room for `version_rules`: it reads back as 0.
            let plain = s.maturing.is_empty()
                && s.platforms.is_empty()
                && s.held_back.is_empty()
                && s.version_rules == 0;
            let mut out = vec![if plain { KNOWN } else { SNAPSHOT }];
            out.extend_from_slice(&s.revision.to_be_bytes());
            if plain {
                serde_json::to_writer(&mut out, &s.tags).expect("snapshot serializes");
            } else {
                serde_json::to_writer(&mut out, s).expect("snapshot serializes");
            }
            out
        }
    }
}

pub(super) fn decode_state(bytes: &[u8]) -> Result<RepoState, StoreError> {
    let bad = || StoreError::Io("unknown repository record".into());
    let undecodable =
        |e: serde_json::Error| StoreError::Io(format!("undecodable snapshot record: {e}"));
    let Some((&kind, rest)) = bytes.split_first() else {
        return Err(bad());
    };
    match kind {
        PENDING => match rest {
            [emit @ (0 | 1), revision @ ..] => Ok(RepoState::Pending {
                emit: *emit == 1,
                revision: u64::from_be_bytes(revision.try_into().map_err(|_| bad())?),
            }),
            _ => Err(bad()),
        },
        SNAPSHOT | KNOWN => {
            let (revision, json) = rest.split_first_chunk::<8>().ok_or_else(bad)?;
            let revision = u64::from_be_bytes(*revision);
            let snapshot = if kind == SNAPSHOT {
                serde_json::from_slice(json).map_err(undecodable)?
            } else {
                Snapshot {
                    tags: serde_json::from_slice(json).map_err(undecodable)?,
                    ..Snapshot::default()
                }
            };
            Ok(RepoState::Known(Snapshot {
                revision,
                ..snapshot
            }))
        }
        _ => Err(bad()),
    }
}

/// Reads a schema-1 record, giving it `revision` (schema 1 kept none).
fn decode_v1(bytes: &[u8], revision: u64) -> Result<RepoState, StoreError> {
    match bytes.split_first() {
        Some((b'b', [])) => Ok(RepoState::Pending {
            emit: false,
            revision,
        }),
        Some((b'e', [])) => Ok(RepoState::Pending {
            emit: true,
            revision,
        }),
        Some((b'k', json)) => serde_json::from_slice(json)
            .map(|tags| {
                RepoState::Known(Snapshot {
                    tags,
                    revision,
                    ..Snapshot::default()
                })
            })
            .map_err(|e| StoreError::Io(format!("undecodable schema-1 snapshot record: {e}"))),
        _ => Err(StoreError::Io("unknown schema-1 repository record".into())),
    }
}

impl Store {
    /// Opens (creating if needed) the store in `dir`, with 0700 / 0600 permissions. A `dir` that
    /// others may read is tightened to 0700 (snapshots name private repositories), or warned about
    /// where that is not allowed.
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
        private_dir(dir);
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
        let store = Store {
            db,
            unreadable: Unreadable::default(),
            high_water: AtomicU64::new(0),
        };
        // Create the tables up front so readers never meet a missing table. A file with no
        // schema mark but with state was written by schema 1 and waits for adopt_registries.
        let tx = store.db.begin_write().map_err(io)?;
        let (newer, high_water) = {
            let repos = tx.open_table(REPOS).map_err(io)?;
            let sets = tx.open_table(WATCH_SETS).map_err(io)?;
            tx.open_table(REGISTRIES).map_err(io)?;
            tx.open_table(OUTBOX).map_err(io)?;
            let mut meta = tx.open_table(META).map_err(io)?;
            let fresh = repos.is_empty().map_err(io)? && sets.is_empty().map_err(io)?;
            let schema = meta.get("schema").map_err(io)?.map(|v| v.value());
            let newer = match schema {
                // Written by a newer release: not a byte of it is touched.
                Some(found) if found > SCHEMA => Some(found),
                Some(found) if found < SCHEMA => {
                    // Schema 2 is schema 3 without the mark (see the module docs).
                    meta.insert("schema", SCHEMA).map_err(io)?;
                    tracing::info!(from = found, "state file migrated to schema {SCHEMA}");
                    None
                }
                None if fresh => {
                    meta.insert("schema", SCHEMA).map_err(io)?;
                    None
                }
                _ => None,
            };
            let marked = meta.get(HIGH_WATER).map_err(io)?.map(|v| v.value());
            let high_water = match marked {
                Some(high_water) => high_water,
                // Written before the mark (schema 2): the highest revision its records carry.
                None if newer.is_none() && schema.is_some() => {
                    let high_water = highest_revision(&repos)?;
                    meta.insert(HIGH_WATER, high_water).map_err(io)?;
                    high_water
                }
                // New, or schema 1 (no revisions yet; its migration sets the mark).
                None => 0,
            };
            (newer, high_water)
        };
        if let Some(found) = newer {
            tx.abort().map_err(io)?;
            return Err(newer_schema(&path, found));
        }
        tx.commit().map_err(io)?;
        store.high_water.store(high_water, Ordering::SeqCst);
        Ok(store)
    }

    /// Makes the store belong to the configured registries, given as (identity, name): migrates a
    /// schema-1 file (keyed by name) to identities, and forgets every registry no longer
    /// configured, with one log line each.
    pub fn adopt_registries(&self, registries: &[(String, String)]) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(io)?;
        let mut migrated = None;
        {
            let mut meta = tx.open_table(META).map_err(io)?;
            let mut repos = tx.open_table(REPOS).map_err(io)?;
            let mut sets = tx.open_table(WATCH_SETS).map_err(io)?;
            let mut names = tx.open_table(REGISTRIES).map_err(io)?;
            if meta.get("schema").map_err(io)?.is_none() {
                let high_water = self.high_water.load(Ordering::SeqCst);
                let revision = super::fresh_revision_above(high_water);
                migrate_v1(&mut repos, &mut sets, registries, revision)?;
                meta.insert("schema", SCHEMA).map_err(io)?;
                meta.insert(HIGH_WATER, revision.max(high_water))
                    .map_err(io)?;
                migrated = Some(revision);
            }
            let configured: HashMap<&str, &str> = registries
                .iter()
                .map(|(id, name)| (id.as_str(), name.as_str()))
                .collect();
            let mut gone = Vec::new();
            for entry in names.iter().map_err(io)? {
                let (id, name) = entry.map_err(io)?;
                if !configured.contains_key(id.value()) {
                    gone.push((id.value().to_owned(), name.value().to_owned()));
                }
            }
            for (id, name) in gone {
                let (from, to) = registry_range(&id);
                let dropped = repos
                    .extract_from_if(from.as_str()..to.as_str(), |_, _| true)
                    .map_err(io)?
                    .count();
                sets.remove(id.as_str()).map_err(io)?;
                names.remove(id.as_str()).map_err(io)?;
                tracing::info!(registry = %name, identity = %id, repositories = dropped, "forgetting the state of a registry no longer configured");
            }
            for (id, name) in &configured {
                names.insert(*id, *name).map_err(io)?;
            }
        }
        tx.commit().map_err(io)?;
        if let Some(revision) = migrated {
            self.high_water.fetch_max(revision, Ordering::SeqCst);
        }
        Ok(())
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

fn newer_schema(path: &Path, found: u64) -> StoreError {
    StoreError::NewerSchema {
        path: path.to_owned(),
        found,
        known: SCHEMA,
    }
}

/// The highest revision the readable records of `repos` carry (0 for none).
fn highest_revision(
    repos: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<u64, StoreError> {
    let mut highest = 0;
    for entry in repos.iter().map_err(io)? {
        let (_, value) = entry.map_err(io)?;
        if let Ok(state) = decode_state(value.value()) {
            highest = highest.max(state.revision());
        }
    }
    Ok(highest)
}

/// Re-keys a schema-1 file from registry names to identities, giving every record `revision`
/// (schema 1 kept none). Records of names no longer configured are dropped, with one log line
/// per name; snapshots keep their tags, so the next scan diffs against them as before.
fn migrate_v1(
    repos: &mut redb::Table<&str, &[u8]>,
    sets: &mut redb::Table<&str, &[u8]>,
    registries: &[(String, String)],
    revision: u64,
) -> Result<(), StoreError> {
    let identity_of: HashMap<&str, &str> = registries
        .iter()
        .map(|(id, name)| (name.as_str(), id.as_str()))
        .collect();
    let old: Vec<(String, Vec<u8>)> = repos
        .extract_if(|_, _| true)
        .map_err(io)?
        .map(|entry| entry.map(|(k, v)| (k.value().to_owned(), v.value().to_vec())))
        .collect::<Result<_, _>>()
        .map_err(io)?;
    let mut moved = 0usize;
    let mut dropped: BTreeMap<String, usize> = BTreeMap::new();
    for (key, value) in old {
        let (name, repository) = key
            .split_once('\0')
            .ok_or_else(|| StoreError::Io("schema-1 key without a registry".into()))?;
        match identity_of.get(name) {
            Some(id) => {
                let state = decode_v1(&value, revision).unwrap_or_else(|e| {
                    crate::metrics::get().store_records_unreadable.inc();
                    tracing::error!(registry = %name, repository = %repository, error = %e, "unreadable schema-1 state record; taking a new baseline of this repository");
                    RepoState::Pending {
                        emit: false,
                        revision,
                    }
                });
                let state = encode_state(&state);
                repos
                    .insert(repo_key(id, repository).as_str(), state.as_slice())
                    .map_err(io)?;
                moved += 1;
            }
            None => *dropped.entry(name.to_owned()).or_default() += 1,
        }
    }
    let old_sets: Vec<(String, Vec<u8>)> = sets
        .extract_if(|_, _| true)
        .map_err(io)?
        .map(|entry| entry.map(|(k, v)| (k.value().to_owned(), v.value().to_vec())))
        .collect::<Result<_, _>>()
        .map_err(io)?;
    for (name, patterns) in old_sets {
        if let Some(id) = identity_of.get(name.as_str()) {
            sets.insert(*id, patterns.as_slice()).map_err(io)?;
        }
    }
    for (name, repositories) in dropped {
        tracing::info!(registry = %name, repositories, "forgetting the state of a registry no longer configured");
    }
    tracing::info!(
        repositories = moved,
        "state file migrated to schema {SCHEMA} (keyed by registry identity)"
    );
    Ok(())
}

/// Writes a repository's state, registering its registry when the registry table lacks it: a
/// loop still finishing its scan after a reload forgot its registry leaves state that the next
/// start or reload then forgets. Raises [`HIGH_WATER`] to the state's revision.
fn put_repo(
    tx: &redb::WriteTransaction,
    registry: &str,
    repository: &str,
    state: &RepoState,
) -> Result<(), StoreError> {
    let mut repos = tx.open_table(REPOS).map_err(io)?;
    repos
        .insert(
            repo_key(registry, repository).as_str(),
            encode_state(state).as_slice(),
        )
        .map_err(io)?;
    let mut meta = tx.open_table(META).map_err(io)?;
    let marked = meta.get(HIGH_WATER).map_err(io)?.map(|v| v.value());
    if marked.is_none_or(|m| m < state.revision()) {
        meta.insert(HIGH_WATER, state.revision()).map_err(io)?;
    }
    let mut names = tx.open_table(REGISTRIES).map_err(io)?;
    if names.get(registry).map_err(io)?.is_none() {
        names.insert(registry, registry).map_err(io)?;
    }
    Ok(())
}

/// A repository's state as stored within write transaction `tx`; an unreadable record counts as
/// none (no known snapshot to diff against).
fn stored_state(
    tx: &redb::WriteTransaction,
    registry: &str,
    repository: &str,
) -> Result<Option<RepoState>, StoreError> {
    let repos = tx.open_table(REPOS).map_err(io)?;
    let value = repos
        .get(repo_key(registry, repository).as_str())
        .map_err(io)?;
    Ok(value.and_then(|v| decode_state(v.value()).ok()))
}

/// Tightens a state directory others can read to 0700, or says why it cannot.
fn private_dir(dir: &Path) {
    let Ok(meta) = std::fs::metadata(dir) else {
        return;
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 == 0 {
        return;
    }
    match std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)) {
        Ok(()) => {
            tracing::warn!(dir = %dir.display(), was = format!("{mode:o}"), "state_dir was readable by others; tightened to 0700")
        }
        Err(e) => {
            tracing::warn!(dir = %dir.display(), mode = format!("{mode:o}"), error = %e, "state_dir is readable by others and cannot be tightened; make it 0700")
        }
    }
}

/// `registry`/`repository`'s state. A record that cannot be decoded reads as a baseline decided
/// now: what the repository holds is recorded, not reported, and the others are unaffected.
fn read_repo_state(
    db: &impl ReadableDatabase,
    unreadable: &Unreadable,
    high_water: u64,
    registry: &str,
    repository: &str,
) -> Result<Option<RepoState>, StoreError> {
    let tx = db.begin_read().map_err(io)?;
    let table = match tx.open_table(REPOS) {
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        other => other.map_err(io)?,
    };
    let Some(value) = table
        .get(repo_key(registry, repository).as_str())
        .map_err(io)?
    else {
        return Ok(None);
    };
    match decode_state(value.value()) {
        Ok(state) => Ok(Some(state)),
        Err(e) => {
            unreadable.report(registry, repository, &e);
            Ok(Some(RepoState::Pending {
                emit: false,
                revision: super::fresh_revision_above(high_water),
            }))
        }
    }
}

fn read_watch_set(
    db: &impl ReadableDatabase,
    registry: &str,
) -> Result<Option<Vec<String>>, StoreError> {
    let tx = db.begin_read().map_err(io)?;
    let table = match tx.open_table(WATCH_SETS) {
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        other => other.map_err(io)?,
    };
    match table.get(registry).map_err(io)? {
        Some(v) => serde_json::from_slice(v.value()).map(Some).map_err(io),
        None => Ok(None),
    }
}

/// The store opened read-only, for `once --dry-run`: it reads what a scan diffs against and
/// writes nothing, not even a migration.
pub struct ReadOnlyStore {
    db: redb::ReadOnlyDatabase,
    unreadable: Unreadable,
    /// [`HIGH_WATER`] as found at open.
    high_water: u64,
}

impl ReadOnlyStore {
    /// Opens the existing store in `dir` for reading. A schema-1 file is refused: it can only be
    /// read once migrated, which writes.
    pub fn open(dir: &Path) -> Result<ReadOnlyStore, StoreError> {
        let path = dir.join(FILE_NAME);
        let db = redb::ReadOnlyDatabase::open(&path).map_err(|e| StoreError::Open {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let tx = db.begin_read().map_err(io)?;
        let (schema, marked) = match tx.open_table(META) {
            Ok(meta) => (
                meta.get("schema").map_err(io)?.map(|v| v.value()),
                meta.get(HIGH_WATER).map_err(io)?.map(|v| v.value()),
            ),
            Err(_) => (None, None),
        };
        let (has_state, high_water) = match tx.open_table(REPOS) {
            Ok(repos) => (
                !repos.is_empty().map_err(io)?,
                match marked {
                    Some(high_water) => high_water,
                    None => highest_revision(&repos)?,
                },
            ),
            Err(_) => (false, 0),
        };
        if let Some(found) = schema.filter(|s| *s > SCHEMA) {
            return Err(newer_schema(&path, found));
        }
        if schema.is_none() && has_state {
            return Err(StoreError::Open {
                path,
                reason: "written by an older regwatch; run `regwatch once` (or start the daemon) \
                         once to migrate it, then dry-run again"
                    .into(),
            });
        }
        drop(tx);
        Ok(ReadOnlyStore {
            db,
            unreadable: Unreadable::default(),
            high_water,
        })
    }
}

impl StateStore for ReadOnlyStore {
    fn repo_state(
        &self,
        registry: &str,
        repository: &str,
    ) -> Result<Option<RepoState>, StoreError> {
        read_repo_state(
            &self.db,
            &self.unreadable,
            self.high_water,
            registry,
            repository,
        )
    }

    fn watch_set(&self, registry: &str) -> Result<Option<Vec<String>>, StoreError> {
        read_watch_set(&self.db, registry)
    }

    fn set_watch_set(&self, _: &str, _: &[String], _: u64) -> Result<(), StoreError> {
        Err(read_only())
    }

    fn record_pending(&self, _: &str, _: &str, _: bool, _: u64) -> Result<(), StoreError> {
        Err(read_only())
    }

    fn commit_scan(
        &self,
        _: &str,
        _: &str,
        _: Option<u64>,
        _: &Snapshot,
        _: &[Event],
    ) -> Result<(), StoreError> {
        Err(read_only())
    }

    fn repositories(&self, _: &str) -> Result<Vec<String>, StoreError> {
        Err(read_only())
    }

    fn forget_repositories(&self, _: &str, _: &[String]) -> Result<(), StoreError> {
        Err(read_only())
    }

    fn fresh_revision(&self) -> u64 {
        super::fresh_revision_above(self.high_water)
    }
}

fn read_only() -> StoreError {
    StoreError::Io("the store is open read-only (dry run)".into())
}

impl StateStore for Store {
    fn repo_state(
        &self,
        registry: &str,
        repository: &str,
    ) -> Result<Option<RepoState>, StoreError> {
        read_repo_state(
            &self.db,
            &self.unreadable,
            self.high_water.load(Ordering::SeqCst),
            registry,
            repository,
        )
    }

    fn watch_set(&self, registry: &str) -> Result<Option<Vec<String>>, StoreError> {
        read_watch_set(&self.db, registry)
    }

    fn set_watch_set(&self, registry: &str, patterns: &[String], _: u64) -> Result<(), StoreError> {
        // Called after every complete listing: unchanged, it costs a read, not a commit.
        if read_watch_set(&self.db, registry)?.as_deref() == Some(patterns) {
            return Ok(());
        }
        let tx = self.db.begin_write().map_err(io)?;
        {
            let mut sets = tx.open_table(WATCH_SETS).map_err(io)?;
            let encoded = serde_json::to_vec(patterns).expect("patterns serialize");
            sets.insert(registry, encoded.as_slice()).map_err(io)?;
        }
        tx.commit().map_err(io)
    }

    fn record_pending(
        &self,
        registry: &str,
        repository: &str,
        emit: bool,
        revision: u64,
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(io)?;
        if let Some(RepoState::Known(_)) = stored_state(&tx, registry, repository)? {
            // Another writer's first scan of it committed meanwhile: that decision stands.
            return Ok(());
        }
        put_repo(
            &tx,
            registry,
            repository,
            &RepoState::Pending { emit, revision },
        )?;
        tx.commit().map_err(io)?;
        self.high_water.fetch_max(revision, Ordering::SeqCst);
        Ok(())
    }

    fn commit_scan(
        &self,
        registry: &str,
        repository: &str,
        base: Option<u64>,
        snapshot: &Snapshot,
        events: &[Event],
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(io)?;
        // Checked inside the write transaction, which redb serialises: no other commit of the
        // repository can come between the check and the write.
        super::check_base(
            repository,
            base,
            stored_state(&tx, registry, repository)?.as_ref(),
        )?;
        put_repo(
            &tx,
            registry,
            repository,
            &RepoState::Known(snapshot.clone()),
        )?;
        {
            let mut outbox = tx.open_table(OUTBOX).map_err(io)?;
            let first = outbox.last().map_err(io)?.map_or(0, |(k, _)| k.value() + 1);
            for (seq, event) in (first..).zip(events) {
                let encoded = serde_json::to_vec(event).expect("event serializes");
                outbox.insert(seq, encoded.as_slice()).map_err(io)?;
            }
        }
        tx.commit().map_err(io)?;
        self.high_water
            .fetch_max(snapshot.revision, Ordering::SeqCst);
        Ok(())
    }

    fn fresh_revision(&self) -> u64 {
        super::fresh_revision_above(self.high_water.load(Ordering::SeqCst))
    }

    fn repositories(&self, registry: &str) -> Result<Vec<String>, StoreError> {
        let tx = self.db.begin_read().map_err(io)?;
        let table = tx.open_table(REPOS).map_err(io)?;
        let (from, to) = registry_range(registry);
        let mut out = Vec::new();
        for entry in table.range(from.as_str()..to.as_str()).map_err(io)? {
            let (k, _) = entry.map_err(io)?;
            out.push(k.value()[from.len()..].to_owned());
        }
        Ok(out)
    }

    fn forget_repositories(
        &self,
        registry: &str,
        repositories: &[String],
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(io)?;
        {
            let mut repos = tx.open_table(REPOS).map_err(io)?;
            for repository in repositories {
                repos
                    .remove(repo_key(registry, repository).as_str())
                    .map_err(io)?;
            }
        }
        tx.commit().map_err(io)
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
            store.set_watch_set("r", &["team/*".into()], 0).unwrap();
            store.record_pending("r", "a", true, 7).unwrap();
            assert_eq!(
                store.repo_state("r", "a").unwrap(),
                Some(RepoState::Pending {
                    emit: true,
                    revision: 7
                })
            );
            let mut snap = Snapshot {
                revision: 8,
                ..Snapshot::default()
            };
            snap.tags.insert("v1".into(), Some("sha256:1".into()));
            snap.tags.insert("v0".into(), None);
            snap.maturing.insert(
                "v1".into(),
                crate::watch::diff::Maturing {
                    digest: "sha256:1".into(),
                    deadline_ms: 1_700_000_000_000,
                },
            );
            snap.platforms
                .insert("sha256:1".into(), vec!["linux/amd64".into()]);
            store
                .commit_scan("r", "a", None, &snap, &[event(1), event(2)])
                .unwrap();
        }
        let store = Store::open(&state_dir).unwrap();
        let Some(RepoState::Known(snap)) = store.repo_state("r", "a").unwrap() else {
            panic!()
        };
        assert_eq!((snap.tags.len(), snap.revision), (2, 8));
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
        store
            .commit_scan("r", "a", Some(8), &snap, &[event(3)])
            .unwrap();
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
    fn an_existing_state_dir_readable_by_others_is_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("s");
        std::fs::create_dir(&state_dir).unwrap();
        std::fs::set_permissions(&state_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        Store::open(&state_dir).unwrap();
        let mode = std::fs::metadata(&state_dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn a_commit_after_its_registry_was_forgotten_is_forgotten_next_time() {
        // A reload forgets a registry whose loop still finishes its current scan; that scan's
        // commit must not leave state that no later start or reload ever removes.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = [("id-a".to_string(), "a".to_string())];
        store.adopt_registries(&a).unwrap();
        store
            .commit_scan("id-old", "x/late", None, &Snapshot::default(), &[])
            .unwrap();
        store.record_pending("id-old", "x/later", true, 1).unwrap();
        store.adopt_registries(&a).unwrap();
        assert_eq!(store.repositories("id-old").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn registries_no_longer_configured_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let both = [
            ("id-a".to_string(), "a".to_string()),
            ("id-b".into(), "b".into()),
        ];
        store.adopt_registries(&both).unwrap();
        for id in ["id-a", "id-b"] {
            store.set_watch_set(id, &["x/*".into()], 0).unwrap();
            store
                .commit_scan(id, "x/one", None, &Snapshot::default(), &[])
                .unwrap();
            store.record_pending(id, "x/two", false, 1).unwrap();
        }
        store.adopt_registries(&both[..1]).unwrap();
        assert_eq!(store.repositories("id-a").unwrap(), vec!["x/one", "x/two"]);
        assert_eq!(store.repositories("id-b").unwrap(), Vec::<String>::new());
        assert_eq!(store.watch_set("id-b").unwrap(), None);
        store
            .forget_repositories("id-a", &["x/two".into()])
            .unwrap();
        assert_eq!(store.repositories("id-a").unwrap(), vec!["x/one"]);
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

    /// `regwatch_store_records_unreadable_total` as exported (0 while absent).
    fn unreadable_total() -> u64 {
        crate::metrics::get()
            .render()
            .lines()
            .find_map(|l| l.strip_prefix("regwatch_store_records_unreadable_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// A repository record that cannot be decoded (unknown kind, bad JSON) reads as a baseline
    /// of that repository, counted, and a commit made from it replaces it; its neighbours read
    /// as before.
    #[test]
    fn an_unreadable_record_reads_as_a_baseline_and_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let good = Snapshot {
            revision: 5,
            ..Snapshot::default()
        };
        store.commit_scan("r", "good", None, &good, &[]).unwrap();
        let mut bad_json = vec![KNOWN];
        bad_json.extend_from_slice(&9u64.to_be_bytes());
        bad_json.extend_from_slice(b"{\"v1\":");
        let tx = store.db.begin_write().unwrap();
        {
            let mut repos = tx.open_table(REPOS).unwrap();
            repos
                .insert(repo_key("r", "kind").as_str(), b"Zz".as_slice())
                .unwrap();
            repos
                .insert(repo_key("r", "json").as_str(), bad_json.as_slice())
                .unwrap();
        }
        tx.commit().unwrap();
        let before = unreadable_total();
        for repo in ["kind", "json"] {
            let state = store.repo_state("r", repo);
            assert!(
                matches!(state, Ok(Some(RepoState::Pending { emit: false, .. }))),
                "{repo}: {state:?}"
            );
        }
        assert!(unreadable_total() >= before + 2, "counted");
        assert_eq!(
            store.repo_state("r", "good").unwrap(),
            Some(RepoState::Known(good.clone()))
        );
        // The baseline's commit (it read no known snapshot) replaces the record.
        store.commit_scan("r", "kind", None, &good, &[]).unwrap();
        assert_eq!(
            store.repo_state("r", "kind").unwrap(),
            Some(RepoState::Known(good))
        );
    }

    /// A schema-2 file has no high-water mark: it is taken from its records at open, so a
    /// revision drawn while the clock was ahead still bounds the ones drawn after.
    #[test]
    fn a_schema_2_file_takes_its_high_water_mark_from_its_records() {
        let dir = tempfile::tempdir().unwrap();
        let ahead = crate::store::fresh_revision() + 86_400_000_000;
        {
            let db = Database::create(dir.path().join(FILE_NAME)).unwrap();
            let tx = db.begin_write().unwrap();
            {
                tx.open_table(META).unwrap().insert("schema", 2).unwrap();
                let mut repos = tx.open_table(REPOS).unwrap();
                let known = encode_state(&RepoState::Known(Snapshot {
                    revision: ahead,
                    ..Snapshot::default()
                }));
                repos
                    .insert(repo_key("r", "a").as_str(), known.as_slice())
                    .unwrap();
                let pending = encode_state(&RepoState::Pending {
                    emit: true,
                    revision: 3,
                });
                repos
                    .insert(repo_key("r", "b").as_str(), pending.as_slice())
                    .unwrap();
            }
            tx.commit().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert!(store.fresh_revision() > ahead);
        drop(store);
        let read_only = ReadOnlyStore::open(dir.path()).unwrap();
        assert!(read_only.fresh_revision() > ahead, "the mark was written");
    }

    #[test]
    fn snapshots_written_before_deadlines_and_platforms_still_read() {
        let mut old = vec![KNOWN];
        old.extend_from_slice(&5u64.to_be_bytes());
        old.extend_from_slice(br#"{"v0":null,"v1":"sha256:1"}"#);
        let RepoState::Known(snap) = decode_state(&old).unwrap() else {
            panic!("a known repository");
        };
        assert_eq!(snap.revision, 5);
        assert_eq!(snap.tags.len(), 2);
        assert!(snap.maturing.is_empty() && snap.platforms.is_empty());
        // A snapshot of tags alone is still written the old way, so a rolled-back binary reads
        // it; one with more reads back whole.
        assert_eq!(encode_state(&RepoState::Known(snap.clone())), old);
        let mut more = snap.clone();
        more.held_back.insert("v0".into());
        assert_eq!(encode_state(&RepoState::Known(more.clone()))[0], SNAPSHOT);
        assert_eq!(
            decode_state(&encode_state(&RepoState::Known(more.clone()))).unwrap(),
            RepoState::Known(more)
        );
    }
}
