//! The simulation suite: random sequences of operations (pushes, re-pushes, moves back and forth,
//! deletes, dangling manifests, a lagging catalog, webhook hints, restarts with and without a lost
//! commit, a repository's state partition moving away mid-cycle as cluster mode's rebalances do,
//! config edits, Kafka away and back) against the simulated registry of `registry.rs`,
//! with its quirks switched per run and faults injected per request. Tag names come from the
//! fixture families of `tags.rs`; most runs turn `[registry.versions]` on, and floating aliases
//! and other spellings of a version are tagged onto existing digests. The real scanner and the
//! real redb store run them; after every step the checker compares what was committed with the
//! reference model of `model.rs`:
//!
//! - no panic, in any task (a panic fails the case);
//! - a repository's step either changes nothing (its listing failed or was skipped) or commits
//!   exactly the model's events and snapshot: an incomplete listing changes nothing; events
//!   include `version`, `variant`, `bump`, `latest` and `points_to`, the snapshot the tags
//!   `only_newer` held back;
//! - a listing with no fault injected is not skipped, and one that cannot be complete (a registry
//!   that ignores `last`) never commits;
//! - one change never gets two ids (a commit lost in a crash, or refused because its partition
//!   moved, is detected again with the same ids), and two changes never share one;
//! - a partition that moved away mid-cycle is never counted as unrecorded (which would make a
//!   healthy replica unready);
//! - after the faults stop, every repository catches up within the backoff ceiling: nothing is
//!   withheld, whatever dangles next to it;
//! - every event is delivered (deduplicated by id, same payload on redelivery) and validates
//!   against `schema/event.schema.json`.
//!
//! CI runs `SIM_CASES` cases per property (default below); failing seeds are kept by proptest in
//! `tests/sim/proptest-regressions.txt` and replayed first. `scripts/sim-long.sh` runs longer;
//! `SIM_TRACE=1` prints every committed event and a line per case.

mod model;
mod registry;
mod tags;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config as PropConfig, FileFailurePersistence, TestRunner};
use regwatch::config::{self, FirstRun};
use regwatch::event::Event;
use regwatch::store::{RepoState, StateStore, Store, StoreError};
use regwatch::watch::diff::Snapshot;
use regwatch::watch::scan::{Output, Scanner};
use tokio::sync::Notify;

use model::{Ev, Known, Model, RANGES, REPOS, SimConfig, Versions};
use registry::{Faults, LinkMode, Quirks, Sim, SimTag, Uploaded};

/// Cases per property in CI: a few minutes on 2 cores for all of them.
const CI_CASES: u32 = 128;
/// Quiet cycles after the last operation: the longest a failed repository sits out (7 cycles)
/// plus the two consecutive complete listings that must deliver.
const QUIESCE_CYCLES: usize = 10;

/// One operation of a run.
#[derive(Debug, Clone)]
enum Op {
    /// Pushes a new digest to `tag` (of the run's pool).
    Push {
        repo: usize,
        tag: Index,
        uploaded: Uploaded,
    },
    /// Pushes a new digest to one of the tags `repo` has (a rebuild).
    Repush {
        repo: usize,
        tag: Index,
        uploaded: Uploaded,
    },
    /// Tags a floating alias of one of `repo`'s releases onto that release's digest (`1.21`
    /// onto `1.21.6`'s): creates the alias or moves it there.
    Alias {
        repo: usize,
        target: Index,
        alias: Index,
    },
    /// Tags another spelling of one of `repo`'s tags (`v1.2.3` beside `1.2.3`, `20-Alpine`
    /// beside `20-alpine`) onto its digest.
    Respell {
        repo: usize,
        tag: Index,
        spelling: Index,
    },
    /// Moves `tag` back to the digest it had before its last move.
    MoveBack { repo: usize, tag: Index },
    /// Deletes `tag`.
    Delete { repo: usize, tag: Index },
    /// A new tag whose manifest is already gone (garbage collected): listed, HEAD 404.
    Dangle { repo: usize, tag: Index },
    /// A dangling tag's manifest is pushed again.
    Settle { repo: usize, tag: Index },
    /// The catalog stops listing `repo` for a while (it lags behind `tags/list`).
    Hide { repo: usize },
    /// The catalog catches up.
    Show { repo: usize },
    /// One full cycle, with these faults injected.
    Scan { faults: Faults },
    /// A webhook hint for `repo`.
    Hint { repo: usize },
    /// The daemon restarts (state on disk survives, memory does not).
    Restart,
    /// The daemon crashes inside the commits of a cycle (nothing of them reaches disk), restarts
    /// and scans again at once.
    CrashInCommit,
    /// Cluster mode's rebalance, as the scanner sees it: `repo`'s state partition moves to
    /// another replica during one cycle (its state read, or its commit, is refused as moved).
    Moved { repo: usize, at_read: bool },
    /// The config is edited (a reload).
    Edit { cfg: SimConfig },
    /// The publisher delivers the oldest half of the outbox, or all of it.
    Deliver { all: bool },
    /// The publisher delivers everything but the crash loses the acknowledgement.
    DeliverThenCrash,
    /// Kafka goes away / comes back.
    Kafka { up: bool },
}

fn uploaded() -> impl Strategy<Value = Uploaded> {
    prop_oneof![
        6 => (1_500_000_000_000u64..1_800_000_000_000).prop_map(Uploaded::Ms),
        1 => Just(Uploaded::Year10000),
        1 => Just(Uploaded::Max),
        1 => Just(Uploaded::Negative),
        1 => Just(Uploaded::Garbage),
    ]
}

