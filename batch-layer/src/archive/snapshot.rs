//! What the archive holds: per-partition manifests and the decisions derived from them.
//!
//! Each Kafka partition has its own manifest chain (`archive/<topic>/_manifest/p<partition>/`).
//! A partition manifest names every Parquet file archived from that partition and the offset the
//! archive resumes from; files that no manifest names are garbage from an interrupted roll.
//!
//! A manifest is rewritten at every roll, so it must not grow with history: it lists the recent
//! files itself and, once they are [`SEAL_AT`], seals them into an immutable *file list* object
//! (`archive/<topic>/_lists/p<partition>/…`) that it names with a summary (offsets, event-time
//! range, rows). Readers load only the lists whose event-time or offset range they need.
//!
//! ```text
//!  manifest <seq>: next_offset, max_event_time, gaps, files: [recent ≤ SEAL_AT],
//!                  lists: [{path, offsets, min/max time, rows}, …] ─► list object: [files]
//! ```
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

/// Files a manifest lists itself before they are sealed into a file list, by default.
pub const SEAL_AT: usize = 256;

/// The summary of a sealed, immutable list of archived files of one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileList {
    pub path: String,
    pub files: u64,
    pub first_offset: i64,
    pub last_offset: i64,
    pub rows: u64,
    pub bytes: u64,
    pub min_time: EventTime,
    pub max_time: EventTime,
}

impl FileList {
    /// Reads the files of the list.
    pub async fn load(&self, store: &Arc<dyn ObjectStore>) -> manifest::Result<Vec<ArchivedFile>> {
        let bytes = object::read(store, &self.path).await?;
        serde_json::from_slice(&bytes).map_err(|source| manifest::Error::Corrupt {
            path: self.path.clone(),
            source,
        })
    }
}

/// Files holding events in `[from, to)`, by each file's event-time range.
pub fn between(
    files: &[ArchivedFile],
    from: EventTime,
    to: EventTime,
) -> impl Iterator<Item = &ArchivedFile> {
    files
        .iter()
        .filter(move |f| f.max_time >= from && f.min_time < to)
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
    /// Files archived since the last sealed list, at most [`SEAL_AT`] after a publication.
    pub files: Vec<ArchivedFile>,
    /// Sealed lists of earlier files, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lists: Vec<FileList>,
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
            lists: Vec::new(),
            published_at: now,
            gaps: Vec::new(),
        }
    }

    /// Rows of every archived file, listed or sealed.
    pub fn rows(&self) -> u64 {
        self.files.iter().map(|f| f.rows).sum::<u64>()
            + self.lists.iter().map(|l| l.rows).sum::<u64>()
    }

    /// Files archived, listed or sealed.
    pub fn file_count(&self) -> u64 {
        self.files.len() as u64 + self.lists.iter().map(|l| l.files).sum::<u64>()
    }

    /// Seals the listed files into a file list once there are `at` of them: the manifest names
    /// the list instead, and the caller writes the returned list object before publishing the
    /// manifest. Pure.
    pub fn seal(&mut self, at: usize) -> Option<(String, Vec<ArchivedFile>)> {
        if self.files.len() < at {
            return None;
        }
        let files = std::mem::take(&mut self.files);
        let first_offset = files.iter().map(|f| f.first_offset).min().unwrap_or(0);
        let last_offset = files.iter().map(|f| f.last_offset).max().unwrap_or(0);
        let path =
            layout::archive_file_list(&self.topic, self.partition, first_offset, last_offset);
        self.lists.push(FileList {
            path: path.clone(),
            files: files.len() as u64,
            first_offset,
            last_offset,
            rows: files.iter().map(|f| f.rows).sum(),
            bytes: files.iter().map(|f| f.bytes).sum(),
            min_time: files
                .iter()
                .map(|f| f.min_time)
                .min()
                .unwrap_or(EventTime::MIN),
            max_time: files
                .iter()
                .map(|f| f.max_time)
                .max()
                .unwrap_or(EventTime::MAX),
        });
        Some((path, files))
    }

    /// The file list that [`PartitionManifest::seal`]`(at)` will write after a roll adds
    /// `new_files` files with offsets `[first, last]`, if it seals then.
    pub fn list_sealed_by(
        &self,
        at: usize,
        new_files: usize,
        first: i64,
        last: i64,
    ) -> Option<String> {
        (self.files.len() + new_files >= at).then(|| {
            let first = self
                .files
                .iter()
                .map(|f| f.first_offset)
                .fold(first, i64::min);
            let last = self
                .files
                .iter()
                .map(|f| f.last_offset)
                .fold(last, i64::max);
            layout::archive_file_list(&self.topic, self.partition, first, last)
        })
    }

    /// Every file of the partition, reading all its sealed lists.
    pub async fn all_files(
        &self,
        store: &Arc<dyn ObjectStore>,
    ) -> manifest::Result<Vec<ArchivedFile>> {
        let mut out = Vec::new();
        for list in &self.lists {
            out.extend(list.load(store).await?);
        }
        out.extend(self.files.iter().cloned());
        Ok(out)
    }
}

