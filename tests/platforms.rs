//! `platforms`, `require_platforms` and `allow_pulls` against a real `docker-registry`, with real
//! OCI image indexes and Docker manifest lists pushed to it (OCI image-spec image-index.md;
//! Docker image manifest v2 schema 2). Requests are counted at the wire by a proxy in front of it.

mod support;

use std::sync::Arc;

use serde_json::{Value, json};
use support::proxy::{self, Fault, ProxyState};
use support::token_server::{Style, TokenServer};
use support::{Auth, Registry, Setup, assert_schema_valid, json_lines, report};

/// Manifest GETs (`/v2/<repo>/manifests/<ref>`) and blob GETs the proxy saw after the first `from`
/// requests.
fn gets(wire: &Arc<ProxyState>, from: usize) -> (usize, usize) {
    let log = wire.log.lock().unwrap();
    let get = |part: &str| {
        log[from..]
            .iter()
            .filter(|s| s.method == "GET" && s.path.contains(part))
            .count()
    };
    (get("/manifests/"), get("/blobs/"))
}

fn seen(wire: &Arc<ProxyState>) -> usize {
    wire.log.lock().unwrap().len()
}

/// Runs `once` and returns its events.
fn once(setup: &Setup) -> Vec<Value> {
    let (code, out, err) = setup.regwatch(&["once"]);
    assert_eq!(code, 0, "{out}{err}");
    json_lines(&out)
}

fn oci_block(host: &str, extra: &str) -> String {
    format!(
        "[[registry]]\nname = \"local\"\nkind = \"oci\"\nurl = \"http://{host}\"\ninsecure = true\nrepositories = [\"team/app\"]\n{extra}\n"
    )
}

/// A registry holding `team/app:v0`, a counting proxy in front of it, and a `Setup` watching it
/// through the proxy with `extra` in its block, after the baseline cycle (which reports nothing).
async fn watched(extra: &str) -> (Registry, Arc<ProxyState>, Setup) {
    let registry = Registry::start(Auth::None);
    registry.push("team/app", "v0").await;
    let (wire, host) = proxy::start(&registry.url()).await;
    let setup = Setup::new("", &oci_block(&host, extra));
    assert!(once(&setup).is_empty(), "baseline");
    (registry, wire, setup)
}

/// Pushes a two-platform (linux/amd64, linux/arm64) OCI index to `team/app:tag`.
async fn push_amd_arm(registry: &Registry, tag: &str) -> String {
    registry
        .push_index("team/app", tag, &["linux/amd64", "linux/arm64"], true)
        .await
}

