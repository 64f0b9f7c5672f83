//! The HTTP API.
//!
//! | method | path | |
//! |---|---|---|
//! | GET | `/v1/views` | configured views, their batch horizon and drift |
//! | GET | `/v1/views/{name}?from=&to=&DIM=VALUE` | merged rows of windows starting in `[from, to)` |
//! | POST | `/v1/jobs` | queue a recompute job `{"view"?, "from"?, "to"?}` |
//! | GET | `/v1/jobs?status=&view=`, `/v1/jobs/{id}` | job records |
//! | DELETE | `/v1/jobs/{id}` | cancel a queued or running job |
//! | GET | `/metrics` | Prometheus text |
//! | GET | `/healthz` | liveness |
//!
//! Errors are JSON `{"error": {"code", "message"}}` with a 4xx status for the caller's mistakes;
//! internal details are logged, not returned.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tandem_batch_layer::{
    CancelError, JobRequest, JobStatus, Scheduler, SubmitError, Trigger, ViewCatalog,
};
use tandem_shared::coverage::StartRange;
use tandem_shared::time::EventTime;
use tandem_shared::view::ViewDefinition;
use tandem_shared::window::WindowConfig;
use tandem_speed_layer::SpeedLayer;

use crate::merge::{self, AnsweredRow, DimensionFilter};
use crate::reconcile::Reconciler;

/// Everything the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    pub views: Arc<BTreeMap<String, ViewDefinition>>,
    pub catalog: Arc<ViewCatalog>,
    pub speed: SpeedLayer,
    pub scheduler: Scheduler,
    pub reconciler: Reconciler,
    pub metrics: Option<PrometheusHandle>,
}

/// API errors. Each says whose problem it is through its status code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("unknown view `{0}`")]
    UnknownView(String),
    #[error("unknown job `{0}`")]
    UnknownJob(String),
    #[error("parameter `{name}`: {problem}")]
    BadParameter { name: String, problem: String },
    #[error("request body: {0}")]
    BadBody(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Conflict(String),
    #[error("no route for {0}")]
    NotFound(String),
}

