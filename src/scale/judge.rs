//! Stage 2, `guardrail run --stage judge` (SPEC §11): any number of instances in the
//! consumer group `<group_id>-judge` over the partials topic. Partials are keyed by
//! flag, so each flag's partials sit in one partition and one instance judges it. The
//! [`Merger`] holds them per flag and window until every input partition reported the
//! window (or the partials timeout passed), merges them and the rules judge the flag;
//! commands, evaluations and state go out through the same [`Publisher`] as a single
//! instance's, and the partials offsets are committed once they are acknowledged (under
//! exactly-once, in the same transaction).
//!
//! Each evaluation's `input_positions` say which input partitions the window included
//! (topic, partition, how far the ingest stage had read it) and how far the flag's
//! partials were handled (the partials topic and partition, the next offset). An
//! instance that takes over a flag restores its state from the state changelog and
//! re-reads its partials from the committed offset: partials of windows judged
//! already are recognised as duplicates by these positions.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use prometheus::Registry;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::producer::{DeliveryFuture, FutureProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};
use rustc_hash::FxHashMap as HashMap;
use tokio::sync::watch;

use crate::app::CommandSink;
use crate::clock::wall_ms;
use crate::config::{Config, Delivery};
use crate::consume::{self, COMMIT_INTERVAL, Consuming as _};
use crate::engine::Engine;
use crate::http::Shared;
use crate::kafka::{self, Encoder, Polled, RebalanceContext};
use crate::policy::Policy;
use crate::publisher::{Outputs, Publisher};
use crate::records::InputPosition;
use crate::scale::ingest::stage_kafka;
use crate::scale::merge::{Merger, Offered};
use crate::scale::metrics::ScaleMetrics;
use crate::telemetry::Metrics;

const BATCH: usize = 256;
const POLL_QUEUE_BATCHES: usize = 16;
/// Partials come in bursts at window ends: look for windows to close more often than
/// the other stages.
const TICK_INTERVAL: Duration = Duration::from_millis(20);
/// How often the input topics' partition counts are looked up again.
const METADATA_INTERVAL: Duration = Duration::from_secs(30);

struct Judge {
    config: Config,
    k: crate::config::KafkaConfig,
    policy: Arc<Policy>,
    /// Holds the rules (decision state) of every flag; ingests nothing.
    engine: Engine,
    merger: Merger,
    consumer: Arc<kafka::InputConsumer>,
    producer: FutureProducer,
    publisher: Publisher,
    eos: bool,
    epoch: (u64, u64),
    /// Next offset to read per partials partition owned.
    next: HashMap<i32, i64>,
    /// DLQ deliveries (late and invalid partials) not yet acknowledged.
    deliveries: Vec<DeliveryFuture>,
    metrics: Metrics,
    scale: ScaleMetrics,
    shared: Arc<Shared>,
    last_metadata: Option<Instant>,
}

