"""Pure-Python reference parser: the spec, the test oracle and the no-compiler fallback.

Same API, same :class:`~tinyingest.block.Block` output and same row errors as the
compiled ``tinyingest._native``; ``tests/test_parse_differential.py`` holds them equal.

Policy (both formats, both implementations):

* A value reaches a column as *text*: a CSV field, a JSON string's content, a JSON
  number or ``true``/``false`` as written. Each type reads text one way:
  integers ``[+-]?digits`` or ``true``/``false``; floats ``[+-]?(d+[.d*]|.d+)[e[+-]d+]``
  (no NaN/Infinity); Date/DateTime see :func:`_parse_datetime`. A JSON object or
  array read into a String column is stored as its compact JSON text.
* Missing value (JSON key absent, CSV field empty and unquoted): the column's DEFAULT
  if it has one, else NULL for Nullable; else in NDJSON the row is quarantined
  (``MISSING``), and in CSV the empty text is read as the type (String ``''``, an error
  for other types), as Tinybird does. A literal DEFAULT (``0``, ``'none'``) is stored
  by the parser; an expression (``now()``, ``toDate(ts)``) is left to ClickHouse: the
  column holds the type's zero and the row's bit in ``Block.omitted`` is set
  (:func:`tinyingest.native.omit_missing` then inserts such rows without the column).
* JSON ``null`` and CSV ``\\N``: NULL for Nullable columns, else the DEFAULT if the
  column has one (as ClickHouse's ``input_format_null_as_default``), else the row is
  quarantined (``NULL``).
* More types (each else quarantined as not that type, ``BAD_VALUE``): ``Bool`` reads
  ``true``/``false``/``1``/``0`` (JSON booleans, numbers or strings; stored as UInt8);
  ``UUID`` the canonical ``8-4-4-4-12`` hex form, either case (stored as ClickHouse does:
  two little-endian UInt64 halves, high half first); ``IPv4`` a dotted quad of 1-3 digit
  numbers up to 255 (stored as UInt32); ``FixedString(N)`` any UTF-8 text of at most N
  bytes, padded with NUL bytes (longer: ``OUT_OF_RANGE``); ``Enum8``/``Enum16`` a
  value's name, exactly, or its number as an integer text; ``Date32`` the Date forms,
  1900-01-01 to 2299-12-31 (else ``OUT_OF_RANGE``); ``DateTime64(p[, tz])`` the
  DateTime forms, same range as Date32, fraction truncated to p digits, stored as Int64
  ticks; ``DateTime('Zone')`` and ``DateTime64(p, 'Zone')`` read a time without ``Z``
  or an offset in that zone, as ClickHouse does (:mod:`tinyingest.timezones`), and
  columns without a zone read it as UTC;
  ``Int128``/``UInt128``/``Int256``/``UInt256`` as the integers (little-endian two's
  complement); ``Decimal(P, S)``/``Decimal32/64/128/256(S)`` ``[+-]digits[.digits]``
  without exponent, stored as the integer scaled by 10**S: fraction digits beyond S
  must be zeros and at most P digits may remain (else ``OUT_OF_RANGE``: never rounded);
  ``IPv6`` RFC 4291 text with at most one ``::`` and an optional dotted-quad tail, or a
  plain IPv4 address stored IPv4-mapped (16 bytes, network order).
* ``Array(T)`` / ``Array(Array(T))``: in NDJSON the value must be a JSON array (of
  arrays); JSON ``null`` or a missing value is the empty array, at any level (ClickHouse's
  default for an Array; an expression DEFAULT of the column is left to ClickHouse as
  above). Each element is read as a value of T by the rules above (a ``null``
  element: NULL for ``Nullable(T)``, else ``NULL``); any other value where an array is
  expected is ``BAD_VALUE``. A bad element quarantines the row, naming the column, with
  the element's text as the value. The column's block data is Native-ready: ``offsets``
  the UInt64 end offset of each row, ``values`` the nested payload (inner end offsets;
  the elements' null map; the elements, Strings as varint length + bytes).
* ``Array`` in CSV: the field's text (after CSV unquoting: ``"['a','b']"`` is the usual
  form, as arrays hold commas; unquoted works when no delimiter occurs) is an array as
  ClickHouse writes it: ``[1,2,3]``, ``['a','b\\'c']``, ``[]``, ``[[1],[2,3]]``. Elements
  are single-quoted strings (backslash escapes ``\\b \\f \\n \\r \\t \\0 \\a \\v``,
  ``\\xHH``, any other byte after a backslash is itself; ``''`` is a quote) or bare
  tokens (no ``, [ ] { } : '``, space or tab; ``NULL`` is a null element, or the empty
  array at an inner level); spaces and tabs may surround items. Either is read as
  text of T by the rules above. An empty unquoted field or ``\\N`` is the empty array.
  Text that is not such an array (nesting over 64 included) is ``BAD_VALUE`` with the
  whole field as the value; else the first bad element quarantines the row as in NDJSON
  (a nested array where T is expected: ``BAD_VALUE``, its text as written).
* ``Map(String, V)`` (V a scalar type above, or ``Nullable``): in NDJSON a JSON object,
  its members the entries in the order written (duplicate keys kept, as ClickHouse
  keeps them); ``null`` or missing is the empty map; any other value is ``BAD_VALUE``;
  each member value is read as V like an array element (a bad one quarantines the row).
  In CSV, ClickHouse's form ``{'a':1,'b':2}`` with the array rules above (keys are
  String elements: not ``NULL``, valid UTF-8). Block data: ``offsets`` the UInt64 row
  end offsets, ``values`` the keys (Native String payload) then the values' payload:
  Native ``Array(Tuple(String, V))``, which is how ClickHouse serializes a Map.
* ``Tuple(T1, ..., Tn)`` (each T a scalar type above, or ``Nullable``), NDJSON only
  (a CSV parser refuses the column): a JSON array of exactly n elements, each read as
  its T like an array element; for a named Tuple ``Tuple(a T1, b T2)`` also a JSON
  object, its members matched to the element names (unknown members ignored, as
  ClickHouse does; a duplicate is ``BAD_VALUE``). ``null``, a missing value, or an
  element an object leaves out: the element's default (NULL for ``Nullable``, else its
  zero; no DEFAULT is taken). An array of another length or any other value is
  ``BAD_VALUE`` with the value's text; a bad element quarantines the row, naming the
  column, with the element's text. Block data: ``values`` the Native Tuple payload, the
  elements' payloads (null map, then values) one after the other.
* ``LowCardinality(T)`` is read as ``T``: only its Native encoding differs.
* Paths: ``$.a[:]`` is ``$.a`` (Array columns only); ``$.a[N]`` reads element N of a
  JSON array like a key reads an object member (absent when ``a`` is not an array or is
  shorter: the missing-value rule applies).
* Out-of-range numbers and dates, invalid UTF-8, lone surrogate escapes, duplicate
  mapped keys, rows over ``max_row_bytes``, nesting over 64: the row is quarantined.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Sequence
from typing import Any

from tinyingest.block import Block, ColumnData, RowError
from tinyingest.errors import MAX_DEPTH, MAX_ERROR_VALUE, ErrorCode
from tinyingest.schema import FIXED_WIDTH, ColumnSpec, SchemaError, TypeCode
from tinyingest.timezones import NO_SHIFTS, wall_clock_shifts, wall_to_utc

_WS = b" \t\r\n"
_DIGITS = b"0123456789"

# Value kinds found for a column in one row (_CSV_TEXT: a CSV field for an Array/Map).
_MISSING, _NULL, _TEXT, _JSON_STRING, _NESTED, _CSV_TEXT = range(6)

#: Ingested columns with an expression DEFAULT a parser takes (bits of Block.omitted).
MAX_EXPRESSION_DEFAULTS = 64

_INT_RANGES: dict[TypeCode, tuple[int, int, str]] = {
    TypeCode.INT8: (-(1 << 7), (1 << 7) - 1, "<b"),
    TypeCode.INT16: (-(1 << 15), (1 << 15) - 1, "<h"),
    TypeCode.INT32: (-(1 << 31), (1 << 31) - 1, "<i"),
    TypeCode.INT64: (-(1 << 63), (1 << 63) - 1, "<q"),
    TypeCode.UINT8: (0, (1 << 8) - 1, "<B"),
    TypeCode.UINT16: (0, (1 << 16) - 1, "<H"),
    TypeCode.UINT32: (0, (1 << 32) - 1, "<I"),
    TypeCode.UINT64: (0, (1 << 64) - 1, "<Q"),
}


class _ConvertError(Exception):
    def __init__(self, code: ErrorCode) -> None:
        self.code = code


# --- text -> value converters (ext/convert.pxi mirrors these) -------------------------


def _parse_int(text: bytes, code: TypeCode) -> bytes:
    lo, hi, fmt = _INT_RANGES[code]
    if text == b"true":
        return struct.pack(fmt, 1)
    if text == b"false":
        return struct.pack(fmt, 0)
    body = text[1:] if text[:1] in (b"+", b"-") else text
    if not body or body.strip(_DIGITS):
        raise _ConvertError(ErrorCode.BAD_VALUE)
    if len(body.lstrip(b"0")) > 20:
        # Out of every range; int() of over 4300 digits would raise ValueError.
        raise _ConvertError(ErrorCode.OUT_OF_RANGE)
    value = int(text)
    if not lo <= value <= hi:
        raise _ConvertError(ErrorCode.OUT_OF_RANGE)
    return struct.pack(fmt, value)


def _is_float_text(text: bytes) -> bool:
    pos = 1 if text[:1] in (b"+", b"-") else 0
    end = len(text)
    int_digits = 0
    while pos < end and text[pos] in _DIGITS:
        pos += 1
        int_digits += 1
    frac_digits = 0
    if pos < end and text[pos] == 0x2E:  # '.'
        pos += 1
        while pos < end and text[pos] in _DIGITS:
            pos += 1
            frac_digits += 1
    if int_digits + frac_digits == 0:
        return False
    if pos < end and text[pos] in b"eE":
        pos += 1
        if pos < end and text[pos] in b"+-":
            pos += 1
        exp_digits = 0
        while pos < end and text[pos] in _DIGITS:
            pos += 1
            exp_digits += 1
        if exp_digits == 0:
            return False
    return pos == end


def _parse_float(text: bytes, code: TypeCode) -> bytes:
    if not _is_float_text(text):
        raise _ConvertError(ErrorCode.BAD_VALUE)
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _ConvertError(ErrorCode.OUT_OF_RANGE)
    if code is TypeCode.FLOAT32:
        try:
            return struct.pack("<f", value)
        except OverflowError:
            raise _ConvertError(ErrorCode.OUT_OF_RANGE) from None
    return struct.pack("<d", value)


def _days_from_civil(year: int, month: int, day: int) -> int:
    # Howard Hinnant's days_from_civil: days since 1970-01-01 (proleptic Gregorian).
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _days_in_month(year: int, month: int) -> int:
    if month == 2:
        leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
        return 29 if leap else 28
    return 30 if month in (4, 6, 9, 11) else 31


def _digits(text: bytes, pos: int, count: int) -> int:
    chunk = text[pos : pos + count]
    if len(chunk) != count or chunk.strip(_DIGITS):
        raise _ConvertError(ErrorCode.BAD_VALUE)
    return int(chunk)


def _parse_datetime(text: bytes, date_only: bool, date32: bool = False,
                    precision: int | None = None,
                    shifts: tuple[tuple[int, int], ...] = NO_SHIFTS) -> int:
    """Accepted forms; returns epoch seconds (DateTime), days (Date, Date32) or, with a
    ``precision``, DateTime64 ticks (10**-precision seconds).

    ``YYYY-MM-DD``; ``YYYY-MM-DD[T| ]HH:MM[:SS[.fraction]]`` optionally followed by
    ``Z`` or an offset ``+HH``, ``+HHMM``, ``+HH:MM``; a non-negative number of epoch
    seconds, or of milliseconds when >= 1e11 (fraction truncated). A Date takes the
    calendar date as written (time and offset are checked, then ignored); from an
    epoch number it takes the UTC date. DateTime64 keeps the fraction, truncated to
    ``precision`` digits (an epoch number in milliseconds: its last three digits, then
    its fraction). A date or time without ``Z`` or an offset is read in the column's
    zone (``shifts``: :mod:`tinyingest.timezones`), UTC when it has none.
    """
    fraction = b""
    if text and text[0] in _DIGITS and (len(text) < 5 or text[4] != 0x2D):  # no '-' at 4
        if not _is_float_text(text) or text[:1] in b"+-" or b"e" in text or b"E" in text:
            raise _ConvertError(ErrorCode.BAD_VALUE)
        digits = text.split(b".")[0].lstrip(b"0")
        if len(digits) > 20:  # int() of over 4300 digits would raise ValueError
            raise _ConvertError(ErrorCode.OUT_OF_RANGE)
        whole = int(digits or b"0")
        seconds = whole // 1000 if whole >= 100_000_000_000 else whole
        if precision is not None:
            fraction = text.partition(b".")[2]
            if whole >= 100_000_000_000:
                fraction = b"%03d" % (whole % 1000) + fraction
            return _ticks(seconds, fraction, precision)
        if seconds > 0xFFFFFFFF:
            raise _ConvertError(ErrorCode.OUT_OF_RANGE)
        return seconds // 86400 if date_only else seconds
    year = _digits(text, 0, 4)
    if text[4:5] != b"-" or text[7:8] != b"-":
        raise _ConvertError(ErrorCode.BAD_VALUE)
    month = _digits(text, 5, 2)
    day = _digits(text, 8, 2)
    if not 1 <= month <= 12 or not 1 <= day <= _days_in_month(year, month):
        raise _ConvertError(ErrorCode.BAD_VALUE)
    hour = minute = second = offset = 0
    zoned = False  # Z or an offset was written
    pos = 10
    if pos < len(text):
        if text[pos] not in b"T ":
            raise _ConvertError(ErrorCode.BAD_VALUE)
        hour = _digits(text, pos + 1, 2)
        if text[pos + 3 : pos + 4] != b":":
            raise _ConvertError(ErrorCode.BAD_VALUE)
        minute = _digits(text, pos + 4, 2)
        pos += 6
        if text[pos : pos + 1] == b":":
            second = _digits(text, pos + 1, 2)
            pos += 3
            if text[pos : pos + 1] == b".":
                pos += 1
                start = pos
                while pos < len(text) and text[pos] in _DIGITS:
                    pos += 1
                if pos == start:
                    raise _ConvertError(ErrorCode.BAD_VALUE)
                fraction = text[start:pos]
        if hour > 23 or minute > 59 or second > 59:
            raise _ConvertError(ErrorCode.BAD_VALUE)
        if text[pos : pos + 1] == b"Z":
            zoned = True
            pos += 1
        elif text[pos : pos + 1] in (b"+", b"-"):
            zoned = True
            sign = -1 if text[pos] == 0x2D else 1
            off_h = _digits(text, pos + 1, 2)
            pos += 3
            off_m = 0
            if text[pos : pos + 1] == b":":
                off_m = _digits(text, pos + 1, 2)
                pos += 3
            elif pos < len(text):
                off_m = _digits(text, pos, 2)
                pos += 2
            if off_h > 23 or off_m > 59:
                raise _ConvertError(ErrorCode.BAD_VALUE)
            offset = sign * (off_h * 3600 + off_m * 60)
        if pos != len(text):
            raise _ConvertError(ErrorCode.BAD_VALUE)
    days = _days_from_civil(year, month, day)
    if date32:
        if not _DATE32_MIN <= days <= _DATE32_MAX:
            raise _ConvertError(ErrorCode.OUT_OF_RANGE)
        return days
    if date_only:
        if not 0 <= days <= 0xFFFF:
            raise _ConvertError(ErrorCode.OUT_OF_RANGE)
        return days
    seconds = days * 86400 + hour * 3600 + minute * 60 + second
    seconds = seconds - offset if zoned else wall_to_utc(seconds, shifts)
    if precision is not None:
        return _ticks(seconds, fraction, precision)
    if not 0 <= seconds <= 0xFFFFFFFF:
        raise _ConvertError(ErrorCode.OUT_OF_RANGE)
    return seconds


def _ticks(seconds: int, fraction: bytes, precision: int) -> int:
    """DateTime64: seconds + the first ``precision`` fraction digits -> Int64 ticks."""
    if not _DT64_MIN <= seconds <= _DT64_MAX:
        raise _ConvertError(ErrorCode.OUT_OF_RANGE)
    scale: int = 10**precision
    ticks = seconds * scale + int(fraction[:precision].ljust(precision, b"0") or b"0")
    if ticks > (1 << 63) - 1:
        raise _ConvertError(ErrorCode.OUT_OF_RANGE)
    return ticks


_DATE32_MIN = _days_from_civil(1900, 1, 1)  # ClickHouse's Date32 range
_DATE32_MAX = _days_from_civil(2299, 12, 31)
_HEX = b"0123456789abcdefABCDEF"
# ClickHouse's DateTime64 range, 1900-01-01 00:00:00 to 2299-12-31 23:59:59 (and Int64).
_DT64_MIN = _DATE32_MIN * 86400
_DT64_MAX = (_DATE32_MAX + 1) * 86400 - 1

_BIG_INTS: dict[TypeCode, tuple[int, bool]] = {  # bytes, signed
    TypeCode.INT128: (16, True), TypeCode.UINT128: (16, False),
    TypeCode.INT256: (32, True), TypeCode.UINT256: (32, False),
}
_DECIMAL_BYTES = {TypeCode.DECIMAL32: 4, TypeCode.DECIMAL64: 8, TypeCode.DECIMAL128: 16,
                  TypeCode.DECIMAL256: 32}


def _parse_big_int(text: bytes, code: TypeCode) -> bytes:
    size, signed = _BIG_INTS[code]
    if text == b"true" or text == b"false":
        return (1 if text == b"true" else 0).to_bytes(size, "little")
    body = text[1:] if text[:1] in (b"+", b"-") else text
    if not body or body.strip(_DIGITS):
        raise _ConvertError(ErrorCode.BAD_VALUE)
    if len(body.lstrip(b"0")) > 80:  # beyond 2**256; int() of 4300+ digits raises
        raise _ConvertError(ErrorCode.OUT_OF_RANGE)
    value = int(text)
    bits = size * 8
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if not lo <= value <= hi:
        raise _ConvertError(ErrorCode.OUT_OF_RANGE)
    return value.to_bytes(size, "little", signed=signed)


def _parse_decimal(text: bytes, spec: ColumnSpec) -> bytes:
    """``[+-]digits[.digits]`` (or ``[+-].digits``), no exponent -> the scaled integer.

    Fraction digits beyond the scale must be zeros (no digit is ever lost:
    ``OUT_OF_RANGE`` otherwise), and the scaled integer needs at most P digits.
    """
    sign = -1 if text[:1] == b"-" else 1
    body = text[1:] if text[:1] in (b"+", b"-") else text
    whole, dot, fraction = body.partition(b".")
    if not whole + fraction or (whole + fraction).strip(_DIGITS):
        raise _ConvertError(ErrorCode.BAD_VALUE)
    scale = spec.scale
    if fraction[scale:].strip(b"0"):
        raise _ConvertError(ErrorCode.OUT_OF_RANGE)
    digits = (whole + fraction[:scale].ljust(scale, b"0")).lstrip(b"0")
    if len(digits) > spec.precision:
        raise _ConvertError(ErrorCode.OUT_OF_RANGE)
    value = sign * int(digits or b"0")
    return value.to_bytes(_DECIMAL_BYTES[spec.type_code], "little", signed=True)


def _hex_group(group: bytes) -> int:
    if not 1 <= len(group) <= 4 or group.strip(_HEX):
        raise _ConvertError(ErrorCode.BAD_VALUE)
    return int(group, 16)


def _parse_ipv6(text: bytes) -> bytes:
    """RFC 4291 text (hex groups, one ``::``, a dotted-quad tail) or a plain IPv4
    address (stored IPv4-mapped, ``::ffff:a.b.c.d``) -> 16 bytes, network order."""
    if b":" not in text:
        return b"\0" * 10 + b"\xff\xff" + struct.pack(">I", *struct.unpack("<I", _parse_ipv4(text)))
    head, gap, tail = text.partition(b"::")
    if b"::" in tail:
        raise _ConvertError(ErrorCode.BAD_VALUE)
    parts = [head.split(b":") if head else [], tail.split(b":") if tail else []]
    if not gap:
        parts = [parts[0], []]
    groups: list[list[int]] = [[], []]
    for side, items in enumerate(parts):
        for index, item in enumerate(items):
            last = side == (1 if gap else 0) and index == len(items) - 1
            if last and b"." in item:
                quad = struct.unpack("<I", _parse_ipv4(item))[0]
                groups[side] += [quad >> 16, quad & 0xFFFF]
            else:
                groups[side].append(_hex_group(item))
    count = len(groups[0]) + len(groups[1])
    if (gap and count > 7) or (not gap and count != 8):
        raise _ConvertError(ErrorCode.BAD_VALUE)
    words = groups[0] + [0] * (8 - count) + groups[1]
    return struct.pack(">8H", *words)


def _parse_bool(text: bytes) -> bytes:
    if text == b"true" or text == b"1":
        return b"\x01"
    if text == b"false" or text == b"0":
        return b"\x00"
    raise _ConvertError(ErrorCode.BAD_VALUE)


def _parse_uuid(text: bytes) -> bytes:
    if len(text) != 36 or text[8:9] + text[13:14] + text[18:19] + text[23:24] != b"----":
        raise _ConvertError(ErrorCode.BAD_VALUE)
    digits = text.replace(b"-", b"")
    if len(digits) != 32 or digits.strip(_HEX):
        raise _ConvertError(ErrorCode.BAD_VALUE)
    return struct.pack("<QQ", int(digits[:16], 16), int(digits[16:], 16))


def _parse_ipv4(text: bytes) -> bytes:
    parts = text.split(b".")
    if len(parts) != 4:
        raise _ConvertError(ErrorCode.BAD_VALUE)
    value = 0
    for part in parts:
        if not 1 <= len(part) <= 3 or part.strip(_DIGITS) or int(part) > 255:
            raise _ConvertError(ErrorCode.BAD_VALUE)
        value = value << 8 | int(part)
    return struct.pack("<I", value)


def _parse_enum(text: bytes, spec: ColumnSpec) -> bytes:
    fmt = "<b" if spec.type_code is TypeCode.ENUM8 else "<h"
    for name, value in spec.enum_values:
        if name == text:
            return struct.pack(fmt, value)
    body = text[1:] if text[:1] in (b"+", b"-") else text
    if body and not body.strip(_DIGITS) and len(body) <= 6:
        number = int(text)
        if any(value == number for _, value in spec.enum_values):
            return struct.pack(fmt, number)
    raise _ConvertError(ErrorCode.BAD_VALUE)


def _parse_fixed_string(text: bytes, length: int) -> bytes:
    _check_utf8(text)
    if len(text) > length:
        raise _ConvertError(ErrorCode.OUT_OF_RANGE)
    return text + b"\0" * (length - len(text))


def _check_utf8(text: bytes) -> None:
    try:
        text.decode("utf-8")
    except UnicodeDecodeError:
        raise _ConvertError(ErrorCode.INVALID_UTF8) from None


def convert_text(text: bytes, spec: ColumnSpec) -> bytes:
    """Text -> the value's Native bytes (String: the UTF-8 text itself)."""
    code = spec.type_code
    if code is TypeCode.STRING:
        _check_utf8(text)
        return text
    if code in _INT_RANGES:
        return _parse_int(text, code)
    if code is TypeCode.FLOAT32 or code is TypeCode.FLOAT64:
        return _parse_float(text, code)
    if code is TypeCode.DATE:
        return struct.pack("<H", _parse_datetime(text, True))
    if code is TypeCode.DATETIME:
        return struct.pack("<I", _parse_datetime(text, False,
                                                 shifts=wall_clock_shifts(spec.timezone)))
    if code is TypeCode.BOOL:
        return _parse_bool(text)
    if code is TypeCode.UUID:
        return _parse_uuid(text)
    if code is TypeCode.FIXED_STRING:
        return _parse_fixed_string(text, spec.length)
    if code is TypeCode.ENUM8 or code is TypeCode.ENUM16:
        return _parse_enum(text, spec)
    if code is TypeCode.DATE32:
        return struct.pack("<i", _parse_datetime(text, True, date32=True))
    if code is TypeCode.IPV4:
        return _parse_ipv4(text)
    if code is TypeCode.DATETIME64:
        return struct.pack("<q", _parse_datetime(text, False, precision=spec.scale,
                                                 shifts=wall_clock_shifts(spec.timezone)))
    if code in _BIG_INTS:
        return _parse_big_int(text, code)
    if code in _DECIMAL_BYTES:
        return _parse_decimal(text, spec)
    if code is TypeCode.IPV6:
        return _parse_ipv6(text)
    raise AssertionError(code)


