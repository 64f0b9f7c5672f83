"""The hostile day at full size, against a running `tandem dev --demo` (see scripts/attack).

Each probe prints what it measured; BENCHMARKS.md ("Under attack") records a run. The probes:

  cpu       four CPU-bound cross joins from a read token; /healthz and a view query timed meanwhile
  slow      2,000 half-sent requests held for 65 s; checkpoints counted meanwhile
  bombs     repeat/lpad/|| bombs: status, resident memory before and after
  future    eight events 55 minutes ahead; watermark, late events, the current minute's row
  streams   1,000 streams at once for 32 s: how many were served, CPU and bytes
  decimals  a decimal sum in JSON and CSV
  quiet     bursts after quiet periods (roll_interval 2 s): events archived of events sent

Usage: attack.py HTTP_URL KAFKA_BOOTSTRAP PID READ_TOKEN [probe ...]
"""

import json
import os
import socket
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request

URL, KAFKA, PID, TOKEN = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
PROBES = sys.argv[5:] or ["cpu", "slow", "bombs", "future", "streams", "decimals", "quiet"]


def request(path, body=None, timeout=120, accept=None):
    """(status, body bytes, seconds) of one request with the read token."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if accept:
        headers["Accept"] = accept
    started = time.monotonic()
    req = urllib.request.Request(URL + path, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read(), time.monotonic() - started
    except urllib.error.HTTPError as err:
        return err.code, err.read(), time.monotonic() - started
    except Exception as err:  # a timeout, a reset
        return None, str(err).encode(), time.monotonic() - started


def sql(query, timeout=120, accept=None):
    return request("/v1/sql", {"sql": query}, timeout, accept)


def metric(name):
    _, text, _ = request("/metrics")
    total = 0.0
    for line in text.decode().splitlines():
        if line.startswith(name) and line[len(name):len(name) + 1] in (" ", "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def status_field(field):
    with open(f"/proc/{PID}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def cpu_seconds():
    with open(f"/proc/{PID}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def p99(values):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * 0.99))] if values else float("nan")


def probe_cpu():
    cross = ("SELECT count(*) FROM generate_series(1,200000) a CROSS JOIN "
             "generate_series(1,200000) b WHERE (a.value*b.value)%7=3")
    results = []
    events0, checkpoints0, started = (metric("tandem_speed_events_total"),
                                      metric("tandem_checkpoints_total"), time.monotonic())
    threads = [threading.Thread(target=lambda: results.append(sql(cross))) for _ in range(4)]
    for t in threads:
        t.start()
    health, views = [], []
    while any(t.is_alive() for t in threads):
        health.append(request("/healthz", timeout=60)[2])
        views.append(request("/v1/views/orders_by_city?limit=100", timeout=60)[2])
        time.sleep(0.1)
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    print(f"cpu: meanwhile the speed layer consumed "
          f"{(metric('tandem_speed_events_total') - events0) / elapsed:.0f} events/s and wrote "
          f"{metric('tandem_checkpoints_total') - checkpoints0:.0f} checkpoints in {elapsed:.1f} s")
    for status, body, took in results:
        print(f"cpu: cross join -> {status} in {took:.1f} s: {body[:120].decode(errors='replace')}")
    print(f"cpu: /healthz during: n={len(health)} p50={statistics.median(health)*1000:.1f} ms "
          f"p99={p99(health)*1000:.1f} ms max={max(health)*1000:.1f} ms")
    print(f"cpu: view query during: n={len(views)} p50={statistics.median(views)*1000:.1f} ms "
          f"p99={p99(views)*1000:.1f} ms max={max(views)*1000:.1f} ms")


def probe_slow():
    host, port = URL.removeprefix("http://").rsplit(":", 1)
    before = metric("tandem_checkpoints_total")
    errors_before = metric("tandem_checkpoint_errors_total")
    held, refused = [], 0
    for _ in range(2000):
        s = socket.socket()
        s.settimeout(2)
        try:
            s.connect((host, int(port)))
            s.sendall(b"GET /v1/views HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            held.append(s)
        except OSError:
            refused += 1
    started = time.monotonic()
    health = []
    while time.monotonic() - started < 65:
        health.append(request("/healthz", timeout=60))
        time.sleep(1)
    closed = 0
    for s in held:
        s.setblocking(False)
        try:
            if s.recv(1) == b"":
                closed += 1
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
        s.close()
    ok = sum(1 for status, _, _ in health if status == 200)
    print(f"slow: {len(held)} half-sent requests held 65 s ({refused} not connected); "
          f"checkpoints meanwhile: {metric('tandem_checkpoints_total') - before:.0f}, "
          f"failed: {metric('tandem_checkpoint_errors_total') - errors_before:.0f}; "
          f"/healthz {ok}/{len(health)} answered, slowest {max(h[2] for h in health):.2f} s; "
          f"closed by the server: {closed}")


def probe_bombs():
    for query in ["SELECT length(repeat('x',400000000))",
                  "SELECT repeat('x',300000000) AS s",
                  "SELECT lpad('x', 300000000)",
                  "SELECT length(s || s || s || s) FROM (SELECT repeat('x', 100000000) AS s)"]:
        rss = status_field("VmRSS")
        status, body, took = sql(query)
        print(f"bombs: {query} -> {status} in {took:.2f} s, RSS {rss // 1024} -> "
              f"{status_field('VmRSS') // 1024} MiB (peak {status_field('VmHWM') // 1024} MiB): "
              f"{body[:100].decode(errors='replace')}")


def producer():
    from confluent_kafka import Producer
    return Producer({"bootstrap.servers": KAFKA, "linger.ms": 5})


def probe_future():
    p = producer()
    ahead = int(time.time() * 1000) + 55 * 60_000
    late_before = metric("tandem_late_events_total")
    for i in range(8):
        p.produce("orders", key=f"f{i}", value=json.dumps({
            "order_id": f"future-{i}", "city": "Future", "user_id": "u", "amount": "1.00",
            "event_type": "order_placed", "ts": ahead}))
    p.flush(30)
    time.sleep(10)
    now = int(time.time() * 1000)
    progress = metric("tandem_speed_event_time_progress_ms")
    _, body, _ = request("/v1/views/orders_by_city?from=" + str(now - 60_000))
    rows = json.loads(body)["rows"]
    print(f"future: progress {progress:.0f} vs clock {now} (ahead by {progress - now:.0f} ms); "
          f"late events in 10 s: {metric('tandem_late_events_total') - late_before:.0f}; "
          f"rows of the current minute: {sum(1 for r in rows if r['group']['city'] != 'Future')}; "
          f"future events kept: {metric('tandem_speed_future_events_total'):.0f}")


def probe_streams():
    host, port = URL.removeprefix("http://").rsplit(":", 1)
    # The process's own CPU without streams (the demo's producer, ingestion, the archive).
    idle0, idle_started = cpu_seconds(), time.monotonic()
    time.sleep(16)
    baseline = (cpu_seconds() - idle0) / (time.monotonic() - idle_started) * 32
    socks, served, refused, waiting, unconnected = [], 0, 0, 0, 0
    for _ in range(1000):
        try:
            s = socket.create_connection((host, int(port)), timeout=2)
            s.sendall(f"GET /v1/views/orders_by_city/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      f"Authorization: Bearer {TOKEN}\r\n\r\n".encode())
            socks.append(s)
        except OSError:
            # Past the connection cap and the listen backlog: the kernel drops the SYN.
            unconnected += 1
    received = 0
    cpu0, started = cpu_seconds(), time.monotonic()
    heads = {}
    for s in socks:
        s.setblocking(False)
    while time.monotonic() - started < 5 and len(heads) < len(socks):
        for i, s in enumerate(socks):
            if i in heads:
                continue
            try:
                data = s.recv(65536)
                heads[i] = data
                received += len(data)
            except (BlockingIOError, OSError):
                pass
        time.sleep(0.05)
    for head in heads.values():
        if head.startswith(b"HTTP/1.1 200"):
            served += 1
        elif head.startswith(b"HTTP/1.1 503"):
            refused += 1
    # Not answered within 5 s: past the connection cap, waiting in the kernel's backlog.
    waiting = len(socks) - len(heads)
    while time.monotonic() - started < 32:
        for s in socks:
            try:
                received += len(s.recv(65536))
            except (BlockingIOError, OSError):
                pass
        time.sleep(0.5)
    cpu = cpu_seconds() - cpu0
    for s in socks:
        s.close()
    time.sleep(5)
    print(f"streams: 1000 tried: {served} served, {refused} refused (503), {waiting} not "
          f"answered within 5 s and {unconnected} not connected (past the connection cap); "
          f"{cpu:.1f} CPU-seconds in 32 s ({baseline:.1f} without streams), "
          f"{received / 1e6:.1f} MB received; "
          f"open after the clients left: {metric('tandem_http_streams'):.0f}")


def probe_decimals():
    query = "SELECT sum(revenue) AS revenue FROM orders_by_city"
    _, body, _ = sql(query)
    _, csv, _ = sql(query, accept="text/csv")
    print(f"decimals: JSON {json.loads(body)['rows'][0][0]!r}, CSV {csv.decode().splitlines()[1]!r}")


def probe_quiet():
    p = producer()
    _, body, _ = sql("SELECT count(*) FROM events")
    start = json.loads(body)["rows"][0][0]
    sent = 0
    for burst in range(3):
        for i in range(1300):
            p.produce("orders", key=f"q{burst}-{i}", value=json.dumps({
                "order_id": f"quiet-{burst}-{i}", "city": "Quiet", "user_id": "u",
                "amount": "1.00", "event_type": "order_placed",
                "ts": int(time.time() * 1000)}))
            sent += 1
        p.flush(30)
        time.sleep(6)
    deadline = time.monotonic() + 90
    while True:
        _, body, _ = sql("SELECT count(*) FROM events WHERE city = 'Quiet'")
        archived = json.loads(body)["rows"][0][0]
        if archived >= sent or time.monotonic() > deadline:
            break
        time.sleep(2)
    print(f"quiet: archived {archived} of {sent} sent in bursts after quiet periods "
          f"(archive held {start} before)")


for name in PROBES:
    globals()[f"probe_{name}"]()
