"""Block -> ClickHouse Native column data (:class:`~tinyingest.block.EncodedBlock`).

The parsers already lay out fixed-width columns and null maps exactly as ClickHouse's
Native format wants them, so encoding is mostly concatenation. The one transformation
is ``String``: Native writes each value as ``varint(len) + bytes``, while a
:class:`~tinyingest.block.ColumnData` holds ``(offsets, data)``. That happens in
:func:`encode_strings`, the compiled ``_encode.encode_strings`` when it is built,
else :func:`encode_strings_py`.

Native column payloads, as written here (no per-column header; the sinks add the
column name and type):

* fixed width (``Int*``, ``UInt*``, ``Float*``, ``Date``, ``DateTime``, ``Bool`` (UInt8),
  ``Enum8``/``Enum16`` (Int8/Int16 codes), ``Date32`` (Int32 days), ``IPv4`` (UInt32),
  ``UUID`` (two UInt64 halves, high half first)): the values, little-endian,
  ``num_rows * width`` bytes;
* ``FixedString(N)``: ``num_rows * N`` bytes; the parsers hold it like String, with
  every value padded to N, so the data is the payload and the offsets are dropped;
* ``String``: per row ``varint(len)`` then the bytes;
* ``Nullable(T)``: the null map (one byte per row, 1 = NULL), then T's payload, in
  which NULL rows hold a default value;
* ``Array(T)``: ``num_rows`` UInt64 cumulative end offsets, then T's payload for all
  elements (``Array(Array(T))``: the inner arrays' end offsets, then T's). The parsers
  hold an Array column Native-ready: ``offsets`` the row end offsets, ``values`` the
  nested payload; :func:`merge_blocks` rebases the offsets of later blocks
  (:func:`shift_offsets`);
* ``Map(String, V)``: as ``Array(Tuple(String, V))``, which is how ClickHouse serializes
  it: ``num_rows`` UInt64 cumulative end offsets, the keys' ``String`` payload, then
  V's payload for all values. :func:`merge_blocks` finds where a block's keys end with
  :func:`strings_end`;
* ``LowCardinality(String)`` / ``LowCardinality(Nullable(String))``: the table's own
  type, in LowCardinality's Native serialization (one dictionary per block, see
  :func:`encode_low_cardinality_py`). Sending plain ``String`` instead is accepted by
  chDB 26.9 but *not* by ClickHouse 18.16 over the native protocol: its INSERT then
  fails with "Bad cast from type DB::ColumnString to DB::ColumnLowCardinality"
  (``low_cardinality_allow_in_native_format=0`` does not help), so every backend gets
  real LowCardinality data.
* ``LowCardinality(T)`` / ``LowCardinality(Nullable(T))``, ``T`` fixed width or
  ``FixedString(N)``: the same layout with the dictionary as ``T``'s payload (see
  :func:`encode_low_cardinality_fixed_py`);
* ``Array(LowCardinality(T))`` (any depth): the LowCardinality state prefix first, then
  every level's offsets, then the elements as one LowCardinality granule (the prefix of
  a nested column precedes the whole column in Native). :func:`merge_blocks` keeps one
  prefix and each block's elements as a granule;
* ``Tuple(T1, T2, ...)``: each element's payload (its null map first when Nullable),
  one after the other. The parsers hold a Tuple column that way in ``values``;
  :func:`merge_blocks` splits each block per element (:func:`tuple_parts`) and merges
  the elements as columns of their own.

All multi-byte values are little-endian: like ClickHouse itself, this module assumes a
little-endian host (the parsers write native-order buffers).

:func:`encode_rows` encodes Python values with clickhouse-driver's column writers, for
the slow paths only: the few rows of the quarantine table, and splitting a block
ClickHouse refused (:func:`split_block`).
"""

from __future__ import annotations

import array
import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tinyingest.block import Block, ColumnData, EncodedBlock
from tinyingest.schema import FIXED_WIDTH, ColumnSpec, TypeCode

__all__ = [
    "encode_block",
    "encode_column",
    "encode_low_cardinality",
    "encode_low_cardinality_py",
    "encode_low_cardinality_fixed",
    "encode_low_cardinality_fixed_py",
    "encode_rows",
    "omit_missing",
    "split_block",
    "encode_strings",
    "encode_strings_py",
    "native_type",
    "write_varint",
    "varint",
    "binary_str",
    "native_header",
    "merge_blocks",
    "tuple_parts",
    "shift_offsets",
    "shift_offsets_py",
    "strings_end",
    "strings_end_py",
    "split_strings",
    "split_strings_py",
    "decode_rows",
    "SortPlan",
    "sort_plan",
    "sort_block",
]


