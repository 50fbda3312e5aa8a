//! The rules stage (SPEC §5): judges each closed window per flag and cohort, keeps
//! streaks and the rollout state, and decides PAUSE, ROLLBACK, HOLD or ADVANCE.
//!
//! State per (flag, cohort): current percent, status, a streak per guardrail and per
//! success metric, and the count of consecutive all-healthy windows. It is rebuilt
//! after a restart from the `WindowEvaluation`s the engine published ([`Rules::restore`]).

pub mod baseline;
pub mod judge;
mod reason;
pub mod srm;
pub mod stats;

use std::collections::HashMap;
use std::sync::Arc;

use crate::ids::command_id;
use crate::model::{Action, Role, Severity};
use crate::policy::{AdvanceWhen, Flag, Guardrail, MetricKind, Policy};
use crate::records::{BandState, FlagCommand, MetricEvidence, WindowEvaluation};
use crate::window::aggregate::Agg;
use crate::window::aggregate::{CELL_SAMPLE, joint_sample};
use crate::window::{CONTROL, Cell, ClosedFlag, ClosedWindow, TREATMENT};
use baseline::Baseline;
use judge::{Reference, Status};
use reason::{advance_reason, describe, fmt_pct, pct_if_pause, srm_reason};
use srm::SrmState;
use stats::Detector;

/// Where a cohort's rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CohortStatus {
    Ramping,
    Held,
    Paused,
    RolledBack,
    Complete,
}

impl CohortStatus {
    pub const ALL: [CohortStatus; 5] = [
        CohortStatus::Ramping,
        CohortStatus::Held,
        CohortStatus::Paused,
        CohortStatus::RolledBack,
        CohortStatus::Complete,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CohortStatus::Ramping => "ramping",
            CohortStatus::Held => "held",
            CohortStatus::Paused => "paused",
            CohortStatus::RolledBack => "rolled_back",
            CohortStatus::Complete => "complete",
        }
    }

    pub fn parse(s: &str) -> Option<CohortStatus> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// A paused or rolled-back cohort is not acted on again until an operator resumes it.
    fn stopped(self) -> bool {
        matches!(self, CohortStatus::Paused | CohortStatus::RolledBack)
    }
}

/// Decision state of one cohort of one flag.
#[derive(Debug, Clone, PartialEq)]
pub struct CohortState {
    pub percent: f64,
    pub status: CohortStatus,
    pub guardrail_streaks: Vec<u32>,
    pub success_streaks: Vec<u32>,
    pub healthy_windows: u32,
    /// Per metric slot, treatment and control accumulated over the current ramp band
    /// (rates and means, for the sequential tests; `None` for quantiles).
    pub band: Vec<Option<[Agg; 2]>>,
    /// Per guardrail, the change-point detector of its sequential relative test.
    pub detectors: Vec<Detector>,
    /// Per guardrail, the change-point detector of its absolute bound(s).
    pub abs_detectors: Vec<Detector>,
    /// The sample-ratio test of the band, on distinct units.
    pub srm: SrmState,
    /// Per guardrail, its rolling baseline (a guardrail with `baseline`, flags without
    /// control): kept across ramp bands.
    pub baselines: Vec<Option<Baseline>>,
}

impl CohortState {
    fn new(policy: &Policy, flag: &Flag) -> CohortState {
        CohortState {
            percent: flag.start_percent,
            status: CohortStatus::Ramping,
            guardrail_streaks: vec![0; flag.guardrails.len()],
            success_streaks: vec![0; flag.success.len()],
            healthy_windows: 0,
            band: empty_band(policy, flag),
            detectors: vec![Detector::default(); flag.guardrails.len()],
            abs_detectors: vec![Detector::default(); flag.guardrails.len()],
            srm: SrmState::default(),
            baselines: flag
                .guardrails
                .iter()
                .map(|g| g.baseline.map(Baseline::new))
                .collect(),
        }
    }

    fn accumulate(&mut self, cell: &Cell) {
        for (slot, band) in self.band.iter_mut().enumerate() {
            if let Some(band) = band {
                band[TREATMENT].merge(&cell[TREATMENT].aggs[slot]);
                band[CONTROL].merge(&cell[CONTROL].aggs[slot]);
            }
        }
    }
}

fn empty_band(policy: &Policy, flag: &Flag) -> Vec<Option<[Agg; 2]>> {
    flag.metric_ids
        .iter()
        .map(|&m| {
            let metric = &policy.metrics[m];
            match metric.kind {
                MetricKind::Quantile { .. } => None,
                _ => Some([Agg::new(metric), Agg::new(metric)]),
            }
        })
        .collect()
}

pub use srm::SRM_ALPHA;

