"""Every ingest path through a real gateway process, on both backends.

The ``gateway`` fixture runs ``tinyingest serve`` against the suite's private
ClickHouse server and against the embedded engine; each test keeps its rows apart
with a unique ``tag``.
"""

from __future__ import annotations

import gzip
import itertools
import json
import uuid
from typing import Any

import pytest
import zstandard

from gatewayclient import call, ndjson, sql, wait_for_rows
from tinyingest import parser
from tinyingest.testing import GatewayProcess


def new_tag() -> str:
    return uuid.uuid4().hex[:12]


def event(tag: str, i: int, **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": i, "tag": tag, "ts": "2024-01-02T03:04:05Z", "day": "2024-02-29",
        "n": {"i8": -128, "i16": 32767, "i32": -2147483648, "i64": "-9223372036854775808",
              "u8": 255, "u16": 65535, "u32": 4294967295},
        "f32": 1.5, "f64": 0.1, "name": f"name{i % 3}", "opt": None, "optn": i,
        "lcn": None if i % 2 else "x", "doc": {"a": [1, {"b": "c"}]},
        "labels": ["all", f"l{i % 2}"][: i % 3],
    }
    row.update(extra)
    return row


def post_events(gateway: GatewayProcess, body: Any, *, wait: bool = True,
                headers: dict[str, str] | None = None, **params: Any) -> Any:
    query = {"name": "events", **params}
    if wait:
        query["wait"] = "true"
    return call(gateway, "POST", "/v0/events", params=query, body=body, headers=headers)


def test_events_wait_stores_every_type_exactly(gateway: GatewayProcess) -> None:
    tag = new_tag()
    rows = [event(tag, i) for i in range(5)]
    response = post_events(gateway, ndjson(rows))
    assert response.status == 200, response.body
    assert response.json() == {"successful_rows": 5, "quarantined_rows": 0}
    stored = sql(gateway, f"SELECT * FROM events WHERE tag = '{tag}' ORDER BY id")
    assert len(stored) == 5
    first = stored[0]
    assert first["ts"] == "2024-01-02 03:04:05"
    assert first["day"] == "2024-02-29"
    assert (first["i8"], first["i16"], first["i32"], first["i64"]) == \
        (-128, 32767, -2147483648, -9223372036854775808)
    assert (first["u8"], first["u16"], first["u32"]) == (255, 65535, 4294967295)
    assert first["f32"] == 1.5 and first["f64"] == 0.1
    assert [r["name"] for r in stored] == ["name0", "name1", "name2", "name0", "name1"]
    assert [r["opt"] for r in stored] == [None] * 5
    assert [r["optn"] for r in stored] == [0, 1, 2, 3, 4]
    assert [r["lcn"] for r in stored] == ["x", None, "x", None, "x"]
    assert first["note"] == "none"  # missing field -> the column's DEFAULT
    assert first["doc"] == '{"a":[1,{"b":"c"}]}'  # nested JSON into String, compact
    assert [r["labels"] for r in stored] == [[], ["all"], ["all", "l0"], [], ["all"]]


def test_bad_rows_go_to_quarantine_with_reasons(gateway: GatewayProcess) -> None:
    tag = new_tag()
    body = ndjson([event(tag, 1), event(tag, 2, n={"u8": 300}), event(tag, 3, ts="02.01.2024")])
    body += b'{"tag": "' + tag.encode() + b'", "id": 4\n'  # truncated last line
    response = post_events(gateway, body)
    assert response.status == 200, response.body
    assert response.json() == {"successful_rows": 1, "quarantined_rows": 3}
    assert [r["id"] for r in sql(gateway, f"SELECT id FROM events WHERE tag = '{tag}'")] == [1]
    bad = sql(gateway, "SELECT c__error_column, c__error, c__raw, id, tag FROM events_quarantine "
                       f"WHERE c__raw LIKE '%{tag}%' ORDER BY c__raw")
    assert len(bad) == 3
    errors = sorted((r["c__error_column"], r["c__error"][0]) for r in bad)
    assert errors == [
        ([], "invalid JSON"),
        (["ts"], "value '02.01.2024' on column 'ts' is not DateTime"),
        (["u8"], "value '300' on column 'u8' is out of range for UInt8"),
    ]
    by_id = {r["id"]: r for r in bad}
    assert by_id["2"]["tag"] == tag  # original columns keep their raw text
    assert any(r["c__raw"].endswith('"id": 4') for r in bad)  # the whole row, as received


