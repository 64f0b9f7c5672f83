//! `pg_catalog` and the functions PostgreSQL clients call on connect (`current_schema()`,
//! `quote_ident`, `pg_get_userbyid`, `format_type`, ...), from `datafusion-pg-catalog`, in a
//! PostgreSQL door's session.
//!
//! ```text
//!  static tables (pg_type, pg_proc, ... from the crate's exports): read once per process
//!  per session ─► pg_catalog schema over the session's own catalog list (pg_class,
//!                 pg_attribute, pg_namespace see the views and `events`) + functions
//! ```
//!
//! This is `setup_pg_catalog` of the crate with the static tables read once: reading them took
//! longer than a small query.

use std::sync::{Arc, OnceLock};

use datafusion::arrow::array::{Array, ArrayRef, StringArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::error::DataFusionError;
use datafusion::execution::SessionStateBuilder;
use datafusion::logical_expr::{ColumnarValue, Volatility, create_udf};
use datafusion::prelude::SessionContext;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::{
    self as pg, PgCatalogSchemaProvider, PgCatalogStaticTables, array_bounds_udf,
    context::EmptyContextProvider, format_type, generate_series_arg_coercion, has_privilege_udf,
    oid_type_planner, pg_get_expr_udf, quote_ident_udf,
};

/// The tables of `pg_catalog` that do not depend on the session, read once.
fn static_tables() -> Result<Arc<PgCatalogStaticTables>, DataFusionError> {
    static TABLES: OnceLock<Result<Arc<PgCatalogStaticTables>, String>> = OnceLock::new();
    TABLES
        .get_or_init(|| {
            PgCatalogStaticTables::try_new()
                .map(Arc::new)
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(DataFusionError::Internal)
}

/// Adds `pg_catalog` to the catalog `database` of `ctx`, and the functions clients call.
pub(super) fn install(ctx: &SessionContext, database: &str) -> Result<(), DataFusionError> {
    let tables = static_tables()?;
    let schema = Arc::new(PgCatalogSchemaProvider::try_new(
        ctx.state().catalog_list().clone(),
        Arc::clone(&tables),
        EmptyContextProvider,
    )?);
    ctx.catalog(database)
        .ok_or_else(|| DataFusionError::Internal(format!("no catalog {database}")))?
        .register_schema("pg_catalog", schema)?;
    ctx.register_udf(pg::create_current_database_udf(database));
    ctx.register_udf(pg::create_current_schema_udf());
    ctx.register_udf(pg::create_current_schemas_udf());
    ctx.register_udf(pg::create_pg_get_userbyid_udf());
    for privilege in [
        "has_table_privilege",
        "has_schema_privilege",
        "has_database_privilege",
        "has_any_column_privilege",
    ] {
        ctx.register_udf(has_privilege_udf::create_has_privilege_udf(privilege));
    }
    ctx.register_udf(pg::create_pg_table_is_visible());
    ctx.register_udf(format_type::create_format_type_udf());
    ctx.register_udf(pg::create_session_user_udf());
    ctx.register_udtf("pg_get_keywords", tables.pg_get_keywords.clone());
    ctx.register_udf(pg_get_expr_udf::create_pg_get_expr_udf());
    ctx.register_udf(pg::create_pg_get_partkeydef_udf());
    ctx.register_udf(pg::create_pg_relation_is_publishable_udf());
    ctx.register_udf(pg::create_pg_get_statisticsobjdef_columns_udf());
    ctx.register_udf(pg::create_pg_encoding_to_char_udf());
    ctx.register_udf(pg::create_pg_backend_pid_udf());
    ctx.register_udf(pg::create_pg_relation_size_udf());
    ctx.register_udf(pg::create_pg_total_relation_size_udf());
    ctx.register_udf(pg::create_pg_stat_get_numscans());
    ctx.register_udf(pg::create_pg_get_constraintdef());
    ctx.register_udf(pg::create_pg_get_partition_ancestors_udf());
    ctx.register_udf(quote_ident_udf::create_quote_ident_udf());
    ctx.register_udf(quote_ident_udf::create_parse_ident_udf());
    ctx.register_udf(current_setting());
    ctx.register_udf(version());
    ctx.register_udf(to_regtype());
    ctx.register_udf(array_bounds_udf::create_array_upper_udf());
    ctx.register_udf(array_bounds_udf::create_array_lower_udf());
    // `regclass`, `regproc`, ... as type names, and int4 bounds of generate_series widened.
    let state = ctx.state_ref();
    let existing = state.read().clone();
    *state.write() = SessionStateBuilder::new_from_existing(existing)
        .with_type_planner(Arc::new(oid_type_planner::PgOidTypePlanner))
        .build();
    generate_series_arg_coercion::CoerceIntArgsToBigInt::widen(ctx);
    Ok(())
}

/// The settings `current_setting(name)` answers: the server's, which a client cannot change
/// (its own `SET`s are kept by the connection, see the PostgreSQL door).
pub(crate) const SETTINGS: [(&str, &str); 10] = [
    ("search_path", "public"),
    ("server_version", crate::postgres::SERVER_VERSION),
    ("server_version_num", "160000"),
    ("server_encoding", "UTF8"),
    ("client_encoding", "UTF8"),
    ("timezone", "UTC"),
    ("datestyle", "ISO, MDY"),
    ("standard_conforming_strings", "on"),
    ("integer_datetimes", "on"),
    ("default_transaction_read_only", "on"),
];

/// A setting's value by its name (case-insensitive), as `current_setting` answers it.
pub(crate) fn setting(name: &str) -> Option<&'static str> {
    SETTINGS
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| *v)
}

/// `version()` as PostgreSQL writes it, which drivers parse (SQLAlchemy reads the version
/// after `PostgreSQL `).
fn version() -> datafusion::logical_expr::ScalarUDF {
    let text = format!(
        "PostgreSQL {} (Tandem {}, Apache DataFusion {}) on {}",
        crate::postgres::SERVER_VERSION,
        env!("CARGO_PKG_VERSION"),
        datafusion::DATAFUSION_VERSION,
        std::env::consts::ARCH
    );
    create_udf(
        "version",
        vec![],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(move |_: &[ColumnarValue]| {
            Ok(ColumnarValue::Scalar(
                datafusion::common::ScalarValue::Utf8(Some(text.clone())),
            ))
        }),
    )
}

/// The OID of each built-in PostgreSQL type, by name (`int4`, `_int4`, `numeric`, ...).
fn type_oids() -> &'static std::collections::HashMap<String, i32> {
    static OIDS: OnceLock<std::collections::HashMap<String, i32>> = OnceLock::new();
    OIDS.get_or_init(|| {
        (0..10_000u32)
            .filter_map(|oid| {
                let t = pgwire::api::Type::from_oid(oid)?;
                Some((t.name().to_owned(), i32::try_from(oid).ok()?))
            })
            .collect()
    })
}

