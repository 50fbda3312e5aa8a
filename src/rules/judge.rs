//! Judging one metric of one cohort in one window: value per arm, bound, test, status.
//! Pure functions of the aggregates and the policy; streaks live in `rules::state`.

use crate::model::Role;
use crate::policy::{Direction, Guardrail, MetricKind, Policy, SuccessMetric};
use crate::records::MetricEvidence;
use crate::rules::stats::{self, Tail, TestResult};
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

fn relative_change(t: f64, c: Option<f64>) -> Option<f64> {
    c.filter(|c| *c != 0.0).map(|c| (t - c) / c)
}

/// Judges a guardrail: absolute bound on treatment, and a one-sided relative test.
pub fn guardrail(
    policy: &Policy,
    g: &Guardrail,
    cell: &Cell,
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
        match test(t, c, margin, tail) {
            Some((r, name)) => {
                methods.push(format!(
                    "{name}, one-sided, margin {margin:+}, alpha {}",
                    g.alpha
                ));
                p_value = Some(r.p_value);
                breached |= r.p_value < g.alpha;
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

/// Judges a success metric: one-sided test of improvement beyond the margin.
pub fn success(policy: &Policy, s: &SuccessMetric, cell: &Cell) -> (MetricEvidence, Status) {
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
        match test(t, c, margin, tail) {
            Some((r, name)) => {
                method = format!("{name}, one-sided, margin {margin:+}, alpha {}", s.alpha);
                p_value = Some(r.p_value);
                if r.p_value < s.alpha {
                    Status::Significant
                } else {
                    Status::NotSignificant
                }
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
