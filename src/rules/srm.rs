//! The sample-ratio test on distinct units, cumulative over a ramp band and valid at
//! every look (docs/STATISTICS.md §3).
//!
//! Each window's cell carries a bottom-k sample of the units exposed in each arm
//! ([`crate::window::aggregate::UnitSample`]). The band keeps the sampled units it has
//! already counted (keys at or below a threshold τ that only falls), counts each new
//! unit once, in key order (independent of its arm), and multiplies the e-process of
//! [`stats::srm_log_factor`]. Halving the sample when it is full keeps memory bounded and
//! the test valid: which units are sampled depends on their hash only, never on their arm.

use crate::records::BandState;
use crate::rules::stats;
use crate::window::aggregate::KEY_MAX;

/// Sampled units a band remembers at most (32 KiB); the state record carries them.
pub const BAND_SAMPLE: usize = 8192;
/// Level of the sample-ratio test of one flag over its whole rollout (the industry
/// convention for one test: LaunchDarkly, Statsig, GrowthBook), split over its cohorts
/// and ramp bands by [`crate::rules::srm_alpha`]; a cohort's test that the platform
/// applied a new split runs at the cohort's level too.
pub const SRM_ALPHA: f64 = 0.001;
/// `applied_log_e` once the platform reported the new split applied: past any level.
const APPLIED_CONFIRMED: f64 = 1e299;
/// `applied_log_e` once the new split was recognised (finite, so JSON output keeps it).
const APPLIED_SEEN: f64 = 1e300;
/// The name of the sample-ratio state in a record's band list.
pub const BAND_NAME: &str = "sample_ratio";

/// One band's sample-ratio test.
#[derive(Debug, Clone, PartialEq)]
pub struct SrmState {
    cap: usize,
    /// Sorted keys of the units counted since the test (re)started.
    keys: Vec<u32>,
    tau: u32,
    pub n_t: u64,
    pub n_c: u64,
    /// Units seen in both arms (not tested; an assignment that is not sticky).
    pub crossover: u64,
    pub log_e: f64,
    /// While an ADVANCE has not visibly reached the platform: the percent before it.
    pub pending_from: Option<f64>,
    /// Evidence (log) that the split moved away from `pending_from`.
    pub applied_log_e: f64,
    /// A mismatch was found: HOLD until a fresh test has seen as many units without one.
    pub holding: bool,
    pub fired_units: u64,
}

impl Default for SrmState {
    fn default() -> SrmState {
        SrmState::new(BAND_SAMPLE)
    }
}

/// What one window did to the test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SrmWindow {
    /// The test crossed 1/α in this window.
    pub fired: bool,
    /// The new split was recognised as applied in this window.
    pub applied: bool,
    /// The null interval the window was tested against (treatment share).
    pub lo: f64,
    pub hi: f64,
    /// The test's counts and evidence at the end of the window (before any restart).
    pub n_t: u64,
    pub n_c: u64,
    pub crossover: u64,
    pub log_e: f64,
}

impl SrmState {
    pub fn new(cap: usize) -> SrmState {
        SrmState {
            cap,
            keys: Vec::new(),
            tau: KEY_MAX,
            n_t: 0,
            n_c: 0,
            crossover: 0,
            log_e: 0.0,
            pending_from: None,
            applied_log_e: 0.0,
            holding: false,
            fired_units: 0,
        }
    }

    pub fn units(&self) -> u64 {
        self.n_t + self.n_c
    }

    /// The fraction of units the sample keeps (1 until it first filled).
    pub fn sampling_rate(&self) -> f64 {
        (f64::from(self.tau) + 1.0) / (f64::from(KEY_MAX) + 1.0)
    }

    /// Starts the test afresh (keeps the hold and the pending split).
    fn restart(&mut self) {
        self.keys.clear();
        self.tau = KEY_MAX;
        self.n_t = 0;
        self.n_c = 0;
        self.crossover = 0;
        self.log_e = 0.0;
    }

    /// A new band after an ADVANCE from `from` percent: the new split is expected once
    /// the platform applies it; until then either split (or a mix) is fine.
    pub fn advance(&mut self, from: f64) {
        *self = SrmState {
            pending_from: Some(from),
            ..SrmState::new(self.cap)
        };
    }

    /// The platform reports the pending split applied (the flag platform's applied-state
    /// record): as if the applied test had just rejected "still at `from`", so the next
    /// window is the clients' grace window and the one after tests the new split exactly.
    /// Returns whether a split was pending.
    pub fn confirm_applied(&mut self) -> bool {
        if self.pending_from.is_none() {
            return false;
        }
        self.applied_log_e = self.applied_log_e.max(APPLIED_CONFIRMED);
        true
    }