fn faults() -> impl Strategy<Value = Faults> {
    prop_oneof![
        5 => Just(Faults::default()),
        1 => (0u8..15, 0u8..15, 0u8..20).prop_map(|(not_found, server_error, throttled)| Faults {
            not_found,
            server_error,
            throttled,
        }),
    ]
}

fn versions() -> impl Strategy<Value = Versions> {
    (
        any::<bool>(),
        any::<bool>(),
        prop::option::weighted(0.4, prop::sample::select(RANGES.to_vec())),
    )
        .prop_map(|(prerelease, only_newer, range)| Versions {
            prerelease,
            only_newer,
            range,
        })
}

fn sim_config() -> impl Strategy<Value = SimConfig> {
    (
        prop::bool::weighted(0.2),
        any::<bool>(),
        prop::sample::subsequence(vec!["latest".to_string(), "v1".to_string()], 0..=2),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop::option::weighted(0.75, versions()),
    )
        .prop_map(
            |(include_v, exclude_rc, mutable, emit_removed, extra, mutable_versions, versions)| {
                SimConfig {
                    include_v,
                    exclude_rc,
                    mutable,
                    emit_removed,
                    extra,
                    mutable_versions,
                    versions,
                }
            },
        )
}

fn op() -> impl Strategy<Value = Op> {
    let repo = 0..REPOS.len();
    // Version pushes gather in two repositories, so that their tags meet.
    let versioned = prop_oneof![4 => Just(0), 2 => Just(1), 1 => 0..REPOS.len()];
    let tag = any::<Index>();
    prop_oneof![
        16 => (versioned.clone(), tag.clone(), uploaded()).prop_map(|(repo, tag, uploaded)| Op::Push { repo, tag, uploaded }),
        4 => (versioned.clone(), tag.clone(), uploaded()).prop_map(|(repo, tag, uploaded)| Op::Repush { repo, tag, uploaded }),
        4 => (versioned.clone(), tag.clone(), any::<Index>()).prop_map(|(repo, target, alias)| Op::Alias { repo, target, alias }),
        3 => (versioned.clone(), tag.clone(), any::<Index>()).prop_map(|(repo, tag, spelling)| Op::Respell { repo, tag, spelling }),
        2 => (repo.clone(), tag.clone()).prop_map(|(repo, tag)| Op::MoveBack { repo, tag }),
        4 => (versioned, tag.clone()).prop_map(|(repo, tag)| Op::Delete { repo, tag }),
        2 => (repo.clone(), tag.clone()).prop_map(|(repo, tag)| Op::Dangle { repo, tag }),
        1 => (repo.clone(), tag.clone()).prop_map(|(repo, tag)| Op::Settle { repo, tag }),
        1 => repo.clone().prop_map(|repo| Op::Hide { repo }),
        1 => repo.clone().prop_map(|repo| Op::Show { repo }),
        8 => faults().prop_map(|faults| Op::Scan { faults }),
        2 => repo.clone().prop_map(|repo| Op::Hint { repo }),
        1 => Just(Op::Restart),
        1 => Just(Op::CrashInCommit),
        1 => (repo, any::<bool>()).prop_map(|(repo, at_read)| Op::Moved { repo, at_read }),
        1 => sim_config().prop_map(|cfg| Op::Edit { cfg }),
        2 => any::<bool>().prop_map(|all| Op::Deliver { all }),
        1 => Just(Op::DeliverThenCrash),
        1 => any::<bool>().prop_map(|up| Op::Kafka { up }),
    ]
}

fn quirks() -> impl Strategy<Value = Quirks> {
    (
        prop_oneof![
            Just(LinkMode::Relative),
            Just(LinkMode::Absolute),
            Just(LinkMode::None),
            Just(LinkMode::SomePages)
        ],
        prop::bool::weighted(0.25),
        prop::bool::weighted(0.2),
        prop::option::weighted(0.2, 1usize..4),
        prop::bool::weighted(0.4),
        any::<bool>(),
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.2),
    )
        .prop_map(
            |(link, ignore_last, ignore_n, cap_n, google, hostile, duplicates, redirect)| Quirks {
                link,
                ignore_last,
                ignore_n,
                cap_n,
                google,
                hostile_map: google && hostile,
                duplicates,
                redirect,
            },
        )
}

/// One generated run.
#[derive(Debug, Clone)]
struct Run {
    quirks: Quirks,
    page_size: usize,
    cfg: SimConfig,
    seed: u64,
    /// The tag names pushes draw from: the first pool and some tags of 2 or 3 families of the
    /// fixture table.
    pool: Vec<String>,
    ops: Vec<Op>,
}

/// Some tags of 2 or 3 families, in random order, after the first pool. The leading family gives
/// most of its main variant (the empty one when it has versions there), so that its versions meet
/// and order; every family gives a few of the rest (other variants, mixed-case spellings, tags
/// that are no versions), and the others a few of their main variant.
fn pool() -> impl Strategy<Value = Vec<String>> {
    prop::sample::subsequence((0..tags::FAMILIES.len()).collect::<Vec<_>>(), 2..=3)
        .prop_shuffle()
        .prop_flat_map(|families| {
            families
                .into_iter()
                .enumerate()
                .map(|(i, f)| {
                    let (main, rest) = tags::main_variant(f);
                    let m = main.len().min(10);
                    let main_size = if i == 0 {
                        m.div_ceil(2)..=m
                    } else {
                        0..=m.min(2)
                    };
                    let r = rest.len().min(2);
                    (
                        prop::sample::subsequence(main, main_size),
                        prop::sample::subsequence(rest, r.min(1)..=r),
                    )
                })
                .collect::<Vec<_>>()
        })
        .prop_flat_map(|chosen| {
            let mut names: Vec<String> = chosen
                .into_iter()
                .flat_map(|(main, rest)| main.into_iter().chain(rest))
                .collect();
            names.sort();
            names.dedup();
            Just(names).prop_shuffle()
        })
        .prop_map(|names| {
            let mut pool = tags::base_pool();
            pool.extend(names.into_iter().filter(|n| !tags::base_pool().contains(n)));
            pool
        })
}

