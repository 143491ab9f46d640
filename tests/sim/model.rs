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
//! - With `[registry.versions]` (README, "Versions"), added and moved tags are judged by the
//!   rules of "Order, floating tags and `bump`", written here from that text (see `Judge`); tags
//!   read as `tags.rs` says, from the fixture table's expected columns.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use super::registry::{SimTag, Uploaded};
use super::tags::{Reading, reading, table};

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
    /// Every name of the sim's tag table is in `mutable_tags` too.
    pub mutable_versions: bool,
    /// `[registry.versions]` with `scheme = "semver"`, or none (`scheme = "none"`).
    pub versions: Option<Versions>,
}

/// `[registry.versions]`, `scheme = "semver"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versions {
    /// `prerelease`.
    pub prerelease: bool,
    /// `only_newer`.
    pub only_newer: bool,
    /// `range`, one of `RANGES`.
    pub range: Option<&'static str>,
}

/// The ranges a run draws: only `>=` and `<` on partial versions, which mean the same padded
/// (`<3` is `<3.0.0`), so the model needs no more of semver's range syntax.
pub const RANGES: [&str; 5] = [">=1, <3", ">=2.10, <21", "<20", ">=3", ">=7.2"];

impl SimConfig {
    /// Whether the filter selects `tag` (it is reported).
    pub fn selects(&self, tag: &str) -> bool {
        (!self.include_v || tag.starts_with('v')) && !(self.exclude_rc && tag.ends_with("-rc"))
    }

    /// Whether `tag` is re-checked every scan.
    pub fn mutable(&self, tag: &str) -> bool {
        self.mutable.iter().any(|m| m == tag)
            || (self.mutable_versions && table().entries.contains_key(tag))
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
        let mut mutable = self.mutable.clone();
        if self.mutable_versions {
            mutable.extend(table().entries.keys().cloned());
        }
        let mut text = format!(
            "[[registry]]\nname = \"sim\"\nkind = \"oci\"\nurl = \"http://{host}\"\ninsecure = true\n\
             repositories = [{}]\ninclude_tags = [{}]\nexclude_tags = [{}]\nmutable_tags = [{}]\n\
             page_size = {page_size}\nrate_limit = 100000\nconcurrency = 4\nrequest_timeout = \"5s\"\n",
            list(&repos),
            list(&include),
            list(&exclude),
            list(&mutable),
        );
        if let Some(v) = &self.versions {
            text.push_str(&format!(
                "[registry.versions]\nscheme = \"semver\"\nprerelease = {}\nonly_newer = {}\n",
                v.prerelease, v.only_newer
            ));
            if let Some(range) = v.range {
                text.push_str(&format!("range = \"{range}\"\n"));
            }
        }
        text
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
    /// `data.version`: absent (`None`), null (`Some(None)`) or the version.
    pub version: Option<Option<String>>,
    /// `data.variant`.
    pub variant: Option<String>,
    /// `data.bump`.
    pub bump: Option<String>,
    /// `data.latest`.
    pub latest: Option<bool>,
    /// `data.points_to`.
    pub points_to: Option<String>,
}

impl Ev {
    fn plain(kind: &str, tag: &str, digest: Option<String>) -> Ev {
        Ev {
            kind: kind.into(),
            tag: tag.into(),
            digest,
            previous: None,
            pushed_at: None,
            version: None,
            variant: None,
            bump: None,
            latest: None,
            points_to: None,
        }
    }
}

/// What is remembered of a repository: every tag with its digest where known, and the tags
/// never reported that `only_newer` held back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Known {
    /// Tag to digest.
    pub tags: BTreeMap<String, Option<String>>,
    /// The held-back tags: their removal is no news until a move of them is reported.
    pub held_back: BTreeSet<String>,
}

/// What one complete listing of a repository should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Events, sorted.
    pub events: Vec<Ev>,
    /// What is remembered afterwards.
    pub known: Known,
}

