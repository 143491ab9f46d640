//! Soak: a compressed month, run only when named (`cargo bench --bench scan -- soak` for a single
//! node, `-- soak-cluster` for three replicas).
//!
//! 5,000 repositories at a 1 s interval; a few pushes a second (new tags, re-pushes of the
//! mutable `latest`, deletes, in balance so that the working set stays steady), every fifth one
//! announced by a webhook hint; Tansu paused for a minute every 10 minutes; the registry answering
//! 500 for a minute every 7; a SIGHUP reload with a changed config every 3 minutes; and in
//! cluster mode a replica restarted every 8 minutes. Every 10 s it samples RSS, open descriptors,
//! threads, the store's file size, the outbox and CPU per scan cycle; it prints each one's slope
//! over the second half, per hour and per simulated day (the 1 s interval stands for the usual
//! 60 s, so a simulated day is 24 minutes), writes an SVG of the samples under `target/`, and
//! checks, event by event, that every push was delivered once under one id.
//!
//! REGWATCH_SOAK_MINUTES (default 30), REGWATCH_SOAK_REPOS (5000), REGWATCH_SOAK_PUSHES (per
//! second, 3). REGWATCH_SOAK_KEEP=1 keeps the run's directory (each replica's config, log and
//! state, `timeline.txt` of the faults injected, `missing.txt` and `phantom.txt`) and prints its
//! path; REGWATCH_BENCH_LOG sets the replicas' `RUST_LOG` (default `warn`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;

use super::*;

/// How many times faster than real life the soak runs: its 1 s interval stands for 60 s.
const COMPRESSION: f64 = 60.0;
/// How often every figure is sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// A repository is pushed to at most this often, so that every push is seen by a scan before
/// the next one to the same repository (a cycle of 5,000 repositories takes seconds).
const REPO_QUIET: Duration = Duration::from_secs(300);
/// The webhook token of the soak's registry.
const HOOK_TOKEN: &str = "soak";
/// The events topic.
const TOPIC: &str = "soak.events";

/// A change the soak made, as the event that must report it: (type, repository, tag, digest).
type Change = (String, String, String, String);

/// One sampled figure over time: (seconds since the start, value).
struct Series {
    name: &'static str,
    unit: &'static str,
    points: Vec<(f64, f64)>,
}

/// What one sample of a process reads.
struct ProcessSample {
    rss_mb: f64,
    fds: f64,
    threads: f64,
}

fn process_sample(pid: u32) -> Option<ProcessSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let count =
        |dir: &str| std::fs::read_dir(format!("/proc/{pid}/{dir}")).map_or(0, |d| d.count());
    Some(ProcessSample {
        rss_mb: rss_kb / 1024.0,
        fds: count("fd") as f64,
        threads: count("task") as f64,
    })
}

/// Bytes of every file under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                Ok(m) => m.len(),
                Err(_) => 0,
            })
            .sum()
    })
}

/// Least-squares slope of `points` (value per second).
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (mt, mv) = (
        points.iter().map(|p| p.0).sum::<f64>() / n,
        points.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let cov: f64 = points.iter().map(|(t, v)| (t - mt) * (v - mv)).sum();
    let var: f64 = points.iter().map(|(t, _)| (t - mt).powi(2)).sum();
    if var == 0.0 { 0.0 } else { cov / var }
}

