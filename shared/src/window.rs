//! Event-time windows and how events are assigned to them.
//!
//! Tumbling and hopping windows are aligned to the Unix epoch: a window of size `s` sliding by
//! `e` starts at every multiple of `e` and covers `[start, start + s)`. The batch layer computes
//! the same alignment in SQL with integer arithmetic on epoch milliseconds, so both layers agree to
//! the millisecond. Session windows depend on the other events of their group and are built by
//! the layers themselves; here they only have a gap.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::time::{EventTime, Span};

/// Errors in a window definition. Always the user's configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error(
        "window must be exactly one of {{ tumbling = \"1m\" }}, {{ hopping = \"5m\", every = \"1m\" }} or {{ session_gap = \"30m\" }}"
    )]
    Shape,
    #[error("hopping window: `every` ({every}) must not exceed the window size ({size})")]
    HopLargerThanSize { size: Span, every: Span },
    #[error("hopping window: size ({size}) must be a whole multiple of `every` ({every})")]
    HopNotDivisor { size: Span, every: Span },
    #[error(transparent)]
    Span(#[from] crate::time::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A half-open interval of event time `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Window {
    pub start: EventTime,
    pub end: EventTime,
}

impl Window {
    pub fn contains(&self, t: EventTime) -> bool {
        self.start <= t && t < self.end
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {})", self.start, self.end)
    }
}

/// How a view slices event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WindowSpec {
    Tumbling { size: Span },
    Hopping { size: Span, every: Span },
    Session { gap: Span },
}

/// The TOML shape: `{ tumbling = "1m" }`, `{ hopping = "5m", every = "1m" }`, `{ session_gap = "30m" }`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tumbling: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hopping: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_gap: Option<String>,
}

impl TryFrom<&WindowConfig> for WindowSpec {
    type Error = Error;

    fn try_from(c: &WindowConfig) -> Result<Self> {
        match (&c.tumbling, &c.hopping, &c.every, &c.session_gap) {
            (Some(size), None, None, None) => Ok(WindowSpec::Tumbling {
                size: Span::parse_positive(size)?,
            }),
            (None, Some(size), Some(every), None) => {
                let size = Span::parse_positive(size)?;
                let every = Span::parse_positive(every)?;
                if every > size {
                    return Err(Error::HopLargerThanSize { size, every });
                }
                // Requiring a whole multiple keeps every window boundary on the `every` grid,
                // which is what lets the batch layer enumerate windows with integer arithmetic.
                if size.millis() % every.millis() != 0 {
                    return Err(Error::HopNotDivisor { size, every });
                }
                Ok(WindowSpec::Hopping { size, every })
            }
            (None, None, None, Some(gap)) => Ok(WindowSpec::Session {
                gap: Span::parse_positive(gap)?,
            }),
            _ => Err(Error::Shape),
        }
    }
}

impl From<WindowSpec> for WindowConfig {
    fn from(spec: WindowSpec) -> Self {
        match spec {
            WindowSpec::Tumbling { size } => WindowConfig {
                tumbling: Some(size.to_string()),
                ..Default::default()
            },
            WindowSpec::Hopping { size, every } => WindowConfig {
                hopping: Some(size.to_string()),
                every: Some(every.to_string()),
                ..Default::default()
            },
            WindowSpec::Session { gap } => WindowConfig {
                session_gap: Some(gap.to_string()),
                ..Default::default()
            },
        }
    }
}

impl fmt::Display for WindowSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WindowSpec::Tumbling { size } => write!(f, "tumbling {size}"),
            WindowSpec::Hopping { size, every } => write!(f, "hopping {size} every {every}"),
            WindowSpec::Session { gap } => write!(f, "session gap {gap}"),
        }
    }
}

/// Largest multiple of `step` that is `<= t` (floor, also for times before the epoch).
/// Saturates at `i64::MIN` (only the open-range sentinel is that far out).
pub fn align_down(t: i64, step: i64) -> i64 {
    t.saturating_sub(t.rem_euclid(step.max(1)))
}

impl WindowSpec {
    /// The grid windows start on: the size for tumbling, `every` for hopping, none for sessions.
    pub fn slide(&self) -> Option<Span> {
        match self {
            WindowSpec::Tumbling { size } => Some(*size),
            WindowSpec::Hopping { every, .. } => Some(*every),
            WindowSpec::Session { .. } => None,
        }
    }

    /// Fixed window length; sessions have none.
    pub fn size(&self) -> Option<Span> {
        match self {
            WindowSpec::Tumbling { size } | WindowSpec::Hopping { size, .. } => Some(*size),
            WindowSpec::Session { .. } => None,
        }
    }