/// The model's view of one repository.
#[derive(Debug, Clone, Default)]
pub struct RepoModel {
    /// Whether its first scan emits (decided when it is first listed).
    pub decision: Option<bool>,
    /// What is remembered since its last committed scan; `None` before the first.
    pub known: Option<Known>,
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
        let empty = Known::default();
        // The state diffed against: none for a baseline, empty for a repository that is new.
        let prev: Option<&Known> = match (&r.known, r.decision) {
            (Some(k), _) => Some(k),
            (None, Some(true)) => Some(&empty),
            (None, _) => None,
        };
        let mut events = Vec::new();
        let mut known = Known::default();
        for (name, t) in tags {
            let (listed_digest, uploaded) = map_entry(name, t, google, hostile);
            let old = prev.and_then(|p| p.tags.get(name));
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
                        previous: old.cloned().flatten(),
                        pushed_at,
                        ..Ev::plain(kind, name, digest.clone())
                    });
                }
            }
            known.tags.insert(name.clone(), digest);
        }
        let Some(prev) = prev else {
            return Outcome {
                events: Vec::new(),
                known,
            };
        };
        // The version policy judges the added and moved tags; those it does not report are
        // dropped, and new ones `only_newer` keeps out are held back.
        let mut dropped = BTreeSet::new();
        if let Some(policy) = &cfg.versions {
            let judge = Judge::new(policy, cfg, prev, &known);
            events.retain_mut(|e| {
                let verdict = judge.judge(&e.tag, e.digest.as_deref(), e.kind == "added");
                match verdict {
                    Verdict::Report(fill) => {
                        fill.apply(e);
                        true
                    }
                    Verdict::Silent => false,
                    Verdict::HeldBack => {
                        dropped.insert(e.tag.clone());
                        false
                    }
                }
            });
        }
        // A held-back tag stays held back while it is listed, until a move of it is reported.
        known.held_back = prev
            .held_back
            .iter()
            .filter(|t| known.tags.contains_key(*t) && !events.iter().any(|e| &e.tag == *t))
            .cloned()
            .chain(dropped)
            .collect();
        if cfg.emit_removed {
            for (name, digest) in &prev.tags {
                if !known.tags.contains_key(name)
                    && !tags.contains_key(name)
                    && cfg.selects(name)
                    && cfg.versions.as_ref().is_none_or(|p| admits(p, name))
                    && !prev.held_back.contains(name)
                {
                    events.push(Ev::plain("removed", name, digest.clone()));
                }
            }
        }
        events.sort();
        Outcome { events, known }
    }

    /// Records that `repo`'s scan committed `known`.
    pub fn commit(&mut self, repo: &str, known: Known) {
        self.repos.entry(repo.to_owned()).or_default().known = Some(known);
    }

    /// A complete listing of the registry under `cfg` finished: its watch set decides "new"
    /// from now on, and repositories it no longer watches are forgotten.
    pub fn complete_listing(&mut self, cfg: &SimConfig) {
        self.listed_with = Some(cfg.extra);
        self.repos.retain(|repo, _| cfg.watches(repo));
    }
}

// ---------------------------------------------------------------------------------------------
// Versions: the README's "Order, floating tags and `bump`", sentence by sentence.
// ---------------------------------------------------------------------------------------------

/// The release part padded to four numbers: "padded only to compare".
fn padded(r: &Reading) -> [u64; 4] {
    let mut n = [0; 4];
    for (i, x) in r.numbers.iter().take(4).enumerate() {
        n[i] = *x;
    }
    n
}