/// The level at which guardrail `g` is judged in `cohort`, and how it was derived.
///
/// A sequential guardrail's `alpha` is its share of the flag's stop budget for the whole
/// rollout: split over the ramp bands the rollout can pass through (each band's tests
/// restart) and over the cohorts — half for `*`, half shared by the flag's other cohorts
/// (at most `max_cohorts` plus `other`). Its tests are valid at every look, so by the
/// union bound an unchanged flag is stopped by this guardrail anywhere in the rollout
/// with probability at most `alpha`, and by any guardrail at most the sum of the alphas.
/// A `per_window` guardrail is judged at its `alpha` every window, outside that guarantee.
pub fn family_alpha(policy: &Policy, flag: &Flag, g: &Guardrail, cohort: &str) -> (f64, String) {
    if !g.sequential {
        return (g.alpha, format!("per-window test at alpha {}", g.alpha));
    }
    // A guardrail with only a relative bound against control is not tested at 100% (no
    // control there). Cohort `*` spends its 100% band's share on the bands where it is
    // tested: valid by the union bound, and measured (`benches/rollouts.rs`, 1,000
    // rollouts each) the ×1.5 error regression was paused within 6 windows in 93.7%
    // instead of 90.9%, with A/A stops 10 instead of 8. The other cohorts leave that
    // share unspent: their error-rate test runs above its nominal level (a small
    // cohort's window holds a handful of errors; 5 of the 10 A/A stops), and the two
    // calibrations tried there (Student's t, an exact binomial test) cut the pauses
    // found on the small cohorts of `mobile-web` from 460 to 261–317 of 1,000
    // (docs/STATISTICS.md §4).
    let tested_at_full = cohort != "*"
        || g.max.is_some()
        || g.min.is_some()
        || g.baseline.is_some()
        || flag.control.is_none();
    let (share, family) = family_share(policy, flag, cohort, tested_at_full);
    (
        g.alpha * share,
        format!("rollout budget alpha {} split: {family}", g.alpha),
    )
}

/// The level of `cohort`'s sample-ratio test: [`SRM_ALPHA`] for the flag's whole
/// rollout, split over its cohorts and ramp bands as the stop budget is, so a flag whose
/// split is right is held for a mismatch anywhere in its rollout with probability at
/// most [`SRM_ALPHA`] (and a hold after an ADVANCE still awaiting approval is as rare).
pub fn srm_alpha(policy: &Policy, flag: &Flag, cohort: &str) -> (f64, String) {
    // At 100% there is no split to test.
    let (share, family) = family_share(policy, flag, cohort, false);
    (
        SRM_ALPHA * share,
        format!("rollout level {SRM_ALPHA} split: {family}"),
    )
}

/// A cohort's share of a flag's rollout-wide level, and how it was split: over the ramp
/// bands the rollout can pass through (each band's tests restart; the 100% band only
/// if the test runs there, `tested_at_full`), then half to `*` and half shared by the
/// other cohorts (at most `max_cohorts` plus `other`).
fn family_share(policy: &Policy, flag: &Flag, cohort: &str, tested_at_full: bool) -> (f64, String) {
    let bands = 1 + flag
        .ramp
        .iter()
        .filter(|&&p| p > flag.start_percent && (p < 100.0 || tested_at_full))
        .count();
    let cohorts = flag
        .max_cohorts
        .unwrap_or(policy.window.max_cohorts_per_flag)
        + 1;
    let share = match (flag.cohort_by.is_empty(), cohort == "*") {
        (true, _) => 1.0,
        (false, true) => 0.5,
        (false, false) => 0.5 / cohorts as f64,
    };
    let below = if !tested_at_full && flag.ramp.contains(&100.0) {
        " below 100%"
    } else {
        ""
    };
    let family = if flag.cohort_by.is_empty() {
        format!("{bands} band(s){below}")
    } else if cohort == "*" {
        format!("half to cohort *, {bands} band(s){below}")
    } else {
        format!("half over {cohorts} cohorts, {bands} band(s){below}")
    };
    (share / bands as f64, family)
}

