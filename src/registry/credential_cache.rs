//! The one cache for minted credentials: registry bearer tokens per scope, Entra and ACR refresh
//! tokens, Google access tokens, credential helpers' answers and Docker Hub's API token. Each
//! entry is renewed early by one rule, fetched by one caller while the others wait for its answer
//! (single-flight per key), and dropped on a refusal only when it is old enough for a new one to
//! differ (the refusal gate).

use std::borrow::Borrow;
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::RegistryError;

/// The longest lifetime believed. A lifetime is a peer's number (`expires_in`, a JWT's `exp`);
/// past what `Instant` holds, adding it would panic. Google's and Entra's tokens live an hour,
/// ACR refresh tokens three; a day leaves room and bounds how long a lie is trusted.
pub const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// A refusal of a value minted less than this ago keeps it: it was refused for the identity it
/// names (a missing role or IAM binding), which a new one shares, or the refusal answered a
/// request that still carried the value it replaced. Minting again would only cost a call to the
/// identity provider per refused repository. Older values are dropped: revoked or rotated ones
/// are then replaced within this long.
pub const REFUSAL_GRACE: Duration = Duration::from_secs(30);
/// How long a failed fetch is the answer for its key: the callers that waited on it, and those
/// that ask right after (each repository's scope asks), share its failure instead of each
/// trying again, or waiting out its timeout, in turn.
pub const FAILURE_HOLD: Duration = Duration::from_secs(5);
/// The least time a value is renewed before it expires: one request with its retries.
const MIN_MARGIN: Duration = Duration::from_secs(5);

/// How long after minting a value of `lifetime` is renewed. A tenth of the lifetime early, so the
/// margin scales with how long the issuer meant it to live, and at least 5 s, so a
/// request that reads it just before renewal still reaches the registry in time; but never more
/// than half the lifetime, so a short-lived token (5 s) is still reused for half its life instead
/// of being fetched for every request. Absurd lifetimes are clamped to [`MAX_LIFETIME`].
pub fn refresh_after(lifetime: Duration) -> Duration {
    let lifetime = lifetime.min(MAX_LIFETIME);
    let margin = (lifetime / 10).max(MIN_MARGIN).min(lifetime / 2);
    lifetime - margin
}

struct Entry<V> {
    value: V,
    refresh_at: Instant,
    minted_at: Instant,
}

struct State<V> {
    entry: Option<Entry<V>>,
    failed: Option<(RegistryError, Instant)>,
}

/// One key's entry, and the gate its fetches take one at a time.
struct Slot<V> {
    gate: tokio::sync::Mutex<()>,
    state: Mutex<State<V>>,
}

impl<V: Clone> Slot<V> {
    fn state(&self) -> std::sync::MutexGuard<'_, State<V>> {
        self.state.lock().expect("credential cache slot lock")
    }

    /// The value while it is fresh, or the failure while it is held.
    fn current(&self) -> Option<Result<V, RegistryError>> {
        let state = self.state();
        let now = Instant::now();
        if let Some(e) = state.entry.as_ref().filter(|e| now < e.refresh_at) {
            return Some(Ok(e.value.clone()));
        }
        state
            .failed
            .as_ref()
            .filter(|(_, at)| now.saturating_duration_since(*at) < FAILURE_HOLD)
            .map(|(e, _)| Err(e.clone()))
    }
}

/// Minted credentials by key, each renewed early, fetched once for all concurrent callers, and
/// dropped on refusal only past [`REFUSAL_GRACE`].
pub struct CredentialCache<K, V> {
    slots: Mutex<HashMap<K, Arc<Slot<V>>>>,
}

