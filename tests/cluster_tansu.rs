//! Cluster mode (issue 10) on Tansu, which handles joins and graceful leaves (but never evicts a
//! member killed with SIGKILL: failover is in cluster_mock.rs): replicas of `regwatch run` in one
//! consumer group, a real `docker-registry` behind a proxy that attributes each request to the
//! replica that sent it, and the events read back with rdkafka.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use support::cluster::{
    Attributing, Opts, Tail, assert_exactly_once, assert_silent_baseline, metric_sum, push_all,
    replica, seeded_registry, start_replica, start_replica_logging, stderrs, topic_partitions,
    wait_settled,
};
use support::{Auth, Registry, Setup, Tansu, report};

/// The tests here start brokers, registries and several daemons each, and two of them measure
/// timings: they run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const TOPIC: &str = "regwatch.images";
const TOKEN: &str = "cluster-hint-token-5b1e";
/// `cluster.partitions`: the state topic regwatch creates on Tansu.
const PARTITIONS: usize = 6;
const SETTLE: Duration = Duration::from_secs(45);

/// A registry holding `v0` in each of `n` repositories, the attributing proxy in front of it, and
/// the shared replica options (`interval`, consumer group `group`).
async fn world(
    tansu: &Tansu,
    n: usize,
    interval: &str,
    group: &str,
) -> (Registry, std::sync::Arc<Attributing>, Opts, Vec<String>) {
    let (registry, proxy, url, repos) = seeded_registry(n).await;
    let opts = Opts {
        brokers: tansu.brokers.clone(),
        topic: TOPIC.into(),
        registry_url: url,
        interval: interval.into(),
        kafka_extra: String::new(),
        properties: String::new(),
        cluster: format!(
            "group = \"{group}\"\nsession_timeout = \"10s\"\npartitions = {PARTITIONS}\n"
        ),
        token: TOKEN.into(),
    };
    (registry, proxy, opts, repos)
}

fn proxy_host(opts: &Opts) -> String {
    opts.registry_url.trim_start_matches("http://").to_owned()
}

/// Two replicas of `opts` with fresh `state_dir`s, started and settled over the state partitions,
/// and a read_committed tail of the events topic: (a, its daemon, b, its daemon, tail).
async fn two_settled(
    tansu: &Tansu,
    proxy: &Attributing,
    opts: &Opts,
) -> (Setup, support::Daemon, Setup, support::Daemon, Tail) {
    let a = replica(opts, true);
    let da = start_replica(proxy, &a).await;
    let b = replica(opts, true);
    let db = start_replica(proxy, &b).await;
    wait_settled(&[&a.admin, &b.admin], PARTITIONS, SETTLE).await;
    let tail = Tail::new(&tansu.brokers, TOPIC, "read_committed");
    (a, da, b, db, tail)
}