/// The band's sample-ratio test with this window's exposed units: evidence, and whether
/// the cohort is to be held (a mismatch found and not yet cleared by a fresh test).
fn srm_judge(
    cell: &Cell,
    state: &mut CohortState,
    spread: (f64, f64),
    (alpha, split): (f64, String),
) -> Option<(MetricEvidence, bool)> {
    let share = state.percent / 100.0;
    if !(share > 0.0 && share < 1.0) {
        return None;
    }
    let (sample, tau) = joint_sample(&cell[TREATMENT].units, &cell[CONTROL].units, CELL_SAMPLE);
    let w = state
        .srm
        .observe(&sample, tau, state.percent, spread, alpha);
    let s = &state.srm;
    if w.n_t + w.n_c == 0 && !s.holding {
        return None;
    }
    let (nt, nc) = (w.n_t, w.n_c);
    let observed = if nt + nc > 0 {
        nt as f64 / (nt + nc) as f64
    } else {
        share
    };
    let expected = (w.lo + w.hi) / 2.0;
    // 95% interval of the treatment share of the counted units.
    let n = (nt + nc) as f64;
    let share_ci = (n > 0.0).then(|| {
        let half = 1.959_963_984_540_054 * (observed * (1.0 - observed) / n).sqrt();
        (observed - half, observed + half)
    });
    let null = if w.lo == w.hi {
        format!("{}% treatment", fmt_pct(state.percent))
    } else {
        format!(
            "a treatment share in [{}%, {}%] until the platform applies the ADVANCE",
            fmt_pct(w.lo * 100.0),
            fmt_pct(w.hi * 100.0)
        )
    };
    let mut method = format!(
        "sequential sample-ratio test on distinct units (predictable plug-in e-process, anytime-valid) vs {null}, alpha {alpha:.3e} ({split}); {} units sampled (1 in {:.0}), {} seen in both arms",
        nt + nc,
        1.0 / s.sampling_rate(),
        w.crossover
    );
    if w.applied {
        method.push_str("; the new split is now in effect: test restarted");
    }
    let mismatch = s.holding;
    if w.fired {
        method.push_str(
            "; mismatch found: test restarted, the hold lasts until as many units show none",
        );
    }
    let ev = MetricEvidence {
        metric: "sample_ratio".into(),
        role: Role::Srm,
        treatment_value: observed,
        control_value: Some(1.0 - observed),
        threshold: Some(expected),
        relative_change: Some((observed - expected) / expected),
        p_value: Some((-w.log_e).exp().min(1.0)),
        treatment_samples: nt as i64,
        control_samples: nc as i64,
        method,
        breached: mismatch,
        consecutive_windows: i32::from(mismatch),
        status: if mismatch { "breached" } else { "healthy" }.into(),
        ci_lower: share_ci.map(|c| c.0),
        ci_upper: share_ci.map(|c| c.1),
        alpha: Some(alpha),
        family_size: Some((SRM_ALPHA / alpha).round() as i32),
        ..MetricEvidence::empty()
    };
    Some((ev, mismatch))
}

/// Everything judged for one cohort before the state machine runs.
struct CohortJudgement {
    guardrails: Vec<(MetricEvidence, Status)>,
    success: Vec<(MetricEvidence, Status)>,
    srm: Option<(MetricEvidence, bool)>,
    /// Per guardrail with a baseline, this window's treatment aggregate, admitted to
    /// the ring once the window's decision is known ([`admit_to_baselines`]).
    baseline_in: Vec<Option<Agg>>,
}

pub struct Rules {
    policy: Arc<Policy>,
    /// Per flag (policy order), per cohort name.
    states: Vec<HashMap<String, CohortState>>,
}

impl Rules {
    pub fn new(policy: Arc<Policy>) -> Rules {
        let states = policy.flags.iter().map(|_| HashMap::new()).collect();
        Rules { policy, states }
    }

    /// Judges every flag and cohort of a closed window; one evaluation each. Per flag:
    /// judge every cohort's metrics (band evidence accumulated first), control the false
    /// discovery rate of the success tests across cohorts and metrics, then run each
    /// cohort's state machine.
    pub fn decide(&mut self, window: &ClosedWindow, now: i64) -> Vec<Judged> {
        let mut out = Vec::new();
        for (fi, closed) in window.flags.iter().enumerate() {
            out.extend(self.decide_flag(fi, closed, (window.start, window.end), now));
        }
        out
    }

