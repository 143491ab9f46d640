//! Google identities without a configured key, against real protocol peers: Application Default
//! Credentials (a `GOOGLE_APPLICATION_CREDENTIALS` file, gcloud's ADC file, the metadata server)
//! and impersonation through the IAM Credentials API. The suite's token server plays Google's
//! peers and verifies what each receives (the refresh grant's client id, secret and token; the
//! `Metadata-Flavor` header; the caller's token, target and scope at generateAccessToken), then
//! accepts the final token at the realm of a `docker-registry` that enforces the JWTs it signs.
//!
//! Every run gets a clean environment: HOME is a scratch directory (no real gcloud file) and
//! GCE_METADATA_HOST always points at loopback, so no test ever reaches a real Google host.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::token_server::{Style, TokenServer};
use support::{Auth, Registry, Setup, free_port, json_lines, metric, report};

const READ: &str = "https://www.googleapis.com/auth/devstorage.read_only";
const CLOUD: &str = "https://www.googleapis.com/auth/cloud-platform";
const READER: &str = "reader@my-project.iam.gserviceaccount.com";
const GKE_SA: &str = "gke-sa@my-project.iam.gserviceaccount.com";

/// A token server and a registry that trusts it, with `my-project/app:v1` pushed.
async fn peers() -> (TokenServer, Registry) {
    let tokens = TokenServer::start(&[], Style::Docker).await;
    let registry = Registry::start(Auth::Token {
        realm: tokens.realm(),
        cert: tokens.cert_path.clone(),
    });
    registry.push("my-project/app", "v1").await;
    (tokens, registry)
}

fn block(name: &str, registry: &Registry, extra: &str) -> String {
    format!(
        "[[registry]]\nname = \"{name}\"\nkind = \"gcr\"\nurl = \"{}\"\ninsecure = true\nproject_id = \"my-project\"\nrepositories = [\"app\"]\n{extra}\n",
        registry.url()
    )
}

/// `regwatch ARGS -c CONFIG` in a clean Google environment plus `env`: (code, stdout, stderr, time).
fn run(setup: &Setup, env: &[(&str, &str)], args: &[&str]) -> (i32, String, String, Duration) {
    let started = Instant::now();
    let out = command(setup, env, args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        started.elapsed(),
    )
}

fn command(setup: &Setup, env: &[(&str, &str)], args: &[&str]) -> Command {
    let home = setup.dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_regwatch"));
    c.args(args)
        .arg("-c")
        .arg(&setup.config)
        .env("RUST_LOG", "regwatch=debug")
        .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
        .env_remove("CLOUDSDK_CONFIG")
        .env("HOME", &home)
        // Nothing listens there: a test that reaches for the metadata server unasked fails fast.
        .env("GCE_METADATA_HOST", format!("127.0.0.1:{}", free_port()));
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

fn line<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no line for {name} in {out}"))
}

/// `check` names `source`, a first `once` records the baseline, and a pushed tag is seen.
async fn check_and_watch(
    setup: &Setup,
    env: &[(&str, &str)],
    registry: &Registry,
    names: &[(&str, &str)],
    tokens: &TokenServer,
) {
    let (code, out, err, _) = run(setup, env, &["check"]);
    let diag = || format!("{out}{err}\nrefusals: {:?}", tokens.gcp().refusals());
    assert_eq!(code, 0, "{}", diag());
    for (name, source) in names {
        assert_eq!(
            line(&out, name).split_once("  ").map(|(_, o)| o.trim()),
            Some(format!("ok ({source})").as_str()),
            "{}",
            diag()
        );
    }
    let (code, out, err, _) = run(setup, env, &["once"]);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    let digest = registry
        .push("my-project/app", &format!("v{}", rand::random::<u32>()))
        .await;
    let (code, out, err, _) = run(setup, env, &["once"]);
    assert_eq!(code, 0, "{err}");
    let events = json_lines(&out);
    assert_eq!(events.len(), names.len(), "{out}");
    for e in &events {
        assert_eq!(e["data"]["repository"], "my-project/app");
        assert_eq!(e["data"]["digest"], digest.as_str());
    }
}

