//! The router against an in-memory store, without a socket (`oneshot`).

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use object_store::memory::InMemory;
use serde_json::{Value, json};
use tandem_batch_layer::{Recompute, Scheduler, SchedulerConfig, ViewCatalog};
use tandem_shared::clock::SystemClock;
use tandem_shared::testing;
use tandem_shared::time::Span;
use tandem_speed_layer::SpeedLayer;
use tower::ServiceExt;

use super::{AppState, router};
use crate::access::{Access, HttpLimits, HttpPolicy, Scope, Token};
use crate::readiness::Readiness;
use crate::reconcile::Reconciler;

fn app() -> Router {
    app_with(&HttpPolicy::default())
}

fn app_with(policy: &HttpPolicy) -> Router {
    app_with_readiness(policy, Readiness::default())
}

fn app_with_readiness(policy: &HttpPolicy, readiness: Readiness) -> Router {
    router(state(readiness).0, policy)
}

/// The API's state over an in-memory store, with the store and schema it was built from.
fn state(
    readiness: Readiness,
) -> (
    AppState,
    Arc<dyn object_store::ObjectStore>,
    Arc<tandem_shared::schema::EventSchema>,
) {
    let schema = testing::orders_schema();
    let views = [
        testing::view(
            &schema,
            "orders_by_city",
            testing::tumbling("1m"),
            &["city"],
            Some("event_type = 'order_placed'"),
            &["count(*) AS orders", "sum(amount) AS revenue"],
        ),
        testing::view(
            &schema,
            "events_by_type",
            testing::tumbling("1m"),
            &["event_type"],
            None,
            &["count(*) AS events", "count(DISTINCT user_id) AS users"],
        ),
    ];
    let store: Arc<dyn object_store::ObjectStore> = Arc::new(InMemory::new());
    let catalog = Arc::new(ViewCatalog::new(Arc::clone(&store), views.clone()));
    let speed = SpeedLayer::compile(&views, &schema).unwrap();
    let recompute = Arc::new(Recompute::new(
        Arc::clone(&store),
        Arc::clone(&schema),
        "orders",
        Span::from_millis(1000),
        Arc::clone(&catalog),
        Arc::new(SystemClock),
    ));
    let scheduler = Scheduler::new(
        recompute,
        SchedulerConfig {
            queue_capacity: 2,
            ..Default::default()
        },
    )
    .unwrap();
    let reconciler = Reconciler::new(Arc::clone(&catalog), speed.clone());
    (
        AppState::new(catalog, speed, scheduler, reconciler, None, readiness),
        store,
        schema,
    )
}

async fn call(app: &Router, method: &str, uri: &str, body: &str) -> (StatusCode, Value) {
    call_as(app, None, method, uri, body).await
}

async fn call_as(
    app: &Router,
    token: Option<&str>,
    method: &str,
    uri: &str,
    body: &str,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request.body(Body::from(body.to_owned())).unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn lists_views_and_answers_an_empty_view() {
    let app = app();
    let (status, body) = call(&app, "GET", "/v1/views", "").await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<_> = body["views"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].clone())
        .collect();
    assert_eq!(names, [json!("events_by_type"), json!("orders_by_city")]);
    let (status, body) = call(
        &app,
        "GET",
        "/v1/views/orders_by_city?city=Chennai&from=0&to=2026-11-21T10:00:00Z",
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["rows"], json!([]));
    assert_eq!(body["batch_horizon"], Value::Null);
}

