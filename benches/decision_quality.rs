//! Decision-quality benchmark (issue 4, point 7): a seeded simulation of whole rollouts
//! driven through the real engine (`Engine::ingest_event` / `tick` / `finish`, the core
//! `replay` runs), judged by guardrail and, on the same data, by a static rule in the
//! style of Argo Rollouts / Flagger. Prints a Markdown table.
//!
//! Run: `cargo bench --bench decision_quality` (full, a few minutes on 2 cores)
//!      `cargo bench --bench decision_quality -- --quick` (small smoke run)
//! Options: `--aa-rollouts N`, `--aa-exposures N`, `--reg-rollouts N`, `--onset W`
//! (regression onset window, default 4), `--threads N`.
//!
//! Traffic model, per arm (treatment "on", control "off" of flag "rollout") and window:
//! `exposures` started checkouts (product, journey checkout, outcome STARTED = the
//! denominator), each one COMPLETED with probability `p_complete` and followed by one
//! error (errors, service checkout) with probability `p_error`; platform uniform over
//! ios / android / web (cohorts `platform=…` and `*`); event times uniform within the
//! window, fed in generation order (random time order). Arms are equal-sized: the share
//! does not follow the ramp, so "per arm" is exact. One partition per source; `tick`
//! after each window, `finish` at the end. Every rollout has its own seed, so results
//! do not depend on the thread split.
//!
//! Scenarios:
//! (a) A/A: no true difference, 96 windows (24 h), error rate 1%, completion 60%.
//! (b) regression: error rate 1% → 1.5% in treatment from window 4 on (all cohorts),
//!     16 windows, 6000 exposures per arm per window.
//! (c) static rule on the same evaluations: treatment error rate > 1.2% (fixed maximum)
//!     in a window with ≥ 200 treatment samples, for 2 consecutive windows → fail.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use guardrail::config::Config;
use guardrail::engine::{Engine, Ingested};
use guardrail::model::{Action, Body, EventRef, FlagRef, Outcome, Role, Source};
use guardrail::policy::Policy;
use guardrail::rules::Judged;
use guardrail::window::watermark::PartitionKey;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use smallvec::smallvec;

const POLICY: &str = r#"
[window]
size = "15m"
allowed_lateness = "2m"

[[metrics]]
name = "error_rate"
type = "rate"
numerator   = { source = "errors",  match = { service = "checkout" } }
denominator = { source = "product", match = { journey = "checkout", outcome = "STARTED" } }

[[metrics]]
name = "completion_rate"
type = "rate"
numerator   = { source = "product", match = { journey = "checkout", outcome = "COMPLETED" } }
denominator = { source = "product", match = { journey = "checkout", outcome = "STARTED" } }

[[flags]]
key = "rollout"
owner = "bench"
treatment = "on"
control = "off"
cohort_by = ["platform"]
ramp = [5, 25, 50, 100]
start_percent = 5
approval = "auto"
advance_when = "significant"

  [[flags.guardrails]]
  metric = "error_rate"
  max = 0.03
  max_relative_increase = 0.10
  alpha = 0.01
  windows = 2
  min_samples = 200
  severity = "critical"
  action = "pause"

  [[flags.success]]
  metric = "completion_rate"
  direction = "increase"
  alpha = 0.05
  windows = 2
  min_samples = 200
"#;

const WINDOW_MS: i64 = 15 * 60 * 1000;
/// Wall clock of the run; every event time lies before it (window 0 starts 48 h earlier).
const NOW: i64 = 1_700_006_400_000;
const BASE: i64 = (NOW - 48 * 3600 * 1000) / WINDOW_MS * WINDOW_MS;
const PLATFORMS: [&str; 3] = ["ios", "android", "web"];
/// Cohort slots in results: `*`, then PLATFORMS.
const COHORTS: [&str; 4] = ["*", "platform=ios", "platform=android", "platform=web"];
const NO: u32 = u32::MAX;

// Static rule (Argo Rollouts / Flagger style).
const STATIC_MAX: f64 = 0.012;
const STATIC_WINDOWS: u32 = 2;
const STATIC_MIN_SAMPLES: i64 = 200;

#[derive(Clone, Copy)]
struct Scenario {
    id: u64,
    windows: u32,
    exposures: u32,
    p_error_control: f64,
    p_error_treatment: f64,
    /// Window from which treatment has `p_error_treatment` (before: control's rate).
    onset: u32,
    p_complete: f64,
}

