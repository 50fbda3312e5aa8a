//! A seeded traffic model of real users (issue 10, point 7), built so that it does not
//! share the engine's assumptions: a persistent population per cohort, heavy and light
//! users, per-user propensities, retries after errors, one EXPOSURE per session,
//! day/night volume per region, assignment per user at the share a flag platform
//! actually applies, and regressions that touch only the tail.
//!
//! # The model, per rollout of one flag
//!
//! - **Cohorts**: platform {ios, android, mobile-web, desktop-web} × region {eu, us,
//!   apac}, 12 cohorts of unequal size (shares multiply, from 35% × 45% down to
//!   15% × 15%); the engine adds its own `*` roll-up. Users are grouped by cohort; a
//!   user never changes cohort.
//! - **Population**: `sessions_per_window × windows_per_day / sessions_per_user_per_day`
//!   users (384,000 by default), each with a stable `user_id` and an activity
//!   `a ~ Gamma(activity_shape, 1/activity_shape)` (mean 1, heavy-tailed).
//! - **Sessions**: per cohort and window a Poisson process of rate
//!   `base_c × diurnal(region, hour)`, each session given to a user of the cohort with
//!   probability proportional to activity (so each user's sessions per window are
//!   Poisson(activity × diurnal × rate), independent). `diurnal = 1 + A·cos(2π(h − peak)/24)`
//!   in the region's local time (mean 1 over a day).
//! - **Per-user propensities**: error multiplier `g ~ Gamma(error_shape)` (mean 1: most
//!   users rarely fail, a few fail very often) with per-attempt error probability
//!   `min(error_rate × g, max_error_p)`; completion `~ Beta` (mean `completion_mean`);
//!   latency multiplier `~ LogNormal(0, latency_user_sigma)` (persistently slow users);
//!   support propensity `support_rate × Gamma(support_shape)`.
//! - **A session**: EXPOSURE (product, journey checkout); with `checkout_share` a
//!   checkout: STARTED, then an error (errors, service checkout) with the user's error
//!   probability; after an error the user retries (another STARTED) with
//!   `retry_after_error`, up to `max_attempts`; the last attempt ends COMPLETED (with the
//!   user's completion probability) or ABANDONED, with `latency_ms` =
//!   `latency_median_ms × user multiplier × LogNormal(0, latency_checkout_sigma)`, or
//!   FAILED when it errored. A support contact (TICKET / CHAT / CALL) follows within
//!   20 minutes with probability `user support propensity + support_per_error × errors`.
//! - **Assignment**: per user and persistent, `hash(user, flag) < share × bias` →
//!   treatment, else control; `share` is the percent the (simulated) flag platform
//!   applies to the user's cohort, set by the caller ([`Rollout::set_share`]), `bias`
//!   models a broken assignment (0.92 at 50% = a 46/54 split of users).
//! - **Regressions** ([`Regression`]), treatment only, from window `onset`: every
//!   user's error probability × `error_factor`; `tail_fraction` of checkouts
//!   `tail_factor` × slower, drawn only among checkouts slower than the median, so the
//!   median stays where it was and only the tail moves (8% × 3 → p95 about +50%);
//!   optionally in one platform only (its three cohorts).
//!
//! Events are handed to a sink as [`EventRef`]s borrowing the rollout's buffers: no
//! allocation per event.

use std::ops::Range;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use smallvec::smallvec;

use crate::model::{Body, Channel, EventRef, FlagRef, Outcome};
use crate::sim::{PLATFORMS, REGIONS};

/// Platform × region cohorts.
pub const COHORTS: usize = PLATFORMS.len() * REGIONS.len();

/// Cohort `c` is platform `c / 3`, region `c % 3`; its name as the engine spells it
/// with `cohort_by = ["platform", "region"]` (attributes sorted by name).
pub const COHORT_NAMES: [&str; COHORTS] = [
    "platform=ios,region=eu",
    "platform=ios,region=us",
    "platform=ios,region=apac",
    "platform=android,region=eu",
    "platform=android,region=us",
    "platform=android,region=apac",
    "platform=mobile-web,region=eu",
    "platform=mobile-web,region=us",
    "platform=mobile-web,region=apac",
    "platform=desktop-web,region=eu",
    "platform=desktop-web,region=us",
    "platform=desktop-web,region=apac",
];

pub const JOURNEY: &str = "checkout";
pub const SERVICE: &str = "checkout";
const ERROR_CLASSES: [(&str, i32); 3] = [
    ("PaymentTimeout", 504),
    ("PaymentDeclined", 402),
    ("Upstream", 502),
];
const SUPPORT_CHANNELS: [Channel; 3] = [Channel::Ticket, Channel::Chat, Channel::Call];
/// `user_id`s are `u` + 12 hex digits.
const ID_LEN: usize = 13;

