//! Cosign signatures and attestations end to end: a real `docker-registry`, cosign-style
//! `sha256-<hex>.sig|.att|.sbom` tags pushed as cosign's storage specification lays them out, and
//! `regwatch run` with the stdout sink. Requests go through a logging proxy so that digest lookups
//! (HEADs) are counted at the wire.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Auth, Daemon, Registry, Setup, assert_schema_valid, proxy, report};

const ADDED: &str = "io.regwatch.tag.added";
const SIGNATURE: &str = "io.regwatch.signature.added";
const ATTESTATION: &str = "io.regwatch.attestation.added";
/// Time for any late or duplicate event to show: several 1 s cycles.
const QUIET: Duration = Duration::from_secs(4);
const WITHIN: Duration = Duration::from_secs(15);

/// A daemon polling `team/app` every second through a proxy in front of `registry`.
async fn setup(registry: &Registry, extra: &str) -> (Setup, std::sync::Arc<proxy::ProxyState>) {
    let (wire, host) = proxy::start(&registry.url()).await;
    let setup = Setup::new(
        "interval = \"1s\"\njitter = \"0%\"\n",
        &format!(
            "[[registry]]\nname = \"local\"\nkind = \"oci\"\nurl = \"http://{host}\"\ninsecure = true\nrepositories = [\"team/app\"]\nrate_limit = 500\n{extra}"
        ),
    );
    (setup, wire)
}

const DOCKER_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// The manifest `reference` of `repo`, as pushed by [`Registry::push`].
async fn get_manifest(registry: &Registry, repo: &str, reference: &str) -> Vec<u8> {
    let resp = reqwest::Client::new()
        .get(format!(
            "{}/v2/{repo}/manifests/{reference}",
            registry.url()
        ))
        .header("accept", DOCKER_V2)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "get {repo}@{reference}");
    resp.bytes().await.unwrap().to_vec()
}

/// Puts `manifest` as `repo:tag`, as `docker push` (or `crane tag`) does.
async fn put_manifest(registry: &Registry, repo: &str, tag: &str, manifest: Vec<u8>) -> String {
    let resp = reqwest::Client::new()
        .put(format!("{}/v2/{repo}/manifests/{tag}", registry.url()))
        .header("content-type", DOCKER_V2)
        .body(manifest)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "put {repo}:{tag}");
    resp.headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_owned()
}

/// Tags `digest`, already in `repo`, as `tag` too.
async fn retag(registry: &Registry, repo: &str, digest: &str, tag: &str) {
    let manifest = get_manifest(registry, repo, digest).await;
    assert_eq!(put_manifest(registry, repo, tag, manifest).await, digest);
}

fn cosign_tag(digest: &str, kind: &str) -> String {
    format!("sha256-{}.{kind}", digest.strip_prefix("sha256:").unwrap())
}

fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

fn assert_ids_unique(events: &[Value]) {
    let ids: HashSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), events.len(), "duplicate ids: {events:#?}");
}

/// HEAD requests the proxy saw, by path.
fn heads(wire: &proxy::ProxyState) -> Vec<String> {
    wire.log
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.method == "HEAD")
        .map(|s| s.path.clone())
        .collect()
}

async fn started(setup: &Setup) -> Daemon {
    let daemon = setup.spawn();
    support::wait_ready(&setup.admin).await;
    daemon
}

/// Lets a few quiet cycles pass, stops `daemon` (which must exit 0) and returns its events.
async fn quiet_then_stop(daemon: Daemon) -> Vec<Value> {
    tokio::time::sleep(QUIET).await;
    let (code, out, err) = daemon.stop();
    assert_eq!(code, 0, "{err}");
    support::json_lines(&out)
}

/// Waits for the `signature.added` of `digest`.
async fn wait_signature_of(daemon: &Daemon, what: &str, digest: &str) {
    daemon
        .wait_event(what, WITHIN, |e| {
            e["type"] == SIGNATURE && e["data"]["digest"] == digest
        })
        .await;
}

