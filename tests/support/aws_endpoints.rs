//! Stand-ins for the two AWS identity endpoints moto does not cover, each verifying what it
//! receives and as dumb as the real one:
//! - [`StsFront`]: STS `AssumeRoleWithWebIdentity` (EKS IRSA). AWS: "Calling
//!   AssumeRoleWithWebIdentity does not require the use of AWS security credentials"; STS
//!   validates the web identity token itself. moto issues session credentials but neither checks
//!   the token nor accepts an unsigned call while auth is enforced. So this front checks the token,
//!   role ARN and session name, then lets moto answer that one call unauthenticated. Any other
//!   (signed) STS call is relayed to moto unchanged, with its Host, so moto verifies its signature.
//!   It records the session secrets moto hands out, for the canary test.
//! - [`ContainerEndpoint`]: the container credentials endpoint of ECS and EKS Pod Identity.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::moto::{Moto, xml_field};

/// What the front expects of an `AssumeRoleWithWebIdentity` call.
pub struct WebIdentity {
    pub token: String,
    pub role_arn: String,
    pub session_name: String,
}

struct Front {
    moto_url: String,
    expected: Option<WebIdentity>,
    client: reqwest::Client,
    relayed_forms: Mutex<Vec<HashMap<String, String>>>,
    granted: AtomicUsize,
    refused: AtomicUsize,
    relayed: AtomicUsize,
    issued_secrets: Mutex<Vec<String>>,
}

/// STS in front of moto (see the module doc).
pub struct StsFront {
    state: Arc<Front>,
    /// `http://127.0.0.1:PORT`, for `AWS_ENDPOINT_URL_STS`.
    pub url: String,
}

