//! Decisions (SPEC §5) on synthetic windows: PAUSE and ROLLBACK once per episode,
//! insufficient windows neither heal nor breach, HOLD once per warning episode, ADVANCE
//! through the ramp bands to completion, deterministic command ids, restore from an
//! evaluation.

use super::*;
use crate::config::Config;
use crate::model::Role;
use crate::window::aggregate::{Agg, Arm, CELL_SAMPLE, UnitSample, sample_key, unit_hash};
use crate::window::{ClosedFlag, ClosedWindow};

const SIZE: i64 = 15 * 60_000;
const T0: i64 = 1_700_000_100_000;

/// Flag `p`: pauses on `err`, warns on `lat`, advances on `conv` (significant, manual).
/// Flag `r`: rolls back on `err`, advances when healthy (auto).
const CONFIG: &str = r#"
[[metrics]]
name = "err"
type = "rate"
numerator   = { source = "errors",  match = { service = "checkout" } }
denominator = { source = "product", match = { journey = "checkout", outcome = "STARTED" } }

[[metrics]]
name = "conv"
type = "rate"
numerator   = { source = "product", match = { journey = "checkout", outcome = "COMPLETED" } }
denominator = { source = "product", match = { journey = "checkout", outcome = "STARTED" } }

[[metrics]]
name = "lat"
type = "mean"
source = "product"
field = "latency_ms"

[[flags]]
key = "p"
owner = "team-p"
treatment = "on"
control = "off"
cohort_by = ["platform"]
ramp = [5, 20, 50, 100]
start_percent = 5
approval = "manual"
advance_when = "significant"
  [[flags.guardrails]]
  metric = "err"
  max = 0.05
  windows = 2
  min_samples = 100
  severity = "critical"
  action = "pause"
  [[flags.guardrails]]
  metric = "lat"
  max = 500.0
  windows = 1
  min_samples = 10
  severity = "warning"
  [[flags.success]]
  metric = "conv"
  direction = "increase"
  alpha = 0.05
  windows = 2
  min_samples = 100

[[flags]]
key = "r"
owner = "team-r"
treatment = "on"
control = "off"
ramp = [10, 100]
start_percent = 10
approval = "auto"
advance_when = "healthy"
  [[flags.guardrails]]
  metric = "err"
  max = 0.05
  windows = 2
  min_samples = 100
  action = "rollback"
"#;

fn policy() -> Arc<Policy> {
    Arc::new(Policy::compile(&Config::parse(CONFIG).unwrap()).unwrap())
}

/// One window of one cohort, per metric: (treatment, control).
#[derive(Debug, Clone, Copy)]
struct Traffic {
    /// (errors, started)
    err: [(u64, u64); 2],
    /// (completed, started)
    conv: [(u64, u64); 2],
    /// (n, mean)
    lat: [(u64, f64); 2],
}

const HEALTHY: Traffic = Traffic {
    err: [(10, 1000), (10, 1000)],
    conv: [(500, 1000), (500, 1000)],
    lat: [(100, 200.0), (100, 200.0)],
};

fn breached() -> Traffic {
    Traffic {
        err: [(100, 1000), (10, 1000)],
        ..HEALTHY
    }
}

/// Treatment errors far beyond the bound, but only 50 started checkouts per arm.
fn insufficient() -> Traffic {
    Traffic {
        err: [(25, 50), (1, 50)],
        ..HEALTHY
    }
}

/// Completion 70% vs 50%: significant on the band's cumulative evidence even after
/// windows without an effect (the sequential test accumulates over the band).
fn strongly_improving() -> Traffic {
    Traffic {
        conv: [(700, 1000), (500, 1000)],
        ..HEALTHY
    }
}

/// Completion 40% vs 50%: cancels an earlier improving window in the band's evidence.
fn worse() -> Traffic {
    Traffic {
        conv: [(400, 1000), (500, 1000)],
        ..HEALTHY
    }
}

fn slow() -> Traffic {
    Traffic {
        lat: [(100, 900.0), (100, 200.0)],
        ..HEALTHY
    }
}

/// Completion 60% vs 50% on 1000 each: z ≈ 4.5, p ≈ 4e-6.
fn improving() -> Traffic {
    Traffic {
        conv: [(600, 1000), (500, 1000)],
        ..HEALTHY
    }
}

fn arm(policy: &Policy, flag: usize, t: &Traffic, a: usize) -> Arm {
    let f = &policy.flags[flag];
    let aggs = f
        .metric_ids
        .iter()
        .map(|&m| match policy.metrics[m].name.as_str() {
            "err" => Agg::rate_of_units(t.err[a].0, t.err[a].1, 1 + a as u64),
            "conv" => Agg::rate_of_units(t.conv[a].0, t.conv[a].1, 3 + a as u64),
            "lat" => {
                let (n, mean) = t.lat[a];
                // Spread ±10% around the mean so the variance is not zero.
                Agg::mean_of_units(n, mean, 0.1 * mean, 5 + a as u64)
            }
            other => panic!("{other}"),
        })
        .collect();
    Arm {
        // No exposure events: these scenarios are not about the split (SRM has its own tests).
        exposures: 0,
        events: t.err[a].1 * 2,
        aggs,
        units: UnitSample::new(CELL_SAMPLE),
    }
}

/// A closed window `k` (0-based from T0) with the given traffic per flag and cohort.
fn window(policy: &Policy, k: i64, cohorts: &[(usize, &str, Traffic)]) -> ClosedWindow {
    let flags = (0..policy.flags.len())
        .map(|fi| ClosedFlag {
            cohorts: cohorts
                .iter()
                .filter(|(f, _, _)| *f == fi)
                .map(|(_, name, t)| {
                    (
                        name.to_string(),
                        [arm(policy, fi, t, 0), arm(policy, fi, t, 1)],
                    )
                })
                .collect(),
            late_events: 0,
        })
        .collect();
    ClosedWindow {
        start: T0 + k * SIZE,
        end: T0 + (k + 1) * SIZE,
        flags,
        first_offsets: Vec::new(),
    }
}

/// Runs windows 0.. of flag `flag`, cohort `*` only; returns each window's judgement.
fn run(rules: &mut Rules, policy: &Policy, flag: usize, seq: &[Traffic]) -> Vec<Judged> {
    seq.iter()
        .enumerate()
        .map(|(k, t)| {
            let w = window(policy, k as i64, &[(flag, "*", *t)]);
            let mut out = rules.decide(&w, T0 + (k as i64 + 1) * SIZE + 1);
            assert_eq!(out.len(), 1);
            out.pop().unwrap()
        })
        .collect()
}

