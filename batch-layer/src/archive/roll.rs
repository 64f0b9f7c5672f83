//! The archive's per-partition state and the decisions about it: what to do with a message,
//! when a buffer rolls, and what the next partition manifest says. Pure: no I/O.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use tandem_shared::event::{DecodedEvent, EventBatchBuilder, EventDecoder};
use tandem_shared::layout;
use tandem_shared::time::EventTime;

use super::snapshot::{ArchivedFile, PartitionManifest};

/// Rows of one event hour, waiting for their file.
pub(super) struct HourBuffer {
    builder: EventBatchBuilder,
    min_time: EventTime,
    max_time: EventTime,
}

/// Events of one partition read since its last roll.
pub(super) struct Buffer {
    pub(super) first_offset: i64,
    pub(super) last_offset: i64,
    hours: BTreeMap<EventTime, HourBuffer>,
    pub(super) opened: Instant,
    pub(super) bytes: usize,
    /// Event-time progress of the buffered events, each bounded by the clock when it was read
    /// ([`EventTime::progress_at`]).
    progress: Option<EventTime>,
}

impl Buffer {
    pub(super) fn new(offset: i64, now: Instant) -> Self {
        Self {
            first_offset: offset,
            last_offset: offset,
            hours: BTreeMap::new(),
            opened: now,
            bytes: 0,
            progress: None,
        }
    }

    /// Latest event time buffered.
    pub(super) fn max_time(&self) -> Option<EventTime> {
        self.hours.values().map(|h| h.max_time).max()
    }

    /// Adds a decoded event of `payload_bytes`, read at wall-clock time `read_at`, to the file
    /// of its event hour.
    pub(super) fn append(
        &mut self,
        decoder: &EventDecoder,
        event: &DecodedEvent<'_>,
        (partition, offset): (i32, i64),
        payload_bytes: usize,
        read_at: EventTime,
    ) {
        let progress = event.time.progress_at(read_at);
        self.progress = Some(self.progress.map_or(progress, |p| p.max(progress)));
        let hour = layout::hour_start(event.time);
        let h = self.hours.entry(hour).or_insert_with(|| HourBuffer {
            builder: EventBatchBuilder::new(decoder, 1024),
            min_time: event.time,
            max_time: event.time,
        });
        h.builder.append(event, partition, offset);
        h.min_time = h.min_time.min(event.time);
        h.max_time = h.max_time.max(event.time);
        self.bytes += payload_bytes;
    }

    /// The buffer's rows, final: one batch per event hour.
    pub(super) fn seal(self) -> SealedRoll {
        SealedRoll {
            first_offset: self.first_offset,
            last_offset: self.last_offset,
            progress: self.progress,
            hours: self
                .hours
                .into_iter()
                .map(|(hour, mut h)| SealedHour {
                    hour,
                    batch: h.builder.finish(),
                    min_time: h.min_time,
                    max_time: h.max_time,
                })
                .collect(),
        }
    }
}

/// The rows of one event hour of a sealed roll.
pub(super) struct SealedHour {
    pub(super) hour: EventTime,
    pub(super) batch: RecordBatch,
    pub(super) min_time: EventTime,
    pub(super) max_time: EventTime,
}

/// A buffer whose rows are final, ready to be written (kept until its publication succeeds).
pub(super) struct SealedRoll {
    pub(super) first_offset: i64,
    pub(super) last_offset: i64,
    /// See [`Buffer::progress`].
    pub(super) progress: Option<EventTime>,
    pub(super) hours: Vec<SealedHour>,
}

impl SealedRoll {
    /// The file each hour of this roll is written to (deterministic: a replay of the same
    /// offsets overwrites the same files).
    pub(super) fn files(&self, topic: &str, partition: i32) -> Vec<String> {
        self.hours
            .iter()
            .map(|h| {
                layout::archive_file(
                    topic,
                    h.hour,
                    partition,
                    self.first_offset,
                    self.last_offset,
                )
            })
            .collect()
    }
}

