"""End-to-end benchmark: the gateway on a private ClickHouse server, against its peers.

Prints, from one run on this machine (every ratio is measured within the same run):

1. throughput: ``--clients`` concurrent clients POST ``--bodies`` 1 MB NDJSON bodies (the
   4-column events shape) to ``/v0/events?name=events&wait=true``; rows/s counted in the
   MergeTree table afterwards. Peer: the same bodies, same concurrency, POSTed straight to
   ClickHouse's HTTP interface (``INSERT ... FORMAT JSONEachRow``). Also with
   ``serve --workers 2``. Target: gateway >= 1.5x ClickHouse.
2. tiny events: 1-row POSTs over 64 keep-alive connections (``wrk``) to ``/v0/events``
   (202 mode), against a bare Tornado+uvloop app that reads the body and answers 202 (its
   own subprocess). Also with ``--workers 2``. Target: gateway >= 0.8x bare, per process.
3. freshness: under the throughput load in 202 mode (``--fresh-seconds``), a marker row
   with a unique id every ~100 ms; ClickHouse is polled directly; p50/p99 from the 202
   answer to the row being queryable. Target: p99 <= 1 s. Then again with the load paced
   at half the rate the gateway sustained (rows stored per second) in the first part.
4. memory: peak RSS (VmHWM) of a fresh gateway while a ``--big-mib`` (2048) chunked body
   streams through ``/v0/events?wait=true``. Target: <= 300 MB.

The peers of 1 and 2 are measured back to back with the single-process gateway
``--rounds`` (3) times and the median ratio counts: this VM's speed drifts by a third
between minutes, which one pair measured a minute apart would take for a difference.

Every line also says where the CPU went (cores used by gateway, ClickHouse, the client
and ``other``: anything else busy on the machine, which skews the figures).

The gateway runs with its default settings (validation, quarantine, spool, metrics on);
``TINYINGEST_*`` variables of the calling shell are ignored. Each phase gets its own gateway
process and database. Data is generated deterministically; every load loop is bounded in
count and time; nothing is written outside a temp dir.

Needs ``clickhouse-server`` and ``wrk`` (``apt-get install -y clickhouse-server wrk``).
Run: ``.venv/bin/python benchmarks/e2e.py [--quick] [--profile DIR]``; ``--profile`` records
each single-process gateway phase with ``py-spy`` (``pip install py-spy``) into DIR.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from corpus import DATASOURCE, EVENTS, Profiler
from tinyingest.testing import ClickHouseServer, GatewayProcess

DIRECT_TABLE = ("CREATE TABLE {db}.events (ts DateTime, user_id UInt64, "
                "event LowCardinality(String), value Float64) "
                "ENGINE = MergeTree ORDER BY (event, ts)")

TOKEN = "bench-e2e-token"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-ndjson"}
MARKER_EVENT = "__marker"
MARKER_BASE_ID = 10**15

BARE_APP = r'''
import asyncio, sys
import tornado.web, tornado.httpserver

class Ingest(tornado.web.RequestHandler):
    def post(self):
        body = self.request.body  # read in full by Tornado, like a 1-row NDJSON event
        self.set_status(202)
        self.set_header("Content-Type", "application/json")
        self.finish(b'{"successful_rows":1,"quarantined_rows":0}' if body else b"{}")

@tornado.web.stream_request_body
class StreamingIngest(tornado.web.RequestHandler):
    """The gateway's request path without its work: streamed body, same server limits."""
    def prepare(self):
        self.size = 0
    async def data_received(self, chunk):
        self.size += len(chunk)
    def post(self):
        self.set_status(202)
        self.set_header("Content-Type", "application/json")
        self.finish(b'{"successful_rows":1,"quarantined_rows":0}' if self.size else b"{}")

class Health(tornado.web.RequestHandler):
    def get(self):
        self.finish("ok")

async def main():
    streaming = sys.argv[2] == "streaming"
    app = tornado.web.Application([(r"/v0/events", StreamingIngest if streaming else Ingest),
                                   (r"/healthz", Health)])
    if streaming:  # as tinyingest/cli.py configures its server
        server = tornado.httpserver.HTTPServer(
            app, idle_connection_timeout=10.0, body_timeout=3600.0, max_body_size=8 << 30,
            max_header_size=64 << 10, decompress_request=False)
    else:
        server = tornado.httpserver.HTTPServer(app, decompress_request=False)
    server.listen(int(sys.argv[1]), "127.0.0.1")
    await asyncio.Event().wait()

