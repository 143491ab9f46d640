//! How one repository's state is laid out in the state topic: a record per tag and per looked-up
//! digest, and a header written last by a commit. Pure functions: what to write for a commit,
//! and what a restore makes of the records it read.
//!
//! - `["tag", identity, repository, tag]` and `["digest", identity, repository, digest]`: an
//!   *item* (a tag's digest, maturity deadline and held-back flag; a digest's platforms) as an
//!   [`Entry`]: the value it has from revision `rev` on (`now`, `null` once removed) and the value
//!   it had in the revision the write diffed against (`before`).
//! - `["repo", identity, repository]`: the *header*, written after the items (before them by a
//!   rewrite of the same revision, see [`rewrite`]): the committed revision, the *life* the
//!   items belong to, and the count and checksum of the items.
//!
//! A restore takes each item of the header's life at `now` if it was written at or before the
//! header's revision and at `before` if it is ahead (a write whose header never landed), so it
//! rebuilds exactly the committed revision, never a mix; the count and checksum then prove it.
//! Items ahead, removal markers and items of another life are *stale*: the next commit of the
//! repository rewrites or tombstones them. A write so costs O(changed items), and no record
//! grows with the repository. Late writes (see [`Gathered`]) are ignored.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::watch::diff::{Maturing, Snapshot};

/// The largest state record regwatch writes (key and value); Kafka's default limit is 1 MiB.
pub(super) const MAX_RECORD: usize = 64 * 1024;
/// The key of the marker an owner writes to a partition once it restored it (see
/// [`Staged`]).
pub(super) const OWNER_KEY: &str = r#"["owner"]"#;
/// The mark of a partition's owner of `epoch` (its value says so to a reader; a restore reads
/// only its order).
pub(super) fn owner_mark(epoch: u64) -> Record {
    let value = format!("{{\"epoch\":{epoch}}}");
    (OWNER_KEY.to_owned(), Some(value.into_bytes()))
}
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
/// under `foreign` (item keys, and the header). Within the life the records have, the header
/// comes first: a late write read as the newest (one that landed before any record of this
/// writer) is of the next revision, so once the header is back its items are ahead of it and
/// read as they were before it; the items follow. A new life (the state was not in the topic as
/// held) is written as a commit is, the header last, so that a write cut short leaves the old
/// one in force. With no state held, the foreign header and items are tombstoned.
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
            let mut c = write(identity, repository, Some(s), &with_foreign, s, false);
            if layout.life.is_some() {
                c.records.rotate_right(1);
            }
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

/// Where a state record stands among the writes of its key: the epoch of the partition's owner
/// that wrote it (each restore of a partition takes one above its former owner's, see
/// `Inner::take_epochs`), then the generation of that owner's producer (a replaced one's late
/// write is below the fresh one's). Within one order the log's order holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Order {
    pub(super) epoch: u64,
    pub(super) generation: u64,
}

impl Order {
    /// The value of the record header that carries it.
    pub(super) fn encode(self) -> String {
        format!("{}/{}", self.epoch, self.generation)
    }

    /// An [`Order::encode`]d value; `None` if it is not one.
    pub(super) fn decode(value: &[u8]) -> Option<Order> {
        let (epoch, generation) = std::str::from_utf8(value).ok()?.split_once('/')?;
        Some(Order {
            epoch: epoch.parse().ok()?,
            generation: generation.parse().ok()?,
        })
    }
}

/// What a restore read of one partition so far: each repository's records, and the highest
/// [`Order`] among its owners' marks.
#[derive(Debug, Default)]
pub(super) struct Staged {
    /// The highest order of an owner's mark (see [`OWNER_KEY`]) read: once restored, an owner
    /// marks the partition before it writes to it, so a record below a mark that came before it
    /// is a write its writer never saw.
    floor: Option<Order>,
    /// By identity and repository.
    pub(super) repos: std::collections::HashMap<(String, String), Gathered>,
}

impl Staged {
    /// Takes an owner's mark of `order`.
    pub(super) fn mark(&mut self, order: Option<Order>) {
        self.floor = self.floor.max(order);
    }

