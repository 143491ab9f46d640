//! The per-registry loop: one scan at a time (runs never overlap), a full cycle every
//! `interval` ± `jitter`, webhook hints scanned at once and coalesced per repository, and backoff
//! after failures of the registry as a whole that does not disturb other registries. A failing
//! repository backs off alone (see [`super::backoff`]) and leaves its registry's schedule as it is.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use futures_util::FutureExt;
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

/// Quick rescans of a repository with a tag waiting on a failed lookup, before the normal schedule
/// takes over: a registry may notify of a push a moment before the tag's manifest is readable.
const QUICK_RESCANS: u32 = 3;
/// The first quick rescan's delay; each next one doubles it.
const QUICK_RESCAN_DELAY: Duration = Duration::from_secs(1);

/// Repositories due for a quick rescan: the rescans done so far, and when the next one is due
/// (`None` once they are used up, until a scan finds the repository with nothing waiting).
#[derive(Default)]
struct QuickRescans(BTreeMap<String, (u32, Option<tokio::time::Instant>)>);

impl QuickRescans {
    /// Takes a scan's result: `waiting` repositories get their next quick rescan; the others the
    /// scan `covered` (all, for a full cycle) start afresh.
    fn note(&mut self, waiting: &[String], covered: Option<&[String]>) {
        let now = tokio::time::Instant::now();
        self.0
            .retain(|repo, _| waiting.contains(repo) || covered.is_some_and(|c| !c.contains(repo)));
        for repo in waiting {
            let (done, at) = self.0.entry(repo.clone()).or_default();
            *at = (*done < QUICK_RESCANS).then(|| now + QUICK_RESCAN_DELAY * 2u32.pow(*done));
            *done += 1;
        }
    }

    /// When the next quick rescan is due.
    fn next(&self) -> Option<tokio::time::Instant> {
        self.0.values().filter_map(|(_, at)| *at).min()
    }

    /// The repositories due by now; their timers are cleared.
    fn take_due(&mut self) -> Vec<String> {
        let now = tokio::time::Instant::now();
        self.0
            .iter_mut()
            .filter(|(_, (_, at))| at.is_some_and(|at| at <= now))
            .map(|(repo, (_, at))| {
                *at = None;
                repo.clone()
            })
            .collect()
    }
}

/// How long after a hinted scan its repositories are listed once more. A registry can notify
/// before the push is visible: CNCF distribution sends a manifest's notification from its
/// manifest store, before the handler links the tag, so the hinted scan may list the repository
/// without it, and no later hint comes.
const HINT_SETTLE: Duration = Duration::from_secs(2);

/// Hinted repositories due for their one more listing ([`HINT_SETTLE`]).
#[derive(Default)]
struct Settling(BTreeMap<String, tokio::time::Instant>);

impl Settling {
    /// `repos` were scanned for a hint just now: look again after [`HINT_SETTLE`].
    fn note(&mut self, repos: &[String]) {
        let due = tokio::time::Instant::now() + HINT_SETTLE;
        for repo in repos {
            self.0.insert(repo.clone(), due);
        }
    }

    /// When the next look is due.
    fn next(&self) -> Option<tokio::time::Instant> {
        self.0.values().min().copied()
    }

    /// The repositories due by now, taken out.
    fn take_due(&mut self) -> Vec<String> {
        let now = tokio::time::Instant::now();
        let due: Vec<String> = self
            .0
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(repo, _)| repo.clone())
            .collect();
        for repo in &due {
            self.0.remove(repo);
        }
        due
    }
}

/// Why repositories are scanned out of the schedule.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rescan {
    /// A webhook named them.
    Hint,
    /// Their hinted scan was [`HINT_SETTLE`] ago.
    Settle,
    /// A tag of theirs waits on a failed lookup.
    Quick,
}

/// How a guarded scan ended.
enum Ended<T> {
    /// It returned.
    Returned(Result<T, ScanError>),
    /// It ran past the cycle limit and was cancelled.
    TimedOut,
    /// It panicked, with this message.
    Panicked(String),
}

