//! The view manifest: which segments answer which windows of one view version. Pure.
//!
//! A recompute job writes its result as an immutable segment and then publishes the next view
//! manifest, which lists the segments in recency order, each with the window starts it covers.
//! For every window the newest segment covering it is the answer; segments entirely shadowed by
//! newer ones are dropped from the manifest and *retired*: listed with the time they stopped
//! answering, so their objects are deleted only after the retention period (a reader holding
//! an older manifest can still read them meanwhile).
//!
//! Compaction merges the small segments of one closed UTC day into one: the merged segment is
//! made of *pieces*, each the effective ranges of one former segment with the archive offsets
//! that segment saw, and takes the place of the newest of them, so every window keeps its
//! answer and late-data detection stays exact.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tandem_shared::coverage::{Coverage, Held, StartRange};
use tandem_shared::time::EventTime;

/// One job's result for a range of window starts (or, compacted, several former segments').
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub path: String,
    pub job: String,
    /// The window starts the segment answers (the hull of its pieces, when it has any).
    pub covered: StartRange,
    pub rows: u64,
    pub published_at: EventTime,
    /// The archive's next offset per partition when the job read it: what the segment includes.
    #[serde(default)]
    pub archive_offsets: BTreeMap<i32, i64>,
    /// A joined view's: each dimension table archive's next offset per partition when the job
    /// read it (a table row archived after them may change the segment's windows).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub table_offsets: BTreeMap<String, BTreeMap<i32, i64>>,
    /// A compacted segment's parts; empty for a job's segment (one piece: `covered`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pieces: Vec<Piece>,
    /// Window starts whose events the archive lost in part (offset gaps): answered, but not
    /// exact.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub incomplete: Vec<StartRange>,
    /// Session views: groups whose sessions the segment does not answer from a start on (a
    /// session of theirs was still open); their windows there are the speed layer's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held: Vec<Held>,
}

/// Window starts of a segment computed from one reading of the archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Piece {
    pub range: StartRange,
    pub archive_offsets: BTreeMap<i32, i64>,
}

impl Segment {
    /// The segment's pieces: its own range and offsets, unless compacted.
    pub fn pieces(&self) -> Vec<Piece> {
        if self.pieces.is_empty() {
            vec![Piece {
                range: self.covered,
                archive_offsets: self.archive_offsets.clone(),
            }]
        } else {
            self.pieces.clone()
        }
    }

    /// How much of the archive the segment saw. Archive offsets only grow, so of two segments
    /// the one that saw more was computed from a newer archive.
    fn recency(&self) -> i128 {
        self.pieces()
            .iter()
            .map(|p| p.archive_offsets.values().map(|o| i128::from(*o)).sum())
            .max()
            .unwrap_or(0)
    }
}

/// A segment no longer in the manifest, and since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retired {
    pub path: String,
    pub retired_at: EventTime,
    /// `path` is an object listing the retired segments (a compaction's members), so that a
    /// manifest names one entry per compaction, not one per segment.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub list: bool,
}

/// Small segments of one closed day to merge into one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compaction {
    /// Start of the UTC day.
    pub day: EventTime,
    /// Paths of the segments merged, oldest first.
    pub members: Vec<String>,
    /// What the merged segment answers: each member's effective ranges with its offsets.
    pub pieces: Vec<Piece>,
}

const DAY: i64 = 86_400_000;

/// The published state of one view version: its segments, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewManifest {
    pub view: String,
    pub version: String,
    pub segments: Vec<Segment>,
    /// Segments that no longer answer anything, until retention deletes them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired: Vec<Retired>,
}

impl ViewManifest {
    /// For each segment, newest first, the window starts it answers (newest segment wins).
    pub fn effective(&self) -> Vec<(&Segment, Vec<StartRange>)> {
        let mut claimed = Coverage::new();
        let mut out = Vec::with_capacity(self.segments.len());
        for seg in self.segments.iter().rev() {
            let mut mine: Vec<StartRange> = Vec::new();
            let pieces = seg.pieces();
            for piece in &pieces {
                mine.extend(claimed.gaps(piece.range));
            }
            for piece in &pieces {
                claimed.insert(piece.range);
            }
            mine.sort_by_key(|r| r.from);
            out.push((seg, mine));
        }
        out
    }

