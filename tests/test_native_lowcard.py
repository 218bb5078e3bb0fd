"""``_encode.encode_low_cardinality`` equals ``native.encode_low_cardinality_py`` byte for byte.

Random inputs with and without null maps, the empty and one-row blocks, and enough
distinct values (> 256, > 65536) that the index width grows from UInt8 to UInt32.
"""

from __future__ import annotations

import array
import random
import struct
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parsers import encoders
from tinyingest.native import encode_low_cardinality, encode_low_cardinality_py

Encoder = Callable[..., bytes]


@pytest.fixture
def encode_c() -> Encoder:
    module = encoders()
    encoder: Encoder = module.encode_low_cardinality
    return encoder


def strings(values: list[bytes]) -> tuple[bytes, bytes]:
    bounds = array.array("q", [0])
    for value in values:
        bounds.append(bounds[-1] + len(value))
    return bounds.tobytes(), b"".join(values)


def both(encode_c: Encoder, values: list[bytes], nulls: bytes | None) -> bytes:
    offsets, data = strings(values)
    expected = encode_low_cardinality_py(offsets, data, nulls)
    assert encode_c(offsets, data, nulls) == expected
    # Any buffer, as the parsers' ColumnData may hold bytes or bytearrays.
    assert encode_c(bytearray(offsets), memoryview(data), nulls) == expected
    return expected


def test_the_package_uses_the_compiled_encoder(encode_c: Encoder) -> None:
    assert encode_low_cardinality is encode_c


def test_empty(encode_c: Encoder) -> None:
    assert both(encode_c, [], None) == b""
    assert both(encode_c, [], b"") == b""
    assert encode_c(b"", b"") == encode_low_cardinality_py(b"", b"") == b""


@pytest.mark.parametrize("nulls", [None, b"\x00", b"\x01"])
@pytest.mark.parametrize("value", [b"", b"x", "é".encode(), b"\x00" * 9])
def test_one_row(encode_c: Encoder, value: bytes, nulls: bytes | None) -> None:
    both(encode_c, [value], nulls)


def test_golden_bytes(encode_c: Encoder) -> None:
    # The docstring example of encode_low_cardinality_py.
    offsets, data = strings([b"a", b"b", b"a"])
    assert encode_c(offsets, data).hex() == (
        "010000000000000000060000000000000200000000000000016101620300000000000000000100")


@pytest.mark.parametrize(("distinct", "width_code", "nullable"), [
    (255, 0, True), (256, 0, False), (256, 1, True), (257, 1, False),
    (65536, 1, False), (65536, 2, True), (70000, 2, False),
])
def test_index_width_follows_dictionary_size(encode_c: Encoder, distinct: int, width_code: int,
                                             nullable: bool) -> None:
    rng = random.Random(distinct)
    values = [b"v%d" % i for i in range(distinct)]
    values += [rng.choice(values) for _ in range(1000)]
    nulls = bytes(rng.random() < 0.2 for _ in values) if nullable else None
    if nulls is not None:
        # Every distinct value stays in the dictionary: only repeats may be NULL.
        nulls = bytes(distinct) + nulls[distinct:]
    payload = both(encode_c, values, nulls)
    version, flags, size = struct.unpack_from("<QQQ", payload)
    assert (version, flags & 0xFF, size) == (1, width_code, distinct + (1 if nullable else 0))


def test_many_rows_few_values(encode_c: Encoder) -> None:
    rng = random.Random(7)
    values = [rng.choice([b"", b"GET", b"POST", b"x" * 100]) for _ in range(50_000)]
    both(encode_c, values, None)
    both(encode_c, values, bytes(rng.random() < 0.5 for _ in values))


def test_nonzero_null_flags_are_null(encode_c: Encoder) -> None:
    both(encode_c, [b"a", b"b", b"c"], b"\x00\x02\xff")


def test_colliding_hash_buckets(encode_c: Encoder) -> None:
    # Values sharing prefixes and lengths, NUL bytes, lengths around the 8-byte words.
    values = [bytes([i % 256]) * (i % 17) + b"\x00" * (i % 3) for i in range(3000)]
    both(encode_c, values + values[::-1], None)


def test_null_flag_count_must_match(encode_c: Encoder) -> None:
    offsets, data = strings([b"a", b"b"])
    for encode in (encode_c, encode_low_cardinality_py):
        with pytest.raises(ValueError, match="1 null flags for 2 rows"):
            encode(offsets, data, b"\x00")


@pytest.mark.parametrize("bounds", [[0, 5], [0, 2, 1], [-1, 0]])
def test_bad_offsets_are_rejected(encode_c: Encoder, bounds: list[int]) -> None:
    with pytest.raises(ValueError):
        encode_c(array.array("q", bounds).tobytes(), b"abc")


@settings(deadline=None, max_examples=150, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # stateless fixture
@given(values=st.lists(st.binary(max_size=12) | st.sampled_from([b"", b"a", b"ab"]), max_size=60),
       data=st.data())
def test_random(encode_c: Encoder, values: list[bytes], data: st.DataObject) -> None:
    nulls = data.draw(st.none() | st.binary(min_size=len(values), max_size=len(values)))
    both(encode_c, values, nulls)
