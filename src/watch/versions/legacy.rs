//! The tag reading of snapshots written before `version_rules` 1, kept only to migrate them:
//! a tag these rules did not report (Red Hat's `8.9-1107`, read then as a pre-release) must not
//! be announced by its removal or signature after an upgrade. Not used for anything else.

use semver::{BuildMetadata, Prerelease, Version};

use super::parse::normalise_prerelease;

/// The pre-release words of those rules.
const PRERELEASE_WORDS: &[&str] = &[
    "alpha", "beta", "rc", "pre", "preview", "dev", "snapshot", "nightly", "canary", "ea",
];

/// A tag read by those rules, build metadata dropped: the padded version, `None` if it was no
/// version.
pub(super) fn parse(tag: &str) -> Option<Version> {
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
    let pre = match suffix {
        "" => Prerelease::EMPTY,
        _ => split_suffix(suffix.strip_prefix('-')?)?,
    };
    match build {
        Some("") => return None,
        Some(b) => {
            BuildMetadata::new(b).ok()?;
        }
        None => {}
    }
    let [major, minor, patch] = numbers;
    Some(Version {
        major,
        minor,
        patch,
        pre,
        build: BuildMetadata::EMPTY,
    })
}

/// The pre-release of a suffix (`rc.1-alpine`); the variant did not count.
fn split_suffix(suffix: &str) -> Option<Prerelease> {
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
        normalise_prerelease(segment, &mut identifiers)?;
    }
    let pre = if identifiers.is_empty() {
        Prerelease::EMPTY
    } else {
        Prerelease::new(&identifiers.join(".")).ok()?
    };
    Some(pre)
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
