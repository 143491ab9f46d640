//! Adversarial review of cluster mode: the cases found to lose or invent events, each against
//! rdkafka's in-process MockCluster (a real Kafka protocol peer) and the synthetic registry.
//!
//! The state topic's record layout is the one `src/store/kafka.rs` documents: keys are JSON
//! arrays, `["repo", identity, repository]` lands in FNV-1a(key) mod partitions, and
//! `["watch", identity]` (the patterns of the last complete listing) is written to each partition
//! its owner's listing covered.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use regwatch::admin::Readiness;
use regwatch::config::{self, ClusterConfig, FirstRun, KafkaConfig};
use regwatch::store::StateStore;
use regwatch::store::kafka::ClusterStore;
use regwatch::watch::scan::{Output, Scanner};
use support::kafka_wire::{ProxiedMock, Seen};
use support::report;
use support::synthetic::{Synthetic, serve};
use tokio::sync::Notify;

const PARTITIONS: i32 = 4;

/// FNV-1a of `key`: its partition is this modulo the state topic's partition count.
fn fnv(key: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

fn partition_of(key: &str) -> i32 {
    (fnv(key) % PARTITIONS as u64) as i32
}

fn repo_partition(identity: &str, repository: &str) -> i32 {
    partition_of(&serde_json::to_string(&("repo", identity, repository)).unwrap())
}

fn configs(brokers: String) -> (KafkaConfig, ClusterConfig) {
    let kafka = KafkaConfig {
        brokers,
        topic: "imgs".into(),
        create_topic: false,
        partitions: PARTITIONS,
        replication_factor: -1,
        properties: Vec::new(),
    };
    let cluster = ClusterConfig {
        group: "review".into(),
        state_topic: "imgs.state".into(),
        session_timeout: Duration::from_secs(6),
        exactly_once: false,
        partitions: PARTITIONS,
        // rdkafka's mock cluster has no DescribeConfigs.
        verify_state_topic: false,
    };
    (kafka, cluster)
}

type Mock = MockCluster<'static, rdkafka::producer::DefaultProducerContext>;

/// Starts a replica (it joins the group in the background).
fn start(mock: &Mock) -> (Arc<ClusterStore>, Arc<Readiness>) {
    let (kafka, cluster) = configs(mock.bootstrap_servers());
    start_with(&kafka, &cluster)
}

/// Starts a replica of `kafka` and `cluster` (it joins the group in the background).
fn start_with(kafka: &KafkaConfig, cluster: &ClusterConfig) -> (Arc<ClusterStore>, Arc<Readiness>) {
    let store = Arc::new(ClusterStore::new(kafka, cluster).unwrap());
    let readiness = Arc::new(Readiness::new(Vec::<String>::new(), false));
    store.start(readiness.clone(), tokio::runtime::Handle::current());
    (store, readiness)
}

/// Waits until `readiness` says its replica restored what it was assigned.
async fn restored(readiness: &Readiness) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while readiness.check().is_err() {
        assert!(
            Instant::now() < deadline,
            "not restored: {:?}",
            readiness.check()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts a replica and waits until it has restored what it was assigned.
async fn replica(mock: &Mock) -> Arc<ClusterStore> {
    let (store, readiness) = start(mock);
    restored(&readiness).await;
    store
}

/// Every event on `imgs` as (type, repository, tag).
fn events(brokers: &str) -> Vec<(String, String, String)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "review-reader")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut all = rdkafka::TopicPartitionList::new();
    for p in 0..PARTITIONS {
        all.add_partition_offset("imgs", p, rdkafka::Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&all).unwrap();
    let mut out = Vec::new();
    let quiet = Duration::from_secs(3);
    let mut last = Instant::now();
    while last.elapsed() < quiet {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            out.push((
                v["type"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("io.regwatch.")
                    .to_owned(),
                v["data"]["repository"].as_str().unwrap().to_owned(),
                v["data"]["tag"].as_str().unwrap().to_owned(),
            ));
            last = Instant::now();
        }
    }
    out
}

/// A partition no complete listing covered yet (its owner died before finishing its first
/// cycle, say, and this replica took it over) must make a baseline of ITS first-seen
/// repositories only. A repository created after the listing that recorded the watch set of
/// another partition is news there: baselining it too loses its tags.
#[tokio::test(flavor = "multi_thread")]
async fn a_partition_without_a_watch_set_does_not_baseline_new_repositories_elsewhere() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("imgs.state", PARTITIONS, 1).unwrap();
    mock.create_topic("imgs", PARTITIONS, 1).unwrap();
    let registry = Arc::new(Synthetic::default());
    let host = serve(registry.clone()).await;
    let cfg = config::parse(&format!(
        "[[registry]]\nname = \"r\"\nkind = \"oci\"\nurl = \"http://{host}\"\ninsecure = true\nrate_limit = 10000\nrepositories = [\"team/*\"]\n"
    ))
    .unwrap()
    .registries
    .remove(0);
    let scanner = Scanner::new(&cfg, FirstRun::Baseline, false).unwrap();
    let id = scanner.identity.clone();

    // A new repository, and a partition other than its own that no listing covered.
    let new = (0..100)
        .map(|i| format!("team/new{i}"))
        .find(|r| repo_partition(&id, r) == 0)
        .unwrap();
    let uncovered = 3;
    // The listing that covered partitions 0..3 had the same patterns and no `new`.
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", mock.bootstrap_servers())
        .create()
        .unwrap();
    let key = serde_json::to_string(&("watch", &id)).unwrap();
    let patterns = serde_json::to_vec(&["team/*"]).unwrap();
    for p in (0..PARTITIONS).filter(|p| *p != uncovered) {
        producer
            .send(
                BaseRecord::to("imgs.state")
                    .key(&key)
                    .payload(&patterns)
                    .partition(p),
            )
            .map_err(|(e, _)| e)
            .unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();

    let store = replica(&mock).await;
    registry.put(&new, "v1", 0);
    let output = Output::Commit {
        store: store.clone(),
        published: Arc::new(Notify::new()),
    };
    scanner.cycle(&output, || false).await.unwrap();
    store.stop(Duration::from_secs(10)).await;

    let got = events(&mock.bootstrap_servers());
    report(
        "cluster: new repository next to an uncovered partition reported",
        got.len(),
        "1",
    );
    assert_eq!(
        got,
        vec![("tag.added".into(), new, "v1".into())],
        "baselined, so lost"
    );
}

/// A revocation waits for the writes in flight to its partitions, which is right; but while the
/// consumer thread waits for the claims' write lock, every reader of the lock queues behind it,
/// and the readers are the scans' `owns`/`repo_state` on the async workers. A write that waits
/// for an unreachable partition leader (up to `message.timeout.ms`, 30 s; a queue of
/// transactions, longer) then freezes the runtime: heartbeats stop, the systemd watchdog (30 s,
/// fed only while every loop beat within 15 s) kills the replica, the webhook endpoint hangs.
#[tokio::test(flavor = "multi_thread")]
async fn a_rebalance_waiting_for_a_slow_write_does_not_block_ownership_questions() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("imgs.state", PARTITIONS, 1).unwrap();
    mock.create_topic("imgs", PARTITIONS, 1).unwrap();
    let a = replica(&mock).await;
    let (id, repo) = ("https://r.example", "team/app");
    assert!(a.owns(id, repo), "alone, it owns everything");

    // The events topic loses its leaders: a scan's commit waits for its event's delivery.
    for p in 0..PARTITIONS {
        mock.partition_leader("imgs", p, None).unwrap();
    }
    let event = regwatch::event::Event {
        id: "e".into(),
        key: "r.example/team/app".into(),
        payload: "{}".into(),
    };
    let writer = {
        let a = a.clone();
        tokio::task::spawn_blocking(move || {
            a.commit_scan(id, repo, None, &Default::default(), &[event])
        })
    };
    // A second replica joins: the first must revoke half its partitions.
    let (b, _) = start(&mock);
    let mut slowest = Duration::ZERO;
    let probing = Instant::now();
    while probing.elapsed() < Duration::from_secs(20) && !writer.is_finished() {
        let asked = Instant::now();
        let a = a.clone();
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::task::spawn_blocking(move || a.owns(id, repo)),
        )
        .await;
        slowest = slowest.max(asked.elapsed());
        if answer.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    report(
        "cluster: longest owns() while a revocation waits for a write (ms)",
        slowest.as_millis(),
        "< 1000",
    );
    for p in 0..PARTITIONS {
        mock.partition_leader("imgs", p, Some(1)).unwrap();
    }
    let _ = writer.await;
    b.stop(Duration::from_secs(10)).await;
    a.stop(Duration::from_secs(10)).await;
    assert!(
        slowest < Duration::from_secs(1),
        "owns() waited {slowest:?} behind the rebalance"
    );
}

const SASL_PW: &str = "canary-cluster-sasl-5e7d";

/// Cluster mode hands `kafka.properties` to three more librdkafka clients (the state producer,
/// the transactional producer and the group consumer, which copies them itself). The mock
/// cluster has no SASL, so the password rides along unused (librdkafka takes it on any
/// protocol): at
/// `RUST_LOG=trace`, through joining, restoring, scanning and leaving, the SASL password must
/// never be printed.
#[tokio::test(flavor = "multi_thread")]
async fn cluster_mode_never_prints_the_kafka_secrets() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("imgs.state", PARTITIONS, 1).unwrap();
    mock.create_topic("imgs", PARTITIONS, 1).unwrap();
    let registry = Arc::new(Synthetic::default());
    registry.put("team/app", "v1", 0);
    let host = serve(registry.clone()).await;
    let setup = support::Setup::new(
        "interval = \"2s\"",
        &format!(
            "[kafka]\nbrokers = \"{}\"\ntopic = \"imgs\"\ncreate_topic = false\n[kafka.properties]\n\"sasl.username\" = \"svc\"\n\"sasl.password\" = \"{SASL_PW}\"\n\n[cluster]\ngroup = \"canary\"\nexactly_once = true\nverify_state_topic = false\nsession_timeout = \"6s\"\n\n[[registry]]\nname = \"r\"\nkind = \"oci\"\nurl = \"http://{host}\"\ninsecure = true\nrepositories = [\"team/*\"]\n",
            mock.bootstrap_servers()
        ),
    );
    let daemon = support::Daemon::start(
        std::process::Command::new(env!("CARGO_BIN_EXE_regwatch"))
            .args(["run", "-c"])
            .arg(&setup.config)
            .env("RUST_LOG", "trace"),
    );
    let ready = format!("http://{}/readyz", setup.admin);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut was_ready = false;
    while Instant::now() < deadline && !was_ready {
        tokio::time::sleep(Duration::from_millis(300)).await;
        was_ready = reqwest::get(&ready)
            .await
            .is_ok_and(|r| r.status().is_success());
    }
    registry.put("team/app", "v2", 0);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (_, out, err) = daemon.stop();
    let output = format!("{out}{err}");
    let leaks = output.matches(SASL_PW).count();
    report(
        &format!(
            "cluster mode: secret canaries in {} bytes of trace output",
            output.len()
        ),
        leaks,
        "0",
    );
    assert!(was_ready, "the replica never became ready:\n{err}");
    assert!(output.contains("cluster"), "cluster mode ran");
    assert_eq!(leaks, 0, "sasl.password printed");
    // And the transactions went through: the baseline emitted nothing, the push one event.
    assert_eq!(
        events(&mock.bootstrap_servers()),
        vec![("tag.added".into(), "team/app".into(), "v2".into())]
    );
}

