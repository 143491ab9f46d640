//! Cluster mode's store: state in a compacted Kafka topic, the work split by its partitions among
//! the replicas of one consumer group (see `docs/src/cluster.md`).
//!
//! Every record's key is a JSON array, and names the partition it is written to:
//! - `["repo", identity, repository]`: the repository's header (or a pending repository's
//!   state), or a tombstone once forgotten. Its partition is the repository's: whoever owns the
//!   partition scans the repository.
//! - `["tag", identity, repository, tag]` and `["digest", identity, repository, digest]`: the
//!   repository's items, in its partition, written before the header by a commit ([`records`]
//!   has the layout): no record grows with the repository, and a write costs what changed.
//! - `["watch", identity]`: the `repositories` patterns of the owner's last complete listing,
//!   written to each partition it owns (so the next owner of any partition finds it).
//! - `["hint", identity, repository]`: a webhook hint for the repository's owner.
//! - `["owner"]`: the mark of the partition's owner, written once it restored it (see
//!   [`records::Order`]: every state record carries its writer's order in a header, so that a
//!   restore can tell a late write).
//!
//! A replica reads each partition it is assigned from its checkpoint (the group's committed offset
//! for it, see `Inner::checkpoint`) to the end before it scans any repository in it, and then is
//! the partition's only writer until it is revoked (a revocation waits for the writes in flight). Events are acknowledged before the state records that record
//! them are produced (at-least-once), or go in one transaction with them and the group's metadata
//! (`exactly_once`), which fences a replica whose partitions moved.

mod pulse;
mod records;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{
    BaseConsumer, Consumer, ConsumerContext, ConsumerGroupMetadata, RebalanceProtocol,
};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use secrecy::ExposeSecret;
use tokio::sync::{mpsc, watch};

use super::redb::{decode_state, encode_state};
use super::{RepoState, StateStore, StoreError};
use crate::admin::Readiness;
use crate::config::{ClusterConfig, KafkaConfig};
use crate::event::Event;
use crate::sink::kafka::{
    KafkaContext, SharedProducer, TRANSACTIONAL_ID, client_config, creation_error, event_record,
};
use crate::sink::producer::{DeliveryFuture, KafkaProducer};
use crate::watch::diff::Snapshot;

/// Why a replica refuses to scan after the state topic's partition count changed.
const LAYOUT_CHANGED: &str = "the state topic's partition count changed since its records were \
    written, so repositories' state is no longer in their partition; not scanning (start over \
    with a new cluster.state_topic, which records a baseline)";
/// The settings of a state topic regwatch creates: compacted, and soon enough that a restore
/// reads about one record per key (the active segment is never compacted, so it is rolled
/// hourly, and a key's older records are compacted within a day).
const STATE_TOPIC_CONFIG: [(&str, &str); 4] = [
    ("cleanup.policy", "compact"),
    ("segment.ms", "3600000"),
    ("max.compaction.lag.ms", "86400000"),
    ("min.cleanable.dirty.ratio", "0.1"),
];
/// The Kafka header naming the process that wrote a state record (see `Inner::writer`).
const WRITER: &str = "regwatch-writer";
/// The record header that carries a state record's [`Order`].
const ORDER: &str = "regwatch-order";
/// The floor of [`checkpoint_due`]: a partition holding little is not rewritten every few writes.
const CHECKPOINT_SLACK: u64 = 64;
/// About how many records a checkpoint writes at a time (a transaction each with
/// `exactly_once`): a partition of any size is rewritten within the transaction timeout, and in
/// bounded memory (a repository's records are never split).
/// (Small in tests, so that they write several.)
const CHECKPOINT_CHUNK: usize = if cfg!(test) { 100 } else { 10_000 };
/// How long the consumer thread goes on checkpointing partitions (one at least) before it polls
/// again.
const CHECKPOINT_BUDGET: Duration = Duration::from_millis(250);
/// How long the consumer thread waits in `poll` for a record before it looks at restores and
/// shutdown: records (hints included) end the wait at once, so this only bounds how late a stop
/// is noticed, and sets the thread's idle wake-ups. At most rust-rdkafka's one-second poll
/// slice, and a whole number of milliseconds: the consumer's wait then ends past its deadline and
/// returns, where the fraction left after a slice would be busy-waited (see
/// `crate::sink::producer`).
const POLL: Duration = Duration::from_secs(1);

/// The partition of the state topic a key lands in: FNV-1a of the key's bytes. Stable across
/// releases and replicas, which is all that matters: regwatch writes every record to the partition
/// it names.
fn partition_of(key: &str, partitions: i32) -> i32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % partitions.max(1) as u64) as i32
}

/// The key of a repository's header.
fn repo_key(identity: &str, repository: &str) -> String {
    serde_json::to_string(&("repo", identity, repository)).expect("strings serialize")
}

fn watch_key(identity: &str) -> String {
    serde_json::to_string(&("watch", identity)).expect("strings serialize")
}

fn hint_key(identity: &str, repository: &str) -> String {
    serde_json::to_string(&("hint", identity, repository)).expect("strings serialize")
}

use records::{Layout, Order, Record, Staged};

/// The metadata of every offset commit of a state partition.
#[derive(serde::Serialize, serde::Deserialize)]
struct OffsetMetadata {
    /// The state topic's partition count when its records were written (see
    /// [`Inner::check_layout`]).
    state_partitions: i32,
    /// Its owner's epoch (see [`Order`]); 0 from a release before epochs.
    #[serde(default)]
    owner: u64,
}

/// An assigned partition.
struct Claim {
    /// Read to the end since it was assigned.
    restored: bool,
    /// When it was assigned.
    since: Instant,
    /// Its checkpoint: where its restore started, which every offset commit for it carries (0
    /// until known, which is always safe; see [`Inner::checkpoint`]).
    from: AtomicI64,
    /// The offset of the first record read since it was assigned (-1: none yet).
    first: AtomicI64,
    /// The records read from it since `from`: what a restore would read now.
    read: AtomicU64,
    /// How many records its state takes, as last counted (see [`Inner::checkpoint`]).
    live: AtomicU64,
    /// Set once a record of it was of a kind this release does not know (a newer release's):
    /// it is never checkpointed, which would hide that record from the next restore.
    opaque: AtomicBool,
    /// Held for reading by every write to it, for writing by a checkpoint of it (which so
    /// holds back the writes of this partition only).
    gate: RwLock<()>,
    /// The epoch its writes carry (see [`Order`]), taken once it is read to its end (0 before).
    epoch: AtomicU64,
    /// The highest epoch its records carry, as read so far.
    seen: AtomicU64,
}

impl Claim {
    fn new() -> Claim {
        Claim {
            restored: false,
            since: Instant::now(),
            from: AtomicI64::new(0),
            first: AtomicI64::new(-1),
            read: AtomicU64::new(0),
            live: AtomicU64::new(0),
            opaque: AtomicBool::new(false),
            gate: RwLock::new(()),
            epoch: AtomicU64::new(0),
            seen: AtomicU64::new(0),
        }
    }

