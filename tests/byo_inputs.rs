//! Bring your own events, end to end on librdkafka's mock cluster: Segment-style JSON
//! product events and Confluent-framed Avro error events (writer schemas fetched from a
//! Schema Registry API served in the test) decide exactly what `replay` decides on the
//! same events; the registry's failures dead-letter with reason `schema` and lose
//! nothing else; OTLP spans from the Collector's encoding stop the injected regression.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use guardrail::clock::wall_ms;
use guardrail::config::Config;
use guardrail::ingest::confluent::MockRegistry;
use guardrail::ingest::decode::{SHIPPED, SchemaRegistry};
use guardrail::ingest::foreign::{
    DEMO_ERROR_SCHEMA_ID, DEMO_PRODUCT_SCHEMA_ID, DemoFormat, demo_inputs, otlp_policy,
    to_confluent, to_json, to_spans,
};
use guardrail::kafka::{OutputReader, acknowledged, enqueue};
use guardrail::model::{Action, Source};
use guardrail::policy::Policy;
use guardrail::records::FlagCommand;
use guardrail::sim::{Scenario, SimEvent, Simulator};
use prometheus::Registry;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};

mod common;
use common::Running;
use common::{header, read_topic};
use rdkafka::Message;

const WINDOWS: u32 = 8;
const SESSIONS: u32 = 24_000;
const PARTITIONS: i32 = 32;
const FLAG: &str = "checkout-redesign";
const COHORT: &str = "platform=mobile-web";

type Cluster = MockCluster<'static, rdkafka::producer::DefaultProducerContext>;

/// The `[[inputs]]` sections of `text`.
fn sections(text: &str) -> Vec<String> {
    text.split("\n[[inputs]]")
        .skip(1)
        .map(|s| format!("\n[[inputs]]{s}"))
        .collect()
}

struct Env {
    cluster: Option<Cluster>,
    brokers: String,
    config: Config,
    policy: Arc<Policy>,
    start: i64,
}

impl Drop for Env {
    fn drop(&mut self) {
        if std::thread::panicking() {
            std::mem::forget(self.cluster.take());
        }
    }
}

fn env(policy_text: &str) -> Env {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let (config, policy) =
        guardrail::demo::demo_config_text(policy_text, &brokers, "127.0.0.1:0").expect("config");
    for topic in config.input_topics() {
        cluster.create_topic(&topic, PARTITIONS, 1).unwrap();
    }
    let t = &config.topics;
    for topic in [&t.flag_commands, &t.evaluations, &t.dlq, &t.state] {
        cluster.create_topic(topic, 1, 1).unwrap();
    }
    let window_ms = policy.window.size_ms;
    Env {
        cluster: Some(cluster),
        brokers,
        config,
        policy: Arc::new(policy),
        start: (wall_ms() / window_ms - i64::from(WINDOWS)) * window_ms,
    }
}

impl Env {
    fn producer(&self) -> FutureProducer {
        guardrail::kafka::producer_config(self.config.kafka.as_ref().unwrap())
            .set("linger.ms", "20")
            .create()
            .unwrap()
    }

    fn topic(&self, record: Source) -> &str {
        self.config
            .inputs
            .iter()
            .find(|i| i.record.as_deref() == Some(record.as_str()))
            .map(|i| i.topic.as_str())
            .unwrap()
    }
}

async fn send(producer: &FutureProducer, topic: &str, key: &str, payload: &[u8]) {
    let d = enqueue(producer, FutureRecord::to(topic).key(key).payload(payload))
        .await
        .unwrap();
    acknowledged(vec![d]).await.unwrap();
}

/// Product events as JSON, errors as Confluent Avro, support signals as guardrail Avro.
async fn produce_mixed(env: &Env, producer: &FutureProducer, events: &[SimEvent]) -> u64 {
    let schemas = SchemaRegistry::shipped().unwrap();
    let mut deliveries = Vec::new();
    for e in events {
        let payload = match e.source {
            Source::Product => to_json(e).unwrap().into_bytes(),
            Source::Errors => to_confluent(e).unwrap(),
            Source::Support => e.single_object(schemas.current_fingerprint(Source::Support)),
        };
        let key = e.user_id.as_deref().unwrap_or_default();
        deliveries.push(
            enqueue(
                producer,
                FutureRecord::to(env.topic(e.source))
                    .key(key)
                    .payload(&payload),
            )
            .await
            .unwrap(),
        );
    }
    acknowledged(deliveries).await.unwrap();
    events.len() as u64
}

fn metric(registry: &Registry, name: &str, label: Option<(&str, &str)>) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter())
        .filter(|m| {
            label.is_none_or(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == k && l.value() == v)
            })
        })
        .map(|m| m.get_counter().get_value() + m.get_gauge().get_value())
        .sum()
}

