# Inserts sorted by the table's sorting key before they are sent.
#
# A MergeTree sorts every inserted block by its sorting key unless the block is sorted
# already; on 18.16 that sort is most of the insert's CPU (1M events rows: 0.50 s of
# server CPU unsorted, 0.18 s sorted). A batch merged from many requests is not sorted,
# so sort_columns reorders its Native payloads here, where a radix sort of packed keys
# costs little. Only an optimization: a batch it cannot sort (a key over 64 bits, a
# Nullable or 128-bit key, an Array(Array), Map or Tuple column) is sent as it is, and
# ClickHouse checks the order anyway (a block out of order is sorted by the server).

cdef enum:
    LAYOUT_FIXED = 0     # fixed-width values (numbers, dates, FixedString(N), UUID, ...)
    LAYOUT_STRING = 1    # Native String payload (varint length + bytes)
    LAYOUT_LC = 2        # LowCardinality(T): T a String (width 0) or fixed width
    LAYOUT_ARRAY = 3     # Array(T), T one of the above: LAYOUT_ARRAY + T's layout

cdef enum:
    ORDER_UNSIGNED = 0   # little-endian unsigned integer of the column's width
    ORDER_SIGNED = 1
    ORDER_FLOAT = 2
    ORDER_BYTES = 3      # memcmp, then the shorter first (String, FixedString)


cdef struct FlatColumn:
    # One column of the batch, readable row by row.
    int layout
    Py_ssize_t width                # fixed width; 0 for strings
    bint nullable
    const unsigned char* nulls      # one flag a row, or NULL
    const unsigned char* values     # fixed width: row i at values + i * width
    const unsigned char* base       # strings: row i is base[off[i]:off[i] + len[i]]
    int64_t* off
    int64_t* len
    Buf owned_values                # LowCardinality of fixed width: values materialized
    Buf owned_nulls                 # LowCardinality(Nullable): flags materialized
    const unsigned char* ends       # Array: the rows' UInt64 end offsets (unaligned)
    FlatColumn* elements            # Array: the elements, a column of their own


cdef inline int read_u64(const unsigned char* p, Py_ssize_t n, Py_ssize_t* pos,
                         uint64_t* out) noexcept nogil:
    if pos[0] + 8 > n:
        return -1
    memcpy(out, p + pos[0], 8)
    pos[0] += 8
    return 0


cdef int flat_strings(FlatColumn* col, const unsigned char* p, Py_ssize_t n,
                      Py_ssize_t rows) noexcept nogil:
    # rows Native Strings filling p[0:n] exactly.
    cdef Py_ssize_t pos = 0
    cdef Py_ssize_t i
    cdef uint64_t length
    for i in range(rows):
        if read_varint(p, n, &pos, &length) < 0 or length > <uint64_t>(n - pos):
            return -1
        col.off[i] = pos
        col.len[i] = <int64_t>length
        pos += <Py_ssize_t>length
    col.base = p
    return 0 if pos == n else -1