def test_events_default_answers_202_and_rows_arrive(gateway: GatewayProcess) -> None:
    tag = new_tag()
    response = post_events(gateway, ndjson(event(tag, i) for i in range(3)), wait=False)
    assert response.status == 202
    assert response.json() == {"successful_rows": 3, "quarantined_rows": 0}
    assert len(wait_for_rows(gateway, f"SELECT id FROM events WHERE tag = '{tag}'", 3)) == 3


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
def test_compressed_bodies(gateway: GatewayProcess, encoding: str) -> None:
    tag = new_tag()
    raw = ndjson(event(tag, i) for i in range(100))
    body = gzip.compress(raw) if encoding == "gzip" else zstandard.ZstdCompressor().compress(raw)
    response = post_events(gateway, body, headers={"Content-Encoding": encoding})
    assert response.status == 200, response.body
    assert response.json()["successful_rows"] == 100


def test_chunked_upload_in_tiny_chunks_is_parsed_as_a_whole(gateway: GatewayProcess) -> None:
    tag = new_tag()
    raw = ndjson(event(tag, i, opt="é\u2603\U0001F600") for i in range(50))
    chunks = (raw[i:i + 7] for i in range(0, len(raw), 7))  # splits inside UTF-8 and numbers
    response = post_events(gateway, chunks)
    assert response.status == 200, response.body
    assert response.json() == {"successful_rows": 50, "quarantined_rows": 0}
    stored = sql(gateway, f"SELECT DISTINCT opt FROM events WHERE tag = '{tag}'")
    assert stored == [{"opt": "é\u2603\U0001F600"}]