    /// Judges one flag's cohorts of the window `span` (start, end): what [`Rules::decide`]
    /// does per flag, for a judge that merged the flag's partials (SPEC §11).
    pub fn decide_flag(
        &mut self,
        fi: usize,
        closed: &ClosedFlag,
        span: (i64, i64),
        now: i64,
    ) -> Vec<Judged> {
        let mut out = Vec::new();
        {
            let flag = &self.policy.flags[fi];
            let has_control = flag.control.is_some();
            let mut judged: Vec<CohortJudgement> = Vec::with_capacity(closed.cohorts.len());
            // Each cohort's own guardrail settings, where the policy overrides them.
            let flags: Vec<_> = closed
                .cohorts
                .iter()
                .map(|(cohort, _)| flag.for_cohort(cohort))
                .collect();
            // The percents the flag's cohorts are at (not rolled back): the split of any
            // cohort may be any of them while they differ (see `SrmState::observe`).
            let spread = self.states[fi]
                .values()
                .filter(|s| s.status != CohortStatus::RolledBack)
                .map(|s| s.percent)
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
                    (lo.min(p), hi.max(p))
                });
            for ((cohort, cell), fc) in closed.cohorts.iter().zip(&flags) {
                let policy = &self.policy;
                let state = self.states[fi]
                    .entry(cohort.clone())
                    .or_insert_with(|| CohortState::new(policy, flag));
                state.accumulate(cell);
                let CohortState {
                    band,
                    detectors,
                    abs_detectors,
                    baselines,
                    percent,
                    ..
                } = &mut *state;
                // At 100% a cohort has no control of its own: what control `*` still
                // holds (cohorts ramped less) is another population, so relative
                // bounds against control are judged below 100% only (`family_alpha`:
                // `*` spends the 100% band's share elsewhere, the others leave it).
                let control_here = has_control && *percent < 100.0;
                let guardrails = fc
                    .guardrails
                    .iter()
                    .zip(detectors.iter_mut().zip(abs_detectors.iter_mut()))
                    .zip(baselines.iter())
                    .map(|((g, (relative, absolute)), baseline)| {
                        let t = &cell[TREATMENT].aggs[g.slot];
                        // The reference: control, or the warm baseline pooled.
                        let pooled = baseline
                            .as_ref()
                            .filter(|b| b.warm())
                            .and_then(Baseline::pooled);
                        let (c, reference) = match (&pooled, baseline) {
                            (Some(p), Some(b)) => (p, Reference::Baseline { windows: b.windows }),
                            (_, Some(_)) => (&cell[CONTROL].aggs[g.slot], Reference::None),
                            _ if control_here => (&cell[CONTROL].aggs[g.slot], Reference::Control),
                            _ => (&cell[CONTROL].aggs[g.slot], Reference::None),
                        };
                        let (band, detectors) = match g.sequential {
                            // A baseline's evidence is the change-point detector alone:
                            // the band has no control arm to accumulate.
                            true => (
                                band[g.slot].as_ref().filter(|_| baseline.is_none()),
                                Some(judge::GuardrailDetectors { relative, absolute }),
                            ),
                            false => (None, None),
                        };
                        let (alpha, family) = family_alpha(policy, fc, g, cohort);
                        let (mut ev, mut status) =
                            judge::guardrail(policy, g, [t, c], band, detectors, reference, alpha);
                        if let Some(b) = baseline.as_ref().filter(|b| !b.warm()) {
                            baseline::warming_up(&mut ev, &mut status, b);
                        }
                        ev.method.push_str("; ");
                        ev.method.push_str(&family);
                        (ev, status)
                    })
                    .collect();
                let baseline_in = fc
                    .guardrails
                    .iter()
                    .zip(baselines.iter())
                    .map(|(g, b)| {
                        let t = &cell[TREATMENT].aggs[g.slot];
                        let seen = judge::value(t, &policy.metrics[g.metric].kind).1 > 0;
                        (b.is_some() && seen).then(|| t.clone())
                    })
                    .collect();
                let success = flag
                    .success
                    .iter()
                    .map(|sm| judge::success(policy, sm, cell, band[sm.slot].as_ref()))
                    .collect();
                let srm = srm_judge(cell, state, spread, srm_alpha(policy, flag, cohort));
                judged.push(CohortJudgement {
                    guardrails,
                    success,
                    srm,
                    baseline_in,
                });
            }
            control_fdr(flag, &mut judged);
            for (((cohort, _), j), fc) in closed.cohorts.iter().zip(judged).zip(&flags) {
                let Some(state) = self.states[fi].get_mut(cohort) else {
                    continue;
                };
                let mut result = judge_cohort(&self.policy, fc, cohort, j, state, span, now);
                result.evaluation.late_events = closed.late_events as i64;
                out.push(result);
            }
        }
        out
    }

    /// Rebuilds state from a published evaluation (restart recovery); the newest wins.
    pub fn restore(&mut self, eval: &WindowEvaluation) -> Restore {
        let Some(fi) = self
            .policy
            .flags
            .iter()
            .position(|f| f.key == eval.flag_key)
        else {
            return Restore::UnknownFlag;
        };
        let flag = &self.policy.flags[fi];
        let version = eval.policy_version.as_deref().unwrap_or_default();
        if version != flag.policy_version && version != flag.legacy_policy_version {
            // What decides changed since: the new policy starts this cohort afresh.
            return Restore::PolicyChanged {
                from: version.to_string(),
                to: flag.policy_version.clone(),
            };
        }
        let mut state = CohortState::new(&self.policy, flag);
        state.percent = eval.rollout_percent.unwrap_or(flag.start_percent);
        state.status = eval
            .state
            .as_deref()
            .and_then(CohortStatus::parse)
            .unwrap_or(CohortStatus::Ramping);
        state.healthy_windows = eval.healthy_windows.max(0) as u32;
        let streak = |name: &str, role| {
            eval.evidence
                .iter()
                .find(|e| e.metric == name && e.role == role)
                .map_or(0, |e| e.consecutive_windows.max(0) as u32)
        };
        for (i, g) in flag.guardrails.iter().enumerate() {
            state.guardrail_streaks[i] = streak(
                &self.policy.metrics[g.metric].name,
                crate::model::Role::Guardrail,
            );
        }
        // An ADVANCE restarts the success streaks at the new band; its evidence shows
        // the streaks that triggered it, so they are not restored.
        let advanced = eval.decision == Some(Action::Advance);
        for (i, s) in flag.success.iter().enumerate().filter(|_| !advanced) {
            state.success_streaks[i] = streak(
                &self.policy.metrics[s.metric].name,
                crate::model::Role::Success,
            );
        }
        for b in &eval.band {
            if b.metric == srm::BAND_NAME {
                if let Some(s) = SrmState::from_band_state(b) {
                    state.srm = s;
                }
                continue;
            }
            if let Some(i) = baseline::band_guardrail(&b.metric) {
                let ring = flag.guardrails.get(i).and_then(|g| {
                    let template = Agg::new(&self.policy.metrics[g.metric]);
                    Baseline::from_band_state(b, &template, g.baseline?)
                });
                if let Some(ring) = ring {
                    state.baselines[i] = Some(ring);
                }
                continue;
            }
            let slot = flag
                .metric_ids
                .iter()
                .position(|&m| self.policy.metrics[m].name == b.metric);
            if let Some(Some(band)) = slot.map(|s| &mut state.band[s])
                && let (Some(t), Some(c)) = (
                    band[TREATMENT].with_values(&b.treatment),
                    band[CONTROL].with_values(&b.control),
                )
            {
                *band = [t, c];
            }
            // Detector groups: [guardrail index, windows, ln S...] per guardrail.
            let group = stats::DETECTOR_DRIFTS.len() + 2;
            for chunk in b.detector.chunks_exact(group) {
                let (absolute, i) = match chunk[0] {
                    x if x >= 0.0 => (false, x as usize),
                    x => (true, (-x - 1.0) as usize),
                };
                let fits = flag
                    .guardrails
                    .get(i)
                    .is_some_and(|g| self.policy.metrics[g.metric].name == b.metric);
                if let (true, Some(d)) = (fits, Detector::from_values(&chunk[1..])) {
                    if absolute {
                        state.abs_detectors[i] = d;
                    } else {
                        state.detectors[i] = d;
                    }
                }
            }
        }
        self.states[fi].insert(eval.cohort.clone(), state);
        Restore::Restored
    }

    /// Takes over the state of `old` (judging under `old_policy`) for a new policy:
    /// a flag whose decisive `policy_version` is unchanged keeps every cohort's state
    /// as it is (lossless: streaks, bands, detectors, baselines, the SRM test); a flag
    /// whose version changed starts its cohorts afresh, each listed in the result with
    /// what it was. Flags the new policy no longer has are dropped.
    pub fn carry_over(
        &mut self,
        mut old: Rules,
        old_policy: &Policy,
        from: i64,
    ) -> Vec<crate::http::StateReset> {
        let mut resets = Vec::new();
        for (fi, flag) in self.policy.flags.iter().enumerate() {
            let Some(ofi) = old_policy.flags.iter().position(|f| f.key == flag.key) else {
                continue;
            };
            let states = std::mem::take(&mut old.states[ofi]);
            let before = &old_policy.flags[ofi];
            if before.policy_version == flag.policy_version {
                self.states[fi] = states;
                continue;
            }
            let mut cohorts: Vec<_> = states.into_iter().collect();
            cohorts.sort_by(|a, b| a.0.cmp(&b.0));
            for (cohort, state) in cohorts {
                // The rollout stays where it is (a paused cohort stays paused): only
                // the evidence gathered under the old rules is dropped.
                let mut fresh = CohortState::new(&self.policy, flag);
                fresh.percent = state.percent;
                fresh.status = state.status;
                // The split test is about the assignment, not the thresholds: it goes on
                // (an ADVANCE not yet applied, a mismatch hold) while the arms and the
                // unit are the same.
                if before.treatment == flag.treatment
                    && before.control == flag.control
                    && before.unit == flag.unit
                {
                    fresh.srm = state.srm;
                }
                self.states[fi].insert(cohort.clone(), fresh);
                resets.push(crate::http::StateReset {
                    flag_key: flag.key.clone(),
                    cohort,
                    from_version: before.policy_version.clone(),
                    to_version: flag.policy_version.clone(),
                    previous_state: Some(state.status.as_str().to_string()),
                    previous_percent: Some(state.percent),
                    window_end: from,
                    reason: "an approved policy changed what decides (variants, cohorts,                              ramp, guardrails, success metrics or their metric definitions)"
                        .into(),
                });
            }
        }
        resets
    }

    /// A flag platform reports that cohort `cohort` of flag `flag_key` is served
    /// `percent` (an applied-state record, SPEC §9). If that is the split the cohort's
    /// last ADVANCE expects, the sample-ratio test stops allowing the old one (after one
    /// window for clients to catch up) without waiting to see the move in the traffic.
    /// Returns whether it changed anything.
    pub fn applied(&mut self, flag_key: &str, cohort: &str, percent: f64) -> bool {
        let Some(fi) = self.policy.flags.iter().position(|f| f.key == flag_key) else {
            return false;
        };
        match self.states[fi].get_mut(cohort) {
            Some(state) if (state.percent - percent).abs() < 1e-9 => state.srm.confirm_applied(),
            _ => false,
        }
    }

    pub fn state(&self, flag: usize, cohort: &str) -> Option<&CohortState> {
        self.states.get(flag)?.get(cohort)
    }

    /// Every (flag index, cohort, state), for metrics and the HTTP API.
    pub fn states(&self) -> impl Iterator<Item = (usize, &str, &CohortState)> {
        self.states
            .iter()
            .enumerate()
            .flat_map(|(fi, m)| m.iter().map(move |(c, s)| (fi, c.as_str(), s)))
    }
}

