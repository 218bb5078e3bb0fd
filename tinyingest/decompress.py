"""Streaming decoders for request bodies (``Content-Encoding``), with a limit on decoded size.

The ingest handler is a ``@stream_request_body`` handler, so the body arrives in chunks and
is decoded chunk by chunk::

    decoder = make_decoder(request.headers.get("Content-Encoding"), max_decoded_bytes, sniff_gzip=True)
    for chunk in chunks:
        parser.feed(decoder.feed(chunk))
    parser.feed(decoder.finish())

Every decoder counts its *decoded* output and raises :class:`BodyTooLarge` as soon as it
would pass ``max_decoded_bytes``. Decompression runs in bounded steps, so a small
compressed chunk that expands to gigabytes (a "gzip bomb") stops at the limit, after
allocating at most a small, fixed amount beyond it; Tornado's own
``decompress_request`` had no such limit before 6.5.6 (reliability.md, finding 8 and
catalog D3).

Errors share the base :class:`BodyError`, whose ``status`` is the HTTP status to answer:
:class:`BodyTooLarge` (413), :class:`BadEncoding` (400: corrupt, or truncated, which is
only known at :meth:`Decoder.finish`), :class:`UnsupportedEncoding` (415).

An empty body decodes to an empty body under every encoding (it is not "truncated").
"""

from __future__ import annotations

import zlib
from typing import Protocol

import zstandard

__all__ = [
    "BadEncoding",
    "BodyError",
    "BodyTooLarge",
    "Decoder",
    "UnsupportedEncoding",
    "make_decoder",
]

GZIP_MAGIC = b"\x1f\x8b"

# Largest output asked of zlib in one call: the bound on what a decoder can allocate in one
# step beyond the limit (each step asks for at most ``remaining + 1`` bytes anyway).
_ZLIB_STEP = 256 * 1024

# python-zstandard's decompressobj has no ``max_length``: one call decodes all it is given.
# So we hand it input in slices small enough that the output stays bounded. A zstd block
# decodes to at most 128 KiB and the densest block (RLE) takes 4 bytes, so one input byte
# yields at most 2**15 output bytes.
_ZSTD_MAX_RATIO = 1 << 15
_ZSTD_MIN_SLICE = 128  # at most 4 MiB of output per call, however close to the limit
_ZSTD_MAX_SLICE = 64 * 1024
# A zstd frame names its window size and the decoder allocates that much. Cap it by the
# decoded-size limit (a bigger window is never needed for a body we would accept) and by
# 128 MiB, zstd's own default cap (``--long`` / ``--ultra`` streams use at most that), but
# allow 8 MiB whatever the limit: streamed frames (no content size) at levels up to 19 use that.
_ZSTD_MIN_WINDOW = 1 << 23
_ZSTD_MAX_WINDOW = 1 << 27


class BodyError(Exception):
    """A request body that cannot be accepted; ``status`` is the HTTP status to answer."""

    status: int = 400


class BodyTooLarge(BodyError):
    """The decoded body is larger than the configured limit."""

    status = 413


class BadEncoding(BodyError):
    """The body is not valid for its ``Content-Encoding`` (corrupt or truncated)."""

    status = 400


class UnsupportedEncoding(BodyError):
    """The ``Content-Encoding`` is not one we decode."""

    status = 415


class Decoder(Protocol):
    """What :func:`make_decoder` returns."""

    decoded_bytes: int

    def feed(self, chunk: bytes) -> bytes:
        """Decode the next chunk of the body; return the decoded bytes (maybe empty)."""
        ...

    def finish(self) -> bytes:
        """Signal the end of the body; return the last decoded bytes.

        :raises BadEncoding: the compressed stream was truncated.
        """
        ...


