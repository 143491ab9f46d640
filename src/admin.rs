//! The admin HTTP endpoint on `daemon.admin_listen`: `/metrics`, `/healthz`, `/readyz`, and
//! `POST /hooks/<registry>` push hints.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use hyper::body::Incoming;
use hyper::service::Service as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, watch};

use crate::metrics;
use crate::webhook::pushed_repositories;

/// The largest webhook body read. Push notifications are a few KiB; a batch of distribution events
/// stays well below this.
pub const HOOK_BODY_CAP: usize = 64 * 1024;

/// What `/readyz` reports: every registry scanned once, and Kafka reachable when configured.
pub struct Readiness {
    unscanned: Mutex<BTreeSet<String>>,
    /// Every configured registry.
    registries: Mutex<BTreeSet<String>>,
    /// Whether Kafka is configured (a reload may change it), and whether it answered.
    kafka: (AtomicBool, AtomicBool),
    /// Cluster mode: why the replica's assigned state is not restored yet; `None` when it is (or
    /// on a single node).
    restoring: Mutex<Option<String>>,
    /// Registries whose last scan panicked, and the panic, until a cycle completes.
    down: Mutex<std::collections::BTreeMap<String, String>>,
    /// Per registry, the completed cycles in a row that left changes unrecorded (see
    /// [`Readiness::recorded`]).
    unrecorded: Mutex<std::collections::BTreeMap<String, u32>>,
}

/// Completed cycles in a row that left changes unrecorded after which a registry shows on
/// `/readyz`: one or two are normal (a cycle that raced a rebalance or another writer records at
/// the next), a broker refusing every write is not.
const UNRECORDED_CYCLES_UNREADY: u32 = 3;

impl Readiness {
    /// Not ready until each of `registries` completes a scan (and Kafka, if `kafka`, answers).
    pub fn new(registries: impl IntoIterator<Item = String>, kafka: bool) -> Self {
        let registries: BTreeSet<String> = registries.into_iter().collect();
        Readiness {
            unscanned: Mutex::new(registries.clone()),
            registries: Mutex::new(registries),
            kafka: (AtomicBool::new(kafka), AtomicBool::new(false)),
            restoring: Mutex::new(None),
            down: Mutex::default(),
            unrecorded: Mutex::default(),
        }
    }

    /// Records that a scan of `registry` panicked: not ready until one of its cycles completes.
    /// (Not for a registry a reload removed, whose loop may still be finishing a cycle.)
    pub fn down(&self, registry: &str, why: String) {
        if self.configured(registry) {
            self.down
                .lock()
                .expect("readiness lock")
                .insert(registry.to_owned(), why);
        }
    }

    /// Records whether a completed cycle of `registry` recorded every change it found (see
    /// [`UNRECORDED_CYCLES_UNREADY`]).
    pub fn recorded(&self, registry: &str, all: bool) {
        if !self.configured(registry) {
            return;
        }
        let mut unrecorded = self.unrecorded.lock().expect("readiness lock");
        if all {
            unrecorded.remove(registry);
        } else {
            *unrecorded.entry(registry.to_owned()).or_default() += 1;
        }
    }

    fn configured(&self, registry: &str) -> bool {
        self.registries
            .lock()
            .expect("readiness lock")
            .contains(registry)
    }

    /// Cluster mode: records why the assigned state is not restored (`None`: it is).
    pub fn restoring(&self, why: Option<String>) {
        *self.restoring.lock().expect("readiness lock") = why;
    }

    /// Cluster mode: repositories were taken over, so every registry must scan again before the
    /// replica is ready.
    pub fn rescan_all(&self) {
        let all = self.registries.lock().expect("readiness lock").clone();
        *self.unscanned.lock().expect("readiness lock") = all;
    }

    /// Follows a reload: `added` registries wait for their first scan, `removed` ones are no longer
    /// awaited, the others keep their state; `kafka` says whether Kafka is now configured.
    pub fn reconfigure(&self, added: &[String], removed: &[String], kafka: bool) {
        let mut unscanned = self.unscanned.lock().expect("readiness lock");
        let mut registries = self.registries.lock().expect("readiness lock");
        unscanned.extend(added.iter().cloned());
        registries.extend(added.iter().cloned());
        let mut down = self.down.lock().expect("readiness lock");
        let mut unrecorded = self.unrecorded.lock().expect("readiness lock");
        for r in removed {
            unscanned.remove(r);
            registries.remove(r);
            down.remove(r);
            unrecorded.remove(r);
        }
        self.kafka.0.store(kafka, Ordering::Relaxed);
    }

