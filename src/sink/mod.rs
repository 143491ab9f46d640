//! Sinks that events are delivered to, and the publisher that drains the outbox into one.
//!
//! The outbox is the source of truth: an event leaves it only once the sink has acknowledged it,
//! so a sink outage delays events but never loses them.

pub mod kafka;
pub mod producer;
pub mod stdout;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Notify, watch};

use crate::event::Event;
use crate::store::{Store, StoreError};

/// Events read from the outbox per delivery round.
const BATCH: usize = 1000;
/// How long shutdown waits for the last deliveries.
const FINAL_DRAIN: Duration = Duration::from_secs(10);
/// How often the outbox is looked at without a wake-up (a safety net for missed notifications).
const IDLE_POLL: Duration = Duration::from_secs(5);

/// Where events go.
#[async_trait]
pub trait Sink: Send {
    /// Prepares the sink (e.g. creates the Kafka topic); retried until it succeeds.
    async fn prepare(&mut self) -> Result<(), String>;
    /// Delivers `batch`; returns the positions (indexes into `batch`) the sink acknowledged.
    async fn deliver(&mut self, batch: &[Event]) -> Vec<usize>;
    /// Completes when the sink's destination is back after an outage, so that the publisher
    /// prepares it and retries at once instead of after its backoff. Never, by default.
    fn recovered(&self) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(std::future::pending())
    }
}

/// Runs a store call on the blocking pool: redb commits fsync, and a write transaction waits for
/// the one a scan holds, either of which would stall an async worker.
async fn blocking<T: Send + 'static>(
    store: &Arc<Store>,
    call: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let store = store.clone();
    match tokio::task::spawn_blocking(move || call(&store)).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(StoreError::Io(format!("store call cancelled: {e}"))),
    }
}

/// Delivers everything in the outbox that the sink will take now. Returns (delivered, left).
pub async fn drain(store: &Arc<Store>, sink: &mut dyn Sink) -> Result<(usize, usize), StoreError> {
    let mut delivered = 0;
    loop {
        let batch = blocking(store, |s| s.outbox_batch(BATCH)).await?;
        if batch.is_empty() {
            crate::metrics::get().outbox_pending.set(0);
            return Ok((delivered, 0));
        }
        let (seqs, events): (Vec<u64>, Vec<Event>) = batch.into_iter().unzip();
        let acked: Vec<u64> = sink
            .deliver(&events)
            .await
            .into_iter()
            .map(|i| seqs[i])
            .collect();
        let removed = acked.len();
        blocking(store, move |s| s.outbox_remove(&acked)).await?;
        delivered += removed;
        let metrics = crate::metrics::get();
        metrics.events_published.inc_by(removed as u64);
        if removed < seqs.len() {
            let left = blocking(store, Store::outbox_len).await?;
            metrics.outbox_pending.set(left as i64);
            return Ok((delivered, left as usize));
        }
    }
}

/// Drains the outbox into `sink` whenever `wake` fires, until `shutdown`; then one last drain.
/// After a failed delivery the sink is prepared again (a restarted broker may have lost the topic).
pub async fn publish(
    store: Arc<Store>,
    mut sink: Box<dyn Sink>,
    wake: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut failures = 0u32;
    let mut prepared = false;
    loop {
        if !prepared {
            match sink.prepare().await {
                Ok(()) => prepared = true,
                Err(e) => tracing::warn!(error = %e, "sink not ready; events wait in the outbox"),
            }
        }
        let outcome = if prepared {
            drain(&store, sink.as_mut()).await
        } else {
            Ok((0, 1))
        };
        let wait = match outcome {
            Ok((_, 0)) => {
                failures = 0;
                IDLE_POLL
            }
            Ok((_, left)) => {
                failures += 1;
                prepared = false;
                let wait = retry_delay(failures);
                tracing::warn!(pending = left, next_in = ?wait, "delivery incomplete; events wait in the outbox");
                wait
            }
            Err(e) => {
                failures += 1;
                tracing::error!(error = %e, "cannot read the outbox");
                retry_delay(failures)
            }
        };
        if *shutdown.borrow() {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = wake.notified(), if failures == 0 => {}
            () = sink.recovered() => {
                failures = 0;
                prepared = false;
            }
            _ = shutdown.changed() => {
                // Deliver what the last scans committed before exiting, within systemd's stop
                // timeout; whatever is not acknowledged stays in the outbox for the next start.
                if prepared {
                    match tokio::time::timeout(FINAL_DRAIN, drain(&store, sink.as_mut())).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => tracing::error!(error = %e, "final drain failed"),
                        Err(_) => tracing::warn!("final drain timed out; undelivered events stay in the outbox"),
                    }
                }
                break;
            }
        }
    }
}

fn retry_delay(failures: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1 << failures.min(6))).min(Duration::from_secs(30))
}
