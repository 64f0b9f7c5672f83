"""Reads Tandem through the tools people already use, for the `sql_doors` end-to-end test.

    python sql_doors.py '{"postgres": "127.0.0.1:5432", "flight": "127.0.0.1:50051",
                          "token": "...", "from": "...Z", "to": "...Z", "connections": 200}'

Prints one JSON object: what each client read (decimals as their exact text) and which
SQLSTATE each refusal carried. The test compares it with its own oracle; nothing is judged here.
"""

import json
import sys
import threading
from decimal import Decimal

import adbc_driver_flightsql.dbapi as flightsql
import pandas
import psycopg
import sqlalchemy

ARGS = json.loads(sys.argv[1])
HOST, PORT = ARGS["postgres"].rsplit(":", 1)
TOKEN = ARGS["token"]
VIEW_ROLLUP = (
    "SELECT city, sum(orders) AS orders, sum(revenue) AS revenue "
    "FROM revenue_by_city GROUP BY city ORDER BY city"
)
EVENTS_ROLLUP = (
    "SELECT city, count(*) AS orders, sum(price) AS revenue "
    "FROM events GROUP BY city ORDER BY city"
)


def connect(**extra):
    return psycopg.connect(
        host=HOST, port=PORT, dbname="tandem", user="grafana", password=TOKEN,
        connect_timeout=30, **extra
    )