cdef int flat_low_cardinality(FlatColumn* col, const unsigned char* p, Py_ssize_t n,
                              Py_ssize_t rows, bint nullable, bint prefixed) noexcept nogil:
    # The state prefix (unless an Array's, which precedes the offsets), then granules as
    # our encoders and clickhouse-driver write them (each with its own dictionary: flags
    # HasAdditionalKeys | NeedUpdateDictionary).
    cdef Py_ssize_t pos = 0
    cdef Py_ssize_t done = 0
    cdef Py_ssize_t i, entry_pos
    cdef uint64_t version, kind, size, count, key, length
    cdef int key_width
    cdef Buf entries            # int64 (off, len) of each dictionary entry
    cdef int64_t* ent
    cdef int rc = -1
    memset(&entries, 0, sizeof(Buf))
    if prefixed and (read_u64(p, n, &pos, &version) < 0 or version != 1):
        return -1
    if buf_reserve(&col.owned_nulls, rows) < 0 or \
            (col.width and buf_reserve(&col.owned_values, rows * col.width) < 0):
        return -1
    while done < rows:
        if read_u64(p, n, &pos, &kind) < 0 or (kind >> 8) != 0x6 or (kind & 0xFF) > 3:
            break
        key_width = 1 << <int>(kind & 0xFF)
        if read_u64(p, n, &pos, &size) < 0 or size > <uint64_t>n:
            break
        entries.len = 0
        if buf_reserve(&entries, <Py_ssize_t>size * 16) < 0:
            break
        ent = <int64_t*>entries.ptr
        for i in range(<Py_ssize_t>size):
            if col.width:
                entry_pos = pos + i * col.width
                length = <uint64_t>col.width
            elif read_varint(p, n, &pos, &length) < 0 or length > <uint64_t>(n - pos):
                break
            else:
                entry_pos = pos
                pos += <Py_ssize_t>length
            ent[2 * i] = entry_pos
            ent[2 * i + 1] = <int64_t>length
        else:
            if col.width:
                pos += <Py_ssize_t>size * col.width
            if pos > n or read_u64(p, n, &pos, &count) < 0 or \
                    count > <uint64_t>(rows - done) or \
                    pos + <Py_ssize_t>count * key_width > n:
                break
            for i in range(<Py_ssize_t>count):
                key = 0
                memcpy(&key, p + pos + i * key_width, key_width)
                if key >= size:
                    break
                col.owned_nulls.ptr[done + i] = 1 if nullable and key == 0 else 0
                if col.width:
                    memcpy(col.owned_values.ptr + (done + i) * col.width, p + ent[2 * key],
                           col.width)
                else:
                    col.off[done + i] = ent[2 * key]
                    col.len[done + i] = ent[2 * key + 1]
            else:
                pos += <Py_ssize_t>count * key_width
                done += <Py_ssize_t>count
                continue
        break   # a malformed granule
    if done == rows and pos == n:
        rc = 0
        col.base = p
        col.values = <const unsigned char*>col.owned_values.ptr
        col.nulls = <const unsigned char*>col.owned_nulls.ptr if nullable else NULL
    buf_free(&entries)
    return rc


cdef inline uint64_t fixed_key(const unsigned char* v, Py_ssize_t width, int order) noexcept nogil:
    # The value as an unsigned number that orders as ClickHouse compares the type.
    cdef uint64_t bits = 0
    cdef uint64_t sign
    memcpy(&bits, v, width)
    sign = (<uint64_t>1) << (8 * width - 1)
    if order == ORDER_SIGNED:
        return bits ^ sign
    if order == ORDER_FLOAT:
        if bits == sign:    # -0.0 equals 0.0 (and keeps its place: the sort is stable)
            bits = 0
        if bits & sign:
            return (~bits) & (sign | (sign - 1))
        return bits | sign
    return bits


cdef inline int bytes_order(const unsigned char* a, int64_t na, const unsigned char* b,
                            int64_t nb) noexcept nogil:
    cdef int c = memcmp(a, b, <size_t>(na if na < nb else nb)) if na and nb else 0
    if c:
        return c
    return -1 if na < nb else (1 if na > nb else 0)


cdef void sort_entries(LCEntry* ent, Py_ssize_t count, const unsigned char* base,
                       Py_ssize_t* order, Py_ssize_t* tmp) noexcept nogil:
    # Bottom-up merge sort of entry numbers by their bytes.
    cdef Py_ssize_t width = 1
    cdef Py_ssize_t lo, mid, hi, i, j, k
    cdef Py_ssize_t* src = order
    cdef Py_ssize_t* dst = tmp
    cdef Py_ssize_t* swap
    while width < count:
        lo = 0
        while lo < count:
            mid = min(lo + width, count)
            hi = min(lo + 2 * width, count)
            i, j, k = lo, mid, lo
            while i < mid and j < hi:
                if bytes_order(base + ent[src[j]].off, ent[src[j]].len,
                               base + ent[src[i]].off, ent[src[i]].len) < 0:
                    dst[k] = src[j]
                    j += 1
                else:
                    dst[k] = src[i]
                    i += 1
                k += 1
            while i < mid:
                dst[k] = src[i]
                i += 1
                k += 1
            while j < hi:
                dst[k] = src[j]
                j += 1
                k += 1
            lo = hi
        swap = src
        src = dst
        dst = swap
        width *= 2
    if src != order:
        memcpy(order, src, <size_t>count * sizeof(Py_ssize_t))


