"""No token reads or writes files, escapes its tables or runs anything but a SELECT
through ``/v0/sql``, a pipe's ``q`` or a template (issue 18), on both backends.

Each query here got through the text check that came before ClickHouse's parser
(:mod:`tinyingest.sqlguard`): ``#`` comments, ``$$`` strings, nested comments,
``in(x, table)``, a UNION inside nested parentheses, several statements.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from gatewayclient import Response, call, ndjson, wait_for_rows
from tinyingest.auth import encode_jwt
from tinyingest.testing import GatewayProcess

MARKER = "zq-secret-marker-7d1f"


@pytest.fixture(scope="module")
def tokens(gateway: GatewayProcess) -> dict[str, str]:
    """The project's scoped tokens, JWTs signed with the admin token, and the admin."""
    listed = {t["name"]: t["token"] for t in call(gateway, "GET", "/v0/tokens").json()["tokens"]}
    expires = int(time.time() + 3600)
    jwt_pipe = encode_jwt({"workspace_id": "w", "name": "jwt_pipe", "exp": expires, "scopes": [
        {"type": "PIPES:READ", "resource": "events_by_tag",
         "fixed_params": {"label": "public"}}]}, gateway.token)
    jwt_filtered = encode_jwt({"workspace_id": "w", "name": "jwt_filter", "exp": expires,
                               "scopes": [{"type": "DATASOURCES:READ", "resource": "events",
                                           "filter": "tag = 'public'"}]}, gateway.token)
    return {"append": listed["events_append"], "read": listed["events_read"],
            "pipe": listed["pipe_read"], "jwt_pipe": jwt_pipe, "jwt_filter": jwt_filtered,
            "admin": gateway.token}


@pytest.fixture(scope="module")
def secrets_stored(gateway: GatewayProcess) -> Path:
    """A file beside the data and rows no scoped token may read, both holding MARKER."""
    path = Path(gateway.data_dir) / "secret.txt"
    path.write_text(MARKER)
    rows = [{"id": 1, "tag": "public", "name": "shown"},
            {"id": 2, "tag": "private", "name": MARKER}]
    assert call(gateway, "POST", "/v0/events", params={"name": "events", "wait": "true"},
                body=ndjson(rows)).status == 200
    body = f"private,1,{MARKER},1.5\n".encode()
    assert call(gateway, "POST", "/v0/datasources",
                params={"name": "table", "mode": "append", "format": "csv"},
                body=body).status == 200
    wait_for_rows(gateway, f"SELECT 1 FROM table WHERE b = '{MARKER}'", 1)
    return path


def sql(gateway: GatewayProcess, query: str, token: str, **params: Any) -> Response:
    return call(gateway, "GET", "/v0/sql", params={"q": query, **params}, token=token)


def assert_refused(response: Response, *statuses: int) -> None:
    assert response.status in (statuses or (400, 403)), (response.status, response.body)
    assert MARKER.encode() not in response.body
    assert "error" in response.json()


# -- files --------------------------------------------------------------------------------

FILE_READS = [
    "SELECT file('{path}')",
    "SELECT * FROM file('{path}', 'LineAsString')",
    "SELECT FILE('{path}') AS x",
    "SELECT count() FROM events WHERE name = file('{path}')",
    "SELECT * FROM (SELECT 1) WHERE 1 IN (SELECT length(file('{path}')))",
    "SELECT * FROM url('http://127.0.0.1:1/', 'LineAsString')",
    "SELECT * FROM executable('cat {path}', 'LineAsString', 'x String')",
]


@pytest.mark.parametrize("who", ["append", "read", "pipe", "jwt_pipe", "jwt_filter", "admin"])
def test_no_token_reads_a_file(gateway: GatewayProcess, tokens: dict[str, str],
                               secrets_stored: Path, who: str) -> None:
    for query in FILE_READS:
        assert_refused(sql(gateway, query.format(path=secrets_stored), tokens[who]))
    # Through a pipe's q and a template too.
    assert_refused(call(gateway, "GET", "/v0/pipes/events_by_tag.json", token=tokens[who],
                        params={"label": "x",
                                "q": f"SELECT file('{secrets_stored}') FROM _"}))
    assert_refused(sql(gateway, "% SELECT file({{String(p)}})", tokens[who],
                       p=str(secrets_stored)))