def write_varint(value: int, out: bytearray) -> None:
    """Append ``value`` (>= 0) as an unsigned LEB128 varint, as ClickHouse writes it.

    >>> buf = bytearray(); write_varint(300, buf); bytes(buf)
    b'\\xac\\x02'
    """
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


#: One-byte varints: most lengths and counts in a small block (the spool writes several
#: per request).
_SMALL_VARINTS = tuple(bytes((n,)) for n in range(0x80))


def varint(value: int) -> bytes:
    """``value`` as an unsigned LEB128 varint."""
    if 0 <= value < 0x80:
        return _SMALL_VARINTS[value]
    out = bytearray()
    write_varint(value, out)
    return bytes(out)


def binary_str(text: str) -> bytes:
    """A ClickHouse binary string: varint length, then the UTF-8 bytes."""
    raw = text.encode("utf-8")
    return varint(len(raw)) + raw


def native_header(block: EncodedBlock, index: int) -> bytes:
    """What precedes column ``index``'s payload in a Native block: its name and type."""
    return binary_str(block.names[index]) + binary_str(block.types[index])


def encode_strings_py(offsets: bytes, data: bytes) -> bytes:
    """Native ``String`` payload from ``(offsets, data)``; the pure-Python reference.

    :param offsets: ``num_rows + 1`` int64 boundaries in native byte order; value ``i``
        is ``data[offsets[i]:offsets[i + 1]]``.
    :param data: the concatenated value bytes.

    >>> import array
    >>> encode_strings_py(array.array("q", [0, 2, 2, 5]).tobytes(), b"abxyz")
    b'\\x02ab\\x00\\x03xyz'
    """
    bounds = memoryview(offsets).cast("B").cast("q").tolist()
    if not bounds:
        raise ValueError("string offsets must hold num_rows + 1 values")
    out = bytearray()
    view = memoryview(data)
    prev = bounds[0]
    # A plain loop over a list of ints measured fastest in CPython (~5 M values/s),
    # ahead of building a parts list for b"".join.
    for end in bounds[1:]:
        length = end - prev
        if 0 <= length < 0x80:
            out.append(length)
        elif length > 0:
            write_varint(length, out)
        else:
            raise ValueError("string offsets must not decrease")
        out += view[prev:end]
        prev = end
    return bytes(out)


encode_strings: Callable[[bytes, bytes], bytes]
try:
    from tinyingest._encode import encode_strings  # type: ignore[no-redef,import-not-found,unused-ignore]
except ImportError:  # no compiled extension: the reference implementation
    encode_strings = encode_strings_py


def shift_offsets_py(offsets: bytes, base: int) -> bytes:
    """UInt64 values (native order), each plus ``base``; the pure-Python reference.

    >>> array.array("Q", shift_offsets_py(array.array("Q", [1, 3]).tobytes(), 2)).tolist()
    [3, 5]
    """
    values = array.array("Q", offsets)
    return array.array("Q", [value + base for value in values]).tobytes()


shift_offsets: Callable[[bytes, int], bytes]
try:
    from tinyingest._encode import shift_offsets  # type: ignore[no-redef,import-not-found,unused-ignore]
except ImportError:  # no compiled extension: the reference implementation
    shift_offsets = shift_offsets_py


def _string_spans_py(data: bytes, count: int) -> list[tuple[int, int]]:
    """(start, end) of each of ``count`` Native String values at the start of ``data``."""
    spans = []
    pos = 0
    for _ in range(count):
        length = shift = 0
        while True:
            if pos >= len(data) or shift > 63:
                raise ValueError(f"data does not hold {count} strings")
            byte = data[pos]
            length |= (byte & 0x7F) << shift
            shift += 7
            pos += 1
            if byte < 0x80:
                break
        if length > len(data) - pos:
            raise ValueError(f"data does not hold {count} strings")
        spans.append((pos, pos + length))
        pos += length
    return spans


def strings_end_py(data: bytes, count: int) -> int:
    """Where ``count`` Native String values at the start of ``data`` end; the
    pure-Python reference.

    >>> strings_end_py(b"\\x02ab\\x00\\x01cz", 3)
    6
    """
    spans = _string_spans_py(data, count)
    return spans[-1][1] if spans else 0


