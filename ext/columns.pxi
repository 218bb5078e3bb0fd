# Column builders and text -> value converters (mirror of _pyparser.convert_text).
#
# Every converter takes the value's text (a CSV field, a JSON string's content, a JSON
# number or true/false as written) and appends the value to one column, or returns an
# ErrorCode without touching the column. All run without the GIL and never raise.
# Values are written in the host's byte order: the extension is only built for
# little-endian hosts, ClickHouse's Native byte order (checked in _native.pyx).

from libc.stdint cimport int64_t, uint64_t, int8_t, int16_t, int32_t, uint8_t, uint16_t, uint32_t
from libc.stdlib cimport strtod
cimport cython

cdef extern from *:
    # GCC/Clang's 128-bit integer, for the 256-bit limb arithmetic.
    ctypedef unsigned long long uint128_t "unsigned __int128"
from libc.math cimport isinf
from libc.string cimport memcmp, memset
from cpython.mem cimport PyMem_RawMalloc

cdef struct Column:
    int code            # TypeCode
    int width           # bytes per value in Native; 0 for String
    bint nullable       # keeps a null map
    Buf values          # fixed-width values, or the concatenated string bytes
    Buf offsets         # String only: int64 end offsets, one per row after the leading 0
    Buf nulls           # Nullable only: 1 byte per row, 1 = NULL
    bint has_default    # a literal DEFAULT was declared
    Buf default_value   # that DEFAULT, already converted (value bytes)
    uint64_t omit_bit   # an expression DEFAULT: its bit in the row's omitted mask; else 0
    Py_ssize_t length   # FixedString(N): N (its values are held like String's)
    Buf enum_names      # Enum8/16: the names' bytes, concatenated
    Buf enum_entries    # Enum8/16: EnumEntry array
    Py_ssize_t enum_count
    int scale           # DateTime64(p): p; Decimal(P, S): S
    # Date/DateTime text: the last valid YYYY-MM-DD seen and its day number (values in a
    # stream mostly share their date, so its parse and days_from_civil are skipped).
    bint date_cached
    char date_text[10]
    int date_year
    int date_month
    int date_day
    int64_t date_days
    # Date/DateTime: the last text converted and its value (at high rates many values
    # repeat the previous one's second).
    bint memo_valid
    Py_ssize_t memo_len
    char memo_text[32]
    char memo_value[8]
    int precision       # Decimal(P, S): P
    # Array(T) / Array(Array(T)): values, offsets and nulls above hold the elements.
    int depth           # 1 or 2 for an Array column; 0 otherwise
    Buf ends[2]         # per level, UInt64 array end offsets (ends[0]: one per row)
    # Map(String, V): depth 1, values/offsets/nulls hold the values, keys the keys as
    # a Native String payload (varint length + bytes each).
    bint is_map
    Buf keys
    Py_ssize_t marks[6] # values, offsets, nulls, ends[0], ends[1], keys lengths at the row's start
                        # (a Tuple: marks[0] is the values each element held then)
    # Tuple(...): one column per element (each one value per row); a named Tuple's
    # element names are in enum_names / enum_entries (value: the element's index).
    Column* elems       # owned (PyMem_Malloc), nelems of them
    int nelems
    # DateTime('Zone') / DateTime64(p, 'Zone'): the zone's (wall_from, offset) int64
    # pairs (tinyingest.timezones.wall_clock_shifts); empty for UTC.
    Buf zone_shifts


cdef struct EnumEntry:
    Py_ssize_t off      # the name, in enum_names
    Py_ssize_t len
    int value


cdef inline bint is_digit(unsigned char c) noexcept nogil:
    return b'0' <= c <= b'9'


cdef inline int col_push_null_flag(Column* col, char flag) noexcept nogil:
    if col.nullable:
        return buf_append_byte(&col.nulls, flag)
    return 0


cdef inline int col_end_string(Column* col) noexcept nogil:
    cdef int64_t end = col.values.len
    return buf_append(&col.offsets, <const char*>&end, 8)


cdef int col_append_value(Column* col, const char* value, Py_ssize_t n, char null_flag) noexcept nogil:
    # Append an already converted value (fixed width) or string bytes.
    if buf_append(&col.values, value, n) < 0:
        return ERR_NO_MEMORY
    if col.width == 0 and col_end_string(col) < 0:
        return ERR_NO_MEMORY
    if col_push_null_flag(col, null_flag) < 0:
        return ERR_NO_MEMORY
    return ERR_NONE


cdef inline int col_append_fixed(Column* col, const void* value, Py_ssize_t width) noexcept nogil:
    # A converted fixed-width value (not NULL), inline in the hot converters: with the
    # width known at the call site the copy is one store, not a call to memcpy.
    cdef char* dst
    if col.values.len + width > col.values.cap and buf_reserve(&col.values, width) < 0:
        return ERR_NO_MEMORY
    dst = col.values.ptr + col.values.len
    if width == 8:
        memcpy(dst, value, 8)
    elif width == 4:
        memcpy(dst, value, 4)
    elif width == 2:
        memcpy(dst, value, 2)
    else:
        memcpy(dst, value, <size_t>width)
    col.values.len += width
    if col.nullable and buf_append_byte(&col.nulls, 0) < 0:
        return ERR_NO_MEMORY
    return ERR_NONE


