# Growable byte buffers owned by the parsers (PyMem_Raw*: usable without the GIL).

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_RawRealloc, PyMem_RawFree
from libc.string cimport memcpy
from libc.stdint cimport int64_t, uint32_t, uint64_t

cdef struct Buf:
    char* ptr          # owned; NULL until the first reserve
    Py_ssize_t len     # bytes in use
    Py_ssize_t cap     # bytes allocated

cdef inline int buf_reserve(Buf* buf, Py_ssize_t extra) noexcept nogil:
    # Returns -1 when out of memory; the buffer is unchanged then.
    cdef Py_ssize_t need = buf.len + extra
    cdef Py_ssize_t cap
    cdef char* ptr
    if need <= buf.cap:
        return 0
    cap = buf.cap * 2 if buf.cap else 256
    while cap < need:
        cap *= 2
    ptr = <char*>PyMem_RawRealloc(buf.ptr, <size_t>cap)
    if ptr == NULL:
        return -1
    buf.ptr = ptr
    buf.cap = cap
    return 0

cdef inline void copy_bytes(char* dst, const char* src, Py_ssize_t n) noexcept nogil:
    # memcpy, with the short copies most values are done inline: two overlapping word
    # moves instead of a call.
    cdef uint64_t head8, tail8
    cdef uint32_t head4, tail4
    if n > 16:
        memcpy(dst, src, <size_t>n)
    elif n >= 8:
        memcpy(&head8, src, 8)
        memcpy(&tail8, src + n - 8, 8)
        memcpy(dst, &head8, 8)
        memcpy(dst + n - 8, &tail8, 8)
    elif n >= 4:
        memcpy(&head4, src, 4)
        memcpy(&tail4, src + n - 4, 4)
        memcpy(dst, &head4, 4)
        memcpy(dst + n - 4, &tail4, 4)
    else:
        while n > 0:
            n -= 1
            dst[n] = src[n]

cdef inline int buf_append(Buf* buf, const char* src, Py_ssize_t n) noexcept nogil:
    if buf.len + n > buf.cap and buf_reserve(buf, n) < 0:
        return -1
    copy_bytes(buf.ptr + buf.len, src, n)
    buf.len += n
    return 0

cdef inline int buf_append_byte(Buf* buf, char byte) noexcept nogil:
    if buf.len + 1 > buf.cap and buf_reserve(buf, 1) < 0:
        return -1
    buf.ptr[buf.len] = byte
    buf.len += 1
    return 0

cdef inline void buf_free(Buf* buf) noexcept nogil:
    PyMem_RawFree(buf.ptr)
    buf.ptr = NULL
    buf.len = 0
    buf.cap = 0

cdef inline bytes buf_take(Buf* buf, int rc):
    # What a nogil encoder built in ``buf``, as bytes; ``buf`` is freed either way.
    # ``rc`` < 0: the encoder ran out of memory.
    try:
        if rc < 0:
            raise MemoryError()
        return PyBytes_FromStringAndSize(buf.ptr, buf.len)
    finally:
        buf_free(buf)

cdef inline void put_varint(Buf* out, uint64_t value) noexcept nogil:
    # LEB128, as Native writes lengths; the caller has reserved 10 bytes.
    while value >= 0x80:
        out.ptr[out.len] = <char>((value & 0x7F) | 0x80)
        out.len += 1
        value >>= 7
    out.ptr[out.len] = <char>value
    out.len += 1


cdef inline int read_varint(const unsigned char* p, Py_ssize_t n, Py_ssize_t* pos,
                            uint64_t* out) noexcept nogil:
    # The varint at p[pos[0]:n] into out, pos advanced past it; -1 if it does not end.
    cdef uint64_t value = 0
    cdef int shift = 0
    cdef unsigned char byte
    while True:
        if pos[0] >= n or shift > 63:
            return -1
        byte = p[pos[0]]
        pos[0] += 1
        value |= <uint64_t>(byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            out[0] = value
            return 0


cdef inline int strings_native(const int64_t* offs, Py_ssize_t count, const unsigned char* data,
                        Buf* out) noexcept nogil:
    # (offsets[count + 1], data) -> varint length + bytes per value, appended to out.
    cdef Py_ssize_t i, start, length
    if count <= 0:
        return 0
    if buf_reserve(out, offs[count] - offs[0] + count * 10) < 0:
        return -1
    for i in range(count):
        start = offs[i]
        length = offs[i + 1] - start
        put_varint(out, <uint64_t>length)
        if length:
            memcpy(out.ptr + out.len, data + start, <size_t>length)
            out.len += length
    return 0
