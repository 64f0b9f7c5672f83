//! `GET /v1/views/{name}?granularity=`: rollups through the router.

use std::sync::Arc;

use axum::http::StatusCode;
use datafusion::arrow::array::{Array, Float64Array, Int64Array, RecordBatch, StringArray};
use serde_json::json;
use tandem_batch_layer::catalog::JobResult;
use tandem_shared::coverage::StartRange;
use tandem_shared::time::EventTime;

use super::{call, router, state};
use crate::access::HttpPolicy;
use crate::readiness::Readiness;

const HOUR: i64 = 3_600_000;
/// 2026-09-21T14:00:00Z, a whole hour.
const T0: i64 = 1_790_000_000_000 - 1_790_000_000_000 % HOUR;

fn batch(columns: Vec<(&str, Arc<dyn Array>)>) -> RecordBatch {
    RecordBatch::try_from_iter(columns).unwrap()
}

/// Publishes `batch` as the batch layer's answer for `[from, to)` of `view`.
async fn publish(
    catalog: &tandem_batch_layer::ViewCatalog,
    view: &str,
    from: i64,
    to: i64,
    batch: RecordBatch,
) {
    let view = catalog.view(view).unwrap().clone();
    catalog
        .publish(
            &view,
            JobResult {
                table_offsets: Default::default(),
                job: "j",
                covered: StartRange::new(EventTime(from), EventTime(to)),
                incomplete: Vec::new(),
                held: Vec::new(),
                batches: std::slice::from_ref(&batch),
                archive_offsets: Default::default(),
                published_at: EventTime(to),
            },
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn minutes_roll_up_to_hours_and_to_the_global_window() {
    let (state, _, _) = state(Readiness::default());
    let catalog = Arc::clone(&state.catalog);
    let app = router(state, &HttpPolicy::default());
    // Three minutes of two cities over two hours.
    let starts = [T0, T0 + 60_000, T0 + HOUR];
    publish(
        &catalog,
        "orders_by_city",
        T0,
        T0 + 2 * HOUR,
        batch(vec![
            (
                "window_start",
                Arc::new(Int64Array::from(starts.to_vec())) as _,
            ),
            (
                "window_end",
                Arc::new(Int64Array::from(
                    starts.iter().map(|s| s + 60_000).collect::<Vec<_>>(),
                )) as _,
            ),
            (
                "city",
                Arc::new(StringArray::from(vec!["Oslo", "Oslo", "Lima"])) as _,
            ),
            ("orders", Arc::new(Int64Array::from(vec![7, 5, 2])) as _),
            (
                "revenue",
                Arc::new(Float64Array::from(vec![70.5, 0.25, 3.0])) as _,
            ),
        ]),
    )
    .await;
    let range = format!("from={T0}&to={}", T0 + 2 * HOUR);
    let uri = format!("/v1/views/orders_by_city?granularity=1h&{range}");
    let (status, body) = call(&app, "GET", &uri, "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["granularity"], "1h");
    let rows = body["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{body}");
    assert_eq!(rows[0]["group"], json!({"city": "Oslo"}));
    assert_eq!(rows[0]["values"], json!({"orders": 12, "revenue": 70.75}));
    assert_eq!(rows[0]["windows"], json!({"batch": 2, "speed": 0}));
    assert_eq!(rows[0]["source"], "batch");
    assert_eq!(
        (
            rows[0]["window_end"].as_str(),
            rows[1]["group"]["city"].as_str()
        ),
        (Some("2026-09-21T15:00:00Z"), Some("Lima"))
    );
    let uri = format!("/v1/views/orders_by_city?granularity=all&{range}&city=Oslo");
    let (status, body) = call(&app, "GET", &uri, "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["rows"].as_array().unwrap().len(), 1);
    assert_eq!(body["rows"][0]["values"]["orders"], 12);
}

#[tokio::test]
async fn a_value_without_a_stored_state_is_null_and_named() {
    let (state, _, _) = state(Readiness::default());
    let catalog = Arc::clone(&state.catalog);
    let app = router(state, &HttpPolicy::default());
    // A segment without sketch columns (as written before states were stored).
    publish(
        &catalog,
        "events_by_type",
        T0,
        T0 + HOUR,
        batch(vec![
            (
                "window_start",
                Arc::new(Int64Array::from(vec![T0, T0 + 60_000])) as _,
            ),
            (
                "window_end",
                Arc::new(Int64Array::from(vec![T0 + 60_000, T0 + 120_000])) as _,
            ),
            (
                "event_type",
                Arc::new(StringArray::from(vec!["a", "a"])) as _,
            ),
            ("events", Arc::new(Int64Array::from(vec![3, 4])) as _),
            ("users", Arc::new(Int64Array::from(vec![2, 3])) as _),
        ]),
    )
    .await;
    let uri = format!(
        "/v1/views/events_by_type?granularity=1h&from={T0}&to={}",
        T0 + HOUR
    );
    let (status, body) = call(&app, "GET", &uri, "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let row = &body["rows"][0];
    assert_eq!(row["values"], json!({"events": 7, "users": null}));
    assert_eq!(row["unavailable"], json!(["users"]));
    // A bucket of one batch window answers that window's exact value.
    let uri = format!(
        "/v1/views/events_by_type?granularity=1m&from={T0}&to={}",
        T0 + 60_000
    );
    let (_, body) = call(&app, "GET", &uri, "").await;
    assert_eq!(body["rows"][0]["values"], json!({"events": 3, "users": 2}));
}

#[tokio::test]
async fn bad_rollup_parameters_are_400s_that_say_why() {
    let app = router(state(Readiness::default()).0, &HttpPolicy::default());
    for (query, name, says) in [
        ("granularity=90s", "granularity", "multiple"),
        ("granularity=soon", "granularity", ""),
        ("granularity=1h&cursor=abc", "cursor", "one response"),
        ("granularity=1h&limit=5", "limit", "one response"),
        ("granularity=1h&exact=maybe", "exact", "true or false"),
        ("exact=true", "exact", "granularity"),
    ] {
        let (status, body) = call(
            &app,
            "GET",
            &format!("/v1/views/orders_by_city?{query}"),
            "",
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("`{name}`")) && message.contains(says),
            "{query}: {message}"
        );
    }
}
