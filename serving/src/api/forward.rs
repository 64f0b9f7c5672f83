//! `/v1/jobs` on a process that does not hold the scheduler lease: the request is forwarded to
//! the process that does, and its answer returned as is.
//!
//! ```text
//!  /v1/jobs… ─► lease standing: held here (or no lease in use) ─► the local scheduler
//!                               another process ─► same method, path, body, token ─► its API
//!                               vacant ──────────► 503: no scheduler is running
//! ```
//!
//! A forwarded request carries [`FORWARDED`]; a process that receives one without holding the
//! lease (it was just lost) answers 503 rather than forwarding again.

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tandem_store::lease::Standing;

use super::{ApiError, AppState};

/// Marks a request forwarded by another Tandem process.
pub(super) const FORWARDED: &str = "x-tandem-forwarded";

/// Where job requests go now.
enum Route {
    Here,
    To(String),
    Nobody,
}

fn route(state: &AppState) -> Route {
    let Some((standing, clock)) = &state.jobs_leader else {
        return Route::Here;
    };
    let now = clock.now().millis();
    match &*standing.borrow() {
        s if s.holds(now) => Route::Here,
        Standing::Other { holder, .. } if now < holder.expires_ms => {
            Route::To(holder.address.clone())
        }
        _ => Route::Nobody,
    }
}

/// Middleware: forwards `/v1/jobs` requests to the lease holder.
pub(super) async fn jobs_to_leader(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if !request.uri().path().starts_with("/v1/jobs") {
        return next.run(request).await;
    }
    let nobody = || {
        ApiError::Unavailable(
            "no batch scheduler is running: start a process with --role batch, or retry while \
             the scheduler lease moves"
                .into(),
        )
        .into_response()
    };
    match route(&state) {
        Route::Here => next.run(request).await,
        Route::Nobody => nobody(),
        Route::To(_) if request.headers().contains_key(FORWARDED) => nobody(),
        Route::To(address) => forward(&state, &address, request)
            .await
            .unwrap_or_else(IntoResponse::into_response),
    }
}

async fn forward(state: &AppState, address: &str, request: Request) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or(parts.uri.path(), |p| p.as_str());
    let url = format!("{}{path}", address.trim_end_matches('/'));
    // The front door already bounded the body.
    let body = to_bytes(body, usize::MAX)
        .await
        .map_err(|e| ApiError::BadBody(e.to_string()))?;
    let method = reqwest::Method::from_bytes(parts.method.as_str().as_bytes())
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut outgoing = state
        .forwarder
        .request(method, &url)
        .header(FORWARDED, "1")
        .body(body);
    for name in [header::AUTHORIZATION, header::CONTENT_TYPE] {
        if let Some(value) = parts.headers.get(&name) {
            outgoing = outgoing.header(name.as_str(), value.as_bytes());
        }
    }
    let answer = outgoing.send().await.map_err(|e| {
        ApiError::Unavailable(format!(
            "the batch scheduler at {address} did not answer: {e}"
        ))
    })?;
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = answer
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok());
    let bytes = answer.bytes().await.map_err(|e| {
        ApiError::Unavailable(format!(
            "the batch scheduler at {address} did not answer: {e}"
        ))
    })?;
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    if let Some(ct) = content_type {
        response.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    Ok(response)
}
