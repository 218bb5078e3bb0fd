"""CSV parsing, every case on both implementations and in every chunking (style guide 2.5).

Each case gives the columns, the body, the parser options, the stored rows (decoded)
and the quarantined records as ``(record, column, code, value)``; every body is also
fed one byte at a time and split at every offset (:func:`parsers.parse`).
"""

from __future__ import annotations

from array import array
from types import ModuleType
from typing import Any

import pytest

from parsers import col, errors, parse, parser_module, rows
from tinyingest.errors import ErrorCode
from tinyingest.schema import ColumnSpec

__all__ = ["parser_module"]  # the fixture, imported for pytest

E = ErrorCode

# a Int32, b String, c Nullable(Float64); CSV maps by position or header name.
ABC = [col("Int32", None, "a"), col("String", None, "b"), col("Nullable(Float64)", None, "c")]


def check(module: ModuleType, columns: list[ColumnSpec], body: bytes,
          expected_rows: list[tuple[Any, ...]], expected_errors: list[tuple[bytes, int, int, bytes]],
          **options: Any) -> None:
    result = parse(module, "csv", columns, body, **options)
    assert rows(columns, result) == expected_rows
    assert errors(result) == [(line, column, int(code), value)
                              for line, column, code, value in expected_errors]


def test_plain_records(parser_module: ModuleType) -> None:
    check(parser_module, ABC, b"1,hello,1.5\n-2,,0\n", [(1, b"hello", 1.5), (-2, b"", 0.0)], [])


def test_quoting(parser_module: ModuleType) -> None:
    body = (b'2,"a,b",2\n'
            b'3,"say ""hi""",\n'
            b'"4","line1\nline2",3\n'
            b'5,"a\r\nb",""\n'
            b'6,"",-1e3\n'
            b'7,"""",\n')
    check(parser_module, ABC, body, [
        (2, b"a,b", 2.0), (3, b'say "hi"', None), (4, b"line1\nline2", 3.0),
        (6, b"", -1000.0), (7, b'"', None),
    ], [(b'5,"a\r\nb",""', 2, E.BAD_VALUE, b"")])  # a quoted "" is text, not NULL


def test_crlf_lf_and_blank_records(parser_module: ModuleType) -> None:
    check(parser_module, ABC, b"\r\n1,x,1\r\n\n2,y,2\n\r\n3,z,3", [
        (1, b"x", 1.0), (2, b"y", 2.0), (3, b"z", 3.0)], [])


def test_bom(parser_module: ModuleType) -> None:
    bom = b"\xef\xbb\xbf"
    check(parser_module, ABC, bom + b"a,b,c\n1,x,\n", [(1, b"x", None)], [])
    check(parser_module, ABC, bom + b"1,x,\n" + bom + b"2,y,\n", [(1, b"x", None)],
          [(bom + b"2,y,", 0, E.BAD_VALUE, bom + b"2")])


# -- header detection -------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"a,b,c\n1,x,2.5\n", b"c,a,b\n2.5,1,x\n",
                                  b'"b","c","a"\r\nx,2.5,1\r\n'])
def test_header_maps_by_name(parser_module: ModuleType, body: bytes) -> None:
    check(parser_module, ABC, body, [(1, b"x", 2.5)], [])


def test_header_reordered_with_extra_columns(parser_module: ModuleType) -> None:
    body = b'z,"b",a,c,y\r\n0,x,1,2,9\r\nq,"y,z",-3,,\r\n1,2,3\r\n'
    check(parser_module, ABC, body, [(1, b"x", 2.0), (-3, b"y,z", None)],
          [(b"1,2,3", -1, E.FIELD_COUNT, b"expected 5, got 3")])


def test_header_must_name_every_column(parser_module: ModuleType) -> None:
    # Not a header: it is a data row (and a bad one).
    check(parser_module, ABC, b"a,b,x\n1,y,2\n", [(1, b"y", 2.0)],
          [(b"a,b,x", 0, E.BAD_VALUE, b"a")])


