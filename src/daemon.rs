//! Wiring: the commands `run`, `once`, `check`, `tags` and `repos`, built from a loaded [`Config`].

use std::collections::HashMap;
use std::future::Future;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;

use crate::admin::{self, Hook, Readiness};
use crate::watchdog::{self, Heartbeats};

use secrecy::{ExposeSecret, SecretString};

use crate::config::{Config, FirstRun, KafkaConfig, Provider, RegistryConfig};
use crate::registry::{self, Registry, RegistryError, Tag};
use crate::sink::{self, Sink, kafka::KafkaSink, stdout::StdoutSink};
use crate::store::kafka::ClusterStore;
use crate::store::{ReadOnlyStore, StateStore, Store};
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
        .map(|r| scanner(config, r))
        .collect()
}

/// The scanner of registry `r` of `config`, its state keyed by its identity within `config`.
fn scanner(config: &Config, r: &RegistryConfig) -> Result<Scanner, RuntimeError> {
    let mut scanner = Scanner::new(r, config.daemon.first_run, config.daemon.emit_removed)
        .map_err(|e| runtime(format!("registry {}: {e}", r.name)))?;
    scanner.identity = crate::store::identity_in(config, r);
    Ok(scanner)
}

/// Opens the state store and makes it the configured registries' (migrating an older file, and
/// forgetting registries no longer configured).
fn open_store(config: &Config) -> Result<Store, RuntimeError> {
    let store = Store::open(&config.daemon.state_dir).map_err(runtime)?;
    store
        .adopt_registries(&registry_identities(config))
        .map_err(runtime)?;
    Ok(store)
}

fn registry_identities(config: &Config) -> Vec<(String, String)> {
    config
        .registries
        .iter()
        .map(|r| {
            let id = crate::store::identity_in(config, r);
            if id != crate::store::identity(r) {
                tracing::warn!(registry = %r.name, "another [[registry]] watches the same registry; each keeps its own state, so renaming this one takes a new baseline");
            }
            (id, r.name.clone())
        })
        .collect()
}

fn make_sink(config: &Config) -> Result<Box<dyn Sink>, RuntimeError> {
    Ok(match &config.kafka {
        Some(k) => {
            let kafka = KafkaSink::new(k).map_err(|e| {
                runtime(format!("kafka: {}", crate::sink::kafka::creation_error(&e)))
            })?;
            Box::new(ClosedAside(Some(Box::new(kafka))))
        }
        None => Box::new(StdoutSink),
    })
}

/// A sink that is closed on a thread of its own. Closing a Kafka producer flushes for up to 5 s
/// against a dead broker; that must neither block an async worker nor hold up a bounded shutdown
/// (the process may exit mid-flush: whatever was not acknowledged is still in the outbox).
struct ClosedAside(Option<Box<dyn Sink>>);

#[async_trait::async_trait]
impl Sink for ClosedAside {
    async fn prepare(&mut self) -> Result<(), String> {
        self.0.as_mut().expect("open until dropped").prepare().await
    }

    async fn deliver(&mut self, batch: &[crate::event::Event]) -> Vec<usize> {
        self.0
            .as_mut()
            .expect("open until dropped")
            .deliver(batch)
            .await
    }

    fn recovered(&self) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
        self.0.as_ref().expect("open until dropped").recovered()
    }
}

impl Drop for ClosedAside {
    fn drop(&mut self) {
        if let Some(sink) = self.0.take() {
            std::thread::spawn(move || drop(sink));
        }
    }
}

/// Where state lives: the redb file with its outbox (single node), or the cluster's state topic
/// (events then go straight to Kafka as each scan commits, and there is no outbox).
#[derive(Clone)]
enum Backend {
    Single(Arc<Store>),
    Cluster(Arc<ClusterStore>),
}

impl Backend {
    fn state(&self) -> Arc<dyn StateStore> {
        match self {
            Backend::Single(s) => s.clone(),
            Backend::Cluster(c) => c.clone(),
        }
    }

    fn outbox(&self) -> Option<&Arc<Store>> {
        match self {
            Backend::Single(s) => Some(s),
            Backend::Cluster(_) => None,
        }
    }
}

/// A spawned task and the switch that asks it to stop.
struct Task<T = ()> {
    stop: watch::Sender<bool>,
    handle: JoinHandle<T>,
}

