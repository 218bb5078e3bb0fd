"""Row error codes shared by both parser implementations, and their messages.

The parsers report a bad row as a compact :class:`~tinyingest.block.RowError`
(row bytes, column index, code, offending value). Messages are made here, only
when a bad row is reported, in Tinybird's wording where Tinybird has one
(``value '' on column 'abslevel' is not Float32``).
"""

from __future__ import annotations

import enum


class ErrorCode(enum.IntEnum):
    # Keep in step with ext/codes.pxd.
    NONE = 0
    INVALID_JSON = 1  # the row is not valid JSON
    NOT_OBJECT = 2  # valid JSON, but not an object
    BAD_VALUE = 3  # value cannot be read as the column's type
    OUT_OF_RANGE = 4  # a number or date outside the type's range
    NULL = 5  # null for a column that is not Nullable
    INVALID_UTF8 = 6  # invalid UTF-8 or a lone surrogate escape
    ROW_TOO_LONG = 7  # longer than max_row_bytes
    TOO_DEEP = 8  # JSON nested deeper than MAX_DEPTH
    DUPLICATE_KEY = 9  # the same field twice in one row
    FIELD_COUNT = 10  # CSV record with the wrong number of fields
    BAD_CSV = 11  # unterminated quote, text after a closing quote
    MISSING = 12  # no value for a column that is neither Nullable nor has a DEFAULT


#: Deepest JSON nesting accepted (the row object is depth 1).
MAX_DEPTH = 64

#: How much of an offending value a RowError keeps.
MAX_ERROR_VALUE = 256


def row_error_message(code: int, column: str | None, ch_type: str | None, value: bytes,
                      *, limit: int = 0) -> str:
    """Describe one bad row.

    >>> row_error_message(ErrorCode.OUT_OF_RANGE, "age", "UInt8", b"300")
    "value '300' on column 'age' is out of range for UInt8"
    """
    text = value.decode("utf-8", "backslashreplace")
    where = f" on column '{column}'" if column is not None else ""
    match ErrorCode(code):
        case ErrorCode.BAD_VALUE:
            return f"value '{text}'{where} is not {ch_type}"
        case ErrorCode.OUT_OF_RANGE:
            return f"value '{text}'{where} is out of range for {ch_type}"
        case ErrorCode.NULL:
            return f"null value{where}, which is not Nullable({ch_type})"
        case ErrorCode.MISSING:
            return f"missing value{where}: {ch_type} is not Nullable and has no DEFAULT"
        case ErrorCode.INVALID_UTF8:
            return f"invalid UTF-8{where}"
        case ErrorCode.INVALID_JSON:
            return "invalid JSON"
        case ErrorCode.NOT_OBJECT:
            return "row is not a JSON object"
        case ErrorCode.ROW_TOO_LONG:
            return f"row is longer than max_row_bytes ({limit})"
        case ErrorCode.TOO_DEEP:
            return f"JSON is nested deeper than {MAX_DEPTH} levels"
        case ErrorCode.DUPLICATE_KEY:
            return f"duplicate field{where}"
        case ErrorCode.FIELD_COUNT:
            return f"wrong number of fields: {text}"
        case ErrorCode.BAD_CSV:
            return "malformed CSV: unterminated quote or text after a closing quote"
        case _:
            return f"error {code}"
