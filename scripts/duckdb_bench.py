#!/usr/bin/env python3
"""DuckDB side of `tandem-bench batch`.

Reads a JSON list of {"view", "sql"} from the file named by the first argument, runs each query
once to warm the file cache and the planner, then RUNS times more, and prints a JSON list of
{"view", "seconds" (the median), "rows"}. Two threads, like the machine the figures come from.
"""
import json
import sys
import time

import duckdb

RUNS = 5

with open(sys.argv[1]) as f:
    spec = json.load(f)
con = duckdb.connect()
con.execute("SET threads = 2")
out = []
for v in spec:
    con.execute(v["sql"]).fetchall()
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        rows = con.execute(v["sql"]).fetchall()
        times.append(time.perf_counter() - start)
    times.sort()
    out.append({"view": v["view"], "seconds": times[len(times) // 2], "rows": len(rows)})
print(json.dumps(out))
