"""Tinybird datafiles -> immutable :class:`DataSource` / :class:`Pipe` specs.

A project directory holds ``datasources/*.datasource`` and ``pipes/*.pipe``;
:func:`load_project` reads them all into a :class:`Project`. The syntax is Tinybird's
(``tinybird/datafile_common.py``), see api.md section 6:

* one ``KEYWORD value`` per line, keywords case-insensitive, ``"..."``/``'...'`` around a
  value are stripped;
* ``KEYWORD >`` opens a block of the following lines; it ends at the next non-indented
  line whose first word is a datafile keyword (so an unindented ``FROM`` stays SQL);
* lines whose first non-blank character is ``#`` are comments, in blocks too;
* ``INCLUDE "file.incl" k=v`` splices another file in, with ``$k`` replaced by ``v``.

Unlike Tinybird, ``$VAR`` / ``${VAR}`` are **not** substituted from the environment: a
server must not leak its environment into SQL. The text is kept as written.

Every problem raises :class:`DatafileError`, whose ``str`` is ``"<file>:<line>: <reason>"``.

The SCHEMA column list (api.md 2.4) is parsed by :func:`parse_schema`, also used for
``POST /v0/datasources?mode=create&schema=...``. Types are parsed by
:mod:`tinyingest.schema` only. DDL is rendered by :mod:`tinyingest.ddl`.
"""

from __future__ import annotations

import re
import shlex
import string
import textwrap
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from tinyingest.schema import ColumnSpec, SchemaError, split_top_level

__all__ = [
    "DatafileError",
    "EngineSpec",
    "IndexSpec",
    "DataSource",
    "Node",
    "Pipe",
    "Project",
    "ENGINES",
    "QUARANTINE_COLUMNS",
    "build_engine",
    "check_fragment",
    "load_project",
    "parse_datasource",
    "parse_pipe",
    "parse_schema",
    "write_example_project",
]


class DatafileError(ValueError):
    """A datafile (or an API ``schema``) the gateway cannot use.

    ``str(err)`` is ``"<file>:<line>: <reason>"``; ``reason`` alone suits API error bodies.
    """

    def __init__(self, file: str, line: int, reason: str) -> None:
        super().__init__(f"{file}:{line}: {reason}")
        self.file = file
        self.line = line
        self.reason = reason


# ---------------------------------------------------------------------------
# Specs


@dataclass(frozen=True, slots=True)
class EngineSpec:
    """A table engine and its ``engine_*`` options, validated (see :func:`build_engine`).

    ``name`` is ClickHouse's spelling (``ReplacingMergeTree``). Fragments are kept as
    written; :mod:`tinyingest.ddl` renders them.
    """

    name: str = "MergeTree"
    partition_key: str | None = None
    sorting_key: str | None = None
    primary_key: str | None = None
    sampling_key: str | None = None
    ttl: str | None = None
    settings: str | None = None
    ver: str | None = None
    is_deleted: str | None = None
    sign: str | None = None
    version: str | None = None
    columns: tuple[str, ...] | None = None  # SummingMergeTree


@dataclass(frozen=True, slots=True)
class IndexSpec:
    """A data-skipping index: ``INDEX name expr TYPE type GRANULARITY n``."""

    name: str
    expr: str
    type: str
    granularity: int


#: Columns a quarantine table has before the data source's own columns (api.md section 3).
QUARANTINE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("c__error_column", "Array(String)"),
    ("c__error", "Array(String)"),
    ("c__import_id", "Nullable(String)"),
    # Ours, not Tinybird's: the row exactly as received, so that a row that could not be
    # split into columns (invalid JSON, a ragged CSV record) is still kept whole.
    ("c__raw", "Nullable(String)"),
)
_RESERVED_COLUMNS = frozenset(name for name, _ in QUARANTINE_COLUMNS) | {"insertion_date"}


@dataclass(frozen=True, slots=True)
class DataSource:
    """One ``.datasource`` file (or one created through the API)."""

    name: str
    description: str
    columns: tuple[ColumnSpec, ...]
    engine: EngineSpec = field(default_factory=EngineSpec)
    indexes: tuple[IndexSpec, ...] = ()
    #: ``(token_name, "READ" | "APPEND")`` pairs from ``TOKEN`` lines.
    tokens: tuple[tuple[str, str], ...] = ()
    path: str | None = None  # the file it came from

    @property
    def quarantine_name(self) -> str:
        """``<name>_quarantine``."""
        return self.name + "_quarantine"

    @property
    def quarantine_columns(self) -> tuple[str, ...]:
        """Names of the original columns, in order; each is ``Nullable(String)`` in quarantine."""
        return tuple(column.name for column in self.columns)

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.columns)


NODE_TYPES = ("endpoint", "materialized", "copy", "sink", "stream", "standard")


@dataclass(frozen=True, slots=True)
class Node:
    """One ``NODE`` of a pipe."""

    name: str
    sql: str  # dedented and stripped; starts with "%" when it is a template
    type: str = "standard"  # one of NODE_TYPES, lower case
    #: Target data source of a ``materialized`` (``DATASOURCE``) or ``copy``
    #: (``TARGET_DATASOURCE``) node.
    datasource: str | None = None
    description: str = ""
    copy_schedule: str | None = None
    copy_mode: str | None = None


