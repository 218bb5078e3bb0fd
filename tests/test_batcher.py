"""The batcher against the real backends: when it flushes, and what a waiter learns."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tinyingest.batcher import BatchLimits, SinkPool, TableBatcher
from tinyingest.block import EncodedBlock
from tinyingest.native import encode_rows
from tinyingest.schema import ColumnSpec
from tinyingest.sinks import Sink, SinkError
from tinyingest.testing import ClickHouseServer

COLUMNS = [ColumnSpec.build("id", "UInt64"), ColumnSpec.build("name", "Nullable(String)")]


def rows(start: int, count: int) -> EncodedBlock:
    return encode_rows(["id", "name"], ["UInt64", "Nullable(String)"],
                          [(i, None if i % 2 else f"n{i}") for i in range(start, start + count)])


def count(sink: Sink) -> int:
    return int(sink.query("SELECT count() FROM t").rows[0][0])


def run(sink: Sink, limits: BatchLimits, scenario: object) -> None:
    sink.execute("CREATE TABLE t (id UInt64, name Nullable(String)) ENGINE = MergeTree ORDER BY id")

    async def main() -> None:
        writer = SinkPool([sink], "writer")
        batcher = TableBatcher(writer, "t", COLUMNS, limits)
        try:
            await scenario(batcher)  # type: ignore[operator]
        finally:
            await batcher.close()
            writer._executor.shutdown()  # the sink is closed by its fixture

    asyncio.run(main())


def test_rows_limit_flushes_without_waiting_for_the_interval(sink: Sink) -> None:
    async def scenario(batcher: TableBatcher) -> None:
        futures = [batcher.add(rows(i * 4, 4)) for i in range(3)]  # 12 rows >= 10
        await asyncio.wait_for(asyncio.gather(*futures), 20)
        assert count(sink) == 12
    run(sink, BatchLimits(flush_rows=10, flush_interval=600), scenario)


def test_expedite_flushes_a_waited_block_now(sink: Sink) -> None:
    async def scenario(batcher: TableBatcher) -> None:
        future = batcher.add(rows(0, 3))
        await asyncio.sleep(0.2)
        assert not future.done()  # the interval is 10 minutes
        batcher.expedite()  # a wait=true request is waiting
        await asyncio.wait_for(future, 20)
        assert count(sink) == 3
    run(sink, BatchLimits(flush_interval=600), scenario)


def test_backlog_is_inserted_in_bounded_pieces(sink: Sink) -> None:
    async def scenario(batcher: TableBatcher) -> None:
        futures = [batcher.add(rows(i * 5, 5)) for i in range(4)]
        await asyncio.wait_for(asyncio.gather(*futures), 20)
        assert count(sink) == 20
        names = sink.query("SELECT countIf(name IS NULL), countIf(name = 'n2') FROM t").rows
        assert names == [(10, 1)]
    run(sink, BatchLimits(flush_rows=5, flush_interval=0.05), scenario)


def test_refused_rows_fail_the_waiter_and_go_to_on_refused(sink: Sink) -> None:
    refused: list[tuple[int, str]] = []

    async def on_refused(blocks: list[EncodedBlock], error: SinkError) -> bool:
        refused.extend((block.num_rows, str(error)) for block in blocks)
        return True

    async def scenario(batcher: TableBatcher) -> None:
        sink.execute("ALTER TABLE t DROP COLUMN name")  # schema drift
        future = batcher.add(rows(0, 2))
        batcher.expedite()
        try:
            await asyncio.wait_for(future, 20)
        except SinkError:
            pass
        else:
            raise AssertionError("a refused insert resolved its waiter")

    sink.execute("CREATE TABLE t (id UInt64, name Nullable(String)) ENGINE = MergeTree ORDER BY id")

    async def main() -> None:
        writer = SinkPool([sink], "writer")
        batcher = TableBatcher(writer, "t", COLUMNS, BatchLimits(insert_attempts=2),
                               on_refused=on_refused)
        try:
            await scenario(batcher)
        finally:
            await batcher.close()
            writer._executor.shutdown()

    asyncio.run(main())
    assert [n for n, _ in refused] == [2] and "name" in refused[0][1]


def test_refused_row_is_isolated_and_every_other_row_stored(sink: Sink) -> None:
    # ClickHouse refuses any insert holding id 666 (a DEFAULT that throws): only that row
    # must go to on_refused; its block's other rows and the other blocks are stored.
    sink.execute("CREATE TABLE t (id UInt64, name Nullable(String), "
                 "guard UInt8 DEFAULT throwIf(id = 666)) ENGINE = MergeTree ORDER BY id")
    refused: list[int] = []

    async def on_refused(blocks: list[EncodedBlock], error: SinkError) -> bool:
        refused.extend(block.num_rows for block in blocks)
        return True

    async def main() -> list[BaseException | None]:
        writer = SinkPool([sink], "writer")
        batcher = TableBatcher(writer, "t", COLUMNS, BatchLimits(insert_attempts=1),
                               on_refused=on_refused)
        try:
            futures = [batcher.add(rows(start, 4)) for start in (0, 10, 664, 20, 30)]
            batcher.expedite()
            done = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 30)
            return [r if isinstance(r, BaseException) else None for r in done]
        finally:
            await batcher.close()
            writer._executor.shutdown()

    outcomes = asyncio.run(main())
    assert [o is None for o in outcomes] == [True, True, False, True, True]
    assert refused == [1]
    assert count(sink) == 19
    assert sink.query("SELECT groupArray(id) FROM (SELECT id FROM t WHERE id BETWEEN 664 AND 667 "
                      "ORDER BY id)").rows == [([664, 665, 667],)]



class _MeetsTheOther:
    """A server connection whose inserts wait until another insert is running too."""

    def __init__(self, sink: Sink, barrier: threading.Barrier) -> None:
        self._sink = sink
        self._barrier = barrier

    def insert(self, table: str, block: EncodedBlock) -> None:
        self._barrier.wait()  # BrokenBarrierError unless both inserts run at once
        self._sink.insert(table, block)

    def close(self) -> None:
        self._sink.close()


@pytest.mark.parametrize("sink", ["clickhouse"], indirect=True)  # chDB: one at a time
def test_two_connections_insert_two_batches_at_once(clickhouse_server: ClickHouseServer,
                                                     sink: Sink) -> None:
    """On a server the second batch is sent while the first one is still being written."""
    from tinyingest.sinks.clickhouse import ClickHouseSink

    sink.execute("CREATE TABLE t (id UInt64, name Nullable(String)) ENGINE = MergeTree ORDER BY id")
    barrier = threading.Barrier(2, timeout=30)
    second = ClickHouseSink(clickhouse_server.url.rsplit("/", 1)[0] + "/" + sink.database)
    writer = SinkPool([_MeetsTheOther(sink, barrier),  # type: ignore[list-item]
                       _MeetsTheOther(second, barrier)], "writer")

    async def main() -> None:
        batcher = TableBatcher(writer, "t", COLUMNS, BatchLimits(flush_rows=4,
                                                                  flush_interval=600))
        try:
            futures = [batcher.add(rows(0, 4)), batcher.add(rows(4, 4))]  # a batch each
            await asyncio.wait_for(asyncio.gather(*futures), 60)
        finally:
            await batcher.close()
            writer._executor.shutdown()
            second.close()

    asyncio.run(main())
    assert count(sink) == 8


class _Held:
    """A connection whose inserts wait until the test lets them through."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self.release = threading.Event()

    def insert(self, table: str, block: EncodedBlock) -> None:
        assert self.release.wait(30), "the test never released the insert"
        self._sink.insert(table, block)


