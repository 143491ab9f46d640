//! `regwatch run` end to end: a real `docker-registry`, a real Kafka-protocol broker (Tansu), events
//! consumed back with rdkafka and checked field by field.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use support::{Auth, Registry, Setup, Tansu, consume};

const TOPIC: &str = "regwatch.images";

#[tokio::test(flavor = "multi_thread")]
async fn daemon_publishes_each_change_once() {
    let registry = Registry::start(Auth::None);
    let tansu = Tansu::start();
    for repo in ["team/api", "team/web", "team/worker"] {
        for tag in ["v0.1.0", "latest"] {
            registry.push(repo, tag).await;
        }
    }
    let interval = Duration::from_secs(2);
    let setup = Setup::new(
        "interval = \"2s\"\njitter = \"0%\"\n",
        &format!(
            "[kafka]\nbrokers = \"{}\"\ntopic = \"{TOPIC}\"\npartitions = 3\n\n[[registry]]\nname = \"local\"\nkind = \"oci\"\nurl = \"{}\"\ninsecure = true\nrepositories = [\"team/*\"]\nmutable_tags = [\"latest\"]\nrate_limit = 200\n",
            tansu.brokers,
            registry.url()
        ),
    );

    // First run against a populated registry: nothing on the topic.
    let daemon = setup.spawn();
    std::thread::sleep(interval * 2);
    let baseline = consume(
        &tansu.brokers,
        TOPIC,
        0,
        Duration::from_secs(20),
        Duration::from_secs(2),
    );
    assert!(
        baseline.is_empty(),
        "baseline must publish nothing, got {baseline:?}"
    );

    // Tens of new tags across several repositories, plus a brand-new repository.
    let mut expected: HashMap<(String, String), String> = HashMap::new();
    let pushed_at = Instant::now();
    for repo in ["team/api", "team/web", "team/worker"] {
        for i in 1..=10 {
            let tag = format!("v1.{i}.0");
            expected.insert(
                (repo.to_string(), tag.clone()),
                registry.push(repo, &tag).await,
            );
        }
    }
    for tag in ["v1", "v2"] {
        expected.insert(
            ("team/new".into(), tag.into()),
            registry.push("team/new", tag).await,
        );
    }
    let records = consume(
        &tansu.brokers,
        TOPIC,
        expected.len(),
        Duration::from_secs(60),
        Duration::from_secs(3),
    );
    let latency = pushed_at.elapsed();
    println!(
        "{} tag.added events consumed {:.1} s after the pushes started (interval {interval:?})",
        records.len(),
        latency.as_secs_f64()
    );
    assert_eq!(
        records.len(),
        expected.len(),
        "exactly one event per new tag"
    );
    let mut ids = std::collections::HashSet::new();
    for r in &records {
        let e = &r.payload;
        let repo = e["data"]["repository"].as_str().unwrap().to_owned();
        let tag = e["data"]["tag"].as_str().unwrap().to_owned();
        assert_eq!(e["type"], "io.regwatch.tag.added");
        assert_eq!(
            e["data"]["digest"],
            expected[&(repo.clone(), tag.clone())].as_str(),
            "{repo}:{tag}"
        );
        assert_eq!(r.key, format!("{}/{repo}", registry.host), "Kafka key");
        assert_eq!(
            r.content_type.as_deref(),
            Some("application/cloudevents+json")
        );
        assert_eq!(e["subject"], format!("{}/{repo}:{tag}", registry.host));
        assert_eq!(e["source"], "regwatch/local");
        assert!(
            ids.insert(e["id"].as_str().unwrap().to_owned()),
            "duplicate id"
        );
    }

    // Re-pushing `latest` yields exactly one tag.updated.
    let old = records.len();
    let moved = registry.push("team/api", "latest").await;
    let records = consume(
        &tansu.brokers,
        TOPIC,
        old + 1,
        Duration::from_secs(30),
        Duration::from_secs(3),
    );
    assert_eq!(records.len(), old + 1, "exactly one more event");
    let update = &records
        .iter()
        .find(|r| r.payload["type"] == "io.regwatch.tag.updated")
        .expect("tag.updated")
        .payload;
    assert_eq!(update["data"]["repository"], "team/api");
    assert_eq!(update["data"]["tag"], "latest");
    assert_eq!(update["data"]["digest"], moved.as_str());
    assert!(
        update["data"]["previous_digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );

    // SIGTERM exits 0; a restarted daemon publishes nothing new.
    let (code, _, err) = daemon.stop();
    assert_eq!(code, 0, "{err}");
    let daemon = setup.spawn();
    std::thread::sleep(interval * 3);
    let (code, _, err) = daemon.stop();
    assert_eq!(code, 0, "{err}");
    let after = consume(
        &tansu.brokers,
        TOPIC,
        old + 1,
        Duration::from_secs(20),
        Duration::from_secs(3),
    );
    assert_eq!(after.len(), old + 1, "a restart must re-emit nothing");
}
