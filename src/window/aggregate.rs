//! Per-cell aggregates: what one (window, flag, cohort, variant) remembers.
//!
//! Every event is attributed to its randomisation unit (the flag's `unit`, by default
//! the envelope's `user_id`) through a stable 64-bit hash ([`unit_hash`]). Units, not
//! events, are independent, so the variances of the tests come from per-unit-bucket
//! sums: every unit falls in exactly one of [`BUCKETS`] buckets, bucket totals are
//! i.i.d. across buckets, and the delta method over them accounts for any correlation
//! within a unit (docs/STATISTICS.md).
//!
//! Memory per cell arm: 48 bytes of header; per rate or mean metric 32 bytes plus
//! 1 KiB of bucket sums (allocated on the first value); per quantile metric an HDR
//! histogram (2 significant digits, values in thousandths of the field's unit from 1 to
//! 3.6e9, u32 counts: 13.3 KiB) and a 12 KiB table of coarse per-bucket counts; and a
//! sample of exposed units for the sample-ratio test (at most 12 KiB: 3,072 keys of 4 bytes).

use hdrhistogram::Histogram;

use crate::policy::{Metric, MetricKind};
use crate::rules::stats;

/// Histogram bounds, in thousandths of the field's unit.
pub const HIST_LOW: u64 = 1;
pub const HIST_HIGH: u64 = 3_600_000_000;
pub const HIST_SIGFIG: u8 = 2;
/// Values are recorded as `round(value * SCALE)`, clamped into the histogram's range.
pub const HIST_SCALE: f64 = 1000.0;

/// Unit buckets of rate and mean metrics.
pub const BUCKETS: usize = 64;
/// Unit buckets of quantile metrics (a coarse histogram each; 32 underestimated a
/// design effect of 13 by 45% against the reference vectors, 64 by 4%).
pub const Q_BUCKETS: usize = 64;
/// Coarse bins of a quantile bucket: two per octave, [2^-4, 2^20) of the field's unit.
pub const Q_BINS: usize = 48;
/// Exposed units a cell arm keeps for the sample-ratio test (the smallest keys).
pub const CELL_SAMPLE: usize = 2048;
/// Sample keys are the top 32 bits of the unit hash (two units sharing one are rare,
/// ~n²/2³³, and merely counted once: which units are counted still depends on the
/// hash alone).
pub const KEY_MAX: u32 = u32::MAX;

/// The stable hash of a unit id: FNV-1a 64 finished with MurmurHash3's fmix64, so
/// that every bit is mixed (bucket = low bits, sample key = high bits).
pub fn unit_hash(id: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The unit's sample key for the sample-ratio test.
pub fn sample_key(hash: u64) -> u32 {
    (hash >> 32) as u32
}

/// The coarse bin of a value: `floor(2·log2(v)) + 8`, clamped to the table.
pub fn q_bin(v: f64) -> usize {
    if v.is_nan() || v <= 0.0 {
        return 0;
    }
    // v = m·2^e with m in [1, 2): 2·log2(v) = 2e + 2·log2(m), and 2·log2(m) >= 1 iff m >= √2.
    let bits = v.to_bits();
    let e = ((bits >> 52) & 0x7ff) as i64 - 1023;
    if e < -1022 {
        return 0;
    }
    let m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000);
    let k = 2 * e + i64::from(m >= std::f64::consts::SQRT_2) + 8;
    k.clamp(0, Q_BINS as i64 - 1) as usize
}

/// The lower edge of coarse bin `k`: 2^(k/2 − 4).
pub fn q_edge(k: usize) -> f64 {
    (k as f64 / 2.0 - 4.0).exp2()
}

/// Per-bucket totals of a ratio metric: x (numerator or values) and y (denominator or count).
#[derive(Debug, Clone, PartialEq)]
pub struct Buckets {
    pub x: [f64; BUCKETS],
    pub y: [f64; BUCKETS],
}

impl Buckets {
    fn new() -> Box<Buckets> {
        Box::new(Buckets {
            x: [0.0; BUCKETS],
            y: [0.0; BUCKETS],
        })
    }