/// GETs of the manifest `digest` the proxy saw after the first `from` requests.
fn gets_of(wire: &Arc<ProxyState>, digest: &str, from: usize) -> usize {
    wire.log.lock().unwrap()[from..]
        .iter()
        .filter(|s| s.method == "GET" && s.path.ends_with(&format!("/manifests/{digest}")))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn platforms_of_new_digests_are_reported_and_looked_up_once() {
    let (registry, wire, setup) = watched("mutable_tags = [\"multi\"]\nplatforms = true").await;
    let mut all = Vec::new();

    assert_eq!(gets(&wire, 0), (0, 0), "a baseline looks nothing up");

    // A two-platform OCI index, with a buildx attestation manifest (unknown/unknown) beside them.
    let two = registry
        .push_index(
            "team/app",
            "multi",
            &["linux/arm64", "unknown/unknown", "linux/amd64"],
            true,
        )
        .await;
    let mark = seen(&wire);
    let events = once(&setup);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["type"], "io.regwatch.tag.added");
    assert_eq!(events[0]["data"]["digest"], two.as_str());
    assert_eq!(
        events[0]["data"]["platforms"],
        json!(["linux/amd64", "linux/arm64"])
    );
    assert!(events[0]["data"].get("platforms_added").is_none());
    assert_eq!(gets(&wire, mark), (1, 0), "one GET of the index, no blob");
    report("platforms: requests per new multi-platform digest", 1, "1");
    all.extend(events);

    // The tag re-pushed as a Docker manifest list with a third platform.
    let three = registry
        .push_index(
            "team/app",
            "multi",
            &["linux/amd64", "linux/arm64", "linux/arm/v7"],
            false,
        )
        .await;
    let mark = seen(&wire);
    let events = once(&setup);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["type"], "io.regwatch.tag.updated");
    assert_eq!(events[0]["data"]["previous_digest"], two.as_str());
    assert_eq!(events[0]["data"]["digest"], three.as_str());
    assert_eq!(
        events[0]["data"]["platforms"],
        json!(["linux/amd64", "linux/arm/v7", "linux/arm64"])
    );
    assert_eq!(
        events[0]["data"]["platforms_added"],
        json!(["linux/arm/v7"])
    );
    assert_eq!(gets(&wire, mark), (1, 0));
    all.extend(events);

    // Another tag on the known digest, seen by a new process: reported with its platforms from the
    // snapshot, never fetched again.
    registry.retag("team/app", &three, "stable").await;
    let mark = seen(&wire);
    let events = once(&setup);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        (events[0]["data"]["tag"].as_str(), &events[0]["type"]),
        (Some("stable"), &json!("io.regwatch.tag.added"))
    );
    assert_eq!(
        events[0]["data"]["platforms"],
        json!(["linux/amd64", "linux/arm/v7", "linux/arm64"])
    );
    let (manifest_gets, _) = gets(&wire, mark);
    report(
        "platforms: manifest GETs for a known digest (new tag, after a restart)",
        manifest_gets,
        "0",
    );
    assert_eq!(manifest_gets, 0, "a known digest is never fetched again");
    all.extend(events);

    // A single-platform image: its manifest, then its config blob (2 requests).
    let single = registry.push("team/app", "v1").await;
    let mark = seen(&wire);
    let events = once(&setup);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["data"]["digest"], single.as_str());
    assert_eq!(events[0]["data"]["platforms"], json!(["linux/amd64"]));
    let (m, b) = gets(&wire, mark);
    report(
        "platforms: requests per new single-platform digest (manifest + config)",
        m + b,
        "2",
    );
    assert_eq!((m, b), (1, 1));
    all.extend(events);

    // An idle cycle: nothing reported, nothing fetched.
    let mark = seen(&wire);
    assert!(once(&setup).is_empty());
    assert_eq!(gets(&wire, mark), (0, 0), "an idle cycle GETs nothing");
    assert_schema_valid(&all);
}

#[tokio::test(flavor = "multi_thread")]
async fn require_platforms_drops_images_without_them_and_reports_the_multi_arch_repush() {
    // require_platforms alone turns the lookup on.
    let (registry, wire, setup) =
        watched("mutable_tags = [\"latest\"]\nrequire_platforms = [\"linux/arm64\"]").await;

    let amd = registry.push("team/app", "latest").await;
    let events = once(&setup);
    report(
        "require_platforms linux/arm64: events for an amd64-only image",
        events.len(),
        "0",
    );
    assert!(events.is_empty(), "amd64 only: {events:?}");
    // Remembered: the next cycle neither reports it nor looks it up again.
    let mark = seen(&wire);
    assert!(once(&setup).is_empty());
    assert_eq!(gets(&wire, mark), (0, 0));

    let multi = push_amd_arm(&registry, "latest").await;
    let events = once(&setup);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["type"], "io.regwatch.tag.updated");
    assert_eq!(events[0]["data"]["previous_digest"], amd.as_str());
    assert_eq!(events[0]["data"]["digest"], multi.as_str());
    assert_eq!(
        events[0]["data"]["platforms"],
        json!(["linux/amd64", "linux/arm64"])
    );
    assert_eq!(events[0]["data"]["platforms_added"], json!(["linux/arm64"]));
    assert_schema_valid(&events);
}

