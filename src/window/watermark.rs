//! Event-time watermark over input partitions (SPEC §3).
//!
//! watermark = min over *holding* partitions of min(max event time seen, now)
//! − allowed lateness, where `now` is the wall clock passed to [`Watermark::advance`].
//! The watermark never moves backwards.
//!
//! - **Idle.** A partition that has sent nothing for `idle_timeout` of wall time stops
//!   holding the watermark back; when every partition is idle, the watermark follows
//!   the most advanced one, so windows still close when traffic stops. Silent is not
//!   idle while records wait: a caller that sees read positions calls
//!   [`Watermark::hold`] for a [`Watermark::silent`] partition not read to its end.
//! - **Clamp.** A partition's contribution is its max event time clamped to `now`, so
//!   the watermark never passes `now − allowed_lateness`: one event from a fast clock
//!   (accepted up to `max_future_skew` ahead) cannot close a window before the wall
//!   clock reaches it. [`Watermark::clamped`] counts the advances at which the clamp
//!   held the watermark below what the event times alone would give.
//! - **Stuck partitions** (`max_partition_delay`, written `D`; off for replay). The
//!   *leader* is the highest clamped max event time over partitions that are neither
//!   finished nor idle. A partition that is neither finished nor idle and has
//!   delivered is *behind* while leader − (its clamped max event time) > `D`. When it
//!   becomes behind, a checkpoint (wall time, its clamped max event time) is taken.
//!   Each time `D` or more of wall time has passed since the checkpoint: if its max
//!   event time advanced by at least 1.5 × the wall time elapsed, it is *catching up*
//!   (a backlog read faster than real time) and a new checkpoint is taken; otherwise it
//!   is *excluded*: it stops holding the watermark back, and its later records for
//!   closed windows are late. As soon as it is no longer behind (within `D` of the
//!   leader) the checkpoint is dropped and an excluded partition holds the watermark
//!   again. An idle partition's state is left as it is (the idle rule releases it).
//!
//!   So a partition delivering backdated events (a slow producer clock, a job replaying
//!   history at less than 1.5× real time) holds the watermark back for at most `D` of
//!   wall time, plus one more `D` per checkpoint at which it happened to advance 1.5×
//!   as fast as the clock, after it falls `D` behind the leader; a partition catching up
//!   after a restart or rebalance, its event time advancing at least 1.5× as fast as
//!   the wall clock, is never excluded, however large its backlog (and so neither is a
//!   producer replaying history that fast: the rule cannot tell the two apart).
//!   The test runs on wall time: with replay's one fixed `now` it could never fire, and
//!   replay runs with it off anyway.

use rustc_hash::FxHashMap as HashMap;

/// A behind partition must advance its event time at least `CATCH_UP_NUM / CATCH_UP_DEN`
/// times as fast as the wall clock to count as catching up (1.5×).
const CATCH_UP_NUM: i64 = 3;
const CATCH_UP_DEN: i64 = 2;

/// An input partition: the topic (by source) and partition number. Replay uses one
/// pseudo-partition per input file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionKey {
    /// The input, by position in [`crate::config::Config::input_topics`].
    pub input: u16,
    pub partition: i32,
}

#[derive(Debug, Clone, Copy)]
struct PartitionTime {
    max_event_time: i64,
    last_seen_wall: i64,
    finished: bool,
    /// Behind the leader since this checkpoint: (wall time, clamped max event time).
    behind_since: Option<(i64, i64)>,
    /// Stuck: does not hold the watermark back until it is within the bound again.
    excluded: bool,
}

