"""The clients' side of `tandem-bench doors`: psycopg and ADBC against Tandem's SQL doors.

    python doors_bench.py '{"postgres": "127.0.0.1:5432", "flight": "127.0.0.1:50051",
                            "runs": 50, "queries": [[name, sql], ...], "scan": "SELECT ..."}'

Prints one JSON object: each query's times in seconds through psycopg (after a warm-up), and
the seconds of the scan through ADBC (Arrow) and psycopg, with its row count.
"""

import json
import sys
import time

import adbc_driver_flightsql.dbapi as flightsql
import psycopg

ARGS = json.loads(sys.argv[1])
HOST, PORT = ARGS["postgres"].rsplit(":", 1)
out = {"psycopg": {}}

with psycopg.connect(host=HOST, port=PORT, dbname="tandem", user="bench",
                     autocommit=True) as conn:
    for name, sql in ARGS["queries"]:
        conn.execute(sql).fetchall()
        times = []
        for _ in range(ARGS["runs"]):
            started = time.perf_counter()
            conn.execute(sql).fetchall()
            times.append(time.perf_counter() - started)
        out["psycopg"][name] = times
    started = time.perf_counter()
    rows = len(conn.execute(ARGS["scan"]).fetchall())
    out["psycopg_scan"] = time.perf_counter() - started

with flightsql.connect(f"grpc://{ARGS['flight']}") as conn:
    with conn.cursor() as cur:
        cur.execute(ARGS["scan"])
        cur.fetch_arrow_table()
        started = time.perf_counter()
        cur.execute(ARGS["scan"])
        table = cur.fetch_arrow_table()
        out["adbc_scan"] = time.perf_counter() - started
        if table.num_rows != rows:
            sys.exit(f"ADBC read {table.num_rows} rows, psycopg {rows}")
out["scan_rows"] = rows
json.dump(out, sys.stdout)
