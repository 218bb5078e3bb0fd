"""Array(T) columns and array jsonpaths ($.a[:], $.a[0]) in both parsers.

Every body runs whole, one byte at a time and split at every offset, on both
implementations; blocks are checked as ClickHouse Native data (decoded with
clickhouse-driver's readers), merged with ``native.merge_blocks`` and stored through
both real backends (ClickHouse 18.16 and chDB).
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Sequence
from decimal import Decimal
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parsers import encoders, implementation, parser_module, run_nested, splits
from tinyingest.block import Block
from tinyingest.errors import ErrorCode
from tinyingest.native import (decode_rows, encode_block, merge_blocks, shift_offsets,
                               shift_offsets_py)
from tinyingest.schema import ColumnSpec, SchemaError, parse_jsonpath, parse_type
from tinyingest.sinks import Sink

__all__ = ["parser_module"]  # the fixture, imported for pytest

PY = implementation("py")
C = implementation("c")
BAD = int(ErrorCode.BAD_VALUE)
RANGE = int(ErrorCode.OUT_OF_RANGE)
NULL = int(ErrorCode.NULL)

Result = tuple[int, Block]


def col(ch_type: str, jsonpath: str = "$.v", name: str = "v",
        default: str | None = None) -> ColumnSpec:
    return ColumnSpec.build(name, ch_type, jsonpath, "DEFAULT" if default else None, default)


def run(module: ModuleType, columns: Sequence[ColumnSpec], chunks: Sequence[bytes]) -> Result:
    return run_nested(module, "ndjson", columns, chunks)


def parse(module: ModuleType, columns: Sequence[ColumnSpec], body: bytes) -> Result:
    """``body`` whole, one byte at a time and split everywhere: all the same block."""
    whole = run(module, columns, [body])
    for how, chunks in splits(body):
        assert run(module, columns, chunks) == whole, how
    return whole


def values(columns: Sequence[ColumnSpec], block: Block) -> list[tuple[Any, ...]]:
    """The block's rows as Python values, read back from its Native encoding."""
    if block.num_rows == 0:
        return []
    return decode_rows(encode_block(columns, block))


def errors(block: Block) -> list[tuple[int, int, bytes]]:
    return [(e.column, e.code, e.value) for e in block.errors]


def both(columns: Sequence[ColumnSpec], body: bytes) -> tuple[list[tuple[Any, ...]],
                                                              list[tuple[int, int, bytes]]]:
    """Stored rows and errors; the two implementations must agree byte for byte.
    (clickhouse-driver reads FixedString without its NUL padding, Decimal as Decimal.)"""
    py = parse(PY, columns, body)
    c = parse(C, columns, body)
    assert py == c
    return values(columns, py[1]), errors(py[1])


def lines(*rows: object) -> bytes:
    return b"".join((r if isinstance(r, str) else json.dumps(r)).encode() + b"\n" for r in rows)


# -- schema ---------------------------------------------------------------------------------


def test_array_types_are_parsed() -> None:
    plain = parse_type("Array(Int32)")
    assert (plain.type_code.name, plain.array_depth, plain.nullable) == ("INT32", 1, False)
    nested = parse_type("Array(Array(Nullable(String)))")
    assert (nested.type_code.name, nested.array_depth, nested.nullable) == ("STRING", 2, True)
    fixed = parse_type("Array(FixedString(3))")
    assert (fixed.length, fixed.array_depth) == (3, 1)
    assert parse_type("Int32").array_depth == 0


@pytest.mark.parametrize("ch_type", ["Array(Array(Array(Int8)))",
                                     "Nullable(Array(Int8))", "Array()", "Array(Foo)"])
def test_unsupported_array_types_are_refused(ch_type: str) -> None:
    with pytest.raises(SchemaError):
        parse_type(ch_type)