def make_decoder(
    content_encoding: str | None, max_decoded_bytes: int, sniff_gzip: bool = False
) -> Decoder:
    """Return a streaming decoder for a ``Content-Encoding`` header value.

    :param content_encoding: the header value, or None. Case and surrounding spaces are
        ignored; ``identity`` entries in a list are dropped (``"gzip, identity"`` is gzip).
        Supported: identity (None, ``""``, ``"identity"``), ``gzip`` / ``x-gzip``
        (concatenated members too), ``deflate`` (zlib-wrapped as RFC 9110 says, or raw
        deflate as some clients send), ``zstd`` (several frames too).
    :param max_decoded_bytes: the most decoded bytes accepted; one more raises
        :class:`BodyTooLarge`.
    :param sniff_gzip: when no encoding is named (None or ``""``), decode the body as
        gzip if it starts with the gzip magic ``1f 8b``. No text format we ingest can
        start with those bytes (0x8b is not valid UTF-8 after 0x1f).
    :raises UnsupportedEncoding: any other encoding, or more than one.

    >>> import gzip
    >>> d = make_decoder("gzip", 100)
    >>> d.feed(gzip.compress(b'{"a":1}\\n')) + d.finish()
    b'{"a":1}\\n'
    """
    if max_decoded_bytes < 0:
        raise ValueError("max_decoded_bytes must be >= 0")
    codings = [c.strip().lower() for c in (content_encoding or "").split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if not codings:
        named = bool(content_encoding and content_encoding.strip())
        if sniff_gzip and not named:
            return _SniffDecoder(max_decoded_bytes)
        return _IdentityDecoder(max_decoded_bytes)
    if len(codings) > 1:
        raise UnsupportedEncoding(f"Unsupported Content-Encoding: {content_encoding!r}")
    coding = codings[0]
    if coding in ("gzip", "x-gzip"):
        return _GzipDecoder(max_decoded_bytes)
    if coding == "deflate":
        return _DeflateDecoder(max_decoded_bytes)
    if coding == "zstd":
        return _ZstdDecoder(max_decoded_bytes)
    raise UnsupportedEncoding(f"Unsupported Content-Encoding: {content_encoding!r}")


def _too_large(limit: int) -> BodyTooLarge:
    return BodyTooLarge(f"Decoded body is larger than {limit} bytes")


class _IdentityDecoder:
    def __init__(self, max_decoded_bytes: int) -> None:
        self.decoded_bytes = 0
        self._limit = max_decoded_bytes

    def feed(self, chunk: bytes) -> bytes:
        self.decoded_bytes += len(chunk)
        if self.decoded_bytes > self._limit:
            raise _too_large(self._limit)
        return chunk

    def finish(self) -> bytes:
        return b""


class _ZlibDecoder:
    """gzip (``wbits=16+MAX_WBITS``, members restarted on EOF) or deflate (one stream).

    Each ``decompress`` call is given ``max_length``, and we loop on ``unconsumed_tail``
    until a call returns less than it was allowed: zlib may have consumed all input and
    still hold output (a long match), so an empty tail alone does not mean "drained".
    """

    _multi_member = False

    def __init__(self, max_decoded_bytes: int) -> None:
        self.decoded_bytes = 0
        self._limit = max_decoded_bytes
        self._wbits = 16 + zlib.MAX_WBITS
        self._obj: zlib._Decompress | None = None  # None: between members, or not started
        self._ended = False  # deflate only: the single stream is complete

    def feed(self, chunk: bytes) -> bytes:
        out: list[bytes] = []
        data = chunk
        while data:
            if self._obj is None:
                if self._ended:
                    raise BadEncoding("Unexpected data after the end of the deflate stream")
                self._obj = zlib.decompressobj(self._wbits)
            obj = self._obj
            try:
                while True:
                    room = min(self._limit - self.decoded_bytes + 1, _ZLIB_STEP)
                    piece = obj.decompress(data, room)
                    data = obj.unconsumed_tail
                    if piece:
                        self.decoded_bytes += len(piece)
                        if self.decoded_bytes > self._limit:
                            raise _too_large(self._limit)
                        out.append(piece)
                    if not data and len(piece) < room:
                        break
            except zlib.error as exc:
                raise BadEncoding(f"Invalid {self._name()} data: {exc}") from None
            if obj.eof:
                data = obj.unused_data
                self._obj = None
                self._ended = not self._multi_member
            else:
                data = b""
        return b"".join(out)

    def finish(self) -> bytes:
        if self._obj is not None:
            # Everything was drained in feed(); a stream that is not at EOF is truncated.
            raise BadEncoding(f"Truncated {self._name()} data")
        return b""

    def _name(self) -> str:
        return "gzip" if self._multi_member else "deflate"


class _GzipDecoder(_ZlibDecoder):
    _multi_member = True


class _DeflateDecoder(_ZlibDecoder):
    """``deflate``: RFC 9110 means zlib (RFC 1950), but clients also send raw RFC 1951.

    We tell them apart by the zlib header (two bytes, so the first may arrive alone).
    """

    def __init__(self, max_decoded_bytes: int) -> None:
        super().__init__(max_decoded_bytes)
        self._head = b""  # the first byte, until the second tells zlib from raw
        self._sniffed = False

    def feed(self, chunk: bytes) -> bytes:
        if not self._sniffed:
            chunk = self._head + chunk
            if len(chunk) < 2:
                self._head = chunk
                return b""
            self._head = b""
            self._sniffed = True
            cmf, flg = chunk[0], chunk[1]
            is_zlib = cmf & 0x0F == 8 and cmf >> 4 <= 7 and (cmf << 8 | flg) % 31 == 0
            self._wbits = zlib.MAX_WBITS if is_zlib else -zlib.MAX_WBITS
        return super().feed(chunk)

    def finish(self) -> bytes:
        if self._head:
            raise BadEncoding("Truncated deflate data")
        return super().finish()


class _ZstdDecoder:
    """zstd, one ``decompressobj`` per frame (so a truncated last frame is detectable)."""

    def __init__(self, max_decoded_bytes: int) -> None:
        self.decoded_bytes = 0
        self._limit = max_decoded_bytes
        window = 1 << max(max_decoded_bytes - 1, 1).bit_length()
        window = min(max(window, _ZSTD_MIN_WINDOW), _ZSTD_MAX_WINDOW)
        self._dctx = zstandard.ZstdDecompressor(max_window_size=window)
        self._obj: zstandard.ZstdDecompressionObj | None = None  # None: between frames

    def feed(self, chunk: bytes) -> bytes:
        out: list[bytes] = []
        view = memoryview(chunk)
        pos = 0
        try:
            while pos < len(view):
                if self._obj is None:
                    self._obj = self._dctx.decompressobj()
                obj = self._obj
                remaining = self._limit - self.decoded_bytes
                size = min(max(remaining // _ZSTD_MAX_RATIO, _ZSTD_MIN_SLICE), _ZSTD_MAX_SLICE)
                end = min(pos + size, len(view))
                piece = obj.decompress(view[pos:end])
                pos = end
                if piece:
                    self.decoded_bytes += len(piece)
                    if self.decoded_bytes > self._limit:
                        raise _too_large(self._limit)
                    out.append(piece)
                if obj.eof:
                    # The frame ended inside this slice: give the rest to the next frame.
                    pos -= len(obj.unused_data)
                    self._obj = None
        except zstandard.ZstdError as exc:
            raise BadEncoding(f"Invalid zstd data: {exc}") from None
        return b"".join(out)

    def finish(self) -> bytes:
        if self._obj is not None:
            raise BadEncoding("Truncated zstd data")
        return b""


class _SniffDecoder:
    """No Content-Encoding: gzip if the body starts with ``1f 8b``, else identity."""

    def __init__(self, max_decoded_bytes: int) -> None:
        self.decoded_bytes = 0
        self._limit = max_decoded_bytes
        self._head = b""  # the first byte, while it could still start the magic
        self._inner: _IdentityDecoder | _GzipDecoder | None = None

    def feed(self, chunk: bytes) -> bytes:
        if self._inner is None:
            chunk = self._head + chunk
            if len(chunk) < 2 and GZIP_MAGIC.startswith(chunk):
                self._head = chunk
                return b""
            self._head = b""
            if chunk.startswith(GZIP_MAGIC):
                self._inner = _GzipDecoder(self._limit)
            else:
                self._inner = _IdentityDecoder(self._limit)
        out = self._inner.feed(chunk)
        self.decoded_bytes = self._inner.decoded_bytes
        return out

    def finish(self) -> bytes:
        if self._inner is None:
            # A body of 0 or 1 bytes: plain data.
            inner = _IdentityDecoder(self._limit)
            out = inner.feed(self._head)
            self._head = b""
            self.decoded_bytes = inner.decoded_bytes
            return out
        return self._inner.finish()
