"""ClickHouse type strings -> parser type codes; the only place types are parsed.

A data source's column list becomes a tuple of :class:`ColumnSpec`. The parsers
(``_native`` and ``_pyparser``) see only ``type_code``, ``nullable``, ``path`` and
``default_text``; the Native encoder sees ``ch_type`` and ``type_code``.

How to add a new type:
1. add a member to :class:`TypeCode` here *and* to ``ext/codes.pxd`` (same number);
2. map its ClickHouse spelling in ``_SIMPLE_TYPES`` (or in :func:`parse_type`);
3. give it a converter in ``ext/convert.pxi`` and ``_pyparser._convert_text``;
4. give it a Native encoding in ``native.py`` (fixed width or strings).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass


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
}


class SchemaError(ValueError):
    """A column definition the gateway cannot use."""


@dataclass(frozen=True, slots=True)
class ParsedType:
    """A ClickHouse type reduced to what the parser needs."""

    ch_type: str  # as declared, e.g. "LowCardinality(Nullable(String))"
    type_code: TypeCode  # the innermost value type
    nullable: bool
    low_cardinality: bool


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
    inner = _unwrap("LowCardinality", text)
    if inner is not None:
        low_cardinality = True
        text = inner
    inner = _unwrap("Nullable", text)
    if inner is not None:
        nullable = True
        text = inner
    if text.startswith("DateTime(") and text.endswith(")"):
        # DateTime('UTC'): the stored value is epoch seconds either way.
        text = "DateTime"
    code = _SIMPLE_TYPES.get(text)
    if code is None:
        raise SchemaError(f"type {ch_type} is not supported for ingestion yet")
    if low_cardinality and code is not TypeCode.STRING:
        raise SchemaError(f"type {ch_type}: LowCardinality is supported for String only")
    return ParsedType(ch_type.strip(), code, nullable, low_cardinality)


_PATH_TOKEN = re.compile(r"\.([^.\[\]]+)|\[['\"]([^'\"]*)['\"]\]")


def parse_jsonpath(path: str) -> tuple[str, ...]:
    """``$.a.b`` -> ``("a", "b")``; ``$`` -> ``()`` (the whole row as text).

    >>> parse_jsonpath("$.user['first name']")
    ('user', 'first name')
    """
    if not path.startswith("$"):
        raise SchemaError(f"jsonpath {path!r} must start with '$'")
    keys: list[str] = []
    pos = 1
    while pos < len(path):
        match = _PATH_TOKEN.match(path, pos)
        if match is None:
            raise SchemaError(f"jsonpath {path!r} is not supported (use $.a.b or $['a'])")
        keys.append(match.group(1) if match.group(1) is not None else match.group(2))
        pos = match.end()
    return tuple(keys)


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    """One column of a data source, as declared in its SCHEMA."""

    name: str
    ch_type: str
    type_code: TypeCode
    nullable: bool
    low_cardinality: bool
    #: JSON keys from the row object to the value; ``()`` is the whole row. ``None``:
    #: the column is not sent by clients (ClickHouse fills its DEFAULT).
    path: tuple[str, ...] | None
    jsonpath: str | None  # as written, e.g. "$.a.b"
    default_kind: str | None = None  # DEFAULT | MATERIALIZED | ALIAS
    default_expr: str | None = None
    #: Text of a literal DEFAULT, used by the parser for missing values.
    default_text: bytes | None = None
    codec: str | None = None

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
        return cls(
            name=name,
            ch_type=parsed.ch_type,
            type_code=parsed.type_code,
            nullable=parsed.nullable,
            low_cardinality=parsed.low_cardinality,
            path=path,
            jsonpath=jsonpath,
            default_kind=default_kind,
            default_expr=default_expr,
            default_text=literal_default(default_expr) if default_kind == "DEFAULT" else None,
            codec=codec,
        )

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
        body = text[1:-1]
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
                    return None  # not a single literal
                i += 1
            out.append(ch)
            i += 1
        return "".join(out).encode()
    return None