fn run_strategy(max_ops: usize) -> impl Strategy<Value = Run> {
    (
        quirks(),
        2usize..6,
        sim_config(),
        any::<u64>(),
        pool(),
        prop::collection::vec(op(), 1..max_ops),
    )
        .prop_map(|(quirks, page_size, cfg, seed, pool, ops)| Run {
            quirks,
            page_size,
            cfg,
            seed,
            pool,
            ops,
        })
}

/// The store as the scanner sees it, with a switch that makes every commit fail as a crash
/// inside it would: nothing of the commit is written. The events of the lost commits are kept.
/// It can also refuse one repository as cluster mode does when its partition moved: at its read,
/// or at its commit (whose events are kept too).
struct CrashingStore {
    inner: Arc<Store>,
    crash: AtomicBool,
    moved: Mutex<Option<(String, bool)>>,
    lost: Mutex<Vec<Event>>,
}

impl CrashingStore {
    fn moved(&self, repo: &str, at_read: bool) -> Result<(), StoreError> {
        match &*self.moved.lock().unwrap() {
            Some((r, read)) if r == repo && *read == at_read => Err(StoreError::Moved(format!(
                "simulated: {repo}'s partition moved to another replica"
            ))),
            _ => Ok(()),
        }
    }
}

impl StateStore for CrashingStore {
    fn repo_state(&self, r: &str, repo: &str) -> Result<Option<RepoState>, StoreError> {
        self.moved(repo, true)?;
        self.inner.repo_state(r, repo)
    }
    fn watch_set(&self, r: &str) -> Result<Option<Vec<String>>, StoreError> {
        self.inner.watch_set(r)
    }
    fn set_watch_set(&self, r: &str, p: &[String], epoch: u64) -> Result<(), StoreError> {
        self.inner.set_watch_set(r, p, epoch)
    }
    fn record_pending(&self, r: &str, repo: &str, emit: bool, rev: u64) -> Result<(), StoreError> {
        self.inner.record_pending(r, repo, emit, rev)
    }
    fn commit_scan(
        &self,
        r: &str,
        repo: &str,
        base: Option<u64>,
        snapshot: &Snapshot,
        events: &[Event],
    ) -> Result<(), StoreError> {
        if self.crash.load(Ordering::SeqCst) {
            self.lost.lock().unwrap().extend(events.iter().cloned());
            return Err(StoreError::Io("simulated crash inside the commit".into()));
        }
        if let Err(e) = self.moved(repo, false) {
            self.lost.lock().unwrap().extend(events.iter().cloned());
            return Err(e);
        }
        self.inner.commit_scan(r, repo, base, snapshot, events)
    }
    fn fresh_revision(&self) -> u64 {
        self.inner.fresh_revision()
    }
    fn repositories(&self, r: &str) -> Result<Vec<String>, StoreError> {
        self.inner.repositories(r)
    }
    fn forget_repositories(&self, r: &str, repos: &[String]) -> Result<(), StoreError> {
        self.inner.forget_repositories(r, repos)
    }
}

/// A committed event, as the checker reads it.
#[derive(Debug, Clone)]
struct Seen {
    id: String,
    repo: String,
    ev: Ev,
    payload: String,
}

fn seen(e: &Event) -> Seen {
    let v: serde_json::Value = serde_json::from_str(&e.payload).expect("event JSON");
    let d = &v["data"];
    let s = |x: &serde_json::Value| x.as_str().map(str::to_owned);
    // Absent, null or a string: `Some(None)` is the null.
    let version = d.get("version").map(|v| {
        assert!(v.is_null() || v.is_string(), "data.version {v}");
        s(v)
    });
    Seen {
        id: e.id.clone(),
        repo: s(&d["repository"]).expect("data.repository"),
        ev: Ev {
            kind: v["type"]
                .as_str()
                .and_then(|t| t.strip_prefix("io.regwatch.tag."))
                .expect("a tag event type")
                .to_owned(),
            tag: s(&d["tag"]).expect("data.tag"),
            digest: s(&d["digest"]),
            previous: s(&d["previous_digest"]),
            pushed_at: s(&d["pushed_at"]),
            version,
            variant: s(&d["variant"]),
            bump: s(&d["bump"]),
            latest: d["latest"].as_bool(),
            points_to: s(&d["points_to"]),
        },
        payload: e.payload.clone(),
    }
}

/// A running simulation: the registry, the daemon's parts, the model and what was observed.
struct World {
    sim: Sim,
    host: String,
    page_size: usize,
    cfg: SimConfig,
    dir: tempfile::TempDir,
    /// The store, behind the crash switch; `None` only while it is reopened.
    crashing: Option<Arc<CrashingStore>>,
    scanner: Scanner,
    model: Model,
    /// Committed snapshots as last observed (Known states only).
    observed: BTreeMap<String, Known>,
    /// Outbox sequences already looked at and still in the outbox (redb numbers events from the
    /// last one present, so numbers come back once the outbox is empty).
    looked_at: BTreeSet<u64>,
    /// Every committed event, by id.
    committed: HashMap<String, String>,
    /// What the consumer received, deduplicated by id.
    delivered: HashMap<String, String>,
    kafka_up: bool,
    digests: u64,
    /// Each tag's digests over time, to move back.
    history: BTreeMap<(String, String), Vec<String>>,
    /// Each digest's upload time: one manifest, one time, whichever tags point at it.
    uploaded_of: HashMap<String, Uploaded>,
    /// The tag names pushes draw from.
    pool: Vec<String>,
    validator: Arc<jsonschema::Validator>,
    log: Vec<String>,
}

