"""Rows that did not fit -> rows of the ``<name>_quarantine`` table.

Runs once per *bad* row (never on the good path): the row's raw text is split again
to fill each original column with the text it held, as Tinybird does, and the
parser's compact :class:`~tinyingest.block.RowError` becomes a message.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from typing import Any

from tinyingest._pyparser import _BadRow, raw_json_values, split_csv_record
from tinyingest.block import EncodedBlock, RowError
from tinyingest.datafiles import QUARANTINE_COLUMNS, DataSource
from tinyingest.errors import row_error_message
from tinyingest.native import decode_rows, encode_rows
from tinyingest.schema import ColumnSpec


def quarantine_rows(datasource: DataSource, parsed_columns: Sequence[ColumnSpec],
                    errors: Sequence[RowError], *, csv_delimiter: bytes | None,
                    import_id: str, max_row_bytes: int) -> EncodedBlock:
    """Encode ``errors`` as rows of ``datasource``'s quarantine table.

    :param parsed_columns: the columns the parser filled (``RowError.column`` indexes them).
    :param csv_delimiter: the CSV delimiter, or ``None`` for NDJSON rows.
    """
    names = [name for name, _ in QUARANTINE_COLUMNS] + list(datasource.quarantine_columns) \
        + ["insertion_date"]
    types = [ch_type for _, ch_type in QUARANTINE_COLUMNS] \
        + ["Nullable(String)"] * len(datasource.quarantine_columns) + ["DateTime"]
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    by_name = {spec.name: spec for spec in datasource.columns}
    rows: list[tuple[Any, ...]] = []
    for error in errors:
        spec = parsed_columns[error.column] if error.column >= 0 else None
        message = row_error_message(error.code, spec.name if spec else None,
                                    spec.ch_type if spec else None, error.value,
                                    limit=max_row_bytes)
        if csv_delimiter is None:
            raw = raw_json_values(error.line, [by_name[name].path if name in by_name else None
                                               for name in datasource.quarantine_columns])
        else:
            raw = _csv_values(error.line, csv_delimiter[0], parsed_columns,
                              datasource.quarantine_columns)
        rows.append((
            [spec.name] if spec else [],
            [message],
            import_id,
            error.line,  # bytes: kept exactly as received, even if not UTF-8
            *raw,
            now,
        ))
    return encode_rows(names, types, rows)


def _csv_values(line: bytes, delimiter: int, parsed_columns: Sequence[ColumnSpec],
                names: Sequence[str]) -> list[str | None]:
    try:
        fields = split_csv_record(line, delimiter)
    except _BadRow:
        return [None] * len(names)
    position = {spec.name: index for index, spec in enumerate(parsed_columns)}
    values: list[str | None] = []
    for name in names:
        index = position.get(name)
        if index is None or index >= len(fields):
            values.append(None)
        else:
            values.append(fields[index][0].decode("utf-8", "replace"))
    return values


def refused_rows(datasource: DataSource, block: EncodedBlock, message: str) -> EncodedBlock:
    """Rows ClickHouse refused to store, as quarantine rows carrying its message."""
    names = [name for name, _ in QUARANTINE_COLUMNS] + list(datasource.quarantine_columns) \
        + ["insertion_date"]
    types = [ch_type for _, ch_type in QUARANTINE_COLUMNS] \
        + ["Nullable(String)"] * len(datasource.quarantine_columns) + ["DateTime"]
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    rows: list[tuple[Any, ...]] = []
    for values in decode_rows(block):
        row = dict(zip(block.names, values))
        text = {name: None if value is None else str(value) for name, value in row.items()}
        rows.append((
            [], [f"ClickHouse refused the insert: {message}"], "",
            json.dumps(text, ensure_ascii=False),
            *[text.get(name) for name in datasource.quarantine_columns],
            now,
        ))
    return encode_rows(names, types, rows)
