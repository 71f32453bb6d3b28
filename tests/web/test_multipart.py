"""The multipart/related parser (RFC 2046 5.1): state machine, chunking, bounds, errors."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterable

import pytest

from coffre.errors import BadRequest, CoffreError, TooLarge
from coffre.web.multipart import (
    MultipartParser,
    ParseFailure,
    Part,
    PartData,
    PartEnd,
    PartStart,
    bounded_body,
    check_boundary,
    declared_length,
    parse_related,
    write_related,
)

B = "b0und4ry"

Parsed = list[tuple[dict[str, str], bytes]]


def run(body: bytes, sizes: Iterable[int] | int, *, max_parts: int = 100, max_header: int = 1000,
        boundary: str = B) -> tuple[Parsed, CoffreError | None]:
    """Feed ``body`` in chunks of ``sizes`` (one size, or a list), collect parts and the error."""
    parser = MultipartParser(boundary, max_parts=max_parts, max_part_header_bytes=max_header)
    events = []
    pos = 0
    size_list = [sizes] if isinstance(sizes, int) else list(sizes)
    i = 0
    while pos < len(body):
        step = size_list[i % len(size_list)]
        events += parser.feed(body[pos : pos + step])
        pos += step
        i += 1
    events += parser.close()
    parts: Parsed = []
    current: tuple[dict[str, str], bytearray] | None = None
    error = None
    for n, event in enumerate(events):
        if isinstance(event, PartStart):
            assert current is None
            assert event.index == len(parts) + 1
            current = (event.headers, bytearray())
        elif isinstance(event, PartData):
            assert current is not None and event.data
            current[1].extend(event.data)
        elif isinstance(event, PartEnd):
            assert current is not None and event.index == len(parts) + 1
            parts.append((current[0], bytes(current[1])))
            current = None
        else:
            assert isinstance(event, ParseFailure)
            assert all(isinstance(e, ParseFailure) for e in events[n:])
            error = event.error
            break
    return parts, error


TRICKY = (
    b"\r\n--" + B[:-1].encode()  # a delimiter prefix inside the data
    + b"\r\n-\r\n--\r\r\n\n--" + B.encode()[:3] + b"\x00\xff" * 20 + b"\r"
)

#: preamble, transport padding, no headers, folded header, binary data, empty part, epilogue
BODY = (
    b"This is the preamble. --" + B.encode() + b"x is not a delimiter here\r\n"
    b"--" + B.encode() + b" \t \r\n"
    b"Content-Type: application/dicom\r\n"
    b"X-Folded: first\r\n  second\r\n"
    b"\r\n" + TRICKY + b"\r\n"
    b"--" + B.encode() + b"\r\n"
    b"\r\n"  # no header fields: Content-Type defaults to the multipart's type
    b"plain\r\n"
    b"--" + B.encode() + b"\r\n"
    b"content-type:application/dicom;transfer-syntax=1.2.840.10008.1.2.1\r\n"
    b"\r\n"  # an empty body
    b"\r\n--" + B.encode() + b"--  \r\n"
    b"epilogue\r\n--" + B.encode() + b"\r\nignored"
)

EXPECTED: Parsed = [
    ({"content-type": "application/dicom", "x-folded": "first second"}, TRICKY),
    ({}, b"plain"),
    ({"content-type": "application/dicom;transfer-syntax=1.2.840.10008.1.2.1"}, b""),
]


@pytest.mark.parametrize("size", range(1, 8))
def test_every_chunk_size_gives_the_same_parts(size: int) -> None:
    assert run(BODY, size) == (EXPECTED, None)


def test_random_splits_give_the_same_parts() -> None:
    rng = random.Random(20240101)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(BODY)), rng.randint(1, 30)))
        sizes = [b - a for a, b in zip([0, *cuts], [*cuts, len(BODY)], strict=True)]
        assert run(BODY, sizes) == (EXPECTED, None)


def test_whole_body_at_once() -> None:
    assert run(BODY, len(BODY)) == (EXPECTED, None)


def test_writer_output_parses_back() -> None:
    payloads = [bytes(range(256)) * 50, b"", b"--" + B.encode(), b"\r\n" * 9]
    body = b"".join(write_related([({"Content-Type": "application/dicom"}, [p]) for p in payloads], B))
    for size in (1, 3, 64, 65536):
        parts, error = run(body, size)
        assert error is None
        assert [p for _, p in parts] == payloads
        assert all(h == {"content-type": "application/dicom"} for h, _ in parts)


def test_first_boundary_at_the_very_start_and_no_trailing_crlf() -> None:
    body = b"--" + B.encode() + b"\r\n\r\nx\r\n--" + B.encode() + b"--"
    assert run(body, 2) == ([({}, b"x")], None)


@pytest.mark.parametrize(
    ("cut", "reason"),
    [
        (9, "missing closing boundary: no boundary delimiter was found in the body"),
        (len(b"--b0und4ry"), "missing closing boundary: the body ends after a delimiter"),
        (len(b"--b0und4ry\r\nContent-Ty"), "missing closing boundary: the body ends inside the headers of part 1"),
        (len(b"--b0und4ry\r\nContent-Type: a/b\r\n\r\nabc\r\n--b0und4"),
         "missing closing boundary: the body ends inside part 1"),
    ],
)
def test_truncated_bodies(cut: int, reason: str) -> None:
    body = b"--b0und4ry\r\nContent-Type: a/b\r\n\r\nabc\r\n--b0und4ry--\r\n"
    for size in (1, 4, 100):
        parts, error = run(body[:cut], size)
        assert parts == []
        assert isinstance(error, BadRequest) and error.reason == reason


def test_truncation_after_complete_parts_delivers_them_first() -> None:
    body = b"--b0und4ry\r\n\r\none\r\n--b0und4ry\r\n\r\ntwo\r\n--b0und4ry\r\n\r\nthr"
    parts, error = run(body, 3)
    assert parts == [({}, b"one"), ({}, b"two")]
    assert isinstance(error, BadRequest)
    assert error.reason == "missing closing boundary: the body ends inside part 3"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"--b0und4ry--\r\n", "the multipart body has no part"),
        (b"--b0und4ryX\r\n\r\nx\r\n--b0und4ry--", "a boundary delimiter is followed by unexpected bytes"),
        (b"--b0und4ry  x\r\n\r\nx\r\n--b0und4ry--", "a boundary delimiter is followed by unexpected bytes"),
        (b"--b0und4ry" + b" " * 1100 + b"\r\n\r\nx\r\n--b0und4ry--",
         "too much transport padding after a boundary delimiter"),
        (b"--b0und4ry\r\nno colon here\r\n\r\nx\r\n--b0und4ry--", "part 1 has a malformed header line"),
        (b"--b0und4ry\r\nBad Name: v\r\n\r\nx\r\n--b0und4ry--", "part 1 has a malformed header line"),
        (b"--b0und4ry\r\n folded: v\r\n\r\nx\r\n--b0und4ry--",
         "part 1 starts its headers with a continuation line"),
    ],
)
def test_malformed_bodies(body: bytes, reason: str) -> None:
    for size in (1, 5, len(body)):
        parts, error = run(body, size)
        assert parts == []
        assert isinstance(error, BadRequest) and error.reason == reason


def test_header_block_bound_is_exact() -> None:
    name = b"X-Long: "
    at_limit = name + b"a" * (100 - len(name))
    body = b"--b0und4ry\r\n" + at_limit + b"\r\n\r\nx\r\n--b0und4ry--"
    assert run(body, 7, max_header=100) == ([({"x-long": "a" * 92}, b"x")], None)
    over = b"--b0und4ry\r\n" + at_limit + b"a\r\n\r\nx\r\n--b0und4ry--"
    for size in (1, 7, len(over)):
        parts, error = run(over, size, max_header=100)
        assert parts == []
        assert isinstance(error, BadRequest)
        assert error.reason == "the headers of part 1 exceed http.max_part_header_bytes (100 bytes)"


def test_one_megabyte_of_headers_is_refused_without_being_held() -> None:
    parser = MultipartParser(B, max_parts=10, max_part_header_bytes=16384)
    events = parser.feed(b"--b0und4ry\r\n")
    chunk = b"X-Junk: " + b"j" * 4088  # 4 KiB, no end of the header block
    fed = 0
    while not events and fed < 1 << 20:
        events = parser.feed(chunk)
        fed += len(chunk)
        assert parser.buffered <= 16384 + len(chunk)
    assert fed == 5 * 4096  # refused as soon as the bound is passed
    assert len(events) == 1 and isinstance(events[0], ParseFailure)
    assert parser.buffered == 0
    assert parser.feed(b"more") == events  # the failure is final


def test_too_many_parts_is_413_after_the_allowed_ones() -> None:
    body = b"".join(write_related([({}, [b"%d" % i]) for i in range(10)], B))
    for size in (1, 9, len(body)):
        parts, error = run(body, size, max_parts=4)
        assert parts == [({}, b"0"), ({}, b"1"), ({}, b"2"), ({}, b"3")]
        assert isinstance(error, TooLarge)
        assert error.reason == "the body has more than http.max_parts (4) parts"


def test_a_hundred_thousand_parts_stop_at_the_bound() -> None:
    body = b"".join(write_related((({}, [b"x"]) for _ in range(100_000)), B))
    parts, error = run(body, 65536, max_parts=10_000)
    assert len(parts) == 10_000
    assert isinstance(error, TooLarge)


def test_memory_is_bounded_by_the_chunk_while_streaming_a_large_part() -> None:
    parser = MultipartParser(B, max_parts=10, max_part_header_bytes=1000)
    parser.feed(b"--b0und4ry\r\nContent-Type: application/dicom\r\n\r\n")
    chunk = bytes(range(256)) * 256  # 64 KiB
    received = 0
    for _ in range(160):  # 10 MiB
        for event in parser.feed(chunk):
            assert isinstance(event, PartData)
            received += len(event.data)
        assert parser.buffered < len(b"\r\n--b0und4ry")
    events = parser.feed(b"\r\n--b0und4ry--\r\n")
    assert isinstance(events[-1], PartEnd)
    received += sum(len(e.data) for e in events if isinstance(e, PartData))
    assert received == 160 * len(chunk)
    assert parser.done and parser.close() == []


@pytest.mark.parametrize("value", ["a", "0f3cf5c0-70e0-41ef-baef-c6f9f65ec3e1", "x" * 70, "with space ok",
                                   "'()+_,-./:=?"])
def test_valid_boundaries(value: str) -> None:
    assert check_boundary(value) == value


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "the multipart Content-Type has no boundary parameter"),
        ("", "the multipart Content-Type has no boundary parameter"),
        ("x" * 71, "the multipart boundary must be 1-70 characters of RFC 2046 bchars"),
        ("trailing ", "the multipart boundary must be 1-70 characters of RFC 2046 bchars"),
        ("semi;colon", "the multipart boundary must be 1-70 characters of RFC 2046 bchars"),
        ("é", "the multipart boundary must be 1-70 characters of RFC 2046 bchars"),
    ],
)
def test_invalid_boundaries(value: str | None, reason: str) -> None:
    with pytest.raises(BadRequest) as info:
        check_boundary(value)
    assert info.value.reason == reason


# --- streaming helpers ---------------------------------------------------------------------


async def _stream(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def _collect(body: bytes, size: int, **kwargs: int) -> list[Part]:
    chunks = [body[i : i + size] for i in range(0, len(body), size)]
    limits = {"max_parts": 100, "max_part_header_bytes": 1000, "max_part_bytes": 1000, **kwargs}
    return [p async for p in parse_related(_stream(chunks), B, **limits)]


def test_parse_related_drops_an_oversized_part_and_goes_on() -> None:
    body = b"".join(write_related([({}, [b"a" * 10]), ({}, [b"b" * 11]), ({}, [b"c"])], B))
    for size in (1, 4, 1000):
        parts = asyncio.run(_collect(body, size, max_part_bytes=10))
        assert parts == [Part(1, {}, b"a" * 10, 10), Part(2, {}, None, 11), Part(3, {}, b"c", 1)]


def test_parse_related_raises_after_delivering_complete_parts() -> None:
    body = b"".join(write_related([({}, [b"one"]), ({}, [b"two"])], B))[:-16]
    seen: list[Part] = []

    async def consume() -> None:
        async for part in parse_related(_stream([body]), B, max_parts=9, max_part_header_bytes=99,
                                        max_part_bytes=99):
            seen.append(part)

    with pytest.raises(BadRequest) as info:
        asyncio.run(consume())
    assert seen == [Part(1, {}, b"one", 3)]
    assert info.value.reason == "missing closing boundary: the body ends inside part 2"


def _drain(chunks: list[bytes], declared: int | None, max_bytes: int) -> tuple[int, int]:
    """(bytes yielded, chunks pulled from the source)."""
    pulled = 0

    async def source() -> AsyncIterator[bytes]:
        nonlocal pulled
        for chunk in chunks:
            pulled += 1
            yield chunk

    async def main() -> int:
        return sum([len(c) async for c in bounded_body(source(), declared=declared, max_bytes=max_bytes)])

    return asyncio.run(main()), pulled


def test_bounded_body_checks_content_length_and_the_bound() -> None:
    assert _drain([b"ab", b"cd"], 4, 10) == (4, 2)
    assert _drain([b"ab", b"cd"], None, 10) == (4, 2)
    with pytest.raises(BadRequest) as info:
        _drain([b"ab", b"cd"], 5, 10)
    assert info.value.reason == "the body (4 bytes) is shorter than its Content-Length (5 bytes)"
    with pytest.raises(BadRequest) as info:
        _drain([b"ab", b"cd"], 3, 10)
    assert info.value.reason == "the body is longer than its Content-Length (3 bytes)"
    with pytest.raises(TooLarge) as too_large:
        _drain([b"x" * 4] * 1000, None, 10)
    assert too_large.value.reason == "the request body exceeds http.max_request_bytes (10)"


def test_bounded_body_stops_reading_past_the_bound() -> None:
    pulled = 0

    async def source() -> AsyncIterator[bytes]:
        nonlocal pulled
        for _ in range(1000):
            pulled += 1
            yield b"x" * 4

    async def main() -> None:
        async for _ in bounded_body(source(), declared=None, max_bytes=10):
            pass

    with pytest.raises(TooLarge):
        asyncio.run(main())
    assert pulled == 3


def test_declared_length() -> None:
    assert declared_length(None, 10) is None
    assert declared_length(" 10 ", 10) == 10
    with pytest.raises(TooLarge) as too_large:
        declared_length("11", 10)
    assert too_large.value.reason == "the request body of 11 bytes exceeds http.max_request_bytes (10)"
    for bad in ("", "-1", "+5", "1e3", "\uff15", "0x10"):
        with pytest.raises(BadRequest):
            declared_length(bad, 10)