/// `to_regtype(name)`: the type's OID, NULL for a type this server does not have (drivers ask
/// for extension types such as `hstore` this way).
fn to_regtype() -> datafusion::logical_expr::ScalarUDF {
    create_udf(
        "to_regtype",
        vec![DataType::Utf8],
        DataType::Int32,
        Volatility::Stable,
        Arc::new(|args: &[ColumnarValue]| {
            let names = ColumnarValue::values_to_arrays(args)?;
            let Some(names) = names
                .first()
                .and_then(|a| a.as_any().downcast_ref::<StringArray>())
            else {
                return Err(DataFusionError::Plan("to_regtype takes a type name".into()));
            };
            let oids = type_oids();
            let answer: ArrayRef = Arc::new(datafusion::arrow::array::Int32Array::from_iter(
                names.iter().map(|name| {
                    let name = name?
                        .trim()
                        .trim_start_matches("pg_catalog.")
                        .to_lowercase();
                    oids.get(&name).copied()
                }),
            ));
            Ok(
                if args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_))) {
                    ColumnarValue::Scalar(datafusion::common::ScalarValue::try_from_array(
                        &answer, 0,
                    )?)
                } else {
                    ColumnarValue::Array(answer)
                },
            )
        }),
    )
}

/// `current_setting(name)`: see [`SETTINGS`]; an unknown name is an error, as in PostgreSQL.
fn current_setting() -> datafusion::logical_expr::ScalarUDF {
    create_udf(
        "current_setting",
        vec![DataType::Utf8],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(|args: &[ColumnarValue]| {
            let names = ColumnarValue::values_to_arrays(args)?;
            let Some(names) = names
                .first()
                .and_then(|a| a.as_any().downcast_ref::<StringArray>())
            else {
                return Err(DataFusionError::Plan(
                    "current_setting takes the name of a setting".into(),
                ));
            };
            let mut values = Vec::with_capacity(names.len());
            for name in names.iter() {
                values.push(match name {
                    None => None,
                    Some(name) => Some(setting(name).ok_or_else(|| {
                        DataFusionError::Plan(format!(
                            "unrecognized configuration parameter \"{name}\""
                        ))
                    })?),
                });
            }
            let answer: ArrayRef = Arc::new(StringArray::from(values));
            Ok(
                if args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_))) {
                    ColumnarValue::Scalar(datafusion::common::ScalarValue::try_from_array(
                        &answer, 0,
                    )?)
                } else {
                    ColumnarValue::Array(answer)
                },
            )
        }),
    )
}