cdef int bytes_ranks(FlatColumn* col, Py_ssize_t rows, uint64_t* out,
                     int* bits) noexcept nogil:
    # Each row's rank among the column's distinct values (0 = smallest).
    cdef LCTable t
    cdef Py_ssize_t i, position, count
    cdef Py_ssize_t* order = NULL
    cdef Py_ssize_t* tmp = NULL
    cdef uint64_t* rank = NULL
    cdef const unsigned char* base = col.values if col.width else col.base
    cdef int rc = -1
    memset(&t, 0, sizeof(LCTable))
    t.mask = 255
    t.slots = <Py_ssize_t*>PyMem_RawMalloc(<size_t>(t.mask + 1) * sizeof(Py_ssize_t))
    if t.slots == NULL:
        return -1
    memset(t.slots, 0, <size_t>(t.mask + 1) * sizeof(Py_ssize_t))
    for i in range(rows):
        if col.width:
            position = lc_position(&t, base, i * col.width, col.width)
        else:
            position = lc_position(&t, base, col.off[i], col.len[i])
        if position < 0:
            break
        out[i] = <uint64_t>position
    else:
        count = t.count
        order = <Py_ssize_t*>PyMem_RawMalloc(<size_t>count * sizeof(Py_ssize_t) + 1)
        tmp = <Py_ssize_t*>PyMem_RawMalloc(<size_t>count * sizeof(Py_ssize_t) + 1)
        rank = <uint64_t*>PyMem_RawMalloc(<size_t>count * sizeof(uint64_t) + 1)
        if order != NULL and tmp != NULL and rank != NULL:
            for i in range(count):
                order[i] = i
            sort_entries(<LCEntry*>t.entries.ptr, count, base, order, tmp)
            for i in range(count):
                rank[order[i]] = <uint64_t>i
            for i in range(rows):
                out[i] = rank[out[i]]
            bits[0] = 0
            while bits[0] < 64 and ((<uint64_t>count - 1) >> bits[0]):
                bits[0] += 1
            rc = 0
    PyMem_RawFree(order)
    PyMem_RawFree(tmp)
    PyMem_RawFree(rank)
    PyMem_RawFree(t.slots)
    buf_free(&t.entries)
    return rc


cdef int radix_sort(uint64_t* keys, uint32_t* perm, Py_ssize_t rows,
                    int total_bits) noexcept nogil:
    # LSD radix sort of (key, row) by key, 8 bits a pass (stable); perm gets the rows.
    cdef uint64_t* keys2 = <uint64_t*>PyMem_RawMalloc(<size_t>rows * 8 + 8)
    cdef uint32_t* perm2 = <uint32_t*>PyMem_RawMalloc(<size_t>rows * 4 + 4)
    cdef Py_ssize_t counts[256]
    cdef Py_ssize_t i, total, c
    cdef int shift = 0
    cdef unsigned int digit
    cdef uint64_t* ks
    cdef uint32_t* ps
    if keys2 == NULL or perm2 == NULL:
        PyMem_RawFree(keys2)
        PyMem_RawFree(perm2)
        return -1
    for i in range(rows):
        perm[i] = <uint32_t>i
    while shift < total_bits:
        memset(counts, 0, sizeof(counts))
        for i in range(rows):
            counts[(keys[i] >> shift) & 0xFF] += 1
        if counts[(keys[0] >> shift) & 0xFF] != rows:   # else every row has this digit
            total = 0
            for digit in range(256):
                c = counts[digit]
                counts[digit] = total
                total += c
            for i in range(rows):
                digit = (keys[i] >> shift) & 0xFF
                keys2[counts[digit]] = keys[i]
                perm2[counts[digit]] = perm[i]
                counts[digit] += 1
            memcpy(keys, keys2, <size_t>rows * 8)
            memcpy(perm, perm2, <size_t>rows * 4)
        shift += 8
    PyMem_RawFree(keys2)
    PyMem_RawFree(perm2)
    return 0


