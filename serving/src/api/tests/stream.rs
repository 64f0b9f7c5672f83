//! `GET /v1/views/{name}/stream` through the router: a published window reaches a listening
//! client, paging parameters are refused, and the stream ends when the server stops.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::{call, router, state};
use crate::access::HttpPolicy;
use crate::readiness::Readiness;

#[tokio::test]
async fn the_stream_pushes_a_published_window_to_a_listening_client() {
    use datafusion::arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
    use tandem_batch_layer::catalog::JobResult;
    use tandem_shared::coverage::StartRange;
    use tandem_shared::time::EventTime;

    let (state, _, _) = state(Readiness::default());
    let catalog = Arc::clone(&state.catalog);
    let stop = tokio_util::sync::CancellationToken::new();
    let app = router(state.with_shutdown(stop.clone()), &HttpPolicy::default());
    let request = Request::builder()
        .uri("/v1/views/orders_by_city/stream?from=0")
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // Paging parameters mean nothing to a stream: a clear 400.
    let (status, error) = call(&app, "GET", "/v1/views/orders_by_city/stream?limit=5", "").await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_parameter"))
    );
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut body = response.into_body();
    // The stream's first read (an empty view) is over before anything is published.
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;

    let minute = 1_790_000_040_000i64; // a whole minute, 2026-09-21
    let batch = RecordBatch::try_from_iter([
        (
            "window_start",
            Arc::new(Int64Array::from(vec![minute])) as _,
        ),
        (
            "window_end",
            Arc::new(Int64Array::from(vec![minute + 60_000])) as _,
        ),
        ("city", Arc::new(StringArray::from(vec!["Oslo"])) as _),
        ("orders", Arc::new(Int64Array::from(vec![7])) as _),
        ("revenue", Arc::new(Float64Array::from(vec![70.5])) as _),
    ])
    .unwrap();
    let view = catalog.view("orders_by_city").unwrap().clone();
    catalog
        .publish(
            &view,
            JobResult {
                table_offsets: Default::default(),
                job: "j",
                covered: StartRange::new(EventTime(minute), EventTime(minute + 60_000)),
                incomplete: Vec::new(),
                held: Vec::new(),
                batches: std::slice::from_ref(&batch),
                archive_offsets: Default::default(),
                published_at: EventTime(minute + 120_000),
            },
        )
        .await
        .unwrap();
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while !text.contains("\n\n") {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .expect("a row within 5 s")
            .unwrap()
            .unwrap();
        if let Ok(data) = frame.into_data() {
            text.push_str(std::str::from_utf8(&data).unwrap());
        }
    }
    assert!(text.starts_with("event: row\ndata: "), "{text}");
    let data: Value =
        serde_json::from_str(text.lines().nth(1).unwrap().trim_start_matches("data: ")).unwrap();
    assert_eq!(data["group"], json!({"city": "Oslo"}));
    assert_eq!(data["values"], json!({"orders": 7, "revenue": 70.5}));
    assert_eq!(data["source"], "batch");
    // When the server stops, the stream ends (a graceful shutdown does not wait on it).
    stop.cancel();
    let end = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        while let Some(frame) = body.frame().await {
            frame.unwrap();
        }
    })
    .await;
    assert!(end.is_ok(), "the stream did not end after shutdown");
}
