//! Kafka plumbing shared by `run` and `demo`: client configs (every `[kafka.properties]`
//! entry passed through), the rebalance-aware consumer context, the output encodings,
//! and the startup restore of decision state from the evaluations topic.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};

use rdkafka::message::ToBytes;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

use crate::config::{Delivery, KafkaConfig, OutputFormat, Topics};
use crate::engine::Engine;
use crate::http::StateReset;
use crate::ingest::decode::SchemaRegistry;
use crate::ingest::decode::{
    FLAG_COMMAND_HISTORY, FLAG_COMMAND_SCHEMA, WINDOW_EVALUATION_HISTORY, WINDOW_EVALUATION_SCHEMA,
    describe_fingerprint, legacy_fingerprint,
};
use crate::records::{FlagCommand, InputPosition, WindowEvaluation};
use crate::rules::Restore;
use crate::sim::SimEvent;

#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("kafka: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    #[error("schema: {0}")]
    Schema(String),
    #[error("restoring state: {0}")]
    Restore(String),
}

/// A client config: brokers, then `defaults`, then every `[kafka.properties]` entry
/// (explicit properties win over our defaults).
pub fn client_config(k: &KafkaConfig, defaults: &[(&str, &str)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.brokers);
    for (key, value) in defaults {
        c.set(*key, *value);
    }
    for (key, value) in &k.properties {
        c.set(key, value);
    }
    c
}

/// A reader of a control topic (applied state, policies, audit) that assigns its
/// partitions itself and never commits: from the beginning, read_committed.
pub fn tail_reader_config(k: &KafkaConfig, group: &str) -> ClientConfig {
    client_config(
        k,
        &[
            ("group.id", group),
            ("enable.auto.commit", "false"),
            ("auto.offset.reset", "earliest"),
            ("isolation.level", "read_committed"),
        ],
    )
}

/// The input consumer: manual commits of what closed windows cover.
pub fn consumer_config(k: &KafkaConfig) -> ClientConfig {
    client_config(
        k,
        &[
            ("group.id", &k.group_id),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            ("enable.partition.eof", "false"),
            // librdkafka postpones a partition's next fetch by this much once its local
            // queue is over threshold (default 1 s). The engine drains that queue in
            // well under a second, then sat idle: 10 ms lifted throughput from 135k to
            // over 500k events/s in `benches/kafka_throughput.rs`.
            ("fetch.queue.backoff.ms", "10"),
        ],
    )
}

/// An idempotent producer with acks=all (retries cannot duplicate or reorder).
pub fn producer_config(k: &KafkaConfig) -> ClientConfig {
    client_config(
        k,
        &[
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("linger.ms", "5"),
            ("compression.type", "lz4"),
            // librdkafka's default local queue is 1 GiB, twice the pod's memory limit
            // (deploy/kubernetes): 64 MiB, and sends wait when it is full.
            ("queue.buffering.max.kbytes", "65536"),
        ],
    )
}

/// The producer of window outputs and DLQ records: [`producer_config`], transactional
/// under `delivery = "exactly-once"` (SPEC §6).
pub fn output_producer_config(k: &KafkaConfig) -> ClientConfig {
    let mut c = producer_config(k);
    if k.delivery == Delivery::ExactlyOnce {
        c.set("transactional.id", k.transactional_id());
        if !k.properties.contains_key("transaction.timeout.ms") {
            // An instance that died mid-transaction holds read_committed consumers of
            // the outputs back until this passes (or until it restarts with the same
            // transactional.id, which aborts the transaction at once).
            c.set("transaction.timeout.ms", "60000");
        }
    }
    c
}

/// Refuses settings that break the engine's rebalance handling: under exactly-once
/// a revoke rebuilds state from the committed changelog, which needs every partition
/// to be re-read from its committed offset (the eager protocol does that; the
/// cooperative one keeps partitions and their positions).
pub fn check_assignor(k: &KafkaConfig) -> Result<(), String> {
    let strategy = k
        .properties
        .get("partition.assignment.strategy")
        .map(String::as_str)
        .unwrap_or("range,roundrobin");
    if strategy.contains("cooperative") {
        return Err(format!(
            "kafka.properties.\"partition.assignment.strategy\": {strategy:?} is not supported: \
             guardrail needs an eager assignor (range or roundrobin) so that a rebalance \
             re-reads every partition from its committed offset"
        ));
    }
    Ok(())
}