/// Join, restore and rolling restart: two replicas baseline a populated registry silently, deliver
/// each new tag exactly once between them, re-emit nothing when each is replaced in turn by one
/// with an empty (or no) `state_dir`, and keep delivering afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn rolling_restart_with_empty_state_dirs_re_emits_nothing() {
    let _serial = SERIAL.lock().await;
    let tansu = Tansu::start();
    let (registry, proxy, opts, repos) = world(&tansu, 12, "2s", "rw-rolling").await;
    let host = proxy_host(&opts);

    let a = replica(&opts, true);
    let da = start_replica(&proxy, &a).await;
    // kafka.create_topic defaults to true: the events topic exists once a replica is ready, so
    // consumers can subscribe before the first event.
    let events_partitions = topic_partitions(&tansu.brokers, TOPIC, Duration::from_secs(5));
    assert_eq!(
        events_partitions,
        3,
        "kafka.topic {TOPIC} (kafka.partitions = 3, create_topic defaulting to true) after the first replica is ready\n{}",
        stderrs(&[&da])
    );
    let b = replica(&opts, true);
    let db = start_replica(&proxy, &b).await;
    let took = wait_settled(&[&a.admin, &b.admin], PARTITIONS, SETTLE).await;
    report(
        "cluster (Tansu): second replica joined, partitions split",
        format!("{:.1} s", took.as_secs_f64()),
        "< 45 s",
    );

    // Baseline: the registry's existing tags publish nothing.
    let mut tail = Tail::new(&tansu.brokers, TOPIC, "read_committed");
    tail.drain_for(Duration::from_secs(6));
    assert_silent_baseline(&tail, || stderrs(&[&da, &db]));

    let mut pushed = push_all(&registry, &repos, "v1").await;
    tail.wait_for_tags(&pushed, Duration::from_secs(45), || stderrs(&[&da, &db]));
    tail.drain_for(Duration::from_secs(3));
    assert_exactly_once(&tail.events, &pushed, &host);

    let records = metric_sum(&a.admin, "regwatch_cluster_state_records_total")
        .await
        .unwrap_or(0.0)
        + metric_sum(&b.admin, "regwatch_cluster_state_records_total")
            .await
            .unwrap_or(0.0);
    assert!(
        records >= 1.0,
        "regwatch_cluster_state_records_total is {records} after 12 detections"
    );

    // Rolling restart: a gets a new, empty state_dir; b none at all.
    let (code, _, err) = da.stop();
    assert_eq!(code, 0, "SIGTERM exits 0: {err}");
    let a2 = replica(&opts, true);
    let da2 = start_replica(&proxy, &a2).await;
    wait_settled(&[&a2.admin, &b.admin], PARTITIONS, SETTLE).await;
    let (code, _, err) = db.stop();
    assert_eq!(code, 0, "SIGTERM exits 0: {err}");
    let b2 = replica(&opts, false);
    let db2 = start_replica(&proxy, &b2).await;
    let took = wait_settled(&[&a2.admin, &b2.admin], PARTITIONS, SETTLE).await;
    report(
        "cluster (Tansu): replica with no state_dir restored and joined",
        format!("{:.1} s", took.as_secs_f64()),
        "< 45 s",
    );
    let restore = metric_sum(&b2.admin, "regwatch_cluster_restore_seconds").await;
    // The gauge is exported from the start, at 0: a restore that set it took some time.
    assert!(
        restore.is_some_and(|s| s > 0.0),
        "regwatch_cluster_restore_seconds never set on a restored replica: {restore:?}"
    );
    report(
        "cluster (Tansu): restore of the assigned state partitions (12 repositories)",
        format!("{:.3} s", restore.unwrap()),
        "< 5 s",
    );
    for admin in [&a2.admin, &b2.admin] {
        let rebalances = metric_sum(admin, "regwatch_cluster_rebalances_total")
            .await
            .unwrap_or(0.0);
        assert!(
            rebalances >= 1.0,
            "regwatch_cluster_rebalances_total = {rebalances} on a replica that was assigned partitions"
        );
    }
    // Three intervals with every repository rescanned by its new owner: nothing new.
    tail.drain_for(Duration::from_secs(6));
    assert_eq!(
        tail.events.len(),
        pushed.len(),
        "the rolling restart re-emitted: {:?}\n{}",
        &tail.events[pushed.len().min(tail.events.len())..],
        stderrs(&[&da2, &db2])
    );
    // Each replica's gauges are read one after the other: a rebalance in between (a session
    // late under load) can count a partition on both sides for a moment. The sum must settle.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    loop {
        let mut owned = Vec::new();
        for admin in [&a2.admin, &b2.admin] {
            owned.push((
                metric_sum(admin, "regwatch_cluster_owned_repositories").await,
                metric_sum(admin, "regwatch_cluster_owned_partitions").await,
            ));
        }
        let sum: f64 = owned.iter().map(|(r, _)| r.unwrap_or(0.0)).sum();
        if sum == repos.len() as f64 {
            break;
        }
        seen.push(owned);
        assert!(
            Instant::now() < deadline,
            "regwatch_cluster_owned_repositories summed over the replicas never came to {}: (repositories, partitions) per replica over 20 s: {seen:?}\n{}",
            repos.len(),
            stderrs(&[&da2, &db2])
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // And the restarted cluster still delivers.
    pushed.extend(push_all(&registry, &repos, "v2").await);
    tail.wait_for_tags(&pushed, Duration::from_secs(45), || stderrs(&[&da2, &db2]));
    tail.drain_for(Duration::from_secs(3));
    assert_exactly_once(&tail.events, &pushed, &host);
    report(
        "cluster (Tansu): rolling restart of 2 replicas with empty state_dir: events re-emitted",
        0,
        "0",
    );
}