# --- column builders -----------------------------------------------------------------


class _Column:
    __slots__ = ("spec", "code", "width", "zero", "nullable", "values", "offsets", "nulls",
                 "default", "depth", "ends", "is_map", "keys", "elements", "omit_bit",
                 "top_nullable")

    def __init__(self, spec: ColumnSpec) -> None:
        self.spec = spec
        self.code = spec.type_code
        self.width = FIXED_WIDTH[spec.type_code]
        # The value stored for NULL and for a missing value without DEFAULT.
        self.zero = b"\0" * (spec.length if spec.type_code is TypeCode.FIXED_STRING else self.width)
        self.nullable = spec.nullable
        # Array columns: values/offsets/nulls hold the elements; ends[level] the UInt64
        # end offsets of the arrays at that level (ends[0]: one per row).
        self.depth = spec.array_depth
        self.ends = [array("Q") for _ in range(self.depth)]
        # Map(String, V) columns: like Array(V), plus the keys, Native-ready (varint
        # length + bytes each).
        self.is_map = spec.is_map
        self.keys = bytearray()
        # Tuple columns: one column per element, each holding one value per row.
        self.elements = [_Column(element) for element in spec.tuple_elements]
        self.values = bytearray()
        self.offsets = array("q", [0])
        self.nulls = bytearray()
        # The row itself may be NULL (not an Array's or a Tuple's elements).
        self.top_nullable = self.nullable and not self.depth and not self.elements
        # Expression DEFAULT: the bit of Block.omitted for this column (set by the parser).
        self.omit_bit = 0
        self.default: bytes | None = None
        if spec.default_text is not None:
            try:
                if self.depth or self.elements:
                    raise _ConvertError(ErrorCode.BAD_VALUE)
                self.default = convert_text(spec.default_text, spec)
            except _ConvertError:
                raise SchemaError(
                    f"DEFAULT {spec.default_expr} of column '{spec.name}' is not {spec.ch_type}"
                ) from None

    def append(self, value: bytes, is_null: bool = False) -> None:
        self.values += value
        if self.width == 0:
            self.offsets.append(len(self.values))
        if self.nullable:
            self.nulls.append(1 if is_null else 0)

    def append_zero(self, is_null: bool) -> None:
        self.append(self.zero, is_null)

    def children(self, level: int) -> int:
        """Array columns: how many items level ``level`` holds (arrays, or elements)."""
        if level < self.depth:
            return len(self.ends[level])
        if self.nullable:
            return len(self.nulls)
        return len(self.offsets) - 1 if self.width == 0 else len(self.values) // self.width

    def append_key(self, key: bytes) -> None:
        length = len(key)
        while length >= 0x80:
            self.keys.append((length & 0x7F) | 0x80)
            length >>= 7
        self.keys.append(length)
        self.keys += key

    def end_array(self, level: int) -> None:
        self.ends[level].append(self.children(level + 1))

    def mark(self) -> tuple[int, ...]:
        if self.elements:
            return tuple(length for element in self.elements for length in
                         (len(element.values), len(element.offsets), len(element.nulls)))
        return (len(self.values), len(self.offsets), len(self.nulls), len(self.keys),
                *(len(ends) for ends in self.ends))

    def rollback(self, mark: tuple[int, ...]) -> None:
        if self.elements:
            for k, element in enumerate(self.elements):
                del element.values[mark[3 * k] :]
                del element.offsets[mark[3 * k + 1] :]
                del element.nulls[mark[3 * k + 2] :]
            return
        del self.values[mark[0] :]
        del self.offsets[mark[1] :]
        del self.nulls[mark[2] :]
        del self.keys[mark[3] :]
        for ends, length in zip(self.ends, mark[4:]):
            del ends[length:]

    def take(self) -> ColumnData:
        if self.elements:
            # Native Tuple layout: each element's payload (null map, then the values;
            # Strings varint length + bytes), one after the other.
            from tinyingest.native import encode_strings_py

            parts = []
            for element in self.elements:
                data = element.take()
                parts.append(data.nulls or b"")
                parts.append(encode_strings_py(data.offsets or b"", data.values)
                             if element.code is TypeCode.STRING else data.values)
            return ColumnData(values=b"".join(parts))
        if self.depth:
            # Native Array layout: the row end offsets here, then the nested payload:
            # inner end offsets (Map: the keys), the elements' null map, the elements.
            from tinyingest.native import encode_strings_py

            elements = encode_strings_py(self.offsets.tobytes(), bytes(self.values)) \
                if self.code is TypeCode.STRING else bytes(self.values)
            data = ColumnData(
                values=b"".join(ends.tobytes() for ends in self.ends[1:]) + bytes(self.keys)
                + bytes(self.nulls) + elements,
                offsets=self.ends[0].tobytes(),
            )
            self.ends = [array("Q") for _ in range(self.depth)]
            self.keys = bytearray()
        else:
            data = ColumnData(
                values=bytes(self.values),
                offsets=self.offsets.tobytes() if self.width == 0 else None,
                nulls=bytes(self.nulls) if self.nullable else None,
            )
        self.values = bytearray()
        self.offsets = array("q", [0])
        self.nulls = bytearray()
        return data