def test_many_blocks_are_merged_into_inserts_without_loss(gateway: GatewayProcess) -> None:
    # Over BLOCK_ROWS rows, so one request hands several blocks to the batcher and the
    # batcher merges them (LowCardinality granules, Nullable null maps) into one insert.
    tag = new_tag()
    count = 150_000
    lines = (json.dumps({"id": i, "tag": tag, "name": f"n{i % 1000}",
                         "lcn": None if i % 7 == 0 else f"l{i % 5}", "optn": i,
                         "labels": [f"a{i % 3}"] * (i % 3)}).encode() + b"\n"
             for i in range(count))
    batches = (b"".join(itertools.islice(lines, 5000)) for _ in range(count // 5000))
    response = post_events(gateway, batches)
    assert response.status == 200, response.body
    assert response.json() == {"successful_rows": count, "quarantined_rows": 0}
    stats = sql(gateway, "SELECT count() AS n, sum(id) AS s, uniqExact(name) AS names, "
                         "countIf(isNull(lcn)) AS nulls, sum(optn) AS so, "
                         "sum(length(labels)) AS nlabels "
                         f"FROM events WHERE tag = '{tag}'")[0]
    assert int(stats["n"]) == count
    assert int(stats["s"]) == count * (count - 1) // 2
    assert int(stats["names"]) == 1000
    assert int(stats["nulls"]) == len(range(0, count, 7))
    assert int(stats["nlabels"]) == sum(i % 3 for i in range(count))
    assert int(stats["so"]) == count * (count - 1) // 2


def test_datasources_append_csv_multipart_with_header(gateway: GatewayProcess) -> None:
    tag = new_tag()
    csv_text = (f'd,tag,a,b,c\n2024-01-01,{tag},1,"hello, ""world""",1.5\r\n'
                f'2024-01-02,{tag},2,"multi\nline",\n2024-01-03,{tag},x,bad,2\n').encode()
    boundary = "----tinyingest" + uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"csv\"; "
            f"filename=\"data.csv\"\r\nContent-Type: text/csv\r\n\r\n").encode() \
        + csv_text + f"\r\n--{boundary}--\r\n".encode()
    response = call(gateway, "POST", "/v0/datasources",
                    params={"mode": "append", "name": "table", "format": "csv"}, body=body,
                    headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert response.status == 200, response.body
    answer = response.json()
    assert answer["datasource"]["name"] == "table"
    assert (answer["successful_rows"], answer["quarantine_rows"], answer["error"]) == (2, 1, False)
    rows = sql(gateway, f"SELECT a, b, c, d FROM table WHERE tag = '{tag}' ORDER BY a")
    assert rows == [{"a": 1, "b": 'hello, "world"', "c": 1.5, "d": "2024-01-01"},
                    {"a": 2, "b": "multi\nline", "c": None, "d": "2024-01-02"}]
    bad = sql(gateway, "SELECT c__error, c__import_id FROM table_quarantine "
                       f"WHERE c__raw LIKE '%{tag}%'")
    assert bad == [{"c__error": ["value 'x' on column 'a' is not Int32"],
                    "c__import_id": answer["import_id"]}]


def test_datasources_append_ndjson_gzip_sniffed(gateway: GatewayProcess) -> None:
    tag = new_tag()
    body = gzip.compress(ndjson({"tag": tag, "a": i, "b": "x", "c": None, "d": "2024-05-06"}
                                for i in range(10)))
    response = call(gateway, "POST", "/v0/datasources",
                    params={"mode": "append", "name": "table", "format": "ndjson"}, body=body)
    assert response.status == 200, response.body
    assert response.json()["successful_rows"] == 10
    assert sql(gateway, f"SELECT count() AS n FROM table WHERE tag = '{tag}'")[0]["n"] in (10, "10")


def test_datasources_csv_custom_delimiter_positional(gateway: GatewayProcess) -> None:
    tag = new_tag()
    body = f"{tag};7;semi;;2024-01-01\n".encode()
    response = call(gateway, "POST", "/v0/datasources", body=body, params={
        "mode": "append", "name": "table", "format": "csv", "dialect_delimiter": ";"})
    assert response.status == 200, response.body
    assert sql(gateway, f"SELECT a, b, c FROM table WHERE tag = '{tag}'") == \
        [{"a": 7, "b": "semi", "c": None}]


@pytest.mark.parametrize(("params", "headers", "token", "status"), [
    ({"name": "events"}, {}, None, 403),
    ({"name": "events"}, {}, "wrong", 403),
    ({}, {}, "admin", 400),
    ({"name": "nope"}, {}, "admin", 404),
    ({"name": "events"}, {"Content-Encoding": "br"}, "admin", 415),
    ({"name": "events"}, {"Content-Encoding": "gzip"}, "admin", 400),
])
def test_event_errors_are_json(gateway: GatewayProcess, params: dict[str, str],
                               headers: dict[str, str], token: str | None, status: int) -> None:
    response = call(gateway, "POST", "/v0/events", params=params, body=b'{"id": 1}\n',
                    headers=headers, token=token)
    assert response.status == status
    assert isinstance(response.json()["error"], str)


def test_announced_oversize_body_gets_413_before_it_is_read(gateway: GatewayProcess) -> None:
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(gateway.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        connection.putrequest("POST", "/v0/events?name=events")
        connection.putheader("Authorization", f"Bearer {gateway.token}")
        connection.putheader("Content-Length", str(1 << 30))  # 1 GiB announced, never sent
        connection.endheaders()
        response = connection.getresponse()
        assert response.status == 413
        assert "error" in json.loads(response.read())
    finally:
        connection.close()


def test_decompressed_size_limit_gives_413(gateway: GatewayProcess) -> None:
    bomb = gzip.compress(b" " * (80 << 20))  # 80 MiB of blanks > the 64 MiB limit
    response = post_events(gateway, bomb, headers={"Content-Encoding": "gzip"})
    assert response.status == 413


def test_sql_is_read_only(gateway: GatewayProcess) -> None:
    response = call(gateway, "GET", "/v0/sql",
                    params={"q": "INSERT INTO events (id) VALUES (1)"})
    assert response.status == 400
    assert "error" in response.json()
    response = call(gateway, "GET", "/v0/sql", params={"q": "SELECT 1 AS one FORMAT JSON"})
    assert response.json()["data"] == [{"one": 1}]


def test_health_and_metrics(gateway: GatewayProcess) -> None:
    health = call(gateway, "GET", "/healthz", token=None).json()
    assert health["status"] == "ok" and health["parser"] == parser.IMPLEMENTATION
    ready = call(gateway, "GET", "/readyz", token=None)
    assert ready.status == 200 and ready.json()["backend"] == health["backend"]
    metrics = call(gateway, "GET", "/metrics", token=None)
    assert b"tinyingest_rows_total" in metrics.body


def test_unknown_path_is_a_json_404(gateway: GatewayProcess) -> None:
    response = call(gateway, "GET", "/v0/nothing")
    assert response.status == 404
    assert "error" in response.json()


def test_retried_request_id_is_not_stored_twice(gateway: GatewayProcess) -> None:
    tag = new_tag()
    body = ndjson(event(tag, i) for i in range(10))
    headers = {"X-Request-Id": f"retry-{tag}"}
    first = post_events(gateway, body, headers=headers)
    again = post_events(gateway, body, headers=headers)
    assert first.status == again.status == 200
    assert again.json() == first.json()
    assert again.headers.get("x-idempotent-replay") == "true"
    other = post_events(gateway, body, headers={"X-Request-Id": f"other-{tag}"})
    assert other.status == 200
    assert int(sql(gateway, f"SELECT count() AS n FROM events WHERE tag = '{tag}'")[0]["n"]) == 20


def test_failed_request_id_can_be_retried(gateway: GatewayProcess) -> None:
    tag = new_tag()
    headers = {"X-Request-Id": f"fail-{tag}", "Content-Encoding": "gzip"}
    assert post_events(gateway, b"not gzip", headers=headers).status == 400
    body = gzip.compress(ndjson([event(tag, 1)]))
    assert post_events(gateway, body, headers=headers).status == 200


# -- the lean path of /v0/events (EventsRouter) ------------------------------------------
# A plain 202 POST is served without a RequestHandler; an X-Request-Id sends the same
# request through EventsHandler. Both must answer alike.


def _lean_cases(tag: str) -> dict[str, tuple[Any, dict[str, str]]]:
    rows = ndjson(event(tag, i) for i in range(3))
    return {
        "rows": (rows, {}),
        "bad rows": (rows + b'{"id": \n' + ndjson([event(tag, 9, ts="never")]), {}),
        "gzip": (gzip.compress(rows), {"Content-Encoding": "gzip"}),
        "tiny chunks": ((rows[i:i + 5] for i in range(0, len(rows), 5)), {}),
        "corrupt gzip": (b"\x1f\x8b\x08 not gzip", {"Content-Encoding": "gzip"}),
        "too large decoded": (gzip.compress(b" " * (80 << 20)), {"Content-Encoding": "gzip"}),
        "empty": (b"", {}),
    }


@pytest.mark.parametrize("case", list(_lean_cases("")))
def test_lean_events_path_answers_as_the_handler(gateway: GatewayProcess, case: str) -> None:
    tag = new_tag()
    lean_body, headers = _lean_cases(tag)[case]
    handler_body, _ = _lean_cases(tag)[case]
    lean = post_events(gateway, lean_body, wait=False, headers=headers)
    handler = post_events(gateway, handler_body, wait=False,
                          headers={**headers, "X-Request-Id": f"{case}-{tag}"})
    assert (lean.status, lean.body) == (handler.status, handler.body)
    assert {k: v for k, v in lean.headers.items() if k != "date"} == \
        {k: v for k, v in handler.headers.items() if k != "date"}
    assert lean.headers["access-control-allow-origin"] == "*"
    if lean.status == 202:
        stored = lean.json()["successful_rows"] * 2
        assert len(wait_for_rows(gateway, f"SELECT id FROM events WHERE tag = '{tag}'",
                                 stored)) == stored


def test_concurrent_small_bodies_each_learn_their_own_counts(gateway: GatewayProcess) -> None:
    # Small bodies that end in the same event-loop pass share a parser and a spool record
    # (SmallBodies); each answer must still count its own body's rows.
    from concurrent.futures import ThreadPoolExecutor

    tag = new_tag()

    def body(i: int) -> tuple[bytes, dict[str, int]]:
        good = [event(tag, i * 10 + k) for k in range(i % 3 + 1)]
        bad = [event(tag, i * 10 + 9, ts="never")] if i % 4 == 0 else []
        return ndjson(good + bad), {"successful_rows": len(good), "quarantined_rows": len(bad)}

    def post(i: int) -> tuple[int, Any, dict[str, int]]:
        data, expected = body(i)
        response = post_events(gateway, data, wait=False)
        return response.status, response.json(), expected

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(post, range(160)))
    assert [(status, got) for status, got, _ in answers] == \
        [(202, expected) for _, _, expected in answers]
    stored = sum(expected["successful_rows"] for _, _, expected in answers)
    assert len(wait_for_rows(gateway, f"SELECT id FROM events WHERE tag = '{tag}'",
                             stored)) == stored
    assert len(wait_for_rows(gateway, "SELECT c__raw FROM events_quarantine "
                             f"WHERE tag = '{tag}'", 40)) == 40


def test_small_body_arriving_in_pieces_is_parsed_whole(gateway: GatewayProcess) -> None:
    import socket
    import time
    from urllib.parse import urlsplit

    tag = new_tag()
    rows = ndjson(event(tag, i) for i in range(3))
    parts = urlsplit(gateway.url)
    assert parts.hostname is not None and parts.port is not None
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(b"POST /v0/events?name=events HTTP/1.1\r\nHost: x\r\n"
                     b"Authorization: Bearer " + gateway.token.encode() + b"\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(rows))
        for start in range(0, len(rows), 40):  # rows split mid-line, a pause between
            sock.sendall(rows[start:start + 40])
            time.sleep(0.05)
        answer = b""
        while not answer.endswith(b"}"):
            answer += sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 202 ")
    assert answer.endswith(b'{"successful_rows": 3, "quarantined_rows": 0}')
    assert len(wait_for_rows(gateway, f"SELECT id FROM events WHERE tag = '{tag}'", 3)) == 3


def test_lean_events_path_is_counted(gateway: GatewayProcess) -> None:
    def served() -> float:
        text = call(gateway, "GET", "/metrics", token=None).body.decode()
        line = next((line for line in text.splitlines() if line.startswith(
            'tinyingest_request_seconds_count{handler="EventsHandler",status="202"}')), None)
        return float(line.split()[-1]) if line else 0.0

    before = served()
    for i in range(3):
        assert post_events(gateway, ndjson([event(new_tag(), i)]), wait=False).status == 202
    assert served() == before + 3
    assert call(gateway, "GET", "/healthz", token=None).json()["requests_in_flight"] == 0


def test_lean_events_path_ends_with_a_client_gone_mid_body(gateway: GatewayProcess) -> None:
    import socket
    import time
    from urllib.parse import urlsplit

    rows = ndjson(event(new_tag(), i) for i in range(4))
    parts = urlsplit(gateway.url)
    assert parts.hostname is not None and parts.port is not None
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(b"POST /v0/events?name=events HTTP/1.1\r\nHost: x\r\n"
                     b"Authorization: Bearer " + gateway.token.encode() + b"\r\n"
                     b"Content-Length: %d\r\n\r\n" % (len(rows) + 100) + rows)
    # Not in flight any more (a drain would otherwise wait for it), and nothing broken.
    deadline = time.monotonic() + 10
    while call(gateway, "GET", "/healthz", token=None).json()["requests_in_flight"]:
        assert time.monotonic() < deadline, "the request stayed in flight"
        time.sleep(0.05)
    assert post_events(gateway, rows, wait=False).status == 202
