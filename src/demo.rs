//! `guardrail demo`: the whole loop on an in-process Kafka (librdkafka's mock cluster).
//! Simulated traffic for two flags and four platform cohorts — a regression injected
//! into checkout-redesign on mobile-web, a real improvement of search-ranking-v2 — is
//! produced window by window; the same engine as `run` consumes it, publishes commands
//! and serves HTTP; each command is printed as it is acknowledged; then a summary.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use prometheus::Registry;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::mpsc;

use crate::clock::wall_ms;
use crate::config::{Config, KafkaConfig};
use crate::http::Shared;
use crate::ingest::confluent::MockRegistry;
use crate::ingest::decode::SHIPPED;
use crate::ingest::foreign::{
    DEMO_ERROR_SCHEMA_ID, DEMO_PRODUCT_SCHEMA_ID, DemoFormat, demo_inputs, otlp_policy,
    to_confluent, to_json, to_spans,
};
use crate::policy::Policy;
use crate::records::FlagCommand;
use crate::sim::{Scenario, Simulator};
use crate::telemetry::counter_total;

pub const EXAMPLE_CONFIG: &str = include_str!("../config/guardrail.toml");

/// The example policy with its checkout error-rate guardrail judged per window (alpha
/// 0.01 on each window alone): on the short scenarios of the end-to-end tests (8
/// windows, the mobile-web regression from window 4) it pauses on the second regressed
/// window, where the default sequential, family-controlled test needs a few windows
/// more. The tests of Kafka plumbing use it; the statistics are tested in `rules`.
pub fn example_per_window() -> String {
    let marker = "  action = \"pause\"\n";
    debug_assert_eq!(EXAMPLE_CONFIG.matches(marker).count(), 1);
    EXAMPLE_CONFIG.replacen(marker, "  action = \"pause\"\n  test = \"per_window\"\n", 1)
}
/// The mock keeps at most 5 MiB per partition: 32 partitions hold the demo's ~870k
/// events even if the engine falls behind the producer.
const INPUT_PARTITIONS: i32 = 32;

/// Demo config: the example policy, pointed at the mock cluster, with a short idle
/// timeout so the final windows close without waiting 30 s of wall time.
pub fn demo_config(
    path: Option<&Path>,
    brokers: &str,
    listen: &str,
) -> anyhow::Result<(Config, Policy)> {
    let text = match path {
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?
        }
        None => EXAMPLE_CONFIG.to_string(),
    };
    demo_config_text(&text, brokers, listen)
}

