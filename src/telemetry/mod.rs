//! Prometheus metrics (SPEC §8). The registry is created by the shell and handed to
//! [`Metrics::register`]; no global statics. The engine keeps plain counters; the
//! shell publishes their deltas once per tick (per batch, not per record).

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::engine::{Counters, Reason, STATUSES};
use crate::model::{Action, Source};
use crate::records::{FlagCommand, WindowEvaluation};
use crate::rules::CohortStatus;

/// Every metric guardrail exports.
#[derive(Clone)]
pub struct Metrics {
    pub events: IntCounterVec,
    pub windows_closed: IntCounter,
    pub commands: IntCounterVec,
    pub decision_latency: Histogram,
    /// Command issued → the flag platform applied it (`guardrail-applied`), per action.
    pub signal_to_applied: HistogramVec,
    /// PAUSE/ROLLBACK: start of the first breached window → the platform applied it:
    /// how long treatment was served with the regression after it showed.
    pub unsafe_exposure: HistogramVec,
    pub watermark_lag: Gauge,
    pub metric_value: GaugeVec,
    pub metric_threshold: GaugeVec,
    pub breach_streak: IntGaugeVec,
    pub rollout_percent: GaugeVec,
    pub cohort_state: IntGaugeVec,
    pub active_cells: IntGauge,
    pub dlq: IntCounterVec,
    pub srm_p_value: GaugeVec,
    pub ready: IntGauge,
    pub partitions_assigned: IntGauge,
    pub consumer_lag: IntGaugeVec,
    pub produce_latency: HistogramVec,
    pub cohort_overflow: IntCounter,
    pub legacy_fingerprint: IntCounterVec,
    pub unknown_fingerprint: IntCounterVec,
    pub watermark_clamped: IntCounter,
    pub watermark_excluded: IntGauge,
    pub without_unit: IntCounterVec,
    pub leader: IntGauge,
    pub partial_assignment: IntGauge,
    pub schema_fetches: IntCounterVec,
    pub flag_expired: IntGaugeVec,
    /// Approved policy versions this instance could not compile (SPEC §10).
    pub policy_activation_failures: IntCounter,
    published: Counters,
    published_overflow: u64,
    published_without_unit: Vec<u64>,
    /// Every metric family name registered (dashboards and alerts are checked against it).
    pub names: Vec<String>,
}

fn err(e: prometheus::Error) -> String {
    format!("registering metrics: {e}")
}

