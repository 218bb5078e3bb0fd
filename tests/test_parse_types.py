"""Types beyond numbers/String/Date/DateTime: Bool, UUID, FixedString(N), Enum8/Enum16,
Date32, IPv4, DateTime64, Int128/UInt128/Int256/UInt256, Decimal and IPv6, in both
parsers (every split, NDJSON and CSV), against each other, and through the real servers
(ClickHouse 18.16 and chDB) as Native.
"""

from __future__ import annotations

import ipaddress
import json
import random
import struct
import time
import uuid
from array import array
from typing import Any

import pytest

from parsers import col, errors, implementation, parse, parser_module, run
from tinyingest.block import Block, ColumnData
from tinyingest.errors import ErrorCode
from tinyingest.native import encode_block
from tinyingest.schema import ColumnSpec, SchemaError, TypeCode, parse_type
from tinyingest.sinks import Sink

__all__ = ["parser_module"]  # the fixture, imported for pytest

BIG: dict[TypeCode, tuple[int, bool]] = {
    TypeCode.INT128: (16, True), TypeCode.UINT128: (16, False), TypeCode.INT256: (32, True),
    TypeCode.UINT256: (32, False), TypeCode.DECIMAL32: (4, True), TypeCode.DECIMAL64: (8, True),
    TypeCode.DECIMAL128: (16, True), TypeCode.DECIMAL256: (32, True),
}
BAD = int(ErrorCode.BAD_VALUE)
RANGE = int(ErrorCode.OUT_OF_RANGE)
ENUM8 = "Enum8('a' = 1, 'b' = 2, 'it''s' = -3, '' = 0)"
ENUM16 = "Enum16('low' = -1000, 'high' = 1000)"


def decode_values(spec: ColumnSpec, values: bytes, offsets: bytes | None,
                  nulls: bytes | None, num_rows: int) -> list[Any]:
    code = spec.type_code
    out: list[Any]
    if code is TypeCode.FIXED_STRING:
        assert offsets is not None
        bounds = list(array("q", offsets))
        assert bounds == [i * spec.length for i in range(num_rows + 1)]
        out = [values[i * spec.length : (i + 1) * spec.length] for i in range(num_rows)]
    elif code is TypeCode.UUID:
        out = []
        for i in range(num_rows):
            high, low = struct.unpack_from("<QQ", values, 16 * i)
            out.append(str(uuid.UUID(int=high << 64 | low)))
    elif code in BIG:
        size, signed = BIG[code]
        out = [int.from_bytes(values[i * size : (i + 1) * size], "little", signed=signed)
               for i in range(num_rows)]
    elif code is TypeCode.IPV6:
        out = [str(ipaddress.IPv6Address(values[16 * i : 16 * (i + 1)]))
               for i in range(num_rows)]
    else:
        fmt = {TypeCode.BOOL: "B", TypeCode.ENUM8: "b", TypeCode.ENUM16: "h",
               TypeCode.DATE32: "i", TypeCode.IPV4: "I", TypeCode.DATETIME64: "q",
               TypeCode.DATETIME: "I"}[code]
        out = list(struct.unpack(f"<{num_rows}{fmt}", values))
    if nulls is not None:
        out = [None if flag else value for flag, value in zip(nulls, out)]
    return out


def ndjson_values(module: Any, ch_type: str, texts: list[str]) -> tuple[list[Any], list[Any]]:
    """Each JSON value (written as is) in its own row -> (stored values, (row, code) errors)."""
    spec = col(ch_type)
    body = b"".join(b'{"v":' + t.encode() + b"}\n" for t in texts)
    result = parse(module, "ndjson", [spec], body)
    stored = decode_values(spec, *result[2][0], result[1])
    return stored, [(line, code) for line, _, code, _ in errors(result)]


def csv_values(module: Any, ch_type: str, fields: list[str]) -> tuple[list[Any], list[Any]]:
    spec = col(ch_type)
    body = b"".join(f.encode() + b"\n" for f in fields)
    result = parse(module, "csv", [spec], body, header=False)
    stored = decode_values(spec, *result[2][0], result[1])
    return stored, [(line, code) for line, _, code, _ in errors(result)]


# -- schema ---------------------------------------------------------------------------------