/// Runs `check` on `text` and returns (exit code, stderr).
fn check(text: &str) -> (i32, String) {
    let setup = Setup::new("", text);
    let (code, _, err) = setup.regwatch(&["check"]);
    (code, err)
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_hub_platforms_need_allow_pulls() {
    let hub = "[[registry]]\nname = \"hub\"\nkind = \"dockerhub\"\nurl = \"https://registry-1.docker.io\"\nrepositories = [\"nginx\"]\n";
    // Setup puts three [daemon] lines before the body.
    for (key, value, line) in [
        ("platforms", "true", 10),
        ("require_platforms", "[\"linux/arm64\"]", 10),
    ] {
        let (code, err) = check(&format!("{hub}{key} = {value}\n"));
        assert_eq!(code, 2, "{err}");
        assert!(err.contains(&format!("`registry[0].{key}`")), "{err}");
        assert!(err.contains(&format!("(line {line})")), "{err}");
        assert!(
            err.contains("counts as a pull") && err.contains("allow_pulls = true"),
            "{err}"
        );
    }
    report(
        "dockerhub: platforms without allow_pulls at load",
        "exit 2",
        "exit 2",
    );

    // With allow_pulls, against a Hub-shaped registry (token auth) behind a counting proxy.
    let tokens = TokenServer::start(&[("dockerid", "access-token")], Style::Docker).await;
    let registry = Registry::start(Auth::Token {
        realm: tokens.realm(),
        cert: tokens.cert_path.clone(),
    });
    registry.push("library/nginx", "1.27").await;
    let (wire, host) = proxy::start(&registry.url()).await;
    let setup = Setup::new(
        "",
        &format!(
            "[[registry]]\nname = \"hub\"\nkind = \"dockerhub\"\nurl = \"http://{host}\"\ninsecure = true\nusername = \"dockerid\"\npassword = \"access-token\"\nrepositories = [\"nginx\"]\nplatforms = true\nallow_pulls = true\n"
        ),
    );
    assert!(once(&setup).is_empty(), "baseline");
    let digest = registry
        .push_index(
            "library/nginx",
            "1.28",
            &["linux/amd64", "linux/arm64"],
            true,
        )
        .await;
    let mark = seen(&wire);
    let events = once(&setup);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["data"]["digest"], digest.as_str());
    assert_eq!(
        events[0]["data"]["platforms"],
        json!(["linux/amd64", "linux/arm64"])
    );
    let (pulls, _) = gets(&wire, mark);
    report(
        "Docker Hub with allow_pulls: manifest GETs (pulls) per new multi-platform digest",
        pulls,
        "1",
    );
    assert_eq!(pulls, 1);
    assert_schema_valid(&events);
}

#[test]
fn platform_keys_are_checked_at_load() {
    let oci = "[[registry]]\nname = \"a\"\nkind = \"oci\"\nurl = \"https://h\"\n";
    let ecr = "[[registry]]\nname = \"e\"\nkind = \"ecr\"\nurl = \"https://123456789012.dkr.ecr.eu-west-1.amazonaws.com\"\n";
    // Setup puts three [daemon] lines before the body: the body's first line is line 5.
    let cases = [
        (
            format!("{oci}require_platforms = [\"linux/arm64\", \"arm64\"]\n"),
            "registry[0].require_platforms[1]",
            9,
            "os/arch",
        ),
        (
            format!("{oci}require_platforms = [\"linux/arm64/v8/x\"]\n"),
            "registry[0].require_platforms[0]",
            9,
            "os/arch",
        ),
        (
            format!("{oci}require_platforms = [\"Linux/ARM64\"]\n"),
            "registry[0].require_platforms[0]",
            9,
            "os/arch",
        ),
        (
            format!("{oci}allow_pulls = true\n"),
            "registry[0].allow_pulls",
            9,
            "dockerhub",
        ),
        (
            format!("{ecr}platforms = true\n"),
            "registry[0].platforms",
            9,
            "ecr",
        ),
    ];
    for (text, path, line, hint) in &cases {
        let (code, err) = check(text);
        assert_eq!(code, 2, "{text}: {err}");
        assert!(err.contains(&format!("`{path}`")), "{text}: {err}");
        assert!(err.contains(&format!("(line {line})")), "{text}: {err}");
        assert!(err.contains(hint), "{text}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_that_is_not_its_digest_fails_the_scan_and_nothing_is_reported() {
    let (registry, wire, setup) = watched("platforms = true").await;
    let digest = push_amd_arm(&registry, "multi").await;
    // A valid index, but not the one the digest names: its platforms would be a lie.
    *wire.first_request_fault.lock().unwrap() = Some(Fault::Body(
        r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","size":1,"digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","platform":{"architecture":"s390x","os":"linux"}}]}"#,
    ));
    let (code, out, err) = setup.regwatch(&["once"]);
    let faked = wire
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.fault.is_some() && s.path.ends_with(&digest))
        .count();
    assert_eq!(faked, 1, "the index GET got the other body");
    report(
        "platforms: events when the registry serves a manifest that is not its digest",
        json_lines(&out).len(),
        "0 (scan fails, retried next cycle)",
    );
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert!(err.contains("another digest"), "{err}");

    // The next cycle asks again, and gets the real index.
    *wire.first_request_fault.lock().unwrap() = None;
    let events = once(&setup);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["data"]["digest"], digest.as_str());
    assert_eq!(
        events[0]["data"]["platforms"],
        json!(["linux/amd64", "linux/arm64"])
    );
}

