//! The speed layer's joined stream against an oracle: orders and payments of two partitions,
//! out of order on both sides, some late, fed as micro-batches in arrival order (with a
//! restart from checkpoints half-way), give exactly the left join of the rows not reported late.

use std::collections::BTreeMap;

use tandem_shared::coverage::StartRange;
use tandem_shared::join_stream::{JoinKind, JoinStreamConfig};
use tandem_shared::schema::FieldType;
use tandem_shared::testing;
use tandem_shared::time::EventTime;
use tandem_shared::value::AggregateValue;
use tandem_shared::view::ViewDefinition;

use crate::SpeedLayer;
use crate::micro_batch::{MicroBatch, PartitionRows, SecondBatch, apply};

const S: i64 = 1_000;
const WITHIN: i64 = 30 * S;
/// The first order's time (event times before 2000 are refused).
const T0: i64 = 1_700_000_000_000;

/// (is an order, partition, order id, time, city or amount).
#[derive(Debug, Clone)]
struct Row {
    order: bool,
    partition: i32,
    id: u32,
    time: i64,
    value: i64,
}

fn layer() -> (SpeedLayer, ViewDefinition) {
    let schema = testing::schema(&[("order_id", FieldType::String), ("city", FieldType::String)]);
    let mut config = testing::view_config(
        "paid",
        testing::tumbling("1m"),
        &["city"],
        None,
        &["count(*) AS n", "sum(payments.amount) AS paid"],
    );
    config.allowed_lateness = Some("10s".into());
    config.join_stream = Some(JoinStreamConfig {
        topic: "payments".into(),
        on: "order_id".into(),
        within: "30s".into(),
        kind: JoinKind::Left,
        fields: [("amount".to_owned(), FieldType::Int64)].into(),
        time_field: None,
        name: None,
        format: None,
    });
    let view = testing::define(&config, &schema);
    let speed =
        SpeedLayer::compile(std::slice::from_ref(&view), &schema).unwrap_or_else(|e| panic!("{e}"));
    (speed, view)
}

/// Deterministic rows: orders every 700 ms over two partitions; most paid once or twice
/// within or a little beyond `within`; every row arriving up to 8 s after its time, one in
/// twenty 30 s more (late: behind the horizon of 10 s of allowed lateness).
fn rows() -> Vec<Row> {
    let mut seed = 7u64;
    let mut next = |below: u64| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((seed >> 33) % below) as i64
    };
    let mut arrivals = Vec::new();
    for id in 0..400u32 {
        let t = T0 + i64::from(id) * 700;
        let partition = (id % 2) as i32;
        let order = Row {
            order: true,
            partition,
            id,
            time: t,
            value: next(3),
        };
        let delay = next(8 * S as u64) + straggle(next(20));
        arrivals.push((t + delay, order));
        for _ in 0..next(3) {
            let pay = Row {
                order: false,
                partition,
                id,
                time: t + next(40 * S as u64),
                value: 1 + next(100),
            };
            let delay = next(8 * S as u64) + straggle(next(20));
            arrivals.push((pay.time + delay, pay));
        }
    }
    arrivals.sort_by_key(|(at, r)| (*at, r.id, r.order));
    arrivals.into_iter().map(|(_, r)| r).collect()
}

/// A straggler's extra delay, for one draw in twenty.
fn straggle(draw: i64) -> i64 {
    if draw == 0 { 30 * S } else { 0 }
}

fn json(r: &Row) -> String {
    if r.order {
        format!(
            r#"{{"ts":{},"order_id":"o{}","city":"c{}"}}"#,
            r.time, r.id, r.value
        )
    } else {
        format!(
            r#"{{"ts":{},"order_id":"o{}","amount":{}}}"#,
            r.time, r.id, r.value
        )
    }
}

