//! Edge cases an adversarial review of the state rework found (each failed before its fix): two
//! entries on one registry, a Link dropped after Links were seen, a dry run against a schema-1
//! file, a transient 404 while the catalog omits a repository, a reload that fails to start, and a
//! new repository's events re-detected after a lost commit.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use regwatch::config::{self, FirstRun};
use regwatch::store::Store;
use regwatch::watch::scan::{Output, Scanner};
use support::synthetic::{Quirk, Synthetic, serve};
use tokio::sync::Notify;

fn registry(name: &str, host: &str, repos: &str, extra: &str) -> config::RegistryConfig {
    let text = format!(
        "[[registry]]\nname = \"{name}\"\nkind = \"oci\"\nurl = \"http://{host}\"\ninsecure = true\nrate_limit = 10000\nrepositories = [{repos}]\n{extra}\n"
    );
    config::parse(&text).unwrap().registries.remove(0)
}

fn commit(store: &Arc<Store>) -> Output {
    Output::Commit {
        store: store.clone(),
        published: Arc::new(Notify::new()),
    }
}

fn outbox(store: &Store) -> Vec<(String, String, String)> {
    store
        .outbox_batch(10_000)
        .unwrap()
        .into_iter()
        .map(|(_, e)| {
            let v: serde_json::Value = serde_json::from_str(&e.payload).unwrap();
            (
                v["type"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("io.regwatch.")
                    .to_owned(),
                v["data"]["repository"].as_str().unwrap().to_owned(),
                v["data"]["tag"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
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
        outbox(&store).len(),
        "1",
    );
    assert_eq!(
        outbox(&store),
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
        outbox(&store).len(),
        "0",
    );
    assert_eq!(
        outbox(&store),
        vec![],
        "phantom removed/added from a truncated listing"
    );
}

/// `once --dry-run` stores nothing: a schema-1 file must not be migrated by it (the migration
/// would drop every name the dry-run config lacks).
#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_with_another_config_leaves_a_schema_1_file_alone() {
    let state = Arc::new(Synthetic::default());
    for t in ["v1", "v2", "v3", "latest"] {
        state.put("team/app", t, 0);
    }
    state.put("team/web", "v1", 0);
    state.put("infra/db", "15", 0);
    let host = serve(state.clone()).await;
    let body = |name: &str| {
        format!(
            "[[registry]]\nname = \"{name}\"\nkind = \"oci\"\nurl = \"http://{host}\"\ninsecure = true\nrepositories = [\"team/*\", \"infra/db\"]\nmutable_tags = [\"latest\"]\n"
        )
    };
    let real = support::Setup::new("", &body("syn"));
    let state_dir = real.dir.path().join("state");
    std::fs::create_dir_all(&state_dir).unwrap();
    let file = state_dir.join(regwatch::store::FILE_NAME);
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/schema1.redb"),
        &file,
    )
    .unwrap();
    let before = std::fs::read(&file).unwrap();
    // A scratch config pointed at the same state_dir, trying out a registry under another name.
    let scratch = real.dir.path().join("scratch.toml");
    std::fs::write(
        &scratch,
        format!(
            "[daemon]\nstate_dir = \"{}\"\nadmin_listen = \"127.0.0.1:{}\"\n{}",
            state_dir.display(),
            support::free_port(),
            body("scratch")
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
        outbox(&store).len(),
        "0",
    );
    assert_eq!(
        outbox(&store),
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
    store
        .outbox_batch(10_000)
        .unwrap()
        .into_iter()
        .map(|(_, e)| e.id)
        .collect()
}

/// The README promises "a change detected again after a crash lost its commit has the same
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
