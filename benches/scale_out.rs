//! The cost of scaling out (SPEC §11). Run: `cargo bench --bench scale_out` (prints
//! figures, asserts nothing; `SCALE_BENCH_ROUNDS=N`; `SCALE_BENCH_ONLY=latency`).
//!
//! 1. **Stage-1 throughput per core** against today's single engine, on one thread, on
//!    the same simulated events spread over 12 partitions per input by user (Kafka's
//!    keyed partitioning): the single engine decodes, aggregates, closes and judges
//!    every window; the ingest stage decodes and aggregates into one engine per
//!    partition, closes each partition's windows and encodes the partials. Rounds
//!    alternate, the median ratio is reported, for each delivery order
//!    (`SCALE_BENCH_RUN=1,64,512`, the default): runs of that many consecutive records
//!    of one partition, as a Kafka consumer receives record batches (`cargo bench
//!    --bench kafka_throughput` prints the runs librdkafka delivers); 1 interleaves
//!    record by record, the worst case for the ingest stage's cache.
//! 2. **Partials volume**: bytes per partial (flag × input partition × window) and per
//!    cohort in it.
//! 3. **Stage-2 merge cost per window**: decoding, offering, merging and judging all
//!    partials of a window (every flag).
//! 4. **Decision latency**, last partial acknowledged → the window's evaluations on
//!    their topic, through librdkafka's mock cluster and a judge in this process.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use guardrail::config::Config;
use guardrail::engine::Engine;
use guardrail::ingest::decode::SchemaRegistry;
use guardrail::model::Source;
use guardrail::policy::Policy;
use guardrail::rules::Rules;
use guardrail::scale::merge::Merger;
use guardrail::scale::partial::{self, Partial};
use guardrail::sim::{Scenario, Simulator};
use guardrail::window::aggregate::unit_hash;
use guardrail::window::watermark::PartitionKey;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::FutureRecord;

const PARTITIONS: i32 = 12;
const SIZE: i64 = 900_000;
const T0: i64 = 1_700_000_100_000 / SIZE * SIZE;

fn policy(config: &Config) -> Arc<Policy> {
    Arc::new(Policy::compile(config).expect("example config is valid"))
}

/// (partition, source, encoded record), in production order.
type Input = Vec<(PartitionKey, Vec<u8>)>;

fn events(start: i64, windows: u32, sessions: u32) -> Input {
    let registry = SchemaRegistry::shipped().expect("schemas");
    let mut sim = Simulator::new(Scenario::demo(start, windows, sessions));
    let mut out = Vec::new();
    while let Some(w) = sim.next_window() {
        for e in w {
            let user = e.user_id.as_deref().unwrap_or(&e.event_id);
            let p = PartitionKey {
                input: e.source.index() as u16,
                partition: (unit_hash(user.as_bytes()) % PARTITIONS as u64) as i32,
            };
            out.push((p, e.single_object(registry.current_fingerprint(e.source))));
        }
    }
    out
}

/// The events in the order a Kafka consumer gets them: runs of up to `run` consecutive
/// records of one partition (a fetched record batch), partitions taken in turn, each
/// partition's own order kept. `run = 1` interleaves record by record (the worst case
/// for the ingest stage's cache: every record may touch another partition's cells).
fn delivered(input: &Input, run: usize) -> Input {
    if run <= 1 {
        return input.clone();
    }
    let mut queues: BTreeMap<PartitionKey, std::collections::VecDeque<&(PartitionKey, Vec<u8>)>> =
        BTreeMap::new();
    for e in input {
        queues.entry(e.0).or_default().push_back(e);
    }
    let mut out = Vec::with_capacity(input.len());
    while out.len() < input.len() {
        for q in queues.values_mut() {
            for e in q.drain(..run.min(q.len())) {
                out.push(e.clone());
            }
        }
    }
    out
}

fn topic(p: PartitionKey) -> &'static str {
    match Source::ALL[usize::from(p.input)] {
        Source::Product => "product-events",
        Source::Errors => "error-events",
        Source::Support => "support-signals",
    }
}

