"""A small TINYINGEST_SPOOL_MAX_BYTES (issue 20, item 3): confirmed rows do not count, so
the gateway never wedges on 503; the spool's files stay bounded; the limit still answers
503 while ClickHouse is away, and clears once it is back; kill -9 while the spool rolls
and compacts loses no acknowledged row."""

from __future__ import annotations

import itertools
import random
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import GATEWAY_ENV, PROJECT_DIR, start_gateway
from gatewayclient import call, ndjson, sql
from test_faults import Load, wait_until_stored
from tinyingest.testing import ClickHouseServer, GatewayProcess

LIMIT = 64 << 10
SMALL = {"TINYINGEST_SPOOL_MAX_BYTES": str(LIMIT)}


def spool_files(data_dir: Path) -> int:
    return sum(p.stat().st_size for p in data_dir.glob("spool*/*") if p.is_file())


def batch(ids: Iterator[int], tag: str, count: int = 30) -> list[dict[str, object]]:
    return [{"id": next(ids), "tag": tag, "doc": "x" * 40} for _ in range(count)]


def post(gateway: GatewayProcess, rows: list[dict[str, object]], wait: bool,
         acked: set[int] | None = None, name: str = "events") -> int:
    """POST ``rows``; their ids join ``acked`` if answered 200/202."""
    params = {"name": name, **({"wait": "true"} if wait else {})}
    status = call(gateway, "POST", "/v0/events", params=params, body=ndjson(rows)).status
    if acked is not None and status in (200, 202):
        acked.update(int(str(row["id"])) for row in rows)
    return status


