//! `/v1/jobs`: recompute jobs on demand, their records, cancellation.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use tandem_batch_layer::{JobRecord, JobRequest, JobStatus, Trigger};
use tandem_shared::time::EventTime;

use super::error::ErrorBody;
use super::response::JobList;
use super::{ApiError, AppState, parse_time};

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
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

/// Queues a recompute job (admin).
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs",
    request_body(content = Option<JobBody>, description = "What to recompute; empty for every view's default range"),
    responses(
        (status = 202, description = "Queued", body = JobRecord),
        (status = 400, description = "A bad body", body = ErrorBody),
        (status = 404, description = "No such view", body = ErrorBody),
        (status = 503, description = "The job queue is full", body = ErrorBody),
    ))]
pub(super) async fn submit_job(
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

/// One job's record.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "The job")),
    responses(
        (status = 200, description = "The job", body = JobRecord),
        (status = 404, description = "No such job", body = ErrorBody),
    ))]
pub(super) async fn get_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<JobRecord>, ApiError> {
    state
        .scheduler
        .job(&id)
        .map(Json)
        .ok_or(ApiError::UnknownJob(id))
}

/// Job records, newest first.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs",
    params(
        ("status" = Option<JobStatus>, Query, description = "Only jobs in this state"),
        ("view" = Option<String>, Query, description = "Only jobs of this view"),
    ),
    responses(
        (status = 200, description = "The jobs", body = JobList),
        (status = 400, description = "A bad parameter", body = ErrorBody),
        (status = 404, description = "No such view", body = ErrorBody),
    ))]
pub(super) async fn list_jobs(
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

/// Cancels a queued or running job (admin).
#[utoipa::path(delete, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "The job")),
    responses(
        (status = 200, description = "The cancelled job", body = JobRecord),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 409, description = "The job has already finished", body = ErrorBody),
    ))]
pub(super) async fn cancel_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<JobRecord>, ApiError> {
    Ok(Json(state.scheduler.cancel(&id)?))
}
