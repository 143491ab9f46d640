//! Tag → version: the lenient reading of a tag name, by the rules in `docs/src/versions.md`.
//! Pure and total: any string is either a [`TagVersion`] or `None`, never a panic.

use std::cmp::Ordering;
use std::fmt;

use semver::{Prerelease, Version};

/// Words that make a suffix a pre-release rather than a variant, followed by nothing, a digit
/// or a dot. `m<n>` (Spring milestones) is matched apart: `m` alone is too short to be a word.
pub const PRERELEASE_WORDS: &[&str] = &[
    "alpha",
    "beta",
    "rc",
    "pre",
    "preview",
    "milestone",
    "dev",
    "next",
    "canary",
    "nightly",
    "snapshot",
    "ea",
];

/// Pre-release words that may be glued to the core (`3.13.0rc1`, `1.22rc1`, `3.13.0a3`,
/// `8.3.3RC1`), with the word they normalise to: `a`/`b` are Python's alpha and beta.
const GLUED_PRERELEASE: &[(&str, &str)] = &[
    ("alpha", "alpha"),
    ("beta", "beta"),
    ("rc", "rc"),
    ("pre", "pre"),
    ("dev", "dev"),
    ("a", "alpha"),
    ("b", "beta"),
];

/// A tag read as a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagVersion {
    /// The numbers of the core, padded with zeros past `precision`.
    pub numbers: [u64; 4],
    /// How many numbers the tag wrote: `2.1` is 2, and stays `2.1`.
    pub precision: u8,
    /// The pre-release, normalised (`rc.1`); empty for a release.
    pub pre: Prerelease,
    /// A rebuild counter of the same version (`-r5`, Red Hat's `-1107`); empty for none.
    pub revision: Vec<u64>,
    /// Build metadata as written (`_13`, `+b1`); ignored for ordering.
    pub build: String,
    /// The suffix that is neither pre-release nor revision, lower-cased; empty for none.
    pub variant: String,
}

/// What orders versions within a variant: release numbers, then pre-release (a release is above
/// its pre-releases), then revision. Precision and build do not order: `2.1` equals `2.1.0`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct OrderKey {
    numbers: [u64; 4],
    pre: Prerelease,
    revision: Vec<u64>,
}

impl TagVersion {
    /// Whether it is a pre-release.
    pub fn is_prerelease(&self) -> bool {
        !self.pre.is_empty()
    }

    /// Its place in the order of its variant.
    pub fn key(&self) -> OrderKey {
        OrderKey {
            numbers: self.numbers,
            pre: self.pre.clone(),
            revision: self.revision.clone(),
        }
    }

    /// Compares places in the order of a variant, as [`Self::key`] would, without copying.
    pub fn cmp_order(&self, other: &TagVersion) -> Ordering {
        self.numbers
            .cmp(&other.numbers)
            .then_with(|| self.pre.cmp(&other.pre))
            .then_with(|| self.revision.cmp(&other.revision))
    }

    /// The written numbers: `[2, 1]` for `2.1`.
    pub fn written(&self) -> &[u64] {
        &self.numbers[..usize::from(self.precision)]
    }

    /// The padded semver version without build metadata, for `range` (a fourth number is
    /// below what a range can name).
    pub fn semver(&self) -> Version {
        let [major, minor, patch, _] = self.numbers;
        Version {
            major,
            minor,
            patch,
            pre: self.pre.clone(),
            build: semver::BuildMetadata::EMPTY,
        }
    }

    /// Whether `self` is a more specific release of what `alias` names: `1.2.5` of `1` and
    /// `1.2`, `8.9-1107` of `8.9`. Both must be releases; the variant is the caller's to match.
    pub fn refines(&self, alias: &TagVersion) -> bool {
        if self.is_prerelease() || alias.is_prerelease() || !alias.revision.is_empty() {
            return false;
        }
        let p = usize::from(alias.precision);
        self.precision >= alias.precision
            && self.numbers[..p] == alias.numbers[..p]
            && (self.precision > alias.precision || !self.revision.is_empty())
    }

    /// Compares the written numbers of `self` with the same numbers of `other`: how a floating
    /// `1.2` stands to `1.2.5` (equal) or to `1.3.0` (below).
    pub fn cmp_at_precision(&self, other: &TagVersion) -> Ordering {
        let p = usize::from(self.precision);
        self.numbers[..p].cmp(&other.numbers[..p])
    }
}