/// An SVG of every series, one panel each, each scaled to its own range.
fn svg(series: &[Series], title: &str) -> String {
    const W: f64 = 760.0;
    const PANEL: f64 = 110.0;
    let height = 40.0 + PANEL * series.len() as f64;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"10\" y=\"20\" font-size=\"14\">{title}</text>\n"
    );
    let t_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    for (i, s) in series.iter().enumerate() {
        let top = 40.0 + PANEL * i as f64;
        let (lo, hi) = s.points.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| {
            (lo.min(p.1), hi.max(p.1))
        });
        let (lo, hi) = if lo > hi {
            (0.0, 1.0)
        } else {
            (lo, hi.max(lo + 1e-9))
        };
        let _ = writeln!(
            out,
            "<text x=\"10\" y=\"{}\">{} ({}): {:.2} to {:.2}</text>",
            top + 12.0,
            s.name,
            s.unit,
            lo,
            hi
        );
        let _ = writeln!(
            out,
            "<rect x=\"60\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#ccc\"/>",
            top + 18.0,
            W - 80.0,
            PANEL - 30.0
        );
        let points: Vec<String> = s
            .points
            .iter()
            .map(|(t, v)| {
                let x = 60.0 + (W - 80.0) * t / t_max;
                let y = top + 18.0 + (PANEL - 30.0) * (1.0 - (v - lo) / (hi - lo));
                format!("{x:.1},{y:.1}")
            })
            .collect();
        let _ = writeln!(
            out,
            "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\"{}\"/>",
            points.join(" ")
        );
    }
    let _ = writeln!(
        out,
        "<text x=\"60\" y=\"{}\">0 to {:.0} minutes (one simulated day every {:.0} minutes)</text>\n</svg>",
        height - 6.0,
        t_max / 60.0,
        86_400.0 / COMPRESSION / 60.0
    );
    out
}

/// One replica (or the single node): its config, admin address and process.
struct Node {
    config: PathBuf,
    admin: String,
    state_dir: PathBuf,
    daemon: Option<Daemon>,
}

impl Node {
    fn pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(|d| d.0.id())
    }
}

/// The config of node `i`; `reload` flips a registry setting that changes nothing reported, so
/// that a SIGHUP rebuilds the registry's loop.
fn node_config(dir: &Path, host: &str, brokers: &str, cluster: bool, reload: bool) -> String {
    let cluster_table = if cluster {
        "[cluster]\ngroup = \"soak\"\nsession_timeout = \"6s\"\n"
    } else {
        ""
    };
    let exclude = if reload {
        "exclude_tags = [\"^never-\"]\n"
    } else {
        ""
    };
    format!(
        "[daemon]\nstate_dir = \"{}\"\ninterval = \"1s\"\njitter = \"0%\"\nemit_removed = true\nadmin_listen = \"{{ADMIN}}\"\n[kafka]\nbrokers = \"{brokers}\"\ntopic = \"{TOPIC}\"\n{cluster_table}[[registry]]\nname = \"syn\"\nkind = \"oci\"\nurl = \"http://{host}\"\ninsecure = true\nrepositories = [\"scale/*\"]\nmutable_tags = [\"latest\"]\nconcurrency = 16\nrate_limit = 1000000\nwebhook_token = \"{HOOK_TOKEN}\"\n{exclude}",
        dir.join("state").display()
    )
}

fn write_config(node: &Node, text: &str) {
    std::fs::write(&node.config, text.replace("{ADMIN}", &node.admin)).unwrap();
}

/// Pushes, re-pushes and deletes at `rate` per second until `stop`, recording every change.
async fn push_loop(
    registry: Arc<support::synthetic::Synthetic>,
    repos: usize,
    rate: f64,
    admins: Arc<Mutex<Vec<String>>>,
    changes: Arc<Mutex<Vec<(Change, Instant)>>>,
    stop: Arc<AtomicBool>,
) {
    let client = reqwest::Client::new();
    let mut touched: HashMap<usize, Instant> = HashMap::new();
    let mut n: u32 = 0;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let Some(r) = (0..20)
            .map(|_| rand::random_range(0..repos))
            .find(|r| touched.get(r).is_none_or(|t| t.elapsed() >= REPO_QUIET))
        else {
            continue;
        };
        touched.insert(r, Instant::now());
        n += 1;
        let repo = format!("scale/r{r:04}");
        let tags: Vec<(String, String)> = registry
            .repos
            .lock()
            .unwrap()
            .get(&repo)
            .map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        let pushed: Vec<&(String, String)> =
            tags.iter().filter(|(t, _)| t.starts_with('p')).collect();
        let roll = rand::random_range(0..10);
        let change = if roll < 4 && !pushed.is_empty() {
            // Deletes balance the new tags: the working set stays steady.
            let (tag, digest) = pushed[rand::random_range(0..pushed.len())].clone();
            if let Some(t) = registry.repos.lock().unwrap().get_mut(&repo) {
                t.remove(&tag);
            }
            ("io.regwatch.tag.removed", tag, digest)
        } else if roll < 6 {
            let existed = tags.iter().any(|(t, _)| t == "latest");
            let digest = registry.put(&repo, "latest", n);
            let kind = if existed {
                "io.regwatch.tag.updated"
            } else {
                "io.regwatch.tag.added"
            };
            (kind, "latest".to_string(), digest)
        } else {
            let tag = format!("p{n}");
            let digest = registry.put(&repo, &tag, n);
            ("io.regwatch.tag.added", tag, digest)
        };
        changes.lock().unwrap().push((
            (change.0.to_string(), repo.clone(), change.1, change.2),
            Instant::now(),
        ));
        if n.is_multiple_of(5) {
            let admin = {
                let admins = admins.lock().unwrap();
                admins[rand::random_range(0..admins.len())].clone()
            };
            let body =
                format!(r#"{{"events":[{{"action":"push","target":{{"repository":"{repo}"}}}}]}}"#);
            // A replica restarting meanwhile refuses it: the next cycle finds the push anyway.
            let _ = client
                .post(format!("http://{admin}/hooks/syn"))
                .bearer_auth(HOOK_TOKEN)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await;
        }
    }
}