/// `exactly_once`: each transaction carries the group metadata (generation) captured in the last
/// rebalance callback. After another replica joins (a cooperative rebalance in two rounds), the
/// replica that kept its remaining partitions must still commit: metadata from a round it did not
/// see would have every transaction rejected as from an old generation, and nothing recorded.
/// The mock broker never checks the generation and member id of a TxnOffsetCommit, so the
/// clients talk to it through a proxy that reads them off the wire.
#[tokio::test(flavor = "multi_thread")]
async fn exactly_once_commits_after_another_replica_joined() {
    let mock = ProxiedMock::start().await;
    mock.cluster()
        .create_topic("imgs.state", PARTITIONS, 1)
        .unwrap();
    mock.cluster().create_topic("imgs", PARTITIONS, 1).unwrap();
    // Its own client.id (the consumer's and the transactional producer's) tells each replica's
    // frames apart on the wire.
    let eos = |mock: &ProxiedMock, name: &str| {
        let (mut kafka, mut cluster) = configs(mock.bootstrap_servers());
        kafka
            .properties
            .push(("client.id".into(), name.to_owned().into()));
        cluster.exactly_once = true;
        start_with(&kafka, &cluster)
    };
    let (a, ready_a) = eos(&mock, "replica-a");
    restored(&ready_a).await;
    let (b, ready_b) = eos(&mock, "replica-b");
    restored(&ready_b).await;
    // Both own a share once the two rounds are over.
    let id = "https://r.example";
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mine, theirs) = loop {
        let repos: Vec<String> = (0..200).map(|i| format!("team/r{i}")).collect();
        let mine = repos.iter().find(|r| a.owns(id, r)).cloned();
        let theirs = repos.iter().find(|r| b.owns(id, r)).cloned();
        if let (Some(m), Some(t)) = (&mine, &theirs) {
            break (m.clone(), t.clone());
        }
        assert!(
            Instant::now() < deadline,
            "the group never split the partitions"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let commit = |s: Arc<ClusterStore>, repo: String| {
        tokio::task::spawn_blocking(move || {
            s.commit_scan(id, &repo, None, &Default::default(), &[])
        })
    };
    let kept = commit(a.clone(), mine).await.unwrap();
    let gained = commit(b.clone(), theirs).await.unwrap();
    b.stop(Duration::from_secs(10)).await;
    a.stop(Duration::from_secs(10)).await;
    report(
        "cluster exactly_once: commits after a join (kept, gained partitions)",
        format!("{} {}", kept.is_ok(), gained.is_ok()),
        "true true",
    );
    assert!(kept.is_ok(), "the replica that kept partitions: {kept:?}");
    assert!(gained.is_ok(), "the replica that joined: {gained:?}");
    // Each offset commit must carry the generation of the latest JoinGroup round before it, and
    // the member id that round gave its replica: the broker fences anything else (KIP-447).
    let seen = mock.wire.seen.lock().unwrap().clone();
    println!(
        "(api key, version) seen: {:?}",
        mock.wire.versions.lock().unwrap()
    );
    let (mut generation, mut members) = (None, HashMap::new());
    let (mut commits, mut stale) = (Vec::new(), Vec::new());
    for frame in &seen {
        match frame {
            Seen::Joined {
                client,
                generation: g,
                member,
            } => {
                generation = generation.max(Some(*g));
                members.insert(client.clone(), (*g, member.clone()));
            }
            Seen::TxnCommit {
                client,
                generation: g,
                member,
            } => {
                commits.push(client.clone());
                let current = members
                    .get(client)
                    .filter(|(mg, _)| Some(*mg) == generation);
                if Some(*g) != generation || current.is_none_or(|(_, m)| m != member) {
                    stale.push((frame.clone(), generation, current.cloned()));
                }
            }
        }
    }
    report(
        "cluster exactly_once: offset commits with a stale generation or member",
        stale.len(),
        "0",
    );
    assert!(
        stale.is_empty(),
        "offset commits with stale group metadata (commit, latest generation, the replica's member id in it): {stale:?}\nall frames: {seen:?}"
    );
    for replica in ["replica-a", "replica-b"] {
        assert!(
            commits.iter().any(|c| c == replica),
            "no TxnOffsetCommit from {replica} on the wire: {seen:?}"
        );
    }
}

/// A registry dropped from the configuration has its state forgotten (a single node forgets it
/// at reload, so that adding it back later is a config edit, with a baseline). Cluster mode kept
/// it in the state topic: added back, it was diffed against the old snapshot and everything
/// pushed while it was not watched came out as news.
#[tokio::test(flavor = "multi_thread")]
async fn a_registry_dropped_and_added_back_gets_a_baseline() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("imgs.state", PARTITIONS, 1).unwrap();
    mock.create_topic("imgs", PARTITIONS, 1).unwrap();
    let kept = Arc::new(Synthetic::default());
    kept.put("keep/app", "v1", 0);
    let dropped = Arc::new(Synthetic::default());
    dropped.put("team/app", "v1", 0);
    let (kept_host, dropped_host) = (serve(kept.clone()).await, serve(dropped.clone()).await);
    let entry = |name: &str, host: &str| {
        format!(
            "[[registry]]\nname = \"{name}\"\nkind = \"oci\"\nurl = \"http://{host}\"\ninsecure = true\n\n"
        )
    };
    let head = format!(
        "[kafka]\nbrokers = \"{}\"\ntopic = \"imgs\"\ncreate_topic = false\n\n[cluster]\ngroup = \"readd\"\nverify_state_topic = false\nsession_timeout = \"6s\"\n\n",
        mock.bootstrap_servers()
    );
    let both = format!(
        "{head}{}{}",
        entry("keep", &kept_host),
        entry("gone", &dropped_host)
    );
    let setup = support::Setup::new("interval = \"1s\"", &both);
    let text = std::fs::read_to_string(&setup.config).unwrap();
    let daemon = setup.spawn();
    let ready = format!("http://{}/readyz", setup.admin);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !reqwest::get(&ready)
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Dropped; pushed to while not watched; added back.
    std::fs::write(
        &setup.config,
        text.replace(&entry("gone", &dropped_host), ""),
    )
    .unwrap();
    support::reload(&daemon, 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    dropped.put("team/app", "v2", 0);
    dropped.put("team/app", "v1", 1);
    std::fs::write(&setup.config, &text).unwrap();
    support::reload(&daemon, 2).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (_, _, err) = daemon.stop();
    let got = events(&mock.bootstrap_servers());
    report(
        "cluster: events for a registry dropped and added back (a baseline)",
        got.len(),
        "0",
    );
    assert!(got.is_empty(), "{got:?}\n{err}");
}

/// More replicas than state partitions (the README: `cluster.partitions` is the most replicas
/// that share the work): the one assigned nothing is a standby, and must still become ready, or a
/// Kubernetes rollout waits for it forever.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_assigned_nothing_becomes_ready() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("imgs.state", PARTITIONS, 1).unwrap();
    mock.create_topic("imgs", PARTITIONS, 1).unwrap();
    let mut replicas = Vec::new();
    for _ in 0..PARTITIONS {
        replicas.push(start(&mock));
    }
    let (extra, extra_ready) = start(&mock);
    let deadline = Instant::now() + Duration::from_secs(40);
    let all_ready =
        || replicas.iter().all(|(_, r)| r.check().is_ok()) && extra_ready.check().is_ok();
    while !all_ready() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let answers: Vec<String> = replicas
        .iter()
        .map(|(_, r)| r)
        .chain([&extra_ready])
        .map(|r| format!("{:?}", r.check()))
        .collect();
    extra.stop(Duration::from_secs(10)).await;
    for (s, _) in &replicas {
        s.stop(Duration::from_secs(10)).await;
    }
    report(
        "cluster: replicas ready with one more replica than partitions",
        answers.iter().filter(|a| *a == "Ok(())").count(),
        &(PARTITIONS + 1).to_string(),
    );
    assert!(answers.iter().all(|a| a == "Ok(())"), "{answers:?}");
}