@pytest.mark.parametrize("backend", ["clickhouse", "embedded"])
def test_confirmed_rows_do_not_count_against_a_small_spool(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Sequential requests, about 15 times the limit in total: 202s, and a wait=true
    after every three (so everything before it is confirmed): never a 503, and the spool's
    files stay within a few times the limit."""
    server = request.getfixturevalue("clickhouse_server") if backend == "clickhouse" else None
    gateway = start_gateway(backend, tmp_path, SMALL, server)
    tag = uuid.uuid4().hex
    ids = itertools.count()
    statuses: dict[int, int] = {}
    peak = 0
    try:
        for request_number in range(240):
            wait = request_number % 4 == 3
            status = post(gateway, batch(ids, tag), wait)
            statuses[status] = statuses.get(status, 0) + 1
            assert status == (200 if wait else 202), (request_number, statuses)
            if wait:
                peak = max(peak, spool_files(tmp_path))
        total = int(sql(gateway, f"SELECT count() AS n FROM events WHERE tag = '{tag}'")[0]["n"])
        assert total >= 240 * 30 * 3 // 4  # every waited row, and those before it
    finally:
        assert gateway.stop() == 0
    print(f"\nsmall spool: statuses {statuses}, peak spool files {peak} bytes "
          f"(limit {LIMIT})")
    assert peak <= 3 * LIMIT, peak


@pytest.fixture
def private_server() -> Iterator[ClickHouseServer]:
    with ClickHouseServer() as server:
        yield server


def test_small_spool_answers_503_while_clickhouse_is_away_and_recovers(
        private_server: ClickHouseServer, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex
    ids = itertools.count()
    gateway = start_gateway("clickhouse", tmp_path, SMALL, server=private_server)
    acked: set[int] = set()
    try:
        private_server.kill()
        outage: dict[int, int] = {}
        for _ in range(200):  # bounded: the limit is reached well before
            status = post(gateway, batch(ids, tag), False, acked)
            outage[status] = outage.get(status, 0) + 1
            if status != 202:
                assert status in (503, 507), outage
                break
        assert 503 in outage or 507 in outage, outage
        assert spool_files(tmp_path) <= 3 * LIMIT
        private_server.restart()
        # Once the spooled rows are in, new ones are accepted again: the gateway is not
        # wedged by the bytes it has already delivered.
        deadline = time.monotonic() + 60
        after: dict[int, int] = {}
        while time.monotonic() < deadline:
            status = post(gateway, batch(ids, tag), False, acked)
            after[status] = after.get(status, 0) + 1
            if status == 202:
                break
            time.sleep(0.2)
        assert after.get(202) == 1, after
        for _ in range(100):  # and keep being accepted, far past the limit in total
            assert post(gateway, batch(ids, tag), True, acked) == 200
        stored, _ = wait_until_stored(gateway, tag, acked)
    finally:
        assert gateway.stop() == 0
    print(f"\nsmall spool, ClickHouse away: {outage}; back: {after}")
    assert not acked - stored


PINNED = """SCHEMA >
    `id` UInt64 `json:$.id`,
    `tag` String `json:$.tag`

ENGINE "MergeTree"
ENGINE_SORTING_KEY "tag, id"
"""


def test_kill9_while_the_spool_rolls_and_compacts_loses_no_acknowledged_row(
        clickhouse_server: ClickHouseServer, tmp_path: Path) -> None:
    """Blocks of a data source that left the project stay spooled (unconfirmed) among
    confirmed ones: the segments holding them are compacted, while 202 and wait=true load
    rolls segments every 16 KiB, and the gateway is killed at random moments. Then the
    data source comes back: every acknowledged row of both tables is stored."""
    rng = random.Random(20)
    tag = uuid.uuid4().hex
    ids = itertools.count()
    plus = tmp_path / "project"
    shutil.copytree(PROJECT_DIR, plus)
    (plus / "datasources" / "pinned.datasource").write_text(PINNED)
    data_dir = tmp_path / "data"
    # 1. A long flush interval: rows of both tables only in the spool, then kill -9.
    first = start_gateway("clickhouse", data_dir, {"TINYINGEST_FLUSH_INTERVAL": "3600"},
                          clickhouse_server, project_dir=str(plus))
    acked: set[int] = set()
    pinned: set[int] = set()
    try:
        for _ in range(100):
            assert post(first, batch(ids, tag), False, acked) == 202
            assert post(first, batch(ids, tag, 3), False, pinned, name="pinned") == 202
    finally:
        first.kill()
    assert spool_files(data_dir) > 2 * LIMIT
    # 2. Without the pinned data source and with a small spool, under load, kill -9 x3.
    gateway = GatewayProcess(PROJECT_DIR, str(data_dir), clickhouse_url=first.clickhouse_url,
                             env={**GATEWAY_ENV, **SMALL})
    statuses: dict[int, int] = {}
    try:
        for _ in range(3):
            gateway.start()
            with Load(gateway, tag, ids, wait=True, max_requests=300, rows=30) as waited, \
                    Load(gateway, tag, ids, wait=False, max_requests=300, rows=30) as fired:
                time.sleep(rng.uniform(0.5, 2.0))
                gateway.kill()
            acked |= waited.acked | fired.acked
            for load in (waited, fired):
                for status, n in load.statuses.items():
                    statuses[status] = statuses.get(status, 0) + n
        log = Path(gateway._log_path).read_text(errors="replace")
        assert "compacted" in log
        assert spool_files(data_dir) <= 3 * LIMIT
    finally:
        gateway.kill()
    # 3. The data source is back: its spooled rows, compacted, are inserted too.
    with GatewayProcess(str(plus), str(data_dir), clickhouse_url=first.clickhouse_url,
                        env=GATEWAY_ENV) as last:
        stored, count = wait_until_stored(last, tag, acked)
        rows = sql(last, f"SELECT groupUniqArray(id) AS ids FROM pinned WHERE tag = '{tag}'")
        stored_pins = {int(value) for value in rows[0]["ids"]}
        deadline = time.monotonic() + 30
        while pinned - stored_pins and time.monotonic() < deadline:
            time.sleep(0.2)
            rows = sql(last, f"SELECT groupUniqArray(id) AS ids FROM pinned WHERE tag = '{tag}'")
            stored_pins = {int(value) for value in rows[0]["ids"]}
    print(f"\nkill -9 while compacting: statuses {statuses}, acked {len(acked)}, "
          f"lost {len(acked - stored)}, duplicates {count - len(stored)}, "
          f"pinned lost {len(pinned - stored_pins)}")
    assert statuses.get(200, 0) > 0 and statuses.get(202, 0) > 0, statuses
    assert not acked - stored
    assert not pinned - stored_pins
