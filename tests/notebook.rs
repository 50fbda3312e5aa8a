//! `examples/notebook/`: the notebook's plain-Python twin (`guardrail_evidence.py`) run
//! against the engine's output, as CI runs it.
//!
//! 1. The engine judges the demo's simulated traffic on librdkafka's mock cluster
//!    (checkout-redesign regresses on mobile-web and is paused there); the twin reads
//!    `guardrail-evaluations` with its own client (confluent-kafka + fastavro), plots the
//!    evidence, recommends a per-cohort rollback override for mobile-web and proposes it
//!    with `guardrail policy propose`. The test reads its summary back, checks it against
//!    the evaluations as guardrail itself decodes them, and checks the plot and the
//!    proposal. The same evaluations re-published as JSON (`[output] format = "json"`)
//!    give the twin the same result.
//! 2. On `guardrail replay --evaluations-out` output: the twin (dry run), and the
//!    notebook's own code cells executed in order against the same file.
//!
//! Needs `python3` with `confluent-kafka`, `fastavro` and `matplotlib` (`scripts/test`
//! installs them); without them the tests fail and say so: they are never skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use guardrail::audit::{AuditKind, AuditRecord};
use guardrail::clock::wall_ms;
use guardrail::config::OutputFormat;
use guardrail::ingest::decode::SchemaRegistry;
use guardrail::model::Action;
use guardrail::policies::{PolicyKind, PolicyRecord};
use guardrail::records::{FlagCommand, WindowEvaluation};
use guardrail::sim::{Scenario, Simulator};
use guardrail::telemetry::counter_total;
use rdkafka::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;

mod common;
use common::{read_partition, read_topic};

const FLAG: &str = "checkout-redesign";
const MOBILE: &str = "platform=mobile-web";
const METRIC: &str = "checkout_error_rate";
const TWIN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/notebook/guardrail_evidence.py"
);
const NOTEBOOK: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/notebook/guardrail_evidence.ipynb"
);
const WINDOWS: u32 = 8;
/// Who the twin proposes as.
const BY: &str = "notebook-ci";