    /// Puts off its next checkpoint until half as many records again were read.
    fn put_off_checkpoint(&self) {
        self.live
            .store(self.read.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// Whether this release knows the kind of state record `key` names (see the module docs).
fn understood(key: &[String]) -> bool {
    match key {
        [kind] => kind == "owner",
        [kind, _] => kind == "watch",
        [kind, _, _] => kind == "repo" || kind == "hint",
        [kind, _, _, name] => records::ItemKey::from_parts(kind, name).is_some(),
        _ => false,
    }
}

/// The records read since a partition's checkpoint past which a new one is written: half again
/// what its state takes (so a restore reads at most about 1.5 times what it holds, and the
/// rewrites cost at most two records per record changed), plus a floor for small partitions.
fn checkpoint_due(live: u64) -> u64 {
    live + live / 2 + CHECKPOINT_SLACK
}

/// What the store and its consumer thread share.
struct Inner {
    kafka: KafkaConfig,
    cluster: ClusterConfig,
    /// The state topic's partition count; 0 until known.
    partitions: AtomicI32,
    /// The partitions assigned to this replica. Writes hold the read lock; a revocation takes the
    /// write lock, so it waits for the writes in flight and none starts after it.
    claims: RwLock<BTreeMap<i32, Claim>>,
    /// The claimed partitions that are restored, kept with `claims` (under its write lock) for
    /// the questions scans ask on the async workers: a revocation waiting for `claims` behind a
    /// slow write would otherwise hold those readers too, and freeze the runtime.
    owned: Mutex<std::collections::BTreeSet<i32>>,
    /// Bumped whenever a partition is restored or revoked (see [`StateStore::ownership_epoch`]).
    epoch: AtomicU64,
    /// The records read by the restore in progress (of the partitions restored so far).
    restoring_reads: AtomicU64,
    /// The records the last complete restore read.
    restore_reads: AtomicU64,
    /// The state of the repositories of the claimed partitions, by registry identity.
    repos: Mutex<HashMap<String, BTreeMap<String, RepoState>>>,
    /// The highest revision of any repository record restored or written: revisions drawn later
    /// start above it (see [`StateStore::fresh_revision`]).
    high_water: AtomicU64,
    /// What the writer knows of each claimed repository's records beyond its state (see
    /// [`records::Layout`]), by header key.
    layouts: Mutex<HashMap<String, Layout>>,
    /// What the restore of each partition being restored read so far.
    staging: Mutex<HashMap<i32, Staged>>,
    /// This process's mark on the state records it writes (a Kafka header, [`WRITER`], with the
    /// generation of the producer that wrote them: see [`Inner::mark`]): a record of a partition
    /// it owns without the current mark was written by another replica that no longer owns the
    /// partition (paused past its session, say), or by a producer of this process that the
    /// broker fenced and that was replaced, and may land after newer writes. It is written over
    /// unless it agrees with what is held (see [`Inner::repair`]).
    writer: String,
    /// This process's pulse: writes wait after a stall of the whole process until the group
    /// confirms its partitions (see [`pulse`]).
    pulse: Arc<pulse::Pulse>,
    /// The repositories of owned partitions whose records another writer put there, to write
    /// over, by (identity, repository): the item keys it wrote (its header is always rewritten).
    repairs: Mutex<BTreeMap<(String, String), std::collections::BTreeSet<records::ItemKey>>>,
    /// The keys of the repositories whose state a commit is writing now (see [`Writing`]).
    writing: Mutex<std::collections::HashSet<String>>,
    /// The keys of repository records of the claimed partitions that could not be decoded:
    /// their repositories' state is unknown, not absent.
    unreadable: Mutex<std::collections::BTreeSet<String>>,
    /// The watch set recorded in each claimed partition, by registry identity.
    watch_sets: Mutex<HashMap<String, BTreeMap<i32, Vec<String>>>>,
    /// The identities of the configured registries, once told (see
    /// [`ClusterStore::adopt_registries`]).
    configured: Mutex<Option<std::collections::BTreeSet<String>>>,
    /// The identities a reload removed from this process's configuration (and not added back):
    /// the only registries whose state it forgets.
    dropped: Mutex<std::collections::BTreeSet<String>>,
    /// Where hints for a registry (by identity) go: its loop's queue.
    hint_routes: Mutex<HashMap<String, mpsc::Sender<String>>>,
    /// Bumped when restored partitions bring repositories to scan.
    rescan: watch::Sender<u64>,
    /// Set once a repository's record turned up in a partition its key does not land in: the
    /// state topic's partition count changed, and no partition is taken as restored any more.
    layout_changed: AtomicBool,
    readiness: OnceLock<Arc<Readiness>>,
    /// Produces events and state (at-least-once) and hints (both modes); shared with the
    /// daemon's Kafka probe.
    plain: SharedProducer,
    /// `exactly_once`: the transactional producer, once its transactions are initialised.
    transactional: OnceLock<Mutex<Txn>>,
    /// Set once this replica cannot go on (see [`Inner::give_up`]).
    given_up: OnceLock<String>,
    /// The group's metadata as of the last rebalance, sent with each transaction.
    group: Mutex<Option<ConsumerGroupMetadata>>,
    stop: AtomicBool,
}

/// The cluster-mode store (see the module docs).
pub struct ClusterStore {
    inner: Arc<Inner>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl ClusterStore {
    /// The store for `cluster` on `kafka`; it joins the group once [`ClusterStore::start`]ed.
    pub fn new(kafka: &KafkaConfig, cluster: &ClusterConfig) -> Result<ClusterStore, String> {
        let plain = SharedProducer::new(kafka).map_err(|e| format!("kafka producer: {e}"))?;
        Ok(ClusterStore {
            inner: Arc::new(Inner {
                kafka: kafka.clone(),
                cluster: cluster.clone(),
                partitions: AtomicI32::new(0),
                claims: RwLock::new(BTreeMap::new()),
                owned: Mutex::new(std::collections::BTreeSet::new()),
                epoch: AtomicU64::new(0),
                restoring_reads: AtomicU64::new(0),
                restore_reads: AtomicU64::new(0),
                repos: Mutex::new(HashMap::new()),
                high_water: AtomicU64::new(0),
                layouts: Mutex::new(HashMap::new()),
                writer: format!("{:016x}", rand::random::<u64>()),
                pulse: pulse::Pulse::new(cluster.session_timeout),
                repairs: Mutex::new(Default::default()),
                staging: Mutex::new(HashMap::new()),
                writing: Mutex::new(std::collections::HashSet::new()),
                unreadable: Mutex::new(std::collections::BTreeSet::new()),
                watch_sets: Mutex::new(HashMap::new()),
                configured: Mutex::new(None),
                dropped: Mutex::new(Default::default()),
                hint_routes: Mutex::new(HashMap::new()),
                rescan: watch::channel(0).0,
                layout_changed: AtomicBool::new(false),
                readiness: OnceLock::new(),
                plain,
                transactional: OnceLock::new(),
                group: Mutex::new(None),
                given_up: OnceLock::new(),
                stop: AtomicBool::new(false),
            }),
            thread: Mutex::new(None),
        })
    }

    /// This replica's producer, for the daemon's Kafka probe to share.
    pub fn producer(&self) -> SharedProducer {
        self.inner.plain.clone()
    }

    /// Starts the consumer thread: it prepares the state topic, joins the group and restores what
    /// it is assigned, reporting progress to `readiness`.
    pub fn start(&self, readiness: Arc<Readiness>, runtime: tokio::runtime::Handle) {
        readiness.restoring(Some("joining the cluster's consumer group".into()));
        let _ = self.inner.readiness.set(readiness);
        if let Err(e) = self.inner.pulse.start() {
            self.inner
                .give_up(format!("cannot start the cluster's pulse thread: {e}"));
        }
        let inner = self.inner.clone();
        let thread = std::thread::Builder::new()
            .name("regwatch-cluster".into())
            .spawn(move || inner.run(&runtime))
            .expect("spawn the cluster thread");
        *self.thread.lock().expect("thread lock") = Some(thread);
    }

    /// Leaves the group (its partitions move to the other replicas at once), waiting at most
    /// `within`.
    pub async fn stop(&self, within: Duration) {
        self.inner.stop.store(true, Ordering::Relaxed);
        let Some(thread) = self.thread.lock().expect("thread lock").take() else {
            return;
        };
        let joined = tokio::task::spawn_blocking(move || thread.join());
        if tokio::time::timeout(within, joined).await.is_err() {
            tracing::warn!(
                "leaving the consumer group timed out; the group notices at session_timeout"
            );
        }
    }

    /// Changes whenever restored partitions bring this replica repositories to scan.
    pub fn rescans(&self) -> watch::Receiver<u64> {
        self.inner.rescan.subscribe()
    }

    /// Records which registries (by identity) are configured. Those a reload removed are
    /// forgotten in the partitions this replica owns (and in those it gains later), as a single
    /// node's `adopt_registries` does: added back later, such a registry takes a baseline instead
    /// of reporting all that changed meanwhile. Registries this process never had configured are
    /// left alone: during a rolling rollout they are the newer replicas' (see `docs/src/cluster.md`).
    /// Blocking (it writes tombstones).
    pub fn adopt_registries(&self, identities: &[String]) -> Result<(), StoreError> {
        let now: std::collections::BTreeSet<String> = identities.iter().cloned().collect();
        let before = self
            .inner
            .configured
            .lock()
            .expect("configured lock")
            .replace(now.clone());
        let mut dropped = self.inner.dropped.lock().expect("dropped lock");
        dropped.extend(before.unwrap_or_default().difference(&now).cloned());
        dropped.retain(|id| !now.contains(id));
        drop(dropped);
        self.forget_unconfigured()
    }

    /// Forgets the state of the registries a reload removed that this replica owns (after the
    /// reload, or once a restore brought some). Blocking.
    pub fn forget_unconfigured(&self) -> Result<(), StoreError> {
        let dropped = self.inner.dropped.lock().expect("dropped lock").clone();
        let repos: Vec<(String, String)> = self
            .inner
            .repos
            .lock()
            .expect("repos lock")
            .iter()
            .filter(|(id, _)| dropped.contains(*id))
            .flat_map(|(id, r)| r.keys().map(|repo| (id.clone(), repo.clone())))
            .collect();
        let sets: Vec<(String, i32)> = self
            .inner
            .watch_sets
            .lock()
            .expect("watch sets lock")
            .iter()
            .filter(|(id, _)| dropped.contains(*id))
            .flat_map(|(id, s)| s.keys().map(|p| (id.clone(), *p)))
            .collect();
        if !repos.is_empty() {
            tracing::info!(
                repositories = repos.len(),
                "cluster: forgetting the state of registries no longer configured"
            );
        }
        for (id, repo) in repos {
            self.forget_repositories(&id, &[repo])?;
        }
        for (id, p) in sets {
            self.inner.write(p, &[], &[(watch_key(&id), None)], || {
                let mut sets = self.inner.watch_sets.lock().expect("watch sets lock");
                if let Some(s) = sets.get_mut(&id) {
                    s.remove(&p);
                }
            })?;
        }
        Ok(())
    }

    /// Sends hints for `identity`'s repositories that reach this replica to `hints`.
    pub fn route_hints(&self, identity: &str, hints: mpsc::Sender<String>) {
        self.inner
            .hint_routes
            .lock()
            .expect("routes lock")
            .insert(identity.to_owned(), hints);
    }
}

impl Inner {
    fn partition(&self, key_of_repo: &str) -> Option<i32> {
        match self.partitions.load(Ordering::Relaxed) {
            0 => None,
            n => Some(partition_of(key_of_repo, n)),
        }
    }

    fn repo_partition(&self, identity: &str, repository: &str) -> Result<i32, StoreError> {
        self.partition(&repo_key(identity, repository))
            .ok_or_else(|| StoreError::Unavailable("the state topic is not known yet".into()))
    }

    /// The consumer thread: prepare the topic, join, then apply what arrives until stopped.
    fn run(self: Arc<Self>, runtime: &tokio::runtime::Handle) {
        // Repairs write from this thread, as scans do from the blocking pool.
        let _runtime = runtime.enter();
        let mut failures = 0u32;
        while !self.stop.load(Ordering::Relaxed) {
            match self.prepare(runtime) {
                Ok(()) => break,
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures.is_multiple_of(30) {
                        tracing::warn!(error = %e, "cluster: state topic not ready; retrying");
                    }
                    if let Some(r) = self.readiness.get() {
                        r.restoring(Some(format!("state topic not ready: {e}")));
                    }
                    std::thread::sleep(Duration::from_secs(2));
                }
            }
        }
        if self.stop.load(Ordering::Relaxed) {
            return;
        }
        let consumer: BaseConsumer<GroupContext> = match self.consumer_config().create_with_context(
            GroupContext {
                log: KafkaContext::default(),
                inner: self.clone(),
            },
        ) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %creation_error(&e), "cluster: cannot create the consumer");
                return;
            }
        };
        if let Err(e) = consumer.subscribe(&[&self.cluster.state_topic]) {
            tracing::error!(error = %e, "cluster: cannot subscribe to the state topic");
            return;
        }
        let mut last_check = Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            if self.pulse.in_doubt() {
                self.confirm_membership(&consumer);
            }
            // Repairs pending: a look, not a wait, so that they go on at their own pace (not
            // while writes wait for the membership: they would be refused).
            let wait =
                if self.repairs.lock().expect("repairs lock").is_empty() || self.pulse.in_doubt() {
                    POLL
                } else {
                    Duration::ZERO
                };
            match consumer.poll(wait) {
                Some(Ok(message)) => self.apply(&message),
                // Reached again after every write: only a restore's end needs the broker asked.
                Some(Err(KafkaError::PartitionEOF(p)))
                    if self.restoring(p) && self.stable(&consumer, p) =>
                {
                    self.restored_with(&consumer, &[p]);
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e @ KafkaError::MessageConsumptionFatal(_))) => {
                    // The consumer is dead: its partitions are another replica's by now.
                    self.give_up(format!("the state consumer failed for good: {e}"));
                }
                Some(Err(e)) => tracing::debug!(error = %e, "cluster consumer"),
                None => {}
            }
            if last_check.elapsed() >= Duration::from_secs(1) {
                last_check = Instant::now();
                self.check_restores(&consumer);
                self.checkpoint(&consumer);
            }
            self.repair(&consumer);
        }
        // Closing the consumer leaves the group: the others take the partitions now.
        tracing::info!("leaving the cluster's consumer group");
        drop(consumer);
    }

    /// Creates the state topic (compacted) when asked to, checks that it is compacted, learns
    /// its partition count, and initialises transactions for `exactly_once`.
    fn prepare(&self, runtime: &tokio::runtime::Handle) -> Result<(), String> {
        let topic = &self.cluster.state_topic;
        let admin = || -> Result<AdminClient<KafkaContext>, String> {
            client_config(&self.kafka)
                .create_with_context(KafkaContext::default())
                .map_err(|e| format!("kafka admin client: {}", creation_error(&e)))
        };
        let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
        if self.kafka.create_topic {
            let admin = admin()?;
            let replication = || TopicReplication::Fixed(self.kafka.replication_factor);
            // The events topic too: there is no publisher to create it in cluster mode.
            let events = NewTopic::new(&self.kafka.topic, self.kafka.partitions, replication());
            let mut state = NewTopic::new(topic, self.cluster.partitions, replication());
            for (key, value) in STATE_TOPIC_CONFIG {
                state = state.set(key, value);
            }
            let results = runtime
                .block_on(admin.create_topics([&events, &state], &options))
                .map_err(|e| format!("create topics: {e}"))?;
            for result in results {
                match result {
                    Ok(created) => tracing::info!(topic = %created, "created topic"),
                    Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((name, code)) => return Err(format!("create topic {name}: {code}")),
                }
            }
        }
        if self.cluster.verify_state_topic {
            let described = runtime
                .block_on(admin()?.describe_configs([&ResourceSpecifier::Topic(topic)], &options))
                .map_err(|e| format!("describe state topic {topic}: {e}"))?;
            let policy = match described.into_iter().next() {
                Some(Ok(resource)) => resource
                    .get("cleanup.policy")
                    .and_then(|e| e.value.clone())
                    .unwrap_or_default(),
                Some(Err(code)) => return Err(format!("describe state topic {topic}: {code}")),
                None => return Err(format!("describe state topic {topic}: no answer")),
            };
            if !policy.split(',').any(|p| p.trim() == "compact") {
                return Err(format!(
                    "state topic {topic} has cleanup.policy={policy:?}: without \"compact\" the \
                     broker deletes state by age and replicas would take repositories for new; \
                     set cleanup.policy=compact on it (or set cluster.verify_state_topic = false \
                     for a broker that cannot describe topic configs)"
                ));
            }
        }
        let metadata = self
            .plain
            .producer()
            .client()
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .map_err(|e| format!("state topic {topic}: {e}"))?;
        let partitions = metadata
            .topics()
            .first()
            .map_or(0, |t| t.partitions().len());
        if partitions == 0 {
            return Err(format!("state topic {topic} has no partitions (yet)"));
        }
        self.partitions.store(partitions as i32, Ordering::Relaxed);
        if self.cluster.exactly_once && self.transactional.get().is_none() {
            // The user's id (to fence a restarted replica's predecessor at once), else one of
            // this process's own: the group generation fences zombies either way (KIP-447).
            let id = match self
                .kafka
                .properties
                .iter()
                .find(|(k, _)| k == TRANSACTIONAL_ID)
            {
                Some((_, id)) => id.expose_secret().to_owned(),
                None => format!(
                    "regwatch-{}-{:016x}",
                    self.cluster.group,
                    rand::random::<u64>()
                ),
            };
            let mut settings = client_config(&self.kafka);
            settings.set(TRANSACTIONAL_ID, id);
            let producer = KafkaProducer::new(&settings, KafkaContext::default())
                .map_err(|e| format!("transactional producer: {}", creation_error(&e)))?;
            producer
                .init_transactions(self.step_timeout())
                .map_err(|e| format!("init transactions (does the broker have them?): {e}"))?;
            let _ = self.transactional.set(Mutex::new(Txn {
                producer,
                unfinished: None,
            }));
        }
        tracing::info!(topic = %topic, partitions, group = %self.cluster.group, "cluster: joining");
        Ok(())
    }

    /// How long one transaction step may take: a session, beyond which the partition it writes
    /// to has probably moved anyway.
    fn step_timeout(&self) -> Duration {
        self.cluster.session_timeout.max(Duration::from_secs(1))
    }

    fn consumer_config(&self) -> ClientConfig {
        let session = self.cluster.session_timeout.as_millis().max(1000);
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.kafka.brokers);
        for (key, value) in &self.kafka.properties {
            if key != TRANSACTIONAL_ID {
                c.set(key, value.expose_secret());
            }
        }
        c.set("group.id", &self.cluster.group)
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", session.to_string())
            .set("heartbeat.interval.ms", (session / 3).max(100).to_string())
            // Offsets are the partitions' checkpoints, committed only by `Inner::checkpoint` and
            // with writes; none means the beginning.
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "true")
            .set("isolation.level", "read_committed")
            // A missing state topic is an error, never one the broker creates with its defaults.
            .set("allow.auto.create.topics", "false")
            // librdkafka's default, said here because it sets the idle cost: an empty fetch is
            // held this long by the broker, and on Kafka a record ends it at once
            // (`fetch.min.bytes` 1; Tansu 0.6 sleeps on regardless).
            .set("fetch.wait.max.ms", "500");
        c
    }

    /// Applies one record of a claimed partition: state while it is being restored, hints after.
    fn apply(&self, message: &BorrowedMessage<'_>) {
        let p = message.partition();
        let key = message
            .key()
            .and_then(|k| serde_json::from_slice::<Vec<String>>(k).ok())
            .filter(|k| understood(k));
        let order = message
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == ORDER))
            .and_then(|h| h.value)
            .and_then(Order::decode);
        let (restored, epoch) = match self.claims.read().expect("claims lock").get(&p) {
            Some(claim) => {
                claim.read.fetch_add(1, Ordering::Relaxed);
                if let Some(order) = order {
                    claim.seen.fetch_max(order.epoch, Ordering::SeqCst);
                }
                let _ = claim.first.compare_exchange(
                    -1,
                    message.offset(),
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                );
                if key.is_none() {
                    claim.opaque.store(true, Ordering::SeqCst);
                }
                (claim.restored, claim.epoch.load(Ordering::SeqCst))
            }
            None => return,
        };
        let Some(key) = key else {
            // Not this release's: left as it is, for the release that wrote it.
            return;
        };
        match (key.as_slice(), restored) {
            ([kind], false) if kind == "owner" => {
                self.staged(p, |s| s.mark(order));
            }
            ([kind], true) if kind == "owner" && order.is_some_and(|o| o.epoch < epoch) => {
                // A former owner's mark, landing late: compaction keeps the last mark of the
                // partition, so this owner's goes after it.
                self.mark_partition(p, epoch);
            }
            ([kind, identity, repository], false) if kind == "repo" => {
                if self.partition(&repo_key(identity, repository)) != Some(p) {
                    return self.refuse_changed_layout(&format!(
                        "a record of {repository} in partition {p}"
                    ));
                }
                let value = message.payload().map(<[u8]>::to_vec);
                self.staged(p, |s| s.read((identity, repository), None, value, order));
            }
            ([kind, identity, repository, name], false) => {
                let Some(item) = records::ItemKey::from_parts(kind, name) else {
                    return;
                };
                if self.partition(&repo_key(identity, repository)) != Some(p) {
                    return self.refuse_changed_layout(&format!(
                        "a record of {repository} in partition {p}"
                    ));
                }
                let value = message.payload().map(<[u8]>::to_vec);
                self.staged(p, |s| {
                    s.read((identity, repository), Some(item), value, order);
                });
            }
            // In the log's order: the owner writes the watch set only when it changes, so a
            // late one may be the last record of its key, and the owner's gone by compaction.
            ([kind, identity], false) if kind == "watch" => {
                let mut sets = self.watch_sets.lock().expect("watch sets lock");
                let sets = sets.entry(identity.clone()).or_default();
                match message.payload().map(serde_json::from_slice::<Vec<String>>) {
                    Some(Ok(patterns)) => {
                        sets.insert(p, patterns);
                    }
                    _ => {
                        sets.remove(&p);
                    }
                }
            }
            ([kind, identity, repository], restored) if kind == "hint" => {
                // A hint read while restoring is stale: all is scanned once restored.
                let route = self
                    .hint_routes
                    .lock()
                    .expect("routes lock")
                    .get(identity)
                    .cloned()
                    .filter(|_| restored);
                if let Some(route) = route {
                    tracing::debug!(%repository, "cluster: hint for a repository of this replica");
                    let _ = route.try_send(repository.clone());
                }
                if message.payload().is_some() {
                    // Handled: compaction can drop it. Lost, it is dropped at the next restore.
                    let tombstone = FutureRecord::<[u8], [u8]>::to(&self.cluster.state_topic)
                        .key(message.key().unwrap_or_default())
                        .partition(p);
                    let _ = self.plain.producer().send_result(tombstone);
                }
            }
            ([kind, identity, repository, rest @ ..], true)
                if matches!(kind.as_str(), "repo" | "tag" | "digest") =>
            {
                let mark = message
                    .headers()
                    .and_then(|h| h.iter().find(|h| h.key == WRITER))
                    .and_then(|h| h.value);
                // This process's, through its producer now, since it owns the partition: one of
                // an earlier ownership (the same producer) is a late write too.
                let (own_mark, own_order) = match self.transactional.get() {
                    Some(_) => (self.transactional_mark(), self.state_order(epoch, 0)),
                    None => {
                        let generation = self.plain.generation().1;
                        (self.mark(generation), self.state_order(epoch, generation))
                    }
                };
                let ours = mark == Some(own_mark.as_bytes()) && order == Some(own_order);
                if ours {
                    return;
                }
                let item = match rest {
                    [] => None,
                    [name] => match records::ItemKey::from_parts(kind, name) {
                        Some(item) => Some(item),
                        None => return,
                    },
                    _ => return,
                };
                let key = repo_key(identity, repository);
                if self
                    .unreadable
                    .lock()
                    .expect("unreadable lock")
                    .contains(&key)
                {
                    // Not understood here: neither kept nor written over.
                    return;
                }
                // A copy of what this replica holds (its own record, read back through
                // something that dropped its headers) changes nothing a restore would read.
                let state = self.held(identity, repository);
                // While a commit of it is in flight, what is held is about to change: compare
                // after it (the repair pass waits for it).
                let in_flight = self.writing.lock().expect("writing lock").contains(&key);
                if !in_flight
                    && records::agrees(
                        state.as_ref(),
                        &self.layout(&key),
                        item.as_ref(),
                        message.payload(),
                    )
                {
                    return;
                }
                crate::metrics::get().cluster_foreign_writes.inc();
                tracing::warn!(%repository, "cluster: another replica wrote state of a partition owned here (a late write of its former owner); writing it over");
                let mut repairs = self.repairs.lock().expect("repairs lock");
                let keys = repairs
                    .entry((identity.clone(), repository.clone()))
                    .or_default();
                keys.extend(item);
            }
            _ => {}
        }
    }

    /// Writes over the records of owned partitions that another writer put there (see
    /// [`Inner::writer`]) with what this replica holds (see [`records::rewrite`]), so that a
    /// zombie's late write never becomes what the next restore reads. A repository a commit is
    /// writing now waits for the next pass; one of a partition no longer owned is dropped. A few
    /// repositories per pass, so that the consumer thread keeps polling.
    fn repair(&self, consumer: &BaseConsumer<GroupContext>) {
        if self.given_up.get().is_some() || self.pulse.in_doubt() {
            return;
        }
        let pending: Vec<_> = self
            .repairs
            .lock()
            .expect("repairs lock")
            .iter()
            .take(16)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut written = 0usize;
        for ((identity, repository), foreign) in pending {
            if written > 10_000 {
                // The rest next pass: the consumer must keep polling.
                return;
            }
            let done = || {
                self.repairs
                    .lock()
                    .expect("repairs lock")
                    .remove(&(identity.clone(), repository.clone()));
            };
            let Ok(p) = self.repo_partition(&identity, &repository) else {
                return;
            };
            if !self.owned.lock().expect("owned lock").contains(&p) {
                done();
                continue;
            }
            let Ok(_writing) = Writing::begin(self, &identity, &repository, None) else {
                continue;
            };
            // Only a member of the group may write over others: a replica that lost its
            // partitions without knowing yet (a zombie itself) is refused here by the broker,
            // rather than writing its stale state over the new owner's.
            let member =
                self.commit_as_member(consumer, &self.claims.read().expect("claims lock"), &[p]);
            if let Err(e) = member {
                tracing::warn!(%repository, error = %e, "cluster: not writing over another replica's records: this replica's membership is in doubt");
                return;
            }
            let key = repo_key(&identity, &repository);
            let state = self.held(&identity, &repository);
            let (records, layout) = records::rewrite(
                &identity,
                &repository,
                state.as_ref(),
                &self.layout(&key),
                &foreign,
            );
            written += records.len();
            match self.write(p, &[], &records, || self.set_layout(&key, layout)) {
                Ok(()) => done(),
                Err(e) => {
                    tracing::warn!(%repository, error = %e, "cluster: writing over another replica's records failed; retrying");
                    return;
                }
            }
        }
    }

    /// Runs `f` on what partition `p`'s restore read so far.
    fn staged<T>(&self, p: i32, f: impl FnOnce(&mut Staged) -> T) -> T {
        f(self
            .staging
            .lock()
            .expect("staging lock")
            .entry(p)
            .or_default())
    }

    /// Builds the state of the repositories partition `p`'s restore read, once it has read all.
    fn assemble(&self, p: i32) {
        let gathered = self
            .staging
            .lock()
            .expect("staging lock")
            .remove(&p)
            .unwrap_or_default()
            .repos;
        let mut overtaken = Vec::new();
        let mut repos = self.repos.lock().expect("repos lock");
        let mut layouts = self.layouts.lock().expect("layouts lock");
        let mut unreadable = self.unreadable.lock().expect("unreadable lock");
        for ((identity, repository), g) in gathered {
            let key = repo_key(&identity, &repository);
            match records::assemble(g) {
                Ok(restored) => {
                    if let Some(why) = &restored.damaged {
                        crate::metrics::get().store_records_unreadable.inc();
                        tracing::error!(%repository, error = %why, "cluster: state records damaged; using what they hold, rewritten by the next scan");
                    }
                    if let Some(items) = restored.overtaken {
                        crate::metrics::get().cluster_foreign_writes.inc();
                        tracing::warn!(%repository, "cluster: a former owner's late write was read after this partition's newer records; ignored, and written over");
                        overtaken.push(((identity.clone(), repository.clone()), items));
                    }
                    unreadable.remove(&key);
                    self.high_water
                        .fetch_max(restored.high_water, Ordering::SeqCst);
                    if let Some(state) = restored.state {
                        repos
                            .entry(identity.clone())
                            .or_default()
                            .insert(repository.clone(), state);
                    }
                    layouts.insert(key, restored.layout);
                }
                Err(e) => {
                    // Unknown, not absent (see `repo_state`): a newer replica's record during a
                    // rolling upgrade, or records that do not add up, must not be written over
                    // with a baseline.
                    crate::metrics::get().store_records_unreadable.inc();
                    tracing::error!(%repository, error = %e, "cluster: unreadable state record");
                    unreadable.insert(key);
                }
            }
        }
        drop((repos, layouts, unreadable));
        let mut repairs = self.repairs.lock().expect("repairs lock");
        for (repo, items) in overtaken {
            repairs.entry(repo).or_default().extend(items);
        }
    }

    /// The state topic has more (or fewer) partitions than when `p`'s records were written, so
    /// most repositories' state is in a partition that is no longer theirs: their new owners
    /// would take them for first-seen and emit every tag. Nothing is scanned from now on.
    fn refuse_changed_layout(&self, evidence: &str) {
        if !self.layout_changed.swap(true, Ordering::SeqCst) {
            tracing::error!(
                %evidence,
                partitions = self.partitions.load(Ordering::Relaxed),
                "cluster: {LAYOUT_CHANGED}"
            );
        }
        if let Some(r) = self.readiness.get() {
            r.restoring(Some(LAYOUT_CHANGED.into()));
        }
    }

    /// The committed offsets of partitions `ps`: each one's checkpoint (where the next restore
    /// starts), with [`OffsetMetadata`].
    fn layout_offsets(
        &self,
        claims: &BTreeMap<i32, Claim>,
        ps: &[i32],
    ) -> KafkaResult<TopicPartitionList> {
        let mut tpl = TopicPartitionList::new();
        for p in ps {
            let (from, owner) = claims.get(p).map_or((0, 0), |c| {
                (
                    c.from.load(Ordering::SeqCst),
                    c.epoch.load(Ordering::SeqCst),
                )
            });
            let metadata = serde_json::to_string(&OffsetMetadata {
                state_partitions: self.partitions.load(Ordering::Relaxed),
                owner,
            })
            .expect("metadata serializes");
            tpl.add_partition_offset(&self.cluster.state_topic, *p, Offset::Offset(from))?;
            if let Some(mut e) = tpl.find_partition(&self.cluster.state_topic, *p) {
                e.set_metadata(metadata.as_str());
            }
        }
        Ok(tpl)
    }

    /// After a stall, asks the broker whether this process is still the member that owns its
    /// partitions: a synchronous commit of their checkpoint offsets as they stand (moving
    /// nothing), which the coordinator refuses from an evicted member or a past generation. Its
    /// partitions are then revoked at the next poll, and those of the next assignment are
    /// confirmed by the next commit.
    fn confirm_membership(&self, consumer: &BaseConsumer<GroupContext>) {
        let claims = self.claims.read().expect("claims lock");
        // Only restored ones: a claim being restored has no checkpoint known yet (0), which
        // would move the group's checkpoint back. Writes go to restored ones only, and a
        // restore ends whatever the doubt.
        let restored: Vec<i32> = claims
            .iter()
            .filter(|(_, c)| c.restored)
            .map(|(p, _)| *p)
            .collect();
        // Only a commit sent after the stall answers for it; one of a later stall does not.
        let stalls = self.pulse.stalls();
        let confirmed = !restored.is_empty()
            && self
                .commit_as_member(consumer, &claims, &restored)
                .inspect_err(
                    |e| tracing::debug!(error = %e, "cluster: membership not confirmed yet"),
                )
                .is_ok();
        drop(claims);
        if confirmed {
            tracing::info!(
                "cluster: the consumer group confirmed this replica's partitions after the stall; writes resume"
            );
            self.pulse.confirmed(stalls);
        }
    }

    /// Commits the checkpoints of partitions `ps` as they stand, synchronously: a write that
    /// moves nothing, and that the coordinator refuses from a member it evicted or of a past
    /// generation, so that it proves this replica still owns them.
    fn commit_as_member(
        &self,
        consumer: &BaseConsumer<GroupContext>,
        claims: &BTreeMap<i32, Claim>,
        ps: &[i32],
    ) -> KafkaResult<()> {
        self.layout_offsets(claims, ps)
            .and_then(|tpl| consumer.commit(&tpl, rdkafka::consumer::CommitMode::Sync))
    }

    /// Whether the state topic still has the partition count its records were written with, as
    /// this replica learnt it at start and as the owners of every partition recorded it (see
    /// [`Inner::layout_offsets`]): asked at every assignment, so that a replica started after
    /// partitions were added, and given only new ones, refuses like the others. `Err` says why
    /// not; a broker that cannot answer now is not evidence.
    fn check_layout(&self, consumer: &BaseConsumer<GroupContext>) -> Result<(), String> {
        let topic = &self.cluster.state_topic;
        let known = self.partitions.load(Ordering::Relaxed);
        let timeout = Duration::from_secs(5);
        let Ok(metadata) = consumer.fetch_metadata(Some(topic), timeout) else {
            return Ok(());
        };
        let now = metadata
            .topics()
            .first()
            .map_or(0, |t| t.partitions().len() as i32);
        if now != 0 && now != known {
            return Err(format!("the topic has {now} partitions, {known} at start"));
        }
        let mut all = TopicPartitionList::new();
        for p in 0..known {
            let _ = all.add_partition_offset(topic, p, Offset::Invalid);
        }
        let Ok(committed) = consumer.committed_offsets(all, timeout) else {
            return Ok(());
        };
        for e in committed.elements() {
            if let Ok(l) = serde_json::from_str::<OffsetMetadata>(e.metadata())
                && l.state_partitions != known
            {
                return Err(format!(
                    "partition {} was written when the topic had {} partitions, it has {known}",
                    e.partition(),
                    l.state_partitions
                ));
            }
        }
        Ok(())
    }

    /// Whether partition `p` has no transaction pending, with `exactly_once`: one still open (a
    /// former owner's, paused past its session) ends the `read_committed` read before its
    /// records, and committed after the restore it would publish that replica's events after
    /// this one's. Every transaction sends `p`'s offsets, and a `read_committed` consumer asks
    /// for them with `require_stable` (KIP-447), which the broker refuses while one is pending:
    /// the restore waits (the end of partition is looked at again every second, see
    /// [`Inner::check_restores`]).
    fn stable(&self, consumer: &BaseConsumer<GroupContext>, p: i32) -> bool {
        if self.transactional.get().is_none() {
            return true;
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.cluster.state_topic, p);
        consumer
            .committed_offsets(tpl, Duration::from_secs(2))
            .is_ok_and(|l| l.elements().iter().all(|e| e.error().is_ok()))
    }

    /// Ends the restore of `partitions` (read to their end): their checkpoints learnt, their
    /// epochs taken and recorded (see [`Inner::take_epochs`]), then [`Inner::restored`].
    fn restored_with(&self, consumer: &BaseConsumer<GroupContext>, partitions: &[i32]) {
        if self.layout_changed.load(Ordering::SeqCst) {
            // Nothing is scanned, written or committed (which would record this replica's
            // partition count over the evidence other replicas refuse on).
            return;
        }
        // Learnt before any write to them can commit an offset.
        self.learn_checkpoints(consumer, partitions);
        let ready = self.take_epochs(consumer, partitions);
        self.restored(&ready);
    }

    /// Gives each of `partitions`, read to its end, the epoch its writes carry (see [`Order`]):
    /// above the one its former owner recorded with the partition's offsets and above every one
    /// its records carry, and no lower than the clock in milliseconds (so that an owner of a
    /// release before epochs in between, which records none, does not send them back). It is
    /// recorded the same way (with the layout, see [`Inner::check_layout`]), synchronously and as
    /// a member, which the coordinator refuses from an evicted one, before anything is written
    /// with it; then the partition is marked with it, so that a former owner's write landing
    /// after the mark is known for a late one. Returns those that have their epoch; the others
    /// are tried again at the next check.
    fn take_epochs(&self, consumer: &BaseConsumer<GroupContext>, partitions: &[i32]) -> Vec<i32> {
        let claims = self.claims.read().expect("claims lock");
        let ps: Vec<i32> = partitions
            .iter()
            .copied()
            .filter(|p| claims.get(p).is_some_and(|c| !c.restored))
            .collect();
        if ps.is_empty() {
            return ps;
        }
        let topic = &self.cluster.state_topic;
        let mut asked = TopicPartitionList::new();
        for p in &ps {
            asked.add_partition(topic, *p);
        }
        let recorded = match consumer.committed_offsets(asked, Duration::from_secs(5)) {
            Ok(recorded) => recorded,
            Err(e) => {
                tracing::debug!(error = %e, "cluster: the former owners' epochs are not known yet");
                return Vec::new();
            }
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        for p in &ps {
            let Some(entry) = recorded.find_partition(topic, *p) else {
                return Vec::new();
            };
            if let Err(e) = entry.error() {
                tracing::debug!(partition = p, error = %e, "cluster: the former owner's epoch is not known yet");
                return Vec::new();
            }
            let former =
                serde_json::from_str::<OffsetMetadata>(entry.metadata()).map_or(0, |m| m.owner);
            let claim = &claims[p];
            let epoch = former
                .max(claim.seen.load(Ordering::SeqCst))
                .saturating_add(1)
                .max(now);
            claim.epoch.store(epoch, Ordering::SeqCst);
        }
        if let Err(e) = self.commit_as_member(consumer, &claims, &ps) {
            tracing::warn!(error = %e, "cluster: recording this replica's epoch failed; trying again");
            return Vec::new();
        }
        for p in &ps {
            self.mark_partition(*p, claims[p].epoch.load(Ordering::SeqCst));
        }
        ps
    }

    /// Marks partition `p` as its owner's of `epoch` (see [`records::Staged`]). Not waited for:
    /// the consumer thread goes back to polling. A mark lost leaves a late write that lands
    /// before this owner's first write of its repository read as the newest, as a write of the
    /// former owner that this one read would be.
    fn mark_partition(&self, p: i32, epoch: u64) {
        let (producer, generation) = self.plain.generation();
        let order = self.state_order(epoch, generation);
        let mark = [records::owner_mark(epoch)];
        let mark = self.enqueue(
            &producer,
            &self.mark(generation),
            Some(order),
            &[],
            p,
            &mark,
        );
        if let Err(e) = mark {
            tracing::warn!(partition = p, error = %e, "cluster: marking a restored partition failed");
        }
    }

    /// Partitions read to their end: once all are, the replica scans them. Returns those that
    /// were not restored before.
    fn restored(&self, partitions: &[i32]) -> Vec<i32> {
        if self.layout_changed.load(Ordering::SeqCst) {
            return Vec::new();
        }
        let mut claims = self.claims.write().expect("claims lock");
        let mut done = Vec::new();
        let mut oldest = None::<Instant>;
        for p in partitions {
            if let Some(claim) = claims.get_mut(p)
                && !claim.restored
            {
                self.assemble(*p);
                self.restoring_reads
                    .fetch_add(claim.read.load(Ordering::Relaxed), Ordering::SeqCst);
                claim.restored = true;
                self.owned.lock().expect("owned lock").insert(*p);
                done.push(*p);
                self.epoch.fetch_add(1, Ordering::SeqCst);
                oldest = Some(oldest.map_or(claim.since, |o| o.min(claim.since)));
            }
        }
        if done.is_empty() {
            return done;
        }
        let pending = claims.values().filter(|c| !c.restored).count();
        let owned = claims.len() - pending;
        drop(claims);
        let m = crate::metrics::get();
        m.cluster_owned_partitions.set(owned as i64);
        self.count_repositories();
        if pending == 0 {
            let took = oldest.map_or(Duration::ZERO, |o| o.elapsed());
            m.cluster_restore_seconds.set(took.as_secs_f64());
            let read = self.restoring_reads.swap(0, Ordering::SeqCst);
            self.restore_reads.store(read, Ordering::SeqCst);
            m.cluster_restore_records.set(read as i64);
            tracing::info!(partitions = owned, records = read, took = ?took, "cluster: state restored; scanning this replica's share");
            if let Some(r) = self.readiness.get() {
                r.rescan_all();
                if self.given_up.get().is_none() {
                    r.restoring(None);
                }
            }
        }
        self.rescan.send_modify(|n| *n += 1);
        done
    }

    /// A fallback for `enable.partition.eof`: a claimed partition that is empty, or whose position
    /// reached the high watermark, is restored.
    fn check_restores(&self, consumer: &BaseConsumer<GroupContext>) {
        let waiting: Vec<i32> = self
            .claims
            .read()
            .expect("claims lock")
            .iter()
            .filter(|(_, c)| !c.restored && c.since.elapsed() >= Duration::from_secs(1))
            .map(|(p, _)| *p)
            .collect();
        if waiting.is_empty() {
            return;
        }
        let positions = consumer.position().ok();
        let topic = &self.cluster.state_topic;
        let done: Vec<i32> = waiting
            .into_iter()
            .filter(|p| {
                let Ok((low, high)) = consumer.fetch_watermarks(topic, *p, Duration::from_secs(1))
                else {
                    return false;
                };
                let position = positions
                    .as_ref()
                    .and_then(|l| l.find_partition(topic, *p))
                    .and_then(|e| e.offset().to_raw());
                (high <= low || position.is_some_and(|o| o >= high)) && self.stable(consumer, *p)
            })
            .collect();
        self.restored_with(consumer, &done);
    }

    /// Records, for each of `partitions` whose restore ends now, where it started: the first
    /// record it read (the committed offset, or the log's start if that was out of range, or
    /// past records a restore does not see), else where it stands (it read none). Every later
    /// offset commit for the partition carries it.
    fn learn_checkpoints(&self, consumer: &BaseConsumer<GroupContext>, partitions: &[i32]) {
        let positions = consumer.position().ok();
        let claims = self.claims.read().expect("claims lock");
        for p in partitions {
            let Some(claim) = claims.get(p).filter(|c| !c.restored) else {
                continue;
            };
            let first = claim.first.load(Ordering::SeqCst);
            let from = if first >= 0 {
                first
            } else {
                positions
                    .as_ref()
                    .and_then(|l| l.find_partition(&self.cluster.state_topic, *p))
                    .and_then(|e| e.offset().to_raw())
                    .filter(|o| *o >= 0)
                    .unwrap_or(0)
            };
            claim.from.store(from, Ordering::SeqCst);
        }
    }

    /// Keeps restores proportional to state, not history (the state topic's compaction runs a
    /// day behind at best, and not at all on some brokers): a restored partition whose records
    /// read since its checkpoint exceed [`checkpoint_due`] of what its state takes gets a new one.
    fn checkpoint(&self, consumer: &BaseConsumer<GroupContext>) {
        if self.given_up.get().is_some()
            || self.layout_changed.load(Ordering::SeqCst)
            || self.pulse.in_doubt()
        {
            return;
        }
        let due: Vec<i32> = self
            .claims
            .read()
            .expect("claims lock")
            .iter()
            .filter(|(_, c)| {
                c.restored
                    && c.read.load(Ordering::Relaxed)
                        > checkpoint_due(c.live.load(Ordering::Relaxed))
            })
            .map(|(p, _)| *p)
            .collect();
        let began = Instant::now();
        for p in due {
            if began.elapsed() >= CHECKPOINT_BUDGET {
                // The rest next second: the consumer thread goes back to polling.
                return;
            }
            let live = self.live_records(p);
            let claims = self.claims.read().expect("claims lock");
            let Some(claim) = claims.get(&p) else {
                continue;
            };
            claim.live.store(live, Ordering::Relaxed);
            if claim.read.load(Ordering::Relaxed) > checkpoint_due(live) {
                drop(claims);
                self.checkpoint_partition(consumer, p);
            }
        }
    }

    /// About how many records partition `p`'s state takes: a header per repository, an item per
    /// tag and digest, and the watch sets.
    fn live_records(&self, p: i32) -> u64 {
        let total = self.partitions.load(Ordering::Relaxed);
        let repos: u64 = self
            .repos
            .lock()
            .expect("repos lock")
            .iter()
            .flat_map(|(id, r)| r.iter().map(move |(repo, state)| (id, repo, state)))
            .filter(|(id, repo, _)| partition_of(&repo_key(id, repo), total) == p)
            .map(|(_, _, state)| match state {
                RepoState::Known(s) => 1 + (s.tags.len() + s.platforms.len()) as u64,
                RepoState::Pending { .. } => 1,
            })
            .sum();
        let sets = self.watch_sets.lock().expect("watch sets lock");
        repos + sets.values().filter(|s| s.contains_key(&p)).count() as u64
    }

    /// Writes all that partition `p` holds again at its end, and commits the offset before it
    /// as the partition's checkpoint: everything before that offset has been read and is held,
    /// so a restore from there rebuilds the same state. The records are the ones a commit of
    /// the same revision writes (same life, same revision), so a write that stops halfway
    /// changes nothing a restore reads, and they go in bounded chunks (a transaction each, with
    /// `exactly_once`); the offset is committed only with the last. The partition's writes wait
    /// meanwhile (its gate), so none lands between the records it rewrites, and what it holds
    /// cannot change under it; other partitions' go on.
    fn checkpoint_partition(&self, consumer: &BaseConsumer<GroupContext>, p: i32) {
        // Revocations, the only writers of `claims`, run on this thread: this read stays
        // uncontended.
        let claims = self.claims.read().expect("claims lock");
        let Some(claim) = claims.get(&p).filter(|c| c.restored) else {
            return;
        };
        let _gate = claim.gate.write().expect("gate lock");
        let total = self.partitions.load(Ordering::Relaxed);
        if self
            .writing
            .lock()
            .expect("writing lock")
            .iter()
            .any(|key| partition_of(key, total) == p)
        {
            // A commit of one of its repositories is under way: past the gate, a failed one
            // still records in memory what its failure left in the topic. Next second.
            return;
        }
        let topic = &self.cluster.state_topic;
        let position = consumer
            .position()
            .ok()
            .and_then(|l| l.find_partition(topic, p).and_then(|e| e.offset().to_raw()))
            .filter(|o| *o >= 0);
        let repositories = self
            .rewritable(p)
            .filter(|_| !claim.opaque.load(Ordering::SeqCst));
        let (Some(position), Some(repositories)) = (position, repositories) else {
            // Records this release does not know, a repository whose state is not in the topic
            // as held: what it holds is not all there is. Tried again later.
            return claim.put_off_checkpoint();
        };
        // Only a member of the group writes: a zombie is refused here, before anything.
        let member = self.commit_as_member(consumer, &claims, &[p]);
        if let Err(e) = member {
            tracing::warn!(partition = p, error = %e, "cluster: no checkpoint: this replica's membership is in doubt");
            return claim.put_off_checkpoint();
        }
        let before = claim.from.load(Ordering::SeqCst);
        let mut rest = repositories.iter();
        let mut written = 0usize;
        let outcome = loop {
            // The mark first: a restore from this checkpoint has it to tell a late write landing
            // after it, even in a partition holding no state.
            let mut records = Vec::new();
            if written == 0 {
                records.push(records::owner_mark(claim.epoch.load(Ordering::SeqCst)));
            }
            let mut layouts = Vec::new();
            while records.len() < CHECKPOINT_CHUNK
                && let Some((identity, repository)) = rest.next()
            {
                let (r, layout) = self.held_records(identity, repository);
                records.extend(r);
                layouts.push(layout);
            }
            let last = rest.len() == 0;
            if last {
                records.extend(self.watch_records(p));
                // Carried by the last transaction with exactly_once, and committed below.
                claim.from.store(position, Ordering::SeqCst);
            }
            if let Err(e) = self.write_now(&claims, p, &[], &records, || {}, || {}) {
                break Err(e);
            }
            written += records.len();
            self.layouts.lock().expect("layouts lock").extend(layouts);
            if last {
                break Ok(());
            }
        };
        // exactly_once's transaction carried the offset already; committed on its own too, so
        // that it holds on a broker that keeps no transactional offset commit (rdkafka's mock
        // cluster): every record is in, so it is true either way.
        let outcome = outcome.and_then(|()| {
            self.commit_as_member(consumer, &claims, &[p])
                .map_err(|e| StoreError::Unavailable(format!("kafka: {e}")))
        });
        match outcome {
            Ok(()) => {
                claim.read.store(0, Ordering::Relaxed);
                crate::metrics::get().cluster_checkpoints.inc();
                tracing::info!(
                    partition = p,
                    records = written,
                    offset = position,
                    "cluster: state partition checkpointed; restores start here"
                );
            }
            Err(e) => {
                claim.from.store(before, Ordering::SeqCst);
                claim.put_off_checkpoint();
                tracing::warn!(partition = p, error = %e, "cluster: checkpoint failed; restores start at the previous one");
                if let StoreError::Io(why) = e {
                    // Fenced, or refused for good: as it would stop a scan's write.
                    self.give_up(why);
                }
            }
        }
    }

    /// The repositories (identity, repository) partition `p` holds, if all of them can be
    /// written again as held: `None` when one has unreadable records, or state that is not in
    /// the topic as held (adopted but not written yet, or an older release's whole snapshot).
    fn rewritable(&self, p: i32) -> Option<Vec<(String, String)>> {
        let total = self.partitions.load(Ordering::Relaxed);
        let mine = |key: &str| partition_of(key, total) == p;
        if self
            .unreadable
            .lock()
            .expect("unreadable lock")
            .iter()
            .any(|k| mine(k))
        {
            return None;
        }
        let repos = self.repos.lock().expect("repos lock");
        let layouts = self.layouts.lock().expect("layouts lock");
        let mut out = Vec::new();
        for (identity, held) in repos.iter() {
            for (repository, state) in held {
                let key = repo_key(identity, repository);
                if !mine(&key) {
                    continue;
                }
                let layout = layouts.get(&key);
                if matches!(state, RepoState::Known(_))
                    && layout.is_none_or(|l| l.unwritten || l.life.is_none())
                {
                    return None;
                }
                out.push((identity.clone(), repository.clone()));
            }
        }
        Some(out)
    }

    /// The records that write `identity`/`repository`'s held state again (see
    /// [`records::rewrite`]), and its layout once they are written.
    fn held_records(&self, identity: &str, repository: &str) -> (Vec<Record>, (String, Layout)) {
        let state = self.held(identity, repository);
        let key = repo_key(identity, repository);
        let all = match &state {
            Some(RepoState::Known(s)) => records::items(s).into_keys().collect(),
            _ => Default::default(),
        };
        let (records, layout) = records::rewrite(
            identity,
            repository,
            state.as_ref(),
            &self.layout(&key),
            &all,
        );
        (records, (key, layout))
    }

    /// The watch sets recorded in partition `p`, as records.
    fn watch_records(&self, p: i32) -> Vec<Record> {
        self.watch_sets
            .lock()
            .expect("watch sets lock")
            .iter()
            .filter_map(|(identity, sets)| {
                let value = serde_json::to_vec(sets.get(&p)?).expect("patterns serialize");
                Some((watch_key(identity), Some(value)))
            })
            .collect()
    }

    /// Whether partition `p` is claimed and still being restored.
    fn restoring(&self, p: i32) -> bool {
        self.claims
            .read()
            .expect("claims lock")
            .get(&p)
            .is_some_and(|c| !c.restored)
    }

    fn count_repositories(&self) {
        let count: usize = self
            .repos
            .lock()
            .expect("repos lock")
            .values()
            .map(BTreeMap::len)
            .sum();
        crate::metrics::get()
            .cluster_owned_repositories
            .set(count as i64);
    }

    fn assigned(&self, partitions: &[i32]) {
        let mut claims = self.claims.write().expect("claims lock");
        for p in partitions {
            self.owned.lock().expect("owned lock").remove(p);
            self.staging.lock().expect("staging lock").remove(p);
            claims.insert(*p, Claim::new());
        }
        let total = self.partitions.load(Ordering::Relaxed) as usize;
        crate::registry::http::set_rate_share(claims.len(), total);
        let pending = claims.values().filter(|c| !c.restored).count();
        drop(claims);
        if self.layout_changed.load(Ordering::SeqCst) {
            // Stays refused (see `refuse_changed_layout`).
        } else if pending > 0 {
            tracing::info!(assigned = ?partitions, "cluster: restoring assigned state partitions");
            if let Some(r) = self.readiness.get() {
                r.restoring(Some(format!("restoring {pending} state partitions")));
            }
        } else if let Some(r) = self.readiness.get() {
            // Nothing new to restore (an empty assignment): ready as soon as registries scanned.
            if self.given_up.get().is_none() {
                r.restoring(None);
            }
        }
    }

    /// Gives up `partitions`: waits for the writes in flight, then forgets their state (a later
    /// assignment restores it from the topic again).
    fn revoked(&self, partitions: &[i32]) {
        let mut claims = self.claims.write().expect("claims lock");
        // A transaction still unfinished (a commit librdkafka holds in progress) must end
        // before its partition's next owner restores it: resumed later, it would publish this
        // replica's events after the new owner's. The writers are done (the claims are held).
        if let Some(txn) = self.transactional.get() {
            let mut txn = txn.lock().expect("producer lock");
            if txn.unfinished.is_some()
                && let Err(e) = self.finish(&mut txn)
            {
                self.give_up(format!(
                    "a Kafka transaction could not be finished before its partitions moved: {e}"
                ));
            }
        }
        let was_restoring = claims.values().any(|c| !c.restored);
        for p in partitions {
            claims.remove(p);
            self.owned.lock().expect("owned lock").remove(p);
            self.staging.lock().expect("staging lock").remove(p);
        }
        self.epoch.fetch_add(1, Ordering::SeqCst);
        let total = self.partitions.load(Ordering::Relaxed);
        crate::registry::http::set_rate_share(claims.len(), total as usize);
        let owned = claims.values().filter(|c| c.restored).count();
        // The partitions still being read were the ones taken away: the restore is over, as if
        // it had completed (see `restored`), or the replica would stay unready.
        let restore_over =
            was_restoring && owned == claims.len() && !self.layout_changed.load(Ordering::SeqCst);
        drop(claims);
        if restore_over {
            let read = self.restoring_reads.swap(0, Ordering::SeqCst);
            self.restore_reads.store(read, Ordering::SeqCst);
            crate::metrics::get()
                .cluster_restore_records
                .set(read as i64);
            if let Some(r) = self.readiness.get() {
                r.rescan_all();
                if self.given_up.get().is_none() {
                    r.restoring(None);
                }
            }
            self.rescan.send_modify(|n| *n += 1);
        }
        let gone = |p: i32| partitions.contains(&p);
        for (identity, repos) in self.repos.lock().expect("repos lock").iter_mut() {
            repos.retain(|repo, _| !gone(partition_of(&repo_key(identity, repo), total)));
        }
        self.unreadable
            .lock()
            .expect("unreadable lock")
            .retain(|key| !gone(partition_of(key, total)));
        self.layouts
            .lock()
            .expect("layouts lock")
            .retain(|key, _| !gone(partition_of(key, total)));
        for sets in self
            .watch_sets
            .lock()
            .expect("watch sets lock")
            .values_mut()
        {
            sets.retain(|p, _| !gone(*p));
        }
        crate::metrics::get()
            .cluster_owned_partitions
            .set(owned as i64);
        self.count_repositories();
        tracing::info!(revoked = ?partitions, "cluster: partitions moved to other replicas");
    }

    /// What the writer knows of the records of the repository with header key `key`.
    fn layout(&self, key: &str) -> Layout {
        self.layouts
            .lock()
            .expect("layouts lock")
            .get(key)
            .cloned()
            .unwrap_or_default()
    }

    fn set_layout(&self, key: &str, layout: Layout) {
        self.layouts
            .lock()
            .expect("layouts lock")
            .insert(key.to_owned(), layout);
    }

    /// The state held in memory for `registry`/`repository`.
    fn held(&self, registry: &str, repository: &str) -> Option<RepoState> {
        self.repos
            .lock()
            .expect("repos lock")
            .get(registry)
            .and_then(|r| r.get(repository))
            .cloned()
    }

    /// Writes `events` and then `records` to partition `p`, which must be claimed and restored.
    /// At-least-once: the events are acknowledged before the records are produced. Exactly-once:
    /// all of it in one transaction with the group's metadata.
    /// `then` runs once they are written, while the partition is still claimed (so that what
    /// it keeps in memory cannot outlive a revocation).
    fn write(
        &self,
        p: i32,
        events: &[Event],
        records: &[Record],
        then: impl FnOnce(),
    ) -> Result<(), StoreError> {
        let claims = self.claims.read().expect("claims lock");
        self.write_claimed(&claims, p, events, records, then, || {})
    }

    /// [`Inner::write`] under a claims guard the caller holds. `published` runs instead of
    /// `then` when the write failed after its events were acknowledged (at-least-once).
    fn write_claimed(
        &self,
        claims: &BTreeMap<i32, Claim>,
        p: i32,
        events: &[Event],
        records: &[Record],
        then: impl FnOnce(),
        published: impl FnOnce(),
    ) -> Result<(), StoreError> {
        self.check_alive()?;
        let Some(claim) = claims.get(&p).filter(|c| c.restored) else {
            return Err(StoreError::Moved(format!(
                "state partition {p} is not this replica's (it moved in a rebalance)"
            )));
        };
        // A checkpoint of the partition finishes first.
        let _gate = claim.gate.read().expect("gate lock");
        self.write_now(claims, p, events, records, then, published)
    }

    /// [`Inner::write_claimed`] once the partition is known to be this replica's and not being
    /// checkpointed.
    fn write_now(
        &self,
        claims: &BTreeMap<i32, Claim>,
        p: i32,
        events: &[Event],
        records: &[Record],
        then: impl FnOnce(),
        published: impl FnOnce(),
    ) -> Result<(), StoreError> {
        // Checked before anything is produced: a record the broker would refuse must not leave
        // its events published and its state unrecorded (to be published again every cycle).
        if let Some((key, value)) = records
            .iter()
            .find(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len) > records::MAX_RECORD)
        {
            return Err(self.refused(format!(
                "a state record of {} bytes (key {key}) is over the {} bytes regwatch allows",
                key.len() + value.as_ref().map_or(0, Vec::len),
                records::MAX_RECORD
            )));
        }
        // Checked right before anything is produced: a write that waited (behind a checkpoint,
        // for its events' acknowledgements) may have waited across a stall.
        let epoch = claims.get(&p).map_or(0, |c| c.epoch.load(Ordering::SeqCst));
        let produce = |events: &[Event], records: &[Record]| {
            self.pulse.check().map_err(StoreError::Unavailable)?;
            self.produce(events, p, records, Some(epoch))
        };
        let written = match self.transactional.get() {
            None => produce(events, &[]).and_then(|()| {
                let recorded = produce(&[], records);
                if recorded.is_err() && !events.is_empty() {
                    published();
                }
                recorded
            }),
            Some(txn) => self.transaction(
                &mut txn.lock().expect("producer lock"),
                claims,
                p,
                events,
                records,
            ),
        };
        if written.is_ok() {
            then();
            let m = crate::metrics::get();
            m.cluster_state_records.inc_by(records.len() as u64);
            m.cluster_state_bytes.inc_by(
                records
                    .iter()
                    .map(|(k, v)| (k.len() + v.as_ref().map_or(0, Vec::len)) as u64)
                    .sum(),
            );
        }
        written
    }

    /// Stops this replica for `why`: every store call fails from now on with an error that ends
    /// the daemon (for its service manager to start a fresh member), and `/readyz` says why.
    fn give_up(&self, why: String) {
        tracing::error!(reason = %why, "cluster: this replica cannot go on");
        if let Some(r) = self.readiness.get() {
            r.restoring(Some(why.clone()));
        }
        let _ = self.given_up.set(why);
        // Leave the group: the partitions go to replicas that can go on.
        self.stop.store(true, Ordering::Relaxed);
    }

    /// [`Inner::give_up`]'s reason, as the error every store call answers.
    fn check_alive(&self) -> Result<(), StoreError> {
        match self.given_up.get() {
            Some(why) => Err(StoreError::Io(format!("cluster replica stopped: {why}"))),
            None => Ok(()),
        }
    }

    /// A write the broker will refuse however often it is tried: counted, logged at ERROR, and
    /// an error that stops the replica (a silent retry would publish its events every cycle).
    fn refused(&self, why: String) -> StoreError {
        crate::metrics::get().cluster_write_refusals.inc();
        tracing::error!(reason = %why, "cluster: a state write was refused for good");
        if let Some(r) = self.readiness.get() {
            r.restoring(Some(format!("a state write was refused for good: {why}")));
        }
        StoreError::Io(format!("state write refused: {why}"))
    }

    /// A Kafka error as a store error: permanent (the record or the credentials are wrong) or
    /// not (the broker is away, the partition moved).
    fn classify(&self, e: KafkaError) -> StoreError {
        use RDKafkaErrorCode as C;
        match e.rdkafka_error_code() {
            Some(
                code @ (C::MessageSizeTooLarge
                | C::InvalidRecord
                | C::TopicAuthorizationFailed
                | C::ClusterAuthorizationFailed
                | C::TransactionalIdAuthorizationFailed
                | C::InvalidMessageSize),
            ) => self.refused(format!("kafka: {code}")),
            _ => StoreError::Unavailable(format!("kafka: {e}")),
        }
    }

    /// Produces `events` to the event topic and `records` to state partition `p` with the plain
    /// producer, as state of its owner of `epoch` (`None`: not state), and waits for every
    /// acknowledgement.
    fn produce(
        &self,
        events: &[Event],
        p: i32,
        records: &[Record],
        epoch: Option<u64>,
    ) -> Result<(), StoreError> {
        let (producer, generation) = self.plain.generation();
        let order = epoch.map(|epoch| self.state_order(epoch, generation));
        let produced = self
            .enqueue(&producer, &self.mark(generation), order, events, p, records)
            .and_then(|deliveries| {
                let acks = tokio::runtime::Handle::current()
                    .block_on(futures_util::future::join_all(deliveries));
                acks.into_iter().try_for_each(|ack| match ack {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => {
                        crate::metrics::get().kafka_delivery_errors.inc();
                        Err(e)
                    }
                    Err(_) => Err(KafkaError::Canceled),
                })
            });
        produced.map_err(|e| {
            // A producer whose state the broker lost or fenced fails every later write too: the
            // next one goes through a fresh producer.
            self.plain.renew_if_lost(producer, e.rdkafka_error_code());
            self.classify(e)
        })
    }

    /// This process's mark on the state records written by the `generation`th producer it used
    /// (see [`Inner::writer`]).
    fn mark(&self, generation: u64) -> String {
        format!("{}/{generation}", self.writer)
    }

    /// The order of a state record the owner of `epoch` writes with the plain producer's
    /// `generation`th. With `exactly_once` the transactional producer writes the state, and is
    /// never replaced (a fenced one stops the replica): its generation is 0, and so is that of
    /// the plain producer's marks, lest every transaction's records read as late.
    fn state_order(&self, epoch: u64, generation: u64) -> Order {
        let generation = if self.transactional.get().is_some() {
            0
        } else {
            generation
        };
        Order { epoch, generation }
    }

    /// This process's mark on the state records its transactional producer writes (never
    /// replaced: a fenced one stops the replica).
    fn transactional_mark(&self) -> String {
        format!("{}/txn", self.writer)
    }

    /// Hands `events` (to the event topic) and `records` (to state partition `p`, marked `mark`
    /// and `order`, if any) to `producer`, in that order; returns their delivery futures.
    fn enqueue(
        &self,
        producer: &KafkaProducer,
        mark: &str,
        order: Option<Order>,
        events: &[Event],
        p: i32,
        records: &[Record],
    ) -> Result<Vec<DeliveryFuture>, KafkaError> {
        let mut deliveries = Vec::with_capacity(events.len() + records.len());
        for event in events {
            let record = event_record(&self.kafka.topic, event);
            deliveries.push(send(producer, record)?);
        }
        let order = order.map(Order::encode);
        for (key, value) in records {
            let mut headers = OwnedHeaders::new().insert(Header {
                key: WRITER,
                value: Some(mark.as_bytes()),
            });
            if let Some(order) = &order {
                headers = headers.insert(Header {
                    key: ORDER,
                    value: Some(order.as_bytes()),
                });
            }
            let mut record = FutureRecord::<String, Vec<u8>>::to(&self.cluster.state_topic)
                .key(key)
                .partition(p)
                .headers(headers);
            if let Some(value) = value {
                record = record.payload(value);
            }
            deliveries.push(send(producer, record)?);
        }
        Ok(deliveries)
    }

    /// One transaction: the events, the records, and the group's metadata. A fenced producer (a
    /// zombie whose transactional.id or partitions another replica took) is fatal: the daemon
    /// exits and its service manager restarts it as a fresh member. A commit or abort that
    /// could not finish is resumed first (librdkafka refuses anything else meanwhile).
    fn transaction(
        &self,
        txn: &mut Txn,
        claims: &BTreeMap<i32, Claim>,
        p: i32,
        events: &[Event],
        records: &[Record],
    ) -> Result<(), StoreError> {
        self.finish(txn)?;
        self.pulse.check().map_err(StoreError::Unavailable)?;
        let member = self.group.lock().expect("group lock");
        let Some(group) = member.as_ref() else {
            return Err(StoreError::Unavailable(
                "not a member of the consumer group yet".into(),
            ));
        };
        if let Err(e) = txn.producer.begin_transaction() {
            // Nothing is unfinished (see above): only a fenced or broken producer refuses.
            return Err(self.fenced(&e));
        }
        let steps = || -> Result<(), KafkaError> {
            // Committing the transaction waits for these deliveries.
            let epoch = claims.get(&p).map_or(0, |c| c.epoch.load(Ordering::SeqCst));
            let order = Some(self.state_order(epoch, 0));
            self.enqueue(
                &txn.producer,
                &self.transactional_mark(),
                order,
                events,
                p,
                records,
            )?;
            // The partition's checkpoint, committed with the group generation that fences a
            // zombie.
            let offsets = self.layout_offsets(claims, &[p])?;
            txn.producer
                .send_offsets_to_transaction(&offsets, group, self.step_timeout())
        };
        let outcome = steps();
        drop(member);
        match outcome {
            Ok(()) => {
                txn.unfinished = Some(Ending::Commit);
                self.finish(txn)
            }
            Err(e) if is_fatal(&txn.producer, &e) => Err(self.fenced(&e)),
            Err(e) => {
                txn.unfinished = Some(Ending::Abort);
                self.finish(txn)?;
                Err(StoreError::Unavailable(format!(
                    "kafka transaction aborted: {e}"
                )))
            }
        }
    }

    /// Finishes the transaction's commit or abort, if one is unfinished: retried while
    /// librdkafka says it is retriable (for a few step timeouts), turned into an abort when it
    /// says the commit must abort. Still unfinished, it is resumed by the next write.
    fn finish(&self, txn: &mut Txn) -> Result<(), StoreError> {
        let deadline = Instant::now() + 3 * self.step_timeout();
        while let Some(ending) = txn.unfinished {
            let done = match ending {
                Ending::Commit => txn.producer.commit_transaction(self.step_timeout()),
                Ending::Abort => txn.producer.abort_transaction(self.step_timeout()),
            };
            let e = match done {
                Ok(()) => {
                    txn.unfinished = None;
                    break;
                }
                Err(e) if is_fatal(&txn.producer, &e) => return Err(self.fenced(&e)),
                Err(e) => e,
            };
            let class = match &e {
                KafkaError::Transaction(t) => Some((t.is_retriable(), t.txn_requires_abort())),
                _ => None,
            };
            match class {
                Some((_, true)) if ending == Ending::Commit => {
                    tracing::warn!(error = %e, "cluster: the transaction must be aborted");
                    txn.unfinished = Some(Ending::Abort);
                }
                Some((true, _))
                    if Instant::now() < deadline && !self.stop.load(Ordering::Relaxed) =>
                {
                    tracing::warn!(error = %e, step = ?ending, "cluster: finishing the transaction; retrying");
                }
                Some((true, _)) => {
                    return Err(StoreError::Unavailable(format!(
                        "kafka transaction {ending:?} not finished ({e}); resumed by the next write"
                    )));
                }
                _ => {
                    // Neither retriable nor abortable: librdkafka holds no call in progress.
                    txn.unfinished = None;
                    return Err(StoreError::Unavailable(format!(
                        "kafka transaction {ending:?} failed: {e}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The error a fenced (or otherwise broken) transactional producer ends the replica with.
    fn fenced(&self, e: &KafkaError) -> StoreError {
        tracing::error!(error = %e, "cluster: the transactional producer was fenced; nothing of this scan was committed");
        StoreError::Io(format!(
            "kafka transaction fenced ({e}): another replica took over"
        ))
    }
}

/// Hands `record` to `producer`, waiting while its queue is full (a write bigger than
/// `queue.buffering.max.messages` drains as it goes, instead of failing every time).
fn send<'a, K, P>(
    producer: &KafkaProducer,
    mut record: FutureRecord<'a, K, P>,
) -> Result<DeliveryFuture, KafkaError>
where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match producer.send_result(record) {
            Ok(delivery) => return Ok(delivery),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                if Instant::now() < deadline =>
            {
                producer.poll(Duration::from_millis(10));
                record = back;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// Whether `e` leaves the transactional producer unusable. A fenced producer is, whether or
/// not librdkafka flags that error fatal (a fencing answered to AddOffsetsToTxn is not flagged,
/// and aborting and retrying then fails the same way for good).
fn is_fatal(producer: &KafkaProducer, e: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    let fenced = matches!(
        e.rdkafka_error_code(),
        Some(C::Fenced | C::ProducerFenced | C::InvalidProducerEpoch)
    );
    fenced
        || matches!(e, KafkaError::Transaction(t) if t.is_fatal())
        || producer.client().fatal_error().is_some()
}

/// The transactional producer, and the end of a transaction librdkafka still holds in progress.
struct Txn {
    producer: KafkaProducer,
    unfinished: Option<Ending>,
}

/// How an unfinished transaction ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Commit,
    Abort,
}

impl StateStore for ClusterStore {
    fn repo_state(
        &self,
        registry: &str,
        repository: &str,
    ) -> Result<Option<RepoState>, StoreError> {
        // Only a restored partition knows what it holds: "never seen" from one being read (or
        // gone) would make a known repository first-seen. `owned` is held while reading, so that
        // no revocation (which forgets the partition's state) comes in between.
        self.inner.check_alive()?;
        let key = repo_key(registry, repository);
        let p = self.inner.repo_partition(registry, repository)?;
        let owned = self.inner.owned.lock().expect("owned lock");
        if !owned.contains(&p) {
            return Err(StoreError::Moved(format!(
                "state partition {p} is not restored here (it is being read, or moved)"
            )));
        }
        if self
            .inner
            .unreadable
            .lock()
            .expect("unreadable lock")
            .contains(&key)
        {
            // Set aside, not the end of the replica (its successor would stop the same way).
            return Err(StoreError::SetAside(format!(
                "the state records of {repository} in state partition {p} cannot be read \
                 (written by a newer release?); it is not scanned until they can"
            )));
        }
        Ok(self
            .inner
            .repos
            .lock()
            .expect("repos lock")
            .get(registry)
            .and_then(|r| r.get(repository))
            .cloned())
    }

    fn watch_set(&self, _registry: &str) -> Result<Option<Vec<String>>, StoreError> {
        // There is no registry-wide answer: each partition records the listings that covered it,
        // and a first-seen repository is judged by its own partition's (`watch_set_of`).
        Ok(None)
    }

    fn watch_set_of(
        &self,
        registry: &str,
        repository: &str,
    ) -> Result<Option<Option<Vec<String>>>, StoreError> {
        // Partitions are covered by listings one by one (a replica that died before finishing
        // its first, a config edit rolled out replica by replica): the repository's own
        // partition says whether a listing has seen it missing.
        let p = self.inner.repo_partition(registry, repository)?;
        let sets = self.inner.watch_sets.lock().expect("watch sets lock");
        Ok(Some(sets.get(registry).and_then(|s| s.get(&p)).cloned()))
    }

    fn set_watch_set(
        &self,
        registry: &str,
        patterns: &[String],
        epoch: u64,
    ) -> Result<(), StoreError> {
        let value = serde_json::to_vec(patterns).expect("patterns serialize");
        let record = [(watch_key(registry), Some(value))];
        // Held throughout: no partition is restored or revoked while the listing's record is
        // written, so it goes exactly to the partitions the listing covered.
        let claims = self.inner.claims.read().expect("claims lock");
        if self.inner.epoch.load(Ordering::SeqCst) != epoch {
            return Ok(());
        }
        let restored: Vec<i32> = claims
            .iter()
            .filter(|(_, c)| c.restored)
            .map(|(p, _)| *p)
            .collect();
        for p in restored {
            let recorded = self
                .inner
                .watch_sets
                .lock()
                .expect("watch sets lock")
                .get(registry)
                .and_then(|s| s.get(&p))
                .is_some_and(|w| w == patterns);
            if recorded {
                continue;
            }
            let written = || {
                self.inner
                    .watch_sets
                    .lock()
                    .expect("watch sets lock")
                    .entry(registry.to_owned())
                    .or_default()
                    .insert(p, patterns.to_vec());
            };
            self.inner
                .write_claimed(&claims, p, &[], &record, written, || {})?;
        }
        Ok(())
    }

    fn record_pending(
        &self,
        registry: &str,
        repository: &str,
        emit: bool,
        revision: u64,
    ) -> Result<(), StoreError> {
        let _writing = Writing::begin(&self.inner, registry, repository, None)?;
        // Held from the check to the write, so that no revocation and restore comes between.
        let claims = self.inner.claims.read().expect("claims lock");
        if let Some(RepoState::Known(_)) = self.inner.held(registry, repository) {
            // Another writer's first scan of it committed meanwhile: that decision stands.
            return Ok(());
        }
        let state = RepoState::Pending { emit, revision };
        self.put(&claims, registry, repository, state, &[])
    }

    fn commit_scan(
        &self,
        registry: &str,
        repository: &str,
        base: Option<u64>,
        snapshot: &Snapshot,
        events: &[Event],
    ) -> Result<(), StoreError> {
        // Held until the state is written and kept in memory, so no other commit of the
        // repository comes between the check and the write; commits of others go on meanwhile.
        let _writing = Writing::begin(&self.inner, registry, repository, base)?;
        // Held from the check to the write (and what it keeps in memory), so that no revocation
        // and restore of the partition comes between: a restored newer revision is seen here.
        let claims = self.inner.claims.read().expect("claims lock");
        super::check_base(
            repository,
            base,
            self.inner.held(registry, repository).as_ref(),
        )?;
        self.put(
            &claims,
            registry,
            repository,
            RepoState::Known(snapshot.clone()),
            events,
        )
    }

    fn repositories(&self, registry: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .inner
            .repos
            .lock()
            .expect("repos lock")
            .get(registry)
            .map(|r| r.keys().cloned().collect())
            .unwrap_or_default())
    }

    fn forget_repositories(
        &self,
        registry: &str,
        repositories: &[String],
    ) -> Result<(), StoreError> {
        for repository in repositories {
            let p = self.inner.repo_partition(registry, repository)?;
            let key = repo_key(registry, repository);
            let held = match self.inner.held(registry, repository) {
                Some(RepoState::Known(s)) => Some(s),
                _ => None,
            };
            let layout = self.inner.layout(&key);
            let tombstones = records::forget(registry, repository, held.as_ref(), &layout);
            let forgotten = self.inner.write(p, &[], &tombstones, || {
                let mut repos = self.inner.repos.lock().expect("repos lock");
                if let Some(r) = repos.get_mut(registry) {
                    r.remove(repository);
                }
                self.inner
                    .layouts
                    .lock()
                    .expect("layouts lock")
                    .remove(&key);
            });
            if forgotten.is_err() {
                // Some tombstones may have landed: the next commit writes all of it again,
                // under a new life.
                let mut stale = layout.stale;
                stale.extend(
                    held.as_ref()
                        .map(records::items)
                        .unwrap_or_default()
                        .into_keys(),
                );
                self.inner.set_layout(
                    &key,
                    Layout {
                        life: None,
                        stale,
                        unwritten: false,
                    },
                );
            }
            forgotten?;
        }
        self.inner.count_repositories();
        Ok(())
    }

    fn owns(&self, registry: &str, repository: &str) -> bool {
        let Ok(p) = self.inner.repo_partition(registry, repository) else {
            return false;
        };
        self.inner.owned.lock().expect("owned lock").contains(&p)
    }

    fn ownership_epoch(&self) -> u64 {
        self.inner.epoch.load(Ordering::SeqCst)
    }

    fn shared(&self) -> bool {
        true
    }

    fn fresh_revision(&self) -> u64 {
        super::fresh_revision_above(self.inner.high_water.load(Ordering::SeqCst))
    }

    fn forward_hint(&self, registry: &str, repository: &str) -> Result<(), StoreError> {
        let p = self.inner.repo_partition(registry, repository)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let record = [(
            hint_key(registry, repository),
            Some(now.to_string().into_bytes()),
        )];
        self.inner.produce(&[], p, &record, None)
    }
}

impl ClusterStore {
    /// Writes a repository's state (with its events), then keeps it in memory: a pending state
    /// as its header alone, a snapshot as the items that changed since the one held, then the
    /// header (see [`records`]).
    fn put(
        &self,
        claims: &BTreeMap<i32, Claim>,
        registry: &str,
        repository: &str,
        state: RepoState,
        events: &[Event],
    ) -> Result<(), StoreError> {
        let p = self.inner.repo_partition(registry, repository)?;
        let key = repo_key(registry, repository);
        let mut layout = self.inner.layout(&key);
        // Another writer's records the owner is to write over (see `Inner::repair`): rewritten
        // by this commit too, which may come first.
        let foreign = (registry.to_owned(), repository.to_owned());
        if let Some(items) = self
            .inner
            .repairs
            .lock()
            .expect("repairs lock")
            .get(&foreign)
        {
            layout.stale.extend(items.iter().cloned());
        }
        if layout.unwritten
            && let Some(RepoState::Known(adopted)) = self.inner.held(registry, repository)
        {
            // The state that published the last events is not in the topic: stored first, on
            // its own, or this write's events would be diffed against a revision a restore
            // never sees (and a change published again under another id).
            let whole = Layout {
                life: None,
                stale: layout.stale.clone(),
                unwritten: false,
            };
            let c = records::commit(registry, repository, None, &whole, &adopted);
            let written = c.written.clone();
            self.inner.write_claimed(
                claims,
                p,
                &[],
                &c.records,
                || self.inner.set_layout(&key, written),
                || {},
            )?;
            layout = c.written;
        }
        let (records, written, touched) = match &state {
            RepoState::Pending { .. } => {
                let record = (key.clone(), Some(encode_state(&state)));
                (vec![record], layout.clone(), Default::default())
            }
            RepoState::Known(next) => {
                let held = match self.inner.held(registry, repository) {
                    Some(RepoState::Known(s)) => Some(s),
                    _ => None,
                };
                let c = records::commit(registry, repository, held.as_ref(), &layout, next);
                (c.records, c.written, c.touched)
            }
        };
        let keep = |state: RepoState, layout: Layout| {
            self.inner
                .high_water
                .fetch_max(state.revision(), Ordering::SeqCst);
            self.inner.set_layout(&key, layout);
            self.inner
                .repos
                .lock()
                .expect("repos lock")
                .entry(registry.to_owned())
                .or_default()
                .insert(repository.to_owned(), state);
        };
        let mut published = false;
        let result = self.inner.write_claimed(
            claims,
            p,
            events,
            &records,
            || keep(state.clone(), written),
            || published = true,
        );
        if result.is_err() && published {
            // Its events are out, its state is not (or not known to be) in the topic. Held at
            // the state that published them, so that a tag moving back before the next write is
            // seen; that write stores all of it again, under a new life. Lost with this replica,
            // the next owner detects the same changes again, under the same ids.
            let mut stale = layout.stale.clone();
            stale.extend(touched);
            if let Some(RepoState::Known(before)) = self.inner.held(registry, repository) {
                stale.extend(records::items(&before).into_keys());
            }
            keep(
                state,
                Layout {
                    life: None,
                    stale,
                    unwritten: true,
                },
            );
        } else if result.is_err() && !touched.is_empty() {
            // Some of its records may have landed: the next commit rewrites them.
            let mut layout = layout;
            layout.stale.extend(touched);
            self.inner.set_layout(&key, layout);
        }
        result?;
        self.inner.count_repositories();
        Ok(())
    }
}

/// A repository whose state this process is writing. A second writer of it meanwhile (another
/// loop on the same registry identity) is refused, as it read the state before this write.
struct Writing<'a> {
    inner: &'a Inner,
    key: String,
}

impl<'a> Writing<'a> {
    /// Marks `registry`/`repository` as being written by a scan that read `base` (see
    /// [`StateStore::commit_scan`]), or answers [`StoreError::Conflict`] if it already is.
    fn begin(
        inner: &'a Inner,
        registry: &str,
        repository: &str,
        base: Option<u64>,
    ) -> Result<Self, StoreError> {
        let key = repo_key(registry, repository);
        if !inner
            .writing
            .lock()
            .expect("writing lock")
            .insert(key.clone())
        {
            let stored = match inner.held(registry, repository) {
                Some(RepoState::Known(s)) => Some(s.revision),
                _ => None,
            };
            return Err(StoreError::Conflict {
                repository: repository.to_owned(),
                base,
                stored,
            });
        }
        Ok(Writing { inner, key })
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.inner
            .writing
            .lock()
            .expect("writing lock")
            .remove(&self.key);
    }
}

/// The consumer's context: librdkafka's logs as the sink's, and rebalances that restore before
/// they scan.
struct GroupContext {
    log: KafkaContext,
    inner: Arc<Inner>,
}

impl ClientContext for GroupContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.log.log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.log.error(error, reason);
    }
}

impl ConsumerContext for GroupContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        crate::metrics::get().cluster_rebalances.inc();
        let topic = &self.inner.cluster.state_topic;
        let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let outcome = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                // Read every assigned partition from its checkpoint (its committed offset; the
                // beginning when it has none): that is the restore.
                let mut from_start = TopicPartitionList::new();
                for p in &partitions {
                    let _ = from_start.add_partition_offset(topic, *p, Offset::Stored);
                }
                self.inner.assigned(&partitions);
                if let Err(why) = self.inner.check_layout(consumer) {
                    self.inner.refuse_changed_layout(&why);
                }
                if cooperative {
                    consumer.incremental_assign(&from_start)
                } else {
                    consumer.assign(&from_start)
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                if consumer.assignment_lost() {
                    tracing::warn!(
                        "cluster: this replica lost its partitions (its session expired)"
                    );
                }
                self.inner.revoked(&partitions);
                if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                }
            }
            other => {
                tracing::error!(error = ?other, "cluster: rebalance failed");
                Ok(())
            }
        };
        if let Err(e) = outcome {
            tracing::error!(error = %e, "cluster: applying the assignment failed");
        }
        *self.inner.group.lock().expect("group lock") = consumer.group_metadata();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_land_in_a_stable_partition_within_range() {
        let key = repo_key("https://r.example", "team/app");
        assert_eq!(key, r#"["repo","https://r.example","team/app"]"#);
        let p = partition_of(&key, 12);
        assert!((0..12).contains(&p));
        assert_eq!(p, partition_of(&key, 12), "deterministic");
        // Many repositories spread over the partitions.
        let used: std::collections::BTreeSet<i32> = (0..200)
            .map(|i| partition_of(&repo_key("id", &format!("r{i}")), 12))
            .collect();
        assert_eq!(used.len(), 12);
    }
}