def test_array_jsonpaths() -> None:
    assert parse_jsonpath("$.items[:]") == ("items",)
    assert parse_jsonpath("$.a[0]") == ("a", 0)
    assert parse_jsonpath("$.a[12].b['c d'][0]") == ("a", 12, "b", "c d", 0)
    assert col("Array(Array(Int8))", "$.a[:][:]").path == ("a",)
    for path in ["$.a[:].b", "$.a[:][0]", "$.a[-1]", "$.a[x]", "$.a[1234567890]"]:
        with pytest.raises(SchemaError):
            parse_jsonpath(path)
    with pytest.raises(SchemaError, match=r"\[:\] needs an Array column"):
        col("String", "$.a[:]")
    with pytest.raises(SchemaError):
        col("Array(Int8)", "$.a[:][:]")


def test_array_column_refusals(parser_module: ModuleType) -> None:
    # No literal DEFAULT for an Array column.
    spec = ColumnSpec.build("v", "Array(Int8)", "$.v", "DEFAULT", "1")
    with pytest.raises(SchemaError, match="DEFAULT 1 of column 'v'"):
        parser_module.NDJSONParser([spec])
    # An expression DEFAULT (not a literal) is left to ClickHouse: missing is [].
    parser_module.NDJSONParser([ColumnSpec.build("v", "Array(Int8)", "$.v", "DEFAULT", "[1]")])


# -- values ---------------------------------------------------------------------------------


def test_arrays_of_scalars() -> None:
    columns = [col("Array(Int32)", "$.i[:]", "i"), col("Array(String)", "$.s", "s"),
               col("Array(Nullable(Float64))", "$.f", "f"), col("Array(UInt8)", "$.b", "b"),
               col("Array(FixedString(2))", "$.x", "x"), col("Array(Decimal(9, 2))", "$.d", "d"),
               col("Array(Nullable(String))", "$.n", "n")]
    body = lines(
        {"i": [1, -2, 2147483647], "s": ["a", "", "é\n\"", "\u00e9"], "f": [1.5, None, 2e3],
         "b": [True, False, "7"], "x": ["ab", "c"], "d": ["1.25", -3], "n": [None, "z"]},
        {"i": [], "s": None, "f": []},
        {},
        ' { "i" : [ 1 , 2 ] , "s" : [ "x" , { "k" : [ 1, "]" ] } , [ ] ] } ',
        {"s": ["\\u0041", "tab\there"], "n": [None, None]},
    )
    stored, errs = both(columns, body)
    assert errs == []
    assert stored == [
        ([1, -2, 2147483647], ["a", "", "é\n\"", "é"], [1.5, None, 2000.0], [1, 0, 7],
         ["ab", "c"], [Decimal("1.25"), Decimal("-3")], [None, "z"]),
        ([], [], [], [], [], [], []),
        ([], [], [], [], [], [], []),
        ([1, 2], ["x", '{"k":[1,"]"]}', "[]"], [], [], [], [], []),
        ([], ["\\u0041", "tab\there"], [], [], [], [], [None, None]),
    ]


def test_plain_path_and_whole_array_selector_are_the_same() -> None:
    body = lines({"a": [1, 2]}, {"a": None}, {"b": 1}, {"a": [3]})
    assert parse(C, [col("Array(Int64)", "$.a")], body) == \
        parse(C, [col("Array(Int64)", "$.a[:]")], body)
    stored, _ = both([col("Array(Int64)", "$.a")], body)
    assert stored == [([1, 2],), ([],), ([],), ([3],)]


def test_nested_arrays() -> None:
    columns = [col("Array(Array(Int16))", "$.a", "a"),
               col("Array(Array(Nullable(String)))", "$.s[:][:]", "s")]
    body = lines({"a": [[1, 2], [], None, [3]], "s": [["x", None], [], [None]]},
                 {"a": [], "s": None},
                 {"a": [[-32768]], "s": [["\u00e9"]]})
    stored, errs = both(columns, body)
    assert errs == []
    assert stored == [([[1, 2], [], [], [3]], [["x", None], [], [None]]),
                      ([], []), ([[-32768]], [["é"]])]


