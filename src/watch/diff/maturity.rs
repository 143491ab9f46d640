//! The maturity stage (`mature_after`): a reported tag that keeps its digest long enough gives
//! one `tag.matured`; the deadlines live in the snapshot, so a restart neither loses nor repeats
//! one.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Change, Diff, Maturing, Snapshot, reported};
use crate::config::TagFilter;

/// Deadlines of tags still reported carry over: a config edit may have stopped reporting one.
pub(super) fn carry_reported(snapshot: &mut Snapshot, prev: &Snapshot, filter: &TagFilter) {
    snapshot.maturing = prev
        .maturing
        .iter()
        .filter(|(t, _)| reported(filter, t))
        .map(|(t, m)| (t.clone(), m.clone()))
        .collect();
}

/// Keeps the maturity deadlines of `outcome` (`mature_after`, `None` = off): every reported
/// `Added` or `Updated` change with a digest starts one at `now`; a deadline whose tag moved or
/// vanished is dropped; one that passed, with the tag still on its digest, becomes a `Matured`
/// change. Call it last, on the changes that are really reported.
pub fn mature(outcome: &mut Diff, mature_after: Option<Duration>, now: SystemTime) {
    let Some(after) = mature_after else {
        outcome.snapshot.maturing.clear();
        return;
    };
    let ms = |t: SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    };
    let tags = &outcome.snapshot.tags;
    let mut maturing = std::mem::take(&mut outcome.snapshot.maturing);
    maturing.retain(|tag, m| {
        tags.get(tag)
            .is_some_and(|d| d.as_deref() == Some(&m.digest))
    });
    let mut matured = Vec::new();
    maturing.retain(|tag, m| {
        let due = m.deadline_ms <= ms(now);
        if due {
            matured.push(Change::Matured {
                tag: tag.clone(),
                digest: m.digest.clone(),
            });
        }
        !due
    });
    for change in &outcome.changes {
        if let (Some(_), Some(digest)) = (change.image(), change.digest()) {
            maturing.insert(
                change.tag().to_owned(),
                Maturing {
                    digest: digest.to_owned(),
                    // A duration past what the clock can hold is a deadline that never comes.
                    deadline_ms: now.checked_add(after).map_or(u64::MAX, ms),
                },
            );
        }
    }
    outcome.snapshot.maturing = maturing;
    outcome.changes.extend(matured);
    outcome.changes.sort_by(|a, b| a.tag().cmp(b.tag()));
}
