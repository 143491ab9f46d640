//! Wiring: the commands `run`, `once`, `check`, `tags` and `repos`, built from a loaded [`Config`].

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;

use crate::admin::{self, Hook, Readiness};
use crate::watchdog::{self, Heartbeats};

use crate::config::{Config, RegistryConfig};
use crate::registry::{self, Registry, RegistryError, Tag};
use crate::sink::{self, Sink, kafka::KafkaSink, stdout::StdoutSink};
use crate::store::{StateStore, Store};
use crate::watch::scan::{CycleReport, Output, Scanner};
use crate::watch::scheduler::RegistryLoop;

/// A failure that ends a command with exit code 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RuntimeError(pub String);

fn runtime(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError(e.to_string())
}

fn scanners(config: &Config) -> Result<Vec<Scanner>, RuntimeError> {
    config
        .registries
        .iter()
        .map(|r| {
            Scanner::new(r, config.daemon.first_run, config.daemon.emit_removed)
                .map_err(|e| runtime(format!("registry {}: {e}", r.name)))
        })
        .collect()
}

/// Opens the state store and makes it the configured registries' (migrating an older file and,
/// unless this is a dry run, forgetting registries no longer configured).
fn open_store(config: &Config, dry_run: bool) -> Result<Store, RuntimeError> {
    let store = Store::open(&config.daemon.state_dir).map_err(runtime)?;
    store
        .adopt_registries(&registry_identities(config), !dry_run)
        .map_err(runtime)?;
    Ok(store)
}

fn registry_identities(config: &Config) -> Vec<(String, String)> {
    config
        .registries
        .iter()
        .map(|r| (crate::store::identity(r), r.name.clone()))
        .collect()
}

fn make_sink(config: &Config) -> Result<Box<dyn Sink>, RuntimeError> {
    Ok(match &config.kafka {
        Some(k) => Box::new(KafkaSink::new(k).map_err(|e| runtime(format!("kafka: {e}")))?),
        None => Box::new(StdoutSink),
    })
}

/// The tasks built from one configuration.
struct Instance {
    /// Receives a reason when a task hits an error the daemon must exit on.
    fatal: mpsc::Receiver<String>,
    stop_scans: watch::Sender<bool>,
    stop_publisher: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    publisher: JoinHandle<()>,
}

impl Instance {
    /// Starts the registry loops, the publisher, the admin endpoint, the Kafka probe and the watchdog.
    async fn start(config: &Config, store: Arc<Store>) -> Result<Instance, RuntimeError> {
        let sink = make_sink(config)?;
        let scanners = scanners(config)?;
        let listen = config.daemon.admin_listen;
        let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
            runtime(format!(
                "cannot listen on daemon.admin_listen {listen}: {e}"
            ))
        })?;
        let (stop_scans, scans_rx) = watch::channel(false);
        let (stop_publisher, publisher_rx) = watch::channel(false);
        let wake = Arc::new(Notify::new());
        let names = scanners.iter().map(|s| s.config.name.clone());
        let readiness = Arc::new(Readiness::new(names, config.kafka.is_some()));
        let heartbeats = Arc::new(Heartbeats::default());
        let mut hooks = HashMap::new();
        let mut tasks = Vec::new();
        let (fatal_tx, fatal) = mpsc::channel(1);
        for scanner in scanners {
            let (hint_tx, hints) = mpsc::channel(1024);
            if let Some(token) = &scanner.config.webhook_token {
                let hook = Hook {
                    token: token.clone(),
                    hints: hint_tx,
                };
                hooks.insert(scanner.config.name.clone(), hook);
            }
            let registry_loop = RegistryLoop {
                scanner,
                output: Output::Commit {
                    store: store.clone(),
                    published: wake.clone(),
                },
                jitter: config.daemon.jitter,
                hints,
                readiness: readiness.clone(),
                heartbeat: heartbeats.register(),
                fatal: fatal_tx.clone(),
            };
            tasks.push(tokio::spawn(registry_loop.run(scans_rx.clone())));
        }
        let app = admin::router(readiness.clone(), hooks);
        tasks.push(tokio::spawn(admin::serve(listener, app, scans_rx.clone())));
        if let Some(k) = &config.kafka {
            let probe = crate::sink::kafka::probe(k.clone(), readiness, scans_rx.clone());
            tasks.push(tokio::spawn(probe));
        }
        tasks.push(tokio::spawn(watchdog::feed(heartbeats, scans_rx)));
        let publisher = tokio::spawn(sink::publish(store, sink, wake, publisher_rx));
        let sink_name = if config.kafka.is_some() {
            "kafka"
        } else {
            "stdout"
        };
        tracing::info!(admin = %listen, registries = config.registries.len(), sink = sink_name, "running");
        Ok(Instance {
            fatal,
            stop_scans,
            stop_publisher,
            tasks,
            publisher,
        })
    }

    /// Lets in-flight scans finish, then delivers what they committed, then returns.
    async fn stop(self) {
        let _ = self.stop_scans.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        let _ = self.stop_publisher.send(true);
        let _ = self.publisher.await;
    }
}

