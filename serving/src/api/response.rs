//! Response bodies. Each is a `Serialize` type, so the JSON shape of the API is written down in
//! one place.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;
use tandem_batch_layer::JobRecord;
use tandem_shared::row::{GroupValue, Source};
use tandem_shared::time::{EventTime, Span};
use tandem_shared::value::AggregateValue;
use tandem_shared::view::{ViewDefinition, ViewVersion};
use tandem_shared::window::WindowConfig;
use tandem_speed_layer::aggregate::{ErrorBound, error_bound};

use crate::reconcile::DriftReport;
use crate::rollup::RolledRow;
use crate::seam::{Answer, AnsweredRow};

/// `GET /v1/views`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ViewList {
    pub views: Vec<ViewSummary>,
}

/// One configured view, its batch horizon and its drift so far.
#[derive(Debug, Serialize, utoipa::ToSchema)]
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

#[derive(Debug, Serialize, utoipa::ToSchema)]
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
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ViewRows {
    pub view: String,
    pub version: ViewVersion,
    pub batch_horizon: Option<EventTime>,
    pub rows: Vec<RowBody>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
    /// Partitions of the events topic no speed worker answered for in time (a worker died or
    /// its partitions are moving): every speed row is `partial`, missing their events. Absent
    /// when the answer is whole.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing_partitions: Vec<i32>,
}

/// One window and group of an answer, with the layer it came from.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RowBody {
    pub window_start: EventTime,
    pub window_end: EventTime,
    /// Dimension name → value.
    pub group: BTreeMap<String, Value>,
    /// Aggregate name → value. A value the speed layer only estimates (a sketch) is
    /// `{"estimate", "rse"}` for a distinct count (relative standard error) or
    /// `{"estimate", "rank_error"}` for a percentile; a decimal is an exact string (`"10344.78"`);
    /// every other value is a number (or null).
    pub values: BTreeMap<String, Value>,
    pub source: Source,
    /// False when the archive lost events of this window (an offset gap): not exact.
    pub complete: bool,
    /// Speed rows: whether the view's watermark has passed the window's end (no more on-time
    /// events will change it). Absent on batch rows, which are final.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub closed: Option<bool>,
    /// Values the speed layer only estimates (sketches), on rows it answered.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub approximate: Vec<String>,
    /// Speed rows of an answer some partitions are missing from (see
    /// [`ViewRows::missing_partitions`]): the values lack those partitions' events.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
}

/// A value as the API renders it: with its error bound when it is a speed-layer estimate.
fn value_json(value: AggregateValue, bound: Option<ErrorBound>) -> Value {
    let number = serde_json::to_value(value).unwrap_or(Value::Null);
    match bound {
        None => number,
        Some(ErrorBound::RelativeStandardError(rse)) => {
            serde_json::json!({"estimate": number, "rse": rse})
        }
        Some(ErrorBound::RankError(e)) => serde_json::json!({"estimate": number, "rank_error": e}),
    }
}

/// Dimension name → value.
fn group_json(view: &ViewDefinition, group: &[GroupValue]) -> BTreeMap<String, Value> {
    view.group_by
        .iter()
        .zip(group)
        .map(|(name, v)| (name.clone(), v.to_json()))
        .collect()
}

/// Aggregate name → value, with the error bound `bound(i)` gives the `i`th value.
fn values_json(
    view: &ViewDefinition,
    values: &[AggregateValue],
    bound: impl Fn(usize) -> Option<ErrorBound>,
) -> BTreeMap<String, Value> {
    view.value_names()
        .zip(values)
        .enumerate()
        .map(|(i, (name, v))| (name.to_owned(), value_json(*v, bound(i))))
        .collect()
}

