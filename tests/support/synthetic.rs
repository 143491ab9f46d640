//! An in-process Distribution registry with exact, spec-conformant `n`/`last`/`Link` paging, request
//! counters, and switchable misbehaviour. It serves what `docker-registry` 2.8 cannot (it ignores
//! `n` on tags/list) and scales to a million tags without disk.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use sha2::{Digest, Sha256};

/// How the synthetic registry misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Quirk {
    /// Spec-conformant.
    #[default]
    None,
    /// Full pages carry no `Link` (the client must ask again with `last=`).
    NoLink,
    /// `Link` is absolute rather than relative.
    AbsoluteLink,
    /// `Link` points at another host.
    ForeignLink,
    /// Every `Link` points back at the first page.
    LoopingLink,
    /// `n` is honoured but `last` ignored, and no `Link` is sent: every page is the first one.
    IgnoresLast,
    /// tags/list answers a 40 MiB body.
    HugeBody,
    /// tags/list answers bytes that are not UTF-8.
    InvalidUtf8,
    /// tags/list answers with `content-type: text/html`.
    HtmlContentType,
    /// Every request gets 401 with a malformed challenge.
    BadChallenge,
}

/// Shared state and counters.
#[derive(Default)]
pub struct Synthetic {
    /// Repository → sorted tags → digest.
    pub repos: Mutex<BTreeMap<String, BTreeMap<String, String>>>,
    pub quirk: Mutex<Quirk>,
    pub catalog_requests: AtomicUsize,
    pub tags_requests: AtomicUsize,
    pub head_requests: AtomicUsize,
    pub get_manifest_requests: AtomicUsize,
    pub host: Mutex<String>,
    /// When set, (user, password, token): `/token` issues the token for Basic user:password and
    /// every `/v2/` request must carry it as a Bearer token.
    pub token_auth: Mutex<Option<(String, String, String)>>,
    pub token_requests: AtomicUsize,
    /// When set, every `/v2/…/tags/list` answers 307 to this base URL (same path).
    pub redirect_to: Mutex<Option<String>>,
    /// The `Authorization` header of every request, as received.
    pub authorization_seen: Mutex<Vec<Option<String>>>,
    /// Bearer tokens answered 403 DENIED (Distribution spec: "the access controller denied
    /// access for the operation on a resource"), checked before `token_auth`'s current token.
    pub forbidden_tokens: Mutex<Vec<String>>,
    /// Answer tags/list as Google does, with a digest → {tag, timeUploadedMs} map.
    pub google_manifest: Mutex<bool>,
    /// The `timeUploadedMs` the map gives every manifest (default `1764230400000`).
    pub upload_time_ms: Mutex<String>,
    /// Repositories the catalog lists but whose tags/list answers 404, as ECR and GCR do for a
    /// while after a repository is created, and distribution while one is being deleted.
    pub tags_not_found: Mutex<std::collections::BTreeSet<String>>,
    /// Repositories that exist but the catalog leaves out, as a catalog that lags behind does (or
    /// one cut short by a proxy).
    pub catalog_hidden: Mutex<std::collections::BTreeSet<String>>,
    /// The token realm challenges name; `http://{host}/token` when unset.
    pub realm: Mutex<Option<String>>,
    /// `repo:tag` names that tags/list shows but whose manifest HEAD answers 404, as when a tag is
    /// deleted (or re-pushed) between a client's listing and its HEAD.
    pub head_missing: Mutex<std::collections::BTreeSet<String>>,
    /// `repo:tag` names whose manifest HEAD answers 500 for good (a corrupt manifest in storage).
    pub head_failing: Mutex<std::collections::BTreeSet<String>>,
    /// tags/list requests per repository.
    pub tags_requests_by_repo: Mutex<BTreeMap<String, usize>>,
    /// How long every tags/list request waits before it is answered (a slow registry).
    pub tags_delay: Mutex<Option<std::time::Duration>>,
    /// How long every `/token` request waits before it is answered (a slow realm).
    pub token_delay: Mutex<Option<std::time::Duration>>,
    /// While set, every request answers 500 (a registry down for a while).
    pub failing: std::sync::atomic::AtomicBool,
}

/// A digest derived from the content it names.
pub fn digest_of(repo: &str, tag: &str, version: u32) -> String {
    format!(
        "sha256:{}",
        hex::encode(Sha256::digest(format!("{repo}:{tag}:{version}")))
    )
}

impl Synthetic {
    /// Sets `repo:tag` to the digest of `version`.
    pub fn put(&self, repo: &str, tag: &str, version: u32) -> String {
        let d = digest_of(repo, tag, version);
        self.repos
            .lock()
            .unwrap()
            .entry(repo.into())
            .or_default()
            .insert(tag.into(), d.clone());
        d
    }

