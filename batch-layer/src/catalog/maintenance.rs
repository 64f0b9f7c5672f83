//! Keeping published views small over months: compaction and retention.
//!
//! ```text
//!  compact(view):  manifest.compactions(today) ─► read each member segment, keep the rows of
//!                  its pieces ─► one sorted segment ─► manifest.compacted (create-if-absent
//!                  swap; a conflict leaves it for the next round)
//!  collect(view):  retired segments older than the retention ─► delete objects ─► manifest
//!                  without them; other versions of the view untouched for the retention
//!                  ─► every object under them deleted
//! ```
//!
//! Both only ever act through a new manifest or on objects no manifest names, so a reader never
//! sees a half-compacted view, and a reader holding an older manifest keeps finding its
//! segments for the whole retention period.

use std::collections::BTreeMap;

use bytes::Bytes;
use datafusion::arrow::array::{AsArray, BooleanArray, RecordBatch};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::Int64Type;
use object_store::path::Path;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tandem_shared::coverage::StartRange;
use tandem_shared::layout;
use tandem_shared::time::{EventTime, Span};
use tandem_shared::view::ViewDefinition;
use tandem_store::manifest::Error as ChainError;
use tandem_store::object;

use super::manifest::{Compaction, Segment, ViewManifest, coalesce};
use super::{Error, ROW_GROUP_ROWS, Result, ViewCatalog, segment};

const DAY: i64 = 86_400_000;

/// `clean(view, day)`: the archive's offsets if no published window of the view in the day is
/// dirty.
pub type CleanDays<'a> = dyn Fn(&str, StartRange) -> Option<BTreeMap<i32, i64>> + Sync + 'a;

/// What one maintenance round did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Maintenance {
    /// Segments merged away, and segments they became.
    pub merged: usize,
    pub compacted: usize,
    /// Retired segment objects deleted.
    pub deleted_segments: usize,
    /// Objects of old view versions deleted.
    pub deleted_version_objects: usize,
}

impl ViewCatalog {
    /// Compacts and collects every view: closed days (before the UTC day of `now`) with at
    /// least `min_segments` small segments are merged; retired segments and other versions
    /// older than `retention` are deleted.
    ///
    /// `clean(view, day)` gives the archive's offsets if every published window of the day is
    /// clean (no archived row after the offsets its piece saw falls in it); such a day's merged
    /// segment is one piece per contiguous run, stamped with those offsets. Otherwise the
    /// merged segment keeps every former segment's piece.
    pub async fn maintain(
        &self,
        now: EventTime,
        retention: Span,
        min_segments: usize,
        clean: &CleanDays<'_>,
    ) -> Result<Maintenance> {
        let mut done = Maintenance::default();
        for view in self.views.values() {
            let (merged, compacted) = self.compact(view, now, min_segments, clean).await?;
            done.merged += merged;
            done.compacted += compacted;
            done.deleted_segments += self.delete_expired(view, now, retention).await?;
            done.deleted_version_objects += self.delete_old_versions(view, now, retention).await?;
        }
        if done != Maintenance::default() {
            tracing::info!(?done, "catalog maintenance");
        }
        Ok(done)
    }

    async fn compact(
        &self,
        view: &ViewDefinition,
        now: EventTime,
        min_segments: usize,
        clean: &CleanDays<'_>,
    ) -> Result<(usize, usize)> {
        let chain = self.chain(view);
        let Some((_, manifest)) = chain.latest::<ViewManifest>().await? else {
            return Ok((0, 0));
        };
        let today = EventTime(tandem_shared::window::align_down(now.millis(), DAY));
        let mut merged = 0;
        let mut compacted = 0;
        for plan in manifest.compactions(today, min_segments) {
            let day = StartRange::new(plan.day, plan.day.saturating_add(Span::from_millis(DAY)));
            let offsets = clean(&view.name, day);
            if let Some(n) = self.merge(view, &plan, offsets, now).await? {
                merged += n;
                compacted += 1;
            }
        }
        if compacted > 0 {
            self.refresh(&view.name).await?;
        }
        Ok((merged, compacted))
    }

