//! `GET /v1/internal/partials/{view}`: this process's speed worker's partial state, for serving
//! instances that answer for the whole group ([`crate::fleet`]).

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use tandem_shared::coverage::StartRange;
use tandem_shared::time::EventTime;
use tandem_speed_layer::partials;

use super::error::ErrorBody;
use super::{ApiError, AppState};

fn millis(name: &str, text: &str) -> Result<EventTime, ApiError> {
    text.parse::<i64>()
        .map(EventTime)
        .map_err(|_| ApiError::BadParameter {
            name: name.to_owned(),
            problem: format!("`{text}` is not epoch milliseconds"),
        })
}

/// The partial aggregate state of a view's windows on this speed worker, merged over the
/// partitions asked that it owns (named with their ownership epochs), as an Arrow IPC stream. Serving instances merge
/// these from every worker; not meant for end users.
#[utoipa::path(get, path = "/v1/internal/partials/{name}", tag = "internal",
    params(
        ("name" = String, Path, description = "The view"),
        ("from" = Option<i64>, Query, description = "First window start, epoch ms (default: the earliest)"),
        ("to" = Option<i64>, Query, description = "Window starts before this, epoch ms (default: no bound)"),
        ("partitions" = Option<String>, Query, description = "Comma-separated partitions to merge (default: every owned one)"),
    ),
    responses(
        (status = 200, description = "Partials per owned partition",
         content_type = "application/vnd.apache.arrow.stream", body = Vec<u8>),
        (status = 400, description = "A bad parameter", body = ErrorBody),
        (status = 404, description = "No such view, or no speed worker in this process", body = ErrorBody),
    ))]
pub(super) async fn partials_of_view(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(params): Query<BTreeMap<String, String>>,
) -> Result<Response, ApiError> {
    state.view(&name)?;
    let mut range = StartRange::new(EventTime::MIN, EventTime::MAX);
    let mut asked: Option<Vec<i32>> = None;
    for (key, value) in &params {
        match key.as_str() {
            "from" => range.from = millis("from", value)?,
            "to" => range.to = millis("to", value)?,
            "partitions" => {
                let list = value
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(|p| p.trim().parse::<i32>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| ApiError::BadParameter {
                        name: "partitions".into(),
                        problem: format!("`{value}` is not a comma-separated list of partitions"),
                    })?;
                asked = Some(list);
            }
            other => {
                return Err(ApiError::BadParameter {
                    name: other.to_owned(),
                    problem: "unknown parameter: give from, to and partitions".into(),
                });
            }
        }
    }
    if range.from > range.to {
        return Err(ApiError::BadParameter {
            name: "from".into(),
            problem: format!(
                "`from` ({}) is after `to` ({})",
                range.from.millis(),
                range.to.millis()
            ),
        });
    }
    let speed = state
        .speed
        .local()
        .ok_or_else(|| ApiError::NotFound("this process runs no speed worker".into()))?;
    let owned = speed
        .owned_partials(&name, range, asked.as_deref())
        .ok_or_else(|| ApiError::UnknownView(name.clone()))?;
    let body = partials::encode(&owned)
        .map_err(|e| ApiError::Internal(format!("encoding partials: {e}")))?;
    Ok(([(header::CONTENT_TYPE, partials::MEDIA_TYPE)], body).into_response())
}