def split_strings_py(data: bytes, count: int) -> tuple[bytes, bytes]:
    """``count`` Native String values -> (int64 offsets from 0, the concatenated bytes);
    the pure-Python reference.

    >>> offsets, values = split_strings_py(b"\\x02ab\\x00\\x01c", 3)
    >>> array.array("q", offsets).tolist(), values
    ([0, 2, 2, 3], b'abc')
    """
    spans = _string_spans_py(data, count)
    ends = [0]
    for start, end in spans:
        ends.append(ends[-1] + end - start)
    return array.array("q", ends).tobytes(), b"".join(data[start:end] for start, end in spans)


split_strings: Callable[[bytes, int], tuple[bytes, bytes]]
try:
    from tinyingest._encode import split_strings  # type: ignore[no-redef,import-not-found,unused-ignore]
except ImportError:  # no compiled extension: the reference implementation
    split_strings = split_strings_py


sort_columns: Callable[..., list[bytes] | None] | None
try:
    from tinyingest._encode import sort_columns  # type: ignore[no-redef,import-not-found,unused-ignore]
except ImportError:  # no compiled extension: inserts go unsorted (ClickHouse sorts them)
    sort_columns = None

strings_end: Callable[[bytes, int], int]
try:
    from tinyingest._encode import strings_end  # type: ignore[no-redef,import-not-found,unused-ignore]
except ImportError:  # no compiled extension: the reference implementation
    strings_end = strings_end_py


# LowCardinality serialization constants (ClickHouse's SerializationLowCardinality).
_LC_KEYS_VERSION = 1  # SharedDictionariesWithAdditionalKeys: the state prefix
_LC_HAS_ADDITIONAL_KEYS = 1 << 9  # the block carries its own dictionary ("additional keys")
_LC_NEED_UPDATE_DICTIONARY = 1 << 10
_LC_PREFIX = struct.pack("<Q", _LC_KEYS_VERSION)
_LC_INDEX_TYPES = ((0xFF, 0, "B"), (0xFFFF, 1, "H"), (0xFFFFFFFF, 2, "I"), (2**64 - 1, 3, "Q"))


def encode_low_cardinality_py(offsets: bytes, data: bytes, nulls: bytes | None = None) -> bytes:
    """Native ``LowCardinality(String)`` payload, or ``LowCardinality(Nullable(String))``
    when ``nulls`` is given; the pure-Python reference.

    Layout (what clickhouse-driver and ClickHouse's own client write): UInt64 keys
    version ``1`` (the column's state prefix), UInt64 ``serialization type`` (index width
    code | has-additional-keys | need-update-dictionary), UInt64 dictionary size, the
    dictionary as a ``String`` payload, UInt64 row count, then one index per row. For
    Nullable, dictionary position 0 stands for NULL (its value is ``""``). Zero rows
    encode as nothing, as ClickHouse reads no column data for an empty block.

    :param offsets: ``num_rows + 1`` int64 boundaries in native byte order.
    :param data: the concatenated value bytes.
    :param nulls: one byte per row, 1 = NULL; the row's value bytes are then ignored.

    >>> import array
    >>> encode_low_cardinality_py(array.array("q", [0, 1, 2, 3]).tobytes(), b"aba").hex()
    '010000000000000000060000000000000200000000000000016101620300000000000000000100'
    """
    bounds = memoryview(offsets).cast("B").cast("q").tolist()
    num_rows = len(bounds) - 1
    if num_rows <= 0:
        return b""
    index: dict[bytes, int] = {}
    # dict.setdefault(value, len(index)) returns the existing position or inserts the
    # next one: one C call per row.
    if nulls is None:
        keys = [index.setdefault(data[start:end], len(index)) for start, end in
                zip(bounds, bounds[1:])]
        dictionary = list(index)
    else:
        if len(nulls) != num_rows:
            raise ValueError(f"{len(nulls)} null flags for {num_rows} rows")
        keys = [0 if is_null else index.setdefault(data[start:end], len(index)) + 1
                for is_null, start, end in zip(nulls, bounds, bounds[1:])]
        dictionary = [b""]
        dictionary.extend(index)
    out = bytearray()
    for value in dictionary:
        write_varint(len(value), out)
        out += value
    return _lc_payload(len(dictionary), out, keys)


def _lc_payload(size: int, dictionary: bytes | bytearray, keys: list[int]) -> bytes:
    """Header, the ``size`` entries' ``dictionary`` payload, row count and indexes."""
    width_code, typecode = next((code, tc) for limit, code, tc in _LC_INDEX_TYPES
                                if size - 1 <= limit)
    return b"".join((
        struct.pack("<QQQ", _LC_KEYS_VERSION,
                    _LC_HAS_ADDITIONAL_KEYS | _LC_NEED_UPDATE_DICTIONARY | width_code, size),
        dictionary,
        struct.pack("<Q", len(keys)),
        array.array(typecode, keys).tobytes(),
    ))


