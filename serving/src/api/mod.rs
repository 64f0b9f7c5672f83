//! The HTTP API. Handlers only parse requests and render responses; answering a view query is
//! the seam's job ([`crate::seam::answer`]), jobs are the scheduler's.
//!
//! | method | path | |
//! |---|---|---|
//! | GET | `/v1/views` | configured views, their batch horizon and drift |
//! | GET | `/v1/views/{name}?from=&to=&DIM=VALUE&limit=&cursor=` | merged rows of windows starting in `[from, to)`, a page at a time |
//! | GET | `/v1/views/{name}?granularity=1h\|all&exact=&from=&to=&DIM=VALUE` | a rollup of a tumbling view ([`crate::rollup`]) |
//! | GET | `/v1/views/{name}/coverage?from=&to=` | window starts answered by the batch layer (exact or incomplete) and by the speed layer |
//! | GET | `/v1/views/{name}/stream?from=&to=&DIM=VALUE` | Server-Sent Events: `row` (new or changed, same JSON as a row above) and `removed` |
//! | POST | `/v1/jobs` | queue a recompute job `{"view"?, "from"?, "to"?}` |
//! | GET | `/v1/jobs?status=&view=`, `/v1/jobs/{id}` | job records |
//! | DELETE | `/v1/jobs/{id}` | cancel a queued or running job |
//! | POST | `/v1/sql` | read-only SQL `{"sql"}` over the views and `events`: JSON, CSV or Arrow IPC by `Accept` |
//! | GET | `/v1/internal/partials/{name}?from=&to=` | this process's speed worker's partial state per owned partition (Arrow IPC), for serving instances ([`crate::fleet`]) |
//! | GET | `/metrics` | Prometheus text |
//! | GET | `/healthz` | liveness |
//! | GET | `/readyz` | readiness: 503 with the reasons while a component is not ready |
//! | GET | `/` | the web console (embedded): views, live charts, jobs |
//! | GET | `/openapi.json` | this API's OpenAPI 3.1 description, generated from the handlers |
//! | GET | `/docs` | Swagger UI over it (embedded in the binary) |
//!
//! Errors are JSON `{"error": {"code", "message"}}` (see [`ApiError`]). With tokens
//! configured, every route but the probes needs a bearer token ([`crate::access`]).

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::PrometheusHandle;
use tandem_batch_layer::{Scheduler, ViewCatalog};
use tandem_shared::clock::Clock;
use tandem_shared::time::EventTime;
use tandem_shared::view::ViewDefinition;
use tandem_store::lease::Standing;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use utoipa_swagger_ui::SwaggerUi;

use crate::access::{self, HttpLimits, HttpPolicy};
use crate::fleet::SpeedSide;
use crate::readiness::Readiness;
use crate::reconcile::Reconciler;
use crate::sql::SqlEngine;

mod console;
mod error;
mod forward;
mod internal;
mod jobs;
mod openapi;
mod probes;
mod query;
pub(crate) mod response;
mod stream;
#[cfg(test)]
mod tests;
mod views;

pub use error::ApiError;
pub use response::{
    CoverageBody, Health, JobList, Ready, RollupBody, RollupRows, RowBody, ViewAnswer, ViewList,
    ViewRows, ViewSummary,
};

/// Everything the handlers share. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    catalog: Arc<ViewCatalog>,
    speed: SpeedSide,
    scheduler: Scheduler,
    reconciler: Reconciler,
    metrics: Option<PrometheusHandle>,
    readiness: Readiness,
    sql: Option<SqlEngine>,
    /// Fires when the HTTP server stops: open streams end, so that shutdown does not wait on
    /// them.
    shutdown: CancellationToken,
    /// Who runs batch jobs, when several processes could: `/v1/jobs` goes to the holder of the
    /// scheduler lease. `None`: this process's scheduler.
    jobs_leader: Option<(watch::Receiver<Standing>, Arc<dyn Clock>)>,
    /// Client for forwarded job requests.
    forwarder: reqwest::Client,
    /// Signs forwarded job requests (from the cluster token).
    forward_key: Option<crate::access::ForwardKey>,
    /// Slots of open `/stream` responses (`http.max_streams`), and their number.
    streams: Arc<tokio::sync::Semaphore>,
    streams_cap: usize,
}