class _BadRow(Exception):
    def __init__(self, code: ErrorCode, column: int = -1, value: bytes = b"") -> None:
        self.code = code
        self.column = column
        self.value = value[:MAX_ERROR_VALUE]


class _ParserBase:
    """Line framing, builders and error collection shared by both formats."""

    def __init__(self, columns: Sequence[ColumnSpec], *, max_row_bytes: int) -> None:
        self._columns = [_Column(spec) for spec in columns]
        computed = [c for c in self._columns if c.spec.expression_default]
        if len(computed) > MAX_EXPRESSION_DEFAULTS:
            raise SchemaError(f"at most {MAX_EXPRESSION_DEFAULTS} ingested columns may have "
                              "an expression DEFAULT")
        for bit, column in enumerate(computed):
            column.omit_bit = 1 << bit
        # Block.omitted, one mask per stored row; None without expression DEFAULTs.
        self._omitted: array[int] | None = array("Q") if computed else None
        self._row_omitted = 0  # the mask of the row being parsed
        self._max_row_bytes = max_row_bytes
        self._num_rows = 0
        self._errors: list[RowError] = []
        self._tail = bytearray()  # an incomplete row carried across feed() calls
        self._skipping = False  # inside a row longer than max_row_bytes
        self._at_start = True  # a UTF-8 BOM is stripped only here
        self._bom_pending = bytearray()  # the first bytes, while they may still be a BOM

    @property
    def columns(self) -> list[ColumnSpec]:
        return [c.spec for c in self._columns]

    @property
    def num_rows(self) -> int:
        return self._num_rows

    def take_block(self) -> Block:
        """Hand over the rows parsed so far and start a new block."""
        omitted = self._omitted.tobytes() if self._omitted is not None else None
        block = Block(self._num_rows, [c.take() for c in self._columns], self._errors, omitted)
        self._num_rows = 0
        self._errors = []
        if self._omitted is not None:
            self._omitted = array("Q")
        return block

    def _strip_bom(self, data: bytes) -> bytes:
        if self._at_start:
            # Keep deciding until three bytes have been seen: the BOM may be split.
            data = bytes(self._bom_pending) + data
            if len(data) < 3 and b"\xef\xbb\xbf".startswith(data):
                self._bom_pending = bytearray(data)
                return b""
            self._bom_pending = bytearray()
            self._at_start = False
            if data.startswith(b"\xef\xbb\xbf"):
                return data[3:]
        return data

    def _flush_bom(self) -> bytes:
        """At the end of the body: bytes held back as a possible BOM are data."""
        pending = bytes(self._bom_pending)
        self._bom_pending = bytearray()
        self._at_start = False
        return pending

    def _row(self, row: bytes) -> None:
        marks = [c.mark() for c in self._columns]
        self._row_omitted = 0
        try:
            self._parse_row(row)
        except _BadRow as bad:
            for column, mark in zip(self._columns, marks):
                column.rollback(mark)
            self._errors.append(RowError(bytes(row), bad.column, int(bad.code), bad.value))
            return
        if self._omitted is not None:
            self._omitted.append(self._row_omitted)
        self._num_rows += 1

    def _carry(self, rest: bytes) -> None:
        if self._skipping:
            return
        self._tail += rest
        if len(self._tail) > self._max_row_bytes:
            self._too_long(self._tail)
            self._tail = bytearray()
            self._skipping = True

    def _too_long(self, row: bytes | bytearray) -> None:
        self._errors.append(RowError(bytes(row[: self._max_row_bytes]), -1,
                                     int(ErrorCode.ROW_TOO_LONG), b""))

    def _parse_row(self, row: bytes) -> None:
        raise NotImplementedError

    def _store(self, index: int, kind: int, text: bytes) -> None:
        """Convert one found value into column ``index`` or raise _BadRow."""
        column = self._columns[index]
        if kind == _MISSING or (kind == _NULL and not column.top_nullable):
            # No value (or null where NULL cannot be stored): the DEFAULT, if any.
            if column.omit_bit:
                self._row_omitted |= column.omit_bit
                kind = _MISSING  # the zero / empty value here; ClickHouse computes it
            elif column.default is not None:
                kind = _MISSING
        if column.elements:
            self._store_tuple(index, kind, text)
            return
        if column.depth:
            if kind == _CSV_TEXT:
                self._store_csv(index, text)
            elif column.is_map:
                self._store_map(index, kind, text)
            else:
                self._store_array(index, kind, text, 0)
            return
        if kind == _MISSING:
            if column.default is not None:
                column.append(column.default)
            elif column.nullable or column.omit_bit:
                column.append_zero(column.nullable)
            else:
                raise _BadRow(ErrorCode.MISSING, index)
            return
        self._store_element(index, kind, text)

    def _store_element(self, index: int, kind: int, text: bytes,
                       null_text: bytes = b"null", column: _Column | None = None) -> None:
        """One value (a row's, an array element, or into ``column``, an element of
        Tuple column ``index``) into column ``index``."""
        if column is None:
            column = self._columns[index]
        if kind == _NULL:
            if not column.nullable:
                raise _BadRow(ErrorCode.NULL, index, null_text)
            column.append_zero(True)
            return
        if kind == _NESTED and column.code is not TypeCode.STRING:
            raise _BadRow(ErrorCode.BAD_VALUE, index, text)
        try:
            column.append(convert_text(text, column.spec))
        except _ConvertError as exc:
            raise _BadRow(exc.code, index, text) from None

    def _store_array(self, index: int, kind: int, text: bytes, level: int) -> None:
        """A JSON array (compact text) into level ``level`` of Array column ``index``;
        null or missing is the empty array, any other value is not an array."""
        column = self._columns[index]
        if kind == _NESTED and text[:1] == b"[":
            for item_kind, item in _json_items(text):
                if level + 1 < column.depth:
                    self._store_array(index, item_kind, item, level + 1)
                else:
                    self._store_element(index, item_kind, item)
        elif kind != _NULL and kind != _MISSING:
            raise _BadRow(ErrorCode.BAD_VALUE, index, text)
        column.end_array(level)

    def _store_tuple(self, index: int, kind: int, text: bytes) -> None:
        """A JSON array of exactly N elements (or, for a named Tuple, an object of its
        element names) into Tuple column ``index``; null or missing is every element's
        default (NULL for Nullable, else the zero), as is a member an object leaves out."""
        column = self._columns[index]
        elements = column.elements
        if kind == _NESTED and text[:1] == b"[":
            items = _json_items(text)
            if len(items) != len(elements):
                raise _BadRow(ErrorCode.BAD_VALUE, index, text)
            for element, (item_kind, item) in zip(elements, items):
                self._store_element(index, item_kind, item, column=element)
            return
        names = [name.encode() for name in column.spec.tuple_names]
        if kind == _NESTED and text[:1] == b"{" and any(names):
            seen = [False] * len(elements)
            for key, item_kind, item in _json_members(text):
                if key not in names:
                    continue  # unknown members are ignored, as ClickHouse does
                k = names.index(key)
                if seen[k]:
                    raise _BadRow(ErrorCode.BAD_VALUE, index, text)
                seen[k] = True
                self._store_element(index, item_kind, item, column=elements[k])
            for k, element in enumerate(elements):
                if not seen[k]:
                    element.append_zero(element.nullable)
            return
        if kind != _NULL and kind != _MISSING:
            raise _BadRow(ErrorCode.BAD_VALUE, index, text)
        for element in elements:
            element.append_zero(element.nullable)

    def _store_map(self, index: int, kind: int, text: bytes) -> None:
        """A JSON object (compact text) into Map column ``index``; null or missing is
        the empty map, any other value is not a map."""
        column = self._columns[index]
        if kind == _NESTED and text[:1] == b"{":
            for key, item_kind, item in _json_members(text):
                column.append_key(key)
                self._store_element(index, item_kind, item)
        elif kind != _NULL and kind != _MISSING:
            raise _BadRow(ErrorCode.BAD_VALUE, index, text)
        column.end_array(0)

    def _store_csv(self, index: int, text: bytes) -> None:
        """A CSV field's Array or Map literal into column ``index``."""
        column = self._columns[index]
        try:
            node = _csv_literal(text)
        except _ConvertError:
            node = None
        if node is None or node[0] != (_CSV_MAP if column.is_map else _CSV_LIST):
            raise _BadRow(ErrorCode.BAD_VALUE, index, text)
        if column.is_map:
            for key, value in node[1] or ():
                assert isinstance(key, tuple) and isinstance(value, tuple)
                column.append_key(self._csv_key(index, key))
                self._store_csv_element(index, value)
            column.end_array(0)
        else:
            self._store_csv_array(index, node, 0)

    def _store_csv_array(self, index: int, node: _CsvNode, level: int) -> None:
        column = self._columns[index]
        for item in node[1] or ():
            assert isinstance(item, tuple) and len(item) == 3
            if level + 1 < column.depth:
                if item[0] == _CSV_LIST:
                    self._store_csv_array(index, item, level + 1)
                elif item[0] == _CSV_BARE and item[2] == b"NULL":
                    column.end_array(level + 1)
                else:
                    raise _BadRow(ErrorCode.BAD_VALUE, index, item[2])
            else:
                self._store_csv_element(index, item)
        column.end_array(level)

    def _store_csv_element(self, index: int, node: _CsvNode) -> None:
        kind, _, text = node
        if kind == _CSV_LIST or kind == _CSV_MAP:
            raise _BadRow(ErrorCode.BAD_VALUE, index, text)
        if kind == _CSV_BARE and text == b"NULL":
            self._store_element(index, _NULL, text, text)
        else:
            self._store_element(index, _TEXT, text)

    def _csv_key(self, index: int, node: _CsvNode) -> bytes:
        """A CSV Map key: a String element that is not NULL."""
        kind, _, text = node
        if kind == _CSV_LIST or kind == _CSV_MAP:
            raise _BadRow(ErrorCode.BAD_VALUE, index, text)
        if kind == _CSV_BARE and text == b"NULL":
            raise _BadRow(ErrorCode.NULL, index, text)
        try:
            _check_utf8(text)
        except _ConvertError as exc:
            raise _BadRow(exc.code, index, text) from None
        return text


