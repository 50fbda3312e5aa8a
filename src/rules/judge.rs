//! Judging one metric of one cohort in one window: value per arm, bound, test, status.
//! Pure functions of the aggregates and the policy; streaks live in `rules::state`.

use crate::model::Role;
use crate::policy::{Direction, Guardrail, MetricKind, Policy, SuccessMetric};
use crate::records::MetricEvidence;
use crate::rules::stats::{self, Detector, Tail, TestResult};
use crate::window::aggregate::{Agg, HIST_SCALE, quantile};
use crate::window::{CONTROL, Cell, TREATMENT};

/// Outcome of judging a metric in a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Breached,
    Healthy,
    Insufficient,
    Significant,
    NotSignificant,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Breached => "breached",
            Status::Healthy => "healthy",
            Status::Insufficient => "insufficient",
            Status::Significant => "significant",
            Status::NotSignificant => "not_significant",
        }
    }
}

/// Point value and sample count of one arm's aggregate.
pub fn value(agg: &Agg, kind: &MetricKind) -> (f64, u64) {
    match (agg, kind) {
        (Agg::Rate { num, den }, _) => {
            let v = if *den > 0 {
                *num as f64 / *den as f64
            } else {
                0.0
            };
            (v, *den)
        }
        (Agg::Mean { n, sum, .. }, _) => (if *n > 0 { sum / *n as f64 } else { 0.0 }, *n),
        (Agg::Quantile { hist: Some(h) }, MetricKind::Quantile { quantile: q, .. }) => {
            (quantile(h, *q), h.len())
        }
        (Agg::Quantile { .. }, _) => (0.0, 0),
    }
}

/// The one-sided test of H1: treatment `tail` control × (1 + margin), chosen by metric type.
fn test(t: &Agg, c: &Agg, margin: f64, tail: Tail) -> Option<(TestResult, &'static str)> {
    match (t, c) {
        (Agg::Rate { num: xt, den: nt }, Agg::Rate { num: xc, den: nc }) => {
            // A rate whose numerator comes from another source can exceed 1; the
            // proportion test needs x <= n, so it is capped (documented in the README).
            let r = stats::two_proportion((*xt).min(*nt), *nt, (*xc).min(*nc), *nc, margin, tail)?;
            Some((r, "two-proportion z-test"))
        }
        (
            Agg::Mean {
                n: nt,
                sum: st,
                sumsq: qt,
            },
            Agg::Mean {
                n: nc,
                sum: sc,
                sumsq: qc,
            },
        ) => {
            let r = stats::welch_t(*nt, *st, *qt, *nc, *sc, *qc, margin, tail)?;
            Some((r, "Welch t-test"))
        }
        (Agg::Quantile { hist: Some(ht) }, Agg::Quantile { hist: Some(hc) }) => {
            // Mann-Whitney on the two histograms, control values scaled by (1 + margin):
            // a test of "treatment is stochastically larger than control shifted by the margin".
            let scale = 1.0 + margin;
            let mut bins: Vec<(f64, u64, u64)> = Vec::new();
            for v in ht.iter_recorded() {
                bins.push((
                    v.value_iterated_to() as f64 / HIST_SCALE,
                    v.count_at_value() as u64,
                    0,
                ));
            }
            for v in hc.iter_recorded() {
                bins.push((
                    v.value_iterated_to() as f64 / HIST_SCALE * scale,
                    0,
                    v.count_at_value() as u64,
                ));
            }
            bins.sort_by(|a, b| a.0.total_cmp(&b.0));
            let mut merged: Vec<(f64, u64, u64)> = Vec::with_capacity(bins.len());
            for b in bins {
                match merged.last_mut() {
                    Some(last) if last.0 == b.0 => {
                        last.1 += b.1;
                        last.2 += b.2;
                    }
                    _ => merged.push(b),
                }
            }
            let r = stats::mann_whitney_binned(&merged, tail)?;
            Some((r, "Mann-Whitney U (tie-corrected, HDR buckets)"))
        }
        _ => None,
    }
}

