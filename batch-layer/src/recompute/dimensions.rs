//! Joined sides in a recompute (dimension tables, and a joined stream's second topic): which
//! archived rows of each a query reads, how far they are complete, and which published
//! windows a row archived after a job read them may change.
//!
//! ```text
//!  view.joins + join_stream ──ArchiveSnapshot of each side's topic──► DimensionFiles
//!     (registered as `__table_<name>`) + completeness (min over sides) + offsets (recorded
//!     in the segment)
//!  segment.table_offsets + the side's files from them ──table_dirt (pure)──► dirty windows
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use tandem_shared::coverage::{Coverage, StartRange};
use tandem_shared::schema::EventSchema;
use tandem_shared::table::TableDefinition;
use tandem_shared::time::{EventTime, Span};
use tandem_shared::view::ViewDefinition;
use tandem_shared::window::align_down;

use super::{Recompute, Result};
use crate::archive::{ArchiveSnapshot, ArchivedFile};
use crate::catalog::{self, ViewManifest};

/// A joined dimension table's archived rows, as a query reads them.
pub(super) struct DimensionFiles {
    pub(super) name: String,
    pub(super) schema: Arc<EventSchema>,
    pub(super) files: Vec<ArchivedFile>,
    /// The table archive's next offset per partition: what the job read of it.
    pub(super) offsets: BTreeMap<i32, i64>,
}

/// A side a view joins: a dimension table (its rows valid from their time on), or a joined
/// stream's second topic (its events matching first-topic events up to `within` before
/// them). Either is complete until now when quiet.
struct Side<'a> {
    table: &'a TableDefinition,
    stream: Option<Span>,
}

fn sides(view: &ViewDefinition) -> impl Iterator<Item = Side<'_>> {
    view.joins
        .iter()
        .map(|j| Side {
            table: &j.table,
            stream: None,
        })
        .chain(view.join_stream.iter().map(|s| Side {
            table: &s.side,
            stream: Some(s.within),
        }))
}

impl Recompute {
    /// The archived rows of `view`'s joined tables valid before `to`, and how far every one
    /// of their archives is complete (`None`: one is not known to be complete anywhere, so no
    /// window of the view is exact yet).
    pub(super) async fn dimensions(
        &self,
        view: &ViewDefinition,
        now: EventTime,
        to: EventTime,
    ) -> Result<(Vec<DimensionFiles>, Option<EventTime>)> {
        let mut out = Vec::with_capacity(view.joins.len() + 1);
        let mut complete = Some(EventTime::MAX);
        for side in sides(view) {
            let table = side.table;
            let snapshot = ArchiveSnapshot::load(&self.store, &table.topic).await?;
            // A side whose partitions are all quiet is complete until now: a row or event
            // that comes later is late, and makes the windows it changes dirty (below).
            complete = complete.min(snapshot.table_complete_until(now, self.idle_timeout));
            out.push(DimensionFiles {
                name: table.name.clone(),
                schema: Arc::clone(table.schema()),
                offsets: snapshot
                    .partitions
                    .iter()
                    .map(|(p, m)| (*p, m.next_offset))
                    .collect(),
                files: snapshot
                    .files_between(&self.store, EventTime::MIN, to)
                    .await?,
            });
        }
        Ok((out, complete))
    }

    /// Published windows of `view` that rows of its joined tables, archived after the job
    /// that published them read the tables, may change (see [`table_dirt`]).
    pub(super) async fn table_dirt(
        &self,
        view: &ViewDefinition,
        manifest: &catalog::ViewManifest,
    ) -> Result<Vec<StartRange>> {
        let mut out = Vec::new();
        for side in sides(view) {
            let name = &side.table.name;
            let snapshot = ArchiveSnapshot::load(&self.store, &side.table.topic).await?;
            let mut files = BTreeMap::new();
            for partition in snapshot.partitions.keys() {
                let oldest = manifest
                    .effective()
                    .iter()
                    .filter_map(|(s, _)| s.table_offsets.get(name))
                    .map(|seen| seen.get(partition).copied().unwrap_or(0))
                    .min();
                if let Some(offset) = oldest {
                    files.insert(
                        *partition,
                        snapshot.files_from(&self.store, *partition, offset).await?,
                    );
                }
            }
            let reach = side.stream.unwrap_or(Span::ZERO);
            out.extend(table_dirt(view, manifest, name, reach, &files));
        }
        Ok(out)
    }
}