/// Every record of the state topic as (partition, key, value size; `None`: a tombstone).
fn state_records(brokers: &str) -> Vec<(i32, String, Option<usize>)> {
    state_log(brokers)
        .into_iter()
        .map(|(p, key, value)| (p, key, value.as_deref().map(<[u8]>::len)))
        .collect()
}

/// A snapshot of `n` tags of 128 characters at `revision`.
fn big_snapshot(n: usize, revision: u64) -> regwatch::watch::diff::Snapshot {
    regwatch::watch::diff::Snapshot {
        revision,
        tags: (0..n)
            .map(|i| (format!("{i:0>128}"), Some(format!("sha256:{i:064x}"))))
            .collect(),
        ..Default::default()
    }
}

/// The measured failure: a repository's whole snapshot was one record, over the broker's 1 MB
/// limit from some 5,000 tags on; its write failed every cycle and its acknowledged events were
/// published again each time. Now no state record exceeds 64 KiB, 100,000 tags of 128
/// characters are written and restored, and a change of one tag writes about one tag's bytes.
#[tokio::test(flavor = "multi_thread")]
async fn a_100_000_tag_repository_is_written_in_bounded_records_and_restored() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("imgs.state", PARTITIONS, 1).unwrap();
    mock.create_topic("imgs", PARTITIONS, 1).unwrap();
    let (id, repo) = ("https://r.example", "team/ci");
    let big = big_snapshot(100_000, 10);
    let writer = replica(&mock).await;
    let (w, snapshot) = (writer.clone(), big.clone());
    let started = Instant::now();
    let written =
        tokio::task::spawn_blocking(move || w.commit_scan(id, repo, None, &snapshot, &[]))
            .await
            .unwrap();
    let write_took = started.elapsed();
    assert!(written.is_ok(), "{written:?}");
    let before = state_records(&mock.bootstrap_servers());
    let size = |(_, k, v): &(i32, String, Option<usize>)| k.len() + v.unwrap_or(0);
    let largest = before.iter().map(size).max().unwrap();
    // One tag moves: only its record and the header are written.
    let mut next = big.clone();
    next.revision = 11;
    next.tags
        .insert(format!("{:0>128}", 77), Some("sha256:moved".into()));
    let (w, n) = (writer.clone(), next.clone());
    let changed = tokio::task::spawn_blocking(move || w.commit_scan(id, repo, Some(10), &n, &[]))
        .await
        .unwrap();
    assert!(changed.is_ok(), "{changed:?}");
    let after = state_records(&mock.bootstrap_servers());
    let change_bytes: usize = after[before.len()..].iter().map(size).sum();
    writer.stop(Duration::from_secs(10)).await;
    let started = Instant::now();
    let reader = replica(&mock).await;
    let restore_took = started.elapsed();
    let restored = reader.repo_state(id, repo);
    reader.stop(Duration::from_secs(10)).await;
    report(
        "cluster: largest state record for 100,000 tags of 128 characters (bytes)",
        largest,
        "<= 65536",
    );
    report(
        "cluster: bytes written for a change of 1 tag in 100,000",
        change_bytes,
        "< 1024",
    );
    report(
        "cluster: 100,000-tag repository written, restored (s)",
        format!(
            "{:.1}, {:.1}",
            write_took.as_secs_f64(),
            restore_took.as_secs_f64()
        ),
        "both work",
    );
    assert!(largest <= 65_536, "{largest} bytes");
    assert!(change_bytes < 1024, "{change_bytes} bytes for one tag");
    match restored {
        Ok(Some(regwatch::store::RepoState::Known(s))) => {
            assert!(s == next, "restored a different snapshot")
        }
        other => panic!("restored {:?}", other.map(|s| s.is_some())),
    }
}

