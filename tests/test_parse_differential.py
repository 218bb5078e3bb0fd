"""The compiled parsers against the reference, byte for byte (style guide 2.5).

Hypothesis draws a schema, a body (valid JSON / CSV from random values, out-of-range
numbers, arbitrary unicode including lone surrogates, then random mutations and byte
garbage) and chunk boundaries; ``_native`` must return exactly what ``_pyparser``
returns, and both must not depend on the chunking. A JSONTestSuite-style list of
y_/n_ rows then runs on both implementations.

``TINYINGEST_FUZZ_EXAMPLES`` raises the example count for a longer local hunt.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parsers import col, implementation, make_parser, parse, parser_module, rows
from tinyingest.errors import ErrorCode
from tinyingest.schema import ColumnSpec, TypeCode

__all__ = ["parser_module"]  # the fixture, imported for pytest

EXAMPLES = int(os.environ.get("TINYINGEST_FUZZ_EXAMPLES", "300"))
FUZZ = settings(deadline=None, max_examples=EXAMPLES, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

PY = implementation("py")
C = implementation("c")

CH_NAMES: dict[TypeCode, str] = {
    TypeCode.INT8: "Int8", TypeCode.INT16: "Int16", TypeCode.INT32: "Int32",
    TypeCode.INT64: "Int64", TypeCode.UINT8: "UInt8", TypeCode.UINT16: "UInt16",
    TypeCode.UINT32: "UInt32", TypeCode.UINT64: "UInt64", TypeCode.FLOAT32: "Float32",
    TypeCode.FLOAT64: "Float64", TypeCode.STRING: "String", TypeCode.DATE: "Date",
    TypeCode.DATETIME: "DateTime",
}
DEFAULTS: dict[TypeCode, list[str]] = {
    **{code: ["0", "7", "-1" if CH_NAMES[code][0] == "I" else "255"] for code in CH_NAMES
       if "Int" in CH_NAMES[code]},
    TypeCode.FLOAT32: ["1.5", "-0.25"], TypeCode.FLOAT64: ["1e300", "0.5"],
    TypeCode.STRING: ["'none'", "''", "'it''s'"],
    TypeCode.DATE: ["'2024-01-02'"], TypeCode.DATETIME: ["'2024-01-02 03:04:05'", "0"],
}
# Keys alike in their first bytes and lengths: a key is matched by every byte.
KEYS = ["a", "b", "c", "a b", "é", "v", "abcd", "abcz", "abc", "abcdefghij", "abcdefghiz"]
NUMBER_TEXTS = [
    "0", "-0", "1", "-1", "127", "128", "-128", "-129", "255", "256", "32767", "32768",
    "65535", "65536", "2147483647", "2147483648", "-2147483649", "4294967295", "4294967296",
    "9223372036854775807", "9223372036854775808", "-9223372036854775808",
    "-9223372036854775809", "18446744073709551615", "18446744073709551616",
    "1" * 30, "1e400", "-1e400", "3.4028234663852886e38", "3.5e38", "1e-400", "1E2", "1.5",
    "-0.0", "0.1e-5", "100000000000", "4294967295000", "4294967296000", "1704164645.75",
]
DATE_TEXTS = [
    "2024-01-02", "2024-01-02T03:04", "2024-01-02 03:04:05", "2024-01-02T03:04:05.123Z",
    "2024-01-02T03:04:05+01", "2024-01-02T03:04:05-0130", "2024-01-02T03:04:05+01:30",
    "1970-01-01", "1969-12-31", "2106-02-07T06:28:15", "2106-02-07T06:28:16", "2149-06-06",
    "2149-06-07", "02.01.2024", "2024-13-45", "0000-00-00", "2024-02-29", "2023-02-29",
    "1704164645", "1704164645123", "2024-01-02T24:00", "2024-01-02T03:04:05.",
]


class Raw(str):
    """A JSON value written as is (a number text that json.dumps cannot make)."""


# -- schemas -------------------------------------------------------------------------------


def _jsonpath(keys: list[str]) -> str:
    return "$" + "".join(f"['{k}']" if " " in k else f".{k}" for k in keys)


@st.composite
def schemas(draw: st.DrawFn, *, paths: bool = True) -> list[ColumnSpec]:
    columns = []
    for index in range(draw(st.integers(1, 5))):
        code = draw(st.sampled_from(list(CH_NAMES)))
        ch_type = CH_NAMES[code]
        if draw(st.booleans()):
            ch_type = f"Nullable({ch_type})"
        if code is TypeCode.STRING and draw(st.booleans()):
            ch_type = f"LowCardinality({ch_type})"
        keys = draw(st.lists(st.sampled_from(KEYS), min_size=0, max_size=3)) if paths else [
            KEYS[index % len(KEYS)]]
        if not keys and draw(st.booleans()):
            keys = ["a"]  # `$` (the whole row) now and then, not half the time
        default = draw(st.none() | st.none() | st.sampled_from(DEFAULTS[code]))
        columns.append(col(ch_type, _jsonpath(keys), f"c{index}", default))
    return columns


# -- NDJSON bodies -------------------------------------------------------------------------

_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)
_scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    _text,
    st.sampled_from(DATE_TEXTS),
    st.sampled_from(NUMBER_TEXTS).map(Raw),
    st.sampled_from(NUMBER_TEXTS),
)
_values = st.recursive(
    _scalars,
    lambda kids: st.lists(kids, max_size=3)
    | st.lists(st.tuples(st.sampled_from(KEYS), kids), max_size=3).map(tuple),
    max_leaves=8,
)
_objects = st.lists(st.tuples(st.sampled_from(KEYS), _values), max_size=5).map(tuple)


def dump(value: Any, ascii_only: bool, spaces: str) -> str:
    """JSON text; tuples of pairs are objects (so keys may repeat)."""
    import json

    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, tuple):
        items = (f"{dump(k, ascii_only, spaces)}{spaces}:{spaces}{dump(v, ascii_only, spaces)}"
                 for k, v in value)
        return "{" + f"{spaces},{spaces}".join(items) + "}"
    if isinstance(value, list):
        return "[" + f",{spaces}".join(dump(v, ascii_only, spaces) for v in value) + "]"
    return json.dumps(value, ensure_ascii=ascii_only)


@st.composite
def mutated(draw: st.DrawFn, line: bytes) -> bytes:
    for _ in range(draw(st.integers(0, 2))):
        if draw(st.integers(0, 3)) != 0:
            continue  # most lines stay intact
        pos = draw(st.integers(0, len(line)))
        byte = draw(st.sampled_from([b"\xff", b"\xc0", b"\xed", b"\\", b'"', b",", b"}", b"\n",
                                     b"\x00", b"{", b"]", b" ", b"\r", b"u"]) | st.binary(
            min_size=1, max_size=1))
        kind = draw(st.integers(0, 3))
        if kind == 0:
            line = line[:pos] + byte + line[pos:]
        elif kind == 1:
            line = line[:pos] + byte + line[pos + 1 :]
        elif kind == 2:
            line = line[:pos] + line[pos + 1 :]
        else:
            line = line[:pos]
    return line


_TOKENS = [b"{", b"}", b"[", b"]", b":", b",", b'"', b'"a"', b'"v"', b'"c"', b"1", b"-", b"0",
           b".", b"e", b"E", b"+", b"true", b"fals", b"null", b"\\", b"\\u", b"d800", b"dc00",
           b"0041", b"\\n", b" ", b"\t", b"\r", b"\n", b"\xff", b"\xc3", b"\xa9", b"\xed\xa0\x80",
           b"\xf0\x9f\x98\x80", b"\x00", b"x", b"\xef\xbb\xbf", b"123456789012345678901234"]


_numbers = st.sampled_from(NUMBER_TEXTS).map(Raw) | st.sampled_from(NUMBER_TEXTS) | st.none()
_typed: dict[TypeCode, st.SearchStrategy[Any]] = {
    **{code: _numbers for code in CH_NAMES},
    TypeCode.STRING: _text | st.none(),
    TypeCode.DATE: st.sampled_from(DATE_TEXTS) | _numbers,
    TypeCode.DATETIME: st.sampled_from(DATE_TEXTS) | _numbers,
}


def _as_pairs(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple((k, _as_pairs(v)) for k, v in value.items())
    return value


@st.composite
def shaped(draw: st.DrawFn, columns: list[ColumnSpec]) -> Any:
    """An object with values at (most of) the columns' paths, so they are really read."""
    root: dict[str, Any] = {}
    for spec in columns:
        if not spec.path or draw(st.integers(0, 5)) == 0:
            continue
        node = root
        for key in spec.path[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = node[key] = {}
            node = child
        node[spec.path[-1]] = draw(_values if draw(st.booleans()) else _typed[spec.type_code])
    pairs = list(_as_pairs(root))
    if pairs and draw(st.integers(0, 5)) == 0:
        pairs.append(draw(st.sampled_from(pairs)))  # a duplicate key
    return tuple(draw(st.permutations(pairs)))


@st.composite
def ndjson_lines(draw: st.DrawFn, columns: list[ColumnSpec] | None = None) -> bytes:
    kind = draw(st.integers(0, 12))
    if kind > 9 and columns is not None:
        text = dump(draw(shaped(columns)), draw(st.booleans()), draw(st.sampled_from(["", " "])))
        return draw(mutated(text.encode("utf-8", "surrogatepass")))
    if kind == 0:
        return draw(st.binary(max_size=24))
    if kind == 1:
        return b"".join(draw(st.lists(st.sampled_from(_TOKENS), max_size=24)))
    if kind == 2:
        return b""
    value = draw(_objects if kind > 3 else _values)
    ascii_only = draw(st.booleans())
    text = dump(value, ascii_only, draw(st.sampled_from(["", " ", "\t"])))
    return draw(mutated(text.encode("utf-8", "surrogatepass")))


@st.composite
def bodies(draw: st.DrawFn, lines: st.SearchStrategy[bytes]) -> bytes:
    parts = draw(st.lists(lines, max_size=6))
    endings = [draw(st.sampled_from([b"\n", b"\r\n"])) for _ in parts]
    body = b"".join(p + e for p, e in zip(parts, endings))
    if body and draw(st.booleans()):
        body = body[: -len(endings[-1])]  # no newline after the last row
    if draw(st.integers(0, 5)) == 0:
        body = draw(st.sampled_from([b"\xef\xbb\xbf", b"\xef\xbb", b"\xef"])) + body
    return body


@st.composite
def chunked(draw: st.DrawFn, body: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=6)))
    edges = [0, *cuts, len(body)]
    return [body[a:b] for a, b in zip(edges, edges[1:])]


