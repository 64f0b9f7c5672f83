//! Deciding what a recompute job may publish. Pure: no I/O.
//!
//! A window may be published as covered only when the archive is complete past its end plus the
//! view's allowed lateness (see [`crate::archive::ArchiveSnapshot::complete_until`]). Windows of the requested
//! range that are not ready are left to the speed layer and reported.

use std::collections::BTreeMap;

use tandem_shared::coverage::{Coverage, StartRange};
use tandem_shared::row::GroupValue;
use tandem_shared::time::{EventTime, Span};
use tandem_shared::view::ViewDefinition;
use tandem_shared::window::{WindowSpec, align_down};

use crate::archive::ArchivedFile;
use crate::catalog::ViewManifest;

/// The windows a job was asked for. `None` bounds mean "from the first archived event" and
/// "up to the last ready window".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Requested {
    pub from: Option<EventTime>,
    pub to: Option<EventTime>,
}

/// What a job will do for one view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Window starts that will be computed and published.
    pub covered: Option<StartRange>,
    /// Requested window starts that are not ready yet.
    pub not_ready: Option<StartRange>,
    /// Event times the query must read: every event of every covered window.
    pub scan: Option<StartRange>,
}

/// What the archive holds, as far as planning is concerned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ArchiveExtent {
    /// The archive's completeness (see `ArchiveSnapshot::complete_until`).
    pub complete_until: Option<EventTime>,
    /// First and last archived event times.
    pub earliest: Option<EventTime>,
    pub latest: Option<EventTime>,
}

/// Plans a fixed-window view.
pub(crate) fn plan(view: &ViewDefinition, requested: Requested, archive: ArchiveExtent) -> Plan {
    let ArchiveExtent {
        complete_until,
        earliest,
        latest,
    } = archive;
    let (Some(size), Some(slide)) = (view.window.size(), view.window.slide()) else {
        return Plan {
            covered: None,
            not_ready: None,
            scan: None,
        };
    };
    let (size, slide) = (size.millis(), slide.millis());
    // First window start whose window is not ready: a window [s, s + size) is ready iff
    // s + size + lateness <= complete_until.
    let ready_to = complete_until.map(|c| {
        let last_ready = view.watermark(c).millis().saturating_sub(size);
        EventTime(align_down(last_ready, slide).saturating_add(slide))
    });
    // The first window containing the earliest event starts up to size - slide earlier. A
    // requested start before it is clamped to it: no window before it holds an archived event,
    // and walking them would only cost time.
    let archive_from = earliest.map(|e| {
        EventTime(align_down(
            e.millis().saturating_sub(size).saturating_add(slide),
            slide,
        ))
    });
    let from = match (requested.from, archive_from) {
        (Some(f), Some(a)) => Some(EventTime(align_down(f.millis(), slide)).max(a)),
        (None, a) => a,
        // Nothing archived: nothing to compute.
        (Some(_), None) => None,
    };
    let from = match from {
        Some(f) => f,
        None => {
            return Plan {
                covered: None,
                // (From the first supported time: the range is shown in the job's record.)
                not_ready: requested
                    .to
                    .map(|to| StartRange::new(requested.from.unwrap_or(EventTime::EARLIEST), to)),
                scan: None,
            };
        }
    };
    // Round the requested end up so that a window starting before `to` is included. Without an
    // end, the request reaches the last window holding an archived event.
    let to = requested
        .to
        .map(|t| EventTime(align_down(t.millis().saturating_sub(1), slide).saturating_add(slide)));
    let archived_to =
        latest.map(|l| EventTime(align_down(l.millis(), slide).saturating_add(slide)));
    let covered_to = match (to, ready_to) {
        (Some(t), Some(r)) => Some(t.min(r)),
        (None, r) => r,
        (Some(_), None) => None,
    };
    let covered = covered_to
        .map(|ct| StartRange::new(from, ct))
        .filter(|r| !r.is_empty());
    let not_ready = match (to.or(archived_to), ready_to) {
        (Some(t), Some(r)) if t > r => Some(StartRange::new(r.max(from), t)),
        (Some(t), None) => Some(StartRange::new(from, t)),
        _ => None,
    }
    .filter(|r| !r.is_empty());
    let scan = covered.map(|c| {
        StartRange::new(
            c.from,
            EventTime(c.to.millis().saturating_sub(slide).saturating_add(size)),
        )
    });
    Plan {
        covered,
        not_ready,
        scan,
    }
}

