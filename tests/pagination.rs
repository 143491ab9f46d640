//! Listing against a spec-conformant in-process registry: `n`/`last`/`Link` paging across many pages,
//! the `last=` follow-up when a registry drops `Link`, guards against foreign and looping links, and
//! the request cost of baseline and idle cycles.

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use regwatch::config;
use regwatch::registry::{Registry, RegistryError, oci::OciRegistry};
use regwatch::store::{RepoState, StateStore, Store};
use regwatch::watch::scan::{Output, Scanner};
use support::report;
use support::synthetic::{Quirk, Synthetic, serve};
use tokio::sync::Notify;

fn registry_config(host: &str, page_size: u32, repos: &str) -> config::RegistryConfig {
    let text = format!(
        "[[registry]]\nname = \"syn\"\nkind = \"oci\"\nurl = \"http://{host}\"\ninsecure = true\npage_size = {page_size}\nrate_limit = 10000\nrepositories = [{repos}]\nmutable_tags = [\"latest\"]\n"
    );
    config::parse(&text).unwrap().registries.remove(0)
}

async fn synthetic(tags: usize) -> (Arc<Synthetic>, String) {
    let state = Arc::new(Synthetic::default());
    for i in 0..tags {
        state.put("team/app", &format!("t{i:04}"), 0);
    }
    let host = serve(state.clone()).await;
    (state, host)
}

#[tokio::test]
async fn tags_follow_link_across_many_pages() {
    let (state, host) = synthetic(100).await;
    for quirk in [Quirk::None, Quirk::AbsoluteLink, Quirk::NoLink] {
        *state.quirk.lock().unwrap() = quirk;
        state.tags_requests.store(0, Ordering::Relaxed);
        let client = OciRegistry::new(&registry_config(&host, 7, "\"team/app\"")).unwrap();
        let tags = client.list_tags("team/app").await.unwrap();
        let names: Vec<String> = tags.into_iter().map(|t| t.name).collect();
        let expected: Vec<String> = (0..100).map(|i| format!("t{i:04}")).collect();
        assert_eq!(names, expected, "{quirk:?}");
        // 100 tags at n=7 is 15 pages; without Link the client asks once more after each full page.
        let pages = state.tags_requests.load(Ordering::Relaxed);
        assert_eq!(pages, 15, "{quirk:?}");
    }
}

#[tokio::test]
async fn exact_multiple_without_link_asks_once_more() {
    let (state, host) = synthetic(98).await;
    *state.quirk.lock().unwrap() = Quirk::NoLink;
    let client = OciRegistry::new(&registry_config(&host, 7, "\"team/app\"")).unwrap();
    assert_eq!(client.list_tags("team/app").await.unwrap().len(), 98);
    assert_eq!(
        state.tags_requests.load(Ordering::Relaxed),
        15,
        "14 full pages, then one empty answer"
    );
}

#[tokio::test]
async fn foreign_and_looping_links_are_refused() {
    let (state, host) = synthetic(30).await;
    let client = OciRegistry::new(&registry_config(&host, 7, "\"team/app\"")).unwrap();
    *state.quirk.lock().unwrap() = Quirk::ForeignLink;
    let e = client.list_tags("team/app").await.unwrap_err();
    assert!(
        matches!(&e, RegistryError::Protocol(m) if m.contains("another host")),
        "{e}"
    );
    *state.quirk.lock().unwrap() = Quirk::LoopingLink;
    let e = client.list_tags("team/app").await.unwrap_err();
    assert!(
        matches!(&e, RegistryError::Protocol(m) if m.contains("loops")),
        "{e}"
    );
}

/// A registry that honours `n` but ignores `last`, and sends no `Link`: the follow-up page is the
/// first page again. Before, the pager took "nothing past `last`" for the end of the list, and
/// `regwatch tags` printed 7 of 20 tags with exit 0; a truncated listing must be an error.
#[tokio::test(flavor = "multi_thread")]
async fn a_registry_that_ignores_last_is_an_error_not_a_short_list() {
    let (state, host) = synthetic(20).await;
    *state.quirk.lock().unwrap() = Quirk::IgnoresLast;
    let client = OciRegistry::new(&registry_config(&host, 7, "\"team/app\"")).unwrap();
    let e = client.list_tags("team/app").await.unwrap_err();
    assert!(
        matches!(&e, RegistryError::Protocol(m) if m.contains("does not page forward")),
        "{e}"
    );
    let setup = support::Setup::new(
        "",
        &format!(
            "[[registry]]\nname = \"syn\"\nkind = \"oci\"\nurl = \"http://{host}\"\ninsecure = true\npage_size = 7\nrepositories = [\"team/app\"]\n"
        ),
    );
    let (code, out, err) = setup.regwatch(&["tags", "syn", "team/app"]);
    assert_eq!(code, 1, "a partial list is a failure: {out}\n{err}");
    assert!(out.is_empty(), "nothing printed of a partial list: {out}");
    // Fewer tags than a page: one short page is the whole list, quirk or not.
    let (state, host) = synthetic(5).await;
    *state.quirk.lock().unwrap() = Quirk::IgnoresLast;
    let client = OciRegistry::new(&registry_config(&host, 7, "\"team/app\"")).unwrap();
    assert_eq!(client.list_tags("team/app").await.unwrap().len(), 5);
}