def test_lag_counts_only_waiting_for_clickhouse(sink: Sink) -> None:
    """Rows waiting for the flush interval are not lag (they wait by design); rows waiting
    while the only connection is busy are (the gateway's 503 "ClickHouse is behind")."""
    sink.execute("CREATE TABLE t (id UInt64, name Nullable(String)) ENGINE = MergeTree ORDER BY id")
    held = _Held(sink)
    writer = SinkPool([held], "writer")  # type: ignore[list-item]

    async def main() -> None:
        batcher = TableBatcher(writer, "t", COLUMNS, BatchLimits(flush_interval=600))
        try:
            timed = batcher.add(rows(0, 2))
            await asyncio.sleep(0.05)
            assert batcher.pending_age > 0 and batcher.lag == 0.0  # only the interval
            batcher.expedite()  # the insert starts and is held
            for _ in range(200):
                if batcher.pending_rows == 0:
                    break
                await asyncio.sleep(0.01)
            waiting = batcher.add(rows(2, 2))
            await asyncio.sleep(0.05)
            assert batcher.lag > 0  # the connection is busy
            held.release.set()
            batcher.expedite()
            await asyncio.wait_for(asyncio.gather(timed, waiting), 30)
            assert batcher.lag == 0.0
        finally:
            held.release.set()
            await batcher.close()
            writer._executor.shutdown()

    asyncio.run(main())
    assert count(sink) == 4


@pytest.mark.parametrize("taken", [True, False])
def test_a_refused_block_is_acknowledged_only_when_kept_elsewhere(sink: Sink,
                                                                  taken: bool) -> None:
    from tinyingest.spool import RecordId

    sink.execute("CREATE TABLE t (id UInt64) ENGINE = MergeTree ORDER BY id")  # no `name`
    stored: list[RecordId] = []

    async def on_refused(blocks: list[EncodedBlock], error: SinkError) -> bool:
        return taken  # False: the quarantine refused it too

    async def main() -> None:
        writer = SinkPool([sink], "writer")
        batcher = TableBatcher(writer, "t", COLUMNS, BatchLimits(insert_attempts=1),
                               on_stored=stored.extend, on_refused=on_refused)
        try:
            future = batcher.add(rows(0, 3), RecordId(1, 0))
            batcher.expedite()
            with pytest.raises(SinkError):
                await asyncio.wait_for(future, 20)
        finally:
            await batcher.close()
            writer._executor.shutdown()

    asyncio.run(main())
    assert stored == ([RecordId(1, 0)] if taken else [])


def test_blocks_of_an_older_column_set_are_inserted_alone(sink: Sink) -> None:
    # Spooled before a column was added: not merged with the current blocks, inserted
    # with its own column names (the added column gets its DEFAULT).
    sink.execute("CREATE TABLE t (id UInt64, name Nullable(String), extra String DEFAULT 'd')"
                 " ENGINE = MergeTree ORDER BY id")
    columns = [*COLUMNS, ColumnSpec.build("extra", "String")]
    old = rows(0, 2)
    new = encode_rows(["id", "name", "extra"], ["UInt64", "Nullable(String)", "String"],
                      [(10, "a", "x"), (11, None, "y")])

    async def main() -> None:
        writer = SinkPool([sink], "writer")
        batcher = TableBatcher(writer, "t", columns, BatchLimits(flush_interval=0.05))
        try:
            futures = [batcher.add(new), batcher.add(old), batcher.add(new)]
            await asyncio.wait_for(asyncio.gather(*futures), 20)
        finally:
            await batcher.close()
            writer._executor.shutdown()

    asyncio.run(main())
    result = sink.query("SELECT id, extra FROM t ORDER BY id, extra")
    assert [tuple(row) for row in result.rows] == [(0, "d"), (1, "d"), (10, "x"), (10, "x"),
                                                   (11, "y"), (11, "y")]