/// For session views: what a job over the sessions starting at `from` or later may publish.
///
/// A session is final when its end is at or before the view's `watermark` (of how far the
/// archive is complete); no new session can start before the watermark (an event that early
/// would be late). So the range runs
/// from `from` to that bound (or `to`, if earlier), and a group with a session that is not
/// final yet is held from that session's start on: every other group's sessions, and this
/// group's earlier ones, are exact and published. `None` if nothing is ready.
pub(crate) fn session_coverage<'a>(
    sessions: impl IntoIterator<Item = (EventTime, EventTime, &'a [GroupValue])>,
    from: EventTime,
    to: Option<EventTime>,
    watermark: EventTime,
) -> Option<Coverage> {
    let bound = watermark;
    let range = StartRange::new(from, to.map_or(bound, |t| t.min(bound)));
    if range.is_empty() {
        return None;
    }
    // Each group's first session that can still grow.
    let mut open: BTreeMap<&[GroupValue], EventTime> = BTreeMap::new();
    for (start, end, group) in sessions {
        if range.contains(start) && end > watermark {
            open.entry(group)
                .and_modify(|s| *s = (*s).min(start))
                .or_insert(start);
        }
    }
    let mut coverage = Coverage::from_ranges([range]);
    for (group, start) in open {
        coverage.hold(group, StartRange::new(start, range.to));
    }
    Some(coverage)
}

/// Window starts of `covered` whose windows may have held events the archive lost (an offset
/// gap's time bounds, see `OffsetGap::times`). Sessions: any session within a gap of them.
pub(crate) fn incomplete(
    view: &ViewDefinition,
    covered: StartRange,
    gaps: impl IntoIterator<Item = (EventTime, EventTime)>,
) -> Vec<StartRange> {
    let mut out = Coverage::new();
    for (min, max) in gaps {
        let affected = match view.window {
            WindowSpec::Session { gap } => StartRange::new(
                min.saturating_sub(gap),
                max.saturating_add(Span::from_millis(1)),
            ),
            _ => affected_starts(view, min, max),
        };
        out.insert(StartRange::new(
            covered.from.max(affected.from),
            covered.to.min(affected.to),
        ));
    }
    out.ranges().to_vec()
}

/// Window starts whose windows can contain events with times in `[min, max]`.
fn affected_starts(view: &ViewDefinition, min: EventTime, max: EventTime) -> StartRange {
    match view.window {
        WindowSpec::Session { .. } => {
            StartRange::new(EventTime::MIN, EventTime(max.millis().saturating_add(1)))
        }
        _ => {
            let (Some(size), Some(slide)) = (view.window.size(), view.window.slide()) else {
                return StartRange::new(min, min);
            };
            let (size, slide) = (size.millis(), slide.millis());
            StartRange::new(
                EventTime(
                    align_down(min.millis(), slide)
                        .saturating_sub(size)
                        .saturating_add(slide),
                ),
                EventTime(align_down(max.millis(), slide).saturating_add(slide)),
            )
        }
    }
}

/// The oldest archive offset of `partition` that a published piece of `manifest` saw: files
/// from there on may hold rows a piece lacks. `None` if no piece recorded offsets.
pub(crate) fn oldest_seen(manifest: &ViewManifest, partition: i32) -> Option<i64> {
    manifest
        .effective()
        .into_iter()
        .flat_map(|(segment, _)| segment.pieces())
        .filter(|piece| !piece.archive_offsets.is_empty())
        .map(|piece| piece.archive_offsets.get(&partition).copied().unwrap_or(0))
        .min()
}

