//! Cluster mode harness: `regwatch run` replicas sharing a consumer group, a proxy in front of the
//! registry that attributes every request to the replica process that sent it (so a test can tell
//! which replica scanned which repository), a tail of the events topic, and metric sums.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::Response;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;

use super::{Setup, free_port};

/// A request the attributing proxy forwarded.
#[derive(Debug, Clone)]
pub struct Hit {
    pub at: Instant,
    pub method: String,
    pub path: String,
    pub status: u16,
    /// The replica process whose socket sent it, among the watched pids.
    pub pid: Option<u32>,
}

/// A forwarding proxy that logs each request with the pid of the process that opened the
/// connection (looked up in /proc while the connection is open).
pub struct Attributing {
    upstream: String,
    client: reqwest::Client,
    port: u16,
    pids: Mutex<Vec<u32>>,
    /// Every request seen.
    pub log: Mutex<Vec<Hit>>,
    /// The replica whose manifest lookups are held (see [`Attributing::hold`]), and how many
    /// are held now.
    held: Mutex<(Option<u32>, usize)>,
    released: tokio::sync::Notify,
}

impl Attributing {
    /// Starts a proxy to `upstream` (`http://host:port`); returns it and its `http://` URL.
    pub async fn start(upstream: &str) -> (Arc<Attributing>, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Attributing {
            upstream: upstream.trim_end_matches('/').to_owned(),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            port,
            pids: Mutex::new(Vec::new()),
            log: Mutex::new(Vec::new()),
            held: Mutex::new((None, 0)),
            released: tokio::sync::Notify::new(),
        });
        let app = Router::new().fallback(forward).with_state(state.clone());
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .unwrap()
        });
        (state, format!("http://127.0.0.1:{port}"))
    }

    /// Holds the manifest lookups (`HEAD`) of replica `pid` until [`Attributing::release`]: its
    /// scan stays mid-cycle, between reading what it owns and committing.
    pub fn hold(&self, pid: u32) {
        self.held.lock().unwrap().0 = Some(pid);
    }

    /// How many requests are held now.
    pub fn holding(&self) -> usize {
        self.held.lock().unwrap().1
    }

    /// Answers the held requests, and holds no more.
    pub fn release(&self) {
        self.held.lock().unwrap().0 = None;
        self.released.notify_waiters();
    }

    /// Attributes requests from `pid` from now on.
    pub fn watch(&self, pid: u32) {
        self.pids.lock().unwrap().push(pid);
    }

    /// `GET /v2/<repo>/tags/list` requests seen in `[from, to)`: (repository, pid, when).
    pub fn tag_lists(&self, from: Instant, to: Instant) -> Vec<(String, Option<u32>, Instant)> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|h| h.method == "GET" && h.at >= from && h.at < to)
            .filter_map(|h| Some((tags_list_repo(&h.path)?, h.pid, h.at)))
            .collect()
    }

    /// `GET /v2/_catalog` requests seen in `[from, to)`.
    pub fn catalogs(&self, from: Instant, to: Instant) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|h| h.at >= from && h.at < to && h.path == "/v2/_catalog")
            .count()
    }

    /// The replica that last listed each repository's tags before `before`.
    pub fn last_lister(&self, before: Instant) -> HashMap<String, u32> {
        let mut out = HashMap::new();
        for (repo, pid, _) in self.tag_lists(Instant::now() - Duration::from_secs(3600), before) {
            if let Some(pid) = pid {
                out.insert(repo, pid);
            }
        }
        out
    }

    /// The first listing of `repo` at or after `from`: (pid, when).
    pub fn first_list_after(&self, repo: &str, from: Instant) -> Option<(Option<u32>, Instant)> {
        self.tag_lists(from, Instant::now() + Duration::from_secs(1))
            .into_iter()
            .find(|(r, _, _)| r == repo)
            .map(|(_, pid, at)| (pid, at))
    }
}

fn tags_list_repo(path: &str) -> Option<String> {
    path.strip_prefix("/v2/")?
        .strip_suffix("/tags/list")
        .map(str::to_owned)
}

