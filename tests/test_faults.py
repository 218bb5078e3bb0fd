"""Faults survived with nothing acknowledged lost (reliability.md catalog A and B).

Every row carries a unique id; a load client records the ids of rows whose request was
answered 200 or 202 ("acked"). After the fault: lost = acked ids not stored (must be 0);
duplicates (stored more than once) are counted and printed: delivery is at-least-once.
The default run does a short variant of each; ``-m soak`` runs the long ones.
"""

from __future__ import annotations

import itertools
import json
import random
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import GATEWAY_ENV, PROJECT_DIR, start_gateway
from gatewayclient import Response, call, sql
from tinyingest.testing import ClickHouseServer, GatewayProcess


class Load:
    """Threads POSTing ``rows``-row requests until stopped (bounded by ``max_requests``)."""

    def __init__(self, gateway: GatewayProcess, tag: str, ids: Iterator[int], *,
                 wait: bool, threads: int = 2, max_requests: int = 2000,
                 rows: int = 100) -> None:
        self.gateway = gateway
        self.rows = rows
        self.tag = tag
        self.wait = wait
        self.acked: set[int] = set()
        self.statuses: dict[int, int] = {}
        self.retry_after: list[str] = []
        self._ids = ids
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._left = max_requests
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                if self._left <= 0:
                    return
                self._left -= 1
                ids = [next(self._ids) for _ in range(self.rows)]
            body = b"".join(json.dumps({"id": i, "tag": self.tag}).encode() + b"\n" for i in ids)
            params = {"name": "events", **({"wait": "true"} if self.wait else {})}
            try:
                response = call(self.gateway, "POST", "/v0/events", params=params, body=body,
                                timeout=30)
            except OSError:
                time.sleep(0.05)  # the gateway is down: nothing was acknowledged
                continue
            with self._lock:
                self.statuses[response.status] = self.statuses.get(response.status, 0) + 1
                if response.status in (200, 202):
                    self.acked.update(ids)
                elif "retry-after" in response.headers:
                    self.retry_after.append(response.headers["retry-after"])


def stored_ids(gateway: GatewayProcess, tag: str) -> tuple[set[int], int]:
    row = sql(gateway, f"SELECT groupArray(id) AS ids FROM events WHERE tag = '{tag}'")[0]
    ids = [int(value) for value in row["ids"]]
    return set(ids), len(ids)


def wait_until_stored(gateway: GatewayProcess, tag: str, acked: set[int],
                      timeout: float = 60) -> tuple[set[int], int]:
    deadline = time.monotonic() + timeout
    while True:
        ids, count = stored_ids(gateway, tag)
        if acked <= ids or time.monotonic() > deadline:
            return ids, count
        time.sleep(0.2)


def _kill_gateway_under_load(server: ClickHouseServer, tmp_path: Path, rounds: int) -> None:
    rng = random.Random(20261126)
    tag = uuid.uuid4().hex
    ids = itertools.count()
    acked: set[int] = set()
    gateway = start_gateway("clickhouse", tmp_path, server=server)
    try:
        for _ in range(rounds):
            # Many 2-row 202 requests at once: small bodies share spool records.
            with Load(gateway, tag, ids, wait=True) as waited, \
                    Load(gateway, tag, ids, wait=False) as fire_and_forget, \
                    Load(gateway, tag, ids, wait=False, threads=12, rows=2) as tiny:
                time.sleep(rng.uniform(0.3, 1.5))
                gateway.kill()  # kill -9 at a random moment
            acked |= waited.acked | fire_and_forget.acked | tiny.acked
            gateway.start()  # same data dir: the spool is replayed
        stored, count = wait_until_stored(gateway, tag, acked)
    finally:
        assert gateway.stop() == 0
    lost = acked - stored
    print(f"\ngateway kill -9 x{rounds}: acked {len(acked)}, stored {len(stored)}, "
          f"lost {len(lost)}, duplicates {count - len(stored)}")
    assert acked, "the load never got an answer"
    assert not lost