/// What one rollout produced; window indices, `NO` when it did not happen.
#[derive(Clone)]
struct Outcome1 {
    first_stop: [u32; 4],
    first_advance_band1: [u32; 4],
    first_hold: [u32; 4],
    static_fail: [u32; 4],
    /// Windows judged per cohort with the guardrail breached / with a status at all.
    breached_windows: [u32; 4],
    judged_windows: [u32; 4],
    /// Evidence that disagreed with the counts the simulator generated for the window.
    evidence_mismatch: u32,
    not_accepted: u64,
    events: u64,
}

/// The bench policy with the guardrail's relative margin (percent) and streak overridden.
fn policy(margin_pct: usize, guard_windows: usize) -> Arc<Policy> {
    let text = POLICY
        .replacen(
            "max_relative_increase = 0.10",
            &format!("max_relative_increase = {}", margin_pct as f64 / 100.0),
            1,
        )
        .replacen("windows = 2", &format!("windows = {guard_windows}"), 1);
    let config = Config::parse(&text).expect("bench policy parses");
    Arc::new(Policy::compile(&config).expect("bench policy is valid"))
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn cohort_slot(name: &str) -> Option<usize> {
    COHORTS.iter().position(|c| *c == name)
}

fn run_rollout(policy: &Arc<Policy>, sc: &Scenario, index: u64) -> Outcome1 {
    let mut rng = SmallRng::seed_from_u64(splitmix(sc.id << 40 ^ index));
    let mut engine = Engine::new(policy.clone(), false).expect("engine");
    let product = PartitionKey {
        input: Source::Product.index() as u16,
        partition: 0,
    };
    let errors = PartitionKey {
        input: Source::Errors.index() as u16,
        partition: 0,
    };
    let mut offsets = [0i64; 2];
    let mut out = Outcome1 {
        first_stop: [NO; 4],
        first_advance_band1: [NO; 4],
        first_hold: [NO; 4],
        static_fail: [NO; 4],
        breached_windows: [0; 4],
        judged_windows: [0; 4],
        evidence_mismatch: 0,
        not_accepted: 0,
        events: 0,
    };
    // Generated treatment (started, errors) per window and cohort slot, to check evidence.
    let mut generated = vec![[(0u64, 0u64); 4]; sc.windows as usize];
    let mut static_streak = [0u32; 4];
    let mut feed = |engine: &mut Engine, p: PartitionKey, ev: &EventRef<'_>, out: &mut Outcome1| {
        let o = &mut offsets[(p.input == Source::Errors.index() as u16) as usize];
        if engine.ingest_event(p, *o, ev, NOW) != Ingested::Accepted {
            out.not_accepted += 1;
        }
        *o += 1;
        out.events += 1;
    };
    let mut judge = |judged: Vec<Judged>, out: &mut Outcome1, generated: &[[(u64, u64); 4]]| {
        for j in judged {
            let e = &j.evaluation;
            let Some(c) = cohort_slot(&e.cohort) else {
                continue;
            };
            let w = ((e.window_start - BASE) / WINDOW_MS) as u32;
            if let Some(cmd) = &j.command {
                match cmd.action {
                    Action::Pause | Action::Rollback => {
                        out.first_stop[c] = out.first_stop[c].min(w)
                    }
                    Action::Hold => out.first_hold[c] = out.first_hold[c].min(w),
                    Action::Advance if cmd.from_percent == 5.0 => {
                        out.first_advance_band1[c] = out.first_advance_band1[c].min(w)
                    }
                    Action::Advance => {}
                }
            }
            let Some(ev) = e
                .evidence
                .iter()
                .find(|m| m.metric == "error_rate" && m.role == Role::Guardrail)
            else {
                continue;
            };
            if let Some(&(n, x)) = generated.get(w as usize).map(|g| &g[c]) {
                let expect = if n > 0 { x as f64 / n as f64 } else { 0.0 };
                if ev.treatment_samples != n as i64 || (ev.treatment_value - expect).abs() > 1e-12 {
                    out.evidence_mismatch += 1;
                }
            }
            out.judged_windows[c] += 1;
            out.breached_windows[c] += u32::from(ev.breached);
            // The static rule: a window with too few samples neither fails nor passes.
            if ev.treatment_samples >= STATIC_MIN_SAMPLES {
                if ev.treatment_value > STATIC_MAX {
                    static_streak[c] += 1;
                    if static_streak[c] >= STATIC_WINDOWS {
                        out.static_fail[c] = out.static_fail[c].min(w);
                    }
                } else {
                    static_streak[c] = 0;
                }
            }
        }
    };
    for w in 0..sc.windows {
        let start = BASE + w as i64 * WINDOW_MS;
        let p_err_t = if w >= sc.onset {
            sc.p_error_treatment
        } else {
            sc.p_error_control
        };
        // Arms interleaved so that event times of both are in random order.
        for i in 0..2 * sc.exposures {
            let treatment = i % 2 == 0;
            let (variant, p_err) = if treatment {
                ("on", p_err_t)
            } else {
                ("off", sc.p_error_control)
            };
            let pi = rng.random_range(0..3usize);
            let platform = PLATFORMS[pi];
            let flags = smallvec![FlagRef {
                key: "rollout",
                variant
            }];
            let attributes = smallvec![("platform", platform)];
            let mut ev = EventRef {
                event_id: "sim",
                timestamp: start + rng.random_range(0..WINDOW_MS),
                flags,
                attributes,
                user_id: None,
                body: Body::Product {
                    journey: "checkout",
                    step: None,
                    outcome: Outcome::Started,
                    latency_ms: None,
                    value: None,
                },
            };
            feed(&mut engine, product, &ev, &mut out);
            if rng.random_bool(sc.p_complete) {
                ev.timestamp = start + rng.random_range(0..WINDOW_MS);
                ev.body = Body::Product {
                    journey: "checkout",
                    step: None,
                    outcome: Outcome::Completed,
                    latency_ms: None,
                    value: None,
                };
                feed(&mut engine, product, &ev, &mut out);
            }
            let error = rng.random_bool(p_err);
            if error {
                ev.timestamp = start + rng.random_range(0..WINDOW_MS);
                ev.body = Body::Error {
                    service: "checkout",
                    error_class: "Timeout",
                    status_code: Some(500),
                    fatal: false,
                    latency_ms: None,
                };
                feed(&mut engine, errors, &ev, &mut out);
            }
            if treatment {
                let g = &mut generated[w as usize];
                for slot in [0, 1 + pi] {
                    g[slot].0 += 1;
                    g[slot].1 += u64::from(error);
                }
            }
        }
        let judged = engine.tick(NOW);
        judge(judged, &mut out, &generated);
    }
    let judged = engine.finish(NOW);
    judge(judged, &mut out, &generated);
    out
}