/// Semver's order of pre-release identifiers: numbers numerically and below words, words in
/// ASCII order, a longer list above its prefix; a release above every pre-release.
fn cmp_pre(a: &[String], b: &[String]) -> Ordering {
    match (a.is_empty(), b.is_empty()) {
        (true, true) => return Ordering::Equal,
        (true, false) => return Ordering::Greater,
        (false, true) => return Ordering::Less,
        _ => {}
    }
    for (x, y) in a.iter().zip(b) {
        let o = match (x.parse::<u64>(), y.parse::<u64>()) {
            (Ok(x), Ok(y)) => x.cmp(&y),
            (Ok(_), Err(_)) => Ordering::Less,
            (Err(_), Ok(_)) => Ordering::Greater,
            (Err(_), Err(_)) => x.cmp(y),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    a.len().cmp(&b.len())
}

/// "By their numbers (padded), then pre-release (below its release, semver's order), then
/// revision. Precision and build do not order."
fn cmp_versions(a: &Reading, b: &Reading) -> Ordering {
    padded(a)
        .cmp(&padded(b))
        .then_with(|| cmp_pre(&a.pre, &b.pre))
        .then_with(|| a.revision.cmp(&b.revision))
}

/// Whether `v` is in `range`: a pre-release when its release part is. The ranges the sim draws
/// compare the first three numbers, padded.
fn in_range(v: &Reading, range: &str) -> bool {
    let mut three = [0; 3];
    three.copy_from_slice(&padded(v)[..3]);
    range.split(',').all(|c| {
        let c = c.trim();
        let (op, bound) = if let Some(b) = c.strip_prefix(">=") {
            (">=", b)
        } else if let Some(b) = c.strip_prefix('<') {
            ("<", b)
        } else {
            panic!("the model reads only >= and < ranges: {c}")
        };
        let mut b = [0; 3];
        for (i, x) in bound.trim().split('.').enumerate() {
            b[i] = x.parse().unwrap();
        }
        match op {
            ">=" => three >= b,
            _ => three < b,
        }
    })
}

/// "A version counts when it is in `range` and is a release, or a pre-release with
/// `prerelease = true`."
fn counts(p: &Versions, v: &Reading) -> bool {
    (v.is_release() || p.prerelease) && p.range.is_none_or(|r| in_range(v, r))
}

/// Whether the policy reports `tag` at all: "a counted version, or a tag that is no version while
/// `range` is unset" (what `emit_removed` may report).
fn admits(p: &Versions, tag: &str) -> bool {
    match reading(tag) {
        Some(v) => counts(p, v),
        None => p.range.is_none(),
    }
}

/// Whether the release `spec` is a more specific release than the alias `alias` (same variant):
/// it has the alias's written numbers and more of them (`1.2.5` refines `1` and `1.2`), or the
/// same ones and a revision (`8.9-1107` refines `8.9`).
fn refines(spec: &Reading, alias: &Reading) -> bool {
    spec.variant == alias.variant
        && spec.is_release()
        && alias.is_release()
        && alias.revision.is_empty()
        && spec.numbers.len() >= alias.numbers.len()
        && spec.numbers[..alias.numbers.len()] == alias.numbers[..]
        && (spec.numbers.len() > alias.numbers.len() || !spec.revision.is_empty())
}

/// What the version policy does with one added or moved tag.
#[derive(Debug)]
pub enum Verdict {
    /// Reported, with these fields.
    Report(Fill),
    /// Not reported: the policy never reports it (not counted; no version while `range` is set).
    Silent,
    /// Not reported, and remembered as never reported: `only_newer` dropped it.
    HeldBack,
}

/// The version fields of a reported event.
#[derive(Debug)]
pub struct Fill {
    version: Option<&'static Reading>,
    bump: Option<&'static str>,
    latest: bool,
    points_to: Option<String>,
}

impl Fill {
    fn apply(self, e: &mut Ev) {
        e.version = Some(self.version.map(|r| r.version.clone()));
        if let Some(r) = self.version {
            e.variant = Some(r.variant.clone());
            e.bump = self.bump.map(str::to_owned);
            e.latest = Some(self.latest);
        }
        e.points_to = self.points_to;
    }
}

/// The versions of one diff: known before (the previous snapshot) and now (the new one), only
/// tags the filter selects.
pub struct Judge<'a> {
    policy: &'a Versions,
    /// Counted versions of the previous snapshot.
    before: Vec<&'static Reading>,
    /// Versions of the new snapshot, with their tags and digests.
    now: Vec<(&'static Reading, Option<&'a str>, &'a str)>,
}

impl<'a> Judge<'a> {
    fn new(policy: &'a Versions, cfg: &SimConfig, prev: &Known, known: &'a Known) -> Judge<'a> {
        let before = prev
            .tags
            .keys()
            .filter(|t| cfg.selects(t))
            .filter_map(|t| reading(t))
            .filter(|v| counts(policy, v))
            .collect();
        let now = known
            .tags
            .iter()
            .filter(|(t, _)| cfg.selects(t))
            .filter_map(|(t, d)| Some((reading(t)?, d.as_deref(), t.as_str())))
            .collect();
        Judge {
            policy,
            before,
            now,
        }
    }

    /// "A floating tag is a release that a more specific release of its variant in the listing
    /// refines."
    fn floating(&self, v: &Reading) -> bool {
        self.now.iter().any(|(s, _, _)| refines(s, v))
    }

    /// The highest counted version of `variant` now, and the highest counted release.
    fn highest(&self, variant: &str, releases: bool) -> Option<&'static Reading> {
        self.now
            .iter()
            .map(|(r, _, _)| *r)
            .filter(|r| r.variant == variant && counts(self.policy, r))
            .filter(|r| !releases || r.is_release())
            .max_by(|a, b| cmp_versions(a, b))
    }

    /// The bump of a new tag: "a new release above the highest release known before in its
    /// variant", "a new pre-release above every version known before in its variant,
    /// pre-releases included"; "an alias that a new tag refines is not known before it".
    fn bump_of_new(&self, v: &Reading, floating: bool) -> &'static str {
        let reference = self
            .before
            .iter()
            .filter(|k| k.variant == v.variant)
            .filter(|k| !v.is_release() || k.is_release())
            .filter(|k| !refines(v, k))
            .max_by(|a, b| cmp_versions(a, b));
        let Some(r) = reference else {
            // A floating tag that appears: `floating`, even as the variant's first.
            return if floating { "floating" } else { "first" };
        };
        if floating {
            // An alias below the highest release known before at its own precision (`1.1` when
            // `1.2.5` is known) is a new version below it: `older`. One that covers it (`1.2`)
            // or is above it floats.
            let p = v.numbers.len();
            return if v.numbers[..] < padded(r)[..p] {
                "older"
            } else {
                "floating"
            };
        }
        match cmp_versions(v, r) {
            Ordering::Less => "older",
            Ordering::Equal => "rebuild",
            Ordering::Greater if !v.is_release() => "prerelease",
            Ordering::Greater => {
                let (a, b) = (padded(v), padded(r));
                match (0..4).find(|&i| a[i] != b[i]) {
                    Some(0) => "major",
                    Some(1) => "minor",
                    Some(_) => "patch",
                    // The same numbers, a higher revision: a rebuild.
                    None => "rebuild",
                }
            }
        }
    }

    /// "`points_to` names the most specific version tag on its digest (`1.2.4`,
    /// `1.25.3-debian-12-r6`), as listed": the most specific (most numbers), then highest tag
    /// that refines the alias on the same digest, by name; equal ones, the first name. None
    /// when the listing has none.
    fn points_to(&self, v: &Reading, digest: Option<&str>) -> Option<String> {
        let digest = digest?;
        self.now
            .iter()
            .filter(|(s, d, _)| *d == Some(digest) && refines(s, v))
            .max_by(|(a, _, ta), (b, _, tb)| {
                a.numbers
                    .len()
                    .cmp(&b.numbers.len())
                    .then_with(|| cmp_versions(a, b))
                    .then_with(|| tb.cmp(ta))
            })
            .map(|(_, _, t)| (*t).to_owned())
    }

    fn judge(&self, tag: &str, digest: Option<&str>, is_new: bool) -> Verdict {
        let p = self.policy;
        let Some(v) = reading(tag) else {
            // "With `range` set, never reported. With `only_newer`, a new one is not reported,
            // but a moved one is. Otherwise they are reported with `version` null."
            return if p.range.is_some() {
                Verdict::Silent
            } else if p.only_newer && is_new {
                Verdict::HeldBack
            } else {
                Verdict::Report(Fill {
                    version: None,
                    bump: None,
                    latest: false,
                    points_to: None,
                })
            };
        };
        if !counts(p, v) {
            return Verdict::Silent;
        }
        let floating = self.floating(v);
        let bump = match (is_new, floating) {
            // "A floating tag that appears or moves."
            (false, true) => "floating",
            // "A version tag re-pushed (`tag.updated`)."
            (false, false) => "rebuild",
            (true, _) => self.bump_of_new(v, floating),
        };
        // "`only_newer` drops only a new tag whose `bump` would be `older`."
        if is_new && p.only_newer && bump == "older" {
            return Verdict::HeldBack;
        }
        // "`latest` is per variant: the version is now the highest counted one of its variant. A
        // floating tag is latest when the highest release of its variant is one of its own."
        let latest = if floating {
            self.highest(&v.variant, true)
                .is_some_and(|h| padded(h)[..v.numbers.len()] == v.numbers[..])
        } else {
            self.highest(&v.variant, false)
                .is_some_and(|h| cmp_versions(h, v) == Ordering::Equal)
        };
        Verdict::Report(Fill {
            version: Some(v),
            bump: Some(bump),
            latest,
            // "On `bump = "floating"`, `points_to` names…"
            points_to: if bump == "floating" {
                self.points_to(v, digest)
            } else {
                None
            },
        })
    }
}
