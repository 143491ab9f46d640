//! CloudEvents 1.0 building: one structured-JSON event per change, with a deterministic id.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::Kind;
use crate::watch::diff::{Change, ChangeKind, Details};

/// A built event, ready for the outbox and any sink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The CloudEvent `id`.
    pub id: String,
    /// The Kafka key: `<host>/<repository>`.
    pub key: String,
    /// The CloudEvent JSON.
    pub payload: String,
}

/// Where a change happened.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// Registry name from the config.
    pub registry: &'a str,
    /// The registry's identity (`store::identity`), which the id covers instead of the name.
    pub identity: &'a str,
    /// Registry kind.
    pub kind: Kind,
    /// `host[:port]`.
    pub host: &'a str,
    /// Full repository path.
    pub repository: &'a str,
}

impl ChangeKind {
    /// The CloudEvent `type`.
    pub fn event_type(self) -> &'static str {
        match self {
            ChangeKind::Added => "io.regwatch.tag.added",
            ChangeKind::Updated => "io.regwatch.tag.updated",
            ChangeKind::Removed => "io.regwatch.tag.removed",
            ChangeKind::Matured => "io.regwatch.tag.matured",
            ChangeKind::SignatureAdded => "io.regwatch.signature.added",
            ChangeKind::AttestationAdded => "io.regwatch.attestation.added",
        }
    }
}

/// The `dataschema` every event carries: `schema/event.schema.json`, by its versioned `$id`.
pub const DATASCHEMA: &str = "https://regwatch.dev/schema/v1/event.schema.json";

#[derive(Serialize)]
struct CloudEvent<'a> {
    specversion: &'static str,
    id: &'a str,
    source: String,
    #[serde(rename = "type")]
    kind: &'static str,
    subject: String,
    time: &'a str,
    datacontenttype: &'static str,
    dataschema: &'static str,
    data: Data<'a>,
}

#[derive(Serialize)]
struct Data<'a> {
    registry: &'a str,
    kind: &'static str,
    host: &'a str,
    repository: &'a str,
    tag: &'a str,
    digest: Option<&'a str>,
    previous_digest: Option<&'a str>,
    pushed_at: Option<String>,
    detected_at: &'a str,
    image: String,
    #[serde(flatten)]
    details: Details,
}

