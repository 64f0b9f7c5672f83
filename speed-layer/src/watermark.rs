//! Event-time progress per Kafka partition.
//!
//! Each assigned partition's progress is the largest event time read from it. The combined
//! progress is the minimum over the assigned partitions: a window may only close once every
//! partition has moved past it, otherwise the on-time events of a partition that is consumed
//! later (a backlog is read partition by partition) would all be late. A partition that has not
//! delivered anything yet holds progress back entirely.
//!
//! A partition is *idle* when it is fully consumed and has delivered nothing for `idle_timeout`.
//! "Fully consumed" is what the partition's leader said in the last few seconds: while a broker
//! is unreachable its partitions are not idle, so after an outage the partition that answers
//! first cannot carry progress past events the other ones still hold. An idle partition
//! stops holding progress back. If every partition is idle the stream has
//! stopped, and progress is the largest event time seen anywhere.
//!
//! Each view subtracts its allowed lateness from the combined progress to get its watermark.
//!
//! An event moves its partition's progress only as far as the wall clock when it is read
//! ([`EventTime::progress_at`]): event times ahead of the world do not close windows.

use std::collections::BTreeMap;

use tandem_shared::time::{EventTime, Span};

#[derive(Debug, Clone, Copy)]
struct PartitionClock {
    max_event_time: Option<EventTime>,
    /// Wall-clock time of the last event, or of the assignment if there was none.
    last_activity: EventTime,
    caught_up: bool,
}

/// Largest event time seen per assigned partition. A partition is named by `K`: its number,
/// or, for a consumer of several topics (a joined stream's), the topic and the number.
#[derive(Debug, Clone)]
pub struct PartitionProgress<K = i32> {
    partitions: BTreeMap<K, PartitionClock>,
}

impl<K> Default for PartitionProgress<K> {
    fn default() -> Self {
        Self {
            partitions: BTreeMap::new(),
        }
    }
}

impl<K: Ord + Copy> PartitionProgress<K> {
    /// Starts tracking a partition (assigned in a rebalance).
    pub fn assign(&mut self, partition: K, now: EventTime) {
        self.partitions.entry(partition).or_insert(PartitionClock {
            max_event_time: None,
            last_activity: now,
            caught_up: false,
        });
    }

    /// Stops tracking a partition (revoked in a rebalance).
    pub fn revoke(&mut self, partition: K) {
        self.partitions.remove(&partition);
    }

    /// Records an event time read from `partition` at wall-clock time `now`.
    pub fn observe(&mut self, partition: K, t: EventTime, now: EventTime) {
        self.assign(partition, now);
        let t = t.progress_at(now);
        if let Some(c) = self.partitions.get_mut(&partition) {
            c.max_event_time = Some(c.max_event_time.map_or(t, |m| m.max(t)));
            c.last_activity = now;
        }
    }

    /// Records whether the consumer has read everything the partition holds.
    pub fn set_caught_up(&mut self, partition: K, caught_up: bool) {
        if let Some(c) = self.partitions.get_mut(&partition) {
            c.caught_up = caught_up;
        }
    }

    fn idle(c: &PartitionClock, now: EventTime, idle_timeout: Span) -> bool {
        c.caught_up
            && now.millis().saturating_sub(c.last_activity.millis()) >= idle_timeout.millis()
    }

    /// The combined progress (see the module docs); `None` while it is held back entirely.
    pub fn combined(&self, now: EventTime, idle_timeout: Span) -> Option<EventTime> {
        let mut active_min: Option<EventTime> = None;
        let mut any_active = false;
        for c in self.partitions.values() {
            if Self::idle(c, now, idle_timeout) {
                continue;
            }
            any_active = true;
            let t = c.max_event_time?;
            active_min = Some(active_min.map_or(t, |m| m.min(t)));
        }
        if any_active {
            active_min
        } else {
            self.partitions
                .values()
                .filter_map(|c| c.max_event_time)
                .max()
        }
    }

    pub fn partitions(&self) -> impl Iterator<Item = (K, Option<EventTime>)> + '_ {
        self.partitions.iter().map(|(p, c)| (*p, c.max_event_time))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: EventTime = EventTime(1_000_000);
    const IDLE: Span = Span::ZERO;

    fn idle_after(ms: i64) -> Span {
        Span::from_millis(ms)
    }

    #[test]
    fn combined_progress_is_held_back_by_the_slowest_partition() {
        let mut p = PartitionProgress::default();
        assert_eq!(p.combined(T0, idle_after(1000)), None);
        p.observe(0, EventTime(100), T0);
        p.observe(1, EventTime(40), T0);
        p.observe(0, EventTime(90), T0); // out of order: never moves progress back
        assert_eq!(p.combined(T0, idle_after(1000)), Some(EventTime(40)));
        p.observe(1, EventTime(120), T0);
        assert_eq!(p.combined(T0, idle_after(1000)), Some(EventTime(100)));
        p.revoke(0);
        assert_eq!(p.combined(T0, idle_after(1000)), Some(EventTime(120)));
    }

    #[test]
    fn event_times_ahead_of_the_clock_move_progress_only_to_the_clock() {
        let mut p = PartitionProgress::default();
        // An hour ahead of the wall clock: progress goes no further than the clock.
        p.observe(0, EventTime(T0.millis() + 3_600_000), T0);
        assert_eq!(p.combined(T0, idle_after(1000)), Some(T0));
        // Later on-time events move it on as the clock does.
        let later = EventTime(T0.millis() + 2_000);
        p.observe(0, EventTime(T0.millis() + 1_500), later);
        assert_eq!(
            p.combined(later, idle_after(10_000)),
            Some(EventTime(T0.millis() + 1_500))
        );
        // Old data (a replay) is unaffected.
        let mut replay = PartitionProgress::default();
        replay.observe(0, EventTime(100), T0);
        assert_eq!(replay.combined(T0, idle_after(1000)), Some(EventTime(100)));
    }

    #[test]
    fn an_assigned_partition_without_events_holds_progress_back() {
        let mut p = PartitionProgress::default();
        p.assign(0, T0);
        p.assign(1, T0);
        p.observe(0, EventTime(500), T0);
        assert_eq!(p.combined(T0, idle_after(1000)), None);
    }

    #[test]
    fn idle_partitions_release_progress_only_when_caught_up_and_quiet() {
        let mut p = PartitionProgress::default();
        p.assign(1, T0);
        p.observe(0, EventTime(500), T0);
        let later = EventTime(T0.millis() + 5_000);
        // Quiet but not caught up (a backlog not fetched yet): still holds back.
        assert_eq!(p.combined(later, idle_after(1000)), None);
        p.set_caught_up(1, true);
        assert_eq!(p.combined(later, idle_after(1000)), Some(EventTime(500)));
        assert_eq!(
            p.combined(T0, idle_after(1000)),
            None,
            "not quiet long enough"
        );
        // Everything idle: the stream stopped, the largest event time is the progress.
        p.set_caught_up(0, true);
        p.observe(1, EventTime(300), T0);
        assert_eq!(p.combined(later, idle_after(1000)), Some(EventTime(500)));
        assert_eq!(p.combined(later, IDLE), Some(EventTime(500)));
    }
}