impl<T: Send + 'static> Task<T> {
    fn spawn<F: Future<Output = T> + Send + 'static>(
        run: impl FnOnce(watch::Receiver<bool>) -> F,
    ) -> Task<T> {
        let (stop, rx) = watch::channel(false);
        Task {
            stop,
            handle: tokio::spawn(run(rx)),
        }
    }

    /// Asks it to stop, and waits at most `within` before cancelling it.
    async fn stop_within(self, within: Duration) {
        let _ = self.stop.send(true);
        finish_or_abort(vec![self.handle], within).await;
    }
}

/// Waits for `tasks` until `within` has passed, then cancels those still running and waits for
/// them to unwind. Returns how many had to be cancelled.
async fn finish_or_abort<T>(tasks: Vec<JoinHandle<T>>, within: Duration) -> usize {
    let deadline = tokio::time::Instant::now() + within;
    let mut cancelled = 0;
    for mut t in tasks {
        if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
            t.abort();
            cancelled += 1;
            let _ = t.await;
        }
    }
    cancelled
}

/// What a registry loop runs with. A reload keeps a loop, with its schedule, backoff, token cache,
/// quota pause and learned listing behaviour, when these did not change.
struct LoopSettings {
    registry: RegistryConfig,
    /// What its state is keyed by, which another entry on the same registry can change.
    identity: String,
    first_run: FirstRun,
    emit_removed: bool,
    jitter: f64,
}

impl LoopSettings {
    fn of(config: &Config, registry: &RegistryConfig) -> LoopSettings {
        LoopSettings {
            registry: registry.clone(),
            identity: crate::store::identity_in(config, registry),
            first_run: config.daemon.first_run,
            emit_removed: config.daemon.emit_removed,
            jitter: config.daemon.jitter,
        }
    }

    /// Whether `other` would run the same loop. Compiled regexes and globs have no equality and
    /// secrets print redacted, so this compares the Debug form (every field, secrets hidden) and
    /// then the secrets themselves. The webhook token is not the loop's business.
    fn same_as(&self, other: &LoopSettings) -> bool {
        fn secrets(r: &RegistryConfig) -> Vec<&str> {
            let mut out: Vec<&str> = r
                .credentials
                .iter()
                .map(|c| c.password.expose_secret())
                .collect();
            match &r.provider {
                Provider::Ecr(e) => out.extend(e.keys.iter().map(|(_, k)| k.expose_secret())),
                Provider::Gcr(g) => out.extend(g.json_key.iter().map(|k| k.expose_secret())),
                Provider::Acr(a) => out.extend(a.client_secret.iter().map(|s| s.expose_secret())),
                Provider::Distribution => {}
            }
            out
        }
        format!("{:?}", self.registry) == format!("{:?}", other.registry)
            && secrets(&self.registry) == secrets(&other.registry)
            && self.identity == other.identity
            && self.first_run == other.first_run
            && self.emit_removed == other.emit_removed
            && self.jitter == other.jitter
    }
}

/// Whether two `[kafka]` sections configure the same sink (see [`LoopSettings::same_as`]).
fn same_kafka(a: Option<&KafkaConfig>, b: Option<&KafkaConfig>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            let secrets = |k: &KafkaConfig| -> Vec<String> {
                k.properties
                    .iter()
                    .map(|(_, v)| v.expose_secret().to_owned())
                    .collect()
            };
            format!("{a:?}") == format!("{b:?}") && secrets(a) == secrets(b)
        }
        _ => false,
    }
}

/// The hint queue a registry loop hands over when it ends.
type Hints = mpsc::Receiver<String>;

/// One registry's running loop.
struct RunningLoop {
    settings: LoopSettings,
    task: Task<Hints>,
    /// Its webhook hint queue; it outlives loop replacements, so webhooks keep reaching it.
    hints: mpsc::Sender<String>,
    /// The loop it replaced, which it waits for; cancelled with it at a bounded shutdown.
    predecessor: Option<tokio::task::AbortHandle>,
}