#[tokio::test]
async fn catalog_pages_and_unknown_repository() {
    let state = Arc::new(Synthetic::default());
    for i in 0..25 {
        state.put(&format!("team/r{i:02}"), "v1", 0);
    }
    let host = serve(state.clone()).await;
    let client = OciRegistry::new(&registry_config(&host, 4, "\"team/*\"")).unwrap();
    assert_eq!(client.list_repositories().await.unwrap().len(), 25);
    assert_eq!(state.catalog_requests.load(Ordering::Relaxed), 7);
    assert!(matches!(
        client.list_tags("nope/x").await,
        Err(RegistryError::NotFound(_))
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn cycles_cost_one_request_per_repository_and_no_manifest_gets() {
    let state = Arc::new(Synthetic::default());
    for repo in ["a/one", "a/two", "a/three"] {
        for t in ["v1", "v2", "latest"] {
            state.put(repo, t, 0);
        }
    }
    let host = serve(state.clone()).await;
    let cfg = registry_config(&host, 1000, "\"a/one\", \"a/two\", \"a/three\"");
    let scanner = Scanner::new(&cfg, config::FirstRun::Baseline, false).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let output = Output::Commit {
        store: store.clone(),
        published: Arc::new(Notify::new()),
    };

    let baseline = scanner.cycle(&output, || false).await.unwrap();
    assert_eq!((baseline.events, baseline.failed), (0, 0));
    assert_eq!(
        state.tags_requests.load(Ordering::Relaxed),
        3,
        "one tags/list per repository"
    );
    assert_eq!(
        state.head_requests.load(Ordering::Relaxed),
        3,
        "HEAD only for the mutable tag"
    );
    assert_eq!(
        state.catalog_requests.load(Ordering::Relaxed),
        0,
        "plain names need no catalog"
    );

    let idle = scanner.cycle(&output, || false).await.unwrap();
    assert_eq!(idle.events, 0);
    assert_eq!(state.tags_requests.load(Ordering::Relaxed), 6);
    assert_eq!(
        state.head_requests.load(Ordering::Relaxed),
        6,
        "mutable tags are re-checked each cycle"
    );

    let moved = state.put("a/two", "latest", 1);
    state.put("a/one", "v3", 0);
    let busy = scanner.cycle(&output, || false).await.unwrap();
    assert_eq!(busy.events, 2);
    assert_eq!(
        state.head_requests.load(Ordering::Relaxed),
        10,
        "3 mutable + 1 new tag"
    );
    assert_eq!(
        state.get_manifest_requests.load(Ordering::Relaxed),
        0,
        "never a manifest GET"
    );
    let events: Vec<String> = store
        .outbox_batch(10)
        .unwrap()
        .into_iter()
        .map(|(_, e)| e.payload)
        .collect();
    assert!(
        events
            .iter()
            .any(|p| p.contains(&moved) && p.contains("tag.updated")),
        "{events:?}"
    );
    let metrics = regwatch::metrics::get().render();
    assert!(
        metrics.contains("regwatch_dockerhub_ratelimit_remaining{registry=\"syn\"} 97"),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_empty_follow_up_proves_nothing_about_link() {
    // A registry that honours n/last but never sends Link (as some do): a repository of exactly
    // one page ends with an empty follow-up, which must not teach the client to stop at page 1.
    let state = Arc::new(Synthetic::default());
    *state.quirk.lock().unwrap() = Quirk::NoLink;
    for i in 0..7 {
        state.put("team/exact", &format!("t{i:02}"), 0);
    }
    for i in 0..20 {
        state.put("team/long", &format!("t{i:02}"), 0);
    }
    let host = serve(state.clone()).await;
    let client = OciRegistry::new(&registry_config(&host, 7, "\"team/*\"")).unwrap();
    assert_eq!(client.list_tags("team/exact").await.unwrap().len(), 7);
    assert_eq!(
        state.tags_requests.load(Ordering::Relaxed),
        2,
        "one full page, one empty follow-up"
    );
    let long = client.list_tags("team/long").await.unwrap().len();
    report(
        "no Link, n/last honoured: tags listed after an exact-page repository",
        format!("{long}/20"),
        "20/20",
    );
    assert_eq!(
        long, 20,
        "the empty follow-up taught the client to stop at page 1"
    );

    // The same at the scanner, with emit_removed: a shrunken listing would be phantom removals.
    let cfg = registry_config(&host, 7, "\"team/*\"");
    let scanner = Scanner::new(&cfg, config::FirstRun::Baseline, true).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let output = Output::Commit {
        store: store.clone(),
        published: Arc::new(Notify::new()),
    };
    for _ in 0..3 {
        let cycle = scanner.cycle(&output, || false).await.unwrap();
        assert_eq!((cycle.failed, cycle.events), (0, 0));
    }
    assert_eq!(store.outbox_len().unwrap(), 0, "no phantom tag.removed");
}

#[tokio::test]
async fn a_full_page_without_link_is_always_followed_up() {
    // Even from a registry that sent Link on other pages: the next page may lose it (a proxy, a
    // registry bug), and a listing cut short would be diffed as complete.
    let state = Arc::new(Synthetic::default());
    for i in 0..7 {
        state.put("team/exact", &format!("t{i:02}"), 0);
    }
    for i in 0..20 {
        state.put("team/long", &format!("t{i:02}"), 0);
    }
    let host = serve(state.clone()).await;
    let client = OciRegistry::new(&registry_config(&host, 7, "\"team/*\"")).unwrap();
    assert_eq!(client.list_tags("team/long").await.unwrap().len(), 20);
    for round in 1..=2 {
        state.tags_requests.store(0, Ordering::Relaxed);
        assert_eq!(client.list_tags("team/exact").await.unwrap().len(), 7);
        assert_eq!(
            state.tags_requests.load(Ordering::Relaxed),
            2,
            "round {round}: one full page, one follow-up"
        );
    }
    // A page that loses its Link after Links were seen: the follow-up still finds the rest.
    *state.quirk.lock().unwrap() = Quirk::NoLink;
    assert_eq!(client.list_tags("team/long").await.unwrap().len(), 20);
    // A listing that is not a multiple of page_size costs one request per page, no more.
    *state.quirk.lock().unwrap() = Quirk::None;
    state.tags_requests.store(0, Ordering::Relaxed);
    assert_eq!(client.list_tags("team/long").await.unwrap().len(), 20);
    assert_eq!(state.tags_requests.load(Ordering::Relaxed), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_first_scan_keeps_its_baseline_decision() {
    let state = Arc::new(Synthetic::default());
    state.put("a/one", "v1", 0);
    state.put("b/new", "v1", 0);
    state.put("b/new", "v2", 0);
    let host = serve(state.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let output = Output::Commit {
        store: store.clone(),
        published: Arc::new(Notify::new()),
    };
    let scanner = |repos: &str| {
        Scanner::new(
            &registry_config(&host, 1000, repos),
            config::FirstRun::Baseline,
            false,
        )
        .unwrap()
    };
    scanner("\"a/*\"").cycle(&output, || false).await.unwrap();

    // The config now also watches b/*: b/new's first scan is a baseline, but it fails...
    *state.quirk.lock().unwrap() = Quirk::HtmlContentType;
    let failed = scanner("\"a/*\", \"b/*\"")
        .cycle(&output, || false)
        .await
        .unwrap();
    assert_eq!(failed.failed, 2);
    let identity = scanner("\"a/*\"").identity;
    assert!(
        matches!(
            store.repo_state(&identity, "b/new").unwrap(),
            Some(RepoState::Pending { emit: false, .. })
        ),
        "the decision is kept"
    );

    // ...and succeeding later, under the watch set that now includes b/*, it is still a baseline.
    *state.quirk.lock().unwrap() = Quirk::None;
    let later = scanner("\"a/*\", \"b/*\"")
        .cycle(&output, || false)
        .await
        .unwrap();
    assert_eq!(
        (later.failed, later.events),
        (0, 0),
        "a config edit must not flood"
    );
    assert_eq!(store.outbox_len().unwrap(), 0);
}
