"""Per-table batching: blocks from many requests become one INSERT.

A :class:`TableBatcher` collects :class:`~tinyingest.block.EncodedBlock` s for one table
and flushes them as a single insert when any limit is reached: ``flush_rows``,
``flush_bytes`` or ``flush_interval`` seconds since the oldest pending block arrived.
Each :meth:`TableBatcher.add` returns a future that resolves once ClickHouse has
acknowledged the insert holding that block (``wait=true`` awaits it).

When an insert fails:

* ClickHouse unreachable, timing out or overloaded (:func:`is_transient`): the waiting
  requests fail after ``insert_attempts`` tries (they answer 503), but the blocks stay
  queued and are retried with a backoff capped at ``max_backoff`` until ClickHouse is
  back: they are in the spool and were promised.
* ClickHouse refuses the rows (schema drift, a value it will not take): after
  ``insert_attempts`` tries the batch is inserted in halves to isolate the refused
  blocks (one request's block each), and those in halves to isolate the refused rows;
  only those go to ``on_refused`` (the quarantine, with ClickHouse's message), and the
  requests they came from fail; every other row is stored. A refused block is never
  dropped: if ``on_refused`` does not take it (the quarantine refused it too, or there
  is none), its spool record is not acknowledged, and the next start inserts it again.

A block encoded for other columns than the table's current ones (spooled before a
schema change) is inserted on its own, with its own column names: ClickHouse fills the
columns it lacks with their DEFAULT.

Inserts run on the writer's :class:`SinkPool`: up to one per connection at a time, so
with two connections ClickHouse writes one batch while the next one is sent (one insert
at a time keeps a ClickHouse server on about one core).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import queue
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from tinyingest.block import EncodedBlock
from tinyingest.native import SortPlan, merge_blocks, native_type, sort_block, split_block
from tinyingest.schema import ColumnSpec
from tinyingest.sinks import Sink, SinkError
from tinyingest.spool import RecordId

log = logging.getLogger("tinyingest.batcher")

T = TypeVar("T")

#: ClickHouse error codes worth retrying: timeouts, network, memory, too many parts or
#: queries, read-only replica. Anything else with a code is ClickHouse refusing the rows.
_TRANSIENT_CODES = frozenset({3, 23, 24, 32, 33, 159, 164, 202, 209, 210, 241, 242, 252, 285,
                              319, 999})


def is_transient(error: SinkError) -> bool:
    return error.code is None or error.code in _TRANSIENT_CODES


def is_view_error(error: SinkError) -> bool:
    """ClickHouse refused an insert because a materialized view on the table failed.
    Such an insert is not atomic: the table itself may have stored the rows already, so
    each retry could store them once more."""
    return "while pushing to view" in str(error)


#: What ``on_refused`` returns when the refused rows are not only kept but already in the
#: quarantine table: the request waiting for them may be answered as if quarantined.
QUARANTINED = "quarantined"


class RowsRefused(SinkError):
    """Set on a block's future when ClickHouse refused ``rows`` of it and they went to the
    quarantine (kept, with ClickHouse's message): nothing is lost, and the request's
    answer counts them as quarantined rather than failing."""

    def __init__(self, rows: int, error: SinkError) -> None:
        super().__init__(str(error), error.code)
        self.rows = rows


#: Inserts spent isolating the refused rows of one refused block; past it, what is left
#: of the block goes to the quarantine whole.
_SPLIT_INSERTS = 64


class _Transient(Exception):
    def __init__(self, error: SinkError) -> None:
        self.error = error


@dataclass(frozen=True)
class BatchLimits:
    """When a table's pending rows are flushed (see the README for the defaults)."""

    flush_rows: int = 200_000
    flush_bytes: int = 32 << 20
    flush_interval: float = 0.5
    #: Tries before waiting requests are failed; backoff doubles from 0.1 s.
    insert_attempts: int = 3
    #: Longest pause between retries while ClickHouse is unreachable.
    max_backoff: float = 5.0


class SinkPool:
    """Runs sink calls on threads, one per sink (each sink is one connection, blocking and
    not thread-safe); a call takes a free sink. The writer's pool holds the insert
    connections, a reader pool the query connections, so a slow query never holds up
    inserts. clickhouse-driver and chDB release the GIL while they wait, so the event loop
    keeps parsing requests meanwhile."""

    def __init__(self, sinks: Sequence[Sink], name: str) -> None:
        self._free: queue.SimpleQueue[Sink] = queue.SimpleQueue()
        for sink in sinks:
            self._free.put(sink)
        self._sinks = list(sinks)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=len(sinks), thread_name_prefix=f"tinyingest-{name}")

    @property
    def size(self) -> int:
        """Calls that can run at once."""
        return len(self._sinks)

    async def run(self, call: Callable[[Sink], T]) -> T:
        def with_sink() -> T:
            sink = self._free.get()
            try:
                return call(sink)
            finally:
                self._free.put(sink)
        return await asyncio.get_running_loop().run_in_executor(self._executor, with_sink)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        for sink in self._sinks:
            sink.close()


