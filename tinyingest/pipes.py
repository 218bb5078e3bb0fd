"""Compile a pipe and request parameters into one SELECT (api.md sections 4.1 and 6.2).

Each node's SQL is rendered by :mod:`tinyingest.template` (when it starts with ``%``),
then nodes are chained: a node may read ``FROM`` / ``JOIN`` / ``IN`` another node of the
same pipe, by name. ClickHouse 18.16 has no ``WITH name AS (subquery)``, so a reference
is replaced by the other node's compiled SQL as a subquery::

    FROM filtered            ->  FROM (\\n<filtered's SQL>\\n) AS `filtered`
    FROM filtered AS f       ->  FROM (\\n<filtered's SQL>\\n) AS f
    WHERE x IN filtered      ->  WHERE x IN (\\n<filtered's SQL>\\n)

References are found by a small SQL tokenizer that skips string literals, comments and
function arguments (``extract(DAY FROM ts)`` is not a table reference); only the names
right after ``FROM`` / ``JOIN`` (not ``ARRAY JOIN``) at a query level, and after ``IN``,
count. ``table(name)`` in a template reaches nodes the same way.

With ``allowed_tables``, every other table reference must be one of those names (the
token's readable data sources); database-qualified names (``system.users``) and table
functions (``numbers(10)``, ``url(...)``) are refused. This is defence in depth only:
endpoint queries must still run as a ``readonly=1`` user that can read nothing else.
The tables of a comma join (``FROM a, b``) count as references too; names used outside
``FROM``/``JOIN``/``IN`` (e.g. ``dictGet``, ``joinGet``) are not checked.

Also per call (:func:`compile_node`): ``columns`` limits what ``column()``,
``columns()`` and ``symbol()`` may name to the columns of the tables a node may read
(E3); ``row_filters`` replaces the caller's own reads of a data source by
``(SELECT ... WHERE (<filter>))`` (JWT filters); ``fixed_params`` override the request's
parameters inside a published pipe (JWT fixed params, E7).

A compiled node may not contain ``;`` (a trailing one is dropped), ``FORMAT`` or
``INTO OUTFILE`` at its top level: the HTTP handler adds ``FORMAT`` itself.

Request options that clients add (api.md 0.4) are never template parameters
(:func:`template_params`).

>>> from tinyingest.datafiles import QUARANTINE_COLUMNS, DataSource, Node, Pipe
>>> pipe = Pipe("top", "", (
...     Node("filtered", "% SELECT a FROM events WHERE a > {{Int32(min, 0)}}"),
...     Node("endpoint", "% SELECT a FROM filtered LIMIT {{Int32(limit, 10)}}", "endpoint")))
>>> print(compile_endpoint(pipe, {"min": "5", "token": "x"}, {"events"}).sql)
 SELECT a FROM (
 SELECT a FROM events WHERE a > 5
) AS `filtered` LIMIT 10
"""

from __future__ import annotations

import functools
import re
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from tinyingest.datafiles import QUARANTINE_COLUMNS, DataSource, Node, Pipe
from tinyingest.sqlguard import SQLGuard, SQLRefused
from tinyingest.template import (
    Param,
    ParamValue,
    TemplateError,
    compile_template,
    is_template,
    render_sql,
    sql_identifier,
)

__all__ = [
    "RESERVED_PARAMS",
    "CompiledQuery",
    "PipeError",
    "apply_q",
    "check_pipe",
    "check_row_filter",
    "compile_endpoint",
    "compile_node",
    "datasource_columns",
    "is_reserved_param",
    "pipe_parameters",
    "table_references",
    "template_params",
]

#: Request options that are never template parameters (api.md 0.4, plus Tinybird's
#: ``RESERVED_PARAM_NAMES``). Names starting with ``__tb__`` or ``output_format_`` too.
RESERVED_PARAMS = frozenset({
    "token", "q", "format", "from", "cli_version", "debug", "release_replacements",
    "pipeline", "debug_source_tables", "explain", "finalize_aggregations", "playground",
    "query_id", "tag", "template_parameters", "job_timestamp",
})
_RESERVED_PREFIXES = ("__tb__", "output_format_")


