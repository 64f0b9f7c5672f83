//! Arrow schemas as Delta's JSON struct type (`metaData.schemaString`). Pure.
//!
//! Delta's primitive types for the Arrow types Tandem writes: strings, integers, floats,
//! booleans, binary, dates, UTC timestamps (`timestamp`; a timestamp without a zone would need
//! the `timestampNtz` table feature, which Tandem's tables do not use), decimals, and structs.

use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema};
use serde_json::{Value, json};

/// An Arrow type Delta (reader 1, writer 2) has no type for.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("column `{column}`: {ty} has no Delta type without table features")]
pub struct Unsupported {
    pub column: String,
    pub ty: String,
}

fn type_of(field: &Field) -> Result<Value, Unsupported> {
    let unsupported = || Unsupported {
        column: field.name().clone(),
        ty: field.data_type().to_string(),
    };
    Ok(match field.data_type() {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => json!("string"),
        DataType::Int64 | DataType::UInt32 => json!("long"),
        DataType::Int32 | DataType::UInt16 => json!("integer"),
        DataType::Int16 | DataType::UInt8 => json!("short"),
        DataType::Int8 => json!("byte"),
        DataType::Float64 => json!("double"),
        DataType::Float32 => json!("float"),
        DataType::Boolean => json!("boolean"),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => json!("binary"),
        DataType::Date32 => json!("date"),
        DataType::Timestamp(_, Some(_)) => json!("timestamp"),
        DataType::Decimal128(p, s) if *s >= 0 => json!(format!("decimal({p},{s})")),
        DataType::Struct(fields) => struct_type(fields)?,
        _ => return Err(unsupported()),
    })
}

fn struct_type(fields: &Fields) -> Result<Value, Unsupported> {
    let fields = fields
        .iter()
        .map(|f| {
            Ok(json!({
                "name": f.name(),
                "type": type_of(f)?,
                "nullable": f.is_nullable(),
                "metadata": {},
            }))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(json!({ "type": "struct", "fields": fields }))
}

/// `schema`'s columns, then the partition columns (strings, not in the data files), as
/// Delta's schema string.
pub fn schema_string(schema: &Schema, partitions: &[&str]) -> Result<String, Unsupported> {
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.extend(
        partitions
            .iter()
            .map(|p| Field::new(*p, DataType::Utf8, true)),
    );
    Ok(struct_type(&Fields::from(fields))?.to_string())
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::datatypes::TimeUnit;

    use super::*;

    #[test]
    fn event_columns_map_to_delta_types_and_the_rest_is_refused_by_name() {
        let schema = Schema::new(vec![
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                false,
            ),
            Field::new("city", DataType::Utf8, true),
            Field::new("amount", DataType::Decimal128(12, 2), true),
            Field::new("_kafka_partition", DataType::Int32, false),
            Field::new("_kafka_offset", DataType::Int64, false),
        ]);
        let text = schema_string(&schema, &["hour"]).unwrap_or_else(|e| panic!("{e}"));
        let value: Value = serde_json::from_str(&text).unwrap_or_default();
        let types: Vec<(String, String, bool)> = value["fields"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|f| {
                (
                    f["name"].as_str().unwrap_or_default().to_owned(),
                    f["type"].as_str().unwrap_or_default().to_owned(),
                    f["nullable"].as_bool().unwrap_or_default(),
                )
            })
            .collect();
        let want = [
            ("ts", "timestamp", false),
            ("city", "string", true),
            ("amount", "decimal(12,2)", true),
            ("_kafka_partition", "integer", false),
            ("_kafka_offset", "long", false),
            ("hour", "string", true),
        ];
        assert_eq!(types, want.map(|(n, t, z)| (n.to_owned(), t.to_owned(), z)));
        let naive = Schema::new(vec![Field::new(
            "t",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            true,
        )]);
        assert_eq!(
            schema_string(&naive, &[]).map_err(|e| e.column),
            Err("t".to_owned())
        );
    }
}
