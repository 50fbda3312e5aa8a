//! `guardrail replay --report report.html`: one self-contained HTML file (inline SVG,
//! no external assets) with, per flag and cohort, each metric per window for treatment
//! and control against its threshold, the decisions marked, and the commands table.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::records::{FlagCommand, WindowEvaluation};

const W: f64 = 720.0;
const H: f64 = 170.0;
const PAD: f64 = 36.0;

/// Collects what a replay decided and renders it.
#[derive(Default)]
pub struct Report {
    /// flag → cohort → evaluations in window order.
    evaluations: BTreeMap<String, BTreeMap<String, Vec<WindowEvaluation>>>,
    commands: Vec<FlagCommand>,
}

impl Report {
    pub fn add(&mut self, evaluation: &WindowEvaluation, command: Option<&FlagCommand>) {
        self.evaluations
            .entry(evaluation.flag_key.clone())
            .or_default()
            .entry(evaluation.cohort.clone())
            .or_default()
            .push(evaluation.clone());
        self.commands.extend(command.cloned());
    }

    pub fn render(&self, title: &str) -> String {
        let mut h = String::with_capacity(1 << 16);
        let _ = write!(
            h,
            "<!doctype html><html><head><meta charset=utf-8><title>{t}</title><style>\
             body{{font:14px system-ui,sans-serif;margin:2em;color:#222}}\
             .plot{{display:inline-block;margin:0 1em 1em 0}} .plot h4{{margin:.2em 0;font-weight:600}}\
             table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}}\
             .legend span{{margin-right:1.5em}}</style></head><body><h1>{t}</h1>\
             <p class=legend><span style='color:#d62728'>■ treatment</span><span style='color:#555'>■ control</span>\
             <span style='color:#ff7f0e'>- - threshold</span><span>▲ decision</span></p>",
            t = esc(title)
        );
        h.push_str("<h2>Commands</h2>");
        self.commands_table(&mut h);
        for (flag, cohorts) in &self.evaluations {
            let _ = write!(h, "<h2>{}</h2>", esc(flag));
            for (cohort, evals) in cohorts {
                let _ = write!(h, "<h3>cohort {}</h3>", esc(cohort));
                for metric in metric_names(evals) {
                    plot(&mut h, &metric, evals);
                }
            }
        }
        h.push_str("</body></html>\n");
        h
    }

    fn commands_table(&self, h: &mut String) {
        if self.commands.is_empty() {
            h.push_str("<p>No commands.</p>");
            return;
        }
        h.push_str("<table><tr><th>window start</th><th>flag</th><th>cohort</th><th>action</th><th>percent</th><th>reason</th><th>evidence</th></tr>");
        for c in &self.commands {
            let evidence: Vec<String> = c
                .evidence
                .iter()
                .map(|e| {
                    format!(
                        "{} {}: {:.4} vs {} (p={}, n={}/{})",
                        esc(&e.metric),
                        esc(&e.status),
                        e.treatment_value,
                        e.control_value.map_or("–".into(), |v| format!("{v:.4}")),
                        e.p_value.map_or("–".into(), |p| format!("{p:.2e}")),
                        e.treatment_samples,
                        e.control_samples
                    )
                })
                .collect();
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td><b>{}</b></td><td>{} → {}</td><td>{}</td><td>{}</td></tr>",
                crate::clock::rfc3339(c.window_start),
                esc(&c.flag_key),
                esc(&c.cohort),
                c.action.as_str(),
                c.from_percent,
                c.to_percent,
                esc(&c.reason),
                evidence.join("<br>")
            );
        }
        h.push_str("</table>");
    }
}

fn metric_names(evals: &[WindowEvaluation]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for e in evals.iter().flat_map(|e| &e.evidence) {
        if !names.contains(&e.metric) {
            names.push(e.metric.clone());
        }
    }
    names
}

/// One SVG: a metric per window, both arms, the threshold, decisions as markers.
fn plot(h: &mut String, metric: &str, evals: &[WindowEvaluation]) {
    let points: Vec<MetricPoint> = evals
        .iter()
        .map(|e| MetricPoint {
            time: e.window_start,
            decision: e.decision.map(|d| d.as_str()),
            value: e
                .evidence
                .iter()
                .find(|x| x.metric == metric)
                .and_then(MetricValue::of),
        })
        .collect();
    metric_plot(h, &esc(metric), &points, REPORT_PLOT);
}

/// The size of one plot (pixels).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PlotSize {
    pub w: f64,
    pub h: f64,
}

/// The replay report's plots.
const REPORT_PLOT: PlotSize = PlotSize { w: W, h: H };

/// One window of a metric plot: its time (the x label), the decision taken there, and
/// the metric's values (`None`: not judged in that window, or no samples).
pub(crate) struct MetricPoint<'a> {
    pub time: i64,
    pub decision: Option<&'a str>,
    pub value: Option<MetricValue>,
}

/// What a metric plot draws of one window's evidence.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MetricValue {
    pub treatment: f64,
    pub control: Option<f64>,
    pub threshold: Option<f64>,
    pub breached: bool,
}