@dataclass(frozen=True, slots=True)
class Pipe:
    """One ``.pipe`` file."""

    name: str
    description: str
    nodes: tuple[Node, ...]
    #: ``(token_name, "READ")`` pairs from ``TOKEN`` lines.
    tokens: tuple[tuple[str, str], ...] = ()
    path: str | None = None
    #: ``QUERY_MAX_ROWS`` / ``QUERY_TIMEOUT`` (seconds): the endpoint's own limits,
    #: instead of ``TINYINGEST_QUERY_MAX_ROWS`` / ``TINYINGEST_QUERY_TIMEOUT``; None: those.
    query_max_rows: int | None = None
    query_timeout: float | None = None

    @property
    def endpoint(self) -> Node | None:
        """The node served by ``/v0/pipes/<name>``.

        The node with ``TYPE endpoint``; else, as classic ``tb push`` does, the last node
        unless the pipe is a materialization, copy, sink or stream.
        """
        for node in self.nodes:
            if node.type == "endpoint":
                return node
        if any(node.type != "standard" for node in self.nodes):
            return None
        return self.nodes[-1]

    def node(self, name: str) -> Node | None:
        for node in self.nodes:
            if node.name == name:
                return node
        return None


@dataclass(frozen=True, slots=True)
class Project:
    """All the data sources and pipes of a project directory, by name."""

    datasources: dict[str, DataSource]
    pipes: dict[str, Pipe]


# ---------------------------------------------------------------------------
# Fragments and engines

#: Engine name (lower case) -> ClickHouse spelling.
ENGINES: dict[str, str] = {
    name.lower(): name
    for name in (
        "MergeTree",
        "ReplacingMergeTree",
        "SummingMergeTree",
        "AggregatingMergeTree",
        "CollapsingMergeTree",
        "VersionedCollapsingMergeTree",
        "Null",
    )
}

# Which engine_* parameters each engine takes (the rest are table options).
_ENGINE_PARAMS: dict[str, tuple[str, ...]] = {
    "MergeTree": (),
    "ReplacingMergeTree": ("ver", "is_deleted"),
    "SummingMergeTree": ("columns",),
    "AggregatingMergeTree": (),
    "CollapsingMergeTree": ("sign",),
    "VersionedCollapsingMergeTree": ("sign", "version"),
    "Null": (),
}
_ENGINE_REQUIRED: dict[str, tuple[str, ...]] = {
    "ReplacingMergeTree": ("sorting_key",),
    "CollapsingMergeTree": ("sign", "sorting_key"),
    "VersionedCollapsingMergeTree": ("sign", "version"),
}
_ENGINE_OPTIONS = ("partition_key", "sorting_key", "primary_key", "sampling_key", "ttl", "settings")
ENGINE_KEYS: tuple[str, ...] = _ENGINE_OPTIONS + ("ver", "is_deleted", "sign", "version", "columns")

_FORBIDDEN_WORDS = re.compile(r"\b(FORMAT|SELECT|SETTINGS|INTO|UNION)\b", re.IGNORECASE)
_SETTING = re.compile(
    r"\s*[A-Za-z_][A-Za-z0-9_]*\s*=\s*"
    r"(?:[+-]?[0-9][0-9.eE+-]*|'(?:[^'\\]|\\.|'')*'|[A-Za-z_][A-Za-z0-9_]*)\s*"
)


def check_fragment(text: str, what: str = "expression") -> str:
    """Check that ``text`` is one SQL expression list safe to paste into DDL.

    Rejects ``;``, comments, ``FORMAT``/``SELECT``/``SETTINGS`` outside quotes, unbalanced
    brackets or quotes. Returns the stripped text; raises :class:`ValueError`.

    >>> check_fragment(" toYYYYMM(ts) ")
    'toYYYYMM(ts)'
    """
    stripped = text.strip()
    if not stripped:
        raise ValueError(f"{what} is empty")
    closing = {"(": ")", "[": "]", "{": "}"}
    stack: list[str] = []
    bare: list[str] = []  # the text outside quotes, for the word check
    pos = 0
    n = len(stripped)
    while pos < n:
        ch = stripped[pos]
        if ch in "'\"`":
            end = _skip_quoted(stripped, pos)
            if end < 0:
                raise ValueError(f"{what} has an unterminated {ch} quote: {stripped}")
            bare.append(" ")
            pos = end
            continue
        if ch == ";":
            raise ValueError(f"{what} must not contain ';': {stripped}")
        if stripped.startswith("--", pos) or stripped.startswith("/*", pos) or ch == "#":
            raise ValueError(f"{what} must not contain comments: {stripped}")
        if ch in closing:
            stack.append(closing[ch])
        elif ch in ")]}":
            if not stack or stack.pop() != ch:
                raise ValueError(f"{what} has unbalanced brackets: {stripped}")
        bare.append(ch)
        pos += 1
    if stack:
        raise ValueError(f"{what} has unbalanced brackets: {stripped}")
    word = _FORBIDDEN_WORDS.search("".join(bare))
    if word is not None:
        raise ValueError(f"{what} must not contain {word.group(1).upper()}: {stripped}")
    return stripped


def _check_settings(text: str) -> str:
    stripped = text.strip()
    parts = split_top_level(stripped)
    if not stripped or not all(_SETTING.fullmatch(part) for part in parts):
        raise ValueError(
            f"engine settings must be 'name = value, ...' with literal values: {stripped}"
        )
    return stripped