/// A write the broker refuses for good (not authorised) is an error that stops the replica,
/// counted and shown, not a "try again next cycle" that publishes the same events each time.
#[tokio::test(flavor = "multi_thread")]
async fn a_write_the_broker_refuses_for_good_is_an_error_not_a_retry() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("imgs.state", PARTITIONS, 1).unwrap();
    mock.create_topic("imgs", PARTITIONS, 1).unwrap();
    let (id, repo) = ("https://r.example", "team/app");
    let (store, readiness) = start(&mock);
    restored(&readiness).await;
    mock.request_errors(
        rdkafka::types::RDKafkaApiKey::Produce,
        &[rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 20],
    );
    let s = store.clone();
    let answer = tokio::task::spawn_blocking(move || {
        s.commit_scan(id, repo, None, &big_snapshot(3, 1), &[])
    })
    .await
    .unwrap();
    let shown = readiness.check();
    store.stop(Duration::from_secs(10)).await;
    report(
        "cluster: a state write refused for good (TopicAuthorizationFailed)",
        match &answer {
            Err(e) if !e.is_transient() => "an error",
            Err(_) => "retried next cycle",
            Ok(()) => "written",
        },
        "an error",
    );
    let e = answer.expect_err("not written");
    assert!(!e.is_transient(), "{e}: retried every cycle");
    let why = shown.expect_err("/readyz must show it");
    assert!(why.contains("refused"), "{why}");
}