WRITE_TRICKS = [
    "SELECT 1 # x\nINTO OUTFILE '{path}'",
    "SELECT $$ -- $$ INTO OUTFILE '{path}'",
    "SELECT 1 /* /* */ INTO OUTFILE '{path}' /* */",
    "SELECT 'import os' INTO OUTFILE '{path}' FORMAT TSVRaw",
    "SELECT 1 INTO OUTFILE '{path}' TRUNCATE",
    "INSERT INTO FUNCTION file('{path}', 'TSV') SELECT 1",
    "SELECT 1; SELECT 2 INTO OUTFILE '{path}'",
]


@pytest.mark.parametrize("who", ["read", "jwt_filter", "admin"])
def test_no_token_writes_a_file(gateway: GatewayProcess, tokens: dict[str, str],
                                tmp_path: Path, who: str) -> None:
    for number, query in enumerate(WRITE_TRICKS):
        # A .pth file in a site directory would run code at the next start.
        path = tmp_path / f"written_{number}.pth"
        assert_refused(sql(gateway, query.format(path=path), tokens[who]))
        assert not path.exists(), query
    assert not any(tmp_path.iterdir())


# -- scopes -------------------------------------------------------------------------------

ESCAPES = [
    "SELECT count() FROM events WHERE 1 IN ((SELECT 1 UNION ALL SELECT b FROM table))",
    "SELECT * FROM (((SELECT name AS b FROM events) UNION ALL (SELECT b FROM table)))",
    "SELECT count() FROM events WHERE in(tuple(name), table)",
    "SELECT count() FROM events WHERE name IN table",
    "SELECT * FROM events # FROM\nUNION ALL SELECT * FROM table",
    "SELECT $$ FROM events $$ AS x, b FROM table",
    "SELECT * FROM events /* /* */ JOIN table USING tag /* */",
    "SELECT * FROM events, table",
    "SELECT b FROM `table`",
    "SELECT b FROM \"table\" AS t",
    "WITH events AS (SELECT b FROM table) SELECT * FROM events",
    "SELECT joinGet('table', 'b', 'private')",
    "SELECT * FROM merge(currentDatabase(), 'tab')",
    "SELECT * FROM remote('127.0.0.1', currentDatabase(), 'table')",
    # Hidden from a tokenizer that knows no $$ strings, # comments or nested comments:
    # it reads a string from the ' to the end.
    "SELECT $$'$$, b FROM table -- '",
    "SELECT 1 # '\n, b FROM table -- '",
    "SELECT b /* /* */ ' */ FROM table -- '",
    # A UNION after a parenthesized SELECT, inside parentheses that start with '('.
    "SELECT count() FROM events WHERE 1 IN ((SELECT 1) UNION ALL SELECT a FROM table)",
    "SELECT * FROM ((SELECT name AS b FROM events) UNION ALL SELECT b FROM table)",
    "SELECT count() FROM events WHERE in(('private', 1, 'x', 1.5), table)",
    "SELECT * FROM system.tables",
    "SELECT name FROM system.databases",
    "SELECT * FROM default.table",
]


@pytest.mark.parametrize("who", ["read", "pipe", "jwt_pipe", "jwt_filter"])
def test_a_token_reads_only_its_tables(gateway: GatewayProcess, tokens: dict[str, str],
                                       secrets_stored: Path, who: str) -> None:
    for query in ESCAPES:
        assert_refused(sql(gateway, query, tokens[who], label="x"))


