//! regwatch's benchmark harness: `cargo bench --bench scan`. It prints a table of figures, and
//! each ratio is against a baseline measured in the same run, so a noisy machine's noise cancels.
//!
//! 1. Scan throughput against a real `docker-registry` holding a few thousand repositories
//!    (populated once, cached under target/): `regwatch once --dry-run` against a bare parallel
//!    HTTP client fetching the same URLs at the same concurrency, and against `skopeo list-tags`
//!    per repository, 8 in parallel.
//! 2. Scale against an in-process synthetic registry of 1,000 × 1,000 = 1 M tags: memory per
//!    tracked tag, baseline time, requests per baseline and per idle cycle, `/healthz` p99 latency
//!    during the baseline (against an idle daemon), start-to-first-request with 1 M tags of state,
//!    CPU while idle.
//! 3. Publishing: draining a 100k-event outbox to Tansu, against a bare producer, and one event
//!    at a time to its acknowledgement; CPU while idle with `[kafka]` and in cluster mode, against
//!    the stdout sink.
//! 4. Cluster mode: steady scan cycles of 1, 2 and 3 replicas on Tansu against a single node
//!    (requests per repository per cycle, CPU per 1k requests); restore of 1 M tags of state by
//!    a fresh replica against a single node's restart; failover after `kill -9` on rdkafka's
//!    mock cluster; restore after a simulated week of churn against the same state written once.
//! 5. The diff on a 50k-tag repository: 2,000 new signatures, and 50k known platforms, against a
//!    diff that finds one new tag.
//! 6. Soak (`-- soak`, `-- soak-cluster`, only when named): a compressed month with faults, each
//!    figure's slope over the second half (see `soak/mod.rs`).
//!
//! Sizes: REGWATCH_BENCH_REPOS (default 2000), REGWATCH_BENCH_SCALE_REPOS and
//! REGWATCH_BENCH_SCALE_TAGS (default 1000 each), REGWATCH_BENCH_EVENTS (default 100000),
//! REGWATCH_BENCH_CLUSTER_REPOS (default 3000), REGWATCH_BENCH_FAILOVER_REPOS (default 120).

mod soak;

// The test suite's real-component helpers (Tansu, the synthetic registry) serve here too.
#[path = "../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use regwatch::store::StateStore;
use sha2::{Digest, Sha256};
use support::{free_port, require};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// CPU seconds (user + system) of this process, or of its waited-for children.
fn cpu(who: i32) -> f64 {
    // SAFETY: getrusage fills the struct we pass and touches nothing else.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut usage) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(usage.ru_utime) + t(usage.ru_stime)
}

/// (VmRSS, VmHWM) of `pid` in bytes.
fn rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// CPU seconds used so far by `pid`.
fn proc_cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

/// One row of the printed table.
struct Row {
    figure: String,
    value: String,
    baseline: String,
    ratio: String,
    target: String,
}

fn row(figure: &str, value: String, baseline: &str, ratio: &str, target: &str) -> Row {
    Row {
        figure: figure.into(),
        value,
        baseline: baseline.into(),
        ratio: ratio.into(),
        target: target.into(),
    }
}

// ------------------------------------------------------------------------------------------------
// 1. Scan throughput against docker-registry

struct DockerRegistry {
    child: Child,
    port: u16,
}

impl Drop for DockerRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_registry(storage: &Path) -> DockerRegistry {
    let bin = require("docker-registry", "apt-get install docker-registry");
    let port = free_port();
    let config = storage.with_extension("yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            storage.display()
        ),
    )
    .unwrap();
    let child = Command::new(bin)
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port);
    DockerRegistry { child, port }
}

async fn populate(base: &str, repos: &[String], tags: usize) {
    let client = reqwest::Client::new();
    let layer = b"regwatch-bench-layer".to_vec();
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
            .to_vec();
    let digest = |b: &[u8]| format!("sha256:{}", hex::encode(Sha256::digest(b)));
    let (layer_d, config_d) = (digest(&layer), digest(&config));
    let seed = &repos[0];
    for blob in [&layer, &config] {
        let start = client
            .post(format!("{base}/v2/{seed}/blobs/uploads/"))
            .send()
            .await
            .unwrap();
        let location = start.headers()["location"].to_str().unwrap().to_owned();
        let mut url = reqwest::Url::parse(base).unwrap().join(&location).unwrap();
        url.query_pairs_mut().append_pair("digest", &digest(blob));
        let put = client.put(url).body(blob.clone()).send().await.unwrap();
        assert_eq!(put.status(), 201);
    }
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","size":{},"digest":"{config_d}"}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":{},"digest":"{layer_d}"}}]}}"#,
        config.len(),
        layer.len()
    );
    futures_util::stream::iter(repos)
        .for_each_concurrent(16, |repo| {
            let (client, manifest, layer, config) = (
                client.clone(),
                manifest.clone(),
                layer.clone(),
                config.clone(),
            );
            let (layer_d, config_d) = (layer_d.clone(), config_d.clone());
            let blobs = [(layer_d, layer.clone()), (config_d, config.clone())];
            async move {
                for (d, data) in blobs {
                    let url = format!("{base}/v2/{repo}/blobs/uploads/?mount={d}&from={seed}");
                    let r = client.post(url).send().await.unwrap();
                    if r.status() == 202 {
                        // The registry declined the mount and opened an upload instead: upload.
                        let location = r.headers()["location"].to_str().unwrap().to_owned();
                        let mut url = reqwest::Url::parse(base).unwrap().join(&location).unwrap();
                        url.query_pairs_mut().append_pair("digest", &d);
                        let put = client.put(url).body(data).send().await.unwrap();
                        assert_eq!(put.status(), 201, "blob upload into {repo}");
                    } else {
                        assert_eq!(r.status(), 201, "cross-repository mount into {repo}");
                    }
                }
                for t in 0..tags {
                    let r = client
                        .put(format!("{base}/v2/{repo}/manifests/v{t}"))
                        .header(
                            "content-type",
                            "application/vnd.docker.distribution.manifest.v2+json",
                        )
                        .body(manifest.clone())
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 201);
                }
            }
        })
        .await;
}

struct Run {
    wall: f64,
    cpu: f64,
}

fn run_regwatch_once(config: &Path) -> Run {
    let (c0, t0) = (cpu(libc::RUSAGE_CHILDREN), Instant::now());
    let out = Command::new(env!("CARGO_BIN_EXE_regwatch"))
        .args(["once", "--dry-run", "-c"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let wall = t0.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Run {
        wall,
        cpu: cpu(libc::RUSAGE_CHILDREN) - c0,
    }
}

/// The ceiling: the same URLs through a bare reqwest loop at the same concurrency, on its own
/// single-threaded runtime in its own thread (the configuration `regwatch once` uses; the faster
/// of the two on two cores), measured with this thread's CPU time.
fn run_bare_client(base: &str, repos: &[String], concurrency: usize) -> Run {
    let (base, repos) = (base.to_owned(), repos.to_vec());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(bare_client(&base, &repos, concurrency))
    })
    .join()
    .unwrap()
}

async fn bare_client(base: &str, repos: &[String], concurrency: usize) -> Run {
    let (c0, t0) = (cpu(libc::RUSAGE_THREAD), Instant::now());
    let client = reqwest::Client::new();
    futures_util::stream::iter(repos)
        .for_each_concurrent(concurrency, |repo| {
            let client = client.clone();
            async move {
                let r = client
                    .get(format!("{base}/v2/{repo}/tags/list?n=1000"))
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success());
                let _ = r.bytes().await.unwrap();
            }
        })
        .await;
    Run {
        wall: t0.elapsed().as_secs_f64(),
        cpu: cpu(libc::RUSAGE_THREAD) - c0,
    }
}