/// The archive's state of one partition.
pub(super) struct PartitionState {
    pub(super) manifest: PartitionManifest,
    pub(super) seq: Option<u64>,
    /// Whether intents left by earlier owners were cleaned up (only after our own first
    /// publication, which proves they can no longer publish).
    pub(super) cleaned: bool,
    /// Whether we already moved the consumer back to the manifest's offset once.
    pub(super) sought: bool,
    pub(super) buffer: Option<Buffer>,
    pub(super) pending: Option<SealedRoll>,
    pub(super) last_message: Instant,
    pub(super) retry_at: Option<Instant>,
    pub(super) paused: bool,
    /// When an idle marker was last checked against the broker's log end.
    pub(super) idle_checked: Instant,
}

impl PartitionState {
    pub(super) fn new(manifest: PartitionManifest, seq: Option<u64>, now: Instant) -> Self {
        Self {
            manifest,
            seq,
            cleaned: false,
            sought: false,
            buffer: None,
            pending: None,
            last_message: now,
            retry_at: None,
            paused: false,
            idle_checked: now,
        }
    }

    /// The sequence number of the next manifest this writer publishes.
    pub(super) fn next_seq(&self) -> u64 {
        self.seq.map_or(0, |s| s + 1)
    }
}

/// What to do with the message at an offset of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OffsetAdmission {
    /// Below the manifest's offset: archived already (the Kafka commit lagged behind the
    /// manifest, a crash between the two).
    Archived,
    /// Kafka's position is ahead of the manifest (offsets reset by hand, say): move back to the
    /// manifest, the archive's own record of progress.
    SeekTo(i64),
    /// At or below what the buffer already holds (a replay after a seek).
    Duplicate,
    /// Buffer it.
    Append,
}

/// Decides what to do with `offset`, given the manifest's next offset, the last buffered offset
/// and whether the consumer was already moved once (offsets may have gaps from compaction or
/// transaction markers, so a position ahead of the manifest is corrected only once).
pub(super) fn admit(
    offset: i64,
    next_offset: i64,
    buffered_to: Option<i64>,
    sought: bool,
) -> OffsetAdmission {
    if offset < next_offset {
        OffsetAdmission::Archived
    } else if buffered_to.is_none() && offset > next_offset && !sought {
        OffsetAdmission::SeekTo(next_offset)
    } else if buffered_to.is_some_and(|last| offset <= last) {
        OffsetAdmission::Duplicate
    } else {
        OffsetAdmission::Append
    }
}

/// The offsets lost before `offset`, if the message arrived past the `expected` one and the
/// broker's log now starts (`low_watermark`) past it: deleted, not merely skipped (transaction
/// markers and compaction also leave holes, but below the log start nothing is left).
pub(super) fn gap(expected: i64, offset: i64, low_watermark: i64) -> Option<(i64, i64)> {
    (offset > expected && low_watermark > expected).then(|| (expected, low_watermark.min(offset)))
}

/// Whether a partition's buffer is due to be written: it is older than the roll interval, or a
/// failed roll waits for its retry time.
pub(super) fn roll_due(state: &PartitionState, interval: Duration, now: Instant) -> bool {
    state
        .buffer
        .as_ref()
        .is_some_and(|b| now.duration_since(b.opened) >= interval)
        || (state.pending.is_some() && state.retry_at.is_none_or(|t| now >= t))
}

/// Whether an assigned partition may be published as idle, before asking Kafka whether
/// everything it holds is archived: nothing buffered or pending, not idle already, and quiet for
/// `quiet_for`.
pub(super) fn idle_candidate(state: &PartitionState, quiet_for: Duration, now: Instant) -> bool {
    state.buffer.is_none()
        && state.pending.is_none()
        && state.manifest.idle_since.is_none()
        && now.duration_since(state.last_message) >= quiet_for
        && now.duration_since(state.idle_checked) >= IDLE_QUERY_EVERY
}

/// How often a quiet partition's log end is asked of the broker, at most.
const IDLE_QUERY_EVERY: Duration = Duration::from_secs(1);

/// Whether a partition published as idle is due to be checked against the broker's log end:
/// a consumer that stops receiving (a broker that never answers a fetch, say) must not leave a
/// partition idle, and so complete, while the broker holds messages the archive lacks.
pub(super) fn idle_recheck_due(state: &PartitionState, interval: Duration, now: Instant) -> bool {
    state.manifest.idle_since.is_some()
        && state.buffer.is_none()
        && state.pending.is_none()
        && now.duration_since(state.idle_checked) >= interval
}

