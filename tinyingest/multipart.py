"""Streaming ``multipart/form-data`` reader: the data file of an upload, as it arrives.

Tinybird clients upload files as ``curl -F csv=@data.csv`` or with ``requests``'s
``files=``. The gateway needs only the file's bytes, streamed into the parser without
holding the body, so :class:`MultipartReader` returns the content of *one* part and
consumes the rest::

    reader = MultipartReader(parse_boundary(request.headers["Content-Type"]))
    for chunk in chunks:
        parser.feed(reader.feed(chunk))
    reader.finish()

Which part: the first part with a ``filename``. ``requests`` sends ``data=`` fields
*before* its ``files=``, so small leading fields are skipped. A body with no part that
has a filename (``curl -F 'csv=<data.csv'``) gives its first part instead. To stay
streaming, a first part without a filename is held back only up to ``max_field_bytes``
(64 KiB): if it is longer, it is taken as the data, and later parts are ignored.

Memory: besides that held-back field, the reader keeps at most the delimiter length plus
``max_header_bytes`` (16 KiB) of part headers between calls.

Syntax follows RFC 2046 section 5.1.1 and RFC 7578: delimiters are ``CRLF--boundary``
(the first may open the body), followed by optional spaces and CRLF, or by ``--`` to
close. ``CRLF--boundary`` followed by anything else is content, not a delimiter. Part
headers may end lines with a bare LF.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from tinyingest.decompress import BodyError

__all__ = ["BadMultipart", "MultipartReader", "parse_boundary"]


class BadMultipart(BodyError):
    """The multipart body is malformed, truncated, or has no part."""

    status = 400


_HEADERS_END = re.compile(rb"\n\r?\n")
# One ``; name=value`` parameter; the value is a quoted-string or a token.
_PARAM = re.compile(r';\s*([^\s=;]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')
_QUOTED_PAIR = re.compile(r"\\(.)")

# States
_PREAMBLE = 0  # before the first delimiter: discard
_AFTER_DELIM = 1  # just matched CRLF--boundary: is it a delimiter, and which kind?
_HEADERS = 2  # reading a part's headers
_CONTENT = 3  # inside a part's content
_DONE = 4  # the chosen part has ended or the body closed: consume and ignore

# What to do with the content of the current part
_SKIP = 0
_EMIT = 1
_HOLD = 2  # the first part, no filename: keep it in case no part has one


def parse_boundary(content_type: str | None) -> bytes | None:
    """Return the boundary of a ``multipart/form-data`` Content-Type, or None.

    None if the header is missing, names another type, or has no valid boundary
    (1 to 70 characters, RFC 2046).

    >>> parse_boundary('multipart/form-data; boundary="abc 1"')
    b'abc 1'
    """
    if not content_type:
        return None
    mime, _, rest = content_type.partition(";")
    if mime.strip().lower() != "multipart/form-data":
        return None
    params = _parse_params(";" + rest)
    boundary = params.get("boundary")
    if not boundary or len(boundary) > 70 or not boundary.isascii():
        return None
    return boundary.encode("ascii")


def _decode_ext_value(value: str) -> str:
    # RFC 8187 ``charset'language'percent-encoded``, as in ``filename*=UTF-8''a%20b.csv``.
    charset, sep, rest = value.partition("'")
    if not sep:
        return value
    try:
        return unquote(rest.partition("'")[2], encoding=charset or "utf-8", errors="replace")
    except LookupError:
        return value


def _parse_params(text: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for match in _PARAM.finditer(text):
        value = match.group(2).strip()
        if value.startswith('"'):
            value = _QUOTED_PAIR.sub(r"\1", value[1:-1])
        params.setdefault(match.group(1).lower(), value)
    return params


class MultipartReader:
    """Incremental ``multipart/form-data`` parser returning one part's content.

    :param boundary: from :func:`parse_boundary`.
    :param max_header_bytes: the largest header block of one part (and the most
        transport padding after a delimiter); more raises :class:`BadMultipart`.
    :param max_field_bytes: how much of a first part without a filename is held back
        while looking for a part with one (see the module docstring).

    After the chosen part begins, :attr:`name`, :attr:`filename` and
    :attr:`content_type` describe it (``filename`` may be None).

    >>> r = MultipartReader(b"XX")
    >>> body = b'--XX\\r\\nContent-Disposition: form-data; name="csv"; filename="a.csv"\\r\\n\\r\\na,b\\r\\n--XX--\\r\\n'
    >>> r.feed(body[:20]) + r.feed(body[20:]), r.name, r.filename
    (b'a,b', 'csv', 'a.csv')
    >>> r.finish()
    """

    def __init__(
        self,
        boundary: bytes,
        max_header_bytes: int = 16 * 1024,
        max_field_bytes: int = 64 * 1024,
    ) -> None:
        if not boundary:
            raise ValueError("empty multipart boundary")
        self.name: str | None = None
        self.filename: str | None = None
        self.content_type: str | None = None
        self._delim = b"\r\n--" + boundary
        self._max_header_bytes = max_header_bytes
        self._max_field_bytes = max_field_bytes
        # The first delimiter may open the body with no CRLF before it: pretend there was.
        self._buf = bytearray(b"\r\n")
        self._state = _PREAMBLE
        self._resume = _PREAMBLE  # _PREAMBLE or _CONTENT: where a non-delimiter goes back to
        self._mode = _SKIP  # for _CONTENT
        self._parts = 0  # parts whose headers were read
        self._held = bytearray()  # content of the first part, in _HOLD
        self._fallback: bytes | None = None  # that content, once the part ended
        self._chosen_ended = False
        self._header_scan = 0  # where to resume looking for the end of the headers

    def feed(self, chunk: bytes) -> bytes:
        """Consume the next chunk of the body; return chosen-part content (maybe empty).

        :raises BadMultipart: a header block or padding over the limit.
        """
        if self._state == _DONE:
            return b""
        self._buf += chunk
        out = bytearray()
        while self._step(out):
            pass
        return bytes(out)

    def finish(self) -> None:
        """Signal the end of the body.

        :raises BadMultipart: the body ended before the chosen part did, or had no part.
        """
        if self._state == _DONE and self._chosen_ended:
            return
        if self._state == _DONE:
            raise BadMultipart("Multipart body has no part")
        if self._parts == 0 and self._state == _PREAMBLE:
            raise BadMultipart("Multipart body has no part (boundary not found)")
        raise BadMultipart("Multipart body ended before its closing boundary")

    # --- the state machine; each step returns False when it needs more input ---

    def _step(self, out: bytearray) -> bool:
        if self._state in (_PREAMBLE, _CONTENT):
            return self._scan_content(out)
        if self._state == _AFTER_DELIM:
            return self._after_delim(out)
        if self._state == _HEADERS:
            return self._read_headers(out)
        self._buf.clear()  # _DONE
        return False

    def _scan_content(self, out: bytearray) -> bool:
        buf = self._buf
        index = buf.find(self._delim)
        if index < 0:
            # Keep what could be the start of a delimiter split across chunks.
            keep = len(self._delim) - 1
            if len(buf) > keep:
                self._content(out, buf[: len(buf) - keep])
                del buf[: len(buf) - keep]
            return False
        self._content(out, buf[:index])
        del buf[:index]
        self._resume = self._state
        self._state = _AFTER_DELIM
        return True

    def _after_delim(self, out: bytearray) -> bool:
        # buf starts with CRLF--boundary; what follows decides what it is.
        buf = self._buf
        pos = len(self._delim)
        rest = bytes(buf[pos : pos + 2])
        if rest == b"--":
            self._end_part()
            if self._state != _DONE and self._fallback is not None:
                # The body closed and no part had a filename: the first part is the data.
                out += self._fallback
                self._fallback = None
                self._chosen_ended = True
            self._state = _DONE
            buf.clear()
            return False
        if rest in (b"", b"-"):
            return False
        while pos < len(buf) and buf[pos] in b" \t":
            pos += 1
        if pos - len(self._delim) > self._max_header_bytes:
            raise BadMultipart("Too much padding after a multipart boundary")
        if pos == len(buf) or (buf[pos] == 13 and pos + 1 == len(buf)):
            return False
        if buf[pos] == 10:
            pos += 1
        elif buf[pos] == 13 and buf[pos + 1] == 10:
            pos += 2
        else:
            # Not a delimiter after all: its first byte is content; rescan after it.
            self._state = self._resume
            self._content(out, buf[:1])
            del buf[:1]
            return True
        self._end_part()
        if self._state == _DONE:
            buf.clear()
            return False
        # Keep the line break before the headers, so that an empty header block is
        # found by the same search as the blank line that ends the headers.
        del buf[: pos - 1]
        self._header_scan = 0
        self._state = _HEADERS
        return True

    def _end_part(self) -> None:
        """The part being read (if any) has ended at a delimiter."""
        if self._resume != _CONTENT:
            return
        if self._mode == _EMIT:
            self._chosen_ended = True
            self._state = _DONE
        elif self._mode == _HOLD:
            self._fallback = bytes(self._held)
            self._held = bytearray()

    def _read_headers(self, out: bytearray) -> bool:
        buf = self._buf
        match = _HEADERS_END.search(buf, self._header_scan)
        if match is None:
            # The block is longer than the limit even if its end is in the last 2 bytes.
            if len(buf) > self._max_header_bytes + 2:
                raise BadMultipart("Multipart part headers too large")
            self._header_scan = max(len(buf) - 2, 0)
            return False
        if match.start() > self._max_header_bytes:
            raise BadMultipart("Multipart part headers too large")
        headers = bytes(buf[1 : match.start()])
        del buf[: match.end()]
        self._start_part(headers)
        self._state = _CONTENT
        return True

    def _start_part(self, raw: bytes) -> None:
        # No part is chosen yet: once one is and it ends, the reader is _DONE.
        self._parts += 1
        name = filename = content_type = None
        for line in raw.decode("utf-8", "replace").split("\n"):
            key, sep, value = line.partition(":")
            if not sep:
                continue
            key = key.strip().lower()
            if key == "content-disposition":
                params = _parse_params(";" + value.partition(";")[2])
                name = params.get("name")
                filename = params.get("filename")
                if "filename*" in params:
                    filename = _decode_ext_value(params["filename*"])
            elif key == "content-type":
                content_type = value.strip()
        if filename is not None:
            self._mode = _EMIT
            self._fallback = None
        elif self._parts == 1:
            self._mode = _HOLD
        else:
            self._mode = _SKIP
            return
        self.name, self.filename, self.content_type = name, filename, content_type

    def _content(self, out: bytearray, data: bytearray) -> None:
        if self._state != _CONTENT or not data:
            return
        if self._mode == _EMIT:
            out += data
        elif self._mode == _HOLD:
            self._held += data
            if len(self._held) > self._max_field_bytes:
                # Too long to be a form field: it is the data.
                self._mode = _EMIT
                out += self._held
                self._held = bytearray()
