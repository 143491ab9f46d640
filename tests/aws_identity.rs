//! ECR without static secrets, as EKS and ECS provide identities, against moto with auth
//! enforced: moto verifies the SigV4 signature of every ECR and STS call against the keys its IAM
//! knows, and checks the caller's policies (and, on AssumeRole, the role's trust policy with its
//! `sts:ExternalId` condition). The IAM user that owns the images cannot read ECR itself where a
//! role is meant to, so a passing listing proves the role's credentials signed it.
//! - EKS IRSA: `AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN` + `AWS_ROLE_SESSION_NAME`, with STS
//!   reached through `AWS_ENDPOINT_URL_STS`, which the SDK's chain honours for its own STS client;
//! - EKS Pod Identity / ECS: `AWS_CONTAINER_CREDENTIALS_FULL_URI` with
//!   `AWS_CONTAINER_AUTHORIZATION_TOKEN` or `_TOKEN_FILE`;
//! - `role_arn` (+ `external_id`, `session_name`) on top of static keys, and on top of IRSA.
//!
//! Each runs `regwatch check` (which names the source) and `regwatch once` (baseline, then the
//! pushed tag as an event). The regwatch child gets a clean AWS environment: no profile files, no
//! inherited AWS_* variables, and IMDS disabled, so nothing can leave loopback.

mod support;

use support::aws_endpoints::{ContainerEndpoint, StsFront, WebIdentity};
use support::moto::{
    ACCOUNT, AccessKey, Moto, command_without_ambient_aws, ecr_client, put_image,
    run_without_ambient_aws,
};
use support::{Setup, json_lines, report};

const ECR_READ: &[&str] = &["ecr:DescribeRepositories", "ecr:DescribeImages"];

/// moto with two repositories and an image, the user that pushes, and auth not yet enforced.
struct Account {
    moto: Moto,
    pusher: AccessKey,
}

impl Account {
    async fn new() -> Account {
        let moto = Moto::start();
        let setup = moto.ecr_setup_client().await;
        for repo in ["team/api", "team/web"] {
            setup
                .create_repository()
                .repository_name(repo)
                .send()
                .await
                .unwrap();
        }
        put_image(&setup, "team/api", "v1").await;
        let pusher = moto.user("pusher", &["ecr:*"]).await;
        Account { moto, pusher }
    }

    /// Pushes `team/api:tag` signed by the pusher's keys; the digest.
    async fn push(&self, tag: &str) -> String {
        let client = ecr_client(&self.moto.url, self.pusher.credentials()).await;
        put_image(&client, "team/api", tag).await
    }
}

/// A config watching `team/*` of moto's ECR, with `extra` keys.
fn config(moto: &Moto, extra: &str) -> Setup {
    Setup::new(
        "",
        &format!(
            "[[registry]]\nname = \"ecr\"\nkind = \"ecr\"\nurl = \"https://{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com\"\nendpoint = \"{}\"\ninsecure = true\nrepositories = [\"team/*\"]\n{extra}",
            moto.url
        ),
    )
}

/// Runs regwatch with a clean AWS environment plus `env`: (exit code, stdout, stderr).
fn regwatch(setup: &Setup, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    run_without_ambient_aws(setup, args, env, "regwatch=debug")
}

