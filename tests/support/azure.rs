//! Azure stand-ins that verify what they receive, speaking the published protocols:
//! - [`Entra`]: the Microsoft identity platform token endpoint (client secret, federated assertion)
//!   and the two managed-identity endpoints (`IDENTITY_ENDPOINT` and IMDS);
//! - [`AcrFront`]: an ACR login server. ACR hosts `/oauth2/exchange` and `/oauth2/token` on the
//!   registry's own origin, so this front routes `/oauth2/*` to its exchange and to the suite's
//!   token server, and everything else to a real `docker-registry` with token auth.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

use super::token_server::{self, Style, TokenServer};
use super::{Auth, Registry};

/// The resource (application ID URI) of ACR: "Microsoft Entra tokens with the audience
/// https://containerregistry.azure.net" (learn.microsoft.com, container-registry-disable-
/// authentication-as-arm). The `.default` scope of the v2 endpoint names it.
pub const ACR_RESOURCE: &str = "https://containerregistry.azure.net";
/// The audience of a federated assertion: "api://AzureADTokenExchange" is the recommended
/// audience of a federated identity credential (learn.microsoft.com, workload identity
/// federation), and the one the AKS webhook's projected token carries.
pub const EXCHANGE_AUDIENCE: &str = "api://AzureADTokenExchange";
/// `client_assertion_type` for a JWT assertion (RFC 7523, quoted by the client credentials doc).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn rsa() -> (EncodingKey, DecodingKey) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("RSA key");
    (
        EncodingKey::from_rsa_pem(key.serialize_pem().as_bytes()).unwrap(),
        DecodingKey::from_rsa_pem(key.public_key_pem().as_bytes()).unwrap(),
    )
}

