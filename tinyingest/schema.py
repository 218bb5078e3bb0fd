"""ClickHouse type strings -> parser type codes; the only place types are parsed.

A data source's column list becomes a tuple of :class:`ColumnSpec`. The parsers
(``_native`` and ``_pyparser``) see only ``type_code``, ``nullable``, ``path`` and
``default_text``; the Native encoder sees ``ch_type`` and ``type_code``.

How to add a new type:
1. add a member to :class:`TypeCode` here *and* to ``ext/codes.pxd`` (same number),
   and its Native width to :data:`FIXED_WIDTH`;
2. map its ClickHouse spelling in ``_SIMPLE_TYPES`` (or in :func:`parse_type`, with
   its arguments in :class:`ParsedType`: ``length``, ``enum_values``);
3. give it a converter in ``ext/columns.pxi`` and ``_pyparser.convert_text``;
4. give it a Native encoding in ``native.py`` (fixed width or strings);
5. test both parsers and a server round trip in ``tests/test_parse_types.py``.

Types beyond the numbers, String, Date and DateTime (the text each accepts is in
``_pyparser``'s module docstring): ``Bool``, ``UUID``, ``FixedString(N)``,
``Enum8(...)``/``Enum16(...)``, ``Date32``, ``IPv4``, ``DateTime64(p[, tz])``,
``Int128``/``UInt128``/``Int256``/``UInt256``, ``Decimal(P, S)``/``Decimal32(S)``...
``Decimal256(S)`` and ``IPv6``.

``Array(T)`` and ``Array(Array(T))`` of any of those (``T`` may be ``Nullable``, not
``LowCardinality``) keep ``type_code``, ``nullable`` and the other fields of the
*element* type, plus ``array_depth`` (1 or 2); an Array itself is never NULL. Their
NDJSON path may end in ``[:]`` (``$.items[:]`` is the same as ``$.items``), and a path
may index a JSON array: ``$.a[0]`` (the first element; see ``parse_jsonpath``).

``LowCardinality(T)`` and ``LowCardinality(Nullable(T))``: ``T`` String, FixedString(N)
or a fixed-width type ClickHouse allows there (not Enum, Decimal or DateTime64; see
:data:`LOW_CARDINALITY_TYPES`); parsed as ``T``, only the Native encoding differs.

``Tuple(T1, T2, ...)`` / ``Tuple(a T1, b T2, ...)`` of the scalars above (``Nullable``
too): ``type_code`` TUPLE, one :class:`ColumnSpec` per element in ``tuple_elements``;
never NULL, and not inside Array, Map, LowCardinality or Nullable.

``Map(String, V)``, ``V`` any of those scalars (``Nullable`` too), is held like
``Array(V)`` (``array_depth`` 1, the fields describe ``V``) plus ``is_map``: ClickHouse
serializes it as ``Array(Tuple(String, V))``. ClickHouse 18.16 has no Map type.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, fields

from .timezones import is_known_zone


class TypeCode(enum.IntEnum):
    # Keep in step with ext/codes.pxd.
    INT8 = 1
    INT16 = 2
    INT32 = 3
    INT64 = 4
    UINT8 = 5
    UINT16 = 6
    UINT32 = 7
    UINT64 = 8
    FLOAT32 = 9
    FLOAT64 = 10
    STRING = 11
    DATE = 12
    DATETIME = 13
    BOOL = 14
    UUID = 15
    FIXED_STRING = 16  # values padded to ``length``; held like String (offsets + data)
    ENUM8 = 17
    ENUM16 = 18
    DATE32 = 19
    IPV4 = 20
    DATETIME64 = 21  # ``scale`` = the precision p
    INT128 = 22
    UINT128 = 23
    INT256 = 24
    UINT256 = 25
    DECIMAL32 = 26  # Decimal(P, S) by P: <= 9, <= 18, <= 38, <= 76 digits
    DECIMAL64 = 27
    DECIMAL128 = 28
    DECIMAL256 = 29
    IPV6 = 30
    TUPLE = 31  # Tuple(T1, ...): the elements are in ``tuple_elements``


_SIMPLE_TYPES: dict[str, TypeCode] = {
    "Int8": TypeCode.INT8,
    "Int16": TypeCode.INT16,
    "Int32": TypeCode.INT32,
    "Int64": TypeCode.INT64,
    "UInt8": TypeCode.UINT8,
    "UInt16": TypeCode.UINT16,
    "UInt32": TypeCode.UINT32,
    "UInt64": TypeCode.UINT64,
    "Float32": TypeCode.FLOAT32,
    "Float64": TypeCode.FLOAT64,
    "String": TypeCode.STRING,
    "Date": TypeCode.DATE,
    "DateTime": TypeCode.DATETIME,
    "Bool": TypeCode.BOOL,
    "UUID": TypeCode.UUID,
    "Date32": TypeCode.DATE32,
    "IPv4": TypeCode.IPV4,
    "Int128": TypeCode.INT128,
    "UInt128": TypeCode.UINT128,
    "Int256": TypeCode.INT256,
    "UInt256": TypeCode.UINT256,
    "IPv6": TypeCode.IPV6,
}

#: Byte width of each fixed-width type in ClickHouse's Native format (String: 0).
FIXED_WIDTH: dict[TypeCode, int] = {
    TypeCode.INT8: 1,
    TypeCode.INT16: 2,
    TypeCode.INT32: 4,
    TypeCode.INT64: 8,
    TypeCode.UINT8: 1,
    TypeCode.UINT16: 2,
    TypeCode.UINT32: 4,
    TypeCode.UINT64: 8,
    TypeCode.FLOAT32: 4,
    TypeCode.FLOAT64: 8,
    TypeCode.STRING: 0,
    TypeCode.DATE: 2,
    TypeCode.DATETIME: 4,
    TypeCode.BOOL: 1,
    TypeCode.UUID: 16,
    # FixedString(N) is held like String (offsets + data, every value N bytes): its
    # width is the column's, not the type code's. Native takes the data as it is.
    TypeCode.FIXED_STRING: 0,
    TypeCode.ENUM8: 1,
    TypeCode.ENUM16: 2,
    TypeCode.DATE32: 4,
    TypeCode.IPV4: 4,
    TypeCode.DATETIME64: 8,
    TypeCode.INT128: 16,
    TypeCode.UINT128: 16,
    TypeCode.INT256: 32,
    TypeCode.UINT256: 32,
    TypeCode.DECIMAL32: 4,
    TypeCode.DECIMAL64: 8,
    TypeCode.DECIMAL128: 16,
    TypeCode.DECIMAL256: 32,
    TypeCode.IPV6: 16,
    # A Tuple column is held as its Native payload (the elements' one after the other).
    TypeCode.TUPLE: 0,
}

#: What ClickHouse takes inside ``LowCardinality`` (its DataTypeLowCardinality refuses
#: Enum, Decimal and DateTime64).
LOW_CARDINALITY_TYPES = frozenset(FIXED_WIDTH) - {
    TypeCode.ENUM8, TypeCode.ENUM16, TypeCode.DATETIME64, TypeCode.DECIMAL32,
    TypeCode.DECIMAL64, TypeCode.DECIMAL128, TypeCode.DECIMAL256, TypeCode.TUPLE}

_DECIMAL_PRECISION = {"Decimal32": 9, "Decimal64": 18, "Decimal128": 38, "Decimal256": 76}
_DECIMAL_CODES = ((9, TypeCode.DECIMAL32), (18, TypeCode.DECIMAL64), (38, TypeCode.DECIMAL128),
                  (76, TypeCode.DECIMAL256))
_DATETIME64 = re.compile(r"DateTime64\(\s*(\d+)\s*(,\s*'[^']*'\s*)?\)")
_DECIMAL = re.compile(r"(Decimal(?:32|64|128|256)?)\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\)")


class SchemaError(ValueError):
    """A column definition the gateway cannot use."""


@dataclass(frozen=True, slots=True)
class ParsedType:
    """A ClickHouse type reduced to what the parser needs."""

    ch_type: str  # as declared, e.g. "LowCardinality(Nullable(String))"
    type_code: TypeCode  # the innermost value type
    nullable: bool
    low_cardinality: bool
    length: int = 0  # FixedString(N): N
    #: Enum8/Enum16: (name as UTF-8, value) pairs, in declaration order.
    enum_values: tuple[tuple[bytes, int], ...] = ()
    scale: int = 0  # DateTime64(p): p; Decimal(P, S): S
    precision: int = 0  # Decimal(P, S): P
    #: Array(T): 1, Array(Array(T)): 2; the other fields describe the element type T.
    array_depth: int = 0
    #: Map(String, V): array_depth 1, the other fields describe the value type V.
    is_map: bool = False
    #: Tuple(T1, ...) (type_code TUPLE): each element's type, and its name ("" unnamed).
    tuple_elements: tuple[ParsedType, ...] = ()
    tuple_names: tuple[str, ...] = ()
    #: DateTime('Zone') / DateTime64(p, 'Zone'): the zone; "" is UTC (see timezones).
    timezone: str = ""


#: Deepest Array nesting the parsers fill.
MAX_ARRAY_DEPTH = 2
_MAP_KEY = re.compile(r"String\s*,\s*")

_ENUM_ITEM = re.compile(r"\s*'((?:[^'\\]|\\.|'')*)'\s*=\s*([+-]?\d+)\s*(,|$)")
_ENUM_RANGES = {TypeCode.ENUM8: (-(1 << 7), (1 << 7) - 1),
                TypeCode.ENUM16: (-(1 << 15), (1 << 15) - 1)}


def _enum_values(ch_type: str, code: TypeCode, body: str) -> tuple[tuple[bytes, int], ...]:
    """``'a' = 1, 'b' = 2`` -> ((b"a", 1), (b"b", 2)); names and values must be unique."""
    items: list[tuple[bytes, int]] = []
    pos = 0
    while pos < len(body):
        match = _ENUM_ITEM.match(body, pos)
        if match is None:
            raise SchemaError(f"type {ch_type}: cannot read the values (use 'name' = number)")
        text = _unquote(match.group(1))
        if text is None:
            raise SchemaError(f"type {ch_type}: cannot read the name {match.group(1)!r}")
        name = text.encode()
        value = int(match.group(2))
        lo, hi = _ENUM_RANGES[code]
        if not lo <= value <= hi:
            raise SchemaError(f"type {ch_type}: value {value} is out of range")
        items.append((name, value))
        pos = match.end()
    if not items:
        raise SchemaError(f"type {ch_type}: no values")
    if len({name for name, _ in items}) != len(items) or \
            len({value for _, value in items}) != len(items):
        raise SchemaError(f"type {ch_type}: duplicate names or values")
    return tuple(items)


def _unquote(body: str) -> str | None:
    """The content of a ClickHouse single-quoted literal (backslash escapes, doubled ''),
    given without its outer quotes; None if a lone ``'`` shows it is not one literal."""
    out: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            out.append({"n": "\n", "t": "\t", "0": "\0", "r": "\r"}.get(body[i + 1], body[i + 1]))
            i += 2
            continue
        if ch == "'":
            if body[i + 1 : i + 2] != "'":
                return None
            i += 1  # the first of a doubled ''
        out.append(ch)
        i += 1
    return "".join(out)


