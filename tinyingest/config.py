"""Settings: one frozen dataclass, filled from the command line and ``TINYINGEST_*``.

Every setting is listed once here and once in the README's configuration table.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from tinyingest.batcher import BatchLimits


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


@dataclass(frozen=True)
class Settings:
    project_dir: str = "."
    host: str = "127.0.0.1"
    port: int = 7181  # Tinybird Local's port
    #: ``clickhouse://user:password@host:9000/db``; None: the embedded engine (chDB).
    clickhouse_url: str | None = None
    #: Endpoint and /v0/sql queries connect with this URL (a read-only user, say) instead
    #: of ``clickhouse_url``; the gateway still sends ``readonly=1`` with every query.
    clickhouse_query_url: str | None = None
    data_dir: str = "./.tinyingest"
    #: TINYINGEST_ADMIN_TOKEN; None: generated on first start and kept in data_dir.
    admin_token: str | None = None
    #: Largest request body after decompression (TINYINGEST_MAX_BODY_BYTES).
    max_body_bytes: int = 8 << 30
    #: Largest body of any other request (TINYINGEST_MAX_BUFFERED_BODY_BYTES): /v0/sql,
    #: pipes, tokens are read whole before they run. Ingest bodies stream and get
    #: max_body_bytes once their token is checked.
    max_buffered_body_bytes: int = 1 << 20
    #: Most decoded bytes per compressed byte (past the first MiB) before a 413
    #: (TINYINGEST_MAX_COMPRESSION_RATIO; 0: no limit). NDJSON compresses 5-50 times.
    max_compression_ratio: int = 200
    #: Longest NDJSON line / CSV record; longer rows are quarantined (TINYINGEST_MAX_ROW_BYTES).
    max_row_bytes: int = 1 << 20
    #: Seconds to receive a request's headers (Tornado's default is 3600).
    header_timeout: float = 10.0
    #: Seconds to receive a whole body (Tornado's default: no limit).
    body_timeout: float = 3600.0
    #: Seconds a body may send nothing before its connection is closed (0: no limit).
    body_idle_timeout: float = 30.0
    #: Open client connections per process; more are answered 503 and closed. Kept below
    #: the open files limit (raised to its hard limit at start).
    max_connections: int = 10_000
    #: Seconds a ClickHouse server may take to answer before an insert is retried.
    clickhouse_timeout: float = 30.0
    #: Seconds a SIGTERM waits for requests in flight before flushing and exiting.
    drain_timeout: float = 30.0
    batch: BatchLimits = field(default_factory=BatchLimits)
    #: Unconfirmed rows kept on disk before new rows are refused with 503.
    spool_max_bytes: int = 1 << 30
    #: "none": survives a crash of the process; "always": fsync per request, survives power loss.
    spool_fsync: str = "none"
    #: Encoded rows held in memory for all tables before new rows are refused with 503.
    max_pending_bytes: int = 256 << 20
    #: Seconds the oldest pending row may wait for a busy ClickHouse (every insert
    #: connection taken; not the flush interval) before new rows get 503:
    #: with an insert's own time added, accepted rows stay queryable within a second.
    max_pending_age: float = 0.5
    #: Endpoint and /v0/sql queries: seconds and rows before they are stopped.
    query_timeout: float = 10.0
    query_max_rows: int = 100_000
    #: Endpoint and /v0/sql queries that run at once, each on a connection of its own
    #: (a ClickHouse server's, or chDB's): inserts have theirs, so they never wait for one.
    query_connections: int = 4
    #: Queries that may wait for a query connection; more are answered 429.
    query_max_waiting: int = 16
    #: Inserts in flight at once on a ClickHouse server (one connection each): while the
    #: server writes one batch the next one is sent. chDB takes one at a time.
    insert_connections: int = 2

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Defaults, then ``TINYINGEST_*`` variables, then ``overrides`` (not None)."""
        values: dict[str, object] = {
            "admin_token": os.environ.get("TINYINGEST_ADMIN_TOKEN") or None,
            "clickhouse_query_url": os.environ.get("TINYINGEST_CLICKHOUSE_QUERY_URL") or None,
            "max_body_bytes": _env_int("TINYINGEST_MAX_BODY_BYTES", cls.max_body_bytes),
            "max_buffered_body_bytes": _env_int("TINYINGEST_MAX_BUFFERED_BODY_BYTES",
                                                cls.max_buffered_body_bytes),
            "max_compression_ratio": _env_int("TINYINGEST_MAX_COMPRESSION_RATIO",
                                              cls.max_compression_ratio),
            "max_row_bytes": _env_int("TINYINGEST_MAX_ROW_BYTES", cls.max_row_bytes),
            "batch": BatchLimits(
                flush_rows=_env_int("TINYINGEST_FLUSH_ROWS", BatchLimits.flush_rows),
                flush_bytes=_env_int("TINYINGEST_FLUSH_BYTES", BatchLimits.flush_bytes),
                flush_interval=_env_float("TINYINGEST_FLUSH_INTERVAL",
                                          BatchLimits.flush_interval),
            ),
            "header_timeout": _env_float("TINYINGEST_HEADER_TIMEOUT", cls.header_timeout),
            "body_timeout": _env_float("TINYINGEST_BODY_TIMEOUT", cls.body_timeout),
            "body_idle_timeout": _env_float("TINYINGEST_BODY_IDLE_TIMEOUT",
                                            cls.body_idle_timeout),
            "max_connections": _env_int("TINYINGEST_MAX_CONNECTIONS", cls.max_connections),
            "clickhouse_timeout": _env_float("TINYINGEST_CLICKHOUSE_TIMEOUT",
                                             cls.clickhouse_timeout),
            "drain_timeout": _env_float("TINYINGEST_DRAIN_TIMEOUT", cls.drain_timeout),
            "spool_max_bytes": _env_int("TINYINGEST_SPOOL_MAX_BYTES", cls.spool_max_bytes),
            "spool_fsync": os.environ.get("TINYINGEST_SPOOL_FSYNC") or cls.spool_fsync,
            "max_pending_bytes": _env_int("TINYINGEST_MAX_PENDING_BYTES", cls.max_pending_bytes),
            "max_pending_age": _env_float("TINYINGEST_MAX_PENDING_AGE", cls.max_pending_age),
            "query_timeout": _env_float("TINYINGEST_QUERY_TIMEOUT", cls.query_timeout),
            "query_max_rows": _env_int("TINYINGEST_QUERY_MAX_ROWS", cls.query_max_rows),
            "query_connections": _env_int("TINYINGEST_QUERY_CONNECTIONS",
                                          cls.query_connections),
            "query_max_waiting": _env_int("TINYINGEST_QUERY_MAX_WAITING",
                                          cls.query_max_waiting),
            "insert_connections": _env_int("TINYINGEST_INSERT_CONNECTIONS",
                                           cls.insert_connections),
        }
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values)  # type: ignore[arg-type]