    /// Total requests served.
    pub fn requests(&self) -> usize {
        self.catalog_requests.load(Ordering::Relaxed)
            + self.tags_requests.load(Ordering::Relaxed)
            + self.head_requests.load(Ordering::Relaxed)
            + self.get_manifest_requests.load(Ordering::Relaxed)
    }
}

#[derive(serde::Deserialize)]
struct Page {
    n: Option<usize>,
    last: Option<String>,
}

fn page<'a>(items: impl Iterator<Item = &'a String>, q: &Page) -> (Vec<String>, bool) {
    let n = q.n.unwrap_or(usize::MAX);
    let mut out: Vec<String> = items
        .filter(|i| q.last.as_ref().is_none_or(|l| *i > l))
        .take(n.saturating_add(1))
        .cloned()
        .collect();
    let more = out.len() > n;
    out.truncate(n);
    (out, more)
}

fn link(state: &Synthetic, path: &str, n: usize, last: &str, first: &str) -> Option<HeaderValue> {
    let host = state.host.lock().unwrap().clone();
    let rel = format!("{path}?n={n}&last={last}");
    let target = match *state.quirk.lock().unwrap() {
        Quirk::NoLink => return None,
        Quirk::AbsoluteLink => format!("http://{host}{rel}"),
        Quirk::ForeignLink => format!("http://elsewhere.invalid{rel}"),
        Quirk::LoopingLink => first.to_owned(),
        _ => rel,
    };
    HeaderValue::from_str(&format!("<{target}>; rel=\"next\"")).ok()
}

fn json(body: String, link: Option<HeaderValue>) -> Response {
    let mut r = Response::new(Body::from(body));
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    if let Some(l) = link {
        r.headers_mut().insert("link", l);
    }
    r
}

fn status(code: StatusCode) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = code;
    r
}

