# SIMD byte scans (ext/scan.h): SSE2 on x86-64, a byte loop elsewhere.

cdef extern from "scan.h" nogil:
    Py_ssize_t scan_any3(const unsigned char* s, Py_ssize_t pos, Py_ssize_t end,
                         unsigned char a, unsigned char b, unsigned char c)
    Py_ssize_t scan_json_string(const unsigned char* s, Py_ssize_t pos, Py_ssize_t end)
    Py_ssize_t scan_non_ascii(const unsigned char* s, Py_ssize_t pos, Py_ssize_t end)
