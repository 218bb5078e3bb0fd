"""The HTTP ingest path fuzzed end to end (issue 19): no input is answered 5xx.

Hypothesis makes bodies that mix good rows with trouble: rows with values at the edges of
the column types, every JSONTestSuite document, mutated rows, random bytes and JSON
tokens, CSV records with odd quoting and field counts; a byte-order mark now and then, a
missing last newline, gzip now and then. Each body goes as a chunked request cut at
random offsets (Tornado hands each chunk to the parser as it arrives) to four gateways:
{ClickHouse server, embedded} x {compiled parser, pure-Python parser}.

For every request: the answer is 200 (never a 5xx), ``successful_rows +
quarantined_rows`` is the number of non-blank lines sent (NDJSON), and both counts are what
the reference parser makes of the same bytes in this process: so the compiled parser in
the gateway agrees with the Python one. After a gateway's run its tables hold exactly the
rows it answered for and ``/healthz`` is ok. The number of inputs tried is printed in the
session summary.

``TINYINGEST_FUZZ_EXAMPLES`` sets the examples per gateway and format (default 100);
``-m soak`` runs 1,000.
"""

from __future__ import annotations

import collections
import gzip
import os
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import FUZZ_REPORT, PROJECT_DIR, start_gateway
from gatewayclient import call, sql
from jsontestsuite import load as load_json_test_suite
from parsers import implementation, make_parser
from test_parse_differential import (
    DATE_TEXTS,
    NUMBER_TEXTS,
    Raw,
    _text,
    _values,
    chunked,
    csv_field,
    dump,
    mutated,
    ndjson_lines,
)
from tinyingest.datafiles import load_project
from tinyingest.quarantine import quarantine_rows
from tinyingest.testing import GatewayProcess

EXAMPLES = int(os.environ.get("TINYINGEST_FUZZ_EXAMPLES", "100"))
SOAK_EXAMPLES = 1000
MAX_ROW_BYTES = 1 << 20  # the gateway's default, which the reference parser uses too

PROJECT = load_project(PROJECT_DIR)
EVENTS = PROJECT.datasources["events"]
TABLE = PROJECT.datasources["table"]
# What the gateway's parsers fill (gateway.Gateway._table): no computed columns, and for
# NDJSON only columns with a path.
EVENTS_COLUMNS = [c for c in EVENTS.columns if c.path is not None
                  and c.default_kind not in ("MATERIALIZED", "ALIAS")]
TABLE_COLUMNS = [c for c in TABLE.columns if c.default_kind not in ("MATERIALIZED", "ALIAS")]
PY = implementation("py")

GATEWAYS = [("clickhouse", "c"), ("clickhouse", "py"), ("embedded", "c"), ("embedded", "py")]
PARSER_ENV = {"c": {"TINYINGEST_REQUIRE_EXTENSIONS": "1"},
              # make exports REQUIRE=1, which would refuse the pure-Python parsers
              "py": {"TINYINGEST_NO_EXTENSIONS": "1", "TINYINGEST_REQUIRE_EXTENSIONS": "0"}}


class Fuzzed:
    """A gateway under fuzz and what it answered for, to check its tables against."""

    def __init__(self, process: GatewayProcess, name: str) -> None:
        self.process = process
        self.name = name
        self.answered: collections.Counter[str] = collections.Counter()
        self.statuses: collections.Counter[int] = collections.Counter()


