//! The platforms stage (`platforms`, `require_platforms`): what each new digest runs on, looked
//! up once per digest ever, and the images that lack a required platform.

use std::collections::{BTreeMap, HashSet};

use super::{Change, ChangeKind, Diff, Snapshot};

/// Platforms looked up before stay known while some tag still points at their digest.
pub(super) fn carry_known(snapshot: &mut Snapshot, prev: &Snapshot) {
    if prev.platforms.is_empty() {
        return;
    }
    let tagged: HashSet<&str> = snapshot
        .tags
        .values()
        .flatten()
        .map(String::as_str)
        .collect();
    let known = prev
        .platforms
        .iter()
        .filter(|(d, _)| tagged.contains(d.as_str()))
        .map(|(d, p)| (d.clone(), p.clone()))
        .collect();
    snapshot.platforms = known;
}

/// The digests of `outcome`'s `Added` and `Updated` changes whose platforms are not known yet,
/// each once, with a tag pointing at it: what `platforms = true` must look up.
pub fn needs_platforms(outcome: &Diff) -> Vec<(String, String)> {
    let mut wanted: BTreeMap<&str, &str> = BTreeMap::new();
    for change in &outcome.changes {
        if let (Some(_), Some(digest)) = (change.image(), change.digest())
            && !outcome.snapshot.platforms.contains_key(digest)
        {
            wanted.entry(digest).or_insert(change.tag());
        }
    }
    wanted
        .into_iter()
        .map(|(d, t)| (d.to_owned(), t.to_owned()))
        .collect()
}

/// Sets `platforms` on `outcome`'s `Added` and `Updated` changes from the snapshot's platforms,
/// and on an update `platforms_added` (what the new digest has beyond the previous one, when
/// `previous` knew the latter's). With `require` set, drops the changes whose image lacks one of
/// them, and the signatures and attestations of such images; the snapshot still records the
/// tag, so a later re-push that has them is an update. A new tag kept out is held back, as
/// `only_newer` holds one back: never reported, so its removal is no news either.
pub fn annotate_platforms(outcome: &mut Diff, previous: Option<&Snapshot>, require: &[String]) {
    let Diff { snapshot, changes } = outcome;
    let known = &snapshot.platforms;
    let was_held = |tag: &str| previous.is_some_and(|p| p.held_back.contains(tag));
    let has_required = |platforms: Option<&Vec<String>>| {
        require
            .iter()
            .all(|r| platforms.is_some_and(|p| p.contains(r)))
    };
    let mut kept_out = Vec::new();
    changes.retain_mut(|change| {
        let platforms = change.digest().and_then(|d| known.get(d));
        let kind = change.kind();
        let before = change
            .previous_digest()
            .and_then(|d| previous?.platforms.get(d));
        match change {
            // An image `require` kept out was never reported, so neither is its signature.
            Change::SignatureAdded { .. } | Change::AttestationAdded { .. } => {
                platforms.is_none() || has_required(platforms)
            }
            Change::Added { tag, image, .. } | Change::Updated { tag, image, .. } => {
                if kind == ChangeKind::Updated {
                    image.platforms_added = platforms.zip(before).map(|(now, before)| {
                        now.iter()
                            .filter(|p| !before.contains(p))
                            .cloned()
                            .collect()
                    });
                }
                image.platforms = platforms.cloned();
                let report = has_required(platforms);
                if !report && (kind == ChangeKind::Added || was_held(tag)) {
                    kept_out.push(tag.clone());
                }
                report
            }
            Change::Removed { .. } | Change::Matured { .. } => true,
        }
    });
    snapshot.held_back.extend(kept_out);
}