/// The mixing scale of the sequential test, relative to the null boundary R·control:
/// the normal mixture puts most power near effects of 25% of the baseline.
pub const TAU_RELATIVE: f64 = 0.25;

/// Sequential test on the aggregates accumulated over the ramp band (rates and means):
/// the effect δ = treatment − R·control (R = 1 + margin) with its plug-in variance, and
/// the one-sided mixture-SPRT p-value against H0: δ ≤ 0 (`Greater`) or δ ≥ 0 (`Less`).
/// 1/Λ is a valid p-value at any data-dependent look (Ville's inequality), so judging
/// every window does not inflate the error rate. `None` for quantiles or no variance.
pub fn sequential(t: &Agg, c: &Agg, margin: f64, tail: Tail) -> Option<(f64, String)> {
    let (log_e, tau) = band_log_e(t, c, margin, tail)?;
    let p = log_e.map_or(1.0, |l| (-l).exp().min(1.0));
    Some((
        p,
        format!(
            "mSPRT always-valid p (normal mixture, tau {tau:.3e}) on the band's cumulative effect"
        ),
    ))
}

/// ln Λ₁ of the band's one-sided mSPRT (`None` inside: the estimate is on the null
/// side, Λ₁ < 1) and the mixing scale τ; `None` for quantiles or no variance.
fn band_log_e(t: &Agg, c: &Agg, margin: f64, tail: Tail) -> Option<(Option<f64>, f64)> {
    let r = 1.0 + margin;
    let (delta, variance, baseline) = match (t, c) {
        (Agg::Rate { num: xt, den: nt }, Agg::Rate { num: xc, den: nc }) if *nt > 0 && *nc > 0 => {
            let pt = (*xt).min(*nt) as f64 / *nt as f64;
            let pc = (*xc).min(*nc) as f64 / *nc as f64;
            (
                pt - r * pc,
                pt * (1.0 - pt) / *nt as f64 + r * r * pc * (1.0 - pc) / *nc as f64,
                r * pc,
            )
        }
        (
            Agg::Mean {
                n: nt,
                sum: st,
                sumsq: qt,
            },
            Agg::Mean {
                n: nc,
                sum: sc,
                sumsq: qc,
            },
        ) if *nt > 1 && *nc > 1 => {
            let var = stats::sample_variance;
            let (mt, mc) = (st / *nt as f64, sc / *nc as f64);
            let v = var(*nt, *st, *qt) / *nt as f64 + r * r * var(*nc, *sc, *qc) / *nc as f64;
            (mt - r * mc, v, (r * mc).abs())
        }
        _ => return None,
    };
    if variance.is_nan() || variance <= 0.0 {
        return None;
    }
    // Without a baseline (control at 0), fall back to the scale of the noise.
    let tau = if baseline > 0.0 {
        TAU_RELATIVE * baseline
    } else {
        variance.sqrt()
    };
    Some((
        stats::msprt_log_e_one_sided(delta, 0.0, variance, tau * tau, tail),
        tau,
    ))
}

/// The change-point detector's share of a guardrail's e-value where the metric also has
/// a band mSPRT. Tuned with `benches/decision_quality.rs`: 1/3 kept A/A false pauses at
/// 0.7% (1/2: 1.2%) with the same 98% detection of a mid-band regression.
pub const DETECTOR_WEIGHT: f64 = 1.0 / 3.0;

/// A guardrail's sequential test: the e-value E = ⅔·Λ₁ + ⅓·M, Λ₁ the band's mSPRT
/// (strong when the regression spans the band) and M the change-point detector (strong
/// when it starts mid-band); E = M for quantiles, which have no band aggregate. Both are
/// nonnegative supermartingales starting at 1, so a weighted average is too and
/// p = min(1, 1/E) stays valid at every look. The detector must be updated with this window first.
fn guardrail_sequential(
    band: Option<&[Agg; 2]>,
    detector: &Detector,
    margin: f64,
    tail: Tail,
) -> (f64, String) {
    let log_m = detector.log_e();
    let drifts = stats::DETECTOR_DRIFTS
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("/");
    let detector_name = format!(
        "change-point e-detector over {} window(s) (drifts {drifts} sd)",
        detector.windows
    );
    let band = band.and_then(|b| band_log_e(&b[TREATMENT], &b[CONTROL], margin, tail));
    let (log_e, name) = match band {
        Some((log_l, tau)) => {
            let (w_band, w_detector) = (1.0 - DETECTOR_WEIGHT, DETECTOR_WEIGHT);
            let log_e = match log_l {
                Some(l) => stats::log_add_exp(w_band.ln() + l, w_detector.ln() + log_m),
                None => w_detector.ln() + log_m,
            };
            let name = format!(
                "always-valid p = 1/E, E = 2/3 the band's mSPRT (tau {tau:.3e}) + 1/3 a {detector_name}"
            );
            (log_e, name)
        }
        None => (log_m, format!("always-valid p = 1/E of a {detector_name}")),
    };
    ((-log_e).exp().min(1.0), name)
}

