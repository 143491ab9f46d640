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

const G_CLIENT_SECRET: &str = "canary-gclient-6a1e";
const G_REFRESH: &str = "canary-grefresh-2f7c";

/// Google identities: the refresh token and client secret of an `authorized_user` file, the
/// service-account private key, and every access token the peers granted (from the key, the refresh
/// grant, the metadata server and the IAM Credentials API) go through good and refused flows at
/// `RUST_LOG=trace`; none of them may appear in any output.
#[tokio::test(flavor = "multi_thread")]
async fn google_secrets_never_reach_any_output() {
    use support::token_server::{Style, TokenServer};
    let tokens = TokenServer::start(&[], Style::Docker).await;
    let registry = Registry::start(Auth::Token {
        realm: tokens.realm(),
        cert: tokens.cert_path.clone(),
    });
    registry.push("my-project/app", "v1").await;
    let reader = "reader@my-project.iam.gserviceaccount.com";
    let gcp = tokens.gcp();
    gcp.add_user(
        "canary-client-id",
        G_CLIENT_SECRET,
        G_REFRESH,
        "dev@example.com",
    );
    gcp.set_metadata_account("gke-sa@my-project.iam.gserviceaccount.com");
    gcp.allow_impersonation("dev@example.com", reader);
    gcp.allow_impersonation("gke-sa@my-project.iam.gserviceaccount.com", reader);
    let dir = tempfile::tempdir().unwrap();
    let key = tokens.service_account(dir.path(), "my-project");
    let user_file = |secret: &str| {
        let path = dir.path().join(format!("adc-{secret}.json"));
        let json = serde_json::json!({
            "type": "authorized_user", "client_id": "canary-client-id",
            "client_secret": secret, "refresh_token": G_REFRESH,
            "token_uri": format!("{}/oauth2/token", tokens.url),
        });
        std::fs::write(&path, json.to_string()).unwrap();
        path
    };
    let (good_user, bad_user) = (user_file(G_CLIENT_SECRET), user_file(WRONG_PW));
    let gcr = |name: &str, extra: &str| {
        format!(
            "[[registry]]\nname = \"{name}\"\nkind = \"gcr\"\nurl = \"{}\"\ninsecure = true\nproject_id = \"my-project\"\nrepositories = [\"app\"]\n{extra}\n",
            registry.url()
        )
    };
    let setup = Setup::new(
        "first_run = \"emit\"\ninterval = \"1s\"\n",
        &[
            gcr(
                "gcr-key",
                &format!("json_key_file = \"{}\"\n", key.path.display()),
            ),
            gcr(
                "gcr-adc",
                &format!(
                    "impersonate_service_account = \"{reader}\"\niam_endpoint = \"{}\"\n",
                    tokens.url
                ),
            ),
        ]
        .concat(),
    );
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let command = |args: &[&str], adc: Option<&std::path::Path>| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_regwatch"));
        c.args(args)
            .arg("-c")
            .arg(&setup.config)
            .env("RUST_LOG", "trace")
            .env("HOME", &home)
            .env_remove("CLOUDSDK_CONFIG")
            .env(
                "GCE_METADATA_HOST",
                tokens.url.trim_start_matches("http://"),
            );
        match adc {
            Some(path) => c.env("GOOGLE_APPLICATION_CREDENTIALS", path),
            None => c.env_remove("GOOGLE_APPLICATION_CREDENTIALS"),
        };
        c
    };
    let mut output = String::new();
    let mut run = |args: &[&str], adc: Option<&std::path::Path>| {
        let out = command(args, adc).output().unwrap();
        output.push_str(&String::from_utf8_lossy(&out.stdout));
        output.push_str(&String::from_utf8_lossy(&out.stderr));
        out.status.code()
    };
    assert_eq!(run(&["check"], Some(&good_user)), Some(0));
    assert_eq!(run(&["once"], Some(&good_user)), Some(0));
    assert_eq!(run(&["check"], None), Some(0));
    assert_eq!(run(&["tags", "gcr-adc", "app"], None), Some(0));
    assert_eq!(run(&["check"], Some(&bad_user)), Some(1));
    assert!(output.contains("ok (application default credentials: GOOGLE_APPLICATION_CREDENTIALS, authorized_user, impersonating"));
    assert!(
        output.contains("invalid credentials (401/403)"),
        "a refused grant was exercised"
    );
    let daemon = support::Daemon::start(&mut command(&["run"], None));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, out, err) = daemon.stop();
    output.push_str(&out);
    output.push_str(&err);
    assert!(output.contains("TRACE"), "trace logging was on");

    let granted = gcp.granted_tokens();
    let (refresh, metadata, iam) = gcp.grants();
    assert!(refresh >= 2 && metadata >= 1 && iam >= 3 && tokens.google_grants() >= 1);
    let private_key: Vec<String> =
        serde_json::from_str::<serde_json::Value>(&key.json).unwrap()["private_key"]
            .as_str()
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("-----") && l.len() > 20)
            .map(str::to_owned)
            .collect();
    let mut canaries = vec![
        G_CLIENT_SECRET.to_owned(),
        G_REFRESH.to_owned(),
        WRONG_PW.to_owned(),
    ];
    canaries.extend(private_key);
    for t in &granted {
        canaries.push(t.clone());
        canaries.push(basic_b64("oauth2accesstoken", t));
    }
    let found: Vec<(String, usize)> = canaries
        .into_iter()
        .map(|c| {
            let n = output.matches(&c).count();
            (c, n)
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    let total: usize = found.iter().map(|(_, n)| n).sum();
    report(
        &format!(
            "Google secret canaries ({} access tokens, refresh token, client secret, key) in {} bytes of trace output",
            granted.len(),
            output.len()
        ),
        total,
        "0",
    );
    assert!(found.is_empty(), "secrets leaked: {found:?}");
}

/// Review: yup-oauth2's debug logs (the signed JWT assertion, Google's token response) were kept
/// off with an added `yup_oauth2=info` directive, which a more specific `RUST_LOG` directive for
/// one of its modules outranks. No `RUST_LOG` may bring them back.
#[tokio::test(flavor = "multi_thread")]
async fn yup_oauth2_debug_stays_off_whatever_rust_log_names() {
    use support::token_server::{Style, TokenServer};
    let tokens = TokenServer::start(&[], Style::Docker).await;
    let registry = Registry::start(Auth::Token {
        realm: tokens.realm(),
        cert: tokens.cert_path.clone(),
    });
    registry.push("my-project/app", "v1").await;
    let dir = tempfile::tempdir().unwrap();
    let key = tokens.service_account(dir.path(), "my-project");
    let setup = Setup::new(
        "",
        &format!(
            "[[registry]]\nname = \"gcr\"\nkind = \"gcr\"\nurl = \"{}\"\ninsecure = true\nproject_id = \"my-project\"\nrepositories = [\"app\"]\njson_key_file = \"{}\"\n",
            registry.url(),
            key.path.display()
        ),
    );
    let mut output = String::new();
    for filter in [
        "trace,yup_oauth2::service_account=trace",
        "yup_oauth2::authenticator=debug",
        "yup_oauth2::service_account=debug,regwatch=debug",
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_regwatch"))
            .args(["check", "-c"])
            .arg(&setup.config)
            .env("RUST_LOG", filter)
            .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{filter}");
        output.push_str(&String::from_utf8_lossy(&out.stdout));
        output.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    let granted = tokens.gcp().granted_tokens();
    assert!(granted.len() >= 3, "{granted:?}");
    let leaked: Vec<&String> = granted.iter().filter(|t| output.contains(*t)).collect();
    report(
        "Google access tokens in output with module-level RUST_LOG for yup-oauth2",
        leaked.len(),
        "0",
    );
    assert!(
        leaked.is_empty() && !output.contains("yup_oauth2"),
        "leaked {leaked:?}\n{output}"
    );
}
