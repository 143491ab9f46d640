//! Whether this process may still take its partitions for its own: the consumer thread's pulse.
//!
//! A process stopped past its session (SIGSTOP, a VM frozen, a long stall) is evicted from the
//! consumer group, and its partitions go to others. When it resumes, every thread resumes at
//! once: its scans, mid-cycle, could commit before librdkafka has told it (through the consumer
//! thread) that its partitions moved, and publish changes their new owner published too, under
//! other ids. The consumer thread beats once per loop (a loop lasts about a second); a gap far
//! longer than that, seen by the thread itself or by a writer first, means the whole process
//! stalled. Writes then wait until the consumer thread has confirmed the group membership with
//! the broker (a synchronous offset commit, which the coordinator refuses from a member it
//! evicted), or the partitions are revoked.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

/// The consumer thread's pulse, and whether the membership is in doubt since a stall.
pub(super) struct Pulse {
    origin: Instant,
    /// When the consumer thread last beat, in milliseconds since `origin`.
    beat: AtomicI64,
    /// A stall was seen and the membership is not confirmed since.
    doubt: AtomicBool,
    /// A gap between two beats longer than this is a stall.
    stall: Duration,
}

impl Pulse {
    /// A pulse for a group session of `session`: a stall is a gap of half of it (so that a
    /// process stopped for a whole session is always caught), and never less than 2.5 s (two
    /// of the consumer thread's polls), so that a loop that is merely busy does not count.
    pub(super) fn new(session: Duration) -> Pulse {
        Pulse {
            origin: Instant::now(),
            beat: AtomicI64::new(0),
            doubt: AtomicBool::new(false),
            stall: (session / 2).max(Duration::from_millis(2500)),
        }
    }

    fn now(&self) -> i64 {
        i64::try_from(self.origin.elapsed().as_millis()).unwrap_or(i64::MAX)
    }

    /// The time since `beat`.
    fn since(&self, beat: i64) -> Duration {
        Duration::from_millis(u64::try_from(self.now().saturating_sub(beat)).unwrap_or(0))
    }

    /// The consumer thread is alive. Returns the gap since its last beat when that was a
    /// stall (the membership is in doubt from now).
    pub(super) fn beat(&self) -> Option<Duration> {
        let gap = self.since(self.beat.swap(self.now(), Ordering::SeqCst));
        if gap > self.stall {
            self.doubt.store(true, Ordering::SeqCst);
            return Some(gap);
        }
        None
    }

    /// Starts the pulse afresh (the consumer thread's loop begins: what came before, such as
    /// creating the state topic, is no stall).
    pub(super) fn start(&self) {
        self.beat.store(self.now(), Ordering::SeqCst);
    }

    /// Whether the membership is in doubt and the consumer thread should confirm it.
    pub(super) fn in_doubt(&self) -> bool {
        self.doubt.load(Ordering::SeqCst)
    }

    /// The broker confirmed the membership (or nothing is owned to doubt).
    pub(super) fn confirmed(&self) {
        self.doubt.store(false, Ordering::SeqCst);
    }

    /// Whether this process may write to its partitions now; `Err` says why not.
    pub(super) fn check(&self) -> Result<(), String> {
        let gap = self.since(self.beat.load(Ordering::SeqCst));
        if gap > self.stall {
            self.doubt.store(true, Ordering::SeqCst);
            return Err(format!(
                "this process stalled (its consumer thread silent for {gap:?}, paused?): its \
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
        pulse.start();
        assert_eq!(pulse.beat(), None);
        assert!(pulse.check().is_ok());
        // A writer resumes first: it sees the gap itself.
        pulse.rewind(Duration::from_secs(30));
        assert!(pulse.check().unwrap_err().contains("stalled"));
        // The consumer thread beats again: still in doubt, until it confirms.
        let _ = pulse.beat();
        assert!(pulse.check().is_err());
        pulse.confirmed();
        assert!(pulse.check().is_ok());
        // The consumer thread resumes first: its beat sees the gap.
        pulse.rewind(Duration::from_secs(30));
        assert!(
            pulse
                .beat()
                .is_some_and(|gap| gap >= Duration::from_secs(30))
        );
        assert!(pulse.check().is_err());
    }

    #[test]
    fn a_stall_is_never_shorter_than_two_polls() {
        let pulse = Pulse::new(Duration::from_secs(1));
        pulse.start();
        pulse.rewind(Duration::from_secs(2));
        assert_eq!(pulse.beat(), None, "a busy loop is no stall");
        assert!(pulse.check().is_ok());
    }
}
