//! The output records (`FlagCommand`, `WindowEvaluation`, `MetricEvidence`) and their
//! encodings: JSON with the Avro field names (enums as strings, timestamps as epoch
//! millis), and Avro single-object encoding of `schemas/*.avsc`, written by hand and
//! checked against apache-avro in tests.

use serde::{Deserialize, Serialize};

use crate::avro::AvroWriter;
use crate::model::{Action, Role, Severity};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricEvidence {
    pub metric: String,
    pub role: Role,
    pub treatment_value: f64,
    pub control_value: Option<f64>,
    pub threshold: Option<f64>,
    pub relative_change: Option<f64>,
    pub p_value: Option<f64>,
    pub treatment_samples: i64,
    pub control_samples: i64,
    pub method: String,
    pub breached: bool,
    pub consecutive_windows: i32,
    /// breached | healthy | insufficient | significant | not_significant
    #[serde(default)]
    pub status: String,
    /// 95% interval of the relative change (of the treatment value without control).
    #[serde(default)]
    pub ci_lower: Option<f64>,
    #[serde(default)]
    pub ci_upper: Option<f64>,
    /// Estimates and sample sizes over the current ramp band (rates and means).
    #[serde(default)]
    pub band_treatment_value: Option<f64>,
    #[serde(default)]
    pub band_control_value: Option<f64>,
    #[serde(default)]
    pub band_treatment_samples: Option<i64>,
    #[serde(default)]
    pub band_control_samples: Option<i64>,
    /// Distinct exposed units per arm over the band (estimated from the unit sample).
    #[serde(default)]
    pub treatment_units: Option<i64>,
    #[serde(default)]
    pub control_units: Option<i64>,
    /// The level the test was judged at, and its family: the alpha / this level.
    #[serde(default)]
    pub alpha: Option<f64>,
    #[serde(default)]
    pub family_size: Option<i32>,
}