fn store_view(state: Option<RepoState>) -> Option<Known> {
    match state {
        Some(RepoState::Known(s)) => Some(Known {
            tags: s.tags,
            held_back: s.held_back,
        }),
        _ => None,
    }
}

impl World {
    async fn new(
        run: &Run,
        validator: Arc<jsonschema::Validator>,
    ) -> (World, tokio::task::JoinHandle<()>) {
        let sim = registry::new(run.quirks, run.seed);
        {
            let mut s = sim.lock().unwrap();
            for (repo, tags) in [
                ("team/a", vec!["v1", "latest", "z"]),
                ("team/b", vec!["v1", "v2", "v3-rc", "latest"]),
                ("extra/x", vec!["v1"]),
            ] {
                for (i, tag) in tags.into_iter().enumerate() {
                    s.repos.entry(repo.into()).or_default().insert(
                        tag.into(),
                        SimTag {
                            digest: digest_of(u64::MAX - i as u64, repo),
                            dangling: false,
                            uploaded: Uploaded::Ms(1_600_000_000_000),
                        },
                    );
                }
            }
        }
        let (host, server) = registry::serve(sim.clone()).await;
        let dir = tempfile::tempdir().unwrap();
        let crashing = Some(open(dir.path()));
        let scanner = scanner(&run.cfg, &host, run.page_size);
        let world = World {
            sim,
            host,
            page_size: run.page_size,
            cfg: run.cfg.clone(),
            dir,
            crashing,
            scanner,
            model: Model::default(),
            observed: BTreeMap::new(),
            looked_at: BTreeSet::new(),
            committed: HashMap::new(),
            delivered: HashMap::new(),
            kafka_up: true,
            digests: 0,
            history: BTreeMap::new(),
            uploaded_of: HashMap::new(),
            pool: run.pool.clone(),
            validator,
            log: Vec::new(),
        };
        (world, server)
    }

    fn crashing(&self) -> &Arc<CrashingStore> {
        self.crashing.as_ref().expect("store open")
    }

    fn store(&self) -> &Store {
        &self.crashing().inner
    }

    fn output(&self) -> Output {
        Output::Commit {
            store: self.crashing().clone(),
            published: Arc::new(Notify::new()),
        }
    }

    /// A restart: memory is lost, the state file is opened again, the outbox is still there.
    fn restart(&mut self) {
        // redb allows one handle per file: the old one goes first.
        self.crashing = None;
        self.crashing = Some(open(self.dir.path()));
        self.scanner = scanner(&self.cfg, &self.host, self.page_size);
    }

