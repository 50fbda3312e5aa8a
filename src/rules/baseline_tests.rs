//! Rolling baselines (SPEC §4 "Policy depth"): a flag without control whose error rate
//! is tested against its own cohort's previous windows. A step regression pauses; a
//! stationary cohort with clustered users and a daily cycle does not; warm-up decides
//! nothing; breached windows stay out of the ring; the ring survives a restart; `check`
//! names every misuse with its path.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::config::Config;
use crate::model::Role;
use crate::window::aggregate::{Agg, Arm, Contribution, unit_hash};
use crate::window::{ClosedFlag, ClosedWindow};

const SIZE: i64 = 15 * 60_000;
const T0: i64 = 1_700_000_100_000;

/// Flag `nc`: no control; its error rate may not rise 20% over the cohort's previous
/// 8 windows (sequential, two breached windows to pause).
const CONFIG: &str = r#"
[[metrics]]
name = "err"
type = "rate"
numerator   = { source = "errors",  match = { service = "checkout" } }
denominator = { source = "product", match = { journey = "checkout", outcome = "STARTED" } }

[[flags]]
key = "nc"
owner = "team"
treatment = "on"
ramp = [100]
start_percent = 100
advance_when = "healthy"
  [[flags.guardrails]]
  metric = "err"
  max_relative_increase = 0.2
  baseline = { windows = 8 }
  alpha = 0.01
  windows = 2
  min_samples = 200
"#;

fn compile(text: &str) -> Arc<Policy> {
    Arc::new(Policy::compile(&Config::parse(text).unwrap()).unwrap())
}

/// A closed window `k` of flag 0, cohort `*`, with the treatment's error aggregate `err`
/// (and an empty control arm: the flag has none).
fn window(policy: &Policy, k: i64, err: Agg) -> ClosedWindow {
    let template: Vec<Agg> = policy.flags[0]
        .metric_ids
        .iter()
        .map(|&m| Agg::new(&policy.metrics[m]))
        .collect();
    let mut treatment = Arm::new(&template);
    treatment.aggs[0] = err;
    ClosedWindow {
        start: T0 + k * SIZE,
        end: T0 + (k + 1) * SIZE,
        flags: vec![ClosedFlag {
            cohorts: vec![("*".to_string(), [treatment, Arm::new(&template)])],
            late_events: 0,
        }],
        first_offsets: Vec::new(),
    }
}

fn decide(rules: &mut Rules, policy: &Policy, k: i64, err: Agg) -> Judged {
    let mut out = rules.decide(&window(policy, k, err), T0 + (k + 1) * SIZE + 1);
    assert_eq!(out.len(), 1);
    out.pop().unwrap()
}

fn err_evidence(j: &Judged) -> &MetricEvidence {
    j.evaluation
        .evidence
        .iter()
        .find(|e| e.metric == "err" && e.role == Role::Guardrail)
        .unwrap()
}

fn action(j: &Judged) -> Option<Action> {
    j.command.as_ref().map(|c| c.action)
}

/// The pooled baseline's (errors, started) of cohort `*`.
fn pooled(rules: &Rules) -> (u64, u64, usize) {
    let b = rules.state(0, "*").unwrap().baselines[0].as_ref().unwrap();
    match b.pooled() {
        Some(Agg::Rate { num, den, .. }) => (num, den, b.len()),
        _ => (0, 0, b.len()),
    }
}

/// Simulated traffic of one cohort: a fixed population of users, each with its own
/// error propensity (gamma-distributed around the cohort's rate, so errors cluster by
/// user), of whom a share is active each window (following a daily cycle of ±50%)
/// and starts 1 to 4 checkouts. Returns the window's error aggregate over units.
struct Population {
    rng: SmallRng,
    /// Per user: unit hash and error propensity relative to the mean.
    users: Vec<(u64, f64)>,
}

impl Population {
    fn new(seed: u64, n: usize) -> Population {
        let mut rng = SmallRng::seed_from_u64(seed);
        let users = (0..n)
            .map(|i| {
                // Gamma(2, 1/2) as the sum of two exponentials: mean 1, sd 0.71.
                let e = |rng: &mut SmallRng| -(rng.random::<f64>().max(1e-12)).ln();
                let propensity = (e(&mut rng) + e(&mut rng)) / 2.0;
                (unit_hash(format!("{seed}-user-{i}").as_bytes()), propensity)
            })
            .collect();
        Population { rng, users }
    }

