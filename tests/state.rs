//! What regwatch remembers, and the events it derives from it, against registries with real-world
//! quirks: a 404 on a listed repository, a registry URL changed under the same name, repositories
//! leaving and re-entering the watch set, churn, a tag moving back and forth, and a state file
//! written by schema 1 (the release before registry identities). The last group are the cases an
//! adversarial review of this rework found: two entries on one registry, a Link dropped after
//! Links were seen, a dry run against a schema-1 file, a transient 404 while the catalog leaves a
//! repository out, a reload that fails to start, a new repository re-detected after a lost commit.
//! Then the state file's own faults: two loops committing one repository, unreadable records, a
//! schema-2 file, and a clock stepped back.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use regwatch::config::{self, FirstRun};
use regwatch::store::{RepoState, StateStore, Store};
use regwatch::watch::scan::{Output, Scanner};
use support::report;
use support::synthetic::{Quirk, Synthetic, serve};
use tokio::sync::Notify;

fn registry(name: &str, host: &str, repos: &str, extra: &str) -> config::RegistryConfig {
    let text = format!(
        "[[registry]]\nname = \"{name}\"\nkind = \"oci\"\nurl = \"http://{host}\"\ninsecure = true\nrate_limit = 10000\nrepositories = [{repos}]\n{extra}\n"
    );
    config::parse(&text).unwrap().registries.remove(0)
}

fn scanner(cfg: &config::RegistryConfig, emit_removed: bool) -> Scanner {
    Scanner::new(cfg, FirstRun::Baseline, emit_removed).unwrap()
}

fn commit(store: &Arc<Store>) -> Output {
    Output::Commit {
        store: store.clone(),
        published: Arc::new(Notify::new()),
    }
}