def build_engine(
    name: str | None,
    options: Mapping[str, str],
    column_names: Iterable[str],
) -> EngineSpec:
    """Validate an engine and its ``engine_*`` options (keys without the ``engine_`` prefix).

    Used for ``ENGINE*`` lines and for the ``engine``/``engine_*`` API parameters.
    Raises :class:`ValueError` with a message naming the problem.

    >>> build_engine("mergetree", {"sorting_key": "a"}, ["a"]).name
    'MergeTree'
    """
    engine = ENGINES.get((name or "MergeTree").strip().strip("\"'").lower())
    if engine is None:
        valid = ", ".join(ENGINES.values())
        raise ValueError(f"unknown engine {name!r}; valid engines: {valid}")
    columns = set(column_names)
    values: dict[str, str] = {}
    for key, raw in options.items():
        if key not in ENGINE_KEYS:
            raise ValueError(f"unknown engine option engine_{key}")
        if raw is None or not raw.strip():
            continue
        if key in ("ver", "is_deleted", "sign", "version", "columns") and key not in _ENGINE_PARAMS[
            engine
        ]:
            raise ValueError(f"engine_{key} is not a parameter of {engine}")
        if engine == "Null":
            raise ValueError(f"engine Null takes no options (got engine_{key})")
        values[key] = raw
    for key in _ENGINE_REQUIRED.get(engine, ()):
        if key not in values:
            raise ValueError(f"{engine} requires engine_{key}")

    for key in _ENGINE_PARAMS[engine]:
        if key not in values:
            continue
        names = [part.strip().strip("`") for part in values[key].split(",")]
        if key != "columns" and len(names) != 1:
            raise ValueError(f"engine_{key} must be one column, got {values[key]!r}")
        for column in names:
            if column not in columns:
                raise ValueError(f"engine_{key}: {column!r} is not a column of the schema")
    if "is_deleted" in values and "ver" not in values:
        raise ValueError("engine_is_deleted needs engine_ver")

    checked: dict[str, str] = {}
    for key in _ENGINE_OPTIONS:
        if key in values:
            if key == "settings":
                checked[key] = _check_settings(values[key])
            else:
                checked[key] = check_fragment(values[key], f"engine_{key}")
    sorting = checked.get("sorting_key")
    if engine == "ReplacingMergeTree" and sorting is not None:
        if re.fullmatch(r"\(?\s*tuple\(\s*\)\s*\)?", sorting):
            raise ValueError("ReplacingMergeTree needs a real engine_sorting_key, not tuple()")

    def param(key: str) -> str | None:
        value = values.get(key)
        return value.strip().strip("`") if value is not None else None

    summed = values.get("columns")
    return EngineSpec(
        name=engine,
        partition_key=checked.get("partition_key"),
        sorting_key=sorting,
        primary_key=checked.get("primary_key"),
        sampling_key=checked.get("sampling_key"),
        ttl=checked.get("ttl"),
        settings=checked.get("settings"),
        ver=param("ver"),
        is_deleted=param("is_deleted"),
        sign=param("sign"),
        version=param("version"),
        columns=(
            tuple(part.strip().strip("`") for part in summed.split(","))
            if summed is not None
            else None
        ),
    )


# ---------------------------------------------------------------------------
# Low-level scanning shared by the schema parser and the fragment checks


def _skip_quoted(text: str, pos: int) -> int:
    """Index just past the quoted token starting at ``pos``, or -1 if unterminated.

    Backslash escapes and doubled quotes both work, as in ClickHouse.
    """
    quote = text[pos]
    pos += 1
    n = len(text)
    while pos < n:
        ch = text[pos]
        if ch == "\\":
            pos += 2
            continue
        if ch == quote:
            if pos + 1 < n and text[pos + 1] == quote:
                pos += 2
                continue
            return pos + 1
        pos += 1
    return -1


# ---------------------------------------------------------------------------
# SCHEMA


@dataclass(slots=True)
class _Item:
    text: str
    origin: str
    line: int


def _schema_items(text: str, origin: str, lines: list[int]) -> list[_Item]:
    """Split a SCHEMA block into column definitions, dropping ``--`` comments.

    ``lines[k]`` is the file line of the block's line ``k``.
    """
    items: list[_Item] = []
    current: list[str] = []
    depth = 0
    line_index = 0
    item_line: int | None = None
    pos = 0
    n = len(text)

    def file_line(index: int) -> int:
        return lines[min(index, len(lines) - 1)]

    while pos < n:
        ch = text[pos]
        if ch in "'\"`":
            end = _skip_quoted(text, pos)
            if end < 0:
                raise DatafileError(origin, file_line(line_index), f"unterminated {ch} quote")
            token = text[pos:end]
            if item_line is None:
                item_line = line_index
            current.append(token)
            line_index += token.count("\n")
            pos = end
            continue
        if text.startswith("--", pos):
            newline = text.find("\n", pos)
            pos = n if newline < 0 else newline
            continue
        if ch == "\n":
            line_index += 1
            current.append(" ")
            pos += 1
            continue
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth < 0:
                raise DatafileError(origin, file_line(line_index), f"unbalanced {ch!r}")
        elif ch == "," and depth == 0:
            start = line_index if item_line is None else item_line
            items.append(_Item("".join(current).strip(), origin, file_line(start)))
            current = []
            item_line = None
            pos += 1
            continue
        if item_line is None and not ch.isspace():
            item_line = line_index
        current.append(ch)
        pos += 1
    if depth != 0:
        start = line_index if item_line is None else item_line
        raise DatafileError(origin, file_line(start), "unbalanced parentheses")
    last = "".join(current).strip()
    if last or not items:
        items.append(_Item(last, origin, file_line(line_index if item_line is None else item_line)))
    for item in items[:-1]:
        if not item.text:
            raise DatafileError(origin, item.line, "empty column definition (stray ',')")
    return [item for item in items if item.text]


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_TYPE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_COLUMN_KEYWORDS = ("DEFAULT", "MATERIALIZED", "ALIAS", "CODEC", "TTL", "COMMENT")
_INDEX_LINE = re.compile(
    r"INDEX\s+(`[^`]+`|[A-Za-z_][A-Za-z0-9_]*)\s+(.+?)\s+TYPE\s+(.+?)\s+GRANULARITY\s+(\d+)",
    re.IGNORECASE | re.DOTALL,
)