    /// Writes the merged segment and swaps it in; `None` if the manifest moved meanwhile.
    async fn merge(
        &self,
        view: &ViewDefinition,
        plan: &Compaction,
        clean_offsets: Option<BTreeMap<i32, i64>>,
        now: EventTime,
    ) -> Result<Option<usize>> {
        let mut batches = Vec::new();
        for member in &plan.members {
            let bytes = object::read(&self.store, member).await?;
            for batch in read_batches(bytes).map_err(|source| Error::Segment {
                path: member.clone(),
                source,
            })? {
                let kept = keep(&batch, plan).map_err(|source| Error::Segment {
                    path: member.clone(),
                    source,
                })?;
                if kept.num_rows() > 0 {
                    batches.push(kept);
                }
            }
        }
        let job = format!(
            "compacted-{}-{}",
            plan.day.millis() / DAY,
            uuid::Uuid::now_v7()
        );
        let path = layout::view_segment(&view.name, &view.version.0, &job);
        let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        if !batches.is_empty() {
            let bytes =
                segment::encode(&batches, ROW_GROUP_ROWS).map_err(|source| Error::Segment {
                    path: path.clone(),
                    source,
                })?;
            object::write(&self.store, &path, bytes).await?;
        }
        let (Some(first), Some(last)) = (plan.pieces.first(), plan.pieces.last()) else {
            return Ok(None);
        };
        let merged = Segment {
            table_offsets: Default::default(),
            path: path.clone(),
            job,
            covered: StartRange::new(first.range.from, last.range.to),
            rows,
            published_at: now,
            archive_offsets: clean_offsets.clone().unwrap_or_default(),
            pieces: match &clean_offsets {
                Some(offsets) => coalesce(&plan.pieces, offsets),
                None => plan.pieces.clone(),
            },
            incomplete: Vec::new(),
            held: Vec::new(), // set from the members by `compacted`
        };
        let chain = self.chain(view);
        let Some((seq, manifest)) = chain.latest::<ViewManifest>().await? else {
            return Ok(None);
        };
        // The members' paths in one object, so the manifest names the retirement once.
        let list_path = format!(
            "views/{}/{}/retired/{}.json",
            view.name, view.version.0, merged.job
        );
        let Some(next) = manifest.compacted(plan, merged, now, &list_path) else {
            // A member changed: the merged object was never published.
            let _ = object::delete(&self.store, &path).await;
            return Ok(None);
        };
        let list = serde_json::to_vec(&plan.members).unwrap_or_default();
        object::write(&self.store, &list_path, list).await?;
        match chain.publish(seq + 1, &next).await {
            Ok(()) => {
                chain.prune(seq).await;
                metrics::counter!("tandem_catalog_compactions_total", "view" => view.name.clone())
                    .increment(1);
                Ok(Some(plan.members.len()))
            }
            Err(ChainError::Conflict { .. }) => {
                let _ = object::delete(&self.store, &path).await;
                let _ = object::delete(&self.store, &list_path).await;
                Ok(None)
            }
            Err(err) => Err(err.into()),
        }
    }

    async fn delete_expired(
        &self,
        view: &ViewDefinition,
        now: EventTime,
        retention: Span,
    ) -> Result<usize> {
        let chain = self.chain(view);
        let Some((seq, manifest)) = chain.latest::<ViewManifest>().await? else {
            return Ok(0);
        };
        let expired = manifest.expired(now.saturating_sub(retention));
        if expired.is_empty() {
            return Ok(0);
        }
        // Objects first: if the manifest swap then fails, the next round deletes nothing
        // twice (a missing object is fine) and forgets them then. A list's members go before
        // the list.
        let mut deleted = 0;
        for entry in &expired {
            if entry.list {
                if let Ok(bytes) = object::read(&self.store, &entry.path).await {
                    let members: Vec<String> = serde_json::from_slice(&bytes).unwrap_or_default();
                    for member in &members {
                        object::delete(&self.store, member).await?;
                    }
                    deleted += members.len();
                }
            } else {
                deleted += 1;
            }
            object::delete(&self.store, &entry.path).await?;
        }
        let paths: Vec<String> = expired.iter().map(|r| r.path.clone()).collect();
        match chain.publish(seq + 1, &manifest.forget(&paths)).await {
            Ok(()) => {
                chain.prune(seq).await;
                self.refresh(&view.name).await?;
            }
            Err(ChainError::Conflict { .. }) => {}
            Err(err) => return Err(err.into()),
        }
        Ok(deleted)
    }

