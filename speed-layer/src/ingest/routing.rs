//! One micro-batch's messages routed: decoded (waiting for the registry on an unseen writer
//! schema), admitted by event time, dead-lettered when malformed or from the future, applied to
//! every view, and late events sent to the late topic; then event-time progress moves.
//!
//! ```text
//!  messages ─► Schemas::read ─► Admission ─┬─ future ─► dead-letter topic
//!                                          └─► MicroBatch ─► every view ─┬─ rejected ─► dead letters
//!                                                                        └─ late ─► late topic
//!  a joined stream's second topic ─► its decoder ─► SecondBatch ─► the views that join it
//!  max event time per partition (of every topic) ─► PartitionProgress ─► set_progress
//!      ─► advance_joins (a `left` join's rows that never matched)
//! ```

use std::time::Instant;

use rdkafka::message::{BorrowedMessage, Message};
use tandem_shared::event::{Admission, EventDecoder, Read, Slot};
use tandem_store::registry::Registry;
use tokio_util::sync::CancellationToken;

use super::Watermarking;
use crate::SpeedLayer;
use crate::dead_letter::{Origin, SideTopics};
use crate::micro_batch::{MicroBatch, SecondBatch};
use crate::watermark::PartitionProgress;

/// A partition of one of the consumer's topics: the topic's index (0: the events', then a
/// joined stream's second topics) and the partition's number.
pub(crate) type Source = (usize, i32);

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
        self.read_with(self.decoder, payload, spare)
    }

    /// [`Schemas::read`] with another topic's decoder.
    fn read_with<'p>(
        &self,
        decoder: &EventDecoder,
        payload: Option<&'p [u8]>,
        spare: Vec<Slot<'p>>,
    ) -> Option<Read<'p>> {
        match decoder.read_into(payload, spare) {
            Read::Unresolved(_) => self.runtime.block_on(tandem_store::registry::read_resolved(
                decoder,
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
    progress: &mut PartitionProgress<Source>,
    time: Watermarking,
    topic: &str,
    messages: &[BorrowedMessage<'_>],
) {
    let started = Instant::now();
    // Messages of a joined stream's second topics, by topic (read after the events').
    let joined = !speed.stream_topics().is_empty();
    let mut others: Vec<Vec<usize>> = vec![Vec::new(); speed.stream_topics().len()];
    // A partition polled before its revocation is skipped: the new owner re-reads it from the
    // checkpoint's offset. (Rebalances run inside `poll`, so assignment cannot change while a
    // micro-batch is processed; it is looked up once per partition.)
    let mut micro = MicroBatch::new(schemas.decoder, messages.len());
    let mut spare = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        if joined && m.topic() != topic {
            if let Some(at) = speed.stream_topics().iter().position(|t| t == m.topic()) {
                others[at].push(i);
            }
            continue;
        }
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
                if !admitted(
                    side,
                    time,
                    payload,
                    origin(topic, m),
                    event.time,
                    record_time,
                ) {
                    continue;
                }
                micro.push(at, &event, m.offset(), i);
                spare = event.values;
            }
            other => sideline(side, payload, origin(topic, m), other),
        }
    }
    let mut seconds = Vec::with_capacity(others.len());
    for (at, rows) in others.iter().enumerate() {
        if rows.is_empty() {
            continue;
        }
        let Some(second) = read_second(speed, schemas, side, time, at + 1, messages, rows) else {
            return;
        };
        for part in &second.0.parts {
            micro.touch(part.partition);
        }
        seconds.push(second);
    }
    let decoded = micro.rows.len() as u64;
    // Partitions that turned idle since the last micro-batch may have moved progress.
    publish_progress(speed, progress, time);
    let watermark = progress.combined(time.now, time.idle_timeout);
    let batch = micro.finish();
    let (second_batches, second_rows): (Vec<SecondBatch>, Vec<Vec<usize>>) =
        seconds.into_iter().unzip();
    let outcomes = crate::micro_batch::apply(
        speed,
        batch.as_ref(),
        &micro.parts,
        &second_batches,
        watermark,
    );
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
            if !outcome.late_second.is_empty()
                && let Some(stream) = &program.view.join_stream
                && let Some(at) = second_batches.iter().position(|s| {
                    speed.stream_topics().get(s.topic - 1) == Some(&stream.side.topic)
                })
            {
                for row in outcome.late_second {
                    let m = &messages[second_rows[at][row]];
                    side.late(
                        m.payload().unwrap_or_default(),
                        origin(m.topic(), m),
                        view,
                        &format!(
                            "the joined stream's buffers moved past its event time (progress {}, allowed lateness {})",
                            watermark.map_or("none".to_owned(), |w| w.to_string()),
                            program.view.allowed_lateness
                        ),
                    );
                }
            }
        }
        if let Some(max_time) = part.max_event_time {
            progress.observe((0, part.partition), max_time, time.now);
        }
    }
    for second in &second_batches {
        for q in &second.parts {
            if let Some(max_time) = q.max_event_time {
                progress.observe((second.topic, q.partition), max_time, time.now);
            }
        }
    }
    metrics::counter!("tandem_speed_events_total").increment(decoded);
    metrics::histogram!("tandem_speed_batch_seconds").record(started.elapsed().as_secs_f64());
    publish_progress(speed, progress, time);
    speed.publish_size();
}