def test_positional_without_header(parser_module: ModuleType) -> None:
    check(parser_module, ABC, b"1,a,2\n3,b,\n", [(1, b"a", 2.0), (3, b"b", None)], [])


@pytest.mark.parametrize(("header", "expected_rows", "expected_errors"), [
    (None, [(1, b"x", 2.0)], []),
    (True, [(1, b"x", 2.0)], []),
    (False, [(1, b"x", 2.0)], [(b"b,a,c", 0, E.BAD_VALUE, b"b")]),
])
def test_header_option(parser_module: ModuleType, header: bool | None,
                       expected_rows: list[tuple[Any, ...]],
                       expected_errors: list[tuple[bytes, int, int, bytes]]) -> None:
    body = b"b,a,c\nx,1,2\n" if header is not False else b"b,a,c\n1,x,2\n"
    check(parser_module, ABC, body, expected_rows, expected_errors, header=header)


def test_forced_header_that_does_not_name_the_columns(parser_module: ModuleType) -> None:
    # header=True skips the first record even then (this used to be parsed as data).
    check(parser_module, ABC, b"id,name,score\n1,x,2\n", [(1, b"x", 2.0)], [], header=True)


def test_header_split_across_chunks_then_data(parser_module: ModuleType) -> None:
    check(parser_module, ABC, b'"a","b","c"\n"1","two\nlines",3\n',
          [(1, b"two\nlines", 3.0)], [])


# -- dialect ------------------------------------------------------------------------------------


@pytest.mark.parametrize("delimiter", [b";", b"\t", b"|", b"\x00"])
def test_delimiter(parser_module: ModuleType, delimiter: bytes) -> None:
    body = b"1%sx,y%s1.5\n2%s\"q%sq\"%s\n" % (delimiter, delimiter, delimiter, delimiter, delimiter)
    check(parser_module, ABC, body, [(1, b"x,y", 1.5), (2, b"q" + delimiter + b"q", None)], [],
          delimiter=delimiter)


@pytest.mark.parametrize("delimiter", [b'"', b"\n", b"\r", b",,", b""])
def test_bad_delimiter(parser_module: ModuleType, delimiter: bytes) -> None:
    with pytest.raises(ValueError):
        parser_module.CSVParser(ABC, delimiter=delimiter)


def test_escapechar(parser_module: ModuleType) -> None:
    body = (b"1,a\\,b,2\n"
            b'2,"q\\"q",\n'
            b"3,line\\\nbreak,\n"
            b"4,back\\\\slash,\n"
            b"5,\\N,\n")
    check(parser_module, ABC, body, [
        (1, b"a,b", 2.0), (2, b'q"q', None), (3, b"line\nbreak", None), (4, b"back\\slash", None),
        (5, b"N", None),
    ], [], escapechar=b"\\")


def test_without_escapechar_backslash_is_literal(parser_module: ModuleType) -> None:
    check(parser_module, ABC, b"1,a\\tb,\n", [(1, b"a\\tb", None)], [])


# -- bad records ----------------------------------------------------------------------------------


def test_ragged_records(parser_module: ModuleType) -> None:
    check(parser_module, ABC, b"1,x\n1,x,2,3\n\n4\n5,y,6\n", [(5, b"y", 6.0)], [
        (b"1,x", -1, E.FIELD_COUNT, b"expected 3, got 2"),
        (b"1,x,2,3", -1, E.FIELD_COUNT, b"expected 3, got 4"),
        (b"4", -1, E.FIELD_COUNT, b"expected 3, got 1"),
    ])


def test_unterminated_quote_swallows_the_rest(parser_module: ModuleType) -> None:
    check(parser_module, ABC, b'1,x,1\n2,"abc\n3,y,3\n', [(1, b"x", 1.0)],
          [(b'2,"abc\n3,y,3\n', -1, E.BAD_CSV, b"")])