def encode_low_cardinality_fixed_py(values: bytes, width: int,
                                    nulls: bytes | None = None) -> bytes:
    """Native ``LowCardinality(T)`` payload for a fixed-width ``T`` (numbers, Date,
    DateTime, UUID, IPv4, FixedString(N): ``width`` bytes a value), or
    ``LowCardinality(Nullable(T))`` when ``nulls`` is given; the pure-Python reference.

    As :func:`encode_low_cardinality_py`, with the dictionary written as ``T``'s Native
    payload (the values, ``width`` bytes each); for Nullable its position 0 stands for
    NULL and holds ``width`` zero bytes.

    >>> encode_low_cardinality_fixed_py(bytes([7, 9, 7]), 1).hex()
    '01000000000000000006000000000000020000000000000007090300000000000000000100'
    """
    if width <= 0 or len(values) % width:
        raise ValueError(f"{len(values)} value bytes are not values of {width} bytes")
    num_rows = len(values) // width
    if num_rows == 0:
        return b""
    data = bytes(values)
    index: dict[bytes, int] = {}
    if nulls is None:
        keys = [index.setdefault(data[start : start + width], len(index))
                for start in range(0, len(data), width)]
        dictionary = b"".join(index)
        return _lc_payload(len(index), dictionary, keys)
    if len(nulls) != num_rows:
        raise ValueError(f"{len(nulls)} null flags for {num_rows} rows")
    keys = [0 if is_null else index.setdefault(data[start : start + width], len(index)) + 1
            for is_null, start in zip(nulls, range(0, len(data), width))]
    return _lc_payload(len(index) + 1, b"\0" * width + b"".join(index), keys)


encode_low_cardinality: Callable[[bytes, bytes, bytes | None], bytes]
try:
    from tinyingest._encode import encode_low_cardinality  # type: ignore[no-redef,import-not-found,unused-ignore]
except ImportError:  # no compiled extension: the reference implementation
    encode_low_cardinality = encode_low_cardinality_py


encode_low_cardinality_fixed: Callable[[bytes, int, bytes | None], bytes]
try:
    from tinyingest._encode import encode_low_cardinality_fixed  # type: ignore[no-redef,import-not-found,unused-ignore]
except ImportError:  # no compiled extension: the reference implementation
    encode_low_cardinality_fixed = encode_low_cardinality_fixed_py


def native_type(spec: ColumnSpec) -> str:
    """The type a column is encoded as: the table's declared type.

    >>> native_type(ColumnSpec.build("c", "LowCardinality(Nullable(String))"))
    'LowCardinality(Nullable(String))'
    """
    return spec.ch_type


def encode_column(spec: ColumnSpec, column: ColumnData, num_rows: int) -> bytes:
    """The Native payload of one column (see the module docstring for the layouts).

    :raises ValueError: the buffers do not hold ``num_rows`` values.
    """
    if spec.tuple_elements:
        tuple_parts(spec, num_rows, column.values)  # checks the layout
        return bytes(column.values)
    if spec.array_depth:
        if column.offsets is None or len(column.offsets) != 8 * num_rows:
            raise ValueError(f"column {spec.name!r}: Array data without one offset per row")
        if spec.low_cardinality:
            return _array_low_cardinality(spec, bytes(column.offsets), bytes(column.values))
        return bytes(column.offsets) + bytes(column.values)
    if spec.low_cardinality and spec.type_code is not TypeCode.STRING:
        width = spec.length if spec.type_code is TypeCode.FIXED_STRING \
            else FIXED_WIDTH[spec.type_code]
        if len(column.values) != width * num_rows:
            raise ValueError(
                f"column {spec.name!r}: {len(column.values)} value bytes for {num_rows} rows "
                f"of {width} bytes"
            )
        nulls = column.nulls
        if spec.nullable and nulls is None:
            nulls = b"\x00" * num_rows
        return encode_low_cardinality_fixed(column.values, width,
                                            nulls if spec.nullable else None)
    if spec.type_code is TypeCode.STRING:
        if column.offsets is None:
            raise ValueError(f"column {spec.name!r}: String data without offsets")
        if len(column.offsets) != 8 * (num_rows + 1):
            raise ValueError(
                f"column {spec.name!r}: {len(column.offsets)} offset bytes for {num_rows} rows"
            )
        if spec.low_cardinality:
            nulls = column.nulls
            if spec.nullable and nulls is None:
                nulls = b"\x00" * num_rows
            return encode_low_cardinality(
                column.offsets, column.values, nulls if spec.nullable else None
            )
        data = encode_strings(column.offsets, column.values)
    elif spec.type_code is TypeCode.FIXED_STRING:
        if len(column.values) != spec.length * num_rows:
            raise ValueError(
                f"column {spec.name!r}: {len(column.values)} value bytes for {num_rows} rows "
                f"of {spec.length} bytes"
            )
        data = bytes(column.values)
    else:
        width = FIXED_WIDTH[spec.type_code]
        if len(column.values) != width * num_rows:
            raise ValueError(
                f"column {spec.name!r}: {len(column.values)} value bytes for {num_rows} rows "
                f"of {width} bytes"
            )
        data = bytes(column.values)
    if not spec.nullable:
        return data
    if column.nulls is None:
        return b"\x00" * num_rows + data
    if len(column.nulls) != num_rows:
        raise ValueError(f"column {spec.name!r}: {len(column.nulls)} null flags for {num_rows} rows")
    return bytes(column.nulls) + data