/// Records event-time progress as `progress` has it now (after a micro-batch, or while the
/// topics are quiet and partitions turn idle): joined streams' buffers advance first, their
/// `left` rows counted against the progress recorded before (see [`crate::joined`]).
pub(super) fn publish_progress(
    speed: &SpeedLayer,
    progress: &PartitionProgress<Source>,
    time: Watermarking,
) {
    let Some(combined) = progress.combined(time.now, time.idle_timeout) else {
        return;
    };
    if speed.progress() == Some(combined) {
        return;
    }
    speed.advance_joins(combined, speed.progress());
    speed.set_progress(combined);
    metrics::gauge!("tandem_speed_event_time_progress_ms").set(combined.millis() as f64);
    for program in speed.programs() {
        let wm = program.view.watermark(combined);
        metrics::gauge!("tandem_speed_watermark_ms", "view" => program.view.name.clone())
            .set(wm.millis() as f64);
    }
}

/// Whether an event is taken by its event time: one from the future is dead-lettered, one
/// ahead of the clock (but not of its record) counted.
fn admitted(
    side: &SideTopics,
    time: Watermarking,
    payload: Option<&[u8]>,
    origin: Origin<'_>,
    event_time: tandem_shared::time::EventTime,
    record_time: Option<i64>,
) -> bool {
    match Admission::of(event_time, record_time, time.now, time.max_future) {
        Admission::Future { from, .. } => {
            side.dead_letter(
                payload,
                origin,
                "future",
                &format!(
                    "event time {event_time} is more than {} ahead of the message's Kafka timestamp ({from})",
                    time.max_future,
                ),
            );
            false
        }
        Admission::AheadOfClock => {
            metrics::counter!("tandem_speed_future_events_total").increment(1);
            true
        }
        Admission::Admitted => true,
    }
}

/// A message read as no event: a skip is counted, the rest dead-lettered with the reason.
fn sideline(side: &SideTopics, payload: Option<&[u8]>, origin: Origin<'_>, read: Read<'_>) {
    match read {
        Read::Event(_) => {}
        Read::Skip(skip) => {
            metrics::counter!("tandem_speed_skipped_total", "reason" => skip.kind()).increment(1);
        }
        Read::Malformed(err) => side.dead_letter(payload, origin, err.kind(), &err.to_string()),
        Read::Unresolved(id) => side.dead_letter(
            payload,
            origin,
            "unknown_schema",
            &format!("schema id {id} is still unknown after asking the registry"),
        ),
    }
}

/// Decodes the messages `rows` of the consumer's topic `topic` (a joined stream's second
/// topic) into one batch; malformed ones and ones from the future are dead-lettered. Per
/// batch row, the message it came from. `None`: cancelled while waiting for the registry.
fn read_second(
    speed: &SpeedLayer,
    schemas: &Schemas<'_>,
    side: &SideTopics,
    time: Watermarking,
    topic: usize,
    messages: &[BorrowedMessage<'_>],
    rows: &[usize],
) -> Option<(SecondBatch, Vec<usize>)> {
    let stream = speed.stream_side(topic)?;
    let decoder = &stream.decoder;
    let mut micro = MicroBatch::new(decoder, rows.len());
    let mut spare = Vec::new();
    for &i in rows {
        let m = &messages[i];
        let partition = m.partition();
        let Some(at) = micro.polled(partition, m.offset(), || speed.assigned(partition)) else {
            continue;
        };
        let payload = m.payload();
        let name = m.topic();
        match schemas.read_with(decoder, payload, std::mem::take(&mut spare))? {
            Read::Event(event) => {
                let record_time = m.timestamp().to_millis();
                if !admitted(
                    side,
                    time,
                    payload,
                    origin(name, m),
                    event.time,
                    record_time,
                ) {
                    continue;
                }
                micro.push(at, &event, m.offset(), i);
                spare = event.values;
            }
            other => sideline(side, payload, origin(name, m), other),
        }
    }
    let batch = micro.finish();
    metrics::counter!("tandem_speed_joined_events_total", "topic" => stream.stream.side.topic.clone())
        .increment(micro.rows.len() as u64);
    let messages = micro.rows.iter().map(|(message, _)| *message).collect();
    Some((
        SecondBatch {
            topic,
            batch,
            parts: micro.parts,
        },
        messages,
    ))
}