/// How many of `events` are about `digest`.
fn about(events: &[Value], digest: &str) -> usize {
    events
        .iter()
        .filter(|e| e["data"]["digest"] == digest)
        .count()
}

/// The acceptance case of issue 12 (an image, then its `.sig` 10 s later), followed by an
/// attestation and an SBOM, and signatures for digests that only excluded tags point at.
#[tokio::test(flavor = "multi_thread")]
async fn a_later_signature_is_one_signature_added_and_never_a_tag() {
    let registry = Registry::start(Auth::None);
    let d0 = registry.push("team/app", "v0").await;
    let (setup, wire) = setup(&registry, "exclude_tags = [\"^dev\"]\n").await;
    let daemon = started(&setup).await;

    let d1 = registry.push("team/app", "v1").await;
    retag(&registry, "team/app", &d1, "stable").await;
    // An excluded tag on the same digest, and another excluded tag on a digest of its own.
    retag(&registry, "team/app", &d1, "dev-1").await;
    let d2 = registry.push("team/app", "dev-2").await;
    let pushed = Instant::now();
    for tag in ["v1", "stable"] {
        daemon
            .wait_event(&format!("tag.added for {tag}"), WITHIN, |e| {
                e["type"] == ADDED && e["data"]["tag"] == tag
            })
            .await;
    }
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(pushed.elapsed())).await;

    let sig = cosign_tag(&d1, "sig");
    registry.push_cosign("team/app", &d1, "sig").await;
    registry.push_cosign("team/app", &d2, "sig").await;
    // v0 is a baseline tag whose digest was never looked up: its signature is recorded only.
    registry.push_cosign("team/app", &d0, "sig").await;
    daemon
        .wait_event("signature.added", WITHIN, |e| e["type"] == SIGNATURE)
        .await;
    tokio::time::sleep(QUIET).await;
    registry.push_cosign("team/app", &d1, "att").await;
    daemon
        .wait_event("attestation.added (att)", WITHIN, |e| {
            e["type"] == ATTESTATION && e["data"]["attestations"] == json!(["att"])
        })
        .await;
    registry.push_cosign("team/app", &d1, "sbom").await;
    daemon
        .wait_event("attestation.added (sbom)", WITHIN, |e| {
            e["type"] == ATTESTATION && e["data"]["attestations"] == json!(["sbom"])
        })
        .await;
    // Signed again in place (a new manifest under the same .sig tag): not a second signature.
    registry.push_cosign("team/app", &d1, "sig").await;
    let events = quiet_then_stop(daemon).await;

    let added = of_type(&events, ADDED);
    let mut added_tags: Vec<&str> = added
        .iter()
        .map(|e| e["data"]["tag"].as_str().unwrap())
        .collect();
    added_tags.sort();
    assert_eq!(added_tags, ["stable", "v1"], "{events:#?}");
    for e in &added {
        assert_eq!(e["data"]["digest"], d1.as_str());
        assert_eq!(e["data"]["signed"], false, "{e}");
        assert_eq!(e["data"]["attestations"], json!([]), "{e}");
    }

    let signatures = of_type(&events, SIGNATURE);
    assert_eq!(
        signatures.len(),
        1,
        "exactly one signature.added: {events:#?}"
    );
    let s = signatures[0];
    assert_eq!(s["data"]["tag"], sig.as_str());
    assert_eq!(s["data"]["digest"], d1.as_str());
    let host = s["data"]["host"].as_str().unwrap();
    assert_eq!(s["data"]["image"], format!("{host}/team/app@{d1}"));
    // The subject's tags, as the filter reports them: the excluded dev-1 is not named.
    assert_eq!(s["data"]["tags"], json!(["stable", "v1"]));
    assert_eq!(s["data"].get("signed"), None, "{s}");

    let attestations = of_type(&events, ATTESTATION);
    assert_eq!(attestations.len(), 2, "{events:#?}");
    for (e, kind) in attestations.iter().zip(["att", "sbom"]) {
        assert_eq!(e["data"]["tag"], cosign_tag(&d1, kind));
        assert_eq!(e["data"]["digest"], d1.as_str());
        assert_eq!(e["data"]["tags"], json!(["stable", "v1"]));
    }

    // Nothing else: no tag.* for a cosign tag, nothing for the signatures of dev-2, which the
    // filter never reported, or of the baseline v0.
    assert_eq!(events.len(), 5, "{events:#?}");
    let cosign_as_tag = events
        .iter()
        .filter(|e| e["type"].as_str().unwrap().starts_with("io.regwatch.tag."))
        .filter(|e| e["data"]["tag"].as_str().unwrap().starts_with("sha256-"))
        .count();
    assert_schema_valid(&events);
    assert_ids_unique(&events);

    let heads = heads(&wire);
    let cosign_heads = heads.iter().filter(|p| p.contains("/sha256-")).count();
    report(
        "cosign: image, then its .sig 10 s later: tag.added / signature.added events",
        format!(
            "{} / {}",
            added.iter().filter(|e| e["data"]["tag"] == "v1").count(),
            signatures.len()
        ),
        "1 / 1",
    );
    report(
        "cosign: tag.* events and HEADs for .sig/.att/.sbom tags",
        format!("{cosign_as_tag} / {cosign_heads}"),
        "0 / 0",
    );
    assert_eq!(cosign_as_tag, 0, "{events:#?}");
    assert_eq!(cosign_heads, 0, "HEADs: {heads:?}");
    // One HEAD per new reported tag (v1, stable), none for the excluded or cosign tags.
    assert_eq!(heads.len(), 2, "HEADs: {heads:?}");
}

