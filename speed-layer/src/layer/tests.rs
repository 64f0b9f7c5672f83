use super::*;
use datafusion::arrow::array::RecordBatch;
use tandem_shared::event::EventDecoder;
use tandem_shared::schema::FieldType;
use tandem_shared::testing;
use tandem_shared::value::AggregateValue;

fn setup(filter: &str) -> (SpeedLayer, EventDecoder) {
    let schema = testing::schema(&[("a", FieldType::Int64), ("b", FieldType::Int64)]);
    let view = testing::view(
        &schema,
        "ratio",
        testing::tumbling("1m"),
        &[],
        Some(filter),
        &["count(*) AS n", "sum(a) AS a"],
    );
    let speed = SpeedLayer::compile(&[view], &schema).unwrap();
    (speed, EventDecoder::new(schema))
}

fn batch(decoder: &EventDecoder, partition: i32, rows: &[&str]) -> RecordBatch {
    testing::batch(decoder, partition, 0, rows)
}

const ALL: StartRange = StartRange {
    from: EventTime::MIN,
    to: EventTime::MAX,
};

/// Copies of an id within the horizon are dropped before the views count them, in one
/// micro-batch and across micro-batches, and a layer restored from a checkpoint still knows
/// the ids; events without an id are all counted.
#[test]
fn copies_are_dropped_within_the_horizon_and_across_a_checkpoint() {
    let schema = testing::schema_with_id(
        &[("id", FieldType::String), ("a", FieldType::Int64)],
        Some("id"),
    );
    let view = testing::view(
        &schema,
        "ratio",
        testing::tumbling("1m"),
        &[],
        None,
        &["count(*) AS n", "sum(a) AS a"],
    );
    let views = [view];
    let speed = SpeedLayer::compile(&views, &schema).unwrap();
    let decoder = EventDecoder::new(Arc::clone(&schema));
    speed.assign(0, None, 0);
    let first = batch(
        &decoder,
        0,
        &[
            r#"{"ts":1000,"id":"x","a":1}"#,
            r#"{"ts":1000,"id":"x","a":1}"#,
            r#"{"ts":2000,"id":"y","a":10}"#,
            r#"{"ts":2000,"a":100}"#,
            r#"{"ts":2000,"a":100}"#,
        ],
    );
    crate::micro_batch::apply_one(&speed, 0, Some(&first), None, 4, Some(EventTime(2000)));
    let second = batch(&decoder, 0, &[r#"{"ts":3000,"id":"y","a":10}"#]);
    crate::micro_batch::apply_one(&speed, 0, Some(&second), None, 5, Some(EventTime(3000)));
    let counted = |speed: &SpeedLayer| speed.query("ratio", ALL).unwrap()[0].values.clone();
    assert_eq!(
        counted(&speed),
        [AggregateValue::Int(4), AggregateValue::Int(211)]
    );
    // Restored from its checkpoint, the layer still drops copies of x and y.
    let snapshot = speed.snapshot(0, true).unwrap();
    assert_eq!(snapshot.seen.len(), 2);
    let restored = SpeedLayer::compile(&views, &schema).unwrap();
    assert_eq!(restored.assign(0, Some(snapshot), 1), Some(6));
    let copies = batch(
        &decoder,
        0,
        &[
            r#"{"ts":1000,"id":"x","a":1}"#,
            r#"{"ts":4000,"id":"z","a":1000}"#,
        ],
    );
    crate::micro_batch::apply_one(&restored, 0, Some(&copies), None, 7, Some(EventTime(4000)));
    assert_eq!(
        counted(&restored),
        [AggregateValue::Int(5), AggregateValue::Int(1211)]
    );
    // Past the horizon (the window plus its lateness: 60 s here) an id is forgotten.
    let later = batch(
        &decoder,
        0,
        &[
            r#"{"ts":200000,"id":"w","a":0}"#,
            r#"{"ts":1000,"id":"x","a":1}"#,
        ],
    );
    crate::micro_batch::apply_one(
        &restored,
        0,
        Some(&later),
        None,
        9,
        Some(EventTime(200_000)),
    );
    let rows = restored.query("ratio", ALL).unwrap();
    let first_window: i64 = rows
        .iter()
        .filter(|r| r.window.start == EventTime(0))
        .map(|r| match r.values[0] {
            AggregateValue::Int(n) => n,
            _ => 0,
        })
        .sum();
    assert_eq!(first_window, 6, "a copy past the horizon is counted");
}

#[test]
fn an_expression_error_rejects_only_the_rows_it_fails_on() {
    let (speed, decoder) = setup("a / b > 1");
    speed.assign(0, None, 0);
    let b = batch(
        &decoder,
        0,
        &[
            r#"{"ts":1,"a":4,"b":2}"#,
            r#"{"ts":2,"a":4,"b":0}"#,
            r#"{"ts":3,"a":9,"b":3}"#,
        ],
    );
    let outcome = crate::micro_batch::apply_one(&speed, 0, Some(&b), None, 2, None);
    assert_eq!(outcome[0].rejected.len(), 1);
    assert_eq!(outcome[0].rejected[0].0, 1);
    assert!(
        outcome[0].rejected[0]
            .1
            .to_lowercase()
            .contains("divide by zero"),
        "{:?}",
        outcome[0].rejected
    );
    let rows = speed.query("ratio", ALL).unwrap();
    assert_eq!(rows[0].values[0], AggregateValue::Int(2));
}

#[test]
fn a_query_in_progress_never_holds_up_ingestion() {
    let (speed, decoder) = setup("a > 0");
    speed.assign(0, None, 0);
    let first = batch(&decoder, 0, &[r#"{"ts":1,"a":1}"#]);
    crate::micro_batch::apply_one(&speed, 0, Some(&first), None, 0, Some(EventTime(1)));

    // A query has pinned its windows and is still merging them...
    let pinned = speed.pin("ratio", ALL).unwrap();
    // ...while the consume thread applies the next micro-batch. It runs on another thread
    // with a deadline, so a lock kept by the reader fails the test instead of hanging it.
    let (done, finished) = std::sync::mpsc::channel();
    let consume = speed.clone();
    let next = batch(&decoder, 0, &[r#"{"ts":2,"a":5}"#]);
    std::thread::spawn(move || {
        crate::micro_batch::apply_one(&consume, 0, Some(&next), None, 1, Some(EventTime(2)));
        done.send(()).ok();
    });
    finished
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("the micro-batch was applied while a query held pinned windows");

    // The query in progress answers the window as it pinned it; the next query sees the
    // micro-batch, and so does a checkpoint.
    let old = SpeedLayer::rows_of(&pinned);
    assert_eq!(
        old[0].values,
        [AggregateValue::Int(1), AggregateValue::Int(1)]
    );
    let new = speed.query("ratio", ALL).unwrap();
    assert_eq!(
        new[0].values,
        [AggregateValue::Int(2), AggregateValue::Int(6)]
    );
    let snapshot = speed.snapshot(0, false).unwrap();
    assert_eq!(snapshot.next_offset, Some(2));
    assert_eq!(snapshot.views[0].entries[0].accs.len(), 2);
    drop(pinned);
    assert_eq!(speed.query("ratio", ALL).unwrap(), new);
}

#[test]
fn queries_merge_partitions_and_checkpoints_restore_them() {
    let (speed, decoder) = setup("a > 0");
    speed.assign(0, None, 0);
    speed.assign(1, None, 0);
    crate::micro_batch::apply_one(
        &speed,
        0,
        Some(&batch(
            &decoder,
            0,
            &[r#"{"ts":1,"a":1}"#, r#"{"ts":2,"a":2}"#],
        )),
        None,
        1,
        Some(EventTime(2)),
    );
    crate::micro_batch::apply_one(
        &speed,
        1,
        Some(&batch(&decoder, 1, &[r#"{"ts":3,"a":4}"#])),
        None,
        0,
        Some(EventTime(3)),
    );
    let rows = speed.query("ratio", ALL).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].values,
        [AggregateValue::Int(3), AggregateValue::Int(7)]
    );

    // Partition 1 moves to another worker with its checkpoint.
    let snapshot = speed.snapshot(1, false).unwrap();
    assert_eq!(snapshot.next_offset, Some(1));
    assert!(speed.snapshot(1, false).is_none(), "nothing changed since");
    speed.revoke(1);
    assert_eq!(
        speed.query("ratio", ALL).unwrap()[0].values[0],
        AggregateValue::Int(2)
    );
    let (other, _) = setup("a > 0");
    assert_eq!(other.assign(1, Some(snapshot.clone()), 0), Some(1));
    assert_eq!(
        other.query("ratio", ALL).unwrap()[0].values[1],
        AggregateValue::Int(4)
    );

    // A checkpoint of other view definitions is not restored.
    let (changed, _) = setup("a > 1");
    assert_eq!(changed.assign(1, Some(snapshot), 0), None);
    assert!(changed.query("ratio", ALL).unwrap().is_empty());
}
