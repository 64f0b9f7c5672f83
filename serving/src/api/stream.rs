//! `GET /v1/views/{name}/stream`: Server-Sent Events of a view's rows as they change.
//!
//! ```text
//!  connection ─► a stream slot (http.max_streams; none free: 503)
//!      ─► task: every POLL, what changed? (a publication, a micro-batch, the watermark)
//!           nothing ─► nothing read
//!           speed only ─► seam::answer(windows still open at the last watermark .. to)
//!           a publication (or every FULL_EVERY) ─► seam::answer(whole range)
//!      ─► diff by (window, group) with what was sent ─► `row` (new or changed rows, the JSON
//!         of a row of GET /v1/views/{name}) and `removed` ─► bounded channel ─► client
//! ```
//!
//! The first read sends every row of the range. Later reads send changes only, and read only
//! what can have changed: the speed layer updates a window until the watermark passes its end
//! (later events go to the late topic), so between publications only windows that were open at
//! the last read are read again. A row whose value or layer changes (a speed window that the
//! batch layer then covers, say) is sent again. Without `from`, the range follows the wall
//! clock: windows starting in the last hour. The task ends, freeing its slot, when the client
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
use tandem_shared::time::{EventTime, Span};
use tandem_shared::view::ViewDefinition;

use super::response::ViewRows;
use super::views::parse_view_query;
use super::{ApiError, AppState};
use crate::seam::{self, ViewQuery};

/// How often a stream looks for changes: a change is pushed within this (plus the answer time).
pub(super) const POLL: Duration = Duration::from_millis(500);

/// A stream reads its whole range at least this often (a rebalance or a restart of the speed
/// layer changes windows without a publication).
const FULL_EVERY: Duration = Duration::from_secs(30);

/// The range followed without `from`, in milliseconds before now.
const RECENT_MS: i64 = 3_600_000;

/// A row's key: its window start and its group (as JSON text).
type Key = (EventTime, String);

/// What the layers looked like at a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Marks {
    /// The catalog's change counter.
    publications: u64,
    /// The local speed layer's micro-batch count; `None` when the speed side is a group of
    /// workers (every tick reads then).
    speed: Option<u64>,
    watermark: Option<EventTime>,
}

/// What a stream has sent, and when it last read its whole range.
#[derive(Debug, Default)]
struct Sent {
    rows: BTreeMap<Key, Value>,
    marks: Option<Marks>,
}

/// What to read at a tick. Pure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    Nothing,
    /// Window starts from this on: those still open at the last read.
    From(EventTime),
    Whole,
}

/// Decides what to read: nothing if nothing changed, the open windows if only the speed layer
/// moved (for tumbling and hopping views; a session can grow from any window), else the
/// whole range.
fn what_to_read(view: &ViewDefinition, last: Option<Marks>, now: Marks, full_due: bool) -> Read {
    let Some(last) = last else {
        return Read::Whole;
    };
    if full_due || last.publications != now.publications {
        return Read::Whole;
    }
    if now.speed.is_some() && last == now {
        return Read::Nothing;
    }
    match (view.window.size(), last.watermark) {
        // A window of this size starting after `w - size` ends after `w`: open at the last read.
        (Some(size), Some(w)) => Read::From(w.saturating_sub(size)),
        // Sessions (no size), or no watermark yet.
        _ => Read::Whole,
    }
}

/// Events that take a client from `sent` to `now`, the rows read of window starts in `read`
/// (everything of `range` that was not read is unchanged); `sent` becomes `now`. Rows that left
/// `range` (it follows the wall clock) are removed. Pure.
fn changes(
    sent: &mut BTreeMap<Key, Value>,
    range: StartRange,
    read: StartRange,
    now: Vec<(Key, Value)>,
) -> Vec<Event> {
    let mut out = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (key, row) in now {
        seen.insert(key.clone());
        if sent.get(&key) != Some(&row) {
            out.push(Event::default().event("row").data(row.to_string()));
            sent.insert(key, row);
        }
    }
    sent.retain(|(start, _), row| {
        let keep = range.contains(*start)
            && (!read.contains(*start) || seen.contains(&(*start, group(row))));
        if !keep {
            let gone = json!({"window_start": row["window_start"], "group": row["group"]});
            out.push(Event::default().event("removed").data(gone.to_string()));
        }
        keep
    });
    out
}