/// Enqueues a record, waiting while librdkafka's local queue is full (backpressure
/// instead of an error); the returned future resolves when the broker acknowledges.
pub async fn enqueue<K, P>(
    producer: &FutureProducer,
    mut rec: FutureRecord<'_, K, P>,
) -> Result<DeliveryFuture, KafkaError>
where
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    loop {
        match producer.send_result(rec) {
            Ok(delivery) => return Ok(delivery),
            Err((
                rdkafka::error::KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                back,
            )) => {
                rec = back;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((e, _)) => return Err(e.into()),
        }
    }
}

/// Waits for every delivery; the first failure is the error.
pub async fn acknowledged(deliveries: Vec<DeliveryFuture>) -> Result<(), KafkaError> {
    for r in futures::future::join_all(deliveries).await {
        match r {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => return Err(e.into()),
            Err(_) => return Err(rdkafka::error::KafkaError::Canceled.into()),
        }
    }
    Ok(())
}

/// The partition's (low, high) watermarks as librdkafka last saw them in a fetch
/// response: no broker round trip (`fetch_watermarks` asks the broker and waits).
/// `None` before the first fetch of the partition; the low one is −1 when unknown.
pub fn cached_watermarks<C: ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
    partition: i32,
) -> Option<(i64, i64)> {
    let topic = std::ffi::CString::new(topic).ok()?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client handle is alive for the borrow, `topic` is a NUL-terminated
    // string that outlives the call, and librdkafka only writes the two out-parameters
    // (`rd_kafka_get_watermark_offsets` reads its cached per-partition offsets under
    // the partition's lock).
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            client.native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
        .then_some((low.max(-1), high))
}

/// Produces simulated events to their input topics (key = user id), single-object
/// encoded, and waits for the acknowledgements; returns how many were produced.
pub async fn produce_events(
    producer: &FutureProducer,
    topics: &Topics,
    schemas: &SchemaRegistry,
    events: &[SimEvent],
) -> Result<u64, KafkaError> {
    let mut deliveries = Vec::with_capacity(events.len());
    for e in events {
        let payload = e.single_object(schemas.current_fingerprint(e.source));
        let key = e.user_id.as_deref().unwrap_or_default();
        deliveries.push(
            enqueue(
                producer,
                FutureRecord::to(topics.input(e.source))
                    .key(key)
                    .payload(&payload),
            )
            .await?,
        );
    }
    acknowledged(deliveries).await?;
    Ok(events.len() as u64)
}

/// Counts rebalances. The callbacks run inside `poll` on the poller thread, before
/// that poll returns any message of the new assignment.
#[derive(Clone, Default)]
pub struct RebalanceContext {
    pub revocations: Arc<AtomicU64>,
    pub assignments: Arc<AtomicU64>,
    /// Asked, before partitions are revoked, to commit what the engine processed
    /// (under exactly-once: the open transaction with its offsets) while the partitions
    /// are still ours. The rebalance waits for the reply, at most [`REVOKE_COMMIT_WAIT`].
    pub on_revoke: Option<tokio::sync::mpsc::UnboundedSender<std::sync::mpsc::SyncSender<()>>>,
    /// Input messages [`spawn_poller`] took from the consumer so far (counted as each is
    /// polled): with the count a stage processed, it tells whether polled records are
    /// still queued (their partitions' read positions already count them as read).
    pub polled: Arc<AtomicU64>,
}

/// How long a revoke waits for the engine's commit before it goes ahead without it
/// (what was not committed is then re-read by the partition's next owner).
pub const REVOKE_COMMIT_WAIT: Duration = Duration::from_secs(30);

impl RebalanceContext {
    /// (revocations, assignments) so far.
    pub fn epoch(&self) -> (u64, u64) {
        (
            self.revocations.load(Ordering::SeqCst),
            self.assignments.load(Ordering::SeqCst),
        )
    }
}