/// A `commit_transaction` that times out is retriable: librdkafka keeps the commit in progress,
/// so aborting it, or beginning the next transaction, answers `__CONFLICT`, for good. The replica
/// stayed ready and published nothing. The EndTxn requests fail here for longer than a step may
/// take (a session), then recover: the write in flight and the next one must both land.
#[tokio::test(flavor = "multi_thread")]
async fn an_end_txn_that_times_out_is_resumed_and_the_next_write_lands() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("imgs.state", PARTITIONS, 1).unwrap();
    mock.create_topic("imgs", PARTITIONS, 1).unwrap();
    let (kafka, mut cluster) = configs(mock.bootstrap_servers());
    cluster.exactly_once = true;
    let (store, readiness) = start_with(&kafka, &cluster);
    restored(&readiness).await;
    let (id, repo) = ("https://r.example", "team/app");
    // NOT_COORDINATOR is retried by librdkafka (after a coordinator lookup) until the step's
    // timeout: 400 of them outlast the 6 s session.
    mock.request_errors(
        RDKafkaApiKey::EndTxn,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_COORDINATOR; 400],
    );
    let s = store.clone();
    let stalled = tokio::task::spawn_blocking(move || {
        s.commit_scan(id, repo, None, &big_snapshot(2, 1), &[])
    });
    tokio::time::sleep(Duration::from_secs(9)).await;
    mock.clear_request_errors(RDKafkaApiKey::EndTxn);
    let stalled = stalled.await.unwrap();
    let s = store.clone();
    let next = tokio::task::spawn_blocking(move || {
        let base = match s.repo_state(id, repo) {
            Ok(Some(regwatch::store::RepoState::Known(k))) => Some(k.revision),
            _ => None,
        };
        let revision = base.map_or(1, |b| b + 1);
        s.commit_scan(id, repo, base, &big_snapshot(3, revision), &[])
            .map(|()| revision)
    })
    .await
    .unwrap();
    store.stop(Duration::from_secs(10)).await;
    report(
        "cluster exactly_once: EndTxn failing past its timeout, then recovering (stalled write, next write)",
        format!("{}, {}", stalled.is_ok(), next.is_ok()),
        "either, true",
    );
    assert!(
        next.is_ok(),
        "the write after the stall: {next:?} (stalled: {stalled:?})"
    );
}

/// A hint is a record in the compacted state topic: once its owner has handled it, it is
/// tombstoned, so that hints do not pile up in the topic (and in every restore) for good.
#[tokio::test(flavor = "multi_thread")]
async fn a_handled_hint_is_tombstoned() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("imgs.state", PARTITIONS, 1).unwrap();
    mock.create_topic("imgs", PARTITIONS, 1).unwrap();
    let (id, repo) = ("https://r.example", "team/app");
    let store = replica(&mock).await;
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    store.route_hints(id, tx);
    let s = store.clone();
    tokio::task::spawn_blocking(move || s.forward_hint(id, repo))
        .await
        .unwrap()
        .expect("hint sent");
    let routed = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    store.stop(Duration::from_secs(10)).await;
    assert_eq!(
        routed.ok().flatten().as_deref(),
        Some(repo),
        "the hint reached its owner"
    );
    let hint_key = serde_json::to_string(&("hint", id, repo)).unwrap();
    let last = state_records(&mock.bootstrap_servers())
        .into_iter()
        .filter(|(_, k, _)| *k == hint_key)
        .map(|(_, _, v)| v)
        .collect::<Vec<_>>();
    report(
        "cluster: the hint key's records after it was handled (value sizes; None = tombstone)",
        format!("{last:?}"),
        "the last is None",
    );
    assert_eq!(last.last(), Some(&None), "{last:?}");
}

