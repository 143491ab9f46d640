//! moto's server mode as the AWS side of the ECR tests: ECR, STS and IAM in one process. With
//! auth enforced, moto verifies the SigV4 signature of every request against the access keys its
//! IAM knows, and checks the caller's IAM policies (and a role's trust policy on AssumeRole).

use std::time::Duration;

use aws_sdk_ecr::config::Credentials;

use super::aws_endpoints::SessionKeys;

/// The account moto serves.
pub const ACCOUNT: &str = "123456789012";

/// A running `moto_server`.
pub struct Moto {
    child: std::process::Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

/// An IAM user's access key, as `CreateAccessKey` returned it.
pub struct AccessKey {
    pub id: String,
    pub secret: String,
}

impl AccessKey {
    /// As SDK credentials.
    pub fn credentials(&self) -> Credentials {
        Credentials::new(&self.id, &self.secret, None, None, "test")
    }
}

impl Moto {
    /// Starts moto accepting any request, for setting up users, roles and images.
    pub fn start() -> Moto {
        Self::start_with_auth(false)
    }

    /// With `enforce_auth`, moto checks signatures against its own IAM, as AWS does.
    pub fn start_with_auth(enforce_auth: bool) -> Moto {
        let bin = super::require(
            "moto_server",
            "python3 -m venv target/venv && target/venv/bin/pip install 'moto[server]'",
        );
        let port = super::free_port();
        let mut command = std::process::Command::new(bin);
        if enforce_auth {
            command.env("INITIAL_NO_AUTH_ACTION_COUNT", "0");
        }
        let child = command
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start moto_server");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "moto_server did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// From now on moto authenticates and authorizes every request, except the next `free` ones
    /// (moto's `/moto-api/reset-auth`, which sets `INITIAL_NO_AUTH_ACTION_COUNT` and restarts its count).
    pub async fn enforce_auth(&self, free: u32) {
        // A raw body: moto parses it as a number, and a form content type would hide it.
        let response = reqwest::Client::new()
            .post(format!("{}/moto-api/reset-auth", self.url))
            .body(free.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "moto reset-auth");
    }

    /// One IAM query-API call (form POST), made while auth is not enforced; returns the XML.
    pub async fn iam(&self, params: &[(&str, &str)]) -> String {
        let mut form: Vec<(&str, &str)> = vec![("Version", "2010-05-08")];
        form.extend_from_slice(params);
        // moto routes a request by its signature's credential scope; unsigned, it would be S3.
        let response = reqwest::Client::new()
            .post(&self.url)
            .header(
                "authorization",
                "AWS4-HMAC-SHA256 Credential=setup/20260101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=0",
            )
            .form(&form)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        assert_eq!(status, 200, "IAM {params:?}: {body}");
        body
    }

    /// Creates an IAM user with an inline policy allowing `actions`, and an access key for it.
    pub async fn user(&self, name: &str, actions: &[&str]) -> AccessKey {
        self.iam(&[("Action", "CreateUser"), ("UserName", name)])
            .await;
        let policy = allow(actions);
        self.iam(&[
            ("Action", "PutUserPolicy"),
            ("UserName", name),
            ("PolicyName", "regwatch-test"),
            ("PolicyDocument", &policy),
        ])
        .await;
        let xml = self
            .iam(&[("Action", "CreateAccessKey"), ("UserName", name)])
            .await;
        AccessKey {
            id: xml_field(&xml, "AccessKeyId"),
            secret: xml_field(&xml, "SecretAccessKey"),
        }
    }

    /// Creates a role with this trust policy and an inline policy allowing `actions`; its ARN.
    pub async fn role(&self, name: &str, trust: &serde_json::Value, actions: &[&str]) -> String {
        let xml = self
            .iam(&[
                ("Action", "CreateRole"),
                ("RoleName", name),
                ("AssumeRolePolicyDocument", &trust.to_string()),
            ])
            .await;
        let policy = allow(actions);
        self.iam(&[
            ("Action", "PutRolePolicy"),
            ("RoleName", name),
            ("PolicyName", "regwatch-test"),
            ("PolicyDocument", &policy),
        ])
        .await;
        xml_field(&xml, "Arn")
    }

    /// Session credentials for `role_arn` from STS AssumeRole, signed with `key` (moto checks
    /// the signature, the key's policy and the role's trust policy once auth is enforced).
    pub async fn assume_role(&self, key: &AccessKey, role_arn: &str, session: &str) -> SessionKeys {
        use aws_sdk_ecr::config::ProvideCredentials;
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(key.credentials())
            .endpoint_url(&self.url)
            .load()
            .await;
        let credentials = aws_config::sts::AssumeRoleProvider::builder(role_arn)
            .session_name(session)
            .configure(&sdk)
            .build()
            .await
            .provide_credentials()
            .await
            .expect("AssumeRole");
        SessionKeys {
            access_key_id: credentials.access_key_id().to_owned(),
            secret_access_key: credentials.secret_access_key().to_owned(),
            token: credentials.session_token().unwrap().to_owned(),
            expiration: humantime::format_rfc3339_seconds(credentials.expiry().unwrap())
                .to_string(),
            role_arn: role_arn.to_owned(),
        }
    }

    /// An ECR client with moto's placeholder keys, for setup before auth is enforced.
    pub async fn ecr_setup_client(&self) -> aws_sdk_ecr::Client {
        ecr_client(
            &self.url,
            Credentials::new("testing", "testing", None, None, "test"),
        )
        .await
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An IAM policy document allowing `actions` on every resource.
fn allow(actions: &[&str]) -> String {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{ "Effect": "Allow", "Action": actions, "Resource": "*" }],
    })
    .to_string()
}

/// The text of the first `<field>` in an XML answer.
pub fn xml_field(xml: &str, field: &str) -> String {
    let open = format!("<{field}>");
    let start = xml
        .find(&open)
        .unwrap_or_else(|| panic!("no <{field}> in {xml}"))
        + open.len();
    let end = start + xml[start..].find("</").unwrap();
    xml[start..end].to_owned()
}

/// An ECR client for `endpoint` signing with `credentials`.
pub async fn ecr_client(endpoint: &str, credentials: Credentials) -> aws_sdk_ecr::Client {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(credentials)
        .endpoint_url(endpoint)
        .load()
        .await;
    aws_sdk_ecr::Client::new(&config)
}

/// Puts a small, unique image manifest as `repo:tag`; its digest.
pub async fn put_image(client: &aws_sdk_ecr::Client, repo: &str, tag: &str) -> String {
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": { "mediaType": "application/vnd.docker.container.image.v1+json", "size": 2, "digest": format!("sha256:{}", "0".repeat(64)) },
        "layers": [{ "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 3, "digest": format!("sha256:{:064x}", rand::random::<u128>()) }],
    });
    let out = client
        .put_image()
        .repository_name(repo)
        .image_tag(tag)
        .image_manifest(manifest.to_string())
        .send()
        .await
        .unwrap();
    out.image()
        .and_then(|i| i.image_id())
        .and_then(|i| i.image_digest())
        .unwrap()
        .to_owned()
}

/// regwatch with `args` on `setup`'s config in a clean AWS environment plus `env`: no inherited
/// AWS_* variables, no profile files, IMDS disabled (so nothing leaves loopback), and `RUST_LOG` =
/// `log`.
pub fn command_without_ambient_aws(
    setup: &super::Setup,
    args: &[&str],
    env: &[(&str, &str)],
    log: &str,
) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_regwatch"));
    command.args(args).arg("-c").arg(&setup.config);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("AWS_") {
            command.env_remove(name);
        }
    }
    let nowhere = setup.dir.path().join("no-such-file");
    command
        .env("HOME", setup.dir.path())
        .env("AWS_CONFIG_FILE", &nowhere)
        .env("AWS_SHARED_CREDENTIALS_FILE", &nowhere)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("RUST_LOG", log)
        .envs(env.iter().copied());
    command
}

/// Runs [`command_without_ambient_aws`] to the end: (exit code, stdout, stderr).
pub fn run_without_ambient_aws(
    setup: &super::Setup,
    args: &[&str],
    env: &[(&str, &str)],
    log: &str,
) -> (i32, String, String) {
    let mut command = command_without_ambient_aws(setup, args, env, log);
    let out = command.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
