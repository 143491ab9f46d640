//! The Kafka sink: an idempotent, `acks=all` producer; value = CloudEvent JSON, key =
//! `<host>/<repository>`, header `content-type: application/cloudevents+json`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, RwLock};
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

/// The brokers as [`probe`] sees them, one value so that a sink reads both halves together.
#[derive(Clone, Copy, Debug, Default)]
struct Brokers {
    /// Counts the brokers' returns after an outage. A sink that sees it change purges what its
    /// producer holds and starts a fresh one, and the publisher prepares it again at once: a
    /// broker that lost its state (Tansu's memory engine, a rebuilt cluster) lost the topic and
    /// the idempotent producer's id too, and the old producer would only find out when its
    /// deliveries time out (`message.timeout.ms`, 30 s by default) or are fenced.
    returns: u64,
    /// No broker answers. Meanwhile a sink hands nothing to its producer, and what its producer
    /// holds goes back to the outbox: held in librdkafka, it would go out the moment a connection
    /// returns, before the return was seen and the sink prepared again (a broker that lost its
    /// state may take records for a topic it no longer lists).
    down: bool,
}

impl Brokers {
    /// Takes in a probe's `turn` and verdict; says whether anything changed.
    fn take(&mut self, turn: Option<Turn>, down: bool) -> bool {
        let returned = matches!(turn, Some(Turn::Up | Turn::Bounced));
        self.returns += u64::from(returned);
        let was_down = std::mem::replace(&mut self.down, down);
        returned || was_down != down
    }
}

/// The one probe's view of the brokers, for every sink of the process.
static BROKERS: LazyLock<watch::Sender<Brokers>> =
    LazyLock::new(|| watch::channel(Brokers::default()).0);

/// Set when a sink has created the topic or found it there, and taken by the next [`probe`]: a
/// broker that restarts between the topic's creation and the first probe that would have listed
/// it loses the topic unseen.
static TOPIC_CONFIRMED: AtomicBool = AtomicBool::new(false);

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
    /// [`BROKERS`], and the count of returns the current producer was created after.
    brokers: watch::Receiver<Brokers>,
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
        // An event leaves the outbox on its delivery report: success must be reported too.
        .set("delivery.report.only.error", "false")
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

