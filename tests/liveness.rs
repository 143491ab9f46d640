//! Liveness: nothing a registry answers may end a registry's loop. A scan that panics anyway is
//! counted, logged at ERROR and shown by `/readyz` (the readiness it reports), and the loop scans
//! again after a backoff; a hostile upload time never panics in the first place.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use regwatch::admin::Readiness;
use regwatch::config::{self, FirstRun};
use regwatch::registry::{Registry, RegistryError, Tag};
use regwatch::store::Store;
use regwatch::watch::scan::{Output, Scanner};
use regwatch::watch::scheduler::RegistryLoop;
use regwatch::watchdog::Heartbeats;
use support::synthetic::{Synthetic, serve};
use tokio::sync::{Notify, mpsc, watch};

/// The real adapter, with bugs that some registry answer could reach: its first
/// `catalog_panics` catalog listings panic (the cycle itself panics), and every listing of
/// `panics_on` does (one repository's scan panics).
struct Fragile {
    inner: Arc<dyn Registry>,
    catalog_panics: AtomicUsize,
    panics_on: Option<&'static str>,
}

impl Fragile {
    fn around(scanner: &mut Scanner, catalog_panics: usize, panics_on: Option<&'static str>) {
        scanner.registry = Arc::new(Fragile {
            inner: scanner.registry.clone(),
            catalog_panics: AtomicUsize::new(catalog_panics),
            panics_on,
        });
    }
}

