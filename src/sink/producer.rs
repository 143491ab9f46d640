//! A Kafka producer that costs nothing while idle.
//!
//! rust-rdkafka's `FutureProducer` serves delivery reports from a thread that polls every 100 ms,
//! and its poll loop busy-waits the last fraction of a millisecond of each wait (it converts the
//! time left to whole milliseconds, so the last wait is 0 ms, repeated until the deadline): about
//! 1 % of a core per producer with nothing to do (`perf` shows that thread in `clock_gettime`).
//! Here the thread waits for reports only while a delivery is outstanding, and otherwise sleeps,
//! waking once a second for librdkafka's logs and errors, or at once when a record is sent.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, FutureRecord, ProducerContext};
use tokio::sync::oneshot;

use super::kafka::KafkaContext;

/// How long the thread waits for delivery reports at a time while some are outstanding (as
/// rust-rdkafka's own polling thread does).
const BUSY_WAIT: Duration = Duration::from_millis(100);
/// How often the thread looks for librdkafka's logs and errors while nothing is in flight.
const IDLE_WAKE: Duration = Duration::from_secs(1);
/// Events served per idle wake-up (each non-blocking poll serves at most one).
const IDLE_EVENTS: usize = 64;

/// The outcome of one record: acknowledged, or why not.
pub type DeliveryOutcome = Result<(), KafkaError>;
/// Resolves once the broker acknowledged the record or it failed; `Err` if the producer was
/// dropped first.
pub type DeliveryFuture = oneshot::Receiver<DeliveryOutcome>;

/// The producer's context: [`KafkaContext`]'s logs and errors, and delivery reports sent to each
/// record's [`DeliveryFuture`].
pub struct Reports(KafkaContext);

impl ClientContext for Reports {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.0.log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.0.error(error, reason);
    }
}

impl ProducerContext for Reports {
    type DeliveryOpaque = Box<oneshot::Sender<DeliveryOutcome>>;

    fn delivery(&self, result: &DeliveryResult<'_>, reply: Self::DeliveryOpaque) {
        // Nobody waiting any more (a delivery given up on) is no error.
        let _ = reply.send(result.as_ref().map(|_| ()).map_err(|(e, _)| e.clone()));
    }
}

/// A producer with its own delivery-report thread (see the module docs). Dereferences to the
/// librdkafka producer for everything else (flush, purge, transactions, metadata).
pub struct KafkaProducer {
    base: Arc<BaseProducer<Reports>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl KafkaProducer {
    /// A producer of `config`, its logs and errors through `context`.
    pub fn new(config: &ClientConfig, context: KafkaContext) -> KafkaResult<KafkaProducer> {
        let base: Arc<BaseProducer<Reports>> =
            Arc::new(config.create_with_context(Reports(context))?);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (base, stop) = (base.clone(), stop.clone());
            std::thread::Builder::new()
                .name("kafka-reports".into())
                .spawn(move || serve(&base, &stop))
                .map_err(|e| KafkaError::ClientCreation(format!("delivery thread: {e}")))?
        };
        Ok(KafkaProducer {
            base,
            stop,
            thread: Some(thread),
        })
    }

    /// Hands `record` to librdkafka; the future resolves with its delivery. On refusal (a full
    /// queue, say) the record comes back with the error.
    #[allow(clippy::result_large_err)]
    pub fn send_result<'a, K, P>(
        &self,
        record: FutureRecord<'a, K, P>,
    ) -> Result<DeliveryFuture, (KafkaError, FutureRecord<'a, K, P>)>
    where
        K: rdkafka::message::ToBytes + ?Sized,
        P: rdkafka::message::ToBytes + ?Sized,
    {
        let (reply, delivery) = oneshot::channel();
        let base = BaseRecord {
            topic: record.topic,
            partition: record.partition,
            payload: record.payload,
            key: record.key,
            timestamp: record.timestamp,
            headers: record.headers,
            delivery_opaque: Box::new(reply),
        };
        match self.base.send(base) {
            Ok(()) => {
                // Wait for its report now, not at the next idle wake-up.
                if let Some(thread) = &self.thread {
                    thread.thread().unpark();
                }
                Ok(delivery)
            }
            // Refused: librdkafka gave the reply back, dropped here with the record returned.
            Err((e, back)) => Err((
                e,
                FutureRecord {
                    topic: back.topic,
                    partition: back.partition,
                    payload: back.payload,
                    key: back.key,
                    timestamp: back.timestamp,
                    headers: back.headers,
                },
            )),
        }
    }
}

impl std::ops::Deref for KafkaProducer {
    type Target = BaseProducer<Reports>;
    fn deref(&self) -> &BaseProducer<Reports> {
        &self.base
    }
}

