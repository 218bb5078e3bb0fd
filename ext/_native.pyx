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
from buffers cimport Buf, buf_reserve, buf_append, buf_append_byte, buf_free

import sys

from tinyingest.block import Block, ColumnData, RowError
from tinyingest.schema import SchemaError
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
    return c == b' ' or c == b'\t' or c == b'\r' or c == b'\n'


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

    def __cinit__(self, *args, **kwargs):
        self._cols = NULL
        self._slots = NULL
        self._ncols = 0
        self._at_start = True
        self._bom_pending = b""

    def __init__(self, columns, *, Py_ssize_t max_row_bytes=1 << 20):
        cdef int i
        cdef Column* col
        cdef bytes default
        cdef const unsigned char* text
        cdef EnumEntry entry
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
            spec = self._specs[i]
            col = &self._cols[i]
            col.code = int(spec.type_code)
            col.width = _pyparser.FIXED_WIDTH[spec.type_code]
            col.nullable = spec.nullable
            col.length = spec.length
            col.scale = spec.scale
            col.precision = spec.precision
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
                buf_free(&self._cols[i].values)
                buf_free(&self._cols[i].offsets)
                buf_free(&self._cols[i].nulls)
                buf_free(&self._cols[i].default_value)
                buf_free(&self._cols[i].enum_names)
                buf_free(&self._cols[i].enum_entries)
            PyMem_Free(self._cols)
        PyMem_Free(self._slots)
        buf_free(&self._tail)
        buf_free(&self._scratch)
        buf_free(&self._errdata)
        buf_free(&self._errrecs)

    @property
    def columns(self):
        return list(self._specs)

    def take_block(self):
        cdef int i
        cdef Column* col
        cdef ErrRec* rec
        cdef Py_ssize_t k
        columns = []
        for i in range(self._ncols):
            col = &self._cols[i]
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
        block = Block(self._num_rows, columns, errors)
        self._num_rows = 0
        return block

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
        cdef int rc
        cdef int code
        if slot.kind == KIND_MISSING:
            rc = col_append_missing(col)
        elif slot.kind == KIND_NULL:
            if not col.nullable:
                rc = self._fail_row(row, n, i, i, ERR_NULL, slot.ptr, slot.len)
                return ERR_NULL if rc == ERR_NONE else rc
            rc = col_append_zero(col, 1)
        elif slot.kind == KIND_NESTED and col.code == TYPE_STRING:
            if self._compact(&col.values, <const unsigned char*>slot.ptr, slot.len) < 0:
                return ERR_NO_MEMORY
            rc = ERR_NO_MEMORY if col_end_string(col) < 0 or col_push_null_flag(col, 0) < 0 else ERR_NONE
        elif slot.kind == KIND_NESTED:
            self._scratch.len = 0
            if self._compact(&self._scratch, <const unsigned char*>slot.ptr, slot.len) < 0:
                return ERR_NO_MEMORY
            rc = self._fail_row(row, n, i, i, ERR_BAD_VALUE, self._scratch.ptr, self._scratch.len)
            return ERR_BAD_VALUE if rc == ERR_NONE else rc
        elif slot.kind == KIND_JSON_STRING and slot.escaped:
            if col.code == TYPE_STRING:
                if self._unescape(&col.values, <const unsigned char*>slot.ptr, slot.len) < 0:
                    return ERR_NO_MEMORY
                rc = ERR_NO_MEMORY if col_end_string(col) < 0 or col_push_null_flag(col, 0) < 0 else ERR_NONE
            else:
                self._scratch.len = 0
                if self._unescape(&self._scratch, <const unsigned char*>slot.ptr, slot.len) < 0:
                    return ERR_NO_MEMORY
                rc = convert_text(col, <const unsigned char*>self._scratch.ptr, self._scratch.len, True)
                if rc != ERR_NONE and rc != ERR_NO_MEMORY:
                    code = rc
                    rc = self._fail_row(row, n, i, i, code, self._scratch.ptr, self._scratch.len)
                    return code if rc == ERR_NONE else rc
        else:
            # JSON strings were validated as UTF-8 by the scan; CSV fields were not.
            rc = convert_text(col, <const unsigned char*>slot.ptr, slot.len,
                              slot.kind != KIND_JSON_STRING)
            if rc != ERR_NONE and rc != ERR_NO_MEMORY:
                code = rc
                rc = self._fail_row(row, n, i, i, code, slot.ptr, slot.len)
                return code if rc == ERR_NONE else rc
        return rc

    @cython.final
    cdef int _store_all(self, const char* row, Py_ssize_t n) noexcept nogil:
        cdef int i
        cdef int rc
        for i in range(self._ncols):
            rc = self._store(row, n, i)
            if rc == ERR_NO_MEMORY:
                return rc
            if rc != ERR_NONE:
                return ERR_NONE  # a bad row, recorded
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


