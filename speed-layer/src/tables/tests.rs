use std::sync::Arc;

use datafusion::arrow::array::{Array, StringArray};
use datafusion::arrow::datatypes::Schema;
use tandem_shared::event::{EventBatchBuilder, EventDecoder, Read};
use tandem_shared::schema::FieldType;
use tandem_shared::table::{TableDefinition, joined_fields};

use super::*;

fn merchants(envelope: Option<tandem_shared::event::Envelope>) -> Arc<TableDefinition> {
    tandem_shared::testing::table(
        "merchants",
        "id",
        &[("id", FieldType::String), ("category", FieldType::String)],
        envelope,
    )
}

/// Decodes table rows as the reader does (the record timestamp as their time).
fn rows(table: &TableDefinition, payloads: &[&str]) -> RecordBatch {
    let decoder = EventDecoder::with_format(Arc::clone(table.schema()), &table.format()).unwrap();
    let mut builder = EventBatchBuilder::new(&decoder, payloads.len());
    for (i, p) in payloads.iter().enumerate() {
        match decoder.read_record(Some(p.as_bytes()), Vec::new(), Some(1_800_000_000_000)) {
            Read::Event(e) => builder.append(&e, 0, i as i64),
            other => panic!("{p}: {other:?}"),
        }
    }
    builder.finish()
}

fn categories(d: &Arc<Dimension>, keys: &[Option<&str>]) -> (Vec<Option<String>>, Enriched) {
    let events = Arc::new(Schema::new(vec![datafusion::arrow::datatypes::Field::new(
        "merchant",
        datafusion::arrow::datatypes::DataType::Utf8,
        true,
    )]));
    let batch = RecordBatch::try_new(
        Arc::clone(&events),
        vec![Arc::new(StringArray::from(keys.to_vec()))],
    )
    .unwrap();
    let join = tandem_shared::table::Join {
        table: Arc::clone(d.definition()),
        on: "merchant".into(),
    };
    let mut fields: Vec<_> = events.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.extend(joined_fields(&[join]));
    let schema = Arc::new(Schema::new(fields));
    let lookups = [Lookup {
        table: Arc::clone(d),
        on: "merchant".into(),
    }];
    let enriched = enrich(&batch, &lookups, &schema).unwrap();
    let column = enriched
        .batch
        .column_by_name("merchants.category")
        .unwrap()
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap()
        .iter()
        .map(|v| v.map(str::to_owned))
        .collect();
    (column, enriched)
}

#[test]
fn events_join_the_latest_row_of_their_key_and_missing_keys_are_null() {
    let table = merchants(None);
    let d = Arc::new(Dimension::new(Arc::clone(&table)));
    d.apply(&rows(
        &table,
        &[
            r#"{"id": "m1", "category": "books"}"#,
            r#"{"id": "m2", "category": "food"}"#,
            r#"{"id": "m1", "category": "music"}"#,
        ],
    ))
    .unwrap();
    d.apply(&rows(&table, &[r#"{"id": "m2", "category": "toys"}"#]))
        .unwrap();
    assert_eq!(d.len(), 2);
    let (got, enriched) = categories(&d, &[Some("m1"), Some("m2"), Some("m9"), None]);
    assert_eq!(got, [Some("music".into()), Some("toys".into()), None, None]);
    assert_eq!(enriched.matched, [true, true, false, false]);
    assert_eq!(enriched.missing, 2);
    assert_eq!(kept(OnMissing::Keep, &enriched), None);
    assert_eq!(
        kept(OnMissing::Drop, &enriched),
        Some([true, true, false, false].as_slice())
    );
}

#[test]
fn compaction_keeps_exactly_the_latest_rows() {
    let table = merchants(None);
    let d = Arc::new(Dimension::new(Arc::clone(&table)));
    // Many small updates of few keys: chunks are compacted along the way.
    for round in 0..(MAX_CHUNKS * 3) {
        let payloads: Vec<String> = (0..5)
            .map(|k| format!(r#"{{"id": "m{k}", "category": "c{round}-{k}"}}"#))
            .collect();
        let refs: Vec<&str> = payloads.iter().map(String::as_str).collect();
        d.apply(&rows(&table, &refs)).unwrap();
        assert!(d.read().chunks.len() <= MAX_CHUNKS + 1);
    }
    // Accounted: the five keys' latest rows after compaction, not every row ever received.
    let bytes = d.bytes();
    assert!(bytes > 0 && bytes < 64 * 1024, "{bytes} bytes for 5 keys");
    let last = MAX_CHUNKS * 3 - 1;
    let (got, _) = categories(&d, &[Some("m0"), Some("m4"), Some("m5")]);
    assert_eq!(
        got,
        [Some(format!("c{last}-0")), Some(format!("c{last}-4")), None]
    );
}

#[test]
fn a_changelog_delete_removes_its_key() {
    let table = merchants(Some(tandem_shared::event::Envelope::Debezium));
    let d = Arc::new(Dimension::new(Arc::clone(&table)));
    d.apply(&rows(
        &table,
        &[
            r#"{"op": "c", "after": {"id": "m1", "category": "books"}}"#,
            r#"{"op": "c", "after": {"id": "m2", "category": "food"}}"#,
            r#"{"op": "d", "before": {"id": "m1", "category": "books"}}"#,
        ],
    ))
    .unwrap();
    let (got, enriched) = categories(&d, &[Some("m1"), Some("m2")]);
    assert_eq!(got, [None, Some("food".into())]);
    assert_eq!(enriched.missing, 1);
}
