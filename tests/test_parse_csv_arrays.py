"""Array(T) columns in CSV, in both parsers: ClickHouse's array literals (``[1,2]``,
``['a','b\\'c']``, ``[[1],[2,3]]``, ``NULL`` elements) inside quoted or unquoted fields.

Every body runs whole, one byte at a time and split at every offset, on both
implementations; blocks are read back as Native data, merged with
``native.merge_blocks`` and stored through both real backends (ClickHouse 18.16, chDB).
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from types import ModuleType
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parsers import implementation, parser_module, run_nested, splits
from tinyingest.block import Block
from tinyingest.errors import MAX_ERROR_VALUE, ErrorCode
from tinyingest.native import decode_rows, encode_block, merge_blocks
from tinyingest.schema import ColumnSpec
from tinyingest.sinks import Sink

__all__ = ["parser_module"]  # the fixture, imported for pytest

PY = implementation("py")
C = implementation("c")
BAD = int(ErrorCode.BAD_VALUE)
RANGE = int(ErrorCode.OUT_OF_RANGE)
NULL = int(ErrorCode.NULL)
UTF8 = int(ErrorCode.INVALID_UTF8)

Result = tuple[int, Block]


def col(ch_type: str, name: str = "v") -> ColumnSpec:
    return ColumnSpec.build(name, ch_type, f"$.{name}")


def run(module: ModuleType, columns: Sequence[ColumnSpec], chunks: Sequence[bytes],
        **options: Any) -> Result:
    return run_nested(module, "csv", columns, chunks, **options)


def parse(module: ModuleType, columns: Sequence[ColumnSpec], body: bytes, **options: Any) -> Result:
    whole = run(module, columns, [body], **options)
    for how, chunks in splits(body):
        assert run(module, columns, chunks, **options) == whole, how
    return whole


def values(columns: Sequence[ColumnSpec], block: Block) -> list[tuple[Any, ...]]:
    return decode_rows(encode_block(columns, block)) if block.num_rows else []


def errors(block: Block) -> list[tuple[int, int, bytes]]:
    return [(e.column, e.code, e.value) for e in block.errors]


def both(columns: Sequence[ColumnSpec], body: bytes, **options: Any) -> tuple[
        list[tuple[Any, ...]], list[tuple[int, int, bytes]]]:
    py = parse(PY, columns, body, **options)
    assert parse(C, columns, body, **options) == py
    return values(columns, py[1]), errors(py[1])


# What chDB 26.9 writes for
#   SELECT [1,2], ['a','b\'c','q"x','tab\there','\\'], [[1],[2,3]], [NULL,1],
#          [toDate('2024-01-02')], [toDateTime('2024-01-02 03:04:05', 'UTC')],
#          ['1.2.3.4'::IPv4], [1.5::Decimal(9,2)] FORMAT CSV
CLICKHOUSE_CSV = (b'"[1,2]","[\'a\',\'b\\\'c\',\'q""x\',\'tab\\there\',\'\\\\\']","[[1],[2,3]]",'
                  b'"[NULL,1]","[\'2024-01-02\']","[\'2024-01-02 03:04:05\']","[\'1.2.3.4\']",'
                  b'"[1.5]"\n')
CLICKHOUSE_COLUMNS = [col("Array(Int32)", "a"), col("Array(String)", "s"),
                      col("Array(Array(UInt8))", "n"), col("Array(Nullable(UInt8))", "u"),
                      col("Array(Date)", "d"), col("Array(DateTime)", "t"),
                      col("Array(IPv4)", "i"), col("Array(Decimal(9, 2))", "dec")]


def test_clickhouse_csv_output_reads_back() -> None:
    stored, errs = both(CLICKHOUSE_COLUMNS, CLICKHOUSE_CSV)
    assert errs == []
    import datetime
    import ipaddress
    assert stored == [([1, 2], ["a", "b'c", 'q"x', "tab\there", "\\"], [[1], [2, 3]], [None, 1],
                       [datetime.date(2024, 1, 2)], [datetime.datetime(2024, 1, 2, 3, 4, 5)],
                       [ipaddress.IPv4Address("1.2.3.4")], [Decimal("1.5")])]


def test_array_literals() -> None:
    columns = [col("Array(Int64)", "i"), col("Array(Nullable(String))", "s"),
               col("Array(Array(Nullable(Int8)))", "n"), col("Array(FixedString(2))", "f")]
    body = (
        b"[],[],[],[]\n"
        b",\\N,,\n"  # empty and \N (unquoted): the empty array
        b"[-1],['x'],[[NULL]],['ab']\n"  # no delimiter inside: unquoted works
        b'" [ 1 ,\t2 ] ","[ \'a\' , NULL , \'NULL\' , \'\' ]","[[1, NULL], [], NULL]",\'\'\n'
        b"[],\"['\\n\\t\\0\\x41\\x7a\\q','it''s','\\'',bare]\",\"[[],[]]\",[]\n"
    )
    stored, errs = both(columns, body)
    assert errs == [(3, BAD, b"''")]  # a quoted string is not an array
    assert stored[:3] == [([], [], [], []), ([], [], [], []), ([-1], ["x"], [[None]], ["ab"])]
    assert stored[3] == ([], ["\n\t\0Azq", "it's", "'", "bare"], [[], []], [])
    # The row with the spaces (its FixedString field was bad), on its own:
    stored, errs = both(columns[:3], b'" [ 1 ,\t2 ] ","[ \'a\' , NULL , \'NULL\' , \'\' ]",'
                                     b'"[[1, NULL], [], NULL]"\n')
    assert errs == [] and stored == [([1, 2], ["a", None, "NULL", ""], [[1, None], [], []])]


def test_header_delimiter_and_escapechar() -> None:
    columns = [col("UInt8", "k"), col("Array(String)", "s")]
    stored, errs = both(columns, b"s;k\n\"['a;b','c']\";1\n['x'];2\n", delimiter=b";")
    assert errs == [] and stored == [(1, ["a;b", "c"]), (2, ["x"])]
    stored, errs = both(columns, b"3,[\\'a\\'\\,\\'b\\']\n", escapechar=b"\\")
    assert errs == [] and stored == [(3, ["a", "b"])]


def test_bad_arrays_quarantine_the_row(parser_module: ModuleType) -> None:
    columns = [col("Int8", "k"), col("Array(UInt8)", "a"), col("Array(Array(Int8))", "n")]
    rows = [
        b'1,"[1,2]",[]',
        b'2,"[1,256]",[]',  # out of range: the elements before are undone too
        b"3,[x],[]",
        b"4,[NULL],[]",  # NULL element, not Nullable
        b"5,7,[]",  # not an array: the whole field
        b'6,"[1,]",[]',  # syntax: the whole field
        b'7,"[1] x",[]',
        b"8,[[1]],[]",  # a nested array is not a UInt8
        b'9,[],"[[1],2]"',  # an inner item that is not an array
        b'10,[],"[[1],[128]]"',
        b"11,['1'],['a']",  # a quoted element converts like any text; a string is not an array
        b"12,['\\x'],[]",  # \x needs two hex digits
        b"13,['\\xff'],[]",
        b"14,{'a':1},[]",  # a map is not an array
        b'15,"[1,2",[]',
        "16,['é'],[]".encode(),
        b"17,[1],\"[[1],NULL,[]]\"",
        b"18," + b"[" * 65 + b"]" * 65 + b",[]",  # nesting over 64: not an array
        b"19,[1 2],[]",
        b"20,[],[[NULL]]",
    ]
    _, block = parse(parser_module, columns, b"\n".join(rows) + b"\n")
    assert errors(block) == [
        (1, RANGE, b"256"), (1, BAD, b"x"), (1, NULL, b"NULL"), (1, BAD, b"7"),
        (1, BAD, b"[1,]"), (1, BAD, b"[1] x"), (1, BAD, b"[1]"), (2, BAD, b"2"),
        (2, RANGE, b"128"), (2, BAD, b"a"), (1, BAD, b"['\\x']"), (1, BAD, b"\xff"),
        (1, BAD, b"{'a':1}"), (1, BAD, b"[1,2"), (1, BAD, "é".encode()),
        (1, BAD, (b"[" * 65 + b"]" * 65)[:MAX_ERROR_VALUE]), (1, BAD, b"[1 2]"), (2, NULL, b"NULL"),
    ]
    assert values(columns, block) == [(1, [1, 2], []), (17, [1], [[1], [], []])]
    assert [e.line for e in block.errors][:2] == [rows[1], rows[2]]


def test_invalid_utf8_in_a_string_element(parser_module: ModuleType) -> None:
    columns = [col("Array(String)", "a")]
    _, block = parse(parser_module, columns, b"['\\xff']\n['\xc3']\n[\xe9]\n['ok']\n")
    assert errors(block) == [(0, UTF8, b"\xff"), (0, UTF8, b"\xc3"), (0, UTF8, b"\xe9")]
    assert values(columns, block) == [(["ok"],)]


# -- the implementations agree on arbitrary fields ------------------------------------------

ELEMENTS: dict[str, list[str]] = {
    "Int8": ["0", "-128", "127", "'5'", "true", "300", "x"],
    "Nullable(String)": ["NULL", "'x'", "'a''b'", "'\\\\'", "'\\''", "'é'", "'\\xe9'", "bare",
                         "''", "'\\n'"],
    "Float32": ["1.5", "-0.25", "3e2", "'1'", "nan"],
    "Date": ["'2024-01-02'", "19000", "'2024-13-01'"],
    "Nullable(Decimal(5, 2))": ["1.25", "'-3'", "NULL", "1.234"],
    "UUID": ["'61f0c404-5cb3-11e7-907b-a6006ad3dba0'", "'x'"],
    "IPv4": ["'1.2.3.4'", "'256.0.0.0'"],
    "Array(Int8)": ["[]", "[1,2]", "NULL", "[ 3 ]", "['4']", "[[1]]", "1"],
}
NOISE = ["", " ", "\t", ",", "[", "]", "'", "\\", "{", "}", ":", "''", "NULL", "\\x4", "é",
         "\xff", '"']


@st.composite
def fields(draw: st.DrawFn, element_type: str) -> str:
    items = draw(st.lists(st.sampled_from(ELEMENTS[element_type]), max_size=4))
    gap = draw(st.sampled_from(["", " ", "\t "]))
    text = "[" + gap + (gap + "," + gap).join(items) + gap + "]"
    if draw(st.integers(0, 3)) == 0:  # damage it
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(st.sampled_from(NOISE)) + text[cut + draw(st.integers(0, 2)):]
    return draw(st.sampled_from([text, "", "\\N", "[]"])) if draw(st.integers(0, 9)) == 0 \
        else text


def csv_field(text: str) -> bytes:
    raw = text.encode("utf-8", "surrogateescape") if "\xff" not in text else \
        text.replace("\xff", "").encode() + b"\xff"
    if any(c in raw for c in b',"\n') or not raw:
        return b'"' + raw.replace(b'"', b'""') + b'"'
    return raw


@settings(deadline=None, max_examples=300, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(types=st.lists(st.sampled_from(sorted(ELEMENTS)), min_size=1, max_size=3),
       data=st.data(), cut=st.integers(0, 1000))
def test_implementations_agree(types: list[str], data: st.DataObject, cut: int) -> None:
    columns = [col(f"Array({t})", f"c{i}") for i, t in enumerate(types)]
    rows = [b",".join(csv_field(data.draw(fields(t))) for t in types)
            for _ in range(data.draw(st.integers(0, 5)))]
    body = b"\n".join(rows) + b"\n"
    cut = cut % (len(body) + 1)
    py = run(PY, columns, [body], header=False)
    assert run(C, columns, [body], header=False) == py
    assert run(C, columns, [body[:cut], body[cut:]], header=False) == py
    assert run(PY, columns, [body[:cut], body[cut:]], header=False) == py
    values(columns, py[1])  # valid Native


# -- merged blocks and the servers ----------------------------------------------------------

SPECS = [col("UInt8", "k"), col("Array(Int32)", "i"), col("Array(Nullable(String))", "s"),
         col("Array(Array(UInt16))", "aa")]
FIRST = b"0,\"[1,2]\",\"['a',NULL,'b\\'c']\",\"[[1],[],[2,3]]\"\n1,,,\n"
SECOND = b"2,[-7],['\xc3\xa9'],[[65535]]\n3,\"[4,5,6]\",[NULL],\"[NULL,[9]]\"\n"
EXPECTED = [(0, [1, 2], ["a", None, "b'c"], [[1], [], [2, 3]]), (1, [], [], []),
            (2, [-7], ["é"], [[65535]]), (3, [4, 5, 6], [None], [[], [9]])]


def test_merged_blocks_equal_one_block(parser_module: ModuleType) -> None:
    blocks = [encode_block(SPECS, run(parser_module, SPECS, [body])[1])
              for body in (FIRST, SECOND, b"")]
    together = encode_block(SPECS, run(parser_module, SPECS, [FIRST + SECOND])[1])
    assert merge_blocks(SPECS, blocks) == together
    assert decode_rows(together) == EXPECTED


def test_round_trip_through_the_server(sink: Sink) -> None:
    """CSV arrays parsed in two blocks, merged into one INSERT, read back (both backends);
    and chDB's own CSV output, parsed and stored."""
    blocks = [encode_block(SPECS, run(C, SPECS, [body])[1]) for body in (FIRST, SECOND)]
    sink.execute("CREATE TABLE csv_arrays (k UInt8, i Array(Int32), s Array(Nullable(String)), "
                 "aa Array(Array(UInt16))) ENGINE = MergeTree ORDER BY k")
    sink.insert("csv_arrays", merge_blocks(SPECS, blocks))
    result = sink.query("SELECT k, i, s, aa FROM csv_arrays ORDER BY k")
    assert [tuple(row) for row in result.rows] == EXPECTED
    # IPv4 does not exist in ClickHouse 18.16: that column is left out here.
    parsed = run(C, CLICKHOUSE_COLUMNS, [CLICKHOUSE_CSV])[1]
    keep = [i for i, spec in enumerate(CLICKHOUSE_COLUMNS) if spec.name != "i"]
    columns = [CLICKHOUSE_COLUMNS[i] for i in keep]
    block = Block(parsed.num_rows, [parsed.columns[i] for i in keep], [])
    body = ", ".join(f"{spec.name} {spec.ch_type}" for spec in columns)
    sink.execute(f"CREATE TABLE ch_csv ({body}) ENGINE = MergeTree ORDER BY tuple()")
    sink.insert("ch_csv", encode_block(columns, block))
    result = sink.query("SELECT a, s, n, u, arrayMap(x -> toString(x), d), "
                        "arrayMap(x -> toString(x, 'UTC'), t), "
                        "arrayMap(x -> toFloat64(x), dec) FROM ch_csv")
    assert [tuple(row) for row in result.rows] == [
        ([1, 2], ["a", "b'c", 'q"x', "tab\there", "\\"], [[1], [2, 3]], [None, 1],
         ["2024-01-02"], ["2024-01-02 03:04:05"], [1.5])]