    /// Applies a registry operation; returns what it did, by name.
    fn apply(&mut self, op: &Op) -> String {
        self.digests += 1;
        let fresh = self.digests;
        let mut s = self.sim.lock().unwrap();
        // One of `repo`'s tags that `pick` accepts, chosen by `index`.
        let existing = |s: &registry::SimState,
                        repo: &str,
                        index: &Index,
                        pick: &dyn Fn(&str, &SimTag) -> bool| {
            let names: Vec<String> = s
                .repos
                .get(repo)
                .into_iter()
                .flatten()
                .filter(|(n, t)| pick(n, t))
                .map(|(n, _)| n.clone())
                .collect();
            (!names.is_empty()).then(|| index.get(&names).clone())
        };
        match op {
            Op::Push {
                repo,
                tag,
                uploaded,
            }
            | Op::Repush {
                repo,
                tag,
                uploaded,
            } => {
                let repo = REPOS[*repo];
                let tag = if matches!(op, Op::Push { .. }) {
                    tag.get(&self.pool).clone()
                } else {
                    match existing(&s, repo, tag, &|_, _| true) {
                        Some(tag) => tag,
                        None => return format!("repush in {repo}: no tag"),
                    }
                };
                let digest = digest_of(fresh, repo);
                self.history
                    .entry((repo.into(), tag.clone()))
                    .or_default()
                    .push(digest.clone());
                self.uploaded_of.insert(digest.clone(), *uploaded);
                let t = SimTag {
                    digest,
                    dangling: false,
                    uploaded: *uploaded,
                };
                s.repos
                    .entry(repo.into())
                    .or_default()
                    .insert(tag.clone(), t);
                format!("{repo}:{tag} pushed")
            }
            Op::Alias {
                repo,
                target,
                alias,
            } => {
                let repo = REPOS[*repo];
                let entries = &tags::table().entries;
                let aliased = |n: &str, t: &SimTag| {
                    !t.dangling && entries.get(n).is_some_and(|e| !e.aliases.is_empty())
                };
                let Some(target) = existing(&s, repo, target, &aliased) else {
                    return format!("alias in {repo}: no release to alias");
                };
                let alias = alias.get(&entries[&target].aliases).clone();
                let t = s.repos[repo][&target].clone();
                self.history
                    .entry((repo.into(), alias.clone()))
                    .or_default()
                    .push(t.digest.clone());
                s.repos.get_mut(repo).unwrap().insert(alias.clone(), t);
                format!("{repo}:{alias} tagged onto {target}")
            }
            Op::Respell {
                repo,
                tag,
                spelling,
            } => {
                let repo = REPOS[*repo];
                let entries = &tags::table().entries;
                let spelled = |n: &str, t: &SimTag| !t.dangling && entries[n].spellings.len() > 1;
                let Some(tag) = existing(&s, repo, tag, &spelled) else {
                    return format!("respell in {repo}: no tag with another spelling");
                };
                let others: Vec<String> = entries[&tag]
                    .spellings
                    .iter()
                    .filter(|n| **n != tag)
                    .cloned()
                    .collect();
                let other = spelling.get(&others).clone();
                let t = s.repos[repo][&tag].clone();
                self.history
                    .entry((repo.into(), other.clone()))
                    .or_default()
                    .push(t.digest.clone());
                s.repos.get_mut(repo).unwrap().insert(other.clone(), t);
                format!("{repo}:{other} tagged onto {tag}")
            }
            Op::MoveBack { repo, tag } => {
                let repo = REPOS[*repo];
                let history = &self.history;
                let movable = |n: &str, t: &SimTag| {
                    !t.dangling
                        && history
                            .get(&(repo.to_owned(), n.to_owned()))
                            .is_some_and(|h| h.len() >= 2)
                };
                let Some(tag) = existing(&s, repo, tag, &movable) else {
                    return format!("move back in {repo}: no tag moved before");
                };
                let history = self.history.get_mut(&(repo.into(), tag.clone())).unwrap();
                let back = history[history.len() - 2].clone();
                history.push(back.clone());
                let t = s.repos.get_mut(repo).unwrap().get_mut(&tag).unwrap();
                t.digest = back.clone();
                if let Some(u) = self.uploaded_of.get(&back) {
                    t.uploaded = *u;
                }
                format!("{repo}:{tag} moved back")
            }
            Op::Delete { repo, tag } => {
                let repo = REPOS[*repo];
                let Some(tag) = existing(&s, repo, tag, &|_, _| true) else {
                    return format!("delete in {repo}: no tag");
                };
                s.repos.get_mut(repo).unwrap().remove(&tag);
                format!("{repo}:{tag} deleted")
            }
            Op::Dangle { repo, tag } => {
                let (repo, tag) = (REPOS[*repo], tag.get(&self.pool).clone());
                let tags = s.repos.entry(repo.into()).or_default();
                let new = !tags.contains_key(&tag);
                tags.entry(tag.clone()).or_insert_with(|| SimTag {
                    digest: digest_of(fresh, repo),
                    dangling: true,
                    uploaded: Uploaded::Ms(1_700_000_000_000),
                });
                format!(
                    "{repo}:{tag} dangles{}",
                    if new { "" } else { " (no: listed)" }
                )
            }
            Op::Settle { repo, tag } => {
                let repo = REPOS[*repo];
                let Some(tag) = existing(&s, repo, tag, &|_, t| t.dangling) else {
                    return format!("settle in {repo}: nothing dangles");
                };
                s.repos
                    .get_mut(repo)
                    .unwrap()
                    .get_mut(&tag)
                    .unwrap()
                    .dangling = false;
                format!("{repo}:{tag} settles")
            }
            Op::Hide { repo } => {
                s.catalog_hidden.insert(REPOS[*repo].into());
                format!("{} hidden from the catalog", REPOS[*repo])
            }
            Op::Show { repo } => {
                s.catalog_hidden.remove(REPOS[*repo]);
                format!("{} shown in the catalog", REPOS[*repo])
            }
            _ => String::new(),
        }
    }

