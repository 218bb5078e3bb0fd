"""The gateway process: startup, shutdown, tokens, and memory while a big body streams."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import PROJECT_DIR, start_gateway
from gatewayclient import call, ndjson, sql
from tinyingest.testing import TEST_ADMIN_TOKEN, ClickHouseServer, GatewayProcess

BACKENDS = ["clickhouse", "embedded"]


def _server(request: pytest.FixtureRequest, backend: str) -> ClickHouseServer | None:
    return request.getfixturevalue("clickhouse_server") if backend == "clickhouse" else None


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigterm_flushes_accepted_rows(backend: str, tmp_path: Path,
                                       request: pytest.FixtureRequest) -> None:
    server = _server(request, backend)
    # A long flush interval: the rows are still pending when SIGTERM arrives.
    gateway = start_gateway(backend, tmp_path, {"TINYINGEST_FLUSH_INTERVAL": "60"}, server)
    tag = uuid.uuid4().hex
    response = call(gateway, "POST", "/v0/events", params={"name": "events"},
                    body=ndjson({"id": i, "tag": tag} for i in range(100)))
    assert response.status == 202
    assert gateway.stop() == 0
    # Same storage, new process: the rows were flushed before exit.
    restarted = GatewayProcess(PROJECT_DIR, gateway.data_dir, clickhouse_url=gateway.clickhouse_url)
    with restarted:
        rows = sql(restarted, f"SELECT count() AS n FROM events WHERE tag = '{tag}'")
        assert int(rows[0]["n"]) == 100


def test_datafile_error_stops_startup_with_file_and_line(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "datasources").mkdir(parents=True)
    (project / "datasources" / "bad.datasource").write_text(
        "SCHEMA >\n    `a` UInt8,\n    `b` NoSuchType\n")
    gateway = GatewayProcess(str(project), str(tmp_path / "data"), startup_timeout=30)
    with pytest.raises(RuntimeError, match="exited with 2"):
        gateway.start()
    assert "bad.datasource:3" in gateway.log_tail()


def test_admin_token_is_generated_once_and_kept(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = {"TINYINGEST_ADMIN_TOKEN": ""}
    with GatewayProcess(PROJECT_DIR, str(data_dir), env=env) as first:
        token_file = data_dir / "admin_token"
        token = token_file.read_text().strip()
        assert oct(token_file.stat().st_mode & 0o777) == "0o600"
        assert token in first.log_tail()  # printed once, on creation
        assert call(first, "GET", "/v0/datasources", token=token).status == 200
        assert call(first, "GET", "/v0/datasources", token=TEST_ADMIN_TOKEN).status == 403
    with GatewayProcess(PROJECT_DIR, str(data_dir), env=env) as second:
        assert token_file.read_text().strip() == token
        assert call(second, "GET", "/v0/datasources", params={"token": token},
                    token=None).status == 200
        assert second.log_tail().count(token) == 1  # the first start's line only


def test_init_writes_an_example_project_that_serves(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "tinyingest", "init", str(tmp_path / "p")], check=True,
                   capture_output=True)
    assert (tmp_path / "p" / "datasources" / "events.datasource").exists()
    again = subprocess.run([sys.executable, "-m", "tinyingest", "init", str(tmp_path / "p")],
                           capture_output=True)
    assert again.returncode == 1  # never overwrites
    with GatewayProcess(str(tmp_path / "p"), str(tmp_path / "data")) as gateway:
        body = b'{"timestamp":"2024-01-01 10:00:00","user_id":1,"event":"click","value":1.5}'
        response = call(gateway, "POST", "/v0/events", params={"name": "events", "wait": "true"},
                        body=body)
        assert response.json() == {"successful_rows": 1, "quarantined_rows": 0}
        assert sql(gateway, "SELECT event, user_id FROM events") == \
            [{"event": "click", "user_id": 1}]


def _rss_mib(pid: int) -> tuple[int, int]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) >> 10, int(fields["VmHWM"].split()[0]) >> 10


def _stream_rows(total_bytes: int, tag: str) -> Iterator[bytes]:
    line = json.dumps({"id": 1, "tag": tag, "ts": "2024-01-02 03:04:05", "name": "stream",
                       "doc": "x" * 40}).encode() + b"\n"
    chunk = line * (1 << 20 // len(line))
    for _ in range(total_bytes // len(chunk)):
        yield chunk


def _upload_keeps_memory_flat(server: ClickHouseServer, tmp_path: Path, mib: int) -> None:
    gateway = start_gateway("clickhouse", tmp_path, {"TINYINGEST_MAX_BODY_BYTES": str(8 << 30)},
                            server)
    try:
        assert gateway.pid is not None
        before, _ = _rss_mib(gateway.pid)
        tag = uuid.uuid4().hex
        response = call(gateway, "POST", "/v0/events", params={"name": "events", "wait": "true"},
                        body=_stream_rows(mib << 20, tag), timeout=600)
        assert response.status == 200, response.body
        rows = response.json()["successful_rows"]
        _, peak = _rss_mib(gateway.pid)
        stored = sql(gateway, f"SELECT count() AS n FROM events WHERE tag = '{tag}'")[0]["n"]
        assert int(stored) == rows > 0
        # A body held in memory would add its own size; streaming adds a few blocks at most.
        assert peak - before < 150, (before, peak)
    finally:
        assert gateway.stop() == 0


def test_streamed_upload_keeps_memory_flat(clickhouse_server: ClickHouseServer,
                                           tmp_path: Path) -> None:
    _upload_keeps_memory_flat(clickhouse_server, tmp_path, 300)


@pytest.mark.soak
def test_one_gib_upload_keeps_memory_flat(clickhouse_server: ClickHouseServer,
                                          tmp_path: Path) -> None:
    _upload_keeps_memory_flat(clickhouse_server, tmp_path, 1024)


def test_gateway_without_chdb_explains_how_to_install(tmp_path: Path) -> None:
    # The embedded engine is an extra: without it the error must say what to do.
    script = ("import sys; sys.modules['chdb'] = None; "
              "from tinyingest.cli import main; sys.exit(main(sys.argv[1:]))")
    result = subprocess.run([sys.executable, "-c", script, "serve", "--project", PROJECT_DIR,
                             "--data-dir", str(tmp_path), "--port", "0"],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "TINYINGEST_ADMIN_TOKEN": TEST_ADMIN_TOKEN})
    assert result.returncode != 0
    assert "tinyingest[embedded]" in result.stderr


def test_workers_share_the_port_and_drain_on_sigterm(clickhouse_server: ClickHouseServer,
                                                     tmp_path: Path) -> None:
    gateway = start_gateway("clickhouse", tmp_path, server=clickhouse_server,
                            args=["--workers", "2"])
    tag = uuid.uuid4().hex
    try:
        # Both workers accept connections (the kernel picks one per connection: with
        # concurrent clients both get some).
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(16) as pool:
            pids = set(pool.map(lambda _: call(gateway, "GET", "/healthz", token=None)
                                .json()["pid"], range(400)))
        assert len(pids) == 2, pids
        for i in range(20):
            response = call(gateway, "POST", "/v0/events", params={"name": "events"},
                            body=ndjson({"id": i * 10 + j, "tag": tag} for j in range(10)))
            assert response.status == 202
        def counted(outcome: str) -> float:
            metrics = call(gateway, "GET", "/metrics", token=None).body.decode()
            lines = [line for line in metrics.splitlines() if line.startswith(
                f'tinyingest_rows_total{{datasource="events",outcome="{outcome}"}}')]
            return float(lines[0].split()[-1]) if lines else 0.0

        assert counted("accepted") >= 200  # summed over workers
        deadline = time.monotonic() + 30  # stored: once ClickHouse has them
        while counted("stored") < 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert counted("stored") >= 200
    finally:
        assert gateway.stop() == 0  # SIGTERM reaches every worker, each flushes and exits 0
    with GatewayProcess(PROJECT_DIR, str(tmp_path), clickhouse_url=gateway.clickhouse_url) as again:
        assert int(sql(again, f"SELECT count() AS n FROM events WHERE tag = '{tag}'")[0]["n"]) == 200


def test_workers_need_a_clickhouse_server(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "tinyingest", "serve", "--project", PROJECT_DIR,
                             "--data-dir", str(tmp_path), "--workers", "2"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--clickhouse" in result.stderr


@pytest.mark.parametrize("stall", ["headers", "body"])
def test_stalled_clients_are_disconnected(stall: str, tmp_path: Path,
                                          clickhouse_server: ClickHouseServer) -> None:
    import socket

    gateway = start_gateway("clickhouse", tmp_path, {"TINYINGEST_HEADER_TIMEOUT": "1",
                                                     "TINYINGEST_BODY_TIMEOUT": "1"},
                            server=clickhouse_server)
    try:
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=15) as sock:
            request = b"POST /v0/events?name=events HTTP/1.1\r\nHost: x\r\n"
            if stall == "body":
                request += (f"Authorization: Bearer {gateway.token}\r\n"
                            "Content-Length: 1000\r\n\r\n{\"id\": 1").encode()
            sock.sendall(request)  # ... and then nothing more (slowloris)
            received = b""
            while chunk := sock.recv(4096):  # returns b"" when the gateway hangs up
                received += chunk
        assert b"200" not in received.split(b"\r\n", 1)[0]
    finally:
        assert gateway.stop() == 0


def test_type_the_server_lacks_is_a_clear_startup_error(clickhouse_server: ClickHouseServer,
                                                        tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "datasources").mkdir(parents=True)
    (project / "datasources" / "modern.datasource").write_text(
        "SCHEMA >\n    `at` DateTime64(3) `json:$.at`\n")
    from conftest import _database_numbers
    from tinyingest.sinks.clickhouse import ClickHouseSink

    database = f"gw_{next(_database_numbers)}"
    admin = ClickHouseSink(clickhouse_server.url)
    admin.execute(f"CREATE DATABASE {database}")
    admin.close()
    gateway = GatewayProcess(str(project), str(tmp_path / "data"),
                             clickhouse_url=clickhouse_server.url.rsplit("/", 1)[0] + "/" + database)
    with pytest.raises(RuntimeError, match="exited with 2"):
        gateway.start()
    log = gateway.log_tail()
    assert "modern.datasource" in log and "'at' has type DateTime64" in log


def _fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def test_body_over_the_limit_gets_413_with_bounded_memory(clickhouse_server: ClickHouseServer,
                                                          tmp_path: Path) -> None:
    """D2, short: a chunked body past TINYINGEST_MAX_BODY_BYTES stops at the limit."""
    gateway = start_gateway("clickhouse", tmp_path, {"TINYINGEST_MAX_BODY_BYTES": str(32 << 20)},
                            server=clickhouse_server)
    try:
        assert gateway.pid is not None
        before, _ = _rss_mib(gateway.pid)
        tag = uuid.uuid4().hex
        try:
            response = call(gateway, "POST", "/v0/events", params={"name": "events"},
                            body=_stream_rows(96 << 20, tag), timeout=120)
            status = response.status
        except OSError:
            status = 0  # the gateway answered 413 and closed while we were still sending
        _, peak = _rss_mib(gateway.pid)
        assert status in (413, 0)
        assert peak - before < 150, (before, peak)
        # Rows before the limit were accepted as they streamed (documented); none after it.
        stored = int(sql(gateway, f"SELECT count() AS n FROM events WHERE tag = '{tag}'")[0]["n"])
        assert stored * 60 < (40 << 20)
    finally:
        assert gateway.stop() == 0


def test_client_aborts_mid_body_leak_nothing(clickhouse_server: ClickHouseServer,
                                             tmp_path: Path) -> None:
    """D5, short: 20 uploads cut at half their body; the gateway stays healthy and tidy."""
    import socket

    gateway = start_gateway("clickhouse", tmp_path, server=clickhouse_server)
    try:
        assert gateway.pid is not None
        call(gateway, "GET", "/healthz", token=None)
        fds_before = _fds(gateway.pid)
        line = json.dumps({"id": 1, "tag": "aborted"}).encode() + b"\n"
        body = line * (4 << 20 // len(line))
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
                sock.sendall(f"POST /v0/events?name=events HTTP/1.1\r\nHost: x\r\n"
                             f"Authorization: Bearer {gateway.token}\r\n"
                             f"Content-Length: {len(body)}\r\n\r\n".encode())
                sock.sendall(body[: len(body) // 2])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            health = call(gateway, "GET", "/healthz", token=None).json()
            if health["requests_in_flight"] == 0:
                break
            time.sleep(0.1)
        assert health["requests_in_flight"] == 0  # every aborted request was let go
        assert _fds(gateway.pid) <= fds_before + 2  # connections closed, nothing leaked
    finally:
        assert gateway.stop() == 0
