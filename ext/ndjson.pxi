# NDJSON: one JSON object per line -> column slots (mirror of _pyparser.NDJSONParser).
#
# Column paths ($.a.b) form a trie. The scan walks each row's object once: a key that
# matches a trie child is descended into (objects) or recorded as a leaf slot; every
# other value is validated and skipped. The whole row is validated as JSON (RFC 8259,
# UTF-8), so a row is either stored whole or quarantined whole.

cdef inline bint bytes_equal(const unsigned char* a, const unsigned char* b,
                             Py_ssize_t n) noexcept nogil:
    # Object keys are short: an inline loop beats a call to memcmp.
    cdef Py_ssize_t i
    for i in range(n):
        if a[i] != b[i]:
            return False
    return True


@cython.final  # direct (inlinable) calls between the scan methods, not through the vtable
cdef class NDJSONParser(_ParserCore):
    # Path trie, flattened; node 0 is the row object.
    cdef int _nnodes
    cdef int* _first_child      # per node: first child node, or -1
    cdef int* _next_sibling     # per node: next sibling node, or -1
    cdef int* _leaf_start       # per node: first index into _leaves
    cdef int* _leaf_count       # per node: columns ending at this node
    cdef int* _leaves           # column indices grouped by node
    cdef Py_ssize_t* _key_off   # per node: its key in _keys
    cdef Py_ssize_t* _key_len
    cdef Buf _keys              # all keys' UTF-8 bytes
    cdef int* _parent           # per node: its parent node (-1 for the root)
    cdef int* _index            # per node: its array index ($.a[0]), or -1 for a key
    # Rows usually repeat the previous row's keys in the same order, so each object's
    # keys are first compared, raw, with the key that came next in the last row.
    cdef int* _first_key        # per node: the child matched first in its last object, or -1
    cdef int* _follow           # per node: the sibling matched after it last time, or -1
    cdef char* _plain           # per node: its key's JSON text is its bytes (no escapes needed)
    cdef uint64_t* _key_words   # per node, 2 words: a key of <= 15 bytes and its closing quote
    cdef uint64_t* _key_masks   # per node, 2 words: the bytes to compare; all 0: compare bytes

    def __cinit__(self, *args, **kwargs):
        self._first_child = NULL
        self._next_sibling = NULL
        self._leaf_start = NULL
        self._leaf_count = NULL
        self._leaves = NULL
        self._key_off = NULL
        self._key_len = NULL
        self._parent = NULL
        self._index = NULL
        self._first_key = NULL
        self._follow = NULL
        self._plain = NULL
        self._key_words = NULL
        self._key_masks = NULL

    def __init__(self, columns, *, Py_ssize_t max_row_bytes=1 << 20):
        super().__init__(columns, max_row_bytes=max_row_bytes)
        # Build the trie in Python (once), then flatten it into C arrays.
        # (children: key bytes or array index int -> node index, leaf columns)
        nodes = [({}, [])]
        for index, spec in enumerate(self._specs):
            if spec.path is None:
                raise SchemaError(f"column '{spec.name}' has no jsonpath")
            node = 0
            for key in spec.path:
                children = nodes[node][0]
                raw = key if isinstance(key, int) else key.encode()
                if raw not in children:
                    children[raw] = len(nodes)
                    nodes.append(({}, []))
                node = children[raw]
            nodes[node][1].append(index)
        cdef int count = len(nodes)
        cdef int i, leaf_pos = 0
        self._nnodes = count
        self._first_child = <int*>PyMem_Malloc(sizeof(int) * count)
        self._next_sibling = <int*>PyMem_Malloc(sizeof(int) * count)
        self._leaf_start = <int*>PyMem_Malloc(sizeof(int) * count)
        self._leaf_count = <int*>PyMem_Malloc(sizeof(int) * count)
        self._leaves = <int*>PyMem_Malloc(sizeof(int) * max(self._ncols, 1))
        self._key_off = <Py_ssize_t*>PyMem_Malloc(sizeof(Py_ssize_t) * count)
        self._key_len = <Py_ssize_t*>PyMem_Malloc(sizeof(Py_ssize_t) * count)
        self._parent = <int*>PyMem_Malloc(sizeof(int) * count)
        self._index = <int*>PyMem_Malloc(sizeof(int) * count)
        self._first_key = <int*>PyMem_Malloc(sizeof(int) * count)
        self._follow = <int*>PyMem_Malloc(sizeof(int) * count)
        self._plain = <char*>PyMem_Malloc(count)
        self._key_words = <uint64_t*>PyMem_Malloc(sizeof(uint64_t) * 2 * count)
        self._key_masks = <uint64_t*>PyMem_Malloc(sizeof(uint64_t) * 2 * count)
        if (self._first_child == NULL or self._next_sibling == NULL or self._leaf_start == NULL
                or self._leaf_count == NULL or self._leaves == NULL or self._key_off == NULL
                or self._key_len == NULL or self._parent == NULL or self._index == NULL
                or self._first_key == NULL or self._follow == NULL or self._plain == NULL
                or self._key_words == NULL or self._key_masks == NULL):
            raise MemoryError()
        for i in range(count):
            self._first_child[i] = -1
            self._next_sibling[i] = -1
            self._key_off[i] = 0
            self._key_len[i] = 0
            self._parent[i] = -1
            self._index[i] = -1
            self._first_key[i] = -1
            self._follow[i] = -1
            self._plain[i] = False
            self._key_words[2 * i] = self._key_words[2 * i + 1] = 0
            self._key_masks[2 * i] = self._key_masks[2 * i + 1] = 0
            self._leaf_start[i] = leaf_pos
            self._leaf_count[i] = len(nodes[i][1])
            for column in nodes[i][1]:
                self._leaves[leaf_pos] = column
                leaf_pos += 1
        for i in range(count):
            previous = -1
            for raw, child in nodes[i][0].items():
                self._parent[child] = i
                if isinstance(raw, int):
                    # Never equal to an object key: _key_len -1.
                    self._index[child] = raw
                    self._key_len[child] = -1
                else:
                    self._key_off[child] = self._keys.len
                    self._key_len[child] = len(raw)
                    # Valid UTF-8 (it was a str) without '"', '\\' or controls: written
                    # as is, a JSON key equal to it has exactly these bytes.
                    self._plain[child] = all(byte >= 0x20 and byte != 0x22 and byte != 0x5C
                                             for byte in raw)
                    if len(raw) <= 15:  # little-endian loads (checked at import)
                        words = int.from_bytes(raw + b'"', "little")
                        # Built from bytes, not as ``(1 << 8 * n) - 1``: Cython computes a
                        # shift of C ints in C, where past 31 bits it is undefined (it
                        # compared only a key's first bytes: "azzz" matched "abcd").
                        masks = int.from_bytes(b"\xff" * (len(raw) + 1), "little")
                        self._key_words[2 * child] = words & 0xFFFFFFFFFFFFFFFF
                        self._key_words[2 * child + 1] = words >> 64
                        self._key_masks[2 * child] = masks & 0xFFFFFFFFFFFFFFFF
                        self._key_masks[2 * child + 1] = masks >> 64
                    if buf_append(&self._keys, <const char*>raw, len(raw)) < 0:
                        raise MemoryError()
                if previous < 0:
                    self._first_child[i] = child
                else:
                    self._next_sibling[previous] = child
                previous = child

    def __dealloc__(self):
        PyMem_Free(self._first_child)
        PyMem_Free(self._next_sibling)
        PyMem_Free(self._leaf_start)
        PyMem_Free(self._leaf_count)
        PyMem_Free(self._leaves)
        PyMem_Free(self._key_off)
        PyMem_Free(self._key_len)
        PyMem_Free(self._parent)
        PyMem_Free(self._index)
        PyMem_Free(self._first_key)
        PyMem_Free(self._follow)
        PyMem_Free(self._plain)
        PyMem_Free(self._key_words)
        PyMem_Free(self._key_masks)
        buf_free(&self._keys)

    def feed(self, data):
        """Parse the complete rows in ``data``; returns how many rows ended."""
        cdef const unsigned char[::1] view
        cdef int rc
        if self._at_start:
            data = self._strip_bom(bytes(data))
        view = as_bytes_view(data)
        self._ended = 0
        if view.shape[0] == 0:
            return 0
        with nogil:
            rc = self._feed(<const char*>&view[0], view.shape[0])
        if rc == ERR_NO_MEMORY:
            raise MemoryError()
        return self._ended

    def finish(self):
        """Parse a last row that had no trailing newline."""
        cdef int rc
        cdef Py_ssize_t ended = self.feed(self._flush_bom())
        self._ended = 0
        rc = self._end_row(NULL, 0)
        if rc == ERR_NO_MEMORY:
            raise MemoryError()
        self._at_start = True
        return ended + self._ended

    cdef int _feed(self, const char* data, Py_ssize_t n) noexcept nogil:
        cdef Py_ssize_t start = 0
        cdef const char* newline
        cdef int rc
        while start < n:
            newline = <const char*>memchr(data + start, b'\n', <size_t>(n - start))
            if newline == NULL:
                break
            rc = self._end_row(data + start, newline - (data + start))
            if rc == ERR_NO_MEMORY:
                return rc
            start = newline - data + 1
        return self._carry(data + start, n - start)

    cdef bint _is_blank(self, const char* row, Py_ssize_t n) noexcept nogil:
        cdef Py_ssize_t i
        for i in range(n):
            if not is_ws(<unsigned char>row[i]):
                return False
        return True

    # --- the scan ---

    cdef inline Py_ssize_t _ws(self, const unsigned char* row, Py_ssize_t pos, Py_ssize_t end) noexcept nogil:
        while pos < end and is_ws(row[pos]):
            pos += 1
        return pos

    cdef inline Py_ssize_t _fail(self, int code, int column) noexcept nogil:
        self._err_code = code
        self._err_col = column
        return -1

    cdef int _process_row(self, const char* row_chars, Py_ssize_t n) noexcept nogil:
        cdef const unsigned char* row = <const unsigned char*>row_chars
        cdef Py_ssize_t pos, end
        cdef int i
        cdef int code
        for i in range(self._ncols):
            self._slots[i].kind = KIND_MISSING
        self._err_code = ERR_NONE
        self._err_col = -1
        pos = self._ws(row, 0, n)
        if row[pos] != b'{':
            # Valid JSON that is not an object, or not JSON at all.
            end = self._scan_value(row, pos, n, 1, -1)
            if end < 0:
                code = self._err_code
            else:
                code = ERR_NOT_OBJECT if self._ws(row, end, n) == n else ERR_INVALID_JSON
            return self._record_error(row_chars, n, -1, code, NULL, 0)
        end = self._scan_value(row, pos, n, 1, 0)
        if end < 0:
            if self._err_code == ERR_NO_MEMORY:
                return ERR_NO_MEMORY
            return self._record_error(row_chars, n, self._err_col, self._err_code, NULL, 0)
        if self._ws(row, end, n) != n:
            return self._record_error(row_chars, n, -1, ERR_INVALID_JSON, NULL, 0)
        return self._store_all(row_chars, n)

    cdef inline int _record_slot(self, int node, int kind, bint escaped,
                                 const unsigned char* ptr, Py_ssize_t length) noexcept nogil:
        cdef int k, column
        for k in range(self._leaf_start[node], self._leaf_start[node] + self._leaf_count[node]):
            column = self._leaves[k]
            if self._slots[column].kind != KIND_MISSING:
                self._fail(ERR_DUPLICATE_KEY, column)
                return -1
            self._slots[column].kind = kind
            self._slots[column].escaped = escaped
            self._slots[column].ptr = <const char*>ptr
            self._slots[column].len = length
        return 0

    cdef inline Py_ssize_t _scan_value(self, const unsigned char* row, Py_ssize_t pos,
                                       Py_ssize_t end, int depth, int node) noexcept nogil:
        # Scan the value at pos; record it for node's columns; return its end or -1.
        # Inline in the object and array scans: strings and numbers here, the rest in
        # _scan_other.
        cdef unsigned char c
        cdef bint escaped = False
        cdef bint has_leaves = node >= 0 and self._leaf_count[node] > 0
        cdef Py_ssize_t stop
        if pos >= end:
            return self._fail(ERR_INVALID_JSON, -1)
        c = row[pos]
        if c == b'"':
            stop = self._scan_string(row, pos, end,
                                     self._leaves[self._leaf_start[node]] if has_leaves else -1,
                                     &escaped)
            if stop < 0:
                return -1
            if has_leaves and self._record_slot(node, KIND_JSON_STRING, escaped, row + pos + 1,
                                                stop - pos - 2) < 0:
                return -1
            return stop
        if c != b'-' and not is_digit(c):
            return self._scan_other(row, pos, end, depth, node)
        stop = self._scan_number(row, pos, end)
        if stop < 0:
            return -1
        if has_leaves and self._record_slot(node, KIND_TEXT, False, row + pos, stop - pos) < 0:
            return -1
        return stop

    cdef Py_ssize_t _scan_other(self, const unsigned char* row, Py_ssize_t pos, Py_ssize_t end,
                                int depth, int node) noexcept nogil:
        # The value at pos when it is neither a string nor a number, like _scan_value.
        cdef unsigned char c = row[pos]
        cdef bint has_leaves = node >= 0 and self._leaf_count[node] > 0
        cdef Py_ssize_t stop
        if c == b't' and end - pos >= 4 and memcmp(row + pos, b"true", 4) == 0:
            stop = pos + 4
        elif c == b'f' and end - pos >= 5 and memcmp(row + pos, b"false", 5) == 0:
            stop = pos + 5
        elif c == b'n' and end - pos >= 4 and memcmp(row + pos, b"null", 4) == 0:
            if has_leaves and self._record_slot(node, KIND_NULL, False, row + pos, 4) < 0:
                return -1
            return pos + 4
        elif c != b'{' and c != b'[':
            return self._scan_number(row, pos, end)  # not a value: fails
        elif depth > MAX_DEPTH:
            return self._fail(ERR_TOO_DEEP, -1)
        elif c == b'{':
            stop = self._scan_object(row, pos, end, depth, node)
        else:
            stop = self._scan_array(row, pos, end, depth, node)
        if stop < 0:
            return -1
        if has_leaves and self._record_slot(node, KIND_NESTED if c == b'{' or c == b'['
                                            else KIND_TEXT, False, row + pos, stop - pos) < 0:
            return -1
        return stop

    cdef Py_ssize_t _scan_object(self, const unsigned char* row, Py_ssize_t pos, Py_ssize_t end,
                                 int depth, int node) noexcept nogil:
        cdef bint escaped
        cdef Py_ssize_t key_start, stop, key_len
        cdef uint64_t diff
        cdef int child
        cdef bint mapped = node >= 0 and self._first_child[node] >= 0
        cdef int predicted = self._first_key[node] if mapped else -1
        cdef int previous = -1
        pos = self._ws(row, pos + 1, end)
        if pos < end and row[pos] == b'}':
            return pos + 1
        while True:
            if pos >= end or row[pos] != b'"':
                return self._fail(ERR_INVALID_JSON, -1)
            child = -1
            if predicted >= 0:
                # The predicted key, byte for byte and then its closing quote: the same
                # string the full scan below would accept and match. Keys of up to 15
                # bytes are compared as two words.
                key_len = self._key_len[predicted]
                if self._key_masks[2 * predicted] and pos + (17 if key_len > 7 else 9) <= end:
                    diff = (load8(row + pos + 1) ^ self._key_words[2 * predicted]) \
                        & self._key_masks[2 * predicted]
                    if key_len > 7:
                        diff |= (load8(row + pos + 9) ^ self._key_words[2 * predicted + 1]) \
                            & self._key_masks[2 * predicted + 1]
                    if diff == 0:
                        child = predicted
                elif pos + key_len + 1 < end and row[pos + key_len + 1] == b'"' and bytes_equal(
                        <const unsigned char*>self._keys.ptr + self._key_off[predicted],
                        row + pos + 1, key_len):
                    child = predicted
                if child >= 0:
                    stop = pos + key_len + 2
            if child < 0:
                escaped = False
                key_start = pos + 1
                stop = self._scan_string(row, pos, end, -1, &escaped)
                if stop < 0:
                    return -1
                if mapped:
                    child = self._find_child(node, row + key_start, stop - 1 - key_start, escaped)
                    if child == -2:
                        return self._fail(ERR_NO_MEMORY, -1)
            if child >= 0:
                if previous >= 0:
                    self._follow[previous] = child if self._plain[child] else -1
                else:
                    self._first_key[node] = child if self._plain[child] else -1
                previous = child
                predicted = self._follow[child]
            pos = self._ws(row, stop, end)
            if pos >= end or row[pos] != b':':
                return self._fail(ERR_INVALID_JSON, -1)
            pos = self._scan_value(row, self._ws(row, pos + 1, end), end, depth + 1, child)
            if pos < 0:
                return -1
            pos = self._ws(row, pos, end)
            if pos < end and row[pos] == b'}':
                return pos + 1
            if pos >= end or row[pos] != b',':
                return self._fail(ERR_INVALID_JSON, -1)
            pos = self._ws(row, pos + 1, end)

    cdef Py_ssize_t _scan_array(self, const unsigned char* row, Py_ssize_t pos, Py_ssize_t end,
                                int depth, int node) noexcept nogil:
        # Elements are descended into when a path indexes them ($.a[0]).
        cdef int index = 0
        cdef int child
        cdef bint indexed = node >= 0 and self._first_child[node] >= 0
        pos = self._ws(row, pos + 1, end)
        if pos < end and row[pos] == b']':
            return pos + 1
        while True:
            child = -1
            if indexed:
                child = self._first_child[node]
                while child >= 0 and self._index[child] != index:
                    child = self._next_sibling[child]
            index += 1
            pos = self._scan_value(row, pos, end, depth + 1, child)
            if pos < 0:
                return -1
            pos = self._ws(row, pos, end)
            if pos < end and row[pos] == b']':
                return pos + 1
            if pos >= end or row[pos] != b',':
                return self._fail(ERR_INVALID_JSON, -1)
            pos = self._ws(row, pos + 1, end)

    cdef int _find_child(self, int node, const unsigned char* key, Py_ssize_t length,
                         bint escaped) noexcept nogil:
        # The child of node whose key equals this (raw) JSON key, -1 if none, -2 if OOM.
        cdef int child
        if escaped:
            self._scratch.len = 0
            if self._unescape(&self._scratch, key, length) < 0:
                return -2
            key = <const unsigned char*>self._scratch.ptr
            length = self._scratch.len
        child = self._first_child[node]
        while child >= 0:
            if self._key_len[child] == length and bytes_equal(
                    <const unsigned char*>self._keys.ptr + self._key_off[child], key, length):
                return child
            child = self._next_sibling[child]
        return -1

    cdef Py_ssize_t _scan_number(self, const unsigned char* row, Py_ssize_t pos, Py_ssize_t end) noexcept nogil:
        cdef Py_ssize_t digits
        if pos < end and row[pos] == b'-':
            pos += 1
        if pos < end and row[pos] == b'0':
            pos += 1
        elif pos < end and b'1' <= row[pos] <= b'9':
            while end - pos >= 8 and eight_digits(load8(row + pos)):
                pos += 8
            while pos < end and is_digit(row[pos]):
                pos += 1
        else:
            return self._fail(ERR_INVALID_JSON, -1)
        if pos < end and row[pos] == b'.':
            pos += 1
            digits = pos
            while pos < end and is_digit(row[pos]):
                pos += 1
            if pos == digits:
                return self._fail(ERR_INVALID_JSON, -1)
        if pos < end and (row[pos] == b'e' or row[pos] == b'E'):
            pos += 1
            if pos < end and (row[pos] == b'+' or row[pos] == b'-'):
                pos += 1
            digits = pos
            while pos < end and is_digit(row[pos]):
                pos += 1
            if pos == digits:
                return self._fail(ERR_INVALID_JSON, -1)
        return pos

    cdef Py_ssize_t _scan_string(self, const unsigned char* row, Py_ssize_t pos, Py_ssize_t end,
                                 int column, bint* escaped) noexcept nogil:
        # Validate the string starting at the quote at pos; return the position after its
        # closing quote. Raw invalid UTF-8 is reported once the string has ended, like the
        # reference (which checks the unescaped result), so a later syntax error wins.
        cdef unsigned char c, e
        cdef unsigned int unit, low
        cdef bint bad_utf8 = False
        cdef Py_ssize_t step
        pos += 1
        while True:
            # Fast path: plain ASCII, 16 bytes a step.
            pos = scan_json_string(row, pos, end)
            if pos >= end:
                return self._fail(ERR_INVALID_JSON, -1)
            c = row[pos]
            if c == b'"':
                break
            if c < 0x20:
                return self._fail(ERR_INVALID_JSON, -1)
            if c == b'\\':
                escaped[0] = True
                if pos + 1 >= end:
                    return self._fail(ERR_INVALID_JSON, -1)
                e = row[pos + 1]
                if (e == b'"' or e == b'\\' or e == b'/' or e == b'b' or e == b'f' or e == b'n'
                        or e == b'r' or e == b't'):
                    pos += 2
                    continue
                if e != b'u' or pos + 6 > end:
                    return self._fail(ERR_INVALID_JSON, -1)
                unit = hex4(row + pos + 2)
                if unit > 0xFFFF:
                    return self._fail(ERR_INVALID_JSON, -1)
                pos += 6
                if 0xD800 <= unit <= 0xDBFF:
                    if pos + 2 > end or row[pos] != b'\\' or row[pos + 1] != b'u':
                        return self._fail(ERR_INVALID_UTF8, column)
                    if pos + 6 > end:
                        return self._fail(ERR_INVALID_JSON, -1)
                    low = hex4(row + pos + 2)
                    if low > 0xFFFF:
                        return self._fail(ERR_INVALID_JSON, -1)
                    if not (0xDC00 <= low <= 0xDFFF):
                        return self._fail(ERR_INVALID_UTF8, column)
                    pos += 6
                elif 0xDC00 <= unit <= 0xDFFF:
                    return self._fail(ERR_INVALID_UTF8, column)
                continue
            step = utf8_sequence(row, pos, end)
            if step == 0:
                bad_utf8 = True
                pos += 1
            else:
                pos += step
        if bad_utf8:
            return self._fail(ERR_INVALID_UTF8, column)
        return pos + 1
