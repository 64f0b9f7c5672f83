//! The interval join of two streams by key, as the speed layer keeps it per partition for a
//! view with `join_stream` (ADR 0008): pure state, no I/O (`joined` feeds it and builds the
//! joined rows).
//!
//! ```text
//!  first-side row (key, t)  ──► joined with every buffered second-side row of its key in
//!                               [t, t + within]; buffered until the watermark passes t + within
//!  second-side row (key, s) ──► joined with every buffered first-side row of its key in
//!                               [s − within, s]; buffered until the watermark passes s
//!  advance(watermark)       ──► drops what no later row can match; returns the first-side rows
//!                               that never matched (a left join's rows with NULL columns)
//! ```
//!
//! A row below the watermark is late: the caller routes it to the late topic before it gets
//! here (a joined row takes the first side's time, and `t ≤ s`, so a late second-side row could
//! only make a late joined row). With that, the rows joined over any order of arrival are
//! exactly the pairs `(f, s)` with the same key and `f.t ≤ s.t ≤ f.t + within` among the rows
//! that were not late, and a first-side row is returned unmatched exactly when it has none.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

/// One side's buffered row.
#[derive(Debug, Clone)]
struct Buffered<T> {
    time: i64,
    row: T,
    /// First side: some second-side row matched it.
    matched: bool,
    /// What the caller said the row weighs (bytes).
    size: usize,
}

/// The interval join's state for one partition.
#[derive(Debug, Clone)]
pub struct IntervalJoin<K, L, R> {
    within: i64,
    first: HashMap<K, Vec<Buffered<L>>>,
    second: HashMap<K, Vec<Buffered<R>>>,
    /// Keys by the time their oldest buffered row can be dropped: first side `t + within`,
    /// second side `s` (a key may be listed more than once; stale entries are skipped).
    expiry: BTreeMap<i64, Vec<(bool, K)>>,
    rows: usize,
    bytes: usize,
}

impl<K: Eq + Hash + Clone, L: Clone, R: Clone> IntervalJoin<K, L, R> {
    /// A join matching second-side rows up to `within` milliseconds after a first-side row.
    pub fn new(within: i64) -> Self {
        Self {
            within: within.max(0),
            first: HashMap::new(),
            second: HashMap::new(),
            expiry: BTreeMap::new(),
            rows: 0,
            bytes: 0,
        }
    }

    /// The bytes of the buffered rows, as their sizes were given.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Rows buffered on both sides.
    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// A first-side row weighing `size` bytes: the pairs it makes with buffered second-side
    /// rows.
    pub fn first(&mut self, key: K, time: i64, row: L, size: usize) -> Vec<(L, R)> {
        let until = time.saturating_add(self.within);
        let joined: Vec<(L, R)> = self
            .second
            .get(&key)
            .into_iter()
            .flatten()
            .filter(|s| s.time >= time && s.time <= until)
            .map(|s| (row.clone(), s.row.clone()))
            .collect();
        let matched = !joined.is_empty();
        self.restore_first(key, time, row, matched, size);
        joined
    }

    /// Buffers a first-side row as a checkpoint left it (nothing is joined).
    pub fn restore_first(&mut self, key: K, time: i64, row: L, matched: bool, size: usize) {
        let until = time.saturating_add(self.within);
        self.first.entry(key.clone()).or_default().push(Buffered {
            time,
            row,
            matched,
            size,
        });
        self.expiry.entry(until).or_default().push((true, key));
        self.rows += 1;
        self.bytes += size;
    }

    /// Buffers a second-side row as a checkpoint left it (nothing is joined).
    pub fn restore_second(&mut self, key: K, time: i64, row: R, size: usize) {
        self.second.entry(key.clone()).or_default().push(Buffered {
            time,
            row,
            matched: false,
            size,
        });
        self.expiry.entry(time).or_default().push((false, key));
        self.rows += 1;
        self.bytes += size;
    }

    /// Every buffered first-side row: its time, whether it matched, the row.
    pub fn firsts(&self) -> impl Iterator<Item = (i64, bool, &L)> {
        self.first
            .values()
            .flatten()
            .map(|f| (f.time, f.matched, &f.row))
    }

    /// Every buffered second-side row: its time and the row.
    pub fn seconds(&self) -> impl Iterator<Item = (i64, &R)> {
        self.second.values().flatten().map(|s| (s.time, &s.row))
    }

    /// A second-side row weighing `size` bytes: the pairs it makes with buffered first-side
    /// rows.
    pub fn second(&mut self, key: K, time: i64, row: R, size: usize) -> Vec<(L, R)> {
        let since = time.saturating_sub(self.within);
        let mut joined = Vec::new();
        if let Some(firsts) = self.first.get_mut(&key) {
            for f in firsts
                .iter_mut()
                .filter(|f| f.time >= since && f.time <= time)
            {
                f.matched = true;
                joined.push((f.row.clone(), row.clone()));
            }
        }
        self.restore_second(key, time, row, size);
        joined
    }

