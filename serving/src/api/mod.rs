//! The HTTP API. Handlers only parse requests and render responses; answering a view query is
//! the seam's job ([`crate::seam::answer`]), jobs are the scheduler's.
//!
//! | method | path | |
//! |---|---|---|
//! | GET | `/v1/views` | configured views, their batch horizon and drift |
//! | GET | `/v1/views/{name}?from=&to=&DIM=VALUE&limit=&cursor=` | merged rows of windows starting in `[from, to)`, a page at a time |
//! | GET | `/v1/views/{name}?granularity=1h\|all&exact=&from=&to=&DIM=VALUE` | a rollup of a tumbling view ([`crate::rollup`]) |
//! | GET | `/v1/views/{name}/coverage?from=&to=` | window starts answered by the batch layer (exact or incomplete) and by the speed layer |
//! | GET | `/v1/views/{name}/stream?from=&to=&DIM=VALUE` | Server-Sent Events: `row` (new or changed, same JSON as a row above) and `removed` |
//! | POST | `/v1/jobs` | queue a recompute job `{"view"?, "from"?, "to"?}` |
//! | GET | `/v1/jobs?status=&view=`, `/v1/jobs/{id}` | job records |
//! | DELETE | `/v1/jobs/{id}` | cancel a queued or running job |
//! | POST | `/v1/sql` | read-only SQL `{"sql"}` over the views and `events`: JSON, CSV or Arrow IPC by `Accept` |
//! | GET | `/metrics` | Prometheus text |
//! | GET | `/healthz` | liveness |
//! | GET | `/readyz` | readiness: 503 with the reasons while a component is not ready |
//!
//! Errors are JSON `{"error": {"code", "message"}}` (see [`ApiError`]). With tokens
//! configured, every route but the probes needs a bearer token ([`crate::access`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use tandem_batch_layer::{JobRecord, JobRequest, JobStatus, Scheduler, Trigger, ViewCatalog};
use tandem_shared::coverage::StartRange;
use tandem_shared::time::EventTime;
use tandem_shared::view::ViewDefinition;
use tandem_speed_layer::SpeedLayer;
use tokio_util::sync::CancellationToken;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use crate::access::{self, HttpLimits, HttpPolicy};
use crate::page::{self, Cursor};
use crate::readiness::Readiness;
use crate::reconcile::Reconciler;
use crate::rollup::{self, Granularity};
use crate::seam::{self, DimensionFilter, ViewQuery};
use crate::sql::{self, SqlEngine};

mod error;
mod response;
mod stream;
#[cfg(test)]
mod tests;

pub use error::ApiError;
pub use response::{
    Health, JobList, Ready, RollupBody, RollupRows, RowBody, ViewList, ViewRows, ViewSummary,
};

/// Everything the handlers share. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    catalog: Arc<ViewCatalog>,
    speed: SpeedLayer,
    scheduler: Scheduler,
    reconciler: Reconciler,
    metrics: Option<PrometheusHandle>,
    readiness: Readiness,
    sql: Option<SqlEngine>,
    /// Fires when the HTTP server stops: open streams end, so that shutdown does not wait on
    /// them.
    shutdown: CancellationToken,
}

impl AppState {
    /// The API over `catalog` (which also names the views) and `speed`; `metrics` renders
    /// `/metrics` when given; `readiness` answers `/readyz`.
    pub fn new(
        catalog: Arc<ViewCatalog>,
        speed: SpeedLayer,
        scheduler: Scheduler,
        reconciler: Reconciler,
        metrics: Option<PrometheusHandle>,
        readiness: Readiness,
    ) -> Self {
        Self {
            catalog,
            speed,
            scheduler,
            reconciler,
            metrics,
            readiness,
            sql: None,
            shutdown: CancellationToken::new(),
        }
    }

    /// Ends open `/stream` responses when `token` fires (the server's stop token).
    pub fn with_shutdown(mut self, token: CancellationToken) -> Self {
        self.shutdown = token;
        self
    }

    /// Answers `POST /v1/sql` with `engine` (without one, the route says SQL is not set up).
    pub fn with_sql(mut self, engine: SqlEngine) -> Self {
        self.sql = Some(engine);
        self
    }

    fn view(&self, name: &str) -> Result<&ViewDefinition, ApiError> {
        self.catalog
            .view(name)
            .ok_or_else(|| ApiError::UnknownView(name.to_owned()))
    }
}

