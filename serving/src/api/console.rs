//! `GET /`: the web console, one page embedded in the binary (its script and styles inline, no
//! asset from anywhere else). It reads the same API a user would: views and their horizon and
//! drift, a view's rows live from its stream as a chart per group (batch and speed windows
//! drawn differently, the batch horizon marked) and a table, jobs with progress, submit and
//! cancel, and dead-letter and late counts from `/metrics`.

use axum::http::header;
use axum::response::{Html, IntoResponse};

/// The page.
const PAGE: &str = include_str!("console.html");

/// Only this origin: the page can fetch nothing from elsewhere, even by mistake, and no page
/// of another site can frame it (clickjacking its job buttons).
const POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                      connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'";

pub(super) async fn page() -> impl IntoResponse {
    ([(header::CONTENT_SECURITY_POLICY, POLICY)], Html(PAGE))
}
