//! `[registry.versions]` end to end: real images pushed to a real `docker-registry`, `regwatch once`
//! with the stdout sink after every push, as a deployer would see the events. The expectations are
//! issue 12's acceptance case and the semver rules (semver.org §9-§11: pre-releases rank below their
//! release; build metadata does not rank), not what the code happens to do.

mod support;

use serde_json::Value;
use support::{Auth, Registry, Setup, assert_schema_valid, json_lines, report};

/// Runs one `once` and returns (type, tag) of each event.
fn once_kinds(setup: &Setup) -> Vec<(String, String)> {
    once(setup)
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_owned(),
                field(e, "tag").as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// cosign's signature tag for `digest`: `sha256:<hex>` is signed by `sha256-<hex>.sig`.
fn sig_tag(digest: &str) -> String {
    format!("{}.sig", digest.replacen(':', "-", 1))
}

fn config(registry: &Registry, entry_extra: &str, versions: &str) -> String {
    format!(
        "[[registry]]\nname = \"local\"\nkind = \"oci\"\nurl = \"{}\"\ninsecure = true\nrepositories = [\"team/app\"]\nrate_limit = 500\n{entry_extra}\n[registry.versions]\n{versions}",
        registry.url()
    )
}

/// A registry holding `team/app:v1.0.0`, and a `Setup` watching it with `versions` as its
/// `[registry.versions]` table.
async fn with_v1_0_0(versions: &str) -> (Registry, Setup) {
    let registry = Registry::start(Auth::None);
    registry.push("team/app", "v1.0.0").await;
    let setup = Setup::new("", &config(&registry, "", versions));
    (registry, setup)
}

/// Runs one `once` and returns its events.
fn once(setup: &Setup) -> Vec<Value> {
    let (code, out, err) = setup.regwatch(&["once"]);
    assert_eq!(code, 0, "{err}");
    json_lines(&out)
}

fn field<'a>(e: &'a Value, key: &str) -> &'a Value {
    &e["data"][key]
}

/// Issue 12, acceptance: with semver, `only_newer = true` and `prerelease = false`, pushing
/// v1.0.0 (baseline), v1.2.0, v1.1.5, v2.0.0-rc.1 and v2.0.0 reports exactly v1.2.0 (minor) and
/// v2.0.0 (major).
#[tokio::test(flavor = "multi_thread")]
async fn only_newer_reports_exactly_the_minor_and_the_major() {
    let (registry, setup) =
        with_v1_0_0("scheme = \"semver\"\nonly_newer = true\nprerelease = false\n").await;
    assert!(once(&setup).is_empty(), "the first scan is a baseline");

    let mut events = Vec::new();
    let mut digests = std::collections::HashMap::new();
    for tag in ["v1.2.0", "v1.1.5", "v2.0.0-rc.1", "v2.0.0"] {
        digests.insert(tag, registry.push("team/app", tag).await);
        events.extend(once(&setup));
    }
    let seen: Vec<(&str, &str, &str, &str, bool)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap(),
                field(e, "tag").as_str().unwrap(),
                field(e, "version").as_str().unwrap_or("-"),
                field(e, "bump").as_str().unwrap_or("-"),
                field(e, "latest").as_bool().unwrap_or(false),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("io.regwatch.tag.added", "v1.2.0", "1.2.0", "minor", true),
            ("io.regwatch.tag.added", "v2.0.0", "2.0.0", "major", true),
        ]
    );
    for e in &events {
        let tag = field(e, "tag").as_str().unwrap();
        assert_eq!(field(e, "digest"), digests[tag].as_str(), "{tag}");
    }
    assert_schema_valid(&events);
    report(
        "versions: events for v1.2.0, v1.1.5, v2.0.0-rc.1, v2.0.0 (only_newer, no pre-releases)",
        seen.iter()
            .map(|s| format!("{}={}", s.1, s.3))
            .collect::<Vec<_>>()
            .join(" "),
        "v1.2.0=minor v2.0.0=major",
    );
}

