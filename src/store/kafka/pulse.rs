//! Whether this process may still take its partitions for its own: its pulse.
//!
//! A process stopped past its session (SIGSTOP, a VM frozen, a long stall) is evicted from the
//! consumer group, and its partitions go to others. When it resumes, every thread resumes at
//! once: its scans, mid-cycle, could commit before librdkafka has told it (through the consumer
//! thread) that its partitions moved, and publish changes their new owner published too, under
//! other ids. A thread of its own beats four times a second; a gap far longer than that, seen
//! by that thread or by a writer first, means the whole process stalled. Writes then wait until
//! the consumer thread has confirmed the group membership with the broker (a synchronous offset
//! commit, which the coordinator refuses from a member it evicted), or the partitions are
//! revoked. Every produce is checked, so that a write that waited (behind a checkpoint, or for
//! its events' acknowledgements) across the stall is refused too.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// How often the pulse's own thread beats: a few wake-ups a second of a thread that does
/// nothing else, so that no slow step of the consumer thread passes for a stall.
const TICK: Duration = Duration::from_millis(250);

/// This process's pulse, and whether the group membership is in doubt since a stall.
pub(super) struct Pulse {
    origin: Instant,
    /// When the pulse thread last beat, in milliseconds since `origin`.
    beat: AtomicI64,
    /// The stalls seen so far.
    stalls: AtomicU64,
    /// The stalls a confirmation of the membership, sent after them, answered: fewer than
    /// `stalls` means the membership is in doubt.
    confirmed: AtomicU64,
    /// A gap between two beats longer than this is a stall.
    stall: Duration,
}

impl Pulse {
    /// A pulse for a group session of `session`. A stall is a gap of half of it, and of at
    /// least 1 s (four beats), so that a thread merely scheduled late on a busy machine does
    /// not count; but under 3/5 of it, since a member heartbeats every third of the session
    /// and so can be evicted after a stop of two thirds.
    pub(super) fn new(session: Duration) -> Arc<Pulse> {
        Arc::new(Pulse {
            origin: Instant::now(),
            beat: AtomicI64::new(0),
            stalls: AtomicU64::new(0),
            confirmed: AtomicU64::new(0),
            stall: (session / 2)
                .max(Duration::from_secs(1))
                .min(session * 3 / 5),
        })
    }

