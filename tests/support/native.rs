//! Stand-ins for the registry-native tag listings, built from the vendors' published references
//! and as dumb as the real APIs (numbered or `n`/`last` pages, `Link` or `next`, auth enforced as
//! the vendor does). Each also serves the Distribution API (`tags/list`, manifest `HEAD`/`GET`)
//! over the same images, so a client that ignores the native API still works, and every request
//! is counted, which is how the tests prove "0 HEADs":
//! - [`Vendor::Acr`]: ACR's "Tag - Get List" and its token endpoint on the registry's origin;
//! - [`Vendor::Harbor`]: Harbor v2.0's `listArtifacts`, Basic auth;
//! - [`Vendor::Hub`]: Docker Hub's "List repository tags" and "Create access token", on an origin
//!   of their own (hub.docker.com), next to the registry's.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use base64::Engine;
use sha2::{Digest, Sha256};

/// Which vendor's API the stand-in speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    Acr,
    Harbor,
    Hub,
}

/// How the native API misbehaves on its second page (the first is always served).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Quirk {
    #[default]
    None,
    /// The next link (`Link` header, or Hub's `next`) points at another host.
    ForeignNext,
    /// The second page is not the documented JSON (cut short), its headers intact.
    MalformedPage,
    /// The second page answers 500, every time.
    FailingPage,
    /// The second page answers 404, every time (a page past an end that shrank, a proxy): the
    /// first page was served, so this is no refusal of the repository.
    RefusedPage,
}

/// One tag: its manifest digest and when it was (last) pushed.
#[derive(Debug, Clone)]
pub struct Image {
    pub digest: String,
    pub pushed: SystemTime,
}

/// A Harbor artifact: a digest, its first push, and which tags point at it now.
#[derive(Debug, Clone)]
struct Artifact {
    id: u64,
    digest: String,
    pushed: SystemTime,
    /// An accessory of another artifact: Harbor's cosign middleware records a manifest pushed as
    /// `sha256-<hex>.sig` as the `signature.cosign` accessory of `sha256:<hex>`, and
    /// `listArtifacts` never lists accessories (see `harbor_artifacts`).
    accessory: bool,
}

/// Runs once, when the native API is asked for a page after the first: a change between pages.
type BetweenPages = Box<dyn FnOnce(&Native) + Send>;

/// The stand-in's images, credentials, misbehaviour and counters.
pub struct Native {
    pub vendor: Vendor,
    /// Repository → tag → image.
    pub repos: Mutex<BTreeMap<String, BTreeMap<String, Image>>>,
    /// Harbor keeps an artifact when its tag moves away (it is then untagged): repository →
    /// artifacts, oldest first.
    artifacts: Mutex<BTreeMap<String, Vec<Artifact>>>,
    pub user: String,
    pub password: String,
    /// When set, the native API answers every request with this status.
    pub native_refusal: Mutex<Option<u16>>,
    pub quirk: Mutex<Quirk>,
    /// `127.0.0.1:PORT` of the registry (ACR, Harbor: also of the native API).
    pub host: Mutex<String>,
    /// `127.0.0.1:PORT` of the Hub API.
    pub hub_host: Mutex<String>,
    /// Bearer tokens issued → the scopes they grant (ACR) or "hub" (Hub).
    tokens: Mutex<HashMap<String, HashSet<String>>>,
    pub native_requests: AtomicUsize,
    pub tags_list_requests: AtomicUsize,
    pub head_requests: AtomicUsize,
    pub get_manifest_requests: AtomicUsize,
    pub token_requests: AtomicUsize,
    /// Every request the stand-in answered, on either origin.
    pub requests: AtomicUsize,
    /// The scopes asked of the token endpoint, in order.
    pub scopes_asked: Mutex<Vec<String>>,
    version: AtomicUsize,
    /// A change made while the native listing is between its first and second page.
    pub between_pages: Mutex<Option<BetweenPages>>,
}

impl Native {
    /// A stand-in for `vendor`, whose one account is `user`/`password`.
    pub fn new(vendor: Vendor, user: &str, password: &str) -> Arc<Native> {
        Arc::new(Native {
            vendor,
            repos: Mutex::default(),
            artifacts: Mutex::default(),
            user: user.into(),
            password: password.into(),
            native_refusal: Mutex::new(None),
            quirk: Mutex::new(Quirk::None),
            host: Mutex::default(),
            hub_host: Mutex::default(),
            tokens: Mutex::default(),
            native_requests: AtomicUsize::new(0),
            tags_list_requests: AtomicUsize::new(0),
            head_requests: AtomicUsize::new(0),
            get_manifest_requests: AtomicUsize::new(0),
            token_requests: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            scopes_asked: Mutex::default(),
            version: AtomicUsize::new(0),
            between_pages: Mutex::new(None),
        })
    }

