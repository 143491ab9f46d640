//! The cosign stage: signature and attestation tags (`sha256-<hex>.sig|.att|.sbom`) annotate
//! their subject's event, or are news of their own when the subject was reported before.

use std::collections::HashMap;

use super::{Change, Diff, Snapshot, reported};
use crate::config::TagFilter;

/// At most this many tags in a signature event's `tags` (in tag order): a digest tagged by every
/// CI build would otherwise make an event past Kafka's message limit, which blocks the outbox.
pub const MAX_SUBJECT_TAGS: usize = 100;

/// The subject digest and kind (`sig`, `att`, `sbom`) of a cosign tag: `sha256-<hex>.sig` signs
/// `sha256:<hex>`. Any other tag is `None`.
pub fn cosign_subject(tag: &str) -> Option<(String, &'static str)> {
    let (subject, suffix) = tag.rsplit_once('.')?;
    let kind = match suffix {
        "sig" => "sig",
        "att" => "att",
        "sbom" => "sbom",
        _ => return None,
    };
    let hex = subject.strip_prefix("sha256-")?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
    .then(|| (format!("sha256:{hex}"), kind))
}

/// The cosign tag of `kind` for `digest`, the inverse of [`cosign_subject`].
pub(super) fn cosign_tag(digest: &str, kind: &str) -> Option<String> {
    digest
        .strip_prefix("sha256:")
        .map(|hex| format!("sha256-{hex}.{kind}"))
}

/// Sets `signed` and `attestations` on every added or moved image, then adds a change for each
/// of `new_tags` that is a cosign tag of an image reported before.
pub(super) fn annotate(
    diff: &mut Diff,
    prev: &Snapshot,
    filter: &TagFilter,
    new_tags: Vec<String>,
) {
    let Diff { snapshot, changes } = diff;
    for change in changes.iter_mut() {
        let digest = change.digest().map(str::to_owned);
        if let (Some(image), Some(digest)) = (change.image_mut(), digest) {
            let has =
                |kind| cosign_tag(&digest, kind).is_some_and(|t| snapshot.tags.contains_key(&t));
            image.signed = Some(has("sig"));
            image.attestations = Some(["att", "sbom"].into_iter().filter(|k| has(k)).collect());
        }
    }
    let new_cosign: Vec<_> = new_tags
        .into_iter()
        .filter_map(|t| Some((cosign_subject(&t)?, t)))
        .collect();
    if new_cosign.is_empty() {
        return;
    }
    // Indexed once: a signed backlog brings thousands of signatures in one cycle.
    let (before, now) = (subjects(prev, filter), subjects(snapshot, filter));
    let added: Vec<Change> = new_cosign
        .into_iter()
        .filter_map(|((subject, kind), tag)| {
            before.get(subject.as_str())?;
            let tags = now
                .get(subject.as_str())?
                .iter()
                .take(MAX_SUBJECT_TAGS)
                .map(|t| t.to_string())
                .collect();
            Some(match kind {
                "sig" => Change::SignatureAdded { tag, subject, tags },
                kind => Change::AttestationAdded {
                    tag,
                    subject,
                    kind,
                    tags,
                },
            })
        })
        .collect();
    changes.extend(added);
}

/// The reported tags (never cosign's own) pointing at each digest of `s`, in tag order.
fn subjects<'a>(s: &'a Snapshot, filter: &TagFilter) -> HashMap<&'a str, Vec<&'a str>> {
    let mut by_digest: HashMap<&str, Vec<&str>> = HashMap::new();
    for (tag, digest) in &s.tags {
        if let Some(digest) = digest
            && cosign_subject(tag).is_none()
            && reported(filter, tag)
            && !s.held_back.contains(tag)
        {
            by_digest.entry(digest).or_default().push(tag);
        }
    }
    by_digest
}