    fn add(&mut self, o: &Buckets) {
        for b in 0..BUCKETS {
            self.x[b] += o.x[b];
            self.y[b] += o.y[b];
        }
    }
}

/// Per-bucket coarse histograms of a quantile metric.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantileBuckets {
    pub counts: [[u32; Q_BINS]; Q_BUCKETS],
}

impl QuantileBuckets {
    fn new() -> Box<QuantileBuckets> {
        Box::new(QuantileBuckets {
            counts: [[0; Q_BINS]; Q_BUCKETS],
        })
    }

    /// Per bucket, the count below `edge` (bins wholly below it) and the total.
    pub fn below(&self, edge: usize) -> ([f64; Q_BUCKETS], [f64; Q_BUCKETS]) {
        let mut below = [0.0; Q_BUCKETS];
        let mut total = [0.0; Q_BUCKETS];
        for (b, row) in self.counts.iter().enumerate() {
            below[b] = row[..edge.min(Q_BINS)].iter().map(|&c| f64::from(c)).sum();
            total[b] = row.iter().map(|&c| f64::from(c)).sum();
        }
        (below, total)
    }
}

/// Aggregate state of one metric in one cell.
#[derive(Debug, Clone, PartialEq)]
pub enum Agg {
    Rate {
        num: u64,
        den: u64,
        units: Option<Box<Buckets>>,
    },
    Mean {
        n: u64,
        sum: f64,
        sumsq: f64,
        units: Option<Box<Buckets>>,
    },
    Quantile {
        hist: Option<Box<Histogram<u32>>>,
        units: Option<Box<QuantileBuckets>>,
    },
}

/// A quantile's estimate with its standard error (clustered Woodruff interval).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuantileEstimate {
    pub value: f64,
    pub se: f64,
    /// Design effect of the indicator `value <= estimate` (>= 1).
    pub deff: f64,
    pub n: u64,
}

/// Normal quantile of the Woodruff interval used to read the density off the histogram.
pub const WOODRUFF_Z: f64 = 1.96;

impl Agg {
    pub fn new(metric: &Metric) -> Agg {
        match metric.kind {
            MetricKind::Rate { .. } => Agg::Rate {
                num: 0,
                den: 0,
                units: None,
            },
            MetricKind::Mean { .. } => Agg::Mean {
                n: 0,
                sum: 0.0,
                sumsq: 0.0,
                units: None,
            },
            MetricKind::Quantile { .. } => Agg::Quantile {
                hist: None,
                units: None,
            },
        }
    }

    /// Applies one event's contribution, made by the unit with hash `unit`.
    pub fn apply(&mut self, c: Contribution, unit: u64) {
        let b = (unit as usize) % BUCKETS;
        match (self, c) {
            (Agg::Rate { num, den, units }, Contribution::Rate { num: dn, den: dd }) => {
                *num += u64::from(dn);
                *den += u64::from(dd);
                let u = units.get_or_insert_with(Buckets::new);
                u.x[b] += f64::from(dn);
                u.y[b] += f64::from(dd);
            }
            (
                Agg::Mean {
                    n,
                    sum,
                    sumsq,
                    units,
                },
                Contribution::Value(v),
            ) => {
                *n += 1;
                *sum += v;
                *sumsq += v * v;
                let u = units.get_or_insert_with(Buckets::new);
                u.x[b] += v;
                u.y[b] += 1.0;
            }
            (Agg::Quantile { hist, units }, Contribution::Value(v)) => {
                let h = hist.get_or_insert_with(new_histogram);
                h.saturating_record(scaled(v));
                let u = units.get_or_insert_with(QuantileBuckets::new);
                let cell = &mut u.counts[(unit as usize) % Q_BUCKETS][q_bin(v)];
                *cell = cell.saturating_add(1);
            }
            _ => {}
        }
    }