fn bump(streak: &mut u32, status: Status) {
    match status {
        Status::Breached | Status::Significant => *streak += 1,
        Status::Healthy | Status::NotSignificant => *streak = 0,
        Status::Insufficient => {}
    }
}

/// The band evidence to publish with an evaluation (restored by [`Rules::restore`]):
/// per metric, its band aggregates (rates and means) and the detectors of the
/// guardrails on it, as `[guardrail index, windows, ln S...]` groups (index −(i+1) for
/// guardrail i's absolute-bound detector); then the sample-ratio test, with its sampled
/// units (the publisher leaves them out of the evaluations topic: they are state).
fn band_states(policy: &Policy, flag: &Flag, state: &CohortState) -> Vec<BandState> {
    let mut out: Vec<BandState> = flag
        .metric_ids
        .iter()
        .zip(&state.band)
        .filter_map(|(&m, band)| {
            let detector: Vec<f64> = flag
                .guardrails
                .iter()
                .zip(&state.detectors)
                .enumerate()
                .map(|(i, (g, d))| (i as f64, g, d))
                .chain(
                    flag.guardrails
                        .iter()
                        .zip(&state.abs_detectors)
                        .enumerate()
                        .map(|(i, (g, d))| (-(i as f64) - 1.0, g, d)),
                )
                .filter(|(_, g, d)| g.metric == m && d.windows > 0)
                .flat_map(|(i, _, d)| std::iter::once(i).chain(d.values()))
                .collect();
            let (treatment, control) = match band {
                Some(b) => (b[TREATMENT].values()?, b[CONTROL].values()?),
                None if !detector.is_empty() => (Vec::new(), Vec::new()),
                None => return None,
            };
            Some(BandState {
                metric: policy.metrics[m].name.clone(),
                treatment,
                control,
                detector,
            })
        })
        .collect();
    if state.srm != SrmState::default() {
        out.push(state.srm.band_state(true));
    }
    out.extend(
        state
            .baselines
            .iter()
            .enumerate()
            .filter_map(|(i, b)| b.as_ref()?.band_state(i)),
    );
    out
}

