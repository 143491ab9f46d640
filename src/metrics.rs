//! Prometheus metrics, every series prefixed `regwatch_`. One process-wide set, because the
//! scrape endpoint reports on the whole process.

use std::sync::LazyLock;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// Every metric regwatch exports.
pub struct Metrics {
    registry: Registry,
    /// Duration of a full scan cycle, per registry.
    pub scan_duration: Family<Labels, Histogram, fn() -> Histogram>,
    /// Scan cycles by registry and result (`ok`, `incomplete`, `failed`).
    pub scans: Family<Labels, Counter>,
    /// Registry HTTP responses by registry and status class (`2xx`… or `error`).
    pub requests: Family<Labels, Counter>,
    /// Seconds spent waiting on a registry's rate limiter.
    pub limiter_wait: Family<Labels, Counter<f64, AtomicU64>>,
    /// Docker Hub's `ratelimit-remaining`, where seen.
    pub ratelimit_remaining: Family<Labels, Gauge>,
    /// Events committed to the outbox, by type.
    pub events_produced: Family<Labels, Counter>,
    /// Events acknowledged by the sink.
    pub events_published: Counter,
    /// Events waiting in the outbox.
    pub outbox_pending: Gauge,
    /// Unix time of the last complete scan, per registry.
    pub last_success: Family<Labels, Gauge<f64, AtomicU64>>,
    /// The configured poll interval, per registry (so that alerts can count in intervals).
    pub scan_interval: Family<Labels, Gauge<f64, AtomicU64>>,
    /// Kafka deliveries that failed (they stay in the outbox and are retried).
    pub kafka_delivery_errors: Counter,
    /// librdkafka's reports of a failed or lost broker connection (logged at DEBUG only).
    pub kafka_connection_errors: Counter,
    /// Webhook hints accepted, per registry.
    pub webhooks: Family<Labels, Counter>,
    /// Repository scans that failed (listing, digest or store error), per registry.
    pub repository_errors: Family<Labels, Counter>,
    /// Digest or platforms lookups confined to one tag that failed (a dangling manifest): the
    /// tag waits, its repository is reported as usual.
    pub tag_lookup_failures: Family<Labels, Counter>,
    /// Scans that panicked, per registry; the loop goes on after a backoff.
    pub scan_panics: Family<Labels, Counter>,
    /// Cluster mode: state partitions assigned to this replica and restored.
    pub cluster_owned_partitions: Gauge,
    /// Cluster mode: repositories whose state this replica holds.
    pub cluster_owned_repositories: Gauge,
    /// Cluster mode: rebalances this replica took part in.
    pub cluster_rebalances: Counter,
    /// Cluster mode: seconds the last restore of assigned partitions took.
    pub cluster_restore_seconds: Gauge<f64, AtomicU64>,
    /// Cluster mode: state records the last restore of assigned partitions read.
    pub cluster_restore_records: Gauge,
    /// Cluster mode: checkpoints written (a partition's state written again, where the next
    /// restore starts).
    pub cluster_checkpoints: Counter,
    /// Cluster mode: state records acknowledged by the broker.
    pub cluster_state_records: Counter,
    /// Cluster mode: bytes (keys and values) of the state records acknowledged by the broker.
    pub cluster_state_bytes: Counter,
    /// Cluster mode: state records of owned partitions written by another replica (a late write
    /// of a former owner), written over.
    pub cluster_foreign_writes: Counter,
    /// Cluster mode: state writes refused for good (a record too large, an authorisation error).
    pub cluster_write_refusals: Counter,
    /// Admin connections closed because the connection cap was reached.
    pub admin_connections_closed: Counter,
    /// Repository state records that could not be decoded (each such repository is re-baselined
    /// on a single node, and left unscanned in cluster mode).
    pub store_records_unreadable: Counter,
}

