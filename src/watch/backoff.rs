//! Per-repository backoff, and the rule that tells a broken repository from a broken registry.
//!
//! One repository that keeps failing (deleted although the config names it, a corrupt manifest
//! store, a scope the credentials lack) must not slow the scans of its healthy siblings. So a
//! repository that failed `n` cycles in a row sits out the next `2^(n-1) - 1` cycles (0, 1, 3, then
//! 7: it is retried every 8th cycle at most), while the registry keeps its normal schedule. Only a
//! failure of the registry as a whole (429, or no repository of the cycle answered at all: the
//! registry unreachable, credentials refused, 5xx on every request) backs the registry off; then the
//! repositories' own counters are left alone, since the registry's fault is not theirs.
//!
//! Backoff counts cycles rather than time, so a jittered schedule never makes a repository miss the
//! cycle it was due in. State lives in memory with the scanner: a restart retries every repository
//! at once, and a reload that keeps the scanner keeps it.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::registry::RegistryError;

/// Consecutive failures after which a repository is skipped for the longest stretch.
const MAX_EXPONENT: u32 = 3;

/// How one repository's scan ended, as far as backoff cares.
pub enum RepoResult<'a> {
    /// Listed and diffed (tags whose lookup failed wait on their own: see `scan`).
    Scanned,
    /// Listed and diffed, but the store could not record it for now (cluster mode, Kafka away):
    /// retried next cycle, and no fault of the repository's.
    Unrecorded,
    /// Listed and diffed, but its state partition moved to another replica meanwhile (cluster
    /// mode): its new owner scans it, so it is neither retried here nor a fault.
    Moved,
    /// The scan failed with this registry error.
    Failed(&'a RegistryError),
}

/// What a cycle's results add up to.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Repositories whose failure counts (raced ones included once they keep racing).
    pub failed: usize,
    /// Repositories the store could not record for now; retried next cycle, not counted.
    pub unrecorded: usize,
    /// The failures are the registry's, not the repositories': back the whole registry off.
    pub registry_wide: bool,
}

#[derive(Default)]
struct Entry {
    /// Consecutive failed scans.
    failures: u32,
    /// Cycles still to sit out.
    skip: u32,
}

/// The backoff state of every repository of one registry.
#[derive(Default)]
pub struct RepoBackoff {
    entries: Mutex<HashMap<String, Entry>>,
}

impl RepoBackoff {
    /// Splits a full cycle's watch set into the repositories due now and the number sitting out
    /// their backoff; a skip is not a failure. Forgets repositories that left the watch set.
    pub fn due(&self, repos: Vec<String>) -> (Vec<String>, usize) {
        let mut entries = self.entries.lock().expect("backoff lock");
        if !entries.is_empty() {
            let watched: std::collections::HashSet<&str> =
                repos.iter().map(String::as_str).collect();
            entries.retain(|repo, _| watched.contains(repo.as_str()));
        }
        let mut skipped = 0;
        let due = repos
            .into_iter()
            .filter(|repo| match entries.get_mut(repo) {
                Some(e) if e.skip > 0 => {
                    e.skip -= 1;
                    skipped += 1;
                    false
                }
                _ => true,
            })
            .collect();
        (due, skipped)
    }