def outcome(module: ModuleType, fmt: str, columns: list[ColumnSpec], chunks: list[bytes],
            **options: Any) -> Any:
    """Per-chunk row counts and the block as plain data, or the exception raised."""
    try:
        parser = make_parser(module, fmt, columns, **options)
        counts = [parser.feed(chunk) for chunk in chunks]
        counts.append(parser.finish())
        block = parser.take_block()
    except Exception as exc:  # noqa: BLE001 - compared, not swallowed
        return ("raised", type(exc).__name__, str(exc))
    return (counts, block.num_rows, [(c.values, c.offsets, c.nulls) for c in block.columns],
            [(e.line, e.column, e.code, e.value) for e in block.errors])


def check_same(fmt: str, columns: list[ColumnSpec], body: bytes, chunks: list[bytes],
               **options: Any) -> None:
    expected = outcome(PY, fmt, columns, [body], **options)
    assert expected[0] != "raised", expected
    assert outcome(C, fmt, columns, [body], **options) == expected
    # Chunking changes the per-feed counts, never the block.
    split_py = outcome(PY, fmt, columns, chunks, **options)
    assert split_py[1:] == expected[1:]
    assert sum(split_py[0]) == sum(expected[0])
    assert outcome(C, fmt, columns, chunks, **options) == split_py


