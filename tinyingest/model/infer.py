"""Schema inference: sample rows in, ClickHouse columns with jsonpaths out.

The pure core of ``POST /v0/events?name=<new>`` (auto-create), ``POST /v0/datasources
?mode=create`` from a file without a schema, and ``POST /v0/analyze``. Nothing here
touches a table or a socket: feed :class:`SchemaAnalyzer` parsed rows (or give
:func:`analyze_ndjson` / :func:`analyze_csv` the first bytes of a body), then render the
:class:`Inference` with :func:`render_schema`, :func:`render_datasource` or
:func:`analyze_response`.

Rules (each chosen so that the sample rows, sent again through the NDJSON or CSV parser
into a table of the inferred schema, are stored with none quarantined):

* **Integers** (JSON integers; CSV ``-?(0|[1-9][0-9]*)``): the narrowest of ``Int16``,
  ``Int32``, ``Int64`` holding every sampled value (Tinybird's Analyze API answers
  ``Int16`` for small numbers), then ``UInt64``; larger: ``String``. With
  ``narrow_integers=False`` always ``Int64`` (then ``UInt64``). A CSV integer with a
  leading zero (``007``, a zip code) or a ``+`` is text: ``String``.
* **Floats** (JSON numbers with a fraction or exponent; CSV the same text): ``Float64``.
  Integers mixed with floats: ``Float64``. ``NaN``/``Infinity`` (and JSON numbers too
  large for a double): ``String``.
* **Booleans** (JSON ``true``/``false``; CSV ``true``/``false``): ``UInt8``, which
  ClickHouse 18.16 has (it has no ``Bool``) and which the parsers fill from
  ``true``/``false``. Booleans mixed with integers: the integer type; with anything
  else: ``String``.
* **Dates and times** from strings, when *every* sampled string of the column is one:
  ``YYYY-MM-DD`` (1970-01-01 to 2149-06-06): ``Date``; ``YYYY-MM-DD[T ]HH:MM[:SS]`` with
  an optional ``Z`` or ``+HH[[:]MM]`` offset, dates among them allowed, 1970 to 2106:
  ``DateTime``; the same with a fraction (``.123``), or out of DateTime's range but within
  1900-2299: ``DateTime64(3)`` (``DateTime64(6)`` / ``(9)`` when a value has more
  fraction digits, so none is truncated). ``datetime64=False`` (ClickHouse 18.16 has no
  DateTime64): those stay ``String``. Epoch numbers are numbers, never times.
* **Everything else**, and any other mix (a string and a number, a number and an
  object): ``String``. A String column stores a JSON object or array as its compact JSON.
* **Nullable(T)** when the key is missing from some sampled rows, or ``null`` (CSV: an
  empty unquoted field or ``\\N``); a key that is only ever ``null``:
  ``Nullable(String)``. Arrays are never Nullable (a missing or ``null`` array is
  stored as ``[]``).
* **Arrays**: ``Array(T)`` with T from all elements of all rows by the rules above
  (``Array(Nullable(T))`` if an element is ``null``; ``Array(Array(T))`` for arrays of
  arrays); only empty arrays: ``Array(String)``. Deeper nesting, arrays of objects, or
  arrays mixing arrays with scalars: ``String``. The jsonpath ends in ``[:]``.
* **Objects** are flattened: each leaf becomes a column, its path ``$.a.b`` and its name
  ``a_b`` (Tinybird's naming). Past ``max_depth`` levels of keys, or for an object with
  more than ``max_object_keys`` keys, the object is one ``String`` column of its JSON.
  A key that is an object in some rows and something else in others is one ``String``
  column too. At most ``max_columns`` paths are tracked; later new keys are dropped (a
  warning says which). Keys a jsonpath cannot name inside a datafile (empty, with a
  backtick, a backslash, a control character, or ``.[]`` together with a quote) are
  dropped with a warning.
* **Names**: every character outside ``[A-Za-z0-9_]`` becomes ``_``, a leading digit
  gets a ``_`` prefix, and a name already taken (or one the quarantine table reserves)
  gets ``_2``, ``_3``... Columns keep the order their keys were first seen.
* **CSV header**: as ClickHouse decides it (23.1+, ``input_format_csv_detect_header``):
  the first record is the header when all its fields are non-empty text that is not a
  number, boolean or date, there is a second record, and at least one column of the
  other records is not ``String``. Otherwise the columns are named ``c1``, ``c2``...
  (ClickHouse's names). ``header=True``/``False`` decides it instead. CSV arrays
  (``[1,2]``) are kept as ``String``.
* **present_pct**: the percentage (0-100) of sampled rows where the value is present and
  not null.
* **Bounds**: the sample ends after ``max_rows`` rows or once ``max_bytes`` bytes were
  read, whichever comes first (10,000 rows, 4 MiB by default); the row that crosses the
  byte bound is still taken.
* **Engine**: ``MergeTree`` ordered by one non-Nullable column: the first of type Date,
  DateTime or DateTime64; else the first number; else the first String; else
  ``tuple()`` (Tinybird's documented default order; a Nullable column cannot be a key).

.. versionadded:: 0.2
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date
from typing import Any

from tinyingest._pyparser import _BadRow, split_csv_record
from tinyingest.datafiles import QUARANTINE_COLUMNS, EngineSpec

__all__ = [
    "FORMATS",
    "InferenceError",
    "InferredColumn",
    "Inference",
    "SchemaAnalyzer",
    "analyze_ndjson",
    "analyze_csv",
    "render_schema",
    "render_datasource",
    "suggest_engine",
    "analyze_response",
]

FORMATS = ("ndjson", "csv")

MAX_ROWS = 10_000
MAX_BYTES = 4 << 20
MAX_DEPTH = 5  # levels of keys flattened into column paths ($.a.b.c.d.e)
MAX_OBJECT_KEYS = 200  # keys of one object flattened; more: the object is one String
MAX_COLUMNS = 500  # paths tracked per sample
PREVIEW_ROWS = 10
_MAX_ARRAY_DEPTH = 2  # as deep as the parsers fill (schema.MAX_ARRAY_DEPTH)

_RESERVED = frozenset(name for name, _ in QUARANTINE_COLUMNS) | {"insertion_date"}

# Kinds of non-null values seen at one path (bit flags).
_BOOL, _INT, _FLOAT, _STRING, _ARRAY, _OBJECT, _OTHER = (1 << n for n in range(7))

_CSV_INT = re.compile(r"-?(?:0|[1-9][0-9]*)")
_CSV_FLOAT = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_TEMPORAL = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})"
    r"(?:[T ]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:\.([0-9]+))?)?"
    r"(Z|[+-][0-9]{2}(?::?[0-9]{2})?)?)?"
)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_DATE_MAX_DAYS = 0xFFFF
_DATETIME_MAX = 0xFFFFFFFF
_DT64_MIN = (date(1900, 1, 1).toordinal() - _EPOCH_ORDINAL) * 86400
_DT64_MAX = (date(2299, 12, 31).toordinal() - _EPOCH_ORDINAL + 1) * 86400 - 1
_INT64_MAX = (1 << 63) - 1


class InferenceError(ValueError):
    """The sample does not give a schema (no columns)."""


class _Stats:
    """What was seen at one path (or among the elements of the arrays at one path)."""

    __slots__ = ("present", "nulls", "kinds", "int_min", "int_max", "strings", "temporal",
                 "dates", "frac", "epoch_min", "epoch_max", "elements")

    def __init__(self) -> None:
        self.present = 0  # non-null values
        self.nulls = 0  # JSON null / CSV empty or \N
        self.kinds = 0
        self.int_min = 0
        self.int_max = 0
        self.strings = 0
        self.temporal = 0  # strings that are a date or a date and time
        self.dates = 0  # strings that are a date alone, within Date's range
        self.frac = -1  # most fraction digits of a time (-1: none had one)
        self.epoch_min = 0
        self.epoch_max = 0
        self.elements: _Stats | None = None  # arrays: their elements

    def observe(self, value: object, level: int = 0) -> None:
        if value is None:
            self.nulls += 1
            return
        self.present += 1
        if isinstance(value, bool):
            self._int(int(value), _BOOL)
        elif isinstance(value, int):
            self._int(value, _INT)
        elif isinstance(value, float):
            self.kinds |= _FLOAT if math.isfinite(value) else _OTHER
        elif isinstance(value, str):
            self.kinds |= _STRING
            self._string(value)
        elif isinstance(value, (list, tuple)):
            self.kinds |= _ARRAY
            if level >= _MAX_ARRAY_DEPTH:
                self.kinds |= _OTHER  # too deep for an Array column: String
                return
            if self.elements is None:
                self.elements = _Stats()
            for element in value:
                self.elements.observe(element, level + 1)
        elif isinstance(value, Mapping):
            self.kinds |= _OBJECT
        else:
            self.kinds |= _OTHER

    def observe_csv(self, text: str, quoted: bool) -> None:
        if not quoted and text in ("", "\\N"):
            self.nulls += 1
            return
        if text in ("true", "false"):
            self.present += 1
            self._int(int(text == "true"), _BOOL)
        elif _CSV_INT.fullmatch(text):
            self.present += 1
            self._int(int(text), _INT)
        elif _CSV_FLOAT.fullmatch(text) and math.isfinite(float(text)):
            self.present += 1
            self.kinds |= _FLOAT
        else:
            self.observe(text)

    def _int(self, value: int, kind: int) -> None:
        if not self.kinds & (_INT | _BOOL):
            self.int_min = self.int_max = value
        else:
            self.int_min = min(self.int_min, value)
            self.int_max = max(self.int_max, value)
        self.kinds |= kind

    def _string(self, text: str) -> None:
        self.strings += 1
        match = _TEMPORAL.fullmatch(text)
        if match is None:
            return
        year, month, day, hour, minute, second, fraction, zone = match.groups()
        try:
            days = date(int(year), int(month), int(day)).toordinal() - _EPOCH_ORDINAL
        except ValueError:
            return
        seconds = days * 86400
        if hour is not None:
            hours, minutes, secs = int(hour), int(minute), int(second or 0)
            if hours > 23 or minutes > 59 or secs > 59:
                return
            seconds += hours * 3600 + minutes * 60 + secs
            if zone and zone != "Z":
                offset_h, offset_m = int(zone[1:3]), int(zone[3:].lstrip(":") or 0)
                if offset_h > 23 or offset_m > 59:
                    return
                offset = offset_h * 3600 + offset_m * 60
                seconds += offset if zone[0] == "-" else -offset
            if fraction is not None:
                self.frac = max(self.frac, len(fraction))
        elif 0 <= days <= _DATE_MAX_DAYS:
            self.dates += 1
        if self.temporal == 0:
            self.epoch_min = self.epoch_max = seconds
        else:
            self.epoch_min = min(self.epoch_min, seconds)
            self.epoch_max = max(self.epoch_max, seconds)
        self.temporal += 1

    def merge(self, other: _Stats) -> None:
        """Join ``other`` (scalars only: CSV columns) into this."""
        if other.kinds & (_INT | _BOOL):
            if self.kinds & (_INT | _BOOL):
                self.int_min = min(self.int_min, other.int_min)
                self.int_max = max(self.int_max, other.int_max)
            else:
                self.int_min, self.int_max = other.int_min, other.int_max
        if other.temporal:
            if self.temporal:
                self.epoch_min = min(self.epoch_min, other.epoch_min)
                self.epoch_max = max(self.epoch_max, other.epoch_max)
            else:
                self.epoch_min, self.epoch_max = other.epoch_min, other.epoch_max
        self.present += other.present
        self.nulls += other.nulls
        self.kinds |= other.kinds
        self.strings += other.strings
        self.temporal += other.temporal
        self.dates += other.dates
        self.frac = max(self.frac, other.frac)


@dataclass(frozen=True, slots=True)
class _Types:
    narrow_integers: bool
    datetime64: bool

    def value_type(self, stats: _Stats) -> str:
        """The type of the non-null values (without Nullable)."""
        kinds = stats.kinds
        if kinds == 0 or kinds & (_OBJECT | _OTHER):
            return "String"
        if kinds == _ARRAY:
            element = self.element_type(stats.elements)
            return f"Array({element})" if element is not None else "String"
        if kinds == _BOOL:
            return "UInt8"
        if not kinds & ~(_BOOL | _INT):
            return self._integer(stats.int_min, stats.int_max)
        if not kinds & ~(_INT | _FLOAT):
            return "Float64"
        if kinds == _STRING:
            return self._temporal(stats)
        return "String"

    def element_type(self, stats: _Stats | None) -> str | None:
        """An Array's element type; None when no Array column can hold the elements."""
        if stats is None or stats.present == 0:
            return "Nullable(String)" if stats is not None and stats.nulls else "String"
        if stats.kinds & (_OBJECT | _OTHER) or (stats.kinds & _ARRAY and stats.kinds != _ARRAY):
            return None
        inner = self.value_type(stats)
        if stats.kinds == _ARRAY:
            # A null inner array is stored as []; inner arrays no Array holds: none.
            return inner if inner.startswith("Array(") else None
        return f"Nullable({inner})" if stats.nulls else inner

    def _integer(self, low: int, high: int) -> str:
        for bits in (16, 32, 64) if self.narrow_integers else (64,):
            if -(1 << (bits - 1)) <= low and high < 1 << (bits - 1):
                return f"Int{bits}"
        if low >= 0 and high < 1 << 64:
            return "UInt64"
        return "String"

    def _temporal(self, stats: _Stats) -> str:
        if stats.temporal != stats.strings:
            return "String"
        if stats.dates == stats.strings:
            return "Date"
        if stats.frac < 0 and stats.epoch_min >= 0 and stats.epoch_max <= _DATETIME_MAX:
            return "DateTime"
        if not self.datetime64:
            return "String"
        precision = 3 if stats.frac <= 3 else 6 if stats.frac <= 6 else 9
        scale = 10**precision
        if (_DT64_MIN <= stats.epoch_min and stats.epoch_max <= _DT64_MAX
                and (stats.epoch_max + 1) * scale <= _INT64_MAX
                and stats.epoch_min * scale >= -_INT64_MAX):
            return f"DateTime64({precision})"
        return "String"


