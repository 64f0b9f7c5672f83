//! The seam: one answer from two layers.
//!
//! ```text
//!  answer(query):  1. batch = catalog snapshot (coverage + which segment answers what)
//!                  2. speed = speed-layer rows of the range
//!                  3. re-check: a newer publication since 1? take it and re-read speed
//!                  4. exact rows of the range from the snapshot's segments (immutable: no
//!                     lock is held while they are read)
//!                  5. merge (pure): covered windows from batch, the rest from speed
//! ```
//!
//! For every window the batch layer's coverage decides the source: a covered window is answered
//! only from the batch layer's exact rows, any other window only from the speed layer's rows
//! (for session views, per group: a group held back by an open session keeps its later
//! sessions with the speed layer while every other group's are exact). The
//! same coverage value is used for both sides of one answer, so a window is never counted twice
//! and never missing.
//!
//! Why the re-check: the speed layer releases windows once the batch layer covers them. If a
//! publication lands between reading the batch snapshot and reading the speed rows, the speed
//! layer may already have released windows the older snapshot does not cover; reading both again
//! with the newer snapshot closes that gap (a release always follows the publication it answers).

use std::sync::Arc;

use futures::future::BoxFuture;
use tandem_batch_layer::{PublishedView, ViewCatalog};
use tandem_shared::coverage::{Coverage, StartRange};
use tandem_shared::error::ErrorKind;
use tandem_shared::row::{GroupValue, Source, ViewRow};
use tandem_shared::sketch::StatedRow;
use tandem_shared::time::EventTime;
use tandem_shared::view::ViewVersion;
use tandem_shared::window::Window;
use tandem_speed_layer::SpeedLayer;
use tandem_speed_layer::state::Partial;

/// Errors answering a view query.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("unknown view `{0}`")]
    UnknownView(String),
    /// Reading published rows failed; its kind says whether to retry.
    #[error("reading published rows: {message}")]
    Batch { kind: ErrorKind, message: String },
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::UnknownView(_) => ErrorKind::User,
            Error::Batch { kind, .. } => *kind,
        }
    }
}

/// The batch layer's side of the seam: exact rows and the coverage they come with.
pub trait PublishedViews {
    /// The view's published state; `None` for an unknown view.
    fn published(&self, view: &str) -> Option<Arc<PublishedView>>;
    /// The view's definition version; `None` for an unknown view.
    fn version(&self, view: &str) -> Option<ViewVersion>;
    /// Exact rows of `published` whose windows start in `range`, in result order.
    fn rows(
        &self,
        published: &PublishedView,
        range: StartRange,
    ) -> impl Future<Output = Result<Vec<ViewRow>, Error>> + Send;
}

impl PublishedViews for ViewCatalog {
    fn published(&self, view: &str) -> Option<Arc<PublishedView>> {
        self.get(view)
    }

    fn version(&self, view: &str) -> Option<ViewVersion> {
        self.view(view).map(|v| v.version.clone())
    }

    async fn rows(
        &self,
        published: &PublishedView,
        range: StartRange,
    ) -> Result<Vec<ViewRow>, Error> {
        if published.seq.is_none() {
            return Ok(Vec::new());
        }
        ViewCatalog::rows(self, published, range)
            .await
            .map_err(|err| Error::Batch {
                kind: err.kind(),
                message: err.to_string(),
            })
    }
}

/// The batch layer's rows with the state rollups combine (sketches, an average's parts).
pub trait PublishedStates {
    /// [`PublishedViews::rows`] with each value's state.
    fn states(
        &self,
        published: &PublishedView,
        range: StartRange,
    ) -> impl Future<Output = Result<Vec<StatedRow>, Error>> + Send;
}

impl PublishedStates for ViewCatalog {
    async fn states(
        &self,
        published: &PublishedView,
        range: StartRange,
    ) -> Result<Vec<StatedRow>, Error> {
        if published.seq.is_none() {
            return Ok(Vec::new());
        }
        ViewCatalog::states(self, published, range)
            .await
            .map_err(|err| Error::Batch {
                kind: err.kind(),
                message: err.to_string(),
            })
    }
}

