//! The speed layer: Kafka → event-time windows → approximate, always-fresh view state.
//!
//! ```text
//!  Kafka topic (consumer group, all partitions)
//!      │ poll: one micro-batch of whatever is buffered
//!      ▼
//!  EventDecoder ──malformed──► dead-letter topic (reason header)
//!      │ Arrow RecordBatch (event schema)
//!      ▼
//!  per view: ViewProgram (DataFusion filter + argument expressions)
//!      │ window assignment against the view watermark
//!      ├──no open window──► late-events topic (per view)
//!      ▼
//!  ViewState: window → group → PartialAggregate ◄── query(view, range) from serving
//!      ▲                                        ◄── release(view, coverage) from serving
//! ```
//!
//! # Subsystems
//! - [`program`]: compiles a [`ViewDefinition`](tandem_shared::view::ViewDefinition) to DataFusion
//!   physical expressions, so filters and arguments mean what they mean in the batch layer.
//! - [`state`]: the per-view window state and the lateness rule.
//! - [`watermark`]: event-time progress per partition.
//! - `ingest`: the consume loop on a dedicated thread.
//! - `dead_letter`: the dead-letter and late-events producers.
//!
//! # Invariants
//! - Window state lives until the batch layer covers the window; the serving layer then calls
//!   [`SpeedLayer::release`], and from then on the window is answered by the batch layer only.
//! - Every consumed message ends up in exactly one place per view: a window's state, the
//!   dead-letter topic (malformed, or an expression failed on it) or the late-events topic.
//! - The speed layer does not commit offsets: it rebuilds its state from the topic when it starts.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use datafusion::arrow::array::RecordBatch;
use tandem_shared::coverage::{Coverage, StartRange};
use tandem_shared::event::EventDecoder;
use tandem_shared::row::ViewRow;
use tandem_shared::time::{EventTime, Span};
use tokio_util::sync::CancellationToken;

pub mod clock;
mod dead_letter;
mod ingest;
pub mod program;
pub mod state;
pub mod watermark;

pub use ingest::{Error as IngestError, SpeedConfig};
use program::ViewProgram;
use state::ViewState;

/// What applying a batch did to one view, by batch row.
#[derive(Debug, Default)]
pub(crate) struct ViewOutcome {
    pub late: Vec<usize>,
    /// Rows an expression failed on, with the error.
    pub rejected: Vec<(usize, String)>,
}

/// One view's state behind a lock shared by the consume loop and queries.
#[derive(Debug)]
pub(crate) struct ViewSlot {
    name: String,
    allowed_lateness: Span,
    state: RwLock<ViewState>,
}

