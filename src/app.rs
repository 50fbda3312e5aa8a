//! `guardrail run`: the sidecar. A poller thread reads Kafka and hands batches over a
//! bounded channel to one task that owns the engine and `select!`s over batches, a
//! tick, commits and shutdown. Window outputs are published in order by a task of
//! their own ([`crate::publisher`]) through an idempotent producer, so a window close
//! does not stall ingestion while the broker acknowledges.
//!
//! Offsets (SPEC §6): a partition's committed offset is the lowest offset any open
//! window still needs (or the next unread one), committed only once every output
//! submitted before that snapshot, and every DLQ record, was acknowledged. The commit
//! metadata carries how far the partition was read, so after a restart or rebalance
//! the re-read records of closed windows are recognised as duplicates, not "late". Decision state (percent, streaks,
//! the closed-window frontier) is restored from the evaluations topic at start.
//! On a revoke every open window is dropped and rebuilt from the committed offsets.
//!
//! Shutdown: stop consuming, close what the watermark allows, flush the producer,
//! commit, exit — within the grace period.

use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use prometheus::Registry;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;

use crate::clock::wall_ms;
use crate::config::{Config, Delivery};
use crate::consume::{self, COMMIT_INTERVAL, Consuming as _, TICK_INTERVAL};
use crate::engine::{Engine, Ingested};
use crate::http::Shared;
use crate::kafka::{self, Encoder, Polled, PolledMessage, RebalanceContext};
use crate::policy::Policy;
use crate::publisher::{Outputs, Publisher};
use crate::records::{FlagCommand, InputPosition};
use crate::telemetry::Metrics;
use crate::window::watermark::PartitionKey;

/// Messages per batch from the poller thread; the engine ticks after each batch.
const BATCH: usize = 256;
/// Batches the poller may run ahead of the engine (backpressure beyond).
const POLL_QUEUE_BATCHES: usize = 16;
/// DLQ deliveries awaited at the latest when this many are in flight.
const MAX_PENDING_DLQ: usize = 10_000;
/// DLQ values above this are truncated to [`DLQ_KEPT_BYTES`] (librdkafka's and most
/// brokers' default `message.max.bytes` is 1,000,000 for the whole record).
const DLQ_MAX_VALUE_BYTES: usize = 512 * 1024;
const DLQ_KEPT_BYTES: usize = 64 * 1024;
/// Timeout of each transaction call (init, send offsets, commit, abort).
const TXN_TIMEOUT: Duration = Duration::from_secs(30);

/// After SIGTERM, how much longer than the grace period the process may take before
/// it exits regardless (stopping the poller, then the drain, which is bounded by grace).
const SHUTDOWN_SLACK: Duration = Duration::from_millis(2500);

/// Callbacks for the demo: sees every command once it is acknowledged.
pub type CommandSink = tokio::sync::mpsc::UnboundedSender<FlagCommand>;

/// What a `guardrail run` process does (SPEC §11).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The single instance: ingest and judge in one engine (the default).
    Both,
    /// Stage 1: per-partition aggregates to the partials topic.
    Ingest,
    /// Stage 2: partials merged per flag and window, judged.
    Judge,
}

impl Stage {
    pub fn parse(s: &str) -> Option<Stage> {
        match s {
            "both" => Some(Stage::Both),
            "ingest" => Some(Stage::Ingest),
            "judge" => Some(Stage::Judge),
            _ => None,
        }
    }
}

/// Runs `stage` until `stop` turns true (see [`run_engine`]).
#[allow(clippy::too_many_arguments)] // run_engine's seven and the stage
pub async fn run_stage(
    stage: Stage,
    config: Config,
    policy: Arc<Policy>,
    shared: Arc<Shared>,
    registry: &Registry,
    stop: watch::Receiver<bool>,
    grace: Duration,
    sink: Option<CommandSink>,
) -> anyhow::Result<()> {
    match stage {
        Stage::Both => run_engine(config, policy, shared, registry, stop, grace, sink).await,
        Stage::Ingest => {
            crate::scale::ingest::run_ingest(config, policy, shared, registry, stop, grace).await
        }
        Stage::Judge => {
            crate::scale::judge::run_judge(config, policy, shared, registry, stop, grace, sink)
                .await
        }
    }
}

/// Entry point of `guardrail run`.
pub fn run(config: Config, policy: Policy, grace: Duration, stage: Stage) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
    rt.block_on(async move {
        let policy = Arc::new(policy);
        let served = crate::http::start(&config.http.listen, &policy)
            .await
            .with_context(|| format!("binding HTTP on {}", config.http.listen))?;
        tracing::info!(addr = %served.addr, "HTTP listening");
        let stop_rx = served.stop.subscribe();
        let stop = served.stop.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutdown requested; draining");
            let _ = stop.send(true);
            // Whatever a client library may be blocked on (a broker outage), the process
            // ends soon after the grace period: what was not committed is re-read by the
            // next start (SPEC §6), as after a SIGKILL.
            let limit = grace + SHUTDOWN_SLACK;
            let _ = std::thread::Builder::new()
                .name("guardrail-shutdown-watchdog".into())
                .spawn(move || {
                    std::thread::sleep(limit);
                    tracing::error!(
                        "shutdown did not finish within {limit:?} (the grace period and \
                         {SHUTDOWN_SLACK:?} to stop consuming): exiting with nothing more \
                         committed; the next start re-reads from the last commit"
                    );
                    std::process::exit(1);
                });
        });
        let result = run_stage(
            stage,
            config,
            policy,
            served.shared.clone(),
            &served.registry,
            stop_rx,
            grace,
            None,
        )
        .await;
        // The engine may also end on an error: stop HTTP either way before waiting for it.
        let _ = served.stop.send(true);
        let _ = served.server.await;
        result
    })
}