/// The next offset the archive expects of a partition: after its buffer, its pending roll, or
/// what its manifest covers.
pub(super) fn position(state: &PartitionState) -> i64 {
    state
        .buffer
        .as_ref()
        .map(|b| b.last_offset + 1)
        .or(state.pending.as_ref().map(|p| p.last_offset + 1))
        .unwrap_or(state.manifest.next_offset)
}

/// Whether a partition's consumer has stalled: the broker holds messages from `position` on
/// (`high` is the log end) and none has arrived for `after`. A consumer that keeps up receives
/// within a fetch wait; one that is merely behind keeps receiving.
pub(super) fn stalled(
    position: i64,
    high: i64,
    last_message: Instant,
    now: Instant,
    after: Duration,
) -> bool {
    high > position && now.duration_since(last_message) >= after
}

/// Whether the broker holds messages past what the archive has (`high` is the log end).
pub(super) fn behind(next_offset: i64, high: i64) -> bool {
    high > next_offset
}

/// The manifest after a roll wrote `files`: they are listed, the offset moves past the roll,
/// event-time progress moves to the roll's (never back; not the files' largest event time,
/// which may be ahead of the clock), and the partition is busy.
pub(super) fn rolled(
    current: &PartitionManifest,
    files: Vec<ArchivedFile>,
    (next_offset, progress): (i64, Option<EventTime>),
    partition_count: i32,
    now: EventTime,
) -> PartitionManifest {
    let mut next = current.clone();
    next.max_event_time = next.max_event_time.max(progress);
    next.files.extend(files);
    next.next_offset = next_offset;
    next.idle_since = None;
    next.partition_count = next.partition_count.max(partition_count);
    next.published_at = now;
    next
}

