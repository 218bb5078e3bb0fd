"""Both sinks against real engines: a private clickhouse-server and chDB."""

from __future__ import annotations

import array
import collections
import datetime
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tinyingest.block import Block, ColumnData
from tinyingest.native import encode_block, encode_rows
from tinyingest.schema import ColumnSpec
from tinyingest.sinks import Sink, SinkError
from tinyingest.sinks.clickhouse import ClickHouseSink
from tinyingest.sinks.embedded import EmbeddedSink
from tinyingest.testing import ClickHouseServer

EPOCH = datetime.date(1970, 1, 1)

# (type, struct format or None for String, values); None in a value list is NULL.
COLUMNS: list[tuple[str, str | None, list[Any]]] = [
    ("Int8", "b", [-128, 0, 127]),
    ("Int16", "h", [-32768, 1, 32767]),
    ("Int32", "i", [-(2**31), 2, 2**31 - 1]),
    ("Int64", "q", [-(2**63), 3, 2**63 - 1]),
    ("UInt8", "B", [0, 1, 255]),
    ("UInt16", "H", [0, 1, 65535]),
    ("UInt32", "I", [0, 1, 2**32 - 1]),
    ("UInt64", "Q", [0, 1, 2**64 - 1]),
    ("Float32", "f", [-1.5, 0.0, 3.25]),
    ("Float64", "d", [-1.5, 0.1, 1e300]),
    ("String", None, ["", "é\tx\n\"'\\", "z" * 300]),
    ("Date", "H", [0, 19000, 40000]),
    ("DateTime", "I", [0, 1700000000, 2**32 - 1]),
    ("Nullable(Int64)", "q", [None, -5, 6]),
    ("Nullable(Float64)", "d", [2.5, None, None]),
    ("Nullable(String)", None, ["a", None, ""]),
    ("Nullable(DateTime)", "I", [None, 1, 2]),
    ("LowCardinality(String)", None, ["red", "green", "red"]),
    ("LowCardinality(Nullable(String))", None, [None, "blue", "blue"]),
]


def make_column(fmt: str | None, values: list[Any]) -> ColumnData:
    nulls = bytes(v is None for v in values) if None in values else None
    if fmt is None:
        raw = [b"" if v is None else v.encode() for v in values]
        bounds = array.array("q", [0])
        for item in raw:
            bounds.append(bounds[-1] + len(item))
        return ColumnData(b"".join(raw), bounds.tobytes(), nulls)
    return ColumnData(b"".join(struct.pack("<" + fmt, 0 if v is None else v) for v in values),
                      nulls=nulls)


def expected_value(ch_type: str, fmt: str | None, value: Any) -> Any:
    """What clickhouse-driver decodes the stored value to."""
    if value is None:
        return None
    if "Date" in ch_type and "DateTime" not in ch_type:
        return EPOCH + datetime.timedelta(days=value)
    if "DateTime" in ch_type:
        return datetime.datetime(1970, 1, 1) + datetime.timedelta(seconds=value)
    if fmt == "f":
        return struct.unpack("<f", struct.pack("<f", value))[0]
    return value


def create_table(sink: Sink, name: str, columns: list[tuple[str, str]]) -> None:
    body = ", ".join(f"`{col}` {ch_type}" for col, ch_type in columns)
    sink.execute(f"CREATE TABLE {name} (row UInt32, {body}) ENGINE = MergeTree ORDER BY row")


def test_every_type_round_trips(sink: Sink) -> None:
    names = [f"c{i}" for i in range(len(COLUMNS))]
    create_table(sink, "every_type", [(n, t) for n, (t, _, _) in zip(names, COLUMNS)])
    specs = [ColumnSpec.build("row", "UInt32", "$.row")] + [
        ColumnSpec.build(n, t, f"$.{n}") for n, (t, _, _) in zip(names, COLUMNS)
    ]
    columns = [ColumnData(struct.pack("<3I", 0, 1, 2))] + [
        make_column(fmt, values) for _, fmt, values in COLUMNS
    ]
    sink.insert("every_type", encode_block(specs, Block(3, columns)))

    result = sink.query("SELECT * FROM every_type ORDER BY row")
    assert result.meta == [("row", "UInt32")] + [(n, t) for n, (t, _, _) in zip(names, COLUMNS)]
    expected = [
        (row,) + tuple(expected_value(t, fmt, values[row]) for t, fmt, values in COLUMNS)
        for row in range(3)
    ]
    assert result.rows == expected
    assert result.rows_read == 3
    assert result.elapsed >= 0


