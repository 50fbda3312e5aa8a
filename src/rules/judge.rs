//! Judging one metric of one cohort in one window: value per arm, bound, test, status.
//! Pure functions of the aggregates and the policy; streaks live in `rules::state`.

use crate::model::Role;
use crate::policy::{Direction, Guardrail, MetricKind, Policy, SuccessMetric};
use crate::records::MetricEvidence;
use crate::rules::stats::{self, ChangePrior, Detector, Tail, TestResult};
use crate::window::aggregate::{Agg, quantile};
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
        (Agg::Rate { num, den, .. }, _) => {
            let v = if *den > 0 {
                *num as f64 / *den as f64
            } else {
                0.0
            };
            (v, *den)
        }
        (Agg::Mean { n, sum, .. }, _) => (if *n > 0 { sum / *n as f64 } else { 0.0 }, *n),
        (Agg::Quantile { hist: Some(h), .. }, MetricKind::Quantile { quantile: q, .. }) => {
            (quantile(h, *q), h.len())
        }
        (Agg::Quantile { .. }, _) => (0.0, 0),
    }
}

/// The one-sided test of H1: treatment `tail` control × (1 + margin), chosen by metric
/// type; every variance is over units (unit buckets), not events.
fn test(
    t: &Agg,
    c: &Agg,
    kind: &MetricKind,
    margin: f64,
    tail: Tail,
) -> Option<(TestResult, &'static str)> {
    match (t, c, kind) {
        (Agg::Quantile { .. }, Agg::Quantile { .. }, MetricKind::Quantile { quantile: q, .. }) => {
            let (et, ec) = (t.quantile_estimate(*q)?, c.quantile_estimate(*q)?);
            let r = stats::quantile_test((et.value, et.se), (ec.value, ec.se), margin, tail)?;
            Some((
                r,
                "quantile z-test (Woodruff interval, variance clustered by unit)",
            ))
        }
        _ => {
            let (r, _, _) = stats::ratio_test_null(t.ratio()?, c.ratio()?, margin, tail)?;
            Some((
                r,
                "delta-method z-test on unit sums (variance under the null)",
            ))
        }
    }
}

/// The per-unit ratio estimate of a rate or mean aggregate.
pub fn ratio(a: &Agg) -> Option<stats::RatioEstimate> {
    let (x, y) = a.ratio()?;
    stats::ratio_estimate(x, y)
}

/// One-sided test of treatment against an absolute bound (H1: value `tail` bound).
fn bound(t: &Agg, kind: &MetricKind, bound: f64, tail: Tail) -> Option<TestResult> {
    match (t, kind) {
        (Agg::Quantile { .. }, MetricKind::Quantile { quantile: q, .. }) => {
            let e = t.quantile_estimate(*q)?;
            stats::bound_test(e.value, e.se, bound, tail)
        }
        _ => {
            let e = ratio(t)?;
            stats::bound_test(e.ratio, e.variance.sqrt(), bound, tail)
        }
    }
}

/// The mixing scale of the sequential test, relative to the null boundary R·control:
/// the normal mixture puts most power near effects of 25% of the baseline.
pub const TAU_RELATIVE: f64 = 0.25;

/// Sequential test on the aggregates accumulated over the ramp band (rates and means):
/// the effect δ = treatment − R·control (R = 1 + margin) with its per-unit variance, and
/// the one-sided mixture-SPRT p-value against H0: δ ≤ 0 (`Greater`) or δ ≥ 0 (`Less`).
/// 1/Λ is a valid p-value at any data-dependent look (Ville's inequality), so judging
/// every window does not inflate the error rate. `None` for quantiles or no variance.
pub fn sequential(t: &Agg, c: &Agg, margin: f64, tail: Tail) -> Option<(f64, String)> {
    let (log_e, tau) = band_log_e(t, c, margin, tail)?;
    let p = log_e.map_or(1.0, |l| (-l).exp().min(1.0));
    Some((
        p,
        format!(
            "mSPRT always-valid p (normal mixture, tau {tau:.3e}) on the band's cumulative effect, per-unit variance"
        ),
    ))
}