impl AppState {
    /// The API over `catalog` (which also names the views) and `speed`; `metrics` renders
    /// `/metrics` when given; `readiness` answers `/readyz`.
    pub fn new(
        catalog: Arc<ViewCatalog>,
        speed: impl Into<SpeedSide>,
        scheduler: Scheduler,
        reconciler: Reconciler,
        metrics: Option<PrometheusHandle>,
        readiness: Readiness,
    ) -> Self {
        Self {
            catalog,
            speed: speed.into(),
            scheduler,
            reconciler,
            metrics,
            readiness,
            sql: None,
            shutdown: CancellationToken::new(),
            jobs_leader: None,
            forward_key: None,
            forwarder: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(30))
                .build()
                .unwrap_or_default(),
            streams: Arc::new(tokio::sync::Semaphore::new(
                HttpLimits::default().max_streams,
            )),
            streams_cap: HttpLimits::default().max_streams,
        }
    }

    /// At most `cap` open `/stream` responses.
    fn with_max_streams(mut self, cap: usize) -> Self {
        self.streams = Arc::new(tokio::sync::Semaphore::new(cap));
        self.streams_cap = cap;
        self
    }

    /// Sends `/v1/jobs` requests to the holder of the scheduler lease (`standing`), unless it
    /// is this process.
    pub fn with_jobs_leader(
        mut self,
        standing: watch::Receiver<Standing>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        self.jobs_leader = Some((standing, clock));
        self
    }

    /// Ends open `/stream` responses when `token` fires (the server's stop token).
    pub fn with_shutdown(mut self, token: CancellationToken) -> Self {
        self.shutdown = token;
        self
    }

    /// Answers `POST /v1/sql` with `engine` (without one, the route says SQL is not set up).
    pub fn with_sql(mut self, engine: SqlEngine) -> Self {
        self.sql = Some(engine);
        self
    }

    fn view(&self, name: &str) -> Result<&ViewDefinition, ApiError> {
        self.catalog
            .view(name)
            .ok_or_else(|| ApiError::UnknownView(name.to_owned()))
    }
}

/// The API behind `policy`'s access rules and limits.
pub fn router(state: AppState, policy: &HttpPolicy) -> Router {
    let mut state = state.with_max_streams(policy.limits.max_streams);
    state.forward_key = policy.forward_key.clone();
    front_door(routes(state), policy)
}

/// Access rules and limits around `routes` (any routes: tests wrap a slow one).
fn front_door(routes: Router, policy: &HttpPolicy) -> Router {
    let limits = policy.limits.clone();
    routes
        .layer(middleware::from_fn_with_state(
            access::Gate {
                access: policy.access.clone(),
                loopback_only: policy.loopback_only,
                forward_key: policy.forward_key.clone(),
            },
            access::guard,
        ))
        .layer(DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(limits.max_body_bytes))
        .layer(GlobalConcurrencyLimitLayer::new(
            limits.max_concurrent_requests.max(1),
        ))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ))
        .layer(middleware::map_response_with_state(limits, limit_errors))
        .layer(middleware::map_response(protective_headers))
}

/// Headers on every answer: no page of another site may frame the console (clickjacking), and
/// no answer is sniffed into another type.
async fn protective_headers(mut response: Response) -> Response {
    use axum::http::header::{HeaderValue, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS};
    let headers = response.headers_mut();
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers
        .entry(axum::http::header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static("frame-ancestors 'none'"));
    response
}

/// The limit layers answer with a bare status; give those answers the API's JSON error body.
async fn limit_errors(State(limits): State<HttpLimits>, response: Response) -> Response {
    let json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if json {
        return response;
    }
    match response.status() {
        StatusCode::REQUEST_TIMEOUT => ApiError::TimedOut(limits.request_timeout).into_response(),
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge(limits.max_body_bytes).into_response(),
        _ => response,
    }
}

fn routes(state: AppState) -> Router {
    let (router, document) = openapi::documented();
    router
        .merge(SwaggerUi::new(openapi::DOCS).url(openapi::DOCUMENT, document))
        .route("/", axum::routing::get(console::page))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            forward::jobs_to_leader,
        ))
        .fallback(|uri: axum::http::Uri| async move { ApiError::NotFound(uri.path().to_owned()) })
        .with_state(state)
}

fn parse_time(name: &str, text: &str) -> Result<EventTime, ApiError> {
    EventTime::parse(text).map_err(|e| ApiError::BadParameter {
        name: name.to_owned(),
        problem: e.to_string(),
    })
}