/// The speed side of an answer: rows, and the partitions of the events topic no speed worker
/// answered for (empty when every partition is in the rows).
#[derive(Debug, Clone, PartialEq)]
pub struct FreshRows<R> {
    pub rows: Vec<R>,
    pub missing: Vec<i32>,
}

impl<R> FreshRows<R> {
    /// Rows from every partition.
    pub fn complete(rows: Vec<R>) -> Self {
        Self {
            rows,
            missing: Vec::new(),
        }
    }
}

/// The speed layer's partial state of the windows it still holds, for rollups.
pub trait FreshStates {
    /// One partial per window and group starting in `range`; `None` for an unknown view.
    fn fresh_states<'a>(
        &'a self,
        view: &'a str,
        range: StartRange,
    ) -> BoxFuture<'a, Option<FreshRows<Partial>>>;
}

impl FreshStates for SpeedLayer {
    fn fresh_states<'a>(
        &'a self,
        view: &'a str,
        range: StartRange,
    ) -> BoxFuture<'a, Option<FreshRows<Partial>>> {
        Box::pin(std::future::ready(
            self.query_states(view, range).map(FreshRows::complete),
        ))
    }
}

/// The speed layer's side of the seam: fresh rows of the windows it still holds.
pub trait FreshViews {
    /// Rows of windows starting in `range`; `None` for an unknown view.
    fn fresh<'a>(
        &'a self,
        view: &'a str,
        range: StartRange,
    ) -> BoxFuture<'a, Option<FreshRows<ViewRow>>>;
}

impl FreshViews for SpeedLayer {
    fn fresh<'a>(
        &'a self,
        view: &'a str,
        range: StartRange,
    ) -> BoxFuture<'a, Option<FreshRows<ViewRow>>> {
        Box::pin(std::future::ready(
            self.query(view, range).map(FreshRows::complete),
        ))
    }
}

/// What a caller asks of one view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewQuery {
    pub view: String,
    /// Window starts to answer.
    pub range: StartRange,
    /// Equality filters on group-by dimensions.
    pub filters: Vec<DimensionFilter>,
}

/// One answer from both layers.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer<R = ViewRow> {
    pub version: ViewVersion,
    /// Window starts below this are answered by the batch layer (its coverage's horizon).
    pub batch_horizon: Option<EventTime>,
    /// In result order: by window start, window end, group.
    pub rows: Vec<Answered<R>>,
    /// Partitions no speed worker answered for: the speed rows miss their events (`partial`).
    pub missing_partitions: Vec<i32>,
}

/// What the seam needs of a row: which window and group it is.
pub trait SeamRow {
    fn window(&self) -> Window;
    fn group(&self) -> &[GroupValue];
}

impl SeamRow for ViewRow {
    fn window(&self) -> Window {
        self.window
    }
    fn group(&self) -> &[GroupValue] {
        &self.group
    }
}

/// Answers `query` from the batch layer where it covers a window and from the speed layer
/// elsewhere.
pub async fn answer(
    batch: &(impl PublishedViews + Sync),
    speed: &(impl FreshViews + Sync),
    query: &ViewQuery,
) -> Result<Answer, Error> {
    answer_with(batch, &ViewRows { batch, speed }, query).await
}

/// Where the rows of both sides of the seam come from.
pub trait SeamRows {
    type Row: SeamRow;
    /// The batch layer's rows of `published` whose windows start in `range`.
    fn exact(
        &self,
        published: &PublishedView,
        range: StartRange,
    ) -> impl Future<Output = Result<Vec<Self::Row>, Error>> + Send;
    /// The speed layer's rows of `view` whose windows start in `range`.
    fn fresh(
        &self,
        view: &str,
        range: StartRange,
    ) -> impl Future<Output = FreshRows<Self::Row>> + Send;
}

/// Final rows of both layers.
struct ViewRows<'a, B, S> {
    batch: &'a B,
    speed: &'a S,
}

