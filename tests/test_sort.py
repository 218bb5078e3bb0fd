"""Inserts sorted by the table's sorting key (``native.sort_plan`` / ``sort_block``).

The rows of a sorted batch are the batch's rows, in the stable order of the key as
ClickHouse compares it; ClickHouse 18.16 and chDB then count the block as already sorted
(``MergeTreeDataWriterBlocksAlreadySorted``) instead of sorting it again.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import random
from typing import Any

import pytest

from parsers import implementation
from tinyingest.batcher import BatchLimits, SinkPool, TableBatcher
from tinyingest.block import EncodedBlock
from tinyingest.native import decode_rows, encode_block, merge_blocks, sort_block, sort_plan
from tinyingest.schema import ColumnSpec
from tinyingest.sinks import Sink

# name, type, a value for row r drawn from rng (few distinct values: many ties)
COLUMNS: list[tuple[str, str, Any]] = [
    ("i8", "Int8", lambda rng: rng.choice([-128, -1, 0, 1, 127])),
    ("u16", "UInt16", lambda rng: rng.choice([0, 1, 255, 256, 65535])),
    ("i32", "Int32", lambda rng: rng.randrange(-3, 3) * 1_000_000_000 // 2),
    ("i64", "Int64", lambda rng: rng.choice([-(1 << 63), -5, 0, 7, (1 << 63) - 1])),
    ("u64", "UInt64", lambda rng: rng.choice([0, 1, 1 << 40, (1 << 64) - 1])),
    ("f32", "Float32", lambda rng: rng.choice([-1.5, -0.0, 0.0, 0.25, 3e38])),
    ("f64", "Float64", lambda rng: rng.choice([-1e300, -2.5, 0.0, 1e-300, 2.5])),
    ("day", "Date", lambda rng: rng.choice(["1970-01-01", "2024-02-29", "2149-06-06"])),
    ("ts", "DateTime", lambda rng: 1_700_000_000 + rng.randrange(5) * 3600),
    ("s", "String", lambda rng: rng.choice(["", "a", "ab", "b", "é", "a\u0000", "z" * 200])),
    ("lc", "LowCardinality(String)", lambda rng: rng.choice(["click", "view", "", "buy"])),
    ("lcn", "LowCardinality(Nullable(String))", lambda rng: rng.choice([None, "x", "y"])),
    ("lcu", "LowCardinality(UInt32)", lambda rng: rng.choice([7, 1, 4294967295])),
    ("fs", "FixedString(3)", lambda rng: rng.choice(["abc", "ab", "b"])),
    ("ns", "Nullable(String)", lambda rng: rng.choice([None, "n", ""])),
    ("ni", "Nullable(Int32)", lambda rng: rng.choice([None, -1, 2])),
    ("tags", "Array(String)", lambda rng: rng.sample(["a", "bb", "é"], rng.randint(0, 3))),
    ("ints", "Array(Nullable(Int16))",
     lambda rng: [rng.choice([None, -1, 300]) for _ in range(rng.randint(0, 2))]),
    ("labels", "Array(LowCardinality(String))",
     lambda rng: [rng.choice(["x", "y", ""]) for _ in range(rng.randint(0, 3))]),
    ("codes", "Array(LowCardinality(Nullable(UInt8)))",
     lambda rng: [rng.choice([None, 1, 2]) for _ in range(rng.randint(0, 2))]),
]
KEYABLE = ["i8", "u16", "i32", "i64", "u64", "f32", "f64", "day", "ts", "s", "lc", "lcu"]
#: Columns whose packed keys (value range, or rank among distinct values) stay small, so
#: any three of them fit the sort's 64-bit key.
NARROW = ["i8", "u16", "day", "ts", "s", "lc"]
SPECS = [ColumnSpec.build(name, ch_type, f"$.{name}") for name, ch_type, _ in COLUMNS]
NAMES = [name for name, _, _ in COLUMNS]


def _blocks(rng: random.Random, sizes: list[int]) -> list[EncodedBlock]:
    blocks = []
    for size in sizes:
        rows = [{name: value(rng) for name, _, value in COLUMNS} for _ in range(size)]
        parser = implementation("c").NDJSONParser(SPECS)
        parser.feed(b"".join(json.dumps(row).encode() + b"\n" for row in rows))
        parser.finish()
        block = parser.take_block()
        assert block.num_rows == size and not block.errors
        blocks.append(encode_block(SPECS, block))
    return blocks


def _order(value: Any) -> Any:
    # ClickHouse compares strings as bytes; FixedString reads back without its padding.
    return value.encode() if isinstance(value, str) else value


@pytest.mark.parametrize("seed", range(40))
def test_sorted_rows_are_the_rows_in_key_order(seed: int) -> None:
    rng = random.Random(seed)
    key = rng.sample(KEYABLE, 1) if seed % 2 else rng.sample(NARROW, rng.randint(2, 3))
    plan = sort_plan(SPECS, ", ".join(key))
    assert plan is not None
    blocks = _blocks(rng, [rng.randint(1, 40) for _ in range(rng.randint(1, 4))])
    merged = merge_blocks(SPECS, blocks)
    rows = [row for block in blocks for row in decode_rows(block)]
    positions = [NAMES.index(name) for name in key]
    expected = sorted(rows, key=lambda row: [_order(row[p]) for p in positions])
    result = sort_block(plan, merged)
    if expected == rows:
        assert result is merged  # in order already: nothing to do
    else:
        assert decode_rows(result) == expected


def test_what_cannot_be_sorted_here_is_left_to_clickhouse() -> None:
    for key in ("toDate(ts)", "tuple()", "", "ns", "ni", "missing", "lcn"):
        assert sort_plan(SPECS, key) is None, key
    assert sort_plan(SPECS, "(`ts`, lc)") is not None
    nested = SPECS + [ColumnSpec.build("m", "Array(Array(String))", "$.m")]
    assert sort_plan(nested, "ts") is None
    assert sort_plan(SPECS, "tags") is None
    assert sort_plan([ColumnSpec.build("u", "UUID", "$.u")], "u") is None
    # Two 64-bit key columns with wide ranges do not pack into one 64-bit key.
    plan = sort_plan(SPECS, "i64, u64")
    assert plan is not None
    merged = merge_blocks(SPECS, _blocks(random.Random(1), [30, 30]))
    assert sort_block(plan, merged) is merged


def test_batcher_inserts_arrive_sorted(sink: Sink) -> None:
    """Blocks of several requests merged into one insert reach the server in order: it
    stores them without sorting again, and stores every row."""
    columns = ", ".join(f"{name} {ch_type}" for name, ch_type, _ in COLUMNS)
    sink.execute("SET allow_suspicious_low_cardinality_types = 1"
                 if sink.name == "embedded" else "SELECT 1")
    sink.execute(f"CREATE TABLE sorted_inserts ({columns}) ENGINE = MergeTree "
                 "ORDER BY (lc, ts, s)")
    plan = sort_plan(SPECS, "lc, ts, s")
    blocks = _blocks(random.Random(7), [50, 20, 80])
    writer = SinkPool([sink], "writer")

    def already_sorted() -> int:
        rows = sink.query("SELECT value FROM system.events "
                          "WHERE event = 'MergeTreeDataWriterBlocksAlreadySorted'").rows
        return int(rows[0][0]) if rows else 0

    async def insert() -> None:
        batcher = TableBatcher(writer, "sorted_inserts", SPECS,
                               BatchLimits(flush_interval=60.0), sort=plan)
        futures = [batcher.add(block) for block in blocks]
        batcher.expedite()  # one insert of the three blocks, now
        await asyncio.gather(*futures)
        await batcher.close()

    before = already_sorted()
    asyncio.run(insert())
    assert already_sorted() == before + 1
    stored = sink.query(f"SELECT {', '.join(NAMES)} FROM sorted_inserts").rows
    sent = [row for block in blocks for row in decode_rows(block)]

    def comparable(row: Any) -> tuple[Any, ...]:
        return tuple(value.isoformat() if isinstance(value, (datetime.date,)) else
                     repr(value) for value in row)

    assert sorted(map(comparable, stored)) == sorted(map(comparable, sent))