def _array_low_cardinality(spec: ColumnSpec, offsets: bytes, nested: bytes) -> bytes:
    """``Array(LowCardinality(T))`` from the parsers' Array payload (offsets, then T's
    plain payload): the LowCardinality state prefix comes first, before every level's
    offsets, then the elements as one LowCardinality granule."""
    levels = [offsets]
    count = int.from_bytes(offsets[-8:], "little") if offsets else 0
    for _ in range(spec.array_depth - 1):
        levels.append(nested[: 8 * count])
        nested = nested[8 * count :]
        count = int.from_bytes(levels[-1][-8:], "little") if count else 0
    nulls = nested[:count] if spec.nullable else None
    values = nested[count:] if spec.nullable else nested
    if spec.type_code is TypeCode.STRING:
        elements = encode_low_cardinality(*split_strings(values, count), nulls)
    else:
        width = spec.length if spec.type_code is TypeCode.FIXED_STRING \
            else FIXED_WIDTH[spec.type_code]
        if len(values) != width * count:
            raise ValueError(f"column {spec.name!r}: {len(values)} value bytes for {count} "
                             f"elements of {width} bytes")
        elements = encode_low_cardinality_fixed(values, width, nulls)
    return _LC_PREFIX + b"".join(levels) + elements[len(_LC_PREFIX) :]


def tuple_parts(spec: ColumnSpec, num_rows: int, payload: bytes) -> list[bytes]:
    """A Tuple column's Native payload split into its elements' payloads.

    :raises ValueError: ``payload`` is not ``num_rows`` rows of the elements.
    """
    parts: list[bytes] = []
    pos = 0
    for element in spec.tuple_elements:
        size = num_rows if element.nullable else 0
        if element.type_code is TypeCode.STRING:
            try:
                size += strings_end(payload[pos + size :], num_rows)
            except ValueError:
                raise ValueError(f"column {spec.name!r}: Tuple data does not hold "
                                 f"{num_rows} rows") from None
        elif element.type_code is TypeCode.FIXED_STRING:
            size += element.length * num_rows
        else:
            size += FIXED_WIDTH[element.type_code] * num_rows
        parts.append(payload[pos : pos + size])
        pos += size
    if pos != len(payload):
        raise ValueError(f"column {spec.name!r}: {len(payload)} Tuple bytes for {num_rows} rows")
    return parts


def encode_block(columns: Sequence[ColumnSpec], block: Block) -> EncodedBlock:
    """Encode a parser's :class:`~tinyingest.block.Block` as Native column data.

    :param columns: the block's columns, in order (``block.columns[i]`` is ``columns[i]``).
    :param block: the rows; its ``errors`` are ignored here.
    :raises ValueError: a column's buffers do not match ``block.num_rows``.
    """
    if len(columns) != len(block.columns):
        raise ValueError(f"{len(columns)} column specs for {len(block.columns)} columns")
    return EncodedBlock(
        names=tuple(spec.name for spec in columns),
        types=tuple(native_type(spec) for spec in columns),
        num_rows=block.num_rows,
        payloads=tuple(
            encode_column(spec, column, block.num_rows)
            for spec, column in zip(columns, block.columns)
        ),
    )


# -- slow path: Python values (quarantine rows, refused blocks) -----------------------


