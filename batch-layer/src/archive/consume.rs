//! Consuming the topic: loading a partition's manifest when it is first seen, admitting and
//! buffering messages, rolling due buffers, and publishing idle partitions.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tandem_shared::event::{Admission, Read};
use tandem_shared::layout;
use tandem_store::ManifestChain;
use tokio_util::sync::CancellationToken;

use super::roll::{self, Buffer, OffsetAdmission, PartitionState};
use super::{Archive, OffsetGap, PartitionManifest};

/// How long a partition may receive nothing while the broker holds more before the archive
/// counts it stalled: several roll intervals, and never under 30 s (a busy store may hold a
/// roll that long).
fn stall_after(roll_interval: Duration) -> Duration {
    (roll_interval * 3).max(Duration::from_secs(30))
}

/// Publishes the archive consumer's lag.
#[derive(Debug)]
pub struct ArchiveContext {
    pub(super) group: String,
}

impl ClientContext for ArchiveContext {
    fn stats(&self, statistics: Statistics) {
        tandem_store::kafka::record_lag(&self.group, &statistics);
    }
}

impl ConsumerContext for ArchiveContext {
    fn post_rebalance(
        &self,
        _consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        let partitions = |tpl: &rdkafka::TopicPartitionList| -> Vec<i32> {
            tpl.elements().iter().map(|e| e.partition()).collect()
        };
        match rebalance {
            rdkafka::consumer::Rebalance::Assign(tpl) => {
                tracing::info!(group = %self.group, partitions = ?partitions(tpl), "archive partitions assigned");
            }
            rdkafka::consumer::Rebalance::Revoke(tpl) => {
                tracing::info!(group = %self.group, partitions = ?partitions(tpl), "archive partitions revoked");
            }
            rdkafka::consumer::Rebalance::Error(err) => {
                tracing::warn!(group = %self.group, %err, "archive rebalance error");
            }
        }
    }
}

impl Archive {
    pub(super) async fn refresh_partition_count(&mut self) {
        let consumer = Arc::clone(&self.broker_client);
        let topic = self.config.topic.clone();
        let result = tokio::task::spawn_blocking(move || {
            consumer
                .fetch_metadata(Some(&topic), Duration::from_secs(10))
                .map(|md| {
                    md.topics()
                        .iter()
                        .find(|t| t.name() == topic)
                        .map_or(0, |t| t.partitions().len() as i32)
                })
        })
        .await;
        match result {
            Ok(Ok(n)) if n > 0 => self.partition_count = self.partition_count.max(n),
            Ok(Ok(_)) => tracing::warn!(topic = %self.config.topic, "topic has no partitions yet"),
            Ok(Err(err)) => tracing::warn!(%err, "archive could not fetch topic metadata"),
            Err(err) => tracing::warn!(%err, "metadata task failed"),
        }
    }

    pub(super) fn chain(&self, partition: i32) -> ManifestChain {
        ManifestChain::new(
            Arc::clone(&self.store),
            layout::archive_manifest_dir(&self.config.topic, partition),
        )
    }

    /// Loads the partition's manifest the first time the partition is seen.
    pub(super) async fn ensure_loaded(&mut self, partition: i32) -> bool {
        if self.partitions.contains_key(&partition) {
            return true;
        }
        match self.chain(partition).latest::<PartitionManifest>().await {
            Ok(found) => {
                let (seq, manifest) = match found {
                    Some((seq, m)) => (Some(seq), m),
                    None => (
                        None,
                        PartitionManifest::empty(
                            &self.config.topic,
                            partition,
                            self.partition_count,
                            self.clock.now(),
                        ),
                    ),
                };
                self.partitions.insert(
                    partition,
                    PartitionState::new(manifest, seq, Instant::now()),
                );
                // Its next roll first commits whatever its manifests name and the Delta log
                // does not (a crash between a manifest and its commit).
                if let Some(delta) = &mut self.delta {
                    delta.loaded(partition);
                }
                true
            }
            Err(err) => {
                tracing::warn!(partition, %err, "cannot load archive manifest; will retry");
                false
            }
        }
    }

