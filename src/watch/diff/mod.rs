//! The pure heart of regwatch: a previous snapshot and a complete listing in, changes out.
//!
//! Only complete listings ever reach this module; a failed or partial listing is dropped before,
//! so a missing tag here really is a removed tag.
//!
//! [`evaluate`] runs the stages in their order, each a module owning its concern and its slice
//! of the [`Snapshot`]:
//! 1. [`tags`]: added and moved tags, and the tag map;
//! 2. [`versions`]: the version policy drops what it does not report and reads the rest;
//! 3. what stays unreported (`held_back`) is carried over;
//! 4. [`cosign`]: signatures annotate their image, or are news of their own;
//! 5. removed tags (`emit_removed`), once it is known which tags were reported;
//! 6. known platforms and maturity deadlines are carried over for the tags still listed.
//!
//! The scan then looks up what only the registry can tell (platforms,
//! [`platforms::needs_platforms`]), and finishes with [`platforms::annotate_platforms`] and
//! [`maturity::mature`].

mod change;
mod cosign;
mod maturity;
mod platforms;
mod snapshot;
mod tags;
#[cfg(test)]
mod tests;
mod versions;

use std::collections::BTreeSet;

pub use change::{Change, ChangeKind, Details, Image, VersionFacts};
pub use cosign::{MAX_SUBJECT_TAGS, cosign_subject};
pub use maturity::mature;
pub use platforms::{annotate_platforms, needs_platforms};
pub use snapshot::{Maturing, Snapshot};
pub use tags::{needs_digest, one_entry_per_tag, withhold};
pub use versions::upgrade;

use crate::config::TagFilter;
use crate::registry::Tag;
use crate::watch::versions::RULES;

/// The outcome of comparing a listing with the previous snapshot.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// The snapshot to store.
    pub snapshot: Snapshot,
    /// The changes to emit, in tag order.
    pub changes: Vec<Change>,
}

/// Compares a complete `listing` with `previous` (upgraded first if written under earlier version
/// rules, see [`upgrade`]). `previous` = `None` is a baseline: the snapshot
/// is recorded and nothing is emitted. The new snapshot's `revision` is left for the caller. Tags
/// the filter does not select are remembered but never reported, so editing the filter later does
/// not flood.
pub fn evaluate(
    previous: Option<&Snapshot>,
    listing: Vec<Tag>,
    filter: &TagFilter,
    emit_removed: bool,
) -> Diff {
    let upgraded;
    let previous = match previous {
        Some(p) if p.version_rules < RULES => {
            let mut p = p.clone();
            upgrade(&mut p, filter);
            upgraded = p;
            Some(&upgraded)
        }
        p => p,
    };
    let empty = Snapshot::default();
    let prev = previous.unwrap_or(&empty);
    let (mut diff, new_cosign_tags) = tags::compare(previous, listing, filter);
    // An idle cycle (no added or moved tag) reads no version.
    let mut held_back = Vec::new();
    if let Some(policy) = filter
        .versions
        .as_ref()
        .filter(|_| !diff.changes.is_empty())
    {
        held_back = versions::judge(&mut diff, policy, prev, filter);
    }
    carry_held_back(&mut diff, prev);
    diff.snapshot.held_back.extend(held_back);
    cosign::annotate(&mut diff, prev, filter, new_cosign_tags);
    if emit_removed && previous.is_some() {
        tags::removed(&mut diff, prev, filter);
    }
    platforms::carry_known(&mut diff.snapshot, prev);
    maturity::carry_reported(&mut diff.snapshot, prev, filter);
    diff.changes.sort_by(|a, b| a.tag().cmp(b.tag()));
    diff.snapshot.version_rules = RULES;
    diff
}

/// Tags held back before (never reported) stay so while listed and not reported now.
fn carry_held_back(diff: &mut Diff, prev: &Snapshot) {
    if prev.held_back.is_empty() {
        return;
    }
    let reported_now: BTreeSet<&str> = diff.changes.iter().map(Change::tag).collect();
    diff.snapshot.held_back = prev
        .held_back
        .iter()
        .filter(|t| diff.snapshot.tags.contains_key(*t) && !reported_now.contains(t.as_str()))
        .cloned()
        .collect();
}

/// Whether `filter` reports `tag` (selected, and admitted by the version policy): only such tags
/// make an image news for a signature, a removal or a maturity.
fn reported(filter: &TagFilter, tag: &str) -> bool {
    filter.selects(tag) && filter.versions.as_ref().is_none_or(|p| p.admits(tag))
}
