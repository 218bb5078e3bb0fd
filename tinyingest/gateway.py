"""The running gateway: storage, data sources, their batchers; one ingest per request.

:class:`Gateway` is built once at startup (tables created, batchers ready) and handed
to every handler. :class:`Ingest` is one request's stream: decoded bytes in, blocks
out to the data source's batcher and bad rows to its quarantine batcher.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass

from tinyingest import _pyparser, ddl, metrics, parser
from tinyingest.batcher import TableBatcher, Writer
from tinyingest.config import Settings
from tinyingest.datafiles import DataSource, Project
from tinyingest.errors import ErrorCode
from tinyingest.native import encode_block
from tinyingest.quarantine import quarantine_rows
from tinyingest.schema import ColumnSpec
from tinyingest.sinks import QueryResult, Sink

log = logging.getLogger("tinyingest")

#: Rows handed from a request's parser to the batcher at a time: keeps a streaming
#: upload's memory flat whatever its size.
BLOCK_ROWS = 65_536

#: Row errors that mean the row could not be read at all (Tinybird's "invalid_lines").
_UNREADABLE = frozenset({ErrorCode.INVALID_JSON, ErrorCode.NOT_OBJECT, ErrorCode.BAD_CSV,
                         ErrorCode.FIELD_COUNT, ErrorCode.ROW_TOO_LONG, ErrorCode.TOO_DEEP})


@dataclass(slots=True)
class Table:
    """A data source as the gateway serves it."""

    datasource: DataSource
    ndjson_columns: tuple[ColumnSpec, ...]  # what NDJSON rows fill (a path, not computed)
    csv_columns: tuple[ColumnSpec, ...]  # what CSV fields fill, in order (not computed)
    batcher: TableBatcher
    quarantine: TableBatcher
    created_at: float


class Gateway:
    def __init__(self, settings: Settings, sink: Sink, project: Project) -> None:
        self.settings = settings
        self.sink = sink
        self.project = project
        self.writer = Writer(sink)
        self.tables: dict[str, Table] = {}

    async def start(self) -> None:
        """Create every data source's table and quarantine table (idempotent)."""
        database = self.sink.database
        for datasource in self.project.datasources.values():
            await self.writer.run(lambda ds=datasource: self._create(ds, database))  # type: ignore[misc]
            self.tables[datasource.name] = self._table(datasource)
        log.info("parser: %s; backend: %s (%s); data sources: %s", parser.IMPLEMENTATION,
                 self.sink.name, self.sink, ", ".join(sorted(self.tables)) or "none")

    def _create(self, datasource: DataSource, database: str) -> None:
        self.sink.execute(ddl.create_table_sql(datasource, database))
        self.sink.execute(ddl.create_quarantine_sql(datasource, database))

    def _table(self, datasource: DataSource) -> Table:
        writable = tuple(c for c in datasource.columns
                         if c.default_kind not in ("MATERIALIZED", "ALIAS"))
        ndjson = tuple(c for c in writable if c.path is not None)
        limits = self.settings.batch
        return Table(
            datasource=datasource,
            ndjson_columns=ndjson,
            csv_columns=writable,
            batcher=TableBatcher(self.writer, datasource.name, ndjson, limits),
            quarantine=TableBatcher(self.writer, datasource.quarantine_name, (), limits),
            created_at=time.time(),
        )

    async def query(self, sql: str) -> QueryResult:
        settings = self.settings
        return await self.writer.run(lambda: self.sink.query(
            sql, readonly=True, max_execution_time=settings.query_timeout,
            max_result_rows=settings.query_max_rows))

    async def close(self) -> None:
        for table in self.tables.values():
            await table.batcher.close()
            await table.quarantine.close()
        await asyncio.get_running_loop().run_in_executor(None, self.writer.close)


class Ingest:
    """One request's rows: ``feed`` decoded body bytes, then ``finish``.

    Rows go to the batcher in blocks of :data:`BLOCK_ROWS` while the body streams in;
    ``stored`` resolves when ClickHouse has acknowledged every one of them.
    """

    def __init__(self, gateway: Gateway, table: Table, fmt: str, *,
                 csv_options: dict[str, bytes | None] | None = None,
                 import_id: str = "") -> None:
        self.table = table
        self.import_id = import_id
        self._max_row_bytes = gateway.settings.max_row_bytes
        self._delimiter: bytes | None = None
        if fmt == "csv":
            options = csv_options or {}
            self._delimiter = options.get("delimiter") or b","
            self._columns: Sequence[ColumnSpec] = table.csv_columns
            self._parser: _pyparser.NDJSONParser | _pyparser.CSVParser = \
                parser.CSVParser(self._columns, max_row_bytes=self._max_row_bytes,
                                 delimiter=self._delimiter,
                                 escapechar=options.get("escapechar"))
        else:
            self._columns = table.ndjson_columns
            self._parser = parser.NDJSONParser(self._columns, max_row_bytes=self._max_row_bytes)
        self._rows_since_take = 0
        self._futures: list[asyncio.Future[None]] = []
        self.successful_rows = 0
        self.quarantined_rows = 0
        self.invalid_lines = 0

    def feed(self, data: bytes) -> None:
        if not data:
            return
        self._rows_since_take += self._parser.feed(data)
        if self._rows_since_take >= BLOCK_ROWS:
            self._hand_over()

    def finish(self) -> None:
        self._parser.finish()
        self._hand_over()
        metrics.count_rows(self.table.datasource.name, self.successful_rows,
                           self.quarantined_rows)

    def _hand_over(self) -> None:
        block = self._parser.take_block()
        self._rows_since_take = 0
        if block.num_rows:
            encoded = encode_block(self._columns, block)
            self._futures.append(self.table.batcher.add(encoded))
            self.successful_rows += block.num_rows
        if block.errors:
            bad = quarantine_rows(self.table.datasource, self._columns, block.errors,
                                  csv_delimiter=self._delimiter, import_id=self.import_id,
                                  max_row_bytes=self._max_row_bytes)
            self._futures.append(self.table.quarantine.add(bad))
            self.quarantined_rows += len(block.errors)
            self.invalid_lines += sum(1 for e in block.errors if e.code in _UNREADABLE)

    async def backpressure(self) -> None:
        """While the table has much more pending than one flush, wait for a flush."""
        if self.table.batcher.pending_rows > 4 * BLOCK_ROWS and self._futures:
            # asyncio.wait: a failed insert is reported by stored(), not here.
            await asyncio.wait([self._futures[-1]])

    async def stored(self) -> None:
        """Wait until ClickHouse has every row of this request; raises SinkError."""
        if self._futures:
            await asyncio.gather(*self._futures)

    def discard_results(self) -> None:
        """For 202 answers: nobody awaits the inserts, but their errors must be consumed."""
        for future in self._futures:
            future.add_done_callback(_consume)


def _consume(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


def new_import_id() -> str:
    return secrets.token_hex(13).upper()