/// A range, pre-releases on, variants, a tag that is no version, and a re-pushed release tag
/// (a moved mutable tag), in one repository.
#[tokio::test(flavor = "multi_thread")]
async fn range_prereleases_variants_and_a_repushed_release() {
    let registry = Registry::start(Auth::None);
    for tag in ["1.0.0", "1.1.0", "1.1.0-alpine"] {
        registry.push("team/app", tag).await;
    }
    let setup = Setup::new(
        "",
        &config(
            &registry,
            "mutable_tags = [\"1.0.0\"]\n",
            "scheme = \"semver\"\nrange = \">=1, <2\"\nprerelease = true\n",
        ),
    );
    assert!(once(&setup).is_empty(), "baseline");

    // One scan sees them all: each is measured against the previous snapshot, per variant.
    for tag in [
        "1.2.0-rc.1",
        "1.2-alpine",
        "2.0.0",
        "2.0.0-rc.1",
        "edge",
        "v1.1.1",
    ] {
        registry.push("team/app", tag).await;
    }
    let moved = registry.push("team/app", "1.0.0").await;
    let events = once(&setup);
    let mut seen: Vec<(String, String, Value, Value, Value, Value)> = events
        .iter()
        .map(|e| {
            (
                e["type"]
                    .as_str()
                    .unwrap()
                    .rsplit('.')
                    .next()
                    .unwrap()
                    .to_owned(),
                field(e, "tag").as_str().unwrap().to_owned(),
                field(e, "version").clone(),
                field(e, "variant").clone(),
                field(e, "bump").clone(),
                field(e, "latest").clone(),
            )
        })
        .collect();
    seen.sort_by(|a, b| a.1.cmp(&b.1));
    let row = |kind: &str, tag: &str, version: &str, variant: &str, bump: &str, latest: bool| {
        (
            kind.to_owned(),
            tag.to_owned(),
            Value::from(version),
            Value::from(variant),
            Value::from(bump),
            Value::from(latest),
        )
    };
    assert_eq!(
        seen,
        vec![
            // Re-pushed: the same version again, whatever else is listed.
            row("updated", "1.0.0", "1.0.0", "", "rebuild", false),
            // Measured against the highest -alpine before (1.1.0-alpine), not the plain tags;
            // its precision is kept.
            row("added", "1.2-alpine", "1.2", "alpine", "minor", true),
            // A pre-release above every version known before, and the highest plain one now.
            row("added", "1.2.0-rc.1", "1.2.0-rc.1", "", "prerelease", true),
            row("added", "v1.1.1", "1.1.1", "", "patch", false),
        ],
        "2.0.0 and 2.0.0-rc.1 are outside <2, edge is no version; events: {events:#?}"
    );
    assert_eq!(
        events.iter().find(|e| field(e, "tag") == "1.0.0").unwrap()["data"]["digest"],
        moved.as_str()
    );
    assert_schema_valid(&events);
}