#[cfg(test)]
mod review {
    //! The rebalance callback's steps (`assigned`, `restored`, `revoked`), called in the orders
    //! librdkafka calls them, and what the store answers in between. No broker is needed: the
    //! producer connects lazily and nothing here writes.
    use super::*;

    fn store() -> (ClusterStore, Arc<Readiness>) {
        let (store, readiness) = store_on("127.0.0.1:9");
        store.inner.partitions.store(4, Ordering::Relaxed);
        let _ = store.inner.readiness.set(readiness.clone());
        (store, readiness)
    }

    /// A store on `brokers` (state topic `imgs.state`, events `imgs`, nothing created), not started.
    fn store_on(brokers: &str) -> (ClusterStore, Arc<Readiness>) {
        let kafka = KafkaConfig {
            brokers: brokers.into(),
            topic: "imgs".into(),
            create_topic: false,
            partitions: 1,
            replication_factor: -1,
            properties: Vec::new(),
        };
        let cluster = ClusterConfig {
            group: "g".into(),
            state_topic: "imgs.state".into(),
            session_timeout: Duration::from_secs(10),
            exactly_once: false,
            partitions: 4,
            verify_state_topic: false,
        };
        let store = ClusterStore::new(&kafka, &cluster).expect("store");
        let readiness = Arc::new(Readiness::new(Vec::<String>::new(), false));
        (store, readiness)
    }

