"""The Tinybird examples of api.md, called through HTTP as Tinybird's clients call them.

``tests/api_examples/`` holds api.md's ``page_views.datasource`` (section 6.1) and
``top_actions.pipe`` (6.2) byte for byte, and Tinybird's documented paging pattern
(``page_views_paged.pipe``: ``LIMIT {{Int32(..)}} OFFSET {{Int32(..) * Int32(..)}}``). The
calls are those of sections 1, 4.1 and 4.3. Every template runs unchanged on both backends.

ClickHouse 18.16 has no ``DateTime64`` and no table ``TTL``: for that backend only, the copy
the gateway serves reads ``ts`` as ``DateTime`` (so the pipe's ``start`` default loses its
``.000``, which 18.16 cannot compare with a DateTime) and drops ``ENGINE_TTL``; nothing else
changes (see :data:`CLICKHOUSE_18_EDITS`).
"""

from __future__ import annotations

import datetime
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import start_gateway
from gatewayclient import Response, call, ndjson
from tinyingest.testing import GatewayProcess

EXAMPLES = Path(__file__).parent / "api_examples"

#: file -> (text in api.md, what 18.16 can run); each must match exactly once.
CLICKHOUSE_18_EDITS = {
    "datasources/page_views.datasource": [
        ("`ts` DateTime64(3) `json:$.timestamp`", "`ts` DateTime `json:$.timestamp`"),
        ('ENGINE_TTL "toDateTime(ts) + toIntervalDay(90)"\n', ""),
    ],
    "pipes/top_actions.pipe": [
        ("{{DateTime64(start, '2024-01-01 00:00:00.000',",
         "{{DateTime(start, '2024-01-01 00:00:00',"),
    ],
}

#: Days ago, session, action: page views within the data source's 90-day TTL (older rows
#: would be dropped by a merge on the embedded backend).
VIEWS = [(40, "s1", "scroll"), (30, "s1", "click"), (25, "s2", "view"), (10, "s2", "click"),
         (9, "s3", "click"), (8, "s3", "view")]
_TODAY = datetime.datetime.now(datetime.timezone.utc).replace(hour=0, minute=0, second=0,
                                                                microsecond=0)


def _days_ago(days: int) -> datetime.datetime:
    return _TODAY - datetime.timedelta(days=days)


#: What a flock.js-style tracker sends: ISO timestamps with milliseconds and "Z".
PAGE_VIEWS = [{"timestamp": _days_ago(days).strftime("%Y-%m-%dT%H:%M:%S.250Z"),
               "session_id": session, "action": action, "tags": ["a"], "payload": "{}"}
              for days, session, action in VIEWS]
#: top_actions with its defaults: everything since 2024-01-01, most hits first.
TOP = [{"action": "click", "hits": 3}, {"action": "view", "hits": 2},
       {"action": "scroll", "hits": 1}]


def _project(target: Path, backend: str) -> str:
    shutil.copytree(EXAMPLES, target, dirs_exist_ok=True)
    if backend == "clickhouse":
        for name, edits in CLICKHOUSE_18_EDITS.items():
            path = target / name
            text = path.read_text()
            for old, new in edits:
                assert text.count(old) == 1, (name, old)
                text = text.replace(old, new)
            path.write_text(text)
    return str(target)


