# CSV (RFC 4180) -> column slots (mirror of _pyparser.CSVParser).
#
# Records end at a newline outside quotes; the quote state and a pending escape
# character are carried across chunks. Header detection needs the first record's field
# names, so the scan stops there and lets Python decide (_pyparser.split_csv_record),
# then resumes at the same position.

cdef enum:
    SCAN_DONE = 0
    SCAN_HEADER = 1     # stopped at the first record: header or not is undecided


cdef struct Field:
    const char* ptr     # the field's text: in the record, or unquoted in _fields_text
    Py_ssize_t len
    bint quoted


@cython.final
cdef class CSVParser(_ParserCore):
    cdef int _delimiter
    cdef int _escape             # -1: none
    cdef int _header             # -1 undecided, 0 no header, 1 header seen
    cdef bint _header_forced     # header=True: the first record is skipped in any case
    cdef int* _mapping           # per column: index of its field in a record
    cdef int _num_fields         # fields every record must have
    cdef bint _in_quotes         # quote state at the scan position
    cdef bint _escaped           # the previous chunk ended on the escape character
    cdef Py_ssize_t _resume      # where a stopped scan resumes in the current chunk
    cdef Py_ssize_t _row_start   # start of the current record in the current chunk
    cdef Buf _first_record       # the record held while the header is decided
    cdef Buf _fields             # Field array for the current record
    cdef Buf _fields_text        # unquoted field texts of the current record

    def __cinit__(self, *args, **kwargs):
        self._mapping = NULL

    def __init__(self, columns, *, Py_ssize_t max_row_bytes=1 << 20, bytes delimiter=b",",
                 escapechar=None, header=None):
        super().__init__(columns, max_row_bytes=max_row_bytes)
        cdef int i
        for spec in self._specs:
            if spec.tuple_elements:
                raise SchemaError(f"column '{spec.name}' ({spec.ch_type}): Tuple columns are "
                                  "not supported in CSV (send NDJSON)")
        if len(delimiter) != 1 or delimiter in b'"\r\n':
            raise ValueError("delimiter must be one byte other than a quote or newline")
        if escapechar is not None and (len(escapechar) != 1 or escapechar in b'\r\n'):
            raise ValueError("escapechar must be one byte")
        self._delimiter = delimiter[0]
        self._escape = escapechar[0] if escapechar is not None else -1
        # header=None and True: decided at the first record; False: no header.
        self._header = 0 if header is not None and not header else -1
        self._header_forced = bool(header)
        self._mapping = <int*>PyMem_Malloc(sizeof(int) * max(self._ncols, 1))
        if self._mapping == NULL:
            raise MemoryError()
        for i in range(self._ncols):
            self._mapping[i] = i
        self._num_fields = self._ncols

    def __dealloc__(self):
        PyMem_Free(self._mapping)
        buf_free(&self._first_record)
        buf_free(&self._fields)
        buf_free(&self._fields_text)

    def feed(self, data):
        """Parse the complete records in ``data``; returns how many rows ended."""
        cdef const unsigned char[::1] view
        cdef int rc
        cdef Py_ssize_t n
        if self._at_start:
            data = self._strip_bom(bytes(data))
        view = as_bytes_view(data)
        n = view.shape[0]
        self._ended = 0
        if n == 0:
            return 0
        self._resume = 1 if self._escaped else 0
        self._escaped = False
        self._row_start = 0
        while True:
            with nogil:
                rc = self._scan(<const char*>&view[0], n)
            if rc == ERR_NO_MEMORY:
                raise MemoryError()
            if rc != SCAN_HEADER:
                return self._ended
            self._decide_header()

    def finish(self):
        """Parse a last record that had no trailing newline."""
        cdef int rc
        cdef Py_ssize_t ended = self.feed(self._flush_bom())
        self._ended = 0
        with nogil:
            rc = self._end_record(NULL, 0)
        if rc == SCAN_HEADER:
            self._decide_header()
        elif rc == ERR_NO_MEMORY:
            raise MemoryError()
        self._in_quotes = False
        self._escaped = False
        self._at_start = True
        return ended + self._ended

    cdef _decide_header(self):
        # The first record is in _first_record: a header if it names every column.
        record = PyBytes_FromStringAndSize(self._first_record.ptr, self._first_record.len)
        self._first_record.len = 0
        try:
            fields = _pyparser.split_csv_record(record, self._delimiter, self._escape)
        except _pyparser._BadRow:
            fields = None
        wanted = [spec.name.encode() for spec in self._specs]
        names = [text for text, _ in fields] if fields is not None else []
        if fields is not None and all(name in names for name in wanted):
            self._header = 1
            for i, name in enumerate(wanted):
                self._mapping[i] = names.index(name)
            self._num_fields = len(names)
            return
        self._header = 0
        if self._header_forced:
            return  # a header that does not name the columns: fields map by position
        self._ended += 1
        if self._process_row(<const char*>record, len(record)) == ERR_NO_MEMORY:
            raise MemoryError()

    cdef int _scan(self, const char* data, Py_ssize_t n) noexcept nogil:
        cdef Py_ssize_t pos = self._resume
        cdef bint in_quotes = self._in_quotes
        cdef int rc
        cdef unsigned char c
        # Only quotes, newlines and the escape character matter here: jump between them.
        cdef unsigned char escape = <unsigned char>self._escape if self._escape >= 0 else b'"'
        while pos < n:
            pos = scan_any3(<const unsigned char*>data, pos, n, b'"', b'\n', escape)
            if pos >= n:
                break
            c = <unsigned char>data[pos]
            if c == self._escape:
                pos += 2
                continue
            if c == b'"':
                in_quotes = not in_quotes
            elif c == b'\n' and not in_quotes:
                rc = self._end_record(data + self._row_start, pos - self._row_start)
                self._row_start = pos + 1
                if rc == SCAN_HEADER or rc == ERR_NO_MEMORY:
                    self._resume = pos + 1
                    self._in_quotes = False
                    return rc
            pos += 1
        self._in_quotes = in_quotes
        self._escaped = pos > n
        return self._carry(data + self._row_start, n - self._row_start)

    cdef int _end_record(self, const char* piece, Py_ssize_t n) noexcept nogil:
        # Like _end_row, plus CR stripping and the stop for header detection.
        cdef Py_ssize_t total
        cdef const char* record
        if self._skipping:
            self._skipping = False
            self._ended += 1
            return ERR_NONE
        if self._tail.len:
            total = self._tail.len + n
            if total > self._max_row_bytes:
                if buf_append(&self._tail, piece, self._max_row_bytes - self._tail.len) < 0:
                    return ERR_NO_MEMORY
                self._tail.len = 0
                self._ended += 1
                return self._too_long(self._tail.ptr)
            if buf_append(&self._tail, piece, n) < 0:
                return ERR_NO_MEMORY
            self._tail.len = 0
            record = self._tail.ptr
            n = total
        elif n > self._max_row_bytes:
            self._ended += 1
            return self._too_long(piece)
        else:
            record = piece
        if n and record[n - 1] == b'\r':
            n -= 1
        if n == 0:
            return ERR_NONE
        if self._header < 0:
            self._first_record.len = 0
            if buf_append(&self._first_record, record, n) < 0:
                return ERR_NO_MEMORY
            return SCAN_HEADER
        self._ended += 1
        return self._process_row(record, n)

    cdef int _split(self, const unsigned char* rec, Py_ssize_t end, Py_ssize_t* count) noexcept nogil:
        # Split one record into _fields (at most _num_fields kept, all counted).
        # Returns ERR_NONE, ERR_BAD_CSV or ERR_NO_MEMORY. See _pyparser.split_csv_record.
        cdef Py_ssize_t pos = 0
        cdef Field* fields
        cdef Field field
        cdef unsigned char c
        cdef char* out
        cdef int delimiter = self._delimiter
        cdef int escape = self._escape
        self._fields_text.len = 0
        self._fields.len = 0
        if buf_reserve(&self._fields_text, end) < 0:
            return ERR_NO_MEMORY
        if buf_reserve(&self._fields, sizeof(Field) * self._num_fields) < 0:
            return ERR_NO_MEMORY
        fields = <Field*>self._fields.ptr
        out = self._fields_text.ptr
        count[0] = 0
        cdef Py_ssize_t stop
        cdef unsigned char stop_escape = <unsigned char>escape if escape >= 0 else b'"'
        while True:
            field.ptr = out + self._fields_text.len
            field.quoted = False
            if pos < end and rec[pos] != b'"':
                # Fast path: an unquoted field without quote or escape character is used
                # in place; otherwise it is copied below from its start.
                stop = scan_any3(rec, pos, end, <unsigned char>delimiter, b'"', stop_escape)
                if stop == end or rec[stop] == delimiter:
                    field.ptr = <const char*>rec + pos
                    field.len = stop - pos
                    if count[0] < self._num_fields:
                        fields[count[0]] = field
                    count[0] += 1
                    if stop >= end:
                        return ERR_NONE
                    pos = stop + 1
                    continue
            if pos < end and rec[pos] == b'"':
                field.quoted = True
                pos = self._quoted(rec, pos + 1, end, &field)
                if pos < 0:
                    return ERR_BAD_CSV
                if pos < end and rec[pos] != delimiter:
                    return ERR_BAD_CSV
            else:
                while pos < end and rec[pos] != delimiter:
                    c = rec[pos]
                    if c == escape and pos + 1 < end:
                        out[self._fields_text.len] = rec[pos + 1]
                        self._fields_text.len += 1
                        pos += 2
                        continue
                    if c == b'"':
                        return ERR_BAD_CSV
                    out[self._fields_text.len] = c
                    self._fields_text.len += 1
                    pos += 1
                field.len = out + self._fields_text.len - field.ptr
            if count[0] < self._num_fields:
                fields[count[0]] = field
            count[0] += 1
            if pos >= end:
                return ERR_NONE
            pos += 1  # the delimiter

    cdef Py_ssize_t _quoted(self, const unsigned char* rec, Py_ssize_t pos, Py_ssize_t end,
                            Field* field) noexcept nogil:
        # The quoted field whose text starts at pos, into field; returns the position
        # after its closing quote, or -1 (no closing quote). Jumps between quotes and
        # escape characters: the text is used in place unless a doubled quote or an
        # escape needs it rewritten, and then its runs are copied to _fields_text (which
        # _split reserved).
        cdef char* out = self._fields_text.ptr
        cdef int escape = self._escape
        cdef unsigned char stop_escape = <unsigned char>escape if escape >= 0 else b'"'
        cdef Py_ssize_t run = pos
        cdef Py_ssize_t stop
        cdef bint copied = False
        cdef unsigned char c
        field.ptr = out + self._fields_text.len
        while True:
            stop = scan_any3(rec, pos, end, b'"', stop_escape, b'"')
            if stop >= end:
                return -1
            c = rec[stop]
            if c == escape and stop + 1 < end:
                memcpy(out + self._fields_text.len, rec + run, <size_t>(stop - run))
                self._fields_text.len += stop - run
                out[self._fields_text.len] = rec[stop + 1]
                self._fields_text.len += 1
                pos = run = stop + 2
                copied = True
            elif c != b'"':
                pos = stop + 1  # an escape character as the last byte: itself
            elif stop + 1 < end and rec[stop + 1] == b'"':
                # a doubled quote: the run and one quote
                memcpy(out + self._fields_text.len, rec + run, <size_t>(stop + 1 - run))
                self._fields_text.len += stop + 1 - run
                pos = run = stop + 2
                copied = True
            else:
                if copied:
                    memcpy(out + self._fields_text.len, rec + run, <size_t>(stop - run))
                    self._fields_text.len += stop - run
                    field.len = out + self._fields_text.len - field.ptr
                else:
                    field.ptr = <const char*>rec + run
                    field.len = stop - run
                return stop + 1

    cdef int _process_row(self, const char* row, Py_ssize_t n) noexcept nogil:
        cdef Py_ssize_t count = 0
        cdef int rc, i
        cdef Field* field
        cdef Slot* slot
        cdef Column* col
        cdef char message[64]
        cdef int message_len
        rc = self._split(<const unsigned char*>row, n, &count)
        if rc == ERR_NO_MEMORY:
            return rc
        if rc == ERR_BAD_CSV:
            return self._record_error(row, n, -1, ERR_BAD_CSV, NULL, 0)
        if count != self._num_fields:
            message_len = snprintf(message, 64, "expected %d, got %zd", self._num_fields, count)
            return self._record_error(row, n, -1, ERR_FIELD_COUNT, message, message_len)
        for i in range(self._ncols):
            field = &(<Field*>self._fields.ptr)[self._mapping[i]]
            slot = &self._slots[i]
            col = &self._cols[i]
            slot.kind = KIND_TEXT
            slot.escaped = False
            slot.ptr = field.ptr
            slot.len = field.len
            # An empty unquoted field is NULL for Nullable, the DEFAULT if there is one;
            # \N is NULL (an error for non-Nullable).
            if not field.quoted and (field.len == 0 or (field.len == 2 and slot.ptr[0] == b'\\'
                                                        and slot.ptr[1] == b'N')):
                if col.depth:
                    slot.kind = KIND_NULL  # Array / Map: empty
                elif col.nullable:
                    slot.kind = KIND_NULL
                elif field.len == 2:
                    slot.kind = KIND_NULL  # _store reports the NULL error with the text
                elif col.has_default or col.omit_bit:
                    slot.kind = KIND_MISSING
            elif col.depth:
                slot.kind = KIND_CSV_TEXT
        return self._store_all(row, n)