/// The pid among `pids` that holds the TCP connection from `peer` to our `port`. On Linux each
/// socket is a `socket:[inode]` link under /proc/<pid>/fd and /proc/net/tcp maps endpoints to inodes.
fn pid_of_peer(peer: SocketAddr, port: u16, pids: &[u32]) -> Option<u32> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let port_of = |endpoint: &str| u16::from_str_radix(endpoint.rsplit(':').next()?, 16).ok();
    let inode = table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() > 9 && port_of(f[1])? == peer.port() && port_of(f[2])? == port)
            .then(|| f[9].to_owned())
    })?;
    let link = format!("socket:[{inode}]");
    pids.iter().copied().find(|pid| {
        std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
            fds.flatten().any(|fd| {
                std::fs::read_link(fd.path()).is_ok_and(|t| t.as_os_str() == link.as_str())
            })
        })
    })
}

async fn forward(
    State(state): State<Arc<Attributing>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let pids = state.pids.lock().unwrap().clone();
    let pid = pid_of_peer(peer, state.port, &pids);
    let at = Instant::now();
    let record = |status: u16| {
        state.log.lock().unwrap().push(Hit {
            at,
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            status,
            pid,
        })
    };
    let hold = |held: &mut (Option<u32>, usize)| {
        let on = held.0.is_some() && held.0 == pid && parts.method == axum::http::Method::HEAD;
        held.1 += usize::from(on);
        on
    };
    // Registered before the check, so that a release in between is not missed.
    let released = state.released.notified();
    tokio::pin!(released);
    released.as_mut().enable();
    if hold(&mut state.held.lock().unwrap()) {
        released.await;
        state.held.lock().unwrap().1 -= 1;
    }
    let answer = match super::proxy::pass_on(&state.client, &state.upstream, &parts, body).await {
        Ok(r) => r,
        Err(e) => {
            record(502);
            let mut r = Response::new(Body::from(e.to_string()));
            *r.status_mut() = axum::http::StatusCode::BAD_GATEWAY;
            return r;
        }
    };
    let status = answer.status();
    record(status.as_u16());
    let headers = answer.headers().clone();
    let bytes = answer.bytes().await.unwrap_or_default();
    super::proxy::respond(status, &headers, bytes, |_| true)
}

/// What every replica of one cluster shares in its config.
#[derive(Clone)]
pub struct Opts {
    pub brokers: String,
    pub topic: String,
    /// The registry URL the replicas watch (the attributing proxy's).
    pub registry_url: String,
    /// `daemon.interval`, e.g. `"2s"`.
    pub interval: String,
    /// Extra `[kafka]` lines, e.g. `create_topic = false`.
    pub kafka_extra: String,
    /// `[kafka.properties]` lines.
    pub properties: String,
    /// The `[cluster]` lines.
    pub cluster: String,
    /// The registry's webhook token.
    pub token: String,
}

/// One replica's scratch directory and config: `state_dir` is a fresh, empty directory when
/// `state_dir` is true, and absent from the config otherwise.
pub fn replica(opts: &Opts, state_dir: bool) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("regwatch.toml");
    let admin = format!("127.0.0.1:{}", free_port());
    let state = if state_dir {
        format!("state_dir = \"{}\"\n", dir.path().join("state").display())
    } else {
        String::new()
    };
    let properties = if opts.properties.is_empty() {
        String::new()
    } else {
        format!("\n[kafka.properties]\n{}\n", opts.properties)
    };
    std::fs::write(
        &config,
        format!(
            "[daemon]\n{state}admin_listen = \"{admin}\"\ninterval = \"{}\"\njitter = \"0%\"\n\n\
             [kafka]\nbrokers = \"{}\"\ntopic = \"{}\"\npartitions = 3\n{}\n{properties}\n\
             [cluster]\n{}\n\n\
             [[registry]]\nname = \"local\"\nkind = \"oci\"\nurl = \"{}\"\ninsecure = true\n\
             repositories = [\"team/*\"]\nrate_limit = 500\nwebhook_token = \"{}\"\n",
            opts.interval,
            opts.brokers,
            opts.topic,
            opts.kafka_extra,
            opts.cluster,
            opts.registry_url,
            opts.token,
        ),
    )
    .unwrap();
    Setup { dir, config, admin }
}