def _json_members(text: bytes) -> list[tuple[bytes, int, bytes]]:
    """The members of a valid, compact JSON object: (key, kind, text), the key
    unescaped, the value as :func:`_json_items` gives an element."""
    members: list[tuple[bytes, int, bytes]] = []
    scanner = _JSONScanner(text, [])
    pos = 1
    if text[pos : pos + 1] == b"}":
        return members
    while True:
        pos, key = scanner.string(pos, -1)
        pos += 1  # the colon
        first = text[pos]
        if first == 0x22:  # '"'
            end, value = scanner.string(pos, -1)
            members.append((key, _JSON_STRING, value))
        else:
            end = scanner.value(pos, 1, None)
            kind = _NESTED if first in b"{[" else _NULL if first == 0x6E else _TEXT  # 'n'
            members.append((key, kind, text[pos:end]))
        if text[end : end + 1] == b"}":
            return members
        pos = end + 1  # the comma


# --- CSV Array and Map literals ------------------------------------------------------

# A parsed literal: (kind, children, text). Lists: children the items; maps: children
# (key, value) pairs; both: text as written. Strings: their unescaped content; bare
# tokens: as written (children None).
_CsvNode = tuple[int, Any, bytes]
_CSV_LIST, _CSV_MAP, _CSV_STRING, _CSV_BARE = range(4)
_CSV_WS = b" \t"
_CSV_SEPARATORS = b",[]{}:' \t"
_CSV_ESCAPES = {ord("b"): 8, ord("f"): 12, ord("n"): 10, ord("r"): 13, ord("t"): 9,
                ord("0"): 0, ord("a"): 7, ord("v"): 11}