    /// Adds another cell's aggregate of the same metric (cohort roll-ups, bands).
    pub fn merge(&mut self, other: &Agg) {
        fn add_units<T: Clone>(
            a: &mut Option<Box<T>>,
            b: &Option<Box<T>>,
            add: impl Fn(&mut T, &T),
        ) {
            match (a.as_mut(), b) {
                (Some(a), Some(b)) => add(a, b),
                (None, Some(b)) => *a = Some(b.clone()),
                _ => {}
            }
        }
        match (self, other) {
            (
                Agg::Rate { num, den, units },
                Agg::Rate {
                    num: n2,
                    den: d2,
                    units: u2,
                },
            ) => {
                *num += n2;
                *den += d2;
                add_units(units, u2, Buckets::add);
            }
            (
                Agg::Mean {
                    n,
                    sum,
                    sumsq,
                    units,
                },
                Agg::Mean {
                    n: n2,
                    sum: s2,
                    sumsq: q2,
                    units: u2,
                },
            ) => {
                *n += n2;
                *sum += s2;
                *sumsq += q2;
                add_units(units, u2, Buckets::add);
            }
            (
                Agg::Quantile { hist, units },
                Agg::Quantile {
                    hist: h2,
                    units: u2,
                },
            ) => {
                if let Some(h2) = h2 {
                    let h = hist.get_or_insert_with(new_histogram);
                    // Same bounds on both sides, so `add` cannot fail; saturate on overflow.
                    if h.add(h2.as_ref()).is_err() {
                        for v in h2.iter_recorded() {
                            h.saturating_record_n(v.value_iterated_to(), v.count_at_value());
                        }
                    }
                }
                add_units(units, u2, |a: &mut QuantileBuckets, b: &QuantileBuckets| {
                    for (ra, rb) in a.counts.iter_mut().zip(&b.counts) {
                        for (x, y) in ra.iter_mut().zip(rb) {
                            *x = x.saturating_add(*y);
                        }
                    }
                });
            }
            _ => {}
        }
    }

    /// The ratio and its per-bucket totals (rates and means): what the tests use.
    pub fn ratio(&self) -> Option<(&[f64], &[f64])> {
        match self {
            Agg::Rate { units: Some(u), .. } | Agg::Mean { units: Some(u), .. } => {
                Some((&u.x[..], &u.y[..]))
            }
            _ => None,
        }
    }

    /// The quantile `q` with its clustered standard error (Woodruff's interval: the
    /// indicator's variance, times its design effect from the unit buckets, mapped
    /// through the histogram's quantile function). `None` without data.
    pub fn quantile_estimate(&self, q: f64) -> Option<QuantileEstimate> {
        let Agg::Quantile {
            hist: Some(h),
            units,
        } = self
        else {
            return None;
        };
        let n = h.len();
        if n == 0 || !(q > 0.0 && q < 1.0) {
            return None;
        }
        let value = quantile(h, q);
        let deff = units.as_ref().map_or(1.0, |u| quantile_deff(u, value));
        let se_f = (deff * q * (1.0 - q) / n as f64).sqrt();
        let lo = quantile(h, (q - WOODRUFF_Z * se_f).max(0.0));
        let hi = quantile(h, (q + WOODRUFF_Z * se_f).min(1.0));
        Some(QuantileEstimate {
            value,
            se: (hi - lo) / (2.0 * WOODRUFF_Z),
            deff,
            n,
        })
    }

    /// The counts of a rate or mean as numbers (`[num, den, x_0..x_63, y_0..y_63]`,
    /// `[n, sum, sumsq, x.., y..]`); `None` for quantiles. Inverse of [`Agg::with_values`].
    pub fn values(&self) -> Option<Vec<f64>> {
        let (head, units) = match self {
            Agg::Rate { num, den, units } => (vec![*num as f64, *den as f64], units),
            Agg::Mean {
                n,
                sum,
                sumsq,
                units,
            } => (vec![*n as f64, *sum, *sumsq], units),
            Agg::Quantile { .. } => return None,
        };
        let mut v = head;
        match units {
            Some(u) => {
                v.extend_from_slice(&u.x);
                v.extend_from_slice(&u.y);
            }
            None => v.resize(v.len() + 2 * BUCKETS, 0.0),
        }
        Some(v)
    }