/// Docker Hub counts a manifest GET as a pull whatever `kind` the entry says: its registry API is a
/// plain Distribution API, so `kind = "oci"` with a Hub URL watches it too. `platforms` there must
/// need `allow_pulls` as well, and `allow_pulls` must then be accepted.
#[test]
fn docker_hub_as_kind_oci_needs_allow_pulls_too() {
    for url in ["https://registry-1.docker.io", "https://index.docker.io"] {
        let hub = format!(
            "[[registry]]\nname = \"hub\"\nkind = \"oci\"\nurl = \"{url}\"\nrepositories = [\"library/nginx\"]\n"
        );
        // Parsed only, never `check`ed: that would go out to the Hub.
        for (key, value) in [
            ("platforms", "true"),
            ("require_platforms", "[\"linux/arm64\"]"),
        ] {
            let e = regwatch::config::parse(&format!("{hub}{key} = {value}\n"))
                .err()
                .unwrap_or_else(|| panic!("{url} {key}: accepted without allow_pulls"));
            assert_eq!(
                (e.path.as_str(), e.line),
                (format!("registry[0].{key}").as_str(), Some(6)),
                "{e}"
            );
            assert!(
                e.message.contains("counts as a pull") && e.message.contains("allow_pulls = true"),
                "{url} {key}: {e}"
            );
        }
        let text = format!("{hub}platforms = true\nallow_pulls = true\n");
        let config = regwatch::config::parse(&text).unwrap_or_else(|e| panic!("{url}: {e}"));
        assert!(config.registries[0].platforms);
    }
    report(
        "kind = oci on a Docker Hub URL: platforms without allow_pulls at load",
        "exit 2",
        "exit 2",
    );
}

/// A digest's content never changes, so content that is served intact (it hashes to its digest)
/// but cannot be read for platforms will be the same on every retry. It must not fail the
/// repository's scan forever (every other new image of the repository unreported, and every
/// cycle re-fetching them, each a pull on Docker Hub): such an image has no platforms we can
/// name, like an artifact, and is looked up once.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_image_config_does_not_stall_the_repository() {
    let (registry, wire, setup) = watched("platforms = true").await;

    // OCI image-spec config.md: the config of media type application/vnd.oci.image.config.v1+json
    // is JSON; the registry stores blobs as opaque bytes and checks none of it.
    let odd = registry
        .push_with_config(
            "team/app",
            "odd",
            "application/vnd.oci.image.config.v1+json",
            b"\x00not json",
        )
        .await;
    // A config past what a lookup reads (4 MiB): refused unread, by its descriptor's size.
    let big_config = format!(
        r#"{{"architecture":"arm64","os":"linux","comment":"{}"}}"#,
        "x".repeat(5 * 1024 * 1024)
    );
    let big = registry
        .push_with_config(
            "team/app",
            "big",
            "application/vnd.oci.image.config.v1+json",
            big_config.as_bytes(),
        )
        .await;
    let multi = push_amd_arm(&registry, "multi").await;

    let mark = seen(&wire);
    let (code, out, err) = setup.regwatch(&["once"]);
    let events = json_lines(&out);
    report(
        "platforms: events of a cycle with an unreadable and an oversized image config among 3 new images",
        events.len(),
        "3",
    );
    assert_eq!(code, 0, "{err}");
    let by_tag = |tag: &str| {
        events
            .iter()
            .find(|e| e["data"]["tag"] == tag)
            .unwrap_or_else(|| panic!("no event for {tag}: {events:?}"))
    };
    assert_eq!(by_tag("multi")["data"]["digest"], multi.as_str());
    assert_eq!(
        by_tag("multi")["data"]["platforms"],
        json!(["linux/amd64", "linux/arm64"])
    );
    assert_eq!(by_tag("odd")["data"]["digest"], odd.as_str());
    assert_eq!(by_tag("odd")["data"]["platforms"], json!([]));
    assert_eq!(by_tag("big")["data"]["digest"], big.as_str());
    assert_eq!(by_tag("big")["data"]["platforms"], json!([]));
    assert_eq!(events.len(), 3, "{events:?}");
    // Three manifests; one config blob (odd's); the oversized one is never downloaded.
    assert_eq!(gets(&wire, mark), (3, 1));
    assert_schema_valid(&events);

    // Looked up once: the next cycle asks nothing again.
    let mark = seen(&wire);
    assert!(once(&setup).is_empty());
    assert_eq!(gets(&wire, mark), (0, 0));
}

