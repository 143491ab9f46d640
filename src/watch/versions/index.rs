//! Ordering within a variant: the versions known before and after one diff, and the verdict on
//! each added or moved tag (`bump`, `latest`, whether `only_newer` drops it).

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};

use super::parse::{TagVersion, parse};
use super::policy::VersionPolicy;

/// How a version relates to what was known before, in its variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bump {
    /// A higher major version.
    Major,
    /// Same major, higher minor.
    Minor,
    /// Same major and minor, higher patch.
    Patch,
    /// A pre-release above every version known before.
    Prerelease,
    /// The same version again: a re-pushed tag, a new tag of the highest version, or a higher
    /// rebuild counter (`-r6` after `-r5`).
    Rebuild,
    /// A floating tag (`1`, `1.2`, an `8.9` beside `8.9-1107`): an alias of a more specific one.
    Floating,
    /// Below the highest version known before.
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
            Bump::Rebuild => "rebuild",
            Bump::Floating => "floating",
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
    /// The normalised version and its variant (`("1.2.3-rc.1", "alpine")`), or `None` for a tag
    /// that is not a version.
    pub version: Option<(String, String)>,
    /// Relative to what was known before; `None` when not reported or not a version.
    pub bump: Option<Bump>,
    /// Whether it is now the highest counted version of its variant (a floating tag: whether
    /// the highest release is one of its own).
    pub latest: bool,
    /// For a floating tag: the most specific version tag of the same digest it is an alias of.
    pub points_to: Option<String>,
}

/// The highest counted version of a variant, and the highest counted release.
#[derive(Default)]
struct Highest {
    counted: Option<TagVersion>,
    release: Option<TagVersion>,
}

/// The versions known before and after one diff.
pub struct VersionIndex<'p, 'a> {
    policy: &'p VersionPolicy,
    /// Counted versions of the previous snapshot per variant, highest first.
    before: HashMap<String, Vec<TagVersion>>,
    /// Per variant, in the new snapshot.
    highest: HashMap<String, Highest>,
    /// `(variant, written numbers)` that some release of the new snapshot refines: the floating
    /// aliases.
    refined: HashSet<(String, Vec<u64>)>,
    /// The version tags of the new snapshot by digest, for `points_to`.
    by_digest: HashMap<&'a str, Vec<TagVersion>>,
}

impl<'p, 'a> VersionIndex<'p, 'a> {
    /// Indexes the previous snapshot's tag names (`before`) and the new snapshot's tags with
    /// their digests (`after`): those the tag filter selects.
    pub fn new(
        policy: &'p VersionPolicy,
        before: impl Iterator<Item = &'a str>,
        after: impl Iterator<Item = (&'a str, Option<&'a str>)>,
    ) -> Self {
        let mut index = VersionIndex {
            policy,
            before: HashMap::new(),
            highest: HashMap::new(),
            refined: HashSet::new(),
            by_digest: HashMap::new(),
        };
        for v in before.filter_map(parse).filter(|v| policy.counts(v)) {
            index.before.entry(v.variant.clone()).or_default().push(v);
        }
        for known in index.before.values_mut() {
            known.sort_by_key(|v| std::cmp::Reverse(v.key()));
        }
        for (tag, digest) in after {
            let Some(v) = parse(tag) else { continue };
            if !v.is_prerelease() {
                let p = usize::from(v.precision);
                let more = usize::from(v.revision.is_empty());
                for len in 1..=p.saturating_sub(more) {
                    index
                        .refined
                        .insert((v.variant.clone(), v.numbers[..len].to_vec()));
                }
            }
            if policy.counts(&v) {
                let highest = index.highest.entry(v.variant.clone()).or_default();
                let above = |h: &Option<TagVersion>| h.as_ref().is_none_or(|h| v.key() > h.key());
                if above(&highest.counted) {
                    highest.counted = Some(v.clone());
                }
                if !v.is_prerelease() && above(&highest.release) {
                    highest.release = Some(v.clone());
                }
            }
            if let Some(digest) = digest {
                index.by_digest.entry(digest).or_default().push(v);
            }
        }
        index
    }

    /// The verdict on `tag` (now on `digest`), new since the previous snapshot (`is_new_tag`)
    /// or moved.
    pub fn judge(&self, tag: &str, digest: Option<&str>, is_new_tag: bool) -> Verdict {
        let Some(v) = parse(tag) else {
            let report = self.policy.range().is_none() && !(is_new_tag && self.policy.only_newer());
            return Verdict {
                report,
                version: None,
                bump: None,
                latest: false,
                points_to: None,
            };
        };
        let version = Some((v.to_string(), v.variant.clone()));
        if !self.policy.counts(&v) {
            return Verdict {
                report: false,
                version,
                bump: None,
                latest: false,
                points_to: None,
            };
        }
        let floating = self.is_floating(&v);
        let bump = match (is_new_tag, floating) {
            (false, true) => Bump::Floating,
            (false, false) => Bump::Rebuild,
            (true, _) => self.bump_of_new(&v, floating),
        };
        let report = !(is_new_tag && self.policy.only_newer() && bump == Bump::Older);
        let highest = self.highest.get(&v.variant);
        let latest = if floating {
            highest
                .and_then(|h| h.release.as_ref())
                .is_some_and(|h| v.cmp_at_precision(h) == Ordering::Equal)
        } else {
            highest
                .and_then(|h| h.counted.as_ref())
                .is_some_and(|h| h.key() == v.key())
        };
        let points_to = floating.then(|| self.points_to(&v, digest?)).flatten();
        Verdict {
            report,
            version,
            bump: report.then_some(bump),
            latest,
            points_to,
        }
    }

    /// Whether a release of the new snapshot is more specific than `v`.
    fn is_floating(&self, v: &TagVersion) -> bool {
        !v.is_prerelease()
            && v.revision.is_empty()
            && self
                .refined
                .contains(&(v.variant.clone(), v.written().to_vec()))
    }

    /// A new tag's bump. A release is measured against the highest release known before in its
    /// variant, a pre-release against the highest version; aliases that `v` refines are not
    /// "known before" it (`2.1.0` after `2.1` is measured against `2.0.x`).
    fn bump_of_new(&self, v: &TagVersion, floating: bool) -> Bump {
        let reference = self.before.get(&v.variant).and_then(|known| {
            known
                .iter()
                .filter(|k| v.is_prerelease() || !k.is_prerelease())
                .find(|k| !v.refines(k))
        });
        let Some(r) = reference else {
            return if floating {
                Bump::Floating
            } else {
                Bump::First
            };
        };
        if floating {
            return match v.cmp_at_precision(r) {
                Ordering::Less => Bump::Older,
                _ => Bump::Floating,
            };
        }
        match v.key().cmp(&r.key()) {
            Ordering::Less => Bump::Older,
            Ordering::Equal => Bump::Rebuild,
            Ordering::Greater if v.is_prerelease() => Bump::Prerelease,
            Ordering::Greater => match (0..4).find(|&i| v.numbers[i] != r.numbers[i]) {
                Some(0) => Bump::Major,
                Some(1) => Bump::Minor,
                Some(_) => Bump::Patch,
                None => Bump::Rebuild,
            },
        }
    }

    /// The most specific, highest version tag of `digest` in `v`'s variant that refines `v`.
    fn points_to(&self, v: &TagVersion, digest: &str) -> Option<String> {
        self.by_digest
            .get(digest)?
            .iter()
            .filter(|t| t.variant == v.variant && t.refines(v))
            .max_by_key(|t| (t.key(), t.precision))
            .map(ToString::to_string)
    }
}
