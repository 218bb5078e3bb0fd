"""Native encoder: golden bytes per type (hand-checked against ClickHouse's layout)."""

from __future__ import annotations

import array
import datetime
import struct

import pytest

from tinyingest.block import Block, ColumnData
from tinyingest.native import (
    encode_block,
    encode_low_cardinality_py,
    encode_rows,
    encode_strings,
    encode_strings_py,
    write_varint,
)
from tinyingest.schema import ColumnSpec


def strings(values: list[bytes], nulls: bytes | None = None) -> ColumnData:
    bounds = array.array("q", [0])
    for value in values:
        bounds.append(bounds[-1] + len(value))
    return ColumnData(b"".join(values), bounds.tobytes(), nulls)


def encode_one(ch_type: str, column: ColumnData, num_rows: int) -> tuple[str, bytes]:
    encoded = encode_block([ColumnSpec.build("c", ch_type, "$.c")], Block(num_rows, [column]))
    assert encoded.names == ("c",)
    assert encoded.num_rows == num_rows
    return encoded.types[0], encoded.payloads[0]


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, b"\x00"), (1, b"\x01"), (127, b"\x7f"), (128, b"\x80\x01"), (300, b"\xac\x02"),
     (2**63, b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01")],
)
def test_varint(value: int, expected: bytes) -> None:
    out = bytearray()
    write_varint(value, out)
    assert bytes(out) == expected


@pytest.mark.parametrize(
    ("ch_type", "fmt", "values"),
    [
        ("Int8", "<b", [-128, 0, 127]),
        ("Int16", "<h", [-32768, 1, 32767]),
        ("Int32", "<i", [-(2**31), 2, 2**31 - 1]),
        ("Int64", "<q", [-(2**63), 3, 2**63 - 1]),
        ("UInt8", "<B", [0, 1, 255]),
        ("UInt16", "<H", [0, 1, 65535]),
        ("UInt32", "<I", [0, 1, 2**32 - 1]),
        ("UInt64", "<Q", [0, 1, 2**64 - 1]),
        ("Float32", "<f", [-1.5, 0.0, 3.25]),
        ("Float64", "<d", [-1.5, 0.0, 1e300]),
        ("Date", "<H", [0, 19000, 65535]),
        ("DateTime", "<I", [0, 1700000000, 2**32 - 1]),
    ],
)
def test_fixed_width_is_copied_as_is(ch_type: str, fmt: str, values: list[float]) -> None:
    raw = b"".join(struct.pack(fmt, v) for v in values)
    assert encode_one(ch_type, ColumnData(raw), 3) == (ch_type, raw)


def test_nullable_fixed_width_is_null_map_then_values() -> None:
    raw = struct.pack("<3i", 7, 0, -1)
    column = ColumnData(raw, nulls=b"\x00\x01\x00")
    assert encode_one("Nullable(Int32)", column, 3) == ("Nullable(Int32)", b"\x00\x01\x00" + raw)


def test_nullable_without_null_map_means_no_nulls() -> None:
    assert encode_one("Nullable(UInt8)", ColumnData(b"\x05\x06"), 2)[1] == b"\x00\x00\x05\x06"


def test_string_is_varint_length_prefixed() -> None:
    column = strings([b"a", b"", b"\xc3\xa9t\xc3\xa9", b"x" * 200])
    expected = b"\x01a" + b"\x00" + b"\x05\xc3\xa9t\xc3\xa9" + b"\xc8\x01" + b"x" * 200
    assert encode_one("String", column, 4) == ("String", expected)


def test_nullable_string() -> None:
    column = strings([b"a", b"", b"bc"], nulls=b"\x00\x01\x00")
    assert encode_one("Nullable(String)", column, 3) == (
        "Nullable(String)",
        b"\x00\x01\x00" + b"\x01a\x00\x02bc",
    )


def test_low_cardinality_string() -> None:
    column = strings([b"b", b"a", b"b", b"b"])
    expected = (
        struct.pack("<Q", 1)  # keys serialization version
        + struct.pack("<Q", (1 << 9) | (1 << 10) | 0)  # additional keys, UInt8 indexes
        + struct.pack("<Q", 2) + b"\x01b\x01a"  # dictionary
        + struct.pack("<Q", 4) + b"\x00\x01\x00\x00"  # indexes
    )
    assert encode_one("LowCardinality(String)", column, 4) == ("LowCardinality(String)", expected)


def test_low_cardinality_nullable_string_reserves_index_zero_for_null() -> None:
    column = strings([b"x", b"ignored", b"", b"x"], nulls=b"\x00\x01\x00\x00")
    expected = (
        struct.pack("<QQQ", 1, (1 << 9) | (1 << 10), 3) + b"\x00\x01x\x00"
        + struct.pack("<Q", 4) + b"\x01\x00\x02\x01"
    )
    assert encode_one("LowCardinality(Nullable(String))", column, 4) == (
        "LowCardinality(Nullable(String))",
        expected,
    )


def test_low_cardinality_index_widens_past_256_values() -> None:
    values = [str(i).encode() for i in range(300)]
    payload = encode_low_cardinality_py(strings(values).offsets or b"", b"".join(values))
    version, serialization, size = struct.unpack_from("<QQQ", payload)
    assert (version, serialization & 0xFF, size) == (1, 1, 300)  # UInt16 indexes
    assert payload[-600:] == array.array("H", range(300)).tobytes()


def test_empty_block_encodes_to_empty_payloads() -> None:
    specs = [ColumnSpec.build(f"c{i}", t, "$.c") for i, t in
             enumerate(["String", "Nullable(Int64)", "LowCardinality(String)"])]
    block = Block(0, [strings([]), ColumnData(b""), strings([])])
    assert encode_block(specs, block).payloads == (b"", b"", b"")


def test_encode_strings_matches_reference() -> None:
    values = [b"", b"a" * 127, b"b" * 128, b"c" * 70000]
    column = strings(values)
    assert column.offsets is not None
    assert encode_strings(column.offsets, column.values) == encode_strings_py(
        column.offsets, column.values
    )


@pytest.mark.parametrize(
    ("ch_type", "column", "num_rows"),
    [
        ("Int32", ColumnData(b"\x00" * 7), 2),
        ("String", ColumnData(b"ab", array.array("q", [0, 2]).tobytes()), 2),
        ("Nullable(UInt8)", ColumnData(b"\x00\x00", nulls=b"\x00"), 2),
    ],
)
def test_mismatched_buffers_are_refused(ch_type: str, column: ColumnData, num_rows: int) -> None:
    with pytest.raises(ValueError):
        encode_one(ch_type, column, num_rows)


def test_encode_rows_quarantine_shape() -> None:
    when = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    encoded = encode_rows(
        ["errors", "line", "source", "at"],
        ["Array(String)", "Nullable(String)", "String", "DateTime"],
        [
            (["bad int", "é"], b"{\"a\":", "ds", when),
            ([], None, b"raw", 0),
        ],
    )
    assert encoded.types == ("Array(String)", "Nullable(String)", "String", "DateTime")
    assert encoded.num_rows == 2
    assert encoded.payloads == (
        struct.pack("<QQ", 2, 2) + b"\x07bad int" + b"\x02\xc3\xa9",
        b"\x00\x01" + b"\x05{\"a\":" + b"\x00",
        b"\x02ds\x03raw",
        struct.pack("<II", 1704164645, 0),
    )