/// What a deployer gates on, with real images: a Bitnami rebuild counter, a floating alias that
/// moves with its release (naming the version it now points to), Temurin flavours as variants,
/// and a GA after its release candidate, each with the `bump` a gate can trust.
#[tokio::test(flavor = "multi_thread")]
async fn deployers_gate_on_rebuilds_floating_aliases_variants_and_majors() {
    let registry = Registry::start(Auth::None);
    let repo = "team/app";
    let r5 = registry.push(repo, "1.25.3-debian-12-r5").await;
    registry.retag(repo, &r5, "1.25").await;
    registry.push(repo, "21.0.1_12-jdk-jammy").await;
    registry.push(repo, "1.9.0").await;
    let setup = Setup::new(
        "",
        &config(
            &registry,
            "mutable_tags = [\"1.25\"]\n",
            "scheme = \"semver\"\nonly_newer = true\nprerelease = true\n",
        ),
    );
    assert!(once(&setup).is_empty(), "baseline");

    let r6 = registry.push(repo, "1.25.3-debian-12-r6").await;
    registry.retag(repo, &r6, "1.25.3").await;
    registry.retag(repo, &r6, "1.25").await;
    registry.push(repo, "21.0.2_13-jre-jammy").await;
    registry.push(repo, "2.0.0-rc.1").await;
    let first = once(&setup);
    registry.push(repo, "2.0.0").await;
    let second = once(&setup);
    let gates = |events: &[Value]| -> Vec<String> {
        let mut rows: Vec<String> = events
            .iter()
            .map(|e| {
                let d = &e["data"];
                format!(
                    "{} {} {} [{}] {} latest={} points_to={}",
                    e["type"].as_str().unwrap().rsplit('.').next().unwrap(),
                    d["tag"].as_str().unwrap(),
                    d["version"],
                    d["variant"].as_str().unwrap_or("?"),
                    d["bump"].as_str().unwrap_or("-"),
                    d["latest"],
                    d["points_to"].as_str().unwrap_or("-"),
                )
            })
            .collect();
        rows.sort();
        rows
    };
    assert_eq!(
        gates(&first),
        vec![
            // Above 1.9.0 (1.25 is the alias it refines, not a version known before it); not
            // the highest now, since 2.0.0-rc.1 counts too (prerelease = true).
            r#"added 1.25.3 "1.25.3" [] minor latest=false points_to=-"#,
            r#"added 1.25.3-debian-12-r6 "1.25.3" [debian-12] rebuild latest=true points_to=-"#,
            r#"added 2.0.0-rc.1 "2.0.0-rc.1" [] prerelease latest=true points_to=-"#,
            r#"added 21.0.2_13-jre-jammy "21.0.2+13" [jre-jammy] first latest=true points_to=-"#,
            r#"updated 1.25 "1.25" [] floating latest=true points_to=1.25.3"#,
        ],
        "events: {first:#?}"
    );
    assert_eq!(
        gates(&second),
        vec![r#"added 2.0.0 "2.0.0" [] major latest=true points_to=-"#],
        "a GA after its release candidate is major"
    );
    assert_schema_valid(&first);
    assert_schema_valid(&second);
}

/// Without `range` or `only_newer`, a tag that is not a version is still reported, with
/// `version: null` (so a consumer can tell "versions on, not a version" from "versions off").
#[tokio::test(flavor = "multi_thread")]
async fn a_tag_that_is_no_version_carries_a_null_version() {
    let (registry, setup) = with_v1_0_0("scheme = \"semver\"\n").await;
    assert!(once(&setup).is_empty(), "baseline");
    registry.push("team/app", "nightly-build").await;
    registry.push("team/app", "v0.9.0").await;
    let events = once(&setup);
    assert_eq!(events.len(), 2, "{events:#?}");
    let no_version = &events[0]["data"];
    assert_eq!(no_version["tag"], "nightly-build");
    assert!(no_version.as_object().unwrap().contains_key("version"));
    assert_eq!(no_version["version"], Value::Null);
    assert!(no_version.get("bump").is_none() && no_version.get("latest").is_none());
    let old = &events[1]["data"];
    assert_eq!(
        (&old["version"], &old["bump"], &old["latest"]),
        (
            &Value::from("0.9.0"),
            &Value::from("older"),
            &Value::from(false)
        )
    );
    assert_schema_valid(&events);
}

/// A range that does not parse, or a versions key without `scheme = "semver"`, stops the program
/// at load with exit 2, naming the key path and the line.
#[test]
fn bad_versions_keys_are_config_errors() {
    let entry = "[[registry]]\nname = \"local\"\nkind = \"oci\"\nurl = \"https://r.example\"\n[registry.versions]\n";
    for (keys, path, line) in [
        (
            "scheme = \"semver\"\nrange = \">=1.2, <<2\"\n",
            "registry[0].versions.range",
            "line 11",
        ),
        (
            "only_newer = true\n",
            "registry[0].versions.only_newer",
            "line 10",
        ),
    ] {
        let setup = Setup::new("", &format!("{entry}{keys}"));
        let (code, out, err) = setup.regwatch(&["once"]);
        assert_eq!((code, out.as_str()), (2, ""), "{err}");
        assert!(err.contains(path) && err.contains(line), "{err}");
    }
}

/// Issue 12 §2: `signature.added` is for a signature that "arrives *after* its image was
/// reported". cosign signs right after the push, so the signature usually lands a cycle after its
/// image, and a deployer gating on signatures deploys on that event. Images the version policy
/// kept out (an older version `only_newer` held back, a pre-release with `prerelease = false`, a
/// version outside `range`) were never reported: their signatures are no news. Only the reported
/// v1.2.0's signature is.
#[tokio::test(flavor = "multi_thread")]
async fn signatures_of_unreported_versions_are_no_news() {
    let (registry, setup) = with_v1_0_0(
        "scheme = \"semver\"\nrange = \">=1, <3\"\nonly_newer = true\nprerelease = false\n",
    )
    .await;
    assert!(once(&setup).is_empty(), "baseline");
    let reported = registry.push("team/app", "v1.2.0").await;
    assert_eq!(
        once_kinds(&setup),
        vec![("io.regwatch.tag.added".into(), "v1.2.0".into())]
    );
    let mut unreported = Vec::new();
    for tag in ["v1.1.5", "v2.0.0-rc.1", "v3.0.0"] {
        unreported.push(registry.push("team/app", tag).await);
    }
    assert_eq!(once_kinds(&setup), vec![], "none of them is reported");

    for digest in unreported.iter().chain([&reported]) {
        registry.push("team/app", &sig_tag(digest)).await;
    }
    let events = once(&setup);
    let seen: Vec<(&str, &Value, &Value)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap(),
                field(e, "digest"),
                field(e, "tags"),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![(
            "io.regwatch.signature.added",
            &Value::from(reported.as_str()),
            &serde_json::json!(["v1.2.0"])
        )]
    );
    assert_schema_valid(&events);
    report(
        "versions: signature.added for 4 signed images, 1 of them reported",
        events.len(),
        "1",
    );
}