/// The traffic model's parameters (see the module doc); `Default` is the benchmark's.
#[derive(Debug, Clone, PartialEq)]
pub struct TrafficModel {
    pub window_ms: i64,
    pub windows_per_day: u32,
    /// Mean sessions per window over a day, all cohorts (both arms).
    pub sessions_per_window: f64,
    /// Mean sessions per user per day: sets the population size.
    pub sessions_per_user_per_day: f64,
    pub platform_share: [f64; 4],
    pub region_share: [f64; 3],
    /// Local time = UTC + this, per region.
    pub region_utc_offset_h: [f64; 3],
    /// Day/night swing of volume: 1 ± this.
    pub diurnal_amplitude: f64,
    /// Local hour of peak volume.
    pub peak_local_hour: f64,
    /// Gamma shape of user activity (mean 1); smaller = heavier tail.
    pub activity_shape: f64,
    /// Share of sessions that start a checkout.
    pub checkout_share: f64,
    /// Mean per-attempt error probability.
    pub error_rate: f64,
    /// Gamma shape of the per-user error multiplier (mean 1).
    pub error_shape: f64,
    pub max_error_p: f64,
    pub retry_after_error: f64,
    pub max_attempts: u32,
    /// Per-user completion probability ~ Beta(mean × conc, (1 − mean) × conc).
    pub completion_mean: f64,
    pub completion_concentration: f64,
    pub latency_median_ms: f64,
    /// Sigma of the log of the per-user latency multiplier.
    pub latency_user_sigma: f64,
    /// Sigma of the log of each checkout's latency around the user's.
    pub latency_checkout_sigma: f64,
    /// Mean per-session support contact probability (without errors).
    pub support_rate: f64,
    /// Gamma shape of the per-user support propensity.
    pub support_shape: f64,
    /// Added contact probability per error in the session.
    pub support_per_error: f64,
    /// Draw every user's assignment afresh each window instead of once per user and
    /// flag (not how a flag platform assigns): measures what persistent assignment,
    /// which makes consecutive windows' arms the same users, costs a test that treats
    /// windows as independent.
    pub redraw_assignment_each_window: bool,
}

impl Default for TrafficModel {
    fn default() -> Self {
        TrafficModel {
            window_ms: 15 * 60_000,
            windows_per_day: 96,
            sessions_per_window: 12_000.0,
            sessions_per_user_per_day: 4.0,
            platform_share: [0.30, 0.35, 0.15, 0.20],
            region_share: [0.40, 0.45, 0.15],
            region_utc_offset_h: [1.0, -5.0, 8.0],
            diurnal_amplitude: 0.6,
            peak_local_hour: 20.0,
            activity_shape: 0.25,
            checkout_share: 0.75,
            error_rate: 0.01,
            error_shape: 0.12,
            max_error_p: 0.5,
            retry_after_error: 0.7,
            max_attempts: 4,
            completion_mean: 0.6,
            completion_concentration: 5.0,
            latency_median_ms: 420.0,
            latency_user_sigma: 0.3,
            latency_checkout_sigma: 0.68,
            support_rate: 0.003,
            support_shape: 0.5,
            support_per_error: 0.05,
            redraw_assignment_each_window: false,
        }
    }
}

impl TrafficModel {
    /// Mean sessions per window of cohort `c` over a day.
    pub fn cohort_rate(&self, c: usize) -> f64 {
        self.sessions_per_window
            * self.platform_share[c / REGIONS.len()]
            * self.region_share[c % REGIONS.len()]
    }

    /// Volume factor of region `r` for the window starting at `start_ms` (UTC), mean 1
    /// over a day.
    pub fn diurnal(&self, r: usize, start_ms: i64) -> f64 {
        let mid_h = (start_ms + self.window_ms / 2) as f64 / 3_600_000.0;
        let local = mid_h + self.region_utc_offset_h[r];
        let phase = 2.0 * std::f64::consts::PI * (local - self.peak_local_hour) / 24.0;
        1.0 + self.diurnal_amplitude * phase.cos()
    }

    /// Users of cohort `c` in the population.
    pub fn cohort_users(&self, c: usize) -> usize {
        let per_day = self.cohort_rate(c) * f64::from(self.windows_per_day);
        ((per_day / self.sessions_per_user_per_day).round() as usize).max(1)
    }
}

