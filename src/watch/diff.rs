//! The pure heart of regwatch: a previous snapshot and a complete listing in, changes out.
//!
//! Only complete listings ever reach this module; a failed or partial listing is dropped before,
//! so a missing tag here really is a removed tag.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
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
    /// New tags that `only_newer` kept back (not above a version known before) or
    /// `require_platforms` kept out, so never reported: neither their signatures nor their
    /// removal is news. A tag leaves the set when it leaves the listing or a move of it is
    /// reported.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub held_back: BTreeSet<String>,
}

impl Snapshot {
    /// Whether `other` holds the same state, whatever the revisions: nothing to commit.
    pub fn same_content(&self, other: &Snapshot) -> bool {
        self.tags == other.tags
            && self.maturing == other.maturing
            && self.platforms == other.platforms
            && self.held_back == other.held_back
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
    /// The version's variant (`alpine` in `1.2.3-alpine`), lower-cased; empty for none. Set
    /// with a non-null `version`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// How the version relates to what was known before in its variant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bump: Option<&'static str>,
    /// Whether it is now the highest counted version of its variant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest: Option<bool>,
    /// For a floating tag (`bump = "floating"`): the version of the most specific tag on the
    /// same digest, when the listing shows one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub points_to: Option<String>,
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

    for tag in one_entry_per_tag(listing) {
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
    let mut held_back = Vec::new();
    if let Some(policy) = filter.versions.as_ref().filter(|_| !changes.is_empty()) {
        held_back = apply_versions(&mut changes, policy, prev, &snapshot, filter);
    }
    if !prev.held_back.is_empty() {
        let reported_now: HashSet<&str> = changes.iter().map(|c| c.tag.as_str()).collect();
        snapshot.held_back = prev
            .held_back
            .iter()
            .filter(|t| snapshot.tags.contains_key(*t) && !reported_now.contains(t.as_str()))
            .cloned()
            .collect();
    }
    snapshot.held_back.extend(held_back);
    for change in &mut changes {
        if let Some(digest) = &change.digest {
            annotate_cosign(&mut change.details, digest, &snapshot);
        }
    }
    let cosign_new: Vec<_> = cosign_new
        .iter()
        .filter_map(|t| Some((t, cosign_subject(t)?)))
        .collect();
    if !cosign_new.is_empty() {
        // Indexed once: a signed backlog brings thousands of signatures in one cycle.
        let (before, now) = (subjects(prev, filter), subjects(&snapshot, filter));
        changes.extend(
            cosign_new
                .into_iter()
                .filter_map(|(t, (subject, kind))| cosign_change(t, subject, kind, &before, &now)),
        );
    }

    if emit_removed && previous.is_some() {
        for (name, digest) in &prev.tags {
            if !snapshot.tags.contains_key(name)
                && reported(filter, name)
                && !prev.held_back.contains(name)
            {
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
    if !prev.platforms.is_empty() {
        let tagged: HashSet<&str> = snapshot
            .tags
            .values()
            .flatten()
            .map(String::as_str)
            .collect();
        snapshot.platforms = prev
            .platforms
            .iter()
            .filter(|(d, _)| tagged.contains(d.as_str()))
            .map(|(d, p)| (d.clone(), p.clone()))
            .collect();
    }
    // Only reported tags mature: a config edit may have stopped reporting one.
    snapshot.maturing = prev
        .maturing
        .iter()
        .filter(|(t, _)| reported(filter, t))
        .map(|(t, m)| (t.clone(), m.clone()))
        .collect();
    changes.sort_by(|a, b| a.tag.cmp(&b.tag));
    Diff { snapshot, changes }
}

/// Drops the added and moved tags `policy` does not report and fills `version`, `variant`,
/// `bump`, `latest` and `points_to` on the others. Only the tags the filter selects are versions
/// "known" to compare with. Returns the added tags that only `only_newer` kept back.
fn apply_versions(
    changes: &mut Vec<Change>,
    policy: &VersionPolicy,
    prev: &Snapshot,
    snapshot: &Snapshot,
    filter: &TagFilter,
) -> Vec<String> {
    let before = prev
        .tags
        .keys()
        .map(String::as_str)
        .filter(|t| filter.selects(t));
    let after = snapshot
        .tags
        .iter()
        .filter(|(t, _)| filter.selects(t))
        .map(|(t, d)| (t.as_str(), d.as_deref()));
    let index = VersionIndex::new(policy, before, after);
    let mut held_back = Vec::new();
    changes.retain_mut(|c| {
        let verdict = index.judge(&c.tag, c.digest.as_deref(), c.kind == ChangeKind::Added);
        if verdict.report {
            c.details.bump = verdict.bump.map(Bump::as_str);
            c.details.latest = verdict.version.is_some().then_some(verdict.latest);
            c.details.points_to = verdict.points_to;
            let (version, variant) = verdict.version.unzip();
            c.details.variant = variant;
            c.details.version = Some(version);
        } else if c.kind == ChangeKind::Added && policy.admits(&c.tag) {
            held_back.push(c.tag.clone());
        }
        verdict.report
    });
    held_back
}

/// Sets `signed` and `attestations` from the cosign tags `snapshot` lists for `digest`.
fn annotate_cosign(details: &mut Details, digest: &str, snapshot: &Snapshot) {
    let has = |kind| cosign_tag(digest, kind).is_some_and(|t| snapshot.tags.contains_key(&t));
    details.signed = Some(has("sig"));
    details.attestations = Some(["att", "sbom"].into_iter().filter(|k| has(k)).collect());
}

/// Whether `filter` reports `tag` (selected, and admitted by the version policy): only such tags
/// make an image news for a signature, a removal or a maturity.
fn reported(filter: &TagFilter, tag: &str) -> bool {
    filter.selects(tag) && filter.versions.as_ref().is_none_or(|p| p.admits(tag))
}

/// The reported tags (never cosign's own) pointing at each digest of `s`, in tag order.
fn subjects<'a>(s: &'a Snapshot, filter: &TagFilter) -> HashMap<&'a str, Vec<&'a str>> {
    let mut by_digest: HashMap<&str, Vec<&str>> = HashMap::new();
    for (tag, digest) in &s.tags {
        if let Some(digest) = digest
            && cosign_subject(tag).is_none()
            && reported(filter, tag)
            && !s.held_back.contains(tag)
        {
            by_digest.entry(digest).or_default().push(tag);
        }
    }
    by_digest
}

/// At most this many tags in a signature event's `tags` (in tag order): a digest tagged by every
/// CI build would otherwise make an event past Kafka's message limit, which blocks the outbox.
pub const MAX_SUBJECT_TAGS: usize = 100;

/// The event for a cosign tag (of `kind`, for `subject`) that appeared after its subject was
/// reported: the subject digest was already tagged `before`. Its tags are those pointing at it
/// `now`.
fn cosign_change(
    tag: &str,
    subject: String,
    kind: &'static str,
    before: &HashMap<&str, Vec<&str>>,
    now: &HashMap<&str, Vec<&str>>,
) -> Option<Change> {
    before.get(subject.as_str())?;
    let tags: Vec<String> = now
        .get(subject.as_str())?
        .iter()
        .take(MAX_SUBJECT_TAGS)
        .map(|t| t.to_string())
        .collect();
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

/// Takes `tags` out of `outcome` as if this listing had not seen them change: their changes are
/// dropped, and the snapshot keeps what `previous` knew of them (a new tag is left out). For tags
/// whose lookups failed: the next scan diffs them again.
pub fn withhold(outcome: &mut Diff, previous: Option<&Snapshot>, tags: &BTreeSet<String>) {
    // Every change of theirs: a cosign tag's signature.added names the digest that failed too.
    outcome.changes.retain(|c| !tags.contains(&c.tag));
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
/// tag, so a later re-push that has them is an update. A new tag kept out is held back, as
/// `only_newer` holds one back: never reported, so its removal is no news either.
pub fn annotate_platforms(outcome: &mut Diff, previous: Option<&Snapshot>, require: &[String]) {
    let Diff { snapshot, changes } = outcome;
    let known = &snapshot.platforms;
    let was_held = |tag: &str| previous.is_some_and(|p| p.held_back.contains(tag));
    let mut kept_out = Vec::new();
    changes.retain_mut(|change| {
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
        let report = require
            .iter()
            .all(|r| platforms.is_some_and(|p| p.contains(r)));
        if !report && (change.kind == ChangeKind::Added || was_held(&change.tag)) {
            kept_out.push(change.tag.clone());
        }
        report
    });
    snapshot.held_back.extend(kept_out);
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

    /// A version policy without pre-releases, within `range` if any.
    fn releases(range: Option<&str>, only_newer: bool) -> Option<VersionPolicy> {
        let range = range.map(|r| semver::VersionReq::parse(r).unwrap());
        Some(VersionPolicy::new(range, false, only_newer))
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

    /// Tags whose lookups failed are taken out whole: their signature.added too (it names the
    /// digest that failed), and a held-back tag stays held back, so neither comes back later as
    /// news twice or as a phantom removal.
    #[test]
    fn withheld_tags_leave_no_change_behind() {
        let mut prev = snap(&[("v1", Some(D1)), ("held", Some(D2))]);
        prev.held_back.insert("held".into());
        let listing = tags_of(&[("v1", D1), ("v2", D1), ("held", D3)], &[(D1, "sig")]);
        let mut d = diff(Some(&prev), listing, &all(), true);
        assert!(
            d.changes
                .iter()
                .any(|c| c.kind == ChangeKind::SignatureAdded),
            "{:?}",
            kinds(&d)
        );
        let tags: BTreeSet<String> = ["v2".to_string(), sig(D1, "sig"), "held".to_string()]
            .into_iter()
            .collect();
        withhold(&mut d, Some(&prev), &tags);
        assert!(d.changes.is_empty(), "{:?}", kinds(&d));
        assert!(!d.snapshot.tags.contains_key("v2"));
        assert!(!d.snapshot.tags.contains_key(&sig(D1, "sig")));
        assert_eq!(d.snapshot.tags.get("held"), Some(&Some(D2.to_string())));
        assert!(d.snapshot.held_back.contains("held"));
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
            diff(Some(&prev), l1.clone(), &all(), true),
            diff(Some(&prev), l2, &all(), true)
        );
        // A name listed twice is one tag, in any order: one `Added` for `c`, not two.
        let mut l3 = l1.clone();
        l3.push(tag("c", Some("sha256:c")));
        l3.rotate_right(1);
        let once = diff(Some(&prev), l1, &all(), true);
        assert_eq!(diff(Some(&prev), l3, &all(), true), once);
        assert_eq!(
            once.changes
                .iter()
                .filter(|c| c.tag == "c" && c.kind == ChangeKind::Added)
                .count(),
            1
        );
        // Twice with two digests: neither is believed.
        let conflicting = vec![tag("c", Some("sha256:c")), tag("c", Some("sha256:x"))];
        let d = diff(Some(&prev), conflicting, &all(), false);
        assert_eq!(d.snapshot.tags.get("c"), Some(&None));
    }

    fn sig(digest: &str, kind: &str) -> String {
        cosign_tag(digest, kind).unwrap()
    }

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
    const D3: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";

    /// A listing: `tagged` as (tag, digest), then the cosign tags `sigs` as (subject, kind),
    /// listed without a digest.
    fn tags_of(tagged: &[(&str, &str)], sigs: &[(&str, &str)]) -> Vec<Tag> {
        let tags = tagged.iter().map(|(t, d)| tag(t, Some(d)));
        tags.chain(sigs.iter().map(|(d, kind)| tag(&sig(d, kind), None)))
            .collect()
    }

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
        let listing = tags_of(&[("v0", D2), ("v1", D1)], &[(D1, "sig"), (D1, "sbom")]);
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
    /// Signing a backlog brings many signature tags in one cycle: each is one signature.added.
    /// What it costs (one pass over the tags, not one per signature) is measured by the
    /// benchmark (`cargo bench --bench scan -- diff`), not here: wall-clock bounds in a test are
    /// noise on a busy machine.
    #[test]
    fn many_new_signatures_each_give_one_signature_added() {
        let digest = |i: usize| format!("sha256:{i:064x}");
        let listing: Vec<Tag> = (0..5_000)
            .map(|i| tag(&format!("t{i}"), Some(&digest(i))))
            .collect();
        let prev = diff(Some(&Snapshot::default()), listing.clone(), &all(), false).snapshot;
        let mut signed = listing;
        signed.extend((0..2_000).map(|i| tag(&sig(&digest(i), "sig"), None)));
        let d = diff(Some(&prev), signed, &all(), false);
        assert_eq!(d.changes.len(), 2_000, "one signature.added each");
        assert!(
            d.changes
                .iter()
                .all(|c| c.kind == ChangeKind::SignatureAdded)
        );
    }

    /// A signature is news only for an image that was reported (issue 12: "arrives *after* its
    /// image was reported"). Cosign signs right after the push, so it usually lands a cycle after
    /// its image; a deployer gating on signatures deploys on signature.added. An image whose tags
    /// the filter or the version policy keep out (excluded, outside `range`, a pre-release with
    /// `prerelease = false`, no version while `range` is set) gets none, and `tags` names only
    /// reported tags.
    #[test]
    fn a_signature_for_an_image_never_reported_is_no_news() {
        let filter = TagFilter {
            exclude: vec![Regex::new("^dev-").unwrap()],
            versions: releases(Some(">=1, <2"), false),
            ..TagFilter::default()
        };
        let d: Vec<String> = (1..=5).map(d_of).collect();
        let tagged = [
            ("dev-7", &d[0]),
            ("2.0.0", &d[1]),
            ("1.1.0-rc.1", &d[2]),
            ("edge", &d[3]),
            ("1.0.0", &d[4]),
            ("dev-5", &d[4]),
        ];
        let prev = snap(&tagged.map(|(t, digest)| (t, Some(digest.as_str()))));
        let mut listing: Vec<Tag> = tagged
            .iter()
            .map(|(t, digest)| tag(t, Some(digest)))
            .collect();
        listing.extend(d.iter().map(|digest| tag(&sig(digest, "sig"), None)));
        let d = diff(Some(&prev), listing, &filter, false);
        assert_eq!(
            kinds(&d),
            vec![(ChangeKind::SignatureAdded, sig(&d_of(5), "sig").as_str())]
        );
        assert_eq!(d.changes[0].details.tags, Some(vec!["1.0.0".into()]));
    }

    /// Issue 12: tags outside `range` "are not reported", and pre-releases only with
    /// `prerelease = true`. A removal is a report too: with `emit_removed`, a tag the policy
    /// never reports leaves silently, while a reported version's removal is a `tag.removed`.
    #[test]
    fn removals_follow_the_version_policy() {
        let filter = TagFilter {
            versions: releases(Some(">=1, <2"), false),
            ..TagFilter::default()
        };
        let prev = snap(&[
            ("1.0.0", Some(D1)),
            ("1.1.0", Some(D1)),
            ("2.0.0", Some(D2)),
            ("1.2.0-rc.1", Some(D2)),
            ("edge", Some(D2)),
        ]);
        let d = diff(Some(&prev), vec![tag("1.1.0", Some(D1))], &filter, true);
        assert_eq!(kinds(&d), vec![(ChangeKind::Removed, "1.0.0")]);
    }

    /// `tag.matured` is for "a reported tag" (issue 12). A tag still maturing when a config edit
    /// stops reporting it (pre-releases turned off, a narrower `range`, an exclude) does not
    /// mature afterwards; the others do.
    #[test]
    fn a_tag_the_config_no_longer_reports_does_not_mature() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000);
        let mut prev = snap(&[("2.0.0-rc.1", Some(D1)), ("1.0.0", Some(D2))]);
        for (t, digest) in [("2.0.0-rc.1", D1), ("1.0.0", D2)] {
            prev.maturing.insert(
                t.into(),
                Maturing {
                    digest: digest.into(),
                    deadline_ms: 1_000_000,
                },
            );
        }
        let filter = TagFilter {
            versions: releases(None, false),
            ..TagFilter::default()
        };
        let listing = vec![tag("2.0.0-rc.1", Some(D1)), tag("1.0.0", Some(D2))];
        let mut d = diff(Some(&prev), listing, &filter, false);
        mature(
            &mut d,
            Some(Duration::from_secs(5)),
            t0 + Duration::from_secs(10),
        );
        assert_eq!(kinds(&d), vec![(ChangeKind::Matured, "1.0.0")]);
        assert!(d.snapshot.maturing.is_empty());
    }

    /// With `only_newer`, a new version not above one known before is held back: never
    /// reported. Its signature arriving a cycle later (the usual cosign flow) must not announce
    /// it, nor must its removal; once a move of it is reported, it is news like any other tag.
    #[test]
    fn a_version_held_back_by_only_newer_stays_unreported() {
        let filter = TagFilter {
            versions: releases(None, true),
            ..TagFilter::default()
        };
        let (d1, d2, d3) = (d_of(1), d_of(2), d_of(3));
        let prev = snap(&[("1.2.0", Some(&d1))]);
        let mut pushed = diff(
            Some(&prev),
            vec![tag("1.2.0", Some(&d1)), tag("1.1.5", Some(&d2))],
            &filter,
            true,
        );
        mature(&mut pushed, Some(Duration::from_secs(5)), UNIX_EPOCH);
        assert!(pushed.changes.is_empty(), "1.1.5 is below 1.2.0");
        assert!(
            pushed.snapshot.maturing.is_empty(),
            "an unreported tag never matures"
        );
        // What is held back survives a restart: it is part of the stored snapshot.
        let stored = serde_json::to_string(&pushed.snapshot).unwrap();
        assert_eq!(
            serde_json::from_str::<Snapshot>(&stored).unwrap(),
            pushed.snapshot
        );
        let signed = diff(
            Some(&pushed.snapshot),
            tags_of(
                &[("1.2.0", d1.as_str()), ("1.1.5", d2.as_str())],
                &[(d2.as_str(), "sig")],
            ),
            &filter,
            true,
        );
        assert!(signed.changes.is_empty(), "{:?}", signed.changes);
        let removed = diff(
            Some(&signed.snapshot),
            vec![tag("1.2.0", Some(&d1))],
            &filter,
            true,
        );
        assert!(removed.changes.is_empty(), "{:?}", removed.changes);

        // A reported move makes it a reported tag: its next signature is news.
        let moved = diff(
            Some(&signed.snapshot),
            vec![tag("1.2.0", Some(&d1)), tag("1.1.5", Some(&d3))],
            &filter,
            true,
        );
        assert_eq!(kinds(&moved), vec![(ChangeKind::Updated, "1.1.5")]);
        let signed = diff(
            Some(&moved.snapshot),
            tags_of(
                &[("1.2.0", d1.as_str()), ("1.1.5", d3.as_str())],
                &[(d3.as_str(), "sig")],
            ),
            &filter,
            true,
        );
        assert_eq!(
            kinds(&signed),
            vec![(ChangeKind::SignatureAdded, sig(&d3, "sig").as_str())]
        );
    }

    /// Platforms looked up before stay known while a tag still points at their digest, and are
    /// forgotten with the last tag that pointed there. The cost of keeping them (one pass over
    /// the tags) is measured by the benchmark (`cargo bench --bench scan -- diff`).
    #[test]
    fn known_platforms_stay_while_a_tag_points_at_them() {
        let digest = |i: usize| format!("sha256:{i:064x}");
        let listing: Vec<Tag> = (0..5_000)
            .map(|i| tag(&format!("t{i}"), Some(&digest(i))))
            .collect();
        let mut prev = diff(Some(&Snapshot::default()), listing.clone(), &all(), false).snapshot;
        prev.platforms = (0..5_000)
            .map(|i| (digest(i), vec!["linux/amd64".to_owned()]))
            .collect();
        // t0 leaves: its digest's platforms are forgotten, the others kept.
        let snapshot = diff(Some(&prev), listing[1..].to_vec(), &all(), false).snapshot;
        assert_eq!(snapshot.platforms.len(), 4_999);
        assert!(!snapshot.platforms.contains_key(&digest(0)));
    }

    fn d_of(i: u32) -> String {
        format!("sha256:{}", i.to_string().repeat(64))
    }

    #[test]
    fn versions_drop_unreported_tags_and_fill_details() {
        let filter = TagFilter {
            exclude: vec![Regex::new("^v9").unwrap()],
            versions: releases(None, true),
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

    #[test]
    fn a_signature_names_only_reported_tags_and_none_for_an_unreported_image() {
        // Listings with digests (GCR's manifest map, ECR) give excluded tags a digest too.
        let filter = TagFilter {
            exclude: vec![Regex::new("^dev").unwrap()],
            ..TagFilter::default()
        };
        let prev = snap(&[("v1", Some(D1)), ("dev-1", Some(D1)), ("dev-2", Some(D2))]);
        let listing = tags_of(
            &[("v1", D1), ("dev-1", D1), ("dev-2", D2)],
            &[(D1, "sig"), (D2, "sig"), (D2, "att")],
        );
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
        let filter = TagFilter {
            mutable: vec!["latest".into(), "edge".into()],
            ..TagFilter::default()
        };
        let prev = snap(&[("latest", Some(D1)), ("edge", Some(D2)), ("v2", Some(D2))]);
        // An unrelated move (v2's edge) with v2's signature, and latest moving away from D1 just
        // as D1's signature arrives.
        let listing = tags_of(
            &[("latest", D3), ("edge", D3), ("v2", D2)],
            &[(D2, "sig"), (D1, "sig")],
        );
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
        let listing = tags_of(
            &[("latest", D1), ("edge", D3), ("v2", D2)],
            &[(D2, "sig"), (D1, "sig")],
        );
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
    fn a_signature_of_an_image_require_platforms_dropped_is_not_reported() {
        let mut prev = snap(&[("multi", Some(D1)), ("amd", Some(D2))]);
        let both = vec!["linux/amd64".to_string(), "linux/arm64".to_string()];
        prev.platforms.insert(D1.into(), both);
        prev.platforms.insert(D2.into(), vec!["linux/amd64".into()]);
        let listing = tags_of(
            &[("multi", D1), ("amd", D2)],
            &[(D1, "sig"), (D2, "sig"), (D2, "att")],
        );
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
        let filter = TagFilter {
            versions: releases(Some(">=1, <2"), false),
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
        let listing = tags_of(&tagged, &[(D1, "sig"), (D2, "sig"), (D3, "sig")]);
        let d = diff(Some(&prev), listing, &filter, true);
        assert_eq!(
            kinds(&d),
            vec![(ChangeKind::SignatureAdded, sig(D1, "sig").as_str())]
        );
        assert_eq!(d.changes[0].details.tags, Some(vec!["v1.0.0".into()]));
    }

    /// A digest can carry thousands of tags (a CI that tags every build of one image); the
    /// signature event naming them all would outgrow Kafka's 1 MB message limit and block the
    /// outbox behind it. It names the first `MAX_SUBJECT_TAGS` in tag order.
    #[test]
    fn a_signature_event_names_a_bounded_number_of_tags() {
        let tagged: Vec<(String, Option<&str>)> = (0..20_000)
            .map(|i| (format!("build-{i:05}-{}", "x".repeat(100)), Some(D1)))
            .collect();
        let prev = Snapshot {
            tags: tagged
                .iter()
                .map(|(t, d)| (t.clone(), d.map(Into::into)))
                .collect(),
            ..Snapshot::default()
        };
        let mut listing: Vec<Tag> = tagged.iter().map(|(t, d)| tag(t, *d)).collect();
        listing.push(tag(&sig(D1, "sig"), None));
        let d = diff(Some(&prev), listing, &all(), false);
        assert_eq!(d.changes.len(), 1);
        let tags = d.changes[0].details.tags.as_ref().unwrap();
        assert_eq!(tags.len(), MAX_SUBJECT_TAGS);
        assert_eq!(tags[0], tagged[0].0);
    }
}