def _read_balanced(text: str, pos: int) -> int:
    """``text[pos]`` is ``(``: index just past its matching ``)``."""
    depth = 0
    while pos < len(text):
        ch = text[pos]
        if ch in "'\"`":
            end = _skip_quoted(text, pos)
            pos = len(text) if end < 0 else end
            continue
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return pos + 1
        pos += 1
    return -1


def _next_keyword(text: str, pos: int) -> tuple[int, str | None]:
    """Position of the next column keyword outside brackets/quotes at or after ``pos``."""
    depth = 0
    while pos < len(text):
        ch = text[pos]
        if ch in "'\"`":
            if depth == 0 and text.startswith("`json:", pos):
                return pos, "JSON"
            end = _skip_quoted(text, pos)
            pos = len(text) if end < 0 else end
            continue
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif depth == 0 and (ch.isalpha() or ch == "_") and not (pos and _is_word(text[pos - 1])):
            match = _WORD.match(text, pos)
            assert match is not None
            word = match.group(0).upper()
            if word in _COLUMN_KEYWORDS:
                return pos, word
            pos = match.end()
            continue
        pos += 1
    return len(text), None


def _is_word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def _infer_type(expr: str) -> str | None:
    """The type ClickHouse gives a constant DEFAULT, for the few cases we can tell."""
    text = expr.strip()
    lowered = text.lower().replace(" ", "")
    if lowered == "now()":
        return "DateTime"
    if lowered == "today()":
        return "Date"
    if len(text) >= 2 and text[0] == "'" and _skip_quoted(text, 0) == len(text):
        return "String"
    if re.fullmatch(r"-?\d+", text):
        value = int(text)
        if value >= 0:
            for bits in (8, 16, 32, 64):
                if value < 1 << bits:
                    return f"UInt{bits}"
        else:
            for bits in (8, 16, 32, 64):
                if value >= -(1 << (bits - 1)):
                    return f"Int{bits}"
        return None
    if re.fullmatch(r"-?(\d+\.\d*|\.\d+|\d+(\.\d*)?[eE][+-]?\d+)", text):
        return "Float64"
    return None


def _default_jsonpath(name: str) -> str:
    if re.fullmatch(r"[^.\[\]'\"]+", name):
        return "$." + name
    if "'" not in name:
        return f"$['{name}']"
    raise SchemaError(f"column {name!r} needs an explicit `json:` path")


def _parse_column(item: _Item) -> ColumnSpec:
    text = item.text
    origin, line = item.origin, item.line

    def fail(reason: str) -> DatafileError:
        return DatafileError(origin, line, reason)

    # name
    if text.startswith("`"):
        end = _skip_quoted(text, 0)
        if end < 0:
            raise fail("unterminated ` quote")
        name = text[1 : end - 1].replace("``", "`").replace("\\`", "`")
        if not name:
            raise fail("empty column name")
    else:
        match = _IDENTIFIER.match(text)
        end = match.end() if match is not None else 0
        if match is None or (end < len(text) and not text[end].isspace()):
            word = text.split(None, 1)[0]
            raise fail(
                f"wrong value, please check the schema syntax: invalid column name {word!r}"
                " (quote it with backticks)"
            )
        name = match.group(0)
    pos = end

    # type: an identifier plus one parenthesised group, unless a keyword comes first
    while pos < len(text) and text[pos].isspace():
        pos += 1
    ch_type: str | None = None
    match = _TYPE_NAME.match(text, pos)
    if match is not None and match.group(0).upper() not in _COLUMN_KEYWORDS:
        type_end = match.end()
        if text.startswith("(", type_end):
            type_end = _read_balanced(text, type_end)
            if type_end < 0:
                raise fail(f"column {name!r}: unbalanced parentheses in type")
        ch_type = text[pos:type_end]
        pos = type_end
    elif pos < len(text) and match is None and not text.startswith("`json:", pos):
        raise fail(f"wrong value, please check the schema syntax: unexpected {text[pos:]!r}")

    jsonpath: str | None = None
    default_kind: str | None = None
    default_expr: str | None = None
    codec: str | None = None
    stage = 0  # 1: json seen, 2: DEFAULT/... seen, 3: CODEC seen
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            break
        keyword_pos, keyword = _next_keyword(text, pos)
        if keyword_pos != pos or keyword is None:
            raise fail(
                f"wrong value, please check the schema syntax: unexpected {text[pos:]!r}"
                f" in column {name!r}"
            )
        if keyword == "JSON":
            if stage >= 1:
                raise fail(f"column {name!r}: the `json:` path must come right after the type")
            end = _skip_quoted(text, pos)
            jsonpath = text[pos + 6 : end - 1].strip()
            if not jsonpath:
                raise fail(f"column {name!r}: empty `json:` path")
            pos = end
            stage = 1
        elif keyword in ("DEFAULT", "MATERIALIZED", "ALIAS"):
            if stage >= 2:
                after = "CODEC" if stage == 3 else default_kind
                raise fail(f"column {name!r}: {keyword} must come before {after}")
            expr_start = pos + len(keyword)
            expr_end, following = _next_keyword(text, expr_start)
            if following == "JSON":
                raise fail(f"column {name!r}: the `json:` path must come right after the type")
            expr = text[expr_start:expr_end].strip()
            if not expr:
                raise fail(f"column {name!r}: {keyword} needs an expression")
            try:
                default_expr = check_fragment(expr, f"{keyword} of column {name!r}")
            except ValueError as exc:
                raise fail(str(exc)) from None
            default_kind = keyword
            pos = expr_end
            stage = 2
        elif keyword == "CODEC":
            if stage >= 3:
                raise fail(f"column {name!r}: CODEC given twice")
            open_pos = pos + len("CODEC")
            while open_pos < len(text) and text[open_pos].isspace():
                open_pos += 1
            if not text.startswith("(", open_pos):
                raise fail(f"column {name!r}: CODEC needs (...)")
            close = _read_balanced(text, open_pos)
            if close < 0:
                raise fail(f"column {name!r}: unbalanced CODEC(...)")
            try:
                codec = check_fragment(text[open_pos + 1 : close - 1], f"CODEC of column {name!r}")
            except ValueError as exc:
                raise fail(str(exc)) from None
            pos = close
            stage = 3
        elif keyword == "TTL":
            raise fail(f"column {name!r}: column TTL is not supported; use ENGINE_TTL")
        else:
            raise fail(f"column {name!r}: {keyword} is not supported in a schema")

    if ch_type is None:
        if default_kind is None:
            raise fail(f"column {name!r} has no type")
        ch_type = _infer_type(default_expr or "")
        if ch_type is None:
            raise fail(
                f"column {name!r}: give its type (it cannot be inferred from {default_expr!r})"
            )
    if re.match(r"Nullable\s*\(\s*LowCardinality\s*\(", ch_type):
        raise fail(
            f"column {name!r}: Nullable(LowCardinality(...)) is not valid,"
            " use LowCardinality(Nullable(...))"
        )
    if name in _RESERVED_COLUMNS:
        raise fail(f"column name {name!r} is reserved for the quarantine table")
    try:
        if jsonpath is None and default_kind is None:
            jsonpath = _default_jsonpath(name)
        return ColumnSpec.build(name, ch_type, jsonpath, default_kind, default_expr, codec)
    except SchemaError as exc:
        raise fail(f"column {name!r}: {exc}") from None