    /// Adds a window's sample (`(key, mask)` sorted by key, mask 1 treatment, 2 control,
    /// 3 both; every unit with a key at or below `tau_w` is in it) with the split in
    /// effect `percent`; `spread` widens the null to the percents the flag's cohorts are
    /// at (a platform may apply a cohort's command as an override or through the
    /// default rule, so while they differ any of them, or a mix, may be in effect).
    /// Both the mismatch and the applied split are found at level `alpha`.
    pub fn observe(
        &mut self,
        sample: &[(u32, u8)],
        tau_w: u32,
        percent: f64,
        spread: (f64, f64),
        alpha: f64,
    ) -> SrmWindow {
        let to = percent / 100.0;
        let (lo, hi) = match self.pending_from {
            Some(from) => {
                let from = from / 100.0;
                (from.min(to), from.max(to))
            }
            None => (to, to),
        };
        let (lo, hi) = (lo.min(spread.0 / 100.0), hi.max(spread.1 / 100.0));
        // The applied test: H0 the split is still `from` (or on its far side from `to`).
        let applied_null = self.pending_from.map(|from| {
            let from = from / 100.0;
            if to >= from { (0.0, from) } else { (from, 1.0) }
        });
        let fired = self.count(sample, tau_w, (lo, hi), applied_null, alpha);
        let window = SrmWindow {
            fired,
            applied: false,
            lo,
            hi,
            n_t: self.n_t,
            n_c: self.n_c,
            crossover: self.crossover,
            log_e: self.log_e,
        };
        if fired {
            // Hold, and start a fresh test that must see as many units to release it.
            self.holding = true;
            self.fired_units = self.units();
            self.restart();
            return window;
        }
        if self.holding && self.units() >= self.fired_units {
            self.holding = false;
        }
        if self.pending_from.is_some() && self.applied_log_e >= (1.0 / alpha).ln() {
            if self.applied_log_e >= APPLIED_SEEN {
                // Seen applied a window ago; clients have had a window to pick the new
                // split up: from here on, test it exactly.
                self.pending_from = None;
                self.applied_log_e = 0.0;
                self.restart();
                return SrmWindow {
                    applied: true,
                    ..window
                };
            }
            self.applied_log_e = APPLIED_SEEN;
        }
        window
    }

    /// The test itself: counts the window's new sampled units in key order against the
    /// null interval `(lo, hi)` (and the applied test's, if any); true if the e-process
    /// reached 1/`alpha`. Halves the sample when it holds more than its capacity.
    pub fn count(
        &mut self,
        sample: &[(u32, u8)],
        tau_w: u32,
        (lo, hi): (f64, f64),
        applied_null: Option<(f64, f64)>,
        alpha: f64,
    ) -> bool {
        self.tau = self.tau.min(tau_w);
        let tau = self.tau;
        self.keys.retain(|&k| k <= tau);
        let mut fresh: Vec<u32> = Vec::new();
        let mut fired = false;
        for &(key, mask) in sample {
            if key > tau || self.keys.binary_search(&key).is_ok() {
                continue;
            }
            fresh.push(key);
            if mask == 3 {
                self.crossover += 1;
                continue;
            }
            let treated = mask == 1;
            self.log_e += stats::srm_log_factor(self.n_t, self.n_c, treated, lo, hi);
            if let Some((alo, ahi)) = applied_null {
                self.applied_log_e += stats::srm_log_factor(self.n_t, self.n_c, treated, alo, ahi);
            }
            if treated {
                self.n_t += 1;
            } else {
                self.n_c += 1;
            }
            fired |= self.log_e >= (1.0 / alpha).ln();
        }
        if !fresh.is_empty() {
            self.keys.extend(fresh);
            self.keys.sort_unstable();
        }
        if self.keys.len() > self.cap {
            self.tau = self.keys[self.cap / 2 - 1];
            let tau = self.tau;
            self.keys.retain(|&k| k <= tau);
        }
        fired
    }

    /// The threshold and the number of remembered keys (tests).
    pub fn sample(&self) -> (u32, usize) {
        (self.tau, self.keys.len())
    }

    /// The state record's entry: `[n_t, n_c, crossover, log_e, applied_log_e, tau,
    /// pending_from or -1, holding, fired_units]` and, with `keys`, the sampled keys.
    pub fn band_state(&self, keys: bool) -> BandState {
        BandState {
            metric: BAND_NAME.into(),
            treatment: vec![
                self.n_t as f64,
                self.n_c as f64,
                self.crossover as f64,
                self.log_e,
                self.applied_log_e,
                f64::from(self.tau),
                self.pending_from.unwrap_or(-1.0),
                f64::from(u8::from(self.holding)),
                self.fired_units as f64,
            ],
            control: if keys {
                self.keys.iter().map(|&k| f64::from(k)).collect()
            } else {
                Vec::new()
            },
            detector: Vec::new(),
        }
    }

    /// The inverse of [`SrmState::band_state`]. Without the keys (an evaluation rather
    /// than a state record) the units counted before are unknown and could be counted
    /// twice, so the test starts afresh (valid; its evidence so far is lost); a hold and
    /// a pending split are kept.
    pub fn from_band_state(b: &BandState) -> Option<SrmState> {
        let count = |x: f64| (x >= 0.0 && x.fract() == 0.0 && x < 9e15).then_some(x as u64);
        let key = |x: f64| {
            count(x)
                .filter(|&k| k <= u64::from(KEY_MAX))
                .map(|k| k as u32)
        };
        let [
            n_t,
            n_c,
            crossover,
            log_e,
            applied_log_e,
            tau,
            pending,
            holding,
            fired,
        ] = b.treatment.as_slice()
        else {
            return None;
        };
        let mut s = SrmState::new(BAND_SAMPLE);
        s.tau = key(*tau)?;
        s.log_e = *log_e;
        s.applied_log_e = *applied_log_e;
        s.pending_from = (*pending >= 0.0).then_some(*pending);
        s.holding = *holding != 0.0;
        s.fired_units = count(*fired)?;
        let keys: Option<Vec<u32>> = b.control.iter().map(|&k| key(k)).collect();
        let mut keys = keys?;
        keys.sort_unstable();
        keys.dedup();
        if keys.is_empty() && count(*n_t)? + count(*n_c)? > 0 {
            // Counted units unknown: a fresh test (valid; only evidence is lost).
            s.log_e = 0.0;
            s.applied_log_e = 0.0;
            return Some(s);
        }
        s.keys = keys;
        s.n_t = count(*n_t)?;
        s.n_c = count(*n_c)?;
        s.crossover = count(*crossover)?;
        Some(s)
    }
}