/// The running daemon: one loop per registry, the publisher, the admin endpoint, the Kafka probe
/// and the watchdog. A reload replaces only what its new configuration changed.
struct Daemon {
    backend: Backend,
    /// Changes when a full cycle of every registry is due at once (cluster mode: repositories
    /// taken over); the sender of a single node's never changes.
    rescans: watch::Receiver<u64>,
    _no_rescans: watch::Sender<u64>,
    wake: Arc<Notify>,
    readiness: Arc<Readiness>,
    heartbeats: Arc<Heartbeats>,
    fatal_tx: mpsc::Sender<String>,
    loops: HashMap<String, RunningLoop>,
    /// Loops of registries a reload removed, finishing their last scan, with their hint senders
    /// (a registry added back waits for its old loop, like a changed one).
    retiring: HashMap<String, (JoinHandle<Hints>, mpsc::Sender<String>)>,
    admin: Task,
    admin_listen: std::net::SocketAddr,
    /// The webhook tokens the admin endpoint was built with, by registry.
    hook_tokens: Vec<(String, SecretString)>,
    publisher: Task,
    probe: Option<Task>,
    watchdog: Task,
}

async fn bind_admin(listen: std::net::SocketAddr) -> Result<tokio::net::TcpListener, RuntimeError> {
    tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        runtime(format!(
            "cannot listen on daemon.admin_listen {listen}: {e}"
        ))
    })
}

fn hook_tokens(config: &Config) -> Vec<(String, SecretString)> {
    config
        .registries
        .iter()
        .filter_map(|r| Some((r.name.clone(), r.webhook_token.clone()?)))
        .collect()
}

fn same_tokens(a: &[(String, SecretString)], b: &[(String, SecretString)]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((n, t), (m, u))| n == m && t.expose_secret() == u.expose_secret())
}

impl Daemon {
    /// Starts everything `config` asks for.
    async fn start(
        config: &Config,
        backend: Backend,
    ) -> Result<(Daemon, mpsc::Receiver<String>), RuntimeError> {
        let scanners = scanners(config)?;
        let listener = bind_admin(config.daemon.admin_listen).await?;
        let names = config.registries.iter().map(|r| r.name.clone());
        let readiness = Arc::new(Readiness::new(names, config.kafka.is_some()));
        let heartbeats = Arc::new(Heartbeats::default());
        let wake = Arc::new(Notify::new());
        let (fatal_tx, fatal) = mpsc::channel(1);
        let publisher = match backend.outbox() {
            Some(store) => {
                let (store, wake, sink) = (store.clone(), wake.clone(), make_sink(config)?);
                Task::spawn(move |rx| sink::publish(store, sink, wake, rx))
            }
            None => Task::spawn(|_| async {}),
        };
        let (no_rescans, mut rescans) = watch::channel(0);
        if let Backend::Cluster(cluster) = &backend {
            cluster.start(readiness.clone(), tokio::runtime::Handle::current());
            rescans = cluster.rescans();
            // Restored partitions may hold the state of registries no longer configured.
            let (cluster, mut restores) = (cluster.clone(), cluster.rescans());
            tokio::spawn(async move {
                while restores.changed().await.is_ok() {
                    let cluster = cluster.clone();
                    let forgot = tokio::task::spawn_blocking(move || cluster.forget_unconfigured());
                    if let Ok(Err(e)) = forgot.await {
                        tracing::warn!(error = %e, "cluster: cannot forget the state of registries no longer configured; trying again at the next restore");
                    }
                }
            });
        }
        let watchdog = {
            let heartbeats = heartbeats.clone();
            Task::spawn(move |rx| watchdog::feed(heartbeats, rx))
        };
        let mut daemon = Daemon {
            backend,
            rescans,
            _no_rescans: no_rescans,
            wake,
            readiness,
            heartbeats,
            fatal_tx,
            loops: HashMap::new(),
            retiring: HashMap::new(),
            admin: Task::spawn(|_| async {}),
            admin_listen: config.daemon.admin_listen,
            hook_tokens: hook_tokens(config),
            publisher,
            probe: None,
            watchdog,
        };
        for (r, scanner) in config.registries.iter().zip(scanners) {
            let running = daemon.spawn_loop(LoopSettings::of(config, r), scanner, None);
            daemon.loops.insert(r.name.clone(), running);
        }
        daemon.admin = daemon.serve_admin(listener, config);
        daemon.probe = daemon.spawn_probe(config, None);
        let sink_name = if config.kafka.is_some() {
            "kafka"
        } else {
            "stdout"
        };
        tracing::info!(admin = %config.daemon.admin_listen, registries = config.registries.len(), sink = sink_name, "running");
        Ok((daemon, fatal))
    }

