//! Event-time watermark over input partitions (SPEC §3).
//!
//! watermark = min over *active* partitions of (max event time seen) − allowed lateness.
//! A partition that has sent nothing for `idle_timeout` of wall time stops holding the
//! watermark back; when every partition is idle, the watermark follows the most
//! advanced one, so windows still close when traffic stops. The watermark never
//! moves backwards.

use rustc_hash::FxHashMap as HashMap;

use crate::model::Source;

/// An input partition: the topic (by source) and partition number. Replay uses one
/// pseudo-partition per input file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionKey {
    pub source: Source,
    pub partition: i32,
}

#[derive(Debug, Clone, Copy)]
struct PartitionTime {
    max_event_time: i64,
    last_seen_wall: i64,
    finished: bool,
}

#[derive(Debug, Clone)]
pub struct Watermark {
    partitions: HashMap<PartitionKey, PartitionTime>,
    allowed_lateness_ms: i64,
    /// `None` disables idleness (replay reads files in event-time order).
    idle_timeout_ms: Option<i64>,
    current: i64,
}

impl Watermark {
    pub fn new(allowed_lateness_ms: i64, idle_timeout_ms: Option<i64>) -> Watermark {
        Watermark {
            partitions: HashMap::default(),
            allowed_lateness_ms,
            idle_timeout_ms,
            current: i64::MIN,
        }
    }

    /// Notes an event time seen on a partition at wall time `now`.
    pub fn observe(&mut self, p: PartitionKey, event_time: i64, now: i64) {
        let e = self.partitions.entry(p).or_insert(PartitionTime {
            max_event_time: event_time,
            last_seen_wall: now,
            finished: false,
        });
        e.max_event_time = e.max_event_time.max(event_time);
        e.last_seen_wall = now;
        e.finished = false;
    }

    /// An assigned partition that has delivered nothing yet holds the watermark back
    /// (until it goes idle): otherwise the partitions read first would push the watermark
    /// past the data still waiting in the others, and that data would be "late".
    pub fn register(&mut self, p: PartitionKey, now: i64) {
        self.partitions.entry(p).or_insert(PartitionTime {
            max_event_time: i64::MIN,
            last_seen_wall: now,
            finished: false,
        });
    }

    /// The partition reached its end (replay) and no longer holds the watermark back.
    pub fn finish(&mut self, p: PartitionKey) {
        if let Some(e) = self.partitions.get_mut(&p) {
            e.finished = true;
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

    /// Recomputes the watermark at wall time `now`; returns it (monotonic).
    pub fn advance(&mut self, now: i64) -> i64 {
        let idle = |t: &PartitionTime| {
            self.idle_timeout_ms
                .is_some_and(|limit| now.saturating_sub(t.last_seen_wall) > limit)
        };
        let active = self
            .partitions
            .values()
            .filter(|t| !t.finished && !idle(t))
            .map(|t| t.max_event_time)
            .min();
        let candidate = match active {
            Some(min) => Some(min),
            None => self.partitions.values().map(|t| t.max_event_time).max(),
        };
        if let Some(c) = candidate.filter(|c| *c > i64::MIN) {
            self.current = self.current.max(c.saturating_sub(self.allowed_lateness_ms));
        }
        self.current
    }

    pub fn current(&self) -> i64 {
        self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(n: i32) -> PartitionKey {
        PartitionKey {
            source: Source::Product,
            partition: n,
        }
    }

    #[test]
    fn slowest_active_partition_holds_the_watermark() {
        let mut w = Watermark::new(100, Some(1_000));
        w.observe(p(0), 10_000, 0);
        w.observe(p(1), 5_000, 0);
        assert_eq!(w.advance(0), 4_900);
        // Partition 1 goes idle: partition 0 alone drives it.
        w.observe(p(0), 12_000, 1_500);
        assert_eq!(w.advance(1_500), 11_900);
        // Partition 1 comes back behind: the watermark does not go back.
        w.observe(p(1), 6_000, 1_600);
        assert_eq!(w.advance(1_600), 11_900);
    }

    #[test]
    fn an_assigned_silent_partition_holds_the_watermark_until_idle() {
        let mut w = Watermark::new(0, Some(1_000));
        w.register(p(0), 0);
        w.register(p(1), 0);
        w.observe(p(0), 50_000, 10);
        assert_eq!(w.advance(10), i64::MIN, "partition 1 has not delivered yet");
        w.observe(p(1), 20_000, 20);
        assert_eq!(w.advance(20), 20_000);
        // A registered partition that never delivers stops holding it back once idle.
        w.register(p(2), 30);
        w.observe(p(0), 50_000, 1_000);
        w.observe(p(1), 30_000, 1_000);
        assert_eq!(w.advance(1_020), 20_000, "p2 not idle yet");
        assert_eq!(w.advance(1_040), 30_000, "p2 idle: min over p0, p1");
    }

    #[test]
    fn all_idle_follows_the_most_advanced() {
        let mut w = Watermark::new(0, Some(10));
        w.observe(p(0), 100, 0);
        w.observe(p(1), 50, 0);
        assert_eq!(w.advance(0), 50);
        assert_eq!(w.advance(100), 100);
    }

    proptest! {
        #[test]
        fn watermark_is_monotonic(events in prop::collection::vec((0i32..4, 0i64..1_000_000, 0i64..100), 1..300)) {
            let mut w = Watermark::new(1_000, Some(50));
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
    }
}
