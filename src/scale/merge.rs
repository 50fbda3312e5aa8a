//! The judge stage's merge of partial aggregates (SPEC §11): per flag and window, one
//! partial per input partition; a window closes when every input partition reported it,
//! or `[scale] partials_timeout` after its first partial arrived, and the flag's windows
//! close in order. A partition that reported a later window of the flag counts as
//! having reported the earlier ones: the ingest stage reports each partition's windows
//! in order, from its first record on. Partials are held as they came and merged at the close in
//! (topic, partition) order, so the sums do not depend on arrival order: any number of
//! ingest instances, any rebalance, gives the same merged cell.
//!
//! What a partial is, on arrival:
//! - **merged**: the first of its (flag, window, input partition), window still open;
//! - **duplicate**: that partition already reported the window (an ingest instance
//!   re-emitting after a restart, or this judge re-reading after its own), or the
//!   window was judged with it;
//! - **late**: the window was judged without it (closed by the timeout): dead-lettered;
//! - **invalid**: unknown flag, another policy version, a malformed window or metric
//!   layout: dead-lettered.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use rustc_hash::FxHashMap as HashMap;

use crate::policy::Policy;
use crate::records::InputPosition;
use crate::scale::partial::Partial;
use crate::window::aggregate::{Agg, Arm};
use crate::window::cohort::CohortTable;
use crate::window::{Cell, ClosedFlag};

/// An input partition: (topic, partition).
pub type InputPartition = (String, i32);

/// Judged windows per flag whose included partitions are remembered (a day of
/// 15-minute windows): a partial for an older judged window is told apart by its
/// partials-topic offset alone.
const JUDGED_KEPT: usize = 96;

/// What became of an offered partial.
#[derive(Debug, Clone, PartialEq)]
pub enum Offered {
    Merged,
    Duplicate,
    Late(String),
    Invalid(String),
}

impl Offered {
    pub fn outcome(&self) -> &'static str {
        match self {
            Offered::Merged => "merged",
            Offered::Duplicate => "duplicate",
            Offered::Late(_) => "late",
            Offered::Invalid(_) => "invalid",
        }
    }
}

/// A partial held until its window closes, with where it sits on the partials topic.
struct Held {
    partial: Partial,
    at: (i32, i64),
}

struct Open {
    end: i64,
    /// Wall time (ms) the window's first partial arrived: the timeout counts from it.
    first_arrival: i64,
    last_arrival: Instant,
    parts: BTreeMap<InputPartition, Held>,
}

/// A flag's window ready to judge.
#[derive(Debug)]
pub struct Ready {
    pub flag: usize,
    pub start: i64,
    pub end: i64,
    pub closed: ClosedFlag,
    /// The partials merged: input topic, partition, and how far the ingest stage had
    /// read that partition when it closed the window.
    pub included: Vec<InputPosition>,
    /// Input partitions that had not reported when the timeout closed the window.
    pub missing: Vec<InputPartition>,
    /// When the window's last partial arrived (decision latency).
    pub last_arrival: Instant,
    /// The partials-topic partition the flag's partials were read from.
    pub partials_partition: Option<i32>,
}

pub struct Merger {
    policy: Arc<Policy>,
    flag_index: HashMap<String, usize>,
    templates: Vec<Vec<Agg>>,
    cohorts: Vec<CohortTable>,
    /// Every input partition (from the input topics' metadata); empty while unknown,
    /// then only the timeout closes windows.
    expected: BTreeSet<InputPartition>,
    /// Per flag, open windows by start.
    open: Vec<BTreeMap<i64, Open>>,
    /// Per flag: every window ending at or before this is judged.
    frontier: Vec<i64>,
    /// Per flag, recent judged windows by start: the input partitions included.
    judged: Vec<BTreeMap<i64, BTreeSet<InputPartition>>>,
    /// Per flag: its partials below this partials-topic offset were handled before its
    /// newest judgement (restored from the state; a re-read one is a duplicate).
    handled_until: Vec<i64>,
    /// Per input partition: the end of the newest window it reported.
    reported: BTreeMap<InputPartition, i64>,
    /// Per flag, per input partition: the end of the newest window it reported for the
    /// flag. The ingest stage reports a partition's windows in order, so a partition
    /// that reported a later window has nothing for an earlier one it did not report
    /// (it had no data before it: its first window came later).
    reported_flag: Vec<BTreeMap<InputPartition, i64>>,
    timeout_ms: i64,
}