/// Offers this window's treatment aggregates to the guardrails' baselines (admitted one
/// window late, see `baseline`): a window is clean unless the guardrail's streak is
/// above 0 (breached now, or a breach episode not yet healed) or the cohort is paused
/// or rolled back; a window that is not clean drops itself and the pending one, so a
/// regression does not become its own baseline (SPEC §4 "Policy depth").
fn admit_to_baselines(state: &mut CohortState, incoming: Vec<Option<Agg>>) {
    let stopped = state.status.stopped();
    for ((b, agg), streak) in state
        .baselines
        .iter_mut()
        .zip(incoming)
        .zip(&state.guardrail_streaks)
    {
        if let Some(b) = b {
            b.observe(!stopped && *streak == 0, agg);
        }
    }
}

/// Benjamini–Hochberg over every tested success p-value of a flag in this window (all
/// cohorts × success metrics, one family at the smallest success alpha): a success
/// metric counts as significant only if rejected there. Guardrails are not corrected:
/// a missed regression costs customers, a false alarm costs a look (see README).
fn control_fdr(flag: &Flag, judged: &mut [CohortJudgement]) {
    let q = flag
        .success
        .iter()
        .map(|s| s.alpha)
        .fold(f64::INFINITY, f64::min);
    let tested: Vec<(usize, usize, f64)> = judged
        .iter()
        .enumerate()
        .flat_map(|(c, j)| {
            j.success
                .iter()
                .enumerate()
                .filter_map(move |(i, (ev, status))| match (status, ev.p_value) {
                    (Status::NotSignificant, Some(p)) => Some((c, i, p)),
                    _ => None,
                })
        })
        .collect();
    let p: Vec<f64> = tested.iter().map(|t| t.2).collect();
    for ((c, i, _), rejected) in tested.iter().zip(stats::benjamini_hochberg(&p, q)) {
        if rejected {
            let (ev, status) = &mut judged[*c].success[*i];
            *status = Status::Significant;
            ev.status = Status::Significant.as_str().into();
        }
    }
}

