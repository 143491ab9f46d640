//! A dumb Kafka-protocol TCP proxy: it forwards every frame unchanged and records the group
//! generation each JoinGroup response announces and the generation and member id each
//! TxnOffsetCommit request carries, because rdkafka's mock cluster (like Tansu) never checks the
//! latter, so only the wire can tell a stale one.
//!
//! Layouts are those of the Kafka protocol reference (kafka.apache.org/protocol). Every frame is
//! `size INT32` then `size` bytes. Request header v1/v2: `request_api_key INT16
//! request_api_version INT16 correlation_id INT32 client_id NULLABLE_STRING` (v2, for flexible
//! versions, adds `TAG_BUFFER`; client_id stays a non-compact string). Response header v0:
//! `correlation_id INT32` (v1, for flexible versions, adds `TAG_BUFFER`).

use std::collections::{BTreeSet, HashMap};
use std::ffi::CString;
use std::sync::{Arc, Mutex};

use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, DefaultProducerContext, Producer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const JOIN_GROUP: i16 = 11;
const SYNC_GROUP: i16 = 14;
const TXN_OFFSET_COMMIT: i16 = 28;

/// A group frame the proxy decoded, in the order it passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// A successful JoinGroup response: the generation, and the member id it gave the client
    /// (named by the `client_id` of its request).
    Joined {
        client: String,
        generation: i32,
        member: String,
    },
    /// A TxnOffsetCommit request (v3+): its `client_id`, and the generation and member it claims.
    TxnCommit {
        client: String,
        generation: i32,
        member: String,
    },
}

/// The proxy: where it listens, and what it saw.
pub struct Wire {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// JoinGroup responses and TxnOffsetCommit requests, in the order they passed.
    pub seen: Mutex<Vec<Seen>>,
    /// (api key, api version) of every JoinGroup, SyncGroup and TxnOffsetCommit request.
    pub versions: Mutex<BTreeSet<(i16, i16)>>,
}

/// The requests of one connection still awaiting their response: correlation id -> (key,
/// version, client id).
type InFlight = Arc<Mutex<HashMap<i32, (i16, i16, String)>>>;

impl Wire {
    /// Listens on a free loopback port and relays each connection to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> Arc<Wire> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let wire = Arc::new(Wire {
            addr: listener.local_addr().unwrap().to_string(),
            seen: Mutex::default(),
            versions: Mutex::default(),
        });
        let (upstream, w) = (upstream.to_owned(), wire.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(broker) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (client_rx, client_tx) = client.into_split();
                let (broker_rx, broker_tx) = broker.into_split();
                let flight = InFlight::default();
                tokio::spawn(w.clone().relay(client_rx, broker_tx, flight.clone(), true));
                tokio::spawn(w.clone().relay(broker_rx, client_tx, flight, false));
            }
        });
        wire
    }

    /// Copies frames from `from` to `to` until either side closes, decoding requests (client to
    /// broker) or responses.
    async fn relay(
        self: Arc<Self>,
        mut from: impl AsyncReadExt + Unpin,
        mut to: impl AsyncWriteExt + Unpin,
        in_flight: InFlight,
        requests: bool,
    ) {
        loop {
            let mut size = [0u8; 4];
            if from.read_exact(&mut size).await.is_err() {
                return;
            }
            let mut body = vec![0u8; i32::from_be_bytes(size).max(0) as usize];
            if from.read_exact(&mut body).await.is_err() {
                return;
            }
            // Decode before forwarding, so a response is recorded before its receiver acts on it.
            if requests {
                self.request(&body, &in_flight);
            } else {
                self.response(&body, &in_flight);
            }
            if to.write_all(&size).await.is_err() || to.write_all(&body).await.is_err() {
                return;
            }
        }
    }

    fn request(&self, body: &[u8], in_flight: &InFlight) {
        let mut r = Reader(body);
        let (Some(key), Some(version), Some(correlation)) = (r.i16(), r.i16(), r.i32()) else {
            return;
        };
        if ![JOIN_GROUP, SYNC_GROUP, TXN_OFFSET_COMMIT].contains(&key) {
            return;
        }
        let client = r.string(false).flatten().unwrap_or_default();
        self.versions.lock().unwrap().insert((key, version));
        in_flight
            .lock()
            .unwrap()
            .insert(correlation, (key, version, client.clone()));
        // TxnOffsetCommit v3 (flexible; v0-2 carry no generation): `transactional_id
        // COMPACT_STRING group_id COMPACT_STRING producer_id INT64 producer_epoch INT16
        // generation_id INT32 member_id COMPACT_STRING ...`, after the rest of header v2.
        if key == TXN_OFFSET_COMMIT && version >= 3 {
            let commit = (|| {
                r.tags()?;
                r.string(true)?; // transactional_id
                r.string(true)?; // group_id
                r.take(8 + 2)?; // producer_id, producer_epoch
                let generation = r.i32()?;
                let member = r.string(true)??;
                Some(Seen::TxnCommit {
                    client,
                    generation,
                    member,
                })
            })()
            .expect("a TxnOffsetCommit request the proxy cannot decode");
            self.seen.lock().unwrap().push(commit);
        }
    }

    fn response(&self, body: &[u8], in_flight: &InFlight) {
        let mut r = Reader(body);
        let Some(correlation) = r.i32() else { return };
        let Some((key, version, client)) = in_flight.lock().unwrap().remove(&correlation) else {
            return;
        };
        // SyncGroup responses carry no generation (only the assignment): the JoinGroup response
        // of the same round announces it. JoinGroup response, flexible from v6:
        // v0-1: `error_code INT16 generation_id INT32 protocol_name STRING leader STRING
        //        member_id STRING ...`; v2-6 put `throttle_time_ms INT32` first;
        // v7-8 add `protocol_type COMPACT_NULLABLE_STRING` before protocol_name (now nullable);
        // v9 adds `skip_assignment BOOLEAN` after leader.
        if key != JOIN_GROUP {
            return;
        }
        let flexible = version >= 6;
        let joined = (|| {
            if flexible {
                r.tags()?;
            }
            if version >= 2 {
                r.i32()?; // throttle_time_ms
            }
            if r.i16()? != 0 {
                // A failed join announces nothing (and its member id may be null).
                return Some(None);
            }
            let generation = r.i32()?;
            if version >= 7 {
                r.string(flexible)?; // protocol_type
            }
            r.string(flexible)?; // protocol_name
            r.string(flexible)?; // leader
            if version >= 9 {
                r.take(1)?; // skip_assignment
            }
            let member = r.string(flexible)??;
            Some(Some(Seen::Joined {
                client,
                generation,
                member,
            }))
        })()
        .expect("a JoinGroup response the proxy cannot decode");
        self.seen.lock().unwrap().extend(joined);
    }
}