    /// Whether a record of `order` (`None`: of a release that did not mark its records) is
    /// below a mark read before it.
    fn below_mark(&self, order: Option<Order>) -> bool {
        order.is_some_and(|order| self.floor > Some(order))
    }

    /// Takes a record of `identity`/`repository`: of its header (`item` `None`) or of an
    /// item, written with `order`.
    pub(super) fn read(
        &mut self,
        (identity, repository): (&str, &str),
        item: Option<ItemKey>,
        value: Option<Vec<u8>>,
        order: Option<Order>,
    ) {
        let late = self.below_mark(order);
        self.repos
            .entry((identity.to_owned(), repository.to_owned()))
            .or_default()
            .read(item, value, order, late);
    }
}

/// What a restore read of one repository: its header's value and its items' (`None` is a
/// tombstone). The last record of a key wins, as compaction keeps, unless it is a late write:
/// below a mark of the partition's owners, or below a record of the repository read before it.
/// Such a record was written before the writes it follows (by a former owner paused past its
/// session with it in flight, or by a producer the owner replaced while a paused broker held
/// it), and its writer's successors never saw it. A repository's writes never overlap, so
/// within one the log's order is the writers' order but for late writes.
#[derive(Debug, Default)]
pub(super) struct Gathered {
    /// The `["repo", …]` record's value, if any was read.
    header: Option<Option<Vec<u8>>>,
    /// The item records read.
    items: BTreeMap<ItemKey, Option<Vec<u8>>>,
    /// The highest order among its records read.
    newest: Option<Order>,
    /// Keys whose last record is a late write: compaction would keep it rather than what was
    /// taken, so they are written again once restored.
    overtaken: BTreeSet<Option<ItemKey>>,
}

impl Gathered {
    /// Takes a record of the header (`item` `None`) or of an item, written with `order`; one
    /// `below_mark` (see [`Staged::below_mark`]) or below a record read before is only to be
    /// written over.
    fn read(
        &mut self,
        item: Option<ItemKey>,
        value: Option<Vec<u8>>,
        order: Option<Order>,
        below_mark: bool,
    ) {
        if below_mark || (order.is_some() && self.newest > order) {
            self.overtaken.insert(item);
            return;
        }
        self.newest = self.newest.max(order);
        self.overtaken.remove(&item);
        match item {
            None => self.header = Some(value),
            Some(item) => {
                self.items.insert(item, value);
            }
        }
    }
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
    /// Set when a late write was ignored: the items whose last record it is, to write again
    /// with the header (see [`Gathered`]).
    pub(super) overtaken: Option<BTreeSet<ItemKey>>,
}

