//! `regwatch once` against a real `docker-registry`, with the embedded stdout sink: baseline,
//! additions across paginated listings, a repository found through a catalog glob, a moved mutable
//! tag, `--dry-run`, and a restart that re-emits nothing.

mod support;

use serde_json::Value;
use support::{Auth, Registry, Setup, assert_schema_valid, json_lines};

fn config(registry: &Registry, extra: &str) -> String {
    format!(
        "[[registry]]\nname = \"local\"\nkind = \"oci\"\nurl = \"{}\"\ninsecure = true\nrepositories = [\"team/*\", \"plain/app\"]\nmutable_tags = [\"latest\"]\npage_size = 2\nrate_limit = 500\n{extra}",
        registry.url()
    )
}

fn summary(events: &[Value]) -> Vec<(String, String, String)> {
    let mut s: Vec<_> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_owned(),
                e["data"]["repository"].as_str().unwrap().to_owned(),
                e["data"]["tag"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    s.sort();
    s
}

#[tokio::test(flavor = "multi_thread")]
async fn baseline_then_changes_then_quiet() {
    let registry = Registry::start(Auth::None);
    for tag in ["v1", "v2", "v3", "latest"] {
        registry.push("team/app", tag).await;
    }
    registry.push("team/db", "v1").await;
    registry.push("other/skip", "v1").await;

    let setup = Setup::new("", &config(&registry, ""));

    // First run against a populated registry: a baseline, nothing emitted.
    let (code, out, err) = setup.regwatch(&["once"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "", "baseline must emit nothing; stderr: {err}");
    assert!(err.contains("baseline recorded"), "{err}");
    // The only digest lookup a baseline makes is for the mutable tag: team/app:latest.
    assert!(err.contains("digest_lookups=1"), "{err}");

    // Changes: new tags beyond several pages, a new repository under the glob, a plain-named
    // repository that did not exist before, and a moved `latest`.
    let mut pushed = std::collections::HashMap::new();
    for tag in ["v4", "v5", "v6"] {
        pushed.insert(("team/app", tag), registry.push("team/app", tag).await);
    }
    pushed.insert(("team/new", "v1"), registry.push("team/new", "v1").await);
    pushed.insert(("plain/app", "v1"), registry.push("plain/app", "v1").await);
    pushed.insert(
        ("team/app", "latest"),
        registry.push("team/app", "latest").await,
    );
    registry.push("other/skip", "v2").await;

    let expected = vec![
        (
            "io.regwatch.tag.added".to_string(),
            "plain/app".to_string(),
            "v1".to_string(),
        ),
        (
            "io.regwatch.tag.added".into(),
            "team/app".into(),
            "v4".into(),
        ),
        (
            "io.regwatch.tag.added".into(),
            "team/app".into(),
            "v5".into(),
        ),
        (
            "io.regwatch.tag.added".into(),
            "team/app".into(),
            "v6".into(),
        ),
        (
            "io.regwatch.tag.added".into(),
            "team/new".into(),
            "v1".into(),
        ),
        (
            "io.regwatch.tag.updated".into(),
            "team/app".into(),
            "latest".into(),
        ),
    ];

    // A dry run prints the changes and stores nothing: a second dry run prints them again.
    for _ in 0..2 {
        let (code, out, err) = setup.regwatch(&["once", "--dry-run"]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(
            summary(&json_lines(&out)),
            expected,
            "dry run; stderr: {err}"
        );
    }

    let (code, out, err) = setup.regwatch(&["once"]);
    assert_eq!(code, 0, "{err}");
    let events = json_lines(&out);
    assert_eq!(summary(&events), expected, "stderr: {err}");
    assert_schema_valid(&events);
    for e in &events {
        let repo = e["data"]["repository"].as_str().unwrap();
        let tag = e["data"]["tag"].as_str().unwrap();
        let digest = &pushed[&(repo, tag)];
        assert_eq!(e["data"]["digest"], digest.as_str(), "{repo}:{tag}");
        assert_eq!(e["specversion"], "1.0");
        assert_eq!(e["source"], "regwatch/local");
        assert_eq!(e["subject"], format!("{}/{repo}:{tag}", registry.host));
        assert_eq!(
            e["data"]["image"],
            format!("{}/{repo}:{tag}@{digest}", registry.host)
        );
        assert_eq!(e["data"]["host"], registry.host.as_str());
        assert_eq!(e["data"]["kind"], "oci");
        assert_eq!(e["id"].as_str().unwrap().len(), 64);
        if e["type"] == "io.regwatch.tag.updated" {
            assert!(
                e["data"]["previous_digest"]
                    .as_str()
                    .unwrap()
                    .starts_with("sha256:")
            );
            assert_ne!(e["data"]["previous_digest"], e["data"]["digest"]);
        } else {
            assert_eq!(e["data"]["previous_digest"], Value::Null);
        }
    }

    // Another run (a restart, as far as state goes) finds nothing new.
    let (code, out, err) = setup.regwatch(&["once"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "", "a second run must re-emit nothing; stderr: {err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn config_edit_baselines_newly_watched_repositories() {
    let registry = Registry::start(Auth::None);
    registry.push("team/app", "v1").await;
    registry.push("infra/proxy", "v1").await;
    registry.push("infra/proxy", "v2").await;

    let setup = Setup::new("", &config(&registry, ""));
    let (code, out, err) = setup.regwatch(&["once"]);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");

    // Widening the watch set to infra/* must not flood with infra/proxy's existing tags...
    let text = std::fs::read_to_string(&setup.config)
        .unwrap()
        .replace("\"plain/app\"", "\"infra/*\"");
    std::fs::write(&setup.config, text).unwrap();
    let (code, out, err) = setup.regwatch(&["once"]);
    assert_eq!(
        (code, out.as_str()),
        (0, ""),
        "config edit must baseline; stderr: {err}"
    );

    // ...but what is pushed there afterwards is news.
    let digest = registry.push("infra/proxy", "v3").await;
    let (code, out, err) = setup.regwatch(&["once"]);
    assert_eq!(code, 0, "{err}");
    let events = json_lines(&out);
    assert_eq!(events.len(), 1, "{out}");
    assert_eq!(events[0]["data"]["tag"], "v3");
    assert_eq!(events[0]["data"]["digest"], digest.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn first_run_emit_and_removed_tags() {
    let registry = Registry::start(Auth::None);
    let d1 = registry.push("team/app", "v1").await;
    registry.push("team/app", "v2").await;

    let setup = Setup::new(
        "first_run = \"emit\"\nemit_removed = true\n",
        &config(&registry, ""),
    );
    let (code, out, err) = setup.regwatch(&["once"]);
    assert_eq!(code, 0, "{err}");
    let events = json_lines(&out);
    assert_eq!(
        events.len(),
        2,
        "first_run = emit reports what is there: {out}"
    );

    // Delete v1's manifest: with emit_removed, that is a tag.removed carrying its last digest.
    let client = reqwest::Client::new();
    let resp = client
        .delete(format!("{}/v2/team/app/manifests/{d1}", registry.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let (code, out, err) = setup.regwatch(&["once"]);
    assert_eq!(code, 0, "{err}");
    let events = json_lines(&out);
    assert_eq!(events.len(), 1, "{out}");
    assert_eq!(events[0]["type"], "io.regwatch.tag.removed");
    assert_schema_valid(&events);
    assert_eq!(events[0]["data"]["tag"], "v1");
    assert_eq!(events[0]["data"]["digest"], d1.as_str());
}