fn group(row: &Value) -> String {
    row["group"].to_string()
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
        (status = 503, description = "`http.max_streams` streams are open: retry later", body = super::error::ErrorBody),
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
    let slot = std::sync::Arc::clone(&state.streams)
        .try_acquire_owned()
        .map_err(|_| {
            metrics::counter!("tandem_http_streams_refused_total").increment(1);
            ApiError::Unavailable(format!(
                "{} streams are open, as many as http.max_streams allows: try again later",
                state.streams_cap
            ))
        })?;
    let follow = !params.contains_key("from");
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(64);
    let shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        // Held until the stream ends, whatever ends it.
        let _slot = slot;
        metrics::gauge!("tandem_http_streams").increment(1.0);
        follow_view(state, view, query, follow, tx, shutdown).await;
        metrics::gauge!("tandem_http_streams").decrement(1.0);
    });
    let events = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|event| (Ok(event), rx))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// The stream's task (see the module docs).
async fn follow_view(
    state: AppState,
    view: ViewDefinition,
    query: ViewQuery,
    follow: bool,
    tx: tokio::sync::mpsc::Sender<Event>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut sent = Sent::default();
    let mut last_whole = tokio::time::Instant::now();
    let publications = state.catalog.subscribe();
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tx.closed() => return,
            _ = tick.tick() => {}
        }
        let marks = Marks {
            publications: *publications.borrow(),
            speed: state.speed.local().map(|s| s.micro_batches()),
            watermark: state.speed.watermark(&view),
        };
        let full_due = last_whole.elapsed() >= FULL_EVERY;
        let mut range = query.range;
        if follow {
            let now = SystemClock.now();
            range = StartRange::new(now.saturating_sub(Span::from_millis(RECENT_MS)), range.to);
        }
        let read = match what_to_read(&view, sent.marks, marks, full_due) {
            Read::Nothing if !follow => continue,
            // Following the clock, rows leave the range even when nothing changed.
            Read::Nothing => StartRange::new(range.to, range.to),
            Read::Whole => {
                last_whole = tokio::time::Instant::now();
                range
            }
            Read::From(from) => StartRange::new(from.max(range.from), range.to.max(range.from)),
        };
        let mut rows = Vec::new();
        if read.from < read.to {
            let q = ViewQuery {
                range: read,
                ..query.clone()
            };
            let answer = match seam::answer(state.catalog.as_ref(), &state.speed, &q).await {
                Ok(answer) => answer,
                Err(err) => {
                    let data = json!({"error": err.to_string()}).to_string();
                    let _ = tx.send(Event::default().event("error").data(data)).await;
                    continue;
                }
            };
            let starts: Vec<EventTime> = answer.rows.iter().map(|r| r.row.window.start).collect();
            let rendered = serde_json::to_value(ViewRows::new(
                &view,
                answer,
                None,
                state.speed.watermark(&view),
            ))
            .map(|v| v["rows"].as_array().cloned().unwrap_or_default())
            .unwrap_or_default();
            rows = starts
                .into_iter()
                .zip(rendered)
                .map(|(start, row)| ((start, group(&row)), row))
                .collect();
        }
        sent.marks = Some(marks);
        for event in changes(&mut sent.rows, range, read, rows) {
            if tx.send(event).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(start: i64, city: &str, n: i64, source: &str) -> (Key, Value) {
        let row = json!({"window_start": start, "group": {"city": city}, "values": {"n": n}, "source": source});
        ((EventTime(start), group(&row)), row)
    }

    fn kinds(events: &[Event]) -> Vec<String> {
        events.iter().map(|e| format!("{e:?}")).collect()
    }

    const ALL: StartRange = StartRange {
        from: EventTime::MIN,
        to: EventTime::MAX,
    };

    #[test]
    fn changed_and_new_rows_are_sent_and_vanished_ones_removed() {
        let mut sent = BTreeMap::new();
        let first = changes(
            &mut sent,
            ALL,
            ALL,
            vec![
                row(0, "A", 1, "speed"),
                row(0, "B", 2, "speed"),
                row(60, "A", 3, "speed"),
            ],
        );
        assert_eq!(first.len(), 3, "the first read sends every row");
        let events = changes(
            &mut sent,
            ALL,
            ALL,
            vec![
                row(0, "A", 1, "speed"),
                row(0, "B", 2, "batch"),
                row(120, "A", 4, "speed"),
            ],
        );
        let events = kinds(&events);
        assert_eq!(events.len(), 3, "{events:?}");
        assert!(events[0].contains("batch"), "{events:?}");
        assert!(events[1].contains("120"), "{events:?}");
        assert!(
            events[2].contains("removed") && events[2].contains("60"),
            "{events:?}"
        );
        let again = vec![
            row(0, "A", 1, "speed"),
            row(0, "B", 2, "batch"),
            row(120, "A", 4, "speed"),
        ];
        assert!(changes(&mut sent, ALL, ALL, again).is_empty());
    }

    #[test]
    fn a_narrow_read_leaves_the_rest_alone_and_rows_leaving_the_range_are_removed() {
        let mut sent = BTreeMap::new();
        changes(
            &mut sent,
            ALL,
            ALL,
            vec![
                row(0, "A", 1, "batch"),
                row(60, "A", 2, "speed"),
                row(120, "A", 3, "speed"),
            ],
        );
        // Only windows from 60 on were read: the one at 0 is kept though it was not read.
        let read = StartRange::new(EventTime(60), EventTime::MAX);
        let events = changes(&mut sent, ALL, read, vec![row(60, "A", 5, "speed")]);
        let events = kinds(&events);
        assert_eq!(events.len(), 2, "{events:?}");
        assert!(events[0].contains("5"), "{events:?}");
        assert!(
            events[1].contains("removed") && events[1].contains("120"),
            "{events:?}"
        );
        assert_eq!(sent.len(), 2);
        // The followed range moved past 0: that row is removed without a read.
        let range = StartRange::new(EventTime(30), EventTime::MAX);
        let nothing = StartRange::new(EventTime::MAX, EventTime::MAX);
        let events = kinds(&changes(&mut sent, range, nothing, Vec::new()));
        assert_eq!(events.len(), 1, "{events:?}");
        assert!(events[0].contains("removed"), "{events:?}");
    }

    #[test]
    fn only_what_changed_is_read() {
        let schema = tandem_shared::testing::orders_schema();
        let view = tandem_shared::testing::view(
            &schema,
            "orders_by_city",
            tandem_shared::testing::tumbling("1m"),
            &["city"],
            None,
            &["count(*) AS orders"],
        );
        let marks = |publications: u64, speed: Option<u64>, watermark: Option<i64>| Marks {
            publications,
            speed,
            watermark: watermark.map(EventTime),
        };
        let at = marks(1, Some(10), Some(600_000));
        assert_eq!(what_to_read(&view, None, at, false), Read::Whole);
        assert_eq!(what_to_read(&view, Some(at), at, false), Read::Nothing);
        assert_eq!(what_to_read(&view, Some(at), at, true), Read::Whole);
        // The speed layer moved: windows still open at the last watermark (a minute view).
        assert_eq!(
            what_to_read(&view, Some(at), marks(1, Some(11), Some(600_000)), false),
            Read::From(EventTime(540_000))
        );
        assert_eq!(
            what_to_read(&view, Some(at), marks(2, Some(10), Some(600_000)), false),
            Read::Whole,
            "a publication"
        );
        // A group of workers: no micro-batch count, so every tick reads the open windows.
        let group = marks(1, None, Some(600_000));
        assert_eq!(
            what_to_read(&view, Some(group), group, false),
            Read::From(EventTime(540_000))
        );
    }
}