def _driver_context(timezone: str = "UTC") -> Any:
    """A clickhouse-driver context for its column readers and writers, as over Native
    (revision 0: no BlockInfo, no custom-serialization flags) with the driver's defaults."""
    from clickhouse_driver import Client
    from clickhouse_driver.connection import ServerInfo
    from clickhouse_driver.context import Context

    context = Context()
    context.server_info = ServerInfo("tinyingest", 0, 0, 0, 0, timezone, "tinyingest", 0)
    context.settings = {}
    context.client_settings = Client("127.0.0.1").client_settings
    return context


class _Collect:
    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.parts.append(bytes(data))


def encode_rows(names: Sequence[str], types: Sequence[str],
                rows: Sequence[Sequence[Any]]) -> EncodedBlock:
    """Python rows -> Native column data, for any ClickHouse type, with clickhouse-driver's
    column writers. Slow (an object per value): for quarantine rows and for splitting a
    block ClickHouse refused, never for the rows parsed from requests.

    >>> encode_rows(["a", "t"], ["Array(String)", "Nullable(UInt8)"], [(["x"], None)]).payloads
    (b'\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x01x', b'\\x01\\x00')
    """
    from clickhouse_driver.bufferedwriter import CompressedBufferedWriter
    from clickhouse_driver.columns.service import write_column

    if len(names) != len(types):
        raise ValueError(f"{len(names)} names for {len(types)} types")
    context = _driver_context()
    payloads = []
    for index, (name, ch_type) in enumerate(zip(names, types)):
        collect = _Collect()
        buffer = CompressedBufferedWriter(collect, 1 << 20)  # plain buffering, no compression
        write_column(context, name, ch_type, [row[index] for row in rows], buffer)
        buffer.flush()
        payloads.append(b"".join(collect.parts))
    return EncodedBlock(tuple(names), tuple(types), len(rows), tuple(payloads))


def omit_missing(columns: Sequence[ColumnSpec], omitted: bytes | None,
                 block: EncodedBlock) -> list[EncodedBlock]:
    """``block`` as blocks whose rows all have a value for each column they carry: the
    columns with an expression DEFAULT that a row had no value for are left out of its
    block, for ClickHouse to compute (an INSERT fills the columns it does not name with
    their DEFAULT; Native has no per-row "use the default").

    :param columns: the block's columns; bit ``k`` of a row's mask in ``omitted`` is the
        k-th of them with :attr:`~tinyingest.schema.ColumnSpec.expression_default`.
    :param omitted: :attr:`Block.omitted <tinyingest.block.Block.omitted>`.

    When every row misses the same columns (the usual case: a client never sends that
    field) their payloads are dropped as they are; rows that differ are decoded and
    encoded again by group (slow path), each group in the rows' order.
    """
    if omitted is None or not omitted.strip(b"\0"):
        return [block]
    masks = array.array("Q")
    masks.frombytes(omitted)
    computed = [index for index, spec in enumerate(columns) if spec.expression_default]
    distinct = dict.fromkeys(masks)

    def kept(mask: int) -> list[int]:
        gone = {computed[bit] for bit in range(len(computed)) if mask >> bit & 1}
        return [index for index in range(len(block.names)) if index not in gone]

    if len(distinct) == 1:
        keep = kept(masks[0])
        return [EncodedBlock(tuple(block.names[i] for i in keep),
                             tuple(block.types[i] for i in keep), block.num_rows,
                             tuple(block.payloads[i] for i in keep))]
    rows = decode_rows(block)
    parts: list[EncodedBlock] = []
    for mask in distinct:
        keep = kept(mask)
        parts.append(encode_rows([block.names[i] for i in keep], [block.types[i] for i in keep],
                                 [[row[i] for i in keep] for row, row_mask in zip(rows, masks)
                                  if row_mask == mask]))
    return parts


def split_block(block: EncodedBlock) -> tuple[EncodedBlock, EncodedBlock]:
    """``block``'s rows in two halves (decoded and encoded again: slow path)."""
    rows = decode_rows(block)
    middle = len(rows) // 2
    return (encode_rows(block.names, block.types, rows[:middle]),
            encode_rows(block.names, block.types, rows[middle:]))


# -- batching: many requests' blocks -> one INSERT ------------------------------------


# Sorting an insert by the table's sorting key (see ext/sort.pxi for why).
_UNSIGNED = {TypeCode.UINT8, TypeCode.UINT16, TypeCode.UINT32, TypeCode.UINT64, TypeCode.DATE,
             TypeCode.DATETIME, TypeCode.BOOL, TypeCode.IPV4}
_SIGNED = {TypeCode.INT8, TypeCode.INT16, TypeCode.INT32, TypeCode.INT64, TypeCode.ENUM8,
           TypeCode.ENUM16, TypeCode.DATE32, TypeCode.DATETIME64, TypeCode.DECIMAL32,
           TypeCode.DECIMAL64}