    pub(super) async fn on_message(&mut self, m: &OwnedMessage, cancel: &CancellationToken) {
        let partition = m.partition();
        let offset = m.offset();
        if !self.ensure_loaded(partition).await {
            // Could not read the manifest: re-read this message later rather than guess.
            self.seek(partition, offset);
            return;
        }
        let Some(state) = self.partitions.get(&partition) else {
            return;
        };
        let buffered_to = state.buffer.as_ref().map(|b| b.last_offset);
        let next_offset = state.manifest.next_offset;
        let admission = roll::admit(offset, next_offset, buffered_to, state.sought);
        // A message past the one expected: were the offsets between deleted by the broker?
        let expected = buffered_to.map_or(next_offset, |b| b + 1);
        let gap = if admission == OffsetAdmission::Append && offset > expected {
            match self.watermarks(partition).await {
                Some((low, _)) => roll::gap(expected, offset, low),
                None => None,
            }
        } else {
            None
        };
        let Some(state) = self.partitions.get_mut(&partition) else {
            return;
        };
        match admission {
            OffsetAdmission::Archived => {
                metrics::counter!("tandem_archive_skipped_total").increment(1);
                return;
            }
            OffsetAdmission::SeekTo(next) => {
                state.sought = true;
                self.seek(partition, next);
                return;
            }
            OffsetAdmission::Duplicate => {
                state.sought = true;
                return;
            }
            OffsetAdmission::Append => state.sought = true,
        }
        // Only appended messages are decoded. One naming an unseen writer schema waits for the
        // registry; if that wait is cancelled, the message is read again after the restart.
        let Some(read) = tandem_store::registry::read_resolved(
            &self.decoder,
            self.config.registry.as_deref(),
            m.payload(),
            m.timestamp().to_millis(),
            cancel,
        )
        .await
        else {
            self.seek(partition, offset);
            return;
        };
        let Some(state) = self.partitions.get_mut(&partition) else {
            return;
        };
        state.last_message = Instant::now();
        let woke_up = state.manifest.idle_since.is_some();
        let buffer = state
            .buffer
            .get_or_insert_with(|| Buffer::new(offset, Instant::now()));
        buffer.last_offset = offset;
        if let Some((from_offset, to_offset)) = gap {
            let before_time = match &read {
                Read::Event(e) => Some(e.time),
                _ => None,
            };
            let after_time = buffer.max_time().max(state.manifest.max_event_time);
            tracing::error!(
                partition,
                from_offset,
                to_offset,
                "offsets were deleted by the broker before the archive read them: their events are lost to the batch layer"
            );
            metrics::counter!("tandem_archive_offset_gaps_total").increment(1);
            metrics::counter!("tandem_archive_lost_offsets_total")
                .increment(u64::try_from(to_offset - from_offset).unwrap_or(0));
            state.manifest.gaps.push(OffsetGap {
                from_offset,
                to_offset,
                after_time,
                before_time,
                detected_at: self.clock.now(),
            });
        }
        let now = self.clock.now();
        // Malformed and future events are not archived (the speed layer dead-letters them), but
        // their offsets are covered by the next manifest all the same, so they are never re-read.
        match read {
            Read::Event(event)
                if matches!(
                    Admission::of(
                        event.time,
                        m.timestamp().to_millis(),
                        now,
                        self.config.max_future
                    ),
                    Admission::Future { .. }
                ) =>
            {
                metrics::counter!("tandem_archive_rejected_total", "reason" => "future")
                    .increment(1);
            }
            Read::Event(event) => {
                let bytes = m.payload().map_or(0, <[u8]>::len);
                buffer.append(
                    &self.decoder,
                    &event,
                    (partition, offset),
                    bytes,
                    self.clock.now(),
                );
                metrics::counter!("tandem_archive_events_total").increment(1);
            }
            Read::Skip(skip) => {
                metrics::counter!("tandem_archive_skipped_changes_total", "reason" => skip.kind())
                    .increment(1);
            }
            Read::Malformed(_) | Read::Unresolved(_) => {
                metrics::counter!("tandem_archive_rejected_total", "reason" => "malformed")
                    .increment(1);
            }
        }
        let full = buffer.bytes >= self.config.roll_bytes;
        if woke_up {
            // The partition was published as idle; say it is busy before anything relies on it.
            self.publish_progress(partition, None).await;
        }
        if full {
            self.roll(partition).await;
        }
    }

    pub(super) async fn on_tick(&mut self) {
        let interval = self.config.roll_interval;
        let now = Instant::now();
        let due: Vec<i32> = self
            .partitions
            .iter()
            .filter(|(_, s)| roll::roll_due(s, interval, now))
            .map(|(p, _)| *p)
            .collect();
        for p in due {
            self.roll(p).await;
        }
        self.mark_idle(interval).await;
    }

    /// Publishes an idle marker for assigned partitions that are fully archived and quiet.
    async fn mark_idle(&mut self, quiet_for: Duration) {
        let assigned: Vec<i32> = match self.consumer.assignment() {
            Ok(list) => list
                .elements()
                .iter()
                .filter(|e| e.topic() == self.config.topic)
                .map(|e| e.partition())
                .collect(),
            Err(_) => return,
        };
        for p in assigned {
            if !self.ensure_loaded(p).await {
                continue;
            }
            let Some(state) = self.partitions.get_mut(&p) else {
                continue;
            };
            let now = Instant::now();
            if roll::idle_recheck_due(state, quiet_for, now) {
                state.idle_checked = now;
                let next_offset = state.manifest.next_offset;
                if let Some((_, high)) = self.watermarks(p).await
                    && roll::behind(next_offset, high)
                {
                    // Nothing arrived although the broker holds more: the partition is busy
                    // again until the archive has it all.
                    tracing::warn!(
                        partition = p,
                        next_offset,
                        high,
                        "partition marked idle but the broker holds messages the archive has not received; marking it busy"
                    );
                    metrics::counter!("tandem_archive_idle_revoked_total").increment(1);
                    self.publish_progress(p, None).await;
                }
                continue;
            }
            if !roll::idle_candidate(state, quiet_for, now) {
                continue;
            }
            // Asked of the broker at most once a second per partition.
            state.idle_checked = now;
            let next_offset = state.manifest.next_offset;
            let Some((_, high)) = self.watermarks(p).await else {
                continue;
            };
            // Everything the partition holds is archived: nothing can hold completeness back
            // until a new event arrives (which clears the marker before it is buffered).
            if high <= next_offset {
                let now = self.clock.now();
                self.publish_progress(p, Some(now)).await;
            }
        }
    }

