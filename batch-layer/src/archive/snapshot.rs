//! What the archive holds: per-partition manifests and the decisions derived from them.
//!
//! Each Kafka partition has its own manifest chain (`archive/<topic>/_manifest/p<partition>/`).
//! A partition manifest lists every Parquet file archived from that partition and the offset the
//! archive resumes from; files that no manifest lists are garbage from an interrupted roll.
//!
//! Completeness: an event-time instant `T` is *complete* in the archive when every partition
//! has archived an event at or after `T`, or is idle (fully archived and quiet for longer than
//! the idle timeout). A window may be published as exact only if its end plus the view's allowed
//! lateness is complete: any event for it that arrives later is late by definition.

use std::collections::BTreeMap;
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::path::Path;
use serde::{Deserialize, Serialize};
use tandem_shared::layout;
use tandem_shared::time::{EventTime, Span};

use tandem_store::manifest::{self, ManifestChain};
use tandem_store::object;

/// One archived Parquet file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchivedFile {
    pub path: String,
    /// Start of the event-time hour the file's rows fall in.
    pub hour: EventTime,
    pub first_offset: i64,
    pub last_offset: i64,
    pub rows: u64,
    pub bytes: u64,
    pub min_time: EventTime,
    pub max_time: EventTime,
}

/// Offsets the broker deleted before the archive read them (retention outran the archive):
/// their events are lost to the batch layer. The lost events' times are unknown; they are
/// taken to lie between the partition's latest archived event time before the gap and the
/// event time of the first message after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetGap {
    /// First missing offset.
    pub from_offset: i64,
    /// First offset after the gap.
    pub to_offset: i64,
    pub after_time: Option<EventTime>,
    pub before_time: Option<EventTime>,
    pub detected_at: EventTime,
}

impl OffsetGap {
    /// Event times the missing events may have.
    pub fn times(&self) -> (EventTime, EventTime) {
        (
            self.after_time.unwrap_or(EventTime::MIN),
            self.before_time.unwrap_or(EventTime::MAX),
        )
    }
}

/// The published state of one partition of the archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionManifest {
    pub topic: String,
    pub partition: i32,
    /// Partitions the topic had when this manifest was written.
    pub partition_count: i32,
    /// Every offset below this is archived (or was malformed and dead-lettered).
    pub next_offset: i64,
    /// Largest event time archived from this partition.
    pub max_event_time: Option<EventTime>,
    /// Wall-clock time since which the partition has been fully archived with nothing new.
    pub idle_since: Option<EventTime>,
    pub files: Vec<ArchivedFile>,
    /// Wall-clock time of publication.
    pub published_at: EventTime,
    /// Data lost before it was archived.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gaps: Vec<OffsetGap>,
}

impl PartitionManifest {
    pub fn empty(topic: &str, partition: i32, partition_count: i32, now: EventTime) -> Self {
        Self {
            topic: topic.to_owned(),
            partition,
            partition_count,
            next_offset: 0,
            max_event_time: None,
            idle_since: None,
            files: Vec::new(),
            published_at: now,
            gaps: Vec::new(),
        }
    }

    pub fn rows(&self) -> u64 {
        self.files.iter().map(|f| f.rows).sum()
    }
}

/// All partitions' newest manifests, read at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchiveSnapshot {
    pub partitions: BTreeMap<i32, PartitionManifest>,
}

impl ArchiveSnapshot {
    /// Reads the newest manifest of every partition of `topic`.
    pub async fn load(store: &Arc<dyn ObjectStore>, topic: &str) -> manifest::Result<Self> {
        let prefix = Path::from(format!("{}/_manifest", layout::archive_root(topic)));
        let listing = store
            .list_with_delimiter(Some(&prefix))
            .await
            .map_err(|source| object::Error {
                path: prefix.to_string(),
                source,
            })?;
        let mut partitions = BTreeMap::new();
        for dir in listing.common_prefixes {
            let Some(p) = dir
                .filename()
                .and_then(|n| n.strip_prefix('p'))
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            let chain =
                ManifestChain::new(Arc::clone(store), layout::archive_manifest_dir(topic, p));
            if let Some((_, m)) = chain.latest::<PartitionManifest>().await? {
                partitions.insert(p, m);
            }
        }
        Ok(Self { partitions })
    }

