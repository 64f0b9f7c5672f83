//! One group's sessions: a short vector sorted by start.
//!
//! Most groups of a session view hold one session (a user active now) or a few. A `BTreeMap`
//! allocated a node of eleven slots (about 500 bytes) for a group's first session; a vector
//! holds exactly what the group has and is searched by bisection.

use std::ops::{Bound, Range, RangeBounds};

use tandem_shared::time::EventTime;

use super::Session;

/// Sessions of one group by start; they never overlap.
#[derive(Debug, Clone, Default)]
pub(super) struct GroupSessions {
    sorted: Vec<(EventTime, Session)>,
}

impl GroupSessions {
    /// Index of the first session starting at or after `start`.
    fn at(&self, start: EventTime) -> usize {
        self.sorted.partition_point(|(s, _)| *s < start)
    }

    /// Sessions whose start lies in `range`, by start.
    pub(super) fn range(
        &self,
        range: impl RangeBounds<EventTime>,
    ) -> impl DoubleEndedIterator<Item = (&EventTime, &Session)> {
        let from = match range.start_bound() {
            Bound::Included(s) => self.at(*s),
            Bound::Excluded(s) => self.sorted.partition_point(|(x, _)| x <= s),
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(s) => self.sorted.partition_point(|(x, _)| x <= s),
            Bound::Excluded(s) => self.at(*s),
            Bound::Unbounded => self.sorted.len(),
        };
        self.sorted
            .get(from..to.max(from))
            .unwrap_or_default()
            .iter()
            .map(|(s, session)| (s, session))
    }

    /// Positions of the sessions overlapping `[from, to)`: those that start before `to` and end
    /// after `from` (sessions are disjoint, so they are adjacent).
    pub(super) fn overlapping(&self, from: EventTime, to: EventTime) -> Range<usize> {
        let end = self.at(to);
        let mut first = end;
        while first > 0
            && self
                .sorted
                .get(first - 1)
                .is_some_and(|(_, s)| s.end > from)
        {
            first -= 1;
        }
        first..end
    }

    /// The start of the session at `position`.
    pub(super) fn start_of(&self, position: usize) -> Option<EventTime> {
        self.sorted.get(position).map(|(start, _)| *start)
    }

    /// The session at `position`, to change in place (its start stays).
    pub(super) fn session_mut(&mut self, position: usize) -> Option<&mut Session> {
        self.sorted.get_mut(position).map(|(_, session)| session)
    }

    /// Removes the sessions at `positions`, returning them by start.
    pub(super) fn take(&mut self, positions: Range<usize>) -> Vec<Session> {
        let positions =
            positions.start.min(self.sorted.len())..positions.end.min(self.sorted.len());
        self.sorted.drain(positions).map(|(_, s)| s).collect()
    }

    pub(super) fn keys(&self) -> impl Iterator<Item = &EventTime> {
        self.sorted.iter().map(|(s, _)| s)
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.sorted.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    pub(super) fn remove(&mut self, start: &EventTime) -> Option<Session> {
        let i = self.at(*start);
        (self.sorted.get(i).is_some_and(|(s, _)| s == start)).then(|| self.sorted.remove(i).1)
    }

    /// Adds a session; one that starts at the same time is replaced.
    pub(super) fn insert(&mut self, start: EventTime, session: Session) {
        let i = self.at(start);
        match self.sorted.get_mut(i) {
            Some((s, slot)) if *s == start => *slot = session,
            _ => self.sorted.insert(i, (start, session)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn session(end: i64) -> Session {
        Session {
            end: EventTime(end),
            accs: Vec::new(),
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(i64, i64),
        Remove(i64),
        Range(i64, i64),
        RangeTo(i64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0i64..40, 0i64..100).prop_map(|(s, e)| Op::Insert(s, e)),
            (0i64..40).prop_map(Op::Remove),
            (0i64..45, 0i64..45).prop_map(|(a, b)| Op::Range(a, b)),
            (0i64..45).prop_map(Op::RangeTo),
        ]
    }

    proptest! {
        /// The same answers as a `BTreeMap` (the oracle) under any sequence of operations.
        #[test]
        fn behaves_like_a_btree_map(ops in prop::collection::vec(op(), 0..60)) {
            let mut sessions = GroupSessions::default();
            let mut oracle: BTreeMap<EventTime, i64> = BTreeMap::new();
            let ends = |it: &mut dyn Iterator<Item = (&EventTime, &Session)>| {
                it.map(|(s, x)| (s.millis(), x.end.millis())).collect::<Vec<_>>()
            };
            for op in ops {
                match op {
                    Op::Insert(s, e) => {
                        sessions.insert(EventTime(s), session(e));
                        oracle.insert(EventTime(s), e);
                    }
                    Op::Remove(s) => {
                        let got = sessions.remove(&EventTime(s)).map(|x| x.end.millis());
                        prop_assert_eq!(got, oracle.remove(&EventTime(s)));
                    }
                    Op::Range(a, b) => {
                        let want: Vec<_> = if a <= b {
                            oracle.range(EventTime(a)..EventTime(b)).map(|(s, e)| (s.millis(), *e)).collect()
                        } else {
                            Vec::new()
                        };
                        prop_assert_eq!(ends(&mut sessions.range(EventTime(a)..EventTime(b))), want);
                    }
                    Op::RangeTo(b) => {
                        let want: Vec<_> = oracle.range(..EventTime(b)).rev().map(|(s, e)| (s.millis(), *e)).collect();
                        prop_assert_eq!(ends(&mut sessions.range(..EventTime(b)).rev()), want);
                    }
                }
                prop_assert_eq!(sessions.len(), oracle.len());
                prop_assert_eq!(
                    sessions.keys().copied().collect::<Vec<_>>(),
                    oracle.keys().copied().collect::<Vec<_>>()
                );
            }
        }

        /// Disjoint sessions (as a group's are): `overlapping` finds exactly those that start
        /// before the end and end after the start, `take` removes exactly them.
        #[test]
        fn overlapping_finds_every_session_that_overlaps(
            gaps in prop::collection::vec((0i64..20, 1i64..20), 0..12),
            from in 0i64..300,
            width in 0i64..60,
        ) {
            let mut sessions = GroupSessions::default();
            let mut all = Vec::new();
            let mut at = 0;
            for (gap, length) in gaps {
                let start = at + gap;
                at = start + length;
                sessions.insert(EventTime(start), session(at));
                all.push((start, at));
            }
            let to = from + width;
            let want: Vec<(i64, i64)> =
                all.iter().copied().filter(|(s, e)| *s < to && *e > from).collect();
            let found = sessions.overlapping(EventTime(from), EventTime(to));
            let starts: Vec<i64> = found
                .clone()
                .filter_map(|i| sessions.start_of(i).map(|s| s.millis()))
                .collect();
            let ends: Vec<i64> = sessions.take(found).iter().map(|x| x.end.millis()).collect();
            let got: Vec<(i64, i64)> = starts.into_iter().zip(ends).collect();
            prop_assert_eq!(got, want.clone());
            let left: Vec<i64> = sessions.keys().map(|s| s.millis()).collect();
            let want_left: Vec<i64> =
                all.iter().filter(|x| !want.contains(x)).map(|(s, _)| *s).collect();
            prop_assert_eq!(left, want_left);
        }
    }
}
