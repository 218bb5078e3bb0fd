/* Byte scans for the parsers' hot loops: 16 bytes at a time with SSE2 (baseline on
 * x86-64), one byte at a time elsewhere. Each returns the first position in [pos, end)
 * holding a wanted byte, or end; only bytes inside [pos, end) are read. */

#ifndef TINYINGEST_SCAN_H
#define TINYINGEST_SCAN_H

#include <stddef.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#define TINYINGEST_SSE2 1
#endif

/* First byte equal to a, b or c (pass a twice for fewer). */
static inline Py_ssize_t scan_any3(const unsigned char *s, Py_ssize_t pos, Py_ssize_t end,
                                   unsigned char a, unsigned char b, unsigned char c)
{
#ifdef TINYINGEST_SSE2
    const __m128i va = _mm_set1_epi8((char)a);
    const __m128i vb = _mm_set1_epi8((char)b);
    const __m128i vc = _mm_set1_epi8((char)c);
    while (pos + 16 <= end) {
        __m128i x = _mm_loadu_si128((const __m128i *)(s + pos));
        int mask = _mm_movemask_epi8(_mm_or_si128(
            _mm_or_si128(_mm_cmpeq_epi8(x, va), _mm_cmpeq_epi8(x, vb)), _mm_cmpeq_epi8(x, vc)));
        if (mask)
            return pos + __builtin_ctz((unsigned int)mask);
        pos += 16;
    }
#endif
    while (pos < end && s[pos] != a && s[pos] != b && s[pos] != c)
        pos++;
    return pos;
}

/* First byte that ends a JSON string's plain-ASCII run: '"', '\\', < 0x20 or >= 0x80. */
static inline Py_ssize_t scan_json_string(const unsigned char *s, Py_ssize_t pos,
                                          Py_ssize_t end)
{
#ifdef TINYINGEST_SSE2
    const __m128i quote = _mm_set1_epi8('"');
    const __m128i backslash = _mm_set1_epi8('\\');
    const __m128i space = _mm_set1_epi8(0x20);
    while (pos + 16 <= end) {
        __m128i x = _mm_loadu_si128((const __m128i *)(s + pos));
        /* Signed compare: bytes >= 0x80 are negative, so "< 0x20" catches them too. */
        int mask = _mm_movemask_epi8(_mm_or_si128(
            _mm_or_si128(_mm_cmpeq_epi8(x, quote), _mm_cmpeq_epi8(x, backslash)),
            _mm_cmplt_epi8(x, space)));
        if (mask)
            return pos + __builtin_ctz((unsigned int)mask);
        pos += 16;
    }
#endif
    while (pos < end && s[pos] != '"' && s[pos] != '\\' && s[pos] >= 0x20 && s[pos] < 0x80)
        pos++;
    return pos;
}

/* First byte >= 0x80. */
static inline Py_ssize_t scan_non_ascii(const unsigned char *s, Py_ssize_t pos, Py_ssize_t end)
{
#ifdef TINYINGEST_SSE2
    while (pos + 16 <= end) {
        int mask = _mm_movemask_epi8(_mm_loadu_si128((const __m128i *)(s + pos)));
        if (mask)
            return pos + __builtin_ctz((unsigned int)mask);
        pos += 16;
    }
#endif
    while (pos < end && s[pos] < 0x80)
        pos++;
    return pos;
}

#endif
