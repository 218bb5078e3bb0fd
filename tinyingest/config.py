"""Settings: one frozen dataclass, filled from the command line and ``TINYINGEST_*``.

Every setting is listed once here and once in the README's configuration table.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from tinyingest.batcher import BatchLimits


class ConfigError(ValueError):
    """A setting the gateway cannot use; the message names the variable (or flag), the
    value and the form expected, in one line."""


def _env_int(name: str, default: int, minimum: int = 1) -> int:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        number = int(value.strip().replace("_", ""))
    except ValueError:
        number = minimum - 1
    if number < minimum:
        raise ConfigError(f"{name}={value!r}: expected a whole number of at least {minimum}, "
                          f"e.g. {name}={default}")
    return number


def _env_float(name: str, default: float, minimum: float = 0.0, *,
               zero: bool = False) -> float:
    """Seconds (or a ratio): a number above ``minimum`` (or equal to it with ``zero``)."""
    value = os.environ.get(name)
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not (number > minimum or (zero and number == minimum)) or number == float("inf"):
        bound = f"at least {minimum:g}" if zero else f"above {minimum:g}"
        raise ConfigError(f"{name}={value!r}: expected a number of seconds {bound}, "
                          f"e.g. {name}={default:g}")
    return number


def _env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = os.environ.get(name)
    if not value:
        return default
    if value not in choices:
        raise ConfigError(f"{name}={value!r}: expected one of {', '.join(choices)}")
    return value


def _env_url(name: str) -> str | None:
    value = os.environ.get(name)
    return check_clickhouse_url(value, name) if value else None


def check_clickhouse_url(url: str, origin: str) -> str:
    """``url`` if it has the form ``clickhouse://user:password@host:port/db``, else
    :class:`ConfigError` naming ``origin`` (the flag or variable it came from)."""
    expected = "expected clickhouse://user:password@host:9000/database"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise ConfigError(f"{origin}: {exc}: {expected}") from None
    if parts.scheme not in ("clickhouse", "clickhouse+native", "clickhouses") \
            or not parts.hostname:
        shown = redact_url(url)
        raise ConfigError(f"{origin}={shown!r}: {expected}")
    return url


def redact_url(url: str) -> str:
    """``url`` without its password (for messages)."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


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
    #: Seconds a starting gateway waits for a ClickHouse server that does not answer
    #: (TINYINGEST_CLICKHOUSE_STARTUP_WAIT; 0: exit at once), saying so once.
    clickhouse_startup_wait: float = 30.0
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
        """Defaults, then ``TINYINGEST_*`` variables, then ``overrides`` (not None).

        :raises ConfigError: a variable (or the ClickHouse URL) has a value the gateway
            cannot use; the message names it and the form expected.
        """
        values: dict[str, object] = {
            "admin_token": os.environ.get("TINYINGEST_ADMIN_TOKEN") or None,
            "clickhouse_query_url": _env_url("TINYINGEST_CLICKHOUSE_QUERY_URL"),
            "clickhouse_startup_wait": _env_float("TINYINGEST_CLICKHOUSE_STARTUP_WAIT",
                                                  cls.clickhouse_startup_wait, zero=True),
            "max_body_bytes": _env_int("TINYINGEST_MAX_BODY_BYTES", cls.max_body_bytes),
            "max_buffered_body_bytes": _env_int("TINYINGEST_MAX_BUFFERED_BODY_BYTES",
                                                cls.max_buffered_body_bytes),
            "max_compression_ratio": _env_int("TINYINGEST_MAX_COMPRESSION_RATIO",
                                              cls.max_compression_ratio, minimum=0),
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
                                            cls.body_idle_timeout, zero=True),
            "max_connections": _env_int("TINYINGEST_MAX_CONNECTIONS", cls.max_connections),
            "clickhouse_timeout": _env_float("TINYINGEST_CLICKHOUSE_TIMEOUT",
                                             cls.clickhouse_timeout),
            "drain_timeout": _env_float("TINYINGEST_DRAIN_TIMEOUT", cls.drain_timeout,
                                        zero=True),
            "spool_max_bytes": _env_int("TINYINGEST_SPOOL_MAX_BYTES", cls.spool_max_bytes),
            "spool_fsync": _env_choice("TINYINGEST_SPOOL_FSYNC", cls.spool_fsync,
                                       ("none", "always")),
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
        url = values.get("clickhouse_url")
        if isinstance(url, str):
            check_clickhouse_url(url, "--clickhouse / TINYINGEST_CLICKHOUSE_URL")
        return cls(**values)  # type: ignore[arg-type]