def _unwrap(name: str, text: str) -> str | None:
    if text.startswith(name + "(") and text.endswith(")"):
        return text[len(name) + 1 : -1].strip()
    return None


def parse_type(ch_type: str) -> ParsedType:
    """Parse a ClickHouse type the ingest parser supports.

    >>> parse_type("LowCardinality(Nullable(String))").type_code.name
    'STRING'
    """
    text = ch_type.strip()
    low_cardinality = False
    nullable = False
    array_depth = 0
    is_map = False
    inner = _unwrap("Tuple", text)
    if inner is not None:
        return _parse_tuple(ch_type, inner)
    for wrapper in ("Array", "Map", "LowCardinality", "Nullable"):
        wrapped = _unwrap(wrapper, text)
        if wrapped is not None and _contains_tuple(wrapped):
            raise SchemaError(f"type {ch_type}: a Tuple is supported only as a column's "
                              "own type (not inside Array, Map, LowCardinality or Nullable)")
    inner = _unwrap("Map", text)
    if inner is not None:
        match = _MAP_KEY.match(inner)
        if match is None:
            raise SchemaError(f"type {ch_type}: only Map(String, V) is supported for ingestion")
        value = inner[match.end() :]
        if _unwrap("Array", value) is not None or _unwrap("Map", value) is not None:
            raise SchemaError(f"type {ch_type}: Map values must be scalars")
        is_map = True
        array_depth = 1
        text = value
    inner = _unwrap("Array", text) if not is_map else None
    while inner is not None:
        array_depth += 1
        text = inner
        inner = _unwrap("Array", text)
    if array_depth > MAX_ARRAY_DEPTH:
        raise SchemaError(f"type {ch_type}: Arrays nested deeper than {MAX_ARRAY_DEPTH} "
                          "levels are not supported for ingestion")
    inner = _unwrap("LowCardinality", text)
    if inner is not None:
        low_cardinality = True
        text = inner
    inner = _unwrap("Nullable", text)
    if inner is not None:
        nullable = True
        text = inner
    timezone = ""
    if text.startswith("DateTime(") and text.endswith(")"):
        # DateTime('Zone'): stored as epoch seconds; the zone reads times without offset.
        timezone = _zone_argument(ch_type, text[len("DateTime(") : -1])
        text = "DateTime"
    length = scale = precision = 0
    enum_values: tuple[tuple[bytes, int], ...] = ()
    inner = _unwrap("FixedString", text)
    datetime64 = _DATETIME64.fullmatch(text)
    decimal = _DECIMAL.fullmatch(text)
    if datetime64 is not None:
        code: TypeCode | None = TypeCode.DATETIME64
        scale = int(datetime64.group(1))
        if datetime64.group(2) is not None:
            timezone = _zone_argument(ch_type, datetime64.group(2).lstrip(" ,"))
        if scale > 9:
            raise SchemaError(f"type {ch_type}: DateTime64 precision must be 0 to 9")
    elif decimal is not None:
        family, first, second = decimal.groups()
        if family == "Decimal":
            if second is None:
                raise SchemaError(f"type {ch_type}: use Decimal(P, S)")
            precision, scale = int(first), int(second)
        else:
            if second is not None:
                raise SchemaError(f"type {ch_type}: use {family}(S)")
            precision, scale = _DECIMAL_PRECISION[family], int(first)
        if not 1 <= precision <= 76 or scale > precision:
            raise SchemaError(f"type {ch_type}: needs 1 <= P <= 76 and 0 <= S <= P")
        code = next(c for limit, c in _DECIMAL_CODES if precision <= limit)
    elif inner is not None:
        if not inner.isdigit() or not 1 <= int(inner) <= 1 << 20:
            raise SchemaError(f"type {ch_type}: FixedString needs a length from 1 to 1048576")
        code = TypeCode.FIXED_STRING
        length = int(inner)
    elif text.startswith(("Enum8(", "Enum16(")) and text.endswith(")"):
        code = TypeCode.ENUM8 if text.startswith("Enum8(") else TypeCode.ENUM16
        enum_values = _enum_values(ch_type, code, text[text.index("(") + 1 : -1])
    else:
        code = _SIMPLE_TYPES.get(text)
    if code is None:
        raise SchemaError(f"type {ch_type} is not supported for ingestion yet")
    if low_cardinality and code not in LOW_CARDINALITY_TYPES:
        raise SchemaError(f"type {ch_type}: ClickHouse has no LowCardinality of "
                          f"{code.name.title()} (numbers, String, FixedString, Date, "
                          "DateTime, Date32, UUID, IPv4, IPv6 only)")
    if low_cardinality and is_map:
        raise SchemaError(f"type {ch_type}: LowCardinality is not supported inside a Map "
                          "for ingestion (declare the values without LowCardinality)")
    return ParsedType(ch_type.strip(), code, nullable, low_cardinality, length, enum_values,
                      scale, precision, array_depth, is_map, timezone=timezone)


