"""Editing a .datasource between two runs of the gateway, on both backends.

An added column is applied to the live tables at startup (``ALTER TABLE ... ADD COLUMN``,
to the table and its quarantine), and rows spooled before the edit are still stored;
any other change stops the start (exit 2) naming the file and the column, and changes
nothing; a spooled block ClickHouse refuses goes to the quarantine whole, with the
reason, or stays in the spool if even the quarantine refuses it.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from conftest import start_gateway
from gatewayclient import call, ndjson, sql, wait_for_rows
from tinyingest.testing import ClickHouseServer, GatewayProcess

BACKENDS = ["clickhouse", "embedded"]

ITEMS = """\
SCHEMA >
    `id` UInt64 `json:$.id`,
    `tag` String `json:$.tag`,
    {extra}`v` String `json:$.v`

ENGINE "MergeTree"
ENGINE_SORTING_KEY "tag, id"
"""

#: Spooled rows must outlive the process: nothing is flushed before the kill -9.
HOLD = {"TINYINGEST_FLUSH_INTERVAL": "600"}


def _server(request: pytest.FixtureRequest, backend: str) -> ClickHouseServer | None:
    return request.getfixturevalue("clickhouse_server") if backend == "clickhouse" else None


def _project(tmp_path: Path, extra: str = "", text: str | None = None) -> Path:
    """A project of one data source, ``items``, written into ``tmp_path``."""
    project = tmp_path / "project"
    (project / "datasources").mkdir(parents=True, exist_ok=True)
    (project / "datasources" / "items.datasource").write_text(
        text if text is not None else ITEMS.format(extra=extra))
    return project


def _post(gateway: GatewayProcess, rows: list[dict[str, object]], **params: str) -> None:
    response = call(gateway, "POST", "/v0/events", params={"name": "items", **params},
                    body=ndjson(rows))
    assert response.status in (200, 202), response.body


def _restart(gateway: GatewayProcess, project: Path, env: dict[str, str] | None = None
             ) -> GatewayProcess:
    """The same data dir and database, with the (edited) project."""
    restarted = GatewayProcess(str(project), gateway.data_dir,
                               clickhouse_url=gateway.clickhouse_url,
                               env={"TINYINGEST_FLUSH_INTERVAL": "0.05", **(env or {})})
    restarted.start()
    return restarted


def _quarantined(gateway: GatewayProcess, tag: str) -> list[dict[str, object]]:
    return sql(gateway, f"SELECT id, v, c__error FROM items_quarantine WHERE tag = '{tag}' "
                        "ORDER BY id")


@pytest.mark.parametrize("backend", BACKENDS)
def test_added_column_is_applied_at_startup(backend: str, tmp_path: Path,
                                            request: pytest.FixtureRequest) -> None:
    project = _project(tmp_path)
    gateway = start_gateway(backend, tmp_path / "data", server=_server(request, backend),
                            project_dir=str(project))
    tag = uuid.uuid4().hex
    try:
        _post(gateway, [{"id": i, "tag": tag, "v": str(i)} for i in range(50)], wait="true")
    finally:
        assert gateway.stop() == 0
    # A column in the middle, with a DEFAULT, in the table and in its quarantine.
    _project(tmp_path, extra="`extra` String `json:$.extra` DEFAULT 'none',\n    ")
    restarted = _restart(gateway, project)
    try:
        log = restarted.log_tail(200)
        assert "ADD COLUMN `extra` String DEFAULT 'none' AFTER `tag`" in log, log
        assert "ADD COLUMN `extra` Nullable(String) AFTER `tag`" in log, log
        old = sql(restarted, f"SELECT extra, count() AS n FROM items WHERE tag = '{tag}' "
                             "GROUP BY extra")
        assert old == [{"extra": "none", "n": 50}]
        _post(restarted, [{"id": 100, "tag": tag, "extra": "new", "v": "x"},
                          {"id": "not a number", "tag": tag, "extra": "bad", "v": "y"}],
              wait="true")
        assert sql(restarted, f"SELECT id, extra, v FROM items WHERE tag = '{tag}' "
                              "AND id = 100") == [{"id": 100, "extra": "new", "v": "x"}]
        bad = sql(restarted, f"SELECT id, extra, v FROM items_quarantine WHERE tag = '{tag}'")
        assert bad == [{"id": "not a number", "extra": "bad", "v": "y"}]
        # The column order is the datafile's.
        response = call(restarted, "GET", "/v0/sql",
                        params={"q": "SELECT * FROM items LIMIT 1"})
        assert [m["name"] for m in response.json()["meta"]] == ["id", "tag", "extra", "v"]
    finally:
        assert restarted.stop() == 0
    # A second start has nothing to add.
    again = _restart(restarted, project)
    try:
        assert sql(again, f"SELECT count() AS n FROM items WHERE tag = '{tag}'") == [{"n": 51}]
    finally:
        assert again.stop() == 0
    # (One log file for the three runs: only the second one altered.)
    assert again.log_tail(1000).count("adding column") == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_spooled_before_an_added_column_are_all_stored(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    project = _project(tmp_path)
    gateway = start_gateway(backend, tmp_path / "data", HOLD, _server(request, backend),
                            project_dir=str(project))
    tag = uuid.uuid4().hex
    # Several requests, several spooled blocks: 202 each, none flushed (interval 600 s).
    for start in range(0, 500, 100):
        _post(gateway, [{"id": i, "tag": tag, "v": str(i)} for i in range(start, start + 100)])
    gateway.kill()
    _project(tmp_path, extra="`extra` String `json:$.extra` DEFAULT 'none',\n    ")
    restarted = _restart(gateway, project)
    try:
        _post(restarted, [{"id": 1000, "tag": tag, "extra": "new", "v": "x"}], wait="true")
        rows = wait_for_rows(restarted, f"SELECT id, extra FROM items WHERE tag = '{tag}' "
                                        "ORDER BY id", 501)
        assert [row["id"] for row in rows] == [*range(500), 1000]
        assert {row["extra"] for row in rows[:500]} == {"none"}
        assert rows[500]["extra"] == "new"
        assert sql(restarted, "SELECT count() AS n FROM items_quarantine") == [{"n": 0}]
    finally:
        assert restarted.stop() == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_change_that_is_not_additive_stops_startup(backend: str, tmp_path: Path,
                                                     request: pytest.FixtureRequest) -> None:
    project = _project(tmp_path)
    gateway = start_gateway(backend, tmp_path / "data", server=_server(request, backend),
                            project_dir=str(project))
    tag = uuid.uuid4().hex
    try:
        _post(gateway, [{"id": i, "tag": tag, "v": str(i)} for i in range(10)], wait="true")
    finally:
        assert gateway.stop() == 0
    datafile = project / "datasources" / "items.datasource"
    changes = {
        # A changed type, plus an added column that must not be applied either.
        "`v` has type": ITEMS.format(extra="`extra` String DEFAULT 'x',\n    ")
        .replace("`v` String", "`v` Int32"),
        "'v' (String) of table 'items' is not in the datafile":
            ITEMS.format(extra="").replace(",\n    `v` String `json:$.v`", ""),
        "ordered by 'tag, id'": ITEMS.format(extra="").replace('"tag, id"', '"id"'),
    }
    for expected, text in changes.items():
        datafile.write_text(text)
        stopped = GatewayProcess(str(project), gateway.data_dir,
                                 clickhouse_url=gateway.clickhouse_url, startup_timeout=60)
        with pytest.raises(RuntimeError, match="exited with 2"):
            stopped.start()
        log = stopped.log_tail(20)
        assert str(datafile) in log and "changed nothing" in log, log
        assert expected.replace("`v` has type", "column 'v' has type Int32, but table "
                                "'items' has it as String") in log, log
        assert "Traceback" not in log, log
    # The tables are as they were: the original datafile starts, the rows are there.
    _project(tmp_path)
    restarted = _restart(gateway, project)
    try:
        response = call(restarted, "GET", "/v0/sql", params={
            "q": f"SELECT * FROM items WHERE tag = '{tag}' ORDER BY id"})
        body = response.json()
        assert [(m["name"], m["type"]) for m in body["meta"]] == [
            ("id", "UInt64"), ("tag", "String"), ("v", "String")]
        assert [row["v"] for row in body["data"]] == [str(i) for i in range(10)]
        response = call(restarted, "GET", "/v0/sql",
                        params={"q": "SELECT * FROM items_quarantine LIMIT 0"})
        assert "extra" not in [m["name"] for m in response.json()["meta"]]
    finally:
        assert restarted.stop() == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_spooled_rows_clickhouse_refuses_go_to_quarantine_whole(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    project = _project(tmp_path)
    gateway = start_gateway(backend, tmp_path / "data", HOLD, _server(request, backend),
                            project_dir=str(project))
    tag = uuid.uuid4().hex
    values = {i: ("oops" if i % 10 == 3 else str(i)) for i in range(200)}
    for start in range(0, 200, 50):
        _post(gateway, [{"id": i, "tag": tag, "v": values[i]} for i in range(start, start + 50)])
    gateway.kill()
    # A column ClickHouse computes from v: it cannot for the spooled rows whose v is not a
    # number, so it refuses them after the restart.
    _project(tmp_path, extra="`n` UInt64 DEFAULT toUInt64(v),\n    ")
    restarted = _restart(gateway, project)
    try:
        # Every row is somewhere: stored (with n), or in the quarantine whole, with the
        # reason (a refused block goes there whole: its good rows with it).
        union = (f"SELECT toString(id) AS id, v, toString(n) AS n, [] AS reasons FROM items "
                 f"WHERE tag = '{tag}' UNION ALL SELECT id, v, NULL AS n, c__error AS reasons "
                 f"FROM items_quarantine WHERE tag = '{tag}'")
        rows = wait_for_rows(restarted, union, 200)
        assert sorted(int(str(row["id"])) for row in rows) == list(range(200))
        for row in rows:
            assert row["v"] == values[int(str(row["id"]))]
            if row["reasons"]:
                (reason,) = row["reasons"]
                assert reason.startswith("ClickHouse refused the insert") and "oops" in reason
            else:
                assert row["n"] == row["v"]
        assert all(row["reasons"] for row in rows if row["v"] == "oops")
    finally:
        assert restarted.stop() == 0


def test_rows_the_quarantine_refuses_too_stay_spooled(clickhouse_server: ClickHouseServer,
                                                      tmp_path: Path) -> None:
    """Both tables altered behind the gateway's back: nothing can take the rows until the
    next start repairs the tables; they wait in the spool, and are not lost."""
    from tinyingest.sinks.clickhouse import ClickHouseSink

    project = _project(tmp_path)
    gateway = start_gateway("clickhouse", tmp_path / "data", HOLD, clickhouse_server,
                            project_dir=str(project))
    tag = uuid.uuid4().hex
    for start in range(0, 300, 100):
        _post(gateway, [{"id": i, "tag": tag, "v": str(i)} for i in range(start, start + 100)])
    admin = ClickHouseSink(gateway.clickhouse_url or "")
    try:
        admin.execute("ALTER TABLE items DROP COLUMN v")
        admin.execute("ALTER TABLE items_quarantine DROP COLUMN v")
    finally:
        admin.close()
    # SIGTERM flushes: ClickHouse refuses the rows, and the quarantine refuses them too.
    assert gateway.stop() == 0
    restarted = _restart(gateway, project)
    try:
        rows = wait_for_rows(restarted, f"SELECT id, v, c__error FROM items_quarantine "
                                        f"WHERE tag = '{tag}' ORDER BY toUInt64(id)", 300)
        assert [(row["id"], row["v"]) for row in rows] == [(str(i), str(i))
                                                           for i in range(300)]
        assert all("ClickHouse refused the insert" in row["c__error"][0] for row in rows)
        log = restarted.log_tail(200)
        assert log.count("the quarantine table refused 100 rows too; they stay in the "
                         "spool") == 3, log
        assert "ADD COLUMN `v` String AFTER `tag`" in log, log
    finally:
        assert restarted.stop() == 0
