"""Streaming Content-Encoding decoders: chunking invariance, limits, bombs, broken streams."""

from __future__ import annotations

import gzip
import resource
import struct
import time
import tracemalloc
import zlib
from collections.abc import Iterable, Iterator

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyingest.decompress import (
    BadEncoding,
    BodyError,
    BodyTooLarge,
    UnsupportedEncoding,
    make_decoder,
)

DATA = b"".join(b'{"id":%d,"name":"row %d","v":%d.5}\n' % (i, i, i * 7) for i in range(40))
BIG = 1 << 30  # limit that never triggers


def decode(
    encoding: str | None,
    chunks: Iterable[bytes],
    limit: int = BIG,
    sniff_gzip: bool = False,
) -> bytes:
    decoder = make_decoder(encoding, limit, sniff_gzip)
    out = [decoder.feed(chunk) for chunk in chunks]
    out.append(decoder.finish())
    return b"".join(out)


def splits(body: bytes) -> Iterator[list[bytes]]:
    """The body whole, one byte at a time, and cut in two at every offset."""
    yield [body]
    yield [body[i : i + 1] for i in range(len(body))]
    for cut in range(len(body) + 1):
        yield [body[:cut], body[cut:]]


def zlib_stream(data: bytes, wbits: int) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, wbits)
    return compressor.compress(data) + compressor.flush()


def zstd_streamed(*parts: bytes) -> bytes:
    """One frame from the streaming compressor (no content size in the header)."""
    compressor = zstandard.ZstdCompressor().compressobj()
    return b"".join(compressor.compress(part) for part in parts) + compressor.flush()


SKIPPABLE = struct.pack("<II", 0x184D2A50, 4) + b"meta"

ENCODED = {
    "identity": (None, DATA),
    "gzip": ("gzip", gzip.compress(DATA)),
    "gzip-two-members": ("gzip", gzip.compress(DATA[:100]) + gzip.compress(DATA[100:])),
    "gzip-empty-member": ("gzip", gzip.compress(b"") + gzip.compress(DATA)),
    "x-gzip": ("x-gzip", gzip.compress(DATA)),
    "deflate-zlib": ("deflate", zlib.compress(DATA)),
    "deflate-raw": ("deflate", zlib_stream(DATA, -zlib.MAX_WBITS)),
    "zstd": ("zstd", zstandard.ZstdCompressor().compress(DATA)),
    "zstd-streamed": ("zstd", zstd_streamed(DATA[:50], DATA[50:])),
    "zstd-two-frames": (
        "zstd",
        zstandard.ZstdCompressor().compress(DATA[:70])
        + zstandard.ZstdCompressor(level=19).compress(DATA[70:]),
    ),
    "zstd-skippable-frame": (
        "zstd",
        SKIPPABLE + zstandard.ZstdCompressor().compress(DATA),
    ),
}
# Where a body in ENCODED may end early and still be a complete stream (member boundaries).
COMPLETE_PREFIXES = {
    "gzip-two-members": {len(gzip.compress(DATA[:100]))},
    "gzip-empty-member": {len(gzip.compress(b""))},
    "zstd-two-frames": {len(zstandard.ZstdCompressor().compress(DATA[:70]))},
    "zstd-skippable-frame": {len(SKIPPABLE)},
}


@pytest.mark.parametrize("name", sorted(ENCODED))
def test_every_split_decodes_identically(name: str) -> None:
    encoding, body = ENCODED[name]
    for chunks in splits(body):
        assert decode(encoding, chunks) == DATA


@pytest.mark.parametrize(
    "header", ["GZIP", " gzip ", "gzip, identity", "identity, gzip", "X-Gzip"]
)
def test_encoding_header_is_normalised(header: str) -> None:
    assert decode(header, [gzip.compress(DATA)]) == DATA