impl ClientContext for RebalanceContext {}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, _c: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = r {
            if tpl.count() > 0
                && let Some(hook) = &self.on_revoke
            {
                // Runs on the poller thread: every batch it sent is already queued to the
                // engine, which processes them, commits, then replies.
                let (done, wait) = std::sync::mpsc::sync_channel(1);
                if hook.send(done).is_ok() && wait.recv_timeout(REVOKE_COMMIT_WAIT).is_err() {
                    tracing::warn!(
                        "the engine did not commit within {REVOKE_COMMIT_WAIT:?} of a revoke; \
                         the next owner re-reads from the last commit"
                    );
                }
            }
            tracing::info!(partitions = tpl.count(), "partitions revoked");
            self.revocations.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn post_rebalance(&self, _c: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = r {
            tracing::info!(partitions = tpl.count(), "partitions assigned");
            self.assignments.fetch_add(1, Ordering::SeqCst);
        }
    }
}

pub type InputConsumer = BaseConsumer<RebalanceContext>;

/// Messages polled under one rebalance epoch, in consumption order. A batch never
/// spans a rebalance, so the engine applies a revoke exactly between the messages of
/// the old and the new assignment. Payloads and keys are copied back to back into one
/// buffer per batch: one allocation per batch rather than three per message.
pub struct Polled {
    pub epoch: (u64, u64),
    pub bytes: Vec<u8>,
    pub messages: Vec<PolledMessage>,
}

/// One input message of a [`Polled`] batch; its key and payload are ranges of `bytes`.
#[derive(Debug, Clone)]
pub struct PolledMessage {
    /// The input, by position in [`crate::config::Config::input_topics`].
    pub input: u16,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Range<usize>>,
    pub payload: Range<usize>,
}

impl Polled {
    pub fn payload(&self, m: &PolledMessage) -> &[u8] {
        &self.bytes[m.payload.clone()]
    }

    pub fn key(&self, m: &PolledMessage) -> Option<&[u8]> {
        m.key.clone().map(|k| &self.bytes[k])
    }
}

/// Polls the consumer on a dedicated thread (librdkafka's fetch parsing and the copy out
/// of its buffers run beside the engine, not on its thread) and sends batches of up to
/// `batch` messages; an epoch change is sent even without messages. A message of a
/// topic that is not one of `topics`' inputs is skipped. Stops when `stop` is set or
/// the receiver is gone.
pub fn spawn_poller(
    consumer: Arc<InputConsumer>,
    ctx: RebalanceContext,
    topics: Vec<String>,
    tx: tokio::sync::mpsc::Sender<Polled>,
    stop: Arc<AtomicBool>,
    batch: usize,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("guardrail-poll".into())
        .spawn(move || {
            let empty = || Polled {
                epoch: (0, 0),
                bytes: Vec::with_capacity(batch * 128),
                messages: Vec::with_capacity(batch),
            };
            let send = |epoch, mut polled: Polled| {
                polled.epoch = epoch;
                tx.blocking_send(polled).is_ok()
            };
            let mut epoch = ctx.epoch();
            let mut polled = empty();
            while !stop.load(Ordering::Relaxed) {
                let wait = if polled.messages.is_empty() {
                    Duration::from_millis(100)
                } else {
                    Duration::ZERO
                };
                let message = consumer.poll(wait);
                let now = ctx.epoch();
                if now != epoch {
                    if !send(epoch, std::mem::replace(&mut polled, empty())) {
                        return;
                    }
                    epoch = now;
                    if message.is_none() && !send(epoch, empty()) {
                        return;
                    }
                }
                let full = match message {
                    Some(Ok(m)) => {
                        if let Some(input) = topics.iter().position(|t| t == m.topic()) {
                            let mut copy = |b: &[u8]| {
                                let start = polled.bytes.len();
                                polled.bytes.extend_from_slice(b);
                                start..polled.bytes.len()
                            };
                            let key = m.key().map(&mut copy);
                            let payload = copy(m.payload().unwrap_or_default());
                            ctx.polled.fetch_add(1, Ordering::Relaxed);
                            polled.messages.push(PolledMessage {
                                input: input as u16,
                                partition: m.partition(),
                                offset: m.offset(),
                                key,
                                payload,
                            });
                        }
                        polled.messages.len() >= batch
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "consumer error");
                        false
                    }
                    // Nothing more right now: hand over what we have.
                    None => !polled.messages.is_empty(),
                };
                if full && !send(epoch, std::mem::replace(&mut polled, empty())) {
                    return;
                }
            }
        })
}

