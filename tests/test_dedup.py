"""``X-Request-Id`` dedup shared by every process writing to the same ClickHouse.

Through real HTTP: a retry that lands on another worker, another gateway, or a restarted
gateway gets the first answer again and stores nothing. ``--workers`` and two gateways
on one storage need a ClickHouse server (the embedded engine lives in one process and
its data directory cannot be shared), so those run on the server only; the restart runs
on both backends.
"""

from __future__ import annotations

import http.client
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import GATEWAY_ENV, PROJECT_DIR, start_gateway
from gatewayclient import Response, call, ndjson, sql
from tinyingest.idempotency import MAX_REQUEST_ID_BYTES
from tinyingest.testing import ClickHouseServer, GatewayProcess

BACKENDS = ["clickhouse", "embedded"]
ENDPOINTS = ["events", "datasources"]

Send = Callable[[GatewayProcess], Response]


def _sender(endpoint: str, tag: str, request_id: str, token: str | None = "admin") -> Send:
    """One retried request (a fresh connection each time), waiting for ClickHouse."""
    headers = {"X-Request-Id": request_id}
    if endpoint == "events":
        body = ndjson({"id": i, "tag": tag} for i in range(5))
        return lambda gateway: call(gateway, "POST", "/v0/events", body=body, headers=headers,
                                    params={"name": "events", "wait": "true"}, token=token)
    csv = "".join(f"{tag},{i},x,1.5,2024-01-01\n" for i in range(5)).encode()
    return lambda gateway: call(gateway, "POST", "/v0/datasources", body=csv, headers=headers,
                                params={"name": "table", "mode": "append"}, token=token)


def _stored(gateway: GatewayProcess, endpoint: str, tag: str) -> int:
    table = "events" if endpoint == "events" else "table"
    return int(sql(gateway, f"SELECT count() AS n FROM {table} WHERE tag = '{tag}'")[0]["n"])


def _assert_replays(first: Response, again: Response) -> None:
    assert again.status == first.status == 200, again.body
    assert again.body == first.body  # datasources: the same import_id too
    assert again.headers.get("x-idempotent-replay") == "true"


def _both_workers_up(gateway: GatewayProcess) -> None:
    # start() returns once one worker answers; the other may still be starting.
    pids: set[int] = set()
    deadline = time.monotonic() + 30
    while len(pids) < 2 and time.monotonic() < deadline:
        pids.add(call(gateway, "GET", "/healthz", token=None).json()["pid"])
    assert len(pids) == 2, pids


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_same_id_to_two_workers_is_stored_once(clickhouse_server: ClickHouseServer,
                                               tmp_path: Path, endpoint: str) -> None:
    gateway = start_gateway("clickhouse", tmp_path, server=clickhouse_server,
                            args=["--workers", "2"])
    try:
        _both_workers_up(gateway)
        tag = uuid.uuid4().hex
        send = _sender(endpoint, tag, f"workers-{tag}")
        first = send(gateway)
        assert first.status == 200, first.body
        # The kernel picks a worker per connection (SO_REUSEPORT): 20 fresh connections
        # all reach the first one with odds of 2**-20.
        for _ in range(20):
            _assert_replays(first, send(gateway))
        assert _stored(gateway, endpoint, tag) == 5
    finally:
        assert gateway.stop() == 0


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_same_id_to_two_gateways_is_stored_once(clickhouse_server: ClickHouseServer,
                                                tmp_path: Path, endpoint: str) -> None:
    one = start_gateway("clickhouse", tmp_path / "one", server=clickhouse_server)
    # A second gateway on the same database, as behind a load balancer.
    two = GatewayProcess(PROJECT_DIR, str(tmp_path / "two"), clickhouse_url=one.clickhouse_url,
                         env=GATEWAY_ENV)
    two.start()
    try:
        tag = uuid.uuid4().hex
        send = _sender(endpoint, tag, f"gateways-{tag}")
        first = send(one)
        assert first.status == 200, first.body
        _assert_replays(first, send(two))
        _assert_replays(first, send(one))
        assert _stored(two, endpoint, tag) == 5
    finally:
        assert one.stop() == 0
        assert two.stop() == 0


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_same_id_after_a_restart_is_stored_once(backend: str, endpoint: str, tmp_path: Path,
                                                request: pytest.FixtureRequest) -> None:
    server = request.getfixturevalue("clickhouse_server") if backend == "clickhouse" else None
    gateway = start_gateway(backend, tmp_path, server=server)
    tag = uuid.uuid4().hex
    send = _sender(endpoint, tag, f"restart-{tag}")
    try:
        first = send(gateway)
        assert first.status == 200, first.body
    finally:
        assert gateway.stop() == 0
    # Same storage (server database or chDB directory), new process: nothing in memory.
    with GatewayProcess(PROJECT_DIR, str(tmp_path), clickhouse_url=gateway.clickhouse_url,
                        env=GATEWAY_ENV) as restarted:
        _assert_replays(first, send(restarted))
        assert _stored(restarted, endpoint, tag) == 5