/// Partitions added to the state topic move most keys to another partition than their records.
/// A replica started after that learns the new count at start, and if the group gives it only
/// partitions without misplaced records it found nothing wrong, became ready and took the
/// repositories of its partitions for first-seen. The count each partition was written with is
/// recorded (in the group's committed offsets) and checked at every assignment, so every replica
/// refuses.
#[tokio::test(flavor = "multi_thread")]
async fn every_replica_refuses_a_state_topic_whose_partitions_were_added() {
    use rdkafka::consumer::CommitMode;
    let mock = MockCluster::new(1).unwrap();
    // Written with 4 partitions; the topic has 8 now.
    mock.create_topic("imgs.state", 8, 1).unwrap();
    mock.create_topic("imgs", PARTITIONS, 1).unwrap();
    let id = "https://r.example";
    let repo = (0..1000)
        .map(|i| format!("team/app{i}"))
        .find(|r| {
            let h = fnv(&serde_json::to_string(&("repo", id, r)).unwrap());
            h.is_multiple_of(4) && !h.is_multiple_of(8)
        })
        .unwrap();
    let key = serde_json::to_string(&("repo", id, &repo)).unwrap();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", mock.bootstrap_servers())
        .create()
        .unwrap();
    producer
        .send(
            BaseRecord::to("imgs.state")
                .key(&key)
                .payload("P\u{0}")
                .partition(0),
        )
        .map_err(|(e, _)| e)
        .unwrap();
    producer.flush(Duration::from_secs(10)).unwrap();
    // What the replicas that wrote it recorded for partition 0.
    let (_, cluster) = configs(mock.bootstrap_servers());
    let committer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", mock.bootstrap_servers())
        .set("group.id", &cluster.group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut recorded = rdkafka::TopicPartitionList::new();
    recorded
        .add_partition_offset("imgs.state", 0, rdkafka::Offset::Offset(0))
        .unwrap();
    recorded
        .find_partition("imgs.state", 0)
        .unwrap()
        .set_metadata(r#"{"state_partitions":4}"#);
    committer.commit(&recorded, CommitMode::Sync).unwrap();
    drop(committer);

    let (a, ready_a) = start(&mock);
    let (b, ready_b) = start(&mock);
    let settled = |r: &Readiness| match r.check() {
        Ok(()) => true,
        Err(why) => why.contains("partition count"),
    };
    let deadline = Instant::now() + Duration::from_secs(40);
    while !(settled(&ready_a) && settled(&ready_b)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Both must have joined and been assigned their share (not merely not ready yet).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let answers = [ready_a.check(), ready_b.check()];
    a.stop(Duration::from_secs(10)).await;
    b.stop(Duration::from_secs(10)).await;
    report(
        "cluster: replicas refusing a state topic whose partitions were added (of 2)",
        answers.iter().filter(|a| a.is_err()).count(),
        "2",
    );
    for answer in &answers {
        let why = answer.as_ref().expect_err("a replica became ready");
        assert!(why.contains("partition count"), "{why}");
    }
}

/// A replica paused past its session (SIGSTOP, a long stall) can land a state write after its
/// partition's new owner wrote: its records come last in the compacted topic, and the next
/// restore read them as the state, so a change was detected again under a new id. Here the late
/// write is a copy of the owner's own earlier write, produced by another client (as a zombie's
/// would be): the owner, which reads its partitions continuously, writes its state over it, and
/// a later restore reads the newest state.
#[tokio::test(flavor = "multi_thread")]
async fn a_zombies_late_write_is_written_over_by_the_owner() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("imgs.state", PARTITIONS, 1).unwrap();
    mock.create_topic("imgs", PARTITIONS, 1).unwrap();
    let (id, repo) = ("https://r.example", "team/app");
    let owner = replica(&mock).await;
    let mut first = big_snapshot(3, 1);
    let s = owner.clone();
    let f = first.clone();
    tokio::task::spawn_blocking(move || s.commit_scan(id, repo, None, &f, &[]))
        .await
        .unwrap()
        .unwrap();
    let first_write = state_log(&mock.bootstrap_servers());
    first.revision = 2;
    let tag = format!("{:0>128}", 1);
    first.tags.insert(tag.clone(), Some("sha256:moved".into()));
    let (s, next) = (owner.clone(), first.clone());
    tokio::task::spawn_blocking(move || s.commit_scan(id, repo, Some(1), &next, &[]))
        .await
        .unwrap()
        .unwrap();
    // The zombie's late write: the first revision again, after the second.
    let zombie: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", mock.bootstrap_servers())
        .create()
        .unwrap();
    for (p, key, value) in &first_write {
        let mut record = BaseRecord::<String, Vec<u8>>::to("imgs.state")
            .key(key)
            .partition(*p);
        if let Some(v) = value {
            record = record.payload(v);
        }
        zombie.send(record).map_err(|(e, _)| e).unwrap();
    }
    zombie.flush(Duration::from_secs(10)).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Copies of what the owner holds now, without its writer header (as a proxy that drops
    // headers would hand back its own records): nothing to write over, so nothing is written.
    let log = state_log(&mock.bootstrap_servers());
    let mut latest = std::collections::BTreeMap::new();
    for (p, key, value) in &log {
        latest.insert(key.clone(), (*p, value.clone()));
    }
    for (key, (p, value)) in &latest {
        let mut record = BaseRecord::<String, Vec<u8>>::to("imgs.state")
            .key(key)
            .partition(*p);
        if let Some(v) = value {
            record = record.payload(v);
        }
        zombie.send(record).map_err(|(e, _)| e).unwrap();
    }
    zombie.flush(Duration::from_secs(10)).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rewritten = state_log(&mock.bootstrap_servers()).len() - log.len() - latest.len();
    owner.stop(Duration::from_secs(10)).await;
    report(
        "cluster: records written over copies of the owner's own state (headers dropped)",
        rewritten,
        "0",
    );
    assert_eq!(
        rewritten, 0,
        "copies of the owner's own state were written over"
    );
    let next_owner = replica(&mock).await;
    let restored = next_owner.repo_state(id, repo);
    next_owner.stop(Duration::from_secs(10)).await;
    let revision = match &restored {
        Ok(Some(regwatch::store::RepoState::Known(s))) => Some((s.revision, s.tags[&tag].clone())),
        _ => None,
    };
    report(
        "cluster: revision restored after a zombie's late write of revision 1 over revision 2",
        format!("{revision:?}"),
        "Some((2, Some(\"sha256:moved\")))",
    );
    assert_eq!(
        revision,
        Some((2, Some("sha256:moved".to_owned()))),
        "{restored:?}"
    );
}

/// Every record of the state topic as (partition, key, value), in each partition's order.
fn state_log(brokers: &str) -> Vec<(i32, String, Option<Vec<u8>>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "review-state-log")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let mut all = rdkafka::TopicPartitionList::new();
    for p in 0..PARTITIONS {
        all.add_partition_offset("imgs.state", p, rdkafka::Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&all).unwrap();
    let (mut out, mut ended) = (Vec::new(), std::collections::BTreeSet::new());
    let deadline = Instant::now() + Duration::from_secs(60);
    while ended.len() < PARTITIONS as usize && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => out.push((
                m.partition(),
                String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                m.payload().map(<[u8]>::to_vec),
            )),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                ended.insert(p);
            }
            _ => {}
        }
    }
    out
}