/// All partitions' newest manifests, read at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchiveSnapshot {
    pub partitions: BTreeMap<i32, PartitionManifest>,
}

impl ArchiveSnapshot {
    /// Reads the newest manifest of every partition of `topic`, the partitions concurrently
    /// (each is a listing and a read: sequential round trips would add up on S3).
    pub async fn load(store: &Arc<dyn ObjectStore>, topic: &str) -> manifest::Result<Self> {
        let prefix = Path::from(format!("{}/_manifest", layout::archive_root(topic)));
        let listing = store
            .list_with_delimiter(Some(&prefix))
            .await
            .map_err(|source| object::Error {
                path: prefix.to_string(),
                source,
            })?;
        let loads = listing
            .common_prefixes
            .iter()
            .filter_map(|dir| {
                dir.filename()
                    .and_then(|n| n.strip_prefix('p'))
                    .and_then(|n| n.parse::<i32>().ok())
            })
            .map(|p| async move {
                let chain =
                    ManifestChain::new(Arc::clone(store), layout::archive_manifest_dir(topic, p));
                let latest = chain.latest::<PartitionManifest>().await?;
                Ok::<_, manifest::Error>(latest.map(|(_, m)| (p, m)))
            });
        let partitions = futures::future::try_join_all(loads)
            .await?
            .into_iter()
            .flatten()
            .collect();
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

    /// Event-time ranges of every file and sealed list.
    fn time_ranges(&self) -> impl Iterator<Item = (EventTime, EventTime)> {
        self.partitions.values().flat_map(|m| {
            m.files
                .iter()
                .map(|f| (f.min_time, f.max_time))
                .chain(m.lists.iter().map(|l| (l.min_time, l.max_time)))
        })
    }

    pub fn earliest_event_time(&self) -> Option<EventTime> {
        self.time_ranges().map(|(min, _)| min).min()
    }

    pub fn latest_event_time(&self) -> Option<EventTime> {
        self.time_ranges().map(|(_, max)| max).max()
    }

    /// The latest complete event time (see the module docs), or `None` if nothing is complete.
    pub fn complete_until(&self, now: EventTime, idle_timeout: Span) -> Option<EventTime> {
        self.complete_or(now, idle_timeout, None)
    }

    /// [`ArchiveSnapshot::complete_until`] of a dimension table's changelog: when every
    /// partition is quiet the table holds every row valid until `now` (a row that comes later
    /// is a late update, as a late event is for a topic).
    pub fn table_complete_until(&self, now: EventTime, idle_timeout: Span) -> Option<EventTime> {
        self.complete_or(now, idle_timeout, Some(now))
    }

    fn complete_or(
        &self,
        now: EventTime,
        idle_timeout: Span,
        stopped: Option<EventTime>,
    ) -> Option<EventTime> {
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
        busy_min.or(stopped.max(any_max))
    }

    /// Files holding events in `[from, to)`, pruned by each file's (and each sealed list's)
    /// event-time range: only the lists that overlap are read.
    pub async fn files_between(
        &self,
        store: &Arc<dyn ObjectStore>,
        from: EventTime,
        to: EventTime,
    ) -> manifest::Result<Vec<ArchivedFile>> {
        let mut out = Vec::new();
        for m in self.partitions.values() {
            for list in m
                .lists
                .iter()
                .filter(|l| l.max_time >= from && l.min_time < to)
            {
                out.extend(between(&list.load(store).await?, from, to).cloned());
            }
            out.extend(between(&m.files, from, to).cloned());
        }
        Ok(out)
    }

    /// Files of `partition` holding offsets at or after `offset`: only the sealed lists that
    /// reach it are read.
    pub async fn files_from(
        &self,
        store: &Arc<dyn ObjectStore>,
        partition: i32,
        offset: i64,
    ) -> manifest::Result<Vec<ArchivedFile>> {
        let Some(m) = self.partitions.get(&partition) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for list in m.lists.iter().filter(|l| l.last_offset >= offset) {
            out.extend(list.load(store).await?);
        }
        out.extend(m.files.iter().cloned());
        out.retain(|f| f.first_offset >= offset);
        Ok(out)
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

    fn file(first: i64, min: i64, max: i64) -> ArchivedFile {
        ArchivedFile {
            path: format!("f{first}"),
            hour: EventTime(0),
            first_offset: first,
            last_offset: first + 9,
            rows: 10,
            bytes: 100,
            min_time: EventTime(min),
            max_time: EventTime(max),
        }
    }

    #[test]
    fn a_quiet_table_is_complete_until_now_a_quiet_topic_until_its_latest_event() {
        let now = EventTime(10_000);
        let quiet = snapshot(vec![
            manifest(0, Some(100), Some(0)),
            manifest(1, Some(300), Some(0)),
            manifest(2, None, Some(0)),
        ]);
        assert_eq!(quiet.complete_until(now, IDLE), Some(EventTime(300)));
        assert_eq!(quiet.table_complete_until(now, IDLE), Some(now));
        // A busy partition holds both back to its latest row.
        let busy = snapshot(vec![
            manifest(0, Some(100), None),
            manifest(1, Some(300), Some(0)),
            manifest(2, None, Some(0)),
        ]);
        assert_eq!(busy.table_complete_until(now, IDLE), Some(EventTime(100)));
        assert_eq!(snapshot(vec![]).table_complete_until(now, IDLE), None);
    }

    #[test]
    fn a_manifest_seals_its_files_into_a_list_it_names() {
        let mut m = manifest(4, Some(0), None);
        m.files = (0..3)
            .map(|i| file(i * 10, i * 100, i * 100 + 50))
            .collect();
        assert_eq!(m.list_sealed_by(5, 1, 30, 39), None);
        assert_eq!(m.seal(5), None);
        let predicted = m.list_sealed_by(4, 1, 30, 39);
        m.files.push(file(30, 300, 350));
        let (path, sealed) = m.seal(4).unwrap();
        assert_eq!(Some(path.clone()), predicted);
        assert_eq!(path, layout::archive_file_list("t", 4, 0, 39));
        assert_eq!(sealed.len(), 4);
        assert!(m.files.is_empty());
        let list = &m.lists[0];
        assert_eq!(
            (
                list.files,
                list.rows,
                list.bytes,
                list.first_offset,
                list.last_offset
            ),
            (4, 40, 400, 0, 39)
        );
        assert_eq!(
            (list.min_time, list.max_time),
            (EventTime(0), EventTime(350))
        );
        m.files.push(file(40, 400, 450));
        assert_eq!((m.rows(), m.file_count()), (50, 5));
        // Old manifests (no lists) still read.
        let mut json = serde_json::to_value(manifest(0, None, None)).unwrap();
        assert!(json.get("lists").is_none());
        json.as_object_mut().unwrap().remove("lists");
        let old: PartitionManifest = serde_json::from_value(json).unwrap();
        assert!(old.lists.is_empty());
    }

    #[tokio::test]
    async fn readers_read_only_the_lists_their_range_needs() {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let mut m = manifest(0, Some(0), None);
        m.partition_count = 1;
        // Three sealed lists of two files each, then two listed files. The middle list is never
        // written: a reader that reads it fails, so a passing read shows it was pruned.
        for (i, write) in [(0, true), (1, false), (2, true)] {
            m.files = vec![
                file(i * 20, i * 1_000, i * 1_000 + 400),
                file(i * 20 + 10, i * 1_000 + 500, i * 1_000 + 900),
            ];
            let (path, files) = m.seal(2).unwrap();
            if write {
                object::write(&store, &path, serde_json::to_vec(&files).unwrap())
                    .await
                    .unwrap();
            }
        }
        m.files = vec![file(60, 3_000, 3_400)];
        let s = snapshot(vec![m]);
        assert_eq!(s.earliest_event_time(), Some(EventTime(0)));
        assert_eq!(s.latest_event_time(), Some(EventTime(3_400)));

        let offsets = |files: Vec<ArchivedFile>| -> Vec<i64> {
            files.iter().map(|f| f.first_offset).collect()
        };
        let early = s
            .files_between(&store, EventTime(450), EventTime(600))
            .await;
        assert_eq!(offsets(early.unwrap()), [10]);
        let late = s
            .files_between(&store, EventTime(2_450), EventTime::MAX)
            .await;
        assert_eq!(offsets(late.unwrap()), [50, 60]);
        assert!(
            s.files_between(&store, EventTime(0), EventTime::MAX)
                .await
                .is_err(),
            "the whole range needs the missing list"
        );
        assert_eq!(
            offsets(s.files_from(&store, 0, 50).await.unwrap()),
            [50, 60]
        );
        assert_eq!(offsets(s.files_from(&store, 0, 60).await.unwrap()), [60]);
        assert!(s.files_from(&store, 0, 0).await.is_err());
    }

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