class PipeError(TemplateError):
    """A pipe cannot be compiled: unknown node or table, circular reference, a node with
    ``FORMAT`` or several statements. ``status`` is 400 (404 for a missing endpoint)."""


def is_reserved_param(name: str) -> bool:
    """True for request options such as ``token``, ``q``, ``__tb__semver``."""
    return name in RESERVED_PARAMS or name.startswith(_RESERVED_PREFIXES)


def template_params(params: Mapping[str, ParamValue]) -> dict[str, ParamValue]:
    """``params`` without the reserved request options."""
    return {name: value for name, value in params.items() if not is_reserved_param(name)}


@dataclass(frozen=True, slots=True)
class CompiledQuery:
    """One SELECT ready to run.

    :ivar sql: the SQL, without ``FORMAT``.
    :ivar settings: ClickHouse settings asked for by templates (``max_threads``): pass
        them with the query.
    :ivar hints: other template hints (``cache_ttl`` ...).
    :ivar node: the compiled node's name.
    :ivar nodes: the nodes inlined into ``sql`` (dependencies first, then ``node``).
    :ivar tables: the other tables it reads (data sources), sorted.
    """

    sql: str
    settings: dict[str, Any]
    hints: dict[str, str]
    node: str
    nodes: tuple[str, ...]
    tables: tuple[str, ...]


# ---------------------------------------------------------------------------
# SQL tokenizer

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_NUMBER = re.compile(r"[0-9][0-9A-Za-z_.]*")
_SPACE = re.compile(r"\s+")

# Words that may follow a table reference and are not an alias.
_NOT_ALIAS = frozenset("""
    WHERE PREWHERE GROUP ORDER LIMIT OFFSET HAVING FINAL SAMPLE JOIN LEFT RIGHT INNER
    FULL CROSS OUTER ANY ALL ASOF SEMI ANTI ARRAY GLOBAL ON USING UNION SETTINGS FORMAT
    INTO WITH WINDOW QUALIFY EXCEPT INTERSECT PASTE AND OR NOT LIKE IN IS BETWEEN AS
    """.split())


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "word" | "quoted" | "string" | "number" | "punct" | "space" | "comment"
    text: str
    start: int
    end: int

    @property
    def upper(self) -> str:
        return self.text.upper() if self.kind == "word" else ""

    @property
    def identifier(self) -> str | None:
        """The name, for a bare or backquoted / double-quoted identifier."""
        if self.kind == "word":
            return self.text
        if self.kind == "quoted":
            return _unquote(self.text)
        return None


def _unquote(text: str) -> str:
    quote = text[0]
    body = text[1:-1] if len(text) >= 2 and text[-1] == quote else text[1:]
    out: list[str] = []
    pos = 0
    escapes = {"0": "\0", "n": "\n", "r": "\r", "t": "\t", "b": "\b"}
    while pos < len(body):
        ch = body[pos]
        if ch == "\\" and pos + 1 < len(body):
            out.append(escapes.get(body[pos + 1], body[pos + 1]))
            pos += 2
        elif ch == quote and body[pos + 1:pos + 2] == quote:
            out.append(quote)
            pos += 2
        else:
            out.append(ch)
            pos += 1
    return "".join(out)


def _skip_quoted(sql: str, pos: int) -> int:
    quote = sql[pos]
    pos += 1
    while pos < len(sql):
        ch = sql[pos]
        if ch == "\\":
            pos += 2
            continue
        if ch == quote:
            if sql[pos + 1:pos + 2] == quote:
                pos += 2
                continue
            return pos + 1
        pos += 1
    return len(sql)