/// The outbox as (type, tag, digest, id), oldest first.
fn outbox(store: &Store) -> Vec<(String, String, String, String)> {
    outbox_json(store)
        .iter()
        .map(|v| {
            (
                short_type(v),
                v["data"]["tag"].as_str().unwrap().to_owned(),
                v["data"]["digest"].as_str().unwrap_or("").to_owned(),
                v["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The outbox as (type, repository, tag), oldest first.
fn changes(store: &Store) -> Vec<(String, String, String)> {
    outbox_json(store)
        .iter()
        .map(|v| {
            (
                short_type(v),
                v["data"]["repository"].as_str().unwrap().to_owned(),
                v["data"]["tag"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn short_type(event: &serde_json::Value) -> String {
    let kind = event["type"].as_str().unwrap();
    kind.trim_start_matches("io.regwatch.").to_owned()
}

fn outbox_json(store: &Store) -> Vec<serde_json::Value> {
    store
        .outbox_batch(10_000)
        .unwrap()
        .into_iter()
        .map(|(_, e)| serde_json::from_str(&e.payload).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_404_on_a_listed_repositorys_first_scan_is_a_failure_not_an_empty_baseline() {
    let state = Arc::new(Synthetic::default());
    state.put("team/a", "v1", 0);
    for t in ["v1", "v2", "v3"] {
        state.put("team/b", t, 0);
    }
    state.tags_not_found.lock().unwrap().insert("team/b".into());
    let host = serve(state.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    // infra/later is named, and does not exist yet: once it appears, its tags are news.
    let cfg = registry("syn", &host, "\"team/*\", \"infra/later\"", "");
    let s = scanner(&cfg, false);

    let first = s.cycle(&commit(&store), || false).await.unwrap();
    assert_eq!(
        (first.failed, first.events),
        (1, 0),
        "team/b's 404 is a failed scan"
    );
    assert!(
        matches!(
            store.repo_state(&s.identity, "team/b").unwrap(),
            Some(RepoState::Pending { emit: false, .. })
        ),
        "the baseline decision waits for a scan that works"
    );

    // The registry settles: team/b's first successful scan is still the baseline.
    state.tags_not_found.lock().unwrap().clear();
    let settled = s.cycle(&commit(&store), || false).await.unwrap();
    assert_eq!(settled.failed, 0);
    let phantom = store.outbox_len().unwrap();
    report(
        "404 on a listed repository's first scan, then cleared: events",
        phantom,
        "0",
    );
    assert_eq!(
        phantom, 0,
        "the existing tags of team/b are a baseline, not news"
    );

    state.put("infra/later", "v1", 0);
    s.cycle(&commit(&store), || false).await.unwrap();
    let added: Vec<_> = outbox(&store)
        .into_iter()
        .map(|(k, t, _, _)| (k, t))
        .collect();
    assert_eq!(added, vec![("tag.added".to_string(), "v1".to_string())]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_url_under_the_same_name_takes_its_own_baseline() {
    let old = Arc::new(Synthetic::default());
    for t in ["v1", "v2"] {
        old.put("team/app", t, 0);
    }
    let new = Arc::new(Synthetic::default());
    for t in ["x1", "x2", "x3"] {
        new.put("team/app", t, 1);
    }
    let (old_host, new_host) = (serve(old).await, serve(new).await);
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let before = registry("syn", &old_host, "\"team/*\"", "");
    let s = scanner(&before, true);
    // As the daemon does at start and on reload: the store belongs to the configured registries.
    store
        .adopt_registries(&[(s.identity.clone(), "syn".into())])
        .unwrap();
    s.cycle(&commit(&store), || false).await.unwrap();

    let after = registry("syn", &new_host, "\"team/*\"", "");
    let s2 = scanner(&after, true);
    assert_ne!(s.identity, s2.identity);
    store
        .adopt_registries(&[(s2.identity.clone(), "syn".into())])
        .unwrap();
    let cycle = s2.cycle(&commit(&store), || false).await.unwrap();
    report(
        "registry url changed under the same name: events",
        cycle.events,
        "0 (new baseline)",
    );
    assert_eq!(cycle.events, 0, "{:?}", outbox(&store));
    assert!(
        store.repositories(&s.identity).unwrap().is_empty(),
        "the old registry's state is forgotten"
    );
    assert_eq!(store.watch_set(&s.identity).unwrap(), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repository_dropped_from_the_config_and_added_back_gets_a_baseline() {
    let state = Arc::new(Synthetic::default());
    state.put("team/app", "v1", 0);
    state.put("infra/db", "15.1", 0);
    let host = serve(state.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let both = registry("syn", &host, "\"team/app\", \"infra/db\"", "");
    let one = registry("syn", &host, "\"team/app\"", "");
    scanner(&both, false)
        .cycle(&commit(&store), || false)
        .await
        .unwrap();

    let s = scanner(&one, false);
    s.cycle(&commit(&store), || false).await.unwrap();
    assert_eq!(
        store.repositories(&s.identity).unwrap(),
        vec!["team/app"],
        "infra/db left the watch set and is forgotten"
    );

    // Months later, infra/db has moved on and the config watches it again: a config edit.
    state.put("infra/db", "15.2", 0);
    state.put("infra/db", "16.0", 0);
    let back = scanner(&both, false)
        .cycle(&commit(&store), || false)
        .await
        .unwrap();
    report(
        "repository dropped from the config and added back: events",
        back.events,
        "0 (baseline)",
    );
    assert_eq!(back.events, 0, "{:?}", outbox(&store));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_store_does_not_grow_as_repositories_churn() {
    let state = Arc::new(Synthetic::default());
    let host = serve(state.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let cfg = registry("syn", &host, "\"ci/*\"", "");
    let s = scanner(&cfg, false);
    let mut most = 0;
    for round in 0..40 {
        // Each round a CI job creates a repository and deletes the one before last.
        state.put(&format!("ci/job{round:03}"), "v1", 0);
        if round >= 2 {
            state
                .repos
                .lock()
                .unwrap()
                .remove(&format!("ci/job{:03}", round - 2));
        }
        let cycle = s.cycle(&commit(&store), || false).await.unwrap();
        assert_eq!(cycle.failed, 0);
        most = most.max(store.repositories(&s.identity).unwrap().len());
    }
    let held: BTreeSet<String> = store
        .repositories(&s.identity)
        .unwrap()
        .into_iter()
        .collect();
    let listed: BTreeSet<String> = state.repos.lock().unwrap().keys().cloned().collect();
    report(
        "40 repositories churned through a glob: most repositories held in the store",
        most,
        "≤ 3",
    );
    assert!(
        held.is_superset(&listed) && held.len() <= listed.len() + 1,
        "the store holds the watch set, and at most the one deleted last: {held:?}"
    );
    // Two live, and one deleted that waits for its second confirmation.
    assert!(most <= 3, "{most}");
    // A fresh scanner (a restart) forgets what left while it was not running, too.
    state.repos.lock().unwrap().clear();
    state.put("ci/after-restart", "v1", 0);
    let restarted = scanner(&cfg, false);
    for _ in 0..2 {
        restarted.cycle(&commit(&store), || false).await.unwrap();
    }
    assert_eq!(
        store.repositories(&s.identity).unwrap(),
        vec!["ci/after-restart"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn distinct_detections_get_distinct_ids_and_a_lost_commit_repeats_them() {
    let state = Arc::new(Synthetic::default());
    state.put("team/app", "latest", 0);
    let host = serve(state.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let cfg = registry("syn", &host, "\"team/app\"", "mutable_tags = [\"latest\"]");
    let s = scanner(&cfg, true);
    let cycle = |store: &Arc<Store>| {
        let output = commit(store);
        let s = &s;
        async move { s.cycle(&output, || false).await.unwrap() }
    };
    {
        let store = Arc::new(Store::open(&state_dir).unwrap());
        cycle(&store).await; // baseline: latest = A
        for version in [1, 0, 1] {
            state.put("team/app", "latest", version); // A→B, B→A, A→B
            assert_eq!(cycle(&store).await.events, 1);
        }
        // A tag removed, then pushed again at the same digest.
        state.put("team/app", "v9", 0);
        cycle(&store).await;
        state
            .repos
            .lock()
            .unwrap()
            .get_mut("team/app")
            .unwrap()
            .remove("v9");
        cycle(&store).await;
        state.put("team/app", "v9", 0);
        cycle(&store).await;
        let events = outbox(&store);
        let ids = |kind: &str, tag: &str| -> Vec<String> {
            events
                .iter()
                .filter(|(k, t, _, _)| k == kind && t == tag)
                .map(|(_, _, _, id)| id.clone())
                .collect()
        };
        let updates = ids("tag.updated", "latest");
        assert_eq!(updates.len(), 3);
        assert_eq!(events[0].2, events[2].2, "both A→B moves carry digest B");
        let adds = ids("tag.added", "v9");
        assert_eq!(adds.len(), 2);
        let distinct: BTreeSet<&String> = events.iter().map(|e| &e.3).collect();
        report(
            "latest A→B→A→B and v9 added, removed, re-added: distinct ids",
            format!("{}/{}", distinct.len(), events.len()),
            "all distinct",
        );
        assert_ne!(
            updates[0], updates[2],
            "the roll-forward would be dropped as a duplicate"
        );
        assert_ne!(adds[0], adds[1]);
        assert_eq!(distinct.len(), events.len());
    }

    // A crash that loses a commit: the change is detected again, against the same revision,
    // with the same id (and a redelivery from the outbox carries the id it was stored with).
    let saved = dir.path().join("saved.redb");
    let file = state_dir.join(regwatch::store::FILE_NAME);
    std::fs::copy(&file, &saved).unwrap();
    state.put("team/app", "latest", 2);
    let first = {
        let store = Arc::new(Store::open(&state_dir).unwrap());
        let before = store.outbox_len().unwrap() as usize;
        cycle(&store).await;
        outbox(&store).split_off(before)
    };
    std::fs::copy(&saved, &file).unwrap();
    let again = {
        let store = Arc::new(Store::open(&state_dir).unwrap());
        let before = store.outbox_len().unwrap() as usize;
        cycle(&store).await;
        outbox(&store).split_off(before)
    };
    assert_eq!(first.len(), 1);
    report(
        "change re-detected after a lost commit: same id",
        first == again,
        "true",
    );
    assert_eq!(first, again);
}

/// A copy of the schema-1 state file in `tests/fixtures/`, written by the release before registry
/// identities: registry `syn` watching `team/*` and `infra/db`, with `latest` mutable, after a
/// baseline of team/app (v1, v2, latest), team/web (v1) and infra/db (15), then a cycle that found
/// team/app:v3, whose event still waits in the outbox. Digests are `synthetic::digest_of(.., 0)`.
fn schema_1_state(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/schema1.redb");
    std::fs::copy(fixture, dir.join(regwatch::store::FILE_NAME)).unwrap();
}

/// A registry holding what the schema-1 fixture remembers, and the `[[registry]]` block, under
/// `name`, that watches it as the fixture's registry `syn` did.
async fn schema_1_registry(name: &str) -> (Arc<Synthetic>, String) {
    let state = Arc::new(Synthetic::default());
    for t in ["v1", "v2", "v3", "latest"] {
        state.put("team/app", t, 0);
    }
    state.put("team/web", "v1", 0);
    state.put("infra/db", "15", 0);
    let host = serve(state.clone()).await;
    let block = format!(
        "[[registry]]\nname = \"{name}\"\nkind = \"oci\"\nurl = \"http://{host}\"\ninsecure = true\nrepositories = [\"team/*\", \"infra/db\"]\nmutable_tags = [\"latest\"]\n"
    );
    (state, block)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_schema_1_state_file_migrates_without_baseline_or_events() {
    let (state, block) = schema_1_registry("syn").await;
    let setup = support::Setup::new("", &block);
    schema_1_state(&setup.dir.path().join("state"));
    let run = |setup: &support::Setup| {
        let (code, out, err) = setup.regwatch(&["once"]);
        assert_eq!(code, 0, "{err}");
        (support::json_lines(&out), err)
    };
    let (events, err) = tokio::task::block_in_place(|| run(&setup));
    // Only the event schema 1 left in the outbox, delivered as it was stored.
    let summary: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().into(),
                e["data"]["tag"].as_str().unwrap().into(),
            )
        })
        .collect();
    report(
        "schema-1 state file migrated: new events on first run",
        summary.len().saturating_sub(1),
        "0",
    );
    assert_eq!(
        summary,
        vec![("io.regwatch.tag.added".to_string(), "v3".to_string())],
        "{err}"
    );
    assert!(err.contains("migrated"), "{err}");
    assert!(!err.contains("baseline recorded"), "no new baseline: {err}");

    // The watch set migrated too: a repository that appears now is news, not a baseline.
    state.put("team/new", "v1", 0);
    state.put("team/app", "latest", 1);
    let (events, err) = tokio::task::block_in_place(|| run(&setup));
    let mut summary: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().into(),
                e["data"]["repository"].as_str().unwrap().into(),
            )
        })
        .collect();
    summary.sort();
    assert_eq!(
        summary,
        vec![
            ("io.regwatch.tag.added".to_string(), "team/new".to_string()),
            (
                "io.regwatch.tag.updated".to_string(),
                "team/app".to_string()
            ),
        ],
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_baseline_logs_one_summary_line_per_registry_at_info() {
    let state = Arc::new(Synthetic::default());
    for i in 0..60 {
        state.put(&format!("team/r{i:02}"), "v1", 0);
    }
    let host = serve(state.clone()).await;
    let setup = support::Setup::new(
        "",
        &format!(
            "[[registry]]\nname = \"syn\"\nkind = \"oci\"\nurl = \"http://{host}\"\ninsecure = true\nrate_limit = 10000\nrepositories = [\"team/*\"]\n"
        ),
    );
    let out = tokio::task::block_in_place(|| {
        std::process::Command::new(env!("CARGO_BIN_EXE_regwatch"))
            .args(["once", "-c"])
            .arg(&setup.config)
            .env("RUST_LOG", "info")
            .output()
            .unwrap()
    });
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines = stderr
        .lines()
        .filter(|l| l.contains("baseline recorded"))
        .count();
    report(
        "baseline of 60 repositories: INFO lines about it",
        lines,
        "1",
    );
    assert_eq!(lines, 1, "{stderr}");
    assert!(stderr.contains("repositories=60"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_catalog_that_omits_a_repository_is_not_proof_that_it_is_gone() {
    // A catalog that lags behind, or that a proxy cut short, leaves out repositories that still
    // exist: forgetting them would re-emit all their tags as news once the catalog recovers.
    let state = Arc::new(Synthetic::default());
    for r in ["team/a", "team/b", "team/c", "team/d", "team/e"] {
        state.put(r, "v1", 0);
    }
    let host = serve(state.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let cfg = registry("syn", &host, "\"team/*\"", "page_size = 2");
    let s = scanner(&cfg, false);
    s.cycle(&commit(&store), || false).await.unwrap();

    *state.catalog_hidden.lock().unwrap() = ["team/c", "team/d", "team/e"].map(String::from).into();
    let omitted = s.cycle(&commit(&store), || false).await.unwrap();
    assert_eq!(omitted.repositories, 2, "the catalog left three out");
    state.catalog_hidden.lock().unwrap().clear();
    let recovered = s.cycle(&commit(&store), || false).await.unwrap();
    report(
        "catalog leaving out live repositories for a cycle, then whole again: events",
        recovered.events,
        "0",
    );
    assert_eq!(recovered.events, 0, "{:?}", outbox(&store));

    // A repository really deleted (its tags/list answers 404 in two complete cycles running) is
    // forgotten.
    state.repos.lock().unwrap().remove("team/e");
    s.cycle(&commit(&store), || false).await.unwrap();
    assert_eq!(
        store.repositories(&s.identity).unwrap().len(),
        5,
        "one 404 is no proof"
    );
    s.cycle(&commit(&store), || false).await.unwrap();
    assert_eq!(
        store.repositories(&s.identity).unwrap(),
        vec!["team/a", "team/b", "team/c", "team/d"]
    );
}

/// Two [[registry]] entries on one URL (per-team globs, or different intervals) sharing one
/// identity would share one watch set and one key range: each would overwrite the other's watch
/// set and forget the other's repositories, so a genuinely new repository is baselined (lost).
#[tokio::test(flavor = "multi_thread")]
async fn two_entries_on_one_url_do_not_lose_a_new_repository() {
    let state = Arc::new(Synthetic::default());
    state.put("team/a", "v1", 0);
    state.put("infra/b", "v1", 0);
    let host = serve(state.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    // As the daemon builds them: each entry's identity within the whole config.
    let both = config::parse(&format!(
        "[[registry]]\nname = \"teams\"\nkind = \"oci\"\nurl = \"http://{host}\"\ninsecure = true\nrepositories = [\"team/*\"]\n\n[[registry]]\nname = \"infra\"\nkind = \"oci\"\nurl = \"http://{host}\"\ninsecure = true\nrepositories = [\"infra/*\"]\n"
    ))
    .unwrap();
    let scanner = |i: usize| {
        let r = &both.registries[i];
        let mut s = Scanner::new(r, FirstRun::Baseline, false).unwrap();
        s.identity = regwatch::store::identity_in(&both, r);
        s
    };
    let (a, b) = (scanner(0), scanner(1));
    assert_ne!(
        a.identity, b.identity,
        "one registry, two entries, two states"
    );
    store
        .adopt_registries(&[
            (a.identity.clone(), "teams".into()),
            (b.identity.clone(), "infra".into()),
        ])
        .unwrap();
    a.cycle(&commit(&store), || false).await.unwrap(); // baseline team/a
    b.cycle(&commit(&store), || false).await.unwrap(); // baseline infra/b (and forgets team/a!)
    // A repository created after both baselines is news for `teams`.
    state.put("team/new", "v1", 0);
    a.cycle(&commit(&store), || false).await.unwrap();
    support::report(
        "two entries on one registry: a new repository reported",
        changes(&store).len(),
        "1",
    );
    assert_eq!(
        changes(&store),
        vec![("tag.added".into(), "team/new".into(), "v1".into())],
        "team/new was baselined because the stored watch set is infra's"
    );
}

/// A page that loses its Link after Links were seen (a proxy, a CDN, the chaos proxy's "drop
/// Link") must not cut the listing short: it would be diffed as complete, giving phantom
/// tag.removed now and phantom tag.added when Link comes back.
#[tokio::test(flavor = "multi_thread")]
async fn a_link_dropped_after_trust_does_not_shrink_a_tags_listing() {
    let state = Arc::new(Synthetic::default());
    for t in ["a", "b", "c", "d", "e"] {
        state.put("team/app", t, 0);
    }
    let host = serve(state.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let cfg = registry("syn", &host, "\"team/app\"", "page_size = 2");
    let s = Scanner::new(&cfg, FirstRun::Baseline, true).unwrap();
    s.cycle(&commit(&store), || false).await.unwrap(); // baseline; Link seen -> trusted
    *state.quirk.lock().unwrap() = Quirk::NoLink;
    s.cycle(&commit(&store), || false).await.unwrap();
    *state.quirk.lock().unwrap() = Quirk::None;
    s.cycle(&commit(&store), || false).await.unwrap();
    support::report(
        "Link dropped on a page after Links were seen: phantom events",
        changes(&store).len(),
        "0",
    );
    assert_eq!(
        changes(&store),
        vec![],
        "phantom removed/added from a truncated listing"
    );
}

/// `once --dry-run` stores nothing: a schema-1 file must not be migrated by it (the migration
/// would drop every name the dry-run config lacks).
#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_with_another_config_leaves_a_schema_1_file_alone() {
    let (state, block) = schema_1_registry("syn").await;
    let real = support::Setup::new("", &block);
    let state_dir = real.dir.path().join("state");
    schema_1_state(&state_dir);
    let file = state_dir.join(regwatch::store::FILE_NAME);
    let before = std::fs::read(&file).unwrap();
    // A scratch config pointed at the same state_dir, trying out a registry under another name.
    let scratch = real.dir.path().join("scratch.toml");
    std::fs::write(
        &scratch,
        format!(
            "[daemon]\nstate_dir = \"{}\"\nadmin_listen = \"127.0.0.1:{}\"\n{}",
            state_dir.display(),
            support::free_port(),
            block.replace("name = \"syn\"", "name = \"scratch\"")
        ),
    )
    .unwrap();
    let out = tokio::task::block_in_place(|| {
        std::process::Command::new(env!("CARGO_BIN_EXE_regwatch"))
            .args(["once", "--dry-run", "-c"])
            .arg(&scratch)
            .output()
            .unwrap()
    });
    // A schema-1 file cannot be read without migrating it, which would write: the dry run says so.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("migrate"), "{stderr}");
    let after = std::fs::read(&file).unwrap();
    let wrote = before != after;
    // What the real daemon then does: team/new appeared after syn's last scan, so it is news.
    state.put("team/new", "v1", 0);
    let (code, out, err) = tokio::task::block_in_place(|| real.regwatch(&["once"]));
    assert_eq!(code, 0, "{err}");
    let news: Vec<String> = support::json_lines(&out)
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["data"]["repository"].as_str().unwrap(),
                e["data"]["tag"].as_str().unwrap()
            )
        })
        .collect();
    assert!(
        news.contains(&"team/new v1".to_string()),
        "lost after the dry run (it migrated: {wrote}): {news:?}\n{err}"
    );
    support::report(
        "once --dry-run on a schema-1 state file: file changed",
        wrote,
        "false",
    );
    assert!(!wrote, "--dry-run wrote to the state file");
}

/// The forget path reads a 404 as proof of deletion, while the first-scan path calls the same
/// 404 a glitch. A catalog omission (truncated by a dropped Link, or ECR/GCR lag) coinciding with
/// a transient 404 forgets a live repository; when both clear, all its tags are emitted as news.
#[tokio::test(flavor = "multi_thread")]
async fn a_transient_404_while_the_catalog_omits_a_repository_causes_no_storm() {
    let state = Arc::new(Synthetic::default());
    for r in ["team/a", "team/b", "team/c"] {
        state.put(r, "v1", 0);
    }
    for t in ["v1", "v2", "v3"] {
        state.put("team/z", t, 0);
    }
    let host = serve(state.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let cfg = registry("syn", &host, "\"team/*\"", "page_size = 3");
    let s = Scanner::new(&cfg, FirstRun::Baseline, false).unwrap();
    s.cycle(&commit(&store), || false).await.unwrap(); // baseline
    // One cycle: the catalog leaves team/z out and team/z's tags/list 404s.
    state.catalog_hidden.lock().unwrap().insert("team/z".into());
    state.tags_not_found.lock().unwrap().insert("team/z".into());
    s.cycle(&commit(&store), || false).await.unwrap();
    state.catalog_hidden.lock().unwrap().clear();
    state.tags_not_found.lock().unwrap().clear();
    s.cycle(&commit(&store), || false).await.unwrap();
    support::report(
        "catalog leaves a repository out while its tags/list 404s once: events",
        changes(&store).len(),
        "0",
    );
    assert_eq!(
        changes(&store),
        vec![],
        "team/z's existing tags re-emitted as added"
    );
}

/// SIGHUP with a config whose start fails (here: admin_listen on a busy port) keeps the running
/// configuration, and its state: forgetting the registries of the refused config would make the
/// running one re-baseline silently (a tag pushed meanwhile would be lost).
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_reload_keeps_the_running_registrys_state() {
    let state = Arc::new(Synthetic::default());
    state.put("team/app", "v1", 0);
    let host = serve(state.clone()).await;
    let other = Arc::new(Synthetic::default());
    let other_host = serve(other.clone()).await;
    let body = |h: &str| {
        format!(
            "[[registry]]\nname = \"syn\"\nkind = \"oci\"\nurl = \"http://{h}\"\ninsecure = true\ninterval = \"3s\"\nrepositories = [\"team/*\"]\n"
        )
    };
    let setup = support::Setup::new("", &body(&host));
    let daemon = setup.spawn();
    let wait_for = |what: &str, count: usize| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if daemon.stderr.lock().unwrap().matches(what).count() >= count {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no {what:?} x{count}: {}", daemon.stderr.lock().unwrap());
    };
    tokio::task::block_in_place(|| wait_for("scan complete", 1));
    state.put("team/app", "v2", 0); // pushed after the last scan before the reload
    // The new config moves the registry and listens on a port that is taken: start fails.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let text = std::fs::read_to_string(&setup.config).unwrap();
    let text = text
        .replace(&setup.admin, &busy.local_addr().unwrap().to_string())
        .replace(&host, &other_host);
    std::fs::write(&setup.config, text).unwrap();
    std::process::Command::new("kill")
        .args(["-HUP", &daemon.pid().to_string()])
        .status()
        .unwrap();
    tokio::task::block_in_place(|| wait_for("reload failed", 1));
    let scans = daemon
        .stderr
        .lock()
        .unwrap()
        .matches("scan complete")
        .count();
    tokio::task::block_in_place(|| wait_for("scan complete", scans + 1));
    std::thread::sleep(Duration::from_secs(1));
    let (_, out, err) = daemon.stop();
    support::report(
        "reload that fails to start: tag pushed before it reported",
        out.contains("\"tag\":\"v2\""),
        "true",
    );
    assert!(
        out.contains("\"tag\":\"v2\""),
        "v2 lost: the fallback re-baselined a registry whose state the failed reload forgot\n{err}"
    );
}

fn ids(store: &Store) -> Vec<String> {
    outbox(store).into_iter().map(|(_, _, _, id)| id).collect()
}

/// The book (`docs/src/events.md`) promises "a change detected again after a crash lost its commit has the same
/// id". For a repository first seen after the baseline, the revision its events are diffed against
/// is `fresh_revision()` (wall clock), drawn anew on every attempt: the re-detection gets new ids.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_repositorys_tags_redetected_after_a_lost_commit_keep_their_ids() {
    let state = Arc::new(Synthetic::default());
    state.put("team/a", "v1", 0);
    let host = serve(state.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let cfg = registry("syn", &host, "\"team/*\"", "");
    {
        let store = Arc::new(Store::open(&state_dir).unwrap());
        Scanner::new(&cfg, FirstRun::Baseline, false)
            .unwrap()
            .cycle(&commit(&store), || false)
            .await
            .unwrap();
    }
    state.put("team/new", "v1", 0);
    let file = state_dir.join(regwatch::store::FILE_NAME);
    let saved = dir.path().join("saved.redb");
    let run = || async {
        let store = Arc::new(Store::open(&state_dir).unwrap());
        Scanner::new(&cfg, FirstRun::Baseline, false)
            .unwrap()
            .cycle(&commit(&store), || false)
            .await
            .unwrap();
        ids(&store)
    };
    // A crash while team/new is being listed: what was committed before survives, the scan's
    // own commit never happens. The file is copied mid-scan, while tags/list is slow to answer.
    *state.tags_delay.lock().unwrap() = Some(Duration::from_millis(800));
    let copy = async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        std::fs::copy(&file, &saved).unwrap();
    };
    let (first, ()) = tokio::join!(run(), copy);
    *state.tags_delay.lock().unwrap() = None;
    std::fs::copy(&saved, &file).unwrap();
    let again = run().await;
    support::report(
        "new repository re-detected after a lost commit: same ids",
        first == again,
        "true",
    );
    assert_eq!(first.len(), 1);
    assert_eq!(first, again, "re-detection of team/new:v1 got another id");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_repository_reports_its_removals_when_asked() {
    let state = Arc::new(Synthetic::default());
    state.put("team/a", "v1", 0);
    for t in ["v1", "v2"] {
        state.put("team/b", t, 0);
    }
    let host = serve(state.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let cfg = registry("syn", &host, "\"team/*\"", "");
    let s = scanner(&cfg, true);
    s.cycle(&commit(&store), || false).await.unwrap();
    // The repository is deleted: the catalog leaves it out and its tags/list answers 404.
    state.repos.lock().unwrap().remove("team/b");
    for _ in 0..3 {
        s.cycle(&commit(&store), || false).await.unwrap();
    }
    let removed = changes(&store);
    report(
        "repository deleted, with emit_removed: tag.removed events",
        removed.len(),
        "2, once",
    );
    assert_eq!(
        removed,
        vec![
            (
                "tag.removed".to_string(),
                "team/b".to_string(),
                "v1".to_string()
            ),
            (
                "tag.removed".to_string(),
                "team/b".to_string(),
                "v2".to_string()
            ),
        ]
    );
    assert_eq!(store.repositories(&s.identity).unwrap(), vec!["team/a"]);
}

/// Two loops on one registry identity (the old and the new loop of a registry renamed by a
/// reload) scan the same repository: the one whose listing is slow diffed against a revision the
/// other has since moved past. Its commit must be refused (it rescans), or it rolls the snapshot
/// back and its changes, and the ones detected after them, go out again or under other ids.
#[tokio::test(flavor = "multi_thread")]
async fn a_commit_diffed_against_a_superseded_revision_is_refused() {
    let state = Arc::new(Synthetic::default());
    state.put("team/app", "v1", 0);
    let host = serve(state.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    // One identity (a rename keeps it), two loops.
    let old = scanner(&registry("old", &host, "\"team/app\"", ""), false);
    let new = scanner(&registry("new", &host, "\"team/app\"", ""), false);
    assert_eq!(old.identity, new.identity);
    old.cycle(&commit(&store), || false).await.unwrap();

    // The old loop lists team/app (v1, v2) slowly; the new loop records v2, then v3, meanwhile.
    state.put("team/app", "v2", 0);
    *state.tags_delay.lock().unwrap() = Some(Duration::from_millis(1500));
    let slow = {
        let (old, output) = (&old, commit(&store));
        async move { old.cycle(&output, || false).await.unwrap() }
    };
    let meanwhile = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        *state.tags_delay.lock().unwrap() = None;
        let first = new.cycle(&commit(&store), || false).await.unwrap();
        state.put("team/app", "v3", 0);
        let second = new.cycle(&commit(&store), || false).await.unwrap();
        (first.events, second.events)
    };
    let (stale, (first, second)) = tokio::join!(slow, meanwhile);
    assert_eq!((first, second), (1, 1), "the new loop records v2, then v3");
    assert_eq!(stale.events, 0, "the stale commit is refused: {stale:?}");

    // The old loop scans again, against what the new loop recorded: nothing is new.
    let again = old.cycle(&commit(&store), || false).await.unwrap();
    assert_eq!(again.events, 0);
    let events = outbox(&store);
    let got: Vec<(String, String)> = events
        .iter()
        .map(|(k, t, _, _)| (k.clone(), t.clone()))
        .collect();
    let distinct: BTreeSet<&String> = events.iter().map(|e| &e.3).collect();
    report(
        "two loops on one repository, one commit stale: events (distinct ids)",
        format!("{} ({})", events.len(), distinct.len()),
        "2 (2)",
    );
    assert_eq!(
        got,
        vec![
            ("tag.added".to_string(), "v2".to_string()),
            ("tag.added".to_string(), "v3".to_string()),
        ]
    );
    assert_eq!(distinct.len(), events.len(), "ids unique: {events:?}");
}

/// Table definitions as `src/store/redb.rs` lays the file out, to write records the way an older
/// or a broken writer did.
const REPOS: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("repos");
const WATCH_SETS: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("watch_sets");
const REGISTRIES: redb::TableDefinition<&str, &str> = redb::TableDefinition::new("registries");
const META: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");

/// A `K` record (schema 2): revision, then the tags as JSON.
fn known_record(revision: u64, tags: &[(&str, &str)]) -> Vec<u8> {
    let mut out = vec![b'K'];
    out.extend_from_slice(&revision.to_be_bytes());
    let tags: std::collections::BTreeMap<&str, &str> = tags.iter().copied().collect();
    out.extend_from_slice(&serde_json::to_vec(&tags).unwrap());
    out
}

/// One record the binary cannot read (an unknown kind byte, say from a bug or a newer release
/// that forgot its schema bump, or a snapshot that is not JSON) is that repository's problem
/// alone: it takes a new baseline (logged with its name, no events), and the others, and the
/// daemon, carry on. Before, `unknown repository record` failed every start: a crash loop.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_repository_record_is_a_baseline_of_that_repository_alone() {
    let state = Arc::new(Synthetic::default());
    for r in ["team/a", "team/b", "team/c"] {
        state.put(r, "v1", 0);
    }
    let host = serve(state.clone()).await;
    let setup = support::Setup::new(
        "",
        &format!(
            "[[registry]]\nname = \"syn\"\nkind = \"oci\"\nurl = \"http://{host}\"\ninsecure = true\nrepositories = [\"team/*\"]\n"
        ),
    );
    let once = |setup: &support::Setup| {
        let (code, out, err) = tokio::task::block_in_place(|| setup.regwatch(&["once"]));
        let added: Vec<(String, String)> = support::json_lines(&out)
            .iter()
            .map(|e| {
                (
                    e["data"]["repository"].as_str().unwrap().to_owned(),
                    e["data"]["tag"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        (code, added, err)
    };
    let (code, added, err) = once(&setup);
    assert_eq!((code, added.len()), (0, 0), "baseline: {err}");

    let file = setup
        .dir
        .path()
        .join("state")
        .join(regwatch::store::FILE_NAME);
    {
        let db = redb::Database::create(&file).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut repos = tx.open_table(REPOS).unwrap();
            let id = format!("http://{host}");
            repos
                .insert(
                    format!("{id}\0team/b").as_str(),
                    b"Z-an-unknown-kind".as_slice(),
                )
                .unwrap();
            let mut bad_json = known_record(7, &[]);
            bad_json.truncate(9);
            bad_json.extend_from_slice(b"{\"v1\": nul");
            repos
                .insert(format!("{id}\0team/c").as_str(), bad_json.as_slice())
                .unwrap();
        }
        tx.commit().unwrap();
    }
    for r in ["team/a", "team/b", "team/c"] {
        state.put(r, "v2", 0);
    }
    let (code, added, err) = once(&setup);
    report(
        "unreadable records of 2 of 3 repositories: exit code, events",
        format!("{code}, {}", added.len()),
        "0, 1 (the readable one's)",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        added,
        vec![("team/a".to_string(), "v2".to_string())],
        "only the readable repository reports; the others take a baseline: {err}"
    );
    for r in ["team/b", "team/c"] {
        assert!(
            err.lines()
                .any(|l| l.contains("unreadable") && l.contains(r) && l.contains("ERROR")),
            "{r} is named at ERROR: {err}"
        );
    }
    // Re-baselined: what they get next is news again.
    for r in ["team/b", "team/c"] {
        state.put(r, "v3", 0);
    }
    let (code, mut added, err) = once(&setup);
    added.sort();
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        added,
        vec![
            ("team/b".to_string(), "v3".to_string()),
            ("team/c".to_string(), "v3".to_string()),
        ],
        "{err}"
    );
    assert!(!err.contains("unreadable"), "{err}");
}

/// A file written by the release before this one (schema 2, whose `S` records came without a
/// schema bump) is taken over silently: no baseline, no events, and marked with this schema so
/// that a later binary can tell what wrote it.
#[tokio::test(flavor = "multi_thread")]
async fn a_schema_2_state_file_migrates_without_baseline_or_events() {
    let state = Arc::new(Synthetic::default());
    for t in ["v1", "v2"] {
        state.put("team/app", t, 0);
    }
    state.put("team/web", "v1", 0);
    let host = serve(state.clone()).await;
    let setup = support::Setup::new(
        "",
        &format!(
            "[[registry]]\nname = \"syn\"\nkind = \"oci\"\nurl = \"http://{host}\"\ninsecure = true\nrepositories = [\"team/*\"]\n"
        ),
    );
    let dir = setup.dir.path().join("state");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(regwatch::store::FILE_NAME);
    let id = format!("http://{host}");
    let digest = |r: &str, t: &str| support::synthetic::digest_of(r, t, 0);
    {
        let db = redb::Database::create(&file).unwrap();
        let tx = db.begin_write().unwrap();
        {
            tx.open_table(META).unwrap().insert("schema", 2).unwrap();
            let mut repos = tx.open_table(REPOS).unwrap();
            let (d1, d2) = (digest("team/app", "v1"), digest("team/app", "v2"));
            repos
                .insert(
                    format!("{id}\0team/app").as_str(),
                    known_record(11, &[("v1", &d1), ("v2", &d2)]).as_slice(),
                )
                .unwrap();
            // An `S` record, as schema 2 wrote for a snapshot with more than tags.
            let web = digest("team/web", "v1");
            let mut s = vec![b'S'];
            s.extend_from_slice(&5u64.to_be_bytes());
            s.extend_from_slice(
                serde_json::json!({"tags": {"v1": web}, "held_back": ["v0"]})
                    .to_string()
                    .as_bytes(),
            );
            repos
                .insert(format!("{id}\0team/web").as_str(), s.as_slice())
                .unwrap();
            tx.open_table(WATCH_SETS)
                .unwrap()
                .insert(id.as_str(), br#"["team/*"]"#.as_slice())
                .unwrap();
            tx.open_table(REGISTRIES)
                .unwrap()
                .insert(id.as_str(), "syn")
                .unwrap();
        }
        tx.commit().unwrap();
    }
    state.put("team/new", "v1", 0);
    let (code, out, err) = tokio::task::block_in_place(|| setup.regwatch(&["once"]));
    assert_eq!(code, 0, "{err}");
    let added: Vec<String> = support::json_lines(&out)
        .iter()
        .map(|e| e["data"]["repository"].as_str().unwrap().to_owned())
        .collect();
    report(
        "schema-2 state file migrated: events on first run",
        added.len(),
        "1 (a repository new since)",
    );
    assert_eq!(added, vec!["team/new"], "no baseline, no phantoms: {err}");
    assert!(!err.contains("unreadable"), "{err}");
    let db = redb::Database::create(&file).unwrap();
    let tx = redb::ReadableDatabase::begin_read(&db).unwrap();
    let schema = tx.open_table(META).unwrap().get("schema").unwrap().unwrap();
    assert_eq!(schema.value(), 3, "marked with the schema that wrote it");
}

/// Microseconds since the epoch now, the unit of revisions drawn from the clock.
fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// A repository's first revision comes from the clock. After the clock was stepped back (an NTP
/// correction, a VM restored from a snapshot), a repository forgotten and watched again must still
/// start above every revision used before, or its events could reuse the ids of its earlier life
/// and be dropped by consumers as duplicates. Simulated by revisions drawn while the clock was a
/// day ahead, and a restart in between.
#[tokio::test(flavor = "multi_thread")]
async fn a_clock_stepped_back_never_lets_a_revision_be_reused() {
    let state = Arc::new(Synthetic::default());
    state.put("team/a", "v1", 0);
    state.put("team/b", "v1", 0);
    let host = serve(state.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let cfg = registry("syn", &host, "\"team/*\"", "");
    let ahead = now_micros() + 86_400_000_000;
    let first_life = {
        let store = Arc::new(Store::open(&state_dir).unwrap());
        let s = scanner(&cfg, false);
        s.cycle(&commit(&store), || false).await.unwrap();
        // team/b's snapshot as written while the clock was a day ahead.
        let Some(RepoState::Known(snap)) = store.repo_state(&s.identity, "team/b").unwrap() else {
            panic!("team/b has a baseline");
        };
        let base = Some(snap.revision);
        let ahead_snap = regwatch::watch::diff::Snapshot {
            revision: ahead,
            ..snap
        };
        store
            .commit_scan(&s.identity, "team/b", base, &ahead_snap, &[])
            .unwrap();
        state.put("team/b", "v2", 0);
        assert_eq!(s.cycle(&commit(&store), || false).await.unwrap().events, 1);
        // team/b is deleted, and forgotten.
        state.repos.lock().unwrap().remove("team/b");
        for _ in 0..3 {
            s.cycle(&commit(&store), || false).await.unwrap();
        }
        assert_eq!(store.repositories(&s.identity).unwrap(), vec!["team/a"]);
        ids(&store)
    };
    // Restarted with the clock back to now: team/b appears again, with v2.
    let store = Arc::new(Store::open(&state_dir).unwrap());
    state.put("team/b", "v2", 0);
    let s = scanner(&cfg, false);
    s.cycle(&commit(&store), || false).await.unwrap();
    let events = outbox(&store);
    assert_eq!(
        events
            .iter()
            .map(|(k, t, _, _)| (k.as_str(), t.as_str()))
            .collect::<Vec<_>>(),
        vec![("tag.added", "v2"), ("tag.added", "v2")],
        "team/b:v2 in each life"
    );
    let Some(RepoState::Known(snap)) = store.repo_state(&s.identity, "team/b").unwrap() else {
        panic!("team/b is known again");
    };
    // The first life's last snapshot was `ahead + 1`; the second life's first events are diffed
    // against the revision before its snapshot's.
    let second_life_start = snap.revision - 1;
    report(
        "clock a day behind the revisions used: re-added repository starts above them",
        second_life_start > ahead + 1,
        "true",
    );
    assert!(
        second_life_start > ahead + 1,
        "revision {second_life_start} drawn from the clock is not above {} used before",
        ahead + 1
    );
    let all = ids(&store);
    assert_eq!(all[..first_life.len()], first_life[..]);
    let distinct: BTreeSet<&String> = all.iter().collect();
    assert_eq!(distinct.len(), all.len(), "ids differ: {all:?}");
}

/// A revision read from the state file at the top of its range (a damaged but decodable record)
/// must not panic the registry's loop when the next commit advances it.
#[tokio::test(flavor = "multi_thread")]
async fn a_stored_revision_at_its_ceiling_does_not_panic_the_scan() {
    let state = Arc::new(Synthetic::default());
    state.put("team/app", "v1", 0);
    let host = serve(state.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let s = scanner(&registry("syn", &host, "\"team/app\"", ""), false);
    s.cycle(&commit(&store), || false).await.unwrap();
    let Some(RepoState::Known(snap)) = store.repo_state(&s.identity, "team/app").unwrap() else {
        panic!("team/app has a baseline");
    };
    let base = Some(snap.revision);
    let ceiling = regwatch::watch::diff::Snapshot {
        revision: u64::MAX,
        ..snap
    };
    store
        .commit_scan(&s.identity, "team/app", base, &ceiling, &[])
        .unwrap();
    state.put("team/app", "v2", 0);
    let cycle = s.cycle(&commit(&store), || false).await.unwrap();
    assert_eq!((cycle.failed, cycle.events), (0, 1));
}

/// A snapshot stored under the earlier version rules (no `version_rules`, as the releases before
/// them wrote it) is upgraded and the upgrade is stored at once, on an idle cycle too: what it
/// decided (Red Hat's `8.9-1107`, a pre-release then, was never announced) must not be decided
/// again under a later config. With `prerelease = true` afterwards, the earlier rules would have
/// announced it, and its removal would be news that never was.
#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_from_before_the_version_rules_is_upgraded_once_and_kept() {
    let state = Arc::new(Synthetic::default());
    for t in ["8.9-1107", "1.0.0"] {
        state.put("team/app", t, 0);
    }
    let host = serve(state.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let versions = |prerelease| {
        format!("[registry.versions]\nscheme = \"semver\"\nprerelease = {prerelease}\n")
    };
    let releases = registry("syn", &host, "\"team/app\"", &versions(false));
    let s = scanner(&releases, true);
    s.cycle(&commit(&store), || false).await.unwrap();
    // What the earlier release stored: the same tags, no `version_rules`, nothing held back.
    let Some(RepoState::Known(mut old)) = store.repo_state(&s.identity, "team/app").unwrap() else {
        panic!("a baseline");
    };
    let revision = old.revision;
    old.version_rules = 0;
    old.held_back.clear();
    store
        .commit_scan(&s.identity, "team/app", Some(revision), &old, &[])
        .unwrap();

    let idle = s.cycle(&commit(&store), || false).await.unwrap();
    assert_eq!(idle.events, 0, "reading it is no news");
    let Some(RepoState::Known(upgraded)) = store.repo_state(&s.identity, "team/app").unwrap()
    else {
        panic!("still known");
    };
    assert_eq!(
        upgraded.version_rules,
        regwatch::watch::versions::RULES,
        "the upgrade is stored"
    );
    assert!(
        upgraded.held_back.contains("8.9-1107"),
        "{:?}",
        upgraded.held_back
    );

    // Later, pre-releases on, and the build leaves: it was never announced.
    let with_pre = scanner(
        &registry("syn", &host, "\"team/app\"", &versions(true)),
        true,
    );
    state
        .repos
        .lock()
        .unwrap()
        .get_mut("team/app")
        .unwrap()
        .remove("8.9-1107");
    with_pre.cycle(&commit(&store), || false).await.unwrap();
    assert_eq!(changes(&store), Vec::<(String, String, String)>::new());
}
