//! Which windows the batch layer has published exact results for.
//!
//! Coverage is a set of half-open ranges of *window starts*. A window whose start is covered is
//! answered from the batch layer and its speed-layer state may be dropped; every other window is
//! answered from the speed layer. Because both decisions read the same set, a window is never
//! answered from both layers nor from neither.
//!
//! Session views add *held* starts per group: a group whose session was still open (it could
//! still grow) when the batch layer computed a range keeps the starts from that session on out
//! of the range, while every other group's sessions are covered. One long-running session thus
//! holds back only its own group ([`Coverage::covers`] decides per group and start).

use serde::{Deserialize, Serialize};

use crate::row::GroupValue;
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

    /// The starts in both ranges (empty if they do not overlap).
    pub fn intersection(&self, other: StartRange) -> StartRange {
        StartRange::new(self.from.max(other.from), self.to.min(other.to))
    }

    /// [`StartRange::intersection`], `None` if empty.
    pub fn overlap(&self, other: StartRange) -> Option<StartRange> {
        let r = self.intersection(other);
        (!r.is_empty()).then_some(r)
    }
}

/// A normalized set of [`StartRange`]s: sorted, disjoint, non-adjacent, non-empty; minus, per
/// group, the starts [`Held`] back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coverage {
    ranges: Vec<StartRange>,
    /// Sorted by group, one entry per group, each within `ranges` and non-empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    held: Vec<Held>,
}

