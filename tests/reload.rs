//! SIGHUP keeps what protects the registry: a registry whose configuration did not change keeps its
//! loop (its schedule, its token cache, its backoff) and its readiness; it is not rescanned at
//! once, and no new token is fetched for it. A registry the reload adds is scanned at once.

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use support::synthetic::{self, Synthetic};
use support::{Setup, report};

fn registry(name: &str, host: &str, credentials: bool) -> String {
    let auth = if credentials {
        "username = \"ci\"\npassword = \"s3cret\"\n"
    } else {
        ""
    };
    format!(
        "[[registry]]\nname = \"{name}\"\nkind = \"oci\"\nurl = \"http://{host}\"\ninsecure = true\nrepositories = [\"team/app\"]\n{auth}"
    )
}

async fn readyz(admin: &str) -> u16 {
    match reqwest::get(format!("http://{admin}/readyz")).await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// Polls /readyz for `window`; returns how many answers were not 200.
async fn not_ready_answers(admin: &str, window: Duration) -> usize {
    let started = Instant::now();
    let mut bad = 0;
    while started.elapsed() < window {
        bad += usize::from(readyz(admin).await != 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bad
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_keeps_unchanged_registries_running() {
    let state = Arc::new(Synthetic::default());
    state.put("team/app", "v1", 1);
    *state.token_auth.lock().unwrap() = Some(("ci".into(), "s3cret".into(), "tok-1".into()));
    let host = synthetic::serve(state.clone()).await;
    let other = Arc::new(Synthetic::default());
    other.put("team/app", "v1", 1);
    let other_host = synthetic::serve(other.clone()).await;

    // A long interval: after the first cycle, only a reload could cause another listing soon.
    let setup = Setup::new(
        "interval = \"300s\"\njitter = \"0%\"\n",
        &registry("local", &host, true),
    );
    let daemon = setup.spawn();
    let started = Instant::now();
    while readyz(&setup.admin).await != 200 {
        assert!(started.elapsed() < Duration::from_secs(20), "never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lists = || state.tags_requests.load(Ordering::Relaxed);
    let tokens = || state.token_requests.load(Ordering::Relaxed);
    let (lists_before, tokens_before) = (lists(), tokens());

    // The same configuration again.
    support::reload(&daemon, 1).await;
    let unready_same = not_ready_answers(&setup.admin, Duration::from_secs(3)).await;
    let (relists_same, refetches_same) = (lists() - lists_before, tokens() - tokens_before);

    // A registry added: it is scanned; the unchanged one still is not.
    let text = std::fs::read_to_string(&setup.config).unwrap();
    std::fs::write(
        &setup.config,
        format!("{text}\n{}", registry("other", &other_host, false)),
    )
    .unwrap();
    support::reload(&daemon, 2).await;
    let started = Instant::now();
    while other.tags_requests.load(Ordering::Relaxed) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the added registry was not scanned"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ready_after_add = readyz(&setup.admin).await;
    let (relists_add, refetches_add) = (lists() - lists_before, tokens() - tokens_before);

    let (code, _, err) = daemon.stop();
    assert_eq!(code, 0, "{err}");
    report(
        "SIGHUP, registry unchanged: relistings / token fetches / not-ready answers in 3 s",
        format!("{relists_same} / {refetches_same} / {unready_same}"),
        "0 / 0 / 0",
    );
    report(
        "SIGHUP adding a registry: relistings / token fetches of the unchanged one",
        format!("{relists_add} / {refetches_add}"),
        "0 / 0",
    );
    assert_eq!(
        (relists_same, refetches_same, unready_same),
        (0, 0, 0),
        "an unchanged registry keeps its loop, token cache and readiness; stderr:\n{err}"
    );
    assert_eq!((relists_add, refetches_add), (0, 0), "{err}");
    assert_eq!(ready_after_add, 200, "{err}");
}