impl MetricValue {
    /// The values of `e`, or `None` when neither arm had samples (nothing to draw).
    pub(crate) fn of(e: &crate::records::MetricEvidence) -> Option<MetricValue> {
        (e.treatment_samples > 0 || e.control_samples > 0).then_some(MetricValue {
            treatment: e.treatment_value,
            control: e.control_value,
            threshold: e.threshold,
            breached: e.breached,
        })
    }
}

/// The x position of window `i` of `n` in a plot of `size`.
fn x_of(size: PlotSize, i: usize, n: usize) -> f64 {
    let n = n.max(2) as f64;
    PAD + (size.w - 2.0 * PAD) * i as f64 / (n - 1.0)
}

/// One SVG (`class=metric-plot`) titled `title` (already HTML): per window, treatment
/// (red) and control (grey) lines, the threshold (dashed), breached windows as red
/// dots and decisions as markers.
pub(crate) fn metric_plot(h: &mut String, title: &str, points: &[MetricPoint], size: PlotSize) {
    let PlotSize { w: sw, h: sh } = size;
    let values: Vec<f64> = points
        .iter()
        .filter_map(|p| p.value)
        .flat_map(|v| [Some(v.treatment), v.control, v.threshold])
        .flatten()
        .filter(|v| v.is_finite())
        .collect();
    let (lo, hi) = values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(*v), b.max(*v))
        });
    let (lo, hi) = if lo.is_finite() {
        (lo, if hi > lo { hi } else { lo + 1.0 })
    } else {
        (0.0, 1.0)
    };
    let x = |i: usize| x_of(size, i, points.len());
    let y = |v: f64| sh - PAD / 2.0 - (sh - PAD) * (v - lo) / (hi - lo);
    let line = |pick: &dyn Fn(&MetricValue) -> Option<f64>| -> String {
        points
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                pick(p.value.as_ref()?)
                    .filter(|v| v.is_finite())
                    .map(|v| format!("{:.1},{:.1}", x(i), y(v)))
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let _ = write!(
        h,
        "<div class=plot><h4>{title}</h4><svg class=metric-plot width='{sw}' height='{sh}' viewBox='0 0 {sw} {sh}'>\
         <rect width='{sw}' height='{sh}' fill='#fafafa' stroke='#ddd'/>\
         <text x='4' y='{ty:.0}' font-size='10'>{hi:.4}</text><text x='4' y='{by:.0}' font-size='10'>{lo:.4}</text>\
         <polyline fill='none' stroke='#555' stroke-width='1.5' points='{c}'/>\
         <polyline fill='none' stroke='#d62728' stroke-width='1.5' points='{t}'/>\
         <polyline fill='none' stroke='#ff7f0e' stroke-dasharray='4 3' points='{th}'/>",
        ty = y(hi) + 10.0,
        by = y(lo),
        c = line(&|v| v.control),
        t = line(&|v| Some(v.treatment)),
        th = line(&|v| v.threshold),
    );
    time_axis(
        h,
        size,
        points.first().map(|p| p.time),
        points.last().map(|p| p.time),
    );
    for (i, p) in points.iter().enumerate() {
        if let Some(v) = p.value.filter(|v| v.breached && v.treatment.is_finite()) {
            let _ = write!(
                h,
                "<circle cx='{:.1}' cy='{:.1}' r='3' fill='#d62728'><title>breached</title></circle>",
                x(i),
                y(v.treatment)
            );
        }
    }
    decision_marks(h, size, points.iter().map(|p| p.decision));
    h.push_str("</svg></div>");
}

/// One SVG (`class=percent-plot`) titled `title` (already HTML): the rollout percent
/// per window as a step line on a 0–100 axis, decisions as markers. `points` are
/// (time, percent, decision) per window; a window without a percent draws no step.
pub(crate) fn percent_plot(
    h: &mut String,
    title: &str,
    points: &[(i64, Option<f64>, Option<&str>)],
    size: PlotSize,
) {
    let PlotSize { w: sw, h: sh } = size;
    let n = points.len();
    let x = |i: usize| x_of(size, i, n);
    let y = |v: f64| sh - PAD / 2.0 - (sh - PAD) * v.clamp(0.0, 100.0) / 100.0;
    // Each window's percent holds until the next window.
    let mut steps = Vec::new();
    for (i, (_, p, _)) in points.iter().enumerate() {
        if let Some(p) = p.filter(|p| p.is_finite()) {
            let end = if i + 1 < n { x(i + 1) } else { x(i) };
            steps.push(format!("{:.1},{:.1} {:.1},{:.1}", x(i), y(p), end, y(p)));
        }
    }
    let _ = write!(
        h,
        "<div class=plot><h4>{title}</h4><svg class=percent-plot width='{sw}' height='{sh}' viewBox='0 0 {sw} {sh}'>\
         <rect width='{sw}' height='{sh}' fill='#fafafa' stroke='#ddd'/>\
         <line x1='{PAD}' x2='{r}' y1='{y50:.1}' y2='{y50:.1}' stroke='#eee'/>\
         <text x='4' y='{ty:.0}' font-size='10'>100%</text><text x='4' y='{y50:.0}' font-size='10'>50%</text>\
         <text x='4' y='{by:.0}' font-size='10'>0%</text>\
         <polyline fill='none' stroke='#1f77b4' stroke-width='2' points='{s}'/>",
        r = sw - PAD,
        y50 = y(50.0),
        ty = y(100.0) + 10.0,
        by = y(0.0),
        s = steps.join(" "),
    );
    if let Some((_, Some(p), _)) = points.last() {
        let _ = write!(
            h,
            "<text x='{:.1}' y='{:.1}' dy='-3' font-size='11' text-anchor='end'>{p}%</text>",
            x(n.saturating_sub(1)),
            y(*p)
        );
    }
    time_axis(
        h,
        size,
        points.first().map(|p| p.0),
        points.last().map(|p| p.0),
    );
    decision_marks(h, size, points.iter().map(|p| p.2));
    h.push_str("</svg></div>");
}