    /// This aggregate's kind filled from [`Agg::values`]; `None` if the shape differs
    /// (including the unit-less shape of builds before per-unit statistics).
    pub fn with_values(&self, v: &[f64]) -> Option<Agg> {
        let count = |x: f64| (x >= 0.0 && x.fract() == 0.0).then_some(x as u64);
        let units = |rest: &[f64]| -> Option<Option<Box<Buckets>>> {
            if rest.len() != 2 * BUCKETS || rest.iter().any(|x| !x.is_finite()) {
                return None;
            }
            if rest.iter().all(|x| *x == 0.0) {
                return Some(None);
            }
            let mut b = Buckets::new();
            b.x.copy_from_slice(&rest[..BUCKETS]);
            b.y.copy_from_slice(&rest[BUCKETS..]);
            Some(Some(b))
        };
        match (self, v) {
            (Agg::Rate { .. }, [num, den, rest @ ..]) => Some(Agg::Rate {
                num: count(*num)?,
                den: count(*den)?,
                units: units(rest)?,
            }),
            (Agg::Mean { .. }, [n, sum, sumsq, rest @ ..]) => Some(Agg::Mean {
                n: count(*n)?,
                sum: *sum,
                sumsq: *sumsq,
                units: units(rest)?,
            }),
            _ => None,
        }
    }

    /// Heap bytes held beyond the enum itself.
    pub fn heap_bytes(&self) -> usize {
        match self {
            Agg::Quantile { hist, units } => {
                hist.as_ref().map_or(0, |h| {
                    h.distinct_values() * std::mem::size_of::<u32>() + 128
                }) + units
                    .as_ref()
                    .map_or(0, |_| std::mem::size_of::<QuantileBuckets>())
            }
            Agg::Rate { units, .. } | Agg::Mean { units, .. } => {
                units.as_ref().map_or(0, |_| std::mem::size_of::<Buckets>())
            }
        }
    }
}