/// The API behind `policy`'s access rules and limits.
pub fn router(state: AppState, policy: &HttpPolicy) -> Router {
    front_door(routes(state), policy)
}

/// Access rules and limits around `routes` (any routes: tests wrap a slow one).
fn front_door(routes: Router, policy: &HttpPolicy) -> Router {
    let limits = policy.limits.clone();
    routes
        .layer(middleware::from_fn_with_state(
            policy.access.clone(),
            access::guard,
        ))
        .layer(DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(limits.max_body_bytes))
        .layer(GlobalConcurrencyLimitLayer::new(
            limits.max_concurrent_requests.max(1),
        ))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ))
        .layer(middleware::map_response_with_state(limits, limit_errors))
}

/// The limit layers answer with a bare status; give those answers the API's JSON error body.
async fn limit_errors(State(limits): State<HttpLimits>, response: Response) -> Response {
    let json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if json {
        return response;
    }
    match response.status() {
        StatusCode::REQUEST_TIMEOUT => ApiError::TimedOut(limits.request_timeout).into_response(),
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge(limits.max_body_bytes).into_response(),
        _ => response,
    }
}

fn routes(state: AppState) -> Router {
    Router::new()
        .route("/v1/views", get(list_views))
        .route("/v1/views/{name}", get(query_view))
        .route("/v1/views/{name}/stream", get(stream::stream_view))
        .route("/v1/views/{name}/coverage", get(view_coverage))
        .route("/v1/jobs", get(list_jobs).post(submit_job))
        .route("/v1/sql", post(run_sql))
        .route("/v1/jobs/{id}", get(get_job).delete(cancel_job))
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { Json(Health { status: "ok" }) }))
        .route("/readyz", get(readyz))
        .fallback(|uri: axum::http::Uri| async move { ApiError::NotFound(uri.path().to_owned()) })
        .with_state(state)
}

async fn list_views(State(state): State<AppState>) -> Json<ViewList> {
    let views = state
        .catalog
        .views()
        .map(|v| {
            let published = state.catalog.get(&v.name).unwrap_or_default();
            ViewSummary::new(
                v,
                published.coverage.horizon(),
                state.reconciler.report(&v.name),
            )
        })
        .collect();
    Json(ViewList { views })
}

/// The body of `POST /v1/sql`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SqlRequest {
    sql: String,
}

/// Runs a read-only query; the `Accept` header picks JSON (default), CSV or an Arrow IPC stream.
async fn run_sql(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let engine = state
        .sql
        .as_ref()
        .ok_or_else(|| ApiError::NotFound("/v1/sql (SQL is not set up in this process)".into()))?;
    let request: SqlRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadBody(e.to_string()))?;
    let accept = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let answer = engine.query(&request.sql).await?;
    let internal = |e: datafusion::arrow::error::ArrowError| ApiError::Internal(e.to_string());
    let content_type = axum::http::header::CONTENT_TYPE;
    if accept.contains(sql::render::CSV) {
        let body = sql::render::csv(&answer).map_err(internal)?;
        return Ok(([(content_type, "text/csv; charset=utf-8")], body).into_response());
    }
    if accept.contains(sql::render::ARROW_STREAM) {
        let body = sql::render::arrow_stream(&answer).map_err(internal)?;
        return Ok(([(content_type, sql::render::ARROW_STREAM)], body).into_response());
    }
    Ok(Json(sql::render::json(&answer).map_err(internal)?).into_response())
}

fn parse_time(name: &str, text: &str) -> Result<EventTime, ApiError> {
    EventTime::parse(text).map_err(|e| ApiError::BadParameter {
        name: name.to_owned(),
        problem: e.to_string(),
    })
}

/// Which page of an answer to return.
#[derive(Debug)]
struct Paging {
    limit: usize,
    after: Option<Cursor>,
}

