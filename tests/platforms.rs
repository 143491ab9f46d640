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

#[tokio::test(flavor = "multi_thread")]
async fn platforms_of_new_digests_are_reported_and_looked_up_once() {
    let registry = Registry::start(Auth::None);
    registry.push("team/app", "v0").await;
    let (wire, host) = proxy::start(&registry.url()).await;
    let setup = Setup::new(
        "",
        &oci_block(&host, "mutable_tags = [\"multi\"]\nplatforms = true"),
    );
    let mut all = Vec::new();

    assert!(once(&setup).is_empty(), "baseline");
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
    let registry = Registry::start(Auth::None);
    registry.push("team/app", "v0").await;
    let (wire, host) = proxy::start(&registry.url()).await;
    // require_platforms alone turns the lookup on.
    let setup = Setup::new(
        "",
        &oci_block(
            &host,
            "mutable_tags = [\"latest\"]\nrequire_platforms = [\"linux/arm64\"]",
        ),
    );
    assert!(once(&setup).is_empty(), "baseline");

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

    let multi = registry
        .push_index("team/app", "latest", &["linux/amd64", "linux/arm64"], true)
        .await;
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
    let registry = Registry::start(Auth::None);
    registry.push("team/app", "v0").await;
    let (wire, host) = proxy::start(&registry.url()).await;
    let setup = Setup::new("", &oci_block(&host, "platforms = true"));
    assert!(once(&setup).is_empty(), "baseline");
    let digest = registry
        .push_index("team/app", "multi", &["linux/amd64", "linux/arm64"], true)
        .await;
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