/// A write of more records than librdkafka's queue holds (`queue.buffering.max.messages`, 100,000
/// by default; 1,000 here) failed with QueueFull on every attempt: the repository could never be
/// recorded, and its events went out again each cycle. It drains as it goes.
#[tokio::test(flavor = "multi_thread")]
async fn a_write_bigger_than_the_producer_queue_lands() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("imgs.state", PARTITIONS, 1).unwrap();
    mock.create_topic("imgs", PARTITIONS, 1).unwrap();
    let (mut kafka, cluster) = configs(mock.bootstrap_servers());
    kafka.properties.push((
        "queue.buffering.max.messages".into(),
        "1000".to_owned().into(),
    ));
    let (store, readiness) = start_with(&kafka, &cluster);
    restored(&readiness).await;
    let s = store.clone();
    let written = tokio::task::spawn_blocking(move || {
        s.commit_scan(
            "https://r.example",
            "team/ci",
            None,
            &big_snapshot(5_000, 1),
            &[],
        )
    })
    .await
    .unwrap();
    store.stop(Duration::from_secs(10)).await;
    report(
        "cluster: a 5,000-record write through a producer queue of 1,000",
        if written.is_ok() { "written" } else { "failed" },
        "written",
    );
    assert!(written.is_ok(), "{written:?}");
}

/// At-least-once: a scan's events are acknowledged, then its state write fails. The events are
/// out, so the replica holds the state that published them: a tag that moves back before the
/// next write is then a change (held at the old state, the move back diffed as nothing and was
/// lost), and the next write stores the whole repository again, which a restore reads.
#[tokio::test(flavor = "multi_thread")]
async fn a_state_write_that_fails_after_its_events_went_out_keeps_the_published_state() {
    use rdkafka::mocking::MockCoordinator;
    use regwatch::store::RepoState;
    // Events on broker 1, state on broker 2, the group's coordinator on 1.
    let mock = MockCluster::new(2).unwrap();
    mock.create_topic("imgs.state", PARTITIONS, 1).unwrap();
    mock.create_topic("imgs", PARTITIONS, 1).unwrap();
    for p in 0..PARTITIONS {
        mock.partition_leader("imgs.state", p, Some(2)).unwrap();
        mock.partition_leader("imgs", p, Some(1)).unwrap();
    }
    let (mut kafka, cluster) = configs(mock.bootstrap_servers());
    mock.coordinator(MockCoordinator::Group(cluster.group.clone()), 1)
        .unwrap();
    kafka
        .properties
        .push(("message.timeout.ms".into(), "3000".to_owned().into()));
    let (store, readiness) = start_with(&kafka, &cluster);
    restored(&readiness).await;
    let (id, repo) = ("https://r.example", "team/app");
    let commit = |base: Option<u64>, snapshot: regwatch::watch::diff::Snapshot, events: usize| {
        let s = store.clone();
        let events: Vec<regwatch::event::Event> = (0..events)
            .map(|i| regwatch::event::Event {
                id: format!("ev-{}-{i}", snapshot.revision),
                key: format!("r.example/{repo}"),
                payload: "{}".into(),
            })
            .collect();
        tokio::task::spawn_blocking(move || s.commit_scan(id, repo, base, &snapshot, &events))
    };
    commit(None, big_snapshot(3, 1), 0).await.unwrap().unwrap();
    mock.broker_down(2).unwrap();
    let mut moved = big_snapshot(3, 2);
    moved
        .tags
        .insert(format!("{:0>128}", 0), Some("sha256:moved".into()));
    let failed = commit(Some(1), moved.clone(), 1).await.unwrap();
    assert!(failed.is_err(), "the state broker is down: {failed:?}");
    mock.broker_up(2).unwrap();
    let held = store.repo_state(id, repo);
    let held_revision = match &held {
        Ok(Some(RepoState::Known(s))) => Some(s.revision),
        _ => None,
    };
    // The next scan diffs against what was published, and its write stores all of it.
    let mut back = moved.clone();
    back.revision = 3;
    back.tags
        .insert(format!("{:0>128}", 0), Some(format!("sha256:{:064x}", 0)));
    let next = commit(held_revision, back.clone(), 1).await.unwrap();
    store.stop(Duration::from_secs(10)).await;
    let reader = replica(&mock).await;
    let restored = reader.repo_state(id, repo);
    reader.stop(Duration::from_secs(10)).await;
    report(
        "cluster: revision held after a state write failed once its events were out",
        format!("{held_revision:?}"),
        "Some(2)",
    );
    assert_eq!(held_revision, Some(2), "{held:?}");
    assert!(next.is_ok(), "{next:?}");
    assert!(
        matches!(&restored, Ok(Some(RepoState::Known(s))) if *s == back),
        "{restored:?}"
    );
}

