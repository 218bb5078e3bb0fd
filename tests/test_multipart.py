"""Streaming multipart/form-data reader: real client bodies, chunking invariance, limits."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterable, Iterator

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tinyingest.decompress import BodyError
from tinyingest.multipart import BadMultipart, MultipartReader, parse_boundary

CSV = b'id,name\n1,"a\r\n--x"\n2,b\n'

# Recorded from curl 7.88.1: `curl -F mode=append -F csv=@data.csv URL` (data.csv = CSV).
CURL_FILE_TYPE = "multipart/form-data; boundary=------------------------d99d23a92693aa2e"
CURL_FILE_BODY = (
    b"--------------------------d99d23a92693aa2e\r\n"
    b'Content-Disposition: form-data; name="mode"\r\n'
    b"\r\n"
    b"append\r\n"
    b"--------------------------d99d23a92693aa2e\r\n"
    b'Content-Disposition: form-data; name="csv"; filename="data.csv"\r\n'
    b"Content-Type: application/octet-stream\r\n"
    b"\r\n" + CSV + b"\r\n"
    b"--------------------------d99d23a92693aa2e--\r\n"
)
# Recorded from curl 7.88.1: `curl -F 'csv=<data.csv' URL` (content, no filename).
CURL_FIELD_TYPE = "multipart/form-data; boundary=------------------------4762aa3fecaaaa85"
CURL_FIELD_BODY = (
    b"--------------------------4762aa3fecaaaa85\r\n"
    b'Content-Disposition: form-data; name="csv"\r\n'
    b"\r\n" + CSV + b"\r\n"
    b"--------------------------4762aa3fecaaaa85--\r\n"
)


def requests_body(boundary: bytes, fields: dict[str, bytes], files: dict[str, bytes]) -> bytes:
    """What ``requests.post(data=fields, files=files)`` sends (urllib3's encoder)."""
    out = b""
    for name, value in fields.items():
        out += b"--" + boundary + b"\r\n"
        out += b'Content-Disposition: form-data; name="%s"\r\n\r\n' % name.encode()
        out += value + b"\r\n"
    for name, value in files.items():
        out += b"--" + boundary + b"\r\n"
        out += b'Content-Disposition: form-data; name="%s"; filename="%s"\r\n' % (
            name.encode(),
            name.encode() + b".ndjson",
        )
        out += b"\r\n" + value + b"\r\n"
    return out + b"--" + boundary + b"--\r\n"


def read(boundary: bytes, chunks: Iterable[bytes], **limits: int) -> bytes:
    reader = MultipartReader(boundary, **limits)
    out = b"".join(reader.feed(chunk) for chunk in chunks)
    reader.finish()
    return out


def splits(body: bytes, every_offset: bool = True) -> Iterator[list[bytes]]:
    """The body whole, one byte at a time, and (if asked) cut in two at every offset."""
    yield [body]
    yield [body[i : i + 1] for i in range(len(body))]
    if every_offset:
        for cut in range(len(body) + 1):
            yield [body[:cut], body[cut:]]


def assert_reads(boundary: bytes, body: bytes, expected: bytes, **limits: int) -> None:
    for chunks in splits(body, every_offset=len(body) < 4000):
        assert read(boundary, chunks, **limits) == expected


def assert_fails(boundary: bytes, body: bytes, **limits: int) -> None:
    for chunks in splits(body, every_offset=len(body) < 4000):
        with pytest.raises(BadMultipart):
            read(boundary, chunks, **limits)


# --- parse_boundary ---


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (CURL_FILE_TYPE, b"------------------------d99d23a92693aa2e"),
        ('multipart/form-data; boundary="a b;c"', b"a b;c"),
        ("Multipart/Form-Data;charset=utf-8;BOUNDARY=xyz", b"xyz"),
        ('multipart/form-data; boundary="q\\"x"', b'q"x'),
        ("multipart/form-data; boundary=" + "a" * 70, b"a" * 70),
        ("multipart/form-data; boundary=" + "a" * 71, None),
        ("multipart/form-data", None),
        ("multipart/form-data; boundary=", None),
        ('multipart/form-data; boundary=""', None),
        ("multipart/mixed; boundary=abc", None),
        ("application/x-ndjson", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_boundary(header: str | None, expected: bytes | None) -> None:
    assert parse_boundary(header) == expected


# --- real clients ---


def test_curl_file_upload_after_a_field() -> None:
    boundary = parse_boundary(CURL_FILE_TYPE)
    assert boundary is not None
    assert_reads(boundary, CURL_FILE_BODY, CSV)
    reader = MultipartReader(boundary)
    reader.feed(CURL_FILE_BODY)
    assert (reader.name, reader.filename, reader.content_type) == (
        "csv",
        "data.csv",
        "application/octet-stream",
    )


def test_curl_field_without_filename_is_taken() -> None:
    boundary = parse_boundary(CURL_FIELD_TYPE)
    assert boundary is not None
    assert_reads(boundary, CURL_FIELD_BODY, CSV)
    reader = MultipartReader(boundary)
    reader.feed(CURL_FIELD_BODY)
    reader.finish()
    assert (reader.name, reader.filename) == ("csv", None)


def test_requests_fields_come_before_the_file() -> None:
    boundary = b"0f3c2a9d5e6b4c7d8e9f0a1b2c3d4e5f"
    rows = b'{"a":1}\r\n{"a":2}\r\n'
    body = requests_body(
        boundary,
        {"mode": b"append", "name": b"events"},
        {"ndjson": rows, "other": b"ignored"},
    )
    assert_reads(boundary, body, rows)


def test_boundary_like_text_inside_content() -> None:
    boundary = b"XyZ"
    content = (
        b"--XyZ at line start without CR\n"
        b"\r\n--XyZx followed by a letter\r\n"
        b"\r\n--XyZ-x one dash\r\n"
        b"\r\n--Xy partial\r\n"
        b"\n--XyZ\n bare LF before\r\n"
        b"\r\r\n--XY case differs\r\n"
        b"ends with a partial delimiter \r\n--Xy"
    )
    body = (
        b"--XyZ\r\nContent-Disposition: form-data; name=f; filename=f.txt\r\n\r\n"
        + content
        + b"\r\n--XyZ--\r\n"
    )
    assert_reads(boundary, body, content)


def test_preamble_and_epilogue_are_ignored() -> None:
    body = (
        b"This is the preamble. --b is not here\r\n--bb neither\r\n"
        b"--b\r\n"
        b'Content-Disposition: form-data; name="csv"; filename="x.csv"\r\n\r\n'
        b"a,b\r\n1,2\r\n"
        b"\r\n--b--\r\n"
        b"epilogue \r\n--b\r\n not a part\r\n--b--"
    )
    assert_reads(b"b", body, b"a,b\r\n1,2\r\n")


def test_transport_padding_after_boundary() -> None:
    body = (
        b"--b \t \r\nContent-Disposition: form-data; name=f; filename=g\r\n\r\n"
        b"data\r\n--b--"
    )
    assert_reads(b"b", body, b"data")


def test_bare_lf_line_endings_in_headers() -> None:
    body = b'--b\nContent-Disposition: form-data; name="f"; filename="g"\n\ndata\r\n--b--\n'
    assert_reads(b"b", body, b"data")


def test_part_without_headers() -> None:
    assert_reads(b"b", b"--b\r\n\r\nraw data\r\n--b--\r\n", b"raw data")


def test_empty_file() -> None:
    body = b"--b\r\nContent-Disposition: form-data; name=f; filename=e\r\n\r\n\r\n--b--\r\n"
    assert_reads(b"b", body, b"")


def test_filename_star_and_header_parameter_quirks() -> None:
    body = (
        b"--b\r\n"
        b"content-disposition:form-data;name=\"f\";filename*=UTF-8''r%C3%A9sum%C3%A9.csv\r\n"
        b"CONTENT-TYPE:  text/csv \r\n\r\n"
        b"x\r\n--b--\r\n"
    )
    reader = MultipartReader(b"b")
    assert reader.feed(body) == b"x"
    reader.finish()
    assert (reader.name, reader.filename, reader.content_type) == ("f", "résumé.csv", "text/csv")


def test_only_the_first_file_part_is_read() -> None:
    body = (
        b"--b\r\nContent-Disposition: form-data; name=a; filename=1\r\n\r\nfirst\r\n"
        b"--b\r\nContent-Disposition: form-data; name=b; filename=2\r\n\r\nsecond\r\n"
        b"--b--\r\n"
    )
    assert_reads(b"b", body, b"first")


def test_garbage_after_the_file_part_is_consumed_and_ignored() -> None:
    body = (
        b"--b\r\nContent-Disposition: form-data; name=a; filename=1\r\n\r\nfile\r\n"
        b"--b\r\n" + b"H" * 100_000  # a part with endless headers, never closed
    )
    assert_reads(b"b", body, b"file")


def test_file_part_ending_without_closing_delimiter_is_accepted() -> None:
    body = b"--b\r\nContent-Disposition: form-data; name=a; filename=1\r\n\r\nfile\r\n--b\r\n"
    assert_reads(b"b", body, b"file")


# --- which part: the first with a filename, else the first ---


def field(name: bytes, value: bytes) -> bytes:
    return b"--b\r\nContent-Disposition: form-data; name=" + name + b"\r\n\r\n" + value + b"\r\n"


def file(name: bytes, value: bytes) -> bytes:
    return (
        b"--b\r\nContent-Disposition: form-data; name=" + name + b'; filename="f"\r\n\r\n'
        + value + b"\r\n"
    )


def test_first_part_taken_when_no_part_has_a_filename() -> None:
    body = field(b"csv", b"1,2\r\n3,4") + field(b"mode", b"append") + b"--b--\r\n"
    assert_reads(b"b", body, b"1,2\r\n3,4")


def test_file_part_preferred_over_earlier_fields() -> None:
    body = field(b"mode", b"append") + field(b"x", b"y") + file(b"csv", b"data") + b"--b--"
    assert_reads(b"b", body, b"data")


def test_long_first_field_is_taken_as_the_data() -> None:
    value = b"row\n" * 30
    body = field(b"csv", value) + file(b"other", b"ignored") + b"--b--\r\n"
    assert_reads(b"b", body, value, max_field_bytes=100)
    # Exactly at the limit it is still only a field.
    assert_reads(b"b", body, b"ignored", max_field_bytes=len(value))


def test_first_field_is_released_only_at_the_closing_delimiter() -> None:
    reader = MultipartReader(b"b")
    assert reader.feed(field(b"csv", b"abc") + field(b"mode", b"append")) == b""
    assert reader.feed(b"--b--") == b"abc"
    reader.finish()


def test_fields_only_body_truncated_is_an_error() -> None:
    assert_fails(b"b", field(b"csv", b"abc") + field(b"mode", b"append"))


# --- malformed bodies ---


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"no boundary here at all\r\n",
        b"--b--\r\n",  # closed with no part
        b"--bb\r\n\r\ndata\r\n--bb--",  # another boundary
        b"--b\r\nContent-Disposition: form-data; name=f; filename=g\r\n\r\ndata",
        b"--b\r\nContent-Disposition: form-data; name=f; filename=g\r\n\r\ndata\r\n--b",
        b"--b\r\nContent-Disposition: form-data; name=f; filename=g\r\n",
        b"--b\r\nContent-Disposition: form-data; name=f; filename=g",
        b"--b",
    ],
)
def test_truncated_or_partless_body_fails_at_finish(body: bytes) -> None:
    assert_fails(b"b", body)
    reader = MultipartReader(b"b")
    reader.feed(body)  # no error until the end is known
    with pytest.raises(BadMultipart) as info:
        reader.finish()
    assert info.value.status == 400
    assert isinstance(info.value, BodyError)