/// ln Λ₁ of the band's one-sided mSPRT (`None` inside: the estimate is on the null
/// side, Λ₁ < 1) and the mixing scale τ; `None` for quantiles or no variance.
fn band_log_e(t: &Agg, c: &Agg, margin: f64, tail: Tail) -> Option<(Option<f64>, f64)> {
    let (_, delta, variance) = stats::ratio_test_null(t.ratio()?, c.ratio()?, margin, tail)?;
    let baseline = (1.0 + margin) * ratio(c)?.ratio.abs();
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

/// The change-point detector's share of a sequential bound's e-value where the metric
/// also has a band mSPRT. With the stop budget split over the family, validity does not
/// depend on the weight; it trades a regression that starts mid-band (the detector's
/// strength) against a small one that spans the band (the mSPRT's). On
/// `benches/rollouts.rs` (1,000 rollouts each), with the detector scoring innovations
/// and its prior [`ChangePrior::BESIDE_BAND`]: a ×1.5 error regression from window 4
/// paused within 6 windows in 92.0% at 0.9 (91.3% at 3/4), ×3 in mobile-web's small
/// cohorts 72.3% (70.4%), ×1.5 from the band's first window 94.8% (95.3%). (Earlier, with
/// each window's own test scored: 3/4 against 1/2 gave 90.9% against 87.4% on the first
/// row; `TAU_RELATIVE` 0.5 gave the same as 0.25; drifts {1, 2} pause a severe
/// regression a window later.) docs/STATISTICS.md §4.
pub const DETECTOR_WEIGHT: f64 = 0.9;

/// One bound's sequential e-value in log: (1−w)·Λ₁ + w·M, w = [`DETECTOR_WEIGHT`], Λ₁ the band's mSPRT (strong when
/// the regression spans the band) and M the change-point detector (strong when it starts
/// mid-band); M alone for quantiles, which have no band aggregate. Both are nonnegative
/// supermartingales starting at 1, so a weighted average is too. The detector must be
/// updated with this window first, under `prior`.
fn bound_log_e(
    band: Option<(Option<f64>, f64)>,
    detector: &Detector,
    weights: &[f64; stats::DETECTOR_DRIFTS.len()],
    prior: ChangePrior,
    innovations: bool,
) -> (f64, String) {
    let log_m = detector.log_e_weighted(weights, prior);
    let join = |v: &[f64]| {
        v.iter()
            .map(|d| format!("{d:.2}"))
            .collect::<Vec<_>>()
            .join("/")
    };
    let scores = if innovations {
        ", scoring after the band's first window each window's innovation given the band's earlier windows"
    } else {
        ""
    };
    let detector_name = format!(
        "change-point e-detector over {} window(s) (drifts {} sd, weights {}; change point k weighted (a+1)/((k+a)(k+a+1)), a = {}){scores}",
        detector.windows,
        join(&stats::DETECTOR_DRIFTS),
        join(weights),
        prior.offset()
    );
    match band {
        Some((log_l, tau)) => {
            let (w_band, w_detector) = (1.0 - DETECTOR_WEIGHT, DETECTOR_WEIGHT);
            let log_e = match log_l {
                Some(l) => stats::log_add_exp(w_band.ln() + l, w_detector.ln() + log_m),
                None => w_detector.ln() + log_m,
            };
            (
                log_e,
                format!(
                    "{w_band:.3} the band's mSPRT (tau {tau:.3e}) + {w_detector:.3} a {detector_name}"
                ),
            )
        }
        None => (log_m, format!("a {detector_name}")),
    }
}

/// One arm's bucket totals over the band's windows before this one.
struct Earlier {
    x: Vec<f64>,
    y: Vec<f64>,
}

impl Earlier {
    fn slices(&self) -> (&[f64], &[f64]) {
        (&self.x, &self.y)
    }
}

/// The band's earlier windows of one arm: the band (which already holds this window)
/// less this window, bucket by bucket. `None` in the band's first window (no earlier
/// denominator) or without unit buckets.
fn earlier(band: &Agg, now: &Agg) -> Option<Earlier> {
    let ((bx, by), (nx, ny)) = (band.ratio()?, now.ratio()?);
    let minus =
        |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(a, b)| a - b).collect() };
    let e = Earlier {
        x: minus(bx, nx),
        // Counts: exact in f64, never below 0.
        y: minus(by, ny).into_iter().map(|v| v.max(0.0)).collect(),
    };
    (e.y.iter().sum::<f64>() > 0.0).then_some(e)
}

