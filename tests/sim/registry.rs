//! The simulated registry: a Distribution API (`_catalog`, `tags/list`, manifest `HEAD`) over an
//! in-memory state that the operations change, with the quirks real registries have, each switched
//! per run, and faults injected per request from a seeded generator. It also logs which
//! repositories a step's requests touched and which of them were faulted, so that the checker
//! knows where "nothing happened" is an acceptable outcome.
//!
//! Paging follows the Distribution spec (`n`, `last`, `Link: <…>; rel="next"`) unless a quirk says
//! otherwise. Every quirk is something a real registry does; see the `Quirks` fields.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One tag as the registry holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimTag {
    /// The digest the tag's manifest has.
    pub digest: String,
    /// The manifest is gone (garbage collected) while the tag is still listed: HEAD answers 404.
    pub dangling: bool,
    /// What a Google-style `manifest` map says in `timeUploadedMs`.
    pub uploaded: Uploaded,
}

/// A `timeUploadedMs` value, friendly or hostile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uploaded {
    /// Milliseconds since the epoch, in range.
    Ms(u64),
    /// Year 10000 (one millisecond past 9999-12-31T23:59:59.999Z).
    Year10000,
    /// `u64::MAX` milliseconds.
    Max,
    /// A negative number, which no unsigned parse accepts.
    Negative,
    /// Not a number.
    Garbage,
}

impl Uploaded {
    fn json(self) -> String {
        match self {
            Uploaded::Ms(ms) => ms.to_string(),
            Uploaded::Year10000 => "253402300800000".into(),
            Uploaded::Max => u64::MAX.to_string(),
            Uploaded::Negative => "-86400000".into(),
            Uploaded::Garbage => "soon".into(),
        }
    }

    /// What `data.pushed_at` must say: the RFC 3339 time in range, else null.
    pub fn expected_rfc3339(self) -> Option<String> {
        match self {
            Uploaded::Ms(ms) => Some(
                humantime::format_rfc3339_millis(
                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
                )
                .to_string(),
            ),
            _ => None,
        }
    }
}

/// How `Link` headers are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkMode {
    /// Relative `Link` on every page that has a successor (the spec).
    Relative,
    /// Absolute `Link` (`http://host/v2/…`).
    Absolute,
    /// No `Link` at all: the client must ask again with `last=` after a full page.
    None,
    /// `Link` on every other page only.
    SomePages,
}

/// The quirks of one run.
#[derive(Debug, Clone, Copy)]
pub struct Quirks {
    /// How pages link to their successors.
    pub link: LinkMode,
    /// `last` is ignored: every page starts from the beginning (a registry that honours `n`
    /// only). No listing longer than `n` can be read completely from it.
    pub ignore_last: bool,
    /// `n` is ignored: the whole remainder comes in one page.
    pub ignore_n: bool,
    /// `n` is capped at this many entries (a `Link` then always follows, as the spec demands of a
    /// registry that returns fewer than asked).
    pub cap_n: Option<usize>,
    /// `tags/list` carries Google's `manifest` map (digest → tags and upload time).
    pub google: bool,
    /// The map holds hostile entries: a second, bogus digest for some tags, an invalid digest.
    pub hostile_map: bool,
    /// Every page repeats its first name.
    pub duplicates: bool,
    /// `tags/list` answers 307 to the same path under `/mirror`.
    pub redirect: bool,
}

impl Quirks {
    /// Whether a list of `names` can be read completely from this registry at `page_size`: not
    /// when it ignores `last` and the first page cannot hold them all (every page is the first).
    pub fn listable(&self, names: usize, page_size: usize) -> bool {
        let first_page = if self.ignore_n { usize::MAX } else { page_size };
        !self.ignore_last || names <= first_page.min(self.cap_n.unwrap_or(usize::MAX))
    }
}

/// Faults injected into the requests of one step, in percent per request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// 404 on any request.
    pub not_found: u8,
    /// 500 on any request.
    pub server_error: u8,
    /// 429 with `Retry-After: 0`.
    pub throttled: u8,
}

