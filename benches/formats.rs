//! Input formats on one core: events per second for each format, decoding alone and
//! decoding + aggregating (the engine's hot path), next to guardrail's own Avro.
//! Run: `cargo bench --bench formats` (prints a table; `--quick` for fewer rounds).
//!
//! The same simulated traffic (the demo's two flags, 2 windows × 20,000 sessions) in
//! each format: guardrail's single-object Avro; the same records behind a Schema
//! Registry (Confluent framing, read through a mapping); Segment/Sentry-style JSON;
//! OTLP spans (one span per session, 50 per export request, protobuf and JSON).
//! Support signals stay Avro and are left out of every row.

use std::sync::Arc;
use std::time::Instant;

use guardrail::config::Config;
use guardrail::engine::Engine;
use guardrail::ingest::decode::{SHIPPED, SchemaRegistry};
use guardrail::ingest::foreign::{
    DEMO_ERROR_SCHEMA_ID, DEMO_PRODUCT_SCHEMA_ID, DemoFormat, demo_inputs, otlp_policy,
    to_confluent, to_json, to_spans,
};
use guardrail::ingest::input;
use guardrail::ingest::map::json;
use guardrail::ingest::otlp;
use guardrail::model::Source;
use guardrail::policy::Policy;
use guardrail::sim::{Scenario, SimEvent, Simulator};
use guardrail::window::watermark::PartitionKey;

const START: i64 = 1_700_000_100_000 / 900_000 * 900_000;

fn events() -> Vec<SimEvent> {
    let mut sim = Simulator::new(Scenario::demo(START, 2, 20_000));
    let mut out = Vec::new();
    while let Some(w) = sim.next_window() {
        out.extend(w.into_iter().filter(|e| e.source != Source::Support));
    }
    out
}

struct Case {
    name: &'static str,
    config: Config,
    /// (input, bytes) in order.
    records: Vec<(u16, Vec<u8>)>,
    /// Events the records carry (OTLP: exposure + outcome + errors per span).
    events: u64,
}

fn setup(format: DemoFormat, example: &str, url: &str) -> Config {
    let text = if format == DemoFormat::Otlp {
        otlp_policy(example)
    } else {
        example.to_string()
    };
    Config::parse(&format!("{text}{}", demo_inputs(format, url))).expect("config")
}

fn cases(sim: &[SimEvent]) -> Vec<Case> {
    let example = guardrail::demo::EXAMPLE_CONFIG;
    let schemas = SchemaRegistry::shipped().expect("schemas");
    let mut out = Vec::new();
    out.push(Case {
        name: "avro (guardrail's schemas, today's decoder)",
        config: Config::parse(example).unwrap(),
        records: sim
            .iter()
            .map(|e| {
                (
                    e.source.index() as u16,
                    e.single_object(schemas.current_fingerprint(e.source)),
                )
            })
            .collect(),
        events: sim.len() as u64,
    });
    out.push(Case {
        name: "avro-confluent (same records, mapping)",
        config: setup(DemoFormat::AvroConfluent, example, "http://registry:8081"),
        records: sim
            .iter()
            .map(|e| (e.source.index() as u16, to_confluent(e).unwrap()))
            .collect(),
        events: sim.len() as u64,
    });
    out.push(Case {
        name: "json (Segment/Sentry-style, mapping)",
        config: setup(DemoFormat::Json, example, ""),
        records: sim
            .iter()
            .map(|e| (e.source.index() as u16, to_json(e).unwrap().into_bytes()))
            .collect(),
        events: sim.len() as u64,
    });
    if std::env::var("FORMATS_ONLY").is_ok_and(|o| !o.contains("otlp")) {
        return out;
    }
    let spans = to_spans(sim);
    let count = |bytes: &[Vec<u8>], enc| {
        let mut n = 0;
        for b in bytes {
            let arena = typed_arena::Arena::new();
            let mut evs = Vec::new();
            otlp::decode(otlp::Signal::Traces, enc, b, &arena, &mut evs).unwrap();
            n += evs.len() as u64;
        }
        n
    };
    let proto: Vec<Vec<u8>> = spans.chunks(50).map(otlp::encode_traces).collect();
    let events = count(&proto, otlp::Encoding::Protobuf);
    out.push(Case {
        name: "otlp protobuf (spans, preset)",
        config: setup(DemoFormat::Otlp, example, ""),
        records: proto.into_iter().map(|b| (0, b)).collect(),
        events,
    });
    let js: Vec<Vec<u8>> = spans.chunks(50).map(otlp::encode_traces_json).collect();
    let mut config = setup(DemoFormat::Otlp, example, "");
    config.inputs[0].encoding = Some("json".into());
    out.push(Case {
        name: "otlp json (spans, preset)",
        config,
        records: js.into_iter().map(|b| (0, b)).collect(),
        events: count_json(&spans),
    });
    out
}