@pytest.fixture(scope="module", params=["clickhouse", "embedded"])
def examples(request: pytest.FixtureRequest,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    server = request.getfixturevalue("clickhouse_server") if request.param == "clickhouse" \
        else None
    project = _project(tmp_path_factory.mktemp("api_examples"), request.param)
    gateway = start_gateway(request.param, tmp_path_factory.mktemp("gateway"), server=server,
                            project_dir=project)
    try:
        tokens = {t["name"]: t["token"] for t in
                  call(gateway, "GET", "/v0/tokens").json()["tokens"]}
        # Section 1: the tracker's POST (application/json, NDJSON body, no trailing newline).
        response = call(gateway, "POST", "/v0/events",
                        params={"name": "page_views", "wait": "true"},
                        body=ndjson(PAGE_VIEWS).rstrip(b"\n"),
                        headers={"Content-Type": "application/json"},
                        token=tokens["tracker_append"])
        assert response.status == 200, response.body
        assert response.json() == {"successful_rows": len(PAGE_VIEWS), "quarantined_rows": 0}
        gateway.token = tokens["dashboard_read"]  # every call below is the dashboard's
        yield gateway
    finally:
        code = gateway.stop()
        assert code == 0, f"gateway exited with {code}:\n{gateway.log_tail()}"


def pipe(gateway: GatewayProcess, name: str, **params: Any) -> Response:
    return call(gateway, "GET", f"/v0/pipes/{name}.json", params=params)


def data(response: Response) -> list[dict[str, Any]]:
    assert response.status == 200, response.body
    rows: list[dict[str, Any]] = response.json()["data"]
    return rows


def test_top_actions_with_its_defaults(examples: GatewayProcess) -> None:
    # LIMIT {{Int32(limit, 10)}}: 18.16 takes only a plain number there.
    response = pipe(examples, "top_actions")
    assert data(response) == TOP
    assert [m["name"] for m in response.json()["meta"]] == ["action", "hits"]


def test_top_actions_with_parameters(examples: GatewayProcess) -> None:
    assert data(pipe(examples, "top_actions", limit="2")) == TOP[:2]
    assert data(pipe(examples, "top_actions", limit="0")) == []
    # Client options are not parameters (TS SDK, CLI).
    assert data(pipe(examples, "top_actions", limit="1", **{"from": "ts-sdk",
                                                             "cli_version": "6.5.5"})) == TOP[:1]
    start = _days_ago(20).strftime("%Y-%m-%d %H:%M:%S")
    assert data(pipe(examples, "top_actions", start=start)) == \
        [{"action": "click", "hits": 2}, {"action": "view", "hits": 1}]
    assert data(pipe(examples, "top_actions", action="click", start=start)) == \
        [{"action": "click", "hits": 2}]
    # The CLI and verdin switch to a form POST for long URLs.
    form = call(examples, "POST", "/v0/pipes/top_actions.json", body=b"limit=1&action=view",
                headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert data(form) == [{"action": "view", "hits": 2}]
    as_json = call(examples, "POST", "/v0/pipes/top_actions.json",
                   body=json.dumps({"limit": 1}).encode(),
                   headers={"Content-Type": "application/json"})
    assert data(as_json) == TOP[:1]


@pytest.mark.parametrize("limit", ["1; DROP TABLE page_views", "1 OR 1=1", "1e3", "-",
                                   "2147483648", "10) UNION ALL SELECT name, 1 FROM system.users --"])
def test_top_actions_refuses_a_bad_limit(examples: GatewayProcess, limit: str) -> None:
    response = pipe(examples, "top_actions", limit=limit)
    assert response.status == 400
    assert response.json()["error"] == \
        f"Template Syntax Error: Error validating '{limit}' to type Int32"


def test_q_pages_over_the_endpoint(examples: GatewayProcess) -> None:
    # verdin's paging: q over _ (section 4.1).
    assert data(pipe(examples, "top_actions", q="SELECT * FROM _ LIMIT 50 OFFSET 0")) == TOP
    assert data(pipe(examples, "top_actions", limit="3",
                     q="SELECT action FROM _ LIMIT 1 OFFSET 1")) == [{"action": "view"}]


def test_paged_endpoint(examples: GatewayProcess) -> None:
    # OFFSET {{Int32(page, 0) * Int32(page_size, 100)}}: a computed number, also a literal.
    actions = [row["action"] for row in PAGE_VIEWS]
    for page in range(4):
        rows = data(pipe(examples, "page_views_paged", page_size="2", page=str(page)))
        assert [row["action"] for row in rows] == actions[2 * page: 2 * page + 2]
    assert len(data(pipe(examples, "page_views_paged"))) == len(PAGE_VIEWS)
    assert call(examples, "GET", "/v0/sql",
                params={"q": "SELECT count() AS n FROM page_views"}).json()["data"] == \
        [{"n": len(PAGE_VIEWS)}]


def test_query_api_examples(examples: GatewayProcess) -> None:
    # Section 4.3: the CLI's wrapper, a text/plain body (TS SDK) and a form (verdin).
    response = call(examples, "GET", "/v0/sql", params={
        "q": "SELECT * FROM (select 1) LIMIT 100 FORMAT JSON", "release_replacements": "true"})
    assert data(response) == [{"1": 1}]
    response = call(examples, "POST", "/v0/sql", body=b"SELECT 1 FORMAT JSON",
                    headers={"Content-Type": "text/plain"})
    assert data(response) == [{"1": 1}]
    response = call(examples, "POST", "/v0/sql", body=b"p=1&q=select+1+FORMAT+JSON",
                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert data(response) == [{"1": 1}]
    # A template over /v0/sql, with a typed LIMIT.
    response = call(examples, "GET", "/v0/sql", params={
        "q": "% SELECT session_id FROM page_views ORDER BY ts LIMIT {{Int32(n, 2)}}", "n": "3"})
    assert data(response) == [{"session_id": "s1"}, {"session_id": "s1"}, {"session_id": "s2"}]