/// Feeds `rows` in micro-batches of `size`, as the consume loop would; returns the rows
/// reported late. `progress` is the combined progress: the least of each source's latest time.
fn feed(
    speed: &SpeedLayer,
    rows: &[Row],
    size: usize,
    latest: &mut BTreeMap<(bool, i32), i64>,
    offsets: &mut BTreeMap<(bool, i32), i64>,
) -> Vec<Row> {
    let side = speed
        .stream(0)
        .unwrap_or_else(|| panic!("the view joins a stream"));
    let decoder = tandem_shared::event::EventDecoder::new(testing::schema(&[
        ("order_id", FieldType::String),
        ("city", FieldType::String),
    ]));
    let mut late = Vec::new();
    for chunk in rows.chunks(size) {
        let progress = |latest: &BTreeMap<(bool, i32), i64>| {
            (latest.len() == 4).then(|| EventTime(*latest.values().min().unwrap_or(&0)))
        };
        let watermark = progress(latest);
        let mut firsts = MicroBatch::new(&decoder, chunk.len());
        let mut seconds = MicroBatch::new(&side.decoder, chunk.len());
        let mut first_rows = Vec::new();
        let mut second_rows = Vec::new();
        for r in chunk {
            let offset = offsets.entry((r.order, r.partition)).or_insert(0);
            *offset += 1;
            let (micro, d, taken) = if r.order {
                (&mut firsts, &decoder, &mut first_rows)
            } else {
                (&mut seconds, side.decoder.as_ref(), &mut second_rows)
            };
            let at = micro
                .polled(r.partition, *offset, || true)
                .unwrap_or_else(|| panic!("owned"));
            let text = json(r);
            let event = d.decode(text.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
            micro.push(at, &event, *offset, taken.len());
            taken.push(r.clone());
            let t = latest.entry((r.order, r.partition)).or_insert(i64::MIN);
            *t = (*t).max(r.time);
        }
        let second = SecondBatch {
            topic: 1,
            batch: seconds.finish(),
            parts: seconds.parts.clone(),
        };
        for part in &second.parts {
            firsts.touch(part.partition);
        }
        let batch = firsts.finish();
        let parts: Vec<PartitionRows> = firsts.parts.clone();
        let outcomes = apply(
            speed,
            batch.as_ref(),
            &parts,
            std::slice::from_ref(&second),
            watermark,
        );
        for views in outcomes {
            for outcome in views {
                assert!(outcome.rejected.is_empty(), "{:?}", outcome.rejected);
                late.extend(
                    outcome
                        .late
                        .iter()
                        .map(|&r| first_rows[firsts.rows[r].0].clone()),
                );
                late.extend(
                    outcome
                        .late_second
                        .iter()
                        .map(|&r| second_rows[seconds.rows[r].0].clone()),
                );
            }
        }
        if let Some(progress) = progress(latest) {
            speed.advance_joins(progress, watermark);
        }
    }
    late
}

/// The oracle: per window start and city, the left join's rows and paid amounts.
fn oracle(rows: &[Row], late: &[Row]) -> BTreeMap<(i64, String), (i64, i64)> {
    let is_late = |r: &Row| {
        late.iter()
            .any(|l| l.order == r.order && l.id == r.id && l.time == r.time && l.value == r.value)
    };
    let kept: Vec<&Row> = rows.iter().filter(|r| !is_late(r)).collect();
    let mut out: BTreeMap<(i64, String), (i64, i64)> = BTreeMap::new();
    for o in kept.iter().filter(|r| r.order) {
        let key = (o.time.div_euclid(60 * S) * 60 * S, format!("c{}", o.value));
        let matches: Vec<&&Row> = kept
            .iter()
            .filter(|p| !p.order && p.id == o.id && p.time >= o.time && p.time <= o.time + WITHIN)
            .collect();
        let entry = out.entry(key).or_default();
        if matches.is_empty() {
            entry.0 += 1;
        } else {
            entry.0 += matches.len() as i64;
            entry.1 += matches.iter().map(|p| p.value).sum::<i64>();
        }
    }
    out
}

fn answer(speed: &SpeedLayer) -> BTreeMap<(i64, String), (i64, i64)> {
    let rows = speed
        .query("paid", StartRange::new(EventTime::MIN, EventTime::MAX))
        .unwrap_or_default();
    rows.into_iter()
        .map(|r| {
            let city = r.group[0].to_string();
            let n = match r.values[0] {
                AggregateValue::Int(n) => n,
                other => panic!("count is {other:?}"),
            };
            let paid = match r.values[1] {
                AggregateValue::Int(n) => n,
                AggregateValue::Null => 0,
                other => panic!("sum is {other:?}"),
            };
            ((r.window.start.millis(), city), (n, paid))
        })
        .collect()
}

#[test]
fn a_joined_stream_equals_the_left_join_of_what_was_not_late_across_a_restart() {
    let rows = rows();
    let half = rows.len() / 2;

    // Straight through.
    let (speed, _) = layer();
    speed.assign(0, None, 0);
    speed.assign(1, None, 0);
    let (mut latest, mut offsets) = (BTreeMap::new(), BTreeMap::new());
    let mut late = feed(&speed, &rows, 5, &mut latest, &mut offsets);
    let horizon = EventTime(i64::MAX / 2);
    speed.advance_joins(
        horizon,
        Some(EventTime(*latest.values().min().unwrap_or(&0))),
    );
    let together = answer(&speed);
    late.sort_by_key(|r| (r.order, r.id, r.time));
    let want = oracle(&rows, &late);
    assert_eq!(together, want);
    // The workload shows what it claims: unpaid orders (left rows), paid ones, late rows of
    // both sides.
    let unpaid = rows.iter().filter(|o| {
        o.order
            && !rows
                .iter()
                .any(|p| !p.order && p.id == o.id && p.time >= o.time && p.time <= o.time + WITHIN)
    });
    assert!(unpaid.count() > 20);
    assert!(want.values().any(|(_, paid)| *paid > 0));
    assert!(
        late.iter().any(|r| r.order) && late.iter().any(|r| !r.order),
        "{late:?}"
    );
    assert!(
        late.len() * 3 < rows.len(),
        "{} of {} late",
        late.len(),
        rows.len()
    );
    // Bounded: what is buffered once every row is in is what `within` still needs.
    assert_eq!(speed.join_bytes(), 0);

    // Half, a checkpoint of each partition restored in a new layer, the rest.
    let (first, _) = layer();
    first.assign(0, None, 0);
    first.assign(1, None, 0);
    let (mut latest, mut offsets) = (BTreeMap::new(), BTreeMap::new());
    let mut late_again = feed(&first, &rows[..half], 5, &mut latest, &mut offsets);
    assert!(first.join_bytes() > 0, "rows are buffered half-way");
    let (second, _) = layer();
    for p in [0, 1] {
        let snapshot = first.snapshot(p, true);
        assert!(snapshot.as_ref().is_some_and(|s| s.joins[0].is_some()));
        second.assign(p, snapshot, 1);
    }
    assert_eq!(second.join_bytes(), first.join_bytes());
    late_again.extend(feed(&second, &rows[half..], 5, &mut latest, &mut offsets));
    second.advance_joins(
        horizon,
        Some(EventTime(*latest.values().min().unwrap_or(&0))),
    );
    late_again.sort_by_key(|r| (r.order, r.id, r.time));
    assert_eq!(answer(&second), oracle(&rows, &late_again));
}
