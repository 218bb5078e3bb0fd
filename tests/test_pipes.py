"""Pipe compilation: node chaining, table checks, reserved parameters (pure logic)."""

from __future__ import annotations

import keyword
from pathlib import Path

import pytest

from tinyingest.datafiles import Node, Pipe, parse_pipe
from tinyingest.pipes import (
    RESERVED_PARAMS,
    CompiledQuery,
    PipeError,
    apply_q,
    check_pipe,
    compile_endpoint,
    compile_node,
    is_reserved_param,
    pipe_parameters,
    table_references,
    template_params,
)
from tinyingest.template import Param, TemplateError


def pipe_of(*nodes: tuple[str, str], name: str = "p") -> Pipe:
    return Pipe(name, "", tuple(Node(n, sql) for n, sql in nodes))


def squash(sql: str) -> str:
    return " ".join(sql.split())


def test_single_node() -> None:
    pipe = pipe_of(("only", "% SELECT * FROM events WHERE a = {{String(a, 'x')}}"))
    compiled = compile_endpoint(pipe, {}, {"events"})
    assert squash(compiled.sql) == "SELECT * FROM events WHERE a = 'x'"
    assert (compiled.node, compiled.nodes, compiled.tables) == ("only", ("only",), ("events",))


def test_non_template_sql_is_kept_verbatim() -> None:
    pipe = pipe_of(("only", "SELECT '{{x}}' AS v FROM events"))
    assert compile_endpoint(pipe, {"x": "1"}, {"events"}).sql == "SELECT '{{x}}' AS v FROM events"


def test_nodes_chain_as_subqueries() -> None:
    pipe = pipe_of(
        ("filtered", "% SELECT action, ts FROM events WHERE ts >= {{DateTime(start, "
                     "'2024-01-01 00:00:00')}}"),
        ("counted", "SELECT action, count() AS hits FROM filtered GROUP BY action"),
        ("endpoint", "% SELECT * FROM counted AS c JOIN filtered f USING action "
                     "WHERE action IN filtered LIMIT {{Int32(limit, 10)}}"),
    )
    compiled = compile_endpoint(pipe, {"limit": "5"}, {"events"})
    filtered = "( SELECT action, ts FROM events WHERE ts >= '2024-01-01 00:00:00' )"
    assert squash(compiled.sql) == squash(
        f"SELECT * FROM ( SELECT action, count() AS hits FROM {filtered} AS `filtered` "
        f"GROUP BY action ) AS c JOIN {filtered} f USING action "
        f"WHERE action IN {filtered} LIMIT 5")
    assert compiled.nodes == ("filtered", "counted", "endpoint")
    assert compiled.tables == ("events",)


def test_references_skip_strings_quoted_names_comments_and_functions() -> None:
    pipe = pipe_of(
        ("n", "SELECT 1 AS x"),
        ("e", "SELECT 'FROM n', `FROM n` AS \"FROM n\", extract(DAY FROM n) -- FROM n\n"
              "/* JOIN n */ FROM n"),
    )
    sql = compile_endpoint(pipe, {}).sql
    assert sql == ("SELECT 'FROM n', `FROM n` AS \"FROM n\", extract(DAY FROM n) -- FROM n\n"
                   "/* JOIN n */ FROM (\nSELECT 1 AS x\n) AS `n`")


def test_backquoted_node_reference_and_array_join() -> None:
    pipe = pipe_of(("n", "SELECT [1] AS n"),
                   ("e", "SELECT * FROM `n` ARRAY JOIN n LEFT ARRAY JOIN n AS m"))
    assert squash(compile_endpoint(pipe, {}).sql) == squash(
        "SELECT * FROM ( SELECT [1] AS n ) AS `n` ARRAY JOIN n LEFT ARRAY JOIN n AS m")


def test_trailing_comment_cannot_swallow_the_parenthesis() -> None:
    pipe = pipe_of(("n", "SELECT 1 AS x -- note"), ("e", "SELECT x FROM n"))
    assert compile_endpoint(pipe, {}).sql == "SELECT x FROM (\nSELECT 1 AS x -- note\n) AS `n`"


def test_table_function_reaches_nodes_and_allowed_tables() -> None:
    pipe = pipe_of(("n", "SELECT 1 AS x"),
                   ("e", "% SELECT * FROM {{table(t)}}"))
    assert squash(compile_endpoint(pipe, {"t": "n"}).sql) == "SELECT * FROM ( SELECT 1 AS x ) AS `n`"
    assert compile_endpoint(pipe, {"t": "events"}, {"events"}).sql == " SELECT * FROM `events`"
    with pytest.raises(TemplateError, match="Resource 'system.users' not found"):
        compile_endpoint(pipe, {"t": "system.users"}, {"events"})


