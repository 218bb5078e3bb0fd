"""Map(String, V) columns in both parsers: NDJSON objects and CSV ``{'k':v}`` literals.

Every body runs whole, one byte at a time and split at every offset, on both
implementations. Native layout: Array(Tuple(String, V)). ClickHouse 18.16 has no Map
type, so the server round trip stores on chDB only (and checks that 18.16 refuses it).
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parsers import implementation, parser_module, run_nested, splits
from tinyingest.block import Block
from tinyingest.errors import ErrorCode
from tinyingest.native import (decode_rows, encode_block, merge_blocks, strings_end,
                               strings_end_py)
from tinyingest.schema import ColumnSpec, SchemaError, parse_type
from tinyingest.sinks import Sink, SinkError

__all__ = ["parser_module"]  # the fixture, imported for pytest

PY = implementation("py")
C = implementation("c")
BAD = int(ErrorCode.BAD_VALUE)
RANGE = int(ErrorCode.OUT_OF_RANGE)
NULL = int(ErrorCode.NULL)


def col(ch_type: str, name: str = "v", jsonpath: str | None = None) -> ColumnSpec:
    return ColumnSpec.build(name, ch_type, jsonpath or f"$.{name}")


def run(module: ModuleType, fmt: str, columns: Sequence[ColumnSpec], chunks: Sequence[bytes],
        **options: Any) -> tuple[int, Block]:
    return run_nested(module, fmt, columns, chunks, **options)


def both(fmt: str, columns: Sequence[ColumnSpec], body: bytes, **options: Any) -> tuple[
        list[tuple[Any, ...]], list[tuple[int, int, bytes]]]:
    """Whole and split everywhere, both implementations: one block; its rows and errors."""
    py = run(PY, fmt, columns, [body], **options)
    for module in (PY, C):
        for how, chunks in splits(body):
            assert run(module, fmt, columns, chunks, **options) == py, how
    rows = decode_rows(encode_block(columns, py[1])) if py[1].num_rows else []
    return rows, [(e.column, e.code, e.value) for e in py[1].errors]


def lines(*rows: object) -> bytes:
    return b"".join((r if isinstance(r, str) else json.dumps(r)).encode() + b"\n" for r in rows)


def test_map_types() -> None:
    parsed = parse_type("Map(String, Nullable(Int32))")
    assert (parsed.type_code.name, parsed.nullable, parsed.is_map, parsed.array_depth) == \
        ("INT32", True, True, 1)
    assert parse_type("Map(String,Enum8('a' = 1, 'b' = 2))").enum_values == ((b"a", 1), (b"b", 2))
    for bad in ["Map(Int32, String)", "Map(String, Array(Int8))", "Map(String, Map(String, Int8))",
                "Map(String, LowCardinality(String))", "Array(Map(String, Int8))", "Map(String)"]:
        with pytest.raises(SchemaError):
            parse_type(bad)
    with pytest.raises(SchemaError, match=r"\[:\] needs an Array"):
        col("Map(String, Int8)", jsonpath="$.m[:]")


def test_map_column_refuses_a_default(parser_module: ModuleType) -> None:
    spec = ColumnSpec.build("v", "Map(String, Int8)", "$.v", "DEFAULT", "1")
    for cls in (parser_module.NDJSONParser, parser_module.CSVParser):
        with pytest.raises(SchemaError, match="DEFAULT 1 of column 'v'"):
            cls([spec])


def test_ndjson_maps() -> None:
    columns = [col("Map(String, Int32)", "i"), col("Map(String, Nullable(String))", "s"),
               col("Map(String, Float64)", "f"),
               ColumnSpec.build("k", "String", "$.i.a", "DEFAULT", "''")]
    body = lines(
        {"i": {"a": 1, "b": -2}, "s": {"x": "y", "n": None, "o": {"k": [1, 2]}, "l": []},
         "f": {"": 1.5}},
        {"i": {}, "s": None},
        {},
        ' { "i" : { "a\\n" : "7" , "b" : 8 } , "s" : { "é" : "\\u00e9" } } ',
        '{"i": {"d": 1, "d": 2}}',  # duplicate keys are kept, in order
    )
    stored, errs = both("ndjson", columns, body)
    assert errs == []
    assert stored == [
        ({"a": 1, "b": -2}, {"x": "y", "n": None, "o": '{"k":[1,2]}', "l": "[]"}, {"": 1.5}, "1"),
        ({}, {}, {}, ""), ({}, {}, {}, ""),
        ({"a\n": 7, "b": 8}, {"é": "é"}, {}, ""),
        ({"d": 2}, {}, {}, ""),  # (the driver reads into a dict: the last wins)
    ]
    # The duplicate keys are both in the data: 2 entries.
    _, block = run(C, "ndjson", columns[:1], [b'{"i": {"d": 1, "d": 2}}\n'])
    assert list(array("Q", block.columns[0].offsets or b"")) == [2]


def test_ndjson_bad_values(parser_module: ModuleType) -> None:
    columns = [col("Int8", "k"), col("Map(String, UInt8)", "m")]
    body = lines({"k": 1, "m": {"a": 1}}, {"k": 2, "m": {"a": 1, "b": 256}}, {"k": 3, "m": {"a": "x"}},
                 {"k": 4, "m": {"a": None}}, {"k": 5, "m": [1]}, {"k": 6, "m": "{}"},
                 {"k": 7, "m": 3}, {"k": 8, "m": {"a": [1]}}, '{"k": 9, "m": {"a": "\\u00e9"}}',
                 {"k": 10, "m": {"z": 0}})
    _, block = run(parser_module, "ndjson", columns, [body])
    assert [(e.column, e.code, e.value) for e in block.errors] == [
        (1, RANGE, b"256"), (1, BAD, b"x"), (1, NULL, b"null"), (1, BAD, b"[1]"), (1, BAD, b"{}"),
        (1, BAD, b"3"), (1, BAD, b"[1]"), (1, BAD, "é".encode())]
    assert decode_rows(encode_block(columns, block)) == [(1, {"a": 1}), (10, {"z": 0})]


def test_csv_maps() -> None:
    columns = [col("UInt8", "k"), col("Map(String, Nullable(Int32))", "m"),
               col("Map(String, String)", "s")]
    # As chDB 26.9 writes map('a', 1, 'b''', 2): "{'a':1,'b\'':2}".
    body = (b"1,\"{'a':1,'b\\'':NULL}\",{}\n"
            b"2,,\\N\n"
            b"3,\"{ 'x' : 7 , 'y' : -1 }\",\"{'q':'a,b','r':'\\n','':''}\"\n"
            b"4,\"{'a':1,}\",{}\n"  # syntax: the whole field
            b"5,{NULL:1},{}\n"
            b"6,{'a':x},{}\n"
            b"7,\"[1,2]\",{}\n"
            b"8,{[1]:1},{}\n"
            b"9,{'\\xff':1},{}\n"
            b"10,{'a':[1]},{}\n"
            b"11,{'a' 1},{}\n")
    stored, errs = both("csv", columns, body)
    assert stored == [(1, {"a": 1, "b'": None}, {}), (2, {}, {}),
                      (3, {"x": 7, "y": -1}, {"q": "a,b", "r": "\n", "": ""})]
    assert errs == [(1, BAD, b"{'a':1,}"), (1, NULL, b"NULL"), (1, BAD, b"x"), (1, BAD, b"[1,2]"),
                    (1, BAD, b"[1]"), (1, int(ErrorCode.INVALID_UTF8), b"\xff"),
                    (1, BAD, b"[1]"), (1, BAD, b"{'a' 1}")]


# -- the implementations agree ---------------------------------------------------------------

VALUES: dict[str, list[Any]] = {
    "Int16": [0, -5, "7", 70000, "x", None, [1], True],
    "Nullable(String)": ["a", "", None, "é", 1.5, {"k": 1}, "\\"],
    "Nullable(Decimal(5, 2))": [None, "1.25", 3, "1.234"],
    "Date": ["2024-01-02", 19000, "nope"],
}
KEYS = st.sampled_from(["a", "b", "", "é", "a\nb", "\ud800", "'", "\\"])


def _json_map(value_type: str) -> st.SearchStrategy[Any]:
    entries = st.lists(st.tuples(KEYS, st.sampled_from(VALUES[value_type])), max_size=4)
    return st.one_of(entries, entries, entries, st.none(), st.sampled_from([1, "x", [1], []]))


@settings(deadline=None, max_examples=200, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(types=st.lists(st.sampled_from(sorted(VALUES)), min_size=1, max_size=3), data=st.data(),
       cut=st.integers(0, 1000), ascii_only=st.booleans())
def test_ndjson_implementations_agree(types: list[str], data: st.DataObject, cut: int,
                                      ascii_only: bool) -> None:
    columns = [col(f"Map(String, {t})", f"c{i}") for i, t in enumerate(types)]
    rows = []
    for _ in range(data.draw(st.integers(0, 5))):
        parts = []
        for i, t in enumerate(types):
            value = data.draw(_json_map(t))
            if isinstance(value, list) and (not value or isinstance(value[0], tuple)):
                text = "{" + ",".join(json.dumps(k, ensure_ascii=ascii_only) + ":"
                                      + json.dumps(v, ensure_ascii=ascii_only)
                                      for k, v in value) + "}"
            else:
                text = json.dumps(value)
            parts.append(f'"c{i}":{text}')
        rows.append(("{" + ",".join(parts) + "}").encode("utf-8", "surrogatepass") + b"\n")
    body = b"".join(rows)
    cut = cut % (len(body) + 1)
    py = run(PY, "ndjson", columns, [body])
    assert run(C, "ndjson", columns, [body]) == py
    assert run(C, "ndjson", columns, [body[:cut], body[cut:]]) == py
    if py[1].num_rows:
        decode_rows(encode_block(columns, py[1]))


CSV_ITEMS = ["'a'", "''", "'b\\'c'", "'\\xff'", "NULL", "1", "-2", "'3'", "x", "[1]", "{}",
             "'2024-01-02'", "1.25", "'é'"]
CSV_NOISE = ["", " ", ",", ":", "{", "}", "'", "\\", "[", "NULL"]


@settings(deadline=None, max_examples=200, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(types=st.lists(st.sampled_from(sorted(VALUES)), min_size=1, max_size=2), data=st.data(),
       cut=st.integers(0, 1000))
def test_csv_implementations_agree(types: list[str], data: st.DataObject, cut: int) -> None:
    columns = [col(f"Map(String, {t})", f"c{i}") for i, t in enumerate(types)]
    rows = []
    for _ in range(data.draw(st.integers(0, 5))):
        fields = []
        for _ in types:
            pairs = data.draw(st.lists(st.tuples(st.sampled_from(CSV_ITEMS),
                                                 st.sampled_from(CSV_ITEMS)), max_size=3))
            gap = data.draw(st.sampled_from(["", " "]))
            text = "{" + ",".join(f"{k}{gap}:{gap}{v}" for k, v in pairs) + "}"
            if data.draw(st.integers(0, 3)) == 0:
                at = data.draw(st.integers(0, len(text)))
                text = text[:at] + data.draw(st.sampled_from(CSV_NOISE)) + text[at + 1 :]
            fields.append(b'"' + text.encode().replace(b'"', b'""') + b'"')
        rows.append(b",".join(fields) + b"\n")
    body = b"".join(rows)
    cut = cut % (len(body) + 1)
    py = run(PY, "csv", columns, [body], header=False)
    assert run(C, "csv", columns, [body], header=False) == py
    assert run(C, "csv", columns, [body[:cut], body[cut:]], header=False) == py
    if py[1].num_rows:
        decode_rows(encode_block(columns, py[1]))


def test_strings_end() -> None:
    data = b"\x02ab\x00" + b"\x81\x01" + b"z" * 129 + b"tail"
    for function in (strings_end, strings_end_py):
        assert function(data, 0) == 0
        assert function(data, 2) == 4
        assert function(data, 3) == len(data) - 4
        with pytest.raises(ValueError):
            function(data, 5)
        with pytest.raises(ValueError):
            function(b"\x80", 1)


# -- merged blocks and chDB -------------------------------------------------------------------

SPECS = [col("UInt8", "k"), col("Map(String, Int32)", "i"),
         col("Map(String, Nullable(String))", "s"), col("Map(String, FixedString(2))", "f")]
FIRST = [{"k": 0, "i": {"a": 1, "b": 2}, "s": {"x": None, "y": "é"}, "f": {"p": "ab"}}, {"k": 1}]
SECOND = [{"k": 2, "i": {"c": -3}, "s": {"z" * 200: "w"}, "f": {}},
          {"k": 3, "i": {}, "s": {"n": None}, "f": {"q": "c"}}]
EXPECTED = [(0, {"a": 1, "b": 2}, {"x": None, "y": "é"}, {"p": "ab"}), (1, {}, {}, {}),
            (2, {"c": -3}, {"z" * 200: "w"}, {}), (3, {}, {"n": None}, {"q": "c"})]


def test_merged_blocks_equal_one_block(parser_module: ModuleType) -> None:
    blocks = [encode_block(SPECS, run(parser_module, "ndjson", SPECS, [lines(*rows)])[1])
              for rows in (FIRST, SECOND, [])]
    together = encode_block(SPECS, run(parser_module, "ndjson", SPECS,
                                       [lines(*FIRST, *SECOND)])[1])
    assert merge_blocks(SPECS, blocks) == together
    assert [row[:3] for row in decode_rows(together)] == [row[:3] for row in EXPECTED]
    import tinyingest.native as native_module

    saved = native_module.strings_end
    native_module.strings_end = strings_end_py
    try:
        assert merge_blocks(SPECS, blocks) == together
    finally:
        native_module.strings_end = saved


def test_round_trip_through_chdb(sink: Sink) -> None:
    """chDB stores merged Map blocks; ClickHouse 18.16 has no Map type (refused there)."""
    from tinyingest.sinks.embedded import EmbeddedSink

    body = ", ".join(f"{spec.name} {spec.ch_type}" for spec in SPECS)
    create = f"CREATE TABLE maps ({body}) ENGINE = MergeTree ORDER BY k"
    if not isinstance(sink, EmbeddedSink):
        with pytest.raises(SinkError, match="Map"):
            sink.execute(create)
        return
    sink.execute(create)
    blocks = [encode_block(SPECS, run(C, "ndjson", SPECS, [lines(*rows)])[1])
              for rows in (FIRST, SECOND)]
    sink.insert("maps", merge_blocks(SPECS, blocks))
    csv_block = run(C, "csv", SPECS, [b"4,\"{'a':1,'a':2}\",\"{'t':NULL}\",\"{'r':'xy'}\"\n"])[1]
    sink.insert("maps", encode_block(SPECS, csv_block))
    result = sink.query("SELECT k, mapKeys(i), mapValues(i), mapKeys(s), mapValues(s), "
                        "mapKeys(f), arrayMap(x -> hex(x), mapValues(f)) FROM maps ORDER BY k")
    expected = [(k, list(i), list(i.values()), list(s), list(s.values()), list(f),
                 [v.ljust(2, "\0").encode().hex().upper() for v in f.values()])
                for k, i, s, f in EXPECTED]
    expected.append((4, ["a", "a"], [1, 2], ["t"], [None], ["r"], ["7879"]))
    assert [tuple(row) for row in result.rows] == expected