/// `require_platforms` reports only images that include them (issue 12 §5), and a
/// `signature.added` is for an image that was reported before (§2). A signature arriving for an
/// image that was dropped for lacking a required platform announces an image the consumer was
/// never told of, and that does not run on its platform.
#[tokio::test(flavor = "multi_thread")]
async fn a_signature_for_an_image_dropped_by_require_platforms_is_not_reported() {
    let (registry, _wire, setup) = watched("require_platforms = [\"linux/arm64\"]").await;

    let amd = registry.push("team/app", "v1").await;
    assert!(once(&setup).is_empty(), "amd64 only: dropped");

    // cosign's tag scheme: sha256-<hex>.sig names the signed digest.
    let sig = format!("{}.sig", amd.replace(':', "-"));
    registry.push("team/app", &sig).await;
    let events = once(&setup);
    report(
        "require_platforms linux/arm64: signature.added for a dropped amd64-only image",
        events.len(),
        "0",
    );
    assert!(events.is_empty(), "{events:?}");

    // An image that has the platform still gets its signature reported.
    let multi = push_amd_arm(&registry, "v2").await;
    let events = once(&setup);
    assert_eq!(events.len(), 1, "{events:?}");
    registry
        .push("team/app", &format!("{}.sig", multi.replace(':', "-")))
        .await;
    let events = once(&setup);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["type"], "io.regwatch.signature.added");
    assert_eq!(events[0]["data"]["digest"], multi.as_str());
    assert_schema_valid(&events);
}

/// An index names its platforms as it likes (OCI image-index.md: `architecture`, `os` and
/// `variant` are free strings), up to the 4 MiB a manifest may have. Whatever it names, the event
/// must stay deliverable: librdkafka refuses a message over `message.max.bytes` (1,000,000 bytes
/// by default) at enqueue, and an undeliverable event at the head of the outbox holds back every
/// event behind it, of every registry.
#[tokio::test(flavor = "multi_thread")]
async fn an_index_naming_thousands_of_platforms_gives_a_deliverable_event() {
    let registry = Registry::start(Auth::None);
    registry.push("team/app", "v0").await;
    // Real children to point at.
    let real = push_amd_arm(&registry, "v0-multi").await;
    let (_wire, host) = proxy::start(&registry.url()).await;
    let setup = Setup::new("", &oci_block(&host, "platforms = true"));
    assert!(once(&setup).is_empty(), "baseline");

    let index: Value = serde_json::from_slice(
        &reqwest::Client::new()
            .get(format!("{}/v2/team/app/manifests/{real}", registry.url()))
            .header("accept", "application/vnd.oci.image.index.v1+json")
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    let mut entries = index["manifests"].as_array().unwrap().clone();
    let child = entries[0].clone();
    for i in 0..8000 {
        let mut e = child.clone();
        e["platform"] = json!({
            "os": "linux",
            "architecture": format!("z{i:05}{}", "a".repeat(54)),
            "variant": "v".repeat(64),
        });
        entries.push(e);
    }
    let body = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    })
    .to_string();
    assert!(body.len() < 4 * 1024 * 1024, "{}", body.len());
    let digest = registry
        .put_raw_manifest(
            "team/app",
            "wide",
            "application/vnd.oci.image.index.v1+json",
            &body,
        )
        .await;

    let (code, out, err) = setup.regwatch(&["once"]);
    assert_eq!(code, 0, "{err}");
    let longest = out.lines().map(str::len).max().unwrap_or(0);
    report(
        "platforms: largest event for an index naming 8000 platforms (bytes)",
        longest,
        "< 1000000 (Kafka's default message.max.bytes)",
    );
    assert!(longest < 1_000_000, "an event of {longest} bytes");
    let events = json_lines(&out);
    assert_eq!(events.len(), 1, "{err}");
    assert_eq!(events[0]["data"]["digest"], digest.as_str());
    let platforms = events[0]["data"]["platforms"].as_array().unwrap();
    assert!(
        platforms.contains(&json!("linux/amd64")) && platforms.contains(&json!("linux/arm64")),
        "{platforms:?}"
    );
}

