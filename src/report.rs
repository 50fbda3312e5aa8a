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
    let rows: Vec<(usize, Option<&crate::records::MetricEvidence>, Option<&str>)> = evals
        .iter()
        .enumerate()
        .map(|(i, e)| {
            (
                i,
                e.evidence.iter().find(|x| x.metric == metric),
                e.decision.map(|d| d.as_str()),
            )
        })
        .collect();
    let values: Vec<f64> = rows
        .iter()
        .filter_map(|r| r.1)
        .filter(|e| e.treatment_samples > 0 || e.control_samples > 0)
        .flat_map(|e| [Some(e.treatment_value), e.control_value, e.threshold])
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
    let n = evals.len().max(2) as f64;
    let x = |i: usize| PAD + (W - 2.0 * PAD) * i as f64 / (n - 1.0);
    let y = |v: f64| H - PAD / 2.0 - (H - PAD) * (v - lo) / (hi - lo);
    let line = |pick: &dyn Fn(&crate::records::MetricEvidence) -> Option<f64>| -> String {
        rows.iter()
            .filter_map(|(i, e, _)| {
                let e = (*e)?;
                if e.treatment_samples == 0 && e.control_samples == 0 {
                    return None;
                }
                pick(e)
                    .filter(|v| v.is_finite())
                    .map(|v| format!("{:.1},{:.1}", x(*i), y(v)))
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let _ = write!(
        h,
        "<div class=plot><h4>{m}</h4><svg class=metric-plot width='{W}' height='{H}' viewBox='0 0 {W} {H}'>\
         <rect width='{W}' height='{H}' fill='#fafafa' stroke='#ddd'/>\
         <text x='4' y='{ty:.0}' font-size='10'>{hi:.4}</text><text x='4' y='{by:.0}' font-size='10'>{lo:.4}</text>\
         <polyline fill='none' stroke='#555' stroke-width='1.5' points='{c}'/>\
         <polyline fill='none' stroke='#d62728' stroke-width='1.5' points='{t}'/>\
         <polyline fill='none' stroke='#ff7f0e' stroke-dasharray='4 3' points='{th}'/>",
        m = esc(metric),
        ty = y(hi) + 10.0,
        by = y(lo),
        c = line(&|e| e.control_value),
        t = line(&|e| Some(e.treatment_value)),
        th = line(&|e| e.threshold),
    );
    if let (Some(first), Some(last)) = (evals.first(), evals.last()) {
        let _ = write!(
            h,
            "<text x='{PAD}' y='{H}' dy='-2' font-size='10'>{}</text><text x='{:.0}' y='{H}' dy='-2' font-size='10' text-anchor='end'>{}</text>",
            crate::clock::rfc3339(first.window_start),
            W - PAD,
            crate::clock::rfc3339(last.window_start)
        );
    }
    for (i, e, decision) in &rows {
        if let Some(e) = e.filter(|e| e.breached) {
            let _ = write!(
                h,
                "<circle cx='{:.1}' cy='{:.1}' r='3' fill='#d62728'><title>breached</title></circle>",
                x(*i),
                y(e.treatment_value)
            );
        }
        if let Some(d) = decision {
            let _ = write!(
                h,
                "<g class=decision><line x1='{0:.1}' x2='{0:.1}' y1='4' y2='{1:.0}' stroke='#333' stroke-dasharray='2 2'/>\
                 <text x='{2:.1}' y='14' font-size='11'>▲ {3}</text></g>",
                x(*i),
                H - 4.0,
                x(*i) + 3.0,
                d
            );
        }
    }
    h.push_str("</svg></div>");
}

fn esc(s: &str) -> String {
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