impl ViewRows {
    /// `watermark` is the speed layer's for the view (see [`RowBody::closed`]).
    pub fn new(
        view: &ViewDefinition,
        answer: Answer,
        next_cursor: Option<String>,
        watermark: Option<EventTime>,
    ) -> Self {
        let approximate: Vec<String> = view
            .aggregates
            .iter()
            .filter(|a| a.function.is_approximate_in_speed_layer())
            .map(|a| a.alias.clone())
            .collect();
        let bounds: Vec<Option<ErrorBound>> = view
            .aggregates
            .iter()
            .map(|a| error_bound(a.function))
            .collect();
        let partial = !answer.missing_partitions.is_empty();
        let rows = answer
            .rows
            .into_iter()
            .map(
                |AnsweredRow {
                     row,
                     source,
                     complete,
                 }| {
                    let speed = source == Source::Speed;
                    RowBody {
                        complete,
                        closed: speed.then(|| watermark.is_some_and(|w| w >= row.window.end)),
                        window_start: row.window.start,
                        window_end: row.window.end,
                        group: group_json(view, &row.group),
                        values: values_json(view, &row.values, |i| {
                            if speed { bounds[i] } else { None }
                        }),
                        source,
                        approximate: if speed {
                            approximate.clone()
                        } else {
                            Vec::new()
                        },
                        partial: speed && partial,
                    }
                },
            )
            .collect();
        Self {
            view: view.name.clone(),
            version: answer.version,
            batch_horizon: answer.batch_horizon,
            rows,
            next_cursor,
            missing_partitions: answer.missing_partitions,
        }
    }
}

/// `GET /v1/views/{name}`: a page of rows, or a rollup with `granularity`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum ViewAnswer {
    Rows(ViewRows),
    Rollup(RollupRows),
}

/// `GET /v1/views/{name}?granularity=`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RollupRows {
    pub view: String,
    pub version: ViewVersion,
    /// `all`, or the bucket span (`1h`).
    pub granularity: String,
    pub batch_horizon: Option<EventTime>,
    pub rows: Vec<RollupBody>,
    /// Partitions no speed worker answered for: buckets with speed windows lack their events.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing_partitions: Vec<i32>,
}

/// One bucket and group of a rollup.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RollupBody {
    pub window_start: EventTime,
    pub window_end: EventTime,
    pub group: BTreeMap<String, Value>,
    /// Aggregate name → value: exact values as numbers; a distinct count or percentile merged
    /// from sketches as `{"estimate", "rse"}` or `{"estimate", "rank_error"}`.
    pub values: BTreeMap<String, Value>,
    /// `batch`, `speed`, `mixed` (windows of both), or `archive` (recomputed exactly from the
    /// raw events with `exact=true`).
    pub source: &'static str,
    /// How many of the bucket's windows each layer answered (absent for `archive` rows).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub windows: Option<WindowCounts>,
    /// False when a batch window of the bucket lost events (an archive gap).
    pub complete: bool,
    /// Values estimated from sketches.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub approximate: Vec<String>,
    /// Values that are null because a window's state was not stored (segments written before
    /// states were); recompute the view, or ask with `exact=true`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unavailable: Vec<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WindowCounts {
    pub batch: u64,
    pub speed: u64,
}

impl RollupBody {
    pub fn new(view: &ViewDefinition, row: RolledRow) -> Self {
        let names = |flags: &[bool]| -> Vec<String> {
            view.value_names()
                .zip(flags)
                .filter(|(_, f)| **f)
                .map(|(n, _)| n.to_owned())
                .collect()
        };
        Self {
            window_start: row.window.start,
            window_end: row.window.end,
            group: group_json(view, &row.group),
            values: values_json(view, &row.values, |i| {
                if row.approximate.get(i) == Some(&true) {
                    error_bound(view.aggregates[i].function)
                } else {
                    None
                }
            }),
            source: row.source(),
            windows: (!row.archive).then_some(WindowCounts {
                batch: row.batch_windows,
                speed: row.speed_windows,
            }),
            complete: row.complete,
            approximate: names(&row.approximate),
            unavailable: names(&row.unavailable),
        }
    }
}

/// `GET /v1/views/{name}/coverage`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CoverageBody {
    pub view: String,
    #[serde(flatten)]
    pub sources: crate::sources::Sources,
}

/// `GET /v1/jobs`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobList {
    pub jobs: Vec<JobRecord>,
}

