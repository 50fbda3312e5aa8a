//! Tumbling event-time windows of per-(flag, variant, cohort) aggregates.
//!
//! State is a `BTreeMap` keyed by window start (arroyo's shape). An event adds to the
//! cell of cohort `*` and of its own cohort, for every configured flag it carries with
//! the treatment or control variant. `close_until(watermark)` removes and returns every
//! window whose end the watermark has passed, including empty ones, so every window
//! from the first one seen gets exactly one evaluation.

pub mod aggregate;
pub mod cohort;
pub mod watermark;

use std::collections::BTreeMap;

use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;

use smallvec::SmallVec;

use crate::model::{Body, EventRef, Outcome};
use crate::policy::{FieldRef, Flag, Matcher, MetricKind, NumField, Policy};
use aggregate::{Agg, Arm, Contribution, sample_key, unit_hash};
use cohort::CohortTable;
use watermark::PartitionKey;

/// Treatment is arm 0, control arm 1.
pub const TREATMENT: usize = 0;
pub const CONTROL: usize = 1;

/// What happened to a recorded event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Added to at least one flag's cells.
    Accepted,
    /// Carries no configured flag with the treatment or control variant.
    Unmatched,
    /// Its window already closed.
    Late,
}

/// A cohort's two arms in one window.
pub type Cell = [Arm; 2];

struct OpenWindow {
    /// Per flag, per cohort id.
    flags: Vec<Vec<Option<Box<Cell>>>>,
    /// First offset each partition contributed to this window (commit bound).
    first_offsets: HashMap<PartitionKey, i64>,
}

/// A closed window of one flag: every cohort the flag has seen, empty ones included.
#[derive(Debug)]
pub struct ClosedFlag {
    pub cohorts: Vec<(String, Cell)>,
    /// Late events for this flag since the previous close.
    pub late_events: u64,
}

#[derive(Debug)]
pub struct ClosedWindow {
    pub start: i64,
    pub end: i64,
    /// Indexed like `Policy::flags`.
    pub flags: Vec<ClosedFlag>,
    /// The first offset each input partition contributed to the window.
    pub first_offsets: Vec<(PartitionKey, i64)>,
}

pub struct Windows {
    policy: Arc<Policy>,
    size: i64,
    open: BTreeMap<i64, OpenWindow>,
    cohorts: Vec<CohortTable>,
    templates: Vec<Vec<Agg>>,
    flag_index: HashMap<String, usize>,
    /// Every window ending at or before this is closed.
    closed_before: i64,
    late: Vec<u64>,
    /// Per flag, events without the flag's unit field (each counted as its own unit).
    without_unit: Vec<u64>,
    cells: usize,
}

/// Per flag, an empty aggregate per metric of the flag, in the flag's metric order: the
/// layout of every arm of its cells (and of its partials, SPEC §11).
pub fn agg_templates(policy: &Policy) -> Vec<Vec<Agg>> {
    policy
        .flags
        .iter()
        .map(|f| {
            f.metric_ids
                .iter()
                .map(|&m| Agg::new(&policy.metrics[m]))
                .collect()
        })
        .collect()
}

/// Windows between two closes beyond which empty windows are not synthesized (a clock
/// jump of more than a week would otherwise emit thousands of empty evaluations).
const MAX_EMPTY_WINDOWS: i64 = 7 * 96;

impl Windows {
    pub fn new(policy: Arc<Policy>) -> Windows {
        let cap = policy.window.max_cohorts_per_flag;
        let cohorts = policy
            .flags
            .iter()
            .map(|f| CohortTable::new(&f.cohort_by, f.max_cohorts.unwrap_or(cap)))
            .collect();
        let templates = agg_templates(&policy);
        let flag_index = policy
            .flags
            .iter()
            .enumerate()
            .map(|(i, f)| (f.key.clone(), i))
            .collect();
        Windows {
            size: policy.window.size_ms,
            late: vec![0; policy.flags.len()],
            without_unit: vec![0; policy.flags.len()],
            policy,
            open: BTreeMap::new(),
            cohorts,
            templates,
            flag_index,
            closed_before: i64::MIN,
            cells: 0,
        }
    }

    pub fn window_start(&self, t: i64) -> i64 {
        // Saturates within one window of i64::MIN (a garbage timestamp must not overflow).
        t.div_euclid(self.size).saturating_mul(self.size)
    }