/// Today's engine: everything, judged.
fn single(policy: &Arc<Policy>, input: &Input, now: i64) -> usize {
    let mut engine = Engine::new(policy.clone(), false).expect("engine");
    let mut offsets: BTreeMap<PartitionKey, i64> = BTreeMap::new();
    for (p, bytes) in input {
        let o = offsets.entry(*p).or_default();
        engine.ingest(*p, *o, bytes, now, false);
        *o += 1;
    }
    engine.finish(now).len()
}

/// The ingest stage: an engine per partition, every window closed, partials encoded.
fn ingest(policy: &Arc<Policy>, input: &Input, now: i64) -> Vec<Vec<u8>> {
    let mut engines: BTreeMap<PartitionKey, (Engine, i64)> = BTreeMap::new();
    for (p, bytes) in input {
        let (engine, o) = engines
            .entry(*p)
            .or_insert_with(|| (Engine::new(policy.clone(), false).expect("engine"), 0));
        engine.ingest(*p, *o, bytes, now, false);
        *o += 1;
    }
    let aggregated = Instant::now();
    let mut out = Vec::new();
    for (p, (engine, read)) in &mut engines {
        for w in engine.windows_mut().close_all() {
            for (fi, flag) in w.flags.into_iter().enumerate() {
                let f = &policy.flags[fi];
                out.push(partial::encode(&Partial {
                    flag_key: f.key.clone(),
                    policy_version: f.policy_version.clone(),
                    window_start: w.start,
                    window_end: w.end,
                    topic: topic(*p).to_string(),
                    partition: p.partition,
                    first_offset: 0,
                    read_until: *read,
                    late_events: flag.late_events,
                    produced_at: now,
                    instance: "bench".into(),
                    cohorts: flag.cohorts,
                }));
            }
        }
    }
    if std::env::var_os("SCALE_BENCH_SPLIT").is_some() {
        eprintln!(
            "close + encode {:.1} ms",
            aggregated.elapsed().as_secs_f64() * 1e3
        );
    }
    out
}

/// Stage-1 throughput per core: rounds alternate the single engine and the ingest stage
/// on the same input; prints the median ratio. Returns the last round's partials.
fn stage_one(
    policy: &Arc<Policy>,
    input: &Input,
    now: i64,
    rounds: usize,
    run: usize,
) -> Vec<Vec<u8>> {
    let n = input.len() as f64;
    let (mut single_rates, mut ingest_rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let mut partials = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        let judged = single(policy, input, now);
        let single_rate = n / t.elapsed().as_secs_f64();
        let t = Instant::now();
        partials = ingest(policy, input, now);
        let ingest_rate = n / t.elapsed().as_secs_f64();
        assert!(judged > 0);
        single_rates.push(single_rate);
        ingest_rates.push(ingest_rate);
        ratios.push(ingest_rate / single_rate);
    }
    println!(
        "stage-1 throughput per core, runs of {run} record(s) per partition: single engine \
         {:.2} M events/s, ingest stage {:.2} M events/s; ingest / single median {:.0}% \
         (rounds: {})",
        median(single_rates) / 1e6,
        median(ingest_rates) / 1e6,
        median(ratios.clone()) * 100.0,
        ratios
            .iter()
            .map(|r| format!("{:.0}%", r * 100.0))
            .collect::<Vec<_>>()
            .join(" ")
    );
    partials
}

fn expected() -> BTreeSet<(String, i32)> {
    ["product-events", "error-events", "support-signals"]
        .iter()
        .flat_map(|t| (0..PARTITIONS).map(move |p| (t.to_string(), p)))
        .collect()
}

/// Stage 2 over encoded partials: (windows judged, evaluations).
fn judge(policy: &Arc<Policy>, partials: &[Vec<u8>], now: i64) -> (usize, usize) {
    let mut merger = Merger::new(policy.clone());
    merger.expect(expected());
    let mut rules = Rules::new(policy.clone());
    let mut windows = 0;
    let mut evaluations = 0;
    for (i, bytes) in partials.iter().enumerate() {
        merger.offer_encoded(bytes, (0, i as i64), now);
    }
    for r in merger.due(now) {
        windows += 1;
        evaluations += rules
            .decide_flag(r.flag, &r.closed, (r.start, r.end), now)
            .len();
    }
    (windows, evaluations)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn percentile(v: &[f64], q: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1]
}

