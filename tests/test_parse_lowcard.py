"""``LowCardinality(T)`` / ``LowCardinality(Nullable(T))`` for fixed-width ``T`` and
``FixedString(N)``: the schema, both parsers (every split), the encoder
``_encode.encode_low_cardinality_fixed`` equal to ``native.encode_low_cardinality_fixed_py``
byte for byte (hypothesis), merged blocks, and round trips through ClickHouse 18.16 and chDB.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parsers import col, encoders, implementation, parse, parser_module
from tinyingest.block import Block, ColumnData
from tinyingest.native import (
    encode_block,
    encode_column,
    encode_low_cardinality_fixed,
    encode_low_cardinality_fixed_py,
    merge_blocks,
    split_block,
)
from tinyingest.schema import ColumnSpec, SchemaError, parse_type
from tinyingest.sinks import Sink

__all__ = ["parser_module"]  # the fixture, imported for pytest

Encoder = Callable[..., bytes]


@pytest.fixture
def encode_c() -> Encoder:
    module = encoders()
    encoder: Encoder = module.encode_low_cardinality_fixed
    return encoder


def both(encode_c: Encoder, values: bytes, width: int, nulls: bytes | None) -> bytes:
    expected = encode_low_cardinality_fixed_py(values, width, nulls)
    assert encode_c(values, width, nulls) == expected
    assert encode_c(bytearray(values), width, None if nulls is None else memoryview(nulls)) \
        == expected
    return expected


# -- schema ------------------------------------------------------------------------------


@pytest.mark.parametrize("inner", ["UInt8", "Int64", "Float32", "Date", "DateTime",
                                   "DateTime('UTC')", "Date32", "UUID", "IPv4", "IPv6",
                                   "FixedString(3)", "Bool", "Int128", "UInt256", "String"])
def test_fixed_width_types_are_accepted(inner: str) -> None:
    for ch_type in (f"LowCardinality({inner})", f"LowCardinality(Nullable({inner}))"):
        parsed = parse_type(ch_type)
        assert parsed.low_cardinality and parsed.nullable == ("Nullable" in ch_type)


@pytest.mark.parametrize("ch_type", ["LowCardinality(Enum8('a' = 1))", "LowCardinality(Decimal(9, 2))",
                                     "LowCardinality(DateTime64(3))",
                                     "LowCardinality(Nullable(Decimal64(2)))"])
def test_types_clickhouse_refuses_are_refused(ch_type: str) -> None:
    with pytest.raises(SchemaError, match="no LowCardinality of"):
        parse_type(ch_type)


def test_arrays_of_low_cardinality_are_accepted_maps_refused() -> None:
    parsed = parse_type("Array(Array(LowCardinality(Nullable(String))))")
    assert parsed.low_cardinality and parsed.nullable and parsed.array_depth == 2
    with pytest.raises(SchemaError, match="not supported inside a Map"):
        parse_type("Map(String, LowCardinality(String))")


# -- parsing: as T -----------------------------------------------------------------------


@pytest.mark.parametrize(("inner", "ndjson"), [
    ("UInt32", b'{"v":7}\n{"v":null}\n{}\n{"v":"x"}\n{"v":7}\n'),
    ("FixedString(2)", b'{"v":"ab"}\n{"v":null}\n{"v":"abc"}\n{"v":""}\n'),
    ("Date", b'{"v":"2024-01-02"}\n{"v":null}\n{"v":"2024-13-01"}\n'),
])
def test_parsed_as_the_inner_type(parser_module: object, inner: str, ndjson: bytes) -> None:
    for wrapped, plain in ((f"LowCardinality({inner})", inner),
                           (f"LowCardinality(Nullable({inner}))", f"Nullable({inner})")):
        assert parse(parser_module, "ndjson", [col(wrapped)], ndjson) == \
            parse(parser_module, "ndjson", [col(plain)], ndjson)
    csv = b"7\n\n\\N\n" if inner == "UInt32" else b"ab\n\n\\N\n" if inner != "Date" \
        else b"2024-01-02\n\n\\N\n"
    assert parse(parser_module, "csv", [col(f"LowCardinality(Nullable({inner}))")], csv) == \
        parse(parser_module, "csv", [col(f"Nullable({inner})")], csv)


# -- the encoder -------------------------------------------------------------------------


def test_the_package_uses_the_compiled_encoder(encode_c: Encoder) -> None:
    assert encode_low_cardinality_fixed is encode_c


def test_golden_bytes(encode_c: Encoder) -> None:
    # version 1; flags: UInt8 indexes | additional keys | update dictionary; 2 entries;
    # the dictionary as UInt8 values; 3 rows; indexes.
    assert both(encode_c, bytes([7, 9, 7]), 1, None).hex() == (
        "0100000000000000" "0006000000000000" "0200000000000000" "0709"
        "0300000000000000" "000100")
    # Nullable: position 0 is NULL and holds the zero value; a real 0 has its own entry.
    assert both(encode_c, struct.pack("<3H", 5, 0, 0), 2, b"\x00\x01\x00").hex() == (
        "0100000000000000" "0006000000000000" "0300000000000000" "0000" "0500" "0000"
        "0300000000000000" "010002")


@pytest.mark.parametrize("width", [1, 2, 4, 8, 16, 32])
def test_empty_and_one_row(encode_c: Encoder, width: int) -> None:
    assert both(encode_c, b"", width, None) == b""
    assert both(encode_c, b"", width, b"") == b""
    for nulls in (None, b"\x00", b"\x01"):
        both(encode_c, bytes(range(1, width + 1)), width, nulls)


@pytest.mark.parametrize(("distinct", "width_code", "nullable"), [
    (255, 0, True), (256, 0, False), (256, 1, True), (65536, 1, False), (65536, 2, True),
    (70000, 2, False),
])
def test_index_width_follows_dictionary_size(encode_c: Encoder, distinct: int,
                                             width_code: int, nullable: bool) -> None:
    rng = random.Random(distinct)
    keys = list(range(distinct)) + [rng.randrange(distinct) for _ in range(1000)]
    values = struct.pack(f"<{len(keys)}I", *keys)
    nulls = bytes(distinct) + bytes(rng.random() < 0.2 for _ in keys[distinct:]) \
        if nullable else None
    payload = both(encode_c, values, 4, nulls)
    version, flags, size = struct.unpack_from("<QQQ", payload)
    assert (version, flags & 0xFF, size) == (1, width_code, distinct + (1 if nullable else 0))


def test_bad_input_is_rejected(encode_c: Encoder) -> None:
    for encode in (encode_c, encode_low_cardinality_fixed_py):
        with pytest.raises(ValueError, match="not values of 4 bytes"):
            encode(b"abc", 4)
        with pytest.raises(ValueError, match="not values of 0 bytes"):
            encode(b"abc", 0)
        with pytest.raises(ValueError, match="1 null flags for 2 rows"):
            encode(b"ab", 1, b"\x00")


@settings(deadline=None, max_examples=200, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # stateless fixture
@given(width=st.sampled_from([1, 2, 3, 4, 8, 16, 32]), data=st.data())
def test_random(encode_c: Encoder, width: int, data: st.DataObject) -> None:
    pool = data.draw(st.lists(st.binary(min_size=width, max_size=width), min_size=1, max_size=8))
    values = data.draw(st.lists(st.sampled_from(pool), max_size=80))
    nulls = data.draw(st.none() | st.binary(min_size=len(values), max_size=len(values)))
    both(encode_c, b"".join(values), width, nulls)


def test_encode_column_checks_the_value_count() -> None:
    spec = ColumnSpec.build("v", "LowCardinality(Nullable(UInt16))", "$.v")
    with pytest.raises(ValueError, match="3 value bytes for 2 rows of 2 bytes"):
        encode_column(spec, ColumnData(b"abc", None, b"\x00\x00"), 2)
    # No null map: every row is a value.
    assert encode_column(spec, ColumnData(b"\x01\x00", None, None), 1) == \
        encode_low_cardinality_fixed_py(b"\x01\x00", 2, b"\x00")


# -- round trips -------------------------------------------------------------------------


def parsed_block(specs: list[ColumnSpec], body: bytes, rows: int) -> Block:
    """``body`` through the compiled parser: ``rows`` rows, none refused."""
    parser = implementation("c").NDJSONParser(specs)
    parser.feed(body)
    parser.finish()
    parsed: Block = parser.take_block()
    assert parsed.num_rows == rows and not parsed.errors
    return parsed

# (type, two JSON values, as ClickHouse prints them, on 18.16 too)
ROUND_TRIP: list[tuple[str, list[str], list[str | None], bool]] = [
    ("LowCardinality(UInt8)", ["7", "255"], ["7", "255"], True),
    ("LowCardinality(Nullable(Int64))", ["null", "-9"], [None, "-9"], True),
    ("LowCardinality(Float64)", ["1.5", "1.5"], ["1.5", "1.5"], True),
    ("LowCardinality(Nullable(Float32))", ["0", "null"], ["0", None], True),
    ("LowCardinality(Date)", ['"2024-01-02"', '"2024-01-03"'], ["2024-01-02", "2024-01-03"], True),
    ("LowCardinality(Nullable(DateTime))", ['"2024-01-02 03:04:05"', "null"],
     ["2024-01-02 03:04:05", None], True),
    ("LowCardinality(FixedString(3))", ['"ab"', '"abc"'], ["616200", "616263"], True),
    ("LowCardinality(Nullable(FixedString(2)))", ["null", '"x"'], [None, "7800"], True),
    ("LowCardinality(Nullable(String))", ["null", '"s"'], [None, "s"], True),
    ("LowCardinality(UUID)", ['"123e4567-e89b-12d3-a456-426614174000"',
                              '"00000000-0000-0000-0000-000000000001"'],
     ["123e4567-e89b-12d3-a456-426614174000", "00000000-0000-0000-0000-000000000001"], False),
    ("LowCardinality(Nullable(IPv4))", ['"1.2.3.4"', "null"], ["1.2.3.4", None], False),
    ("LowCardinality(Date32)", ['"1900-01-01"', '"2299-12-31"'], ["1900-01-01", "2299-12-31"],
     False),
    ("LowCardinality(Int128)", [str(-(1 << 127)), "1"], [str(-(1 << 127)), "1"], False),
]


def test_round_trip_through_the_server(sink: Sink) -> None:
    """Two requests' blocks merged into one INSERT (granule after granule), then one
    more block on its own; read back as ClickHouse's text (FixedString as hex)."""
    cases = [case for case in ROUND_TRIP if case[3] or sink.name == "embedded"]
    specs = [ColumnSpec.build("row", "UInt8", "$.row")] + [
        ColumnSpec.build(f"c{i}", ch_type, f"$.c{i}") for i, (ch_type, *_) in enumerate(cases)]

    def block(rows: list[int]) -> Block:
        body = b"".join(
            b'{"row":%d,' % r + b",".join(f'"c{i}":{values[r % 2]}'.encode()
                                           for i, (_, values, _, _) in enumerate(cases))
            + b"}\n" for r in rows)
        return parsed_block(specs, body, len(rows))

    body = ", ".join(f"c{i} {ch_type}" for i, (ch_type, *_) in enumerate(cases))
    if sink.name == "embedded":  # chDB 26.9 wants LowCardinality of numbers allowed
        sink.execute("SET allow_suspicious_low_cardinality_types = 1")
    sink.execute(f"CREATE TABLE lc (row UInt8, {body}) ENGINE = MergeTree ORDER BY row")
    sink.insert("lc", merge_blocks(specs, [encode_block(specs, block([0, 1])),
                                           encode_block(specs, block([2])),
                                           encode_block(specs, block([3, 4, 5]))]))
    sink.insert("lc", encode_block(specs, block([6, 7])))

    def text(i: int, ch_type: str) -> str:
        nullable = "Nullable" in ch_type
        value = f"assumeNotNull(c{i})" if nullable else f"c{i}"
        shown = f"hex({value})" if "FixedString" in ch_type else f"toString({value})"
        return f"if(isNull(c{i}), NULL, {shown})" if nullable else shown

    select = ", ".join(text(i, case[0]) for i, case in enumerate(cases))
    result = sink.query(f"SELECT row, {select} FROM lc ORDER BY row")
    expected = [(r, *(case[2][r % 2] for case in cases)) for r in range(8)]
    assert result.rows == expected