fn actions(judged: &[Judged]) -> Vec<Option<Action>> {
    judged
        .iter()
        .map(|j| j.command.as_ref().map(|c| c.action))
        .collect()
}

fn evidence<'a>(j: &'a Judged, metric: &str, role: Role) -> &'a MetricEvidence {
    j.evaluation
        .evidence
        .iter()
        .find(|e| e.metric == metric && e.role == role)
        .unwrap()
}

// ---- PAUSE and ROLLBACK -------------------------------------------------------------

#[test]
fn critical_breach_for_its_windows_pauses_once() {
    let policy = policy();
    let mut rules = Rules::new(policy.clone());
    let seq = [
        HEALTHY,
        breached(),
        breached(),
        breached(),
        HEALTHY,
        breached(),
    ];
    let judged = run(&mut rules, &policy, 0, &seq);
    assert_eq!(
        actions(&judged),
        vec![None, None, Some(Action::Pause), None, None, None]
    );
    let streaks: Vec<i32> = judged
        .iter()
        .map(|j| evidence(j, "err", Role::Guardrail).consecutive_windows)
        .collect();
    assert_eq!(streaks, vec![0, 1, 2, 3, 0, 1]);
    let cmd = judged[2].command.as_ref().unwrap();
    assert_eq!(cmd.flag_key, "p");
    assert_eq!(cmd.cohort, "*");
    assert_eq!(cmd.severity, Severity::Critical);
    assert_eq!((cmd.from_percent, cmd.to_percent), (5.0, 5.0));
    assert!(!cmd.requires_approval);
    assert_eq!(cmd.owner, "team-p");
    assert_eq!(
        (cmd.window_start, cmd.window_end),
        (T0 + 2 * SIZE, T0 + 3 * SIZE)
    );
    assert_eq!(cmd.policy_version, policy.flags[0].policy_version);
    let ev = evidence(&judged[2], "err", Role::Guardrail);
    assert!(ev.breached);
    assert_eq!(ev.status, "breached");
    assert_eq!(ev.treatment_value, 0.1);
    assert_eq!(ev.control_value, Some(0.01));
    assert_eq!((ev.treatment_samples, ev.control_samples), (1000, 1000));
    assert_eq!(ev.threshold, Some(0.05));
    assert_eq!(cmd.evidence, judged[2].evaluation.evidence);
    assert!(cmd.reason.contains("err"), "{}", cmd.reason);
    assert!(cmd.reason.contains("paused at 5%"), "{}", cmd.reason);
    assert_eq!(judged[2].evaluation.decision, Some(Action::Pause));
    assert_eq!(
        judged[2].evaluation.command_id.as_deref(),
        Some(cmd.command_id.as_str())
    );
    assert_eq!(judged[2].evaluation.state.as_deref(), Some("paused"));
    assert_eq!(judged[2].evaluation.rollout_percent, Some(5.0));
    // Paused stays paused: never re-paused, never advanced.
    let st = rules.state(0, "*").unwrap();
    assert_eq!(st.status, CohortStatus::Paused);
    let more = run(&mut rules, &policy, 0, &[improving(); 4]);
    assert!(actions(&more).iter().all(Option::is_none));
}

#[test]
fn cohorts_are_judged_independently() {
    let policy = policy();
    let mut rules = Rules::new(policy.clone());
    let mut cmds = Vec::new();
    for k in 0..3 {
        let w = window(
            &policy,
            k,
            &[
                (0, "*", HEALTHY),
                (0, "platform=ios", HEALTHY),
                (0, "platform=web", breached()),
            ],
        );
        let judged = rules.decide(&w, 0);
        assert_eq!(judged.len(), 3);
        cmds.extend(judged.into_iter().filter_map(|j| j.command));
    }
    assert_eq!(cmds.len(), 1);
    assert_eq!(cmds[0].cohort, "platform=web");
    assert_eq!(cmds[0].action, Action::Pause);
    assert_eq!(cmds[0].window_start, T0 + SIZE);
    assert_eq!(rules.state(0, "*").unwrap().status, CohortStatus::Ramping);
}

#[test]
fn rollback_goes_to_zero_once() {
    let policy = policy();
    let mut rules = Rules::new(policy.clone());
    let judged = run(&mut rules, &policy, 1, &[breached(); 4]);
    assert_eq!(
        actions(&judged),
        vec![None, Some(Action::Rollback), None, None]
    );
    let cmd = judged[1].command.as_ref().unwrap();
    assert_eq!((cmd.from_percent, cmd.to_percent), (10.0, 0.0));
    assert_eq!(cmd.severity, Severity::Critical);
    assert!(cmd.reason.contains("rolled back to 0%"), "{}", cmd.reason);
    assert_eq!(judged[1].evaluation.state.as_deref(), Some("rolled_back"));
    let st = rules.state(1, "*").unwrap();
    assert_eq!(st.status, CohortStatus::RolledBack);
    assert_eq!(
        st.percent, 10.0,
        "the cohort's percent is its last ramp band"
    );
}

// ---- insufficient -------------------------------------------------------------------

#[test]
fn insufficient_neither_breaches_nor_heals() {
    let policy = policy();
    let mut rules = Rules::new(policy.clone());
    // Insufficient windows alone never act, whatever the rate.
    let judged = run(&mut rules, &policy, 0, &[insufficient(); 5]);
    assert!(actions(&judged).iter().all(Option::is_none));
    for j in &judged {
        let ev = evidence(j, "err", Role::Guardrail);
        assert_eq!(ev.status, "insufficient");
        assert!(!ev.breached);
        assert_eq!(ev.consecutive_windows, 0);
        assert_eq!(j.evaluation.healthy_windows, 0);
    }
    // breached, insufficient, breached: the streak survives the gap (2 → PAUSE).
    let mut rules = Rules::new(policy.clone());
    let judged = run(
        &mut rules,
        &policy,
        0,
        &[breached(), insufficient(), breached()],
    );
    assert_eq!(actions(&judged), vec![None, None, Some(Action::Pause)]);
    let streaks: Vec<i32> = judged
        .iter()
        .map(|j| evidence(j, "err", Role::Guardrail).consecutive_windows)
        .collect();
    assert_eq!(streaks, vec![1, 1, 2]);
}