def test_bad_elements_quarantine_the_row(parser_module: ModuleType) -> None:
    columns = [col("Int8", "$.k", "k"), col("Array(UInt8)", "$.a", "a"),
               col("Array(Array(Int8))", "$.n", "n")]
    body = lines(
        {"k": 1, "a": [1, 2]},
        {"k": 2, "a": [1, 256]},  # out of range: the elements before are undone too
        {"k": 3, "a": [1, "x"]},
        {"k": 4, "a": [1, None]},  # null element, not Nullable
        {"k": 5, "a": 7},  # not an array
        {"k": 6, "a": "[1]"},  # a string is not an array
        {"k": 7, "a": {"x": [1]}},
        {"k": 8, "a": [[1]]},  # a nested array is not a UInt8
        {"k": 9, "n": [[1], 2]},  # an inner item that is not an array
        {"k": 10, "n": [[1], [128]]},
        {"k": 11, "a": [1], "n": [["a\\n"]]},
        '{"k": 12, "a": [3, "\\u00e9"]}',
        {"k": 13, "a": [3], "n": [[4], None, []]},
    )
    _, block = parse(parser_module, columns, body)
    assert errors(block) == [
        (1, RANGE, b"256"), (1, BAD, b"x"), (1, NULL, b"null"), (1, BAD, b"7"),
        (1, BAD, b"[1]"), (1, BAD, b'{"x":[1]}'), (1, BAD, b"[1]"), (2, BAD, b"2"),
        (2, RANGE, b"128"), (2, BAD, b"a\\n"), (1, BAD, "é".encode()),
    ]
    assert values(columns, block) == [(1, [1, 2], []), (13, [3], [[4], [], []])]
    assert [e.line for e in block.errors][:2] == body.splitlines()[1:3]


def test_invalid_utf8_in_an_element(parser_module: ModuleType) -> None:
    columns = [col("Array(String)", "$.a", "a"), col("String", "$.a[1]", "one", "''")]
    _, block = parse(parser_module, columns,
                     b'{"a":["x","\\ud800"]}\n{"a":["\\ud800"]}\n{"a":["\xff"]}\n{"a":["ok"]}\n')
    # Found while scanning: an element a path reaches names its column.
    assert errors(block) == [(1, int(ErrorCode.INVALID_UTF8), b""),
                             (-1, int(ErrorCode.INVALID_UTF8), b""),
                             (-1, int(ErrorCode.INVALID_UTF8), b"")]
    assert values(columns, block) == [(["ok"], "")]


def test_element_paths() -> None:
    columns = [col("Int32", "$.a[0]", "first", "0"), col("Nullable(Int32)", "$.a[2]", "third"),
               col("Array(Int32)", "$.a", "all"), col("String", "$.o[1].name", "name", "''"),
               col("String", "$.o[0]", "obj", "''"), col("UInt8", "$.m[1][0]", "deep", "0")]
    body = lines(
        {"a": [10, 20, 30], "o": [{"name": "x"}, {"name": "y", "z": 1}], "m": [[1], [2, 3]]},
        {"a": [5], "o": {"1": {"name": "no"}}, "m": 4},
        {"a": None},
        {"a": {"0": 1}},  # not an array: "all" refuses it (element paths find nothing)
        {"o": [[], {"name": "é"}]},
    )
    stored, errs = both(columns, body)
    assert errs == [(2, BAD, b'{"0":1}')]
    assert stored == [
        (10, 30, [10, 20, 30], "y", '{"name":"x"}', 2),
        (5, None, [5], "", "", 0),
        (0, None, [], "", "", 0),
        (0, None, [], "é", "[]", 0),
    ]
    # An element converts like any value; a duplicate of the same element cannot occur.
    stored, errs = both([col("UInt8", "$.a[1]")], lines({"a": [1, 300]}, {"a": [1, "x"]}))
    assert stored == [] and errs == [(0, RANGE, b"300"), (0, BAD, b"x")]


def test_large_arrays_grow_the_buffers(parser_module: ModuleType) -> None:
    numbers = list(range(5000))
    words = [f"w{i}" * (i % 7) for i in range(3000)]
    columns = [col("Array(UInt32)", "$.n", "n"), col("Array(String)", "$.w", "w")]
    body = lines({"n": numbers, "w": words}, {"n": numbers[:3], "w": []})
    _, block = run(parser_module, columns, [body])
    assert values(columns, block) == [(numbers, words), (numbers[:3], [])]