fn relative_change(t: f64, c: Option<f64>) -> Option<f64> {
    c.filter(|c| *c != 0.0).map(|c| (t - c) / c)
}

/// Judges a guardrail: absolute bound on treatment, and a one-sided relative test.
/// `detector` is `Some` for a sequential guardrail (updated here with this window), with
/// `band` the treatment and control aggregates accumulated over the current ramp band
/// (rates and means); `None` judges this window alone.
pub fn guardrail(
    policy: &Policy,
    g: &Guardrail,
    cell: &Cell,
    band: Option<&[Agg; 2]>,
    detector: Option<&mut Detector>,
    has_control: bool,
) -> (MetricEvidence, Status) {
    let metric = &policy.metrics[g.metric];
    let (t, c) = (&cell[TREATMENT].aggs[g.slot], &cell[CONTROL].aggs[g.slot]);
    let (tv, tn) = value(t, &metric.kind);
    let (cv, cn) = value(c, &metric.kind);
    let control_value = has_control.then_some(cv);
    let relative = g
        .max_relative_increase
        .map(|m| (m, Tail::Greater))
        .or(g.max_relative_decrease.map(|m| (-m, Tail::Less)));
    let mut methods = Vec::new();
    let mut breached = false;
    let mut threshold: Option<f64> = None;
    let mut p_value = None;
    let tighter = |cur: Option<f64>, new: f64, upper: bool| match cur {
        Some(x) if upper => Some(x.min(new)),
        Some(x) => Some(x.max(new)),
        None => Some(new),
    };
    if let Some(max) = g.max {
        methods.push(format!("absolute max {max}"));
        breached |= tv > max;
        threshold = tighter(threshold, max, true);
    }
    if let Some(min) = g.min {
        methods.push(format!("absolute min {min}"));
        breached |= tv < min;
        threshold = tighter(threshold, min, false);
    }
    let mut insufficient = tn < g.min_samples;
    if let (Some((margin, tail)), true) = (relative, has_control) {
        insufficient |= cn < g.min_samples;
        threshold = tighter(threshold, cv * (1.0 + margin), tail == Tail::Greater);
        let window = test(t, c, margin, tail);
        let result = match detector {
            // Sequential: this window's own p-value feeds the detector (unless the
            // window is insufficient), then the band and the detector are judged.
            Some(d) => {
                if let (false, Some((r, _))) = (insufficient, &window) {
                    d.update(r.p_value);
                }
                Some(guardrail_sequential(band, d, margin, tail))
            }
            None => window.map(|(r, name)| (r.p_value, name.to_string())),
        };
        match result {
            Some((p, name)) => {
                methods.push(format!(
                    "{name}, one-sided, margin {margin:+}, alpha {}",
                    g.alpha
                ));
                p_value = Some(p);
                breached |= p < g.alpha;
            }
            None => methods.push("relative test undefined (no variance or no data)".into()),
        }
    }
    let status = if insufficient {
        Status::Insufficient
    } else if breached {
        Status::Breached
    } else {
        Status::Healthy
    };
    let ev = MetricEvidence {
        metric: metric.name.clone(),
        role: Role::Guardrail,
        treatment_value: tv,
        control_value,
        threshold,
        relative_change: relative_change(tv, control_value),
        p_value,
        treatment_samples: tn as i64,
        control_samples: cn as i64,
        method: methods.join("; "),
        breached: status == Status::Breached,
        consecutive_windows: 0,
        status: status.as_str().into(),
    };
    (ev, status)
}

