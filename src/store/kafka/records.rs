//! How one repository's state is laid out in the state topic: a record per tag and per looked-up
//! digest, and a header written last. Pure functions: what to write for a commit, and what a
//! restore makes of the records it read.
//!
//! - `["tag", identity, repository, tag]` and `["digest", identity, repository, digest]`: an
//!   *item* (a tag's digest, maturity deadline and held-back flag; a digest's platforms) as an
//!   [`Entry`]: the value it has from revision `rev` on (`now`, `null` once removed) and the value
//!   it had in the revision the write diffed against (`before`).
//! - `["repo", identity, repository]`: the *header*, written after the items: the committed
//!   revision, the *life* the items belong to, and the count and checksum of the items.
//!
//! A restore takes each item of the header's life at `now` if it was written at or before the
//! header's revision and at `before` if it is ahead (a write whose header never landed), so it
//! rebuilds exactly the committed revision, never a mix; the count and checksum then prove it.
//! Items ahead, removal markers and items of another life are *stale*: the next commit of the
//! repository rewrites or tombstones them. A write so costs O(changed items), and no record
//! grows with the repository.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::watch::diff::{Maturing, Snapshot};

/// The largest state record regwatch writes (key and value); Kafka's default limit is 1 MiB.
pub(super) const MAX_RECORD: usize = 64 * 1024;
/// The first byte of a header's value (a pending repository's and an older release's whole
/// snapshot use the store's own encoding, whose first bytes differ).
const HEADER: u8 = b'H';

/// What an item record is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum ItemKey {
    /// A tag: its digest, maturity deadline and held-back flag.
    Tag(String),
    /// A digest: its platforms.
    Digest(String),
}

impl ItemKey {
    /// The record key of this item of `identity`/`repository`.
    pub(super) fn record_key(&self, identity: &str, repository: &str) -> String {
        let (kind, name) = self.parts();
        serde_json::to_string(&(kind, identity, repository, name)).expect("strings serialize")
    }

    /// The kind and name its record key carries.
    fn parts(&self) -> (&'static str, &str) {
        match self {
            ItemKey::Tag(t) => ("tag", t),
            ItemKey::Digest(d) => ("digest", d),
        }
    }

    /// The item a record key's kind and name name.
    pub(super) fn from_parts(kind: &str, name: &str) -> Option<ItemKey> {
        match kind {
            "tag" => Some(ItemKey::Tag(name.to_owned())),
            "digest" => Some(ItemKey::Digest(name.to_owned())),
            _ => None,
        }
    }
}

/// A tag's slice of a snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct TagItem {
    /// In the listing (`Snapshot::tags`), with `digest`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    listed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    maturing: Option<Maturing>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    held_back: bool,
}

/// An item record's value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Entry {
    /// The life (see [`Header::life`]) it belongs to.
    life: u64,
    /// The revision whose write produced it.
    rev: u64,
    /// Its value from `rev` on; `None`: removed at `rev` (a marker, tombstoned later).
    now: Option<Value>,
    /// Its value in the revision that write diffed against.
    before: Option<Value>,
}

/// A repository's header record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Header {
    /// The committed revision.
    revision: u64,
    /// The revision that first wrote this repository's items: items of another life are left
    /// over from before it was forgotten (or from an older layout), never part of its state.
    life: u64,
    /// How many items the revision has.
    items: u64,
    /// The XOR of the items' hashes (see [`checksum`]), in hex.
    sum: String,
    /// `Snapshot::version_rules`.
    #[serde(default)]
    version_rules: u32,
}

/// What the writer of a repository knows of its records beyond its state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Layout {
    /// The life of its items, once it has a header (`None`: pending, an older release's whole
    /// snapshot, or never written).
    pub(super) life: Option<u64>,
    /// Items whose record may not hold their committed value (ahead of the header, removal
    /// markers, other lives): the next commit rewrites or tombstones them.
    pub(super) stale: BTreeSet<ItemKey>,
    /// The state held was adopted after its events went out but its write failed: it is written
    /// whole, on its own, before anything new is published (see `ClusterStore::put`).
    pub(super) unwritten: bool,
}