import uvloop
uvloop.install()
asyncio.run(main())
'''

WRK_LUA = """wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/x-ndjson"
{auth}
"""

# -- data --------------------------------------------------------------------------------


def make_body(seed: int, target_bytes: int) -> tuple[bytes, int]:
    """About ``target_bytes`` of NDJSON events (whole lines), and its row count."""
    rng = random.Random(seed)
    base = 1_700_000_000 + seed * 86_400
    lines: list[str] = []
    size = rows = 0
    while size < target_bytes:
        ts = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(base + rows // 10))
        line = (f'{{"ts":"{ts}","user_id":{rng.randrange(1 << 40)},'
                f'"event":"{EVENTS[rng.randrange(len(EVENTS))]}",'
                f'"value":{round(rng.random() * 1000, 3)}}}\n')
        lines.append(line)
        size += len(line)
        rows += 1
    return "".join(lines).encode(), rows


def marker_line(number: int) -> bytes:
    ts = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(1_600_000_000 + number))
    return (f'{{"ts":"{ts}","user_id":{MARKER_BASE_ID + number},'
            f'"event":"{MARKER_EVENT}","value":{number}}}\n').encode()


# -- HTTP helpers ------------------------------------------------------------------------


class ClickHouseHTTP:
    """Queries over ClickHouse's HTTP interface on a keep-alive connection."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._conn: http.client.HTTPConnection | None = None

    def query(self, sql: str, **settings: str) -> str:
        path = "/?" + urllib.parse.urlencode(settings) if settings else "/"
        for attempt in (1, 2):  # the server closes idle keep-alive connections after 3 s
            if self._conn is None:
                self._conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            try:
                self._conn.request("POST", path, body=sql.encode())
                response = self._conn.getresponse()
                text = response.read().decode()
            except (http.client.HTTPException, OSError):
                self._conn.close()
                self._conn = None
                if attempt == 2:
                    raise
                continue
            if response.status != 200:
                raise RuntimeError(f"ClickHouse answered {response.status} to {sql!r}: {text}")
            return text
        raise AssertionError("unreachable")

    def count(self, table: str, where: str = "1") -> int:
        return int(self.query(f"SELECT count() FROM {table} WHERE {where}"))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


def wait_http(port: int, path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", path)
            conn.getresponse().read()
            conn.close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing answered on port {port} within {timeout} s")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def proc_status_kib(pid: int) -> dict[str, int]:
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0])
    return fields


# -- load: many 1 MB POSTs ---------------------------------------------------------------


@dataclass
class LoadResult:
    elapsed: float
    started: float = 0.0
    sent: int = 0
    rows_ok: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)  # exception type -> count
    refusals: dict[int, str] = field(default_factory=dict)  # status -> first answer
    latencies: list[float] = field(default_factory=list)

    def status_text(self) -> str:
        text = ", ".join(f"{code}: {n}" for code, n in sorted(self.statuses.items()))
        text += "".join(f", {n} x {name}" for name, n in self.errors.items())
        return text + "".join(f"; {code}: {body}" for code, body in self.refusals.items())


def post_bodies(port: int, path: str, headers: dict[str, str], bodies: list[tuple[bytes, int]],
                total: int, clients: int, time_limit: float,
                ok: tuple[int, ...] = (200,), interval: float = 0.0) -> LoadResult:
    """``clients`` threads, each on its own keep-alive connection, POST ``total`` bodies
    (cycling through ``bodies``) or stop issuing new ones after ``time_limit`` s.
    ``interval`` > 0 paces the load: body ``i`` is not sent before ``i * interval`` s."""
    lock = threading.Lock()
    next_index = 0
    start = time.perf_counter()
    result = LoadResult(elapsed=0.0, started=start)
    deadline = start + time_limit

    def worker() -> None:
        nonlocal next_index
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=max(time_limit, 60))
        try:
            while True:
                with lock:
                    if next_index >= total or time.perf_counter() > deadline:
                        return
                    index = next_index
                    next_index += 1
                if interval:
                    time.sleep(max(0.0, start + index * interval - time.perf_counter()))
                body, rows = bodies[index % len(bodies)]
                began = time.perf_counter()
                try:
                    conn.request("POST", path, body=body, headers=headers)
                    response = conn.getresponse()
                    answer = response.read()
                except (http.client.HTTPException, OSError) as exc:
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                    with lock:
                        result.sent += 1
                        name = type(exc).__name__
                        result.errors[name] = result.errors.get(name, 0) + 1
                    continue
                took = time.perf_counter() - began
                retry_after = response.getheader("Retry-After")
                with lock:
                    result.sent += 1
                    result.latencies.append(took)
                    result.statuses[response.status] = result.statuses.get(response.status, 0) + 1
                    if response.status in ok:
                        result.rows_ok += rows
                    else:
                        result.refusals.setdefault(response.status, answer[:120].decode(
                            errors="replace"))
                if response.status in (429, 503) and retry_after and retry_after.isdigit():
                    # a well-behaved client: honour Retry-After, within the time limit
                    time.sleep(max(0.0, min(float(retry_after), deadline - time.perf_counter())))
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(time_limit + 120)
    result.elapsed = time.perf_counter() - start
    return result


# -- CPU accounting and profiling ---------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as file:
        return file.read().rpartition(")")[2].split()


def tree_cpu_seconds(pid: int) -> dict[int, float]:
    """user+system CPU seconds of ``pid`` and of its live children (--workers), by pid."""
    pids = [pid]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if int(_stat(int(entry))[1]) == pid:
                    pids.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    seconds: dict[int, float] = {}
    for one in pids:
        try:
            fields = _stat(one)
        except OSError:
            continue
        seconds[one] = (int(fields[11]) + int(fields[12])) / _TICK
    return seconds


def _own_cpu_seconds() -> float:
    """This script's threads plus children reaped so far (wrk)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat)."""
    with open("/proc/stat") as file:
        values = [int(v) for v in file.readline().split()[1:9]]
    return (sum(values) - values[3] - values[4]) / _TICK  # minus idle, iowait


class CPUMeter:
    """Cores used by each process tree over a ``with`` block: where the cores went;
    ``other`` is everything else busy on the machine (a noisy neighbour)."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = {name: pid for name, pid in pids.items() if pid is not None}
        self.text = ""

    def __enter__(self) -> CPUMeter:
        self._start = time.perf_counter()
        self._before = {name: tree_cpu_seconds(pid) for name, pid in self.pids.items()}
        self._client = _own_cpu_seconds()
        self._machine = machine_busy_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self._start
        parts: dict[str, str] = {}
        used: dict[str, float] = {}
        for name, pid in self.pids.items():
            after = tree_cpu_seconds(pid)
            per_pid = [after[p] - self._before[name].get(p, 0.0) for p in after]
            used[name] = sum(per_pid)
            busy = [f"{x / wall:.2f}" for x in per_pid if x / wall >= 0.005]
            if len(busy) > 1:  # supervisor and workers: show how the load was shared
                parts[name] = f" ({'+'.join(busy)})"
        used["client"] = _own_cpu_seconds() - self._client
        # Whatever else ran on the machine meanwhile (other jobs skew the figures).
        used["other"] = max(0.0, machine_busy_seconds() - self._machine - sum(used.values()))
        self.text = "cpu cores: " + ", ".join(f"{name} {seconds / wall:.2f}{parts.get(name, '')}"
                                              for name, seconds in used.items())
        if used["other"] / wall > 0.25:
            self.text += " [SKEWED: other jobs were busy]"


# -- phases ------------------------------------------------------------------------------


class Bench:
    def __init__(self, options: argparse.Namespace, work: Path, server: ClickHouseServer) -> None:
        self.options = options
        self.work = work
        self.server = server
        self.ch = ClickHouseHTTP(server.http_port)
        self.project = work / "project"
        (self.project / "datasources").mkdir(parents=True)
        (self.project / "datasources" / "events.datasource").write_text(DATASOURCE)
        distinct = min(options.bodies, 16)
        self.bodies = [make_body(seed, options.body_bytes) for seed in range(distinct)]
        self.lines: list[str] = []

    def out(self, line: str) -> None:
        print(line, flush=True)
        self.lines.append(line)

    def gateway(self, name: str, workers: int = 1) -> GatewayProcess:
        self.ch.query(f"CREATE DATABASE {name}")
        url = f"clickhouse://default:@127.0.0.1:{self.server.tcp_port}/{name}"
        args = ["--workers", str(workers)] if workers > 1 else []
        return GatewayProcess(str(self.project), str(self.work / f"gw-{name}"),
                              clickhouse_url=url, token=TOKEN, args=args,
                              env=self.options.gateway_env)

    def profile(self, name: str, gateway: GatewayProcess, workers: int = 1) -> Profiler:
        """py-spy on a single-process gateway (under --workers the pid is the supervisor)."""
        return Profiler(self.options.profile, name, gateway.pid if workers == 1 else None)

    def cpu(self, **pids: int | None) -> CPUMeter:
        return CPUMeter({**pids, "clickhouse": self.server.pid})

    def drop(self, db: str) -> None:
        self.ch.query(f"DROP DATABASE IF EXISTS {db}")

    # 1. throughput -----------------------------------------------------------------

    def throughput_direct(self, round_: int = 0) -> float:
        db = f"direct{round_}"
        self.ch.query(f"CREATE DATABASE {db}")
        self.ch.query(DIRECT_TABLE.format(db=db), allow_experimental_low_cardinality_type="1")
        insert = f"INSERT INTO {db}.events FORMAT JSONEachRow"
        path = "/?" + urllib.parse.urlencode({"query": insert})
        with self.cpu() as cpu:
            result = self._posts(path, {}, ok=(200,))
        return self._report_throughput("clickhouse-http", result, f"{db}.events", cpu.text)

    def throughput_gateway(self, workers: int, round_: int = 0) -> float:
        db = f"tput{workers}_{round_}"
        with self.gateway(db, workers) as gateway:
            with self.profile(f"throughput-w{workers}", gateway, workers), \
                    self.cpu(gateway=gateway.pid) as cpu:
                result = self._posts("/v0/events?name=events&wait=true", AUTH, ok=(200,),
                                     port=gateway.port)
            quarantined = self.ch.count(f"{db}.events_quarantine")
            rate = self._report_throughput(f"gateway w={workers}", result, f"{db}.events",
                                           cpu.text)
            if quarantined:
                self.out(f"  !! {quarantined} rows quarantined")
        self.drop(db)
        return rate

    def _posts(self, path: str, headers: dict[str, str], ok: tuple[int, ...],
               port: int | None = None) -> LoadResult:
        o = self.options
        return post_bodies(port or self.server.http_port, path, headers, self.bodies,
                           o.bodies, o.clients, o.time_limit, ok=ok)

    def _report_throughput(self, name: str, result: LoadResult, table: str, cpu: str) -> float:
        stored = self.ch.count(table)
        megabytes = sum(len(self.bodies[i % len(self.bodies)][0]) for i in range(result.sent)) / 1e6
        rate = stored / result.elapsed
        self.out(f"{name:18s} {rate:12,.0f} rows/s {megabytes / result.elapsed:7.1f} MB/s "
                 f"{result.elapsed:6.1f} s  {result.sent} bodies, stored {stored:,} rows "
                 f"(acked {result.rows_ok:,}); per-POST p50 {pct(result.latencies, .5):.2f} s "
                 f"p99 {pct(result.latencies, .99):.2f} s; [{result.status_text()}]; {cpu}")
        if stored != result.rows_ok:
            self.out(f"  !! stored {stored} != acked {result.rows_ok}")
        return rate

    # 2. tiny events ----------------------------------------------------------------

    def wrk(self, name: str, port: int, path: str, auth: bool) -> dict[str, float]:
        lua = self.work / f"{name}.lua"
        auth_line = f'wrk.headers["Authorization"] = "Bearer {TOKEN}"' if auth else ""
        lua.write_text(WRK_LUA.format(body=json.dumps(marker_line(0).decode()), auth=auth_line))
        o = self.options
        command = ["wrk", "-t", str(o.wrk_threads), "-c", str(o.connections),
                   "-d", f"{o.tiny_seconds}s", "--latency", "-s", str(lua),
                   f"http://127.0.0.1:{port}{path}"]
        done = subprocess.run(command, capture_output=True, text=True,
                              timeout=o.tiny_seconds + 60)
        text = done.stdout
        if done.returncode != 0 or "Requests/sec" not in text:
            raise RuntimeError(f"wrk failed ({done.returncode}): {text}\n{done.stderr}")
        rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
        requests = re.search(r"(\d+) requests in", text)
        assert rps is not None and requests is not None, text
        stats = {"rps": float(rps.group(1)), "requests": float(requests.group(1)),
                 "non2xx": 0.0, "socket_errors": 0.0}
        if m := re.search(r"Non-2xx or 3xx responses: (\d+)", text):
            stats["non2xx"] = float(m.group(1))
        socket_errors = r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"
        if m := re.search(socket_errors, text):
            stats["socket_errors"] = float(sum(int(g) for g in m.groups()))
        for q in ("50", "99"):
            if m := re.search(rf"\s{q}%\s+([\d.]+)(us|ms|s)\b", text):
                scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
                stats[f"p{q}_ms"] = float(m.group(1)) * scale
        return stats

    def _report_tiny(self, name: str, stats: dict[str, float], extra: str = "") -> None:
        self.out(f"{name:18s} {stats['rps']:10,.0f} req/s  {stats['requests']:,.0f} requests; "
                 f"latency p50 {stats.get('p50_ms', float('nan')):.1f} ms "
                 f"p99 {stats.get('p99_ms', float('nan')):.1f} ms; non-2xx {stats['non2xx']:.0f}, "
                 f"socket errors {stats['socket_errors']:.0f}{extra}")

    def tiny_bare(self, mode: str) -> float:
        """``plain``: the peer; ``streaming``: @stream_request_body with the gateway's
        server settings, to split the gap into Tornado's streaming path and our work."""
        script = self.work / "bare_app.py"
        script.write_text(BARE_APP)
        port = free_port()
        with open(self.work / f"bare-{mode}.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, str(script), str(port), mode], stdout=log,
                                    stderr=subprocess.STDOUT)
        try:
            wait_http(port, "/healthz", 30)
            with self.cpu(bare=proc.pid) as cpu:
                stats = self.wrk(f"bare-{mode}", port, "/v0/events", auth=False)
        finally:
            proc.terminate()
            proc.wait(10)
        name = "bare tornado+uvloop" if mode == "plain" else "bare, streaming"
        self._report_tiny(name, stats, f"; {cpu.text}")
        return stats["rps"]

    def tiny_gateway(self, workers: int, round_: int = 0) -> float:
        db = f"tiny{workers}_{round_}"
        with self.gateway(db, workers) as gateway:
            with self.profile(f"tiny-w{workers}", gateway, workers), \
                    self.cpu(gateway=gateway.pid) as cpu:
                stats = self.wrk(db, gateway.port, "/v0/events?name=events", auth=True)
            ok = stats["requests"] - stats["non2xx"]
            deadline = time.monotonic() + 10
            stored = self.ch.count(f"{db}.events")
            while stored < ok and time.monotonic() < deadline:  # 202: the next flush stores them
                time.sleep(0.25)
                stored = self.ch.count(f"{db}.events")
        self._report_tiny(f"gateway w={workers}", stats,
                          f"; stored {stored:,} rows for {ok:,.0f} 2xx answers "
                          f"(requests in flight at wrk's end are stored, not counted); "
                          f"{cpu.text}")
        self.drop(db)
        return stats["rps"]

    # 3. freshness ------------------------------------------------------------------

    def freshness(self, label: str, seconds: float, interval: float = 0.0) -> tuple[float, float]:
        """Markers every ``marker_interval`` under the 202 load; returns (p99 delay s,
        rows/s stored from the first POST until every acked row was queryable)."""
        db = "fresh"
        o = self.options
        with self.gateway(db) as gateway:
            port = gateway.port
            acked: dict[int, float] = {}
            ack_latency: list[float] = []
            seen: dict[int, float] = {}
            stop_markers = threading.Event()
            stop_polling = threading.Event()

            def markers() -> None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                number = 0
                next_at = time.perf_counter()
                while not stop_markers.is_set() and number < 100_000:
                    next_at += o.marker_interval
                    began = time.perf_counter()
                    try:
                        conn.request("POST", "/v0/events?name=events", body=marker_line(number),
                                     headers=AUTH)
                        response = conn.getresponse()
                        response.read()
                    except (http.client.HTTPException, OSError):
                        conn.close()
                        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                    else:
                        now = time.perf_counter()
                        if response.status == 202:
                            acked[number] = now
                            ack_latency.append(now - began)
                    number += 1
                    time.sleep(max(0.0, next_at - time.perf_counter()))
                conn.close()

            def poller() -> None:
                ch = ClickHouseHTTP(self.server.http_port)
                sql = (f"SELECT user_id - {MARKER_BASE_ID} FROM {db}.events "
                       f"WHERE event = '{MARKER_EVENT}'")
                while not stop_polling.is_set():
                    try:
                        text = ch.query(sql)
                    except (RuntimeError, OSError, http.client.HTTPException):
                        time.sleep(o.poll_interval)
                        continue
                    now = time.perf_counter()
                    for line in text.split():
                        seen.setdefault(int(line), now)
                    time.sleep(o.poll_interval)
                ch.close()

            threads = [threading.Thread(target=markers, daemon=True),
                       threading.Thread(target=poller, daemon=True)]
            for thread in threads:
                thread.start()
            with self.profile(f"freshness-{label}", gateway), \
                    self.cpu(gateway=gateway.pid) as cpu:
                load = post_bodies(port, "/v0/events?name=events", AUTH, self.bodies,
                                   o.fresh_bodies, o.clients, seconds, ok=(202,),
                                   interval=interval)
            stop_markers.set()
            threads[0].join(30)
            # Drain: until every acked row is queryable (bounded).
            where = f"event != '{MARKER_EVENT}'"
            deadline = time.monotonic() + 120
            stored = self.ch.count(f"{db}.events", where)
            while stored < load.rows_ok and time.monotonic() < deadline:
                time.sleep(0.05)
                stored = self.ch.count(f"{db}.events", where)
            drained = time.perf_counter()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not set(acked) <= set(seen):
                time.sleep(0.1)
            stop_polling.set()
            threads[1].join(30)
            assert gateway.pid is not None
            peak_mib = proc_status_kib(gateway.pid)["VmHWM"] >> 10
        self.drop(db)
        delays = [seen[n] - t for n, t in acked.items() if n in seen]
        missing = len(acked) - len(delays)
        stored_rate = stored / (drained - (load.started))
        p99 = pct(delays, .99) if not missing else float("inf")
        self.out(f"load {label:13s} {load.rows_ok / load.elapsed:12,.0f} rows/s accepted "
                 f"{load.elapsed:5.1f} s, {load.sent} bodies [{load.status_text()}]; "
                 f"{stored:,} of {load.rows_ok:,} acked rows stored "
                 f"{drained - load.started - load.elapsed:.1f} s after the load ended = "
                 f"{stored_rate:,.0f} rows/s stored; gateway VmHWM {peak_mib} MiB; {cpu.text}")
        self.out(f"freshness {label:8s} {len(acked)} markers (every "
                 f"{o.marker_interval * 1000:.0f} ms, ClickHouse polled every "
                 f"{o.poll_interval * 1000:.0f} ms): 202 -> queryable p50 {pct(delays, .5):.3f} s "
                 f"p99 {pct(delays, .99):.3f} s max {max(delays, default=float('nan')):.3f} s; "
                 f"never seen: {missing}; marker POST p50 {pct(ack_latency, .5) * 1000:.0f} ms "
                 f"p99 {pct(ack_latency, .99) * 1000:.0f} ms")
        return p99, stored_rate

    # 4. memory ---------------------------------------------------------------------

    def memory(self) -> None:
        db = "mem"
        o = self.options
        target = o.big_mib << 20
        chunk = self.bodies[0][0]
        with self.gateway(db) as gateway:
            pid = gateway.pid
            assert pid is not None
            before = proc_status_kib(pid)
            samples: list[str] = []
            sent = 0
            start = time.perf_counter()
            deadline = start + o.time_limit

            def body() -> Iterator[bytes]:
                nonlocal sent
                next_mark = target // 4
                while sent < target and time.perf_counter() < deadline:
                    yield chunk
                    sent += len(chunk)
                    if sent >= next_mark:
                        status = proc_status_kib(pid)
                        samples.append(f"{sent >> 20} MiB: RSS {status['VmRSS'] >> 10}")
                        next_mark += target // 4

            conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=o.time_limit + 60)
            with self.profile("memory-2gib", gateway), self.cpu(gateway=pid) as cpu:
                conn.request("POST", "/v0/events?name=events&wait=true", body=body(),
                             headers=AUTH, encode_chunked=True)
                response = conn.getresponse()
                answer = response.read()
            elapsed = time.perf_counter() - start
            conn.close()
            after = proc_status_kib(pid)
            stored = self.ch.count(f"{db}.events")
        self.drop(db)
        rows = json.loads(answer).get("successful_rows", 0) if response.status == 200 else 0
        cut = "" if sent >= target else f" (cut at the {o.time_limit:.0f} s time limit)"
        self.peak_mb = after["VmHWM"] * 1024 / 1e6
        self.out(f"memory             {sent / 2**20:,.0f} MiB chunked{cut} in {elapsed:.1f} s "
                 f"({sent / 1e6 / elapsed:.1f} MB/s, {stored / elapsed:,.0f} rows/s): "
                 f"status {response.status}, {rows:,} rows acked, {stored:,} stored; gateway RSS "
                 f"before {before['VmRSS'] >> 10} MiB, {'; '.join(samples)} MiB; "
                 f"peak VmHWM {self.peak_mb:.0f} MB; {cpu.text}")


def busy_cores(seconds: float = 2.0) -> float:
    before = machine_busy_seconds()
    time.sleep(seconds)
    return (machine_busy_seconds() - before) / seconds


def wait_quiet(limit: float) -> float:
    """Wait (at most ``limit`` s) until the machine is idle; return the busy cores seen."""
    deadline = time.monotonic() + limit
    busy = busy_cores(5.0)
    while busy > 0.25 and time.monotonic() < deadline:
        busy = busy_cores(5.0)
    return busy


def _rounds(ratios: list[float]) -> str:
    """Each round's ratio: a machine whose speed drifts shows as a spread."""
    return f"{len(ratios)} rounds: " + " ".join(f"{r:.2f}" for r in ratios)


def main() -> int:
    args = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    args.add_argument("--quick", action="store_true", help="scaled down, for a fast check")
    args.add_argument("--clients", type=int, default=8)
    args.add_argument("--bodies", type=int, help="1 MB bodies per throughput run (200)")
    args.add_argument("--body-bytes", type=int, default=1_000_000)
    args.add_argument("--connections", type=int, default=64, help="wrk connections")
    args.add_argument("--wrk-threads", type=int, default=1)
    args.add_argument("--tiny-seconds", type=int, help="wrk duration per target (10)")
    args.add_argument("--fresh-seconds", type=float,
                      help="duration of the 202 load under which freshness is sampled (30)")
    args.add_argument("--fresh-bodies", type=int, default=20_000,
                      help="at most this many bodies in the 202 load")
    args.add_argument("--marker-interval", type=float, default=0.1)
    args.add_argument("--poll-interval", type=float, default=0.02)
    args.add_argument("--big-mib", type=int, help="memory-phase body size (2048)")
    args.add_argument("--time-limit", type=float, default=120.0,
                      help="seconds any one load loop may run before it stops sending")
    args.add_argument("--profile", type=Path, help="py-spy raw profiles into this directory")
    args.add_argument("--gateway-env", action="append", default=[], metavar="NAME=VALUE",
                      help="a non-default TINYINGEST_* setting for every gateway (experiments)")
    args.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                      help="first wait up to this long for other jobs to leave the CPUs idle")
    args.add_argument("--rounds", type=int, help="throughput and tiny-events: peer and "
                      "gateway measured back to back this many times; the median ratio (3)")
    args.add_argument("--only", default="throughput,tiny,freshness,memory",
                      help="comma-separated phases")
    o = args.parse_args()
    quick = o.quick
    o.bodies = o.bodies or (40 if quick else 200)
    o.tiny_seconds = o.tiny_seconds or (3 if quick else 10)
    o.rounds = o.rounds or (1 if quick else 3)
    o.fresh_seconds = o.fresh_seconds or (6.0 if quick else 30.0)
    o.big_mib = o.big_mib or (256 if quick else 2048)
    phases = set(o.only.split(","))
    if "tiny" in phases and shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install -y wrk (Debian/Ubuntu), or skip the "
              "tiny-events phase with --only throughput,freshness,memory", file=sys.stderr)
        return 2
    for name in [n for n in os.environ if n.startswith("TINYINGEST_")]:
        del os.environ[name]  # the gateway runs with its default settings
    o.gateway_env = dict(item.split("=", 1) for item in o.gateway_env)

    busy = wait_quiet(o.wait_quiet)
    work = Path(tempfile.mkdtemp(prefix="tinyingest-e2e-"))
    started = time.perf_counter()
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, cwd=Path(__file__).parent).stdout.strip() or "?"
        with ClickHouseServer() as server:
            bench = Bench(o, work, server)
            version = bench.ch.query("SELECT version()").strip()
            size = sum(len(b) for b, _ in bench.bodies) / len(bench.bodies) / 1e6
            rows = sum(r for _, r in bench.bodies) / len(bench.bodies)
            bench.out(f"# e2e {'--quick ' if quick else ''}on {platform.node()}: "
                      f"{os.cpu_count()} cores, python {platform.python_version()}, "
                      f"load average {os.getloadavg()[0]:.2f}, ClickHouse {version}, "
                      f"commit {commit}{' (dirty tree)' if _dirty() else ''}")
            if busy > 0.25:
                bench.out(f"# WARNING: {busy:.2f} cores were busy before the start (other jobs); "
                          f"see 'other' in the cpu figures: results are skewed")
            if o.gateway_env:
                bench.out(f"# NOT the defaults: gateway environment {o.gateway_env}")
            bench.out(f"# bodies: {size:.2f} MB NDJSON, ~{rows:,.0f} rows each, "
                      f"{len(bench.bodies)} distinct; {o.clients} clients")
            summary: list[str] = []
            if "throughput" in phases:
                bench.out("## 1. throughput: 1 MB bodies, wait=true vs ClickHouse HTTP JSONEachRow")
                ratios = []
                for round_ in range(o.rounds):
                    direct = bench.throughput_direct(round_)
                    ratios.append(bench.throughput_gateway(1, round_) / direct)
                gw2 = bench.throughput_gateway(2)
                ratio = statistics.median(ratios)
                summary.append(f"throughput ratio gateway/clickhouse-http: "
                               f"w=1 {ratio:.2f}x (median of {_rounds(ratios)}), "
                               f"w=2 {gw2 / direct:.2f}x (target >= 1.5x: "
                               f"{'met' if ratio >= 1.5 else 'MISSED'} at w=1)")
            if "tiny" in phases:
                bench.out(f"## 2. tiny events: 1-row POSTs, {o.connections} keep-alive "
                          f"connections, wrk -t{o.wrk_threads} {o.tiny_seconds} s each, 202 mode")
                ratios = []
                for round_ in range(o.rounds):
                    bare = bench.tiny_bare("plain")
                    ratios.append(bench.tiny_gateway(1, round_) / bare)
                streaming = bench.tiny_bare("streaming")
                tiny2 = bench.tiny_gateway(2)
                ratio = statistics.median(ratios)
                summary.append(f"tiny-events ratio gateway/bare: w=1 {ratio:.2f}x "
                               f"(median of {_rounds(ratios)}; target >= 0.8x: "
                               f"{'met' if ratio >= 0.8 else 'MISSED'}), "
                               f"w=2 {tiny2:,.0f} req/s = {tiny2 / bare:.2f}x one bare process; "
                               f"bare streaming handler {streaming / bare:.2f}x bare")
            if "freshness" in phases:
                bench.out(f"## 3. freshness under the throughput load (202 mode, {o.clients} "
                          f"clients unthrottled), then paced at half the rate it sustained")
                p99, sustained = bench.freshness("saturated", o.fresh_seconds)
                rows_per_body = sum(r for _, r in bench.bodies) / len(bench.bodies)
                half, _ = bench.freshness("half-rate", o.fresh_seconds / 2,
                                          interval=2 * rows_per_body / sustained)
                summary.append(f"freshness p99 {p99:.3f} s saturated (target <= 1 s: "
                               f"{'met' if p99 <= 1.0 else 'MISSED'}), {half:.3f} s at half "
                               f"the sustained {sustained:,.0f} rows/s")
            if "memory" in phases:
                bench.out(f"## 4. memory: {o.big_mib} MiB chunked body, wait=true")
                bench.memory()
                summary.append(f"memory peak {bench.peak_mb:.0f} MB (target <= 300 MB: "
                               f"{'met' if bench.peak_mb <= 300 else 'MISSED'})")
            bench.out("## summary")
            for line in summary:
                bench.out(line)
            bench.out(f"# total {time.perf_counter() - started:.0f} s")
            bench.ch.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _dirty() -> bool:
    done = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                          capture_output=True, text=True, cwd=Path(__file__).parent)
    return bool(done.stdout.strip())


if __name__ == "__main__":
    raise SystemExit(main())