/// [`demo_config`] from a config's text.
pub fn demo_config_text(
    text: &str,
    brokers: &str,
    listen: &str,
) -> anyhow::Result<(Config, Policy)> {
    let mut config = Config::parse(text).map_err(|e| anyhow::anyhow!("{e}"))?;
    config.kafka = Some(KafkaConfig {
        brokers: brokers.to_string(),
        group_id: "guardrail-demo".into(),
        properties: Default::default(),
        delivery: Default::default(),
        transactional_id: Some("guardrail-demo".into()),
    });
    config.window.idle_timeout = "2s".into();
    config.http.listen = listen.to_string();
    let policy = Policy::compile(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((config, policy))
}

pub fn run(
    config: Option<&Path>,
    format: DemoFormat,
    windows: u32,
    sessions: u32,
    listen: &str,
    linger: Duration,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
    rt.block_on(demo(config, format, windows, sessions, listen, linger))
}

async fn demo(
    config_path: Option<&Path>,
    format: DemoFormat,
    windows: u32,
    sessions: u32,
    listen: &str,
    linger: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let cluster = MockCluster::new(1).context("starting the mock cluster")?;
    let brokers = cluster.bootstrap_servers();
    // avro-confluent: the writer schemas are served by an in-process registry.
    let registry_server = match format {
        DemoFormat::AvroConfluent => Some(
            MockRegistry::start(vec![
                (DEMO_PRODUCT_SCHEMA_ID, SHIPPED[0].2.to_string()),
                (DEMO_ERROR_SCHEMA_ID, SHIPPED[1].2.to_string()),
            ])
            .await
            .context("starting the demo schema registry")?,
        ),
        _ => None,
    };
    let mut text = match config_path {
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?
        }
        None => EXAMPLE_CONFIG.to_string(),
    };
    if format == DemoFormat::Otlp {
        text = otlp_policy(&text);
    }
    let url = registry_server
        .as_ref()
        .map(MockRegistry::url)
        .unwrap_or_default();
    text.push_str(&demo_inputs(format, &url));
    let (config, policy) = demo_config_text(&text, &brokers, listen)?;
    let t = config.topics.clone();
    for topic in config.input_topics() {
        cluster
            .create_topic(&topic, INPUT_PARTITIONS, 1)
            .context("creating topics")?;
    }
    for topic in [
        &t.flag_commands,
        &t.evaluations,
        &t.dlq,
        &t.state,
        &t.policies,
        &t.audit,
    ] {
        cluster
            .create_topic(topic, 1, 1)
            .context("creating topics")?;
    }
    println!(
        "guardrail demo: in-process Kafka at {brokers}; {windows} windows of 15 minutes, {sessions} sessions each"
    );
    if format != DemoFormat::Avro {
        println!(
            "input format: {} on {} (mapping: README, \"Bring your own events\"){}",
            format.as_str(),
            config.input_topics().join(", "),
            registry_server
                .as_ref()
                .map(|r| format!("; schema registry at {}", r.url()))
                .unwrap_or_default()
        );
    }

    let policy = Arc::new(policy);
    let served = crate::http::start(&config.http.listen, &policy)
        .await
        .with_context(|| format!("binding HTTP on {}", config.http.listen))?;
    println!(
        "HTTP on http://{}/ (metrics at /metrics, flags at /api/flags)\n",
        served.addr
    );
    let (registry, shared) = (served.registry.clone(), served.shared.clone());

    let (sink_tx, mut sink_rx) = mpsc::unbounded_channel::<FlagCommand>();
    let engine = crate::app::spawn_engine(
        &served,
        config.clone(),
        policy.clone(),
        Duration::from_secs(10),
        Some(sink_tx),
    );
    let printer = tokio::spawn(async move {
        let mut commands = Vec::new();
        while let Some(c) = sink_rx.recv().await {
            print_command(&c);
            commands.push(c);
        }
        commands
    });

    // Traffic: event time ends at the current window, so nothing is "from the future".
    let window_ms = policy.window.size_ms;
    let start = (wall_ms() / window_ms - i64::from(windows)) * window_ms;
    let mut sim = Simulator::new(Scenario::demo(start, windows, sessions));
    let producer: FutureProducer =
        crate::kafka::producer_config(config.kafka.as_ref().context("kafka")?)
            .set("linger.ms", "20")
            .create()?;
    let schemas = crate::ingest::decode::SchemaRegistry::shipped().map_err(anyhow::Error::msg)?;
    let mut produced = 0u64;
    while let Some(events) = sim.next_window() {
        produced += match format {
            DemoFormat::Avro => crate::kafka::produce_events(&producer, &t, &schemas, &events)
                .await
                .context("producing demo traffic")?,
            other => produce_foreign(&producer, other, &config, &schemas, &events)
                .await
                .context("producing demo traffic")?,
        };
    }
    // One malformed record, to show the dead-letter path.
    producer
        .send(
            FutureRecord::to(config.input_topic(0))
                .key("bad")
                .payload(&b"not avro"[..]),
            Duration::from_secs(5),
        )
        .await
        .map_err(|(e, _)| anyhow::anyhow!("{e}"))?;
    println!(
        "produced {produced} {} (+1 malformed) in {:.1}s; waiting for the last windows to close\n",
        if format == DemoFormat::Otlp {
            "spans and support signals"
        } else {
            "events"
        },
        started.elapsed().as_secs_f64()
    );

    // Windows close as the watermark passes; the last one closes once partitions go idle.
    let expected = u64::from(windows.saturating_sub(1));
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && !engine.is_finished() {
        let closed = counter_total(&registry, "guardrail_windows_closed_total") as u64;
        // The malformed record is produced last: wait for it to be dead-lettered too.
        let dead_lettered = counter_total(&registry, "guardrail_dlq_total") as u64;
        if closed >= expected && dead_lettered >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if !linger.is_zero() {
        println!(
            "serving HTTP for {}s more (Ctrl-C to stop)",
            linger.as_secs()
        );
        tokio::select! {
            _ = tokio::time::sleep(linger) => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    let _ = served.stop.send(true);
    let engine_result = engine.await.context("engine task")?;
    let _ = served.server.await;
    engine_result?;
    let commands = printer.await.context("printer task")?;
    summary(&shared, &registry, &commands, produced, started.elapsed());
    drop(producer);
    drop(cluster);
    Ok(())
}

/// Produces simulated events in `format` to the demo's `[[inputs]]` topics (support
/// signals stay guardrail's Avro); returns how many events were produced (OTLP: spans).
async fn produce_foreign(
    producer: &FutureProducer,
    format: DemoFormat,
    config: &Config,
    schemas: &crate::ingest::decode::SchemaRegistry,
    events: &[crate::sim::SimEvent],
) -> anyhow::Result<u64> {
    use crate::kafka::{acknowledged, enqueue};
    use crate::model::Source;
    let topic_of = |record: Source| {
        config
            .inputs
            .iter()
            .find(|i| i.record.as_deref() == Some(record.as_str()))
            .map(|i| i.topic.as_str())
            .unwrap_or_default()
    };
    let mut deliveries = Vec::new();
    let mut n = 0u64;
    let support: Vec<_> = events
        .iter()
        .filter(|e| e.source == Source::Support)
        .collect();
    for e in &support {
        let payload = e.single_object(schemas.current_fingerprint(Source::Support));
        let key = e.user_id.as_deref().unwrap_or_default();
        deliveries.push(
            enqueue(
                producer,
                FutureRecord::to(topic_of(Source::Support))
                    .key(key)
                    .payload(&payload),
            )
            .await?,
        );
        n += 1;
    }
    if format == DemoFormat::Otlp {
        // The Collector batches spans: 50 per export request, keyed by trace.
        let spans = to_spans(events);
        let topic = &config.inputs[0].topic;
        for batch in spans.chunks(50) {
            let payload = crate::ingest::otlp::encode_traces(batch);
            deliveries.push(
                enqueue(
                    producer,
                    FutureRecord::<[u8], _>::to(topic).payload(&payload),
                )
                .await?,
            );
        }
        n += spans.len() as u64;
    } else {
        for e in events.iter().filter(|e| e.source != Source::Support) {
            let payload = match format {
                DemoFormat::Json => to_json(e).map(String::into_bytes),
                _ => to_confluent(e),
            };
            let Some(payload) = payload else { continue };
            let key = e.user_id.as_deref().unwrap_or_default();
            deliveries.push(
                enqueue(
                    producer,
                    FutureRecord::to(topic_of(e.source))
                        .key(key)
                        .payload(&payload),
                )
                .await?,
            );
            n += 1;
        }
    }
    acknowledged(deliveries).await?;
    Ok(n)
}

fn print_command(c: &FlagCommand) {
    println!(
        "[{}] {:<18} {:<24} {:<8} {:>5}% -> {:>5}%  {}",
        c.severity.as_str(),
        c.flag_key,
        c.cohort,
        c.action.as_str(),
        c.from_percent,
        c.to_percent,
        c.reason
    );
    for e in c
        .evidence
        .iter()
        .filter(|e| e.breached || e.status == "significant")
    {
        println!(
            "      evidence: {} treatment={:.4} control={} p={} n={}/{} ({})",
            e.metric,
            e.treatment_value,
            e.control_value.map_or("-".into(), |v| format!("{v:.4}")),
            e.p_value.map_or("-".into(), |p| format!("{p:.2e}")),
            e.treatment_samples,
            e.control_samples,
            e.method
        );
    }
}

fn summary(
    shared: &Shared,
    registry: &Registry,
    commands: &[FlagCommand],
    produced: u64,
    elapsed: Duration,
) {
    let metric = |name| counter_total(registry, name);
    println!("\nsummary after {:.1}s wall time:", elapsed.as_secs_f64());
    println!(
        "  events produced {produced}, windows closed {}, commands {}, dead-lettered {}",
        metric("guardrail_windows_closed_total"),
        commands.len(),
        metric("guardrail_dlq_total")
    );
    for (key, f) in shared.snapshot() {
        println!("  {key} (owner {}):", f.owner);
        for (cohort, c) in &f.cohorts {
            println!("    {:<26} {:<12} {:>5}%", cohort, c.state, c.percent);
        }
    }
}
