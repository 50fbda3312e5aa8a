//! Per-cell aggregates: what one (window, flag, cohort, variant) remembers.
//!
//! Memory per cell: 48 bytes of arm header, 32 bytes per rate or mean metric, and for
//! each quantile metric a histogram allocated on its first value: HDR, 2 significant
//! digits (1% relative error), values in thousandths of the field's unit (µs for
//! `latency_ms`) from 1 to 3.6e9 (one hour), u32 counts: 13.3 KiB.

use hdrhistogram::Histogram;

use crate::policy::{Metric, MetricKind};

/// Histogram bounds, in thousandths of the field's unit.
pub const HIST_LOW: u64 = 1;
pub const HIST_HIGH: u64 = 3_600_000_000;
pub const HIST_SIGFIG: u8 = 2;
/// Values are recorded as `round(value * SCALE)`, clamped into the histogram's range.
pub const HIST_SCALE: f64 = 1000.0;

/// Aggregate state of one metric in one cell.
#[derive(Debug, Clone, PartialEq)]
pub enum Agg {
    Rate { num: u64, den: u64 },
    Mean { n: u64, sum: f64, sumsq: f64 },
    Quantile { hist: Option<Box<Histogram<u32>>> },
}

impl Agg {
    pub fn new(metric: &Metric) -> Agg {
        match metric.kind {
            MetricKind::Rate { .. } => Agg::Rate { num: 0, den: 0 },
            MetricKind::Mean { .. } => Agg::Mean {
                n: 0,
                sum: 0.0,
                sumsq: 0.0,
            },
            MetricKind::Quantile { .. } => Agg::Quantile { hist: None },
        }
    }

    /// Applies one event's contribution.
    pub fn apply(&mut self, c: Contribution) {
        match (self, c) {
            (Agg::Rate { num, den }, Contribution::Rate { num: dn, den: dd }) => {
                *num += u64::from(dn);
                *den += u64::from(dd);
            }
            (Agg::Mean { n, sum, sumsq }, Contribution::Value(v)) => {
                *n += 1;
                *sum += v;
                *sumsq += v * v;
            }
            (Agg::Quantile { hist }, Contribution::Value(v)) => {
                let h = hist.get_or_insert_with(new_histogram);
                h.saturating_record(scaled(v));
            }
            _ => {}
        }
    }

    /// Adds another cell's aggregate of the same metric (cohort roll-ups, tests).
    pub fn merge(&mut self, other: &Agg) {
        match (self, other) {
            (Agg::Rate { num, den }, Agg::Rate { num: n2, den: d2 }) => {
                *num += n2;
                *den += d2;
            }
            (
                Agg::Mean { n, sum, sumsq },
                Agg::Mean {
                    n: n2,
                    sum: s2,
                    sumsq: q2,
                },
            ) => {
                *n += n2;
                *sum += s2;
                *sumsq += q2;
            }
            (Agg::Quantile { hist }, Agg::Quantile { hist: Some(h2) }) => {
                let h = hist.get_or_insert_with(new_histogram);
                // Same bounds on both sides, so `add` cannot fail; saturate on overflow.
                if h.add(h2.as_ref()).is_err() {
                    for v in h2.iter_recorded() {
                        h.saturating_record_n(v.value_iterated_to(), v.count_at_value());
                    }
                }
            }
            _ => {}
        }
    }

    /// The counts of a rate or mean as numbers (`[num, den]`, `[n, sum, sumsq]`);
    /// `None` for quantiles. Inverse of [`Agg::with_values`].
    pub fn values(&self) -> Option<Vec<f64>> {
        match self {
            Agg::Rate { num, den } => Some(vec![*num as f64, *den as f64]),
            Agg::Mean { n, sum, sumsq } => Some(vec![*n as f64, *sum, *sumsq]),
            Agg::Quantile { .. } => None,
        }
    }

    /// This aggregate's kind filled from [`Agg::values`]; `None` if the shape differs.
    pub fn with_values(&self, v: &[f64]) -> Option<Agg> {
        let count = |x: f64| (x >= 0.0 && x.fract() == 0.0).then_some(x as u64);
        match (self, v) {
            (Agg::Rate { .. }, [num, den]) => Some(Agg::Rate {
                num: count(*num)?,
                den: count(*den)?,
            }),
            (Agg::Mean { .. }, [n, sum, sumsq]) => Some(Agg::Mean {
                n: count(*n)?,
                sum: *sum,
                sumsq: *sumsq,
            }),
            _ => None,
        }
    }

    /// Heap bytes held beyond the enum itself.
    pub fn heap_bytes(&self) -> usize {
        match self {
            Agg::Quantile { hist: Some(h) } => {
                h.distinct_values() * std::mem::size_of::<u32>() + 128
            }
            _ => 0,
        }
    }
}