/// What the registry holds and how it behaves.
pub struct SimState {
    /// Repository → tag → tag state.
    pub repos: BTreeMap<String, BTreeMap<String, SimTag>>,
    /// Repositories the catalog does not list yet (a lagging catalog).
    pub catalog_hidden: BTreeSet<String>,
    /// This run's quirks.
    pub quirks: Quirks,
    /// This step's faults.
    pub faults: Faults,
    rng: StdRng,
    /// Repositories whose `tags/list` was asked for this step.
    pub listed: BTreeSet<String>,
    /// Repositories any of whose requests got an injected fault this step (`*` for the catalog).
    pub faulted: BTreeSet<String>,
    /// `repo:tag` whose HEAD got an injected 404 this step (the tag looks dangling to the client).
    pub head_faulted: BTreeSet<(String, String)>,
    host: String,
}

impl SimState {
    /// Forgets the last step's request log and faults.
    pub fn new_step(&mut self, faults: Faults) {
        self.faults = faults;
        self.listed.clear();
        self.faulted.clear();
        self.head_faulted.clear();
    }

    /// An injected fault for a request about `repo`, if the dice say so.
    fn fault(&mut self, repo: &str) -> Option<StatusCode> {
        let f = self.faults;
        let roll: u8 = self.rng.random_range(0..100);
        let status = if roll < f.not_found {
            StatusCode::NOT_FOUND
        } else if roll < f.not_found.saturating_add(f.server_error) {
            StatusCode::INTERNAL_SERVER_ERROR
        } else if roll < f.not_found + f.server_error + f.throttled {
            StatusCode::TOO_MANY_REQUESTS
        } else {
            return None;
        };
        self.faulted.insert(repo.to_owned());
        Some(status)
    }
}

/// The shared registry.
pub type Sim = Arc<Mutex<SimState>>;

/// A registry with `quirks`, faults drawn from `seed`.
pub fn new(quirks: Quirks, seed: u64) -> Sim {
    Arc::new(Mutex::new(SimState {
        repos: BTreeMap::new(),
        catalog_hidden: BTreeSet::new(),
        quirks,
        faults: Faults::default(),
        rng: StdRng::seed_from_u64(seed),
        listed: BTreeSet::new(),
        faulted: BTreeSet::new(),
        head_faulted: BTreeSet::new(),
        host: String::new(),
    }))
}

fn status(code: StatusCode) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = code;
    if code == StatusCode::TOO_MANY_REQUESTS {
        r.headers_mut()
            .insert("retry-after", HeaderValue::from_static("0"));
    }
    r
}

fn query(uri: &Uri) -> (Option<usize>, Option<String>) {
    let (mut n, mut last) = (None, None);
    for (k, v) in url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        match &*k {
            "n" => n = v.parse().ok(),
            "last" => last = Some(v.into_owned()),
            _ => {}
        }
    }
    (n, last)
}

/// One page of `names` (sorted) for `n`/`last` as the quirks read them, and the `Link` to send.
fn page(s: &SimState, path: &str, names: &[String], uri: &Uri) -> (Vec<String>, Option<String>) {
    let q = s.quirks;
    let (n_asked, last) = query(uri);
    let last = if q.ignore_last { None } else { last };
    let mut n = if q.ignore_n {
        usize::MAX
    } else {
        n_asked.unwrap_or(usize::MAX)
    };
    if let Some(cap) = q.cap_n {
        n = n.min(cap);
    }
    let start = last
        .as_ref()
        .map_or(0, |l| names.partition_point(|x| x <= l));
    let end = start.saturating_add(n).min(names.len());
    let mut items = names[start..end].to_vec();
    let more = end < names.len();
    let page_number = start / n.max(1);
    let link_mode = if q.cap_n.is_some() {
        LinkMode::Relative
    } else {
        q.link
    };
    let link = match (more, items.last()) {
        (true, Some(after)) => {
            let rel = format!(
                "{path}?n={}&last={after}",
                n_asked.map_or(String::new(), |n| n.to_string())
            );
            match link_mode {
                LinkMode::Relative => Some(rel),
                LinkMode::Absolute => Some(format!("http://{}{rel}", s.host)),
                LinkMode::None => None,
                LinkMode::SomePages => page_number.is_multiple_of(2).then_some(rel),
            }
        }
        _ => None,
    };
    if q.duplicates && !items.is_empty() {
        items.push(items[0].clone());
    }
    (items, link)
}

fn json(body: serde_json::Value, link: Option<String>) -> Response {
    let mut r = Response::new(Body::from(body.to_string()));
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    if let Some(l) = link
        && let Ok(v) = HeaderValue::from_str(&format!("<{l}>; rel=\"next\""))
    {
        r.headers_mut().insert("link", v);
    }
    r
}