/// Reads `from`, `to`, dimension filters, `limit` and `cursor` of a view query from the query
/// string.
fn parse_view_query(
    view: &ViewDefinition,
    params: &BTreeMap<String, String>,
) -> Result<(ViewQuery, Paging), ApiError> {
    let mut from = EventTime::MIN;
    let mut to = EventTime::MAX;
    let mut filters = Vec::new();
    let mut paging = Paging {
        limit: page::DEFAULT_LIMIT,
        after: None,
    };
    for (key, value) in params {
        match key.as_str() {
            "from" => from = parse_time("from", value)?,
            "to" => to = parse_time("to", value)?,
            "limit" => {
                paging.limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=page::MAX_LIMIT).contains(n))
                    .ok_or_else(|| ApiError::BadParameter {
                        name: "limit".into(),
                        problem: format!(
                            "`{value}` is not a number of rows from 1 to {}",
                            page::MAX_LIMIT
                        ),
                    })?;
            }
            "cursor" => {
                paging.after = Some(Cursor::decode(value).map_err(|e| ApiError::BadParameter {
                    name: "cursor".into(),
                    problem: e.to_string(),
                })?);
            }
            dim => match view.group_by.iter().position(|g| g == dim) {
                Some(position) => filters.push(DimensionFilter {
                    position,
                    value: value.clone(),
                }),
                None => {
                    return Err(ApiError::BadParameter {
                        name: dim.to_owned(),
                        problem: format!(
                            "not a parameter of view `{}`; use from, to, limit, cursor or a dimension ({})",
                            view.name,
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
    // Rows before the cursor's window start are not needed.
    if let Some(after) = &paging.after {
        from = from.max(after.start);
    }
    let query = ViewQuery {
        view: view.name.clone(),
        range: StartRange::new(from, to.max(from)),
        filters,
    };
    Ok((query, paging))
}

async fn query_view(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(params): Query<BTreeMap<String, String>>,
) -> Result<Response, ApiError> {
    let view = state.view(&name)?;
    if params.contains_key("granularity") {
        return Ok(Json(rollup_view(&state, view, params).await?).into_response());
    }
    if let Some(name) = ["exact"].into_iter().find(|p| params.contains_key(*p)) {
        return Err(ApiError::BadParameter {
            name: name.into(),
            problem: "only for rollups: give `granularity` too".into(),
        });
    }
    let (query, paging) = parse_view_query(view, &params)?;
    let mut answer = seam::answer(state.catalog.as_ref(), &state.speed, &query).await?;
    let (rows, next) = page::cut(answer.rows, paging.after.as_ref(), paging.limit);
    answer.rows = rows;
    Ok(Json(ViewRows::new(
        view,
        answer,
        next.map(|c| c.encode()),
        state.speed.watermark(&name),
    ))
    .into_response())
}

/// `GET /v1/views/{name}?granularity=1h|all[&exact=true]`: see [`crate::rollup`].
async fn rollup_view(
    state: &AppState,
    view: &ViewDefinition,
    mut params: BTreeMap<String, String>,
) -> Result<RollupRows, ApiError> {
    let text = params.remove("granularity").unwrap_or_default();
    let granularity =
        Granularity::parse(&text, view).map_err(|problem| ApiError::BadParameter {
            name: "granularity".into(),
            problem,
        })?;
    let exact = match params.remove("exact").as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::BadParameter {
                name: "exact".into(),
                problem: format!("`{other}` is not true or false"),
            });
        }
    };
    if let Some(name) = ["limit", "cursor"]
        .into_iter()
        .find(|p| params.contains_key(*p))
    {
        return Err(ApiError::BadParameter {
            name: name.into(),
            problem: "a rollup answers in one response: narrow the range or coarsen the granularity instead".into(),
        });
    }
    let (mut query, _) = parse_view_query(view, &params)?;
    query.range = granularity.widen(query.range);
    let answer = rollup::states(state.catalog.as_ref(), &state.speed, view, &query).await?;
    let mut rolled = rollup::roll(view, granularity, query.range, answer.rows);
    if rolled.len() > page::MAX_LIMIT {
        return Err(ApiError::BadParameter {
            name: "granularity".into(),
            problem: format!(
                "the rollup has {} rows, more than {}: narrow the range or coarsen the granularity",
                rolled.len(),
                page::MAX_LIMIT
            ),
        });
    }
    if exact {
        let engine = state.sql.as_ref().ok_or_else(|| ApiError::BadParameter {
            name: "exact".into(),
            problem: "this process has no SQL engine to recompute from the archive".into(),
        })?;
        rolled = rollup::exact::recompute(engine, view, granularity, query.range, rolled)
            .await
            .map_err(|e| match e {
                // The query is Tandem's own: a planning failure is a bug, not the caller's.
                rollup::exact::Error::Sql(
                    e @ (sql::Error::Timeout(_)
                    | sql::Error::Memory { .. }
                    | sql::Error::TooManyRows(_)),
                ) => ApiError::Sql(e),
                other => ApiError::Internal(format!("exact rollup: {other}")),
            })?;
    }
    let rows = rolled
        .into_iter()
        .map(|r| RollupBody::new(view, r))
        .collect();
    Ok(RollupRows {
        view: view.name.clone(),
        version: answer.version,
        granularity: text,
        batch_horizon: answer.batch_horizon,
        rows,
    })
}

/// `GET /v1/views/{name}/coverage`.
#[derive(Debug, serde::Serialize)]
struct CoverageBody {
    view: String,
    #[serde(flatten)]
    sources: crate::sources::Sources,
}

async fn view_coverage(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(params): Query<BTreeMap<String, String>>,
) -> Result<Json<CoverageBody>, ApiError> {
    let view = state.view(&name)?;
    let mut range = StartRange::new(EventTime::MIN, EventTime::MAX);
    for (key, value) in &params {
        match key.as_str() {
            "from" => range.from = parse_time("from", value)?,
            "to" => range.to = parse_time("to", value)?,
            other => {
                return Err(ApiError::BadParameter {
                    name: other.to_owned(),
                    problem: "unknown parameter: give from and to".into(),
                });
            }
        }
    }
    let published = state.catalog.get(&name).unwrap_or_default();
    let speed_starts: Vec<EventTime> = state
        .speed
        .query(&name, range)
        .unwrap_or_default()
        .iter()
        .map(|r| r.window.start)
        .collect();
    Ok(Json(CoverageBody {
        view: name.clone(),
        sources: crate::sources::sources(
            range,
            &published.coverage,
            &published.incomplete,
            &speed_starts,
            view.window.slide(),
        ),
    }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobBody {
    view: Option<String>,
    /// RFC 3339 text or epoch milliseconds, checked like query parameters.
    from: Option<serde_json::Value>,
    to: Option<serde_json::Value>,
}

/// A time in a request body: RFC 3339 text or epoch milliseconds, in the supported range.
fn body_time(name: &str, value: Option<&serde_json::Value>) -> Result<Option<EventTime>, ApiError> {
    let text = match value {
        None | Some(serde_json::Value::Null) => return Ok(None),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Number(n)) => n.to_string(),
        Some(other) => {
            return Err(ApiError::BadBody(format!(
                "`{name}` must be an RFC 3339 string or epoch milliseconds, not {other}"
            )));
        }
    };
    parse_time(name, &text).map(Some)
}

async fn submit_job(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<(StatusCode, Json<JobRecord>), ApiError> {
    let body: JobBody = if body.iter().all(u8::is_ascii_whitespace) {
        JobBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::BadBody(e.to_string()))?
    };
    let from = body_time("from", body.from.as_ref())?;
    let to = body_time("to", body.to.as_ref())?;
    let job = state.scheduler.submit(JobRequest {
        view: body.view,
        from,
        to,
        trigger: Trigger::Request,
    })?;
    Ok((StatusCode::ACCEPTED, Json(job)))
}

async fn get_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<JobRecord>, ApiError> {
    state
        .scheduler
        .job(&id)
        .map(Json)
        .ok_or(ApiError::UnknownJob(id))
}

async fn list_jobs(
    State(state): State<AppState>,
    Query(params): Query<BTreeMap<String, String>>,
) -> Result<Json<JobList>, ApiError> {
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
            "view" => view = Some(state.view(value)?.name.as_str()),
            other => {
                return Err(ApiError::BadParameter {
                    name: other.to_owned(),
                    problem: "not a parameter of /v1/jobs; use status or view".into(),
                });
            }
        }
    }
    Ok(Json(JobList {
        jobs: state.scheduler.list(status, view),
    }))
}

async fn cancel_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<JobRecord>, ApiError> {
    Ok(Json(state.scheduler.cancel(&id)?))
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Ready>) {
    let reasons = state.readiness.reasons();
    if reasons.is_empty() {
        (
            StatusCode::OK,
            Json(Ready {
                status: "ready",
                reasons,
            }),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Ready {
                status: "not_ready",
                reasons,
            }),
        )
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