/// The sum of every sample of metric `name` on `admin` (with or without labels), or `None` when
/// the endpoint does not answer or has no such series.
pub async fn metric_sum(admin: &str, name: &str) -> Option<f64> {
    let text = super::metrics_text(admin).await?;
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let value = if rest.starts_with('{') {
            rest.rsplit_once('}').map(|(_, v)| v)
        } else if rest.starts_with(' ') {
            Some(rest)
        } else {
            None
        };
        if let Some(v) = value.and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok()) {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

async fn ready(admin: &str) -> bool {
    readyz(admin).await.0
}

/// `/readyz` on `admin`: whether it answered 200, and what it said.
pub async fn readyz(admin: &str) -> (bool, String) {
    match reqwest::get(format!("http://{admin}/readyz")).await {
        Ok(r) => (
            r.status() == 200,
            r.text().await.unwrap_or_default().trim().to_owned(),
        ),
        Err(e) => (false, e.to_string()),
    }
}

/// Waits until every replica on `admins` is ready and owns at least one state partition, and
/// together they own exactly `partitions`; returns how long that took. Fails after `limit` with
/// what each replica reported.
pub async fn wait_settled(admins: &[&str], partitions: usize, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let mut owned = Vec::new();
        let mut all_ready = true;
        let mut said = Vec::new();
        for admin in admins {
            let (ok, text) = readyz(admin).await;
            all_ready &= ok;
            said.push(text);
            owned.push(metric_sum(admin, "regwatch_cluster_owned_partitions").await);
        }
        let sum: f64 = owned.iter().map(|o| o.unwrap_or(0.0)).sum();
        if all_ready && owned.iter().all(|o| o.unwrap_or(0.0) >= 1.0) && sum == partitions as f64 {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "replicas {admins:?} did not settle within {limit:?}: /readyz {said:?}, owned partitions = {owned:?} (want each >= 1, sum {partitions})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One event read back from the events topic.
#[derive(Debug, Clone)]
pub struct Ev {
    pub at: Instant,
    pub key: String,
    pub id: String,
    pub kind: String,
    pub repo: String,
    pub tag: String,
    pub digest: String,
}

/// A consumer assigned to every partition of a topic from the beginning; it keeps what it read.
pub struct Tail {
    consumer: BaseConsumer,
    /// Every event read so far, in arrival order.
    pub events: Vec<Ev>,
}

impl Tail {
    /// Tails `topic` with `isolation.level` = `isolation` (`read_committed` or `read_uncommitted`).
    /// Waits up to 30 s for the topic's partitions to show up in the metadata.
    pub fn new(brokers: &str, topic: &str, isolation: &str) -> Tail {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", format!("tail-{}", rand::random::<u32>()))
            .set("enable.auto.commit", "false")
            .set("isolation.level", isolation)
            .create()
            .unwrap();
        let asked = Instant::now();
        let partitions = loop {
            let n = consumer
                .fetch_metadata(Some(topic), Duration::from_secs(10))
                .map(|m| m.topics()[0].partitions().len())
                .unwrap_or(0);
            if n > 0 || asked.elapsed() > Duration::from_secs(30) {
                break n;
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        super::assign_from_beginning(&consumer, topic, partitions);
        Tail {
            consumer,
            events: Vec::new(),
        }
    }

    fn poll_once(&mut self, wait: Duration) {
        match self.consumer.poll(wait) {
            Some(Ok(m)) => {
                let payload: serde_json::Value =
                    serde_json::from_slice(m.payload().unwrap_or_default())
                        .expect("an event is JSON");
                let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
                self.events.push(Ev {
                    at: Instant::now(),
                    key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                    id: s(&payload["id"]),
                    kind: s(&payload["type"]),
                    repo: s(&payload["data"]["repository"]),
                    tag: s(&payload["data"]["tag"]),
                    digest: s(&payload["data"]["digest"]),
                });
            }
            Some(Err(e)) => eprintln!("tail: {e}"),
            None => {}
        }
    }

    /// Reads whatever arrives during `d`.
    pub fn drain_for(&mut self, d: Duration) {
        let until = Instant::now() + d;
        while Instant::now() < until {
            self.poll_once(Duration::from_millis(100));
        }
    }

    /// Reads until `done(events)` holds (true) or `limit` passes (false).
    pub fn wait_until(&mut self, limit: Duration, done: impl Fn(&[Ev]) -> bool) -> bool {
        let until = Instant::now() + limit;
        loop {
            if done(&self.events) {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            self.poll_once(Duration::from_millis(100));
        }
    }

    /// Reads until every `(repo, tag)` of `want` has an event, failing after `limit` with the
    /// missing ones and `context`.
    pub fn wait_for_tags(
        &mut self,
        want: &BTreeMap<(String, String), String>,
        limit: Duration,
        context: impl Fn() -> String,
    ) {
        let ok = self.wait_until(limit, |events| {
            let seen: HashSet<(&str, &str)> = events
                .iter()
                .map(|e| (e.repo.as_str(), e.tag.as_str()))
                .collect();
            want.keys()
                .all(|(r, t)| seen.contains(&(r.as_str(), t.as_str())))
        });
        if !ok {
            let seen: HashSet<(String, String)> = self
                .events
                .iter()
                .map(|e| (e.repo.clone(), e.tag.clone()))
                .collect();
            let missing: Vec<_> = want.keys().filter(|k| !seen.contains(*k)).collect();
            panic!(
                "{} of {} pushed tags not delivered within {limit:?}: {missing:?}\n{}",
                missing.len(),
                want.len(),
                context()
            );
        }
    }
}

/// Fails unless `events` are exactly one `tag.added` per pushed `(repo, tag)` of `pushed`, with
/// its digest, key `<host>/<repo>`, and distinct ids.
pub fn assert_exactly_once(events: &[Ev], pushed: &BTreeMap<(String, String), String>, host: &str) {
    let mut by_tag: BTreeMap<(String, String), Vec<&Ev>> = BTreeMap::new();
    for e in events {
        by_tag
            .entry((e.repo.clone(), e.tag.clone()))
            .or_default()
            .push(e);
    }
    let phantom: Vec<_> = by_tag.keys().filter(|k| !pushed.contains_key(*k)).collect();
    assert!(
        phantom.is_empty(),
        "events for tags not pushed: {phantom:?}"
    );
    let twice: Vec<_> = by_tag.iter().filter(|(_, v)| v.len() > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    for ((repo, tag), digest) in pushed {
        let e = by_tag
            .get(&(repo.clone(), tag.clone()))
            .unwrap_or_else(|| panic!("{repo}:{tag} not delivered"))[0];
        assert_eq!(e.kind, "io.regwatch.tag.added", "{repo}:{tag}");
        assert_eq!(&e.digest, digest, "{repo}:{tag}");
        assert_eq!(e.key, format!("{host}/{repo}"), "Kafka key of {repo}:{tag}");
    }
    let ids: HashSet<&str> = events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), events.len(), "event ids are not distinct");
}

/// Pushes `tag` to each of `repos`; returns `(repo, tag) -> digest`.
pub async fn push_all(
    registry: &super::Registry,
    repos: &[String],
    tag: &str,
) -> BTreeMap<(String, String), String> {
    let mut out = BTreeMap::new();
    for repo in repos {
        out.insert(
            (repo.clone(), tag.to_owned()),
            registry.push(repo, tag).await,
        );
    }
    out
}

/// `team/app-01` … `team/app-NN`: no name is a prefix of another.
pub fn repo_names(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("team/app-{i:02}")).collect()
}

/// The tail of a daemon's stderr, for failure messages.
pub fn stderr_tail(d: &super::Daemon, lines: usize) -> String {
    let err = d.stderr.lock().unwrap();
    let all: Vec<&str> = err.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Waits until the replica on `admin` answers `/readyz` with 200, failing at once (with its
/// stderr) if the process exits, or after 45 s.
pub async fn wait_up(d: &mut super::Daemon, admin: &str) {
    let started = Instant::now();
    loop {
        let (ok, said) = readyz(admin).await;
        if ok {
            return;
        }
        if let Ok(Some(status)) = d.child.try_wait() {
            std::thread::sleep(Duration::from_millis(200));
            panic!(
                "replica {admin} exited ({status}) before it was ready:\n{}",
                stderr_tail(d, 30)
            );
        }
        if started.elapsed() >= Duration::from_secs(45) {
            let errors: Vec<String> = d
                .stderr
                .lock()
                .unwrap()
                .lines()
                .filter(|l| l.contains(" ERROR "))
                .map(str::to_owned)
                .collect();
            panic!(
                "replica {admin} not ready within 45 s (/readyz: {said}); its ERROR lines: {errors:#?}\nstderr (tail):\n{}",
                stderr_tail(d, 30)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Fails if `tail` read any event: a registry's existing tags are a baseline and publish nothing.
pub fn assert_silent_baseline(tail: &Tail, context: impl Fn() -> String) {
    let tags: Vec<String> = tail
        .events
        .iter()
        .map(|e| format!("{} {}:{}", e.kind, e.repo, e.tag))
        .collect();
    assert!(
        tags.is_empty(),
        "the baseline published {} events for tags that existed before the replicas started: {tags:?}\n{}",
        tags.len(),
        context()
    );
}

/// The partition count of `topic` as the brokers' metadata reports it, asked until it is non-zero
/// or `wait` passes.
pub fn topic_partitions(brokers: &str, topic: &str, wait: Duration) -> usize {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("allow.auto.create.topics", "false")
        .create()
        .unwrap();
    let asked = Instant::now();
    loop {
        let n = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .map(|m| m.topics()[0].partitions().len())
            .unwrap_or(0);
        if n > 0 || asked.elapsed() >= wait {
            return n;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The stderr tails of `daemons`, each under a header naming its pid, for failure messages.
/// When `daemon` first logged a line containing `needle` after `after` (its log lines start with
/// an RFC 3339 timestamp).
pub fn logged_after(
    daemon: &super::Daemon,
    needle: &str,
    after: std::time::SystemTime,
) -> Option<std::time::SystemTime> {
    let stderr = daemon.stderr.lock().unwrap().clone();
    stderr
        .lines()
        .filter(|l| l.contains(needle))
        .filter_map(|l| humantime::parse_rfc3339_weak(l.split_whitespace().next()?).ok())
        .find(|t| *t > after)
}

pub fn stderrs(daemons: &[&super::Daemon]) -> String {
    daemons
        .iter()
        .map(|d| {
            format!(
                "--- replica {} stderr (tail):
{}",
                d.pid(),
                stderr_tail(d, 25)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A `docker-registry` holding `v0` in each of the `n` repositories of `repo_names(n)`, and the
/// attributing proxy in front of it: (registry, proxy, the proxy's URL, repositories).
pub async fn seeded_registry(n: usize) -> (super::Registry, Arc<Attributing>, String, Vec<String>) {
    let registry = super::Registry::start(super::Auth::None);
    let repos = repo_names(n);
    push_all(&registry, &repos, "v0").await;
    let (proxy, url) = Attributing::start(&registry.url()).await;
    (registry, proxy, url, repos)
}

/// Starts the replica of `setup`, has `proxy` attribute its registry traffic, and waits until it
/// is ready.
pub async fn start_replica(proxy: &Attributing, setup: &Setup) -> super::Daemon {
    start_replica_logging(proxy, setup, "regwatch=debug").await
}

/// [`start_replica`] with `RUST_LOG` = `filter`.
pub async fn start_replica_logging(
    proxy: &Attributing,
    setup: &Setup,
    filter: &str,
) -> super::Daemon {
    let mut d = setup.spawn_logging(filter);
    proxy.watch(d.pid());
    wait_up(&mut d, &setup.admin).await;
    d
}
