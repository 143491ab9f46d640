//! systemd integration: READY / RELOADING / STOPPING notifications, and a watchdog that is fed
//! only while every registry loop keeps beating, so a wedged scheduler gets restarted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tokio::sync::watch;

/// The mark of a heartbeat whose loop ended on purpose (replaced by a reload, or stopped).
const RETIRED: u64 = u64::MAX;

/// One loop's proof of life. A loop that ends without [`Heartbeat::retire`] (a panic) goes stale,
/// so the watchdog notices it.
pub struct Heartbeat {
    epoch: Instant,
    last: Arc<AtomicU64>,
}

impl Heartbeat {
    /// Records that the loop is alive now.
    pub fn beat(&self) {
        self.last
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Stops counting this loop: it ended on purpose.
    pub fn retire(self) {
        self.last.store(RETIRED, Ordering::Relaxed);
    }
}

/// The heartbeats of all loops of one daemon instance.
pub struct Heartbeats {
    epoch: Instant,
    beats: Mutex<Vec<Arc<AtomicU64>>>,
}

impl Default for Heartbeats {
    fn default() -> Self {
        Heartbeats {
            epoch: Instant::now(),
            beats: Mutex::new(Vec::new()),
        }
    }
}

impl Heartbeats {
    /// A new heartbeat, counted from now.
    pub fn register(&self) -> Heartbeat {
        let last = Arc::new(AtomicU64::new(self.epoch.elapsed().as_millis() as u64));
        let mut beats = self.beats.lock().expect("heartbeat lock");
        beats.retain(|b| b.load(Ordering::Relaxed) != RETIRED);
        beats.push(last.clone());
        Heartbeat {
            epoch: self.epoch,
            last,
        }
    }

    /// Whether every loop beat within `within`.
    pub fn all_fresh(&self, within: Duration) -> bool {
        let now = self.epoch.elapsed().as_millis() as u64;
        let limit = within.as_millis() as u64;
        self.beats
            .lock()
            .expect("heartbeat lock")
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .all(|last| last == RETIRED || now.saturating_sub(last) <= limit)
    }
}

fn notify(state: NotifyState<'_>) {
    // Outside systemd NOTIFY_SOCKET is unset and this is a no-op; errors only mean no listener.
    let _ = sd_notify::notify(&[state]);
}

/// Tells systemd the daemon is ready.
pub fn ready() {
    notify(NotifyState::Ready);
}

/// Tells systemd a reload started.
pub fn reloading() {
    notify(NotifyState::Reloading);
}

/// Tells systemd the daemon is stopping.
pub fn stopping() {
    notify(NotifyState::Stopping);
}

/// Feeds the systemd watchdog (when `WatchdogSec=` is set) while all loops beat, until `shutdown`.
/// It runs for the daemon's whole life, reloads included: a reload waiting for a long scan to end
/// must not look like a wedge.
pub async fn feed(heartbeats: Arc<Heartbeats>, mut shutdown: watch::Receiver<bool>) {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    let mut tick = tokio::time::interval(period / 3);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        if heartbeats.all_fresh(period / 2) {
            notify(NotifyState::Watchdog);
        } else {
            tracing::error!("a registry loop stopped beating; withholding the watchdog keep-alive");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_heartbeat_is_noticed() {
        let hb = Heartbeats::default();
        let a = hb.register();
        let _b = hb.register();
        assert!(hb.all_fresh(Duration::from_secs(1)));
        std::thread::sleep(Duration::from_millis(30));
        a.beat();
        assert!(!hb.all_fresh(Duration::from_millis(10)), "b has not beaten");
    }

    #[test]
    fn a_retired_heartbeat_is_not_awaited() {
        let hb = Heartbeats::default();
        let a = hb.register();
        std::thread::sleep(Duration::from_millis(30));
        a.retire();
        assert!(hb.all_fresh(Duration::from_millis(10)));
        let _b = hb.register();
        assert_eq!(
            hb.beats.lock().unwrap().len(),
            1,
            "retired ones are dropped"
        );
    }
}
