//! End-to-end ingestion through Kafka: the engine (`run`'s loop) against a plain
//! rdkafka consumer reading the same pre-produced messages from librdkafka's mock
//! cluster; and the decision latency (window closed → command acknowledged).
//! Run: `cargo bench --bench kafka_throughput` (prints a table, and per engine round the
//! CPU each thread used on stderr; asserts nothing). `KAFKA_BENCH_DELIVERY=exactly-once`
//! runs the engine with one Kafka transaction per window close; `KAFKA_BENCH_ROUNDS=N`;
//! `KAFKA_BENCH_STAGE=ingest` runs the ingest stage (SPEC §11) after the engine in each round.
//!
//! Both sides use the engine's consumer settings and a fresh consumer group, and both
//! are timed from their first message to their last, so group-join time is excluded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use guardrail::config::{Config, KafkaConfig};
use guardrail::demo::demo_config;
use guardrail::ingest::decode::SchemaRegistry;
use guardrail::policy::Policy;
use guardrail::sim::{Scenario, Simulator};
use prometheus::Registry;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::FutureProducer;

/// 32 product partitions keep every partition under the mock's 5 MiB retention at
/// 72,000 sessions per window (a partition over it would drop messages, and a round
/// would then report that it consumed fewer than were produced).
const PARTITIONS: [i32; 3] = [32, 16, 16];
const WINDOWS: u32 = 8;
const SESSIONS: u32 = 72_000;
const ROUNDS: u32 = 5;

/// User + system CPU seconds in a /proc `stat` file (fields 14 and 15 after the
/// parenthesised command name; USER_HZ is 100 on every Linux this runs on), with the
/// command name; `None` where the file does not exist.
fn stat_cpu(path: &std::path::Path) -> Option<(String, f64)> {
    let stat = std::fs::read_to_string(path).ok()?;
    let (head, rest) = stat.rsplit_once(')')?;
    let name = head.split_once('(').map_or("?", |(_, n)| n).to_string();
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    Some((name, (f.get(11)? + f.get(12)?) / 100.0))
}

/// CPU seconds this process has used so far (all threads, exited ones included).
fn cpu_seconds() -> f64 {
    stat_cpu("/proc/self/stat".as_ref()).map_or(0.0, |(_, cpu)| cpu)
}

/// CPU seconds per live thread name; numbered threads (rdk:broker1, ...) grouped.
fn thread_cpu() -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    let tasks = std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten();
    for (name, cpu) in tasks.filter_map(|t| stat_cpu(&t.path().join("stat"))) {
        let key = name
            .trim_end_matches(|c: char| c.is_ascii_digit())
            .to_string();
        *out.entry(key).or_insert(0.0) += cpu;
    }
    out
}

fn counter(registry: &Registry, name: &str) -> f64 {
    guardrail::telemetry::counter_total(registry, name)
}

/// Quantile of a Prometheus histogram family, as the upper bound of its bucket.
fn histogram_quantile(registry: &Registry, name: &str, q: f64) -> Option<(u64, f64)> {
    let fam = registry.gather().into_iter().find(|f| f.name() == name)?;
    let h = fam.get_metric().first()?.get_histogram();
    let n = h.get_sample_count();
    let rank = (q * n as f64).ceil() as u64;
    let le = h
        .get_bucket()
        .iter()
        .find(|b| b.cumulative_count() >= rank.max(1))
        .map(|b| b.upper_bound())?;
    Some((n, le))
}

/// One engine run in a fresh group until it has consumed `total`; its rate and registry.
async fn engine_round(
    config: Config,
    policy: Arc<Policy>,
    total: u64,
    stage: guardrail::app::Stage,
) -> (f64, f64, Registry) {
    let served = guardrail::http::start("127.0.0.1:0", &policy)
        .await
        .expect("http");
    let registry = served.registry.clone();
    let engine = guardrail::app::spawn_stage(
        &served,
        stage,
        config,
        policy,
        Duration::from_secs(10),
        None,
    );
    let consumed = || counter(&registry, "guardrail_events_total") as u64;
    let deadline = Instant::now() + Duration::from_secs(300);
    while consumed() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let (first, cpu0) = (Instant::now(), cpu_seconds());
    let threads0 = thread_cpu();
    // Poll sparingly: gathering the registry costs CPU the engine would compete for.
    while consumed() < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let secs = first.elapsed().as_secs_f64();
    if consumed() < total {
        eprintln!("engine consumed only {} of {total} events", consumed());
    }
    let (rate, cores) = (total as f64 / secs, (cpu_seconds() - cpu0) / secs);
    for (name, cpu) in thread_cpu() {
        let busy = (cpu - threads0.get(&name).copied().unwrap_or(0.0)) / secs;
        if busy > 0.02 {
            eprintln!("  thread {name}: {busy:.2} cores");
        }
    }
    let _ = served.stop.send(true);
    engine.await.expect("engine task").expect("engine");
    let _ = served.server.await;
    (rate, cores, registry)
}