/// With `emit_removed`, a removal is a report like an arrival: issue 12 says tags outside `range`
/// "are not reported", and pre-releases only with `prerelease = true`. Deleting such tags from a
/// real registry says nothing; deleting a reported version gives its `tag.removed`.
#[tokio::test(flavor = "multi_thread")]
async fn only_reported_versions_are_reported_removed() {
    let registry = Registry::start(Auth::None);
    let mut digests = std::collections::HashMap::new();
    for tag in ["1.0.0", "1.1.0", "2.0.0", "1.2.0-rc.1", "edge"] {
        digests.insert(tag, registry.push("team/app", tag).await);
    }
    let setup = Setup::new(
        "emit_removed = true\n",
        &config(
            &registry,
            "",
            "scheme = \"semver\"\nrange = \">=1, <2\"\nprerelease = false\n",
        ),
    );
    assert!(once(&setup).is_empty(), "baseline");
    let client = reqwest::Client::new();
    for tag in ["1.0.0", "2.0.0", "1.2.0-rc.1", "edge"] {
        // Distribution: deleting a manifest by digest untags it (202 Accepted).
        let resp = client
            .delete(format!(
                "{}/v2/team/app/manifests/{}",
                registry.url(),
                digests[tag]
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202, "delete {tag}");
    }
    let removed = once_kinds(&setup);
    assert_eq!(
        removed,
        vec![("io.regwatch.tag.removed".into(), "1.0.0".into())]
    );
    report(
        "versions: tag.removed for 4 deleted tags, 1 of them in range",
        removed.len(),
        "1",
    );
}