/// A digest that is well-formed but names nothing this registry holds.
fn bogus_digest(tag: &str) -> String {
    use sha2::Digest as _;
    format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(format!("bogus:{tag}")))
    )
}

fn tags_list(s: &mut SimState, repo: &str, path: &str, uri: &Uri) -> Response {
    s.listed.insert(repo.to_owned());
    if let Some(code) = s.fault(repo) {
        return status(code);
    }
    let Some(tags) = s.repos.get(repo) else {
        return status(StatusCode::NOT_FOUND);
    };
    let names: Vec<String> = tags.keys().cloned().collect();
    let (items, link) = page(s, path, &names, uri);
    let mut body = serde_json::json!({ "name": repo, "tags": items });
    if s.quirks.google {
        let mut map = serde_json::Map::new();
        let mut push = |digest: String, tag: &str, uploaded: String| {
            let entry = map
                .entry(digest)
                .or_insert_with(|| serde_json::json!({ "tag": [], "timeUploadedMs": uploaded }));
            if let Some(list) = entry["tag"].as_array_mut() {
                list.push(tag.into());
            }
        };
        let page_tags: BTreeSet<&String> = items.iter().collect();
        for t in page_tags {
            let tag = &tags[t];
            // Google lists only manifests that exist; a dangling tag has none.
            if !tag.dangling {
                push(tag.digest.clone(), t, tag.uploaded.json());
            }
            if s.quirks.hostile_map && t.len().is_multiple_of(2) {
                // The same tag under a second manifest, and an entry whose digest is malformed.
                push(bogus_digest(t), t, Uploaded::Ms(1).json());
                push(
                    format!("sha256:{}", "Z".repeat(64)),
                    t,
                    Uploaded::Ms(1).json(),
                );
            }
        }
        body["manifest"] = map.into();
    }
    json(body, link)
}

fn catalog(s: &mut SimState, path: &str, uri: &Uri) -> Response {
    if let Some(code) = s.fault("*") {
        return status(code);
    }
    let names: Vec<String> = s
        .repos
        .keys()
        .filter(|r| !s.catalog_hidden.contains(*r))
        .cloned()
        .collect();
    let (items, link) = page(s, path, &names, uri);
    json(serde_json::json!({ "repositories": items }), link)
}

fn head(s: &mut SimState, repo: &str, tag: &str) -> Response {
    if let Some(code) = s.fault(repo) {
        if code == StatusCode::NOT_FOUND {
            s.head_faulted.insert((repo.to_owned(), tag.to_owned()));
        }
        return status(code);
    }
    let Some(t) = s.repos.get(repo).and_then(|tags| tags.get(tag)) else {
        return status(StatusCode::NOT_FOUND);
    };
    if t.dangling {
        return status(StatusCode::NOT_FOUND);
    }
    let mut r = status(StatusCode::OK);
    if let Ok(v) = HeaderValue::from_str(&t.digest) {
        r.headers_mut().insert("docker-content-digest", v);
    }
    r
}

async fn handle(State(sim): State<Sim>, method: Method, uri: Uri) -> Response {
    let mut s = sim.lock().unwrap();
    let mut path = uri.path().to_owned();
    if let Some(rest) = path.strip_prefix("/mirror") {
        path = rest.to_owned();
    } else if s.quirks.redirect && path.ends_with("/tags/list") {
        let mut r = status(StatusCode::TEMPORARY_REDIRECT);
        let target = format!("/mirror{}", uri.path_and_query().map_or("", |p| p.as_str()));
        r.headers_mut()
            .insert("location", HeaderValue::from_str(&target).unwrap());
        return r;
    }
    if path == "/v2/" {
        return json(serde_json::json!({}), None);
    }
    if path == "/v2/_catalog" {
        return catalog(&mut s, &path, &uri);
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return status(StatusCode::NOT_FOUND);
    };
    if let Some(repo) = rest.strip_suffix("/tags/list") {
        return tags_list(&mut s, repo, &path, &uri);
    }
    if let Some((repo, tag)) = rest.split_once("/manifests/")
        && method == Method::HEAD
    {
        return head(&mut s, repo, tag);
    }
    status(StatusCode::NOT_FOUND)
}

/// Serves `sim` on a free loopback port; returns `127.0.0.1:PORT` and the server task.
pub async fn serve(sim: Sim) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    sim.lock().unwrap().host = host.clone();
    let app = axum::Router::new().fallback(handle).with_state(sim);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (host, task)
}