/// A replica that leaves (SIGTERM) hands its repositories to the survivor, which delivers the
/// tags pushed to them afterwards, each once.
#[tokio::test(flavor = "multi_thread")]
async fn graceful_leave_hands_the_share_to_the_survivor() {
    let _serial = SERIAL.lock().await;
    let tansu = Tansu::start();
    let (registry, proxy, opts, repos) = world(&tansu, 12, "2s", "rw-leave").await;
    let host = proxy_host(&opts);
    let (a, da, _b, db, mut tail) = two_settled(&tansu, &proxy, &opts).await;
    // Two intervals: every repository is listed by its current owner.
    tail.drain_for(Duration::from_secs(5));
    assert_silent_baseline(&tail, || stderrs(&[&da, &db]));

    let owners = proxy.last_lister(Instant::now());
    let b_repos: Vec<&String> = repos
        .iter()
        .filter(|r| owners.get(*r) == Some(&db.pid()))
        .collect();
    assert!(
        !b_repos.is_empty(),
        "replica b listed none of the repositories (owners {owners:?})"
    );

    let leaving = Instant::now();
    let (code, _, err) = db.stop();
    assert_eq!(code, 0, "SIGTERM exits 0: {err}");
    let pushed = push_all(&registry, &repos, "v1").await;
    tail.wait_for_tags(&pushed, Duration::from_secs(45), || stderrs(&[&da]));
    tail.drain_for(Duration::from_secs(3));
    assert_exactly_once(&tail.events, &pushed, &host);
    let handover = b_repos
        .iter()
        .map(|r| {
            let (pid, at) = proxy
                .first_list_after(r, leaving)
                .unwrap_or_else(|| panic!("{r} never listed after b left"));
            assert_eq!(
                pid,
                Some(da.pid()),
                "{r} listed by someone else than the survivor"
            );
            at - leaving
        })
        .max()
        .unwrap();
    report(
        &format!(
            "cluster (Tansu): graceful leave, survivor lists all {} of the leaver's repositories",
            b_repos.len()
        ),
        format!("{:.1} s", handover.as_secs_f64()),
        "< session_timeout + 1 interval (12 s)",
    );
    let owned = metric_sum(&a.admin, "regwatch_cluster_owned_partitions").await;
    assert_eq!(
        owned,
        Some(PARTITIONS as f64),
        "the survivor owns every partition"
    );
}

/// A webhook hint reaches the owner of its repository whichever replica receives it: with a
/// 300 s interval, only the hint explains a scan. Every repository is hinted once through each
/// replica; the same replica must scan it both times, within 3 s of the hint.
#[tokio::test(flavor = "multi_thread")]
async fn a_hint_to_any_replica_is_scanned_by_the_owner_within_3s() {
    let _serial = SERIAL.lock().await;
    let tansu = Tansu::start();
    let (registry, proxy, opts, repos) = world(&tansu, 12, "300s", "rw-hints").await;
    let host = proxy_host(&opts);
    let (a, da, b, db, mut tail) = two_settled(&tansu, &proxy, &opts).await;
    tail.drain_for(Duration::from_secs(2));
    assert_silent_baseline(&tail, || stderrs(&[&da, &db]));

    let client = reqwest::Client::new();
    let mut pushed = BTreeMap::new();
    let mut scanned_by: Vec<HashMap<String, Option<u32>>> = Vec::new();
    let mut worst = Duration::ZERO;
    for (round, receiver) in [&a, &b].into_iter().enumerate() {
        let tag = format!("hinted-{round}");
        let now_pushed = push_all(&registry, &repos, &tag).await;
        pushed.extend(now_pushed.clone());
        let mut hinted_at = HashMap::new();
        for repo in &repos {
            let body = serde_json::json!({"events": [
                {"action": "push", "target": {"repository": repo, "tag": tag}}
            ]});
            hinted_at.insert(repo.clone(), Instant::now());
            let status = client
                .post(format!("http://{}/hooks/local", receiver.admin))
                .bearer_auth(TOKEN)
                .body(body.to_string())
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(status, 202, "hint for {repo}");
        }
        tail.wait_for_tags(&now_pushed, Duration::from_secs(10), || {
            stderrs(&[&da, &db])
        });
        let mut by = HashMap::new();
        for repo in &repos {
            let e = tail
                .events
                .iter()
                .find(|e| &e.repo == repo && e.tag == tag)
                .unwrap();
            let latency = e.at - hinted_at[repo];
            worst = worst.max(latency);
            assert!(
                latency <= Duration::from_secs(3),
                "{repo}:{tag} delivered {latency:?} after the hint to {}",
                receiver.admin
            );
            let (pid, _) = proxy
                .first_list_after(repo, hinted_at[repo])
                .expect("a hinted repository is listed");
            by.insert(repo.clone(), pid);
        }
        scanned_by.push(by);
    }
    tail.drain_for(Duration::from_secs(2));
    assert_exactly_once(&tail.events, &pushed, &host);
    report(
        "cluster (Tansu): webhook hint to any replica to event on Kafka, worst of 24",
        format!("{:.2} s", worst.as_secs_f64()),
        "<= 3 s",
    );
    for repo in &repos {
        assert_eq!(
            scanned_by[0][repo],
            scanned_by[1][repo],
            "{repo} was scanned by the replica that received the hint, not by its owner \
             (hint via a: {:?}, via b: {:?}; a = {}, b = {})",
            scanned_by[0][repo],
            scanned_by[1][repo],
            da.pid(),
            db.pid()
        );
    }
    let owners: HashSet<Option<u32>> = scanned_by[0].values().copied().collect();
    assert_eq!(
        owners,
        HashSet::from([Some(da.pid()), Some(db.pid())]),
        "both replicas own repositories, so each round sent hints to a non-owner"
    );
}