cdef int col_append_zero(Column* col, char null_flag) noexcept nogil:
    # The type's zero: width zero bytes; FixedString(N): N zero bytes; String: ''.
    cdef char zeros[32]
    memset(zeros, 0, 32)
    if col.code == TYPE_FIXED_STRING:
        if buf_reserve(&col.values, col.length) < 0:
            return ERR_NO_MEMORY
        memset(col.values.ptr + col.values.len, 0, <size_t>col.length)
        col.values.len += col.length
        if col_end_string(col) < 0 or col_push_null_flag(col, null_flag) < 0:
            return ERR_NO_MEMORY
        return ERR_NONE
    return col_append_value(col, zeros, col.width, null_flag)


cdef int col_append_missing(Column* col) noexcept nogil:
    # A scalar column without a value: its literal DEFAULT, NULL, or the zero standing
    # for an expression DEFAULT (ClickHouse computes it); else ERR_MISSING (col untouched).
    if col.has_default:
        return col_append_value(col, col.default_value.ptr, col.default_value.len, 0)
    if col.nullable or col.omit_bit:
        return col_append_zero(col, 1 if col.nullable else 0)
    return ERR_MISSING


cdef inline void col_mark_row(Column* col) noexcept nogil:
    # Array columns: where this row starts, for col_undo_row.
    col.marks[0] = col.values.len
    col.marks[1] = col.offsets.len
    col.marks[2] = col.nulls.len
    col.marks[3] = col.ends[0].len
    col.marks[4] = col.ends[1].len
    col.marks[5] = col.keys.len


cdef inline Py_ssize_t col_children(Column* col, int level) noexcept nogil:
    # Array columns: how many items level `level` holds (arrays, or elements).
    if level < col.depth:
        return col.ends[level].len // 8
    if col.nullable:
        return col.nulls.len
    if col.width == 0:
        return col.offsets.len // 8 - 1
    return col.values.len // col.width


cdef int col_append_key(Column* col, const char* key, Py_ssize_t n) noexcept nogil:
    # Map columns: one key, as varint length + bytes.
    cdef uint64_t v = <uint64_t>n
    if buf_reserve(&col.keys, n + 10) < 0:
        return ERR_NO_MEMORY
    while v >= 0x80:
        col.keys.ptr[col.keys.len] = <char>((v & 0x7F) | 0x80)
        col.keys.len += 1
        v >>= 7
    col.keys.ptr[col.keys.len] = <char>v
    col.keys.len += 1
    if n:
        memcpy(col.keys.ptr + col.keys.len, key, <size_t>n)
        col.keys.len += n
    return ERR_NONE


cdef inline int col_end_array(Column* col, int level) noexcept nogil:
    cdef uint64_t end = <uint64_t>col_children(col, level + 1)
    if buf_append(&col.ends[level], <const char*>&end, 8) < 0:
        return ERR_NO_MEMORY
    return ERR_NONE