def _parse_index(item: _Item) -> IndexSpec:
    match = _INDEX_LINE.fullmatch(item.text.strip())
    if match is None:
        raise DatafileError(
            item.origin, item.line, "index must be 'name expr TYPE type GRANULARITY n'"
        )
    name = match.group(1).strip("`")
    try:
        expr = check_fragment(match.group(2), f"index {name!r}")
        index_type = check_fragment(match.group(3), f"index {name!r} TYPE")
    except ValueError as exc:
        raise DatafileError(item.origin, item.line, str(exc)) from None
    return IndexSpec(name, expr, index_type, int(match.group(4)))


def _parse_schema_block(
    text: str, origin: str, lines: list[int]
) -> tuple[tuple[ColumnSpec, ...], tuple[IndexSpec, ...]]:
    columns: list[ColumnSpec] = []
    indexes: list[IndexSpec] = []
    seen: set[str] = set()
    for item in _schema_items(text, origin, lines):
        if re.match(r"INDEX\s", item.text, re.IGNORECASE):
            indexes.append(_parse_index(item))
            continue
        column = _parse_column(item)
        if column.name in seen:
            raise DatafileError(origin, item.line, f"duplicate column {column.name!r}")
        seen.add(column.name)
        columns.append(column)
    if not columns:
        raise DatafileError(origin, lines[0] if lines else 1, "the schema has no columns")
    return tuple(columns), tuple(indexes)


def parse_schema(text: str, origin: str = "schema") -> tuple[ColumnSpec, ...]:
    """Parse a SCHEMA column list (api.md 2.4), as sent to ``POST /v0/datasources``.

    ``INDEX`` entries are accepted and ignored. Raises :class:`DatafileError` (a
    :class:`ValueError`); its ``reason`` is a message fit for the API error body.

    >>> [c.name for c in parse_schema("`ts` DateTime `json:$.t`, n UInt8 DEFAULT 0")]
    ['ts', 'n']
    """
    line_count = text.count("\n") + 1
    columns, _ = _parse_schema_block(text, origin, list(range(1, line_count + 1)))
    return columns


def _parse_indexes_block(text: str, origin: str, lines: list[int]) -> tuple[IndexSpec, ...]:
    indexes: list[IndexSpec] = []
    for item in _schema_items(text, origin, lines):
        body = item.text if re.match(r"INDEX\s", item.text, re.IGNORECASE) else "INDEX " + item.text
        indexes.append(_parse_index(_Item(body, item.origin, item.line)))
    return tuple(indexes)


# ---------------------------------------------------------------------------
# Datafile lexing


@dataclass(frozen=True, slots=True)
class _Line:
    origin: str  # file name shown in errors
    number: int
    text: str


@dataclass(slots=True)
class _Command:
    keyword: str  # upper case
    value: str  # the single-line value (unquoted) or the dedented block
    raw: str  # the single-line remainder as written
    block: bool
    origin: str
    line: int  # line of the keyword
    block_lines: list[int]  # file line of each line of ``value`` when a block


_DATASOURCE_KEYWORDS = frozenset(
    {"DESCRIPTION", "SCHEMA", "INDEXES", "ENGINE", "TOKEN", "VERSION", "TAGS", "SHARED_WITH",
     "FORWARD_QUERY", "INCLUDE"}
    | {"ENGINE_" + key.upper() for key in ENGINE_KEYS}
)
_PIPE_KEYWORDS = frozenset(
    {"DESCRIPTION", "NODE", "SQL", "TYPE", "DATASOURCE", "TARGET_DATASOURCE", "COPY_SCHEDULE",
     "COPY_MODE", "TOKEN", "INCLUDE", "VERSION", "TAGS", "QUERY_MAX_ROWS", "QUERY_TIMEOUT"}
)
#: Keywords of the pipe as a whole, before its first NODE.
_PIPE_HEAD_KEYWORDS = frozenset({"DESCRIPTION", "VERSION", "QUERY_MAX_ROWS", "QUERY_TIMEOUT"})
_ALL_KEYWORDS = _DATASOURCE_KEYWORDS | _PIPE_KEYWORDS | {"SETTINGS"}
_UNSUPPORTED_PREFIXES = ("KAFKA_", "IMPORT_", "EXPORT_", "ENGINE")
_MAX_INCLUDE_DEPTH = 10


