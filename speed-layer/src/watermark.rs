//! Event-time progress per Kafka partition.
//!
//! Each partition's progress is the largest event time read from it. The combined progress is
//! the minimum over the partitions this consumer reads: a window may only close once every
//! partition has moved past it, otherwise a slow partition's on-time events would all be late.
//! Each view subtracts its own allowed lateness from the combined progress to get its watermark.

use std::collections::BTreeMap;

use tandem_shared::time::EventTime;

/// Largest event time seen per partition.
#[derive(Debug, Default, Clone)]
pub struct PartitionProgress {
    max_event_time: BTreeMap<i32, EventTime>,
}

impl PartitionProgress {
    pub fn observe(&mut self, partition: i32, t: EventTime) {
        let entry = self.max_event_time.entry(partition).or_insert(t);
        if t > *entry {
            *entry = t;
        }
    }

    /// Stops tracking a partition (revoked in a rebalance).
    pub fn forget(&mut self, partition: i32) {
        self.max_event_time.remove(&partition);
    }

    /// The minimum over partitions of their largest event time; `None` before any event.
    pub fn combined(&self) -> Option<EventTime> {
        self.max_event_time.values().min().copied()
    }

    pub fn partitions(&self) -> impl Iterator<Item = (i32, EventTime)> + '_ {
        self.max_event_time.iter().map(|(p, t)| (*p, *t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combined_progress_is_held_back_by_the_slowest_partition() {
        let mut p = PartitionProgress::default();
        assert_eq!(p.combined(), None);
        p.observe(0, EventTime(100));
        p.observe(1, EventTime(40));
        p.observe(0, EventTime(90)); // out of order: never moves progress back
        assert_eq!(p.combined(), Some(EventTime(40)));
        p.observe(1, EventTime(120));
        assert_eq!(p.combined(), Some(EventTime(100)));
        p.forget(0);
        assert_eq!(p.combined(), Some(EventTime(120)));
    }
}