    /// The manifest with `segment` added in recency order (a job that read an older archive
    /// never overrides one that read a newer archive, whatever order they finish in); segments
    /// left with nothing to answer are dropped.
    pub fn with_segment(&self, segment: Segment) -> Self {
        let mut next = self.clone();
        let at = next
            .segments
            .iter()
            .rposition(|s| s.recency() <= segment.recency())
            .map_or(0, |i| i + 1);
        let now = segment.published_at;
        next.segments.insert(at, segment);
        let live: Vec<String> = next
            .effective()
            .into_iter()
            .filter(|(_, ranges)| !ranges.is_empty())
            .map(|(s, _)| s.path.clone())
            .collect();
        let (kept, dropped): (Vec<Segment>, Vec<Segment>) = next
            .segments
            .into_iter()
            .partition(|s| live.contains(&s.path));
        next.segments = kept;
        next.retired.extend(dropped.into_iter().map(|s| Retired {
            path: s.path,
            retired_at: now,
            list: false,
        }));
        next
    }

    /// Window starts answered by segments that call them incomplete.
    pub fn incomplete(&self) -> Coverage {
        let mut out = Coverage::new();
        for (segment, ranges) in self.effective() {
            for bad in &segment.incomplete {
                for r in &ranges {
                    out.insert(r.intersection(*bad));
                }
            }
        }
        out
    }

    /// The window starts answered, minus what each answering segment holds back per group.
    pub fn coverage(&self) -> Coverage {
        let mut coverage = Coverage::from_ranges(
            self.segments
                .iter()
                .flat_map(|s| s.pieces().into_iter().map(|p| p.range)),
        );
        for (segment, ranges) in self.effective() {
            for h in &segment.held {
                for held in &h.starts {
                    // Only where this segment answers: a newer one decides elsewhere.
                    for r in &ranges {
                        coverage.hold(&h.group, r.intersection(*held));
                    }
                }
            }
        }
        coverage
    }

    /// Days before `before` (start of a UTC day) with at least `min_segments` segments that
    /// each lie within the day: what compaction should merge. Pure.
    pub fn compactions(&self, before: EventTime, min_segments: usize) -> Vec<Compaction> {
        let mut by_day: BTreeMap<i64, Vec<(&Segment, Vec<StartRange>)>> = BTreeMap::new();
        for (segment, ranges) in self.effective() {
            let day = tandem_shared::window::align_down(segment.covered.from.millis(), DAY);
            let within = segment.covered.to.millis() <= day.saturating_add(DAY)
                && segment.covered.to <= before;
            if within && !ranges.is_empty() {
                by_day.entry(day).or_default().push((segment, ranges));
            }
        }
        let mut out = Vec::new();
        for (day, mut members) in by_day {
            if members.len() < min_segments.max(2) {
                continue;
            }
            members.reverse(); // effective() is newest first
            out.push(Compaction {
                day: EventTime(day),
                members: members.iter().map(|(s, _)| s.path.clone()).collect(),
                pieces: pieces_of(&members),
            });
        }
        out
    }

    /// The manifest with `compaction`'s members replaced by `merged` at the place of the
    /// newest member (so every window keeps its answer), the members retired at `now` through
    /// the object `retired_list` that lists them. `None` if the members are no longer all in
    /// this manifest.
    pub fn compacted(
        &self,
        compaction: &Compaction,
        mut merged: Segment,
        now: EventTime,
        retired_list: &str,
    ) -> Option<Self> {
        let positions: Vec<usize> = compaction
            .members
            .iter()
            .map(|m| self.segments.iter().position(|s| &s.path == m))
            .collect::<Option<_>>()?;
        // The members must still answer exactly what the plan merged: a segment published
        // meanwhile in between them (from an older archive reading) would otherwise lose.
        let effective = self.effective();
        let members: Vec<(&Segment, Vec<StartRange>)> = compaction
            .members
            .iter()
            .filter_map(|m| effective.iter().find(|(s, _)| &s.path == m).cloned())
            .collect();
        if pieces_of(&members) != compaction.pieces {
            return None;
        }
        // What the members called incomplete stays so, where they still answered.
        let mut incomplete = Coverage::new();
        for (segment, ranges) in &members {
            for bad in &segment.incomplete {
                for r in ranges {
                    incomplete.insert(r.intersection(*bad));
                }
            }
        }
        merged.incomplete = incomplete.ranges().to_vec();
        // What the members held back stays held, where they still answered.
        let mut held = Coverage::from_ranges(members.iter().flat_map(|(_, r)| r.iter().copied()));
        for (segment, ranges) in &members {
            for h in &segment.held {
                for s in &h.starts {
                    for r in ranges {
                        held.hold(&h.group, r.intersection(*s));
                    }
                }
            }
        }
        merged.held = held.held().to_vec();
        let newest = *positions.iter().max()?;
        let mut next = self.clone();
        next.segments[newest] = merged;
        let mut removed: Vec<usize> = positions.into_iter().filter(|p| *p != newest).collect();
        removed.sort_unstable();
        for p in removed.into_iter().rev() {
            next.segments.remove(p);
        }
        next.retired.push(Retired {
            path: retired_list.to_owned(),
            retired_at: now,
            list: true,
        });
        Some(next)
    }