/// A signature in the same listing as its image annotates the image's event: `signed: true` and
/// no `signature.added`. Once with both pushed while the daemon was down (so one cycle surely sees
/// both), once with the signature pushed before its image was tagged, as `cosign sign <digest>`
/// of an image tagged later gives.
#[tokio::test(flavor = "multi_thread")]
async fn a_signature_listed_with_its_image_is_signed_true() {
    let registry = Registry::start(Auth::None);
    registry.push("team/app", "v0").await;
    let (setup, wire) = setup(&registry, "").await;
    let (code, _, err) = started(&setup).await.stop();
    assert_eq!(code, 0, "baseline: {err}");

    // While the daemon is down: v1 with its signature and SBOM; and an image d2 that exists
    // under no tag (pushed, then deleted; the registry keeps its blobs, so it can be put again).
    let d1 = registry.push("team/app", "v1").await;
    registry.push_cosign("team/app", &d1, "sig").await;
    registry.push_cosign("team/app", &d1, "sbom").await;
    let d2 = registry.push("team/app", "v2").await;
    let v2_manifest = get_manifest(&registry, "team/app", &d2).await;
    let deleted = reqwest::Client::new()
        .delete(format!("{}/v2/team/app/manifests/{d2}", registry.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 202, "delete {d2}");

    let daemon = started(&setup).await;
    daemon
        .wait_event("tag.added v1", WITHIN, |e| e["data"]["tag"] == "v1")
        .await;
    // d2 is signed while untagged (a signature for a digest no tag points at: recorded, not
    // reported), then tagged: its tag.added says signed.
    registry.push_cosign("team/app", &d2, "sig").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        put_manifest(&registry, "team/app", "v2", v2_manifest).await,
        d2
    );
    daemon
        .wait_event("tag.added v2", WITHIN, |e| e["data"]["tag"] == "v2")
        .await;
    let events = quiet_then_stop(daemon).await;

    assert_eq!(events.len(), 2, "{events:#?}");
    let v1 = events.iter().find(|e| e["data"]["tag"] == "v1").unwrap();
    assert_eq!(v1["type"], ADDED);
    assert_eq!(v1["data"]["signed"], true, "{v1}");
    assert_eq!(v1["data"]["attestations"], json!(["sbom"]), "{v1}");
    let v2 = events.iter().find(|e| e["data"]["tag"] == "v2").unwrap();
    assert_eq!(v2["type"], ADDED);
    assert_eq!(v2["data"]["digest"], d2.as_str());
    assert_eq!(v2["data"]["signed"], true, "{v2}");
    assert_eq!(v2["data"]["attestations"], json!([]), "{v2}");
    assert_schema_valid(&events);
    assert_ids_unique(&events);
    let cosign_heads = heads(&wire)
        .iter()
        .filter(|p| p.contains("/sha256-"))
        .count();
    report(
        "cosign: image and signature in one listing: signed / signature.added events / cosign HEADs",
        format!(
            "{} / {} / {cosign_heads}",
            v1["data"]["signed"],
            of_type(&events, SIGNATURE).len()
        ),
        "true / 0 / 0",
    );
    assert_eq!(cosign_heads, 0);
}

