# cython: language_level=3
# tinyingest._native: the compiled NDJSON and CSV parsers (see tinyingest/_native.pyi).
#
# Pipeline, per feed(chunk), without the GIL:
#   frame rows (newline / CSV record end; a partial row is carried to the next chunk)
#   -> scan one row into per-column slots (spans into the row, no copies)
#   -> convert each slot into its Column buffer, or record a RowError and undo the row.
# take_block() copies the buffers into bytes objects, with the GIL, once per block.
# _pyparser.py is the readable specification of the same behaviour.

from libc.string cimport memchr, memcmp, memcpy, memset
cimport cython
from libc.stdio cimport snprintf
from libc.stdint cimport int64_t
from cpython.mem cimport PyMem_Malloc, PyMem_Free, PyMem_RawFree
from cpython.bytes cimport PyBytes_FromStringAndSize

from codes cimport *
from buffers cimport Buf, buf_reserve, buf_append, buf_append_byte, buf_free, strings_native
from scan cimport (scan_any3, scan_json_string, scan_non_ascii, load8, eight_digits,
                  eight_digits_value)

import sys

from tinyingest.block import Block, ColumnData, RowError
from tinyingest.schema import SchemaError
from tinyingest.timezones import wall_clock_shifts
from tinyingest import _pyparser

if sys.byteorder != "little":
    raise ImportError("tinyingest._native writes little-endian values: big-endian hosts use the pure-Python parser")

include "columns.pxi"


cdef struct Slot:
    int kind            # ValueKind
    bint escaped        # KIND_JSON_STRING with backslash escapes
    const char* ptr     # the value's text, inside the row being parsed
    Py_ssize_t len


cdef struct ErrRec:
    Py_ssize_t line_off     # the row, in _errdata
    Py_ssize_t line_len
    Py_ssize_t value_off    # the offending value (<= MAX_ERROR_VALUE bytes), in _errdata
    Py_ssize_t value_len
    int column              # -1: the whole row
    int code                # ErrorCode


cdef const unsigned char[::1] as_bytes_view(data):
    # feed() input as bytes: any buffer, like _pyparser's bytes(data). bytes, bytearray
    # and byte memoryviews are used in place; other formats and strides are copied.
    cdef const unsigned char[::1] view
    try:
        view = data
    except (ValueError, TypeError, BufferError):
        view = bytes(data)
    return view


cdef inline bint is_ws(unsigned char c) noexcept nogil:
    # One compare for the usual answer (no: a byte above the space).
    return c <= b' ' and (c == b' ' or c == b'\t' or c == b'\r' or c == b'\n')