/// A change in treatment from window `onset` on; `Default` = none.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Regression {
    pub onset: u32,
    /// Multiplies every treatment user's per-attempt error probability.
    pub error_factor: f64,
    /// Share of treatment checkouts made `tail_factor` × slower, drawn among those
    /// slower than the median (so the median does not move).
    pub tail_fraction: f64,
    pub tail_factor: f64,
    /// Confines the regression to one platform (an index into [`PLATFORMS`]); `None`:
    /// every cohort.
    pub platform: Option<usize>,
}

impl Default for Regression {
    fn default() -> Self {
        Regression {
            onset: u32::MAX,
            error_factor: 1.0,
            tail_fraction: 0.0,
            tail_factor: 1.0,
            platform: None,
        }
    }
}

/// Per-user state, fixed for the rollout.
#[derive(Debug, Clone, Copy)]
struct User {
    /// hash(user, flag) as a fraction of 2^32: treatment iff below share × bias × 2^32.
    assign: u32,
    p_error: f32,
    p_complete: f32,
    latency_mult: f32,
    p_support: f32,
}

/// Walker/Vose alias table: O(1) draws proportional to weights.
#[derive(Debug, Clone)]
struct Alias {
    prob: Vec<f32>,
    alias: Vec<u32>,
}

impl Alias {
    fn new(weights: &[f64]) -> Alias {
        let n = weights.len();
        let total: f64 = weights.iter().sum();
        let mut scaled: Vec<f64> = weights.iter().map(|w| w * n as f64 / total).collect();
        let mut prob = vec![1.0f32; n];
        let mut alias: Vec<u32> = (0..n as u32).collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) =
            (0..n).partition(|&i| scaled[i] < 1.0);
        while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
            prob[s] = scaled[s] as f32;
            alias[s] = l as u32;
            scaled[l] -= 1.0 - scaled[s];
            if scaled[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        Alias { prob, alias }
    }

    fn draw(&self, rng: &mut SmallRng) -> usize {
        let i = rng.random_range(0..self.prob.len());
        if rng.random::<f32>() < self.prob[i] {
            i
        } else {
            self.alias[i] as usize
        }
    }
}

/// The persistent users of one rollout, grouped by cohort.
#[derive(Debug, Clone)]
pub struct Population {
    users: Vec<User>,
    /// `user_id`s, `ID_LEN` bytes each, in user order.
    ids: String,
    /// Activity of each user (for diagnostics).
    activity: Vec<f32>,
    ranges: [Range<u32>; COHORTS],
    alias: Vec<Alias>,
}

impl Population {
    /// Draws the population for flag `flag_key` (the assignment hash depends on it).
    pub fn new(model: &TrafficModel, flag_key: &str, rng: &mut SmallRng) -> Population {
        let total: usize = (0..COHORTS).map(|c| model.cohort_users(c)).sum();
        let mut users = Vec::with_capacity(total);
        let mut ids = String::with_capacity(total * ID_LEN);
        let mut activity = Vec::with_capacity(total);
        let mut alias = Vec::with_capacity(COHORTS);
        let ranges = std::array::from_fn(|c| {
            let start = users.len() as u32;
            let n = model.cohort_users(c);
            let mut weights = Vec::with_capacity(n);
            let flag = hash_str(flag_key);
            let (ca, cb) = (
                model.completion_mean * model.completion_concentration,
                (1.0 - model.completion_mean) * model.completion_concentration,
            );
            for _ in 0..n {
                let key: u64 = rng.random::<u64>() & 0xFFFF_FFFF_FFFF;
                push_id(&mut ids, key);
                let a = gamma(rng, model.activity_shape) / model.activity_shape;
                weights.push(a);
                activity.push(a as f32);
                let g = gamma(rng, model.error_shape) / model.error_shape;
                let (x, y) = (gamma(rng, ca), gamma(rng, cb));
                let s = gamma(rng, model.support_shape) / model.support_shape;
                users.push(User {
                    assign: (splitmix(key ^ flag) >> 32) as u32,
                    p_error: (model.error_rate * g).min(model.max_error_p) as f32,
                    p_complete: if x + y > 0.0 { x / (x + y) } else { 0.5 } as f32,
                    latency_mult: (model.latency_user_sigma * normal(rng)).exp() as f32,
                    p_support: (model.support_rate * s).min(0.5) as f32,
                });
            }
            alias.push(Alias::new(&weights));
            start..users.len() as u32
        });
        Population {
            users,
            ids,
            activity,
            ranges,
            alias,
        }
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// The users of cohort `c` (indices).
    pub fn cohort(&self, c: usize) -> Range<u32> {
        self.ranges[c].clone()
    }

    pub fn user_id(&self, user: u32) -> &str {
        let i = user as usize * ID_LEN;
        &self.ids[i..i + ID_LEN]
    }

    pub fn activity(&self, user: u32) -> f64 {
        f64::from(self.activity[user as usize])
    }

    /// Whether `user` is in treatment at `share` (0..=1) with assignment `bias`.
    pub fn treated(&self, user: u32, share: f64, bias: f64) -> bool {
        treated(self.users[user as usize].assign, share * bias)
    }
}

fn treated(assign: u32, share: f64) -> bool {
    (assign as f64) < share * 4_294_967_296.0
}

/// What the sink learns besides the event: who produced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Index of the user in the population.
    pub user: u32,
    /// Cohort index (see [`COHORT_NAMES`]).
    pub cohort: u8,
    pub treatment: bool,
}