/// The event id: hex SHA-256 of registry identity, repository, tag, digest, change type and the
/// revision of the snapshot the change was diffed against. A redelivery, or a re-detection of a
/// change whose commit was lost, diffs against the same revision and so gets the same id; every
/// committed change advances the revision, so a later detection of the same move (A→B, back to A,
/// to B again) gets a new one.
pub fn event_id(
    identity: &str,
    repository: &str,
    tag: &str,
    digest: Option<&str>,
    kind: ChangeKind,
    revision: u64,
) -> String {
    let mut h = Sha256::new();
    for part in [
        identity,
        repository,
        tag,
        digest.unwrap_or(""),
        kind.event_type(),
        &revision.to_string(),
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

/// The last instant RFC 3339 can write (four-digit years): 9999-12-31T23:59:59.999Z, in ms.
const LAST_RFC3339_MS: u128 = 253_402_300_799_999;

/// Whether `t` has an RFC 3339 form: from 1970 (times before it are a registry's broken clock)
/// to the end of year 9999. `humantime` panics outside that range, so every time that came from
/// a registry is checked with this before it is formatted.
pub fn representable(t: SystemTime) -> bool {
    t.duration_since(UNIX_EPOCH)
        .is_ok_and(|d| d.as_millis() <= LAST_RFC3339_MS)
}

/// `t` in RFC 3339 with milliseconds, or `None` when it has no such form.
fn rfc3339(t: SystemTime) -> Option<String> {
    representable(t).then(|| humantime::format_rfc3339_millis(t).to_string())
}

/// Builds the event for one change, diffed against snapshot `revision` and detected at `detected`.
pub fn build(origin: Origin<'_>, change: &Change, revision: u64, detected: SystemTime) -> Event {
    let digest = change.digest();
    let id = event_id(
        origin.identity,
        origin.repository,
        change.tag(),
        digest,
        change.kind(),
        revision,
    );
    // The host's own clock; one set before 1970 still gets a well-formed event.
    let detected_at = rfc3339(detected).unwrap_or_else(|| "1970-01-01T00:00:00.000Z".into());
    let reference = format!("{}/{}:{}", origin.host, origin.repository, change.tag());
    let image = match (change.kind(), digest) {
        // A signature's tag is not the image: name the signed digest.
        (ChangeKind::SignatureAdded | ChangeKind::AttestationAdded, Some(d)) => {
            format!("{}/{}@{d}", origin.host, origin.repository)
        }
        (_, Some(d)) => format!("{reference}@{d}"),
        (_, None) => reference.clone(),
    };
    let event = CloudEvent {
        specversion: "1.0",
        id: &id,
        source: format!("regwatch/{}", origin.registry),
        kind: change.kind().event_type(),
        subject: reference,
        time: &detected_at,
        datacontenttype: "application/json",
        dataschema: DATASCHEMA,
        data: Data {
            registry: origin.registry,
            kind: origin.kind.as_str(),
            host: origin.host,
            repository: origin.repository,
            tag: change.tag(),
            digest,
            previous_digest: change.previous_digest(),
            pushed_at: change.pushed_at().and_then(rfc3339),
            detected_at: &detected_at,
            image,
            details: change.details(),
        },
    };
    let payload = serde_json::to_string(&event).expect("event JSON always serializes");
    Event {
        id,
        key: format!("{}/{}", origin.host, origin.repository),
        payload,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::diff::Image;
    use serde_json::Value;

    /// `team/app` on the registry `local` at 127.0.0.1:5000.
    fn local_origin() -> Origin<'static> {
        Origin {
            registry: "local",
            identity: "http://127.0.0.1:5000",
            kind: Kind::Oci,
            host: "127.0.0.1:5000",
            repository: "team/app",
        }
    }

    #[test]
    fn event_matches_the_contract() {
        let origin = local_origin();
        let (new, old) = (
            format!("sha256:{}", "b".repeat(64)),
            format!("sha256:{}", "a".repeat(64)),
        );
        let updated = |tag: &str, digest: &str| Change::Updated {
            tag: tag.into(),
            digest: digest.into(),
            previous_digest: old.clone(),
            pushed_at: None,
            image: Image::default(),
        };
        let change = updated("latest", &new);
        let e = build(origin, &change, 41, SystemTime::UNIX_EPOCH);
        assert_eq!(e.key, "127.0.0.1:5000/team/app");
        let v: Value = serde_json::from_str(&e.payload).unwrap();
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["id"], e.id.as_str());
        assert_eq!(e.id.len(), 64);
        assert_eq!(v["type"], "io.regwatch.tag.updated");
        assert_eq!(v["source"], "regwatch/local");
        assert_eq!(v["subject"], "127.0.0.1:5000/team/app:latest");
        assert_eq!(v["time"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["datacontenttype"], "application/json");
        assert_eq!(v["dataschema"], DATASCHEMA);
        let d = &v["data"];
        assert_eq!(d["registry"], "local");
        assert_eq!(d["kind"], "oci");
        assert_eq!(d["host"], "127.0.0.1:5000");
        assert_eq!(d["repository"], "team/app");
        assert_eq!(d["tag"], "latest");
        assert_eq!(d["digest"], new);
        assert_eq!(d["previous_digest"], old);
        assert_eq!(d["pushed_at"], Value::Null);
        assert_eq!(d["detected_at"], v["time"]);
        assert_eq!(d["image"], format!("127.0.0.1:5000/team/app:latest@{new}"));
        // Every field is the schema's, and the schema's $id is what dataschema names.
        let schema: Value =
            serde_json::from_str(include_str!("../schema/event.schema.json")).unwrap();
        assert_eq!(schema["$id"], DATASCHEMA);
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .build(&schema)
            .unwrap();
        let errors: Vec<String> = validator.iter_errors(&v).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{errors:?}");
        // The code and the schema agree on what a tag and a digest are: ECR's 300 characters
        // pass both; a digest in upper case passes neither.
        let long = updated(&"v".repeat(crate::registry::MAX_TAG_LEN), &new);
        assert!(crate::registry::valid_tag(long.tag()));
        let v: Value =
            serde_json::from_str(&build(origin, &long, 41, SystemTime::now()).payload).unwrap();
        assert!(
            validator.is_valid(&v),
            "a 300-character tag fits the schema"
        );
        let upper = format!("sha256:{}", "B".repeat(64));
        assert!(!crate::registry::valid_digest(&upper));
        let shouting = updated("latest", &upper);
        let v: Value =
            serde_json::from_str(&build(origin, &shouting, 41, SystemTime::now()).payload).unwrap();
        assert!(
            !validator.is_valid(&v),
            "the schema refuses what the code refuses"
        );
        // Same change against the same revision, detected later: same id.
        assert_eq!(build(origin, &change, 41, SystemTime::now()).id, e.id);
        // The same move against a later revision is another detection: another id.
        assert_ne!(build(origin, &change, 42, SystemTime::now()).id, e.id);
        // Another type, digest or registry: another id; the display name does not count.
        let id = |identity, digest, kind| {
            event_id(identity, "team/app", "latest", Some(digest), kind, 41)
        };
        assert_eq!(id("http://127.0.0.1:5000", &new, ChangeKind::Updated), e.id);
        assert_ne!(id("http://127.0.0.1:5000", &new, ChangeKind::Added), e.id);
        assert_ne!(id("http://127.0.0.1:5000", &old, ChangeKind::Updated), e.id);
        assert_ne!(id("http://127.0.0.1:5001", &new, ChangeKind::Updated), e.id);
        let renamed = Origin {
            registry: "renamed",
            ..origin
        };
        assert_eq!(build(renamed, &change, 41, SystemTime::now()).id, e.id);
    }

    #[test]
    fn registry_times_out_of_range_are_null_not_a_panic() {
        use std::time::Duration;
        let change = |pushed_at| Change::Added {
            tag: "v1".into(),
            digest: Some(format!("sha256:{}", "a".repeat(64))),
            pushed_at: Some(pushed_at),
            image: Image::default(),
        };
        let pushed = |t: SystemTime| {
            let e = build(local_origin(), &change(t), 1, UNIX_EPOCH);
            serde_json::from_str::<Value>(&e.payload).unwrap()["data"]["pushed_at"].clone()
        };
        // GCR's timeUploadedMs in year 10000, u64::MAX ms, and a pushed-at before 1970.
        for hostile in [
            UNIX_EPOCH + Duration::from_millis(253_402_300_800_000),
            UNIX_EPOCH + Duration::from_millis(u64::MAX),
            UNIX_EPOCH - Duration::from_secs(86_400),
        ] {
            assert_eq!(pushed(hostile), Value::Null, "{hostile:?}");
        }
        assert_eq!(
            pushed(UNIX_EPOCH + Duration::from_millis(253_402_300_799_999)),
            "9999-12-31T23:59:59.999Z"
        );
        // A host clock before 1970 still gives a well-formed event.
        let e = build(
            local_origin(),
            &change(UNIX_EPOCH),
            1,
            UNIX_EPOCH - Duration::from_secs(1),
        );
        let v: Value = serde_json::from_str(&e.payload).unwrap();
        assert_eq!(v["time"], "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn a_signature_event_names_the_signed_image_and_details_are_optional() {
        let origin = local_origin();
        let digest = format!("sha256:{}", "a".repeat(64));
        let change = Change::SignatureAdded {
            tag: format!("sha256-{}.sig", "a".repeat(64)),
            subject: digest.clone(),
            tags: vec!["v1".into()],
        };
        let v: Value =
            serde_json::from_str(&build(origin, &change, 3, SystemTime::UNIX_EPOCH).payload)
                .unwrap();
        assert_eq!(v["type"], "io.regwatch.signature.added");
        assert_eq!(
            v["data"]["image"],
            format!("127.0.0.1:5000/team/app@{digest}")
        );
        assert_eq!(v["data"]["tags"], serde_json::json!(["v1"]));
        for absent in [
            "signed",
            "version",
            "bump",
            "latest",
            "platforms",
            "attestations",
        ] {
            assert!(v["data"].get(absent).is_none(), "{absent} is left out");
        }
    }
}