/// Published window starts of `view` that rows of the joined table `table` archived after the
/// segment answering them read the table may change: a row valid from `v` can change every
/// event at or after `v`, so every window that ends after it (a session range reaching past
/// it). `files` holds, per partition of the table's archive, at least the files from the
/// oldest offset any segment saw on. Segments without the table's offsets (published before
/// it was joined, or coalesced by maintenance) are left alone. A joined stream's event at `s`
/// can change the events from `s − within` on: `reach` is `within` (zero for a table).
pub(crate) fn table_dirt(
    view: &ViewDefinition,
    manifest: &ViewManifest,
    table: &str,
    reach: Span,
    files: &BTreeMap<i32, Vec<ArchivedFile>>,
) -> Vec<StartRange> {
    let mut dirty = Coverage::new();
    for (segment, ranges) in manifest.effective() {
        let Some(seen) = segment.table_offsets.get(table) else {
            continue;
        };
        let earliest = files
            .iter()
            .flat_map(|(p, files)| {
                let from = seen.get(p).copied().unwrap_or(0);
                files.iter().filter(move |f| f.first_offset >= from)
            })
            .map(|f| f.min_time)
            .min();
        let Some(valid_from) = earliest.map(|t| t.saturating_sub(reach)) else {
            continue;
        };
        let first = match (view.window.size(), view.window.slide()) {
            (Some(size), Some(slide)) => EventTime(
                align_down(
                    valid_from.millis().saturating_sub(size.millis()),
                    slide.millis(),
                )
                .saturating_add(slide.millis()),
            ),
            _ => EventTime::MIN,
        };
        // A session that starts before the row may still reach past it: every session range.
        for r in ranges {
            let from = r.from.max(first);
            if from < r.to {
                dirty.insert(StartRange::new(from, r.to));
            }
        }
    }
    dirty.ranges().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_shared::schema::FieldType;
    use tandem_shared::testing;
    use tandem_shared::window::WindowConfig;

    const M: i64 = 60_000;

    fn view(window: WindowConfig) -> ViewDefinition {
        let schema = testing::schema(&[("x", FieldType::Int64)]);
        testing::define(
            &testing::view_config("v", window, &[], None, &["count(*)"]),
            &schema,
        )
    }

    #[test]
    fn a_late_table_row_makes_every_window_ending_after_its_validity_dirty() {
        use crate::catalog::Segment;
        let file = |first: i64, at: i64| ArchivedFile {
            path: format!("t{first}"),
            hour: EventTime(0),
            first_offset: first,
            last_offset: first + 2,
            rows: 3,
            bytes: 1,
            min_time: EventTime(at),
            max_time: EventTime(at),
        };
        let r = |a: i64, b: i64| StartRange::new(EventTime(a), EventTime(b));
        let segment = |seen: Option<i64>| Segment {
            path: "s".into(),
            job: "j".into(),
            covered: r(0, 10 * M),
            rows: 0,
            published_at: EventTime(0),
            archive_offsets: [(0, 100)].into_iter().collect(),
            table_offsets: seen
                .map(|o| [("merchants".to_owned(), [(0, o)].into_iter().collect())].into())
                .unwrap_or_default(),
            pieces: Vec::new(),
            incomplete: Vec::new(),
            held: Vec::new(),
        };
        // Rows at offsets 0..3 were read; the file at 3 came later, valid from 4m30s.
        let files: BTreeMap<i32, Vec<ArchivedFile>> =
            [(0, vec![file(0, -M), file(3, 4 * M + 30_000)])].into();
        let tumbling = view(testing::tumbling("1m"));
        let read = ViewManifest::default().with_segment(segment(Some(3)));
        assert_eq!(
            table_dirt(&tumbling, &read, "merchants", Span::ZERO, &files),
            [r(4 * M, 10 * M)]
        );
        // A five-minute window from 0 ends after 4m30s too.
        let hopping = view(testing::hopping("5m", "1m"));
        assert_eq!(
            table_dirt(&hopping, &read, "merchants", Span::ZERO, &files),
            [r(0, 10 * M)]
        );
        // Every row read already, another table, or a segment that recorded no table offsets:
        // nothing is dirty.
        let all_read = ViewManifest::default().with_segment(segment(Some(6)));
        assert!(table_dirt(&tumbling, &all_read, "merchants", Span::ZERO, &files).is_empty());
        assert!(table_dirt(&tumbling, &read, "cards", Span::ZERO, &files).is_empty());
        let unrecorded = ViewManifest::default().with_segment(segment(None));
        assert!(table_dirt(&tumbling, &unrecorded, "merchants", Span::ZERO, &files).is_empty());
        // A joined stream's event at 4m30s matches events from 4m on (within 30s), so the
        // window of 3m..4m stays, and from 45 s back, the window of 3m too.
        let within = |s: i64| Span::from_millis(s * 1_000);
        assert_eq!(
            table_dirt(&tumbling, &read, "merchants", within(30), &files),
            [r(4 * M, 10 * M)]
        );
        assert_eq!(
            table_dirt(&tumbling, &read, "merchants", within(45), &files),
            [r(3 * M, 10 * M)]
        );
    }
}