def test_low_cardinality_types_are_kept(sink: Sink) -> None:
    specs = [ColumnSpec.build("row", "UInt32", "$.row"),
             ColumnSpec.build("lc", "LowCardinality(Nullable(String))", "$.lc")]
    create_table(sink, "lc", [("lc", "LowCardinality(Nullable(String))")])
    values = [None if i % 7 == 0 else f"v{i % 300}" for i in range(1000)]
    block = Block(1000, [ColumnData(array.array("I", range(1000)).tobytes()),
                         make_column(None, values)])
    sink.insert("lc", encode_block(specs, block))
    sink.insert("lc", encode_block(specs, block))
    result = sink.query("SELECT lc, toTypeName(lc) FROM lc ORDER BY row, lc LIMIT 4")
    assert result.rows == [(None, "LowCardinality(Nullable(String))")] * 2 + [
        ("v1", "LowCardinality(Nullable(String))")] * 2
    # (uniqExact would count NULL on 18.16: compare the groups instead)
    groups = sink.query("SELECT lc, count() FROM lc GROUP BY lc ORDER BY lc").rows
    counts = collections.Counter(values)
    assert groups == [(v, 2 * counts[v]) for v in sorted(counts, key=lambda v: (v is None, v))]


def test_quarantine_shape_round_trips(sink: Sink) -> None:
    sink.execute(
        "CREATE TABLE quarantine (c__error Array(String), line Nullable(String), "
        "datasource String, insertion_date DateTime) ENGINE = MergeTree ORDER BY insertion_date"
    )
    when = datetime.datetime(2024, 5, 6, 7, 8, 9)
    sink.insert("quarantine", encode_rows(
        ["c__error", "line", "datasource", "insertion_date"],
        ["Array(String)", "Nullable(String)", "String", "DateTime"],
        [(["bad Int64 \"x\"", "missing"], '{"a": "x"}', "events", when), ([], None, "events", 0)],
    ))
    result = sink.query("SELECT * FROM quarantine ORDER BY insertion_date")
    assert result.rows == [
        ([], None, "events", datetime.datetime(1970, 1, 1)),
        (["bad Int64 \"x\"", "missing"], '{"a": "x"}', "events", when),
    ]


def test_insert_into_missing_table_raises(sink: Sink) -> None:
    block = encode_rows(["a"], ["String"], [("x",)])
    with pytest.raises(SinkError) as info:
        sink.insert("no_such_table", block)
    assert info.value.code == 60
    assert "no_such_table" in str(info.value)
    assert sink.query("SELECT 1").rows == [(1,)]  # the sink recovers


def test_insert_of_wrong_column_raises(sink: Sink) -> None:
    sink.execute("CREATE TABLE t (a String) ENGINE = MergeTree ORDER BY a")
    with pytest.raises(SinkError):
        sink.insert("t", encode_rows(["b"], ["String"], [("x",)]))
    assert sink.query("SELECT count() FROM t").rows == [(0,)]


def test_query_error_raises_with_code(sink: Sink) -> None:
    with pytest.raises(SinkError) as info:
        sink.query("SELECT no_such_column FROM system.one")
    assert info.value.code == 47
    assert "no_such_column" in str(info.value)
    with pytest.raises(SinkError):
        sink.query("SELEC 1")
    with pytest.raises(SinkError):
        sink.execute("CREATE TABLE broken (a NoSuchType) ENGINE = Memory")


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO t VALUES ('x')",
        "ALTER TABLE t DELETE WHERE 1",
        "DROP TABLE t",
        "SELECT 1 SETTINGS readonly = 0",
    ],
)
def test_readonly_query_refuses_writes(sink: Sink, sql: str) -> None:
    sink.execute("CREATE TABLE t (a String) ENGINE = MergeTree ORDER BY a")
    sink.insert("t", encode_rows(["a"], ["String"], [("kept",)]))
    with pytest.raises(SinkError) as info:
        sink.query(sql)
    assert info.value.code == 164  # READONLY
    assert sink.query("SELECT a FROM t").rows == [("kept",)]


def test_query_limits(sink: Sink) -> None:
    with pytest.raises(SinkError) as info:
        sink.query("SELECT number FROM system.numbers LIMIT 10", max_result_rows=5)
    assert info.value.code == 396  # TOO_MANY_ROWS_OR_BYTES
    with pytest.raises(SinkError) as info:
        sink.query("SELECT 1 SETTINGS max_result_rows = 0", max_result_rows=5)
    assert info.value.code == 164
    assert sink.query("SELECT number FROM system.numbers LIMIT 5", max_result_rows=5).rows == [
        (0,), (1,), (2,), (3,), (4,)]


def test_empty_result_has_meta(sink: Sink) -> None:
    result = sink.query("SELECT 1 AS a, 'x' AS b WHERE 0")
    assert result.rows == []
    assert result.meta == [("a", "UInt8"), ("b", "String")]


def test_empty_block_is_a_no_op(sink: Sink) -> None:
    sink.execute("CREATE TABLE t (a String) ENGINE = MergeTree ORDER BY a")
    sink.insert("t", encode_rows(["a"], ["String"], []))
    assert sink.query("SELECT count() FROM t").rows == [(0,)]


