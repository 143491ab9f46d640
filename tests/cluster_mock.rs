//! Cluster mode (issue 10) on librdkafka's mock cluster, hosted in the test process: unlike Tansu
//! 0.6 it evicts a member whose session expired (failover after SIGKILL) and has the transactional
//! APIs (`exactly_once`). It has no CreateTopics, so the replicas run with
//! `kafka.create_topic = false` and the test creates the events and state topics itself (a topic
//! only named in a metadata request is auto-created with 4 partitions). The replicas are child
//! processes; a proxy in front of the real `docker-registry` attributes each request to one.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use support::cluster::{
    Attributing, Ev, Opts, Tail, assert_exactly_once, assert_silent_baseline, logged_after,
    metric_sum, push_all, readyz, replica, seeded_registry, start_replica, stderrs, wait_settled,
    wait_up,
};
use support::{Setup, report};

/// Each test hosts a broker and several daemons, and measures timings: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const TOPIC: &str = "regwatch.images";
const STATE_TOPIC: &str = "rw.state";
const STATE_PARTITIONS: usize = 12;
const TOKEN: &str = "cluster-mock-token-77a0";
const SETTLE: Duration = Duration::from_secs(45);

fn mock() -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, 3, 1).unwrap();
    cluster
        .create_topic(STATE_TOPIC, STATE_PARTITIONS as i32, 1)
        .unwrap();
    cluster
}

fn opts(brokers: String, registry_url: String, cluster_extra: &str, properties: &str) -> Opts {
    Opts {
        brokers,
        topic: TOPIC.into(),
        registry_url,
        interval: "2s".into(),
        kafka_extra: "create_topic = false\n".into(),
        properties: properties.into(),
        cluster: format!(
            "group = \"rw-mock\"\nstate_topic = \"{STATE_TOPIC}\"\nsession_timeout = \"6s\"\nverify_state_topic = false\n{cluster_extra}"
        ),
        token: TOKEN.into(),
    }
}

/// Three replicas of `opts` with fresh `state_dir`s, started and settled over the state partitions.
async fn three_settled(proxy: &Attributing, opts: &Opts) -> (Vec<Setup>, Vec<support::Daemon>) {
    let setups: Vec<_> = (0..3).map(|_| replica(opts, true)).collect();
    let mut daemons = Vec::new();
    for s in &setups {
        daemons.push(start_replica(proxy, s).await);
    }
    let admins: Vec<&str> = setups.iter().map(|s| s.admin.as_str()).collect();
    wait_settled(&admins, STATE_PARTITIONS, SETTLE).await;
    (setups, daemons)
}

/// At-least-once rules over a topic's events: nothing for a tag not in `pushed` (a phantom),
/// and no two events for one detected change (type, repo, tag, digest) with different ids.
/// Returns the redeliveries (same change, same id).
fn assert_no_phantom_no_forked_ids(
    events: &[Ev],
    pushed: &BTreeMap<(String, String), String>,
) -> usize {
    let mut ids: HashMap<(String, String, String, String), HashSet<String>> = HashMap::new();
    let mut redelivered = 0;
    for e in events {
        assert!(
            pushed.contains_key(&(e.repo.clone(), e.tag.clone())),
            "phantom event for {}:{} ({}), which was not pushed after the baseline",
            e.repo,
            e.tag,
            e.kind
        );
        assert_eq!(
            pushed[&(e.repo.clone(), e.tag.clone())],
            e.digest,
            "{}:{}",
            e.repo,
            e.tag
        );
        let change = (
            e.kind.clone(),
            e.repo.clone(),
            e.tag.clone(),
            e.digest.clone(),
        );
        if !ids.entry(change).or_default().insert(e.id.clone()) {
            redelivered += 1;
        }
    }
    let forked: Vec<_> = ids.iter().filter(|(_, v)| v.len() > 1).collect();
    assert!(
        forked.is_empty(),
        "one change delivered with different ids: {forked:?}"
    );
    redelivered
}

