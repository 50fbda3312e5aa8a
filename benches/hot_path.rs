//! Hot-path benchmarks: decode + aggregate per event (single core), and the memory
//! held per active cell. Run: `cargo bench --bench hot_path`.
//! End-to-end replay throughput: `guardrail generate` + `guardrail replay` (README).

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use guardrail::config::Config;
use guardrail::engine::Engine;
use guardrail::ingest::decode::SchemaRegistry;
use guardrail::model::Source;
use guardrail::policy::Policy;
use guardrail::sim::{Scenario, Simulator};
use guardrail::window::watermark::PartitionKey;

fn policy() -> Arc<Policy> {
    let config =
        Config::parse(include_str!("../config/guardrail.toml")).expect("example config parses");
    Arc::new(Policy::compile(&config).expect("example config is valid"))
}

fn events(n_windows: u32, sessions: u32) -> Vec<(Source, Vec<u8>)> {
    let registry = SchemaRegistry::shipped().expect("schemas");
    let mut sim = Simulator::new(Scenario::demo(
        1_700_000_100_000 / 900_000 * 900_000,
        n_windows,
        sessions,
    ));
    let mut out = Vec::new();
    while let Some(w) = sim.next_window() {
        out.extend(w.into_iter().map(|e| {
            (
                e.source,
                e.single_object(registry.current_fingerprint(e.source)),
            )
        }));
    }
    out
}

/// Feeds every record to the engine as one partition, offsets in order.
fn ingest_all(engine: &mut Engine, input: &[(Source, Vec<u8>)], now: i64) {
    for (i, (source, bytes)) in input.iter().enumerate() {
        let p = PartitionKey {
            input: source.index() as u16,
            partition: 0,
        };
        engine.ingest(p, i as i64, bytes, now, false);
    }
}

fn bench(c: &mut Criterion) {
    let policy = policy();
    let input = events(2, 20_000);
    let now = 1_700_000_100_000 + 3 * 900_000;
    let mut g = c.benchmark_group("hot_path");
    g.throughput(Throughput::Elements(input.len() as u64));
    g.bench_function("decode_and_aggregate", |b| {
        b.iter_batched_ref(
            || Engine::new(policy.clone(), false).expect("engine"),
            |engine| {
                ingest_all(engine, &input, now);
            },
            criterion::BatchSize::LargeInput,
        )
    });
    g.bench_function("decode_only", |b| {
        let registry = SchemaRegistry::shipped().expect("schemas");
        let mut scratch = Vec::new();
        b.iter(|| {
            let mut n = 0usize;
            for (source, bytes) in &input {
                if let Ok(ev) = registry.decode(*source, bytes, &mut scratch) {
                    n += ev.flags.len();
                }
            }
            n
        })
    });
    g.finish();

    // Memory per active cell, printed once (a measurement, not a timing).
    let mut engine = Engine::new(policy, false).expect("engine");
    ingest_all(&mut engine, &input, now);
    let w = engine.windows();
    println!(
        "memory: {} active cells (one per variant) in {} open windows, {} bytes of aggregates = {:.1} KiB per cell",
        w.active_cells(),
        w.open_windows(),
        w.cell_bytes(),
        w.cell_bytes() as f64 / w.active_cells().max(1) as f64 / 1024.0
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
