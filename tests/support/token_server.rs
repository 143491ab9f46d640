//! The test suite's own token server, speaking the real protocols:
//! - the Docker token spec: it checks the Basic credentials it is sent and issues RS256 JWTs, with
//!   an `x5c` header and the `access` claim, which `docker-registry` (`auth: token`) verifies
//!   against the certificate this server generated;
//! - Google's OAuth2 `token_uri`: it verifies the JWT assertion signed by the test service
//!   account's key and returns an access token, which it then accepts as the password of
//!   `oauth2accesstoken` at the registry token endpoint (as GCR does);
//! - the Docker token spec's OAuth2 flow at the same realm: a POSTed `grant_type=refresh_token`
//!   form, with refresh tokens registered by the test (ACR's exchanged tokens, `identitytoken`s);
//! - Google's other identity peers (see [`Gcp`]): the refresh-token grant at the same `token_uri`,
//!   the GCE/GKE metadata server, and the IAM Credentials API's `generateAccessToken`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};

/// The `service` the registry is configured with.
pub const SERVICE: &str = "regwatch-test-registry";
/// The `issuer` the registry is configured with.
pub const ISSUER: &str = "regwatch-test-issuer";

/// How token responses look.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// `token` and `access_token` (Docker Hub).
    Docker,
    /// `access_token` only (ACR).
    AccessTokenOnly,
}

struct Inner {
    style: Style,
    signing_key: EncodingKey,
    cert_der_b64: String,
    users: HashMap<String, String>,
    /// The Google service account: (client email, public key PEM).
    google_account: Mutex<Option<(String, String)>>,
    base: Mutex<String>,
    registry_tokens: AtomicUsize,
    refused: AtomicUsize,
    google_grants: AtomicUsize,
    /// The `scope` claim of every Google assertion granted.
    google_scopes: Mutex<Vec<String>>,
    /// Refresh token → the user it stands for.
    refresh_tokens: Mutex<HashMap<String, String>>,
    /// Lifetime (`expires_in`, and the JWT's `exp`) of registry tokens, in seconds.
    token_lifetime: AtomicU64,
    /// Google access tokens and the peers that grant them.
    gcp: Gcp,
}

/// A running token server.
pub struct TokenServer {
    inner: Arc<Inner>,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The certificate `docker-registry` trusts (`rootcertbundle`).
    pub cert_path: PathBuf,
    _dir: tempfile::TempDir,
}