async fn wait_closed(
    registry: &Registry,
    engine: &tokio::task::JoinHandle<anyhow::Result<()>>,
    n: u64,
) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while (metric(registry, "guardrail_windows_closed_total", None) as u64) < n {
        assert!(!engine.is_finished(), "the engine stopped early");
        assert!(Instant::now() < deadline, "windows did not close");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Outputs are acknowledged a moment after the window is judged.
    tokio::time::sleep(Duration::from_secs(2)).await;
}

/// Waits until a schema fetch with `result` happened.
async fn wait_fetch(registry: &Registry, result: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(
        registry,
        "guardrail_schema_registry_fetches_total",
        Some(("result", result)),
    ) < 1.0
    {
        assert!(Instant::now() < deadline, "no {result} schema fetch");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn commands(env: &Env) -> Vec<FlagCommand> {
    let reader = OutputReader::commands().unwrap();
    read_topic(&env.brokers, &env.config.topics.flag_commands)
        .iter()
        .map(|m| reader.decode(m.payload().unwrap()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_and_confluent_inputs_decide_like_replay_and_registry_failures_dead_letter() {
    let t0 = Instant::now();
    let registry = MockRegistry::start(vec![
        (DEMO_PRODUCT_SCHEMA_ID, SHIPPED[0].2.to_string()),
        (DEMO_ERROR_SCHEMA_ID, SHIPPED[1].2.to_string()),
        // Registered, but first asked for while the registry is down.
        (103, SHIPPED[1].2.to_string()),
    ])
    .await
    .unwrap();
    let json = sections(&demo_inputs(DemoFormat::Json, ""));
    let confluent = sections(&demo_inputs(DemoFormat::AvroConfluent, &registry.url()));
    let text = format!(
        "{}{}{}{}",
        guardrail::demo::example_per_window(),
        json[0],
        confluent[1],
        confluent[2]
    );
    let env = env(&text);
    assert_eq!(
        env.config.input_topics(),
        [
            "product-events-json",
            "error-events-confluent",
            "support-signals"
        ]
    );
    let running = Running::start(&env.config, &env.policy).await;
    let (metrics, engine) = (&running.metrics, &running.engine);
    let producer = env.producer();
    let mut sim = Simulator::new(Scenario::demo(env.start, WINDOWS, SESSIONS));
    let mut produced = 0;
    let errors_topic = env.topic(Source::Errors).to_string();
    for w in 0..WINDOWS {
        let events = sim.next_window().unwrap();
        produced += produce_mixed(&env, &producer, &events).await;
        if w == 1 {
            // Id 102 was fetched once (the engine is caught up that far) ...
            wait_fetch(metrics, "ok").await;
            // ... then the registry goes down: known ids go on from the cache; a new id is
            // dead-lettered once its fetch times out (the input's timeout, 5 s).
            registry.set_available(false);
            let error = events.iter().find(|e| e.source == Source::Errors).unwrap();
            let mut unknown = to_confluent(error).unwrap();
            unknown[1..5].copy_from_slice(&103u32.to_be_bytes());
            send(&producer, &errors_topic, "down", &unknown).await;
            wait_fetch(metrics, "unavailable").await;
        }
        if w == 3 {
            registry.set_available(true);
            let mut missing =
                to_confluent(events.iter().find(|e| e.source == Source::Errors).unwrap()).unwrap();
            missing[1..5].copy_from_slice(&999u32.to_be_bytes());
            send(&producer, &errors_topic, "missing", &missing).await;
            wait_fetch(metrics, "not_found").await;
        }
    }
    wait_closed(metrics, engine, u64::from(WINDOWS - 1)).await;

    // The DLQ: exactly the two records whose schema could not be had.
    let dlq = read_topic(&env.brokers, &env.config.topics.dlq);
    let mut keys: Vec<_> = dlq
        .iter()
        .map(|m| {
            assert_eq!(header(m, "guardrail.reason"), Some("schema"));
            assert_eq!(
                header(m, "guardrail.source.topic"),
                Some(errors_topic.as_str())
            );
            let detail = header(m, "guardrail.detail").unwrap().to_string();
            (
                String::from_utf8_lossy(m.key().unwrap()).to_string(),
                detail,
            )
        })
        .collect();
    keys.sort();
    assert_eq!(keys.len(), 2, "{keys:#?}");
    assert_eq!(keys[0].0, "down");
    assert!(
        keys[0]
            .1
            .contains("writer schema id 103 could not be fetched"),
        "{}",
        keys[0].1
    );
    assert_eq!(keys[1].0, "missing");
    assert!(
        keys[1].1.contains("schema id 999 not found"),
        "{}",
        keys[1].1
    );
    let fetches = |result| {
        metric(
            metrics,
            "guardrail_schema_registry_fetches_total",
            Some(("result", result)),
        )
    };
    assert_eq!(fetches("ok"), 1.0, "id 102 fetched once, then cached");
    assert_eq!(fetches("unavailable"), 1.0);
    assert_eq!(fetches("not_found"), 1.0);
    assert_eq!(
        metric(metrics, "guardrail_dlq_total", None),
        2.0,
        "nothing else was dead-lettered"
    );

    // Decisions: those of replay on the same events as guardrail's own Avro.
    let run = commands(&env);
    assert!(
        run.iter()
            .any(|c| c.flag_key == FLAG && c.cohort == COHORT && c.action == Action::Pause),
        "the injected regression is paused: {run:#?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut again = Simulator::new(Scenario::demo(env.start, WINDOWS, SESSIONS));
    assert_eq!(
        guardrail::sim::write_ocf_files(&mut again, dir.path()).unwrap(),
        produced
    );
    let files = vec![
        (Source::Product, dir.path().join("product-events.avro")),
        (Source::Errors, dir.path().join("error-events.avro")),
        (Source::Support, dir.path().join("support-signals.avro")),
    ];
    let mut replayed = Vec::new();
    guardrail::replay::replay(env.policy.clone(), &files, wall_ms(), |j| {
        replayed.extend(j.command);
        Ok(())
    })
    .unwrap();
    let last_closed_end = env.start + i64::from(WINDOWS - 1) * env.policy.window.size_ms;
    let reference: BTreeSet<String> = replayed
        .into_iter()
        .filter(|c| c.window_end <= last_closed_end)
        .map(|c| c.command_id)
        .collect();
    let from_run: BTreeSet<String> = run.iter().map(|c| c.command_id.clone()).collect();
    assert_eq!(
        from_run, reference,
        "JSON + Confluent input decides as replay does"
    );

    running.stop().await;
    println!("{produced} events, {:.1}s", t0.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_spans_stop_the_injected_regression() {
    let otlp = sections(&demo_inputs(DemoFormat::Otlp, ""));
    let text = format!(
        "{}{}{}",
        otlp_policy(&guardrail::demo::example_per_window()),
        otlp[0],
        otlp[1]
    );
    let env = env(&text);
    let running = Running::start(&env.config, &env.policy).await;
    let (metrics, engine) = (&running.metrics, &running.engine);
    let producer = env.producer();
    let schemas = SchemaRegistry::shipped().unwrap();
    let mut sim = Simulator::new(Scenario::demo(env.start, WINDOWS, SESSIONS));
    let topic = env.config.inputs[0].topic.clone();
    let mut spans = 0;
    for _ in 0..WINDOWS {
        let events = sim.next_window().unwrap();
        let batch = to_spans(&events);
        spans += batch.len();
        let mut deliveries = Vec::new();
        for chunk in batch.chunks(50) {
            let payload = guardrail::ingest::otlp::encode_traces(chunk);
            deliveries.push(
                enqueue(
                    &producer,
                    FutureRecord::<[u8], _>::to(&topic).payload(&payload),
                )
                .await
                .unwrap(),
            );
        }
        for e in events.iter().filter(|e| e.source == Source::Support) {
            let payload = e.single_object(schemas.current_fingerprint(Source::Support));
            deliveries.push(
                enqueue(
                    &producer,
                    FutureRecord::to("support-signals")
                        .key("s")
                        .payload(&payload),
                )
                .await
                .unwrap(),
            );
        }
        acknowledged(deliveries).await.unwrap();
    }
    wait_closed(metrics, engine, u64::from(WINDOWS - 1)).await;
    let accepted = metric(
        metrics,
        "guardrail_events_total",
        Some(("status", "accepted")),
    );
    // Each span gives an exposure and an outcome (and errors): at least 2 per span.
    assert!(
        accepted >= 2.0 * (spans as f64) * 0.99,
        "{accepted} events from {spans} spans"
    );
    let run = commands(&env);
    let stops: Vec<_> = run
        .iter()
        .filter(|c| matches!(c.action, Action::Pause | Action::Rollback))
        .collect();
    assert!(
        stops
            .iter()
            .any(|c| c.flag_key == FLAG && c.cohort == COHORT),
        "the mobile-web regression is stopped: {run:#?}"
    );
    assert!(
        stops
            .iter()
            .all(|c| c.flag_key == FLAG && c.cohort == COHORT),
        "no other cohort is stopped: {stops:#?}"
    );
    assert_eq!(metric(metrics, "guardrail_dlq_total", None), 0.0);
    running.stop().await;
}
