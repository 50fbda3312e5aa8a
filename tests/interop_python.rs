//! Interoperability with implementations that are not ours: an independent Python
//! client (`tests/interop/python_client.py`: confluent-kafka + fastavro, its own
//! traffic model) produces single-object encoded events to the mock cluster, the engine
//! judges them, and the same client consumes `flag-commands`, checks each record's
//! header against fastavro's fingerprint of `schemas/flag_command.avsc` and decodes it
//! with fastavro. Then `replay` reads the same events from container files that
//! fastavro wrote, and must decide the same.
//!
//! A second test has `tests/interop/partials.py` read scale-out partials encoded here:
//! the header against fastavro's fingerprint of `schemas/window_partial.avsc`, the body
//! with fastavro, the HDR histograms with Python's `hdrhistogram` package.
//!
//! Needs `python3` with `fastavro` and `confluent-kafka` (`scripts/test`
//! installs them), and `hdrhistogram` for the partials; without them the tests fail and
//! say so: they are never skipped.

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use guardrail::clock::wall_ms;
use guardrail::model::Source;
use rdkafka::mocking::MockCluster;

const CLIENT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/interop/python_client.py"
);
const WINDOWS: i64 = 6;

fn python() -> String {
    std::env::var("GUARDRAIL_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Runs the client; its stdout, or the test fails with its stderr.
fn client(args: &[&str]) -> String {
    let out = Command::new(python())
        .arg(CLIENT)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {} {CLIENT}: {e}", python()));
    assert!(
        out.status.success(),
        "python client {args:?} failed ({}):\n{}\n(the interop tests need python3 with \
         fastavro and confluent-kafka: run scripts/test-setup)",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

fn counter(registry: &prometheus::Registry, name: &str) -> u64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter().map(|m| m.get_counter().get_value()))
        .sum::<f64>() as u64
}

/// (command_id, flag, cohort, action, window_end) of a command, from either side.
type Decision = (String, String, String, String, i64);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_producer_and_consumer_interoperate_with_run_and_replay() {
    let t0 = Instant::now();
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let (config, policy) =
        guardrail::demo::demo_config(None, &brokers, "127.0.0.1:0").expect("demo config");
    let t = &config.topics;
    for topic in [&t.product_events, &t.error_events, &t.support_signals] {
        cluster.create_topic(topic, 8, 1).unwrap();
    }
    for topic in [&t.flag_commands, &t.evaluations, &t.dlq, &t.state] {
        cluster.create_topic(topic, 1, 1).unwrap();
    }
    let window_ms = policy.window.size_ms;
    let start = (wall_ms() / window_ms - WINDOWS - 1) * window_ms;
    let start_arg = start.to_string();

    // Python produces; the engine consumes.
    let produced = client(&[
        "produce",
        "--brokers",
        &brokers,
        "--start",
        &start_arg,
        "--windows",
        &WINDOWS.to_string(),
        "--product-topic",
        &t.product_events,
        "--error-topic",
        &t.error_events,
    ]);
    let produced: serde_json::Value = serde_json::from_str(produced.trim()).unwrap();
    let produced = produced["product"].as_u64().unwrap() + produced["errors"].as_u64().unwrap();
    println!(
        "python produced {produced} events in {:.1}s",
        t0.elapsed().as_secs_f64()
    );

    let policy = Arc::new(policy);
    let served = guardrail::http::start("127.0.0.1:0", &policy)
        .await
        .expect("binding HTTP");
    let registry = served.registry.clone();
    let stop = served.stop.clone();
    let engine = guardrail::app::spawn_engine(
        &served,
        config.clone(),
        policy.clone(),
        Duration::from_secs(10),
        None,
    );
    // Every window but the newest closes (the watermark never passes the newest).
    let deadline = Instant::now() + Duration::from_secs(60);
    while counter(&registry, "guardrail_windows_closed_total") < (WINDOWS - 1) as u64 {
        assert!(!engine.is_finished(), "the engine stopped early");
        assert!(Instant::now() < deadline, "windows did not close in 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = stop.send(true);
    tokio::time::timeout(Duration::from_secs(30), engine)
        .await
        .expect("engine stops")
        .expect("engine task")
        .expect("engine result");
    let _ = served.server.await;

    // Nothing from the Python producer was refused.
    assert_eq!(counter(&registry, "guardrail_unknown_fingerprint_total"), 0);
    assert_eq!(counter(&registry, "guardrail_legacy_fingerprint_total"), 0);
    assert_eq!(
        counter(&registry, "guardrail_dlq_total"),
        0,
        "nothing dead-lettered"
    );
    let accepted: u64 = registry
        .gather()
        .iter()
        .filter(|f| f.name() == "guardrail_events_total")
        .flat_map(|f| f.get_metric().iter())
        .filter(|m| {
            m.get_label()
                .iter()
                .any(|l| l.name() == "status" && matches!(l.value(), "accepted" | "unmatched"))
        })
        .map(|m| m.get_counter().get_value() as u64)
        .sum();
    assert_eq!(
        accepted, produced,
        "every Python-produced event was decoded"
    );

    // Python consumes and decodes the commands.
    let lines = client(&[
        "consume",
        "--brokers",
        &brokers,
        "--topic",
        &t.flag_commands,
        "--schema",
        "flag_command.avsc",
    ]);
    let mut from_run = BTreeSet::new();
    for line in lines.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let r = &v["record"];
        assert_eq!(v["key"], r["flag_key"], "records are keyed by flag");
        from_run.insert(decision(r));
    }
    println!("python decoded {} commands: {from_run:?}", from_run.len());
    let last_closed_end = start + (WINDOWS - 1) * window_ms;
    let mobile_web_pause =
        |d: &Decision| d.1 == "checkout-redesign" && d.2 == "platform=mobile-web" && d.3 == "PAUSE";
    assert_eq!(
        from_run.iter().filter(|d| mobile_web_pause(d)).count(),
        1,
        "the mobile-web regression is paused once: {from_run:?}"
    );

    // Python decodes the evaluations (schema v2, with the closes' read positions) and the
    // state changelog (the same records, keyed flag + NUL + cohort) with fastavro.
    let mut decoded = Vec::new();
    for (topic, changelog) in [(&t.evaluations, false), (&t.state, true)] {
        let lines = client(&[
            "consume",
            "--brokers",
            &brokers,
            "--topic",
            topic,
            "--schema",
            "window_evaluation.avsc",
        ]);
        let records: Vec<serde_json::Value> = lines
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        for v in &records {
            let r = &v["record"];
            let flag = r["flag_key"].as_str().unwrap();
            let key = if changelog {
                format!("{flag}\0{}", r["cohort"].as_str().unwrap())
            } else {
                flag.to_string()
            };
            assert_eq!(v["key"].as_str(), Some(key.as_str()), "{topic} key");
        }
        let positions: Vec<&serde_json::Value> = records
            .iter()
            .flat_map(|v| v["record"]["input_positions"].as_array().unwrap())
            .collect();
        assert!(
            !positions.is_empty(),
            "{topic}: the closes carry read positions"
        );
        for p in positions {
            assert!(
                p["topic"] == t.product_events.as_str() || p["topic"] == t.error_events.as_str()
            );
            assert!(p["read_until"].as_i64().unwrap() > 0, "{p}");
        }
        decoded.push(records.len());
    }
    assert!(decoded[0] > 0);
    assert_eq!(
        decoded[0], decoded[1],
        "every evaluation is on the changelog too"
    );

    // Replay over container files written by fastavro, with the same events.
    let dir = tempfile::tempdir().unwrap();
    let written = client(&[
        "write-ocf",
        "--dir",
        dir.path().to_str().unwrap(),
        "--start",
        &start_arg,
        "--windows",
        &WINDOWS.to_string(),
    ]);
    let written: serde_json::Value = serde_json::from_str(written.trim()).unwrap();
    let path = |s: &str| std::path::PathBuf::from(written["paths"][s].as_str().unwrap());
    let files = vec![
        (Source::Product, path("product")),
        (Source::Errors, path("errors")),
    ];
    let mut from_replay = BTreeSet::new();
    let (summary, _) = guardrail::replay::replay(policy, &files, wall_ms(), |j| {
        if let Some(c) = j.command
            && c.window_end <= last_closed_end
        {
            from_replay.insert((
                c.command_id,
                c.flag_key,
                c.cohort,
                c.action.as_str().to_string(),
                c.window_end,
            ));
        }
        Ok(())
    })
    .expect("replay of fastavro's container files");
    assert_eq!(summary.events, produced, "the same events");
    assert_eq!(summary.rejected, 0);
    assert_eq!(
        from_replay, from_run,
        "replay of fastavro's files decides what run decided on the Python producer's records"
    );
    println!("total {:.1}s", t0.elapsed().as_secs_f64());
}

fn decision(r: &serde_json::Value) -> Decision {
    let s = |k: &str| {
        r[k].as_str()
            .unwrap_or_else(|| panic!("{k} in {r}"))
            .to_string()
    };
    (
        s("command_id"),
        s("flag_key"),
        s("cohort"),
        s("action"),
        r["window_end"]
            .as_i64()
            .expect("window_end in epoch millis"),
    )
}

const PARTIALS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/partials.py");

/// An arm of a rate, a mean and a quantile metric after `n` events of `units` distinct
/// units (every third event an exposure), values from `base` up.
fn partial_arm(n: u32, units: u32, base: f64) -> guardrail::window::aggregate::Arm {
    use guardrail::window::aggregate::{Agg, Arm, Contribution, sample_key, unit_hash};
    let template = [
        Agg::Rate {
            num: 0,
            den: 0,
            units: None,
        },
        Agg::Mean {
            n: 0,
            sum: 0.0,
            sumsq: 0.0,
            units: None,
        },
        Agg::Quantile {
            hist: None,
            units: None,
        },
    ];
    let mut arm = Arm::new(&template);
    for i in 0..n {
        let unit = unit_hash(format!("user-{}", i % units.max(1)).as_bytes());
        let v = base + f64::from(i % 101) * 3.7 + f64::from(i % 7) * 40.0;
        arm.events += 1;
        if i % 3 == 0 {
            arm.exposures += 1;
            arm.units.insert(sample_key(unit));
        }
        arm.aggs[0].apply(
            Contribution::Rate {
                num: u8::from(i % 11 == 0),
                den: 1,
            },
            unit,
        );
        arm.aggs[1].apply(Contribution::Value(v / 10.0), unit);
        arm.aggs[2].apply(Contribution::Value(v), unit);
    }
    arm
}

/// Scale-out partials (`schemas/window_partial.avsc`) encoded here are read by fastavro
/// (header fingerprint, body) and their HDR histograms by Python's `hdrhistogram`.
#[test]
fn python_reads_partials_with_fastavro_and_hdrhistogram() {
    use guardrail::scale::partial::{Partial, encode};
    use guardrail::window::aggregate::{Agg, Arm, quantile};

    let partial = |flag: &str, cohorts| Partial {
        flag_key: flag.into(),
        policy_version: "0123456789ab".into(),
        window_start: 1_700_000_100_000,
        window_end: 1_700_001_000_000,
        topic: "product-events".into(),
        partition: 3,
        first_offset: 1_000,
        read_until: 5_000,
        late_events: 2,
        produced_at: 1_700_001_020_000,
        instance: "ingest-1".into(),
        cohorts,
    };
    let empty = || [partial_arm(0, 0, 0.0), partial_arm(0, 0, 0.0)];
    let partials = [
        partial(
            "checkout-redesign",
            vec![
                (
                    "*".into(),
                    [partial_arm(1_200, 500, 80.0), partial_arm(900, 400, 60.0)],
                ),
                (
                    "platform=ios".into(),
                    [partial_arm(300, 120, 250.0), partial_arm(0, 0, 0.0)],
                ),
            ],
        ),
        partial("search-ranking", vec![("*".into(), empty())]),
        // More exposed units than the sample keeps: a full sample.
        partial(
            "ünïcödé-flag",
            vec![(
                "*".into(),
                [partial_arm(9_000, 9_000, 5.0), partial_arm(30, 30, 1.0)],
            )],
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (i, p) in partials.iter().enumerate() {
        std::fs::write(dir.path().join(format!("{i}.bin")), encode(p)).unwrap();
    }
    let out = Command::new(python())
        .arg(PARTIALS)
        .arg(dir.path())
        .output()
        .unwrap_or_else(|e| panic!("running {} {PARTIALS}: {e}", python()));
    assert!(
        out.status.success(),
        "{PARTIALS} failed ({}):\n{}\n(it needs python3 with fastavro and hdrhistogram: run \
         scripts/test)",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let read: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let read = read.as_array().unwrap();
    assert_eq!(read.len(), partials.len());

    let mut histograms = 0;
    for (p, r) in partials.iter().zip(read) {
        assert_eq!(r["flag_key"], p.flag_key.as_str());
        assert_eq!(r["window_end"], p.window_end);
        let cohorts = r["cohorts"].as_array().unwrap();
        assert_eq!(cohorts.len(), p.cohorts.len());
        for ((name, cell), c) in p.cohorts.iter().zip(cohorts) {
            assert_eq!(c["cohort"], name.as_str());
            for (arm, side) in cell.iter().zip(["treatment", "control"]) {
                let a = &c[side];
                let at = format!("{} {name} {side}", p.flag_key);
                check_arm(arm, a, &at, &mut histograms);
            }
        }
    }
    assert!(histograms >= 4, "{histograms} histograms compared");

    fn check_arm(arm: &Arm, a: &serde_json::Value, at: &str, histograms: &mut usize) {
        assert_eq!(a["exposures"], arm.exposures, "{at}");
        assert_eq!(a["events"], arm.events, "{at}");
        let (keys, tau, full) = arm.units.parts();
        assert_eq!(a["sample"]["keys"], keys.len(), "{at}");
        assert_eq!(a["sample"]["tau"], tau, "{at}");
        assert_eq!(a["sample"]["full"], full, "{at}");
        let aggs = a["aggs"].as_array().unwrap();
        assert_eq!(aggs.len(), arm.aggs.len(), "{at}");
        for (agg, j) in arm.aggs.iter().zip(aggs) {
            match agg {
                Agg::Rate { num, den, units } => {
                    assert_eq!(j["kind"], "rate", "{at}");
                    assert_eq!(
                        (&j["num"], &j["den"]),
                        (&(*num).into(), &(*den).into()),
                        "{at}"
                    );
                    assert_eq!(j["buckets"].as_u64(), units.as_ref().map(|_| 64), "{at}");
                }
                Agg::Mean { n, sum, units, .. } => {
                    assert_eq!(j["kind"], "mean", "{at}");
                    assert_eq!(j["n"], *n, "{at}");
                    assert_eq!(j["sum"].as_f64(), Some(*sum), "{at}");
                    assert_eq!(j["buckets"].as_u64(), units.as_ref().map(|_| 64), "{at}");
                }
                Agg::Quantile { hist, units } => {
                    assert_eq!(j["kind"], "quantile", "{at}");
                    let cells: u64 = units
                        .iter()
                        .flat_map(|u| u.counts.iter().flatten())
                        .map(|&c| u64::from(c))
                        .sum();
                    assert_eq!(j["cells"], cells, "{at}");
                    let Some(h) = hist else {
                        assert!(j["total"].is_null(), "{at}");
                        continue;
                    };
                    *histograms += 1;
                    assert_eq!(j["total"], h.len(), "{at}");
                    for (q, key) in [(0.5, "p50"), (0.95, "p95")] {
                        // Python's value is in the histogram's unit (thousandths).
                        let py =
                            j[key].as_f64().unwrap() / guardrail::window::aggregate::HIST_SCALE;
                        let rust = quantile(h, q);
                        assert!(
                            (py - rust).abs() <= 0.01 * rust,
                            "{at} {key}: Python's hdrh {py}, Rust {rust}"
                        );
                    }
                }
            }
        }
    }
}