fn json(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [("content-type", "application/json; charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

fn form(body: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

/// Verifies an RS256 JWT's signature and `exp` (no leeway) and returns its claims.
fn verify(token: &str, key: &DecodingKey, audience: &str) -> Option<serde_json::Value> {
    let mut v = Validation::new(Algorithm::RS256);
    v.leeway = 0;
    v.set_audience(&[audience]);
    v.set_required_spec_claims(&["exp", "aud"]);
    jsonwebtoken::decode::<serde_json::Value>(token, key, &v)
        .ok()
        .map(|d| d.claims)
}

/// Counters of what the Entra stand-in granted and refused.
#[derive(Default)]
pub struct EntraCounts {
    pub client_secret: AtomicUsize,
    pub federated: AtomicUsize,
    pub identity_endpoint: AtomicUsize,
    pub imds: AtomicUsize,
    pub refused: AtomicUsize,
}

struct EntraInner {
    tenant: String,
    client_id: String,
    client_secret: String,
    /// The federated identity credential: the cluster's issuer, the subject, its public key.
    issuer: String,
    subject: String,
    cluster_public: DecodingKey,
    cluster_private: EncodingKey,
    /// Entra's own signing key for access tokens.
    signing: EncodingKey,
    /// `IDENTITY_HEADER`, the managed-identity endpoint's SSRF guard.
    identity_header: String,
    /// The user-assigned managed identity's client id.
    user_assigned: String,
    lifetime: AtomicU64,
    counts: EntraCounts,
    /// Every access token issued, for the secret canary.
    issued: Mutex<Vec<String>>,
}

/// The Microsoft identity platform and the managed-identity endpoints, on one loopback port.
pub struct Entra {
    inner: Arc<EntraInner>,
    /// `http://127.0.0.1:PORT`: the authority host (`AZURE_AUTHORITY_HOST`).
    pub url: String,
    /// Entra's public key: what ACR's exchange verifies access tokens with.
    pub verifying: DecodingKey,
}

impl Entra {
    /// Starts the endpoints for one tenant and one app registration with `client_secret`.
    pub async fn start(client_secret: &str) -> Entra {
        let (signing, verifying) = rsa();
        let (cluster_private, cluster_public) = rsa();
        let inner = Arc::new(EntraInner {
            tenant: "72f988bf-0000-4000-8000-00000000beef".into(),
            client_id: "5e29463d-71da-4fe0-8e69-999b57db23b0".into(),
            client_secret: client_secret.into(),
            issuer: "https://oidc.prod-aks.azure.com/regwatch-test/".into(),
            subject: "system:serviceaccount:regwatch:regwatch".into(),
            cluster_public,
            cluster_private,
            signing,
            identity_header: format!("853b9a84-{:x}", rand::random::<u64>()),
            user_assigned: "a1b2c3d4-0000-4000-8000-00000000cafe".into(),
            lifetime: AtomicU64::new(3599),
            counts: EntraCounts::default(),
            issued: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/{tenant}/oauth2/v2.0/token", axum::routing::post(v2_token))
            .route("/msi/token", axum::routing::get(identity_endpoint))
            .route("/metadata/identity/oauth2/token", axum::routing::get(imds))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Entra {
            inner,
            url,
            verifying,
        }
    }

    pub fn tenant(&self) -> &str {
        &self.inner.tenant
    }
    pub fn client_id(&self) -> &str {
        &self.inner.client_id
    }
    pub fn identity_header(&self) -> &str {
        &self.inner.identity_header
    }
    pub fn user_assigned(&self) -> &str {
        &self.inner.user_assigned
    }
    pub fn counts(&self) -> &EntraCounts {
        &self.inner.counts
    }
    /// Access tokens issued so far.
    pub fn issued(&self) -> Vec<String> {
        self.inner.issued.lock().unwrap().clone()
    }
    /// Makes access tokens expire `seconds` after they are issued.
    pub fn set_token_lifetime(&self, seconds: u64) {
        self.inner.lifetime.store(seconds, Ordering::Relaxed);
    }

    /// A projected service-account token, as the AKS webhook mounts it: signed by the cluster's
    /// issuer key that the federated credential trusts, expiring in `seconds`.
    pub fn federated_token(&self, seconds: u64) -> String {
        let claims = serde_json::json!({
            "aud": [EXCHANGE_AUDIENCE],
            "iss": self.inner.issuer,
            "sub": self.inner.subject,
            "iat": now(),
            "nbf": now() - 5,
            "exp": now() + seconds,
        });
        jsonwebtoken::encode(
            &Header::new(Algorithm::RS256),
            &claims,
            &self.inner.cluster_private,
        )
        .unwrap()
    }
}

fn access_token(inner: &EntraInner, app_id: &str) -> (String, u64) {
    let lifetime = inner.lifetime.load(Ordering::Relaxed);
    let claims = serde_json::json!({
        "aud": ACR_RESOURCE,
        "iss": format!("https://sts.windows.net/{}/", inner.tenant),
        "tid": inner.tenant,
        "appid": app_id,
        "oid": format!("oid-{app_id}"),
        "sub": format!("oid-{app_id}"),
        "iat": now(),
        "nbf": now() - 5,
        "exp": now() + lifetime,
        "jti": format!("{:x}", rand::random::<u128>()),
    });
    let token =
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &inner.signing).unwrap();
    inner.issued.lock().unwrap().push(token.clone());
    (token, lifetime)
}

fn entra_error(inner: &EntraInner, status: StatusCode, error: &str, description: &str) -> Response {
    inner.counts.refused.fetch_add(1, Ordering::Relaxed);
    json(
        status,
        serde_json::json!({ "error": error, "error_description": description, "error_codes": [] }),
    )
}

/// `POST /{tenant}/oauth2/v2.0/token`, per "Microsoft identity platform and the OAuth 2.0 client
/// credentials flow" (learn.microsoft.com/entra/identity-platform/v2-oauth2-client-creds-grant-flow):
/// form fields `client_id`, `scope` ("the resource identifier (application ID URI) of the resource
/// you want, affixed with the `.default` suffix"), `grant_type` ("Must be set to
/// `client_credentials`"), and either `client_secret` (first case) or `client_assertion_type` =
/// `urn:ietf:params:oauth:client-assertion-type:jwt-bearer` with `client_assertion` (third case:
/// "a JWT ... that your application gets from another identity provider ... like Kubernetes").
/// Success: `token_type`, `expires_in`, `access_token`. Errors: `error`, `error_description`.
async fn v2_token(
    State(inner): State<Arc<EntraInner>>,
    axum::extract::Path(tenant): axum::extract::Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("application/x-www-form-urlencoded") {
        return entra_error(
            &inner,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "form body expected",
        );
    }
    if tenant != inner.tenant {
        return entra_error(
            &inner,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "AADSTS90002: Tenant not found.",
        );
    }
    let f = form(&body);
    let field = |k: &str| f.get(k).map(String::as_str);
    if field("grant_type") != Some("client_credentials") {
        return entra_error(
            &inner,
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "",
        );
    }
    if field("scope") != Some(&format!("{ACR_RESOURCE}/.default")) {
        return entra_error(
            &inner,
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "AADSTS70011",
        );
    }
    if field("client_id") != Some(inner.client_id.as_str()) {
        return entra_error(
            &inner,
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            "AADSTS700016: Application not found in the directory.",
        );
    }
    let granted = match (field("client_secret"), field("client_assertion_type")) {
        (Some(secret), None) => {
            if secret != inner.client_secret {
                return entra_error(
                    &inner,
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    "AADSTS7000215: Invalid client secret provided.",
                );
            }
            &inner.counts.client_secret
        }
        (None, Some(JWT_BEARER)) => {
            let ok = field("client_assertion")
                .and_then(|a| verify(a, &inner.cluster_public, EXCHANGE_AUDIENCE))
                .is_some_and(|c| {
                    c["iss"] == inner.issuer.as_str() && c["sub"] == inner.subject.as_str()
                });
            if !ok {
                return entra_error(
                    &inner,
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    "AADSTS700211: No matching federated identity record found for presented assertion.",
                );
            }
            &inner.counts.federated
        }
        _ => {
            return entra_error(
                &inner,
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "AADSTS900144",
            );
        }
    };
    let (token, lifetime) = access_token(&inner, &inner.client_id);
    granted.fetch_add(1, Ordering::Relaxed);
    json(
        StatusCode::OK,
        serde_json::json!({ "token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime, "access_token": token }),
    )
}

/// Which identity a managed-identity request names: the system-assigned one, or the
/// user-assigned one by `client_id`. Anything else: "identity not found".
fn managed_identity(inner: &EntraInner, query: &HashMap<String, String>) -> Option<String> {
    match query.get("client_id") {
        None => Some("system-assigned".into()),
        Some(id) if *id == inner.user_assigned => Some(id.clone()),
        Some(_) => None,
    }
}

/// The `IDENTITY_ENDPOINT` flavour (App Service, Container Apps), per "REST endpoint reference"
/// (learn.microsoft.com/azure/container-apps/managed-identity): GET with query `resource`,
/// `api-version` ("Use 2019-08-01 or later"), optional `client_id`, and header
/// `X-IDENTITY-HEADER` ("The value of the IDENTITY_HEADER environment variable. This header
/// mitigates server-side request forgery (SSRF) attacks"). Answers `access_token`, `expires_on`
/// (epoch seconds, a string), `resource`, `token_type`, `client_id`.
async fn identity_endpoint(
    State(inner): State<Arc<EntraInner>>,
    axum::extract::Query(query): axum::extract::Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if headers
        .get("x-identity-header")
        .and_then(|v| v.to_str().ok())
        != Some(inner.identity_header.as_str())
    {
        return entra_error(
            &inner,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "X-IDENTITY-HEADER",
        );
    }
    if query.get("api-version").map(String::as_str) != Some("2019-08-01")
        || query.get("resource").map(String::as_str) != Some(ACR_RESOURCE)
    {
        return entra_error(
            &inner,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "api-version/resource",
        );
    }
    let Some(id) = managed_identity(&inner, &query) else {
        return entra_error(
            &inner,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Identity not found",
        );
    };
    let (token, lifetime) = access_token(&inner, &id);
    inner
        .counts
        .identity_endpoint
        .fetch_add(1, Ordering::Relaxed);
    json(
        StatusCode::OK,
        serde_json::json!({ "access_token": token, "expires_on": (now() + lifetime).to_string(), "resource": ACR_RESOURCE, "token_type": "Bearer", "client_id": id }),
    )
}

/// IMDS, per "How to use managed identities for Azure resources on an Azure VM to acquire an access
/// token" (learn.microsoft.com/entra/identity/managed-identities-azure-resources/how-to-use-vm-token):
/// `GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=...` with header
/// `Metadata: true` ("required ... as a mitigation against server side request forgery (SSRF)
/// attack"), optional `client_id` for a user-assigned identity. Answers `access_token`,
/// `expires_in` and `expires_on` (strings), `resource`, `token_type`. A missing header is a 400.
async fn imds(
    State(inner): State<Arc<EntraInner>>,
    axum::extract::Query(query): axum::extract::Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if headers.get("metadata").and_then(|v| v.to_str().ok()) != Some("true") {
        return entra_error(
            &inner,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Required metadata header not specified",
        );
    }
    if query.get("api-version").map(String::as_str) != Some("2018-02-01")
        || query.get("resource").map(String::as_str) != Some(ACR_RESOURCE)
    {
        return entra_error(
            &inner,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "api-version/resource",
        );
    }
    let Some(id) = managed_identity(&inner, &query) else {
        return entra_error(
            &inner,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Identity not found",
        );
    };
    let (token, lifetime) = access_token(&inner, &id);
    inner.counts.imds.fetch_add(1, Ordering::Relaxed);
    json(
        StatusCode::OK,
        serde_json::json!({ "access_token": token, "refresh_token": "", "expires_in": lifetime.to_string(), "expires_on": (now() + lifetime).to_string(), "not_before": now().to_string(), "resource": ACR_RESOURCE, "token_type": "Bearer" }),
    )
}

/// What the ACR front saw: method, path, status.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub status: u16,
}

struct FrontInner {
    host: String,
    tenant: String,
    entra: DecodingKey,
    signing: EncodingKey,
    verifying: DecodingKey,
    tokens: TokenServer,
    upstream: Mutex<String>,
    client: reqwest::Client,
    refresh_lifetime: AtomicU64,
    anonymous_pull: AtomicBool,
    exchanges: AtomicUsize,
    refresh_tokens: Mutex<Vec<String>>,
    /// Repositories the identity may not pull: 403 to any token, as ACR denies them.
    forbidden: Mutex<HashSet<String>>,
    log: Mutex<Vec<Seen>>,
}

/// An ACR login server: `/oauth2/exchange`, `/oauth2/token` and `/v2/` on one origin.
pub struct AcrFront {
    inner: Arc<FrontInner>,
    /// The real registry behind it (push through it).
    pub registry: Registry,
    /// `127.0.0.1:PORT`, the login server's host.
    pub host: String,
}

/// The user the token server knows for anonymous pull.
const ANONYMOUS: (&str, &str) = ("anonymous-pull", "anonymous-pull");

impl AcrFront {
    /// Starts a login server that accepts Entra tokens `entra` issued for ACR's resource.
    pub async fn start(entra: &Entra) -> AcrFront {
        let tokens = TokenServer::start(&[ANONYMOUS], Style::AccessTokenOnly).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        // ACR's challenge names the login server's own /oauth2/token as the realm.
        let registry = Registry::start(Auth::Token {
            realm: format!("http://{host}/oauth2/token"),
            cert: tokens.cert_path.clone(),
        });
        let (signing, verifying) = rsa();
        let inner = Arc::new(FrontInner {
            host: host.clone(),
            tenant: entra.tenant().to_owned(),
            entra: entra.verifying.clone(),
            signing,
            verifying,
            tokens,
            upstream: Mutex::new(registry.url()),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            refresh_lifetime: AtomicU64::new(3 * 3600),
            anonymous_pull: AtomicBool::new(false),
            exchanges: AtomicUsize::new(0),
            refresh_tokens: Mutex::new(Vec::new()),
            forbidden: Mutex::new(HashSet::new()),
            log: Mutex::new(Vec::new()),
        });
        let app = Router::new().fallback(front).with_state(inner.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        AcrFront {
            inner,
            registry,
            host,
        }
    }

    /// `http://127.0.0.1:PORT`, the login server as `url` names it.
    pub fn url(&self) -> String {
        format!("http://{}", self.host)
    }
    /// Exchanges granted.
    pub fn exchanges(&self) -> usize {
        self.inner.exchanges.load(Ordering::Relaxed)
    }
    /// ACR refresh tokens issued, for the secret canary.
    pub fn refresh_tokens(&self) -> Vec<String> {
        self.inner.refresh_tokens.lock().unwrap().clone()
    }
    /// Registry access tokens issued by the realm.
    pub fn access_tokens_issued(&self) -> usize {
        self.inner.tokens.issued()
    }
    /// Every request seen.
    pub fn log(&self) -> Vec<Seen> {
        self.inner.log.lock().unwrap().clone()
    }
    /// ACR refresh tokens and registry access tokens expire `seconds` after issue.
    pub fn set_token_lifetime(&self, seconds: u64) {
        self.inner
            .refresh_lifetime
            .store(seconds, Ordering::Relaxed);
        self.inner.tokens.set_token_lifetime(seconds);
    }
    /// Denies every token access to `repo` (403 `DENIED`), as ACR answers an identity whose role
    /// assignments or scope map leave that repository out.
    pub fn forbid(&self, repo: &str) {
        self.inner.forbidden.lock().unwrap().insert(repo.to_owned());
    }
    /// ACR's "anonymous pull access": the realm grants pull tokens without credentials.
    pub fn set_anonymous_pull(&self, on: bool) {
        self.inner.anonymous_pull.store(on, Ordering::Relaxed);
    }
}

async fn front(State(inner): State<Arc<FrontInner>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let path = parts.uri.path().to_owned();
    let response = match (parts.method.as_str(), path.as_str()) {
        ("POST", "/oauth2/exchange") => exchange(&inner, &parts.headers, &body),
        (_, "/oauth2/token") => realm(&inner, &parts, body).await,
        _ => registry(&inner, &parts, body).await,
    };
    inner.log.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        path,
        status: response.status().as_u16(),
    });
    response
}

/// `POST /oauth2/exchange`, per Azure/acr docs/AAD-OAuth.md: a form with `grant_type`
/// ("access_token"), `service` ("must indicate the name of your Azure container registry"),
/// `tenant` ("the AAD tenant associated to the AAD credentials") and `access_token` ("the AAD
/// access token"); answers `{"refresh_token":"eyJ..."}`, a JWT whose claims carry `exp`, `aud` (the
/// registry), `grant_type: refresh_token` and `tenant`.
fn exchange(inner: &FrontInner, headers: &HeaderMap, body: &[u8]) -> Response {
    let bad = |s: StatusCode, e: &str| json(s, serde_json::json!({ "errors": [{ "code": e }] }));
    if !headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"))
    {
        return bad(StatusCode::BAD_REQUEST, "UNSUPPORTED");
    }
    let f = form(body);
    let field = |k: &str| f.get(k).map(String::as_str);
    if field("grant_type") != Some("access_token")
        || field("service") != Some(inner.host.as_str())
        || field("tenant") != Some(inner.tenant.as_str())
    {
        return bad(StatusCode::BAD_REQUEST, "BAD_REQUEST");
    }
    let Some(claims) = field("access_token").and_then(|t| verify(t, &inner.entra, ACR_RESOURCE))
    else {
        return bad(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    };
    let sub = claims["sub"].as_str().unwrap_or("unknown").to_owned();
    let lifetime = inner.refresh_lifetime.load(Ordering::Relaxed);
    let refresh = serde_json::json!({
        "jti": format!("{:x}", rand::random::<u128>()),
        "sub": sub,
        "nbf": now() - 5,
        "exp": now() + lifetime,
        "iat": now(),
        "iss": "Azure Container Registry",
        "aud": inner.host,
        "version": "1.0",
        "grant_type": "refresh_token",
        "tenant": inner.tenant,
        "permissions": { "actions": ["*"], "notActions": [] },
        "roles": [],
    });
    let token =
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &refresh, &inner.signing).unwrap();
    inner.tokens.add_refresh_token(&token, &sub);
    inner.refresh_tokens.lock().unwrap().push(token.clone());
    inner.exchanges.fetch_add(1, Ordering::Relaxed);
    json(
        StatusCode::OK,
        serde_json::json!({ "refresh_token": token }),
    )
}

/// `/oauth2/token`, the realm: POST `grant_type=refresh_token` with an ACR refresh token (checked
/// here: signature and `exp`, as ACR checks its own tokens), or GET with Basic (admin user or
/// service principal); both are then served by the suite's token server, which signs the registry
/// token. With anonymous pull on, a GET without credentials gets a pull token.
async fn realm(inner: &FrontInner, parts: &axum::http::request::Parts, body: Bytes) -> Response {
    let query = parts
        .uri
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let url = format!("{}/token{query}", inner.tokens.url);
    let mut forward = inner.client.request(parts.method.clone(), url);
    if parts.method == "POST" {
        let f = form(&body);
        let ours = f
            .get("refresh_token")
            .and_then(|t| verify(t, &inner.verifying, &inner.host));
        if ours.is_none() {
            return json(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({ "errors": [{ "code": "UNAUTHORIZED", "message": "invalid or expired refresh token" }] }),
            );
        }
        forward = forward
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
    } else if let Some(auth) = parts.headers.get("authorization") {
        forward = forward.header("authorization", auth);
    } else if inner.anonymous_pull.load(Ordering::Relaxed) {
        forward = forward.basic_auth(ANONYMOUS.0, Some(ANONYMOUS.1));
    }
    relay(forward.send().await).await
}

/// `/v2/*`: ACR refuses an expired access token with a fresh challenge. docker-registry 2.8 allows
/// 60 s of leeway past `exp`, which would hide a client that uses tokens past their expiry; so
/// the front checks `exp` to the second, then proxies to the real registry, which verifies the
/// signature and the access claims.
async fn registry(inner: &FrontInner, parts: &axum::http::request::Parts, body: Bytes) -> Response {
    let bearer = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if let Some(token) = bearer {
        let exp = token
            .split('.')
            .nth(1)
            .and_then(|p| {
                base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, p).ok()
            })
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|c| c["exp"].as_u64());
        if exp.is_none_or(|exp| exp <= now()) {
            let mut r = json(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({ "errors": [{ "code": "UNAUTHORIZED", "message": "token expired" }] }),
            );
            r.headers_mut().insert(
                "www-authenticate",
                format!(
                    "Bearer realm=\"http://{}/oauth2/token\",service=\"{}\"",
                    inner.host,
                    token_server::SERVICE
                )
                .parse()
                .unwrap(),
            );
            return r;
        }
        let denied = inner
            .forbidden
            .lock()
            .unwrap()
            .iter()
            .any(|repo| parts.uri.path().starts_with(&format!("/v2/{repo}/")));
        if denied {
            return json(
                StatusCode::FORBIDDEN,
                serde_json::json!({ "errors": [{ "code": "DENIED", "message": "requested access to the resource is denied" }] }),
            );
        }
    }
    let upstream = inner.upstream.lock().unwrap().clone();
    let url = format!(
        "{upstream}{}",
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut forward = inner.client.request(parts.method.clone(), url).body(body);
    for (name, value) in &parts.headers {
        if name != "host" && name != "content-length" {
            forward = forward.header(name, value);
        }
    }
    relay(forward.send().await).await
}

async fn relay(upstream: Result<reqwest::Response, reqwest::Error>) -> Response {
    let upstream = match upstream {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let status = upstream.status();
    let headers = upstream.headers().clone();
    let bytes = upstream.bytes().await.unwrap_or_default();
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    for (name, value) in &headers {
        if name != "content-length" && name != "transfer-encoding" {
            response.headers_mut().append(name, value.clone());
        }
    }
    response
}