/// `regwatch run`: poll every registry and publish until SIGTERM/SIGINT. SIGHUP reloads the
/// configuration from `path`; an invalid new configuration keeps the running one.
pub async fn run(path: &Path, mut config: Config) -> Result<(), RuntimeError> {
    use tokio::signal::unix::{SignalKind, signal};
    let store = Arc::new(open_store(&config, false)?);
    let pending = store.outbox_len().map_err(runtime)?;
    crate::metrics::get().outbox_pending.set(pending as i64);
    tracing::info!(outbox = pending, state = %config.daemon.state_dir.display(), "regwatch starting");
    let mut instance = Instance::start(&config, store.clone()).await?;
    watchdog::ready();

    let mut term = signal(SignalKind::terminate()).map_err(runtime)?;
    let mut hup = signal(SignalKind::hangup()).map_err(runtime)?;
    let outcome = loop {
        tokio::select! {
            _ = term.recv() => break Ok(()),
            _ = tokio::signal::ctrl_c() => break Ok(()),
            Some(reason) = instance.fatal.recv() => break Err(runtime(format!(
                "{reason}; exiting so that a restart reopens and recovers the store"
            ))),
            _ = hup.recv() => {
                let new = match crate::config::load(path) {
                    Ok(new) => new,
                    Err(e) => {
                        tracing::error!(error = %e, "reload refused: the new configuration is invalid; keeping the running one");
                        continue;
                    }
                };
                watchdog::reloading();
                if new.daemon.state_dir != config.daemon.state_dir {
                    tracing::warn!("daemon.state_dir changes take effect on restart, not reload");
                }
                instance.stop().await;
                if let Err(e) = store.adopt_registries(&registry_identities(&new), true) {
                    tracing::error!(error = %e, "reload: cannot update the state store");
                }
                instance = match Instance::start(&new, store.clone()).await {
                    Ok(started) => {
                        config = new;
                        tracing::info!("configuration reloaded");
                        started
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "reload failed; restarting with the previous configuration");
                        Instance::start(&config, store.clone()).await?
                    }
                };
                watchdog::ready();
            }
        }
    };
    watchdog::stopping();
    tracing::info!("shutting down: finishing in-flight scans and delivering the outbox");
    instance.stop().await;
    tracing::info!(outbox = store.outbox_len().unwrap_or(0), "stopped");
    outcome
}