/// One state record: its key and value (`None` is a tombstone).
pub(super) type Record = (String, Option<Vec<u8>>);

/// The items of `snapshot`.
pub(super) fn items(snapshot: &Snapshot) -> BTreeMap<ItemKey, Value> {
    let mut tags: BTreeMap<&str, TagItem> = BTreeMap::new();
    for (tag, digest) in &snapshot.tags {
        let item = tags.entry(tag).or_default();
        item.listed = true;
        item.digest.clone_from(digest);
    }
    for (tag, maturing) in &snapshot.maturing {
        tags.entry(tag).or_default().maturing = Some(maturing.clone());
    }
    for tag in &snapshot.held_back {
        tags.entry(tag).or_default().held_back = true;
    }
    let mut out: BTreeMap<ItemKey, Value> = tags
        .into_iter()
        .map(|(t, i)| {
            let v = serde_json::to_value(i).expect("items serialize");
            (ItemKey::Tag(t.to_owned()), v)
        })
        .collect();
    for (digest, platforms) in &snapshot.platforms {
        out.insert(
            ItemKey::Digest(digest.clone()),
            serde_json::to_value(platforms).expect("items serialize"),
        );
    }
    out
}

/// The snapshot `items` make at `revision`.
fn snapshot_of(
    items: &BTreeMap<ItemKey, Value>,
    revision: u64,
    version_rules: u32,
) -> Result<Snapshot, String> {
    let mut s = Snapshot {
        revision,
        version_rules,
        ..Snapshot::default()
    };
    for (key, value) in items {
        let bad = |e: serde_json::Error| format!("item {key:?}: {e}");
        match key {
            ItemKey::Tag(tag) => {
                let item: TagItem = serde_json::from_value(value.clone()).map_err(bad)?;
                if item.listed {
                    s.tags.insert(tag.clone(), item.digest);
                }
                if let Some(m) = item.maturing {
                    s.maturing.insert(tag.clone(), m);
                }
                if item.held_back {
                    s.held_back.insert(tag.clone());
                }
            }
            ItemKey::Digest(digest) => {
                let platforms = serde_json::from_value(value.clone()).map_err(bad)?;
                s.platforms.insert(digest.clone(), platforms);
            }
        }
    }
    Ok(s)
}