def _is_keyword(word: str) -> bool:
    upper = word.upper()
    return upper in _ALL_KEYWORDS or upper.startswith(_UNSUPPORTED_PREFIXES)


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] in "\"'" and value[-1] == value[0]:
        return value[1:-1]
    return value


def _read_lines(path: Path, origin: str) -> list[_Line]:
    try:
        data = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DatafileError(origin, 1, f"not UTF-8 text: {exc}") from None
    except OSError as exc:
        raise DatafileError(origin, 1, f"cannot read: {exc.strerror or exc}") from None
    return [
        _Line(origin, number, text.rstrip("\r"))
        for number, text in enumerate(data.split("\n"), 1)
    ]


def _include(command: _Command, path: Path, root: Path, depth: int) -> list[_Line]:
    if depth >= _MAX_INCLUDE_DEPTH:
        raise DatafileError(command.origin, command.line, "INCLUDE nested too deeply")
    try:
        words = shlex.split(command.raw)
    except ValueError as exc:
        raise DatafileError(command.origin, command.line, f"INCLUDE: {exc}") from None
    if not words:
        raise DatafileError(command.origin, command.line, "INCLUDE needs a file name")
    variables: dict[str, str] = {}
    for word in words[1:]:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise DatafileError(
                command.origin, command.line, f"INCLUDE argument {word!r} is not k=v"
            )
        variables[key] = value
    root_resolved = root.resolve()
    target: Path | None = None
    for base in (path.parent, root):
        candidate = (base / words[0]).resolve()
        if candidate.is_file():
            target = candidate
            break
    if target is None:
        raise DatafileError(command.origin, command.line, f"INCLUDE file {words[0]!r} not found")
    if not target.is_relative_to(root_resolved):
        raise DatafileError(
            command.origin, command.line, f"INCLUDE file {words[0]!r} is outside the project"
        )
    lines = _read_lines(target, str(target))
    # Only the INCLUDE's own k=v arguments are substituted, never the environment.
    return [
        _Line(line.origin, line.number, string.Template(line.text).safe_substitute(variables))
        for line in lines
    ]


def _commands(path: Path, origin: str, root: Path) -> list[_Command]:
    lines = _read_lines(path, origin)
    commands: list[_Command] = []
    index = 0
    depth_of: list[int] = [0] * len(lines)
    while index < len(lines):
        line = lines[index]
        stripped = line.text.strip()
        if not stripped or stripped.startswith("#"):
            index += 1
            continue
        if line.text[0].isspace():
            raise DatafileError(line.origin, line.number, f"unexpected indented line: {stripped!r}")
        words = stripped.split(None, 1)
        keyword = words[0].upper()
        rest = words[1].strip() if len(words) > 1 else ""
        if rest == ">":
            block: list[_Line] = []
            index += 1
            # SQL may have unindented lines (Tinybird only ends a block at a keyword);
            # other blocks also end at an upper-case word, so a typo reads as a keyword.
            sql_block = keyword in ("SQL", "FORWARD_QUERY")
            while index < len(lines):
                text = lines[index].text
                if text and not text[0].isspace() and not text.startswith("#"):
                    first = text.split(None, 1)[0]
                    if _is_keyword(first) or (
                        not sql_block and re.fullmatch(r"[A-Z][A-Z0-9_]*", first)
                    ):
                        break
                if not text.strip().startswith("#"):
                    block.append(lines[index])
                index += 1
            while block and not block[-1].text.strip():
                block.pop()
            while block and not block[0].text.strip():
                block.pop(0)
            value = textwrap.dedent("\n".join(entry.text for entry in block))
            commands.append(
                _Command(keyword, value, "", True, line.origin, line.number,
                         [entry.number for entry in block] or [line.number])
            )
            continue
        command = _Command(keyword, _unquote(rest), rest, False, line.origin, line.number, [])
        if keyword == "INCLUDE":
            depth = depth_of[index]
            spliced = _include(command, path, root, depth)
            lines[index + 1 : index + 1] = spliced
            depth_of[index + 1 : index + 1] = [depth + 1] * len(spliced)
            index += 1
            continue
        commands.append(command)
        index += 1
    return commands


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _resource_name(path: Path, origin: str) -> str:
    name = path.stem
    if not _NAME.fullmatch(name):
        raise DatafileError(
            origin, 1, f"name {name!r} must be letters, digits and '_', not starting with a digit"
        )
    return name


def _versioned(name: str, command: _Command) -> str:
    if not re.fullmatch(r"\d+", command.value.strip()):
        raise DatafileError(command.origin, command.line, "VERSION must be a whole number")
    return f"{name}__v{int(command.value)}"


def _token(command: _Command, scopes: tuple[str, ...]) -> tuple[str, str]:
    try:
        words = shlex.split(command.raw)
    except ValueError as exc:
        raise DatafileError(command.origin, command.line, f"TOKEN: {exc}") from None
    if not words or len(words) > 2 or not words[0]:
        raise DatafileError(command.origin, command.line, 'TOKEN must be: TOKEN "name" SCOPE')
    scope = words[1].upper() if len(words) == 2 else "READ"
    if scope not in scopes:
        raise DatafileError(
            command.origin, command.line,
            f"TOKEN scope must be {' or '.join(scopes)}, not {words[1]!r}",
        )
    return (words[0], scope)


