//! The tags stage: which tags appeared, moved or left, and the snapshot's tag map.

use std::collections::BTreeSet;

use super::{Change, Diff, Image, Snapshot, reported};
use crate::config::TagFilter;
use crate::registry::Tag;

/// The listing with each tag once, sorted by name. Adapters de-duplicate, but the diff does not
/// rely on it: a name listed twice is one tag, and when its entries disagree on the digest
/// neither is believed (the digest lookup decides where it matters).
pub fn one_entry_per_tag(mut listing: Vec<Tag>) -> Vec<Tag> {
    listing.sort_by(|a, b| a.name.cmp(&b.name));
    listing.dedup_by(|later, kept| {
        if later.name != kept.name {
            return false;
        }
        if later.digest != kept.digest {
            kept.digest = None;
            kept.pushed_at = None;
        }
        true
    });
    listing
}

/// Which tags of `listing` need a digest lookup (HEAD) before [`super::evaluate`]: selected tags
/// that lack a digest and are either new since `previous` or mutable. A baseline (`previous` =
/// `None`) only needs the mutable ones, so that later moves can be seen.
pub fn needs_digest(
    previous: Option<&Snapshot>,
    listing: &[Tag],
    filter: &TagFilter,
) -> Vec<usize> {
    listing
        .iter()
        .enumerate()
        .filter(|(_, t)| t.digest.is_none() && filter.selects(&t.name))
        .filter(|(_, t)| {
            filter.is_mutable(&t.name) || previous.is_some_and(|p| !p.tags.contains_key(&t.name))
        })
        .map(|(i, _)| i)
        .collect()
}

/// The selected tags that appeared or moved, and the new tag map. Returns too the new tags the
/// filter does not select, for the cosign stage: they may be signatures.
pub(super) fn compare(
    previous: Option<&Snapshot>,
    listing: Vec<Tag>,
    filter: &TagFilter,
) -> (Diff, Vec<String>) {
    let mut diff = Diff::default();
    let mut unselected_new = Vec::new();
    for tag in one_entry_per_tag(listing) {
        let old = previous.and_then(|p| p.tags.get(&tag.name));
        let digest = tag.digest.or_else(|| old.cloned().flatten());
        if previous.is_some() && filter.selects(&tag.name) {
            match (old, &digest) {
                (None, _) => diff.changes.push(Change::Added {
                    tag: tag.name.clone(),
                    digest: digest.clone(),
                    pushed_at: tag.pushed_at,
                    image: Image::default(),
                }),
                (Some(Some(was)), Some(now)) if now != was => diff.changes.push(Change::Updated {
                    tag: tag.name.clone(),
                    digest: now.clone(),
                    previous_digest: was.clone(),
                    pushed_at: tag.pushed_at,
                    image: Image::default(),
                }),
                _ => {}
            }
        } else if previous.is_some() && old.is_none() && !filter.signature_tags {
            unselected_new.push(tag.name.clone());
        }
        diff.snapshot.tags.insert(tag.name, digest);
    }
    (diff, unselected_new)
}

/// Adds a `Removed` for each reported tag of `prev` that the new snapshot lacks. Tags never
/// reported (held back) leave as silently as they came.
pub(super) fn removed(diff: &mut Diff, prev: &Snapshot, filter: &TagFilter) {
    for (name, digest) in &prev.tags {
        if !diff.snapshot.tags.contains_key(name)
            && reported(filter, name)
            && !prev.held_back.contains(name)
        {
            diff.changes.push(Change::Removed {
                tag: name.clone(),
                digest: digest.clone(),
            });
        }
    }
}

/// Takes `tags` out of `outcome` as if this listing had not seen them change: their changes are
/// dropped, and the snapshot keeps what `previous` knew of them (a new tag is left out). For tags
/// whose lookups failed: the next scan diffs them again.
pub fn withhold(outcome: &mut Diff, previous: Option<&Snapshot>, tags: &BTreeSet<String>) {
    // Every change of theirs: a cosign tag's signature.added names the digest that failed too.
    outcome.changes.retain(|c| !tags.contains(c.tag()));
    for tag in tags {
        match previous.and_then(|p| p.tags.get(tag)) {
            Some(digest) => {
                outcome.snapshot.tags.insert(tag.clone(), digest.clone());
            }
            None => {
                outcome.snapshot.tags.remove(tag);
            }
        }
        if previous.is_some_and(|p| p.held_back.contains(tag)) {
            outcome.snapshot.held_back.insert(tag.clone());
        } else {
            outcome.snapshot.held_back.remove(tag);
        }
    }
}