@dataclass(slots=True)
class _Pending:
    block: EncodedBlock
    record: RecordId | None  # its spool record, acknowledged once stored
    waiter: asyncio.Future[None] | None
    arrived: float  # monotonic time it was added


class TableBatcher:
    """Coalesces one table's blocks and inserts them through the writer's :class:`SinkPool`,
    as many at once as it has connections.

    :param columns: the blocks' column specs, to merge them; empty: insert one by one.
    :param sort: how to put an insert in the table's sorting-key order, which spares
        ClickHouse most of its insert work (:func:`~tinyingest.native.sort_plan`).
    :param on_stored: called with the spool records of every stored block.
    :param on_rows_stored: called with the number of rows of every insert ClickHouse
        confirmed (metrics: rows ClickHouse has, not rows accepted).
    :param on_refused: called with blocks ClickHouse refused, and its error; True: the
        blocks are kept elsewhere (the quarantine's spool records), so their own records
        are acknowledged; :data:`QUARANTINED`: kept, and in the quarantine table already
        (their waiter then fails with :class:`RowsRefused`); False (or no
        ``on_refused``): they stay in the spool.
    """

    def __init__(self, writer: SinkPool, table: str, columns: Sequence[ColumnSpec],
                 limits: BatchLimits, *,
                 on_stored: Callable[[list[RecordId]], None] = lambda records: None,
                 on_rows_stored: Callable[[int], None] = lambda rows: None,
                 on_refused: Callable[[list[EncodedBlock], SinkError], Awaitable[bool | str]]
                 | None = None, sort: SortPlan | None = None) -> None:
        self.table = table
        #: The names and types of the blocks encoded for ``columns`` now: only those
        #: are merged and sorted (a spooled block may have been encoded for others).
        self._shape = (tuple(c.name for c in columns), tuple(native_type(c) for c in columns))
        self._sort = sort
        self._writer = writer
        self._columns = tuple(columns)
        self._limits = limits
        self._on_stored = on_stored
        self._on_rows_stored = on_rows_stored
        self._on_refused = on_refused
        self._pending: list[_Pending] = []
        self._pending_rows = 0
        self._pending_bytes = 0
        self._retry_at = 0.0  # while ClickHouse is unreachable: no insert before this
        self._urgent = False  # a wait=true request is waiting: flush without the timer
        self._backoff = 0.1
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        #: Inserts running: at most one per writer connection.
        self._deliveries: set[asyncio.Task[None]] = set()
        self._away = False  # the last insert failed for a transient reason

    @property
    def pending_rows(self) -> int:
        return self._pending_rows

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    @property
    def pending_age(self) -> float:
        """Seconds the oldest pending block has waited (0 when nothing is pending)."""
        return time.monotonic() - self._pending[0].arrived if self._pending else 0.0

    @property
    def lag(self) -> float:
        """Seconds the oldest pending block has waited for a busy ClickHouse: every insert
        connection taken. 0 while pending blocks only wait for the flush interval (as they
        do by design), and while ClickHouse is away: then the spool takes the rows, up to
        its limit, until ClickHouse is back."""
        if not self._pending or self._away or len(self._deliveries) < self._writer.size:
            return 0.0
        return time.monotonic() - self._pending[0].arrived

    def expedite(self) -> None:
        """Somebody waits for the pending rows (``wait=true``): insert them as soon as the
        writer has a free connection instead of at the flush interval. Requests that arrive while an
        insert runs are grouped into the next one (group commit)."""
        if self._pending:
            self._urgent = True
            self._wakeup.set()

    def add(self, block: EncodedBlock, record: RecordId | None = None) -> asyncio.Future[None]:
        """Queue ``block``; the future resolves when it is stored in ClickHouse."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if block.num_rows == 0:
            future.set_result(None)
            if record is not None:
                self._on_stored([record])
            return future
        self._pending.append(_Pending(block, record, future, time.monotonic()))
        self._pending_rows += block.num_rows
        self._pending_bytes += block.nbytes
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        self._wakeup.set()
        return future

    async def close(self, timeout: float = 30.0) -> None:
        """Flush what is pending and stop; gives up after ``timeout`` s (rows stay spooled)."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout)
            except TimeoutError:
                log.warning("%s: %d rows not flushed at shutdown; they stay in the spool",
                            self.table, self._pending_rows)
            self._task = None

    def _due_in(self) -> float:
        """Seconds until the pending blocks must be flushed (0: now)."""
        limits = self._limits
        now = time.monotonic()
        if self._retry_at > now:
            return self._retry_at - now
        if self._closing or self._urgent or self._pending_rows >= limits.flush_rows \
                or self._pending_bytes >= limits.flush_bytes:
            return 0.0
        return max(0.0, self._pending[0].arrived + limits.flush_interval - now)

    async def _run(self) -> None:
        deliveries = self._deliveries

        def delivered(task: asyncio.Task[None]) -> None:
            deliveries.discard(task)
            self._wakeup.set()  # a connection is free

        loop = asyncio.get_running_loop()
        try:
            while True:
                due: float | None = None  # None: nothing to do until woken
                if self._pending and len(deliveries) < self._writer.size:
                    due = self._due_in()
                    if due == 0:
                        task = loop.create_task(self._deliver(self._take_batch()))
                        deliveries.add(task)
                        task.add_done_callback(delivered)
                        continue
                elif self._closing and not self._pending and not deliveries:
                    return
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), due)
                except TimeoutError:
                    pass
        finally:
            for task in deliveries:  # close() gave up: the rows stay in the spool
                task.cancel()

    def _take_batch(self) -> list[_Pending]:
        """The oldest pending blocks, up to one insert's worth (``flush_rows`` /
        ``flush_bytes``): a backlog is inserted in bounded pieces, not copied whole."""
        limits = self._limits
        rows = size = count = 0
        for item in self._pending:
            if count and (rows >= limits.flush_rows or size >= limits.flush_bytes
                          or not self._current(item.block)):
                break
            rows += item.block.num_rows
            size += item.block.nbytes
            count += 1
            if not self._current(item.block):
                break  # encoded for other columns: inserted alone
        batch, self._pending = self._pending[:count], self._pending[count:]
        self._pending_rows -= rows
        self._pending_bytes -= size
        self._urgent = self._urgent and bool(self._pending)
        return batch

    def _current(self, block: EncodedBlock) -> bool:
        """True if ``block`` has the table's current columns (it may be merged, sorted)."""
        return (block.names, block.types) == self._shape

    async def _deliver(self, batch: list[_Pending]) -> None:
        try:
            await self._deliver_batch(batch)
        except Exception as exc:
            # A bug of ours, not ClickHouse's answer: fail the waiting requests (500) rather
            # than leave them hanging; the rows stay in the spool for the next start.
            log.exception("could not insert %d blocks into %s", len(batch), self.table)
            self._settle(batch, exc)

    async def _deliver_batch(self, batch: list[_Pending]) -> None:
        error = await self._insert([item.block for item in batch])
        if error is None:
            self._stored(batch)
            return
        if is_transient(error):
            self._postpone(batch, error)
            return
        log.error("ClickHouse refused %d rows for %s: %s", sum(i.block.num_rows for i in batch),
                  self.table, error)
        await self._isolate(batch, error)

    def _stored(self, batch: list[_Pending]) -> None:
        self._backoff = 0.1
        self._retry_at = 0.0
        self._away = False
        self._on_stored([item.record for item in batch if item.record is not None])
        self._settle(batch, None)

    def _postpone(self, batch: list[_Pending], error: SinkError) -> None:
        """ClickHouse is away: fail the waiters, keep the rows (spooled and promised)."""
        self._settle(batch, error)
        if self._closing:
            return  # shutting down: the spool replays these at the next start
        for item in batch:
            item.waiter = None
        self._pending[:0] = batch
        self._pending_rows += sum(item.block.num_rows for item in batch)
        self._pending_bytes += sum(item.block.nbytes for item in batch)
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self._limits.max_backoff)
        self._away = True

    async def _isolate(self, batch: list[_Pending], error: SinkError) -> None:
        """ClickHouse refused a batch: insert it in halves to find the refused blocks (one
        request's rows each), then the refused rows inside them, so that a bad row takes
        no other row with it. A refusal is deterministic, so each part is tried once."""
        if len(batch) > 1 and self._columns:
            middle = len(batch) // 2
            for half in (batch[:middle], batch[middle:]):
                failure = await self._try_insert([item.block for item in half])
                if failure is None:
                    self._stored(half)
                elif is_transient(failure):
                    self._postpone(half, failure)
                else:
                    await self._isolate(half, failure)
            return
        refused: list[tuple[EncodedBlock, SinkError]] = []
        try:
            for item in batch:
                budget = [_SPLIT_INSERTS] if self._columns else [0]
                refused += await self._isolate_rows(item.block, error, budget)
        except _Transient as away:
            # Parts may be stored already; the whole is tried again (at least once).
            self._postpone(batch, away.error)
            return
        kept = True  # every refused part is kept somewhere (the quarantine's records)
        quarantined = True  # ... and is in the quarantine table
        for block, reason in refused:
            outcome = await self._on_refused([block], reason) if self._on_refused else False
            kept = kept and bool(outcome)
            quarantined = quarantined and outcome == QUARANTINED
        if kept:
            self._on_stored([item.record for item in batch if item.record is not None])
            if refused and quarantined and len(batch) == 1:  # (one, when it has columns)
                self._settle(batch, RowsRefused(sum(b.num_rows for b, _ in refused),
                                                refused[0][1]))
                return
        elif self._on_refused is None:  # (on_refused says what it did itself)
            # Never dropped: the spool keeps the records; the next start inserts them
            # again (parts already stored would be stored twice: at-least-once).
            log.error("%s: %d refused rows kept in the spool, to be inserted again at the "
                      "next start: %s", self.table, sum(b.num_rows for b, _ in refused),
                      refused[0][1] if refused else "")
        self._settle(batch, refused[0][1] if refused else None)

    async def _isolate_rows(self, block: EncodedBlock, error: SinkError,
                            budget: list[int]) -> list[tuple[EncodedBlock, SinkError]]:
        """The refused parts of a refused block, found by halving it; the rest stored."""
        if block.num_rows <= 1 or budget[0] <= 0:
            return [(block, error)]
        halves = await asyncio.get_running_loop().run_in_executor(None, split_block, block)
        failures: list[tuple[EncodedBlock, SinkError]] = []
        for half in halves:
            budget[0] -= 1
            failure = await self._try_insert([half])
            if failure is not None and is_transient(failure):
                raise _Transient(failure)
            if failure is not None:
                failures.append((half, failure))
        if len(failures) == 2:
            # Both halves refused: the whole block is (schema drift, a bad batch), not a
            # row in it; halving further would only spend inserts.
            return [(block, error)]
        refused: list[tuple[EncodedBlock, SinkError]] = []
        for half, failure in failures:
            refused += await self._isolate_rows(half, failure, budget)
        return refused

    async def _try_insert(self, blocks: list[EncodedBlock]) -> SinkError | None:
        merged = merge_blocks(self._columns, blocks) if len(blocks) > 1 else blocks[0]
        try:
            await self._writer.run(functools.partial(self._send, merged))
        except SinkError as exc:
            return exc
        self._on_rows_stored(merged.num_rows)
        return None

    def _send(self, block: EncodedBlock, sink: Sink) -> None:
        """On a writer thread: sort (the C sort releases the GIL), then insert."""
        sink.insert(self.table, sort_block(self._sort, block) if self._current(block)
                    else block)

    @staticmethod
    def _settle(batch: list[_Pending], error: Exception | None) -> None:
        for item in batch:
            waiter = item.waiter
            if waiter is None or waiter.done():
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
                await self._writer.run(functools.partial(self._send, merged))
            except SinkError as exc:
                log.warning("insert of %d rows into %s failed (attempt %d/%d): %s",
                            merged.num_rows, self.table, attempt,
                            self._limits.insert_attempts, exc)
                # A failed view's refusal is not tried again: it would fail again, and
                # the table may keep the rows of every try.
                if attempt == self._limits.insert_attempts or is_view_error(exc):
                    return exc
                await asyncio.sleep(delay)
                delay *= 2
            else:
                self._on_rows_stored(merged.num_rows)
                return None
        raise AssertionError("unreachable")
