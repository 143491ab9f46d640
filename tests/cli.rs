//! The command line against a real registry with htpasswd Basic auth: `check` outcomes, `tags`,
//! `repos`, and configuration errors (exit 2 with key path and line).

mod support;

use support::{Auth, Registry, Setup, free_port};

fn registry_block(name: &str, url: &str, password: &str, repos: &str) -> String {
    format!(
        "[[registry]]\nname = \"{name}\"\nkind = \"oci\"\nurl = \"{url}\"\ninsecure = true\nusername = \"ci\"\npassword = \"{password}\"\nrepositories = [{repos}]\n\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn check_tells_outcomes_apart() {
    let registry = Registry::start(Auth::Htpasswd("ci".into(), "good-pass".into()));
    registry.push("team/app", "v1").await;
    let closed = format!("http://127.0.0.1:{}", free_port());
    let body = [
        registry_block("good", &registry.url(), "good-pass", "\"team/*\""),
        registry_block("badpass", &registry.url(), "wrong", "\"team/app\""),
        registry_block("missing", &registry.url(), "good-pass", "\"team/nope\""),
        registry_block("closed", &closed, "x", "\"a\""),
    ]
    .concat();
    let setup = Setup::new("", &body);
    let (code, out, err) = setup.regwatch(&["check"]);
    assert_eq!(
        code, 1,
        "a failing registry makes check fail; stderr: {err}"
    );
    let line = |name: &str| {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no line for {name} in {out}"))
            .to_owned()
    };
    assert!(
        line("good").ends_with(" ok (username and password)"),
        "check names the credential source: {out}"
    );
    assert!(
        line("badpass").ends_with("invalid credentials (401/403)"),
        "{out}"
    );
    assert!(line("missing").ends_with("not found"), "{out}");
    assert!(line("closed").contains("unreachable: "), "{out}");
    assert!(
        !out.contains("good-pass") && !err.contains("good-pass"),
        "secrets never printed"
    );

    let good_only = Setup::new(
        "",
        &registry_block("good", &registry.url(), "good-pass", "\"team/*\""),
    );
    let (code, out, err) = good_only.regwatch(&["check"]);
    assert_eq!(code, 0, "{out}{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tags_and_repos_list_live_state() {
    let registry = Registry::start(Auth::Htpasswd("ci".into(), "pw".into()));
    let d1 = registry.push("team/app", "v1").await;
    let d2 = registry.push("team/app", "v2").await;
    registry.push("team/db", "v1").await;
    registry.push("other/x", "v1").await;
    let setup = Setup::new(
        "",
        &registry_block("local", &registry.url(), "pw", "\"team/*\""),
    );

    let (code, out, err) = setup.regwatch(&["tags", "local", "team/app"]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows, vec![vec!["v1", d1.as_str()], vec!["v2", d2.as_str()]]);

    let (code, out, err) = setup.regwatch(&["tags", "local", "team/app", "--json"]);
    assert_eq!(code, 0, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json[1]["tag"], "v2");
    assert_eq!(json[1]["digest"], d2.as_str());

    let (code, out, err) = setup.regwatch(&["repos", "local", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), r#"["team/app","team/db"]"#);

    let (code, out, err) = setup.regwatch(&["repos", "local"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().collect::<Vec<_>>(), vec!["team/app", "team/db"]);

    let (code, _, err) = setup.regwatch(&["repos", "nosuch"]);
    assert_eq!(code, 1);
    assert!(err.contains("no registry named \"nosuch\""), "{err}");
}

#[test]
fn config_errors_exit_2_with_path_and_line() {
    let cases = [
        (
            "[daemon]\nintervall = \"5s\"\n",
            "daemon.intervall",
            2,
            "did you mean `interval`",
        ),
        (
            "[[registry]]\nname = \"a\"\nkind = \"oci\"\nurl = \"http://h:5000\"\n",
            "registry[0].url",
            4,
            "insecure = true",
        ),
        (
            "[[registry]]\nname = \"a\"\nkind = \"oci\"\nurl = \"https://h\"\nexclude_tags = ['(']\n",
            "registry[0].exclude_tags[0]",
            5,
            "invalid regex",
        ),
        (
            "[[registry]]\nname = \"a\"\nkind = \"oci\"\nurl = \"https://h\"\nrate_limit = -3\n",
            "registry[0].rate_limit",
            5,
            "",
        ),
        (
            "[[registry]]\nname = \"a\"\nkind = \"oci\"\nurl = \"https://h\"\nusername = \"u\"\npassword = \"${REGWATCH_TEST_UNSET_VAR}\"\n",
            "registry[0].password",
            6,
            "REGWATCH_TEST_UNSET_VAR is not set",
        ),
        (
            "[[registry]]\nname = \"a\"\nkind = \"oci\"\nurl = \"https://h\"\n[[registry]]\nname = \"a\"\nkind = \"oci\"\nurl = \"https://h\"\n",
            "registry[1].name",
            5,
            "duplicate registry name",
        ),
        (
            "[[registry]]\nname = \"a\"\nkind = \"oci\"\nurl = \"https://exa mple\"\n",
            "registry[0].url",
            4,
            "invalid URL",
        ),
        (
            "[[registry]]\nname = \"a\"\nkind = \"oci\"\nurl = \"https://h\"\nusername = \"u\"\npassword_file = \"/nonexistent/secret\"\n",
            "registry[0].password_file",
            6,
            "cannot read secret file /nonexistent/secret",
        ),
    ];
    for (text, path, line, hint) in cases {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_regwatch"))
            .args(["check", "-c"])
            .arg(&file)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {err}");
        assert!(err.contains(&format!("`{path}`")), "{text}: {err}");
        assert!(err.contains(&format!("(line {line})")), "{text}: {err}");
        assert!(err.contains(hint), "{text}: {err}");
    }
}

#[test]
fn a_secret_written_as_a_number_is_not_echoed() {
    let registry = "[[registry]]\nname = \"a\"\nkind = \"oci\"\nurl = \"https://h\"\n";
    let ecr = "[[registry]]\nname = \"e\"\nkind = \"ecr\"\nurl = \"https://123456789012.dkr.ecr.eu-west-1.amazonaws.com\"\naccess_key_id = \"AKIA\"\n";
    let gcr = "[[registry]]\nname = \"g\"\nkind = \"gcr\"\nurl = \"https://gcr.io\"\nproject_id = \"p\"\n";
    let cases = [
        (
            format!("{registry}username = \"u\"\npassword = 9317024\n"),
            "registry[0].password",
            6,
        ),
        (
            format!("{registry}webhook_token = 9317024\n"),
            "registry[0].webhook_token",
            5,
        ),
        (
            format!("{ecr}secret_access_key = 9317024\n"),
            "registry[0].secret_access_key",
            6,
        ),
        (
            format!("{gcr}json_key = 9317024.5\n"),
            "registry[0].json_key",
            6,
        ),
        (
            format!("{registry}password = true\n"),
            "registry[0].password",
            5,
        ),
        (
            format!(
                "[kafka]\nbrokers = \"b:9092\"\n[kafka.properties]\n\"sasl.password\" = 9317024\n{registry}"
            ),
            "kafka.properties.sasl.password",
            4,
        ),
    ];
    let mut echoed = 0;
    for (text, path, line) in &cases {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_regwatch"))
            .args(["check", "-c"])
            .arg(&file)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {err}");
        assert!(err.contains(&format!("`{path}`")), "{text}: {err}");
        assert!(err.contains(&format!("(line {line})")), "{text}: {err}");
        assert!(err.contains("expected a string"), "{text}: {err}");
        if err.contains("9317024") || err.contains("true") {
            echoed += 1;
        }
    }
    support::report(
        "secret typed as a number/bool echoed in the config error",
        format!("{echoed} of {}", cases.len()),
        "0",
    );
    assert_eq!(echoed, 0, "a secret value appeared in an error");
}