/// `signature_tags = true` reports cosign tags as the tags they are, with their own digest.
#[tokio::test(flavor = "multi_thread")]
async fn signature_tags_true_reports_the_sig_tag_as_a_tag() {
    let registry = Registry::start(Auth::None);
    registry.push("team/app", "v0").await;
    let (setup, wire) = setup(&registry, "signature_tags = true\n").await;
    let daemon = started(&setup).await;
    let d1 = registry.push("team/app", "v1").await;
    daemon
        .wait_event("tag.added v1", WITHIN, |e| e["data"]["tag"] == "v1")
        .await;
    let sig = cosign_tag(&d1, "sig");
    let sig_digest = registry.push_cosign("team/app", &d1, "sig").await;
    daemon
        .wait_event("tag.added for the .sig tag", WITHIN, |e| {
            e["data"]["tag"] == sig.as_str()
        })
        .await;
    let events = quiet_then_stop(daemon).await;
    assert_eq!(events.len(), 2, "{events:#?}");
    let s = events
        .iter()
        .find(|e| e["data"]["tag"] == sig.as_str())
        .unwrap();
    assert_eq!(s["type"], ADDED);
    assert_eq!(s["data"]["digest"], sig_digest.as_str());
    assert_eq!(of_type(&events, SIGNATURE).len(), 0);
    assert_schema_valid(&events);
    assert_ids_unique(&events);
    assert!(
        heads(&wire).iter().any(|p| p.ends_with(&sig)),
        "the .sig tag is looked up"
    );
}

/// On a listing that carries every tag's digest (Google's `manifest` map here; ECR's and the
/// native listings likewise), excluded tags have digests too: a signature for an image that only
/// an excluded tag points at is still nobody's news, and a signature names only reported tags.
/// A baseline tag's digest is known there, so its later signature is reported.
#[tokio::test(flavor = "multi_thread")]
async fn signatures_on_a_listing_with_digests_name_only_reported_tags() {
    use support::synthetic::{self, Synthetic};
    let state = std::sync::Arc::new(Synthetic::default());
    *state.google_manifest.lock().unwrap() = true;
    let d0 = state.put("team/app", "v0", 0);
    let host = synthetic::serve(state.clone()).await;
    let setup = Setup::new(
        "interval = \"1s\"\njitter = \"0%\"\n",
        &format!(
            "[[registry]]\nname = \"local\"\nkind = \"oci\"\nurl = \"http://{host}\"\ninsecure = true\nrepositories = [\"team/app\"]\nexclude_tags = [\"^dev\"]\n"
        ),
    );
    let daemon = started(&setup).await;
    let d1 = state.put("team/app", "v1", 1);
    let dev = state.put("team/app", "dev", 1);
    daemon
        .wait_event("tag.added v1", WITHIN, |e| e["data"]["tag"] == "v1")
        .await;
    for subject in [&d0, &d1, &dev] {
        state.put("team/app", &cosign_tag(subject, "sig"), 1);
    }
    wait_signature_of(&daemon, "signature.added for v1", &d1).await;
    let events = quiet_then_stop(daemon).await;
    let mut seen: Vec<(&str, &str, Value)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap(),
                e["data"]["digest"].as_str().unwrap(),
                e["data"]["tags"].clone(),
            )
        })
        .collect();
    seen.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    let mut want = vec![
        (SIGNATURE, d0.as_str(), json!(["v0"])),
        (SIGNATURE, d1.as_str(), json!(["v1"])),
        (ADDED, d1.as_str(), Value::Null),
    ];
    want.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    assert_eq!(seen, want, "nothing for the excluded dev: {events:#?}");
    assert_schema_valid(&events);
    assert_ids_unique(&events);
    let heads = state
        .head_requests
        .load(std::sync::atomic::Ordering::Relaxed);
    report(
        "cosign: listing with digests, signature for an image only an excluded tag points at: events",
        about(&events, &dev),
        "0",
    );
    assert_eq!(heads, 0, "the listing gives every digest");
}

