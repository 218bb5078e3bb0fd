"""Storage backends behind one small interface.

* :class:`~tinyingest.sinks.clickhouse.ClickHouseSink`: a ClickHouse server or cluster over
  the native protocol (clickhouse-driver), for production;
* :class:`~tinyingest.sinks.embedded.EmbeddedSink`: ClickHouse in-process (chDB), the
  zero-setup default.

Both are blocking and not thread-safe: each one is used by one thread at a time
(:class:`~tinyingest.batcher.SinkPool`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from tinyingest.block import EncodedBlock


class SinkError(Exception):
    """ClickHouse refused or could not be reached. ``code`` is ClickHouse's error code if known."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class QueryResult:
    """A SELECT's result, enough to render Tinybird's / ClickHouse's JSON output."""

    meta: list[tuple[str, str]]  # (name, ClickHouse type)
    rows: list[tuple[Any, ...]]
    rows_read: int
    bytes_read: int
    elapsed: float
    rows_before_limit: int = 0


class Sink(Protocol):
    name: str  # "clickhouse" or "embedded", shown at startup and on /healthz
    database: str  # where the data sources' tables live

    def execute(self, sql: str) -> None:
        """Run a statement that returns nothing (DDL)."""

    def insert(self, table: str, block: EncodedBlock) -> None:
        """Insert all rows of ``block`` into ``table`` as one INSERT, or raise SinkError."""

    def query(self, sql: str, *, readonly: bool = True, max_execution_time: float = 10.0,
              max_result_rows: int = 0, query_id: str | None = None,
              settings: dict[str, Any] | None = None) -> QueryResult:
        """Run a SELECT; with ``readonly`` the query cannot change data or settings."""

    def cancel(self, query_id: str) -> bool:
        """Stop the running query ``query_id`` (the engine does so at its next block);
        False if the engine does not list it (not started yet, or already ended). Safe to
        call from another thread while the query runs."""

    def close(self) -> None: ...
