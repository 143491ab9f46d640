//! Version awareness (`[registry.versions]`, `scheme = "semver"`): which tags are versions, which
//! of them are reported, and how each relates to the versions known before. Pure and cheap: the
//! diff builds one [`VersionIndex`] from the previous and the new snapshot's tag names (those the
//! tag filter selects), then asks [`VersionIndex::judge`] about each added or moved tag.
//!
//! # Normalisation (lenient parsing)
//!
//! Registries name versions loosely, so a tag goes through these steps before `semver` sees it:
//! 1. A leading `v` or `V` is dropped: `v1.2.3` is `1.2.3`.
//! 2. The core is one to three dot-separated numbers, padded with zeros: `1` is `1.0.0`, `1.2` is
//!    `1.2.0`. Numbers are read as integers, so `2024.01.15` is `2024.1.15`. Four numbers, or
//!    letters glued to the core (`1.2.3rc1`), are not a version.
//! 3. Build metadata starts at the first `+` or `_` and is kept in `version` but ignored for ordering,
//!    as semver says. `_` because OCI tags cannot hold `+`, and Helm writes chart `1.2.3+b1` as the tag
//!    `1.2.3_b1`.
//! 4. After the core, a `-` starts a suffix, split at `-` into segments. Leading segments whose first
//!    dot-separated identifier is a number or starts with a pre-release word ([`PRERELEASE_WORDS`],
//!    followed by nothing, a digit or a dot) form the **pre-release**; everything from the first other
//!    segment on is the **variant**:
//!    - `1.2.3-rc.1` is pre-release `rc.1`; `2.0.0-1` is pre-release `1`;
//!    - `1.2.3-alpine`, `3.12-slim-bookworm`, `1.25.3-alpine3.18` are variants `alpine`,
//!      `slim-bookworm`, `alpine3.18` of release versions;
//!    - `1.2.3-rc.1-alpine` is pre-release `rc.1` of variant `alpine` (pre-release first, as semver
//!      writes it; `1.2.3-alpine-rc.1` is the release 1.2.3 of variant `alpine-rc.1`).
//!
//!    The pre-release is lower-cased, its segments are joined with `.`, a word glued to digits is split
//!    (`RC10` is `rc.10`, so it sorts after `rc.9`) and numbers lose leading zeros. The variant is kept
//!    as written.
//!
//! Anything else (`latest`, `main`, `sha-1a2b3c`, `sha256-….sig`) is not a version: `version` is null.
//!
//! # Rules
//!
//! Versions are compared only within their variant: `1.3.0-alpine` is measured against the highest
//! `-alpine` version, never against `1.4.0`. Within a variant:
//! - A version is **counted** when it is in `range` and is a release, or a pre-release with
//!   `prerelease = true`. Only counted versions are reported, and only they are "known before" or
//!   "highest" below.
//! - `range` is a Cargo-style requirement (`>=1.2, <2`; a bare `1.2` means `^1.2`). A pre-release is in
//!   range when its release part is (`<2` keeps out `2.0.0-rc.1`, `>=1.2` admits `1.2.0-rc.1`), unless
//!   the range names a pre-release itself; then semver's own rules apply.
//! - `bump` compares with the highest version known before (in the previous snapshot): `first` when
//!   there is none, `older` when not above it (equal included), else `major`, `minor`, `patch`, or
//!   `prerelease` when only the pre-release part differs (`1.2.0-rc.1` then `1.2.0`).
//! - A moved tag (`tag.updated`, a re-pushed release) is compared with the highest version known
//!   before among the *other* tags: re-pushing the newest `v1.2.3` over a `v1.2.2` says `patch`, and
//!   re-pushing an old `v1.0.1` says `older`.
//! - `only_newer` reports a new tag only if it is above every version known before; moved tags are
//!   always reported (when counted). Two new versions in one scan are each measured against the
//!   previous snapshot, so both can be reported.
//! - `latest` is true when the version is now (in the new snapshot) the highest counted one of its
//!   variant; tags that name the same version (`1.2`, `1.2.0`) are all latest.
//! - Tags that are not versions are not reported when `range` is set (they are not in it). With
//!   `only_newer`, a new one is not reported (it is not newer than anything), a moved one (`latest`
//!   in `mutable_tags`) is. Otherwise they are reported with `version` null.

