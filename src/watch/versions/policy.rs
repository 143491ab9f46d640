//! `[registry.versions]` with `scheme = "semver"`: which versions count (are reported, and are
//! "known" to compare with), checked at config load.

use semver::{Version, VersionReq};

use super::legacy;
use super::parse::{TagVersion, parse};

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

    /// Whether the version is in `range`. A pre-release is when its release part is, unless the
    /// range names a pre-release itself; then semver's own rules apply. Fewer numbers than three
    /// are padded for the range: `2.1` is in `>=2.1, <3`.
    fn in_range(&self, mut version: Version) -> bool {
        let Some(req) = &self.range else {
            return true;
        };
        if req.matches(&version) {
            return true;
        }
        let is_prerelease = !version.pre.is_empty();
        version.pre = semver::Prerelease::EMPTY;
        is_prerelease && !self.range_names_prerelease && req.matches(&version)
    }

    /// Whether a padded version (build metadata dropped) counts.
    fn counts_semver(&self, version: Version) -> bool {
        (version.pre.is_empty() || self.prerelease) && self.in_range(version)
    }

    /// Whether a version is reported and counts as known.
    pub fn counts(&self, v: &TagVersion) -> bool {
        self.counts_semver(v.semver())
    }

    /// Whether a change of `tag` may be reported at all: a counted version, or no version while
    /// no `range` is set.
    pub fn admits(&self, tag: &str) -> bool {
        match parse(tag) {
            Some(v) => self.counts(&v),
            None => self.range.is_none(),
        }
    }

    /// What [`Self::admits`] said of `tag` under the rules before `version_rules` 1: for
    /// migrating snapshots written then.
    pub fn admitted_before_rules_1(&self, tag: &str) -> bool {
        match legacy::parse(tag) {
            Some(v) => self.counts_semver(v),
            None => self.range.is_none(),
        }
    }
}