def test_a_jwt_row_filter_holds_whatever_the_syntax(gateway: GatewayProcess,
                                                    tokens: dict[str, str],
                                                    secrets_stored: Path) -> None:
    token = tokens["jwt_filter"]
    for query in [
        "SELECT name FROM events",
        "SELECT name FROM events # comment",
        "SELECT name FROM events /* /* nested */ still a comment */",
        "SELECT name FROM (SELECT name FROM ((events)))",
        "SELECT $$x$$ AS s, name FROM events",
        "SELECT $$'$$ AS s, name FROM events -- '",
        "SELECT 1 AS one # '\n, name FROM events -- '",
        "SELECT name /* /* */ ' */ FROM events -- '",
        "SELECT * FROM ((SELECT 'x' AS name) UNION ALL SELECT name FROM events)",
        "SELECT name FROM events AS e WHERE e.id IN (SELECT id FROM events)",
    ]:
        response = sql(gateway, query, token)
        if response.status == 200:
            # 'x' is the query's own literal; the private row must not come back.
            assert {row.get("name") for row in response.json()["data"]} <= {"shown", "x"}, query
            assert MARKER.encode() not in response.body, query
        else:
            assert_refused(response)
    assert_refused(sql(gateway, "SELECT name FROM events_quarantine", token))


def test_a_pipe_jwt_keeps_its_fixed_parameters(gateway: GatewayProcess,
                                               tokens: dict[str, str],
                                               secrets_stored: Path) -> None:
    token = tokens["jwt_pipe"]
    for q in ["SELECT * FROM _", "SELECT * FROM _ # \nUNION ALL SELECT id, name FROM events",
              "SELECT * FROM _ WHERE id IN events"]:
        response = call(gateway, "GET", "/v0/pipes/events_by_tag.json", token=token,
                        params={"label": "private", "q": q})
        if response.status == 200:
            assert {row["name"] for row in response.json()["data"]} <= {"shown"}, q
        else:
            assert_refused(response)


# -- statements ---------------------------------------------------------------------------

NOT_SELECTS = ["KILL QUERY WHERE 1", "KILL QUERY WHERE 1 SYNC", "SHOW PROCESSLIST",
               "SHOW DATABASES", "SHOW TABLES FROM system", "DESCRIBE TABLE system.users",
               "EXISTS TABLE table", "EXPLAIN SELECT 1", "SYSTEM DROP DNS CACHE",
               "DROP TABLE table", "TRUNCATE TABLE events", "OPTIMIZE TABLE events",
               "SET readonly = 0", "SELECT 1 SETTINGS readonly = 0",
               "SELECT 1 SETTINGS max_execution_time = 100000",
               "SELECT sleepEachRow(3) FROM numbers(10)",
               "SELECT 1; SELECT 2", "SELECT 1; ; SELECT 2", "SELECT 1; DROP TABLE events"]


@pytest.mark.parametrize("who", ["read", "admin"])
def test_only_one_select_runs(gateway: GatewayProcess, tokens: dict[str, str],
                              secrets_stored: Path, who: str) -> None:
    for query in NOT_SELECTS:
        assert_refused(sql(gateway, query, tokens[who]), 400)
    assert sql(gateway, "SELECT count() AS n FROM events", tokens["admin"]).json()["data"]


def test_a_failed_query_leaves_nothing_for_the_next_caller(
        gateway: GatewayProcess, tokens: dict[str, str], secrets_stored: Path) -> None:
    # The embedded engine once served the rows of a failed multi-statement query's
    # first statement to whoever asked next.
    for query in ["SELECT b FROM table; SELECT throwIf(1)",
                  "SELECT b FROM table WHERE throwIf(b != '')"]:
        sql(gateway, query, tokens["admin"])
        answer = sql(gateway, "SELECT 42 AS x", tokens["read"])
        assert answer.status == 200 and answer.json()["data"] == [{"x": 42}], answer.body


def test_sql_needs_a_read_scope(gateway: GatewayProcess, tokens: dict[str, str]) -> None:
    assert_refused(sql(gateway, "SELECT 1", tokens["append"]), 403)
    assert sql(gateway, "SELECT 1 AS x", tokens["read"]).json()["data"] == [{"x": 1}]
    assert sql(gateway, "SELECT 1 AS x", tokens["pipe"]).json()["data"] == [{"x": 1}]


