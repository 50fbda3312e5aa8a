//! `guardrail apply` end to end on librdkafka's mock cluster, the flag file it writes
//! evaluated by flagd's own evaluator: `@openfeature/flagd-core` (the core of the
//! OpenFeature in-process providers) run by `tests/interop/flagd/evaluate.js`, which
//! also validates the file against flagd's schemas.
//!
//! Needs `node` and `tests/interop/flagd/node_modules` (`scripts/test` installs them
//! with `npm ci`); without them the tests fail and say so: they are never skipped.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use guardrail::apply::{Applied, Counters, Options};
use guardrail::clock::wall_ms;
use guardrail::config::{Config, OutputFormat};
use guardrail::ingest::decode::SchemaRegistry;
use guardrail::model::{Action, Severity};
use guardrail::policy::Policy;
use guardrail::records::FlagCommand;
use guardrail::sim::{Scenario, Simulator};
use guardrail::telemetry::counter_total;
use rdkafka::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

mod common;
use common::read_topic;

const CHECKOUT: &str = "checkout-redesign";
const SEARCH: &str = "search-ranking-v2";
const MOBILE: &str = "platform=mobile-web";
/// Targeting keys flagd evaluates per cohort.
const KEYS: u64 = 20_000;
const EVALUATOR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/interop/flagd/evaluate.js"
);

type Cluster = MockCluster<'static, rdkafka::producer::DefaultProducerContext>;

/// A mock cluster with guardrail's topics, the example policy pointed at it, and the
/// same config as a file (for the CLI).
struct Env {
    /// Leaked when a test panics (destroying it under running clients can hang).
    cluster: Option<Cluster>,
    brokers: String,
    config: Config,
    policy: Arc<Policy>,
    config_file: PathBuf,
    dir: tempfile::TempDir,
}

impl Drop for Env {
    fn drop(&mut self) {
        if std::thread::panicking() {
            std::mem::forget(self.cluster.take());
        }
    }
}

fn env() -> Env {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let text = guardrail::demo::example_per_window();
    let (mut config, policy) =
        guardrail::demo::demo_config_text(&text, &brokers, "127.0.0.1:0").expect("config");
    let k = config.kafka.as_mut().unwrap();
    // A restarted apply rejoins its group quickly.
    k.properties
        .insert("session.timeout.ms".into(), "6000".into());
    let t = &config.topics;
    for topic in config.input_topics() {
        cluster.create_topic(&topic, 32, 1).unwrap();
    }
    for topic in [
        &t.flag_commands,
        &t.evaluations,
        &t.dlq,
        &t.state,
        &t.approvals,
        &t.applied,
    ] {
        cluster.create_topic(topic, 1, 1).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let config_file = dir.path().join("guardrail.toml");
    let file_text = text.replace(
        "brokers = \"localhost:9092\"",
        &format!("brokers = \"{brokers}\""),
    );
    assert_ne!(file_text, text, "the example config names its brokers");
    std::fs::write(&config_file, file_text).unwrap();
    Env {
        cluster: Some(cluster),
        brokers,
        config,
        policy: Arc::new(policy),
        config_file,
        dir,
    }
}

/// A running `apply` (in process: a new consumer each time, as a new process has).
struct Apply {
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), guardrail::apply::ApplyError>>,
    counters: Arc<Counters>,
}

fn start_apply(env: &Env, flagd: &Path, group: &str) -> Apply {
    let (stop, rx) = watch::channel(false);
    let counters = Arc::new(Counters::default());
    let (config, policy, c) = (env.config.clone(), env.policy.clone(), counters.clone());
    let opts = Options {
        flagd: flagd.to_path_buf(),
        group_id: group.to_string(),
    };
    let task =
        tokio::spawn(async move { guardrail::apply::run(&config, &policy, &opts, c, rx).await });
    Apply {
        stop,
        task,
        counters,
    }
}