fn run_skopeo(port: u16, repos: &[String], parallel: usize) -> Run {
    let bin = require("skopeo", "apt-get install skopeo");
    let (c0, t0) = (cpu(libc::RUSAGE_CHILDREN), Instant::now());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let repos = Arc::new(repos.to_vec());
    let workers: Vec<_> = (0..parallel)
        .map(|_| {
            let (next, repos, bin) = (next.clone(), repos.clone(), bin.clone());
            std::thread::spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(repo) = repos.get(i) else { break };
                    let out = Command::new(&bin)
                        .args(["list-tags", "--tls-verify=false"])
                        .arg(format!("docker://127.0.0.1:{port}/{repo}"))
                        .output()
                        .unwrap();
                    assert!(
                        out.status.success(),
                        "skopeo: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    Run {
        wall: t0.elapsed().as_secs_f64(),
        cpu: cpu(libc::RUSAGE_CHILDREN) - c0,
    }
}

fn best(runs: Vec<Run>) -> Run {
    runs.into_iter()
        .min_by(|a, b| a.wall.total_cmp(&b.wall))
        .unwrap()
}

async fn scan_throughput(rows: &mut Vec<Row>) {
    let n = env_usize("REGWATCH_BENCH_REPOS", 2000);
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("bench-registry-{n}"));
    let fresh = !cache.join(".populated").exists();
    std::fs::create_dir_all(&cache).unwrap();
    let registry = start_registry(&cache.join("storage"));
    let base = format!("http://127.0.0.1:{}", registry.port);
    let repos: Vec<String> = (0..n).map(|i| format!("bench/r{i:05}")).collect();
    if fresh {
        eprintln!("populating {n} repositories (cached for later runs)...");
        populate(&base, &repos, 3).await;
        std::fs::write(cache.join(".populated"), "").unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bench.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nstate_dir = \"{}\"\n[[registry]]\nname = \"bench\"\nkind = \"oci\"\nurl = \"{base}\"\ninsecure = true\nrepositories = [{}]\nconcurrency = 8\nrate_limit = 1000000\n",
            dir.path().join("state").display(),
            // Named, not globbed: both sides then fetch exactly the same tags/list URLs.
            repos.iter().map(|r| format!("\"{r}\"")).collect::<Vec<_>>().join(", ")
        ),
    )
    .unwrap();
    let requests = n;
    // Warm the registry's and the kernel's caches, then take the best of three.
    run_bare_client(&base, &repos, 8);
    let ceiling = best(vec![
        run_bare_client(&base, &repos, 8),
        run_bare_client(&base, &repos, 8),
        run_bare_client(&base, &repos, 8),
    ]);
    let ours = best(vec![
        run_regwatch_once(&config),
        run_regwatch_once(&config),
        run_regwatch_once(&config),
    ]);
    eprintln!("skopeo list-tags x {n}...");
    let skopeo = run_skopeo(registry.port, &repos, 8);
    let per_k = |r: &Run| {
        format!(
            "{:.0} ms CPU/1k req",
            r.cpu * 1000.0 / requests as f64 * 1000.0
        )
    };
    let rate = |r: &Run| format!("{:.2} s, {:.0} req/s", r.wall, requests as f64 / r.wall);
    rows.push(row(
        &format!("full scan of {n} repos: regwatch once --dry-run"),
        format!("{}; {}", rate(&ours), per_k(&ours)),
        &format!("bare client {}; {}", rate(&ceiling), per_k(&ceiling)),
        &format!("{:.2}x ceiling", ceiling.wall / ours.wall),
        ">= 0.9x",
    ));
    rows.push(row(
        &format!("full scan of {n} repos vs skopeo list-tags, 8 parallel"),
        rate(&ours),
        &format!("skopeo {}; {}", rate(&skopeo), per_k(&skopeo)),
        &format!("{:.1}x faster", skopeo.wall / ours.wall),
        ">= 12x",
    ));
}

// ------------------------------------------------------------------------------------------------
// 2. Scale: 1 M tags in an in-process synthetic registry

