//! Ordering within a variant: the versions known before and after one diff, and the verdict on
//! each added or moved tag (`bump`, `latest`, whether `only_newer` drops it).

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};

use super::parse::{OrderKey, TagVersion, parse};
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
    /// For a floating tag: the most specific version tag on the same digest that it is an alias
    /// of (`1.25.3-debian-12-r6`), as listed.
    pub points_to: Option<String>,
}

/// The highest counted version of a variant, and the highest counted release.
#[derive(Default)]
struct Highest {
    counted: Option<TagVersion>,
    release: Option<TagVersion>,
}

/// The counted versions of one variant known before, highest first, one per order key and
/// precision (tags that differ only in spelling or build are one entry), so that skipping the
/// aliases a tag refines costs at most a few steps.
#[derive(Default)]
struct Known {
    releases: Vec<TagVersion>,
    all: Vec<TagVersion>,
}

/// The most specific release on a digest that refines a floating tag: its precision and order,
/// and its tag.
type Refiner<'a> = ((u8, OrderKey), &'a str);

/// The versions known before and after one diff.
pub struct VersionIndex<'p, 'a> {
    policy: &'p VersionPolicy,
    /// Counted versions of the previous snapshot per variant.
    before: HashMap<String, Known>,
    /// Per variant, in the new snapshot.
    highest: HashMap<String, Highest>,
    /// `(variant, written numbers)` that some release of the new snapshot refines: the floating
    /// aliases.
    refined: HashSet<(String, Vec<u64>)>,
    /// For `points_to`: per digest, variant and written numbers of a floating tag, the most
    /// specific release of the new snapshot on that digest that refines it.
    refiners: HashMap<(&'a str, String, Vec<u64>), Refiner<'a>>,
}

impl<'p, 'a> VersionIndex<'p, 'a> {
    /// Indexes the previous snapshot's tag names (`before`) and the new snapshot's tags with
    /// their digests (`after`): those the tag filter selects. `judged` are the tags (with their
    /// digests) that [`Self::judge`] will be asked about: what is learnt of aliases is learnt
    /// for them only, so the pass over a big listing allocates nothing per tag.
    pub fn new(
        policy: &'p VersionPolicy,
        before: impl Iterator<Item = &'a str>,
        after: impl Iterator<Item = (&'a str, Option<&'a str>)>,
        judged: &[(&str, Option<&str>)],
    ) -> Self {
        let mut index = VersionIndex {
            policy,
            before: HashMap::new(),
            highest: HashMap::new(),
            refined: HashSet::new(),
            refiners: HashMap::new(),
        };
        for v in before.filter_map(parse).filter(|v| policy.counts(v)) {
            let known = entry(&mut index.before, &v.variant);
            if !v.is_prerelease() {
                known.releases.push(v.clone());
            }
            known.all.push(v);
        }
        for known in index.before.values_mut() {
            for list in [&mut known.releases, &mut known.all] {
                list.sort_by(|a, b| b.cmp_order(a).then(b.precision.cmp(&a.precision)));
                list.dedup_by(|a, b| a.cmp_order(b).is_eq() && a.precision == b.precision);
            }
        }
        // The written numbers of the judged releases that could be floating, with their
        // variants; and the digests they are on.
        let mut aliases: HashMap<Vec<u64>, HashSet<String>> = HashMap::new();
        for v in judged.iter().filter_map(|(t, _)| parse(t)) {
            if !v.is_prerelease() && v.revision.is_empty() {
                aliases
                    .entry(v.written().to_vec())
                    .or_default()
                    .insert(v.variant);
            }
        }
        let judged_digests: HashSet<&str> = judged.iter().filter_map(|(_, d)| *d).collect();
        for (tag, digest) in after {
            let Some(v) = parse(tag) else { continue };
            if !v.is_prerelease() && !aliases.is_empty() {
                let p = usize::from(v.precision);
                let more = usize::from(v.revision.is_empty());
                for len in 1..=p.saturating_sub(more) {
                    let prefix = &v.numbers[..len];
                    if !aliases
                        .get(prefix)
                        .is_some_and(|vs| vs.contains(&v.variant))
                    {
                        continue;
                    }
                    index.refined.insert((v.variant.clone(), prefix.to_vec()));
                    if let Some(digest) = digest.filter(|d| judged_digests.contains(d)) {
                        // The most specific, then the highest.
                        let candidate = ((v.precision, v.key()), tag);
                        index
                            .refiners
                            .entry((digest, v.variant.clone(), prefix.to_vec()))
                            .and_modify(|best| {
                                // Equal versions in other spellings: the first name, whatever
                                // order the listing came in.
                                if (&candidate.0, std::cmp::Reverse(candidate.1))
                                    > (&best.0, std::cmp::Reverse(best.1))
                                {
                                    *best = candidate.clone();
                                }
                            })
                            .or_insert(candidate);
                    }
                }
            }
            if policy.counts(&v) {
                let highest = entry(&mut index.highest, &v.variant);
                let above =
                    |h: &Option<TagVersion>| h.as_ref().is_none_or(|h| v.cmp_order(h).is_gt());
                if !v.is_prerelease() && above(&highest.release) {
                    highest.release = Some(v.clone());
                }
                if above(&highest.counted) {
                    highest.counted = Some(v);
                }
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
                .is_some_and(|h| h.cmp_order(&v).is_eq())
        };
        let points_to = (bump == Bump::Floating)
            .then(|| self.points_to(&v, digest?))
            .flatten();
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
            let list = if v.is_prerelease() {
                &known.all
            } else {
                &known.releases
            };
            list.iter().find(|k| !v.refines(k))
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
        match v.cmp_order(r) {
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

    /// The most specific, then highest, version tag on `digest` in `v`'s variant that refines
    /// `v`.
    fn points_to(&self, v: &TagVersion, digest: &str) -> Option<String> {
        let key = (digest, v.variant.clone(), v.written().to_vec());
        self.refiners.get(&key).map(|(_, tag)| (*tag).to_owned())
    }
}

/// The value of `variant` in `map`, created if missing; the variant is cloned only then.
fn entry<'m, V: Default>(map: &'m mut HashMap<String, V>, variant: &str) -> &'m mut V {
    if !map.contains_key(variant) {
        map.insert(variant.to_owned(), V::default());
    }
    map.get_mut(variant).expect("inserted above")
}
