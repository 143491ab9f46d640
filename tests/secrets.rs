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

/// The AWS identities of ECR at `RUST_LOG=trace`: the web identity token (good and forged), the
/// container authorization token (good and wrong), IMDSv2 session tokens, the session credentials
/// STS, the container endpoint and IMDS hand out (web identity, the role assumed on top, the
/// container's), and a static secret key under `role_arn`. Access key ids are identifiers, not secrets, and are not checked.
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
            "AWS identity canaries (web identity, container and IMDS tokens, session keys) in {} bytes of trace output",
            output.len()
        ),
        total,
        "0",
    );
    assert!(found.is_empty(), "secrets leaked: {found:?}");
}
