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

/// Reports how many times the `canaries` appear in `output` under `measure`, and fails naming
/// each one that does.
fn assert_no_canary(measure: &str, output: &str, canaries: &[String]) {
    let found: Vec<(&str, usize)> = canaries
        .iter()
        .map(|c| (c.as_str(), output.matches(c.as_str()).count()))
        .filter(|(_, n)| *n > 0)
        .collect();
    let total: usize = found.iter().map(|(_, n)| n).sum();
    report(measure, total, "0");
    assert!(found.is_empty(), "secrets leaked: {found:?}");
}

/// `regwatch <args> -c <setup's config>` with trace logging on.
fn traced(setup: &Setup, args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_regwatch"));
    c.args(args)
        .arg("-c")
        .arg(&setup.config)
        .env("RUST_LOG", "trace");
    c
}

/// Appends a finished run's stdout and stderr to `output`; returns its exit code.
fn record(out: std::process::Output, output: &mut String) -> Option<i32> {
    output.push_str(&String::from_utf8_lossy(&out.stdout));
    output.push_str(&String::from_utf8_lossy(&out.stderr));
    out.status.code()
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
    let mut run = |args: &[&str]| record(traced(&setup, args).output().unwrap(), &mut output);
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
    let daemon = support::Daemon::start(&mut traced(&setup, &["run"]));
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

    assert_no_canary(
        &format!("secret canaries in {} bytes of trace output", output.len()),
        &output,
        &canaries(),
    );
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
        let mut c = traced(&setup, args);
        c.env("HOME", &home).env_remove("CLOUDSDK_CONFIG").env(
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
        record(command(args, adc).output().unwrap(), &mut output)
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
    assert_no_canary(
        &format!(
            "Google secret canaries ({} access tokens, refresh token, client secret, key) in {} bytes of trace output",
            granted.len(),
            output.len()
        ),
        &output,
        &canaries,
    );
}

const DC_AUTH_PW: &str = "canary-dcauth-6e0a";
const DC_PW: &str = "canary-dcpw-2f9b";
const DC_IDENTITY: &str = "canary-dcidtok-93c1";
const DC_WRONG_IDENTITY: &str = "canary-dcbadtok-0d7e";
const DC_HELPER: &str = "canary-dchelper-b81f";
const DC_HELPER_TOKEN: &str = "canary-dchelpertok-4a5c";

/// `docker_config`: `auth`, `password`, `identitytoken` values and a credential helper's Secret go
/// through check, once and tags at `RUST_LOG=trace`, with one refused identity token; none may
/// appear in the output, nor in `Debug` of the config, the source or the credential it yields.
#[tokio::test(flavor = "multi_thread")]
async fn docker_config_secrets_never_reach_any_output() {
    use base64::Engine;
    use regwatch::registry::auth::CredentialSource;
    use regwatch::registry::docker_config::DockerConfigSource;
    use std::os::unix::fs::PermissionsExt;
    use support::token_server::{Style, TokenServer};

    let tokens = TokenServer::start(
        &[
            ("dcauth", DC_AUTH_PW),
            ("dcpw", DC_PW),
            ("dchelper", DC_HELPER),
        ],
        Style::Docker,
    )
    .await;
    tokens.add_refresh_token(DC_IDENTITY, "dcpw");
    tokens.add_refresh_token(DC_HELPER_TOKEN, "dcpw");
    let registry = Registry::start(Auth::Token {
        realm: tokens.realm(),
        cert: tokens.cert_path.clone(),
    });
    registry.push("team/app", "v1").await;
    let host = &registry.host;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (name, user, secret) in [
        ("basic", "dchelper", DC_HELPER),
        ("token", "<token>", DC_HELPER_TOKEN),
    ] {
        let path = d.join(format!("docker-credential-canary{name}"));
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\ninput=$(cat)\nprintf '{{\"ServerURL\":\"%s\",\"Username\":\"{user}\",\"Secret\":\"{secret}\"}}' \"$input\"\n"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let files = [
        (
            "auth",
            format!(
                r#"{{"auths":{{"{host}":{{"auth":"{}"}}}}}}"#,
                b64(&format!("dcauth:{DC_AUTH_PW}"))
            ),
        ),
        (
            "userpass",
            format!(r#"{{"auths":{{"{host}":{{"username":"dcpw","password":"{DC_PW}"}}}}}}"#),
        ),
        (
            "identity",
            format!(r#"{{"auths":{{"{host}":{{"identitytoken":"{DC_IDENTITY}"}}}}}}"#),
        ),
        (
            "badidentity",
            format!(r#"{{"auths":{{"{host}":{{"identitytoken":"{DC_WRONG_IDENTITY}"}}}}}}"#),
        ),
        (
            "helper",
            format!(r#"{{"credHelpers":{{"{host}":"canarybasic"}}}}"#),
        ),
        ("helpertoken", r#"{"credsStore":"canarytoken"}"#.to_owned()),
    ];
    let mut body = String::new();
    for (name, json) in &files {
        let path = d.join(format!("{name}.json"));
        std::fs::write(&path, json).unwrap();
        body.push_str(&format!(
            "[[registry]]\nname = \"{name}\"\nkind = \"oci\"\nurl = \"{}\"\ninsecure = true\nrepositories = [\"team/app\"]\ndocker_config = \"{}\"\n\n",
            registry.url(),
            path.display()
        ));
    }
    let setup = Setup::new("first_run = \"emit\"\n", &body);
    let path = format!("{}:/usr/bin:/bin", d.display());
    let mut output = String::new();
    let mut run = |args: &[&str]| {
        let out = traced(&setup, args).env("PATH", &path).output().unwrap();
        record(out, &mut output)
    };
    assert_eq!(run(&["check"]), Some(1), "badidentity fails the check");
    assert_eq!(run(&["once"]), Some(1));
    for name in ["auth", "userpass", "identity", "helper", "helpertoken"] {
        assert_eq!(run(&["tags", name, "team/app"]), Some(0), "{output}");
    }
    assert!(output.contains("TRACE"), "trace logging was on");
    assert!(
        output.contains("ok (docker config: credHelper canarybasic)")
            && output.contains("ok (docker config: credsStore canarytoken)")
            && output.contains("ok (docker config: identity token)")
            && output.contains("invalid credentials (401/403)"),
        "every source was exercised: {output}"
    );

    // Debug of the config, of the source, and of the credential it yields.
    let config = regwatch::config::load(&setup.config).unwrap();
    output.push_str(&format!("{config:?}"));
    for (i, r) in config.registries.iter().enumerate() {
        let source = DockerConfigSource::for_registry(r).unwrap();
        output.push_str(&format!("{source:?}"));
        // The helpers are found through PATH; this process's PATH lacks them, so only the files'.
        if i < 4 {
            let credential = source.credential().await.unwrap();
            output.push_str(&format!("{credential:?}"));
        }
    }

    let canaries = [
        DC_AUTH_PW.to_owned(),
        DC_PW.into(),
        DC_IDENTITY.into(),
        DC_WRONG_IDENTITY.into(),
        DC_HELPER.into(),
        DC_HELPER_TOKEN.into(),
        b64(&format!("dcauth:{DC_AUTH_PW}")),
        basic_b64("dcpw", DC_PW),
        basic_b64("dchelper", DC_HELPER),
    ];
    assert_no_canary(
        &format!(
            "docker config secret canaries in {} bytes of trace output and Debug",
            output.len()
        ),
        &output,
        &canaries,
    );
}

/// The Azure sources' secrets (client secret, federated token, `IDENTITY_HEADER`) and what they
/// become (Entra access tokens, ACR refresh tokens) go through good and refused flows at
/// `RUST_LOG=trace`; none may appear in the output.
#[tokio::test(flavor = "multi_thread")]
async fn azure_identity_secrets_never_reach_any_output() {
    use support::azure::{AcrFront, Entra};
    const ENTRA_SECRET: &str = "canary-entra-secret-6a0d";
    const ENTRA_WRONG: &str = "canary-entra-wrong-93c1";
    let entra = Entra::start(ENTRA_SECRET).await;
    let front = AcrFront::start(&entra).await;
    front.registry.push("svc/api", "v1").await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("azure-identity-token");
    let federated = entra.federated_token(3600);
    std::fs::write(&token_file, &federated).unwrap();
    let entry = |name: &str, keys: &str| {
        format!(
            "[[registry]]\nname = \"{name}\"\nkind = \"acr\"\nurl = \"{}\"\ninsecure = true\nrepositories = [\"svc/api\"]\n{keys}\n",
            front.url()
        )
    };
    let keys = |secret: &str| {
        format!(
            "tenant_id = \"{}\"\nclient_id = \"{}\"\nclient_secret = \"{secret}\"\n",
            entra.tenant(),
            entra.client_id()
        )
    };
    let setup = Setup::new(
        "first_run = \"emit\"\n",
        &[
            entry("acr-secret", &keys(ENTRA_SECRET)),
            entry("acr-wrong", &keys(ENTRA_WRONG)),
            entry("acr-ambient", ""),
        ]
        .concat(),
    );
    let workload = [
        ("AZURE_CLIENT_ID", entra.client_id().to_owned()),
        ("AZURE_TENANT_ID", entra.tenant().to_owned()),
        (
            "AZURE_FEDERATED_TOKEN_FILE",
            token_file.display().to_string(),
        ),
        ("AZURE_AUTHORITY_HOST", entra.url.clone()),
    ];
    let managed = [
        ("AZURE_AUTHORITY_HOST", entra.url.clone()),
        ("IDENTITY_ENDPOINT", format!("{}/msi/token", entra.url)),
        ("IDENTITY_HEADER", entra.identity_header().to_owned()),
    ];
    let mut output = String::new();
    let mut run = |args: &[&str], env: &[(&str, String)]| {
        let mut c = traced(&setup, args);
        for k in [
            "AZURE_CLIENT_ID",
            "AZURE_TENANT_ID",
            "AZURE_FEDERATED_TOKEN_FILE",
            "AZURE_AUTHORITY_HOST",
            "IDENTITY_ENDPOINT",
            "IDENTITY_HEADER",
        ] {
            c.env_remove(k);
        }
        // A loopback IMDS that is not there: no request to the real link-local address.
        c.env(
            "AZURE_POD_IDENTITY_AUTHORITY_HOST",
            format!("http://127.0.0.1:{}", free_port()),
        );
        c.envs(env.iter().map(|(k, v)| (k, v)));
        record(c.output().unwrap(), &mut output)
    };
    assert_eq!(run(&["check"], &workload), Some(1), "acr-wrong fails");
    assert_eq!(run(&["once"], &workload), Some(1));
    assert_eq!(run(&["tags", "acr-ambient", "svc/api"], &workload), Some(0));
    assert_eq!(run(&["check"], &managed), Some(1));
    assert_eq!(
        run(&["once", "--dry-run", "--log-format", "json"], &managed),
        Some(1)
    );
    assert!(output.contains("TRACE"), "trace logging was on");
    for source in [
        "client secret",
        "workload identity",
        "managed identity (IDENTITY_ENDPOINT)",
    ] {
        assert!(
            output.contains(&format!("ok ({source})")),
            "{source} exercised"
        );
    }
    assert!(
        output.contains("invalid credentials (401/403)"),
        "refusal exercised"
    );
    assert!(
        output.contains("io.regwatch.tag.added"),
        "events were printed"
    );

    let mut canaries = vec![
        ENTRA_SECRET.to_owned(),
        ENTRA_WRONG.to_owned(),
        federated,
        entra.identity_header().to_owned(),
    ];
    let (access, refresh) = (entra.issued(), front.refresh_tokens());
    assert!(
        access.len() >= 3 && refresh.len() >= 3,
        "tokens were minted"
    );
    canaries.extend(access);
    canaries.extend(refresh);
    // A JWT's signature alone is as telling as the whole token.
    let signatures: Vec<String> = canaries
        .iter()
        .filter_map(|c| c.rsplit_once('.').map(|(_, s)| s.to_owned()))
        .collect();
    canaries.extend(signatures);
    assert_no_canary(
        &format!(
            "Azure secret canaries ({} values) in {} bytes of trace output",
            canaries.len(),
            output.len()
        ),
        &output,
        &canaries,
    );
}

/// The AWS identities of ECR at `RUST_LOG=trace`: the web identity token (good and forged), the
/// container authorization token (good and wrong), IMDSv2 session tokens, the session credentials
/// STS, the container endpoint and IMDS hand out (web identity, the role assumed on top, the
/// container's), and a static secret key under `role_arn`. Access key ids are identifiers, not
/// secrets, and are not checked.
#[tokio::test(flavor = "multi_thread")]
async fn aws_identity_secrets_never_reach_any_output() {
    use support::aws_endpoints::{ContainerEndpoint, InstanceMetadata, StsFront, WebIdentity};
    use support::moto::{ACCOUNT, Moto, put_image, run_without_ambient_aws};

    let moto = Moto::start();
    let setup_client = moto.ecr_setup_client().await;
    setup_client
        .create_repository()
        .repository_name("team/api")
        .send()
        .await
        .unwrap();
    put_image(&setup_client, "team/api", "v1").await;
    let read = &["ecr:DescribeRepositories", "ecr:DescribeImages"];
    let federated = serde_json::json!({ "Version": "2012-10-17", "Statement": [{ "Effect": "Allow",
        "Principal": { "Federated": format!("arn:aws:iam::{ACCOUNT}:oidc-provider/oidc.example/id/X") },
        "Action": "sts:AssumeRoleWithWebIdentity" }] });
    let pod_role = moto
        .role("pod", &federated, &["sts:AssumeRole", read[0], read[1]])
        .await;
    let hop_trust = serde_json::json!({ "Version": "2012-10-17", "Statement": [{ "Effect": "Allow",
        "Principal": { "AWS": [
            format!("arn:aws:sts::{ACCOUNT}:assumed-role/pod/canary-pod"),
            format!("arn:aws:iam::{ACCOUNT}:user/ci"),
            format!("arn:aws:iam::{ACCOUNT}:user/agent"),
        ] },
        "Action": "sts:AssumeRole" }] });
    let target = moto.role("target", &hop_trust, read).await;
    let ci = moto.user("ci", &["sts:AssumeRole"]).await;
    let agent = moto.user("agent", &["sts:AssumeRole"]).await;
    moto.enforce_auth(0).await;

    let web_token = format!(
        "eyJhbGciOiJSUzI1NiJ9.canary-webid-{:x}.sig",
        rand::random::<u64>()
    );
    let container_token = format!("canary-container-{:x}", rand::random::<u64>());
    let sts = StsFront::start(
        &moto,
        Some(WebIdentity {
            token: web_token.clone(),
            role_arn: pod_role.clone(),
            session_name: "canary-pod".into(),
        }),
    )
    .await;
    let container_keys = moto.assume_role(&agent, &target, "canary-container").await;
    let container = ContainerEndpoint::start(&container_token, container_keys.clone()).await;

    let entry = |name: &str, extra: &str| {
        format!(
            "[[registry]]\nname = \"{name}\"\nkind = \"ecr\"\nurl = \"https://{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com\"\nendpoint = \"{}\"\ninsecure = true\nrepositories = [\"team/*\"]\n{extra}\n",
            moto.url
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    let token_path = token_file.to_str().unwrap().to_owned();
    let irsa = Setup::new("first_run = \"emit\"\n", &entry("irsa", ""));
    let hop = Setup::new(
        "first_run = \"emit\"\n",
        &entry(
            "hop",
            &format!("role_arn = \"{target}\"\nexternal_id = \"ext-canary\"\n"),
        ),
    );
    let keyed = Setup::new(
        "first_run = \"emit\"\n",
        &entry(
            "keyed",
            &format!(
                "access_key_id = \"{}\"\nsecret_access_key = \"{}\"\nrole_arn = \"{target}\"\n",
                ci.id, ci.secret
            ),
        ),
    );
    let web_env = [
        ("AWS_WEB_IDENTITY_TOKEN_FILE", token_path.as_str()),
        ("AWS_ROLE_ARN", pod_role.as_str()),
        ("AWS_ROLE_SESSION_NAME", "canary-pod"),
        ("AWS_ENDPOINT_URL_STS", sts.url.as_str()),
    ];
    let wrong_container_token = "canary-container-wrong-6e1d";
    let mut output = String::new();
    let mut run = |setup: &Setup, args: &[&str], env: &[(&str, &str)]| {
        let (code, out, err) = run_without_ambient_aws(setup, args, env, "trace");
        output.push_str(&out);
        output.push_str(&err);
        code
    };
    std::fs::write(&token_file, &web_token).unwrap();
    for setup in [&irsa, &hop] {
        assert_eq!(run(setup, &["check"], &web_env), 0);
        assert_eq!(run(setup, &["once"], &web_env), 0);
    }
    assert_eq!(
        run(
            &keyed,
            &["check"],
            &[("AWS_ENDPOINT_URL_STS", sts.url.as_str())]
        ),
        0
    );
    assert_eq!(
        run(
            &keyed,
            &["once"],
            &[("AWS_ENDPOINT_URL_STS", sts.url.as_str())]
        ),
        0
    );
    std::fs::write(&token_file, "eyJhbGciOiJSUzI1NiJ9.canary-forged-0b7c.sig").unwrap();
    assert_eq!(run(&irsa, &["check"], &web_env), 1);
    for token in [container_token.as_str(), wrong_container_token] {
        std::fs::write(&token_file, token).unwrap();
        let env = [
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", container.url.as_str()),
            (
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                token_path.as_str(),
            ),
        ];
        let good = token == container_token;
        assert_eq!(run(&irsa, &["check"], &env), if good { 0 } else { 1 });
        assert_eq!(run(&irsa, &["once"], &env), if good { 0 } else { 1 });
    }
    let imds = InstanceMetadata::start("target", container_keys.clone()).await;
    let env = [
        ("AWS_EC2_METADATA_DISABLED", "false"),
        ("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url.as_str()),
    ];
    assert_eq!(run(&irsa, &["check"], &env), 0);
    assert_eq!(run(&irsa, &["once"], &env), 0);
    assert!(output.contains("TRACE"), "trace logging was on");
    assert!(
        output.contains("io.regwatch.tag.added"),
        "events were printed"
    );
    assert!(
        sts.granted() >= 4 && sts.refused() >= 1 && sts.relayed() >= 4,
        "both STS flows ran, and a forged token was refused"
    );
    assert!(container.served() >= 2 && container.refused() >= 1);

    let mut canaries = vec![
        web_token,
        "eyJhbGciOiJSUzI1NiJ9.canary-forged-0b7c.sig".into(),
        container_token,
        wrong_container_token.into(),
        container_keys.secret_access_key,
        container_keys.token,
        ci.secret,
    ];
    canaries.extend(imds.tokens());
    let issued = sts.issued_secrets();
    assert!(
        issued.len() >= 8,
        "session secrets of both hops were recorded"
    );
    canaries.extend(issued);
    assert_no_canary(
        &format!(
            "AWS identity canaries (web identity, container and IMDS tokens, session keys) in {} bytes of trace output",
            output.len()
        ),
        &output,
        &canaries,
    );
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

const NATIVE_PW: &str = "canary-native-pw-5e0a";

/// Registry-native listings: the password goes to ACR's token endpoint, to Harbor's API as Basic
/// and to the Hub's login as JSON, and the ACR tokens and Hub JWTs come back; with good and wrong
/// passwords (the wrong ones also through the Distribution fallback) at `RUST_LOG=trace`, none of
/// them may appear in any output.
#[tokio::test(flavor = "multi_thread")]
async fn native_listing_secrets_never_reach_any_output() {
    use support::native::{Native, Vendor, serve};
    let mut registries = String::new();
    let mut stands = Vec::new();
    for (vendor, kind, repo) in [
        (Vendor::Acr, "acr", "team/app"),
        (Vendor::Harbor, "harbor", "proj/app"),
        (Vendor::Hub, "dockerhub", "acme/app"),
    ] {
        let state = Native::new(vendor, "robot", NATIVE_PW);
        let host = serve(state.clone()).await;
        state.push(repo, "v1");
        let hub = if vendor == Vendor::Hub {
            format!(
                "hub_api_url = \"http://{}\"\n",
                state.hub_host.lock().unwrap()
            )
        } else {
            String::new()
        };
        for (name, pass) in [("good", NATIVE_PW), ("bad", WRONG_PW)] {
            registries.push_str(&format!(
                "[[registry]]\nname = \"{kind}-{name}\"\nkind = \"{kind}\"\nurl = \"http://{host}\"\n{hub}insecure = true\nusername = \"robot\"\npassword = \"{pass}\"\nrepositories = [\"{repo}\"]\n\n"
            ));
        }
        stands.push((state, kind, repo));
    }
    let setup = Setup::new("first_run = \"emit\"\n", &registries);
    let mut output = String::new();
    let mut run = |args: &[&str]| record(traced(&setup, args).output().unwrap(), &mut output);
    assert_eq!(run(&["once"]), Some(1), "the bad registries fail");
    for (_, kind, repo) in &stands {
        assert_eq!(run(&["tags", &format!("{kind}-good"), repo]), Some(0));
        assert_eq!(run(&["tags", &format!("{kind}-bad"), repo]), Some(1));
    }
    assert!(output.contains("TRACE"), "trace logging was on");
    assert!(
        output.contains("io.regwatch.tag.added"),
        "events were printed"
    );
    let mut canaries = vec![
        NATIVE_PW.to_owned(),
        WRONG_PW.to_owned(),
        basic_b64("robot", NATIVE_PW),
        basic_b64("robot", WRONG_PW),
    ];
    for (state, kind, _) in &stands {
        assert!(
            state
                .native_requests
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0,
            "{kind}: the native API was used"
        );
        let tokens = state.issued_tokens();
        assert!(
            *kind == "harbor" || !tokens.is_empty(),
            "{kind}: tokens were issued"
        );
        canaries.extend(tokens);
    }
    assert_no_canary(
        &format!(
            "native listings: secret canaries in {} bytes of trace output",
            output.len()
        ),
        &output,
        &canaries,
    );
}

/// An empty secret is no secret: every secret key, and `access_key_id`, that resolves to an empty
/// or whitespace-only string (`""`, `${VAR}` with VAR empty, an empty or whitespace-only file) is a
/// config error: exit 2, naming the key path and its line. Before, `webhook_token_file` holding a
/// newline loaded fine and `POST /hooks/<name>?token=` got 202.
#[test]
fn empty_secrets_are_config_errors_at_their_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let empty_files = [
        file("empty", ""),
        file("newline", "\n"),
        file("blank", " \t\r\n\n"),
    ];
    // Loopback URLs and a 1 s request timeout: a config that wrongly loads fails fast in `check`.
    let oci = "kind = \"oci\"\nurl = \"https://127.0.0.1:1\"\n";
    let ecr = "kind = \"ecr\"\nurl = \"https://127.0.0.1:1\"\nregion = \"eu-west-1\"\nregistry_id = \"123456789012\"\nendpoint = \"https://127.0.0.1:1\"\n";
    let gcr = "kind = \"gcr\"\nurl = \"https://127.0.0.1:1\"\nproject_id = \"p\"\n";
    let acr =
        "kind = \"acr\"\nurl = \"https://127.0.0.1:1\"\ntenant_id = \"t\"\nclient_id = \"c\"\n";
    // (kind keys, the secret's key, the key it needs beside it, whether it has a `_file` form)
    let keys = [
        (oci, "webhook_token", "", true),
        (oci, "password", "username = \"u\"\n", true),
        (
            ecr,
            "secret_access_key",
            "access_key_id = \"AKIAEXAMPLE\"\n",
            true,
        ),
        (
            ecr,
            "access_key_id",
            "secret_access_key = \"s3cr3t\"\n",
            false,
        ),
        (gcr, "json_key", "", true),
        (acr, "client_secret", "", true),
    ];
    let mut cases = Vec::new();
    for (kind, key, beside, has_file) in keys {
        for value in [
            "\"\"",
            "\"  \\t \"",
            "\"${REGWATCH_EMPTY}\"",
            "\"${REGWATCH_BLANK}\"",
        ] {
            cases.push((kind, key.to_owned(), beside, value.to_owned()));
        }
        if has_file {
            for f in &empty_files {
                cases.push((kind, format!("{key}_file"), beside, format!("\"{f}\"")));
            }
        }
    }
    for (kind, key, beside, value) in &cases {
        let setup = Setup::new(
            "",
            &format!(
                "[[registry]]\nname = \"r\"\n{kind}repositories = [\"team/app\"]\nrequest_timeout = \"1s\"\n{beside}{key} = {value}\n"
            ),
        );
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_regwatch"))
            .args(["check", "-c"])
            .arg(&setup.config)
            .env("REGWATCH_EMPTY", "")
            .env("REGWATCH_BLANK", " \n")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let text = std::fs::read_to_string(&setup.config).unwrap();
        let line = text
            .lines()
            .position(|l| l.starts_with(&format!("{key} =")))
            .unwrap()
            + 1;
        let what = format!("{key} = {value}");
        assert_eq!(out.status.code(), Some(2), "{what}: {stderr}");
        assert!(
            stderr.contains(&format!("`registry[0].{key}` (line {line})")),
            "{what}: the key path and line: {stderr}"
        );
        assert!(stderr.contains("empty"), "{what}: says why: {stderr}");
    }
    report(
        "empty or blank secrets (\"\", ${VAR}, empty files) refused at load with key and line",
        format!("{} of {} cases", cases.len(), cases.len()),
        "all, exit 2",
    );
}
