//! One micro-batch's messages routed: decoded (waiting for the registry on an unseen writer
//! schema), admitted by event time, dead-lettered when malformed or from the future, applied to
//! every view, and late events sent to the late topic; then event-time progress moves.
//!
//! ```text
//!  messages ─► Schemas::read ─► Admission ─┬─ future ─► dead-letter topic
//!                                          └─► MicroBatch ─► every view ─┬─ rejected ─► dead letters
//!                                                                        └─ late ─► late topic
//!  max event time per partition ─► PartitionProgress ─► SpeedLayer::set_progress
//! ```

use std::time::Instant;

use rdkafka::message::{BorrowedMessage, Message};
use tandem_shared::event::{Admission, EventDecoder, Read, Slot};
use tandem_store::registry::Registry;
use tokio_util::sync::CancellationToken;

use super::Watermarking;
use crate::SpeedLayer;
use crate::dead_letter::{Origin, SideTopics};
use crate::micro_batch::MicroBatch;
use crate::watermark::PartitionProgress;

fn origin<'a>(topic: &'a str, m: &'a BorrowedMessage<'_>) -> Origin<'a> {
    Origin {
        topic,
        partition: m.partition(),
        offset: m.offset(),
        key: m.key(),
    }
}

/// The decoder and where it learns writer schemas.
pub(super) struct Schemas<'a> {
    pub(super) decoder: &'a EventDecoder,
    pub(super) registry: Option<&'a Registry>,
    pub(super) runtime: &'a tokio::runtime::Handle,
    pub(super) cancel: &'a CancellationToken,
}

impl Schemas<'_> {
    /// Reads a message; a payload naming an unseen writer schema waits for the registry.
    /// `None`: cancelled while waiting.
    /// `spare`: slots of an earlier event to read into.
    fn read<'p>(&self, payload: Option<&'p [u8]>, spare: Vec<Slot<'p>>) -> Option<Read<'p>> {
        match self.decoder.read_into(payload, spare) {
            Read::Unresolved(_) => self.runtime.block_on(tandem_store::registry::read_resolved(
                self.decoder,
                self.registry,
                payload,
                // Events are timed by their own field, never by their record.
                None,
                self.cancel,
            )),
            read => Some(read),
        }
    }
}

/// Decodes one micro-batch, sidelines malformed and late events, and applies the rest to every
/// view (one record batch for all partitions, see [`crate::micro_batch`]). Applies nothing when
/// cancelled while waiting for the schema registry: the batch is read again after the restart.
pub(super) fn process(
    speed: &SpeedLayer,
    schemas: &Schemas<'_>,
    side: &SideTopics,
    progress: &mut PartitionProgress,
    time: Watermarking,
    topic: &str,
    messages: &[BorrowedMessage<'_>],
) {
    let started = Instant::now();
    // A partition polled before its revocation is skipped: the new owner re-reads it from the
    // checkpoint's offset. (Rebalances run inside `poll`, so assignment cannot change while a
    // micro-batch is processed; it is looked up once per partition.)
    let mut micro = MicroBatch::new(schemas.decoder, messages.len());
    let mut spare = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let partition = m.partition();
        let Some(at) = micro.polled(partition, m.offset(), || speed.assigned(partition)) else {
            continue;
        };
        let payload = m.payload();
        let record_time = m.timestamp().to_millis();
        let Some(read) = schemas.read(payload, std::mem::take(&mut spare)) else {
            return;
        };
        match read {
            Read::Event(event) => {
                match Admission::of(event.time, record_time, time.now, time.max_future) {
                    Admission::Future { from, .. } => {
                        side.dead_letter(
                            payload,
                            origin(topic, m),
                            "future",
                            &format!(
                                "event time {} is more than {} ahead of the message's Kafka timestamp ({from})",
                                event.time, time.max_future,
                            ),
                        );
                        continue;
                    }
                    Admission::AheadOfClock => {
                        metrics::counter!("tandem_speed_future_events_total").increment(1)
                    }
                    Admission::Admitted => {}
                }
                micro.push(at, &event, m.offset(), i);
                spare = event.values;
            }
            Read::Skip(skip) => {
                metrics::counter!("tandem_speed_skipped_total", "reason" => skip.kind())
                    .increment(1);
            }
            Read::Malformed(err) => {
                side.dead_letter(payload, origin(topic, m), err.kind(), &err.to_string())
            }
            Read::Unresolved(id) => side.dead_letter(
                payload,
                origin(topic, m),
                "unknown_schema",
                &format!("schema id {id} is still unknown after asking the registry"),
            ),
        }
    }
    let decoded = micro.rows.len() as u64;
    let watermark = progress.combined(time.now, time.idle_timeout);
    let batch = micro.finish();
    let outcomes = crate::micro_batch::apply(speed, batch.as_ref(), &micro.parts, watermark);
    let rows = &micro.rows;
    for (part, outcomes) in micro.parts.iter().zip(outcomes) {
        for (program, outcome) in speed.programs().iter().zip(outcomes) {
            let view = &program.view.name;
            for (row, reason) in outcome.rejected {
                let m = &messages[rows[row].0];
                side.dead_letter(
                    m.payload(),
                    origin(topic, m),
                    "expression",
                    &format!("view `{view}`: {reason}"),
                );
            }
            for row in outcome.late {
                let (message, event_time) = rows[row];
                let m = &messages[message];
                let reason = match watermark {
                    Some(w) => format!(
                        "every window of event time {event_time} has closed (progress {w}, allowed lateness {}) or is published by the batch layer",
                        program.view.allowed_lateness
                    ),
                    None => "every window of the event is published by the batch layer".to_owned(),
                };
                side.late(
                    m.payload().unwrap_or_default(),
                    origin(topic, m),
                    view,
                    &reason,
                );
            }
        }
        if let Some(max_time) = part.max_event_time {
            progress.observe(part.partition, max_time, time.now);
        }
    }
    metrics::counter!("tandem_speed_events_total").increment(decoded);
    metrics::histogram!("tandem_speed_batch_seconds").record(started.elapsed().as_secs_f64());
    if let Some(combined) = progress.combined(time.now, time.idle_timeout) {
        speed.set_progress(combined);
        metrics::gauge!("tandem_speed_event_time_progress_ms").set(combined.millis() as f64);
        for program in speed.programs() {
            let wm = program.view.watermark(combined);
            metrics::gauge!("tandem_speed_watermark_ms", "view" => program.view.name.clone())
                .set(wm.millis() as f64);
        }
    }
    speed.publish_size();
}