#[test]
fn insufficient_windows_do_not_count_toward_advance_when_healthy() {
    let policy = policy();
    let mut rules = Rules::new(policy.clone());
    // Flag r advances after `windows` (2) healthy windows; insufficient ones reset it.
    let seq = [
        HEALTHY,
        insufficient(),
        HEALTHY,
        insufficient(),
        HEALTHY,
        HEALTHY,
    ];
    let judged = run(&mut rules, &policy, 1, &seq);
    assert_eq!(
        actions(&judged),
        vec![None, None, None, None, None, Some(Action::Advance)]
    );
    let healthy: Vec<i32> = judged
        .iter()
        .map(|j| j.evaluation.healthy_windows)
        .collect();
    assert_eq!(healthy, vec![1, 0, 1, 0, 1, 0]);
    let cmd = judged[5].command.as_ref().unwrap();
    assert_eq!((cmd.from_percent, cmd.to_percent), (10.0, 100.0));
    assert!(!cmd.requires_approval, "approval = auto");
    assert_eq!(cmd.severity, Severity::Info);
    assert_eq!(rules.state(1, "*").unwrap().status, CohortStatus::Complete);
}

// ---- HOLD ---------------------------------------------------------------------------

#[test]
fn warning_holds_once_per_episode() {
    let policy = policy();
    let mut rules = Rules::new(policy.clone());
    let seq = [
        slow(),
        slow(),
        strongly_improving(), // warning over: back to ramping, success streak 1
        strongly_improving(), // streak 2: advance
        slow(),               // a new episode: HOLD again
        slow(),
    ];
    let judged = run(&mut rules, &policy, 0, &seq);
    assert_eq!(
        actions(&judged),
        vec![
            Some(Action::Hold),
            None,
            None,
            Some(Action::Advance),
            Some(Action::Hold),
            None
        ]
    );
    let hold = judged[0].command.as_ref().unwrap();
    assert_eq!(hold.severity, Severity::Warning);
    assert_eq!((hold.from_percent, hold.to_percent), (5.0, 5.0));
    assert!(!hold.requires_approval);
    assert!(hold.reason.contains("holding at 5%"), "{}", hold.reason);
    let states: Vec<&str> = judged
        .iter()
        .map(|j| j.evaluation.state.as_deref().unwrap())
        .collect();
    assert_eq!(
        states,
        vec!["held", "held", "ramping", "ramping", "held", "held"]
    );
    let second = judged[4].command.as_ref().unwrap();
    assert_eq!((second.from_percent, second.to_percent), (20.0, 20.0));
    assert_ne!(second.command_id, hold.command_id);
}

#[test]
fn held_cohorts_do_not_advance() {
    let policy = policy();
    let mut rules = Rules::new(policy.clone());
    // Success is significant while latency stays over its warning bound.
    let slow_but_improving = Traffic {
        lat: slow().lat,
        ..improving()
    };
    let judged = run(&mut rules, &policy, 0, &[slow_but_improving; 4]);
    assert_eq!(actions(&judged), vec![Some(Action::Hold), None, None, None]);
    assert_eq!(rules.state(0, "*").unwrap().percent, 5.0);
}

#[test]
fn critical_wins_over_warning() {
    let policy = policy();
    let mut rules = Rules::new(policy.clone());
    let both = Traffic {
        lat: slow().lat,
        ..breached()
    };
    let judged = run(&mut rules, &policy, 0, &[both, both]);
    assert_eq!(
        actions(&judged),
        vec![Some(Action::Hold), Some(Action::Pause)]
    );
}

// ---- ADVANCE ------------------------------------------------------------------------

#[test]
fn advances_through_the_ramp_to_complete() {
    let policy = policy();
    let mut rules = Rules::new(policy.clone());
    let judged = run(&mut rules, &policy, 0, &[improving(); 9]);
    assert_eq!(
        actions(&judged),
        vec![
            None,
            Some(Action::Advance),
            None,
            Some(Action::Advance),
            None,
            Some(Action::Advance),
            None,
            None,
            None
        ]
    );
    let bands: Vec<(f64, f64)> = judged
        .iter()
        .filter_map(|j| j.command.as_ref())
        .map(|c| (c.from_percent, c.to_percent))
        .collect();
    assert_eq!(bands, vec![(5.0, 20.0), (20.0, 50.0), (50.0, 100.0)]);
    for c in judged.iter().filter_map(|j| j.command.as_ref()) {
        assert!(c.requires_approval, "approval = manual");
        assert_eq!(c.severity, Severity::Info);
        assert!(c.reason.contains("conv rose"), "{}", c.reason);
    }
    // The success streak restarts at each new band.
    let streaks: Vec<i32> = judged
        .iter()
        .map(|j| evidence(j, "conv", Role::Success).consecutive_windows)
        .collect();
    assert_eq!(streaks, vec![1, 2, 1, 2, 1, 2, 1, 2, 3]);
    let st = rules.state(0, "*").unwrap();
    assert_eq!((st.percent, st.status), (100.0, CohortStatus::Complete));
    assert_eq!(judged[8].evaluation.state.as_deref(), Some("complete"));
    assert_eq!(judged[8].evaluation.rollout_percent, Some(100.0));
}

#[test]
fn no_advance_without_significance_or_with_a_streak_broken() {
    let policy = policy();
    let mut rules = Rules::new(policy.clone());
    let judged = run(
        &mut rules,
        &policy,
        0,
        // Sequential evidence accumulates over the band: a window that merely shows no
        // effect would keep the streak alive; one that reverses the effect breaks it.
        &[improving(), worse(), improving(), worse(), worse()],
    );
    assert!(actions(&judged).iter().all(Option::is_none));
    assert_eq!(
        evidence(&judged[1], "conv", Role::Success).status,
        "not_significant"
    );
    assert_eq!(
        evidence(&judged[0], "conv", Role::Success).status,
        "significant"
    );
    // A guardrail at streak 1 of 2 is not healthy: no advance even with success ready.
    let mut rules = Rules::new(policy.clone());
    let breaching_and_improving = Traffic {
        err: breached().err,
        ..improving()
    };
    let judged = run(
        &mut rules,
        &policy,
        0,
        &[improving(), breaching_and_improving],
    );
    assert_eq!(actions(&judged), vec![None, None]);
}

// ---- ids and restore ----------------------------------------------------------------

fn mixed_sequence() -> Vec<Traffic> {
    vec![
        improving(),
        improving(),
        slow(),
        HEALTHY,
        strongly_improving(),
        strongly_improving(),
        breached(),
        insufficient(),
        breached(),
        breached(),
    ]
}

