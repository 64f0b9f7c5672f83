//! The probes and metrics: `/healthz`, `/readyz`, `/metrics`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::response::{Health, Ready};
use super::{ApiError, AppState};

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "probes",
    responses((status = 200, description = "Alive", body = Health)))]
pub(super) async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Readiness: 503 with the reasons while a component is not ready.
#[utoipa::path(get, path = "/readyz", tag = "probes",
    responses(
        (status = 200, description = "Ready", body = Ready),
        (status = 503, description = "Not ready, with the reasons", body = Ready),
    ))]
pub(super) async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Ready>) {
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

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "probes",
    responses(
        (status = 200, description = "Prometheus text", content_type = "text/plain", body = String),
        (status = 503, description = "Metrics are not enabled", body = super::error::ErrorBody),
    ))]
pub(super) async fn render_metrics(State(state): State<AppState>) -> Response {
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