fn count_json(spans: &[otlp::SpanSpec]) -> u64 {
    let mut n = 0;
    for chunk in spans.chunks(50) {
        let b = otlp::encode_traces_json(chunk);
        let arena = typed_arena::Arena::new();
        let mut evs = Vec::new();
        otlp::decode(
            otlp::Signal::Traces,
            otlp::Encoding::Json,
            &b,
            &arena,
            &mut evs,
        )
        .unwrap();
        n += evs.len() as u64;
    }
    n
}

/// Decodes every record of a case into events (no aggregation); returns the events.
fn decode_only(case: &Case, inputs: &[input::InputSpec], schemas: &SchemaRegistry) -> u64 {
    let mut n = 0u64;
    let mut scratch = Vec::new();
    let mut text = String::new();
    let plans: Vec<(u32, guardrail::ingest::map::avro::Plan)> = inputs
        .iter()
        .filter_map(|i| i.mapping.clone())
        .flat_map(|m| {
            [
                (DEMO_PRODUCT_SCHEMA_ID, SHIPPED[0].2),
                (DEMO_ERROR_SCHEMA_ID, SHIPPED[1].2),
            ]
            .map(|(id, s)| (id, guardrail::engine::resolve(&m, id, s).map(|(p, _)| p)))
        })
        .filter_map(|(id, p)| p.ok().map(|p| (id, p)))
        .collect();
    for (input, bytes) in &case.records {
        let spec = &inputs[usize::from(*input)];
        match &spec.format {
            input::Format::Avro => {
                if schemas.decode(spec.record, bytes, &mut scratch).is_ok() {
                    n += 1;
                }
            }
            input::Format::AvroConfluent => {
                let m = spec.mapping.as_ref().unwrap();
                let (id, datum) = guardrail::ingest::confluent::split_frame(bytes).unwrap();
                let plan = &plans
                    .iter()
                    .find(|(pid, p)| *pid == id && p.found.len() == m.slots())
                    .unwrap()
                    .1;
                let mut caps = m.captures();
                text.clear();
                plan.decode(datum, &mut caps).unwrap();
                if let Ok(Some(_)) = m.apply_with(&caps, &plan.units, &mut text, (0, 0), |e| {
                    std::hint::black_box(e).timestamp
                }) {
                    n += 1;
                }
            }
            input::Format::Json => {
                let m = spec.mapping.as_ref().unwrap();
                let mut caps = m.captures();
                text.clear();
                json::project(bytes, m.trie(), &mut caps, &mut text).unwrap();
                if let Ok(Some(_)) = m.apply_with(&caps, &[], &mut text, (0, 0), |e| {
                    std::hint::black_box(e).timestamp
                }) {
                    n += 1;
                }
            }
            input::Format::Otlp { encoding, .. } => {
                let enc = match encoding {
                    input::OtlpEncoding::Protobuf => otlp::Encoding::Protobuf,
                    input::OtlpEncoding::Json => otlp::Encoding::Json,
                };
                let arena = typed_arena::Arena::new();
                let mut evs = Vec::new();
                otlp::decode(otlp::Signal::Traces, enc, bytes, &arena, &mut evs).unwrap();
                n += evs.len() as u64;
            }
        }
    }
    n
}

fn engine_for(case: &Case, inputs: &[input::InputSpec]) -> Engine {
    let policy = Arc::new(Policy::compile(&case.config).expect("policy"));
    let mut engine = Engine::with_inputs(policy, inputs, false).expect("engine");
    for (i, spec) in inputs.iter().enumerate() {
        if matches!(spec.format, input::Format::AvroConfluent) {
            let s = if spec.record == Source::Product { 0 } else { 1 };
            let id = if s == 0 {
                DEMO_PRODUCT_SCHEMA_ID
            } else {
                DEMO_ERROR_SCHEMA_ID
            };
            engine
                .add_schema(i as u16, id, SHIPPED[s].2)
                .expect("schema resolves");
        }
    }
    engine
}