/// What `gathered` records make: the committed revision, never a mix of two. An error when they
/// do not add up (a header whose items are missing or damaged).
pub(super) fn assemble(gathered: Gathered) -> Result<Restored, String> {
    let overtaken: Option<BTreeSet<ItemKey>> = (!gathered.overtaken.is_empty())
        .then(|| gathered.overtaken.iter().flatten().cloned().collect());
    // Rewritten by the next commit too, should it come before the owner writes over them.
    let mut stale = overtaken.clone().unwrap_or_default();
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
                overtaken,
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
                overtaken,
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
        overtaken,
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

    /// Replays `records`, written by a release that did not mark their order, as a restore
    /// reads them (later records of a key win).
    fn gather(records: &[Record]) -> Gathered {
        let unmarked: Vec<(Record, Option<Order>)> =
            records.iter().map(|r| (r.clone(), None)).collect();
        gather_marked(&unmarked)
    }

    /// Replays `records` of one partition, each with the order its writer marked it with, as
    /// a restore reads them.
    fn gather_marked(records: &[(Record, Option<Order>)]) -> Gathered {
        let mut staged = Staged::default();
        for ((key, value), order) in records {
            let parts: Vec<String> = serde_json::from_str(key).unwrap();
            let item = match parts.as_slice() {
                [kind] if kind == "owner" => {
                    staged.mark(*order);
                    continue;
                }
                [kind, _, _] if kind == "repo" => None,
                [kind, _, _, name] => Some(ItemKey::from_parts(kind, name).unwrap()),
                _ => panic!("unexpected key {key}"),
            };
            staged.read((ID, REPO), item, value.clone(), *order);
        }
        staged
            .repos
            .remove(&(ID.to_owned(), REPO.to_owned()))
            .unwrap_or_default()
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

    /// Records all written with `order`.
    fn marked(records: &[Record], order: Order) -> Vec<(Record, Option<Order>)> {
        records.iter().map(|r| (r.clone(), Some(order))).collect()
    }

    /// What compaction leaves of `log`: the last record of each key, in the log's order, with
    /// or without the tombstones.
    fn compacted(
        log: &[(Record, Option<Order>)],
        keep_tombstones: bool,
    ) -> Vec<(Record, Option<Order>)> {
        log.iter()
            .enumerate()
            .filter(|(i, ((key, value), _))| {
                (keep_tombstones || value.is_some())
                    && !log[i + 1..].iter().any(|((k, _), _)| k == key)
            })
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// A former owner's write, held up past its session, lands after the new owner's writes:
    /// a restore keeps what the new owner wrote (a record below an order read before it never
    /// overtakes it, a new item included), and asks for what the late write left last to be
    /// written again, since compaction keeps the last record of a key. Once it is, the
    /// compacted log restores the same.
    #[test]
    fn a_former_owners_late_write_never_rolls_a_restore_back() {
        let (a, b) = (
            Order {
                epoch: 1,
                generation: 0,
            },
            Order {
                epoch: 2,
                generation: 0,
            },
        );
        let first = snapshot(5, &[("a", "sha256:1"), ("b", "sha256:2")]);
        let c5 = commit(ID, REPO, None, &Layout::default(), &first);
        // Diffed against revision 5 too, by the former owner, before it stalled.
        let zombie = commit(
            ID,
            REPO,
            Some(&first),
            &c5.written,
            &snapshot(
                6,
                &[("a", "sha256:Z"), ("b", "sha256:2"), ("z", "sha256:Z")],
            ),
        );
        let sixth = snapshot(6, &[("a", "sha256:1"), ("b", "sha256:6")]);
        let c6 = commit(ID, REPO, Some(&first), &c5.written, &sixth);
        let seventh = snapshot(
            7,
            &[("a", "sha256:1"), ("b", "sha256:6"), ("d", "sha256:7")],
        );
        let c7 = commit(ID, REPO, Some(&sixth), &c6.written, &seventh);
        let mut log = marked(&c5.records, a);
        log.extend(marked(&c6.records, b));
        log.extend(marked(&c7.records, b));
        for cut in 1..=zombie.records.len() {
            let mut with = log.clone();
            with.extend(marked(&zombie.records[..cut], a));
            let r = assemble(gather_marked(&with)).expect("a reading");
            assert_eq!(
                r.state,
                known(&seventh),
                "late write cut after {cut} records"
            );
            assert_eq!(r.damaged, None, "cut after {cut}");
            assert!(r.overtaken.is_some(), "cut after {cut}: not written over");
        }
        log.extend(marked(&zombie.records, a));
        let r = assemble(gather_marked(&log)).expect("a reading");
        let overtaken = r.overtaken.expect("written over");
        assert_eq!(
            overtaken,
            BTreeSet::from([ItemKey::Tag("a".into()), ItemKey::Tag("z".into())])
        );
        let (again, _) = rewrite(ID, REPO, r.state.as_ref(), &r.layout, &overtaken);
        log.extend(marked(&again, b));
        for keep_tombstones in [true, false] {
            let r = assemble(gather_marked(&compacted(&log, keep_tombstones))).unwrap();
            assert_eq!(r.state, known(&seventh), "compacted");
            assert_eq!(r.damaged, None);
        }
    }

    /// A state that is not in the topic as held (adopted after its write failed, or an older
    /// release's whole snapshot) is written again under a new life: a rewrite of it cut short
    /// leaves the old header in force (the items it replaced already are missing from it, which
    /// is reported), never a header of the new life without its items, which reads as empty.
    #[test]
    fn a_rewrite_under_a_new_life_cut_short_leaves_the_old_one() {
        let old = snapshot(5, &[("a", "sha256:1"), ("b", "sha256:2")]);
        let c5 = commit(ID, REPO, None, &Layout::default(), &old);
        let adopted = snapshot(6, &[("a", "sha256:6"), ("b", "sha256:2")]);
        let unwritten = Layout {
            life: None,
            stale: BTreeSet::new(),
            unwritten: true,
        };
        let (again, _) = rewrite(
            ID,
            REPO,
            Some(&RepoState::Known(adopted.clone())),
            &unwritten,
            &BTreeSet::new(),
        );
        for cut in 0..again.len() {
            let mut log = c5.records.clone();
            log.extend_from_slice(&again[..cut]);
            let r = assemble(gather(&log)).expect("a reading");
            let Some(RepoState::Known(read)) = r.state else {
                panic!("cut after {cut} records: no state")
            };
            assert_eq!(read.revision, old.revision, "cut after {cut} records");
        }
        let mut log = c5.records.clone();
        log.extend(again);
        assert_eq!(restore(&log).0, known(&adopted));
    }

    /// Writes of two repositories of a partition overlap: one goes through the producer that
    /// replaced the one the other still uses, and lands first. Neither is a late write: a
    /// repository's writes never overlap, so only its own order counts, and the marks.
    #[test]
    fn a_write_of_another_repository_by_a_fresh_producer_makes_none_late() {
        let (old, fresh) = (
            Order {
                epoch: 4,
                generation: 0,
            },
            Order {
                epoch: 4,
                generation: 1,
            },
        );
        let x = snapshot(1, &[("a", "sha256:1")]);
        let y = snapshot(1, &[("b", "sha256:2")]);
        let cx = commit(ID, "team/x", None, &Layout::default(), &x);
        let cy = commit(ID, "team/y", None, &Layout::default(), &y);
        let mut staged = Staged::default();
        staged.mark(Some(old));
        for ((key, value), repo, order) in cy
            .records
            .iter()
            .map(|r| (r, "team/y", fresh))
            .chain(cx.records.iter().map(|r| (r, "team/x", old)))
        {
            let parts: Vec<String> = serde_json::from_str(key).unwrap();
            let item = match parts.as_slice() {
                [_, _, _] => None,
                [kind, _, _, name] => ItemKey::from_parts(kind, name),
                _ => unreachable!(),
            };
            staged.read((ID, repo), item, value.clone(), Some(order));
        }
        for (repo, expected) in [("team/x", &x), ("team/y", &y)] {
            let g = staged
                .repos
                .remove(&(ID.to_owned(), repo.to_owned()))
                .unwrap();
            let r = assemble(g).expect("a reading");
            assert_eq!(r.state, known(expected), "{repo}");
            assert!(r.overtaken.is_none(), "{repo} was taken for a late write");
        }
    }

    /// The same with a release that did not mark its records: the last record read wins, as
    /// before orders existed (a rolling upgrade reads the old release's writes in log order).
    #[test]
    fn unmarked_records_are_read_in_the_logs_order() {
        let first = snapshot(5, &[("a", "sha256:1")]);
        let c5 = commit(ID, REPO, None, &Layout::default(), &first);
        let sixth = snapshot(6, &[("a", "sha256:6")]);
        let c6 = commit(ID, REPO, Some(&first), &c5.written, &sixth);
        let mut log = marked(
            &c5.records,
            Order {
                epoch: 3,
                generation: 0,
            },
        );
        log.extend(c6.records.iter().map(|r| (r.clone(), None)));
        let r = assemble(gather_marked(&log)).unwrap();
        assert_eq!(r.state, known(&sixth));
        assert!(r.overtaken.is_none());
    }

    mod late_writes {
        //! Random histories of one repository across a change of owner: the former owner's
        //! last write lands late, anywhere among the new owner's commits, cut anywhere; the new
        //! owner writes over it when it reads it. Every restore of the log, whole, compacted or
        //! cut after the new owner's first record, reads what the new owner committed.
        use super::*;
        use proptest::prelude::*;

        fn state(revision: u64, tags: &BTreeMap<usize, usize>) -> Snapshot {
            let named: Vec<(String, String)> = tags
                .iter()
                .map(|(t, d)| (format!("t{t}"), format!("sha256:{d}")))
                .collect();
            let refs: Vec<(&str, &str)> = named
                .iter()
                .map(|(t, d)| (t.as_str(), d.as_str()))
                .collect();
            let mut s = snapshot(revision, &refs);
            if let Some((_, d)) = named.first() {
                s.platforms
                    .insert(d.clone(), vec![format!("linux/{revision}")]);
            }
            s
        }

        fn tags() -> impl Strategy<Value = BTreeMap<usize, usize>> {
            prop::collection::btree_map(0..6usize, 0..3usize, 0..6)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]
            #[test]
            fn a_late_write_never_rolls_a_restore_back(
                first in tags(),
                late in tags(),
                commits in prop::collection::vec(tags(), 0..4),
                cut in 1..20usize,
                lands in 0..4usize,
                repairs in 0..4usize,
                replaced in any::<bool>(),
            ) {
                let old = Order { epoch: 1, generation: 0 };
                // A new owner, or this owner's fresh producer after the broker fenced its first.
                let new = if replaced {
                    Order { epoch: 1, generation: 1 }
                } else {
                    Order { epoch: 2, generation: 0 }
                };
                let s0 = state(10, &first);
                let c0 = commit(ID, REPO, None, &Layout::default(), &s0);
                let zombie = commit(ID, REPO, Some(&s0), &c0.written, &state(11, &late));
                let zombie = &zombie.records[..cut.min(zombie.records.len())];
                let lands = lands.min(commits.len());
                // A fresh producer's owner holds no restore of the late write: it writes over it
                // as soon as it reads it (a commit that races that repair and stops halfway can
                // leave a mix, reported as damaged: not modelled).
                let repairs = if replaced { lands } else { repairs.clamp(lands, commits.len()) };
                // The log, and what a restore cut after each record must read (`None`: not
                // checked, the late write may be all the new owner has after it).
                let mut log = marked(&c0.records, old);
                let mut expect = vec![None; log.len() - 1];
                expect.push(Some(s0.clone()));
                let (mut held, mut layout) = (s0.clone(), c0.written.clone());
                // A new owner marks the partition once restored; a fresh producer does not.
                let mut written_since = !replaced;
                if !replaced {
                    log.push(((OWNER_KEY.into(), Some(b"{}".to_vec())), Some(new)));
                    expect.push(Some(s0.clone()));
                }
                let mut foreign = BTreeSet::new();
                for i in 0..=commits.len() {
                    if i == lands {
                        log.extend(marked(zombie, old));
                        expect.extend(zombie.iter().map(|_| written_since.then(|| held.clone())));
                        for ((key, _), _) in marked(zombie, old) {
                            let parts: Vec<String> = serde_json::from_str(&key).unwrap();
                            if let [kind, _, _, name] = parts.as_slice() {
                                foreign.insert(ItemKey::from_parts(kind, name).unwrap());
                            }
                        }
                    }
                    if i == repairs {
                        let (again, after) = rewrite(ID, REPO, Some(&RepoState::Known(held.clone())), &layout, &foreign);
                        log.extend(marked(&again, new));
                        expect.extend(again.iter().map(|_| Some(held.clone())));
                        layout = after;
                        written_since = true;
                    }
                    if let Some(tags) = commits.get(i) {
                        let next = state(held.revision + 1, tags);
                        let c = commit(ID, REPO, Some(&held), &layout, &next);
                        let n = c.records.len();
                        log.extend(marked(&c.records, new));
                        expect.extend((1..n).map(|_| Some(held.clone())));
                        expect.push(Some(next.clone()));
                        held = next;
                        layout = c.written;
                        written_since = true;
                    }
                }
                for (at, expected) in expect.iter().enumerate() {
                    let Some(expected) = expected else { continue };
                    let r = assemble(gather_marked(&log[..=at])).expect("a reading");
                    prop_assert_eq!(&r.state, &known(expected), "cut after record {}", at);
                    prop_assert_eq!(r.damaged, None, "cut after record {}", at);
                }
                for keep_tombstones in [true, false] {
                    let r = assemble(gather_marked(&compacted(&log, keep_tombstones))).expect("a reading");
                    prop_assert_eq!(&r.state, &known(&held), "compacted, tombstones kept: {}", keep_tombstones);
                    prop_assert_eq!(r.damaged, None);
                }
            }
        }
    }
}