fn run_all(policy: &Arc<Policy>, sc: &Scenario, rollouts: usize, threads: usize) -> Vec<Outcome1> {
    let next = AtomicUsize::new(0);
    let mut results: Vec<(usize, Outcome1)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= rollouts {
                            break mine;
                        }
                        mine.push((i, run_rollout(policy, sc, i as u64)));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("worker"))
            .collect()
    });
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, o)| o).collect()
}

/// 95% Wilson interval of k successes in n, as "x.x% [lo–hi]".
fn share(k: usize, n: usize) -> String {
    if n == 0 {
        return "n/a".into();
    }
    let (k, n) = (k as f64, n as f64);
    let z = 1.959_963_984_540_054_f64;
    let p = k / n;
    let d = 1.0 + z * z / n;
    let c = (p + z * z / (2.0 * n)) / d;
    let h = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / d;
    format!(
        "{:.1}% [{:.1}–{:.1}]",
        p * 100.0,
        (c - h).max(0.0) * 100.0,
        (c + h).min(1.0) * 100.0
    )
}

fn min4(a: &[u32; 4]) -> u32 {
    *a.iter().min().expect("4")
}

/// Windows from onset to detection (onset window = 1), for detections at or after onset.
fn latency(first: u32, onset: u32) -> Option<u32> {
    (first != NO && first >= onset).then(|| first - onset + 1)
}

/// The earliest detection at or after onset over all cohorts (a cohort stopped before
/// the onset is a false stop, counted apart, and cannot detect).
fn latency_any(first: &[u32; 4], onset: u32) -> Option<u32> {
    first.iter().filter_map(|&w| latency(w, onset)).min()
}

fn median(v: &mut [u32]) -> String {
    if v.is_empty() {
        return "n/a".into();
    }
    v.sort_unstable();
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m].to_string()
    } else {
        format!("{}", (v[m - 1] + v[m]) as f64 / 2.0)
    }
}

