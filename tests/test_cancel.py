"""A client that hangs up stops its query: through real HTTP, on a real gateway, on both
backends (and the server one with ``--workers 2``).

Each query here runs for over 10 s if left alone (a cross join: every event of the tag with
the first ``width`` of them), in short blocks (ClickHouse checks for KILL between blocks).
"Running" is read from the engine: on a server, from its ``system.processes``; in the
embedded engine, which lives inside the gateway process (and whose ``system`` tables
``/v0/sql`` refuses), from ``/healthz``'s ``queries_in_flight``: queries whose chDB call
has not returned, and chDB returns only once the query has left its process list.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import pytest

from conftest import start_gateway
from gatewayclient import call, ndjson
from tinyingest.sinks.clickhouse import ClickHouseSink
from tinyingest.testing import ClickHouseServer, GatewayProcess

#: The README's promise: gone from the engine within 1 s of the hang-up. The slack covers
#: the polling itself (a round trip every 50 ms) on a loaded 2-core machine; the queries'
#: blocks take about 0.1 s.
PROMISED = 1.0
SLACK = 0.5

#: Rows and cross-join width for a query of over 10 s in blocks of about 0.1 s: 18.16
#: makes one block per 65,536 left rows x width; chDB cuts joined blocks at 65,536 rows.
SHAPES = {"clickhouse": (6_000_000, 100), "embedded": (1_000_000, 20_000)}


@dataclass
class Case:
    gateway: GatewayProcess
    tag: str
    width: int
    running: Callable[[], int]  # the engine's count of this gateway's queries

    def cross_join_sql(self) -> str:
        return (f"SELECT count() AS pairs FROM events AS a CROSS JOIN (SELECT id FROM events "
                f"WHERE tag = '{self.tag}' LIMIT {self.width}) AS b "
                f"WHERE a.tag = '{self.tag}' AND NOT ignore(cityHash64(a.id, b.id))")


CASES = {"clickhouse": ("clickhouse", []), "clickhouse-workers-2": ("clickhouse", ["--workers", "2"]),
         "embedded": ("embedded", [])}


@pytest.fixture(scope="module", params=list(CASES))
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Case]:
    backend, args = CASES[request.param]
    server: ClickHouseServer | None = request.getfixturevalue("clickhouse_server") \
        if backend == "clickhouse" else None
    # One query connection per process: a second query waits for the first one's.
    gateway = start_gateway(backend, tmp_path_factory.mktemp("cancel"), server=server, args=args,
                            env={"TINYINGEST_QUERY_TIMEOUT": "60",
                                 "TINYINGEST_QUERY_CONNECTIONS": "1"})
    tag = uuid.uuid4().hex
    rows, width = SHAPES[backend]
    admin = None
    try:
        if server is not None:
            assert gateway.clickhouse_url is not None
            # Straight into the server: 6M rows through HTTP would only slow the test down.
            loader = ClickHouseSink(gateway.clickhouse_url)
            loader.execute(f"INSERT INTO events (id, tag) SELECT number, '{tag}' "
                           f"FROM numbers({rows})")
            loader.close()
            admin = ClickHouseSink(server.url)

            def running() -> int:
                assert admin is not None
                return int(admin.query(
                    "SELECT count() FROM system.processes WHERE query LIKE "
                    f"'%{tag}%' AND query NOT LIKE '%system.processes%'", readonly=False).rows[0][0])
        else:
            body = (ndjson({"id": n, "tag": tag} for n in range(start, start + 100_000))
                    for start in range(0, rows, 100_000))
            assert call(gateway, "POST", "/v0/events", params={"name": "events", "wait": "true"},
                        body=body).status == 200

            def running() -> int:
                health = call(gateway, "GET", "/healthz", token=None).json()
                return int(health["queries_in_flight"])
        yield Case(gateway, tag, width, running)
    finally:
        if admin is not None:
            admin.close()
        code = gateway.stop()
        assert code == 0, f"gateway exited with {code}:\n{gateway.log_tail()}"


def send_request(case: Case, target: str) -> socket.socket:
    """A GET of ``/v0/sql`` (the cross join) or of the cross-join pipe, left open."""
    if target == "sql":
        path = "/v0/sql?" + urlencode({"q": case.cross_join_sql()})
    else:
        path = "/v0/pipes/events_cross.json?" + urlencode({"label": case.tag,
                                                           "width": case.width})
    parts = urlsplit(case.gateway.url)
    client = socket.create_connection((parts.hostname, parts.port), timeout=10)
    client.sendall(f"GET {path} HTTP/1.1\r\nHost: {parts.hostname}\r\n"
                   f"Authorization: Bearer {case.gateway.token}\r\n\r\n".encode())
    return client


def wait_until(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.parametrize("target", ["sql", "pipe"])
def test_hung_up_query_leaves_the_engine_within_a_second(case: Case, target: str) -> None:
    client = send_request(case, target)
    try:
        assert wait_until(lambda: case.running() == 1, 10), "the query never started"
        time.sleep(0.5)
        assert case.running() == 1  # still running: it would for 10 s more
    finally:
        client.close()
    hung_up = time.monotonic()
    assert wait_until(lambda: case.running() == 0, PROMISED + SLACK), \
        f"still running {time.monotonic() - hung_up:.1f} s after the client hung up"


@pytest.mark.parametrize("case", ["clickhouse", "embedded"], indirect=True)
def test_query_whose_client_left_while_it_waited_never_runs(case: Case) -> None:
    # One query connection (one process: with two workers, the second request may go to
    # the other one): the second query waits for the first; its client leaves meanwhile.
    first = send_request(case, "sql")
    try:
        assert wait_until(lambda: case.running() == 1, 10), "the first query never started"
        second = send_request(case, "pipe")
        time.sleep(0.5)
        second.close()
        time.sleep(0.2)  # the gateway has seen the hang-up
    finally:
        first.close()
    assert wait_until(lambda: case.running() == 0, PROMISED + SLACK)
    # Its connection free, the waiting query would start now and run for 10 s: it must not.
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        assert case.running() == 0, "the abandoned waiting query ran"
        time.sleep(0.05)