use std::cmp::Ordering;
use std::collections::HashMap;

use semver::{BuildMetadata, Prerelease, Version, VersionReq};

/// Identifier prefixes that make a suffix a pre-release rather than a variant.
pub const PRERELEASE_WORDS: &[&str] = &[
    "alpha", "beta", "rc", "pre", "preview", "dev", "snapshot", "nightly", "canary", "ea",
];

/// A registry's `[registry.versions]` with `scheme = "semver"`, checked at load.
#[derive(Debug, Clone)]
pub struct VersionPolicy {
    range: Option<VersionReq>,
    /// Whether the range names a pre-release, so semver's own pre-release rules apply.
    range_names_prerelease: bool,
    prerelease: bool,
    only_newer: bool,
}

impl VersionPolicy {
    /// A policy from the parsed keys.
    pub fn new(range: Option<VersionReq>, prerelease: bool, only_newer: bool) -> Self {
        let range_names_prerelease = range
            .as_ref()
            .is_some_and(|r| r.comparators.iter().any(|c| !c.pre.is_empty()));
        VersionPolicy {
            range,
            range_names_prerelease,
            prerelease,
            only_newer,
        }
    }

    /// `range`, when set.
    pub fn range(&self) -> Option<&VersionReq> {
        self.range.as_ref()
    }

    /// `prerelease`.
    pub fn prerelease(&self) -> bool {
        self.prerelease
    }

    /// `only_newer`.
    pub fn only_newer(&self) -> bool {
        self.only_newer
    }

    fn in_range(&self, v: &Version) -> bool {
        let Some(req) = &self.range else {
            return true;
        };
        req.matches(v)
            || (!v.pre.is_empty()
                && !self.range_names_prerelease
                && req.matches(&Version::new(v.major, v.minor, v.patch)))
    }

    /// Whether a version is reported and counts as known.
    fn counts(&self, v: &Version) -> bool {
        (v.pre.is_empty() || self.prerelease) && self.in_range(v)
    }

    /// Whether a move of `tag` is reported: it is a counted version, or no version while no
    /// `range` is set. What it says of a tag already listed, whose arrival was judged before.
    pub fn admits(&self, tag: &str) -> bool {
        match parse(tag) {
            Some(mut v) => {
                v.version.build = BuildMetadata::EMPTY;
                self.counts(&v.version)
            }
            None => self.range.is_none(),
        }
    }
}

/// A tag read as a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagVersion {
    /// The normalised version, build metadata included.
    pub version: Version,
    /// The suffix that is not a pre-release (`alpine` in `1.2.3-alpine`); empty for none.
    pub variant: String,
}

/// Reads a tag as a version, by the normalisation in the module doc; `None` if it is not one.
pub fn parse(tag: &str) -> Option<TagVersion> {
    let s = tag.strip_prefix(['v', 'V']).unwrap_or(tag);
    let core_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (core, rest) = s.split_at(core_end);
    let mut numbers = [0u64; 3];
    let mut parts = core.split('.');
    for (slot, part) in numbers.iter_mut().zip(&mut parts) {
        if part.is_empty() {
            return None;
        }
        *slot = part.parse().ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    let (suffix, build) = match rest.find(['+', '_']) {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let (pre, variant) = match suffix {
        "" => (Prerelease::EMPTY, String::new()),
        _ => split_suffix(suffix.strip_prefix('-')?)?,
    };
    let build = match build {
        None => BuildMetadata::EMPTY,
        Some("") => return None,
        Some(b) => BuildMetadata::new(b).ok()?,
    };
    let [major, minor, patch] = numbers;
    Some(TagVersion {
        version: Version {
            major,
            minor,
            patch,
            pre,
            build,
        },
        variant,
    })
}

/// Splits `rc.1-alpine` into the pre-release `rc.1` and the variant `alpine`.
fn split_suffix(suffix: &str) -> Option<(Prerelease, String)> {
    let segments: Vec<&str> = suffix.split('-').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return None;
    }
    let pre_len = segments
        .iter()
        .take_while(|s| is_prerelease_identifier(s.split('.').next().unwrap_or_default()))
        .count();
    let mut identifiers = Vec::new();
    for segment in &segments[..pre_len] {
        for id in segment.split('.') {
            let id = id.to_ascii_lowercase();
            let digits = id.trim_start_matches(|c: char| c.is_ascii_alphabetic());
            let word = &id[..id.len() - digits.len()];
            if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                if !word.is_empty() {
                    identifiers.push(word.to_owned());
                }
                // Numbers are compared numerically only without leading zeros.
                identifiers.push(digits.parse::<u64>().ok()?.to_string());
            } else {
                identifiers.push(id);
            }
        }
    }
    let pre = if identifiers.is_empty() {
        Prerelease::EMPTY
    } else {
        Prerelease::new(&identifiers.join(".")).ok()?
    };
    Some((pre, segments[pre_len..].join("-")))
}

