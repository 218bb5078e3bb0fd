"""Both parser implementations, and helpers to run one case on each (style guide 2.5).

``parser_module`` is parametrized over the pure-Python reference (id ``py``) and the
compiled extension (id ``c``). A missing extension never skips: with
``TINYINGEST_REQUIRE_EXTENSIONS=1`` importing this module fails (CI, deploy); otherwise
every ``c`` case fails with the import error.

:func:`parse` feeds a body whole, one byte at a time and split at every offset, checks
that all of them give the same :data:`Result`, and returns it; :func:`rows` decodes its
column buffers into Python values.
"""

from __future__ import annotations

import os
import struct
from array import array
from collections.abc import Iterable, Iterator, Sequence
from types import ModuleType
from typing import Any

import pytest

from tinyingest import _pyparser
from tinyingest.block import Block
from tinyingest.schema import FIXED_WIDTH, ColumnSpec, TypeCode

_native: ModuleType | None
try:
    from tinyingest import _native
except ImportError as exc:
    if os.environ.get("TINYINGEST_REQUIRE_EXTENSIONS") == "1":
        raise ImportError(f"TINYINGEST_REQUIRE_EXTENSIONS=1 but tinyingest._native: {exc}") from exc
    _native = None
    _NATIVE_ERROR = repr(exc)

IMPLEMENTATIONS = ("py", "c")


def encoders() -> ModuleType:
    """The compiled Native encoders; fails the test (never skips) if they are not built."""
    try:
        from tinyingest import _encode
    except ImportError as exc:
        pytest.fail(f"tinyingest._encode is not importable ({exc}); build it with "
                    "`python setup.py build_ext --inplace`", pytrace=False)
    return _encode


def implementation(name: str) -> ModuleType:
    """The parser module for ``name`` ("py" or "c"); fails the test if "c" is not built."""
    if name == "py":
        return _pyparser
    if _native is None:
        pytest.fail(
            f"tinyingest._native is not importable ({_NATIVE_ERROR}); build it with "
            "`python setup.py build_ext --inplace`", pytrace=False,
        )
    return _native


@pytest.fixture(params=IMPLEMENTATIONS)
def parser_module(request: pytest.FixtureRequest) -> ModuleType:
    return implementation(request.param)


# A block as plain, comparable data:
# (rows ended, num_rows, ((values, offsets, nulls) per column), ((line, column, code, value) per error))
Column = tuple[bytes, bytes | None, bytes | None]
Error = tuple[bytes, int, int, bytes]
Result = tuple[int, int, tuple[Column, ...], tuple[Error, ...]]


def col(ch_type: str, jsonpath: str | None = "$.v", name: str = "v",
        default: str | None = None) -> ColumnSpec:
    return ColumnSpec.build(name, ch_type, jsonpath, "DEFAULT" if default is not None else None,
                            default)


def make_parser(module: ModuleType, fmt: str, columns: Sequence[ColumnSpec],
                **options: Any) -> Any:
    cls = module.NDJSONParser if fmt == "ndjson" else module.CSVParser
    return cls(list(columns), **options)


def run(module: ModuleType, fmt: str, columns: Sequence[ColumnSpec], chunks: Iterable[bytes],
        **options: Any) -> Result:
    """Feed ``chunks`` then finish; the block as a :data:`Result` (buffers checked)."""
    parser = make_parser(module, fmt, columns, **options)
    ended = 0
    for chunk in chunks:
        ended += parser.feed(chunk)
    ended += parser.finish()
    block = parser.take_block()
    assert len(block.columns) == len(columns)
    for spec, data in zip(columns, block.columns):
        width = FIXED_WIDTH[spec.type_code]
        if width:
            assert data.offsets is None
            assert len(data.values) == width * block.num_rows
        else:
            assert data.offsets is not None
            bounds = array("q", data.offsets)
            assert len(bounds) == block.num_rows + 1 and bounds[0] == 0
            assert bounds[-1] == len(data.values)
            assert list(bounds) == sorted(bounds)
        if spec.nullable:
            assert data.nulls is not None and len(data.nulls) == block.num_rows
            assert set(data.nulls) <= {0, 1}
        else:
            assert data.nulls is None
    assert ended == block.num_rows + len(block.errors)
    return (
        ended,
        block.num_rows,
        tuple((c.values, c.offsets, c.nulls) for c in block.columns),
        tuple((e.line, e.column, e.code, e.value) for e in block.errors),
    )