    /// Window `k` at error rate `rate` (per started checkout).
    fn window(&mut self, k: i64, rate: f64) -> Agg {
        let daily = (2.0 * std::f64::consts::PI * k as f64 / 96.0).sin();
        let active = 0.3 * (1.0 + 0.5 * daily);
        let mut agg = Agg::Rate {
            num: 0,
            den: 0,
            units: None,
        };
        for &(unit, propensity) in &self.users {
            if !self.rng.random_bool(active) {
                continue;
            }
            let starts = self.rng.random_range(1..=4u32);
            for _ in 0..starts {
                agg.apply(Contribution::Rate { num: 0, den: 1 }, unit);
                if self.rng.random_bool((rate * propensity).min(1.0)) {
                    agg.apply(Contribution::Rate { num: 1, den: 0 }, unit);
                }
            }
        }
        agg
    }
}

/// (a) Errors double after 12 stationary windows: the cohort is paused within three
/// windows, judged against its own history (evidence says so).
#[test]
fn a_cohort_whose_error_rate_doubles_against_its_previous_windows_is_paused() {
    let policy = compile(CONFIG);
    let mut rules = Rules::new(policy.clone());
    let mut users = Population::new(1, 4000);
    let mut paused_at = None;
    for k in 0..20 {
        let rate = if k < 12 { 0.02 } else { 0.04 };
        let j = decide(&mut rules, &policy, k, users.window(k, rate));
        let ev = err_evidence(&j);
        if k < 12 {
            assert_eq!(action(&j), None, "window {k}: {}", ev.method);
        }
        if (9..12).contains(&k) {
            assert_eq!(ev.status, "healthy", "window {k}: {}", ev.method);
        }
        if action(&j) == Some(Action::Pause) {
            assert!(ev.method.contains("vs baseline"), "{}", ev.method);
            // Windows sharing a baseline: the detector's drifts keep equal weights.
            assert!(
                ev.method.contains("weights 0.33/0.33/0.33"),
                "{}",
                ev.method
            );
            let reason = &j.command.as_ref().unwrap().reason;
            assert!(reason.contains("in the cohort's baseline"), "{reason}");
            // The onset window (12: doubled, not yet significant) did not enter.
            let baseline = ev.control_value.unwrap();
            assert!((baseline - 0.02).abs() < 0.002, "baseline {baseline}");
            assert!((ev.threshold.unwrap() - 1.2 * baseline).abs() < 1e-12);
            assert!(ev.treatment_value > 0.035, "{}", ev.treatment_value);
            assert!(ev.control_samples > 8 * 2000, "pooled over 8 windows");
            paused_at = Some(k);
            break;
        }
    }
    // Measured: window 12 healthy (p 0.2), 13 and 14 breached, paused at 14 (the
    // second breached window, `windows = 2`) against a baseline of 2.115%.
    let at = paused_at.expect("paused");
    assert!((13..=14).contains(&at), "paused at {at}");
    assert_eq!(
        rules.state(0, "*").unwrap().status,
        CohortStatus::Paused,
        "paused"
    );
}

/// Runs `runs` independent stationary cohorts for `looks` windows against a rolling
/// baseline with `margin`: clustered users, a daily cycle in traffic (±50%) and in the
/// error rate (±5%), and per-window noise of the rate itself (sd `jitter`, beyond the
/// users' sampling noise: what within-window unit buckets cannot see). Returns
/// (stops, breached windows, judged windows).
fn stationary(margin: f64, jitter: f64, runs: u64, looks: i64) -> (usize, usize, usize) {
    let policy = compile(&CONFIG.replace(
        "max_relative_increase = 0.2",
        &format!("max_relative_increase = {margin}"),
    ));
    let (mut stops, mut breached, mut judged) = (0, 0, 0);
    for seed in 0..runs {
        let mut rules = Rules::new(policy.clone());
        let mut users = Population::new(100 + seed, 2000);
        for k in 0..looks {
            let daily = (2.0 * std::f64::consts::PI * (k as f64 + 30.0) / 96.0).sin();
            // A symmetric ±√3·sd uniform jitter.
            let noise = jitter * 3f64.sqrt() * (2.0 * users.rng.random::<f64>() - 1.0);
            let rate = 0.02 * (1.0 + 0.05 * daily) * (1.0 + noise);
            let j = decide(&mut rules, &policy, k, users.window(k, rate));
            let ev = err_evidence(&j);
            judged += usize::from(ev.status != "insufficient");
            breached += usize::from(ev.breached);
            if action(&j).is_some() {
                stops += 1;
                break;
            }
        }
    }
    (stops, breached, judged)
}