    /// Records a full cycle and judges it. `results` are the repositories scanned.
    pub fn record<'a>(
        &self,
        results: impl IntoIterator<Item = (&'a str, RepoResult<'a>)>,
    ) -> Verdict {
        let results: Vec<(&str, RepoResult<'_>)> = results.into_iter().collect();
        let answered = results
            .iter()
            .filter(|(_, r)| !matches!(r, RepoResult::Failed(_)))
            .count();
        let failed = results.len() - answered;
        let throttled = results
            .iter()
            .any(|(_, r)| matches!(r, RepoResult::Failed(RegistryError::RateLimited { .. })));
        // Credentials the source could not produce are the registry's, whatever answered before.
        let no_credentials = results
            .iter()
            .any(|(_, r)| matches!(r, RepoResult::Failed(RegistryError::NoCredentials(_))));
        let registry_wide = failed > 0 && (answered == 0 || throttled || no_credentials);
        let mut verdict = Verdict {
            registry_wide,
            ..Verdict::default()
        };
        let mut entries = self.entries.lock().expect("backoff lock");
        for (repo, result) in results {
            match result {
                RepoResult::Scanned => {
                    entries.remove(repo);
                }
                RepoResult::Unrecorded => verdict.unrecorded += 1,
                RepoResult::Moved => {}
                RepoResult::Failed(_) => {
                    verdict.failed += 1;
                    if !registry_wide {
                        Self::fail(entries.entry(repo.to_owned()).or_default());
                    }
                }
            }
        }
        verdict
    }

    /// Records a webhook-hinted scan: a success ends a repository's backoff, while failures are
    /// only counted, and left to the next full cycle, which can tell them from a registry outage.
    pub fn hinted<'a>(
        &self,
        results: impl IntoIterator<Item = (&'a str, RepoResult<'a>)>,
    ) -> Verdict {
        let mut verdict = Verdict::default();
        let mut entries = self.entries.lock().expect("backoff lock");
        for (repo, result) in results {
            match result {
                RepoResult::Scanned => {
                    entries.remove(repo);
                }
                RepoResult::Unrecorded => verdict.unrecorded += 1,
                RepoResult::Moved => {}
                RepoResult::Failed(_) => verdict.failed += 1,
            }
        }
        verdict
    }

    fn fail(e: &mut Entry) {
        e.failures = e.failures.saturating_add(1);
        e.skip = (1u32 << (e.failures - 1).min(MAX_EXPONENT)) - 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repos(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_failing_repository_sits_out_growing_stretches_of_cycles() {
        let b = RepoBackoff::default();
        let gone = RegistryError::NotFound("team/gone".into());
        let mut attempts = Vec::new();
        for cycle in 0..24 {
            let (due, _) = b.due(repos(&["team/app", "team/gone"]));
            if due.iter().any(|r| r == "team/gone") {
                attempts.push(cycle);
                let v = b.record([
                    ("team/app", RepoResult::Scanned),
                    ("team/gone", RepoResult::Failed(&gone)),
                ]);
                assert!(!v.registry_wide);
                assert_eq!(v.failed, 1);
            } else {
                b.record([("team/app", RepoResult::Scanned)]);
            }
        }
        assert_eq!(attempts, [0, 1, 3, 7, 15, 23]);
    }

    #[test]
    fn registry_wide_failures_leave_repositories_alone() {
        let b = RepoBackoff::default();
        let down = RegistryError::Status {
            status: 503,
            what: "tags/list".into(),
        };
        let v = b.record([
            ("a", RepoResult::Failed(&down)),
            ("b", RepoResult::Failed(&down)),
        ]);
        assert!(v.registry_wide);
        assert_eq!(b.due(repos(&["a", "b"])).1, 0, "nobody sits out");

        let throttled = RegistryError::RateLimited { retry_after: None };
        let v = b.record([
            ("a", RepoResult::Scanned),
            ("b", RepoResult::Failed(&throttled)),
        ]);
        assert!(v.registry_wide, "429 is about the registry");
    }

    /// Review: a credential source that fails mid-cycle (a token refresh after the first
    /// repositories were scanned with the old token) fails every repository after it; that is the
    /// registry's credentials, not those repositories, which must not sit out cycles for it.
    #[test]
    fn a_credential_source_failure_mid_cycle_is_registry_wide() {
        let b = RepoBackoff::default();
        let no_token = RegistryError::NoCredentials("metadata server unreachable".into());
        for _ in 0..3 {
            let v = b.record([
                ("a", RepoResult::Scanned),
                ("b", RepoResult::Failed(&no_token)),
                ("c", RepoResult::Failed(&no_token)),
            ]);
            assert!(v.registry_wide);
            assert_eq!(v.failed, 2);
        }
        assert_eq!(b.due(repos(&["a", "b", "c"])).1, 0, "nobody sits out");
    }

    /// Kafka away in cluster mode is not a dangling tag: however long it lasts, the repository is
    /// retried every cycle and never reported as failing.
    #[test]
    fn unrecorded_scans_are_retried_and_never_count() {
        let b = RepoBackoff::default();
        for _ in 0..20 {
            let v = b.record([("a", RepoResult::Unrecorded)]);
            assert_eq!((v.failed, v.unrecorded, v.registry_wide), (0, 1, false));
            assert_eq!(b.due(repos(&["a"])).0, ["a"]);
        }
    }

    #[test]
    fn repositories_that_leave_the_watch_set_are_forgotten() {
        let b = RepoBackoff::default();
        let e = RegistryError::NotFound("x".into());
        b.record([("a", RepoResult::Scanned), ("x", RepoResult::Failed(&e))]);
        b.record([("a", RepoResult::Scanned), ("x", RepoResult::Failed(&e))]);
        b.due(repos(&["a"]));
        assert!(b.entries.lock().unwrap().is_empty());
    }
}
