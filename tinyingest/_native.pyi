"""The compiled module ``tinyingest._native`` (built from ``ext/``): its documented boundary.

Everything here has a pure-Python twin with the same behaviour and output, byte for
byte: the parsers in :mod:`tinyingest._pyparser` (the specification; read its module
docstring for the value policy) and the encoders in :mod:`tinyingest.native`.
``tests/test_parse_differential.py`` and ``tests/test_native_lowcard.py`` hold them equal.

What crosses the boundary (style guide 2.2): one buffer in per ``feed()`` call; out,
per :class:`~tinyingest.block.Block`, columnar buffers (values, int64 string offsets,
one-byte null maps, little-endian; an Array or Map column as its Native payload: UInt64
row end offsets in ``offsets``, the nested payload in ``values``; a Tuple column as its
Native payload in ``values``: each element's null map and values, one after the other) and the bad rows as
:class:`~tinyingest.block.RowError`. Nothing is created per good row. Bad rows never
raise: only ``MemoryError`` does, and ``SchemaError`` / ``ValueError`` at construction.
"""

from collections.abc import Sequence

from tinyingest.block import Block
from tinyingest.schema import ColumnSpec

_Buffer = bytes | bytearray | memoryview

class NDJSONParser:
    """Newline-delimited JSON -> column blocks.

    Each column reads ``spec.path`` from every row object (``()`` is the whole row,
    stored as compact JSON; an int step is an array element). Array columns take a JSON
    array, Map(String, V) columns a JSON object (null or missing: empty), Tuple columns
    a JSON array of exactly N elements (named Tuples: also an object of their names). Rows are validated as whole JSON (RFC
    8259, UTF-8, depth <= 64); a bad row is quarantined whole as a
    :class:`~tinyingest.block.RowError`.
    """

    def __init__(self, columns: Sequence[ColumnSpec], *, max_row_bytes: int = ...) -> None:
        """Compile the schema once.

        :param columns: the columns to fill; each needs a jsonpath.
        :param max_row_bytes: longer rows are quarantined (``ROW_TOO_LONG``) without
            being buffered; default 1 MiB.
        :raises SchemaError: a column has no jsonpath or a literal DEFAULT that is not
            a value of its type (an Array column takes none).
        """
    @property
    def columns(self) -> list[ColumnSpec]:
        """The columns, in block order."""
    def feed(self, data: _Buffer) -> int:
        """Parse the complete rows in ``data`` (any buffer); an incomplete last row is
        carried to the next call. A UTF-8 BOM is skipped at the start of the body only.

        :returns: how many rows ended (stored or quarantined; blank lines do not count).
        """
    def finish(self) -> int:
        """End the body: parse a last row that had no newline. The parser may then
        take a new body (its BOM included).

        :returns: how many rows that ended.
        """
    def take_block(self) -> Block:
        """Hand over the rows and errors so far and start a new block."""

class CSVParser:
    """RFC 4180 CSV -> column blocks.

    Records end at a newline outside quotes (LF or CRLF); fields map to columns by
    position, or by name when the first record is a header (see ``header``). An empty
    unquoted field is NULL (Nullable), the literal DEFAULT, or the empty text; an
    unquoted ``\\N`` is NULL. Array and Map columns read ClickHouse's literals
    (``[1,2]``, ``['a','b\\'c']``, ``{'k':1}``; empty or ``\\N``: empty).
    """

    def __init__(self, columns: Sequence[ColumnSpec], *, max_row_bytes: int = ...,
                 delimiter: bytes = b",", escapechar: bytes | None = None,
                 header: bool | None = None) -> None:
        """Compile the schema and dialect once.

        :param max_row_bytes: longer records are quarantined (``ROW_TOO_LONG``).
        :param delimiter: one byte other than a quote, CR or LF.
        :param escapechar: one byte or ``None``: the byte after it is taken literally.
        :param header: ``None``: the first record is a header when it names every
            column; ``True``: it is a header in any case (fields map by position when
            it does not name every column); ``False``: there is no header.
        :raises ValueError: a bad delimiter or escapechar.
        :raises SchemaError: a Tuple column (not supported in CSV), or a literal DEFAULT
            that is not a value of its type (an Array or Map column takes none).
        """
    @property
    def columns(self) -> list[ColumnSpec]:
        """The columns, in block order."""
    def feed(self, data: _Buffer) -> int:
        """Parse the complete records in ``data``; returns how many rows ended (a
        header and blank records do not count)."""
    def finish(self) -> int:
        """End the body: parse a last record without a newline (an open quote makes
        it ``BAD_CSV``); returns how many rows that ended."""
    def take_block(self) -> Block:
        """Hand over the rows and errors so far and start a new block."""

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