@pytest.mark.parametrize("header", [None, "", "identity", "Identity", " "])
def test_identity_passes_bytes_through(header: str | None) -> None:
    assert decode(header, [b"\x1f\x8b raw", b" bytes"]) == b"\x1f\x8b raw bytes"


@pytest.mark.parametrize("encoding", [None, "gzip", "deflate", "zstd"])
def test_empty_body_decodes_to_empty(encoding: str | None) -> None:
    assert decode(encoding, []) == b""
    assert decode(encoding, [b"", b""]) == b""


@pytest.mark.parametrize("header", ["br", "compress", "gzip, zstd", "gzip, gzip", "lz4"])
def test_unsupported_encoding_is_415(header: str) -> None:
    with pytest.raises(UnsupportedEncoding) as info:
        make_decoder(header, BIG, sniff_gzip=True)
    assert info.value.status == 415
    assert isinstance(info.value, BodyError)


def test_error_statuses() -> None:
    assert (BodyTooLarge.status, BadEncoding.status, UnsupportedEncoding.status) == (413, 400, 415)


# --- size limit ---


@pytest.mark.parametrize("name", sorted(ENCODED))
def test_limit_is_inclusive(name: str) -> None:
    encoding, body = ENCODED[name]
    assert decode(encoding, [body], limit=len(DATA)) == DATA
    for chunks in ([body], [body[i : i + 1] for i in range(len(body))]):
        with pytest.raises(BodyTooLarge) as info:
            decode(encoding, chunks, limit=len(DATA) - 1)
        assert info.value.status == 413


def test_decoded_bytes_counts_output() -> None:
    decoder = make_decoder("gzip", BIG, False)
    decoder.feed(gzip.compress(DATA))
    decoder.finish()
    assert decoder.decoded_bytes == len(DATA)