def _zone_argument(ch_type: str, argument: str) -> str:
    """The zone name of ``'Europe/Berlin'`` (a DateTime type's argument), checked."""
    argument = argument.strip()
    zone = _unquote(argument[1:-1]) if len(argument) >= 2 and argument[0] == argument[-1] == "'" \
        else None
    if not zone:
        raise SchemaError(f"type {ch_type}: the time zone must be a quoted name")
    if not is_known_zone(zone):
        raise SchemaError(f"type {ch_type}: unknown time zone {zone!r}")
    return zone


_TUPLE_NAME = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s+(\S.*)", re.S)


def _contains_tuple(text: str) -> bool:
    return re.search(r"(^|[(,\s])Tuple\s*\(", text) is not None


def split_top_level(body: str) -> list[str]:
    """``a, b(c, d), 'e,f'`` -> ["a", "b(c, d)", "'e,f'"]: the comma-separated items
    outside brackets and quotes (``'``, ``"``, backquotes; backslash escapes), stripped.
    """
    items: list[str] = []
    depth = 0
    quote = ""
    start = 0
    pos = 0
    while pos < len(body):
        ch = body[pos]
        if quote:
            if ch == "\\":
                pos += 1
            elif ch == quote:
                quote = ""
        elif ch in "'\"`":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(body[start:pos].strip())
            start = pos + 1
        pos += 1
    items.append(body[start:].strip())
    return items


