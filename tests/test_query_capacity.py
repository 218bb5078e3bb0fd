"""Queries have capacity of their own: through real HTTP, on a real gateway, on both
backends.

* A slow ``/v0/sql`` or pipe query never holds up ingestion: a ``wait=true`` request is
  answered 200 (and 202s keep coming) while the query still runs. On the embedded engine
  every chDB call used to share one thread, so an insert waited for the query to end.
* At most ``TINYINGEST_QUERY_CONNECTIONS`` queries run and
  ``TINYINGEST_QUERY_MAX_WAITING`` wait; one more is answered 429.
* A query past ``TINYINGEST_QUERY_TIMEOUT`` is answered 408 (the server backend's test is
  in test_pipes_http.py).

"Running" is the gateway's ``/healthz`` ``queries_in_flight``: queries whose engine call
has not returned. Nothing here asserts on durations: only on what happened before what.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import pytest

from conftest import start_gateway
from gatewayclient import call, ndjson, sql
from tinyingest.testing import ClickHouseServer, GatewayProcess

#: Events of one tag, each paired with all of them by events_cross.pipe or
#: :func:`cross_join`: 9 x 10^10 pairs, over a minute of work for chDB (10^10 took it
#: 10 s) and hours for the 18.16 server, in short blocks (limits and KILL QUERY act
#: between blocks).
CROSS_ROWS = 300_000


def cross_join(tag: str) -> str:
    """events_cross.pipe's query, for ``/v0/sql`` (which refuses numbers() & co)."""
    return (f"SELECT count() AS pairs FROM events AS a CROSS JOIN (SELECT id FROM events "
            f"WHERE tag = '{tag}' LIMIT {CROSS_ROWS}) AS b "
            f"WHERE a.tag = '{tag}' AND NOT ignore(cityHash64(a.id, b.id))")


def load_cross_rows(gateway: GatewayProcess) -> str:
    tag = uuid.uuid4().hex
    body = ndjson({"id": n, "tag": tag} for n in range(CROSS_ROWS))
    assert call(gateway, "POST", "/v0/events", params={"name": "events", "wait": "true"},
                body=body).status == 200
    return tag


