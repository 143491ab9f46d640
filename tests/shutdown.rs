//! Stopping is bounded: SIGTERM ends the daemon within `daemon.shutdown_timeout`, even with Kafka
//! down, a full outbox and a delivery in flight, and even in the middle of a webhook-triggered
//! scan of a slow registry. Nothing is lost: what was not delivered stays in the outbox and goes
//! out after the restart.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use support::synthetic::{self, Synthetic};
use support::{Setup, Tansu, consume, metric, report, wait_published, wait_ready};

const TOPIC: &str = "regwatch.images";
/// Slack for process exit and the test's own polling.
const MARGIN: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_a_kafka_outage_is_bounded_and_loses_nothing() {
    const N: usize = 20;
    const TIMEOUT: Duration = Duration::from_secs(6);
    let state = Arc::new(Synthetic::default());
    state.put("team/app", "v0", 0);
    let host = synthetic::serve(state.clone()).await;
    let tansu = Tansu::start();
    let port = tansu.port();
    // librdkafka's default delivery timeout (30 s here) is what keeps a delivery in flight.
    let setup = Setup::new(
        &format!(
            "interval = \"1s\"\njitter = \"0%\"\nshutdown_timeout = \"{}s\"\n",
            TIMEOUT.as_secs()
        ),
        &format!(
            "[kafka]\nbrokers = \"{}\"\ntopic = \"{TOPIC}\"\npartitions = 2\n\n[[registry]]\nname = \"local\"\nkind = \"oci\"\nurl = \"http://{host}\"\ninsecure = true\nrepositories = [\"team/app\"]\n",
            tansu.brokers
        ),
    );
    let daemon = setup.spawn();
    wait_ready(&setup.admin).await;

    drop(tansu);
    let mut pushed = HashSet::new();
    for i in 0..N {
        let tag = format!("v1.{i}");
        state.put("team/app", &tag, 1);
        pushed.insert(tag);
    }
    let started = Instant::now();
    let committed = "regwatch_events_produced_total{type=\"io.regwatch.tag.added\"}";
    while metric(&setup.admin, committed).await.unwrap_or(0.0) < N as f64 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the events never reached the outbox"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The publisher was woken by the commit and is now waiting on the dead broker.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let stopping = Instant::now();
    let (code, _, err) = daemon.stop();
    let took = stopping.elapsed();

    let tansu = Tansu::start_on(port);
    let daemon = setup.spawn();
    // The topic exists again once regwatch has re-created it (never auto-created with the
    // broker's defaults); wait for the acknowledgements before reading it.
    wait_published(&setup.admin, N, Duration::from_secs(60)).await;
    let records = consume(
        &tansu.brokers,
        TOPIC,
        N,
        Duration::from_secs(60),
        Duration::from_secs(3),
    );
    let (code2, _, err2) = daemon.stop();
    let delivered: HashSet<String> = records
        .iter()
        .map(|r| r.payload["data"]["tag"].as_str().unwrap().to_owned())
        .collect();
    let lost = pushed.difference(&delivered).count();

    report(
        "SIGTERM during a Kafka outage (20 events in the outbox, delivery in flight): seconds to exit",
        format!("{:.1}", took.as_secs_f64()),
        &format!(
            "<= shutdown_timeout {} s + {} s",
            TIMEOUT.as_secs(),
            MARGIN.as_secs()
        ),
    );
    report(
        "SIGTERM during a Kafka outage, restart with Kafka up: events lost",
        lost,
        "0",
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        took <= TIMEOUT + MARGIN,
        "SIGTERM took {took:?}; stderr:\n{err}"
    );
    assert_eq!(code2, 0, "{err2}");
    assert_eq!(lost, 0, "lost events; stderr after restart:\n{err2}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_a_webhook_scan_is_bounded() {
    const TIMEOUT: Duration = Duration::from_secs(4);
    const TOKEN: &str = "hook-token-123";
    let state = Arc::new(Synthetic::default());
    let repos: Vec<String> = (1..=6).map(|i| format!("team/r{i}")).collect();
    for r in &repos {
        state.put(r, "v1", 1);
    }
    let host = synthetic::serve(state.clone()).await;
    let setup = Setup::new(
        &format!(
            "interval = \"300s\"\nshutdown_timeout = \"{}s\"\n",
            TIMEOUT.as_secs()
        ),
        &format!(
            "[[registry]]\nname = \"local\"\nkind = \"oci\"\nurl = \"http://{host}\"\ninsecure = true\nrepositories = [\"team/*\"]\nconcurrency = 1\nwebhook_token = \"{TOKEN}\"\n"
        ),
    );
    let daemon = setup.spawn();
    wait_ready(&setup.admin).await;

    // The registry turns slow: each listing takes 5 s, so the hinted scan of six would take 30 s.
    *state.tags_delay.lock().unwrap() = Some(Duration::from_secs(5));
    let events: Vec<serde_json::Value> = repos
        .iter()
        .map(|r| serde_json::json!({"action": "push", "target": {"repository": r, "tag": "v2"}}))
        .collect();
    let before = state.tags_requests.load(Ordering::Relaxed);
    let status = reqwest::Client::new()
        .post(format!("http://{}/hooks/local", setup.admin))
        .bearer_auth(TOKEN)
        .body(serde_json::json!({ "events": events }).to_string())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 202);
    let started = Instant::now();
    while state.tags_requests.load(Ordering::Relaxed) == before {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the hint started no scan"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let stopping = Instant::now();
    let (code, _, err) = daemon.stop();
    let took = stopping.elapsed();
    report(
        "SIGTERM during a webhook-triggered scan of 6 slow repositories (30 s of work): seconds to exit",
        format!("{:.1}", took.as_secs_f64()),
        &format!(
            "<= shutdown_timeout {} s + {} s",
            TIMEOUT.as_secs(),
            MARGIN.as_secs()
        ),
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        took <= TIMEOUT + MARGIN,
        "SIGTERM took {took:?}; stderr:\n{err}"
    );
}