#[test]
fn command_ids_are_deterministic_across_instances() {
    let policy = policy();
    let a = run(
        &mut Rules::new(policy.clone()),
        &policy,
        0,
        &mixed_sequence(),
    );
    let b = run(
        &mut Rules::new(policy.clone()),
        &policy,
        0,
        &mixed_sequence(),
    );
    let ca: Vec<&FlagCommand> = a.iter().filter_map(|j| j.command.as_ref()).collect();
    let cb: Vec<&FlagCommand> = b.iter().filter_map(|j| j.command.as_ref()).collect();
    assert_eq!(
        ca.iter().map(|c| c.action).collect::<Vec<_>>(),
        vec![
            Action::Advance,
            Action::Hold,
            Action::Advance,
            Action::Pause
        ]
    );
    assert_eq!(ca, cb);
    for c in &ca {
        assert_eq!(
            c.command_id,
            crate::ids::command_id(
                &c.flag_key,
                &c.cohort,
                c.action.as_str(),
                c.window_start,
                &c.policy_version
            )
        );
    }
    let mut ids: Vec<&str> = ca.iter().map(|c| c.command_id.as_str()).collect();
    ids.dedup();
    assert_eq!(ids.len(), ca.len());
    // The evaluations are equal too, decision or not.
    let ea: Vec<&WindowEvaluation> = a.iter().map(|j| &j.evaluation).collect();
    let eb: Vec<&WindowEvaluation> = b.iter().map(|j| &j.evaluation).collect();
    assert_eq!(ea, eb);
}

/// Restoring from the last evaluation of each prefix reproduces the state, and the rest
/// of the run decides exactly as the uninterrupted one.
#[test]
fn restore_reproduces_state_and_decisions() {
    let policy = policy();
    let seq = mixed_sequence();
    let mut full = Rules::new(policy.clone());
    let whole = run(&mut full, &policy, 0, &seq);
    for cut in 1..seq.len() {
        let mut before = Rules::new(policy.clone());
        let prefix = run(&mut before, &policy, 0, &seq[..cut]);
        let mut after = Rules::new(policy.clone());
        let last = &prefix.last().unwrap().evaluation;
        // Round-trip the evaluation through its JSON form, as a restarted engine would read it.
        let last: WindowEvaluation =
            serde_json::from_str(&serde_json::to_string(last).unwrap()).unwrap();
        after.restore(&last);
        let (b, a) = (before.state(0, "*").unwrap(), after.state(0, "*").unwrap());
        assert_eq!(a.percent, b.percent, "cut {cut}");
        assert_eq!(a.status, b.status, "cut {cut}");
        assert_eq!(a.guardrail_streaks, b.guardrail_streaks, "cut {cut}");
        assert_eq!(a.success_streaks, b.success_streaks, "cut {cut}");
        assert_eq!(a.healthy_windows, b.healthy_windows, "cut {cut}");
        assert_eq!(a.band, b.band, "cut {cut}");
        assert_eq!(a.detectors, b.detectors, "cut {cut}");
        for (k, t) in seq.iter().enumerate().skip(cut) {
            let w = window(&policy, k as i64, &[(0, "*", *t)]);
            let j = after
                .decide(&w, T0 + (k as i64 + 1) * SIZE + 1)
                .pop()
                .unwrap();
            assert_eq!(j.evaluation, whole[k].evaluation, "cut {cut}, window {k}");
            assert_eq!(j.command, whole[k].command, "cut {cut}, window {k}");
        }
    }
}

#[test]
fn restore_ignores_other_policies_and_unknown_flags() {
    let policy = policy();
    let mut rules = Rules::new(policy.clone());
    let judged = run(&mut rules, &policy, 0, &[breached(), breached()]);
    let mut eval = judged[1].evaluation.clone();
    assert_eq!(eval.state.as_deref(), Some("paused"));
    eval.policy_version = Some("something-else".into());
    let mut fresh = Rules::new(policy.clone());
    assert_eq!(
        fresh.restore(&eval),
        Restore::PolicyChanged {
            from: "something-else".into(),
            to: policy.flags[0].policy_version.clone()
        }
    );
    assert!(fresh.state(0, "*").is_none());
    // State published under the pre-0.2 version of the same policy is restored.
    eval.policy_version = Some(policy.flags[0].legacy_policy_version.clone());
    assert_eq!(fresh.restore(&eval), Restore::Restored);
    assert_eq!(
        fresh.state(0, &eval.cohort).map(|s| s.status),
        Some(CohortStatus::Paused)
    );
    let mut fresh = Rules::new(policy.clone());
    eval.policy_version = judged[1].evaluation.policy_version.clone();
    eval.flag_key = "no-such-flag".into();
    assert_eq!(fresh.restore(&eval), Restore::UnknownFlag);
    assert_eq!(fresh.states().count(), 0);
}

#[test]
fn late_events_are_reported_on_the_evaluation() {
    let policy = policy();
    let mut rules = Rules::new(policy.clone());
    let mut w = window(
        &policy,
        0,
        &[(0, "*", HEALTHY), (0, "platform=ios", HEALTHY)],
    );
    w.flags[0].late_events = 7;
    let judged = rules.decide(&w, 42);
    assert!(judged.iter().all(|j| j.evaluation.late_events == 7));
    assert!(judged.iter().all(|j| j.evaluation.evaluated_at == 42));
}

// ---- Issue 4: SRM, false discovery rate, sequential validity -----------------------

/// A window of flag `p` (start 5%) whose exposures split `t` / `c`.
/// Each exposure is a distinct unit, new in every window.
fn with_exposures(policy: &Policy, k: i64, t: Traffic, exposures: [u64; 2]) -> ClosedWindow {
    let mut w = window(policy, k, &[(0, "*", t)]);
    let cell = &mut w.flags[0].cohorts[0].1;
    for (arm, n) in exposures.into_iter().enumerate() {
        cell[arm].exposures = n;
        for i in 0..n {
            let id = format!("w{k}-a{arm}-u{i}");
            cell[arm].units.insert(sample_key(unit_hash(id.as_bytes())));
        }
    }
    w
}

