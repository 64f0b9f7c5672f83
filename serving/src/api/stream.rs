//! `GET /v1/views/{name}/stream`: Server-Sent Events of a view's rows as they change.
//!
//! ```text
//!  connection ─► task: every POLL, seam::answer(range) ─► diff by (window, group) with the last
//!                      answer ─► `row` events (new or changed rows, the JSON of a row of
//!                      GET /v1/views/{name}) and `removed` events ─► bounded channel ─► client
//! ```
//!
//! The first poll sends every row of the range. A row whose value or layer changes (a speed
//! window that the batch layer then covers, say) is sent again. Without `from`, the range
//! follows the wall clock: windows starting in the last hour. The task ends when the client
//! goes away (the channel closes) or the server stops (the state's shutdown token), which ends
//! the response so that a graceful shutdown does not wait for streams.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde_json::{Value, json};
use tandem_shared::clock::{Clock, SystemClock};
use tandem_shared::coverage::StartRange;
use tandem_shared::time::Span;

use super::response::ViewRows;
use super::views::parse_view_query;
use super::{ApiError, AppState};
use crate::seam::{self, ViewQuery};

/// How often a stream re-reads its range: a change is pushed within this (plus the answer time).
pub(super) const POLL: Duration = Duration::from_millis(500);

/// The range followed without `from`, in milliseconds before now.
const RECENT_MS: i64 = 3_600_000;

/// The (window start, group) a row is keyed by, and its JSON.
fn keyed(rows: Vec<Value>) -> BTreeMap<(String, String), Value> {
    rows.into_iter()
        .map(|r| {
            let key = (r["window_start"].to_string(), r["group"].to_string());
            (key, r)
        })
        .collect()
}

/// Events that take a client from `before` to `now`. Pure.
fn changes(
    before: &BTreeMap<(String, String), Value>,
    now: &BTreeMap<(String, String), Value>,
) -> Vec<Event> {
    let mut out = Vec::new();
    for (key, row) in now {
        if before.get(key) != Some(row) {
            out.push(Event::default().event("row").data(row.to_string()));
        }
    }
    for (key, row) in before {
        if !now.contains_key(key) {
            let gone = json!({"window_start": row["window_start"], "group": row["group"]});
            out.push(Event::default().event("removed").data(gone.to_string()));
        }
    }
    out
}

/// One Server-Sent Event of a view's stream (the description's schema of each event).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // Only described: the events are written by axum's `Event`.
pub(super) struct StreamEvent {
    event: StreamEventKind,
    /// JSON: for `row`, a row as `GET /v1/views/{name}` renders it; for `removed`,
    /// `{"window_start", "group"}`.
    #[schema(content_media_type = "application/json")]
    data: String,
}

#[derive(utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
enum StreamEventKind {
    /// A new or changed row.
    Row,
    /// A row that left the range or the answer.
    Removed,
}

/// Server-Sent Events: every row of the range, then each new or changed row (`row`) and each
/// row that left (`removed`).
#[utoipa::path(get, path = "/v1/views/{name}/stream", tag = "views",
    params(
        ("name" = String, Path, description = "The view"),
        super::views::RangeParams,
    ),
    responses(
        (status = 200, description = "An event stream", content_type = "text/event-stream", body = StreamEvent),
        (status = 400, description = "A bad parameter", body = super::error::ErrorBody),
        (status = 404, description = "No such view", body = super::error::ErrorBody),
    ))]
pub(super) async fn stream_view(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(params): Query<BTreeMap<String, String>>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let view = state.view(&name)?.clone();
    if let Some(key) = ["limit", "cursor"]
        .into_iter()
        .find(|k| params.contains_key(*k))
    {
        return Err(ApiError::BadParameter {
            name: key.to_owned(),
            problem: "a stream sends every row of its range: give from, to and dimensions only"
                .into(),
        });
    }
    let (query, _) = parse_view_query(&view, &params)?;
    let follow = !params.contains_key("from");
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(64);
    let shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        let mut last = BTreeMap::new();
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            if tx.is_closed() {
                break;
            }
            let mut q: ViewQuery = query.clone();
            if follow {
                let now = SystemClock.now();
                q.range =
                    StartRange::new(now.saturating_sub(Span::from_millis(RECENT_MS)), q.range.to);
            }
            let answer = match seam::answer(state.catalog.as_ref(), &state.speed, &q).await {
                Ok(answer) => answer,
                Err(err) => {
                    let data = json!({"error": err.to_string()}).to_string();
                    let _ = tx.send(Event::default().event("error").data(data)).await;
                    continue;
                }
            };
            let rendered = serde_json::to_value(ViewRows::new(
                &view,
                answer,
                None,
                state.speed.watermark(&view),
            ))
            .map(|v| v["rows"].as_array().cloned().unwrap_or_default())
            .unwrap_or_default();
            let now = keyed(rendered);
            for event in changes(&last, &now) {
                if tx.send(event).await.is_err() {
                    return;
                }
            }
            last = now;
        }
    });
    let events = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|event| (Ok(event), rx))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(start: &str, city: &str, n: i64, source: &str) -> Value {
        json!({"window_start": start, "group": {"city": city}, "values": {"n": n}, "source": source})
    }

    #[test]
    fn changed_and_new_rows_are_sent_and_vanished_ones_removed() {
        let before = keyed(vec![
            row("t0", "A", 1, "speed"),
            row("t0", "B", 2, "speed"),
            row("t1", "A", 3, "speed"),
        ]);
        let now = keyed(vec![
            row("t0", "A", 1, "speed"),
            row("t0", "B", 2, "batch"),
            row("t2", "A", 4, "speed"),
        ]);
        let events: Vec<String> = changes(&before, &now)
            .into_iter()
            .map(|e| format!("{e:?}"))
            .collect();
        assert_eq!(events.len(), 3, "{events:?}");
        assert!(events[0].contains("batch"), "{events:?}");
        assert!(events[1].contains("t2"), "{events:?}");
        assert!(
            events[2].contains("removed") && events[2].contains("t1"),
            "{events:?}"
        );
        assert!(changes(&now, &now).is_empty());
    }
}