@pytest.fixture(scope="module", params=["clickhouse", "embedded"])
def gateway(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """One query connection and one waiting place: the third query is one too many."""
    server: ClickHouseServer | None = request.getfixturevalue("clickhouse_server") \
        if request.param == "clickhouse" else None
    process = start_gateway(request.param, tmp_path_factory.mktemp("capacity"), server=server,
                            env={"TINYINGEST_QUERY_TIMEOUT": "120",
                                 "TINYINGEST_QUERY_CONNECTIONS": "1",
                                 "TINYINGEST_QUERY_MAX_WAITING": "1"})
    try:
        yield process
    finally:
        code = process.stop()
        assert code == 0, f"gateway exited with {code}:\n{process.log_tail()}"


def in_flight(gateway: GatewayProcess) -> int:
    return int(call(gateway, "GET", "/healthz", token=None).json()["queries_in_flight"])


def wait_until(condition: Callable[[], bool], seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def open_query(gateway: GatewayProcess, path: str, params: dict[str, str]) -> socket.socket:
    """A GET left open: its answer is read (or its client hangs up) later."""
    parts = urlsplit(gateway.url)
    client = socket.create_connection((parts.hostname, parts.port), timeout=10)
    client.sendall(f"GET {path}?{urlencode(params)} HTTP/1.1\r\nHost: {parts.hostname}\r\n"
                   f"Authorization: Bearer {gateway.token}\r\n\r\n".encode())
    return client


def unanswered(client: socket.socket) -> bool:
    client.setblocking(False)
    try:
        return not client.recv(1)  # b"": the gateway closed it, which it never does here
    except BlockingIOError:
        return True
    finally:
        client.setblocking(True)


def hang_up(gateway: GatewayProcess, *clients: socket.socket) -> None:
    """Close the clients; their queries are cancelled, and leave the engine."""
    for client in clients:
        client.close()
    assert wait_until(lambda: in_flight(gateway) == 0), "a hung-up query kept running"


@pytest.fixture(scope="module")
def cross_tag(gateway: GatewayProcess) -> str:
    return load_cross_rows(gateway)


@pytest.mark.parametrize("target", ["sql", "pipe"])
def test_ingest_is_answered_while_a_slow_query_runs(gateway: GatewayProcess, cross_tag: str,
                                                    target: str) -> None:
    tag = uuid.uuid4().hex
    if target == "sql":
        slow = open_query(gateway, "/v0/sql", {"q": cross_join(cross_tag)})
    else:
        slow = open_query(gateway, "/v0/pipes/events_cross.json",
                          {"label": cross_tag, "width": str(CROSS_ROWS)})
    try:
        assert wait_until(lambda: in_flight(gateway) == 1), "the slow query never started"
        response = call(gateway, "POST", "/v0/events", timeout=30,
                        params={"name": "events", "wait": "true"},
                        body=ndjson({"id": n, "tag": tag} for n in range(10)))
        assert response.status == 200, response.body
        assert response.json()["successful_rows"] == 10
        # 202s, spaced past the flush interval: each flush's insert must get through.
        statuses = []
        for n in range(10):
            statuses.append(call(gateway, "POST", "/v0/events", params={"name": "events"},
                                 body=ndjson([{"id": 100 + n, "tag": tag}])).status)
            time.sleep(0.1)
        assert statuses == [202] * 10
        # All of that happened while the slow query was still running, unanswered.
        assert in_flight(gateway) == 1
        assert unanswered(slow)
    finally:
        hang_up(gateway, slow)
    assert sql(gateway, f"SELECT count() AS n FROM events WHERE tag = '{tag}'") == [{"n": 20}]


def test_query_beyond_the_connections_and_the_waiting_places_gets_429(
        gateway: GatewayProcess, cross_tag: str) -> None:
    running = open_query(gateway, "/v0/sql", {"q": cross_join(cross_tag)})
    waiting = None
    try:
        assert wait_until(lambda: in_flight(gateway) == 1), "the first query never started"
        waiting = open_query(gateway, "/v0/pipes/events_cross.json",
                             {"label": cross_tag, "width": str(CROSS_ROWS)})
        assert wait_until(lambda: in_flight(gateway) == 2), "the second query is not waiting"
        response = call(gateway, "GET", "/v0/sql", params={"q": "SELECT 1 AS one"}, timeout=30)
        assert response.status == 429, response.body
        assert response.headers["retry-after"] == "1"
        assert "TINYINGEST_QUERY_MAX_WAITING" in response.json()["error"]
        assert unanswered(running) and unanswered(waiting)
        # A waiting query whose client leaves gives its place up at once (it never runs).
        waiting.close()
        waiting = None
        assert wait_until(lambda: in_flight(gateway) == 1), "the abandoned query still waits"
        assert unanswered(running)
    finally:
        hang_up(gateway, running, *([waiting] if waiting is not None else []))
    # Room again: the same query runs.
    assert sql(gateway, "SELECT 1 AS one") == [{"one": 1}]


@pytest.fixture(scope="module")
def embedded_one_second(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    process = start_gateway("embedded", tmp_path_factory.mktemp("timeout"),
                            env={"TINYINGEST_QUERY_TIMEOUT": "1"})
    try:
        yield process
    finally:
        assert process.stop() == 0, process.log_tail()


def test_embedded_query_past_the_timeout_gets_408(embedded_one_second: GatewayProcess) -> None:
    tag = load_cross_rows(embedded_one_second)
    response = call(embedded_one_second, "GET", "/v0/sql", params={"q": cross_join(tag)},
                    timeout=30)
    assert response.status == 408, response.body
    error = response.json()["error"]
    assert "TINYINGEST_QUERY_TIMEOUT" in error and "query timeout" in error
    assert in_flight(embedded_one_second) == 0
    # The reader that ran it is free again.
    assert sql(embedded_one_second, "SELECT 1 AS one") == [{"one": 1}]