#[test]
fn sample_ratio_mismatch_holds_and_blocks_advance_until_the_split_recovers() {
    let policy = policy();
    let mut rules = Rules::new(policy.clone());
    let decide = |rules: &mut Rules, k: i64, t: Traffic, e: [u64; 2]| {
        let mut out = rules.decide(&with_exposures(&policy, k, t, e), T0 + (k + 1) * SIZE + 1);
        out.pop().unwrap()
    };
    // 5% expected; 300 of 1000 exposures in treatment: chi-square p ~ 1e-200.
    let j = decide(&mut rules, 0, strongly_improving(), [300, 700]);
    assert_eq!(j.command.as_ref().map(|c| c.action), Some(Action::Hold));
    let srm = evidence(&j, "sample_ratio", Role::Srm);
    assert!(srm.breached && srm.p_value.unwrap() < 1e-10, "{srm:?}");
    assert_eq!(srm.threshold, Some(0.05));
    assert!(
        j.command
            .as_ref()
            .unwrap()
            .reason
            .contains("sample ratio mismatch")
    );
    // Still mismatched and the success metric significant twice: held, no ADVANCE.
    let j = decide(&mut rules, 1, strongly_improving(), [300, 700]);
    assert_eq!(j.command, None);
    assert_eq!(j.evaluation.state.as_deref(), Some("held"));
    // The split matches the percent again (52 of 1000 at 5%): back to ramping, and
    // the accumulated success evidence advances.
    let j = decide(&mut rules, 2, strongly_improving(), [52, 948]);
    assert!(!evidence(&j, "sample_ratio", Role::Srm).breached);
    assert_eq!(j.command.as_ref().map(|c| c.action), Some(Action::Advance));
}

#[test]
fn srm_is_not_tested_without_exposed_units_or_without_control() {
    let policy = policy();
    let mut rules = Rules::new(policy.clone());
    let no_units = rules.decide(&with_exposures(&policy, 0, HEALTHY, [0, 0]), T0 + SIZE + 1);
    assert!(
        no_units[0]
            .evaluation
            .evidence
            .iter()
            .all(|e| e.role != Role::Srm)
    );
    // A balanced split at 50%: evidence, no mismatch.
    let mut state = CohortState::new(&policy, &policy.flags[0]);
    state.percent = 50.0;
    let w = with_exposures(&policy, 1, HEALTHY, [250, 250]);
    let level = srm_alpha(&policy, &policy.flags[0], "*");
    let (ev, mismatch) = srm_judge(
        &w.flags[0].cohorts[0].1,
        &mut state,
        (f64::INFINITY, f64::NEG_INFINITY),
        level.clone(),
    )
    .unwrap();
    assert!(!mismatch);
    assert!(ev.p_value.unwrap() > 0.5, "{ev:?}");
    assert_eq!((ev.treatment_samples, ev.control_samples), (250, 250));
    // The level is the cohort's share of the flag's rollout-wide SRM_ALPHA.
    assert_eq!(ev.alpha, Some(level.0));
    assert!(ev.method.contains(&level.1), "{}", ev.method);
    // At 100% there is no control to compare with.
    state.percent = 100.0;
    assert!(
        srm_judge(
            &w.flags[0].cohorts[0].1,
            &mut state,
            (f64::INFINITY, f64::NEG_INFINITY),
            level,
        )
        .is_none()
    );
}

#[test]
fn benjamini_hochberg_decides_which_success_tests_count() {
    let policy = policy();
    let flag = &policy.flags[0];
    let judged_with = |p: f64| CohortJudgement {
        guardrails: Vec::new(),
        baseline_in: Vec::new(),
        success: vec![(
            MetricEvidence {
                metric: "conv".into(),
                role: Role::Success,
                treatment_value: 0.0,
                control_value: None,
                threshold: None,
                relative_change: None,
                p_value: Some(p),
                treatment_samples: 0,
                control_samples: 0,
                method: String::new(),
                breached: false,
                consecutive_windows: 0,
                status: "not_significant".into(),
                ..MetricEvidence::empty()
            },
            Status::NotSignificant,
        )],
        srm: None,
    };
    // Four cohorts at q = 0.05: per-test alpha would pass three, BH passes one.
    let mut judged: Vec<CohortJudgement> = [0.01, 0.04, 0.045, 0.3]
        .into_iter()
        .map(judged_with)
        .collect();
    control_fdr(flag, &mut judged);
    let statuses: Vec<Status> = judged.iter().map(|j| j.success[0].1).collect();
    assert_eq!(
        statuses,
        vec![
            Status::Significant,
            Status::NotSignificant,
            Status::NotSignificant,
            Status::NotSignificant
        ]
    );
    assert_eq!(judged[0].success[0].0.status, "significant");
}

/// Under H0 (no true difference), judging the band's cumulative evidence at every one
/// of 40 windows keeps the chance of ever rejecting at alpha = 0.05 below 0.05, where
/// repeating a fixed-horizon test at every window does not (seeded simulation).
#[test]
fn sequential_test_keeps_its_error_rate_over_repeated_looks() {
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    let mut rng = SmallRng::seed_from_u64(42);
    let (runs, looks, n, p) = (400, 40, 400u64, 0.05);
    let (mut sequential_false, mut naive_false) = (0, 0);
    for _ in 0..runs {
        let (mut t, mut c) = (Agg::rate_of_units(0, 0, 0), Agg::rate_of_units(0, 0, 0));
        let (mut seq_hit, mut naive_hit) = (false, false);
        for _ in 0..looks {
            let xt = (0..n).filter(|_| rng.random_bool(p)).count() as u64;
            let xc = (0..n).filter(|_| rng.random_bool(p)).count() as u64;
            t.merge(&Agg::rate_of_units(xt, n, rng.random()));
            c.merge(&Agg::rate_of_units(xc, n, rng.random()));
            let (
                Agg::Rate {
                    num: tx, den: tn, ..
                },
                Agg::Rate {
                    num: cx, den: cn, ..
                },
            ) = (&t, &c)
            else {
                unreachable!()
            };
            if let Some((pv, _)) = judge::sequential(&t, &c, 0.0, stats::Tail::Greater) {
                seq_hit |= pv < 0.05;
            }
            if let Some(r) = stats::two_proportion(*tx, *tn, *cx, *cn, 0.0, stats::Tail::Greater) {
                naive_hit |= r.p_value < 0.05;
            }
        }
        sequential_false += usize::from(seq_hit);
        naive_false += usize::from(naive_hit);
    }
    let (seq_rate, naive_rate) = (
        sequential_false as f64 / runs as f64,
        naive_false as f64 / runs as f64,
    );
    eprintln!(
        "false alarms over {looks} looks: sequential {seq_rate}, repeated fixed-horizon {naive_rate}"
    );
    assert!(seq_rate <= 0.05, "sequential false-alarm rate {seq_rate}");
    assert!(
        naive_rate > 0.10,
        "repeated fixed-horizon tests should inflate it: {naive_rate}"
    );
}

