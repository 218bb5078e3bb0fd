"""The quarantine path never raises (issue 19, finding 1).

A bad row is anything at all: nested thousands deep, lone surrogate escapes, invalid
UTF-8, megabytes long, broken halfway. Each becomes one quarantine row with its reason,
its raw bytes as received (truncated past ``MAX_RAW_BYTES`` with a marker) and, as far as
the row can be read, each column's text; ClickHouse stores them on both backends; and a
request mixing them with good rows is answered 200 with the right counts, whatever its
chunk split. Before the fix, the quarantine re-decoded the row with ``json.loads``
(``RecursionError``) and handed lone surrogates to the driver (``UnicodeEncodeError``).
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from types import ModuleType

import pytest

from gatewayclient import call, sql
from parsers import implementation
from tinyingest import ddl
from tinyingest.datafiles import DataSource, parse_schema
from tinyingest.native import decode_rows
from tinyingest.quarantine import (
    MAX_RAW_BYTES,
    quarantine_rows,
    raw_json_values,
    truncation_marker,
)
from tinyingest.sinks import Sink
from tinyingest.testing import GatewayProcess

DATASOURCE = DataSource("q", "", parse_schema("""
    `id` UInt64 `json:$.id`,
    `tag` String `json:$.tag`,
    `doc` String `json:$.doc`,
    `first` Nullable(String) `json:$.a.b[1]`,
    `n` Int8 `json:$.n`"""))
COLUMNS = [c for c in DATASOURCE.columns if c.path is not None]

DEEP = b"[" * 5000 + b"]" * 5000
#: Each line is bad; together they broke the quarantine of main before the fix.
BAD_LINES = [
    b'{"id":1,"tag":"deep","doc":' + DEEP + b'}',
    b"[" * 3000,
    b'{"id":2,"tag":"\\ud800"}',
    b'{"id":"\\udfaa","tag":"x"}',
    b'{"tag":"\\udfaa\\ud800","n":300}',
    b'{"id":3,"tag":"\xff\xfe bad utf-8"}',
    b'{"id":4,"tag":"cut", "doc": {"a": [1, ',
    b'{"id":"5' + b"y" * (MAX_RAW_BYTES * 2) + b'"}',
    b'\x00\x01\x02',
    b'{"tag":"' + b"\\" * 7 + b'"',
]


@pytest.fixture(params=["py", "c"])
def parser_module(request: pytest.FixtureRequest) -> ModuleType:
    return implementation(request.param)


def _parse(module: ModuleType, body: bytes, chunk: int = 0) -> object:
    parser = module.NDJSONParser(COLUMNS, max_row_bytes=4 << 20)
    pieces = [body[i:i + chunk] for i in range(0, len(body), chunk)] if chunk else [body]
    for piece in pieces:
        parser.feed(piece)
    parser.finish()
    return parser.take_block()


@pytest.mark.parametrize("chunk", [0, 1, 7])
def test_every_bad_line_becomes_a_quarantine_row(parser_module: ModuleType, chunk: int) -> None:
    block = _parse(parser_module, b"\n".join(BAD_LINES) + b"\n", chunk)
    assert block.num_rows == 0  # type: ignore[attr-defined]
    errors = block.errors  # type: ignore[attr-defined]
    assert len(errors) == len(BAD_LINES)
    encoded = quarantine_rows(DATASOURCE, COLUMNS, errors, csv_delimiter=None, import_id="i",
                              max_row_bytes=4 << 20)
    rows = decode_rows(encoded)
    assert len(rows) == len(BAD_LINES)
    names = list(encoded.names)
    for row, line in zip(rows, BAD_LINES):
        record = dict(zip(names, row))
        raw = record["c__raw"]
        raw = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogateescape")
        if len(line) <= MAX_RAW_BYTES:
            assert raw == line
        else:
            assert raw == line[:MAX_RAW_BYTES] + truncation_marker(len(line))
        for reason in record["c__error"]:
            reason.encode("utf-8")  # valid UTF-8, always (raises if not)


def test_column_texts_are_found_without_decoding_the_row() -> None:
    paths = [c.path for c in COLUMNS]
    assert raw_json_values(b'{"id": 7, "tag": "a\\"b", "doc": {"x": [1, 2]}, '
                           b'"a": {"b": ["p", "q"]}, "n": null}', paths) == \
        [b"7", b'a"b', b'{"x": [1, 2]}', b"q", None]
    # Deep nesting costs no recursion; a lone surrogate becomes U+FFFD (valid UTF-8).
    assert raw_json_values(b'{"doc":' + DEEP + b',"tag":"\\ud800x"}', paths) == \
        [None, "\ufffdx".encode(), DEEP, None, None]
    # A row broken halfway keeps the members before the break.
    assert raw_json_values(b'{"tag": "kept", "id": 4, "doc": [1, {', paths) == \
        [b"4", b"kept", None, None, None]
    assert raw_json_values(b"[1, 2]", paths) == [None] * 5
    assert raw_json_values(b"", paths) == [None] * 5
    assert raw_json_values(b'{"a": {"b": ["only one"]}}', paths)[3] is None
    long_value = b"z" * (MAX_RAW_BYTES + 10)
    assert raw_json_values(b'{"doc": "' + long_value + b'"}', paths)[2] == \
        long_value[:MAX_RAW_BYTES] + truncation_marker(len(long_value))


def test_quarantine_rows_are_stored_by_clickhouse(sink: Sink, parser_module: ModuleType) -> None:
    datasource = dataclasses.replace(DATASOURCE, name=f"q{uuid.uuid4().hex[:8]}")
    sink.execute(ddl.create_quarantine_sql(datasource, sink.database))
    block = _parse(parser_module, b"\n".join(BAD_LINES) + b"\n")
    sink.insert(datasource.quarantine_name, quarantine_rows(
        datasource, COLUMNS, block.errors, csv_delimiter=None,  # type: ignore[attr-defined]
        import_id="", max_row_bytes=4 << 20))
    result = sink.query(f"SELECT count(), countIf(length(c__error) = 1), max(length(c__raw)) "
                        f"FROM {datasource.quarantine_name}")
    longest = max(len(line) for line in BAD_LINES)
    assert result.rows == [(len(BAD_LINES), len(BAD_LINES),
                            MAX_RAW_BYTES + len(truncation_marker(longest)))]


# -- through HTTP, on both backends --------------------------------------------------------


def _events_body(tag: str) -> tuple[bytes, int]:
    """Good rows of the tests' ``events`` data source with every bad line between them."""
    good = [{"id": i, "tag": tag, "ts": "2024-01-02 03:04:05", "day": "2024-01-02",
             "n": {"i8": 1, "i16": 1, "i32": 1, "i64": 1, "u8": 1, "u16": 1, "u32": 1},
             "f32": 1, "f64": 1, "name": "x", "doc": {}, "labels": []} for i in range(len(BAD_LINES))]
    lines: list[bytes] = []
    for row, bad in zip(good, BAD_LINES):
        lines.append(json.dumps(row).encode())
        # The bad line names the tag, so its quarantine row can be found.
        lines.append(bad.replace(b'"tag":"', f'"tag":"{tag}'.encode(), 1)
                     if b'"tag":"' in bad else bad)
    return b"\n".join(lines) + b"\n", len(good)