def test_overlong_request_id_is_refused(gateway: GatewayProcess) -> None:
    tag = uuid.uuid4().hex
    longest = tag + "x" * (MAX_REQUEST_ID_BYTES - len(tag))
    for endpoint in ENDPOINTS:
        refused = _sender(endpoint, tag, longest + "x")(gateway)
        assert refused.status == 400
        assert f"longer than {MAX_REQUEST_ID_BYTES} bytes" in refused.json()["error"]
    # batch_id is the same id by another name, under the same limit.
    refused = call(gateway, "POST", "/v0/events", body=b'{"id": 1}\n',
                   params={"name": "events", "batch_id": longest + "x"})
    assert refused.status == 400
    assert _stored(gateway, "events", tag) == _stored(gateway, "datasources", tag) == 0
    for endpoint in ENDPOINTS:
        assert _sender(endpoint, tag, longest)(gateway).status == 200
        assert _stored(gateway, endpoint, tag) == 5


def test_another_tokens_same_id_is_not_a_replay(gateway: GatewayProcess) -> None:
    tokens = call(gateway, "GET", "/v0/tokens").json()["tokens"]
    append = next(t["token"] for t in tokens if t["name"] == "events_append")
    tag = uuid.uuid4().hex
    request_id = f"shared-{tag}"
    assert _sender("events", tag, request_id)(gateway).status == 200
    other = _sender("events", tag, request_id, token=append)(gateway)
    assert other.status == 200, other.body
    assert "x-idempotent-replay" not in other.headers
    assert _stored(gateway, "events", tag) == 10


def test_id_that_cannot_be_checked_is_not_ingested(tmp_path: Path) -> None:
    # ClickHouse away: the gateway cannot know whether the id was answered elsewhere, so
    # it ingests nothing and asks for a retry (the embedded engine cannot be away).
    with ClickHouseServer() as server:
        gateway = start_gateway("clickhouse", tmp_path, server=server)
        try:
            tag = uuid.uuid4().hex
            send = _sender("events", tag, f"away-{tag}")
            server.kill()
            refused = send(gateway)
            assert refused.status == 503, refused.body
            assert "X-Request-Id" in refused.json()["error"]
            assert refused.headers.get("retry-after") == "1"
            server.restart()
            first = send(gateway)
            assert first.status == 200, first.body
            assert "x-idempotent-replay" not in first.headers
            _assert_replays(first, send(gateway))
            assert _stored(gateway, "events", tag) == 5
        finally:
            assert gateway.stop() == 0


def test_retry_of_a_wait_that_timed_out_is_not_stored_twice(tmp_path: Path) -> None:
    """``wait=true`` answered 503 because ClickHouse did not confirm in time: the rows are
    spooled and will be inserted, so the retry with the same id is answered 202 (the
    counts, not yet confirmed) and stores nothing more."""
    with ClickHouseServer() as server:
        gateway = start_gateway("clickhouse", tmp_path, {"TINYINGEST_CLICKHOUSE_TIMEOUT": "2"},
                                server=server)
        try:
            tag = uuid.uuid4().hex
            body = ndjson({"id": i, "tag": tag} for i in range(5))
            headers = {"X-Request-Id": f"timed-out-{tag}",
                       "Authorization": f"Bearer {gateway.token}"}
            connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=60)
            connection.putrequest("POST", "/v0/events?name=events&wait=true")
            for name, value in headers.items():
                connection.putheader(name, value)
            connection.putheader("Content-Length", str(len(body)))
            connection.endheaders()
            time.sleep(1.0)  # the id was looked up (before the body is read)
            server.pause()  # SIGSTOP: the insert gets no answer
            try:
                connection.send(body)
                timed_out = connection.getresponse()
                assert timed_out.status == 503, timed_out.read()
                connection.close()
            finally:
                server.resume()
            retried = call(gateway, "POST", "/v0/events", body=body, headers=headers,
                           params={"name": "events", "wait": "true"}, token=None)
            assert retried.status == 202, retried.body
            assert retried.json() == {"successful_rows": 5, "quarantined_rows": 0}
            assert retried.headers.get("x-idempotent-replay") == "true"
            deadline = time.monotonic() + 30
            while _stored(gateway, "events", tag) < 5 and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(0.5)  # a second copy would follow within the flush interval
            assert _stored(gateway, "events", tag) == 5
        finally:
            server.resume()
            assert gateway.stop() == 0