impl PartitionTime {
    fn new(max_event_time: i64, now: i64) -> PartitionTime {
        PartitionTime {
            max_event_time,
            last_seen_wall: now,
            finished: false,
            behind_since: None,
            excluded: false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Watermark {
    partitions: HashMap<PartitionKey, PartitionTime>,
    allowed_lateness_ms: i64,
    /// `None` disables idleness (replay reads files in event-time order).
    idle_timeout_ms: Option<i64>,
    /// `None` disables the stuck-partition rule (replay).
    max_partition_delay_ms: Option<i64>,
    current: i64,
    /// Advances at which the wall-clock clamp held the watermark back.
    clamped: u64,
    /// Partitions excluded as stuck (and not idle) at the last advance.
    excluded: usize,
}

impl Watermark {
    pub fn new(
        allowed_lateness_ms: i64,
        idle_timeout_ms: Option<i64>,
        max_partition_delay_ms: Option<i64>,
    ) -> Watermark {
        Watermark {
            partitions: HashMap::default(),
            allowed_lateness_ms,
            idle_timeout_ms,
            max_partition_delay_ms,
            current: i64::MIN,
            clamped: 0,
            excluded: 0,
        }
    }

    /// Notes an event time seen on a partition at wall time `now`.
    pub fn observe(&mut self, p: PartitionKey, event_time: i64, now: i64) {
        let e = self
            .partitions
            .entry(p)
            .or_insert(PartitionTime::new(event_time, now));
        e.max_event_time = e.max_event_time.max(event_time);
        e.last_seen_wall = e.last_seen_wall.max(now);
        e.finished = false;
    }

    /// An assigned partition that has delivered nothing yet holds the watermark back
    /// (until it goes idle): otherwise the partitions read first would push the watermark
    /// past the data still waiting in the others, and that data would be "late".
    pub fn register(&mut self, p: PartitionKey, now: i64) {
        self.partitions
            .entry(p)
            .or_insert(PartitionTime::new(i64::MIN, now));
    }

    /// The partition reached its end (replay) and no longer holds the watermark back.
    pub fn finish(&mut self, p: PartitionKey) {
        if let Some(e) = self.partitions.get_mut(&p) {
            e.finished = true;
        }
    }

    /// The engine read nothing until `now` (it waited on a schema fetch): no partition
    /// can be called idle for that time, the data may be waiting in the poll queue.
    pub fn stalled_until(&mut self, now: i64) {
        for t in self.partitions.values_mut() {
            t.last_seen_wall = t.last_seen_wall.max(now);
        }
    }

    /// Partitions silent for longer than the idle timeout at wall time `now` (since
    /// their last record, or their registration): the ones whose idleness a caller that
    /// knows the read positions checks ([`Watermark::hold`]).
    pub fn silent(&self, now: i64) -> impl Iterator<Item = PartitionKey> + '_ {
        self.partitions
            .iter()
            .filter(move |(_, t)| !t.finished && self.is_idle(t, now))
            .map(|(p, _)| *p)
    }

    /// Records are known to be waiting on the partition at wall time `now` (its read
    /// position is below its end): silent is not idle, it holds the watermark back at
    /// the advance at `now`. It is silent again just after, so the caller checks it
    /// again before the next advance.
    pub fn hold(&mut self, p: PartitionKey, now: i64) {
        let Some(limit) = self.idle_timeout_ms else {
            return;
        };
        if let Some(t) = self.partitions.get_mut(&p) {
            t.last_seen_wall = t.last_seen_wall.max(now.saturating_sub(limit));
        }
    }

    /// The partition was revoked: forget it.
    pub fn remove(&mut self, p: PartitionKey) {
        self.partitions.remove(&p);
    }

    /// Forgets every partition (all were revoked); the watermark itself stays.
    pub fn clear_partitions(&mut self) {
        self.partitions.clear();
    }

    fn is_idle(&self, t: &PartitionTime, now: i64) -> bool {
        self.idle_timeout_ms
            .is_some_and(|limit| now.saturating_sub(t.last_seen_wall) > limit)
    }

    /// Recomputes the watermark at wall time `now`; returns it (monotonic, and never
    /// above `now − allowed_lateness` through this call).
    pub fn advance(&mut self, now: i64) -> i64 {
        if let Some(bound) = self.max_partition_delay_ms {
            self.track_stuck(now, bound);
        }
        let active = self
            .partitions
            .values()
            .filter(|t| !t.finished && !t.excluded && !self.is_idle(t, now))
            .map(|t| t.max_event_time)
            .min();
        // Unclamped: min commutes with the clamp, so clamping the result is the same as
        // clamping each partition's contribution.
        let raw = match active {
            Some(min) => Some(min),
            None => self.partitions.values().map(|t| t.max_event_time).max(),
        };
        if let Some(raw) = raw.filter(|c| *c > i64::MIN) {
            let lateness = self.allowed_lateness_ms;
            let next = self.current.max(raw.min(now).saturating_sub(lateness));
            if raw.saturating_sub(lateness) > next {
                self.clamped += 1;
            }
            self.current = next;
        }
        self.current
    }

    /// The stuck-partition rule (module doc): updates every non-idle partition's
    /// checkpoint and exclusion against the leader at wall time `now`.
    fn track_stuck(&mut self, now: i64, bound: i64) {
        let holding =
            |t: &PartitionTime| !t.finished && t.max_event_time > i64::MIN && !self.is_idle(t, now);
        let leader = self
            .partitions
            .values()
            .filter(|t| holding(t))
            .map(|t| t.max_event_time.min(now))
            .max();
        let Some(leader) = leader else {
            self.excluded = 0;
            return;
        };
        let idle_timeout = self.idle_timeout_ms;
        let mut excluded = 0;
        for (p, t) in self.partitions.iter_mut() {
            let idle = idle_timeout.is_some_and(|l| now.saturating_sub(t.last_seen_wall) > l);
            if t.finished || t.max_event_time == i64::MIN || idle {
                continue;
            }
            let mine = t.max_event_time.min(now);
            if leader.saturating_sub(mine) <= bound {
                if t.excluded {
                    tracing::info!(
                        input = p.input,
                        partition = p.partition,
                        max_event_time = mine,
                        "input partition within window.max_partition_delay of the most \
                         advanced one again: it holds the watermark back again"
                    );
                }
                t.behind_since = None;
                t.excluded = false;
                continue;
            }
            if t.excluded {
                excluded += 1;
                continue;
            }
            match t.behind_since {
                None => t.behind_since = Some((now, mine)),
                Some((wall, event)) if now.saturating_sub(wall) >= bound => {
                    let elapsed = now.saturating_sub(wall);
                    let advanced = mine.saturating_sub(event);
                    if advanced.saturating_mul(CATCH_UP_DEN) >= elapsed.saturating_mul(CATCH_UP_NUM)
                    {
                        // Catching up: another period to prove it.
                        t.behind_since = Some((now, mine));
                    } else {
                        t.behind_since = None;
                        t.excluded = true;
                        excluded += 1;
                        tracing::warn!(
                            input = p.input,
                            partition = p.partition,
                            max_event_time = mine,
                            leader,
                            "input partition excluded from the watermark: its event time \
                             trails the most advanced partition by more than \
                             window.max_partition_delay and is not catching up; its \
                             records for closed windows go to the DLQ as late"
                        );
                    }
                }
                Some(_) => {}
            }
        }
        self.excluded = excluded;
    }

    pub fn current(&self) -> i64 {
        self.current
    }

    /// How many advances the wall-clock clamp held the watermark back (cumulative).
    pub fn clamped(&self) -> u64 {
        self.clamped
    }

    /// Partitions currently excluded as stuck (idle ones not counted).
    pub fn excluded_partitions(&self) -> usize {
        self.excluded
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(n: i32) -> PartitionKey {
        PartitionKey {
            input: 0,
            partition: n,
        }
    }

    /// Wall-clock times in the tests below: after every event time (the clamp is
    /// tested on its own).
    const W: i64 = 1_000_000;

    #[test]
    fn slowest_active_partition_holds_the_watermark() {
        let mut w = Watermark::new(100, Some(1_000), None);
        w.observe(p(0), 10_000, W);
        w.observe(p(1), 5_000, W);
        assert_eq!(w.advance(W), 4_900);
        // Partition 1 goes idle: partition 0 alone drives it.
        w.observe(p(0), 12_000, W + 1_500);
        assert_eq!(w.advance(W + 1_500), 11_900);
        // Partition 1 comes back behind: the watermark does not go back.
        w.observe(p(1), 6_000, W + 1_600);
        assert_eq!(w.advance(W + 1_600), 11_900);
    }

    /// After an outage every partition is silent; the first one read again must not
    /// move the watermark alone while the others have records waiting.
    #[test]
    fn a_silent_partition_with_records_waiting_is_held() {
        let mut w = Watermark::new(0, Some(1_000), None);
        w.observe(p(0), 10_000, W);
        w.observe(p(1), 10_000, W);
        assert_eq!(w.advance(W), 10_000);
        // Both silent past the idle timeout; nothing new: the watermark stays.
        let later = W + 30_000;
        let mut silent: Vec<_> = w.silent(later).collect();
        silent.sort();
        assert_eq!(silent, vec![p(0), p(1)]);
        // Partition 0 is read again, far ahead; partition 1's records wait unread.
        w.observe(p(0), 50_000, later);
        assert_eq!(w.silent(later).collect::<Vec<_>>(), vec![p(1)]);
        w.hold(p(1), later);
        assert_eq!(w.advance(later), 10_000, "partition 1 holds it");
        // Silent again at the next advance: held as long as the caller holds it.
        assert_eq!(w.silent(later + 50).collect::<Vec<_>>(), vec![p(1)]);
        w.hold(p(1), later + 50);
        assert_eq!(w.advance(later + 50), 10_000);
        // Read to its end now (no hold): it is idle.
        w.observe(p(0), 50_000, later + 1_001);
        assert_eq!(w.silent(later + 1_001).collect::<Vec<_>>(), vec![p(1)]);
        assert_eq!(w.advance(later + 1_001), 50_000);
        // A partition registered and silent since: offered, and a hold keeps the
        // watermark where it is (it has not delivered, so it holds it entirely).
        w.register(p(2), later + 1_001);
        assert!(w.silent(later + 2_002).any(|q| q == p(2)));
        w.hold(p(2), later + 2_002);
        w.observe(p(0), 90_000, later + 2_002);
        assert_eq!(w.advance(later + 2_002), 50_000, "p2 holds it");
    }

    #[test]
    fn an_assigned_silent_partition_holds_the_watermark_until_idle() {
        let mut w = Watermark::new(0, Some(1_000), None);
        w.register(p(0), W);
        w.register(p(1), W);
        w.observe(p(0), 50_000, W + 10);
        assert_eq!(
            w.advance(W + 10),
            i64::MIN,
            "partition 1 has not delivered yet"
        );
        w.observe(p(1), 20_000, W + 20);
        assert_eq!(w.advance(W + 20), 20_000);
        // A registered partition that never delivers stops holding it back once idle.
        w.register(p(2), W + 30);
        w.observe(p(0), 50_000, W + 1_000);
        w.observe(p(1), 30_000, W + 1_000);
        assert_eq!(w.advance(W + 1_020), 20_000, "p2 not idle yet");
        assert_eq!(w.advance(W + 1_040), 30_000, "p2 idle: min over p0, p1");
    }

    #[test]
    fn all_idle_follows_the_most_advanced() {
        let mut w = Watermark::new(0, Some(10), None);
        w.observe(p(0), 100, W);
        w.observe(p(1), 50, W);
        assert_eq!(w.advance(W), 50);
        assert_eq!(w.advance(W + 100), 100);
    }

    const MIN: i64 = 60_000;
    const D: i64 = 15 * MIN;

    /// A live watermark as `run` builds it: lateness 2m, idle 30s, max delay 15m.
    fn live() -> Watermark {
        Watermark::new(2 * MIN, Some(30_000), Some(D))
    }

    #[test]
    fn a_fast_clock_does_not_pass_the_wall_clock() {
        let mut w = live();
        let now = 1_000 * D; // a window boundary
        w.observe(p(0), now - 10 * MIN, now - 10 * MIN);
        assert_eq!(w.advance(now - 10 * MIN), now - 12 * MIN);
        // Quiet system: the one partition goes idle, then one event 4m ahead arrives.
        w.observe(p(0), now + 3 * MIN, now - MIN);
        assert_eq!(w.advance(now - MIN), now - 3 * MIN, "not now + 1m");
        assert_eq!(w.clamped(), 1);
        assert_eq!(w.advance(now + MIN), now - MIN);
        assert_eq!(w.clamped(), 2);
        // The wall clock passes the event: the clamp no longer bites.
        assert_eq!(w.advance(now + 5 * MIN), now + MIN);
        assert_eq!(w.clamped(), 2);
        // Every partition idle: the most advanced one counts, clamped too.
        let mut w = live();
        w.observe(p(0), now, now);
        w.observe(p(1), now + 5 * MIN, now);
        assert_eq!(w.advance(now), now - 2 * MIN, "p0 holds it");
        assert_eq!(w.clamped(), 0);
        assert_eq!(w.advance(now + 2 * MIN), now, "not now + 3m");
        assert_eq!(w.clamped(), 1);
    }

    /// p0 is on time; p1 keeps delivering events an hour old (a slow producer clock).
    #[test]
    fn a_stuck_partition_is_excluded_after_the_bound_and_rejoins() {
        let mut w = live();
        let t0 = 1_000 * D;
        let mut excluded_at = None;
        let mut now = t0;
        while now < t0 + 3 * D {
            w.observe(p(0), now, now);
            w.observe(p(1), now - 60 * MIN, now);
            let wm = w.advance(now);
            match excluded_at {
                None if w.excluded_partitions() == 1 => excluded_at = Some(now),
                None => assert_eq!(wm, now - 62 * MIN, "p1 holds it until excluded"),
                Some(_) => {
                    assert_eq!(w.excluded_partitions(), 1);
                    assert_eq!(wm, now - 2 * MIN, "p0 alone drives it");
                }
            }
            now += 1_000;
        }
        // Behind from the first tick; excluded once D of wall time shows no catch-up.
        assert_eq!(excluded_at, Some(t0 + D));
        // Its clock is fixed: it is within D of the leader and holds the watermark again.
        w.observe(p(1), now - 5 * MIN, now);
        w.observe(p(0), now, now);
        let held = w.advance(now);
        assert_eq!(w.excluded_partitions(), 0);
        assert_eq!(held, now - 1_000 - 2 * MIN, "monotonic: held where it was");
        w.observe(p(1), now + 1_000 - 5 * MIN, now + 1_000);
        assert_eq!(w.advance(now + 1_000), now - 1_000 - 2 * MIN);
    }

    #[test]
    fn an_excluded_partition_that_goes_idle_and_comes_back_stale_stays_excluded() {
        let mut w = live();
        let t0 = 1_000 * D;
        let mut now = t0;
        while now <= t0 + D {
            w.observe(p(0), now, now);
            w.observe(p(1), now - 60 * MIN, now);
            w.advance(now);
            now += 1_000;
        }
        assert_eq!(w.excluded_partitions(), 1);
        // p1 silent for 5 minutes (once idle, not counted), then stale again.
        for i in 0..300 {
            w.observe(p(0), now, now);
            assert_eq!(w.advance(now), now - 2 * MIN);
            let idle = i >= 30;
            assert_eq!(w.excluded_partitions(), usize::from(!idle), "{i}");
            now += 1_000;
        }
        w.observe(p(0), now, now);
        w.observe(p(1), now - 50 * MIN, now);
        assert_eq!(w.advance(now), now - 2 * MIN, "no new hold");
        assert_eq!(w.excluded_partitions(), 1);
    }

    /// A stuck partition that happens to jump forward by more than half the bound at a
    /// checkpoint gets one more period, not an unbounded number: excluded within 2 D.
    #[test]
    fn a_stuck_partition_with_a_jump_is_excluded_one_period_later() {
        let mut w = live();
        let t0 = 1_000 * D;
        let mut now = t0;
        let mut excluded_at = None;
        while now < t0 + 4 * D {
            let lag = if now < t0 + D / 2 { 60 * MIN } else { 50 * MIN };
            w.observe(p(0), now, now);
            w.observe(p(1), now - lag, now);
            w.advance(now);
            if excluded_at.is_none() && w.excluded_partitions() == 1 {
                excluded_at = Some(now);
            }
            now += 1_000;
        }
        assert_eq!(excluded_at, Some(t0 + 2 * D));
    }

    /// After a restart p1 has hours of backlog and is read at `speed` × real time, in
    /// bursts; p0 is at the head. p1 keeps holding the watermark until it catches up.
    fn catch_up(backlog: i64, speed: f64, burst_every: i64) -> Result<(), TestCaseError> {
        let mut w = live();
        let t0 = 1_000 * D;
        let mut now = t0;
        let mut p1 = t0 - backlog;
        let mut last = i64::MIN;
        while p1 < now - MIN {
            w.observe(p(0), now, now);
            if (now - t0) % burst_every == 0 {
                p1 = (t0 - backlog + ((now - t0) as f64 * speed) as i64).min(now);
                w.observe(p(1), p1, now);
            }
            let wm = w.advance(now);
            prop_assert_eq!(w.excluded_partitions(), 0, "excluded at {}", now - t0);
            prop_assert!(wm <= p1 - 2 * MIN, "p1 holds the watermark");
            prop_assert!(wm >= last);
            last = wm;
            now += 1_000;
        }
        Ok(())
    }

    #[test]
    fn a_catching_up_partition_is_never_excluded() {
        // 10 hours behind at 2× real time: behind the leader for 10 hours of wall time.
        catch_up(10 * 60 * MIN, 2.0, 1_000).unwrap();
        // Just above the 1.5× floor, in bursts every 10 seconds.
        catch_up(3 * 60 * MIN, 1.6, 10_000).unwrap();
    }

    /// The old rule, for comparison: min over unfinished partitions, else the max.
    fn reference(parts: &HashMap<i32, (i64, bool)>, lateness: i64, current: i64) -> i64 {
        let min = parts
            .values()
            .filter(|(_, finished)| !finished)
            .map(|(t, _)| *t)
            .min();
        let c = min.or_else(|| parts.values().map(|(t, _)| *t).max());
        match c.filter(|c| *c > i64::MIN) {
            Some(c) => current.max(c - lateness),
            None => current,
        }
    }

    proptest! {
        #[test]
        fn watermark_is_monotonic(events in prop::collection::vec((0i32..4, 0i64..1_000_000, 0i64..100), 1..300)) {
            let mut w = Watermark::new(1_000, Some(50), Some(200));
            let mut now = 0;
            let mut last = i64::MIN;
            for (part, t, dt) in events {
                now += dt;
                w.observe(p(part), t, now);
                let cur = w.advance(now);
                prop_assert!(cur >= last);
                last = cur;
            }
        }

        /// Whatever the partitions deliver (up to the 5m future skew), with idleness and
        /// the stuck rule on, the watermark never passes now − lateness.
        #[test]
        fn watermark_never_passes_the_wall_clock(
            events in prop::collection::vec((0i32..4, -40 * MIN..5 * MIN, 0i64..20_000, any::<bool>()), 1..400),
        ) {
            let mut w = live();
            let mut now = 1_000 * D;
            let mut last = i64::MIN;
            for (part, offset, dt, tick) in events {
                now += dt;
                w.observe(p(part), now + offset, now);
                if tick {
                    let cur = w.advance(now);
                    prop_assert!(cur <= now - 2 * MIN, "{} > now - lateness", cur - now);
                    prop_assert!(cur >= last);
                    last = cur;
                }
            }
        }

        /// Replay: no idleness, no stuck rule, historical event times under one fixed
        /// `now`: exactly the old rule, however far apart the files are; no clamp.
        #[test]
        fn replay_style_use_is_unchanged(
            ops in prop::collection::vec((0i32..4, 0i64..(90 * 24 * 60 * MIN), prop::bool::weighted(0.05)), 1..300),
        ) {
            let now = 200 * 24 * 60 * MIN;
            let mut w = Watermark::new(2 * MIN, None, None);
            let mut parts: HashMap<i32, (i64, bool)> = HashMap::default();
            for n in 0..4 {
                w.register(p(n), now);
                parts.insert(n, (i64::MIN, false));
            }
            let mut expected = i64::MIN;
            for (part, t, finish) in ops {
                let e = parts.get_mut(&part).unwrap();
                if finish {
                    w.finish(p(part));
                    e.1 = true;
                } else {
                    w.observe(p(part), t, now);
                    *e = (e.0.max(t), false);
                }
                expected = reference(&parts, 2 * MIN, expected);
                prop_assert_eq!(w.advance(now), expected);
            }
            prop_assert_eq!(w.clamped(), 0);
            prop_assert_eq!(w.excluded_partitions(), 0);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Read at 1.7× to 50× real time, in bursts up to 29 s apart (not idle): however
        /// large the backlog, never excluded.
        #[test]
        fn catching_up_faster_than_the_floor_is_never_excluded(
            backlog_min in 16i64..(12 * 60),
            speed in 1.7f64..50.0,
            burst_s in 1i64..30,
        ) {
            catch_up(backlog_min * MIN, speed, burst_s * 1_000)?;
        }
    }
}
