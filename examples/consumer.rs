//! A deployer-style consumer of regwatch events: reads the topic, drops redeliveries by event `id`,
//! optionally filters by registry or repository prefix, and prints `deploy <image>`.
//!
//! ```sh
//! cargo run --example consumer -- --brokers 127.0.0.1:9092 --topic regwatch.images \
//!     --group deployer --repository team/
//! ```
//!
//! Gates a deployer may want, each a flag here and each answered by regwatch's events alone:
//! `--signed` deploys an image only once it is signed (`signed: true` on its event, or a later
//! `signature.added`); `--mature` deploys on `tag.matured` instead of on detection; `--latest-only`
//! skips versions that are not the highest in range (`latest: false`).
//!
//! Delivery is at least once: after a regwatch crash, or a consumer rebalance, the same event can
//! arrive twice, always with the same `id`. A real deployer keeps the seen ids in its own store;
//! this one keeps the most recent ones in memory.

use std::collections::{HashSet, VecDeque};

use clap::Parser;
use rdkafka::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use serde_json::Value;

/// Prints `deploy <image>` for each new or moved tag regwatch reports.
#[derive(Parser)]
struct Args {
    /// Kafka bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// The regwatch topic.
    #[arg(long, default_value = "regwatch.images")]
    topic: String,
    /// Consumer group; each deployer has its own.
    #[arg(long, default_value = "regwatch-example-deployer")]
    group: String,
    /// Only events from this registry (its name in the regwatch config).
    #[arg(long)]
    registry: Option<String>,
    /// Only repositories starting with this prefix.
    #[arg(long)]
    repository: Option<String>,
    /// Deploy only signed images: on a tag event with `signed: true`, or on `signature.added`.
    /// (A matured event does not say whether the image is signed: that takes the deployer's own
    /// state, so the two gates do not combine here.)
    #[arg(long, conflicts_with = "mature")]
    signed: bool,
    /// Deploy on `tag.matured` (needs `mature_after` in regwatch's config), not on detection.
    #[arg(long)]
    mature: bool,
    /// Skip versions that are not the highest in range (needs `[registry.versions]`).
    #[arg(long)]
    latest_only: bool,
}

/// Remembers the last `capacity` ids.
struct SeenIds {
    set: HashSet<String>,
    order: VecDeque<String>,
    capacity: usize,
}

impl SeenIds {
    fn first_time(&mut self, id: &str) -> bool {
        if self.set.contains(id) {
            return false;
        }
        if self.order.len() == self.capacity
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        self.set.insert(id.to_owned());
        self.order.push_back(id.to_owned());
        true
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("group.id", &args.group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[&args.topic])?;
    let mut seen = SeenIds {
        set: HashSet::new(),
        order: VecDeque::new(),
        capacity: 100_000,
    };
    loop {
        let message = consumer.recv().await?;
        if let Some(payload) = message.payload() {
            match serde_json::from_slice::<Value>(payload) {
                Ok(event) => handle(&args, &mut seen, &event),
                Err(e) => eprintln!("skipping a record that is not JSON: {e}"),
            }
        }
        // Commit after handling: a crash before this line means a redelivery, never a loss.
        consumer.commit_message(&message, CommitMode::Async)?;
    }
}

fn handle(args: &Args, seen: &mut SeenIds, event: &Value) {
    let data = &event["data"];
    let field = |k: &str| data[k].as_str().unwrap_or_default();
    if args
        .registry
        .as_deref()
        .is_some_and(|r| r != field("registry"))
    {
        return;
    }
    if args
        .repository
        .as_deref()
        .is_some_and(|p| !field("repository").starts_with(p))
    {
        return;
    }
    let Some(id) = event["id"].as_str() else {
        return;
    };
    if !seen.first_time(id) {
        return;
    }
    if args.latest_only && data["latest"] == Value::Bool(false) {
        return;
    }
    let detected = matches!(
        event["type"].as_str(),
        Some("io.regwatch.tag.added" | "io.regwatch.tag.updated")
    );
    let deploy = match event["type"].as_str() {
        Some("io.regwatch.tag.removed") => {
            println!("retire {}", field("image"));
            false
        }
        Some("io.regwatch.tag.matured") => args.mature,
        // The signature of an image reported unsigned: deploy it now, by digest.
        Some("io.regwatch.signature.added") => args.signed,
        _ => detected && !args.mature && (!args.signed || data["signed"] == Value::Bool(true)),
    };
    if deploy {
        println!("deploy {}", field("image"));
    }
}