/// The normalised version: the written numbers, `-` and the pre-release, `+` and the build.
/// Neither the variant nor the revision is part of it.
impl fmt::Display for TagVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, n) in self.written().iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            write!(f, "{n}")?;
        }
        if self.is_prerelease() {
            write!(f, "-{}", self.pre)?;
        }
        if !self.build.is_empty() {
            write!(f, "+{}", self.build)?;
        }
        Ok(())
    }
}

/// Reads a tag as a version; `None` if it is not one.
pub fn parse(tag: &str) -> Option<TagVersion> {
    let s = tag.strip_prefix(['v', 'V']).unwrap_or(tag);
    let core_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (core, rest) = s.split_at(core_end);
    // Spring's older qualifiers follow a dot: `2.0.0.RELEASE`, `2.2.0.M1`, `2.2.0.RC1`.
    let (core, dotted) = match core.strip_suffix('.') {
        Some(core) if rest.starts_with(|c: char| c.is_ascii_alphabetic()) => (core, true),
        _ => (core, false),
    };
    let mut numbers = [0u64; 4];
    let mut precision = 0u8;
    for part in core.split('.') {
        let slot = numbers.get_mut(usize::from(precision))?;
        if part.is_empty() {
            return None;
        }
        *slot = part.parse().ok()?;
        precision += 1;
    }
    let (glued, rest) = match dotted {
        true => dotted_qualifier(rest)?,
        false => glued_prerelease(rest)?,
    };
    let (rest, mut build) = split_build(rest)?;
    let segments: Vec<&str> = match rest.as_ref() {
        "" => Vec::new(),
        _ => rest.strip_prefix('-')?.split('-').collect(),
    };
    if segments.iter().any(|s| s.is_empty()) {
        return None;
    }
    let mut identifiers: Vec<String> = glued;
    let mut at = 0;
    while let Some(segment) = segments.get(at) {
        // A commit hash is no pre-release, even one that starts like `ea` and digits.
        if is_commit_hash(segment) {
            break;
        }
        let continues = !identifiers.is_empty() && is_number(segment);
        if !(continues || is_prerelease_segment(segment)) {
            break;
        }
        normalise_prerelease(segment, &mut identifiers)?;
        at += 1;
    }
    let mut rest = segments[at..].to_vec();
    // A pre-release word closing the tag marks a candidate too (`13.0.1-ubi10-rc`,
    // `3.8.3-1-SNAPSHOT`): the variant comes first there.
    if identifiers.is_empty()
        && rest.len() > 1
        && let Some(last) = rest
            .last()
            .filter(|l| is_prerelease_segment(l) && !is_commit_hash(l))
    {
        normalise_prerelease(last, &mut identifiers)?;
        rest.pop();
    }
    let mut revision = Vec::new();
    if !rest.is_empty() && rest.iter().all(|s| is_dotted_number(s)) {
        for segment in rest.drain(..) {
            revision.extend(numbers_of(segment)?);
        }
    }
    // Up to two trailing counters: Bitnami's `-r5`, linuxserver's `-ls261` (`-r7-ls261`).
    for _ in 0..2 {
        let Some(n) = rest.last().and_then(|last| rebuild_counter(last)) else {
            break;
        };
        revision.insert(0, n?);
        rest.pop();
    }
    // A commit hash is build metadata, not a variant: `v20190221-d14461a` is one line of builds.
    if build.is_empty()
        && let Some(i) = rest.iter().position(|s| is_commit_hash(s))
    {
        build = rest.remove(i);
    }
    let pre = match identifiers.is_empty() {
        true => Prerelease::EMPTY,
        false => Prerelease::new(&identifiers.join(".")).ok()?,
    };
    Some(TagVersion {
        numbers,
        precision,
        pre,
        revision,
        build: build.to_owned(),
        variant: rest.join("-").to_ascii_lowercase(),
    })
}

/// A pre-release glued to the core (`rc1` in `3.13.0rc1-slim`): its identifiers and what
/// follows. Other letters glued to the core make the tag no version (`8u402`).
fn glued_prerelease(rest: &str) -> Option<(Vec<String>, &str)> {
    let letters = rest
        .find(|c: char| !c.is_ascii_alphabetic())
        .unwrap_or(rest.len());
    if letters == 0 {
        return Some((Vec::new(), rest));
    }
    let word = rest[..letters].to_ascii_lowercase();
    let (_, normalised) = GLUED_PRERELEASE.iter().find(|(w, _)| *w == word)?;
    let after = &rest[letters..];
    let digits = after
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(after.len());
    // `a` and `b` alone are too short to be words: only `a3`, `b1`.
    if word.len() == 1 && digits == 0 {
        return None;
    }
    let mut identifiers = vec![(*normalised).to_owned()];
    if digits > 0 {
        identifiers.push(after[..digits].parse::<u64>().ok()?.to_string());
    }
    let rest = &after[digits..];
    (rest.is_empty() || rest.starts_with(['-', '_', '+'])).then_some((identifiers, rest))
}