fn main() {
    if std::env::var("SCALE_BENCH_ONLY").as_deref() == Ok("latency") {
        return latency();
    }
    let rounds: usize = std::env::var("SCALE_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let config = Config::parse(include_str!("../config/guardrail.toml")).expect("config");
    let policy = policy(&config);
    let windows = 4;
    let sessions = std::env::var("SCALE_BENCH_SESSIONS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(20_000);
    let input = events(T0, windows, sessions);
    let now = T0 + i64::from(windows + 1) * SIZE;
    println!(
        "{} events, {windows} windows, {PARTITIONS} partitions per input, {} flags",
        input.len(),
        policy.flags.len()
    );

    // 1. Stage-1 throughput per core, for each delivery order.
    let runs: Vec<usize> = std::env::var("SCALE_BENCH_RUN")
        .ok()
        .map(|r| r.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .filter(|r: &Vec<usize>| !r.is_empty())
        .unwrap_or_else(|| vec![1, 64, 512]);
    let mut partials = Vec::new();
    for &run in &runs {
        let input = delivered(&input, run);
        partials = stage_one(&policy, &input, now, rounds, run);
    }

    // 2. Partials volume.
    let total: usize = partials.iter().map(Vec::len).sum();
    let decoded: Vec<Partial> = partials
        .iter()
        .map(|b| partial::decode(b).expect("partial"))
        .collect();
    let cohorts: usize = decoded.iter().map(|p| p.cohorts.len().max(1)).sum();
    let in_memory: usize = decoded
        .iter()
        .flat_map(|p| &p.cohorts)
        .map(|(_, cell)| cell[0].bytes() + cell[1].bytes())
        .sum();
    println!(
        "partials decoded in memory: {in_memory} bytes, {:.1} times their encoding (the \
         judge holds them encoded until the close)",
        in_memory as f64 / partials.iter().map(Vec::len).sum::<usize>() as f64
    );
    let per_window = total as f64 / f64::from(windows);
    let mut by_flag: BTreeMap<&str, (usize, usize, usize)> = BTreeMap::new();
    for (p, b) in decoded.iter().zip(&partials) {
        let e = by_flag.entry(&p.flag_key).or_default();
        e.0 += 1;
        e.1 += b.len();
        e.2 += p.cohorts.len();
    }
    println!(
        "partials: {} records, {total} bytes; per window {:.0} KiB; per partial (flag x \
         partition x window) {:.0} bytes; per cohort in a partial {:.0} bytes",
        partials.len(),
        per_window / 1024.0,
        total as f64 / partials.len() as f64,
        total as f64 / cohorts as f64
    );
    for (flag, (k, bytes, c)) in &by_flag {
        println!(
            "  {flag}: {:.0} bytes per partial, {:.1} cohorts per partial ({} metrics)",
            *bytes as f64 / *k as f64,
            *c as f64 / *k as f64,
            policy
                .flags
                .iter()
                .find(|f| f.key == *flag)
                .map_or(0, |f| f.metric_ids.len())
        );
    }

    // 3. Stage-2 merge cost.
    let mut costs = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        let (judged, evaluations) = judge(&policy, &partials, now);
        let per_window =
            t.elapsed().as_secs_f64() / judged as f64 * f64::from(policy.flags.len() as u32);
        assert!(evaluations > 0);
        costs.push(per_window);
    }
    let per_partial = median(costs.clone()) / (partials.len() as f64 / f64::from(windows));
    println!(
        "stage-2: decode + merge + judge {:.1} ms per window (all {} flags, {} partials), \
         {:.1} µs per partial",
        median(costs) * 1e3,
        policy.flags.len(),
        partials.len() / windows as usize,
        per_partial * 1e6
    );

    // 4. Decision latency through Kafka.
    latency();
}

fn latency() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let cluster = MockCluster::new(1).expect("mock cluster");
        let brokers = cluster.bootstrap_servers();
        let (config, policy) = guardrail::demo::demo_config_text(
            include_str!("../config/guardrail.toml"),
            &brokers,
            "127.0.0.1:0",
        )
        .unwrap();
        let policy = Arc::new(policy);
        let t = config.topics.clone();
        for topic in [&t.product_events, &t.error_events, &t.support_signals] {
            cluster.create_topic(topic, PARTITIONS, 1).unwrap();
        }
        for topic in [&t.flag_commands, &t.evaluations, &t.dlq] {
            cluster.create_topic(topic, 1, 1).unwrap();
        }
        cluster.create_topic(&t.state, 3, 1).unwrap();
        cluster.create_topic(&t.partials, 4, 1).unwrap();
        // 40 windows of traffic, their partials computed up front, by window.
        let windows = 40u32;
        let now = guardrail::clock::wall_ms();
        let start = (now / SIZE - i64::from(windows) - 1) * SIZE;
        let input = events(start, windows, 5_000);
        let mut by_window: BTreeMap<i64, Vec<(String, Vec<u8>)>> = BTreeMap::new();
        for bytes in ingest(&policy, &input, now) {
            let p = partial::decode(&bytes).unwrap();
            by_window
                .entry(p.window_start)
                .or_default()
                .push((p.flag_key, bytes));
        }
        let served = guardrail::http::start("127.0.0.1:0", &policy)
            .await
            .unwrap();
        let judge = guardrail::app::spawn_stage(
            &served,
            guardrail::app::Stage::Judge,
            config.clone(),
            policy.clone(),
            Duration::from_secs(5),
            None,
        );
        let k = config.kafka.clone().unwrap();
        let producer: rdkafka::producer::FutureProducer =
            guardrail::kafka::producer_config(&k).create().unwrap();
        let reader: BaseConsumer = guardrail::kafka::tail_reader_config(&k, "bench-reader")
            .set("fetch.wait.max.ms", "5")
            .create()
            .unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset(&t.evaluations, 0, rdkafka::Offset::Beginning)
            .unwrap();
        reader.assign(&tpl).unwrap();
        let evals = guardrail::kafka::OutputReader::evaluations().unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await; // the judge joins its group
        let mut latencies = Vec::new();
        // A partition's first window may come after another's (no data before): the
        // judge closes the earlier window when that partition reports its first. Only
        // windows every partition reported are timed.
        let complete: BTreeSet<i64> = by_window
            .iter()
            .filter(|(_, records)| records.len() == expected().len() * policy.flags.len())
            .map(|(w, _)| *w)
            .collect();
        for (w, records) in &by_window {
            for (key, bytes) in records {
                producer
                    .send(
                        FutureRecord::to(&t.partials).key(key).payload(bytes),
                        Duration::from_secs(5),
                    )
                    .await
                    .map_err(|(e, _)| e)
                    .unwrap();
            }
            let sent = Instant::now();
            if !complete.contains(w) {
                continue;
            }
            // Every flag's evaluations of this window.
            let mut flags = BTreeSet::new();
            while flags.len() < policy.flags.len() {
                assert!(
                    sent.elapsed() < Duration::from_secs(30),
                    "window {w} not judged"
                );
                let Some(m) = tokio::task::block_in_place(|| reader.poll(Duration::from_millis(1)))
                else {
                    continue;
                };
                let m = m.unwrap();
                let e: guardrail::records::WindowEvaluation =
                    evals.decode(m.payload().unwrap()).unwrap();
                if e.window_start == *w {
                    flags.insert(e.flag_key);
                }
            }
            latencies.push(sent.elapsed().as_secs_f64());
        }
        let ms = |q| percentile(&latencies, q) * 1e3;
        println!(
            "decision latency, last partial acknowledged -> the window's evaluations read \
             back ({} windows, {} partials each): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            latencies.len(),
            by_window.values().next().map_or(0, Vec::len),
            ms(0.5),
            ms(0.99),
            ms(1.0)
        );
        let _ = served.stop.send(true);
        judge.await.unwrap().unwrap();
    });
}