/// Issue 12 §5: the index is GET once per new digest, "never repeated for a known digest". When
/// one lookup of a cycle fails, the cycle reports nothing, but the platforms it did read are
/// known: the next cycle must not GET them again (on Docker Hub each GET is a pull, and a failing
/// lookup is often the pull limit itself).
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_lookup_keeps_the_platforms_the_cycle_did_read() {
    let (registry, wire, setup) = watched("platforms = true\nconcurrency = 4").await;

    let a = push_amd_arm(&registry, "a").await;
    let c = registry
        .push_index("team/app", "c", &["linux/amd64", "linux/s390x"], true)
        .await;
    let manifest_gets = |digest: &str, from: usize| gets_of(&wire, digest, from);
    *wire.path_fault.lock().unwrap() = Some((format!("/manifests/{c}"), Fault::Error500));
    let mark = seen(&wire);
    let (code, out, err) = setup.regwatch(&["once"]);
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert_eq!(manifest_gets(&a, mark), 1, "a was read in the failed cycle");

    *wire.path_fault.lock().unwrap() = None;
    let mark = seen(&wire);
    let events = once(&setup);
    assert_eq!(events.len(), 2, "{events:?}");
    for (tag, digest, platforms) in [
        ("a", &a, json!(["linux/amd64", "linux/arm64"])),
        ("c", &c, json!(["linux/amd64", "linux/s390x"])),
    ] {
        let e = events.iter().find(|e| e["data"]["tag"] == tag).unwrap();
        assert_eq!(e["data"]["digest"], digest.as_str());
        assert_eq!(e["data"]["platforms"], platforms);
    }
    let again = manifest_gets(&a, mark);
    report(
        "platforms: GETs of a digest read in a cycle whose other lookup failed, next cycle",
        again,
        "0",
    );
    assert_eq!(again, 0, "a's index was fetched again");
    assert_eq!(manifest_gets(&c, mark), 1);
    assert_schema_valid(&events);
}

/// Issue 12 §3 and §5 together: `tag.matured` follows a *reported* tag, so an image dropped by
/// `require_platforms` never matures, and cosign tags are never looked up (§2: they are not
/// images).
#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_image_never_matures_and_cosign_tags_are_not_looked_up() {
    let (registry, wire, setup) =
        watched("require_platforms = [\"linux/arm64\"]\nmature_after = \"1s\"").await;
    let amd = registry.push("team/app", "amd").await;
    let multi = push_amd_arm(&registry, "multi").await;
    let sig = registry
        .push("team/app", &format!("{}.sig", amd.replace(':', "-")))
        .await;
    let mark = seen(&wire);
    let events = once(&setup);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["data"]["digest"], multi.as_str());
    let looked_up = |digest: &str| gets_of(&wire, digest, mark) > 0;
    assert!(!looked_up(&sig), "a cosign tag's manifest was fetched");
    assert!(looked_up(&amd) && looked_up(&multi));

    std::thread::sleep(std::time::Duration::from_millis(1500));
    let events = once(&setup);
    let matured: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "io.regwatch.tag.matured")
        .filter_map(|e| e["data"]["tag"].as_str())
        .collect();
    report(
        "require_platforms + mature_after: tag.matured for a dropped image",
        matured.iter().filter(|t| **t == "amd").count(),
        "0",
    );
    assert_eq!(matured, vec!["multi"], "{events:?}");
    assert_schema_valid(&events);
}

