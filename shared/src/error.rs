//! Whose problem an error is.
//!
//! Every error enum that crosses a layer boundary says which of three kinds each variant is, so the
//! code that receives it can act without reading messages: the job scheduler retries only
//! transient failures, and the HTTP layer answers 4xx for the user's mistakes and 503 for
//! transient ones.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Whose problem an error is, which decides what to do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ErrorKind {
    /// The user's input or configuration: a bad request, a view expression that fails on the
    /// data. Retrying cannot help; the message says what to change.
    User,
    /// The environment: the object store or the broker failed or timed out. A retry may succeed.
    Transient,
    /// A bug or corrupt state written by Tandem itself. Retrying cannot help.
    Internal,
}

impl ErrorKind {
    /// Whether the same operation may succeed if tried again.
    pub fn is_retryable(self) -> bool {
        self == ErrorKind::Transient
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::User => "user",
            ErrorKind::Transient => "transient",
            ErrorKind::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
