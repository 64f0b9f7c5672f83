//! Where every object lives in the object store.
//!
//! One builder per kind of key, so no component ever formats a path by hand. All paths are
//! relative to the configured storage root (`storage.url`). Numbers are zero-padded so that a
//! lexicographic listing is also a numeric one.
//!
//! ```
//! use tandem_shared::layout;
//! use tandem_shared::time::EventTime;
//!
//! // 2026-11-21T10:15:00Z
//! let t = EventTime::from_millis(1_795_256_100_000);
//! assert_eq!(
//!     layout::archive_file("orders", t, 3, 100, 199),
//!     "archive/orders/date=2026-11-21/hour=10/p00003-o00000000000000000100-00000000000000000199.parquet"
//! );
//! assert_eq!(
//!     layout::archive_manifest("orders", 3, 7),
//!     "archive/orders/_manifest/p00003/00000000000000000007.json"
//! );
//! assert_eq!(
//!     layout::view_manifest("orders_by_city", "v00ff", 12),
//!     "views/orders_by_city/v00ff/_manifest/00000000000000000012.json"
//! );
//! assert_eq!(
//!     layout::view_segment("orders_by_city", "v00ff", "job-1"),
//!     "views/orders_by_city/v00ff/segments/job-1.parquet"
//! );
//! ```

use chrono::{DateTime, Datelike, Timelike, Utc};

use crate::time::EventTime;

/// `YYYY-MM-DD` and `HH` of an event time, UTC.
pub fn date_hour(t: EventTime) -> (String, String) {
    let dt = DateTime::<Utc>::from_timestamp_millis(t.millis()).unwrap_or_default();
    (
        format!("{:04}-{:02}-{:02}", dt.year(), dt.month(), dt.day()),
        format!("{:02}", dt.hour()),
    )
}

/// Start of the UTC hour containing `t`.
pub fn hour_start(t: EventTime) -> EventTime {
    EventTime(crate::window::align_down(t.millis(), 3_600_000))
}

/// Directory of one event hour of the archive.
pub fn archive_hour_dir(topic: &str, hour: EventTime) -> String {
    let (date, hour) = date_hour(hour);
    format!("archive/{topic}/date={date}/hour={hour}")
}

/// An archive file: the events of `partition` with offsets in `[first, last]` whose event time
/// falls in the hour of `hour`. Deterministic, so a replay of the same range overwrites.
pub fn archive_file(topic: &str, hour: EventTime, partition: i32, first: i64, last: i64) -> String {
    format!(
        "{}/p{partition:05}-o{first:020}-{last:020}.parquet",
        archive_hour_dir(topic, hour)
    )
}

/// Prefix of every archive file of a topic.
pub fn archive_root(topic: &str) -> String {
    format!("archive/{topic}")
}

/// Directory holding the manifests of one partition of the archive.
pub fn archive_manifest_dir(topic: &str, partition: i32) -> String {
    format!("archive/{topic}/_manifest/p{partition:05}")
}

/// The manifest with sequence number `seq` of one archive partition.
pub fn archive_manifest(topic: &str, partition: i32, seq: u64) -> String {
    manifest_file(&archive_manifest_dir(topic, partition), seq)
}

/// Directory of the sealed file lists of one archive partition.
pub fn archive_list_dir(topic: &str, partition: i32) -> String {
    format!("archive/{topic}/_lists/p{partition:05}")
}

/// A sealed list of archived files of one partition, those with offsets in `[first, last]`:
/// written once, named by the partition manifests that follow.
pub fn archive_file_list(topic: &str, partition: i32, first: i64, last: i64) -> String {
    format!(
        "{}/o{first:020}-{last:020}.json",
        archive_list_dir(topic, partition)
    )
}

/// Directory of the roll intents of one archive partition.
pub fn archive_intent_dir(topic: &str, partition: i32) -> String {
    format!("archive/{topic}/_pending/p{partition:05}")
}

/// The intent of one roll: written before its files, deleted after its manifest. An intent left
/// behind by a crash names files that may be garbage.
pub fn archive_intent(topic: &str, partition: i32, first: i64, last: i64) -> String {
    format!(
        "{}/o{first:020}-{last:020}.json",
        archive_intent_dir(topic, partition)
    )
}

/// Directory of the manifests of one view version.
pub fn view_manifest_dir(view: &str, version: &str) -> String {
    format!("views/{view}/{version}/_manifest")
}

/// The manifest with sequence number `seq` of one view version.
pub fn view_manifest(view: &str, version: &str, seq: u64) -> String {
    manifest_file(&view_manifest_dir(view, version), seq)
}

/// An immutable result segment of one view version, written by one job.
pub fn view_segment(view: &str, version: &str, job: &str) -> String {
    format!("views/{view}/{version}/segments/{job}.parquet")
}

/// Directory of the speed layer's checkpoints of one partition, for one consumer group.
pub fn checkpoint_dir(group: &str, topic: &str, partition: i32) -> String {
    format!("checkpoints/speed/{group}/{topic}/p{partition:05}")
}

/// Manifest chain of one partition's checkpoints.
pub fn checkpoint_manifest_dir(group: &str, topic: &str, partition: i32) -> String {
    format!("{}/_manifest", checkpoint_dir(group, topic, partition))
}

/// An immutable checkpoint object. The unique suffix keeps a fenced writer's object apart.
pub fn checkpoint_object(
    group: &str,
    topic: &str,
    partition: i32,
    seq: u64,
    unique: &str,
) -> String {
    format!(
        "{}/data/{seq:020}-{unique}.ckpt",
        checkpoint_dir(group, topic, partition)
    )
}

/// Directory of job records.
pub fn job_dir() -> String {
    "jobs".to_owned()
}

/// The record of one job.
pub fn job_record(id: &str) -> String {
    format!("jobs/{id}.json")
}

/// Directory of the heartbeats of one consumer group's speed workers.
pub fn member_dir(group: &str) -> String {
    format!("members/{group}/live")
}

/// The heartbeat of one speed worker.
pub fn member(group: &str, id: &str) -> String {
    format!("{}/{id}.json", member_dir(group))
}

/// Chain of ownership epochs of one consumer group: each assignment a worker receives takes
/// the next one.
pub fn member_epoch_dir(group: &str) -> String {
    format!("members/{group}/epochs")
}

/// Chain of the job scheduler's lease terms.
pub fn scheduler_lease_dir() -> String {
    "leases/scheduler".to_owned()
}

/// The manifest with sequence number `seq` of the chain in `dir`.
pub fn manifest_file(dir: &str, seq: u64) -> String {
    format!("{dir}/{seq:020}.json")
}

/// Parses the sequence number out of a manifest file name such as `…/00000000000000000007.json`.
pub fn manifest_seq(path: &str) -> Option<u64> {
    let name = path.rsplit('/').next()?;
    name.strip_suffix(".json")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_sequence_round_trips() {
        assert_eq!(manifest_seq(&archive_manifest("t", 0, 42)), Some(42));
        assert_eq!(manifest_seq("views/x/v1/_manifest/garbage.json"), None);
    }

    #[test]
    fn hours_are_utc_and_floor() {
        let t = EventTime::parse("2026-11-21T23:59:59.999Z").unwrap();
        assert_eq!(
            hour_start(t),
            EventTime::parse("2026-11-21T23:00:00Z").unwrap()
        );
        assert_eq!(date_hour(t), ("2026-11-21".into(), "23".into()));
    }
}