fn python() -> String {
    std::env::var("GUARDRAIL_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Runs the twin; its output, whatever its exit code.
fn twin(args: &[&str]) -> Output {
    let out = Command::new(python())
        .arg(TWIN)
        .args(args)
        .env("GUARDRAIL_BIN", env!("CARGO_BIN_EXE_guardrail"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap_or_else(|e| panic!("running {} {TWIN}: {e}", python()));
    println!(
        "twin {args:?} ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n(the notebook tests need python3 with confluent-kafka, \
         fastavro and matplotlib: run scripts/test)",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A PNG: its signature, and more than a header.
fn assert_png(path: &Path) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("the plot {}: {e}", path.display()));
    assert_eq!(
        &bytes[..8],
        b"\x89PNG\r\n\x1a\n",
        "{} is a PNG",
        path.display()
    );
    assert!(bytes.len() > 10_000, "a plot, {} bytes", bytes.len());
}

/// The example policy (the error-rate guardrail judged per window, so the short scenario
/// pauses mobile-web) as a config file pointing at `brokers`.
fn config_file(dir: &Path, brokers: &str) -> PathBuf {
    let text = guardrail::demo::example_per_window();
    let path = dir.join("guardrail.toml");
    let with_brokers = text.replace(
        "brokers = \"localhost:9092\"",
        &format!("brokers = \"{brokers}\""),
    );
    assert_ne!(with_brokers, text, "the example config names its brokers");
    std::fs::write(&path, with_brokers).unwrap();
    path
}

/// The twin's `--json-out` result.
fn result(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("the twin's JSON result"))
        .expect("JSON")
}

/// The twin's summary row of a cohort.
fn row<'a>(result: &'a Value, cohort: &str) -> &'a Value {
    result["summary"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["cohort"] == cohort)
        .unwrap_or_else(|| panic!("{cohort} in the summary: {result}"))
}

/// The twin recommends exactly the rollback override for mobile-web on the error-rate
/// guardrail, and its proposal file is `original` with only that override added.
fn assert_recommendation(result: &Value, original: &Value) -> Value {
    let recs = result["recommendation"].as_array().expect("recommendation");
    assert_eq!(recs.len(), 1, "one change: {recs:?}");
    let rec = &recs[0];
    assert_eq!(
        (rec["metric"].as_str(), rec["cohort"].as_str()),
        (Some(METRIC), Some(MOBILE))
    );
    assert_eq!(
        rec["set"],
        serde_json::json!({"severity": "critical", "action": "rollback"})
    );
    let proposal: Value = serde_json::from_str(
        &std::fs::read_to_string(result["proposal_file"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    let index = rec["guardrail"].as_u64().unwrap() as usize;
    let mut expected = original.clone();
    let flag = expected["flags"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|f| f["key"] == FLAG)
        .unwrap();
    assert_eq!(flag["guardrails"][index]["metric"], METRIC);
    assert!(flag["guardrails"][index].get("cohorts").is_none());
    flag["guardrails"][index]["cohorts"] = serde_json::json!([
        {"cohort": MOBILE, "severity": "critical", "action": "rollback"}
    ]);
    assert_eq!(
        proposal, expected,
        "the proposal is the document plus the override"
    );
    proposal
}

/// The twin's view of the evidence equals guardrail's own decoding of the topic: the
/// same windows per cohort, the same decisions and final states.
fn assert_summary_matches(result: &Value, evaluations: &[WindowEvaluation]) {
    let mut windows: BTreeMap<&str, BTreeSet<i64>> = BTreeMap::new();
    let mut decisions: BTreeSet<(String, String, i64)> = BTreeSet::new();
    for e in evaluations.iter().filter(|e| e.flag_key == FLAG) {
        windows.entry(&e.cohort).or_default().insert(e.window_start);
        if let Some(d) = e.decision {
            decisions.insert((e.cohort.clone(), d.as_str().to_string(), e.window_end));
        }
    }
    let rows = result["summary"].as_array().unwrap();
    assert_eq!(rows.len(), windows.len(), "cohorts: {:?}", windows.keys());
    let mut seen = BTreeSet::new();
    for r in rows {
        let cohort = r["cohort"].as_str().unwrap();
        assert_eq!(
            r["windows"].as_u64(),
            Some(windows[cohort].len() as u64),
            "{cohort}"
        );
        for d in r["decisions"].as_array().unwrap() {
            seen.insert((
                cohort.to_string(),
                d["action"].as_str().unwrap().to_string(),
                d["window_end"].as_i64().unwrap(),
            ));
        }
        let last = evaluations
            .iter()
            .filter(|e| e.flag_key == FLAG && e.cohort == cohort)
            .max_by_key(|e| e.window_start)
            .unwrap();
        assert_eq!(r["state"].as_str(), last.state.as_deref(), "{cohort}");
    }
    assert_eq!(seen, decisions, "the same decisions");
}

/// The summary table names the paused cohort, paused, with its PAUSE.
fn assert_paused_in_table(stdout: &str) {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(MOBILE))
        .unwrap_or_else(|| panic!("a summary line for {MOBILE}:\n{stdout}"));
    assert!(line.contains("paused") && line.contains("PAUSE@"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_twin_reads_the_cluster_plots_and_proposes_a_rollback_override() {
    let t0 = Instant::now();
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let config_path = config_file(dir.path(), &brokers);
    let (config, policy) = guardrail::demo::demo_config_text(
        &guardrail::demo::example_per_window(),
        &brokers,
        "127.0.0.1:0",
    )
    .expect("config");
    let t = &config.topics;
    for topic in config.input_topics() {
        cluster.create_topic(&topic, 32, 1).unwrap();
    }
    for topic in [&t.flag_commands, &t.dlq, &t.state, &t.policies, &t.audit] {
        cluster.create_topic(topic, 1, 1).unwrap();
    }
    // Several partitions: the twin reads each to its end.
    cluster.create_topic(&t.evaluations, 3, 1).unwrap();
    let policy = Arc::new(policy);

    // The engine on the demo's traffic.
    let running = common::Running::start(&config, &policy).await;
    let window_ms = policy.window.size_ms;
    let start = (wall_ms() / window_ms - i64::from(WINDOWS)) * window_ms;
    let mut sim = Simulator::new(Scenario::demo(start, WINDOWS, 24_000));
    let producer: FutureProducer =
        guardrail::kafka::producer_config(config.kafka.as_ref().unwrap())
            .set("linger.ms", "20")
            .create()
            .unwrap();
    let schemas = SchemaRegistry::shipped().unwrap();
    while let Some(events) = sim.next_window() {
        guardrail::kafka::produce_events(&producer, &config.topics, &schemas, &events)
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    while counter_total(&running.metrics, "guardrail_windows_closed_total") < f64::from(WINDOWS - 1)
    {
        assert!(!running.engine.is_finished(), "the engine stopped early");
        assert!(Instant::now() < deadline, "windows did not close");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    running.stop().await;
    println!("engine: {:.1}s", t0.elapsed().as_secs_f64());

    // guardrail's own decoding of the evaluations, for comparison.
    let reader = guardrail::kafka::OutputReader::evaluations().unwrap();
    let mut evaluations: Vec<WindowEvaluation> = Vec::new();
    for p in 0..3 {
        for m in read_partition(&brokers, &t.evaluations, p) {
            evaluations.push(reader.decode(m.payload().unwrap()).expect("an evaluation"));
        }
    }
    let commands = guardrail::kafka::OutputReader::commands().unwrap();
    let pause: FlagCommand = read_topic(&brokers, &t.flag_commands)
        .iter()
        .map(|m| commands.decode(m.payload().unwrap()).expect("a command"))
        .find(|c: &FlagCommand| {
            c.flag_key == FLAG && c.cohort == MOBILE && c.action == Action::Pause
        })
        .unwrap_or_else(|| panic!("the engine pauses {FLAG} on {MOBILE}"));

    // The engine seeded the policies topic from its config: the flag's active record.
    let seeded = policies(&brokers, &t.policies)
        .into_iter()
        .find(|r| r.kind == PolicyKind::Active && r.flag == FLAG)
        .expect("the engine seeds the flag's active policy");

    // The twin on the Avro topic: it reads the active policy and proposes the change.
    let plot = dir.path().join("evidence.png");
    let json_out = dir.path().join("result.json");
    let t1 = Instant::now();
    let out = twin(&[
        "--bootstrap",
        &brokers,
        "--topic",
        &t.evaluations,
        "--flag",
        FLAG,
        "--plot",
        plot.to_str().unwrap(),
        "--config",
        config_path.to_str().unwrap(),
        "--by",
        BY,
        "--json-out",
        json_out.to_str().unwrap(),
    ]);
    println!("twin: {:.1}s", t1.elapsed().as_secs_f64());
    assert_success(&out, "the twin on the cluster");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_paused_in_table(&stdout);
    assert_png(&plot);
    let r = result(&json_out);
    assert_eq!(row(&r, MOBILE)["state"], "paused");
    assert_eq!(
        row(&r, MOBILE)["decisions"],
        serde_json::json!([{"action": "PAUSE", "window_end": pause.window_end}])
    );
    assert_summary_matches(&r, &evaluations);
    let original = serde_json::to_value(&seeded.document).unwrap();
    let proposal = assert_recommendation(&r, &original);

    // The proposal on the policies topic: the twin's document, by the twin's proposer,
    // with the plot as evidence, pending (the active version is still the seeded one).
    let version = r["proposed"]["version"]
        .as_str()
        .expect("a proposed version");
    assert_eq!(r["proposed"]["status"], "proposed");
    assert!(
        stdout.contains(&format!(
            "policy approve --config {}",
            config_path.display()
        )) && stdout.contains(&format!("{FLAG} {version} --by")),
        "the approve command is printed:\n{stdout}"
    );
    let records = policies(&brokers, &t.policies);
    let proposed = records
        .iter()
        .find(|p| p.kind == PolicyKind::Proposal && p.flag == FLAG && p.version == version)
        .unwrap_or_else(|| panic!("proposal {version} on {}", t.policies));
    assert_eq!(proposed.proposed_by, BY);
    assert_eq!(
        proposed.previous_version.as_deref(),
        Some(seeded.version.as_str())
    );
    assert_eq!(
        serde_json::to_value(&proposed.document).unwrap(),
        proposal,
        "the proposed document is the twin's"
    );
    assert_eq!(proposed.evidence, vec![plot.display().to_string()]);
    assert!(
        proposed
            .comment
            .as_deref()
            .unwrap_or("")
            .contains("confined"),
        "{:?}",
        proposed.comment
    );
    let active = records
        .iter()
        .rev()
        .find(|p| p.kind == PolicyKind::Active && p.flag == FLAG)
        .unwrap();
    assert_eq!(
        active.version, seeded.version,
        "nothing active before approval"
    );
    let audited = read_topic(&brokers, &t.audit)
        .iter()
        .filter_map(|m| AuditRecord::from_json(m.payload()?).ok())
        .any(|a| a.kind == AuditKind::Proposed && a.flag == FLAG && a.actor == BY);
    assert!(audited, "the proposal is on the audit trail");

    // The same evaluations as JSON (`[output] format = "json"`): the same result.
    let json_topic = "guardrail-evaluations-json";
    cluster.create_topic(json_topic, 1, 1).unwrap();
    let encoder = guardrail::kafka::Encoder::new(OutputFormat::Json).unwrap();
    for e in &evaluations {
        producer
            .send(
                FutureRecord::to(json_topic)
                    .key(&e.flag_key)
                    .payload(&encoder.evaluation(e)),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let json_result = dir.path().join("result-json.json");
    let out = twin(&[
        "--bootstrap",
        &brokers,
        "--topic",
        json_topic,
        "--flag",
        FLAG,
        "--plot",
        dir.path().join("evidence-json.png").to_str().unwrap(),
        "--config",
        config_path.to_str().unwrap(),
        "--dry-run",
        "--json-out",
        json_result.to_str().unwrap(),
    ]);
    assert_success(&out, "the twin on JSON evaluations");
    let rj = result(&json_result);
    assert_eq!(rj["summary"], r["summary"], "JSON and Avro read alike");
    assert_eq!(rj["recommendation"], r["recommendation"]);

    // The notebook's code cells against the cluster: the active policy from `policy show`,
    // the same proposal (written, not submitted).
    let nb_proposal = run_notebook(
        dir.path(),
        &[
            ("GUARDRAIL_BOOTSTRAP", brokers.as_str()),
            ("GUARDRAIL_TOPIC", t.evaluations.as_str()),
            ("GUARDRAIL_CONFIG", config_path.to_str().unwrap()),
        ],
    );
    assert_eq!(
        nb_proposal, proposal,
        "the notebook proposes what the twin did"
    );
    println!("total {:.1}s", t0.elapsed().as_secs_f64());
}

/// The records of the policies topic.
fn policies(brokers: &str, topic: &str) -> Vec<PolicyRecord> {
    read_topic(brokers, topic)
        .iter()
        .map(|m| PolicyRecord::from_json(m.payload().unwrap()).expect("a policy record"))
        .collect()
}

/// The flag's document built from the config file: `{"flags": [flag], "metrics": [...]}`.
fn document_from_config(config: &Path) -> Value {
    let text = std::fs::read_to_string(config).unwrap();
    let parsed: toml::Value = toml::from_str(&text).unwrap();
    let flag = parsed["flags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["key"].as_str() == Some(FLAG))
        .unwrap()
        .clone();
    let used: BTreeSet<&str> = ["guardrails", "success"]
        .iter()
        .flat_map(|k| {
            flag.get(*k)
                .and_then(|v| v.as_array())
                .into_iter()
                .flatten()
        })
        .filter_map(|g| g["metric"].as_str())
        .collect();
    let metrics: Vec<toml::Value> = parsed["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| used.contains(m["name"].as_str().unwrap()))
        .cloned()
        .collect();
    serde_json::json!({
        "flags": [serde_json::to_value(&flag).unwrap()],
        "metrics": serde_json::to_value(&metrics).unwrap(),
    })
}

/// On `guardrail replay --evaluations-out` output: the twin (dry run), then the notebook's
/// code cells in order, which must reach the same recommendation and write a plot.
#[test]
fn the_twin_and_the_notebook_run_on_replay_output() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = config_file(dir.path(), "127.0.0.1:9092"); // replay needs no broker
    let bin = env!("CARGO_BIN_EXE_guardrail");
    let data = dir.path().join("events");
    let run = |args: &[&str]| {
        let out = Command::new(bin).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "guardrail {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "generate",
        "--out",
        data.to_str().unwrap(),
        "--windows",
        &WINDOWS.to_string(),
        "--sessions",
        "24000",
    ]);
    let evaluations = dir.path().join("evaluations.jsonl");
    let file = |n: &str| data.join(n).to_str().unwrap().to_string();
    run(&[
        "replay",
        "--config",
        config_path.to_str().unwrap(),
        "--product-events",
        &file("product-events.avro"),
        "--error-events",
        &file("error-events.avro"),
        "--support-signals",
        &file("support-signals.avro"),
        "--commands-out",
        dir.path().join("commands.jsonl").to_str().unwrap(),
        "--evaluations-out",
        evaluations.to_str().unwrap(),
    ]);
    let replayed: Vec<WindowEvaluation> = std::fs::read_to_string(&evaluations)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();

    let plot = dir.path().join("replay.png");
    let json_out = dir.path().join("replay.json");
    let out = twin(&[
        "--evaluations",
        evaluations.to_str().unwrap(),
        "--flag",
        FLAG,
        "--plot",
        plot.to_str().unwrap(),
        "--config",
        config_path.to_str().unwrap(),
        "--dry-run",
        "--json-out",
        json_out.to_str().unwrap(),
    ]);
    assert_success(&out, "the twin on replay output");
    assert_paused_in_table(&String::from_utf8_lossy(&out.stdout));
    assert_png(&plot);
    let r = result(&json_out);
    assert_summary_matches(&r, &replayed);
    let proposal = assert_recommendation(&r, &document_from_config(&config_path));

    // A healthy flag (search-ranking-v2 advances everywhere): no recommendation, exit 1.
    let out = twin(&[
        "--evaluations",
        evaluations.to_str().unwrap(),
        "--flag",
        "search-ranking-v2",
        "--plot",
        dir.path().join("search.png").to_str().unwrap(),
        "--config",
        config_path.to_str().unwrap(),
        "--dry-run",
    ]);
    assert_eq!(out.status.code(), Some(1), "no recommendation: exit 1");
    assert!(String::from_utf8_lossy(&out.stdout).contains("recommendation: none"));
    // A flag without evaluations: exit 2, and it says so.
    let out = twin(&[
        "--evaluations",
        evaluations.to_str().unwrap(),
        "--flag",
        "no-such-flag",
        "--config",
        config_path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no evaluations of no-such-flag"));

    // The notebook's code cells on the same file write the same proposal.
    let nb_proposal = run_notebook(
        dir.path(),
        &[
            ("GUARDRAIL_EVALUATIONS", evaluations.to_str().unwrap()),
            ("GUARDRAIL_CONFIG", config_path.to_str().unwrap()),
        ],
    );
    assert_eq!(
        nb_proposal, proposal,
        "the notebook proposes what the twin does"
    );
}

/// Runs the notebook's code cells in order in one namespace, as a kernel would (IPython's
/// display is not needed: the plot cell falls back to a print), from examples/notebook/,
/// with `env` (GUARDRAIL_SUBMIT unset: the proposal is written, not submitted). Checks
/// its plot and the paused cohort in its output; returns the proposal it wrote.
fn run_notebook(dir: &Path, env: &[(&str, &str)]) -> Value {
    let nb_dir = tempfile::tempdir_in(dir).unwrap();
    let runner = r#"
import json, os, sys
nb = json.load(open(sys.argv[1]))
assert nb["nbformat"] == 4, nb["nbformat"]
os.chdir(os.path.dirname(sys.argv[1]))
ns = {"__name__": "__main__"}
for i, cell in enumerate(c for c in nb["cells"] if c["cell_type"] == "code"):
    exec(compile("".join(cell["source"]), f"cell {i}", "exec"), ns)
"#;
    let out = Command::new(python())
        .args(["-c", runner, NOTEBOOK])
        .envs(env.iter().copied())
        .env("GUARDRAIL_FLAG", FLAG)
        .env("GUARDRAIL_BIN", env!("CARGO_BIN_EXE_guardrail"))
        .env_remove("GUARDRAIL_SUBMIT")
        .env("GUARDRAIL_PLOT", nb_dir.path().join("nb.png"))
        .env("GUARDRAIL_PROPOSAL", nb_dir.path().join("proposal.json"))
        .env("MPLBACKEND", "Agg")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!(
        "notebook:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_success(&out, "the notebook's code cells");
    assert_paused_in_table(&stdout);
    assert!(stdout.contains("not submitted"), "{stdout}");
    assert_png(&nb_dir.path().join("nb.png"));
    serde_json::from_str(&std::fs::read_to_string(nb_dir.path().join("proposal.json")).unwrap())
        .unwrap()
}

/// The twin's unit tests (`examples/notebook/test_guardrail_evidence.py`): every branch of
/// the recommendation rule, every shipped schema version's framing, JSON detection.
#[test]
fn the_twins_unit_tests_pass() {
    let dir = Path::new(TWIN).parent().unwrap();
    let out = Command::new(python())
        .args(["-m", "unittest", "-v", "test_guardrail_evidence"])
        .current_dir(dir)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", python()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stderr}");
    assert_success(&out, "the twin's unit tests");
    let ran = stderr
        .lines()
        .find_map(|l| {
            l.strip_prefix("Ran ")?
                .split(' ')
                .next()?
                .parse::<u32>()
                .ok()
        })
        .expect("unittest's count");
    assert!(ran >= 10, "{ran} tests ran");
}