/// Encodes output records in the configured format.
pub struct Encoder {
    format: OutputFormat,
    command_fp: u64,
    evaluation_fp: u64,
}

impl Encoder {
    /// The fingerprints come from the schema texts, as the registry's and the output
    /// reader's do (apache-avro's re-serialised `Schema` can lose a null namespace).
    pub fn new(format: OutputFormat) -> Result<Encoder, KafkaError> {
        let fp = |text| crate::avro::canonical::fingerprint_str(text).map_err(KafkaError::Schema);
        Ok(Encoder {
            format,
            command_fp: fp(FLAG_COMMAND_SCHEMA)?,
            evaluation_fp: fp(WINDOW_EVALUATION_SCHEMA)?,
        })
    }

    pub fn command(&self, c: &FlagCommand) -> Vec<u8> {
        match self.format {
            OutputFormat::Avro => c.to_avro(self.command_fp),
            OutputFormat::Json => serde_json::to_vec(c).unwrap_or_default(),
        }
    }

    pub fn evaluation(&self, e: &WindowEvaluation) -> Vec<u8> {
        match self.format {
            OutputFormat::Avro => e.to_avro(self.evaluation_fp),
            OutputFormat::Json => serde_json::to_vec(e).unwrap_or_default(),
        }
    }
}

/// Why a published record could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum OutputDecodeError {
    #[error("unknown writer schema fingerprint {}", describe_fingerprint(*.0))]
    UnknownFingerprint(u64),
    #[error("malformed record: {0}")]
    Malformed(String),
}

/// Reads published records of one output schema: Avro single-object written with the
/// current version or an older one shipped in `schemas/history` (each under its
/// standard and its pre-0.2 fingerprint), resolved to the current version; or JSON.
pub struct OutputReader {
    readers: HashMap<u64, GenericDatumReader<'static>>,
}

impl OutputReader {
    /// `current` and `older` are schema texts. The schemas are leaked once per reader
    /// (a handful per process): the prepared readers borrow them.
    pub fn new(current: &str, older: &[&str]) -> Result<OutputReader, KafkaError> {
        let parse = |text: &str| -> Result<&'static Schema, KafkaError> {
            let schema = Schema::parse_str(text).map_err(|e| KafkaError::Schema(e.to_string()))?;
            Ok(Box::leak(Box::new(schema)))
        };
        let reader_schema = parse(current)?;
        let mut readers = HashMap::new();
        for text in std::iter::once(current).chain(older.iter().copied()) {
            let writer = parse(text)?;
            let standard =
                crate::avro::canonical::fingerprint_str(text).map_err(KafkaError::Schema)?;
            for fp in [standard, legacy_fingerprint(writer)] {
                let reader = GenericDatumReader::builder(writer)
                    .reader_schema(reader_schema)
                    .build()
                    .map_err(|e| KafkaError::Schema(e.to_string()))?;
                readers.insert(fp, reader);
            }
        }
        Ok(OutputReader { readers })
    }

    /// `WindowEvaluation`, every version this build shipped.
    pub fn evaluations() -> Result<OutputReader, KafkaError> {
        OutputReader::new(WINDOW_EVALUATION_SCHEMA, &WINDOW_EVALUATION_HISTORY)
    }

    /// `FlagCommand`, every version this build shipped.
    pub fn commands() -> Result<OutputReader, KafkaError> {
        OutputReader::new(FLAG_COMMAND_SCHEMA, &FLAG_COMMAND_HISTORY)
    }

    pub fn decode<T: serde::de::DeserializeOwned>(
        &self,
        bytes: &[u8],
    ) -> Result<T, OutputDecodeError> {
        let malformed = |e: &dyn std::fmt::Display| OutputDecodeError::Malformed(e.to_string());
        if bytes.len() > 10 && bytes[..2] == [0xC3, 0x01] {
            let mut fp = [0u8; 8];
            fp.copy_from_slice(&bytes[2..10]);
            let fp = u64::from_le_bytes(fp);
            let reader = self
                .readers
                .get(&fp)
                .ok_or(OutputDecodeError::UnknownFingerprint(fp))?;
            let value = reader
                .read_value(&mut &bytes[10..])
                .map_err(|e| malformed(&e))?;
            apache_avro::from_value(&value).map_err(|e| malformed(&e))
        } else {
            serde_json::from_slice(bytes).map_err(|e| malformed(&e))
        }
    }
}

