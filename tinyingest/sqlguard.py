"""Every query a caller writes is read by ClickHouse's own parser before it is run.

A text check of SQL reads what it expects, not what ClickHouse reads: ``#`` comments,
``$$`` strings, nested comments and ``in(x, table)`` all slipped past the tokenizer of
:mod:`tinyingest.pipes` (issue 18). So a query from a caller (``/v0/sql``, the ``q``
option, a pipe node once its template is rendered) goes through chDB's parser first:

1. ``formatQuerySingleLine``: exactly one statement, and its normalized text: no
   comments, every string single-quoted with escapes, identifiers quoted only where
   needed. This text, never the original, is what is sent to the engine.
2. ``EXPLAIN AST`` of that text: a SELECT (no ``INTO OUTFILE``, ``FORMAT`` or
   ``SETTINGS``), no table function beyond :data:`TABLE_FUNCTIONS`, no function of
   :data:`DENIED_FUNCTIONS`, and the tables it reads (``FROM``, ``JOIN``, ``IN t``).

The pipe compiler then resolves node and pipe names in the normalized text and checks
the tables against the caller's rights; it must find exactly the tables the parser
found, or the query is refused (:meth:`CheckedSQL.agrees_with`).

Below this check the engine enforces its own limits on every query connection
(``readonly=1``): the check is not the only wall.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["DENIED_FUNCTIONS", "TABLE_FUNCTIONS", "CheckedSQL", "SQLGuard", "SQLRefused"]

#: Table functions that read no file, URL, server or table: generators only.
TABLE_FUNCTIONS = frozenset({"numbers", "numbers_mt", "zeros", "zeros_mt", "values",
                             "generate_series", "generateSeries"})

#: Functions that read files, tables or dictionaries behind the table checks, sleep on
#: the engine's threads, or show the server's internals. Lower case; names starting with
#: ``dict`` (dictGet, dictHas, ...) and ``joinGet`` are refused too.
DENIED_FUNCTIONS = frozenset({
    "file", "hascolumnintable", "sleep", "sleepeachrow", "globalvariable",
    "catboostevaluate", "modelevaluate", "getmacro", "showcertificate",
    "addresstoline", "addresstolinewithinlines", "addresstosymbol", "demangle",
    "getclienthttpheader", "gethttpheader", "generateserialid", "reversednsquery",
    "filesystemavailable", "filesystemfree", "filesystemcapacity", "filesystemunreserved",
    "getserversetting", "getmergetreesetting",
})
_DENIED_PREFIXES = ("dict", "joinget", "__")

#: Functions whose second argument, a bare name, is a table: ``x IN t``.
_IN_FUNCTIONS = frozenset({"in", "notIn", "globalIn", "globalNotIn", "nullIn", "notNullIn",
                           "globalNullIn", "globalNotNullIn"})

# "<indent><Kind>[ <name>][ (alias <alias>)][ (children <n>)]", one node per line.
_LINE = re.compile(r"( *)([A-Za-z_]+)(?: (.*?))??(?: \(children ([0-9]+)\))?")
_ALIAS = re.compile(r"^(.*) \(alias .*\)$")
_CODE = re.compile(r"^Code: ([0-9]+)\. DB::Exception: ")
_SCOPE = re.compile(r"(: )?In scope SELECT formatQuerySingleLine\(.*", re.S)
_SUFFIX = re.compile(r"\s*\([A-Z_]+\)\s*$")

#: Longest query the parser reads (ClickHouse's own max_query_size is 256 KiB).
MAX_QUERY_BYTES = 1 << 20
_CACHE_SIZE = 4096
#: The parsing connection's session: it can run nothing that changes anything.
SETTINGS: dict[str, object] = {"readonly": 1, "max_query_size": 2 * MAX_QUERY_BYTES}


class SQLRefused(ValueError):
    """The parser refused the query or the query does what callers may not (400)."""

    status = 400


@dataclass(frozen=True, slots=True)
class CheckedSQL:
    """A query ClickHouse's parser has read.

    :ivar sql: its normalized text (one line, no comments): what is sent.
    :ivar tables: the tables it reads, as written (``db.t`` when qualified), with
        repetitions, sorted.
    :ivar table_functions: the table functions it calls, sorted.
    """

    sql: str
    tables: tuple[str, ...]
    table_functions: tuple[str, ...]

    def agrees_with(self, tables: Iterable[str], table_functions: Iterable[str]) -> bool:
        """Whether another reading of :attr:`sql` found the same tables and functions."""
        return (tuple(sorted(tables)) == self.tables
                and tuple(sorted(table_functions)) == self.table_functions)


@dataclass(slots=True)
class _Node:
    kind: str
    name: str
    children: list[_Node]


class SQLGuard:
    """ClickHouse's parser (chDB) as a checker of caller SQL; see the module docs.

    :param connect: opens the chDB connection to parse with, on first use: one on the
        embedded engine's own data directory (chDB hosts one engine per process), or an
        in-memory one in front of a ClickHouse server.
    """

    def __init__(self, connect: Callable[[], Any] | None = None) -> None:
        self._connect = connect or _memory_connection
        self._connection: Any = None
        self._lock = threading.Lock()
        # Endpoints are called with the same parameters again and again; bounded, as
        # its keys are caller text.
        self.check = functools.lru_cache(maxsize=_CACHE_SIZE)(self._check)

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None
        self.check.cache_clear()

    def _check(self, sql: str) -> CheckedSQL:
        """Parse ``sql``; :raises SQLRefused: not one valid SELECT a caller may run."""
        if len(sql.encode("utf-8", "surrogatepass")) > MAX_QUERY_BYTES:
            raise SQLRefused(f"the query is longer than {MAX_QUERY_BYTES} bytes")
        normalized = self._run(f"SELECT formatQuerySingleLine({_string_literal(sql)})")
        normalized = normalized.rstrip("\n")
        tree = _parse_tree(self._run("EXPLAIN AST " + normalized))
        if tree.kind != "SelectWithUnionQuery":
            raise SQLRefused("only SELECT queries are allowed")
        for child in tree.children[1:]:
            raise SQLRefused(_TOP_LEVEL_REFUSALS.get(child.kind, "only SELECT queries are "
                                                     "allowed"))
        tables: list[str] = []
        functions: list[str] = []
        _walk(tree, tables, functions)
        return CheckedSQL(normalized, tuple(sorted(tables)), tuple(sorted(functions)))

    def _run(self, query: str) -> str:
        with self._lock:
            if self._connection is None:
                self._connection = self._connect()
            try:
                return str(self._connection.query(query, "TSVRaw").bytes().decode())
            except Exception as exc:
                text = str(exc)
                # readonly=1 on this connection: only a SETTINGS clause gets there.
                if text.startswith("Code: 164."):
                    raise SQLRefused(_TOP_LEVEL_REFUSALS["Set"]) from exc
                raise SQLRefused(_parser_message(text)) from exc


_TOP_LEVEL_REFUSALS = {
    "Literal": "INTO OUTFILE is not allowed",
    "Identifier": "FORMAT is not allowed here: use the format option or the extension",
    "Set": "SETTINGS is not allowed in a query",
}


def _memory_connection() -> Any:
    try:
        import chdb
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise SQLRefused("queries need chDB to be checked: pip install chdb-core") from exc
    return chdb.connect(":memory:?" + "&".join(f"{k}={v}" for k, v in SETTINGS.items()))


def _string_literal(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("'", "\\'").replace("\0", "\\0")
    return "'" + escaped + "'"


def _parser_message(text: str) -> str:
    """ClickHouse's words about the caller's query, without the wrapper query."""
    match = _CODE.match(text)
    message = text[match.end():] if match else text
    message = _SCOPE.sub("", message)
    message = _SUFFIX.sub("", message)
    return message.strip().rstrip(".") or "the query could not be parsed"


def _parse_tree(text: str) -> _Node:
    """The tree ``EXPLAIN AST`` prints; anything unexpected refuses the query."""
    lines = text.rstrip("\n").split("\n")
    stack: list[tuple[_Node, int]] = []  # (node, children still expected)
    root: _Node | None = None
    for line in lines:
        match = _LINE.fullmatch(line)
        if match is None:
            raise SQLRefused("the query could not be checked")
        indent, kind, name, count = match.groups()
        node = _Node(kind, _ALIAS.sub(r"\1", name or ""), [])
        if root is None:
            if indent:
                raise SQLRefused("the query could not be checked")
            root = node
        else:
            while stack and stack[-1][1] == 0:
                stack.pop()
            if not stack or len(indent) != len(stack):
                raise SQLRefused("the query could not be checked")
            parent, expected = stack[-1]
            parent.children.append(node)
            stack[-1] = (parent, expected - 1)
        stack.append((node, int(count or 0)))
    if root is None or any(expected for _, expected in stack):
        raise SQLRefused("the query could not be checked")
    return root


def _walk(node: _Node, tables: list[str], functions: list[str]) -> None:
    if node.kind == "TableExpression" and node.children:
        source = node.children[0]
        if source.kind == "TableIdentifier":
            tables.append(source.name)
        elif source.kind == "Function":
            if source.name not in TABLE_FUNCTIONS:
                raise SQLRefused(f"table functions are not allowed: {source.name}()")
            functions.append(source.name)
            for child in source.children:
                _walk(child, tables, functions)
            for child in node.children[1:]:
                _walk(child, tables, functions)
            return
    elif node.kind == "Function":
        lower = node.name.lower()
        if lower in DENIED_FUNCTIONS or lower.startswith(_DENIED_PREFIXES):
            raise SQLRefused(f"function {node.name}() is not allowed")
        if node.name in _IN_FUNCTIONS and node.children:
            arguments = node.children[0].children
            if len(arguments) == 2 and arguments[1].kind == "Identifier":
                tables.append(arguments[1].name)
    elif node.kind == "Set":
        raise SQLRefused(_TOP_LEVEL_REFUSALS["Set"])
    for child in node.children:
        _walk(child, tables, functions)

