//! The view manifest: which segments answer which windows of one view version. Pure.
//!
//! A recompute job writes its result as an immutable segment and then publishes the next view
//! manifest, which lists the segments in recency order, each with the window starts it covers.
//! For every window the newest segment covering it is the answer; segments entirely shadowed by
//! newer ones are dropped from the manifest.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tandem_shared::coverage::{Coverage, StartRange};
use tandem_shared::time::EventTime;

/// One job's result for a range of window starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub path: String,
    pub job: String,
    pub covered: StartRange,
    pub rows: u64,
    pub published_at: EventTime,
    /// The archive's next offset per partition when the job read it: what the segment includes.
    #[serde(default)]
    pub archive_offsets: BTreeMap<i32, i64>,
}

impl Segment {
    /// How much of the archive the segment saw. Archive offsets only grow, so of two segments
    /// the one that saw more was computed from a newer archive.
    fn recency(&self) -> i128 {
        self.archive_offsets.values().map(|o| i128::from(*o)).sum()
    }
}

/// The published state of one view version: its segments, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewManifest {
    pub view: String,
    pub version: String,
    pub segments: Vec<Segment>,
}

impl ViewManifest {
    /// For each segment, newest first, the window starts it answers (newest segment wins).
    pub fn effective(&self) -> Vec<(&Segment, Vec<StartRange>)> {
        let mut claimed = Coverage::new();
        let mut out = Vec::with_capacity(self.segments.len());
        for seg in self.segments.iter().rev() {
            let mine: Vec<StartRange> = claimed.gaps(seg.covered);
            claimed.insert(seg.covered);
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
        next.segments.insert(at, segment);
        let live: Vec<String> = next
            .effective()
            .into_iter()
            .filter(|(_, ranges)| !ranges.is_empty())
            .map(|(s, _)| s.path.clone())
            .collect();
        next.segments.retain(|s| live.contains(&s.path));
        next
    }

    pub fn coverage(&self) -> Coverage {
        Coverage::from_ranges(self.segments.iter().map(|s| s.covered))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(name: &str, a: i64, b: i64) -> Segment {
        seen(name, a, b, 0)
    }

    fn seen(name: &str, a: i64, b: i64, offset: i64) -> Segment {
        Segment {
            path: name.into(),
            job: name.into(),
            covered: StartRange::new(EventTime(a), EventTime(b)),
            rows: 0,
            published_at: EventTime(0),
            archive_offsets: [(0, offset)].into_iter().collect(),
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
}