    /// Pushes a new image as `repo:tag` (moving the tag if it exists) and returns its digest.
    pub fn push(&self, repo: &str, tag: &str) -> Image {
        let n = self.version.fetch_add(1, Ordering::Relaxed);
        let digest = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(format!("{repo}:{tag}:{n}")))
        );
        let image = Image {
            digest: digest.clone(),
            pushed: SystemTime::now(),
        };
        self.repos
            .lock()
            .unwrap()
            .entry(repo.into())
            .or_default()
            .insert(tag.into(), image.clone());
        let mut artifacts = self.artifacts.lock().unwrap();
        let list = artifacts.entry(repo.into()).or_default();
        list.push(Artifact {
            id: n as u64 + 1,
            digest,
            pushed: image.pushed,
            accessory: is_cosign_signature(tag),
        });
        image
    }

    /// Deletes `repo:tag` (the tag only; Harbor keeps its artifact, untagged).
    pub fn delete(&self, repo: &str, tag: &str) {
        if let Some(tags) = self.repos.lock().unwrap().get_mut(repo) {
            tags.remove(tag);
        }
    }

    /// Points `repo:tag` at the existing image `digest` (`docker tag` + push of an image the
    /// repository holds). Harbor's `ensureArtifact` returns the existing artifact unchanged (its
    /// `push_time`, hence its place in the listing, stays) and the tag controller moves the tag,
    /// updating the tag's `push_time` only.
    pub fn retag(&self, repo: &str, tag: &str, digest: &str) {
        self.repos
            .lock()
            .unwrap()
            .entry(repo.into())
            .or_default()
            .insert(
                tag.into(),
                Image {
                    digest: digest.into(),
                    pushed: SystemTime::now(),
                },
            );
    }

    /// Zeroes every counter.
    pub fn reset_counts(&self) {
        for c in [
            &self.native_requests,
            &self.tags_list_requests,
            &self.head_requests,
            &self.get_manifest_requests,
            &self.token_requests,
            &self.requests,
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }

    /// Every bearer token issued so far (ACR access tokens, Hub JWTs), for the secret canary.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.tokens.lock().unwrap().keys().cloned().collect()
    }

    /// HEAD plus GET manifest requests.
    pub fn manifest_requests(&self) -> usize {
        self.head_requests.load(Ordering::Relaxed)
            + self.get_manifest_requests.load(Ordering::Relaxed)
    }

    fn basic_ok(&self, headers: &HeaderMap) -> bool {
        let expected = format!("Basic {}", super::basic_b64(&self.user, &self.password));
        header(headers, "authorization") == Some(expected.as_str())
    }

    fn bearer_grants(&self, headers: &HeaderMap, scope: &str) -> bool {
        let Some(token) = header(headers, "authorization").and_then(|a| a.strip_prefix("Bearer "))
        else {
            return false;
        };
        self.tokens
            .lock()
            .unwrap()
            .get(token)
            .is_some_and(|scopes| scopes.contains(scope))
    }

    /// Any token this stand-in issued (the `/v2/` ping asks for no scope).
    fn bearer_valid(&self, headers: &HeaderMap) -> bool {
        header(headers, "authorization")
            .and_then(|a| a.strip_prefix("Bearer "))
            .is_some_and(|t| self.tokens.lock().unwrap().contains_key(t))
    }

    fn issue(&self, scopes: HashSet<String>) -> String {
        let claims = serde_json::json!({
            "exp": SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() + 600,
            "jti": format!("{:x}", rand::random::<u64>()),
        });
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let token = format!(
            "{}.{}.{}",
            b64.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
            b64.encode(claims.to_string()),
            b64.encode(rand::random::<[u8; 16]>())
        );
        self.tokens.lock().unwrap().insert(token.clone(), scopes);
        token
    }
}