impl<B: PublishedViews + Sync, S: FreshViews + Sync> SeamRows for ViewRows<'_, B, S> {
    type Row = ViewRow;
    fn exact(
        &self,
        published: &PublishedView,
        range: StartRange,
    ) -> impl Future<Output = Result<Vec<ViewRow>, Error>> + Send {
        self.batch.rows(published, range)
    }
    async fn fresh(&self, view: &str, range: StartRange) -> FreshRows<ViewRow> {
        self.speed
            .fresh(view, range)
            .await
            .unwrap_or_else(|| FreshRows::complete(Vec::new()))
    }
}

/// [`answer`] over any kind of row (final values, or states for rollups): the seam's rules are
/// the same whatever the rows carry. `batch` gives the publication, `rows` the rows.
pub async fn answer_with<R: SeamRows>(
    batch: &impl PublishedViews,
    rows: &R,
    query: &ViewQuery,
) -> Result<Answer<R::Row>, Error> {
    let unknown = || Error::UnknownView(query.view.clone());
    let version = batch.version(&query.view).ok_or_else(unknown)?;
    let mut published = batch.published(&query.view).ok_or_else(unknown)?;
    let mut speed_rows = rows.fresh(&query.view, query.range).await;
    let latest = batch.published(&query.view).ok_or_else(unknown)?;
    if latest.seq != published.seq {
        published = latest;
        speed_rows = rows.fresh(&query.view, query.range).await;
    }
    let FreshRows {
        rows: speed_rows,
        missing: missing_partitions,
    } = speed_rows;
    let exact = rows.exact(&published, query.range).await?;
    let mut rows = merge(
        &published.coverage,
        exact,
        speed_rows,
        &query.filters,
        query.range,
    );
    if !published.incomplete.is_empty() {
        for r in rows.iter_mut().filter(|r| r.source == Source::Batch) {
            r.complete = !published.incomplete.contains(r.row.window().start);
        }
    }
    Ok(Answer {
        version,
        batch_horizon: published.coverage.horizon(),
        rows,
        missing_partitions,
    })
}

/// A row of a query answer with the layer it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Answered<R = ViewRow> {
    pub row: R,
    pub source: Source,
    /// False for a batch row of a window the archive lost events of (an offset gap).
    pub complete: bool,
}

/// A view row of an answer with the layer it came from.
pub type AnsweredRow = Answered<ViewRow>;

/// A filter on one group-by dimension: its position and the value as query text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DimensionFilter {
    pub position: usize,
    pub value: String,
}