fn arg(args: &[String], name: &str) -> Option<usize> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1)?.parse().ok()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let threads = arg(&args, "--threads").unwrap_or(2).max(1);
    let aa_rollouts = arg(&args, "--aa-rollouts").unwrap_or(if quick { 40 } else { 1000 });
    let aa_exposures =
        arg(&args, "--aa-exposures").unwrap_or(if quick { 2000 } else { 6000 }) as u32;
    let reg_rollouts = arg(&args, "--reg-rollouts").unwrap_or(if quick { 40 } else { 200 });

    // `--margin 0` tests "no increase at all"; the SPEC example tolerates 10%.
    let margin_pct = arg(&args, "--margin").unwrap_or(10);
    let guard_windows = arg(&args, "--guard-windows").unwrap_or(2);
    let policy = policy(margin_pct, guard_windows);
    println!(
        "guardrail: max_relative_increase {:.2}, windows {guard_windows}",
        margin_pct as f64 / 100.0
    );
    let aa = Scenario {
        id: 1,
        windows: 96,
        exposures: aa_exposures,
        p_error_control: 0.01,
        p_error_treatment: 0.01,
        onset: u32::MAX,
        p_complete: 0.60,
    };
    let reg_onset = arg(&args, "--onset").unwrap_or(4).min(15) as u32;
    let reg = Scenario {
        id: 2,
        windows: 16,
        exposures: 6000,
        p_error_control: 0.01,
        p_error_treatment: 0.015,
        onset: reg_onset,
        p_complete: 0.60,
    };

    let t0 = Instant::now();
    let aa_out = run_all(&policy, &aa, aa_rollouts, threads);
    let aa_secs = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let reg_out = run_all(&policy, &reg, reg_rollouts, threads);
    let reg_secs = t1.elapsed().as_secs_f64();
    let total_secs = t0.elapsed().as_secs_f64();
    let aa_events: u64 = aa_out.iter().map(|o| o.events).sum();
    let reg_events: u64 = reg_out.iter().map(|o| o.events).sum();

    // ---- (a) A/A ----
    let n = aa_out.len();
    let count = |f: &dyn Fn(&Outcome1) -> bool| aa_out.iter().filter(|o| f(o)).count();
    let g_stop_any = count(&|o| min4(&o.first_stop) != NO);
    let s_fail_any = count(&|o| min4(&o.static_fail) != NO);
    let g_adv_any = count(&|o| min4(&o.first_advance_band1) != NO);
    let g_hold_any = count(&|o| min4(&o.first_hold) != NO);

    println!();
    println!("## Decision quality (seeded simulation through `guardrail::engine::Engine`)");
    println!();
    println!(
        "Policy: error_rate guardrail max 0.03 + max_relative_increase 0.10, alpha 0.01, \
         2 windows, min_samples 200, critical pause; completion_rate success increase, \
         alpha 0.05, 2 windows; ramp 5→25→50→100 (auto). Cohorts: `*` and platform \
         ios/android/web (uniform). Shares with 95% Wilson intervals."
    );
    println!();
    println!(
        "(a) A/A: {n} rollouts × 96 windows (24 h), error 1%, completion 60%, \
         {aa_exposures} started checkouts per arm per window{}.",
        if aa_exposures < 6000 {
            " (reduced from the issue's 6000 by --quick or --aa-exposures)"
        } else {
            ""
        }
    );
    println!(
        "(b) regression: {} rollouts × 16 windows, error 1% → 1.5% in treatment from window {} \
         (+50% relative, under max 0.03), 6000 per arm per window. \
         Windows to detect: the onset window counts 1.",
        reg_out.len(),
        reg.onset
    );
    println!(
        "(c) static rule (Argo Rollouts / Flagger style): treatment error rate > 1.2% in a \
         window (≥ 200 treatment samples) for 2 consecutive windows → fail; same evaluations."
    );
    if quick || aa_rollouts != 1000 || reg_rollouts != 200 || reg_onset != 4 {
        println!();
        println!(
            "NOTE: reduced run ({aa_rollouts} A/A and {reg_rollouts} regression rollouts; \
             regression onset window {reg_onset}; the full run is 1000 and 200, onset 4)."
        );
    }
    println!();
    println!("| scenario | measure | guardrail | static rule | target |");
    println!("|---|---|---|---|---|");
    if n > 0 {
        println!(
            "| (a) A/A | rollouts with any PAUSE/ROLLBACK (static: any fail), any cohort | {} | {} | ≤ 1% |",
            share(g_stop_any, n),
            share(s_fail_any, n)
        );
        for (c, name) in COHORTS.iter().enumerate() {
            println!(
                "| (a) A/A | false pause, cohort `{name}` | {} | {} | |",
                share(count(&|o| o.first_stop[c] != NO), n),
                share(count(&|o| o.static_fail[c] != NO), n)
            );
        }
        println!(
            "| (a) A/A | rollouts with an ADVANCE at the first band (5%), any cohort | {} | — | ≤ 5% |",
            share(g_adv_any, n)
        );
        println!(
            "| (a) A/A | ADVANCE at the first band, cohort `*` | {} | — | |",
            share(count(&|o| o.first_advance_band1[0] != NO), n)
        );
        println!(
            "| (a) A/A | rollouts with a HOLD, any cohort | {} | — | |",
            share(g_hold_any, n)
        );
        let judged: u64 = aa_out
            .iter()
            .map(|o| o.judged_windows.iter().sum::<u32>() as u64)
            .sum();
        let breached: u64 = aa_out
            .iter()
            .map(|o| o.breached_windows.iter().sum::<u32>() as u64)
            .sum();
        println!(
            "| (a) A/A | guardrail windows judged breached (per window × cohort) | {:.3}% of {judged} | — | |",
            100.0 * breached as f64 / judged.max(1) as f64
        );
    }
    // ---- (b) regression ----
    let m = reg_out.len();
    let onset = reg.onset;
    let span = (reg.windows - onset) as usize;
    let rcount = |f: &dyn Fn(&Outcome1) -> bool| reg_out.iter().filter(|o| f(o)).count();
    type Pick = fn(&Outcome1) -> &[u32; 4];
    let rules: [(&str, Pick); 2] = [
        ("guardrail", |o| &o.first_stop),
        ("static", |o| &o.static_fail),
    ];
    let mut cols: Vec<Vec<String>> = Vec::new();
    let mut dists: Vec<Vec<usize>> = Vec::new();
    for (_, pick) in rules {
        let star = rcount(&|o| latency(pick(o)[0], onset).is_some());
        let any = rcount(&|o| latency_any(pick(o), onset).is_some());
        let pre = rcount(&|o| pick(o).iter().any(|&w| w < onset));
        let mut lat: Vec<u32> = reg_out
            .iter()
            .filter_map(|o| latency_any(pick(o), onset))
            .collect();
        let within6 = lat.iter().filter(|&&l| l <= 6).count();
        let mut star_lat: Vec<u32> = reg_out
            .iter()
            .filter_map(|o| latency(pick(o)[0], onset))
            .collect();
        let star6 = star_lat.iter().filter(|&&l| l <= 6).count();
        let mut dist = vec![0usize; span + 1];
        for &l in &lat {
            dist[(l as usize).min(span)] += 1;
        }
        dist[0] = m - lat.len();
        dists.push(dist);
        cols.push(vec![
            share(star, m),
            share(any, m),
            share(within6, m),
            share(star6, m),
            median(&mut lat),
            median(&mut star_lat),
            share(pre, m),
        ]);
    }
    let labels = [
        ("detected (PAUSE) on cohort `*`", ""),
        ("detected on any cohort", ""),
        ("detected within 6 windows of onset, any cohort", "≥ 95%"),
        ("detected within 6 windows, cohort `*`", ""),
        ("median windows to detect, any cohort (detected only)", ""),
        ("median windows to detect, cohort `*`", ""),
        ("stopped before the onset (false), any cohort", ""),
    ];
    for (i, (label, target)) in labels.iter().enumerate() {
        println!(
            "| (b) +50% errors | {label} | {} | {} | {target} |",
            cols[0][i], cols[1][i]
        );
    }
    println!();
    println!(
        "(b) windows from onset to the first stop, any cohort (onset window = 1; {span} = last window):"
    );
    println!();
    print!("| rule |");
    for k in 1..=span {
        print!(" {k} |");
    }
    println!(" never |");
    print!("|---|");
    for _ in 0..=span {
        print!("---|");
    }
    println!();
    for ((name, _), dist) in rules.iter().zip(&dists) {
        print!("| {name} |");
        for n in &dist[1..=span] {
            print!(" {n} |");
        }
        println!(" {} |", dist[0]);
    }

    // ---- run facts ----
    let mismatches: u64 = aa_out
        .iter()
        .chain(&reg_out)
        .map(|o| o.evidence_mismatch as u64)
        .sum();
    let not_accepted: u64 = aa_out.iter().chain(&reg_out).map(|o| o.not_accepted).sum();
    println!();
    println!(
        "Run: {threads} threads; (a) {aa_events} events in {aa_secs:.1} s ({:.2} M events/s); \
         (b) {reg_events} events in {reg_secs:.1} s ({:.2} M events/s); total {total_secs:.1} s.",
        aa_events as f64 / aa_secs / 1e6,
        reg_events as f64 / reg_secs / 1e6
    );
    if not_accepted > 0 {
        println!(
            "WARNING: {not_accepted} events were not accepted by the engine (late/unmatched/rejected)."
        );
    }
    if mismatches > 0 {
        println!(
            "WARNING: {mismatches} error_rate evidence records disagree with the window's generated \
             treatment counts (evidence is no longer per-window?): the static rule reads evidence."
        );
    }
}