async fn handle(
    State(state): State<Arc<Synthetic>>,
    method: Method,
    uri: Uri,
    Query(q): Query<Page>,
    headers: HeaderMap,
) -> Response {
    let path = uri.path().to_owned();
    if state.failing.load(Ordering::Relaxed) {
        return status(StatusCode::INTERNAL_SERVER_ERROR);
    }
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    state.authorization_seen.lock().unwrap().push(authorization);
    // Bound first: a guard in the `if let` would be held across the realm's delay.
    let token_auth = state.token_auth.lock().unwrap().clone();
    if let Some((user, pass, token)) = token_auth {
        let presented = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if path == "/token" {
            state.token_requests.fetch_add(1, Ordering::Relaxed);
            let delay = *state.token_delay.lock().unwrap();
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            let expected = format!("Basic {}", super::basic_b64(&user, &pass));
            if presented != expected {
                return status(StatusCode::UNAUTHORIZED);
            }
            return json(
                serde_json::json!({ "token": token, "expires_in": 300 }).to_string(),
                None,
            );
        }
        if let Some(t) = presented.strip_prefix("Bearer ")
            && state
                .forbidden_tokens
                .lock()
                .unwrap()
                .iter()
                .any(|f| f == t)
        {
            return status(StatusCode::FORBIDDEN);
        }
        if presented != format!("Bearer {token}") {
            let host = state.host.lock().unwrap().clone();
            let realm = (state.realm.lock().unwrap().clone())
                .unwrap_or_else(|| format!("http://{host}/token"));
            let mut r = status(StatusCode::UNAUTHORIZED);
            let challenge = format!("Bearer realm=\"{realm}\",service=\"synthetic\"");
            r.headers_mut().insert(
                "www-authenticate",
                HeaderValue::from_str(&challenge).unwrap(),
            );
            return r;
        }
    }
    if let Some(base) = state.redirect_to.lock().unwrap().clone()
        && path.ends_with("/tags/list")
    {
        let mut r = status(StatusCode::TEMPORARY_REDIRECT);
        let target = format!("{base}{}", uri.path_and_query().map_or("", |p| p.as_str()));
        r.headers_mut()
            .insert("location", HeaderValue::from_str(&target).unwrap());
        return r;
    }
    let quirk = *state.quirk.lock().unwrap();
    if quirk == Quirk::BadChallenge {
        let mut r = status(StatusCode::UNAUTHORIZED);
        r.headers_mut().insert(
            "www-authenticate",
            HeaderValue::from_static("Bearer realm=\"unterminated"),
        );
        return r;
    }
    if path.ends_with("/tags/list") {
        match quirk {
            Quirk::HugeBody => {
                return json(format!("{{\"tags\":[\"{}\"]}}", "a".repeat(40 << 20)), None);
            }
            Quirk::InvalidUtf8 => {
                let mut r = Response::new(Body::from(b"{\"tags\":[\"\xff\xfe\"]}".to_vec()));
                r.headers_mut()
                    .insert("content-type", HeaderValue::from_static("application/json"));
                return r;
            }
            Quirk::HtmlContentType => {
                let mut r = Response::new(Body::from("<html>maintenance</html>"));
                r.headers_mut()
                    .insert("content-type", HeaderValue::from_static("text/html"));
                return r;
            }
            _ => {}
        }
    }
    let first = format!("{path}?n={}", q.n.unwrap_or(0));
    let q = if quirk == Quirk::IgnoresLast {
        Page { n: q.n, last: None }
    } else {
        q
    };
    if path == "/v2/" {
        return json("{}".into(), None);
    }
    if path == "/v2/_catalog" {
        state.catalog_requests.fetch_add(1, Ordering::Relaxed);
        let repos = state.repos.lock().unwrap();
        let hidden = state.catalog_hidden.lock().unwrap().clone();
        let (items, more) = page(repos.keys().filter(|r| !hidden.contains(*r)), &q);
        let l = if more {
            link(&state, &path, q.n.unwrap(), items.last().unwrap(), &first)
        } else {
            None
        };
        return json(serde_json::json!({ "repositories": items }).to_string(), l);
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return status(StatusCode::NOT_FOUND);
    };
    if let Some(repo) = rest.strip_suffix("/tags/list") {
        state.tags_requests.fetch_add(1, Ordering::Relaxed);
        *state
            .tags_requests_by_repo
            .lock()
            .unwrap()
            .entry(repo.to_owned())
            .or_default() += 1;
        let delay = *state.tags_delay.lock().unwrap();
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        if state.tags_not_found.lock().unwrap().contains(repo) {
            return status(StatusCode::NOT_FOUND);
        }
        let repos = state.repos.lock().unwrap();
        let Some(tags) = repos.get(repo) else {
            return status(StatusCode::NOT_FOUND);
        };
        let (items, more) = page(tags.keys(), &q);
        let l = if more {
            link(&state, &path, q.n.unwrap(), items.last().unwrap(), &first)
        } else {
            None
        };
        let mut body = serde_json::json!({ "name": repo, "tags": items });
        if *state.google_manifest.lock().unwrap() {
            let uploaded = state.upload_time_ms.lock().unwrap().clone();
            let uploaded = if uploaded.is_empty() {
                "1764230400000".to_owned()
            } else {
                uploaded
            };
            let mut manifest = serde_json::Map::new();
            for t in &items {
                manifest.insert(
                    tags[t].clone(),
                    serde_json::json!({ "tag": [t], "timeUploadedMs": uploaded }),
                );
            }
            body["manifest"] = manifest.into();
        }
        let mut r = json(body.to_string(), l);
        // Docker Hub's quota header, so the gauge can be checked.
        r.headers_mut().insert(
            "ratelimit-remaining",
            HeaderValue::from_static("97;w=21600"),
        );
        return r;
    }
    if let Some((repo, tag)) = rest.split_once("/manifests/") {
        if method == Method::HEAD {
            state.head_requests.fetch_add(1, Ordering::Relaxed);
        } else {
            state.get_manifest_requests.fetch_add(1, Ordering::Relaxed);
        }
        if state
            .head_missing
            .lock()
            .unwrap()
            .contains(&format!("{repo}:{tag}"))
        {
            return status(StatusCode::NOT_FOUND);
        }
        if state
            .head_failing
            .lock()
            .unwrap()
            .contains(&format!("{repo}:{tag}"))
        {
            return status(StatusCode::INTERNAL_SERVER_ERROR);
        }
        let repos = state.repos.lock().unwrap();
        let Some(d) = repos.get(repo).and_then(|t| t.get(tag)) else {
            return status(StatusCode::NOT_FOUND);
        };
        let mut r = status(StatusCode::OK);
        r.headers_mut()
            .insert("docker-content-digest", HeaderValue::from_str(d).unwrap());
        return r;
    }
    status(StatusCode::NOT_FOUND)
}

/// Serves `state` on a free loopback port in the current tokio runtime; returns `127.0.0.1:PORT`.
pub async fn serve(state: Arc<Synthetic>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    *state.host.lock().unwrap() = host.clone();
    let app = app(state);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    host
}

/// The registry as an app, for servers other than [`serve`] (e.g. `tls::serve_dual`).
pub fn app(state: Arc<Synthetic>) -> Router {
    Router::new().fallback(handle).with_state(state)
}