/// `regwatch once`: one cycle of every registry, then deliver the outbox (or, with `dry_run`,
/// print what would be emitted and store nothing). Fails if any registry failed.
pub async fn once(config: Config, dry_run: bool) -> Result<(), RuntimeError> {
    let store = if dry_run {
        let exists = config
            .daemon
            .state_dir
            .join(crate::store::FILE_NAME)
            .exists();
        exists
            .then(|| open_store(&config, true).map(Arc::new))
            .transpose()?
    } else {
        Some(Arc::new(open_store(&config, false)?))
    };
    let output = match (&store, dry_run) {
        (Some(store), false) => Output::Commit {
            store: store.clone(),
            published: Arc::new(Notify::new()),
        },
        _ => Output::DryRun {
            store: store.clone().map(|s| s as Arc<dyn StateStore>),
        },
    };
    let mut scanners = scanners(&config)?;
    // A progress bar per registry on a terminal; plain log lines otherwise.
    let bars = std::io::stderr()
        .is_terminal()
        .then(indicatif::MultiProgress::new);
    if let Some(multi) = &bars {
        let style = indicatif::ProgressStyle::with_template(
            "{prefix:>16} [{bar:32}] {pos}/{len} repositories  {elapsed}",
        )
        .expect("static template")
        .progress_chars("=> ");
        for s in &mut scanners {
            let bar = indicatif::ProgressBar::new(0)
                .with_style(style.clone())
                .with_prefix(s.config.name.clone());
            s.progress = Some(multi.add(bar));
        }
    }
    let reports = futures_util::future::join_all(scanners.iter().map(|s| async {
        let started = std::time::Instant::now();
        let result = s.cycle(&output, || false).await;
        if let Some(bar) = &s.progress {
            bar.finish();
        }
        (s.config.name.clone(), result, started.elapsed())
    }))
    .await;

    let mut failed = Vec::new();
    for (name, result, elapsed) in reports {
        match result {
            Ok(r @ CycleReport { failed: 0, .. }) => {
                tracing::info!(registry = %name, repositories = r.repositories, events = r.events, digest_lookups = r.digest_lookups, ?elapsed, "scan complete");
            }
            Ok(r) => {
                tracing::error!(registry = %name, failed = r.failed, of = r.repositories, "scan incomplete");
                failed.push(name);
            }
            Err(e) => {
                tracing::error!(registry = %name, error = %e, "scan failed");
                failed.push(name);
            }
        }
    }

    if let (Some(store), false) = (&store, dry_run) {
        let mut sink = make_sink(&config)?;
        let deadline = Duration::from_secs(60);
        let delivered = tokio::time::timeout(deadline, async {
            sink.prepare().await.map_err(runtime)?;
            sink::drain(store, sink.as_mut()).await.map_err(runtime)
        })
        .await
        .map_err(|_| {
            runtime("timed out delivering events; they stay in the outbox for the next run")
        })??;
        match delivered {
            (n, 0) => tracing::info!(delivered = n, "outbox delivered"),
            (n, left) => {
                return Err(runtime(format!(
                    "delivered {n} events, {left} left in the outbox for the next run"
                )));
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(runtime(format!("scan failed for: {}", failed.join(", "))))
    }
}

/// `regwatch check`: one line per registry; fails if any registry is not `ok`.
pub async fn check(config: &Config) -> Result<(), RuntimeError> {
    let results = futures_util::future::join_all(config.registries.iter().map(|r| async move {
        let outcome = match check_one(r).await {
            Ok(()) => "ok".to_string(),
            Err(e) => e.check_outcome(),
        };
        (r.name.clone(), outcome)
    }))
    .await;
    let width = results.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
    let mut bad = 0;
    for (name, outcome) in &results {
        println!("{name:width$}  {outcome}");
        bad += usize::from(outcome != "ok");
    }
    if bad == 0 {
        Ok(())
    } else {
        Err(runtime(format!(
            "{bad} of {} registries failed the check",
            results.len()
        )))
    }
}

async fn check_one(config: &RegistryConfig) -> Result<(), RegistryError> {
    let scanner = Scanner::new(config, crate::config::FirstRun::Baseline, false)?;
    scanner.registry.ping().await?;
    // Listing every watched repository proves read access where the registry scopes it per repo.
    for repo in scanner.watch_set().await? {
        scanner.registry.list_tags(&repo).await?;
    }
    Ok(())
}

fn find_registry<'a>(config: &'a Config, name: &str) -> Result<&'a RegistryConfig, RuntimeError> {
    config
        .registries
        .iter()
        .find(|r| r.name == name)
        .ok_or_else(|| {
            let names: Vec<&str> = config.registries.iter().map(|r| r.name.as_str()).collect();
            runtime(format!(
                "no registry named {name:?}; configured: {}",
                names.join(", ")
            ))
        })
}

/// `regwatch repos`: the live watch set of one registry.
pub async fn repos(config: &Config, name: &str) -> Result<Vec<String>, RuntimeError> {
    let r = find_registry(config, name)?;
    let scanner = Scanner::new(r, config.daemon.first_run, false).map_err(runtime)?;
    scanner.watch_set().await.map_err(runtime)
}

/// `regwatch tags`: the live tags of one repository, each with its digest.
pub async fn tags(config: &Config, name: &str, repo: &str) -> Result<Vec<Tag>, RuntimeError> {
    let r = find_registry(config, name)?;
    let registry: Arc<dyn Registry> = registry::connect(r).map_err(runtime)?;
    let repo = &r.qualified(repo);
    let mut tags = registry.list_tags(repo).await.map_err(runtime)?;
    let lookups = tags
        .iter()
        .enumerate()
        .filter(|(_, t)| t.digest.is_none())
        .map(|(i, t)| {
            let registry = registry.clone();
            let tag = t.name.clone();
            async move { registry.digest(repo, &tag).await.map(|d| (i, d)) }
        });
    use futures_util::{StreamExt, TryStreamExt};
    let digests: Vec<(usize, String)> = futures_util::stream::iter(lookups)
        .buffer_unordered(r.concurrency)
        .try_collect()
        .await
        .map_err(runtime)?;
    for (i, d) in digests {
        tags[i].digest = Some(d);
    }
    Ok(tags)
}
