//! Which layer answers which windows of a range: the body of `GET /v1/views/{name}/coverage`.
//! Pure.
//!
//! ```text
//!  published coverage ∩ range ─► batch (exact), minus incomplete (archive lost events)
//!  speed-layer window starts not covered ─► speed (fresh), runs of windows on the view's grid
//!  held starts per group ∩ range ─► held (session views: a group's open session)
//! ```
//!
//! A window start in none of the lists has no events in either layer (an empty window), except
//! ones listed `incomplete`, whose published values miss events the archive lost.

use serde::Serialize;
use tandem_shared::coverage::{Coverage, StartRange};
use tandem_shared::time::{EventTime, Span};

/// Window starts `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Starts {
    pub from: EventTime,
    pub to: EventTime,
}

impl From<StartRange> for Starts {
    fn from(r: StartRange) -> Self {
        Self {
            from: r.from,
            to: r.to,
        }
    }
}

/// The layers' share of a range, each as ordered, disjoint ranges of window starts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Sources {
    /// Published by the batch layer, exact.
    pub batch: Vec<Starts>,
    /// Published by the batch layer from an archive that lost events (offset gaps): not exact.
    pub incomplete: Vec<Starts>,
    /// Held by the speed layer and not covered by the batch layer: answered fresh.
    pub speed: Vec<Starts>,
    /// Session views: groups the batch layer holds back within its ranges (a session of theirs
    /// was still open): their windows from these starts on are answered fresh.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub held: Vec<HeldGroup>,
}

/// Window starts of one group that the batch layer's ranges do not cover for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct HeldGroup {
    /// The group's dimension values, as text, in `group_by` order.
    pub group: Vec<String>,
    pub starts: Vec<Starts>,
}

/// Which layer answers which windows of `range`. `speed_starts` are the window starts the speed
/// layer holds (any order); `slide` is the view's window grid (`None` for sessions, whose
/// windows are listed one by one).
pub fn sources(
    range: StartRange,
    coverage: &Coverage,
    incomplete: &Coverage,
    speed_starts: &[EventTime],
    slide: Option<Span>,
) -> Sources {
    let mut batch = Vec::new();
    for r in coverage.ranges().iter().filter_map(|r| r.overlap(range)) {
        batch.extend(incomplete.gaps(r).into_iter().map(Starts::from));
    }
    let incomplete = incomplete
        .ranges()
        .iter()
        .filter_map(|r| r.overlap(range))
        .map(Starts::from)
        .collect();
    let mut starts: Vec<EventTime> = speed_starts
        .iter()
        .copied()
        .filter(|s| range.contains(*s) && !coverage.contains(*s))
        .collect();
    starts.sort();
    starts.dedup();
    let step = slide.map_or(1, |s| s.millis().max(1));
    let mut speed: Vec<Starts> = Vec::new();
    for s in starts {
        let end = EventTime(s.millis().saturating_add(step));
        match speed.last_mut() {
            Some(run) if run.to == s => run.to = end,
            _ => speed.push(Starts { from: s, to: end }),
        }
    }
    let held = coverage
        .held()
        .iter()
        .filter_map(|h| {
            let starts: Vec<Starts> = h
                .starts
                .iter()
                .filter_map(|r| r.overlap(range))
                .map(Starts::from)
                .collect();
            (!starts.is_empty()).then(|| HeldGroup {
                group: h.group.iter().map(ToString::to_string).collect(),
                starts,
            })
        })
        .collect();
    Sources {
        batch,
        incomplete,
        speed,
        held,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: i64 = 60_000;

    fn r(from: i64, to: i64) -> StartRange {
        StartRange::new(EventTime(from * M), EventTime(to * M))
    }

    fn s(from: i64, to: i64) -> Starts {
        r(from, to).into()
    }

    #[test]
    fn batch_incomplete_and_speed_windows_are_told_apart() {
        let coverage = Coverage::from_ranges([r(0, 10), r(20, 30)]);
        let incomplete = Coverage::from_ranges([r(4, 6)]);
        // The speed layer still holds minutes 8 and 9 (covered: not listed), and 10, 11, 13, 40.
        let speed: Vec<EventTime> = [13, 8, 9, 10, 11, 40, 10]
            .into_iter()
            .map(|m| EventTime(m * M))
            .collect();
        let got = sources(
            r(2, 25),
            &coverage,
            &incomplete,
            &speed,
            Some(Span::from_millis(M)),
        );
        assert_eq!(got.batch, [s(2, 4), s(6, 10), s(20, 25)]);
        assert_eq!(got.incomplete, [s(4, 6)]);
        assert_eq!(got.speed, [s(10, 12), s(13, 14)]);
    }

    #[test]
    fn held_groups_are_listed_with_their_starts_in_the_range() {
        let mut coverage = Coverage::from_ranges([r(0, 10)]);
        coverage.hold(
            &[tandem_shared::row::GroupValue::Str("u7".into())],
            r(6, 10),
        );
        let got = sources(
            r(0, 8),
            &coverage,
            &Coverage::new(),
            &[EventTime(6 * M)],
            None,
        );
        assert_eq!(got.batch, [s(0, 8)]);
        assert_eq!(
            got.held,
            [HeldGroup {
                group: vec!["u7".into()],
                starts: vec![s(6, 8)],
            }]
        );
        assert_eq!(
            got.speed.len(),
            1,
            "the held group's window is the speed layer's"
        );
    }

    #[test]
    fn session_windows_are_listed_one_by_one() {
        let speed = [EventTime(5), EventTime(6), EventTime(100)];
        let got = sources(
            StartRange::new(EventTime(0), EventTime(1_000)),
            &Coverage::new(),
            &Coverage::new(),
            &speed,
            None,
        );
        let ms = |a, b| Starts {
            from: EventTime(a),
            to: EventTime(b),
        };
        // Adjacent millisecond starts form one run; that is still exact about which starts.
        assert_eq!(got.speed, [ms(5, 7), ms(100, 101)]);
        assert!(got.batch.is_empty() && got.incomplete.is_empty());
    }
}