BOMB_SIZE = 1 << 30  # 1 GiB of zeros
BOMB_LIMIT = 8 << 20


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    # Level 1: 1 GiB -> ~4.6 MB in ~1.3 s (level 9 is 1 MB but twice as slow).
    compressor = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    parts = [compressor.compress(zeros) for _ in range(BOMB_SIZE // len(zeros))]
    return b"".join(parts) + compressor.flush()


@pytest.fixture(scope="module")
def zstd_bomb() -> bytes:
    zeros = bytes(1 << 20)
    return zstd_streamed(*[zeros] * (BOMB_SIZE // len(zeros)))  # ~32 KB


def assert_bomb_defused(encoding: str, bomb: bytes, chunk_size: int) -> None:
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    decoder = make_decoder(encoding, BOMB_LIMIT, False)
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(BodyTooLarge):
            for pos in range(0, len(bomb), chunk_size):
                decoder.feed(bomb[pos : pos + chunk_size])
            decoder.finish()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    elapsed = time.monotonic() - started
    rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    # Output pieces plus their join: about twice the limit, never near the 1 GiB.
    assert peak < 4 * BOMB_LIMIT, peak
    assert rss_growth < 128 * 1024, rss_growth
    assert decoder.decoded_bytes < BOMB_LIMIT + (4 << 20)
    assert elapsed < 5, elapsed


@pytest.mark.parametrize("chunk_size", [1 << 16, 1 << 30])
def test_gzip_bomb_stops_at_limit(gzip_bomb: bytes, chunk_size: int) -> None:
    assert len(gzip_bomb) < BOMB_SIZE // 100
    assert_bomb_defused("gzip", gzip_bomb, chunk_size)


@pytest.mark.parametrize("chunk_size", [1 << 12, 1 << 30])
def test_zstd_bomb_stops_at_limit(zstd_bomb: bytes, chunk_size: int) -> None:
    assert len(zstd_bomb) < BOMB_SIZE // 1000
    assert_bomb_defused("zstd", zstd_bomb, chunk_size)


def test_sniffed_gzip_bomb_stops_at_limit(gzip_bomb: bytes) -> None:
    with pytest.raises(BodyTooLarge):
        decode(None, [gzip_bomb[:1], gzip_bomb[1:]], limit=BOMB_LIMIT, sniff_gzip=True)


# --- broken streams ---


@pytest.mark.parametrize("name", [n for n in sorted(ENCODED) if ENCODED[n][0]])
def test_truncated_stream_fails_at_finish(name: str) -> None:
    encoding, body = ENCODED[name]
    for cut in range(1, len(body)):
        if cut in COMPLETE_PREFIXES.get(name, ()):
            continue
        decoder = make_decoder(encoding, BIG, False)
        decoder.feed(body[:cut])  # incomplete, not corrupt: no error yet
        with pytest.raises(BadEncoding) as info:
            decoder.finish()
        assert info.value.status == 400


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "zstd"])
@pytest.mark.parametrize(
    "garbage", [b"not compressed at all\n", b"\x00" * 64, b'{"a":1}\n' * 10, b"\x1f\x8b\x09junk"]
)
def test_garbage_is_bad_encoding(encoding: str, garbage: bytes) -> None:
    for chunks in ([garbage], [garbage[i : i + 1] for i in range(len(garbage))]):
        with pytest.raises(BadEncoding):
            decode(encoding, chunks)


def test_gzip_bad_crc_is_bad_encoding() -> None:
    body = bytearray(gzip.compress(DATA))
    body[-8] ^= 0xFF  # CRC32 in the trailer
    with pytest.raises(BadEncoding):
        decode("gzip", [bytes(body)])


def test_gzip_corrupt_deflate_data_is_bad_encoding() -> None:
    body = bytearray(gzip.compress(DATA))
    body[20:30] = b"\xff" * 10
    for chunks in splits(bytes(body)):
        with pytest.raises(BadEncoding):
            decode("gzip", chunks)


@pytest.mark.parametrize("trailer", [b"x", b"\x00\x00\x00\x00", b"\x1f\x8b\x08"])
def test_data_after_gzip_member_must_be_a_member(trailer: bytes) -> None:
    with pytest.raises(BadEncoding):
        decode("gzip", [gzip.compress(DATA) + trailer])


def test_data_after_deflate_stream_is_bad_encoding() -> None:
    with pytest.raises(BadEncoding):
        decode("deflate", [zlib.compress(DATA) + b"extra"])


def test_zstd_window_larger_than_limit_is_refused() -> None:
    # A frame whose window (content size, single segment) is 64 MiB, under a 1 MiB limit.
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=26)
    body = zstandard.ZstdCompressor(compression_params=params).compress(
        bytes(range(256)) * (1 << 18)
    )
    with pytest.raises((BadEncoding, BodyTooLarge)):
        decode("zstd", [body], limit=1 << 20)


# --- gzip sniffing ---


def test_sniffed_gzip_with_magic_split_at_every_offset() -> None:
    body = gzip.compress(DATA)
    for chunks in splits(body):
        assert decode(None, chunks, sniff_gzip=True) == DATA
    assert decode(None, [b"", b"\x1f", b"", b"\x8b", body[2:]], sniff_gzip=True) == DATA


@pytest.mark.parametrize("body", [b"\x1f", b"\x1fX", b"\x1f\x1f\x8b", b"\x8b\x1f", b"{}\n"])
def test_sniff_leaves_other_bodies_alone(body: bytes) -> None:
    for chunks in splits(body):
        assert decode(None, chunks, sniff_gzip=True) == body
        assert decode("", chunks, sniff_gzip=True) == body


def test_no_sniffing_unless_asked_or_when_identity_is_named() -> None:
    body = gzip.compress(DATA)
    assert decode(None, [body], sniff_gzip=False) == body
    assert decode("identity", [body], sniff_gzip=True) == body


def test_sniffed_truncated_gzip_fails_at_finish() -> None:
    body = gzip.compress(DATA)
    with pytest.raises(BadEncoding):
        decode(None, [body[:-3]], sniff_gzip=True)


def test_sniffed_body_counts_toward_limit() -> None:
    with pytest.raises(BodyTooLarge):
        decode(None, [b"\x1f", b"abc"], limit=3, sniff_gzip=True)
    assert decode(None, [b"\x1f", b"ab"], limit=3, sniff_gzip=True) == b"\x1fab"


# --- property: random data, random cuts ---


def compress(encoding: str, data: bytes, members: int) -> bytes:
    cut = len(data) // members if members else 0
    pieces = [data[:cut], data[cut:]] if members > 1 else [data]
    if encoding == "gzip":
        return b"".join(gzip.compress(piece) for piece in pieces)
    if encoding == "zstd":
        return b"".join(zstandard.ZstdCompressor().compress(piece) for piece in pieces)
    if encoding == "deflate":
        return zlib.compress(data)
    return data


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=3000) | st.builds(lambda n: b"abc\n" * n, st.integers(0, 5000)),
    encoding=st.sampled_from(["identity", "gzip", "deflate", "zstd"]),
    members=st.integers(1, 2),
    cuts=st.lists(st.integers(0, 1 << 20), max_size=8),
    sniff=st.booleans(),
)
def test_random_split_points_give_identical_output(
    data: bytes, encoding: str, members: int, cuts: list[int], sniff: bool
) -> None:
    body = compress(encoding, data, members)
    points = sorted({0, len(body), *(cut % (len(body) + 1) for cut in cuts)})
    chunks = [body[start:end] for start, end in zip(points, points[1:])]
    assert decode(encoding, chunks, sniff_gzip=sniff) == data
    if encoding == "gzip":
        assert decode(None, chunks, sniff_gzip=True) == data


