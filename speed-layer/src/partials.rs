//! A worker's partial state of one view over the partitions it owns, as an Arrow IPC stream:
//! what a serving instance fetches from every speed worker and merges.
//!
//! ```text
//!  SpeedLayer::owned_partials(view, range, asked partitions)
//!      │ pin the asked partitions it owns (pointer copies under the lock)
//!      ▼ no lock held: merge over those partitions (one partial per window and group)
//!  OwnedPartials { owned: [(partition, epoch)], partials: [(window, group, accs)] }
//!      │ encode: one RecordBatch  start Int64 | end Int64 | group Binary | accs List<Binary>
//!      │   schema metadata `tandem.owned`: the partitions merged in, each with its epoch
//!      │   (including partitions with no rows in the range)
//!      ▼
//!  HTTP body (application/vnd.apache.arrow.stream) ──► decode ──► merge_states (serving)
//! ```
//!
//! The worker merges its partitions before sending (a reply is as large as the view's answer,
//! not that times the partitions), so a reader takes a reply whole or not at all: it asks each
//! worker for the partitions it believes that worker owns, and a reply naming any other
//! partition or epoch is stale.
//!
//! Group keys are postcard-encoded [`GroupKey`]s and aggregates their checkpoint bytes
//! ([`PartialAggregate::to_bytes`]): the reader merges sketches losslessly, as it merges the
//! partitions of one worker.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, BinaryArray, BinaryBuilder, Int64Array, ListArray, ListBuilder, RecordBatch,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use tandem_shared::coverage::Coverage;
use tandem_shared::row::GroupKey;
use tandem_shared::time::EventTime;
use tandem_shared::window::Window;
use tandem_store::members::Owned;

use crate::aggregate::PartialAggregate;
use crate::state::Partial;

/// Media type of the encoded partials.
pub const MEDIA_TYPE: &str = "application/vnd.apache.arrow.stream";

const OWNED_KEY: &str = "tandem.owned";
const RELEASED_KEY: &str = "tandem.released";

/// Errors encoding or decoding partials: a bug, or a reply that is not ours.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Arrow IPC: {0}")]
    Arrow(#[from] ArrowError),
    #[error("partials: {0}")]
    Format(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The partial state of one view's windows on one worker, merged over some partitions it owns.
#[derive(Debug, Clone, Default)]
pub struct OwnedPartials {
    /// The partitions merged in, with their ownership epochs.
    pub owned: Vec<Owned>,
    /// One partial per window and group (session fragments of one group that overlap are one).
    pub partials: Vec<Partial>,
    /// Windows the worker has released (the batch layer covers them): absent from `partials`
    /// whatever their events were.
    pub released: Coverage,
}

fn schema(owned: &[Owned], released: &Coverage) -> Result<Schema> {
    let owned = serde_json::to_string(owned).map_err(|e| Error::Format(e.to_string()))?;
    let released = serde_json::to_string(released).map_err(|e| Error::Format(e.to_string()))?;
    Ok(Schema::new_with_metadata(
        vec![
            Field::new("start", DataType::Int64, false),
            Field::new("end", DataType::Int64, false),
            Field::new("group", DataType::Binary, false),
            Field::new(
                "accs",
                DataType::List(Arc::new(Field::new_list_field(DataType::Binary, true))),
                false,
            ),
        ],
        HashMap::from([
            (OWNED_KEY.to_owned(), owned),
            (RELEASED_KEY.to_owned(), released),
        ]),
    ))
}

/// Encodes partials as one Arrow IPC stream.
pub fn encode(partials: &OwnedPartials) -> Result<Vec<u8>> {
    let schema = Arc::new(schema(&partials.owned, &partials.released)?);
    let rows = &partials.partials;
    let mut groups = BinaryBuilder::new();
    let mut accs = ListBuilder::new(BinaryBuilder::new())
        .with_field(Arc::new(Field::new_list_field(DataType::Binary, true)));
    let mut key = Vec::new();
    for p in rows {
        key.clear();
        key = postcard::to_extend(&p.group, key).map_err(|e| Error::Format(e.to_string()))?;
        groups.append_value(&key);
        for acc in &p.accs {
            accs.values().append_value(acc.to_bytes());
        }
        accs.append(true);
    }
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|p| p.window.start.millis()),
            )),
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|p| p.window.end.millis()),
            )),
            Arc::new(groups.finish()),
            Arc::new(accs.finish()),
        ],
    )?;
    let mut out = Vec::new();
    let mut writer = StreamWriter::try_new(&mut out, &schema)?;
    writer.write(&batch)?;
    writer.finish()?;
    drop(writer);
    Ok(out)
}

fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> Result<&'a T> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| Error::Format(format!("column `{name}` missing or of the wrong type")))
}

