//! What the PostgreSQL and Flight SQL doors ask of the engine: statements their own parser read,
//! with parameters typed before they run, `pg_catalog` in a PostgreSQL session only, and no
//! array function that builds a value larger than its arguments.

use datafusion::common::ScalarValue;
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

use super::*;

fn parsed(sql: &str, params: Option<Vec<ScalarValue>>) -> Statement {
    let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap();
    Statement::Parsed {
        statement: Box::new(statements.remove(0)),
        params: params.map(ParamValues::from),
    }
}

#[tokio::test]
async fn a_prepared_statement_is_typed_then_answered_with_its_values() {
    let f = fixture(SqlLimits::default()).await;
    let sql = "SELECT city, count(*) AS n FROM orders_by_city WHERE city = $1 GROUP BY city";
    let described = f
        .engine
        .describe(Request::new(parsed(sql, None), Dialect::Postgres))
        .await
        .unwrap();
    assert_eq!(described.params, [Some(DataType::Utf8)]);
    let fields: Vec<_> = described
        .schema
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(fields, ["city", "n"]);
    let answer = f
        .engine
        .answer(Request::new(
            parsed(sql, Some(vec![ScalarValue::from("Oslo")])),
            Dialect::Postgres,
        ))
        .await
        .unwrap();
    assert_eq!(strings(&answer, 0), ["Oslo"]);
    let windows = oracle(&f.orders, f.base, 0, MINUTES)
        .keys()
        .filter(|(_, c)| c == "Oslo")
        .count();
    assert_eq!(ints(&answer, 1), [windows as i64]);
    // Without its values, a statement with parameters is refused, not run.
    match f
        .engine
        .answer(Request::new(parsed(sql, None), Dialect::Postgres))
        .await
    {
        Err(Error::Plan { message, .. }) => assert!(message.contains("parameters"), "{message}"),
        other => panic!("{other:?}"),
    }
    // A parsed statement that is not a query is refused before it is planned.
    for (sql, what) in [
        ("DELETE FROM events", "a change"),
        ("CREATE TABLE t (a INT)", "a definition"),
        ("COPY events TO '/tmp/x'", "COPY"),
    ] {
        match f
            .engine
            .answer(Request::new(parsed(sql, None), Dialect::Postgres))
            .await
        {
            Err(Error::ReadOnly(refused)) => assert!(refused.starts_with(what), "{sql}: {refused}"),
            other => panic!("{sql}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_postgres_session_knows_pg_catalog_and_the_functions_clients_call() {
    let f = fixture(SqlLimits::default()).await;
    let sql = "SELECT current_database() AS db, current_setting('search_path') AS path, \
               quote_ident('Odd Name') AS q, version() AS v, \
               to_regtype('int4') AS int4, to_regtype('hstore') AS hstore";
    let answer = f
        .engine
        .answer(Request::new(sql.into(), Dialect::Postgres))
        .await
        .unwrap();
    assert_eq!(strings(&answer, 0), [DATABASE]);
    assert_eq!(strings(&answer, 1), ["public"]);
    assert_eq!(strings(&answer, 2), ["\"Odd Name\""]);
    // Drivers read the server's version from it (SQLAlchemy parses what follows `PostgreSQL `).
    assert!(strings(&answer, 3)[0].starts_with("PostgreSQL 16.6 (Tandem "));
    // Built-in types have their OIDs; an extension's type is not here.
    assert_eq!(ints(&answer, 4), [23]);
    assert_eq!(answer.batches[0].column(5).null_count(), 1);
    let tables = f
        .engine
        .answer(Request::new(
            "SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n \
             ON n.oid = c.relnamespace WHERE n.nspname = 'public' ORDER BY 1"
                .into(),
            Dialect::Postgres,
        ))
        .await
        .unwrap();
    assert_eq!(strings(&tables, 0), [EVENTS_TABLE, "orders_by_city"]);
    // An unknown setting is an error, as in PostgreSQL.
    assert!(matches!(
        f.engine
            .answer(Request::new(
                "SELECT current_setting('no_such')".into(),
                Dialect::Postgres
            ))
            .await,
        Err(Error::Plan { .. } | Error::Execution(_) | Error::Internal(_))
    ));
    // The HTTP door's sessions do not have them.
    assert!(matches!(
        f.engine
            .query("SELECT current_setting('search_path')")
            .await,
        Err(Error::Plan { .. })
    ));
}

#[tokio::test]
async fn array_functions_that_build_large_values_are_not_registered() {
    let f = fixture(SqlLimits::default()).await;
    for bomb in [
        "SELECT array_repeat(1, 1000000000)",
        "SELECT list_repeat('x', 1000000000)",
        "SELECT range(0, 1000000000)",
        "SELECT cardinality(generate_series(1, 1000000000))",
        "SELECT array_resize(make_array(1), 1000000000)",
        "SELECT array_concat(make_array(1), make_array(2))",
    ] {
        match f.engine.query(bomb).await {
            Err(Error::Plan { message, .. }) => {
                assert!(message.contains("function"), "{bomb}: {message}")
            }
            other => panic!("{bomb}: {other:?}"),
        }
    }
    // What clients' catalog queries and `= ANY` use is there.
    let answer = f
        .engine
        .query(
            "SELECT array_length(string_to_array('a,b,c', ','), 1) AS n, \
             make_array(1, 2)[2] AS second, cardinality(make_array(1, 2, 3)) AS c",
        )
        .await
        .unwrap();
    assert_eq!(ints(&answer, 0), [3]);
    assert_eq!(ints(&answer, 1), [2]);
}