def test_the_normalized_query_is_what_runs(gateway: GatewayProcess, tokens: dict[str, str],
                                           secrets_stored: Path) -> None:
    """Comments and $$ strings are ClickHouse's to read: the answers stay right."""
    token = tokens["read"]
    data = sql(gateway, "SELECT $$a'b$$ AS s, /* x */ 1 AS n # trailing", token).json()["data"]
    assert data == [{"s": "a'b", "n": 1}]
    data = sql(gateway, "SELECT name FROM events WHERE id IN (SELECT id FROM events "
                        "WHERE tag = 'public') ORDER BY id", token).json()["data"]
    assert data == [{"name": "shown"}]
    assert os.path.exists(secrets_stored)


# -- a read-only user on the server ----------------------------------------------------------


def test_queries_can_run_as_a_read_only_server_user(clickhouse_server: Any,
                                                    tmp_path: Path) -> None:
    """TINYINGEST_CLICKHOUSE_QUERY_URL: queries connect as a user that cannot write, so
    even a query the guard missed could change nothing."""
    from conftest import GATEWAY_ENV, PROJECT_DIR, start_gateway
    from tinyingest.sinks import SinkError
    from tinyingest.sinks.clickhouse import ClickHouseSink

    gateway = start_gateway("clickhouse", tmp_path / "gw", server=clickhouse_server)
    database = (gateway.clickhouse_url or "").rsplit("/", 1)[1]
    gateway.stop()
    reader_url = clickhouse_server.reader_url(database)
    reader = ClickHouseSink(reader_url)
    try:
        with pytest.raises(SinkError, match="readonly|Cannot execute query in readonly mode"):
            reader.execute("CREATE TABLE written (x UInt8) ENGINE = Memory")
    finally:
        reader.close()
    # The same database again, now with queries as the reader.
    gateway = GatewayProcess(PROJECT_DIR, str(tmp_path / "gw2"),
                             clickhouse_url=gateway.clickhouse_url,
                             env={**GATEWAY_ENV, "TINYINGEST_CLICKHOUSE_QUERY_URL": reader_url})
    gateway.start()
    try:
        body = ndjson([{"id": 7, "tag": "ro", "name": "n"}])
        assert call(gateway, "POST", "/v0/events", params={"name": "events", "wait": "true"},
                    body=body).status == 200
        data = sql(gateway, "SELECT count() AS n FROM events WHERE tag = 'ro'",
                   gateway.token).json()["data"]
        assert data == [{"n": 1}]
        pipe = call(gateway, "GET", "/v0/pipes/events_by_tag.json", params={"label": "ro"})
        assert pipe.status == 200 and pipe.json()["data"] == [{"id": 7, "name": "n"}]
    finally:
        assert gateway.stop() == 0, gateway.log_tail()
    # Queries do connect with that URL: with a wrong password they cannot run.
    gateway = GatewayProcess(PROJECT_DIR, str(tmp_path / "gw3"),
                             clickhouse_url=gateway.clickhouse_url,
                             env={**GATEWAY_ENV, "TINYINGEST_CLICKHOUSE_QUERY_URL":
                                  reader_url.replace("reader:reader@", "reader:wrong@")})
    gateway.start()
    try:
        refused = sql(gateway, "SELECT 1 AS n", gateway.token)
        assert refused.status == 503 and "reader" not in refused.json()["error"], refused.body
        assert "Wrong password" in gateway.log_tail()
    finally:
        assert gateway.stop() == 0, gateway.log_tail()


def test_a_slow_template_is_stopped_by_its_time_budget(gateway: GatewayProcess,
                                                       tokens: dict[str, str]) -> None:
    """Each step of a template is bounded in size; 100,000 steps over 100 KB strings
    held the event loop for seconds: the render has a time budget (MAX_RENDER_SECONDS)."""
    slow = "% {% set a = 'x' * 100000 %}{% for i in a %}{% set b = a.upper() %}{% end %}SELECT 1"
    answer = sql(gateway, slow, tokens["read"])
    assert answer.status == 400 and "longer than 1 s to render" in answer.json()["error"]
    assert call(gateway, "GET", "/healthz", token=None).status == 200