    /// Compares what the last step committed with the model; `complete` when it was a full
    /// cycle whose listing succeeded, `crashed` when its commits were lost on purpose.
    fn check_step(&mut self, what: &str, complete: bool, crashed: bool) -> Result<(), String> {
        let (listed, faulted, head_faulted, tags, hidden, quirks) = {
            let s = self.sim.lock().unwrap();
            (
                s.listed.clone(),
                s.faulted.clone(),
                s.head_faulted.clone(),
                s.repos.clone(),
                s.catalog_hidden.clone(),
                s.quirks,
            )
        };
        // What the step committed.
        let fresh: Vec<(u64, Event)> = self
            .store()
            .outbox_batch(usize::MAX)
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|(seq, _)| !self.looked_at.contains(seq))
            .collect();
        self.looked_at.extend(fresh.iter().map(|(seq, _)| *seq));
        let mut by_repo: BTreeMap<String, Vec<Seen>> = BTreeMap::new();
        for (_, e) in &fresh {
            let s = seen(e);
            if let Some(before) = self.committed.insert(s.id.clone(), s.payload.clone()) {
                return Err(format!(
                    "{what}: id {} committed twice:\n{before}\n{}",
                    s.id, s.payload
                ));
            }
            let v: serde_json::Value = serde_json::from_str(&s.payload).unwrap();
            let errors: Vec<String> = self
                .validator
                .iter_errors(&v)
                .map(|e| e.to_string())
                .collect();
            if !errors.is_empty() {
                return Err(format!(
                    "{what}: event breaks the schema: {errors:?}\n{}",
                    s.payload
                ));
            }
            tally(&s.ev);
            by_repo.entry(s.repo.clone()).or_default().push(s);
        }
        for repo in &listed {
            if self.cfg.watches(repo) {
                self.model.decide(repo);
            }
        }
        let identity = self.scanner.identity.clone();
        let mut repos: BTreeSet<String> = REPOS.iter().map(|r| r.to_string()).collect();
        repos.extend(by_repo.keys().cloned());
        for repo in repos {
            let state = self
                .store()
                .repo_state(&identity, &repo)
                .map_err(|e| e.to_string())?;
            let forgotten = state.is_none() && self.model.repos.contains_key(&repo);
            let after = store_view(state);
            let before = self.observed.get(&repo).cloned();
            let mut events: Vec<Ev> = by_repo
                .get(&repo)
                .map(|v| v.iter().map(|s| s.ev.clone()).collect())
                .unwrap_or_default();
            events.sort();
            let empty = BTreeMap::new();
            let repo_tags = tags.get(&repo).unwrap_or(&empty);
            if !self.cfg.watches(&repo) {
                // Left the watch set: forgotten after a complete listing, never scanned.
                if !events.is_empty() {
                    return Err(format!("{what}: events for unwatched {repo}: {events:?}"));
                }
                if complete && after.is_some() {
                    return Err(format!(
                        "{what}: {repo} left the watch set but was not forgotten"
                    ));
                }
                if after.is_none() {
                    self.model.repos.remove(&repo);
                    self.observed.remove(&repo);
                } else if after != before {
                    return Err(format!("{what}: unwatched {repo} changed"));
                }
                continue;
            }
            if forgotten {
                // Forgotten while watched: only a repository the catalog no longer lists whose
                // own listing shows no tags, after a complete listing; with `emit_removed` its
                // selected tags are reported removed first.
                let removals = self.model.outcome(
                    &repo,
                    &BTreeMap::new(),
                    &BTreeSet::new(),
                    quirks.google,
                    quirks.hostile_map,
                    &self.cfg,
                );
                let unlisted = hidden.contains(&repo) || !tags.contains_key(&repo);
                if !complete || !unlisted || !repo_tags.is_empty() {
                    return Err(format!(
                        "{what}: {repo} forgotten while the registry lists it: {before:?}"
                    ));
                }
                if events != removals.events {
                    return Err(format!(
                        "{what}: {repo} forgotten with events {events:?}, expected {:?}",
                        removals.events
                    ));
                }
                self.model.repos.remove(&repo);
                self.observed.remove(&repo);
                continue;
            }
            let unresolvable: BTreeSet<String> = head_faulted
                .iter()
                .filter(|(r, _)| *r == repo)
                .map(|(_, t)| t.clone())
                .collect();
            let expected = self.model.outcome(
                &repo,
                repo_tags,
                &unresolvable,
                quirks.google,
                quirks.hostile_map,
                &self.cfg,
            );
            let cannot_complete = !quirks.listable(repo_tags.len(), self.page_size);
            let may_fail = faulted.contains(&repo) || cannot_complete;
            let nothing = after == before && events.is_empty();
            if nothing {
                let current = self.model.repos.get(&repo).and_then(|r| r.known.clone());
                let stale =
                    current.as_ref() != Some(&expected.known) || !expected.events.is_empty();
                let scanned =
                    listed.contains(&repo) && !hidden.contains(&repo) && tags.contains_key(&repo);
                if scanned && !may_fail && !crashed && stale {
                    return Err(format!(
                        "{what}: {repo} was listed without a fault but nothing was committed; \
                         expected {:?} and {:?}",
                        expected.events, expected.known
                    ));
                }
                continue;
            }
            if !listed.contains(&repo) {
                return Err(format!(
                    "{what}: {repo} changed without being listed: {before:?} -> {after:?}, {events:?}"
                ));
            }
            if cannot_complete {
                return Err(format!(
                    "{what}: {repo} committed a listing that cannot be complete (the registry \
                     ignores `last`; {} names, page size {}): {after:?}, {events:?}",
                    repo_tags.len(),
                    self.page_size
                ));
            }
            if events != expected.events || after.as_ref() != Some(&expected.known) {
                return Err(format!(
                    "{what}: {repo} diverges from the model\n  events:   {events:?}\n  expected: {:?}\n  \
                     snapshot: {after:?}\n  expected: {:?}\n  before:   {before:?}",
                    expected.events, expected.known
                ));
            }
            self.model.commit(&repo, expected.known.clone());
            self.observed.insert(repo.clone(), expected.known);
        }
        if complete {
            self.model.complete_listing(&self.cfg);
        }
        Ok(())
    }

    async fn scan(&mut self, faults: Faults) -> Result<(), String> {
        self.sim.lock().unwrap().new_step(faults);
        let result = self.scanner.cycle(&self.output(), || false).await;
        self.sim.lock().unwrap().faults = Faults::default();
        self.check_step(
            &format!("scan {faults:?} -> {result:?}"),
            result.is_ok(),
            false,
        )
    }

    async fn hint(&mut self, repo: &str) -> Result<(), String> {
        self.sim.lock().unwrap().new_step(Faults::default());
        let result = self
            .scanner
            .scan_hinted(&self.output(), vec![repo.to_owned()], true, || false)
            .await;
        self.check_step(&format!("hint {repo} -> {result:?}"), false, false)
    }

    /// The events of the commits the store refused since the last call.
    fn take_lost(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.crashing().lost.lock().unwrap())
            .iter()
            .map(seen)
            .collect()
    }

    async fn crash_in_commit(&mut self) -> Result<(), String> {
        self.crashing().crash.store(true, Ordering::SeqCst);
        self.sim.lock().unwrap().new_step(Faults::default());
        let first = self.scanner.cycle(&self.output(), || false).await;
        let lost = self.take_lost();
        self.check_step(&format!("crashed cycle -> {first:?}"), first.is_ok(), true)?;
        self.restart();
        self.detected_again(&lost, "lost in a crash").await
    }

    /// One cycle in which `repo`'s partition moves away: nothing of it is recorded, which is no
    /// failure and nothing unrecorded (its owner scans it). It comes back for the next cycle,
    /// which detects what the refused commit held under the same ids.
    async fn moved_cycle(&mut self, repo: &str, at_read: bool) -> Result<(), String> {
        self.take_lost();
        *self.crashing().moved.lock().unwrap() = Some((repo.to_owned(), at_read));
        self.sim.lock().unwrap().new_step(Faults::default());
        let result = self.scanner.cycle(&self.output(), || false).await;
        *self.crashing().moved.lock().unwrap() = None;
        if let Ok(report) = &result
            && report.unrecorded != 0
        {
            return Err(format!(
                "a cycle whose only refusal was a moved partition counted as unrecorded (which \
                 makes a replica unready): {report:?}"
            ));
        }
        // Refused, so possibly unchanged: what a fault on that repository allows.
        self.sim.lock().unwrap().faulted.insert(repo.to_owned());
        let what = format!("cycle with {repo} moved (at read: {at_read}) -> {result:?}");
        // A repository not recorded holds the watch set still, as an unrecorded one does: the
        // listing does not count as complete.
        let complete = result.as_ref().is_ok_and(|r| r.moved == 0);
        self.check_step(&what, complete, false)?;
        let refused = self.take_lost();
        self.detected_again(&refused, "refused as moved").await
    }

    /// Runs a cycle and checks that no change in `lost` (refused commits) is detected under
    /// another id.
    async fn detected_again(&mut self, lost: &[Seen], how: &str) -> Result<(), String> {
        self.sim.lock().unwrap().new_step(Faults::default());
        let second = self.scanner.cycle(&self.output(), || false).await;
        let again: Vec<Seen> = self
            .store()
            .outbox_batch(usize::MAX)
            .map_err(|e| e.to_string())?
            .iter()
            .filter(|(seq, _)| !self.looked_at.contains(seq))
            .map(|(_, e)| seen(e))
            .collect();
        self.check_step(
            &format!("cycle after a commit {how} -> {second:?}"),
            second.is_ok(),
            false,
        )?;
        for l in lost {
            if let Some(a) = again.iter().find(|a| a.repo == l.repo && a.ev == l.ev)
                && a.id != l.id
            {
                return Err(format!(
                    "a change {how} was detected again under another id: {:?} {} vs {}",
                    l.ev, l.id, a.id
                ));
            }
        }
        Ok(())
    }

    fn deliver(&mut self, all: bool, ack: bool) -> Result<(), String> {
        if !self.kafka_up {
            return Ok(());
        }
        let pending = self
            .store()
            .outbox_batch(usize::MAX)
            .map_err(|e| e.to_string())?;
        let take = if all {
            pending.len()
        } else {
            pending.len().div_ceil(2)
        };
        let mut acked = Vec::new();
        for (seq, e) in pending.into_iter().take(take) {
            if let Some(before) = self.delivered.insert(e.id.clone(), e.payload.clone())
                && before != e.payload
            {
                return Err(format!("id {} redelivered with another payload", e.id));
            }
            acked.push(seq);
        }
        if ack {
            self.store()
                .outbox_remove(&acked)
                .map_err(|e| e.to_string())?;
            for seq in &acked {
                self.looked_at.remove(seq);
            }
        }
        Ok(())
    }

    async fn step(&mut self, op: &Op) -> Result<(), String> {
        self.log.push(format!("{op:?}"));
        match op {
            Op::Scan { faults } => self.scan(*faults).await,
            Op::Hint { repo } => self.hint(REPOS[*repo]).await,
            Op::Restart => {
                self.restart();
                Ok(())
            }
            Op::CrashInCommit => self.crash_in_commit().await,
            Op::Moved { repo, at_read } => self.moved_cycle(REPOS[*repo], *at_read).await,
            Op::Edit { cfg } => {
                self.cfg = cfg.clone();
                self.scanner = scanner(&self.cfg, &self.host, self.page_size);
                Ok(())
            }
            Op::Deliver { all } => self.deliver(*all, true),
            Op::DeliverThenCrash => {
                self.deliver(true, false)?;
                self.restart();
                Ok(())
            }
            Op::Kafka { up } => {
                self.kafka_up = *up;
                Ok(())
            }
            _ => {
                let what = self.apply(op);
                if let Some(last) = self.log.last_mut() {
                    *last = format!("{last}: {what}");
                }
                Ok(())
            }
        }
    }

    /// The faults stop and the catalog catches up: within the backoff ceiling every repository
    /// must have caught up with the model, and every event must be delivered.
    async fn quiesce(&mut self) -> Result<(), String> {
        self.sim.lock().unwrap().catalog_hidden.clear();
        self.kafka_up = true;
        for i in 0..QUIESCE_CYCLES {
            self.scan(Faults::default())
                .await
                .map_err(|e| format!("quiet cycle {i}: {e}"))?;
        }
        let (tags, quirks) = {
            let s = self.sim.lock().unwrap();
            (s.repos.clone(), s.quirks)
        };
        let catalog_readable = quirks.listable(tags.len(), self.page_size);
        for (repo, repo_tags) in &tags {
            if !self.cfg.watches(repo)
                || !catalog_readable
                || !quirks.listable(repo_tags.len(), self.page_size)
            {
                continue;
            }
            let expected = self.model.outcome(
                repo,
                repo_tags,
                &BTreeSet::new(),
                quirks.google,
                quirks.hostile_map,
                &self.cfg,
            );
            let known = self.model.repos.get(repo).and_then(|r| r.known.clone());
            if !expected.events.is_empty() || known.as_ref() != Some(&expected.known) {
                return Err(format!(
                    "{repo} withheld after {QUIESCE_CYCLES} quiet cycles: owes {:?}; knows {known:?}, \
                     registry shows {:?}",
                    expected.events, expected.known
                ));
            }
        }
        self.deliver(true, true)?;
        let missing: Vec<&String> = self
            .committed
            .keys()
            .filter(|id| !self.delivered.contains_key(*id))
            .collect();
        if !missing.is_empty() {
            return Err(format!("committed but never delivered: {missing:?}"));
        }
        Ok(())
    }
}