    /// Starts a registry loop. With `predecessor` (the loop it replaces, and that loop's hint
    /// sender), it starts only once that loop has finished its scan, so two loops never scan one
    /// registry at once, and it takes over the predecessor's hint queue.
    fn spawn_loop(
        &self,
        settings: LoopSettings,
        scanner: Scanner,
        predecessor: Option<(JoinHandle<Hints>, mpsc::Sender<String>)>,
    ) -> RunningLoop {
        let (hint_tx, queue) = match predecessor {
            Some((previous, tx)) => (tx, Err(previous)),
            None => {
                let (tx, rx) = mpsc::channel(1024);
                (tx, Ok(rx))
            }
        };
        let name = settings.registry.name.clone();
        let output = Output::Commit {
            store: self.backend.state(),
            published: self.wake.clone(),
        };
        if let Backend::Cluster(cluster) = &self.backend {
            cluster.route_hints(&settings.identity, hint_tx.clone());
        }
        let rescan = self.rescans.clone();
        let (readiness, heartbeats, fatal) = (
            self.readiness.clone(),
            self.heartbeats.clone(),
            self.fatal_tx.clone(),
        );
        let jitter = settings.jitter;
        let abort = queue.as_ref().err().map(JoinHandle::abort_handle);
        let task = Task::spawn(move |stop| async move {
            let hints = match queue {
                Ok(fresh) => fresh,
                Err(previous) => match previous.await {
                    Ok(hints) => hints,
                    Err(e) => {
                        // A loop that panicked never retired its heartbeat, so the watchdog
                        // restarts the daemon; until then, scan without webhook hints.
                        tracing::error!(registry = %name, error = %e, "the replaced loop died; webhook hints are lost until a restart");
                        mpsc::channel(1).1
                    }
                },
            };
            let registry_loop = RegistryLoop {
                scanner,
                output,
                jitter,
                hints,
                rescan,
                readiness,
                heartbeat: heartbeats.register(),
                fatal,
            };
            registry_loop.run(stop).await
        });
        RunningLoop {
            settings,
            task,
            hints: hint_tx,
            predecessor: abort,
        }
    }

    fn serve_admin(&self, listener: tokio::net::TcpListener, config: &Config) -> Task {
        let hooks = config
            .registries
            .iter()
            .filter_map(|r| {
                let token = r.webhook_token.clone()?;
                let hints = self.loops.get(&r.name)?.hints.clone();
                Some((r.name.clone(), Hook { token, hints }))
            })
            .collect();
        let app = admin::router(self.readiness.clone(), hooks);
        Task::spawn(move |rx| admin::serve(listener, app, rx))
    }

    /// Starts the Kafka probe of `config`, once `predecessor` (a reload's old probe) has stopped:
    /// the probe's view of the brokers is the process's, so two must never write it at once. In
    /// cluster mode it shares the replica's producer client rather than adding one.
    fn spawn_probe(&self, config: &Config, predecessor: Option<Task>) -> Option<Task> {
        let stop_predecessor = async move {
            if let Some(old) = predecessor {
                old.stop_within(Duration::from_secs(5)).await;
            }
        };
        let client = config.kafka.as_ref().and_then(|k| match &self.backend {
            Backend::Cluster(cluster) => Some(cluster.producer()),
            Backend::Single(_) => sink::kafka::SharedProducer::own(k)
                .inspect_err(|e| tracing::error!(error = %e, "cannot create the kafka probe"))
                .ok(),
        });
        let (Some(k), Some(client)) = (config.kafka.clone(), client) else {
            tokio::spawn(stop_predecessor);
            return None;
        };
        let readiness = self.readiness.clone();
        Some(Task::spawn(move |rx| async move {
            stop_predecessor.await;
            // Stopped while it waited (a second reload, a shutdown): it never probes.
            if !*rx.borrow() {
                sink::kafka::probe(k, client, readiness, rx).await;
            }
        }))
    }