/// The change-point detector (issue 4): over 96 looks with no difference it keeps the
/// chance of ever reaching 1/alpha below alpha, and it catches a regression that starts
/// after 20 healthy windows within a few windows, where the band's cumulative evidence
/// is diluted by the healthy ones (seeded simulation of the per-window scores).
#[test]
fn change_point_detector_keeps_its_error_rate_and_catches_a_late_regression() {
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    use statrs::distribution::{ContinuousCDF, Normal};
    let mut rng = SmallRng::seed_from_u64(7);
    let mut normal = |mean: f64| {
        // Box–Muller.
        let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-300), rng.random());
        mean + (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    };
    let sf = |z: f64| Normal::standard().sf(z);
    let alpha: f64 = 0.05;
    let (runs, looks) = (2000, 96);
    for prior in [
        stats::ChangePrior::FROM_START,
        stats::ChangePrior::BESIDE_BAND,
    ] {
        let mut false_alarms = 0;
        for _ in 0..runs {
            let mut d = stats::Detector::default();
            let mut hit = false;
            for _ in 0..looks {
                d.update(sf(normal(0.0)), prior);
                hit |= d.log_e(prior) >= (1.0 / alpha).ln();
            }
            false_alarms += usize::from(hit);
        }
        let rate = false_alarms as f64 / runs as f64;
        eprintln!("detector false alarms over {looks} looks at alpha {alpha} ({prior:?}): {rate}");
        assert!(rate <= alpha, "false-alarm rate {rate} ({prior:?})");
    }

    // Drift 2.5 sd per window after 20 null windows (about +50% errors at 6,000
    // exposures per arm), judged at alpha 0.01.
    let (alpha, onset, horizon) = (0.01f64, 20, 6);
    let (mut caught, mut caught_by_band) = (0, 0);
    for _ in 0..500 {
        let mut d = stats::Detector::default();
        let mut sum_z = 0.0;
        let (mut at, mut band_at) = (None, None);
        for w in 0..onset + horizon {
            let z = normal(if w >= onset { 2.5 } else { 0.0 });
            sum_z += z;
            d.update(sf(z), stats::ChangePrior::FROM_START);
            if at.is_none() && d.log_e(stats::ChangePrior::FROM_START) >= (1.0 / alpha).ln() {
                at = Some(w);
            }
            // The band's evidence as a whole (a fixed test on the cumulative score, not
            // even corrected for looking every window): diluted by the healthy windows.
            if band_at.is_none() && sf(sum_z / f64::from(w + 1).sqrt()) < alpha {
                band_at = Some(w);
            }
        }
        caught += usize::from(at.is_some_and(|w| w >= onset));
        caught_by_band += usize::from(band_at.is_some_and(|w| w >= onset));
    }
    eprintln!(
        "late regression caught within {horizon} windows: detector {caught}/500, band {caught_by_band}/500"
    );
    // Measured: 468/500 (93.6%) here, against 343/500 for the band's evidence. A later
    // onset costs the detector a little (its prior weight 1/(k(k+1)) falls with k).
    assert!(caught >= 450, "detector caught {caught}/500");
    assert!(caught > caught_by_band, "{caught} vs {caught_by_band}");
}

/// After a band's first window a relative bound's detector scores the window's
/// innovation given the band's earlier windows (the band less this window, the same
/// units in the same buckets), not the window's own test; an absolute bound's detector
/// keeps each window's own test.
#[test]
fn relative_detectors_score_innovations_after_the_first_window() {
    let config = CONFIG.replacen(
        "  max = 0.05\n  windows = 2",
        "  max_relative_increase = 0.1\n  windows = 2",
        1,
    );
    let policy = Arc::new(Policy::compile(&Config::parse(&config).unwrap()).unwrap());
    assert_eq!(
        policy.flags[0].guardrails[0].max_relative_increase,
        Some(0.1)
    );
    let mut rules = Rules::new(policy.clone());
    let worse = Traffic {
        err: [(30, 1000), (10, 1000)],
        ..HEALTHY
    };
    let judged = run(&mut rules, &policy, 0, &[HEALTHY, worse]);
    let slot = policy.flags[0]
        .metric_ids
        .iter()
        .position(|&m| policy.metrics[m].name == "err")
        .unwrap();
    let agg = |t: &Traffic, a: usize| arm(&policy, 0, t, a).aggs[slot].clone();
    let (t1, t2) = (agg(&HEALTHY, 0), agg(&worse, 0));
    let (c1, c2) = (agg(&HEALTHY, 1), agg(&worse, 1));
    let own = |t: &Agg, c: &Agg| {
        stats::ratio_test_null(
            t.ratio().unwrap(),
            c.ratio().unwrap(),
            0.1,
            stats::Tail::Greater,
        )
        .unwrap()
        .0
        .p_value
    };
    let (innovation, theta) = stats::ratio_innovation_test(
        [t2.ratio().unwrap(), c2.ratio().unwrap()],
        [t1.ratio().unwrap(), c1.ratio().unwrap()],
        0.1,
        stats::Tail::Greater,
    )
    .unwrap();
    // The same units in both windows: the second leans on the first.
    assert!(theta > 0.0, "{theta}");
    assert_ne!(innovation.p_value, own(&t2, &c2));
    // A relative bound beside its band's mSPRT: the prior that weighs later starts.
    let mut want = stats::Detector::default();
    want.update(own(&t1, &c1), stats::ChangePrior::BESIDE_BAND);
    want.update(innovation.p_value, stats::ChangePrior::BESIDE_BAND);
    assert_eq!(rules.states[0]["*"].detectors[0], want);
    let err = evidence(&judged[1], "err", Role::Guardrail);
    assert!(
        err.method
            .contains("each window's innovation given the band's earlier windows"),
        "{}",
        err.method
    );
}

#[test]
fn detector_state_round_trips_and_rejects_bad_shapes() {
    let prior = stats::ChangePrior::FROM_START;
    let mut d = stats::Detector::default();
    assert_eq!(d.log_e(prior), 0.0, "M_0 = 1");
    assert_eq!(d.log_e(stats::ChangePrior::BESIDE_BAND), 0.0, "M_0 = 1");
    assert!(d.values().is_empty());
    for p in [0.5, 0.01, 1e-30, 1.0] {
        d.update(p, prior);
    }
    assert_eq!(stats::Detector::from_values(&d.values()), Some(d.clone()));
    assert_eq!(
        stats::Detector::from_values(&[]),
        Some(stats::Detector::default())
    );
    assert_eq!(stats::Detector::from_values(&[2.0, 0.0]), None);
    assert!(d.log_e(prior).is_finite());
}