# -- the implementations agree on arbitrary arrays ------------------------------------------

# Element type -> elements it takes (the draw mixes in arbitrary JSON, rarely).
ELEMENTS: dict[str, list[Any]] = {
    "Int8": [0, -128, 127, "5", True], "UInt16": [0, 65535, "12"], "Int64": [2**62, -1, "0"],
    "Float32": [1.5, -0.25, "3e2", 0], "String": ["a", "", "é", 7, {"k": [1]}, [], "\\"],
    "Nullable(String)": [None, "x", 1.5], "Nullable(Int32)": [None, 7, "-3"],
    "Bool": [True, False, 1, "0"], "Date": ["2024-01-02", 86400],
    "FixedString(2)": ["ab", "", "é"],
    "Decimal(5, 2)": [1.25, "-3", 0], "UUID": ["61f0c404-5cb3-11e7-907b-a6006ad3dba0"],
    "Enum8('a' = 1, 'b' = 2)": ["a", "b", 1], "IPv4": ["1.2.3.4", "0.0.0.0"],
}
ELEMENT_TYPES = [*ELEMENTS, "Array(Int8)", "Array(Nullable(String))"]

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-300, 70000), st.sampled_from([2**63, -(2**63) - 1]),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=4),
    st.sampled_from(["a", "b", "1.5", "2024-01-02", "1.2.3.4", "é", "\ud800",
                     "61f0c404-5cb3-11e7-907b-a6006ad3dba0"]),
)
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.sampled_from(["k", "0"]), inner, max_size=2),
                     max_leaves=12)


def _array_of(ch_type: str) -> st.SearchStrategy[Any]:
    """A column value for Array(ch_type): mostly fitting elements, sometimes anything."""
    inner = ch_type[len("Array(") : -1] if ch_type.startswith("Array(") else None
    element = _array_of(inner) if inner is not None else st.sampled_from(ELEMENTS[ch_type])
    fitting = st.lists(element | st.none() if inner is not None else element, max_size=4)
    return st.one_of(fitting, fitting, fitting, st.none(), st.lists(element | _json, max_size=4),
                     _json)