def test_new_types_are_parsed() -> None:
    assert parse_type("Bool").type_code is TypeCode.BOOL
    assert parse_type("Nullable(UUID)").nullable
    fixed = parse_type("FixedString(3)")
    assert (fixed.type_code, fixed.length) == (TypeCode.FIXED_STRING, 3)
    enum = parse_type(ENUM8)
    assert enum.enum_values == ((b"a", 1), (b"b", 2), (b"it's", -3), (b"", 0))
    assert parse_type(ENUM16).type_code is TypeCode.ENUM16
    assert parse_type("Date32").type_code is TypeCode.DATE32
    assert parse_type("IPv4").type_code is TypeCode.IPV4
    dt64 = parse_type("DateTime64(3, 'Europe/Berlin')")
    assert (dt64.type_code, dt64.scale) == (TypeCode.DATETIME64, 3)
    for ch_type, code, precision, scale in (
            ("Decimal(9, 2)", TypeCode.DECIMAL32, 9, 2), ("Decimal(10, 0)", TypeCode.DECIMAL64, 10, 0),
            ("Decimal32(4)", TypeCode.DECIMAL32, 9, 4), ("Decimal64(4)", TypeCode.DECIMAL64, 18, 4),
            ("Decimal128(38)", TypeCode.DECIMAL128, 38, 38),
            ("Decimal(39, 1)", TypeCode.DECIMAL256, 39, 1),
            ("Decimal256(3)", TypeCode.DECIMAL256, 76, 3)):
        parsed = parse_type(ch_type)
        assert (parsed.type_code, parsed.precision, parsed.scale) == (code, precision, scale)


@pytest.mark.parametrize("ch_type", [
    "FixedString(0)", "FixedString(x)", "Enum8('a' = 200)", "Enum8()", "Enum8('a' = 1, 'a' = 2)",
    "Enum8('a' = 1, 'b' = 1)", "Enum8(a = 1)", "LowCardinality(Decimal(9, 2))",
    "DateTime64(10)", "DateTime64", "Decimal(5)", "Decimal(77, 0)", "Decimal(3, 4)",
    "Decimal32(2, 1)", "Decimal(0, 0)", "DateTime('Mars/Olympus')", "DateTime(UTC)",
    "DateTime64(3, 'Nowhere')", "DateTime('')",
])
def test_bad_type_definitions_are_refused(ch_type: str) -> None:
    with pytest.raises(SchemaError):
        parse_type(ch_type)


# -- values ---------------------------------------------------------------------------------


def test_bool(parser_module: Any) -> None:
    stored, errs = ndjson_values(parser_module, "Bool",
                                 ["true", "false", "1", "0", '"true"', '"0"', "2", '"yes"',
                                  "1.0", '"True"'])
    assert stored == [1, 0, 1, 0, 1, 0]
    assert [code for _, code in errs] == [BAD] * 4
    stored, errs = csv_values(parser_module, "Bool", ["true", "0", '"false"', "t"])
    assert stored == [1, 0, 0] and [code for _, code in errs] == [BAD]


def test_uuid(parser_module: Any) -> None:
    good = "61f0c404-5cb3-11e7-907b-a6006ad3dba0"
    stored, errs = ndjson_values(parser_module, "UUID", [
        f'"{good}"', f'"{good.upper()}"', '"00000000-0000-0000-0000-000000000000"',
        f'"{good[:-1]}"', f'"{good}0"', f'"{good.replace("-", "")}"', f'"{good[:-1]}g"',
        f'"{{{good}}}"', "1", f'"{good[:8]}_{good[9:]}"'])
    assert stored == [good, good, "00000000-0000-0000-0000-000000000000"]
    assert [code for _, code in errs] == [BAD] * 7
    # Native layout: the high UInt64 first, each little-endian.
    result = parse(parser_module, "ndjson", [col("UUID")], f'{{"v":"{good}"}}'.encode())
    assert result[2][0][0] == struct.pack("<QQ", 0x61F0C4045CB311E7, 0x907BA6006AD3DBA0)