fn open(dir: &std::path::Path) -> Arc<CrashingStore> {
    Arc::new(CrashingStore {
        inner: Arc::new(Store::open(dir).unwrap_or_else(|e| panic!("opening the state file: {e}"))),
        crash: AtomicBool::new(false),
        moved: Mutex::new(None),
        lost: Mutex::new(Vec::new()),
    })
}

fn digest_of(n: u64, repo: &str) -> String {
    use sha2::Digest as _;
    format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(format!("{repo}#{n}")))
    )
}

fn scanner(cfg: &SimConfig, host: &str, page_size: usize) -> Scanner {
    let text = cfg.toml(host, page_size);
    let parsed = config::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    Scanner::new(&parsed.registries[0], FirstRun::Baseline, cfg.emit_removed).unwrap()
}

async fn run_case(run: Run, validator: Arc<jsonschema::Validator>) -> Result<(), String> {
    let (mut world, server) = World::new(&run, validator).await;
    let mut result = Ok(());
    for op in &run.ops {
        if let Err(e) = world.step(op).await {
            result = Err(e);
            break;
        }
    }
    if result.is_ok() {
        result = world.quiesce().await;
    }
    server.abort();
    if std::env::var_os("SIM_TRACE").is_some() {
        let pushes = run
            .ops
            .iter()
            .filter(|o| matches!(o, Op::Push { .. } | Op::Repush { .. } | Op::Alias { .. }))
            .count();
        eprintln!(
            "CASE ops {} pushes {} committed {} ignore_last {} versions {:?} include_v {}",
            run.ops.len(),
            pushes,
            world.committed.len(),
            run.quirks.ignore_last,
            run.cfg.versions.is_some(),
            run.cfg.include_v
        );
    }
    result.map_err(|e| {
        format!(
            "{e}\nquirks {:?}, page size {}\nconfig {:?}\noperations:\n  {}",
            run.quirks,
            run.page_size,
            run.cfg,
            world.log.join("\n  ")
        )
    })
}