def _csv_ws(text: bytes, pos: int) -> int:
    while pos < len(text) and text[pos] in _CSV_WS:
        pos += 1
    return pos


def _csv_literal(text: bytes) -> _CsvNode:
    """A whole CSV field as one literal; raises _ConvertError(BAD_VALUE) if it is not."""
    node, pos = _csv_value(text, _csv_ws(text, 0), 1)
    if _csv_ws(text, pos) != len(text):
        raise _ConvertError(ErrorCode.BAD_VALUE)
    return node


def _csv_value(text: bytes, pos: int, depth: int) -> tuple[_CsvNode, int]:
    if pos >= len(text):
        raise _ConvertError(ErrorCode.BAD_VALUE)
    first = text[pos]
    if first == 0x5B or first == 0x7B:  # '[' '{'
        if depth > MAX_DEPTH:
            raise _ConvertError(ErrorCode.BAD_VALUE)
        is_map = first == 0x7B
        close = 0x7D if is_map else 0x5D
        start = pos
        children: list[Any] = []
        pos = _csv_ws(text, pos + 1)
        if pos < len(text) and text[pos] == close:
            return (_CSV_MAP if is_map else _CSV_LIST, children, text[start : pos + 1]), pos + 1
        while True:
            item, pos = _csv_value(text, pos, depth + 1)
            if is_map:
                pos = _csv_ws(text, pos)
                if text[pos : pos + 1] != b":":
                    raise _ConvertError(ErrorCode.BAD_VALUE)
                value, pos = _csv_value(text, _csv_ws(text, pos + 1), depth + 1)
                children.append((item, value))
            else:
                children.append(item)
            pos = _csv_ws(text, pos)
            if pos < len(text) and text[pos] == close:
                return (_CSV_MAP if is_map else _CSV_LIST, children,
                        text[start : pos + 1]), pos + 1
            if text[pos : pos + 1] != b",":
                raise _ConvertError(ErrorCode.BAD_VALUE)
            pos = _csv_ws(text, pos + 1)
    if first == 0x27:  # "'"
        return _csv_quoted(text, pos)
    end = pos
    while end < len(text) and text[end] not in _CSV_SEPARATORS:
        end += 1
    if end == pos:
        raise _ConvertError(ErrorCode.BAD_VALUE)
    return (_CSV_BARE, None, text[pos:end]), end