/// Runs [`run_engine`] on its own task beside an HTTP server from [`crate::http::start`],
/// sharing its registry and view and stopping with it (the demo, tests, benchmarks).
pub fn spawn_engine(
    served: &crate::http::Served,
    config: Config,
    policy: Arc<Policy>,
    grace: Duration,
    sink: Option<CommandSink>,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    spawn_stage(served, Stage::Both, config, policy, grace, sink)
}

/// [`spawn_engine`] for any [`Stage`].
pub fn spawn_stage(
    served: &crate::http::Served,
    stage: Stage,
    config: Config,
    policy: Arc<Policy>,
    grace: Duration,
    sink: Option<CommandSink>,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    let (shared, registry, stop) = (
        served.shared.clone(),
        served.registry.clone(),
        served.stop.subscribe(),
    );
    tokio::spawn(async move {
        run_stage(stage, config, policy, shared, &registry, stop, grace, sink).await
    })
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// The engine loop on Kafka, until `stop` turns true; then drains within `grace`.
pub async fn run_engine(
    config: Config,
    policy: Arc<Policy>,
    shared: Arc<Shared>,
    registry: &Registry,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
    sink: Option<CommandSink>,
) -> anyhow::Result<()> {
    let k = config.kafka.clone().context("[kafka] is required by run")?;
    let eos = k.delivery == Delivery::ExactlyOnce;
    kafka::check_assignor(&k).map_err(anyhow::Error::msg)?;
    let metrics = Metrics::register(registry).map_err(anyhow::Error::msg)?;
    crate::scale::metrics::ScaleMetrics::register(registry, "both").map_err(anyhow::Error::msg)?;
    // One judging instance per group: wait, as a standby, for the lead.
    let lead = crate::leader::Lead::join(&k, &config.topics.state)
        .context("joining the lead group (the state topic must exist)")?;
    let mut waited = false;
    while !lead.leading() {
        if !waited {
            tracing::info!(
                group = %crate::leader::lead_group(&k.group_id),
                "standby: another instance leads (or the lead group is forming)"
            );
            waited = true;
        }
        shared.standby.store(true, Ordering::Relaxed);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = stop.changed() => return Ok(()),
        }
    }
    shared.standby.store(false, Ordering::Relaxed);
    metrics.leader.set(1);
    if waited {
        tracing::info!("leading: restoring state and consuming");
    }
    // Policies as data (SPEC §10): the approved documents on the policies topic, the
    // file seeding the flags the topic lacks.
    let file_docs = crate::policies::documents(&config);
    let (config, policy, docs, policies_from) =
        match crate::policies::seed_and_load(&config, "").await? {
            None => (config, policy, file_docs, Vec::new()),
            Some(loaded) => match Policy::compile(&loaded.config) {
                Ok(compiled) => (loaded.config, Arc::new(compiled), loaded.docs, loaded.ends),
                // Approved versions another config validated: judge with the file's
                // rather than not at all (SPEC §10), and say so.
                Err(e) => {
                    tracing::error!(
                        topic = %config.topics.policies,
                        "the approved policies do not compile with this instance's config; \
                         judging with the config file's until they do: {e}"
                    );
                    metrics.policy_activation_failures.inc();
                    (config, policy, file_docs, loaded.ends)
                }
            },
        };
    shared.update_policy(&policy);
    let producer: FutureProducer = kafka::output_producer_config(&k)
        .create()
        .context("creating the producer")?;
    if eos {
        // Fences a predecessor with the same transactional.id and aborts its open
        // transaction, so that restore below reads everything that was committed.
        let p = producer.clone();
        tokio::task::block_in_place(|| p.init_transactions(TXN_TIMEOUT)).context(
            "initialising Kafka transactions (for a broker without them set \
             [kafka] delivery = \"at-least-once\")",
        )?;
        producer
            .begin_transaction()
            .context("beginning a transaction")?;
    }
    let inputs = crate::ingest::input::compile(&config)
        .map_err(|e| anyhow::Error::new(crate::config::ConfigErrors(e)))?;
    let mut engine =
        Engine::with_inputs(policy.clone(), &inputs, true).map_err(anyhow::Error::msg)?;
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
    let restored = tokio::task::block_in_place(|| kafka::restore(&k, &config.topics, &mut engine))
        .context("restoring state")?;
    for e in &restored.evaluations {
        shared.record(e, None);
        metrics.evaluation(e);
    }
    for r in &restored.resets {
        shared.record_reset(r);
    }
    // How far the inputs were read when the newest restored window closed: re-read
    // records below it, in closed windows, are duplicates, not late (even when the
    // process died before it committed its offsets).
    let mut seen_until: HashMap<PartitionKey, i64> = HashMap::default();
    for p in &restored.positions {
        if let Some(source) = config.input_of(&p.topic) {
            let key = PartitionKey {
                input: source,
                partition: p.partition,
            };
            seen_until.insert(key, p.read_until);
        }
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
    let t = &config.topics;
    let audit_topic = match tokio::task::block_in_place(|| {
        crate::policies::topic_exists(&k, &t.audit)
    }) {
        Ok(true) => Some(t.audit.clone()),
        Ok(false) => {
            tracing::warn!(topic = %t.audit, "the audit topic does not exist: commands and activations are not written to the audit trail (docs/SPEC.md §10)");
            None
        }
        Err(e) => anyhow::bail!("looking for the audit topic: {e}"),
    };
    let inputs = config.input_topics();
    consumer
        .subscribe(&inputs.iter().map(String::as_str).collect::<Vec<_>>())
        .context("subscribing")?;
    let mut shell = Shell {
        lead,
        partial: false,
        engine,
        consumer: consumer.clone(),
        producer: producer.clone(),
        publisher: Publisher::start(
            Outputs {
                producer: producer.clone(),
                commands_topic: t.flag_commands.clone(),
                evaluations_topic: t.evaluations.clone(),
                state_topic: t.state.clone(),
                audit_topic: audit_topic.clone(),
                metrics: metrics.clone(),
                shared: shared.clone(),
                sink,
                partial_latency: None,
            },
            Encoder::new(config.output.format)?,
        ),
        pending_commit: None,
        eos,
        committed_batches: 0,
        config: config.clone(),
        metrics,
        shared,
        epoch: (0, 0),
        consumed_next: HashMap::default(),
        seen_until,
        pending: Vec::new(),
        registries,
        schema_failures: HashMap::default(),
        docs: docs
            .into_iter()
            .map(|d| (d.flag().key.clone(), d))
            .collect(),
        staged: Vec::new(),
        audit_out: Vec::new(),
        issued: Default::default(),
        processed: 0,
        assigned_from: HashMap::default(),
        from_latest: k
            .properties
            .get("auto.offset.reset")
            .is_some_and(|v| matches!(v.as_str(), "latest" | "largest" | "end")),
    };
    shell.publisher.already_published(restored.published);
    let (tx, mut rx) = tokio::sync::mpsc::channel(POLL_QUEUE_BATCHES);
    let stop_polling = Arc::new(AtomicBool::new(false));
    let poller = kafka::spawn_poller(
        consumer.clone(),
        ctx,
        inputs.clone(),
        tx,
        stop_polling.clone(),
        BATCH,
    )
    .context("starting the poller thread")?;
    // What the flag platform reports applied (`guardrail apply`, SPEC §9).
    let (applied_tx, mut applied_rx) = tokio::sync::mpsc::channel(1024);
    let applied_reader = spawn_applied_reader(
        &k,
        config.topics.applied.clone(),
        applied_tx,
        stop_polling.clone(),
    )
    .context("starting the applied-state reader")?;
    // Approved policy versions and the audit trail (SPEC §10).
    let (control_tx, mut control_rx) = tokio::sync::mpsc::channel(1024);
    let control_reader = crate::policies::spawn_control_reader(
        &k,
        config.topics.policies.clone(),
        policies_from,
        config.topics.audit.clone(),
        control_tx,
        stop_polling.clone(),
    )?;
    let mut tick = tokio::time::interval(TICK_INTERVAL);
    let mut commit = tokio::time::interval(COMMIT_INTERVAL);
    let mut cadence = consume::Cadence::new();
    let result = async {
        loop {
            tokio::select! {
                biased;
                r = stop.changed() => if r.is_err() || *stop.borrow() { break },
                // Partitions are about to be revoked: process what the poller queued,
                // commit it while the partitions are still ours, then let it go on.
                Some(done) = revoke_rx.recv() => consume::hand_over(&mut shell, &mut rx, done).await?,
                polled = rx.recv() => {
                    shell.on_batch(&polled.context("the poller thread stopped")?).await?;
                    cadence.after_batch(&mut shell).await?;
                }
                _ = tick.tick() => cadence.tick(&mut shell).await?,
                Some(applied) = applied_rx.recv() => shell.on_applied(&applied),
                Some(control) = control_rx.recv() => shell.on_control(control),
                _ = commit.tick() => cadence.commit(&mut shell).await?,
                // A failed publication stops the engine before anything more is committed.
                // Under exactly-once, a window close's outputs become visible when their
                // transaction commits: commit as soon as they are delivered.
                () = shell.publisher.changed() => {
                    shell.publisher.check()?;
                    if shell.eos
                        && shell.publisher.acknowledged() == shell.publisher.submitted()
                        && shell.publisher.submitted() > shell.committed_batches
                    {
                        shell.commit(CommitMode::Sync).await?;
                    }
                }
            }
        }
        anyhow::Ok(())
    }
    .await;
    // From here a revoke (the consumer's close) does not wait for the engine.
    drop(revoke_rx);
    consume::stop_poller(&stop_polling, rx, poller).await;
    // Not joined: during a broker outage its metadata request or close may take seconds,
    // and shutdown must not wait for them (it stops at its next look at `stop_polling`).
    drop(applied_rx);
    drop(applied_reader);
    drop(control_rx);
    drop(control_reader);
    result?;
    // Drain: no more consuming; close what can close, flush, commit. Exit non-zero
    // when it does not finish: the next start re-reads what was not committed.
    consume::drain(&mut shell, grace).await
}

/// Reads the applied-state topic (`[topics] applied`, compacted) from its beginning on a
/// thread of its own, without a consumer group, and forwards each record. A topic that
/// does not exist (no subscriber deployed) is looked for again every 5 s; a record that
/// is not an applied-state record is logged and skipped.
fn spawn_applied_reader(
    k: &crate::config::KafkaConfig,
    topic: String,
    tx: tokio::sync::mpsc::Sender<crate::apply::Applied>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    use rdkafka::Message as _;
    use rdkafka::consumer::BaseConsumer;
    let group = format!("{}-applied-reader", k.group_id);
    let consumer: BaseConsumer = kafka::tail_reader_config(k, &group)
        .create()
        .context("creating the applied-state consumer")?;
    let thread = std::thread::Builder::new()
        .name("guardrail-applied".into())
        .spawn(move || {
            let stopped = || stop.load(Ordering::Relaxed) || tx.is_closed();
            // Wait for the topic.
            let mut logged = false;
            let partitions = loop {
                if stopped() {
                    return;
                }
                let found = consumer
                    .fetch_metadata(Some(&topic), Duration::from_secs(1))
                    .ok()
                    .and_then(|m| {
                        m.topics()
                            .iter()
                            .find(|t| t.name() == topic && t.error().is_none())
                            .map(|t| t.partitions().len() as i32)
                    })
                    .filter(|&n| n > 0);
                if let Some(n) = found {
                    break n;
                }
                if !logged {
                    tracing::info!(%topic, "no applied-state topic yet: applied splits are inferred from the traffic (looking again every 5 s)");
                    logged = true;
                }
                for _ in 0..50 {
                    if stopped() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            };
            let mut tpl = TopicPartitionList::new();
            for p in 0..partitions {
                let _ = tpl.add_partition_offset(&topic, p, Offset::Beginning);
            }
            if let Err(e) = consumer.assign(&tpl) {
                tracing::warn!(%topic, error = %e, "cannot read the applied-state topic");
                return;
            }
            while !stopped() {
                match consumer.poll(Duration::from_millis(200)) {
                    None => {}
                    Some(Err(e)) => tracing::debug!(%topic, error = %e, "applied-state read"),
                    Some(Ok(m)) => {
                        let Some(payload) = m.payload() else { continue };
                        match serde_json::from_slice::<crate::apply::Applied>(payload) {
                            Ok(a) => {
                                if tx.blocking_send(a).is_err() {
                                    return;
                                }
                            }
                            Err(e) => tracing::warn!(
                                %topic,
                                partition = m.partition(),
                                offset = m.offset(),
                                error = %e,
                                "skipping a record that is not an applied-state record"
                            ),
                        }
                    }
                }
            }
        })?;
    Ok(thread)
}

struct Shell {
    /// Membership of the lead group: losing it stops the engine.
    lead: crate::leader::Lead,
    /// Only part of the input partitions are assigned: consume nothing, judge nothing.
    partial: bool,
    engine: Engine,
    consumer: Arc<kafka::InputConsumer>,
    /// For the DLQ; window outputs go through `publisher`.
    producer: FutureProducer,
    publisher: Publisher,
    /// Offsets computed at a commit tick, with the number of output batches submitted
    /// by then: committed once that many are acknowledged (at-least-once).
    pending_commit: Option<(u64, TopicPartitionList)>,
    /// Exactly-once: outputs, DLQ records and offsets go in one transaction.
    eos: bool,
    /// Output batches submitted when the last transaction committed.
    committed_batches: u64,
    config: Config,
    metrics: Metrics,
    shared: Arc<Shared>,
    /// (revocations, assignments) applied so far.
    epoch: (u64, u64),
    /// Next offset to read, per partition currently owned.
    consumed_next: HashMap<PartitionKey, i64>,
    /// Highest offset ever read + 1 (survives revokes; seeded from commit metadata).
    seen_until: HashMap<PartitionKey, i64>,
    /// DLQ deliveries not yet awaited.
    pending: Vec<rdkafka::producer::DeliveryFuture>,
    /// Per input: its Schema Registry client (`avro-confluent` inputs).
    registries: Vec<Option<crate::ingest::confluent::RegistryClient>>,
    /// Schema ids whose fetch failed, and when: their records are dead-lettered at once
    /// until `SCHEMA_RETRY_AFTER` has passed (a consumer does not wait out the fetch
    /// timeout record by record while a registry is down).
    schema_failures: HashMap<(u16, u32), (std::time::Instant, String)>,
    /// The policy documents judged with (or pending), per flag (SPEC §10).
    docs: Docs,
    /// Activations handed to the engine and not yet swapped in, mirroring its pending
    /// and queued policy: the documents each judges with, and the approved versions
    /// (flag, version, approver) it brings.
    staged: Vec<Staged>,
    /// Audit entries to publish with the next window close.
    audit_out: Vec<crate::audit::AuditRecord>,
    /// Recent commands by id: (issued_at, onset of a stop's breach or None, action),
    /// to measure the loop when the platform reports them applied; the oldest first.
    issued: std::collections::VecDeque<(String, i64, Option<i64>, &'static str)>,
    /// Input messages processed so far (against the poller's count of those polled).
    processed: u64,
    /// The group's committed offset of each partition at its assignment (where reading
    /// starts), for the idle rule.
    assigned_from: HashMap<PartitionKey, i64>,
    /// `auto.offset.reset` is `latest`: a partition without a committed offset starts
    /// at its end.
    from_latest: bool,
}

/// Commands remembered for [`Shell::issued`].
const ISSUED_KEPT: usize = 4096;

/// An activation handed to the engine: the documents it judges with, and the approved
/// versions (flag, version, approver) it brings.
type Staged = (Docs, Vec<(String, String, String)>);

/// Policy documents per flag key.
type Docs = std::collections::BTreeMap<String, crate::policies::Document>;

/// How long a failed schema fetch is remembered before the next record retries it.
const SCHEMA_RETRY_AFTER: Duration = Duration::from_secs(30);

/// Exactly-once: adds `tpl` (the input offsets) to the open transaction, commits it and
/// begins the next. A failure aborts the transaction (nothing of it becomes visible)
/// and is returned: the caller stops, and the restart re-does the work from the
/// committed offsets and state. Everything produced must be delivered before.
pub(crate) fn commit_transaction(
    producer: &FutureProducer,
    consumer: &kafka::InputConsumer,
    tpl: &TopicPartitionList,
) -> anyhow::Result<()> {
    let result = tokio::task::block_in_place(|| -> anyhow::Result<()> {
        if tpl.count() > 0 {
            let group = consumer
                .group_metadata()
                .context("the consumer has no group metadata")?;
            producer
                .send_offsets_to_transaction(tpl, &group, TXN_TIMEOUT)
                .context("adding the input offsets to the transaction")?;
        }
        producer
            .commit_transaction(TXN_TIMEOUT)
            .context("committing the transaction")?;
        producer
            .begin_transaction()
            .context("beginning the next transaction")?;
        Ok(())
    });
    if let Err(e) = result {
        if let Err(abort) = tokio::task::block_in_place(|| producer.abort_transaction(TXN_TIMEOUT))
        {
            tracing::warn!(error = %abort, "aborting the failed transaction");
        }
        return Err(e);
    }
    Ok(())
}

/// Enqueues a rejected input record to the DLQ with headers saying where it came from
/// and why (SPEC §5). A value larger than a broker accepts would stop the engine at
/// every restart (a crash loop): the DLQ keeps its head, and the headers say where the
/// whole record is. Waits while the producer queue is full.
pub(crate) async fn dead_letter(
    producer: &FutureProducer,
    dlq: &str,
    topic: &str,
    (partition, offset): (i32, i64),
    (reason, detail): (&str, &str),
    key: Option<&[u8]>,
    payload: &[u8],
) -> anyhow::Result<rdkafka::producer::DeliveryFuture> {
    let part = partition.to_string();
    let off = offset.to_string();
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "guardrail.source.topic",
            value: Some(topic),
        })
        .insert(Header {
            key: "guardrail.source.partition",
            value: Some(&part),
        })
        .insert(Header {
            key: "guardrail.source.offset",
            value: Some(&off),
        })
        .insert(Header {
            key: "guardrail.reason",
            value: Some(reason),
        })
        .insert(Header {
            key: "guardrail.detail",
            value: Some(detail),
        });
    let (payload, headers) = if payload.len() > DLQ_MAX_VALUE_BYTES {
        let size = payload.len().to_string();
        let headers = headers.insert(Header {
            key: "guardrail.truncated_from",
            value: Some(&size),
        });
        (&payload[..DLQ_KEPT_BYTES], headers)
    } else {
        (payload, headers)
    };
    let mut rec: FutureRecord<'_, [u8], [u8]> =
        FutureRecord::to(dlq).payload(payload).headers(headers);
    if let Some(key) = key {
        rec = rec.key(key);
    }
    kafka::enqueue(producer, rec)
        .await
        .context("producing to the DLQ")
}

impl consume::Consuming for Shell {
    fn exactly_once(&self) -> bool {
        self.eos
    }

    /// Feeds one polled batch to the engine.
    async fn on_batch(&mut self, polled: &Polled) -> anyhow::Result<()> {
        self.apply_epoch(polled.epoch);
        let now = wall_ms(); // one clock read per batch
        self.processed += polled.messages.len() as u64;
        for m in &polled.messages {
            self.on_message(polled, m, now).await?;
        }
        Ok(())
    }

    /// Advances the watermark and hands every decision to the publisher.
    async fn tick(&mut self) -> anyhow::Result<()> {
        if self.lead.lost() {
            anyhow::bail!(
                "lost the lead of the consumer group to another instance (this one's session \
                 expired): stopping so that it restarts as a standby"
            );
        }
        // Away from the lead (a session lost in an outage) or with part of the inputs:
        // keep the state, judge nothing until the lead is back and confirmed ours.
        self.metrics.leader.set(i64::from(self.lead.leading()));
        let now = wall_ms();
        for f in &self.engine.policy().flags {
            if f.expires_at_ms.is_some() {
                self.metrics
                    .flag_expired
                    .with_label_values(&[f.key.as_str()])
                    .set(i64::from(f.expired(now)));
            }
        }
        // Also away from the lead: records read meanwhile count at its first tick back.
        self.hold_unread(now);
        if self.partial || !self.lead.leading() {
            return Ok(());
        }
        let mut judged = self.engine.tick(now);
        // Commands of windows before a boundary crossed in this tick were decided under
        // the documents judged with until then.
        let swapped = self.take_activations();
        let size = self.engine.policy().window.size_ms;
        for c in judged.iter().filter_map(|j| j.command.as_ref()) {
            // A stop's breach began with the first window of its longest breach streak.
            let onset = matches!(
                c.action,
                crate::model::Action::Pause | crate::model::Action::Rollback
            )
            .then(|| {
                let streak = c
                    .evidence
                    .iter()
                    .filter(|e| e.breached)
                    .map(|e| e.consecutive_windows.max(1))
                    .max()
                    .unwrap_or(1);
                c.window_end - i64::from(streak) * size
            });
            if self.issued.len() >= ISSUED_KEPT {
                self.issued.pop_front();
            }
            self.issued
                .push_back((c.command_id.clone(), c.issued_at, onset, c.action.as_str()));
            let docs = match &swapped {
                Some((from, before)) if c.window_end <= *from => before,
                _ => &self.docs,
            };
            let version = docs.get(&c.flag_key).map(|d| d.version());
            self.audit_out
                .push(crate::audit::AuditRecord::command(c, version.as_deref()));
        }
        if let Some(last) = judged.last_mut() {
            // The close's read positions travel with its last evaluation (restore).
            last.evaluation.input_positions = self.positions();
        }
        if !judged.is_empty() || !self.audit_out.is_empty() {
            let audit = std::mem::take(&mut self.audit_out);
            self.publisher
                .submit_with(judged, audit, Instant::now())
                .await?;
        }
        self.metrics.publish_counters(self.engine.counters());
        self.metrics
            .publish_overflow(self.engine.windows().cohort_overflows());
        let flags: Vec<&str> = self
            .engine
            .policy()
            .flags
            .iter()
            .map(|f| f.key.as_str())
            .collect();
        self.metrics
            .publish_without_unit(&flags, self.engine.windows().without_unit());
        self.metrics
            .active_cells
            .set(self.engine.windows().active_cells() as i64);
        self.metrics
            .watermark_excluded
            .set(self.engine.excluded_partitions() as i64);
        let wm = self.engine.watermark();
        if wm > i64::MIN {
            self.metrics.watermark_lag.set((now - wm) as f64 / 1000.0);
        }
        Ok(())
    }

    async fn settle(&mut self) -> anyhow::Result<()> {
        self.publisher.settle().await
    }

    fn flush(&mut self) {
        let _ = self.producer.flush(Duration::from_secs(5));
    }

    /// Commits, per owned partition, the lowest offset an open window still needs, once
    /// every window output submitted before that snapshot is acknowledged. `Async`
    /// (the periodic commit) never waits for the publisher: a snapshot whose outputs
    /// are still in flight is kept and committed at a later tick. `Sync` (the drain)
    /// expects the publisher settled. A DLQ record the broker refused stops the engine
    /// before anything is committed, so the restarted engine re-reads it.
    async fn commit(&mut self, mode: CommitMode) -> anyhow::Result<()> {
        if self.eos {
            return self.commit_transaction().await;
        }
        self.flush_pending()
            .await
            .context("a DLQ record was not acknowledged; not committing")?;
        self.publisher.check()?;
        let acknowledged = self.publisher.acknowledged();
        if let Some((needs, _)) = &self.pending_commit
            && acknowledged < *needs
        {
            // Keep waiting for the older snapshot: replacing it could starve commits.
            return Ok(());
        }
        // The pending snapshot (if any) is committable; a fresh one supersedes it when
        // it is committable too, else the pending one is committed and the fresh one waits.
        let fresh = (self.publisher.submitted(), self.snapshot());
        let ready = if acknowledged >= fresh.0 {
            self.pending_commit = None;
            Some(fresh.1)
        } else {
            self.pending_commit.replace(fresh).map(|(_, tpl)| tpl)
        };
        if let Some(tpl) = ready {
            self.commit_offsets(&tpl, mode)?;
        }
        Ok(())
    }

    async fn close(&mut self) {
        // Settled by the drain unless it timed out: do not outlast the grace period by more.
        self.publisher.close(Duration::from_millis(100)).await;
        self.shared.ready.store(false, Ordering::Relaxed);
    }
}

impl Shell {
    /// Silent is not idle while records wait (SPEC §3): a partition silent past
    /// `idle_timeout` keeps holding the watermark back while its read position is below
    /// its end (librdkafka's cached high watermark: fetched, not read yet), or while
    /// records of it that were polled wait to be processed. Otherwise, after a broker
    /// outage or a rebalance, the partitions read first would move the watermark alone
    /// and the others' records for the same windows would be late. A partition not read
    /// since its assignment is where the group's committed offset (else
    /// `auto.offset.reset`) put it. Checked at every tick, before the watermark
    /// advances, for the partitions silent past the timeout: local reads only
    /// (positions and cached watermarks).
    fn hold_unread(&mut self, now: i64) {
        let silent: Vec<PartitionKey> = self.engine.watermark_mut().silent(now).collect();
        if silent.is_empty() {
            return;
        }
        let Ok(positions) = self.consumer.position() else {
            return;
        };
        // Records polled (so counted in the positions) and not processed yet.
        let queued = self.consumer.context().polled.load(Ordering::Relaxed) > self.processed;
        for p in silent {
            let topic = self.config.input_topic(p.input);
            let position = positions
                .find_partition(topic, p.partition)
                .and_then(|e| e.offset().to_raw())
                .filter(|at| *at >= 0);
            // Some of them may be this partition's: it was polled beyond what was
            // processed (or only past transaction markers, which the next tick with
            // nothing queued tells apart).
            let done = self.consumed_next.get(&p).or(self.assigned_from.get(&p));
            let polled_beyond = matches!((position, done), (Some(at), Some(done)) if at > *done);
            let unread = kafka::cached_watermarks(self.consumer.client(), topic, p.partition)
                .is_some_and(|(low, high)| {
                    let at = position
                        .or_else(|| self.assigned_from.get(&p).copied())
                        .unwrap_or(if self.from_latest { high } else { low.max(0) });
                    at < high
                });
            if unread || (queued && polled_beyond) {
                self.engine.watermark_mut().hold(p, now);
            }
        }
    }

    /// Applies the rebalances that happened before the batch about to be processed.
    fn apply_epoch(&mut self, (revs, assigns): (u64, u64)) {
        if revs != self.epoch.0 {
            self.epoch.0 = revs;
            // Open windows mix every partition's records and cannot be split: drop them
            // all; the new assignment re-reads from committed offsets.
            self.engine.clear_open();
            self.engine.watermark_mut().clear_partitions();
            self.consumed_next.clear();
            self.assigned_from.clear();
            self.pending.clear();
            // Computed for partitions that may no longer be ours.
            self.pending_commit = None;
            self.shared.ready.store(false, Ordering::Relaxed);
        }
        if assigns != self.epoch.1 {
            self.epoch.1 = assigns;
            let assignment = self.consumer.assignment().unwrap_or_default();
            let now = wall_ms();
            for e in assignment.elements() {
                if let Some(source) = self.config.input_of(e.topic()) {
                    let p = PartitionKey {
                        input: source,
                        partition: e.partition(),
                    };
                    self.engine.watermark_mut().register(p, now);
                }
            }
            let assigned = assignment.count();
            self.metrics.partitions_assigned.set(assigned as i64);
            self.shared.ready.store(assigned > 0, Ordering::Relaxed);
            self.metrics.ready.set(i64::from(assigned > 0));
            // A cohort's window mixes every input partition: with only some of them,
            // judging would be wrong. Consume nothing until the group gives all back.
            let total = self.input_partitions();
            self.partial = assigned > 0 && total.is_some_and(|t| assigned < t);
            self.shared.partial.store(self.partial, Ordering::Relaxed);
            self.metrics.partial_assignment.set(i64::from(self.partial));
            if self.partial {
                tracing::error!(
                    assigned,
                    total = total.unwrap_or_default(),
                    "only part of the input partitions are assigned: not judging \
                     (another member shares this consumer group)"
                );
                let _ = self.consumer.pause(&assignment);
            }
            // How far each partition was read before: from the commit metadata.
            if let Ok(committed) = self.consumer.committed(Duration::from_secs(5)) {
                for e in committed.elements() {
                    let Some(source) = self.config.input_of(e.topic()) else {
                        continue;
                    };
                    let p = PartitionKey {
                        input: source,
                        partition: e.partition(),
                    };
                    if let Some(at) = e.offset().to_raw().filter(|at| *at >= 0) {
                        self.assigned_from.insert(p, at);
                    }
                    if let Ok(until) = e.metadata().parse::<i64>() {
                        let s = self.seen_until.entry(p).or_insert(until);
                        *s = (*s).max(until);
                    }
                }
            }
        }
    }

    /// Fetches writer schema `id` of an `avro-confluent` input from its registry and
    /// gives it to the engine; `Err` is the DLQ detail for the record that needed it.
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
        // The engine read nothing while it waited: that is not the partitions' idleness.
        self.engine.watermark_mut().stalled_until(wall_ms());
        let result = match &fetched {
            Ok(_) => "ok",
            Err(crate::ingest::confluent::RegistryError::NotFound { .. }) => "not_found",
            Err(crate::ingest::confluent::RegistryError::Unauthorized { .. }) => "unauthorized",
            Err(crate::ingest::confluent::RegistryError::Unsupported { .. }) => "unsupported",
            Err(e) if e.is_transient() => "unavailable",
            Err(_) => "error",
        };
        self.metrics
            .schema_fetches
            .with_label_values(&[topic.as_str(), result])
            .inc();
        match fetched {
            Ok(schema) => {
                self.schema_failures.remove(&(input, id));
                match self.engine.add_schema(input, id, &schema.schema) {
                    Ok(missing) => {
                        tracing::info!(
                            topic,
                            id,
                            "writer schema fetched and resolved against the mapping"
                        );
                        for m in missing {
                            tracing::warn!(
                                topic,
                                id,
                                "{m}: the field is left empty for records of this schema"
                            );
                        }
                    }
                    // Remembered by the engine: its records go to the DLQ with this.
                    Err(e) => tracing::error!(topic, id, "{e}"),
                }
                Ok(())
            }
            Err(e) => {
                let detail = format!("writer schema id {id} could not be fetched: {e}");
                tracing::error!(
                    topic,
                    id,
                    "{detail}; records with this id are dead-lettered (reason=schema), \
                     the fetch is retried after {}s",
                    SCHEMA_RETRY_AFTER.as_secs()
                );
                self.schema_failures
                    .insert((input, id), (std::time::Instant::now(), detail.clone()));
                Err(detail)
            }
        }
    }

    /// The number of partitions of the input topics (`None` if metadata is unavailable).
    fn input_partitions(&self) -> Option<usize> {
        let mut total = 0;
        for topic in &self.config.input_topics() {
            let md = self
                .consumer
                .fetch_metadata(Some(topic), Duration::from_secs(5))
                .ok()?;
            total += md.topics().first()?.partitions().len();
        }
        Some(total)
    }

    /// Feeds one record to the engine; a rejected one is enqueued to the DLQ (waiting
    /// while the producer queue is full). A DLQ record that cannot be enqueued stops
    /// the engine: its offset must not be committed.
    async fn on_message(
        &mut self,
        batch: &Polled,
        m: &PolledMessage,
        now: i64,
    ) -> anyhow::Result<()> {
        let p = PartitionKey {
            input: m.input,
            partition: m.partition,
        };
        let offset = m.offset;
        let reread = self.seen_until.get(&p).is_some_and(|&s| offset < s);
        let payload = batch.payload(m);
        let mut outcome = self.engine.ingest(p, offset, payload, now, reread);
        if let Ingested::NeedSchema(id) = outcome {
            outcome = match self.fetch_schema(p.input, id).await {
                Ok(()) => self.engine.ingest(p, offset, payload, now, reread),
                Err(detail) => self.engine.schema_unavailable(p, detail),
            };
        }
        self.consumed_next.insert(p, offset + 1);
        let s = self.seen_until.entry(p).or_insert(offset + 1);
        *s = (*s).max(offset + 1);
        if let Ingested::Rejected { reason, detail } = outcome {
            let delivery = dead_letter(
                &self.producer,
                &self.config.topics.dlq,
                self.config.input_topic(m.input),
                (m.partition, offset),
                (reason.as_str(), &detail),
                batch.key(m),
                payload,
            )
            .await?;
            self.pending.push(delivery);
            if self.pending.len() >= MAX_PENDING_DLQ {
                // Bounded: a stream of bad records waits for the broker here rather
                // than holding every delivery until the next commit.
                self.flush_pending()
                    .await
                    .context("a DLQ record was not acknowledged")?;
            }
        }
        Ok(())
    }

    /// A record of the policies or audit topic.
    fn on_control(&mut self, c: crate::policies::Control) {
        use crate::policies::{Control, PolicyKind};
        let r = match c {
            Control::Audit(a) => {
                self.shared.record_audit(&a);
                return;
            }
            Control::Policy(r) => r,
        };
        let current = self.staged.last().map_or(&self.docs, |(d, _)| d);
        if r.kind != PolicyKind::Active
            || current
                .get(&r.flag)
                .is_some_and(|d| d.version() == r.version)
        {
            return;
        }
        let mut docs = current.clone();
        docs.insert(r.flag.clone(), r.document.clone());
        // The engine's flags first, in their order; a new flag after them.
        let order: Vec<&crate::policies::Document> = self
            .engine
            .policy()
            .flags
            .iter()
            .filter_map(|f| docs.get(&f.key))
            .chain(
                docs.iter()
                    .filter(|(k, _)| self.engine.policy().flag(k).is_none())
                    .map(|(_, d)| d),
            )
            .collect();
        let compiled = crate::policies::assemble(&self.config, &order)
            .and_then(|c| crate::policy::Policy::compile(&c));
        let policy = match compiled {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(
                    flag = %r.flag, version = %r.version,
                    "an approved policy version does not compile with this instance's config; \
                     still judging with the previous one: {e}"
                );
                self.metrics.policy_activation_failures.inc();
                return;
            }
        };
        let approved = (
            r.flag.clone(),
            r.version.clone(),
            r.approved_by.clone().unwrap_or_default(),
        );
        // A policy handed over while another waits replaces the one queued behind it.
        if self.engine.pending_boundary().is_some() && self.staged.len() == 2 {
            let (d, a) = &mut self.staged[1];
            *d = docs;
            // A queued version replaced before it judged anything is not activated.
            a.retain(|(f, ..)| f != &r.flag);
            a.push(approved);
        } else {
            self.staged.push((docs, vec![approved]));
        }
        let boundary = self.engine.activate(Arc::new(policy));
        tracing::info!(
            flag = %r.flag, version = %r.version,
            approved_by = r.approved_by.as_deref().unwrap_or("-"),
            effective_from = %crate::clock::rfc3339(boundary),
            "approved policy version: judged with from the next window boundary"
        );
        let _ = self.take_activations();
    }

    /// Audit entries and views of the activations the engine made since last asked;
    /// returns the first one's boundary and the documents judged with until then.
    fn take_activations(&mut self) -> Option<(i64, Docs)> {
        let mut first: Option<(i64, Docs)> = None;
        for a in self.engine.take_activations() {
            if self.staged.is_empty() {
                continue;
            }
            let (docs, approved) = self.staged.remove(0);
            let before = std::mem::replace(&mut self.docs, docs);
            first.get_or_insert((a.effective_from, before));
            self.shared.update_policy(&a.policy);
            for r in &a.resets {
                self.shared.record_reset(r);
            }
            for (flag, version, approver) in approved {
                let resets: Vec<&str> = a
                    .resets
                    .iter()
                    .filter(|r| r.flag_key == flag)
                    .map(|r| r.cohort.as_str())
                    .collect();
                let mut e = crate::audit::AuditRecord::policy(
                    crate::audit::AuditKind::Activated,
                    &flag,
                    &version,
                    "guardrail",
                    wall_ms(),
                    format!(
                        "judged with from {} (approved by {approver}); {}",
                        crate::clock::rfc3339(a.effective_from),
                        if resets.is_empty() {
                            "every cohort's state carried over".to_string()
                        } else {
                            format!(
                                "evidence restarted (percent and state kept): {}",
                                resets.join(", ")
                            )
                        }
                    ),
                    vec![format!("/api/flags/{flag}/history")],
                );
                e.id = format!("{}:{}", e.id, a.effective_from);
                e.effective_from = Some(a.effective_from);
                e.policy_version = a.policy.flag(&flag).map(|f| f.policy_version.clone());
                self.audit_out.push(e);
            }
        }
        first
    }

    /// An applied-state record: the split the platform serves a cohort.
    fn on_applied(&mut self, a: &crate::apply::Applied) {
        let confirmed = self
            .engine
            .rules_mut()
            .applied(&a.flag_key, &a.cohort, a.percent);
        if confirmed {
            tracing::info!(
                flag = %a.flag_key,
                cohort = %a.cohort,
                percent = a.percent,
                command_id = %a.command_id,
                "the platform applied the advanced split: the sample-ratio test expects it from the next window but one"
            );
        }
        // The loop's length, once per command this instance issued.
        if let Some(i) = self.issued.iter().position(|x| x.0 == a.command_id) {
            let (_, issued_at, onset, action) = self.issued.remove(i).unwrap_or_default();
            let secs = |from: i64| (a.applied_at.saturating_sub(from)).max(0) as f64 / 1000.0;
            self.metrics
                .signal_to_applied
                .with_label_values(&[action])
                .observe(secs(issued_at));
            if let Some(onset) = onset {
                self.metrics
                    .unsafe_exposure
                    .with_label_values(&[action])
                    .observe(secs(onset));
            }
        }
        self.shared.record_applied(a);
    }

    /// How far each input partition was ever read, for a window close's evaluation.
    fn positions(&self) -> Vec<InputPosition> {
        let mut out: Vec<InputPosition> = self
            .seen_until
            .iter()
            .map(|(p, &read_until)| InputPosition {
                topic: self.config.input_topic(p.input).to_string(),
                partition: p.partition,
                read_until,
            })
            .collect();
        out.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        out
    }

    /// Waits for every DLQ delivery so far.
    async fn flush_pending(&mut self) -> Result<(), kafka::KafkaError> {
        kafka::acknowledged(std::mem::take(&mut self.pending)).await
    }

    /// Exactly-once: waits until every output and DLQ record of the open transaction is
    /// delivered, adds the input offsets (same snapshot rule as at-least-once), commits
    /// and begins the next transaction. A failure aborts the transaction and stops the
    /// engine: its outputs are discarded with the offsets, and the restarted engine
    /// restores the committed state and re-reads from the committed offsets.
    async fn commit_transaction(&mut self) -> anyhow::Result<()> {
        self.flush_pending()
            .await
            .context("a DLQ record was not delivered; not committing")?;
        self.publisher
            .settle()
            .await
            .context("window outputs were not delivered; not committing")?;
        let tpl = self.snapshot();
        let submitted = self.publisher.submitted();
        commit_transaction(&self.producer, &self.consumer, &tpl)?;
        self.committed_batches = submitted;
        Ok(())
    }

    /// A failed periodic (async) commit is retried at the next tick; a failed final
    /// (sync) one is an error: the process must not exit 0 with work uncommitted.
    fn commit_offsets(&self, tpl: &TopicPartitionList, mode: CommitMode) -> anyhow::Result<()> {
        if tpl.count() > 0
            && let Err(e) = self.consumer.commit(tpl, mode)
        {
            if matches!(mode, CommitMode::Sync) {
                return Err(e).context("the final offset commit failed");
            }
            tracing::warn!(error = %e, "offset commit failed; will retry");
        }
        Ok(())
    }

    /// The offsets to commit now (with how far each partition was read as metadata),
    /// and the consumer lag gauge.
    fn snapshot(&self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for (p, next) in &self.consumed_next {
            let offset = self
                .engine
                .min_open_offset(*p)
                .map_or(*next, |o| o.min(*next));
            let topic = self.config.input_topic(p.input);
            if tpl
                .add_partition_offset(topic, p.partition, Offset::Offset(offset))
                .is_ok()
                && let Some(mut e) = tpl.find_partition(topic, p.partition)
            {
                e.set_metadata(self.seen_until.get(p).copied().unwrap_or(*next).to_string());
            }
            if let Some((_, high)) =
                kafka::cached_watermarks(self.consumer.client(), topic, p.partition)
            {
                self.metrics
                    .consumer_lag
                    .with_label_values(&[topic, &p.partition.to_string()])
                    .set((high - next).max(0));
            }
        }
        tpl
    }
}