def _tokens(sql: str) -> Iterator[_Token]:
    pos = 0
    n = len(sql)
    while pos < n:
        ch = sql[pos]
        if ch in "'\"`":
            end = _skip_quoted(sql, pos)
            yield _Token("string" if ch == "'" else "quoted", sql[pos:end], pos, end)
            pos = end
            continue
        if sql.startswith("--", pos):
            end = sql.find("\n", pos)
            end = n if end == -1 else end
            yield _Token("comment", sql[pos:end], pos, end)
            pos = end
            continue
        if sql.startswith("/*", pos):
            end = sql.find("*/", pos + 2)
            end = n if end == -1 else end + 2
            yield _Token("comment", sql[pos:end], pos, end)
            pos = end
            continue
        for kind, pattern in (("space", _SPACE), ("word", _WORD), ("number", _NUMBER)):
            match = pattern.match(sql, pos)
            if match:
                yield _Token(kind, match.group(), pos, match.end())
                pos = match.end()
                break
        else:
            yield _Token("punct", ch, pos, pos + 1)
            pos += 1


#: Words that end the table list of a FROM (after which a comma is not a comma join).
_FROM_LIST_END = frozenset("""
    WHERE PREWHERE GROUP ORDER LIMIT OFFSET HAVING SETTINGS FORMAT UNION INTO WINDOW QUALIFY
    EXCEPT INTERSECT JOIN ARRAY ON USING SELECT
    """.split())


@dataclass(frozen=True, slots=True)
class _Reference:
    name: str  # "db.table" when qualified
    keyword: str  # FROM | JOIN | IN
    start: int
    end: int
    function: bool  # a table function: name(...)
    aliased: bool  # followed by AS x / an alias
    last: int  # index of its last token


@functools.lru_cache(maxsize=4096)
def _scan(sql: str) -> tuple[list[_Reference], list[tuple[str, int]]]:
    """Table references, and top-level problems (``;``, FORMAT, INTO OUTFILE).

    Cached: endpoints are called again and again with the same parameters, and this
    tokenizer is a good part of a request's cost. Callers must not change the lists.
    """
    tokens = [t for t in _tokens(sql) if t.kind not in ("space", "comment")]
    references: list[_Reference] = []
    problems: list[tuple[str, int]] = []
    levels: list[bool | None] = [True]  # per open paren: is it a query (SELECT ...)?
    from_lists = [False]  # per open paren: between FROM and the end of its table list
    for index, token in enumerate(tokens):
        if levels[-1] is None:
            levels[-1] = token.upper in ("SELECT", "WITH")
        if token.text == "(" and token.kind == "punct":
            levels.append(None)
            from_lists.append(False)
            continue
        if token.text == ")" and token.kind == "punct":
            if len(levels) > 1:
                levels.pop()
                from_lists.pop()
            continue
        if token.upper in _FROM_LIST_END:
            from_lists[-1] = False
        elif token.upper == "FROM" and levels[-1]:
            from_lists[-1] = True
        elif from_lists[-1] and token.kind == "punct" and token.text == ",":
            # FROM a, b: a comma join reads b too.
            ref = _reference_at(tokens, index + 1, "FROM")
            if ref is not None:
                references.append(ref)
            continue
        if len(levels) == 1:
            if token.text == ";" and token.kind == "punct":
                problems.append(("multiple statements (';') are not allowed", token.start))
            elif token.upper == "FORMAT":
                problems.append(("FORMAT is not allowed in a pipe node", token.start))
            elif token.upper == "OUTFILE":
                problems.append(("INTO OUTFILE is not allowed in a pipe node", token.start))
        keyword = token.upper
        if keyword not in ("FROM", "JOIN", "IN"):
            continue
        if keyword in ("FROM", "JOIN") and not levels[-1]:
            continue  # extract(DAY FROM ts), trim(BOTH ' ' FROM s)
        if keyword == "JOIN" and index > 0 and tokens[index - 1].upper == "ARRAY":
            continue
        ref = _reference_at(tokens, index + 1, keyword)
        if ref is not None:
            references.append(ref)
    return references, problems


