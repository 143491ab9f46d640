//! The per-registry loop: one scan at a time (runs never overlap), a full cycle every
//! `interval` ± `jitter`, webhook hints scanned at once and coalesced per repository, and backoff
//! after failures of the registry as a whole that does not disturb other registries. A failing
//! repository backs off alone (see [`super::backoff`]) and leaves its registry's schedule as it is.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio::time::Interval;

use super::scan::{Output, ScanError, Scanner};
use crate::admin::Readiness;
use crate::registry::RegistryError;
use crate::watchdog::Heartbeat;

/// `interval` spread by ± `jitter` (a fraction), so registries and replicas do not poll in lockstep.
pub fn jittered(interval: Duration, jitter: f64) -> Duration {
    if jitter <= 0.0 {
        return interval;
    }
    let factor = rand::rng().random_range(1.0 - jitter..=1.0 + jitter);
    interval.mul_f64(factor)
}

/// How failed cycles slow a registry down: from one interval, doubling, up to 8 intervals.
fn failure_backoff(interval: Duration) -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(interval)
        .with_factor(2.0)
        .with_max_delay(interval * 8)
        .without_max_times()
        .build()
}

/// Everything one registry's loop needs.
pub struct RegistryLoop {
    /// The registry's scanner.
    pub scanner: Scanner,
    /// Where results go.
    pub output: Output,
    /// `daemon.jitter`.
    pub jitter: f64,
    /// Repositories named by webhooks.
    pub hints: mpsc::Receiver<String>,
    /// Changes when a full cycle is due at once (cluster mode: the replica took over repositories).
    pub rescan: watch::Receiver<u64>,
    /// Marked once the first full cycle completes.
    pub readiness: Arc<Readiness>,
    /// Beaten every second while the loop is alive.
    pub heartbeat: Heartbeat,
    /// Told when the state store fails: the daemon exits so the service manager restarts it and
    /// the store recovers on open, rather than scanning on without being able to record anything.
    pub fatal: mpsc::Sender<String>,
}