/// `GET /healthz`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    pub status: &'static str,
}

/// `GET /readyz`: `ready`, or `not_ready` with each component's reason.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Ready {
    pub status: &'static str,
    pub reasons: Vec<crate::readiness::Reason>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tandem_shared::row::{GroupValue, ViewRow};
    use tandem_shared::testing;
    use tandem_shared::window::Window;

    fn row(minute: i64, source: Source) -> AnsweredRow {
        AnsweredRow {
            row: ViewRow {
                window: Window {
                    start: EventTime(minute * 60_000),
                    end: EventTime((minute + 1) * 60_000),
                },
                group: vec![GroupValue::Str("Oslo".into())],
                values: vec![
                    AggregateValue::Int(3),
                    AggregateValue::Int(2),
                    AggregateValue::Float(9.5),
                ],
            },
            source,
            complete: true,
        }
    }

    /// Speed rows say whether their window is closed and give estimates with their error bound;
    /// batch rows are exact numbers.
    #[test]
    fn speed_rows_carry_closed_and_error_bounds() {
        let view = testing::view(
            &testing::orders_schema(),
            "v",
            testing::tumbling("1m"),
            &["city"],
            None,
            &[
                "count(*) AS n",
                "count(DISTINCT user_id) AS buyers",
                "percentile(amount, 0.9) AS p90",
            ],
        );
        let answer = Answer {
            version: view.version.clone(),
            batch_horizon: Some(EventTime(60_000)),
            rows: vec![
                row(0, Source::Batch),
                row(1, Source::Speed),
                row(2, Source::Speed),
            ],
            missing_partitions: Vec::new(),
        };
        // The watermark is at the end of minute 1: minute 1 is closed, minute 2 is not.
        let body =
            serde_json::to_value(ViewRows::new(&view, answer, None, Some(EventTime(120_000))))
                .unwrap();
        let rows = body["rows"].as_array().unwrap();
        assert_eq!(rows[0]["values"], json!({"n": 3, "buyers": 2, "p90": 9.5}));
        assert!(rows[0].get("closed").is_none());
        assert_eq!(rows[1]["closed"], true);
        assert_eq!(rows[2]["closed"], false);
        assert_eq!(rows[1]["values"]["n"], 3);
        assert_eq!(rows[1]["values"]["buyers"]["estimate"], 2);
        let rse = rows[1]["values"]["buyers"]["rse"].as_f64().unwrap();
        assert!((rse - 0.008125).abs() < 1e-6, "{rse}");
        assert_eq!(rows[1]["values"]["p90"]["estimate"], 9.5);
        assert!(rows[1]["values"]["p90"]["rank_error"].as_f64().unwrap() > 0.0);
        // Without progress no window is known to be closed.
        let answer = Answer {
            version: view.version.clone(),
            batch_horizon: None,
            rows: vec![row(1, Source::Speed)],
            missing_partitions: Vec::new(),
        };
        let body = serde_json::to_value(ViewRows::new(&view, answer, None, None)).unwrap();
        assert_eq!(body["rows"][0]["closed"], false);
        assert!(body["rows"][0].get("partial").is_none());
        assert!(body.get("missing_partitions").is_none());
    }

    #[test]
    fn speed_rows_of_an_answer_missing_partitions_are_partial() {
        let view = testing::view(
            &testing::orders_schema(),
            "v",
            testing::tumbling("1m"),
            &["city"],
            None,
            &["count(*) AS n"],
        );
        let answer = Answer {
            version: view.version.clone(),
            batch_horizon: Some(EventTime(60_000)),
            rows: vec![row(0, Source::Batch), row(1, Source::Speed)],
            missing_partitions: vec![1, 3],
        };
        let body = serde_json::to_value(ViewRows::new(&view, answer, None, None)).unwrap();
        assert_eq!(body["missing_partitions"], json!([1, 3]));
        assert!(
            body["rows"][0].get("partial").is_none(),
            "batch rows are whole"
        );
        assert_eq!(body["rows"][1]["partial"], true);
    }
}
