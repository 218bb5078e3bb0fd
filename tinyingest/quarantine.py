"""Rows that did not fit -> rows of the ``<name>_quarantine`` table.

Runs once per *bad* row (never on the good path): the row's raw text is split again
to fill each original column with the text it held, as Tinybird does, and the
parser's compact :class:`~tinyingest.block.RowError` becomes a message.

Nothing here may fail a request: a bad row is by definition anything at all (nested
thousands deep, lone surrogate escapes, invalid UTF-8, megabytes long). So the raw
line and each column's text are kept as *bytes* (a ClickHouse String holds bytes) and
found by an iterative scan of the line, never by decoding it again into Python
objects; and a row whose columns cannot be filled for any other reason is still
quarantined whole, with the reason.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
from collections.abc import Sequence
from typing import Any

from tinyingest._pyparser import _BadRow, split_csv_record
from tinyingest.block import EncodedBlock, RowError
from tinyingest.datafiles import QUARANTINE_COLUMNS, DataSource
from tinyingest.errors import row_error_message
from tinyingest.native import decode_rows, encode_rows
from tinyingest.schema import ColumnSpec

log = logging.getLogger("tinyingest")

#: ``c__raw`` keeps at most this much of a row (and each column's text at most this much
#: of its value); what is cut is replaced by :func:`truncation_marker`.
MAX_RAW_BYTES = 64 << 10


def truncation_marker(total: int) -> bytes:
    return f"...[truncated: {total} bytes in all]".encode()


def _truncated(data: bytes) -> bytes:
    if len(data) <= MAX_RAW_BYTES:
        return data
    return data[:MAX_RAW_BYTES] + truncation_marker(len(data))


def _quarantine_schema(datasource: DataSource) -> tuple[list[str], list[str]]:
    names = [name for name, _ in QUARANTINE_COLUMNS] + list(datasource.quarantine_columns) \
        + ["insertion_date"]
    types = [ch_type for _, ch_type in QUARANTINE_COLUMNS] \
        + ["Nullable(String)"] * len(datasource.quarantine_columns) + ["DateTime"]
    return names, types


def quarantine_rows(datasource: DataSource, parsed_columns: Sequence[ColumnSpec],
                    errors: Sequence[RowError], *, csv_delimiter: bytes | None,
                    import_id: str, max_row_bytes: int) -> EncodedBlock:
    """Encode ``errors`` as rows of ``datasource``'s quarantine table.

    :param parsed_columns: the columns the parser filled (``RowError.column`` indexes them).
    :param csv_delimiter: the CSV delimiter, or ``None`` for NDJSON rows.
    """
    names, types = _quarantine_schema(datasource)
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    by_name = {spec.name: spec for spec in datasource.columns}
    paths = [by_name[name].path if name in by_name else None
             for name in datasource.quarantine_columns]
    rows: list[tuple[Any, ...]] = []
    for error in errors:
        spec = parsed_columns[error.column] if 0 <= error.column < len(parsed_columns) else None
        message = row_error_message(error.code, spec.name if spec else None,
                                    spec.ch_type if spec else None, error.value,
                                    limit=max_row_bytes)
        raw: list[bytes | None]
        try:
            if csv_delimiter is None:
                raw = raw_json_values(error.line, paths)
            else:
                raw = _csv_values(error.line, csv_delimiter[0], parsed_columns,
                                  datasource.quarantine_columns)
        except Exception:  # noqa: BLE001 - the row is kept whole, with its reason
            log.exception("could not split a quarantined row of %s into columns",
                          datasource.name)
            raw = [None] * len(paths)
        rows.append((
            [spec.name] if spec else [],
            [message],
            import_id,
            _truncated(error.line),  # bytes: kept as received, even if not UTF-8
            *raw,
            now,
        ))
    return encode_rows(names, types, rows)


def _csv_values(line: bytes, delimiter: int, parsed_columns: Sequence[ColumnSpec],
                names: Sequence[str]) -> list[bytes | None]:
    try:
        fields = split_csv_record(line, delimiter)
    except _BadRow:
        return [None] * len(names)
    position = {spec.name: index for index, spec in enumerate(parsed_columns)}
    values: list[bytes | None] = []
    for name in names:
        index = position.get(name)
        if index is None or index >= len(fields):
            values.append(None)
        else:
            values.append(_truncated(fields[index][0]))
    return values


# -- the text of each column in a JSON row that may be broken anywhere ------------------


class _Broken(Exception):
    """The row ends or breaks before the value sought."""


_WHITESPACE = b" \t\r\n"
#: The bytes a container scan stops at (found by ``re`` in C, not byte by byte in Python).
_STRUCTURE = re.compile(rb'["\[\]{}]')
_SCALAR_END = re.compile(rb"[,\]}\s]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _ws(line: bytes, pos: int) -> int:
    while pos < len(line) and line[pos] in _WHITESPACE:
        pos += 1
    return pos


def _string_end(line: bytes, pos: int) -> int:
    """``line[pos]`` is an opening quote: the position after the closing one."""
    pos += 1
    while True:
        quote = line.find(b'"', pos)
        if quote < 0:
            raise _Broken
        backslashes = 0
        while line[quote - 1 - backslashes] == 0x5C:  # '\\' (stops at the opening quote)
            backslashes += 1
        if backslashes % 2 == 0:
            return quote + 1
        pos = quote + 1


def _value_end(line: bytes, pos: int) -> int:
    """The end of the JSON value at ``pos``: iterative, so any depth costs no recursion."""
    if pos >= len(line):
        raise _Broken
    first = line[pos]
    if first == 0x22:  # '"'
        return _string_end(line, pos)
    if first not in b"[{":
        match = _SCALAR_END.search(line, pos)
        end = match.start() if match else len(line)
        if end == pos:
            raise _Broken
        return end
    depth = 0
    while True:
        match = _STRUCTURE.search(line, pos)
        if match is None:
            raise _Broken
        pos = match.start()
        byte = line[pos]
        if byte == 0x22:
            pos = _string_end(line, pos)
            continue
        depth += 1 if byte in b"[{" else -1
        pos += 1
        if depth == 0:
            return pos


def _members(line: bytes, pos: int) -> dict[str, int]:
    """Where each member's value starts in the object at ``pos``, as far as the object
    can be read (a row broken halfway still shows the members before the break)."""
    found: dict[str, int] = {}
    if pos >= len(line) or line[pos] != 0x7B:  # '{'
        return found
    pos = _ws(line, pos + 1)
    try:
        while pos < len(line) and line[pos] == 0x22:
            end = _string_end(line, pos)
            name = _json_string(line[pos:end])
            pos = _ws(line, end)
            if pos >= len(line) or line[pos] != 0x3A:  # ':'
                break
            pos = _ws(line, pos + 1)
            found.setdefault(name, pos)
            pos = _ws(line, _value_end(line, pos))
            if pos >= len(line) or line[pos] != 0x2C:  # ','
                break
            pos = _ws(line, pos + 1)
    except _Broken:
        pass
    return found


def _element(line: bytes, pos: int, index: int) -> int:
    """Where element ``index`` of the array at ``pos`` starts."""
    if pos >= len(line) or line[pos] != 0x5B:  # '['
        raise _Broken
    pos = _ws(line, pos + 1)
    for _ in range(index):
        pos = _ws(line, _value_end(line, pos))
        if pos >= len(line) or line[pos] != 0x2C:
            raise _Broken
        pos = _ws(line, pos + 1)
    if pos >= len(line) or line[pos] == 0x5D:  # ']': fewer elements
        raise _Broken
    return pos


def _json_string(quoted: bytes) -> str:
    """A JSON string's text, always valid UTF-8: lone surrogates, bad escapes and
    invalid bytes become U+FFFD."""
    try:
        text: str = json.loads(quoted)
    except ValueError:
        text = quoted[1:-1].decode("utf-8", "replace")
    return _SURROGATE.sub("\ufffd", text)


def raw_json_values(line: bytes, paths: Sequence[tuple[str | int, ...] | None]
                    ) -> list[bytes | None]:
    """Best-effort text of each path in a (possibly bad) row, for the quarantine table:
    a string's content (UTF-8), any other value as it was written; None where the row
    has no such value or breaks before it. Linear in the row for top-level paths."""
    if line.startswith(b"\xef\xbb\xbf"):
        line = line[3:]
    top = _members(line, _ws(line, 0))
    values: list[bytes | None] = []
    for path in paths:
        if not path or not isinstance(path[0], str) or path[0] not in top:
            values.append(None)
            continue
        try:
            pos = top[path[0]]
            for key in path[1:]:
                pos = _members(line, pos)[key] if isinstance(key, str) \
                    else _element(line, pos, key)
            end = _value_end(line, pos)
        except (_Broken, KeyError):
            values.append(None)
            continue
        text = line[pos:end]
        if text == b"null":
            values.append(None)
        elif text[:1] == b'"':
            values.append(_truncated(_json_string(text).encode()))
        else:
            values.append(_truncated(text))
    return values


def refused_rows(datasource: DataSource, block: EncodedBlock, message: str) -> EncodedBlock:
    """Rows ClickHouse refused to store, as quarantine rows carrying its message."""
    names, types = _quarantine_schema(datasource)
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    rows: list[tuple[Any, ...]] = []
    for values in decode_rows(block):
        row = dict(zip(block.names, values))
        text = {name: _text(value) for name, value in row.items()}
        rows.append((
            [], [f"ClickHouse refused the insert: {message}"], "",
            json.dumps(text, ensure_ascii=False).encode("utf-8", "replace"),
            *[None if text.get(name) is None else
              str(text[name]).encode("utf-8", "replace")
              for name in datasource.quarantine_columns],
            now,
        ))
    return encode_rows(names, types, rows)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