    /// Deletes other versions of `view` whose every object is older than the retention.
    async fn delete_old_versions(
        &self,
        view: &ViewDefinition,
        now: EventTime,
        retention: Span,
    ) -> Result<usize> {
        let root = Path::from(format!("views/{}", view.name));
        let listing = self
            .store
            .list_with_delimiter(Some(&root))
            .await
            .map_err(|source| object::Error {
                path: root.to_string(),
                source,
            })?;
        let cutoff = now.saturating_sub(retention).millis();
        let mut deleted = 0;
        for prefix in listing.common_prefixes {
            if prefix.filename() == Some(view.version.0.as_str()) {
                continue;
            }
            let objects = object::list(&self.store, prefix.as_ref()).await?;
            let newest = objects
                .iter()
                .map(|o| o.last_modified.timestamp_millis())
                .max();
            if newest.is_none_or(|t| t >= cutoff) {
                continue;
            }
            for o in &objects {
                if object::delete(&self.store, o.location.as_ref()).await? {
                    deleted += 1;
                }
            }
            tracing::info!(view = %view.name, version = %prefix, objects = objects.len(), "old view version deleted");
        }
        Ok(deleted)
    }
}

fn read_batches(bytes: Bytes) -> Result<Vec<RecordBatch>, segment::Error> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()?;
    Ok(reader.collect::<Result<Vec<_>, _>>()?)
}