/// Whether `producer`, which failed with `codes`, fails every later produce too, and must be
/// replaced by a fresh one (a new producer id): librdkafka flagged a fatal error, or the broker
/// lost or fenced the idempotent producer's state (a restarted broker answers
/// UnknownProducerId or OutOfOrderSequenceNumber; one paused past the request timeout may fence
/// the epoch librdkafka bumped meanwhile, as Tansu does). Logged at ERROR when so.
fn state_lost(producer: &KafkaProducer, codes: &[RDKafkaErrorCode]) -> bool {
    let fatal = producer.client().fatal_error();
    let lost = codes.iter().any(|c| {
        matches!(
            c,
            RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::UnknownProducerId
                | RDKafkaErrorCode::OutOfOrderSequenceNumber
                | RDKafkaErrorCode::InvalidProducerEpoch
        )
    });
    if fatal.is_some() || lost {
        tracing::error!(fatal = ?fatal, errors = ?codes, "producer state lost; recreating the producer");
    }
    fatal.is_some() || lost
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
        let brokers = BROKERS.subscribe();
        let generation = brokers.borrow().returns;
        Ok(KafkaSink {
            config: config.clone(),
            producer: Retiring(Some(KafkaProducer::new(
                &client_config(config),
                KafkaContext::default(),
            )?)),
            brokers,
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
        // `operation_timeout`: the answer waits for the topic to be created, not just accepted, so
        // that the probe finds it listed once the sink says it exists (`TOPIC_CONFIRMED`); the
        // request's own timeout is longer, so that the broker's answer comes first.
        let options = AdminOptions::new()
            .request_timeout(Some(Duration::from_secs(15)))
            .operation_timeout(Some(Duration::from_secs(10)));
        let results = admin.create_topics([&topic], &options).await;
        off_worker(move || drop(admin));
        for result in results.map_err(|e| format!("create topic {}: {e}", self.config.topic))? {
            match result {
                Ok(_) => tracing::info!(topic = %self.config.topic, "created topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => return Err(format!("create topic {topic}: {code}")),
            }
        }
        TOPIC_CONFIRMED.store(true, Ordering::Relaxed);
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
        let latest = self.brokers.borrow().returns;
        if latest != self.generation {
            self.generation = latest;
            tracing::info!("kafka is back after an outage; restarting the producer");
            self.restart_producer();
        }
    }

    /// A producer that failed with `codes` for good is replaced by a fresh one (see
    /// [`state_lost`]).
    fn recover(&mut self, codes: &[RDKafkaErrorCode]) {
        if state_lost(&self.producer, codes) {
            self.restart_producer();
        }
    }

    /// Completes when `now` holds of the brokers.
    fn brokers_turn(
        &self,
        now: impl Fn(&Brokers) -> bool + Send + 'static,
    ) -> impl Future<Output = ()> + Send + 'static {
        let mut brokers = self.brokers.clone();
        async move {
            // `BROKERS` is a static: its sender is never dropped.
            let _ = brokers.wait_for(now).await;
        }
    }

    /// Completes when the brokers return after the outage this producer was created before.
    fn brokers_returned(&self) -> impl Future<Output = ()> + Send + 'static {
        let generation = self.generation;
        self.brokers_turn(move |b| b.returns != generation)
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
        let brokers = *self.brokers.borrow();
        if brokers.returns != self.generation || brokers.down {
            // The brokers returned since `prepare` (the topic may be gone), or are down. The
            // outbox holds the batch; the publisher prepares again as soon as they are back (see
            // `recovered`), which restarts the producer too.
            return Vec::new();
        }
        let mut pending = Vec::with_capacity(batch.len());
        // The codes of what failed: a producer that failed for good is replaced (see `recover`).
        let mut codes = Vec::new();
        for (i, event) in batch.iter().enumerate() {
            match self
                .producer
                .send_result(event_record(&self.config.topic, event))
            {
                Ok(delivery) => pending.push((i, delivery)),
                Err((e, _)) => {
                    // Queue full or producer failed: deliver what is queued, retry the rest later.
                    tracing::warn!(error = %e, "cannot enqueue event");
                    codes.extend(e.rdkafka_error_code());
                    break;
                }
            }
        }
        let (positions, deliveries): (Vec<usize>, Vec<_>) = pending.into_iter().unzip();
        let mut results = std::pin::pin!(join_all(deliveries));
        let (returned, down) = (self.brokers_returned(), self.brokers_turn(|b| b.down));
        let results = tokio::select! {
            results = &mut results => results,
            // What waits in this producer may wait for a topic or a producer id a returned broker
            // no longer has, or, while the brokers are down, go out to one before the sink was
            // prepared again (`Brokers::down`). Purged, it fails now and stays in the outbox, and
            // the publisher sends it again through a fresh producer once the brokers are back.
            () = async { tokio::select! { () = returned => {}, () = down => {} } } => {
                self.producer.purge(PurgeConfig::default().queue().inflight());
                results.await
            }
        };
        let mut acked = Vec::with_capacity(positions.len());
        let mut failed = 0usize;
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
        }
        if !codes.is_empty() || failed > 0 {
            self.recover(&codes);
        }
        acked
    }

    fn recovered(&self) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(self.brokers_returned())
    }
}

/// What one probe saw.
#[derive(Clone, Copy, Debug)]
struct Probed {
    /// A broker answered the metadata request.
    ok: bool,
    /// The answer listed the topic without an error.
    has_topic: bool,
    /// librdkafka's count of "all brokers down" reports so far.
    losses: u64,
    /// A sink created or found the topic since the previous probe ([`TOPIC_CONFIRMED`]).
    confirmed: bool,
}

/// A change in the brokers' state that the probe reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Turn {
    /// The first answer.
    Reachable,
    /// No broker answers.
    Down,
    /// The brokers answer again after an outage the probe saw.
    Up,
    /// The brokers went down and came back between two probes.
    Bounced,
}

