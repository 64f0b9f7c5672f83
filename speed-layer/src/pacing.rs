//! When the consume thread checkpoints which partition.
//!
//! A checkpoint serializes a partition's whole state on the consume thread (between
//! micro-batches, so the snapshot and its offset agree). Doing every partition at once stalls
//! consumption for as long as all of them take (about a second for 50 MiB of sketches), every
//! interval. The pacer spreads a round over the first half of the interval instead: one
//! partition per step, the steps evenly spaced, so each stall is one partition's share.
//!
//! ```text
//!  interval elapsed ─► round: assigned partitions queued ─► step every interval / (2 × n)
//!                                                          ─► next() = one partition
//! ```

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Decides, at each turn of the consume loop, which partition (if any) to checkpoint now.
#[derive(Debug)]
pub(crate) struct CheckpointPacer {
    interval: Duration,
    round_started: Instant,
    queue: VecDeque<i32>,
    spacing: Duration,
    last_step: Option<Instant>,
}

impl CheckpointPacer {
    /// The first round starts one interval after `now`.
    pub(crate) fn new(interval: Duration, now: Instant) -> Self {
        Self {
            interval,
            round_started: now,
            queue: VecDeque::new(),
            spacing: Duration::ZERO,
            last_step: None,
        }
    }

    /// The partition to checkpoint at `now`, if one is due. `assigned` lists the partitions
    /// this worker owns; it is asked when a round starts.
    pub(crate) fn next(
        &mut self,
        now: Instant,
        assigned: impl FnOnce() -> Vec<i32>,
    ) -> Option<i32> {
        if self.queue.is_empty() {
            if now.saturating_duration_since(self.round_started) < self.interval {
                return None;
            }
            let partitions = assigned();
            self.round_started = now;
            self.last_step = None;
            let steps = u32::try_from(partitions.len()).unwrap_or(u32::MAX).max(1);
            self.spacing = self.interval / 2 / steps;
            self.queue = partitions.into();
        }
        if self
            .last_step
            .is_some_and(|last| now.saturating_duration_since(last) < self.spacing)
        {
            return None;
        }
        let partition = self.queue.pop_front()?;
        self.last_step = Some(now);
        Some(partition)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    /// Steps the pacer every millisecond for `span`, returning (elapsed ms, partition) pairs.
    fn run(
        pacer: &mut CheckpointPacer,
        start: Instant,
        span: Duration,
        assigned: &[i32],
    ) -> Vec<(u128, i32)> {
        let mut out = Vec::new();
        let mut t = Duration::ZERO;
        while t <= span {
            if let Some(p) = pacer.next(start + t, || assigned.to_vec()) {
                out.push((t.as_millis(), p));
            }
            t += Duration::from_millis(1);
        }
        out
    }

    #[test]
    fn each_partition_once_per_interval_spread_over_its_first_half() {
        let start = Instant::now();
        let mut pacer = CheckpointPacer::new(10 * SECOND, start);
        let steps = run(&mut pacer, start, 35 * SECOND, &[0, 1, 2, 3]);
        // Rounds start at 10 s, 20 s and 30 s; steps 10 s / 2 / 4 = 1.25 s apart.
        let want: Vec<(u128, i32)> = [10_000u128, 20_000, 30_000]
            .iter()
            .flat_map(|round| (0..4).map(move |i| (round + i as u128 * 1_250, i)))
            .collect();
        assert_eq!(steps, want);
    }

    #[test]
    fn nothing_before_the_first_interval_and_nothing_without_partitions() {
        let start = Instant::now();
        let mut pacer = CheckpointPacer::new(10 * SECOND, start);
        assert!(run(&mut pacer, start, 9 * SECOND, &[7]).is_empty());
        let mut idle = CheckpointPacer::new(SECOND, start);
        assert!(run(&mut idle, start, 5 * SECOND, &[]).is_empty());
    }
}
