//! The pure heart of regwatch: a previous snapshot and a complete listing in, changes out.
//!
//! Only complete listings ever reach this module; a failed or partial listing is dropped before,
//! so a missing tag here really is a removed tag.

use std::collections::BTreeMap;
use std::time::SystemTime;

use crate::config::TagFilter;
use crate::registry::Tag;

/// What regwatch remembers of one repository: every tag, with its digest where known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Tag name to manifest digest. Tags recorded by a baseline may have no digest.
    pub tags: BTreeMap<String, Option<String>>,
    /// Counts the commits of this repository's state; events carry the revision they were
    /// diffed against, so distinct detections get distinct ids (see `event::event_id`).
    pub revision: u64,
}

/// The kind of a change, as in the event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// A tag appeared.
    Added,
    /// A tag moved to a new digest.
    Updated,
    /// A tag disappeared.
    Removed,
}

/// One change to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// What happened.
    pub kind: ChangeKind,
    /// The tag.
    pub tag: String,
    /// The tag's digest now (for `Removed`, the last digest known).
    pub digest: Option<String>,
    /// The digest before an update.
    pub previous_digest: Option<String>,
    /// When the registry says it was pushed.
    pub pushed_at: Option<SystemTime>,
}

/// The outcome of comparing a listing with the previous snapshot.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// The snapshot to store.
    pub snapshot: Snapshot,
    /// The changes to emit, in tag order.
    pub changes: Vec<Change>,
}

/// Which tags of `listing` need a digest lookup (HEAD) before [`diff`]: selected tags that lack a
/// digest and are either new since `previous` or mutable. A baseline (`previous` = `None`) only
/// needs the mutable ones, so that later moves can be seen.
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

/// Compares a complete `listing` with `previous`. `previous` = `None` is a baseline: the snapshot
/// is recorded and nothing is emitted. The new snapshot's `revision` is left for the caller. Tags the filter does not select are remembered but never
/// reported, so editing the filter later does not flood.
pub fn diff(
    previous: Option<&Snapshot>,
    listing: Vec<Tag>,
    filter: &TagFilter,
    emit_removed: bool,
) -> Diff {
    let mut snapshot = Snapshot::default();
    let mut changes = Vec::new();
    let empty = Snapshot::default();
    let prev = previous.unwrap_or(&empty);

    for tag in listing {
        let old = prev.tags.get(&tag.name);
        let digest = tag.digest.or_else(|| old.cloned().flatten());
        if previous.is_some() && filter.selects(&tag.name) {
            match old {
                None => changes.push(Change {
                    kind: ChangeKind::Added,
                    tag: tag.name.clone(),
                    digest: digest.clone(),
                    previous_digest: None,
                    pushed_at: tag.pushed_at,
                }),
                Some(Some(was)) if digest.as_ref().is_some_and(|d| d != was) => {
                    changes.push(Change {
                        kind: ChangeKind::Updated,
                        tag: tag.name.clone(),
                        digest: digest.clone(),
                        previous_digest: Some(was.clone()),
                        pushed_at: tag.pushed_at,
                    })
                }
                Some(_) => {}
            }
        }
        snapshot.tags.insert(tag.name, digest);
    }

    if emit_removed && previous.is_some() {
        for (name, digest) in &prev.tags {
            if !snapshot.tags.contains_key(name) && filter.selects(name) {
                changes.push(Change {
                    kind: ChangeKind::Removed,
                    tag: name.clone(),
                    digest: digest.clone(),
                    previous_digest: None,
                    pushed_at: None,
                });
            }
        }
    }
    changes.sort_by(|a, b| a.tag.cmp(&b.tag));
    Diff { snapshot, changes }
}

#[cfg(test)]
mod tests {
    use super::*;
    use regex::Regex;

    fn tag(name: &str, digest: Option<&str>) -> Tag {
        Tag {
            name: name.into(),
            digest: digest.map(Into::into),
            pushed_at: None,
        }
    }

    fn snap(entries: &[(&str, Option<&str>)]) -> Snapshot {
        Snapshot {
            tags: entries
                .iter()
                .map(|(t, d)| (t.to_string(), d.map(Into::into)))
                .collect(),
            revision: 0,
        }
    }

    fn all() -> TagFilter {
        TagFilter::default()
    }

    fn kinds(d: &Diff) -> Vec<(ChangeKind, &str)> {
        d.changes.iter().map(|c| (c.kind, c.tag.as_str())).collect()
    }

    #[test]
    fn baseline_records_and_emits_nothing() {
        let d = diff(
            None,
            vec![tag("a", None), tag("b", Some("sha256:b"))],
            &all(),
            true,
        );
        assert!(d.changes.is_empty());
        assert_eq!(d.snapshot, snap(&[("a", None), ("b", Some("sha256:b"))]));
    }