    /// The number of partitions the topic has, as far as the archive knows.
    pub fn partition_count(&self) -> i32 {
        self.partitions
            .values()
            .map(|m| m.partition_count)
            .max()
            .unwrap_or(0)
    }

    /// Every offset gap of every partition.
    pub fn gaps(&self) -> impl Iterator<Item = &OffsetGap> {
        self.partitions.values().flat_map(|m| m.gaps.iter())
    }

    pub fn files(&self) -> impl Iterator<Item = &ArchivedFile> {
        self.partitions.values().flat_map(|m| m.files.iter())
    }

    pub fn earliest_event_time(&self) -> Option<EventTime> {
        self.files().map(|f| f.min_time).min()
    }

    pub fn latest_event_time(&self) -> Option<EventTime> {
        self.files().map(|f| f.max_time).max()
    }

    /// The latest complete event time (see the module docs), or `None` if nothing is complete.
    pub fn complete_until(&self, now: EventTime, idle_timeout: Span) -> Option<EventTime> {
        let count = self.partition_count();
        if count == 0 {
            return None;
        }
        let mut busy_min: Option<EventTime> = None;
        let mut any_max: Option<EventTime> = None;
        for p in 0..count {
            // A partition without a manifest has not been archived at all: nothing is complete.
            let m = self.partitions.get(&p)?;
            let idle = m.idle_since.is_some_and(|since| {
                now.millis().saturating_sub(since.millis()) >= idle_timeout.millis()
            });
            any_max = any_max.max(m.max_event_time);
            if idle {
                continue;
            }
            let t = m.max_event_time?;
            busy_min = Some(busy_min.map_or(t, |b| b.min(t)));
        }
        // If every partition is idle, the stream has stopped: everything archived is complete.
        busy_min.or(any_max)
    }

    /// Files holding events in `[from, to)`, pruned by each file's event-time range.
    pub fn files_between(&self, from: EventTime, to: EventTime) -> Vec<&ArchivedFile> {
        self.files()
            .filter(|f| f.max_time >= from && f.min_time < to)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(p: i32, max: Option<i64>, idle_since: Option<i64>) -> PartitionManifest {
        PartitionManifest {
            max_event_time: max.map(EventTime),
            idle_since: idle_since.map(EventTime),
            ..PartitionManifest::empty("t", p, 3, EventTime(0))
        }
    }

    fn snapshot(ms: Vec<PartitionManifest>) -> ArchiveSnapshot {
        ArchiveSnapshot {
            partitions: ms.into_iter().map(|m| (m.partition, m)).collect(),
        }
    }

    const IDLE: Span = Span::ZERO;

    #[test]
    fn completeness_is_the_slowest_busy_partition() {
        let s = snapshot(vec![
            manifest(0, Some(500), None),
            manifest(1, Some(300), None),
            manifest(2, Some(900), None),
        ]);
        assert_eq!(
            s.complete_until(EventTime(10_000), Span::from_millis(1000)),
            Some(EventTime(300))
        );
    }

    #[test]
    fn a_missing_or_empty_busy_partition_blocks_completeness() {
        let s = snapshot(vec![
            manifest(0, Some(500), None),
            manifest(1, Some(300), None),
        ]);
        assert_eq!(
            s.complete_until(EventTime(0), IDLE),
            None,
            "partition 2 has no manifest"
        );
        let s = snapshot(vec![
            manifest(0, Some(500), None),
            manifest(1, Some(300), None),
            manifest(2, None, None),
        ]);
        assert_eq!(s.complete_until(EventTime(0), IDLE), None);
    }

    #[test]
    fn idle_partitions_stop_holding_completeness_back_after_the_timeout() {
        let s = snapshot(vec![
            manifest(0, Some(500), None),
            manifest(1, Some(100), Some(1_000)),
            manifest(2, None, Some(1_000)),
        ]);
        let timeout = Span::from_millis(5_000);
        assert_eq!(
            s.complete_until(EventTime(2_000), timeout),
            None,
            "not idle long enough"
        );
        assert_eq!(
            s.complete_until(EventTime(6_000), timeout),
            Some(EventTime(500))
        );
        let all_idle = snapshot(vec![
            manifest(0, Some(500), Some(0)),
            manifest(1, Some(700), Some(0)),
            manifest(2, None, Some(0)),
        ]);
        assert_eq!(
            all_idle.complete_until(EventTime(6_000), timeout),
            Some(EventTime(700))
        );
    }
}