/// What a window's judgements mean for one cohort once the streaks are updated.
struct Signals {
    /// Guardrails, then success metrics, then the SRM check, in policy order.
    evidence: Vec<MetricEvidence>,
    all_healthy: bool,
    /// The first critical / warning guardrail at its streak.
    critical: Option<usize>,
    warning: Option<usize>,
    success_ready: bool,
    srm_mismatch: bool,
}

/// A decision: action, target percent, severity, the sentence a person reads.
type Decision = (Action, f64, Severity, String);

/// Updates the streaks and the healthy count, ends a HOLD episode that is over, and
/// sums up what the window says.
fn update_streaks(flag: &Flag, judged: CohortJudgement, state: &mut CohortState) -> Signals {
    let mut evidence: Vec<MetricEvidence> = Vec::new();
    let (mut all_healthy, mut critical, mut warning) = (true, None, None);
    for (i, (g, (mut ev, status))) in flag.guardrails.iter().zip(judged.guardrails).enumerate() {
        bump(&mut state.guardrail_streaks[i], status);
        let streak = state.guardrail_streaks[i];
        ev.consecutive_windows = streak as i32;
        all_healthy &= status == Status::Healthy;
        if streak >= g.windows {
            match g.severity {
                Severity::Critical if critical.is_none() => critical = Some(i),
                Severity::Warning if warning.is_none() => warning = Some(i),
                _ => {}
            }
        }
        evidence.push(ev);
    }
    let mut success_ready = true;
    for (i, (s, (mut ev, status))) in flag.success.iter().zip(judged.success).enumerate() {
        bump(&mut state.success_streaks[i], status);
        ev.consecutive_windows = state.success_streaks[i] as i32;
        success_ready &= state.success_streaks[i] >= s.windows;
        evidence.push(ev);
    }
    let srm_mismatch = judged.srm.as_ref().is_some_and(|(_, m)| *m);
    evidence.extend(judged.srm.map(|(ev, _)| ev));
    state.healthy_windows = if all_healthy {
        state.healthy_windows + 1
    } else {
        0
    };
    if state.status == CohortStatus::Held && warning.is_none() && !srm_mismatch {
        // The episode is over once no warning guardrail has a streak and the split is right.
        let any_warning_breach = flag
            .guardrails
            .iter()
            .zip(&state.guardrail_streaks)
            .any(|(g, s)| g.severity == Severity::Warning && *s > 0);
        if !any_warning_breach {
            state.status = CohortStatus::Ramping;
        }
    }
    Signals {
        evidence,
        all_healthy,
        critical,
        warning,
        success_ready,
        srm_mismatch,
    }
}