    /// Adds one event to its window's cells.
    pub fn record(&mut self, p: PartitionKey, offset: i64, ev: &EventRef<'_>) -> Recorded {
        let start = self.window_start(ev.timestamp);
        let mut targets: SmallVec<[(usize, usize); 4]> = SmallVec::new();
        for f in &ev.flags {
            let Some(&fi) = self.flag_index.get(f.key) else {
                continue;
            };
            let flag = &self.policy.flags[fi];
            let arm = if f.variant == flag.treatment {
                TREATMENT
            } else if flag.control.as_deref() == Some(f.variant) {
                CONTROL
            } else {
                continue;
            };
            if !targets.iter().any(|(x, _)| *x == fi) {
                targets.push((fi, arm));
            }
        }
        if targets.is_empty() {
            return Recorded::Unmatched;
        }
        if start.saturating_add(self.size) <= self.closed_before {
            for (fi, _) in targets {
                self.late[fi] += 1;
            }
            return Recorded::Late;
        }
        let nflags = self.policy.flags.len();
        let window = self.open.entry(start).or_insert_with(|| OpenWindow {
            flags: (0..nflags).map(|_| Vec::new()).collect(),
            first_offsets: HashMap::default(),
        });
        window.first_offsets.entry(p).or_insert(offset);
        for (fi, arm) in targets {
            let flag = &self.policy.flags[fi];
            let contributions = contributions(&self.policy, flag, ev);
            // The randomisation unit; an event without one is its own unit (counted).
            let unit = match field_str(ev, &flag.unit) {
                Some(u) => unit_hash(u.as_bytes()),
                None => {
                    self.without_unit[fi] += 1;
                    unit_hash(ev.event_id.as_bytes())
                }
            };
            let exposure = matches!(
                ev.body,
                Body::Product {
                    outcome: Outcome::Exposure,
                    ..
                }
            );
            let table = &mut self.cohorts[fi];
            let ids: SmallVec<[u32; 2]> = if table.has_cohorts() {
                SmallVec::from_buf([0, table.lookup(ev)])
            } else {
                SmallVec::from_slice(&[0])
            };
            let cells = &mut window.flags[fi];
            for id in ids {
                let id = id as usize;
                if cells.len() <= id {
                    cells.resize_with(id + 1, || None);
                }
                let cell = cells[id].get_or_insert_with(|| {
                    self.cells += 2;
                    Box::new([Arm::new(&self.templates[fi]), Arm::new(&self.templates[fi])])
                });
                let a = &mut cell[arm];
                a.events += 1;
                a.exposures += u64::from(exposure);
                if exposure {
                    a.units.insert(sample_key(unit));
                }
                for (slot, c) in &contributions {
                    a.aggs[*slot].apply(*c, unit);
                }
            }
        }
        Recorded::Accepted
    }

    /// Removes and returns every window whose end is at or before `watermark`, in
    /// order, with empty windows between the first window seen and the watermark.
    pub fn close_until(&mut self, watermark: i64) -> Vec<ClosedWindow> {
        if watermark == i64::MIN {
            return Vec::new();
        }
        // Windows [s, s + size) with s + size <= close_end close.
        let close_end = self.window_start(watermark);
        if close_end <= self.closed_before {
            return Vec::new();
        }
        let first_open = self.open.keys().next().copied();
        let mut start = match (self.closed_before, first_open) {
            (i64::MIN, Some(s)) => s,
            (i64::MIN, None) => return Vec::new(),
            (c, Some(s)) => c.min(s),
            (c, None) => c,
        };
        let mut out = Vec::new();
        while start.saturating_add(self.size) <= close_end {
            // An empty stretch of more than a week (a clock jump, or one event with a
            // garbage timestamp before the others): skip to the next open window.
            let next = self
                .open
                .range(start..)
                .next()
                .map_or(close_end - self.size, |(&s, _)| {
                    s.min(close_end - self.size)
                });
            if next.saturating_sub(start) / self.size > MAX_EMPTY_WINDOWS {
                start = next;
            }
            let window = self.open.remove(&start);
            out.push(self.closed(start, window));
            start = start.saturating_add(self.size);
        }
        if out.is_empty() && self.closed_before == i64::MIN {
            // Nothing has closed yet: the first window closes when the watermark passes it.
            return out;
        }
        if let Some(last) = out.last_mut() {
            for (fi, f) in last.flags.iter_mut().enumerate() {
                f.late_events = std::mem::take(&mut self.late[fi]);
            }
        }
        self.closed_before = close_end;
        out
    }

    fn closed(&mut self, start: i64, window: Option<OpenWindow>) -> ClosedWindow {
        let (mut flags_cells, first_offsets) = window
            .map(|w| {
                let mut first: Vec<_> = w.first_offsets.into_iter().collect();
                first.sort_unstable();
                (w.flags, first)
            })
            .unwrap_or_default();
        let mut flags = Vec::with_capacity(self.policy.flags.len());
        for (fi, table) in self.cohorts.iter().enumerate() {
            let mut cells = flags_cells
                .get_mut(fi)
                .map(std::mem::take)
                .unwrap_or_default();
            let mut cohorts = Vec::with_capacity(table.len());
            for id in 0..table.len() {
                let cell = match cells.get_mut(id).and_then(Option::take) {
                    Some(c) => {
                        self.cells -= 2;
                        *c
                    }
                    None => [Arm::new(&self.templates[fi]), Arm::new(&self.templates[fi])],
                };
                cohorts.push((table.name(id as u32).to_string(), cell));
            }
            flags.push(ClosedFlag {
                cohorts,
                late_events: 0,
            });
        }
        ClosedWindow {
            start,
            end: start.saturating_add(self.size),
            flags,
            first_offsets,
        }
    }

    /// Closes every open window (end of replay).
    pub fn close_all(&mut self) -> Vec<ClosedWindow> {
        match self.open.keys().next_back() {
            Some(&last) => self.close_until(last.saturating_add(self.size)),
            None => Vec::new(),
        }
    }

