# cython: language_level=3
# tinyingest._encode: Native encoding in C for tinyingest.native (see tinyingest/_encode.pyi).
#
# Column buffers -> ClickHouse Native payloads: String payloads, Array offsets,
# LowCardinality dictionaries, and inserts sorted by the table's sorting key (sort.pxi).
# Each function but sort_columns has a pure-Python twin in tinyingest/native.py. Apart
# from the parsers (tinyingest._native) so that neither's code shapes the other's build.

from libc.string cimport memcmp, memcpy, memset
cimport cython
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from cpython.mem cimport PyMem_RawMalloc, PyMem_RawFree
from cpython.bytes cimport PyBytes_FromStringAndSize

from buffers cimport (Buf, buf_reserve, buf_append, buf_free, buf_take, put_varint,
                     read_varint, strings_native)

import sys

if sys.byteorder != "little":
    raise ImportError("tinyingest._encode writes little-endian values")

@cython.boundscheck(False)
@cython.wraparound(False)
def encode_strings(offsets, data):
    """(int64 offsets[n+1], data) -> Native String column: varint length + bytes per value."""
    cdef const unsigned char[::1] off_view = offsets
    cdef const unsigned char[::1] data_view = data
    cdef Py_ssize_t count = off_view.shape[0] // 8 - 1
    cdef const int64_t* offs
    cdef const unsigned char* data_ptr = NULL
    cdef int rc
    cdef Buf out
    memset(&out, 0, sizeof(Buf))
    if count <= 0:
        return b""
    offs = <const int64_t*>&off_view[0]
    if offs[count] > data_view.shape[0] or offs[0] != 0:
        raise ValueError("offsets do not match data")
    if data_view.shape[0]:
        data_ptr = &data_view[0]
    with nogil:
        rc = strings_native(offs, count, data_ptr, &out)
    return buf_take(&out, rc)


@cython.boundscheck(False)
@cython.wraparound(False)
def strings_end(data, Py_ssize_t count):
    """Where ``count`` Native String values (varint length + bytes) at the start of
    ``data`` end: how Map keys are split from the values when blocks are merged."""
    cdef const unsigned char[::1] view = data
    cdef Py_ssize_t n = view.shape[0]
    cdef Py_ssize_t pos = 0
    cdef Py_ssize_t i
    cdef uint64_t length
    cdef bint bad = False
    if count < 0:
        raise ValueError("count must be >= 0")
    if count == 0:
        return 0
    with nogil:
        for i in range(count):
            if read_varint(&view[0], n, &pos, &length) < 0 or length > <uint64_t>(n - pos):
                bad = True
                break
            pos += <Py_ssize_t>length
    if bad:
        raise ValueError(f"data does not hold {count} strings")
    return pos


@cython.boundscheck(False)
@cython.wraparound(False)
def split_strings(data, Py_ssize_t count):
    """``count`` Native String values (varint length + bytes) -> (int64 offsets, the
    concatenated bytes): the form the LowCardinality encoder takes (Array elements)."""
    cdef const unsigned char[::1] view = data
    cdef Py_ssize_t n = view.shape[0]
    cdef Py_ssize_t pos = 0
    cdef Py_ssize_t i
    cdef uint64_t length
    cdef bint bad = False
    cdef Buf offsets
    cdef Buf values
    cdef int64_t end = 0
    if count < 0:
        raise ValueError("count must be >= 0")
    memset(&offsets, 0, sizeof(Buf))
    memset(&values, 0, sizeof(Buf))
    try:
        with nogil:
            if buf_append(&offsets, <const char*>&end, 8) < 0 or \
                    buf_reserve(&offsets, 8 * count) < 0 or buf_reserve(&values, n) < 0:
                bad = True
            for i in range(count):
                if bad:
                    break
                if read_varint(&view[0], n, &pos, &length) < 0 or \
                        length > <uint64_t>(n - pos):
                    bad = True
                    break
                if length:
                    buf_append(&values, <const char*>&view[pos], <Py_ssize_t>length)
                end += <int64_t>length
                buf_append(&offsets, <const char*>&end, 8)
                pos += <Py_ssize_t>length
        if bad:
            raise ValueError(f"data does not hold {count} strings")
        return (PyBytes_FromStringAndSize(offsets.ptr, offsets.len),
                PyBytes_FromStringAndSize(values.ptr, values.len))
    finally:
        buf_free(&offsets)
        buf_free(&values)


