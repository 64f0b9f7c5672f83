//! Outputs: a view's rows pushed to a Kafka topic as they change or close, and alerts.
//!
//! ```text
//!  every poll: seam::answer(windows from now - lookback) ── rows with source, closed
//!      │ `when` (rule, DataFusion over the rows at once)
//!      ▼
//!  Tracker::step (pure): update / close / correction / alert, with a sequence number per key
//!      │ records: the row as GET /v1/views/{name} renders it + view, version, kind, seq
//!      ▼
//!  bounded channel ──► sink task: idempotent Kafka producer, key = view/window_start/group
//! ```
//!
//! Delivery is at least once: a record may be sent again after a crash (with a higher `seq`),
//! never lost while the process runs; the key is deterministic, so a compacted topic keeps each
//! row's latest value. A speed row later published differently by the batch layer is followed
//! by a `correction` record (`source: "batch"`), within `lookback` of its window's start.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use tandem_batch_layer::ViewCatalog;
use tandem_shared::clock::Clock;
use tandem_shared::coverage::StartRange;
use tandem_shared::row::Source;
use tandem_shared::time::{EventTime, Span};
use tandem_shared::view::ViewDefinition;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::api::response::ViewRows;
use crate::fleet::SpeedSide;
use crate::seam::{self, Answer, ViewQuery};

pub mod rule;
pub mod sink;
pub mod tracker;

pub use rule::Rule;
pub use sink::KafkaSink;
use tracker::{Seen, Tracker};

/// When an output sends a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Emit {
    /// Once its window closes (the watermark passed its end) or the batch layer publishes it.
    OnClose,
    /// Every change of its values.
    OnUpdate,
}

/// One `[[outputs]]` entry, compiled.
#[derive(Debug, Clone)]
pub struct Output {
    pub view: ViewDefinition,
    pub topic: String,
    pub emit: Emit,
    pub rule: Option<Rule>,
}

/// One record for the output topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub topic: String,
    pub key: String,
    pub payload: Value,
}

/// How outputs poll.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Between two reads of the views.
    pub poll: Duration,
    /// Windows starting this long before now are read (and corrected when batch differs).
    pub lookback: Span,
}

/// Records per view and kind, for the metric and the tests.
fn count(view: &str, kind: tracker::Kind) {
    metrics::counter!("tandem_output_records_total", "view" => view.to_owned(), "kind" => kind.as_str())
        .increment(1);
}

/// The records one poll's `answer` calls for (pure but for the rule's evaluation).
pub fn records(
    output: &Output,
    tracker: &mut Tracker,
    answer: Answer,
    watermark: Option<EventTime>,
    now_us: u64,
) -> Vec<Record> {
    let holds = match &output.rule {
        None => vec![true; answer.rows.len()],
        Some(rule) => match rule.holds(&answer.rows) {
            Ok(holds) => holds,
            Err(err) => {
                tracing::warn!(%err, "an output rule failed; its rows wait for the next poll");
                return Vec::new();
            }
        },
    };
    let seen = answer.rows.iter().zip(&holds).map(|(r, rule)| Seen {
        start: r.row.window.start,
        group: &r.row.group,
        source: r.source,
        closed: r.source == Source::Batch || watermark.is_some_and(|w| w >= r.row.window.end),
        values: &r.row.values,
        rule: *rule,
    });
    let decisions = tracker.step(seen, now_us);
    if decisions.is_empty() {
        return Vec::new();
    }
    // Render only the rows a record is for, as the API renders them.
    let mut chosen = Vec::with_capacity(decisions.len());
    let mut wanted = decisions.iter().peekable();
    for r in answer.rows {
        if wanted
            .peek()
            .is_some_and(|d| d.key.0 == r.row.window.start && d.key.1 == r.row.group)
        {
            wanted.next();
            chosen.push(r);
        }
    }
    let version = answer.version.clone();
    let rendered = ViewRows::new(
        &output.view,
        Answer {
            rows: chosen,
            ..answer
        },
        None,
        watermark,
    );
    let rows = serde_json::to_value(&rendered.rows).unwrap_or(Value::Null);
    let rows = rows.as_array().cloned().unwrap_or_default();
    decisions
        .iter()
        .zip(rows)
        .map(|(d, mut row)| {
            count(&output.view.name, d.kind);
            let key = format!("{}/{}/{}", output.view.name, d.key.0.millis(), row["group"]);
            if let Some(obj) = row.as_object_mut() {
                obj.insert("view".into(), json!(output.view.name));
                obj.insert("version".into(), json!(version.0));
                obj.insert("kind".into(), json!(d.kind.as_str()));
                obj.insert("seq".into(), json!(d.seq));
            }
            Record {
                topic: output.topic.clone(),
                key,
                payload: row,
            }
        })
        .collect()
}

/// Reads each output's view every `timing.poll` and hands its records to `records` (bounded:
/// a slow producer slows the polls rather than growing memory) until `cancel`.
pub async fn run(
    outputs: Vec<Output>,
    catalog: Arc<ViewCatalog>,
    speed: SpeedSide,
    clock: Arc<dyn Clock>,
    timing: Timing,
    records: mpsc::Sender<Record>,
    cancel: CancellationToken,
) {
    let mut trackers: Vec<Tracker> = outputs
        .iter()
        .map(|o| Tracker::new(o.emit, o.rule.is_some()))
        .collect();
    let mut tick = tokio::time::interval(timing.poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        for (output, tracker) in outputs.iter().zip(&mut trackers) {
            let now = clock.now();
            let from = now.saturating_sub(timing.lookback);
            tracker.forget_before(from);
            let query = ViewQuery {
                view: output.view.name.clone(),
                range: StartRange::new(from, EventTime::MAX),
                filters: Vec::new(),
            };
            let answer = match seam::answer(catalog.as_ref(), &speed, &query).await {
                Ok(answer) => answer,
                Err(err) => {
                    tracing::warn!(%err, view = %output.view.name, "an output could not read its view");
                    continue;
                }
            };
            let now_us = u64::try_from(now.millis()).unwrap_or(0) * 1000;
            let watermark = speed.watermark(&output.view);
            for record in self::records(output, tracker, answer, watermark, now_us) {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    sent = records.send(record) => if sent.is_err() { return },
                }
            }
        }
    }
}