    /// The lowest offset of `p` that an open window still needs (commit bound).
    pub fn min_open_offset(&self, p: PartitionKey) -> Option<i64> {
        self.open
            .values()
            .filter_map(|w| w.first_offsets.get(&p))
            .min()
            .copied()
    }

    /// Drops every open window (partition revoke: state is rebuilt from committed offsets).
    pub fn clear_open(&mut self) {
        self.open.clear();
        self.cells = 0;
    }

    /// Marks windows ending at or before `t` as closed (restart recovery).
    pub fn set_closed_before(&mut self, t: i64) {
        self.closed_before = self.closed_before.max(self.window_start(t));
    }

    pub fn closed_before(&self) -> i64 {
        self.closed_before
    }

    /// Cells (one per variant) currently held in open windows.
    pub fn active_cells(&self) -> usize {
        self.cells
    }

    /// Start of the newest open window.
    pub fn newest_open_start(&self) -> Option<i64> {
        self.open.keys().next_back().copied()
    }

    pub fn open_windows(&self) -> usize {
        self.open.len()
    }

    /// Bytes held by open windows' cells (benchmarks).
    pub fn cell_bytes(&self) -> usize {
        self.open
            .values()
            .flat_map(|w| w.flags.iter().flatten().flatten())
            .map(|c| c.iter().map(Arm::bytes).sum::<usize>())
            .sum()
    }

    /// Per flag (policy order), events that had no value for the flag's unit field.
    pub fn without_unit(&self) -> &[u64] {
        &self.without_unit
    }

    pub fn cohort_overflows(&self) -> u64 {
        self.cohorts.iter().map(|c| c.overflowed).sum()
    }

    pub fn cohort_table(&self, flag: usize) -> Option<&CohortTable> {
        self.cohorts.get(flag)
    }

    pub fn cohort_table_mut(&mut self, flag: usize) -> Option<&mut CohortTable> {
        self.cohorts.get_mut(flag)
    }
}

/// What one event adds to each metric slot of a flag.
fn contributions(
    policy: &Policy,
    flag: &Flag,
    ev: &EventRef<'_>,
) -> SmallVec<[(usize, Contribution); 8]> {
    let mut out = SmallVec::new();
    let source = ev.source();
    for (slot, &m) in flag.metric_ids.iter().enumerate() {
        match &policy.metrics[m].kind {
            MetricKind::Rate {
                numerator,
                denominator,
            } => {
                let num = u8::from(numerator.source == source && matches(numerator, ev));
                let den = u8::from(denominator.source == source && matches(denominator, ev));
                if num + den > 0 {
                    out.push((slot, Contribution::Rate { num, den }));
                }
            }
            MetricKind::Mean { matcher, field } | MetricKind::Quantile { matcher, field, .. } => {
                if matcher.source == source
                    && matches(matcher, ev)
                    && let Some(v) = number(ev, *field).filter(|v| v.is_finite())
                {
                    out.push((slot, Contribution::Value(v)));
                }
            }
        }
    }
    out
}

/// Whether an event of the matcher's source satisfies every condition.
pub fn matches(m: &Matcher, ev: &EventRef<'_>) -> bool {
    m.conditions
        .iter()
        .all(|(field, values)| field_str(ev, field).is_some_and(|v| values.iter().any(|x| x == v)))
}

fn field_str<'a>(ev: &EventRef<'a>, field: &FieldRef) -> Option<&'a str> {
    let bool_str = |b: bool| if b { "true" } else { "false" };
    match (field, &ev.body) {
        (FieldRef::EventId, _) => Some(ev.event_id),
        (FieldRef::UserId, _) => ev.user_id,
        (FieldRef::Attribute(name), _) => ev.attribute(name),
        (FieldRef::Journey, Body::Product { journey, .. }) => Some(journey),
        (FieldRef::Step, Body::Product { step, .. }) => *step,
        (FieldRef::Outcome, Body::Product { outcome, .. }) => Some(outcome.as_str()),
        (FieldRef::Service, Body::Error { service, .. }) => Some(service),
        (FieldRef::ErrorClass, Body::Error { error_class, .. }) => Some(error_class),
        (FieldRef::Fatal, Body::Error { fatal, .. }) => Some(bool_str(*fatal)),
        (FieldRef::Channel, Body::Support { channel, .. }) => Some(channel.as_str()),
        _ => None,
    }
}

fn number(ev: &EventRef<'_>, field: NumField) -> Option<f64> {
    match (field, &ev.body) {
        (
            NumField::LatencyMs,
            Body::Product { latency_ms, .. } | Body::Error { latency_ms, .. },
        ) => *latency_ms,
        (NumField::Value, Body::Product { value, .. }) => *value,
        (NumField::StatusCode, Body::Error { status_code, .. }) => status_code.map(f64::from),
        (NumField::Csat, Body::Support { csat, .. }) => *csat,
        (NumField::Sentiment, Body::Support { sentiment, .. }) => *sentiment,
        _ => None,
    }
}

#[cfg(test)]
mod tests;
