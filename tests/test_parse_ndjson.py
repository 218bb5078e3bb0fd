"""NDJSON parsing, every case on both implementations and in every chunking (style guide 2.5).

Each case gives the columns, the body, the stored rows (decoded) and the quarantined
rows as ``(line, column, code, value)``. :func:`parsers.parse` also feeds the body one
byte at a time and split at every offset, and requires the same block each time.
"""

from __future__ import annotations

import calendar
import datetime
import struct
from array import array
from types import ModuleType
from typing import Any

import pytest

from parsers import col, errors, make_parser, parse, parser_module, rows, run
from tinyingest.errors import ErrorCode, row_error_message
from tinyingest.schema import ColumnSpec, SchemaError

__all__ = ["parser_module"]  # the fixture, imported for pytest

E = ErrorCode


def check(module: ModuleType, columns: list[ColumnSpec], body: bytes,
          expected_rows: list[tuple[Any, ...]], expected_errors: list[tuple[bytes, int, int, bytes]],
          **options: Any) -> None:
    result = parse(module, "ndjson", columns, body, **options)
    assert rows(columns, result) == expected_rows
    assert errors(result) == [(line, column, int(code), value)
                              for line, column, code, value in expected_errors]


def lines(*rows: bytes) -> bytes:
    return b"".join(row + b"\n" for row in rows)


