//! The Kafka sink and the outbox against rdkafka's in-process MockCluster: delivery with key and
//! header, a broker outage that leaves events in the outbox, and retriable produce errors.

use std::time::Duration;

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
    let store = Store::open(dir.path()).unwrap();
    let mut sink = KafkaSink::new(&kafka_config(cluster.bootstrap_servers())).unwrap();
    sink.prepare().await.unwrap();

    store
        .commit_scan("r", "repo", &Snapshot::default(), &events(0..50))
        .unwrap();
    assert_eq!(sink::drain(&store, &mut sink).await.unwrap(), (50, 0));
    assert_eq!(store.outbox_len().unwrap(), 0);

    // Broker down: deliveries fail, the events stay put, and scanning could go on committing.
    cluster.broker_down(1).unwrap();
    store
        .commit_scan("r", "repo", &Snapshot::default(), &events(50..80))
        .unwrap();
    let (delivered, left) = sink::drain(&store, &mut sink).await.unwrap();
    assert_eq!(
        (delivered, left),
        (0, 30),
        "nothing is acknowledged while the broker is down"
    );
    store
        .commit_scan("r", "repo", &Snapshot::default(), &events(80..100))
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
    let store = Store::open(dir.path()).unwrap();
    let mut config = kafka_config(cluster.bootstrap_servers());
    config.properties.clear();
    let mut sink = KafkaSink::new(&config).unwrap();
    store
        .commit_scan("r", "repo", &Snapshot::default(), &events(0..20))
        .unwrap();
    assert_eq!(sink::drain(&store, &mut sink).await.unwrap(), (20, 0));
    let records = read_all(&cluster.bootstrap_servers(), 20);
    assert_eq!(records.len(), 20, "idempotent retries add no duplicates");
}