@pytest.mark.parametrize("record", [b'1,"a"b,2', b'1,"a" ,2', b'"1"x,a,2', b'1,a""b,2'])
def test_malformed_quotes(parser_module: ModuleType, record: bytes) -> None:
    check(parser_module, ABC, record + b"\n9,ok,\n", [(9, b"ok", None)],
          [(record, -1, E.BAD_CSV, b"")])


def test_odd_quote_in_unquoted_field_opens_a_quote(parser_module: ModuleType) -> None:
    # Framing counts quotes: the newline after a"b is quoted, so the record runs on.
    check(parser_module, ABC, b'1,a"b,2\n9,ok,\n', [],
          [(b'1,a"b,2\n9,ok,\n', -1, E.BAD_CSV, b"")])


def test_empty_unquoted_fields(parser_module: ModuleType) -> None:
    columns = [col("String", None, "s"), col("Nullable(String)", None, "ns"),
               col("Int8", None, "d", default="7"), col("Nullable(Int8)", None, "nd", default="5"),
               col("Date", None, "dd", default="'1970-01-03'")]
    check(parser_module, columns, b',,,,\n"","","","",""\n', [(b"", None, 7, None, 2)], [
        (b'"","","","",""', 2, E.BAD_VALUE, b""),
    ])


@pytest.mark.parametrize("ch_type", ["Int64", "UInt8", "Float32", "Date", "DateTime"])
def test_empty_field_into_number_without_default_is_an_error(parser_module: ModuleType,
                                                              ch_type: str) -> None:
    check(parser_module, [col(ch_type, None, "n"), col("String", None, "s")], b",x\n", [],
          [(b",x", 0, E.BAD_VALUE, b"")])


def test_backslash_n_is_null(parser_module: ModuleType) -> None:
    columns = [col("Nullable(Int32)", None, "n"), col("String", None, "s")]
    check(parser_module, columns, b'\\N,x\n1,"\\N"\n1,\\N\n2,\\Nx\n', [
        (None, b"x"), (1, b"\\N"), (2, b"\\Nx")], [(b"1,\\N", 1, E.NULL, b"\\N")])


def test_backslash_n_into_a_column_with_default_is_the_default(parser_module: ModuleType) -> None:
    # As JSON null (and ClickHouse's input_format_null_as_default): the DEFAULT, if any.
    columns = [col("Int32", None, "n", default="3"), col("String", None, "s")]
    check(parser_module, columns, b'\\N,x\n1,\\N\n', [(3, b"x")], [(b"1,\\N", 1, E.NULL, b"\\N")])


def test_empty_field_with_expression_default_is_left_to_clickhouse(
        parser_module: ModuleType) -> None:
    columns = [col("Int8", None, "a"), col("DateTime", None, "t", default="now()")]
    check(parser_module, columns, b"1,5\n2,\n3,\\N\n4,\"\"\n", [(1, 5), (2, 0), (3, 0)],
          [(b'4,""', 1, E.BAD_VALUE, b"")])
    parser = parser_module.CSVParser(columns)
    parser.feed(b"1,5\n2,\n3,\\N\n")
    parser.finish()
    assert array("Q", parser.take_block().omitted).tolist() == [0, 1, 1]


def test_record_with_fewer_fields_is_quarantined(parser_module: ModuleType) -> None:
    # Not padded with defaults (Tinybird and ClickHouse's CSV both refuse the record).
    columns = [col("Int8", None, "a"), col("Nullable(String)", None, "b"),
               col("Int8", None, "c", default="1")]
    check(parser_module, columns, b"1,x,2\n1,x\n1\n", [(1, b"x", 2)], [
        (b"1,x", -1, E.FIELD_COUNT, b"expected 3, got 2"),
        (b"1", -1, E.FIELD_COUNT, b"expected 3, got 1")])