cdef class _ParserCore:
    # Columns, row framing and error records shared by NDJSONParser and CSVParser.
    cdef Column* _cols          # one per column, owned
    cdef Slot* _slots           # one per column: what the current row holds
    cdef int _ncols
    cdef list _specs            # the ColumnSpec objects, for the `columns` property
    cdef Py_ssize_t _max_row_bytes
    cdef Py_ssize_t _num_rows   # good rows in the current block
    cdef Py_ssize_t _ended      # rows ended during the current feed (good + bad)
    cdef Buf _tail              # an incomplete row carried across feed() calls
    cdef bint _skipping         # inside a row longer than _max_row_bytes
    cdef bint _at_start         # a UTF-8 BOM is stripped only at the start of the body
    cdef bytes _bom_pending     # the first bytes, while they may still be a BOM
    cdef Buf _scratch           # unescaped / compacted text of one value
    cdef Buf _errdata           # bytes of bad rows and values
    cdef Buf _errrecs           # ErrRec array
    cdef int _err_code          # set by a failing scan step
    cdef int _err_col
    cdef const char* _bad_ptr   # the offending text of a failed conversion (may be _scratch)
    cdef Py_ssize_t _bad_len
    cdef bint _track_omitted    # some column has an expression DEFAULT: fill _omitted
    cdef Buf _omitted           # per good row, a uint64 mask of those columns left to ClickHouse
    cdef uint64_t _row_omitted  # that mask for the row being stored

    def __cinit__(self, *args, **kwargs):
        self._cols = NULL
        self._slots = NULL
        self._ncols = 0
        self._at_start = True
        self._bom_pending = b""

    def __init__(self, columns, *, Py_ssize_t max_row_bytes=1 << 20):
        cdef int i
        self._specs = list(columns)
        self._max_row_bytes = max_row_bytes
        self._ncols = len(self._specs)
        self._cols = <Column*>PyMem_Malloc(sizeof(Column) * max(self._ncols, 1))
        self._slots = <Slot*>PyMem_Malloc(sizeof(Slot) * max(self._ncols, 1))
        if self._cols == NULL or self._slots == NULL:
            raise MemoryError()
        # Zero every column first: a bad DEFAULT below raises, and __dealloc__ then frees
        # the buffers of all columns, the later ones included.
        for i in range(self._ncols):
            memset_column(&self._cols[i])
        for i in range(self._ncols):
            self._init_column(&self._cols[i], self._specs[i])
        computed = [i for i, spec in enumerate(self._specs) if spec.expression_default]
        if len(computed) > _pyparser.MAX_EXPRESSION_DEFAULTS:
            raise SchemaError(f"at most {_pyparser.MAX_EXPRESSION_DEFAULTS} ingested columns "
                              "may have an expression DEFAULT")
        for bit, i in enumerate(computed):
            self._cols[i].omit_bit = (<uint64_t>1) << bit
        self._track_omitted = bool(computed)

    cdef _init_column(self, Column* col, spec):
        # One column (or Tuple element) from its ColumnSpec: type, enum values, DEFAULT.
        cdef bytes default
        cdef const unsigned char* text
        cdef EnumEntry entry
        cdef int k
        cdef int nelems = len(spec.tuple_elements)
        cdef int64_t shift[2]
        col.code = int(spec.type_code)
        col.width = _pyparser.FIXED_WIDTH[spec.type_code]
        col.nullable = spec.nullable
        col.length = spec.length
        col.scale = spec.scale
        col.precision = spec.precision
        col.depth = spec.array_depth
        col.is_map = spec.is_map
        for wall_from, offset in wall_clock_shifts(spec.timezone):
            shift[0] = wall_from
            shift[1] = offset
            if buf_append(&col.zone_shifts, <const char*>shift, sizeof(shift)) < 0:
                raise MemoryError()
        if nelems:
            col.elems = <Column*>PyMem_RawMalloc(sizeof(Column) * nelems)
            if col.elems == NULL:
                raise MemoryError()
            for k in range(nelems):
                memset_column(&col.elems[k])
            col.nelems = nelems
            for k in range(nelems):
                self._init_column(&col.elems[k], spec.tuple_elements[k])
            # Named Tuples: the element names as enum entries (value: the element).
            for k, name in enumerate(spec.tuple_names):
                if name:
                    raw = name.encode()
                    entry.off = col.enum_names.len
                    entry.len = len(raw)
                    entry.value = k
                    if buf_append(&col.enum_names, <const char*>raw, len(raw)) < 0 or \
                            buf_append(&col.enum_entries, <const char*>&entry,
                                       sizeof(EnumEntry)) < 0:
                        raise MemoryError()
                    col.enum_count += 1
        if (col.depth or nelems) and spec.default_text is not None:
            raise SchemaError(
                f"DEFAULT {spec.default_expr} of column '{spec.name}' is not {spec.ch_type}")
        for name, value in spec.enum_values:
            entry.off = col.enum_names.len
            entry.len = len(name)
            entry.value = value
            if buf_append(&col.enum_names, <const char*>name, len(name)) < 0 or \
                    buf_append(&col.enum_entries, <const char*>&entry, sizeof(EnumEntry)) < 0:
                raise MemoryError()
            col.enum_count += 1
        if col_end_string_init(col) < 0:
            raise MemoryError()
        if spec.default_text is not None:
            default = spec.default_text
            text = default
            if convert_text(col, text, len(default), True) != ERR_NONE:
                raise SchemaError(
                    f"DEFAULT {spec.default_expr} of column '{spec.name}' is not {spec.ch_type}")
            # Move the converted default out of the column into default_value.
            buf_append(&col.default_value, col.values.ptr, col.values.len)
            col.values.len = 0
            col.offsets.len = 8 if col.width == 0 else 0
            col.nulls.len = 0
            col.has_default = True

    def __dealloc__(self):
        cdef int i
        if self._cols != NULL:
            for i in range(self._ncols):
                col_free(&self._cols[i])
            PyMem_Free(self._cols)
        PyMem_Free(self._slots)
        buf_free(&self._tail)
        buf_free(&self._scratch)
        buf_free(&self._errdata)
        buf_free(&self._errrecs)
        buf_free(&self._omitted)

    @property
    def columns(self):
        return list(self._specs)

    @property
    def num_rows(self):
        return self._num_rows

    def take_block(self):
        cdef int i
        cdef Column* col
        cdef ErrRec* rec
        cdef Py_ssize_t k
        columns = []
        for i in range(self._ncols):
            col = &self._cols[i]
            if col.nelems:
                columns.append(ColumnData(self._tuple_payload(col), None, None))
            elif col.depth:
                columns.append(ColumnData(
                    self._array_payload(col),
                    PyBytes_FromStringAndSize(col.ends[0].ptr, col.ends[0].len),
                    None,
                ))
                col.ends[0].len = 0
                col.ends[1].len = 0
                col.keys.len = 0
            else:
                columns.append(ColumnData(
                    PyBytes_FromStringAndSize(col.values.ptr, col.values.len),
                    PyBytes_FromStringAndSize(col.offsets.ptr, col.offsets.len) if col.width == 0 else None,
                    PyBytes_FromStringAndSize(col.nulls.ptr, col.nulls.len) if col.nullable else None,
                ))
            col.values.len = 0
            col.offsets.len = 8 if col.width == 0 else 0  # keep the leading 0
            col.nulls.len = 0
        errors = []
        for k in range(self._errrecs.len // <Py_ssize_t>sizeof(ErrRec)):
            rec = &(<ErrRec*>self._errrecs.ptr)[k]
            errors.append(RowError(
                PyBytes_FromStringAndSize(self._errdata.ptr + rec.line_off, rec.line_len),
                rec.column, rec.code,
                PyBytes_FromStringAndSize(self._errdata.ptr + rec.value_off, rec.value_len),
            ))
        self._errdata.len = 0
        self._errrecs.len = 0
        omitted = None
        if self._track_omitted:
            omitted = PyBytes_FromStringAndSize(self._omitted.ptr, self._omitted.len)
            self._omitted.len = 0
        block = Block(self._num_rows, columns, errors, omitted)
        self._num_rows = 0
        return block

    cdef bytes _array_payload(self, Column* col):
        # The nested Native payload of an Array column: inner end offsets (Map: the
        # keys), the elements' null map, then the elements (String: varint length +
        # bytes each).
        cdef Buf out
        cdef Py_ssize_t count = col_children(col, col.depth)
        cdef size_t inner = <size_t>col.ends[1].len if col.depth > 1 else <size_t>col.keys.len
        cdef size_t nulls = <size_t>col.nulls.len
        cdef int rc
        memset(&out, 0, sizeof(Buf))
        try:
            with nogil:
                rc = buf_reserve(&out, <Py_ssize_t>(inner + nulls) + col.values.len + count * 10)
                if rc == 0:
                    if inner:
                        memcpy(out.ptr, col.ends[1].ptr if col.depth > 1 else col.keys.ptr, inner)
                    if nulls:
                        memcpy(out.ptr + inner, col.nulls.ptr, nulls)
                    out.len = <Py_ssize_t>(inner + nulls)
                    if col.code == TYPE_STRING:
                        rc = strings_native(<const int64_t*>col.offsets.ptr, count,
                                            <const unsigned char*>col.values.ptr, &out)
                    elif col.values.len:
                        memcpy(out.ptr + out.len, col.values.ptr, <size_t>col.values.len)
                        out.len += col.values.len
            if rc < 0:
                raise MemoryError()
            return PyBytes_FromStringAndSize(out.ptr, out.len)
        finally:
            buf_free(&out)

    cdef bytes _tuple_payload(self, Column* col):
        # A Tuple column's Native payload: per element its null map, then its values
        # (String: varint length + bytes each); the elements are reset.
        cdef Buf out
        cdef Column* elem
        cdef Py_ssize_t count
        cdef int k
        cdef int rc = 0
        memset(&out, 0, sizeof(Buf))
        try:
            for k in range(col.nelems):
                elem = &col.elems[k]
                count = col_children(elem, 0)
                if buf_append(&out, elem.nulls.ptr, elem.nulls.len) < 0:
                    raise MemoryError()
                if elem.code == TYPE_STRING:
                    rc = strings_native(<const int64_t*>elem.offsets.ptr, count,
                                        <const unsigned char*>elem.values.ptr, &out)
                else:
                    rc = buf_append(&out, elem.values.ptr, elem.values.len)
                if rc < 0:
                    raise MemoryError()
                elem.values.len = 0
                elem.offsets.len = 8 if elem.width == 0 else 0
                elem.nulls.len = 0
            return PyBytes_FromStringAndSize(out.ptr, out.len)
        finally:
            buf_free(&out)

    cdef bytes _strip_bom(self, bytes data):
        # Only the body's first bytes may be a BOM; decide once three bytes were seen.
        data = self._bom_pending + data
        if len(data) < 3 and b"\xef\xbb\xbf".startswith(data):
            self._bom_pending = data
            return b""
        self._bom_pending = b""
        self._at_start = False
        if data.startswith(b"\xef\xbb\xbf"):
            return data[3:]
        return data

    cdef bytes _flush_bom(self):
        pending = self._bom_pending
        self._bom_pending = b""
        self._at_start = False
        return pending

    # --- error records (nogil) ---

    @cython.final
    cdef int _record_error(self, const char* line, Py_ssize_t line_len, int column, int code,
                           const char* value, Py_ssize_t value_len) noexcept nogil:
        cdef ErrRec rec
        if value_len > MAX_ERROR_VALUE:
            value_len = MAX_ERROR_VALUE
        if buf_reserve(&self._errdata, line_len + value_len) < 0:
            return ERR_NO_MEMORY
        rec.line_off = self._errdata.len
        rec.line_len = line_len
        buf_append(&self._errdata, line, line_len)
        rec.value_off = self._errdata.len
        rec.value_len = value_len
        buf_append(&self._errdata, value, value_len)
        rec.column = column
        rec.code = code
        if buf_append(&self._errrecs, <const char*>&rec, sizeof(ErrRec)) < 0:
            return ERR_NO_MEMORY
        return ERR_NONE

    cdef int _too_long(self, const char* line) noexcept nogil:
        return self._record_error(line, self._max_row_bytes, -1, ERR_ROW_TOO_LONG, NULL, 0)

    # --- row framing (nogil) ---

    cdef int _process_row(self, const char* row, Py_ssize_t n) noexcept nogil:
        # Implemented by each format: parse one complete row (no newline).
        return ERR_NONE

    cdef bint _is_blank(self, const char* row, Py_ssize_t n) noexcept nogil:
        return False

    cdef int _end_row(self, const char* piece, Py_ssize_t n) noexcept nogil:
        # A row ended: `piece` is its part in the current chunk (after any carried tail).
        cdef Py_ssize_t total
        cdef int rc
        if self._skipping:
            self._skipping = False
            self._ended += 1  # counted when the limit was crossed
            return ERR_NONE
        if self._tail.len:
            total = self._tail.len + n
            if total > self._max_row_bytes:
                if buf_append(&self._tail, piece, self._max_row_bytes - self._tail.len) < 0:
                    return ERR_NO_MEMORY
                self._tail.len = 0
                self._ended += 1
                return self._too_long(self._tail.ptr)
            if buf_append(&self._tail, piece, n) < 0:
                return ERR_NO_MEMORY
            self._tail.len = 0  # the bytes stay valid until the next append
            piece = self._tail.ptr
            n = total
        elif n > self._max_row_bytes:
            self._ended += 1
            return self._too_long(piece)
        if self._is_blank(piece, n):
            return ERR_NONE
        self._ended += 1
        return self._process_row(piece, n)

    cdef int _carry(self, const char* rest, Py_ssize_t n) noexcept nogil:
        if self._skipping:
            return ERR_NONE
        if self._tail.len + n > self._max_row_bytes:
            if buf_append(&self._tail, rest, self._max_row_bytes - self._tail.len) < 0:
                return ERR_NO_MEMORY
            self._tail.len = 0
            self._skipping = True
            return self._too_long(self._tail.ptr)
        if buf_append(&self._tail, rest, n) < 0:
            return ERR_NO_MEMORY
        return ERR_NONE

    # --- conversion of one row's slots (nogil) ---

    @cython.final
    cdef int _fail_row(self, const char* row, Py_ssize_t n, int upto, int column, int code,
                       const char* value, Py_ssize_t value_len) noexcept nogil:
        # Undo columns [0, upto) of this row and record it as bad.
        cdef int i
        for i in range(upto):
            col_undo_row(&self._cols[i])
        return self._record_error(row, n, column, code, value, value_len)

    @cython.final
    cdef int _compact(self, Buf* out, const unsigned char* s, Py_ssize_t n) noexcept nogil:
        # Valid JSON text without whitespace outside strings.
        cdef Py_ssize_t pos = 0
        cdef bint in_string = False
        cdef unsigned char c
        if buf_reserve(out, n) < 0:
            return -1
        while pos < n:
            c = s[pos]
            if in_string:
                out.ptr[out.len] = c
                out.len += 1
                if c == b'\\':
                    out.ptr[out.len] = s[pos + 1]
                    out.len += 1
                    pos += 1
                elif c == b'"':
                    in_string = False
            elif c == b'"':
                in_string = True
                out.ptr[out.len] = c
                out.len += 1
            elif not is_ws(c):
                out.ptr[out.len] = c
                out.len += 1
            pos += 1
        return 0

    @cython.final
    cdef int _unescape(self, Buf* out, const unsigned char* s, Py_ssize_t n) noexcept nogil:
        # JSON string content (already validated by the scan) -> UTF-8 appended to out.
        cdef Py_ssize_t pos = 0
        cdef unsigned char c
        cdef unsigned int unit, low
        if buf_reserve(out, n) < 0:  # unescaped text is never longer
            return -1
        while pos < n:
            c = s[pos]
            if c != b'\\':
                out.ptr[out.len] = c
                out.len += 1
                pos += 1
                continue
            c = s[pos + 1]
            pos += 2
            if c == b'u':
                unit = hex4(s + pos)
                pos += 4
                if 0xD800 <= unit <= 0xDBFF:
                    low = hex4(s + pos + 2)
                    unit = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
                    pos += 6
                out.len += encode_utf8(out.ptr + out.len, unit)
                continue
            out.ptr[out.len] = (b'\b' if c == b'b' else b'\f' if c == b'f' else b'\n' if c == b'n'
                                else b'\r' if c == b'r' else b'\t' if c == b't' else c)
            out.len += 1
        return 0

    @cython.final
    cdef int _store(self, const char* row, Py_ssize_t n, int i) noexcept nogil:
        # Convert slot i into column i. Returns ERR_NONE, a row error (already
        # recorded, row undone) or ERR_NO_MEMORY.
        cdef Slot* slot = &self._slots[i]
        cdef Column* col = &self._cols[i]
        cdef int rc, code
        if slot.kind == KIND_MISSING or (slot.kind == KIND_NULL and not (
                col.nullable and not col.depth and not col.nelems)):
            # No value (or null where the row cannot hold NULL): the DEFAULT, if any.
            # An expression DEFAULT is ClickHouse's to compute: the zero or empty value
            # is stored, and the row's bit tells omit_missing to leave the column out.
            if col.omit_bit:
                self._row_omitted |= col.omit_bit
                slot.kind = KIND_MISSING
            elif col.has_default:
                slot.kind = KIND_MISSING
        if col.nelems:
            col.marks[0] = self._num_rows  # each element holds this many values
            rc = self._store_tuple(col, slot.kind, slot.escaped, slot.ptr, slot.len)
            if rc != ERR_NONE and rc != ERR_NO_MEMORY:
                col_undo_row(col)  # the elements stored before the bad one
        elif col.depth:
            col_mark_row(col)
            if slot.kind == KIND_CSV_TEXT:
                rc = self._store_csv(col, <const unsigned char*>slot.ptr, slot.len)
            elif col.is_map:
                rc = self._store_map(col, slot.kind, slot.escaped, slot.ptr, slot.len)
            else:
                rc = self._store_array(col, slot.kind, slot.escaped, slot.ptr, slot.len, 0)
            if rc != ERR_NONE and rc != ERR_NO_MEMORY:
                col_undo_row(col)  # the elements stored before the bad one
        elif slot.kind == KIND_MISSING:
            rc = col_append_missing(col)
            self._bad_ptr = NULL
            self._bad_len = 0
        else:
            rc = self._store_elem(col, slot.kind, slot.escaped, slot.ptr, slot.len)
        if rc == ERR_NONE or rc == ERR_NO_MEMORY:
            return rc
        code = self._fail_row(row, n, i, i, rc, self._bad_ptr, self._bad_len)
        return rc if code == ERR_NONE else code

    @cython.final
    cdef int _store_elem(self, Column* col, int kind, bint escaped, const char* ptr,
                         Py_ssize_t length) noexcept nogil:
        # One value (a row's, or an array element; not missing) into col. Returns
        # ERR_NONE, ERR_NO_MEMORY, or a row error with the offending text in _bad_ptr /
        # _bad_len (col untouched).
        cdef int rc
        if kind == KIND_NULL:
            if not col.nullable:
                self._bad_ptr = ptr
                self._bad_len = length
                return ERR_NULL
            return col_append_zero(col, 1)
        if kind == KIND_NESTED and col.code == TYPE_STRING:
            if self._compact(&col.values, <const unsigned char*>ptr, length) < 0:
                return ERR_NO_MEMORY
            return ERR_NO_MEMORY if col_end_string(col) < 0 or col_push_null_flag(col, 0) < 0 else ERR_NONE
        if kind == KIND_NESTED:
            self._scratch.len = 0
            if self._compact(&self._scratch, <const unsigned char*>ptr, length) < 0:
                return ERR_NO_MEMORY
            self._bad_ptr = self._scratch.ptr
            self._bad_len = self._scratch.len
            return ERR_BAD_VALUE
        if kind == KIND_JSON_STRING and escaped:
            if col.code == TYPE_STRING:
                if self._unescape(&col.values, <const unsigned char*>ptr, length) < 0:
                    return ERR_NO_MEMORY
                return ERR_NO_MEMORY if col_end_string(col) < 0 or col_push_null_flag(col, 0) < 0 else ERR_NONE
            self._scratch.len = 0
            if self._unescape(&self._scratch, <const unsigned char*>ptr, length) < 0:
                return ERR_NO_MEMORY
            self._bad_ptr = self._scratch.ptr
            self._bad_len = self._scratch.len
            return convert_text(col, <const unsigned char*>self._scratch.ptr, self._scratch.len, True)
        # JSON strings were validated as UTF-8 by the scan; CSV fields were not.
        self._bad_ptr = ptr
        self._bad_len = length
        return convert_text(col, <const unsigned char*>ptr, length, kind != KIND_JSON_STRING)

    @cython.final
    cdef int _store_array(self, Column* col, int kind, bint escaped, const char* ptr,
                          Py_ssize_t length, int level) noexcept nogil:
        # A JSON array (raw text, already validated by the scan) into level `level` of
        # an Array column: its elements, then its end offset. Null or missing is the
        # empty array; any other value is BAD_VALUE. Returns like _store_elem, with the
        # column possibly part-filled on a row error (the caller undoes the row).
        cdef const unsigned char* s = <const unsigned char*>ptr
        cdef Py_ssize_t pos, stop, item_len
        cdef const char* item
        cdef bint item_escaped
        cdef int item_kind, rc
        if kind == KIND_NESTED and s[0] == b'[':
            pos = json_ws(s, 1, length)
            while s[pos] != b']':
                stop = json_item(s, pos, length, &item_kind, &item_escaped, &item, &item_len)
                if level + 1 < col.depth:
                    rc = self._store_array(col, item_kind, item_escaped, item, item_len, level + 1)
                else:
                    rc = self._store_elem(col, item_kind, item_escaped, item, item_len)
                if rc != ERR_NONE:
                    return rc
                pos = json_ws(s, stop, length)
                if s[pos] == b',':
                    pos = json_ws(s, pos + 1, length)
        elif kind != KIND_NULL and kind != KIND_MISSING:
            return self._bad_value(kind, escaped, s, length)
        return col_end_array(col, level)

    @cython.final
    cdef int _bad_value(self, int kind, bint escaped,
                        const unsigned char* s, Py_ssize_t length) noexcept nogil:
        # BAD_VALUE for a JSON value that is not what the column takes, shown as a
        # scalar column would show it.
        if kind == KIND_NESTED or (kind == KIND_JSON_STRING and escaped):
            self._scratch.len = 0
            if (self._compact(&self._scratch, s, length) if kind == KIND_NESTED
                    else self._unescape(&self._scratch, s, length)) < 0:
                return ERR_NO_MEMORY
            self._bad_ptr = self._scratch.ptr
            self._bad_len = self._scratch.len
        else:
            self._bad_ptr = <const char*>s
            self._bad_len = length
        return ERR_BAD_VALUE

    @cython.final
    cdef int _store_tuple(self, Column* col, int kind, bint escaped, const char* ptr,
                          Py_ssize_t length) noexcept nogil:
        # A JSON array of exactly nelems items (a named Tuple: also an object of its
        # element names; other members are ignored) into the elements of a Tuple
        # column; null, missing, or an element an object leaves out: the element's
        # default (NULL for Nullable, else the zero). Returns like _store_array.
        cdef const unsigned char* s = <const unsigned char*>ptr
        cdef Py_ssize_t pos, stop, item_len, count
        cdef Py_ssize_t rows = col.marks[0]
        cdef const char* item
        cdef const char* key
        cdef Py_ssize_t key_len
        cdef bint item_escaped, key_escaped
        cdef int item_kind, rc, k
        if kind == KIND_NESTED and s[0] == b'[':
            count = 0
            pos = json_ws(s, 1, length)
            while s[pos] != b']':
                stop = json_item(s, pos, length, &item_kind, &item_escaped, &item, &item_len)
                count += 1
                pos = json_ws(s, stop, length)
                if s[pos] == b',':
                    pos = json_ws(s, pos + 1, length)
            if count != col.nelems:
                return self._bad_value(kind, escaped, s, length)
            k = 0
            pos = json_ws(s, 1, length)
            while s[pos] != b']':
                stop = json_item(s, pos, length, &item_kind, &item_escaped, &item, &item_len)
                rc = self._store_elem(&col.elems[k], item_kind, item_escaped, item, item_len)
                if rc != ERR_NONE:
                    return rc
                k += 1
                pos = json_ws(s, stop, length)
                if s[pos] == b',':
                    pos = json_ws(s, pos + 1, length)
            return ERR_NONE
        if kind == KIND_NESTED and s[0] == b'{' and col.enum_count:
            pos = json_ws(s, 1, length)
            while s[pos] != b'}':
                key_escaped = False
                stop = json_string_end(s, pos, &key_escaped)
                if key_escaped:
                    self._scratch.len = 0
                    if self._unescape(&self._scratch, s + pos + 1, stop - pos - 2) < 0:
                        return ERR_NO_MEMORY
                    key = self._scratch.ptr
                    key_len = self._scratch.len
                else:
                    key = <const char*>s + pos + 1
                    key_len = stop - pos - 2
                k = tuple_element(col, key, key_len)
                pos = json_ws(s, json_ws(s, stop, length) + 1, length)  # past the colon
                stop = json_item(s, pos, length, &item_kind, &item_escaped, &item, &item_len)
                if k >= 0:
                    if col_children(&col.elems[k], 0) > rows:  # a duplicate member
                        return self._bad_value(kind, escaped, s, length)
                    rc = self._store_elem(&col.elems[k], item_kind, item_escaped, item,
                                          item_len)
                    if rc != ERR_NONE:
                        return rc
                pos = json_ws(s, stop, length)
                if s[pos] == b',':
                    pos = json_ws(s, pos + 1, length)
        elif kind != KIND_NULL and kind != KIND_MISSING:
            return self._bad_value(kind, escaped, s, length)
        for k in range(col.nelems):
            if col_children(&col.elems[k], 0) == rows:
                rc = col_append_zero(&col.elems[k], 1 if col.elems[k].nullable else 0)
                if rc != ERR_NONE:
                    return rc
        return ERR_NONE

    @cython.final
    cdef int _store_map(self, Column* col, int kind, bint escaped, const char* ptr,
                        Py_ssize_t length) noexcept nogil:
        # A JSON object (raw text, validated by the scan) into a Map column: per member
        # its key, then its value as an element; then the row's end offset. Null or
        # missing is the empty map; any other value is BAD_VALUE. Returns like
        # _store_array.
        cdef const unsigned char* s = <const unsigned char*>ptr
        cdef Py_ssize_t pos, stop, item_len
        cdef bint key_escaped, item_escaped
        cdef int item_kind, rc
        cdef const char* item
        if kind == KIND_NESTED and s[0] == b'{':
            pos = json_ws(s, 1, length)
            while s[pos] != b'}':
                key_escaped = False
                stop = json_string_end(s, pos, &key_escaped)
                if key_escaped:
                    self._scratch.len = 0
                    if self._unescape(&self._scratch, s + pos + 1, stop - pos - 2) < 0:
                        return ERR_NO_MEMORY
                    rc = col_append_key(col, self._scratch.ptr, self._scratch.len)
                else:
                    rc = col_append_key(col, <const char*>s + pos + 1, stop - pos - 2)
                if rc != ERR_NONE:
                    return rc
                pos = json_ws(s, json_ws(s, stop, length) + 1, length)  # past the colon
                stop = json_item(s, pos, length, &item_kind, &item_escaped, &item, &item_len)
                rc = self._store_elem(col, item_kind, item_escaped, item, item_len)
                if rc != ERR_NONE:
                    return rc
                pos = json_ws(s, stop, length)
                if s[pos] == b',':
                    pos = json_ws(s, pos + 1, length)
        elif kind != KIND_NULL and kind != KIND_MISSING:
            return self._bad_value(kind, escaped, s, length)
        return col_end_array(col, 0)

    # --- CSV Array / Map literals (see _pyparser._csv_literal) ---

    @cython.final
    cdef int _store_csv(self, Column* col, const unsigned char* s, Py_ssize_t n) noexcept nogil:
        cdef Py_ssize_t pos = csv_ws(s, 0, n)
        cdef unsigned char opening = b'{' if col.is_map else b'['
        if not csv_literal_valid(s, n) or s[pos] != opening:
            self._bad_ptr = <const char*>s
            self._bad_len = n
            return ERR_BAD_VALUE
        if col.is_map:
            return self._store_csv_map(col, s, pos, n)
        return self._store_csv_array(col, s, pos, n, 0)

    @cython.final
    cdef int _store_csv_array(self, Column* col, const unsigned char* s, Py_ssize_t pos,
                              Py_ssize_t n, int level) noexcept nogil:
        # The valid list literal at pos into level `level` of an Array column.
        cdef Py_ssize_t stop
        cdef int rc
        pos = csv_ws(s, pos + 1, n)
        if s[pos] != b']':
            while True:
                stop = csv_value_end(s, pos, n)
                if level + 1 < col.depth:
                    if s[pos] == b'[':
                        rc = self._store_csv_array(col, s, pos, n, level + 1)
                    elif stop - pos == 4 and memcmp(s + pos, b"NULL", 4) == 0:
                        rc = col_end_array(col, level + 1)
                    else:
                        rc = self._csv_item_text(s, pos, stop)
                        if rc == ERR_NONE:
                            rc = ERR_BAD_VALUE
                else:
                    rc = self._store_csv_elem(col, s, pos, stop)
                if rc != ERR_NONE:
                    return rc
                pos = csv_ws(s, stop, n)
                if s[pos] != b',':
                    break
                pos = csv_ws(s, pos + 1, n)
        return col_end_array(col, level)

    @cython.final
    cdef int _store_csv_map(self, Column* col, const unsigned char* s, Py_ssize_t pos,
                            Py_ssize_t n) noexcept nogil:
        cdef Py_ssize_t stop
        cdef int rc
        pos = csv_ws(s, pos + 1, n)
        if s[pos] != b'}':
            while True:
                stop = csv_value_end(s, pos, n)
                rc = self._csv_item_text(s, pos, stop)
                if rc != ERR_NONE:
                    return rc
                if s[pos] == b'[' or s[pos] == b'{':
                    return ERR_BAD_VALUE
                if s[pos] != b"'" and stop - pos == 4 and memcmp(s + pos, b"NULL", 4) == 0:
                    return ERR_NULL
                if not utf8_valid(<const unsigned char*>self._bad_ptr, self._bad_len):
                    return ERR_INVALID_UTF8
                rc = col_append_key(col, self._bad_ptr, self._bad_len)
                if rc != ERR_NONE:
                    return rc
                pos = csv_ws(s, csv_ws(s, stop, n) + 1, n)  # past the colon
                stop = csv_value_end(s, pos, n)
                rc = self._store_csv_elem(col, s, pos, stop)
                if rc != ERR_NONE:
                    return rc
                pos = csv_ws(s, stop, n)
                if s[pos] != b',':
                    break
                pos = csv_ws(s, pos + 1, n)
        return col_end_array(col, 0)

    @cython.final
    cdef int _csv_item_text(self, const unsigned char* s, Py_ssize_t pos,
                            Py_ssize_t stop) noexcept nogil:
        # The text of the item s[pos:stop] into _bad_ptr/_bad_len: a quoted string's
        # content (unescaped, in _scratch), else as written.
        if s[pos] == b"'":
            self._scratch.len = 0
            if csv_unquote(&self._scratch, s, pos, stop) < 0:
                return ERR_NO_MEMORY
            self._bad_ptr = self._scratch.ptr
            self._bad_len = self._scratch.len
        else:
            self._bad_ptr = <const char*>s + pos
            self._bad_len = stop - pos
        return ERR_NONE

    @cython.final
    cdef int _store_csv_elem(self, Column* col, const unsigned char* s, Py_ssize_t pos,
                             Py_ssize_t stop) noexcept nogil:
        cdef int rc = self._csv_item_text(s, pos, stop)
        if rc != ERR_NONE:
            return rc
        if s[pos] == b'[' or s[pos] == b'{':
            return ERR_BAD_VALUE
        if s[pos] != b"'" and stop - pos == 4 and memcmp(s + pos, b"NULL", 4) == 0:
            return self._store_elem(col, KIND_NULL, False, self._bad_ptr, 4)
        return self._store_elem(col, KIND_TEXT, False, self._bad_ptr, self._bad_len)

    @cython.final
    cdef int _store_all(self, const char* row, Py_ssize_t n) noexcept nogil:
        cdef int i
        cdef int rc, code
        cdef Slot* slot
        cdef Column* col
        self._row_omitted = 0
        for i in range(self._ncols):
            slot = &self._slots[i]
            col = &self._cols[i]
            if (slot.kind == KIND_TEXT or (slot.kind == KIND_JSON_STRING and not slot.escaped)) \
                    and not col.nelems and not col.depth:
                # The common case, what _store ends with: text straight into a scalar
                # column (JSON strings were validated as UTF-8 by the scan).
                rc = convert_text(col, <const unsigned char*>slot.ptr, slot.len,
                                  slot.kind == KIND_TEXT)
                if rc != ERR_NONE and rc != ERR_NO_MEMORY:
                    code = self._fail_row(row, n, i, i, rc, slot.ptr, slot.len)
                    rc = rc if code == ERR_NONE else code
            else:
                rc = self._store(row, n, i)
            if rc == ERR_NO_MEMORY:
                return rc
            if rc != ERR_NONE:
                return ERR_NONE  # a bad row, recorded
        if self._track_omitted and buf_append(&self._omitted, <const char*>&self._row_omitted,
                                              sizeof(uint64_t)) < 0:
            for i in range(self._ncols):
                col_undo_row(&self._cols[i])
            return ERR_NO_MEMORY
        self._num_rows += 1
        return ERR_NONE


cdef inline unsigned int hex_digit(unsigned char c) noexcept nogil:
    if b'0' <= c <= b'9':
        return c - 48
    c |= 0x20
    if b'a' <= c <= b'f':
        return c - 87
    return 0x100


cdef inline unsigned int hex4(const unsigned char* s) noexcept nogil:
    # Four hex digits -> value; > 0xFFFF if any is not a hex digit.
    return (hex_digit(s[0]) << 12) | (hex_digit(s[1]) << 8) | (hex_digit(s[2]) << 4) | hex_digit(s[3]) \
        if (hex_digit(s[0]) | hex_digit(s[1]) | hex_digit(s[2]) | hex_digit(s[3])) < 0x100 else 0x10000


cdef inline Py_ssize_t encode_utf8(char* out, unsigned int cp) noexcept nogil:
    if cp < 0x80:
        out[0] = <char>cp
        return 1
    if cp < 0x800:
        out[0] = <char>(0xC0 | (cp >> 6))
        out[1] = <char>(0x80 | (cp & 0x3F))
        return 2
    if cp < 0x10000:
        out[0] = <char>(0xE0 | (cp >> 12))
        out[1] = <char>(0x80 | ((cp >> 6) & 0x3F))
        out[2] = <char>(0x80 | (cp & 0x3F))
        return 3
    out[0] = <char>(0xF0 | (cp >> 18))
    out[1] = <char>(0x80 | ((cp >> 12) & 0x3F))
    out[2] = <char>(0x80 | ((cp >> 6) & 0x3F))
    out[3] = <char>(0x80 | (cp & 0x3F))
    return 4


cdef inline Py_ssize_t json_ws(const unsigned char* s, Py_ssize_t pos,
                               Py_ssize_t end) noexcept nogil:
    while pos < end and is_ws(s[pos]):
        pos += 1
    return pos


cdef inline Py_ssize_t json_string_end(const unsigned char* s, Py_ssize_t pos,
                                       bint* escaped) noexcept nogil:
    # The end (after the closing quote) of the validated JSON string at pos.
    pos += 1
    while s[pos] != b'"':
        if s[pos] == b'\\':
            escaped[0] = True
            pos += 1
        pos += 1
    return pos + 1


cdef Py_ssize_t json_nested_end(const unsigned char* s, Py_ssize_t pos) noexcept nogil:
    # The end of the validated JSON object or array at pos.
    cdef Py_ssize_t depth = 0
    cdef bint escaped = False
    cdef unsigned char c
    while True:
        c = s[pos]
        if c == b'"':
            pos = json_string_end(s, pos, &escaped)
            continue
        if c == b'[' or c == b'{':
            depth += 1
        elif c == b']' or c == b'}':
            depth -= 1
            if depth == 0:
                return pos + 1
        pos += 1


cdef inline Py_ssize_t json_item(const unsigned char* s, Py_ssize_t pos, Py_ssize_t length,
                                 int* kind, bint* escaped, const char** ptr,
                                 Py_ssize_t* item_len) noexcept nogil:
    # The validated JSON value at pos, as an element: its kind and text (a string's
    # content, still escaped); returns its end.
    cdef unsigned char c = s[pos]
    cdef Py_ssize_t stop
    escaped[0] = False
    if c == b'"':
        stop = json_string_end(s, pos, escaped)
        kind[0] = KIND_JSON_STRING
    elif c == b'[' or c == b'{':
        stop = json_nested_end(s, pos)
        kind[0] = KIND_NESTED
    elif c == b'n':
        stop = pos + 4
        kind[0] = KIND_NULL
    else:  # a number, true or false
        stop = pos + 1
        while stop < length and not is_ws(s[stop]) and s[stop] != b',' \
                and s[stop] != b']' and s[stop] != b'}':
            stop += 1
        kind[0] = KIND_TEXT
    if kind[0] == KIND_JSON_STRING:
        ptr[0] = <const char*>s + pos + 1
        item_len[0] = stop - pos - 2
    else:
        ptr[0] = <const char*>s + pos
        item_len[0] = stop - pos
    return stop


# CSV Array / Map literals: see _pyparser._csv_literal.

cdef inline bint csv_sep(unsigned char c) noexcept nogil:
    return (c == b',' or c == b'[' or c == b']' or c == b'{' or c == b'}' or c == b':'
            or c == b"'" or c == b' ' or c == b'\t')


cdef inline Py_ssize_t csv_ws(const unsigned char* s, Py_ssize_t pos, Py_ssize_t n) noexcept nogil:
    while pos < n and (s[pos] == b' ' or s[pos] == b'\t'):
        pos += 1
    return pos


cdef Py_ssize_t csv_quoted_end(const unsigned char* s, Py_ssize_t pos, Py_ssize_t n) noexcept nogil:
    # The end (after the closing quote) of the quoted string at pos, or -1.
    cdef unsigned char c
    pos += 1
    while True:
        if pos >= n:
            return -1
        c = s[pos]
        if c == b"'":
            if pos + 1 < n and s[pos + 1] == b"'":
                pos += 2
                continue
            return pos + 1
        if c == b'\\':
            if pos + 1 >= n:
                return -1
            if s[pos + 1] == b'x':
                if pos + 4 > n or hex_digit(s[pos + 2]) > 15 or hex_digit(s[pos + 3]) > 15:
                    return -1
                pos += 4
                continue
            pos += 2
            continue
        pos += 1


cdef int csv_unquote(Buf* out, const unsigned char* s, Py_ssize_t pos, Py_ssize_t stop) noexcept nogil:
    # The content of the valid quoted string s[pos:stop], unescaped, appended to out.
    cdef unsigned char c
    if buf_reserve(out, stop - pos) < 0:
        return -1
    pos += 1
    stop -= 1
    while pos < stop:
        c = s[pos]
        if c == b"'":  # a doubled quote
            pos += 1
        elif c == b'\\':
            c = s[pos + 1]
            pos += 1
            if c == b'x':
                c = <unsigned char>((hex_digit(s[pos + 1]) << 4) | hex_digit(s[pos + 2]))
                pos += 2
            elif c == b'b':
                c = 8
            elif c == b'f':
                c = 12
            elif c == b'n':
                c = 10
            elif c == b'r':
                c = 13
            elif c == b't':
                c = 9
            elif c == b'0':
                c = 0
            elif c == b'a':
                c = 7
            elif c == b'v':
                c = 11
        out.ptr[out.len] = <char>c
        out.len += 1
        pos += 1
    return 0


cdef Py_ssize_t csv_value_end(const unsigned char* s, Py_ssize_t pos, Py_ssize_t n) noexcept nogil:
    # The end of the value at pos in a valid literal.
    cdef Py_ssize_t depth = 0
    cdef unsigned char c = s[pos]
    if c == b"'":
        return csv_quoted_end(s, pos, n)
    if c == b'[' or c == b'{':
        while True:
            c = s[pos]
            if c == b"'":
                pos = csv_quoted_end(s, pos, n)
                continue
            if c == b'[' or c == b'{':
                depth += 1
            elif c == b']' or c == b'}':
                depth -= 1
                if depth == 0:
                    return pos + 1
            pos += 1
    while pos < n and not csv_sep(s[pos]):
        pos += 1
    return pos


cdef bint csv_literal_valid(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    # One list or map literal (or a single string / bare token), nesting <= MAX_DEPTH.
    cdef unsigned char closes[MAX_DEPTH + 1]   # per open container: ']' or '}'
    cdef bint key_next[MAX_DEPTH + 1]          # maps: the next value is a key
    cdef int depth = 0
    cdef bint want_value = True                # else: after a value
    cdef bint may_close = False                # right after an opening bracket
    cdef Py_ssize_t pos = 0
    cdef Py_ssize_t start
    cdef unsigned char c
    while True:
        pos = csv_ws(s, pos, n)
        if pos >= n:
            return False
        c = s[pos]
        if want_value:
            if may_close and c == closes[depth - 1]:
                pass  # closed below
            elif c == b'[' or c == b'{':
                depth += 1
                if depth > MAX_DEPTH:
                    return False
                closes[depth - 1] = b']' if c == b'[' else b'}'
                key_next[depth - 1] = c == b'{'
                pos += 1
                may_close = True
                continue
            elif c == b"'":
                pos = csv_quoted_end(s, pos, n)
                if pos < 0:
                    return False
                pos -= 1  # the value ends after the byte at pos
            else:
                start = pos
                while pos < n and not csv_sep(s[pos]):
                    pos += 1
                if pos == start:
                    return False
                pos -= 1
        elif depth == 0:
            return False
        elif closes[depth - 1] == b'}' and key_next[depth - 1]:
            # a key was read: a colon and its value follow
            if c != b':':
                return False
            key_next[depth - 1] = False
            pos += 1
            want_value = True
            may_close = False
            continue
        elif c == b',':
            if closes[depth - 1] == b'}':
                key_next[depth - 1] = True
            pos += 1
            want_value = True
            may_close = False
            continue
        elif c != closes[depth - 1]:
            return False
        # a value ended at pos (a closing bracket, or the last byte of a string or token)
        if depth and c == closes[depth - 1] and (not want_value or may_close):
            depth -= 1
        pos += 1
        want_value = False
        may_close = False
        if depth == 0:
            return csv_ws(s, pos, n) == n


cdef void memset_column(Column* col) noexcept nogil:
    memset(col, 0, sizeof(Column))


cdef void col_free(Column* col) noexcept nogil:
    # Every buffer of col, and of its Tuple elements.
    cdef int k
    buf_free(&col.values)
    buf_free(&col.offsets)
    buf_free(&col.nulls)
    buf_free(&col.default_value)
    buf_free(&col.enum_names)
    buf_free(&col.enum_entries)
    buf_free(&col.ends[0])
    buf_free(&col.ends[1])
    buf_free(&col.keys)
    buf_free(&col.zone_shifts)
    if col.elems != NULL:
        for k in range(col.nelems):
            col_free(&col.elems[k])
        PyMem_RawFree(col.elems)
        col.elems = NULL
        col.nelems = 0


cdef int tuple_element(Column* col, const char* name, Py_ssize_t n) noexcept nogil:
    # The element of a named Tuple called name, or -1.
    cdef EnumEntry* entries = <EnumEntry*>col.enum_entries.ptr
    cdef Py_ssize_t k
    for k in range(col.enum_count):
        if entries[k].len == n and (n == 0 or memcmp(col.enum_names.ptr + entries[k].off, name,
                                                     <size_t>n) == 0):
            return entries[k].value
    return -1


cdef int col_end_string_init(Column* col) noexcept nogil:
    # String offsets start with a 0 that take_block() keeps.
    if col.width == 0:
        return col_end_string(col)
    return 0


include "ndjson.pxi"
include "csv.pxi"