cdef int gather(FlatColumn* col, const uint32_t* perm, Py_ssize_t rows,
                Buf* out) noexcept nogil:
    # The column's payload with its rows in perm's order.
    cdef Py_ssize_t i, r
    cdef Buf offsets
    cdef Buf data
    cdef Buf nulls
    cdef int64_t end = 0
    cdef int rc
    if col.layout == LAYOUT_FIXED:
        if buf_reserve(out, rows * (col.width + 1)) < 0:
            return -1
        if col.nulls != NULL:
            for i in range(rows):
                out.ptr[i] = col.nulls[perm[i]]
            out.len = rows
        for i in range(rows):
            memcpy(out.ptr + out.len + i * col.width, col.values + perm[i] * col.width,
                   col.width)
        out.len += rows * col.width
        return 0
    if col.layout == LAYOUT_STRING:
        if buf_reserve(out, rows) < 0:
            return -1
        if col.nulls != NULL:
            for i in range(rows):
                out.ptr[i] = col.nulls[perm[i]]
            out.len = rows
        for i in range(rows):
            r = perm[i]
            if buf_reserve(out, 10 + col.len[r]) < 0:
                return -1
            put_varint(out, <uint64_t>col.len[r])
            memcpy(out.ptr + out.len, col.base + col.off[r], <size_t>col.len[r])
            out.len += col.len[r]
        return 0
    if col.elements != NULL:
        return gather_arrays(col, perm, rows, out)
    # LowCardinality: the rows in order, encoded again as one granule.
    memset(&offsets, 0, sizeof(Buf))
    memset(&data, 0, sizeof(Buf))
    memset(&nulls, 0, sizeof(Buf))
    rc = -1
    if buf_reserve(&nulls, rows) == 0 and buf_reserve(&offsets, (rows + 1) * 8) == 0:
        for i in range(rows):
            nulls.ptr[i] = col.nulls[perm[i]] if col.nulls != NULL else 0
        if col.width:
            if buf_reserve(&data, rows * col.width) == 0:
                for i in range(rows):
                    memcpy(data.ptr + i * col.width, col.values + perm[i] * col.width,
                           col.width)
                rc = lc_encode(NULL, rows, <const unsigned char*>data.ptr,
                               <const unsigned char*>nulls.ptr if col.nulls != NULL else NULL,
                               col.width, out)
        else:
            (<int64_t*>offsets.ptr)[0] = 0
            rc = 0
            for i in range(rows):
                r = perm[i]
                if buf_append(&data, <const char*>col.base + col.off[r], col.len[r]) < 0:
                    rc = -1
                    break
                end += col.len[r]
                (<int64_t*>offsets.ptr)[i + 1] = end
            if rc == 0:
                rc = lc_encode(<const int64_t*>offsets.ptr, rows,
                               <const unsigned char*>data.ptr,
                               <const unsigned char*>nulls.ptr if col.nulls != NULL else NULL,
                               0, out)
    buf_free(&offsets)
    buf_free(&data)
    buf_free(&nulls)
    return rc


