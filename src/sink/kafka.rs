//! The Kafka sink: an idempotent, `acks=all` producer; value = CloudEvent JSON, key =
//! `<host>/<repository>`, header `content-type: application/cloudevents+json`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::join_all;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureRecord, Producer, PurgeConfig};
use secrecy::ExposeSecret;
use tokio::sync::watch;

use super::Sink;
use crate::admin::Readiness;
use crate::config::KafkaConfig;
use crate::event::Event;

/// The CloudEvents structured-mode content type.
pub const CONTENT_TYPE: &str = "application/cloudevents+json";

/// How often [`probe`] asks the brokers for metadata.
const PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// How long dropping the sink lets queued messages go out (on a blocking thread).
const FLUSH_ON_DROP: Duration = Duration::from_secs(5);
/// The `tracing` target of librdkafka's own log lines.
const LIBRDKAFKA: &str = "librdkafka";

/// Counts the brokers' returns after an outage, as [`probe`] sees them. A sink that sees it change
/// purges what its producer holds and starts a fresh one, and the publisher prepares it again at
/// once: a broker that lost its state (Tansu's memory engine, a rebuilt cluster) lost the topic
/// and the idempotent producer's id too, and the old producer would only find out when its
/// deliveries time out (`message.timeout.ms`, 30 s by default) or are fenced.
static BROKER_RETURNS: LazyLock<watch::Sender<u64>> = LazyLock::new(|| watch::channel(0).0);

use super::producer::KafkaProducer;

/// A producer whose end runs off the async workers: dropping flushes what it still holds (bounded
/// by [`FLUSH_ON_DROP`]; everything delivered was already awaited, so this only bounds shutdown on
/// a stuck broker), then purges and joins librdkafka's threads.
struct Retiring(Option<KafkaProducer>);

impl std::ops::Deref for Retiring {
    type Target = KafkaProducer;
    fn deref(&self) -> &KafkaProducer {
        self.0.as_ref().expect("taken only when dropped")
    }
}

impl Drop for Retiring {
    fn drop(&mut self) {
        if let Some(producer) = self.0.take() {
            off_worker(move || {
                let _ = producer.flush(FLUSH_ON_DROP);
            });
        }
    }
}

/// Routes librdkafka's log lines and global errors through `tracing`.
///
/// During an outage librdkafka reports every failed connection attempt, and each one twice: as a
/// log line and as a global error. Those are counted in `regwatch_kafka_connection_errors_total`
/// and logged at DEBUG only; [`probe`] logs the outage's start and end, once each, at WARN. Every
/// other error keeps its ERROR line.
#[derive(Clone, Default)]
pub struct KafkaContext {
    /// How often this client lost every broker (the probe uses it to notice a restart that
    /// happened between two probes).
    all_brokers_down: Arc<AtomicU64>,
}

/// Errors that only say a broker connection failed or was lost: expected during an outage.
fn is_connection_error(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::Resolve
            | RDKafkaErrorCode::NetworkException
    )
}

impl ClientContext for KafkaContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        // "FAIL" is a broker connection failing; the same failure arrives as a global error, which
        // `error` counts or logs, so the line itself is only worth DEBUG.
        if fac == "FAIL" {
            tracing::debug!(target: LIBRDKAFKA, facility = fac, "{message}");
            return;
        }
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: LIBRDKAFKA, facility = fac, "{message}")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: LIBRDKAFKA, facility = fac, "{message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: LIBRDKAFKA, facility = fac, "{message}")
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(target: LIBRDKAFKA, facility = fac, "{message}")
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        if code == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.all_brokers_down.fetch_add(1, Ordering::Relaxed);
        }
        if code.is_some_and(is_connection_error) {
            crate::metrics::get().kafka_connection_errors.inc();
            tracing::debug!(target: LIBRDKAFKA, %error, reason, "kafka connection error");
        } else if code == Some(RDKafkaErrorCode::PartitionEOF) {
            // A consumer reached the end of a partition: how a restore knows it is complete, and
            // nothing wrong (librdkafka reports it through the error path).
            tracing::debug!(target: LIBRDKAFKA, reason, "partition end reached");
        } else {
            tracing::error!(target: LIBRDKAFKA, %error, reason, "kafka client error");
        }
    }
}

