//! The pure heart of regwatch: a previous snapshot and a complete listing in, changes out.
//!
//! Only complete listings ever reach this module; a failed or partial listing is dropped before,
//! so a missing tag here really is a removed tag.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::versions::{Bump, VersionIndex, VersionPolicy};
use crate::config::TagFilter;
use crate::registry::Tag;

/// What regwatch remembers of one repository: every tag, with its digest where known, and what
/// later cycles still owe a deployer (maturity deadlines) or must not ask again (platforms).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Tag name to manifest digest. Tags recorded by a baseline may have no digest.
    pub tags: BTreeMap<String, Option<String>>,
    /// Counts the commits of this repository's state; events carry the revision they were
    /// diffed against, so distinct detections get distinct ids (see `event::event_id`).
    /// The store keeps it outside the JSON.
    #[serde(skip)]
    pub revision: u64,
    /// Reported tags waiting to mature (`mature_after`): tag to the digest reported and its
    /// deadline. Kept here so that a restart neither loses nor repeats a `tag.matured`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub maturing: BTreeMap<String, Maturing>,
    /// Platforms (`os/arch[/variant]`) of the tagged digests that were looked up: digests are
    /// immutable, so an index is fetched once per digest.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub platforms: BTreeMap<String, Vec<String>>,
}

impl Snapshot {
    /// Whether `other` holds the same state, whatever the revisions: nothing to commit.
    pub fn same_content(&self, other: &Snapshot) -> bool {
        self.tags == other.tags
            && self.maturing == other.maturing
            && self.platforms == other.platforms
    }
}

/// A reported tag's maturity deadline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Maturing {
    /// The digest that must stay.
    pub digest: String,
    /// When it matures, in milliseconds since the Unix epoch.
    pub deadline_ms: u64,
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
    /// A reported tag kept its digest for `mature_after`.
    Matured,
    /// A cosign signature (`sha256-<hex>.sig`) appeared for an image reported before.
    SignatureAdded,
    /// A cosign attestation or SBOM (`.att`, `.sbom`) appeared for an image reported before.
    AttestationAdded,
}

/// What regwatch knows of a change's image beyond tag and digest. Each field is optional in the
/// event and left out when `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Details {
    /// The normalised version (`[registry.versions]`); `Some(None)` is a null: versions are on and
    /// the tag is not one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<Option<String>>,
    /// How the version relates to the highest one known before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bump: Option<&'static str>,
    /// Whether it is now the highest version in range.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest: Option<bool>,
    /// Whether a cosign signature tag for the digest was listed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signed: Option<bool>,
    /// The cosign attestation kinds listed for the digest (`att`, `sbom`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attestations: Option<Vec<&'static str>>,
    /// The image's platforms (`platforms = true`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platforms: Option<Vec<String>>,
    /// On an update: platforms the new digest has and the previous one lacked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platforms_added: Option<Vec<String>>,
    /// On a signature or attestation: the tags of the subject digest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
}

/// The subject digest and kind (`sig`, `att`, `sbom`) of a cosign tag: `sha256-<hex>.sig` signs
/// `sha256:<hex>`. Any other tag is `None`.
pub fn cosign_subject(tag: &str) -> Option<(String, &'static str)> {
    let (subject, suffix) = tag.rsplit_once('.')?;
    let kind = match suffix {
        "sig" => "sig",
        "att" => "att",
        "sbom" => "sbom",
        _ => return None,
    };
    let hex = subject.strip_prefix("sha256-")?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
    .then(|| (format!("sha256:{hex}"), kind))
}