    #[test]
    fn new_tags_are_added_with_their_digest() {
        let prev = snap(&[("a", None)]);
        let d = diff(
            Some(&prev),
            vec![tag("a", None), tag("b", Some("sha256:b"))],
            &all(),
            false,
        );
        assert_eq!(kinds(&d), vec![(ChangeKind::Added, "b")]);
        assert_eq!(d.changes[0].digest.as_deref(), Some("sha256:b"));
    }

    #[test]
    fn empty_previous_means_everything_is_new() {
        let d = diff(
            Some(&Snapshot::default()),
            vec![tag("x", Some("sha256:1")), tag("y", Some("sha256:2"))],
            &all(),
            false,
        );
        assert_eq!(
            kinds(&d),
            vec![(ChangeKind::Added, "x"), (ChangeKind::Added, "y")]
        );
    }

    #[test]
    fn moved_digest_is_updated_with_previous() {
        let prev = snap(&[("latest", Some("sha256:old"))]);
        let d = diff(
            Some(&prev),
            vec![tag("latest", Some("sha256:new"))],
            &all(),
            false,
        );
        assert_eq!(kinds(&d), vec![(ChangeKind::Updated, "latest")]);
        assert_eq!(d.changes[0].previous_digest.as_deref(), Some("sha256:old"));
        assert_eq!(d.snapshot, snap(&[("latest", Some("sha256:new"))]));
    }

    #[test]
    fn same_digest_or_unknown_digest_is_quiet() {
        let prev = snap(&[
            ("latest", Some("sha256:a")),
            ("v1", Some("sha256:v1")),
            ("old", None),
        ]);
        let listing = vec![
            tag("latest", Some("sha256:a")),
            tag("v1", None),
            tag("old", Some("sha256:o")),
        ];
        let d = diff(Some(&prev), listing, &all(), true);
        assert!(d.changes.is_empty(), "{:?}", d.changes);
        // A digest learned for a baseline tag is kept; an unlisted digest is carried over.
        assert_eq!(
            d.snapshot,
            snap(&[
                ("latest", Some("sha256:a")),
                ("old", Some("sha256:o")),
                ("v1", Some("sha256:v1"))
            ])
        );
    }

    #[test]
    fn removed_only_when_asked() {
        let prev = snap(&[("a", Some("sha256:a")), ("b", None)]);
        let quiet = diff(Some(&prev), vec![tag("b", None)], &all(), false);
        assert!(quiet.changes.is_empty());
        let loud = diff(Some(&prev), vec![tag("b", None)], &all(), true);
        assert_eq!(kinds(&loud), vec![(ChangeKind::Removed, "a")]);
        assert_eq!(loud.changes[0].digest.as_deref(), Some("sha256:a"));
        assert_eq!(loud.snapshot, snap(&[("b", None)]));
    }

    #[test]
    fn filter_hides_but_remembers() {
        let filter = TagFilter {
            include: vec![Regex::new(r"^v\d+$").unwrap()],
            exclude: vec![Regex::new(r"\.sig$").unwrap()],
            mutable: vec![],
        };
        let prev = snap(&[("gone-dev", None)]);
        let listing = vec![
            tag("v1", Some("sha256:1")),
            tag("dev", Some("sha256:d")),
            tag("v2.sig", Some("sha256:s")),
        ];
        let d = diff(Some(&prev), listing, &filter, true);
        assert_eq!(kinds(&d), vec![(ChangeKind::Added, "v1")]);
        assert_eq!(
            d.snapshot.tags.len(),
            3,
            "unselected tags are still remembered"
        );
    }

    #[test]
    fn digest_lookups_only_where_needed() {
        let filter = TagFilter {
            include: vec![],
            exclude: vec![Regex::new("^skip").unwrap()],
            mutable: vec!["latest".into()],
        };
        let listing = vec![
            tag("latest", None),
            tag("old", None),
            tag("new", None),
            tag("skip-me", None),
            tag("free", Some("sha256:f")),
        ];
        assert_eq!(
            needs_digest(None, &listing, &filter),
            vec![0],
            "baseline: mutable only"
        );
        let prev = snap(&[("latest", Some("sha256:l")), ("old", None)]);
        assert_eq!(needs_digest(Some(&prev), &listing, &filter), vec![0, 2]);
    }

    #[test]
    fn results_are_independent_of_listing_order() {
        let prev = snap(&[("a", Some("sha256:1"))]);
        let l1 = vec![
            tag("c", Some("sha256:c")),
            tag("a", Some("sha256:2")),
            tag("b", Some("sha256:b")),
        ];
        let mut l2 = l1.clone();
        l2.reverse();
        assert_eq!(
            diff(Some(&prev), l1, &all(), true),
            diff(Some(&prev), l2, &all(), true)
        );
    }
}