/// Publishes events to one topic.
pub struct KafkaSink {
    config: KafkaConfig,
    producer: Retiring,
    /// [`BROKER_RETURNS`], and the count the current producer was created after.
    returns: watch::Receiver<u64>,
    generation: u64,
}

/// The librdkafka settings: the user's `[kafka.properties]`, then the ones delivery guarantees
/// rest on, which are not negotiable.
pub fn client_config(config: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers)
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("message.timeout.ms", "30000")
        // Reconnect within a second of a broker's return rather than librdkafka's 10 s maximum
        // backoff: recovery time matters more than the rate of attempts against a dead broker.
        .set("reconnect.backoff.max.ms", "1000");
    for (key, value) in &config.properties {
        // A transactional id belongs to cluster mode's transactional producer alone (see
        // `store::kafka`); on any other client librdkafka would refuse or misuse it.
        if key != TRANSACTIONAL_ID {
            c.set(key, value.expose_secret());
        }
    }
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        // Topics are created by regwatch with their settings (`create_topic`), or by their owner:
        // never by a producer's metadata request, with the broker's defaults (a state topic
        // with `cleanup.policy=delete` loses state).
        .set("allow.auto.create.topics", "false");
    c
}

/// A librdkafka client that could not be created, said without the value of the property at
/// fault: `kafka.properties` values are secrets, and librdkafka's message and rust-rdkafka's
/// `Display` both quote it.
pub fn creation_error(e: &KafkaError) -> String {
    match e {
        KafkaError::ClientConfig(_, description, key, value) => {
            let description = if value.is_empty() {
                description.clone()
            } else {
                description.replace(value.as_str(), "<redacted>")
            };
            format!("kafka property {key:?}: {description}")
        }
        other => other.to_string(),
    }
}

/// The record of `event` on `topic`: its key, its CloudEvent JSON, and the structured-mode
/// content type header.
pub fn event_record<'a>(topic: &'a str, event: &'a Event) -> FutureRecord<'a, String, String> {
    FutureRecord::to(topic)
        .key(&event.key)
        .payload(&event.payload)
        .headers(OwnedHeaders::new().insert(Header {
            key: "content-type",
            value: Some(CONTENT_TYPE),
        }))
}

/// The librdkafka property naming a transactional producer.
pub const TRANSACTIONAL_ID: &str = "transactional.id";

/// Runs `work` (dropping or flushing a librdkafka client, which joins threads and waits on the
/// network) on the blocking pool, so that it never stalls an async worker.
fn off_worker(work: impl FnOnce() + Send + 'static) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn_blocking(work)),
        Err(_) => work(),
    }
}

impl KafkaSink {
    /// Creates the producer (it connects lazily; an unreachable broker is not an error here).
    pub fn new(config: &KafkaConfig) -> Result<Self, KafkaError> {
        let returns = BROKER_RETURNS.subscribe();
        let generation = *returns.borrow();
        Ok(KafkaSink {
            config: config.clone(),
            producer: Retiring(Some(KafkaProducer::new(
                &client_config(config),
                KafkaContext::default(),
            )?)),
            returns,
            generation,
        })
    }