def test_fixed_string(parser_module: Any) -> None:
    stored, errs = ndjson_values(parser_module, "FixedString(4)",
                                 ['"abcd"', '"ab"', '""', '"é"', '"\\u00e9\\u00e9"', '"abcde"',
                                  '"éé\\u00e9"', "12", "true", '{"a":1}'])
    assert stored == [b"abcd", b"ab\0\0", b"\0\0\0\0", "é".encode() + b"\0\0", "éé".encode(),
                      b"12\0\0", b"true"]
    assert [code for _, code in errs] == [RANGE, RANGE, BAD]
    stored, errs = csv_values(parser_module, "Nullable(FixedString(2))",
                              ["ab", '""', "\\N", "abc", '"a,"'])
    assert stored == [b"ab", b"\0\0", None, b"a,"]
    assert [code for _, code in errs] == [RANGE]
    # Invalid UTF-8 in a CSV field is refused as for String.
    result = parse(parser_module, "csv", [col("FixedString(2)")], b"\xff\n", header=False)
    assert [e[2] for e in errors(result)] == [int(ErrorCode.INVALID_UTF8)]


def test_fixed_string_missing_null_and_default(parser_module: Any) -> None:
    columns = [col("Nullable(FixedString(3))", "$.a", "a"),
               col("FixedString(3)", "$.b", "b", default="''"),
               col("FixedString(3)", "$.c", "c", default="'xy'"),
               col("FixedString(3)", "$.d", "d")]
    result = parse(parser_module, "ndjson", columns,
                   b'{"a":null,"d":"t"}\n{"a":"q","b":"r","c":"s","d":"u"}\n{"a":"z"}\n')
    decoded = [decode_values(spec, *data, result[1]) for spec, data in zip(columns, result[2])]
    assert decoded == [[None, b"q\0\0"], [b"\0\0\0", b"r\0\0"], [b"xy\0", b"s\0\0"],
                       [b"t\0\0", b"u\0\0"]]
    assert errors(result) == [(b'{"a":"z"}', 3, ErrorCode.MISSING, b"")]


def test_enum(parser_module: Any) -> None:
    stored, errs = ndjson_values(parser_module, ENUM8, [
        '"a"', '"b"', '"it\'s"', '""', "1", '"2"', "-3", '"+1"', "0",
        '"c"', "3", '"A"', "1.0", '"a "', "true", "1000000000"])
    assert stored == [1, 2, -3, 0, 1, 2, -3, 1, 0]
    assert [code for _, code in errs] == [BAD] * 7
    stored, errs = csv_values(parser_module, ENUM16, ["low", "high", "-1000", "mid", "1"])
    assert stored == [-1000, 1000, -1000] and [code for _, code in errs] == [BAD, BAD]


def test_enum_name_that_is_a_number() -> None:
    # A name wins over a number.
    spec = col("Enum8('2' = 1, 'x' = 2)")
    for module in (implementation("py"), implementation("c")):
        result = parse(module, "ndjson", [spec], b'{"v":"2"}\n{"v":2}\n')
        assert decode_values(spec, *result[2][0], result[1]) == [1, 1]


def test_date32(parser_module: Any) -> None:
    stored, errs = ndjson_values(parser_module, "Date32", [
        '"1970-01-01"', '"1900-01-01"', '"2299-12-31"', '"1969-12-31T23:59:59Z"',
        '"2024-02-29 10:00:00"', "86400", '"1899-12-31"', '"2300-01-01"', '"2023-02-29"',
        "4294967296"])
    assert stored == [0, -25567, 120529, -1, 19782, 1]
    assert [code for _, code in errs] == [RANGE, RANGE, BAD, RANGE]


def test_ipv4(parser_module: Any) -> None:
    stored, errs = ndjson_values(parser_module, "IPv4", [
        '"1.2.3.4"', '"255.255.255.255"', '"0.0.0.0"', '"010.0.0.1"', '"1.2.3"',
        '"1.2.3.4.5"', '"256.1.1.1"', '"1.2.3.4 "', '"1..3.4"', '"0001.2.3.4"', "1", '""',
        '"1.2.3."'])
    assert stored == [0x01020304, 0xFFFFFFFF, 0, 0x0A000001]
    assert [code for _, code in errs] == [BAD] * 9


