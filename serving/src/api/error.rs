//! API errors: a JSON body `{"error": {"code", "message"}}` whose status says whose problem it
//! is. The caller's mistakes are 4xx with a message that says what to change; a transient
//! failure (a full job queue) is 503.

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
    /// No token, or one that matches none configured.
    #[error("{0}")]
    Unauthorized(String),
    /// A token whose scope does not allow the route.
    #[error("{0}")]
    Forbidden(String),
    #[error("the request took longer than {0:?}")]
    TimedOut(std::time::Duration),
    #[error("the request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("{0}")]
    Sql(#[from] crate::sql::Error),
    /// The server failed; the message says where.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// Whose problem the error is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ApiError::Unavailable(_) => ErrorKind::Transient,
            ApiError::Sql(e) => e.kind(),
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
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::TimedOut(_) => (StatusCode::REQUEST_TIMEOUT, "timed_out"),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            ApiError::Sql(e) => {
                use crate::sql::Error;
                match e {
                    Error::Syntax { .. } => (StatusCode::BAD_REQUEST, "syntax"),
                    Error::Plan { .. } => (StatusCode::BAD_REQUEST, "plan"),
                    Error::ReadOnly(_) => (StatusCode::BAD_REQUEST, "read_only"),
                    Error::Execution(_) => (StatusCode::BAD_REQUEST, "query_failed"),
                    Error::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
                    Error::Timeout(_) => (StatusCode::REQUEST_TIMEOUT, "timed_out"),
                    Error::Memory { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "memory_limit"),
                    Error::TooManyRows(_) => (StatusCode::PAYLOAD_TOO_LARGE, "row_limit"),
                    Error::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
                }
            }
        }
    }
}

/// Every error's JSON body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct ErrorDetail<'a> {
    /// A stable, machine-readable code (`bad_parameter`, `unknown_view`, `read_only`, ...).
    code: &'a str,
    /// What went wrong and what to change.
    message: String,
    /// Where in a SQL text the problem is.
    #[serde(skip_serializing_if = "Option::is_none")]
    position: Option<crate::sql::Position>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status();
        let body = ErrorBody {
            error: ErrorDetail {
                code,
                message: self.to_string(),
                position: match &self {
                    ApiError::Sql(e) => e.position(),
                    _ => None,
                },
            },
        };
        if status == StatusCode::UNAUTHORIZED {
            return (
                status,
                [(axum::http::header::WWW_AUTHENTICATE, "Bearer")],
                Json(body),
            )
                .into_response();
        }
        (status, Json(body)).into_response()
    }
}

impl From<crate::access::Denied> for ApiError {
    fn from(denied: crate::access::Denied) -> Self {
        use crate::access::Denied;
        match denied {
            Denied::Missing => {
                ApiError::Unauthorized("this route needs `Authorization: Bearer <token>`".into())
            }
            Denied::Unknown => ApiError::Unauthorized("the bearer token is not valid".into()),
            Denied::Scope { token, needed } => ApiError::Forbidden(format!(
                "token `{token}` may not do this: it needs the `{needed}` scope"
            )),
        }
    }
}

impl From<tandem_batch_layer::SubmitError> for ApiError {
    fn from(err: tandem_batch_layer::SubmitError) -> Self {
        use tandem_batch_layer::SubmitError;
        if err.kind().is_retryable() {
            return ApiError::Unavailable(err.to_string());
        }
        match err {
            SubmitError::UnknownView(v) => ApiError::UnknownView(v),
            e => ApiError::BadParameter {
                name: "from".into(),
                problem: e.to_string(),
            },
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
            // A published segment that cannot be read: the store is failing, or (internal) a
            // segment is damaged; either way the caller can only try again later.
            e @ crate::seam::Error::Batch { .. } => ApiError::Unavailable(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_class_follows_whose_problem_it_is() {
        let errors = [
            ApiError::UnknownView("v".into()),
            ApiError::UnknownJob("j".into()),
            ApiError::BadParameter {
                name: "from".into(),
                problem: "p".into(),
            },
            ApiError::BadBody("b".into()),
            ApiError::Unavailable("queue full".into()),
            ApiError::Conflict("c".into()),
            ApiError::NotFound("/x".into()),
            ApiError::Unauthorized("u".into()),
            ApiError::Forbidden("f".into()),
            ApiError::TimedOut(std::time::Duration::from_secs(1)),
            ApiError::TooLarge(10),
        ];
        for err in errors {
            let (status, _) = err.status();
            match err.kind() {
                ErrorKind::User => assert!(status.is_client_error(), "{err:?}: {status}"),
                ErrorKind::Transient => assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE),
                ErrorKind::Internal => assert!(status.is_server_error(), "{err:?}: {status}"),
            }
        }
        let full = tandem_batch_layer::SubmitError::QueueFull { capacity: 2 };
        assert!(matches!(ApiError::from(full), ApiError::Unavailable(_)));
    }
}