def _csv_quoted(text: bytes, pos: int) -> tuple[_CsvNode, int]:
    out = bytearray()
    pos += 1
    while True:
        if pos >= len(text):
            raise _ConvertError(ErrorCode.BAD_VALUE)
        byte = text[pos]
        if byte == 0x27:
            if text[pos + 1 : pos + 2] == b"'":
                out.append(0x27)
                pos += 2
                continue
            return (_CSV_STRING, None, bytes(out)), pos + 1
        if byte == 0x5C:  # backslash
            if pos + 1 >= len(text):
                raise _ConvertError(ErrorCode.BAD_VALUE)
            escape = text[pos + 1]
            if escape == 0x78:  # 'x'
                digits = text[pos + 2 : pos + 4]
                if len(digits) != 2 or digits.strip(_HEX):
                    raise _ConvertError(ErrorCode.BAD_VALUE)
                out.append(int(digits, 16))
                pos += 4
                continue
            out.append(_CSV_ESCAPES.get(escape, escape))
            pos += 2
            continue
        out.append(byte)
        pos += 1


def _json_items(text: bytes) -> list[tuple[int, bytes]]:
    """The elements of a valid, compact JSON array, each as (kind, text) like a value
    found for a column: string content unescaped, objects and arrays as compact text."""
    items: list[tuple[int, bytes]] = []
    scanner = _JSONScanner(text, [])
    pos = 1
    if text[pos : pos + 1] == b"]":
        return items
    while True:
        first = text[pos]
        if first == 0x22:  # '"'
            end, value = scanner.string(pos, -1)
            items.append((_JSON_STRING, value))
        else:
            end = scanner.value(pos, 1, None)
            kind = _NESTED if first in b"{[" else _NULL if first == 0x6E else _TEXT  # 'n'
            items.append((kind, text[pos:end]))
        if text[end : end + 1] == b"]":
            return items
        pos = end + 1  # the comma


# --- NDJSON ----------------------------------------------------------------------------


class _PathNode:
    __slots__ = ("children", "leaves")

    def __init__(self) -> None:
        # Object keys (bytes) and array indexes (int).
        self.children: dict[bytes | int, _PathNode] = {}
        self.leaves: list[int] = []