/// (b) A stationary cohort judged against its rolling baseline over 200 windows (two
/// days), in 20 independent populations of 2,000 users (~1,500 started checkouts and
/// ~30 errors per window): stops are counted. With the 20% margin none stops, with
/// per-window rate noise of 5% or even 30%. Without a margin and with 30% rate noise
/// (which the unit buckets, measuring sampling noise within a window, do not see) the
/// rolling baseline does stop stationary cohorts: what the margin is for (SPEC §4).
#[test]
fn a_stationary_cohort_is_not_stopped_over_200_windows() {
    let (runs, looks) = (20, 200);
    let mut stops = Vec::new();
    for (margin, jitter) in [(0.2, 0.05), (0.2, 0.3), (0.0, 0.05), (0.0, 0.3)] {
        let (stopped, breached, judged) = stationary(margin, jitter, runs, looks);
        eprintln!(
            "stationary, margin {margin}, rate noise {jitter}: {stopped} stops in {runs} cohorts x {looks} windows; {breached} breached of {judged} judged windows"
        );
        if margin > 0.0 {
            assert!(
                judged >= runs as usize * (looks as usize - 9) - 10,
                "{judged}"
            );
        }
        stops.push(stopped);
    }
    // Measured: 0, 0, 0 and 7 stops (of 20 cohorts).
    assert_eq!(stops[..3], [0, 0, 0]);
    assert!(stops[3] >= 1, "no margin, 30% rate noise: {stops:?}");
}

/// (c) Warm-up: the first 9 windows (8 for the ring, admitted one window late) decide
/// nothing, even a tripled error rate, and say how far the baseline is; a guardrail that only has a relative bound is
/// `insufficient` meanwhile (no ADVANCE either: `advance_when = "healthy"` waits).
#[test]
fn warm_up_decides_nothing_and_says_so() {
    let text = CONFIG.replace(
        "ramp = [100]\nstart_percent = 100",
        "ramp = [10, 100]\nstart_percent = 10",
    );
    assert_ne!(text, CONFIG);
    let policy = compile(&text);
    let mut rules = Rules::new(policy.clone());
    for k in 0..9 {
        let errors = if (5..8).contains(&k) { 60 } else { 20 };
        let j = decide(
            &mut rules,
            &policy,
            k,
            Agg::rate_of_units(errors, 1000, k as u64),
        );
        let ev = err_evidence(&j);
        assert_eq!(action(&j), None, "window {k}");
        assert_eq!(ev.status, "insufficient", "window {k}");
        assert!(
            ev.method.starts_with(&format!(
                "baseline warming up: {} of 8 windows",
                k.max(1) - 1
            )),
            "{}",
            ev.method
        );
        assert_eq!(ev.control_value, None);
        assert_eq!(ev.p_value, None);
    }
    // Warm: the next window is judged against the 8 pooled (which took in the three
    // tripled windows: warm-up cannot tell them from normal).
    let j = decide(&mut rules, &policy, 9, Agg::rate_of_units(25, 1000, 9));
    let ev = err_evidence(&j);
    assert!(ev.method.contains("vs baseline"), "{}", ev.method);
    assert_eq!(ev.control_samples, 8000);
    assert!((ev.control_value.unwrap() - 280.0 / 8000.0).abs() < 1e-12);
    // An absolute bound is judged during warm-up: it needs no baseline.
    let text = CONFIG.replace("baseline = {", "max = 0.05\n  baseline = {");
    let policy = compile(&text);
    let mut rules = Rules::new(policy.clone());
    let actions: Vec<_> = (0..3)
        .map(|k| {
            action(&decide(
                &mut rules,
                &policy,
                k,
                Agg::rate_of_units(200, 1000, 9),
            ))
        })
        .collect();
    assert_eq!(actions, vec![None, Some(Action::Pause), None]);
}