def _reference_at(tokens: list[_Token], index: int, keyword: str) -> _Reference | None:
    n = len(tokens)
    if keyword == "IN" and index < n and tokens[index].text == "(" \
            and tokens[index].kind == "punct":
        # ``x IN (t)``, as ClickHouse's formatter writes ``x IN t``: the parentheses go
        # with the name, so a replacement subquery brings its own.
        inner = _reference_at(tokens, index + 1, "IN(")
        if inner is None or inner.function:
            return None
        close = tokens[inner.last + 1] if inner.last + 1 < n else None
        if close is None or close.kind != "punct" or close.text != ")":
            return None
        return _Reference(inner.name, "IN", tokens[index].start, close.end, False, False,
                          inner.last + 1)
    if index >= n or tokens[index].identifier is None:
        return None
    first = tokens[index]
    if keyword != "IN" and first.upper in ("SELECT", "WITH"):
        return None
    parts = [first.identifier or ""]
    last = index
    while last + 2 < n and tokens[last + 1].text == "." and tokens[last + 1].kind == "punct" \
            and tokens[last + 2].identifier is not None:
        parts.append(tokens[last + 2].identifier or "")
        last += 2
    after = tokens[last + 1] if last + 1 < n else None
    function = after is not None and after.kind == "punct" and after.text == "("
    if keyword.startswith("IN") and (function or first.kind == "word" and first.upper in (
            "SELECT", "WITH")):
        return None  # IN tuple(...) / IN (SELECT ...) handled as subqueries
    aliased = after is not None and (
        after.upper == "AS" or after.kind == "quoted"
        or (after.kind == "word" and after.upper not in _NOT_ALIAS)
    )
    return _Reference(".".join(parts), keyword, first.start, tokens[last].end, function,
                      aliased, last)


def table_references(sql: str) -> list[str]:
    """Names read with ``FROM`` / ``JOIN`` / ``IN`` in ``sql`` (rendered, not a template).

    >>> table_references("SELECT * FROM a JOIN db.b USING x WHERE y IN c AND "
    ...                  "extract(DAY FROM ts) = 1 AND z IN (SELECT 1 FROM d)")
    ['a', 'db.b', 'c', 'd']
    """
    return [ref.name for ref in _scan(sql)[0]]


# ---------------------------------------------------------------------------
# Compilation


class _Tables(Mapping[str, str]):
    """What ``table(name)`` may emit while compiling one node (looked up lazily)."""

    def __init__(self, compiler: _Compiler, pipe: Pipe, node: Node) -> None:
        self._compiler = compiler
        self._pipe = pipe
        self._node = node

    def __getitem__(self, name: str) -> str:
        other = self._pipe.node(name)
        if other is not None and other is not self._node:
            return self._compiler.subquery(self._pipe, other) + " AS " + sql_identifier(name)
        if self._compiler.allowed is not None and name in self._compiler.allowed:
            self._compiler.tables.add(name)
            filtered = self._compiler.filtered(self._pipe, name)
            if filtered is not None:
                return filtered + " AS " + sql_identifier(name)
            return sql_identifier(name)
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