class _Node:
    """One key of the row objects, and the keys under it when it holds objects."""

    __slots__ = ("stats", "objects", "children", "as_json")

    def __init__(self) -> None:
        self.stats = _Stats()  # its values that are not flattened objects
        self.objects = 0  # rows where it held an object that was flattened
        self.children: dict[str, _Node] = {}
        self.as_json = False  # an object past the bounds: the column is String


@dataclass(frozen=True, slots=True)
class InferredColumn:
    """One column of an inferred schema.

    ``jsonpath`` is None for CSV columns (they map by position or header name).
    ``present_pct``: the percentage of sampled rows with a non-null value.
    """

    name: str
    ch_type: str
    jsonpath: str | None
    present_pct: float

    @property
    def nullable(self) -> bool:
        return self.ch_type.startswith("Nullable(")


@dataclass(frozen=True, slots=True)
class Inference:
    """What :meth:`SchemaAnalyzer.result` found."""

    format: str  # "ndjson" | "csv"
    columns: tuple[InferredColumn, ...]
    rows: int  # data rows sampled (a CSV header not counted)
    bytes: int  # bytes of the sampled rows
    complete: bool  # False: a bound (rows or bytes) ended the sample
    skipped_rows: int = 0  # not JSON objects, bad JSON or CSV: left out of the sample
    header: bool | None = None  # CSV: the first record gave the names
    delimiter: str = ","  # CSV
    warnings: tuple[str, ...] = ()
    #: The first rows, one value per column (as sampled: objects as compact JSON for
    #: String columns, arrays as lists).
    preview: tuple[tuple[object, ...], ...] = ()
    elapsed: float = 0.0  # seconds spent analysing