def test_header_block_limit() -> None:
    headers = b"Content-Disposition: form-data; name=f; filename=g\r\nX-Pad: "
    for size, ok in ((100, True), (101, False)):
        pad = b"p" * (size - len(headers) - 2)  # block = CRLF-ended lines before the blank one
        body = b"--b\r\n" + headers + pad + b"\r\n\r\ndata\r\n--b--"
        if ok:
            assert_reads(b"b", body, b"data", max_header_bytes=100)
        else:
            assert_fails(b"b", body, max_header_bytes=100)


def test_endless_headers_fail_before_the_end() -> None:
    reader = MultipartReader(b"b")
    reader.feed(b"--b\r\nX-Pad: ")
    with pytest.raises(BadMultipart):
        for _ in range(100):
            reader.feed(b"p" * 1024)


def test_endless_padding_after_boundary_fails() -> None:
    assert_fails(b"b", b"--b" + b" " * 200 + b"\r\n\r\nx\r\n--b--", max_header_bytes=100)


def test_empty_boundary_is_refused() -> None:
    with pytest.raises(ValueError):
        MultipartReader(b"")


# --- memory ---


def test_streaming_a_large_file_keeps_memory_flat() -> None:
    boundary = b"----WebKitFormBoundary7MA4YWxkTrZu0gW"
    chunk = (b"0123456789abcdef\r\n--" + boundary[:-1] + b"\r\n") * 1000
    reader = MultipartReader(boundary)
    head = b"--" + boundary + b'\r\nContent-Disposition: form-data; name="f"; filename="f"\r\n\r\n'
    total = len(reader.feed(head))
    tracemalloc.start()
    try:
        for _ in range(32 << 20 // len(chunk)):
            total += len(reader.feed(chunk))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    total += len(reader.feed(b"\r\n--" + boundary + b"--\r\n"))
    reader.finish()
    assert total == (32 << 20 // len(chunk)) * len(chunk)
    assert peak < 8 * len(chunk), peak  # a few chunk-sized copies, not the body


# --- properties ---

PIECES = [b"\r\n", b"\r", b"\n", b"--", b"-", b"bnd", b"bn", b"x", b" ", b"\r\n--bnd", b"\r\n--bn"]


@settings(max_examples=400, deadline=None)
@given(
    content=st.lists(st.sampled_from(PIECES), max_size=30).map(b"".join),
    before=st.sampled_from([b"", b"preamble\r\n", field(b"mode", b"append").replace(b"--b", b"--bnd")]),
    with_filename=st.booleans(),
    cuts=st.lists(st.integers(0, 10_000), max_size=10),
)
def test_random_content_and_split_points(
    content: bytes, before: bytes, with_filename: bool, cuts: list[int]
) -> None:
    disposition = b'form-data; name="csv"' + (b'; filename="a.csv"' if with_filename else b"")
    body = (
        before
        + b"--bnd\r\nContent-Disposition: " + disposition + b"\r\n\r\n"
        + content
        + b"\r\n--bnd--\r\nepilogue"
    )
    points = sorted({0, len(body), *(cut % (len(body) + 1) for cut in cuts)})
    chunks = [body[start:end] for start, end in zip(points, points[1:])]
    try:
        whole: bytes | type[BadMultipart] = read(b"bnd", [body])
    except BadMultipart:
        whole = BadMultipart
    try:
        split: bytes | type[BadMultipart] = read(b"bnd", chunks)
    except BadMultipart:
        split = BadMultipart
    assert split == whole
    # Unless the content holds a real delimiter (CRLF--bnd then "--", or blanks and a
    # line break), the reader returns the file, or failing that the leading field.
    tail = content + b"\r\n--bnd--"
    for index in _find_all(content, b"\r\n--bnd"):
        after = tail[index + len(b"\r\n--bnd") :]
        assume(not after.startswith(b"--") and after.lstrip(b" \t")[:1] not in (b"\r", b"\n"))
    leading_field = b"filename" not in before and b"Content-Disposition" in before
    assert whole == (b"append" if leading_field and not with_filename else content)


def _find_all(haystack: bytes, needle: bytes) -> Iterator[int]:
    index = haystack.find(needle)
    while index >= 0:
        yield index
        index = haystack.find(needle, index + 1)