    /// A partition restored while a listing ran was not covered by it: recording the listing's
    /// watch set there would make that partition's unscanned repositories news (phantoms).
    #[test]
    fn a_listing_that_saw_a_restore_records_no_watch_set() {
        let (store, _) = store();
        store.inner.assigned(&[0]);
        store.inner.restored(&[0]);
        let listing_began = store.ownership_epoch();
        store.inner.assigned(&[1]);
        store.inner.restored(&[1]);
        let started = Instant::now();
        let recorded = store.set_watch_set("id", &["team/*".into()], listing_began);
        assert!(recorded.is_ok(), "{recorded:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "nothing is written"
        );
        let sets = store.inner.watch_sets.lock().unwrap();
        assert!(sets.get("id").is_none_or(|s| s.is_empty()), "{sets:?}");
    }

    /// A rolling restart makes rebalances follow each other: partitions assigned to a replica can
    /// be taken away again before they were read to the end. Nothing is left to restore then,
    /// and the replica must not stay "restoring" (503) until some later rebalance.
    #[test]
    fn partitions_revoked_before_their_restore_do_not_keep_the_replica_unready() {
        let (store, readiness) = store();
        store.inner.assigned(&[0, 1]);
        store.inner.restored(&[0]);
        store.inner.assigned(&[2]);
        assert!(readiness.check().is_err(), "1 and 2 are still being read");
        store.inner.revoked(&[1, 2]);
        assert_eq!(
            readiness.check(),
            Ok(()),
            "what is left (partition 0) is restored"
        );
    }