/// (d) Breached windows stay out of the baseline: while errors are tripled the ring
/// keeps the 8 healthy windows (and the cohort, once paused, adds nothing); after a
/// breach that heals without a stop, healthy windows are admitted again, one window
/// late.
#[test]
fn breached_windows_stay_out_of_the_baseline() {
    let policy = compile(CONFIG);
    let mut rules = Rules::new(policy.clone());
    for k in 0..9 {
        decide(
            &mut rules,
            &policy,
            k,
            Agg::rate_of_units(20, 1000, k as u64),
        );
    }
    assert_eq!(pooled(&rules), (160, 8000, 8));
    let mut actions = Vec::new();
    for k in 9..15 {
        let j = decide(
            &mut rules,
            &policy,
            k,
            Agg::rate_of_units(60, 1000, k as u64),
        );
        assert!(err_evidence(&j).breached, "window {k}");
        actions.push(action(&j));
        // Not one tripled window in the ring.
        assert_eq!(pooled(&rules), (160, 8000, 8), "window {k}");
    }
    assert_eq!(actions[..2], [None, Some(Action::Pause)]);
    assert!(actions[2..].iter().all(Option::is_none));

    // `windows = 3`: one breached window, then recovery, never a stop.
    let text = CONFIG.replace("windows = 2\n", "windows = 3\n");
    let policy = compile(&text);
    let mut rules = Rules::new(policy.clone());
    for k in 0..9 {
        decide(
            &mut rules,
            &policy,
            k,
            Agg::rate_of_units(20, 1000, k as u64),
        );
    }
    let j = decide(&mut rules, &policy, 9, Agg::rate_of_units(60, 1000, 9));
    assert!(err_evidence(&j).breached);
    assert_eq!(pooled(&rules), (160, 8000, 8), "the breached window is out");
    let j = decide(&mut rules, &policy, 10, Agg::rate_of_units(24, 1000, 10));
    assert_eq!(err_evidence(&j).status, "healthy");
    assert_eq!(pooled(&rules), (160, 8000, 8), "pending");
    let j = decide(&mut rules, &policy, 11, Agg::rate_of_units(20, 1000, 11));
    assert_eq!(err_evidence(&j).status, "healthy");
    assert_eq!(
        pooled(&rules),
        (140 + 24, 8000, 8),
        "the healthy window is in, the oldest out"
    );
}

/// (3) The ring is published to the state topic with each evaluation (not to the
/// evaluations topic) and restored after a restart: the restarted engine judges the
/// next window exactly as the one that kept running; a ring it cannot read re-warms.
#[test]
fn the_baseline_survives_a_restart_and_is_state_only() {
    let policy = compile(CONFIG);
    let mut rules = Rules::new(policy.clone());
    let mut last = None;
    for k in 0..10 {
        last = Some(decide(
            &mut rules,
            &policy,
            k,
            Agg::rate_of_units(20 + k as u64, 1000, k as u64),
        ));
    }
    let eval = last.unwrap().evaluation;
    let ring = eval
        .band
        .iter()
        .find(|b| b.metric == "baseline#0")
        .expect("ring published");
    assert_eq!(ring.control, vec![8.0, 130.0, 1.0]);
    assert_eq!(ring.treatment.len(), 9 * 130, "8 in the ring, 1 pending");
    let public = crate::publisher::without_sample(&eval);
    assert!(
        public
            .band
            .iter()
            .all(|b| !b.metric.starts_with("baseline#"))
    );

    let mut restarted = Rules::new(policy.clone());
    assert_eq!(restarted.restore(&eval), Restore::Restored);
    assert_eq!(restarted.state(0, "*"), rules.state(0, "*"));
    let next = Agg::rate_of_units(45, 1000, 99);
    let a = decide(&mut rules, &policy, 10, next.clone());
    let b = decide(&mut restarted, &policy, 10, next.clone());
    assert_eq!(a.evaluation.evidence, b.evaluation.evidence);

    // Without the ring (an evaluation of a build before baselines): warm-up again.
    let mut stripped = eval.clone();
    stripped.band.retain(|b| !b.metric.starts_with("baseline#"));
    let mut rewarm = Rules::new(policy.clone());
    assert_eq!(rewarm.restore(&stripped), Restore::Restored);
    let j = decide(&mut rewarm, &policy, 10, next);
    let ev = err_evidence(&j);
    assert_eq!(ev.status, "insufficient");
    assert!(
        ev.method.starts_with("baseline warming up: 0 of 8 windows"),
        "{}",
        ev.method
    );
}

/// The memory the ring holds: per window one rate aggregate with its unit buckets.
#[test]
fn the_ring_is_bounded_by_its_windows() {
    let policy = compile(CONFIG);
    let mut rules = Rules::new(policy.clone());
    for k in 0..30 {
        decide(
            &mut rules,
            &policy,
            k,
            Agg::rate_of_units(20, 1000, k as u64),
        );
    }
    let b = rules.state(0, "*").unwrap().baselines[0].as_ref().unwrap();
    assert_eq!(b.len(), 8);
    let per_window = b.heap_bytes() / 9;
    eprintln!(
        "baseline ring: {} bytes, {per_window} per window",
        b.heap_bytes()
    );
    assert!((1024..1200).contains(&per_window), "{per_window}");
}