/// What restore found: the newest evaluation per flag and cohort, and the input read
/// positions of the newest window close that recorded them.
#[derive(Debug, Default)]
pub struct Restored {
    /// Restored into the engine (the newest per flag and cohort).
    pub evaluations: Vec<WindowEvaluation>,
    pub positions: Vec<InputPosition>,
    /// Cohorts whose state was not restored because their flag's policy changed.
    pub resets: Vec<StateReset>,
    /// (flag, cohort, window start) of evaluations on the evaluations topic whose
    /// state records are not on the changelog (the process died between the two):
    /// re-judged, they go to the changelog only (see [`crate::publisher::Publisher`]).
    pub published: HashSet<(String, String, i64)>,
}

/// How long restore may take to read the evaluations topic to its end.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(60);

/// What one state-bearing topic holds: the newest evaluation per (flag, cohort), the
/// positions of the newest close that recorded them, and how many records were read.
struct TopicState {
    newest: HashMap<(String, String), WindowEvaluation>,
    positions: (i64, Vec<InputPosition>),
    records: u64,
}

/// Reads `topic` to its end (every partition, read_committed, to partition EOF).
/// `strict`: an unreadable record is an error (the state changelog) rather than
/// skipped with a warning (the evaluations topic, read only on the first start after
/// an upgrade).
fn read_state(
    k: &KafkaConfig,
    topic: &str,
    reader: &OutputReader,
    strict: bool,
) -> Result<TopicState, KafkaError> {
    let group = format!("{}-restore", k.group_id);
    let read = read_to_end(k, topic, &group, RESTORE_TIMEOUT).map_err(|e| {
        // Judging on part of the state could ADVANCE a paused cohort: refuse.
        KafkaError::Restore(format!("{e}; not starting on partial state"))
    })?;
    let Some(TopicRecords { records: all, .. }) = read else {
        return Err(KafkaError::Restore(format!(
            "topic {topic} does not exist or has no partitions (create it before starting, \
             docs/SPEC.md §1)"
        )));
    };
    let mut unreadable = 0u64;
    let records = all.len() as u64;
    let mut newest: HashMap<(String, String), WindowEvaluation> = HashMap::new();
    // (window_end, positions) of the newest close that recorded positions.
    let mut positions: (i64, Vec<InputPosition>) = (i64::MIN, Vec::new());
    for (partition, offset, payload) in all {
        let e = match reader.decode::<WindowEvaluation>(&payload) {
            Ok(e) => e,
            Err(err) if strict => {
                return Err(KafkaError::Restore(format!(
                    "{topic} partition {partition} offset {offset}: {err}; not starting on partial state"
                )));
            }
            Err(err) => {
                if unreadable == 0 {
                    tracing::warn!(
                        partition,
                        offset,
                        "skipping an unreadable record in {topic}: {err}"
                    );
                }
                unreadable += 1;
                continue;
            }
        };
        if !e.input_positions.is_empty() && e.window_end >= positions.0 {
            positions = (e.window_end, e.input_positions.clone());
        }
        let key = (e.flag_key.clone(), e.cohort.clone());
        if newest
            .get(&key)
            .is_none_or(|old| old.window_end <= e.window_end)
        {
            newest.insert(key, e);
        }
    }
    if unreadable > 0 {
        tracing::warn!("{unreadable} record(s) of {topic} could not be read and were skipped");
    }
    Ok(TopicState {
        newest,
        positions,
        records,
    })
}