class NDJSONParser(_ParserBase):
    """Newline-delimited JSON -> column blocks.

    :param columns: the columns to fill, each reading ``spec.path`` from every row.
    :param max_row_bytes: longer rows are quarantined (``ROW_TOO_LONG``) without
        being buffered.
    """

    def __init__(self, columns: Sequence[ColumnSpec], *, max_row_bytes: int = 1 << 20) -> None:
        super().__init__(columns, max_row_bytes=max_row_bytes)
        self._root = _PathNode()
        for index, spec in enumerate(columns):
            if spec.path is None:
                raise SchemaError(f"column '{spec.name}' has no jsonpath")
            node = self._root
            for key in spec.path:
                step = key if isinstance(key, int) else key.encode()
                node = node.children.setdefault(step, _PathNode())
            node.leaves.append(index)
        self._found: list[tuple[int, bytes]] = []

    def feed(self, data: bytes | bytearray | memoryview) -> int:
        """Parse the complete rows in ``data``; returns how many rows ended (stored or not)."""
        chunk = self._strip_bom(bytes(data))
        ended = 0
        start = 0
        while True:
            newline = chunk.find(b"\n", start)
            if newline < 0:
                break
            ended += self._end_line(chunk[start:newline])
            start = newline + 1
        self._carry(chunk[start:])
        return ended

    def finish(self) -> int:
        """Parse a last row that had no trailing newline."""
        ended = self.feed(self._flush_bom())
        ended += self._end_line(b"")
        self._at_start = True
        return ended

    def _end_line(self, piece: bytes) -> int:
        if self._skipping:
            self._skipping = False
            return 1  # reported when the limit was crossed
        if self._tail:
            line = bytes(self._tail) + piece
            self._tail = bytearray()
        else:
            line = piece
        if len(line) > self._max_row_bytes:
            self._too_long(line)
            return 1
        if not line.strip(_WS):
            return 0
        self._row(line)
        return 1

    def _parse_row(self, row: bytes) -> None:
        found: list[tuple[int, bytes]] = [(_MISSING, b"")] * len(self._columns)
        scanner = _JSONScanner(row, found)
        pos = scanner.ws(0)
        if row[pos : pos + 1] != b"{":
            # Valid JSON that is not an object, or not JSON at all.
            try:
                end = scanner.ws(scanner.value(pos, 1, None))
                code = ErrorCode.NOT_OBJECT if end == len(row) else ErrorCode.INVALID_JSON
            except _BadRow as bad:
                code = bad.code
            raise _BadRow(code)
        end = scanner.value(pos, 1, self._root)
        if scanner.ws(end) != len(row):
            raise _BadRow(ErrorCode.INVALID_JSON)
        for index, (kind, text) in enumerate(found):
            self._store(index, kind, text)


class _JSONScanner:
    """Validates one JSON row and records the values of mapped paths."""

    def __init__(self, row: bytes, found: list[tuple[int, bytes]]) -> None:
        self.row = row
        self.found = found

    def ws(self, pos: int) -> int:
        row = self.row
        while pos < len(row) and row[pos] in _WS:
            pos += 1
        return pos

    def value(self, pos: int, depth: int, node: _PathNode | None) -> int:
        """Scan the value at ``pos``; record it for ``node``'s columns; return its end."""
        row = self.row
        if pos >= len(row):
            raise _BadRow(ErrorCode.INVALID_JSON)
        first = row[pos]
        leaves = node.leaves if node is not None else []
        if first == 0x22:  # '"'
            end, text = self.string(pos, leaves[0] if leaves else -1)
            self._record(leaves, _JSON_STRING, text)
            return end
        if first in b"{[":
            if depth > MAX_DEPTH:
                raise _BadRow(ErrorCode.TOO_DEEP)
            if first == 0x7B:
                end = self.object(pos, depth, node)
            else:
                end = self.array(pos, depth, node)
            if leaves:
                self._record(leaves, _NESTED, _compact(row[pos:end]))
            return end
        for literal, kind in ((b"true", _TEXT), (b"false", _TEXT), (b"null", _NULL)):
            if row.startswith(literal, pos):
                self._record(leaves, kind, literal)
                return pos + len(literal)
        end = self.number(pos)
        self._record(leaves, _TEXT, row[pos:end])
        return end

    def _record(self, leaves: list[int], kind: int, text: bytes) -> None:
        for index in leaves:
            if self.found[index][0] != _MISSING:
                raise _BadRow(ErrorCode.DUPLICATE_KEY, index)
            self.found[index] = (kind, text)

    def object(self, pos: int, depth: int, node: _PathNode | None) -> int:
        row = self.row
        pos = self.ws(pos + 1)
        if row[pos : pos + 1] == b"}":
            return pos + 1
        while True:
            if row[pos : pos + 1] != b'"':
                raise _BadRow(ErrorCode.INVALID_JSON)
            pos, key = self.string(pos, -1)
            pos = self.ws(pos)
            if row[pos : pos + 1] != b":":
                raise _BadRow(ErrorCode.INVALID_JSON)
            child = node.children.get(key) if node is not None else None
            pos = self.value(self.ws(pos + 1), depth + 1, child)
            pos = self.ws(pos)
            sep = row[pos : pos + 1]
            if sep == b"}":
                return pos + 1
            if sep != b",":
                raise _BadRow(ErrorCode.INVALID_JSON)
            pos = self.ws(pos + 1)

    def array(self, pos: int, depth: int, node: _PathNode | None) -> int:
        row = self.row
        pos = self.ws(pos + 1)
        if row[pos : pos + 1] == b"]":
            return pos + 1
        index = 0
        while True:
            child = node.children.get(index) if node is not None else None
            index += 1
            pos = self.ws(self.value(pos, depth + 1, child))
            sep = row[pos : pos + 1]
            if sep == b"]":
                return pos + 1
            if sep != b",":
                raise _BadRow(ErrorCode.INVALID_JSON)
            pos = self.ws(pos + 1)

    def number(self, pos: int) -> int:
        row = self.row
        start = pos
        if row[pos : pos + 1] == b"-":
            pos += 1
        if row[pos : pos + 1] == b"0":
            pos += 1
        elif row[pos : pos + 1] and row[pos] in b"123456789":
            while pos < len(row) and row[pos] in _DIGITS:
                pos += 1
        else:
            raise _BadRow(ErrorCode.INVALID_JSON)
        if row[pos : pos + 1] == b".":
            pos += 1
            digits = pos
            while pos < len(row) and row[pos] in _DIGITS:
                pos += 1
            if pos == digits:
                raise _BadRow(ErrorCode.INVALID_JSON)
        if row[pos : pos + 1] in (b"e", b"E"):
            pos += 1
            if row[pos : pos + 1] in (b"+", b"-"):
                pos += 1
            digits = pos
            while pos < len(row) and row[pos] in _DIGITS:
                pos += 1
            if pos == digits:
                raise _BadRow(ErrorCode.INVALID_JSON)
        assert pos > start
        return pos

    def string(self, pos: int, column: int) -> tuple[int, bytes]:
        """Scan the string at ``pos`` (a quote); return its end and unescaped UTF-8."""
        row = self.row
        out = bytearray()
        pos += 1
        run = pos
        while True:
            if pos >= len(row):
                raise _BadRow(ErrorCode.INVALID_JSON)
            byte = row[pos]
            if byte == 0x22:
                out += row[run:pos]
                break
            if byte < 0x20:
                raise _BadRow(ErrorCode.INVALID_JSON)
            if byte != 0x5C:
                pos += 1
                continue
            out += row[run:pos]
            escape = row[pos + 1 : pos + 2]
            simple = _ESCAPES.get(escape)
            if simple is not None:
                out += simple
                pos += 2
            elif escape == b"u":
                unit = self._hex4(pos + 2)
                pos += 6
                if 0xD800 <= unit <= 0xDBFF:
                    if row[pos : pos + 2] != b"\\u":
                        raise _BadRow(ErrorCode.INVALID_UTF8, column)
                    low = self._hex4(pos + 2)
                    if not 0xDC00 <= low <= 0xDFFF:
                        raise _BadRow(ErrorCode.INVALID_UTF8, column)
                    unit = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
                    pos += 6
                elif 0xDC00 <= unit <= 0xDFFF:
                    raise _BadRow(ErrorCode.INVALID_UTF8, column)
                out += chr(unit).encode("utf-8")
            else:
                raise _BadRow(ErrorCode.INVALID_JSON)
            run = pos
        text = bytes(out)
        try:
            text.decode("utf-8")
        except UnicodeDecodeError:
            raise _BadRow(ErrorCode.INVALID_UTF8, column) from None
        return pos + 1, text

    def _hex4(self, pos: int) -> int:
        digits = self.row[pos : pos + 4]
        if len(digits) != 4 or digits.strip(b"0123456789abcdefABCDEF"):
            raise _BadRow(ErrorCode.INVALID_JSON)
        return int(digits, 16)