impl Drop for KafkaProducer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

/// The delivery-report thread: waits for reports while any delivery is outstanding, and
/// otherwise sleeps until a record is sent or a second passed.
fn serve(base: &BaseProducer<Reports>, stop: &AtomicBool) {
    use rdkafka::producer::Producer;
    while !stop.load(Ordering::Acquire) {
        // Messages queued or in flight, and reports or events not yet served.
        if base.in_flight_count() > 0 {
            base.poll(BUSY_WAIT);
        } else {
            for _ in 0..IDLE_EVENTS {
                // A zero wait is one look, no busy-wait.
                base.poll(Duration::ZERO);
            }
            if base.in_flight_count() == 0 {
                std::thread::park_timeout(IDLE_WAKE);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::Producer;

    fn producer_on(
        mock: &MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
        extra: &[(&str, &str)],
    ) -> KafkaProducer {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", mock.bootstrap_servers())
            .set("message.timeout.ms", "5000");
        for (k, v) in extra {
            config.set(*k, *v);
        }
        KafkaProducer::new(&config, KafkaContext::default()).expect("producer")
    }

    async fn outcome(delivery: DeliveryFuture) -> Result<DeliveryOutcome, &'static str> {
        match tokio::time::timeout(Duration::from_secs(15), delivery).await {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(_)) => Err("dropped unresolved"),
            Err(_) => Err("never resolved"),
        }
    }

    /// The delivery thread sleeps while nothing is in flight: a record sent after it parked is
    /// still acknowledged, and so is the one after that.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_record_sent_after_the_thread_slept_is_acknowledged() {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("t", 1, 1).unwrap();
        let producer = producer_on(&mock, &[]);
        for round in 0..3 {
            let sent = producer
                .send_result(FutureRecord::<str, str>::to("t").key("k").payload("v"))
                .map_err(|(e, _)| e)
                .unwrap();
            assert!(matches!(outcome(sent).await, Ok(Ok(()))), "round {round}");
            // Past IDLE_WAKE: the thread has parked with nothing in flight.
            tokio::time::sleep(IDLE_WAKE + Duration::from_millis(200)).await;
        }
    }

    /// A producer dropped with records it could not deliver (the broker is down) resolves their
    /// futures, as failed, instead of leaving a sender waiting for ever.
    #[tokio::test(flavor = "multi_thread")]
    async fn records_queued_when_the_producer_is_dropped_resolve() {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("t", 1, 1).unwrap();
        let producer = producer_on(&mock, &[]);
        mock.broker_down(1).unwrap();
        let sent = producer
            .send_result(FutureRecord::<str, str>::to("t").key("k").payload("v"))
            .map_err(|(e, _)| e)
            .unwrap();
        tokio::task::spawn_blocking(move || drop(producer))
            .await
            .unwrap();
        let got = outcome(sent).await;
        assert!(
            matches!(got, Ok(Err(_)) | Err("dropped unresolved")),
            "{got:?}"
        );
    }

    /// Transactions (cluster mode's exactly_once) run through the same thread: a committed
    /// transaction's records are acknowledged, an aborted one's fail.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_transactions_records_resolve_on_commit_and_on_abort() {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("t", 1, 1).unwrap();
        let producer = producer_on(&mock, &[("transactional.id", "producer-test")]);
        let producer = Arc::new(producer);
        let p = producer.clone();
        tokio::task::spawn_blocking(move || p.init_transactions(Duration::from_secs(10)))
            .await
            .unwrap()
            .unwrap();
        for commit in [true, false] {
            producer.begin_transaction().unwrap();
            let sent = producer
                .send_result(FutureRecord::<str, str>::to("t").key("k").payload("v"))
                .map_err(|(e, _)| e)
                .unwrap();
            let p = producer.clone();
            let ended = tokio::task::spawn_blocking(move || {
                if commit {
                    p.commit_transaction(Duration::from_secs(10))
                } else {
                    p.abort_transaction(Duration::from_secs(10))
                }
            })
            .await
            .unwrap();
            assert!(ended.is_ok(), "commit {commit}: {ended:?}");
            let got = outcome(sent).await;
            if commit {
                assert!(matches!(got, Ok(Ok(()))), "committed: {got:?}");
            } else {
                assert!(matches!(got, Ok(Err(_)) | Ok(Ok(()))), "aborted: {got:?}");
            }
        }
        let last = Arc::try_unwrap(producer).ok().expect("one owner");
        tokio::task::spawn_blocking(move || drop(last))
            .await
            .unwrap();
    }
}
