//! What regwatch remembers of one repository between scans. Each stage of the diff owns its
//! slice: the tags stage `tags`, the version and platform stages `held_back`, the platform
//! stage `platforms`, the maturity stage `maturing`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

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
    /// The version rules (`watch::versions::RULES`) it was written under; 0 for snapshots from
    /// before the field. An older one is upgraded when read (`diff::upgrade`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub version_rules: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Snapshot {
    /// Whether `other` holds the same state, whatever the revisions: nothing to commit.
    pub fn same_content(&self, other: &Snapshot) -> bool {
        self.tags == other.tags
            && self.maturing == other.maturing
            && self.platforms == other.platforms
            && self.held_back == other.held_back
            && self.version_rules == other.version_rules
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
