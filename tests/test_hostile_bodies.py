"""Deeply nested bodies among good ones (issue 18): "a 2 KB body of 2000 ``[`` answers 500
and fails other clients' coalesced requests, although their rows were stored".

Each test sends a few hostile bodies in the middle of ~50 good requests, concurrently, to
one ingest route of one gateway: {ClickHouse server, embedded} x {compiled parser,
pure-Python parser}. No answer may be a 5xx; every good request is answered 2xx and its
row stored; each hostile body is quarantined (2xx, nothing stored) or refused with 400.
"""

from __future__ import annotations

import concurrent.futures
import uuid
from collections.abc import Iterator

import pytest

from conftest import start_gateway
from gatewayclient import Response, call, wait_for_rows
from tinyingest.testing import GatewayProcess

GATEWAYS = [("clickhouse", "c"), ("clickhouse", "py"), ("embedded", "c"), ("embedded", "py")]
PARSER_ENV = {"c": {"TINYINGEST_REQUIRE_EXTENSIONS": "1"},
              "py": {"TINYINGEST_NO_EXTENSIONS": "1", "TINYINGEST_REQUIRE_EXTENSIONS": "0"}}
GOOD_REQUESTS = 50
DEEP = 2000


@pytest.fixture(scope="module", params=GATEWAYS, ids=[f"{b}-{p}" for b, p in GATEWAYS])
def gateway(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    backend, parser_name = request.param
    server = request.getfixturevalue("clickhouse_server") if backend == "clickhouse" else None
    process = start_gateway(backend, tmp_path_factory.mktemp("hostile"),
                            PARSER_ENV[parser_name], server=server)
    try:
        yield process
        assert call(process, "GET", "/healthz", token=None).status == 200
    finally:
        code = process.stop()
    assert code == 0, process.log_tail()
    assert "Traceback" not in process.log_tail(100_000), process.log_tail()


def _csv_event(tag: str, labels: str) -> bytes:
    # Every writable column of events, in order (tests/project/datasources/events.datasource).
    fields = ["1", tag, "2026-12-04 10:00:00", "2026-12-04", *["0"] * 7, "0", "0", "n",
              "\\N", "\\N", "\\N", "note", "doc", labels]
    return ",".join(fields).encode() + b"\n"


NDJSON_HOSTILE = {
    "brackets": b"[" * DEEP,
    "objects": b'{"a":' * DEEP,
    "deep value": b'{"id": 1, "doc": ' + b"[" * DEEP + b"]" * DEEP + b"}\n",
    "deep array column": b'{"id": 1, "labels": ' + b"[" * DEEP + b"]" * DEEP + b"}\n",
}
CSV_HOSTILE = {
    "brackets": b"[" * DEEP,
    "objects": b'{"a":' * DEEP,
    "deep array column": _csv_event("hostile", '"' + "[" * DEEP + "]" * DEEP + '"'),
    "open array column": _csv_event("hostile", '"' + "[" * DEEP + '"'),
}

ROUTES = {
    # route -> (path, params, body format)
    "events": ("/v0/events", {"name": "events"}, "ndjson"),
    "events wait": ("/v0/events", {"name": "events", "wait": "true"}, "ndjson"),
    "append ndjson": ("/v0/datasources", {"name": "events", "mode": "append",
                                          "format": "ndjson"}, "ndjson"),
    "append csv": ("/v0/datasources", {"name": "events", "mode": "append", "format": "csv"},
                   "csv"),
}


@pytest.mark.parametrize("route", ROUTES)
def test_deep_nesting_never_fails_the_requests_around_it(gateway: GatewayProcess,
                                                         route: str) -> None:
    path, params, fmt = ROUTES[route]
    tag = uuid.uuid4().hex
    hostile = NDJSON_HOSTILE if fmt == "ndjson" else CSV_HOSTILE
    good = (b'{"id": 1, "tag": "%s"}\n' % tag.encode() if fmt == "ndjson"
            else _csv_event(tag, "['a']"))
    bodies: list[tuple[str, bytes]] = [("good", good)] * GOOD_REQUESTS
    for number, (name, body) in enumerate(hostile.items()):  # spread among the good ones
        bodies.insert(5 + number * (GOOD_REQUESTS // len(hostile)), (name, body))

    def send(body: bytes) -> Response:
        return call(gateway, "POST", path, params=params, body=body)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(send, [body for _, body in bodies]))
    for (name, _), answer in zip(bodies, answers):
        assert answer.status < 500, (name, answer.status, answer.body)
        if name == "good":
            assert answer.status in (200, 202), answer.body
            assert answer.json()["successful_rows"] == 1, answer.body
        elif answer.status != 400:
            assert answer.status in (200, 202), (name, answer.body)
            counts = answer.json()
            assert counts["successful_rows"] == 0 and counts["quarantined_rows"] >= 1, \
                (name, counts)
    rows = wait_for_rows(gateway, f"SELECT id FROM events WHERE tag = '{tag}'", GOOD_REQUESTS)
    assert len(rows) == GOOD_REQUESTS