/// SPEC §5 in order: critical → PAUSE/ROLLBACK (once), warning → HOLD (once per
/// episode), sample ratio mismatch → HOLD, else ADVANCE when ready. Moves the state.
fn choose_action(
    policy: &Policy,
    flag: &Flag,
    sig: &Signals,
    state: &mut CohortState,
) -> Option<Decision> {
    let from = state.percent;
    if let Some(i) = sig.critical.filter(|_| !state.status.stopped()) {
        let g = &flag.guardrails[i];
        let rollback = g.action == Action::Rollback;
        state.status = if rollback {
            CohortStatus::RolledBack
        } else {
            CohortStatus::Paused
        };
        let verb = if rollback {
            "rolled back to 0%"
        } else {
            "paused at"
        };
        let reason = format!(
            "{}; {} {}",
            describe(&sig.evidence[i], g.windows),
            verb,
            pct_if_pause(g.action, from)
        );
        return Some((
            g.action,
            if rollback { 0.0 } else { from },
            Severity::Critical,
            reason,
        ));
    }
    if state.status != CohortStatus::Ramping {
        return None;
    }
    if let Some(i) = sig.warning {
        state.status = CohortStatus::Held;
        let reason = format!(
            "{}; holding at {}% until it recovers",
            describe(&sig.evidence[i], flag.guardrails[i].windows),
            fmt_pct(from)
        );
        return Some((Action::Hold, from, Severity::Warning, reason));
    }
    if sig.srm_mismatch {
        state.status = CohortStatus::Held;
        let e = sig.evidence.last().filter(|e| e.role == Role::Srm);
        return Some((Action::Hold, from, Severity::Warning, srm_reason(e, from)));
    }
    if !sig.all_healthy {
        return None;
    }
    let ready = match flag.advance_when {
        AdvanceWhen::Significant => sig.success_ready && !flag.success.is_empty(),
        AdvanceWhen::Healthy => {
            let need = flag.guardrails.iter().map(|g| g.windows).max().unwrap_or(1);
            state.healthy_windows >= need
        }
    };
    let next = *flag.ramp.iter().find(|&&p| p > from).filter(|_| ready)?;
    let reason = advance_reason(flag, &sig.evidence, state.healthy_windows, from, next);
    state.percent = next;
    state.healthy_windows = 0;
    state.success_streaks.iter_mut().for_each(|s| *s = 0);
    // Evidence accumulates per band: the new band starts from nothing.
    state.band = empty_band(policy, flag);
    state
        .detectors
        .iter_mut()
        .chain(state.abs_detectors.iter_mut())
        .for_each(|d| *d = Detector::default());
    state.srm.advance(from);
    if next >= 100.0 || flag.ramp.last() == Some(&next) {
        state.status = CohortStatus::Complete;
    }
    Some((Action::Advance, next, Severity::Info, reason))
}

/// Judges one cohort: updates streaks, applies SPEC §5 in order, builds the evaluation.
fn judge_cohort(
    policy: &Policy,
    flag: &Flag,
    cohort: &str,
    mut judged: CohortJudgement,
    state: &mut CohortState,
    (start, end): (i64, i64),
    now: i64,
) -> Judged {
    let from = state.percent;
    let baseline_in = std::mem::take(&mut judged.baseline_in);
    let mut sig = update_streaks(flag, judged, state);
    // Distinct exposed units per arm over the band, estimated from the unit sample.
    let rate = state.srm.sampling_rate();
    let units = |n: u64| (n > 0).then(|| (n as f64 / rate).round() as i64);
    let (tu, cu) = (units(state.srm.n_t), units(state.srm.n_c));
    for ev in &mut sig.evidence {
        ev.treatment_units = tu;
        ev.control_units = cu;
    }
    let decision = choose_action(policy, flag, &sig, state);
    admit_to_baselines(state, baseline_in);
    let evidence = sig.evidence;
    let cmd = decision.map(|(action, to, severity, reason)| FlagCommand {
        command_id: command_id(
            &flag.key,
            cohort,
            action.as_str(),
            start,
            &flag.policy_version,
        ),
        flag_key: flag.key.clone(),
        cohort: cohort.to_string(),
        action,
        severity,
        from_percent: from,
        to_percent: to,
        requires_approval: action == Action::Advance && flag.manual_approval,
        reason,
        owner: flag.owner.clone(),
        window_start: start,
        window_end: end,
        issued_at: now,
        policy_version: flag.policy_version.clone(),
        evidence: evidence.clone(),
        watermark_lag_ms: None,
    });
    let evaluation = WindowEvaluation {
        flag_key: flag.key.clone(),
        cohort: cohort.to_string(),
        window_start: start,
        window_end: end,
        decision: cmd.as_ref().map(|c| c.action),
        evidence,
        late_events: 0,
        evaluated_at: now,
        rollout_percent: Some(state.percent),
        state: Some(state.status.as_str().to_string()),
        healthy_windows: state.healthy_windows as i32,
        policy_version: Some(flag.policy_version.clone()),
        command_id: cmd.as_ref().map(|c| c.command_id.clone()),
        band: band_states(policy, flag, state),
        input_positions: Vec::new(),
        watermark_lag_ms: None,
    };
    Judged {
        evaluation,
        command: cmd,
    }
}

/// A window evaluation with the command it produced, if any.
/// What [`Rules::restore`] did with a published evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restore {
    Restored,
    /// The flag is no longer in the policy.
    UnknownFlag,
    /// The flag's decisive policy changed (thresholds, ramp, metrics...): its state
    /// starts afresh under version `to`.
    PolicyChanged {
        from: String,
        to: String,
    },
}

#[derive(Debug, Clone)]
pub struct Judged {
    pub evaluation: WindowEvaluation,
    pub command: Option<FlagCommand>,
}

#[cfg(test)]
mod baseline_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod unit_vectors;
#[cfg(test)]
mod validity;