/// Runs a scan with a time limit, turning a panic into an outcome: nothing from a registry may end
/// the loop, which would silence the registry for good.
async fn guarded<T>(limit: Duration, scan: impl Future<Output = Result<T, ScanError>>) -> Ended<T> {
    match tokio::time::timeout(limit, AssertUnwindSafe(scan).catch_unwind()).await {
        Err(_) => Ended::TimedOut,
        Ok(Ok(result)) => Ended::Returned(result),
        Ok(Err(panic)) => Ended::Panicked(
            panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into()),
        ),
    }
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
        crate::metrics::get()
            .scan_interval
            .get_or_create(&crate::metrics::registry_label(&name))
            .set(interval.as_secs_f64());
        // A cycle that takes this long is wedged; cancelling it is safe (each repository commits
        // atomically or not at all).
        let cycle_limit = (interval * 10).max(Duration::from_secs(600));
        let mut backoff = failure_backoff(interval);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut next_full = tokio::time::Instant::now();
        let mut quick = QuickRescans::default();
        let mut settling = Settling::default();
        loop {
            if *shutdown.borrow() {
                break;
            }
            let next_quick = quick.next();
            let next_settled = settling.next();
            tokio::select! {
                _ = shutdown.changed() => {}
                _ = tick.tick() => self.heartbeat.beat(),
                Ok(()) = self.rescan.changed() => next_full = tokio::time::Instant::now(),
                _ = tokio::time::sleep_until(next_full) => {
                    let stop = shutdown.clone();
                    let started = Instant::now();
                    let cycle = self.scanner.cycle(&self.output, move || *stop.borrow());
                    let ended = beating(&mut tick, &self.heartbeat, guarded(cycle_limit, cycle)).await;
                    let mut delay = jittered(interval, self.jitter);
                    let m = crate::metrics::get();
                    match ended {
                        Ended::Returned(Ok(report)) => {
                            quick.note(&report.waiting, None);
                            self.readiness.scanned(&name);
                            // Changes not recorded go out again next cycle, not lost; but a
                            // registry whose changes cannot be recorded delivers nothing new,
                            // and must not pass for working (a fenced producer did, for good).
                            self.readiness.recorded(&name, report.unrecorded == 0);
                            if report.failed == 0 {
                                backoff = failure_backoff(interval);
                                let result = if report.unrecorded == 0 { "ok" } else { "incomplete" };
                                m.scan_finished(&name, result, started.elapsed());
                                tracing::debug!(registry = %name, ?report, elapsed = ?started.elapsed(), "scan complete");
                            } else if !report.registry_wide {
                                // Only those repositories failed; they sit out cycles on their own.
                                backoff = failure_backoff(interval);
                                m.scan_finished(&name, "incomplete", started.elapsed());
                                tracing::warn!(registry = %name, failed = report.failed, of = report.repositories, "scan incomplete; the failed repositories back off, the others keep the schedule");
                            } else {
                                m.scan_finished(&name, "incomplete", started.elapsed());
                                delay = delay.max(backoff.next().unwrap_or(interval));
                                tracing::warn!(registry = %name, failed = report.failed, of = report.repositories, next_in = ?delay, "scan failed for the whole registry; backing off");
                            }
                        }
                        Ended::Returned(Err(ScanError::Store(e))) if !e.is_transient() => {
                            m.scan_finished(&name, "failed", started.elapsed());
                            let _ = self.fatal.try_send(format!("state store failed while scanning {name}: {e}"));
                            break;
                        }
                        Ended::Returned(Err(e)) => {
                            m.scan_finished(&name, "failed", started.elapsed());
                            delay = delay.max(backoff.next().unwrap_or(interval));
                            if let ScanError::Registry(RegistryError::RateLimited { retry_after: Some(wait) }) = &e {
                                delay = delay.max(*wait);
                            }
                            tracing::warn!(registry = %name, error = %e, next_in = ?delay, "listing failed; no changes recorded");
                        }
                        Ended::TimedOut => {
                            m.scan_finished(&name, "failed", started.elapsed());
                            delay = delay.max(backoff.next().unwrap_or(interval));
                            tracing::error!(registry = %name, limit = ?cycle_limit, "scan cycle exceeded its time limit and was cancelled");
                        }
                        Ended::Panicked(why) => {
                            delay = delay.max(backoff.next().unwrap_or(interval));
                            self.panicked(&why, delay);
                            m.scan_finished(&name, "failed", started.elapsed());
                        }
                    }
                    next_full = tokio::time::Instant::now() + delay;
                }
                _ = tokio::time::sleep_until(next_quick.unwrap_or(next_full)), if next_quick.is_some() => {
                    let repos = quick.take_due();
                    tracing::debug!(registry = %name, ?repos, "rescanning repositories with a tag waiting on a failed lookup");
                    if self.scan_now(repos, Rescan::Quick, &shutdown, cycle_limit, &mut tick, &mut quick).await {
                        break;
                    }
                }
                _ = tokio::time::sleep_until(next_settled.unwrap_or(next_full)), if next_settled.is_some() => {
                    let repos = settling.take_due();
                    tracing::debug!(registry = %name, ?repos, "listing hinted repositories once more");
                    if self.scan_now(repos, Rescan::Settle, &shutdown, cycle_limit, &mut tick, &mut quick).await {
                        break;
                    }
                }
                Some(first) = self.hints.recv() => {
                    // Coalesce: everything queued by now is scanned once.
                    let mut repos = BTreeSet::from([first]);
                    while let Ok(more) = self.hints.try_recv() {
                        repos.insert(more);
                    }
                    let repos: Vec<String> = repos.into_iter().collect();
                    if self.scan_now(repos.clone(), Rescan::Hint, &shutdown, cycle_limit, &mut tick, &mut quick).await {
                        break;
                    }
                    settling.note(&repos);
                }
            }
        }
        // A loop that ended on purpose no longer owes the watchdog its beat, nor its series to
        // an alert (a registry a reload removed would look unscanned forever; one kept gets
        // them again from the loop that replaces this one).
        self.heartbeat.retire();
        let label = crate::metrics::registry_label(&name);
        crate::metrics::get().scan_interval.remove(&label);
        crate::metrics::get().last_success.remove(&label);
        tracing::debug!(registry = %name, "scheduler stopped");
        self.hints
    }

    /// Scans `repos` at once, for `why`, obeying shutdown and the time limit like a full cycle. Returns true when the loop must end (the store failed for good).
    async fn scan_now(
        &self,
        repos: Vec<String>,
        why: Rescan,
        shutdown: &watch::Receiver<bool>,
        limit: Duration,
        tick: &mut Interval,
        quick: &mut QuickRescans,
    ) -> bool {
        let name = &self.scanner.config.name;
        let stop = shutdown.clone();
        let scan = self.scanner.scan_hinted(
            &self.output,
            repos.clone(),
            why == Rescan::Hint,
            move || *stop.borrow(),
        );
        match beating(tick, &self.heartbeat, guarded(limit, scan)).await {
            Ended::Returned(Ok(report)) => {
                // The report names repositories as qualified (`nginx` is `library/nginx`).
                let covered: Vec<String> = repos
                    .iter()
                    .map(|r| self.scanner.config.qualified(r))
                    .collect();
                // A settling look leaves the quick rescans of its hinted scan as they were.
                if why != Rescan::Settle {
                    quick.note(&report.waiting, Some(&covered));
                }
                tracing::debug!(registry = %name, ?report, "hinted scan complete");
            }
            Ended::Returned(Err(ScanError::Store(e))) if !e.is_transient() => {
                let _ = self
                    .fatal
                    .try_send(format!("state store failed while scanning {name}: {e}"));
                return true;
            }
            Ended::Returned(Err(e)) => {
                tracing::warn!(registry = %name, error = %e, "hinted scan failed")
            }
            Ended::TimedOut => {
                tracing::error!(registry = %name, ?limit, "hinted scan exceeded its time limit and was cancelled")
            }
            // The next full cycle comes on its schedule; the panic is shown until one completes.
            Ended::Panicked(why) => self.panicked(&why, self.scanner.config.interval),
        }
        false
    }

    /// A scan panicked: counted, logged at ERROR, and shown by `/readyz` until a cycle completes.
    fn panicked(&self, why: &str, retry_in: Duration) {
        let name = &self.scanner.config.name;
        crate::metrics::get()
            .scan_panics
            .get_or_create(&crate::metrics::registry_label(name))
            .inc();
        tracing::error!(registry = %name, panic = %why, next_in = ?retry_in, "a scan panicked; nothing of it was recorded, scanning again after a backoff");
        // /readyz answers anyone: the panic's text stays in the log.
        self.readiness.down(
            name,
            format!("a scan of {name} panicked; see the ERROR log"),
        );
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