/// The rows of `batch` whose window start lies in one of the compaction's pieces.
fn keep(batch: &RecordBatch, plan: &Compaction) -> Result<RecordBatch, segment::Error> {
    let starts =
        batch
            .column(0)
            .as_primitive_opt::<Int64Type>()
            .ok_or(segment::Error::Columns {
                expected: 1,
                found: 0,
            })?;
    let mask: BooleanArray = starts
        .iter()
        .map(|s| {
            Some(s.is_some_and(|s| plan.pieces.iter().any(|p| p.range.contains(EventTime(s)))))
        })
        .collect();
    Ok(filter_record_batch(batch, &mask)?)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, StringArray};
    use object_store::ObjectStore;
    use object_store::memory::InMemory;
    use tandem_shared::schema::FieldType;
    use tandem_shared::testing;

    use super::super::JobResult;
    use super::*;

    const H: i64 = 3_600_000;

    fn view() -> ViewDefinition {
        let schema = testing::schema(&[("city", FieldType::String)]);
        testing::view(
            &schema,
            "v",
            testing::tumbling("1h"),
            &["city"],
            None,
            &["count(*) AS n"],
        )
    }

    fn hour(h: i64, n: i64) -> RecordBatch {
        RecordBatch::try_from_iter([
            (
                "window_start",
                Arc::new(Int64Array::from(vec![h * H, h * H])) as _,
            ),
            (
                "window_end",
                Arc::new(Int64Array::from(vec![(h + 1) * H, (h + 1) * H])) as _,
            ),
            ("city", Arc::new(StringArray::from(vec!["A", "B"])) as _),
            ("n", Arc::new(Int64Array::from(vec![n, n + 1])) as _),
        ])
        .unwrap()
    }

    const ALL: StartRange = StartRange {
        from: EventTime::MIN,
        to: EventTime::MAX,
    };

    #[tokio::test]
    async fn a_closed_day_is_compacted_and_retired_segments_go_after_the_retention() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let v = view();
        let catalog = ViewCatalog::new(Arc::clone(&store), [v.clone()]);
        // Hourly publications of day 0, one hour recomputed later, and one of day 1.
        let publish = |job: String, h: i64, n: i64, offset: i64, at: i64| {
            let catalog = &catalog;
            let v = &v;
            async move {
                let batch = [hour(h, n)];
                catalog
                    .publish(
                        v,
                        JobResult {
                            table_offsets: Default::default(),
                            job: &job,
                            covered: StartRange::new(EventTime(h * H), EventTime((h + 1) * H)),
                            incomplete: Vec::new(),
                            held: Vec::new(),
                            batches: &batch,
                            archive_offsets: BTreeMap::from([(0, offset)]),
                            published_at: EventTime(at),
                        },
                    )
                    .await
                    .unwrap();
            }
        };
        for h in 0..6 {
            publish(format!("j{h}"), h, h, 10 * (h + 1), h * H).await;
        }
        publish("fix".into(), 2, 100, 100, 7 * H).await;
        publish("d1".into(), 25, 7, 110, 26 * H).await;
        let before = catalog.current_rows("v", ALL).await.unwrap();
        assert_eq!(before.len(), 14);
        let published = catalog.get("v").unwrap();
        assert_eq!(published.manifest.segments.len(), 7);
        assert_eq!(
            published.manifest.retired.len(),
            1,
            "j2 was shadowed by fix"
        );

        // Day 1 is open at 26h: day 0 is merged, day 1 is not. Nothing is old enough to go.
        let week = Span::from_millis(7 * 24 * H);
        let done = catalog
            .maintain(EventTime(26 * H), week, 2, &|_, _| None)
            .await
            .unwrap();
        assert_eq!(
            (done.merged, done.compacted, done.deleted_segments),
            (6, 1, 0)
        );
        let published = catalog.get("v").unwrap();
        assert_eq!(published.manifest.segments.len(), 2);
        assert_eq!(catalog.current_rows("v", ALL).await.unwrap(), before);
        assert_eq!(published.coverage.horizon(), Some(EventTime(26 * H)));
        let entries = published.manifest.retired.clone();
        assert_eq!(entries.len(), 2, "j2 (shadowed) and the compaction's list");
        let list = entries.iter().find(|r| r.list).unwrap().clone();
        let members: Vec<String> =
            serde_json::from_slice(&object::read(&store, &list.path).await.unwrap()).unwrap();
        assert_eq!(members.len(), 6);
        let retired: Vec<String> = entries
            .iter()
            .filter(|r| !r.list)
            .map(|r| r.path.clone())
            .chain(members)
            .collect();
        for r in &retired {
            assert!(
                object::read(&store, r).await.is_ok(),
                "kept during retention"
            );
        }
        // A second round finds nothing to merge.
        let done = catalog
            .maintain(EventTime(27 * H), week, 2, &|_, _| None)
            .await
            .unwrap();
        assert_eq!(done, Maintenance::default());

        // A stale version of the view: deleted once untouched for the retention period.
        object::write(&store, "views/v/old-version/segments/x.parquet", "x")
            .await
            .unwrap();
        let wall = EventTime(chrono::Utc::now().timestamp_millis());
        let done = catalog.maintain(wall, week, 2, &|_, _| None).await.unwrap();
        assert_eq!(done.deleted_version_objects, 0, "written just now");
        assert_eq!(
            done.deleted_segments, 7,
            "retired long before the wall clock's week"
        );
        for r in &retired {
            assert!(object::read(&store, r).await.is_err(), "{r} deleted");
        }
        assert!(
            object::read(&store, &list.path).await.is_err(),
            "the list too"
        );
        assert!(catalog.get("v").unwrap().manifest.retired.is_empty());
        assert_eq!(catalog.current_rows("v", ALL).await.unwrap(), before);
        let later = wall.saturating_add(Span::from_millis(8 * 24 * H));
        let done = catalog
            .maintain(later, week, 2, &|_, _| None)
            .await
            .unwrap();
        assert_eq!(done.deleted_version_objects, 1);
        assert!(
            object::read(&store, "views/v/old-version/segments/x.parquet")
                .await
                .is_err()
        );
        assert_eq!(catalog.current_rows("v", ALL).await.unwrap(), before);
    }

    #[tokio::test]
    async fn a_clean_day_becomes_one_piece_stamped_with_the_archive_offsets() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let v = view();
        let catalog = ViewCatalog::new(Arc::clone(&store), [v.clone()]);
        for h in 0..3 {
            let batch = [hour(h, h)];
            catalog
                .publish(
                    &v,
                    JobResult {
                        table_offsets: Default::default(),
                        job: &format!("j{h}"),
                        covered: StartRange::new(EventTime(h * H), EventTime((h + 1) * H)),
                        incomplete: Vec::new(),
                        held: Vec::new(),
                        batches: &batch,
                        archive_offsets: BTreeMap::from([(0, h)]),
                        published_at: EventTime(h * H),
                    },
                )
                .await
                .unwrap();
        }
        let before = catalog.current_rows("v", ALL).await.unwrap();
        let now = BTreeMap::from([(0, 500)]);
        let clean = |view: &str, day: StartRange| {
            assert_eq!(view, "v");
            assert_eq!(day, StartRange::new(EventTime(0), EventTime(24 * H)));
            Some(now.clone())
        };
        let week = Span::from_millis(7 * 24 * H);
        let done = catalog
            .maintain(EventTime(30 * H), week, 2, &clean)
            .await
            .unwrap();
        assert_eq!(done.compacted, 1);
        let m = catalog.get("v").unwrap().manifest.clone();
        assert_eq!(m.segments.len(), 1);
        let pieces = m.segments[0].pieces();
        assert_eq!(pieces.len(), 1, "{pieces:?}");
        assert_eq!(
            pieces[0].range,
            StartRange::new(EventTime(0), EventTime(3 * H))
        );
        assert_eq!(pieces[0].archive_offsets, now);
        assert_eq!(catalog.current_rows("v", ALL).await.unwrap(), before);
    }
}