impl StsFront {
    /// Starts a front for `moto` that grants web identity to exactly `expected` (to none
    /// without it).
    pub async fn start(moto: &Moto, expected: Option<WebIdentity>) -> StsFront {
        let state = Arc::new(Front {
            moto_url: moto.url.clone(),
            expected,
            client: reqwest::Client::new(),
            relayed_forms: Mutex::new(Vec::new()),
            granted: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
            relayed: AtomicUsize::new(0),
            issued_secrets: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/", post(sts))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        StsFront { state, url }
    }

    /// Web identity calls granted (token, role and session name as expected).
    pub fn granted(&self) -> usize {
        self.state.granted.load(Ordering::Relaxed)
    }

    /// Web identity calls refused.
    pub fn refused(&self) -> usize {
        self.state.refused.load(Ordering::Relaxed)
    }

    /// Signed STS calls (AssumeRole) relayed to moto.
    pub fn relayed(&self) -> usize {
        self.state.relayed.load(Ordering::Relaxed)
    }

    /// The form of every signed call relayed (`Action`, `RoleArn`, `RoleSessionName`,
    /// `ExternalId`...).
    pub fn relayed_forms(&self) -> Vec<HashMap<String, String>> {
        self.state.relayed_forms.lock().unwrap().clone()
    }

    /// Every SecretAccessKey and SessionToken moto issued through this front.
    pub fn issued_secrets(&self) -> Vec<String> {
        self.state.issued_secrets.lock().unwrap().clone()
    }
}

/// STS's error body (query protocol).
fn sts_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = format!(
        "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error><RequestId>regwatch-test</RequestId></ErrorResponse>"
    );
    (status, [("content-type", "text/xml")], body).into_response()
}

async fn sts(State(front): State<Arc<Front>>, headers: HeaderMap, body: Bytes) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let action = form.get("Action").map(String::as_str);
    let mut forward = front
        .client
        .post(format!("{}/", front.moto_url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.clone());
    if action == Some("AssumeRoleWithWebIdentity") {
        let ok = front.expected.as_ref().is_some_and(|expected| {
            form.get("WebIdentityToken") == Some(&expected.token)
                && form.get("RoleArn") == Some(&expected.role_arn)
                && form.get("RoleSessionName") == Some(&expected.session_name)
        });
        if !ok {
            front.refused.fetch_add(1, Ordering::Relaxed);
            return sts_error(
                StatusCode::BAD_REQUEST,
                "InvalidIdentityToken",
                "The web identity token, role or session name is not the one expected",
            );
        }
        front.granted.fetch_add(1, Ordering::Relaxed);
        // moto routes an unsigned call by its Host, as the SDK would send it to AWS.
        forward = forward.header("host", "sts.us-east-1.amazonaws.com");
        moto_free_call(&front).await;
    } else {
        // Signed: relay with the headers the signature covers, so moto can verify it.
        for (name, value) in &headers {
            if name != "content-length" {
                forward = forward.header(name, value);
            }
        }
        front.relayed.fetch_add(1, Ordering::Relaxed);
        front.relayed_forms.lock().unwrap().push(form);
    }
    let answer = forward.send().await.unwrap();
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap();
    let text = answer.text().await.unwrap();
    if text.contains("<SecretAccessKey>") {
        let mut issued = front.issued_secrets.lock().unwrap();
        issued.push(xml_field(&text, "SecretAccessKey"));
        issued.push(xml_field(&text, "SessionToken"));
    }
    (status, [("content-type", "text/xml")], text).into_response()
}

/// Lets moto answer the next request without a signature; every later one is checked again.
async fn moto_free_call(front: &Front) {
    let response = front
        .client
        .post(format!("{}/moto-api/reset-auth", front.moto_url))
        .body("1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// Credentials the container endpoint hands out.
#[derive(Clone)]
pub struct SessionKeys {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub token: String,
    /// RFC 3339.
    pub expiration: String,
    pub role_arn: String,
}

const JSON: (&str, &str) = ("content-type", "application/json");

struct Container {
    token: String,
    keys: SessionKeys,
    served: AtomicUsize,
    refused: AtomicUsize,
}

/// The container credentials endpoint, as the ECS agent and the EKS Pod Identity agent serve it.
/// The SDK GETs `AWS_CONTAINER_CREDENTIALS_FULL_URI` with the token (from
/// `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`, else `AWS_CONTAINER_AUTHORIZATION_TOKEN`) as the
/// `Authorization` header value. AWS's ECS developer guide ("Task IAM role") gives the answer:
/// `{"AccessKeyId": "ACCESS_KEY_ID", "Expiration": "EXPIRATION_DATE", "RoleArn": "TASK_ROLE_ARN",
/// "SecretAccessKey": "SECRET_ACCESS_KEY", "Token": "SECURITY_TOKEN_STRING"}`; errors MAY carry
/// `{"code": ..., "message": ...}` (aws-config's ecs module doc). A wrong or missing token is refused.
pub struct ContainerEndpoint {
    state: Arc<Container>,
    /// The full URI, for `AWS_CONTAINER_CREDENTIALS_FULL_URI`.
    pub url: String,
}

impl ContainerEndpoint {
    /// Serves `keys` to requests that carry `token`.
    pub async fn start(token: &str, keys: SessionKeys) -> ContainerEndpoint {
        let state = Arc::new(Container {
            token: token.to_owned(),
            keys,
            served: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/v1/credentials", get(container_credentials))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/credentials", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        ContainerEndpoint { state, url }
    }

    /// Credentials handed out.
    pub fn served(&self) -> usize {
        self.state.served.load(Ordering::Relaxed)
    }

    /// Requests refused for a wrong or missing token.
    pub fn refused(&self) -> usize {
        self.state.refused.load(Ordering::Relaxed)
    }
}

async fn container_credentials(State(c): State<Arc<Container>>, headers: HeaderMap) -> Response {
    let presented = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if presented != c.token.as_str() {
        c.refused.fetch_add(1, Ordering::Relaxed);
        let body =
            serde_json::json!({ "code": "AccessDenied", "message": "invalid authorization token" });
        return (StatusCode::UNAUTHORIZED, [JSON], body.to_string()).into_response();
    }
    c.served.fetch_add(1, Ordering::Relaxed);
    let k = &c.keys;
    let body = serde_json::json!({
        "AccessKeyId": k.access_key_id,
        "SecretAccessKey": k.secret_access_key,
        "Token": k.token,
        "Expiration": k.expiration,
        "RoleArn": k.role_arn,
    });
    ([JSON], body.to_string()).into_response()
}

struct Metadata {
    role: String,
    keys: SessionKeys,
    tokens: Mutex<Vec<String>>,
    served: AtomicUsize,
    refused: AtomicUsize,
}

/// EC2's instance metadata service, IMDSv2 only, as the EC2 user guide gives it ("Use IMDSv2",
/// "Retrieve security credentials from instance metadata"):
/// - `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds` (1 to 21600) returns a
///   session token, with the lifetime in the same response header;
/// - `GET /latest/meta-data/iam/security-credentials/` with `X-aws-ec2-metadata-token` returns the
///   role name, and `GET .../<role name>` the role's credentials: `{"Code": "Success",
///   "LastUpdated": ..., "Type": "AWS-HMAC", "AccessKeyId": ..., "SecretAccessKey": ...,
///   "Token": ..., "Expiration": ...}`.
///
/// A GET without a token this server issued is refused with 401, as IMDSv2-only instances do.
pub struct InstanceMetadata {
    state: Arc<Metadata>,
    /// `http://127.0.0.1:PORT`, for `AWS_EC2_METADATA_SERVICE_ENDPOINT`.
    pub url: String,
}

impl InstanceMetadata {
    /// Serves `keys` as the credentials of the instance role `role`.
    pub async fn start(role: &str, keys: SessionKeys) -> InstanceMetadata {
        let state = Arc::new(Metadata {
            role: role.to_owned(),
            keys,
            tokens: Mutex::new(Vec::new()),
            served: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/latest/api/token", axum::routing::put(imds_token))
            .route(
                "/latest/meta-data/iam/security-credentials/",
                get(imds_role),
            )
            .route(
                "/latest/meta-data/iam/security-credentials/{role}",
                get(imds_credentials),
            )
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        InstanceMetadata { state, url }
    }

    /// Credentials handed out.
    pub fn served(&self) -> usize {
        self.state.served.load(Ordering::Relaxed)
    }

    /// GETs refused for a missing or unknown session token.
    pub fn refused(&self) -> usize {
        self.state.refused.load(Ordering::Relaxed)
    }

    /// The session tokens it issued.
    pub fn tokens(&self) -> Vec<String> {
        self.state.tokens.lock().unwrap().clone()
    }
}

async fn imds_token(State(m): State<Arc<Metadata>>, headers: HeaderMap) -> Response {
    let ttl = headers
        .get("x-aws-ec2-metadata-token-ttl-seconds")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok());
    if !ttl.is_some_and(|t| (1..=21600).contains(&t)) {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let token = format!("imds-session-{:x}", rand::random::<u128>());
    m.tokens.lock().unwrap().push(token.clone());
    // IMDS echoes the granted lifetime in the same header.
    let ttl = ttl.unwrap_or_default().to_string();
    ([("x-aws-ec2-metadata-token-ttl-seconds", ttl)], token).into_response()
}

fn imds_authorized(m: &Metadata, headers: &HeaderMap) -> bool {
    let ok = headers
        .get("x-aws-ec2-metadata-token")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| m.tokens.lock().unwrap().iter().any(|issued| issued == t));
    if !ok {
        m.refused.fetch_add(1, Ordering::Relaxed);
    }
    ok
}

async fn imds_role(State(m): State<Arc<Metadata>>, headers: HeaderMap) -> Response {
    if !imds_authorized(&m, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    m.role.clone().into_response()
}

async fn imds_credentials(
    State(m): State<Arc<Metadata>>,
    axum::extract::Path(role): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    if !imds_authorized(&m, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    if role != m.role {
        return StatusCode::NOT_FOUND.into_response();
    }
    m.served.fetch_add(1, Ordering::Relaxed);
    let k = &m.keys;
    let body = serde_json::json!({
        "Code": "Success",
        "LastUpdated": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "Type": "AWS-HMAC",
        "AccessKeyId": k.access_key_id,
        "SecretAccessKey": k.secret_access_key,
        "Token": k.token,
        "Expiration": k.expiration,
    });
    ([JSON], body.to_string()).into_response()
}