#[async_trait]
impl Registry for Fragile {
    async fn ping(&self) -> Result<(), RegistryError> {
        self.inner.ping().await
    }
    async fn list_repositories(&self) -> Result<Vec<String>, RegistryError> {
        let left = self
            .catalog_panics
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        assert!(left.is_err(), "simulated bug while listing the catalog");
        self.inner.list_repositories().await
    }
    async fn list_tags(&self, repo: &str) -> Result<Vec<Tag>, RegistryError> {
        assert_ne!(
            Some(repo),
            self.panics_on,
            "simulated bug reached by {repo}'s listing"
        );
        self.inner.list_tags(repo).await
    }
    async fn digest(&self, repo: &str, tag: &str) -> Result<String, RegistryError> {
        self.inner.digest(repo, tag).await
    }
    async fn platforms(&self, repo: &str, digest: &str) -> Result<Vec<String>, RegistryError> {
        self.inner.platforms(repo, digest).await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panicking_scan_is_counted_shown_and_the_loop_goes_on() {
    let state = Arc::new(Synthetic::default());
    state.put("team/app", "v1", 1);
    let host = serve(state.clone()).await;
    let text = format!(
        "[[registry]]\nname = \"fragile\"\nkind = \"oci\"\nurl = \"http://{host}\"\ninsecure = true\n\
         repositories = [\"team/*\"]\ninterval = \"1s\"\n"
    );
    let cfg = config::parse(&text).unwrap().registries.remove(0);
    let mut scanner = Scanner::new(&cfg, FirstRun::Baseline, false).unwrap();
    Fragile::around(&mut scanner, 2, None);
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let readiness = Arc::new(Readiness::new(["fragile".to_string()], false));
    let (_hint_tx, hints) = mpsc::channel(8);
    let (fatal, _fatal_rx) = mpsc::channel(1);
    let (_rescan_tx, rescan) = watch::channel(0);
    let (stop_tx, stop) = watch::channel(false);
    let heartbeats = Heartbeats::default();
    let registry_loop = RegistryLoop {
        scanner,
        output: Output::Commit {
            store: store.clone(),
            published: Arc::new(Notify::new()),
        },
        jitter: 0.0,
        hints,
        rescan,
        readiness: readiness.clone(),
        heartbeat: heartbeats.register(),
        fatal,
    };
    let task = tokio::spawn(registry_loop.run(stop));

    // The first cycle panics: the loop survives it and says so.
    let started = Instant::now();
    let mut shown = None;
    while started.elapsed() < Duration::from_secs(5) {
        if let Err(why) = readiness.check()
            && why.contains("panicked")
        {
            shown = Some(why);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let shown = shown.expect("/readyz must say that a scan panicked");
    assert!(shown.contains("fragile"), "{shown}");
    assert!(
        !shown.contains("simulated bug"),
        "/readyz is unauthenticated: the panic's text stays in the log: {shown}"
    );
    assert!(!task.is_finished(), "the loop must outlive the panic");
    let panics = regwatch::metrics::get().render();
    assert!(
        panics
            .lines()
            .any(|l| l.starts_with("regwatch_scan_panics_total{registry=\"fragile\"}")),
        "{panics}"
    );

    // After a backoff (the second cycle panics too), a cycle completes and the loop is ready.
    let started = Instant::now();
    while readiness.check().is_err() && started.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(readiness.check(), Ok(()), "ready once a cycle completes");
    assert!(
        heartbeats.all_fresh(Duration::from_secs(3)),
        "the loop keeps beating"
    );
    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the loop stops on shutdown")
        .expect("the loop ended without a panic");
}

/// GCR's `manifest` map with `timeUploadedMs` in the year 10000: before the fix, formatting it
/// panicked and killed the registry's loop while `/readyz` said ready. Now the tag is reported
/// with `pushed_at: null`, through the real daemon.
#[tokio::test(flavor = "multi_thread")]
async fn an_upload_time_in_the_year_10000_is_null_not_a_dead_loop() {
    let state = Arc::new(Synthetic::default());
    state.put("team/app", "v1", 1);
    state.put("team/other", "v1", 1);
    *state.google_manifest.lock().unwrap() = true;
    *state.upload_time_ms.lock().unwrap() = "253402300800000".into();
    let host = serve(state.clone()).await;
    let setup = support::Setup::new(
        "interval = \"1s\"\njitter = \"0%\"\n",
        &format!(
            "[[registry]]\nname = \"gcrish\"\nkind = \"oci\"\nurl = \"http://{host}\"\ninsecure = true\nrepositories = [\"team/*\"]\n"
        ),
    );
    let daemon = setup.spawn();
    support::wait_ready(&setup.admin).await;
    state.put("team/app", "v2", 2);
    daemon
        .wait_event("team/app:v2", Duration::from_secs(10), |e| {
            e["data"]["repository"] == "team/app" && e["data"]["tag"] == "v2"
        })
        .await;
    // The loop is alive: a push to another repository 2 s later is reported too.
    tokio::time::sleep(Duration::from_secs(2)).await;
    state.put("team/other", "v2", 2);
    daemon
        .wait_event("team/other:v2", Duration::from_secs(10), |e| {
            e["data"]["repository"] == "team/other" && e["data"]["tag"] == "v2"
        })
        .await;
    let (code, out, err) = daemon.stop();
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let events = support::json_lines(&out);
    assert_eq!(events.len(), 2, "{out}");
    for e in &events {
        assert_eq!(e["data"]["pushed_at"], serde_json::Value::Null, "{e}");
    }
    support::assert_schema_valid(&events);
}

/// A panic confined to one repository (every scan of it panics) is that repository's failure:
/// counted, and it backs off alone; its siblings are scanned and reported every cycle.
#[tokio::test(flavor = "multi_thread")]
async fn a_repository_whose_scan_always_panics_never_holds_back_its_siblings() {
    let state = Arc::new(Synthetic::default());
    state.put("team/bad", "v1", 1);
    state.put("team/good", "v1", 1);
    let host = serve(state.clone()).await;
    let text = format!(
        "[[registry]]\nname = \"halfbroken\"\nkind = \"oci\"\nurl = \"http://{host}\"\ninsecure = true\n\
         repositories = [\"team/*\"]\ninterval = \"1s\"\n"
    );
    let cfg = config::parse(&text).unwrap().registries.remove(0);
    let mut scanner = Scanner::new(&cfg, FirstRun::Baseline, false).unwrap();
    Fragile::around(&mut scanner, 0, Some("team/bad"));
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let output = Output::Commit {
        store: store.clone(),
        published: Arc::new(Notify::new()),
    };
    let first = scanner.cycle(&output, || false).await.unwrap();
    assert_eq!((first.failed, first.repositories), (1, 2), "{first:?}");
    state.put("team/good", "v2", 2);
    let second = scanner.cycle(&output, || false).await.unwrap();
    assert_eq!(
        second.events, 1,
        "the sibling's push is reported: {second:?}"
    );
    let metrics = regwatch::metrics::get().render();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("regwatch_scan_panics_total{registry=\"halfbroken\"}")),
        "{metrics}"
    );
}