def test_clickhouse_connection_errors_raise_and_reconnect(
    clickhouse_server: ClickHouseServer,
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    unreachable = ClickHouseSink(f"clickhouse://default:@127.0.0.1:{closed_port}/default",
                                 connect_timeout=1)
    with pytest.raises(SinkError) as info:
        unreachable.query("SELECT 1")
    assert info.value.code is None
    with pytest.raises(SinkError):
        unreachable.insert("t", encode_rows(["a"], ["String"], [("x",)]))

    sink = ClickHouseSink(clickhouse_server.url)
    assert sink.query("SELECT 1").rows == [(1,)]
    sink._client.connection.socket.shutdown(socket.SHUT_RDWR)  # the link dies under us
    try:
        sink.query("SELECT 2")
    except SinkError:
        pass  # either the driver's ping noticed and reconnected, or this call failed ...
    assert sink.query("SELECT 3").rows == [(3,)]  # ... and the next one reconnects
    sink.close()


def test_insert_the_table_refuses_raises_and_stores_nothing(sink: Sink) -> None:
    # A DEFAULT that throws for one value: the whole insert must fail loudly (chDB's
    # streaming insert reported such inserts as written while storing nothing).
    sink.execute("CREATE TABLE guarded (id UInt64, guard UInt8 DEFAULT throwIf(id = 666)) "
                 "ENGINE = MergeTree ORDER BY id")
    block = encode_rows(["id"], ["UInt64"], [(1,), (666,)])
    with pytest.raises(SinkError):
        sink.insert("guarded", block)
    assert sink.query("SELECT count() FROM guarded").rows == [(0,)]



@pytest.mark.parametrize("sql", [
    "SELECT 1 AS one, 'x' AS s",
    "SELECT number, toString(number) AS s, [number, 1] AS a FROM system.numbers LIMIT 3",
    "SELECT number, toString(number) AS s FROM system.numbers LIMIT 300000",  # many blocks
    "SELECT 1 AS one WHERE 0",
])
def test_query_answers_as_the_driver_does(clickhouse_server: ClickHouseServer, sql: str) -> None:
    from clickhouse_driver import Client

    sink = ClickHouseSink(clickhouse_server.url)
    client = Client(host="127.0.0.1", port=clickhouse_server.tcp_port)
    try:
        got = sink.query(sql, max_result_rows=1_000_000)
        rows, columns = client.execute(sql, with_column_types=True)
        assert got.meta == [(name, ch_type) for name, ch_type in columns]
        assert got.rows == [tuple(row) for row in rows]
        assert got.rows_read == client.last_query.progress.rows
        # The connection is left as the driver expects it (pings, inserts, queries).
        sink.execute("SELECT 1")
        assert sink.query(sql, max_result_rows=1_000_000).rows == got.rows
    finally:
        sink.close()
        client.disconnect()


def test_query_errors_leave_a_working_connection(clickhouse_server: ClickHouseServer) -> None:
    sink = ClickHouseSink(clickhouse_server.url)
    try:
        with pytest.raises(SinkError) as info:
            sink.query("SELECT nope")
        assert info.value.code == 47  # UNKNOWN_IDENTIFIER
        assert sink.query("SELECT 2 AS two").rows == [(2,)]
    finally:
        sink.close()


#: Hours of work for the engine, in blocks of 65,536 rows (KILL QUERY acts between them).
ENDLESS = "SELECT count() FROM numbers(1000000000000) WHERE NOT ignore(cityHash64(number))"


def test_embedded_readers_query_beside_inserts_and_each_other(tmp_path: Path) -> None:
    sink = EmbeddedSink(str(tmp_path / "chdb"))
    readers = [sink.reader(), sink.reader()]
    outcome: list[BaseException | None] = []

    def endless() -> None:
        try:
            readers[0].query(ENDLESS, max_execution_time=120, query_id="endless-1")
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - reported below
            outcome.append(exc)

    def listed() -> int:
        return int(readers[1].query(
            "SELECT count() FROM system.processes "
            "WHERE startsWith(query, '/* tinyingest query endless-1 */')").rows[0][0])

    thread = threading.Thread(target=endless)
    try:
        sink.execute("CREATE TABLE t (a String) ENGINE = MergeTree ORDER BY a")
        thread.start()
        deadline = time.monotonic() + 10
        while listed() == 0:
            assert time.monotonic() < deadline, "the endless query never started"
            time.sleep(0.01)
        # The writer's connection and another reader's are not held up by the query.
        sink.insert("t", encode_rows(["a"], ["String"], [("x",), ("y",)]))
        assert readers[1].query("SELECT count() FROM t").rows == [(2,)]
        assert thread.is_alive() and listed() == 1 and not outcome
        assert sink.cancel("endless-1")
        thread.join(10)
        assert not thread.is_alive(), "KILL QUERY did not stop the reader's query"
        assert isinstance(outcome[0], SinkError) and outcome[0].code == 394  # QUERY_WAS_CANCELLED
    finally:
        if thread.is_alive():
            sink.cancel("endless-1")
            thread.join(10)
        for reader in readers:
            reader.close()
        sink.close()