/// `check` says `ok (<source>)`; `once` baselines, then reports the tag pushed in between.
async fn check_and_watch(account: &Account, setup: &Setup, env: &[(&str, &str)], source: &str) {
    let (code, out, err) = regwatch(setup, &["check"], env);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.trim_end().ends_with(&format!("ok ({source})")),
        "check names the source: {out}"
    );
    let (code, out, err) = regwatch(setup, &["once"], env);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    let tag = format!("v{}", rand::random::<u32>());
    let digest = account.push(&tag).await;
    let (code, out, err) = regwatch(setup, &["once"], env);
    assert_eq!(code, 0, "{err}");
    let events = json_lines(&out);
    assert_eq!(events.len(), 1, "{out}");
    assert_eq!(events[0]["data"]["kind"], "ecr");
    assert_eq!(events[0]["data"]["repository"], "team/api");
    assert_eq!(events[0]["data"]["tag"], tag.as_str());
    assert_eq!(events[0]["data"]["digest"], digest.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn ecr_through_eks_irsa_web_identity() {
    let account = Account::new().await;
    let moto = &account.moto;
    let trust = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": { "Federated": format!("arn:aws:iam::{ACCOUNT}:oidc-provider/oidc.eks.us-east-1.amazonaws.com/id/TEST") },
            "Action": "sts:AssumeRoleWithWebIdentity",
        }],
    });
    let role = moto.role("irsa-reader", &trust, ECR_READ).await;
    moto.enforce_auth(0).await;

    let token = format!("eyJhbGciOiJSUzI1NiJ9.irsa-{:x}.sig", rand::random::<u64>());
    let sts = StsFront::start(
        moto,
        Some(WebIdentity {
            token: token.clone(),
            role_arn: role.clone(),
            session_name: "regwatch-pod".into(),
        }),
    )
    .await;
    let setup = config(moto, "");
    // Where EKS mounts the projected service-account token.
    let token_file = setup
        .dir
        .path()
        .join("eks.amazonaws.com/serviceaccount/token");
    std::fs::create_dir_all(token_file.parent().unwrap()).unwrap();
    std::fs::write(&token_file, &token).unwrap();
    let token_path = token_file.to_str().unwrap();
    let env = [
        ("AWS_WEB_IDENTITY_TOKEN_FILE", token_path),
        ("AWS_ROLE_ARN", role.as_str()),
        ("AWS_ROLE_SESSION_NAME", "regwatch-pod"),
        ("AWS_ENDPOINT_URL_STS", sts.url.as_str()),
    ];
    check_and_watch(&account, &setup, &env, "web identity (IRSA)").await;
    assert!(sts.granted() >= 3, "each run exchanged the token at STS");
    assert_eq!(sts.refused(), 0);
    report(
        "ECR via IRSA web identity: runs / token exchanges granted",
        format!("3 / {}", sts.granted()),
        "3 / >=3",
    );

    // A token STS does not accept: a refusal of the credentials.
    std::fs::write(&token_file, "eyJhbGciOiJSUzI1NiJ9.forged.sig").unwrap();
    let (code, out, _) = regwatch(&setup, &["check"], &env);
    assert_eq!(code, 1);
    assert!(out.contains("invalid credentials (401/403)"), "{out}");
    assert!(sts.refused() >= 1);

    // No token mounted: the source fails, and check says why.
    std::fs::remove_file(&token_file).unwrap();
    let (code, out, _) = regwatch(&setup, &["check"], &env);
    assert_eq!(code, 1);
    assert!(
        out.contains(&format!(
            "no credentials: web identity token file not found ({token_path})"
        )),
        "{out}"
    );

    // No source at all (IMDS disabled, as off EC2).
    let (code, out, _) = regwatch(&setup, &["check"], &[]);
    assert_eq!(code, 1);
    assert!(
        out.contains("no credentials: none found in the AWS default chain"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ecr_through_the_container_credentials_endpoint() {
    let account = Account::new().await;
    let moto = &account.moto;
    // The agent's own identity, from which it assumes the pod's role (as the Pod Identity agent
    // does through eks-auth, and the ECS agent for a task role).
    let agent = moto.user("agent", &["sts:AssumeRole"]).await;
    let trust = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": { "AWS": format!("arn:aws:iam::{ACCOUNT}:user/agent") },
            "Action": "sts:AssumeRole",
        }],
    });
    let role = moto.role("pod-role", &trust, ECR_READ).await;
    moto.enforce_auth(0).await;
    let keys = moto.assume_role(&agent, &role, "pod-identity").await;

    let token = format!("pod-identity-token-{:x}", rand::random::<u64>());
    let endpoint = ContainerEndpoint::start(&token, keys).await;
    let setup = config(moto, "");
    let with_token = [
        ("AWS_CONTAINER_CREDENTIALS_FULL_URI", endpoint.url.as_str()),
        ("AWS_CONTAINER_AUTHORIZATION_TOKEN", token.as_str()),
    ];
    check_and_watch(&account, &setup, &with_token, "container credentials").await;
    let by_value = endpoint.served();
    assert!(by_value >= 3, "each run fetched credentials ({by_value})");

    // As EKS Pod Identity injects it: the token in a file, which wins over the variable.
    let token_file = setup.dir.path().join("eks-pod-identity-token");
    std::fs::write(&token_file, &token).unwrap();
    let token_path = token_file.to_str().unwrap();
    let pod_identity = [
        ("AWS_CONTAINER_CREDENTIALS_FULL_URI", endpoint.url.as_str()),
        ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", token_path),
        ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "not-this-one"),
    ];
    let second = config(moto, "");
    check_and_watch(&account, &second, &pod_identity, "container credentials").await;
    assert!(endpoint.served() >= by_value + 3);
    assert_eq!(endpoint.refused(), 0);
    report(
        "ECR via container credentials: fetches with a good token / refused",
        format!("{} / {}", endpoint.served(), endpoint.refused()),
        ">=6 / 0",
    );

    // A wrong token is refused by the endpoint; check says the source failed.
    std::fs::write(&token_file, "stale-token").unwrap();
    let (code, out, _) = regwatch(&second, &["check"], &pod_identity);
    assert_eq!(code, 1);
    assert!(
        out.contains(
            "no credentials: Non-success status from HTTP credential provider: StatusCode(401)"
        ),
        "{out}"
    );
    assert!(endpoint.refused() >= 1);

    // The agent down.
    let closed = format!("http://127.0.0.1:{}/v1/credentials", support::free_port());
    let (code, out, _) = regwatch(
        &second,
        &["check"],
        &[
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", &closed),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN", &token),
        ],
    );
    assert_eq!(code, 1);
    assert!(
        out.contains("no credentials: container credentials endpoint unreachable: "),
        "{out}"
    );

    std::fs::remove_file(&token_file).unwrap();
    let (code, out, _) = regwatch(&second, &["check"], &pod_identity);
    assert_eq!(code, 1);
    assert!(
        out.contains(&format!(
            "no credentials: container authorization token file not found ({token_path})"
        )),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ecr_through_an_assumed_role_with_an_external_id() {
    let account = Account::new().await;
    let moto = &account.moto;
    // The user may only assume the role: ECR answers the role's credentials, not the user's.
    let ci = moto.user("regwatch-ci", &["sts:AssumeRole"]).await;
    let trust = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": { "AWS": format!("arn:aws:iam::{ACCOUNT}:user/regwatch-ci") },
            "Action": "sts:AssumeRole",
            "Condition": { "StringEquals": { "sts:ExternalId": "ext-7f3a" } },
        }],
    });
    let role = moto.role("cross-account-reader", &trust, ECR_READ).await;
    moto.enforce_auth(0).await;

    let keys = format!(
        "access_key_id = \"{}\"\nsecret_access_key = \"{}\"\n",
        ci.id, ci.secret
    );
    // STS through the front, which relays the signed AssumeRole to moto as sent and keeps its form.
    let sts = StsFront::start(moto, None).await;
    let env = [("AWS_ENDPOINT_URL_STS", sts.url.as_str())];
    let setup = config(
        moto,
        &format!(
            "{keys}role_arn = \"{role}\"\nexternal_id = \"ext-7f3a\"\nsession_name = \"regwatch-test\"\n"
        ),
    );
    check_and_watch(
        &account,
        &setup,
        &env,
        &format!("assumed role {role} via static keys"),
    )
    .await;

    let forms = sts.relayed_forms();
    assert!(forms.len() >= 3, "one AssumeRole per run");
    for form in &forms {
        let field = |k: &str| form.get(k).map(String::as_str);
        assert_eq!(field("Action"), Some("AssumeRole"));
        assert_eq!(field("RoleArn"), Some(role.as_str()));
        assert_eq!(field("ExternalId"), Some("ext-7f3a"));
        assert_eq!(field("RoleSessionName"), Some("regwatch-test"));
    }

    // STS unreachable: no credentials, and why.
    let closed = format!("http://127.0.0.1:{}", support::free_port());
    let (code, out, _) = regwatch(&setup, &["check"], &[("AWS_ENDPOINT_URL_STS", &closed)]);
    assert_eq!(code, 1);
    assert!(out.contains("no credentials: STS unreachable: "), "{out}");

    // The same keys without the role: ECR refuses them.
    let (code, out, _) = regwatch(&config(moto, &keys), &["check"], &env);
    assert_eq!(code, 1);
    assert!(out.contains("invalid credentials (401/403)"), "{out}");

    // The trust policy's sts:ExternalId condition refuses a wrong external id.
    let wrong = config(
        moto,
        &format!("{keys}role_arn = \"{role}\"\nexternal_id = \"ext-wrong\"\n"),
    );
    let (code, out, _) = regwatch(&wrong, &["check"], &env);
    assert_eq!(code, 1);
    assert!(out.contains("invalid credentials (401/403)"), "{out}");
    report(
        "ECR role_arn: assumed with the right external_id / refused with a wrong one",
        "yes / yes",
        "yes / yes",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ecr_through_a_role_assumed_on_top_of_irsa() {
    let account = Account::new().await;
    let moto = &account.moto;
    let irsa_trust = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": { "Federated": format!("arn:aws:iam::{ACCOUNT}:oidc-provider/oidc.eks.us-east-1.amazonaws.com/id/TEST") },
            "Action": "sts:AssumeRoleWithWebIdentity",
        }],
    });
    // The pod's own role may only hop to the target role.
    let pod_role = moto
        .role("irsa-hop", &irsa_trust, &["sts:AssumeRole"])
        .await;
    let target_trust = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": { "AWS": format!("arn:aws:sts::{ACCOUNT}:assumed-role/irsa-hop/regwatch-pod") },
            "Action": "sts:AssumeRole",
        }],
    });
    let target = moto
        .role("other-team-reader", &target_trust, ECR_READ)
        .await;
    moto.enforce_auth(0).await;
    let token = format!("eyJhbGciOiJSUzI1NiJ9.hop-{:x}.sig", rand::random::<u64>());
    let sts = StsFront::start(
        moto,
        Some(WebIdentity {
            token: token.clone(),
            role_arn: pod_role.clone(),
            session_name: "regwatch-pod".into(),
        }),
    )
    .await;
    let setup = config(moto, &format!("role_arn = \"{target}\"\n"));
    let token_file = setup.dir.path().join("token");
    std::fs::write(&token_file, &token).unwrap();
    let env = [
        ("AWS_WEB_IDENTITY_TOKEN_FILE", token_file.to_str().unwrap()),
        ("AWS_ROLE_ARN", pod_role.as_str()),
        ("AWS_ROLE_SESSION_NAME", "regwatch-pod"),
        ("AWS_ENDPOINT_URL_STS", sts.url.as_str()),
    ];
    check_and_watch(
        &account,
        &setup,
        &env,
        &format!("assumed role {target} via web identity (IRSA)"),
    )
    .await;
    assert!(
        sts.granted() >= 3 && sts.relayed() >= 3,
        "both hops ran each time"
    );
    assert!(
        sts.relayed_forms()
            .iter()
            .all(|f| f.get("RoleSessionName").map(String::as_str) == Some("regwatch")),
        "session_name defaults to regwatch"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ecr_through_environment_profile_and_instance_metadata() {
    let account = Account::new().await;
    let moto = &account.moto;
    let reader = moto.user("reader", ECR_READ).await;
    let agent = moto.user("ec2", &["sts:AssumeRole"]).await;
    let trust = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": { "AWS": format!("arn:aws:iam::{ACCOUNT}:user/ec2") },
            "Action": "sts:AssumeRole",
        }],
    });
    let role = moto.role("instance-role", &trust, ECR_READ).await;
    moto.enforce_auth(0).await;

    let environment = config(moto, "");
    let env = [
        ("AWS_ACCESS_KEY_ID", reader.id.as_str()),
        ("AWS_SECRET_ACCESS_KEY", reader.secret.as_str()),
    ];
    check_and_watch(&account, &environment, &env, "environment").await;

    let profile = config(moto, "");
    let credentials = profile.dir.path().join("aws-credentials");
    std::fs::write(
        &credentials,
        format!(
            "[watcher]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            reader.id, reader.secret
        ),
    )
    .unwrap();
    let env = [
        ("AWS_SHARED_CREDENTIALS_FILE", credentials.to_str().unwrap()),
        ("AWS_PROFILE", "watcher"),
    ];
    check_and_watch(&account, &profile, &env, "profile").await;

    let keys = moto.assume_role(&agent, &role, "i-0123456789abcdef0").await;
    let imds = support::aws_endpoints::InstanceMetadata::start("instance-role", keys).await;
    let instance = config(moto, "");
    let env = [
        ("AWS_EC2_METADATA_DISABLED", "false"),
        ("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url.as_str()),
    ];
    check_and_watch(&account, &instance, &env, "instance metadata (IMDS)").await;
    assert!(imds.served() >= 3 && !imds.tokens().is_empty());
    assert_eq!(
        imds.refused(),
        0,
        "every GET carried an IMDSv2 session token"
    );
    report(
        "ECR via the default chain: environment / profile / IMDSv2 named by check",
        "yes / yes / yes",
        "yes / yes / yes",
    );
}

