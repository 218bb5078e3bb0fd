"""Retried requests are not stored twice: answers remembered by ``X-Request-Id``.

A client may send ``X-Request-Id: <id>`` (or ``?batch_id=<id>``, at most
:data:`MAX_REQUEST_ID_BYTES`) with an ingest request. Within :data:`WINDOW_SECONDS`, a
request whose id already got a 2xx answer is not ingested again: it gets the same answer,
with ``X-Idempotent-Replay: true``. A failed request (non-2xx) can be retried with the
same id.

Two layers, checked in this order:

* :class:`RecentRequests`, per process: answers this process gave, and the ids it is
  processing now (a second request with such an id gets 409 and ``Retry-After``);
* :class:`RequestLog`, a table in ClickHouse shared by every worker and gateway writing
  to the same database: a 2xx answer is written there before it is sent, so a retry
  that lands on another process (or after a restart) finds it.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any, TypeVar

from tinyingest.batcher import SinkPool
from tinyingest.block import EncodedBlock
from tinyingest.ddl import quote_identifier
from tinyingest.native import encode_rows
from tinyingest.sinks import Sink, SinkError
from tinyingest.template import sql_string

log = logging.getLogger("tinyingest.idempotency")

WINDOW_SECONDS = 24 * 60 * 60
MAX_ENTRIES = 100_000
#: Longer ids are refused (400): they are stored in every process and in ClickHouse.
MAX_REQUEST_ID_BYTES = 128

#: The shared table of answers, beside the data sources' tables (a reserved name).
REQUEST_LOG_TABLE = "_tinyingest_requests"

_DAY = 86_400
T = TypeVar("T")
_COLUMNS = ("scope", "request_id", "status", "body", "at")
_TYPES = ("String", "String", "UInt16", "String", "UInt32")


@dataclass(slots=True)
class Answer:
    status: int
    body: Any
    at: float


class RecentRequests:
    def __init__(self, window: float = WINDOW_SECONDS, max_entries: int = MAX_ENTRIES) -> None:
        self._window = window
        self._max_entries = max_entries
        self._answers: OrderedDict[tuple[str, str], Answer | None] = OrderedDict()

    def _expire(self) -> None:
        horizon = time.monotonic() - self._window
        while self._answers:
            key, answer = next(iter(self._answers.items()))
            if answer is not None and answer.at >= horizon \
                    and len(self._answers) <= self._max_entries:
                break
            if answer is None and len(self._answers) <= self._max_entries:
                break  # in flight: kept until it finishes
            self._answers.popitem(last=False)

    def begin(self, scope: str, request_id: str) -> Answer | None | bool:
        """Register a request. Returns True to go ahead, the earlier :class:`Answer` to
        replay it, or None while an earlier request with this id is still in flight."""
        self._expire()
        key = (scope, request_id)
        if key in self._answers:
            return self._answers[key]
        self._answers[key] = None
        return True

    def finish(self, scope: str, request_id: str, status: int, body: Any) -> None:
        key = (scope, request_id)
        if 200 <= status < 300:
            self._answers[key] = Answer(status, body, time.monotonic())
            self._answers.move_to_end(key)
        else:
            self._answers.pop(key, None)  # a failure may be retried


class RequestLog:
    """2xx answers by (scope, request id) in a ClickHouse table, for every process.

    The table is partitioned by day of the answer; partitions older than the window are
    dropped (at start and then hourly, by whichever gateway gets there first), and
    lookups ignore rows older than the window. ClickHouse 18.16 has no table TTL, so
    both backends expire the same way. Records written at about the same time are sent
    as one INSERT (while one is running, the next ones queue), as the data are.
    """

    def __init__(self, writer: SinkPool, database: str, window: float = WINDOW_SECONDS) -> None:
        self._writer = writer
        self._database = database
        self._table = f"{quote_identifier(database)}.{quote_identifier(REQUEST_LOG_TABLE)}"
        self._window = window
        self._queued: list[tuple[tuple[str, str, int, str, int], asyncio.Future[None]]] = []
        self._flushing = False
        self._pruned_at = 0.0

    def create_sql(self) -> str:
        return (f"CREATE TABLE IF NOT EXISTS {self._table} (scope String, request_id String, "
                "status UInt16, body String, at UInt32) ENGINE = MergeTree "
                f"PARTITION BY intDiv(at, {_DAY}) ORDER BY (scope, request_id)")

    async def lookup(self, scope: str, request_id: str) -> Answer | None:
        """The answer recorded for this id within the window, or None; raises SinkError."""
        sql = (f"SELECT status, body, at FROM {self._table} WHERE scope = {sql_string(scope)} "
               f"AND request_id = {sql_string(request_id)} "
               f"AND at >= {int(time.time() - self._window)} ORDER BY at LIMIT 1")
        result = await self._run(functools.partial(_select, sql))
        if not result:
            return None
        status, body, at = result[0]
        return Answer(int(status), json.loads(body), float(at))

    async def record(self, scope: str, request_id: str, status: int, body_json: str) -> None:
        """Store an answer (its JSON text); returns once ClickHouse has it, or raises
        SinkError."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._queued.append(((scope, request_id, status, body_json, int(time.time())), future))
        if not self._flushing:
            self._flushing = True
            loop.create_task(self._flush())
        await future

    async def _flush(self) -> None:
        try:
            while self._queued:
                batch, self._queued = self._queued, []
                block = encode_rows(_COLUMNS, _TYPES, [row for row, _ in batch])
                try:
                    await self._run(functools.partial(_insert, self._table, block))
                except Exception as exc:  # noqa: BLE001 - every waiter learns it
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                else:
                    for _, future in batch:
                        if not future.done():
                            future.set_result(None)
                if time.time() - self._pruned_at > 3600:
                    await self.prune()
        finally:
            self._flushing = False

    async def _run(self, call: Callable[[Sink], T]) -> T:
        try:
            return await self._writer.run(call)
        except SinkError as exc:
            if exc.code is not None:
                raise
            # A connection ClickHouse dropped (e.g. it restarted): the next call
            # reconnects. Both calls are safe to repeat (a second record only repeats
            # the answer).
            return await self._writer.run(call)

    async def prune(self) -> None:
        """Drop the days that lie wholly before the window (best effort: logs failures)."""
        self._pruned_at = time.time()
        oldest_kept = int(time.time() - self._window) // _DAY
        sql = (f"SELECT DISTINCT partition FROM system.parts WHERE active "
               f"AND database = {sql_string(self._database)} "
               f"AND table = {sql_string(REQUEST_LOG_TABLE)}")
        try:
            partitions = await self._writer.run(functools.partial(_select, sql))
            for (partition,) in partitions:
                if int(partition) < oldest_kept:
                    await self._writer.run(functools.partial(
                        _execute, f"ALTER TABLE {self._table} DROP PARTITION {int(partition)}"))
        except Exception as exc:  # noqa: BLE001 - old ids only cost disk until next time
            log.warning("could not drop expired request ids: %s", exc)


def _select(sql: str, sink: Sink) -> list[tuple[Any, ...]]:
    return sink.query(sql, readonly=True).rows


def _insert(table: str, block: EncodedBlock, sink: Sink) -> None:
    sink.insert(table, block)


def _execute(sql: str, sink: Sink) -> None:
    sink.execute(sql)