def text(value):
    """A value as text, decimals exactly."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def rows(cursor):
    return [[text(v) for v in row] for row in cursor.fetchall()]


def sqlstate(query, conn):
    try:
        with conn.cursor() as cur:
            cur.execute(query)
            cur.fetchall()
        return None
    except psycopg.Error as error:
        conn.rollback()
        return error.sqlstate


out = {}

# psycopg: simple and extended (server-side prepared, parameterized) queries, decimals as Decimal.
with connect(autocommit=True) as conn:
    with conn.cursor() as cur:
        cur.execute(VIEW_ROLLUP)
        out["psycopg_view"] = rows(cur)
        out["psycopg_types"] = [type(v).__name__ for v in cur.execute(VIEW_ROLLUP).fetchone()]
        cur.execute(
            "SELECT city, count(*) AS orders, sum(price) AS revenue FROM events "
            "WHERE city = %s AND price >= %s GROUP BY city",
            ("Lagos", Decimal("0")),
            prepare=True,
        )
        out["psycopg_parameterized"] = rows(cur)
        cur.execute(
            "SELECT window_start, window_end FROM revenue_by_city ORDER BY window_start LIMIT 1"
        )
        out["psycopg_window_types"] = [type(v).__name__ for v in cur.fetchone()]
        out["psycopg_window_offset"] = [v.utcoffset().total_seconds() for v in cur.execute(
            "SELECT window_start FROM revenue_by_city LIMIT 1").fetchone()]

    # What clients send on connect, then refusals with their SQLSTATE; the connection answers on.
    with conn.cursor() as cur:
        for statement in [
            "SET search_path TO public",
            "SET application_name = 'tandem-test'",
            "SET DateStyle = 'ISO, MDY'",
            "SET extra_float_digits = 3",
            "BEGIN",
            "COMMIT",
        ]:
            cur.execute(statement)
        out["show_search_path"] = cur.execute("SHOW search_path").fetchone()[0]
        out["show_application_name"] = cur.execute("SHOW application_name").fetchone()[0]
        out["current_setting"] = cur.execute(
            "SELECT current_setting('search_path')").fetchone()[0]
    out["errors"] = {
        "syntax": sqlstate("SELEC city FROM revenue_by_city", conn),
        "ddl": sqlstate("CREATE TABLE t (a int)", conn),
        "dml": sqlstate("DELETE FROM events", conn),
        "copy": sqlstate("COPY events TO STDOUT", conn),
        "engine_setting": sqlstate("SET datafusion.execution.target_partitions = 64", conn),
        "rows": sqlstate("SELECT * FROM generate_series(1, 1000000)", conn),
        "memory": sqlstate("SELECT repeat('x', 400000000)", conn),
        "timeout": sqlstate(
            "SELECT count(*) FROM generate_series(1, 100000000000) AS a", conn),
        "missing_table": sqlstate("SELECT * FROM no_such_view", conn),
    }
    out["answers_after_errors"] = conn.execute("SELECT 1 + 1").fetchone()[0]

# A driver in its default mode (a transaction opened for the first query, rolled back after an
# error) reads on after an error.
with connect() as conn:
    out["transaction_error"] = sqlstate("SELECT * FROM no_such_view", conn)
    out["transaction_after_error"] = rows(conn.execute(VIEW_ROLLUP))

# A wrong password.
try:
    psycopg.connect(host=HOST, port=PORT, dbname="tandem", user="x", password="wrong").close()
    out["bad_password"] = None
except psycopg.OperationalError as error:
    out["bad_password"] = getattr(error, "sqlstate", None) or str(error)

# pandas through SQLAlchemy.
engine = sqlalchemy.create_engine(
    f"postgresql+psycopg://analyst:{TOKEN}@{HOST}:{PORT}/tandem")
# coerce_float=False keeps decimals as Decimal (pandas turns them into floats by default).
frame = pandas.read_sql(VIEW_ROLLUP, engine, coerce_float=False)
out["pandas_view"] = [[text(v) for v in row] for row in frame.itertuples(index=False)]
out["pandas_columns"] = list(frame.columns)
engine.dispose()

# Grafana's PostgreSQL data source: a time series panel, and its query editor's pickers.
with connect(autocommit=True) as conn:
    series = conn.execute(
        'SELECT window_start AS "time", city AS metric, orders FROM revenue_by_city '
        f"WHERE window_start BETWEEN '{ARGS['from']}' AND '{ARGS['to']}' ORDER BY 1, 2"
    )
    out["grafana_series"] = rows(series)
    tables = conn.execute("""SELECT
        CASE WHEN
              quote_ident(table_schema) IN (
              SELECT
                CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
              FROM
                generate_series(
                  array_lower(string_to_array(current_setting('search_path'),','),1),
                  array_upper(string_to_array(current_setting('search_path'),','),1)
                ) as i,
                string_to_array(current_setting('search_path'),',') s
              )
          THEN quote_ident(table_name)
          ELSE quote_ident(table_schema) || '.' || quote_ident(table_name)
        END AS "table"
        FROM information_schema.tables
        WHERE quote_ident(table_schema) NOT IN ('information_schema',
                                 'pg_catalog',
                                 '_timescaledb_cache',
                                 '_timescaledb_catalog',
                                 '_timescaledb_internal',
                                 '_timescaledb_config',
                                 'timescaledb_information',
                                 'timescaledb_experimental')
        ORDER BY CASE WHEN
              quote_ident(table_schema) IN (
              SELECT
                CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
              FROM
                generate_series(
                  array_lower(string_to_array(current_setting('search_path'),','),1),
                  array_upper(string_to_array(current_setting('search_path'),','),1)
                ) as i,
                string_to_array(current_setting('search_path'),',') s
              ) THEN 0 ELSE 1 END, 1""")
    out["grafana_tables"] = rows(tables)
    columns = conn.execute("""SELECT quote_ident(column_name) AS "column", data_type AS "type"
        FROM information_schema.columns
        WHERE
          CASE WHEN array_length(parse_ident('public.revenue_by_city'),1) = 2
            THEN quote_ident(table_schema) = (parse_ident('public.revenue_by_city'))[1]
              AND quote_ident(table_name) = (parse_ident('public.revenue_by_city'))[2]
            ELSE quote_ident(table_name) = 'public.revenue_by_city'
              AND
              quote_ident(table_schema) IN (
              SELECT
                CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
              FROM
                generate_series(
                  array_lower(string_to_array(current_setting('search_path'),','),1),
                  array_upper(string_to_array(current_setting('search_path'),','),1)
                ) as i,
                string_to_array(current_setting('search_path'),',') s
              )
          END""")
    out["grafana_columns"] = rows(columns)
    out["pg_class"] = rows(conn.execute(
        "SELECT c.relname FROM pg_catalog.pg_class c "
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' ORDER BY 1"))

# Every column of every table, in text and in binary, through psycopg; and through ADBC.
out["types"] = {}
with connect(autocommit=True) as conn:
    for table in ["events", "revenue_by_city", "by_kind"]:
        read = {}
        for encoding in ["text", "binary"]:
            with conn.cursor(binary=encoding == "binary") as cur:
                cur.execute(f"SELECT * FROM {table} LIMIT 5")
                row = cur.fetchone()
                read[encoding] = {
                    d.name: type(v).__name__ for d, v in zip(cur.description, row)}
        out["types"][table] = read

# Many connections at once: each is served, or refused with a PostgreSQL error.
outcomes = []
lock = threading.Lock()
barrier = threading.Barrier(ARGS["connections"], timeout=120)


def one():
    outcome = None
    try:
        with connect(autocommit=True) as conn:
            try:
                barrier.wait()
            except threading.BrokenBarrierError:
                pass
            try:
                outcome = ["served", str(conn.execute(
                    "SELECT count(*) FROM revenue_by_city").fetchone()[0])]
            except psycopg.Error as error:
                outcome = ["refused", error.sqlstate]
    except psycopg.OperationalError as error:
        outcome = ["refused", getattr(error, "sqlstate", None) or str(error)]
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            pass
    except Exception as error:  # anything else is what the test reports
        outcome = ["failed", repr(error)]
    with lock:
        outcomes.append(outcome)


threads = [threading.Thread(target=one) for _ in range(ARGS["connections"])]
for t in threads:
    t.start()
for t in threads:
    t.join()
out["connections"] = outcomes
with connect(autocommit=True) as conn:
    out["after_connections"] = str(conn.execute(
        "SELECT count(*) FROM revenue_by_city").fetchone()[0])

# ADBC over Flight SQL: Arrow tables, decimals as Decimal128.
with flightsql.connect(
    f"grpc://{ARGS['flight']}",
    db_kwargs={"adbc.flight.sql.authorization_header": f"Bearer {TOKEN}"},
) as conn:
    with conn.cursor() as cur:
        cur.execute(VIEW_ROLLUP)
        table = cur.fetch_arrow_table()
        out["adbc_view"] = [[text(v) for v in row.values()] for row in table.to_pylist()]
        out["adbc_types"] = [str(t) for t in table.schema.types]
        cur.execute(EVENTS_ROLLUP)
        out["adbc_events"] = [
            [text(v) for v in row.values()] for row in cur.fetch_arrow_table().to_pylist()]
        for table in ["events", "revenue_by_city", "by_kind"]:
            cur.execute(f"SELECT * FROM {table} LIMIT 5")
            out["types"][table]["adbc_rows"] = cur.fetch_arrow_table().num_rows
try:
    with flightsql.connect(
        f"grpc://{ARGS['flight']}",
        db_kwargs={"adbc.flight.sql.authorization_header": "Bearer wrong"},
    ) as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            cur.fetchall()
    out["adbc_bad_token"] = None
except Exception as error:  # the driver's error class
    out["adbc_bad_token"] = str(error)

json.dump(out, sys.stdout)
