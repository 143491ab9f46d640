//! Sinks that events are delivered to, and the publisher that drains the outbox into one.
//!
//! The outbox is the source of truth: an event leaves it only once the sink has acknowledged it,
//! so a sink outage delays events but never loses them.

pub mod kafka;
pub mod stdout;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Notify, watch};

use crate::event::Event;
use crate::store::Store;

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
}

/// Delivers everything in the outbox that the sink will take now. Returns (delivered, left).
pub async fn drain(
    store: &Store,
    sink: &mut dyn Sink,
) -> Result<(usize, usize), crate::store::StoreError> {
    let mut delivered = 0;
    loop {
        let batch = store.outbox_batch(BATCH)?;
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
        store.outbox_remove(&acked)?;
        delivered += acked.len();
        let metrics = crate::metrics::get();
        metrics.events_published.inc_by(acked.len() as u64);
        if acked.len() < seqs.len() {
            let left = store.outbox_len()?;
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
