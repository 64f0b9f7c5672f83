//! Feeding payloads to the speed layer without Kafka: the consume thread's work after
//! librdkafka hands over a micro-batch (decode into Arrow, evaluate every view's filter and
//! arguments, assign windows, update state), for benchmarks and instruction counts.
//!
//! ```text
//!  messages (partition, offset, payload) of one poll ─► EventDecoder::read_into ─► MicroBatch
//!      ─► micro_batch::apply (each view evaluated once, state per partition)
//! ```
//!
//! The consume loop (`ingest`) does the same, plus what needs Kafka: offsets from messages,
//! side topics for malformed and late events, backpressure.

use tandem_shared::event::{EventDecoder, Read};
use tandem_shared::time::EventTime;

use crate::SpeedLayer;
use crate::micro_batch::MicroBatch;

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

/// One polled message.
#[derive(Debug, Clone, Copy)]
pub struct Polled<'a> {
    pub partition: i32,
    pub offset: i64,
    pub payload: &'a [u8],
}

/// Applies `messages`, one poll's worth of any partitions, as one micro-batch at event-time
/// progress `watermark`. Takes each partition (with empty state) this layer does not own yet.
pub fn replay(
    speed: &SpeedLayer,
    decoder: &EventDecoder,
    messages: &[Polled<'_>],
    watermark: Option<EventTime>,
) -> Replayed {
    let mut out = Replayed::default();
    let mut micro = MicroBatch::new(decoder, messages.len());
    let mut spare = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        out.bytes += m.payload.len() as u64;
        let Some(at) = micro.polled(m.partition, m.offset, || {
            if !speed.assigned(m.partition) {
                speed.assign(m.partition, None, 0);
            }
            true
        }) else {
            continue;
        };
        match decoder.read_into(Some(m.payload), std::mem::take(&mut spare)) {
            Read::Event(event) => {
                micro.push(at, &event, m.offset, i);
                out.applied += 1;
                spare = event.values;
            }
            _ => out.malformed += 1,
        }
    }
    let batch = micro.finish();
    let outcomes = crate::micro_batch::apply(speed, batch.as_ref(), &micro.parts, &[], watermark);
    out.late = outcomes.iter().flatten().map(|o| o.late.len() as u64).sum();
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
        let messages: Vec<Polled<'_>> = payloads
            .iter()
            .enumerate()
            .map(|(i, p)| Polled {
                partition: 3,
                offset: 100 + i as i64,
                payload: p.as_bytes(),
            })
            .collect();
        let done = replay(&speed, &decoder, &messages, None);
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