/// A container authorization token file that ends in a newline (written with `echo`, or a secret
/// mounted with one) is not a valid header value. aws-config then logs the token at WARN
/// (`invalid auth token`) and quotes it in its error, which the chain's own WARN prints: the
/// secret would reach the log at the default level. regwatch refuses such a token itself, saying
/// why without it.
#[tokio::test(flavor = "multi_thread")]
async fn ecr_container_token_that_is_no_header_value_is_never_printed() {
    let token = format!("pod-identity-token-{:x}", rand::random::<u64>());
    let keys = support::aws_endpoints::SessionKeys {
        access_key_id: "ASIAEXAMPLEEXAMPLE01".into(),
        secret_access_key: format!("session-secret-{:x}", rand::random::<u64>()),
        token: format!("session-token-{:x}", rand::random::<u64>()),
        expiration: "2100-01-01T00:00:00Z".into(),
        role_arn: format!("arn:aws:iam::{ACCOUNT}:role/pod"),
    };
    let endpoint = ContainerEndpoint::start(&token, keys).await;
    let setup = Setup::new(
        "",
        &format!(
            "[[registry]]\nname = \"ecr\"\nkind = \"ecr\"\nurl = \"https://{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com\"\nendpoint = \"http://127.0.0.1:{}\"\ninsecure = true\nrepositories = [\"team/*\"]\n",
            support::free_port()
        ),
    );
    let token_file = setup.dir.path().join("eks-pod-identity-token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let path = token_file.to_str().unwrap();
    let file_env = [
        ("AWS_CONTAINER_CREDENTIALS_FULL_URI", endpoint.url.as_str()),
        ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", path),
    ];
    let value = format!("{token}\r\n");
    let var_env = [
        ("AWS_CONTAINER_CREDENTIALS_FULL_URI", endpoint.url.as_str()),
        ("AWS_CONTAINER_AUTHORIZATION_TOKEN", value.as_str()),
    ];
    for (env, log) in [
        (&file_env, "info"),
        (&var_env, "info"),
        (&file_env, "trace"),
    ] {
        let (code, out, err) = run_without_ambient_aws(&setup, &["check"], env, log);
        assert_eq!(code, 1, "{out}{err}");
        assert!(
            out.contains(
                "no credentials: container authorization token is not a valid header value"
            ),
            "{out}"
        );
        let leaked = out.contains(&token) || err.contains(&token);
        report(
            &format!("ECR: container token with a stray newline, RUST_LOG={log}: token in output"),
            leaked,
            "false",
        );
        assert!(!leaked, "the token leaked:\n{out}\n{err}");
    }
}

/// An ECR endpoint that accepts connections and never answers (a stalled proxy, a black-holed
/// VPC endpoint): every call must end within the entry's `request_timeout`, as every other kind's
/// requests do. The SDK's defaults set only a connect timeout, so without one the scan (and
/// `check`) would wait forever.
#[tokio::test(flavor = "multi_thread")]
async fn ecr_call_to_a_silent_endpoint_ends_within_request_timeout() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // Accept and hold every connection, never writing a byte.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    let setup = Setup::new(
        "",
        &format!(
            "[[registry]]\nname = \"ecr\"\nkind = \"ecr\"\nurl = \"https://{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com\"\nendpoint = \"http://{addr}\"\ninsecure = true\nrequest_timeout = \"2s\"\nrepositories = [\"team/*\"]\naccess_key_id = \"AKIAEXAMPLEEXAMPLE01\"\nsecret_access_key = \"not-a-real-secret\"\n"
        ),
    );
    let mut command = command_without_ambient_aws(&setup, &["check"], &[], "info");
    command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let started = std::time::Instant::now();
    let mut child = command.spawn().unwrap();
    let limit = std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > limit {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let took = started.elapsed();
    report(
        "ECR: check against an endpoint that never answers (request_timeout 2s), seconds",
        format!("{:.1}", took.as_secs_f64()),
        "< 30 (ends, with retries)",
    );
    let status = status.unwrap_or_else(|| panic!("check still waiting after {limit:?}"));
    let out = std::io::read_to_string(child.stdout.take().unwrap()).unwrap();
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains("unreachable"), "{out}");
}
