//! Feeding payloads to the speed layer without Kafka: the consume thread's work after
//! librdkafka hands over a micro-batch (decode into Arrow, evaluate every view's filter and
//! arguments, assign windows, update state), for benchmarks and instruction counts.
//!
//! ```text
//!  payloads of one partition ─► EventDecoder::read ─► EventBatchBuilder ─► SpeedLayer::apply
//! ```
//!
//! The consume loop (`ingest`) does the same per partition of a micro-batch, plus what needs
//! Kafka: offsets from messages, side topics for malformed and late events, backpressure.

use tandem_shared::event::{EventBatchBuilder, EventDecoder, Read};
use tandem_shared::time::EventTime;

use crate::SpeedLayer;

/// What [`replay`] did with one micro-batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Events decoded and applied.
    pub applied: u64,
    /// Payloads that failed to decode (the consume loop dead-letters these).
    pub malformed: u64,
    /// Applied events that found no open window in some view.
    pub late: u64,
    /// Payload bytes read.
    pub bytes: u64,
}

/// Applies `payloads`, the messages of `partition` from `first_offset` on, as one micro-batch
/// at event-time progress `watermark`. Takes the partition (with empty state) if this layer
/// does not own it yet.
pub fn replay(
    speed: &SpeedLayer,
    decoder: &EventDecoder,
    partition: i32,
    first_offset: i64,
    payloads: &[&[u8]],
    watermark: Option<EventTime>,
) -> Replayed {
    if !speed.assigned(partition) {
        speed.assign(partition, None, 0);
    }
    let mut out = Replayed::default();
    let mut builder = EventBatchBuilder::new(decoder, payloads.len());
    let mut max_time: Option<EventTime> = None;
    let mut offset = first_offset;
    let mut spare = Vec::new();
    for payload in payloads {
        out.bytes += payload.len() as u64;
        match decoder.read_into(Some(payload), std::mem::take(&mut spare)) {
            Read::Event(event) => {
                max_time = max_time.max(Some(event.time));
                builder.append(&event, partition, offset);
                out.applied += 1;
                spare = event.values;
            }
            _ => out.malformed += 1,
        }
        offset += 1;
    }
    let batch = (!builder.is_empty()).then(|| builder.finish());
    let outcomes = speed.apply(partition, batch.as_ref(), watermark, offset - 1, max_time);
    out.late = outcomes.iter().map(|o| o.late.len() as u64).sum();
    out
}

#[cfg(test)]
mod tests {
    use tandem_shared::coverage::StartRange;
    use tandem_shared::schema::FieldType;
    use tandem_shared::testing;
    use tandem_shared::value::AggregateValue;

    use super::*;

    #[test]
    fn replayed_payloads_are_counted_by_the_views() {
        let schema = testing::schema(&[("city", FieldType::String), ("amount", FieldType::Int64)]);
        let view = testing::view(
            &schema,
            "by_city",
            testing::tumbling("1m"),
            &["city"],
            None,
            &["count(*) AS n", "sum(amount) AS total"],
        );
        let speed = SpeedLayer::compile(&[view], &schema).unwrap_or_else(|e| panic!("{e}"));
        let decoder = EventDecoder::new(schema);
        let payloads: Vec<String> = (0..10)
            .map(|i| format!(r#"{{"ts":{},"city":"c{}","amount":{i}}}"#, i * 1_000, i % 2))
            .chain(["not json".to_owned()])
            .collect();
        let refs: Vec<&[u8]> = payloads.iter().map(|p| p.as_bytes()).collect();
        let done = replay(&speed, &decoder, 3, 100, &refs, None);
        assert_eq!(done.applied, 10);
        assert_eq!(done.malformed, 1);
        assert_eq!(done.late, 0);
        assert_eq!(
            done.bytes,
            payloads.iter().map(|p| p.len() as u64).sum::<u64>()
        );
        assert_eq!(speed.consumed(), 111, "the partition's next offset");
        let rows = speed
            .query("by_city", StartRange::new(EventTime::MIN, EventTime::MAX))
            .unwrap_or_default();
        let totals: Vec<(String, AggregateValue, AggregateValue)> = rows
            .iter()
            .map(|r| (r.group[0].to_string(), r.values[0], r.values[1]))
            .collect();
        assert_eq!(
            totals,
            [
                ("c0".into(), AggregateValue::Int(5), AggregateValue::Int(20)),
                ("c1".into(), AggregateValue::Int(5), AggregateValue::Int(25)),
            ]
        );
    }
}