fn validator() -> Arc<jsonschema::Validator> {
    let schema: serde_json::Value =
        serde_json::from_str(include_str!("../../schema/event.schema.json")).unwrap();
    Arc::new(
        jsonschema::options()
            .should_validate_formats(true)
            .build(&schema)
            .expect("the schema compiles"),
    )
}

/// How many committed events carried each `bump` (and a null version, a `points_to`, a
/// `latest: true`), over all cases: shows what the runs exercised.
static TALLY: Mutex<BTreeMap<&'static str, usize>> = Mutex::new(BTreeMap::new());

fn tally(ev: &Ev) {
    if std::env::var_os("SIM_TRACE").is_some() {
        eprintln!("TRACE {ev:?}");
    }
    let mut t = TALLY.lock().unwrap();
    let mut count = |k: &'static str| *t.entry(k).or_default() += 1;
    count(if ev.kind == "removed" {
        "(removed)"
    } else {
        "(added or updated)"
    });
    match (&ev.version, ev.bump.as_deref()) {
        (Some(None), _) => count("null"),
        (Some(Some(_)), Some(b)) => count(
            [
                "major",
                "minor",
                "patch",
                "prerelease",
                "rebuild",
                "floating",
                "older",
                "first",
            ]
            .into_iter()
            .find(|k| *k == b)
            .unwrap_or("other"),
        ),
        _ => {}
    }
    if ev.points_to.is_some() {
        count("points_to");
    }
    if ev.latest == Some(true) {
        count("latest");
    }
}

fn cases() -> u32 {
    std::env::var("SIM_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CI_CASES)
}

fn check(name: &'static str, strategy: impl Strategy<Value = Run>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut config = PropConfig::with_cases(cases());
    config.failure_persistence = Some(Box::new(FileFailurePersistence::Direct(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/sim/proptest-regressions.txt"
    ))));
    let validator = validator();
    let started = std::time::Instant::now();
    let mut runner = TestRunner::new(config);
    // Cases run until the first failure (shrinking runs more after it).
    let (ran, first_failure) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let result = runner.run(&strategy, |run| {
        let n = ran.fetch_add(1, Ordering::Relaxed) + 1;
        // A panic anywhere in the case is a failure like any other.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rt.block_on(run_case(run, validator.clone()))
        }))
        .unwrap_or_else(|panic| {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(format!("a panic: {why}"))
        });
        if outcome.is_err() {
            let _ = first_failure.compare_exchange(0, n, Ordering::Relaxed, Ordering::Relaxed);
        }
        outcome.map_err(TestCaseError::fail)
    });
    let first_failure = first_failure.load(Ordering::Relaxed);
    println!(
        "SIM {name}: {} cases in {:.1} s; version events {:?}{}",
        cases(),
        started.elapsed().as_secs_f64(),
        TALLY.lock().unwrap(),
        if first_failure > 0 {
            format!("; first failure at case {first_failure}")
        } else {
            String::new()
        }
    );
    if let Err(e) = result {
        panic!("{name}: first failure at case {first_failure}: {e}");
    }
}

#[test]
fn sim_operations_against_the_model() {
    check("operations", run_strategy(50));
}
