//! Which windows the batch layer has published exact results for.
//!
//! Coverage is a set of half-open ranges of *window starts*. A window whose start is covered is
//! answered from the batch layer and its speed-layer state may be dropped; every other window is
//! answered from the speed layer. Because both decisions read the same set, a window is never
//! answered from both layers nor from neither.

use serde::{Deserialize, Serialize};

use crate::time::EventTime;

/// A half-open range `[from, to)` of window starts.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
pub struct StartRange {
    pub from: EventTime,
    pub to: EventTime,
}

impl StartRange {
    pub fn new(from: EventTime, to: EventTime) -> Self {
        Self { from, to }
    }

    pub fn is_empty(&self) -> bool {
        self.from >= self.to
    }

    pub fn contains(&self, start: EventTime) -> bool {
        self.from <= start && start < self.to
    }
}

/// A normalized set of [`StartRange`]s: sorted, disjoint, non-adjacent, non-empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coverage {
    ranges: Vec<StartRange>,
}

impl Coverage {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn from_ranges(ranges: impl IntoIterator<Item = StartRange>) -> Self {
        let mut c = Self::new();
        for r in ranges {
            c.insert(r);
        }
        c
    }

    pub fn ranges(&self) -> &[StartRange] {
        &self.ranges
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Adds a range, merging it with any range it overlaps or touches.
    pub fn insert(&mut self, range: StartRange) {
        if range.is_empty() {
            return;
        }
        let mut merged = range;
        let mut out = Vec::with_capacity(self.ranges.len() + 1);
        let mut placed = false;
        for r in self.ranges.drain(..) {
            if r.to < merged.from {
                out.push(r);
            } else if merged.to < r.from {
                if !placed {
                    out.push(merged);
                    placed = true;
                }
                out.push(r);
            } else {
                merged.from = merged.from.min(r.from);
                merged.to = merged.to.max(r.to);
            }
        }
        if !placed {
            out.push(merged);
        }
        self.ranges = out;
    }

    pub fn union(&mut self, other: &Coverage) {
        for r in &other.ranges {
            self.insert(*r);
        }
    }

    pub fn contains(&self, start: EventTime) -> bool {
        // Ranges are sorted by `from`: find the last range starting at or before `start`.
        let idx = self.ranges.partition_point(|r| r.from <= start);
        idx > 0 && self.ranges[idx - 1].contains(start)
    }

    /// The first window start after the last covered range: everything the batch layer has
    /// published lies before it.
    pub fn horizon(&self) -> Option<EventTime> {
        self.ranges.last().map(|r| r.to)
    }

    /// The parts of `range` not covered, in order.
    pub fn gaps(&self, range: StartRange) -> Vec<StartRange> {
        let mut out = Vec::new();
        let mut cursor = range.from;
        for r in &self.ranges {
            if r.to <= cursor {
                continue;
            }
            if r.from >= range.to {
                break;
            }
            if r.from > cursor {
                out.push(StartRange::new(cursor, r.from.min(range.to)));
            }
            cursor = cursor.max(r.to);
            if cursor >= range.to {
                break;
            }
        }
        if cursor < range.to {
            out.push(StartRange::new(cursor, range.to));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(a: i64, b: i64) -> StartRange {
        StartRange::new(EventTime(a), EventTime(b))
    }

    #[test]
    fn insert_merges_overlapping_and_touching_ranges() {
        let mut c = Coverage::new();
        c.insert(r(10, 20));
        c.insert(r(30, 40));
        c.insert(r(20, 25));
        assert_eq!(c.ranges(), &[r(10, 25), r(30, 40)]);
        c.insert(r(0, 5));
        c.insert(r(24, 31));
        assert_eq!(c.ranges(), &[r(0, 5), r(10, 40)]);
        c.insert(r(7, 7));
        assert_eq!(c.ranges().len(), 2);
        assert_eq!(c.horizon(), Some(EventTime(40)));
    }

    #[test]
    fn gaps_are_the_uncovered_parts() {
        let c = Coverage::from_ranges([r(10, 20), r(30, 40)]);
        assert_eq!(c.gaps(r(0, 50)), [r(0, 10), r(20, 30), r(40, 50)]);
        assert_eq!(c.gaps(r(12, 18)), []);
        assert_eq!(c.gaps(r(15, 35)), [r(20, 30)]);
    }

    proptest! {
        /// `contains` agrees with a brute-force membership oracle over every inserted range.
        #[test]
        fn contains_matches_a_brute_force_oracle(
            ranges in proptest::collection::vec((0i64..100, 0i64..20), 0..12),
            probe in 0i64..130,
        ) {
            let ranges: Vec<_> = ranges.into_iter().map(|(a, len)| r(a, a + len)).collect();
            let c = Coverage::from_ranges(ranges.clone());
            let oracle = ranges.iter().any(|x| x.contains(EventTime(probe)));
            prop_assert_eq!(c.contains(EventTime(probe)), oracle);
            for w in c.ranges().windows(2) {
                prop_assert!(w[0].to < w[1].from, "ranges must be disjoint and non-adjacent");
            }
            let gaps = c.gaps(r(0, 130));
            let in_gap = gaps.iter().any(|g| g.contains(EventTime(probe)));
            prop_assert_eq!(in_gap, !oracle);
        }
    }
}
