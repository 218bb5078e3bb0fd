/* Byte scans for the parsers' hot loops: 16 bytes at a time with SSE2 (baseline on
 * x86-64), one byte at a time elsewhere. Each returns the first position in [pos, end)
 * holding a wanted byte, or end. s[0, end) must be readable: the last, short step
 * rereads the 16 bytes ending at end and ignores those before pos, so short fields and
 * tails take one SIMD step too. Nothing outside s[0, end) is read. */

#ifndef TINYINGEST_SCAN_H
#define TINYINGEST_SCAN_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__SSE2__)
#include <emmintrin.h>

/* The wanted bytes of 16 at s, as a bit mask. */
#define SCAN_LOOP(MASK_OF)                                                              \
    while (pos + 16 <= end) {                                                           \
        unsigned int mask = (unsigned int)_mm_movemask_epi8(                            \
            MASK_OF(_mm_loadu_si128((const __m128i *)(s + pos))));                      \
        if (mask)                                                                       \
            return pos + __builtin_ctz(mask);                                           \
        pos += 16;                                                                      \
    }                                                                                   \
    if (pos < end && end >= 16) {                                                       \
        unsigned int mask = (unsigned int)_mm_movemask_epi8(                            \
            MASK_OF(_mm_loadu_si128((const __m128i *)(s + end - 16))));                 \
        mask >>= pos - (end - 16);                                                      \
        return mask ? pos + __builtin_ctz(mask) : end;                                  \
    }
#endif

/* First byte equal to a, b or c (pass a twice for fewer). */
static inline Py_ssize_t scan_any3(const unsigned char *s, Py_ssize_t pos, Py_ssize_t end,
                                   unsigned char a, unsigned char b, unsigned char c)
{
#if defined(__SSE2__)
    const __m128i va = _mm_set1_epi8((char)a);
    const __m128i vb = _mm_set1_epi8((char)b);
    const __m128i vc = _mm_set1_epi8((char)c);
#define ANY3(x) _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(x, va), _mm_cmpeq_epi8(x, vb)), \
                             _mm_cmpeq_epi8(x, vc))
    SCAN_LOOP(ANY3)
#undef ANY3
#endif
    while (pos < end && s[pos] != a && s[pos] != b && s[pos] != c)
        pos++;
    return pos;
}

/* First byte that ends a JSON string's plain-ASCII run: '"', '\\', < 0x20 or >= 0x80. */
static inline Py_ssize_t scan_json_string(const unsigned char *s, Py_ssize_t pos,
                                          Py_ssize_t end)
{
#if defined(__SSE2__)
    const __m128i quote = _mm_set1_epi8('"');
    const __m128i backslash = _mm_set1_epi8('\\');
    const __m128i space = _mm_set1_epi8(0x20);
    /* Signed compare: bytes >= 0x80 are negative, so "< 0x20" catches them too. */
#define STOP(x) _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(x, quote), \
                                          _mm_cmpeq_epi8(x, backslash)), \
                             _mm_cmplt_epi8(x, space))
    SCAN_LOOP(STOP)
#undef STOP
#endif
    while (pos < end && s[pos] != '"' && s[pos] != '\\' && s[pos] >= 0x20 && s[pos] < 0x80)
        pos++;
    return pos;
}

/* First byte >= 0x80. Short texts (most values) take two overlapping 8-byte words. */
static inline Py_ssize_t scan_non_ascii(const unsigned char *s, Py_ssize_t pos, Py_ssize_t end)
{
    uint64_t head, tail;
#if defined(__SSE2__)
#define HIGH(x) (x)
    SCAN_LOOP(HIGH)
#undef HIGH
#endif
    if (end - pos >= 8 && end - pos <= 16) {
        memcpy(&head, s + pos, 8);
        memcpy(&tail, s + end - 8, 8);
        head &= 0x8080808080808080ULL;
        tail &= 0x8080808080808080ULL;
        /* Little-endian: the lowest set bit is the first high byte. The words overlap;
         * with head clear, tail's first set bit lies past head. */
        if (head)
            return pos + __builtin_ctzll(head) / 8;
        return tail ? end - 8 + __builtin_ctzll(tail) / 8 : end;
    }
    while (pos < end && s[pos] < 0x80)
        pos++;
    return pos;
}

/* Eight ASCII digits at a time (the extension is built for little-endian hosts only):
 * simdjson's is_made_of_eight_digits_fast and parse_eight_digits_unrolled. */
static inline uint64_t load8(const unsigned char *s)
{
    uint64_t v;
    memcpy(&v, s, 8);
    return v;
}

static inline int eight_digits(uint64_t v)
{
    return ((v & 0xF0F0F0F0F0F0F0F0ULL)
            | (((v + 0x0606060606060606ULL) & 0xF0F0F0F0F0F0F0F0ULL) >> 4))
           == 0x3333333333333333ULL;
}

static inline uint64_t eight_digits_value(uint64_t v)
{
    v -= 0x3030303030303030ULL;
    v = v * 10 + (v >> 8);
    return (((v & 0x000000FF000000FFULL) * 0x000F424000000064ULL)
            + (((v >> 16) & 0x000000FF000000FFULL) * 0x0000271000000001ULL)) >> 32;
}

#endif