/// Counts of one generated window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowCounts {
    pub sessions: u64,
    pub treatment_sessions: u64,
    pub events: u64,
}

/// One flag's rollout over a population: generates window after window.
pub struct Rollout {
    pub model: TrafficModel,
    pop: Population,
    rng: SmallRng,
    flag_key: String,
    treatment: String,
    control: String,
    /// Applied treatment share (0..=1) per cohort.
    share: [f64; COHORTS],
    bias: f64,
    pub regression: Regression,
    /// Event ids: a per-rollout prefix and a counter.
    id_prefix: u32,
    seq: u64,
}

impl Rollout {
    /// A rollout of flag `flag_key` with variants `treatment` / `control`, every cohort
    /// at `share` (0..=1), over a fresh population drawn from `seed`.
    pub fn new(
        model: TrafficModel,
        flag_key: &str,
        treatment: &str,
        control: &str,
        share: f64,
        seed: u64,
    ) -> Rollout {
        let mut rng = SmallRng::seed_from_u64(seed);
        let pop = Population::new(&model, flag_key, &mut rng);
        Rollout {
            model,
            pop,
            id_prefix: rng.random(),
            rng,
            flag_key: flag_key.into(),
            treatment: treatment.into(),
            control: control.into(),
            share: [share; COHORTS],
            bias: 1.0,
            regression: Regression::default(),
            seq: 0,
        }
    }

    pub fn population(&self) -> &Population {
        &self.pop
    }

    /// The share (0..=1) the flag platform applies to cohort `c` from the next window.
    pub fn set_share(&mut self, c: usize, share: f64) {
        self.share[c] = share.clamp(0.0, 1.0);
    }

    pub fn share(&self, c: usize) -> f64 {
        self.share[c]
    }

    /// A broken assignment: treatment iff hash < share × bias (1 = correct).
    pub fn set_bias(&mut self, bias: f64) {
        self.bias = bias;
    }