/// Deterministic pseudo-random unit hashes for synthetic aggregates (tests, benches).
fn synthetic_unit(seed: u64, i: u64) -> u64 {
    let mut z = seed
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(i.wrapping_mul(0xbf58_476d_1ce4_e5b9))
        .wrapping_add(1);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Agg {
    /// A rate aggregate of `den` independent units with one denominator event each,
    /// `num` numerator events spread over them (the i.i.d. case; tests and benches).
    pub fn rate_of_units(num: u64, den: u64, seed: u64) -> Agg {
        let mut a = Agg::Rate {
            num: 0,
            den: 0,
            units: None,
        };
        let units = den.max(1);
        for i in 0..den {
            a.apply(
                Contribution::Rate { num: 0, den: 1 },
                synthetic_unit(seed, i),
            );
        }
        for i in 0..num {
            a.apply(
                Contribution::Rate { num: 1, den: 0 },
                synthetic_unit(seed, i % units),
            );
        }
        a
    }

    /// A mean aggregate of `n` independent units with one value each, alternately
    /// `mean − sd` and `mean + sd` (tests and benches).
    pub fn mean_of_units(n: u64, mean: f64, sd: f64, seed: u64) -> Agg {
        let mut a = Agg::Mean {
            n: 0,
            sum: 0.0,
            sumsq: 0.0,
            units: None,
        };
        for i in 0..n {
            let v = if i % 2 == 0 { mean - sd } else { mean + sd };
            a.apply(Contribution::Value(v), synthetic_unit(seed, i));
        }
        a
    }
}

/// Design effect of the indicator `x <= value` from the coarse per-bucket counts: at
/// the two bin edges around `value` (exact counts there), interpolated in log2, at
/// least 1; 1 where neither edge has a defined design effect.
fn quantile_deff(u: &QuantileBuckets, value: f64) -> f64 {
    let k = q_bin(value);
    let at = |edge: usize| {
        let (below, total) = u.below(edge);
        stats::indicator_deff(&below, &total)
    };
    let (lo, hi) = (at(k), at(k + 1));
    let w = if value > 0.0 {
        ((value.log2() + 4.0) * 2.0 - k as f64).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let d = match (lo, hi) {
        (Some(a), Some(b)) => (1.0 - w) * a + w * b,
        (Some(a), None) | (None, Some(a)) => a,
        (None, None) => 1.0,
    };
    d.max(1.0)
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
    /// The exposed units with the smallest sample keys (sample-ratio test).
    pub units: UnitSample,
}

impl Arm {
    pub fn new(template: &[Agg]) -> Arm {
        Arm {
            exposures: 0,
            events: 0,
            aggs: template.to_vec(),
            units: UnitSample::new(CELL_SAMPLE),
        }
    }

    pub fn merge(&mut self, other: &Arm) {
        self.exposures += other.exposures;
        self.events += other.events;
        for (a, b) in self.aggs.iter_mut().zip(&other.aggs) {
            a.merge(b);
        }
        self.units.merge(&other.units);
    }

    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Arm>()
            + self.aggs.len() * std::mem::size_of::<Agg>()
            + self.aggs.iter().map(Agg::heap_bytes).sum::<usize>()
            + self.units.heap_bytes()
    }
}

/// A bottom-k sample of distinct units: the `cap` smallest sample keys seen. Mergeable
/// (the union's smallest keys are among each part's), so the sample of a cohort over a
/// window, or of `*` over its cohorts, is exact. Inserting is O(1) once the sample is
/// full and a key is above the threshold; otherwise keys are buffered and compacted.
#[derive(Debug, Clone, PartialEq)]
pub struct UnitSample {
    cap: usize,
    keys: Vec<u32>,
    /// Keys above this are not in the sample: `KEY_MAX` until more than `cap` units were seen.
    tau: u32,
    /// More than `cap` distinct units were seen (the sample is a strict subset).
    full: bool,
}

impl UnitSample {
    pub fn new(cap: usize) -> UnitSample {
        UnitSample {
            cap,
            keys: Vec::new(),
            tau: KEY_MAX,
            full: false,
        }
    }

    #[inline]
    pub fn insert(&mut self, key: u32) {
        if key > self.tau {
            return;
        }
        self.keys.push(key);
        if self.keys.len() >= self.cap + self.cap / 2 {
            self.compact();
        }
    }

    fn compact(&mut self) {
        self.keys.sort_unstable();
        self.keys.dedup();
        if self.keys.len() > self.cap {
            self.keys.truncate(self.cap);
            self.full = true;
        }
        if self.full {
            self.tau = self.keys[self.cap - 1];
        }
    }

    pub fn merge(&mut self, other: &UnitSample) {
        self.full |= other.full;
        self.tau = self.tau.min(other.tau);
        let tau = self.tau;
        self.keys.extend(other.keys.iter().filter(|&&k| k <= tau));
        self.compact();
    }

    /// The sorted distinct keys and the threshold: every unit seen with a key at or
    /// below it is in the keys.
    pub fn sorted(&self) -> (Vec<u32>, u32) {
        let mut s = self.clone();
        s.compact();
        (s.keys, s.tau)
    }

    /// The sorted distinct keys, the threshold and whether more than `cap` units were
    /// seen: the whole state, compacted like [`UnitSample::sorted`] (partial aggregates
    /// carry it between instances).
    pub fn parts(&self) -> (Vec<u32>, u32, bool) {
        let mut s = self.clone();
        s.compact();
        (s.keys, s.tau, s.full)
    }

    /// The sample of capacity `cap` whose [`UnitSample::parts`] these are. `None` unless
    /// they can be: at most `cap` strictly increasing keys, and either not `full` with
    /// `tau` = [`KEY_MAX`], or `full` with exactly `cap` keys, the last one `tau` (what
    /// compaction leaves, and what [`UnitSample::merge`] relies on).
    pub fn from_parts(cap: usize, keys: Vec<u32>, tau: u32, full: bool) -> Option<UnitSample> {
        let increasing = keys.windows(2).all(|w| w[0] < w[1]);
        let consistent = if full {
            keys.len() == cap && keys.last() == Some(&tau)
        } else {
            keys.len() <= cap && tau == KEY_MAX
        };
        (increasing && consistent).then_some(UnitSample {
            cap,
            keys,
            tau,
            full,
        })
    }

    pub fn heap_bytes(&self) -> usize {
        self.keys.capacity() * std::mem::size_of::<u32>()
    }
}

/// The window sample of a cell's two arms for the sample-ratio test: `(key, mask)`
/// sorted by key (mask 1 = treatment, 2 = control, 3 = both) and the threshold, per
/// [`UnitSample`] over the union of the arms, at most `cap` entries.
pub fn joint_sample(t: &UnitSample, c: &UnitSample, cap: usize) -> (Vec<(u32, u8)>, u32) {
    let (kt, tt) = t.sorted();
    let (kc, tc) = c.sorted();
    let tau = tt.min(tc);
    let mut out: Vec<(u32, u8)> = Vec::with_capacity(kt.len() + kc.len());
    let (mut i, mut j) = (0, 0);
    while i < kt.len() || j < kc.len() {
        let (a, b) = (kt.get(i).copied(), kc.get(j).copied());
        let entry = match (a, b) {
            (Some(x), Some(y)) if x == y => {
                i += 1;
                j += 1;
                (x, 3)
            }
            (Some(x), Some(y)) if x < y => {
                i += 1;
                (x, 1)
            }
            (Some(x), None) => {
                i += 1;
                (x, 1)
            }
            (_, Some(y)) => {
                j += 1;
                (y, 2)
            }
            (None, None) => break,
        };
        if entry.0 <= tau {
            out.push(entry);
        }
    }
    let mut tau = tau;
    if out.len() > cap {
        out.truncate(cap);
        tau = out[cap - 1].0;
    }
    (out, tau)
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
            for (i, v) in a.iter().enumerate() { x.apply(Contribution::Value(*v), i as u64); all.apply(Contribution::Value(*v), i as u64); }
            for (i, v) in b.iter().enumerate() { y.apply(Contribution::Value(*v), 7 * i as u64); all.apply(Contribution::Value(*v), 7 * i as u64); }
            x.merge(&y);
            let (Agg::Quantile { hist: hx, units: ux }, Agg::Quantile { hist: hall, units: uall }) = (&x, &all) else { unreachable!() };
            prop_assert_eq!(ux, uall);
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
            let mut x = Agg::Mean { n: 0, sum: 0.0, sumsq: 0.0, units: None };
            let mut y = x.clone();
            for (i, v) in a.iter().enumerate() { x.apply(Contribution::Value(*v), i as u64); }
            for (i, v) in b.iter().enumerate() { y.apply(Contribution::Value(*v), i as u64); }
            x.merge(&y);
            let Agg::Mean { n, sum, .. } = x else { unreachable!() };
            prop_assert_eq!(n as usize, a.len() + b.len());
            let expect: f64 = a.iter().chain(&b).sum();
            prop_assert!((sum - expect).abs() < 1e-6);
        }

        #[test]
        fn sample_parts_rebuild_the_sample(a in prop::collection::vec(any::<u32>(), 0..100),
                                           b in prop::collection::vec(any::<u32>(), 0..100)) {
            // A small capacity, so that both full and partial samples occur.
            let (mut x, mut y) = (UnitSample::new(16), UnitSample::new(16));
            a.iter().for_each(|&k| x.insert(k));
            b.iter().for_each(|&k| y.insert(k));
            let rebuild = |s: &UnitSample| {
                let (keys, tau, full) = s.parts();
                UnitSample::from_parts(16, keys, tau, full).expect("parts of a sample")
            };
            let (x2, y2) = (rebuild(&x), rebuild(&y));
            prop_assert_eq!(x2.parts(), x.parts());
            let (mut merged, mut merged2) = (x.clone(), x2);
            merged.merge(&y);
            merged2.merge(&y2);
            prop_assert_eq!(merged2.parts(), merged.parts());
        }
    }

    #[test]
    fn from_parts_refuses_what_no_sample_has() {
        assert!(UnitSample::from_parts(2, vec![3, 1], KEY_MAX, false).is_none());
        assert!(UnitSample::from_parts(2, vec![1, 1], KEY_MAX, false).is_none());
        assert!(UnitSample::from_parts(2, vec![1, 2, 3], KEY_MAX, false).is_none());
        assert!(UnitSample::from_parts(2, vec![1], 7, false).is_none());
        assert!(UnitSample::from_parts(2, vec![1], 1, true).is_none());
        assert!(UnitSample::from_parts(2, vec![1, 2], 3, true).is_none());
        assert!(UnitSample::from_parts(2, vec![1, 2], 2, true).is_some());
        assert!(UnitSample::from_parts(2, vec![], KEY_MAX, false).is_some());
    }
}