fn relative_change(t: f64, c: Option<f64>) -> Option<f64> {
    c.filter(|c| *c != 0.0).map(|c| (t - c) / c)
}

/// What a guardrail's relative bound is tested against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reference {
    /// Nothing (no control, or a baseline still warming up): absolute bounds only.
    None,
    /// The flag's control variant in the same window.
    Control,
    /// The cohort's previous `windows` admitted windows, pooled (`rules::baseline`).
    Baseline { windows: u32 },
}

/// A guardrail's detectors: one for the relative bound, one for the absolute bound(s).
#[derive(Debug)]
pub struct GuardrailDetectors<'a> {
    pub relative: &'a mut Detector,
    pub absolute: &'a mut Detector,
}

/// Judges a guardrail at level `alpha` (the family's share for this guardrail and
/// cohort) on `arms` = [treatment, reference] aggregates of its metric. Every bound is
/// a one-sided test over units: the relative bound against the `reference` (control,
/// or a flag without control's rolling baseline), the absolute `max`/`min` against the treatment's own uncertainty (a small
/// cohort's point estimate past `max` is often noise). `detectors` is `Some` for a
/// sequential guardrail (updated here with this window): its p-value is 1/E, E the mean
/// of the bounds' e-values, valid at every look; `band` holds the treatment and control
/// aggregates accumulated over the ramp band (rates and means). `None` judges this
/// window alone (p = the smallest bound's p-value times the number of bounds).
pub fn guardrail(
    policy: &Policy,
    g: &Guardrail,
    [t, c]: [&Agg; 2],
    band: Option<&[Agg; 2]>,
    detectors: Option<GuardrailDetectors<'_>>,
    reference: Reference,
    alpha: f64,
) -> (MetricEvidence, Status) {
    let metric = &policy.metrics[g.metric];
    let (tv, tn) = value(t, &metric.kind);
    let (cv, cn) = value(c, &metric.kind);
    let has_reference = reference != Reference::None;
    let control_value = has_reference.then_some(cv);
    let relative = g
        .max_relative_increase
        .map(|m| (m, Tail::Greater))
        .or(g.max_relative_decrease.map(|m| (-m, Tail::Less)))
        .filter(|_| has_reference);
    let absolute: Vec<(f64, Tail)> = g
        .max
        .map(|m| (m, Tail::Greater))
        .into_iter()
        .chain(g.min.map(|m| (m, Tail::Less)))
        .collect();
    let mut threshold: Option<f64> = None;
    let tighter = |cur: Option<f64>, new: f64, upper: bool| match cur {
        Some(x) if upper => Some(x.min(new)),
        Some(x) => Some(x.max(new)),
        None => Some(new),
    };
    for (b, tail) in &absolute {
        threshold = tighter(threshold, *b, *tail == Tail::Greater);
    }
    let mut insufficient = tn < g.min_samples;
    if let Some((margin, tail)) = relative {
        insufficient |= cn < g.min_samples;
        threshold = tighter(threshold, cv * (1.0 + margin), tail == Tail::Greater);
    }
    // This window's p-value per bound: relative first, then the absolute bounds.
    let rel_window = relative.and_then(|(m, tail)| test(t, c, &metric.kind, m, tail));
    let abs_window: Vec<Option<TestResult>> = absolute
        .iter()
        .map(|(b, tail)| bound(t, &metric.kind, *b, *tail))
        .collect();
    let mut bounds_named = Vec::new();
    if let Some((m, _)) = relative {
        bounds_named.push(match reference {
            Reference::Baseline { windows } => format!(
                "relative {m:+} vs baseline (this cohort's previous {windows} windows pooled, breached windows left out; shared units counted as independent)"
            ),
            _ => format!("relative {m:+} vs control"),
        });
    }
    for (b, tail) in &absolute {
        let word = if *tail == Tail::Greater { "max" } else { "min" };
        bounds_named.push(format!("absolute {word} {b}"));
    }
    let result: Option<(f64, String)> = match detectors {
        Some(d) => {
            // Sequential: this window's p-values feed the detectors (unless the window
            // is insufficient), then each bound's e-value; the guardrail's is their mean.
            // After a band's first window, a relative bound's detector scores each
            // window's innovation given the band's earlier windows
            // (`stats::ratio_innovation_test`): the arms keep their units, so the
            // windows' own tests are correlated.
            let mut parts: Vec<(f64, String)> = Vec::new();
            if let Some((margin, tail)) = relative {
                // Beside a band mSPRT, which carries a regression present from the band's
                // start, the detector's prior weighs later starts.
                let has_band = band.is_some();
                let prior = if has_band {
                    ChangePrior::BESIDE_BAND
                } else {
                    ChangePrior::FROM_START
                };
                if let (false, Some((r, _))) = (insufficient, &rel_window) {
                    let innovation = band.and_then(|b| {
                        let (et, ec) = (earlier(&b[TREATMENT], t)?, earlier(&b[CONTROL], c)?);
                        stats::ratio_innovation_test(
                            [t.ratio()?, c.ratio()?],
                            [et.slices(), ec.slices()],
                            margin,
                            tail,
                        )
                    });
                    d.relative
                        .update(innovation.map_or(r.p_value, |(r, _)| r.p_value), prior);
                }
                let band = band.and_then(|b| band_log_e(&b[TREATMENT], &b[CONTROL], margin, tail));
                let weights = match reference {
                    Reference::Baseline { .. } => &stats::DETECTOR_EQUAL_WEIGHTS,
                    _ => &stats::DETECTOR_DRIFT_WEIGHTS,
                };
                parts.push(bound_log_e(band, d.relative, weights, prior, has_band));
            }
            if !absolute.is_empty() {
                // Several absolute bounds (max and min) share one detector on the
                // smallest p-value times their number (Bonferroni, still a p-value).
                let k = abs_window.len() as f64;
                // Each window's own test: an absolute bound judges the rate the
                // treatment's users meet, window by window (and has no band mSPRT to
                // carry a breach present from the band's start).
                let p_abs = abs_window
                    .iter()
                    .flatten()
                    .map(|r| r.p_value)
                    .fold(f64::INFINITY, f64::min);
                if !insufficient && p_abs.is_finite() {
                    d.absolute
                        .update((p_abs * k).min(1.0), ChangePrior::FROM_START);
                }
                // The change-point detector alone: it forgets a breach that is over (a
                // band-wide average would keep a recovered cohort breached).
                parts.push(bound_log_e(
                    None,
                    d.absolute,
                    &stats::DETECTOR_DRIFT_WEIGHTS,
                    ChangePrior::FROM_START,
                    false,
                ));
            }
            if parts.is_empty() {
                None
            } else {
                let n = parts.len() as f64;
                let log_e = parts
                    .iter()
                    .map(|(l, _)| l - n.ln())
                    .fold(f64::NEG_INFINITY, stats::log_add_exp);
                let names: Vec<String> = parts
                    .into_iter()
                    .zip(&bounds_named)
                    .map(|((_, name), b)| format!("{b}: {name}"))
                    .collect();
                let name = if names.len() > 1 {
                    format!("always-valid p = 1/E, E the mean of [{}]", names.join("; "))
                } else {
                    format!("always-valid p = 1/E, E = {}", names.join(""))
                };
                Some(((-log_e).exp().min(1.0), name))
            }
        }
        None => {
            let ps: Vec<(f64, &'static str)> = rel_window
                .iter()
                .map(|(r, name)| (r.p_value, *name))
                .chain(
                    abs_window
                        .iter()
                        .flatten()
                        .map(|r| (r.p_value, "one-sample z-test")),
                )
                .collect();
            let k = (usize::from(relative.is_some()) + absolute.len()) as f64;
            ps.iter()
                .min_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(p, name)| {
                    let bonferroni = if k > 1.0 {
                        format!(" (smallest of {k} bounds x {k})")
                    } else {
                        String::new()
                    };
                    ((p * k).min(1.0), format!("{name} this window{bonferroni}"))
                })
        }
    };
    let mut methods = bounds_named;
    let mut p_value = None;
    let mut breached = false;
    match result {
        Some((p, name)) => {
            methods.push(format!("{name}, one-sided, alpha {alpha:.3e}"));
            p_value = Some(p);
            // Evidence over the band, and this window still on the harmful side of a
            // bound: a recovered metric ends a breach at once (the e-value, which
            // remembers, only decides whether the breach is real).
            let past = |value: f64, bound: f64, tail: Tail| match tail {
                Tail::Greater => value > bound,
                Tail::Less => value < bound,
            };
            let harmful_now = relative.is_some_and(|(m, tail)| past(tv, cv * (1.0 + m), tail))
                || absolute.iter().any(|(b, tail)| past(tv, *b, *tail));
            breached = p < alpha && harmful_now;
        }
        None if relative.is_some() || !absolute.is_empty() => {
            methods.push("test undefined (no variance or no data)".into())
        }
        None => {}
    }
    let status = if insufficient {
        Status::Insufficient
    } else if breached {
        Status::Breached
    } else {
        Status::Healthy
    };
    // The interval on the data the decision used: the band for a sequential relative
    // test (rates and means), else this window.
    let data = match (band, relative.is_some() && g.sequential) {
        (Some(b), true) => [&b[TREATMENT], &b[CONTROL]],
        _ => [t, c],
    };
    let ci = if relative.is_some() {
        relative_ci(data[0], data[1], &metric.kind)
    } else {
        value_ci(t, &metric.kind)
    };
    let mut ev = MetricEvidence {
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
        ci_lower: ci.map(|c| c.0),
        ci_upper: ci.map(|c| c.1),
        alpha: Some(alpha),
        family_size: Some((g.alpha / alpha).round() as i32),
        ..MetricEvidence::empty()
    };
    band_fields(&mut ev, band, &metric.kind);
    (ev, status)
}