@settings(deadline=None, max_examples=200, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(types=st.lists(st.sampled_from(ELEMENT_TYPES), min_size=1, max_size=3), data=st.data(),
       index=st.integers(0, 2), cut=st.integers(0, 1000), ascii_only=st.booleans())
def test_implementations_agree(types: list[str], data: st.DataObject, index: int, cut: int,
                               ascii_only: bool) -> None:
    columns = [col(f"Array({t})", f"$.c{i}", f"c{i}") for i, t in enumerate(types)]
    columns.append(col("Nullable(String)", f"$.c0[{index}]", "element"))
    rows = [{f"c{i}": data.draw(_array_of(t)) for i, t in enumerate(types)
             if data.draw(st.integers(0, 5))} for _ in range(data.draw(st.integers(0, 6)))]
    # Not ASCII-only: raw UTF-8, and lone surrogates as invalid bytes.
    body = b"".join(json.dumps(row, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
                    + b"\n" for row in rows)
    cut = cut % (len(body) + 1)
    py = run(PY, columns, [body])
    assert run(C, columns, [body]) == py
    assert run(C, columns, [body[:cut], body[cut:]]) == py
    if py[1].num_rows:
        values(columns, py[1])  # valid Native


def test_shift_offsets() -> None:
    data = array("Q", [0, 1, 5, 2**40]).tobytes()
    assert shift_offsets(data, 7) == shift_offsets_py(data, 7) == \
        array("Q", [7, 8, 12, 2**40 + 7]).tobytes()
    assert shift_offsets(b"", 3) == shift_offsets_py(b"", 3) == b""
    assert encoders().shift_offsets(bytearray(data), 0) == data
    with pytest.raises(ValueError):
        encoders().shift_offsets(b"\0" * 7, 1)


# -- merged blocks and the servers ----------------------------------------------------------

MERGE_COLUMNS = [("k", "UInt8", "$.k"), ("i", "Array(Int32)", "$.i[:]"),
                 ("s", "Array(String)", "$.s"), ("n", "Array(Nullable(Int64))", "$.n"),
                 ("ns", "Array(Nullable(String))", "$.ns"),
                 ("aa", "Array(Array(UInt16))", "$.aa"),
                 ("an", "Array(Array(Nullable(String)))", "$.an"),
                 ("f", "Array(FixedString(2))", "$.f"), ("e", "Int32", "$.i[1]")]
FIRST = [{"k": 0, "i": [1, 2], "s": ["a", "bé"], "n": [None, 5], "ns": ["x", None],
          "aa": [[1], [], [2, 3]], "an": [[None, "p"]], "f": ["ab"]},
         {"k": 1}]
SECOND = [{"k": 2, "i": [-7], "s": [], "n": [None], "ns": [None, None, "y"], "aa": [[], [9]],
           "an": [[], ["q"]], "f": ["c", "de"]},
          {"k": 3, "i": [4, 5, 6], "s": ["z" * 200], "n": [-(2**63)], "aa": [[65535]],
           "an": [["r", None]]}]
EXPECTED = [
    (0, [1, 2], ["a", "bé"], [None, 5], ["x", None], [[1], [], [2, 3]], [[None, "p"]],
     ["ab"], 2),
    (1, [], [], [], [], [], [], [], 0),
    (2, [-7], [], [None], [None, None, "y"], [[], [9]], [[], ["q"]], ["c", "de"], 0),
    (3, [4, 5, 6], ["z" * 200], [-(2**63)], [], [[65535]], [["r", None]], [], 5),
]


def _merge_specs() -> list[ColumnSpec]:
    # e ($.i[1]) is missing where i has one element or none: its DEFAULT 0.
    return [ColumnSpec.build(name, ch_type, path, *(("DEFAULT", "0") if name == "e" else ()))
            for name, ch_type, path in MERGE_COLUMNS]


def test_merged_blocks_equal_one_block(parser_module: ModuleType) -> None:
    specs = _merge_specs()
    blocks = [encode_block(specs, run(parser_module, specs, [lines(*rows)])[1])
              for rows in (FIRST, SECOND, [])]
    together = encode_block(specs, run(parser_module, specs, [lines(*FIRST, *SECOND)])[1])
    merged = merge_blocks(specs, blocks)
    assert merged == together
    assert decode_rows(merged) == EXPECTED
    # The pure-Python offset shift gives the same payloads.
    import tinyingest.native as native_module

    saved = native_module.shift_offsets
    native_module.shift_offsets = shift_offsets_py
    try:
        assert merge_blocks(specs, blocks) == together
    finally:
        native_module.shift_offsets = saved


def test_round_trip_through_the_server(sink: Sink) -> None:
    """Two parsed blocks, merged into one INSERT, read back from either backend."""
    specs = _merge_specs()
    blocks = [encode_block(specs, run(C, specs, [lines(*rows)])[1]) for rows in (FIRST, SECOND)]
    body = ", ".join(f"{name} {ch_type}" for name, ch_type, _ in MERGE_COLUMNS)
    sink.execute(f"CREATE TABLE arrays ({body}) ENGINE = MergeTree ORDER BY k")
    sink.insert("arrays", merge_blocks(specs, blocks))
    sink.insert("arrays", blocks[0])  # and a block on its own
    # FixedString via hex(): its NUL padding is part of the value.
    names = ", ".join("arrayMap(x -> hex(x), f)" if name == "f" else name
                      for name, _, _ in MERGE_COLUMNS)
    result = sink.query(f"SELECT {names} FROM arrays ORDER BY k, length(i)")
    expected = [row[:7] + ([value.ljust(2, "\0").encode().hex().upper() for value in row[7]],)
                + row[8:]
                for row in sorted(EXPECTED + EXPECTED[:2], key=lambda r: (r[0], len(r[1])))]
    assert [tuple(row) for row in result.rows] == expected
