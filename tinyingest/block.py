"""Column blocks: what the parsers emit and what the sinks insert.

:class:`Block` is a parser's output: per ingested column a value buffer, optional
string offsets and an optional null map, plus the rows that did not fit
(:class:`RowError`). :class:`EncodedBlock` is the same rows already laid out as
ClickHouse Native column data (see ``native.py``), ready for either sink.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ColumnData:
    """One column of a :class:`Block`.

    Fixed-width types: ``values`` holds little-endian values, ``offsets`` is None.
    String: ``values`` holds the concatenated UTF-8 bytes and ``offsets`` the
    ``num_rows + 1`` int64 boundaries (native byte order), starting with 0.
    ``nulls``: one byte per row, 1 = NULL (ClickHouse's own null map), Nullable only.
    ``Array(T)``: already in Native's Array layout: ``offsets`` the ``num_rows`` UInt64
    cumulative end offsets, ``values`` the element column's payload (for
    ``Array(Array(T))`` the inner end offsets first; for ``Nullable(T)`` its null map
    then the values; String elements varint-prefixed), ``nulls`` None.
    """

    values: bytes
    offsets: bytes | None = None
    nulls: bytes | None = None


@dataclass(frozen=True, slots=True)
class RowError:
    """A row that did not fit. Built per *bad* row only; never on the good path."""

    line: bytes  # the raw row (NDJSON line or CSV record), as received
    column: int  # index into the parser's columns, or -1 for the whole row
    code: int  # errors.ErrorCode
    value: bytes  # the offending text (may be truncated)


@dataclass(slots=True)
class Block:
    """Rows parsed from part of one request, for the parser's ingested columns."""

    num_rows: int
    columns: list[ColumnData]
    errors: list[RowError] = field(default_factory=list)
    #: For columns with an expression DEFAULT (``DEFAULT now()``, see
    #: :attr:`~tinyingest.schema.ColumnSpec.expression_default`): one native-order UInt64
    #: per row, bit ``k`` set when the row had no value for the k-th such column of the
    #: parser (in column order): the block holds the type's zero there, and ClickHouse
    #: must compute the DEFAULT (:func:`tinyingest.native.omit_missing`). None when the
    #: parser has no such column.
    omitted: bytes | None = None


@dataclass(frozen=True, slots=True)
class EncodedBlock:
    """Rows as ClickHouse Native column data.

    ``payloads[i]`` is exactly what follows the column's name and type in a Native
    block (no per-column header). ``types`` are the types the data is encoded as,
    which may differ from the table's (LowCardinality(String) is sent as String).
    """

    names: tuple[str, ...]
    types: tuple[str, ...]
    num_rows: int
    payloads: tuple[bytes, ...]
    #: Encoded size; computed once, as the batcher reads it several times per block.
    nbytes: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "nbytes", sum(map(len, self.payloads)))