/// The cosign tag of `kind` for `digest`, the inverse of [`cosign_subject`].
fn cosign_tag(digest: &str, kind: &str) -> Option<String> {
    digest
        .strip_prefix("sha256:")
        .map(|hex| format!("sha256-{hex}.{kind}"))
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
    /// What else is known of the image.
    pub details: Details,
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
/// is recorded and nothing is emitted. The new snapshot's `revision` is left for the caller. Tags
/// the filter does not select are remembered but never reported, so editing the filter later does
/// not flood. Cosign tags annotate their subject's event, or become a `SignatureAdded` /
/// `AttestationAdded` when the subject was reported before. With `[registry.versions]`, added and
/// moved tags are judged by `watch::versions`.
pub fn diff(
    previous: Option<&Snapshot>,
    listing: Vec<Tag>,
    filter: &TagFilter,
    emit_removed: bool,
) -> Diff {
    let mut snapshot = Snapshot::default();
    let mut changes = Vec::new();
    let mut cosign_new = Vec::new();
    let empty = Snapshot::default();
    let prev = previous.unwrap_or(&empty);

    for tag in listing {
        let old = prev.tags.get(&tag.name);
        let digest = tag.digest.or_else(|| old.cloned().flatten());
        if previous.is_some() && filter.selects(&tag.name) {
            let kind = match old {
                None => Some(ChangeKind::Added),
                Some(Some(was)) if digest.as_ref().is_some_and(|d| d != was) => {
                    Some(ChangeKind::Updated)
                }
                Some(_) => None,
            };
            if let Some(kind) = kind {
                changes.push(Change {
                    kind,
                    tag: tag.name.clone(),
                    digest: digest.clone(),
                    previous_digest: old.cloned().flatten(),
                    pushed_at: tag.pushed_at,
                    details: Details::default(),
                });
            }
        } else if previous.is_some() && old.is_none() && !filter.signature_tags {
            cosign_new.push(tag.name.clone());
        }
        snapshot.tags.insert(tag.name, digest);
    }

    // An idle cycle (no added or moved tag) parses no version.
    if let Some(policy) = filter.versions.as_ref().filter(|_| !changes.is_empty()) {
        apply_versions(&mut changes, policy, prev, &snapshot, filter);
    }
    for change in &mut changes {
        if let Some(digest) = &change.digest {
            annotate_cosign(&mut change.details, digest, &snapshot);
        }
    }
    changes.extend(
        cosign_new
            .iter()
            .filter_map(|t| cosign_change(t, prev, &snapshot, filter)),
    );

    if emit_removed && previous.is_some() {
        for (name, digest) in &prev.tags {
            if !snapshot.tags.contains_key(name) && filter.selects(name) {
                changes.push(Change {
                    kind: ChangeKind::Removed,
                    tag: name.clone(),
                    digest: digest.clone(),
                    previous_digest: None,
                    pushed_at: None,
                    details: Details::default(),
                });
            }
        }
    }
    // Platforms looked up before stay known while some tag still points at their digest.
    snapshot.platforms = prev
        .platforms
        .iter()
        .filter(|(d, _)| snapshot.tags.values().any(|t| t.as_ref() == Some(*d)))
        .map(|(d, p)| (d.clone(), p.clone()))
        .collect();
    // A tag the filter no longer selects is no longer reported, so it does not mature either.
    snapshot.maturing = prev
        .maturing
        .iter()
        .filter(|(t, _)| filter.selects(t))
        .map(|(t, m)| (t.clone(), m.clone()))
        .collect();
    changes.sort_by(|a, b| a.tag.cmp(&b.tag));
    Diff { snapshot, changes }
}

/// Drops the added and moved tags `policy` does not report and fills `version`, `bump` and
/// `latest` on the others. Only the tags the filter selects are versions "known" to compare with.
fn apply_versions(
    changes: &mut Vec<Change>,
    policy: &VersionPolicy,
    prev: &Snapshot,
    snapshot: &Snapshot,
    filter: &TagFilter,
) {
    fn selected<'a>(s: &'a Snapshot, filter: &'a TagFilter) -> impl Iterator<Item = &'a str> {
        s.tags
            .keys()
            .map(String::as_str)
            .filter(|t| filter.selects(t))
    }
    let index = VersionIndex::new(policy, selected(prev, filter), selected(snapshot, filter));
    changes.retain_mut(|c| {
        let verdict = index.judge(&c.tag, c.kind == ChangeKind::Added);
        if verdict.report {
            c.details.bump = verdict.bump.map(Bump::as_str);
            c.details.latest = verdict.version.is_some().then_some(verdict.latest);
            c.details.version = Some(verdict.version);
        }
        verdict.report
    });
}

/// Sets `signed` and `attestations` from the cosign tags `snapshot` lists for `digest`.
fn annotate_cosign(details: &mut Details, digest: &str, snapshot: &Snapshot) {
    let has = |kind| cosign_tag(digest, kind).is_some_and(|t| snapshot.tags.contains_key(&t));
    details.signed = Some(has("sig"));
    details.attestations = Some(["att", "sbom"].into_iter().filter(|k| has(k)).collect());
}

/// The event for a cosign tag that appeared after its subject was reported: a tag the filter
/// selects (and `[registry.versions]` can report) already pointed at the subject digest in
/// `prev`. Its tags are such tags pointing at it now; tags never reported are never named,
/// whatever digest a listing or a HEAD gave them.
fn cosign_change(
    tag: &str,
    prev: &Snapshot,
    snapshot: &Snapshot,
    filter: &TagFilter,
) -> Option<Change> {
    let (subject, kind) = cosign_subject(tag)?;
    let points_at = |s: &Snapshot| -> Vec<String> {
        s.tags
            .iter()
            .filter(|(t, d)| {
                d.as_deref() == Some(&subject)
                    && cosign_subject(t).is_none()
                    && filter.selects(t)
                    && filter.versions.as_ref().is_none_or(|p| p.may_report(t))
            })
            .map(|(t, _)| t.clone())
            .collect()
    };
    if points_at(prev).is_empty() {
        return None;
    }
    let tags = points_at(snapshot);
    if tags.is_empty() {
        return None;
    }
    let (kind, attestations) = match kind {
        "sig" => (ChangeKind::SignatureAdded, None),
        other => (ChangeKind::AttestationAdded, Some(vec![other])),
    };
    Some(Change {
        kind,
        tag: tag.to_owned(),
        digest: Some(subject),
        previous_digest: None,
        pushed_at: None,
        details: Details {
            attestations,
            tags: Some(tags),
            ..Details::default()
        },
    })
}

/// The digests of `outcome`'s `Added` and `Updated` changes whose platforms are not known yet,
/// each once, with a tag pointing at it: what `platforms = true` must look up.
pub fn needs_platforms(outcome: &Diff) -> Vec<(String, String)> {
    let mut wanted: BTreeMap<&str, &str> = BTreeMap::new();
    for change in &outcome.changes {
        if let (ChangeKind::Added | ChangeKind::Updated, Some(digest)) =
            (change.kind, &change.digest)
            && !outcome.snapshot.platforms.contains_key(digest)
        {
            wanted.entry(digest).or_insert(&change.tag);
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
/// tag, so a later re-push that has them is an update.
pub fn annotate_platforms(outcome: &mut Diff, previous: Option<&Snapshot>, require: &[String]) {
    let known = &outcome.snapshot.platforms;
    outcome.changes.retain_mut(|change| {
        let platforms = change.digest.as_ref().and_then(|d| known.get(d));
        match change.kind {
            // An image `require` kept out was never reported, so neither is its signature.
            ChangeKind::SignatureAdded | ChangeKind::AttestationAdded => {
                return platforms.is_none_or(|p| require.iter().all(|r| p.contains(r)));
            }
            ChangeKind::Added | ChangeKind::Updated => {}
            _ => return true,
        }
        if change.kind == ChangeKind::Updated {
            let before = change
                .previous_digest
                .as_ref()
                .and_then(|d| previous?.platforms.get(d));
            change.details.platforms_added = platforms.zip(before).map(|(now, before)| {
                now.iter()
                    .filter(|p| !before.contains(p))
                    .cloned()
                    .collect()
            });
        }
        change.details.platforms = platforms.cloned();
        require
            .iter()
            .all(|r| platforms.is_some_and(|p| p.contains(r)))
    });
}

/// Keeps the maturity deadlines of `outcome` (`mature_after`, `None` = off): every reported
/// `Added` or `Updated` change with a digest starts one at `now`; a deadline whose tag moved or
/// vanished is dropped; one that passed, with the tag still on its digest, becomes a `Matured`
/// change. Call it last, on the changes that are really reported.
pub fn mature(outcome: &mut Diff, mature_after: Option<Duration>, now: SystemTime) {
    let Some(after) = mature_after else {
        outcome.snapshot.maturing.clear();
        return;
    };
    let ms = |t: SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    };
    let tags = &outcome.snapshot.tags;
    let mut maturing = std::mem::take(&mut outcome.snapshot.maturing);
    maturing.retain(|tag, m| {
        tags.get(tag)
            .is_some_and(|d| d.as_deref() == Some(&m.digest))
    });
    let mut matured = Vec::new();
    maturing.retain(|tag, m| {
        let due = m.deadline_ms <= ms(now);
        if due {
            matured.push(Change {
                kind: ChangeKind::Matured,
                tag: tag.clone(),
                digest: Some(m.digest.clone()),
                previous_digest: None,
                pushed_at: None,
                details: Details::default(),
            });
        }
        !due
    });
    for change in &outcome.changes {
        if let (ChangeKind::Added | ChangeKind::Updated, Some(digest)) =
            (change.kind, &change.digest)
        {
            maturing.insert(
                change.tag.clone(),
                Maturing {
                    digest: digest.clone(),
                    // A duration past what the clock can hold is a deadline that never comes.
                    deadline_ms: now.checked_add(after).map_or(u64::MAX, ms),
                },
            );
        }
    }
    outcome.snapshot.maturing = maturing;
    outcome.changes.extend(matured);
    outcome.changes.sort_by(|a, b| a.tag.cmp(&b.tag));
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
            ..Snapshot::default()
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
            signature_tags: false,
            versions: None,
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
            signature_tags: false,
            versions: None,
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

    fn sig(digest: &str, kind: &str) -> String {
        cosign_tag(digest, kind).unwrap()
    }

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn cosign_tags_name_their_subject() {
        assert_eq!(cosign_subject(&sig(D1, "sig")), Some((D1.into(), "sig")));
        assert_eq!(cosign_subject(&sig(D1, "sbom")), Some((D1.into(), "sbom")));
        assert_eq!(cosign_subject("sha256-abc.sig"), None, "short hex");
        assert_eq!(cosign_subject(&sig(D1, "sig").to_uppercase()), None);
        assert_eq!(cosign_subject("v1.sig"), None);
        assert_eq!(
            cosign_subject(&sig(D1, "att").replace(".att", ".txt")),
            None
        );
    }

    #[test]
    fn a_signature_pushed_with_its_image_annotates_it_and_is_no_tag() {
        let prev = snap(&[("v0", Some(D2))]);
        let listing = vec![
            tag("v0", Some(D2)),
            tag("v1", Some(D1)),
            tag(&sig(D1, "sig"), None),
            tag(&sig(D1, "sbom"), None),
        ];
        let d = diff(Some(&prev), listing, &all(), true);
        assert_eq!(kinds(&d), vec![(ChangeKind::Added, "v1")]);
        assert_eq!(d.changes[0].details.signed, Some(true));
        assert_eq!(d.changes[0].details.attestations, Some(vec!["sbom"]));
        assert!(d.snapshot.tags.contains_key(&sig(D1, "sig")), "remembered");
        assert!(
            needs_digest(Some(&prev), &[tag(&sig(D1, "sig"), None)], &all()).is_empty(),
            "a signature tag is never looked up"
        );
    }

    #[test]
    fn a_later_signature_is_its_own_event_naming_the_subject_tags() {
        let prev = snap(&[("v1", Some(D1)), ("stable", Some(D1)), ("v0", Some(D2))]);
        let listing = vec![
            tag("v1", Some(D1)),
            tag("stable", Some(D1)),
            tag("v0", Some(D2)),
            tag(&sig(D1, "sig"), None),
            tag(&sig(D1, "att"), None),
            // A signature for a digest nobody tagged before is nobody's news.
            tag(&sig(&format!("sha256:{}", "3".repeat(64)), "sig"), None),
        ];
        let d = diff(Some(&prev), listing, &all(), true);
        assert_eq!(
            kinds(&d),
            vec![
                (ChangeKind::AttestationAdded, sig(D1, "att").as_str()),
                (ChangeKind::SignatureAdded, sig(D1, "sig").as_str())
            ]
        );
        let s = &d.changes[1];
        assert_eq!(s.digest.as_deref(), Some(D1));
        assert_eq!(s.details.tags, Some(vec!["stable".into(), "v1".into()]));
        assert_eq!(d.changes[0].details.attestations, Some(vec!["att"]));
        // The next cycle sees nothing new, and a removed signature is no tag.removed.
        let again = diff(Some(&d.snapshot), vec![tag("v1", Some(D1))], &all(), true);
        assert_eq!(
            kinds(&again),
            vec![(ChangeKind::Removed, "stable"), (ChangeKind::Removed, "v0")]
        );
    }

    #[test]
    fn a_signature_names_only_reported_tags_and_none_for_an_unreported_image() {
        // Listings with digests (GCR's manifest map, ECR) give excluded tags a digest too.
        let filter = TagFilter {
            exclude: vec![Regex::new("^dev").unwrap()],
            ..TagFilter::default()
        };
        let prev = snap(&[("v1", Some(D1)), ("dev-1", Some(D1)), ("dev-2", Some(D2))]);
        let listing = vec![
            tag("v1", Some(D1)),
            tag("dev-1", Some(D1)),
            tag("dev-2", Some(D2)),
            tag(&sig(D1, "sig"), None),
            tag(&sig(D2, "sig"), None),
            tag(&sig(D2, "att"), None),
        ];
        let d = diff(Some(&prev), listing, &filter, true);
        assert_eq!(
            kinds(&d),
            vec![(ChangeKind::SignatureAdded, sig(D1, "sig").as_str())],
            "nothing for dev-2, which the filter never reported"
        );
        assert_eq!(d.changes[0].details.tags, Some(vec!["v1".into()]));
    }

    #[test]
    fn a_signature_is_reported_once_per_signature_tag() {
        let s1 = sig(D1, "sig");
        let prev = snap(&[("v1", Some(D1)), (&s1, Some(D2))]);
        // Re-pushed in place (a listing with digests shows its new digest): nothing.
        let listing = vec![tag("v1", Some(D1)), tag(&s1, Some(D1))];
        let d = diff(Some(&prev), listing, &all(), true);
        assert!(d.changes.is_empty(), "{:?}", d.changes);
        // Seen deleted, then back: a new signature.added.
        let gone = diff(Some(&d.snapshot), vec![tag("v1", Some(D1))], &all(), true);
        assert!(gone.changes.is_empty(), "{:?}", gone.changes);
        let back = diff(
            Some(&gone.snapshot),
            vec![tag("v1", Some(D1)), tag(&s1, None)],
            &all(),
            true,
        );
        assert_eq!(
            kinds(&back),
            vec![(ChangeKind::SignatureAdded, s1.as_str())]
        );
    }

    #[test]
    fn a_signature_in_a_busy_cycle_follows_its_image() {
        const D3: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";
        let filter = TagFilter {
            mutable: vec!["latest".into(), "edge".into()],
            ..TagFilter::default()
        };
        let prev = snap(&[("latest", Some(D1)), ("edge", Some(D2)), ("v2", Some(D2))]);
        // An unrelated move (v2's edge) with v2's signature, and latest moving away from D1 just
        // as D1's signature arrives.
        let listing = vec![
            tag("latest", Some(D3)),
            tag("edge", Some(D3)),
            tag("v2", Some(D2)),
            tag(&sig(D2, "sig"), None),
            tag(&sig(D1, "sig"), None),
        ];
        let d = diff(Some(&prev), listing, &filter, true);
        assert_eq!(
            kinds(&d),
            vec![
                (ChangeKind::Updated, "edge"),
                (ChangeKind::Updated, "latest"),
                (ChangeKind::SignatureAdded, sig(D2, "sig").as_str()),
            ],
            "nothing for D1, which no tag points at any more"
        );
        assert_eq!(d.changes[0].details.signed, Some(false));
        assert_eq!(d.changes[2].details.tags, Some(vec!["v2".into()]));
        // latest comes back to D1: its update says signed.
        let listing = vec![
            tag("latest", Some(D1)),
            tag("edge", Some(D3)),
            tag("v2", Some(D2)),
            tag(&sig(D2, "sig"), None),
            tag(&sig(D1, "sig"), None),
        ];
        let back = diff(Some(&d.snapshot), listing, &filter, true);
        assert_eq!(kinds(&back), vec![(ChangeKind::Updated, "latest")]);
        assert_eq!(back.changes[0].details.signed, Some(true));
    }

    #[test]
    fn an_absurd_mature_after_is_a_deadline_that_never_comes() {
        // humantime accepts up to u64::MAX seconds, past what a SystemTime can hold.
        // Past u64 milliseconds (a hundred billion years) but within SystemTime, too.
        for secs in [u64::MAX, 100_000_000_000 * 31_557_600] {
            let after = Some(Duration::from_secs(secs));
            let mut d = diff(Some(&snap(&[])), vec![tag("v1", Some(D1))], &all(), false);
            mature(&mut d, after, SystemTime::now());
            assert_eq!(d.snapshot.maturing["v1"].deadline_ms, u64::MAX, "{secs}");
            let mut later = diff(Some(&d.snapshot), vec![tag("v1", Some(D1))], &all(), false);
            mature(
                &mut later,
                after,
                SystemTime::now() + Duration::from_secs(1 << 40),
            );
            assert!(later.changes.is_empty(), "{secs}");
        }
    }

    #[test]
    fn a_tag_the_filter_no_longer_selects_never_matures() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000);
        let after = Some(Duration::from_secs(5));
        let mut d = diff(Some(&snap(&[])), vec![tag("v1", Some(D1))], &all(), false);
        mature(&mut d, after, t0);
        let narrowed = TagFilter {
            exclude: vec![Regex::new("^v1$").unwrap()],
            ..TagFilter::default()
        };
        let mut due = diff(
            Some(&d.snapshot),
            vec![tag("v1", Some(D1))],
            &narrowed,
            false,
        );
        mature(&mut due, after, t0 + Duration::from_secs(6));
        assert!(due.changes.is_empty(), "{:?}", due.changes);
    }

    #[test]
    fn signature_tags_can_be_reported_as_tags() {
        let filter = TagFilter {
            signature_tags: true,
            ..TagFilter::default()
        };
        let prev = snap(&[("v1", Some(D1))]);
        let listing = vec![tag("v1", Some(D1)), tag(&sig(D1, "sig"), Some(D2))];
        let d = diff(Some(&prev), listing, &filter, false);
        assert_eq!(
            kinds(&d),
            vec![(ChangeKind::Added, sig(D1, "sig").as_str())]
        );
    }

    #[test]
    fn platforms_annotate_changes_and_required_ones_filter_them() {
        let arm = |extra: &[&str]| -> Vec<String> {
            ["linux/amd64", "linux/arm64"]
                .iter()
                .chain(extra)
                .map(|p| p.to_string())
                .collect()
        };
        let mut prev = snap(&[("multi", Some(D1)), ("amd", Some(D2))]);
        prev.platforms.insert(D1.into(), arm(&[]));
        let d3 = format!("sha256:{}", "3".repeat(64));
        let d4 = format!("sha256:{}", "4".repeat(64));
        let listing = vec![
            tag("multi", Some(&d3)),
            tag("amd", Some(&d4)),
            tag("again", Some(&d3)),
        ];
        let mut d = diff(Some(&prev), listing, &all(), false);
        assert_eq!(
            needs_platforms(&d),
            vec![(d3.clone(), "again".into()), (d4.clone(), "amd".into())],
            "each unknown digest once"
        );
        d.snapshot
            .platforms
            .insert(d3.clone(), arm(&["linux/arm/v7"]));
        d.snapshot
            .platforms
            .insert(d4.clone(), vec!["linux/amd64".into()]);
        assert!(needs_platforms(&d).is_empty());
        let mut required = Diff {
            snapshot: d.snapshot.clone(),
            changes: d.changes.clone(),
        };
        annotate_platforms(&mut d, Some(&prev), &[]);
        let multi = d.changes.iter().find(|c| c.tag == "multi").unwrap();
        assert_eq!(multi.details.platforms, Some(arm(&["linux/arm/v7"])));
        assert_eq!(
            multi.details.platforms_added,
            Some(vec!["linux/arm/v7".to_string()])
        );
        let amd = d.changes.iter().find(|c| c.tag == "amd").unwrap();
        assert_eq!(
            amd.details.platforms_added, None,
            "D2's platforms were never looked up"
        );
        annotate_platforms(&mut required, Some(&prev), &["linux/arm64".into()]);
        assert_eq!(
            kinds(&required),
            vec![(ChangeKind::Added, "again"), (ChangeKind::Updated, "multi")]
        );
        assert_eq!(
            required.snapshot.tags.get("amd"),
            Some(&Some(d4)),
            "remembered"
        );
    }

    #[test]
    fn a_reported_tag_matures_once_unless_it_moves() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000);
        let after = Some(Duration::from_secs(5));
        let prev = snap(&[]);
        let mut d = diff(
            Some(&prev),
            vec![tag("v1", Some(D1)), tag("v2", Some(D1))],
            &all(),
            false,
        );
        mature(&mut d, after, t0);
        assert_eq!(d.snapshot.maturing.len(), 2);
        // Before the deadline: nothing; v2 moves, so only v1 can mature.
        let mut early = diff(
            Some(&d.snapshot),
            vec![tag("v1", Some(D1)), tag("v2", Some(D2))],
            &all(),
            false,
        );
        mature(&mut early, after, t0 + Duration::from_secs(4));
        assert_eq!(kinds(&early), vec![(ChangeKind::Updated, "v2")]);
        let mut due = diff(
            Some(&early.snapshot),
            vec![tag("v1", Some(D1)), tag("v2", Some(D2))],
            &all(),
            false,
        );
        mature(&mut due, after, t0 + Duration::from_secs(5));
        assert_eq!(kinds(&due), vec![(ChangeKind::Matured, "v1")]);
        assert_eq!(due.changes[0].digest.as_deref(), Some(D1));
        // Once only; v2's own deadline counts from its move.
        let mut later = diff(
            Some(&due.snapshot),
            vec![tag("v1", Some(D1)), tag("v2", Some(D2))],
            &all(),
            false,
        );
        mature(&mut later, after, t0 + Duration::from_secs(8));
        assert!(later.changes.is_empty(), "{:?}", later.changes);
        mature(&mut later, after, t0 + Duration::from_secs(9));
        assert_eq!(kinds(&later), vec![(ChangeKind::Matured, "v2")]);
        // Turning the option off forgets the deadlines.
        mature(&mut later, None, t0);
        assert!(later.snapshot.maturing.is_empty());
    }

    #[test]
    fn a_signature_of_an_image_require_platforms_dropped_is_not_reported() {
        let mut prev = snap(&[("multi", Some(D1)), ("amd", Some(D2))]);
        let both = vec!["linux/amd64".to_string(), "linux/arm64".to_string()];
        prev.platforms.insert(D1.into(), both);
        prev.platforms.insert(D2.into(), vec!["linux/amd64".into()]);
        let listing = vec![
            tag("multi", Some(D1)),
            tag("amd", Some(D2)),
            tag(&sig(D1, "sig"), None),
            tag(&sig(D2, "sig"), None),
            tag(&sig(D2, "att"), None),
        ];
        let mut d = diff(Some(&prev), listing, &all(), false);
        annotate_platforms(&mut d, Some(&prev), &["linux/arm64".into()]);
        assert_eq!(
            kinds(&d),
            vec![(ChangeKind::SignatureAdded, sig(D1, "sig").as_str())],
            "amd was never reported"
        );
    }

    #[test]
    fn a_signature_names_no_tag_the_version_policy_never_reports() {
        const D3: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";
        let filter = TagFilter {
            versions: Some(VersionPolicy::new(
                Some(semver::VersionReq::parse(">=1, <2").unwrap()),
                false,
                false,
            )),
            ..TagFilter::default()
        };
        // Pre-releases (prerelease = false), versions out of range and, with a range, tags that
        // are no version are never reported, though the snapshot keeps their digests.
        let tagged = [
            ("v1.0.0", D1),
            ("v1.1.0-rc.1", D1),
            ("v1.2.0-rc.1", D2),
            ("v3.0.0", D3),
            ("edge", D3),
        ];
        let prev = snap(&tagged.map(|(t, d)| (t, Some(d))));
        let mut listing: Vec<Tag> = tagged.iter().map(|(t, d)| tag(t, Some(d))).collect();
        listing.extend([D1, D2, D3].map(|d| tag(&sig(d, "sig"), None)));
        let d = diff(Some(&prev), listing, &filter, true);
        assert_eq!(
            kinds(&d),
            vec![(ChangeKind::SignatureAdded, sig(D1, "sig").as_str())]
        );
        assert_eq!(d.changes[0].details.tags, Some(vec!["v1.0.0".into()]));
    }

    #[test]
    fn versions_drop_unreported_tags_and_fill_details() {
        let filter = TagFilter {
            exclude: vec![Regex::new("^v9").unwrap()],
            versions: Some(VersionPolicy::new(None, false, true)),
            ..TagFilter::default()
        };
        // v9.0.0 is filtered out, so it is no version "known before" either.
        let prev = snap(&[("v1.0.0", Some(D1)), ("v9.0.0", Some(D1))]);
        let listing = vec![
            tag("v1.0.0", Some(D1)),
            tag("v9.0.0", Some(D1)),
            tag("v1.2.0", Some(D2)),
            tag("v0.9.0", Some(D2)),
            tag("v2.0.0-rc.1", Some(D2)),
            tag("edge", Some(D2)),
        ];
        let d = diff(Some(&prev), listing, &filter, false);
        assert_eq!(kinds(&d), vec![(ChangeKind::Added, "v1.2.0")]);
        let details = &d.changes[0].details;
        assert_eq!(details.version, Some(Some("1.2.0".into())));
        assert_eq!((details.bump, details.latest), (Some("minor"), Some(true)));
        assert_eq!(
            d.snapshot.tags.len(),
            6,
            "unreported tags are still remembered"
        );

        // A moved tag that is no version stays reported under only_newer, with a null version.
        let prev = snap(&[("latest", Some(D1))]);
        let d = diff(Some(&prev), vec![tag("latest", Some(D2))], &filter, false);
        assert_eq!(kinds(&d), vec![(ChangeKind::Updated, "latest")]);
        assert_eq!(d.changes[0].details.version, Some(None));
        let json = serde_json::to_value(&d.changes[0].details).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"version": null, "signed": false, "attestations": []})
        );
    }
}