# --- bounded pieces, ratio, window (issue 18) ---


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
def test_a_bomb_comes_out_in_bounded_pieces(encoding: str, gzip_bomb: bytes,
                                            zstd_bomb: bytes) -> None:
    # Under a limit above the bomb's size, one chunk still never decodes in one go.
    bomb = gzip_bomb if encoding == "gzip" else zstd_bomb
    decoder = make_decoder(encoding, 2 * BOMB_SIZE)
    largest = total = 0
    for piece in decoder.pieces(bomb[: 64 << 10]):
        largest = max(largest, len(piece))
        total += len(piece)
    assert total > 8 << 20  # a real bomb
    assert largest <= 4 << 20, largest


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "zstd"])
def test_ratio_limit(encoding: str) -> None:
    from tinyingest.decompress import RATIO_SLACK, RatioTooHigh

    bomb = {"gzip": gzip.compress, "deflate": zlib.compress,
            "zstd": zstandard.ZstdCompressor().compress}[encoding](bytes(16 << 20))
    decoder = make_decoder(encoding, BIG, max_ratio=100)
    with pytest.raises(RatioTooHigh) as info:
        decoder.feed(bomb)
    assert info.value.status == 413
    assert decoder.decoded_bytes < 100 * len(bomb) + RATIO_SLACK + (4 << 20)
    # Ordinary bodies, and small ones that compress very well, pass.
    assert decode(encoding, [ENCODED[encoding if encoding != "deflate" else "deflate-zlib"][1]])
    small = bytes(RATIO_SLACK // 2)
    decoder = make_decoder(encoding, BIG, max_ratio=2)
    compressed = {"gzip": gzip.compress, "deflate": zlib.compress,
                  "zstd": zstandard.ZstdCompressor().compress}[encoding](small)
    assert decoder.feed(compressed) + decoder.finish() == small


def test_zstd_window_is_bounded_whatever_the_limit() -> None:
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=24)
    compressor = zstandard.ZstdCompressor(compression_params=params).compressobj()
    body = compressor.compress(DATA) + compressor.flush()  # streamed: a 16 MiB window
    with pytest.raises(BadEncoding, match="window"):
        decode("zstd", [body], limit=8 << 30)