@pytest.mark.parametrize("sql, message", [
    ("SELECT * FROM secrets", "Resource 'secrets' not found"),
    ("SELECT * FROM system.users", "Resource 'system.users' not found"),
    ("SELECT * FROM `system`.`users`", "Resource 'system.users' not found"),
    ("SELECT * FROM events JOIN other USING a", "Resource 'other' not found"),
    ("SELECT * FROM events WHERE a IN (SELECT a FROM other)", "Resource 'other' not found"),
    ("SELECT * FROM events WHERE a IN other", "Resource 'other' not found"),
    ("SELECT * FROM numbers(10)", "table functions are not allowed: numbers()"),
    ("SELECT * FROM url('http://x', CSV, 'a String')", "table functions are not allowed"),
    ("SELECT 1; SELECT 2", "multiple statements"),
    ("SELECT 1 FORMAT TSV", "FORMAT is not allowed"),
    ("SELECT 1 INTO OUTFILE 'x'", "INTO OUTFILE is not allowed"),
])
def test_unknown_tables_and_statements_are_refused(sql: str, message: str) -> None:
    with pytest.raises(PipeError, match=message) as info:
        compile_endpoint(pipe_of(("e", sql)), {}, {"events"})
    assert info.value.status == 400


def test_trailing_semicolon_is_dropped_and_format_inside_strings_is_fine() -> None:
    pipe = pipe_of(("e", "SELECT 'FORMAT; x', formatDateTime(now(), '%F') FROM events; -- done"))
    assert compile_endpoint(pipe, {}, {"events"}).sql.startswith(
        "SELECT 'FORMAT; x', formatDateTime(now(), '%F') FROM events ")


def test_circular_references() -> None:
    pipe = pipe_of(("a", "SELECT * FROM b"), ("b", "SELECT * FROM a"))
    with pytest.raises(PipeError, match=r"Circular reference between nodes: p\.b -> p\.a -> p\.b"):
        compile_endpoint(pipe, {})


def test_self_reference_is_a_table() -> None:
    pipe = pipe_of(("events", "SELECT * FROM events"))
    assert compile_endpoint(pipe, {}, {"events"}).sql == "SELECT * FROM events"


def test_other_published_pipes_are_inlined() -> None:
    base = pipe_of(("top", "% SELECT a FROM events LIMIT {{Int32(n, 3)}}"), name="base")
    pipe = pipe_of(("e", "SELECT count() FROM base"))
    compiled = compile_endpoint(pipe, {"n": "7"}, {"events"}, pipes={"base": base})
    assert squash(compiled.sql) == squash(
        "SELECT count() FROM ( SELECT a FROM events LIMIT 7 ) AS `base`")
    assert compiled.nodes == ("base.top", "e")


def test_endpoint_selection_and_missing_nodes() -> None:
    pipe = Pipe("p", "", (Node("a", "SELECT 1"), Node("b", "SELECT 2", "endpoint"),
                          Node("c", "SELECT 3")))
    assert compile_endpoint(pipe, {}).sql == "SELECT 2"
    assert compile_node(pipe, "c", {}).sql == "SELECT 3"
    with pytest.raises(PipeError) as info:
        compile_node(pipe, "zz", {})
    assert info.value.status == 404
    materialized = Pipe("m", "", (Node("a", "SELECT 1", "materialized", datasource="t"),))
    with pytest.raises(PipeError) as info:
        compile_endpoint(materialized, {})
    assert info.value.status == 404


@pytest.mark.parametrize("name", sorted(RESERVED_PARAMS) + [
    "__tb__semver", "__tb__deployment", "output_format_json_quote_64bit_integers",
])
def test_reserved_params_are_never_template_params(name: str) -> None:
    assert is_reserved_param(name)
    usable = name.isidentifier() and not keyword.iskeyword(name) \
        and not name.startswith("__") and name not in ("format", "q")
    text = ("% SELECT {% if defined(" + name + ") %}1{% else %}0{% end %}" if usable
            else "% SELECT {{String(x, 'none')}}")
    sql = compile_endpoint(pipe_of(("e", text)), {name: "1"}).sql
    assert sql == (" SELECT 0" if usable else " SELECT 'none'")