cdef void memset_column(Column* col) noexcept nogil:
    memset(col, 0, sizeof(Column))


cdef int col_end_string_init(Column* col) noexcept nogil:
    # String offsets start with a 0 that take_block() keeps.
    if col.width == 0:
        return col_end_string(col)
    return 0


include "ndjson.pxi"
include "csv.pxi"


@cython.boundscheck(False)
@cython.wraparound(False)
def encode_strings(offsets, data):
    """(int64 offsets[n+1], data) -> Native String column: varint length + bytes per value."""
    cdef const unsigned char[::1] off_view = offsets
    cdef const unsigned char[::1] data_view = data
    cdef Py_ssize_t count = off_view.shape[0] // 8 - 1
    cdef const int64_t* offs
    cdef Py_ssize_t i, start, length
    cdef uint64_t v
    cdef Buf out
    cdef bytes result
    memset(&out, 0, sizeof(Buf))
    if count <= 0:
        return b""
    offs = <const int64_t*>&off_view[0]
    if offs[count] > data_view.shape[0] or offs[0] != 0:
        raise ValueError("offsets do not match data")
    try:
        with nogil:
            if buf_reserve(&out, offs[count] + count * 10) < 0:
                with gil:
                    raise MemoryError()
            for i in range(count):
                start = offs[i]
                length = offs[i + 1] - start
                v = <uint64_t>length
                while v >= 0x80:
                    out.ptr[out.len] = <char>((v & 0x7F) | 0x80)
                    out.len += 1
                    v >>= 7
                out.ptr[out.len] = <char>v
                out.len += 1
                if length:
                    memcpy(out.ptr + out.len, &data_view[start], <size_t>length)
                    out.len += length
        result = PyBytes_FromStringAndSize(out.ptr, out.len)
    finally:
        buf_free(&out)
    return result


# --- LowCardinality(String) ---------------------------------------------------------------

cdef struct LCEntry:
    Py_ssize_t off      # the value, in data
    Py_ssize_t len
    uint64_t hash