/// 95% normal quantile.
const Z95: f64 = 1.959_963_984_540_054;

/// An aggregate's estimate with its clustered standard error.
fn estimate(a: &Agg, kind: &MetricKind) -> Option<(f64, f64)> {
    match (a, kind) {
        (Agg::Quantile { .. }, MetricKind::Quantile { quantile: q, .. }) => {
            a.quantile_estimate(*q).map(|e| (e.value, e.se))
        }
        _ => ratio(a).map(|e| (e.ratio, e.variance.sqrt())),
    }
}

/// 95% interval of the relative change T/C − 1 (delta method), clustered by unit.
pub fn relative_ci(t: &Agg, c: &Agg, kind: &MetricKind) -> Option<(f64, f64)> {
    let ((vt, st), (vc, sc)) = (estimate(t, kind)?, estimate(c, kind)?);
    if vc == 0.0 {
        return None;
    }
    let rel = vt / vc - 1.0;
    let se = ((st / vc).powi(2) + (vt * sc / (vc * vc)).powi(2)).sqrt();
    se.is_finite().then_some((rel - Z95 * se, rel + Z95 * se))
}

/// 95% interval of an arm's value, clustered by unit.
fn value_ci(a: &Agg, kind: &MetricKind) -> Option<(f64, f64)> {
    let (v, se) = estimate(a, kind)?;
    se.is_finite().then_some((v - Z95 * se, v + Z95 * se))
}