/// One timed pass over a case: (decode-only seconds, decode + aggregate seconds).
fn time_case(
    case: &Case,
    inputs: &[input::InputSpec],
    schemas: &SchemaRegistry,
    now: i64,
) -> (f64, f64) {
    let t = Instant::now();
    let n = decode_only(case, inputs, schemas);
    let decode = t.elapsed().as_secs_f64();
    assert!(
        n >= case.events * 99 / 100,
        "{}: {n} of {}",
        case.name,
        case.events
    );
    let mut engine = engine_for(case, inputs);
    let t = Instant::now();
    for (i, (input, bytes)) in case.records.iter().enumerate() {
        let p = PartitionKey {
            input: *input,
            partition: 0,
        };
        engine.ingest(p, i as i64, bytes, now, false);
    }
    let full = t.elapsed().as_secs_f64();
    let accepted: u64 = engine.counters().events.iter().map(|s| s[0]).sum();
    assert!(
        accepted >= case.events * 95 / 100,
        "{}: {accepted} accepted",
        case.name
    );
    (decode, full)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 1 } else { 7 };
    let rounds = std::env::var("FORMATS_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(rounds);
    let sim = events();
    let schemas = SchemaRegistry::shipped().unwrap();
    let now = START + 3 * 900_000;
    // `FORMATS_ONLY=json` runs the rows whose name contains it (for profiling).
    let only = std::env::var("FORMATS_ONLY").unwrap_or_default();
    let cases: Vec<Case> = cases(&sim)
        .into_iter()
        .filter(|c| c.name.contains(&only) || c.name.starts_with("avro ("))
        .collect();
    let inputs: Vec<_> = cases
        .iter()
        .map(|c| input::compile(&c.config).expect("inputs"))
        .collect();
    // Rounds interleave the formats, and each format is compared with the avro run of
    // the same round: on a VM whose speed drifts (CPU steal), the ratios hold still
    // where the absolute rates do not. Reported: the best rate, the median ratio.
    let mut times: Vec<Vec<(f64, f64)>> = vec![Vec::new(); cases.len()];
    for _ in 0..rounds {
        for (i, case) in cases.iter().enumerate() {
            times[i].push(time_case(case, &inputs[i], &schemas, now));
        }
    }
    println!(
        "{} simulated product/error events (2 windows x 20,000 sessions); {rounds} interleaved rounds\n",
        sim.len()
    );
    println!(
        "| format | bytes/event | decode: M events/s (best) | vs avro (median of rounds) | decode + aggregate: M events/s (best) | vs avro (median of rounds) |"
    );
    println!("|---|---|---|---|---|---|");
    for (i, case) in cases.iter().enumerate() {
        let best = |f: fn(&(f64, f64)) -> f64| {
            case.events as f64 / times[i].iter().map(f).fold(f64::MAX, f64::min) / 1e6
        };
        let ratio = |f: fn(&(f64, f64)) -> f64| {
            let base = cases[0].events as f64;
            median(
                times[i]
                    .iter()
                    .zip(&times[0])
                    .map(|(t, b)| (case.events as f64 / f(t)) / (base / f(b)))
                    .collect(),
            )
        };
        if std::env::var("FORMATS_VERBOSE").is_ok() {
            let per_round: Vec<String> = times[i]
                .iter()
                .zip(&times[0])
                .map(|(t, b)| {
                    format!(
                        "{:.0}%",
                        100.0 * case.events as f64 / t.1 / (cases[0].events as f64 / b.1)
                    )
                })
                .collect();
            eprintln!(
                "{}: decode + aggregate vs avro per round: {}",
                case.name,
                per_round.join(" ")
            );
        }
        let bytes: usize = case.records.iter().map(|(_, b)| b.len()).sum();
        println!(
            "| {} | {:.0} | {:.2} | {:.0}% | {:.2} | {:.0}% |",
            case.name,
            bytes as f64 / case.events as f64,
            best(|t| t.0),
            100.0 * ratio(|t| t.0),
            best(|t| t.1),
            100.0 * ratio(|t| t.1),
        );
    }
}