impl Merger {
    pub fn new(policy: Arc<Policy>) -> Merger {
        let cap = policy.window.max_cohorts_per_flag;
        let n = policy.flags.len();
        Merger {
            flag_index: policy
                .flags
                .iter()
                .enumerate()
                .map(|(i, f)| (f.key.clone(), i))
                .collect(),
            templates: policy
                .flags
                .iter()
                .map(|f| {
                    f.metric_ids
                        .iter()
                        .map(|&m| Agg::new(&policy.metrics[m]))
                        .collect()
                })
                .collect(),
            cohorts: policy
                .flags
                .iter()
                .map(|f| CohortTable::new(&f.cohort_by, f.max_cohorts.unwrap_or(cap)))
                .collect(),
            expected: BTreeSet::new(),
            open: (0..n).map(|_| BTreeMap::new()).collect(),
            frontier: vec![i64::MIN; n],
            judged: (0..n).map(|_| BTreeMap::new()).collect(),
            handled_until: vec![-1; n],
            reported: BTreeMap::new(),
            reported_flag: (0..n).map(|_| BTreeMap::new()).collect(),
            timeout_ms: policy.window.partials_timeout_ms,
            policy,
        }
    }

    /// Sets the input partitions every window waits for.
    pub fn expect(&mut self, partitions: BTreeSet<InputPartition>) {
        self.expected = partitions;
    }

    pub fn expected(&self) -> &BTreeSet<InputPartition> {
        &self.expected
    }

    /// Takes in a restored evaluation (the newest of its flag and cohort): its window is
    /// judged, its cohort keeps its place, and its read positions say which input
    /// partitions it included (`topic` ≠ `partials_topic`) and how far the flag's
    /// partials were handled (`topic` = `partials_topic`).
    pub fn restored(&mut self, e: &crate::records::WindowEvaluation, partials_topic: &str) {
        let Some(&fi) = self.flag_index.get(&e.flag_key) else {
            return;
        };
        if e.cohort != crate::window::cohort::ALL {
            self.cohorts[fi].intern(e.cohort.clone());
        }
        self.frontier[fi] = self.frontier[fi].max(e.window_end);
        let included = self.judged[fi].entry(e.window_start).or_default();
        for p in &e.input_positions {
            if p.topic == partials_topic {
                self.handled_until[fi] = self.handled_until[fi].max(p.read_until);
            } else {
                included.insert((p.topic.clone(), p.partition));
            }
        }
    }

    /// A window judged before (a state reset's): nothing of it is judged again.
    pub fn judged_until(&mut self, flag_key: &str, window_end: i64) {
        if let Some(&fi) = self.flag_index.get(flag_key) {
            self.frontier[fi] = self.frontier[fi].max(window_end);
        }
    }

    /// Offers a partial that sits at `at` = (partition, offset) of the partials topic,
    /// arriving at wall time `now`.
    pub fn offer(&mut self, partial: Partial, at: (i32, i64), now: i64) -> Offered {
        let Some(&fi) = self.flag_index.get(&partial.flag_key) else {
            return Offered::Invalid(format!(
                "flag {:?} is not in this judge's policy",
                partial.flag_key
            ));
        };
        if let Err(e) = self.check(fi, &partial) {
            return Offered::Invalid(e);
        }
        let key = (partial.topic.clone(), partial.partition);
        let start = partial.window_start;
        let r = self.reported.entry(key.clone()).or_insert(i64::MIN);
        *r = (*r).max(partial.window_end);
        let r = self.reported_flag[fi]
            .entry(key.clone())
            .or_insert(i64::MIN);
        *r = (*r).max(partial.window_end);
        if partial.window_end <= self.frontier[fi] {
            return match self.judged[fi].get(&start) {
                Some(included) if included.contains(&key) => Offered::Duplicate,
                Some(_) => Offered::Late(format!(
                    "window {start} of flag {} was judged without {}/{} (partials timeout)",
                    partial.flag_key, key.0, key.1
                )),
                None if at.1 < self.handled_until[fi] => Offered::Duplicate,
                None => Offered::Late(format!(
                    "window {start} of flag {} was judged before this partial of {}/{} arrived",
                    partial.flag_key, key.0, key.1
                )),
            };
        }
        let open = self.open[fi].entry(start).or_insert_with(|| Open {
            end: partial.window_end,
            first_arrival: now,
            last_arrival: Instant::now(),
            parts: BTreeMap::new(),
        });
        if open.parts.contains_key(&key) {
            return Offered::Duplicate;
        }
        open.last_arrival = Instant::now();
        open.parts.insert(key, Held { partial, at });
        Offered::Merged
    }

