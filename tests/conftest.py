"""Shared fixtures.

* ``clickhouse_server``: one private, real ``clickhouse-server`` per test session
  (:class:`tinyingest.testing.ClickHouseServer`); never skipped: a missing binary fails.
* ``sink``: each :class:`~tinyingest.sinks.Sink` implementation in turn, ids
  ``clickhouse`` / ``embedded``, each on a fresh database.
* :data:`FUZZ_REPORT`: what the fuzz tests tried and found, printed at the end of the run.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from tinyingest.sinks import Sink
from tinyingest.testing import ClickHouseServer, GatewayProcess

#: Counted by test_fuzz_ingest.py: inputs tried, answers by status, problems found.
FUZZ_REPORT: collections.Counter[str] = collections.Counter()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FUZZ_REPORT["inputs"]:
        problems = ", ".join(f"{FUZZ_REPORT[name]} {name}" for name in
                             ("5xx", "count mismatches", "parser disagreements"))
        statuses = ", ".join(f"{key}: {n}" for key, n in sorted(FUZZ_REPORT.items())
                             if key.startswith("status "))
        terminalreporter.write_line(
            f"fuzz ingest: {FUZZ_REPORT['inputs']} inputs tried "
            f"({FUZZ_REPORT['JSONTestSuite documents']} JSONTestSuite documents among them); "
            f"{problems}; {statuses}")


# -- ClickHouse server ---------------------------------------------------------------


@pytest.fixture(scope="session")
def clickhouse_server() -> Iterator[ClickHouseServer]:
    with ClickHouseServer() as server:
        yield server


# -- sinks ---------------------------------------------------------------------------

_database_numbers = itertools.count()


def _clickhouse_sink(server: ClickHouseServer) -> Iterator[Sink]:
    from tinyingest.sinks.clickhouse import ClickHouseSink

    # One database per test: tests never see each other's tables on the shared server.
    database = f"test_{next(_database_numbers)}"
    admin = ClickHouseSink(server.url)
    admin.execute(f"CREATE DATABASE {database}")
    sink = ClickHouseSink(server.url.rsplit("/", 1)[0] + "/" + database)
    try:
        yield sink
    finally:
        sink.close()
        admin.execute(f"DROP DATABASE IF EXISTS {database}")
        admin.close()


def _embedded_sink(tmp_path: Path) -> Iterator[Sink]:
    from tinyingest.sinks.embedded import EmbeddedSink

    # chDB hosts one engine per process: it must be closed before the next test's dir.
    sink = EmbeddedSink(str(tmp_path / "chdb"))
    try:
        yield sink
    finally:
        sink.close()


@pytest.fixture(params=["clickhouse", "embedded"])
def sink(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Sink]:
    if request.param == "clickhouse":
        yield from _clickhouse_sink(request.getfixturevalue("clickhouse_server"))
    else:
        yield from _embedded_sink(tmp_path)


# -- the gateway as users run it ---------------------------------------------------------

PROJECT_DIR = str(Path(__file__).parent / "project")

#: Short flush interval: tests wait for rows, not for the batching defaults.
GATEWAY_ENV = {"TINYINGEST_FLUSH_INTERVAL": "0.05", "TINYINGEST_MAX_BODY_BYTES": str(64 << 20)}


def start_gateway(backend: str, data_dir: Path, env: dict[str, str] | None = None,
                  server: ClickHouseServer | None = None,
                  args: list[str] | None = None,
                  project_dir: str = PROJECT_DIR) -> GatewayProcess:
    """A running ``tinyingest serve`` on ``backend``, with the tests' project (or another)."""
    url = None
    if backend == "clickhouse":
        assert server is not None
        from tinyingest.sinks.clickhouse import ClickHouseSink

        database = f"gw_{next(_database_numbers)}"
        admin = ClickHouseSink(server.url)
        admin.execute(f"CREATE DATABASE IF NOT EXISTS {database}")
        admin.close()
        url = server.url.rsplit("/", 1)[0] + "/" + database
    gateway = GatewayProcess(project_dir, str(data_dir), clickhouse_url=url,
                             env={**GATEWAY_ENV, **(env or {})}, args=args)
    gateway.start()
    return gateway


@pytest.fixture(scope="module", params=["clickhouse", "embedded"])
def gateway(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """One gateway per test module and backend; tests keep apart by a unique ``tag``."""
    server = request.getfixturevalue("clickhouse_server") if request.param == "clickhouse" \
        else None
    process = start_gateway(request.param, tmp_path_factory.mktemp("gateway"), server=server)
    try:
        yield process
    finally:
        code = process.stop()
        assert code == 0, f"gateway exited with {code}:\n{process.log_tail()}"