@cython.boundscheck(False)
@cython.wraparound(False)
def shift_offsets(offsets, uint64_t base):
    """UInt64 values (native order) + ``base`` each: Array offsets of a later block."""
    cdef const unsigned char[::1] view = offsets
    cdef Py_ssize_t count = view.shape[0] // 8
    cdef Py_ssize_t i
    cdef uint64_t* out
    cdef bytes result
    if view.shape[0] % 8:
        raise ValueError("offsets must be UInt64 values")
    result = PyBytes_FromStringAndSize(NULL, view.shape[0])
    if count:
        out = <uint64_t*><char*>result
        memcpy(out, &view[0], <size_t>view.shape[0])
        with nogil:
            for i in range(count):
                out[i] += base
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
                  const unsigned char* data, Py_ssize_t value_width, Buf* out) noexcept nogil:
    # Header, dictionary, row count and indexes (see encode_low_cardinality_py). The
    # dictionary is a String payload, or with value_width > 0 fixed-width values.
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
    if buf_reserve(out, 32 + (t.count + base) * 10 + t.nbytes + base * value_width
                   + count * width) < 0:
        return -1
    put_u64(out, 1)  # keys version: SharedDictionariesWithAdditionalKeys
    put_u64(out, (1 << 9) | (1 << 10) | width_code)  # has additional keys, update dictionary
    put_u64(out, <uint64_t>(t.count + base))
    if base and value_width:
        memset(out.ptr + out.len, 0, <size_t>value_width)  # NULL: the zero value
        out.len += value_width
    elif base:
        put_varint(out, 0)  # position 0 stands for NULL; its value is ""
    for k in range(t.count):
        if not value_width:
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
                   const unsigned char* nulls, Py_ssize_t value_width, Buf* out) noexcept nogil:
    # The payload of encode_low_cardinality_py into out; -1 if out of memory. With
    # value_width > 0, offs is unused: value i is data[i * value_width:][:value_width]
    # (encode_low_cardinality_fixed_py).
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
            if value_width:
                position = lc_position(&t, data, i * value_width, value_width)
            else:
                position = lc_position(&t, data, offs[i], offs[i + 1] - offs[i])
            if position < 0:
                rc = -1
                break
            keys[i] = <uint64_t>(position + base)
        if rc == 0:
            rc = lc_write(&t, keys, count, base, data, value_width, out)
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
    with nogil:
        rc = lc_encode(offs, count, data_ptr, null_ptr, 0, &out)
    return buf_take(&out, rc)


@cython.boundscheck(False)
@cython.wraparound(False)
def encode_low_cardinality_fixed(values, Py_ssize_t width, nulls=None):
    """Native LowCardinality(T) payload for a fixed-width T (``width`` bytes a value), or
    LowCardinality(Nullable(T)) when ``nulls`` is given: the compiled twin of
    ``native.encode_low_cardinality_fixed_py``."""
    cdef const unsigned char[::1] view = values
    cdef const unsigned char[::1] null_view
    cdef const unsigned char* null_ptr = NULL
    cdef Py_ssize_t count
    cdef int rc
    cdef Buf out
    if width <= 0 or view.shape[0] % width:
        raise ValueError(f"{view.shape[0]} value bytes are not values of {width} bytes")
    count = view.shape[0] // width
    if count == 0:
        return b""
    if nulls is not None:
        null_view = nulls
        if null_view.shape[0] != count:
            raise ValueError(f"{null_view.shape[0]} null flags for {count} rows")
        null_ptr = &null_view[0]
    memset(&out, 0, sizeof(Buf))
    with nogil:
        rc = lc_encode(NULL, count, &view[0], null_ptr, width, &out)
    return buf_take(&out, rc)
include "sort.pxi"
