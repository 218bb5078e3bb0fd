"""Query results as Apache Parquet, for ``/v0/pipes/<name>.parquet`` and ``FORMAT Parquet``.

ClickHouse 18.16 has no Parquet output format, so the file is built here from the rows
both sinks return (the same Python values), with pyarrow, an optional dependency
(``pip install 'tinyingest[parquet]'``). ClickHouse types map to Arrow types:

* integers, floats, ``Bool``, ``Date``/``Date32`` (date32) as themselves; ``Int128`` and
  wider, which Parquet cannot hold as integers, as their decimal text;
* ``String``/``FixedString`` as binary, as Tinybird does by default; as UTF-8 strings with
  ``output_format_parquet_string_as_string=1``;
* ``DateTime`` as a timestamp in seconds, ``DateTime64(p)`` in ms/us/ns: with the column's
  time zone when it has one (the same instants), else naive (the wall-clock time the JSON
  output shows, in the server's zone);
* ``Decimal(P, S)`` as decimal128/256(P, S); ``LowCardinality(String)`` as a dictionary;
  ``Nullable(T)`` as an optional T (other columns are required); ``Array``, ``Tuple``
  (a struct; unnamed elements are called ``1``, ``2``...) and ``Map`` as list, struct, map;
* ``UUID``, ``IPv4``/``IPv6``, ``Enum`` and anything else as text.

>>> data = parquet_bytes([("n", "UInt8"), ("s", "Nullable(String)")], [(1, "a"), (2, None)])
>>> data[:4] == b"PAR1"
True
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from typing import Any

from tinyingest.schema import split_top_level

__all__ = ["CONTENT_TYPE", "MISSING", "available", "parquet_bytes"]

#: IANA's media type for Parquet (registered in 2024).
CONTENT_TYPE = "application/vnd.apache.parquet"
#: Why Parquet output is not available, for the error answer.
MISSING = "Parquet output needs pyarrow: pip install 'tinyingest[parquet]'"

_Convert = Callable[[Any], Any] | None


@functools.cache
def _pyarrow() -> tuple[Any, Any] | None:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        return None
    return pyarrow, pyarrow.parquet


def available() -> bool:
    """True if pyarrow can be imported."""
    return _pyarrow() is not None


def parquet_bytes(meta: Sequence[tuple[str, str]], rows: Sequence[Sequence[Any]], *,
                  string_as_string: bool = False) -> bytes:
    """A Parquet file holding ``rows`` (one tuple per row) of columns ``meta``
    ((name, ClickHouse type) pairs).

    :param string_as_string: String columns as UTF-8 strings, not binary.
    :raises RuntimeError: pyarrow is not installed (:data:`MISSING`).
    """
    modules = _pyarrow()
    if modules is None:
        raise RuntimeError(MISSING)
    pa, pq = modules
    types = _ArrowTypes(pa, string_as_string)
    fields, arrays = [], []
    for index, (name, ch_type) in enumerate(meta):
        arrow_type, convert, nullable = types.of(ch_type)
        values = [row[index] for row in rows]
        if convert is not None:
            values = [None if value is None else convert(value) for value in values]
        arrays.append(pa.array(values, type=arrow_type))
        fields.append(pa.field(name, arrow_type, nullable=nullable))
    table = pa.Table.from_arrays(arrays, schema=pa.schema(fields))
    out = pa.BufferOutputStream()
    pq.write_table(table, out)
    return bytes(out.getvalue())


def _text(value: Any) -> str:
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str)
    return str(value)


_INTEGERS = {"Int8": "int8", "Int16": "int16", "Int32": "int32", "Int64": "int64",
             "UInt8": "uint8", "UInt16": "uint16", "UInt32": "uint32", "UInt64": "uint64"}
_FLOATS = {"Float32": "float32", "Float64": "float64", "BFloat16": "float32"}
_DECIMAL_PRECISION = {"Decimal32": 9, "Decimal64": 18, "Decimal128": 38, "Decimal256": 76}


class _ArrowTypes:
    """ClickHouse type -> (Arrow type, value converter or None, nullable)."""

    def __init__(self, pa: Any, string_as_string: bool) -> None:
        self.pa = pa
        self.string = pa.string() if string_as_string else pa.binary()

    def of(self, ch_type: str) -> tuple[Any, _Convert, bool]:
        pa = self.pa
        text = ch_type.strip()
        name, _, rest = text.partition("(")
        args = [a for a in split_top_level(rest[:-1]) if a] if rest.endswith(")") else []
        if name == "Nullable" and args:
            arrow_type, convert, _ = self.of(args[0])
            return arrow_type, convert, True
        if name == "LowCardinality" and args:
            arrow_type, convert, nullable = self.of(args[0])
            if arrow_type in (pa.string(), pa.binary()):
                arrow_type = pa.dictionary(pa.int32(), arrow_type)
            return arrow_type, convert, nullable
        if name == "Array" and args:
            item, convert, _ = self.of(args[0])
            return pa.list_(item), _each(convert), False
        if name == "Map" and len(args) == 2:
            key, convert_key, _ = self.of(args[0])
            value, convert_value, _ = self.of(args[1])
            return pa.map_(key, value), _pairs(convert_key, convert_value), False
        if name == "Tuple" and args:
            return self._struct(args)
        if name in _INTEGERS:
            return getattr(pa, _INTEGERS[name])(), None, False
        if name in _FLOATS:
            return getattr(pa, _FLOATS[name])(), None, False
        if name == "Bool":
            return pa.bool_(), None, False
        if name in ("String", "FixedString"):
            return self.string, None, False
        if name in ("Date", "Date32"):
            return pa.date32(), None, False
        if name == "DateTime":
            return pa.timestamp("s", tz=_zone(args[0]) if args else None), None, False
        if name == "DateTime64" and args:
            precision = int(args[0])
            unit = "s" if precision == 0 else "ms" if precision <= 3 else \
                "us" if precision <= 6 else "ns"
            return pa.timestamp(unit, tz=_zone(args[1]) if len(args) > 1 else None), None, False
        if name.startswith("Decimal"):
            precision, scale = (int(args[0]), int(args[1])) if name == "Decimal" and \
                len(args) == 2 else (_DECIMAL_PRECISION.get(name, 0), int(args[0]) if args else 0)
            if 0 < precision <= 38:
                return pa.decimal128(precision, scale), None, False
            if 38 < precision <= 76:
                return pa.decimal256(precision, scale), None, False
        if name == "Nothing":
            return pa.null(), None, True
        return pa.string(), _text, False  # UUID, IPs, Enums, wide integers, the rest

    def _struct(self, elements: list[str]) -> tuple[Any, _Convert, bool]:
        fields, converts = [], []
        for position, element in enumerate(elements, 1):
            head, space, tail = element.partition(" ")
            named = space and "(" not in head and tail.strip()
            element_type, convert, nullable = self.of(tail if named else element)
            fields.append(self.pa.field(head.strip("`") if named else str(position),
                                        element_type, nullable=nullable))
            converts.append(convert)
        names = [field.name for field in fields]

        def to_struct(value: Any) -> dict[str, Any]:
            items = value.values() if isinstance(value, dict) else value
            return {name: (item if convert is None or item is None else convert(item))
                    for name, convert, item in zip(names, converts, items)}
        return self.pa.struct(fields), to_struct, False


def _zone(arg: str) -> str:
    return arg.strip().strip("'")


def _each(convert: _Convert) -> _Convert:
    if convert is None:
        return None
    return lambda values: [None if v is None else convert(v) for v in values]


def _pairs(convert_key: _Convert, convert_value: _Convert) -> _Convert:
    def to_pairs(value: Any) -> list[tuple[Any, Any]]:
        items = value.items() if isinstance(value, dict) else value
        return [(k if convert_key is None else convert_key(k),
                 v if convert_value is None or v is None else convert_value(v))
                for k, v in items]
    return to_pairs