/// A freshly generated Google service-account key file, pointing at this server's `token_uri`.
pub struct ServiceAccount {
    /// The key JSON, as a user would paste it into `json_key`.
    pub json: String,
    /// Its path, for `json_key_file`.
    pub path: PathBuf,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn rsa_key() -> rcgen::KeyPair {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("RSA key generation")
}

impl TokenServer {
    /// Starts a server that knows `users` (name → password) and answers in `style`.
    pub async fn start(users: &[(&str, &str)], style: Style) -> TokenServer {
        let dir = tempfile::tempdir().unwrap();
        let key = rsa_key();
        let cert = rcgen::CertificateParams::new(vec!["regwatch-test-token-signer".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let cert_path = dir.path().join("token-signer.pem");
        std::fs::write(&cert_path, cert.pem()).unwrap();
        let inner = Arc::new(Inner {
            style,
            signing_key: EncodingKey::from_rsa_pem(key.serialize_pem().as_bytes()).unwrap(),
            cert_der_b64: BASE64.encode(cert.der()),
            users: users
                .iter()
                .map(|(u, p)| (u.to_string(), p.to_string()))
                .collect(),
            google_account: Mutex::new(None),
            base: Mutex::new(String::new()),
            registry_tokens: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
            google_grants: AtomicUsize::new(0),
            google_scopes: Mutex::new(Vec::new()),
            refresh_tokens: Mutex::new(HashMap::new()),
            token_lifetime: AtomicU64::new(300),
            gcp: Gcp::default(),
        });
        let app = Router::new()
            .route("/token", get(registry_token).post(refresh_token_grant))
            .route("/oauth2/token", post(google_token))
            .route(
                "/computeMetadata/v1/instance/service-accounts/default/token",
                get(metadata_token),
            )
            .route(
                "/v1/projects/-/serviceAccounts/{target}",
                post(generate_access_token),
            )
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        *inner.base.lock().unwrap() = url.clone();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        TokenServer {
            inner,
            url,
            cert_path,
            _dir: dir,
        }
    }

    /// The realm a registry should name.
    pub fn realm(&self) -> String {
        format!("{}/token", self.url)
    }

    /// Registry tokens issued so far.
    pub fn issued(&self) -> usize {
        self.inner.registry_tokens.load(Ordering::Relaxed)
    }

    /// Requests refused for bad credentials or assertions.
    pub fn refused(&self) -> usize {
        self.inner.refused.load(Ordering::Relaxed)
    }

    /// Google access tokens granted so far.
    pub fn google_grants(&self) -> usize {
        self.inner.google_grants.load(Ordering::Relaxed)
    }

    /// The OAuth2 scopes the service account asked for, one entry per grant.
    pub fn google_scopes(&self) -> Vec<String> {
        self.inner.google_scopes.lock().unwrap().clone()
    }

    /// Accepts `token` as an OAuth2 refresh token standing for `user` at the realm.
    pub fn add_refresh_token(&self, token: &str, user: &str) {
        self.inner
            .refresh_tokens
            .lock()
            .unwrap()
            .insert(token.to_owned(), user.to_owned());
    }

    /// Revokes a refresh token registered with `add_refresh_token`.
    pub fn remove_refresh_token(&self, token: &str) {
        self.inner.refresh_tokens.lock().unwrap().remove(token);
    }

    /// Makes registry tokens expire `seconds` after they are issued.
    pub fn set_token_lifetime(&self, seconds: u64) {
        self.inner.token_lifetime.store(seconds, Ordering::Relaxed);
    }

    /// Creates a service account whose key this server will accept, written under `dir`.
    pub fn service_account(&self, dir: &Path, project: &str) -> ServiceAccount {
        let key = rsa_key();
        let email = format!("regwatch@{project}.iam.gserviceaccount.com");
        *self.inner.google_account.lock().unwrap() = Some((email.clone(), key.public_key_pem()));
        let json = serde_json::json!({
            "type": "service_account",
            "project_id": project,
            "private_key_id": "test-key-1",
            "private_key": key.serialize_pem(),
            "client_email": email,
            "client_id": "1234567890",
            "auth_uri": format!("{}/oauth2/auth", self.url),
            "token_uri": format!("{}/oauth2/token", self.url),
        })
        .to_string();
        let path = dir.join("service-account.json");
        std::fs::write(&path, &json).unwrap();
        ServiceAccount { json, path }
    }
}

fn unauthorized(inner: &Inner) -> Response {
    inner.refused.fetch_add(1, Ordering::Relaxed);
    (
        StatusCode::UNAUTHORIZED,
        "{\"errors\":[{\"code\":\"UNAUTHORIZED\"}]}",
    )
        .into_response()
}

async fn registry_token(
    State(inner): State<Arc<Inner>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let presented = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| BASE64.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.split_once(':').map(|(u, p)| (u.to_owned(), p.to_owned())));
    let Some((user, pass)) = presented else {
        return unauthorized(&inner);
    };
    let valid = if user == "oauth2accesstoken" {
        inner.gcp.accepts_at_realm(&pass)
    } else {
        inner.users.get(&user) == Some(&pass)
    };
    if !valid {
        return unauthorized(&inner);
    }
    let pairs: Vec<(String, String)> =
        url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    issue_registry_token(&inner, &user, &pairs)
}

/// The Docker token spec's OAuth2 flow (distribution.github.io/distribution/spec/auth/oauth/):
/// "POST /token" with `grant_type=refresh_token`, `service`, `client_id` (required),
/// `refresh_token` and `scope` form fields; answers `access_token` and `expires_in`.
async fn refresh_token_grant(State(inner): State<Arc<Inner>>, body: Bytes) -> Response {
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let field = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    if field("grant_type") != Some("refresh_token") || field("client_id").is_none() {
        return (StatusCode::BAD_REQUEST, "{\"error\":\"invalid_request\"}").into_response();
    }
    let user =
        field("refresh_token").and_then(|t| inner.refresh_tokens.lock().unwrap().get(t).cloned());
    let Some(user) = user else {
        return unauthorized(&inner);
    };
    issue_registry_token(&inner, &user, &pairs)
}

/// A JWT for `user` with the access the `scope` pairs ask for, signed as the registry expects.
fn issue_registry_token(inner: &Inner, user: &str, pairs: &[(String, String)]) -> Response {
    if pairs.iter().any(|(k, v)| k == "service" && v != SERVICE) {
        return (StatusCode::BAD_REQUEST, "unknown service").into_response();
    }
    // scope = type:name:actions, e.g. repository:team/app:pull or registry:catalog:*
    let access: Vec<serde_json::Value> = pairs
        .iter()
        .filter(|(k, _)| k == "scope")
        .filter_map(|(_, scope)| {
            let (kind, rest) = scope.split_once(':')?;
            let (name, actions) = rest.rsplit_once(':')?;
            Some(serde_json::json!({ "type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>() }))
        })
        .collect();
    let lifetime = inner.token_lifetime.load(Ordering::Relaxed);
    let mut header = Header::new(Algorithm::RS256);
    header.typ = Some("JWT".into());
    header.x5c = Some(vec![inner.cert_der_b64.clone()]);
    let claims = serde_json::json!({
        "iss": ISSUER,
        "sub": user,
        "aud": SERVICE,
        "exp": now() + lifetime,
        "nbf": now() - 10,
        "iat": now(),
        "jti": format!("{:x}", rand::random::<u64>()),
        "access": access,
    });
    let jwt = jsonwebtoken::encode(&header, &claims, &inner.signing_key).unwrap();
    inner.registry_tokens.fetch_add(1, Ordering::Relaxed);
    let body = match inner.style {
        Style::Docker => {
            serde_json::json!({ "token": jwt, "access_token": jwt, "expires_in": lifetime })
        }
        Style::AccessTokenOnly => serde_json::json!({ "access_token": jwt }),
    };
    ([("content-type", "application/json")], body.to_string()).into_response()
}

async fn google_token(State(inner): State<Arc<Inner>>, body: Bytes) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    if form.get("grant_type").map(String::as_str) == Some("refresh_token") {
        return google_refresh_grant(&inner, &form);
    }
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        return (
            StatusCode::BAD_REQUEST,
            "{\"error\":\"unsupported_grant_type\"}",
        )
            .into_response();
    }
    let Some((email, public_pem)) = inner.google_account.lock().unwrap().clone() else {
        return unauthorized(&inner);
    };
    // yup-oauth2 pads its base64url segments, which Google accepts; so this server verifies the
    // signature over the segments as sent, and checks the claims itself.
    let audience = format!("{}/oauth2/token", inner.base.lock().unwrap());
    let verified = form.get("assertion").is_some_and(|assertion| {
        let Some((message, signature)) = assertion.rsplit_once('.') else {
            return false;
        };
        let key = DecodingKey::from_rsa_pem(public_pem.as_bytes()).unwrap();
        let signed = jsonwebtoken::crypto::verify(
            signature.trim_end_matches('='),
            message.as_bytes(),
            &key,
            Algorithm::RS256,
        )
        .unwrap_or(false);
        let claims: Option<serde_json::Value> = message
            .split('.')
            .nth(1)
            .and_then(|p| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(p.trim_end_matches('='))
                    .ok()
            })
            .and_then(|b| serde_json::from_slice(&b).ok());
        // Google grants whatever scopes the assertion asks for; the test checks which ones.
        let scope = claims
            .as_ref()
            .and_then(|c| c["scope"].as_str())
            .map(str::to_owned);
        let ok = signed
            && claims.is_some_and(|c| {
                c["iss"] == email.as_str()
                    && c["aud"] == audience.as_str()
                    && c["exp"].as_u64().is_some_and(|exp| exp > now())
            })
            && scope.is_some();
        if ok {
            inner.google_scopes.lock().unwrap().extend(scope);
        }
        ok
    });
    if !verified {
        inner.refused.fetch_add(1, Ordering::Relaxed);
        return (StatusCode::BAD_REQUEST, "{\"error\":\"invalid_grant\"}").into_response();
    }
    let token = format!("ya29.test-{:x}", rand::random::<u128>());
    let scope = inner.google_scopes.lock().unwrap().last().cloned();
    let lifetime = inner.gcp.grant(&token, &email, &scope.unwrap_or_default());
    inner.google_grants.fetch_add(1, Ordering::Relaxed);
    let body = serde_json::json!({ "access_token": token, "expires_in": lifetime, "token_type": "Bearer" });
    ([("content-type", "application/json")], body.to_string()).into_response()
}

/// Google's identity peers, as the regwatch test suite needs them. Every access token any of them
/// grants is recorded with its holder, scopes and expiry; the registry token realm accepts it as
/// the password of `oauth2accesstoken` only while it is unexpired (as GCR does).
#[derive(Default)]
pub struct Gcp {
    /// Access token → (principal, scopes, expiry in Unix milliseconds).
    tokens: Mutex<HashMap<String, (String, String, u128)>>,
    /// `expires_in` of every Google access token granted, in seconds; 0 means 3600.
    lifetime: AtomicU64,
    /// `authorized_user` credentials known: (client_id, client_secret, refresh_token, principal).
    users: Mutex<Vec<(String, String, String, String)>>,
    /// The service account the metadata server hands out; `None` answers 404, as GKE does for a
    /// Kubernetes service account bound to no Google one.
    metadata_account: Mutex<Option<String>>,
    /// IAM policy: (caller, target) pairs where the caller holds Service Account Token Creator.
    token_creators: Mutex<HashSet<(String, String)>>,
    /// Every request refused, with why.
    refusals: Mutex<Vec<String>>,
    /// Principals whose tokens the registry realm accepted, in order.
    realm_principals: Mutex<Vec<String>>,
    /// Granted through each peer: refresh grants, metadata tokens, impersonated tokens.
    refresh_grants: AtomicUsize,
    metadata_grants: AtomicUsize,
    iam_grants: AtomicUsize,
    /// Scopes asked of the metadata server and of generateAccessToken, one entry per request.
    metadata_scopes: Mutex<Vec<String>>,
    iam_scopes: Mutex<Vec<String>>,
    /// The `scope` of every refresh grant (empty when none was sent), one entry per request.
    refresh_scopes: Mutex<Vec<String>>,
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

impl Gcp {
    /// Records a new access token for `principal`; returns its `expires_in`.
    fn grant(&self, token: &str, principal: &str, scopes: &str) -> u64 {
        let lifetime = match self.lifetime.load(Ordering::Relaxed) {
            0 => 3600,
            n => n,
        };
        self.tokens.lock().unwrap().insert(
            token.to_owned(),
            (
                principal.to_owned(),
                scopes.to_owned(),
                now_ms() + u128::from(lifetime) * 1000,
            ),
        );
        lifetime
    }