    /// Records that `registry` completed a scan.
    pub fn scanned(&self, registry: &str) {
        self.unscanned
            .lock()
            .expect("readiness lock")
            .remove(registry);
        self.down.lock().expect("readiness lock").remove(registry);
    }

    /// Records whether Kafka answered the last probe.
    pub fn kafka_reachable(&self, ok: bool) {
        self.kafka.1.store(ok, Ordering::Relaxed);
    }

    /// `Ok` when ready, else why not.
    pub fn check(&self) -> Result<(), String> {
        if let Some(why) = self.restoring.lock().expect("readiness lock").clone() {
            return Err(why);
        }
        if let Some(why) = self.down.lock().expect("readiness lock").values().next() {
            return Err(why.clone());
        }
        if let Some((registry, cycles)) = self
            .unrecorded
            .lock()
            .expect("readiness lock")
            .iter()
            .find(|(_, cycles)| **cycles >= UNRECORDED_CYCLES_UNREADY)
        {
            return Err(format!(
                "the changes found in {registry} were not recorded in its last {cycles} cycles; see the WARN log"
            ));
        }
        let unscanned = self.unscanned.lock().expect("readiness lock");
        if let Some(first) = unscanned.iter().next() {
            return Err(format!(
                "waiting for the first scan of {first} ({} registries left)",
                unscanned.len()
            ));
        }
        if self.kafka.0.load(Ordering::Relaxed) && !self.kafka.1.load(Ordering::Relaxed) {
            return Err("kafka unreachable".into());
        }
        Ok(())
    }
}

/// A registry's webhook: its token and where hints go.
pub struct Hook {
    /// The shared secret callers must present.
    pub token: SecretString,
    /// The registry loop's hint queue.
    pub hints: mpsc::Sender<String>,
}

#[derive(Clone)]
struct AppState {
    readiness: Arc<Readiness>,
    hooks: Arc<HashMap<String, Hook>>,
}

/// The admin router.
pub fn router(readiness: Arc<Readiness>, hooks: HashMap<String, Hook>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/hooks/{registry}", post(hook))
        .with_state(AppState {
            readiness,
            hooks: Arc::new(hooks),
        })
}

