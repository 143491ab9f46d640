//! The Kafka sink and the outbox against rdkafka's in-process MockCluster: delivery with key and
//! header, a broker outage that leaves events in the outbox, retriable produce errors, and the
//! blocking work (store calls, the producer's flush on drop) kept off the async workers.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use regwatch::config::KafkaConfig;
use regwatch::event::Event;
use regwatch::sink::{self, Sink, kafka::KafkaSink};
use regwatch::store::{StateStore, Store};
use regwatch::watch::diff::Snapshot;
use support::report;

const TOPIC: &str = "events";

fn kafka_config(brokers: String) -> KafkaConfig {
    KafkaConfig {
        brokers,
        topic: TOPIC.into(),
        create_topic: false,
        partitions: 2,
        replication_factor: -1,
        // Fail deliveries fast so the outage is visible within the test.
        properties: vec![("message.timeout.ms".into(), "1500".to_string().into())],
    }
}

fn events(range: std::ops::Range<u32>) -> Vec<Event> {
    range
        .map(|i| Event {
            id: format!("id-{i}"),
            key: format!("host/repo{}", i % 3),
            payload: format!("{{\"n\":{i}}}"),
        })
        .collect()
}

fn read_all(brokers: &str, want: usize) -> Vec<(String, String, Option<String>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "t")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..2 {
        tpl.add_partition_offset(TOPIC, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while out.len() < want && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let ct = m
                .headers()
                .and_then(|h| {
                    h.iter()
                        .find(|h| h.key == "content-type")
                        .and_then(|h| h.value)
                })
                .map(|v| String::from_utf8_lossy(v).into_owned());
            out.push((
                String::from_utf8(m.key().unwrap().to_vec()).unwrap(),
                String::from_utf8(m.payload().unwrap().to_vec()).unwrap(),
                ct,
            ));
        }
    }
    // Anything beyond `want` would be a duplicate: give it a moment to show up.
    while let Some(Ok(m)) = consumer.poll(Duration::from_millis(500)) {
        out.push((
            String::from_utf8(m.key().unwrap().to_vec()).unwrap(),
            String::new(),
            None,
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn outbox_survives_a_broker_outage_and_delivers_once() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, 2, 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let mut sink = KafkaSink::new(&kafka_config(cluster.bootstrap_servers())).unwrap();
    sink.prepare().await.unwrap();

    store
        .commit_scan("r", "repo", None, &Snapshot::default(), &events(0..50))
        .unwrap();
    assert_eq!(sink::drain(&store, &mut sink).await.unwrap(), (50, 0));
    assert_eq!(store.outbox_len().unwrap(), 0);

    // Broker down: deliveries fail, the events stay put, and scanning could go on committing.
    cluster.broker_down(1).unwrap();
    store
        .commit_scan("r", "repo", Some(0), &Snapshot::default(), &events(50..80))
        .unwrap();
    let (delivered, left) = sink::drain(&store, &mut sink).await.unwrap();
    assert_eq!(
        (delivered, left),
        (0, 30),
        "nothing is acknowledged while the broker is down"
    );
    store
        .commit_scan("r", "repo", Some(0), &Snapshot::default(), &events(80..100))
        .unwrap();
    assert_eq!(store.outbox_len().unwrap(), 50);

    cluster.broker_up(1).unwrap();
    let mut total = 0;
    for _ in 0..20 {
        let (d, left) = sink::drain(&store, &mut sink).await.unwrap();
        total += d;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(total, 50);
    assert_eq!(store.outbox_len().unwrap(), 0);

    let records = read_all(&cluster.bootstrap_servers(), 100);
    let mut ns: Vec<u32> = records
        .iter()
        .map(|(_, p, _)| {
            serde_json::from_str::<serde_json::Value>(p).unwrap()["n"]
                .as_u64()
                .unwrap() as u32
        })
        .collect();
    ns.sort_unstable();
    assert_eq!(ns, (0..100).collect::<Vec<_>>(), "every event exactly once");
    assert!(records.iter().all(|(k, _, ct)| k.starts_with("host/repo")
        && ct.as_deref() == Some("application/cloudevents+json")));
}

#[tokio::test(flavor = "multi_thread")]
async fn retriable_produce_errors_are_absorbed() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, 2, 1).unwrap();
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE,
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let mut config = kafka_config(cluster.bootstrap_servers());
    config.properties.clear();
    let mut sink = KafkaSink::new(&config).unwrap();
    store
        .commit_scan("r", "repo", None, &Snapshot::default(), &events(0..20))
        .unwrap();
    assert_eq!(sink::drain(&store, &mut sink).await.unwrap(), (20, 0));
    let records = read_all(&cluster.bootstrap_servers(), 20);
    assert_eq!(records.len(), 20, "idempotent retries add no duplicates");
}

/// A producer that became unusable while idle (here the broker fenced its first
/// InitProducerId, which librdkafka takes for fatal) refuses every event at once, before any
/// delivery could fail: the sink must still replace it, and the outbox drain.
#[tokio::test(flavor = "multi_thread")]
async fn a_producer_fenced_while_idle_is_replaced_and_the_outbox_drains() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, 2, 1).unwrap();
    cluster.request_errors(
        RDKafkaApiKey::InitProducerId,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_PRODUCER_FENCED],
    );
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let mut sink = KafkaSink::new(&kafka_config(cluster.bootstrap_servers())).unwrap();
    sink.prepare().await.unwrap();
    // The fencing is answered while nothing is queued.
    tokio::time::sleep(Duration::from_secs(2)).await;
    store
        .commit_scan("r", "repo", None, &Snapshot::default(), &events(0..10))
        .unwrap();
    let mut left = 10;
    for _ in 0..20 {
        left = sink::drain(&store, &mut sink).await.unwrap().1;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        left, 0,
        "the outbox never drained: the fenced producer was kept"
    );
    assert_eq!(read_all(&cluster.bootstrap_servers(), 10).len(), 10);
}