    /// The (principal, scopes) of an unexpired token.
    fn holder(&self, token: &str) -> Option<(String, String)> {
        self.tokens
            .lock()
            .unwrap()
            .get(token)
            .filter(|(_, _, expiry)| *expiry > now_ms())
            .map(|(p, s, _)| (p.clone(), s.clone()))
    }

    fn refuse(&self, why: String) {
        self.refusals.lock().unwrap().push(why);
    }

    /// GCR accepts a token that can read Cloud Storage.
    fn accepts_at_realm(&self, token: &str) -> bool {
        match self.holder(token) {
            Some((principal, scopes))
                if scopes.split(' ').any(|s| {
                    s == "https://www.googleapis.com/auth/devstorage.read_only"
                        || s == "https://www.googleapis.com/auth/cloud-platform"
                }) =>
            {
                self.realm_principals.lock().unwrap().push(principal);
                true
            }
            Some(_) => {
                self.refuse("realm: token lacks a storage scope".into());
                false
            }
            None => {
                self.refuse("realm: unknown or expired Google token".into());
                false
            }
        }
    }
}

fn google_json(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// OAuth2's refresh-token grant (RFC 6749 §6) as Google's token endpoint takes it for
/// `authorized_user` credentials: `client_id`, `client_secret` and `refresh_token` must belong
/// together; a mismatch is `400 invalid_grant` (or `401 invalid_client` for a wrong secret).
fn google_refresh_grant(inner: &Inner, form: &HashMap<String, String>) -> Response {
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
    let users = inner.gcp.users.lock().unwrap().clone();
    let Some((_, secret, _, principal)) = users
        .iter()
        .find(|(id, _, token, _)| id == field("client_id") && token == field("refresh_token"))
    else {
        inner.refused.fetch_add(1, Ordering::Relaxed);
        inner
            .gcp
            .refuse("token_uri: unknown client_id/refresh_token".into());
        return google_json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({ "error": "invalid_grant" }),
        );
    };
    if secret != field("client_secret") {
        inner.refused.fetch_add(1, Ordering::Relaxed);
        inner.gcp.refuse("token_uri: wrong client_secret".into());
        return google_json(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({ "error": "invalid_client" }),
        );
    }
    // The grant must name its scope, and only scopes the user consented to (RFC 6749 §6: "MUST
    // NOT include any scope not originally granted", else `invalid_scope`). Google itself grants
    // every consented scope to a grant that names none: stricter here, so that a client asking
    // for more than it needs (a refresh grant without `scope`) is caught.
    let asked = field("scope");
    inner
        .gcp
        .refresh_scopes
        .lock()
        .unwrap()
        .push(asked.to_owned());
    if asked.is_empty() || !asked.split(' ').all(|s| USER_CONSENTED.contains(&s)) {
        inner.refused.fetch_add(1, Ordering::Relaxed);
        inner.gcp.refuse(format!(
            "token_uri: refresh grant scope {asked:?} is not a consented scope"
        ));
        return google_json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({ "error": "invalid_scope" }),
        );
    }
    let token = format!("ya29.user-{:x}", rand::random::<u128>());
    let lifetime = inner.gcp.grant(&token, principal, asked);
    inner.gcp.refresh_grants.fetch_add(1, Ordering::Relaxed);
    google_json(
        StatusCode::OK,
        serde_json::json!({ "access_token": token, "expires_in": lifetime, "token_type": "Bearer", "scope": asked }),
    )
}

/// The scopes a test user consented to at `gcloud auth application-default login`: the default
/// `cloud-platform`, and the registry's read-only storage scope.
const USER_CONSENTED: [&str; 2] = [
    "https://www.googleapis.com/auth/cloud-platform",
    "https://www.googleapis.com/auth/devstorage.read_only",
];

/// The metadata server's token endpoint
/// (cloud.google.com/compute/docs/access/authenticate-workloads): it refuses any request without
/// `Metadata-Flavor: Google` (403), takes the wanted scopes as `?scopes=a,b`, and answers
/// `{"access_token", "expires_in", "token_type"}`.
async fn metadata_token(
    State(inner): State<Arc<Inner>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    if headers.get("metadata-flavor").and_then(|v| v.to_str().ok()) != Some("Google") {
        inner.refused.fetch_add(1, Ordering::Relaxed);
        inner
            .gcp
            .refuse("metadata: no Metadata-Flavor: Google".into());
        return (
            StatusCode::FORBIDDEN,
            "Missing required header: Metadata-Flavor",
        )
            .into_response();
    }
    let Some(account) = inner.gcp.metadata_account.lock().unwrap().clone() else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    let scopes: Vec<String> = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .filter(|(k, _)| k == "scopes")
        .flat_map(|(_, v)| v.split(',').map(str::to_owned).collect::<Vec<_>>())
        .collect();
    let scopes = scopes.join(" ");
    inner
        .gcp
        .metadata_scopes
        .lock()
        .unwrap()
        .push(scopes.clone());
    let token = format!("ya29.gce-{:x}", rand::random::<u128>());
    let lifetime = inner.gcp.grant(&token, &account, &scopes);
    inner.gcp.metadata_grants.fetch_add(1, Ordering::Relaxed);
    google_json(
        StatusCode::OK,
        serde_json::json!({ "access_token": token, "expires_in": lifetime, "token_type": "Bearer" }),
    )
}

/// The IAM Credentials API's `generateAccessToken`
/// (cloud.google.com/iam/docs/reference/credentials/rest/v1/projects.serviceAccounts/generateAccessToken):
/// `POST /v1/projects/-/serviceAccounts/{email}:generateAccessToken`, Bearer token of the caller
/// (which needs the cloud-platform scope and Token Creator on the target), body
/// `{"scope": [..] (at least one), "lifetime": "Ns", "delegates": [..]}`; answers
/// `{"accessToken", "expireTime"}` with `expireTime` in RFC 3339.
async fn generate_access_token(
    State(inner): State<Arc<Inner>>,
    axum::extract::Path(target): axum::extract::Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let gcp = &inner.gcp;
    let error = |status: StatusCode, why: &str| {
        inner.refused.fetch_add(1, Ordering::Relaxed);
        gcp.refuse(format!("iam: {why}"));
        google_json(
            status,
            serde_json::json!({ "error": { "code": status.as_u16(), "message": why } }),
        )
    };
    let Some(email) = target.strip_suffix(":generateAccessToken") else {
        return error(StatusCode::NOT_FOUND, "unknown method");
    };
    let caller = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|t| gcp.holder(t));
    let Some((caller, caller_scopes)) = caller else {
        return error(StatusCode::UNAUTHORIZED, "invalid or expired caller token");
    };
    if !caller_scopes
        .split(' ')
        .any(|s| s == "https://www.googleapis.com/auth/cloud-platform")
    {
        return error(StatusCode::FORBIDDEN, "ACCESS_TOKEN_SCOPE_INSUFFICIENT");
    }
    if !gcp
        .token_creators
        .lock()
        .unwrap()
        .contains(&(caller.clone(), email.to_owned()))
    {
        return error(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED: iam.serviceAccounts.getAccessToken",
        );
    }
    let request: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
    let scopes: Option<Vec<String>> = request.as_ref().and_then(|r| {
        r["scope"].as_array().map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
    });
    let lifetime_ok = request.as_ref().is_some_and(|r| {
        r.get("lifetime").is_none_or(|l| {
            l.as_str()
                .and_then(|l| l.strip_suffix('s'))
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| (1..=3600).contains(&n))
        })
    });
    let Some(scopes) = scopes.filter(|s| !s.is_empty()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "scope: at least one value required",
        );
    };
    if !lifetime_ok {
        return error(StatusCode::BAD_REQUEST, "lifetime must be 1s..3600s");
    }
    let scopes = scopes.join(" ");
    gcp.iam_scopes.lock().unwrap().push(scopes.clone());
    let token = format!("ya29.impersonated-{:x}", rand::random::<u128>());
    let lifetime = gcp.grant(&token, email, &scopes);
    gcp.iam_grants.fetch_add(1, Ordering::Relaxed);
    let expire = humantime::format_rfc3339_seconds(
        SystemTime::now() + std::time::Duration::from_secs(lifetime),
    );
    google_json(
        StatusCode::OK,
        serde_json::json!({ "accessToken": token, "expireTime": expire.to_string() }),
    )
}