def _unsupported(command: _Command, valid: frozenset[str]) -> DatafileError:
    keyword = command.keyword
    if keyword == "SETTINGS":
        reason = "SETTINGS is not a datafile keyword (use ENGINE_SETTINGS)"
    elif keyword.startswith(("KAFKA_", "IMPORT_")):
        reason = f"{keyword}: connectors are not supported"
    elif keyword.startswith("EXPORT_"):
        reason = f"{keyword}: sinks are not supported"
    elif keyword.startswith("ENGINE") and "ENGINE" not in valid:
        reason = f"{keyword} in a pipe is not supported; define the target in a .datasource file"
    else:
        reason = f"unknown keyword {keyword}"
    return DatafileError(command.origin, command.line, reason)


def parse_datasource(path: str | Path, root: str | Path | None = None) -> DataSource:
    """Parse one ``.datasource`` file; its name is the file name without extension.

    :param root: the project directory ``INCLUDE`` may read from (default: the file's
        directory).
    """
    path = Path(path)
    origin = str(path)
    name = _resource_name(path, origin)
    root_path = Path(root) if root is not None else path.parent
    description = ""
    schema: _Command | None = None
    indexes_command: _Command | None = None
    engine_name: str | None = None
    engine_line = 1
    options: dict[str, str] = {}
    tokens: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for command in _commands(path, origin, root_path):
        keyword = command.keyword
        if keyword not in _DATASOURCE_KEYWORDS:
            raise _unsupported(command, _DATASOURCE_KEYWORDS)
        if keyword not in ("TOKEN", "TAGS") and keyword in seen:
            raise DatafileError(
                command.origin, command.line,
                f"{keyword} given twice (first at line {seen[keyword]})",
            )
        seen[keyword] = command.line
        if keyword == "DESCRIPTION":
            description = command.value.strip()
        elif keyword == "SCHEMA":
            schema = command
        elif keyword == "INDEXES":
            indexes_command = command
        elif keyword == "ENGINE":
            engine_name = command.value.strip()
            engine_line = command.line
        elif keyword.startswith("ENGINE_"):
            options[keyword[len("ENGINE_"):].lower()] = command.value
        elif keyword == "TOKEN":
            token = _token(command, ("READ", "APPEND"))
            if token not in tokens:
                tokens.append(token)
        elif keyword == "VERSION":
            name = _versioned(name, command)
        # TAGS, SHARED_WITH, FORWARD_QUERY: nothing to do for a self-hosted gateway.
    if schema is None:
        raise DatafileError(origin, 1, "no SCHEMA")
    columns, indexes = _parse_schema_block(
        schema.value, schema.origin, schema.block_lines or [schema.line]
    )
    if indexes_command is not None:
        indexes += _parse_indexes_block(
            indexes_command.value, indexes_command.origin, indexes_command.block_lines
        )
    try:
        engine = build_engine(engine_name, options, [column.name for column in columns])
    except ValueError as exc:
        line = engine_line
        for key in options:
            if f"engine_{key}" in str(exc):
                line = seen.get("ENGINE_" + key.upper(), line)
        raise DatafileError(origin, line, str(exc)) from None
    return DataSource(name, description, columns, engine, indexes, tuple(tokens), str(path))


@dataclass(slots=True)
class _NodeDraft:
    name: str
    line: int
    sql: str | None = None
    type: str = "standard"
    datasource: str | None = None
    datasource_line: int = 0
    description: str = ""
    copy_schedule: str | None = None
    copy_mode: str | None = None
    seen: dict[str, int] = field(default_factory=dict)


def _parse_pipe(path: Path, root: Path) -> tuple[Pipe, dict[str, int]]:
    origin = str(path)
    name = _resource_name(path, origin)
    description = ""
    tokens: list[tuple[str, str]] = []
    nodes: list[_NodeDraft] = []
    seen: dict[str, int] = {}
    limits: dict[str, float] = {}
    for command in _commands(path, origin, root):
        keyword = command.keyword
        if keyword not in _PIPE_KEYWORDS:
            raise _unsupported(command, _PIPE_KEYWORDS)

        def fail(reason: str) -> DatafileError:
            return DatafileError(command.origin, command.line, reason)

        if keyword == "NODE":
            node_name = command.value.strip()
            if not _NAME.fullmatch(node_name):
                raise fail(f"invalid node name {node_name!r}")
            if any(node.name == node_name for node in nodes):
                raise fail(f"duplicate node {node_name!r}")
            nodes.append(_NodeDraft(node_name, command.line))
            continue
        if keyword == "TOKEN":
            token = _token(command, ("READ",))
            if token not in tokens:
                tokens.append(token)
            continue
        if keyword == "TAGS":
            continue
        if keyword in _PIPE_HEAD_KEYWORDS and not nodes:
            if keyword in seen:
                raise fail(f"{keyword} given twice (first at line {seen[keyword]})")
            seen[keyword] = command.line
            if keyword == "DESCRIPTION":
                description = command.value.strip()
            elif keyword == "VERSION":
                name = _versioned(name, command)
            else:
                limits[keyword] = _query_limit(command)
            continue
        if not nodes:
            raise fail(f"{keyword} must follow a NODE")
        node = nodes[-1]
        if keyword in node.seen:
            first = node.seen[keyword]
            raise fail(f"{keyword} given twice in node {node.name!r} (first at line {first})")
        node.seen[keyword] = command.line
        value = command.value.strip()
        if keyword == "SQL":
            if not value:
                raise fail(f"node {node.name!r} has empty SQL")
            node.sql = value
        elif keyword == "DESCRIPTION":
            node.description = value
        elif keyword == "TYPE":
            node_type = value.lower()
            if node_type not in NODE_TYPES:
                raise fail(f"TYPE must be one of {', '.join(NODE_TYPES)}, not {value!r}")
            node.type = node_type
        elif keyword in ("DATASOURCE", "TARGET_DATASOURCE"):
            if not _NAME.fullmatch(value):
                raise fail(f"invalid data source name {value!r}")
            if node.datasource is not None:
                raise fail(f"node {node.name!r} has both DATASOURCE and TARGET_DATASOURCE")
            node.datasource = value
            node.datasource_line = command.line
        elif keyword == "COPY_SCHEDULE":
            node.copy_schedule = value
        elif keyword == "COPY_MODE":
            if value.lower() not in ("append", "replace"):
                raise fail(f"COPY_MODE must be append or replace, not {value!r}")
            node.copy_mode = value.lower()
        else:  # VERSION, QUERY_* after a NODE
            raise fail(f"{keyword} must come before the first NODE")
    if not nodes:
        raise DatafileError(origin, 1, "the pipe has no NODE")
    built: list[Node] = []
    datasource_lines: dict[str, int] = {}
    for node in nodes:
        if node.sql is None:
            raise DatafileError(origin, node.line, f"node {node.name!r} has no SQL")
        if node.type in ("materialized", "copy") and node.datasource is None:
            keyword = "DATASOURCE" if node.type == "materialized" else "TARGET_DATASOURCE"
            raise DatafileError(
                origin, node.line, f"{node.type} node {node.name!r} needs {keyword}"
            )
        if node.datasource is not None:
            datasource_lines[node.name] = node.datasource_line
        built.append(
            Node(node.name, node.sql, node.type, node.datasource, node.description,
                 node.copy_schedule, node.copy_mode)
        )
    endpoints = [node.name for node in built if node.type == "endpoint"]
    if len(endpoints) > 1:
        raise DatafileError(origin, 1, f"more than one endpoint node: {', '.join(endpoints)}")
    max_rows = limits.get("QUERY_MAX_ROWS")
    return Pipe(name, description, tuple(built), tuple(tokens), str(path),
                query_max_rows=int(max_rows) if max_rows is not None else None,
                query_timeout=limits.get("QUERY_TIMEOUT")), datasource_lines