/// The manifest that only changes the idle marker.
pub(super) fn progressed(
    current: &PartitionManifest,
    idle_since: Option<EventTime>,
    partition_count: i32,
    now: EventTime,
) -> PartitionManifest {
    let mut next = current.clone();
    next.idle_since = idle_since;
    next.partition_count = next.partition_count.max(partition_count);
    next.published_at = now;
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_is_only_offsets_the_broker_no_longer_holds() {
        // Next expected 10; the log now starts at 50 and the message is at 50: 10..50 lost.
        assert_eq!(gap(10, 50, 50), Some((10, 50)));
        // A hole from transaction markers: the log still starts below it.
        assert_eq!(gap(10, 12, 0), None);
        // In order: nothing.
        assert_eq!(gap(10, 10, 10), None);
        // The log start moved past the message we got (deleted meanwhile): up to the message.
        assert_eq!(gap(10, 30, 40), Some((10, 30)));
    }

    #[test]
    fn messages_are_admitted_once_from_the_manifests_offset() {
        use OffsetAdmission::*;
        // Replayed offsets the manifest already covers are skipped.
        assert_eq!(admit(4, 10, None, false), Archived);
        // Kafka is ahead of the manifest: go back, but only once (gaps are legal).
        assert_eq!(admit(15, 10, None, false), SeekTo(10));
        assert_eq!(admit(15, 10, None, true), Append);
        assert_eq!(admit(10, 10, None, false), Append);
        // A replay inside the buffer is a duplicate.
        assert_eq!(admit(12, 10, Some(13), true), Duplicate);
        assert_eq!(admit(14, 10, Some(13), true), Append);
    }

    fn file(max: i64) -> ArchivedFile {
        ArchivedFile {
            path: format!("f{max}"),
            hour: EventTime(0),
            first_offset: 0,
            last_offset: 9,
            rows: 10,
            bytes: 100,
            min_time: EventTime(0),
            max_time: EventTime(max),
        }
    }

    #[test]
    fn a_roll_lists_its_files_moves_the_offset_and_clears_idleness() {
        let mut current = PartitionManifest::empty("t", 0, 2, EventTime(0));
        current.idle_since = Some(EventTime(5));
        current.max_event_time = Some(EventTime(700));
        let next = rolled(
            &current,
            vec![file(500), file(900)],
            (10, Some(EventTime(850))),
            4,
            EventTime(42),
        );
        assert_eq!(next.files.len(), 2);
        assert_eq!(next.next_offset, 10);
        assert_eq!(next.idle_since, None);
        // The roll's progress (bounded by the clock), not its files' largest time.
        assert_eq!(next.max_event_time, Some(EventTime(850)));
        let behind = rolled(
            &current,
            Vec::new(),
            (11, Some(EventTime(600))),
            4,
            EventTime(43),
        );
        assert_eq!(behind.max_event_time, Some(EventTime(700)), "never back");
        assert_eq!(next.partition_count, 4);
        assert_eq!(next.published_at, EventTime(42));
        let idle = progressed(&next, Some(EventTime(50)), 3, EventTime(60));
        assert_eq!(idle.files, next.files, "an idle marker changes no files");
        assert_eq!(idle.idle_since, Some(EventTime(50)));
        assert_eq!(idle.partition_count, 4, "the partition count never shrinks");
    }

    #[test]
    fn a_partition_stalls_when_the_broker_holds_more_and_nothing_arrives() {
        let t0 = Instant::now();
        let after = Duration::from_secs(30);
        assert!(!stalled(10, 10, t0, t0 + after, after), "caught up");
        assert!(
            !stalled(10, 15, t0, t0 + Duration::from_secs(5), after),
            "not for long"
        );
        assert!(stalled(10, 15, t0, t0 + after, after));
        let mut state =
            PartitionState::new(PartitionManifest::empty("t", 0, 1, EventTime(0)), None, t0);
        state.manifest.next_offset = 7;
        assert_eq!(position(&state), 7);
        state.buffer = Some(Buffer::new(7, t0));
        if let Some(b) = state.buffer.as_mut() {
            b.last_offset = 9;
        }
        assert_eq!(position(&state), 10);
    }

    #[test]
    fn buffers_roll_by_age_and_failed_rolls_wait_for_their_retry() {
        let start = Instant::now();
        let manifest = PartitionManifest::empty("t", 0, 1, EventTime(0));
        let mut state = PartitionState::new(manifest, None, start);
        let interval = Duration::from_secs(30);
        assert!(!roll_due(&state, interval, start + interval));
        state.buffer = Some(Buffer::new(0, start));
        assert!(!roll_due(&state, interval, start + Duration::from_secs(29)));
        assert!(roll_due(&state, interval, start + interval));
        state.buffer = None;
        state.pending = Some(SealedRoll {
            first_offset: 0,
            last_offset: 0,
            progress: None,
            hours: Vec::new(),
        });
        state.retry_at = Some(start + Duration::from_secs(2));
        assert!(!roll_due(&state, interval, start + Duration::from_secs(1)));
        assert!(roll_due(&state, interval, start + Duration::from_secs(2)));
        assert!(
            !idle_candidate(&state, interval, start + interval),
            "a roll is pending"
        );
        state.pending = None;
        assert!(idle_candidate(&state, interval, start + interval));
        assert!(!idle_candidate(
            &state,
            interval,
            start + Duration::from_secs(1)
        ));
        // Asked once, then not again within a second.
        state.idle_checked = start + interval;
        assert!(!idle_candidate(
            &state,
            interval,
            start + interval + Duration::from_millis(500)
        ));
        assert!(idle_candidate(
            &state,
            interval,
            start + interval + IDLE_QUERY_EVERY
        ));
    }

    #[test]
    fn idle_partitions_are_checked_against_the_log_end_once_per_interval() {
        let start = Instant::now();
        let manifest = PartitionManifest::empty("t", 0, 1, EventTime(0));
        let mut state = PartitionState::new(manifest, None, start);
        let interval = Duration::from_secs(30);
        assert!(
            !idle_recheck_due(&state, interval, start + interval),
            "not idle"
        );
        state.manifest.idle_since = Some(EventTime(1));
        assert!(!idle_recheck_due(
            &state,
            interval,
            start + Duration::from_secs(29)
        ));
        assert!(idle_recheck_due(&state, interval, start + interval));
        state.buffer = Some(Buffer::new(0, start));
        assert!(
            !idle_recheck_due(&state, interval, start + interval),
            "a message arrived: the roll clears the marker"
        );
        assert!(behind(10, 11));
        assert!(!behind(10, 10));
    }
}