@cython.boundscheck(False)
@cython.wraparound(False)
def sort_columns(layouts, keys, payloads, Py_ssize_t rows):
    """``payloads`` (one Native payload a column, ``rows`` rows) reordered by the key
    columns, or None when they are in order already or cannot be sorted here.

    :param layouts: per column ``(layout, width, nullable)``: ``LAYOUT_*`` (0 fixed
        width, 1 String, 2 LowCardinality), the value width (0 for strings).
    :param keys: the sorting key, most significant first: ``(column, order)`` with
        ``order`` an ``ORDER_*`` (0 unsigned, 1 signed, 2 float, 3 bytes).
    """
    cdef Py_ssize_t ncols = len(layouts)
    cdef Py_ssize_t nkeys = len(keys)
    cdef FlatColumn* cols
    cdef uint64_t* packed = NULL
    cdef uint64_t* part = NULL
    cdef uint32_t* perm = NULL
    cdef const unsigned char** ptrs
    cdef Py_ssize_t* sizes
    cdef Py_ssize_t i, k, c
    cdef int order, bits, total_bits = 0
    cdef uint64_t lo, hi, v
    cdef bint ok = True
    cdef bint in_order = True
    cdef Buf out
    cdef list views = [memoryview(p).cast("B") for p in payloads]
    cdef const unsigned char[::1] view
    if rows < 2 or rows > 0xFFFFFFFF or nkeys == 0 or len(payloads) != ncols:
        return None
    cols = <FlatColumn*>PyMem_RawMalloc(<size_t>ncols * sizeof(FlatColumn))
    ptrs = <const unsigned char**>PyMem_RawMalloc(<size_t>ncols * sizeof(void*))
    sizes = <Py_ssize_t*>PyMem_RawMalloc(<size_t>ncols * sizeof(Py_ssize_t))
    if cols == NULL or ptrs == NULL or sizes == NULL:
        PyMem_RawFree(cols)
        PyMem_RawFree(ptrs)
        PyMem_RawFree(sizes)
        raise MemoryError()
    memset(cols, 0, <size_t>ncols * sizeof(FlatColumn))
    for c in range(ncols):
        layout, width, nullable = layouts[c]
        cols[c].layout = layout
        cols[c].width = width
        view = views[c]
        sizes[c] = view.shape[0]
        ptrs[c] = &view[0] if view.shape[0] else <const unsigned char*>b""
        cols[c].nullable = nullable
    key_columns = [int(column) for column, _ in keys]
    key_orders = [int(o) for _, o in keys]
    try:
        with nogil:
            for c in range(ncols):
                if not ok:
                    break
                ok = flat_column(&cols[c], ptrs[c], sizes[c], rows)
            packed = <uint64_t*>PyMem_RawMalloc(<size_t>rows * 8)
            part = <uint64_t*>PyMem_RawMalloc(<size_t>rows * 8)
            ok = ok and packed != NULL and part != NULL
            if ok:
                memset(packed, 0, <size_t>rows * 8)
        for k in range(nkeys):
            if not ok:
                break
            c = key_columns[k]
            order = key_orders[k]
            with nogil:
                if cols[c].nullable or cols[c].layout >= LAYOUT_ARRAY:
                    ok = False
                elif order == ORDER_BYTES:
                    ok = bytes_ranks(&cols[c], rows, part, &bits) == 0
                elif cols[c].width not in (1, 2, 4, 8):
                    ok = False
                else:
                    lo = 0xFFFFFFFFFFFFFFFFULL
                    hi = 0
                    for i in range(rows):
                        v = fixed_key(cols[c].values + i * cols[c].width, cols[c].width,
                                      order)
                        part[i] = v
                        lo = v if v < lo else lo
                        hi = v if v > hi else hi
                    for i in range(rows):
                        part[i] -= lo
                    bits = 0
                    while bits < 64 and ((hi - lo) >> bits):
                        bits += 1
                if ok:
                    total_bits += bits
                    ok = total_bits <= 64
                if ok and bits == 64:
                    memcpy(packed, part, <size_t>rows * 8)   # the only key part
                elif ok and bits:
                    for i in range(rows):
                        packed[i] = (packed[i] << bits) | part[i]
        if ok:
            with nogil:
                for i in range(1, rows):
                    if packed[i] < packed[i - 1]:
                        in_order = False
                        break
                if not in_order:
                    perm = <uint32_t*>PyMem_RawMalloc(<size_t>rows * 4)
                    ok = perm != NULL and radix_sort(packed, perm, rows, total_bits) == 0
        if not ok or in_order:
            return None
        result = []
        for c in range(ncols):
            memset(&out, 0, sizeof(Buf))
            try:
                with nogil:
                    ok = gather(&cols[c], perm, rows, &out) == 0
                if not ok:
                    raise MemoryError()
                result.append(PyBytes_FromStringAndSize(out.ptr, out.len))
            finally:
                buf_free(&out)
        return result
    finally:
        for c in range(ncols):
            free_flat(&cols[c])
        PyMem_RawFree(cols)
        PyMem_RawFree(ptrs)
        PyMem_RawFree(sizes)
        PyMem_RawFree(packed)
        PyMem_RawFree(part)
        PyMem_RawFree(perm)


cdef inline uint64_t array_end(const FlatColumn* col, Py_ssize_t row) noexcept nogil:
    cdef uint64_t end
    if row < 0:
        return 0
    memcpy(&end, col.ends + row * 8, 8)
    return end


