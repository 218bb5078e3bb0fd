"""The compiled module ``tinyingest._encode`` (built from ``ext/_encode.pyx``): Native
encoding for :mod:`tinyingest.native`.

Each function but :func:`sort_columns` has a pure-Python twin in :mod:`tinyingest.native`
with the same output, byte for byte (``tests/test_native.py``,
``tests/test_native_lowcard.py``, ``tests/test_parse_lowcard.py`` hold them equal).
"""

from collections.abc import Sequence

_Buffer = bytes | bytearray | memoryview

def encode_strings(offsets: _Buffer, data: _Buffer) -> bytes:
    """Native ``String`` payload (``varint(len) + bytes`` per value) from a string
    column's int64 ``offsets`` (``num_rows + 1``, starting at 0) and ``data``.

    :raises ValueError: the offsets do not match ``data``.
    """

def strings_end(data: _Buffer, count: int) -> int:
    """Where ``count`` Native String values (varint length + bytes) at the start of
    ``data`` end. Same result as :func:`tinyingest.native.strings_end_py`.

    :raises ValueError: ``data`` does not hold ``count`` strings, or ``count`` < 0.
    """

def split_strings(data: _Buffer, count: int) -> tuple[bytes, bytes]:
    """``count`` Native String values -> (``count + 1`` int64 offsets from 0, the
    concatenated bytes). Same result as :func:`tinyingest.native.split_strings_py`.

    :raises ValueError: ``data`` does not hold ``count`` strings, or ``count`` < 0.
    """

def shift_offsets(offsets: _Buffer, base: int) -> bytes:
    """Each UInt64 of ``offsets`` (native order) plus ``base``: the Array offsets of a
    block appended after ``base`` elements. Same bytes as
    :func:`tinyingest.native.shift_offsets_py`.

    :raises ValueError: ``offsets`` is not a whole number of UInt64 values.
    """

def encode_low_cardinality(offsets: _Buffer, data: _Buffer,
                           nulls: _Buffer | None = None) -> bytes:
    """Native ``LowCardinality(String)`` payload, or ``LowCardinality(Nullable(String))``
    when ``nulls`` (one byte per row, non-zero = NULL) is given; one dictionary per
    block, index width by dictionary size. Same bytes as
    :func:`tinyingest.native.encode_low_cardinality_py`; no Python object per row.

    :returns: ``b""`` for zero rows.
    :raises ValueError: ``nulls`` does not hold one flag per row, or the offsets are
        not non-decreasing int64 values within ``data``.
    """

def encode_low_cardinality_fixed(values: _Buffer, width: int,
                                 nulls: _Buffer | None = None) -> bytes:
    """Native ``LowCardinality(T)`` payload for a fixed-width ``T`` (``width`` bytes a
    value: numbers, Date, DateTime, UUID, IPv4, FixedString(N)...), or
    ``LowCardinality(Nullable(T))`` when ``nulls`` is given (dictionary position 0 is
    NULL, holding ``width`` zero bytes). Same bytes as
    :func:`tinyingest.native.encode_low_cardinality_fixed_py`.

    :returns: ``b""`` for zero rows.
    :raises ValueError: ``values`` is not whole values of ``width`` (> 0) bytes, or
        ``nulls`` does not hold one flag per row.
    """

def sort_columns(layouts: Sequence[tuple[int, int, bool]], keys: Sequence[tuple[int, int]],
                 payloads: Sequence[_Buffer], rows: int) -> list[bytes] | None:
    """Native column payloads of ``rows`` rows reordered by the key columns (a stable
    sort), or None when they are in order already or cannot be sorted here (a key over
    64 bits once packed, a Nullable key, a malformed payload). No Python twin: sorting is
    an optimization, and without it ClickHouse sorts (:func:`tinyingest.native.sort_plan`).

    :param layouts: per column (layout: 0 fixed width, 1 String, 2 LowCardinality,
        3 + one of those for an Array of it; the value width, 0 for strings; Nullable:
        these two describe an Array's elements).
    :param keys: (column, order: 0 unsigned, 1 signed, 2 float, 3 bytes), most
        significant first.
    """