impl MetricEvidence {
    /// Evidence with every field empty (a base for `..`).
    pub fn empty() -> MetricEvidence {
        MetricEvidence {
            metric: String::new(),
            role: Role::Guardrail,
            treatment_value: 0.0,
            control_value: None,
            threshold: None,
            relative_change: None,
            p_value: None,
            treatment_samples: 0,
            control_samples: 0,
            method: String::new(),
            breached: false,
            consecutive_windows: 0,
            status: String::new(),
            ci_lower: None,
            ci_upper: None,
            band_treatment_value: None,
            band_control_value: None,
            band_treatment_samples: None,
            band_control_samples: None,
            treatment_units: None,
            control_units: None,
            alpha: None,
            family_size: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlagCommand {
    pub command_id: String,
    pub flag_key: String,
    pub cohort: String,
    pub action: Action,
    pub severity: Severity,
    pub from_percent: f64,
    pub to_percent: f64,
    pub requires_approval: bool,
    pub reason: String,
    pub owner: String,
    pub window_start: i64,
    pub window_end: i64,
    pub issued_at: i64,
    pub policy_version: String,
    pub evidence: Vec<MetricEvidence>,
    /// Wall clock minus the watermark when decided (data freshness).
    #[serde(default)]
    pub watermark_lag_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowEvaluation {
    pub flag_key: String,
    pub cohort: String,
    pub window_start: i64,
    pub window_end: i64,
    pub decision: Option<Action>,
    pub evidence: Vec<MetricEvidence>,
    pub late_events: i64,
    pub evaluated_at: i64,
    #[serde(default)]
    pub rollout_percent: Option<f64>,
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub healthy_windows: i32,
    #[serde(default)]
    pub policy_version: Option<String>,
    #[serde(default)]
    pub command_id: Option<String>,
    /// Band evidence of the sequential tests, for restart recovery.
    #[serde(default)]
    pub band: Vec<BandState>,
    /// How far each input partition was read at this window close (on the last
    /// evaluation of a close only): restore recognises re-read records by it.
    #[serde(default)]
    pub input_positions: Vec<InputPosition>,
    /// Wall clock minus the watermark when decided (data freshness).
    #[serde(default)]
    pub watermark_lag_ms: Option<i64>,
}

/// An input partition's read position: every record below `read_until` was consumed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputPosition {
    pub topic: String,
    pub partition: i32,
    pub read_until: i64,
}

/// A metric's aggregates accumulated over the current ramp band, per arm:
/// `[num, den]` for a rate, `[n, sum, sum of squares]` for a mean (empty for a
/// quantile, whose guardrails keep only detectors).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BandState {
    pub metric: String,
    pub treatment: Vec<f64>,
    pub control: Vec<f64>,
    /// Change-point detectors of the sequential guardrails on this metric:
    /// `[guardrail index, windows, ln S(θ) per drift]` per guardrail.
    #[serde(default)]
    pub detector: Vec<f64>,
}

/// The `MetricEvidence` array of both output records.
fn evidence(w: &mut AvroWriter, ev: &[MetricEvidence]) {
    w.block(ev, |w, e| {
        w.string(&e.metric);
        w.long(e.role as i64);
        w.double(e.treatment_value);
        w.opt(e.control_value, AvroWriter::double);
        w.opt(e.threshold, AvroWriter::double);
        w.opt(e.relative_change, AvroWriter::double);
        w.opt(e.p_value, AvroWriter::double);
        w.long(e.treatment_samples);
        w.long(e.control_samples);
        w.string(&e.method);
        w.boolean(e.breached);
        w.long(i64::from(e.consecutive_windows));
        w.string(&e.status);
        w.opt(e.ci_lower, AvroWriter::double);
        w.opt(e.ci_upper, AvroWriter::double);
        w.opt(e.band_treatment_value, AvroWriter::double);
        w.opt(e.band_control_value, AvroWriter::double);
        w.opt(e.band_treatment_samples, AvroWriter::long);
        w.opt(e.band_control_samples, AvroWriter::long);
        w.opt(e.treatment_units, AvroWriter::long);
        w.opt(e.control_units, AvroWriter::long);
        w.opt(e.alpha, AvroWriter::double);
        w.opt(e.family_size, |w, v| w.long(i64::from(v)));
    });
}

fn framed(fingerprint: u64, body: impl FnOnce(&mut AvroWriter)) -> Vec<u8> {
    let mut w = AvroWriter::with_capacity(512);
    w.0.extend_from_slice(&[0xC3, 0x01]);
    w.0.extend_from_slice(&fingerprint.to_le_bytes());
    body(&mut w);
    w.0
}

impl FlagCommand {
    /// Avro single-object encoding with `schemas/flag_command.avsc`'s fingerprint.
    pub fn to_avro(&self, fingerprint: u64) -> Vec<u8> {
        framed(fingerprint, |w| {
            w.string(&self.command_id);
            w.string(&self.flag_key);
            w.string(&self.cohort);
            w.long(self.action as i64);
            w.long(self.severity as i64);
            w.double(self.from_percent);
            w.double(self.to_percent);
            w.boolean(self.requires_approval);
            w.string(&self.reason);
            w.string(&self.owner);
            w.long(self.window_start);
            w.long(self.window_end);
            w.long(self.issued_at);
            w.string(&self.policy_version);
            evidence(w, &self.evidence);
            w.opt(self.watermark_lag_ms, AvroWriter::long);
        })
    }
}

impl WindowEvaluation {
    /// Avro single-object encoding with `schemas/window_evaluation.avsc`'s fingerprint.
    pub fn to_avro(&self, fingerprint: u64) -> Vec<u8> {
        framed(fingerprint, |w| {
            w.string(&self.flag_key);
            w.string(&self.cohort);
            w.long(self.window_start);
            w.long(self.window_end);
            w.opt(self.decision, |w, a| w.long(a as i64));
            evidence(w, &self.evidence);
            w.long(self.late_events);
            w.long(self.evaluated_at);
            w.opt(self.rollout_percent, AvroWriter::double);
            w.opt(self.state.as_deref(), AvroWriter::string);
            w.long(i64::from(self.healthy_windows));
            w.opt(self.policy_version.as_deref(), AvroWriter::string);
            w.opt(self.command_id.as_deref(), AvroWriter::string);
            w.block(&self.band, |w, b| {
                w.string(&b.metric);
                w.block(&b.treatment, |w, v| w.double(*v));
                w.block(&b.control, |w, v| w.double(*v));
                w.block(&b.detector, |w, v| w.double(*v));
            });
            w.block(&self.input_positions, |w, p| {
                w.string(&p.topic);
                w.long(i64::from(p.partition));
                w.long(p.read_until);
            });
            w.opt(self.watermark_lag_ms, AvroWriter::long);
        })
    }
}

#[cfg(test)]
mod tests;