def _parse_tuple(ch_type: str, body: str) -> ParsedType:
    """``Tuple(T1, T2)`` or ``Tuple(a T1, b T2)``: scalar elements (Nullable allowed)."""
    names: list[str] = []
    elements: list[ParsedType] = []
    for item in split_top_level(body):
        match = _TUPLE_NAME.fullmatch(item)
        name, element_type = (match.group(1), match.group(2)) if match else ("", item)
        if not element_type:
            raise SchemaError(f"type {ch_type}: an empty Tuple element")
        try:
            element = parse_type(element_type)
        except SchemaError as exc:
            raise SchemaError(f"type {ch_type}: element {element_type}: {exc}") from None
        if element.array_depth or element.type_code is TypeCode.TUPLE or \
                element.low_cardinality:
            raise SchemaError(f"type {ch_type}: Tuple elements must be scalar types "
                              "(Nullable allowed; no Array, Map, Tuple or LowCardinality)")
        names.append(name)
        elements.append(element)
    if any(names) and not all(names):
        raise SchemaError(f"type {ch_type}: name every Tuple element or none")
    if any(names) and len(set(names)) != len(names):
        raise SchemaError(f"type {ch_type}: duplicate Tuple element names")
    return ParsedType(ch_type.strip(), TypeCode.TUPLE, False, False,
                      tuple_elements=tuple(elements), tuple_names=tuple(names))