/// (e) `check`: a baseline only without control, only with a relative bound, N in
/// range (lower for quantiles); a relative bound without control needs one. Every error
/// with its path.
#[test]
fn check_names_every_baseline_misuse_with_its_path() {
    let errors = |text: &str| -> Vec<String> {
        match Policy::compile(&Config::parse(text).unwrap()) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    };
    assert!(errors(CONFIG).is_empty());
    let with_control = CONFIG.replace(
        "treatment = \"on\"",
        "treatment = \"on\"\ncontrol = \"off\"",
    );
    assert_eq!(
        errors(&with_control),
        vec![
            "flags[0].guardrails[0].baseline: only for a flag without control (with control, relative bounds are tested against it)"
        ]
    );
    let no_baseline = CONFIG.replace("  baseline = { windows = 8 }\n", "");
    assert_eq!(
        errors(&no_baseline),
        vec![
            "flags[0].guardrails[0].max_relative_increase: a relative bound needs the flag's control variant, or a baseline (baseline = { windows = 8 }: the cohort's previous windows)"
        ]
    );
    let absolute_only = CONFIG.replace("max_relative_increase = 0.2", "max = 0.05");
    assert_eq!(
        errors(&absolute_only),
        vec![
            "flags[0].guardrails[0].baseline: a baseline is what a relative bound is tested against: set max_relative_increase or max_relative_decrease"
        ]
    );
    for (n, ok) in [(1, false), (2, true), (48, true), (49, false)] {
        let text = CONFIG.replace("windows = 8", &format!("windows = {n}"));
        let e = errors(&text);
        assert_eq!(e.is_empty(), ok, "{n}: {e:?}");
        if !ok {
            assert_eq!(
                e,
                vec![format!(
                    "flags[0].guardrails[0].baseline.windows: {n} is not in [2, 48]"
                )]
            );
        }
    }
    let quantile = CONFIG
        .replace(
            "[[flags]]",
            "[[metrics]]\nname = \"p95\"\ntype = \"quantile\"\nquantile = 0.95\nsource = \"product\"\nfield = \"latency_ms\"\n\n[[flags]]",
        )
        .replace("metric = \"err\"", "metric = \"p95\"")
        .replace("windows = 8", "windows = 16");
    assert_eq!(
        errors(&quantile),
        vec![
            "flags[0].guardrails[0].baseline.windows: 16 is not in [2, 12] for a quantile metric (a histogram is kept per window)"
        ]
    );
    // A cohort override inherits the baseline; unknown keys are refused by the parser.
    let with_override = CONFIG.replace(
        "  min_samples = 200\n",
        "  min_samples = 200\n  cohorts = [{ cohort = \"*\", max_relative_increase = 0.1 }]\n",
    );
    assert!(errors(&with_override).is_empty());
    let typo = CONFIG.replace("windows = 8", "windws = 8");
    let e = Config::parse(&typo).unwrap_err().0;
    assert_eq!(e[0].path, "flags[0].guardrails[0].baseline.windws", "{e:?}");
    // The baseline decides: it is part of the policy version; configs without one keep theirs.
    let v = |t: &str| compile(t).flags[0].policy_version.clone();
    assert_ne!(v(CONFIG), v(&CONFIG.replace("windows = 8", "windows = 12")));
}