cdef int gather_arrays(FlatColumn* col, const uint32_t* perm, Py_ssize_t rows,
                       Buf* out) noexcept nogil:
    # [LowCardinality prefix], the rows' new end offsets, then the elements gathered.
    cdef FlatColumn* elements = col.elements
    cdef Py_ssize_t count = <Py_ssize_t>array_end(col, rows - 1)
    cdef Py_ssize_t i, k = 0
    cdef uint64_t start, stop, total = 0
    cdef uint64_t version = 1
    cdef uint32_t* element_perm
    cdef Buf nested
    cdef int rc
    cdef Py_ssize_t skip = 0
    if elements.layout == LAYOUT_LC and buf_append(out, <const char*>&version, 8) < 0:
        return -1
    if buf_reserve(out, rows * 8) < 0:
        return -1
    element_perm = <uint32_t*>PyMem_RawMalloc(<size_t>count * 4 + 4)
    if element_perm == NULL:
        return -1
    for i in range(rows):
        start = array_end(col, <Py_ssize_t>perm[i] - 1)
        stop = array_end(col, perm[i])
        total += stop - start
        memcpy(out.ptr + out.len, &total, 8)
        out.len += 8
        while start < stop:
            element_perm[k] = <uint32_t>start
            k += 1
            start += 1
    rc = 0
    if count:
        memset(&nested, 0, sizeof(Buf))
        rc = gather(elements, element_perm, count, &nested)
        # A LowCardinality granule without its prefix: that went before the offsets.
        skip = 8 if elements.layout == LAYOUT_LC else 0
        if rc == 0 and buf_append(out, nested.ptr + skip, nested.len - skip) < 0:
            rc = -1
        buf_free(&nested)
    PyMem_RawFree(element_perm)
    return rc


cdef bint flat_column(FlatColumn* col, const unsigned char* p, Py_ssize_t n,
                      Py_ssize_t rows) noexcept nogil:
    # Readable rows from a column's payload; False if it does not hold rows of its layout.
    cdef Py_ssize_t pos = 0
    cdef Py_ssize_t i, skip
    cdef uint64_t count = 0, end
    if col.layout >= LAYOUT_ARRAY:
        col.elements = <FlatColumn*>PyMem_RawMalloc(sizeof(FlatColumn))
        if col.elements == NULL:
            return False
        memset(col.elements, 0, sizeof(FlatColumn))
        col.elements.layout = col.layout - LAYOUT_ARRAY
        col.elements.width = col.width
        col.elements.nullable = col.nullable
        if col.elements.layout == LAYOUT_LC:
            pos = 8     # the elements' LowCardinality prefix comes first
            if n < 8:
                return False
            memcpy(&end, p, 8)
            if end != 1:
                return False
        if n < pos + rows * 8:
            return False
        col.ends = p + pos
        for i in range(rows):
            end = array_end(col, i)
            if end < count or end > <uint64_t>n:   # every element takes a byte at least
                return False
            count = end
        pos += rows * 8
        if count == 0:
            return pos == n
        if col.elements.layout == LAYOUT_LC:
            return alloc_strings(col.elements, <Py_ssize_t>count) and flat_low_cardinality(
                col.elements, p + pos, n - pos, <Py_ssize_t>count, col.nullable, False) == 0
        return flat_column(col.elements, p + pos, n - pos, <Py_ssize_t>count)
    skip = rows if col.nullable and col.layout != LAYOUT_LC else 0
    if skip:
        if n < skip:
            return False
        col.nulls = p     # the null map comes first
    if col.layout == LAYOUT_FIXED:
        if col.width <= 0 or n != skip + rows * col.width:
            return False
        col.values = p + skip
        return True
    if not alloc_strings(col, rows):
        return False
    if col.layout == LAYOUT_STRING:
        return flat_strings(col, p + skip, n - skip, rows) == 0
    return flat_low_cardinality(col, p, n, rows, col.nullable, True) == 0


cdef bint alloc_strings(FlatColumn* col, Py_ssize_t rows) noexcept nogil:
    col.off = <int64_t*>PyMem_RawMalloc(<size_t>rows * 8 + 8)
    col.len = <int64_t*>PyMem_RawMalloc(<size_t>rows * 8 + 8)
    return col.off != NULL and col.len != NULL


cdef void free_flat(FlatColumn* col) noexcept nogil:
    PyMem_RawFree(col.off)
    PyMem_RawFree(col.len)
    buf_free(&col.owned_values)
    buf_free(&col.owned_nulls)
    if col.elements != NULL:
        free_flat(col.elements)
        PyMem_RawFree(col.elements)
