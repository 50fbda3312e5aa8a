//! Rolling baselines (SPEC §4 "Policy depth"): what the relative bound of a flag
//! without control is tested against.
//!
//! A guardrail with `baseline = { windows = N }` keeps, per cohort, a ring of the
//! cohort's treatment aggregates from its last N *admitted* closed windows. Each window
//! is judged against their pooled sum (the ring merged: [`Agg`] is mergeable), with the
//! same unit-bucket tests as against control. A window is admitted to the ring (the
//! oldest falls out) one window late, so that the onset of a regression — a window
//! already worse but not yet significant — does not become the baseline it is judged
//! against. After each window's decision, a window is *clean* unless
//!
//! - the guardrail's streak is above 0 (it breached in this window, or in a breach
//!   episode not yet ended by a healthy window), or
//! - the cohort is paused or rolled back.
//!
//! A clean window admits the pending (previous) window and becomes pending itself; a
//! window that is not clean drops the pending window and itself. A window without any
//! treatment sample is not an observation: it leaves the pending window as it is.
//!
//! Until the ring holds N windows (warm-up: the first N + 1 windows) the relative bound
//! is not tested: the guardrail is `insufficient` (no stop, no ADVANCE) unless an
//! absolute bound of the same guardrail breaches, and the evidence says `baseline
//! warming up: k of N windows`.
//!
//! Memory: per (flag, cohort, baseline guardrail) at most N + 1 aggregates (the ring
//! and the pending window) — for a rate or mean metric about 1.1 KiB each (its unit
//! buckets), for a quantile metric about 25 KiB (an HDR histogram and the coarse per-bucket table), hence the lower cap on N
//! for quantiles. Cohorts per flag are bounded by `max_cohorts` (+ `*` and `other`).
//!
//! State: the rings of rate and mean metrics are published with each evaluation to the
//! state topic (a `band` entry `baseline#<guardrail index>`, left out of the
//! evaluations topic) and restored after a restart; quantile rings are not (a histogram
//! per window) and re-warm, judging nothing relative until they are full again.

use std::collections::VecDeque;

use crate::records::{BandState, MetricEvidence};
use crate::rules::judge::Status;
use crate::window::aggregate::Agg;

/// Fewest windows a baseline pools (one window's noise is no baseline).
pub const MIN_WINDOWS: u32 = 2;
/// Most windows a rate or mean baseline pools: 12 hours of 15-minute windows, ~53 KiB
/// per cohort in memory and in each state record.
pub const MAX_WINDOWS: u32 = 48;
/// Most windows a quantile baseline pools: ~300 KiB per cohort.
pub const MAX_QUANTILE_WINDOWS: u32 = 12;
/// The `band` entry of guardrail i's ring: `baseline#i`.
pub const BAND_PREFIX: &str = "baseline#";

/// One guardrail's baseline in one cohort.
#[derive(Debug, Clone, PartialEq)]
pub struct Baseline {
    /// Windows pooled once warm (the policy's N).
    pub windows: u32,
    /// The admitted windows' treatment aggregates, oldest first; at most `windows`.
    ring: VecDeque<Agg>,
    /// The last clean window, admitted if the next one is clean too.
    pending: Option<Agg>,
}

impl Baseline {
    pub fn new(windows: u32) -> Baseline {
        Baseline {
            windows,
            ring: VecDeque::with_capacity(windows as usize),
            pending: None,
        }
    }

    /// Windows in the ring.
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// Whether the ring holds its N windows (the relative bound is tested).
    pub fn warm(&self) -> bool {
        self.ring.len() >= self.windows as usize
    }

    /// The ring's windows merged into one aggregate; `None` while empty.
    pub fn pooled(&self) -> Option<Agg> {
        let mut ring = self.ring.iter();
        let mut pooled = ring.next()?.clone();
        for a in ring {
            pooled.merge(a);
        }
        Some(pooled)
    }

    /// After a window's decision: `clean` (see the module) and the window's treatment
    /// aggregate (`None` without a sample).
    pub fn observe(&mut self, clean: bool, window: Option<Agg>) {
        match (clean, window) {
            (false, _) => self.pending = None,
            (true, None) => {}
            (true, Some(agg)) => {
                if let Some(confirmed) = self.pending.replace(agg) {
                    while self.ring.len() >= self.windows as usize {
                        self.ring.pop_front();
                    }
                    self.ring.push_back(confirmed);
                }
            }
        }
    }

    /// Heap bytes held by the ring and the pending window.
    pub fn heap_bytes(&self) -> usize {
        self.ring
            .iter()
            .chain(&self.pending)
            .map(|a| std::mem::size_of::<Agg>() + a.heap_bytes())
            .sum()
    }

    /// The ring as a `band` entry (rates and means): `treatment` = the windows'
    /// [`Agg::values`] one after another, then the pending window's; `control` =
    /// [N, values per window, 1 if a window is pending]. `None` for an empty ring or a
    /// quantile metric (not published: it re-warms).
    pub fn band_state(&self, guardrail: usize) -> Option<BandState> {
        let values: Vec<Vec<f64>> = self
            .ring
            .iter()
            .chain(&self.pending)
            .map(Agg::values)
            .collect::<Option<_>>()?;
        let per = values.first()?.len();
        Some(BandState {
            metric: format!("{BAND_PREFIX}{guardrail}"),
            treatment: values.concat(),
            control: vec![
                f64::from(self.windows),
                per as f64,
                f64::from(u8::from(self.pending.is_some())),
            ],
            detector: Vec::new(),
        })
    }

    /// The ring of [`Baseline::band_state`], for a guardrail with `windows` and a metric
    /// of `template`'s kind; `None` if the entry does not have that shape.
    pub fn from_band_state(b: &BandState, template: &Agg, windows: u32) -> Option<Baseline> {
        let [n, per, pending] = b.control[..] else {
            return None;
        };
        let (per, pending) = (per as usize, pending == 1.0);
        if n != f64::from(windows) || per == 0 || !b.treatment.len().is_multiple_of(per) {
            return None;
        }
        let mut aggs = b
            .treatment
            .chunks_exact(per)
            .map(|chunk| template.with_values(chunk))
            .collect::<Option<VecDeque<Agg>>>()?;
        let mut baseline = Baseline::new(windows);
        if pending {
            baseline.pending = Some(aggs.pop_back()?);
        }
        if aggs.len() > windows as usize {
            return None;
        }
        baseline.ring = aggs;
        Some(baseline)
    }
}

/// The guardrail's index in a `band` entry named by [`Baseline::band_state`].
pub fn band_guardrail(name: &str) -> Option<usize> {
    name.strip_prefix(BAND_PREFIX)?.parse().ok()
}

/// During warm-up: the evidence says so, and a guardrail that nothing breached is
/// `insufficient` (neither healthy, which would count toward ADVANCE, nor breached).
pub fn warming_up(ev: &mut MetricEvidence, status: &mut Status, b: &Baseline) {
    let note = format!(
        "baseline warming up: {} of {} windows (relative bound not tested)",
        b.len(),
        b.windows
    );
    ev.method = if ev.method.is_empty() {
        note
    } else {
        format!("{note}; {}", ev.method)
    };
    if *status == Status::Healthy {
        *status = Status::Insufficient;
        ev.status = Status::Insufficient.as_str().into();
    }
}