/// The test against a baseline, end to end through the rules stage (`per_window`, so
/// the evidence's p is the window's test), against an independent numpy/scipy
/// computation from unit-level data (`scripts/baseline_vectors.py`): the baseline is the
/// N windows' bucket totals pooled, the p-value the clustered score test's
/// (scipy.stats.norm.sf). Agreement to 1e-9.
#[test]
fn the_baseline_test_matches_the_scipy_reference() {
    use serde_json::Value;
    const VECTORS: &str = include_str!("../../tests/data/baseline_vectors.json");
    let all: Value = serde_json::from_str(VECTORS).unwrap();
    let f = |v: &Value| v.as_f64().unwrap();
    let cases = all["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    for case in cases {
        let windows = case["baseline"].as_array().unwrap();
        let n = windows.len();
        let margin = f(&case["margin"]);
        let text = CONFIG
            .replace("windows = 8", &format!("windows = {n}"))
            .replace(
                "max_relative_increase = 0.2",
                &format!("max_relative_increase = {margin}"),
            )
            .replace(
                "min_samples = 200",
                "min_samples = 200\n  test = \"per_window\"",
            );
        let policy = compile(&text);
        let template = Agg::new(&policy.metrics[0]);
        let agg = |w: &Value| {
            let (x, y): (Vec<f64>, Vec<f64>) = (
                w["x"].as_array().unwrap().iter().map(f).collect(),
                w["y"].as_array().unwrap().iter().map(f).collect(),
            );
            let mut values = vec![x.iter().sum(), y.iter().sum()];
            values.extend(x);
            values.extend(y);
            template.with_values(&values).unwrap()
        };
        let mut rules = Rules::new(policy.clone());
        for (k, w) in windows.iter().enumerate() {
            decide(&mut rules, &policy, k as i64, agg(w));
        }
        // One window more (a copy of the first) admits the last: windows enter one late.
        decide(&mut rules, &policy, n as i64, agg(&windows[0]));
        let j = decide(&mut rules, &policy, n as i64 + 1, agg(&case["judged"]));
        let ev = err_evidence(&j);
        let (p, want) = (ev.p_value.unwrap(), f(&case["p"]));
        assert!(
            (p - want).abs() <= 1e-9 * want,
            "seed {}: {p} vs {want}",
            case["seed"]
        );
        assert!((ev.control_value.unwrap() - f(&case["baseline_value"])).abs() < 1e-15);
        assert!((ev.treatment_value - f(&case["treatment_value"])).abs() < 1e-15);
        // The textbook per-user delta method (Wald) on the same units is close: the
        // bucketed score test is a little more conservative.
        let per_user = f(&case["p_per_user_delta_method"]);
        assert!(
            per_user <= want * 1.05 && per_user > want / 2.0,
            "{per_user} vs {want}"
        );
    }
}

/// A quantile guardrail against its baseline: p95 latency pooled over the previous 4
/// windows' histograms; a doubled latency holds the cohort (a warning). Quantile rings
/// are not published: after a restart the guardrail warms up again.
#[test]
fn a_quantile_baseline_pools_histograms_and_rewarms_after_a_restart() {
    let text = CONFIG
        .replace(
            "[[flags]]",
            "[[metrics]]\nname = \"p95\"\ntype = \"quantile\"\nquantile = 0.95\nsource = \"product\"\nfield = \"latency_ms\"\n\n[[flags]]",
        )
        .replace("metric = \"err\"", "metric = \"p95\"")
        .replace("windows = 8", "windows = 4")
        .replace("alpha = 0.01", "alpha = 0.01\n  severity = \"warning\"");
    let policy = compile(&text);
    let latency = |k: i64, scale: f64| {
        let mut a = Agg::new(&policy.metrics[1]);
        let mut rng = SmallRng::seed_from_u64(k as u64);
        for u in 0..1500u64 {
            // Exponential latencies around 200 ms, two requests per user.
            for _ in 0..2 {
                let v = -200.0 * scale * rng.random::<f64>().max(1e-12).ln();
                a.apply(Contribution::Value(v), unit_hash(&u.to_le_bytes()));
            }
        }
        a
    };
    // The flag's slot 0 is p95 (its only guardrail's metric).
    assert_eq!(policy.flags[0].metric_ids, vec![1]);
    let mut rules = Rules::new(policy.clone());
    let mut last = None;
    for k in 0..8 {
        let j = decide(&mut rules, &policy, k, latency(k, 1.0));
        let ev = j
            .evaluation
            .evidence
            .iter()
            .find(|e| e.metric == "p95")
            .unwrap()
            .clone();
        let want = if k < 5 { "insufficient" } else { "healthy" };
        assert_eq!(ev.status, want, "window {k}: {}", ev.method);
        assert_eq!(action(&j), None);
        last = Some(j.evaluation);
    }
    let eval = last.unwrap();
    assert!(
        eval.band.iter().all(|b| !b.metric.starts_with("baseline#")),
        "quantile rings are not published"
    );
    let mut restarted = Rules::new(policy.clone());
    assert_eq!(restarted.restore(&eval), Restore::Restored);
    let doubled: Vec<_> = (8..10)
        .map(|k| {
            let a = decide(&mut rules, &policy, k, latency(k, 2.0));
            let b = decide(&mut restarted, &policy, k, latency(k, 2.0));
            (action(&a), action(&b))
        })
        .collect();
    // The running engine holds at the second slow window; the restarted one warms up.
    assert_eq!(doubled, vec![(None, None), (Some(Action::Hold), None)]);
}