fn authorized_user(path: &Path, tokens: &TokenServer, secret: &str) {
    // What `gcloud auth application-default login` writes, plus a `token_uri` (google-auth honours
    // it; default https://oauth2.googleapis.com/token) so the grant reaches the local peer.
    let json = serde_json::json!({
        "type": "authorized_user",
        "client_id": "764086051850-test.apps.googleusercontent.com",
        "client_secret": secret,
        "refresh_token": "1//0test-refresh-token",
        "quota_project_id": "my-project",
        "universe_domain": "googleapis.com",
        "token_uri": format!("{}/oauth2/token", tokens.url),
    });
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, json.to_string()).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn adc_authorized_user_from_google_application_credentials() {
    let (tokens, registry) = peers().await;
    tokens.gcp().add_user(
        "764086051850-test.apps.googleusercontent.com",
        "d-FL95Q19q7MQmFpd7hHD0Ty",
        "1//0test-refresh-token",
        "dev@example.com",
    );
    let setup = Setup::new("", &block("gcr", &registry, ""));
    let file = setup.dir.path().join("adc.json");
    authorized_user(&file, &tokens, "d-FL95Q19q7MQmFpd7hHD0Ty");
    let env = [("GOOGLE_APPLICATION_CREDENTIALS", file.to_str().unwrap())];
    check_and_watch(
        &setup,
        &env,
        &registry,
        &[(
            "gcr",
            "application default credentials: GOOGLE_APPLICATION_CREDENTIALS, authorized_user",
        )],
        &tokens,
    )
    .await;
    let (grants, _, _) = tokens.gcp().grants();
    assert!(grants >= 1, "the refresh grant ran");
    // The user's token is scoped to reading the registry, not to all of Google Cloud.
    let scopes = tokens.gcp().refresh_scopes();
    report(
        "GCR ADC authorized_user: scope of the refresh grants",
        format!("{scopes:?}"),
        "devstorage.read_only each",
    );
    assert!(
        !scopes.is_empty() && scopes.iter().all(|s| s == READ),
        "{scopes:?}"
    );
    let principals = tokens.gcp().realm_principals();
    assert!(
        !principals.is_empty() && principals.iter().all(|p| p == "dev@example.com"),
        "{principals:?}"
    );
    report("GCR ADC authorized_user: refresh grants", grants, ">= 1");

    // The file is read again at the next refresh: a wrong client secret there is refused by the
    // token endpoint, and check says so.
    authorized_user(&file, &tokens, "wrong-secret");
    let (code, out, _, _) = run(&setup, &env, &["check"]);
    assert_eq!(code, 1);
    assert!(
        line(&out, "gcr").ends_with("invalid credentials (401/403)"),
        "{out}"
    );
    assert!(
        tokens
            .gcp()
            .refusals()
            .contains(&"token_uri: wrong client_secret".to_string())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn adc_gcloud_file_under_cloudsdk_config_then_home() {
    let (tokens, registry) = peers().await;
    tokens.gcp().add_user(
        "764086051850-test.apps.googleusercontent.com",
        "gcloud-client-secret",
        "1//0test-refresh-token",
        "dev@example.com",
    );
    let setup = Setup::new("", &block("gcr", &registry, ""));
    let config_dir = setup.dir.path().join("gcloud-config");
    authorized_user(
        &config_dir.join("application_default_credentials.json"),
        &tokens,
        "gcloud-client-secret",
    );
    let env = [("CLOUDSDK_CONFIG", config_dir.to_str().unwrap())];
    let source = "application default credentials: gcloud, authorized_user";
    check_and_watch(&setup, &env, &registry, &[("gcr", source)], &tokens).await;

    // Without CLOUDSDK_CONFIG, gcloud's default place: ~/.config/gcloud.
    authorized_user(
        &setup
            .dir
            .path()
            .join("home/.config/gcloud/application_default_credentials.json"),
        &tokens,
        "gcloud-client-secret",
    );
    let (code, out, err, _) = run(&setup, &[], &["check"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        line(&out, "gcr").ends_with(&format!("ok ({source})")),
        "{out}"
    );
    report(
        "GCR ADC gcloud file: refresh grants",
        tokens.gcp().grants().0,
        ">= 2",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn adc_service_account_key_from_google_application_credentials() {
    let (tokens, registry) = peers().await;
    let setup = Setup::new("", &block("gcr", &registry, ""));
    let account = tokens.service_account(setup.dir.path(), "my-project");
    let env = [(
        "GOOGLE_APPLICATION_CREDENTIALS",
        account.path.to_str().unwrap(),
    )];
    check_and_watch(
        &setup,
        &env,
        &registry,
        &[(
            "gcr",
            "application default credentials: GOOGLE_APPLICATION_CREDENTIALS, service_account",
        )],
        &tokens,
    )
    .await;
    let scopes = tokens.google_scopes();
    assert!(
        !scopes.is_empty() && scopes.iter().all(|s| s == READ),
        "{scopes:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn adc_metadata_server_honouring_gce_metadata_host() {
    let (tokens, registry) = peers().await;
    tokens.gcp().set_metadata_account(GKE_SA);
    // The peer verifies the header, as Google's does.
    let bare = reqwest::get(format!(
        "{}/computeMetadata/v1/instance/service-accounts/default/token",
        tokens.url
    ))
    .await
    .unwrap();
    assert_eq!(bare.status(), 403, "no Metadata-Flavor: Google, no token");
    let setup = Setup::new("", &block("gcr", &registry, ""));
    let env = [("GCE_METADATA_HOST", tokens.host())];
    check_and_watch(
        &setup,
        &env,
        &registry,
        &[("gcr", "application default credentials: metadata server")],
        &tokens,
    )
    .await;
    let scopes = tokens.gcp().metadata_scopes();
    assert!(
        !scopes.is_empty() && scopes.iter().all(|s| s == READ),
        "{scopes:?}"
    );
    assert!(tokens.gcp().realm_principals().iter().all(|p| p == GKE_SA));
    report(
        "GCR ADC metadata server: tokens granted (scope)",
        format!("{} (devstorage.read_only)", tokens.gcp().grants().1),
        ">= 1 (devstorage.read_only)",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn impersonation_through_the_iam_credentials_api() {
    let (tokens, registry) = peers().await;
    let dir = tempfile::tempdir().unwrap();
    let key = tokens.service_account(dir.path(), "my-project");
    let key_email = "regwatch@my-project.iam.gserviceaccount.com";
    tokens.gcp().set_metadata_account(GKE_SA);
    tokens.gcp().allow_impersonation(key_email, READER);
    tokens.gcp().allow_impersonation(GKE_SA, READER);
    let impersonate = format!(
        "impersonate_service_account = \"{READER}\"\niam_endpoint = \"{}\"\n",
        tokens.url
    );
    let setup = Setup::new(
        "",
        &[
            block(
                "gcr-key",
                &registry,
                &format!("json_key_file = \"{}\"\n{impersonate}", key.path.display()),
            ),
            block("gcr-adc", &registry, &impersonate),
        ]
        .concat(),
    );
    let env = [("GCE_METADATA_HOST", tokens.host())];
    check_and_watch(
        &setup,
        &env,
        &registry,
        &[
            (
                "gcr-key",
                &format!("service-account key, impersonating {READER}"),
            ),
            (
                "gcr-adc",
                &format!(
                    "application default credentials: metadata server, impersonating {READER}"
                ),
            ),
        ],
        &tokens,
    )
    .await;
    // The sources asked for cloud-platform (the IAM API requires it), the registry only ever saw
    // the impersonated, read-only token.
    let gcp = tokens.gcp();
    let source_scopes: Vec<String> = tokens
        .google_scopes()
        .into_iter()
        .chain(gcp.metadata_scopes())
        .collect();
    assert!(
        source_scopes.iter().all(|s| s == CLOUD),
        "{source_scopes:?}"
    );
    let iam = gcp.iam_scopes();
    assert!(!iam.is_empty() && iam.iter().all(|s| s == READ), "{iam:?}");
    let principals = gcp.realm_principals();
    assert!(
        !principals.is_empty() && principals.iter().all(|p| p == READER),
        "{principals:?}"
    );
    report(
        "GCR impersonation: principals the registry realm saw",
        format!(
            "{} × {}",
            principals.len(),
            READER.split('@').next().unwrap()
        ),
        "only the impersonated reader",
    );

    // Without Token Creator on the target, the IAM API refuses, and check says so.
    let other = "other@my-project.iam.gserviceaccount.com";
    let denied = Setup::new(
        "",
        &block(
            "gcr",
            &registry,
            &format!(
                "impersonate_service_account = \"{other}\"\niam_endpoint = \"{}\"\n",
                tokens.url
            ),
        ),
    );
    let (code, out, _, _) = run(&denied, &env, &["check"]);
    assert_eq!(code, 1);
    assert!(
        line(&out, "gcr").ends_with("invalid credentials (401/403)"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_that_fails_says_why_without_hanging() {
    let (_tokens, registry) = peers().await;
    let setup = Setup::new("", &block("gcr", &registry, ""));
    // Nothing at GCE_METADATA_HOST (the default `command` environment), no file: off Google Cloud.
    let (code, out, _, took) = run(&setup, &[], &["check"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        line(&out, "gcr").contains("no credentials: metadata server unreachable"),
        "{out}"
    );
    assert!(took < Duration::from_secs(10), "check took {took:?}");
    report(
        "GCR ADC, metadata server down: check time",
        format!("{} ms", took.as_millis()),
        "< 10 s, says `metadata server unreachable`",
    );

    let missing = setup.dir.path().join("missing.json");
    let (code, out, _, _) = run(
        &setup,
        &[("GOOGLE_APPLICATION_CREDENTIALS", missing.to_str().unwrap())],
        &["check"],
    );
    assert_eq!(code, 1);
    assert!(
        line(&out, "gcr").contains("no credentials: GOOGLE_APPLICATION_CREDENTIALS file"),
        "{out}"
    );

    let federation = setup.dir.path().join("wif.json");
    std::fs::write(
        &federation,
        r#"{"type": "external_account", "audience": "//iam.googleapis.com/x", "subject_token_type": "urn:ietf:params:oauth:token-type:jwt", "token_url": "https://sts.googleapis.com/v1/token", "credential_source": {"file": "/var/run/token"}}"#,
    )
    .unwrap();
    let (code, out, _, _) = run(
        &setup,
        &[(
            "GOOGLE_APPLICATION_CREDENTIALS",
            federation.to_str().unwrap(),
        )],
        &["check"],
    );
    assert_eq!(code, 1);
    assert!(
        line(&out, "gcr").contains("type \"external_account\", which regwatch does not support"),
        "{out}"
    );

    // The keys are checked at load.
    for (extra, key) in [
        ("iam_endpoint = \"http://127.0.0.1:1\"\n", "iam_endpoint"),
        (
            "impersonate_service_account = \"not an email\"\n",
            "impersonate_service_account",
        ),
    ] {
        let bad = Setup::new("", &block("gcr", &registry, extra));
        let (code, _, err, _) = run(&bad, &[], &["check"]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains(&format!("registry[0].{key}")), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn five_second_tokens_never_meet_a_401() {
    let (tokens, registry) = peers().await;
    let gcp = tokens.gcp();
    gcp.set_metadata_account(GKE_SA);
    gcp.allow_impersonation(GKE_SA, READER);
    gcp.set_lifetime(5);
    tokens.set_token_lifetime(5);
    let setup = Setup::new(
        "interval = \"1s\"\njitter = \"0%\"\n",
        &block(
            "gcr",
            &registry,
            &format!(
                "impersonate_service_account = \"{READER}\"\niam_endpoint = \"{}\"\n",
                tokens.url
            ),
        ),
    );
    let env = [("GCE_METADATA_HOST", tokens.host())];
    let daemon = support::Daemon::start(&mut command(&setup, &env, &["run"]));
    tokio::time::sleep(Duration::from_secs(30)).await;
    let count = async |series: &str| metric(&setup.admin, series).await.unwrap_or(0.0);
    let ok = count("regwatch_scans_total{registry=\"gcr\",result=\"ok\"}").await;
    let failed = count("regwatch_scans_total{registry=\"gcr\",result=\"failed\"}").await;
    let incomplete = count("regwatch_scans_total{registry=\"gcr\",result=\"incomplete\"}").await;
    let client_errors =
        count("regwatch_registry_requests_total{registry=\"gcr\",status=\"4xx\"}").await;
    let (_, _, err) = daemon.stop();
    let (_, metadata_grants, iam_grants) = gcp.grants();
    let refusals = gcp.refusals();
    report(
        "GCR 5 s Google tokens, 30 s run: scans ok/failed/incomplete",
        format!("{ok}/{failed}/{incomplete}"),
        ">= 20/0/0",
    );
    report(
        "GCR 5 s Google tokens, 30 s run: 401s at realm/IAM (refused) / registry 4xx",
        format!("{} / {client_errors}", tokens.refused()),
        "0 / <= 1 (the first request's challenge)",
    );
    report(
        "GCR 5 s Google tokens, 30 s run: metadata/IAM tokens minted",
        format!("{metadata_grants}/{iam_grants}"),
        ">= 6 each (refreshed before expiry, not per request)",
    );
    assert!(ok >= 20.0, "ok scans {ok}\n{err}");
    assert_eq!((failed, incomplete), (0.0, 0.0), "{err}");
    assert_eq!(tokens.refused(), 0, "{refusals:?}");
    assert!(refusals.is_empty(), "{refusals:?}");
    // The only 4xx is the first request's challenge, which teaches the token realm.
    assert!(client_errors <= 1.0, "4xx answers: {client_errors}");
    assert!(
        (6..=40).contains(&metadata_grants) && (6..=40).contains(&iam_grants),
        "metadata {metadata_grants}, iam {iam_grants}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn adc_impersonated_service_account_file() {
    // What `gcloud auth application-default login --impersonate-service-account=SA` writes: the
    // user's credentials as `source_credentials`, and the IAM URL to trade their token at.
    let (tokens, registry) = peers().await;
    let gcp = tokens.gcp();
    gcp.add_user("cid", "user-secret", "1//0refresh", "dev@example.com");
    gcp.allow_impersonation("dev@example.com", READER);
    let setup = Setup::new("", &block("gcr", &registry, ""));
    let file = setup.dir.path().join("impersonated.json");
    let json = serde_json::json!({
        "type": "impersonated_service_account",
        "service_account_impersonation_url": format!(
            "{}/v1/projects/-/serviceAccounts/{READER}:generateAccessToken",
            tokens.url
        ),
        "delegates": [],
        "source_credentials": {
            "type": "authorized_user",
            "client_id": "cid",
            "client_secret": "user-secret",
            "refresh_token": "1//0refresh",
            "token_uri": format!("{}/oauth2/token", tokens.url),
        },
    });
    std::fs::write(&file, json.to_string()).unwrap();
    let env = [("GOOGLE_APPLICATION_CREDENTIALS", file.to_str().unwrap())];
    check_and_watch(
        &setup,
        &env,
        &registry,
        &[(
            "gcr",
            "application default credentials: GOOGLE_APPLICATION_CREDENTIALS, impersonated_service_account",
        )],
        &tokens,
    )
    .await;
    let iam = gcp.iam_scopes();
    assert!(!iam.is_empty() && iam.iter().all(|s| s == READ), "{iam:?}");
    // The user's token only buys the impersonated one: IAM wants cloud-platform of its caller.
    let user = gcp.refresh_scopes();
    assert!(
        !user.is_empty() && user.iter().all(|s| s == CLOUD),
        "{user:?}"
    );
    let principals = gcp.realm_principals();
    assert!(
        !principals.is_empty() && principals.iter().all(|p| p == READER),
        "{principals:?}"
    );
}

/// A peer that accepts connections and then stalls: with `partial`, after the head of a 200 and
/// the first byte of its JSON body (so a timeout on the response head alone is not enough); else
/// before answering anything. Counts connections; holds every socket open until the test ends.
fn stalling_peer(partial: bool) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::Write;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let count = std::sync::Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for mut stream in listener.incoming().flatten() {
            seen.fetch_add(1, Ordering::SeqCst);
            if partial {
                // Answer only once the request is in: hyper refuses an answer to no request.
                let _ = std::io::Read::read(&mut stream, &mut [0u8; 4096]);
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 200\r\n\r\n{",
                );
            }
            held.push(stream);
        }
    });
    (addr, count)
}

/// Review: the service-account JWT flow (yup-oauth2) ran without any timeout, so a token endpoint
/// that stalls mid-answer hung `check` for ever, and held the refresh lock every scan of the
/// registry waits on. It must give up within the registry's `request_timeout`.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_service_account_token_endpoint_times_out() {
    let (tokens, registry) = peers().await;
    let (stall, _) = stalling_peer(true);
    let dir = tempfile::tempdir().unwrap();
    let key = tokens.service_account(dir.path(), "my-project");
    let mut json: serde_json::Value = serde_json::from_str(&key.json).unwrap();
    json["token_uri"] = format!("http://{stall}/token").into();
    std::fs::write(&key.path, json.to_string()).unwrap();
    let setup = Setup::new(
        "",
        &block(
            "gcr",
            &registry,
            &format!(
                "request_timeout = \"2s\"\njson_key_file = \"{}\"\n",
                key.path.display()
            ),
        ),
    );
    let started = Instant::now();
    let mut child = command(&setup, &[], &["check"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if started.elapsed() > Duration::from_secs(30) {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let took = started.elapsed();
    report(
        "GCR key, token endpoint stalls mid-answer: check time",
        format!("{} ms", took.as_millis()),
        "< 30 s (request_timeout 2 s)",
    );
    assert!(code.is_some(), "check still hung after {took:?}");
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    assert_eq!(code, Some(1), "{out}");
    assert!(line(&out, "gcr").contains("timed out"), "{out}");
}

/// Review: concurrent scans that queued behind a failing token attempt each tried again in turn,
/// so one unreachable metadata server cost every repository a full `request_timeout`, one after
/// another (N repositories: N x timeout, N connections). Scans waiting on an attempt share its
/// outcome, as they share its token when it succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn scans_waiting_on_a_failing_token_attempt_share_its_failure() {
    let (_tokens, registry) = peers().await;
    let (metadata, connections) = stalling_peer(false);
    let names: Vec<String> = (0..6).map(|i| format!("\"app{i}\"")).collect();
    let setup = Setup::new(
        "",
        &format!(
            "[[registry]]\nname = \"gcr\"\nkind = \"gcr\"\nurl = \"{}\"\ninsecure = true\nproject_id = \"my-project\"\nrepositories = [{}]\nconcurrency = 6\nrequest_timeout = \"2s\"\n",
            registry.url(),
            names.join(", ")
        ),
    );
    let env = [("GCE_METADATA_HOST", metadata.as_str())];
    let (code, out, err, took) = run(&setup, &env, &["once"]);
    let tries = connections.load(std::sync::atomic::Ordering::SeqCst);
    report(
        "GCR ADC, metadata server stalls, 6 repositories at concurrency 6: once time / metadata connections",
        format!("{} ms / {tries}", took.as_millis()),
        "< 6 s / 1",
    );
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("timed out"), "{err}");
    assert_eq!(tries, 1, "metadata connections\n{err}");
    assert!(took < Duration::from_secs(6), "once took {took:?}\n{err}");
}

/// Review: an `expires_in` past what `Instant` can hold (the metadata server's, or any registry
/// token realm's) panicked on `Instant + Duration`, killing the registry's loop; a lifetime is a
/// number a peer sends, so an absurd one is clamped, not trusted.
#[tokio::test(flavor = "multi_thread")]
async fn absurd_token_lifetimes_do_not_panic() {
    // Fits u64 (and the peers' own arithmetic) but not a monotonic clock's i64 seconds.
    const ABSURD: u64 = 10_000_000_000_000_000_000;
    let (tokens, registry) = peers().await;
    let gcp = tokens.gcp();
    gcp.set_metadata_account(GKE_SA);
    gcp.set_lifetime(ABSURD);
    let setup = Setup::new("", &block("gcr", &registry, ""));
    let env = [("GCE_METADATA_HOST", tokens.host())];
    let (code, out, err, _) = run(&setup, &env, &["check"]);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(code, 0, "Google token lifetime {ABSURD} s\n{out}{err}");
    // The registry's realm: docker-registry cannot read such an `exp`, so the check fails, but
    // it must fail as a refusal, not a panic.
    gcp.set_lifetime(3600);
    tokens.set_token_lifetime(ABSURD);
    let (code, out, err, _) = run(&setup, &env, &["check"]);
    report(
        "GCR, expires_in 1e19 s from metadata / realm: panics",
        usize::from(err.contains("panicked")),
        "0",
    );
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(code, 1, "realm token lifetime {ABSURD} s\n{out}{err}");
}

/// Review: every refusal at the realm made the source forget its token, so an identity the
/// registry refuses (a missing IAM binding) cost one new Google token per repository scanned:
/// one metadata, IAM or token-endpoint call per repository per cycle. A token minted moments
/// ago is refused for who it names, not for its age; minting another changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_identity_is_not_reminted_for_every_repository() {
    let (_tokens, registry) = peers().await;
    // Another project's metadata server: its tokens are real, but this registry's realm
    // does not accept them.
    let elsewhere = TokenServer::start(&[], Style::Docker).await;
    elsewhere.gcp().set_metadata_account(GKE_SA);
    let names: Vec<String> = (0..6).map(|i| format!("\"app{i}\"")).collect();
    let setup = Setup::new(
        "",
        &format!(
            "[[registry]]\nname = \"gcr\"\nkind = \"gcr\"\nurl = \"{}\"\ninsecure = true\nproject_id = \"my-project\"\nrepositories = [{}]\nconcurrency = 1\n",
            registry.url(),
            names.join(", ")
        ),
    );
    let env = [("GCE_METADATA_HOST", elsewhere.host())];
    let (code, out, err, _) = run(&setup, &env, &["once"]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("invalid credentials"), "{err}");
    let (_, minted, _) = elsewhere.gcp().grants();
    report(
        "GCR ADC, identity refused at the realm, 6 repositories: metadata tokens minted",
        minted,
        "1",
    );
    assert_eq!(minted, 1, "{err}");
}

/// Review: yup-oauth2 reads an OAuth2 error body whatever the HTTP status, and every such error
/// was reported as refused credentials. Google's token endpoint answers an outage with 5xx and
/// `{"error": "internal_failure"}` (google-auth retries `internal_failure`, `server_error` and
/// `temporarily_unavailable`, the latter two from RFC 6749 §4.1.2.1): that is an unreachable
/// peer to retry, not "invalid credentials (401/403)".
#[tokio::test(flavor = "multi_thread")]
async fn a_google_token_endpoint_outage_is_not_refused_credentials() {
    use std::io::{Read, Write};
    let (tokens, registry) = peers().await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let peer = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let _ = stream.read(&mut [0u8; 8192]);
            let body = r#"{"error":"internal_failure","error_description":"Backend Error"}"#;
            let _ = write!(
                stream,
                "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let key = tokens.service_account(dir.path(), "my-project");
    let mut json: serde_json::Value = serde_json::from_str(&key.json).unwrap();
    json["token_uri"] = format!("http://{peer}/token").into();
    std::fs::write(&key.path, json.to_string()).unwrap();
    let setup = Setup::new(
        "",
        &block(
            "gcr",
            &registry,
            &format!("json_key_file = \"{}\"\n", key.path.display()),
        ),
    );
    let (code, out, err, _) = run(&setup, &[], &["check"]);
    assert_eq!(code, 1, "{out}{err}");
    let outcome = line(&out, "gcr");
    assert!(!outcome.contains("invalid credentials"), "{outcome}");
    assert!(
        outcome.contains("unreachable: Google token endpoint"),
        "{outcome}"
    );
}
