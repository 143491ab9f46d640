//! The versions stage (`[registry.versions]`): drops the added and moved tags the policy does
//! not report, and reads the others (`version`, `variant`, `bump`, `latest`, `points_to`).

use super::{ChangeKind, Diff, Snapshot, VersionFacts};
use crate::config::TagFilter;
use crate::watch::versions::{RULES, VersionIndex, VersionPolicy};

/// Applies `policy` to `diff`'s changes. Only the tags the filter selects are versions "known"
/// to compare with. Returns the added tags that only `only_newer` kept back.
pub(super) fn judge(
    diff: &mut Diff,
    policy: &VersionPolicy,
    prev: &Snapshot,
    filter: &TagFilter,
) -> Vec<String> {
    let before = prev
        .tags
        .keys()
        .map(String::as_str)
        .filter(|t| filter.selects(t));
    let after = diff
        .snapshot
        .tags
        .iter()
        .filter(|(t, _)| filter.selects(t))
        .map(|(t, d)| (t.as_str(), d.as_deref()));
    let judged: Vec<(&str, Option<&str>)> =
        diff.changes.iter().map(|c| (c.tag(), c.digest())).collect();
    let index = VersionIndex::new(policy, before, after, &judged);
    let mut held_back = Vec::new();
    diff.changes.retain_mut(|change| {
        let is_new = change.kind() == ChangeKind::Added;
        let verdict = index.judge(change.tag(), change.digest(), is_new);
        if !verdict.report {
            if is_new && policy.admits(change.tag()) {
                held_back.push(change.tag().to_owned());
            }
            return false;
        }
        if let Some(image) = change.image_mut() {
            image.version = Some(match (verdict.version, verdict.bump) {
                (Some((version, variant)), Some(bump)) => VersionFacts::Version {
                    version,
                    variant,
                    bump,
                    latest: verdict.latest,
                    points_to: verdict.points_to,
                },
                _ => VersionFacts::NoVersion,
            });
        }
        true
    });
    held_back
}

/// Brings a snapshot written under earlier version rules up to these. A tag the earlier rules
/// did not report, but these do (Red Hat's `8.9-1107`, read then as a pre-release), was never
/// announced: it is held back, so that neither its removal nor its signature is news until a
/// move of it is reported. A tag they reported and these do not (`6.2.0-M1`, read then as a
/// release) leaves as a config edit that stops reporting it does. Idempotent.
pub fn upgrade(snapshot: &mut Snapshot, filter: &TagFilter) {
    if snapshot.version_rules >= RULES {
        return;
    }
    if let Some(policy) = &filter.versions {
        let announced_never: Vec<String> = snapshot
            .tags
            .keys()
            .filter(|t| filter.selects(t))
            .filter(|t| policy.admits(t) && !policy.admitted_before_rules_1(t))
            .cloned()
            .collect();
        snapshot.held_back.extend(announced_never);
    }
    snapshot.version_rules = RULES;
}