/// The first and last window's times under a plot.
fn time_axis(h: &mut String, size: PlotSize, first: Option<i64>, last: Option<i64>) {
    let PlotSize { w: sw, h: sh } = size;
    if let (Some(first), Some(last)) = (first, last) {
        let _ = write!(
            h,
            "<text x='{PAD}' y='{sh}' dy='-2' font-size='10'>{}</text><text x='{:.0}' y='{sh}' dy='-2' font-size='10' text-anchor='end'>{}</text>",
            crate::clock::rfc3339(first),
            sw - PAD,
            crate::clock::rfc3339(last)
        );
    }
}

/// A dashed vertical line and `▲ ACTION` at each window with a decision.
fn decision_marks<'a>(
    h: &mut String,
    size: PlotSize,
    decisions: impl ExactSizeIterator<Item = Option<&'a str>>,
) {
    let n = decisions.len();
    for (i, d) in decisions.enumerate() {
        if let Some(d) = d {
            let x = x_of(size, i, n);
            let _ = write!(
                h,
                "<g class=decision><line x1='{x:.1}' x2='{x:.1}' y1='4' y2='{:.0}' stroke='#333' stroke-dasharray='2 2'/>\
                 <text x='{:.1}' y='14' font-size='11'>▲ {}</text></g>",
                size.h - 4.0,
                x + 3.0,
                esc(d)
            );
        }
    }
}

/// Escapes text for HTML content and (single- or double-quoted) attributes.
pub(crate) fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&#39;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Action, Role, Severity};
    use crate::records::MetricEvidence;

    fn eval(i: i64, t: f64, decision: Option<Action>) -> WindowEvaluation {
        WindowEvaluation {
            flag_key: "f<1>".into(),
            cohort: "*".into(),
            window_start: i * 900_000,
            window_end: (i + 1) * 900_000,
            decision,
            evidence: vec![MetricEvidence {
                metric: "err".into(),
                role: Role::Guardrail,
                treatment_value: t,
                control_value: Some(0.01),
                threshold: Some(0.011),
                relative_change: None,
                p_value: Some(0.5),
                treatment_samples: 100,
                control_samples: 100,
                method: "m".into(),
                breached: t > 0.011,
                consecutive_windows: 0,
                status: "healthy".into(),
                ..MetricEvidence::empty()
            }],
            late_events: 0,
            evaluated_at: 0,
            rollout_percent: Some(5.0),
            state: None,
            healthy_windows: 0,
            policy_version: None,
            command_id: None,
            band: Vec::new(),
            input_positions: Vec::new(),
            watermark_lag_ms: None,
        }
    }

    /// An event from a clock before 1970 gives a window with a negative start: the
    /// report still renders (it panicked in humantime's formatter).
    #[test]
    fn renders_windows_before_1970() {
        let mut r = Report::default();
        r.add(&eval(-2, 0.01, None), None);
        r.add(&eval(-1, 0.02, None), None);
        let html = r.render("t");
        assert!(html.contains("1969-12-31T23:"), "{html}");
    }

    #[test]
    fn renders_a_plot_per_metric_with_decisions_and_escapes_names() {
        let mut r = Report::default();
        r.add(&eval(0, 0.01, None), None);
        let cmd = FlagCommand {
            command_id: "id".into(),
            flag_key: "f<1>".into(),
            cohort: "*".into(),
            action: Action::Pause,
            severity: Severity::Critical,
            from_percent: 5.0,
            to_percent: 5.0,
            requires_approval: false,
            reason: "err <high>".into(),
            owner: "o".into(),
            window_start: 900_000,
            window_end: 1_800_000,
            issued_at: 0,
            policy_version: "v".into(),
            evidence: vec![],
            watermark_lag_ms: None,
        };
        r.add(&eval(1, 0.03, Some(Action::Pause)), Some(&cmd));
        let html = r.render("t");
        assert_eq!(html.matches("<svg class=metric-plot").count(), 1);
        assert_eq!(html.matches("<g class=decision>").count(), 1);
        assert!(html.contains("▲ PAUSE"));
        assert!(html.contains("f&lt;1&gt;") && !html.contains("f<1>"));
        assert!(html.contains("err &lt;high&gt;"));
        assert!(
            !html.contains("http"),
            "self-contained: no external references"
        );
    }
}
