"""E3: identifier parameters (``column()``, ``columns()``, ``symbol()``) accept only the
columns of the data sources the query may read, and their own defaults."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from gatewayclient import call, ndjson
from tinyingest.datafiles import Node, Pipe, load_project
from tinyingest.pipes import compile_endpoint, compile_node, datasource_columns
from tinyingest.template import TemplateError, compile_template
from tinyingest.testing import GatewayProcess

PROJECT = load_project(str(Path(__file__).parent / "project"))
COLUMNS = datasource_columns(PROJECT.datasources.values())

#: Values that are no column: a star, a breakout, another table's column, a huge name.
BAD_NAMES = ["*", "a`), b", "x`), (SELECT 1) AS `y", "system.users", "x" * 10_000,
             "id, tag", " id", "ID", "", "id\x00", "count()"]


def render(text: str, columns: set[str] | None, **params: Any) -> str:
    return compile_template("%\n" + text).render(params, columns=columns).sql.strip()


def error(text: str, columns: set[str] | None, **params: Any) -> TemplateError:
    with pytest.raises(TemplateError) as info:
        render(text, columns, **params)
    return info.value


# -- the renderer --------------------------------------------------------------------------


@pytest.mark.parametrize("fn", ["column(c, 'id')", "symbol(c)", "columns(c, 'id')",
                                "columns(c, 'id', fn='max')"])
def test_only_allowlisted_names_pass(fn: str) -> None:
    allowed = {"id", "tag"}
    assert "`tag`" in render(f"{{{{{fn}}}}}", allowed, c="tag")
    for bad in BAD_NAMES:
        if fn.startswith("columns") and bad in ("id, tag", " id"):
            continue  # a list of allowed names, for columns()
        err = error(f"{{{{{fn}}}}}", allowed, c=bad)
        assert err.status == 400
        if bad.strip():
            assert err.message.startswith("invalid column '"), (bad, err.message)
            assert len(err.message) < 400  # a 10k name is not echoed whole


def test_columns_checks_every_name_of_the_list() -> None:
    allowed = {"id", "tag", "name"}
    assert render("{{columns(c, 'id')}}", allowed, c="tag, name") == "`tag`,`name`"
    assert render("{{columns(c, 'id')}}", allowed, c=["tag", "name"]) == "`tag`,`name`"
    assert "invalid column 'secret'" in error("{{columns(c, 'id')}}", allowed,
                                              c="tag,secret").message


def test_defaults_are_the_authors_and_always_pass() -> None:
    allowed = {"id"}
    # Defaults may name what the SQL computes itself (an alias of another node).
    assert render("{{column(c, 'hits')}}", allowed) == "`hits`"
    assert render("{{column(c, 'hits')}}", allowed, c="hits") == "`hits`"
    assert render("{{columns(c, 'hits,total')}}", allowed, c="total") == "`total`"
    assert render("{{symbol(c, 'hits')}}", allowed) == "`hits`"
    assert "invalid column 'total'" in error("{{column(c, 'hits')}}", allowed,
                                             c="total").message


def test_escaping_stays_as_defence_in_depth() -> None:
    # A (strange) real column name is still escaped when it is allowed.
    allowed = {"a`b", "id"}
    assert render("{{column(c, 'id')}}", allowed, c="a`b") == "`a\\`b`"
    # Without an allowlist (a template rendered outside a pipe) escaping is all there is.
    assert render("{{column(c, 'id')}}", None, c="x`), b") == "`x\\`), b`"


def test_endpoint_allowlist_is_the_data_sources_columns() -> None:
    pipe = PROJECT.pipes["events_columns"]
    sql = compile_endpoint(pipe, {"label": "x", "cols": "tag, opt", "pick": "f64",
                                  "sort": "ts"}, None, columns=COLUMNS).sql
    assert "`tag`,`opt`" in sql and "`f64` AS picked" in sql and "ORDER BY `ts`" in sql
    # A column of another data source (`table`.`a`) exists, so it passes: the allowlist is
    # every column the pipe may read; ClickHouse then refuses it for events.
    compile_endpoint(pipe, {"label": "x", "pick": "a"}, None, columns=COLUMNS)
    for name in ("pick", "cols", "sort"):
        for bad in ["*", "a`), b", "system.users", "x" * 10_000, "ID", "count()", "id\x00"]:
            with pytest.raises(TemplateError) as info:
                compile_endpoint(pipe, {"label": "x", name: bad}, None, columns=COLUMNS)
            assert info.value.status == 400 and "invalid column" in info.value.message


def test_sql_allowlist_follows_what_the_caller_may_read() -> None:
    adhoc = Pipe("_sql", "", (Node("_sql", "% SELECT {{column(c, 'tag')}} FROM table"),))
    readable = {"table", "table_quarantine"}
    assert "`a`" in compile_node(adhoc, "_sql", {"c": "a"}, readable, columns=COLUMNS).sql
    assert "`c__raw`" in compile_node(adhoc, "_sql", {"c": "c__raw"}, readable,
                                      columns=COLUMNS).sql
    with pytest.raises(TemplateError, match="invalid column 'f64'"):
        compile_node(adhoc, "_sql", {"c": "f64"}, readable, columns=COLUMNS)  # events only


def test_pipes_read_from_sql_use_their_own_rights() -> None:
    # /v0/sql reading the endpoint: the pipe's nodes may name every data source column,
    # the caller's own SQL only those of what the caller reads.
    adhoc = Pipe("_sql", "", (Node("_sql", "SELECT * FROM events_columns"),))
    sql = compile_node(adhoc, "_sql", {"label": "x", "pick": "f64"}, {"events_columns"},
                       pipes=PROJECT.pipes, pipe_tables=None, columns=COLUMNS).sql
    assert "`f64` AS picked" in sql
    with pytest.raises(TemplateError, match="invalid column"):
        compile_node(adhoc, "_sql", {"label": "x", "pick": "*"}, {"events_columns"},
                     pipes=PROJECT.pipes, pipe_tables=None, columns=COLUMNS)


# -- over HTTP -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tag(gateway: GatewayProcess) -> str:
    value = uuid.uuid4().hex[:12]
    body = ndjson({"id": i, "tag": value, "name": f"n{i}", "f64": i / 2} for i in range(3))
    response = call(gateway, "POST", "/v0/events", params={"name": "events", "wait": "true"},
                    body=body)
    assert response.status == 200, response.body
    return value


def test_endpoint_takes_real_columns(gateway: GatewayProcess, tag: str) -> None:
    response = call(gateway, "GET", "/v0/pipes/events_columns.json",
                    params={"label": tag, "cols": "id,f64", "pick": "tag", "sort": "f64"})
    assert response.status == 200, response.body
    assert response.json()["data"] == [{"id": i, "f64": i / 2, "picked": tag}
                                       for i in range(3)]


@pytest.mark.parametrize("name", ["pick", "cols", "sort"])
def test_endpoint_refuses_other_identifiers(gateway: GatewayProcess, tag: str,
                                            name: str) -> None:
    for bad in ["*", "a`), b", "system.users", "x" * 10_000, "id) UNION ALL SELECT (1"]:
        get = call(gateway, "GET", "/v0/pipes/events_columns.json",
                   params={"label": tag, name: bad})
        assert get.status == 400, (bad, get.body[:200])
        assert get.json()["error"].startswith("invalid column '"), get.json()
        post = call(gateway, "POST", "/v0/pipes/events_columns.json",
                    body=json.dumps({"label": tag, name: bad}).encode(),
                    headers={"Content-Type": "application/json"})
        assert post.status == 400 and "invalid column" in post.json()["error"]


def test_sql_templates_name_only_readable_columns(gateway: GatewayProcess, tag: str) -> None:
    listed = {t["name"]: t["token"] for t in call(gateway, "GET", "/v0/tokens").json()["tokens"]}
    read = listed["events_read"]  # reads events (and its quarantine), not `table`
    q = "% SELECT {{column(c, 'id')}} AS v FROM events WHERE tag = {{String(t)}} ORDER BY id"
    ok = call(gateway, "GET", "/v0/sql", params={"q": q, "c": "name", "t": tag}, token=read)
    assert ok.status == 200, ok.body
    assert [row["v"] for row in ok.json()["data"]] == ["n0", "n1", "n2"]
    for bad in ["a", "*", "system.users", "x" * 10_000]:  # `a` is a column of `table`
        refused = call(gateway, "GET", "/v0/sql", params={"q": q, "c": bad, "t": tag},
                       token=read)
        assert refused.status == 400 and "invalid column" in refused.json()["error"], bad