/// A number, or a pre-release word followed by nothing, a digit or a non-letter.
fn is_prerelease_identifier(id: &str) -> bool {
    if !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    let lower = id.to_ascii_lowercase();
    PRERELEASE_WORDS.iter().any(|w| {
        lower
            .strip_prefix(w)
            .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_alphabetic()))
    })
}

/// How a version relates to the highest one known before, in its variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bump {
    /// A higher major version.
    Major,
    /// Same major, higher minor.
    Minor,
    /// Same major and minor, higher patch.
    Patch,
    /// Same release, only the pre-release part is higher (`1.2.0-rc.1` to `1.2.0`).
    Prerelease,
    /// Not above the highest known before (equal included).
    Older,
    /// No version of this variant was known before.
    First,
}

impl Bump {
    /// The name in events (`data.bump`).
    pub fn as_str(self) -> &'static str {
        match self {
            Bump::Major => "major",
            Bump::Minor => "minor",
            Bump::Patch => "patch",
            Bump::Prerelease => "prerelease",
            Bump::Older => "older",
            Bump::First => "first",
        }
    }
}

/// What to do with one added or moved tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the change is reported at all.
    pub report: bool,
    /// The normalised version (`1.2.3-rc.1`), or `None` for a tag that is not a version.
    pub version: Option<String>,
    /// Relative to the highest version known before; `None` when not reported or not a version.
    pub bump: Option<Bump>,
    /// Whether it is now the highest counted version of its variant.
    pub latest: bool,
}

/// The two highest counted versions of one variant, with their tags, so that a moved tag can be
/// compared with the highest *other* tag.
#[derive(Default)]
struct Top2 {
    first: Option<(Version, String)>,
    second: Option<(Version, String)>,
}

impl Top2 {
    fn offer(&mut self, version: Version, tag: &str) {
        let above = |slot: &Option<(Version, String)>| {
            slot.as_ref()
                .is_none_or(|(v, t)| (&version, tag).cmp(&(v, t.as_str())) == Ordering::Greater)
        };
        if above(&self.first) {
            self.second = self.first.replace((version, tag.to_owned()));
        } else if above(&self.second) {
            self.second = Some((version, tag.to_owned()));
        }
    }

    fn highest(&self) -> Option<&Version> {
        self.first.as_ref().map(|(v, _)| v)
    }

    fn highest_except(&self, tag: &str) -> Option<&Version> {
        match &self.first {
            Some((_, t)) if t == tag => self.second.as_ref().map(|(v, _)| v),
            first => first.as_ref().map(|(v, _)| v),
        }
    }
}

/// The highest counted versions per variant, before and after one diff.
pub struct VersionIndex<'p> {
    policy: &'p VersionPolicy,
    before: HashMap<String, Top2>,
    after: HashMap<String, Version>,
}