impl TokenServer {
    /// Google's peers at this server: refresh grants, the metadata server, the IAM API.
    pub fn gcp(&self) -> &Gcp {
        &self.inner.gcp
    }

    /// `host:port`, for `GCE_METADATA_HOST`.
    pub fn host(&self) -> &str {
        self.url.trim_start_matches("http://")
    }
}

impl Gcp {
    /// Makes every Google access token granted from now on expire after `seconds`.
    pub fn set_lifetime(&self, seconds: u64) {
        self.lifetime.store(seconds, Ordering::Relaxed);
    }

    /// Registers `authorized_user` credentials standing for `principal`.
    pub fn add_user(
        &self,
        client_id: &str,
        client_secret: &str,
        refresh_token: &str,
        principal: &str,
    ) {
        self.users.lock().unwrap().push((
            client_id.into(),
            client_secret.into(),
            refresh_token.into(),
            principal.into(),
        ));
    }

    /// Makes the metadata server hand out tokens for `account`.
    pub fn set_metadata_account(&self, account: &str) {
        *self.metadata_account.lock().unwrap() = Some(account.into());
    }

    /// Grants `caller` Service Account Token Creator on `target`.
    pub fn allow_impersonation(&self, caller: &str, target: &str) {
        self.token_creators
            .lock()
            .unwrap()
            .insert((caller.into(), target.into()));
    }

