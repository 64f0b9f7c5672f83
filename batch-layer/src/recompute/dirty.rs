//! Late rows: which published windows rows archived after their computation have made dirty,
//! for scheduled runs (recompute them) and maintenance (coalesce only clean days).
//!
//! ```text
//!  view manifest: segments with the archive offsets they saw ─► oldest offset per partition
//!       ─► archive files from there on (only the sealed lists that reach it are read)
//!       ─► plan::dirty_candidates ─► one DISTINCT window-start query per candidate file
//!       ─► plan::dirty_ranges
//! ```

use std::collections::BTreeMap;

use datafusion::common::cast::as_int64_array;
use tandem_shared::coverage::StartRange;
use tandem_shared::time::EventTime;
use tandem_shared::view::ViewDefinition;
use tokio_util::sync::CancellationToken;

use super::{Error, Recompute, Result, plan, query};
use crate::archive::ArchiveSnapshot;
use crate::catalog;

/// Which published windows late rows made dirty, per view, and the archive's offsets.
#[derive(Debug, Clone, Default)]
pub struct Cleanliness {
    pub dirty: BTreeMap<String, Vec<StartRange>>,
    pub offsets: BTreeMap<i32, i64>,
}

impl Cleanliness {
    /// The archive's offsets if no published window of `view` in `range` is dirty.
    pub fn clean(&self, view: &str, range: StartRange) -> Option<BTreeMap<i32, i64>> {
        let dirty = self.dirty.get(view)?;
        let overlaps = dirty.iter().any(|d| d.from < range.to && range.from < d.to);
        (!overlaps).then(|| self.offsets.clone())
    }
}

impl Recompute {
    /// Windows of `view` published by `manifest` that late rows have made dirty.
    pub async fn dirty_ranges(
        &self,
        view: &ViewDefinition,
        manifest: &catalog::ViewManifest,
    ) -> Result<Vec<StartRange>> {
        let snapshot = ArchiveSnapshot::load(&self.store, &self.topic).await?;
        self.dirty_in(view, manifest, &snapshot).await
    }

    /// For maintenance: the dirty published windows of every view, and the archive's offsets
    /// now (what a clean window's result is consistent with).
    pub async fn cleanliness(&self) -> Result<Cleanliness> {
        let snapshot = ArchiveSnapshot::load(&self.store, &self.topic).await?;
        let offsets = snapshot
            .partitions
            .iter()
            .map(|(p, m)| (*p, m.next_offset))
            .collect();
        let mut dirty = BTreeMap::new();
        for view in self.catalog.views() {
            let Some(published) = self.catalog.get(&view.name) else {
                continue;
            };
            if published.seq.is_none() {
                continue;
            }
            let ranges = self.dirty_in(view, &published.manifest, &snapshot).await?;
            dirty.insert(view.name.clone(), ranges);
        }
        Ok(Cleanliness { dirty, offsets })
    }

    async fn dirty_in(
        &self,
        view: &ViewDefinition,
        manifest: &catalog::ViewManifest,
        snapshot: &ArchiveSnapshot,
    ) -> Result<Vec<StartRange>> {
        // Only files archived after the oldest offsets a published piece saw can be late rows:
        // the sealed lists before those are not read.
        let mut files = BTreeMap::new();
        for partition in snapshot.partitions.keys() {
            if let Some(offset) = plan::oldest_seen(manifest, *partition) {
                files.insert(
                    *partition,
                    snapshot.files_from(&self.store, *partition, offset).await?,
                );
            }
        }
        let candidates = plan::dirty_candidates(view, manifest, &files);
        let tables = self.table_dirt(view, manifest).await?;
        let Some(slide) = view.window.slide() else {
            return Ok(union(
                plan::dirty_ranges(view, &candidates, |_| Vec::new()),
                tables,
            ));
        };
        // The slide-aligned start of the last window of each row of each candidate file.
        let slide = slide.millis();
        let t = query::ident(&self.schema.time_field);
        let sql = format!(
            "SELECT DISTINCT CAST({t} AS BIGINT) - (((CAST({t} AS BIGINT) % {slide}) + {slide}) % {slide}) AS s FROM {}",
            query::EVENTS_TABLE
        );
        let mut starts: std::collections::HashMap<String, Vec<EventTime>> = Default::default();
        for (file, _) in &candidates {
            let batches = self
                .run_sql(view, &[*file], &[], &sql, &CancellationToken::new())
                .await?;
            let mut found = Vec::new();
            for b in &batches {
                let s = as_int64_array(b.column(0)).map_err(|source| Error::Query {
                    view: view.name.clone(),
                    source,
                })?;
                found.extend(s.iter().flatten().map(EventTime));
            }
            starts.insert(file.path.clone(), found);
        }
        Ok(union(
            plan::dirty_ranges(view, &candidates, |f| {
                starts.get(&f.path).cloned().unwrap_or_default()
            }),
            tables,
        ))
    }
}

/// The union of two sets of window-start ranges, in order.
fn union(a: Vec<StartRange>, b: Vec<StartRange>) -> Vec<StartRange> {
    if b.is_empty() {
        return a;
    }
    let mut all = tandem_shared::coverage::Coverage::new();
    for r in a.into_iter().chain(b) {
        all.insert(r);
    }
    all.ranges().to_vec()
}