/// A topic read to its end: every record as (partition, offset, payload), tombstones
/// left out, and each partition's end offset.
pub struct TopicRecords {
    pub records: Vec<(i32, i64, Vec<u8>)>,
    pub ends: Vec<(i32, i64)>,
}

/// Reads every partition of `topic` from its beginning to its end (read_committed, to
/// partition EOF: under exactly-once the last offsets hold transaction markers, which
/// are never delivered), assigning the partitions itself as `group` (which never joins
/// nor commits). `None` when the topic does not exist or has no partitions; an error
/// when it is not read to its end within `timeout`.
pub fn read_to_end(
    k: &KafkaConfig,
    topic: &str,
    group: &str,
    timeout: Duration,
) -> Result<Option<TopicRecords>, String> {
    read_tails(k, topic, group, timeout, |_, _, _| None)
}

/// [`read_to_end`] from a chosen offset per partition: `from(partition, low, high)`
/// of each partition's watermarks, `None` for its beginning. Records before it are not read.
fn read_tails(
    k: &KafkaConfig,
    topic: &str,
    group: &str,
    timeout: Duration,
    mut from: impl FnMut(i32, i64, i64) -> Option<i64>,
) -> Result<Option<TopicRecords>, String> {
    let mut cfg = client_config(
        k,
        &[
            ("enable.partition.eof", "true"),
            ("isolation.level", "read_committed"),
        ],
    );
    cfg.set("group.id", group)
        .set("enable.auto.commit", "false");
    let consumer: BaseConsumer = cfg.create().map_err(|e| e.to_string())?;
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| format!("metadata of {topic}: {e}"))?;
    let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
        return Ok(None);
    };
    if t.error().is_some() || t.partitions().is_empty() {
        return Ok(None);
    }
    let mut tpl = TopicPartitionList::new();
    let mut unread = std::collections::BTreeSet::new();
    let mut ends = Vec::new();
    for p in t.partitions() {
        let (low, high) = consumer
            .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
            .map_err(|e| format!("offsets of {topic}: {e}"))?;
        ends.push((p.id(), high));
        let start = from(p.id(), low, high).map_or(low, |o| o.clamp(low, high));
        if high > start {
            let offset = if start > low {
                Offset::Offset(start)
            } else {
                Offset::Beginning
            };
            tpl.add_partition_offset(topic, p.id(), offset)
                .map_err(|e| e.to_string())?;
            unread.insert(p.id());
        }
    }
    let mut out = Vec::new();
    if unread.is_empty() {
        return Ok(Some(TopicRecords { records: out, ends }));
    }
    consumer.assign(&tpl).map_err(|e| e.to_string())?;
    let deadline = std::time::Instant::now() + timeout;
    while !unread.is_empty() {
        if std::time::Instant::now() >= deadline {
            return Err(format!(
                "{topic} was not read to its end within {timeout:?} (partitions {unread:?} unread)"
            ));
        }
        match consumer.poll(Duration::from_millis(500)) {
            None => {}
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                unread.remove(&p);
            }
            Some(Err(e)) => return Err(format!("reading {topic}: {e}")),
            Some(Ok(m)) => {
                if let Some(payload) = m.payload() {
                    out.push((m.partition(), m.offset(), payload.to_vec()));
                }
            }
        }
    }
    Ok(Some(TopicRecords { records: out, ends }))
}