impl<K, V> Default for CredentialCache<K, V> {
    fn default() -> Self {
        CredentialCache {
            slots: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash, V: Clone> CredentialCache<K, V> {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<K, Arc<Slot<V>>>> {
        self.slots.lock().expect("credential cache lock")
    }

    fn slot<Q>(&self, key: &Q) -> Arc<Slot<V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let mut slots = self.slots();
        if let Some(slot) = slots.get(key) {
            return slot.clone();
        }
        slots
            .entry(key.to_owned())
            .or_insert_with(|| {
                Arc::new(Slot {
                    gate: tokio::sync::Mutex::new(()),
                    state: Mutex::new(State {
                        entry: None,
                        failed: None,
                    }),
                })
            })
            .clone()
    }

    /// The value for `key`: the cached one while fresh, else what `fetch` mints (a value and its
    /// lifetime). Concurrent callers share one fetch and its outcome.
    pub async fn get<Q, F, Fut>(&self, key: &Q, fetch: F) -> Result<V, RegistryError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(V, Duration), RegistryError>>,
    {
        let slot = self.slot(key);
        if let Some(answer) = slot.current() {
            return answer;
        }
        let _gate = slot.gate.lock().await;
        // Whoever held the gate before may have fetched it meanwhile.
        if let Some(answer) = slot.current() {
            return answer;
        }
        let fetched = fetch().await;
        let mut state = slot.state();
        let now = Instant::now();
        match fetched {
            Ok((value, lifetime)) => {
                state.entry = Some(Entry {
                    value: value.clone(),
                    refresh_at: now + refresh_after(lifetime),
                    minted_at: now,
                });
                state.failed = None;
                Ok(value)
            }
            Err(e) => {
                state.failed = Some((e.clone(), now));
                Err(e)
            }
        }
    }

    /// The value was refused: drops it unless it was minted less than [`REFUSAL_GRACE`] ago.
    /// Returns whether the next [`get`](Self::get) fetches anew.
    pub fn refused<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let Some(slot) = self.slots().get(key).cloned() else {
            return true;
        };
        let mut state = slot.state();
        if state
            .entry
            .as_ref()
            .is_some_and(|e| e.minted_at.elapsed() < REFUSAL_GRACE)
        {
            return false;
        }
        state.entry = None;
        true
    }

    /// Drops `key`'s value whatever its age: its issuer asked for a new one (a registry's
    /// challenge for a scope), or it decides again per request at no cost beyond one call.
    pub fn invalidate<Q>(&self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some(slot) = self.slots().get(key).cloned() {
            slot.state().entry = None;
        }
    }

    /// Drops every value and held failure: what they were minted from changed. A fetch in
    /// flight lands in a slot no longer reachable, so its answer is not kept.
    pub fn clear(&self) {
        self.slots().clear();
    }

    /// Makes `key`'s value `by` older, as if minted that much earlier.
    #[cfg(test)]
    fn age(&self, key: &K, by: Duration) {
        if let Some(slot) = self.slots().get(key).cloned()
            && let Some(e) = slot.state().entry.as_mut()
        {
            e.minted_at = e.minted_at.checked_sub(by).expect("an uptime past `by`");
            e.refresh_at = e.refresh_at.checked_sub(by).expect("an uptime past `by`");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    type Cache = CredentialCache<&'static str, String>;

    /// A fetch that counts its calls and mints `token-N` living `lifetime`.
    async fn mint(
        calls: &AtomicUsize,
        lifetime: Duration,
    ) -> Result<(String, Duration), RegistryError> {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok((format!("token-{n}"), lifetime))
    }

    /// A fetch that counts its calls and fails after a while, as a stalled endpoint does.
    async fn fail(calls: &AtomicUsize) -> Result<(String, Duration), RegistryError> {
        calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        Err(RegistryError::NoCredentials("down".into()))
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn one_rule_for_early_refresh_clamps_absurd_lifetimes() {
        let s = Duration::from_secs;
        assert_eq!(refresh_after(s(3600)), s(3240), "a tenth early");
        assert_eq!(refresh_after(s(20)), s(15), "at least 5 s early");
        assert_eq!(refresh_after(s(5)), Duration::from_millis(2500), "half");
        assert_eq!(refresh_after(Duration::ZERO), Duration::ZERO);
        for absurd in [s(10_000_000_000_000_000_000), Duration::MAX] {
            assert_eq!(refresh_after(absurd), MAX_LIFETIME * 9 / 10);
            let _ = Instant::now() + refresh_after(absurd);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn eight_getters_of_an_expired_entry_share_one_fetch() {
        let cache = Arc::new(Cache::new());
        let calls = Arc::new(AtomicUsize::new(0));
        assert_eq!(
            cache.get(&"scope", || mint(&calls, HOUR)).await.unwrap(),
            "token-1"
        );
        cache.age(&"scope", HOUR);
        let getters: Vec<_> = (0..8)
            .map(|_| {
                let (cache, calls) = (cache.clone(), calls.clone());
                tokio::spawn(async move { cache.get(&"scope", || mint(&calls, HOUR)).await })
            })
            .collect();
        for g in getters {
            assert_eq!(g.await.unwrap().unwrap(), "token-2");
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "one fetch for eight getters"
        );
    }

    #[tokio::test]
    async fn getters_waiting_on_a_failed_fetch_share_its_failure() {
        let cache = Arc::new(Cache::new());
        let calls = Arc::new(AtomicUsize::new(0));
        let getters: Vec<_> = (0..4)
            .map(|_| {
                let (cache, calls) = (cache.clone(), calls.clone());
                tokio::spawn(async move { cache.get(&"scope", || fail(&calls)).await })
            })
            .collect();
        for g in getters {
            assert!(g.await.unwrap().is_err());
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_refusal_right_after_minting_keeps_the_value() {
        let cache = Cache::new();
        let calls = AtomicUsize::new(0);
        cache.get(&"k", || mint(&calls, HOUR)).await.unwrap();
        for _ in 0..6 {
            assert!(!cache.refused(&"k"), "kept");
        }
        assert_eq!(
            cache.get(&"k", || mint(&calls, HOUR)).await.unwrap(),
            "token-1"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_refusal_of_an_old_value_drops_it() {
        let cache = Cache::new();
        let calls = AtomicUsize::new(0);
        cache.get(&"k", || mint(&calls, HOUR)).await.unwrap();
        cache.age(&"k", REFUSAL_GRACE);
        assert!(cache.refused(&"k"), "dropped");
        assert_eq!(
            cache.get(&"k", || mint(&calls, HOUR)).await.unwrap(),
            "token-2"
        );
        // The new value is young: the refusals still in flight for the old one keep it.
        assert!(!cache.refused(&"k"));
        assert!(cache.refused(&"never minted"));
    }

    #[tokio::test]
    async fn values_are_renewed_before_they_expire() {
        let cache = Cache::new();
        let calls = AtomicUsize::new(0);
        let lifetime = Duration::from_secs(100);
        cache.get(&"k", || mint(&calls, lifetime)).await.unwrap();
        cache.age(&"k", Duration::from_secs(89));
        assert_eq!(
            cache.get(&"k", || mint(&calls, lifetime)).await.unwrap(),
            "token-1"
        );
        // 91 s into a 100 s lifetime: renewed, 9 s before it would have expired.
        cache.age(&"k", Duration::from_secs(2));
        assert_eq!(
            cache.get(&"k", || mint(&calls, lifetime)).await.unwrap(),
            "token-2"
        );
        // Invalidated: fetched again whatever its age.
        cache.invalidate(&"k");
        assert_eq!(
            cache.get(&"k", || mint(&calls, lifetime)).await.unwrap(),
            "token-3"
        );
    }
}
