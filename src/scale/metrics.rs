//! Metrics of the two stages (SPEC §8, §11), registered beside the engine's.

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry,
};

#[derive(Clone)]
pub struct ScaleMetrics {
    /// The metric names registered (SPEC §8).
    pub names: Vec<String>,
    pub published: IntCounter,
    pub bytes: IntCounter,
    pub last_published: Gauge,
    pub received: IntCounterVec,
    pub missing: IntCounter,
    pub pending_windows: IntGauge,
    pub partition_last_window_end: GaugeVec,
    pub partial_to_command: Histogram,
    pub stage: IntGaugeVec,
}

impl ScaleMetrics {
    pub fn register(registry: &Registry, stage: &str) -> Result<ScaleMetrics, String> {
        let mut names = Vec::new();
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.map_err(|e| e.to_string())?;
                registry
                    .register(Box::new(m.clone()))
                    .map_err(|e| e.to_string())?;
                names.extend(
                    prometheus::core::Collector::desc(&m)
                        .iter()
                        .map(|d| d.fq_name.clone()),
                );
                m
            }};
        }
        let mut m = ScaleMetrics {
            names: Vec::new(),
            published: reg!(IntCounter::new(
                "guardrail_partials_published_total",
                "Partial aggregates published by the ingest stage, one per flag, input partition and window"
            )),
            bytes: reg!(IntCounter::new(
                "guardrail_partials_bytes_total",
                "Bytes of partial aggregates published by the ingest stage"
            )),
            last_published: reg!(Gauge::new(
                "guardrail_partials_last_published_timestamp_seconds",
                "When this ingest instance last published a partial (epoch seconds)"
            )),
            received: reg!(IntCounterVec::new(
                Opts::new(
                    "guardrail_partials_received_total",
                    "Partial aggregates read by the judge stage, by outcome (merged, duplicate, late, invalid)"
                ),
                &["outcome"]
            )),
            missing: reg!(IntCounter::new(
                "guardrail_partials_missing_total",
                "Input partitions missing from a window the partials timeout closed"
            )),
            pending_windows: reg!(IntGauge::new(
                "guardrail_partials_pending_windows",
                "Flag windows the judge stage holds, waiting for partials"
            )),
            partition_last_window_end: reg!(GaugeVec::new(
                Opts::new(
                    "guardrail_partition_last_window_end_seconds",
                    "End (epoch seconds) of the newest window each input partition reported to the judge stage"
                ),
                &["topic", "partition"]
            )),
            partial_to_command: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "guardrail_partial_to_command_seconds",
                    "Judge stage: from the arrival of a window's last partial to its outputs acknowledged"
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0
                ])
            )),
            stage: reg!(IntGaugeVec::new(
                Opts::new(
                    "guardrail_stage_info",
                    "1 for the stage this instance runs (ingest, judge or both)"
                ),
                &["stage"]
            )),
        };
        m.names = names;
        m.stage.with_label_values(&[stage]).set(1);
        // From the start, not 0: a new instance has not been silent since 1970.
        m.last_published
            .set(crate::clock::wall_ms() as f64 / 1000.0);
        for outcome in ["merged", "duplicate", "late", "invalid"] {
            m.received.with_label_values(&[outcome]);
        }
        Ok(m)
    }
}