_PATH_TOKEN = re.compile(r"\.([^.\[\]]+)|\[['\"]([^'\"]*)['\"]\]|\[(\d+)\]|(\[:\])")


def parse_jsonpath(path: str) -> tuple[str | int, ...]:
    """``$.a.b`` -> ``("a", "b")``; ``$`` -> ``()`` (the whole row as text).

    ``[N]`` (an int step) takes element N (from 0) of a JSON array; trailing ``[:]``
    (the whole array, for Array columns) adds no step: see :func:`array_selectors`.

    >>> parse_jsonpath("$.user['first name']")
    ('user', 'first name')
    >>> parse_jsonpath("$.a[0].b"), parse_jsonpath("$.items[:]")
    (('a', 0, 'b'), ('items',))
    """
    if not path.startswith("$"):
        raise SchemaError(f"jsonpath {path!r} must start with '$'")
    keys: list[str | int] = []
    pos = 1
    selectors = 0
    while pos < len(path):
        match = _PATH_TOKEN.match(path, pos)
        if match is None or (selectors and match.group(4) is None):
            raise SchemaError(f"jsonpath {path!r} is not supported (use $.a.b, $['a'], "
                              "$.a[0] or a trailing [:])")
        if match.group(4) is not None:
            selectors += 1
        elif match.group(3) is not None:
            if len(match.group(3)) > 9:
                raise SchemaError(f"jsonpath {path!r}: array index too large")
            keys.append(int(match.group(3)))
        else:
            keys.append(match.group(1) if match.group(1) is not None else match.group(2))
        pos = match.end()
    return tuple(keys)