/// The failover test: 3 replicas and 60 repositories; tags pushed to all, one replica
/// killed with SIGKILL, tags pushed again. Every new tag is delivered, nothing else, and a
/// redelivery keeps its id; a fresh replica with an empty state_dir joining afterwards emits
/// nothing.
#[tokio::test(flavor = "multi_thread")]
async fn failover_after_kill_9_loses_nothing_and_invents_nothing() {
    let _serial = SERIAL.lock().await;
    let cluster = mock();
    let brokers = cluster.bootstrap_servers();
    let (registry, proxy, url, repos) = seeded_registry(60).await;
    let opts = opts(brokers.clone(), url, "", "");
    let (setups, mut daemons) = three_settled(&proxy, &opts).await;
    let admins: Vec<&str> = setups.iter().map(|s| s.admin.as_str()).collect();

    let mut tail = Tail::new(&brokers, TOPIC, "read_committed");
    tail.drain_for(Duration::from_secs(5));
    assert_silent_baseline(&tail, || stderrs(&daemons.iter().collect::<Vec<_>>()));

    let mut pushed = push_all(&registry, &repos, "v1").await;
    // Mid-cycle: some of the dead replica's scans of v1 may be detected but not committed.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let victim = daemons.pop().unwrap();
    let victim_pid = victim.pid();
    let killed_at = Instant::now();
    let killed_wall = std::time::SystemTime::now();
    let (_, _, victim_err) = victim.kill9();
    let owners = proxy.last_lister(killed_at);
    let orphans: Vec<&String> = repos
        .iter()
        .filter(|r| owners.get(*r) == Some(&victim_pid))
        .collect();
    assert!(
        !orphans.is_empty(),
        "the killed replica had listed none of the 60 repositories\n{}",
        victim_err
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    pushed.extend(push_all(&registry, &repos, "v2").await);

    let survivors: Vec<&support::Daemon> = daemons.iter().collect();
    tail.wait_for_tags(&pushed, Duration::from_secs(60), || stderrs(&survivors));
    tail.drain_for(Duration::from_secs(4));
    let redelivered = assert_no_phantom_no_forked_ids(&tail.events, &pushed);

    let failover = orphans
        .iter()
        .map(|r| {
            let (pid, at) = proxy
                .first_list_after(r, killed_at + Duration::from_millis(1))
                .unwrap_or_else(|| panic!("{r} never listed after the kill"));
            assert!(
                pid.is_some_and(|p| p != victim_pid),
                "{r} listed by {pid:?} after the kill"
            );
            at - killed_at
        })
        .max()
        .unwrap();
    // Its parts: the group's (the mock evicts the member after its session and a rebalance
    // delay of its own), then ours (restore the partitions, scan what they hold).
    let since = |t: std::time::SystemTime| t.duration_since(killed_wall).unwrap_or_default();
    let assigned = daemons
        .iter()
        .filter_map(|d| logged_after(d, "restoring assigned state partitions", killed_wall))
        .min()
        .map(since)
        .expect("the survivors were assigned the dead replica's partitions");
    let restored = daemons
        .iter()
        .filter_map(|d| logged_after(d, "state restored", killed_wall))
        .max()
        .map(since)
        .expect("the survivors restored them");
    report(
        &format!(
            "cluster failover (mock cluster, session 6 s, interval 2 s): kill -9 to the survivors listing all {} of the dead replica's repositories",
            orphans.len()
        ),
        format!("{:.1} s", failover.as_secs_f64()),
        "< 14 s (the group's eviction + 1 interval)",
    );
    report(
        "cluster failover, the group's part: kill -9 to the survivors assigned its partitions (the mock evicts after session_timeout and its rebalance delay)",
        format!("{:.1} s", assigned.as_secs_f64()),
        "< 12 s (6 s session, 1 s timer, 5 s delay)",
    );
    report(
        "cluster failover, ours: assigned to restored / restored to all listed",
        format!(
            "{:.1} s / {:.1} s",
            restored.saturating_sub(assigned).as_secs_f64(),
            failover.saturating_sub(restored).as_secs_f64()
        ),
        "< 1 s / < 2 s",
    );
    report(
        "cluster failover: 120 pushed tags, events missing / phantom / same change with another id",
        "0 / 0 / 0",
        "0 / 0 / 0",
    );
    report(
        "cluster failover: redeliveries with the same id (at-least-once)",
        redelivered,
        "allowed",
    );
    assert!(
        failover < Duration::from_secs(20),
        "the dead replica's repositories were taken over only after {failover:?}"
    );

    // A fresh replica with an empty state_dir joins: it restores its share and emits nothing.
    let before: HashSet<String> = tail.events.iter().map(|e| e.id.clone()).collect();
    let fresh = replica(&opts, true);
    let mut df = fresh.spawn();
    proxy.watch(df.pid());
    let joined = Instant::now();
    wait_up(&mut df, &fresh.admin).await;
    wait_settled(
        &[admins[0], admins[1], fresh.admin.as_str()],
        STATE_PARTITIONS,
        SETTLE,
    )
    .await;
    tail.drain_for(Duration::from_secs(6));
    let new: Vec<&Ev> = tail
        .events
        .iter()
        .filter(|e| !before.contains(&e.id))
        .collect();
    assert!(
        new.is_empty(),
        "the fresh replica re-emitted {} events: {:?}\n{}",
        new.len(),
        new.first(),
        stderrs(&[&df])
    );
    let listed_by_fresh = proxy
        .tag_lists(joined, Instant::now())
        .iter()
        .filter(|(_, pid, _)| *pid == Some(df.pid()))
        .count();
    assert!(
        listed_by_fresh > 0,
        "the fresh replica scanned nothing, so its silence proves nothing"
    );
    assert_no_phantom_no_forked_ids(&tail.events, &pushed);
}

/// Three replicas share the watch set: across the cluster each repository's tags are listed about
/// once per interval, each by one replica, not once per replica.
#[tokio::test(flavor = "multi_thread")]
async fn three_replicas_list_each_repository_about_once_per_interval() {
    let _serial = SERIAL.lock().await;
    let cluster = mock();
    let (_registry, proxy, url, repos) = seeded_registry(12).await;
    let opts = opts(cluster.bootstrap_servers(), url, "", "");
    let (setups, daemons) = three_settled(&proxy, &opts).await;
    let admins: Vec<&str> = setups.iter().map(|s| s.admin.as_str()).collect();
    // One interval for the last rebalance's scans to pass, then six measured intervals.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let intervals = 6;
    let from = Instant::now();
    tokio::time::sleep(Duration::from_secs(2 * intervals)).await;
    let to = Instant::now();
    // Ownership must not have moved during the window, or the counts would mix two layouts.
    let still: f64 = {
        let mut sum = 0.0;
        for a in &admins {
            sum += metric_sum(a, "regwatch_cluster_owned_partitions")
                .await
                .unwrap_or(0.0);
        }
        sum
    };
    assert_eq!(
        still,
        STATE_PARTITIONS as f64,
        "owned partitions summed over the replicas after the measured window\n{}",
        stderrs(&daemons.iter().collect::<Vec<_>>())
    );

    let mut per_repo: BTreeMap<String, (usize, HashSet<Option<u32>>)> = BTreeMap::new();
    let mut by_pid: BTreeMap<String, BTreeMap<Option<u32>, usize>> = BTreeMap::new();
    for (repo, pid, _) in proxy.tag_lists(from, to) {
        *by_pid
            .entry(repo.clone())
            .or_default()
            .entry(pid)
            .or_default() += 1;
        let e = per_repo.entry(repo).or_default();
        e.0 += 1;
        e.1.insert(pid);
    }
    let pids: Vec<u32> = daemons.iter().map(|d| d.pid()).collect();
    let layout = format!("tags/list per repository and replica {by_pid:?} (replicas {pids:?})");
    let counts: Vec<usize> = repos
        .iter()
        .map(|r| per_repo.get(r).map_or(0, |e| e.0))
        .collect();
    let total: usize = counts.iter().sum();
    let per_interval = total as f64 / (repos.len() * intervals as usize) as f64;
    report(
        "cluster (mock cluster, 3 replicas, 12 repositories): tags/list per repository per interval",
        format!(
            "{per_interval:.2} (max per repository {} in {intervals} intervals)",
            counts.iter().max().unwrap()
        ),
        "about 1, not 3",
    );
    report(
        "cluster (mock cluster, 3 replicas): catalog listings per interval across the cluster",
        format!("{:.2}", proxy.catalogs(from, to) as f64 / intervals as f64),
        "documented (1 per replica at most)",
    );
    for (repo, count) in repos.iter().zip(&counts) {
        assert!(
            (*count as f64) < 1.5 * intervals as f64,
            "{repo} was listed {count} times in {intervals} intervals; {layout}"
        );
        assert!(
            *count >= intervals as usize / 2,
            "{repo} was listed only {count} times in {intervals} intervals: not watched? {layout}"
        );
        let listers = &per_repo[repo].1;
        assert_eq!(
            listers.len(),
            1,
            "{repo} was listed by {} replicas: {listers:?}; {layout}",
            listers.len()
        );
    }
    let listers: HashSet<Option<u32>> = per_repo.values().flat_map(|e| e.1.clone()).collect();
    assert_eq!(
        listers.len(),
        3,
        "every replica scans its share: {listers:?}"
    );
    let mut owned = 0.0;
    for a in &admins {
        owned += metric_sum(a, "regwatch_cluster_owned_repositories")
            .await
            .unwrap_or(0.0);
    }
    assert_eq!(owned, repos.len() as f64, "owned repositories summed");
    drop(daemons);
}

/// `exactly_once = true`: events go out in transactions (a read_committed consumer sees them, each
/// once). Then the replica is fenced: a producer with the same `transactional.id` calls
/// InitProducerId, and the broker answers the replica's transactional requests with
/// PRODUCER_FENCED, as Kafka answers a producer whose epoch was bumped. Nothing the replica
/// detects afterwards may reach the topic, and its log says it was fenced.
///
/// Measured on librdkafka 2.12.1's mock cluster: InitProducerId bumps no epoch the broker checks
/// (the first producer still commits), and it ignores `isolation.level` (open and aborted
/// transactions are visible to read_committed). So the broker's fenced answer is injected with
/// `request_errors`, and the test asserts that no record of the fenced replica's later detections
/// is in the log at all, which shows only that a transaction fenced before it produced leaves
/// nothing: what a fenced commit leaves cannot be seen on this mock. What the test can see is
/// regwatch's own handling: it says it was fenced (in its words, not librdkafka's) and exits.
/// Tansu 0.6 has no EndTxn.
#[tokio::test(flavor = "multi_thread")]
async fn exactly_once_delivers_and_a_fenced_replica_commits_nothing() {
    let _serial = SERIAL.lock().await;
    let cluster = mock();
    let brokers = cluster.bootstrap_servers();
    let (registry, proxy, url, repos) = seeded_registry(6).await;
    let host = url.trim_start_matches("http://").to_owned();
    let opts = opts(
        brokers.clone(),
        url,
        "exactly_once = true\n",
        "\"transactional.id\" = \"rw-test\"\n",
    );
    let setup = replica(&opts, true);
    let d = start_replica(&proxy, &setup).await;
    wait_settled(&[&setup.admin], STATE_PARTITIONS, SETTLE).await;

    let mut committed = Tail::new(&brokers, TOPIC, "read_committed");
    committed.drain_for(Duration::from_secs(4));
    assert_silent_baseline(&committed, || stderrs(&[&d]));
    let first = push_all(&registry, &repos, "v1").await;
    committed.wait_for_tags(&first, Duration::from_secs(30), || stderrs(&[&d]));
    committed.drain_for(Duration::from_secs(3));
    assert_exactly_once(&committed.events, &first, &host);
    let records = metric_sum(&setup.admin, "regwatch_cluster_state_records_total").await;
    assert!(
        records.is_some_and(|r| r >= 1.0),
        "regwatch_cluster_state_records_total after 6 committed detections: {records:?}"
    );
    report(
        "cluster exactly_once (mock cluster): tags delivered in transactions, each once",
        format!("{}/{}", committed.events.len(), first.len()),
        "6/6",
    );

    // Fence: a new producer instance with the replica's transactional.id ...
    let fencer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("transactional.id", "rw-test")
        .create()
        .unwrap();
    fencer
        .init_transactions(Duration::from_secs(30))
        .expect("InitProducerId for the replica's transactional.id");
    // ... and the broker's answer to the old epoch from now on.
    let fenced = [RDKafkaRespErr::RD_KAFKA_RESP_ERR_PRODUCER_FENCED; 500];
    for api in [
        RDKafkaApiKey::AddPartitionsToTxn,
        RDKafkaApiKey::AddOffsetsToTxn,
        RDKafkaApiKey::TxnOffsetCommit,
        RDKafkaApiKey::EndTxn,
    ] {
        cluster.request_errors(api, &fenced);
    }
    let fenced_at = Instant::now();

    let second = push_all(&registry, &repos, "v2").await;
    // The replica rescans the repositories (so it did detect the new tags) ...
    let tried = Instant::now();
    while repos
        .iter()
        .any(|r| proxy.first_list_after(r, fenced_at).is_none())
    {
        assert!(
            tried.elapsed() < Duration::from_secs(15),
            "the replica did not rescan after the fencing\n{}",
            stderrs(&[&d])
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // ... and for three more intervals nothing of them reaches the topic.
    committed.drain_for(Duration::from_secs(6));
    let mut all = first.clone();
    all.extend(second.clone());
    assert_no_phantom_no_forked_ids(&committed.events, &all);
    let leaked: Vec<&Ev> = committed
        .events
        .iter()
        .filter(|e| second.contains_key(&(e.repo.clone(), e.tag.clone())))
        .collect();
    report(
        "cluster exactly_once: events of a fenced replica in the topic",
        leaked.len(),
        "0",
    );
    assert!(
        leaked.is_empty(),
        "a fenced replica got {} events into the topic: {:?}\n{}",
        leaked.len(),
        leaked,
        stderrs(&[&d])
    );
    // regwatch's own account of it (librdkafka's lines say "fenced" too), and the replica ends,
    // for its service manager to restart it as a fresh member.
    let logged = d
        .stderr
        .lock()
        .unwrap()
        .contains("the transactional producer was fenced");
    assert!(
        logged,
        "the replica did not say it was fenced\n{}",
        stderrs(&[&d])
    );
    let mut d = d;
    let exited = (0..100).find_map(|_| {
        let status = d.child.try_wait().unwrap();
        if status.is_none() {
            std::thread::sleep(Duration::from_millis(100));
        }
        status
    });
    report(
        "cluster exactly_once: a fenced replica exits (for a restart as a fresh member)",
        format!("{exited:?}"),
        "a non-zero exit",
    );
    assert!(
        exited.is_some_and(|s| !s.success()),
        "a fenced replica kept running: {exited:?}\n{}",
        stderrs(&[&d])
    );
    drop(fencer);
}

/// A replica paused past its session (SIGSTOP) mid-cycle is evicted, and its partitions go to
/// the other. Resumed, it finishes the cycle it was in: were its commits to land before
/// librdkafka tells it that its partitions moved, a tag pushed meanwhile would be published
/// again, diffed against the state it held, under another revision and so another id. The pause
/// lands mid-cycle for sure: the proxy holds the paused replica's manifest lookups until it is
/// stopped. (Which of the two comes first on resuming is a race; the store's own test,
/// `stalls::a_write_after_the_process_stalled_waits_until_the_group_confirms_it`, shows the
/// writes wait for the group whatever wins it.)
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_resumed_after_its_session_publishes_nothing_it_no_longer_owns() {
    let _serial = SERIAL.lock().await;
    let cluster = mock();
    let brokers = cluster.bootstrap_servers();
    let (registry, proxy, url, repos) = seeded_registry(24).await;
    let opts = opts(brokers.clone(), url, "", "");
    let setups: Vec<_> = (0..2).map(|_| replica(&opts, true)).collect();
    let mut daemons = Vec::new();
    for s in &setups {
        daemons.push(start_replica(&proxy, s).await);
    }
    let admins: Vec<&str> = setups.iter().map(|s| s.admin.as_str()).collect();
    wait_settled(&admins, STATE_PARTITIONS, SETTLE).await;
    let mut tail = Tail::new(&brokers, TOPIC, "read_committed");
    tail.drain_for(Duration::from_secs(4));
    assert_silent_baseline(&tail, || stderrs(&daemons.iter().collect::<Vec<_>>()));

    let paused = daemons[0].pid();
    proxy.hold(paused);
    let pushed = push_all(&registry, &repos, "while-paused").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while proxy.holding() == 0 {
        assert!(
            Instant::now() < deadline,
            "the replica never looked a new tag up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(paused as i32, libc::SIGSTOP) };
    // The other replica takes every partition once the group evicts the paused one, and
    // reports every push.
    wait_settled(&admins[1..], STATE_PARTITIONS, SETTLE).await;
    tail.wait_for_tags(&pushed, Duration::from_secs(60), || {
        stderrs(&daemons.iter().collect::<Vec<_>>())
    });
    let held = proxy.holding();
    proxy.release();
    // The answers wait in its sockets.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // SAFETY: as above.
    unsafe { libc::kill(paused as i32, libc::SIGCONT) };
    tail.drain_for(Duration::from_secs(10));
    let redelivered = assert_no_phantom_no_forked_ids(&tail.events, &pushed);
    report(
        &format!(
            "cluster: a replica paused past its session with {held} lookups in flight, resumed: its former repositories' changes published again (same id)"
        ),
        redelivered,
        "0",
    );
    assert_eq!(
        redelivered,
        0,
        "the resumed replica published again\n{}",
        stderrs(&daemons.iter().collect::<Vec<_>>())
    );
    wait_settled(&admins, STATE_PARTITIONS, SETTLE).await;
}

/// The simulation idea applied to replicas as real processes: a seeded random run of `kill -9`,
/// graceful leaves, joins, broker outages (the mock broker down for up to 8 s, past the session
/// now and then), pauses (SIGSTOP, then SIGCONT well within the session, or past it: the group
/// evicts the replica, which must publish nothing stale once resumed) and rollouts (a replica
/// replaced by one whose config drops, or adds back, a second registry), with pushes to random
/// repositories of both registries throughout. At the end the rollout completes (every replica
/// knows both registries), and then: every pushed tag delivered (the second registry's too: a
/// replica that does not know it must leave its state alone), nothing phantom, no change under
/// two ids (a redelivery keeps its id).
/// `REGWATCH_CLUSTER_FAULT_SEED` replays a run; `REGWATCH_CLUSTER_FAULT_ROUNDS` (default 6)
/// makes it longer.
#[tokio::test(flavor = "multi_thread")]
async fn randomised_replica_faults_lose_nothing_and_invent_nothing() {
    use rand::seq::IndexedRandom;
    use rand::{Rng, SeedableRng};
    let _serial = SERIAL.lock().await;
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let seed = env("REGWATCH_CLUSTER_FAULT_SEED").unwrap_or_else(rand::random);
    let rounds = env("REGWATCH_CLUSTER_FAULT_ROUNDS").unwrap_or(6);
    println!(
        "cluster fault run: seed {seed}, {rounds} rounds (REGWATCH_CLUSTER_FAULT_SEED={seed} replays it)"
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let cluster = mock();
    let brokers = cluster.bootstrap_servers();
    let (registry, proxy, url, repos) = seeded_registry(12).await;
    let opts = opts(brokers.clone(), url, "", "");
    // A second registry, in every replica's config at first; rollouts take it out of some and
    // put it back. It is pushed to throughout, so a replica that does not know it must keep its
    // state: erased, the next owner that knows it would take a baseline and miss the pushes.
    let other = Arc::new(support::synthetic::Synthetic::default());
    other.put("svc/other", "v1", 0);
    let other_registry = format!(
        "\n[[registry]]\nname = \"other\"\nkind = \"oci\"\nurl = \"http://{}\"\ninsecure = true\nrepositories = [\"svc/*\"]\n",
        support::synthetic::serve(other.clone()).await
    );
    let configured = |with_other: bool| {
        let s = replica(&opts, true);
        if with_other {
            let mut config = std::fs::OpenOptions::new()
                .append(true)
                .open(&s.config)
                .unwrap();
            std::io::Write::write_all(&mut config, other_registry.as_bytes()).unwrap();
        }
        s
    };
    let mut setups: Vec<Setup> = (0..3).map(|_| configured(true)).collect();
    let mut daemons = Vec::new();
    for s in &setups {
        daemons.push(start_replica(&proxy, s).await);
    }
    let admins: Vec<&str> = setups.iter().map(|s| s.admin.as_str()).collect();
    wait_settled(&admins, STATE_PARTITIONS, SETTLE).await;
    // Which replicas run the config with the second registry.
    let mut rolled = vec![true; daemons.len()];
    let mut tail = Tail::new(&brokers, TOPIC, "read_committed");
    tail.drain_for(Duration::from_secs(4));
    assert_silent_baseline(&tail, || stderrs(&daemons.iter().collect::<Vec<_>>()));

    let mut pushed = BTreeMap::new();
    let mut actions = Vec::new();
    for round in 0..rounds {
        let subset: Vec<String> = repos.choose_multiple(&mut rng, 3).cloned().collect();
        pushed.extend(push_all(&registry, &subset, &format!("r{round}")).await);
        let tag = format!("r{round}");
        let digest = other.put("svc/other", &tag, round as u32 + 1);
        pushed.insert(("svc/other".to_owned(), tag), digest);
        // Never the last replica (a rollout replaces one): someone must be left to deliver.
        let action = match daemons.len() {
            0 | 1 => *[2, 3, 4, 5].choose(&mut rng).unwrap(),
            n if n >= 4 => *[0, 1, 3, 4, 5, 6].choose(&mut rng).unwrap(),
            _ => rng.random_range(0..7),
        };
        match action {
            0 | 1 => {
                let i = rng.random_range(0..daemons.len());
                let d = daemons.remove(i);
                setups.remove(i);
                rolled.remove(i);
                if action == 0 {
                    d.kill9();
                    actions.push("kill -9");
                } else {
                    d.stop();
                    actions.push("leave");
                }
            }
            2 => {
                let with_other = rng.random_bool(0.5);
                let s = configured(with_other);
                daemons.push(start_replica(&proxy, &s).await);
                setups.push(s);
                rolled.push(with_other);
                actions.push("join");
            }
            4 | 6 => {
                // 4: well within the session (6 s; a heartbeat every 2 s, sent up to 0.5 s
                // late), with room for a loaded machine: the group keeps it. 6: past the
                // session: the group evicts it and the others take its share.
                let (millis, what) = if action == 4 {
                    (500..1200, "pause")
                } else {
                    (7000..12000, "pause past the session")
                };
                let pid = daemons.choose(&mut rng).unwrap().pid() as i32;
                // SAFETY: plain kill(2) on our own child's pid.
                unsafe { libc::kill(pid, libc::SIGSTOP) };
                tokio::time::sleep(Duration::from_millis(rng.random_range(millis))).await;
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGCONT) };
                actions.push(what);
            }
            5 => {
                let i = rng.random_range(0..daemons.len());
                daemons.remove(i).stop();
                setups.remove(i);
                let with_other = !rolled.remove(i);
                let s = configured(with_other);
                daemons.push(start_replica(&proxy, &s).await);
                setups.push(s);
                rolled.push(with_other);
                actions.push("rollout");
            }
            _ => {
                cluster.broker_down(1).unwrap();
                tokio::time::sleep(Duration::from_millis(rng.random_range(1000..8000))).await;
                cluster.broker_up(1).unwrap();
                actions.push("broker outage");
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..3000))).await;
    }
    // The rollout completes: every replica knows the second registry again.
    for i in 0..daemons.len() {
        if !rolled[i] {
            let s = configured(true);
            let d = start_replica(&proxy, &s).await;
            std::mem::replace(&mut daemons[i], d).stop();
            setups[i] = s;
            rolled[i] = true;
        }
    }
    tail.wait_for_tags(&pushed, Duration::from_secs(120), || {
        format!(
            "seed {seed}, actions {actions:?}\n{}",
            stderrs(&daemons.iter().collect::<Vec<_>>())
        )
    });
    tail.drain_for(Duration::from_secs(5));
    let seen: HashSet<(String, String)> = tail
        .events
        .iter()
        .map(|e| (e.repo.clone(), e.tag.clone()))
        .collect();
    let missing = pushed.keys().filter(|k| !seen.contains(*k)).count();
    let phantom = seen.iter().filter(|k| !pushed.contains_key(*k)).count();
    let redelivered = assert_no_phantom_no_forked_ids(&tail.events, &pushed);
    let count = |a: &str| actions.iter().filter(|x| **x == a).count();
    report(
        &format!(
            "cluster random faults (seed {seed}): {rounds} rounds, {} kill -9 / {} leaves / {} joins / {} broker outages / {} pauses / {} pauses past the session / {} rollouts, {} pushed tags: missing / phantom / one change under two ids",
            count("kill -9"),
            count("leave"),
            count("join"),
            count("broker outage"),
            count("pause"),
            count("pause past the session"),
            count("rollout"),
            pushed.len()
        ),
        // Two ids for one change fail the assertion above; reaching here, there were none.
        format!("{missing} / {phantom} / 0"),
        "0 / 0 / 0",
    );
    report(
        "cluster random faults: redeliveries with the same id (at-least-once)",
        redelivered,
        "allowed",
    );
}

/// A replica whose scans detect changes it cannot record (every produce failing, the brokers
/// answering metadata) publishes them again every cycle and delivers nothing new: `/readyz` must
/// say so, not "ready" as it did through the cluster soak's fenced producer, and be ready again
/// once writes land.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_whose_writes_keep_failing_is_not_ready() {
    let _serial = SERIAL.lock().await;
    let cluster = mock();
    let brokers = cluster.bootstrap_servers();
    let (registry, proxy, url, repos) = seeded_registry(3).await;
    let opts = opts(
        brokers.clone(),
        url,
        "",
        "\"message.timeout.ms\" = \"1500\"\n",
    );
    let setup = replica(&opts, true);
    let mut d = start_replica(&proxy, &setup).await;
    wait_settled(&[&setup.admin], STATE_PARTITIONS, SETTLE).await;

    // Retriable for librdkafka, so every write times out rather than being refused for good.
    let failing = vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 100_000];
    cluster.request_errors(RDKafkaApiKey::Produce, &failing);
    let pushed = push_all(&registry, &repos, "v1").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let why = loop {
        let (ok, text) = readyz(&setup.admin).await;
        if !ok && text.contains("not recorded") {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz still says {ok} ({text}) while no change is recorded\n{}",
            stderrs(&[&d])
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        !why.contains("NotEnoughReplicas"),
        "the reason is the log's: {why}"
    );

    cluster.clear_request_errors(RDKafkaApiKey::Produce);
    let mut tail = Tail::new(&brokers, TOPIC, "read_uncommitted");
    tail.wait_for_tags(&pushed, Duration::from_secs(30), || stderrs(&[&d]));
    wait_up(&mut d, &setup.admin).await;
}