/// The judge stage on Kafka, until `stop` turns true; then drains within `grace`.
pub async fn run_judge(
    config: Config,
    policy: Arc<Policy>,
    shared: Arc<Shared>,
    registry: &Registry,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
    sink: Option<CommandSink>,
) -> anyhow::Result<()> {
    let base = config.kafka.clone().context("[kafka] is required by run")?;
    kafka::check_assignor(&base).map_err(anyhow::Error::msg)?;
    let k = stage_kafka(&base, "judge");
    let eos = k.delivery == Delivery::ExactlyOnce;
    let metrics = Metrics::register(registry).map_err(anyhow::Error::msg)?;
    let scale = ScaleMetrics::register(registry, "judge").map_err(anyhow::Error::msg)?;
    shared.update_policy(&policy);
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
    let inputs = crate::ingest::input::compile(&config)
        .map_err(|e| anyhow::Error::new(crate::config::ConfigErrors(e)))?;
    let engine = Engine::with_inputs(policy.clone(), &inputs, true).map_err(anyhow::Error::msg)?;
    let (revoke_tx, mut revoke_rx) = tokio::sync::mpsc::unbounded_channel();
    let ctx = RebalanceContext {
        on_revoke: Some(revoke_tx),
        ..RebalanceContext::default()
    };
    let mut consumer_config = kafka::consumer_config(&k);
    if !k.properties.contains_key("fetch.wait.max.ms") {
        // The partials topic carries little, and its last partial of a window gates a
        // decision: do not let a fetch wait the default 500 ms for more.
        consumer_config.set("fetch.wait.max.ms", "20");
    }
    let consumer: Arc<kafka::InputConsumer> = Arc::new(
        consumer_config
            .create_with_context(ctx.clone())
            .context("creating the consumer")?,
    );
    let t = &config.topics;
    let audit_topic =
        match tokio::task::block_in_place(|| crate::policies::topic_exists(&base, &t.audit)) {
            Ok(true) => Some(t.audit.clone()),
            Ok(false) => None,
            Err(e) => anyhow::bail!("looking for the audit topic: {e}"),
        };
    consumer
        .subscribe(&[t.partials.as_str()])
        .context("subscribing to the partials topic")?;
    let mut st = Judge {
        k: base.clone(),
        merger: Merger::new(policy.clone()),
        policy,
        engine,
        consumer: consumer.clone(),
        producer: producer.clone(),
        publisher: Publisher::start(
            Outputs {
                producer,
                commands_topic: t.flag_commands.clone(),
                evaluations_topic: t.evaluations.clone(),
                state_topic: t.state.clone(),
                audit_topic,
                metrics: metrics.clone(),
                shared: shared.clone(),
                sink,
                partial_latency: Some(scale.partial_to_command.clone()),
            },
            Encoder::new(config.output.format)?,
        ),
        config: config.clone(),
        eos,
        epoch: (0, 0),
        next: HashMap::default(),
        deliveries: Vec::new(),
        metrics,
        scale,
        shared,
        last_metadata: None,
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel(POLL_QUEUE_BATCHES);
    let stop_polling = Arc::new(AtomicBool::new(false));
    let poller = kafka::spawn_poller(
        consumer.clone(),
        ctx,
        vec![config.topics.partials.clone()],
        tx,
        stop_polling.clone(),
        BATCH,
    )
    .context("starting the poller thread")?;
    let mut tick = tokio::time::interval(TICK_INTERVAL);
    let mut commit = tokio::time::interval(COMMIT_INTERVAL);
    let result = async {
        loop {
            tokio::select! {
                biased;
                r = stop.changed() => if r.is_err() || *stop.borrow() { break },
                Some(done) = revoke_rx.recv() => consume::hand_over(&mut st, &mut rx, done).await?,
                polled = rx.recv() => {
                    let polled = polled.context("the poller thread stopped")?;
                    st.on_batch(&polled).await?;
                    st.tick().await?;
                }
                _ = tick.tick() => st.tick().await?,
                _ = commit.tick() => st.commit(CommitMode::Async).await?,
                () = st.publisher.changed() => st.publisher.check()?,
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

impl consume::Consuming for Judge {
    fn exactly_once(&self) -> bool {
        self.eos
    }

    async fn on_batch(&mut self, polled: &Polled) -> anyhow::Result<()> {
        self.apply_epoch(polled.epoch).await?;
        let now = wall_ms();
        for m in &polled.messages {
            self.next.insert(m.partition, m.offset + 1);
            let payload = polled.payload(m);
            let offered = self
                .merger
                .offer_encoded(payload, (m.partition, m.offset), now);
            self.scale
                .received
                .with_label_values(&[offered.outcome()])
                .inc();
            let (reason, detail) = match &offered {
                Offered::Late(d) => ("late_partial", d),
                Offered::Invalid(d) => ("invalid_partial", d),
                Offered::Merged | Offered::Duplicate => continue,
            };
            tracing::warn!(
                partition = m.partition,
                offset = m.offset,
                reason,
                "dead-lettering a partial: {detail}"
            );
            self.metrics.dlq.with_label_values(&[reason]).inc();
            let d = crate::app::dead_letter(
                &self.producer,
                &self.config.topics.dlq,
                &self.config.topics.partials,
                (m.partition, m.offset),
                (reason, detail),
                polled.key(m),
                payload,
            )
            .await?;
            self.deliveries.push(d);
        }
        Ok(())
    }

    /// Closes the windows that are due, judges them and hands the outputs over.
    async fn tick(&mut self) -> anyhow::Result<()> {
        self.refresh_expected();
        let now = wall_ms();
        let ready = self.merger.due(now);
        self.scale
            .pending_windows
            .set(self.merger.pending_windows() as i64);
        for ((topic, partition), end) in self.merger.reported() {
            self.scale
                .partition_last_window_end
                .with_label_values(&[topic, &partition.to_string()])
                .set(*end as f64 / 1000.0);
        }
        for r in ready {
            let flag = &self.policy.flags[r.flag];
            if !r.missing.is_empty() {
                self.scale.missing.inc_by(r.missing.len() as u64);
                tracing::warn!(
                    flag = %flag.key,
                    window_start = r.start,
                    missing = ?r.missing,
                    "judging a window without every input partition (partials timeout)"
                );
            }
            let mut judged =
                self.engine
                    .rules_mut()
                    .decide_flag(r.flag, &r.closed, (r.start, r.end), now);
            // Where this flag's partials were read to: they sit in one partials partition.
            let mut positions = r.included.clone();
            if let Some(p) = r.partials_partition
                && let Some(next) = self.next.get(&p)
            {
                positions.push(InputPosition {
                    topic: self.config.topics.partials.clone(),
                    partition: p,
                    read_until: *next,
                });
            }
            let mut audit = Vec::new();
            for j in &mut judged {
                j.evaluation.input_positions = positions.clone();
                if let Some(c) = &j.command {
                    audit.push(crate::audit::AuditRecord::command(c, None));
                }
            }
            self.metrics.windows_closed.inc();
            self.publisher
                .submit_with(judged, audit, r.last_arrival)
                .await?;
        }
        Ok(())
    }

    async fn settle(&mut self) -> anyhow::Result<()> {
        self.publisher.settle().await
    }

    /// Commits, per partials partition, the lowest offset an open window still holds,
    /// once every output and DLQ record before it is acknowledged.
    async fn commit(&mut self, mode: CommitMode) -> anyhow::Result<()> {
        let mut tpl = TopicPartitionList::new();
        for (p, next) in &self.next {
            let offset = self.merger.min_offset(*p).map_or(*next, |o| o.min(*next));
            let _ =
                tpl.add_partition_offset(&self.config.topics.partials, *p, Offset::Offset(offset));
        }
        kafka::acknowledged(std::mem::take(&mut self.deliveries))
            .await
            .context("a DLQ record was not acknowledged; not committing")?;
        self.publisher
            .settle()
            .await
            .context("window outputs were not delivered; not committing")?;
        if self.eos {
            return crate::app::commit_transaction(&self.producer, &self.consumer, &tpl);
        }
        crate::scale::commit_offsets(&self.consumer, &tpl, mode)
    }

    async fn close(&mut self) {
        self.publisher.close(Duration::from_millis(100)).await;
        self.shared.ready.store(false, Ordering::Relaxed);
    }
}

impl Judge {
    /// A revoke drops every open window and the decision state; an assignment restores
    /// the state from the changelog (another instance may have judged these flags
    /// since) and re-reads the partials from the committed offsets.
    async fn apply_epoch(&mut self, (revs, assigns): (u64, u64)) -> anyhow::Result<()> {
        if revs != self.epoch.0 {
            self.epoch.0 = revs;
            self.next.clear();
            self.shared.ready.store(false, Ordering::Relaxed);
        }
        if assigns != self.epoch.1 {
            self.epoch.1 = assigns;
            self.restore().await?;
            let assigned = self.consumer.assignment().map_or(0, |a| a.count());
            self.metrics.partitions_assigned.set(assigned as i64);
            self.metrics.ready.set(i64::from(assigned > 0));
            self.shared.ready.store(assigned > 0, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn restore(&mut self) -> anyhow::Result<()> {
        let inputs = crate::ingest::input::compile(&self.config)
            .map_err(|e| anyhow::Error::new(crate::config::ConfigErrors(e)))?;
        let mut engine =
            Engine::with_inputs(self.policy.clone(), &inputs, true).map_err(anyhow::Error::msg)?;
        let (k, topics) = (self.k.clone(), self.config.topics.clone());
        let restored = tokio::task::block_in_place(|| kafka::restore(&k, &topics, &mut engine))
            .context("restoring state")?;
        let mut merger = Merger::new(self.policy.clone());
        merger.expect(self.merger.expected().clone());
        for e in &restored.evaluations {
            merger.restored(e, &topics.partials);
            self.shared.record(e, None);
        }
        for r in &restored.resets {
            merger.judged_until(&r.flag_key, r.window_end);
            self.shared.record_reset(r);
        }
        self.publisher.already_published(restored.published);
        self.engine = engine;
        self.merger = merger;
        self.last_metadata = None;
        Ok(())
    }

    /// Looks up the input partitions every window waits for.
    fn refresh_expected(&mut self) {
        if self
            .last_metadata
            .is_some_and(|t| t.elapsed() < METADATA_INTERVAL)
        {
            return;
        }
        self.last_metadata = Some(Instant::now());
        let mut expected = BTreeSet::new();
        for topic in self.config.input_topics() {
            let md = match tokio::task::block_in_place(|| {
                self.consumer
                    .fetch_metadata(Some(&topic), Duration::from_secs(5))
            }) {
                Ok(md) => md,
                Err(e) => {
                    tracing::warn!(topic, error = %e, "input topic metadata unavailable");
                    return;
                }
            };
            let Some(t) = md.topics().first() else {
                return;
            };
            for p in t.partitions() {
                expected.insert((topic.clone(), p.id()));
            }
        }
        if expected.is_empty() {
            return;
        }
        self.merger.expect(expected);
    }
}