/// Harbor's cosign middleware pattern: `^/v2/<repo>/manifests/sha256-<hex>.sig$`.
fn is_cosign_signature(tag: &str) -> bool {
    tag.strip_prefix("sha256-")
        .and_then(|t| t.strip_suffix(".sig"))
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn query(uri: &Uri) -> HashMap<String, String> {
    url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

fn json(status: StatusCode, body: String) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

fn status(code: StatusCode) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = code;
    r
}

/// `2018-09-06T06:17:21.0856539Z`: ACR writes seven fractional digits.
fn acr_time(t: SystemTime) -> String {
    let nanos = humantime::format_rfc3339_nanos(t).to_string();
    format!("{}Z", &nanos[..nanos.len() - 3])
}

async fn handle(
    State(state): State<Arc<Native>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.requests.fetch_add(1, Ordering::Relaxed);
    let path = uri.path().to_owned();
    if path.starts_with("/v2/") && !(state.vendor == Vendor::Hub && is_hub_api(&path)) {
        return distribution(&state, &method, &uri, &headers);
    }
    match state.vendor {
        Vendor::Acr if path == "/oauth2/token" => acr_token(&state, &uri, &headers),
        Vendor::Acr if path.starts_with("/acr/v1/") => acr_tags(&state, &uri, &headers),
        Vendor::Harbor if path.starts_with("/api/v2.0/projects/") => {
            harbor_artifacts(&state, &uri, &headers)
        }
        Vendor::Hub if path == "/v2/auth/token" && method == Method::POST => {
            hub_login(&state, &body)
        }
        Vendor::Hub if is_hub_api(&path) => hub_tags(&state, &uri, &headers),
        _ => status(StatusCode::NOT_FOUND),
    }
}

fn is_hub_api(path: &str) -> bool {
    path == "/v2/auth/token" || path.starts_with("/v2/namespaces/")
}

/// The native API's refusal, its second-page quirks, and its request count.
fn native_gate(state: &Native, page: usize) -> Option<Response> {
    state.native_requests.fetch_add(1, Ordering::Relaxed);
    if page >= 2
        && let Some(change) = state.between_pages.lock().unwrap().take()
    {
        change(state);
    }
    if let Some(code) = *state.native_refusal.lock().unwrap() {
        return Some(json(
            StatusCode::from_u16(code).unwrap(),
            r#"{"errors":[{"code":"DENIED","message":"refused by the test"}]}"#.into(),
        ));
    }
    if page >= 2 && *state.quirk.lock().unwrap() == Quirk::FailingPage {
        return Some(status(StatusCode::INTERNAL_SERVER_ERROR));
    }
    if page >= 2 && *state.quirk.lock().unwrap() == Quirk::RefusedPage {
        return Some(status(StatusCode::NOT_FOUND));
    }
    None
}

/// `page` (default 1) and `page_size` (default 10) of a Harbor or Hub `?page=&page_size=` query,
/// or the [`native_gate`] answer for that page.
fn paged(state: &Native, uri: &Uri) -> Result<(usize, usize), Box<Response>> {
    let q = query(uri);
    let page: usize = q.get("page").and_then(|p| p.parse().ok()).unwrap_or(1);
    if let Some(r) = native_gate(state, page) {
        return Err(Box::new(r));
    }
    let page_size: usize = q
        .get("page_size")
        .and_then(|p| p.parse().ok())
        .unwrap_or(10);
    Ok((page, page_size))
}

/// With [`Quirk::MalformedPage`], page 2 and later keep their headers but lose their body's end.
fn finish(state: &Native, page: usize, mut r: Response) -> Response {
    if page >= 2 && *state.quirk.lock().unwrap() == Quirk::MalformedPage {
        *r.body_mut() = Body::from(r#"{"tags":[{"name":"#);
    }
    r
}

fn foreign(state: &Native) -> bool {
    *state.quirk.lock().unwrap() == Quirk::ForeignNext
}

// ---- ACR -------------------------------------------------------------------------------------

/// ACR's token endpoint on the login server: `GET /oauth2/token?service=&scope=` with the
/// admin user or a service principal as Basic credentials, answering `{"access_token"}` for
/// exactly the scope asked.
fn acr_token(state: &Native, uri: &Uri, headers: &HeaderMap) -> Response {
    state.token_requests.fetch_add(1, Ordering::Relaxed);
    if !state.basic_ok(headers) {
        return json(
            StatusCode::UNAUTHORIZED,
            r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#.into(),
        );
    }
    let q = query(uri);
    if q.get("service").map(String::as_str) != Some(state.host.lock().unwrap().as_str()) {
        return json(StatusCode::BAD_REQUEST, r#"{"error":"bad service"}"#.into());
    }
    let scopes: HashSet<String> = q.get("scope").into_iter().cloned().collect();
    state
        .scopes_asked
        .lock()
        .unwrap()
        .extend(scopes.iter().cloned());
    let token = state.issue(scopes);
    json(
        StatusCode::OK,
        serde_json::json!({ "access_token": token }).to_string(),
    )
}

/// A 401 naming ACR's realm, with the scope the operation needs.
fn acr_challenge(state: &Native, scope: &str) -> Response {
    let host = state.host.lock().unwrap().clone();
    let mut r = json(
        StatusCode::UNAUTHORIZED,
        r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#.into(),
    );
    r.headers_mut().insert(
        "www-authenticate",
        HeaderValue::from_str(&format!(
            "Bearer realm=\"http://{host}/oauth2/token\",service=\"{host}\",scope=\"{scope}\""
        ))
        .unwrap(),
    );
    r
}

/// "Tag - Get List": `GET {url}/acr/v1/{name}/_tags?last={last}&n={n}` → `TagList`
/// `{"registry", "imageName", "tags": [TagAttributesBase]}`, each with `name`, `digest`,
/// `createdTime`, `lastUpdateTime`, `signed` and `changeableAttributes`; "last: Result set will
/// include values lexically after last"; the next page in `Link`, as the Distribution API does.
/// It needs a token with `repository:{name}:metadata_read`.
fn acr_tags(state: &Native, uri: &Uri, headers: &HeaderMap) -> Response {
    let path = uri.path();
    let Some(repo) = path
        .strip_prefix("/acr/v1/")
        .and_then(|r| r.strip_suffix("/_tags"))
    else {
        return status(StatusCode::NOT_FOUND);
    };
    let scope = format!("repository:{repo}:metadata_read");
    if !state.bearer_grants(headers, &scope) {
        return acr_challenge(state, &scope);
    }
    let q = query(uri);
    let page = if q.contains_key("last") { 2 } else { 1 };
    if let Some(r) = native_gate(state, page) {
        return r;
    }
    let n: usize = q.get("n").and_then(|n| n.parse().ok()).unwrap_or(100);
    let repos = state.repos.lock().unwrap();
    let Some(tags) = repos.get(repo) else {
        return json(
            StatusCode::NOT_FOUND,
            r#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}"#.into(),
        );
    };
    let after: Vec<(&String, &Image)> = tags
        .iter()
        .filter(|(name, _)| q.get("last").is_none_or(|l| *name > l))
        .collect();
    let shown = &after[..n.min(after.len())];
    let items: Vec<serde_json::Value> = shown
        .iter()
        .map(|(name, image)| {
            serde_json::json!({
                "name": name,
                "digest": image.digest,
                "createdTime": acr_time(image.pushed - Duration::from_secs(3600)),
                "lastUpdateTime": acr_time(image.pushed),
                "signed": false,
                "changeableAttributes": {
                    "deleteEnabled": true, "writeEnabled": true,
                    "readEnabled": true, "listEnabled": true
                }
            })
        })
        .collect();
    let host = state.host.lock().unwrap().clone();
    let mut r = json(
        StatusCode::OK,
        serde_json::json!({ "registry": host, "imageName": repo, "tags": items }).to_string(),
    );
    if after.len() > n {
        let last = shown.last().unwrap().0;
        let base = if foreign(state) {
            "http://elsewhere.invalid"
        } else {
            ""
        };
        r.headers_mut().insert(
            "link",
            HeaderValue::from_str(&format!(
                "<{base}/acr/v1/{repo}/_tags?last={last}&n={n}&orderby=>; rel=\"next\""
            ))
            .unwrap(),
        );
    }
    finish(state, page, r)
}

// ---- Harbor ----------------------------------------------------------------------------------

/// `listArtifacts`: `GET /api/v2.0/projects/{project_name}/repositories/{repository_name}/
/// artifacts`, `repository_name` "encode[d] twice over" (a/b → a%252Fb); `page` (default 1),
/// `page_size` (default 10, maximum 100); `with_tag` (default true). Answers `[Artifact]` with
/// `X-Total-Count` and `Link` (`<...?page=N&page_size=M&...>; rel="prev" , <...>; rel="next"`, as
/// `BaseAPI.Links` writes it). Security `basic`: this project is private, so no or wrong
/// credentials get 401.
fn harbor_artifacts(state: &Native, uri: &Uri, headers: &HeaderMap) -> Response {
    let path = uri.path();
    let Some(rest) = path.strip_prefix("/api/v2.0/projects/") else {
        return status(StatusCode::NOT_FOUND);
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let [project, "repositories", name, "artifacts"] = parts[..] else {
        return status(StatusCode::NOT_FOUND);
    };
    if !state.basic_ok(headers) {
        return json(
            StatusCode::UNAUTHORIZED,
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"unauthorized"}]}"#.into(),
        );
    }
    // Harbor's router decodes the path once; a name encoded only once has a '/' by then and
    // matches no route.
    if name.contains("%2F") || name.contains("%2f") {
        return status(StatusCode::NOT_FOUND);
    }
    let repo = format!("{project}/{}", name.replace("%252F", "/"));
    let (page, page_size) = match paged(state, uri) {
        Ok(paging) => paging,
        Err(r) => return *r,
    };
    if page_size == 0 || page_size > 100 || page == 0 {
        return json(
            StatusCode::UNPROCESSABLE_ENTITY,
            r#"{"errors":[{"code":"UNPROCESSABLE_ENTITY"}]}"#.into(),
        );
    }
    let repos = state.repos.lock().unwrap();
    let Some(tags) = repos.get(&repo) else {
        return json(
            StatusCode::NOT_FOUND,
            r#"{"errors":[{"code":"NOT_FOUND","message":"repository not found"}]}"#.into(),
        );
    };
    let artifacts = state.artifacts.lock().unwrap();
    // `Artifact.GetDefaultSorts`: `PushTime` desc, then `ID` desc. Accessories are never listed
    // nor counted: the artifact DAO's `setAccessoryQuery` adds `notacc` ("NOT EXISTS (SELECT 1
    // FROM artifact_accessory aa WHERE aa.artifact_id = T0.id)") to every query, `Count`
    // (X-Total-Count) included; their tags are then on no page, while `tags/list` (the tag table
    // by repository) still lists them.
    let mut all: Vec<&Artifact> = artifacts
        .get(&repo)
        .map_or(vec![], |a| a.iter().filter(|a| !a.accessory).collect());
    all.sort_by_key(|a| std::cmp::Reverse((a.pushed, a.id)));
    let total = all.len();
    let shown: Vec<serde_json::Value> = all
        .iter()
        .skip((page - 1) * page_size)
        .take(page_size)
        .map(|a| {
            let tags: Vec<serde_json::Value> = tags
                .iter()
                .filter(|(_, image)| image.digest == a.digest)
                .map(|(name, image)| {
                    serde_json::json!({
                        "id": a.id * 1000 + name.len() as u64,
                        "artifact_id": a.id,
                        "name": name,
                        "push_time": humantime::format_rfc3339_millis(image.pushed).to_string(),
                        "pull_time": "0001-01-01T00:00:00.000Z",
                        "immutable": false
                    })
                })
                .collect();
            serde_json::json!({
                "id": a.id,
                "type": "IMAGE",
                "media_type": "application/vnd.docker.container.image.v1+json",
                "manifest_media_type": "application/vnd.docker.distribution.manifest.v2+json",
                "digest": a.digest,
                "size": 1234,
                "push_time": humantime::format_rfc3339_millis(a.pushed).to_string(),
                "pull_time": "0001-01-01T00:00:00.000Z",
                "tags": if tags.is_empty() { serde_json::Value::Null } else { tags.into() },
            })
        })
        .collect();
    let mut r = json(StatusCode::OK, serde_json::Value::from(shown).to_string());
    r.headers_mut()
        .insert("x-total-count", HeaderValue::from(total as u64));
    let link = |p: usize, rel: &str| {
        let base = if rel == "next" && foreign(state) {
            "http://elsewhere.invalid"
        } else {
            ""
        };
        format!("<{base}{path}?page={p}&page_size={page_size}&with_tag=true>; rel=\"{rel}\"")
    };
    let mut links = Vec::new();
    if page > 1 && (page - 1) * page_size < total {
        links.push(link(page - 1, "prev"));
    }
    if page * page_size < total {
        links.push(link(page + 1, "next"));
    }
    if !links.is_empty() {
        r.headers_mut()
            .insert("link", HeaderValue::from_str(&links.join(" , ")).unwrap());
    }
    finish(state, page, r)
}

// ---- Docker Hub ------------------------------------------------------------------------------

/// "Create access token": `POST /v2/auth/token` with `{"identifier", "secret"}` (the Docker ID
/// and its password or personal access token) → `{"access_token"}`, a JWT that "expires in 10
/// minutes".
fn hub_login(state: &Native, body: &[u8]) -> Response {
    state.token_requests.fetch_add(1, Ordering::Relaxed);
    let ok = serde_json::from_slice::<serde_json::Value>(body).is_ok_and(|v| {
        v["identifier"] == state.user.as_str() && v["secret"] == state.password.as_str()
    });
    if !ok {
        return json(
            StatusCode::UNAUTHORIZED,
            r#"{"detail":"Incorrect authentication credentials"}"#.into(),
        );
    }
    let token = state.issue(HashSet::from(["hub".to_owned()]));
    json(
        StatusCode::OK,
        serde_json::json!({ "access_token": token }).to_string(),
    )
}

/// "List repository tags": `GET /v2/namespaces/{namespace}/repositories/{repository}/tags`,
/// `page` ("Defaults to 1"), `page_size` ("Defaults to 10. Max of 100") → `paginated_tags`
/// `{"count", "next", "previous", "results": [tag]}`, each `tag` with `name`, `digest`,
/// `last_updated`, `tag_last_pushed`, `tag_status`, `images`…, most recently updated first.
/// This repository is private: it needs `Authorization: Bearer <access token>` (401 without).
fn hub_tags(state: &Native, uri: &Uri, headers: &HeaderMap) -> Response {
    let path = uri.path();
    let parts: Vec<&str> = path
        .trim_start_matches("/v2/namespaces/")
        .split('/')
        .collect();
    let [namespace, "repositories", name, "tags"] = parts[..] else {
        return status(StatusCode::NOT_FOUND);
    };
    if !state.bearer_grants(headers, "hub") {
        return json(
            StatusCode::UNAUTHORIZED,
            r#"{"message":"authentication required","errinfo":{}}"#.into(),
        );
    }
    let (page, page_size) = match paged(state, uri) {
        Ok((page, page_size)) => (page, page_size.clamp(1, 100)),
        Err(r) => return *r,
    };
    let repos = state.repos.lock().unwrap();
    let Some(tags) = repos.get(&format!("{namespace}/{name}")) else {
        return json(
            StatusCode::NOT_FOUND,
            r#"{"message":"object not found","errinfo":{}}"#.into(),
        );
    };
    let mut all: Vec<(&String, &Image)> = tags.iter().collect();
    all.sort_by(|a, b| b.1.pushed.cmp(&a.1.pushed).then(a.0.cmp(b.0)));
    // A page past the end. The Hub's reference documents only 200; the Hub API is a Django REST
    // framework service (its errors are DRF's `{"detail": ...}`, as in "Incorrect authentication
    // credentials" above), and DRF's `PageNumberPagination` raises `NotFound("Invalid page.")`
    // for a page number past the last page: 404. Reached when tags are deleted between pages.
    if page > 1 && (page - 1) * page_size >= all.len() {
        return json(
            StatusCode::NOT_FOUND,
            r#"{"detail":"Invalid page."}"#.into(),
        );
    }
    let results: Vec<serde_json::Value> = all
        .iter()
        .skip((page - 1) * page_size)
        .take(page_size)
        .map(|(name, image)| {
            let at = humantime::format_rfc3339_micros(image.pushed).to_string();
            serde_json::json!({
                "creator": 1234,
                "id": 12345,
                "images": [{
                    "architecture": "amd64", "features": null, "last_pulled": null,
                    "last_pushed": at, "os": "linux", "size": 123456, "status": "active",
                    "digest": format!("sha256:{}", hex::encode(Sha256::digest(image.digest.as_bytes())))
                }],
                "last_updated": at,
                "last_updater": 1234,
                "last_updater_username": "dockeruser",
                "name": name,
                "repository": 5678,
                "full_size": 123456,
                "v2": true,
                "tag_status": "active",
                "tag_last_pulled": null,
                "tag_last_pushed": at,
                "media_type": "application/vnd.docker.distribution.manifest.v2+json",
                "content_type": "image",
                "digest": image.digest,
            })
        })
        .collect();
    let hub = state.hub_host.lock().unwrap().clone();
    let host = if foreign(state) {
        "elsewhere.invalid".to_owned()
    } else {
        hub
    };
    let url = |p: usize| format!("http://{host}{path}?page={p}&page_size={page_size}");
    let next = (page * page_size < all.len()).then(|| url(page + 1));
    let previous = (page > 1).then(|| url(page - 1));
    let r = json(
        StatusCode::OK,
        serde_json::json!({ "count": all.len(), "next": next, "previous": previous, "results": results })
            .to_string(),
    );
    finish(state, page, r)
}

// ---- Distribution ----------------------------------------------------------------------------

/// The Distribution API over the same images: `tags/list` with `n`/`last`/`Link`, manifest
/// `HEAD` and `GET` answering `Docker-Content-Digest`. ACR wants its bearer token (`pull`);
/// the Harbor and Hub stand-ins take the account's Basic credentials.
fn distribution(state: &Native, method: &Method, uri: &Uri, headers: &HeaderMap) -> Response {
    let path = uri.path();
    let rest = path.strip_prefix("/v2/").unwrap_or("");
    let repo = rest
        .strip_suffix("/tags/list")
        .or_else(|| rest.split_once("/manifests/").map(|(r, _)| r));
    let allowed = match state.vendor {
        Vendor::Acr => {
            let scope = format!("repository:{}:pull", repo.unwrap_or(""));
            if repo.is_some() && state.bearer_grants(headers, &scope)
                || repo.is_none() && state.bearer_valid(headers)
            {
                true
            } else {
                return acr_challenge(state, &scope);
            }
        }
        Vendor::Harbor | Vendor::Hub => state.basic_ok(headers),
    };
    if !allowed {
        let mut r = status(StatusCode::UNAUTHORIZED);
        r.headers_mut().insert(
            "www-authenticate",
            HeaderValue::from_static("Basic realm=\"stand-in\""),
        );
        return r;
    }
    if rest.is_empty() {
        return json(StatusCode::OK, "{}".into());
    }
    let repos = state.repos.lock().unwrap();
    if let Some(repo) = rest.strip_suffix("/tags/list") {
        state.tags_list_requests.fetch_add(1, Ordering::Relaxed);
        let Some(tags) = repos.get(repo) else {
            return status(StatusCode::NOT_FOUND);
        };
        let q = query(uri);
        let n: usize = q
            .get("n")
            .and_then(|n| n.parse().ok())
            .unwrap_or(usize::MAX);
        let after: Vec<&String> = tags
            .keys()
            .filter(|t| q.get("last").is_none_or(|l| *t > l))
            .collect();
        let shown = &after[..n.min(after.len())];
        let mut r = json(
            StatusCode::OK,
            serde_json::json!({ "name": repo, "tags": shown }).to_string(),
        );
        if after.len() > n {
            r.headers_mut().insert(
                "link",
                HeaderValue::from_str(&format!(
                    "</v2/{repo}/tags/list?n={n}&last={}>; rel=\"next\"",
                    shown.last().unwrap()
                ))
                .unwrap(),
            );
        }
        return r;
    }
    if let Some((repo, tag)) = rest.split_once("/manifests/") {
        if *method == Method::HEAD {
            state.head_requests.fetch_add(1, Ordering::Relaxed);
        } else {
            state.get_manifest_requests.fetch_add(1, Ordering::Relaxed);
        }
        let Some(image) = repos.get(repo).and_then(|t| t.get(tag)) else {
            return status(StatusCode::NOT_FOUND);
        };
        let mut r = status(StatusCode::OK);
        r.headers_mut().insert(
            "docker-content-digest",
            HeaderValue::from_str(&image.digest).unwrap(),
        );
        return r;
    }
    status(StatusCode::NOT_FOUND)
}

/// Serves the stand-in on a free loopback port (for the Hub: two, the registry's and the Hub
/// API's); returns the registry's `127.0.0.1:PORT`.
pub async fn serve(state: Arc<Native>) -> String {
    let app = Router::new().fallback(handle).with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    *state.host.lock().unwrap() = host.clone();
    let registry = app.clone();
    tokio::spawn(async move { axum::serve(listener, registry).await.unwrap() });
    if state.vendor == Vendor::Hub {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        *state.hub_host.lock().unwrap() = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    }
    host
}