@FUZZ
@given(data=st.data(), columns=schemas(),
       max_row_bytes=st.sampled_from([1 << 20, 1 << 20, 24, 60]))
def test_ndjson_c_equals_py(data: st.DataObject, columns: list[ColumnSpec],
                            max_row_bytes: int) -> None:
    body = data.draw(bodies(ndjson_lines(columns)))
    check_same("ndjson", columns, body, data.draw(chunked(body)), max_row_bytes=max_row_bytes)


# -- CSV bodies ----------------------------------------------------------------------------

_field_texts = st.one_of(
    _text.map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.sampled_from(NUMBER_TEXTS + DATE_TEXTS).map(str.encode),
    st.sampled_from([b"", b"\\N", b"true", b"false", b"NaN", b" 1", b"\xff", b"a\x00b"]),
    st.binary(max_size=6),
)


@st.composite
def csv_field(draw: st.DrawFn, delimiter: bytes) -> bytes:
    text = draw(_field_texts)
    style = draw(st.integers(0, 4))
    if style == 0 or b'"' in text or delimiter in text or b"\n" in text:
        return b'"' + text.replace(b'"', b'""') + b'"' if style != 4 else text
    return text


@given(data=st.data(), columns=schemas(paths=False),
       delimiter=st.sampled_from([b",", b",", b";", b"\t", b"|"]),
       escapechar=st.sampled_from([None, None, b"\\", b"'"]),
       header=st.sampled_from([None, None, True, False]),
       max_row_bytes=st.sampled_from([1 << 20, 1 << 20, 24]))