/// Registries answer blob GETs with a redirect to object storage or a CDN (distribution's
/// `storage.redirect`, Docker Hub's Cloudflare URLs): a presigned URL on another origin. The
/// registry's credentials must not follow it; S3 itself refuses a request that carries both an
/// `Authorization` header and a presigned query ("Only one auth mechanism allowed").
#[tokio::test(flavor = "multi_thread")]
async fn a_config_blob_redirected_to_another_origin_gets_no_credentials() {
    use axum::http::{HeaderMap, StatusCode, Uri};
    use std::sync::Mutex;

    let tokens = TokenServer::start(&[("ci", "ci-secret")], Style::Docker).await;
    let registry = Registry::start(Auth::Token {
        realm: tokens.realm(),
        cert: tokens.cert_path.clone(),
    });
    registry.push("team/app", "v0").await;
    let (wire, host) = proxy::start(&registry.url()).await;

    // The object store: serves blobs by digest, refusing any request with an Authorization header.
    let config =
        br#"{"architecture":"arm64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = format!("sha256:{}", hex::encode(sha2_digest(config)));
    let seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let store = {
        let seen = seen.clone();
        let digest = config_digest.clone();
        axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap| {
            let auth = headers
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_owned());
            seen.lock().unwrap().push(auth.clone());
            let found = uri.path().ends_with(&digest);
            async move {
                match (auth, found) {
                    (Some(_), _) => (
                        StatusCode::BAD_REQUEST,
                        b"Only one auth mechanism allowed".to_vec(),
                    ),
                    (None, true) => (StatusCode::OK, config.to_vec()),
                    (None, false) => (StatusCode::NOT_FOUND, b"NoSuchKey".to_vec()),
                }
            }
        })
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let store_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, store).await.unwrap() });

    let setup = Setup::new(
        "",
        &format!(
            "{}username = \"ci\"\npassword = \"ci-secret\"\n",
            oci_block(&host, "platforms = true")
        ),
    );
    assert!(once(&setup).is_empty(), "baseline");
    let digest = registry
        .push_with_config(
            "team/app",
            "v1",
            "application/vnd.oci.image.config.v1+json",
            config,
        )
        .await;
    *wire.redirect_blobs.lock().unwrap() = Some(store_url);
    let events = once(&setup);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["data"]["digest"], digest.as_str());
    assert_eq!(events[0]["data"]["platforms"], json!(["linux/arm64"]));
    let authorized_blob_gets = wire
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.path.contains("/blobs/") && s.authorized)
        .count();
    assert_eq!(
        authorized_blob_gets, 1,
        "the registry's own blob GET carries the token"
    );
    let seen = seen.lock().unwrap().clone();
    report(
        "platforms: Authorization headers sent to a blob redirect on another origin",
        seen.iter().filter(|a| a.is_some()).count(),
        "0",
    );
    assert_eq!(seen, vec![None], "the object store saw {seen:?}");
}

fn sha2_digest(data: &[u8]) -> Vec<u8> {
    use sha2::Digest as _;
    sha2::Sha256::digest(data).to_vec()
}

/// With `emit_removed`, a removal is a report like an arrival (as for tags `[registry.versions]`
/// never reports): a new tag `require_platforms` kept out was never reported, so its deletion is
/// no news either; a reported tag's deletion is.
#[tokio::test(flavor = "multi_thread")]
async fn a_tag_require_platforms_kept_out_is_not_reported_removed() {
    let registry = Registry::start(Auth::None);
    registry.push("team/app", "v0").await;
    let setup = Setup::new(
        "emit_removed = true\n",
        &oci_block(
            &registry.url().replace("http://", ""),
            "require_platforms = [\"linux/arm64\"]",
        ),
    );
    assert!(once(&setup).is_empty(), "baseline");
    let amd = registry.push("team/app", "amd").await;
    let multi = push_amd_arm(&registry, "multi").await;
    let events = once(&setup);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["data"]["tag"], "multi");

    let client = reqwest::Client::new();
    for digest in [&amd, &multi] {
        // Distribution: deleting a manifest by digest untags it (202 Accepted).
        let resp = client
            .delete(format!("{}/v2/team/app/manifests/{digest}", registry.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202, "delete {digest}");
    }
    let events = once(&setup);
    let removed: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "io.regwatch.tag.removed")
        .filter_map(|e| e["data"]["tag"].as_str())
        .collect();
    report(
        "require_platforms + emit_removed: tag.removed for 2 deleted tags, 1 of them reported",
        removed.len(),
        "1",
    );
    assert_eq!(removed, vec!["multi"], "{events:?}");
    assert_schema_valid(&events);
}
