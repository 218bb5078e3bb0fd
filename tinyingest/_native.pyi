"""The compiled module ``tinyingest._native`` (built from ``ext/_native.pyx``): the
parsers' documented boundary. (The Native encoders are ``tinyingest._encode``.)

Everything here has a pure-Python twin with the same behaviour and output, byte for
byte: the parsers in :mod:`tinyingest._pyparser` (the specification; read its module
docstring for the value policy). ``tests/test_parse_differential.py`` holds them equal.

What crosses the boundary (style guide 2.2): one buffer in per ``feed()`` call; out,
per :class:`~tinyingest.block.Block`, columnar buffers (values, int64 string offsets,
one-byte null maps, little-endian; an Array or Map column as its Native payload: UInt64
row end offsets in ``offsets``, the nested payload in ``values``; a Tuple column as its
Native payload in ``values``: each element's null map and values, one after the other) and the bad rows as
:class:`~tinyingest.block.RowError`, plus, when some column has an expression DEFAULT,
``Block.omitted``: one uint64 mask per good row of the columns it had no value for.
Nothing is created per good row. Bad rows never
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
    @property
    def num_rows(self) -> int:
        """Good rows in the current block so far (rows ended minus rows quarantined)."""
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
    @property
    def num_rows(self) -> int:
        """Good rows in the current block so far (rows ended minus rows quarantined)."""
    def feed(self, data: _Buffer) -> int:
        """Parse the complete records in ``data``; returns how many rows ended (a
        header and blank records do not count)."""
    def finish(self) -> int:
        """End the body: parse a last record without a newline (an open quote makes
        it ``BAD_CSV``); returns how many rows that ended."""
    def take_block(self) -> Block:
        """Hand over the rows and errors so far and start a new block."""
