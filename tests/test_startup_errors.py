"""No traceback reaches a user (issue 20, item 8): each way a start can go wrong is one
clear line and exit code 2; a materialized view that fails on insert is a quarantined
row with the reason, not a 500; the ``stored`` counter counts rows ClickHouse has."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from conftest import PROJECT_DIR, start_gateway
from gatewayclient import call, ndjson, sql
from tinyingest.datadir import lock_data_dir
from tinyingest.testing import TEST_ADMIN_TOKEN, ClickHouseServer


def serve(tmp_path: Path, *args: str, env: dict[str, str] | None = None,
          timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m tinyingest serve`` that is expected to stop by itself."""
    command = [sys.executable, "-m", "tinyingest", "serve", "--project", PROJECT_DIR,
               "--data-dir", str(tmp_path / "data"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "TINYINGEST_ADMIN_TOKEN": TEST_ADMIN_TOKEN,
                               **(env or {})})


def assert_clear_exit(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output, output
    for text in expected:
        assert text in output, output


@pytest.mark.parametrize("port", ["99999", "-1", "http"])
def test_a_port_out_of_range_is_an_error(tmp_path: Path, port: str) -> None:
    assert_clear_exit(serve(tmp_path, "--port", port), "--port", "expected 0-65535")


@pytest.mark.parametrize(("variable", "value", "expected"), [
    ("TINYINGEST_FLUSH_ROWS", "abc", "expected a whole number of at least 1"),
    ("TINYINGEST_MAX_BODY_BYTES", "8GiB", "expected a whole number"),
    ("TINYINGEST_FLUSH_INTERVAL", "-1", "expected a number of seconds above 0"),
    ("TINYINGEST_QUERY_TIMEOUT", "soon", "expected a number of seconds"),
    ("TINYINGEST_SPOOL_FSYNC", "yes", "expected one of none, always"),
    ("TINYINGEST_CLICKHOUSE_URL", "localhost:9000", "expected clickhouse://"),
    ("TINYINGEST_CLICKHOUSE_QUERY_URL", "clickhouse://h:port/db", "expected clickhouse://"),
])
def test_a_bad_setting_names_the_variable_and_the_form(tmp_path: Path, variable: str,
                                                       value: str, expected: str) -> None:
    result = serve(tmp_path, "--port", "0", env={variable: value})
    assert_clear_exit(result, variable, expected)
    assert result.stderr.count("\n") == 1, result.stderr  # one line
    assert not (tmp_path / "data").exists()  # nothing started


def test_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = serve(tmp_path, "--port", str(port))
    assert_clear_exit(result, f"cannot listen on 127.0.0.1:{port}: Address already in use",
                      "--port")


def test_a_second_serve_on_the_data_dir_is_one_line(tmp_path: Path) -> None:
    fd = lock_data_dir(str(tmp_path / "data"))  # as a running gateway holds it
    try:
        result = serve(tmp_path, "--port", "0")
    finally:
        os.close(fd)
    assert_clear_exit(result, "is in use by another tinyingest serve", f"pid {os.getpid()}")


def test_clickhouse_unreachable_at_start_is_said_once_then_a_clear_exit(
        tmp_path: Path) -> None:
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    started = time.monotonic()
    result = serve(tmp_path, "--port", "0", "--clickhouse",
                   f"clickhouse://default:secret@127.0.0.1:{port}/default",
                   env={"TINYINGEST_CLICKHOUSE_STARTUP_WAIT": "2"})
    assert 2 <= time.monotonic() - started < 30
    assert_clear_exit(result, f"ClickHouse at 127.0.0.1:{port} did not answer within 2 s",
                      "TINYINGEST_CLICKHOUSE_STARTUP_WAIT")
    output = result.stdout + result.stderr
    assert output.count("not answering yet") == 1, output
    assert "secret" not in output


MV_PROJECT = {
    "datasources/items.datasource": """SCHEMA >
    `id` UInt64,
    `tag` String,
    `n` Int64

ENGINE "MergeTree"
ENGINE_SORTING_KEY "tag, id"
""",
    "datasources/item_totals.datasource": """SCHEMA >
    `tag` String,
    `total` Int64

ENGINE "SummingMergeTree"
ENGINE_SORTING_KEY "tag"
""",
    # A view that throws for some rows: the insert into items fails, after ClickHouse
    # may have stored the rows in items itself.
    "pipes/item_totals_mv.pipe": """NODE totals
SQL >
    SELECT tag, n + throwIf(n > 100) AS total FROM items

TYPE materialized
DATASOURCE item_totals
""",
}


@pytest.mark.parametrize("backend", ["clickhouse", "embedded"])
def test_a_failing_materialized_view_quarantines_rows_with_the_reason(
        request: pytest.FixtureRequest, tmp_path: Path, backend: str) -> None:
    project = tmp_path / "project"
    for name, text in MV_PROJECT.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(text)
    server = request.getfixturevalue("clickhouse_server") if backend == "clickhouse" else None
    gateway = start_gateway(backend, tmp_path / "data", server=server,
                            project_dir=str(project))
    tag = uuid.uuid4().hex
    try:
        body = ndjson([{"id": 1, "tag": tag, "n": 5}, {"id": 2, "tag": tag, "n": 500},
                       {"id": 3, "tag": tag, "n": 7}])
        response = call(gateway, "POST", "/v0/events",
                        params={"name": "items", "wait": "true"}, body=body)
        # Every row is kept: the view's refusal is a quarantined row, not an error.
        assert response.status == 200, response.body
        assert response.json() == {"successful_rows": 2, "quarantined_rows": 1}
        rows = sql(gateway, "SELECT c__error, c__raw FROM items_quarantine")
        assert len(rows) == 1 and '"id": "2"' in rows[0]["c__raw"], rows
        reason = rows[0]["c__error"][0]
        assert "a materialized view on 'items' failed" in reason, reason
        # The good rows reached the view.
        totals = sql(gateway, f"SELECT sum(total) AS t FROM item_totals WHERE tag = '{tag}'")
        assert int(totals[0]["t"]) == 12
    finally:
        assert gateway.stop() == 0
    log = gateway.log_tail(200)
    assert "Traceback" not in log, log
    assert "attempt 2/" not in log, log  # a view's refusal is not tried again


def _stored_and_accepted(gateway: object) -> tuple[float, float]:
    text = call(gateway, "GET", "/metrics", token=None).body.decode()  # type: ignore[arg-type]
    values = {"stored": 0.0, "accepted": 0.0}
    for line in text.splitlines():
        for outcome in values:
            if line.startswith(f'tinyingest_rows_total{{datasource="events",outcome="{outcome}"}}'):
                values[outcome] = float(line.split()[-1])
    return values["stored"], values["accepted"]


def test_stored_counts_rows_clickhouse_has_not_rows_accepted(tmp_path: Path) -> None:
    with ClickHouseServer() as server:  # this test's own, to stop
        gateway = start_gateway("clickhouse", tmp_path, server=server)
        try:
            response = call(gateway, "POST", "/v0/events", params={"name": "events",
                            "wait": "true"}, body=ndjson({"id": i, "tag": "up"} for i in range(10)))
            assert response.status == 200
            assert _stored_and_accepted(gateway) == (10, 10)
            server.kill()
            for _ in range(5):
                response = call(gateway, "POST", "/v0/events", params={"name": "events"},
                                body=ndjson({"id": i, "tag": "down"} for i in range(10)))
                assert response.status == 202
            time.sleep(1.0)  # inserts were tried, and failed
            assert _stored_and_accepted(gateway) == (10, 60)
            server.restart()
            deadline = time.monotonic() + 30
            while _stored_and_accepted(gateway)[0] < 60 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert _stored_and_accepted(gateway) == (60, 60)
        finally:
            assert gateway.stop() == 0
