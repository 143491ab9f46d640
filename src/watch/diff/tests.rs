//! Tests of the diff stages, one fixture at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use regex::Regex;

use super::*;
use crate::config::TagFilter;
use crate::registry::Tag;
use crate::watch::versions::VersionPolicy;

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
    d.changes.iter().map(|c| (c.kind(), c.tag())).collect()
}

/// The tags stage, one fixture per row: the previous snapshot (`None` = baseline), the listing
/// (`tag=digest`, `tag=` for no digest), `emit_removed`, then the changes (`kind tag digest
/// [previous]`) and the stored snapshot (`tag=digest`).
#[test]
fn tags_stage_fixtures() {
    type Row = (
        &'static str,
        Option<&'static str>,
        &'static str,
        bool,
        &'static [&'static str],
        &'static str,
    );
    let rows: &[Row] = &[
        (
            "a baseline records and emits nothing",
            None,
            "a= b=sha256:b",
            true,
            &[],
            "a= b=sha256:b",
        ),
        (
            "a new tag is added with its digest",
            Some("a="),
            "a= b=sha256:b",
            false,
            &["added b sha256:b"],
            "a= b=sha256:b",
        ),
        (
            "an empty previous snapshot makes everything new",
            Some(""),
            "x=sha256:1 y=sha256:2",
            false,
            &["added x sha256:1", "added y sha256:2"],
            "x=sha256:1 y=sha256:2",
        ),
        (
            "a moved digest is an update with the previous one",
            Some("latest=sha256:old"),
            "latest=sha256:new",
            false,
            &["updated latest sha256:new sha256:old"],
            "latest=sha256:new",
        ),
        // A digest learned for a baseline tag is kept; an unlisted digest is carried over.
        (
            "the same or an unknown digest is quiet",
            Some("latest=sha256:a v1=sha256:v1 old="),
            "latest=sha256:a v1= old=sha256:o",
            true,
            &[],
            "latest=sha256:a old=sha256:o v1=sha256:v1",
        ),
        (
            "a removal is quiet unless asked",
            Some("a=sha256:a b="),
            "b=",
            false,
            &[],
            "b=",
        ),
        (
            "a removal is reported with its last digest",
            Some("a=sha256:a b="),
            "b=",
            true,
            &["removed a sha256:a"],
            "b=",
        ),
        (
            "a removed tag never digested has none",
            Some("a= b="),
            "b=",
            true,
            &["removed a -"],
            "b=",
        ),
    ];
    let parse = |s: &str| -> Vec<(String, Option<String>)> {
        s.split_whitespace()
            .map(|e| {
                let (t, d) = e.split_once('=').unwrap();
                (t.to_owned(), (!d.is_empty()).then(|| d.to_owned()))
            })
            .collect()
    };
    for (name, previous, listing, emit_removed, changes, stored) in rows {
        let previous = previous.map(|p| Snapshot {
            tags: parse(p).into_iter().collect(),
            ..Snapshot::default()
        });
        let listing = parse(listing)
            .into_iter()
            .map(|(t, d)| tag(&t, d.as_deref()))
            .collect();
        let d = evaluate(previous.as_ref(), listing, &all(), *emit_removed);
        let seen: Vec<String> = d
            .changes
            .iter()
            .map(|c| {
                let kind = format!("{:?}", c.kind()).to_lowercase();
                let digest = c.digest().unwrap_or("-");
                match c.previous_digest() {
                    Some(p) => format!("{kind} {} {digest} {p}", c.tag()),
                    None => format!("{kind} {} {digest}", c.tag()),
                }
            })
            .collect();
        assert_eq!(seen, *changes, "{name}");
        let expected: BTreeMap<String, Option<String>> = parse(stored).into_iter().collect();
        assert_eq!(d.snapshot.tags, expected, "{name}");
    }
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
    let d = evaluate(Some(&prev), listing, &filter, true);
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
    let mut d = evaluate(Some(&prev), listing, &all(), true);
    assert!(
        d.changes
            .iter()
            .any(|c| c.kind() == ChangeKind::SignatureAdded),
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
        evaluate(Some(&prev), l1.clone(), &all(), true),
        evaluate(Some(&prev), l2, &all(), true)
    );
    // A name listed twice is one tag, in any order: one `Added` for `c`, not two.
    let mut l3 = l1.clone();
    l3.push(tag("c", Some("sha256:c")));
    l3.rotate_right(1);
    let once = evaluate(Some(&prev), l1, &all(), true);
    assert_eq!(evaluate(Some(&prev), l3, &all(), true), once);
    assert_eq!(
        once.changes
            .iter()
            .filter(|c| c.tag() == "c" && c.kind() == ChangeKind::Added)
            .count(),
        1
    );
    // Twice with two digests: neither is believed.
    let conflicting = vec![tag("c", Some("sha256:c")), tag("c", Some("sha256:x"))];
    let d = evaluate(Some(&prev), conflicting, &all(), false);
    assert_eq!(d.snapshot.tags.get("c"), Some(&None));
}