/// The evaluations published without their state records: a process killed between
/// a close's evaluations and its state records (at-least-once: two topics, no
/// transaction) leaves them at the end of the evaluations topic. An evaluation is
/// covered when its cohort's restored state, or its flag's newest restored close, is at
/// least as new. One writer publishes closes in order and waits for each close's state
/// before the next, so only the newest close can be uncovered: each partition is read
/// from its end backwards (64 records, then 8 times more) until its first record read
/// is covered. Keys are (flag, cohort, window start).
fn published_without_state(
    k: &KafkaConfig,
    topic: &str,
    reader: &OutputReader,
    newest: &HashMap<(String, String), WindowEvaluation>,
) -> Result<HashSet<(String, String, i64)>, String> {
    let mut flag_frontier: HashMap<&str, i64> = HashMap::new();
    for e in newest.values() {
        let f = flag_frontier.entry(e.flag_key.as_str()).or_insert(i64::MIN);
        *f = (*f).max(e.window_end);
    }
    let covered = |e: &WindowEvaluation| {
        let cohort = newest.get(&(e.flag_key.clone(), e.cohort.clone()));
        cohort.is_some_and(|s| s.window_end >= e.window_end)
            || flag_frontier
                .get(e.flag_key.as_str())
                .is_some_and(|f| *f >= e.window_end)
    };
    let group = format!("{}-restore", k.group_id);
    let mut back = 64i64;
    loop {
        let mut starts = Vec::new();
        let read = read_tails(k, topic, &group, RESTORE_TIMEOUT, |p, low, high| {
            let start = (high - back).max(low);
            starts.push((p, start, low));
            Some(start)
        })?;
        let Some(TopicRecords { records, .. }) = read else {
            return Ok(HashSet::new());
        };
        let mut first_covered: HashMap<i32, bool> = HashMap::new();
        let mut out = HashSet::new();
        for (partition, _, payload) in records {
            // Unreadable records are not this build's evaluations: skipped.
            let Ok(e) = reader.decode::<WindowEvaluation>(&payload) else {
                continue;
            };
            let covered = covered(&e);
            first_covered.entry(partition).or_insert(covered);
            if !covered {
                out.insert((e.flag_key, e.cohort, e.window_start));
            }
        }
        // Far enough back once every partition was read from its beginning or from a
        // covered record.
        let deep_enough = starts.iter().all(|(p, start, low)| {
            start <= low || first_covered.get(p).is_none_or(|covered| *covered)
        });
        if deep_enough {
            return Ok(out);
        }
        back = back.saturating_mul(8);
    }
}

/// Restores decision state at start: the state changelog (`topics.state`) read to its
/// end, or — when it is still empty, on the first start after an upgrade — the
/// evaluations topic. Per flag and cohort the newest evaluation's streaks, percent and
/// state come back, and the closed-window frontier.
pub fn restore(
    k: &KafkaConfig,
    topics: &Topics,
    engine: &mut Engine,
) -> Result<Restored, KafkaError> {
    let reader = OutputReader::evaluations()?;
    let mut state = read_state(k, &topics.state, &reader, true)?;
    let mut published = HashSet::new();
    if state.records > 0 {
        match published_without_state(k, &topics.evaluations, &reader, &state.newest) {
            Ok(p) => published = p,
            // Then a close cut short by a crash may publish its evaluations twice
            // (at-least-once); judging is unaffected.
            Err(e) => tracing::warn!(
                "reading the newest evaluations of {}: {e}",
                topics.evaluations
            ),
        }
        if !published.is_empty() {
            tracing::info!(
                evaluations = published.len(),
                "evaluations published without their state records: re-judged, they go to {} only",
                topics.state
            );
        }
    }
    if state.records == 0 {
        let evaluations = read_state(k, &topics.evaluations, &reader, false)?;
        if evaluations.records > 0 {
            tracing::info!(
                "{} is empty: restoring from {} (first start with the state changelog)",
                topics.state,
                topics.evaluations
            );
        }
        state = evaluations;
    }
    let TopicState {
        newest, positions, ..
    } = state;
    let mut frontier = i64::MIN;
    let mut resets = Vec::new();
    let mut restored = Vec::new();
    for e in newest.into_values() {
        match engine.rules_mut().restore(&e) {
            Restore::PolicyChanged { from, to } => {
                tracing::warn!(
                    flag = %e.flag_key, cohort = %e.cohort,
                    "policy changed ({from} -> {to}): the cohort's state ({} at {}%) starts afresh",
                    e.state.as_deref().unwrap_or("-"),
                    e.rollout_percent.unwrap_or(f64::NAN)
                );
                resets.push(StateReset {
                    flag_key: e.flag_key.clone(),
                    cohort: e.cohort.clone(),
                    from_version: from,
                    to_version: to,
                    previous_state: e.state.clone(),
                    previous_percent: e.rollout_percent,
                    window_end: e.window_end,
                    reason: "the flag's decisive policy (variants, cohorts, ramp, guardrails, \
                             success metrics or their metric definitions, window size) changed"
                        .into(),
                });
            }
            Restore::Restored => restored.push(e.clone()),
            Restore::UnknownFlag => {}
        }
        frontier = frontier.max(e.window_end);
        if let Some(fi) = engine
            .policy()
            .flags
            .iter()
            .position(|f| f.key == e.flag_key)
            && e.cohort != "*"
            && let Some(t) = engine.windows_mut().cohort_table_mut(fi)
        {
            t.intern(e.cohort.clone());
        }
    }
    if frontier > i64::MIN {
        engine.windows_mut().set_closed_before(frontier);
        tracing::info!(
            cohorts = restored.len(),
            reset = resets.len(),
            closed_before = frontier,
            "restored decision state"
        );
    }
    Ok(Restored {
        evaluations: restored,
        positions: positions.1,
        resets,
        published,
    })
}