/// Evidence states the level spent, the family, the interval and the band (SPEC §2).
#[test]
fn evidence_carries_interval_band_alpha_and_family() {
    let policy = policy();
    let mut rules = Rules::new(policy.clone());
    let judged = run(&mut rules, &policy, 0, &[improving(), improving()]);
    let j = &judged[1];
    let conv = evidence(j, "conv", Role::Success);
    let (lo, hi) = (conv.ci_lower.unwrap(), conv.ci_upper.unwrap());
    // 60% vs 50% on the band (2 windows of 1000 each): +20% inside its interval.
    assert!(lo < 0.2 && 0.2 < hi && lo > 0.05, "{lo} {hi}");
    assert_eq!(conv.band_treatment_samples, Some(2000));
    assert_eq!(conv.band_treatment_value, Some(0.6));
    assert_eq!(conv.alpha, Some(0.05));
    let err = evidence(j, "err", Role::Guardrail);
    // Flag p: cohort_by set, cohort *, ramp [5, 20, 50, 100] from 5: 4 bands; alpha
    // 0.05 (the default) x 1/2 / 4.
    let g = &policy.flags[0].guardrails[0];
    assert_eq!(err.alpha, Some(g.alpha / 8.0));
    assert_eq!(err.family_size, Some(8));
    assert!(
        err.method.contains("half to cohort *, 4 band(s)"),
        "{}",
        err.method
    );
    // An absolute bound's detector weighs its drifts 0.2/0.6/0.2, and half its prior is
    // on the band's first window (it has no band mSPRT beside it).
    assert!(
        err.method
            .contains("(drifts 1.00/2.00/3.00 sd, weights 0.20/0.60/0.20; change point k weighted (a+1)/((k+a)(k+a+1)), a = 0)"),
        "{}",
        err.method
    );
    // An absolute bound's detector scores each window's own test.
    assert!(!err.method.contains("innovation"), "{}", err.method);
    // With absolute bounds only, the interval is of the treatment value (1% here).
    let r = run(&mut Rules::new(policy.clone()), &policy, 1, &[HEALTHY]);
    let e = evidence(&r[0], "err", Role::Guardrail);
    let (lo, hi) = (e.ci_lower.unwrap(), e.ci_upper.unwrap());
    assert!(0.003 < lo && lo < 0.01 && 0.01 < hi && hi < 0.017, "{e:?}");
    // Replay-style decisions (no wall clock) carry no freshness.
    assert_eq!(j.evaluation.watermark_lag_ms, None);
}