/// How the admin endpoint bounds its clients: open connections, and the time a request's head may
/// take to arrive.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open connections at most; past it, the oldest connection that is not serving a request
    /// is closed to make room (see [`serve_with`]).
    pub max_connections: usize,
    /// How long a client may take to send a request's head, idle keep-alive time included.
    pub header_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        // 512 keeps the endpoint within half of systemd's default soft RLIMIT_NOFILE (1024);
        // webhook senders and scrapers send their head at once, so 10 s only ever cuts stallers.
        Limits {
            max_connections: 512,
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves the admin endpoint on `listener` until `shutdown` turns true, with [`Limits::default`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: watch::Receiver<bool>,
) {
    serve_with(listener, app, shutdown, Limits::default()).await;
}

/// One open connection, as the accept loop sees it.
struct Open {
    /// Whether a request head ever arrived on it.
    served: AtomicBool,
    /// Requests being handled on it now.
    in_flight: AtomicUsize,
}

/// Counts a request as in flight for as long as it lives.
struct InFlight(Arc<Open>);

impl InFlight {
    fn start(open: &Arc<Open>) -> InFlight {
        open.served.store(true, Ordering::Relaxed);
        open.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(open.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves like [`serve`], within `limits`. Stalled clients cannot starve the others: each gets
/// `header_read_timeout` to send a request's head, and once `max_connections` are open a new
/// connection closes the oldest one that never sent a head, else the oldest idle one (a new
/// connection is refused only when every open one is mid-request). Without this, 2,000 clients
/// that connect and say nothing hold 2,000 descriptors forever; under systemd's soft limit of
/// 1024, accept then fails with EMFILE and `/healthz` goes unanswered, scans fail, and so on.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    app: Router,
    mut shutdown: watch::Receiver<bool>,
    limits: Limits,
) {
    let max = limits.max_connections.max(1);
    let mut tasks = tokio::task::JoinSet::new();
    // Accept order is eviction order: the oldest connection goes first.
    let mut open: BTreeMap<u64, (Arc<Open>, tokio::task::AbortHandle)> = BTreeMap::new();
    let mut next_id = 0u64;
    let (finished_tx, mut finished) = mpsc::unbounded_channel::<u64>();
    let mut accept_failing = false;
    loop {
        let stream = tokio::select! {
            () = stopped(&mut shutdown) => break,
            Some(id) = finished.recv() => {
                open.remove(&id);
                continue;
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    accept_failing = false;
                    stream
                }
                Err(e) => {
                    // EMFILE and the like: wait a little rather than spin; say so once per streak.
                    if !accept_failing {
                        tracing::warn!(error = %e, "admin endpoint cannot accept connections");
                        accept_failing = true;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Connections that ended since are still listed until their message is read.
        while let Ok(id) = finished.try_recv() {
            open.remove(&id);
        }
        if open.len() >= max {
            let victim = open
                .iter()
                .find(|(_, (o, _))| !o.served.load(Ordering::Relaxed))
                .or_else(|| {
                    open.iter()
                        .find(|(_, (o, _))| o.in_flight.load(Ordering::Relaxed) == 0)
                })
                .map(|(id, _)| *id);
            match victim {
                Some(id) => {
                    if let Some((_, handle)) = open.remove(&id) {
                        handle.abort();
                    }
                    metrics::get().admin_connections_closed.inc();
                }
                None => {
                    // Every slot is serving a request: this one waits for nobody.
                    metrics::get().admin_connections_closed.inc();
                    drop(stream);
                    continue;
                }
            }
        }
        let id = next_id;
        next_id += 1;
        let state = Arc::new(Open {
            served: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
        });
        let handle = tasks.spawn(connection(
            stream,
            app.clone(),
            state.clone(),
            limits.header_read_timeout,
            shutdown.clone(),
            Finished(id, finished_tx.clone()),
        ));
        open.insert(id, (state, handle));
    }
    // Stop accepting; let each connection finish the request it is serving (idle ones close).
    drop(listener);
    while tasks.join_next().await.is_some() {}
}

/// Returns once `shutdown` turns true (or its sender is gone), holding no borrow of it after.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// Tells the accept loop that connection `.0` ended, however it ended (aborted included).
struct Finished(u64, mpsc::UnboundedSender<u64>);

impl Drop for Finished {
    fn drop(&mut self) {
        let _ = self.1.send(self.0);
    }
}

/// Serves one HTTP/1 connection until it closes, or until `shutdown` (then gracefully).
async fn connection(
    stream: tokio::net::TcpStream,
    app: Router,
    open: Arc<Open>,
    header_read_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
    _finished: Finished,
) {
    let inner = TowerToHyperService::new(app);
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let in_flight = InFlight::start(&open);
        let response = inner.call(request);
        async move {
            let response = response.await;
            drop(in_flight);
            response
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    // A failed connection (a client gone, a head too slow) concerns that client only.
    tokio::select! {
        _ = conn.as_mut() => {}
        () = stopped(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.readiness.check() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response(),
    }
}

async fn metrics_text() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics::get().render(),
    )
        .into_response()
}

fn presented_token<'a>(
    headers: &'a HeaderMap,
    query: &'a HashMap<String, String>,
) -> Option<&'a str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| query.get("token").map(String::as_str))
}

/// Whether `presented` is the configured `token`, compared in constant time. An empty token on
/// either side never matches, whatever the config says: config loading refuses an empty secret,
/// and this keeps `?token=` from opening a hook should one ever get through.
fn token_matches(presented: Option<&str>, token: &SecretString) -> bool {
    let expected = token.expose_secret().as_bytes();
    match presented {
        Some(p) if !p.is_empty() && !expected.is_empty() => {
            bool::from(p.as_bytes().ct_eq(expected))
        }
        _ => false,
    }
}

async fn hook(
    State(state): State<AppState>,
    Path(registry): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    // The raw body, not `Bytes`: an extractor would read it before the token is checked.
    body: Body,
) -> Response {
    // A registry without a webhook answers exactly as a wrong token does: a 404 would tell anyone
    // which registries have webhooks.
    let hook = state.hooks.get(&registry);
    let Some(hook) = hook.filter(|h| token_matches(presented_token(&headers, &query), &h.token))
    else {
        // Debug-quoted: the name may be anything a caller put in the path.
        tracing::warn!(registry = ?registry, "webhook with a missing or wrong token, or for no webhook");
        return (StatusCode::UNAUTHORIZED, "missing or wrong token\n").into_response();
    };
    let body = match read_capped(&headers, body).await {
        Ok(body) => body,
        Err(refusal) => {
            tracing::warn!(%registry, "webhook body refused: {}", refusal.1.trim_end());
            return refusal.into_response();
        }
    };
    let repos = match pushed_repositories(&body) {
        Ok(repos) => repos,
        Err(reason) => {
            tracing::warn!(%registry, %reason, bytes = body.len(), "webhook body refused");
            return (StatusCode::BAD_REQUEST, format!("{reason}\n")).into_response();
        }
    };
    metrics::get()
        .webhooks
        .get_or_create(&metrics::registry_label(&registry))
        .inc();
    for repo in repos {
        tracing::debug!(%registry, repository = %repo, "webhook hint");
        // A full queue already holds scans to run; the periodic scan covers anything dropped.
        let _ = hook.hints.try_send(repo);
    }
    (StatusCode::ACCEPTED, "scan queued\n").into_response()
}

/// Reads a webhook body of at most [`HOOK_BODY_CAP`] bytes: 413 beyond it (at once when
/// `Content-Length` says so), 400 when the body breaks off.
async fn read_capped(
    headers: &HeaderMap,
    body: Body,
) -> Result<Vec<u8>, (StatusCode, &'static str)> {
    const TOO_LARGE: (StatusCode, &str) = (
        StatusCode::PAYLOAD_TOO_LARGE,
        "webhook body larger than 64 KiB\n",
    );
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > HOOK_BODY_CAP as u64) {
        return Err(TOO_LARGE);
    }
    let mut out = Vec::new();
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| (StatusCode::BAD_REQUEST, "webhook body unreadable\n"))?;
        if out.len() + chunk.len() > HOOK_BODY_CAP {
            return Err(TOO_LARGE);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_is_ready_only_once_restored_and_scanned_again() {
        let r = Readiness::new(["a".to_string()], false);
        r.restoring(Some("joining the cluster's consumer group".into()));
        r.scanned("a");
        assert_eq!(
            r.check().unwrap_err(),
            "joining the cluster's consumer group"
        );
        // Restored: what it took over must be scanned before it is ready.
        r.rescan_all();
        r.restoring(None);
        assert!(r.check().unwrap_err().contains("first scan of a"));
        r.scanned("a");
        assert_eq!(r.check(), Ok(()));
    }

    /// A registry's changes not recorded: not ready once three cycles in a row left some, ready
    /// again at the first that records all; a reload that rebuilds the loop does not reset it.
    #[test]
    fn unrecorded_changes_three_cycles_in_a_row_make_a_registry_unready() {
        let r = Readiness::new(["a".to_string()], false);
        r.scanned("a");
        r.recorded("a", false);
        r.recorded("a", false);
        assert_eq!(r.check(), Ok(()), "one or two such cycles are normal");
        r.recorded("a", true);
        r.recorded("a", false);
        r.recorded("a", false);
        // A reload rebuilt the loop, whose first cycle completes: still not recorded.
        r.reconfigure(&[], &[], false);
        r.scanned("a");
        r.recorded("a", false);
        let why = r.check().unwrap_err();
        assert!(why.contains("a") && why.contains("not recorded"), "{why}");
        r.recorded("a", true);
        assert_eq!(r.check(), Ok(()));
    }

    /// A reload that removes a registry whose loop is still finishing a cycle: what that cycle
    /// reports (a panic, changes not recorded) must not keep /readyz at 503 for good.
    #[test]
    fn a_removed_registry_retiring_loop_cannot_make_the_daemon_unready() {
        let r = Readiness::new(["a".to_string(), "b".to_string()], false);
        r.scanned("a");
        r.scanned("b");
        r.reconfigure(&[], &["a".to_string()], false);
        r.down("a", "a scan of a panicked; see the ERROR log".into());
        for _ in 0..3 {
            r.recorded("a", false);
        }
        assert_eq!(r.check(), Ok(()));
    }
}
