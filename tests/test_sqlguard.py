"""The SQL guard on its own: what ClickHouse's parser lets through, and what it refuses.

Through HTTP, on both backends: tests/test_sql_security.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tinyingest.pipes import PipeError, compile_node
from tinyingest.datafiles import Node, Pipe
from tinyingest.sqlguard import SQLGuard, SQLRefused, _parse_tree


@pytest.fixture(scope="module")
def guard() -> Iterator[SQLGuard]:
    # An in-memory chDB: closed at the end, as chDB hosts one engine per process and
    # other modules open theirs on a data directory.
    guard = SQLGuard()
    try:
        yield guard
    finally:
        guard.close()


@pytest.mark.parametrize("query, normalized, tables, functions", [
    ("select a from t # c\n where b=$$x$$ /* a /* b */ c */ limit 1",
     "SELECT a FROM t WHERE b = 'x' LIMIT 1", ("t",), ()),
    ("SELECT 1;", "SELECT 1", (), ()),
    ("SELECT * FROM (SELECT 1 UNION ALL SELECT * FROM s)", None, ("s",), ()),
    ("SELECT in(1, s), 2 NOT IN u, 3 GLOBAL IN db.v, 4 IN (1, 2)", None,
     ("db.v", "s", "u"), ()),
    ("SELECT * FROM numbers(3) AS n, t AS x JOIN t USING a", None, ("t", "t"), ("numbers",)),
    ("SELECT `we ird` FROM `we ird` AS w", None, ("we ird",), ()),
])
def test_what_the_parser_reads(guard: SQLGuard, query: str, normalized: str | None,
                               tables: tuple[str, ...], functions: tuple[str, ...]) -> None:
    checked = guard.check(query)
    if normalized is not None:
        assert checked.sql == normalized
    assert checked.tables == tables and checked.table_functions == functions
    assert "\n" not in checked.sql


@pytest.mark.parametrize("query, message", [
    ("SELECT 1; SELECT 2", "Multi-statements are not allowed"),
    ("KILL QUERY WHERE 1", "only SELECT"),
    ("SHOW PROCESSLIST", "only SELECT"),
    ("INSERT INTO t VALUES (1)", "only SELECT"),
    ("SELECT 1 INTO OUTFILE '/tmp/x'", "INTO OUTFILE"),
    ("SELECT 1 FORMAT CSV", "FORMAT"),
    ("SELECT 1 SETTINGS max_threads = 1", "SETTINGS"),
    ("SELECT * FROM (SELECT 1 SETTINGS max_threads = 1)", "SETTINGS"),
    ("SELECT File('/etc/passwd')", "File() is not allowed"),
    ("SELECT * FROM file('x', 'CSV')", "table functions are not allowed: file()"),
    ("SELECT * FROM t WHERE x IN (SELECT * FROM url('http://x', 'CSV'))", "url()"),
    ("SELECT dictGetString('d', 'a', 1)", "dictGetString"),
    ("SELECT joinGetOrNull('j', 'v', 1)", "joinGetOrNull"),
    ("SELECT 1 /* open", "Multiline comment is not closed"),
    ("SELECT a FROM `a (children 2)`", "could not be checked"),
    ("", "Empty query"),
])
def test_what_the_parser_refuses(guard: SQLGuard, query: str, message: str) -> None:
    with pytest.raises(SQLRefused) as info:
        guard.check(query)
    assert message in str(info.value)
    assert "formatQuerySingleLine" not in str(info.value)


def test_a_tree_that_does_not_add_up_is_refused() -> None:
    assert _parse_tree("A (children 1)\n B\n").children[0].kind == "B"
    for text in ["A (children 2)\n B\n", "A\n B\n", " A\n", "A (children 1)\n  B\n",
                 "A (children 1)\n B\nC\n", "A (children 1)\n 'x\n"]:
        with pytest.raises(SQLRefused):
            _parse_tree(text)


def test_the_compiler_must_find_the_tables_the_parser_found(guard: SQLGuard) -> None:
    node = Node("n", "SELECT * FROM events WHERE in(1, secret)")
    # The tokenizer alone misses `secret` in the function form of IN...
    assert compile_node(Pipe("p", "", (node,)), "n", {}, {"events"}).tables == ("events",)
    # ... the parser does not.
    with pytest.raises(PipeError, match="could not be checked|not found"):
        compile_node(Pipe("p", "", (node,)), "n", {}, {"events"}, guard=guard)


def test_nodes_still_resolve_in_normalized_text(guard: SQLGuard) -> None:
    pipe = Pipe("p", "", (
        Node("ids", "SELECT id FROM events WHERE tag = 'a' -- a comment"),
        Node("e", "SELECT * FROM events WHERE id IN ids AND id NOT IN (ids)", "endpoint"),
    ))
    compiled = compile_node(pipe, "e", {}, {"events"}, guard=guard)
    assert "IN ids" not in compiled.sql and "IN (ids)" not in compiled.sql
    assert compiled.sql.count("SELECT id FROM events WHERE tag = 'a'") == 2
    assert "--" not in compiled.sql
