//! The reference model, written from the contract in DESIGN.md and the README (not from the code):
//! what a deployer should have been told about each repository, and what one complete listing
//! should change. The checker compares each step's real outcome with it.
//!
//! The rules it encodes:
//! - A registry's first complete listing is a baseline: nothing is emitted. A repository first
//!   seen after that, that the watch set of the last complete listing already matched, is new: its
//!   selected tags are `added`. One that a config edit brought in is a baseline.
//! - Every tag is remembered; only tags the filter selects are reported.
//! - Digests come from the listing when it carries them unambiguously (Google's `manifest` map,
//!   one entry for the tag with a well-formed digest); otherwise a HEAD, made only for selected
//!   tags that are new since the baseline or mutable. A baseline records digests only where the
//!   listing carries them (and HEADs the mutable tags).
//! - A selected tag whose digest is needed but cannot be had (a dangling manifest: HEAD 404) is
//!   not reported and not recorded: the rest of the repository is reported as usual, and the tag
//!   is reported once it resolves. A known tag whose HEAD fails keeps what was known, and a
//!   baseline records its name (without a digest), as it records every name.
//! - `updated` needs a known previous digest; `removed` only with `emit_removed`, for a selected
//!   tag. `pushed_at` is the registry's upload time when in range, else null.
//! - Repositories that leave the watch set by a config edit are forgotten after a complete
//!   listing; watched again, they take a baseline.

use std::collections::{BTreeMap, BTreeSet};

use super::registry::{SimTag, Uploaded};

/// The pool of tag names the generator draws from: 1 and 128 characters, versions, a
/// pre-release, a mutable tag.
pub fn tag_pool() -> Vec<String> {
    vec![
        "v1".into(),
        "v2".into(),
        "v3-rc".into(),
        "latest".into(),
        "z".into(),
        format!("t{}", "0".repeat(127)),
    ]
}

/// The repositories the generator draws from; `extra/*` is watched only in some configs.
pub const REPOS: [&str; 5] = ["team/a", "team/b", "team/c", "team/d", "extra/x"];

/// The parts of a registry entry the operations edit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimConfig {
    /// `include_tags = ['^v']`.
    pub include_v: bool,
    /// `exclude_tags = ['-rc$']`.
    pub exclude_rc: bool,
    /// `mutable_tags`.
    pub mutable: Vec<String>,
    /// `daemon.emit_removed`.
    pub emit_removed: bool,
    /// `repositories` also has `extra/*`.
    pub extra: bool,
}

impl SimConfig {
    /// Whether the filter selects `tag` (it is reported).
    pub fn selects(&self, tag: &str) -> bool {
        (!self.include_v || tag.starts_with('v')) && !(self.exclude_rc && tag.ends_with("-rc"))
    }

    /// Whether `tag` is re-checked every scan.
    pub fn mutable(&self, tag: &str) -> bool {
        self.mutable.iter().any(|m| m == tag)
    }

    /// Whether the watch set covers `repo`.
    pub fn watches(&self, repo: &str) -> bool {
        repo.starts_with("team/") || (self.extra && repo.starts_with("extra/"))
    }

    /// The TOML of this entry on `host`.
    pub fn toml(&self, host: &str, page_size: usize) -> String {
        let list = |v: &[String]| {
            v.iter()
                .map(|s| format!("'{s}'"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut repos = vec!["team/*".to_string()];
        if self.extra {
            repos.push("extra/*".into());
        }
        let include: Vec<String> = self
            .include_v
            .then(|| "^v".to_string())
            .into_iter()
            .collect();
        let exclude: Vec<String> = self
            .exclude_rc
            .then(|| "-rc$".to_string())
            .into_iter()
            .collect();
        format!(
            "[[registry]]\nname = \"sim\"\nkind = \"oci\"\nurl = \"http://{host}\"\ninsecure = true\n\
             repositories = [{}]\ninclude_tags = [{}]\nexclude_tags = [{}]\nmutable_tags = [{}]\n\
             page_size = {page_size}\nrate_limit = 100000\nconcurrency = 4\nrequest_timeout = \"5s\"\n",
            list(&repos),
            list(&include),
            list(&exclude),
            list(&self.mutable),
        )
    }
}

/// One event as the checker compares it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ev {
    /// `added`, `updated`, `removed`.
    pub kind: String,
    /// The tag.
    pub tag: String,
    /// `data.digest`.
    pub digest: Option<String>,
    /// `data.previous_digest`.
    pub previous: Option<String>,
    /// `data.pushed_at`.
    pub pushed_at: Option<String>,
}

/// What one complete listing of a repository should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Events, sorted.
    pub events: Vec<Ev>,
    /// The tags remembered afterwards, with their digests where known.
    pub known: BTreeMap<String, Option<String>>,
}

/// The model's view of one repository.
#[derive(Debug, Clone, Default)]
pub struct RepoModel {
    /// Whether its first scan emits (decided when it is first listed).
    pub decision: Option<bool>,
    /// What is remembered since its last committed scan; `None` before the first.
    pub known: Option<BTreeMap<String, Option<String>>>,
}

/// The model of one registry.
#[derive(Debug, Default)]
pub struct Model {
    /// Per repository.
    pub repos: BTreeMap<String, RepoModel>,
    /// The watch set (its `extra` switch) of the last complete listing, if there was one.
    pub listed_with: Option<bool>,
}

/// The digest a Google `manifest` map gives `tag`, when it gives exactly one well-formed one;
/// and the upload time of that entry.
fn map_entry(tag: &str, t: &SimTag, google: bool, hostile: bool) -> (Option<String>, Uploaded) {
    if !google {
        return (None, Uploaded::Garbage);
    }
    let entries = usize::from(!t.dangling)
        + if hostile && tag.len().is_multiple_of(2) {
            2
        } else {
            0
        };
    if entries == 1 && !t.dangling {
        (Some(t.digest.clone()), t.uploaded)
    } else {
        (None, Uploaded::Garbage)
    }
}

impl Model {
    /// Decides, for a repository listed for the first time, whether its first scan emits.
    pub fn decide(&mut self, repo: &str) {
        let listed_with = self.listed_with;
        let r = self.repos.entry(repo.to_owned()).or_default();
        if r.decision.is_none() {
            // New only if a complete listing happened before and its watch set matched.
            r.decision = Some(listed_with.is_some_and(|extra| {
                repo.starts_with("team/") || (extra && repo.starts_with("extra/"))
            }));
        }
    }