/// `[cluster]` needs `[kafka]`: without it the config is refused (exit 2) naming `cluster`; with
/// it the same config is accepted.
#[tokio::test(flavor = "multi_thread")]
async fn cluster_without_kafka_is_a_config_error() {
    let _serial = SERIAL.lock().await;
    let registry = Registry::start(Auth::None);
    let body = format!(
        "[cluster]\ngroup = \"rw\"\n\n[[registry]]\nname = \"local\"\nkind = \"oci\"\nurl = \"{}\"\ninsecure = true\nrepositories = [\"team/*\"]\n",
        registry.url()
    );
    let (code, out, err) = Setup::new("", &body).regwatch(&["check"]);
    assert_eq!(code, 2, "stdout: {out}\nstderr: {err}");
    assert!(err.contains("cluster"), "the error names `cluster`: {err}");
    assert!(
        !err.contains("unknown"),
        "refused as an unknown key, not for the missing [kafka]: {err}"
    );

    let tansu = Tansu::start();
    let with_kafka = format!(
        "[kafka]\nbrokers = \"{}\"\ntopic = \"{TOPIC}\"\n\n{body}",
        tansu.brokers
    );
    let (code, out, err) = Setup::new("", &with_kafka).regwatch(&["check"]);
    assert_eq!(
        code, 0,
        "[cluster] with [kafka] is a valid config\nstdout: {out}\nstderr: {err}"
    );
}

/// The state topic is verified, never guessed: a state topic with `cleanup.policy=delete` (the
/// broker's default, as a producer's metadata request would have auto-created it) loses state
/// by age; a missing one must not be created behind `create_topic = false`. Either way the
/// replica stays unready with the reason, and the missing topic stays missing.
#[tokio::test(flavor = "multi_thread")]
async fn a_state_topic_that_is_not_compacted_or_missing_is_refused() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let _serial = SERIAL.lock().await;
    let tansu = Tansu::start();
    let registry = Registry::start(Auth::None);
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &tansu.brokers)
        .create()
        .unwrap();
    let deleting = NewTopic::new("deleting.state", 2, TopicReplication::Fixed(1))
        .set("cleanup.policy", "delete");
    let events = NewTopic::new(TOPIC, 1, TopicReplication::Fixed(1));
    for created in admin
        .create_topics([&deleting, &events], &AdminOptions::new())
        .await
        .unwrap()
    {
        created.unwrap();
    }
    let answer = |state_topic: &str| {
        let body = format!(
            "[kafka]\nbrokers = \"{}\"\ntopic = \"{TOPIC}\"\ncreate_topic = false\n\n\
             [cluster]\ngroup = \"verify-{state_topic}\"\nstate_topic = \"{state_topic}\"\n\n\
             [[registry]]\nname = \"local\"\nkind = \"oci\"\nurl = \"{}\"\ninsecure = true\n",
            tansu.brokers,
            registry.url()
        );
        let setup = Setup::new("interval = \"2s\"", &body);
        let daemon = setup.spawn();
        let readyz = format!("http://{}/readyz", setup.admin);
        async move {
            let deadline = Instant::now() + Duration::from_secs(15);
            let mut last = String::new();
            while Instant::now() < deadline {
                if let Ok(r) = reqwest::get(&readyz).await {
                    let ok = r.status().is_success();
                    last = format!(
                        "{} {}",
                        r.status().as_u16(),
                        r.text().await.unwrap_or_default()
                    );
                    if ok {
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            let (_, _, err) = daemon.stop();
            drop(setup);
            (last, err)
        }
    };
    let (deleting, deleting_err) = answer("deleting.state").await;
    let (missing, missing_err) = answer("missing.state").await;
    use rdkafka::consumer::Consumer;
    let metadata: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &tansu.brokers)
        .create()
        .unwrap();
    let topics: Vec<String> = metadata
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap()
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| t.name().to_owned())
        .collect();
    report(
        "cluster: readiness with a state topic of cleanup.policy=delete",
        deleting.split(':').next().unwrap_or(""),
        "503 (not compacted)",
    );
    assert!(
        deleting.starts_with("503") && deleting.contains("cleanup.policy"),
        "{deleting}\n{deleting_err}"
    );
    assert!(
        missing.starts_with("503"),
        "ready without a state topic: {missing}\n{missing_err}"
    );
    assert!(
        !topics.iter().any(|t| t == "missing.state"),
        "the missing state topic was auto-created: {topics:?}"
    );
}