/// Sends `signal` to `pid`.
fn signal(pid: u32, signal: i32) {
    // SAFETY: plain kill(2) on a child of ours.
    unsafe { libc::kill(pid as i32, signal) };
}

/// Runs the soak; `cluster` runs three replicas instead of one node.
pub async fn soak(rows: &mut Vec<Row>, cluster: bool) {
    let minutes = env_usize("REGWATCH_SOAK_MINUTES", 30) as u64;
    let repos = env_usize("REGWATCH_SOAK_REPOS", 5000);
    let rate = env_usize("REGWATCH_SOAK_PUSHES", 3) as f64;
    let mode = if cluster {
        "cluster, 3 replicas"
    } else {
        "single node"
    };
    let (registry, host) = synthetic_registry(repos, 3).await;
    let tansu = support::Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let count = if cluster { 3 } else { 1 };
    let mut nodes: Vec<Node> = (0..count)
        .map(|i| {
            let node_dir = dir.path().join(format!("node{i}"));
            std::fs::create_dir_all(&node_dir).unwrap();
            Node {
                config: node_dir.join("regwatch.toml"),
                admin: format!("127.0.0.1:{}", free_port()),
                state_dir: node_dir.join("state"),
                daemon: None,
            }
        })
        .collect();
    let config_of = |node: &Node, reload: bool| {
        node_config(
            node.config.parent().unwrap(),
            &host,
            &tansu.brokers,
            cluster,
            reload,
        )
    };
    for node in &mut nodes {
        write_config(node, &config_of(node, false));
        node.daemon = Some(daemon(&node.config));
    }
    eprintln!("soak ({mode}): waiting for the baseline of {repos} repositories...");
    let started = Instant::now();
    for node in &nodes {
        while !(ready(&node.admin).await && scans_ok(&node.admin).await >= 1) {
            assert!(
                started.elapsed() < Duration::from_secs(900),
                "never ready: {}",
                log_tail(&node.config)
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    eprintln!(
        "soak ({mode}): baseline done in {:.0} s; running {minutes} minutes",
        started.elapsed().as_secs_f64()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let changes = Arc::new(Mutex::new(Vec::new()));
    let admins = Arc::new(Mutex::new(
        nodes.iter().map(|n| n.admin.clone()).collect::<Vec<_>>(),
    ));
    let pusher = tokio::spawn(push_loop(
        registry.clone(),
        repos,
        rate,
        admins,
        changes.clone(),
        stop.clone(),
    ));

    let names = [
        ("RSS", "MB"),
        ("open descriptors", "count"),
        ("threads", "count"),
        ("store file", "MB"),
        ("outbox", "events"),
        ("CPU per scan cycle", "ms"),
    ];
    let mut series: Vec<Series> = names
        .iter()
        .map(|(name, unit)| Series {
            name,
            unit,
            points: Vec::new(),
        })
        .collect();
    let run = Duration::from_secs(minutes * 60);
    let t0 = Instant::now();
    let mut last = (0.0, 0.0);
    // What was done when, for reading the replicas' logs against.
    let mut timeline = String::new();
    let mut log_fault = |what: &str| {
        let _ = writeln!(timeline, "{:7.1} s {what}", t0.elapsed().as_secs_f64());
    };
    let (mut reloaded, mut outages, mut failures, mut restarts) = (false, 0, 0, 0);
    let mut next = BTreeMap::from([
        ("sample", SAMPLE_EVERY),
        ("reload", Duration::from_secs(180)),
        ("outage", Duration::from_secs(600)),
        ("registry", Duration::from_secs(210)),
        ("restart", Duration::from_secs(480)),
    ]);
    if !cluster {
        next.remove("restart");
    }
    while t0.elapsed() < run {
        let (&what, &at) = next.iter().min_by_key(|(_, at)| **at).unwrap();
        tokio::time::sleep(at.saturating_sub(t0.elapsed())).await;
        match what {
            "sample" => {
                // The first node is never restarted: its process is the one followed.
                let node = &nodes[0];
                let Some(pid) = node.pid() else { continue };
                let t = t0.elapsed().as_secs_f64();
                if let Some(p) = process_sample(pid) {
                    let text = metrics_text(&node.admin).await;
                    let cycles = metric(&text, "regwatch_scans_total");
                    let cpu = on_cpu_seconds(pid);
                    let per_cycle = if cycles > last.0 {
                        (cpu - last.1) / (cycles - last.0) * 1000.0
                    } else {
                        0.0
                    };
                    last = (cycles, cpu);
                    let values = [
                        p.rss_mb,
                        p.fds,
                        p.threads,
                        dir_bytes(&node.state_dir) as f64 / 1e6,
                        metric(&text, "regwatch_outbox_pending"),
                        per_cycle,
                    ];
                    for (s, v) in series.iter_mut().zip(values) {
                        s.points.push((t, v));
                    }
                }
                next.insert("sample", at + SAMPLE_EVERY);
            }
            "reload" => {
                reloaded = !reloaded;
                log_fault(&format!(
                    "reload, exclude_tags {}",
                    if reloaded { "set" } else { "unset" }
                ));
                for node in &nodes {
                    write_config(node, &config_of(node, reloaded));
                    if let Some(pid) = node.pid() {
                        signal(pid, libc::SIGHUP);
                    }
                }
                next.insert("reload", at + Duration::from_secs(180));
            }
            "outage" => {
                // Paused, not killed: the broker keeps what it holds, and its clients' connections
                // hang rather than fail, as behind a network partition.
                outages += 1;
                log_fault("Kafka paused for 60 s");
                let pid = tansu.pid();
                signal(pid, libc::SIGSTOP);
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    signal(pid, libc::SIGCONT);
                });
                next.insert("outage", at + Duration::from_secs(600));
            }
            "registry" => {
                failures += 1;
                log_fault("registry answering 500 for 60 s");
                registry.failing.store(true, Ordering::Relaxed);
                let registry = registry.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    registry.failing.store(false, Ordering::Relaxed);
                });
                next.insert("registry", at + Duration::from_secs(420));
            }
            "restart" => {
                restarts += 1;
                let node = &mut nodes[1 + restarts % 2];
                log_fault(&format!("replica {} restarted", 1 + restarts % 2));
                drop(node.daemon.take());
                node.daemon = Some(daemon(&node.config));
                next.insert("restart", at + Duration::from_secs(480));
            }
            _ => unreachable!(),
        }
    }
    stop.store(true, Ordering::Relaxed);
    pusher.await.unwrap();
    // A pause or a registry minute still in force ends first.
    tokio::time::sleep(Duration::from_secs(61)).await;
    let pushed: Vec<(Change, Instant)> = changes.lock().unwrap().clone();
    let pushed_at: HashMap<&Change, f64> = pushed
        .iter()
        .map(|(c, at)| (c, at.saturating_duration_since(t0).as_secs_f64()))
        .collect();
    let expected: Vec<&Change> = pushed.iter().map(|(c, _)| c).collect();

    // Every push must come out; give the last ones (and any backlog) time to.
    let want: HashSet<&Change> = expected.iter().copied().collect();
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut seen = HashMap::<Change, HashSet<String>>::new();
    let records = loop {
        seen.clear();
        let brokers = tansu.brokers.clone();
        let consumed = tokio::task::spawn_blocking(move || {
            support::consume(
                &brokers,
                TOPIC,
                0,
                Duration::from_secs(60),
                Duration::from_secs(3),
            )
        })
        .await
        .unwrap();
        for r in &consumed {
            let d = &r.payload["data"];
            let key = (
                r.payload["type"].as_str().unwrap_or_default().to_string(),
                d["repository"].as_str().unwrap_or_default().to_string(),
                d["tag"].as_str().unwrap_or_default().to_string(),
                d["digest"].as_str().unwrap_or_default().to_string(),
            );
            seen.entry(key)
                .or_default()
                .insert(r.payload["id"].as_str().unwrap_or_default().to_string());
        }
        if want.iter().all(|c| seen.contains_key(*c)) || Instant::now() > deadline {
            break consumed.len();
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    };
    let mut missing: Vec<String> = want
        .iter()
        .filter(|c| !seen.contains_key(**c))
        .map(|c| format!("{:7.1} s {c:?}", pushed_at[*c]))
        .collect();
    let mut phantom: Vec<String> = seen
        .iter()
        .filter(|(c, _)| !want.contains(c))
        .map(|(c, ids)| format!("{c:?} {ids:?}"))
        .collect();
    missing.sort();
    phantom.sort();
    for (name, text) in [
        ("timeline.txt", timeline),
        ("missing.txt", missing.join("\n")),
        ("phantom.txt", phantom.join("\n")),
    ] {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let (missing, phantom) = (missing.len(), phantom.len());
    let forked = seen.values().filter(|ids| ids.len() > 1).count();
    let distinct: usize = seen.values().map(HashSet::len).sum();
    for node in &mut nodes {
        drop(node.daemon.take());
    }

    let label = if cluster { "soak-cluster" } else { "soak" };
    let svg_path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("target/{label}.svg"));
    std::fs::write(
        &svg_path,
        svg(
            &series,
            &format!(
                "regwatch soak, {mode}: {repos} repositories, {minutes} min at a 1 s interval"
            ),
        ),
    )
    .unwrap();
    eprintln!("soak ({mode}): plot written to {}", svg_path.display());
    if std::env::var_os("REGWATCH_SOAK_KEEP").is_some() {
        eprintln!("soak ({mode}): run kept in {}", dir.keep().display());
    }

    let half = run.as_secs_f64() / 2.0;
    for s in &series {
        let second: Vec<(f64, f64)> = s.points.iter().copied().filter(|p| p.0 >= half).collect();
        let per_second = slope(&second);
        let mean = second.iter().map(|p| p.1).sum::<f64>() / second.len().max(1) as f64;
        let over_half = per_second * half;
        let relative = if mean.abs() > f64::EPSILON {
            over_half / mean
        } else {
            0.0
        };
        rows.push(row(
            &format!("{label}: {} ({})", s.name, s.unit),
            format!(
                "second-half mean {mean:.2}; slope {:+.3}/h, {:+.3} per simulated day",
                per_second * 3600.0,
                per_second * 86_400.0 / COMPRESSION
            ),
            &format!(
                "{} samples, {:.0} min",
                s.points.len(),
                run.as_secs_f64() / 60.0
            ),
            &format!("{:+.1} % over the second half", relative * 100.0),
            "flat once the working set is steady",
        ));
    }
    rows.push(row(
        &format!("{label}: every push delivered, by event"),
        format!(
            "{} changes: {missing} missing, {phantom} phantom, {forked} under two ids; {records} records, {} duplicates",
            expected.len(),
            records - distinct
        ),
        &format!(
            "{outages} Kafka pauses of 60 s, {failures} registry outages of 60 s (500s), {} reloads{}",
            minutes * 60 / 180,
            if cluster { format!(", {restarts} replica restarts") } else { String::new() }
        ),
        "",
        "0 missing, 0 phantom, 0 under two ids",
    ));
}
