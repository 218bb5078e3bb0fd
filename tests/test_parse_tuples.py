"""``Tuple(T1, T2, ...)`` / ``Tuple(a T1, b T2, ...)`` columns from NDJSON: the schema, both
parsers (every split point, and against each other under hypothesis), the Native layout,
merged blocks, and round trips through ClickHouse 18.16 and chDB.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parsers import IMPLEMENTATIONS, implementation, parser_module, splits
from tinyingest.block import Block, ColumnData
from tinyingest.errors import ErrorCode
from tinyingest.native import decode_rows, encode_block, encode_column, merge_blocks
from tinyingest.schema import ColumnSpec, SchemaError, TypeCode, parse_type
from tinyingest.sinks import Sink

__all__ = ["parser_module"]  # the fixture, imported for pytest

BAD = int(ErrorCode.BAD_VALUE)
MIXED = "Tuple(UInt8, Nullable(String), FixedString(2), Nullable(Int32), Float64, Date)"
NAMED = "Tuple(a UInt16, b Nullable(String), c String)"

Parsed = tuple[int, tuple[bytes, ...], tuple[tuple[bytes, int, int, bytes], ...]]


def spec(ch_type: str, name: str = "t", path: str = "$.t") -> ColumnSpec:
    return ColumnSpec.build(name, ch_type, path)


def run(module: Any, columns: Sequence[ColumnSpec], chunks: Sequence[bytes]) -> Parsed:
    parser = module.NDJSONParser(list(columns))
    ended = sum(parser.feed(chunk) for chunk in chunks) + parser.finish()
    block: Block = parser.take_block()
    assert ended == block.num_rows + len(block.errors)
    for column, data in zip(columns, block.columns):
        if column.tuple_elements:
            assert data.offsets is None and data.nulls is None
    return (block.num_rows, tuple(c.values for c in block.columns),
            tuple((e.line, e.column, e.code, e.value) for e in block.errors))


def parse(module: Any, columns: Sequence[ColumnSpec], data: bytes) -> Parsed:
    """Whole, one byte at a time and split at every offset: all the same."""
    whole = run(module, columns, [data])
    for how, chunks in splits(data):
        assert run(module, columns, chunks) == whole, how
    return whole


def rows(columns: Sequence[ColumnSpec], parsed: Parsed) -> list[tuple[Any, ...]]:
    block = Block(parsed[0], [ColumnData(values) for values in parsed[1]])
    return decode_rows(encode_block(columns, block))


def ndjson(values: Sequence[str]) -> bytes:
    return b"".join(b'{"t":' + value.encode() + b"}\n" for value in values)


# -- schema ------------------------------------------------------------------------------


def test_schema() -> None:
    column = spec(MIXED)
    assert column.type_code is TypeCode.TUPLE and not column.nullable
    assert [e.ch_type for e in column.tuple_elements] == [
        "UInt8", "Nullable(String)", "FixedString(2)", "Nullable(Int32)", "Float64", "Date"]
    assert column.tuple_names == ("",) * 6
    named = spec("Tuple(a UInt8, when DateTime64(3, 'UTC'), e Enum8('x,y' = 1))")
    assert named.tuple_names == ("a", "when", "e")
    assert [e.name for e in named.tuple_elements] == ["a", "when", "e"]
    assert named.tuple_elements[2].enum_values == ((b"x,y", 1),)


@pytest.mark.parametrize(("ch_type", "message"), [
    ("Tuple(a UInt8, String)", "name every Tuple element or none"),
    ("Tuple(a UInt8, a String)", "duplicate Tuple element names"),
    ("Tuple(Array(UInt8))", "must be scalar types"),
    ("Tuple(Tuple(UInt8))", "must be scalar types"),
    ("Tuple(LowCardinality(String))", "must be scalar types"),
    ("Tuple(UInt8, )", "an empty Tuple element"),
    ("Tuple(x Foo)", "element Foo"),
    ("Array(Tuple(UInt8))", "only as a column's own type"),
    ("Nullable(Tuple(UInt8))", "only as a column's own type"),
    ("Map(String, Tuple(UInt8))", "only as a column's own type"),
])
def test_bad_tuples_are_refused(ch_type: str, message: str) -> None:
    with pytest.raises(SchemaError, match=message):
        parse_type(ch_type)


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_csv_and_defaults_are_refused(name: str) -> None:
    module = implementation(name)
    with pytest.raises(SchemaError, match="Tuple columns are not supported in CSV"):
        module.CSVParser([spec(MIXED)])
    column = ColumnSpec.build("t", "Tuple(UInt8)", "$.t", "DEFAULT", "0")
    with pytest.raises(SchemaError, match="DEFAULT 0 of column 't'"):
        module.NDJSONParser([column])


# -- parsing -----------------------------------------------------------------------------


def test_values(parser_module: Any) -> None:
    columns = [spec(MIXED)]
    parsed = parse(parser_module, columns, ndjson([
        '[1, "a", "xy", -5, 1.5, "2024-01-02"]',
        '[ 255 , null , "" , null , 0 , 19000 ]',
        '["7", {"k": [1]}, "x", "12", "2", 0]',  # text for numbers; JSON text for String
        "null",
    ]) + b"{}\n")
    assert not parsed[2]
    assert rows(columns, parsed) == [
        ((1, "a", "xy", -5, 1.5, _date("2024-01-02")),),
        ((255, None, "", None, 0.0, _date("1970-01-01")),),  # 19000 epoch seconds
        ((7, '{"k":[1]}', "x", 12, 2.0, _date("1970-01-01")),),
        ((0, None, "", None, 0.0, _date("1970-01-01")),),
        ((0, None, "", None, 0.0, _date("1970-01-01")),),
    ]


def _date(text: str) -> Any:
    import datetime

    return datetime.date.fromisoformat(text)


@pytest.mark.parametrize(("value", "code", "shown"), [
    ('[1, "a"]', BAD, b'[1,"a"]'),  # too short
    ('[1, "a", "xy", 1, 1, 0, 9]', BAD, b'[1,"a","xy",1,1,0,9]'),  # too long
    ("[]", BAD, b"[]"),
    ('[1, "a", "xyz", 1, 1, 0]', int(ErrorCode.OUT_OF_RANGE), b"xyz"),
    ('[256, "a", "xy", 1, 1, 0]', int(ErrorCode.OUT_OF_RANGE), b"256"),
    ('[null, "a", "xy", 1, 1, 0]', int(ErrorCode.NULL), b"null"),
    ('[1, "a", "xy", [2], 1, 0]', BAD, b"[2]"),
    ('[1, "a", "xy", 1, "1.x", 0]', BAD, b"1.x"),
    ('"(1,\'a\')"', BAD, b"(1,'a')"),
    ('"\\u00e9"', BAD, "é".encode()),
    ("7", BAD, b"7"),
    ("true", BAD, b"true"),
    ('{"a": 1}', BAD, b'{"a":1}'),  # an object, for an unnamed Tuple
])
def test_bad_values_quarantine_the_row(parser_module: Any, value: str, code: int,
                                       shown: bytes) -> None:
    columns = [spec(MIXED), spec("UInt8", "n", "$.n")]
    body = b'{"t":[1,"a","xy",1,1,0],"n":1}\n{"t":' + value.encode() + b',"n":2}\n'
    parsed = parse(parser_module, columns, body)
    assert parsed[0] == 1
    assert parsed[2] == ((body.split(b"\n")[1], 0, code, shown),)


def test_a_later_bad_column_undoes_the_tuple(parser_module: Any) -> None:
    columns = [spec(MIXED), spec("UInt8", "n", "$.n")]
    body = (b'{"t":[1,"a","xy",1,1,0],"n":1}\n{"t":[2,"b","zz",2,2,0],"n":-1}\n'
            b'{"t":[3,null,"q",null,3,0],"n":3}\n')
    parsed = parse(parser_module, columns, body)
    assert [row[1] for row in rows(columns, parsed)] == [1, 3]
    assert [row[0][0] for row in rows(columns, parsed)] == [1, 3]
    assert parsed[2][0][1:3] == (1, int(ErrorCode.OUT_OF_RANGE))


def test_named_tuples_take_objects(parser_module: Any) -> None:
    columns = [spec(NAMED)]
    body = ndjson([
        '{"a": 1, "b": "x", "c": "y"}',
        '{"c": "y", "a": 2}',  # order free; a left-out Nullable element is NULL
        '{"zz": [1, {"q": 2}], "b": null}',  # unknown members are ignored
        '{"\\u0061": 3}',  # escaped names
        '[4, "p", "q"]',  # positional too
        "{}",
    ])
    parsed = parse(parser_module, columns, body)
    assert not parsed[2]
    assert rows(columns, parsed) == [
        ((1, "x", "y"),), ((2, None, "y"),), ((0, None, ""),), ((3, None, ""),),
        ((4, "p", "q"),), ((0, None, ""),)]


@pytest.mark.parametrize(("value", "code", "shown"), [
    ('{"a": 1, "a": 2}', BAD, b'{"a":1,"a":2}'),  # a duplicate member
    ('{"a": 1, "\\u0061": 2}', BAD, b'{"a":1,"\\u0061":2}'),
    ('{"a": -1}', int(ErrorCode.OUT_OF_RANGE), b"-1"),
    ('{"c": null}', int(ErrorCode.NULL), b"null"),
    ('{"a": [1]}', BAD, b"[1]"),
])
def test_bad_named_members(parser_module: Any, value: str, code: int, shown: bytes) -> None:
    parsed = parse(parser_module, [spec(NAMED)], ndjson([value]))
    assert parsed[2] == ((ndjson([value])[:-1], 0, code, shown),)


def test_layout_and_merged_blocks(parser_module: Any) -> None:
    """Per element its null map then its values; merge_blocks joins blocks element by
    element."""
    columns = [spec("Tuple(Nullable(UInt8), String, FixedString(1))"), spec("UInt8", "n", "$.n")]
    texts = ['[1, "ab", "x"]', '[null, "", "y"]', '[3, "c", ""]']
    parsed = parse(parser_module, columns, b"".join(
        b'{"t":' + t.encode() + b',"n":%d}\n' % i for i, t in enumerate(texts)))
    assert parsed[1][0] == b"\x00\x01\x00" + b"\x01\x00\x03" + b"\x02ab\x00\x01c" + b"xy\x00"
    blocks = [run(parser_module, columns, [b'{"t":' + t.encode() + b',"n":%d}\n' % i])
              for i, t in enumerate(texts)]
    encoded = [encode_block(columns, Block(b[0], [ColumnData(v) for v in b[1]]))
               for b in blocks]
    merged = merge_blocks(columns, encoded)
    assert merged.payloads == encode_block(
        columns, Block(3, [ColumnData(v) for v in parsed[1]])).payloads


def test_encode_column_checks_the_layout() -> None:
    column = spec("Tuple(UInt8, String)")
    with pytest.raises(ValueError, match="Tuple data does not hold 2 rows"):
        encode_column(column, ColumnData(b"\x01\x02\x01a"), 2)
    with pytest.raises(ValueError, match="5 Tuple bytes for 1 rows"):
        encode_column(column, ColumnData(b"\x01\x01a\x00\x00"), 1)


# -- differential: the two implementations agree -------------------------------------------

_ELEMENT = st.one_of(
    st.integers(-300, 300).map(str), st.sampled_from(["null", "true", '"x"', '"12"', "1.5",
                                                      "[1]", '{"a":1}', '"2024-01-02"',
                                                      '"\\u00e9"', '""', '"ab"']))


@settings(deadline=None, max_examples=150, database=None)
@given(values=st.lists(st.one_of(
    st.lists(_ELEMENT, min_size=0, max_size=7).map(lambda items: "[" + ", ".join(items) + "]"),
    st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d", "\\u0062"]), _ELEMENT),
             max_size=4).map(
        lambda members: "{" + ", ".join(f'"{k}": {v}' for k, v in members) + "}"),
    st.sampled_from(["null", '"s"', "3"])), max_size=6), cut=st.integers(0, 400))
def test_both_implementations_agree(values: list[str], cut: int) -> None:
    columns = [spec(MIXED), spec(NAMED, "u", "$.u"), spec("Int8", "n", "$.n")]
    body = b"".join(b'{"t":%s,"u":%s,"n":%d}\n' % (v.encode(), v.encode(), i % 3 - 1)
                    for i, v in enumerate(values))
    expected = run(implementation("py"), columns, [body])
    assert run(implementation("c"), columns, [body]) == expected
    cut = min(cut, len(body))
    assert run(implementation("c"), columns, [body[:cut], body[cut:]]) == expected


# -- round trips -------------------------------------------------------------------------


def test_round_trip_through_the_server(sink: Sink) -> None:
    """Tuples parsed, merged across blocks and inserted; read back element by element.
    Named Tuples are chDB only (18.16 has none)."""
    types = [MIXED] + ([NAMED] if sink.name == "embedded" else [])
    columns = [spec("UInt8", "row", "$.row")] + [
        spec(ch_type, f"t{i}", f"$.t{i}") for i, ch_type in enumerate(types)]
    values = [
        ['[1, "a", "xy", -5, 1.5, "2024-01-02"]', '{"a": 7, "c": "z"}'],
        ["null", '[1, null, "q"]'],
        ['[255, null, "", null, 0, 0]', "null"],
    ]

    def block(numbers: list[int]) -> Block:
        body = b"".join(b'{"row":%d,' % r + b",".join(
            f'"t{i}":{values[r][i]}'.encode() for i in range(len(types))) + b"}\n"
            for r in numbers)
        parser = implementation("c").NDJSONParser(columns)
        parser.feed(body)
        parser.finish()
        parsed: Block = parser.take_block()
        assert parsed.num_rows == len(numbers) and not parsed.errors
        return parsed

    body = ", ".join(f"t{i} {ch_type}" for i, ch_type in enumerate(types))
    sink.execute(f"CREATE TABLE tuples (row UInt8, {body}) ENGINE = MergeTree ORDER BY row")
    sink.insert("tuples", merge_blocks(columns, [encode_block(columns, block([0])),
                                                 encode_block(columns, block([1, 2]))]))
    select = ", ".join(
        f"if(isNull(tupleElement(t0, {k})), 'NULL', toString(assumeNotNull(tupleElement(t0, {k}))))"
        if k in (2, 4) else f"toString(toUInt16(tupleElement(t0, {k})))" if k == 6
        else f"hex(tupleElement(t0, {k}))" if k == 3
        else f"toString(tupleElement(t0, {k}))" for k in range(1, 7))
    if len(types) > 1:
        select += ", toString(t1.a), ifNull(t1.b, 'NULL'), t1.c"
    result = sink.query(f"SELECT row, {select} FROM tuples ORDER BY row")
    expected: list[tuple[Any, ...]] = [
        (0, "1", "a", "7879", "-5", "1.5", "19724"),  # Date as days (18.16 prints 0 oddly)
        (1, "0", "NULL", "0000", "NULL", "0", "0"),
        (2, "255", "NULL", "0000", "NULL", "0", "0"),
    ]
    if len(types) > 1:
        named = [("7", "NULL", "z"), ("1", "NULL", "q"), ("0", "NULL", "")]
        expected = [row + extra for row, extra in zip(expected, named)]
    assert result.rows == expected