def f32(value: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", value))[0])


def epoch(text: str) -> int:
    return calendar.timegm(datetime.datetime.fromisoformat(text).utctimetuple())


def days(text: str) -> int:
    return (datetime.date.fromisoformat(text) - datetime.date(1970, 1, 1)).days


# -- integers ----------------------------------------------------------------------------

INT_BOUNDS = [("Int8", -(2**7), 2**7 - 1), ("Int16", -(2**15), 2**15 - 1),
              ("Int32", -(2**31), 2**31 - 1), ("Int64", -(2**63), 2**63 - 1),
              ("UInt8", 0, 2**8 - 1), ("UInt16", 0, 2**16 - 1), ("UInt32", 0, 2**32 - 1),
              ("UInt64", 0, 2**64 - 1)]


@pytest.mark.parametrize(("ch_type", "lo", "hi"), INT_BOUNDS, ids=[b[0] for b in INT_BOUNDS])
def test_int_bounds(parser_module: ModuleType, ch_type: str, lo: int, hi: int) -> None:
    columns = [col(ch_type)]
    body = lines(*(b'{"v":%d}' % n for n in (lo, hi, lo - 1, hi + 1)),
                 b'{"v":"%d"}' % hi, b'{"v":"%d"}' % (hi + 1))
    check(parser_module, columns, body, [(lo,), (hi,), (hi,)], [
        (b'{"v":%d}' % (lo - 1), 0, E.OUT_OF_RANGE, b"%d" % (lo - 1)),
        (b'{"v":%d}' % (hi + 1), 0, E.OUT_OF_RANGE, b"%d" % (hi + 1)),
        (b'{"v":"%d"}' % (hi + 1), 0, E.OUT_OF_RANGE, b"%d" % (hi + 1)),
    ])


def test_int_texts(parser_module: ModuleType) -> None:
    body = lines(b'{"v":true}', b'{"v":false}', b'{"v":-0}', b'{"v":"+12"}', b'{"v":"007"}',
                 b'{"v":1.0}', b'{"v":1e2}', b'{"v":"1_0"}', b'{"v":" 1"}', b'{"v":""}',
                 b'{"v":"-"}', b'{"v":"12a"}', b'{"v":"' + b"9" * 40 + b'x"}',
                 b'{"v":' + b"9" * 40 + b"}")
    check(parser_module, [col("Int32")], body, [(1,), (0,), (0,), (12,), (7,)], [
        (b'{"v":1.0}', 0, E.BAD_VALUE, b"1.0"),
        (b'{"v":1e2}', 0, E.BAD_VALUE, b"1e2"),
        (b'{"v":"1_0"}', 0, E.BAD_VALUE, b"1_0"),
        (b'{"v":" 1"}', 0, E.BAD_VALUE, b" 1"),
        (b'{"v":""}', 0, E.BAD_VALUE, b""),
        (b'{"v":"-"}', 0, E.BAD_VALUE, b"-"),
        (b'{"v":"12a"}', 0, E.BAD_VALUE, b"12a"),
        (b'{"v":"' + b"9" * 40 + b'x"}', 0, E.BAD_VALUE, b"9" * 40 + b"x"),
        (b'{"v":' + b"9" * 40 + b"}", 0, E.OUT_OF_RANGE, b"9" * 40),
    ])


def test_unsigned_negative_zero_and_negative(parser_module: ModuleType) -> None:
    check(parser_module, [col("UInt64")], lines(b'{"v":-0}', b'{"v":-1}'), [(0,)],
          [(b'{"v":-1}', 0, E.OUT_OF_RANGE, b"-1")])


@pytest.mark.parametrize("ch_type", ["Int64", "UInt8", "DateTime", "Date"])
def test_huge_number_is_out_of_range_not_a_crash(parser_module: ModuleType, ch_type: str) -> None:
    # Found by this suite: the reference raised ValueError from int() (> 4300 digits).
    digits = b"1" * 5000
    body = b'{"v":' + digits + b'}\n{"v":"' + digits + b'"}\n'
    for chunks in ([body], [body[:100], body[100:]]):  # 5 kB: not every offset
        out = run(parser_module, "ndjson", [col(ch_type)], chunks)
        assert out[1] == 0
        assert [(c, code, value) for _, c, code, value in out[3]] == [
            (0, E.OUT_OF_RANGE, digits[:256])] * 2


# -- floats ------------------------------------------------------------------------------


def test_float64(parser_module: ModuleType) -> None:
    body = lines(b'{"v":1.5}', b'{"v":-0.0}', b'{"v":1e308}', b'{"v":"1.5"}', b'{"v":".5"}',
                 b'{"v":"5."}', b'{"v":"+2E-3"}', b'{"v":1e-400}', b'{"v":7}', b'{"v":1e400}',
                 b'{"v":-1e400}', b'{"v":"NaN"}', b'{"v":"inf"}', b'{"v":"Infinity"}',
                 b'{"v":"1e"}', b'{"v":true}', b'{"v":"0x10"}', b'{"v":"1,5"}')
    result = parse(parser_module, "ndjson", [col("Float64")], body)
    assert rows([col("Float64")], result) == [(1.5,), (-0.0,), (1e308,), (1.5,), (0.5,), (5.0,),
                                              (0.002,), (0.0,), (7.0,)]
    assert struct.pack("<d", -0.0) == result[2][0][0][8:16]  # the sign of zero is kept
    assert errors(result) == [
        (b'{"v":1e400}', 0, E.OUT_OF_RANGE, b"1e400"),
        (b'{"v":-1e400}', 0, E.OUT_OF_RANGE, b"-1e400"),
        (b'{"v":"NaN"}', 0, E.BAD_VALUE, b"NaN"),
        (b'{"v":"inf"}', 0, E.BAD_VALUE, b"inf"),
        (b'{"v":"Infinity"}', 0, E.BAD_VALUE, b"Infinity"),
        (b'{"v":"1e"}', 0, E.BAD_VALUE, b"1e"),
        (b'{"v":true}', 0, E.BAD_VALUE, b"true"),
        (b'{"v":"0x10"}', 0, E.BAD_VALUE, b"0x10"),
        (b'{"v":"1,5"}', 0, E.BAD_VALUE, b"1,5"),
    ]


def test_float32(parser_module: ModuleType) -> None:
    body = lines(b'{"v":0.1}', b'{"v":3.4e38}', b'{"v":-3.4e38}', b'{"v":1e-50}',
                 b'{"v":3.5e38}', b'{"v":1e400}', b'{"v":-1e39}')
    check(parser_module, [col("Float32")], body,
          [(f32(0.1),), (f32(3.4e38),), (f32(-3.4e38),), (0.0,)], [
              (b'{"v":3.5e38}', 0, E.OUT_OF_RANGE, b"3.5e38"),
              (b'{"v":1e400}', 0, E.OUT_OF_RANGE, b"1e400"),
              (b'{"v":-1e39}', 0, E.OUT_OF_RANGE, b"-1e39"),
          ])


def test_long_float_text(parser_module: ModuleType) -> None:
    # Longer than the compiled parser's 128-byte stack buffer.
    text = b"0." + b"0" * 300 + b"15"
    check(parser_module, [col("Float64")], lines(b'{"v":' + text + b"}", b'{"v":"1' + b"0" * 200
                                                 + b'"}'), [(1.5e-301,), (1e200,)], [])


@pytest.mark.parametrize("token", [b"NaN", b"Infinity", b"-Infinity", b"nan", b"inf"])
def test_nan_infinity_tokens_are_invalid_json(parser_module: ModuleType, token: bytes) -> None:
    row = b'{"v":' + token + b"}"
    check(parser_module, [col("Float64")], lines(row), [], [(row, -1, E.INVALID_JSON, b"")])


# -- strings -----------------------------------------------------------------------------


def test_string_escapes(parser_module: ModuleType) -> None:
    body = lines(
        rb'{"v":"a\"b\\c\/d\b\f\n\r\t"}',
        rb'{"v":"\u00e9\u20ac\ud83d\ude00"}',
        rb'{"v":"x\u0000y"}',
        '{"v":"é€😀"}'.encode(),
        rb'{"v":"\uD834\uDD1E"}',
        b'{"v":""}',
        rb'{"\u0076":"escaped key"}',
    )
    check(parser_module, [col("String")], body, [
        (b'a"b\\c/d\b\f\n\r\t',), ("é€😀".encode(),), (b"x\x00y",), ("é€😀".encode(),),
        ("\U0001d11e".encode(),), (b"",), (b"escaped key",),
    ], [])


def test_string_from_numbers_literals_objects_arrays(parser_module: ModuleType) -> None:
    body = lines(b'{"v":12.50}', b'{"v":-0}', b'{"v":true}', b'{"v":false}',
                 b'{"v" : { "x" : [ 1 , 2 , "a b" ] , "y":{ } } }', b'{"v":[ ]}',
                 b'{"v":[1, "\\" ]", {"k": null}]}')
    check(parser_module, [col("String")], body, [
        (b"12.50",), (b"-0",), (b"true",), (b"false",), (b'{"x":[1,2,"a b"],"y":{}}',),
        (b"[]",), (b'[1,"\\" ]",{"k":null}]',),
    ], [])


@pytest.mark.parametrize(("row", "column", "code"), [
    (b'{"v":"\xff"}', 0, E.INVALID_UTF8),
    (b'{"v":"\xc0\xaf"}', 0, E.INVALID_UTF8),  # overlong '/'
    (b'{"v":"\xed\xa0\x80"}', 0, E.INVALID_UTF8),  # UTF-8-encoded surrogate
    (b'{"v":"\xf4\x90\x80\x80"}', 0, E.INVALID_UTF8),  # > U+10FFFF
    (b'{"v":"\xc3"}', 0, E.INVALID_UTF8),  # truncated sequence
    (rb'{"v":"\ud800"}', 0, E.INVALID_UTF8),  # lone high surrogate
    (rb'{"v":"\udc00"}', 0, E.INVALID_UTF8),  # lone low surrogate
    (rb'{"v":"\ud800\u0041"}', 0, E.INVALID_UTF8),
    (rb'{"v":"\ud800x"}', 0, E.INVALID_UTF8),
    (rb'{"v":"\ud800\n"}', 0, E.INVALID_UTF8),
    (b'{"x":"\xff","v":"a"}', -1, E.INVALID_UTF8),  # in a value no column reads
    (b'{"\xff":1,"v":"a"}', -1, E.INVALID_UTF8),  # in a key
    (rb'{"\udc00":1}', -1, E.INVALID_UTF8),
    (b'{"v":"a\x00b"}', -1, E.INVALID_JSON),  # raw control characters
    (b'{"v":"a\tb"}', -1, E.INVALID_JSON),
    (b'{"v":"a\x1fb"}', -1, E.INVALID_JSON),
    (rb'{"v":"\x41"}', -1, E.INVALID_JSON),
    (rb'{"v":"\u00g1"}', -1, E.INVALID_JSON),
    (rb'{"v":"\ud800\u12"}', -1, E.INVALID_JSON),
    (b'{"v":"\xff\\q"}', -1, E.INVALID_JSON),  # a syntax error wins over bad UTF-8
])
def test_string_rejected(parser_module: ModuleType, row: bytes, column: int, code: int) -> None:
    check(parser_module, [col("String")], lines(row, b'{"v":"ok"}'), [(b"ok",)],
          [(row, column, code, b"")])


def test_high_bit_bytes_in_valid_utf8(parser_module: ModuleType) -> None:
    text = "\x80\u07ff\u0800\uffff\U00010000\U0010ffff".encode()
    check(parser_module, [col("String")], lines(b'{"v":"' + text + b'"}'), [(text,)], [])


def test_low_cardinality_string(parser_module: ModuleType) -> None:
    columns = [col("LowCardinality(String)", "$.a", "a"),
               col("LowCardinality(Nullable(String))", "$.b", "b")]
    check(parser_module, columns, lines(b'{"a":"x","b":"y"}', b'{"a":"x","b":null}', b"{}",
                                        b'{"a":"z"}'),
          [(b"x", b"y"), (b"x", None), (b"z", None)], [(b"{}", 0, E.MISSING, b"")])


# -- Date and DateTime ---------------------------------------------------------------------

DATETIME_ACCEPTED = [
    ("2024-01-02", epoch("2024-01-02T00:00:00")),
    ("2024-01-02T03:04", epoch("2024-01-02T03:04:00")),
    ("2024-01-02 03:04", epoch("2024-01-02T03:04:00")),
    ("2024-01-02T03:04:05", epoch("2024-01-02T03:04:05")),
    ("2024-01-02 03:04:05.999999", epoch("2024-01-02T03:04:05")),
    ("2024-01-02T03:04:05Z", epoch("2024-01-02T03:04:05")),
    ("2024-01-02T03:04Z", epoch("2024-01-02T03:04:00")),
    ("2024-01-02T03:04:05.5Z", epoch("2024-01-02T03:04:05")),
    ("2024-01-02T03:04:05+01", epoch("2024-01-02T02:04:05")),
    ("2024-01-02T03:04:05+0130", epoch("2024-01-02T01:34:05")),
    ("2024-01-02T03:04:05-01:30", epoch("2024-01-02T04:34:05")),
    ("2024-01-02T03:04-05", epoch("2024-01-02T08:04:00")),
    ("1970-01-01T01:00:00+01:00", 0),
    ("2024-02-29", epoch("2024-02-29T00:00:00")),
    ("2106-02-07T06:28:15", 2**32 - 1),
    ("1704164645", 1704164645),
    ("1704164645.9", 1704164645),
    ("1704164645123", 1704164645),
    ("99999999999", None),  # seconds (< 1e11), but past 2106: see DATETIME_REJECTED
    ("0", 0),
    ("4294967295", 2**32 - 1),
    ("4294967295999", 2**32 - 1),
]
DATETIME_REJECTED = [
    ("02.01.2024", E.BAD_VALUE), ("2024-13-45", E.BAD_VALUE), ("0000-00-00", E.BAD_VALUE),
    ("2023-02-29", E.BAD_VALUE), ("2024-01-32", E.BAD_VALUE), ("2024-1-2", E.BAD_VALUE),
    ("2024-01-02T24:00", E.BAD_VALUE), ("2024-01-02T03:60", E.BAD_VALUE),
    ("2024-01-02T03:04:61", E.BAD_VALUE), ("2024-01-02T03:04:05.", E.BAD_VALUE),
    ("2024-01-02T03:04:05+24", E.BAD_VALUE), ("2024-01-02T03:04:05+01:60", E.BAD_VALUE),
    ("2024-01-02T03:04:05+1", E.BAD_VALUE), ("2024-01-02T03:04:05Z+01", E.BAD_VALUE),
    ("2024-01-02X03:04", E.BAD_VALUE), ("2024-01-02T3:04", E.BAD_VALUE),
    ("2024-01-02 ", E.BAD_VALUE), ("", E.BAD_VALUE), ("-1", E.BAD_VALUE), ("1e9", E.BAD_VALUE),
    ("+100", E.BAD_VALUE), ("abc", E.BAD_VALUE), ("2024/01/02", E.BAD_VALUE),
    ("1969-12-31T23:59:59", E.OUT_OF_RANGE), ("1970-01-01T00:00:00+00:01", E.OUT_OF_RANGE),
    ("2106-02-07T06:28:16", E.OUT_OF_RANGE), ("2107-01-01", E.OUT_OF_RANGE),
    ("0001-01-01", E.OUT_OF_RANGE), ("4294967296", E.OUT_OF_RANGE),
    ("4294967296000", E.OUT_OF_RANGE), ("99999999999", E.OUT_OF_RANGE),
]


def test_datetime_forms(parser_module: ModuleType) -> None:
    accepted = [(text, value) for text, value in DATETIME_ACCEPTED if value is not None]
    body = lines(*(b'{"v":"%s"}' % t.encode() for t, _ in accepted + DATETIME_REJECTED))
    check(parser_module, [col("DateTime")], body, [(value,) for _, value in accepted],
          [(b'{"v":"%s"}' % t.encode(), 0, code, t.encode()) for t, code in DATETIME_REJECTED])


def test_datetime_from_json_numbers(parser_module: ModuleType) -> None:
    body = lines(b'{"v":1704164645}', b'{"v":1704164645123}', b'{"v":1.5}', b'{"v":-1}',
                 b'{"v":1e9}')
    check(parser_module, [col("DateTime('UTC')")], body, [(1704164645,), (1704164645,), (1,)], [
        (b'{"v":-1}', 0, E.BAD_VALUE, b"-1"), (b'{"v":1e9}', 0, E.BAD_VALUE, b"1e9")])


def test_datetime_repeated_and_near_texts(parser_module: ModuleType) -> None:
    # The C converter remembers the last text and its value, and the last date: a
    # repeat, a text differing in one byte, a bad text and the empty text in between
    # must each be read on their own.
    texts = [b"2024-01-02 03:04:05", b"2024-01-02 03:04:05", b"2024-01-02 03:04:06",
             b"2024-01-02 03:04:05", b"2024-01-0x 03:04:05", b"2024-01-02 03:04:05",
             b"", b"2024-01-03 03:04:05", b"2024-01-02T03:04:05Z", b"2024-02-30 03:04:05"]
    body = lines(*(b'{"v":"%s","d":"%s"}' % (text, text[:10]) for text in texts))
    columns = [col("DateTime"), col("Nullable(Date)", "$.d", "d")]
    t0 = 1704164645
    day = 19724
    check(parser_module, columns, body,
          [(t0, day), (t0, day), (t0 + 1, day), (t0, day), (t0, day), (t0 + 86400, day + 1),
           (t0, day)], [
        (b'{"v":"2024-01-0x 03:04:05","d":"2024-01-0x"}', 0, E.BAD_VALUE,
         b"2024-01-0x 03:04:05"),
        (b'{"v":"","d":""}', 0, E.BAD_VALUE, b""),
        (b'{"v":"2024-02-30 03:04:05","d":"2024-02-30"}', 0, E.BAD_VALUE,
         b"2024-02-30 03:04:05"),
    ])


def test_date(parser_module: ModuleType) -> None:
    body = lines(b'{"v":"2024-01-02"}', b'{"v":"2024-01-02T23:30:00-05:00"}', b'{"v":"1970-01-01"}',
                 b'{"v":"2149-06-06"}', b'{"v":259200}', b'{"v":"259199999"}',
                 b'{"v":"1969-12-31"}', b'{"v":"2149-06-07"}', b'{"v":"2024-02-30"}',
                 b'{"v":"2024-01-02T25:00"}')
    check(parser_module, [col("Date")], body,
          [(days("2024-01-02"),), (days("2024-01-02"),), (0,), (65535,), (3,), (2999,)], [
              (b'{"v":"1969-12-31"}', 0, E.OUT_OF_RANGE, b"1969-12-31"),
              (b'{"v":"2149-06-07"}', 0, E.OUT_OF_RANGE, b"2149-06-07"),
              (b'{"v":"2024-02-30"}', 0, E.BAD_VALUE, b"2024-02-30"),
              (b'{"v":"2024-01-02T25:00"}', 0, E.BAD_VALUE, b"2024-01-02T25:00"),
          ])


# -- Nullable, missing values, DEFAULT ---------------------------------------------------


def test_nullable(parser_module: ModuleType) -> None:
    columns = [col("Nullable(Int16)", "$.i", "i"), col("Nullable(String)", "$.s", "s"),
               col("Nullable(Float64)", "$.f", "f"), col("Nullable(DateTime)", "$.t", "t")]
    check(parser_module, columns, lines(b'{"i":null,"s":null,"f":null,"t":null}', b"{}",
                                        b'{"i":5,"s":"","f":0.5,"t":"1970-01-01 00:00:09"}'),
          [(None, None, None, None), (None, None, None, None), (5, b"", 0.5, 9)], [])


def test_missing_is_default_literal_then_null(parser_module: ModuleType) -> None:
    columns = [col("Int32", "$.a", "a", default="7"), col("String", "$.b", "b", default="'it''s'"),
               col("Nullable(Int8)", "$.c", "c", default="-1"), col("Nullable(String)", "$.d", "d"),
               col("UInt8", "$.e", "e", default="0"), col("String", "$.f", "f", default="''"),
               col("Date", "$.h", "h", default="'1970-01-05'"),
               col("DateTime", "$.i", "i", default="'1970-01-01 00:01:00'")]
    # null: NULL for a Nullable column, the DEFAULT for the others (as missing).
    check(parser_module, columns, lines(b"{}", b'{"c":null,"a":null,"h":null}'), [
        (7, b"it's", -1, None, 0, b"", 4, 60), (7, b"it's", None, None, 0, b"", 4, 60),
    ], [])


@pytest.mark.parametrize("ch_type", ["UInt8", "String", "Float32", "DateTime", "Date",
                                     "LowCardinality(String)", "FixedString(2)", "UUID",
                                     "Enum8('a' = 1)", "Decimal(9, 2)", "IPv4"])
def test_missing_without_default_is_quarantined(parser_module: ModuleType, ch_type: str) -> None:
    # Tinybird quarantines the row; the gateway stored the type's zero ({} became a
    # 1970-01-01 row).
    columns = [col("Nullable(String)", "$.n", "n"), col(ch_type, "$.v", "v"),
               col("Int8", "$.k", "k", default="1")]
    result = parse(parser_module, "ndjson", columns,
                   lines(b"{}", b'{"n":"x","k":2}', b'{"v":null}', b'{"w":{"v":1}}'))
    assert result[1] == 0
    assert errors(result) == [
        (b"{}", 1, E.MISSING, b""), (b'{"n":"x","k":2}', 1, E.MISSING, b""),
        (b'{"v":null}', 1, E.NULL, b"null"), (b'{"w":{"v":1}}', 1, E.MISSING, b""),
    ]


def test_missing_reason_names_the_column() -> None:
    assert row_error_message(E.MISSING, "ts", "DateTime", b"") == \
        "missing value on column 'ts': DateTime is not Nullable and has no DEFAULT"


def test_null_into_non_nullable_is_quarantined(parser_module: ModuleType) -> None:
    columns = [col("String", "$.a", "a"), col("Int32", "$.b", "b", default="3")]
    check(parser_module, columns, lines(b'{"a":"x","b":null}', b'{"a":null,"b":1}',
                                        b'{"a":"y"}'),
          [(b"x", 3), (b"y", 3)], [(b'{"a":null,"b":1}', 0, E.NULL, b"null")])


def test_expression_default_is_left_to_clickhouse(parser_module: ModuleType) -> None:
    # The parser cannot compute now(): the zero is stored and the row's bit set, for
    # omit_missing to insert the row without the column. A null where the column is
    # Nullable is NULL, not the DEFAULT.
    columns = [col("Int8", "$.a", "a"), col("DateTime", "$.t", "t", default="now()"),
               col("Nullable(String)", "$.s", "s", default="concat('a', 'b')")]
    body = lines(b'{"a":1,"t":5,"s":"x"}', b'{"a":2}', b'{"a":3,"t":null,"s":null}',
                 b'{"t":1}', b'{"a":4,"s":"y"}')
    check(parser_module, columns, body,
          [(1, 5, b"x"), (2, 0, None), (3, 0, None), (4, 0, b"y")],
          [(b'{"t":1}', 0, E.MISSING, b"")])
    for chunks in ([body], [body[i : i + 1] for i in range(len(body))]):
        parser = make_parser(parser_module, "ndjson", columns)
        for chunk in chunks:
            parser.feed(chunk)
        parser.finish()
        block = parser.take_block()
        assert array("Q", block.omitted).tolist() == [0, 0b11, 0b01, 0b01]
        assert parser.take_block().omitted == b""
    # An Array: missing or null is [] here, and the row's bit is set.
    parser = make_parser(parser_module, "ndjson", [col("Array(Int8)", "$.r", "r", default="[1]")])
    parser.feed(lines(b'{"r":[2]}', b"{}", b'{"r":null}'))
    parser.finish()
    block = parser.take_block()
    assert block.columns[0].offsets == struct.pack("<3Q", 1, 1, 1)
    assert array("Q", block.omitted).tolist() == [0, 1, 1]
    # Without such a column there is no mask.
    assert make_parser(parser_module, "ndjson", [col("Int8")]).take_block().omitted is None


@pytest.mark.parametrize(("ch_type", "default"), [("Int8", "300"), ("UInt8", "'abc'"),
                                                  ("Date", "'2024-13-01'"), ("Float32", "1e39")])
def test_bad_default_is_a_schema_error(parser_module: ModuleType, ch_type: str,
                                       default: str) -> None:
    # The compiled parser freed uninitialised column buffers after this error (a crash)
    # when more columns followed the bad one.
    columns = [col(ch_type, "$.a", "a", default=default)] + [
        col("String", f"$.s{i}", f"s{i}") for i in range(20)]
    for _ in range(20):
        with pytest.raises(SchemaError, match="DEFAULT"):
            parser_module.NDJSONParser(columns)


def test_column_without_jsonpath_is_a_schema_error(parser_module: ModuleType) -> None:
    with pytest.raises(SchemaError, match="no jsonpath"):
        parser_module.NDJSONParser([col("String", None)])


# -- jsonpaths -----------------------------------------------------------------------------


def test_nested_paths(parser_module: ModuleType) -> None:
    columns = [col("Int32", "$.a.b", "ab", default="0"), col("String", "$.a", "a"),
               col("String", "$['a b']", "sp", default="''"),
               col("String", "$.a.c.d", "acd", default="''"),
               col("Int32", "$.a.b", "ab2", default="0")]
    body = lines(b'{"a":{"b":5,"c":{"d":"deep"}},"a b":"space"}', b'{"a":{}}', b'{"a":1}',
                 b'{"a":null,"x":{"a":{"b":9}}}', b'{"a":[{"b":1}]}')
    check(parser_module, columns, body, [
        (5, b'{"b":5,"c":{"d":"deep"}}', b"space", b"deep", 5),
        (0, b"{}", b"", b"", 0),
        (0, b"1", b"", b"", 0),
        (0, b'[{"b":1}]', b"", b"", 0),
    ], [(b'{"a":null,"x":{"a":{"b":9}}}', 1, E.NULL, b"null")])


def test_nested_paths_null_parent(parser_module: ModuleType) -> None:
    # A null or array where an object was expected: the leaves below are missing.
    columns = [col("Int32", "$.a.b", "ab", default="0"), col("Nullable(String)", "$.a", "a")]
    check(parser_module, columns, lines(b'{"a":null}', b'{"a":[{"b":1}]}', b'{"a":"s"}'),
          [(0, None), (0, b'[{"b":1}]'), (0, b"s")], [])


def test_whole_row_path(parser_module: ModuleType) -> None:
    columns = [col("String", "$", "row"), col("Int8", "$.a", "a", default="0")]
    check(parser_module, columns, lines(b' { "a" : 1 , "b" : [ 1 , "x y" ] , "c":{"d":null} } ',
                                        b"{}"),
          [(b'{"a":1,"b":[1,"x y"],"c":{"d":null}}', 1), (b"{}", 0)], [])


def test_whole_row_into_number_is_bad_value(parser_module: ModuleType) -> None:
    check(parser_module, [col("Int8", "$", "row")], lines(b'{ "a" : 1 }'), [],
          [(b'{ "a" : 1 }', 0, E.BAD_VALUE, b'{"a":1}')])


def test_object_into_number_is_bad_value(parser_module: ModuleType) -> None:
    check(parser_module, [col("Float64")], lines(b'{"v": [1, 2]}', b'{"v":{"x" : 1}}'), [], [
        (b'{"v": [1, 2]}', 0, E.BAD_VALUE, b"[1,2]"),
        (b'{"v":{"x" : 1}}', 0, E.BAD_VALUE, b'{"x":1}'),
    ])


def test_duplicate_keys(parser_module: ModuleType) -> None:
    columns = [col("Int8", "$.a", "a", default="0"), col("Int8", "$.b.c", "bc", default="0")]
    body = lines(b'{"a":1,"a":2}', b'{"b":{"c":1},"b":{"c":2}}', b'{"a":1,"x":1,"x":2}',
                 b'{"b":1,"b":{"c":3}}', b'{"a":1,"b":{"c":1,"c":null}}')
    check(parser_module, columns, body, [(1, 0), (0, 3)], [
        (b'{"a":1,"a":2}', 0, E.DUPLICATE_KEY, b""),
        (b'{"b":{"c":1},"b":{"c":2}}', 1, E.DUPLICATE_KEY, b""),
        (b'{"a":1,"b":{"c":1,"c":null}}', 1, E.DUPLICATE_KEY, b""),
    ])


def test_keys_in_changing_order_and_spellings(parser_module: ModuleType) -> None:
    # The C scan first compares each key with the one that followed in the last row:
    # other orders, unknown keys, a longer key sharing the prefix, escaped spellings and
    # a key that needs an escape (q\k) must still find (or miss) the right column.
    columns = [col("Int8", "$.ts", "ts", default="0"), col("Int8", "$.t", "t", default="0"),
               col("Int8", "$.g.x", "gx", default="0"), col("Int8", "$.q\\k", "bs", default="0")]
    body = lines(b'{"ts":1,"t":2,"g":{"x":3},"q\\\\k":4}', b'{"ts":1,"t":2,"g":{"x":3},"q\\\\k":4}',
                 b'{"t":5,"ts":6}', b'{"tsx":9,"ts":7,"zz":0,"t":8}', b'{"t\\u0073":1,"\\u0074":2}',
                 b'{"g":{"y":1,"x":4},"ts":3}', b'{"ts":1,"t\\u0073":2}', b'{"ts":1,"t":2,"t":3}')
    check(parser_module, columns, body, [(1, 2, 3, 4), (1, 2, 3, 4), (6, 5, 0, 0), (7, 8, 0, 0),
                                         (1, 2, 0, 0), (3, 0, 4, 0)], [
        (b'{"ts":1,"t\\u0073":2}', 0, E.DUPLICATE_KEY, b""),
        (b'{"ts":1,"t":2,"t":3}', 1, E.DUPLICATE_KEY, b""),
    ])


def test_long_value_in_error_is_truncated(parser_module: ModuleType) -> None:
    text = b"x" * 300
    check(parser_module, [col("Int8")], lines(b'{"v":"' + text + b'"}'), [],
          [(b'{"v":"' + text + b'"}', 0, E.BAD_VALUE, text[:256])])


# -- rows that are not JSON objects ----------------------------------------------------------


@pytest.mark.parametrize(("row", "code"), [
    (b"[1,2]", E.NOT_OBJECT), (b'"str"', E.NOT_OBJECT), (b"123", E.NOT_OBJECT),
    (b"null", E.NOT_OBJECT), (b" true ", E.NOT_OBJECT), (b"nul", E.INVALID_JSON),
    (b'{"v":1', E.INVALID_JSON), (b'{"v":1}}', E.INVALID_JSON), (b'{"v":1} x', E.INVALID_JSON),
    (b"{v:1}", E.INVALID_JSON), (b'{"v":1,}', E.INVALID_JSON), (b"[1,]", E.INVALID_JSON),
    (b'{"v":1}{}', E.INVALID_JSON), (b"\x00", E.INVALID_JSON), (b"\xef\xbb\xbf{}", E.INVALID_JSON),
    (b'["\xff"]', E.INVALID_UTF8), (b"[" * 65 + b"]" * 65, E.TOO_DEEP),
])
def test_bad_rows(parser_module: ModuleType, row: bytes, code: int) -> None:
    check(parser_module, [col("Int8")], lines(b'{"v":1}', row, b'{"v":2}'), [(1,), (2,)],
          [(row, -1, code, b"")])


def test_truncated_last_line(parser_module: ModuleType) -> None:
    check(parser_module, [col("Int8")], b'{"v":1}\n{"v":2}\n{"v":', [(1,), (2,)],
          [(b'{"v":', -1, E.INVALID_JSON, b"")])


def test_last_line_without_newline_is_parsed_at_finish(parser_module: ModuleType) -> None:
    check(parser_module, [col("Int8")], b'{"v":1}\n{"v":2}', [(1,), (2,)], [])


def test_nesting_depth(parser_module: ModuleType) -> None:
    # The row object is depth 1: 64 levels are accepted, 65 are not.
    ok = b'{"x":' + b"[" * 63 + b"]" * 63 + b',"v":1}'
    ok_objects = b'{"x":' + b'{"y":' * 63 + b"1" + b"}" * 63 + b',"v":2}'
    too_deep = b'{"x":' + b"[" * 64 + b"]" * 64 + b',"v":3}'
    too_deep_objects = b'{"x":' + b'{"y":' * 64 + b"1" + b"}" * 64 + b',"v":4}'
    check(parser_module, [col("Int8")], lines(ok, ok_objects, too_deep, too_deep_objects),
          [(1,), (2,)], [(too_deep, -1, E.TOO_DEEP, b""), (too_deep_objects, -1, E.TOO_DEEP, b"")])


def test_deep_nesting_does_not_recurse_without_bound(parser_module: ModuleType) -> None:
    row = b"[" * 100_000
    out = run(parser_module, "ndjson", [col("Int8")], [row + b'\n{"v":1}\n'])
    assert out[1] == 1 and [e[2] for e in out[3]] == [E.TOO_DEEP]


# -- framing ---------------------------------------------------------------------------------


def test_rows_over_max_row_bytes(parser_module: ModuleType) -> None:
    long_row = b'{"v":"' + b"x" * 40 + b'"}'
    exact = b'{"v":"' + b"y" * 24 + b'"}'  # 32 bytes: the limit itself is fine
    body = lines(b'{"v":"a"}', long_row, exact, long_row + b"    ", b'{"v":"b"}') + long_row
    check(parser_module, [col("String")], body, [(b"a",), (b"y" * 24,), (b"b",)], [
        (long_row[:32], -1, E.ROW_TOO_LONG, b""),
        (long_row[:32], -1, E.ROW_TOO_LONG, b""),
        (long_row[:32], -1, E.ROW_TOO_LONG, b""),
    ], max_row_bytes=32)


def test_long_row_is_not_buffered(parser_module: ModuleType) -> None:
    parser = parser_module.NDJSONParser([col("String")], max_row_bytes=64)
    assert parser.feed(b'{"v":"' + b"x" * 1000) == 0
    for _ in range(1000):
        assert parser.feed(b"x" * 1000) == 0
    assert parser.feed(b'"}\n{"v":"ok"}\n') == 2
    assert parser.finish() == 0
    block = parser.take_block()
    assert block.num_rows == 1
    assert [(e.line, e.code) for e in block.errors] == [(b'{"v":"' + b"x" * 58, E.ROW_TOO_LONG)]


def test_bom_only_at_start(parser_module: ModuleType) -> None:
    bom = b"\xef\xbb\xbf"
    check(parser_module, [col("Int8")], bom + lines(b'{"v":1}', bom + b'{"v":2}'), [(1,)],
          [(bom + b'{"v":2}', -1, E.INVALID_JSON, b"")])
    check(parser_module, [col("Int8")], bom, [], [])
    check(parser_module, [col("Int8")], bom + b'{"v":3}', [(3,)], [])
    check(parser_module, [col("Int8")], b"\xef\xbb", [], [(b"\xef\xbb", -1, E.INVALID_JSON, b"")])


def test_crlf_and_blank_lines(parser_module: ModuleType) -> None:
    body = b'\n\r\n  \t\n{"v":1}\r\n\r\n{"v":2}\n \n{"v":x}\r\n\n'
    check(parser_module, [col("Int8")], body, [(1,), (2,)],
          [(b'{"v":x}\r', -1, E.INVALID_JSON, b"")])


def test_feed_counts_rows(parser_module: ModuleType) -> None:
    parser = parser_module.NDJSONParser([col("Int8")])
    assert parser.feed(b'{"v":1}\n\n{"v":') == 1
    assert parser.feed(b'300}\n{"v":3}\n{') == 2
    assert parser.finish() == 1
    block = parser.take_block()
    assert (block.num_rows, len(block.errors)) == (2, 2)
    assert parser.take_block().num_rows == 0


def test_bodies_one_after_another_in_one_block(parser_module: ModuleType) -> None:
    # How SmallBodies uses one parser for many requests: feed + finish per body, and
    # num_rows before and after tells each body's good rows.
    parser = parser_module.NDJSONParser([col("Int8")], max_row_bytes=16)
    bodies = [
        (b'{"v":1}\n{"v":2}', 2, 2),  # no newline at the end: finish() ends the row
        (b'\xef\xbb\xbf{"v":3}\n{"v":300}\n', 2, 1),  # each body may start with a BOM
        (b'{"v":4, "pad": "longer than sixteen bytes"}\n{"v"', 2, 0),  # too long; cut
        (b"", 0, 0),
        (b'{"v":5}', 1, 1),  # the cut row of the last body did not leak into this one
    ]
    assert parser.num_rows == 0
    for body, ended, good in bodies:
        before = parser.num_rows
        assert parser.feed(body) + parser.finish() == ended
        assert parser.num_rows - before == good
    block = parser.take_block()
    assert (block.num_rows, block.columns[0].values) == (4, bytes([1, 2, 3, 5]))
    assert [(e.line, e.code) for e in block.errors] == [
        (b'{"v":300}', E.OUT_OF_RANGE),
        (b'{"v":4, "pad": "', E.ROW_TOO_LONG),
        (b'{"v"', E.INVALID_JSON)]
    assert parser.num_rows == 0


def test_take_block_between_feeds_and_reuse_after_finish(parser_module: ModuleType) -> None:
    columns = [col("Nullable(String)")]
    parser = parser_module.NDJSONParser(columns)
    parser.feed(b'{"v":"a"}\n{"v":')
    first = parser.take_block()
    parser.feed(b'"b"}\n{"v":null}')
    parser.finish()
    second = parser.take_block()
    assert first.num_rows == 1 and first.columns[0].values == b"a"
    assert second.num_rows == 2 and second.columns[0].values == b"b"
    assert second.columns[0].nulls == b"\x00\x01"
    # After finish() a new body may start, BOM included.
    parser.feed(b'\xef\xbb\xbf{"v":"c"}\n')
    third = parser.take_block()
    assert (third.num_rows, third.columns[0].values, third.errors) == (1, b"c", [])


def test_columns_property(parser_module: ModuleType) -> None:
    columns = [col("Int8", "$.a", "a"), col("String", "$.b", "b")]
    assert parser_module.NDJSONParser(columns).columns == columns


@pytest.mark.parametrize("length", range(1, 18))
def test_a_key_like_the_last_rows_key_is_not_taken_for_it(parser_module: ModuleType,
                                                          length: int) -> None:
    """Keys are predicted from the previous row and compared as words; every byte of the
    key counts. The compiled parser's masks once covered only a key's first bytes, so
    ``{"azzz": ...}`` after ``{"abcd": ...}`` filled column abcd, and ``{"abc": ...}``
    after it was refused as invalid JSON."""
    key = "abcdefghijklmnopq"[:length]
    columns = [col("String", f"$.{key}", "known", default="''"),
               col("String", "$.other", "other")]
    lookalikes = [key[:-1] + "Z", key[0] + "z" * (length - 1), key[:-1], key + "Z"]
    body = b"".join(b'{"%s": "%s", "other": "o"}\n' % (key.encode(), key.encode())
                    + b'{"%s": "wrong", "other": "o"}\n' % other.encode()
                    for other in lookalikes if other and other != key)
    result = parse(parser_module, "ndjson", columns, body)
    assert not errors(result)
    assert all(known in (key.encode(), b"") for known, _ in rows(columns, result)), \
        rows(columns, result)