/// The order-free checksum of `items`: the XOR of FNV-1a over each one's key and value.
fn checksum(items: &BTreeMap<ItemKey, Value>) -> u64 {
    items.iter().fold(0, |sum, (key, value)| {
        let (kind, name) = key.parts();
        let text = format!("{kind}\0{name}\0{value}");
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for b in text.bytes() {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        sum ^ hash
    })
}

fn encode_header(header: &Header) -> Vec<u8> {
    let mut out = vec![HEADER];
    serde_json::to_writer(&mut out, header).expect("headers serialize");
    out
}

/// Whether a `["repo", …]` value is a header (else the store's own encoding of a whole state).
pub(super) fn is_header(value: &[u8]) -> bool {
    value.first() == Some(&HEADER)
}

/// A commit's records, and the layout the repository has once they are all written.
pub(super) struct Commit {
    /// Items first, the header last.
    pub(super) records: Vec<Record>,
    /// The layout after a successful write.
    pub(super) written: Layout,
    /// The items this write touched: stale if it fails (some of them may have landed).
    pub(super) touched: BTreeSet<ItemKey>,
}

/// The records that take `identity`/`repository` from `base` (what is committed, with its
/// `layout`) to `next`: the items that changed or are stale, then the header.
pub(super) fn commit(
    identity: &str,
    repository: &str,
    base: Option<&Snapshot>,
    layout: &Layout,
    next: &Snapshot,
) -> Commit {
    write(identity, repository, base, layout, next, true)
}

/// [`commit`]; with `keep_before` false the items carry no `before` value (a rewrite of the
/// committed revision: a restore never reads it, since no item is ahead of that header, and
/// without it no record is bigger than when the revision was first written).
fn write(
    identity: &str,
    repository: &str,
    base: Option<&Snapshot>,
    layout: &Layout,
    next: &Snapshot,
    keep_before: bool,
) -> Commit {
    let new = items(next);
    // A repository without a life has no items of its own yet: all of them are written, under
    // a new life (its revision, above any life it had before it was forgotten).
    let (life, old) = match layout.life {
        Some(life) => (life, base.map(items).unwrap_or_default()),
        None => (next.revision, BTreeMap::new()),
    };
    let mut touched: BTreeSet<ItemKey> = layout.stale.clone();
    touched.extend(
        new.iter()
            .filter(|(k, v)| old.get(*k) != Some(*v))
            .map(|(k, _)| k.clone()),
    );
    touched.extend(old.keys().filter(|k| !new.contains_key(*k)).cloned());
    let mut records = Vec::with_capacity(touched.len() + 1);
    let mut markers = BTreeSet::new();
    for key in &touched {
        let (now, before) = (new.get(key), old.get(key));
        let value = match (now, before) {
            (None, None) => None,
            _ => {
                if now.is_none() {
                    markers.insert(key.clone());
                }
                let entry = Entry {
                    life,
                    rev: next.revision,
                    now: now.cloned(),
                    before: before.filter(|_| keep_before).cloned(),
                };
                Some(serde_json::to_vec(&entry).expect("entries serialize"))
            }
        };
        records.push((key.record_key(identity, repository), value));
    }
    let header = Header {
        revision: next.revision,
        life,
        items: new.len() as u64,
        sum: format!("{:016x}", checksum(&new)),
        version_rules: next.version_rules,
    };
    records.push((
        super::repo_key(identity, repository),
        Some(encode_header(&header)),
    ));
    Commit {
        records,
        written: Layout {
            life: Some(life),
            stale: markers,
            unwritten: false,
        },
        touched,
    }
}

/// The value of item `key` in `snapshot`, if it has one: [`items`] for one key.
fn item_value(snapshot: &Snapshot, key: &ItemKey) -> Option<Value> {
    let value = match key {
        ItemKey::Tag(t) => {
            let item = TagItem {
                listed: snapshot.tags.contains_key(t),
                digest: snapshot.tags.get(t).cloned().flatten(),
                maturing: snapshot.maturing.get(t).cloned(),
                held_back: snapshot.held_back.contains(t),
            };
            if item == TagItem::default() {
                return None;
            }
            serde_json::to_value(item)
        }
        ItemKey::Digest(d) => serde_json::to_value(snapshot.platforms.get(d)?),
    };
    Some(value.expect("items serialize"))
}

/// Whether `value`, found under key `item` (the header when `None`), reads as what `state` with
/// `layout` holds: a restore would read the same from it (a record of this replica's own, read
/// back, or a copy of it).
pub(super) fn agrees(
    state: Option<&super::RepoState>,
    layout: &Layout,
    item: Option<&ItemKey>,
    value: Option<&[u8]>,
) -> bool {
    let known = match (state, layout.life) {
        (Some(super::RepoState::Known(s)), Some(life)) => Some((s, life)),
        _ => None,
    };
    match (item, value) {
        (None, None) => state.is_none(),
        (None, Some(v)) if is_header(v) => {
            let Ok(found) = serde_json::from_slice::<Header>(&v[1..]) else {
                return false;
            };
            known.is_some_and(|(s, life)| {
                let all = items(s);
                found
                    == Header {
                        revision: s.revision,
                        life,
                        items: all.len() as u64,
                        sum: format!("{:016x}", checksum(&all)),
                        version_rules: s.version_rules,
                    }
            })
        }
        (None, Some(v)) => {
            known.is_none()
                && state.is_some_and(|s| super::decode_state(v).ok().as_ref() == Some(s))
        }
        (Some(key), value) => {
            let current = known.and_then(|(s, _)| item_value(s, key));
            let found = value.and_then(|v| serde_json::from_slice::<Entry>(v).ok());
            match (found, known) {
                (None, _) => current.is_none(),
                (Some(e), Some((s, life))) => {
                    e.life == life && e.rev <= s.revision && e.now == current
                }
                (Some(_), None) => false,
            }
        }
    }
}

/// The records that write `identity`/`repository`'s `state` again over what other writers put
/// under `foreign` (item keys, and the header), items first and the header last. With no state
/// held, the foreign header and items are tombstoned.
pub(super) fn rewrite(
    identity: &str,
    repository: &str,
    state: Option<&super::RepoState>,
    layout: &Layout,
    foreign: &BTreeSet<ItemKey>,
) -> (Vec<Record>, Layout) {
    let mut with_foreign = layout.clone();
    with_foreign.stale.extend(foreign.iter().cloned());
    match state {
        Some(super::RepoState::Known(s)) => {
            let c = write(identity, repository, Some(s), &with_foreign, s, false);
            (c.records, c.written)
        }
        Some(pending) => {
            let header = (
                super::repo_key(identity, repository),
                Some(super::encode_state(pending)),
            );
            (vec![header], with_foreign)
        }
        // None held: what another writer put there is not this replica's state either.
        None => (
            forget(identity, repository, None, &with_foreign),
            Layout::default(),
        ),
    }
}

/// The tombstones that forget `identity`/`repository`: the header first (so that what is left
/// if the write stops halfway is items without a header, which a restore ignores), then every
/// item it may have.
pub(super) fn forget(
    identity: &str,
    repository: &str,
    held: Option<&Snapshot>,
    layout: &Layout,
) -> Vec<Record> {
    let mut keys: BTreeSet<ItemKey> = layout.stale.clone();
    if layout.life.is_some() {
        keys.extend(held.map(items).unwrap_or_default().into_keys());
    }
    std::iter::once((super::repo_key(identity, repository), None))
        .chain(
            keys.iter()
                .map(|k| (k.record_key(identity, repository), None)),
        )
        .collect()
}

/// What a restore read of one repository: its header's value and its items' (latest first
/// wins, as compaction keeps; `None` is a tombstone).
#[derive(Debug, Default)]
pub(super) struct Gathered {
    /// The `["repo", …]` record's value, if any was read.
    pub(super) header: Option<Option<Vec<u8>>>,
    /// The item records read.
    pub(super) items: BTreeMap<ItemKey, Option<Vec<u8>>>,
}

/// A restored repository: its state (`None`: none, only leftovers) and layout, and the revision
/// its state carries. Only that counts towards the high water (see
/// `StateStore::fresh_revision`): leftovers are rewritten before they could matter, and one with
/// a huge revision would pin every later revision at the ceiling.
pub(super) struct Restored {
    pub(super) state: Option<super::RepoState>,
    pub(super) layout: Layout,
    pub(super) high_water: u64,
    /// Set when the records did not add up to the header: what was found. The state is then
    /// the best reading of them, and the next commit rewrites every item.
    pub(super) damaged: Option<String>,
}

/// What `gathered` records make: the committed revision, never a mix of two. An error when they
/// do not add up (a header whose items are missing or damaged).
pub(super) fn assemble(gathered: Gathered) -> Result<Restored, String> {
    let mut stale = BTreeSet::new();
    let mut entries = BTreeMap::new();
    for (key, value) in gathered.items {
        let Some(value) = value else { continue };
        match serde_json::from_slice::<Entry>(&value) {
            Ok(entry) => {
                entries.insert(key, entry);
            }
            // Unreadable and not part of any header's count: a leftover to tombstone. If it was
            // part of the committed revision, the checksum below says so.
            Err(_) => {
                stale.insert(key);
            }
        }
    }
    let header = match gathered.header.flatten() {
        None => {
            // Items without a header: left over from a repository forgotten halfway.
            stale.extend(entries.into_keys());
            return Ok(Restored {
                state: None,
                layout: Layout {
                    life: None,
                    stale,
                    unwritten: false,
                },
                high_water: 0,
                damaged: None,
            });
        }
        Some(value) if !is_header(&value) => {
            // A pending repository, or an older release's whole snapshot: its items, if any,
            // are leftovers.
            let state = super::decode_state(&value).map_err(|e| e.to_string())?;
            stale.extend(entries.into_keys());
            return Ok(Restored {
                high_water: state.revision(),
                state: Some(state),
                layout: Layout {
                    life: None,
                    stale,
                    unwritten: false,
                },
                damaged: None,
            });
        }
        Some(value) => serde_json::from_slice::<Header>(&value[1..])
            .map_err(|e| format!("undecodable state header: {e}"))?,
    };
    let mut items = BTreeMap::new();
    let seen: BTreeSet<ItemKey> = entries.keys().cloned().collect();
    for (key, entry) in entries {
        if entry.life != header.life {
            stale.insert(key);
            continue;
        }
        let value = if entry.rev <= header.revision {
            if entry.now.is_none() {
                stale.insert(key.clone());
            }
            entry.now
        } else {
            stale.insert(key.clone());
            entry.before
        };
        if let Some(value) = value {
            items.insert(key, value);
        }
    }
    let sum = format!("{:016x}", checksum(&items));
    // Records that do not add up (an item lost in a write whose header landed, a late write of a
    // replica that no longer owned the partition) cannot be told apart from a repository's real
    // state. Refusing it would stop the replica at every restart; a fresh baseline would lose
    // what changed since. The best reading is kept, reported, and rewritten whole by the next
    // commit: at worst a change is published again, under a new id.
    let damaged = (items.len() as u64 != header.items || sum != header.sum).then(|| {
        stale.extend(seen);
        format!(
            "its records do not add up to revision {} ({} items with checksum {sum} found, the \
             header says {} with {})",
            header.revision,
            items.len(),
            header.items,
            header.sum
        )
    });
    let snapshot = snapshot_of(&items, header.revision, header.version_rules)?;
    Ok(Restored {
        state: Some(super::RepoState::Known(snapshot)),
        layout: Layout {
            life: Some(header.life),
            stale,
            unwritten: false,
        },
        high_water: header.revision,
        damaged,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RepoState;

    const ID: &str = "https://r.example";
    const REPO: &str = "team/app";

    fn snapshot(revision: u64, tags: &[(&str, &str)]) -> Snapshot {
        Snapshot {
            revision,
            tags: tags
                .iter()
                .map(|(t, d)| ((*t).to_owned(), Some((*d).to_owned())))
                .collect(),
            ..Snapshot::default()
        }
    }

    /// Replays `records` as a restore reads them (later records of a key win).
    fn gather(records: &[Record]) -> Gathered {
        let mut g = Gathered::default();
        for (key, value) in records {
            let parts: Vec<String> = serde_json::from_str(key).unwrap();
            match parts.as_slice() {
                [kind, _, _] if kind == "repo" => g.header = Some(value.clone()),
                [kind, _, _, name] => {
                    g.items
                        .insert(ItemKey::from_parts(kind, name).unwrap(), value.clone());
                }
                _ => panic!("unexpected key {key}"),
            }
        }
        g
    }

    fn restore(records: &[Record]) -> (Option<RepoState>, Layout) {
        let r = assemble(gather(records)).expect("records add up");
        (r.state, r.layout)
    }

    fn known(s: &Snapshot) -> Option<RepoState> {
        Some(RepoState::Known(s.clone()))
    }

    /// A write that stops after any of its records (at-least-once has no transaction) restores
    /// as the revision before it; once its header lands, as the new one. Never a mix.
    #[test]
    fn every_prefix_of_a_write_restores_one_revision_or_the_other() {
        let mut first = snapshot(
            7,
            &[("a", "sha256:1"), ("b", "sha256:2"), ("c", "sha256:3")],
        );
        first
            .platforms
            .insert("sha256:1".into(), vec!["linux/amd64".into()]);
        let c1 = commit(ID, REPO, None, &Layout::default(), &first);
        let mut second = snapshot(
            8,
            &[("a", "sha256:9"), ("c", "sha256:3"), ("d", "sha256:4")],
        );
        second.held_back.insert("d".into());
        second.platforms = first.platforms.clone();
        let c2 = commit(ID, REPO, Some(&first), &c1.written, &second);
        assert_eq!(c2.records.len(), 4, "a, b (removed), d and the header");
        for cut in 0..=c2.records.len() {
            let mut log = c1.records.clone();
            log.extend_from_slice(&c2.records[..cut]);
            let (state, layout) = restore(&log);
            if cut == c2.records.len() {
                assert_eq!(state, known(&second));
                assert_eq!(
                    layout.stale,
                    BTreeSet::from([ItemKey::Tag("b".into())]),
                    "the marker is tombstoned next time"
                );
            } else {
                assert_eq!(state, known(&first), "cut after {cut} records");
            }
        }
    }

    /// A checkpoint writes a repository's committed revision again, after a write that moved a
    /// tag whose digest has big platforms: every prefix of the rewrite, over the log it follows
    /// or alone after a checkpoint's offset once whole, restores that revision, and no record
    /// is bigger than the write that first carried it (a rewrite has no `before` to carry).
    #[test]
    fn a_rewrite_of_the_committed_revision_changes_nothing_a_restore_reads() {
        let mut first = snapshot(3, &[("a", "sha256:1"), ("b", "sha256:2")]);
        let wide: Vec<String> = (0..2000).map(|i| format!("linux/arch{i}")).collect();
        first.platforms.insert("sha256:1".into(), wide.clone());
        let c1 = commit(ID, REPO, None, &Layout::default(), &first);
        let mut second = snapshot(4, &[("a", "sha256:1"), ("b", "sha256:9")]);
        second.platforms = first.platforms.clone();
        let c2 = commit(ID, REPO, Some(&first), &c1.written, &second);
        let mut log = c1.records.clone();
        log.extend(c2.records.clone());
        let all: BTreeSet<ItemKey> = items(&second).into_keys().collect();
        let (again, layout) = rewrite(ID, REPO, known(&second).as_ref(), &c2.written, &all);
        assert_eq!(
            layout, c2.written,
            "the layout a rewrite leaves is the commit's"
        );
        let biggest = |r: &[Record]| {
            r.iter()
                .map(|(_, v)| v.as_ref().map_or(0, Vec::len))
                .max()
                .unwrap()
        };
        assert!(biggest(&again) <= biggest(&log), "a rewrite grew a record");
        for cut in 0..=again.len() {
            let mut with = log.clone();
            with.extend_from_slice(&again[..cut]);
            assert_eq!(restore(&with).0, known(&second), "cut after {cut} records");
        }
        assert_eq!(restore(&again).0, known(&second), "the rewrite alone");
    }

    /// A failed write's records may have landed: the next commit (a retry at the same revision,
    /// which need not change the same tags) rewrites them, so the new header never adopts a
    /// value only the failed write had.
    #[test]
    fn a_retry_after_a_partial_write_rewrites_what_the_failed_write_touched() {
        let first = snapshot(1, &[("a", "sha256:1"), ("b", "sha256:2")]);
        let c1 = commit(ID, REPO, None, &Layout::default(), &first);
        let failed = commit(
            ID,
            REPO,
            Some(&first),
            &c1.written,
            &snapshot(2, &[("a", "sha256:X"), ("b", "sha256:2")]),
        );
        // Only its first item landed; the retry sees `a` back at its old digest and `b` moved.
        let mut log = c1.records.clone();
        log.push(failed.records[0].clone());
        let layout = Layout {
            stale: &c1.written.stale | &failed.touched,
            ..c1.written.clone()
        };
        let retry_state = snapshot(2, &[("a", "sha256:1"), ("b", "sha256:7")]);
        let retry = commit(ID, REPO, Some(&first), &layout, &retry_state);
        log.extend(retry.records.clone());
        assert_eq!(restore(&log).0, known(&retry_state));
        // And a restore before the retry sees `a` ahead, marks it stale, and gets revision 1.
        let (state, layout) = restore(&log[..c1.records.len() + 1]);
        assert_eq!(state, known(&first));
        assert!(layout.stale.contains(&ItemKey::Tag("a".into())));
    }

    /// A change of one tag in a big repository writes that tag and the header, nothing else,
    /// and no record exceeds the limit whatever the repository's size.
    #[test]
    fn a_write_is_proportional_to_the_change_and_records_are_bounded() {
        let long = |i: usize| format!("{i:0>128}");
        let tags: Vec<(String, String)> = (0..100_000)
            .map(|i| (long(i), format!("sha256:{i:064x}")))
            .collect();
        let refs: Vec<(&str, &str)> = tags.iter().map(|(t, d)| (t.as_str(), d.as_str())).collect();
        let big = snapshot(1, &refs);
        let c1 = commit(ID, REPO, None, &Layout::default(), &big);
        assert_eq!(c1.records.len(), 100_001);
        let largest = c1
            .records
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
            .max()
            .unwrap();
        assert!(largest <= MAX_RECORD, "{largest} bytes");
        let mut next = big.clone();
        next.revision = 2;
        next.tags.insert(long(5), Some("sha256:moved".into()));
        let c2 = commit(ID, REPO, Some(&big), &c1.written, &next);
        let bytes: usize = c2
            .records
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
            .sum();
        assert_eq!(c2.records.len(), 2);
        assert!(bytes < 1024, "{bytes} bytes for one tag");
        let mut log = c1.records;
        log.extend(c2.records);
        assert_eq!(restore(&log).0, known(&next));
    }

    /// A repository forgotten (its header tombstoned first) and watched again later takes a new
    /// life: what is left of the old one never comes back as part of it.
    #[test]
    fn leftovers_of_a_forgotten_life_are_not_part_of_the_next() {
        let old = snapshot(3, &[("a", "sha256:1"), ("b", "sha256:2")]);
        let c1 = commit(ID, REPO, None, &Layout::default(), &old);
        let forgotten = forget(ID, REPO, Some(&old), &c1.written);
        assert_eq!(forgotten[0].0, crate::store::kafka::repo_key(ID, REPO));
        // Only the header's tombstone landed.
        let mut log = c1.records.clone();
        log.push(forgotten[0].clone());
        let (state, layout) = restore(&log);
        assert_eq!(state, None);
        assert_eq!(layout.stale.len(), 2, "both are leftovers");
        let again = snapshot(9, &[("c", "sha256:3")]);
        let c2 = commit(ID, REPO, None, &layout, &again);
        log.extend(c2.records);
        assert_eq!(restore(&log).0, known(&again));
    }

    /// Records that do not add up (an item lost) are reported, read as well as they can be,
    /// and rewritten whole by the next commit, so that the topic holds the state again.
    #[test]
    fn a_header_whose_items_are_missing_is_reported_and_rewritten() {
        let s = snapshot(3, &[("a", "sha256:1"), ("b", "sha256:2")]);
        let c = commit(ID, REPO, None, &Layout::default(), &s);
        let mut log: Vec<Record> = c.records[1..].to_vec();
        let r = assemble(gather(&log)).expect("a reading");
        let why = r.damaged.expect("reported");
        assert!(why.contains("do not add up"), "{why}");
        let Some(RepoState::Known(read)) = r.state else {
            panic!("no snapshot")
        };
        assert_eq!(read.tags.len(), 1, "what is there");
        let mut next = s.clone();
        next.revision = 4;
        let c2 = commit(ID, REPO, Some(&read), &r.layout, &next);
        log.extend(c2.records);
        let again = assemble(gather(&log)).expect("a reading");
        assert_eq!(again.damaged, None);
        assert_eq!(again.state, known(&next));
    }
}
