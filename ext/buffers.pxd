# Growable byte buffers owned by the parsers (PyMem_Raw*: usable without the GIL).

from cpython.mem cimport PyMem_RawRealloc, PyMem_RawFree
from libc.string cimport memcpy

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

cdef inline int buf_append(Buf* buf, const char* src, Py_ssize_t n) noexcept nogil:
    if buf.len + n > buf.cap and buf_reserve(buf, n) < 0:
        return -1
    if n:
        memcpy(buf.ptr + buf.len, src, <size_t>n)
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