    /// Generates window `w` (starting at `start_ms`) and hands every event to `sink`.
    /// Sessions are in time order per cohort, cohorts one after the other; a session
    /// near the end of the window may spill a few events into the next one, support
    /// contacts up to 20 minutes.
    pub fn window<F>(&mut self, w: u32, start_ms: i64, mut sink: F) -> WindowCounts
    where
        F: FnMut(&EventRef<'_>, Meta),
    {
        let Rollout {
            model,
            pop,
            rng,
            flag_key,
            treatment,
            control,
            share,
            bias,
            regression,
            id_prefix,
            seq,
        } = self;
        let m = &*model;
        let reg = if w >= regression.onset {
            *regression
        } else {
            Regression::default()
        };
        let mut counts = WindowCounts::default();
        let mut id_buf = [0u8; 17];
        write_hex(&mut id_buf[..8], u64::from(*id_prefix), 8);
        id_buf[8] = b'-';
        let window_ms = m.window_ms as f64;
        for (c, cohort_share) in share.iter().enumerate() {
            let (pi, ri) = (c / REGIONS.len(), c % REGIONS.len());
            let reg = if reg.platform.is_none_or(|p| p == pi) {
                reg
            } else {
                Regression::default()
            };
            let tail_p = (reg.tail_fraction * 2.0).min(1.0);
            let (platform, region) = (PLATFORMS[pi], REGIONS[ri]);
            let rate = m.cohort_rate(c) * m.diurnal(ri, start_ms);
            let range = pop.ranges[c].clone();
            let threshold = cohort_share * *bias;
            let mut t = 0.0f64;
            loop {
                // Poisson arrivals: exponential gaps in units of the window.
                t += -(1.0 - rng.random::<f64>()).ln() / rate;
                if t >= 1.0 {
                    break;
                }
                let local = pop.alias[c].draw(rng) as u32;
                let user = range.start + local;
                let u = pop.users[user as usize];
                let assign = match m.redraw_assignment_each_window {
                    false => u.assign,
                    true => (splitmix((u64::from(u.assign) << 32) ^ start_ms as u64) >> 32) as u32,
                };
                let treat = treated(assign, threshold);
                let meta = Meta {
                    user,
                    cohort: c as u8,
                    treatment: treat,
                };
                let variant = if treat {
                    treatment.as_str()
                } else {
                    control.as_str()
                };
                counts.sessions += 1;
                counts.treatment_sessions += u64::from(treat);
                let uid = pop.user_id(user);
                let t0 = start_ms + (t * window_ms) as i64;
                let mut emit = |ts: i64, kind: Kind, sink: &mut F| {
                    let body = match kind {
                        Kind::Product(outcome, latency_ms) => Body::Product {
                            journey: JOURNEY,
                            step: None,
                            outcome,
                            latency_ms,
                            value: None,
                        },
                        Kind::Error(error_class, status, latency) => Body::Error {
                            service: SERVICE,
                            error_class,
                            status_code: Some(status),
                            fatal: false,
                            latency_ms: Some(latency),
                        },
                        Kind::Support(channel) => Body::Support {
                            channel,
                            csat: None,
                            sentiment: None,
                            tags: smallvec![JOURNEY],
                        },
                    };
                    *seq += 1;
                    write_hex(&mut id_buf[9..], *seq, 8);
                    let ev = EventRef {
                        event_id: std::str::from_utf8(&id_buf).unwrap_or("sim"),
                        timestamp: ts,
                        flags: smallvec![FlagRef {
                            key: flag_key.as_str(),
                            variant,
                        }],
                        attributes: smallvec![("platform", platform), ("region", region)],
                        user_id: Some(uid),
                        body,
                    };
                    counts.events += 1;
                    sink(&ev, meta);
                };
                emit(t0, Kind::Product(Outcome::Exposure, None), &mut sink);
                let mut errors = 0u32;
                if rng.random::<f64>() < m.checkout_share {
                    let p_err = if treat {
                        (f64::from(u.p_error) * reg.error_factor).min(0.95)
                    } else {
                        f64::from(u.p_error)
                    };
                    let mut ts = t0 + rng.random_range(2_000..60_000);
                    for attempt in 1..=m.max_attempts {
                        emit(ts, Kind::Product(Outcome::Started, None), &mut sink);
                        let mut latency = m.latency_median_ms
                            * f64::from(u.latency_mult)
                            * (m.latency_checkout_sigma * normal(rng)).exp();
                        if treat
                            && tail_p > 0.0
                            && latency >= m.latency_median_ms
                            && rng.random::<f64>() < tail_p
                        {
                            latency *= reg.tail_factor;
                        }
                        let end = ts + latency as i64;
                        if rng.random::<f64>() < p_err {
                            errors += 1;
                            let (class, status) = ERROR_CLASSES[rng.random_range(0..3)];
                            emit(end, Kind::Error(class, status, latency), &mut sink);
                            if attempt < m.max_attempts && rng.random::<f64>() < m.retry_after_error
                            {
                                ts = end + rng.random_range(3_000..30_000);
                                continue;
                            }
                            emit(
                                end,
                                Kind::Product(Outcome::Failed, Some(latency)),
                                &mut sink,
                            );
                            break;
                        }
                        let outcome = if rng.random::<f32>() < u.p_complete {
                            Outcome::Completed
                        } else {
                            Outcome::Abandoned
                        };
                        emit(end, Kind::Product(outcome, Some(latency)), &mut sink);
                        break;
                    }
                }
                let p_support = f64::from(u.p_support) + m.support_per_error * f64::from(errors);
                if rng.random::<f64>() < p_support {
                    let ts = t0 + rng.random_range(60_000..20 * 60_000);
                    let channel = SUPPORT_CHANNELS[rng.random_range(0..3)];
                    emit(ts, Kind::Support(channel), &mut sink);
                }
            }
        }
        counts
    }
}

/// What to emit; the body is built inside the emitter, at the event's lifetime
/// (`EventRef` is invariant in it).
#[derive(Clone, Copy)]
enum Kind {
    Product(Outcome, Option<f64>),
    /// error class, status code, latency
    Error(&'static str, i32, f64),
    Support(Channel),
}

fn write_hex(out: &mut [u8], mut v: u64, digits: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..digits).rev() {
        out[i] = HEX[(v & 15) as usize];
        v >>= 4;
    }
}

fn push_id(ids: &mut String, key: u64) {
    let mut buf = [0u8; ID_LEN];
    buf[0] = b'u';
    write_hex(&mut buf[1..], key, ID_LEN - 1);
    ids.push_str(std::str::from_utf8(&buf).unwrap_or("u000000000000"));
}

pub fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn hash_str(s: &str) -> u64 {
    s.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)
    })
}