/// The longest the current-thread runtime went without running a task that wakes every 5 ms,
/// until `stop` is set.
fn watch_stalls(stop: Arc<std::sync::atomic::AtomicBool>) -> tokio::task::JoinHandle<Duration> {
    tokio::spawn(async move {
        let mut worst = Duration::ZERO;
        let mut last = Instant::now();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(5)).await;
            worst = worst.max(last.elapsed());
            last = Instant::now();
        }
        worst
    })
}

/// A scan's commit holds redb's write lock (and fsyncs) while the publisher wants to remove the
/// events it just delivered. On the daemon's runtime that wait must not stall the worker, which
/// also serves /healthz and feeds the watchdog: here, a current-thread runtime keeps ticking.
#[tokio::test]
async fn draining_does_not_stall_the_runtime_while_a_scan_commits() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, 2, 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    store
        .commit_scan("r", "repo", None, &Snapshot::default(), &events(0..500))
        .unwrap();
    let mut sink = KafkaSink::new(&kafka_config(cluster.bootstrap_servers())).unwrap();
    sink.prepare().await.unwrap();
    // A big repository's snapshot: its commit takes a good part of a second.
    let big = Snapshot {
        tags: (0..400_000)
            .map(|i| (format!("v{i}"), Some(format!("sha256:{i:064}"))))
            .collect(),
        revision: 1,
        ..Snapshot::default()
    };
    let (started_tx, started) = std::sync::mpsc::channel();
    let scan = {
        let store = store.clone();
        std::thread::spawn(move || {
            started_tx.send(()).unwrap();
            let t0 = Instant::now();
            store.commit_scan("r", "big", None, &big, &[]).unwrap();
            t0.elapsed()
        })
    };
    started.recv().unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stalls = watch_stalls(stop.clone());
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(sink::drain(&store, &mut sink).await.unwrap(), (500, 0));
    let commit = scan.join().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let worst = stalls.await.unwrap();
    report(
        &format!(
            "outbox drain during a {} ms scan commit: longest runtime stall",
            commit.as_millis()
        ),
        format!("{} ms", worst.as_millis()),
        "< 150 ms",
    );
    assert!(
        commit >= Duration::from_millis(300),
        "the scan's commit took only {commit:?}: too short to show a stall"
    );
    assert!(
        worst < Duration::from_millis(150),
        "the runtime stalled {worst:?} while a {commit:?} commit held the store"
    );
}

/// Dropping the sink with messages stuck in librdkafka (broker down) flushes for up to 5 s; that
/// must happen on a blocking thread, not on the worker that drops it.
#[tokio::test]
async fn dropping_the_sink_does_not_block_the_runtime() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, 2, 1).unwrap();
    let mut config = kafka_config(cluster.bootstrap_servers());
    // librdkafka's 30 s message timeout: the messages stay queued while the broker is down.
    config.properties.clear();
    let mut sink = KafkaSink::new(&config).unwrap();
    cluster.broker_down(1).unwrap();
    let cut_short =
        tokio::time::timeout(Duration::from_millis(500), sink.deliver(&events(0..10))).await;
    assert!(
        cut_short.is_err(),
        "nothing is acknowledged by a broker that is down"
    );
    let t0 = Instant::now();
    drop(sink);
    let blocked = t0.elapsed();
    report(
        "Kafka sink dropped with a broker down: worker blocked",
        format!("{} ms", blocked.as_millis()),
        "< 100 ms",
    );
    assert!(
        blocked < Duration::from_millis(100),
        "dropping the sink blocked the worker for {blocked:?}"
    );
}