@dataclass(slots=True)
class _Compiler:
    params: Mapping[str, ParamValue]
    allowed: Collection[str] | None
    pipes: Mapping[str, Pipe]
    test_mode: bool
    root: str = ""
    #: What the nodes of *other* published pipes may read (a pipe reads with its own
    #: rights, not the caller's); "same": ``allowed``.
    pipe_tables: Collection[str] | None | str = "same"
    #: Table -> its column names: ``column()``/``columns()``/``symbol()`` in a node accept
    #: the columns of the tables that node may read (None: no check).
    columns: Mapping[str, Collection[str]] | None = None
    #: Table -> row filter (SQL) for the caller's own reads (JWT ``DATASOURCES:READ``).
    filters: Mapping[str, str] = field(default_factory=dict)
    #: Pipe -> parameters that override the request's inside that pipe (JWT).
    fixed_params: Mapping[str, Mapping[str, ParamValue]] = field(default_factory=dict)
    #: ClickHouse's parser: reads each rendered node first (None: the tokenizer only,
    #: for tests of pure compilation; the gateway always passes one).
    guard: SQLGuard | None = None
    allowlists: dict[int, frozenset[str]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    hints: dict[str, str] = field(default_factory=dict)
    tables: set[str] = field(default_factory=set)
    order: list[str] = field(default_factory=list)
    done: dict[tuple[str, str], str] = field(default_factory=dict)
    stack: list[tuple[str, str]] = field(default_factory=list)

    def subquery(self, pipe: Pipe, node: Node) -> str:
        # Newlines: a trailing "-- comment" in the node must not swallow the ")".
        return "(\n" + self.node_sql(pipe, node) + "\n)"

    def node_sql(self, pipe: Pipe, node: Node) -> str:
        key = (pipe.name, node.name)
        if key in self.done:
            return self.done[key]
        if key in self.stack:
            chain = " -> ".join(f"{p}.{n}" for p, n in self.stack[self.stack.index(key):])
            raise PipeError(f"Circular reference between nodes: {chain} -> "
                            f"{pipe.name}.{node.name}")
        self.stack.append(key)
        try:
            rendered = render_sql(node.sql, self.params, tables=_Tables(self, pipe, node),
                                  test_mode=self.test_mode, columns=self.allowlist(pipe))
            for name, value in rendered.settings.items():
                self.settings[name] = value
            self.hints.update(rendered.hints)
            sql = self._resolve(pipe, node, rendered.sql)
        finally:
            self.stack.pop()
        self.done[key] = sql
        self.order.append(node.name if pipe.name == self.root else f"{pipe.name}.{node.name}")
        return sql

    def readable(self, pipe: Pipe) -> Collection[str] | None:
        """What the nodes of ``pipe`` may read (None: anything)."""
        if pipe.name != self.root and not isinstance(self.pipe_tables, str):
            return self.pipe_tables
        return self.allowed

    def allowlist(self, pipe: Pipe) -> frozenset[str] | None:
        """The identifiers ``column()`` & co may name in a node of ``pipe``."""
        if self.columns is None:
            return None
        readable = self.readable(pipe)
        key = id(readable)
        if key not in self.allowlists:
            self.allowlists[key] = frozenset(
                name for table, names in self.columns.items()
                if readable is None or table in readable for name in names)
        return self.allowlists[key]

    def filtered(self, pipe: Pipe, table: str) -> str | None:
        """The subquery standing for ``table`` when the caller reads it through a row
        filter (only the caller's own SQL: a published pipe reads with its own rights)."""
        row_filter = self.filters.get(table)
        if row_filter is None or pipe.name != self.root:
            return None
        names = (self.columns or {}).get(table)
        select = ", ".join(map(sql_identifier, names)) if names else "*"
        return (f"(\nSELECT {select} FROM {sql_identifier(table)} WHERE (\n{row_filter}\n)"
                "\n)")

    def _resolve(self, pipe: Pipe, node: Node, sql: str) -> str:
        checked = None
        if self.guard is not None:
            try:
                checked = self.guard.check(sql)
            except SQLRefused as exc:
                raise PipeError(f"Node '{node.name}': {exc}") from exc
            sql = checked.sql
        references, problems = _scan(sql)
        sql, problems = _strip_semicolon(sql, problems)
        if problems:
            raise PipeError(f"Node '{node.name}': {problems[0][0]}")
        # The names resolved below must be the tables ClickHouse reads, all of them.
        if checked is not None and not checked.agrees_with(
                [ref.name for ref in references if not ref.function],
                [ref.name for ref in references if ref.function]):
            raise PipeError(f"Node '{node.name}': the query could not be checked")
        out: list[str] = []
        pos = 0
        for ref in references:
            replacement = self._reference(pipe, node, ref)
            if replacement is None:
                continue
            out.append(sql[pos:ref.start])
            out.append(replacement)
            if ref.keyword != "IN" and not ref.aliased:
                out.append(" AS " + sql_identifier(ref.name))
            pos = ref.end
        out.append(sql[pos:])
        return "".join(out)

    def _reference(self, pipe: Pipe, node: Node, ref: _Reference) -> str | None:
        """The SQL replacing ``ref``, or None to keep it (a table)."""
        other = pipe.node(ref.name) if not ref.function else None
        if other is not None and other is not node:
            return self.subquery(pipe, other)
        published = self.pipes.get(ref.name) if not ref.function else None
        if published is not None and published.name != pipe.name:
            endpoint = published.endpoint
            if endpoint is None:
                raise PipeError(f"Pipe '{ref.name}' has no endpoint node")
            fixed = self.fixed_params.get(published.name)
            if not fixed:
                return self.subquery(published, endpoint)
            # Its fixed parameters win over the request's, in every node it reads.
            saved = self.params, self.done
            self.params = {**self.params, **template_params(fixed)}
            self.done = {}
            try:
                return self.subquery(published, endpoint)
            finally:
                self.params, self.done = saved
        allowed = self.readable(pipe)
        if allowed is not None:
            if ref.function:
                raise PipeError(f"Node '{node.name}': table functions are not allowed: "
                                f"{ref.name}()")
            if ref.name not in allowed:
                raise PipeError(f"Node '{node.name}': Resource '{ref.name}' not found")
        if not ref.function:
            self.tables.add(ref.name)
            return self.filtered(pipe, ref.name)
        return None


def _strip_semicolon(sql: str,
                     problems: list[tuple[str, int]]) -> tuple[str, list[tuple[str, int]]]:
    """Drop one trailing ``;`` (followed only by blanks or comments)."""
    for index, (message, offset) in enumerate(problems):
        if not message.startswith("multiple statements"):
            continue
        rest = [t for t in _tokens(sql[offset + 1:]) if t.kind not in ("space", "comment")]
        if not rest:
            return sql[:offset] + " " + sql[offset + 1:], problems[:index] + problems[index + 1:]
    return sql, problems


def compile_node(pipe: Pipe, node: str, params: Mapping[str, ParamValue],
                 allowed_tables: Collection[str] | None = None, *,
                 pipes: Mapping[str, Pipe] | None = None,
                 test_mode: bool = False,
                 pipe_tables: Collection[str] | None | str = "same",
                 columns: Mapping[str, Collection[str]] | None = None,
                 row_filters: Mapping[str, str] | None = None,
                 fixed_params: Mapping[str, Mapping[str, ParamValue]] | None = None,
                 guard: SQLGuard | None = None,
                 ) -> CompiledQuery:
    """Compile node ``node`` of ``pipe`` (and the nodes it reads) into one SELECT.

    :param params: request parameters; reserved options (:data:`RESERVED_PARAMS`) are
        dropped here.
    :param allowed_tables: the only other tables the SQL may read (and ``table()`` may
        name); None: no check.
    :param pipes: published pipes, by name, that nodes may read like tables (their
        endpoint node is inlined, with the same parameters).
    :param test_mode: render with placeholder values (see
        :meth:`tinyingest.template.Template.render`).
    :param pipe_tables: what the nodes of the published pipes in ``pipes`` may read
        (default: ``allowed_tables``): a caller allowed to read a pipe reads its data
        through it, not the tables directly.
    :param columns: table -> column names. When given, ``column()``, ``columns()`` and
        ``symbol()`` accept only the columns of the tables a node may read (and their
        defaults): anything else is a 400 ``invalid column ...`` (E3).
    :param row_filters: table -> SQL condition (checked with :func:`check_row_filter`):
        where ``pipe``'s own SQL reads that table it reads
        ``(SELECT <columns> FROM table WHERE (<filter>)) AS table`` instead.
    :param fixed_params: pipe -> parameters that override the request's wherever that
        published pipe is read (JWT ``fixed_params``, E7).
    :param guard: ClickHouse's parser (:mod:`tinyingest.sqlguard`): each rendered node
        is read by it first, and its normalized text is compiled (and run).
    :raises TemplateError: a parameter is missing or invalid (400), ``error()``...
    :raises PipeError: unknown node, table or circular reference.
    """
    target = pipe.node(node)
    if target is None:
        raise PipeError(f"Node '{node}' not found in pipe '{pipe.name}'", 404)
    compiler = _Compiler(template_params(params), allowed_tables, pipes or {}, test_mode,
                         pipe.name, pipe_tables, columns, row_filters or {},
                         fixed_params or {}, guard)
    sql = compiler.node_sql(pipe, target)
    return CompiledQuery(sql, compiler.settings, compiler.hints, target.name,
                         tuple(compiler.order), tuple(sorted(compiler.tables)))


def compile_endpoint(pipe: Pipe, params: Mapping[str, ParamValue],
                     allowed_tables: Collection[str] | None = None, *,
                     pipes: Mapping[str, Pipe] | None = None,
                     test_mode: bool = False,
                     columns: Mapping[str, Collection[str]] | None = None,
                     fixed_params: Mapping[str, Mapping[str, ParamValue]] | None = None,
                     guard: SQLGuard | None = None,
                     ) -> CompiledQuery:
    """Compile the pipe's endpoint node (:attr:`Pipe.endpoint`); see :func:`compile_node`.

    :param fixed_params: pipe -> parameters that override the request's: those of
        ``pipe`` in every node this compiles (the published pipes it reads included),
        those of another pipe wherever it is read (JWT ``fixed_params``, E7).
    :raises PipeError: (404) the pipe has no endpoint node.
    """
    endpoint = pipe.endpoint
    if endpoint is None:
        raise PipeError(f"The pipe '{pipe.name}' does not have an endpoint yet", 404)
    fixed = (fixed_params or {}).get(pipe.name)
    if fixed:
        params = {**template_params(params), **template_params(fixed)}
    return compile_node(pipe, endpoint.name, params, allowed_tables, pipes=pipes,
                        test_mode=test_mode, columns=columns, fixed_params=fixed_params,
                        guard=guard)


def apply_q(q: str, compiled: CompiledQuery,
            allowed_tables: Collection[str] | None = None, *,
            row_filters: Mapping[str, str] | None = None,
            columns: Mapping[str, Collection[str]] | None = None,
            guard: SQLGuard | None = None) -> str:
    """The ``q`` request option: SQL over the endpoint result, ``_`` standing for it.

    ``q`` is user SQL: every other table it reads must be in ``allowed_tables`` (when
    given), through ``row_filters``; it may not contain ``;`` or ``FORMAT`` (the handler
    adds it). ``_`` itself reads with the pipe's rights (it was compiled already).

    >>> apply_q("SELECT * FROM _ LIMIT 5", CompiledQuery("SELECT 1 AS x", {}, {}, "e", (), ()))
    'SELECT * FROM (\\nSELECT 1 AS x\\n) AS `_` LIMIT 5'
    """
    # compiled.sql is already rendered: no template marker, so it is not re-rendered.
    if is_template(compiled.sql):
        raise PipeError("cannot apply q to a template")
    if is_template(q):
        raise PipeError("q cannot be a template here")
    result = Pipe("_", "", (Node("_", compiled.sql, "endpoint"),))
    return compile_node(Pipe("q", "", (Node("q", q),)), "q", {}, allowed_tables,
                        pipes={"_": result}, pipe_tables=None, columns=columns,
                        row_filters=row_filters, guard=guard).sql


def datasource_columns(datasources: Iterable[DataSource]) -> dict[str, tuple[str, ...]]:
    """Table -> column names, for each data source and its quarantine table (the
    ``columns`` allowlist of :func:`compile_node`)."""
    columns: dict[str, tuple[str, ...]] = {}
    for datasource in datasources:
        columns[datasource.name] = datasource.column_names
        columns[datasource.quarantine_name] = (
            tuple(name for name, _ in QUARANTINE_COLUMNS) + datasource.quarantine_columns
            + ("insertion_date",))
    return columns


def check_row_filter(text: str) -> str:
    """Check a row filter (JWT ``DATASOURCES:READ`` ``filter``): one SQL condition that
    reads no table and cannot leave the ``WHERE (...)`` it is pasted into. Returns it
    stripped; raises :class:`ValueError`.

    >>> check_row_filter(" tenant_id = 1 ")
    'tenant_id = 1'
    """
    stripped = text.strip()
    if not stripped:
        raise ValueError("the filter is empty")
    if len(stripped) > 16_384:
        raise ValueError("the filter is longer than 16384 characters")
    depth = 0
    padded = stripped + "\n"
    for token in _tokens(padded):
        if token.kind == "comment":
            raise ValueError("the filter must not contain comments")
        if token.kind in ("string", "quoted") and token.end >= len(padded):
            raise ValueError("the filter has an unterminated quote")
        if token.kind == "punct" and token.text in "([":
            depth += 1
        elif token.kind == "punct" and token.text in ")]":
            depth -= 1
            if depth < 0:
                raise ValueError("the filter has unbalanced brackets")
        elif token.kind == "punct" and token.text == ";":
            raise ValueError("the filter must not contain ';'")
        elif token.upper in ("SELECT", "FORMAT", "SETTINGS", "UNION", "INTO", "FROM", "JOIN"):
            raise ValueError(f"the filter must not contain {token.upper}")
    if depth:
        raise ValueError("the filter has unbalanced brackets")
    if table_references(stripped):
        raise ValueError("the filter must not read tables")
    return stripped


def pipe_parameters(pipe: Pipe, node: str | None = None) -> list[Param]:
    """The template parameters of a node (default: the endpoint) and of the nodes it
    reads, merged by name in order of first use (for OpenAPI and parameter listings)."""
    target = pipe.node(node) if node is not None else pipe.endpoint
    if target is None:
        return []
    seen: dict[str, Param] = {}
    visited: set[str] = set()

    def visit(current: Node) -> None:
        if current.name in visited:
            return
        visited.add(current.name)
        text = current.sql
        if is_template(text):
            for param in compile_template(text).parameters:
                if is_reserved_param(param.name):
                    continue
                old = seen.get(param.name)
                if old is None or (old.type == "String" and param.type != "String"):
                    seen[param.name] = param
        for name in _referenced_nodes(pipe, current):
            other = pipe.node(name)
            if other is not None:
                visit(other)

    visit(target)
    return list(seen.values())


def _referenced_nodes(pipe: Pipe, node: Node) -> list[str]:
    """Other node names read by ``node`` (a static over-approximation for templates)."""
    names = {other.name for other in pipe.nodes if other is not node}
    text = node.sql
    found: list[str] = []
    for token in _tokens(text):
        if token.kind in ("word", "quoted", "string"):
            word = token.identifier if token.kind != "string" else _unquote(token.text)
            if word in names and word not in found:
                found.append(word)
    return found


def check_pipe(pipe: Pipe, allowed_tables: Collection[str] | None = None, *,
               pipes: Mapping[str, Pipe] | None = None) -> None:
    """Check a pipe when it is loaded or pushed: every node's template parses, and the
    endpoint compiles with placeholder parameters (test mode).

    :raises TemplateError: with ``Template Syntax Error: ... at line n`` for a bad node.
    """
    for node in pipe.nodes:
        if is_template(node.sql):
            try:
                compile_template(node.sql)
            except TemplateError as e:
                raise PipeError(f"Node '{node.name}': {e.message}") from None
    if pipe.endpoint is not None:
        compile_endpoint(pipe, {}, allowed_tables, pipes=pipes, test_mode=True)