/// Standard normal (Marsaglia's polar method).
pub fn normal(rng: &mut SmallRng) -> f64 {
    loop {
        let u = rng.random::<f64>() * 2.0 - 1.0;
        let v = rng.random::<f64>() * 2.0 - 1.0;
        let s = u * u + v * v;
        if s > 0.0 && s < 1.0 {
            return u * (-2.0 * s.ln() / s).sqrt();
        }
    }
}

/// Gamma(shape, scale 1) (Marsaglia & Tsang; shape < 1 by boosting).
pub fn gamma(rng: &mut SmallRng, shape: f64) -> f64 {
    if shape < 1.0 {
        let u: f64 = rng.random();
        return gamma(rng, shape + 1.0) * u.powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = normal(rng);
        let v = 1.0 + c * x;
        if v <= 0.0 {
            continue;
        }
        let v = v * v * v;
        let u: f64 = rng.random();
        if u < 1.0 - 0.0331 * x * x * x * x || u.ln() < 0.5 * x * x + d * (1.0 - v + v.ln()) {
            return d * v;
        }
    }
}

/// One day of a rollout's traffic at a fixed split, summarised: the properties a
/// per-event analysis gets wrong. Used by the tests and the benchmark's `--describe`.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub users: usize,
    /// Users with at least one event in the period.
    pub active_users: usize,
    pub windows: u32,
    pub sessions: u64,
    pub events: u64,
    /// Sessions per window: min, mean, max.
    pub sessions_per_window: (u64, f64, u64),
    /// Share of events from the most active 10% of active users.
    pub top10_event_share: f64,
    /// Share of users (of the population) in treatment.
    pub treatment_user_share: f64,
    /// Share of exposures in treatment.
    pub treatment_exposure_share: f64,
    /// Checkout errors per started checkout.
    pub error_rate: f64,
    /// Variance of the error count's per-user clustered estimate over the binomial
    /// variance (Σ(e_u − r·s_u)² / (r(1−r)·Σs_u)), within one window (mean over
    /// windows) and over the whole period.
    pub error_design_effect_window: f64,
    pub error_design_effect_period: f64,
    /// Variance of the treatment exposure count when users (not exposures) are
    /// randomised, over the binomial variance: Σn_u² / Σn_u, per window (mean) and over
    /// the period.
    pub exposure_inflation_window: f64,
    pub exposure_inflation_period: f64,
}

/// Generates `windows` windows of `model` at treatment `share` and summarises them.
pub fn summarize(model: &TrafficModel, share: f64, windows: u32, seed: u64) -> Summary {
    let mut r = Rollout::new(model.clone(), "flag", "on", "off", share, seed);
    let n = r.population().len();
    // Per user: [events, exposures, started, errors] over the period and in the window.
    let mut period = vec![[0u64; 4]; n];
    let mut win = vec![[0u64; 4]; n];
    let mut touched: Vec<u32> = Vec::new();
    let (mut t_exp, mut all_exp) = (0u64, 0u64);
    let mut per_window = Vec::new();
    let (mut de_sum, mut infl_sum, mut de_n) = (0.0, 0.0, 0u32);
    let start = 1_700_000_000_000 / model.window_ms * model.window_ms;
    for w in 0..windows {
        let counts = r.window(w, start + i64::from(w) * model.window_ms, |ev, meta| {
            let slot = match ev.body {
                Body::Product {
                    outcome: Outcome::Exposure,
                    ..
                } => Some(1),
                Body::Product {
                    outcome: Outcome::Started,
                    ..
                } => Some(2),
                Body::Error { .. } => Some(3),
                _ => None,
            };
            let u = meta.user as usize;
            if win[u] == [0; 4] {
                touched.push(meta.user);
            }
            for acc in [&mut period[u], &mut win[u]] {
                acc[0] += 1;
                if let Some(s) = slot {
                    acc[s] += 1;
                }
            }
            if slot == Some(1) {
                all_exp += 1;
                t_exp += u64::from(meta.treatment);
            }
        });
        per_window.push(counts.sessions);
        let rows: Vec<[u64; 4]> = touched.iter().map(|&u| win[u as usize]).collect();
        if let Some(de) = design_effect(&rows) {
            de_sum += de;
            infl_sum += inflation(&rows);
            de_n += 1;
        }
        for &u in &touched {
            win[u as usize] = [0; 4];
        }
        touched.clear();
    }
    let active: Vec<[u64; 4]> = period.iter().copied().filter(|p| p[0] > 0).collect();
    let mut events: Vec<u64> = active.iter().map(|p| p[0]).collect();
    events.sort_unstable_by(|a, b| b.cmp(a));
    let total: u64 = events.iter().sum();
    let top = events.len().div_ceil(10);
    let (started, errors) = active.iter().fold((0, 0), |(s, e), p| (s + p[2], e + p[3]));
    let treated_users = (0..n as u32)
        .filter(|&u| r.population().treated(u, share, 1.0))
        .count();
    Summary {
        users: n,
        active_users: active.len(),
        windows,
        sessions: per_window.iter().sum(),
        events: total,
        sessions_per_window: (
            per_window.iter().copied().min().unwrap_or(0),
            per_window.iter().sum::<u64>() as f64 / f64::from(windows.max(1)),
            per_window.iter().copied().max().unwrap_or(0),
        ),
        top10_event_share: events[..top].iter().sum::<u64>() as f64 / total.max(1) as f64,
        treatment_user_share: treated_users as f64 / n.max(1) as f64,
        treatment_exposure_share: t_exp as f64 / all_exp.max(1) as f64,
        error_rate: errors as f64 / started.max(1) as f64,
        error_design_effect_window: de_sum / f64::from(de_n.max(1)),
        error_design_effect_period: design_effect(&active).unwrap_or(f64::NAN),
        exposure_inflation_window: infl_sum / f64::from(de_n.max(1)),
        exposure_inflation_period: inflation(&active),
    }
}