def array_selectors(path: str) -> int:
    """How many ``[:]`` end ``path`` (``$.a[:]`` -> 1)."""
    count = 0
    text = path.rstrip()
    while text.endswith("[:]"):
        count += 1
        text = text[:-3]
    return count


@dataclass(frozen=True, slots=True, kw_only=True)
class ColumnSpec(ParsedType):
    """One column of a data source, as declared in its SCHEMA: its parsed type (the
    fields of :class:`ParsedType`) with a name, a path and a default."""

    name: str
    #: JSON keys (str) and array indexes (int) from the row object to the value; ``()``
    #: is the whole row. ``None``: the column is not sent by clients (ClickHouse fills
    #: its DEFAULT).
    path: tuple[str | int, ...] | None
    jsonpath: str | None  # as written, e.g. "$.a.b"
    default_kind: str | None = None  # DEFAULT | MATERIALIZED | ALIAS
    default_expr: str | None = None
    #: Text of a literal DEFAULT, used by the parser for missing values.
    default_text: bytes | None = None
    codec: str | None = None
    #: Tuple(...): one spec per element (no path; named by the element name, else
    #: "1", "2", ...).
    tuple_elements: tuple[ColumnSpec, ...] = ()

    @classmethod
    def build(
        cls,
        name: str,
        ch_type: str,
        jsonpath: str | None = None,
        default_kind: str | None = None,
        default_expr: str | None = None,
        codec: str | None = None,
    ) -> ColumnSpec:
        parsed = parse_type(ch_type)
        path = parse_jsonpath(jsonpath) if jsonpath is not None else None
        if jsonpath is not None and parsed.is_map and array_selectors(jsonpath):
            raise SchemaError(f"jsonpath {jsonpath!r}: [:] needs an Array column, "
                              f"not {parsed.ch_type}")
        if jsonpath is not None and array_selectors(jsonpath) > parsed.array_depth:
            raise SchemaError(f"jsonpath {jsonpath!r}: [:] needs an Array column, "
                              f"not {parsed.ch_type}")
        type_fields = {f.name: getattr(parsed, f.name) for f in fields(ParsedType)}
        type_fields["tuple_elements"] = tuple(
            ColumnSpec.build(name or str(index + 1), element.ch_type)
            for index, (name, element) in enumerate(
                zip(parsed.tuple_names, parsed.tuple_elements)))
        return cls(
            **type_fields,
            name=name,
            path=path,
            jsonpath=jsonpath,
            default_kind=default_kind,
            default_expr=default_expr,
            default_text=literal_default(default_expr) if default_kind == "DEFAULT" else None,
            codec=codec,
        )

    @property
    def expression_default(self) -> bool:
        """True for a ``DEFAULT`` the parsers cannot compute (``now()``, ``toDate(ts)``):
        a row without a value leaves the column to ClickHouse."""
        return self.default_kind == "DEFAULT" and self.default_text is None

    @property
    def ingested(self) -> bool:
        """True when rows carry this column (it has a path and is not computed)."""
        return self.path is not None and self.default_kind not in ("MATERIALIZED", "ALIAS")


_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def literal_default(expr: str | None) -> bytes | None:
    """The text of a constant DEFAULT (``0``, ``'none'``), or None for expressions.

    >>> literal_default("'it''s'")
    b"it's"
    """
    if expr is None:
        return None
    text = expr.strip()
    if _NUMBER.match(text):
        return text.encode()
    if len(text) >= 2 and text[0] == "'" and text[-1] == "'":
        body = _unquote(text[1:-1])
        return body.encode() if body is not None else None
    return None