fn sig(digest: &str, kind: &str) -> String {
    cosign::cosign_tag(digest, kind).unwrap()
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
    let d = evaluate(Some(&prev), listing, &all(), true);
    assert_eq!(kinds(&d), vec![(ChangeKind::Added, "v1")]);
    assert_eq!(d.changes[0].details().signed, Some(true));
    assert_eq!(d.changes[0].details().attestations, Some(vec!["sbom"]));
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
    let d = evaluate(Some(&prev), listing, &all(), true);
    assert_eq!(
        kinds(&d),
        vec![
            (ChangeKind::AttestationAdded, sig(D1, "att").as_str()),
            (ChangeKind::SignatureAdded, sig(D1, "sig").as_str())
        ]
    );
    let s = &d.changes[1];
    assert_eq!(s.digest(), Some(D1));
    assert_eq!(s.details().tags, Some(vec!["stable".into(), "v1".into()]));
    assert_eq!(d.changes[0].details().attestations, Some(vec!["att"]));
    // The next cycle sees nothing new, and a removed signature is no tag.removed.
    let again = evaluate(Some(&d.snapshot), vec![tag("v1", Some(D1))], &all(), true);
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
    let d = evaluate(Some(&prev), listing, &filter, false);
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
    let mut d = evaluate(Some(&prev), listing, &all(), false);
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
    let multi = d.changes.iter().find(|c| c.tag() == "multi").unwrap();
    assert_eq!(multi.details().platforms, Some(arm(&["linux/arm/v7"])));
    assert_eq!(
        multi.details().platforms_added,
        Some(vec!["linux/arm/v7".to_string()])
    );
    let amd = d.changes.iter().find(|c| c.tag() == "amd").unwrap();
    assert_eq!(
        amd.details().platforms_added,
        None,
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
    let mut d = evaluate(
        Some(&prev),
        vec![tag("v1", Some(D1)), tag("v2", Some(D1))],
        &all(),
        false,
    );
    mature(&mut d, after, t0);
    assert_eq!(d.snapshot.maturing.len(), 2);
    // Before the deadline: nothing; v2 moves, so only v1 can mature.
    let mut early = evaluate(
        Some(&d.snapshot),
        vec![tag("v1", Some(D1)), tag("v2", Some(D2))],
        &all(),
        false,
    );
    mature(&mut early, after, t0 + Duration::from_secs(4));
    assert_eq!(kinds(&early), vec![(ChangeKind::Updated, "v2")]);
    let mut due = evaluate(
        Some(&early.snapshot),
        vec![tag("v1", Some(D1)), tag("v2", Some(D2))],
        &all(),
        false,
    );
    mature(&mut due, after, t0 + Duration::from_secs(5));
    assert_eq!(kinds(&due), vec![(ChangeKind::Matured, "v1")]);
    assert_eq!(due.changes[0].digest(), Some(D1));
    // Once only; v2's own deadline counts from its move.
    let mut later = evaluate(
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
    let prev = evaluate(Some(&Snapshot::default()), listing.clone(), &all(), false).snapshot;
    let mut signed = listing;
    signed.extend((0..2_000).map(|i| tag(&sig(&digest(i), "sig"), None)));
    let d = evaluate(Some(&prev), signed, &all(), false);
    assert_eq!(d.changes.len(), 2_000, "one signature.added each");
    assert!(
        d.changes
            .iter()
            .all(|c| c.kind() == ChangeKind::SignatureAdded)
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
    let d = evaluate(Some(&prev), listing, &filter, false);
    assert_eq!(
        kinds(&d),
        vec![(ChangeKind::SignatureAdded, sig(&d_of(5), "sig").as_str())]
    );
    assert_eq!(d.changes[0].details().tags, Some(vec!["1.0.0".into()]));
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
    let d = evaluate(Some(&prev), vec![tag("1.1.0", Some(D1))], &filter, true);
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
    let mut d = evaluate(Some(&prev), listing, &filter, false);
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
    let mut pushed = evaluate(
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
    let signed = evaluate(
        Some(&pushed.snapshot),
        tags_of(
            &[("1.2.0", d1.as_str()), ("1.1.5", d2.as_str())],
            &[(d2.as_str(), "sig")],
        ),
        &filter,
        true,
    );
    assert!(signed.changes.is_empty(), "{:?}", signed.changes);
    let removed = evaluate(
        Some(&signed.snapshot),
        vec![tag("1.2.0", Some(&d1))],
        &filter,
        true,
    );
    assert!(removed.changes.is_empty(), "{:?}", removed.changes);

    // A reported move makes it a reported tag: its next signature is news.
    let moved = evaluate(
        Some(&signed.snapshot),
        vec![tag("1.2.0", Some(&d1)), tag("1.1.5", Some(&d3))],
        &filter,
        true,
    );
    assert_eq!(kinds(&moved), vec![(ChangeKind::Updated, "1.1.5")]);
    let signed = evaluate(
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
    let mut prev = evaluate(Some(&Snapshot::default()), listing.clone(), &all(), false).snapshot;
    prev.platforms = (0..5_000)
        .map(|i| (digest(i), vec!["linux/amd64".to_owned()]))
        .collect();
    // t0 leaves: its digest's platforms are forgotten, the others kept.
    let snapshot = evaluate(Some(&prev), listing[1..].to_vec(), &all(), false).snapshot;
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
    let d = evaluate(Some(&prev), listing, &filter, false);
    assert_eq!(kinds(&d), vec![(ChangeKind::Added, "v1.2.0")]);
    let details = d.changes[0].details();
    assert_eq!(details.version, Some(Some("1.2.0".into())));
    assert_eq!((details.bump, details.latest), (Some("minor"), Some(true)));
    assert_eq!(
        d.snapshot.tags.len(),
        6,
        "unreported tags are still remembered"
    );

    // A moved tag that is no version stays reported under only_newer, with a null version.
    let prev = snap(&[("latest", Some(D1))]);
    let d = evaluate(Some(&prev), vec![tag("latest", Some(D2))], &filter, false);
    assert_eq!(kinds(&d), vec![(ChangeKind::Updated, "latest")]);
    assert_eq!(d.changes[0].details().version, Some(None));
    let json = serde_json::to_value(d.changes[0].details()).unwrap();
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
    let d = evaluate(Some(&prev), listing, &filter, true);
    assert_eq!(
        kinds(&d),
        vec![(ChangeKind::SignatureAdded, sig(D1, "sig").as_str())],
        "nothing for dev-2, which the filter never reported"
    );
    assert_eq!(d.changes[0].details().tags, Some(vec!["v1".into()]));
}

#[test]
fn a_signature_is_reported_once_per_signature_tag() {
    let s1 = sig(D1, "sig");
    let prev = snap(&[("v1", Some(D1)), (&s1, Some(D2))]);
    // Re-pushed in place (a listing with digests shows its new digest): nothing.
    let listing = vec![tag("v1", Some(D1)), tag(&s1, Some(D1))];
    let d = evaluate(Some(&prev), listing, &all(), true);
    assert!(d.changes.is_empty(), "{:?}", d.changes);
    // Seen deleted, then back: a new signature.added.
    let gone = evaluate(Some(&d.snapshot), vec![tag("v1", Some(D1))], &all(), true);
    assert!(gone.changes.is_empty(), "{:?}", gone.changes);
    let back = evaluate(
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
    let d = evaluate(Some(&prev), listing, &filter, true);
    assert_eq!(
        kinds(&d),
        vec![
            (ChangeKind::Updated, "edge"),
            (ChangeKind::Updated, "latest"),
            (ChangeKind::SignatureAdded, sig(D2, "sig").as_str()),
        ],
        "nothing for D1, which no tag points at any more"
    );
    assert_eq!(d.changes[0].details().signed, Some(false));
    assert_eq!(d.changes[2].details().tags, Some(vec!["v2".into()]));
    // latest comes back to D1: its update says signed.
    let listing = tags_of(
        &[("latest", D1), ("edge", D3), ("v2", D2)],
        &[(D2, "sig"), (D1, "sig")],
    );
    let back = evaluate(Some(&d.snapshot), listing, &filter, true);
    assert_eq!(kinds(&back), vec![(ChangeKind::Updated, "latest")]);
    assert_eq!(back.changes[0].details().signed, Some(true));
}

#[test]
fn an_absurd_mature_after_is_a_deadline_that_never_comes() {
    // humantime accepts up to u64::MAX seconds, past what a SystemTime can hold.
    // Past u64 milliseconds (a hundred billion years) but within SystemTime, too.
    for secs in [u64::MAX, 100_000_000_000 * 31_557_600] {
        let after = Some(Duration::from_secs(secs));
        let mut d = evaluate(Some(&snap(&[])), vec![tag("v1", Some(D1))], &all(), false);
        mature(&mut d, after, SystemTime::now());
        assert_eq!(d.snapshot.maturing["v1"].deadline_ms, u64::MAX, "{secs}");
        let mut later = evaluate(Some(&d.snapshot), vec![tag("v1", Some(D1))], &all(), false);
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
    let mut d = evaluate(Some(&snap(&[])), vec![tag("v1", Some(D1))], &all(), false);
    mature(&mut d, after, t0);
    let narrowed = TagFilter {
        exclude: vec![Regex::new("^v1$").unwrap()],
        ..TagFilter::default()
    };
    let mut due = evaluate(
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
    let mut d = evaluate(Some(&prev), listing, &all(), false);
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
    let d = evaluate(Some(&prev), listing, &filter, true);
    assert_eq!(
        kinds(&d),
        vec![(ChangeKind::SignatureAdded, sig(D1, "sig").as_str())]
    );
    assert_eq!(d.changes[0].details().tags, Some(vec!["v1.0.0".into()]));
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
    let d = evaluate(Some(&prev), listing, &all(), false);
    assert_eq!(d.changes.len(), 1);
    let tags = d.changes[0].details().tags.unwrap();
    assert_eq!(tags.len(), MAX_SUBJECT_TAGS);
    assert_eq!(tags[0], tagged[0].0);
}

/// An image whose digest is unknown (a new tag listed without one, its lookup not made) says
/// nothing of its signatures: `signed` and `attestations` are left out, not `false` and `[]`.
#[test]
fn an_image_of_unknown_digest_claims_no_signature_state() {
    let d = evaluate(
        Some(&snap(&[])),
        vec![tag("v1", None), tag("v2", Some(D1))],
        &all(),
        false,
    );
    let unknown = d.changes[0].details();
    assert_eq!((unknown.signed, unknown.attestations), (None, None));
    let known = d.changes[1].details();
    assert_eq!(
        (known.signed, known.attestations),
        (Some(false), Some(vec![]))
    );
}