/// The daemon's `/metrics` text, or "" while it does not answer.
async fn metrics_text(admin: &str) -> String {
    match reqwest::get(format!("http://{admin}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// The sum of every series of `name` (all label sets) in a `/metrics` text; 0 when absent.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(['{', ' ']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.trim().parse::<f64>().ok())
        .sum::<f64>()
        // An empty sum is -0.
        + 0.0
}

async fn scans_ok(admin: &str) -> u64 {
    metric(
        &metrics_text(admin).await,
        "regwatch_scans_total{registry=\"syn\",result=\"ok\"}",
    ) as u64
}

async fn wait_scans(admin: &str, n: u64, limit: Duration) -> Duration {
    let t0 = Instant::now();
    while scans_ok(admin).await < n {
        assert!(
            t0.elapsed() < limit,
            "scan {n} did not finish within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t0.elapsed()
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// `regwatch run -c config`; its stderr (warnings and errors, or REGWATCH_BENCH_LOG's `RUST_LOG`)
/// goes to `config` with `.log`, for [`log_tail`] to show when a figure cannot be measured. The
/// log is appended to, so that a restarted daemon's log follows its predecessor's.
fn daemon(config: &Path) -> Daemon {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(config.with_extension("log"))
        .unwrap();
    Daemon(
        Command::new(env!("CARGO_BIN_EXE_regwatch"))
            .args(["run", "-c"])
            .arg(config)
            .env(
                "RUST_LOG",
                std::env::var("REGWATCH_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// The last lines the daemon of `config` wrote to stderr.
fn log_tail(config: &Path) -> String {
    let log = std::fs::read_to_string(config.with_extension("log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Latencies of `GET /healthz` on `admin`, one request every 5 ms (a fresh connection each, as a
/// kubelet probe makes), until `stop`. A plain blocking client on its own thread, so that the
/// benchmark's own runtime (busy serving the synthetic registry) does not add to the figures.
fn probe_healthz(
    admin: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<Duration>> {
    use std::io::{Read, Write};
    std::thread::spawn(move || {
        let mut latencies = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let t0 = Instant::now();
            // Until the daemon listens, nothing is measured.
            if let Ok(mut conn) = std::net::TcpStream::connect(&admin) {
                conn.write_all(
                    b"GET /healthz HTTP/1.1\r\nHost: regwatch\r\nConnection: close\r\n\r\n",
                )
                .unwrap();
                let mut response = String::new();
                conn.read_to_string(&mut response).unwrap();
                assert!(response.starts_with("HTTP/1.1 200"), "{response}");
                latencies.push(t0.elapsed());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        latencies
    })
}

/// The 99th percentile of `latencies`, in milliseconds, and how many there were.
fn p99_ms(mut latencies: Vec<Duration>) -> (f64, usize) {
    assert!(!latencies.is_empty(), "no /healthz answer was measured");
    latencies.sort_unstable();
    let at = (latencies.len() * 99).div_ceil(100) - 1;
    (latencies[at].as_secs_f64() * 1000.0, latencies.len())
}

/// A daemon config watching the synthetic registry at `host`, with `extra` (further tables, e.g.
/// `[kafka]` and `[cluster]`) appended.
fn scale_config(dir: &Path, host: &str, interval: &str, extra: &str) -> (PathBuf, String) {
    let admin = format!("127.0.0.1:{}", free_port());
    let config = dir.join(format!("scale-{interval}.toml"));
    std::fs::write(
        &config,
        format!(
            "[daemon]\nstate_dir = \"{}\"\ninterval = \"{interval}\"\njitter = \"0%\"\nadmin_listen = \"{admin}\"\n[[registry]]\nname = \"syn\"\nkind = \"oci\"\nurl = \"http://{host}\"\ninsecure = true\nconcurrency = 8\nrate_limit = 1000000\n{extra}",
            dir.join("state").display()
        ),
    )
    .unwrap();
    (config, admin)
}

/// An in-process synthetic registry of `repos` repositories (`scale/rNNNN`) of `tags` tags each.
async fn synthetic_registry(
    repos: usize,
    tags: usize,
) -> (Arc<support::synthetic::Synthetic>, String) {
    let state = Arc::new(support::synthetic::Synthetic::default());
    eprintln!("building a synthetic registry of {repos} x {tags} tags...");
    {
        let mut all = state.repos.lock().unwrap();
        for r in 0..repos {
            let m = all.entry(format!("scale/r{r:04}")).or_default();
            for t in 0..tags {
                let tag = format!("v{t}.0.0");
                let digest = support::synthetic::digest_of(&format!("scale/r{r:04}"), &tag, 0);
                m.insert(tag, digest);
            }
        }
    }
    let host = support::synthetic::serve(state.clone()).await;
    (state, host)
}

/// Starts the daemon of `config` and times its first request to `registry`.
async fn first_request(
    config: &Path,
    registry: &support::synthetic::Synthetic,
) -> (Daemon, Instant, Duration) {
    let before = registry.requests();
    let spawned = Instant::now();
    let d = daemon(config);
    while registry.requests() == before {
        assert!(
            spawned.elapsed() < Duration::from_secs(30),
            "no request after restart: {}",
            log_tail(config)
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    (d, spawned, spawned.elapsed())
}

async fn scale(rows: &mut Vec<Row>) {
    let repos = env_usize("REGWATCH_BENCH_SCALE_REPOS", 1000);
    let tags = env_usize("REGWATCH_BENCH_SCALE_TAGS", 1000);
    let total = repos * tags;

    // The empty daemon: same binary and settings, a registry with nothing in it.
    let empty = Arc::new(support::synthetic::Synthetic::default());
    let empty_host = support::synthetic::serve(empty.clone()).await;
    let empty_dir = tempfile::tempdir().unwrap();
    let (config, admin) = scale_config(empty_dir.path(), &empty_host, "1h", "");
    let d = daemon(&config);
    wait_scans(&admin, 1, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (empty_rss, _) = rss(d.0.id());
    // The /healthz baseline: the same daemon, idle.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prober = probe_healthz(admin.clone(), stop.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let (idle_p99, idle_n) = p99_ms(prober.join().unwrap());
    drop(d);

    let (state, host) = synthetic_registry(repos, tags).await;
    let dir = tempfile::tempdir().unwrap();

    // Baseline, then one idle cycle.
    let (config, admin) = scale_config(dir.path(), &host, "3s", "");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prober = probe_healthz(admin.clone(), stop.clone());
    let d = daemon(&config);
    let baseline = wait_scans(&admin, 1, Duration::from_secs(600)).await;
    stop.store(true, Ordering::Relaxed);
    let (busy_p99, busy_n) = p99_ms(prober.join().unwrap());
    let (rss_after, peak) = rss(d.0.id());
    let baseline_requests = state.requests();
    let heads_baseline = state.head_requests.load(Ordering::Relaxed);
    wait_scans(&admin, 2, Duration::from_secs(600)).await;
    let idle_requests = state.requests() - baseline_requests;
    drop(d);

    // Restart with 1 M tags of state: time to the first registry request, then 20 s of idle CPU.
    let (config, admin) = scale_config(dir.path(), &host, "1h", "");
    let (d, _, first_request) = first_request(&config, &state).await;
    wait_scans(&admin, 1, Duration::from_secs(600)).await;
    let c0 = proc_cpu(d.0.id());
    tokio::time::sleep(Duration::from_secs(20)).await;
    let idle_cpu = (proc_cpu(d.0.id()) - c0) / 20.0 * 100.0;
    drop(d);

    let per_tag = rss_after.saturating_sub(empty_rss) as f64 / total as f64;
    let peak_per_tag = peak.saturating_sub(empty_rss) as f64 / total as f64;
    rows.push(row(
        &format!("memory per tracked tag ({total} tags)"),
        format!(
            "{per_tag:.1} B (peak during baseline {peak_per_tag:.1} B); RSS {:.1} MB",
            rss_after as f64 / 1e6
        ),
        &format!("empty daemon RSS {:.1} MB", empty_rss as f64 / 1e6),
        "",
        "<= 64 B",
    ));
    rows.push(row(
        &format!("baseline of {total} tags"),
        format!(
            "{:.2} s; {baseline_requests} requests, {heads_baseline} HEAD",
            baseline.as_secs_f64()
        ),
        &format!("{} repositories", repos),
        &format!(
            "{:.2} requests/repo",
            baseline_requests as f64 / repos as f64
        ),
        "~1 request/repo, 0 HEAD",
    ));
    rows.push(row(
        &format!("/healthz p99 during the baseline of {total} tags"),
        format!("{busy_p99:.1} ms ({busy_n} requests)"),
        &format!("idle daemon: {idle_p99:.1} ms ({idle_n} requests)"),
        &format!("{:.1}x idle", busy_p99 / idle_p99),
        "< 50 ms",
    ));
    rows.push(row(
        "requests per idle cycle",
        idle_requests.to_string(),
        &format!("{repos} repositories"),
        &format!("{:.2}/repo", idle_requests as f64 / repos as f64),
        "1/repo",
    ));
    rows.push(row(
        &format!("start to first registry request, {total} tags of state"),
        format!("{:.0} ms", first_request.as_secs_f64() * 1000.0),
        "",
        "",
        "<= 1 s",
    ));
    rows.push(row(
        "CPU while idle between scans (20 s)",
        format!("{idle_cpu:.3} % of a core"),
        "",
        "",
        "< 0.1 %",
    ));
    rows.push(row(
        "manifest GETs while watching",
        state
            .get_manifest_requests
            .load(Ordering::Relaxed)
            .to_string(),
        "",
        "",
        "0",
    ));
}

// ------------------------------------------------------------------------------------------------
// 3. Publishing throughput to Tansu

async fn publishing(rows: &mut Vec<Row>) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use regwatch::sink::Sink;
    let n = env_usize("REGWATCH_BENCH_EVENTS", 100_000);
    let tansu = support::Tansu::start();
    let brokers = tansu.brokers.clone();

    // Realistic events, built by regwatch itself.
    let events: Vec<regwatch::event::Event> = (0..n)
        .map(|i| {
            let repo = format!("team/app{}", i % 500);
            let change = regwatch::watch::diff::Change::Added {
                tag: format!("v1.{i}.0"),
                digest: Some(support::synthetic::digest_of(&repo, "t", i as u32)),
                pushed_at: None,
                image: Default::default(),
            };
            let origin = regwatch::event::Origin {
                registry: "bench",
                identity: "https://registry.example.com",
                kind: regwatch::config::Kind::Oci,
                host: "registry.example.com",
                repository: &repo,
            };
            regwatch::event::build(origin, &change, 1, SystemTime::now())
        })
        .collect();
    let kafka = |topic: &str| regwatch::config::KafkaConfig {
        brokers: brokers.clone(),
        topic: topic.into(),
        create_topic: true,
        partitions: 6,
        replication_factor: -1,
        properties: vec![],
    };

    // Baseline: the same producer settings, sending straight from memory, no outbox.
    let mut bare = regwatch::sink::kafka::KafkaSink::new(&kafka("bench.bare")).unwrap();
    bare.prepare().await.unwrap();
    let producer: FutureProducer = regwatch::sink::kafka::client_config(&kafka("bench.bare"))
        .create()
        .unwrap();
    let t0 = Instant::now();
    for chunk in events.chunks(1000) {
        let sends: Vec<_> = chunk
            .iter()
            .map(|e| {
                producer
                    .send_result(
                        FutureRecord::to("bench.bare")
                            .key(&e.key)
                            .payload(&e.payload),
                    )
                    .ok()
                    .unwrap()
            })
            .collect();
        for s in futures_util::future::join_all(sends).await {
            s.unwrap().unwrap();
        }
    }
    let bare_rate = n as f64 / t0.elapsed().as_secs_f64();
    // One event at a time, as a webhook's push brings it: send to acknowledgement.
    let mut bare_one = Vec::new();
    for e in events.iter().take(200) {
        let t0 = Instant::now();
        let sent = producer.send_result(
            FutureRecord::to("bench.bare")
                .key(&e.key)
                .payload(&e.payload),
        );
        sent.ok().unwrap().await.unwrap().unwrap();
        bare_one.push(t0.elapsed());
    }

    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(regwatch::store::Store::open(dir.path()).unwrap());
    for (i, chunk) in events.chunks(1000).enumerate() {
        store
            .commit_scan("bench", &format!("r{i}"), None, &Default::default(), chunk)
            .unwrap();
    }
    let mut sink = regwatch::sink::kafka::KafkaSink::new(&kafka("bench.outbox")).unwrap();
    sink.prepare().await.unwrap();
    let t0 = Instant::now();
    let (delivered, left) = regwatch::sink::drain(&store, &mut sink).await.unwrap();
    let ours = n as f64 / t0.elapsed().as_secs_f64();
    assert_eq!((delivered, left), (n, 0));
    // One event at a time through the sink, after it sat idle (its delivery thread asleep).
    let mut ours_one = Vec::new();
    for e in events.iter().take(200) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let t0 = Instant::now();
        assert!(sink.deliver(std::slice::from_ref(e)).await == vec![0]);
        ours_one.push(t0.elapsed());
    }
    drop(tansu);
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64() * 1000.0
    };
    let (ours_p50, bare_p50) = (median(ours_one.clone()), median(bare_one.clone()));
    let (ours_p99, _) = p99_ms(ours_one);
    let (bare_p99, _) = p99_ms(bare_one);
    rows.push(row(
        "one event to Kafka's acknowledgement, 200 events one at a time, Tansu",
        format!("sink (delivery thread woken per send, after 20 ms idle): p50 {ours_p50:.2} ms, p99 {ours_p99:.2} ms"),
        &format!("rust-rdkafka FutureProducer: p50 {bare_p50:.2} ms, p99 {bare_p99:.2} ms"),
        &format!("{:.2}x p50", ours_p50 / bare_p50),
        "no slower",
    ));
    rows.push(row(
        &format!("outbox drain to Tansu, {n} events backlog"),
        format!("{ours:.0} events/s"),
        &format!("bare producer {bare_rate:.0} events/s"),
        &format!("{:.2}x", ours / bare_rate),
        ">= 20k events/s",
    ));
}

/// CPU a daemon spends over `window` once settled: seconds of CPU per second, from the
/// on-CPU nanoseconds of all its threads (`/proc/<pid>/task/*/schedstat`; clock ticks are too
/// coarse for an idle process), and its thread count.
async fn idle_cost(pid: u32, window: Duration) -> (f64, usize) {
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |t| t.count());
    let before = on_cpu_seconds(pid);
    tokio::time::sleep(window).await;
    (
        (on_cpu_seconds(pid) - before) / window.as_secs_f64(),
        threads,
    )
}

/// Seconds on a CPU of all of `pid`'s threads so far (threads that ended are not counted).
fn on_cpu_seconds(pid: u32) -> f64 {
    threads_on_cpu(&format!("/proc/{pid}/task"))
        .values()
        .sum::<u64>() as f64
        / 1e9
}

/// Nanoseconds on a CPU so far of each thread under `tasks` (`/proc/<pid>/task`), by thread id,
/// from their `schedstat`: clock ticks are too coarse for an idle process.
fn threads_on_cpu(tasks: &str) -> std::collections::HashMap<String, u64> {
    std::fs::read_dir(tasks)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|t| {
            let ns = std::fs::read_to_string(t.path().join("schedstat")).ok()?;
            let ns = ns.split_whitespace().next()?.parse::<u64>().ok()?;
            Some((t.file_name().to_string_lossy().into_owned(), ns))
        })
        .collect()
}

/// Idle cost with `[kafka]` (issue 21): a daemon with a 60 s interval watching 10 repositories,
/// measured for 30 s between scans, with the stdout sink, with `[kafka]` on Tansu, and as one
/// cluster-mode replica on Tansu.
async fn idle(rows: &mut Vec<Row>) {
    let (_registry, host) = synthetic_registry(10, 3).await;
    let tansu = support::Tansu::start();
    let window = Duration::from_secs(env_usize("REGWATCH_BENCH_IDLE_SECONDS", 30) as u64);
    let kafka = |topic: &str| {
        format!(
            "[kafka]\nbrokers = \"{}\"\ntopic = \"{topic}\"\n",
            tansu.brokers
        )
    };
    let cluster = format!("{}[cluster]\ngroup = \"idle\"\n", kafka("idle.cluster"));
    let mut measured = Vec::new();
    for (name, extra) in [
        ("stdout sink", String::new()),
        ("[kafka] on Tansu", kafka("idle.single")),
        ("cluster mode, 1 replica on Tansu", cluster),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (config, admin) = scale_config(dir.path(), &host, "60s", "");
        // [kafka] and [cluster] go before the registry table.
        let text = std::fs::read_to_string(&config).unwrap();
        let text = text.replacen("[[registry]]", &format!("{extra}[[registry]]"), 1);
        std::fs::write(&config, text).unwrap();
        let d = daemon(&config);
        let started = Instant::now();
        while !ready(&admin).await || scans_ok(&admin).await < 1 {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "{name}: never ready: {}",
                log_tail(&config)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The first cycle's connections and metadata settle.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (cpu, threads) = idle_cost(d.0.id(), window).await;
        measured.push((name, cpu, threads));
        drop(d);
    }
    let (_, stdout_cpu, stdout_threads) = measured[0];
    for (name, cpu, threads) in &measured[1..] {
        rows.push(row(
            &format!(
                "CPU while idle, {name} ({} s between scans)",
                window.as_secs()
            ),
            format!("{:.3} % of a core, {threads} threads", cpu * 100.0),
            &format!(
                "stdout sink: {:.3} % of a core, {stdout_threads} threads",
                stdout_cpu * 100.0
            ),
            &format!("+{:.3} points", (cpu - stdout_cpu) * 100.0),
            "< 0.1 % of a core",
        ));
    }
    // The replica's state topic is still on the broker: the bare consumer reads it as it did.
    let (floor, floor_threads) = librdkafka_floor(&tansu.brokers, "idle.cluster.state", window);
    let (_, cluster_cpu, _) = measured[2];
    rows.push(row(
        "librdkafka's own idle floor: a bare subscribed consumer and a producer, nothing sent",
        format!("{:.3} % of a core, {floor_threads} threads", floor * 100.0),
        &format!("cluster replica: {:.3} %", cluster_cpu * 100.0),
        &format!(
            "{:.0} % of the replica's cost",
            floor / cluster_cpu.max(1e-9) * 100.0
        ),
        "(what a replica cannot go below)",
    ));
}

/// The idle CPU of the two librdkafka clients a cluster replica needs, with nothing of
/// regwatch's around them: a consumer subscribed to `topic` in a group of its own with the
/// replica's consumer settings (session, heartbeat, fetch wait, partition EOF, offset reset),
/// polled every second as the replica's consumer thread does, and a producer with its producer
/// settings, looked at every second as its report thread does. Only the threads started for
/// them (librdkafka's and the two pollers) are counted.
fn librdkafka_floor(brokers: &str, topic: &str, window: Duration) -> (f64, usize) {
    use rdkafka::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::producer::{BaseProducer, Producer};
    use std::sync::atomic::AtomicBool;
    let stop = Arc::new(AtomicBool::new(false));
    // Only threads started from here on are counted.
    let before_clients = threads_on_cpu("/proc/self/task");
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("floor-{}", rand::random::<u32>()))
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "3333")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "500")
        .create()
        .expect("bare consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    // The replica's producer settings (idempotence, acks, linger, compression...).
    let producer: BaseProducer =
        regwatch::sink::kafka::client_config(&regwatch::config::KafkaConfig {
            brokers: brokers.to_owned(),
            topic: topic.to_owned(),
            create_topic: false,
            partitions: 1,
            replication_factor: -1,
            properties: Vec::new(),
        })
        .create()
        .expect("bare producer");
    producer
        .client()
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("producer metadata");
    let pollers = [
        std::thread::Builder::new()
            .name("floor-consumer".into())
            .spawn({
                let stop = stop.clone();
                move || {
                    while !stop.load(Ordering::Relaxed) {
                        let _ = consumer.poll(Duration::from_secs(1));
                    }
                }
            }),
        std::thread::Builder::new()
            .name("floor-producer".into())
            .spawn({
                let stop = stop.clone();
                move || {
                    // A sleep, then a look: `poll` with a timeout busy-waits its last millisecond
                    // (see regwatch's `sink::producer`), which is not librdkafka's cost.
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_secs(1));
                        producer.poll(Duration::ZERO);
                    }
                }
            }),
    ];
    // On-CPU nanoseconds of each thread the two clients and their pollers started.
    let counted = || {
        let mut threads = threads_on_cpu("/proc/self/task");
        threads.retain(|tid, _| !before_clients.contains_key(tid));
        threads
    };
    // Joined, assigned, and the first fetches settled, as the replica was.
    std::thread::sleep(Duration::from_secs(15));
    let before = counted();
    std::thread::sleep(window);
    let after = counted();
    let threads = after.len();
    // A thread that ended meanwhile is left out rather than subtracted from another's time.
    let spent: u64 = after
        .iter()
        .map(|(tid, ns)| ns.saturating_sub(before.get(tid).copied().unwrap_or(0)))
        .sum();
    stop.store(true, Ordering::Relaxed);
    for poller in pollers {
        let _ = poller.expect("spawn poller").join();
    }
    (spent as f64 / 1e9 / window.as_secs_f64(), threads)
}

// ------------------------------------------------------------------------------------------------
// 4. Cluster mode: replicas sharing the watch set through a Kafka consumer group

const SCANS_OK: &str = "regwatch_scans_total{registry=\"syn\",result=\"ok\"}";
const OWNED_PARTITIONS: &str = "regwatch_cluster_owned_partitions";
const OWNED_REPOS: &str = "regwatch_cluster_owned_repositories";

/// `[kafka]` and `[cluster]` tables for a replica. The event topic `topic` also names the group
/// and the state topic (`<topic>.state`), so each configuration starts from empty state.
fn cluster_tables(brokers: &str, topic: &str, kafka: &str, cluster: &str) -> String {
    format!(
        "[kafka]\nbrokers = \"{brokers}\"\ntopic = \"{topic}\"\n{kafka}[cluster]\ngroup = \"{topic}\"\n{cluster}"
    )
}

/// One `regwatch run` process with its own (empty) state directory.
struct Replica {
    daemon: Daemon,
    admin: String,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

fn replica(host: &str, interval: &str, extra: &str) -> Replica {
    let dir = tempfile::tempdir().unwrap();
    let (config, admin) = scale_config(dir.path(), host, interval, extra);
    Replica {
        daemon: daemon(&config),
        admin,
        config,
        _dir: dir,
    }
}

impl Replica {
    fn pid(&self) -> u32 {
        self.daemon.0.id()
    }
}

/// `n` replicas, started together as a Deployment's are.
fn replicas(host: &str, interval: &str, extra: &str, n: usize) -> Vec<Replica> {
    (0..n).map(|_| replica(host, interval, extra)).collect()
}

async fn ready(admin: &str) -> bool {
    reqwest::get(format!("http://{admin}/readyz"))
        .await
        .is_ok_and(|r| r.status() == 200)
}

/// Every replica's `/metrics` text, and whether its `/readyz` answers 200.
async fn views(replicas: &[&Replica]) -> Vec<(String, bool)> {
    futures_util::future::join_all(
        replicas
            .iter()
            .map(|r| async { (metrics_text(&r.admin).await, ready(&r.admin).await) }),
    )
    .await
}

/// What the replicas' stderr says, for a figure that could not be measured.
fn logs(replicas: &[&Replica]) -> String {
    replicas
        .iter()
        .map(|r| format!("--- {}:\n{}", r.config.display(), log_tail(&r.config)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Polls `replicas` every 50 ms until `done` holds for their views; `None` after `limit`.
async fn wait_views(
    replicas: &[&Replica],
    limit: Duration,
    done: impl Fn(&[(String, bool)]) -> bool,
) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if done(&views(replicas).await) {
            return Some(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// The counters of the registry and of each replica at one moment.
struct Sample {
    at: Instant,
    tags: usize,
    catalog: usize,
    requests: usize,
    scans: Vec<f64>,
    owned: Vec<f64>,
    cpu: Vec<f64>,
    records: Vec<f64>,
    rebalances: Vec<f64>,
    reported: f64,
}

/// Samples at a moment when no replica is mid-cycle: no request has reached the registry for
/// 500 ms (cycles here take about a second and come every 5 s). Between two such moments
/// each replica ran whole cycles only, so the registry's counts divide exactly by them.
async fn quiet_sample(registry: &support::synthetic::Synthetic, replicas: &[&Replica]) -> Sample {
    let t0 = Instant::now();
    loop {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the registry never went quiet for 500 ms"
        );
        let before = registry.requests();
        tokio::time::sleep(Duration::from_millis(500)).await;
        if registry.requests() != before {
            continue;
        }
        let texts = views(replicas).await;
        let cpu = replicas.iter().map(|r| proc_cpu(r.pid())).collect();
        if registry.requests() != before {
            continue;
        }
        let each = |name: &str| texts.iter().map(|(t, _)| metric(t, name)).collect();
        return Sample {
            at: Instant::now(),
            tags: registry.tags_requests.load(Ordering::Relaxed),
            catalog: registry.catalog_requests.load(Ordering::Relaxed),
            requests: before,
            scans: each(SCANS_OK),
            owned: each(OWNED_REPOS),
            cpu,
            records: each("regwatch_cluster_state_records_total"),
            rebalances: each("regwatch_cluster_rebalances_total"),
            reported: texts
                .iter()
                .map(|(t, _)| metric(t, "regwatch_registry_requests_total"))
                .sum(),
        };
    }
}

/// What [`steady_cycles`] counted between two quiet moments.
struct Cycles {
    /// Repository scans (each replica's cycles × the repositories it owns).
    repo_scans: f64,
    /// Whole cycles, summed over the replicas.
    cycles: f64,
    tags: usize,
    catalog: usize,
    requests: usize,
    cpu: f64,
    records: f64,
    rebalances: f64,
    /// The window's length times the number of processes.
    process_seconds: f64,
}

impl Cycles {
    fn per_repo(&self) -> f64 {
        self.requests as f64 / self.repo_scans
    }
    fn cpu_per_k(&self) -> f64 {
        self.cpu * 1000.0 / (self.requests as f64 / 1000.0)
    }
    /// CPU ms per second of each process, idle time between cycles included.
    fn cpu_per_s(&self) -> f64 {
        self.cpu * 1000.0 / self.process_seconds
    }
}

/// Steady-state scan cycles of `n` daemons configured with `extra` on `registry`; `cluster`
/// says whether `extra` has a `[cluster]` table (each replica then scans only what it owns).
async fn steady_cycles(
    registry: &support::synthetic::Synthetic,
    host: &str,
    repos: usize,
    n: usize,
    extra: &str,
    cluster: bool,
) -> Cycles {
    const CYCLES: f64 = 3.0;
    let nodes = replicas(host, "5s", extra, n);
    let refs: Vec<&Replica> = nodes.iter().collect();
    // Settled: every replica ready and past one cycle since, the group's assignment complete.
    let settled = wait_views(&refs, Duration::from_secs(300), |v| {
        v.iter()
            .all(|(t, ready)| *ready && metric(t, SCANS_OK) >= 2.0)
            && (!cluster
                || v.iter().map(|(t, _)| metric(t, OWNED_REPOS)).sum::<f64>() == repos as f64)
    })
    .await;
    assert!(
        settled.is_some(),
        "{n} replicas did not settle within 300 s:\n{}",
        logs(&refs)
    );
    let a = quiet_sample(registry, &refs).await;
    let past = wait_views(&refs, Duration::from_secs(120), |v| {
        v.iter()
            .zip(&a.scans)
            .all(|((t, _), s0)| metric(t, SCANS_OK) >= s0 + CYCLES)
    })
    .await;
    assert!(
        past.is_some(),
        "{n} replicas did not complete {CYCLES} cycles:\n{}",
        logs(&refs)
    );
    let b = quiet_sample(registry, &refs).await;
    let delta = |x: &[f64], y: &[f64]| y.iter().zip(x).map(|(y, x)| y - x).sum::<f64>();
    let cycles: Vec<f64> = b.scans.iter().zip(&a.scans).map(|(b, a)| b - a).collect();
    let repo_scans = cycles
        .iter()
        .zip(&b.owned)
        .map(|(c, owned)| c * if cluster { *owned } else { repos as f64 })
        .sum();
    let requests = b.requests - a.requests;
    if (b.reported - a.reported) as usize != requests {
        eprintln!(
            "note: the replicas counted {} registry requests, the registry {requests}",
            b.reported - a.reported
        );
    }
    Cycles {
        repo_scans,
        cycles: cycles.iter().sum(),
        tags: b.tags - a.tags,
        catalog: b.catalog - a.catalog,
        requests,
        cpu: delta(&a.cpu, &b.cpu),
        records: delta(&a.records, &b.records),
        rebalances: delta(&a.rebalances, &b.rebalances),
        process_seconds: (b.at - a.at).as_secs_f64() * nodes.len() as f64,
    }
}

async fn cluster_throughput(rows: &mut Vec<Row>, tansu: &support::Tansu) {
    let repos = env_usize("REGWATCH_BENCH_CLUSTER_REPOS", 3000);
    let (registry, host) = synthetic_registry(repos, 3).await;
    let summary = |c: &Cycles| {
        format!(
            "{:.2} req/repo/cycle ({:.2} tags/list + {:.1} _catalog pages per process cycle); {:.0} ms CPU/1k req ({:.1} ms CPU/s per process)",
            c.per_repo(),
            c.tags as f64 / c.repo_scans,
            c.catalog as f64 / c.cycles,
            c.cpu_per_k(),
            c.cpu_per_s()
        )
    };
    // Two single nodes: events to stdout (no Kafka client at all), and to the same Tansu.
    let bare = steady_cycles(&registry, &host, repos, 1, "", false).await;
    let kafka = format!(
        "[kafka]\nbrokers = \"{}\"\ntopic = \"bench.single\"\n",
        tansu.brokers
    );
    let single = steady_cycles(&registry, &host, repos, 1, &kafka, false).await;
    let base = format!(
        "single node with [kafka] (same Tansu): {}. Without [kafka]: {:.0} ms CPU/1k req ({:.1} ms CPU/s)",
        summary(&single),
        bare.cpu_per_k(),
        bare.cpu_per_s()
    );
    for n in 1..=3 {
        eprintln!("cluster: {n} replica(s) on {repos} repositories...");
        let extra = cluster_tables(&tansu.brokers, &format!("bench.scan{n}"), "", "");
        let c = steady_cycles(&registry, &host, repos, n, &extra, true).await;
        let unsettled = if c.rebalances > 0.0 {
            format!("; {} rebalances during the window", c.rebalances)
        } else {
            String::new()
        };
        rows.push(row(
            &format!("cluster scan cycle, {n} replica(s), {repos} repos, Tansu"),
            format!(
                "{}; {:.2} state records/repo/cycle{unsettled}",
                summary(&c),
                c.records / c.repo_scans
            ),
            &base,
            &format!(
                "{:.2}x req, {:.2}x CPU/1k",
                c.per_repo() / single.per_repo(),
                c.cpu_per_k() / single.cpu_per_k()
            ),
            "~1 tags/list per repo per cycle",
        ));
    }
}

/// Failover on librdkafka's mock cluster (Tansu never evicts a member whose session expired):
/// 3 replicas, `kill -9` one, a new tag in every repository at that moment; how soon the
/// survivors own the dead one's partitions and every new tag is delivered.
async fn cluster_failover(rows: &mut Vec<Row>) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    const SESSION: u64 = 6;
    const INTERVAL: u64 = 5;
    let repos = env_usize("REGWATCH_BENCH_FAILOVER_REPOS", 120);
    let mock = rdkafka::mocking::MockCluster::new(1).unwrap();
    let brokers = mock.bootstrap_servers();
    let (registry, host) = synthetic_registry(repos, 3).await;
    let topic = "bench.failover";
    let extra = cluster_tables(
        &brokers,
        topic,
        "create_topic = false\n",
        // rdkafka's mock cluster has no DescribeConfigs.
        &format!("session_timeout = \"{SESSION}s\"\nverify_state_topic = false\n"),
    );
    let nodes = replicas(&host, &format!("{INTERVAL}s"), &extra, 3);
    let refs: Vec<&Replica> = nodes.iter().collect();
    let settled = wait_views(&refs, Duration::from_secs(300), |v| {
        v.iter()
            .all(|(t, ready)| *ready && metric(t, SCANS_OK) >= 1.0)
            && v.iter().map(|(t, _)| metric(t, OWNED_REPOS)).sum::<f64>() == repos as f64
    })
    .await;
    assert!(
        settled.is_some(),
        "3 replicas on the mock cluster did not settle within 300 s:\n{}",
        logs(&refs)
    );
    let partitions: f64 = views(&refs)
        .await
        .iter()
        .map(|(t, _)| metric(t, OWNED_PARTITIONS))
        .sum();

    // Every event with the new tag, and when it arrived.
    let arrivals = Arc::new(std::sync::Mutex::new(Vec::<(String, Instant)>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let listener = {
        let (arrivals, stop, brokers) = (arrivals.clone(), stop.clone(), brokers.clone());
        std::thread::spawn(move || {
            let consumer: BaseConsumer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("group.id", "bench-failover-reader")
                .set("enable.auto.commit", "false")
                .set("auto.offset.reset", "earliest")
                .set("fetch.wait.max.ms", "10")
                .create()
                .unwrap();
            consumer.subscribe(&[topic]).unwrap();
            while !stop.load(Ordering::Relaxed) {
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(20)) {
                    let event: serde_json::Value =
                        serde_json::from_slice(m.payload().unwrap_or_default()).unwrap_or_default();
                    if event["data"]["tag"] == "failover" {
                        let repo = event["data"]["repository"]
                            .as_str()
                            .unwrap_or("")
                            .to_owned();
                        arrivals.lock().unwrap().push((repo, Instant::now()));
                    }
                }
            }
        })
    };
    // Let the reader join its own group before the clock starts.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let texts = views(&refs).await;
    let victim = (0..3)
        .max_by(|a, b| {
            metric(&texts[*a].0, OWNED_PARTITIONS)
                .total_cmp(&metric(&texts[*b].0, OWNED_PARTITIONS))
        })
        .unwrap();
    let victim_partitions = metric(&texts[victim].0, OWNED_PARTITIONS);
    let victim_repos = metric(&texts[victim].0, OWNED_REPOS);
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(refs[victim].pid() as i32, libc::SIGKILL) };
    let killed = Instant::now();
    for r in 0..repos {
        registry.put(&format!("scale/r{r:04}"), "failover", 1);
    }
    let survivors: Vec<&Replica> = (0..3).filter(|i| *i != victim).map(|i| refs[i]).collect();
    let limit = Duration::from_secs(60);
    let mut owned_at = None;
    let mut all_at = None;
    while killed.elapsed() < limit && all_at.is_none() {
        if owned_at.is_none() {
            let v = views(&survivors).await;
            if v.iter()
                .map(|(t, _)| metric(t, OWNED_PARTITIONS))
                .sum::<f64>()
                == partitions
            {
                owned_at = Some(killed.elapsed());
            }
        }
        let got: std::collections::BTreeSet<String> = arrivals
            .lock()
            .unwrap()
            .iter()
            .map(|(r, _)| r.clone())
            .collect();
        if got.len() == repos {
            all_at = arrivals
                .lock()
                .unwrap()
                .iter()
                .map(|(_, t)| *t - killed)
                .max();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Late duplicates, if any, arrive within a cycle.
    tokio::time::sleep(Duration::from_secs(INTERVAL)).await;
    stop.store(true, Ordering::Relaxed);
    listener.join().unwrap();
    let arrivals = arrivals.lock().unwrap().clone();
    let mut first = std::collections::BTreeMap::<&str, f64>::new();
    for (repo, t) in &arrivals {
        let t = (*t - killed).as_secs_f64();
        first.entry(repo).and_modify(|f| *f = f.min(t)).or_insert(t);
    }
    let duplicates = arrivals.len() - first.len();
    // The survivors' own repositories are scanned within an interval of the push, the dead
    // replica's only after session_timeout (> interval): the last `victim_repos` to arrive.
    let mut times: Vec<f64> = first.values().copied().collect();
    times.sort_by(f64::total_cmp);
    let own = repos - victim_repos as usize;
    let (own_last, dead_first) = (
        times.get(own.wrapping_sub(1)).copied(),
        times.get(own).copied(),
    );
    let dead_last = (times.len() == repos).then(|| times[repos - 1]);
    if owned_at.is_none() || dead_last.is_none() {
        eprintln!("failover incomplete:\n{}", logs(&survivors));
    }
    let secs = |t: Option<f64>| t.map_or("not within 60 s".to_owned(), |t| format!("{t:.1} s"));
    let target = (SESSION + INTERVAL) as f64;
    rows.push(row(
        &format!("failover, 3 replicas on rdkafka's mock cluster, session_timeout {SESSION}s, interval {INTERVAL}s, kill -9 of one ({victim_partitions} of {partitions} partitions, {victim_repos} of {repos} repos)"),
        format!(
            "dead replica's repos: first new tag delivered after {}, all {victim_repos} after {}; partitions re-owned after {}; {} of {repos} delivered, {duplicates} duplicates",
            secs(dead_first),
            secs(dead_last),
            secs(owned_at.map(|d| d.as_secs_f64())),
            first.len()
        ),
        &format!(
            "survivors' own {own} repos: all new tags delivered after {}",
            secs(own_last)
        ),
        &dead_first.map_or(String::new(), |t| format!("{:.2}x target", t / target)),
        &format!("< {target} s (session_timeout + 1 interval)"),
    ));
    drop(mock);
}

/// Restore of 1 M tags of state from Tansu by a fresh replica, against a single node's restart on
/// its redb file.
async fn cluster_restore(rows: &mut Vec<Row>, tansu: &support::Tansu) {
    let repos = env_usize("REGWATCH_BENCH_SCALE_REPOS", 1000);
    let tags = env_usize("REGWATCH_BENCH_SCALE_TAGS", 1000);
    let total = repos * tags;
    let (registry, host) = synthetic_registry(repos, tags).await;

    // Single node: baseline, then a restart on the same state directory.
    let dir = tempfile::tempdir().unwrap();
    let (config, admin) = scale_config(dir.path(), &host, "1h", "");
    let d = daemon(&config);
    wait_scans(&admin, 1, Duration::from_secs(600)).await;
    drop(d);
    let (d, spawned, single_first) = first_request(&config, &registry).await;
    while !ready(&admin).await {
        assert!(
            spawned.elapsed() < Duration::from_secs(120),
            "single node never ready: {}",
            log_tail(&config)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let single_ready = spawned.elapsed();
    drop(d);

    // One replica takes the baseline into the state topic, then leaves (SIGTERM).
    let extra = cluster_tables(&tansu.brokers, "bench.restore", "", "");
    let first = replica(&host, "1h", &extra);
    let started = Instant::now();
    let baselined = wait_views(&[&first], Duration::from_secs(600), |v| {
        v[0].1 && metric(&v[0].0, OWNED_REPOS) == repos as f64
    })
    .await;
    let records = metric(
        &metrics_text(&first.admin).await,
        "regwatch_cluster_state_records_total",
    );
    if baselined.is_none() {
        eprintln!(
            "the first replica never held {repos} repositories and was ready:\n{}",
            logs(&[&first])
        );
    }
    eprintln!(
        "cluster baseline of {total} tags: {:.1} s, {records} state records",
        started.elapsed().as_secs_f64()
    );
    drop(first);

    // A fresh replica, empty state directory: restore, then its first cycle.
    let before = registry.requests();
    let fresh = replica(&host, "1h", &extra);
    let spawned = Instant::now();
    let mut first_request = None;
    let mut ready_at = None;
    while spawned.elapsed() < Duration::from_secs(300) {
        if first_request.is_none() && registry.requests() != before {
            first_request = Some(spawned.elapsed());
        }
        if ready(&fresh.admin).await {
            ready_at = Some(spawned.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let text = metrics_text(&fresh.admin).await;
    let restore = metric(&text, "regwatch_cluster_restore_seconds");
    let owned = metric(&text, OWNED_REPOS);
    let emitted = metric(&text, "regwatch_events_produced_total");
    if ready_at.is_none() {
        eprintln!(
            "the fresh replica was not ready within 300 s:\n{}",
            logs(&[&fresh])
        );
    }
    drop(fresh);
    let ms = |d: Option<Duration>| {
        d.map_or("never".to_owned(), |d| {
            format!("{:.0} ms", d.as_secs_f64() * 1000.0)
        })
    };
    rows.push(row(
        &format!("restore of {total} tags of state from Tansu, fresh replica ({repos} repos)"),
        format!(
            "restore {:.0} ms (regwatch_cluster_restore_seconds); start to ready {} (restore + first cycle); start to first registry request {}; {owned} repos held; {emitted} events re-emitted",
            restore * 1000.0,
            ms(ready_at),
            ms(first_request)
        ),
        &format!(
            "single node restarted on its redb file: first request {:.0} ms, ready {:.0} ms",
            single_first.as_secs_f64() * 1000.0,
            single_ready.as_secs_f64() * 1000.0
        ),
        &ready_at.map_or(String::new(), |r| format!("{:.1}x ready", r.as_secs_f64() / single_ready.as_secs_f64())),
        "restore < 5 s",
    ));
}

/// A replica of the store alone (no registry, no daemon) on `brokers`, its state topic
/// `<name>.state` (12 partitions, created if `create`), group `name`; returned once restored.
async fn churn_replica(
    brokers: &str,
    name: &str,
    create: bool,
) -> (Arc<regwatch::store::kafka::ClusterStore>, Instant) {
    let kafka = regwatch::config::KafkaConfig {
        brokers: brokers.into(),
        topic: format!("{name}.events"),
        create_topic: create,
        partitions: 1,
        replication_factor: -1,
        properties: Vec::new(),
    };
    let cluster = regwatch::config::ClusterConfig {
        group: name.into(),
        state_topic: format!("{name}.state"),
        session_timeout: Duration::from_secs(10),
        exactly_once: false,
        partitions: 12,
        // The mock cluster has no DescribeConfigs.
        verify_state_topic: create,
    };
    let store = Arc::new(regwatch::store::kafka::ClusterStore::new(&kafka, &cluster).unwrap());
    let readiness = Arc::new(regwatch::admin::Readiness::new(Vec::<String>::new(), false));
    let started = Instant::now();
    store.start(readiness.clone(), tokio::runtime::Handle::current());
    while readiness.check().is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "no restore: {:?}",
            readiness.check()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (store, started)
}

/// Records in `topic`, all 12 partitions.
fn state_topic_records(brokers: &str, topic: &str) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    (0..12)
        .map(|p| {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap();
            high - low
        })
        .sum()
}

/// A fresh replica's restore of `name`'s state: (seconds from assignment to restored, seconds
/// from start to ready, records read).
async fn churn_restore(brokers: &str, name: &str, create: bool) -> (f64, f64, i64) {
    let (store, started) = churn_replica(brokers, name, create).await;
    let ready = started.elapsed().as_secs_f64();
    let m = regwatch::metrics::get();
    let (restore, read) = (
        m.cluster_restore_seconds.get(),
        m.cluster_restore_records.get(),
    );
    store.stop(Duration::from_secs(10)).await;
    (restore, ready, read)
}

/// Restore after a simulated week of churn against the same state written once (issue 19, item
/// 9): 1,000 repositories of 10 tags, a push every 5 minutes to 10 % of them (a tag moved, and a
/// webhook hint), 2,016 ticks; the store alone, on Tansu (`REGWATCH_BENCH_CHURN_BROKER=mock`:
/// rdkafka's mock cluster, whose fetch scans every message set of a partition from its start,
/// so its restore time grows with history whatever is read). Neither compacts, so the restore
/// reads what checkpoints leave, no less.
async fn cluster_churn(rows: &mut Vec<Row>) {
    use regwatch::watch::diff::Snapshot;
    let repos = env_usize("REGWATCH_BENCH_CHURN_REPOS", 1000);
    let ticks = env_usize("REGWATCH_BENCH_CHURN_TICKS", 2016);
    let on_mock = std::env::var("REGWATCH_BENCH_CHURN_BROKER").is_ok_and(|b| b == "mock");
    let id = "https://churn.example";
    let snapshot = |r: usize, revision: u64, moves: &[u64]| Snapshot {
        revision,
        tags: (0..10)
            .map(|t| {
                let digest = format!("sha256:{r:08x}{t:04x}{:052x}", moves[t]);
                (format!("v1.{t}"), Some(digest))
            })
            .collect(),
        ..Snapshot::default()
    };
    let mock = on_mock.then(|| {
        let mock = rdkafka::mocking::MockCluster::new(1).unwrap();
        for name in ["week", "once"] {
            mock.create_topic(&format!("{name}.state"), 12, 1).unwrap();
            mock.create_topic(&format!("{name}.events"), 1, 1).unwrap();
        }
        mock
    });
    let tansu = (!on_mock).then(support::Tansu::start);
    let brokers = match (&mock, &tansu) {
        (Some(m), _) => m.bootstrap_servers(),
        (_, Some(t)) => t.brokers.clone(),
        _ => unreachable!(),
    };
    let create = !on_mock;

    // The week: every push written as a scan commits it, from 8 threads.
    let (store, _) = churn_replica(&brokers, "week", create).await;
    let started = Instant::now();
    let finals = {
        let store = store.clone();
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let mut moves = vec![vec![0u64; 10]; repos];
            let mut revisions = vec![0u64; repos];
            let commit = |r: usize, base: Option<u64>, next: &Snapshot| {
                let repo = format!("team/app{r:04}");
                store
                    .commit_scan(id, &repo, base, next, &[])
                    .unwrap_or_else(|e| panic!("{repo}: {e}"));
            };
            for r in 0..repos {
                revisions[r] = 1;
                commit(r, None, &snapshot(r, 1, &moves[r]));
            }
            let mut seed = 0x9e37_79b9_7f4a_7c15u64;
            let mut next = || {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed
            };
            for _ in 0..ticks {
                let pushed: std::collections::BTreeSet<usize> =
                    (0..repos / 10).map(|_| next() as usize % repos).collect();
                let work: Vec<(usize, u64, Snapshot)> = pushed
                    .into_iter()
                    .map(|r| {
                        let t = next() as usize % 10;
                        moves[r][t] += 1;
                        revisions[r] += 1;
                        (r, revisions[r], snapshot(r, revisions[r], &moves[r]))
                    })
                    .collect();
                std::thread::scope(|scope| {
                    for part in work.chunks(work.len().div_ceil(8).max(1)) {
                        let (store, commit, runtime) = (&store, &commit, &runtime);
                        scope.spawn(move || {
                            // The store waits for acknowledgements on the runtime.
                            let _runtime = runtime.enter();
                            for (r, revision, s) in part {
                                let repo = format!("team/app{r:04}");
                                store.forward_hint(id, &repo).unwrap();
                                commit(*r, Some(revision - 1), s);
                            }
                        });
                    }
                });
            }
            (0..repos)
                .map(|r| snapshot(r, revisions[r], &moves[r]))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap()
    };
    let week_took = started.elapsed();
    // The last checkpoints a second after the last write.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let checkpoints = regwatch::metrics::get().cluster_checkpoints.get();
    store.stop(Duration::from_secs(10)).await;
    let churned_records = state_topic_records(&brokers, "week.state");
    let (churned_restore, churned_ready, churned_read) =
        churn_restore(&brokers, "week", create).await;

    // The same state, written once.
    let (store, _) = churn_replica(&brokers, "once", create).await;
    {
        let store = store.clone();
        tokio::task::spawn_blocking(move || {
            for (r, s) in finals.iter().enumerate() {
                store
                    .commit_scan(id, &format!("team/app{r:04}"), None, s, &[])
                    .unwrap();
            }
        })
        .await
        .unwrap();
    }
    store.stop(Duration::from_secs(10)).await;
    let once_records = state_topic_records(&brokers, "once.state");
    let (once_restore, once_ready, once_read) = churn_restore(&brokers, "once", create).await;
    drop((mock, tansu));

    eprintln!(
        "churn: {ticks} ticks of {} pushes written in {:.1} s, {checkpoints} checkpoints",
        repos / 10,
        week_took.as_secs_f64()
    );
    rows.push(row(
        &format!(
            "restore after a simulated week of churn ({repos} repos x 10 tags, {ticks} ticks of {} pushes and hints; {})",
            repos / 10,
            if on_mock { "mock cluster" } else { "Tansu" }
        ),
        format!(
            "restore {:.0} ms (start to ready {:.0} ms), {churned_read} records read; {churned_records} records in the topic, {checkpoints} checkpoints",
            churned_restore * 1000.0,
            churned_ready * 1000.0
        ),
        &format!(
            "same state written once: restore {:.0} ms (start to ready {:.0} ms), {once_read} records read ({once_records} in the topic)",
            once_restore * 1000.0,
            once_ready * 1000.0
        ),
        &format!(
            "{:.2}x restore, {:.2}x records",
            churned_restore / once_restore,
            churned_read as f64 / once_read.max(1) as f64
        ),
        "<= 2x the state written once",
    ));
}

/// The cluster parts: `cluster` runs all, `cluster-throughput`, `cluster-restore` and
/// `cluster-failover` one each.
async fn cluster(rows: &mut Vec<Row>, wanted: impl Fn(&str) -> bool) {
    // One Tansu for both; each configuration has its own topics and group.
    let tansu = support::Tansu::start();
    if wanted("cluster-throughput") {
        cluster_throughput(rows, &tansu).await;
    }
    if wanted("cluster-restore") {
        cluster_restore(rows, &tansu).await;
    }
    drop(tansu);
    if wanted("cluster-failover") {
        cluster_failover(rows).await;
    }
}

// ------------------------------------------------------------------------------------------------
// 5. The diff's cost on a big repository: a cycle that brings 2,000 signatures, or keeps 50,000
// known platforms, must cost about what a cycle with one new tag costs (one pass over the tags).

fn diff_costs(rows: &mut Vec<Row>) {
    use regwatch::config::TagFilter;
    use regwatch::registry::Tag;
    use regwatch::watch::diff::{Snapshot, evaluate};
    let digest = |i: usize| format!("sha256:{i:064x}");
    let tag = |name: String, digest: Option<String>| Tag {
        name,
        digest,
        pushed_at: None,
    };
    let filter = TagFilter::default();
    let listing: Vec<Tag> = (0..50_000)
        .map(|i| tag(format!("t{i}"), Some(digest(i))))
        .collect();
    let prev = evaluate(Some(&Snapshot::default()), listing.clone(), &filter, false).snapshot;
    // The best of five runs of each, interleaved, so a noisy neighbour hits both alike.
    let time = |prev: &Snapshot, listing: &Vec<Tag>| {
        let started = Instant::now();
        let d = evaluate(Some(prev), listing.clone(), &filter, false);
        std::hint::black_box(d);
        started.elapsed()
    };
    let mut one_new = listing.clone();
    one_new.push(tag("new".into(), Some(digest(99_999_999))));
    let mut signed = listing.clone();
    signed.extend((0..2_000).map(|i| tag(format!("sha256-{i:064x}.sig"), None)));
    let mut with_platforms = prev.clone();
    with_platforms.platforms = (0..50_000)
        .map(|i| (digest(i), vec!["linux/amd64".to_owned()]))
        .collect();
    let (mut base, mut sigs, mut plats) = (Duration::MAX, Duration::MAX, Duration::MAX);
    for _ in 0..5 {
        base = base.min(time(&prev, &one_new));
        sigs = sigs.min(time(&prev, &signed));
        plats = plats.min(time(&with_platforms, &listing));
    }
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
    let ratio = |d: Duration| format!("{:.2}x", d.as_secs_f64() / base.as_secs_f64());
    rows.push(row(
        "diff, 50k tags + 2,000 new signatures",
        ms(sigs),
        &format!("{} (one new tag)", ms(base)),
        &ratio(sigs),
        "< 4x",
    ));
    rows.push(row(
        "diff, 50k tags with 50k known platforms",
        ms(plats),
        &format!("{} (one new tag)", ms(base)),
        &ratio(plats),
        "< 4x",
    ));

    // [registry.versions]: a cycle with a new version reads every listed tag once (the index
    // of what was known before and what is highest now), however many tags changed.
    let versioned = TagFilter {
        versions: Some(regwatch::watch::versions::VersionPolicy::new(
            None, true, true,
        )),
        ..TagFilter::default()
    };
    let version_tags: Vec<Tag> = (0..50_000)
        .map(|i| {
            tag(
                format!(
                    "{}.{}.{}-debian-12-r{}",
                    i / 2_500,
                    i / 50 % 50,
                    i % 50,
                    i % 7
                ),
                Some(digest(i)),
            )
        })
        .collect();
    let known = evaluate(
        Some(&Snapshot::default()),
        version_tags.clone(),
        &versioned,
        false,
    )
    .snapshot;
    let time_versioned = |listing: &Vec<Tag>| {
        let started = Instant::now();
        std::hint::black_box(evaluate(Some(&known), listing.clone(), &versioned, false));
        started.elapsed()
    };
    let mut one_version = version_tags.clone();
    one_version.push(tag("99.0.0-debian-12-r0".into(), Some(digest(99_999_998))));
    let mut many_versions = version_tags.clone();
    many_versions
        .extend((0..2_000).map(|i| tag(format!("v100.{i}.0-Alpine"), Some(digest(60_000 + i)))));
    let (mut one, mut many) = (Duration::MAX, Duration::MAX);
    for _ in 0..5 {
        one = one.min(time_versioned(&one_version));
        many = many.min(time_versioned(&many_versions));
    }
    rows.push(row(
        "diff, 50k version tags + 1 new version",
        ms(one),
        &format!("{} (one new tag, no versions)", ms(base)),
        &ratio(one),
        "< 10x",
    ));
    // Adversarial shapes: 50k pre-releases known before 2,000 new releases (a release is measured
    // against releases only), and 2,000 floating aliases on one digest with 50k tags (each names
    // the tag it points to).
    let pre_known: Vec<Tag> = (0..50_000)
        .map(|i| tag(format!("2.0.0-dev.{i}"), Some(digest(i))))
        .collect();
    let pre_snapshot = evaluate(
        Some(&Snapshot::default()),
        pre_known.clone(),
        &versioned,
        false,
    )
    .snapshot;
    let mut releases_after = pre_known;
    releases_after.extend((0..2_000).map(|i| tag(format!("1.0.{i}"), Some(digest(70_000 + i)))));
    let shared = digest(1);
    let aliased: Vec<Tag> = (0..50_000)
        .map(|i| tag(format!("{}.{}.0", i / 25, i % 25), Some(shared.clone())))
        .collect();
    let alias_snapshot = evaluate(
        Some(&Snapshot::default()),
        aliased.clone(),
        &versioned,
        false,
    )
    .snapshot;
    let mut with_aliases = aliased;
    with_aliases.extend((0..2_000).map(|i| tag(format!("{i}"), Some(shared.clone()))));
    let (mut pre_cost, mut alias_cost) = (Duration::MAX, Duration::MAX);
    for _ in 0..5 {
        let started = Instant::now();
        std::hint::black_box(evaluate(
            Some(&pre_snapshot),
            releases_after.clone(),
            &versioned,
            false,
        ));
        pre_cost = pre_cost.min(started.elapsed());
        let started = Instant::now();
        std::hint::black_box(evaluate(
            Some(&alias_snapshot),
            with_aliases.clone(),
            &versioned,
            false,
        ));
        alias_cost = alias_cost.min(started.elapsed());
    }
    rows.push(row(
        "diff, 50k pre-releases known + 2,000 new releases",
        ms(pre_cost),
        &format!("{} (one new version)", ms(one)),
        &format!("{:.2}x", pre_cost.as_secs_f64() / one.as_secs_f64()),
        "< 4x",
    ));
    rows.push(row(
        "diff, 50k tags on one digest + 2,000 new aliases",
        ms(alias_cost),
        &format!("{} (one new version)", ms(one)),
        &format!("{:.2}x", alias_cost.as_secs_f64() / one.as_secs_f64()),
        "< 4x",
    ));
    rows.push(row(
        "diff, 50k version tags + 2,000 new versions",
        ms(many),
        &format!("{} (one new version)", ms(one)),
        &format!("{:.2}x", many.as_secs_f64() / one.as_secs_f64()),
        "< 4x",
    ));
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let only = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let wanted = |name: &str| only.as_deref().is_none_or(|o| name.contains(o));
    let mut rows = Vec::new();
    runtime.block_on(async {
        if wanted("scan") {
            scan_throughput(&mut rows).await;
        }
        if wanted("scale") {
            scale(&mut rows).await;
        }
        if wanted("publish") {
            publishing(&mut rows).await;
        }
        if wanted("idle") {
            idle(&mut rows).await;
        }
        if wanted("cluster-throughput") || wanted("cluster-restore") || wanted("cluster-failover") {
            cluster(&mut rows, wanted).await;
        }
        if wanted("cluster-churn") {
            cluster_churn(&mut rows).await;
        }
        // Half an hour or more each: only when named.
        match only.as_deref() {
            Some("soak") => soak::soak(&mut rows, false).await,
            Some("soak-cluster") => soak::soak(&mut rows, true).await,
            _ => {}
        }
    });
    if wanted("diff") {
        diff_costs(&mut rows);
    }
    let w = |f: fn(&Row) -> &str| rows.iter().map(|r| f(r).len()).max().unwrap_or(0);
    let (a, b, c, d) = (
        w(|r| &r.figure),
        w(|r| &r.value),
        w(|r| &r.baseline),
        w(|r| &r.ratio),
    );
    println!();
    println!(
        "{:a$} | {:b$} | {:c$} | {:d$} | target",
        "figure", "regwatch", "baseline (same run)", "ratio"
    );
    println!("{}", "-".repeat(a + b + c + d + 20));
    for r in &rows {
        println!(
            "{:a$} | {:b$} | {:c$} | {:d$} | {}",
            r.figure, r.value, r.baseline, r.ratio, r.target
        );
    }
}