    /// Applies `new` in place of `old`. Everything that can fail (the sink, the adapters, a new
    /// admin address) is prepared first, so a failed reload leaves the running daemon untouched.
    /// Nothing here waits for a scan: a replaced loop finishes its scan in the background while the
    /// watchdog keeps being fed, and its successor starts after it.
    async fn reload(&mut self, old: &Config, new: &Config) -> Result<(), RuntimeError> {
        let kafka_changed = !same_kafka(old.kafka.as_ref(), new.kafka.as_ref());
        if (old.cluster.is_some() || new.cluster.is_some())
            && (kafka_changed || old.cluster != new.cluster)
        {
            return Err(runtime(
                "changes to [cluster] or, in cluster mode, to [kafka] take effect on restart",
            ));
        }
        let sink = kafka_changed.then(|| make_sink(new)).transpose()?;
        let moved_admin = new.daemon.admin_listen != self.admin_listen;
        let listener = if moved_admin {
            Some(bind_admin(new.daemon.admin_listen).await?)
        } else {
            None
        };
        let mut fresh = Vec::new();
        for r in &new.registries {
            let settings = LoopSettings::of(new, r);
            let unchanged = self
                .loops
                .get(&r.name)
                .is_some_and(|l| l.settings.same_as(&settings));
            if !unchanged {
                fresh.push((settings, scanner(new, r)?));
            }
        }

        let added: Vec<String> = fresh
            .iter()
            .map(|(s, _)| s.registry.name.clone())
            .filter(|n| !self.loops.contains_key(n))
            .collect();
        let removed: Vec<String> = self
            .loops
            .keys()
            .filter(|n| !new.registries.iter().any(|r| &r.name == *n))
            .cloned()
            .collect();
        self.retiring.retain(|_, (t, _)| !t.is_finished());
        for name in &removed {
            let l = self.loops.remove(name).expect("listed above");
            let _ = l.task.stop.send(true);
            self.retiring.insert(name.clone(), (l.task.handle, l.hints));
            tracing::info!(registry = %name, "registry removed; its loop stops after its current scan");
        }
        for (settings, scanner) in fresh {
            let name = settings.registry.name.clone();
            let predecessor = self
                .loops
                .remove(&name)
                .map(|l| {
                    let _ = l.task.stop.send(true);
                    tracing::info!(registry = %name, "registry configuration changed; its loop restarts after its current scan");
                    (l.task.handle, l.hints)
                })
                .or_else(|| self.retiring.remove(&name));
            let running = self.spawn_loop(settings, scanner, predecessor);
            self.loops.insert(name, running);
        }
        self.readiness
            .reconfigure(&added, &removed, new.kafka.is_some());

        // The webhook routes hold each registry's token and hint queue: rebuild the endpoint when
        // the set of webhooks or a token changed.
        let tokens = hook_tokens(new);
        if moved_admin || !same_tokens(&tokens, &self.hook_tokens) {
            let old = std::mem::replace(&mut self.admin, Task::spawn(|_| async {}));
            let listener = match listener {
                Some(l) => {
                    tokio::spawn(old.stop_within(Duration::from_secs(2)));
                    Some(l)
                }
                None => {
                    // Same address: the old endpoint lets go of it first.
                    old.stop_within(Duration::from_secs(2)).await;
                    bind_admin(new.daemon.admin_listen)
                        .await
                        .inspect_err(
                            |e| tracing::error!(error = %e, "admin endpoint lost in the reload"),
                        )
                        .ok()
                }
            };
            if let Some(listener) = listener {
                self.admin = self.serve_admin(listener, new);
            }
            self.admin_listen = new.daemon.admin_listen;
            self.hook_tokens = tokens;
        }

        if let (Some(sink), Some(store)) = (sink, self.backend.outbox()) {
            // The new publisher starts once the old one has let go, so no event is sent twice by
            // two publishers; whatever the old one did not deliver is still in the outbox.
            let old = std::mem::replace(&mut self.publisher, Task::spawn(|_| async {}));
            let (store, wake) = (store.clone(), self.wake.clone());
            self.publisher = Task::spawn(move |rx| async move {
                old.stop_within(Duration::from_secs(5)).await;
                sink::publish(store, sink, wake, rx).await;
            });
            let old = self.probe.take();
            self.probe = self.spawn_probe(new, old);
        }
        Ok(())
    }

