"""One gateway per data dir (issue 20, item 2): a second ``tinyingest serve`` on a data dir
in use exits 2 before touching it, so the first one's spool survives, and a kill -9 of the
first then loses no acknowledged row; a port in use stops startup before the data dir is
written."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from conftest import GATEWAY_ENV, PROJECT_DIR, start_gateway
from gatewayclient import call, ndjson, wait_for_rows
from tinyingest.testing import ClickHouseServer, GatewayProcess

BACKENDS = ["clickhouse", "embedded"]
ROWS = 1000


def _server(request: pytest.FixtureRequest, backend: str) -> ClickHouseServer | None:
    return request.getfixturevalue("clickhouse_server") if backend == "clickhouse" else None


def snapshot(data_dir: Path) -> dict[str, tuple[int, int, int, bytes]]:
    """Every file of the data dir but the test's log: inode, size, mtime and content.

    The running gateway's Prometheus files (``metrics/``, mmapped: a worker may still
    record the last request's duration) are compared by inode only: a second serve must
    not replace them, but their values are the live gateway's own.
    """
    files = {}
    for path in data_dir.rglob("*"):
        if path.is_file() and path.name != "gateway.log":
            stat = path.stat()
            name = str(path.relative_to(data_dir))
            if path.parent.name == "metrics":
                files[name] = (stat.st_ino, 0, 0, b"")
            else:
                files[name] = (stat.st_ino, stat.st_size, stat.st_mtime_ns, path.read_bytes())
    return files


def second_serve(gateway: GatewayProcess, *args: str, port: int | None = None,
                 data_dir: str | None = None) -> subprocess.CompletedProcess[str]:
    """``tinyingest serve`` as a user would start a second one (bounded in time)."""
    command = [sys.executable, "-m", "tinyingest", "serve", "--project", gateway.project_dir,
               "--data-dir", data_dir or gateway.data_dir,
               "--port", str(gateway.port if port is None else port), *args]
    if gateway.clickhouse_url:
        command += ["--clickhouse", gateway.clickhouse_url]
    env = {**os.environ, "TINYINGEST_ADMIN_TOKEN": gateway.token}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # it started serving (and forked): the test fails
        stdout, stderr = process.communicate()
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def restarted(gateway: GatewayProcess, args: list[str] | None = None) -> GatewayProcess:
    """The same data dir and database, with the tests' short flush interval (to start)."""
    return GatewayProcess(gateway.project_dir, gateway.data_dir, env=GATEWAY_ENV,
                          clickhouse_url=gateway.clickhouse_url, args=args)


def accept_rows(gateway: GatewayProcess, tag: str) -> None:
    for first in range(0, ROWS, 100):
        response = call(gateway, "POST", "/v0/events", params={"name": "events"},
                        body=ndjson({"id": i, "tag": tag} for i in range(first, first + 100)))
        assert response.status == 202, response.body


def stored(gateway: GatewayProcess, tag: str) -> int:
    rows = wait_for_rows(gateway, f"SELECT id FROM events WHERE tag = '{tag}' GROUP BY id",
                         ROWS, timeout=60)
    return len(rows)


def assert_refused(result: subprocess.CompletedProcess[str], data_dir: str,
                   pid: int | None) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "in use by another tinyingest serve" in result.stderr
    assert str(Path(data_dir).resolve()) in result.stderr
    if pid is not None:
        assert f"pid {pid}" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize("backend", BACKENDS)
def test_second_gateway_on_the_data_dir_is_refused_and_the_spool_survives(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    # Rows answered 202 and not flushed: they exist only in the first gateway's spool.
    first = start_gateway(backend, tmp_path, {"TINYINGEST_FLUSH_INTERVAL": "3600"},
                          _server(request, backend))
    tag = uuid.uuid4().hex
    try:
        accept_rows(first, tag)
        before = snapshot(tmp_path)
        assert any(name.startswith("spool/") and name.endswith(".log") for name in before)
        # Same data dir and same port, as a second `make serve` does.
        assert_refused(second_serve(first), first.data_dir, first.pid)
        assert snapshot(tmp_path) == before  # not one file touched
        # ... and on another port too: the data dir is what is refused.
        assert_refused(second_serve(first, port=free_port()), first.data_dir, first.pid)
        assert snapshot(tmp_path) == before
        first.kill()  # kill -9: the rows are still only in the spool
        # The lock died with the process: a restart is not refused.
        with restarted(first) as again:
            assert stored(again, tag) == ROWS
    finally:
        first.stop()


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()]


def test_workers_share_the_lock(clickhouse_server: ClickHouseServer, tmp_path: Path) -> None:
    first = start_gateway("clickhouse", tmp_path, {"TINYINGEST_FLUSH_INTERVAL": "3600"},
                          clickhouse_server, args=["--workers", "2"])
    tag = uuid.uuid4().hex
    workers: list[int] = []
    try:
        accept_rows(first, tag)  # both workers' spools hold some of them
        workers = _children(first.pid or 0)
        assert len(workers) == 2, workers
        before = snapshot(tmp_path)
        assert_refused(second_serve(first, "--workers", "2"), first.data_dir, first.pid)
        assert_refused(second_serve(first), first.data_dir, first.pid)
        assert snapshot(tmp_path) == before
        # The supervisor dies: its workers still run, and still hold the data dir.
        supervisor = first.pid
        first.kill()
        assert_refused(second_serve(first, port=free_port()), first.data_dir, supervisor)
        assert snapshot(tmp_path) == before
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while any(Path(f"/proc/{pid}").exists() for pid in workers) \
                and time.monotonic() < deadline:
            time.sleep(0.05)  # orphans: reaped by init
        # The last holder died: the lock is free.
        with restarted(first, ["--workers", "2"]) as again:
            assert stored(again, tag) == ROWS
    finally:
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        first.stop()


def test_a_port_in_use_stops_startup_before_the_data_dir_is_written(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        gateway = GatewayProcess(PROJECT_DIR, str(tmp_path / "unused"))
        for args in ([], ["--workers", "2", "--clickhouse", "clickhouse://127.0.0.1:1/default"]):
            result = second_serve(gateway, *args, port=port, data_dir=str(data_dir))
            assert result.returncode == 2, result.stderr[-3000:]
            assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
            assert "Traceback" not in result.stderr
            # Only the lock: no spool, token, engine or metrics.
            assert sorted(p.name for p in data_dir.iterdir()) == ["lock"]