/// Merges batch rows (already restricted to `range`) and speed rows for the windows in `range`.
/// Pure.
pub fn merge<R: SeamRow>(
    coverage: &Coverage,
    batch_rows: Vec<R>,
    speed_rows: Vec<R>,
    filters: &[DimensionFilter],
    range: StartRange,
) -> Vec<Answered<R>> {
    let keep = |row: &R| {
        range.contains(row.window().start)
            && filters.iter().all(|f| {
                row.group()
                    .get(f.position)
                    .is_some_and(|v| v.matches_text(&f.value))
            })
    };
    let mut out: Vec<Answered<R>> = batch_rows
        .into_iter()
        .filter(|r| coverage.covers(r.group(), r.window().start) && keep(r))
        .map(|row| Answered {
            complete: true,
            row,
            source: Source::Batch,
        })
        .chain(
            speed_rows
                .into_iter()
                .filter(|r| !coverage.covers(r.group(), r.window().start) && keep(r))
                .map(|row| Answered {
                    complete: true,
                    row,
                    source: Source::Speed,
                }),
        )
        .collect();
    // Stable: the batch rows and the speed rows each arrive in order, so this merges two runs.
    out.sort_by(|a, b| {
        let (x, y) = (a.row.window(), b.row.window());
        x.start
            .cmp(&y.start)
            .then(x.end.cmp(&y.end))
            .then_with(|| a.row.group().cmp(b.row.group()))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    use tandem_shared::row::GroupValue;
    use tandem_shared::value::AggregateValue;
    use tandem_shared::window::Window;

    const M: i64 = 60_000;

    fn row(minute: i64, city: &str, n: i64) -> ViewRow {
        ViewRow {
            window: Window {
                start: EventTime(minute * M),
                end: EventTime((minute + 1) * M),
            },
            group: vec![GroupValue::Str(city.into())],
            values: vec![AggregateValue::Int(n)],
        }
    }

    fn all() -> StartRange {
        StartRange::new(EventTime::MIN, EventTime::MAX)
    }

    #[test]
    fn covered_windows_come_from_batch_and_the_rest_from_speed() {
        let coverage = Coverage::from_ranges([StartRange::new(EventTime(0), EventTime(2 * M))]);
        let batch = vec![row(0, "A", 10), row(1, "A", 11), row(1, "B", 1)];
        // The speed layer still holds minute 1 (not yet released) and minutes 2 and 3.
        let speed = vec![row(1, "A", 9), row(2, "A", 5), row(3, "B", 7)];
        let out = merge(&coverage, batch, speed, &[], all());
        let got: Vec<_> = out
            .iter()
            .map(|a| {
                (
                    a.row.window.start.millis() / M,
                    a.row.group[0].to_string(),
                    a.row.values[0],
                    a.source,
                )
            })
            .collect();
        use AggregateValue::Int;
        assert_eq!(
            got,
            [
                (0, "A".into(), Int(10), Source::Batch),
                (1, "A".into(), Int(11), Source::Batch),
                (1, "B".into(), Int(1), Source::Batch),
                (2, "A".into(), Int(5), Source::Speed),
                (3, "B".into(), Int(7), Source::Speed),
            ]
        );
    }

    #[test]
    fn no_window_is_counted_twice_or_lost_at_any_horizon() {
        // Both layers hold every window (as right before a release); for every possible horizon
        // each window must appear exactly once.
        let windows: Vec<i64> = (0..6).collect();
        let batch: Vec<_> = windows.iter().map(|m| row(*m, "A", 100 + m)).collect();
        let speed: Vec<_> = windows.iter().map(|m| row(*m, "A", *m)).collect();
        for horizon in 0..=6 {
            let coverage =
                Coverage::from_ranges([StartRange::new(EventTime(0), EventTime(horizon * M))]);
            let out = merge(&coverage, batch.clone(), speed.clone(), &[], all());
            assert_eq!(out.len(), windows.len(), "horizon {horizon}");
            for (i, a) in out.iter().enumerate() {
                let expect = if (i as i64) < horizon {
                    Source::Batch
                } else {
                    Source::Speed
                };
                assert_eq!(a.source, expect, "horizon {horizon} window {i}");
            }
        }
    }

    #[test]
    fn a_held_group_is_answered_by_the_speed_layer_and_the_others_by_batch() {
        // Sessions view: A's session at minute 2 was still open, so A is held from 2 on; B's
        // session at minute 3 had ended. Both layers hold everything (before a release).
        let mut coverage =
            Coverage::from_ranges([StartRange::new(EventTime(0), EventTime(10 * M))]);
        coverage.hold(
            &[GroupValue::Str("A".into())],
            StartRange::new(EventTime(2 * M), EventTime(10 * M)),
        );
        let batch = vec![row(0, "A", 10), row(3, "B", 30)];
        let speed = vec![row(0, "A", 1), row(2, "A", 2), row(3, "B", 3)];
        let out = merge(&coverage, batch, speed, &[], all());
        let got: Vec<_> = out
            .iter()
            .map(|a| (a.row.window.start.millis() / M, a.row.values[0], a.source))
            .collect();
        use AggregateValue::Int;
        assert_eq!(
            got,
            [
                (0, Int(10), Source::Batch),
                (2, Int(2), Source::Speed),
                (3, Int(30), Source::Batch),
            ]
        );
    }

    #[test]
    fn filters_by_dimension_and_range() {
        let coverage = Coverage::new();
        let speed = vec![row(0, "A", 1), row(0, "B", 2), row(5, "A", 3)];
        let f = [DimensionFilter {
            position: 0,
            value: "A".into(),
        }];
        let out = merge(
            &coverage,
            Vec::new(),
            speed,
            &f,
            StartRange::new(EventTime(0), EventTime(M)),
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].row.values[0], AggregateValue::Int(1));
    }

    /// A catalog whose publication changes between two reads, and a speed layer that has
    /// already released what the newer publication covers.
    struct Racing {
        reads: Mutex<u32>,
        before: Arc<PublishedView>,
        after: Arc<PublishedView>,
        /// Exact rows per publication sequence.
        rows: Vec<(u64, Vec<ViewRow>)>,
    }

    impl PublishedViews for Racing {
        fn published(&self, _: &str) -> Option<Arc<PublishedView>> {
            let mut reads = self.reads.lock().unwrap();
            *reads += 1;
            Some(if *reads == 1 {
                Arc::clone(&self.before)
            } else {
                Arc::clone(&self.after)
            })
        }

        fn version(&self, _: &str) -> Option<ViewVersion> {
            Some(ViewVersion("v1".into()))
        }

        async fn rows(
            &self,
            published: &PublishedView,
            range: StartRange,
        ) -> Result<Vec<ViewRow>, Error> {
            Ok(self
                .rows
                .iter()
                .filter(|(seq, _)| Some(*seq) == published.seq)
                .flat_map(|(_, rows)| rows.iter().filter(|r| range.contains(r.window.start)))
                .cloned()
                .collect())
        }
    }

    struct Released(Vec<ViewRow>);

    impl FreshViews for Released {
        fn fresh<'a>(
            &'a self,
            _: &'a str,
            _: StartRange,
        ) -> BoxFuture<'a, Option<FreshRows<ViewRow>>> {
            Box::pin(std::future::ready(Some(FreshRows::complete(
                self.0.clone(),
            ))))
        }
    }

    fn published(seq: u64, minutes: i64) -> Arc<PublishedView> {
        Arc::new(PublishedView {
            seq: Some(seq),
            coverage: Coverage::from_ranges([StartRange::new(
                EventTime(0),
                EventTime(minutes * M),
            )]),
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn a_publication_between_the_two_reads_is_answered_from_the_newer_snapshot() {
        // Before: batch covers minute 0. After: minutes 0 and 1, and the speed layer has already
        // released minute 1. Answering minute 1 from the old snapshot would lose it.
        let batch = Racing {
            reads: Mutex::new(0),
            before: published(1, 1),
            after: published(2, 2),
            rows: vec![
                (1, vec![row(0, "A", 10)]),
                (2, vec![row(0, "A", 10), row(1, "A", 11)]),
            ],
        };
        let speed = Released(vec![row(2, "A", 5)]);
        let query = ViewQuery {
            view: "v".into(),
            range: all(),
            filters: Vec::new(),
        };
        let answer = answer(&batch, &speed, &query).await.unwrap();
        let got: Vec<_> = answer
            .rows
            .iter()
            .map(|a| (a.row.window.start.millis() / M, a.row.values[0], a.source))
            .collect();
        use AggregateValue::Int;
        assert_eq!(
            got,
            [
                (0, Int(10), Source::Batch),
                (1, Int(11), Source::Batch),
                (2, Int(5), Source::Speed),
            ]
        );
        assert_eq!(answer.batch_horizon, Some(EventTime(2 * M)));
    }

    #[tokio::test]
    async fn an_unknown_view_is_the_users_error() {
        struct Empty;
        impl PublishedViews for Empty {
            fn published(&self, _: &str) -> Option<Arc<PublishedView>> {
                None
            }
            fn version(&self, _: &str) -> Option<ViewVersion> {
                None
            }
            async fn rows(&self, _: &PublishedView, _: StartRange) -> Result<Vec<ViewRow>, Error> {
                Ok(Vec::new())
            }
        }
        let query = ViewQuery {
            view: "nope".into(),
            range: all(),
            filters: Vec::new(),
        };
        let err = answer(&Empty, &Released(Vec::new()), &query)
            .await
            .unwrap_err();
        assert_eq!(err, Error::UnknownView("nope".into()));
        assert_eq!(err.kind(), ErrorKind::User);
    }
}