#[tokio::test]
async fn bad_requests_get_json_errors() {
    let app = app();
    for (method, uri, body, status, code) in [
        (
            "GET",
            "/v1/views/nope",
            "",
            StatusCode::NOT_FOUND,
            "unknown_view",
        ),
        (
            "GET",
            "/v1/views/orders_by_city?from=noon",
            "",
            StatusCode::BAD_REQUEST,
            "bad_parameter",
        ),
        (
            "GET",
            "/v1/views/orders_by_city?from=10&to=5",
            "",
            StatusCode::BAD_REQUEST,
            "bad_parameter",
        ),
        (
            "GET",
            "/v1/views/orders_by_city?country=IN",
            "",
            StatusCode::BAD_REQUEST,
            "bad_parameter",
        ),
        (
            "POST",
            "/v1/jobs",
            "{\"view\": 3}",
            StatusCode::BAD_REQUEST,
            "bad_body",
        ),
        (
            "POST",
            "/v1/jobs",
            "{\"views\": \"x\"}",
            StatusCode::BAD_REQUEST,
            "bad_body",
        ),
        (
            "POST",
            "/v1/jobs",
            "{\"view\": \"nope\"}",
            StatusCode::NOT_FOUND,
            "unknown_view",
        ),
        (
            "POST",
            "/v1/jobs",
            "{\"from\": 10, \"to\": 5}",
            StatusCode::BAD_REQUEST,
            "bad_parameter",
        ),
        (
            "GET",
            "/v1/views/orders_by_city?limit=0",
            "",
            StatusCode::BAD_REQUEST,
            "bad_parameter",
        ),
        (
            "GET",
            "/v1/views/orders_by_city?limit=100001",
            "",
            StatusCode::BAD_REQUEST,
            "bad_parameter",
        ),
        (
            "GET",
            "/v1/views/orders_by_city?cursor=nothex",
            "",
            StatusCode::BAD_REQUEST,
            "bad_parameter",
        ),
        (
            "POST",
            "/v1/jobs",
            "{\"from\": -9223372036854775808}",
            StatusCode::BAD_REQUEST,
            "bad_parameter",
        ),
        (
            "POST",
            "/v1/jobs",
            "{\"to\": \"+275760-09-13T00:00:00Z\"}",
            StatusCode::BAD_REQUEST,
            "bad_parameter",
        ),
        (
            "POST",
            "/v1/jobs",
            "{\"from\": true}",
            StatusCode::BAD_REQUEST,
            "bad_body",
        ),
        (
            "GET",
            "/v1/views/orders_by_city?from=99999999999999999",
            "",
            StatusCode::BAD_REQUEST,
            "bad_parameter",
        ),
        (
            "GET",
            "/v1/jobs/123",
            "",
            StatusCode::NOT_FOUND,
            "unknown_job",
        ),
        (
            "GET",
            "/v2/anything",
            "",
            StatusCode::NOT_FOUND,
            "not_found",
        ),
    ] {
        let (got, body) = call(&app, method, uri, body).await;
        assert_eq!(got, status, "{method} {uri}: {body}");
        assert_eq!(body["error"]["code"], code, "{method} {uri}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
}

#[tokio::test]
async fn jobs_are_queued_listed_and_refused_when_the_queue_is_full() {
    let app = app();
    let (status, job) = call(&app, "POST", "/v1/jobs", "").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(job["status"], "queued");
    let id = job["id"].as_str().unwrap().to_owned();
    let (status, got) = call(&app, "GET", &format!("/v1/jobs/{id}"), "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["id"], json!(id));
    let (_, second) = call(
        &app,
        "POST",
        "/v1/jobs",
        "{\"view\": \"orders_by_city\", \"from\": \"2026-11-21T10:00:00Z\"}",
    )
    .await;
    assert_eq!(second["view"], "orders_by_city");
    assert_eq!(second["from"], "2026-11-21T10:00:00Z");
    // The scheduler is not running and holds two jobs: the third is refused.
    let (status, body) = call(&app, "POST", "/v1/jobs", "{}").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let (_, list) = call(&app, "GET", "/v1/jobs", "").await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 2);
    assert_eq!(list["jobs"][0]["id"], second["id"], "newest first");
    let (_, list) = call(
        &app,
        "GET",
        "/v1/jobs?view=orders_by_city&status=queued",
        "",
    )
    .await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1);
    let (status, _) = call(&app, "GET", "/v1/jobs?status=done", "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Cancelling a queued job; cancelling it again is a conflict.
    let (status, cancelled) = call(&app, "DELETE", &format!("/v1/jobs/{id}"), "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cancelled["status"], "cancelled");
    let (status, body) = call(&app, "DELETE", &format!("/v1/jobs/{id}"), "").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, _) = call(&app, "DELETE", "/v1/jobs/nope", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn with_tokens_every_route_but_the_probes_needs_one_of_enough_scope() {
    let policy = HttpPolicy {
        access: Access::with_tokens(vec![
            Token::from_secret("dashboards", Scope::Read, "r-token").unwrap(),
            Token::from_secret("ops", Scope::Admin, "a-token").unwrap(),
        ]),
        limits: HttpLimits::default(),
        loopback_only: false,
        forward_key: None,
    };
    let app = app_with(&policy);
    for (token, method, uri, status, code) in [
        (None, "GET", "/healthz", StatusCode::OK, ""),
        (
            None,
            "GET",
            "/v1/views",
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            None,
            "GET",
            "/metrics",
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            Some("nope"),
            "GET",
            "/v1/views",
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (Some("r-token"), "GET", "/v1/views", StatusCode::OK, ""),
        (Some("r-token"), "GET", "/v1/jobs", StatusCode::OK, ""),
        (
            Some("r-token"),
            "POST",
            "/v1/jobs",
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            Some("r-token"),
            "DELETE",
            "/v1/jobs/x",
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            None,
            "POST",
            "/v1/jobs",
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            Some("a-token"),
            "POST",
            "/v1/jobs",
            StatusCode::ACCEPTED,
            "",
        ),
        (Some("a-token"), "GET", "/v1/views", StatusCode::OK, ""),
    ] {
        let (got, body) = call_as(&app, token, method, uri, "").await;
        assert_eq!(got, status, "{token:?} {method} {uri}: {body}");
        if !code.is_empty() {
            assert_eq!(body["error"]["code"], code, "{method} {uri}: {body}");
            let message = body["error"]["message"].as_str().unwrap_or_default();
            assert!(
                !message.contains("r-token") && !message.contains("a-token"),
                "{message}"
            );
        }
    }
}

#[tokio::test]
async fn an_oversized_body_is_a_json_413() {
    let policy = HttpPolicy {
        access: Access::open(),
        limits: HttpLimits {
            max_body_bytes: 64,
            ..HttpLimits::default()
        },
        loopback_only: false,
        forward_key: None,
    };
    let app = app_with(&policy);
    let body = format!("{{\"view\": \"{}\"}}", "x".repeat(200));
    let (status, got) = call(&app, "POST", "/v1/jobs", &body).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{got}");
    assert_eq!(got["error"]["code"], "too_large");
    let (status, _) = call(&app, "POST", "/v1/jobs", "{}").await;
    assert_eq!(status, StatusCode::ACCEPTED, "a small body still passes");
}

#[tokio::test]
async fn a_request_slower_than_the_timeout_is_a_json_408() {
    use axum::routing::get;
    let limits = HttpLimits {
        request_timeout: std::time::Duration::from_millis(20),
        ..HttpLimits::default()
    };
    // The real routes answer at once; a slow route behind the same front door shows it.
    let slow = Router::new().route(
        "/slow",
        get(|| async {
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            "late"
        }),
    );
    let slow = super::front_door(
        slow,
        &HttpPolicy {
            access: Access::open(),
            limits,
            loopback_only: false,
            forward_key: None,
        },
    );
    let (status, body) = call(&slow, "GET", "/slow", "").await;
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
    assert_eq!(body["error"]["code"], "timed_out");
}

#[tokio::test]
async fn readyz_is_503_with_the_reasons_until_every_component_is_ready() {
    let readiness = Readiness::new(["speed", "storage"]);
    let policy = HttpPolicy {
        access: Access::with_tokens(vec![Token::from_secret("t", Scope::Read, "v").unwrap()]),
        limits: HttpLimits::default(),
        loopback_only: false,
        forward_key: None,
    };
    let app = app_with_readiness(&policy, readiness.clone());
    // Open even with tokens configured.
    let (status, body) = call(&app, "GET", "/readyz", "").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["reasons"].as_array().unwrap().len(), 2);
    readiness.ready("speed");
    readiness.not_ready("storage", "object store unreachable: connection refused");
    let (status, body) = call(&app, "GET", "/readyz", "").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body["reasons"],
        json!([{"component": "storage", "reason": "object store unreachable: connection refused"}])
    );
    readiness.ready("storage");
    let (status, body) = call(&app, "GET", "/readyz", "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "ready");
}

#[tokio::test]
async fn sql_answers_queries_in_three_formats_and_refuses_the_rest() {
    let (state, store, schema) = state(Readiness::default());
    let engine = crate::sql::SqlEngine::new(
        Arc::clone(&state.catalog),
        Some(Arc::new(state.speed.clone())),
        store,
        "orders",
        schema,
        crate::sql::SqlLimits::default(),
    )
    .await
    .unwrap();
    let read = Token::from_secret("dashboards", Scope::Read, "read-secret").unwrap();
    let policy = HttpPolicy {
        access: Access::with_tokens(vec![read]),
        limits: HttpLimits::default(),
        loopback_only: false,
        forward_key: None,
    };
    let app = router(state.with_sql(engine), &policy);
    let sql = |q: &str| json!({ "sql": q }).to_string();
    let query = sql("SELECT count(*) AS n, 'x' AS s FROM events");

    // A read token may query; no token may not.
    let (status, _) = call(&app, "POST", "/v1/sql", &query).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = call_as(&app, Some("read-secret"), "POST", "/v1/sql", &query).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"columns": [{"name": "n", "type": "Int64"}, {"name": "s", "type": "Utf8"}], "rows": [[0, "x"]]})
    );

    // CSV and Arrow IPC by Accept.
    for (accept, prefix) in [
        ("text/csv", b"n,s\n0,x\n".as_slice()),
        (
            "application/vnd.apache.arrow.stream",
            b"\xff\xff\xff\xff".as_slice(),
        ),
    ] {
        let request = Request::builder()
            .method("POST")
            .uri("/v1/sql")
            .header("authorization", "Bearer read-secret")
            .header("accept", accept)
            .body(Body::from(query.clone()))
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(content_type.starts_with(accept), "{content_type}");
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        assert!(bytes.starts_with(prefix), "{accept}: {bytes:?}");
    }

    // Mistakes are 4xx with a code, and a position where the parser gives one.
    let cases = [
        (
            sql("DROP TABLE events"),
            StatusCode::BAD_REQUEST,
            "read_only",
        ),
        (sql("SELECT (1"), StatusCode::BAD_REQUEST, "syntax"),
        (
            sql("SELECT nope FROM events"),
            StatusCode::BAD_REQUEST,
            "plan",
        ),
        (
            "{\"query\": 1}".to_owned(),
            StatusCode::BAD_REQUEST,
            "bad_body",
        ),
    ];
    for (body, status, code) in cases {
        let (got, answer) = call_as(&app, Some("read-secret"), "POST", "/v1/sql", &body).await;
        assert_eq!(
            (got, answer["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}: {answer}"
        );
    }
    let (_, answer) = call_as(
        &app,
        Some("read-secret"),
        "POST",
        "/v1/sql",
        &sql("SELECT city FROM events WHERE ORDER BY 1"),
    )
    .await;
    assert_eq!(
        answer["error"]["position"],
        json!({"line": 1, "column": 37}),
        "{answer}"
    );
}

mod hostile;
/// The stream sends a window the batch layer publishes while a client listens, within a second
/// or two, with the JSON of a row of `GET /v1/views/{name}`.
mod openapi;
mod rollup;
mod stream;