    /// Starts the thread that beats until the pulse is dropped.
    pub(super) fn start(self: &Arc<Pulse>) -> std::io::Result<()> {
        self.beat.store(self.now(), Ordering::SeqCst);
        let pulse: Weak<Pulse> = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("regwatch-pulse".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(TICK);
                    let Some(pulse) = pulse.upgrade() else { break };
                    if let Some(gap) = pulse.beat() {
                        tracing::warn!(stopped = ?gap, "cluster: this process stalled (stopped, or starved of CPU); writes wait until the consumer group confirms its partitions");
                    }
                }
            })
            .map(drop)
    }

    fn now(&self) -> i64 {
        i64::try_from(self.origin.elapsed().as_millis()).unwrap_or(i64::MAX)
    }

    /// The time since `beat`.
    fn since(&self, beat: i64) -> Duration {
        Duration::from_millis(u64::try_from(self.now().saturating_sub(beat)).unwrap_or(0))
    }

    /// The process is alive. Returns the gap since the last beat when that was a stall (the
    /// membership is in doubt from now). The stall is counted before the fresh beat is
    /// published, so that no writer sees the one without the other.
    fn beat(&self) -> Option<Duration> {
        let now = self.now();
        let last = self.beat.load(Ordering::SeqCst);
        let gap = Duration::from_millis(u64::try_from(now.saturating_sub(last)).unwrap_or(0));
        let stalled = gap > self.stall;
        if stalled {
            self.stalls.fetch_add(1, Ordering::SeqCst);
        }
        self.beat.store(now, Ordering::SeqCst);
        stalled.then_some(gap)
    }

    /// The stalls seen so far: a confirmation sent now answers for these, and no later one.
    pub(super) fn stalls(&self) -> u64 {
        self.stalls.load(Ordering::SeqCst)
    }

    /// Whether the membership is in doubt and the consumer thread should confirm it.
    pub(super) fn in_doubt(&self) -> bool {
        self.confirmed.load(Ordering::SeqCst) < self.stalls()
    }

    /// The broker confirmed the membership with a request sent once `stalls` stalls were seen
    /// (see [`Pulse::stalls`]): a stall after it stays in doubt.
    pub(super) fn confirmed(&self, stalls: u64) {
        self.confirmed.fetch_max(stalls, Ordering::SeqCst);
    }

    /// Whether this process may write to its partitions now; `Err` says why not. A writer that
    /// resumes before the pulse thread sees the gap itself (the pulse thread then sees it too).
    pub(super) fn check(&self) -> Result<(), String> {
        let gap = self.since(self.beat.load(Ordering::SeqCst));
        if gap > self.stall {
            return Err(format!(
                "this process stalled (stopped, or starved of CPU; silent for {gap:?}): its \
                 partitions may be another replica's by now; writes wait until the consumer \
                 group confirms them"
            ));
        }
        if self.in_doubt() {
            return Err(
                "this process stalled: writes wait until the consumer group confirms \
                        its partitions"
                    .into(),
            );
        }
        Ok(())
    }

    /// Moves the last beat `by` into the past, as a stopped process finds it on resuming.
    #[cfg(test)]
    pub(super) fn rewind(&self, by: Duration) {
        let by = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.beat.fetch_sub(by, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_past_the_stall_puts_the_membership_in_doubt_until_confirmed() {
        let pulse = Pulse::new(Duration::from_secs(10));
        assert_eq!(pulse.beat(), None);
        assert!(pulse.check().is_ok());
        // A writer resumes first: it sees the gap itself.
        pulse.rewind(Duration::from_secs(30));
        assert!(pulse.check().unwrap_err().contains("stalled"));
        // The pulse thread beats again: still in doubt, until the consumer thread confirms.
        let _ = pulse.beat();
        assert!(pulse.check().is_err());
        // A confirmation sent before that stall answers nothing of it.
        pulse.confirmed(pulse.stalls() - 1);
        assert!(pulse.check().is_err());
        pulse.confirmed(pulse.stalls());
        assert!(pulse.check().is_ok());
        // The pulse thread resumes first: its beat sees the gap.
        pulse.rewind(Duration::from_secs(30));
        assert!(
            pulse
                .beat()
                .is_some_and(|gap| gap >= Duration::from_secs(30))
        );
        assert!(pulse.check().is_err());
    }

    #[test]
    fn a_stall_is_shorter_than_the_session_and_longer_than_a_late_beat() {
        for (session, stall) in [(1, 600), (2, 1000), (6, 3000), (10, 5000)] {
            let pulse = Pulse::new(Duration::from_secs(session));
            assert_eq!(
                pulse.stall,
                Duration::from_millis(stall),
                "session {session} s"
            );
        }
        let pulse = Pulse::new(Duration::from_secs(10));
        let _ = pulse.beat();
        pulse.rewind(Duration::from_millis(900));
        assert_eq!(pulse.beat(), None, "a beat scheduled late is no stall");
        assert!(pulse.check().is_ok());
    }

    #[test]
    fn the_pulse_thread_beats_and_ends_with_the_pulse() {
        let pulse = Pulse::new(Duration::from_secs(10));
        pulse.start().unwrap();
        pulse.rewind(Duration::from_secs(30));
        std::thread::sleep(TICK * 3);
        assert!(pulse.in_doubt(), "the pulse thread saw no stall");
        let weak = Arc::downgrade(&pulse);
        drop(pulse);
        std::thread::sleep(TICK * 2);
        assert!(weak.upgrade().is_none());
    }
}
