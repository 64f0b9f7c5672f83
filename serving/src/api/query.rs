//! `POST /v1/sql`: read-only SQL over the views and the archive.

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::error::ErrorBody;
use super::{ApiError, AppState};
use crate::sql;
use crate::sql::render::JsonAnswer;

/// The body of `POST /v1/sql`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SqlRequest {
    sql: String,
}

/// Read-only SQL over the views and `events`; `Accept` picks JSON (default), CSV or an Arrow IPC
/// stream. In JSON a decimal is a string of its exact digits with the column's scale
/// (`"0.30"`); CSV and Arrow carry the same digits.
#[utoipa::path(post, path = "/v1/sql", tag = "sql",
    request_body(content = SqlRequest),
    responses(
        (status = 200, description = "The answer", content(
            (JsonAnswer = "application/json"),
            (String = "text/csv"),
            (Vec<u8> = "application/vnd.apache.arrow.stream"),
        )),
        (status = 400, description = "A syntax, planning or read-only error (with its position)", body = ErrorBody),
        (status = 503, description = "SQL is not set up in this process, or every query slot is taken (`http.max_concurrent_queries`): retry later", body = ErrorBody),
        (status = 408, description = "The query took longer than `http.query_timeout`", body = ErrorBody),
        (status = 413, description = "The query needed more than `http.query_memory` (its operators, the values its functions build, the answer and its rendering) or `http.query_rows`", body = ErrorBody),
    ))]
pub(super) async fn run_sql(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let engine = state
        .sql
        .as_ref()
        .ok_or_else(|| ApiError::Unavailable("SQL is not set up in this process".into()))?;
    let request: SqlRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadBody(e.to_string()))?;
    let accept = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let format = sql::render::Format::from_accept(accept);
    let body = engine.render(&request.sql, format).await?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, format.content_type())],
        body,
    )
        .into_response())
}