_ESCAPES = {b'"': b'"', b"\\": b"\\", b"/": b"/", b"b": b"\b", b"f": b"\f",
            b"n": b"\n", b"r": b"\r", b"t": b"\t"}


def _compact(raw: bytes) -> bytes:
    """Valid JSON text without the whitespace outside strings."""
    out = bytearray()
    in_string = False
    pos = 0
    while pos < len(raw):
        byte = raw[pos]
        if in_string:
            out.append(byte)
            if byte == 0x5C:
                out.append(raw[pos + 1])
                pos += 1
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
            out.append(byte)
        elif byte not in _WS:
            out.append(byte)
        pos += 1
    return bytes(out)


# --- CSV -------------------------------------------------------------------------------


class CSVParser(_ParserBase):
    """RFC 4180 CSV -> column blocks.

    Fields map to ``columns`` by position, or by name when the first record is a
    header naming every column (extra header fields are ignored).

    :param delimiter: one byte, ``,`` by default (``dialect_delimiter``).
    :param escapechar: one byte or ``None``: the next byte is taken literally
        (``dialect_escapechar``).
    :param header: ``None`` (default): the first record is a header when it names every
        column; ``True``: the first record is a header, skipped even when it does not
        name every column (fields then map by position); ``False``: there is no header.
    """

    def __init__(self, columns: Sequence[ColumnSpec], *, max_row_bytes: int = 1 << 20,
                 delimiter: bytes = b",", escapechar: bytes | None = None,
                 header: bool | None = None) -> None:
        super().__init__(columns, max_row_bytes=max_row_bytes)
        for spec in columns:
            if spec.tuple_elements:
                raise SchemaError(f"column '{spec.name}' ({spec.ch_type}): Tuple columns are "
                                  "not supported in CSV (send NDJSON)")
        if len(delimiter) != 1 or delimiter in b'"\r\n':
            raise ValueError("delimiter must be one byte other than a quote or newline")
        if escapechar is not None and (len(escapechar) != 1 or escapechar in b'\r\n'):
            raise ValueError("escapechar must be one byte")
        self._delimiter = delimiter[0]
        self._escape = escapechar[0] if escapechar is not None else -1
        # The first record: a header if it names every column (header=None), always a
        # header (True) or never (False).
        self._header_forced = bool(header)
        self._header_done = header is not None and not header
        self._mapping: list[int] = list(range(len(columns)))  # field index per column
        self._num_fields = len(columns)
        self._in_quotes = False  # quote state at the end of self._tail
        self._escaped = False  # the chunk ended on the escape character

    def feed(self, data: bytes | bytearray | memoryview) -> int:
        chunk = self._strip_bom(bytes(data))
        ended = 0
        start = 0
        pos = 1 if self._escaped and chunk else 0
        if chunk:
            self._escaped = False
        in_quotes = self._in_quotes
        escape = self._escape
        while pos < len(chunk):
            byte = chunk[pos]
            if byte == escape:
                pos += 2
                continue
            if byte == 0x22:
                in_quotes = not in_quotes
            elif byte == 0x0A and not in_quotes:
                ended += self._end_record(chunk[start:pos])
                start = pos + 1
            pos += 1
        self._in_quotes = in_quotes
        self._escaped = pos > len(chunk)
        self._carry(chunk[start:])
        return ended

    def finish(self) -> int:
        ended = self.feed(self._flush_bom())
        ended += self._end_record(b"")
        self._in_quotes = False
        self._escaped = False
        self._at_start = True
        return ended

    def _end_record(self, piece: bytes) -> int:
        if self._skipping:
            self._skipping = False
            return 1
        if self._tail:
            record = bytes(self._tail) + piece
            self._tail = bytearray()
        else:
            record = piece
        if len(record) > self._max_row_bytes:
            self._too_long(record)
            return 1
        if record.endswith(b"\r"):
            record = record[:-1]
        if not record:
            return 0
        if not self._header_done:
            self._header_done = True
            if self._detect_header(record) or self._header_forced:
                return 0
        self._row(record)
        return 1

    def _detect_header(self, record: bytes) -> bool:
        try:
            fields = split_csv_record(record, self._delimiter, self._escape)
        except _BadRow:
            return False
        names = [text for text, _ in fields]
        wanted = [c.spec.name.encode() for c in self._columns]
        if not all(name in names for name in wanted):
            return False
        self._mapping = [names.index(name) for name in wanted]
        self._num_fields = len(names)
        return True

    def _parse_row(self, row: bytes) -> None:
        fields = split_csv_record(row, self._delimiter, self._escape)
        if len(fields) != self._num_fields:
            raise _BadRow(ErrorCode.FIELD_COUNT, -1,
                          f"expected {self._num_fields}, got {len(fields)}".encode())
        for index, field_index in enumerate(self._mapping):
            text, quoted = fields[field_index]
            column = self._columns[index]
            if column.depth:
                # Array / Map: empty or \\N (unquoted) is empty, else a literal.
                empty = not quoted and (text == b"" or text == b"\\N")
                self._store(index, _NULL if empty else _CSV_TEXT, text)
                continue
            if not quoted and (text == b"" or text == b"\\N"):
                if column.nullable:
                    self._store(index, _NULL, b"")
                    continue
                if text == b"\\N" and column.default is None and not column.omit_bit:
                    raise _BadRow(ErrorCode.NULL, index, text)
                if column.default is not None or column.omit_bit:
                    self._store(index, _MISSING, b"")
                    continue
            self._store(index, _TEXT, text)


def split_csv_record(record: bytes, delimiter: int, escape: int = -1) -> list[tuple[bytes, bool]]:
    """One CSV record -> [(field text, was quoted)]; raises _BadRow(BAD_CSV) if malformed."""
    fields: list[tuple[bytes, bool]] = []
    pos = 0
    end = len(record)
    while True:
        out = bytearray()
        quoted = False
        if pos < end and record[pos] == 0x22:
            quoted = True
            pos += 1
            while True:
                if pos >= end:
                    raise _BadRow(ErrorCode.BAD_CSV)
                byte = record[pos]
                if byte == escape and pos + 1 < end:
                    out.append(record[pos + 1])
                    pos += 2
                    continue
                if byte == 0x22:
                    if record[pos + 1 : pos + 2] == b'"':
                        out.append(0x22)
                        pos += 2
                        continue
                    pos += 1
                    break
                out.append(byte)
                pos += 1
            if pos < end and record[pos] != delimiter:
                raise _BadRow(ErrorCode.BAD_CSV)
        else:
            while pos < end and record[pos] != delimiter:
                byte = record[pos]
                if byte == escape and pos + 1 < end:
                    out.append(record[pos + 1])
                    pos += 2
                    continue
                if byte == 0x22:
                    raise _BadRow(ErrorCode.BAD_CSV)
                out.append(byte)
                pos += 1
        fields.append((bytes(out), quoted))
        if pos >= end:
            return fields
        pos += 1  # the delimiter