/// What the probe remembers from one probe to the next.
#[derive(Debug, Default)]
struct ProbeMemory {
    /// The last verdict: `None` before the first answer.
    reachable: Option<bool>,
    /// Failed probes in a row.
    failures: u32,
    losses: u64,
    /// The previous probe saw the brokers return.
    returned: bool,
    had_topic: bool,
    /// A sink's confirmation of the topic is not taken for a listing: set by a bounce, until the
    /// metadata lists the topic again, so a topic never listed bounces once, not every probe.
    doubt_confirmed: bool,
}

impl ProbeMemory {
    /// Whether the brokers are down, as far as the probe knows.
    fn down(&self) -> bool {
        self.reachable == Some(false)
    }

    /// Takes in one probe's answer and says what changed.
    ///
    /// A failure is an outage when librdkafka reported every broker down meanwhile, when it is
    /// the second in a row, or at the first probe: one slow answer from brokers still connected
    /// is not. A broker that restarted between two probes shows only as a lost connection, or not
    /// at all when librdkafka reconnects first; a broker that lost its state also lost the topic,
    /// which the metadata shows when a probe (or, once, a sink's confirmation) saw it before. On
    /// the probe after a return, a loss reported late by librdkafka's event queue is the old
    /// outage: skip it.
    fn observe(&mut self, seen: Probed) -> Option<Turn> {
        let lost = std::mem::replace(&mut self.losses, seen.losses) != seen.losses;
        if !seen.ok {
            self.failures += 1;
            let outage = lost || self.failures >= 2 || self.reachable.is_none();
            if !outage || self.down() {
                return None;
            }
            self.reachable = Some(false);
            self.returned = false;
            return Some(Turn::Down);
        }
        self.failures = 0;
        let listed = self.had_topic || (seen.confirmed && !self.doubt_confirmed);
        let vanished = listed && !seen.has_topic;
        self.had_topic = seen.has_topic;
        if seen.has_topic {
            self.doubt_confirmed = false;
        }
        let is_return = self.down();
        let returned = std::mem::replace(&mut self.returned, is_return);
        let turn = match self.reachable {
            None => Some(Turn::Reachable),
            Some(false) => Some(Turn::Up),
            Some(true) if (lost || vanished) && !returned => Some(Turn::Bounced),
            Some(true) => None,
        };
        if turn == Some(Turn::Bounced) {
            self.doubt_confirmed = true;
        }
        self.reachable = Some(true);
        turn
    }
}

/// A producer shared by its users (cluster mode's store, and a [`probe`] asking for metadata),
/// with the count of its "all brokers down" reports; replaced in place when its state is lost.
/// (No `Debug`: its config holds `kafka.properties`, which are secrets.)
#[derive(Clone)]
pub struct SharedProducer {
    /// The producer now, and how many producers it replaced (its generation).
    current: Arc<RwLock<(Arc<KafkaProducer>, u64)>>,
    /// What a fresh producer is made of: librdkafka's settings are built again from it, so that
    /// no plain copy of the properties is kept.
    config: KafkaConfig,
    idempotent: bool,
    losses: Arc<AtomicU64>,
}

impl SharedProducer {
    /// A client of the probe's own: it never produces, so it needs no producer id.
    pub fn own(config: &KafkaConfig) -> Result<SharedProducer, String> {
        SharedProducer::with(config, false)
    }

    /// An idempotent producer of `config` whose client a probe may share (cluster mode's
    /// producer): one client fewer in the process, so fewer threads waking while idle.
    pub fn new(config: &KafkaConfig) -> Result<SharedProducer, String> {
        SharedProducer::with(config, true)
    }

    fn with(config: &KafkaConfig, idempotent: bool) -> Result<SharedProducer, String> {
        let losses = Arc::new(AtomicU64::new(0));
        let producer = Self::create(config, idempotent, &losses)?;
        Ok(SharedProducer {
            current: Arc::new(RwLock::new((Arc::new(producer), 0))),
            config: config.clone(),
            idempotent,
            losses,
        })
    }

