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
    /// Without its cohorts when `encoded` holds them.
    partial: Partial,
    /// The record as it came: decoded again at the close. A decoded cell is ~10 times
    /// its encoding (a quantile's HDR histogram and per-unit table are dense in memory),
    /// and a judge holds every partition's partials of its flags' open windows.
    encoded: Option<Vec<u8>>,
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
            templates: crate::window::agg_templates(&policy),
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
        self.offer_held(partial, None, at, now)
    }

    /// [`Merger::offer`] of a record as read from the partials topic: decoded to be
    /// checked, held encoded until its window closes.
    pub fn offer_encoded(&mut self, bytes: &[u8], at: (i32, i64), now: i64) -> Offered {
        match crate::scale::partial::decode(bytes) {
            Ok(mut p) => {
                if let Some(fi) = self.flag_index.get(&p.flag_key).copied()
                    && let Err(e) = self.check(fi, &p)
                {
                    return Offered::Invalid(e);
                }
                p.cohorts = Vec::new();
                self.offer_held(p, Some(bytes.to_vec()), at, now)
            }
            Err(e) => Offered::Invalid(e.to_string()),
        }
    }

    fn offer_held(
        &mut self,
        partial: Partial,
        encoded: Option<Vec<u8>>,
        at: (i32, i64),
        now: i64,
    ) -> Offered {
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
            // A partition's partials come in window order: one included in a later
            // judged window delivered this one before (merged, or dead-lettered then).
            let reported_later = self.judged[fi]
                .range(start + 1..)
                .any(|(_, included)| included.contains(&key));
            return match self.judged[fi].get(&start) {
                Some(included) if included.contains(&key) => Offered::Duplicate,
                _ if reported_later => Offered::Duplicate,
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
        open.parts.insert(
            key,
            Held {
                partial,
                encoded,
                at,
            },
        );
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
            let cohorts = match held.encoded {
                // Checked when it arrived: it decodes again.
                Some(bytes) => crate::scale::partial::decode(&bytes)
                    .map(|p| p.cohorts)
                    .unwrap_or_default(),
                None => held.partial.cohorts,
            };
            for (name, cell) in cohorts {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::records::WindowEvaluation;
    use crate::window::aggregate::{Contribution, unit_hash};

    const SIZE: i64 = 900_000;
    const W: i64 = 1_800_000_000_000 / SIZE * SIZE;

    fn policy() -> Arc<Policy> {
        let mut config = Config::parse(include_str!("../../config/guardrail.toml")).unwrap();
        config.scale.partials_timeout = "10s".into();
        Arc::new(Policy::compile(&config).unwrap())
    }

    fn merger(partitions: i32) -> Merger {
        let mut m = Merger::new(policy());
        m.expect((0..partitions).map(|p| ("in".to_string(), p)).collect());
        m
    }

    /// A partial of flag 0 from partition `p` for window `k`, whose treatment arm of
    /// cohort `*` saw `n` events with values 0.1, 0.2, … in every metric.
    fn partial(m: &Merger, p: i32, k: i64, n: u32) -> Partial {
        let flag = &m.policy.flags[0];
        let template = &m.templates[0];
        let mut t = Arm::new(template);
        for i in 0..n {
            let unit = unit_hash(format!("u{p}-{i}").as_bytes());
            t.events += 1;
            for a in &mut t.aggs {
                let c = match a {
                    Agg::Rate { .. } => Contribution::Rate {
                        num: (i % 2) as u8,
                        den: 1,
                    },
                    _ => Contribution::Value(f64::from(i) * 0.1 + f64::from(p)),
                };
                a.apply(c, unit);
            }
        }
        Partial {
            flag_key: flag.key.clone(),
            policy_version: flag.policy_version.clone(),
            window_start: W + k * SIZE,
            window_end: W + (k + 1) * SIZE,
            topic: "in".into(),
            partition: p,
            first_offset: 0,
            read_until: 100,
            late_events: 1,
            produced_at: 0,
            instance: "i".into(),
            cohorts: vec![("*".into(), [t, Arm::new(template)])],
        }
    }

    fn sums(r: &Ready) -> Vec<u64> {
        r.closed.cohorts[0].1[0]
            .aggs
            .iter()
            .map(|a| match a {
                Agg::Rate { num, den, .. } => num * 1000 + den,
                Agg::Mean { sum, .. } => sum.to_bits(),
                Agg::Quantile { hist, .. } => hist.as_ref().map_or(0, |h| h.len()),
            })
            .collect()
    }

    #[test]
    fn a_window_closes_when_every_partition_reported_whatever_the_order() {
        let mut closed = Vec::new();
        for order in [[0, 1, 2], [2, 0, 1]] {
            let mut m = merger(3);
            for (i, p) in order.into_iter().enumerate() {
                let part = partial(&m, p, 0, 10 + p as u32);
                assert_eq!(m.offer(part, (0, i as i64), 0), Offered::Merged);
                let ready = m.due(1);
                assert_eq!(ready.len(), usize::from(i == 2), "closes with the third");
                closed.extend(ready);
            }
        }
        let (a, b) = (&closed[0], &closed[1]);
        assert!(a.missing.is_empty());
        assert_eq!(a.closed.late_events, 3);
        assert_eq!(a.included.len(), 3);
        assert_eq!(a.closed.cohorts[0].1[0].events, 10 + 11 + 12);
        // Bit for bit: merged in partition order, not arrival order.
        assert_eq!(sums(a), sums(b));
    }

    #[test]
    fn partials_held_encoded_merge_like_decoded_ones() {
        let (mut a, mut b) = (merger(2), merger(2));
        for p in 0..2 {
            let part = partial(&a, p, 0, 7 + p as u32);
            let bytes = crate::scale::partial::encode(&part);
            assert_eq!(a.offer(part, (0, 0), 0), Offered::Merged);
            assert_eq!(b.offer_encoded(&bytes, (0, 0), 0), Offered::Merged);
            assert_eq!(b.offer_encoded(&bytes, (0, 1), 0), Offered::Duplicate);
        }
        assert!(matches!(
            b.offer_encoded(b"junk", (0, 2), 0),
            Offered::Invalid(_)
        ));
        let (ra, rb) = (a.due(1), b.due(1));
        assert_eq!(sums(&ra[0]), sums(&rb[0]));
        assert_eq!(ra[0].closed.cohorts[0].1[0].events, 15);
        assert_eq!(rb[0].closed.cohorts[0].1[0].events, 15);
    }

    #[test]
    fn the_timeout_closes_without_a_partition_and_its_partial_is_then_late() {
        let mut m = merger(2);
        let p0 = partial(&m, 0, 0, 5);
        assert_eq!(m.offer(p0.clone(), (0, 0), 1_000), Offered::Merged);
        assert_eq!(m.offer(p0, (0, 1), 1_500), Offered::Duplicate);
        assert!(m.due(10_999).is_empty(), "waits for the timeout");
        assert_eq!(m.min_offset(0), Some(0));
        let ready = m.due(11_000);
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].missing, vec![("in".to_string(), 1)]);
        assert_eq!(m.min_offset(0), None);
        let late = partial(&m, 1, 0, 5);
        assert!(matches!(m.offer(late, (0, 2), 12_000), Offered::Late(_)));
        // The included one again: a duplicate, not late.
        let again = partial(&m, 0, 0, 5);
        assert_eq!(m.offer(again, (0, 3), 12_000), Offered::Duplicate);
    }

    #[test]
    fn a_partition_that_reported_a_later_window_is_not_waited_for() {
        let mut m = merger(2);
        let a = partial(&m, 0, 0, 5);
        assert_eq!(m.offer(a, (0, 0), 0), Offered::Merged);
        assert!(m.due(1).is_empty());
        // Partition 1's first data is in window 1: window 0 has nothing of it.
        let b = partial(&m, 1, 1, 5);
        assert_eq!(m.offer(b, (0, 1), 2), Offered::Merged);
        let ready = m.due(3);
        assert_eq!(
            ready.len(),
            1,
            "window 0 closes, window 1 waits for partition 0"
        );
        assert_eq!(ready[0].start, W);
        assert!(ready[0].missing.is_empty());
    }

    #[test]
    fn windows_of_a_flag_close_in_order() {
        let mut m = merger(2);
        let first = partial(&m, 0, 0, 1);
        m.offer(first, (0, 0), 0);
        for p in 0..2 {
            let later = partial(&m, p, 1, 1);
            m.offer(later, (0, 1 + i64::from(p)), 0);
        }
        // Partition 0 reported window 1, so window 0 is complete too; both close, in order.
        let starts: Vec<i64> = m.due(1).iter().map(|r| r.start).collect();
        assert_eq!(starts, vec![W, W + SIZE]);
        let mut m = merger(2);
        let first = partial(&m, 0, 0, 1);
        m.offer(first, (0, 0), 0);
        let other_flag_later = partial(&m, 0, 2, 1);
        m.offer(other_flag_later, (0, 1), 5);
        let r = m.due(10_000);
        assert_eq!(
            r.len(),
            1,
            "window 0 times out first; window 2 waits for its own timeout"
        );
        assert_eq!(r[0].start, W);
    }

    #[test]
    fn partials_the_policy_cannot_judge_are_invalid() {
        let mut m = merger(1);
        let mut p = partial(&m, 0, 0, 1);
        p.flag_key = "nope".into();
        assert!(matches!(m.offer(p, (0, 0), 0), Offered::Invalid(_)));
        let mut p = partial(&m, 0, 0, 1);
        p.policy_version = "other".into();
        assert!(
            matches!(m.offer(p, (0, 0), 0), Offered::Invalid(e) if e.contains("policy version"))
        );
        let mut p = partial(&m, 0, 0, 1);
        p.window_end += 1;
        assert!(matches!(m.offer(p, (0, 0), 0), Offered::Invalid(_)));
        let mut p = partial(&m, 0, 0, 1);
        p.cohorts[0].1[0].aggs.pop();
        assert!(matches!(m.offer(p, (0, 0), 0), Offered::Invalid(e) if e.contains("layout")));
        assert_eq!(m.pending_windows(), 0);
    }

    #[test]
    fn after_a_restore_re_read_partials_are_duplicates_and_new_ones_late() {
        let mut m = merger(2);
        let flag = m.policy.flags[0].key.clone();
        let e = WindowEvaluation {
            flag_key: flag,
            cohort: "*".into(),
            window_start: W + SIZE,
            window_end: W + 2 * SIZE,
            input_positions: vec![
                InputPosition {
                    topic: "in".into(),
                    partition: 0,
                    read_until: 9,
                },
                InputPosition {
                    topic: "guardrail-partials".into(),
                    partition: 3,
                    read_until: 40,
                },
            ],
            decision: None,
            evidence: Vec::new(),
            late_events: 0,
            evaluated_at: 0,
            rollout_percent: None,
            state: None,
            healthy_windows: 0,
            policy_version: None,
            command_id: None,
            band: Vec::new(),
            watermark_lag_ms: None,
        };
        m.restored(&e, "guardrail-partials");
        // The newest judged window: included partition 0, not partition 1.
        let p = partial(&m, 0, 1, 1);
        assert_eq!(m.offer(p, (3, 38), 0), Offered::Duplicate);
        let p = partial(&m, 1, 1, 1);
        assert!(matches!(m.offer(p, (3, 41), 0), Offered::Late(_)));
        // An older judged window: partition 0 reported the newest one, so it delivered
        // this one before (a re-emission); partition 1 did not: below the handled
        // offset a re-read, above it late.
        let p = partial(&m, 0, 0, 1);
        assert_eq!(m.offer(p, (3, 45), 0), Offered::Duplicate);
        let p = partial(&m, 1, 0, 1);
        assert_eq!(m.offer(p, (3, 10), 0), Offered::Duplicate);
        let p = partial(&m, 1, 0, 1);
        assert!(matches!(m.offer(p, (3, 45), 0), Offered::Late(_)));
        // The next window is open.
        let p = partial(&m, 0, 2, 1);
        assert_eq!(m.offer(p, (3, 46), 0), Offered::Merged);
    }
}
