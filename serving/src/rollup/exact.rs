//! `exact=true`: a rollup's buckets recomputed from the raw events with DataFusion, where the
//! archive is complete for them.
//!
//! ```text
//!  archive complete until T (the batch layer's rule) ─► buckets ending at or before
//!      T − allowed lateness ─► one query over `events` (files pruned to the range) ─► exact
//!      rows, source "archive"; later buckets keep their sketch-merged rows, marked as such
//! ```

use tandem_batch_layer::recompute::{ExactRollup, RollupError};
use tandem_shared::coverage::StartRange;
use tandem_shared::time::EventTime;
use tandem_shared::view::ViewDefinition;
use tandem_shared::window::align_down;

use super::{Granularity, RolledRow};
use crate::sql::{self, SqlEngine};

/// Errors recomputing a rollup.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Sql(#[from] sql::Error),
    #[error("decoding recomputed rows: {0}")]
    Decode(#[from] RollupError),
}

/// Replaces the rows of buckets the archive holds completely by rows recomputed from it.
/// `rows` are [`super::roll`]'s, in its order; the result keeps that order.
pub async fn recompute(
    engine: &SqlEngine,
    view: &ViewDefinition,
    granularity: Granularity,
    requested: StartRange,
    rows: Vec<RolledRow>,
) -> Result<Vec<RolledRow>, Error> {
    let Some(complete) = engine.archive_complete_until().await? else {
        return Ok(rows);
    };
    let horizon = view.watermark(complete);
    let Some(range) = exact_range(&rows, granularity, requested, horizon) else {
        return Ok(rows);
    };
    let bucket = match granularity {
        Granularity::Every(span) => Some(span),
        Granularity::All => None,
    };
    let rollup = ExactRollup::new(view, engine.schema(), range, bucket);
    tracing::debug!(view = %view.name, sql = rollup.sql(), "exact rollup");
    let answer = engine.query(rollup.sql()).await?;
    let exact = rollup.rows(&answer.batches)?;
    let mut out: Vec<RolledRow> = rows
        .into_iter()
        .filter(|r| !range.contains(r.window.start))
        .collect();
    let n = view.aggregates.len();
    out.extend(exact.into_iter().map(|row| RolledRow {
        window: row.window,
        group: row.group,
        values: row.values,
        approximate: vec![false; n],
        unavailable: vec![false; n],
        batch_windows: 0,
        speed_windows: 0,
        complete: true,
        archive: true,
    }));
    out.sort_by(|a, b| (a.window.start, &a.group).cmp(&(b.window.start, &b.group)));
    Ok(out)
}

/// The bucket starts of `requested` (bucket-aligned; unbounded ends taken from `rows`) whose
/// buckets end at or before `horizon`. Pure.
fn exact_range(
    rows: &[RolledRow],
    granularity: Granularity,
    requested: StartRange,
    horizon: EventTime,
) -> Option<StartRange> {
    let from = if requested.from == EventTime::MIN {
        rows.iter().map(|r| r.window.start).min()?
    } else {
        requested.from
    };
    let to = if requested.to == EventTime::MAX {
        rows.iter().map(|r| r.window.end).max()?
    } else {
        requested.to
    };
    let to = match granularity {
        Granularity::Every(span) => {
            let last = EventTime(align_down(horizon.millis(), span.millis()));
            to.min(last)
        }
        Granularity::All if to <= horizon => to,
        Granularity::All => return None,
    };
    Some(StartRange::new(from, to)).filter(|r| !r.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_shared::time::Span;
    use tandem_shared::window::Window;

    const H: i64 = 3_600_000;

    fn bucket(hour: i64) -> RolledRow {
        RolledRow {
            window: Window {
                start: EventTime(hour * H),
                end: EventTime((hour + 1) * H),
            },
            group: Vec::new(),
            values: Vec::new(),
            approximate: Vec::new(),
            unavailable: Vec::new(),
            batch_windows: 1,
            speed_windows: 0,
            complete: true,
            archive: false,
        }
    }

    #[test]
    fn only_buckets_that_end_before_the_horizon_are_recomputed() {
        let hourly = Granularity::Every(Span::from_millis(H));
        let rows = [bucket(0), bucket(1), bucket(2)];
        let open = StartRange::new(EventTime::MIN, EventTime::MAX);
        // Complete until 2.5 h: hours 0 and 1 are whole, hour 2 is not.
        let range = exact_range(&rows, hourly, open, EventTime(5 * H / 2));
        assert_eq!(range, Some(StartRange::new(EventTime(0), EventTime(2 * H))));
        // A requested range bounds it, even where no row is (an hour neither layer holds).
        let asked = StartRange::new(EventTime(-H), EventTime(H));
        let range = exact_range(&rows, hourly, asked, EventTime(10 * H));
        assert_eq!(range, Some(StartRange::new(EventTime(-H), EventTime(H))));
        // Nothing complete yet.
        assert_eq!(exact_range(&rows, hourly, open, EventTime(H / 2)), None);
        // The global window is recomputed only if it is complete as a whole.
        let all = StartRange::new(EventTime(0), EventTime(3 * H));
        assert_eq!(
            exact_range(&rows, Granularity::All, all, EventTime(3 * H)),
            Some(all)
        );
        assert_eq!(
            exact_range(&rows, Granularity::All, all, EventTime(3 * H - 1)),
            None
        );
    }
}