/// Starts of one group's windows that the covered ranges do not cover for it (a session of the
/// group was still open when the range was computed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    pub group: Vec<GroupValue>,
    /// Sorted, disjoint, non-adjacent, non-empty.
    pub starts: Vec<StartRange>,
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

    /// The covered ranges, held starts included (see [`Coverage::held`]).
    pub fn ranges(&self) -> &[StartRange] {
        &self.ranges
    }

    /// Per group, starts within the ranges that are not covered for it.
    pub fn held(&self) -> &[Held] {
        &self.held
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Adds a range for every group, merging it with any range it overlaps or touches.
    pub fn insert(&mut self, range: StartRange) {
        if range.is_empty() {
            return;
        }
        if !self.held.is_empty() {
            let only = Coverage::from_ranges([range]);
            for h in &mut self.held {
                h.starts = without(&h.starts, &only);
            }
            self.held.retain(|h| !h.starts.is_empty());
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

    /// Takes `starts` (within the ranges) out of the coverage of `group`'s windows.
    pub fn hold(&mut self, group: &[GroupValue], starts: StartRange) {
        let inside: Vec<StartRange> = self
            .ranges
            .iter()
            .filter_map(|r| r.overlap(starts))
            .collect();
        if inside.is_empty() {
            return;
        }
        match self
            .held
            .binary_search_by(|h| h.group.as_slice().cmp(group))
        {
            Ok(i) => {
                let mut set = Coverage::from_ranges(self.held[i].starts.iter().copied());
                for r in inside {
                    set.insert(r);
                }
                self.held[i].starts = set.ranges;
            }
            Err(i) => self.held.insert(
                i,
                Held {
                    group: group.to_vec(),
                    starts: inside,
                },
            ),
        }
    }

    /// Everything covered by `self` or by `other`, for every group.
    pub fn union(&mut self, other: &Coverage) {
        if self.held.is_empty() && other.held.is_empty() {
            for r in &other.ranges {
                self.insert(*r);
            }
            return;
        }
        // A group's start stays uncovered only where neither side covers it: held on one side
        // and held or outside the ranges on the other.
        let mine = Coverage::from_ranges(self.ranges.iter().copied());
        let theirs = Coverage::from_ranges(other.ranges.iter().copied());
        let mut groups: Vec<&Vec<GroupValue>> = self
            .held
            .iter()
            .chain(&other.held)
            .map(|h| &h.group)
            .collect();
        groups.sort();
        groups.dedup();
        let mut held = Vec::new();
        for g in groups {
            let a = self.held_of(g);
            let b = other.held_of(g);
            let mut starts = Coverage::from_ranges(without(a, &theirs));
            for r in without(b, &mine) {
                starts.insert(r);
            }
            let a = Coverage::from_ranges(a.iter().copied());
            for r in b {
                for r in a.ranges.iter().filter_map(|x| x.overlap(*r)) {
                    starts.insert(r);
                }
            }
            if !starts.is_empty() {
                held.push(Held {
                    group: g.clone(),
                    starts: starts.ranges,
                });
            }
        }
        self.held = Vec::new();
        for r in &other.ranges {
            self.insert(*r);
        }
        self.held = held;
    }

    /// The held starts of `group`.
    fn held_of(&self, group: &[GroupValue]) -> &[StartRange] {
        self.held
            .binary_search_by(|h| h.group.as_slice().cmp(group))
            .map_or(&[], |i| self.held[i].starts.as_slice())
    }

    /// Whether windows starting at `start` are covered for every group.
    pub fn contains(&self, start: EventTime) -> bool {
        in_sorted(&self.ranges, start) && !self.held.iter().any(|h| in_sorted(&h.starts, start))
    }

    /// Whether the window of `group` starting at `start` is covered.
    pub fn covers(&self, group: &[GroupValue], start: EventTime) -> bool {
        in_sorted(&self.ranges, start) && !in_sorted(self.held_of(group), start)
    }

    /// The first window start not covered for some group after the covered ranges begin:
    /// the end of the last range, or the earliest held start if one is earlier. Everything the
    /// batch layer has published for every group lies before it.
    pub fn horizon(&self) -> Option<EventTime> {
        let end = self.ranges.last().map(|r| r.to)?;
        Some(
            self.held
                .iter()
                .filter_map(|h| h.starts.first().map(|r| r.from))
                .fold(end, EventTime::min),
        )
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

/// Whether `start` lies in one of the sorted, disjoint `ranges`.
fn in_sorted(ranges: &[StartRange], start: EventTime) -> bool {
    // Sorted by `from`: find the last range starting at or before `start`.
    let idx = ranges.partition_point(|r| r.from <= start);
    idx > 0 && ranges[idx - 1].contains(start)
}

/// The parts of `ranges` that `minus` does not cover.
fn without(ranges: &[StartRange], minus: &Coverage) -> Vec<StartRange> {
    let mut out = Coverage::new();
    for r in ranges {
        for g in minus.gaps(*r) {
            out.insert(g);
        }
    }
    out.ranges
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

    fn g(name: &str) -> Vec<GroupValue> {
        vec![GroupValue::Str(name.into())]
    }

    #[test]
    fn a_held_group_is_not_covered_from_its_held_start() {
        let mut c = Coverage::from_ranges([r(0, 100)]);
        c.hold(&g("a"), r(40, 200));
        assert!(c.covers(&g("a"), EventTime(39)));
        assert!(!c.covers(&g("a"), EventTime(40)));
        assert!(c.covers(&g("b"), EventTime(40)));
        assert!(!c.covers(&g("b"), EventTime(100)));
        // Held only within the ranges; "covered for every group" excludes the held starts.
        assert_eq!(c.held()[0].starts, [r(40, 100)]);
        assert!(!c.contains(EventTime(50)));
        assert!(c.contains(EventTime(10)));
        assert_eq!(c.horizon(), Some(EventTime(40)));
        // A later range covering the held starts covers them for the group too.
        c.insert(r(30, 150));
        assert!(c.covers(&g("a"), EventTime(40)));
        assert!(c.held().is_empty());
        assert_eq!(c.horizon(), Some(EventTime(150)));
        // Serialized without held starts, as before they existed.
        let json = serde_json::to_string(&c).unwrap_or_default();
        assert!(!json.contains("held"), "{json}");
    }

    /// One side of a union: ranges `(from, length)` and held `(group, from, length)`.
    type Side = (Vec<(i64, i64)>, Vec<(usize, i64, i64)>);

    proptest! {
        /// `union` and `hold` agree with a brute-force oracle: per group, a start is covered by
        /// the union exactly when one side covers it.
        #[test]
        fn union_matches_a_brute_force_oracle(
            sides in proptest::collection::vec(
                (
                    proptest::collection::vec((0i64..100, 1i64..30), 0..4),
                    proptest::collection::vec((0usize..3, 0i64..100, 1i64..40), 0..4),
                ),
                2,
            ),
        ) {
            let groups = [g("a"), g("b"), g("c")];
            let build = |(ranges, held): &Side| {
                let mut c = Coverage::from_ranges(ranges.iter().map(|(a, l)| r(*a, a + l)));
                for (who, a, l) in held {
                    c.hold(&groups[*who], r(*a, a + l));
                }
                c
            };
            let (a, b) = (build(&sides[0]), build(&sides[1]));
            let mut u = a.clone();
            u.union(&b);
            for probe in 0..150 {
                let t = EventTime(probe);
                for grp in &groups {
                    let covered_a = sides[0].0.iter().any(|(x, l)| r(*x, x + l).contains(t))
                        && !sides[0].1.iter().any(|(w, x, l)| &groups[*w] == grp && r(*x, x + l).contains(t));
                    prop_assert_eq!(a.covers(grp, t), covered_a);
                    prop_assert_eq!(u.covers(grp, t), a.covers(grp, t) || b.covers(grp, t));
                }
                prop_assert_eq!(u.contains(t), groups.iter().all(|grp| u.covers(grp, t)));
            }
            for h in u.held() {
                prop_assert!(!h.starts.is_empty());
                for s in &h.starts {
                    prop_assert!(u.gaps(*s).is_empty(), "held starts lie within the ranges");
                }
            }
        }

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