@pytest.fixture(scope="module", params=GATEWAYS, ids=[f"{b}-{p}" for b, p in GATEWAYS])
def fuzzed(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    backend, parser_name = request.param
    server = request.getfixturevalue("clickhouse_server") if backend == "clickhouse" else None
    process = start_gateway(backend, tmp_path_factory.mktemp("fuzz"), PARSER_ENV[parser_name],
                            server=server)
    gateway = Fuzzed(process, f"{backend}/{parser_name}")
    try:
        yield gateway
        # Every row answered for is stored, in its table or its quarantine, and no other.
        for table in ("events", "events_quarantine", "table", "table_quarantine"):
            rows = sql(process, f"SELECT count() AS n FROM {table}")
            assert int(rows[0]["n"]) == gateway.answered[table], (gateway.name, table)
        assert call(process, "GET", "/healthz", token=None).status == 200
    finally:
        code = process.stop()
    assert code == 0, process.log_tail()
    assert "Traceback" not in process.log_tail(100_000), process.log_tail()


# -- bodies ----------------------------------------------------------------------------------

_numbers = st.sampled_from(NUMBER_TEXTS).map(Raw) | st.sampled_from(NUMBER_TEXTS)
_deep = st.integers(1, 200).map(lambda depth: Raw("[" * depth + "]" * depth))
_edge_values = st.one_of(st.none(), st.booleans(), _numbers, st.sampled_from(DATE_TEXTS), _text,
                         _values, _deep)
# Each events column's path, with values that fit it and values at or past its edges.
_EVENTS_FIELDS: dict[tuple[str, ...], st.SearchStrategy[Any]] = {
    ("id",): st.integers(0, 2**64 - 1) | _edge_values,
    ("tag",): st.just("fuzz") | _edge_values,
    ("ts",): st.sampled_from(DATE_TEXTS) | _edge_values,
    ("day",): st.sampled_from(DATE_TEXTS) | _edge_values,
    **{("n", name): _numbers | _edge_values
       for name in ("i8", "i16", "i32", "i64", "u8", "u16", "u32")},
    ("f32",): st.floats() .map(lambda f: Raw(repr(f))) | _edge_values,
    ("f64",): _numbers | _edge_values,
    ("name",): _text | _edge_values,
    ("opt",): st.none() | _edge_values,
    ("optn",): st.none() | _edge_values,
    ("lcn",): st.none() | _edge_values,
    ("note",): _edge_values,
    ("doc",): _values | _deep,
    ("labels",): st.lists(_text | _edge_values, max_size=4) | _edge_values,
}


_LOOKALIKE_KEYS = ["i", "idd", "ta", "tagz", "nam", "namx", "opt_", "optnn", "labelz", "labe",
                   "doc ", "Tag", "day\u0000", "f3", "f644"]


@st.composite
def good_event(draw: st.DrawFn) -> bytes:
    row = {"id": draw(st.integers(0, 2**32)), "tag": "fuzz", "n": {"i8": draw(st.integers(-128, 127))},
           "day": "2026-12-04", "labels": draw(st.lists(st.sampled_from(["a", "b"]), max_size=2))}
    return dump(tuple((k, tuple(v.items()) if isinstance(v, dict) else v)
                      for k, v in row.items()), False, "").encode()


@st.composite
def edge_event(draw: st.DrawFn) -> bytes:
    """An events-shaped object whose values are drawn at and past the types' edges."""
    root: dict[str, Any] = {}
    for path, values in _EVENTS_FIELDS.items():
        if draw(st.integers(0, 2)) == 0:
            continue
        node = root
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = draw(values)
    # Unknown keys that look like known ones: only an exact key fills its column.
    for key in draw(st.lists(st.sampled_from(_LOOKALIKE_KEYS), max_size=3)):
        root[key] = draw(_edge_values)

    def pairs(value: Any) -> Any:
        return tuple((k, pairs(v)) for k, v in value.items()) if isinstance(value, dict) else value
    text = dump(pairs(root), draw(st.booleans()), draw(st.sampled_from(["", " "])))
    return text.encode("utf-8", "surrogatepass")


_SUITE = load_json_test_suite()
_suite_documents = st.sampled_from(sorted(_SUITE.values()))

ndjson_line = st.one_of(good_event(), good_event(), edge_event(), edge_event().flatmap(mutated),
                        good_event().flatmap(mutated), _suite_documents, ndjson_lines())


@st.composite
def csv_record(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.binary(max_size=24))
    if kind < 4:
        good = b'fuzz,%d,"b, %d",1.5,2026-12-04' % (draw(st.integers(-2**31, 2**31 - 1)),
                                                    draw(st.integers(0, 9)))
        return draw(mutated(good)) if kind == 3 else good
    count = len(TABLE_COLUMNS) if kind > 6 else draw(st.integers(0, len(TABLE_COLUMNS) + 2))
    fields = [draw(csv_field(b",") | st.sampled_from(NUMBER_TEXTS + DATE_TEXTS).map(str.encode))
              for _ in range(count)]
    return b",".join(fields)


@st.composite
def body_of(draw: st.DrawFn, lines: st.SearchStrategy[bytes]) -> bytes:
    parts = draw(st.lists(lines, max_size=12))
    body = b"".join(part + draw(st.sampled_from([b"\n", b"\r\n"])) for part in parts)
    if body and draw(st.booleans()):
        body = body.rstrip(b"\r\n")  # no newline after the last row
    if draw(st.integers(0, 7)) == 0:
        body = b"\xef\xbb\xbf" + body
    return body


@st.composite
def splits(draw: st.DrawFn, body: bytes) -> list[bytes]:
    """The body's chunks: random cuts, or every 1 or 7 bytes."""
    size = draw(st.sampled_from([0, 0, 0, 1, 7]))
    if size:
        return [body[i:i + size] for i in range(0, len(body), size)]
    return draw(chunked(body))


# -- one request -----------------------------------------------------------------------------

def blank_lines_skipped(body: bytes) -> int:
    """The rows an NDJSON body holds: its lines, except a leading BOM and blank lines."""
    if body.startswith(b"\xef\xbb\xbf"):
        body = body[3:]
    return sum(1 for line in body.split(b"\n") if line.strip(b" \t\r"))


def reference(fmt: str, body: bytes) -> tuple[int, int]:
    """(rows stored, rows quarantined) by the pure-Python parser, in this process; the
    quarantine rows are built too (they must never raise)."""
    columns = EVENTS_COLUMNS if fmt == "ndjson" else TABLE_COLUMNS
    parser = make_parser(PY, fmt, columns, max_row_bytes=MAX_ROW_BYTES)
    parser.feed(body)
    parser.finish()
    block = parser.take_block()
    quarantine_rows(EVENTS if fmt == "ndjson" else TABLE, columns, block.errors,
                    csv_delimiter=b"," if fmt == "csv" else None, import_id="",
                    max_row_bytes=MAX_ROW_BYTES)
    return block.num_rows, len(block.errors)


def send(gateway: Fuzzed, fmt: str, body: bytes, chunks: list[bytes],
         compress: bool) -> tuple[int, int]:
    """POST ``body`` in ``chunks``; checks the answer; (successful, quarantined) rows."""
    headers = {}
    if compress:
        chunks = [gzip.compress(body)]
        headers["Content-Encoding"] = "gzip"
    if fmt == "ndjson":
        path, params, table = "/v0/events", {"name": "events", "wait": "true"}, "events"
    else:
        path, params, table = "/v0/datasources", {"name": "table", "mode": "append",
                                                  "format": "csv"}, "table"
    response = call(gateway.process, "POST", path, params=params, body=iter(chunks),
                    headers=headers)
    gateway.statuses[response.status] += 1
    FUZZ_REPORT["inputs"] += 1
    FUZZ_REPORT[f"status {response.status}"] += 1
    if response.status >= 500:
        FUZZ_REPORT["5xx"] += 1
    assert response.status == 200, (gateway.name, body, response.body)
    answer = response.json()
    counts = (answer["successful_rows"], answer["quarantined_rows"])
    gateway.answered[table] += counts[0]
    gateway.answered[f"{table}_quarantine"] += counts[1]
    expected = reference(fmt, body)
    if counts != expected:
        FUZZ_REPORT["parser disagreements"] += 1
    assert counts == expected, (gateway.name, body)
    if fmt == "ndjson":
        if sum(counts) != blank_lines_skipped(body):
            FUZZ_REPORT["count mismatches"] += 1
        assert sum(counts) == blank_lines_skipped(body), (gateway.name, body)
    return counts


def _fuzz(gateway: Fuzzed, fmt: str, examples: int) -> None:
    lines = ndjson_line if fmt == "ndjson" else csv_record()

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.function_scoped_fixture])
    @given(data=st.data())
    def one(data: st.DataObject) -> None:
        body = data.draw(body_of(lines))
        send(gateway, fmt, body, data.draw(splits(body)), data.draw(st.integers(0, 7)) == 0)

    one()