/// The band's estimates and sizes (rates and means) into the evidence.
fn band_fields(ev: &mut MetricEvidence, band: Option<&[Agg; 2]>, kind: &MetricKind) {
    if let Some(b) = band {
        let (t, c) = (value(&b[TREATMENT], kind), value(&b[CONTROL], kind));
        ev.band_treatment_value = Some(t.0);
        ev.band_control_value = Some(c.0);
        ev.band_treatment_samples = Some(t.1 as i64);
        ev.band_control_samples = Some(c.1 as i64);
    }
}

/// Sequential on the band's aggregates where possible, else this window's fixed test.
fn relative_test(
    t: &Agg,
    c: &Agg,
    kind: &MetricKind,
    band: Option<&[Agg; 2]>,
    margin: f64,
    tail: Tail,
) -> Option<(f64, String)> {
    if let Some(r) = band.and_then(|b| sequential(&b[TREATMENT], &b[CONTROL], margin, tail)) {
        return Some(r);
    }
    test(t, c, kind, margin, tail).map(|(r, name)| (r.p_value, name.to_string()))
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
        match relative_test(t, c, &metric.kind, band, margin, tail) {
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
    let data = band.map_or([t, c], |b| [&b[TREATMENT], &b[CONTROL]]);
    let ci = relative_ci(data[0], data[1], &metric.kind);
    let mut ev = MetricEvidence {
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
        ci_lower: ci.map(|c| c.0),
        ci_upper: ci.map(|c| c.1),
        alpha: Some(s.alpha),
        ..MetricEvidence::empty()
    };
    band_fields(&mut ev, band, &metric.kind);
    (ev, status)
}