    /// A partition being restored (assigned again after it was revoked mid-cycle, say) has not
    /// told yet what it holds: "never seen" would make a known repository first-seen, whose
    /// first scan then overwrites its state once the restore completes (a baseline that loses
    /// the changes since, or a pending "emit" that re-emits every tag).
    #[test]
    fn a_repository_of_a_partition_not_restored_has_no_answer_yet() {
        let (store, _) = store();
        let (id, repo) = ("https://r.example", "team/app");
        let p = partition_of(&repo_key(id, repo), 4);
        assert!(
            matches!(store.repo_state(id, repo), Err(StoreError::Moved(_))),
            "not assigned here"
        );
        store.inner.assigned(&[p]);
        assert!(
            matches!(store.repo_state(id, repo), Err(StoreError::Moved(_))),
            "assigned, still being read"
        );
        store.inner.restored(&[p]);
        assert!(
            matches!(store.repo_state(id, repo), Ok(None)),
            "restored: truly never seen"
        );
    }

    /// [`mock_with_state_record`] in the key's partition, for other test modules.
    pub(super) fn review_mock(
        key: &str,
        value: &[u8],
    ) -> rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
        mock_with_state_record(key, value, partition_of(key, 4))
    }

    /// [`store_on`], for other test modules.
    pub(super) fn review_store_on(brokers: &str) -> (ClusterStore, Arc<Readiness>) {
        store_on(brokers)
    }

    /// Waits until `readiness` says its store restored what it was assigned.
    pub(super) async fn wait_restored(readiness: &Readiness) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while readiness.check().is_err() {
            assert!(Instant::now() < deadline, "{:?}", readiness.check());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Commits revision `revision` of `repository` (diffed against `base`), whose one tag,
    /// `latest`, is at `digest`, from the blocking pool as scans do.
    pub(super) async fn commit_latest(
        store: &Arc<ClusterStore>,
        (registry, repository): (&'static str, &'static str),
        base: Option<u64>,
        revision: u64,
        digest: &str,
    ) -> Result<(), StoreError> {
        let (writer, digest) = (store.clone(), digest.to_owned());
        tokio::task::spawn_blocking(move || {
            let mut snapshot = Snapshot {
                revision,
                ..Snapshot::default()
            };
            snapshot.tags.insert("latest".into(), Some(digest));
            writer.commit_scan(registry, repository, base, &snapshot, &[])
        })
        .await
        .expect("commit task")
    }

    /// [`owning`], for other test modules.
    pub(super) async fn review_owning(
        mock: &rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
        registry: &str,
        repository: &str,
    ) -> ClusterStore {
        owning(mock, registry, repository).await
    }

    /// A mock cluster with the store's topics (4 partitions each) and one state record, `value`
    /// under `key`, already in partition `partition`.
    fn mock_with_state_record(
        key: &str,
        value: &[u8],
        partition: i32,
    ) -> rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
        use rdkafka::producer::{BaseProducer, BaseRecord};
        let mock = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
        mock.create_topic("imgs.state", 4, 1).expect("state topic");
        mock.create_topic("imgs", 4, 1).expect("event topic");
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", mock.bootstrap_servers())
            .create()
            .expect("producer");
        let record = BaseRecord::to("imgs.state")
            .key(key)
            .payload(value)
            .partition(partition);
        producer.send(record).map_err(|(e, _)| e).expect("produce");
        producer.flush(Duration::from_secs(10)).expect("flush");
        mock
    }

    /// Adding partitions to the state topic (to run more replicas than it has) moves most keys to
    /// another partition: their records stay where they were, and the new owner of each key finds
    /// no state, takes the repository for first-seen and, the watch set being recorded, emits
    /// every tag it has. A record found in a partition its key does not land in is that case; the
    /// replica must refuse to scan rather than emit all of it again.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_state_topic_whose_partition_count_changed_is_refused() {
        let (id, repo) = ("https://r.example", "team/app");
        let key = repo_key(id, repo);
        // Written when the topic had 2 partitions (FNV mod 2), read now that it has 4.
        let then = partition_of(&key, 2);
        let now = partition_of(&key, 4);
        let (key, then) = if then == now {
            // Another repository whose partition did move.
            let moved = (0..100)
                .map(|i| format!("team/app{i}"))
                .find(|r| partition_of(&repo_key(id, r), 2) != partition_of(&repo_key(id, r), 4))
                .expect("some key moves");
            let k = repo_key(id, &moved);
            (k.clone(), partition_of(&k, 2))
        } else {
            (key, then)
        };
        let state = encode_state(&RepoState::Known(Snapshot::default()));
        let mock = mock_with_state_record(&key, &state, then);

        let (store, readiness) = store_on(&mock.bootstrap_servers());
        store.start(readiness.clone(), tokio::runtime::Handle::current());
        let deadline = Instant::now() + Duration::from_secs(30);
        let answer = loop {
            let answer = readiness.check();
            let settled = match &answer {
                Ok(()) => true,
                Err(why) => !why.contains("joining") && !why.contains("restoring"),
            };
            if settled || Instant::now() > deadline {
                break answer;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // Its partitions reach their end again and again meanwhile.
        tokio::time::sleep(Duration::from_secs(3)).await;
        store.stop(Duration::from_secs(10)).await;
        let why = answer.expect_err("a replica that would re-emit must not become ready");
        assert!(why.contains("partition count"), "{why}");
        // Nothing written once refused (a partition restored before the misplaced record was
        // read has its mark): no mark, no commit recording its own partition count again and
        // again.
        let written: usize = (0..4)
            .map(|p| super::producer_state::partition_log(&mock.bootstrap_servers(), p).len())
            .sum();
        assert!(
            written <= 1 + 3,
            "a replica refusing the layout went on writing: {written} records"
        );
    }

    /// Starts a store on `mock` and waits until it owns `registry`/`repository`.
    async fn owning(
        mock: &rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
        registry: &str,
        repository: &str,
    ) -> ClusterStore {
        let (store, readiness) = store_on(&mock.bootstrap_servers());
        store.start(readiness, tokio::runtime::Handle::current());
        let deadline = Instant::now() + Duration::from_secs(30);
        while !store.owns(registry, repository) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        store
    }

    /// Two loops on one registry identity read the same revision: only the first commit may
    /// land; the second is refused (and retried against what is stored), not written over it.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_commit_diffed_against_a_superseded_revision_is_refused() {
        let (id, repo) = ("https://r.example", "team/app");
        let other = watch_key("https://other.example");
        let mock = mock_with_state_record(&other, b"[]", 0);
        let store = owning(&mock, id, repo).await;
        let snapshot = |revision| Snapshot {
            revision,
            ..Snapshot::default()
        };
        let commits = tokio::task::spawn_blocking(move || {
            let first = store.commit_scan(id, repo, None, &snapshot(8), &[]);
            let stale = store.commit_scan(id, repo, None, &snapshot(8), &[]);
            let next = store.commit_scan(id, repo, Some(8), &snapshot(9), &[]);
            let behind = store.commit_scan(id, repo, Some(8), &snapshot(9), &[]);
            let pending = store.record_pending(id, repo, true, 3);
            let held = store.repo_state(id, repo);
            (store, first, stale, next, behind, pending, held)
        });
        let (store, first, stale, next, behind, pending, held) = commits.await.unwrap();
        store.stop(Duration::from_secs(10)).await;
        assert!(first.is_ok(), "{first:?}");
        assert!(
            matches!(stale, Err(StoreError::Conflict { .. })),
            "{stale:?}"
        );
        assert!(next.is_ok(), "{next:?}");
        assert!(
            matches!(behind, Err(StoreError::Conflict { .. })),
            "{behind:?}"
        );
        assert!(pending.is_ok(), "{pending:?}");
        assert!(
            matches!(held, Ok(Some(RepoState::Known(ref s))) if s.revision == 9),
            "a late first-scan decision does not replace a known snapshot: {held:?}"
        );
    }

    /// A repository first seen after the clock was stepped back starts above every revision the
    /// replica restored, so that it cannot reuse one (and an event id) of an earlier life.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_fresh_revision_is_above_every_revision_restored() {
        let (id, repo) = ("https://r.example", "team/app");
        let key = repo_key(id, repo);
        let ahead = crate::store::fresh_revision() + 86_400_000_000;
        let snapshot = Snapshot {
            revision: ahead,
            ..Snapshot::default()
        };
        let state = encode_state(&RepoState::Known(snapshot));
        let mock = mock_with_state_record(&key, &state, partition_of(&key, 4));
        let store = owning(&mock, id, repo).await;
        let fresh = store.fresh_revision();
        store.stop(Duration::from_secs(10)).await;
        assert!(fresh > ahead, "{fresh} is not above {ahead}, restored");
    }

    /// A state record this release cannot read (written by a newer one, say, during a rolling
    /// upgrade) is not "never seen": that would make the repository first-seen and, the watch
    /// set being recorded, emit every tag it has. Nor does it stop the replica: its partition
    /// would move to the next replica, which would stop the same way, one after another. The
    /// repository is set aside (an error the scan retries, logged and counted at restore) while
    /// the others are scanned.
    #[tokio::test(flavor = "multi_thread")]
    async fn an_unreadable_state_record_is_an_error_not_a_first_seen_repository() {
        let (id, repo) = ("https://r.example", "team/app");
        let key = repo_key(id, repo);
        let mock = mock_with_state_record(&key, b"Z-a-future-encoding", partition_of(&key, 4));

        let (store, readiness) = store_on(&mock.bootstrap_servers());
        store.start(readiness.clone(), tokio::runtime::Handle::current());
        let deadline = Instant::now() + Duration::from_secs(30);
        while !store.owns(id, repo) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let answer = store.repo_state(id, repo);
        store.stop(Duration::from_secs(10)).await;
        assert!(
            matches!(&answer, Err(e) if e.is_transient()),
            "{answer:?}: taken for first-seen, or the end of the replica"
        );
    }
}