impl Metrics {
    pub fn register(registry: &Registry) -> Result<Metrics, String> {
        let mut names = Vec::new();
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.map_err(err)?;
                names.extend(
                    prometheus::core::Collector::desc(&m)
                        .iter()
                        .map(|d| d.fq_name.clone()),
                );
                registry.register(Box::new(m.clone())).map_err(err)?;
                m
            }};
        }
        let mut m = Metrics {
            events: reg!(IntCounterVec::new(Opts::new("guardrail_events_total", "Input records by source and outcome"), &["source", "status"])),
            windows_closed: reg!(IntCounter::new("guardrail_windows_closed_total", "Windows closed and evaluated")),
            commands: reg!(IntCounterVec::new(Opts::new("guardrail_commands_total", "Commands published, by action"), &["action"])),
            decision_latency: reg!(Histogram::with_opts(
                HistogramOpts::new("guardrail_decision_latency_seconds", "From the watermark passing a window end to the broker acknowledging its command")
                    .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0])
            )),
            watermark_lag: reg!(Gauge::new("guardrail_watermark_lag_seconds", "Wall clock minus the event-time watermark")),
            metric_value: reg!(GaugeVec::new(Opts::new("guardrail_metric_value", "Metric value in the last closed window"), &["flag", "cohort", "metric", "variant"])),
            metric_threshold: reg!(GaugeVec::new(Opts::new("guardrail_metric_threshold", "Effective guardrail bound in the last closed window"), &["flag", "cohort", "metric"])),
            breach_streak: reg!(IntGaugeVec::new(Opts::new("guardrail_breach_streak", "Consecutive breached windows"), &["flag", "cohort", "metric"])),
            rollout_percent: reg!(GaugeVec::new(Opts::new("guardrail_rollout_percent", "Treatment percent guardrail believes is live"), &["flag", "cohort"])),
            cohort_state: reg!(IntGaugeVec::new(Opts::new("guardrail_cohort_state", "1 for the cohort's current state"), &["flag", "cohort", "state"])),
            active_cells: reg!(IntGauge::new("guardrail_active_cells", "Aggregation cells (per variant) in open windows")),
            dlq: reg!(IntCounterVec::new(Opts::new("guardrail_dlq_total", "Records sent to the dead-letter topic, by reason"), &["reason"])),
            srm_p_value: reg!(GaugeVec::new(Opts::new("guardrail_srm_p_value", "Sample-ratio test on distinct units: always-valid p-value (1/e-value) of the current ramp band"), &["flag", "cohort"])),
            ready: reg!(IntGauge::new("guardrail_ready", "1 when partitions are assigned and the producer is connected")),
            partitions_assigned: reg!(IntGauge::new("guardrail_partitions_assigned", "Input partitions assigned to this instance")),
            consumer_lag: reg!(IntGaugeVec::new(Opts::new("guardrail_consumer_lag_messages", "High watermark minus position, per input partition"), &["topic", "partition"])),
            produce_latency: reg!(HistogramVec::new(
                HistogramOpts::new("guardrail_produce_latency_seconds", "Output produce round trip, by topic kind").buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
                &["output"]
            )),
            cohort_overflow: reg!(IntCounter::new(
                "guardrail_cohort_overflow_total",
                "Events aggregated under cohort `other` because max_cohorts_per_flag was reached"
            )),
            legacy_fingerprint: reg!(IntCounterVec::new(
                Opts::new("guardrail_legacy_fingerprint_total", "Input records accepted through the pre-0.2 (apache-avro form) schema fingerprint, by source"),
                &["source"]
            )),
            unknown_fingerprint: reg!(IntCounterVec::new(
                Opts::new("guardrail_unknown_fingerprint_total", "Input records dead-lettered for an unknown writer-schema fingerprint, by source"),
                &["source"]
            )),
            signal_to_applied: reg!(HistogramVec::new(
                HistogramOpts::new("guardrail_signal_to_applied_seconds", "From a command being issued to the flag platform reporting it applied (guardrail-applied), by action")
                    .buckets(LOOP_BUCKETS.to_vec()),
                &["action"]
            )),
            unsafe_exposure: reg!(HistogramVec::new(
                HistogramOpts::new("guardrail_unsafe_exposure_seconds", "PAUSE and ROLLBACK: from the start of the first breached window to the flag platform applying the stop (time in unsafe exposure), by action")
                    .buckets(LOOP_BUCKETS.to_vec()),
                &["action"]
            )),
            policy_activation_failures: reg!(IntCounter::new(
                "guardrail_policy_activation_failures_total",
                "Approved policy versions that did not compile with this instance's config (it keeps judging with the previous version)"
            )),
            flag_expired: reg!(IntGaugeVec::new(
                Opts::new("guardrail_flag_expired", "1 when the flag is past its expires_at (remove it from code and from the policy), else 0; only flags with expires_at"),
                &["flag"]
            )),
            schema_fetches: reg!(IntCounterVec::new(
                Opts::new("guardrail_schema_registry_fetches_total", "Writer-schema fetches from a Schema Registry (avro-confluent inputs), by input topic and result"),
                &["topic", "result"]
            )),
            watermark_clamped: reg!(IntCounter::new(
                "guardrail_watermark_clamped_total",
                "Watermark advances (ticks) held back by the wall clock because an input event time was ahead of it"
            )),
            watermark_excluded: reg!(IntGauge::new(
                "guardrail_watermark_excluded_partitions",
                "Input partitions not holding the watermark back because their event time trails by more than window.max_partition_delay without catching up"
            )),
            without_unit: reg!(IntCounterVec::new(
                Opts::new("guardrail_events_without_unit_total", "Events without a value for the flag's randomisation unit (each is counted as its own unit), by flag"),
                &["flag"]
            )),
            leader: reg!(IntGauge::new(
                "guardrail_leader",
                "1 when this instance leads its consumer group (consumes and judges), 0 while it is a standby"
            )),
            partial_assignment: reg!(IntGauge::new(
                "guardrail_partial_assignment",
                "1 while only part of the input partitions are assigned to this instance (it does not judge)"
            )),
            published: Counters::default(),
            published_overflow: 0,
            published_without_unit: Vec::new(),
            names: Vec::new(),
        };
        m.names = names;
        // Pre-create label sets so the series exist (at 0) from the first scrape.
        for s in Source::ALL {
            for st in STATUSES {
                m.events.with_label_values(&[s.as_str(), st]);
            }
            m.legacy_fingerprint.with_label_values(&[s.as_str()]);
            m.unknown_fingerprint.with_label_values(&[s.as_str()]);
        }
        for a in Action::ALL {
            m.commands.with_label_values(&[a.as_str()]);
        }
        for r in Reason::ALL {
            m.dlq.with_label_values(&[r.as_str()]);
        }
        Ok(m)
    }

    /// Publishes the engine's counters since the last call.
    pub fn publish_counters(&mut self, c: &Counters) {
        for s in Source::ALL {
            for (i, st) in STATUSES.iter().enumerate() {
                let d = c.events[s.index()][i] - self.published.events[s.index()][i];
                if d > 0 {
                    self.events.with_label_values(&[s.as_str(), st]).inc_by(d);
                }
            }
        }
        for r in Reason::ALL {
            let d = c.dlq[r as usize] - self.published.dlq[r as usize];
            if d > 0 {
                self.dlq.with_label_values(&[r.as_str()]).inc_by(d);
            }
        }
        self.windows_closed
            .inc_by(c.windows_closed - self.published.windows_closed);
        self.watermark_clamped
            .inc_by(c.watermark_clamped - self.published.watermark_clamped);
        for s in Source::ALL {
            let i = s.index();
            let legacy = c.legacy_fingerprint[i] - self.published.legacy_fingerprint[i];
            if legacy > 0 {
                self.legacy_fingerprint
                    .with_label_values(&[s.as_str()])
                    .inc_by(legacy);
            }
            let unknown = c.unknown_fingerprint[i] - self.published.unknown_fingerprint[i];
            if unknown > 0 {
                self.unknown_fingerprint
                    .with_label_values(&[s.as_str()])
                    .inc_by(unknown);
            }
        }
        self.published = c.clone();
    }

    /// Publishes the cohort-cap overflow count (cumulative in the engine).
    pub fn publish_overflow(&mut self, total: u64) {
        self.cohort_overflow
            .inc_by(total.saturating_sub(self.published_overflow));
        self.published_overflow = total;
    }

    /// Publishes the per-flag count of events without a unit (cumulative in the engine).
    pub fn publish_without_unit(&mut self, flags: &[&str], totals: &[u64]) {
        self.published_without_unit.resize(totals.len(), 0);
        for ((flag, total), seen) in flags
            .iter()
            .zip(totals)
            .zip(&mut self.published_without_unit)
        {
            self.without_unit
                .with_label_values(&[*flag])
                .inc_by(total.saturating_sub(*seen));
            *seen = *total;
        }
    }

    /// Publishes the gauges of one evaluation.
    pub fn evaluation(&self, e: &WindowEvaluation) {
        let (f, c) = (e.flag_key.as_str(), e.cohort.as_str());
        for ev in &e.evidence {
            let m = ev.metric.as_str();
            if ev.role == crate::model::Role::Srm {
                if let Some(p) = ev.p_value {
                    self.srm_p_value.with_label_values(&[f, c]).set(p);
                }
                continue;
            }
            self.metric_value
                .with_label_values(&[f, c, m, "treatment"])
                .set(ev.treatment_value);
            if let Some(cv) = ev.control_value {
                self.metric_value
                    .with_label_values(&[f, c, m, "control"])
                    .set(cv);
            }
            if ev.role == crate::model::Role::Guardrail {
                if let Some(t) = ev.threshold {
                    self.metric_threshold.with_label_values(&[f, c, m]).set(t);
                }
                self.breach_streak
                    .with_label_values(&[f, c, m])
                    .set(i64::from(ev.consecutive_windows));
            }
        }
        if let Some(p) = e.rollout_percent {
            self.rollout_percent.with_label_values(&[f, c]).set(p);
        }
        if let Some(state) = e.state.as_deref() {
            for s in CohortStatus::ALL {
                self.cohort_state
                    .with_label_values(&[f, c, s.as_str()])
                    .set(i64::from(s.as_str() == state));
            }
        }
    }

    pub fn command(&self, c: &FlagCommand) {
        self.commands.with_label_values(&[c.action.as_str()]).inc();
    }
}

/// The sum of a counter family's series in a registry (0 when absent): how the demo,
/// tests and benchmarks read the engine's counters from outside its task.
/// Seconds: the loop from a breach to the platform's change spans a second (tests) to
/// hours (15-minute windows, approvals).
const LOOP_BUCKETS: [f64; 14] = [
    0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 2700.0, 3600.0, 7200.0, 14400.0, 43200.0,
];

pub fn counter_total(registry: &Registry, name: &str) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter().map(|m| m.get_counter().get_value()))
        .sum()
}

/// Renders a registry in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut buf = Vec::new();
    // Encoding into a Vec only fails on invalid metric families, which `register` refuses.
    let _ = TextEncoder::new().encode(&registry.gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}