def test_datetime64(parser_module: Any) -> None:
    base = 1704164645  # 2024-01-02 03:04:05 UTC
    stored, errs = ndjson_values(parser_module, "DateTime64(3)", [
        '"2024-01-02 03:04:05"', '"2024-01-02T03:04:05.1Z"', '"2024-01-02T03:04:05.123456"',
        '"2024-01-02T04:04:05.5+01:00"', '"2024-01-02"', "1704164645", "1704164645.25",
        "1704164645123", "1704164645123.9", '"1900-01-01 00:00:00"', '"1969-12-31 23:59:59.5"',
        '"2299-12-31 23:59:59.999"',
        '"1899-12-31 23:59:59"', '"2300-01-01"', '"2024-01-02T03:04:05."', "-1", "1e9"])
    assert stored == [base * 1000, base * 1000 + 100, base * 1000 + 123, base * 1000 + 500,
                      (base - 11045) * 1000, base * 1000, base * 1000 + 250, base * 1000 + 123,
                      base * 1000 + 123, -2208988800000, -500, 10413791999999]
    assert [code for _, code in errs] == [RANGE, RANGE, BAD, BAD, BAD]
    stored, errs = csv_values(parser_module, "DateTime64(0, 'UTC')", ["2024-01-02 03:04:05.9"])
    assert stored == [base]
    stored, errs = csv_values(parser_module, "DateTime64(9)", [
        "2024-01-02 03:04:05.123456789123", "1704164645123.5", "2262-04-11 23:47:16.854775807",
        "2262-04-11 23:47:16.854775808"])
    assert stored == [base * 10**9 + 123456789, base * 10**9 + 123500000, (1 << 63) - 1]
    assert [code for _, code in errs] == [RANGE]


def test_naive_times_are_read_in_the_column_zone(parser_module: Any) -> None:
    """As ClickHouse does: a skipped time takes the offset after the change, a repeated
    time its first occurrence; Z, an offset, an epoch number and zone-less columns are UTC.
    """
    texts = ['"2024-06-01 12:00:00"', '"2024-03-10 02:30:00"', '"2024-11-03 01:30:00"',
             '"2024-11-03T01:30:00Z"', '"2024-11-03 01:30:00-05:00"', "1717243200",
             '"2024-01-15"']
    stored, errs = ndjson_values(parser_module, "DateTime('America/New_York')", texts)
    assert stored == [1717257600, 1710052200, 1730611800, 1730597400, 1730615400,
                      1717243200, 1705294800]
    assert not errs
    stored, _ = ndjson_values(parser_module, "DateTime", texts[:1])
    assert stored == [1717243200]
    stored, _ = ndjson_values(parser_module, "DateTime64(3, 'Asia/Kolkata')",
                              ['"2024-06-01 12:00:00.250"'])
    assert stored == [(1717243200 - 19800) * 1000 + 250]
    stored, _ = csv_values(parser_module, "Nullable(DateTime('Europe/Berlin'))",
                           ["2024-01-01 00:00:00", "\\N"])
    assert stored == [1704063600, None]


@pytest.mark.parametrize("ch_type,low,high", [
    ("Int128", -(1 << 127), (1 << 127) - 1), ("UInt128", 0, (1 << 128) - 1),
    ("Int256", -(1 << 255), (1 << 255) - 1), ("UInt256", 0, (1 << 256) - 1),
])
def test_big_integers(parser_module: Any, ch_type: str, low: int, high: int) -> None:
    texts = [str(low), str(high), "0", "-0", '"+7"', "true", "false", '"123"', '"00012"']
    stored, errs = ndjson_values(parser_module, ch_type, texts + [
        str(low - 1), str(high + 1), "1" * 100, "1.5", '"12a"', '""', '"-"'])
    assert stored == [low, high, 0, 0, 7, 1, 0, 123, 12]
    assert [code for _, code in errs] == [RANGE, RANGE, RANGE, BAD, BAD, BAD, BAD]


def test_decimal(parser_module: Any) -> None:
    stored, errs = ndjson_values(parser_module, "Decimal(5, 2)", [
        "123.45", "-123.45", "0", "-0.0", "1", '"999.99"', '".5"', '"+1."', "1.2300",
        "1234.5", "1.234", "1000", "1e2", '"1.2.3"', '"."', "true", '"-"', '"1,5"'])
    assert stored == [12345, -12345, 0, 0, 100, 99999, 50, 100, 123]
    assert [code for _, code in errs] == [RANGE, RANGE, RANGE, BAD, BAD, BAD, BAD, BAD, BAD]
    big = "9" * 38
    stored, errs = csv_values(parser_module, "Decimal128(0)", [big, "-" + big, "1" + big])
    assert stored == [int(big), -int(big)] and [code for _, code in errs] == [RANGE]
    stored, errs = csv_values(parser_module, "Decimal256(76)", ["0." + "9" * 76, "-0.5", "1"])
    assert stored == [int("9" * 76), -5 * 10**75] and [code for _, code in errs] == [RANGE]
    stored, errs = csv_values(parser_module, "Decimal32(9)", ["0.000000001", "-0.999999999"])
    assert stored == [1, -999999999]


