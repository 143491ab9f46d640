//! The Kafka sink: an idempotent, `acks=all` producer; value = CloudEvent JSON, key =
//! `<host>/<repository>`, header `content-type: application/cloudevents+json`.

use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::join_all;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, FutureProducer, FutureRecord, Producer};
use secrecy::ExposeSecret;

use std::sync::Arc;

use tokio::sync::watch;

use super::Sink;
use crate::admin::Readiness;
use crate::config::KafkaConfig;
use crate::event::Event;

/// The CloudEvents structured-mode content type.
pub const CONTENT_TYPE: &str = "application/cloudevents+json";

/// Publishes events to one topic.
pub struct KafkaSink {
    config: KafkaConfig,
    producer: FutureProducer,
}

/// The librdkafka settings: the user's `[kafka.properties]`, then the ones delivery guarantees
/// rest on, which are not negotiable.
pub fn client_config(config: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers)
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("message.timeout.ms", "30000");
    for (key, value) in &config.properties {
        c.set(key, value.expose_secret());
    }
    c.set("enable.idempotence", "true").set("acks", "all");
    c
}

impl KafkaSink {
    /// Creates the producer (it connects lazily; an unreachable broker is not an error here).
    pub fn new(config: &KafkaConfig) -> Result<Self, KafkaError> {
        let producer = client_config(config).create()?;
        Ok(KafkaSink {
            config: config.clone(),
            producer,
        })
    }

    /// Creates the topic if it is missing.
    async fn ensure_topic(&self) -> Result<(), String> {
        let admin: AdminClient<DefaultClientContext> = client_config(&self.config)
            .create()
            .map_err(|e| format!("kafka admin client: {e}"))?;
        let replication = TopicReplication::Fixed(self.config.replication_factor);
        let topic = NewTopic::new(&self.config.topic, self.config.partitions, replication);
        let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
        let results = admin
            .create_topics([&topic], &options)
            .await
            .map_err(|e| format!("create topic {}: {e}", self.config.topic))?;
        for result in results {
            match result {
                Ok(_) => tracing::info!(topic = %self.config.topic, "created topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => return Err(format!("create topic {topic}: {code}")),
            }
        }
        Ok(())
    }

    /// A fatal error, or a broker that lost the idempotent producer's state (a restarted broker
    /// answers ProducerFenced, UnknownProducerId or OutOfOrderSequenceNumber), poisons the producer:
    /// start a fresh one with a new producer id. The outbox still holds every unacknowledged event.
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
        match client_config(&self.config).create() {
            Ok(p) => self.producer = p,
            Err(e) => tracing::error!(error = %e, "cannot recreate the producer"),
        }
    }
}

#[async_trait]
impl Sink for KafkaSink {
    async fn prepare(&mut self) -> Result<(), String> {
        if self.config.create_topic {
            self.ensure_topic().await?;
        }
        Ok(())
    }

    async fn deliver(&mut self, batch: &[Event]) -> Vec<usize> {
        let headers = OwnedHeaders::new().insert(Header {
            key: "content-type",
            value: Some(CONTENT_TYPE),
        });
        let mut pending = Vec::with_capacity(batch.len());
        for (i, event) in batch.iter().enumerate() {
            let record = FutureRecord::to(&self.config.topic)
                .key(&event.key)
                .payload(&event.payload)
                .headers(headers.clone());
            match self.producer.send_result(record) {
                Ok(delivery) => pending.push((i, delivery)),
                Err((e, _)) => {
                    // Queue full or producer failed: deliver what is queued, retry the rest later.
                    tracing::warn!(error = %e, "cannot enqueue event");
                    break;
                }
            }
        }
        let (positions, deliveries): (Vec<usize>, Vec<_>) = pending.into_iter().unzip();
        let mut acked = Vec::with_capacity(positions.len());
        let mut failed = 0usize;
        let mut codes = Vec::new();
        for (i, result) in positions.into_iter().zip(join_all(deliveries).await) {
            match result {
                Ok(Ok(_)) => acked.push(i),
                Ok(Err((e, _))) => {
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
}

/// Probes the brokers every two seconds and reports reachability to `readiness` until `shutdown`.
pub async fn probe(
    config: KafkaConfig,
    readiness: Arc<Readiness>,
    mut shutdown: watch::Receiver<bool>,
) {
    let client: Arc<BaseProducer> = match client_config(&config).create() {
        Ok(p) => Arc::new(p),
        Err(e) => {
            tracing::error!(error = %e, "cannot create the kafka probe");
            return;
        }
    };
    let mut was = None;
    loop {
        let (probe, topic) = (client.clone(), config.topic.clone());
        let ok = tokio::task::spawn_blocking(move || {
            probe
                .client()
                .fetch_metadata(Some(&topic), Duration::from_secs(2))
                .is_ok()
        })
        .await
        .unwrap_or(false);
        readiness.kafka_reachable(ok);
        if was != Some(ok) {
            if ok {
                tracing::info!("kafka reachable");
            } else {
                tracing::warn!("kafka unreachable");
            }
            was = Some(ok);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

impl Drop for KafkaSink {
    fn drop(&mut self) {
        // Everything delivered was already awaited; this only bounds shutdown on a stuck broker.
        let _ = self.producer.flush(Duration::from_secs(5));
    }
}