_KEY_ORDERS = {**{code: 0 for code in _UNSIGNED}, **{code: 1 for code in _SIGNED},
               TypeCode.FLOAT32: 2, TypeCode.FLOAT64: 2,
               TypeCode.STRING: 3, TypeCode.FIXED_STRING: 3}
_KEY_NAME = re.compile(r"`([^`]+)`|([A-Za-z_][A-Za-z0-9_]*)")


@dataclass(frozen=True)
class SortPlan:
    """How to sort a table's inserts: each column's payload layout (``_encode``'s
    ``LAYOUT_*``, value width, Nullable) and the key columns with their ``ORDER_*``."""

    layouts: tuple[tuple[int, int, bool], ...]
    keys: tuple[tuple[int, int], ...]


def sort_plan(columns: Sequence[ColumnSpec], sorting_key: str | None) -> SortPlan | None:
    """The plan for inserts of ``columns`` into a table ordered by ``sorting_key``; None
    when it cannot be sorted here (an expression or a Nullable, 128-bit, UUID or Array
    key, an Array(Array), Map or Tuple column, no compiled extension): ClickHouse then
    sorts.

    >>> specs = [ColumnSpec.build("ts", "DateTime"), ColumnSpec.build("e", "LowCardinality(String)")]
    >>> sort_plan(specs, "e, ts")
    SortPlan(layouts=((0, 4, False), (2, 0, False)), keys=((1, 3), (0, 0)))
    >>> sort_plan(specs, "toDate(ts)") is None
    True
    """
    if sort_columns is None or not sorting_key:
        return None
    key = sorting_key.strip()
    if key.startswith("(") and key.endswith(")"):
        key = key[1:-1]
    layouts: list[tuple[int, int, bool]] = []
    for spec in columns:
        if spec.array_depth > 1 or spec.is_map or spec.tuple_elements:
            return None
        width = spec.length if spec.type_code is TypeCode.FIXED_STRING \
            else FIXED_WIDTH[spec.type_code]
        layout = 2 if spec.low_cardinality else 1 if spec.type_code is TypeCode.STRING else 0
        # Array(T): 3 + T's layout (width and Nullable describe the elements).
        layouts.append((layout + 3 * spec.array_depth, width, spec.nullable))
    positions = {spec.name: index for index, spec in enumerate(columns)}
    keys: list[tuple[int, int]] = []
    for item in key.split(","):
        match = _KEY_NAME.fullmatch(item.strip())
        name = (match.group(1) or match.group(2)) if match else None
        if name not in positions:
            return None  # an expression, or a column the rows do not carry
        spec = columns[positions[name]]
        order = _KEY_ORDERS.get(spec.type_code)
        if order is None or spec.nullable or spec.array_depth:
            return None
        keys.append((positions[name], order))
    return SortPlan(tuple(layouts), tuple(keys)) if keys else None


def sort_block(plan: SortPlan | None, block: EncodedBlock) -> EncodedBlock:
    """``block`` with its rows in the sorting key's order (itself when already in order
    or when it cannot be sorted)."""
    if plan is None or sort_columns is None:
        return block
    payloads = sort_columns(plan.layouts, plan.keys, block.payloads, block.num_rows)
    if payloads is None:
        return block
    return EncodedBlock(names=block.names, types=block.types, num_rows=block.num_rows,
                        payloads=tuple(payloads))