@FUZZ
def test_csv_c_equals_py(data: st.DataObject, columns: list[ColumnSpec], delimiter: bytes,
                         escapechar: bytes | None, header: bool | None,
                         max_row_bytes: int) -> None:
    names = [c.name.encode() for c in columns]

    @st.composite
    def record(draw: st.DrawFn) -> bytes:
        kind = draw(st.integers(0, 9))
        if kind == 0:
            return draw(st.binary(max_size=16))
        count = len(columns) if kind > 2 else draw(st.integers(0, len(columns) + 2))
        return delimiter.join(draw(csv_field(delimiter)) for _ in range(count))

    body = data.draw(bodies(record()))
    if data.draw(st.booleans()):
        # A header naming the columns, maybe reordered and with extra fields.
        fields = data.draw(st.permutations(names + data.draw(st.lists(
            st.sampled_from([b"x", b"y", b"c0", b'"q"']), max_size=2))))
        body = delimiter.join(fields) + data.draw(st.sampled_from([b"\n", b"\r\n"])) + body
    check_same("csv", columns, body, data.draw(chunked(body)), max_row_bytes=max_row_bytes,
               delimiter=delimiter, escapechar=escapechar, header=header)


# -- JSONTestSuite-style rows --------------------------------------------------------------

# Rows that are not valid JSON: each must be quarantined (never stored, never raised).
N_ROWS = [
    b"[1,]", b'{"a":1,}', b"{'a':1}", b'{"a":01}', b'{"a":-}', b'{"a":1e}', b'{"a":.5}',
    b'{"a":tru}', b'{"a":"\x01"}', b'{"a":"\\x"}', b'{"a":1.}', b'{"a":+1}', b'{"a":0x10}',
    b'{"a":NaN}', b'{"a":Infinity}', b'{"a":-Infinity}', b'{"a" 1}', b'{"a":1 "b":2}',
    b"{a:1}", b'{"a":1}}', b'{"a":[1}', b'{"a":"abc}', b'{"a":"\\u12"}', b'{"a":"\\uZZZZ"}',
    b"{\"a\":'x'}", b'{"a":1,,"b":2}', b'{,"a":1}', b'{"a":True}', b'{"a":nulls}',
    b'{"a":"\\ud800"}', b'{"a":"\\udc00\\ud800"}', b'{"a":"\xff"}', b'{"a":"\xc0\xaf"}',
    b'{"a":"\xed\xa0\x80"}', b'{"a":1}x', b'{"a":1,"b"}', b'{"a":[1,2,]}', b'{"a":[,1]}',
    b'{"a":- 1}', b'{"a":1e+}', b'{"a":"tab\there"}', b'{"a":00}', b'{"a":-01}', b'{"a":1.e1}',
    b'{"\x00":1}', b'{"a":"\\', b'{"a"', b"{", b'{"a":1', b'{"a":[', b'"', b"\x00",
    b'{"a":"\\u0041', b'{"a":1}{"b":2}', b'{"a":"\xf4\x90\x80\x80"}', b'{"a":"\\U0041"}',
    b'{"a":[' + b"[" * 64 + b"]" * 64 + b"]}",
]

