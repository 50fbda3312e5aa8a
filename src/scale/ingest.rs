//! Stage 1, `guardrail run --stage ingest` (SPEC §11): any number of instances in the
//! consumer group `<group_id>-ingest` over the input topics. Each owned input
//! partition has an engine of its own: its own watermark (the partition's event time),
//! its own windows. When a partition's watermark passes a window's end, the window's
//! aggregates are published per flag as a [`Partial`] to the partials topic, keyed by
//! flag, and its offsets are committed once they are acknowledged (under exactly-once,
//! in the same transaction).
//!
//! Because a partition's windows depend on that partition's records alone, a partial is
//! the same whoever computes it: an instance that takes a partition over after a
//! rebalance or a kill re-reads it from the committed offset and re-emits exactly the
//! partials that were not committed, which the judge recognises as duplicates. The
//! commit metadata, `"<read_until> <closed_before>"`, tells the next owner how far the
//! partition was read and which windows were already published, so re-read records of
//! those are neither counted again nor called late.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use prometheus::Registry;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use rustc_hash::FxHashMap as HashMap;
use tokio::sync::watch;

use crate::clock::wall_ms;
use crate::config::{Config, Delivery, KafkaConfig};
use crate::consume::{self, COMMIT_INTERVAL, Consuming as _, TICK_INTERVAL};
use crate::engine::{Counters, Engine, Ingested};
use crate::http::Shared;
use crate::ingest::input::InputSpec;
use crate::kafka::{self, Polled, RebalanceContext};
use crate::policy::Policy;
use crate::scale::metrics::ScaleMetrics;
use crate::scale::partial::{self, Partial};
use crate::telemetry::Metrics;
use crate::window::watermark::PartitionKey;

const BATCH: usize = 256;
const POLL_QUEUE_BATCHES: usize = 16;
/// Deliveries (partials, DLQ records) awaited at the latest when this many are in flight.
const MAX_PENDING: usize = 10_000;
const SCHEMA_RETRY_AFTER: Duration = Duration::from_secs(30);

/// The stage's Kafka settings: its own consumer group and transactional id.
pub fn stage_kafka(k: &KafkaConfig, stage: &str) -> KafkaConfig {
    KafkaConfig {
        group_id: format!("{}-{stage}", k.group_id),
        transactional_id: k.transactional_id.as_ref().map(|t| format!("{t}-{stage}")),
        ..k.clone()
    }
}

/// One owned input partition.
struct Part {
    engine: Engine,
    /// Next offset to read (-1 until a record was read since the assignment).
    next: i64,
    /// Highest offset ever read + 1 (seeded from the commit metadata).
    seen_until: i64,
    /// Wall time (ms) of the last record read, or of the assignment.
    last_record: i64,
    /// Wall time (ms) the idle rule last asked whether the partition is read to its end.
    idle_checked: i64,
}

struct Ingest {
    config: Config,
    policy: Arc<Policy>,
    inputs: Vec<InputSpec>,
    parts: BTreeMap<PartitionKey, Part>,
    /// Counts of engines dropped at a revoke (the metrics are totals).
    retired: Counters,
    consumer: Arc<kafka::InputConsumer>,
    producer: FutureProducer,
    eos: bool,
    epoch: (u64, u64),
    /// Partials and DLQ records not yet acknowledged.
    deliveries: Vec<DeliveryFuture>,
    registries: Vec<Option<crate::ingest::confluent::RegistryClient>>,
    /// Writer schemas fetched so far, given to every engine of their input.
    schemas: HashMap<(u16, u32), String>,
    schema_failures: HashMap<(u16, u32), (Instant, String)>,
    metrics: Metrics,
    scale: ScaleMetrics,
    shared: Arc<Shared>,
    instance: String,
    /// The first window this instance published since its latest assignment: an idle
    /// partition reports (empty) every window from here on that the others closed.
    first_window: Option<i64>,
    /// Input messages processed so far (against the poller's count of those polled).
    processed: u64,
}