#[cfg(test)]
mod tests {
    use apache_avro::types::Value;

    use super::*;

    /// Evaluations written by earlier builds (the v1 schema, without `input_positions`;
    /// apache-avro's own writer, with the pre-0.2 fingerprint) are read at restore.
    #[test]
    fn evaluations_of_the_previous_schema_version_are_read() {
        let v1 = Schema::parse_str(WINDOW_EVALUATION_HISTORY[0]).unwrap();
        let eval = WindowEvaluation {
            flag_key: "f".into(),
            cohort: "platform=ios".into(),
            window_start: 0,
            window_end: 900_000,
            decision: None,
            evidence: vec![],
            late_events: 2,
            evaluated_at: 1_000_000,
            rollout_percent: Some(20.0),
            state: Some("paused".into()),
            healthy_windows: 0,
            policy_version: Some("abc".into()),
            command_id: None,
            band: vec![],
            input_positions: vec![],
            watermark_lag_ms: None,
        };
        // The v1 record: every field of the current one but the last two.
        let mut value = apache_avro::to_value(&eval).unwrap();
        if let Value::Record(fields) = &mut value {
            fields.retain(|(name, _)| name != "input_positions" && name != "watermark_lag_ms");
        }
        let value = value.resolve(&v1).unwrap();
        let mut w = apache_avro::GenericSingleObjectWriter::new_with_capacity(&v1, 1024).unwrap();
        let mut legacy_framed = Vec::new();
        w.write_value_ref(&value, &mut legacy_framed).unwrap();
        let datum = legacy_framed[10..].to_vec();
        let standard =
            crate::avro::canonical::fingerprint_str(WINDOW_EVALUATION_HISTORY[0]).unwrap();
        let mut standard_framed = vec![0xC3, 0x01];
        standard_framed.extend_from_slice(&standard.to_le_bytes());
        standard_framed.extend_from_slice(&datum);

        let reader = OutputReader::evaluations().unwrap();
        for bytes in [&legacy_framed, &standard_framed] {
            let back: WindowEvaluation = reader.decode(bytes).unwrap();
            assert_eq!(back, eval);
        }
        // The current version round-trips with its positions.
        let mut now = eval.clone();
        now.input_positions = vec![InputPosition {
            topic: "product-events".into(),
            partition: 3,
            read_until: 12_345,
        }];
        let current = crate::ingest::decode::fingerprint(
            &Schema::parse_str(WINDOW_EVALUATION_SCHEMA).unwrap(),
        )
        .unwrap();
        let back: WindowEvaluation = reader.decode(&now.to_avro(current)).unwrap();
        assert_eq!(back, now);
        let mut unknown = now.to_avro(current);
        unknown[2] ^= 0xff;
        assert!(matches!(
            reader.decode::<WindowEvaluation>(&unknown),
            Err(OutputDecodeError::UnknownFingerprint(_))
        ));
    }
}
