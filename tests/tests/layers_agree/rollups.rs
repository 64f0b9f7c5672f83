//! Rollups across the seam against the oracle: hourly buckets and the global window over a
//! range the batch layer covers in part, so buckets combine batch windows (exact values and
//! the sketches the batch layer stored) with speed windows (the speed layer's own sketches).

use std::sync::Arc;

use tandem_batch_layer::ViewCatalog;
use tandem_batch_layer::recompute::Requested;
use tandem_serving::rollup::{self, Granularity, RolledRow};
use tandem_serving::seam::{FreshStates, ViewQuery};
use tandem_serving::sql::{SqlEngine, SqlLimits};
use tandem_shared::coverage::{Coverage, StartRange};
use tandem_shared::row::GroupValue;
use tandem_shared::time::{EventTime, Span};
use tandem_speed_layer::program::ViewProgram;
use tandem_speed_layer::state::{Partial, ViewState};
use tokio_util::sync::CancellationToken;

use crate::oracle::*;
use crate::*;

const HOUR: i64 = 60 * MINUTE;

/// One partition's speed state as the speed layer's side of the seam.
struct OnePartition(ViewState);

impl FreshStates for OnePartition {
    fn fresh_states<'a>(
        &'a self,
        _: &'a str,
        range: StartRange,
    ) -> futures::future::BoxFuture<'a, Option<tandem_serving::seam::FreshRows<Partial>>> {
        let rows = tandem_serving::seam::FreshRows::complete(self.0.partials(range));
        Box::pin(std::future::ready(Some(rows)))
    }
}

/// Checks rolled rows against the oracle's buckets (keyed by bucket start, or by group only
/// for the global window). `exact` for rows recomputed from the archive.
fn check_rolled(rows: &[RolledRow], want: &Oracle, global: bool, exact: bool) -> usize {
    let key = |start: i64, group: &Vec<GroupValue>| (if global { 0 } else { start }, group.clone());
    let want: std::collections::BTreeMap<_, _> =
        want.iter().map(|((s, g), v)| (key(*s, g), v)).collect();
    for row in rows {
        let k = key(row.window.start.millis(), &row.group);
        let (_, values) = want
            .get(&k)
            .unwrap_or_else(|| panic!("bucket {k:?} is not in the oracle"));
        for (i, (w, g)) in values.iter().zip(&row.values).enumerate() {
            if let Err(e) = check(w, g, exact) {
                panic!("bucket {k:?} value {i} ({}): {e}", row.source());
            }
        }
    }
    assert_eq!(rows.len(), want.len(), "every bucket and group answered");
    rows.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollups_across_the_seam_agree_with_the_oracle() {
    let events = events(30_000);
    let schema = schema();
    let (batches, store) = archived(&schema, &events).await;
    let view = view(
        "orders_by_city",
        tumbling("1m"),
        &["city"],
        Some("event_type = 'order_placed'"),
        &[
            "count(*) AS orders",
            "sum(amount) AS revenue",
            "min(amount) AS lo",
            "max(qty) AS most",
            "avg(amount) AS mean",
            "count(DISTINCT user_id) AS buyers",
            "percentile(amount, 0.9) AS p90",
        ],
    );
    let keep = |e: &Event| e.event_type == "order_placed";
    let city = |e: &Event| vec![GroupValue::Str(e.city.into())];
    let aggs: [AggregateOracle<'_>; 7] = [
        &count,
        &sum_amount,
        &min_amount,
        &max_qty,
        &avg_amount,
        &distinct_users,
        &p90_amount,
    ];

    // Speed layer: every event. Batch layer: the first 90 minutes only, so the second hour's
    // buckets mix batch and speed windows.
    let mut state = ViewState::new(Arc::new(ViewProgram::compile(&view, &schema).unwrap()));
    for (_, batch) in &batches {
        state.apply(batch, None, &Coverage::new()).unwrap();
    }
    let catalog = Arc::new(ViewCatalog::new(Arc::clone(&store), [view.clone()]));
    let outcome = recompute(&store, &schema, &catalog)
        .run_view(
            &view,
            Requested {
                from: Some(EventTime(BASE)),
                to: Some(EventTime(BASE + 90 * MINUTE)),
            },
            "rollup",
            &CancellationToken::new(),
            &|_| {},
        )
        .await
        .unwrap();
    assert_eq!(
        outcome.covered,
        Some(StartRange::new(
            EventTime(BASE),
            EventTime(BASE + 90 * MINUTE)
        ))
    );
    let speed = OnePartition(state);
    let range = StartRange::new(EventTime(BASE), EventTime(BASE + 3 * HOUR));
    let query = ViewQuery {
        view: view.name.clone(),
        range,
        filters: Vec::new(),
    };
    let answer = rollup::states(catalog.as_ref(), &speed, &view, &query)
        .await
        .unwrap();

    // Hourly: exact values exactly, sketches within their bounds, in every kind of bucket.
    let hourly = Granularity::Every(Span::from_millis(HOUR));
    let rows = rollup::roll(&view, hourly, range, answer.rows.clone());
    let want = oracle(&events, HOUR, HOUR, city, keep, &aggs);
    assert!(check_rolled(&rows, &want, false, false) >= 12);
    let sources: std::collections::BTreeSet<_> = rows.iter().map(RolledRow::source).collect();
    assert_eq!(
        sources,
        ["batch", "mixed", "speed"].into_iter().collect(),
        "hour 0 is batch, hour 1 mixed (batch to 90 min), hour 2 speed"
    );
    for r in &rows {
        assert_eq!(
            r.approximate,
            [false, false, false, false, false, true, true]
        );
        assert!(r.unavailable.iter().all(|u| !u));
    }

    // The global window: one row per group over the range. The events' day holds them all, so
    // day buckets of the oracle are the global window's values.
    let global = rollup::roll(&view, Granularity::All, range, answer.rows.clone());
    let day = oracle(&events, 24 * HOUR, 24 * HOUR, city, keep, &aggs);
    assert_eq!(check_rolled(&global, &day, true, false), CITIES.len());
    assert!(global.iter().all(|r| r.source() == "mixed"));

    // exact=true: the archive recomputes complete buckets exactly (distinct counts and
    // percentiles included); the incomplete last hour keeps its sketch-merged rows.
    let engine = SqlEngine::new(
        Arc::clone(&catalog),
        None,
        Arc::clone(&store),
        "orders",
        Arc::clone(&schema),
        SqlLimits::default(),
    )
    .await
    .unwrap();
    let exact = rollup::exact::recompute(&engine, &view, hourly, range, rows)
        .await
        .unwrap();
    let (archived, sketched): (Vec<RolledRow>, Vec<RolledRow>) =
        exact.into_iter().partition(|r| r.archive);
    assert_eq!(
        archived.len(),
        2 * CITIES.len(),
        "hours 0 and 1 are complete"
    );
    let first_two: Oracle = want
        .iter()
        .filter(|((s, _), _)| *s < BASE + 2 * HOUR)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    check_rolled(&archived, &first_two, false, true);
    assert!(archived.iter().all(|r| r.approximate.iter().all(|a| !a)));
    assert!(
        sketched
            .iter()
            .all(|r| r.window.start.millis() == BASE + 2 * HOUR && r.source() == "speed")
    );
}