    /// Drops the rows no row at or after `watermark` can match; returns the first-side rows
    /// dropped without a match, in no particular order.
    pub fn advance(&mut self, watermark: i64) -> Vec<L> {
        let mut unmatched = Vec::new();
        while let Some(entry) = self.expiry.first_entry() {
            if *entry.key() >= watermark {
                break;
            }
            for (is_first, key) in entry.remove() {
                if is_first {
                    let within = self.within;
                    if let Some(rows) = self.first.get_mut(&key) {
                        let before = rows.len();
                        let mut freed = 0;
                        rows.retain(|f| {
                            let keep = f.time.saturating_add(within) >= watermark;
                            if !keep {
                                freed += f.size;
                                if !f.matched {
                                    unmatched.push(f.row.clone());
                                }
                            }
                            keep
                        });
                        self.rows -= before - rows.len();
                        self.bytes -= freed;
                        if rows.is_empty() {
                            self.first.remove(&key);
                        }
                    }
                } else if let Some(rows) = self.second.get_mut(&key) {
                    let before = rows.len();
                    let mut freed = 0;
                    rows.retain(|s| {
                        let keep = s.time >= watermark;
                        if !keep {
                            freed += s.size;
                        }
                        keep
                    });
                    self.rows -= before - rows.len();
                    self.bytes -= freed;
                    if rows.is_empty() {
                        self.second.remove(&key);
                    }
                }
            }
        }
        unmatched
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// A row: (side is first, id, key, time).
    type Row = (bool, u32, u8, i64);

    /// A small deterministic generator (the tests need no randomness crate).
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self, below: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) % below.max(1)
        }
    }

    /// Rows of increasing time, arriving up to `disorder` after it.
    fn stream(rng: &mut Lcg, n: u32, disorder: i64) -> Vec<Row> {
        let mut arrival: Vec<(i64, Row)> = (0..n)
            .map(|id| {
                let time = i64::from(id) * 10;
                let row = (rng.next(2) == 0, id, rng.next(5) as u8, time);
                (time + rng.next(disorder as u64 + 1) as i64, row)
            })
            .collect();
        arrival.sort_by_key(|(at, r)| (*at, r.1));
        arrival.into_iter().map(|(_, r)| r).collect()
    }

    #[test]
    fn joins_every_pair_within_the_interval_in_any_order_of_arrival() {
        for seed in 0..20 {
            let mut rng = Lcg(seed);
            let within = rng.next(200) as i64;
            let lateness = 300;
            let rows = stream(&mut rng, 400, lateness);
            let mut join: IntervalJoin<u8, u32, u32> = IntervalJoin::new(within);
            let mut pairs = BTreeSet::new();
            let mut unmatched = BTreeSet::new();
            let mut progress = i64::MIN;
            let mut taken: Vec<Row> = Vec::new();
            let mut most = 0;
            for r in &rows {
                let watermark = progress.saturating_sub(lateness);
                if r.3 < watermark {
                    continue; // late: the caller's late topic
                }
                taken.push(*r);
                let (is_first, id, key, time) = *r;
                let joined = if is_first {
                    join.first(key, time, id, 8)
                } else {
                    join.second(key, time, id, 8)
                };
                pairs.extend(joined);
                progress = progress.max(time);
                unmatched.extend(join.advance(progress.saturating_sub(lateness)));
                most = most.max(join.len());
            }
            // A checkpoint's rows restored give the same join.
            let mut restored: IntervalJoin<u8, u32, u32> = IntervalJoin::new(within);
            let key_of = |id: u32| rows.iter().find(|r| r.1 == id).map_or(0, |r| r.2);
            for (time, matched, id) in join.firsts() {
                restored.restore_first(key_of(*id), time, *id, matched, 8);
            }
            for (time, id) in join.seconds() {
                restored.restore_second(key_of(*id), time, *id, 8);
            }
            assert_eq!(
                (restored.len(), restored.bytes()),
                (join.len(), join.bytes())
            );
            let mut again = restored.advance(i64::MAX);
            let mut rest = join.advance(i64::MAX);
            again.sort_unstable();
            rest.sort_unstable();
            assert_eq!(again, rest, "seed {seed}");
            unmatched.extend(rest);
            assert!(join.is_empty() && join.bytes() == 0);
            // The oracle: every pair among the rows taken in.
            let mut want = BTreeSet::new();
            for f in taken.iter().filter(|r| r.0) {
                for s in taken.iter().filter(|r| !r.0) {
                    if f.2 == s.2 && s.3 >= f.3 && s.3 <= f.3 + within {
                        want.insert((f.1, s.1));
                    }
                }
            }
            let want_unmatched: BTreeSet<u32> = taken
                .iter()
                .filter(|f| f.0 && !want.iter().any(|(l, _)| *l == f.1))
                .map(|f| f.1)
                .collect();
            assert_eq!(pairs, want, "seed {seed}");
            assert_eq!(unmatched, want_unmatched, "seed {seed}");
            // Bounded: rows of about `within` + lateness of event time, not the whole stream.
            assert!(most < 150, "seed {seed}: {most} rows buffered");
        }
    }
}
