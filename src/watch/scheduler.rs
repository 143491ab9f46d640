//! The per-registry loop: one cycle at a time (runs never overlap), every `interval` ± `jitter`,
//! backing off after failures without disturbing other registries.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use rand::Rng;
use tokio::sync::watch;

use super::scan::{Output, ScanError, Scanner};
use crate::registry::RegistryError;

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

/// Polls one registry until `shutdown` turns true.
pub async fn run(
    scanner: Scanner,
    output: Output,
    jitter: f64,
    mut shutdown: watch::Receiver<bool>,
) {
    let interval = scanner.config.interval;
    let name = scanner.config.name.clone();
    let mut backoff = failure_backoff(interval);
    loop {
        if *shutdown.borrow() {
            break;
        }
        let stop = shutdown.clone();
        let started = std::time::Instant::now();
        let result = scanner.cycle(&output, move || *stop.borrow()).await;
        let mut delay = jittered(interval, jitter);
        match result {
            Ok(report) if report.failed == 0 => {
                backoff = failure_backoff(interval);
                tracing::debug!(registry = %name, ?report, elapsed = ?started.elapsed(), "scan complete");
            }
            Ok(report) => {
                delay = delay.max(backoff.next().unwrap_or(interval));
                tracing::warn!(registry = %name, failed = report.failed, of = report.repositories, next_in = ?delay, "scan incomplete");
            }
            Err(e) => {
                delay = delay.max(backoff.next().unwrap_or(interval));
                if let ScanError::Registry(RegistryError::RateLimited {
                    retry_after: Some(wait),
                }) = &e
                {
                    delay = delay.max(*wait);
                }
                tracing::warn!(registry = %name, error = %e, next_in = ?delay, "listing failed; no changes recorded");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => {}
        }
    }
    tracing::debug!(registry = %name, "scheduler stopped");
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