def test_template_params_filter() -> None:
    params: dict[str, str | list[str]] = {"token": "t", "q": "x", "format": "json", "from": "ts-sdk",
              "cli_version": ["1", "1"], "debug": "blocks", "__tb__semver": "1",
              "release_replacements": "true", "pipeline": "p",
              "output_format_json_quote_denormals": "1", "limit": "5", "tags": ["a", "b"]}
    assert template_params(params) == {"limit": "5", "tags": ["a", "b"]}


def test_template_errors_propagate_with_status() -> None:
    pipe = pipe_of(("e", "% SELECT {{Int8(n)}}"))
    with pytest.raises(TemplateError) as info:
        compile_endpoint(pipe, {"n": "300"})
    assert info.value.status == 400
    assert info.value.message == "Template Syntax Error: Error validating '300' to type Int8"


def test_max_threads_setting_is_collected_from_all_nodes() -> None:
    pipe = pipe_of(("a", "% SELECT 1 AS x {{max_threads(2)}}"), ("e", "SELECT x FROM a"))
    assert compile_endpoint(pipe, {}).settings == {"max_threads": 2}


def test_pipe_parameters_cover_the_endpoint_and_its_dependencies() -> None:
    pipe = pipe_of(
        ("unused", "% SELECT {{Int32(nope)}}"),
        ("filtered", "% SELECT * FROM events WHERE d >= {{Date(start, '2024-01-01')}}"),
        ("e", "% SELECT * FROM filtered LIMIT {{Int32(limit, 10, description='rows')}} "
              "{{String(token, 'x')}}"),
    )
    assert pipe_parameters(pipe) == [
        Param("limit", "Int32", 10, "rows"),
        Param("start", "Date", "2024-01-01"),
    ]


def test_check_pipe() -> None:
    check_pipe(pipe_of(("e", "% SELECT * FROM events WHERE a = {{Int32(a)}}")), {"events"})
    with pytest.raises(PipeError, match="Node 'e': Template Syntax Error: import is forbidden "
                                        "at line 2"):
        check_pipe(pipe_of(("e", "%\n{% import os %}")))
    with pytest.raises(PipeError, match="Resource 'secrets' not found"):
        check_pipe(pipe_of(("e", "% SELECT * FROM secrets")), {"events"})


def test_apply_q() -> None:
    compiled = CompiledQuery("SELECT a FROM events", {}, {}, "e", ("e",), ("events",))
    assert squash(apply_q("SELECT * FROM _ LIMIT 5 OFFSET 0", compiled, {"events"})) == \
        "SELECT * FROM ( SELECT a FROM events ) AS `_` LIMIT 5 OFFSET 0"
    with pytest.raises(PipeError, match="Resource 'system.users' not found"):
        apply_q("SELECT * FROM _ WHERE a IN (SELECT name FROM system.users)", compiled,
                {"events"})


def test_table_references() -> None:
    assert table_references("SELECT * FROM a AS x LEFT JOIN b.c ON 1 WHERE y IN d") == \
        ["a", "b.c", "d"]
    assert table_references("SELECT trim(BOTH ' ' FROM s), substring(s FROM 2) FROM t") == ["t"]


def test_parsed_pipe_file(tmp_path: Path) -> None:
    text = (
        "DESCRIPTION Top actions\n\n"
        "NODE filtered\nSQL >\n    %\n    SELECT action, ts FROM page_views\n"
        "    WHERE ts >= {{DateTime64(start, '2024-01-01 00:00:00.000', description=\"window start\")}}\n"
        "    {% if defined(action) %} AND action = {{String(action)}} {% end %}\n\n"
        "NODE endpoint\nTYPE endpoint\nSQL >\n    %\n"
        "    SELECT action, count() AS hits FROM filtered\n"
        "    GROUP BY action ORDER BY hits DESC\n    LIMIT {{Int32(limit, 10)}}\n"
    )
    path = tmp_path / "top.pipe"
    path.write_text(text)
    pipe = parse_pipe(path)
    compiled = compile_endpoint(pipe, {"action": "it's", "limit": "3", "token": "abc"},
                                {"page_views"})
    assert squash(compiled.sql) == squash(
        "SELECT action, count() AS hits FROM ( SELECT action, ts FROM page_views "
        "WHERE ts >= '2024-01-01 00:00:00.000' AND action = 'it\\'s' ) AS `filtered` "
        "GROUP BY action ORDER BY hits DESC LIMIT 3")
