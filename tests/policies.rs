//! Policies as data (SPEC §10) end to end on librdkafka's mock cluster: the engine
//! seeds the policies topic from its config file; `guardrail policy propose` (the
//! binary) validates a stricter policy as `check` does and publishes it; the proposer
//! cannot approve it, another person can; the engine, still running, judges with it
//! from the next window boundary; the audit topic holds every step.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use guardrail::audit::{AuditKind, AuditRecord};
use guardrail::policies::{PolicyKind, PolicyRecord};
use guardrail::records::WindowEvaluation;
use rdkafka::Message;
use rdkafka::mocking::MockCluster;

mod common;
use common::read_topic;

const CHECKOUT: &str = "checkout-redesign";
const MOBILE: &str = "platform=mobile-web";
const SIZE_MS: i64 = 4_000;

fn guardrail(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_guardrail"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("running guardrail")
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The example policy with 4-second windows; `loose`: checkout's error guardrail
/// bounds so wide that a five-fold error rate passes.
fn policy_text(brokers: &str, loose: bool) -> String {
    let mut t = guardrail::demo::example_per_window()
        .replace("size = \"15m\"", "size = \"4s\"")
        .replace("allowed_lateness = \"2m\"", "allowed_lateness = \"1s\"")
        .replace("idle_timeout = \"30s\"", "idle_timeout = \"1s\"")
        .replace(
            "brokers = \"localhost:9092\"",
            &format!("brokers = \"{brokers}\""),
        );
    if loose {
        let strict = "  max = 0.05                   # absolute bound on treatment\n  max_relative_increase = 0.10";
        assert!(t.contains(strict), "the example's checkout error guardrail");
        t = t.replacen(strict, "  max = 0.5\n  max_relative_increase = 10.0", 1);
    }
    t
}

fn evaluations(brokers: &str, topic: &str) -> Vec<WindowEvaluation> {
    let reader = guardrail::kafka::OutputReader::evaluations().unwrap();
    read_topic(brokers, topic)
        .iter()
        .filter_map(|m| reader.decode::<WindowEvaluation>(m.payload()?).ok())
        .collect()
}

fn audit(brokers: &str, topic: &str) -> Vec<AuditRecord> {
    read_topic(brokers, topic)
        .iter()
        .filter_map(|m| AuditRecord::from_json(m.payload()?).ok())
        .collect()
}

fn policies(brokers: &str, topic: &str) -> Vec<PolicyRecord> {
    read_topic(brokers, topic)
        .iter()
        .filter_map(|m| PolicyRecord::from_json(m.payload()?).ok())
        .collect()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_approved_policy_is_judged_with_from_the_next_window_without_a_restart() {
    let started = Instant::now();
    let phase = |what: &str| eprintln!("[{:>6.1}s] {what}", started.elapsed().as_secs_f64());
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let loose = policy_text(&brokers, true);
    let strict = policy_text(&brokers, false);
    let (config, policy) =
        guardrail::demo::demo_config_text(&loose, &brokers, "127.0.0.1:0").expect("config");
    let (_, strict_policy) =
        guardrail::demo::demo_config_text(&strict, &brokers, "127.0.0.1:0").expect("config");
    let t = config.topics.clone();
    for topic in config.input_topics() {
        cluster.create_topic(&topic, 8, 1).unwrap();
    }
    for topic in [
        &t.flag_commands,
        &t.evaluations,
        &t.dlq,
        &t.state,
        &t.approvals,
        &t.applied,
        &t.policies,
        &t.audit,
    ] {
        cluster.create_topic(topic, 1, 1).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let config_file = write(dir.path(), "guardrail.toml", &loose);
    let v1 = policy.flag(CHECKOUT).unwrap().policy_version.clone();
    let v2 = strict_policy.flag(CHECKOUT).unwrap().policy_version.clone();
    assert_ne!(v1, v2);
    let policy = Arc::new(policy);
    let engine = common::Running::start(&config, &policy).await;

    // The engine seeds the topic with the file's documents.
    let deadline = Instant::now() + Duration::from_secs(30);
    let seeded = loop {
        let found: Vec<_> = policies(&brokers, &t.policies)
            .into_iter()
            .filter(|r| r.kind == PolicyKind::Active)
            .collect();
        if found.len() >= 2 || Instant::now() > deadline {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(seeded.len(), 2, "one active record per flag: {seeded:?}");
    phase("seeded");
    let seeded_version = seeded
        .iter()
        .find(|r| r.flag == CHECKOUT)
        .unwrap()
        .version
        .clone();

    // A five-fold error rate on mobile-web's treatment, in real time; the loose policy
    // lets it pass.
    let flag = policy.flag(CHECKOUT).unwrap();
    let spec = guardrail::gameday::Spec {
        id: "policy-test".into(),
        flag: CHECKOUT.into(),
        cohort: MOBILE.into(),
        effects: guardrail::gameday::parse_effects(&policy, flag, &["error_rate=x5".into()])
            .unwrap(),
        rate: 500.0,
        percent: flag.start_percent,
        duration: Duration::from_secs(100),
        applied_wait: Duration::from_secs(1),
        seed: 5,
    };
    let gameday = {
        let (config, policy) = (config.clone(), policy.clone());
        tokio::spawn(async move { guardrail::gameday::run(&config, &policy, &spec).await })
    };
    // Windows judged under the loose policy, with the breach in them, and no stop.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let judged = evaluations(&brokers, &t.evaluations)
            .into_iter()
            .filter(|e| {
                e.flag_key == CHECKOUT
                    && e.cohort == MOBILE
                    && e.evidence
                        .iter()
                        .any(|x| x.metric == "checkout_error_rate" && x.treatment_value > 0.05)
            })
            .count();
        if judged >= 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no loose-policy windows with the regression"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    phase("loose windows judged");
    assert!(
        !gameday.is_finished(),
        "the loose policy must not stop the cohort: {:?}",
        gameday.await
    );

    // An invalid proposal is refused with the path of its error, nothing published.
    let broken = write(
        dir.path(),
        "broken.toml",
        &strict.replacen(
            "metric = \"checkout_error_rate\"",
            "metric = \"checkout_eror_rate\"",
            1,
        ),
    );
    let out = guardrail(&[
        "policy",
        "propose",
        "--config",
        &config_file,
        "--file",
        &broken,
        "--flag",
        CHECKOUT,
        "--by",
        "alice",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("flags[0].guardrails[0].metric") && stderr.contains("checkout_eror_rate"),
        "{}",
        text(&out)
    );

    // Alice proposes the stricter policy; she cannot approve it herself; Bob does.
    phase("invalid proposal refused");
    let proposal = write(dir.path(), "strict.toml", &strict);
    let out = guardrail(&[
        "policy",
        "propose",
        "--config",
        &config_file,
        "--file",
        &proposal,
        "--flag",
        CHECKOUT,
        "--by",
        "alice",
        "--evidence",
        "https://notebooks.example/checkout-errors",
        "--comment",
        "restore the 5% bound",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let proposed: serde_json::Value =
        serde_json::from_slice(out.stdout.split(|&b| b == b'\n').next().unwrap()).unwrap();
    assert_eq!(proposed["flag"], CHECKOUT);
    assert_eq!(proposed["status"], "proposed", "{proposed}");
    assert_eq!(proposed["previous_version"], seeded_version.as_str());
    let version = proposed["version"].as_str().unwrap().to_string();
    // A rival proposal from the same starting point; it goes stale once the first one
    // is approved.
    let rival = write(
        dir.path(),
        "rival.toml",
        &strict.replacen("max = 0.05 ", "max = 0.06 ", 1),
    );
    let out = guardrail(&[
        "policy",
        "propose",
        "--config",
        &config_file,
        "--file",
        &rival,
        "--flag",
        CHECKOUT,
        "--by",
        "carol",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let rival: serde_json::Value =
        serde_json::from_slice(out.stdout.split(|&b| b == b'\n').next().unwrap()).unwrap();
    let rival = rival["version"].as_str().unwrap().to_string();
    assert_ne!(rival, version);
    let out = guardrail(&[
        "policy",
        "approve",
        "--config",
        &config_file,
        CHECKOUT,
        &version,
        "--by",
        "alice",
    ]);
    assert_eq!(out.status.code(), Some(2), "four eyes: {}", text(&out));
    let approved_at = guardrail::clock::wall_ms();
    let out = guardrail(&[
        "policy",
        "approve",
        "--config",
        &config_file,
        CHECKOUT,
        &version,
        "--by",
        "bob",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = guardrail(&[
        "policy",
        "approve",
        "--config",
        &config_file,
        CHECKOUT,
        &rival,
        "--by",
        "bob",
    ]);
    assert_eq!(out.status.code(), Some(2), "stale: {}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is active now"),
        "{}",
        text(&out)
    );

    phase("approved");
    // The engine, still running, pauses the cohort under the new version.
    let report = gameday.await.unwrap().expect("game day");
    let command = report
        .command
        .as_ref()
        .expect("a command after the approval");
    assert_eq!(command.action, "PAUSE", "{}", command.reason);

    phase("paused");
    let records = audit(&brokers, &t.audit);
    let of = |kind: AuditKind| -> Vec<&AuditRecord> {
        records
            .iter()
            .filter(|r| r.kind == kind && r.flag == CHECKOUT)
            .collect()
    };
    assert_eq!(of(AuditKind::Seeded).len(), 1, "{records:#?}");
    let p = of(AuditKind::Proposed);
    assert_eq!(p.len(), 2, "alice's and carol's: {records:#?}");
    let p: Vec<_> = p.into_iter().filter(|r| r.actor == "alice").collect();
    assert_eq!(p.len(), 1, "{records:#?}");
    assert_eq!(p[0].version.as_deref(), Some(version.as_str()));
    assert_eq!(
        p[0].evidence,
        vec!["https://notebooks.example/checkout-errors".to_string()]
    );
    let a = of(AuditKind::Approved);
    assert_eq!(a.len(), 1, "only bob's approval: {records:#?}");
    assert_eq!(a[0].actor, "bob");
    let act = of(AuditKind::Activated);
    assert_eq!(act.len(), 1, "{records:#?}");
    assert_eq!(act[0].version.as_deref(), Some(version.as_str()));
    assert_eq!(act[0].policy_version.as_deref(), Some(v2.as_str()));
    let boundary = act[0].effective_from.expect("effective_from");
    assert_eq!(boundary % SIZE_MS, 0, "a window boundary");
    // The next boundary: the window open at the approval (or the one after it, when
    // the approval came as a window was closing) is the last under the old version.
    assert!(
        boundary > approved_at - SIZE_MS && boundary <= approved_at + 3 * SIZE_MS,
        "boundary {boundary}, approved at {approved_at}"
    );
    assert!(
        act[0].summary.contains("approved by bob"),
        "{}",
        act[0].summary
    );
    let commands = of(AuditKind::Command);
    assert!(
        commands
            .iter()
            .any(|c| c.command_id.as_deref() == Some(command.command_id.as_str())),
        "the PAUSE is on the audit trail: {records:#?}"
    );

    // Every window before the boundary was judged under v1, every one after under v2;
    // the PAUSE came from a window after it.
    let evals: Vec<WindowEvaluation> = evaluations(&brokers, &t.evaluations)
        .into_iter()
        .filter(|e| e.flag_key == CHECKOUT)
        .collect();
    let mut before = 0;
    let mut after = 0;
    for e in &evals {
        let v = e.policy_version.as_deref().unwrap_or_default();
        if e.window_end <= boundary {
            assert_eq!(
                v, v1,
                "window {}..{} before {boundary}",
                e.window_start, e.window_end
            );
            assert!(
                e.decision
                    .is_none_or(|d| d != guardrail::model::Action::Pause)
            );
            before += 1;
        } else {
            assert!(e.window_start >= boundary);
            assert_eq!(
                v, v2,
                "window {}..{} after {boundary}",
                e.window_start, e.window_end
            );
            after += 1;
        }
    }
    assert!(before >= 3 && after >= 1, "{before} before, {after} after");
    let pause = evals
        .iter()
        .find(|e| e.cohort == MOBILE && e.decision == Some(guardrail::model::Action::Pause))
        .expect("the PAUSE's evaluation");
    let mobile: Vec<String> = evals
        .iter()
        .filter(|e| e.cohort == MOBILE && e.window_start >= boundary - SIZE_MS)
        .map(|e| {
            let x = e
                .evidence
                .iter()
                .find(|x| x.metric == "checkout_error_rate")
                .map(|x| {
                    format!(
                        "{} t={:.3} ({}) c={:?} ({}) streak {}",
                        x.status,
                        x.treatment_value,
                        x.treatment_samples,
                        x.control_value,
                        x.control_samples,
                        x.consecutive_windows
                    )
                })
                .unwrap_or_default();
            format!(
                "{}..{} {:?} {:?}: {x}",
                e.window_start, e.window_end, e.decision, e.policy_version
            )
        })
        .collect();
    eprintln!("mobile-web windows:\n{}", mobile.join("\n"));
    assert!(
        pause.window_start >= boundary && pause.window_start <= boundary + 2 * SIZE_MS,
        "PAUSE in window {} (boundary {boundary}); mobile-web windows:\n{}",
        pause.window_start,
        mobile.join("\n")
    );
    engine.stop().await;

    // A restart judges with the approved version at once and activates nothing again
    // (the seed record before it on the topic is history, not a new approval).
    let again = common::Running::start(&config, &policy).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    again.stop().await;
    let activations = audit(&brokers, &t.audit)
        .into_iter()
        .filter(|r| r.kind == AuditKind::Activated)
        .count();
    assert_eq!(activations, 1, "no activation at the restart");
    drop(cluster);
}