def test_nul_and_high_bit_bytes(parser_module: ModuleType) -> None:
    columns = [col("String", None, "s"), col("LowCardinality(String)", None, "l")]
    text = "é€😀".encode()
    check(parser_module, columns, b'a\x00b,"\x00"\n' + text + b"," + text + b"\n\xff,x\nx,\xed\xa0\x80\n"
          + b"\xc0\xaf,x\n", [(b"a\x00b", b"\x00"), (text, text)], [
              (b"\xff,x", 0, E.INVALID_UTF8, b"\xff"),
              (b"x,\xed\xa0\x80", 1, E.INVALID_UTF8, b"\xed\xa0\x80"),
              (b"\xc0\xaf,x", 0, E.INVALID_UTF8, b"\xc0\xaf"),
          ])


def test_values_are_not_trimmed(parser_module: ModuleType) -> None:
    check(parser_module, ABC, b" 1,x,\n1, x , 2\n", [], [
        (b" 1,x,", 0, E.BAD_VALUE, b" 1"), (b"1, x , 2", 2, E.BAD_VALUE, b" 2")])


def test_types(parser_module: ModuleType) -> None:
    columns = [col("UInt8", None, "u"), col("Int64", None, "i"), col("Float32", None, "f"),
               col("Date", None, "d"), col("DateTime", None, "t")]
    body = (b"255,-9223372036854775808,0.5,2024-01-02,2024-01-02 03:04:05\n"
            b"256,0,0,1970-01-01,0\n"
            b"0,9223372036854775808,0,1970-01-01,0\n"
            b"0,0,1e39,1970-01-01,0\n"
            b"0,0,0,02.01.2024,0\n"
            b"true,false,.5,1970-01-02,2106-02-07 06:28:16\n")
    check(parser_module, columns, body, [(255, -(2**63), 0.5, 19724, 1704164645)], [
        (b"256,0,0,1970-01-01,0", 0, E.OUT_OF_RANGE, b"256"),
        (b"0,9223372036854775808,0,1970-01-01,0", 1, E.OUT_OF_RANGE, b"9223372036854775808"),
        (b"0,0,1e39,1970-01-01,0", 2, E.OUT_OF_RANGE, b"1e39"),
        (b"0,0,0,02.01.2024,0", 3, E.BAD_VALUE, b"02.01.2024"),
        (b"true,false,.5,1970-01-02,2106-02-07 06:28:16", 4, E.OUT_OF_RANGE,
         b"2106-02-07 06:28:16"),
    ])


# -- framing ---------------------------------------------------------------------------------------


def test_records_over_max_row_bytes(parser_module: ModuleType) -> None:
    long_record = b'1,"' + b"x" * 30 + b'\n' + b"y" * 10 + b'",'
    body = b"1,a,\n" + long_record + b"\n2,b,\n" + long_record
    check(parser_module, ABC, body, [(1, b"a", None), (2, b"b", None)], [
        (long_record[:24], -1, E.ROW_TOO_LONG, b""), (long_record[:24], -1, E.ROW_TOO_LONG, b""),
    ], max_row_bytes=24)


def test_first_record_too_long_then_header_is_still_detected(parser_module: ModuleType) -> None:
    check(parser_module, ABC, b"x" * 40 + b"\nb,a,c\ny,1,\n", [(1, b"y", None)],
          [(b"x" * 24, -1, E.ROW_TOO_LONG, b"")], max_row_bytes=24)


def test_feed_counts_records(parser_module: ModuleType) -> None:
    parser = parser_module.CSVParser(ABC)
    assert parser.feed(b"a,b,c\n1,x,") == 0  # the header is not a row
    assert parser.feed(b"\n\n2,\"y\n") == 1
    assert parser.feed(b'z",\n3') == 1
    assert parser.finish() == 1
    block = parser.take_block()
    assert block.num_rows == 2 and [e.code for e in block.errors] == [E.FIELD_COUNT]


def test_columns_property(parser_module: ModuleType) -> None:
    assert parser_module.CSVParser(ABC).columns == ABC
