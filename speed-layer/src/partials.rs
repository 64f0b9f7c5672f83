//! A worker's partial state of one view, per owned partition, as an Arrow IPC stream: what a
//! serving instance fetches from every speed worker and merges.
//!
//! ```text
//!  SpeedLayer::owned_partials(view, range) ── pin per partition (pointer copies under the lock)
//!      ▼ no lock held
//!  OwnedPartials { owned: [(partition, epoch)], partials: [(partition, window, group, accs)] }
//!      │ encode: one RecordBatch
//!      │   partition Int32 | start Int64 | end Int64 | group Binary | accs List<Binary>
//!      │   schema metadata `tandem.owned`: every owned partition with its epoch, including
//!      │   partitions with no rows in the range
//!      ▼
//!  HTTP body (application/vnd.apache.arrow.stream) ──► decode ──► merge_states (serving)
//! ```
//!
//! Group keys are postcard-encoded [`GroupKey`]s and aggregates their checkpoint bytes
//! ([`PartialAggregate::to_bytes`]): the reader merges sketches losslessly, as it merges the
//! partitions of one worker.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, BinaryArray, BinaryBuilder, Int32Array, Int64Array, ListArray, ListBuilder, RecordBatch,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use tandem_shared::coverage::StartRange;
use tandem_shared::row::GroupKey;
use tandem_shared::time::EventTime;
use tandem_shared::window::Window;
use tandem_store::members::Owned;

use crate::SpeedLayer;
use crate::aggregate::PartialAggregate;
use crate::state::Partial;

/// Media type of the encoded partials.
pub const MEDIA_TYPE: &str = "application/vnd.apache.arrow.stream";

const OWNED_KEY: &str = "tandem.owned";

/// Errors encoding or decoding partials: a bug, or a reply that is not ours.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Arrow IPC: {0}")]
    Arrow(#[from] ArrowError),
    #[error("partials: {0}")]
    Format(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The partial state of one view's windows on one worker, per owned partition.
#[derive(Debug, Clone, Default)]
pub struct OwnedPartials {
    /// Every partition the worker owns, with its ownership epoch.
    pub owned: Vec<Owned>,
    /// Window and group partials, each with the partition it came from.
    pub partials: Vec<(i32, Partial)>,
}

impl SpeedLayer {
    /// The partial state of `view`'s windows starting in `range`, per owned partition; `None`
    /// for an unknown view.
    pub fn owned_partials(&self, view: &str, range: StartRange) -> Option<OwnedPartials> {
        let pinned = self.pin_owned(view, range)?;
        let mut out = OwnedPartials::default();
        for (owned, pinned) in pinned {
            let partition = owned.partition;
            out.owned.push(owned);
            out.partials
                .extend(pinned.partials().into_iter().map(|p| (partition, p)));
        }
        Some(out)
    }
}

fn schema(owned: &[Owned]) -> Result<Schema> {
    let owned = serde_json::to_string(owned).map_err(|e| Error::Format(e.to_string()))?;
    Ok(Schema::new_with_metadata(
        vec![
            Field::new("partition", DataType::Int32, false),
            Field::new("start", DataType::Int64, false),
            Field::new("end", DataType::Int64, false),
            Field::new("group", DataType::Binary, false),
            Field::new(
                "accs",
                DataType::List(Arc::new(Field::new_list_field(DataType::Binary, true))),
                false,
            ),
        ],
        HashMap::from([(OWNED_KEY.to_owned(), owned)]),
    ))
}

/// Encodes partials as one Arrow IPC stream.
pub fn encode(partials: &OwnedPartials) -> Result<Vec<u8>> {
    let schema = Arc::new(schema(&partials.owned)?);
    let rows = &partials.partials;
    let mut groups = BinaryBuilder::new();
    let mut accs = ListBuilder::new(BinaryBuilder::new())
        .with_field(Arc::new(Field::new_list_field(DataType::Binary, true)));
    for (_, p) in rows {
        let key = postcard::to_allocvec(&p.group).map_err(|e| Error::Format(e.to_string()))?;
        groups.append_value(key);
        for acc in &p.accs {
            accs.values().append_value(acc.to_bytes());
        }
        accs.append(true);
    }
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(Int32Array::from_iter_values(rows.iter().map(|(p, _)| *p))),
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|(_, p)| p.window.start.millis()),
            )),
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|(_, p)| p.window.end.millis()),
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
    let owned = reader
        .schema()
        .metadata()
        .get(OWNED_KEY)
        .ok_or_else(|| Error::Format(format!("schema metadata `{OWNED_KEY}` missing")))?
        .clone();
    let owned: Vec<Owned> =
        serde_json::from_str(&owned).map_err(|e| Error::Format(e.to_string()))?;
    let mut partials = Vec::new();
    for batch in reader {
        let batch = batch?;
        let partition = column::<Int32Array>(&batch, "partition")?;
        let start = column::<Int64Array>(&batch, "start")?;
        let end = column::<Int64Array>(&batch, "end")?;
        let group = column::<BinaryArray>(&batch, "group")?;
        let accs = column::<ListArray>(&batch, "accs")?;
        for row in 0..batch.num_rows() {
            let key: GroupKey = postcard::from_bytes(group.value(row))
                .map_err(|e| Error::Format(format!("group key: {e}")))?;
            let values = accs.value(row);
            let values = values
                .as_any()
                .downcast_ref::<BinaryArray>()
                .ok_or_else(|| Error::Format("aggregates are not binary".to_owned()))?;
            let accs = (0..values.len())
                .map(|i| PartialAggregate::from_bytes(values.value(i)))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Error::Format(format!("aggregate state: {e}")))?;
            let window = Window {
                start: EventTime(start.value(row)),
                end: EventTime(end.value(row)),
            };
            partials.push((
                partition.value(row),
                Partial {
                    window,
                    group: key,
                    accs,
                },
            ));
        }
    }
    Ok(OwnedPartials { owned, partials })
}

#[cfg(test)]
mod tests {
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
            speed.apply(partition, Some(&batch), None, 49, None);
        }
        let all = StartRange::new(EventTime::MIN, EventTime::MAX);
        let local = speed.query("v", all).unwrap();
        assert!(!local.is_empty());

        let sent = speed.owned_partials("v", all).unwrap();
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
        let partials = got.partials.into_iter().map(|(_, p)| p).collect();
        assert_eq!(merge_partials(partials, false), local);
        assert!(speed.owned_partials("nope", all).is_none());
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
                    .owned_partials("v", StartRange::new(EventTime(0), EventTime(1)))
                    .unwrap(),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(got.owned.len(), 1);
        assert!(got.partials.is_empty());
        assert!(decode(b"not arrow").is_err());
    }
}
