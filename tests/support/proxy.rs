//! A fault-injecting HTTP proxy in front of a real registry: 500s, 429 with `Retry-After`, truncated
//! bodies, dropped `Link` headers and stalls, chosen at random per request with a set probability.
//! It logs every request it sees, so tests can measure request rates at the wire.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer 500 without asking upstream.
    Error500,
    /// Answer 429 with `Retry-After: N` seconds.
    TooManyRequests(u64),
    /// Forward, then cut the body in half.
    Truncate,
    /// Forward, then drop the `Link` header.
    DropLink,
    /// Wait this long, then forward.
    Stall(Duration),
    /// Forward, then serve this body instead of upstream's (a registry serving other content).
    Body(&'static str),
}

/// A request as the proxy saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: Instant,
    pub method: String,
    pub path: String,
    pub fault: Option<Fault>,
    /// Whether it carried an `Authorization` header.
    pub authorized: bool,
}

/// Shared proxy state.
pub struct ProxyState {
    upstream: String,
    client: reqwest::Client,
    /// Probability that a request gets a fault, and the faults to pick from.
    pub chaos: Mutex<(f64, Vec<Fault>)>,
    /// Faults for the first request to each path (then the path is served normally).
    pub first_request_fault: Mutex<Option<Fault>>,
    /// Every request seen.
    pub log: Mutex<Vec<Seen>>,
    /// A fault for every request whose path ends with this text, until cleared.
    pub path_fault: Mutex<Option<(String, Fault)>>,
    /// When set, blob GETs are answered `307` to this base URL plus the path, as registries send
    /// blob downloads to S3 or a CDN.
    pub redirect_blobs: Mutex<Option<String>>,
    /// Faults injected.
    pub injected: AtomicUsize,
}

impl ProxyState {
    /// Starts or stops random faults.
    pub fn set_chaos(&self, probability: f64, faults: Vec<Fault>) {
        *self.chaos.lock().unwrap() = (probability, faults);
    }

    fn pick(&self, path: &str) -> Option<Fault> {
        if let Some((end, f)) = &*self.path_fault.lock().unwrap()
            && path.ends_with(end.as_str())
        {
            return Some(*f);
        }
        if let Some(f) = *self.first_request_fault.lock().unwrap()
            && !self.log.lock().unwrap().iter().any(|s| s.path == path)
        {
            return Some(f);
        }
        let (p, faults) = self.chaos.lock().unwrap().clone();
        if faults.is_empty() || rand::random::<f64>() >= p {
            return None;
        }
        Some(faults[rand::random_range(0..faults.len())])
    }
}

async fn handle(State(state): State<Arc<ProxyState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let fault = state.pick(&path);
    state.log.lock().unwrap().push(Seen {
        at: Instant::now(),
        method: parts.method.to_string(),
        path: path.clone(),
        fault,
        authorized: parts.headers.contains_key("authorization"),
    });
    if fault.is_some() {
        state.injected.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(base) = &*state.redirect_blobs.lock().unwrap()
        && path.contains("/blobs/")
    {
        let mut r = plain(StatusCode::TEMPORARY_REDIRECT, "");
        r.headers_mut().insert(
            "location",
            HeaderValue::from_str(&format!("{base}{path}")).unwrap(),
        );
        return r;
    }
    match fault {
        Some(Fault::Error500) => return plain(StatusCode::INTERNAL_SERVER_ERROR, "injected"),
        Some(Fault::TooManyRequests(secs)) => {
            let mut r = plain(StatusCode::TOO_MANY_REQUESTS, "slow down");
            r.headers_mut()
                .insert("retry-after", HeaderValue::from(secs));
            return r;
        }
        Some(Fault::Stall(d)) => tokio::time::sleep(d).await,
        _ => {}
    }
    let upstream = match pass_on(&state.client, &state.upstream, &parts, body).await {
        Ok(r) => r,
        Err(e) => return plain(StatusCode::BAD_GATEWAY, &e.to_string()),
    };
    let status = upstream.status();
    let headers = upstream.headers().clone();
    let mut bytes = upstream.bytes().await.unwrap_or_default().to_vec();
    if fault == Some(Fault::Truncate) && !bytes.is_empty() {
        bytes.truncate(bytes.len() / 2);
    }
    if let Some(Fault::Body(other)) = fault {
        bytes = other.as_bytes().to_vec();
    }
    respond(status, &headers, bytes, |name| {
        !(fault == Some(Fault::DropLink) && name == "link")
    })
}

/// Sends a request (`parts`, `body`) on to `upstream` (`http://host:port`) as it came, but for
/// the `host` and `content-length` headers, which the client sets.
pub async fn pass_on(
    client: &reqwest::Client,
    upstream: &str,
    parts: &axum::http::request::Parts,
    body: Body,
) -> reqwest::Result<reqwest::Response> {
    let body: Bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let url = format!(
        "{}{}",
        upstream,
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut forward = client.request(parts.method.clone(), url).body(body);
    for (name, value) in &parts.headers {
        if name != "host" && name != "content-length" {
            forward = forward.header(name, value);
        }
    }
    forward.send().await
}

/// Upstream's answer (`status`, `headers`, `body`) as a response, keeping the headers `keep`
/// accepts but for `content-length` and `transfer-encoding`, which the server sets.
pub fn respond(
    status: StatusCode,
    headers: &HeaderMap,
    body: impl Into<Body>,
    keep: impl Fn(&HeaderName) -> bool,
) -> Response {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    for (name, value) in headers {
        if name == "content-length" || name == "transfer-encoding" || !keep(name) {
            continue;
        }
        response.headers_mut().append(name, value.clone());
    }
    response
}

fn plain(status: StatusCode, text: &str) -> Response {
    let mut r = Response::new(Body::from(text.to_owned()));
    *r.status_mut() = status;
    r
}

/// Starts a proxy to `upstream` (`http://host:port`) on a free loopback port, in the current runtime.
pub async fn start(upstream: &str) -> (Arc<ProxyState>, String) {
    let state = Arc::new(ProxyState {
        upstream: upstream.trim_end_matches('/').to_owned(),
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        chaos: Mutex::new((0.0, Vec::new())),
        first_request_fault: Mutex::new(None),
        log: Mutex::new(Vec::new()),
        path_fault: Mutex::new(None),
        redirect_blobs: Mutex::new(None),
        injected: AtomicUsize::new(0),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let app = Router::new().fallback(handle).with_state(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (state, host)
}