    /// What a complete listing of `repo` with `tags` should do. `unresolvable` are tags whose
    /// HEAD fails with 404 this time (dangling, or a 404 injected into the HEAD).
    pub fn outcome(
        &self,
        repo: &str,
        tags: &BTreeMap<String, SimTag>,
        unresolvable: &BTreeSet<String>,
        google: bool,
        hostile: bool,
        cfg: &SimConfig,
    ) -> Outcome {
        let r = self.repos.get(repo).cloned().unwrap_or_default();
        let empty = BTreeMap::new();
        // The state diffed against: none for a baseline, empty for a repository that is new.
        let prev: Option<&BTreeMap<String, Option<String>>> = match (&r.known, r.decision) {
            (Some(k), _) => Some(k),
            (None, Some(true)) => Some(&empty),
            (None, _) => None,
        };
        let mut events = Vec::new();
        let mut known = BTreeMap::new();
        for (name, t) in tags {
            let (listed_digest, uploaded) = map_entry(name, t, google, hostile);
            let old = prev.and_then(|p| p.get(name));
            let selected = cfg.selects(name);
            let needs_head = listed_digest.is_none()
                && selected
                && (cfg.mutable(name) || (prev.is_some() && old.is_none()));
            let digest = if needs_head {
                if t.dangling || unresolvable.contains(name) {
                    match old {
                        // A baseline records names: nothing is reported of it either way.
                        None if prev.is_none() => None,
                        // New and not yet resolvable: neither reported nor recorded.
                        None => continue,
                        Some(was) => was.clone(),
                    }
                } else {
                    Some(t.digest.clone())
                }
            } else {
                listed_digest.clone().or_else(|| old.cloned().flatten())
            };
            let pushed_at = if listed_digest.is_some() {
                uploaded.expected_rfc3339()
            } else {
                None
            };
            if prev.is_some() && selected {
                let kind = match old {
                    None => Some("added"),
                    Some(Some(was)) if digest.as_ref().is_some_and(|d| d != was) => Some("updated"),
                    Some(_) => None,
                };
                if let Some(kind) = kind {
                    events.push(Ev {
                        kind: kind.into(),
                        tag: name.clone(),
                        digest: digest.clone(),
                        previous: old.cloned().flatten(),
                        pushed_at,
                    });
                }
            }
            known.insert(name.clone(), digest);
        }
        if cfg.emit_removed
            && let Some(prev) = prev
        {
            for (name, digest) in prev {
                if !known.contains_key(name) && !tags.contains_key(name) && cfg.selects(name) {
                    events.push(Ev {
                        kind: "removed".into(),
                        tag: name.clone(),
                        digest: digest.clone(),
                        previous: None,
                        pushed_at: None,
                    });
                }
            }
        }
        events.sort();
        Outcome { events, known }
    }

    /// Records that `repo`'s scan committed `known`.
    pub fn commit(&mut self, repo: &str, known: BTreeMap<String, Option<String>>) {
        self.repos.entry(repo.to_owned()).or_default().known = Some(known);
    }

    /// A complete listing of the registry under `cfg` finished: its watch set decides "new"
    /// from now on, and repositories it no longer watches are forgotten.
    pub fn complete_listing(&mut self, cfg: &SimConfig) {
        self.listed_with = Some(cfg.extra);
        self.repos.retain(|repo, _| cfg.watches(repo));
    }
}