/// A plain consumer's rate and busy cores; it also prints how librdkafka orders the
/// messages: the mean run of consecutive messages from one partition (what
/// `benches/scale_out.rs` feeds its stages in, `SCALE_BENCH_RUN`).
async fn plain_consumer(k: &KafkaConfig, topics: &[&str], total: u64, round: u32) -> (f64, f64) {
    let mut k = k.clone();
    k.group_id = format!("bench-plain-{round}");
    let c: StreamConsumer = guardrail::kafka::consumer_config(&k)
        .create()
        .expect("consumer");
    c.subscribe(topics).expect("subscribe");
    let mut n = 0u64;
    let mut first = None;
    let (mut runs, mut last): (Vec<u64>, Option<(String, i32)>) = (Vec::new(), None);
    while n < total {
        let m = c.recv().await.expect("message");
        first.get_or_insert_with(|| (Instant::now(), cpu_seconds()));
        std::hint::black_box(rdkafka::Message::payload(&m));
        let at = (rdkafka::Message::topic(&m), rdkafka::Message::partition(&m));
        match &last {
            Some((t, p)) if t == at.0 && *p == at.1 => *runs.last_mut().expect("a run") += 1,
            _ => {
                runs.push(1);
                last = Some((at.0.to_string(), at.1));
            }
        }
        n += 1;
    }
    let (t0, cpu0) = first.expect("at least one message");
    let secs = t0.elapsed().as_secs_f64();
    runs.sort_unstable();
    let q = |f: f64| runs[((runs.len() as f64 * f) as usize).min(runs.len() - 1)];
    let in_long: u64 = runs.iter().filter(|r| **r >= 64).sum();
    eprintln!(
        "round {round}: delivery order: {} runs of one partition's messages, mean {:.0}, median {}, p10 {}, p90 {}; {:.0}% of the messages in runs of 64 or more",
        runs.len(),
        n as f64 / runs.len() as f64,
        q(0.5),
        q(0.1),
        q(0.9),
        in_long as f64 / n as f64 * 100.0
    );
    (total as f64 / secs, (cpu_seconds() - cpu0) / secs)
}