def run_nested(module: ModuleType, fmt: str, columns: Sequence[ColumnSpec],
               chunks: Iterable[bytes], **options: Any) -> tuple[int, Block]:
    """Feed ``chunks`` then finish; (rows ended, block), with the per-row UInt64 offsets of
    Array and Map columns checked (those have no string offsets or null map)."""
    parser = make_parser(module, fmt, columns, **options)
    ended = sum(parser.feed(chunk) for chunk in chunks)
    ended += parser.finish()
    block: Block = parser.take_block()
    for spec, data in zip(columns, block.columns):
        if spec.array_depth:
            assert data.offsets is not None and data.nulls is None
            ends = list(array("Q", data.offsets))
            assert len(ends) == block.num_rows and ends == sorted(ends)
    assert ended == block.num_rows + len(block.errors)
    return ended, block


def splits(data: bytes) -> Iterator[tuple[str, list[bytes]]]:
    """One byte at a time, then two pieces at every offset."""
    yield "one byte at a time", [data[i : i + 1] for i in range(len(data))]
    for cut in range(len(data) + 1):
        yield f"split at {cut}", [data[:cut], data[cut:]]


def parse(module: ModuleType, fmt: str, columns: Sequence[ColumnSpec], data: bytes,
          **options: Any) -> Result:
    """Parse ``data`` whole and in every split; all must give the same block."""
    whole = run(module, fmt, columns, [data], **options)
    for how, chunks in splits(data):
        assert run(module, fmt, columns, chunks, **options) == whole, how
    # Any buffer type is accepted.
    assert run(module, fmt, columns, [bytearray(data)], **options) == whole
    assert run(module, fmt, columns, [memoryview(data)], **options) == whole
    return whole


_FORMATS: dict[TypeCode, str] = {
    TypeCode.INT8: "b", TypeCode.INT16: "h", TypeCode.INT32: "i", TypeCode.INT64: "q",
    TypeCode.UINT8: "B", TypeCode.UINT16: "H", TypeCode.UINT32: "I", TypeCode.UINT64: "Q",
    TypeCode.FLOAT32: "f", TypeCode.FLOAT64: "d", TypeCode.DATE: "H", TypeCode.DATETIME: "I",
}


def decode(spec: ColumnSpec, column: Column, num_rows: int) -> list[Any]:
    """A column's buffers as Python values: int, float or bytes; None for NULL."""
    values, offsets, nulls = column
    if spec.type_code is TypeCode.STRING:
        assert offsets is not None
        bounds = array("q", offsets)
        out: list[Any] = [values[bounds[i] : bounds[i + 1]] for i in range(num_rows)]
    else:
        out = list(struct.unpack(f"<{num_rows}{_FORMATS[spec.type_code]}", values))
    if nulls is not None:
        # A NULL row holds the type's zero, as ClickHouse's Nullable wants.
        assert all(not value for flag, value in zip(nulls, out) if flag)
        out = [None if flag else value for flag, value in zip(nulls, out)]
    return out


def rows(columns: Sequence[ColumnSpec], result: Result) -> list[tuple[Any, ...]]:
    """The stored rows of a :data:`Result`, decoded."""
    num_rows = result[1]
    decoded = [decode(spec, data, num_rows) for spec, data in zip(columns, result[2])]
    return list(zip(*decoded)) if decoded else [()] * num_rows


def errors(result: Result) -> list[Error]:
    return list(result[3])