impl Apply {
    /// Waits until `done(counters)`; fails if apply stopped or after 30 s.
    async fn wait(&self, what: &str, done: impl Fn(&Counters) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done(&self.counters) {
            assert!(!self.task.is_finished(), "apply stopped early ({what})");
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {:?}",
                self.counters
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(self) -> Arc<Counters> {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("apply stops within 30 s")
            .expect("apply task")
            .expect("apply ends without error");
        self.counters
    }
}

fn count(c: &std::sync::atomic::AtomicU64) -> u64 {
    Counters::get(c)
}

/// Commands seen by apply, whatever became of them.
fn handled(c: &Counters) -> u64 {
    count(&c.applied)
        + count(&c.duplicates)
        + count(&c.pending)
        + count(&c.superseded)
        + count(&c.skipped)
}

async fn produce_commands(env: &Env, commands: &[FlagCommand]) {
    let producer: FutureProducer =
        guardrail::kafka::producer_config(env.config.kafka.as_ref().unwrap())
            .create()
            .unwrap();
    let encoder = guardrail::kafka::Encoder::new(OutputFormat::Avro).unwrap();
    for c in commands {
        producer
            .send(
                FutureRecord::to(&env.config.topics.flag_commands)
                    .key(&c.flag_key)
                    .payload(&encoder.command(c)),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("producing a command");
    }
}

/// A command as the engine would issue it (its deterministic id included).
fn command(
    flag: &str,
    cohort: &str,
    action: Action,
    from: f64,
    to: f64,
    window: i64,
) -> FlagCommand {
    let window_start = window * 900_000;
    FlagCommand {
        command_id: guardrail::ids::command_id(flag, cohort, action.as_str(), window_start, "test"),
        flag_key: flag.into(),
        cohort: cohort.into(),
        action,
        severity: if action == Action::Advance {
            Severity::Info
        } else {
            Severity::Critical
        },
        from_percent: from,
        to_percent: to,
        requires_approval: action == Action::Advance && flag == CHECKOUT,
        reason: "written by the test".into(),
        owner: "test".into(),
        window_start,
        window_end: window_start + 900_000,
        issued_at: wall_ms(),
        policy_version: "test".into(),
        evidence: vec![],
        watermark_lag_ms: None,
    }
}

fn read_applied(env: &Env) -> Vec<Applied> {
    read_topic(&env.brokers, &env.config.topics.applied)
        .iter()
        .map(|m| {
            let a: Applied = serde_json::from_slice(m.payload().unwrap()).expect("JSON Applied");
            let mut key = a.flag_key.as_bytes().to_vec();
            key.push(0);
            key.extend_from_slice(a.cohort.as_bytes());
            assert_eq!(m.key(), Some(&key[..]), "key: flag NUL cohort");
            a
        })
        .collect()
}

/// One case for flagd: a flag, a context, `KEYS` targeting keys.
fn case(flag: &str, platform: Option<&str>) -> Value {
    let context = platform.map_or(json!({}), |p| json!({ "platform": p }));
    json!({
        "flag": flag,
        "type": if flag == CHECKOUT { "boolean" } else { "string" },
        "context": context,
        "keys": KEYS,
        "prefix": format!("{}-user-", platform.unwrap_or("none")),
    })
}

/// A case that also lists which keys are served the treatment.
fn listing(flag: &str, platform: Option<&str>, treatment: &str) -> Value {
    let mut c = case(flag, platform);
    c["list"] = json!(treatment);
    c
}

/// Evaluates `cases` on the file with flagd's evaluator: per case, variant → count.
fn flagd_evaluate(file: &Path, cases: &[Value]) -> Vec<serde_json::Map<String, Value>> {
    flagd_run(file, cases)
        .into_iter()
        .map(|r| r["variants"].as_object().unwrap().clone())
        .collect()
}

/// The evaluator's result per case: `variants`, `reasons`, `listed`.
fn flagd_run(file: &Path, cases: &[Value]) -> Vec<Value> {
    let node = std::env::var("GUARDRAIL_NODE").unwrap_or_else(|_| "node".into());
    let mut child = Command::new(&node)
        .arg(EVALUATOR)
        .arg(file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("running {node} {EVALUATOR}: {e} (these tests need Node.js: run scripts/test)")
        });
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(Value::Array(cases.to_vec()).to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "flagd's evaluator failed ({}):\n{}\n(it needs tests/interop/flagd/node_modules: \
         run scripts/test, or npm ci --prefix tests/interop/flagd)",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("the evaluator's JSON");
    let results = v.as_array().expect("one result per case").clone();
    assert_eq!(results.len(), cases.len());
    for r in &results {
        assert_eq!(
            r["reasons"]
                .as_object()
                .map(|m| m.keys().collect::<Vec<_>>()),
            Some(vec![&"TARGETING_MATCH".to_string()]),
            "flagd evaluated every key by the targeting rule: {}",
            r["reasons"]
        );
    }
    results
}

/// Asserts the treatment share of `counts` is `percent` within 5 binomial standard
/// deviations (exactly, for 0 and 100), and that only the two variants were served.
fn assert_split(
    counts: &serde_json::Map<String, Value>,
    treatment: &str,
    control: &str,
    percent: f64,
    what: &str,
) {
    let n = |v: &str| counts.get(v).and_then(Value::as_u64).unwrap_or(0);
    let (t, c) = (n(treatment), n(control));
    assert_eq!(
        t + c,
        KEYS,
        "{what}: only {treatment}/{control} served: {counts:?}"
    );
    let p = percent / 100.0;
    let share = t as f64 / KEYS as f64;
    let tolerance = 5.0 * (p * (1.0 - p) / KEYS as f64).sqrt();
    assert!(
        (share - p).abs() <= tolerance,
        "{what}: treatment share {share:.4}, expected {p} ± {tolerance:.4} ({counts:?})"
    );
    println!(
        "{what}: {treatment} {t} / {control} {c} ({:.2}% treatment, expected {percent}%)",
        share * 100.0
    );
}

/// A flag file with a flag guardrail does not manage, oddly formatted, and evaluators.
const UNMANAGED: &str = r##"{ "state":"ENABLED", "variants": {"red":"#f00","blue":"#00f"},
      "defaultVariant":"red", "targeting": {"if": [{"$ref": "staff"}, "blue", null]} }"##;

fn initial_file(dir: &Path) -> PathBuf {
    let path = dir.join("flags.flagd.json");
    let text = format!(
        "{{\n  \"$schema\": \"https://flagd.dev/schema/v0/flags.json\",\n  \"flags\": {{\n    \"header-color\": {UNMANAGED}\n  }},\n  \"$evaluators\": {{ \"staff\": {{\"ends_with\": [{{\"var\": \"email\"}}, \"@example.com\"]}} }}\n}}\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// The engine on the demo's traffic: 8 windows, a regression on mobile-web checkout.
/// Returns the commands it published once 7 windows closed.
async fn run_engine(env: &Env) -> Vec<FlagCommand> {
    let running = common::Running::start(&env.config, &env.policy).await;
    let windows = 8;
    let window_ms = env.policy.window.size_ms;
    let start = (wall_ms() / window_ms - i64::from(windows)) * window_ms;
    let mut sim = Simulator::new(Scenario::demo(start, windows, 24_000));
    let producer: FutureProducer =
        guardrail::kafka::producer_config(env.config.kafka.as_ref().unwrap())
            .set("linger.ms", "20")
            .create()
            .unwrap();
    let schemas = SchemaRegistry::shipped().unwrap();
    while let Some(events) = sim.next_window() {
        guardrail::kafka::produce_events(&producer, &env.config.topics, &schemas, &events)
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while counter_total(&running.metrics, "guardrail_windows_closed_total") < f64::from(windows - 1)
    {
        assert!(!running.engine.is_finished(), "the engine stopped early");
        assert!(Instant::now() < deadline, "windows did not close");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    running.stop().await;
    let reader = guardrail::kafka::OutputReader::commands().unwrap();
    read_topic(&env.brokers, &env.config.topics.flag_commands)
        .iter()
        .map(|m| reader.decode(m.payload().unwrap()).expect("a command"))
        .collect()
}

/// The engine's commands applied, the file evaluated by flagd: the paused cohort stays
/// at its percent while all traffic advances, a rolled-back cohort gets the control,
/// advanced cohorts the treatment; the unmanaged flag is kept byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_commands_applied_to_flagd_and_evaluated_by_flagd() {
    let t0 = Instant::now();
    let env = env();
    let commands = run_engine(&env).await;
    println!(
        "engine: {} commands in {:.1}s",
        commands.len(),
        t0.elapsed().as_secs_f64()
    );
    let pause = commands
        .iter()
        .find(|c| c.flag_key == CHECKOUT && c.cohort == MOBILE && c.action == Action::Pause)
        .unwrap_or_else(|| panic!("the engine pauses {CHECKOUT} on {MOBILE}: {commands:#?}"));
    assert_eq!((pause.from_percent, pause.to_percent), (20.0, 20.0));
    let search_all = commands
        .iter()
        .find(|c| c.flag_key == SEARCH && c.cohort == "*" && c.action == Action::Advance)
        .expect("search-ranking-v2 advances for all traffic");
    assert!(
        commands.iter().all(|c| !c.requires_approval),
        "no approval needed so far"
    );

    let flagd = initial_file(env.dir.path());
    let apply = start_apply(&env, &flagd, "guardrail-apply");
    let n = commands.len() as u64;
    apply
        .wait("the engine's commands", |c| count(&c.applied) == n)
        .await;

    // What the engine would issue next: search-ranking-v2 rolled back on iOS (its
    // latency guardrail's action), checkout-redesign advanced for all traffic (manual
    // approval: it waits).
    let next = wall_ms() / 900_000;
    let rollback = command(SEARCH, "platform=ios", Action::Rollback, 100.0, 0.0, next);
    let advance = command(CHECKOUT, "*", Action::Advance, 20.0, 50.0, next);
    produce_commands(&env, &[rollback.clone(), advance.clone()]).await;
    apply
        .wait("the rollback and the advance", |c| {
            count(&c.applied) == n + 1 && count(&c.pending) == 1
        })
        .await;
    let before_approval = std::fs::read_to_string(&flagd).unwrap();
    let counts = flagd_evaluate(
        &flagd,
        &[case(CHECKOUT, Some("desktop-web")), case(CHECKOUT, None)],
    );
    for (c, what) in counts.iter().zip(["desktop-web", "no platform"]) {
        assert_split(
            c,
            "on",
            "off",
            20.0,
            &format!("before approval, {CHECKOUT} {what}"),
        );
    }

    // Approved with the CLI.
    let out = Command::new(env!("CARGO_BIN_EXE_guardrail"))
        .args(["apply", "approve", "--config"])
        .arg(&env.config_file)
        .args(["--flag", CHECKOUT, "--by", "alice", &advance.command_id])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "apply approve: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    apply
        .wait("the approved advance", |c| count(&c.applied) == n + 2)
        .await;
    let counters = apply.stop().await;
    assert_eq!(count(&counters.skipped) + count(&counters.undecodable), 0);
    let text = std::fs::read_to_string(&flagd).unwrap();
    assert_ne!(text, before_approval, "the approval changed the file");
    assert!(
        text.contains(&format!("\"header-color\": {UNMANAGED}")),
        "unmanaged flag kept byte for byte:\n{text}"
    );
    assert!(text.contains(
        r#""$evaluators": { "staff": {"ends_with": [{"var": "email"}, "@example.com"]} }"#
    ));

    // flagd evaluates the file.
    let platforms = ["mobile-web", "ios", "android", "desktop-web"];
    let mut cases: Vec<Value> = platforms.iter().map(|p| case(CHECKOUT, Some(p))).collect();
    cases.push(case(CHECKOUT, None));
    cases.extend(platforms.iter().map(|p| case(SEARCH, Some(p))));
    cases.push(case(SEARCH, None));
    let counts = flagd_evaluate(&flagd, &cases);
    assert_split(
        &counts[0],
        "on",
        "off",
        20.0,
        "checkout-redesign mobile-web (paused at 20%)",
    );
    for (i, p) in platforms.iter().enumerate().skip(1) {
        assert_split(
            &counts[i],
            "on",
            "off",
            50.0,
            &format!("checkout-redesign {p} (advanced)"),
        );
    }
    assert_split(
        &counts[4],
        "on",
        "off",
        50.0,
        "checkout-redesign without platform",
    );
    assert_split(
        &counts[6],
        "v2",
        "v1",
        0.0,
        "search-ranking-v2 ios (rolled back)",
    );
    for (i, p) in [(5, "mobile-web"), (7, "android"), (8, "desktop-web")] {
        assert_split(
            &counts[i],
            "v2",
            "v1",
            100.0,
            &format!("search-ranking-v2 {p} (advanced)"),
        );
    }
    assert_split(
        &counts[9],
        "v2",
        "v1",
        search_all.to_percent,
        "search-ranking-v2 without platform",
    );

    // guardrail-applied: the newest record per cohort says what it is served.
    let applied = read_applied(&env);
    let newest = |flag: &str, cohort: &str| {
        applied
            .iter()
            .rev()
            .find(|a| a.flag_key == flag && a.cohort == cohort)
            .unwrap_or_else(|| panic!("{flag} {cohort} on guardrail-applied"))
    };
    let a = newest(CHECKOUT, "*");
    assert_eq!((a.percent, a.approved_by.as_deref()), (50.0, Some("alice")));
    assert_eq!(a.command_id, advance.command_id);
    let m = newest(CHECKOUT, MOBILE);
    assert_eq!(
        (m.percent, m.action.as_str(), m.command_id.as_str()),
        (20.0, "PAUSE", pause.command_id.as_str())
    );
    assert_eq!(newest(SEARCH, "platform=ios").percent, 0.0);

    // Every command delivered again (a consumer group that starts from the beginning,
    // and the commands produced twice): nothing changes, nothing is written.
    let mut all = commands.clone();
    all.extend([rollback, advance]);
    produce_commands(&env, &all).await;
    let again = start_apply(&env, &flagd, "guardrail-apply-replayed");
    let total = 2 * all.len() as u64;
    again
        .wait("every command twice", |c| handled(c) == total)
        .await;
    let c = again.stop().await;
    assert_eq!(count(&c.duplicates), total, "{c:?}");
    assert_eq!(count(&c.file_writes), 0);
    assert_eq!(
        std::fs::read_to_string(&flagd).unwrap(),
        text,
        "the file is unchanged"
    );
    println!("total {:.1}s", t0.elapsed().as_secs_f64());
}

/// An ADVANCE that needs approval is not applied before its approval, stays pending
/// across a restart (its offset is not committed; the PAUSE read after it is not applied
/// twice), and is applied once approved; then its offset is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_advance_waits_for_its_approval_across_a_restart() {
    let env = env();
    let flagd = env.dir.path().join("new").join("flags.json");
    std::fs::create_dir_all(flagd.parent().unwrap()).unwrap();
    let w = wall_ms() / 900_000 - 4;
    let advance = command(CHECKOUT, "*", Action::Advance, 20.0, 50.0, w);
    assert!(advance.requires_approval);
    let pause = command(CHECKOUT, MOBILE, Action::Pause, 20.0, 20.0, w);
    produce_commands(&env, &[advance.clone(), pause.clone()]).await;

    let group = "apply-approvals";
    let apply = start_apply(&env, &flagd, group);
    apply
        .wait("the pause applied, the advance pending", |c| {
            count(&c.applied) == 1 && count(&c.pending) == 1
        })
        .await;
    apply.stop().await;
    let paused = std::fs::read_to_string(&flagd).expect("the file was created");
    let before = flagd_run(
        &flagd,
        &[
            case(CHECKOUT, Some("mobile-web")),
            listing(CHECKOUT, Some("ios"), "on"),
        ],
    );
    let counts = |r: &Value| r["variants"].as_object().unwrap().clone();
    assert_split(&counts(&before[0]), "on", "off", 20.0, "mobile-web, paused");
    assert_split(
        &counts(&before[1]),
        "on",
        "off",
        20.0,
        "ios before the approval",
    );

    // A restart: the advance is read again (still pending), the pause is a duplicate.
    let apply = start_apply(&env, &flagd, group);
    apply
        .wait("the re-read", |c| {
            count(&c.pending) == 1 && count(&c.duplicates) == 1
        })
        .await;
    assert_eq!(count(&apply.counters.file_writes), 0, "nothing re-applied");
    assert_eq!(std::fs::read_to_string(&flagd).unwrap(), paused);

    let a = guardrail::apply::approve(&env.config, CHECKOUT, &advance.command_id, "bob")
        .await
        .expect("approval published");
    assert_eq!(a.approved_by, "bob");
    apply
        .wait("the approved advance", |c| count(&c.applied) == 1)
        .await;
    apply.stop().await;
    let after = flagd_run(
        &flagd,
        &[
            case(CHECKOUT, Some("mobile-web")),
            listing(CHECKOUT, Some("ios"), "on"),
        ],
    );
    assert_split(&counts(&after[0]), "on", "off", 20.0, "mobile-web, paused");
    assert_split(
        &counts(&after[1]),
        "on",
        "off",
        50.0,
        "ios after the approval",
    );
    // Sticky: every unit in treatment at 20% is still in treatment at 50%.
    let listed = |r: &Value| -> std::collections::BTreeSet<u64> {
        r["listed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_u64().unwrap())
            .collect()
    };
    let (was, now) = (listed(&before[1]), listed(&after[1]));
    assert!(
        was.is_subset(&now),
        "{} of {} treated units left treatment",
        was.difference(&now).count(),
        was.len()
    );
    println!(
        "sticky: {} units treated at 20%, all among the {} at 50%",
        was.len(),
        now.len()
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&flagd).unwrap()).unwrap();
    let state: Value = serde_json::from_str(
        v["flags"][CHECKOUT]["metadata"]["guardrail.state"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(state["cohorts"]["*"]["approved_by"], json!("bob"));
    assert_eq!(
        state["cohorts"]["*"]["command_id"],
        json!(advance.command_id)
    );

    // Restarted once more: the approved advance's offset was committed, so only a new
    // command is read.
    let hold = command(
        CHECKOUT,
        "platform=android",
        Action::Hold,
        50.0,
        50.0,
        w + 1,
    );
    produce_commands(&env, &[hold]).await;
    let apply = start_apply(&env, &flagd, group);
    apply.wait("the hold", |c| handled(c) == 1).await;
    let c = apply.stop().await;
    assert_eq!(
        (count(&c.applied), count(&c.duplicates), count(&c.pending)),
        (1, 0, 0)
    );
    let held = flagd_evaluate(&flagd, &[case(CHECKOUT, Some("android"))]);
    assert_split(&held[0], "on", "off", 50.0, "android, held at 50%");
}

/// `guardrail gameday` on a live (mock) cluster: the engine and `apply` running, a
/// synthetic error-rate regression (×5) injected into the mobile-web cohort of
/// checkout-redesign in real time (4-second windows), and the loop measured: the PAUSE
/// arrives, `apply` applies it to the flagd file, and the report gives both cycle times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gameday_measures_the_loop_from_injection_to_the_applied_pause() {
    let env = env();
    // Real-time windows short enough for a test: 4 s, closed 1 s after their end.
    let text = guardrail::demo::example_per_window()
        .replace("size = \"15m\"", "size = \"4s\"")
        .replace("allowed_lateness = \"2m\"", "allowed_lateness = \"1s\"")
        .replace("idle_timeout = \"30s\"", "idle_timeout = \"1s\"");
    let (mut config, policy) =
        guardrail::demo::demo_config_text(&text, &env.brokers, "127.0.0.1:0").expect("config");
    config.kafka = env.config.kafka.clone();
    config.topics = env.config.topics.clone();
    let policy = Arc::new(policy);
    let engine = common::Running::start(&config, &policy).await;
    let flagd = initial_file(env.dir.path());
    let apply = {
        let (stop, rx) = watch::channel(false);
        let counters = Arc::new(Counters::default());
        let (config, policy, c) = (config.clone(), policy.clone(), counters.clone());
        let opts = Options {
            flagd: flagd.clone(),
            group_id: "gameday-apply".into(),
        };
        let task =
            tokio::spawn(
                async move { guardrail::apply::run(&config, &policy, &opts, c, rx).await },
            );
        Apply {
            stop,
            task,
            counters,
        }
    };
    let flag = policy.flags.iter().find(|f| f.key == CHECKOUT).unwrap();
    let spec = guardrail::gameday::Spec {
        id: "test".into(),
        flag: CHECKOUT.into(),
        cohort: MOBILE.into(),
        effects: guardrail::gameday::parse_effects(&policy, flag, &["error_rate=x5".into()])
            .unwrap(),
        rate: 500.0,
        percent: flag.start_percent,
        duration: Duration::from_secs(90),
        applied_wait: Duration::from_secs(30),
        seed: 3,
    };
    let report = guardrail::gameday::run(&config, &policy, &spec)
        .await
        .expect("game day");
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    let command = report.command.as_ref().expect("a command for the cohort");
    assert_eq!(command.action, "PAUSE", "{}", command.reason);
    assert!(
        command.reason.contains("checkout_error_rate"),
        "{}",
        command.reason
    );
    let to_command = report.cycle_time_to_command_s.unwrap();
    // Two breached 4-second windows, each closed about a second after its end.
    assert!(
        (4.0..60.0).contains(&to_command),
        "{to_command}s to the command"
    );
    let Some(applied) = report.applied.as_ref() else {
        panic!(
            "the pause was not applied: apply {} with {:?}",
            if apply.task.is_finished() {
                "stopped"
            } else {
                "running"
            },
            apply.counters
        );
    };
    assert_eq!(
        applied.percent, flag.start_percent,
        "a pause pins the percent"
    );
    let to_applied = report.cycle_time_to_applied_s.unwrap();
    assert!(to_applied >= to_command, "{to_applied} >= {to_command}");
    assert!(report.command_to_applied_s.unwrap() >= 0.0);
    assert!(report.unsafe_units > 0 && report.unsafe_units < report.units);
    // The synthetic events are marked: the flagd file now pins the cohort.
    let text = std::fs::read_to_string(&flagd).unwrap();
    assert!(text.contains("mobile-web"), "{text}");
    // The engine measures the same loop from the applied record: command -> applied,
    // and first breached window -> applied (time in unsafe exposure).
    let histogram = |name: &str| {
        engine
            .metrics
            .gather()
            .into_iter()
            .filter(|f| f.name() == name)
            .flat_map(|f| {
                f.get_metric()
                    .iter()
                    .filter(|m| m.get_label().iter().any(|l| l.value() == "PAUSE"))
                    .map(|m| {
                        let h = m.get_histogram();
                        (h.get_sample_count(), h.get_sample_sum())
                    })
                    .collect::<Vec<_>>()
            })
            .fold((0, 0.0), |(n, s), (a, b)| (n + a, s + b))
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while histogram("guardrail_unsafe_exposure_seconds").0 == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // One per PAUSE applied: mobile-web's, and `*`'s when all traffic paused too.
    let (n, signal_to_applied) = histogram("guardrail_signal_to_applied_seconds");
    assert!(n >= 1, "the PAUSE applied");
    let (m, exposure) = histogram("guardrail_unsafe_exposure_seconds");
    assert_eq!(m, n, "each applied PAUSE has its exposure");
    // Each breach began at least a 4-second window before its command was issued.
    let k = n as f64;
    assert!(
        exposure >= signal_to_applied + 4.0 * k && exposure < k * (to_applied + 10.0),
        "{n} PAUSE(s): exposure {exposure}s, command to applied {signal_to_applied}s, game day {to_applied}s"
    );
    apply.stop().await;
    engine.stop().await;
    drop(env);
}