fn main() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let cluster = MockCluster::new(1).expect("mock cluster");
        let (config, policy) = demo_config(None, &cluster.bootstrap_servers(), "127.0.0.1:0").expect("config");
        let t = config.topics.clone();
        for (topic, parts) in [&t.product_events, &t.error_events, &t.support_signals].into_iter().zip(PARTITIONS) {
            cluster.create_topic(topic, parts, 1).expect("topic");
        }
        for topic in [&t.flag_commands, &t.evaluations, &t.dlq, &t.state] {
            cluster.create_topic(topic, 1, 1).expect("topic");
        }
        let k = config.kafka.clone().expect("kafka");
        let producer: FutureProducer = guardrail::kafka::producer_config(&k).set("linger.ms", "20").create().expect("producer");
        let window_ms = policy.window.size_ms;
        let start = (guardrail::clock::wall_ms() / window_ms - i64::from(WINDOWS)) * window_ms;
        let mut sim = Simulator::new(Scenario::demo(start, WINDOWS, SESSIONS));
        let schemas = SchemaRegistry::shipped().expect("schemas");
        let mut total = 0u64;
        let t0 = Instant::now();
        while let Some(events) = sim.next_window() {
            total += guardrail::kafka::produce_events(&producer, &t, &schemas, &events).await.expect("produce");
        }
        println!("pre-produced {total} events in {:.1}s ({:?} partitions)", t0.elapsed().as_secs_f64(), PARTITIONS);

        let inputs = [t.product_events.as_str(), t.error_events.as_str(), t.support_signals.as_str()];
        let policy = Arc::new(policy);
        let (mut plain, mut engine) = (Vec::new(), Vec::new());
        let (mut plain_cores, mut engine_cores) = (Vec::new(), Vec::new());
        let (mut ingest, mut ingest_cores): (Vec<f64>, Vec<f64>) = (Vec::new(), Vec::new());
        let mut last = None;
        let rounds = std::env::var("KAFKA_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(ROUNDS);
        for round in 0..rounds {
            let (rate, cores) = plain_consumer(&k, &inputs, total, round).await;
            eprintln!("round {round}: plain {rate:.0} events/s");
            plain.push(rate);
            plain_cores.push(cores);
            // Each engine round gets its own group and output topics: a fresh start.
            let mut config = config.clone();
            let kafka = config.kafka.as_mut().expect("kafka");
            kafka.group_id = format!("bench-engine-{round}");
            // `KAFKA_BENCH_DELIVERY=exactly-once`: one transaction per window close.
            if std::env::var("KAFKA_BENCH_DELIVERY").is_ok_and(|d| d == "exactly-once") {
                kafka.delivery = guardrail::config::Delivery::ExactlyOnce;
                kafka.transactional_id = Some(format!("bench-engine-{round}"));
            }
            config.topics.flag_commands = format!("bench-commands-{round}");
            config.topics.evaluations = format!("bench-evaluations-{round}");
            config.topics.state = format!("bench-state-{round}");
            for topic in [&config.topics.flag_commands, &config.topics.evaluations, &config.topics.state] {
                cluster.create_topic(topic, 1, 1).expect("topic");
            }
            config.topics.partials = format!("bench-partials-{round}");
            cluster.create_topic(&config.topics.partials, 4, 1).expect("topic");
            let (rate, cores, registry) = engine_round(config.clone(), policy.clone(), total, guardrail::app::Stage::Both).await;
            eprintln!("round {round}: engine {rate:.0} events/s");
            engine.push(rate);
            engine_cores.push(cores);
            last = Some(registry);
            // `KAFKA_BENCH_STAGE=ingest`: the ingest stage (SPEC §11) too, in its own group.
            if std::env::var("KAFKA_BENCH_STAGE").is_ok_and(|s| s == "ingest") {
                config.kafka.as_mut().expect("kafka").group_id = format!("bench-ingest-{round}");
                let (rate, cores, _) = engine_round(config, policy.clone(), total, guardrail::app::Stage::Ingest).await;
                eprintln!("round {round}: ingest stage {rate:.0} events/s ({:.0}% of the engine)", rate / engine.last().unwrap() * 100.0);
                ingest.push(rate);
                ingest_cores.push(cores);
            }
        }
        // Per round, before the medians below sort the rates.
        let ratios: Vec<f64> = ingest.iter().zip(&engine).map(|(i, e)| i / e * 100.0).collect();
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let fmt = |v: &[f64]| v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(", ");
        let fmt2 = |v: &[f64]| v.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(", ");
        println!("\nplain rounds: {} events/s, {} cores busy (broker included)", fmt(&plain), fmt2(&plain_cores));
        println!("engine rounds: {} events/s, {} cores busy (broker included)", fmt(&engine), fmt2(&engine_cores));
        let (p, e) = (median(&mut plain), median(&mut engine));
        let delivery = std::env::var("KAFKA_BENCH_DELIVERY").unwrap_or_else(|_| "at-least-once".into());
        println!("\n| path (median of {rounds}, {delivery}) | events/s |\n|---|---|");
        println!("| plain rdkafka consumer (ingestion limit) | {p:.0} |");
        println!("| guardrail engine (decode, window, decide, publish, commit) | {e:.0} |");
        println!("| ratio | {:.0}% |", e / p * 100.0);
        if !ingest.is_empty() {
            println!("| ingest stage (decode, window per partition, partials, commit): {} events/s, {} cores | ingest / engine per round: {} % |", fmt(&ingest), fmt2(&ingest_cores), fmt(&ratios));
        }
        let Some(registry) = last else { return };
        println!("last round: windows closed {}, commands {}", counter(&registry, "guardrail_windows_closed_total"), counter(&registry, "guardrail_commands_total"));
        for q in [0.5, 0.99] {
            if let Some((n, le)) = histogram_quantile(&registry, "guardrail_decision_latency_seconds", q) {
                println!("decision latency p{:.0}: <= {:.0} ms (bucket bound, {n} commands)", q * 100.0, le * 1000.0);
            }
        }
        if let Some((n, le)) = histogram_quantile(&registry, "guardrail_produce_latency_seconds", 0.99) {
            println!("window outputs (commands + evaluations) acknowledged p99: <= {:.0} ms ({n} window closes)", le * 1000.0);
        }
    });
}