def test_ipv6(parser_module: Any) -> None:
    good = ["::", "::1", "2001:db8::ff00:42:8329", "2001:DB8:0:0:8:800:200C:417A",
            "::ffff:1.2.3.4", "1.2.3.4", "1:2:3:4:5:6:7::", "::2:3:4:5:6:7:8",
            "1:2:3:4:5:6:1.2.3.4", "fe80::1:2"]
    bad = [":1", "1:", "1:::2", "1::2::3", "1:2:3:4:5:6:7:8:9", "1:2:3:4:5:6:7", "12345::",
           "g::", "::1.2.3", "1.2.3.4::", "1:2:3:4:5:6:7:1.2.3.4", "::1.2.3.4:5", "fe80::1%eth0",
           "", "1::2:3:4:5:6:7:8"]
    stored, errs = ndjson_values(parser_module, "IPv6", [f'"{t}"' for t in good + bad])
    assert stored == [str(ipaddress.IPv6Address(t if ":" in t else "::ffff:" + t))
                      for t in good]
    assert [code for _, code in errs] == [BAD] * len(bad)


@pytest.mark.parametrize("ch_type", ["Bool", "UUID", "FixedString(2)", ENUM8, "Date32", "IPv4",
                                     "DateTime64(3)", "Int128", "UInt256", "Decimal(20, 4)",
                                     "IPv6"])
def test_null_and_missing(parser_module: Any, ch_type: str) -> None:
    spec = col(f"Nullable({ch_type})")
    result = parse(parser_module, "ndjson", [spec], b'{"v":null}\n{}\n')
    assert decode_values(spec, *result[2][0], result[1]) == [None, None]
    plain = col(ch_type)
    result = parse(parser_module, "ndjson", [plain], b'{"v":null}\n{}\n')
    # Neither Nullable nor a DEFAULT: both rows are quarantined (Tinybird's rule).
    assert [e[2] for e in errors(result)] == [int(ErrorCode.NULL), int(ErrorCode.MISSING)]
    assert result[1] == 0


# -- the two implementations agree on arbitrary text ----------------------------------------

FUZZ_TYPES = ["Bool", "UUID", "FixedString(3)", ENUM8, ENUM16, "Date32", "IPv4",
              "DateTime64(3)", "DateTime64(9, 'UTC')", "Int128", "UInt128", "Int256", "UInt256",
              "Decimal(9, 3)", "Decimal(38, 10)", "Decimal256(2)", "IPv6",
              "DateTime('America/New_York')", "DateTime64(3, 'Australia/Lord_Howe')"]


def _random_text(rng: random.Random) -> str:
    pieces = ["true", "false", "0", "1", "-", "+", ".", ":", "T", " ", "Z", "a", "b", "it's",
              "low", "1.2.3.4", "255", "256", "61f0c404-5cb3-11e7-907b-a6006ad3dba0", "é",
              "1900-01-01", "2299-12-31", "2024-02-29", "12:30:00", "-1000", "1000", "f", "9",
              ".5", "123456789012345678901234567890", "::", "ff", "2001:db8", ":", ".000",
              "1704164645123", "170141183460469231731687303715884105728", "2262-04-11"]
    return "".join(rng.choice(pieces) for _ in range(rng.randrange(0, 4)))


@pytest.mark.parametrize("ch_type", FUZZ_TYPES)
def test_implementations_agree(ch_type: str) -> None:
    rng = random.Random(ch_type)
    texts = [_random_text(rng) for _ in range(400)]
    for i, text in enumerate(texts):  # some single-character edits
        if text and i % 3 == 0:
            pos = rng.randrange(len(text))
            texts[i] = text[:pos] + rng.choice("0123456789abcdefg-.:") + text[pos + 1 :]
    columns = [col(ch_type), col(f"Nullable({ch_type})", "$.w", "w")]

    ndjson = b"".join(json.dumps({"v": t, "w": t}).encode() + b"\n" for t in texts)
    csv = b"".join(f'"{t}",{t}\n'.encode() for t in texts if '"' not in t and "," not in t)
    for fmt, body, options in (("ndjson", ndjson, {}), ("csv", csv, {"header": False})):
        py = run(implementation("py"), fmt, columns, [body], **options)
        c = run(implementation("c"), fmt, columns, [body], **options)
        assert py == c
        assert py[1] > 0 and py[3]  # some stored, some refused