cdef inline uint64_t lc_hash(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    # 8 bytes at a time, then murmur3's 64-bit finaliser.
    cdef uint64_t h = <uint64_t>0x9E3779B97F4A7C15 ^ <uint64_t>n
    cdef uint64_t w
    while n >= 8:
        memcpy(&w, p, 8)
        h = (h ^ w) * <uint64_t>0xFF51AFD7ED558CCD
        h ^= h >> 29
        p += 8
        n -= 8
    if n:
        w = 0
        memcpy(&w, p, <size_t>n)
        h = (h ^ w) * <uint64_t>0xC4CEB9FE1A85EC53
        h ^= h >> 29
    h ^= h >> 33
    h *= <uint64_t>0xFF51AFD7ED558CCD
    h ^= h >> 33
    h *= <uint64_t>0xC4CEB9FE1A85EC53
    h ^= h >> 33
    return h


cdef inline void put_u64(Buf* out, uint64_t value) noexcept nogil:
    # Little-endian host (checked at import): the in-memory bytes are Native's.
    memcpy(out.ptr + out.len, &value, 8)
    out.len += 8


cdef inline void put_varint(Buf* out, uint64_t value) noexcept nogil:
    while value >= 0x80:
        out.ptr[out.len] = <char>((value & 0x7F) | 0x80)
        out.len += 1
        value >>= 7
    out.ptr[out.len] = <char>value
    out.len += 1


cdef struct LCTable:
    # Dictionary positions: open addressing over entry numbers + 1 (0 = empty), keyed by
    # (hash, len, bytes); doubled when half full.
    Py_ssize_t* slots
    Py_ssize_t mask
    Buf entries         # LCEntry array, in first-seen order: the dictionary
    Py_ssize_t count
    Py_ssize_t nbytes   # total length of the entries' values


cdef int lc_grow(LCTable* t) noexcept nogil:
    cdef Py_ssize_t size = (t.mask + 1) * 2
    cdef Py_ssize_t k, slot
    cdef LCEntry* ent = <LCEntry*>t.entries.ptr
    cdef Py_ssize_t* bigger = <Py_ssize_t*>PyMem_RawMalloc(<size_t>size * sizeof(Py_ssize_t))
    if bigger == NULL:
        return -1
    memset(bigger, 0, <size_t>size * sizeof(Py_ssize_t))
    for k in range(t.count):
        slot = <Py_ssize_t>(ent[k].hash & <uint64_t>(size - 1))
        while bigger[slot]:
            slot = (slot + 1) & (size - 1)
        bigger[slot] = k + 1
    PyMem_RawFree(t.slots)
    t.slots = bigger
    t.mask = size - 1
    return 0


cdef Py_ssize_t lc_position(LCTable* t, const unsigned char* data, Py_ssize_t start,
                            Py_ssize_t length) noexcept nogil:
    # The dictionary position of data[start:start+length], added if new; -1 if out of memory.
    cdef uint64_t h = lc_hash(data + start, length)
    cdef Py_ssize_t slot = <Py_ssize_t>(h & <uint64_t>t.mask)
    cdef Py_ssize_t j
    cdef LCEntry* ent
    cdef LCEntry entry
    while True:
        j = t.slots[slot]
        if j == 0:
            entry.off = start
            entry.len = length
            entry.hash = h
            if buf_append(&t.entries, <const char*>&entry, sizeof(LCEntry)) < 0:
                return -1
            t.count += 1
            t.nbytes += length
            t.slots[slot] = t.count
            if t.count * 2 > t.mask + 1 and lc_grow(t) < 0:
                return -1
            return t.count - 1
        ent = &(<LCEntry*>t.entries.ptr)[j - 1]
        if ent.hash == h and ent.len == length and (
                length == 0 or memcmp(data + ent.off, data + start, <size_t>length) == 0):
            return j - 1
        slot = (slot + 1) & t.mask


cdef int lc_write(LCTable* t, const uint64_t* keys, Py_ssize_t count, Py_ssize_t base,
                  const unsigned char* data, Buf* out) noexcept nogil:
    # Header, dictionary, row count and indexes (see encode_low_cardinality_py).
    cdef uint64_t max_key = <uint64_t>(t.count + base - 1)
    cdef int width, width_code
    cdef Py_ssize_t i, k
    cdef LCEntry* ent = <LCEntry*>t.entries.ptr
    cdef uint64_t key
    cdef uint16_t k16
    cdef uint32_t k32
    if max_key <= 0xFF:
        width = 1
        width_code = 0
    elif max_key <= 0xFFFF:
        width = 2
        width_code = 1
    elif max_key <= 0xFFFFFFFFULL:
        width = 4
        width_code = 2
    else:
        width = 8
        width_code = 3
    if buf_reserve(out, 32 + (t.count + base) * 10 + t.nbytes + count * width) < 0:
        return -1
    put_u64(out, 1)  # keys version: SharedDictionariesWithAdditionalKeys
    put_u64(out, (1 << 9) | (1 << 10) | width_code)  # has additional keys, update dictionary
    put_u64(out, <uint64_t>(t.count + base))
    if base:
        put_varint(out, 0)  # position 0 stands for NULL; its value is ""
    for k in range(t.count):
        put_varint(out, <uint64_t>ent[k].len)
        if ent[k].len:
            memcpy(out.ptr + out.len, data + ent[k].off, <size_t>ent[k].len)
            out.len += ent[k].len
    put_u64(out, <uint64_t>count)
    for i in range(count):
        key = keys[i]
        if width == 1:
            out.ptr[out.len] = <char>(<uint8_t>key)
        elif width == 2:
            k16 = <uint16_t>key
            memcpy(out.ptr + out.len, &k16, 2)
        elif width == 4:
            k32 = <uint32_t>key
            memcpy(out.ptr + out.len, &k32, 4)
        else:
            memcpy(out.ptr + out.len, &key, 8)
        out.len += width
    return 0


cdef int lc_encode(const int64_t* offs, Py_ssize_t count, const unsigned char* data,
                   const unsigned char* nulls, Buf* out) noexcept nogil:
    # The payload of encode_low_cardinality_py into out; -1 if out of memory.
    cdef LCTable t
    cdef Py_ssize_t base = 1 if nulls != NULL else 0
    cdef Py_ssize_t i, position
    cdef int rc = -1
    cdef uint64_t* keys = <uint64_t*>PyMem_RawMalloc(<size_t>count * sizeof(uint64_t))
    memset(&t, 0, sizeof(LCTable))
    t.mask = 255
    t.slots = <Py_ssize_t*>PyMem_RawMalloc(<size_t>(t.mask + 1) * sizeof(Py_ssize_t))
    if keys != NULL and t.slots != NULL:
        memset(t.slots, 0, <size_t>(t.mask + 1) * sizeof(Py_ssize_t))
        rc = 0
        for i in range(count):
            if nulls != NULL and nulls[i]:
                keys[i] = 0
                continue
            position = lc_position(&t, data, offs[i], offs[i + 1] - offs[i])
            if position < 0:
                rc = -1
                break
            keys[i] = <uint64_t>(position + base)
        if rc == 0:
            rc = lc_write(&t, keys, count, base, data, out)
    PyMem_RawFree(keys)
    PyMem_RawFree(t.slots)
    buf_free(&t.entries)
    return rc


@cython.boundscheck(False)
@cython.wraparound(False)
def encode_low_cardinality(offsets, data, nulls=None):
    """Native LowCardinality(String) payload, or LowCardinality(Nullable(String)) when
    ``nulls`` is given: the compiled twin of ``native.encode_low_cardinality_py``."""
    cdef const unsigned char[::1] off_view = offsets
    cdef const unsigned char[::1] data_view = data
    cdef const unsigned char[::1] null_view
    cdef const unsigned char* null_ptr = NULL
    cdef const unsigned char* data_ptr = NULL
    cdef Py_ssize_t count = off_view.shape[0] // 8 - 1
    cdef const int64_t* offs
    cdef Py_ssize_t i
    cdef int rc
    cdef Buf out
    cdef bytes result
    if off_view.shape[0] % 8:
        raise ValueError("string offsets must be int64 values")
    if count <= 0:
        return b""
    if nulls is not None:
        null_view = nulls
        if null_view.shape[0] != count:
            raise ValueError(f"{null_view.shape[0]} null flags for {count} rows")
        null_ptr = &null_view[0]
    offs = <const int64_t*>&off_view[0]
    if offs[0] < 0 or offs[count] > data_view.shape[0]:
        raise ValueError("offsets do not match data")
    for i in range(count):
        if offs[i + 1] < offs[i]:
            raise ValueError("string offsets must not decrease")
    if data_view.shape[0]:
        data_ptr = &data_view[0]
    memset(&out, 0, sizeof(Buf))
    try:
        with nogil:
            rc = lc_encode(offs, count, data_ptr, null_ptr, &out)
        if rc < 0:
            raise MemoryError()
        result = PyBytes_FromStringAndSize(out.ptr, out.len)
    finally:
        buf_free(&out)
    return result
