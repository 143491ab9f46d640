//! Version awareness (`[registry.versions]`, `scheme = "semver"`): which tags are versions
//! ([`parse`]), which of them count ([`policy`]), and how each relates to the versions known
//! before in its variant ([`index`]). The rules are the book's (`docs/src/versions.md`); the fixture table
//! `tests/fixtures/version-tags.tsv` holds real tags and their expected reading.
//!
//! The diff builds one [`VersionIndex`] from the previous and the new snapshot (the tags the tag
//! filter selects), then asks [`VersionIndex::judge`] about each added or moved tag.

pub mod index;
mod legacy;
pub mod parse;
pub mod policy;
#[cfg(test)]
mod tests;

pub use index::{Bump, Verdict, VersionIndex};
pub use parse::{TagVersion, parse};
pub use policy::VersionPolicy;

/// The version of these rules that a snapshot was written under (`Snapshot::version_rules`):
/// 0 for snapshots from before the field, read by the earlier rules.
pub const RULES: u32 = 1;