/// Spring's older qualifier after a dot: `RELEASE`, `GA`, `Final` (a release), `M<n>` and
/// `RC<n>` (pre-releases). Anything else after a dot makes the tag no version.
fn dotted_qualifier(rest: &str) -> Option<(Vec<String>, &str)> {
    let end = rest.find(['-', '_', '+']).unwrap_or(rest.len());
    let word = rest[..end].to_ascii_lowercase();
    let identifiers = match word.as_str() {
        "release" | "ga" | "final" => Vec::new(),
        _ => {
            let digits = word.trim_start_matches(|c: char| c.is_ascii_alphabetic());
            let letters = &word[..word.len() - digits.len()];
            if !matches!(letters, "m" | "rc") || !is_number(digits) {
                return None;
            }
            vec![letters.to_owned(), digits.parse::<u64>().ok()?.to_string()]
        }
    };
    Some((identifiers, &rest[end..]))
}

/// Takes the build metadata (`_13`, `+b1`) out of `rest`: one, right after the core or at the
/// end, running to the next `-`. Returns the rest without it, and the build (empty for none).
fn split_build(rest: &str) -> Option<(std::borrow::Cow<'_, str>, &str)> {
    let Some(start) = rest.find(['+', '_']) else {
        return Some((rest.into(), ""));
    };
    let end = rest[start..].find('-').map_or(rest.len(), |i| start + i);
    let build = &rest[start + 1..end];
    let valid = !build.is_empty()
        && build
            .split('.')
            .all(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric()));
    let twice = rest[end..].contains(['+', '_']);
    if !valid || twice || (start != 0 && end != rest.len()) {
        return None;
    }
    Some((format!("{}{}", &rest[..start], &rest[end..]).into(), build))
}

/// Whether a `-`-separated segment starts a pre-release: its first identifier is a word of
/// [`PRERELEASE_WORDS`] followed by nothing or digits, or `m<n>` / `m.<n>`.
fn is_prerelease_segment(segment: &str) -> bool {
    let mut ids = segment.split('.');
    let first = ids.next().unwrap_or_default().to_ascii_lowercase();
    if let Some(n) = first.strip_prefix('m') {
        if is_number(n) {
            return true;
        }
        if n.is_empty() {
            return ids.next().is_some_and(is_number);
        }
    }
    PRERELEASE_WORDS.iter().any(|w| {
        first
            .strip_prefix(w)
            .is_some_and(|rest| rest.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// Appends a segment's identifiers, lower-cased, a word glued to digits split (`RC10` is
/// `rc.10`, so it sorts after `rc.9`), numbers without leading zeros.
pub(super) fn normalise_prerelease(segment: &str, identifiers: &mut Vec<String>) -> Option<()> {
    for id in segment.split('.') {
        let id = id.to_ascii_lowercase();
        let digits = id.trim_start_matches(|c: char| c.is_ascii_alphabetic());
        let word = &id[..id.len() - digits.len()];
        if is_number(digits) {
            if !word.is_empty() {
                identifiers.push(word.to_owned());
            }
            identifiers.push(digits.parse::<u64>().ok()?.to_string());
        } else {
            identifiers.push(id);
        }
    }
    Some(())
}

/// `r<n>` or `ls<n>`: a rebuild counter, its number (`None` inside when past u64).
fn rebuild_counter(segment: &str) -> Option<Option<u64>> {
    let lower = segment.to_ascii_lowercase();
    let n = lower
        .strip_prefix("ls")
        .or_else(|| lower.strip_prefix('r'))
        .filter(|n| is_number(n))?;
    Some(n.parse().ok())
}

/// A short or full commit hash: 7 to 40 lower-case hex digits, with a letter and a digit (so
/// neither a word nor a number).
fn is_commit_hash(s: &str) -> bool {
    (7..=40).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && s.bytes().any(|b| b.is_ascii_digit())
        && s.bytes().any(|b| b.is_ascii_alphabetic())
}

fn is_number(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn is_dotted_number(s: &str) -> bool {
    s.split('.').all(is_number)
}

fn numbers_of(s: &str) -> Option<Vec<u64>> {
    s.split('.').map(|n| n.parse().ok()).collect()
}