def _query_limit(command: _Command) -> float:
    """``QUERY_MAX_ROWS n`` (a whole number) or ``QUERY_TIMEOUT seconds``, above 0."""
    value = command.value.strip()
    pattern = r"[0-9]+" if command.keyword == "QUERY_MAX_ROWS" else r"[0-9]+(\.[0-9]*)?"
    if not re.fullmatch(pattern, value) or float(value) <= 0:
        what = "a whole number of rows" if command.keyword == "QUERY_MAX_ROWS" \
            else "a number of seconds"
        raise DatafileError(command.origin, command.line,
                            f"{command.keyword} must be {what} above 0, not {value!r}")
    return float(value)


def parse_pipe(path: str | Path, root: str | Path | None = None) -> Pipe:
    """Parse one ``.pipe`` file; its name is the file name without extension.

    :param root: the project directory ``INCLUDE`` may read from (default: the file's
        directory).
    """
    path = Path(path)
    return _parse_pipe(path, Path(root) if root is not None else path.parent)[0]


def load_project(directory: str | Path) -> Project:
    """Load ``datasources/*.datasource`` and ``pipes/*.pipe`` under ``directory``.

    Names must be unique across data sources and pipes, and every materialized or copy
    node must target a data source of the project.

    :raises DatafileError: on the first problem found (files are read in name order).
    """
    root = Path(directory)
    if not root.is_dir():
        raise DatafileError(str(root), 0, "not a directory")
    datasources: dict[str, DataSource] = {}
    pipes: dict[str, Pipe] = {}
    targets: list[tuple[Pipe, Node, int]] = []
    for path in sorted((root / "datasources").glob("*.datasource")):
        datasource = parse_datasource(path, root)
        if datasource.name in datasources:
            raise DatafileError(str(path), 1, f"data source {datasource.name!r} defined twice")
        datasources[datasource.name] = datasource
    for path in sorted((root / "pipes").glob("*.pipe")):
        pipe, lines = _parse_pipe(path, root)
        if pipe.name in pipes or pipe.name in datasources:
            raise DatafileError(str(path), 1, f"name {pipe.name!r} is already used")
        pipes[pipe.name] = pipe
        for node in pipe.nodes:
            if node.name in lines:
                targets.append((pipe, node, lines[node.name]))
    for pipe, node, line in targets:
        if node.datasource not in datasources:
            raise DatafileError(
                pipe.path or pipe.name, line,
                f"node {node.name!r} targets unknown data source {node.datasource!r}",
            )
    return Project(datasources, pipes)


# ---------------------------------------------------------------------------
# Example project


def write_example_project(directory: str | Path) -> list[Path]:
    """Copy the example project (``tinyingest/example``) into ``directory``.

    Refuses to overwrite: if any of the files exists, nothing is written.

    :returns: the files written.
    :raises FileExistsError: naming the first file that is already there.
    """
    target = Path(directory)
    source = resources.files("tinyingest").joinpath("example")
    files: list[tuple[str, bytes]] = []

    def walk(node: Traversable, prefix: str) -> None:
        for child in sorted(node.iterdir(), key=lambda entry: entry.name):
            if child.name.startswith((".", "__")):
                continue
            relative = f"{prefix}{child.name}"
            if child.is_dir():
                walk(child, relative + "/")
            else:
                files.append((relative, child.read_bytes()))

    walk(source, "")
    for relative, _ in files:
        if (target / relative).exists():
            raise FileExistsError(f"{target / relative} already exists; not overwriting")
    written: list[Path] = []
    for relative, data in files:
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        with open(destination, "xb") as handle:
            handle.write(data)
        written.append(destination)
    return written
