//! The one sentence a person can act on, for each command: values, change, p-value,
//! bound and streak, formatted for people (values below 1 as percent, p-values compact).

use crate::model::Action;
use crate::policy::{AdvanceWhen, Direction, Flag};
use crate::records::MetricEvidence;

pub(super) fn pct_if_pause(action: Action, from: f64) -> String {
    if action == Action::Rollback {
        String::new()
    } else {
        format!("{}%", fmt_pct(from))
    }
}

pub(super) fn fmt_pct(p: f64) -> String {
    if p.fract() == 0.0 {
        format!("{p:.0}")
    } else {
        format!("{p}")
    }
}

fn fmt_rel(r: Option<f64>) -> String {
    r.map_or("n/a".into(), |r| format!("{:+.1}%", r * 100.0))
}

fn fmt_p(p: Option<f64>) -> String {
    p.map_or("n/a".into(), |p| {
        if p < 1e-4 {
            format!("{p:.1e}")
        } else {
            format!("{p:.4}")
        }
    })
}

fn fmt_val(v: f64) -> String {
    if v.abs() < 1.0 {
        format!("{:.3}%", v * 100.0)
    } else {
        format!("{v:.2}")
    }
}

/// One sentence on a breached guardrail: values, change, p, bound, streak.
pub(super) fn describe(e: &MetricEvidence, windows: u32) -> String {
    let mut s = format!(
        "{} is {} in treatment",
        e.metric,
        fmt_val(e.treatment_value)
    );
    if let Some(c) = e.control_value {
        // A flag without control is judged against its rolling baseline (judge.rs).
        let reference = if e.method.contains("vs baseline (") {
            "in the cohort's baseline"
        } else {
            "in control"
        };
        s += &format!(
            " vs {} {reference} ({}, p={})",
            fmt_val(c),
            fmt_rel(e.relative_change),
            fmt_p(e.p_value)
        );
    }
    if let Some(t) = e.threshold {
        s += &format!(", beyond the limit {}", fmt_val(t));
    }
    s + &format!(
        ", for {} consecutive window(s) (policy: {windows})",
        e.consecutive_windows
    )
}

/// Why a cohort advances: each success metric's change and p, or the healthy streak.
pub(super) fn advance_reason(
    flag: &Flag,
    evidence: &[MetricEvidence],
    healthy_windows: u32,
    from: f64,
    next: f64,
) -> String {
    let why = match flag.advance_when {
        AdvanceWhen::Significant => flag
            .success
            .iter()
            .zip(&evidence[flag.guardrails.len()..])
            .map(|(s, e)| {
                let verb = if s.direction == Direction::Increase {
                    "rose"
                } else {
                    "fell"
                };
                format!(
                    "{} {verb} {} (p={}) for {} window(s)",
                    e.metric,
                    fmt_rel(e.relative_change),
                    fmt_p(e.p_value),
                    s.windows
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
        AdvanceWhen::Healthy => format!("all guardrails healthy for {healthy_windows} windows"),
    };
    format!(
        "{why}; advance from {}% to {}%",
        fmt_pct(from),
        fmt_pct(next)
    )
}

/// Why a cohort holds on a sample ratio mismatch.
pub(super) fn srm_reason(e: Option<&MetricEvidence>, percent: f64) -> String {
    format!(
        "sample ratio mismatch: {:.2}% of exposures in treatment where {}% is expected (p={}); the split is not what the flag serves, so results cannot be trusted; holding",
        e.map_or(0.0, |e| e.treatment_value * 100.0),
        fmt_pct(percent),
        fmt_p(e.and_then(|e| e.p_value))
    )
}
