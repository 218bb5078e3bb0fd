# SIMD byte scans (ext/scan.h): SSE2 on x86-64, a byte loop elsewhere; 8-digit SWAR.

from libc.stdint cimport uint64_t

cdef extern from "scan.h" nogil:
    Py_ssize_t scan_any3(const unsigned char* s, Py_ssize_t pos, Py_ssize_t end,
                         unsigned char a, unsigned char b, unsigned char c)
    Py_ssize_t scan_json_string(const unsigned char* s, Py_ssize_t pos, Py_ssize_t end)
    Py_ssize_t scan_non_ascii(const unsigned char* s, Py_ssize_t pos, Py_ssize_t end)
    uint64_t load8(const unsigned char* s)
    bint eight_digits(uint64_t v)
    uint64_t eight_digits_value(uint64_t v)