    /// Why requests were refused, in order.
    pub fn refusals(&self) -> Vec<String> {
        self.refusals.lock().unwrap().clone()
    }

    /// The principals whose tokens the registry realm accepted.
    pub fn realm_principals(&self) -> Vec<String> {
        self.realm_principals.lock().unwrap().clone()
    }

    /// (refresh grants, metadata tokens, impersonated tokens) granted so far.
    pub fn grants(&self) -> (usize, usize, usize) {
        (
            self.refresh_grants.load(Ordering::Relaxed),
            self.metadata_grants.load(Ordering::Relaxed),
            self.iam_grants.load(Ordering::Relaxed),
        )
    }

    /// Scopes asked of the metadata server, one entry per request.
    pub fn metadata_scopes(&self) -> Vec<String> {
        self.metadata_scopes.lock().unwrap().clone()
    }

    /// Scopes asked of generateAccessToken, one entry per request.
    pub fn iam_scopes(&self) -> Vec<String> {
        self.iam_scopes.lock().unwrap().clone()
    }

    /// Scopes asked by refresh grants (`authorized_user`), one entry per request.
    pub fn refresh_scopes(&self) -> Vec<String> {
        self.refresh_scopes.lock().unwrap().clone()
    }

    /// Every access token granted so far (for the secret canary).
    pub fn granted_tokens(&self) -> Vec<String> {
        self.tokens.lock().unwrap().keys().cloned().collect()
    }
}
