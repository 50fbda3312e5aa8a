//! Scale-out (SPEC §11) on librdkafka's mock cluster: three `guardrail run --stage
//! ingest` and two `--stage judge` child processes against a single instance (the
//! reference, in this process) and `replay`, on the same simulated events. Midway one
//! ingest instance and one judge are killed with SIGKILL and a new ingest instance
//! joins (rebalances of both groups). The scaled run must issue the same command_ids
//! as the reference and as replay, and every (flag, cohort, window) the reference
//! judged must have the same decision, state and evidence numbers (sums merged in
//! another order: relative difference ≤ 1e-9).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use guardrail::clock::wall_ms;
use guardrail::config::Config;
use guardrail::ingest::decode::SchemaRegistry;
use guardrail::kafka::OutputReader;
use guardrail::model::Source;
use guardrail::policy::Policy;
use guardrail::records::{FlagCommand, WindowEvaluation};
use guardrail::sim::{Scenario, Simulator};
use rdkafka::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::FutureProducer;

mod common;
use common::{read_partition, read_topic};

const WINDOWS: u32 = 8;
const SESSIONS: u32 = 24_000;
/// Keeps ~580k events within the mock's 5 MiB per partition.
const INPUT_PARTITIONS: i32 = 24;
const PARTIALS_PARTITIONS: i32 = 4;
const REF: &str = "ref-";

type Cluster = MockCluster<'static, rdkafka::producer::DefaultProducerContext>;

struct Env {
    cluster: Option<Cluster>,
    brokers: String,
    /// The single instance's: its own group and output topics (`ref-…`).
    reference: Config,
    /// The scaled run's: the example's names.
    config: Config,
    policy: Arc<Policy>,
    start: i64,
    window_ms: i64,
    dir: tempfile::TempDir,
}

impl Drop for Env {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("GUARDRAIL_KEEP_LOGS").is_some() {
            std::mem::forget(self.cluster.take());
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
            eprintln!("the instances' logs are kept in {}", dir.path().display());
            std::mem::forget(dir);
        }
    }
}