    /// The windows of a fixed-size spec that contain `t`, oldest first. Empty for sessions.
    pub fn windows_of(&self, t: EventTime) -> impl Iterator<Item = Window> + use<> {
        let (size, slide) = match self {
            WindowSpec::Tumbling { size } => (size.millis(), size.millis()),
            WindowSpec::Hopping { size, every } => (size.millis(), every.millis()),
            WindowSpec::Session { .. } => (1, 0),
        };
        let t = t.millis();
        // Windows containing t start in (t - size, t] on the slide grid. Checked: a time so
        // close to the limits of i64 that a window start overflows has no windows (the decoder
        // only admits times in [EventTime::EARLIEST, EventTime::LATEST]).
        let (first, count) = if slide == 0 {
            (0, 0)
        } else {
            let last = align_down(t, slide);
            let count = size / slide;
            (count - 1)
                .checked_mul(slide)
                .and_then(|back| last.checked_sub(back))
                .map_or((0, 0), |first| (first, count))
        };
        (0..count).map(move |i| {
            let start = first.saturating_add(i.saturating_mul(slide));
            Window {
                start: EventTime(start),
                end: EventTime(start.saturating_add(size)),
            }
        })
    }

    /// The window that starts at `start`, for fixed-size specs.
    pub fn window_at(&self, start: EventTime) -> Option<Window> {
        self.size().map(|size| Window {
            start,
            end: start.saturating_add(size),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(c: WindowConfig) -> Result<WindowSpec> {
        WindowSpec::try_from(&c)
    }

    #[test]
    fn tumbling_assigns_exactly_one_epoch_aligned_window() {
        let w = spec(WindowConfig {
            tumbling: Some("1m".into()),
            ..Default::default()
        })
        .unwrap();
        let got: Vec<_> = w.windows_of(EventTime(125_000)).collect();
        assert_eq!(
            got,
            [Window {
                start: EventTime(120_000),
                end: EventTime(180_000)
            }]
        );
        // Boundaries belong to the window they start.
        assert_eq!(
            w.windows_of(EventTime(60_000)).next().unwrap().start,
            EventTime(60_000)
        );
        assert_eq!(
            w.windows_of(EventTime(59_999)).next().unwrap().start,
            EventTime(0)
        );
        // Before the epoch the floor still rounds down.
        assert_eq!(
            w.windows_of(EventTime(-1)).next().unwrap().start,
            EventTime(-60_000)
        );
    }

    #[test]
    fn hopping_assigns_every_window_containing_the_event() {
        let w = spec(WindowConfig {
            hopping: Some("5m".into()),
            every: Some("1m".into()),
            ..Default::default()
        })
        .unwrap();
        let t = EventTime(7 * 60_000 + 30_000);
        let got: Vec<_> = w.windows_of(t).collect();
        assert_eq!(got.len(), 5);
        assert!(got.iter().all(|win| win.contains(t)));
        assert_eq!(got[0].start, EventTime(3 * 60_000));
        assert_eq!(got[4].start, EventTime(7 * 60_000));
    }

    #[test]
    fn rejects_malformed_window_shapes() {
        assert_eq!(spec(WindowConfig::default()), Err(Error::Shape));
        assert_eq!(
            spec(WindowConfig {
                tumbling: Some("1m".into()),
                session_gap: Some("1m".into()),
                ..Default::default()
            }),
            Err(Error::Shape)
        );
        assert!(matches!(
            spec(WindowConfig {
                hopping: Some("5m".into()),
                every: Some("2m".into()),
                ..Default::default()
            }),
            Err(Error::HopNotDivisor { .. })
        ));
        assert!(matches!(
            spec(WindowConfig {
                tumbling: Some("0s".into()),
                ..Default::default()
            }),
            Err(Error::Span(_))
        ));
    }

    #[test]
    fn sessions_have_no_fixed_windows() {
        let w = spec(WindowConfig {
            session_gap: Some("30m".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(w.windows_of(EventTime(5)).count(), 0);
        assert_eq!(w.size(), None);
    }

    proptest::proptest! {
        /// No event time, however extreme, overflows window assignment (debug builds check).
        #[test]
        fn window_assignment_never_overflows(
            t in proptest::num::i64::ANY,
            size_steps in 1i64..=60,
            every in 1i64..=86_400_000,
        ) {
            let spec = WindowSpec::Hopping {
                size: Span::from_millis(every.saturating_mul(size_steps)),
                every: Span::from_millis(every),
            };
            for w in spec.windows_of(EventTime(t)) {
                proptest::prop_assert!(w.start <= w.end);
            }
            let supported = EventTime(t).is_supported();
            if supported {
                proptest::prop_assert!(spec.windows_of(EventTime(t)).all(|w| w.contains(EventTime(t))));
            }
            let _ = spec.window_at(EventTime(t));
            let _ = align_down(t, every);
        }
    }
}
