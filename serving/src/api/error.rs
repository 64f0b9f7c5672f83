//! API errors: a JSON body `{"error": {"code", "message"}}` whose status says whose problem it
//! is. The caller's mistakes are 4xx with a message that says what to change; a transient
//! failure is 503; an internal one is 500 with the details logged, never returned.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tandem_shared::error::ErrorKind;

/// API errors.
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
    /// Transient: try again later (a full job queue, say).
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Conflict(String),
    #[error("no route for {0}")]
    NotFound(String),
    /// A bug or corrupt state: the detail is logged, the caller gets a generic message.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// Whose problem the error is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ApiError::Unavailable(_) => ErrorKind::Transient,
            ApiError::Internal(_) => ErrorKind::Internal,
            _ => ErrorKind::User,
        }
    }

    fn status(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::UnknownView(_) => (StatusCode::NOT_FOUND, "unknown_view"),
            ApiError::UnknownJob(_) => (StatusCode::NOT_FOUND, "unknown_job"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::BadParameter { .. } => (StatusCode::BAD_REQUEST, "bad_parameter"),
            ApiError::BadBody(_) => (StatusCode::BAD_REQUEST, "bad_body"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

#[derive(Debug, Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Debug, Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(detail) = &self {
            tracing::error!(%detail, "internal error answering a request");
        }
        let (status, code) = self.status();
        let body = ErrorBody {
            error: ErrorDetail {
                code,
                message: self.to_string(),
            },
        };
        (status, Json(body)).into_response()
    }
}

impl From<tandem_batch_layer::SubmitError> for ApiError {
    fn from(err: tandem_batch_layer::SubmitError) -> Self {
        use tandem_batch_layer::SubmitError;
        match err {
            SubmitError::UnknownView(v) => ApiError::UnknownView(v),
            e @ SubmitError::EmptyRange { .. } => ApiError::BadParameter {
                name: "from".into(),
                problem: e.to_string(),
            },
            e @ SubmitError::QueueFull { .. } => ApiError::Unavailable(e.to_string()),
        }
    }
}

impl From<tandem_batch_layer::CancelError> for ApiError {
    fn from(err: tandem_batch_layer::CancelError) -> Self {
        use tandem_batch_layer::CancelError;
        match err {
            CancelError::UnknownJob(id) => ApiError::UnknownJob(id),
            e @ CancelError::Finished { .. } => ApiError::Conflict(e.to_string()),
        }
    }
}

impl From<crate::seam::Error> for ApiError {
    fn from(err: crate::seam::Error) -> Self {
        match err {
            crate::seam::Error::UnknownView(v) => ApiError::UnknownView(v),
        }
    }
}