    /// Stops within `budget`: scans get the first half to finish (then are cancelled, which is
    /// safe: each repository commits atomically or not at all), the publisher the rest for its last
    /// deliveries (then is cancelled). Undelivered events stay in the outbox for the next start.
    async fn stop(self, budget: Duration) {
        let started = tokio::time::Instant::now();
        let mut scans = Vec::new();
        let mut predecessors = Vec::new();
        for (_, l) in self.loops {
            let _ = l.task.stop.send(true);
            scans.push(l.task.handle);
            predecessors.extend(l.predecessor);
        }
        scans.extend(self.retiring.into_values().map(|(t, _)| t));
        let cancelled = finish_or_abort(scans, budget / 2).await;
        for p in predecessors {
            p.abort();
        }
        if cancelled > 0 {
            tracing::warn!(
                cancelled,
                "scans still running at the shutdown deadline were cancelled; nothing of theirs was recorded"
            );
        }
        if let Backend::Cluster(cluster) = &self.backend {
            // No scan writes any more: leave the group, so the others take over at once.
            let left = budget.saturating_sub(started.elapsed() + Duration::from_millis(200));
            cluster.stop(left).await;
        }
        let left = budget.saturating_sub(started.elapsed() + Duration::from_millis(200));
        let _ = self.publisher.stop.send(true);
        if finish_or_abort(vec![self.publisher.handle], left).await > 0 {
            tracing::warn!(
                "delivery still running at the shutdown deadline was cancelled; undelivered events stay in the outbox"
            );
        }
        let mut rest = vec![self.admin, self.watchdog];
        rest.extend(self.probe);
        for t in &rest {
            let _ = t.stop.send(true);
        }
        let left = budget.saturating_sub(started.elapsed());
        finish_or_abort(rest.into_iter().map(|t| t.handle).collect(), left).await;
    }
}