# (type, JSON values of four rows, as clickhouse-driver reads them back)
ARRAYS: list[tuple[str, list[str], list[object]]] = [
    ("Array(LowCardinality(String))", ['["a","b","a"]', "[]", '["b"]', '["c","a"]'],
     [["a", "b", "a"], [], ["b"], ["c", "a"]]),
    ("Array(LowCardinality(Nullable(String)))", ['["a",null]', "[null]", "[]", '["a"]'],
     [["a", None], [None], [], ["a"]]),
    ("Array(Array(LowCardinality(String)))", ['[["x"],[],["x","y"]]', "[]", "[[]]", '[["y"]]'],
     [[["x"], [], ["x", "y"]], [], [[]], [["y"]]]),
    ("Array(LowCardinality(UInt32))", ["[7,7,1]", "[]", "[4294967295]", "[1]"],
     [[7, 7, 1], [], [4294967295], [1]]),
    ("Array(LowCardinality(Nullable(FixedString(2))))", ['["ab",null]', '["a"]', "[]", "[]"],
     [["ab", None], ["a"], [], []]),  # the driver strips FixedString's padding
]


def test_arrays_of_low_cardinality_round_trip(sink: Sink) -> None:
    """Blocks merged into one INSERT (one with no elements at all), then a block alone:
    the LowCardinality prefix once before the offsets, each block's elements a granule."""
    specs = [ColumnSpec.build("row", "UInt8", "$.row")] + [
        ColumnSpec.build(f"c{i}", ch_type, f"$.c{i}") for i, (ch_type, *_) in enumerate(ARRAYS)]

    def block(rows: list[int], empty: bool = False) -> Block:
        body = b"".join(
            b'{"row":%d,' % r + b",".join(f'"c{i}":{"[]" if empty else values[r % 4]}'.encode()
                                           for i, (_, values, _) in enumerate(ARRAYS))
            + b"}\n" for r in rows)
        return parsed_block(specs, body, len(rows))

    body = ", ".join(f"c{i} {ch_type}" for i, (ch_type, *_) in enumerate(ARRAYS))
    if sink.name == "embedded":  # chDB 26.9 wants LowCardinality of numbers allowed
        sink.execute("SET allow_suspicious_low_cardinality_types = 1")
    for table in ("lc_arrays", "lc_split"):
        sink.execute(f"CREATE TABLE {table} (row UInt8, {body}) "
                     "ENGINE = MergeTree ORDER BY row")
    merged = merge_blocks(specs, [encode_block(specs, block([0, 1])),
                                  encode_block(specs, block([8], empty=True)),
                                  encode_block(specs, block([2, 3]))])
    sink.insert("lc_arrays", merged)
    sink.insert("lc_arrays", encode_block(specs, block([4, 5, 6, 7])))
    sink.insert("lc_arrays", encode_block(specs, block([9], empty=True)))
    result = sink.query("SELECT * FROM lc_arrays ORDER BY row")
    expected = [(r, *([] if r >= 8 else case[2][r % 4] for case in ARRAYS)) for r in range(10)]
    assert [tuple(row) for row in result.rows] == expected
    # The slow path that isolates refused rows in one request's block decodes and
    # re-encodes it (with clickhouse-driver, which reads one granule: never a merged block).
    for half in split_block(encode_block(specs, block([0, 1, 2, 3]))):
        sink.insert("lc_split", half)
    result = sink.query("SELECT * FROM lc_split ORDER BY row")
    assert [tuple(row) for row in result.rows] == expected[:4]