impl ViewSlot {
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn allowed_lateness(&self) -> Span {
        self.allowed_lateness
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, ViewState> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, ViewState> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies a batch. If an expression fails on the batch (say, a division by zero in one
    /// event), retries row by row so that only the rows it fails on are rejected.
    pub(crate) fn apply(&self, batch: &RecordBatch, watermark: Option<EventTime>) -> ViewOutcome {
        let mut state = self.write();
        match state.apply(batch, watermark) {
            Ok(applied) => {
                self.publish_size(&state);
                ViewOutcome {
                    late: applied.late_rows,
                    rejected: Vec::new(),
                }
            }
            Err(_) if batch.num_rows() > 1 => {
                let mut outcome = ViewOutcome::default();
                for row in 0..batch.num_rows() {
                    match state.apply(&batch.slice(row, 1), watermark) {
                        Ok(applied) if !applied.late_rows.is_empty() => outcome.late.push(row),
                        Ok(_) => {}
                        Err(err) => outcome.rejected.push((row, err.to_string())),
                    }
                }
                self.publish_size(&state);
                outcome
            }
            Err(err) => ViewOutcome {
                late: Vec::new(),
                rejected: vec![(0, err.to_string())],
            },
        }
    }

    fn publish_size(&self, state: &ViewState) {
        let (windows, groups, bytes) = state.size();
        let view = self.name.clone();
        metrics::gauge!("tandem_speed_open_windows", "view" => view.clone()).set(windows as f64);
        metrics::gauge!("tandem_speed_groups", "view" => view.clone()).set(groups as f64);
        metrics::gauge!("tandem_speed_state_bytes", "view" => view).set(bytes as f64);
    }
}

/// Handle to the speed layer's views. Cheap to clone; all clones share state.
#[derive(Debug, Clone)]
pub struct SpeedLayer {
    views: Arc<BTreeMap<String, Arc<ViewSlot>>>,
}

impl SpeedLayer {
    /// Creates the state for compiled views. Nothing is consumed until [`SpeedLayer::start`].
    pub fn new(programs: Vec<ViewProgram>) -> Self {
        let views = programs
            .into_iter()
            .map(|p| {
                let slot = ViewSlot {
                    name: p.view.name.clone(),
                    allowed_lateness: p.view.allowed_lateness,
                    state: RwLock::new(ViewState::new(Arc::new(p))),
                };
                (slot.name.clone(), Arc::new(slot))
            })
            .collect();
        Self {
            views: Arc::new(views),
        }
    }

    pub(crate) fn views(&self) -> impl Iterator<Item = &Arc<ViewSlot>> {
        self.views.values()
    }

    /// Starts consuming on a dedicated blocking thread; the returned task ends after `cancel`
    /// fires and queued dead-letter messages are flushed.
    pub fn start(
        &self,
        config: SpeedConfig,
        decoder: Arc<EventDecoder>,
        clock: Arc<dyn clock::Clock>,
        cancel: CancellationToken,
    ) -> Result<tokio::task::JoinHandle<()>, IngestError> {
        let ingest = ingest::Ingest::new(self.clone(), config, decoder, clock)?;
        Ok(tokio::task::spawn_blocking(move || ingest.run(cancel)))
    }

    /// Rows of `view` whose window starts in `range`; `None` for an unknown view.
    pub fn query(&self, view: &str, range: StartRange) -> Option<Vec<ViewRow>> {
        self.views.get(view).map(|v| v.read().rows(range))
    }

    /// Hands the batch layer's coverage of `view` to the speed layer: covered windows are dropped
    /// and returned (for drift measurement), and later events for them are treated as late.
    pub fn release(&self, view: &str, coverage: &Coverage) -> Option<Vec<ViewRow>> {
        self.views.get(view).map(|slot| {
            let mut state = slot.write();
            let released = state.release(coverage);
            slot.publish_size(&state);
            released
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_shared::event::EventBatchBuilder;
    use tandem_shared::schema::{EventSchema, FieldType};
    use tandem_shared::view::{ViewConfig, ViewDefinition};
    use tandem_shared::window::WindowConfig;

    #[test]
    fn an_expression_error_rejects_only_the_rows_it_fails_on() {
        let schema = Arc::new(
            EventSchema::new(
                "ts",
                vec![
                    ("a".into(), FieldType::Int64),
                    ("b".into(), FieldType::Int64),
                ],
                None,
            )
            .unwrap(),
        );
        let view = ViewDefinition::from_config(
            &ViewConfig {
                name: "ratio".into(),
                window: WindowConfig {
                    tumbling: Some("1m".into()),
                    ..Default::default()
                },
                group_by: vec![],
                filter: Some("a / b > 1".into()),
                allowed_lateness: None,
                aggregates: vec!["count(*) AS n".into()],
            },
            &schema,
        )
        .unwrap();
        let speed = SpeedLayer::new(vec![ViewProgram::compile(&view, &schema).unwrap()]);
        let decoder = EventDecoder::new(schema);
        let mut b = EventBatchBuilder::new(&decoder, 3);
        for (i, json) in [
            r#"{"ts":1,"a":4,"b":2}"#,
            r#"{"ts":2,"a":4,"b":0}"#,
            r#"{"ts":3,"a":9,"b":3}"#,
        ]
        .iter()
        .enumerate()
        {
            b.append(&decoder.decode(json.as_bytes()).unwrap(), 0, i as i64);
        }
        let slot = speed.views().next().unwrap().clone();
        let outcome = slot.apply(&b.finish(), None);
        assert_eq!(outcome.rejected.len(), 1);
        assert_eq!(outcome.rejected[0].0, 1);
        assert!(
            outcome.rejected[0]
                .1
                .to_lowercase()
                .contains("divide by zero"),
            "{:?}",
            outcome.rejected
        );
        let rows = speed
            .query("ratio", StartRange::new(EventTime::MIN, EventTime::MAX))
            .unwrap();
        assert_eq!(
            rows[0].values[0],
            tandem_shared::aggregate::AggregateValue::Int(2)
        );
    }
}
