//! Importing events into the archive without Kafka, through the same file and manifest code as
//! the archive task: for benchmarks, tests and bulk loads. Each batch holds the rows of one
//! partition with their Kafka offsets; offsets must be beyond what the partition already holds.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::filter_record_batch;
use datafusion::common::cast::as_timestamp_millisecond_array;
use object_store::ObjectStore;
use tandem_shared::clock::{Clock, SystemClock};
use tandem_shared::event::{DecodedEvent, EventBatchBuilder, EventDecoder};
use tandem_shared::layout;
use tandem_shared::time::EventTime;

use super::{ArchivedFile, PartitionManifest, file};
use tandem_store::manifest::{self, ManifestChain};
use tandem_store::object;

/// Errors importing. Internal or the store's.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("partition {partition} is outside the topic's {count} partitions")]
    Partition { partition: i32, count: i32 },
    #[error("batch of partition {partition}: {source}")]
    Batch {
        partition: i32,
        source: datafusion::error::DataFusionError,
    },
    #[error(transparent)]
    Encode(#[from] file::Error),
    #[error(transparent)]
    Write(#[from] object::Error),
    #[error(transparent)]
    Manifest(#[from] manifest::Error),
}

/// Events grouped into one batch per partition, with offsets counted per partition as Kafka
/// would assign them, ready for [`import`]. Offsets continue across [`PartitionBatches::finish`],
/// so a long import can be made in bounded chunks.
#[derive(Debug)]
pub struct PartitionBatches {
    builders: Vec<EventBatchBuilder>,
    next_offsets: Vec<i64>,
}

impl PartitionBatches {
    /// Batches for partitions `0..partitions`, each with room for `capacity` rows to start with.
    pub fn new(decoder: &EventDecoder, partitions: i32, capacity: usize) -> Self {
        let n = usize::try_from(partitions).unwrap_or(0);
        Self {
            builders: (0..n)
                .map(|_| EventBatchBuilder::new(decoder, capacity))
                .collect(),
            next_offsets: vec![0; n],
        }
    }

    /// Appends `event` to `partition` at the partition's next offset. Returns `false` (and
    /// appends nothing) for a partition outside `0..partitions`.
    pub fn append(&mut self, event: &DecodedEvent<'_>, partition: i32) -> bool {
        let Some(p) = usize::try_from(partition)
            .ok()
            .filter(|p| *p < self.builders.len())
        else {
            return false;
        };
        self.builders[p].append(event, partition, self.next_offsets[p]);
        self.next_offsets[p] += 1;
        true
    }

    /// The batches so far, one per partition; the builders start over, offsets continue.
    pub fn finish(&mut self) -> Vec<(i32, RecordBatch)> {
        self.builders
            .iter_mut()
            .enumerate()
            .map(|(p, b)| (p as i32, b.finish()))
            .collect()
    }
}

/// Archives `batches` (rows of one partition each, with their Kafka offsets) as the archive would:
/// one file per partition and event hour, then one manifest per partition.
pub async fn import(
    store: &Arc<dyn ObjectStore>,
    topic: &str,
    partition_count: i32,
    batches: &[(i32, RecordBatch)],
) -> Result<(), Error> {
    // Extend what is already archived, as later rolls would.
    let mut manifests: BTreeMap<i32, PartitionManifest> = BTreeMap::new();
    for p in 0..partition_count {
        let chain = ManifestChain::new(Arc::clone(store), layout::archive_manifest_dir(topic, p));
        let current = chain
            .latest::<PartitionManifest>()
            .await?
            .map(|(_, m)| m)
            .unwrap_or_else(|| PartitionManifest::empty(topic, p, partition_count, EventTime(0)));
        manifests.insert(p, current);
    }
    for (partition, batch) in batches {
        let batch_err = |source| Error::Batch {
            partition: *partition,
            source,
        };
        let times = as_timestamp_millisecond_array(batch.column(0)).map_err(batch_err)?;
        let offsets =
            datafusion::common::cast::as_int64_array(batch.column(batch.num_columns() - 1))
                .map_err(batch_err)?;
        let first = offsets.values().iter().copied().min().unwrap_or(0);
        let last = offsets.values().iter().copied().max().unwrap_or(0);
        let hours: std::collections::BTreeSet<EventTime> = times
            .values()
            .iter()
            .map(|t| layout::hour_start(EventTime(*t)))
            .collect();
        let manifest = manifests.get_mut(partition).ok_or(Error::Partition {
            partition: *partition,
            count: partition_count,
        })?;
        for hour in hours {
            let mask: datafusion::arrow::array::BooleanArray = times
                .values()
                .iter()
                .map(|t| Some(layout::hour_start(EventTime(*t)) == hour))
                .collect();
            let rows = filter_record_batch(batch, &mask).map_err(|e| batch_err(e.into()))?;
            let rows_times = as_timestamp_millisecond_array(rows.column(0)).map_err(batch_err)?;
            let min = rows_times.values().iter().copied().min().unwrap_or(0);
            let max = rows_times.values().iter().copied().max().unwrap_or(0);
            let path = layout::archive_file(topic, hour, *partition, first, last);
            let bytes = file::encode(&rows)?;
            let size = bytes.len() as u64;
            object::write(store, &path, bytes).await?;
            manifest.files.push(ArchivedFile {
                path,
                hour,
                first_offset: first,
                last_offset: last,
                rows: rows.num_rows() as u64,
                bytes: size,
                min_time: EventTime(min),
                max_time: EventTime(max),
            });
            manifest.max_event_time = manifest.max_event_time.max(Some(EventTime(max)));
            if let Some((path, files)) = manifest.seal(super::SEAL_AT) {
                let list =
                    serde_json::to_vec(&files).map_err(|source| manifest::Error::Corrupt {
                        path: path.clone(),
                        source,
                    })?;
                object::write(store, &path, list).await?;
            }
        }
        manifest.next_offset = manifest.next_offset.max(last + 1);
    }
    for (p, mut manifest) in manifests {
        let chain = ManifestChain::new(Arc::clone(store), layout::archive_manifest_dir(topic, p));
        let seq = chain.next_seq().await?;
        manifest.published_at = SystemClock.now();
        chain.publish(seq, &manifest).await?;
    }
    Ok(())
}