@pytest.mark.parametrize("chunk", [0, 1, 7])
def test_bad_lines_mixed_with_good_ones_are_answered_200(gateway: GatewayProcess,
                                                         chunk: int) -> None:
    tag = uuid.uuid4().hex[:12]
    body, good = _events_body(tag)
    if chunk == 1:  # one byte per chunk, but not for the two long lines (minutes of chunks)
        pieces = [body[i:i + 1] for i in range(0, 2000)] + [body[2000:]]
    elif chunk:
        pieces = [body[i:i + chunk] for i in range(0, len(body), chunk)]
    response = call(gateway, "POST", "/v0/events", params={"name": "events", "wait": "true"},
                    body=body if not chunk else iter(pieces))
    assert response.status == 200, response.body
    assert response.json() == {"successful_rows": good, "quarantined_rows": len(BAD_LINES)}
    assert sql(gateway, f"SELECT count() AS n FROM events WHERE tag = '{tag}'")[0]["n"] == good
    tagged = sum(1 for line in BAD_LINES if b'"tag":"' in line)
    stored = sql(gateway, "SELECT count() AS n FROM events_quarantine "
                          f"WHERE position(c__raw, '{tag}') > 0")
    assert stored[0]["n"] == tagged
    assert call(gateway, "GET", "/healthz").status == 200