/// Σ(e − r·s)² / (r(1−r)·Σs) over users `[_, _, s, e]`.
fn design_effect(rows: &[[u64; 4]]) -> Option<f64> {
    let (s, e) = rows
        .iter()
        .fold((0u64, 0u64), |(s, e), p| (s + p[2], e + p[3]));
    if s == 0 || e == 0 {
        return None;
    }
    let r = e as f64 / s as f64;
    let num: f64 = rows
        .iter()
        .map(|p| (p[3] as f64 - r * p[2] as f64).powi(2))
        .sum();
    Some(num / (r * (1.0 - r).max(1e-12) * s as f64))
}

/// Σn² / Σn over users' exposures `[_, n, _, _]`.
fn inflation(rows: &[[u64; 4]]) -> f64 {
    let (s, q) = rows.iter().fold((0.0, 0.0), |(s, q), p| {
        (s + p[1] as f64, q + (p[1] * p[1]) as f64)
    });
    q / s.max(1.0)
}

/// Draws `n` checkout latencies (ms) of the model for random users, with the tail
/// regression applied to every draw when `regression` is set (as for a treatment
/// user after the onset).
pub fn latency_sample(
    model: &TrafficModel,
    regression: Option<&Regression>,
    n: usize,
    seed: u64,
) -> Vec<f64> {
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let user = (model.latency_user_sigma * normal(&mut rng)).exp();
            let mut l = model.latency_median_ms
                * user
                * (model.latency_checkout_sigma * normal(&mut rng)).exp();
            if let Some(r) = regression
                && l >= model.latency_median_ms
                && rng.random::<f64>() < (r.tail_fraction * 2.0).min(1.0)
            {
                l *= r.tail_factor;
            }
            l
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tenth of the benchmark's volume, one day.
    fn small() -> TrafficModel {
        TrafficModel {
            sessions_per_window: 1_200.0,
            ..TrafficModel::default()
        }
    }

    fn quantile(v: &mut [f64], q: f64) -> f64 {
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * q).round() as usize]
    }

    #[test]
    fn activity_is_heavy_tailed_and_users_cluster() {
        let s = summarize(&small(), 0.5, 96, 1);
        assert_eq!(s.users, 28_800);
        assert!(
            (s.sessions_per_window.1 - 1_200.0).abs() < 60.0,
            "{:?}",
            s.sessions_per_window
        );
        // Day and night: the busiest window has far more sessions than the quietest.
        assert!(
            s.sessions_per_window.2 as f64 > 1.5 * s.sessions_per_window.0 as f64,
            "{:?}",
            s.sessions_per_window
        );
        assert!(s.top10_event_share > 0.40, "{s:?}");
        assert!((s.error_rate - 0.01).abs() < 0.003, "{s:?}");
        // Errors cluster within users: well above the binomial over a day.
        assert!(s.error_design_effect_period > 1.5, "{s:?}");
        assert!(s.exposure_inflation_period > 2.0, "{s:?}");
    }

    #[test]
    fn treatment_share_of_users_matches_the_set_share() {
        let model = small();
        for (seed, share, bias) in [(2, 0.5, 1.0), (3, 0.05, 1.0), (4, 0.5, 0.92)] {
            let r = Rollout::new(model.clone(), "checkout-redesign", "on", "off", share, seed);
            let pop = r.population();
            let n = pop.len() as f64;
            let t = (0..pop.len() as u32)
                .filter(|&u| pop.treated(u, share, bias))
                .count() as f64;
            let expect = share * bias;
            let sd = (expect * (1.0 - expect) / n).sqrt();
            assert!(
                (t / n - expect).abs() < 4.0 * sd,
                "share {share} bias {bias}: {}",
                t / n
            );
        }
        // Assignment is persistent: a larger share keeps every treated user treated.
        let r = Rollout::new(model, "f", "on", "off", 0.05, 5);
        let pop = r.population();
        assert!(
            (0..pop.len() as u32).all(|u| !pop.treated(u, 0.05, 1.0) || pop.treated(u, 0.25, 1.0))
        );
    }

    #[test]
    fn tail_regression_moves_p95_not_the_median() {
        let model = TrafficModel::default();
        let reg = Regression {
            onset: 0,
            error_factor: 1.0,
            tail_fraction: 0.08,
            tail_factor: 3.0,
            platform: None,
        };
        let mut base = latency_sample(&model, None, 200_000, 6);
        let mut slow = latency_sample(&model, Some(&reg), 200_000, 7);
        let m = quantile(&mut slow, 0.5) / quantile(&mut base, 0.5);
        let p95 = quantile(&mut slow, 0.95) / quantile(&mut base, 0.95);
        assert!((m - 1.0).abs() < 0.02, "median ratio {m}");
        assert!(
            (1.4..1.6).contains(&p95),
            "p95 ratio {p95} (median ratio {m})"
        );
    }

    #[test]
    fn events_carry_the_users_assignment_and_cohort() {
        let mut r = Rollout::new(small(), "f", "on", "off", 0.5, 8);
        r.set_share(0, 1.0);
        r.set_share(1, 0.0);
        let mut seen = [0u64; 3];
        let start = 1_700_000_100_000 / 900_000 * 900_000;
        r.window(0, start, |ev, meta| {
            let variant = ev.flags[0].variant;
            assert_eq!(variant == "on", meta.treatment);
            let name = format!(
                "platform={},region={}",
                ev.attribute("platform").unwrap(),
                ev.attribute("region").unwrap()
            );
            assert_eq!(name, COHORT_NAMES[meta.cohort as usize]);
            assert!(ev.timestamp >= start && ev.timestamp < start + 2 * 900_000);
            match meta.cohort {
                0 => assert!(meta.treatment),
                1 => assert!(!meta.treatment),
                _ => {}
            }
            seen[0] += 1;
            seen[1] += u64::from(ev.source() == crate::model::Source::Errors);
            seen[2] += u64::from(ev.source() == crate::model::Source::Support);
        });
        assert!(seen[0] > 2_000, "{seen:?}");
    }

    /// Persistent assignment keeps every user in one arm across windows; the bench's
    /// `--redraw-assignment` draws it afresh each window at the same share.
    #[test]
    fn assignment_is_persistent_unless_redrawn_each_window() {
        for redraw in [false, true] {
            let model = TrafficModel {
                redraw_assignment_each_window: redraw,
                ..small()
            };
            let mut r = Rollout::new(model, "f", "on", "off", 0.5, 9);
            let start = 1_700_000_100_000 / 900_000 * 900_000;
            let mut arms: [std::collections::HashMap<u32, bool>; 2] = Default::default();
            for (w, arm) in arms.iter_mut().enumerate() {
                r.window(w as u32, start + w as i64 * 900_000, |_, meta| {
                    arm.insert(meta.user, meta.treatment);
                });
                let treated = arm.values().filter(|&&t| t).count();
                let share = treated as f64 / arm.len() as f64;
                assert!((0.45..0.55).contains(&share), "redraw {redraw}: {share}");
            }
            let both: Vec<u32> = arms[0]
                .keys()
                .filter(|u| arms[1].contains_key(u))
                .copied()
                .collect();
            assert!(both.len() > 200, "{}", both.len());
            let switched =
                both.iter().filter(|u| arms[0][u] != arms[1][u]).count() as f64 / both.len() as f64;
            if redraw {
                assert!((0.4..0.6).contains(&switched), "switched {switched}");
            } else {
                assert_eq!(switched, 0.0);
            }
        }
    }
}
