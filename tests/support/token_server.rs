//! The test suite's own token server, speaking the real protocols:
//! - the Docker token spec: it checks the Basic credentials it is sent and issues RS256 JWTs, with
//!   an `x5c` header and the `access` claim, which `docker-registry` (`auth: token`) verifies
//!   against the certificate this server generated;
//! - Google's OAuth2 `token_uri`: it verifies the JWT assertion signed by the test service
//!   account's key and returns an access token, which it then accepts as the password of
//!   `oauth2accesstoken` at the registry token endpoint (as GCR does);
//! - the Docker token spec's OAuth2 flow at the same realm: a POSTed `grant_type=refresh_token`
//!   form, with refresh tokens registered by the test (ACR's exchanged tokens, `identitytoken`s).

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
    google_tokens: Mutex<HashSet<String>>,
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
            google_tokens: Mutex::new(HashSet::new()),
            base: Mutex::new(String::new()),
            registry_tokens: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
            google_grants: AtomicUsize::new(0),
            google_scopes: Mutex::new(Vec::new()),
            refresh_tokens: Mutex::new(HashMap::new()),
            token_lifetime: AtomicU64::new(300),
        });
        let app = Router::new()
            .route("/token", get(registry_token).post(refresh_token_grant))
            .route("/oauth2/token", post(google_token))
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
        inner.google_tokens.lock().unwrap().contains(&pass)
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
    inner.google_tokens.lock().unwrap().insert(token.clone());
    inner.google_grants.fetch_add(1, Ordering::Relaxed);
    let body =
        serde_json::json!({ "access_token": token, "expires_in": 3600, "token_type": "Bearer" });
    ([("content-type", "application/json")], body.to_string()).into_response()
}
