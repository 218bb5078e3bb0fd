"""Per-table batching: blocks from many requests become one INSERT.

A :class:`TableBatcher` collects :class:`~tinyingest.block.EncodedBlock` s for one table
and flushes them as a single insert when any limit is reached: ``flush_rows``,
``flush_bytes`` or ``flush_interval`` seconds since the oldest pending block arrived.
Each :meth:`TableBatcher.add` returns a future that resolves once ClickHouse has
acknowledged the insert holding that block (``wait=true`` awaits it), or fails with
the :class:`~tinyingest.sinks.SinkError` after the retries.

All inserts go through one worker thread (:class:`Writer`): the sinks are blocking and
not thread-safe, and clickhouse-driver and chDB release the GIL while they wait, so the
event loop keeps parsing requests meanwhile.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from tinyingest.block import EncodedBlock
from tinyingest.native import merge_blocks
from tinyingest.schema import ColumnSpec
from tinyingest.sinks import Sink, SinkError

log = logging.getLogger("tinyingest.batcher")

T = TypeVar("T")


@dataclass(frozen=True)
class BatchLimits:
    """When a table's pending rows are flushed (see the README for the defaults)."""

    flush_rows: int = 200_000
    flush_bytes: int = 32 << 20
    flush_interval: float = 0.5
    #: Attempts per insert before its requests are failed; backoff doubles from 0.1 s.
    insert_attempts: int = 3


class Writer:
    """Runs every sink call on one thread, in order."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="tinyingest-writer")

    async def run(self, call: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.sink.close()


class TableBatcher:
    """Coalesces one table's blocks and inserts them through the :class:`Writer`."""

    def __init__(self, writer: Writer, table: str, columns: Sequence[ColumnSpec],
                 limits: BatchLimits) -> None:
        self.table = table
        self._writer = writer
        self._columns = tuple(columns)
        self._limits = limits
        self._pending: list[EncodedBlock] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._pending_rows = 0
        self._pending_bytes = 0
        self._oldest = 0.0  # monotonic time the oldest pending block arrived
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def pending_rows(self) -> int:
        return self._pending_rows

    def add(self, block: EncodedBlock) -> asyncio.Future[None]:
        """Queue ``block``; the future resolves when it is stored in ClickHouse."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if block.num_rows == 0:
            future.set_result(None)
            return future
        if not self._pending:
            self._oldest = time.monotonic()
        self._pending.append(block)
        self._waiters.append(future)
        self._pending_rows += block.num_rows
        self._pending_bytes += block.nbytes
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        self._wakeup.set()
        return future

    async def close(self) -> None:
        """Flush what is pending and stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
            self._task = None

    def _due_in(self) -> float:
        """Seconds until the pending blocks must be flushed (0: now)."""
        limits = self._limits
        if self._closing or self._pending_rows >= limits.flush_rows \
                or self._pending_bytes >= limits.flush_bytes:
            return 0.0
        return max(0.0, self._oldest + limits.flush_interval - time.monotonic())

    async def _run(self) -> None:
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            due = self._due_in()
            if due > 0:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), due)
                except TimeoutError:
                    pass
                continue
            blocks, waiters = self._pending, self._waiters
            self._pending, self._waiters = [], []
            self._pending_rows = self._pending_bytes = 0
            error = await self._insert(blocks)
            for waiter in waiters:
                if waiter.done():
                    continue
                if error is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(error)

    async def _insert(self, blocks: list[EncodedBlock]) -> SinkError | None:
        if not self._columns:
            # No column specs (the quarantine tables: Array columns, few rows): the
            # blocks are inserted one by one rather than merged.
            for block in blocks:
                error = await self._insert_one(block)
                if error is not None:
                    return error
            return None
        return await self._insert_one(merge_blocks(self._columns, blocks))

    async def _insert_one(self, merged: EncodedBlock) -> SinkError | None:
        delay = 0.1
        for attempt in range(1, self._limits.insert_attempts + 1):
            try:
                await self._writer.run(lambda: self._writer.sink.insert(self.table, merged))
                return None
            except SinkError as exc:
                log.warning("insert of %d rows into %s failed (attempt %d/%d): %s",
                            merged.num_rows, self.table, attempt,
                            self._limits.insert_attempts, exc)
                if attempt == self._limits.insert_attempts:
                    return exc
                await asyncio.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")
