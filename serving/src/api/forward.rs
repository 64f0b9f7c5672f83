//! `/v1/jobs` on a process that does not hold the scheduler lease: the request is forwarded to
//! the process that does, and its answer returned as is.
//!
//! ```text
//!  /v1/jobs… ─► lease standing: held here (or no lease in use) ─► the local scheduler
//!                               another process ─► same method, path, body, signed ─► its API
//!                               vacant ──────────► 503: no scheduler is running
//! ```
//!
//! A forwarded request carries [`FORWARDED`]; a process that receives one without holding the
//! lease (it was just lost) answers 503 rather than forwarding again. It does not carry the
//! user's bearer token: the address comes from the store, so the request is signed with the
//! cluster token instead, naming the token that allowed it here
//! ([`crate::access::ForwardKey`]).

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tandem_store::lease::Standing;

use super::{ApiError, AppState};

use crate::access::{Authorized, FORWARDED};

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
    let token = parts
        .extensions
        .get::<Authorized>()
        .and_then(|a| a.0.clone());
    let marker = match &state.forward_key {
        Some(key) => {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
            key.sign(parts.method.as_str(), path, now_ms, token.as_deref(), &body)
        }
        // No cluster token: the API has no tokens either (start-up refuses otherwise).
        None => "1".to_owned(),
    };
    let mut outgoing = state
        .forwarder
        .request(method, &url)
        .header(FORWARDED, marker)
        .body(body);
    if let Some(value) = parts.headers.get(header::CONTENT_TYPE) {
        outgoing = outgoing.header(header::CONTENT_TYPE.as_str(), value.as_bytes());
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