/// Decodes what [`encode`] wrote.
pub fn decode(bytes: &[u8]) -> Result<OwnedPartials> {
    let reader = StreamReader::try_new(std::io::Cursor::new(bytes), None)?;
    let metadata = |key: &str| {
        reader
            .schema()
            .metadata()
            .get(key)
            .cloned()
            .ok_or_else(|| Error::Format(format!("schema metadata `{key}` missing")))
    };
    let owned: Vec<Owned> =
        serde_json::from_str(&metadata(OWNED_KEY)?).map_err(|e| Error::Format(e.to_string()))?;
    let released: Coverage =
        serde_json::from_str(&metadata(RELEASED_KEY)?).map_err(|e| Error::Format(e.to_string()))?;
    let mut partials = Vec::new();
    for batch in reader {
        let batch = batch?;
        let start = column::<Int64Array>(&batch, "start")?;
        let end = column::<Int64Array>(&batch, "end")?;
        let group = column::<BinaryArray>(&batch, "group")?;
        let accs = column::<ListArray>(&batch, "accs")?;
        // The aggregates of every row in one array, cut by the list offsets (no per-row slice).
        let values = accs
            .values()
            .as_any()
            .downcast_ref::<BinaryArray>()
            .ok_or_else(|| Error::Format("aggregates are not binary".to_owned()))?;
        let offsets = accs.value_offsets();
        for row in 0..batch.num_rows() {
            let key: GroupKey = postcard::from_bytes(group.value(row))
                .map_err(|e| Error::Format(format!("group key: {e}")))?;
            let (from, to) = (offsets[row] as usize, offsets[row + 1] as usize);
            let accs = (from..to)
                .map(|i| PartialAggregate::from_bytes(values.value(i)))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Error::Format(format!("aggregate state: {e}")))?;
            let window = Window {
                start: EventTime(start.value(row)),
                end: EventTime(end.value(row)),
            };
            partials.push(Partial {
                window,
                group: key,
                accs,
            });
        }
    }
    Ok(OwnedPartials {
        owned,
        partials,
        released,
    })
}

#[cfg(test)]
mod tests {
    use tandem_shared::coverage::StartRange;

    use crate::SpeedLayer;
    use tandem_shared::event::EventDecoder;
    use tandem_shared::schema::FieldType;
    use tandem_shared::testing;

    use super::*;
    use crate::state::merge_partials;

    #[test]
    fn partials_survive_the_wire_and_merge_to_the_local_answer() {
        let schema = testing::schema(&[("city", FieldType::String), ("a", FieldType::Float64)]);
        let view = testing::view(
            &schema,
            "v",
            testing::tumbling("1m"),
            &["city"],
            None,
            &[
                "count(*) AS n",
                "sum(a) AS a",
                "count(DISTINCT a) AS d",
                "percentile(a, 0.5) AS p50",
            ],
        );
        let speed = SpeedLayer::compile(&[view], &schema).unwrap();
        let decoder = EventDecoder::new(schema);
        for (partition, epoch) in [(0, 4), (3, 9)] {
            speed.assign(partition, None, epoch);
            let rows: Vec<String> = (0..50)
                .map(|i| {
                    let city = ["X", "Y", "Z"][i % 3];
                    format!(
                        r#"{{"ts":{},"city":"{city}","a":{}}}"#,
                        i * 7_000,
                        i + partition as usize
                    )
                })
                .collect();
            let rows: Vec<&str> = rows.iter().map(String::as_str).collect();
            let batch = testing::batch(&decoder, partition, 0, &rows);
            crate::micro_batch::apply_one(&speed, partition, Some(&batch), None, 49, None);
        }
        let all = StartRange::new(EventTime::MIN, EventTime::MAX);
        let local = speed.query("v", all).unwrap();
        assert!(!local.is_empty());

        let sent = speed.owned_partials("v", all, None).unwrap();
        let got = decode(&encode(&sent).unwrap()).unwrap();
        assert_eq!(
            got.owned,
            [
                Owned {
                    partition: 0,
                    epoch: 4
                },
                Owned {
                    partition: 3,
                    epoch: 9
                }
            ]
        );
        assert_eq!(got.partials.len(), sent.partials.len());
        assert_eq!(merge_partials(got.partials, false), local);
        assert!(speed.owned_partials("nope", all, None).is_none());
        // Asked for one partition (and one it does not own): only that one is merged in.
        let one = speed.owned_partials("v", all, Some(&[3, 7])).unwrap();
        assert_eq!(
            one.owned.iter().map(|o| o.partition).collect::<Vec<_>>(),
            [3]
        );
        let n: i64 = merge_partials(one.partials, false)
            .iter()
            .map(|r| r.values[0].as_f64().unwrap() as i64)
            .sum();
        assert_eq!(n, 50);
    }

    #[test]
    fn a_partition_without_rows_in_range_is_still_named_as_owned() {
        let schema = testing::schema(&[("city", FieldType::String)]);
        let view = testing::view(
            &schema,
            "v",
            testing::tumbling("1m"),
            &["city"],
            None,
            &["count(*) AS n"],
        );
        let speed = SpeedLayer::compile(&[view], &schema).unwrap();
        speed.assign(2, None, 1);
        let got = decode(
            &encode(
                &speed
                    .owned_partials("v", StartRange::new(EventTime(0), EventTime(1)), None)
                    .unwrap(),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(got.owned.len(), 1);
        assert!(got.partials.is_empty());
        assert!(decode(b"not arrow").is_err());
        // What the worker released travels with its partials.
        let covered = Coverage::from_ranges([StartRange::new(EventTime(0), EventTime(60_000))]);
        speed.release("v", &covered);
        let all = StartRange::new(EventTime::MIN, EventTime::MAX);
        let got = decode(&encode(&speed.owned_partials("v", all, None).unwrap()).unwrap()).unwrap();
        assert_eq!(got.released, covered);
    }
}