/// A rolling rollout that adds registry `x` and widens `r`'s `repositories`: while it runs, a
/// replica with the old config can restore partitions holding state of `x` and of `extra/*`,
/// which its config does not know. It erased them (as "no longer configured" and "departed"), so
/// the new replicas took a fresh baseline and missed what was pushed meanwhile. A replica
/// forgets only what it stopped watching itself (a reload that removed it); what it does not
/// know, it leaves alone.
#[tokio::test(flavor = "multi_thread")]
async fn an_old_config_replica_erases_nothing_it_does_not_know() {
    old_config_keeps_newer_state(false).await;
}

/// The same rollout rolled back: the old config starts once the new one has left, so its first
/// scan cycle, with no listing of its own yet to compare with, already holds `extra/*`'s state.
/// Taken for departed repositories (held, not selected by its patterns), it was erased.
#[tokio::test(flavor = "multi_thread")]
async fn an_old_config_replica_started_after_a_newer_one_erases_nothing() {
    old_config_keeps_newer_state(true).await;
}

/// Runs the rollout of [`an_old_config_replica_erases_nothing_it_does_not_know`]; with
/// `after_new_left`, the old-config replica starts only once the new one has left.
async fn old_config_keeps_newer_state(after_new_left: bool) {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("imgs.state", PARTITIONS, 1).unwrap();
    mock.create_topic("imgs", PARTITIONS, 1).unwrap();
    let r = Arc::new(Synthetic::default());
    r.put("team/app", "v1", 0);
    // Several, so that some land in the partitions the old-config replica is given on joining.
    let extras: Vec<String> = (0..8).map(|i| format!("extra/app{i}")).collect();
    for e in &extras {
        r.put(e, "v1", 0);
    }
    let x = Arc::new(Synthetic::default());
    x.put("svc/app", "v1", 0);
    let (r_host, x_host) = (serve(r.clone()).await, serve(x.clone()).await);
    // The old config's scans are slow (its only repository's listing stalls), so that a restore
    // lands during one: ownership that changes mid-cycle leaves the replica without a listing of
    // its own to compare the next one with.
    let (wire, r_host) = support::proxy::start(&format!("http://{r_host}")).await;
    let entry = |name: &str, host: &str, repos: &str| {
        format!(
            "[[registry]]\nname = \"{name}\"\nkind = \"oci\"\nurl = \"http://{host}\"\ninsecure = true\nrepositories = [{repos}]\n\n"
        )
    };
    let head = format!(
        "[kafka]\nbrokers = \"{}\"\ntopic = \"imgs\"\ncreate_topic = false\n\n[cluster]\ngroup = \"rollout\"\nverify_state_topic = false\nsession_timeout = \"6s\"\n\n",
        mock.bootstrap_servers()
    );
    let new = format!(
        "{head}{}{}",
        entry("r", &r_host, "\"team/*\", \"extra/*\""),
        entry("x", &x_host, "\"svc/*\"")
    );
    let old = format!("{head}{}", entry("r", &r_host, "\"team/*\""));
    // The new config baselines everything; a replica with the old config joins; the new one
    // leaves, so the old one holds every partition.
    let n = support::Setup::new("interval = \"1s\"", &new);
    let dn = n.spawn();
    support::wait_ready(&n.admin).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let o = support::Setup::new("interval = \"1s\"", &old);
    *wire.path_fault.lock().unwrap() = Some((
        "team/app/tags/list".into(),
        support::proxy::Fault::Stall(Duration::from_secs(4)),
    ));
    let (d_old, n_err) = if after_new_left {
        let (_, _, n_err) = dn.stop();
        let d_old = o.spawn();
        support::wait_ready(&o.admin).await;
        (d_old, n_err)
    } else {
        let d_old = o.spawn();
        support::wait_ready(&o.admin).await;
        let (_, _, n_err) = dn.stop();
        (d_old, n_err)
    };
    // Two of its cycles at least: one during which the partitions came, and a complete one.
    tokio::time::sleep(Duration::from_secs(12)).await;
    // Pushed while only the old config runs (it watches neither).
    for e in &extras {
        r.put(e, "v2", 1);
    }
    x.put("svc/app", "v2", 1);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, _, o_err) = d_old.stop();
    *wire.path_fault.lock().unwrap() = None;
    // The rollout completes: a new-config replica takes over and reports both pushes.
    let n2 = support::Setup::new("interval = \"1s\"", &new);
    let dn2 = n2.spawn();
    support::wait_ready(&n2.admin).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (_, _, n2_err) = dn2.stop();
    let got = events(&mock.bootstrap_servers());
    let reported = |repo: &str| got.iter().any(|(_, r, t)| r == repo && t == "v2");
    let extras_reported = extras.iter().filter(|e| reported(e)).count();
    // v1 was in every baseline: an event for it is state forgotten and taken for news.
    let again: Vec<_> = got.iter().filter(|(_, _, t)| t == "v1").collect();
    report(
        &format!(
            "cluster rollout{}: pushes to state an old-config replica held (extra/app0..7, svc/app) reported",
            if after_new_left {
                ", old config started after the new left"
            } else {
                ""
            }
        ),
        format!("{extras_reported} / {}", reported("svc/app")),
        "8 / true",
    );
    assert!(
        extras_reported == extras.len() && reported("svc/app") && again.is_empty(),
        "{got:?}\n--- new\n{n_err}\n--- old\n{o_err}\n--- new again\n{n2_err}"
    );
}