/// Files holding rows archived after the segment answering some of their windows was
/// computed (late events), with the published window starts they may touch. Each segment records
/// the archive offsets it saw; a file starting at or after them holds rows the segment lacks.
/// The ranges are bounded by the file's event-time range: exact for sessions' purposes, an
/// over-approximation for fixed windows (see [`dirty_ranges`]).
/// `files` holds, per partition, at least the files from [`oldest_seen`] on.
pub(crate) fn dirty_candidates<'a>(
    view: &ViewDefinition,
    manifest: &ViewManifest,
    files: &'a BTreeMap<i32, Vec<ArchivedFile>>,
) -> Vec<(&'a ArchivedFile, Coverage)> {
    let mut out: Vec<(&'a ArchivedFile, Coverage)> = Vec::new();
    for (segment, ranges) in manifest.effective() {
        // Each piece of a (compacted) segment saw the archive up to its own offsets.
        for piece in segment.pieces() {
            if piece.archive_offsets.is_empty() {
                continue;
            }
            let ranges: Vec<StartRange> = ranges
                .iter()
                .map(|r| StartRange::new(r.from.max(piece.range.from), r.to.min(piece.range.to)))
                .filter(|r| !r.is_empty())
                .collect();
            if ranges.is_empty() {
                continue;
            }
            for (partition, files) in files {
                let seen = piece.archive_offsets.get(partition).copied().unwrap_or(0);
                for file in files.iter().filter(|f| f.first_offset >= seen) {
                    let affected = affected_starts(view, file.min_time, file.max_time);
                    let mut hit = Coverage::new();
                    for r in &ranges {
                        hit.insert(StartRange::new(
                            r.from.max(affected.from),
                            r.to.min(affected.to),
                        ));
                    }
                    if hit.is_empty() {
                        continue;
                    }
                    match out.iter_mut().find(|(f, _)| f.path == file.path) {
                        Some((_, c)) => c.union(&hit),
                        None => out.push((file, hit)),
                    }
                }
            }
        }
    }
    out
}

/// Published windows made dirty by late rows, given the exact event times of each candidate
/// file's rows as slide-aligned starts (`starts_of`): a window is dirty only if a late row
/// falls in it. Sessions use the candidates' ranges as they are.
pub(crate) fn dirty_ranges(
    view: &ViewDefinition,
    candidates: &[(&ArchivedFile, Coverage)],
    starts_of: impl Fn(&ArchivedFile) -> Vec<EventTime>,
) -> Vec<StartRange> {
    let mut dirty = Coverage::new();
    let (Some(size), Some(slide)) = (view.window.size(), view.window.slide()) else {
        for (_, c) in candidates {
            dirty.union(c);
        }
        return dirty.ranges().to_vec();
    };
    let (size, slide) = (size.millis(), slide.millis());
    for (file, allowed) in candidates {
        for last in starts_of(file) {
            for h in 0..size / slide {
                let start = EventTime(last.millis().saturating_sub(h.saturating_mul(slide)));
                if allowed.contains(start) {
                    dirty.insert(StartRange::new(
                        start,
                        EventTime(start.millis().saturating_add(slide)),
                    ));
                }
            }
        }
    }
    dirty.ranges().to_vec()
}

/// Number of windows with a start in `range` on the view's grid.
pub(crate) fn window_count(view: &ViewDefinition, range: StartRange) -> u64 {
    match view.window.slide() {
        Some(slide) if !range.is_empty() => {
            let span = i128::from(range.to.millis()) - i128::from(range.from.millis());
            u64::try_from(span / i128::from(slide.millis())).unwrap_or(0)
        }
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_shared::schema::FieldType;
    use tandem_shared::testing;
    use tandem_shared::window::WindowConfig;

    const M: i64 = 60_000;

    fn view(window: WindowConfig, lateness: &str) -> ViewDefinition {
        let schema = testing::schema(&[("x", FieldType::Int64)]);
        let mut config = testing::view_config("v", window, &[], None, &["count(*)"]);
        config.allowed_lateness = Some(lateness.into());
        testing::define(&config, &schema)
    }

    fn tumbling() -> WindowConfig {
        testing::tumbling("1m")
    }

    fn extent(complete: Option<i64>, earliest: Option<i64>, latest: Option<i64>) -> ArchiveExtent {
        ArchiveExtent {
            complete_until: complete.map(EventTime),
            earliest: earliest.map(EventTime),
            latest: latest.map(EventTime),
        }
    }

    #[test]
    fn sessions_are_covered_once_final_and_an_open_one_holds_back_only_its_group() {
        let (a, b) = (
            vec![GroupValue::Str("a".into())],
            vec![GroupValue::Str("b".into())],
        );
        let s = |x: i64, y: i64, g: &'static [GroupValue]| (EventTime(x), EventTime(y), g);
        let (a, b): (&'static [GroupValue], &'static [GroupValue]) = (a.leak(), b.leak());
        // Complete until 100 with a lateness of 10: the watermark is 90, sessions ending by 90
        // are final, the range ends at 90.
        let watermark = EventTime(90);
        let sessions = [s(0, 50, a), s(60, 95, a), s(70, 90, b), s(20, 40, b)];
        let c = session_coverage(sessions, EventTime(0), None, watermark).unwrap_or_default();
        assert_eq!(c.ranges(), &[StartRange::new(EventTime(0), EventTime(90))]);
        // a's session at 60 can still grow: a is held from 60; b's session at 70 is final.
        assert!(c.covers(a, EventTime(0)));
        assert!(!c.covers(a, EventTime(60)));
        assert!(c.covers(b, EventTime(70)));
        assert_eq!(c.horizon(), Some(EventTime(60)));
        // Without open sessions everything before the watermark; a requested end clips.
        let c = session_coverage([s(0, 50, a)], EventTime(0), Some(EventTime(30)), watermark)
            .unwrap_or_default();
        assert_eq!(c.ranges(), &[StartRange::new(EventTime(0), EventTime(30))]);
        assert!(c.held().is_empty());
        assert_eq!(
            session_coverage([s(0, 50, a)], EventTime(95), None, watermark),
            None
        );
    }

    #[test]
    fn late_rows_make_their_published_windows_dirty() {
        use crate::archive::{ArchivedFile, PartitionManifest};
        use crate::catalog::Segment;
        let v = view(tumbling(), "0s");
        let file = |first: i64, min: i64, max: i64| ArchivedFile {
            path: format!("f{first}"),
            hour: EventTime(0),
            first_offset: first,
            last_offset: first + 9,
            rows: 10,
            bytes: 1,
            min_time: EventTime(min),
            max_time: EventTime(max),
        };
        let mut m = PartitionManifest::empty("t", 0, 1, EventTime(0));
        m.files = vec![
            file(0, 0, 5 * M),
            file(10, 2 * M + 5, 2 * M + 9),
            file(20, 9 * M, 9 * M + 1),
        ];
        assert_eq!(oldest_seen(&ViewManifest::default(), 0), None);
        let files: BTreeMap<i32, Vec<ArchivedFile>> = [(0, m.files)].into_iter().collect();
        let manifest = ViewManifest::default().with_segment(Segment {
            table_offsets: Default::default(),
            path: "s".into(),
            job: "j".into(),
            covered: r(0, 6 * M),
            rows: 0,
            published_at: EventTime(0),
            archive_offsets: [(0, 10)].into_iter().collect(),
            pieces: Vec::new(),
            incomplete: Vec::new(),
            held: Vec::new(),
        });
        // The file at offset 10 holds late rows for window [2m, 3m); the one at 20 is beyond the
        // published windows.
        let candidates = dirty_candidates(&v, &manifest, &files);
        assert_eq!(candidates.len(), 1);
        assert_eq!(candidates[0].0.first_offset, 10);
        let starts = |_: &ArchivedFile| vec![EventTime(2 * M)];
        assert_eq!(dirty_ranges(&v, &candidates, starts), [r(2 * M, 3 * M)]);
    }

    fn r(a: i64, b: i64) -> StartRange {
        StartRange::new(EventTime(a), EventTime(b))
    }

    #[test]
    fn with_nothing_archived_a_request_is_not_ready_from_a_time_that_can_be_written() {
        let v = view(tumbling(), "0s");
        let requested = Requested {
            from: None,
            to: Some(EventTime(0)),
        };
        let plan = plan(&v, requested, extent(None, None, None));
        assert_eq!(plan.covered, None);
        let not_ready = plan.not_ready.unwrap();
        assert_eq!(
            not_ready,
            StartRange::new(EventTime::EARLIEST, EventTime(0))
        );
        // The job record shows it: both ends are RFC 3339 timestamps.
        assert!(not_ready.from.is_supported() && not_ready.to.is_supported());
    }

    #[test]
    fn only_windows_complete_past_end_plus_lateness_are_covered() {
        let v = view(tumbling(), "10s");
        // Complete until 10m15s: window [9m,10m) needs 10m10s -> ready; [10m,11m) is not.
        let p = plan(
            &v,
            Requested {
                from: Some(EventTime(5 * M)),
                to: Some(EventTime(12 * M)),
            },
            extent(Some(10 * M + 15_000), Some(0), Some(12 * M)),
        );
        assert_eq!(p.covered, Some(r(5 * M, 10 * M)));
        assert_eq!(p.not_ready, Some(r(10 * M, 12 * M)));
        assert_eq!(p.scan, Some(r(5 * M, 10 * M)));
        // Just short of the lateness: [9m,10m) is not ready either.
        let p = plan(
            &v,
            Requested::default(),
            extent(Some(10 * M + 9_999), Some(0), Some(10 * M + 9_999)),
        );
        assert_eq!(p.covered, Some(r(0, 9 * M)));
        assert_eq!(
            p.not_ready,
            Some(r(9 * M, 11 * M)),
            "unbounded: up to the last event's window"
        );
    }

    #[test]
    fn unbounded_requests_run_from_the_first_event_to_the_last_ready_window() {
        let v = view(tumbling(), "0s");
        let p = plan(
            &v,
            Requested::default(),
            extent(Some(7 * M + 1), Some(2 * M + 30_000), Some(7 * M + 1)),
        );
        assert_eq!(p.covered, Some(r(2 * M, 7 * M)));
        assert_eq!(p.not_ready, Some(r(7 * M, 8 * M)));
        assert_eq!(window_count(&v, p.covered.unwrap()), 5);
    }

    #[test]
    fn nothing_is_covered_before_the_archive_is_complete_anywhere() {
        let v = view(tumbling(), "0s");
        let p = plan(
            &v,
            Requested {
                from: Some(EventTime(0)),
                to: Some(EventTime(3 * M)),
            },
            extent(None, Some(0), Some(M)),
        );
        assert_eq!(p.covered, None);
        assert_eq!(p.not_ready, Some(r(0, 3 * M)));
    }

    #[test]
    fn hopping_windows_scan_the_full_extent_of_the_last_window() {
        let v = view(testing::hopping("5m", "1m"), "0s");
        // Complete until 20m: the last ready window is [15m,20m).
        let p = plan(
            &v,
            Requested {
                from: Some(EventTime(10 * M)),
                to: None,
            },
            extent(Some(20 * M), Some(10 * M), None),
        );
        assert_eq!(p.covered, Some(r(10 * M, 16 * M)));
        assert_eq!(p.scan, Some(r(10 * M, 20 * M)));
    }

    #[test]
    fn unaligned_requests_snap_to_the_window_grid() {
        let v = view(tumbling(), "0s");
        let p = plan(
            &v,
            Requested {
                from: Some(EventTime(M + 5)),
                to: Some(EventTime(3 * M + 5)),
            },
            extent(Some(100 * M), Some(0), None),
        );
        assert_eq!(p.covered, Some(r(M, 4 * M)));
    }

    #[test]
    fn a_start_before_the_archive_is_clamped_to_its_first_window() {
        let v = view(testing::hopping("5m", "1m"), "0s");
        let year_one = EventTime::EARLIEST;
        let p = plan(
            &v,
            Requested {
                from: Some(year_one),
                to: None,
            },
            extent(Some(100 * M), Some(50 * M + 7), Some(60 * M)),
        );
        // The first window holding the event at 50m starts at 46m.
        assert_eq!(p.covered, Some(r(46 * M, 96 * M)));
        assert_eq!(window_count(&v, p.covered.unwrap()), 50);
        // Nothing archived: nothing to compute, whatever the request.
        let p = plan(
            &v,
            Requested {
                from: Some(year_one),
                to: None,
            },
            extent(Some(100 * M), None, None),
        );
        assert_eq!(p.covered, None);
        assert_eq!(
            window_count(&v, StartRange::new(EventTime::MIN, EventTime::MAX)),
            u64::try_from(u128::from(u64::MAX) / 60_000).unwrap()
        );
    }

    #[test]
    fn windows_overlapping_a_gap_are_incomplete() {
        let v = view(testing::hopping("5m", "1m"), "0s");
        let covered = r(0, 60 * M);
        // Lost events between 20m and 21m30s: windows starting 16m..21m hold some of them.
        let gaps = [(EventTime(20 * M), EventTime(21 * M + 30_000))];
        assert_eq!(incomplete(&v, covered, gaps), [r(16 * M, 22 * M)]);
        // Outside the covered range: nothing.
        assert!(incomplete(&v, r(30 * M, 60 * M), gaps).is_empty());
        // An unbounded gap (no event time known after it) reaches the end of what is covered.
        let open = [(EventTime(50 * M), EventTime::MAX)];
        assert_eq!(incomplete(&v, covered, open), [r(46 * M, 60 * M)]);
    }

    proptest::proptest! {
        /// No request or archive extent, however extreme, overflows planning (debug builds
        /// check), and the covered range never starts before the archive's first window.
        #[test]
        fn planning_never_overflows(
            from in proptest::option::of(proptest::num::i64::ANY),
            to in proptest::option::of(proptest::num::i64::ANY),
            complete in proptest::option::of(proptest::num::i64::ANY),
            earliest in proptest::option::of(proptest::num::i64::ANY),
            latest in proptest::option::of(proptest::num::i64::ANY),
        ) {
            let v = view(testing::hopping("5m", "1m"), "10s");
            let p = plan(
                &v,
                Requested { from: from.map(EventTime), to: to.map(EventTime) },
                extent(complete, earliest, latest),
            );
            if let (Some(c), Some(e)) = (p.covered, earliest) {
                proptest::prop_assert!(c.from.millis() >= e.saturating_sub(5 * M));
            }
            if let Some(c) = p.covered {
                let _ = window_count(&v, c);
            }
        }
    }
}