    /// Compares each assigned partition's position with the broker's log end: a partition
    /// whose consumer received nothing for a while although the broker holds more has stalled.
    /// It is reported (`/readyz`, `tandem_archive_stalled_partitions`, an error in the log) and
    /// sought back to its position, which re-arms its fetches.
    pub(super) async fn check_progress(&mut self) {
        let assigned: Vec<i32> = match self.consumer.assignment() {
            Ok(list) => list
                .elements()
                .iter()
                .filter(|e| e.topic() == self.config.topic)
                .map(|e| e.partition())
                .collect(),
            Err(_) => return,
        };
        let after = stall_after(self.config.roll_interval);
        let mut stalled = Vec::new();
        let mut behind_total: i64 = 0;
        for p in assigned {
            let Some(state) = self.partitions.get(&p) else {
                continue;
            };
            if state.paused {
                // Paused on purpose (a failed roll waits for its retry).
                continue;
            }
            let (position, last_message) = (roll::position(state), state.last_message);
            let Some((_, high)) = self.watermarks(p).await else {
                continue;
            };
            behind_total += (high - position).max(0);
            if roll::stalled(position, high, last_message, Instant::now(), after) {
                stalled.push((p, position, high));
            }
        }
        metrics::gauge!("tandem_archive_behind_messages").set(behind_total as f64);
        metrics::gauge!("tandem_archive_stalled_partitions").set(stalled.len() as f64);
        if stalled.is_empty() {
            self.config.progress.set(None);
            return;
        }
        let why = format!(
            "the archive received nothing for {after:?} from partitions {:?} although the broker holds {} messages it has not archived",
            stalled.iter().map(|(p, _, _)| *p).collect::<Vec<_>>(),
            stalled.iter().map(|(_, pos, high)| high - pos).sum::<i64>()
        );
        tracing::error!("{why}; seeking them back to their positions");
        metrics::counter!("tandem_archive_stalls_total").increment(stalled.len() as u64);
        self.config.progress.set(Some(why));
        for (p, position, _) in stalled {
            self.seek(p, position);
        }
    }

    /// The broker's first offset and log end for `partition`, if it answers.
    async fn watermarks(&self, partition: i32) -> Option<(i64, i64)> {
        let consumer = Arc::clone(&self.broker_client);
        let topic = self.config.topic.clone();
        let found = tokio::task::spawn_blocking(move || {
            consumer.fetch_watermarks(&topic, partition, Duration::from_secs(5))
        })
        .await;
        match found {
            Ok(Ok(marks)) => Some(marks),
            Ok(Err(err)) => {
                tracing::warn!(partition, %err, "cannot read the partition's watermarks");
                None
            }
            Err(_) => None,
        }
    }

    pub(super) fn seek(&self, partition: i32, offset: i64) {
        if let Err(err) = self.consumer.seek(
            &self.config.topic,
            partition,
            Offset::Offset(offset),
            Duration::from_secs(5),
        ) {
            tracing::debug!(partition, offset, %err, "seek failed (partition probably revoked)");
        }
    }

    /// Another writer published first: reload and continue from its offset.
    pub(super) async fn fenced(&mut self, partition: i32) {
        metrics::counter!("tandem_archive_fenced_total").increment(1);
        self.partitions.remove(&partition);
        if self.ensure_loaded(partition).await
            && let Some(state) = self.partitions.get(&partition)
        {
            self.seek(partition, state.manifest.next_offset);
        }
    }

    fn partition_list(&self, partition: i32) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.config.topic, partition);
        tpl
    }

    /// Stops reading a partition until its pending roll is published (bounds memory).
    pub(super) fn pause(&self, partition: i32) {
        metrics::counter!("tandem_archive_paused_total").increment(1);
        if let Err(err) = self.consumer.pause(&self.partition_list(partition)) {
            tracing::warn!(partition, %err, "could not pause partition");
        }
    }

    pub(super) fn resume(&self, partition: i32) {
        if let Err(err) = self.consumer.resume(&self.partition_list(partition)) {
            tracing::warn!(partition, %err, "could not resume partition");
        }
    }
}