/// `[[flags.guardrails.cohorts]]`: a looser bound for one cohort, a harsher severity and
/// action for another; every other cohort is judged by the guardrail as written.
#[test]
fn cohort_overrides_apply_to_their_cohort_only() {
    let text = CONFIG
        .replacen(
            "  severity = \"critical\"\n  action = \"pause\"\n",
            "  severity = \"critical\"\n  action = \"pause\"\n    [[flags.guardrails.cohorts]]\n    cohort = \"platform=ios\"\n    max = 0.2\n",
            1,
        )
        .replacen(
            "  severity = \"warning\"\n",
            "  severity = \"warning\"\n    [[flags.guardrails.cohorts]]\n    cohort = \"platform=android\"\n    severity = \"critical\"\n    action = \"rollback\"\n",
            1,
        );
    assert_eq!(text.matches("[[flags.guardrails.cohorts]]").count(), 2);
    let policy = Arc::new(Policy::compile(&Config::parse(&text).unwrap()).unwrap());
    let cohorts = ["platform=android", "platform=ios", "platform=web"];
    let decide = |rules: &mut Rules, k: i64, t: Traffic| -> Vec<(String, Option<Action>)> {
        let w = window(&policy, k, &cohorts.map(|c| (0, c, t)));
        let mut out: Vec<(String, Option<Action>)> = rules
            .decide(&w, T0 + (k + 1) * SIZE + 1)
            .into_iter()
            .map(|j| (j.evaluation.cohort.clone(), j.command.map(|c| c.action)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    };
    let named = |v: [Option<Action>; 3]| -> Vec<(String, Option<Action>)> {
        cohorts.iter().map(|c| c.to_string()).zip(v).collect()
    };
    // 10% errors against `max = 0.05`: ios's own bound is 0.2.
    let mut rules = Rules::new(policy.clone());
    assert_eq!(decide(&mut rules, 0, breached()), named([None; 3]));
    assert_eq!(
        decide(&mut rules, 1, breached()),
        named([Some(Action::Pause), None, Some(Action::Pause)])
    );
    // Slow checkouts: a warning (HOLD) everywhere but android, where it is critical.
    let mut rules = Rules::new(policy.clone());
    assert_eq!(
        decide(&mut rules, 0, slow()),
        named([
            Some(Action::Rollback),
            Some(Action::Hold),
            Some(Action::Hold)
        ])
    );
}

/// Severity by magnitude: two guardrails on one metric, a warning at a small regression
/// (HOLD, review) and a critical one at a large one (PAUSE).
#[test]
fn severity_tiers_by_magnitude() {
    let text = CONFIG.replacen(
        "  metric = \"err\"\n  max = 0.05\n  windows = 2\n  min_samples = 100\n  severity = \"critical\"\n",
        "  metric = \"err\"\n  max = 0.05\n  windows = 1\n  min_samples = 100\n  severity = \"warning\"\n  [[flags.guardrails]]\n  metric = \"err\"\n  max = 0.25\n  windows = 1\n  min_samples = 100\n  severity = \"critical\"\n",
        1,
    );
    assert_ne!(text, CONFIG);
    let policy = Arc::new(Policy::compile(&Config::parse(&text).unwrap()).unwrap());
    // 10% errors: past the warning bound only.
    let mut rules = Rules::new(policy.clone());
    assert_eq!(
        actions(&run(&mut rules, &policy, 0, &[breached()])),
        vec![Some(Action::Hold)]
    );
    // 40% errors: past both; the critical one acts.
    let mut rules = Rules::new(policy.clone());
    let severe = Traffic {
        err: [(400, 1000), (10, 1000)],
        ..HEALTHY
    };
    let judged = run(&mut rules, &policy, 0, &[severe]);
    assert_eq!(actions(&judged), vec![Some(Action::Pause)]);
    assert_eq!(
        judged[0].command.as_ref().unwrap().severity,
        Severity::Critical
    );
}

/// An applied-state record from the flag platform (SPEC §9) ends the "either split"
/// allowance after an ADVANCE without waiting for the traffic to show the move: one
/// window of grace, then the new split is tested exactly.
#[test]
fn a_reported_applied_split_ends_the_pending_allowance() {
    let policy = policy();
    let run_to_advance = || {
        let mut rules = Rules::new(policy.clone());
        for (k, e) in [[300, 700], [300, 700], [52, 948]].into_iter().enumerate() {
            let w = with_exposures(&policy, k as i64, strongly_improving(), e);
            rules.decide(&w, T0 + (k as i64 + 1) * SIZE + 1);
        }
        let state = rules.state(0, "*").unwrap();
        assert_eq!((state.percent, state.srm.pending_from), (20.0, Some(5.0)));
        rules
    };
    let pending = |rules: &Rules| rules.state(0, "*").unwrap().srm.pending_from;
    let mut confirmed = run_to_advance();
    assert!(
        !confirmed.applied("p", "*", 50.0),
        "not the split the ADVANCE expects"
    );
    assert!(!confirmed.applied("nope", "*", 20.0));
    assert!(!confirmed.applied("p", "platform=ios", 20.0));
    assert!(confirmed.applied("p", "*", 20.0));
    let mut unconfirmed = run_to_advance();
    // Few exposed units: the traffic alone cannot tell the splits apart yet.
    for k in 3..5 {
        for rules in [&mut confirmed, &mut unconfirmed] {
            let w = with_exposures(&policy, k, HEALTHY, [2, 8]);
            rules.decide(&w, T0 + (k + 1) * SIZE + 1);
        }
        let expect = if k == 3 { Some(5.0) } else { None };
        assert_eq!(pending(&confirmed), expect, "window {k}");
        assert_eq!(pending(&unconfirmed), Some(5.0), "window {k}");
    }
    assert!(
        !confirmed.applied("p", "*", 20.0),
        "nothing pending any more"
    );
}

#[test]
fn only_star_spends_an_untested_full_band_share_and_srm_spends_none_there() {
    // Flag 0 ramps 5 -> 20 -> 50 -> 100 (4 bands) with cohorts. A guardrail with an
    // absolute bound is tested in all four; a relative-only one is not tested at 100%:
    // `*` spends that band's share on its three other bands, every other cohort keeps it
    // unspent (`family_alpha`). The sample-ratio test has no split to test at 100%.
    let base = policy();
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-15 * b.abs();
    let (flag, g) = (&base.flags[0], &base.flags[0].guardrails[0]);
    assert!(g.sequential && g.max.is_some() && g.max_relative_increase.is_none());
    assert!(!flag.cohort_by.is_empty() && flag.ramp.contains(&100.0));
    let cohorts = flag.max_cohorts.unwrap_or(base.window.max_cohorts_per_flag) as f64 + 1.0;
    assert!(close(
        family_alpha(&base, flag, g, "*").0,
        g.alpha * 0.5 / 4.0
    ));
    assert!(close(
        family_alpha(&base, flag, g, "platform=ios").0,
        g.alpha * 0.5 / cohorts / 4.0
    ));
    let text = CONFIG.replacen(
        "  metric = \"err\"\n  max = 0.05\n",
        "  metric = \"err\"\n  max_relative_increase = 0.1\n",
        1,
    );
    let relative = Arc::new(Policy::compile(&Config::parse(&text).unwrap()).unwrap());
    let (flag, g) = (&relative.flags[0], &relative.flags[0].guardrails[0]);
    assert!(g.sequential && g.max.is_none() && g.max_relative_increase.is_some());
    let (star, family) = family_alpha(&relative, flag, g, "*");
    assert!(close(star, g.alpha * 0.5 / 3.0), "{star}");
    assert!(
        family.ends_with("half to cohort *, 3 band(s) below 100%"),
        "{family}"
    );
    let (ios, family) = family_alpha(&relative, flag, g, "platform=ios");
    assert!(close(ios, g.alpha * 0.5 / cohorts / 4.0), "{ios}");
    assert!(family.ends_with(", 4 band(s)"), "{family}");
    // The union bound: the rollout's spend, band by band, stays within alpha.
    let spent = 3.0 * star + cohorts * 4.0 * ios;
    assert!(spent <= g.alpha * (1.0 + 1e-12), "{spent}");
    let flag = &base.flags[0];
    assert!(close(srm_alpha(&base, flag, "*").0, SRM_ALPHA * 0.5 / 3.0));
}

#[test]
fn relative_bounds_are_not_judged_against_control_at_100_percent() {
    // Flag r: 10 -> 100 after two healthy windows, a relative-only error guardrail.
    let text = CONFIG.replacen(
        "  metric = \"err\"\n  max = 0.05\n  windows = 2\n  min_samples = 100\n  action = \"rollback\"\n",
        "  metric = \"err\"\n  max_relative_increase = 0.1\n  windows = 2\n  min_samples = 100\n  action = \"rollback\"\n",
        1,
    );
    assert_ne!(text, CONFIG);
    let policy = Arc::new(Policy::compile(&Config::parse(&text).unwrap()).unwrap());
    let mut rules = Rules::new(policy.clone());
    // 10% errors against control's 1% rolls back at 10%...
    let at_10 = run(
        &mut Rules::new(policy.clone()),
        &policy,
        1,
        &[breached(); 2],
    );
    assert!(
        actions(&at_10).contains(&Some(Action::Rollback)),
        "{:?}",
        actions(&at_10)
    );
    // Breached in the band's first window already: the band's mSPRT alone gives this
    // tenfold rate an e-value of about 9 there, the change-point detector's prior weight
    // on the first window (1/5 beside the band) carries it (docs/STATISTICS.md §4).
    let first = evidence(&at_10[0], "err", Role::Guardrail);
    assert!(first.breached, "{first:?}");
    // Against control: 0.1 the band's mSPRT, 0.9 the detector, drifts weighed
    // 0.2/0.6/0.2, its prior off the band's first window (a = 3).
    let m = &evidence(&at_10[1], "err", Role::Guardrail).method;
    assert!(
        m.contains("0.100 the band's mSPRT")
            && m.contains("0.900 a change-point e-detector")
            && m.contains("(drifts 1.00/2.00/3.00 sd, weights 0.20/0.60/0.20; change point k weighted (a+1)/((k+a)(k+a+1)), a = 3)"),
        "{m}"
    );
    // ...but at 100% the cohort has no control of its own: the bound is not tested
    // (the window's evidence says so), and nothing is rolled back.
    let judged = run(
        &mut rules,
        &policy,
        1,
        &[HEALTHY, HEALTHY, breached(), breached()],
    );
    assert_eq!(actions(&judged)[1], Some(Action::Advance));
    assert_eq!(rules.state(1, "*").unwrap().percent, 100.0);
    for j in &judged[2..] {
        assert_eq!(j.command, None);
        let ev = evidence(j, "err", Role::Guardrail);
        assert!(!ev.breached && ev.p_value.is_none(), "{ev:?}");
    }
}