# Valid JSON objects and what column a (String, $.a) stores for them.
Y_ROWS = [
    (b"{}", b""), (b'{"a":[]}', b"[]"), (b'{"a":{}}', b"{}"), (b'{"a":-0}', b"-0"),
    (b'{"a":1E+2}', b"1E+2"), (b'{"a":1e-2}', b"1e-2"), (b'{"a":-0.0e0}', b"-0.0e0"),
    (b'{"a":"\\u0000"}', b"\x00"), (b'{"a":"\\uD834\\uDD1E"}', "\U0001d11e".encode()),
    (b'{"a":"\\/"}', b"/"), (b'{"a":"\xc3\xa9"}', b"\xc3\xa9"), (b'{"a":"\\u00e9"}', b"\xc3\xa9"),
    (b' {"a" : 1 } ', b"1"), (b'{"a":[1,[2,[3]],{"b":null}]}', b'[1,[2,[3]],{"b":null}]'),
    (b'{"":1}', b""), (b'{"a":true,"b":false,"c":null}', b"true"),
    (b'{"a":"\\"\\\\\\/\\b\\f\\n\\r\\t"}', b'"\\/\b\f\n\r\t'),
    (b'{"a":123456789012345678901234567890}', b"123456789012345678901234567890"),
    (b'{"a":1.5e308}', b"1.5e308"), (b'{"\\u0061":2}', b"2"), (b'{"a":"\\uFFFF"}', b"\xef\xbf\xbf"),
    (b'{"a":"\\uDBFF\\uDFFF"}', b"\xf4\x8f\xbf\xbf"), (b'{"a":"\xf4\x8f\xbf\xbf"}', b"\xf4\x8f\xbf\xbf"),
    (b'{"a":{"x":"\\u005c\\""}}', b'{"x":"\\u005c\\""}'), (b'{"b":[1,{"a":2}]}', b""),
    (b'{"a":[' + b"[" * 62 + b"]" * 62 + b"]}", b"[" * 63 + b"]" * 63),
    (b'{"a":"\\u2028\\u2029"}', "\u2028\u2029".encode()), (b'{"a" :\t"x"\r}', b"x"),
]

_A = [col("String", "$.a", "a", default="''")]  # rows without "a" are valid too


@pytest.mark.parametrize("row", N_ROWS, ids=[repr(r)[2:40] for r in N_ROWS])
def test_json_suite_n(parser_module: ModuleType, row: bytes) -> None:
    result = parse(parser_module, "ndjson", _A, row + b"\n")
    assert result[1] == 0
    ((line, column, code, value),) = result[3]
    assert line == row
    assert code in (ErrorCode.INVALID_JSON, ErrorCode.INVALID_UTF8, ErrorCode.TOO_DEEP)
    assert value == b""
    assert result == parse(PY, "ndjson", _A, row + b"\n")


@pytest.mark.parametrize(("row", "stored"), Y_ROWS, ids=[repr(r)[2:40] for r, _ in Y_ROWS])
def test_json_suite_y(parser_module: ModuleType, row: bytes, stored: bytes) -> None:
    result = parse(parser_module, "ndjson", _A, row + b"\n")
    assert result[3] == ()
    assert rows(_A, result) == [(stored,)]