    /// Retired segments retired before `cutoff`: their objects may be deleted.
    pub fn expired(&self, cutoff: EventTime) -> Vec<Retired> {
        self.retired
            .iter()
            .filter(|r| r.retired_at < cutoff)
            .cloned()
            .collect()
    }

    /// The manifest without the retired entries of `paths` (deleted).
    pub fn forget(&self, paths: &[String]) -> Self {
        let mut next = self.clone();
        next.retired.retain(|r| !paths.contains(&r.path));
        next
    }
}

/// `pieces` (in window order) with adjacent ones joined and every one stamped with `offsets`:
/// for a day whose windows are all clean (no archived row after a piece's offsets falls in its
/// windows), each window's result is what a recompute at `offsets` would give, so one piece per
/// contiguous run says the same with less. Keeps a compacted manifest small.
pub(crate) fn coalesce(pieces: &[Piece], offsets: &BTreeMap<i32, i64>) -> Vec<Piece> {
    let mut out: Vec<Piece> = Vec::new();
    for p in pieces {
        match out.last_mut() {
            Some(last) if last.range.to == p.range.from => last.range.to = p.range.to,
            _ => out.push(Piece {
                range: p.range,
                archive_offsets: offsets.clone(),
            }),
        }
    }
    out
}

/// Each segment's effective ranges, cut along its own pieces, in window order.
fn pieces_of(members: &[(&Segment, Vec<StartRange>)]) -> Vec<Piece> {
    let mut pieces = Vec::new();
    for (segment, ranges) in members {
        for piece in segment.pieces() {
            for r in ranges {
                let range = StartRange::new(r.from.max(piece.range.from), r.to.min(piece.range.to));
                if !range.is_empty() {
                    pieces.push(Piece {
                        range,
                        archive_offsets: piece.archive_offsets.clone(),
                    });
                }
            }
        }
    }
    pieces.sort_by_key(|p| p.range.from);
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(name: &str, a: i64, b: i64) -> Segment {
        seen(name, a, b, 0)
    }

    fn seen(name: &str, a: i64, b: i64, offset: i64) -> Segment {
        Segment {
            table_offsets: Default::default(),
            path: name.into(),
            job: name.into(),
            covered: StartRange::new(EventTime(a), EventTime(b)),
            rows: 0,
            published_at: EventTime(0),
            archive_offsets: [(0, offset)].into_iter().collect(),
            pieces: Vec::new(),
            incomplete: Vec::new(),
            held: Vec::new(),
        }
    }

    #[test]
    fn an_older_job_finishing_last_never_overrides_a_newer_one() {
        // The job that read offsets up to 100 publishes after the one that read up to 200.
        let m = ViewManifest::default()
            .with_segment(seen("newer", 0, 100, 200))
            .with_segment(seen("older", 0, 100, 100));
        assert_eq!(
            m.segments.len(),
            1,
            "the older segment is entirely shadowed"
        );
        assert_eq!(m.segments[0].path, "newer");
        let m = ViewManifest::default()
            .with_segment(seen("newer", 50, 100, 200))
            .with_segment(seen("older", 0, 100, 100));
        let eff: Vec<_> = m
            .effective()
            .into_iter()
            .map(|(s, r)| (s.path.clone(), r))
            .collect();
        assert_eq!(eff[0].0, "newer");
        assert_eq!(
            eff[1],
            (
                "older".to_string(),
                vec![StartRange::new(EventTime(0), EventTime(50))]
            )
        );
    }

    #[test]
    fn newest_segment_wins_and_shadowed_segments_are_dropped() {
        let m = ViewManifest::default()
            .with_segment(seg("a", 0, 100))
            .with_segment(seg("b", 50, 150));
        let eff: Vec<_> = m
            .effective()
            .into_iter()
            .map(|(s, r)| (s.path.clone(), r))
            .collect();
        assert_eq!(
            eff,
            [
                (
                    "b".to_string(),
                    vec![StartRange::new(EventTime(50), EventTime(150))]
                ),
                (
                    "a".to_string(),
                    vec![StartRange::new(EventTime(0), EventTime(50))]
                ),
            ]
        );
        let m = m.with_segment(seg("c", 0, 200));
        assert_eq!(m.segments.len(), 1, "c shadows a and b entirely");
        assert_eq!(m.coverage().horizon(), Some(EventTime(200)));
    }

    #[test]
    fn held_groups_stay_held_where_their_segment_answers_and_through_compaction() {
        let user = |u: &str| vec![tandem_shared::row::GroupValue::Str(u.into())];
        let held = |u: &str, from: i64, to: i64| Held {
            group: user(u),
            starts: vec![StartRange::new(EventTime(from), EventTime(to))],
        };
        // Job 1 covers [0, 100) with u1 held from 40; job 2 (from the horizon, 40) covers
        // [40, 200) with u2 held from 150.
        let mut first = seen("s1", 0, 100, 10);
        first.held = vec![held("u1", 40, 100)];
        let m = ViewManifest::default().with_segment(first);
        let c = m.coverage();
        assert!(!c.covers(&user("u1"), EventTime(40)));
        assert!(c.covers(&user("u2"), EventTime(40)));
        assert_eq!(c.horizon(), Some(EventTime(40)));
        let mut second = seen("s2", 40, 200, 20);
        second.held = vec![held("u2", 150, 200)];
        let m = m.with_segment(second);
        let c = m.coverage();
        assert!(
            c.covers(&user("u1"), EventTime(40)),
            "job 2 answers u1 there"
        );
        assert!(!c.covers(&user("u2"), EventTime(150)));
        assert!(c.covers(&user("u1"), EventTime(150)));
        assert_eq!(c.horizon(), Some(EventTime(150)));
        // Compacting both (one day) keeps every group's answer.
        let plans = m.compactions(EventTime(DAY), 2);
        assert_eq!(plans.len(), 1);
        let merged = Segment {
            table_offsets: Default::default(),
            path: "merged".into(),
            job: "compaction".into(),
            covered: StartRange::new(EventTime(0), EventTime(200)),
            rows: 0,
            published_at: EventTime(0),
            archive_offsets: BTreeMap::new(),
            pieces: plans[0].pieces.clone(),
            incomplete: Vec::new(),
            held: Vec::new(),
        };
        let compacted = m
            .compacted(&plans[0], merged, EventTime(1), "list")
            .unwrap();
        assert_eq!(compacted.segments.len(), 1);
        assert_eq!(compacted.coverage(), c);
    }

    const H: i64 = 3_600_000;

    fn answers(m: &ViewManifest, at: i64) -> Option<(String, BTreeMap<i32, i64>)> {
        m.effective().into_iter().find_map(|(s, ranges)| {
            ranges.iter().any(|r| r.contains(EventTime(at))).then(|| {
                let piece = s
                    .pieces()
                    .into_iter()
                    .find(|p| p.range.contains(EventTime(at)))
                    .unwrap();
                (s.path.clone(), piece.archive_offsets)
            })
        })
    }

    #[test]
    fn compaction_merges_a_closed_day_and_every_window_keeps_its_answer() {
        // Day 0: hourly segments, one overridden in part by a later recompute; a segment of
        // day 1 (not closed yet) and one spanning both days stay as they are.
        let mut m = ViewManifest::default();
        for h in 0..6 {
            m = m.with_segment(seen(&format!("h{h}"), h * H, (h + 1) * H, 10 * (h + 1)));
        }
        m = m.with_segment(seen("fix", 2 * H, 3 * H + H / 2, 100));
        m = m.with_segment(seen("span", 23 * H, 25 * H, 110));
        m = m.with_segment(seen("d1", 30 * H, 31 * H, 120));
        let before: Vec<_> = (0..32).map(|h| answers(&m, h * H + 1)).collect();
        let plans = m.compactions(EventTime(24 * H), 2);
        assert_eq!(plans.len(), 1, "{plans:?}");
        let plan = &plans[0];
        assert_eq!(plan.day, EventTime(0));
        assert_eq!(
            plan.members.len(),
            6,
            "h2 is shadowed by fix entirely; h3 in part"
        );
        let merged = Segment {
            table_offsets: Default::default(),
            path: "merged".into(),
            job: "compaction".into(),
            covered: StartRange::new(
                plan.pieces[0].range.from,
                plan.pieces.last().unwrap().range.to,
            ),
            rows: 0,
            published_at: EventTime(0),
            archive_offsets: BTreeMap::new(),
            pieces: plan.pieces.clone(),
            incomplete: Vec::new(),
            held: Vec::new(),
        };
        let c = m.compacted(plan, merged, EventTime(99), "list").unwrap();
        assert_eq!(c.segments.len(), 3, "merged, span, d1");
        for (h, was) in before.iter().enumerate() {
            let now = answers(&c, h as i64 * H + 1);
            match (was, &now) {
                (Some((path, offsets)), Some((new_path, new_offsets))) => {
                    assert_eq!(offsets, new_offsets, "hour {h}: same archive offsets");
                    if path == "span" || path == "d1" {
                        assert_eq!(path, new_path);
                    } else {
                        assert_eq!(new_path, "merged", "hour {h}");
                    }
                }
                (None, None) => {}
                other => panic!("hour {h}: {other:?}"),
            }
        }
        assert_eq!(c.coverage(), m.coverage());
        let listed: Vec<_> = c.retired.iter().filter(|r| r.list).collect();
        assert_eq!(
            listed.len(),
            1,
            "one entry per compaction, whatever its size"
        );
        assert_eq!(listed[0].retired_at, EventTime(99));
        // A member that changed meanwhile makes the compaction stale: shadowed entirely, or
        // overridden in part by a segment from an older archive reading that sits between
        // the members.
        let moved = m.with_segment(seen("late", 0, 6 * H, 200));
        assert!(
            moved
                .compacted(plan, c.segments[0].clone(), EventTime(99), "list")
                .is_none()
        );
        let between = m.with_segment(seen("between", 0, H / 2, 15));
        assert!(
            between
                .compacted(plan, c.segments[0].clone(), EventTime(99), "list")
                .is_none()
        );
        // Nothing more to merge, and a later job still lands in recency order.
        assert!(c.compactions(EventTime(24 * H), 2).is_empty());
        let later = c.with_segment(seen("later", H, 2 * H, 300));
        assert_eq!(answers(&later, H + 1).unwrap().0, "later");
    }

    #[test]
    fn retired_segments_expire_after_the_cutoff() {
        let m = ViewManifest::default()
            .with_segment(Segment {
                published_at: EventTime(10),
                ..seg("a", 0, 100)
            })
            .with_segment(Segment {
                published_at: EventTime(20),
                ..seg("b", 0, 100)
            });
        assert_eq!(
            m.retired,
            [Retired {
                path: "a".into(),
                retired_at: EventTime(20),
                list: false,
            }]
        );
        assert!(m.expired(EventTime(20)).is_empty());
        assert_eq!(m.expired(EventTime(21))[0].path, "a");
        assert!(m.forget(&["a".into()]).retired.is_empty());
    }

    #[test]
    fn clean_pieces_coalesce_into_runs_with_the_current_offsets() {
        let piece = |a: i64, b: i64, o: i64| Piece {
            range: StartRange::new(EventTime(a), EventTime(b)),
            archive_offsets: BTreeMap::from([(0, o)]),
        };
        let now = BTreeMap::from([(0, 99)]);
        let out = coalesce(&[piece(0, 1, 1), piece(1, 2, 2), piece(3, 4, 3)], &now);
        assert_eq!(out, [piece(0, 2, 99), piece(3, 4, 99)]);
    }
}
