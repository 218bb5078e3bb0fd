"""Streaming decoders for request bodies (``Content-Encoding``), with a limit on decoded size.

The ingest handler is a ``@stream_request_body`` handler, so the body arrives in chunks and
is decoded chunk by chunk::

    decoder = make_decoder(request.headers.get("Content-Encoding"), max_decoded_bytes, sniff_gzip=True)
    for chunk in chunks:
        parser.feed(decoder.feed(chunk))
    parser.feed(decoder.finish())

Every decoder counts its *decoded* output and raises :class:`BodyTooLarge` as soon as it
would pass ``max_decoded_bytes``, or ``max_ratio`` times the encoded bytes read so far
(past the first :data:`RATIO_SLACK` bytes). Decompression runs in bounded steps, so a small
compressed chunk that expands to gigabytes (a "gzip bomb") stops at the limit, after
allocating at most a small, fixed amount beyond it; Tornado's own
``decompress_request`` had no such limit before 6.5.6 (reliability.md, finding 8 and
catalog D3). :meth:`Decoder.pieces` yields a chunk's output in those steps, so that the
caller can parse each and let other requests run between them (``feed`` joins them).

Errors share the base :class:`BodyError`, whose ``status`` is the HTTP status to answer:
:class:`BodyTooLarge` (413), :class:`BadEncoding` (400: corrupt, or truncated, which is
only known at :meth:`Decoder.finish`), :class:`UnsupportedEncoding` (415).

An empty body decodes to an empty body under every encoding (it is not "truncated").
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Protocol

import zstandard

__all__ = [
    "BadEncoding",
    "BodyError",
    "BodyTooLarge",
    "RatioTooHigh",
    "Decoder",
    "UnsupportedEncoding",
    "make_decoder",
]

GZIP_MAGIC = b"\x1f\x8b"

#: Decoded bytes always accepted whatever the ratio: small bodies compress very well.
RATIO_SLACK = 1 << 20

# Largest output asked of zlib in one call: the bound on what a decoder can allocate in one
# step beyond the limit (each step asks for at most ``remaining + 1`` bytes anyway).
_ZLIB_STEP = 256 * 1024

# python-zstandard's decompressobj has no ``max_length``: one call decodes all it is given.
# So we hand it input in slices small enough that the output stays bounded. A zstd block
# decodes to at most 128 KiB and the densest block (RLE) takes 4 bytes, so one input byte
# yields at most 2**15 output bytes: 128 input bytes, at most 4 MiB per call (slicing that
# fine costs about 1 % of a decode).
_ZSTD_SLICE = 128
# A zstd frame names its window size and the decoder allocates that much, per request.
# 8 MiB is what zstd itself uses for streamed frames at levels up to 19 (a frame with a
# content size needs at most that size); --long and --ultra frames ask for up to 2 GiB.
ZSTD_MAX_WINDOW = 1 << 23


class BodyError(Exception):
    """A request body that cannot be accepted; ``status`` is the HTTP status to answer."""

    status: int = 400


class BodyTooLarge(BodyError):
    """The decoded body is larger than the configured limit."""

    status = 413


class RatioTooHigh(BodyTooLarge):
    """The body decodes to more than ``max_ratio`` times its encoded size."""


class BadEncoding(BodyError):
    """The body is not valid for its ``Content-Encoding`` (corrupt or truncated)."""

    status = 400


class UnsupportedEncoding(BodyError):
    """The ``Content-Encoding`` is not one we decode."""

    status = 415


class Decoder(Protocol):
    """What :func:`make_decoder` returns."""

    decoded_bytes: int

    def pieces(self, chunk: bytes) -> Iterator[bytes]:
        """Decode the next chunk of the body, in pieces of bounded size (maybe none)."""
        ...

    def feed(self, chunk: bytes) -> bytes:
        """Decode the next chunk of the body; return the decoded bytes (maybe empty)."""
        ...

    def finish(self) -> bytes:
        """Signal the end of the body; return the last decoded bytes.

        :raises BadEncoding: the compressed stream was truncated.
        """
        ...


def make_decoder(
    content_encoding: str | None, max_decoded_bytes: int, sniff_gzip: bool = False,
    max_ratio: int = 0,
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
    :param max_ratio: if not 0, more than ``max_ratio`` decoded bytes per encoded byte
        (past the first :data:`RATIO_SLACK` decoded bytes) raises :class:`RatioTooHigh`.
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
            return _SniffDecoder(max_decoded_bytes, max_ratio)
        return _IdentityDecoder(max_decoded_bytes)
    if len(codings) > 1:
        raise UnsupportedEncoding(f"Unsupported Content-Encoding: {content_encoding!r}")
    coding = codings[0]
    if coding in ("gzip", "x-gzip"):
        return _GzipDecoder(max_decoded_bytes, max_ratio)
    if coding == "deflate":
        return _DeflateDecoder(max_decoded_bytes, max_ratio)
    if coding == "zstd":
        return _ZstdDecoder(max_decoded_bytes, max_ratio)
    raise UnsupportedEncoding(f"Unsupported Content-Encoding: {content_encoding!r}")


def _too_large(limit: int) -> BodyTooLarge:
    return BodyTooLarge(f"Decoded body is larger than {limit} bytes")


class _Counter:
    """Counts encoded input and decoded output against the size and ratio limits."""

    def __init__(self, max_decoded_bytes: int, max_ratio: int = 0) -> None:
        self.decoded_bytes = 0
        self._limit = max_decoded_bytes
        self._ratio = max_ratio
        self._encoded = 0

    def _count(self, decoded: int) -> None:
        self.decoded_bytes += decoded
        if self.decoded_bytes > self._limit:
            raise _too_large(self._limit)
        if self._ratio and self.decoded_bytes > self._ratio * self._encoded + RATIO_SLACK:
            raise RatioTooHigh(f"Decoded body is more than {self._ratio} times its "
                               f"compressed size (after {self.decoded_bytes} bytes)")

    def feed(self, chunk: bytes) -> bytes:
        return b"".join(self.pieces(chunk))

    def pieces(self, chunk: bytes) -> Iterator[bytes]:
        raise NotImplementedError


class _IdentityDecoder(_Counter):
    def pieces(self, chunk: bytes) -> Iterator[bytes]:
        if chunk:
            self._count(len(chunk))
            yield chunk

    def feed(self, chunk: bytes) -> bytes:
        self._count(len(chunk))
        return chunk

    def finish(self) -> bytes:
        return b""


class _ZlibDecoder(_Counter):
    """gzip (``wbits=16+MAX_WBITS``, members restarted on EOF) or deflate (one stream).

    Each ``decompress`` call is given ``max_length``, and we loop on ``unconsumed_tail``
    until a call returns less than it was allowed: zlib may have consumed all input and
    still hold output (a long match), so an empty tail alone does not mean "drained".
    """

    _multi_member = False

    def __init__(self, max_decoded_bytes: int, max_ratio: int = 0) -> None:
        super().__init__(max_decoded_bytes, max_ratio)
        self._wbits = 16 + zlib.MAX_WBITS
        self._obj: zlib._Decompress | None = None  # None: between members, or not started
        self._ended = False  # deflate only: the single stream is complete

    def pieces(self, chunk: bytes) -> Iterator[bytes]:
        self._encoded += len(chunk)
        data = chunk
        while data:
            if self._obj is None:
                if self._ended:
                    raise BadEncoding("Unexpected data after the end of the deflate stream")
                self._obj = zlib.decompressobj(self._wbits)
            obj = self._obj
            while True:
                room = min(self._limit - self.decoded_bytes + 1, _ZLIB_STEP)
                try:
                    piece = obj.decompress(data, room)
                except zlib.error as exc:
                    raise BadEncoding(f"Invalid {self._name()} data: {exc}") from None
                data = obj.unconsumed_tail
                if piece:
                    self._count(len(piece))
                    yield piece
                if not data and len(piece) < room:
                    break
            if obj.eof:
                data = obj.unused_data
                self._obj = None
                self._ended = not self._multi_member
            else:
                data = b""

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

    def __init__(self, max_decoded_bytes: int, max_ratio: int = 0) -> None:
        super().__init__(max_decoded_bytes, max_ratio)
        self._head = b""  # the first byte, until the second tells zlib from raw
        self._sniffed = False

    def pieces(self, chunk: bytes) -> Iterator[bytes]:
        if not self._sniffed:
            chunk = self._head + chunk
            if len(chunk) < 2:
                self._head = chunk
                return
            self._head = b""
            self._sniffed = True
            cmf, flg = chunk[0], chunk[1]
            is_zlib = cmf & 0x0F == 8 and cmf >> 4 <= 7 and (cmf << 8 | flg) % 31 == 0
            self._wbits = zlib.MAX_WBITS if is_zlib else -zlib.MAX_WBITS
        yield from super().pieces(chunk)

    def finish(self) -> bytes:
        if self._head:
            raise BadEncoding("Truncated deflate data")
        return super().finish()


class _ZstdDecoder(_Counter):
    """zstd, one ``decompressobj`` per frame (so a truncated last frame is detectable)."""

    def __init__(self, max_decoded_bytes: int, max_ratio: int = 0) -> None:
        super().__init__(max_decoded_bytes, max_ratio)
        self._dctx = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW)
        self._obj: zstandard.ZstdDecompressionObj | None = None  # None: between frames

    def pieces(self, chunk: bytes) -> Iterator[bytes]:
        view = memoryview(chunk)
        pos = 0
        while pos < len(view):
            if self._obj is None:
                self._obj = self._dctx.decompressobj()
            obj = self._obj
            end = min(pos + _ZSTD_SLICE, len(view))
            try:
                piece = obj.decompress(view[pos:end])
            except zstandard.ZstdError as exc:
                if "too much memory" in str(exc):
                    raise BadEncoding(
                        f"zstd frame needs a window larger than {ZSTD_MAX_WINDOW >> 20} MiB, "
                        "the most accepted: compress without --long or --ultra") from None
                raise BadEncoding(f"Invalid zstd data: {exc}") from None
            self._encoded += end - pos
            pos = end
            if obj.eof:
                # The frame ended inside this slice: give the rest to the next frame.
                pos -= len(obj.unused_data)
                self._encoded -= len(obj.unused_data)
                self._obj = None
            if piece:
                self._count(len(piece))
                yield piece

    def finish(self) -> bytes:
        if self._obj is not None:
            raise BadEncoding("Truncated zstd data")
        return b""


class _SniffDecoder:
    """No Content-Encoding: gzip if the body starts with ``1f 8b``, else identity."""

    def __init__(self, max_decoded_bytes: int, max_ratio: int = 0) -> None:
        self.decoded_bytes = 0
        self._limit = max_decoded_bytes
        self._ratio = max_ratio
        self._head = b""  # the first byte, while it could still start the magic
        self._inner: _IdentityDecoder | _GzipDecoder | None = None

    def pieces(self, chunk: bytes) -> Iterator[bytes]:
        if self._inner is None:
            chunk = self._head + chunk
            if len(chunk) < 2 and GZIP_MAGIC.startswith(chunk):
                self._head = chunk
                return
            self._head = b""
            if chunk.startswith(GZIP_MAGIC):
                self._inner = _GzipDecoder(self._limit, self._ratio)
            else:
                self._inner = _IdentityDecoder(self._limit)
        for piece in self._inner.pieces(chunk):
            self.decoded_bytes = self._inner.decoded_bytes
            yield piece

    def feed(self, chunk: bytes) -> bytes:
        return b"".join(self.pieces(chunk))

    def finish(self) -> bytes:
        if self._inner is None:
            # A body of 0 or 1 bytes: plain data.
            inner = _IdentityDecoder(self._limit)
            out = inner.feed(self._head)
            self._head = b""
            self.decoded_bytes = inner.decoded_bytes
            return out
        return self._inner.finish()