    /// Refuses a partial the policy cannot judge: another policy version, a window that
    /// is not one of the policy's, a metric layout that differs.
    fn check(&self, fi: usize, p: &Partial) -> Result<(), String> {
        let flag = &self.policy.flags[fi];
        if p.policy_version != flag.policy_version {
            return Err(format!(
                "flag {} partial aggregated under policy version {}, the judge has {}",
                flag.key, p.policy_version, flag.policy_version
            ));
        }
        let size = self.policy.window.size_ms;
        if p.window_end - p.window_start != size || p.window_start.rem_euclid(size) != 0 {
            return Err(format!(
                "window [{}, {}) is not a {size} ms window of this policy",
                p.window_start, p.window_end
            ));
        }
        let template = &self.templates[fi];
        for (cohort, cell) in &p.cohorts {
            for arm in cell {
                let same = arm.aggs.len() == template.len()
                    && arm
                        .aggs
                        .iter()
                        .zip(template)
                        .all(|(a, t)| std::mem::discriminant(a) == std::mem::discriminant(t));
                if !same {
                    return Err(format!(
                        "cohort {cohort}: the metric layout differs from flag {}'s",
                        flag.key
                    ));
                }
            }
        }
        Ok(())
    }

    /// Closes, per flag in window order, every window that every input partition
    /// reported or whose timeout passed at wall time `now`.
    pub fn due(&mut self, now: i64) -> Vec<Ready> {
        let mut out = Vec::new();
        for fi in 0..self.open.len() {
            while let Some(entry) = self.open[fi].first_entry() {
                let o = entry.get();
                let reported = &self.reported_flag[fi];
                let complete = !self.expected.is_empty()
                    && self.expected.iter().all(|p| {
                        o.parts.contains_key(p) || reported.get(p).is_some_and(|&e| e > o.end)
                    });
                let timed_out = now.saturating_sub(o.first_arrival) >= self.timeout_ms;
                if !complete && !timed_out {
                    break;
                }
                let (start, open) = entry.remove_entry();
                out.push(self.close(fi, start, open));
            }
        }
        out
    }

    fn close(&mut self, fi: usize, start: i64, open: Open) -> Ready {
        let table = &mut self.cohorts[fi];
        let template = &self.templates[fi];
        let mut cells: Vec<Option<Cell>> = Vec::new();
        let mut late = 0;
        let mut included = Vec::with_capacity(open.parts.len());
        let mut keys = BTreeSet::new();
        let partials_partition = open.parts.values().map(|h| h.at.0).next();
        for (key, held) in open.parts {
            late += held.partial.late_events;
            included.push(InputPosition {
                topic: key.0.clone(),
                partition: key.1,
                read_until: held.partial.read_until,
            });
            for (name, cell) in held.partial.cohorts {
                let id = table.admit(&name) as usize;
                if cells.len() <= id {
                    cells.resize_with(id + 1, || None);
                }
                match &mut cells[id] {
                    Some(c) => {
                        c[0].merge(&cell[0]);
                        c[1].merge(&cell[1]);
                    }
                    slot => *slot = Some(cell),
                }
            }
            keys.insert(key);
        }
        let cohorts = (0..table.len())
            .map(|id| {
                let cell = cells
                    .get_mut(id)
                    .and_then(Option::take)
                    .unwrap_or_else(|| [Arm::new(template), Arm::new(template)]);
                (table.name(id as u32).to_string(), cell)
            })
            .collect();
        let reported = &self.reported_flag[fi];
        let missing = self
            .expected
            .difference(&keys)
            .filter(|p| reported.get(*p).is_none_or(|&e| e <= open.end))
            .cloned()
            .collect();
        self.frontier[fi] = self.frontier[fi].max(open.end);
        self.judged[fi].insert(start, keys);
        while self.judged[fi].len() > JUDGED_KEPT {
            self.judged[fi].pop_first();
        }
        Ready {
            flag: fi,
            start,
            end: open.end,
            closed: ClosedFlag {
                cohorts,
                late_events: late,
            },
            included,
            missing,
            last_arrival: open.last_arrival,
            partials_partition,
        }
    }

    /// The lowest partials-topic offset of `partition` an open window still holds.
    pub fn min_offset(&self, partition: i32) -> Option<i64> {
        self.open
            .iter()
            .flat_map(BTreeMap::values)
            .flat_map(|o| o.parts.values())
            .filter(|h| h.at.0 == partition)
            .map(|h| h.at.1)
            .min()
    }

    /// Open (flag, window) pairs waiting for partials.
    pub fn pending_windows(&self) -> usize {
        self.open.iter().map(BTreeMap::len).sum()
    }

    /// Per input partition, the end of the newest window it reported.
    pub fn reported(&self) -> &BTreeMap<InputPartition, i64> {
        &self.reported
    }
}