def test_gateway_kill9_under_load_loses_no_acknowledged_row(
        clickhouse_server: ClickHouseServer, tmp_path: Path) -> None:
    _kill_gateway_under_load(clickhouse_server, tmp_path, rounds=3)


@pytest.mark.soak
def test_gateway_kill9_ten_times_loses_no_acknowledged_row(
        clickhouse_server: ClickHouseServer, tmp_path: Path) -> None:
    _kill_gateway_under_load(clickhouse_server, tmp_path, rounds=10)


@pytest.fixture
def private_server() -> Iterator[ClickHouseServer]:
    """A ClickHouse server of this test's own, to kill."""
    with ClickHouseServer() as server:
        yield server


def test_clickhouse_kill9_and_back_loses_no_acknowledged_row(
        private_server: ClickHouseServer, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex
    ids = itertools.count()
    gateway = start_gateway("clickhouse", tmp_path, server=private_server)
    try:
        # The 202 load must outlast the outage: 2,000 small bodies take well under a second
        # since they are coalesced per loop pass, so it is bounded by the test's stop.
        with Load(gateway, tag, ids, wait=True) as waited, \
                Load(gateway, tag, ids, wait=False, max_requests=50_000) as accepted:
            time.sleep(0.5)
            private_server.kill()
            time.sleep(0.5)  # the gateway has seen inserts fail
            before = dict(accepted.statuses)
            time.sleep(1.5)  # 202s keep coming (spooled); wait=true cannot succeed
            spooled_during = accepted.statuses.get(202, 0) - before.get(202, 0)
            refused_during = accepted.statuses.get(503, 0) - before.get(503, 0)
            during_outage = dict(waited.statuses)
            private_server.restart()
            time.sleep(1.0)
        acked = waited.acked | accepted.acked
        stored, count = wait_until_stored(gateway, tag, acked)
    finally:
        assert gateway.stop() == 0
    print(f"\nClickHouse kill -9: acked {len(acked)}, lost {len(acked - stored)}, "
          f"duplicates {count - len(stored)}, wait=true statuses {waited.statuses}, "
          f"202 statuses {accepted.statuses}")
    # The spool takes the rows while ClickHouse is away (its limits are far off here).
    assert spooled_during > 0 and refused_during == 0, accepted.statuses
    assert 503 in during_outage or during_outage.get(200, 0) < waited.statuses.get(200, 0)
    assert not acked - stored


def test_overload_answers_503_with_retry_after_and_stores_every_2xx(
        private_server: ClickHouseServer, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex
    ids = itertools.count()
    # A small spool and ClickHouse down: the spool fills and the gateway says "slow down".
    gateway = start_gateway("clickhouse", tmp_path, {"TINYINGEST_SPOOL_MAX_BYTES": str(1 << 20)},
                            server=private_server)
    try:
        private_server.kill()
        with Load(gateway, tag, ids, wait=False, max_requests=400) as load:
            deadline = time.monotonic() + 20
            while 503 not in load.statuses and time.monotonic() < deadline:
                time.sleep(0.1)
        private_server.restart()
        stored, count = wait_until_stored(gateway, tag, load.acked)
    finally:
        assert gateway.stop() == 0
    print(f"\noverload: statuses {load.statuses}, acked {len(load.acked)}, "
          f"Retry-After values {sorted(set(load.retry_after))}")
    assert load.statuses.get(503, 0) > 0
    assert load.retry_after and all(value.isdigit() for value in load.retry_after)
    assert set(load.statuses) <= {202, 503}  # never a 500, never a false success
    assert not load.acked - stored


def test_hung_clickhouse_times_out_and_recovers(private_server: ClickHouseServer,
                                                tmp_path: Path) -> None:
    tag = uuid.uuid4().hex
    ids = itertools.count()
    gateway = start_gateway("clickhouse", tmp_path, {"TINYINGEST_CLICKHOUSE_TIMEOUT": "1"},
                            server=private_server)
    try:
        with Load(gateway, tag, ids, wait=True) as waited, \
                Load(gateway, tag, ids, wait=False, max_requests=300) as accepted:
            time.sleep(0.3)
            private_server.pause()  # SIGSTOP: connections stay open, nothing answers
            # Longer than a wait=true request's three 1 s attempts and their backoff, with
            # room for a loaded machine.
            time.sleep(6.0)
            private_server.resume()
            time.sleep(1.0)
        acked = waited.acked | accepted.acked
        stored, count = wait_until_stored(gateway, tag, acked)
    finally:
        private_server.resume()
        assert gateway.stop() == 0
    print(f"\nClickHouse SIGSTOP 6 s: wait=true {waited.statuses}, 202 {accepted.statuses}, "
          f"lost {len(acked - stored)}, duplicates {count - len(stored)}")
    assert 503 in waited.statuses  # a timeout, not a hang
    assert not acked - stored


def test_gateway_waits_for_a_clickhouse_that_does_not_answer_yet(
        private_server: ClickHouseServer, tmp_path: Path) -> None:
    """Started while ClickHouse hangs (a server still starting, or starved): the gateway
    retries creating its tables instead of exiting, and serves once ClickHouse answers."""
    gateway = GatewayProcess(PROJECT_DIR, str(tmp_path), clickhouse_url=private_server.url,
                             env={**GATEWAY_ENV, "TINYINGEST_CLICKHOUSE_TIMEOUT": "1"})
    private_server.pause()
    resume = threading.Timer(3.0, private_server.resume)
    resume.start()
    try:
        gateway.start()
    finally:
        resume.join()
        private_server.resume()
    try:
        assert "not answering yet" in gateway.log_tail()
        response = call(gateway, "POST", "/v0/events", params={"name": "events", "wait": "true"},
                        body=b'{"id": 1, "tag": "waited"}\n')
        assert response.status == 200, response.body
        assert sql(gateway, "SELECT count() AS n FROM events WHERE tag = 'waited'") == [{"n": 1}]
    finally:
        assert gateway.stop() == 0


def test_rows_clickhouse_refuses_go_to_quarantine(private_server: ClickHouseServer,
                                                  tmp_path: Path) -> None:
    from tinyingest.sinks.clickhouse import ClickHouseSink

    gateway = start_gateway("clickhouse", tmp_path, server=private_server)
    tag = uuid.uuid4().hex
    try:
        assert gateway.clickhouse_url is not None
        admin = ClickHouseSink(gateway.clickhouse_url)
        # Schema drift behind the gateway's back: a column it sends no longer exists.
        admin.execute("ALTER TABLE events DROP COLUMN note")
        response = call(gateway, "POST", "/v0/events", params={"name": "events", "wait": "true"},
                        body=b"".join(json.dumps({"id": i, "tag": tag}).encode() + b"\n"
                                      for i in range(5)))
        # 200 only once every row is in ClickHouse: here, all five in the quarantine.
        assert response.status == 200, response.body
        assert response.json() == {"successful_rows": 0, "quarantined_rows": 5}
        rows = sql(gateway, f"SELECT c__error, tag FROM events_quarantine WHERE tag = '{tag}'")
        admin.close()
    finally:
        assert gateway.stop() == 0
    assert len(rows) == 5
    assert all("ClickHouse refused the insert" in row["c__error"][0] for row in rows)


def test_reply_lost_after_insert_is_retried_not_lost(private_server: ClickHouseServer,
                                                     tmp_path: Path) -> None:
    """A7: ClickHouse stored the block but its answer never arrived: the gateway retries
    (at least once), and counts no loss."""
    from conftest import PROJECT_DIR
    from tinyingest.sinks.clickhouse import ClickHouseSink
    from tinyingest.testing import FaultProxy

    admin = ClickHouseSink(private_server.url)
    admin.execute("CREATE DATABASE a7")
    admin.close()
    proxy = FaultProxy(private_server.tcp_port)
    gateway = GatewayProcess(PROJECT_DIR, str(tmp_path), clickhouse_url=proxy.url("a7"),
                             env={"TINYINGEST_FLUSH_INTERVAL": "0.05",
                                  "TINYINGEST_CLICKHOUSE_TIMEOUT": "1"})
    tag = uuid.uuid4().hex
    ids = itertools.count()
    try:
        gateway.start()
        with Load(gateway, tag, ids, wait=False) as load:
            time.sleep(0.5)
            proxy.swallow_replies()  # inserts reach ClickHouse, answers are lost
            time.sleep(2.0)
            proxy.swallow_replies(False)
            time.sleep(0.5)
        stored, count = wait_until_stored(gateway, tag, load.acked)
    finally:
        gateway.stop()
        proxy.close()
    print(f"\nreplies lost: acked {len(load.acked)}, lost {len(load.acked - stored)}, "
          f"duplicates {count - len(stored)} (at-least-once: retried after a lost answer)")
    assert load.acked and not load.acked - stored


def _many_connections(gateway: GatewayProcess, tag: str, count: int) -> tuple[dict[int, int], int]:
    """``count`` connections at once, one 1-row POST each; statuses and errors."""
    import asyncio

    async def one(i: int) -> int:
        body = json.dumps({"id": i, "tag": tag}).encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        try:
            writer.write(f"POST /v0/events?name=events HTTP/1.1\r\nHost: x\r\n"
                         f"Authorization: Bearer {gateway.token}\r\nConnection: close\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), 60)
            return int(line.split()[1])
        finally:
            writer.close()

    async def main() -> tuple[dict[int, int], int]:
        results = await asyncio.gather(*(one(i) for i in range(count)), return_exceptions=True)
        statuses: dict[int, int] = {}
        errors = 0
        for result in results:
            if isinstance(result, int):
                statuses[result] = statuses.get(result, 0) + 1
            else:
                errors += 1
        return statuses, errors

    return asyncio.run(main())


def _client_sockets_held(pid: int, port: int) -> int:
    """Sockets of the gateway's port still open in the gateway once every client is gone.

    Counted by socket inode (the process's fds against its TCP table), not by fd total:
    the ClickHouse pool and the spool open fds of their own as load comes and goes.
    """
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().name
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    held = 0
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        if local_port == port and fields[3] != "0A" and fields[9] in inodes:  # 0A: LISTEN
            held += 1
    return held


def _thousands_of_connections(server: ClickHouseServer, tmp_path: Path, count: int) -> None:
    gateway = start_gateway("clickhouse", tmp_path, server=server)
    tag = uuid.uuid4().hex
    try:
        assert gateway.pid is not None
        statuses, errors = _many_connections(gateway, tag, count)
        accepted = statuses.get(202, 0)
        rows = sql(gateway, f"SELECT count() AS n FROM events WHERE tag = '{tag}'")
        deadline = time.monotonic() + 30
        while int(rows[0]["n"]) < accepted and time.monotonic() < deadline:
            time.sleep(0.2)
            rows = sql(gateway, f"SELECT count() AS n FROM events WHERE tag = '{tag}'")
        held = _client_sockets_held(gateway.pid, gateway.port)
    finally:
        assert gateway.stop() == 0
    print(f"\n{count} connections at once: statuses {statuses}, client errors {errors}, "
          f"client sockets still held {held}")
    assert set(statuses) <= {202, 503} and accepted > 0
    assert int(rows[0]["n"]) >= accepted  # every 2xx row stored
    assert held == 0  # every client connection closed by the gateway: no fd leak


def test_two_thousand_connections_at_once(clickhouse_server: ClickHouseServer,
                                          tmp_path: Path) -> None:
    _thousands_of_connections(clickhouse_server, tmp_path, 2000)


@pytest.mark.soak
def test_ten_thousand_connections_at_once(clickhouse_server: ClickHouseServer,
                                          tmp_path: Path) -> None:
    _thousands_of_connections(clickhouse_server, tmp_path, 10_000)


def test_wait_true_during_an_outage_answers_503_within_the_timeout_on_every_worker(
        private_server: ClickHouseServer, tmp_path: Path) -> None:
    """ClickHouse killed under 202 load: a ``wait=true`` request answers 503 with
    ``Retry-After`` once ClickHouse has not confirmed within TINYINGEST_CLICKHOUSE_TIMEOUT,
    however many spooled rows queue before its own; on each of two workers."""
    timeout = 3.0
    tag = uuid.uuid4().hex
    ids = itertools.count()
    # Small inserts: the backlog is many batches, retried one at a time with a backoff.
    env = {"TINYINGEST_CLICKHOUSE_TIMEOUT": str(timeout), "TINYINGEST_FLUSH_ROWS": "200"}
    gateway = start_gateway("clickhouse", tmp_path, env, server=private_server,
                            args=["--workers", "2"])
    answers: list[tuple[int, float, str | None]] = []
    try:
        with Load(gateway, tag, ids, wait=False, max_requests=3000) as accepted:
            time.sleep(0.5)
            private_server.kill()
            time.sleep(1.0)  # a backlog of spooled 202 rows builds up ahead of ours

            def waited_request(i: int) -> None:
                body = json.dumps({"id": 10**9 + i, "tag": tag}).encode() + b"\n"
                started = time.monotonic()
                response = call(gateway, "POST", "/v0/events", body=body, timeout=120,
                                params={"name": "events", "wait": "true"})
                answers.append((response.status, time.monotonic() - started,
                                response.headers.get("retry-after")))

            # Fresh connections, two at a time: the workers share the listening socket.
            for first in range(0, 12, 2):
                threads = [threading.Thread(target=waited_request, args=(first + k,))
                           for k in range(2)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join(130)
            private_server.restart()
        stored, count = wait_until_stored(gateway, tag, accepted.acked)
    finally:
        assert gateway.stop() == 0
    print(f"\nwait=true while ClickHouse is down (timeout {timeout} s): "
          f"{[(status, round(elapsed, 2)) for status, elapsed, _ in answers]}; "
          f"202 load {accepted.statuses}")
    assert len(answers) == 12
    assert {status for status, _, _ in answers} == {503}, answers
    assert all(retry is not None and retry.isdigit() for _, _, retry in answers)
    # The promise is "within the timeout"; the slack is for a loaded 2-core machine.
    assert max(elapsed for _, elapsed, _ in answers) < timeout + 1.5, answers
    assert not accepted.acked - stored


def test_readyz_says_when_clickhouse_is_down_and_healthz_stays_up(
        private_server: ClickHouseServer, tmp_path: Path) -> None:
    """Readiness (``/readyz``) follows ClickHouse; liveness (``/healthz``) does not: a
    gateway whose ClickHouse is away still spools what it accepts."""
    gateway = start_gateway("clickhouse", tmp_path, server=private_server)

    def ready_status(expected: int) -> Response:
        deadline = time.monotonic() + 30
        while True:
            response = call(gateway, "GET", "/readyz", token=None, timeout=30)
            if response.status == expected or time.monotonic() > deadline:
                return response
            time.sleep(0.2)

    try:
        assert ready_status(200).json()["status"] == "ready"
        private_server.kill()
        down = ready_status(503)
        assert down.status == 503 and down.headers.get("retry-after"), down.body
        assert "ClickHouse" in down.json()["error"]
        assert call(gateway, "GET", "/healthz", token=None).status == 200
        private_server.restart()
        assert ready_status(200).status == 200
    finally:
        assert gateway.stop() == 0, gateway.log_tail()