impl RegistryLoop {
    /// Polls the registry until `shutdown` turns true. Returns the hint queue, for a loop that
    /// replaces this one (a reload) to take over with the webhook senders unchanged.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> mpsc::Receiver<String> {
        let interval = self.scanner.config.interval;
        let name = self.scanner.config.name.clone();
        // A cycle that takes this long is wedged; cancelling it is safe (each repository commits
        // atomically or not at all).
        let cycle_limit = (interval * 10).max(Duration::from_secs(600));
        let mut backoff = failure_backoff(interval);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut next_full = tokio::time::Instant::now();
        loop {
            if *shutdown.borrow() {
                break;
            }
            tokio::select! {
                _ = shutdown.changed() => {}
                _ = tick.tick() => self.heartbeat.beat(),
                Ok(()) = self.rescan.changed() => next_full = tokio::time::Instant::now(),
                _ = tokio::time::sleep_until(next_full) => {
                    let stop = shutdown.clone();
                    let started = Instant::now();
                    let cycle = self.scanner.cycle(&self.output, move || *stop.borrow());
                    let result = beating(&mut tick, &self.heartbeat, tokio::time::timeout(cycle_limit, cycle)).await;
                    let mut delay = jittered(interval, self.jitter);
                    let m = crate::metrics::get();
                    match result {
                        Ok(Ok(report)) if report.failed == 0 => {
                            backoff = failure_backoff(interval);
                            self.readiness.scanned(&name);
                            m.scan_finished(&name, "ok", started.elapsed());
                            tracing::debug!(registry = %name, ?report, elapsed = ?started.elapsed(), "scan complete");
                        }
                        Ok(Ok(report)) if !report.registry_wide => {
                            // Only those repositories failed; they sit out cycles on their own.
                            backoff = failure_backoff(interval);
                            self.readiness.scanned(&name);
                            m.scan_finished(&name, "incomplete", started.elapsed());
                            tracing::warn!(registry = %name, failed = report.failed, of = report.repositories, "scan incomplete; the failed repositories back off, the others keep the schedule");
                        }
                        Ok(Ok(report)) => {
                            self.readiness.scanned(&name);
                            m.scan_finished(&name, "incomplete", started.elapsed());
                            delay = delay.max(backoff.next().unwrap_or(interval));
                            tracing::warn!(registry = %name, failed = report.failed, of = report.repositories, next_in = ?delay, "scan failed for the whole registry; backing off");
                        }
                        Ok(Err(ScanError::Store(e))) if !e.is_transient() => {
                            m.scan_finished(&name, "failed", started.elapsed());
                            let _ = self.fatal.try_send(format!("state store failed while scanning {name}: {e}"));
                            break;
                        }
                        Ok(Err(e)) => {
                            m.scan_finished(&name, "failed", started.elapsed());
                            delay = delay.max(backoff.next().unwrap_or(interval));
                            if let ScanError::Registry(RegistryError::RateLimited { retry_after: Some(wait) }) = &e {
                                delay = delay.max(*wait);
                            }
                            tracing::warn!(registry = %name, error = %e, next_in = ?delay, "listing failed; no changes recorded");
                        }
                        Err(_) => {
                            m.scan_finished(&name, "failed", started.elapsed());
                            delay = delay.max(backoff.next().unwrap_or(interval));
                            tracing::error!(registry = %name, limit = ?cycle_limit, "scan cycle exceeded its time limit and was cancelled");
                        }
                    }
                    next_full = tokio::time::Instant::now() + delay;
                }
                Some(first) = self.hints.recv() => {
                    // Coalesce: everything queued by now is scanned once.
                    let mut repos = BTreeSet::from([first]);
                    while let Ok(more) = self.hints.try_recv() {
                        repos.insert(more);
                    }
                    // Hinted scans obey shutdown and the time limit like full cycles.
                    let stop = shutdown.clone();
                    let scan = self.scanner.scan_hinted(&self.output, repos.into_iter().collect(), move || *stop.borrow());
                    match beating(&mut tick, &self.heartbeat, tokio::time::timeout(cycle_limit, scan)).await {
                        Ok(Ok(report)) => tracing::debug!(registry = %name, ?report, "hinted scan complete"),
                        Ok(Err(ScanError::Store(e))) if !e.is_transient() => {
                            let _ = self.fatal.try_send(format!("state store failed while scanning {name}: {e}"));
                            break;
                        }
                        Ok(Err(e)) => tracing::warn!(registry = %name, error = %e, "hinted scan failed"),
                        Err(_) => tracing::error!(registry = %name, limit = ?cycle_limit, "hinted scan exceeded its time limit and was cancelled"),
                    }
                }
            }
        }
        // A loop that ended on purpose no longer owes the watchdog its beat.
        self.heartbeat.retire();
        tracing::debug!(registry = %name, "scheduler stopped");
        self.hints
    }
}

/// Runs `work` while beating the heartbeat every tick, so a long scan is not mistaken for a wedge.
async fn beating<F: Future>(tick: &mut Interval, heartbeat: &Heartbeat, work: F) -> F::Output {
    let mut work = std::pin::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = tick.tick() => heartbeat.beat(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_bounds() {
        let base = Duration::from_secs(60);
        for _ in 0..1000 {
            let d = jittered(base, 0.1);
            assert!(
                d >= Duration::from_secs(54) && d <= Duration::from_secs(66),
                "{d:?}"
            );
        }
        assert_eq!(jittered(base, 0.0), base);
    }

    #[test]
    fn backoff_doubles_to_a_cap() {
        let steps: Vec<Duration> = failure_backoff(Duration::from_secs(10)).take(6).collect();
        assert_eq!(steps[0], Duration::from_secs(10));
        assert_eq!(steps[1], Duration::from_secs(20));
        assert_eq!(steps[5], Duration::from_secs(80));
    }
}