/// The example policy (error rate judged per window) as the children's config file.
fn config_text(brokers: &str, port: u16) -> String {
    guardrail::demo::example_per_window()
        .replace(
            "brokers = \"localhost:9092\"",
            &format!("brokers = \"{brokers}\""),
        )
        .replace(
            "\"client.id\" = \"guardrail\"",
            "\"client.id\" = \"guardrail\"\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"1000\"",
        )
        .replace("idle_timeout = \"30s\"", "idle_timeout = \"2s\"")
        .replace(
            "listen = \"0.0.0.0:9464\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        )
        + "\n[scale]\npartials_timeout = \"45s\"\n"
}

fn env() -> Env {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let config = Config::parse(&config_text(&brokers, 0)).expect("config");
    let policy = Policy::compile(&config).expect("policy");
    let mut reference = config.clone();
    {
        let t = &mut reference.topics;
        t.flag_commands = format!("{REF}{}", t.flag_commands);
        t.evaluations = format!("{REF}{}", t.evaluations);
        t.state = format!("{REF}{}", t.state);
        t.partials = format!("{REF}{}", t.partials);
        let k = reference.kafka.as_mut().unwrap();
        k.group_id = format!("{REF}{}", k.group_id);
    }
    let t = &config.topics;
    for topic in [&t.product_events, &t.error_events, &t.support_signals] {
        cluster.create_topic(topic, INPUT_PARTITIONS, 1).unwrap();
    }
    for c in [&config, &reference] {
        let t = &c.topics;
        for topic in [&t.flag_commands, &t.evaluations] {
            cluster.create_topic(topic, 1, 1).unwrap();
        }
        cluster.create_topic(&t.state, 3, 1).unwrap();
    }
    cluster.create_topic(&t.dlq, 1, 1).unwrap();
    cluster
        .create_topic(&t.partials, PARTIALS_PARTITIONS, 1)
        .unwrap();
    let window_ms = policy.window.size_ms;
    let start = (wall_ms() / window_ms - i64::from(WINDOWS)) * window_ms;
    Env {
        cluster: Some(cluster),
        brokers,
        reference,
        config,
        policy: Arc::new(policy),
        start,
        window_ms,
        dir: tempfile::Builder::new()
            .prefix("guardrail-scale-out")
            .tempdir()
            .unwrap(),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child `guardrail run --stage <stage>` with its own port and log.
struct Instance {
    name: String,
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Instance {
    fn spawn(env: &Env, stage: &str, name: &str) -> Instance {
        let port = free_port();
        let path = env.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, config_text(&env.brokers, port)).unwrap();
        let log = env.dir.path().join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_guardrail"))
            .args(["run", "--config", path.to_str().unwrap(), "--stage", stage])
            .args(["--log-format", "json", "--grace", "5"])
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("starting guardrail run");
        Instance {
            name: name.to_string(),
            child,
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            log,
        }
    }

    fn kill_9(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().unwrap();
    }

    fn term(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "{} did not stop cleanly ({status}):\n{}",
            self.name,
            tail(&self.log)
        );
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

async fn metrics_text(addr: SocketAddr) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// The sum of a metric's samples (all label sets) on an instance.
async fn metric_sum(addr: SocketAddr, name: &str) -> f64 {
    let Some(text) = metrics_text(addr).await else {
        return 0.0;
    };
    text.lines()
        .filter(|l| {
            l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b' ' | b'{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn producer(env: &Env) -> FutureProducer {
    guardrail::kafka::producer_config(env.config.kafka.as_ref().unwrap())
        .set("linger.ms", "20")
        .create()
        .expect("producer")
}

async fn produce(env: &Env, producer: &FutureProducer, sim: &mut Simulator, windows: u32) -> u64 {
    let schemas = SchemaRegistry::shipped().unwrap();
    let mut n = 0;
    for _ in 0..windows {
        let Some(events) = sim.next_window() else {
            break;
        };
        n += guardrail::kafka::produce_events(producer, &env.config.topics, &schemas, &events)
            .await
            .expect("producing");
    }
    n
}

fn evaluations(env: &Env, topic: &str) -> Vec<WindowEvaluation> {
    let reader = OutputReader::evaluations().unwrap();
    read_topic(&env.brokers, topic)
        .iter()
        .map(|m| reader.decode(m.payload().unwrap()).expect("evaluation"))
        .collect()
}

fn commands(env: &Env, topic: &str) -> Vec<FlagCommand> {
    let reader = OutputReader::commands().unwrap();
    read_topic(&env.brokers, topic)
        .iter()
        .map(|m| reader.decode(m.payload().unwrap()).expect("command"))
        .collect()
}

/// The windows evaluated for every flag: the fewest any flag of the policy has (a
/// judge that died holding one flag's partials leaves that flag behind the others).
fn windows_evaluated(env: &Env, topic: &str) -> usize {
    let evaluations = evaluations(env, topic);
    env.policy
        .flags
        .iter()
        .map(|f| {
            evaluations
                .iter()
                .filter(|e| e.flag_key == f.key)
                .map(|e| e.window_start)
                .collect::<BTreeSet<_>>()
                .len()
        })
        .min()
        .unwrap_or(0)
}

async fn wait_windows(env: &Env, topic: &str, n: usize, instances: &mut [&mut Instance]) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let got = windows_evaluated(env, topic);
        if got >= n {
            return;
        }
        for i in instances.iter_mut() {
            assert!(i.alive(), "{} exited:\n{}", i.name, tail(&i.log));
        }
        assert!(
            Instant::now() < deadline,
            "{topic}: {got} of {n} windows evaluated"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `replay` over the simulator's events as container files: every command.
fn replayed(env: &Env, produced: u64) -> Vec<FlagCommand> {
    let dir = tempfile::tempdir().unwrap();
    let sim = &mut Simulator::new(Scenario::demo(env.start, WINDOWS, SESSIONS));
    let written = guardrail::sim::write_ocf_files(sim, dir.path()).unwrap();
    assert_eq!(written, produced, "the same events");
    let files = vec![
        (Source::Product, dir.path().join("product-events.avro")),
        (Source::Errors, dir.path().join("error-events.avro")),
        (Source::Support, dir.path().join("support-signals.avro")),
    ];
    let mut out = Vec::new();
    guardrail::replay::replay(env.policy.clone(), &files, wall_ms(), |j| {
        out.extend(j.command);
        Ok(())
    })
    .expect("replay");
    out
}

/// Equal up to float summation order.
fn close(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs()) || (a.is_nan() && b.is_nan())
}

fn close_opt(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => close(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// One evaluation per (flag, cohort, window); a re-published one (at-least-once: a
/// judge killed between its outputs and its commit) must be the same decision.
fn by_cell(evals: Vec<WindowEvaluation>) -> BTreeMap<(String, String, i64), WindowEvaluation> {
    let mut out: BTreeMap<(String, String, i64), WindowEvaluation> = BTreeMap::new();
    for e in evals {
        let key = (e.flag_key.clone(), e.cohort.clone(), e.window_start);
        if let Some(prev) = out.get(&key) {
            assert_eq!(
                (prev.decision, &prev.command_id, &prev.state),
                (e.decision, &e.command_id, &e.state),
                "{key:?} judged twice, differently"
            );
        }
        out.insert(key, e);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_ingest_and_two_judges_decide_like_one_instance_through_kills_and_rebalances() {
    let t0 = Instant::now();
    let env = env();
    let producer = producer(&env);
    let mut sim = Simulator::new(Scenario::demo(env.start, WINDOWS, SESSIONS));
    let mut produced = produce(&env, &producer, &mut sim, WINDOWS / 2).await;

    // The reference: one instance, in this process.
    let served = guardrail::http::start("127.0.0.1:0", &env.policy)
        .await
        .unwrap();
    let reference = guardrail::app::spawn_engine(
        &served,
        env.reference.clone(),
        env.policy.clone(),
        Duration::from_secs(10),
        None,
    );
    let mut ingest: Vec<Instance> = (1..=3)
        .map(|i| Instance::spawn(&env, "ingest", &format!("ingest-{i}")))
        .collect();
    let mut judges: Vec<Instance> = (1..=2)
        .map(|i| Instance::spawn(&env, "judge", &format!("judge-{i}")))
        .collect();
    let scaled = env.config.topics.evaluations.clone();
    {
        let mut all: Vec<&mut Instance> = ingest.iter_mut().chain(judges.iter_mut()).collect();
        wait_windows(&env, &scaled, 2, &mut all).await;
    }
    println!(
        "scaled run judged 2 windows after {:.1}s",
        t0.elapsed().as_secs_f64()
    );

    // kill -9 an ingest instance in the middle of the stream; its partitions move.
    let mut killed = ingest.remove(0);
    produced += produce(&env, &producer, &mut sim, 1).await;
    killed.kill_9();
    println!(
        "killed {} at {:.1}s",
        killed.name,
        t0.elapsed().as_secs_f64()
    );
    produced += produce(&env, &producer, &mut sim, 1).await;
    // kill -9 a judge; its flags move to the other, which restores their state.
    let mut killed_judge = judges.remove(0);
    killed_judge.kill_9();
    println!(
        "killed {} at {:.1}s",
        killed_judge.name,
        t0.elapsed().as_secs_f64()
    );
    // A new ingest instance joins: another rebalance.
    ingest.push(Instance::spawn(&env, "ingest", "ingest-4"));
    produced += produce(&env, &producer, &mut sim, WINDOWS).await;
    {
        let mut all: Vec<&mut Instance> = ingest.iter_mut().chain(judges.iter_mut()).collect();
        wait_windows(&env, &scaled, WINDOWS as usize - 1, &mut all).await;
    }
    let reference_topic = env.reference.topics.evaluations.clone();
    wait_windows(&env, &reference_topic, WINDOWS as usize - 1, &mut []).await;
    println!(
        "both judged every window at {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    // What the judges counted.
    let judge = judges[0].addr;
    let duplicates = metric_sum(
        judge,
        "guardrail_partials_received_total{outcome=\"duplicate\"}",
    )
    .await;
    let late = metric_sum(judge, "guardrail_partials_received_total{outcome=\"late\"}").await;
    let missing = metric_sum(judge, "guardrail_partials_missing_total").await;
    let mut published = 0.0;
    for i in &ingest {
        published += metric_sum(i.addr, "guardrail_partials_published_total").await;
    }
    println!(
        "partials: published by the live ingest instances {published}, judge-2 saw \
         {duplicates} duplicate(s), {late} late, {missing} missing partition report(s)"
    );
    let bytes: usize = (0..PARTIALS_PARTITIONS)
        .flat_map(|p| read_partition(&env.brokers, &env.config.topics.partials, p))
        .map(|m| m.payload().map_or(0, <[u8]>::len))
        .sum();
    println!("partials topic: {bytes} bytes");
    for i in ingest.into_iter().chain(judges) {
        i.term();
    }
    let _ = served.stop.send(true);
    reference
        .await
        .unwrap()
        .expect("the reference stops cleanly");

    // Decisions: the same command ids as the reference and as replay.
    let last_closed_end = env.start + i64::from(WINDOWS - 1) * env.window_ms;
    let ids = |cs: Vec<FlagCommand>| -> BTreeSet<String> {
        cs.into_iter()
            .filter(|c| c.window_end <= last_closed_end)
            .map(|c| c.command_id)
            .collect()
    };
    let from_scaled = ids(commands(&env, &env.config.topics.flag_commands));
    let from_reference = ids(commands(&env, &env.reference.topics.flag_commands));
    let from_replay = ids(replayed(&env, produced));
    assert!(!from_reference.is_empty(), "the reference issued commands");
    assert_eq!(
        from_scaled, from_reference,
        "scaled vs one instance: command ids"
    );
    assert_eq!(from_scaled, from_replay, "scaled vs replay: command ids");

    // Evidence: every (flag, cohort, window) the reference judged, the same.
    let scaled = by_cell(evaluations(&env, &env.config.topics.evaluations));
    let reference = by_cell(evaluations(&env, &env.reference.topics.evaluations));
    let mut compared = 0;
    for (key, r) in &reference {
        if key.2 + env.window_ms > last_closed_end {
            continue;
        }
        let s = scaled
            .get(key)
            .unwrap_or_else(|| panic!("{key:?}: judged by the reference, not by the scaled run"));
        assert_eq!(
            (s.decision, &s.command_id, &s.state, s.healthy_windows),
            (r.decision, &r.command_id, &r.state, r.healthy_windows),
            "{key:?}: decision"
        );
        assert!(
            close_opt(s.rollout_percent, r.rollout_percent),
            "{key:?}: percent"
        );
        assert_eq!(s.evidence.len(), r.evidence.len(), "{key:?}: evidence");
        for (a, b) in s.evidence.iter().zip(&r.evidence) {
            let what = format!("{key:?} {}", a.metric);
            assert_eq!(
                (&a.metric, &a.status, a.breached),
                (&b.metric, &b.status, b.breached),
                "{what}"
            );
            assert_eq!(
                (
                    a.treatment_samples,
                    a.control_samples,
                    a.consecutive_windows
                ),
                (
                    b.treatment_samples,
                    b.control_samples,
                    b.consecutive_windows
                ),
                "{what}: samples"
            );
            assert!(
                close(a.treatment_value, b.treatment_value),
                "{what}: treatment {} vs {}",
                a.treatment_value,
                b.treatment_value
            );
            assert!(
                close_opt(a.control_value, b.control_value),
                "{what}: control {:?} vs {:?}",
                a.control_value,
                b.control_value
            );
            assert!(
                close_opt(a.p_value, b.p_value),
                "{what}: p {:?} vs {:?}",
                a.p_value,
                b.p_value
            );
            assert!(
                close_opt(a.ci_lower, b.ci_lower) && close_opt(a.ci_upper, b.ci_upper),
                "{what}: interval"
            );
            assert!(close_opt(a.threshold, b.threshold), "{what}: threshold");
        }
        compared += 1;
    }
    assert!(compared > 20, "only {compared} evaluations compared");
    println!(
        "{compared} evaluations and {} command ids equal; total {:.1}s",
        from_scaled.len(),
        t0.elapsed().as_secs_f64()
    );
    drop(env);
}

/// A partial of `flag` for window `k` from input `topic`/0, without data.
fn empty_partial(env: &Env, flag: usize, topic: &str, k: i64) -> Vec<u8> {
    let f = &env.policy.flags[flag];
    guardrail::scale::partial::encode(&guardrail::scale::partial::Partial {
        flag_key: f.key.clone(),
        policy_version: f.policy_version.clone(),
        window_start: env.start + k * env.window_ms,
        window_end: env.start + (k + 1) * env.window_ms,
        topic: topic.to_string(),
        partition: 0,
        first_offset: -1,
        read_until: 0,
        late_events: 0,
        produced_at: wall_ms(),
        instance: "test".into(),
        cohorts: Vec::new(),
    })
}

/// Point 3 on its own (a judge in this process, partials written by the test): a
/// window one input partition never reported is judged after the partials timeout,
/// counted as missing; the partition's partial arriving after that is dead-lettered as
/// `late_partial`, a repeated one is only counted, an unreadable one is dead-lettered
/// as `invalid_partial`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_late_duplicate_and_invalid_partials() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let mut config = Config::parse(&config_text(&brokers, 0)).expect("config");
    config.scale.partials_timeout = "3s".into();
    let policy = Policy::compile(&config).expect("policy");
    let t = &config.topics;
    // One partition per input: the judge waits for these three.
    for topic in [&t.product_events, &t.error_events, &t.support_signals] {
        cluster.create_topic(topic, 1, 1).unwrap();
    }
    for topic in [&t.flag_commands, &t.evaluations, &t.dlq, &t.partials] {
        cluster.create_topic(topic, 1, 1).unwrap();
    }
    cluster.create_topic(&t.state, 1, 1).unwrap();
    let window_ms = policy.window.size_ms;
    let env = Env {
        start: (wall_ms() / window_ms - 4) * window_ms,
        window_ms,
        policy: Arc::new(policy),
        reference: config.clone(),
        config: config.clone(),
        brokers: brokers.clone(),
        cluster: Some(cluster),
        dir: tempfile::tempdir().unwrap(),
    };
    let served = guardrail::http::start("127.0.0.1:0", &env.policy)
        .await
        .unwrap();
    let registry = served.registry.clone();
    let judge = guardrail::app::spawn_stage(
        &served,
        guardrail::app::Stage::Judge,
        config.clone(),
        env.policy.clone(),
        Duration::from_secs(5),
        None,
    );
    let send = |bytes: Vec<u8>| {
        let producer = producer(&env);
        let topic = env.config.topics.partials.clone();
        async move {
            producer
                .send(
                    rdkafka::producer::FutureRecord::<str, [u8]>::to(&topic)
                        .key("k")
                        .payload(&bytes),
                    Duration::from_secs(5),
                )
                .await
                .map_err(|(e, _)| e)
                .expect("producing a partial");
        }
    };
    let counter = |name: &str, label: Option<&str>| -> f64 {
        registry
            .gather()
            .iter()
            .filter(|f| f.name() == name)
            .flat_map(|f| f.get_metric().iter())
            .filter(|m| label.is_none_or(|l| m.get_label().iter().any(|p| p.value() == l)))
            .map(|m| m.get_counter().get_value())
            .sum()
    };
    let (product, errors, support) = (
        t.product_events.clone(),
        t.error_events.clone(),
        t.support_signals.clone(),
    );
    send(empty_partial(&env, 0, &product, 0)).await;
    send(empty_partial(&env, 0, &errors, 0)).await;
    let sent = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(30);
    // Only the first flag has partials here.
    while evaluations(&env, &t.evaluations).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the timeout did not close the window"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let waited = sent.elapsed();
    assert!(
        waited >= Duration::from_millis(2500),
        "closed after {waited:?}, before the timeout"
    );
    assert_eq!(counter("guardrail_partials_missing_total", None), 1.0);
    let judged = evaluations(&env, &t.evaluations);
    let positions: BTreeSet<(String, i32)> = judged[0]
        .input_positions
        .iter()
        .map(|p| (p.topic.clone(), p.partition))
        .collect();
    assert!(
        positions.contains(&(product.clone(), 0)) && !positions.contains(&(support.clone(), 0))
    );

    send(empty_partial(&env, 0, &support, 0)).await; // late
    send(empty_partial(&env, 0, &product, 0)).await; // duplicate
    send(b"not a partial".to_vec()).await; // invalid
    let deadline = Instant::now() + Duration::from_secs(30);
    let dlq = loop {
        let dlq = read_topic(&brokers, &t.dlq);
        if dlq.len() >= 2 {
            break dlq;
        }
        assert!(Instant::now() < deadline, "{} DLQ records", dlq.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let reasons: Vec<&str> = dlq
        .iter()
        .map(|m| common::header(m, "guardrail.reason").unwrap())
        .collect();
    assert_eq!(reasons, ["late_partial", "invalid_partial"]);
    assert!(
        common::header(&dlq[0], "guardrail.detail")
            .unwrap()
            .contains("judged without")
    );
    assert_eq!(
        counter("guardrail_partials_received_total", Some("late")),
        1.0
    );
    assert_eq!(
        counter("guardrail_partials_received_total", Some("duplicate")),
        1.0
    );
    assert_eq!(
        counter("guardrail_partials_received_total", Some("invalid")),
        1.0
    );
    assert_eq!(counter("guardrail_dlq_total", Some("late_partial")), 1.0);
    let _ = served.stop.send(true);
    judge.await.unwrap().expect("the judge stops cleanly");
    drop(env);
}
