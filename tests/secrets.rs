//! Canary test: known secrets go through good and failing Basic and Bearer auth, SASL settings and a
//! webhook, all at `RUST_LOG=trace`; not one byte of output may carry them, raw or as Base64 `user:pass`.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::synthetic::{Synthetic, serve};
use support::{Auth, Registry, Setup, basic_b64, free_port, report};

const PW: &str = "canary-pw-7d1f93";
const WRONG_PW: &str = "canary-wrong-5c3d";
const TOKEN_PW: &str = "canary-tokpw-41ab";
const TOKEN: &str = "canary-token-88e2";
const SASL_PW: &str = "canary-sasl-19fe";
const HOOK: &str = "canary-hook-3b2c";

fn block(name: &str, url: &str, user: &str, pass: &str, repos: &str) -> String {
    format!(
        "[[registry]]\nname = \"{name}\"\nkind = \"oci\"\nurl = \"{url}\"\ninsecure = true\nusername = \"{user}\"\npassword = \"{pass}\"\nrepositories = [{repos}]\nmutable_tags = [\"latest\"]\nwebhook_token = \"{HOOK}\"\n\n"
    )
}

fn canaries() -> Vec<String> {
    vec![
        PW.into(),
        WRONG_PW.into(),
        TOKEN_PW.into(),
        TOKEN.into(),
        SASL_PW.into(),
        HOOK.into(),
        basic_b64("ci", PW),
        basic_b64("ci", WRONG_PW),
        basic_b64("tok", TOKEN_PW),
        basic_b64("tok", WRONG_PW),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_never_reach_any_output() {
    let registry = Registry::start(Auth::Htpasswd("ci".into(), PW.into()));
    registry.push("team/app", "v1").await;
    registry.push("team/app", "latest").await;
    let synthetic = Arc::new(Synthetic::default());
    synthetic.put("team/tok", "latest", 0);
    *synthetic.token_auth.lock().unwrap() = Some(("tok".into(), TOKEN_PW.into(), TOKEN.into()));
    let host = serve(synthetic.clone()).await;
    let syn_url = format!("http://{host}");

    let registries = [
        block("basic-good", &registry.url(), "ci", PW, "\"team/*\""),
        block("basic-bad", &registry.url(), "ci", WRONG_PW, "\"team/app\""),
        block("token-good", &syn_url, "tok", TOKEN_PW, "\"team/tok\""),
        block("token-bad", &syn_url, "tok", WRONG_PW, "\"team/tok\""),
    ]
    .concat();
    let setup = Setup::new("first_run = \"emit\"\ninterval = \"1s\"\n", &registries);
    let mut output = String::new();
    let mut run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_regwatch"))
            .args(args)
            .arg("-c")
            .arg(&setup.config)
            .env("RUST_LOG", "trace")
            .output()
            .unwrap();
        output.push_str(&String::from_utf8_lossy(&out.stdout));
        output.push_str(&String::from_utf8_lossy(&out.stderr));
        out.status.code()
    };
    assert_eq!(
        run(&["check"]),
        Some(1),
        "the bad registries fail the check"
    );
    assert_eq!(run(&["once"]), Some(1));
    assert_eq!(run(&["tags", "token-good", "team/tok"]), Some(0));
    assert_eq!(run(&["tags", "basic-good", "team/app"]), Some(0));
    assert_eq!(run(&["once", "--dry-run", "--log-format", "json"]), Some(1));
    assert!(
        output.contains("invalid credentials (401/403)"),
        "failing auth was exercised"
    );
    assert!(
        synthetic
            .token_requests
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2,
        "Bearer flow exercised"
    );
    assert!(
        output.contains("io.regwatch.tag.added"),
        "events were printed"
    );

    // The daemon, with SASL settings for an unreachable broker and a webhook with a wrong token.
    let text = std::fs::read_to_string(&setup.config).unwrap();
    let kafka = format!(
        "[kafka]\nbrokers = \"127.0.0.1:{}\"\n[kafka.properties]\n\"security.protocol\" = \"SASL_PLAINTEXT\"\n\"sasl.mechanisms\" = \"PLAIN\"\n\"sasl.username\" = \"svc\"\n\"sasl.password\" = \"{SASL_PW}\"\n\n",
        free_port()
    );
    let registries_at = text.find("[[registry]]").unwrap();
    std::fs::write(
        &setup.config,
        format!(
            "{}{kafka}{}",
            &text[..registries_at],
            &text[registries_at..]
        ),
    )
    .unwrap();
    let daemon = support::Daemon::start(
        std::process::Command::new(env!("CARGO_BIN_EXE_regwatch"))
            .args(["run", "-c"])
            .arg(&setup.config)
            .env("RUST_LOG", "trace"),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let hook = format!("http://{}/hooks/basic-good", setup.admin);
    let client = reqwest::Client::new();
    let status = client
        .post(&hook)
        .bearer_auth("canary-hook-3b2X")
        .body("{}")
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 401);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, out, err) = daemon.stop();
    output.push_str(&out);
    output.push_str(&err);
    assert!(output.contains("TRACE"), "trace logging was on");

    let found: Vec<(String, usize)> = canaries()
        .into_iter()
        .map(|c| {
            let n = output.matches(&c).count();
            (c, n)
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    let total: usize = found.iter().map(|(_, n)| n).sum();
    report(
        &format!("secret canaries in {} bytes of trace output", output.len()),
        total,
        "0",
    );
    assert!(found.is_empty(), "secrets leaked: {found:?}");
}