    /// Creates the topic if it is missing.
    async fn ensure_topic(&self) -> Result<(), String> {
        let admin: AdminClient<KafkaContext> = client_config(&self.config)
            .create_with_context(KafkaContext::default())
            .map_err(|e| format!("kafka admin client: {}", creation_error(&e)))?;
        let replication = TopicReplication::Fixed(self.config.replication_factor);
        let topic = NewTopic::new(&self.config.topic, self.config.partitions, replication);
        let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
        let results = admin.create_topics([&topic], &options).await;
        off_worker(move || drop(admin));
        for result in results.map_err(|e| format!("create topic {}: {e}", self.config.topic))? {
            match result {
                Ok(_) => tracing::info!(topic = %self.config.topic, "created topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => return Err(format!("create topic {topic}: {code}")),
            }
        }
        Ok(())
    }

    /// Starts a fresh producer (with a new producer id) in place of the current one. The outbox
    /// holds every unacknowledged event.
    fn restart_producer(&mut self) {
        match KafkaProducer::new(&client_config(&self.config), KafkaContext::default()) {
            Ok(fresh) => self.producer = Retiring(Some(fresh)),
            Err(e) => tracing::error!(error = %creation_error(&e), "cannot recreate the producer"),
        }
    }

    /// Restarts the producer if the brokers returned from an outage since it was created.
    fn restart_if_brokers_returned(&mut self) {
        let latest = *self.returns.borrow();
        if latest != self.generation {
            self.generation = latest;
            tracing::info!("kafka is back after an outage; restarting the producer");
            self.restart_producer();
        }
    }

    /// A fatal error, or a broker that lost the idempotent producer's state (a restarted broker
    /// answers ProducerFenced, UnknownProducerId or OutOfOrderSequenceNumber), poisons the producer:
    /// start a fresh one with a new producer id.
    fn recover(&mut self, codes: &[RDKafkaErrorCode]) {
        let fatal = self.producer.client().fatal_error();
        let lost_state = codes.iter().any(|c| {
            matches!(
                c,
                RDKafkaErrorCode::ProducerFenced
                    | RDKafkaErrorCode::UnknownProducerId
                    | RDKafkaErrorCode::OutOfOrderSequenceNumber
                    | RDKafkaErrorCode::InvalidProducerEpoch
            )
        });
        if fatal.is_none() && !lost_state {
            return;
        }
        tracing::error!(fatal = ?fatal, errors = ?codes, "producer state lost; recreating the producer");
        self.restart_producer();
    }

    /// Completes when the brokers return after the outage this producer was created before.
    fn brokers_returned(&self) -> impl Future<Output = ()> + Send + 'static {
        let (mut returns, generation) = (self.returns.clone(), self.generation);
        async move {
            if returns.wait_for(|n| *n != generation).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

#[async_trait]
impl Sink for KafkaSink {
    async fn prepare(&mut self) -> Result<(), String> {
        self.restart_if_brokers_returned();
        if self.config.create_topic {
            self.ensure_topic().await?;
        }
        Ok(())
    }

    async fn deliver(&mut self, batch: &[Event]) -> Vec<usize> {
        if *self.returns.borrow() != self.generation {
            // The brokers returned since `prepare`: the topic may be gone. The publisher prepares
            // again at once (see `recovered`), which restarts the producer too.
            return Vec::new();
        }
        let mut pending = Vec::with_capacity(batch.len());
        for (i, event) in batch.iter().enumerate() {
            match self
                .producer
                .send_result(event_record(&self.config.topic, event))
            {
                Ok(delivery) => pending.push((i, delivery)),
                Err((e, _)) => {
                    // Queue full or producer failed: deliver what is queued, retry the rest later.
                    tracing::warn!(error = %e, "cannot enqueue event");
                    break;
                }
            }
        }
        let (positions, deliveries): (Vec<usize>, Vec<_>) = pending.into_iter().unzip();
        let mut results = std::pin::pin!(join_all(deliveries));
        let results = tokio::select! {
            results = &mut results => results,
            () = self.brokers_returned() => {
                // What waits in this producer may wait for a topic or a producer id the returned
                // broker no longer has. Purged, it fails now and stays in the outbox, and the
                // publisher sends it again at once through a fresh producer.
                self.producer.purge(PurgeConfig::default().queue().inflight());
                results.await
            }
        };
        let mut acked = Vec::with_capacity(positions.len());
        let mut failed = 0usize;
        let mut codes = Vec::new();
        for (i, result) in positions.into_iter().zip(results) {
            match result {
                Ok(Ok(_)) => acked.push(i),
                Ok(Err(e)) => {
                    failed += 1;
                    if failed == 1 {
                        tracing::warn!(error = %e, "kafka delivery failed");
                    }
                    codes.extend(e.rdkafka_error_code());
                }
                Err(_) => failed += 1,
            }
        }
        codes.sort_by_key(|c| *c as i32);
        codes.dedup();
        if failed > 0 {
            crate::metrics::get()
                .kafka_delivery_errors
                .inc_by(failed as u64);
            tracing::warn!(failed, "kafka deliveries failed; they stay in the outbox");
            self.recover(&codes);
        }
        acked
    }

    fn recovered(&self) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(self.brokers_returned())
    }
}

/// Probes the brokers every two seconds and reports reachability to `readiness` until `shutdown`.
/// An outage's start and end are logged once each, at WARN; its end also makes every sink restart
/// its producer and prepare again (see [`BROKER_RETURNS`]).
pub async fn probe(
    config: KafkaConfig,
    readiness: Arc<Readiness>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut settings = client_config(&config);
    // Asking for the topic's metadata must not create it with the broker's defaults, and a probe
    // that never produces needs no producer id.
    settings
        .set("allow.auto.create.topics", "false")
        .set("enable.idempotence", "false");
    let context = KafkaContext::default();
    let all_brokers_down = context.all_brokers_down.clone();
    let client: Arc<KafkaProducer> = match KafkaProducer::new(&settings, context) {
        Ok(p) => Arc::new(p),
        Err(e) => {
            tracing::error!(error = %creation_error(&e), "cannot create the kafka probe");
            return;
        }
    };
    let mut reachable = None;
    let (mut losses, mut returned, mut had_topic) = (0, false, false);
    loop {
        let (probe, topic) = (client.clone(), config.topic.clone());
        let (ok, has_topic) = tokio::task::spawn_blocking(move || {
            match probe
                .client()
                .fetch_metadata(Some(&topic), Duration::from_secs(2))
            {
                Ok(md) => (
                    true,
                    md.topics()
                        .iter()
                        .any(|t| t.name() == topic && t.error().is_none()),
                ),
                Err(_) => (false, false),
            }
        })
        .await
        .unwrap_or((false, false));
        // A broker that restarted between two probes shows only as a lost connection, or not at
        // all when librdkafka reconnects first; a broker that lost its state also lost the topic,
        // which the metadata shows. On the probe after a return, a loss reported late by
        // librdkafka's event queue is the old outage: skip it.
        let seen = all_brokers_down.load(Ordering::Relaxed);
        let vanished = ok && had_topic && !has_topic;
        if ok {
            had_topic = has_topic;
        }
        let bounced = (std::mem::replace(&mut losses, seen) != seen || vanished) && !returned;
        returned = reachable == Some(false) && ok;
        readiness.kafka_reachable(ok);
        match (reachable, ok) {
            (None, true) => tracing::info!("kafka reachable"),
            (Some(false), true) => {
                tracing::warn!("kafka up: the brokers answer again; delivery resumes");
                BROKER_RETURNS.send_modify(|n| *n += 1);
            }
            (Some(true), true) if bounced => {
                tracing::warn!("kafka down and up again between two probes; delivery resumes");
                BROKER_RETURNS.send_modify(|n| *n += 1);
            }
            (None | Some(true), false) => {
                tracing::warn!("kafka down: no broker answers; events wait in the outbox");
            }
            _ => {}
        }
        reachable = Some(ok);
        tokio::select! {
            _ = tokio::time::sleep(PROBE_INTERVAL) => {}
            _ = shutdown.changed() => break,
        }
    }
    off_worker(move || drop(client));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A property librdkafka refuses is named, its value (a secret, as every `kafka.properties`
    /// value is taken to be) never said: librdkafka's message and rust-rdkafka's `Display` quote it.
    #[test]
    fn a_refused_property_is_named_without_its_value() {
        let config = KafkaConfig {
            brokers: "127.0.0.1:9".into(),
            topic: "t".into(),
            create_topic: false,
            partitions: 1,
            replication_factor: -1,
            properties: vec![(
                "socket.timeout.ms".into(),
                "hunter2-s3cret".to_owned().into(),
            )],
        };
        let e = KafkaProducer::new(&client_config(&config), KafkaContext::default())
            .err()
            .expect("refused");
        assert!(
            e.to_string().contains("hunter2-s3cret"),
            "the raw error quotes it: {e}"
        );
        let said = creation_error(&e);
        assert!(!said.contains("hunter2-s3cret"), "{said}");
        assert!(said.contains("socket.timeout.ms"), "{said}");
    }
}