/// An ERROR line must mean something is wrong. Replicas that join, restore partitions (some with
/// records, so their end is reached after data) and scan, on a healthy broker, log none;
/// librdkafka's "partition EOF", which every restore reaches, was logged at ERROR.
#[tokio::test(flavor = "multi_thread")]
async fn a_healthy_restore_logs_no_error() {
    let _serial = SERIAL.lock().await;
    let tansu = Tansu::start();
    let (_registry, proxy, opts, _repos) = world(&tansu, 6, "1s", "rw-quiet").await;
    let mut errors = Vec::new();
    // The second run restores what the first wrote.
    let setup = replica(&opts, false);
    for _ in 0..2 {
        // What an operator sees by default, librdkafka's lines included.
        let daemon = start_replica_logging(&proxy, &setup, "info").await;
        wait_settled(&[&setup.admin], PARTITIONS, SETTLE).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (_, _, err) = daemon.stop();
        errors.extend(
            err.lines()
                .filter(|l| l.contains("ERROR"))
                .map(str::to_owned),
        );
    }
    report(
        "cluster: ERROR lines of two healthy runs on Tansu (join, restore, scan)",
        errors.len(),
        "0",
    );
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// Found by the cluster soak: Tansu paused past the producer's request timeout, with events in
/// flight. librdkafka bumped its idempotent producer's epoch; the broker, back, fenced the
/// bumped producer, and librdkafka failed every later produce. The replica published the same
/// events every cycle without recording them, and delivered nothing new, for good, while
/// `/readyz` said ready. After the pause, the pushes made during it and after it must arrive,
/// each under one id.
#[tokio::test(flavor = "multi_thread")]
async fn a_broker_paused_with_writes_in_flight_leaves_delivery_going() {
    let _serial = SERIAL.lock().await;
    let tansu = Tansu::start();
    let (registry, proxy, mut opts, repos) = world(&tansu, 4, "1s", "rw-pause").await;
    // A pause of seconds outlasts these, as one of minutes outlasts the defaults.
    opts.properties = "\"request.timeout.ms\" = \"2000\"\n\"message.timeout.ms\" = \"4000\"".into();
    let a = replica(&opts, true);
    let da = start_replica(&proxy, &a).await;
    wait_settled(&[&a.admin], PARTITIONS, SETTLE).await;
    let mut tail = Tail::new(&tansu.brokers, TOPIC, "read_committed");

    let pause = |sig| {
        // SAFETY: plain kill(2) on the broker this test started.
        unsafe { libc::kill(tansu.pid() as i32, sig) };
    };
    pause(libc::SIGSTOP);
    let during = push_all(&registry, &repos, "v1").await;
    // Scans find the pushes and hand their events to a broker that does not answer. 6 s: past
    // the message timeout (4 s), which bumps the producer's epoch, and well within the group's
    // 10 s session, so that the replica keeps its partitions (8 s came close enough for the
    // session to expire now and then, and this test is about the producer, not about Tansu's
    // group coordinator, which then sometimes assigned nothing for a minute).
    tokio::time::sleep(Duration::from_secs(6)).await;
    pause(libc::SIGCONT);
    tail.wait_for_tags(&during, Duration::from_secs(60), || stderrs(&[&da]));
    let after = push_all(&registry, &repos, "v2").await;
    tail.wait_for_tags(&after, Duration::from_secs(30), || stderrs(&[&da]));
    tail.drain_for(Duration::from_secs(3));
    // Recorded: nothing is published again.
    let settled = tail.events.len();
    tail.drain_for(Duration::from_secs(4));
    assert_eq!(
        tail.events.len(),
        settled,
        "events published again after delivery: their state was never recorded\n{}",
        stderrs(&[&da])
    );

    let mut ids: BTreeMap<(String, String), HashSet<String>> = BTreeMap::new();
    for e in &tail.events {
        ids.entry((e.repo.clone(), e.tag.clone()))
            .or_default()
            .insert(e.id.clone());
    }
    let pushed: BTreeMap<_, _> = during.iter().chain(&after).collect();
    for (tag, seen) in &ids {
        assert!(pushed.contains_key(tag), "phantom event for {tag:?}");
        assert_eq!(seen.len(), 1, "{tag:?} published under two ids: {seen:?}");
    }
}
