//! Publishing what the archive consumed: a roll's files and then the partition manifest, or a
//! manifest that only marks the partition idle or busy again.
//!
//! ```text
//!  roll: seal buffer ─► 1. intent (names the files) ─► 2. files (+ a sealed file list, every
//!        SEAL_AT files) ─► 3. manifest <seq> (publication)
//!                     ─► 4. Delta commit ─► 5. delete intent, prune old manifests, collect garbage
//!                        once ─► commit offset
//! ```

use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tandem_shared::layout;
use tandem_store::fault::crash_point;
use tandem_store::{manifest, object};

use super::garbage::Intent;
use super::roll::{self, SealedRoll};
use super::{Archive, ArchivedFile, Error, Result, file};

/// Wait before retrying a failed roll.
const RETRY_AFTER: Duration = Duration::from_secs(2);

impl Archive {
    /// Publishes a manifest that only changes the idle marker.
    pub(super) async fn publish_progress(
        &mut self,
        partition: i32,
        idle_since: Option<tandem_shared::time::EventTime>,
    ) {
        let chain = self.chain(partition);
        let (count, now) = (self.partition_count, self.clock.now());
        let Some(state) = self.partitions.get_mut(&partition) else {
            return;
        };
        let next = roll::progressed(&state.manifest, idle_since, count, now);
        let seq = state.next_seq();
        match chain.publish(seq, &next).await {
            Ok(()) => {
                state.manifest = next;
                state.seq = Some(seq);
                chain.prune(seq.saturating_sub(1)).await;
            }
            Err(err) => {
                tracing::warn!(partition, %err, "could not publish archive progress");
                self.fenced(partition).await;
            }
        }
    }

    /// Writes a partition's buffer and publishes it. A failed roll is kept and retried, and the
    /// partition is paused meanwhile.
    pub(super) async fn roll(&mut self, partition: i32) {
        let Some(state) = self.partitions.get_mut(&partition) else {
            return;
        };
        if state.pending.is_none() {
            let Some(buffer) = state.buffer.take() else {
                return;
            };
            state.pending = Some(buffer.seal());
        }
        let Some(sealed) = state.pending.take() else {
            return;
        };
        let started = Instant::now();
        match self.publish_roll(partition, &sealed).await {
            Ok(()) => {
                metrics::histogram!("tandem_archive_roll_seconds")
                    .record(started.elapsed().as_secs_f64());
                if let Some(state) = self.partitions.get_mut(&partition) {
                    state.retry_at = None;
                    if state.paused {
                        state.paused = false;
                        self.resume(partition);
                    }
                }
                self.commit(partition, sealed.last_offset + 1);
            }
            Err(Error::Manifest(manifest::Error::Conflict { .. })) => {
                tracing::warn!(partition, "archive fenced by another writer; reloading");
                self.fenced(partition).await;
            }
            Err(err) => {
                metrics::counter!("tandem_archive_roll_errors_total").increment(1);
                tracing::error!(partition, %err, "archive roll failed; will retry");
                let pause = match self.partitions.get_mut(&partition) {
                    Some(state) => {
                        state.pending = Some(sealed);
                        state.retry_at = Some(Instant::now() + RETRY_AFTER);
                        // Bound memory: stop reading this partition until the roll succeeds.
                        !std::mem::replace(&mut state.paused, true)
                    }
                    None => false,
                };
                if pause {
                    self.pause(partition);
                }
            }
        }
    }

    async fn publish_roll(&mut self, partition: i32, sealed: &SealedRoll) -> Result<()> {
        let topic = self.config.topic.clone();
        // 1. The intent names the files before they exist, so a crash leaves a record of them.
        let intent_path =
            layout::archive_intent(&topic, partition, sealed.first_offset, sealed.last_offset);
        let paths = sealed.files(&topic, partition);
        let Some(state) = self.partitions.get(&partition) else {
            return Ok(());
        };
        // A file list this roll seals is written before the manifest: the intent names it too.
        let seal_at = self.config.seal_files;
        let list_path = state.manifest.list_sealed_by(
            seal_at,
            paths.len(),
            sealed.first_offset,
            sealed.last_offset,
        );
        let mut intent_files = paths.clone();
        intent_files.extend(list_path.clone());
        let intent = serde_json::to_vec(&Intent {
            files: intent_files,
        })
        .map_err(|source| Error::Intent {
            path: intent_path.clone(),
            source,
        })?;
        object::write(&self.store, &intent_path, intent).await?;
        crash_point("archive.before_files");
        // 2. The files.
        let mut files = Vec::with_capacity(sealed.hours.len());
        for (hour, path) in sealed.hours.iter().zip(paths) {
            let bytes =
                file::encode(&hour.batch).map_err(|source| Error::Encode { partition, source })?;
            let size = bytes.len() as u64;
            object::write(&self.store, &path, bytes).await?;
            files.push(ArchivedFile {
                path,
                hour: hour.hour,
                first_offset: sealed.first_offset,
                last_offset: sealed.last_offset,
                rows: hour.batch.num_rows() as u64,
                bytes: size,
                min_time: hour.min_time,
                max_time: hour.max_time,
            });
        }
        crash_point("archive.after_files");
        // 3. The manifest: the point of publication.
        let chain = self.chain(partition);
        let (count, now) = (self.partition_count, self.clock.now());
        let Some(state) = self.partitions.get(&partition) else {
            return Ok(());
        };
        let rows: u64 = files.iter().map(|f| f.rows).sum();
        let bytes: u64 = files.iter().map(|f| f.bytes).sum();
        let added = files.clone();
        let mut next = roll::rolled(
            &state.manifest,
            files,
            (sealed.last_offset + 1, sealed.progress),
            count,
            now,
        );
        if let Some((path, sealed_files)) = next.seal(seal_at) {
            debug_assert_eq!(Some(&path), list_path.as_ref());
            let list = serde_json::to_vec(&sealed_files).map_err(|source| Error::Intent {
                path: path.clone(),
                source,
            })?;
            object::write(&self.store, &path, list).await?;
            crash_point("archive.after_list");
        }
        let Some(state) = self.partitions.get_mut(&partition) else {
            return Ok(());
        };
        let seq = state.next_seq();
        chain.publish(seq, &next).await?;
        state.manifest = next;
        state.seq = Some(seq);
        metrics::counter!("tandem_archive_rows_published_total").increment(rows);
        metrics::counter!("tandem_archive_bytes_published_total").increment(bytes);
        crash_point("archive.after_manifest");
        // 4. The Delta table's commit, from the published manifest.
        if let Some(delta) = &mut self.delta {
            let manifest = state.manifest.clone();
            delta
                .publish(&self.store, partition, seq, &manifest, &added, now)
                .await;
        }
        // 5. Housekeeping: the intent is fulfilled; older manifests and garbage go.
        if let Err(err) = object::delete(&self.store, &intent_path).await {
            tracing::debug!(%err, "could not delete a fulfilled intent");
        }
        // Keep the previous manifest for readers that listed just before this publication.
        chain.prune(seq.saturating_sub(1)).await;
        self.collect_garbage(partition).await;
        Ok(())
    }

    /// Commits the Kafka offset: progress information only, the manifest already holds it.
    fn commit(&self, partition: i32, next_offset: i64) {
        let mut tpl = TopicPartitionList::new();
        if tpl
            .add_partition_offset(&self.config.topic, partition, Offset::Offset(next_offset))
            .is_ok()
            && let Err(err) = self.consumer.commit(&tpl, CommitMode::Async)
        {
            tracing::debug!(partition, %err, "offset commit failed");
        }
    }
}