/// With `[registry.versions]`, a pre-release that `prerelease = false` never reports is looked up
/// (it is a selected tag) but never reported: its signature is nobody's news either, while the
/// release's signature is a `signature.added` as usual.
#[tokio::test(flavor = "multi_thread")]
async fn a_signature_of_a_pre_release_that_was_not_reported_is_not_reported() {
    let registry = Registry::start(Auth::None);
    registry.push("team/app", "v1.0.0").await;
    let (setup, _wire) = setup(
        &registry,
        "\n[registry.versions]\nscheme = \"semver\"\nprerelease = false\n",
    )
    .await;
    let daemon = started(&setup).await;
    let release = registry.push("team/app", "v1.1.0").await;
    let rc = registry.push("team/app", "v1.2.0-rc.1").await;
    daemon
        .wait_event("tag.added v1.1.0", WITHIN, |e| e["data"]["tag"] == "v1.1.0")
        .await;
    // A cycle or two for the pre-release to be listed (and dropped) too.
    tokio::time::sleep(Duration::from_secs(3)).await;
    registry.push_cosign("team/app", &rc, "sig").await;
    registry.push_cosign("team/app", &release, "sig").await;
    wait_signature_of(&daemon, "signature.added for v1.1.0", &release).await;
    let events = quiet_then_stop(daemon).await;
    let about_rc = about(&events, &rc);
    report(
        "cosign: signature of a pre-release that prerelease = false never reported: events",
        about_rc,
        "0",
    );
    assert_eq!(about_rc, 0, "{events:#?}");
    assert_eq!(events.len(), 2, "{events:#?}");
    assert_eq!(
        of_type(&events, SIGNATURE)[0]["data"]["tags"],
        json!(["v1.1.0"])
    );
    assert_schema_valid(&events);
    assert_ids_unique(&events);
}

/// With `require_platforms`, an image lacking one is never reported, so neither is its signature.
#[tokio::test(flavor = "multi_thread")]
async fn a_signature_of_an_image_require_platforms_kept_out_is_not_reported() {
    let registry = Registry::start(Auth::None);
    registry.push("team/app", "v0").await;
    let (setup, _wire) = setup(&registry, "require_platforms = [\"linux/arm64\"]\n").await;
    let daemon = started(&setup).await;
    let amd = registry.push("team/app", "amd").await;
    let multi = registry
        .push_index("team/app", "multi", &["linux/amd64", "linux/arm64"], true)
        .await;
    daemon
        .wait_event("tag.added multi", WITHIN, |e| e["data"]["tag"] == "multi")
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    registry.push_cosign("team/app", &amd, "sig").await;
    registry.push_cosign("team/app", &multi, "sig").await;
    wait_signature_of(&daemon, "signature.added for multi", &multi).await;
    let events = quiet_then_stop(daemon).await;
    let about_amd = about(&events, &amd);
    report(
        "cosign: signature of an image require_platforms kept out: events",
        about_amd,
        "0",
    );
    assert_eq!(about_amd, 0, "{events:#?}");
    assert_eq!(events.len(), 2, "{events:#?}");
    assert_schema_valid(&events);
    assert_ids_unique(&events);
}