fn scan_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 16))
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::with_prefix("regwatch");
    let m = Metrics {
        scan_duration: Family::new_with_constructor(scan_histogram as fn() -> Histogram),
        scans: Family::default(),
        requests: Family::default(),
        limiter_wait: Family::default(),
        ratelimit_remaining: Family::default(),
        events_produced: Family::default(),
        events_published: Counter::default(),
        outbox_pending: Gauge::default(),
        last_success: Family::default(),
        scan_interval: Family::default(),
        kafka_delivery_errors: Counter::default(),
        kafka_connection_errors: Counter::default(),
        webhooks: Family::default(),
        repository_errors: Family::default(),
        tag_lookup_failures: Family::default(),
        scan_panics: Family::default(),
        cluster_owned_partitions: Gauge::default(),
        cluster_owned_repositories: Gauge::default(),
        cluster_rebalances: Counter::default(),
        cluster_restore_seconds: Gauge::default(),
        cluster_restore_records: Gauge::default(),
        cluster_checkpoints: Counter::default(),
        cluster_state_records: Counter::default(),
        cluster_state_bytes: Counter::default(),
        cluster_write_refusals: Counter::default(),
        cluster_foreign_writes: Counter::default(),
        admin_connections_closed: Counter::default(),
        store_records_unreadable: Counter::default(),
        registry: Registry::default(),
    };
    registry.register(
        "scan_duration_seconds",
        "Duration of a full scan of a registry",
        m.scan_duration.clone(),
    );
    registry.register(
        "scans",
        "Scan cycles by registry and result",
        m.scans.clone(),
    );
    registry.register(
        "registry_requests",
        "Registry HTTP responses by status class",
        m.requests.clone(),
    );
    registry.register(
        "rate_limiter_wait_seconds",
        "Time spent waiting on the registry rate limiter",
        m.limiter_wait.clone(),
    );
    registry.register(
        "dockerhub_ratelimit_remaining",
        "Docker Hub pull quota left, as last reported",
        m.ratelimit_remaining.clone(),
    );
    registry.register(
        "events_produced",
        "Events committed to the outbox, by type",
        m.events_produced.clone(),
    );
    registry.register(
        "events_published",
        "Events acknowledged by the sink",
        m.events_published.clone(),
    );
    registry.register(
        "outbox_pending",
        "Events waiting in the outbox",
        m.outbox_pending.clone(),
    );
    registry.register(
        "last_successful_scan_timestamp_seconds",
        "Unix time of the last complete scan of a registry",
        m.last_success.clone(),
    );
    registry.register(
        "scan_interval_seconds",
        "The configured poll interval of a registry",
        m.scan_interval.clone(),
    );
    registry.register(
        "kafka_delivery_errors",
        "Kafka deliveries that failed and will be retried",
        m.kafka_delivery_errors.clone(),
    );
    registry.register(
        "kafka_connection_errors",
        "Failed or lost Kafka broker connections, as librdkafka reports them",
        m.kafka_connection_errors.clone(),
    );
    registry.register("webhooks", "Webhook hints accepted", m.webhooks.clone());
    registry.register(
        "repository_scan_errors",
        "Repository scans that failed and left the snapshot unchanged",
        m.repository_errors.clone(),
    );
    registry.register(
        "tag_lookup_failures",
        "Digest or platforms lookups of a single tag that failed; the tag waits, its repository does not",
        m.tag_lookup_failures.clone(),
    );
    registry.register(
        "scan_panics",
        "Scans that panicked; the registry's loop goes on after a backoff",
        m.scan_panics.clone(),
    );
    registry.register(
        "cluster_owned_partitions",
        "State partitions assigned to this replica and restored",
        m.cluster_owned_partitions.clone(),
    );
    registry.register(
        "cluster_owned_repositories",
        "Repositories whose state this replica holds",
        m.cluster_owned_repositories.clone(),
    );
    registry.register(
        "cluster_rebalances",
        "Consumer-group rebalances this replica took part in",
        m.cluster_rebalances.clone(),
    );
    registry.register(
        "cluster_restore_seconds",
        "Seconds the last restore of assigned state partitions took",
        m.cluster_restore_seconds.clone(),
    );
    registry.register(
        "cluster_restore_records",
        "State records the last restore of assigned state partitions read",
        m.cluster_restore_records.clone(),
    );
    registry.register(
        "cluster_checkpoints",
        "State partitions written again whole, where their next restore starts",
        m.cluster_checkpoints.clone(),
    );
    registry.register(
        "cluster_state_records",
        "State records acknowledged by the broker",
        m.cluster_state_records.clone(),
    );
    registry.register(
        "cluster_state_bytes",
        "Bytes of the state records acknowledged by the broker",
        m.cluster_state_bytes.clone(),
    );
    registry.register(
        "cluster_foreign_writes",
        "State records of owned partitions written by another replica, written over",
        m.cluster_foreign_writes.clone(),
    );
    registry.register(
        "cluster_write_refusals",
        "State writes the broker refused for good (record too large, not authorised)",
        m.cluster_write_refusals.clone(),
    );
    registry.register(
        "admin_connections_closed",
        "Admin endpoint connections closed to stay within its connection cap",
        m.admin_connections_closed.clone(),
    );
    registry.register(
        "store_records_unreadable",
        "Repository state records that could not be decoded",
        m.store_records_unreadable.clone(),
    );
    Metrics { registry, ..m }
});

/// The process-wide metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

/// `[("registry", name)]`.
pub fn registry_label(name: &str) -> Labels {
    vec![("registry", name.to_owned())]
}

impl Metrics {
    /// Prometheus text exposition of everything.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// Records a finished cycle.
    pub fn scan_finished(&self, registry: &str, result: &'static str, elapsed: Duration) {
        self.scan_duration
            .get_or_create(&registry_label(registry))
            .observe(elapsed.as_secs_f64());
        self.scans
            .get_or_create(&vec![
                ("registry", registry.to_owned()),
                ("result", result.to_owned()),
            ])
            .inc();
        if result == "ok" {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default();
            self.last_success
                .get_or_create(&registry_label(registry))
                .set(now.as_secs_f64());
        }
    }

    /// Records one registry response (`status` = None for a transport error).
    pub fn request(&self, registry: &str, status: Option<u16>) {
        let class = status.map_or_else(|| "error".to_owned(), |s| format!("{}xx", s / 100));
        self.requests
            .get_or_create(&vec![("registry", registry.to_owned()), ("status", class)])
            .inc();
    }
}