# -- tests -----------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
def test_fuzzed_bodies_are_answered_and_counted(fuzzed: Fuzzed, fmt: str) -> None:
    _fuzz(fuzzed, fmt, EXAMPLES)


@pytest.mark.soak
@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
def test_fuzzed_bodies_soak(fuzzed: Fuzzed, fmt: str) -> None:
    _fuzz(fuzzed, fmt, SOAK_EXAMPLES)


def test_every_json_test_suite_document_between_good_rows(fuzzed: Fuzzed) -> None:
    """All 318 documents (y_, n_, i_), each between two good rows, 40 to a body, in
    7-byte chunks: the good rows are stored whatever the document does."""
    # Every column without Nullable or DEFAULT has a value: a row missing one is
    # quarantined, as Tinybird does.
    good = (b'{"id": 1, "tag": "fuzz", "ts": 0, "day": 0, "f32": 0, "f64": 0, "name": "",'
            b' "doc": "", "n": {"i8": 0, "i16": 0, "i32": 0, "i64": 0, "u8": 0, "u16": 0,'
            b' "u32": 0}}\n')
    names = sorted(_SUITE)
    for start in range(0, len(names), 40):
        documents = names[start:start + 40]
        body = good + b"".join(_SUITE[name] + b"\n" + good for name in documents)
        stored, _ = send(fuzzed, "ndjson", body,
                         [body[i:i + 7] for i in range(0, len(body), 7)], False)
        assert stored >= len(documents) + 1
    FUZZ_REPORT["JSONTestSuite documents"] += len(names)
