//! Response bodies. Each is a `Serialize` type, so the JSON shape of the API is written down in
//! one place.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;
use tandem_batch_layer::JobRecord;
use tandem_shared::row::Source;
use tandem_shared::time::{EventTime, Span};
use tandem_shared::value::AggregateValue;
use tandem_shared::view::{ViewDefinition, ViewVersion};
use tandem_shared::window::WindowConfig;

use crate::reconcile::DriftReport;
use crate::seam::{Answer, AnsweredRow};

/// `GET /v1/views`.
#[derive(Debug, Serialize)]
pub struct ViewList {
    pub views: Vec<ViewSummary>,
}

/// One configured view, its batch horizon and its drift so far.
#[derive(Debug, Serialize)]
pub struct ViewSummary {
    pub name: String,
    pub version: ViewVersion,
    pub window: WindowConfig,
    pub group_by: Vec<String>,
    pub filter: Option<String>,
    pub allowed_lateness: Span,
    pub aggregates: Vec<AggregateSummary>,
    pub batch_horizon: Option<EventTime>,
    pub reconciliation: Option<DriftReport>,
}

#[derive(Debug, Serialize)]
pub struct AggregateSummary {
    pub name: String,
    pub expression: String,
    pub approximate_in_speed_layer: bool,
}

impl ViewSummary {
    pub fn new(
        view: &ViewDefinition,
        batch_horizon: Option<EventTime>,
        reconciliation: Option<DriftReport>,
    ) -> Self {
        Self {
            name: view.name.clone(),
            version: view.version.clone(),
            window: WindowConfig::from(view.window),
            group_by: view.group_by.clone(),
            filter: view.filter.clone(),
            allowed_lateness: view.allowed_lateness,
            aggregates: view
                .aggregates
                .iter()
                .map(|a| AggregateSummary {
                    name: a.alias.clone(),
                    expression: a.text.clone(),
                    approximate_in_speed_layer: a.function.is_approximate_in_speed_layer(),
                })
                .collect(),
            batch_horizon,
            reconciliation,
        }
    }
}

/// `GET /v1/views/{name}`.
#[derive(Debug, Serialize)]
pub struct ViewRows {
    pub view: String,
    pub version: ViewVersion,
    pub batch_horizon: Option<EventTime>,
    pub rows: Vec<RowBody>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// One window and group of an answer, with the layer it came from.
#[derive(Debug, Serialize)]
pub struct RowBody {
    pub window_start: EventTime,
    pub window_end: EventTime,
    /// Dimension name → value.
    pub group: BTreeMap<String, Value>,
    /// Aggregate name → value.
    pub values: BTreeMap<String, AggregateValue>,
    pub source: Source,
    /// False when the archive lost events of this window (an offset gap): not exact.
    pub complete: bool,
    /// Values the speed layer only estimates (sketches), on rows it answered.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub approximate: Vec<String>,
}

impl ViewRows {
    pub fn new(view: &ViewDefinition, answer: Answer, next_cursor: Option<String>) -> Self {
        let approximate: Vec<String> = view
            .aggregates
            .iter()
            .filter(|a| a.function.is_approximate_in_speed_layer())
            .map(|a| a.alias.clone())
            .collect();
        let rows = answer
            .rows
            .into_iter()
            .map(
                |AnsweredRow {
                     row,
                     source,
                     complete,
                 }| RowBody {
                    complete,
                    window_start: row.window.start,
                    window_end: row.window.end,
                    group: view
                        .group_by
                        .iter()
                        .zip(&row.group)
                        .map(|(name, v)| (name.clone(), v.to_json()))
                        .collect(),
                    values: view
                        .value_names()
                        .map(str::to_owned)
                        .zip(row.values)
                        .collect(),
                    source,
                    approximate: match source {
                        Source::Speed => approximate.clone(),
                        Source::Batch => Vec::new(),
                    },
                },
            )
            .collect();
        Self {
            view: view.name.clone(),
            version: answer.version,
            batch_horizon: answer.batch_horizon,
            rows,
            next_cursor,
        }
    }
}

/// `GET /v1/jobs`.
#[derive(Debug, Serialize)]
pub struct JobList {
    pub jobs: Vec<JobRecord>,
}

/// `GET /healthz`.
#[derive(Debug, Serialize)]
pub struct Health {
    pub status: &'static str,
}

/// `GET /readyz`: `ready`, or `not_ready` with each component's reason.
#[derive(Debug, Serialize)]
pub struct Ready {
    pub status: &'static str,
    pub reasons: Vec<crate::readiness::Reason>,
}