impl<'p> VersionIndex<'p> {
    /// Indexes the previous snapshot's (`before`) and the new snapshot's (`after`) tag names.
    pub fn new<'a>(
        policy: &'p VersionPolicy,
        before: impl Iterator<Item = &'a str>,
        after: impl Iterator<Item = &'a str>,
    ) -> Self {
        let mut index = VersionIndex {
            policy,
            before: HashMap::new(),
            after: HashMap::new(),
        };
        for (tag, v) in before.filter_map(|t| Some((t, counted(policy, t)?))) {
            let top = index.before.entry(v.variant).or_default();
            top.offer(v.version, tag);
        }
        for v in after.filter_map(|t| counted(policy, t)) {
            match index.after.get_mut(&v.variant) {
                Some(highest) if *highest >= v.version => {}
                Some(highest) => *highest = v.version,
                None => {
                    index.after.insert(v.variant, v.version);
                }
            }
        }
        index
    }

    /// The verdict on `tag`, new since the previous snapshot (`is_new_tag`) or moved.
    pub fn judge(&self, tag: &str, is_new_tag: bool) -> Verdict {
        let Some(parsed) = parse(tag) else {
            let report = self.policy.range.is_none() && !(is_new_tag && self.policy.only_newer);
            return Verdict {
                report,
                version: None,
                bump: None,
                latest: false,
            };
        };
        let version = parsed.version.to_string();
        let mut key = parsed.version;
        key.build = BuildMetadata::EMPTY;
        if !self.policy.counts(&key) {
            return Verdict {
                report: false,
                version: Some(version),
                bump: None,
                latest: false,
            };
        }
        let top = self.before.get(&parsed.variant);
        let reference = if is_new_tag {
            top.and_then(Top2::highest)
        } else {
            top.and_then(|t| t.highest_except(tag))
        };
        let bump = bump(reference, &key);
        let report = !(is_new_tag && self.policy.only_newer && bump == Bump::Older);
        let latest = self
            .after
            .get(&parsed.variant)
            .is_some_and(|highest| *highest == key);
        Verdict {
            report,
            version: Some(version),
            bump: report.then_some(bump),
            latest,
        }
    }
}

/// The tag's version with build metadata dropped (it does not order), if it counts.
fn counted(policy: &VersionPolicy, tag: &str) -> Option<TagVersion> {
    let mut v = parse(tag)?;
    v.version.build = BuildMetadata::EMPTY;
    policy.counts(&v.version).then_some(v)
}