/// What one event adds to one metric of one cell.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Contribution {
    Rate { num: u8, den: u8 },
    Value(f64),
}

pub fn new_histogram() -> Box<Histogram<u32>> {
    // The bounds are constants that satisfy HDR's preconditions (low >= 1,
    // high >= 2 * low, sigfig <= 5), checked by the `histogram_bounds` test.
    Box::new(
        Histogram::new_with_bounds(HIST_LOW, HIST_HIGH, HIST_SIGFIG)
            .unwrap_or_else(|_| unreachable!("constant histogram bounds are valid")),
    )
}

/// Converts a field value into the histogram's integer unit, clamped into range.
pub fn scaled(v: f64) -> u64 {
    let s = (v * HIST_SCALE).round();
    if s.is_nan() || s < 0.0 {
        0
    } else {
        (s as u64).min(HIST_HIGH)
    }
}

/// The value at quantile `q` of a histogram, in the field's unit.
pub fn quantile(h: &Histogram<u32>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / HIST_SCALE
}

/// One variant's state in a cell: exposure count (for SRM) and one aggregate per metric slot.
#[derive(Debug, Clone)]
pub struct Arm {
    pub exposures: u64,
    pub events: u64,
    pub aggs: Vec<Agg>,
}

impl Arm {
    pub fn new(template: &[Agg]) -> Arm {
        Arm {
            exposures: 0,
            events: 0,
            aggs: template.to_vec(),
        }
    }

    pub fn merge(&mut self, other: &Arm) {
        self.exposures += other.exposures;
        self.events += other.events;
        for (a, b) in self.aggs.iter_mut().zip(&other.aggs) {
            a.merge(b);
        }
    }

    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Arm>()
            + self.aggs.len() * std::mem::size_of::<Agg>()
            + self.aggs.iter().map(Agg::heap_bytes).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn histogram_bounds() {
        let h = new_histogram();
        // 2 significant digits: 256 sub-buckets, counts of u32.
        assert!(
            h.distinct_values() * 4 <= 14 * 1024,
            "{} counts",
            h.distinct_values()
        );
        assert_eq!(scaled(-1.0), 0);
        assert_eq!(scaled(f64::NAN), 0);
        assert_eq!(scaled(1e12), HIST_HIGH);
        assert_eq!(scaled(12.3456), 12_346);
    }

    proptest! {
        #[test]
        fn merging_histograms_equals_recording_all(a in prop::collection::vec(0.0f64..5000.0, 0..200),
                                                   b in prop::collection::vec(0.0f64..5000.0, 0..200)) {
            let metric = Metric { name: "q".into(), kind: MetricKind::Quantile {
                matcher: crate::policy::Matcher { source: crate::model::Source::Product, conditions: vec![] },
                field: crate::policy::NumField::LatencyMs, quantile: 0.95 } };
            let (mut x, mut y, mut all) = (Agg::new(&metric), Agg::new(&metric), Agg::new(&metric));
            for v in &a { x.apply(Contribution::Value(*v)); all.apply(Contribution::Value(*v)); }
            for v in &b { y.apply(Contribution::Value(*v)); all.apply(Contribution::Value(*v)); }
            x.merge(&y);
            let (Agg::Quantile { hist: hx }, Agg::Quantile { hist: hall }) = (&x, &all) else { unreachable!() };
            match (hx, hall) {
                (Some(hx), Some(hall)) => {
                    prop_assert_eq!(hx.len(), hall.len());
                    for q in [0.5, 0.9, 0.95, 0.99] {
                        prop_assert_eq!(hx.value_at_quantile(q), hall.value_at_quantile(q));
                    }
                }
                (None, None) => prop_assert!(a.is_empty() && b.is_empty()),
                _ => prop_assert!(false, "one side empty"),
            }
        }

        #[test]
        fn mean_merge_is_additive(a in prop::collection::vec(-1e3f64..1e3, 0..100), b in prop::collection::vec(-1e3f64..1e3, 0..100)) {
            let mut x = Agg::Mean { n: 0, sum: 0.0, sumsq: 0.0 };
            let mut y = x.clone();
            for v in &a { x.apply(Contribution::Value(*v)); }
            for v in &b { y.apply(Contribution::Value(*v)); }
            x.merge(&y);
            let Agg::Mean { n, sum, .. } = x else { unreachable!() };
            prop_assert_eq!(n as usize, a.len() + b.len());
            let expect: f64 = a.iter().chain(&b).sum();
            prop_assert!((sum - expect).abs() < 1e-6);
        }
    }
}