/// The ingest stage on Kafka, until `stop` turns true; then drains within `grace`.
pub async fn run_ingest(
    config: Config,
    policy: Arc<Policy>,
    shared: Arc<Shared>,
    registry: &Registry,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) -> anyhow::Result<()> {
    let base = config.kafka.clone().context("[kafka] is required by run")?;
    kafka::check_assignor(&base).map_err(anyhow::Error::msg)?;
    let k = stage_kafka(&base, "ingest");
    let eos = k.delivery == Delivery::ExactlyOnce;
    let metrics = Metrics::register(registry).map_err(anyhow::Error::msg)?;
    let scale = ScaleMetrics::register(registry, "ingest").map_err(anyhow::Error::msg)?;
    shared.update_policy(&policy);
    let inputs = crate::ingest::input::compile(&config)
        .map_err(|e| anyhow::Error::new(crate::config::ConfigErrors(e)))?;
    let producer: FutureProducer = kafka::output_producer_config(&k)
        .create()
        .context("creating the producer")?;
    if eos {
        let p = producer.clone();
        tokio::task::block_in_place(|| p.init_transactions(Duration::from_secs(30))).context(
            "initialising Kafka transactions (for a broker without them set \
             [kafka] delivery = \"at-least-once\")",
        )?;
        producer
            .begin_transaction()
            .context("beginning a transaction")?;
    }
    let mut registries = Vec::new();
    for i in &inputs {
        registries.push(match &i.registry {
            None => None,
            Some(r) => {
                let opts = crate::ingest::input::registry_options(r)
                    .map_err(|e| anyhow::anyhow!("input {}: registry: {e}", i.topic))?;
                Some(
                    crate::ingest::confluent::RegistryClient::new(opts)
                        .map_err(|e| anyhow::anyhow!("input {}: {e}", i.topic))?,
                )
            }
        });
    }
    let (revoke_tx, mut revoke_rx) = tokio::sync::mpsc::unbounded_channel();
    let ctx = RebalanceContext {
        on_revoke: Some(revoke_tx),
        ..RebalanceContext::default()
    };
    let consumer: Arc<kafka::InputConsumer> = Arc::new(
        kafka::consumer_config(&k)
            .create_with_context(ctx.clone())
            .context("creating the consumer")?,
    );
    let topics = config.input_topics();
    consumer
        .subscribe(&topics.iter().map(String::as_str).collect::<Vec<_>>())
        .context("subscribing")?;
    let mut st = Ingest {
        instance: k.transactional_id(),
        config,
        policy,
        inputs,
        parts: BTreeMap::new(),
        retired: Counters::default(),
        consumer: consumer.clone(),
        producer,
        eos,
        epoch: (0, 0),
        deliveries: Vec::new(),
        registries,
        schemas: HashMap::default(),
        schema_failures: HashMap::default(),
        metrics,
        scale,
        shared,
        first_window: None,
        processed: 0,
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel(POLL_QUEUE_BATCHES);
    let stop_polling = Arc::new(AtomicBool::new(false));
    let poller = kafka::spawn_poller(
        consumer.clone(),
        ctx,
        topics,
        tx,
        stop_polling.clone(),
        BATCH,
    )
    .context("starting the poller thread")?;
    let mut tick = tokio::time::interval(TICK_INTERVAL);
    let mut commit = tokio::time::interval(COMMIT_INTERVAL);
    let mut cadence = consume::Cadence::new();
    let result = async {
        loop {
            tokio::select! {
                biased;
                r = stop.changed() => if r.is_err() || *stop.borrow() { break },
                Some(done) = revoke_rx.recv() => consume::hand_over(&mut st, &mut rx, done).await?,
                polled = rx.recv() => {
                    st.on_batch(&polled.context("the poller thread stopped")?).await?;
                    cadence.after_batch(&mut st).await?;
                }
                _ = tick.tick() => cadence.tick(&mut st).await?,
                _ = commit.tick() => cadence.commit(&mut st).await?,
            }
        }
        anyhow::Ok(())
    }
    .await;
    drop(revoke_rx);
    consume::stop_poller(&stop_polling, rx, poller).await;
    result?;
    consume::drain(&mut st, grace).await
}

impl consume::Consuming for Ingest {
    fn exactly_once(&self) -> bool {
        self.eos
    }

    async fn on_batch(&mut self, polled: &Polled) -> anyhow::Result<()> {
        self.apply_epoch(polled.epoch)?;
        let now = wall_ms();
        self.processed += polled.messages.len() as u64;
        for m in &polled.messages {
            let p = PartitionKey {
                input: m.input,
                partition: m.partition,
            };
            if !self.parts.contains_key(&p) {
                let part = self.new_part(p)?;
                self.parts.insert(p, part);
            }
            let payload = polled.payload(m);
            let part = self.parts.get_mut(&p).expect("inserted above");
            let reread = m.offset < part.seen_until;
            let mut outcome = part.engine.ingest(p, m.offset, payload, now, reread);
            if !matches!(outcome, Ingested::NeedSchema(_)) {
                part.next = m.offset + 1;
                part.seen_until = part.seen_until.max(m.offset + 1);
                part.last_record = now;
                if !matches!(outcome, Ingested::Rejected { .. }) {
                    continue;
                }
            }
            if let Ingested::NeedSchema(id) = outcome {
                outcome = match self.fetch_schema(p.input, id).await {
                    Ok(()) => {
                        let part = self.parts.get_mut(&p).expect("owned");
                        part.engine.ingest(p, m.offset, payload, now, reread)
                    }
                    Err(detail) => {
                        let part = self.parts.get_mut(&p).expect("owned");
                        part.engine.schema_unavailable(p, detail)
                    }
                };
            }
            let part = self.parts.get_mut(&p).expect("owned");
            part.next = m.offset + 1;
            part.seen_until = part.seen_until.max(m.offset + 1);
            part.last_record = now;
            if let Ingested::Rejected { reason, detail } = outcome {
                let d = crate::app::dead_letter(
                    &self.producer,
                    &self.config.topics.dlq,
                    self.config.input_topic(m.input),
                    (m.partition, m.offset),
                    (reason.as_str(), &detail),
                    polled.key(m),
                    payload,
                )
                .await?;
                self.deliveries.push(d);
                if self.deliveries.len() >= MAX_PENDING {
                    self.await_deliveries().await?;
                }
            }
        }
        Ok(())
    }

    /// Closes what each partition's watermark passed and publishes the partials.
    async fn tick(&mut self) -> anyhow::Result<()> {
        let now = wall_ms();
        let mut out = Vec::new();
        for (p, part) in &mut self.parts {
            for w in part.engine.close(now) {
                out.extend(partials_of(
                    &self.policy,
                    &self.config,
                    &self.instance,
                    *p,
                    part,
                    w,
                    now,
                ));
            }
        }
        if let Some(first) = out.iter().map(|p| p.window_start).min() {
            self.first_window = Some(self.first_window.map_or(first, |f| f.min(first)));
        }
        self.report_idle(now, &mut out);
        for partial in &out {
            let bytes = partial::encode(partial);
            let rec: FutureRecord<'_, str, [u8]> = FutureRecord::to(&self.config.topics.partials)
                .key(partial.flag_key.as_str())
                .payload(bytes.as_slice());
            let d = kafka::enqueue(&self.producer, rec)
                .await
                .context("producing a partial")?;
            self.deliveries.push(d);
            self.scale.published.inc();
            self.scale.bytes.inc_by(bytes.len() as u64);
        }
        if !out.is_empty() {
            self.scale.last_published.set(now as f64 / 1000.0);
        }
        if self.deliveries.len() >= MAX_PENDING {
            self.await_deliveries().await?;
        }
        let mut counters = self.retired.clone();
        let mut cells = 0;
        for part in self.parts.values() {
            counters.add(part.engine.counters());
            cells += part.engine.windows().active_cells();
        }
        self.metrics.publish_counters(&counters);
        self.metrics.active_cells.set(cells as i64);
        Ok(())
    }

    /// Partials are awaited by the commit itself.
    async fn settle(&mut self) -> anyhow::Result<()> {
        Ok(())
    }

    /// Commits, per owned partition, the lowest offset an open window still needs, with
    /// how far it was read and which windows were published as metadata, once every
    /// partial and DLQ record produced before is acknowledged.
    async fn commit(&mut self, mode: CommitMode) -> anyhow::Result<()> {
        let tpl = self.snapshot();
        self.await_deliveries().await?;
        if self.eos {
            return crate::app::commit_transaction(&self.producer, &self.consumer, &tpl);
        }
        crate::scale::commit_offsets(&self.consumer, &tpl, mode)
    }

    async fn close(&mut self) {
        self.shared.ready.store(false, Ordering::Relaxed);
    }
}

impl Ingest {
    fn new_part(&self, p: PartitionKey) -> anyhow::Result<Part> {
        let mut engine = Engine::with_inputs(self.policy.clone(), &self.inputs, true)
            .map_err(anyhow::Error::msg)?;
        for ((input, id), schema) in &self.schemas {
            if *input == p.input {
                let _ = engine.add_schema(*input, *id, schema);
            }
        }
        engine.watermark_mut().register(p, wall_ms());
        Ok(Part {
            engine,
            next: -1,
            seen_until: -1,
            last_record: wall_ms(),
            idle_checked: 0,
        })
    }

    /// Applies the rebalances before a batch: a revoke drops every partition's engine
    /// (the eager protocol revokes them all; the next assignment re-reads each from its
    /// committed offset); an assignment seeds each partition from its commit metadata.
    fn apply_epoch(&mut self, (revs, assigns): (u64, u64)) -> anyhow::Result<()> {
        if revs != self.epoch.0 {
            self.epoch.0 = revs;
            for part in std::mem::take(&mut self.parts).into_values() {
                self.retired.add(part.engine.counters());
            }
            self.first_window = None;
            self.metrics.consumer_lag.reset();
            self.shared.ready.store(false, Ordering::Relaxed);
        }
        if assigns != self.epoch.1 {
            self.epoch.1 = assigns;
            let assignment = self.consumer.assignment().unwrap_or_default();
            let committed = self
                .consumer
                .committed(Duration::from_secs(5))
                .unwrap_or_default();
            for e in assignment.elements() {
                let Some(input) = self.config.input_of(e.topic()) else {
                    continue;
                };
                let p = PartitionKey {
                    input,
                    partition: e.partition(),
                };
                let mut part = self.new_part(p)?;
                if let Some(c) = committed.find_partition(e.topic(), e.partition())
                    && let Some((read, closed)) = parse_metadata(c.metadata())
                {
                    part.seen_until = read;
                    part.engine.windows_mut().set_closed_before(closed);
                }
                self.parts.insert(p, part);
            }
            let assigned = assignment.count();
            self.metrics.partitions_assigned.set(assigned as i64);
            self.metrics.ready.set(i64::from(assigned > 0));
            self.shared.ready.store(assigned > 0, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn fetch_schema(&mut self, input: u16, id: u32) -> Result<(), String> {
        let topic = self.config.input_topic(input).to_string();
        if let Some((at, detail)) = self.schema_failures.get(&(input, id))
            && at.elapsed() < SCHEMA_RETRY_AFTER
        {
            return Err(detail.clone());
        }
        let Some(Some(client)) = self.registries.get(usize::from(input)) else {
            return Err(format!("input {topic} has no schema registry"));
        };
        let fetched = client.schema(id).await;
        let now = wall_ms();
        for part in self.parts.values_mut() {
            part.engine.watermark_mut().stalled_until(now);
        }
        let result = if fetched.is_ok() { "ok" } else { "error" };
        self.metrics
            .schema_fetches
            .with_label_values(&[topic.as_str(), result])
            .inc();
        match fetched {
            Ok(schema) => {
                self.schema_failures.remove(&(input, id));
                for (p, part) in &mut self.parts {
                    if p.input == input
                        && let Err(e) = part.engine.add_schema(input, id, &schema.schema)
                    {
                        tracing::error!(topic, id, "{e}");
                    }
                }
                self.schemas.insert((input, id), schema.schema.clone());
                Ok(())
            }
            Err(e) => {
                let detail = format!("writer schema id {id} could not be fetched: {e}");
                tracing::error!(topic, id, "{detail}; its records are dead-lettered");
                self.schema_failures
                    .insert((input, id), (Instant::now(), detail.clone()));
                Err(detail)
            }
        }
    }

    /// A partition that delivered nothing for `idle_timeout` and has no open window
    /// reports every window the instance's other partitions closed as empty, and
    /// counts later records of those windows as late: otherwise the judge would wait
    /// the partials timeout for it at every window (the single instance's idle rule,
    /// SPEC §3, per partition).
    fn report_idle(&mut self, now: i64, out: &mut Vec<Partial>) {
        let Some(first) = self.first_window else {
            return;
        };
        let size = self.policy.window.size_ms;
        let frontier = self
            .parts
            .values()
            .map(|p| p.engine.windows().closed_before())
            .max()
            .unwrap_or(i64::MIN);
        // Records polled (so counted in the read positions) and not processed yet.
        let queued = self.consumer.context().polled.load(Ordering::Relaxed) > self.processed;
        let mut positions = None;
        for (p, part) in &mut self.parts {
            if now - part.last_record < self.policy.window.idle_timeout_ms
                || part.engine.windows().closed_before() >= frontier
                || now - part.idle_checked < 1000
            {
                continue;
            }
            // Silent is not idle while records wait (a partition just assigned, a
            // consumer busy with others): only a partition read to its end is.
            part.idle_checked = now;
            let topic = self.config.input_topic(p.input);
            let positions = positions.get_or_insert_with(|| self.consumer.position().ok());
            let at = positions
                .as_ref()
                .and_then(|tpl| tpl.find_partition(topic, p.partition))
                .and_then(|e| e.offset().to_raw());
            // Polled beyond what was processed: some of the queued records may be its
            // own (or it was read past transaction markers only: the next check with
            // nothing queued tells). No need to ask the broker then.
            if queued && at.is_some_and(|at| at > part.next) {
                continue;
            }
            let high = tokio::task::block_in_place(|| {
                self.consumer
                    .fetch_watermarks(topic, p.partition, Duration::from_secs(1))
            });
            match (at, high) {
                (Some(at), Ok((_, high))) if at >= 0 && at >= high => {}
                _ => continue,
            }
            // Its open windows close as if its watermark followed the others'.
            let closed = part.engine.windows_mut().close_until(frontier);
            for w in closed {
                out.extend(partials_of(
                    &self.policy,
                    &self.config,
                    &self.instance,
                    *p,
                    part,
                    w,
                    now,
                ));
            }
            let mut start = part.engine.windows().closed_before().max(first);
            while start + size <= frontier {
                for f in &self.policy.flags {
                    out.push(Partial {
                        flag_key: f.key.clone(),
                        policy_version: f.policy_version.clone(),
                        window_start: start,
                        window_end: start + size,
                        topic: self.config.input_topic(p.input).to_string(),
                        partition: p.partition,
                        first_offset: -1,
                        read_until: part.next.max(part.seen_until),
                        late_events: 0,
                        produced_at: now,
                        instance: self.instance.clone(),
                        cohorts: Vec::new(),
                    });
                }
                start += size;
            }
            part.engine.windows_mut().set_closed_before(frontier);
        }
    }

    async fn await_deliveries(&mut self) -> anyhow::Result<()> {
        kafka::acknowledged(std::mem::take(&mut self.deliveries))
            .await
            .context("a partial or DLQ record was not acknowledged; not committing")
    }

    fn snapshot(&self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for (p, part) in &self.parts {
            if part.next < 0 {
                continue;
            }
            let offset = part
                .engine
                .min_open_offset(*p)
                .map_or(part.next, |o| o.min(part.next));
            let topic = self.config.input_topic(p.input);
            if tpl
                .add_partition_offset(topic, p.partition, Offset::Offset(offset))
                .is_ok()
                && let Some(mut e) = tpl.find_partition(topic, p.partition)
            {
                e.set_metadata(format!(
                    "{} {}",
                    part.seen_until,
                    part.engine.windows().closed_before()
                ));
            }
            if let Some((_, high)) =
                kafka::cached_watermarks(self.consumer.client(), topic, p.partition)
            {
                self.metrics
                    .consumer_lag
                    .with_label_values(&[topic, &p.partition.to_string()])
                    .set((high - part.next).max(0));
            }
        }
        tpl
    }
}

/// The partials of one closed window of partition `p`, one per flag.
fn partials_of(
    policy: &Policy,
    config: &Config,
    instance: &str,
    p: PartitionKey,
    part: &Part,
    w: crate::window::ClosedWindow,
    now: i64,
) -> Vec<Partial> {
    let first = w
        .first_offsets
        .iter()
        .find(|(q, _)| *q == p)
        .map_or(-1, |(_, o)| *o);
    w.flags
        .into_iter()
        .enumerate()
        .map(|(fi, flag)| {
            let f = &policy.flags[fi];
            Partial {
                flag_key: f.key.clone(),
                policy_version: f.policy_version.clone(),
                window_start: w.start,
                window_end: w.end,
                topic: config.input_topic(p.input).to_string(),
                partition: p.partition,
                first_offset: first,
                read_until: part.next.max(part.seen_until),
                late_events: flag.late_events,
                produced_at: now,
                instance: instance.to_string(),
                cohorts: flag.cohorts,
            }
        })
        .collect()
}

/// `"<read_until> <closed_before>"` of an ingest commit.
fn parse_metadata(m: &str) -> Option<(i64, i64)> {
    let (read, closed) = m.split_once(' ')?;
    Some((read.parse().ok()?, closed.parse().ok()?))
}
