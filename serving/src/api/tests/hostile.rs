//! What the front door refuses to a careless or hostile client: pages of other sites, hostile
//! host names, framing, too many streams, nonsense ranges and granularities, and pages that
//! would read the whole history.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use datafusion::arrow::array::{Array, Float64Array, Int64Array, RecordBatch, StringArray};
use http_body_util::BodyExt;
use serde_json::Value;
use tandem_batch_layer::catalog::JobResult;
use tandem_shared::coverage::StartRange;
use tandem_shared::time::EventTime;
use tower::ServiceExt;

use super::{call, router, state};
use crate::access::{Access, HttpLimits, HttpPolicy};
use crate::readiness::Readiness;

async fn send(
    app: &axum::Router,
    request: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, Value) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        headers,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn loopback_policy() -> HttpPolicy {
    HttpPolicy {
        access: Access::open(),
        limits: HttpLimits::default(),
        loopback_only: true,
        forward_key: None,
    }
}

#[tokio::test]
async fn pages_of_other_sites_and_other_host_names_are_refused() {
    let app = router(state(Readiness::default()).0, &loopback_policy());
    let job = |host: &str, origin: Option<&str>| {
        let mut r = Request::builder()
            .method("POST")
            .uri("/v1/jobs")
            .header("host", host)
            .header("content-type", "text/plain");
        if let Some(origin) = origin {
            r = r.header("origin", origin);
        }
        r.body(Body::from("{}")).unwrap()
    };
    // A form on another site posting to the loopback API (no preflight for text/plain).
    let (status, _, body) = send(&app, job("127.0.0.1:8080", Some("https://evil.example"))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // DNS rebinding: the page's own origin, a name that resolves to 127.0.0.1.
    let (status, _, body) = send(
        &app,
        job(
            "rebind.evil.example:8080",
            Some("http://rebind.evil.example:8080"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let get = Request::builder()
        .uri("/v1/views")
        .header("host", "rebind.evil.example:8080")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, get).await.0, StatusCode::FORBIDDEN, "reads too");
    // curl on this machine, and the console itself, are served.
    let (status, _, body) = send(&app, job("localhost:8080", None)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (status, _, body) = send(&app, job("127.0.0.1:8080", Some("http://127.0.0.1:8080"))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
}

#[tokio::test]
async fn no_answer_can_be_framed() {
    let app = router(state(Readiness::default()).0, &HttpPolicy::default());
    for uri in ["/", "/v1/views", "/healthz"] {
        let request = Request::builder().uri(uri).body(Body::empty()).unwrap();
        let (_, headers, _) = send(&app, request).await;
        assert_eq!(headers["x-frame-options"], "DENY", "{uri}");
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("frame-ancestors 'none'"), "{uri}: {csp}");
    }
}

#[tokio::test]
async fn streams_past_their_cap_are_refused_and_free_their_slot_when_the_client_goes() {
    let policy = HttpPolicy {
        limits: HttpLimits {
            max_streams: 2,
            ..HttpLimits::default()
        },
        ..HttpPolicy::default()
    };
    let (state, _, _) = state(Readiness::default());
    let app = router(state, &policy);
    let open = || {
        Request::builder()
            .uri("/v1/views/orders_by_city/stream?from=0")
            .body(Body::empty())
            .unwrap()
    };
    let first = app.clone().oneshot(open()).await.unwrap();
    let second = app.clone().oneshot(open()).await.unwrap();
    assert_eq!(
        (first.status(), second.status()),
        (StatusCode::OK, StatusCode::OK)
    );
    let (status, _, body) = send(&app, open()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_streams")
    );
    // The client of the first goes away: its stream ends and its slot comes back.
    drop(first);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let again = loop {
        let response = app.clone().oneshot(open()).await.unwrap();
        if response.status() == StatusCode::OK {
            break response;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slot never came back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    drop((again, second));
}

#[tokio::test]
async fn nonsense_ranges_and_granularities_are_bad_parameters() {
    let (state, _, _) = state(Readiness::default());
    let app = router(state, &HttpPolicy::default());
    let (status, body) = call(
        &app,
        "GET",
        "/v1/views/orders_by_city?granularity=100000000y",
        "",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "bad_parameter");
    let (status, body) = call(
        &app,
        "GET",
        "/v1/internal/partials/orders_by_city?from=2000&to=1000",
        "",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

/// A page of a long history reads the first windows, not the history: the catalog's cache
/// holds only the row groups the page needed.
#[tokio::test]
async fn a_page_reads_what_it_answers_not_the_whole_range() {
    let (state, _, _) = state(Readiness::default());
    let catalog = Arc::clone(&state.catalog);
    let app = router(state, &HttpPolicy::default());
    let view = catalog.view("orders_by_city").unwrap().clone();
    const M: i64 = 60_000;
    let day = 1_790_000_000_000 - 1_790_000_000_000 % (24 * 3_600_000);
    // Thirty published days, a job a day (each a segment of its own), two cities a minute.
    for d in 0..30 {
        let from = day + d * 1440 * M;
        let starts: Vec<i64> = (0..1440).flat_map(|m| [from + m * M; 2]).collect();
        let cities: Vec<&str> = (0..1440).flat_map(|_| ["Lima", "Oslo"]).collect();
        let batch = RecordBatch::try_from_iter([
            (
                "window_start",
                Arc::new(Int64Array::from(starts.clone())) as Arc<dyn Array>,
            ),
            (
                "window_end",
                Arc::new(Int64Array::from(
                    starts.iter().map(|s| s + M).collect::<Vec<_>>(),
                )) as _,
            ),
            ("city", Arc::new(StringArray::from(cities)) as _),
            (
                "orders",
                Arc::new(Int64Array::from(vec![1; starts.len()])) as _,
            ),
            (
                "revenue",
                Arc::new(Float64Array::from(vec![1.0; starts.len()])) as _,
            ),
        ])
        .unwrap();
        catalog
            .publish(
                &view,
                JobResult {
                    table_offsets: Default::default(),
                    job: &format!("day-{d}"),
                    covered: StartRange::new(EventTime(from), EventTime(from + 1440 * M)),
                    incomplete: Vec::new(),
                    held: Vec::new(),
                    batches: std::slice::from_ref(&batch),
                    archive_offsets: Default::default(),
                    published_at: EventTime(from + 1440 * M),
                },
            )
            .await
            .unwrap();
    }
    let before = catalog.cache_usage().bytes;
    let (status, body) = call(&app, "GET", "/v1/views/orders_by_city?limit=10", "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["rows"].as_array().unwrap().len(), 10);
    assert_eq!(
        body["rows"][0]["window_start"],
        EventTime(day).to_rfc3339(),
        "{body}"
    );
    assert!(body["next_cursor"].is_string());
    let page_bytes = catalog.cache_usage().bytes - before;
    // The whole history, for comparison.
    let (status, _) = call(&app, "GET", "/v1/views/orders_by_city?limit=100000", "").await;
    assert_eq!(status, StatusCode::OK);
    let all_bytes = catalog.cache_usage().bytes - before;
    assert!(
        page_bytes * 10 < all_bytes,
        "a 10-row page read {page_bytes} bytes of {all_bytes}"
    );
}

/// A job request forwarded by another process of the cluster carries a signature made with the
/// cluster token, not the user's token: the receiver allows what the named token may do, and
/// refuses a request without it, with a wrong one, or naming a token of too small a scope.
#[tokio::test]
async fn forwarded_requests_are_signed_not_carrying_the_users_token() {
    use crate::access::{ForwardKey, Scope, Token};
    let key = ForwardKey::new("cluster-secret");
    let policy = HttpPolicy {
        access: Access::with_tokens(vec![
            Token::from_secret("dashboards", Scope::Read, "r-token").unwrap(),
            Token::from_secret("ops", Scope::Admin, "a-token").unwrap(),
        ]),
        limits: HttpLimits::default(),
        loopback_only: false,
        forward_key: Some(key.clone()),
    };
    let app = router(state(Readiness::default()).0, &policy);
    let now = chrono::Utc::now().timestamp_millis();
    let forwarded = |signature: &str| {
        Request::builder()
            .method("POST")
            .uri("/v1/jobs")
            .header("x-tandem-forwarded", signature)
            .header("content-type", "application/json")
            .body(Body::from("{}"))
            .unwrap()
    };
    let signed = key.sign("POST", "/v1/jobs", now, Some("ops"), b"{}");
    let (status, _, body) = send(&app, forwarded(&signed)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let read_only = key.sign("POST", "/v1/jobs", now, Some("dashboards"), b"{}");
    assert_eq!(
        send(&app, forwarded(&read_only)).await.0,
        StatusCode::FORBIDDEN
    );
    let other =
        ForwardKey::new("another-cluster").sign("POST", "/v1/jobs", now, Some("ops"), b"{}");
    assert_eq!(
        send(&app, forwarded(&other)).await.0,
        StatusCode::UNAUTHORIZED
    );
    // Signed for another body: refused.
    let request = Request::builder()
        .method("POST")
        .uri("/v1/jobs")
        .header("x-tandem-forwarded", &signed)
        .body(Body::from("{\"view\": \"orders_by_city\"}"))
        .unwrap();
    assert_eq!(send(&app, request).await.0, StatusCode::UNAUTHORIZED);
}

/// A serving process's request for a worker's partials, as the fleet sends it over a socket
/// (reqwest, the target written out by hand): signed with the cluster key, it is read;
/// with the token itself absent and no signature it is refused.
#[tokio::test]
async fn a_signed_partials_request_is_read_over_a_socket() {
    use crate::access::{FORWARDED, ForwardKey, Scope, Token};
    let key = ForwardKey::new("cluster-secret");
    let policy = HttpPolicy {
        access: Access::with_tokens(vec![
            Token::from_secret("cluster", Scope::Read, "cluster-secret").unwrap(),
        ]),
        limits: HttpLimits::default(),
        loopback_only: false,
        forward_key: Some(key.clone()),
    };
    let app = router(state(Readiness::default()).0, &policy);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let target = "/v1/internal/partials/orders_by_city?from=0&to=60000&partitions=0,1";
    let client = reqwest::Client::new();
    let url = format!("http://{addr}{target}");
    let refused = client.get(&url).send().await.unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    let now = chrono::Utc::now().timestamp_millis();
    let signed = client
        .get(&url)
        .header(FORWARDED, key.sign("GET", target, now, None, b""))
        .send()
        .await
        .unwrap();
    assert_eq!(signed.status().as_u16(), 200, "{:?}", signed.text().await);
}