def merge_blocks(columns: Sequence[ColumnSpec], blocks: Sequence[EncodedBlock]) -> EncodedBlock:
    """Join blocks encoded from the same columns into one block of all their rows.

    Payloads concatenate as they are, except a Nullable column's null map, which must
    precede all of its values, LowCardinality, whose 8-byte version prefix is
    written once: the blocks' dictionaries follow one another as granules, which
    ClickHouse reads in sequence, and Array, whose cumulative offsets continue from
    the previous blocks' element counts (the nested payloads merge the same way;
    a Map's keys, then its values).
    """
    if len(blocks) == 1:
        return blocks[0]
    payloads: list[bytes] = []
    for index, spec in enumerate(columns):
        parts = [block.payloads[index] for block in blocks]
        if spec.array_depth and spec.low_cardinality:
            # The state prefix once, then the arrays merged with each block's elements
            # a LowCardinality granule of its own.
            payloads.append(_LC_PREFIX + _merge_arrays(
                spec, spec.array_depth, [(block.num_rows, part[len(_LC_PREFIX) :])
                                         for part, block in zip(parts, blocks)]))
        elif spec.array_depth:
            payloads.append(_merge_arrays(spec, spec.array_depth,
                                          [(block.num_rows, part) for part, block in
                                           zip(parts, blocks)]))
        elif spec.tuple_elements:
            # Each element's payloads merged as a column of its own, one after the other.
            split = [tuple_parts(spec, block.num_rows, part) for part, block in
                     zip(parts, blocks)]
            payloads.append(b"".join(
                _merge_plain(element, [(block.num_rows, pieces[k]) for pieces, block in
                                       zip(split, blocks)])
                for k, element in enumerate(spec.tuple_elements)))
        elif spec.low_cardinality:
            payloads.append(parts[0] + b"".join(part[8:] for part in parts[1:]))
        else:
            payloads.append(_merge_plain(spec, [(block.num_rows, part) for part, block in
                                                zip(parts, blocks)]))
    return EncodedBlock(
        names=blocks[0].names,
        types=blocks[0].types,
        num_rows=sum(block.num_rows for block in blocks),
        payloads=tuple(payloads),
    )


def _merge_plain(spec: ColumnSpec, parts: Sequence[tuple[int, bytes]]) -> bytes:
    """Scalar payloads of ``(rows, payload)`` blocks -> one (null maps first)."""
    if spec.nullable:
        return b"".join(part[:rows] for rows, part in parts) + \
            b"".join(part[rows:] for rows, part in parts)
    return b"".join(part for _, part in parts)


def _merge_arrays(spec: ColumnSpec, depth: int, parts: Sequence[tuple[int, bytes]]) -> bytes:
    """Array payloads of ``(rows, payload)`` blocks -> one: the offsets of each block
    moved past the elements of the ones before, then the nested payloads merged."""
    offsets: list[bytes] = []
    nested: list[tuple[int, bytes]] = []
    total = 0
    for rows, payload in parts:
        ends = payload[: 8 * rows]
        offsets.append(shift_offsets(ends, total) if total else ends)
        count = int.from_bytes(ends[-8:], "little") if rows else 0
        nested.append((count, payload[8 * rows :]))
        total += count
    if depth > 1:
        return b"".join(offsets) + _merge_arrays(spec, depth - 1, nested)
    if spec.low_cardinality:  # granules, read one after the other
        return b"".join(offsets) + b"".join(payload for _, payload in nested)
    keys: list[bytes] = []
    if spec.is_map:
        # Tuple(String, V): each block's keys, then its values.
        split = [(count, payload, strings_end(payload, count)) for count, payload in nested]
        keys = [payload[:end] for _, payload, end in split]
        nested = [(count, payload[end:]) for count, payload, end in split]
    if spec.nullable:
        return b"".join(offsets) + b"".join(keys) \
            + b"".join(payload[:count] for count, payload in nested) \
            + b"".join(payload[count:] for count, payload in nested)
    return b"".join(offsets) + b"".join(keys) + b"".join(payload for _, payload in nested)


# -- decoding: Native column data -> Python rows (slow path) ---------------------------


class NativeDecoder:
    """Decodes Native-format data (no BlockInfo) with clickhouse-driver's column readers.

    Used for chDB's query results and for rows ClickHouse refused (to quarantine them).
    """

    def __init__(self, timezone: str = "UTC") -> None:
        self._context = _driver_context(timezone)

    def decode(self, data: bytes) -> tuple[list[tuple[str, str]], list[tuple[Any, ...]]]:
        from clickhouse_driver.bufferedreader import CompressedBufferedReader
        from clickhouse_driver.streams.native import BlockInputStream

        meta: list[tuple[str, str]] = []
        rows: list[tuple[Any, ...]] = []
        if not data:
            return meta, rows
        chunks = [data]
        reader = CompressedBufferedReader(lambda: chunks.pop() if chunks else b"", len(data))
        stream = BlockInputStream(reader, self._context)
        while True:
            block = stream.read()
            if not meta:
                meta = [(str(name), str(ch_type)) for name, ch_type in block.columns_with_types]
            rows.extend(tuple(row) for row in block.get_rows())
            if reader.position >= reader.current_buffer_size:
                return meta, rows


def decode_rows(block: EncodedBlock) -> list[tuple[Any, ...]]:
    """The rows of ``block`` as Python values."""
    data = bytearray(varint(len(block.names)) + varint(block.num_rows))
    for index, payload in enumerate(block.payloads):
        data += native_header(block, index)
        data += payload
    return NativeDecoder().decode(bytes(data))[1]