/// Sequential on the band's aggregates where possible, else this window's fixed test.
fn relative_test(
    t: &Agg,
    c: &Agg,
    band: Option<&[Agg; 2]>,
    margin: f64,
    tail: Tail,
) -> Option<(f64, String)> {
    if let Some(r) = band.and_then(|b| sequential(&b[TREATMENT], &b[CONTROL], margin, tail)) {
        return Some(r);
    }
    test(t, c, margin, tail).map(|(r, name)| (r.p_value, name.to_string()))
}

/// Judges a success metric: one-sided test of improvement beyond the margin. The status
/// is `Insufficient` or `NotSignificant`; the caller marks `Significant` after the
/// false-discovery-rate step across the flag's cohorts and success metrics.
pub fn success(
    policy: &Policy,
    s: &SuccessMetric,
    cell: &Cell,
    band: Option<&[Agg; 2]>,
) -> (MetricEvidence, Status) {
    let metric = &policy.metrics[s.metric];
    let (t, c) = (&cell[TREATMENT].aggs[s.slot], &cell[CONTROL].aggs[s.slot]);
    let (tv, tn) = value(t, &metric.kind);
    let (cv, cn) = value(c, &metric.kind);
    let (margin, tail) = match s.direction {
        Direction::Increase => (s.margin, Tail::Greater),
        Direction::Decrease => (-s.margin, Tail::Less),
    };
    let mut p_value = None;
    let mut method = String::from("no test (insufficient samples)");
    let status = if tn < s.min_samples || cn < s.min_samples {
        Status::Insufficient
    } else {
        match relative_test(t, c, band, margin, tail) {
            Some((p, name)) => {
                method = format!(
                    "{name}, one-sided, margin {margin:+}, Benjamini-Hochberg at q {}",
                    s.alpha
                );
                p_value = Some(p);
                Status::NotSignificant
            }
            None => {
                method = "test undefined (no variance)".into();
                Status::NotSignificant
            }
        }
    };
    let ev = MetricEvidence {
        metric: metric.name.clone(),
        role: Role::Success,
        treatment_value: tv,
        control_value: Some(cv),
        threshold: Some(cv * (1.0 + margin)),
        relative_change: relative_change(tv, Some(cv)),
        p_value,
        treatment_samples: tn as i64,
        control_samples: cn as i64,
        method,
        breached: false,
        consecutive_windows: 0,
        status: status.as_str().into(),
    };
    (ev, status)
}

/// Sample ratio mismatch: the cell's treatment vs control exposures against the split
/// the current percent implies (chi-square, 1 df). `None` below `min_exposures` or when
/// the percent implies no control (0% or 100%). The bool is "mismatch" (p < `alpha`).
pub fn srm(
    cell: &Cell,
    percent: f64,
    min_exposures: u64,
    alpha: f64,
) -> Option<(MetricEvidence, bool)> {
    let (nt, nc) = (cell[TREATMENT].exposures, cell[CONTROL].exposures);
    let share = percent / 100.0;
    if nt + nc < min_exposures || !(share > 0.0 && share < 1.0) {
        return None;
    }
    let r = stats::srm_chi_square(nt, nc, share)?;
    let observed = nt as f64 / (nt + nc) as f64;
    let mismatch = r.p_value < alpha;
    let status = if mismatch { "breached" } else { "healthy" };
    let ev = MetricEvidence {
        metric: "sample_ratio".into(),
        role: Role::Srm,
        treatment_value: observed,
        control_value: Some(1.0 - observed),
        threshold: Some(share),
        relative_change: Some((observed - share) / share),
        p_value: Some(r.p_value),
        treatment_samples: nt as i64,
        control_samples: nc as i64,
        method: format!("chi-square goodness of fit vs {percent}% treatment, alpha {alpha}"),
        breached: mismatch,
        consecutive_windows: i32::from(mismatch),
        status: status.into(),
    };
    Some((ev, mismatch))
}