# -- through the servers --------------------------------------------------------------------

# (type, JSON values, what toString() gives back); None = NULL. 18.16 lacks the chDB-only ones.
ROUND_TRIP: list[tuple[str, list[str], list[str | None], bool]] = [
    ("UUID", ['"61f0c404-5cb3-11e7-907b-a6006ad3dba0"', '"00000000-0000-0000-0000-000000000001"'],
     ["61f0c404-5cb3-11e7-907b-a6006ad3dba0", "00000000-0000-0000-0000-000000000001"], True),
    ("FixedString(3)", ['"abc"', '"é"'], ["616263", "C3A900"], True),  # hex()
    (ENUM8, ['"it\'s"', "2"], ["it's", "b"], True),
    (ENUM16, ['"high"', "-1000"], ["high", "low"], True),
    ("Nullable(UUID)", ["null", '"61f0c404-5cb3-11e7-907b-a6006ad3dba0"'],
     [None, "61f0c404-5cb3-11e7-907b-a6006ad3dba0"], True),
    ("Nullable(FixedString(2))", ['"ab"', "null"], ["6162", None], True),
    ("Bool", ["true", "0"], ["true", "false"], False),
    ("Date32", ['"1900-01-01"', '"2299-12-31"'], ["1900-01-01", "2299-12-31"], False),
    ("IPv4", ['"1.2.3.4"', '"255.0.0.10"'], ["1.2.3.4", "255.0.0.10"], False),
    ("Nullable(IPv4)", ["null", '"10.0.0.1"'], [None, "10.0.0.1"], False),
    # Values with every scale digit non-zero: 18.16 prints trailing zeros, chDB does not.
    ("Decimal(9, 2)", ['"-1234567.89"', "0.55"], ["-1234567.89", "0.55"], True),
    ("Decimal64(4)", ["12345678901234.5678", "-1.2345"], ["12345678901234.5678", "-1.2345"],
     True),
    ("Decimal128(2)", ['"-12345.67"', "1.25"], ["-12345.67", "1.25"], True),
    # 18.16's toString() garbles Decimal128 values of over ~19 digits: chDB only.
    ("Decimal128(2)", ['"-' + "9" * 36 + '.99"', "1.25"], ["-" + "9" * 36 + ".99", "1.25"],
     False),
    ("Decimal256(20)", ['"1.00000000000000000001"', "-2"], ["1.00000000000000000001", "-2"],
     False),
    ("DateTime64(3)", ['"2024-01-02T03:04:05.123Z"', '"1900-01-01"'],
     ["2024-01-02 03:04:05.123", "1900-01-01 00:00:00.000"], False),
    ("DateTime64(6, 'UTC')", ["1704164645.5", '"2299-12-31 23:59:59.999999"'],
     ["2024-01-02 03:04:05.500000", "2299-12-31 23:59:59.999999"], False),
    ("Int128", [str(-(1 << 127)), "1"], [str(-(1 << 127)), "1"], False),
    ("UInt128", [str((1 << 128) - 1), "0"], [str((1 << 128) - 1), "0"], False),
    ("Int256", [str(-(1 << 255)), "-1"], [str(-(1 << 255)), "-1"], False),
    ("UInt256", [str((1 << 256) - 1), "2"], [str((1 << 256) - 1), "2"], False),
    ("IPv6", ['"2001:db8::1"', '"1.2.3.4"'], ["2001:db8::1", "::ffff:1.2.3.4"], False),
]