    fn create(
        config: &KafkaConfig,
        idempotent: bool,
        losses: &Arc<AtomicU64>,
    ) -> Result<KafkaProducer, String> {
        let mut settings = client_config(config);
        if !idempotent {
            settings.set("enable.idempotence", "false");
        }
        let context = KafkaContext {
            all_brokers_down: losses.clone(),
        };
        KafkaProducer::new(&settings, context).map_err(|e| creation_error(&e))
    }

    /// The producer now.
    pub fn producer(&self) -> Arc<KafkaProducer> {
        self.generation().0
    }

    /// The producer now and its generation: 0 for the first, one more for each replacement.
    pub fn generation(&self) -> (Arc<KafkaProducer>, u64) {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces `failed`, which failed with `code`, by a fresh producer if its state is lost
    /// (see [`state_lost`]) and no other user replaced it already. Its outage count carries on.
    /// Takes the caller's handle, so that the old client (whose destruction flushes and joins
    /// threads) ends on the blocking pool rather than on the caller's thread.
    pub fn renew_if_lost(&self, failed: Arc<KafkaProducer>, code: Option<RDKafkaErrorCode>) {
        let lost = Arc::ptr_eq(&self.producer(), &failed) && state_lost(&failed, code.as_slice());
        if lost {
            // Made outside the lock: creating a client may read files or run a Kerberos kinit.
            match Self::create(&self.config, self.idempotent, &self.losses) {
                Ok(fresh) => {
                    let mut current = self
                        .current
                        .write()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    // Another user may have replaced it meanwhile: then the fresh one goes.
                    let old = if Arc::ptr_eq(&current.0, &failed) {
                        let generation = current.1 + 1;
                        std::mem::replace(&mut *current, (Arc::new(fresh), generation)).0
                    } else {
                        Arc::new(fresh)
                    };
                    drop(current);
                    off_worker(move || drop(old));
                }
                Err(e) => tracing::error!(error = %e, "cannot recreate the producer"),
            }
        }
        off_worker(move || drop(failed));
    }
}

/// Clears [`Brokers::down`] when the probe that sets it ends.
struct ClearDownOnDrop;

impl Drop for ClearDownOnDrop {
    fn drop(&mut self) {
        BROKERS.send_if_modified(|b| std::mem::replace(&mut b.down, false));
    }
}

/// Probes the brokers every two seconds and reports reachability to `readiness` until `shutdown`.
/// An outage's start and end are logged once each, at WARN; its end also makes every sink restart
/// its producer and prepare again (see [`Brokers`]).
pub async fn probe(
    config: KafkaConfig,
    client: SharedProducer,
    readiness: Arc<Readiness>,
    mut shutdown: watch::Receiver<bool>,
) {
    let all_brokers_down = client.losses.clone();
    // A probe that ends (shutdown, a reload's new probe taking over) leaves no sink held back.
    let _clear = ClearDownOnDrop;
    let mut memory = ProbeMemory::default();
    loop {
        let failed = client.producer();
        if failed.client().fatal_error().is_some() {
            // Fatal while idle (cluster mode's producer): replaced before its next write fails.
            // On the blocking pool: creating a client can block (a Kerberos kinit, files read).
            let client = client.clone();
            let renewed = tokio::task::spawn_blocking(move || client.renew_if_lost(failed, None));
            if let Err(e) = renewed.await {
                tracing::error!(error = %e, "replacing the fatal producer failed");
            }
        }
        let (probe, topic) = (client.producer(), config.topic.clone());
        let confirmed = TOPIC_CONFIRMED.swap(false, Ordering::Relaxed);
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
        if confirmed && !ok {
            // Kept for the next probe that gets an answer.
            TOPIC_CONFIRMED.store(true, Ordering::Relaxed);
        }
        let seen = Probed {
            ok,
            has_topic,
            losses: all_brokers_down.load(Ordering::Relaxed),
            confirmed,
        };
        let turn = memory.observe(seen);
        let down = memory.down();
        readiness.kafka_reachable(!down);
        BROKERS.send_if_modified(|b| b.take(turn, down));
        match turn {
            Some(Turn::Reachable) => tracing::info!("kafka reachable"),
            Some(Turn::Up) => {
                tracing::warn!("kafka up: the brokers answer again; delivery resumes")
            }
            Some(Turn::Bounced) => {
                tracing::warn!("kafka down and up again between two probes; delivery resumes")
            }
            Some(Turn::Down) => {
                tracing::warn!("kafka down: no broker answers; events wait in the outbox")
            }
            None => {}
        }
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

    /// Held by the tests that run a `KafkaSink`: they share the process's [`BROKERS`].
    static SINKS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    fn probed(ok: bool, has_topic: bool, losses: u64, confirmed: bool) -> Probed {
        Probed {
            ok,
            has_topic,
            losses,
            confirmed,
        }
    }

    /// Cluster mode's producer, fenced while nothing was written (the broker fences its first
    /// InitProducerId, fatal to librdkafka), is replaced by the probe that shares it, before a
    /// write (or a hint) fails on it.
    #[tokio::test(flavor = "multi_thread")]
    async fn the_probe_replaces_a_shared_producer_fenced_while_idle() {
        let _sinks = SINKS.lock().await;
        let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
        cluster.create_topic("t", 1, 1).unwrap();
        cluster.request_errors(
            rdkafka::types::RDKafkaApiKey::InitProducerId,
            &[rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_PRODUCER_FENCED],
        );
        let config = test_config(cluster.bootstrap_servers(), &[]);
        let shared = SharedProducer::new(&config).unwrap();
        let first = shared.producer();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while first.client().fatal_error().is_none() {
            assert!(std::time::Instant::now() < deadline, "never fenced");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (stop, shutdown) = watch::channel(false);
        let readiness = Arc::new(Readiness::new(Vec::<String>::new(), true));
        let probing = tokio::spawn(probe(config, shared.clone(), readiness, shutdown));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while Arc::ptr_eq(&shared.producer(), &first) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = stop.send(true);
        probing.await.unwrap();
        let now = shared.producer();
        assert!(!Arc::ptr_eq(&now, &first), "the fenced producer was kept");
        assert!(now.client().fatal_error().is_none());
    }

    /// The config of a test on topic `t` of `brokers`, with `properties`.
    fn test_config(brokers: impl Into<String>, properties: &[(&str, &str)]) -> KafkaConfig {
        KafkaConfig {
            brokers: brokers.into(),
            topic: "t".into(),
            create_topic: false,
            partitions: 1,
            replication_factor: -1,
            properties: properties
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned().into()))
                .collect(),
        }
    }

    /// What a fresh probe reports for each of `probes` in turn.
    fn turns(probes: &[Probed]) -> Vec<Option<Turn>> {
        let mut memory = ProbeMemory::default();
        probes.iter().map(|seen| memory.observe(*seen)).collect()
    }

    /// Events a sink's producer holds when the probe finds the brokers down go back to the outbox
    /// at once, and none is handed over until the probe sees them again: held by librdkafka, they
    /// would go out on the first connection to a returned broker, before the sink prepared it.
    #[tokio::test(flavor = "multi_thread")]
    async fn an_outage_the_probe_reports_sends_what_waits_back_to_the_outbox() {
        let _sinks = SINKS.lock().await;
        /// Whatever the test's outcome, the process's sinks are not left held back.
        struct Up;
        impl Drop for Up {
            fn drop(&mut self) {
                BROKERS.send_modify(|b| b.down = false);
            }
        }
        let _up = Up;
        let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
        cluster.create_topic("t", 1, 1).unwrap();
        let brokers = cluster.bootstrap_servers();
        let config = test_config(brokers.clone(), &[]);
        let events: Vec<Event> = (0..3)
            .map(|i| Event {
                id: format!("id-{i}"),
                key: "k".into(),
                payload: format!("{{\"n\":{i}}}"),
            })
            .collect();
        let read_back = move || {
            use rdkafka::consumer::{BaseConsumer, Consumer};
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("group.id", "t")
                .create()
                .unwrap();
            let mut tpl = rdkafka::TopicPartitionList::new();
            tpl.add_partition_offset("t", 0, rdkafka::Offset::Beginning)
                .unwrap();
            consumer.assign(&tpl).unwrap();
            let started = std::time::Instant::now();
            let mut read = 0;
            while started.elapsed() < Duration::from_secs(3) {
                if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
                    read += 1;
                }
            }
            read
        };

        let mut sink = KafkaSink::new(&config).unwrap();
        cluster.broker_down(1).unwrap();
        let batch = events.clone();
        let delivery = tokio::spawn(async move {
            let acked = sink.deliver(&batch).await;
            (sink, acked)
        });
        // The batch is queued in librdkafka, waiting for the broker.
        tokio::time::sleep(Duration::from_millis(500)).await;
        BROKERS.send_modify(|b| b.down = true);
        let outcome = tokio::time::timeout(Duration::from_secs(5), delivery).await;
        let (mut sink, acked) = outcome
            .expect("the delivery ends when the outage is reported, not at message.timeout.ms")
            .unwrap();
        assert!(
            acked.is_empty(),
            "acknowledged during the outage: {acked:?}"
        );
        {
            use rdkafka::producer::Producer;
            assert_eq!(
                sink.producer.in_flight_count(),
                0,
                "the queued batch was purged, not left to go out on the broker's return"
            );
        }
        assert!(
            sink.deliver(&events).await.is_empty(),
            "nothing is handed over while the brokers are down"
        );

        cluster.broker_up(1).unwrap();
        let read = tokio::task::spawn_blocking(read_back.clone())
            .await
            .unwrap();
        assert_eq!(
            read, 0,
            "records reached the broker before the probe saw it back"
        );

        // Once the brokers are back the same events go out, once.
        BROKERS.send_modify(|b| b.down = false);
        assert_eq!(sink.deliver(&events).await, [0, 1, 2]);
        drop(sink);
        assert_eq!(tokio::task::spawn_blocking(read_back).await.unwrap(), 3);
    }