def _key_step(key: str) -> str | None:
    """``key`` as a jsonpath step a datafile can hold, or None."""
    if not key or any(ch in key for ch in "`\\") or any(ord(ch) < 32 for ch in key):
        return None
    if not any(ch in key for ch in ".[]") and key == key.strip():
        return "." + key
    if "'" not in key and '"' not in key:
        return f"['{key}']"
    return None


def _identifier(raw: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_]", "_", raw)
    return "_" + name if not name or name[0].isdigit() else name


class _Names:
    def __init__(self) -> None:
        self._taken = set(_RESERVED)

    def take(self, raw: str) -> str:
        base = _identifier(raw)
        name, suffix = base, 1
        while name in self._taken:
            suffix += 1
            name = f"{base}_{suffix}"
        self._taken.add(name)
        return name


def _json_text(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


class SchemaAnalyzer:
    """Infer a schema from sample rows, one at a time (see the module docstring).

    :param format: ``"ndjson"`` (rows are JSON objects as Python values: ``dict``,
        ``list``, ``str``, ``int``, ``float``, ``bool``, ``None``) or ``"csv"`` (rows
        are sequences of field texts; ``None``, ``""`` and ``"\\N"`` are null).
    :param max_rows: rows to sample at most.
    :param max_bytes: bytes to sample at most (each row's ``nbytes``).
    :param max_depth: levels of keys flattened into separate columns.
    :param max_object_keys: an object with more keys is kept as one String column.
    :param max_columns: paths tracked at most; further new keys are dropped.
    :param preview_rows: rows kept for :attr:`Inference.preview`.
    :param narrow_integers: pick Int16/Int32/Int64 by range (Tinybird); False: Int64.
    :param datetime64: infer DateTime64 (False for ClickHouse 18.16).
    :param header: CSV only: ``None`` detects the header row, ``True``/``False`` decide.

    >>> analyzer = SchemaAnalyzer()
    >>> analyzer.add_row({"ts": "2024-05-01 10:00:00", "user": {"id": 7}})
    True
    >>> [(c.name, c.ch_type, c.jsonpath) for c in analyzer.result().columns]
    [('ts', 'DateTime', '$.ts'), ('user_id', 'Int16', '$.user.id')]
    """

    def __init__(self, format: str = "ndjson", *, max_rows: int = MAX_ROWS,
                 max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH,
                 max_object_keys: int = MAX_OBJECT_KEYS, max_columns: int = MAX_COLUMNS,
                 preview_rows: int = PREVIEW_ROWS, narrow_integers: bool = True,
                 datetime64: bool = True, header: bool | None = None) -> None:
        if format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {format!r}")
        if min(max_rows, max_bytes, max_depth, max_columns) < 1 or max_object_keys < 0:
            raise ValueError("the bounds must be positive")
        if header is not None and format != "csv":
            raise ValueError("header applies to CSV only")
        self.format = format
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.max_depth = max_depth
        self.max_object_keys = max_object_keys
        self.max_columns = max_columns
        self.preview_rows = preview_rows
        self._types = _Types(narrow_integers, datetime64)
        self._header = header
        self._started = time.perf_counter()
        self._elapsed = 0.0
        self._rows = 0  # rows taken (a CSV header included)
        self._bytes = 0
        self._skipped = 0
        self._paths = 0
        self._warnings: list[str] = []
        self._dropped: set[str] = set()
        self._root: dict[str, _Node] = {}
        self._preview: list[object] = []
        self._csv_first: list[_Stats] = []  # the first CSV record, maybe a header
        self._csv_first_row: list[str | None] = []
        self._csv_rest: list[_Stats] = []

    @property
    def rows(self) -> int:
        """Rows taken so far (a CSV header row included)."""
        return self._rows

    @property
    def full(self) -> bool:
        """True once a bound is reached: :meth:`add_row` takes no more rows."""
        return self._rows >= self.max_rows or self._bytes >= self.max_bytes

    def add_row(self, row: object, nbytes: int | None = None) -> bool:
        """Take one row into the sample, unless :attr:`full`.

        :param row: an NDJSON row (a JSON object as Python values; anything else is
            counted in ``skipped_rows``) or a CSV record (a sequence of field texts).
        :param nbytes: the row's size in the body, for ``max_bytes``; default: its
            compact JSON (NDJSON) or its fields plus delimiters (CSV).
        :returns: whether more rows are wanted.
        """
        if self.full:
            return False
        started = time.perf_counter()
        if self.format == "ndjson":
            if not isinstance(row, Mapping):
                self._skipped += 1
                return True
            self._take(nbytes if nbytes is not None else len(_json_text(row).encode()) + 1)
            self._walk(row, self._root, "$", (), 1)
            if len(self._preview) < self.preview_rows:
                self._preview.append(row)
        else:
            if isinstance(row, (str, bytes)) or not isinstance(row, Sequence):
                raise TypeError("a CSV row is a sequence of field texts")
            fields = [(("" if text is None else str(text)), False) for text in row]
            size = sum(len(text.encode()) for text, _ in fields) + len(fields)
            self._add_csv(fields, nbytes if nbytes is not None else size)
        self._elapsed += time.perf_counter() - started
        return not self.full

    def _take(self, nbytes: int) -> None:
        self._rows += 1
        self._bytes += nbytes

    def _skip_path(self, path: str, reason: str) -> None:
        if path not in self._dropped and len(self._dropped) < 20:
            self._warnings.append(f"{path}: {reason}")
        self._dropped.add(path)

    def _walk(self, obj: Mapping[Any, Any], nodes: dict[str, _Node], path: str,
              keys: tuple[str, ...], depth: int) -> None:
        for key, value in obj.items():
            node = nodes.get(key)
            if node is None:
                step = _key_step(str(key))
                if step is None:
                    self._skip_path(f"{path}[{key!r}]", "key cannot be named in a jsonpath")
                    continue
                if self._paths >= self.max_columns:
                    self._skip_path(path + step, f"more than {self.max_columns} columns")
                    continue
                node = nodes[key] = _Node()
                self._paths += 1
            if isinstance(value, Mapping) and not node.as_json:
                if depth >= self.max_depth or len(value) > self.max_object_keys:
                    node.as_json = True  # kept whole, as its JSON text
                else:
                    node.objects += 1
                    step = _key_step(str(key))
                    assert step is not None
                    self._walk(value, node.children, path + step, keys + (key,), depth + 1)
                    continue
            node.stats.observe(value)

    def _add_csv(self, fields: list[tuple[str, bool]], nbytes: int) -> None:
        first = self._rows == 0
        self._take(nbytes)
        if first:
            self._csv_first_row = [None if not q and t in ("", "\\N") else t for t, q in fields]
            columns = self._csv_first
        else:
            columns = self._csv_rest
        for index, (text, quoted) in enumerate(fields):
            if index >= self.max_columns:
                self._skip_path(f"field {index + 1}", f"more than {self.max_columns} columns")
                break
            while len(columns) <= index:
                columns.append(_Stats())
            columns[index].observe_csv(text, quoted)
        if len(self._preview) < self.preview_rows + 1:
            self._preview.append(
                tuple(None if not q and t in ("", "\\N") else t for t, q in fields))

    # -- the result ------------------------------------------------------------------

    def result(self) -> Inference:
        """The schema the rows so far give."""
        started = time.perf_counter()
        if self.format == "ndjson":
            leaves = self._ndjson_columns()
            columns = [column for column, _ in leaves]
            preview, header, rows = self._ndjson_preview(leaves), None, self._rows
        else:
            header = self._csv_has_header()
            rows = self._rows - (1 if header else 0)
            columns, preview = self._csv_columns(header, rows)
        elapsed = self._elapsed + time.perf_counter() - started
        return Inference(
            format=self.format, columns=tuple(columns), rows=rows, bytes=self._bytes,
            complete=not self.full, skipped_rows=self._skipped, header=header,
            warnings=tuple(self._warnings), preview=preview, elapsed=elapsed)

    def _pct(self, present: int, rows: int) -> float:
        return round(100.0 * present / rows, 2) if rows else 0.0

    def _column(self, names: _Names, raw_name: str, stats: _Stats, present: int,
                rows: int, jsonpath: str | None, as_string: bool = False) -> InferredColumn:
        ch_type = "String" if as_string else self._types.value_type(stats)
        if ch_type.startswith("Array("):
            jsonpath = None if jsonpath is None else jsonpath + "[:]"
        elif present < rows:
            ch_type = f"Nullable({ch_type})"
        return InferredColumn(names.take(raw_name), ch_type, jsonpath,
                              self._pct(present, rows))

    def _ndjson_columns(self) -> list[tuple[InferredColumn, tuple[str, ...]]]:
        """Each column, with the keys leading to it."""
        names = _Names()
        out: list[tuple[InferredColumn, tuple[str, ...]]] = []

        def visit(nodes: dict[str, _Node], path: str, keys: tuple[str, ...]) -> None:
            for key, node in nodes.items():
                step = _key_step(key)
                assert step is not None
                here, named = path + step, keys + (key,)
                present = node.stats.present + node.objects
                flatten = (node.objects and not node.as_json and node.children
                           and node.stats.kinds == 0)
                if flatten:
                    visit(node.children, here, named)
                    continue
                whole = bool(node.as_json or node.objects)
                out.append((self._column(names, "_".join(named), node.stats, present,
                                         self._rows, here, as_string=whole), named))

        visit(self._root, "$", ())
        return out

    def _ndjson_preview(self, leaves: list[tuple[InferredColumn, tuple[str, ...]]]
                        ) -> tuple[tuple[object, ...], ...]:
        rows: list[tuple[object, ...]] = []
        for raw in self._preview:
            values: list[object] = []
            for column, keys in leaves:
                value: object = raw
                for key in keys:
                    value = value.get(key) if isinstance(value, Mapping) else None
                if column.ch_type.endswith("String)") or column.ch_type == "String":
                    if isinstance(value, (Mapping, list, tuple)):
                        value = _json_text(value)
                values.append(value)
            rows.append(tuple(values))
        return tuple(rows)

    def _csv_has_header(self) -> bool:
        if self._header is not None:
            return self._header
        if self._rows < 2 or not self._csv_first_row:
            return False
        if not all(self._csv_first_row):
            return False
        if any(self._types.value_type(stats) != "String" for stats in self._csv_first):
            return False
        return any(self._types.value_type(stats) != "String" for stats in self._csv_rest)

    def _csv_columns(self, header: bool, rows: int
                     ) -> tuple[list[InferredColumn], tuple[tuple[object, ...], ...]]:
        stats = self._csv_rest
        if not header:
            merged = [_Stats() for _ in range(max(len(stats), len(self._csv_first)))]
            for index, column in enumerate(merged):
                for part in (self._csv_first, stats):
                    if index < len(part):
                        column.merge(part[index])
            stats = merged
        names = _Names()
        titles = self._csv_first_row if header else []
        out = []
        for index, column in enumerate(stats):
            title = titles[index] if index < len(titles) else None
            raw = title if title else f"c{index + 1}"
            out.append(self._column(names, raw, column, column.present, rows, None))
        preview_rows = self._preview[1:] if header else self._preview
        width = len(out)
        preview = []
        for row in preview_rows[: self.preview_rows]:
            assert isinstance(row, tuple)
            preview.append(row[:width] + (None,) * (width - len(row)))
        return out, tuple(preview)


def analyze_ndjson(data: bytes | bytearray | memoryview, *, final: bool = True,
                   **options: Any) -> Inference:
    """Infer the schema of an NDJSON body (or its first bytes).

    Lines that are blank are ignored; lines that are not a JSON object (invalid JSON,
    ``NaN``, a number...) are counted in ``skipped_rows``.

    :param final: False when ``data`` is only the start of the body: a last line with no
        newline is then left out (it may be cut).
    :param options: :class:`SchemaAnalyzer` keyword arguments.

    >>> [c.ch_type for c in analyze_ndjson(b'{"a": 1}\\n{"a": 2.5, "b": [true]}').columns]
    ['Float64', 'Array(UInt8)']
    """
    analyzer = SchemaAnalyzer("ndjson", **options)
    body = bytes(data)
    if body.startswith(b"\xef\xbb\xbf"):
        body = body[3:]
    start = 0
    while start < len(body) and not analyzer.full:
        end = body.find(b"\n", start)
        if end < 0:
            if not final:
                break
            end = len(body)
        line = body[start:end]
        start = end + 1
        if not line.strip():
            continue
        try:
            row = json.loads(line.decode("utf-8"), parse_constant=_no_constant)
        except (ValueError, RecursionError):
            analyzer._skipped += 1
            continue
        analyzer.add_row(row, len(line) + 1)
    return analyzer.result()


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def analyze_csv(data: bytes | bytearray | memoryview, *, delimiter: str = ",",
                escapechar: str | None = None, final: bool = True,
                **options: Any) -> Inference:
    """Infer the schema of a CSV body (or its first bytes), split as the CSV parser
    splits it (RFC 4180 quotes, LF or CRLF; an empty unquoted field or ``\\N`` is null).

    Blank records are ignored; malformed ones (a stray quote) or ones not UTF-8 are
    counted in ``skipped_rows``.

    :param final: False when ``data`` is only the start of the body: a last record with
        no newline is then left out.
    :param options: :class:`SchemaAnalyzer` keyword arguments (``header`` among them).

    >>> result = analyze_csv(b"day,n\\n2024-05-01,3\\n")
    >>> result.header, [(c.name, c.ch_type) for c in result.columns]
    (True, [('day', 'Date'), ('n', 'Int16')])
    """
    if len(delimiter) != 1 or delimiter in "\"\r\n":
        raise ValueError("delimiter must be one character other than a quote, CR or LF")
    if escapechar is not None and len(escapechar) != 1:
        raise ValueError("escapechar must be one character")
    analyzer = SchemaAnalyzer("csv", **options)
    body = bytes(data)
    if body.startswith(b"\xef\xbb\xbf"):
        body = body[3:]
    separator = ord(delimiter)
    escape = ord(escapechar) if escapechar is not None else -1
    start = pos = 0
    in_quotes = False
    size = len(body)
    while start < size and not analyzer.full:
        # One record: up to a LF outside quotes (the CSV parser's split).
        while pos < size:
            byte = body[pos]
            if byte == escape:
                pos += 2
                continue
            if byte == 0x22:
                in_quotes = not in_quotes
            elif byte == 0x0A and not in_quotes:
                break
            pos += 1
        if pos >= size and not final:
            break
        record = body[start:min(pos, size)]
        start = pos = pos + 1
        in_quotes = False
        if record.endswith(b"\r"):
            record = record[:-1]
        if not record:
            continue
        try:
            fields = [(text.decode("utf-8"), quoted)
                      for text, quoted in split_csv_record(record, separator, escape)]
        except (_BadRow, UnicodeDecodeError):
            analyzer._skipped += 1
            continue
        analyzer._add_csv(fields, len(record) + 1)
    return replace(analyzer.result(), delimiter=delimiter)


# -- renderers ---------------------------------------------------------------------------


def render_schema(columns: Sequence[InferredColumn]) -> str:
    """The one-line schema of Tinybird's ``analysis.schema``: ``name Type `json:$.path```
    items joined by ``, `` (the ``schema`` parameter of ``POST /v0/datasources``)."""
    items = []
    for column in columns:
        item = f"{column.name} {column.ch_type}"
        if column.jsonpath is not None:
            item += f" `json:{column.jsonpath}`"
        items.append(item)
    return ", ".join(items)


def suggest_engine(columns: Sequence[InferredColumn]) -> EngineSpec:
    """MergeTree ordered by the first non-Nullable date/time column, else number, else
    String (Tinybird's default order), else ``tuple()`` (``sorting_key=None``)."""
    ranks: list[tuple[int, int, str]] = []
    for position, column in enumerate(columns):
        ch_type = column.ch_type
        if column.nullable or ch_type.startswith("Array("):
            continue
        if ch_type in ("Date", "DateTime") or ch_type.startswith("DateTime64("):
            ranks.append((0, position, column.name))
        elif ch_type in ("Float64", "UInt8", "UInt64") or ch_type.startswith("Int"):
            ranks.append((1, position, column.name))
        elif ch_type == "String":
            ranks.append((2, position, column.name))
    return EngineSpec(name="MergeTree", sorting_key=min(ranks)[2] if ranks else None)


def render_datasource(inference: Inference, *, description: str | None = None,
                      engine: EngineSpec | None = None) -> str:
    """A ``.datasource`` file for ``inference``: DESCRIPTION, SCHEMA (with ``json:``
    paths for NDJSON), ENGINE and ENGINE_SORTING_KEY (default: :func:`suggest_engine`).

    :raises InferenceError: the sample gave no column.
    """
    if not inference.columns:
        raise InferenceError("the sample has no column to infer a schema from")
    engine = engine if engine is not None else suggest_engine(inference.columns)
    text = description if description is not None else (
        f"Inferred by tinyingest from {inference.rows} {inference.format.upper()} rows.")
    lines = ["DESCRIPTION >", *("    " + line for line in text.splitlines() or [""]), "",
             "SCHEMA >"]
    for index, column in enumerate(inference.columns):
        item = f"    `{column.name}` {column.ch_type}"
        if column.jsonpath is not None:
            item += f" `json:{column.jsonpath}`"
        lines.append(item + ("," if index + 1 < len(inference.columns) else ""))
    lines += ["", f'ENGINE "{engine.name}"']
    if engine.sorting_key:
        lines.append(f'ENGINE_SORTING_KEY "{engine.sorting_key}"')
    return "\n".join(lines) + "\n"


def analyze_response(inference: Inference) -> dict[str, Any]:
    """The body of ``POST /v0/analyze``, shaped as Tinybird's (api-reference/analyze-api):
    ``analysis.columns[]`` (``path``, ``recommended_type``, ``present_pct``, ``name``),
    ``analysis.schema``, ``preview`` (``meta``, ``data``, ``rows``, ``statistics``); for
    CSV also ``dialect`` (``delimiter``, ``has_header``).

    ``path`` is null for CSV columns; ``preview.data`` holds the sampled values (see
    :attr:`Inference.preview`), not values read back from a table.
    """
    columns = inference.columns
    names = [column.name for column in columns]
    body: dict[str, Any] = {
        "analysis": {
            "columns": [{"path": c.jsonpath, "recommended_type": c.ch_type,
                         "present_pct": c.present_pct, "name": c.name} for c in columns],
            "schema": render_schema(columns),
        },
        "preview": {
            "meta": [{"name": c.name, "type": c.ch_type} for c in columns],
            "data": [dict(zip(names, row)) for row in inference.preview],
            "rows": len(inference.preview),
            "statistics": {"elapsed": round(inference.elapsed, 6),
                           "rows_read": inference.rows, "bytes_read": inference.bytes},
        },
    }
    if inference.format == "csv":
        body["dialect"] = {"delimiter": inference.delimiter,
                           "has_header": bool(inference.header)}
    return body