/// `regwatch run`: poll every registry and publish until SIGTERM/SIGINT, then stop within
/// `daemon.shutdown_timeout`. SIGHUP reloads the configuration from `path`; an invalid new
/// configuration keeps the running one.
pub async fn run(path: &Path, mut config: Config) -> Result<(), RuntimeError> {
    use tokio::signal::unix::{SignalKind, signal};
    let backend = match (&config.cluster, &config.kafka) {
        (Some(cluster), Some(kafka)) => {
            let store = ClusterStore::new(kafka, cluster).map_err(runtime)?;
            // Nothing is owned yet: this only records which registries are configured.
            let ids: Vec<String> = registry_identities(&config)
                .into_iter()
                .map(|(id, _)| id)
                .collect();
            store.adopt_registries(&ids).map_err(runtime)?;
            tracing::info!(group = %cluster.group, state_topic = %cluster.state_topic, exactly_once = cluster.exactly_once, "regwatch starting in cluster mode");
            Backend::Cluster(Arc::new(store))
        }
        _ => {
            let store = Arc::new(open_store(&config)?);
            let pending = store.outbox_len().map_err(runtime)?;
            crate::metrics::get().outbox_pending.set(pending as i64);
            tracing::info!(outbox = pending, state = %config.daemon.state_dir.display(), "regwatch starting");
            Backend::Single(store)
        }
    };
    let (mut daemon, mut fatal) = Daemon::start(&config, backend.clone()).await?;
    watchdog::ready();

    let mut term = signal(SignalKind::terminate()).map_err(runtime)?;
    let mut hup = signal(SignalKind::hangup()).map_err(runtime)?;
    let outcome = loop {
        tokio::select! {
            _ = term.recv() => break Ok(()),
            _ = tokio::signal::ctrl_c() => break Ok(()),
            Some(reason) = fatal.recv() => break Err(runtime(format!(
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
                match daemon.reload(&config, &new).await {
                    Ok(()) => {
                        // Registries this configuration no longer has: their state is forgotten.
                        if let Backend::Cluster(cluster) = &backend {
                            let (cluster, ids) = (cluster.clone(), registry_identities(&new));
                            let ids: Vec<String> = ids.into_iter().map(|(id, _)| id).collect();
                            let adopted = tokio::task::spawn_blocking(move || {
                                cluster.adopt_registries(&ids)
                            })
                            .await;
                            if let Err(e) = adopted.map_err(runtime).and_then(|r| r.map_err(runtime)) {
                                tracing::error!(error = %e, "reload: cannot forget the state of registries no longer configured");
                            }
                        }
                        if let Some(store) = backend.outbox() {
                            let (store, ids) = (store.clone(), registry_identities(&new));
                            let adopted = tokio::task::spawn_blocking(move || {
                                store.adopt_registries(&ids)
                            })
                            .await;
                            if let Err(e) = adopted.map_err(runtime).and_then(|r| r.map_err(runtime)) {
                                tracing::error!(error = %e, "reload: cannot update the state store");
                            }
                        }
                        config = new;
                        tracing::info!("configuration reloaded");
                    }
                    Err(e) => tracing::error!(error = %e, "reload failed; keeping the running configuration"),
                }
                watchdog::ready();
            }
        }
    };
    watchdog::stopping();
    let budget = config.daemon.shutdown_timeout;
    tracing::info!(within = ?budget, "shutting down: finishing in-flight scans and delivering the outbox");
    daemon.stop(budget).await;
    match backend.outbox() {
        Some(store) => tracing::info!(outbox = store.outbox_len().unwrap_or(0), "stopped"),
        None => tracing::info!("stopped"),
    }
    outcome
}

/// `regwatch once`: one cycle of every registry, then deliver the outbox (or, with `dry_run`,
/// print what would be emitted and store nothing). Fails if any registry failed.
pub async fn once(config: Config, dry_run: bool) -> Result<(), RuntimeError> {
    if config.cluster.is_some() && !dry_run {
        return Err(runtime(
            "`once` does not run in cluster mode ([cluster] is set): the state lives with the \
             replicas of `regwatch run`; `once --dry-run` works",
        ));
    }
    // A dry run reads the store, when there is one, and writes nothing to it.
    let store = if dry_run {
        None
    } else {
        Some(Arc::new(open_store(&config)?))
    };
    let output = match &store {
        Some(store) => Output::Commit {
            store: store.clone(),
            published: Arc::new(Notify::new()),
        },
        None => {
            let file = config.daemon.state_dir.join(crate::store::FILE_NAME);
            let existing = file
                .exists()
                .then(|| ReadOnlyStore::open(&config.daemon.state_dir))
                .transpose()
                .map_err(runtime)?;
            Output::DryRun {
                store: existing.map(|s| Arc::new(s) as Arc<dyn StateStore>),
            }
        }
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

    if let Some(store) = &store {
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
            Ok(Some(source)) => format!("ok ({source})"),
            Ok(None) => "ok".to_string(),
            Err(e) => e.check_outcome(),
        };
        (r.name.clone(), outcome)
    }))
    .await;
    let width = results.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
    let mut bad = 0;
    let mut out = std::io::stdout().lock();
    for (name, outcome) in &results {
        // A reader that went away (`check | true`) does not change the outcome, the exit code.
        let _ = writeln!(out, "{name:width$}  {outcome}");
        bad += usize::from(!outcome.starts_with("ok"));
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

/// Checks one registry; `Ok` names the credential source used, `None` when anonymous.
async fn check_one(config: &RegistryConfig) -> Result<Option<String>, RegistryError> {
    let scanner = Scanner::new(config, crate::config::FirstRun::Baseline, false)?;
    scanner.registry.ping().await?;
    // Listing every watched repository proves read access where the registry scopes it per repo.
    for repo in scanner.watch_set().await? {
        scanner.registry.list_tags(&repo).await?;
    }
    Ok(scanner.registry.credential_source())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that says at once that its destination is back.
    struct Recovered;

    #[async_trait::async_trait]
    impl Sink for Recovered {
        async fn prepare(&mut self) -> Result<(), String> {
            Ok(())
        }
        async fn deliver(&mut self, _: &[crate::event::Event]) -> Vec<usize> {
            Vec::new()
        }
        fn recovered(&self) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
            Box::pin(async {})
        }
    }

    /// The daemon's wrapper passes the Kafka sink's "the brokers are back" on: without it the
    /// publisher sleeps out its backoff (up to 30 s) after the brokers returned.
    #[tokio::test]
    async fn the_closing_wrapper_passes_recovery_on() {
        let sink = ClosedAside(Some(Box::new(Recovered)));
        tokio::time::timeout(Duration::from_secs(1), sink.recovered())
            .await
            .expect("recovered() of the wrapped sink");
    }
}