    /// Delivery reports are how an event leaves the outbox: a `kafka.properties` that asks
    /// librdkafka to report only failures would leave every delivery waiting for good.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_property_that_silences_delivery_reports_is_overridden() {
        let _sinks = SINKS.lock().await;
        let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
        cluster.create_topic("t", 1, 1).unwrap();
        let config = test_config(
            cluster.bootstrap_servers(),
            &[("delivery.report.only.error", "true")],
        );
        let mut sink = KafkaSink::new(&config).unwrap();
        let event = Event {
            id: "id".into(),
            key: "k".into(),
            payload: "{}".into(),
        };
        let acked = tokio::time::timeout(Duration::from_secs(10), sink.deliver(&[event])).await;
        assert_eq!(acked.expect("the delivery was reported"), [0]);
    }

    /// What sinks see across an outage: down while it lasts, and on the return both a new
    /// generation (a fresh producer, the topic prepared again) and the down flag cleared, at once.
    #[test]
    fn the_brokers_value_follows_the_probe() {
        let mut memory = ProbeMemory::default();
        let mut brokers = Brokers::default();
        let mut seen = Vec::new();
        for probe in [
            probed(true, true, 0, false),
            probed(false, false, 1, false),
            probed(false, false, 1, false),
            probed(true, true, 1, false),
            probed(true, true, 1, false),
        ] {
            let turn = memory.observe(probe);
            brokers.take(turn, memory.down());
            seen.push((brokers.returns, brokers.down));
        }
        assert_eq!(
            seen,
            [(0, false), (0, true), (0, true), (1, false), (1, false)]
        );
    }

    /// An outage the probe sees is reported once at each end; a loss librdkafka reports late,
    /// after the return, is the same outage.
    #[test]
    fn an_outage_is_reported_at_its_start_and_its_end_once() {
        let turns = turns(&[
            probed(true, true, 0, false),
            probed(false, false, 1, false),
            probed(false, false, 2, false),
            probed(true, false, 2, false),
            probed(true, true, 3, false),
            probed(true, true, 3, false),
        ]);
        assert_eq!(
            turns,
            [
                Some(Turn::Reachable),
                Some(Turn::Down),
                None,
                Some(Turn::Up),
                None,
                None
            ]
        );
    }

    /// A restart between two probes shows as a loss librdkafka reported, or as a topic listed by
    /// one probe and missing from the next.
    #[test]
    fn a_restart_between_two_probes_is_a_bounce() {
        let mut memory = ProbeMemory::default();
        memory.observe(probed(true, true, 0, false));
        assert_eq!(
            memory.observe(probed(true, true, 1, false)),
            Some(Turn::Bounced)
        );
        assert_eq!(
            memory.observe(probed(true, false, 1, false)),
            Some(Turn::Bounced)
        );
        assert_eq!(memory.observe(probed(true, false, 1, false)), None);
    }

    /// One metadata request slower than the probe's timeout, on brokers librdkafka still has
    /// connections to, is no outage: taken for one, it would purge and re-send what is in flight.
    /// A second failure in a row is, and so is one librdkafka reports as every broker down.
    #[test]
    fn one_slow_probe_is_not_an_outage() {
        let mut memory = ProbeMemory::default();
        let turns: Vec<_> = [
            probed(true, true, 0, false),
            probed(false, false, 0, false),
            probed(true, true, 0, false),
            probed(false, false, 0, false),
            probed(false, false, 0, false),
            probed(true, true, 0, false),
            probed(false, false, 1, false),
        ]
        .into_iter()
        .map(|seen| (memory.observe(seen), memory.down()))
        .collect();
        assert_eq!(
            turns,
            [
                (Some(Turn::Reachable), false),
                (None, false),
                (None, false),
                (None, false),
                (Some(Turn::Down), true),
                (Some(Turn::Up), false),
                (Some(Turn::Down), true),
            ]
        );
    }

    /// A topic a sink confirmed that the metadata never lists (an authorisation error on it, a
    /// topic marked for deletion) is one bounce, not one every probe: each would purge and
    /// restart the producer. Once listed, a loss of it counts again (and a confirmation only
    /// after the topic is listed once more).
    #[test]
    fn a_confirmed_topic_never_listed_bounces_once() {
        let turns = turns(&[
            probed(true, false, 0, false),
            probed(true, false, 0, true),
            probed(true, false, 0, true),
            probed(true, false, 0, true),
            probed(true, true, 0, false),
            probed(true, false, 0, false),
            probed(true, false, 0, true),
            probed(true, false, 0, true),
        ]);
        assert_eq!(
            turns,
            [
                Some(Turn::Reachable),
                Some(Turn::Bounced),
                None,
                None,
                None,
                Some(Turn::Bounced),
                None,
                None,
            ]
        );
    }

    /// The topic a sink created after the first probe, lost in a restart before the second: no
    /// probe ever listed it, yet the producer waits on it (30 s of `message.timeout.ms`) unless
    /// the restart is noticed. Once noticed, a topic still missing at the next probe is not a
    /// second restart.
    #[test]
    fn a_topic_created_then_lost_before_any_probe_listed_it_is_a_bounce() {
        let mut memory = ProbeMemory::default();
        assert_eq!(
            memory.observe(probed(true, false, 0, false)),
            Some(Turn::Reachable)
        );
        assert_eq!(
            memory.observe(probed(true, false, 0, true)),
            Some(Turn::Bounced)
        );
        assert_eq!(memory.observe(probed(true, false, 0, false)), None);
        assert_eq!(memory.observe(probed(true, true, 0, true)), None);
    }

    /// A property librdkafka refuses is named, its value (a secret, as every `kafka.properties`
    /// value is taken to be) never said: librdkafka's message and rust-rdkafka's `Display` quote it.
    #[test]
    fn a_refused_property_is_named_without_its_value() {
        let config = test_config("127.0.0.1:9", &[("socket.timeout.ms", "hunter2-s3cret")]);
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