impl ApiError {
    fn status(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::UnknownView(_) => (StatusCode::NOT_FOUND, "unknown_view"),
            ApiError::UnknownJob(_) => (StatusCode::NOT_FOUND, "unknown_job"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::BadParameter { .. } => (StatusCode::BAD_REQUEST, "bad_parameter"),
            ApiError::BadBody(_) => (StatusCode::BAD_REQUEST, "bad_body"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status();
        let body = json!({ "error": { "code": code, "message": self.to_string() } });
        (status, Json(body)).into_response()
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/views", get(list_views))
        .route("/v1/views/{name}", get(query_view))
        .route("/v1/jobs", get(list_jobs).post(submit_job))
        .route("/v1/jobs/{id}", get(get_job).delete(cancel_job))
        .route("/metrics", get(render_metrics))
        .route(
            "/healthz",
            get(|| async { Json(json!({ "status": "ok" })) }),
        )
        .fallback(|uri: axum::http::Uri| async move { ApiError::NotFound(uri.path().to_owned()) })
        .with_state(state)
}

fn window_json(view: &ViewDefinition) -> Value {
    serde_json::to_value(WindowConfig::from(view.window)).unwrap_or(Value::Null)
}

async fn list_views(State(state): State<AppState>) -> Json<Value> {
    let views: Vec<Value> = state
        .views
        .values()
        .map(|v| {
            let published = state.catalog.get(&v.name).unwrap_or_default();
            json!({
                "name": v.name,
                "version": v.version,
                "window": window_json(v),
                "group_by": v.group_by,
                "filter": v.filter,
                "allowed_lateness": v.allowed_lateness,
                "aggregates": v.aggregates.iter().map(|a| json!({
                    "name": a.alias,
                    "expression": a.text,
                    "approximate_in_speed_layer": a.function.is_approximate_in_speed_layer(),
                })).collect::<Vec<_>>(),
                "batch_horizon": published.coverage.horizon(),
                "reconciliation": state.reconciler.report(&v.name),
            })
        })
        .collect();
    Json(json!({ "views": views }))
}

fn parse_time(name: &str, text: &str) -> Result<EventTime, ApiError> {
    EventTime::parse(text).map_err(|e| ApiError::BadParameter {
        name: name.to_owned(),
        problem: e.to_string(),
    })
}

fn row_json(view: &ViewDefinition, answered: &AnsweredRow) -> Value {
    let row = &answered.row;
    let group: Map<String, Value> = view
        .group_by
        .iter()
        .zip(&row.group)
        .map(|(name, v)| (name.clone(), v.to_json()))
        .collect();
    let values: Map<String, Value> = view
        .value_names()
        .zip(&row.values)
        .map(|(name, v)| {
            (
                name.to_owned(),
                serde_json::to_value(v).unwrap_or(Value::Null),
            )
        })
        .collect();
    let mut out = json!({
        "window_start": row.window.start,
        "window_end": row.window.end,
        "group": group,
        "values": values,
        "source": answered.source,
    });
    if answered.source == tandem_shared::row::Source::Speed {
        let approximate: Vec<&str> = view
            .aggregates
            .iter()
            .filter(|a| a.function.is_approximate_in_speed_layer())
            .map(|a| a.alias.as_str())
            .collect();
        if !approximate.is_empty()
            && let Some(obj) = out.as_object_mut()
        {
            obj.insert("approximate".into(), json!(approximate));
        }
    }
    out
}

async fn query_view(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(params): Query<BTreeMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let view = state
        .views
        .get(&name)
        .ok_or_else(|| ApiError::UnknownView(name.clone()))?;
    let mut from = EventTime::MIN;
    let mut to = EventTime::MAX;
    let mut filters = Vec::new();
    for (key, value) in &params {
        match key.as_str() {
            "from" => from = parse_time("from", value)?,
            "to" => to = parse_time("to", value)?,
            dim => match view.group_by.iter().position(|g| g == dim) {
                Some(position) => filters.push(DimensionFilter {
                    position,
                    value: value.clone(),
                }),
                None => {
                    return Err(ApiError::BadParameter {
                        name: dim.to_owned(),
                        problem: format!(
                            "not a parameter of view `{name}`; use from, to or a dimension ({})",
                            if view.group_by.is_empty() {
                                "this view has none".to_owned()
                            } else {
                                view.group_by.join(", ")
                            }
                        ),
                    });
                }
            },
        }
    }
    if from >= to {
        return Err(ApiError::BadParameter {
            name: "from".into(),
            problem: format!("`from` ({from}) must be before `to` ({to})"),
        });
    }
    let range = StartRange::new(from, to);
    // Take the batch snapshot first: if a publication lands between the two reads, the speed
    // layer may already have released windows the snapshot does not cover yet, so re-read then.
    let mut published = state.catalog.get(&name).unwrap_or_default();
    let mut speed_rows = state.speed.query(&name, range).unwrap_or_default();
    let latest = state.catalog.get(&name).unwrap_or_default();
    if latest.seq != published.seq {
        published = latest;
        speed_rows = state.speed.query(&name, range).unwrap_or_default();
    }
    let rows = merge::merge(
        &published.coverage,
        published.rows_in(range),
        speed_rows,
        &filters,
        range,
    );
    Ok(Json(json!({
        "view": name,
        "version": view.version,
        "batch_horizon": published.coverage.horizon(),
        "rows": rows.iter().map(|r| row_json(view, r)).collect::<Vec<_>>(),
    })))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobBody {
    view: Option<String>,
    from: Option<EventTime>,
    to: Option<EventTime>,
}

async fn submit_job(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let body: JobBody = if body.iter().all(u8::is_ascii_whitespace) {
        JobBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::BadBody(e.to_string()))?
    };
    let request = JobRequest {
        view: body.view,
        from: body.from,
        to: body.to,
        trigger: Trigger::Request,
    };
    match state.scheduler.submit(request) {
        Ok(job) => Ok((StatusCode::ACCEPTED, Json(job)).into_response()),
        Err(SubmitError::UnknownView(v)) => Err(ApiError::UnknownView(v)),
        Err(e @ SubmitError::EmptyRange { .. }) => Err(ApiError::BadParameter {
            name: "from".into(),
            problem: e.to_string(),
        }),
        Err(e @ SubmitError::QueueFull { .. }) => Err(ApiError::Unavailable(e.to_string())),
    }
}

async fn get_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    state
        .scheduler
        .job(&id)
        .map(|j| Json(j).into_response())
        .ok_or(ApiError::UnknownJob(id))
}

async fn list_jobs(
    State(state): State<AppState>,
    Query(params): Query<BTreeMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let mut status = None;
    let mut view = None;
    for (key, value) in &params {
        match key.as_str() {
            "status" => {
                status = Some(
                    JobStatus::parse(value).ok_or_else(|| ApiError::BadParameter {
                        name: "status".into(),
                        problem: format!(
                            "`{value}` is not one of queued, running, succeeded, failed, cancelled"
                        ),
                    })?,
                );
            }
            "view" => {
                if !state.views.contains_key(value) {
                    return Err(ApiError::UnknownView(value.clone()));
                }
                view = Some(value.as_str());
            }
            other => {
                return Err(ApiError::BadParameter {
                    name: other.to_owned(),
                    problem: "not a parameter of /v1/jobs; use status or view".into(),
                });
            }
        }
    }
    Ok(Json(json!({ "jobs": state.scheduler.list(status, view) })))
}

async fn cancel_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    match state.scheduler.cancel(&id) {
        Ok(job) => Ok(Json(job).into_response()),
        Err(CancelError::UnknownJob(id)) => Err(ApiError::UnknownJob(id)),
        Err(e @ CancelError::Finished { .. }) => Err(ApiError::Conflict(e.to_string())),
    }
}

async fn render_metrics(State(state): State<AppState>) -> Response {
    match &state.metrics {
        Some(handle) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4",
            )],
            handle.render(),
        )
            .into_response(),
        None => ApiError::Unavailable("metrics are not enabled".into()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use object_store::memory::InMemory;
    use tandem_batch_layer::Recompute;
    use tandem_shared::time::Span;
    use tandem_speed_layer::program::ViewProgram;
    use tower::ServiceExt;

    use crate::config::{Config, DEMO};

    fn app() -> Router {
        let config = Config::parse(DEMO, "demo").unwrap();
        let store: Arc<dyn object_store::ObjectStore> = Arc::new(InMemory::new());
        let schema = Arc::new(config.schema.clone());
        let catalog = Arc::new(ViewCatalog::new(Arc::clone(&store), config.views.clone()));
        let speed = SpeedLayer::new(
            config
                .views
                .iter()
                .map(|v| ViewProgram::compile(v, &schema).unwrap())
                .collect(),
        );
        let recompute = Arc::new(Recompute {
            store,
            schema,
            topic: "orders".into(),
            idle_timeout: Span::from_millis(1000),
            catalog: Arc::clone(&catalog),
        });
        let scheduler = Scheduler::new(
            recompute,
            config.views.clone(),
            tandem_batch_layer::SchedulerConfig {
                queue_capacity: 2,
                ..Default::default()
            },
        )
        .unwrap();
        router(AppState {
            views: Arc::new(
                config
                    .views
                    .iter()
                    .map(|v| (v.name.clone(), v.clone()))
                    .collect(),
            ),
            reconciler: Reconciler::new(Arc::clone(&catalog), speed.clone()),
            catalog,
            speed,
            scheduler,
            metrics: None,
        })
    }

    async fn call(app: &Router, method: &str, uri: &str, body: &str) -> (StatusCode, Value) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::from(body.to_owned()))
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    #[tokio::test]
    async fn lists_views_and_answers_an_empty_view() {
        let app = app();
        let (status, body) = call(&app, "GET", "/v1/views", "").await;
        assert_eq!(status, StatusCode::OK);
        let names: Vec<_> = body["views"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].clone())
            .collect();
        assert_eq!(names, [json!("events_by_type"), json!("orders_by_city")]);
        let (status, body) = call(
            &app,
            "GET",
            "/v1/views/orders_by_city?city=Chennai&from=0&to=2026-11-21T10:00:00Z",
            "",
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["rows"], json!([]));
        assert_eq!(body["batch_horizon"], Value::Null);
    }

    #[tokio::test]
    async fn bad_requests_get_json_errors() {
        let app = app();
        for (method, uri, body, status, code) in [
            (
                "GET",
                "/v1/views/nope",
                "",
                StatusCode::NOT_FOUND,
                "unknown_view",
            ),
            (
                "GET",
                "/v1/views/orders_by_city?from=noon",
                "",
                StatusCode::BAD_REQUEST,
                "bad_parameter",
            ),
            (
                "GET",
                "/v1/views/orders_by_city?from=10&to=5",
                "",
                StatusCode::BAD_REQUEST,
                "bad_parameter",
            ),
            (
                "GET",
                "/v1/views/orders_by_city?country=IN",
                "",
                StatusCode::BAD_REQUEST,
                "bad_parameter",
            ),
            (
                "POST",
                "/v1/jobs",
                "{\"view\": 3}",
                StatusCode::BAD_REQUEST,
                "bad_body",
            ),
            (
                "POST",
                "/v1/jobs",
                "{\"views\": \"x\"}",
                StatusCode::BAD_REQUEST,
                "bad_body",
            ),
            (
                "POST",
                "/v1/jobs",
                "{\"view\": \"nope\"}",
                StatusCode::NOT_FOUND,
                "unknown_view",
            ),
            (
                "POST",
                "/v1/jobs",
                "{\"from\": 10, \"to\": 5}",
                StatusCode::BAD_REQUEST,
                "bad_parameter",
            ),
            (
                "GET",
                "/v1/jobs/123",
                "",
                StatusCode::NOT_FOUND,
                "unknown_job",
            ),
            (
                "GET",
                "/v2/anything",
                "",
                StatusCode::NOT_FOUND,
                "not_found",
            ),
        ] {
            let (got, body) = call(&app, method, uri, body).await;
            assert_eq!(got, status, "{method} {uri}: {body}");
            assert_eq!(body["error"]["code"], code, "{method} {uri}: {body}");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty())
            );
        }
    }

    #[tokio::test]
    async fn jobs_are_queued_listed_and_refused_when_the_queue_is_full() {
        let app = app();
        let (status, job) = call(&app, "POST", "/v1/jobs", "").await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(job["status"], "queued");
        let id = job["id"].as_str().unwrap().to_owned();
        let (status, got) = call(&app, "GET", &format!("/v1/jobs/{id}"), "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(got["id"], json!(id));
        let (_, second) = call(
            &app,
            "POST",
            "/v1/jobs",
            "{\"view\": \"orders_by_city\", \"from\": \"2026-11-21T10:00:00Z\"}",
        )
        .await;
        assert_eq!(second["view"], "orders_by_city");
        assert_eq!(second["from"], "2026-11-21T10:00:00Z");
        // The scheduler is not running and holds two jobs: the third is refused.
        let (status, body) = call(&app, "POST", "/v1/jobs", "{}").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        let (_, list) = call(&app, "GET", "/v1/jobs", "").await;
        assert_eq!(list["jobs"].as_array().unwrap().len(), 2);
        assert_eq!(list["jobs"][0]["id"], second["id"], "newest first");
        let (_, list) = call(
            &app,
            "GET",
            "/v1/jobs?view=orders_by_city&status=queued",
            "",
        )
        .await;
        assert_eq!(list["jobs"].as_array().unwrap().len(), 1);
        let (status, _) = call(&app, "GET", "/v1/jobs?status=done", "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);

        // Cancelling a queued job; cancelling it again is a conflict.
        let (status, cancelled) = call(&app, "DELETE", &format!("/v1/jobs/{id}"), "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(cancelled["status"], "cancelled");
        let (status, body) = call(&app, "DELETE", &format!("/v1/jobs/{id}"), "").await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        let (status, _) = call(&app, "DELETE", "/v1/jobs/nope", "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}