fn bump(reference: Option<&Version>, v: &Version) -> Bump {
    match reference {
        None => Bump::First,
        Some(r) if v <= r => Bump::Older,
        Some(r) if v.major != r.major => Bump::Major,
        Some(r) if v.minor != r.minor => Bump::Minor,
        Some(r) if v.patch != r.patch => Bump::Patch,
        Some(_) => Bump::Prerelease,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(range: Option<&str>, prerelease: bool, only_newer: bool) -> VersionPolicy {
        VersionPolicy::new(
            range.map(|r| VersionReq::parse(r).unwrap()),
            prerelease,
            only_newer,
        )
    }

    fn judge(p: &VersionPolicy, before: &[&str], new_tag: &str) -> Verdict {
        let after = before.iter().copied().chain([new_tag]);
        VersionIndex::new(p, before.iter().copied(), after).judge(new_tag, true)
    }

    fn norm(tag: &str) -> Option<(String, String)> {
        parse(tag).map(|v| (v.version.to_string(), v.variant))
    }

    fn n(version: &str, variant: &str) -> Option<(String, String)> {
        Some((version.into(), variant.into()))
    }

    /// Issue 12's acceptance sequence, one scan per push: semver, only_newer, no pre-releases.
    #[test]
    fn acceptance_sequence_reports_exactly_the_minor_and_the_major() {
        let p = policy(None, false, true);
        let mut known = vec!["v1.0.0"];
        let mut reported = Vec::new();
        for tag in ["v1.2.0", "v1.1.5", "v2.0.0-rc.1", "v2.0.0"] {
            let v = judge(&p, &known, tag);
            if v.report {
                reported.push((tag, v.bump, v.latest));
            }
            known.push(tag);
        }
        assert_eq!(
            reported,
            vec![
                ("v1.2.0", Some(Bump::Minor), true),
                ("v2.0.0", Some(Bump::Major), true)
            ]
        );
        let rc = judge(&p, &["v1.0.0", "v1.2.0"], "v2.0.0-rc.1");
        assert_eq!(rc.version.as_deref(), Some("2.0.0-rc.1"));
        assert!(!rc.report && rc.bump.is_none());
    }

    #[test]
    fn lenient_forms_normalise() {
        assert_eq!(norm("v1.2.3"), n("1.2.3", ""));
        assert_eq!(norm("V1"), n("1.0.0", ""));
        assert_eq!(norm("1.2"), n("1.2.0", ""));
        assert_eq!(norm("2024.01.15"), n("2024.1.15", ""));
        assert_eq!(norm("1.2.3-alpine"), n("1.2.3", "alpine"));
        assert_eq!(norm("3.12-slim-bookworm"), n("3.12.0", "slim-bookworm"));
        assert_eq!(norm("1.25.3-alpine3.18"), n("1.25.3", "alpine3.18"));
        assert_eq!(norm("1.2.3-rc.1"), n("1.2.3-rc.1", ""));
        assert_eq!(norm("1.2.3-RC10"), n("1.2.3-rc.10", ""));
        assert_eq!(norm("1.0.0-beta-2"), n("1.0.0-beta.2", ""));
        assert_eq!(norm("2.0.0-1"), n("2.0.0-1", ""));
        assert_eq!(norm("1.2.3-rc.01"), n("1.2.3-rc.1", ""));
        assert_eq!(norm("1.2.3-rc.1-alpine"), n("1.2.3-rc.1", "alpine"));
        assert_eq!(norm("1.2.3-alpine-rc.1"), n("1.2.3", "alpine-rc.1"));
        assert_eq!(norm("1.2.3-develop"), n("1.2.3", "develop"));
        assert_eq!(norm("1.2.3-preview2"), n("1.2.3-preview.2", ""));
        assert_eq!(norm("1.2.3+build.5"), n("1.2.3+build.5", ""));
        assert_eq!(norm("1.2.3_b1"), n("1.2.3+b1", ""));
        assert_eq!(norm("1.2.3-alpine_b1"), n("1.2.3+b1", "alpine"));
        for not_a_version in [
            "latest",
            "main",
            "v",
            "sha-1a2b3c",
            "sha256-0a1b.sig",
            "1.2.3.4",
            "1.2.3rc1",
            "1..2",
            ".1",
            "1.",
            "1.2.3-",
            "1.2.3--x",
            "1.2.3_",
            "1.2.3-rc_",
            "99999999999999999999",
        ] {
            assert_eq!(parse(not_a_version), None, "{not_a_version}");
        }
    }

    #[test]
    fn variants_are_compared_only_with_their_own_kind() {
        let p = policy(None, false, true);
        let before = ["1.2.3-alpine", "1.4.0"];
        let alpine = judge(&p, &before, "1.3.0-alpine");
        assert!(alpine.report, "above 1.2.3-alpine, though below 1.4.0");
        assert_eq!(alpine.bump, Some(Bump::Minor));
        assert_eq!(alpine.version.as_deref(), Some("1.3.0"));
        assert!(alpine.latest, "the highest -alpine, though 1.4.0 is higher");
        let plain = judge(&p, &before, "1.3.0");
        assert!(!plain.report, "below 1.4.0");
        let slim = judge(&p, &before, "1.0.0-slim");
        assert_eq!((slim.report, slim.bump), (true, Some(Bump::First)));
    }

    #[test]
    fn bumps_relative_to_the_highest_known_before() {
        let p = policy(None, true, false);
        let before = ["v1.2.3", "v1.0.0", "latest"];
        let bump_of = |tag| judge(&p, &before, tag).bump;
        assert_eq!(bump_of("v2.0.0"), Some(Bump::Major));
        assert_eq!(bump_of("v1.3.0"), Some(Bump::Minor));
        assert_eq!(bump_of("v1.2.4"), Some(Bump::Patch));
        assert_eq!(
            bump_of("v1.2.3+rebuild"),
            Some(Bump::Older),
            "build is ignored"
        );
        assert_eq!(bump_of("1.2"), Some(Bump::Older));
        assert_eq!(bump_of("v1.1.0"), Some(Bump::Older));
        assert_eq!(bump_of("v1.3.0-rc.1"), Some(Bump::Minor));
        assert_eq!(bump_of("v9-alpine"), Some(Bump::First));
        assert_eq!(bump_of("v9"), Some(Bump::Major));
        let rc = ["1.3.0-rc.1"];
        assert_eq!(judge(&p, &rc, "1.3.0").bump, Some(Bump::Prerelease));
        assert_eq!(judge(&p, &rc, "1.3.0-rc.2").bump, Some(Bump::Prerelease));
        assert_eq!(judge(&p, &[], "1.0.0").bump, Some(Bump::First));
    }

    #[test]
    fn range_limits_reports_and_what_counts_as_known() {
        let p = policy(Some(">=1.2, <2"), false, true);
        assert!(!judge(&p, &["1.2.0"], "2.0.0").report, "above the range");
        assert!(!judge(&p, &["1.2.0"], "1.1.0").report, "below the range");
        // 2.5.0 is outside the range, so it is not "known": 1.3.0 is still newer.
        let v = judge(&p, &["1.2.0", "2.5.0"], "1.3.0");
        assert_eq!(
            (v.report, v.bump, v.latest),
            (true, Some(Bump::Minor), true)
        );
        assert!(
            !judge(&p, &[], "latest").report,
            "not a version, so not in range"
        );
        assert!(
            !judge(&p, &[], "1.5.0-rc.1").report,
            "pre-releases stay off by default"
        );
        let with_pre = policy(Some(">=1.2, <2"), true, false);
        assert!(judge(&with_pre, &[], "1.5.0-rc.1").report);
        assert!(
            judge(&with_pre, &[], "1.2.0-rc.1").report,
            "release part 1.2.0"
        );
        assert!(
            !judge(&with_pre, &[], "2.0.0-rc.1").report,
            "<2 keeps 2.0 out"
        );
        let named = policy(Some(">=2.0.0-rc.2"), true, false);
        assert!(judge(&named, &[], "2.0.0-rc.3").report);
        assert!(
            !judge(&named, &[], "2.0.0-rc.1").report,
            "a range naming a pre-release follows semver"
        );
    }

    #[test]
    fn prerelease_switch() {
        let off = policy(None, false, true);
        let on = policy(None, true, true);
        let before = ["1.0.0", "1.1.0-rc.1"];
        let rc2 = judge(&off, &before, "1.1.0-rc.2");
        assert!(!rc2.report);
        // Off: rc.1 is not known, so 1.1.0 is a minor bump over 1.0.0.
        assert_eq!(judge(&off, &before, "1.1.0").bump, Some(Bump::Minor));
        let rc2 = judge(&on, &before, "1.1.0-rc.2");
        assert_eq!((rc2.report, rc2.bump), (true, Some(Bump::Prerelease)));
        assert_eq!(judge(&on, &before, "1.1.0").bump, Some(Bump::Prerelease));
        // A pre-release is not "latest" while it is off, and never hides the release.
        let v = judge(&off, &["1.0.0", "1.1.0-rc.1"], "1.0.1");
        assert!(v.latest);
    }

    #[test]
    fn latest_is_the_highest_in_the_new_snapshot() {
        let p = policy(None, false, false);
        // Two new tags in one scan: both measured against the previous snapshot, one is latest.
        let before = ["1.0.0"];
        let after = ["1.0.0", "1.2.0", "1.1.5", "1.2"];
        let index = VersionIndex::new(&p, before.into_iter(), after.into_iter());
        let v115 = index.judge("1.1.5", true);
        assert_eq!(
            (v115.report, v115.bump, v115.latest),
            (true, Some(Bump::Minor), false)
        );
        assert!(index.judge("1.2.0", true).latest);
        assert!(
            index.judge("1.2", true).latest,
            "an alias of the highest is latest too"
        );
        // only_newer does not reorder within one scan either.
        let p = policy(None, false, true);
        let index = VersionIndex::new(&p, before.into_iter(), after.into_iter());
        assert!(index.judge("1.1.5", true).report);
    }

    #[test]
    fn moved_tags_compare_with_the_other_tags() {
        let p = policy(None, false, true);
        let tags = ["v1.0.1", "v1.2.2", "v1.2.3", "latest"];
        let index = VersionIndex::new(&p, tags.into_iter(), tags.into_iter());
        let newest = index.judge("v1.2.3", false);
        assert_eq!(
            (newest.report, newest.bump, newest.latest),
            (true, Some(Bump::Patch), true)
        );
        let old = index.judge("v1.0.1", false);
        assert_eq!(
            (old.report, old.bump, old.latest),
            (true, Some(Bump::Older), false),
            "only_newer does not suppress updates"
        );
        let alone = VersionIndex::new(&p, ["v3"].into_iter(), ["v3"].into_iter());
        assert_eq!(alone.judge("v3", false).bump, Some(Bump::First));
        let moved = index.judge("latest", false);
        assert_eq!(
            (moved.report, moved.version),
            (true, None),
            "a moved non-version tag"
        );
        assert!(
            !index.judge("edge", true).report,
            "a new non-version tag is not newer"
        );
    }

    #[test]
    fn non_versions_are_reported_without_a_version_when_nothing_filters() {
        let p = policy(None, false, false);
        let v = judge(&p, &["1.0.0"], "latest");
        assert_eq!(
            v,
            Verdict {
                report: true,
                version: None,
                bump: None,
                latest: false
            }
        );
    }

    /// Tags are at most 128 characters of `[A-Za-z0-9_.-]` (OCI distribution spec), but a
    /// registry may list anything: no tag may panic, numbers beyond u64 are no versions, and
    /// a normalised version reads back as itself.
    #[test]
    fn hostile_tags_never_panic() {
        let mut tags: Vec<String> = [
            "99999999999999999999.0.0",
            "1.99999999999999999999.0",
            "1.0.0-rc.99999999999999999999",
            "18446744073709551616",
            "é1.2.3",
            "1.2.3-é",
            "１.２.３",
            "1.0.0-RC٣",
            "v1.2.3_é",
            "1.0.0-rc..1",
            "1.0.0-.",
            "0001.0002.0003-rc.0004",
        ]
        .map(String::from)
        .to_vec();
        tags.push("9".repeat(128));
        tags.push(format!("1.0.0-{}", "a".repeat(122)));
        tags.push(format!("1.0.0-rc.{}", "0".repeat(119)));
        tags.push(format!("v{}", "1.".repeat(63)));
        // Deterministic noise shaped like versions: a prefix, numbers of any length (leading
        // zeros, beyond u64), then suffix pieces and separators.
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let pieces = [
            "rc",
            "RC",
            "beta",
            "alpha",
            "dev",
            "ea",
            "alpine",
            "slim",
            "r",
            "x",
            "é",
            "0",
            "00",
            "7",
            "42",
            "18446744073709551615",
            "99999999999999999999",
        ];
        let seps = [".", "-", "_", "+", ""];
        for _ in 0..20_000 {
            let mut t = String::from(["", "v", "V"][next(3)]);
            for i in 0..1 + next(4) {
                if i > 0 {
                    t.push('.');
                }
                let digits = 1 + next(22);
                t.extend((0..digits).map(|_| char::from(b'0' + next(10) as u8)));
            }
            for _ in 0..next(5) {
                t.push_str(seps[next(seps.len())]);
                t.push_str(pieces[next(pieces.len())]);
            }
            tags.push(t);
        }
        for p in [
            policy(None, true, true),
            policy(Some(">=1, <2"), false, false),
        ] {
            let index = VersionIndex::new(
                &p,
                tags.iter().map(String::as_str),
                tags.iter().map(String::as_str),
            );
            for tag in &tags {
                let verdict = index.judge(tag, true);
                index.judge(tag, false);
                if let Some(v) = verdict.version {
                    let again = parse(&v).map(|t| t.version.to_string());
                    assert_eq!(again.as_deref(), Some(v.as_str()), "{tag}");
                }
            }
        }
        assert_eq!(
            parse("0001.0002.0003-rc.0004")
                .map(|v| v.version.to_string())
                .as_deref(),
            Some("1.2.3-rc.4")
        );
    }

    #[test]
    fn bump_names_are_the_event_values() {
        let all = [
            Bump::Major,
            Bump::Minor,
            Bump::Patch,
            Bump::Prerelease,
            Bump::Older,
            Bump::First,
        ];
        assert_eq!(
            all.map(Bump::as_str),
            ["major", "minor", "patch", "prerelease", "older", "first"]
        );
    }
}