/// A cursor over a frame; `None` when it runs out.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn i16(&mut self) -> Option<i16> {
        Some(i16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }

    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }

    /// UNSIGNED_VARINT: 7 bits a byte, low first, the high bit set on all but the last.
    fn uvarint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.take(1)?[0];
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    /// A (nullable) string: `STRING` has an INT16 length (-1 for null); `COMPACT_STRING` an
    /// UNSIGNED_VARINT length plus one (0 for null).
    fn string(&mut self, compact: bool) -> Option<Option<String>> {
        let len = if compact {
            self.uvarint()?.checked_sub(1)
        } else {
            u64::try_from(self.i16()?).ok()
        };
        let Some(len) = len else { return Some(None) };
        let bytes = self.take(usize::try_from(len).ok()?)?;
        Some(Some(String::from_utf8_lossy(bytes).into_owned()))
    }

    /// TAG_BUFFER: an UNSIGNED_VARINT count, then each `tag UNSIGNED_VARINT size UNSIGNED_VARINT`
    /// and `size` bytes.
    fn tags(&mut self) -> Option<()> {
        for _ in 0..self.uvarint()? {
            self.uvarint()?;
            let size = self.uvarint()?;
            self.take(usize::try_from(size).ok()?)?;
        }
        Some(())
    }
}

/// A one-broker rdkafka mock cluster whose broker advertises a [`Wire`] in front of it, so every
/// client connection, not only the bootstrap one, goes through the proxy.
pub struct ProxiedMock {
    /// The client that owns the mock cluster (it lives as long as this).
    owner: BaseProducer,
    /// The proxy.
    pub wire: Arc<Wire>,
}

impl ProxiedMock {
    /// Starts the cluster and its proxy.
    pub async fn start() -> ProxiedMock {
        // `MockCluster::new` keeps its cluster handle private, so nothing could change its
        // advertised address; a client's own mock cluster (`test.mock.num.brokers`) is reachable
        // through librdkafka's C API. Advertising the proxy beats rewriting Metadata and
        // FindCoordinator responses: the proxy stays byte-transparent. The cluster's bootstrap
        // list keeps its real listener, which the proxy dials.
        let owner: BaseProducer = ClientConfig::new()
            .set("test.mock.num.brokers", "1")
            .create()
            .unwrap();
        let upstream = owner.client().mock_cluster().unwrap().bootstrap_servers();
        let wire = Wire::start(&upstream).await;
        let (host, port) = wire.addr.rsplit_once(':').unwrap();
        let host = CString::new(host).unwrap();
        // SAFETY: the handle belongs to `owner`, alive here; librdkafka copies `host`. The mock's
        // broker ids start at 1.
        unsafe {
            let cluster =
                rdkafka::bindings::rd_kafka_handle_mock_cluster(owner.client().native_ptr());
            assert!(!cluster.is_null(), "no mock cluster");
            rdkafka::bindings::rd_kafka_mock_broker_set_host_port(
                cluster,
                1,
                host.as_ptr(),
                port.parse().unwrap(),
            );
        }
        ProxiedMock { owner, wire }
    }

    /// The mock cluster, to create topics on.
    pub fn cluster(&self) -> MockCluster<'_, DefaultProducerContext> {
        self.owner.client().mock_cluster().unwrap()
    }

    /// The bootstrap servers clients should use: the proxy.
    pub fn bootstrap_servers(&self) -> String {
        self.wire.addr.clone()
    }
}