#[cfg(test)]
mod claims {
    //! A write is checked against what its read came from, across a partition that moved away
    //! and came back.
    use super::review::{review_mock, review_owning};
    use super::*;

    /// A scan read revision 5; meanwhile its partition went to another replica, which committed
    /// revision 6, and came back (restored with revision 6). The scan's commit must be refused:
    /// written over revision 6, the next scan would detect revision 6's change again under a
    /// second id. The revision the scan diffed against is its claim: any commit since, by any
    /// owner, moved it on, so a stale scan is refused whichever way ownership went. (This
    /// passed before the issue asked for an ownership epoch: the revision check already covers
    /// it; kept as the regression test of that window.)
    #[tokio::test(flavor = "multi_thread")]
    async fn a_scan_that_read_before_its_partition_moved_and_came_back_is_refused() {
        let (id, repo) = ("https://r.example", "team/app");
        let key = repo_key(id, repo);
        let at = |revision| {
            encode_state(&RepoState::Known(Snapshot {
                revision,
                ..Snapshot::default()
            }))
        };
        let mock = review_mock(&key, &at(5));
        let store = review_owning(&mock, id, repo).await;
        let read = store.repo_state(id, repo);
        assert!(
            matches!(read, Ok(Some(RepoState::Known(ref s))) if s.revision == 5),
            "{read:?}"
        );
        // Away and back: the other owner's revision 6 is what the restore reads.
        let p = partition_of(&key, 4);
        store.inner.revoked(&[p]);
        store.inner.assigned(&[p]);
        let producer: rdkafka::producer::BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", mock.bootstrap_servers())
            .create()
            .unwrap();
        let six = at(6);
        producer
            .send(
                rdkafka::producer::BaseRecord::to("imgs.state")
                    .key(&key)
                    .payload(&six)
                    .partition(p),
            )
            .map_err(|(e, _)| e)
            .unwrap();
        producer.flush(Duration::from_secs(10)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.inner.staging.lock().unwrap().get(&p).is_none() {
            assert!(Instant::now() < deadline, "revision 6 never read");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        store.inner.restored(&[p]);
        let stale = Snapshot {
            revision: 6,
            ..Snapshot::default()
        };
        let s = Arc::new(store);
        let writer = s.clone();
        let commit =
            tokio::task::spawn_blocking(move || writer.commit_scan(id, repo, Some(5), &stale, &[]))
                .await
                .unwrap();
        let held = s.repo_state(id, repo);
        s.stop(Duration::from_secs(10)).await;
        assert!(
            matches!(commit, Err(StoreError::Conflict { .. })),
            "a stale scan's commit: {commit:?}"
        );
        assert!(
            matches!(held, Ok(Some(RepoState::Known(ref s))) if s.revision == 6),
            "{held:?}"
        );
    }
}

#[cfg(test)]
mod checkpoints {
    //! Restore cost after churn: a partition's history grows with every write, its state does
    //! not, and a restore must read about what is held, not everything ever written.
    use super::review::{review_store_on, wait_restored};
    use super::*;
    use crate::watch::diff::Snapshot;
    use rdkafka::topic_partition_list::TopicPartitionList;

    fn snapshot(repo: usize, revision: u64, moved: usize) -> Snapshot {
        Snapshot {
            revision,
            tags: (0..20)
                .map(|t| {
                    let digest = if t == moved % 20 { revision } else { 0 };
                    (format!("v{t}"), Some(format!("sha256:{repo}-{t}-{digest}")))
                })
                .collect(),
            ..Snapshot::default()
        }
    }

    /// A store on `brokers`, with `exactly_once` transactions if asked.
    fn store_on(brokers: &str, exactly_once: bool) -> (ClusterStore, Arc<Readiness>) {
        let (store, readiness) = review_store_on(brokers);
        if !exactly_once {
            return (store, readiness);
        }
        let mut kafka = store.inner.kafka.clone();
        kafka.properties.push((
            TRANSACTIONAL_ID.into(),
            secrecy::SecretString::from("rw-checkpoints"),
        ));
        let mut cluster = store.inner.cluster.clone();
        cluster.exactly_once = true;
        (
            ClusterStore::new(&kafka, &cluster).expect("store"),
            readiness,
        )
    }

    /// A committed offset past the log's end (the topic recreated under the same name, a broker
    /// that lost its data) makes the consumer read from the log's start: that is where the
    /// restore started, and the checkpoint every later commit records. Trusted instead, the
    /// offset would be committed again and again, and once the new log grew past it, a restore
    /// would skip everything before it.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_committed_offset_out_of_range_is_not_taken_for_the_checkpoint() {
        use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
        let (id, repo) = ("https://r.example", "team/app");
        let key = repo_key(id, repo);
        let p = partition_of(&key, 4);
        let state = encode_state(&RepoState::Known(Snapshot {
            revision: 5,
            ..Snapshot::default()
        }));
        let mock = super::review::review_mock(&key, &state);
        let standalone: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", mock.bootstrap_servers())
            .set("group.id", "g")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("imgs.state", p, Offset::Offset(1_000_000))
            .unwrap();
        standalone.commit(&tpl, CommitMode::Sync).unwrap();
        drop(standalone);
        let store = super::review::review_owning(&mock, id, repo).await;
        let from = store
            .inner
            .claims
            .read()
            .unwrap()
            .get(&p)
            .map(|c| c.from.load(Ordering::SeqCst));
        let held = store.repo_state(id, repo);
        store.stop(Duration::from_secs(10)).await;
        assert!(
            matches!(held, Ok(Some(RepoState::Known(ref s))) if s.revision == 5),
            "{held:?}"
        );
        assert_eq!(from, Some(0), "where the restore started");
    }

    /// A record of a kind this release does not know (a newer release's, during a rolling
    /// upgrade) is left where it is: a checkpoint would put it before the offset the next
    /// restore starts from, and the newer release would never read it again. Its partition is
    /// not checkpointed, however much it churns.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_partition_with_a_record_of_an_unknown_kind_is_not_checkpointed() {
        use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
        let (id, repo) = ("https://r.example", "team/app");
        let p = partition_of(&repo_key(id, repo), 4);
        let mock = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
        mock.create_topic("imgs.state", 4, 1).expect("state topic");
        mock.create_topic("imgs", 4, 1).expect("event topic");
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", mock.bootstrap_servers())
            .create()
            .unwrap();
        let unknown = BaseRecord::to("imgs.state")
            .key(r#"["label","https://r.example","team/app","tier"]"#)
            .payload("gold")
            .partition(p);
        producer.send(unknown).map_err(|(e, _)| e).unwrap();
        producer.flush(Duration::from_secs(10)).unwrap();
        let (store, readiness) = store_on(&mock.bootstrap_servers(), false);
        store.start(readiness.clone(), tokio::runtime::Handle::current());
        wait_restored(&readiness).await;
        let store = Arc::new(store);
        let writer = store.clone();
        tokio::task::spawn_blocking(move || {
            let mut base = None;
            for revision in 1..=300u64 {
                let s = snapshot(0, revision, revision as usize);
                writer.commit_scan(id, repo, base, &s, &[]).expect("push");
                base = Some(revision);
            }
        })
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let from = |s: &ClusterStore| {
            s.inner.claims.read().unwrap().get(&p).map(|c| {
                (
                    c.from.load(Ordering::SeqCst),
                    c.opaque.load(Ordering::SeqCst),
                )
            })
        };
        let churned = from(&store);
        store.stop(Duration::from_secs(10)).await;
        let (fresh, readiness) = store_on(&mock.bootstrap_servers(), false);
        fresh.start(readiness.clone(), tokio::runtime::Handle::current());
        wait_restored(&readiness).await;
        let restored = from(&fresh);
        fresh.stop(Duration::from_secs(10)).await;
        assert_eq!(churned, Some((0, true)), "no checkpoint while it owned it");
        assert_eq!(restored, Some((0, true)), "the next restore still reads it");
    }

    /// A commit of a repository is under way (past the partition's gate, a failed one still
    /// records in memory what its failure left in the topic): its partition is not
    /// checkpointed until it is over, or the checkpoint would install the layout it read
    /// before that failure's, and the next write would skip what it must write again.
    #[tokio::test(flavor = "multi_thread")]
    async fn no_checkpoint_while_a_commit_of_the_partition_is_under_way() {
        let id = "https://r.example";
        let mock = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
        mock.create_topic("imgs.state", 4, 1).expect("state topic");
        mock.create_topic("imgs", 4, 1).expect("event topic");
        let busy = "team/app0";
        let p = partition_of(&repo_key(id, busy), 4);
        let other = (1..)
            .map(|i| format!("team/app{i}"))
            .find(|r| partition_of(&repo_key(id, r), 4) == p)
            .unwrap();
        let (store, readiness) = store_on(&mock.bootstrap_servers(), false);
        store.start(readiness.clone(), tokio::runtime::Handle::current());
        wait_restored(&readiness).await;
        let store = Arc::new(store);
        let from = |s: &ClusterStore| {
            s.inner
                .claims
                .read()
                .unwrap()
                .get(&p)
                .map(|c| c.from.load(Ordering::SeqCst))
        };
        let writing = Writing::begin(&store.inner, id, busy, None).unwrap();
        let writer = store.clone();
        let repo = other.clone();
        tokio::task::spawn_blocking(move || {
            let mut base = None;
            for revision in 1..=300u64 {
                let s = snapshot(1, revision, revision as usize);
                writer.commit_scan(id, &repo, base, &s, &[]).expect("push");
                base = Some(revision);
            }
        })
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let while_busy = from(&store);
        drop(writing);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = from(&store);
        store.stop(Duration::from_secs(10)).await;
        assert_eq!(while_busy, Some(0), "checkpointed under a commit");
        assert!(
            after.is_some_and(|o| o > 0),
            "never checkpointed: {after:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_restore_after_churn_reads_about_what_is_held_not_the_history() {
        restore_after_churn(false).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_exactly_once_restore_after_churn_reads_about_what_is_held() {
        restore_after_churn(true).await;
    }

    /// 40 repositories of 20 tags (840 records written once), then 2,400 single-tag pushes
    /// (4,800 more records): a fresh replica's restore reads at most twice what is held, and
    /// rebuilds every repository at its last revision.
    async fn restore_after_churn(exactly_once: bool) {
        let mock = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
        mock.create_topic("imgs.state", 4, 1).expect("state topic");
        mock.create_topic("imgs", 4, 1).expect("event topic");
        let id = "https://r.example";
        let repos = 40usize;
        let (store, readiness) = store_on(&mock.bootstrap_servers(), exactly_once);
        store.start(readiness.clone(), tokio::runtime::Handle::current());
        wait_restored(&readiness).await;
        let store = Arc::new(store);
        let writer = store.clone();
        let last = tokio::task::spawn_blocking(move || {
            let mut last: Vec<Snapshot> = Vec::new();
            for r in 0..repos {
                let s = snapshot(r, 1, 0);
                writer
                    .commit_scan(id, &format!("team/app{r}"), None, &s, &[])
                    .expect("baseline");
                last.push(s);
            }
            for push in 0..(if exactly_once { 600 } else { 2400 }) {
                let r = push % repos;
                let base = last[r].revision;
                let next = snapshot(r, base + 1, push);
                writer
                    .commit_scan(id, &format!("team/app{r}"), Some(base), &next, &[])
                    .expect("push");
                last[r] = next;
            }
            last
        })
        .await
        .unwrap();
        // Let the last checkpoint (if one is due) finish before leaving.
        tokio::time::sleep(Duration::from_secs(3)).await;
        store.stop(Duration::from_secs(10)).await;

        let (fresh, readiness) = store_on(&mock.bootstrap_servers(), exactly_once);
        fresh.start(readiness.clone(), tokio::runtime::Handle::current());
        wait_restored(&readiness).await;
        let read = fresh.inner.restore_reads.load(Ordering::SeqCst);
        let held = (repos * 21) as u64;
        for (r, s) in last.iter().enumerate() {
            let got = fresh.repo_state(id, &format!("team/app{r}"));
            assert!(
                matches!(&got, Ok(Some(RepoState::Known(k))) if k == s),
                "team/app{r} restored as {got:?}"
            );
        }
        fresh.stop(Duration::from_secs(10)).await;
        eprintln!("the restore read {read} records for {held} held");
        assert!(
            read <= 2 * held,
            "the restore read {read} records for {held} held (history: {} records)",
            held + 2400 * 2
        );
    }
}

#[cfg(test)]
mod producer_state {
    //! The producer that writes events and state (at-least-once) outlives what a broker keeps of
    //! it: a broker can fence it or forget it, and librdkafka then fails every later write (the
    //! cluster soak's case, a paused broker, is `cluster_tansu.rs`).
    use super::review::{commit_latest, review_mock, review_owning};
    use super::*;
    use rdkafka::types::RDKafkaApiKey;

    /// The broker fences the producer's first InitProducerId, which librdkafka takes for fatal:
    /// the first write fails (the mark of a restored partition, or a commit), and the next ones
    /// go through a fresh producer.
    #[tokio::test(flavor = "multi_thread")]
    async fn writes_go_on_after_the_broker_fenced_the_state_producer() {
        let (id, repo) = ("https://r.example", "team/app");
        let mock = review_mock(&watch_key("https://other.example"), b"[]");
        mock.request_errors(
            RDKafkaApiKey::InitProducerId,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_PRODUCER_FENCED],
        );
        let store = Arc::new(review_owning(&mock, id, repo).await);
        let deadline = Instant::now() + Duration::from_secs(20);
        let (mut attempts, mut last) = (0, None);
        while Instant::now() < deadline {
            let writer = store.clone();
            let snapshot = Snapshot {
                revision: 1,
                ..Snapshot::default()
            };
            let result = tokio::task::spawn_blocking(move || {
                writer.commit_scan(id, repo, None, &snapshot, &[])
            })
            .await
            .unwrap();
            attempts += 1;
            let done = result.is_ok();
            last = Some(result);
            if done {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let held = store.repo_state(id, repo);
        let generation = store.inner.plain.generation().1;
        store.stop(Duration::from_secs(10)).await;
        assert!(
            matches!(last, Some(Ok(()))),
            "writes never resumed after {attempts} attempts: {last:?}"
        );
        // Seen by the partition's mark, written once restored, or by the first commit.
        assert!(generation > 0, "the broker's fencing was never seen");
        assert!(
            matches!(held, Ok(Some(RepoState::Known(ref s))) if s.revision == 1),
            "{held:?}"
        );
    }
    /// A producer replaced after the broker fenced it can still have a write held by the broker
    /// (paused with it in flight) that lands after the fresh producer's. It carries this
    /// process's mark, but not the fresh producer's: the owner writes over it as over any late
    /// write, so that the next restore does not read the older revision.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_replaced_producers_late_write_is_written_over() {
        let (id, repo) = ("https://r.example", "team/app");
        let mock = review_mock(&watch_key("https://other.example"), b"[]");
        let store = Arc::new(review_owning(&mock, id, repo).await);
        commit_latest(&store, (id, repo), None, 1, "sha256:one")
            .await
            .unwrap();
        let p = partition_of(&repo_key(id, repo), 4);
        let first = partition_log(&mock.bootstrap_servers(), p);
        assert!(!first.is_empty(), "revision 1 was not written");
        // The write of revision 1 is held by the broker; the old producer is fenced meanwhile.
        let old = store.inner.plain.producer();
        store
            .inner
            .plain
            .renew_if_lost(old, Some(RDKafkaErrorCode::ProducerFenced));
        commit_latest(&store, (id, repo), Some(1), 2, "sha256:two")
            .await
            .unwrap();
        // The held write lands, after the fresh producer's.
        replay(&mock.bootstrap_servers(), p, &first);
        let header = last_order(&mock.bootstrap_servers(), p, &repo_key(id, repo), |o| {
            o.generation >= 1
        })
        .await;
        store.stop(Duration::from_secs(10)).await;
        assert!(
            header.is_some_and(|o| o.generation >= 1),
            "the late header was not written over by the fresh producer: {header:?}"
        );
        let next = review_owning(&mock, id, repo).await;
        let restored = next.repo_state(id, repo);
        next.stop(Duration::from_secs(10)).await;
        assert!(
            matches!(&restored, Ok(Some(RepoState::Known(s)))
                if s.revision == 2 && s.tags["latest"].as_deref() == Some("sha256:two")),
            "the late write of revision 1 was restored: {restored:?}"
        );
    }

    /// A record read back: its key, value and headers.
    pub(super) type Read = (Vec<u8>, Option<Vec<u8>>, OwnedHeaders);

    /// Writes `records` to state partition `p` again, headers and all: a late write.
    pub(super) fn replay(brokers: &str, p: i32, records: &[Read]) {
        use rdkafka::producer::{BaseProducer, BaseRecord};
        let late: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()
            .unwrap();
        for (key, value, headers) in records {
            let mut record = BaseRecord::<[u8], [u8]>::to("imgs.state")
                .key(key.as_slice())
                .partition(p)
                .headers(headers.clone());
            if let Some(v) = value {
                record = record.payload(v.as_slice());
            }
            late.send(record).map_err(|(e, _)| e).unwrap();
        }
        late.flush(Duration::from_secs(10)).unwrap();
    }

    /// The order the records under `key` in `log` carry, in the log's order.
    pub(super) fn orders(log: &[Read], key: &str) -> Vec<Order> {
        log.iter()
            .filter(|(k, _, _)| k.as_slice() == key.as_bytes())
            .map(|(_, _, headers)| {
                let value = headers
                    .iter()
                    .find(|h| h.key == ORDER)
                    .and_then(|h| h.value);
                value
                    .and_then(Order::decode)
                    .expect("every state record carries its order")
            })
            .collect()
    }

    /// The order of the last record under `key` in partition `p`, once it is one `done` takes
    /// (a repair runs on the owner's consumer thread), or as it is after 20 s.
    pub(super) async fn last_order(
        brokers: &str,
        p: i32,
        key: &str,
        done: impl Fn(Order) -> bool,
    ) -> Option<Order> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let last = orders(&partition_log(brokers, p), key).last().copied();
            if last.is_some_and(&done) || Instant::now() > deadline {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Every record of state partition `p`, in order.
    pub(super) fn partition_log(brokers: &str, p: i32) -> Vec<Read> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", "partition-log")
            .set("enable.partition.eof", "true")
            .create()
            .unwrap();
        let mut one = TopicPartitionList::new();
        one.add_partition_offset("imgs.state", p, Offset::Beginning)
            .unwrap();
        consumer.assign(&one).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut out = Vec::new();
        while Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => out.push((
                    m.key().unwrap_or_default().to_vec(),
                    m.payload().map(<[u8]>::to_vec),
                    m.headers().map(|h| h.detach()).unwrap_or_default(),
                )),
                Some(Err(KafkaError::PartitionEOF(_))) => break,
                _ => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod stalls {
    //! A process stopped past its session (SIGSTOP, a long stall) resumes with its scans
    //! mid-cycle: they could commit before librdkafka has revoked the partitions the group gave
    //! away meanwhile, publishing changes their new owner published too, under other ids.
    use super::review::{commit_latest, review_mock, review_owning};
    use super::*;

    /// The consumer thread's last sign of life is rewound, as a stopped process sees it when
    /// it resumes: the next write is refused until the group has confirmed this replica's
    /// partitions, which it then does.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_write_after_the_process_stalled_waits_until_the_group_confirms_it() {
        let (id, repo) = ("https://r.example", "team/app");
        let mock = review_mock(&watch_key("https://other.example"), b"[]");
        let store = Arc::new(review_owning(&mock, id, repo).await);
        let commit = |revision: u64, base: Option<u64>| {
            commit_latest(&store, (id, repo), base, revision, "sha256:1")
        };
        commit(1, None).await.unwrap();
        store.inner.pulse.rewind(Duration::from_secs(20));
        let refused = commit(2, Some(1)).await;
        assert!(
            matches!(&refused, Err(StoreError::Unavailable(why)) if why.contains("stalled")),
            "a write right after a stall went ahead: {refused:?}"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = refused;
        while last.is_err() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            last = commit(2, Some(1)).await;
        }
        store.stop(Duration::from_secs(10)).await;
        assert!(last.is_ok(), "writes never resumed: {last:?}");
    }
    /// A write waiting behind a checkpoint of its partition when the process stops: once
    /// resumed, it must not go ahead on the check it passed before the stall.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_write_held_behind_a_checkpoint_across_a_stall_is_refused() {
        let (id, repo) = ("https://r.example", "team/app");
        let mock = review_mock(&watch_key("https://other.example"), b"[]");
        let store = Arc::new(review_owning(&mock, id, repo).await);
        let p = partition_of(&repo_key(id, repo), 4);
        let result = {
            let claims = store.inner.claims.read().expect("claims lock");
            let checkpoint = claims[&p].gate.write().expect("gate lock");
            let (writer, runtime) = (store.clone(), tokio::runtime::Handle::current());
            let waiting = std::thread::spawn(move || {
                let _runtime = runtime.enter();
                let snapshot = Snapshot {
                    revision: 1,
                    ..Snapshot::default()
                };
                writer.commit_scan(id, repo, None, &snapshot, &[])
            });
            std::thread::sleep(Duration::from_millis(300));
            store.inner.pulse.rewind(Duration::from_secs(20));
            drop(checkpoint);
            drop(claims);
            waiting.join().unwrap()
        };
        store.stop(Duration::from_secs(10)).await;
        assert!(
            matches!(&result, Err(StoreError::Unavailable(why)) if why.contains("stalled")),
            "a write that waited across the stall went ahead: {result:?}"
        );
    }
}

#[cfg(test)]
mod late_writes {
    //! A former owner's write, held up (by a paused broker, or by its own process stopped past
    //! its session), lands after the writes of the owners that followed it.
    use super::producer_state::{last_order, orders, partition_log, replay};
    use super::review::{commit_latest, review_mock, review_owning};
    use super::*;

    /// The late write lands while the partition has no owner, after the next owner's write: the
    /// restore that follows reads the next owner's state, not the late write, and writes over
    /// it. Each owner's records carry an epoch above the one before.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_former_owners_write_landing_before_a_restore_is_not_read_as_the_newest() {
        let (id, repo) = ("https://r.example", "team/app");
        let mock = review_mock(&watch_key("https://other.example"), b"[]");
        let brokers = mock.bootstrap_servers();
        let p = partition_of(&repo_key(id, repo), 4);
        let former = Arc::new(review_owning(&mock, id, repo).await);
        commit_latest(&former, (id, repo), None, 1, "sha256:one")
            .await
            .unwrap();
        let late = partition_log(&brokers, p);
        former.stop(Duration::from_secs(10)).await;
        let next = Arc::new(review_owning(&mock, id, repo).await);
        commit_latest(&next, (id, repo), Some(1), 2, "sha256:two")
            .await
            .unwrap();
        next.stop(Duration::from_secs(10)).await;
        // The repository's records of the write of revision 1 (not the former owner's mark).
        let mut late = late;
        late.retain(|(k, _, _)| String::from_utf8_lossy(k).contains(repo));
        replay(&brokers, p, &late);
        let third = review_owning(&mock, id, repo).await;
        let restored = third.repo_state(id, repo);
        let epoch = third
            .inner
            .claims
            .read()
            .expect("claims lock")
            .get(&p)
            .map(|c| c.epoch.load(Ordering::SeqCst));
        let header = last_order(&brokers, p, &repo_key(id, repo), |o| Some(o.epoch) == epoch).await;
        third.stop(Duration::from_secs(10)).await;
        assert!(
            matches!(&restored, Ok(Some(RepoState::Known(s)))
                if s.revision == 2 && s.tags["latest"].as_deref() == Some("sha256:two")),
            "the late write of revision 1 was restored: {restored:?}"
        );
        let log = partition_log(&brokers, p);
        let owners: Vec<u64> = orders(&log, records::OWNER_KEY)
            .iter()
            .map(|o| o.epoch)
            .collect();
        assert_eq!(owners.len(), 3, "one mark per restore: {owners:?}");
        assert!(
            owners.windows(2).all(|w| w[0] < w[1]),
            "each owner's epoch is above the one before: {owners:?}"
        );
        assert_eq!(
            header.map(|o| o.epoch),
            owners.last().copied(),
            "the late header was not written over: {header:?}"
        );
    }

    /// A former owner's mark, queued before it stalled, lands after this owner's: compaction
    /// would keep it as the partition's last, so the owner marks the partition again.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_former_owners_late_mark_is_marked_over() {
        use rdkafka::producer::{BaseProducer, BaseRecord};
        let (id, repo) = ("https://r.example", "team/app");
        let mock = review_mock(&watch_key("https://other.example"), b"[]");
        let brokers = mock.bootstrap_servers();
        let p = partition_of(&repo_key(id, repo), 4);
        let owner = review_owning(&mock, id, repo).await;
        let epoch = owner.inner.claims.read().expect("claims lock")[&p]
            .epoch
            .load(Ordering::SeqCst);
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .unwrap();
        let (key, value) = records::owner_mark(1);
        let order = Order {
            epoch: 1,
            generation: 0,
        }
        .encode();
        let record = BaseRecord::<str, [u8]>::to("imgs.state")
            .key(key.as_str())
            .payload(value.as_deref().unwrap())
            .partition(p)
            .headers(OwnedHeaders::new().insert(Header {
                key: ORDER,
                value: Some(order.as_bytes()),
            }));
        producer.send(record).map_err(|(e, _)| e).unwrap();
        producer.flush(Duration::from_secs(10)).unwrap();
        let last = last_order(&brokers, p, records::OWNER_KEY, |o| o.epoch == epoch).await;
        owner.stop(Duration::from_secs(10)).await;
        assert_eq!(
            last.map(|o| o.epoch),
            Some(epoch),
            "the late mark stayed the last"
        );
    }
}