def test_round_trip_through_the_server(sink: Sink) -> None:
    """Parsed rows, encoded as Native, read back as ClickHouse's own text (hex for
    FixedString).

    ClickHouse 18.16 has no Bool, Date32, IPv4, IPv6, DateTime64, Int128/UInt128/Int256/
    UInt256 or Decimal256: those run on chDB only.
    """
    cases = [case for case in ROUND_TRIP if case[3] or sink.name == "embedded"]
    specs = [ColumnSpec.build(f"c{i}", ch_type, f"$.c{i}") for i, (ch_type, *_) in
             enumerate(cases)]
    rows = [b"{" + b",".join(f'"c{i}":{values[r]}'.encode() for i, (_, values, _, _) in
                              enumerate(cases)) + b"}\n" for r in range(2)]
    parser = implementation("c").NDJSONParser(specs)
    parser.feed(b"".join(rows))
    parser.finish()
    block: Block = parser.take_block()
    assert block.num_rows == 2 and not block.errors
    body = ", ".join(f"c{i} {ch_type}" for i, (ch_type, *_) in enumerate(cases))
    sink.execute(f"CREATE TABLE types (row UInt8, {body}) ENGINE = MergeTree ORDER BY row")
    row_spec = ColumnSpec.build("row", "UInt8", "$.row")
    full = Block(2, [ColumnData(b"\x00\x01")] + block.columns)
    sink.insert("types", encode_block([row_spec] + specs, full))
    def text(i: int, ch_type: str) -> str:
        # FixedString as hex: its NUL padding is part of the value.
        value = f"assumeNotNull(c{i})" if ch_type.startswith("Nullable") else f"c{i}"
        shown = f"hex({value})" if "FixedString" in ch_type else f"toString({value})"
        return f"if(isNull(c{i}), NULL, {shown})" if ch_type.startswith("Nullable") else shown

    select = ", ".join(text(i, case[0]) for i, case in enumerate(cases))
    result = sink.query(f"SELECT {select} FROM types ORDER BY row")
    expected = [tuple(case[2][r] for case in cases) for r in range(2)]
    assert result.rows == expected


ZONES = ["America/New_York", "Europe/Berlin", "Asia/Kolkata", "Australia/Lord_Howe",
         "America/Sao_Paulo", "Europe/Moscow"]
OLD_SERVER_DIFFERS = {"Australia/Lord_Howe", "America/Sao_Paulo", "Europe/Moscow"}


def _naive_times(zone: str) -> list[str]:
    """Wall-clock texts around every offset change of ``zone`` in 1971-2037 (skipped and
    repeated times included) and some at random, deterministically."""
    from tinyingest.timezones import wall_clock_shifts
    rng = random.Random(zone)
    walls = [rng.randrange(31536000, 2145916800) for _ in range(20)]
    for wall_from, _ in wall_clock_shifts(zone)[1:]:
        if 31536000 < wall_from < 2145916800 and rng.random() < 0.3:
            walls += [wall_from + delta for delta in (-3601, -1800, -1, 0, 1, 1800, 3599)]
    return [time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(wall)) for wall in walls]


def test_naive_times_match_the_server_in_every_zone(sink: Sink) -> None:
    """What we store for a time without offset in DateTime('Zone') equals the server's
    own reading of the same text (``toDateTime(text, zone)``).

    18.16 differs from chDB 26.9 and zoneinfo (which agree) on times skipped by a change
    at midnight (Sao Paulo, Moscow in the 1980s: it takes the old offset) and on Lord
    Howe's 1981 change: those zones are compared on chDB only.
    """
    for i, zone in enumerate(ZONES):
        if zone in OLD_SERVER_DIFFERS and sink.name != "embedded":
            continue
        texts = _naive_times(zone)
        spec = ColumnSpec.build("t", f"DateTime('{zone}')", "$.t")
        parser = implementation("c").NDJSONParser([spec])
        parser.feed(b"".join(json.dumps({"t": text}).encode() + b"\n" for text in texts))
        parser.finish()
        block: Block = parser.take_block()
        assert block.num_rows == len(texts) and not block.errors
        sink.execute(f"CREATE TABLE zoned{i} (row UInt32, t DateTime('{zone}')) "
                     "ENGINE = MergeTree ORDER BY row")
        row_spec = ColumnSpec.build("row", "UInt32", "$.row")
        rows = ColumnData(struct.pack(f"<{len(texts)}I", *range(len(texts))))
        sink.insert(f"zoned{i}", encode_block([row_spec, spec],
                                              Block(len(texts), [rows] + block.columns)))
        stored = [row[0] for row in
                  sink.query(f"SELECT toUInt32(t) FROM zoned{i} ORDER BY row").rows]
        literals = ", ".join(f"toUInt32(toDateTime('{text}', '{zone}'))" for text in texts)
        assert stored == list(sink.query(f"SELECT [{literals}]").rows[0][0]), zone