cdef void col_undo_row(Column* col) noexcept nogil:
    # Drop the last appended row (a later column of the same row failed).
    cdef int k
    if col.nelems:
        for k in range(col.nelems):
            if col_children(&col.elems[k], 0) > col.marks[0]:
                col_undo_row(&col.elems[k])
        return
    if col.depth:
        col.values.len = col.marks[0]
        col.offsets.len = col.marks[1]
        col.nulls.len = col.marks[2]
        col.ends[0].len = col.marks[3]
        col.ends[1].len = col.marks[4]
        col.keys.len = col.marks[5]
        return
    if col.width:
        col.values.len -= col.width
    else:
        col.offsets.len -= 8
        col.values.len = (<int64_t*>col.offsets.ptr)[col.offsets.len // 8 - 1]
    if col.nullable:
        col.nulls.len -= 1


cdef Py_ssize_t utf8_sequence(const unsigned char* s, Py_ssize_t pos, Py_ssize_t end) noexcept nogil:
    # Length of the valid UTF-8 sequence starting with a non-ASCII byte at pos, or 0.
    # Same acceptance as Python's strict decoder: no overlongs, no surrogates, <= U+10FFFF.
    cdef unsigned char c = s[pos]
    cdef unsigned char lo = 0x80
    cdef unsigned char hi = 0xBF
    cdef Py_ssize_t n, i
    if 0xC2 <= c <= 0xDF:
        n = 2
    elif 0xE0 <= c <= 0xEF:
        n = 3
        if c == 0xE0:
            lo = 0xA0
        elif c == 0xED:
            hi = 0x9F
    elif 0xF0 <= c <= 0xF4:
        n = 4
        if c == 0xF0:
            lo = 0x90
        elif c == 0xF4:
            hi = 0x8F
    else:
        return 0
    if pos + n > end:
        return 0
    if not (lo <= s[pos + 1] <= hi):
        return 0
    for i in range(2, n):
        if not (0x80 <= s[pos + i] <= 0xBF):
            return 0
    return n


cdef bint utf8_valid(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t pos = 0
    cdef Py_ssize_t step
    while pos < n:
        if s[pos] < 0x80:
            pos = scan_non_ascii(s, pos + 1, n)  # ASCII runs 16 bytes at a time
            continue
        step = utf8_sequence(s, pos, n)
        if step == 0:
            return False
        pos += step
    return True


cdef int int_from_text(Column* col, const unsigned char* s, Py_ssize_t n) noexcept nogil:
    cdef bint negative = False
    cdef Py_ssize_t pos = 0
    cdef uint64_t magnitude = 0
    cdef uint64_t limit
    cdef bint overflow = False
    cdef int code = col.code
    cdef int64_t sval
    cdef uint64_t uval
    cdef unsigned int digit
    cdef int8_t v8
    cdef int16_t v16
    cdef int32_t v32
    if n == 4 and s[0] == b't' and s[1] == b'r' and s[2] == b'u' and s[3] == b'e':
        magnitude = 1
    elif n == 5 and s[0] == b'f' and s[1] == b'a' and s[2] == b'l' and s[3] == b's' and s[4] == b'e':
        magnitude = 0
    else:
        if n and (s[0] == b'+' or s[0] == b'-'):
            negative = s[0] == b'-'
            pos = 1
        if pos == n:
            return ERR_BAD_VALUE
        if n - pos <= 19:  # fits in uint64: no overflow check per digit
            while n - pos >= 8 and eight_digits(load8(s + pos)):
                magnitude = magnitude * 100000000 + eight_digits_value(load8(s + pos))
                pos += 8
            while pos < n:
                if not is_digit(s[pos]):
                    return ERR_BAD_VALUE
                magnitude = magnitude * 10 + (s[pos] - 48)
                pos += 1
        while pos < n:
            if not is_digit(s[pos]):
                return ERR_BAD_VALUE
            digit = s[pos] - 48
            if magnitude > (<uint64_t>0xFFFFFFFFFFFFFFFF - digit) // 10:
                overflow = True  # keep scanning: a later non-digit is BAD_VALUE
            else:
                magnitude = magnitude * 10 + digit
            pos += 1
        if overflow:
            return ERR_OUT_OF_RANGE
    if code >= TYPE_UINT8:  # unsigned
        if negative and magnitude != 0:
            return ERR_OUT_OF_RANGE
        limit = 0xFF if code == TYPE_UINT8 else 0xFFFF if code == TYPE_UINT16 else \
            0xFFFFFFFF if code == TYPE_UINT32 else <uint64_t>0xFFFFFFFFFFFFFFFF
        if magnitude > limit:
            return ERR_OUT_OF_RANGE
        uval = magnitude
        return col_append_fixed(col, &uval, col.width)
    limit = 0x7F if code == TYPE_INT8 else 0x7FFF if code == TYPE_INT16 else \
        0x7FFFFFFF if code == TYPE_INT32 else <uint64_t>0x7FFFFFFFFFFFFFFF
    if magnitude > limit + (1 if negative else 0):
        return ERR_OUT_OF_RANGE
    if negative:
        sval = -(<int64_t>(magnitude - 1)) - 1
    else:
        sval = <int64_t>magnitude
    # Little-endian: the low bytes of the int64 are the narrower value.
    return col_append_fixed(col, &sval, col.width)


cdef bint is_float_text(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t pos = 0
    cdef Py_ssize_t int_digits = 0
    cdef Py_ssize_t frac_digits = 0
    cdef Py_ssize_t exp_digits = 0
    if n and (s[0] == b'+' or s[0] == b'-'):
        pos = 1
    while pos < n and is_digit(s[pos]):
        pos += 1
        int_digits += 1
    if pos < n and s[pos] == b'.':
        pos += 1
        while pos < n and is_digit(s[pos]):
            pos += 1
            frac_digits += 1
    if int_digits + frac_digits == 0:
        return False
    if pos < n and (s[pos] == b'e' or s[pos] == b'E'):
        pos += 1
        if pos < n and (s[pos] == b'+' or s[pos] == b'-'):
            pos += 1
        while pos < n and is_digit(s[pos]):
            pos += 1
            exp_digits += 1
        if exp_digits == 0:
            return False
    return pos == n


cdef double[23] EXACT_POW10 = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
                            1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22]


cdef inline bint fast_decimal(const unsigned char* s, Py_ssize_t n, double* out) noexcept nogil:
    # Clinger's fast path for text already checked by is_float_text: when the digits
    # make an integer m <= 2**53 and the decimal exponent e is within [-22, 22], m and
    # 10**|e| are exact doubles and one IEEE multiply/divide rounds correctly, exactly
    # as strtod (and Python's float()) would. Returns False to leave it to strtod.
    cdef Py_ssize_t pos = 0
    cdef uint64_t mantissa = 0
    cdef int digits = 0          # significant digits in mantissa
    cdef int exp10 = 0
    cdef int exp_part = 0
    cdef bint exp_negative = False
    cdef bint negative = False
    cdef unsigned char c
    cdef double value
    if s[0] == b'+' or s[0] == b'-':
        negative = s[0] == b'-'
        pos = 1
    while pos < n:
        c = s[pos]
        if not is_digit(c):
            break
        if mantissa or c != b'0':
            if digits == 19:
                return False
            mantissa = mantissa * 10 + (c - 48)
            digits += 1
        pos += 1
    if pos < n and s[pos] == b'.':
        pos += 1
        while pos < n:
            c = s[pos]
            if not is_digit(c):
                break
            if mantissa or c != b'0':
                if digits == 19:
                    return False
                mantissa = mantissa * 10 + (c - 48)
                digits += 1
            exp10 -= 1
            pos += 1
    if pos < n:  # an exponent (the grammar was checked)
        pos += 1
        if s[pos] == b'+' or s[pos] == b'-':
            exp_negative = s[pos] == b'-'
            pos += 1
        while pos < n:
            if exp_part > 1000:
                return False
            exp_part = exp_part * 10 + (s[pos] - 48)
            pos += 1
        exp10 += -exp_part if exp_negative else exp_part
    if mantissa > (<uint64_t>1 << 53):
        return False
    value = <double>mantissa
    if mantissa == 0:
        pass
    elif 0 <= exp10 <= 22:
        value = value * EXACT_POW10[exp10]
    elif -22 <= exp10 < 0:
        value = value / EXACT_POW10[-exp10]
    else:
        return False
    out[0] = -value if negative else value
    return True


cdef inline bint plain_decimal(const unsigned char* s, Py_ssize_t n, double* out) noexcept nogil:
    # The common case in one pass: [+-]digits[.digits], at most 19 bytes after the sign
    # (so the digits fit in a uint64), making m <= 2**53 with k <= 18 fraction digits:
    # m / 10**k rounds exactly as strtod (see fast_decimal). False for anything else,
    # valid or not: the caller then checks the grammar and takes the general path.
    cdef Py_ssize_t pos = 0
    cdef Py_ssize_t start, dot
    cdef int fraction = 0
    cdef uint64_t mantissa = 0
    cdef bint negative = False
    cdef double value
    if n and (s[0] == b'+' or s[0] == b'-'):
        negative = s[0] == b'-'
        pos = 1
    start = pos
    if n - start > 19:
        return False
    while pos < n and is_digit(s[pos]):
        mantissa = mantissa * 10 + (s[pos] - 48)
        pos += 1
    dot = pos
    if pos < n and s[pos] == b'.':
        pos += 1
        while pos < n and is_digit(s[pos]):
            mantissa = mantissa * 10 + (s[pos] - 48)
            pos += 1
        if pos < n or pos - start == 1:
            return False  # an exponent or another byte, or a lone '.'
        fraction = <int>(pos - dot - 1)
    elif pos < n or pos == start:
        return False  # an exponent or another byte, or no digit
    if mantissa > (<uint64_t>1 << 53):
        return False
    value = <double>mantissa
    if fraction:
        value = value / EXACT_POW10[fraction]
    out[0] = -value if negative else value
    return True


cdef int float_from_text(Column* col, const unsigned char* s, Py_ssize_t n) noexcept nogil:
    cdef char local[128]
    cdef char* text = local
    cdef double value
    cdef float narrow
    cdef int rc
    if plain_decimal(s, n, &value):
        return float_store(col, value)
    if not is_float_text(s, n):
        return ERR_BAD_VALUE
    if fast_decimal(s, n, &value):
        return float_store(col, value)
    # strtod needs a NUL-terminated copy; the grammar check above keeps it to decimals.
    if n >= 128:
        text = <char*>PyMem_RawMalloc(<size_t>n + 1)
        if text == NULL:
            return ERR_NO_MEMORY
    memcpy(text, s, <size_t>n)
    text[n] = 0
    value = strtod(text, NULL)
    if text != local:
        PyMem_RawFree(text)
    return float_store(col, value)


cdef inline int float_store(Column* col, double value) noexcept nogil:
    cdef float narrow
    if isinf(value):
        return ERR_OUT_OF_RANGE
    if col.code == TYPE_FLOAT32:
        narrow = <float>value
        if isinf(narrow):
            return ERR_OUT_OF_RANGE
        return col_append_fixed(col, &narrow, 4)
    return col_append_fixed(col, &value, 8)


@cython.cdivision(True)
cdef inline int64_t days_from_civil(int64_t year, int64_t month, int64_t day) noexcept nogil:
    # Howard Hinnant's algorithm; floor division done by hand for negative years.
    cdef int64_t era, yoe, doy, doe
    if month <= 2:
        year -= 1
    era = (year if year >= 0 else year - 399) // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


cdef inline int days_in_month(int64_t year, int64_t month) noexcept nogil:
    if month == 2:
        return 29 if (year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)) else 28
    if month == 4 or month == 6 or month == 9 or month == 11:
        return 30
    return 31


cdef inline int digits_at(const unsigned char* s, Py_ssize_t n, Py_ssize_t pos, int count) noexcept nogil:
    # The number in s[pos:pos+count], or -1 if those are not all digits.
    cdef int value = 0
    cdef int i
    if pos + count > n:
        return -1
    for i in range(count):
        if not is_digit(s[pos + i]):
            return -1
        value = value * 10 + (s[pos + i] - 48)
    return value


cdef inline int64_t wall_to_utc(const Column* col, int64_t wall) noexcept nogil:
    # Epoch seconds of a wall-clock time in the column's zone: the last shift whose
    # wall_from <= wall gives the offset (timezones.wall_to_utc, a binary search).
    cdef const int64_t* shifts = <const int64_t*>col.zone_shifts.ptr
    cdef Py_ssize_t lo = 0
    cdef Py_ssize_t hi = col.zone_shifts.len // 16   # pairs; shifts[0] is the earliest
    cdef Py_ssize_t mid
    if hi == 0:
        return wall
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if shifts[2 * mid] <= wall:
            lo = mid
        else:
            hi = mid
    return wall - shifts[2 * lo + 1]


cdef enum:
    DT64_MIN_SECONDS = -2208988800LL    # 1900-01-01 00:00:00 (_pyparser._DT64_MIN)
    DT64_MAX_SECONDS = 10413791999LL    # 2299-12-31 23:59:59

cdef int64_t[10] POW10_I64 = [1, 10, 100, 1000, 10000, 100000, 1000000, 10000000,
                              100000000, 1000000000]


cdef int dt64_append(Column* col, int64_t seconds, const unsigned char* fraction,
                     Py_ssize_t fraction_len, int millis) noexcept nogil:
    # Int64 ticks: seconds * 10**p + the first p fraction digits (after the three digits
    # of `millis` when it is >= 0: an epoch number in milliseconds).
    cdef int p = col.scale
    cdef int64_t sub = 0
    cdef int taken = 0
    cdef int64_t ticks
    cdef Py_ssize_t i = 0
    if seconds < DT64_MIN_SECONDS or seconds > DT64_MAX_SECONDS:
        return ERR_OUT_OF_RANGE
    if millis >= 0:
        while taken < p and taken < 3:
            sub = sub * 10 + (millis // (100 if taken == 0 else 10 if taken == 1 else 1)) % 10
            taken += 1
    while taken < p and i < fraction_len:
        sub = sub * 10 + (fraction[i] - 48)
        taken += 1
        i += 1
    while taken < p:
        sub *= 10
        taken += 1
    if seconds > 0 and seconds > (0x7FFFFFFFFFFFFFFFLL - sub) // POW10_I64[p]:
        return ERR_OUT_OF_RANGE
    ticks = seconds * POW10_I64[p] + sub
    return col_append_value(col, <const char*>&ticks, 8, 0)


@cython.cdivision(True)
cdef int datetime_from_text(Column* col, const unsigned char* s, Py_ssize_t n) noexcept nogil:
    # Accepted forms: see _pyparser._parse_datetime.
    cdef bint date32 = col.code == TYPE_DATE32
    cdef bint date_only = col.code == TYPE_DATE or date32
    cdef bint dt64 = col.code == TYPE_DATETIME64
    cdef const unsigned char* fraction = NULL
    cdef Py_ssize_t fraction_len = 0
    cdef int32_t day32
    cdef Py_ssize_t pos
    cdef int64_t whole = 0
    cdef int64_t seconds, days
    cdef int year, month, day, hour = 0, minute = 0, second = 0
    cdef int off_h, off_m, sign
    cdef int64_t offset = 0
    cdef bint zoned = False     # Z or an offset was written
    cdef uint16_t day_value
    cdef uint32_t second_value
    cdef Py_ssize_t start
    if n and is_digit(s[0]) and (n < 5 or s[4] != b'-'):
        # Epoch seconds, or milliseconds from 1e11 on; a fraction is truncated.
        if not is_float_text(s, n):
            return ERR_BAD_VALUE
        for pos in range(n):
            if s[pos] == b'e' or s[pos] == b'E':
                return ERR_BAD_VALUE
        pos = 0
        while pos < n and is_digit(s[pos]):
            if whole > 100000000000000000LL:
                return ERR_OUT_OF_RANGE
            whole = whole * 10 + (s[pos] - 48)
            pos += 1
        seconds = whole // 1000 if whole >= 100000000000LL else whole
        if dt64:
            if pos < n:  # the '.'
                fraction = s + pos + 1
                fraction_len = n - pos - 1
            return dt64_append(col, seconds, fraction, fraction_len,
                               <int>(whole % 1000) if whole >= 100000000000LL else -1)
        if seconds > 0xFFFFFFFFLL:
            return ERR_OUT_OF_RANGE
        if date32:
            day32 = <int32_t>(seconds // 86400)
            return col_append_value(col, <const char*>&day32, 4, 0)
        if date_only:
            day_value = <uint16_t>(seconds // 86400)
            return col_append_value(col, <const char*>&day_value, 2, 0)
        second_value = <uint32_t>seconds
        return col_append_value(col, <const char*>&second_value, 4, 0)
    if col.date_cached and n >= 10 and memcmp(s, col.date_text, 10) == 0:
        year = col.date_year
        month = col.date_month
        day = col.date_day
        days = col.date_days
    else:
        year = digits_at(s, n, 0, 4)
        if year < 0 or n < 10 or s[4] != b'-' or s[7] != b'-':
            return ERR_BAD_VALUE
        month = digits_at(s, n, 5, 2)
        day = digits_at(s, n, 8, 2)
        if month < 1 or month > 12 or day < 1 or day > days_in_month(year, month):
            return ERR_BAD_VALUE
        days = days_from_civil(year, month, day)
        memcpy(col.date_text, s, 10)
        col.date_year = year
        col.date_month = month
        col.date_day = day
        col.date_days = days
        col.date_cached = True
    pos = 10
    if pos < n:
        if s[pos] != b'T' and s[pos] != b' ':
            return ERR_BAD_VALUE
        hour = digits_at(s, n, pos + 1, 2)
        if hour < 0 or pos + 3 >= n or s[pos + 3] != b':':
            return ERR_BAD_VALUE
        minute = digits_at(s, n, pos + 4, 2)
        if minute < 0:
            return ERR_BAD_VALUE
        pos += 6
        if pos < n and s[pos] == b':':
            second = digits_at(s, n, pos + 1, 2)
            if second < 0:
                return ERR_BAD_VALUE
            pos += 3
            if pos < n and s[pos] == b'.':
                pos += 1
                start = pos
                while pos < n and is_digit(s[pos]):
                    pos += 1
                if pos == start:
                    return ERR_BAD_VALUE
                fraction = s + start
                fraction_len = pos - start
        if hour > 23 or minute > 59 or second > 59:
            return ERR_BAD_VALUE
        if pos < n and s[pos] == b'Z':
            zoned = True
            pos += 1
        elif pos < n and (s[pos] == b'+' or s[pos] == b'-'):
            zoned = True
            sign = -1 if s[pos] == b'-' else 1
            off_h = digits_at(s, n, pos + 1, 2)
            if off_h < 0:
                return ERR_BAD_VALUE
            pos += 3
            off_m = 0
            if pos < n and s[pos] == b':':
                off_m = digits_at(s, n, pos + 1, 2)
                pos += 3
            elif pos < n:
                off_m = digits_at(s, n, pos, 2)
                pos += 2
            if off_m < 0 or off_h > 23 or off_m > 59:
                return ERR_BAD_VALUE
            offset = sign * (off_h * 3600 + off_m * 60)
        if pos != n:
            return ERR_BAD_VALUE
    if date32:
        if days < DATE32_MIN or days > DATE32_MAX:
            return ERR_OUT_OF_RANGE
        day32 = <int32_t>days
        return col_append_value(col, <const char*>&day32, 4, 0)
    if date_only:
        if days < 0 or days > 0xFFFF:
            return ERR_OUT_OF_RANGE
        day_value = <uint16_t>days
        return col_append_value(col, <const char*>&day_value, 2, 0)
    seconds = days * 86400 + hour * 3600 + minute * 60 + second
    seconds = seconds - offset if zoned else wall_to_utc(col, seconds)
    if dt64:
        return dt64_append(col, seconds, fraction, fraction_len, -1)
    if seconds < 0 or seconds > 0xFFFFFFFFLL:
        return ERR_OUT_OF_RANGE
    second_value = <uint32_t>seconds
    return col_append_fixed(col, &second_value, 4)


cdef enum:
    DATE32_MIN = -25567     # 1900-01-01, ClickHouse's Date32 range (_pyparser._DATE32_MIN)
    DATE32_MAX = 120529     # 2299-12-31


cdef int bool_from_text(Column* col, const unsigned char* s, Py_ssize_t n) noexcept nogil:
    cdef char value
    if (n == 4 and memcmp(s, b"true", 4) == 0) or (n == 1 and s[0] == b'1'):
        value = 1
    elif (n == 5 and memcmp(s, b"false", 5) == 0) or (n == 1 and s[0] == b'0'):
        value = 0
    else:
        return ERR_BAD_VALUE
    return col_append_value(col, &value, 1, 0)


cdef int uuid_from_text(Column* col, const unsigned char* s, Py_ssize_t n) noexcept nogil:
    # 8-4-4-4-12 hex -> two little-endian UInt64 halves, high half first (ClickHouse's UUID).
    cdef uint64_t halves[2]
    cdef Py_ssize_t pos
    cdef int digits = 0
    cdef unsigned int digit
    if n != 36 or s[8] != b'-' or s[13] != b'-' or s[18] != b'-' or s[23] != b'-':
        return ERR_BAD_VALUE
    halves[0] = 0
    halves[1] = 0
    for pos in range(36):
        if pos == 8 or pos == 13 or pos == 18 or pos == 23:
            continue
        digit = hex_digit(s[pos])
        if digit > 15:
            return ERR_BAD_VALUE
        halves[digits >> 4] = (halves[digits >> 4] << 4) | digit
        digits += 1
    return col_append_value(col, <const char*>halves, 16, 0)


cdef int ipv4_from_text(Column* col, const unsigned char* s, Py_ssize_t n) noexcept nogil:
    cdef uint32_t value
    if not ipv4_value(s, n, &value):
        return ERR_BAD_VALUE
    return col_append_value(col, <const char*>&value, 4, 0)


cdef bint ipv4_value(const unsigned char* s, Py_ssize_t n, uint32_t* out) noexcept nogil:
    # Dotted quad, 1-3 digits per part, each <= 255 -> UInt32.
    cdef uint32_t value = 0
    cdef unsigned int part
    cdef int parts = 0
    cdef int digits
    cdef Py_ssize_t pos = 0
    while True:
        part = 0
        digits = 0
        while pos < n and is_digit(s[pos]):
            if digits == 3:
                return False
            part = part * 10 + (s[pos] - 48)
            digits += 1
            pos += 1
        if digits == 0 or part > 255:
            return False
        value = (value << 8) | part
        parts += 1
        if parts == 4:
            break
        if pos >= n or s[pos] != b'.':
            return False
        pos += 1
    if pos != n:
        return False
    out[0] = value
    return True


# --- 256-bit integers: four little-endian uint64 limbs --------------------------------

cdef inline bint u256_mul10_add(uint64_t* v, unsigned int digit) noexcept nogil:
    # v = v * 10 + digit; True if the result does not fit in 256 bits.
    cdef uint128_t t
    cdef uint64_t carry = digit
    cdef int i
    for i in range(4):
        t = <uint128_t>v[i] * 10 + carry
        v[i] = <uint64_t>t
        carry = <uint64_t>(t >> 64)
    return carry != 0


cdef inline void u256_negate(uint64_t* v) noexcept nogil:
    # Two's complement, in place.
    cdef int i
    cdef uint64_t carry = 1
    for i in range(4):
        v[i] = ~v[i] + carry
        carry = 1 if (carry and v[i] == 0) else 0


cdef int bigint_from_text(Column* col, const unsigned char* s, Py_ssize_t n) noexcept nogil:
    # Int128/UInt128/Int256/UInt256: as int_from_text, 16 or 32 little-endian bytes.
    cdef uint64_t v[4]
    cdef Py_ssize_t pos = 0
    cdef Py_ssize_t i
    cdef bint negative = False
    cdef int code = col.code
    cdef bint signed_type = code == TYPE_INT128 or code == TYPE_INT256
    cdef int top = 1 if code == TYPE_INT128 or code == TYPE_UINT128 else 3  # highest limb
    memset(v, 0, sizeof(v))
    if n == 4 and memcmp(s, b"true", 4) == 0:
        v[0] = 1
        return col_append_value(col, <const char*>v, col.width, 0)
    if n == 5 and memcmp(s, b"false", 5) == 0:
        return col_append_value(col, <const char*>v, col.width, 0)
    if n and (s[0] == b'+' or s[0] == b'-'):
        negative = s[0] == b'-'
        pos = 1
    if pos == n:
        return ERR_BAD_VALUE
    for i in range(pos, n):
        if not is_digit(s[i]):
            return ERR_BAD_VALUE
    while pos < n:
        if u256_mul10_add(v, s[pos] - 48):
            return ERR_OUT_OF_RANGE
        pos += 1
    if top == 1 and (v[2] or v[3]):
        return ERR_OUT_OF_RANGE
    if not signed_type:
        if negative and (v[0] or v[1] or v[2] or v[3]):
            return ERR_OUT_OF_RANGE
    elif v[top] >> 63:
        # Only -2**(bits-1) itself may have the top bit set.
        if not negative or v[top] != (<uint64_t>1 << 63):
            return ERR_OUT_OF_RANGE
        for i in range(top):
            if v[i]:
                return ERR_OUT_OF_RANGE
    if negative:
        u256_negate(v)
    return col_append_value(col, <const char*>v, col.width, 0)


cdef int decimal_from_text(Column* col, const unsigned char* s, Py_ssize_t n) noexcept nogil:
    # See _pyparser._parse_decimal: exact or refused, never rounded.
    cdef uint64_t v[4]
    cdef Py_ssize_t pos = 0
    cdef Py_ssize_t whole_start, whole_end, frac_start, frac_end, i
    cdef Py_ssize_t kept, total, leading = 0
    cdef bint negative = False
    cdef bint nonzero = False
    cdef int scale = col.scale
    memset(v, 0, sizeof(v))
    if n and (s[0] == b'+' or s[0] == b'-'):
        negative = s[0] == b'-'
        pos = 1
    whole_start = pos
    while pos < n and is_digit(s[pos]):
        pos += 1
    whole_end = pos
    frac_start = frac_end = pos
    if pos < n and s[pos] == b'.':
        pos += 1
        frac_start = pos
        while pos < n and is_digit(s[pos]):
            pos += 1
        frac_end = pos
    if pos != n or (whole_end == whole_start and frac_end == frac_start):
        return ERR_BAD_VALUE
    kept = frac_end - frac_start
    if kept > scale:
        for i in range(frac_start + scale, frac_end):
            if s[i] != b'0':
                return ERR_OUT_OF_RANGE
        kept = scale
    # The scaled integer's digits: whole, kept fraction digits, then zeros up to scale.
    total = (whole_end - whole_start) + scale
    for i in range(whole_start, whole_end):
        if s[i] != b'0':
            nonzero = True
            break
        leading += 1
    if not nonzero:
        for i in range(frac_start, frac_start + kept):
            if s[i] != b'0':
                nonzero = True
                break
            leading += 1
    if not nonzero:
        leading = total
    if total - leading > col.precision:
        return ERR_OUT_OF_RANGE
    for i in range(whole_start, whole_end):
        u256_mul10_add(v, s[i] - 48)
    for i in range(frac_start, frac_start + kept):
        u256_mul10_add(v, s[i] - 48)
    for i in range(scale - kept):
        u256_mul10_add(v, 0)
    if negative:
        u256_negate(v)
    return col_append_value(col, <const char*>v, col.width, 0)


cdef int hex_group(const unsigned char* s, Py_ssize_t start, Py_ssize_t end) noexcept nogil:
    # 1-4 hex digits -> value, or -1.
    cdef int value = 0
    cdef unsigned int digit
    cdef Py_ssize_t i
    if end - start < 1 or end - start > 4:
        return -1
    for i in range(start, end):
        digit = hex_digit(s[i])
        if digit > 15:
            return -1
        value = (value << 4) | <int>digit
    return value


cdef int ipv6_side(const unsigned char* s, Py_ssize_t start, Py_ssize_t end, bint last_side,
                   uint16_t* words, int* count) noexcept nogil:
    # The ':'-separated groups of s[start:end] (none if empty) -> words; -1 if malformed.
    cdef Py_ssize_t item = start
    cdef Py_ssize_t stop, i
    cdef bint dotted
    cdef int value
    cdef uint32_t quad
    if start == end:
        return 0
    while True:
        stop = item
        while stop < end and s[stop] != b':':
            stop += 1
        dotted = False
        for i in range(item, stop):
            if s[i] == b'.':
                dotted = True
        if dotted and last_side and stop == end:
            if count[0] > 6 or not ipv4_value(s + item, stop - item, &quad):
                return -1
            words[count[0]] = <uint16_t>(quad >> 16)
            words[count[0] + 1] = <uint16_t>(quad & 0xFFFF)
            count[0] += 2
        else:
            value = hex_group(s, item, stop)
            if value < 0 or count[0] > 7:
                return -1
            words[count[0]] = <uint16_t>value
            count[0] += 1
        if stop == end:
            return 0
        item = stop + 1


cdef int ipv6_from_text(Column* col, const unsigned char* s, Py_ssize_t n) noexcept nogil:
    # See _pyparser._parse_ipv6: 16 bytes in network order.
    cdef uint16_t head[8]
    cdef uint16_t tail[8]
    cdef int nhead = 0, ntail = 0
    cdef Py_ssize_t gap = -1
    cdef Py_ssize_t i
    cdef unsigned char out[16]
    cdef uint32_t quad
    cdef bint has_colon = False
    for i in range(n):
        if s[i] == b':':
            has_colon = True
            if gap < 0 and i + 1 < n and s[i + 1] == b':':
                gap = i
    memset(out, 0, 16)
    if not has_colon:
        if not ipv4_value(s, n, &quad):
            return ERR_BAD_VALUE
        out[10] = 0xFF
        out[11] = 0xFF
        out[12] = <unsigned char>(quad >> 24)
        out[13] = <unsigned char>(quad >> 16)
        out[14] = <unsigned char>(quad >> 8)
        out[15] = <unsigned char>quad
        return col_append_value(col, <const char*>out, 16, 0)
    if gap < 0:
        if ipv6_side(s, 0, n, True, head, &nhead) < 0 or nhead != 8:
            return ERR_BAD_VALUE
    else:
        for i in range(gap + 2, n - 1):
            if s[i] == b':' and s[i + 1] == b':':
                return ERR_BAD_VALUE
        if ipv6_side(s, 0, gap, False, head, &nhead) < 0 or \
                ipv6_side(s, gap + 2, n, True, tail, &ntail) < 0 or nhead + ntail > 7:
            return ERR_BAD_VALUE
    for i in range(nhead):
        out[2 * i] = <unsigned char>(head[i] >> 8)
        out[2 * i + 1] = <unsigned char>head[i]
    for i in range(ntail):
        out[16 - 2 * ntail + 2 * i] = <unsigned char>(tail[i] >> 8)
        out[16 - 2 * ntail + 2 * i + 1] = <unsigned char>tail[i]
    return col_append_value(col, <const char*>out, 16, 0)


cdef int enum_from_text(Column* col, const unsigned char* s, Py_ssize_t n) noexcept nogil:
    # A value's name, exactly, else its number as [+-]digits (1-6 digits).
    cdef EnumEntry* entries = <EnumEntry*>col.enum_entries.ptr
    cdef Py_ssize_t k
    cdef Py_ssize_t pos = 0
    cdef int number = 0
    cdef bint negative = False
    cdef int8_t v8
    cdef int16_t v16
    cdef int found = -1
    for k in range(col.enum_count):
        if entries[k].len == n and (n == 0 or memcmp(col.enum_names.ptr + entries[k].off, s,
                                                     <size_t>n) == 0):
            found = <int>k
            break
    if found < 0:
        if n and (s[0] == b'+' or s[0] == b'-'):
            negative = s[0] == b'-'
            pos = 1
        if pos == n or n - pos > 6:
            return ERR_BAD_VALUE
        while pos < n:
            if not is_digit(s[pos]):
                return ERR_BAD_VALUE
            number = number * 10 + (s[pos] - 48)
            pos += 1
        if negative:
            number = -number
        for k in range(col.enum_count):
            if entries[k].value == number:
                found = <int>k
                break
        if found < 0:
            return ERR_BAD_VALUE
    if col.code == TYPE_ENUM8:
        v8 = <int8_t>entries[found].value
        return col_append_value(col, <const char*>&v8, 1, 0)
    v16 = <int16_t>entries[found].value
    return col_append_value(col, <const char*>&v16, 2, 0)


cdef int fixed_string_from_text(Column* col, const unsigned char* s, Py_ssize_t n,
                                bint check_utf8) noexcept nogil:
    # At most N bytes of UTF-8, padded with NUL bytes to N.
    if check_utf8 and not utf8_valid(s, n):
        return ERR_INVALID_UTF8
    if n > col.length:
        return ERR_OUT_OF_RANGE
    if buf_reserve(&col.values, col.length) < 0:
        return ERR_NO_MEMORY
    if n:
        memcpy(col.values.ptr + col.values.len, s, <size_t>n)
    memset(col.values.ptr + col.values.len + n, 0, <size_t>(col.length - n))
    col.values.len += col.length
    if col_end_string(col) < 0 or col_push_null_flag(col, 0) < 0:
        return ERR_NO_MEMORY
    return ERR_NONE


cdef inline int datetime_memo(Column* col, const unsigned char* s, Py_ssize_t n) noexcept nogil:
    # datetime_from_text, remembering the last text and the value it gave (width <= 4).
    cdef int rc
    if col.memo_valid and n == col.memo_len and memcmp(s, col.memo_text, <size_t>n) == 0:
        return col_append_fixed(col, col.memo_value, col.width)
    rc = datetime_from_text(col, s, n)
    if rc == ERR_NONE and n <= 32:
        memcpy(col.memo_text, s, <size_t>n)
        col.memo_len = n
        memcpy(col.memo_value, col.values.ptr + col.values.len - col.width, <size_t>col.width)
        col.memo_valid = True
    return rc


cdef inline int convert_text(Column* col, const unsigned char* s, Py_ssize_t n,
                             bint check_utf8) noexcept nogil:
    # Text -> one value appended to col, or an ErrorCode (col untouched).
    cdef int code = col.code
    if code == TYPE_STRING:
        if check_utf8 and not utf8_valid(s, n):
            return ERR_INVALID_UTF8
        return col_append_value(col, <const char*>s, n, 0)
    if code <= TYPE_UINT64:
        return int_from_text(col, s, n)
    if code == TYPE_FLOAT32 or code == TYPE_FLOAT64:
        return float_from_text(col, s, n)
    if code == TYPE_DATE or code == TYPE_DATETIME or code == TYPE_DATE32:
        return datetime_memo(col, s, n)
    if code == TYPE_BOOL:
        return bool_from_text(col, s, n)
    if code == TYPE_UUID:
        return uuid_from_text(col, s, n)
    if code == TYPE_FIXED_STRING:
        return fixed_string_from_text(col, s, n, check_utf8)
    if code == TYPE_ENUM8 or code == TYPE_ENUM16:
        return enum_from_text(col, s, n)
    if code == TYPE_IPV4:
        return ipv4_from_text(col, s, n)
    if code == TYPE_DATETIME64:
        return datetime_from_text(col, s, n)
    if TYPE_INT128 <= code <= TYPE_UINT256:
        return bigint_from_text(col, s, n)
    if TYPE_DECIMAL32 <= code <= TYPE_DECIMAL256:
        return decimal_from_text(col, s, n)
    if code == TYPE_IPV6:
        return ipv6_from_text(col, s, n)
    return ERR_BAD_VALUE
