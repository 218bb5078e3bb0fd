"""End-to-end ingest: the gateway on both backends vs ClickHouse's own HTTP insert.

Prints, from one run on this machine:

* rows/s and MB/s for one 1M-row NDJSON body (the 4-column events shape) POSTed to
  ``/v0/events?wait=true`` of a gateway on a private ClickHouse server and on the
  embedded engine, and for the same bytes POSTed straight to ClickHouse's HTTP interface
  (``INSERT ... FORMAT JSONEachRow``), with the ratios;
* the gateway's RSS while a large body (``--big-mib``, default 1024) streams through,
  sampled from /proc at each quarter of the upload: flat means nothing grows with the body.

Data is generated deterministically; nothing is written outside a temp dir.
Run: ``.venv/bin/python benchmarks/ingest.py [--rows N] [--big-mib M]``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tinyingest.sinks.clickhouse import ClickHouseSink
from corpus import DATASOURCE, event_lines
from tinyingest.testing import ClickHouseServer, GatewayProcess

def post(port: int, path: str, body: bytes | Iterator[bytes], headers: dict[str, str]) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
    try:
        connection.request("POST", path, body=body, headers=headers,
                           encode_chunked=not isinstance(body, bytes))
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def rss_kib(pid: int) -> tuple[int, int]:
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            fields[name] = value.strip()
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def timed_gateway_insert(gateway: GatewayProcess, body: bytes) -> float:
    start = time.perf_counter()
    status, answer = post(gateway.port, "/v0/events?name=events&wait=true", body,
                          {"Authorization": f"Bearer {gateway.token}"})
    elapsed = time.perf_counter() - start
    assert status == 200, answer
    return elapsed


def main() -> int:
    args = argparse.ArgumentParser(description=__doc__)
    args.add_argument("--rows", type=int, default=1_000_000)
    args.add_argument("--big-mib", type=int, default=1024)
    options = args.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tinyingest-bench-"))
    (work / "project" / "datasources").mkdir(parents=True)
    (work / "project" / "datasources" / "events.datasource").write_text(DATASOURCE)
    body = b"".join(event_lines(options.rows))
    megabytes = len(body) / 1e6
    print(f"# {options.rows} rows, {megabytes:.1f} MB NDJSON; python {sys.version.split()[0]}, "
          f"{os.cpu_count()} cores")
    results: dict[str, float] = {}
    try:
        with ClickHouseServer() as server:
            admin = ClickHouseSink(server.url)
            admin.execute("CREATE DATABASE bench_gw")
            admin.execute("CREATE TABLE default.direct (ts DateTime, user_id UInt64, "
                          "event LowCardinality(String), value Float64) "
                          "ENGINE = MergeTree ORDER BY (event, ts)")
            # Peer: ClickHouse's own JSONEachRow parser over HTTP, same bytes.
            query = "INSERT INTO default.direct FORMAT JSONEachRow"
            start = time.perf_counter()
            status, answer = post(server.http_port, "/?query=" + query.replace(" ", "+")
                                  + "&allow_experimental_low_cardinality_type=1", body, {})
            results["clickhouse-http"] = time.perf_counter() - start
            assert status == 200, answer

            url = server.url.rsplit("/", 1)[0] + "/bench_gw"
            with GatewayProcess(str(work / "project"), str(work / "gw-server"),
                                clickhouse_url=url) as gateway:
                results["gateway-server"] = timed_gateway_insert(gateway, body)
                stored = admin.query("SELECT count() FROM bench_gw.events").rows[0][0]
                assert stored == options.rows, stored
                big = big_upload(gateway, options.big_mib)
            admin.close()
        with GatewayProcess(str(work / "project"), str(work / "gw-embedded")) as gateway:
            results["gateway-embedded"] = timed_gateway_insert(gateway, body)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    for name, seconds in results.items():
        print(f"{name:18s} {options.rows / seconds:12,.0f} rows/s {megabytes / seconds:8.1f} MB/s "
              f"{seconds:7.2f} s")
    peer = results["clickhouse-http"]
    print(f"ratio gateway-server / clickhouse-http   = {peer / results['gateway-server']:.2f}x")
    print(f"ratio gateway-embedded / clickhouse-http = {peer / results['gateway-embedded']:.2f}x")
    print(big)
    return 0


def big_upload(gateway: GatewayProcess, mib: int) -> str:
    """Stream ``mib`` MiB of events through the gateway; report its RSS at each quarter."""
    assert gateway.pid is not None
    pid = gateway.pid
    target = mib << 20
    chunk = b"".join(event_lines(20_000, seed=7))  # ~1.4 MB, repeated
    samples: list[str] = []
    sent = 0

    def body() -> Iterator[bytes]:
        nonlocal sent
        quarter = target // 4
        next_mark = quarter
        while sent < target:
            yield chunk
            sent += len(chunk)
            if sent >= next_mark:
                rss, hwm = rss_kib(pid)
                samples.append(f"{sent >> 20} MiB: RSS {rss >> 10} MiB, peak {hwm >> 10} MiB")
                next_mark += quarter

    baseline = rss_kib(pid)
    start = time.perf_counter()
    status, answer = post(gateway.port, "/v0/events?name=events&wait=true", body(),
                          {"Authorization": f"Bearer {gateway.token}"})
    elapsed = time.perf_counter() - start
    assert status == 200, answer
    rows = json.loads(answer)["successful_rows"]
    return (f"big upload: {sent >> 20} MiB, {rows:,} rows in {elapsed:.1f} s "
            f"({rows / elapsed:,.0f} rows/s); gateway RSS before {baseline[0] >> 10} MiB; "
            + "; ".join(samples))


if __name__ == "__main__":
    raise SystemExit(main())
