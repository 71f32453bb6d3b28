"""multipart/related bodies (RFC 2387, PS3.18 8.6.1.2): streaming writer and parser.

The writer produces a body part by part from iterables of bytes, so a whole study
never sits in memory. The parser reads a request body as a stream with bounded
memory (see ``parse_related``).
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import AsyncGenerator, AsyncIterable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from coffre.errors import BadRequest, CoffreError, TooLarge

CRLF = b"\r\n"


def new_boundary() -> str:
    return "coffre-" + secrets.token_hex(16)


def write_related(parts: Iterable[tuple[Mapping[str, str], Iterable[bytes]]], boundary: str) -> Iterator[bytes]:
    """The body of a multipart/related message: each part's headers then its chunks."""
    delimiter = b"--" + boundary.encode("ascii")
    for headers, chunks in parts:
        head = delimiter + CRLF
        for name, value in headers.items():
            head += f"{name}: {value}".encode("latin-1") + CRLF
        yield head + CRLF
        yield from chunks
        yield CRLF
    yield delimiter + b"--" + CRLF


# --- parser -----------------------------------------------------------------------------
#
# RFC 2046 5.1.1 grammar, as read here:
#
#   body          := preamble? dash-boundary padding CRLF part (delimiter padding CRLF part)*
#                    close-delimiter padding (CRLF epilogue)?
#   delimiter     := CRLF "--" boundary          (dash-boundary: the same without CRLF)
#   close         := delimiter "--"
#   part          := header-lines CRLF body-bytes
#
# The parser prepends a virtual CRLF to the body so that the first dash-boundary is
# found like any other delimiter. "padding" is RFC 2046 transport padding (spaces and
# tabs a gateway may add after a delimiter).

#: RFC 2046 5.1.1 ``bcharsnospace`` (a boundary may also contain spaces, but not end with one)
_BCHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? ")
#: RFC 7230 ``tchar``: what a header field name is made of
_TCHARS = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
#: most transport padding accepted after a delimiter before its CRLF
MAX_TRANSPORT_PADDING = 1024


def check_boundary(value: str | None) -> str:
    """The ``boundary`` parameter if it obeys RFC 2046 5.1.1 (1-70 characters), else 400."""
    if not value:
        raise BadRequest("the multipart Content-Type has no boundary parameter")
    if len(value) > 70 or value.endswith(" ") or not set(value) <= _BCHARS:
        raise BadRequest("the multipart boundary must be 1-70 characters of RFC 2046 bchars")
    return value


@dataclass(frozen=True, slots=True)
class PartStart:
    """The header block of a part has been read (names lower-cased, values stripped)."""

    index: int
    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class PartData:
    """Some bytes of the current part's body, in order."""

    data: bytes


@dataclass(frozen=True, slots=True)
class PartEnd:
    """The current part's body is complete (its delimiter has been seen)."""

    index: int


@dataclass(frozen=True, slots=True)
class ParseFailure:
    """The body is malformed or exceeds a bound at this point; always the last event."""

    error: CoffreError


Event = PartStart | PartData | PartEnd | ParseFailure


class _State(enum.Enum):
    PREAMBLE = "preamble"
    AFTER_DELIMITER = "after delimiter"
    HEADERS = "headers"
    BODY = "body"
    EPILOGUE = "epilogue"
    FAILED = "failed"


class MultipartParser:
    """Incremental multipart parser (RFC 2046 5.1): ``feed(chunk)`` → events, then ``close()``.

    Memory is bounded by the size of the chunk fed plus the longest header block allowed
    and the delimiter length: body bytes are handed out as soon as they cannot be the
    start of a delimiter. Events come in body order whatever the chunking, so a body cut
    anywhere gives the same parts. An error does not raise: it is the last event
    (``ParseFailure``) so that the parts before it are delivered first; every later call
    returns that failure again.

    Bounds: more than ``max_parts`` parts is 413 (checked when part ``max_parts + 1``
    starts, before its headers are read); a header block longer than
    ``max_part_header_bytes`` is 400.
    """

    def __init__(self, boundary: str, *, max_parts: int, max_part_header_bytes: int) -> None:
        self._delimiter = CRLF + b"--" + check_boundary(boundary).encode("ascii")
        self._max_parts = max_parts
        self._max_header = max_part_header_bytes
        self._buf = bytearray(CRLF)  # the virtual CRLF before the first dash-boundary
        self._scan_from = 0  # where the next search in _buf may start (nothing found before)
        self._state = _State.PREAMBLE
        self._parts = 0
        self._failure: ParseFailure | None = None

    @property
    def parts(self) -> int:
        """How many parts have started so far."""
        return self._parts

    @property
    def buffered(self) -> int:
        """Bytes held between calls (what may still be the start of a delimiter or headers)."""
        return len(self._buf)

    @property
    def done(self) -> bool:
        """True once the close delimiter has been read (the rest is epilogue)."""
        return self._state is _State.EPILOGUE

    def feed(self, chunk: bytes) -> list[Event]:
        if self._failure is not None:
            return [self._failure]
        if self._state is _State.EPILOGUE:
            return []
        self._buf += chunk
        events: list[Event] = []
        try:
            while self._step(events):
                pass
        except CoffreError as exc:
            self._fail(exc)
        if self._failure is not None:
            events.append(self._failure)
        return events

    def close(self) -> list[Event]:
        """The end of the body: a failure unless the close delimiter was read."""
        if self._failure is not None:
            return [self._failure]
        if self._state is not _State.EPILOGUE:
            where = {
                _State.PREAMBLE: "no boundary delimiter was found in the body",
                _State.AFTER_DELIMITER: "the body ends after a delimiter",
                _State.HEADERS: f"the body ends inside the headers of part {self._parts}",
                _State.BODY: f"the body ends inside part {self._parts}",
            }[self._state]
            self._fail(BadRequest(f"missing closing boundary: {where}"))
            assert self._failure is not None
            return [self._failure]
        return []

    # --- states ---------------------------------------------------------------------

    def _fail(self, exc: CoffreError) -> None:
        self._failure = ParseFailure(exc)
        self._state = _State.FAILED
        self._buf = bytearray()

    def _step(self, events: list[Event]) -> bool:
        """Advance as far as the buffer allows; False when more bytes are needed."""
        if self._state is _State.PREAMBLE:
            return self._preamble()
        if self._state is _State.AFTER_DELIMITER:
            return self._after_delimiter()
        if self._state is _State.HEADERS:
            return self._headers(events)
        if self._state is _State.BODY:
            return self._body(events)
        if self._state is _State.EPILOGUE:
            self._buf = bytearray()
        return False

    def _preamble(self) -> bool:
        at = self._buf.find(self._delimiter)
        if at < 0:  # keep only what may be the start of the delimiter
            del self._buf[: max(0, len(self._buf) - len(self._delimiter) + 1)]
            return False
        del self._buf[: at + len(self._delimiter)]
        self._state = _State.AFTER_DELIMITER
        return True

    def _after_delimiter(self) -> bool:
        buf = self._buf
        if len(buf) < 2:
            if not buf or buf[0] == ord("-"):
                return False
        elif buf[:2] == b"--":
            if self._parts == 0:
                raise BadRequest("the multipart body has no part")
            self._state = _State.EPILOGUE
            self._buf = bytearray()
            return False
        end = buf.find(CRLF, self._scan_from)
        if end < 0:
            if len(buf) > MAX_TRANSPORT_PADDING or buf.strip(b" \t\r"):
                if buf.strip(b" \t\r"):
                    raise BadRequest("a boundary delimiter is followed by unexpected bytes")
                raise BadRequest("too much transport padding after a boundary delimiter")
            self._scan_from = max(0, len(buf) - 1)
            return False
        if buf[:end].strip(b" \t"):
            raise BadRequest("a boundary delimiter is followed by unexpected bytes")
        if end > MAX_TRANSPORT_PADDING:
            raise BadRequest("too much transport padding after a boundary delimiter")
        del buf[: end + 2]
        self._scan_from = 0
        self._parts += 1
        if self._parts > self._max_parts:
            raise TooLarge(f"the body has more than http.max_parts ({self._max_parts}) parts")
        self._state = _State.HEADERS
        return True

    def _headers(self, events: list[Event]) -> bool:
        buf = self._buf
        if len(buf) < 2:
            return False
        if buf[:2] == CRLF:  # no header fields
            block, consumed = b"", 2
        else:
            end = buf.find(CRLF + CRLF, self._scan_from)
            if (end < 0 and len(buf) - 3 > self._max_header) or end > self._max_header:
                raise BadRequest(
                    f"the headers of part {self._parts} exceed http.max_part_header_bytes "
                    f"({self._max_header} bytes)"
                )
            if end < 0:
                self._scan_from = max(0, len(buf) - 3)
                return False
            block, consumed = bytes(buf[:end]), end + 4
        del buf[:consumed]
        self._scan_from = 0
        events.append(PartStart(self._parts, _parse_headers(block, self._parts)))
        self._state = _State.BODY
        return True

    def _body(self, events: list[Event]) -> bool:
        buf = self._buf
        at = buf.find(self._delimiter)
        if at < 0:
            keep = len(self._delimiter) - 1
            if len(buf) > keep:
                events.append(PartData(bytes(buf[: len(buf) - keep])))
                del buf[: len(buf) - keep]
            return False
        if at:
            events.append(PartData(bytes(buf[:at])))
        del buf[: at + len(self._delimiter)]
        events.append(PartEnd(self._parts))
        self._state = _State.AFTER_DELIMITER
        return True


def _parse_headers(block: bytes, index: int) -> dict[str, str]:
    """RFC 5322 / 7230 header fields of one part; obsolete line folding is unfolded."""
    headers: dict[str, str] = {}
    last = ""
    for line in block.split(CRLF) if block else ():
        if line[:1] in (b" ", b"\t"):
            if not last:
                raise BadRequest(f"part {index} starts its headers with a continuation line")
            headers[last] = (headers[last] + " " + line.strip(b" \t").decode("latin-1")).strip()
            continue
        name, colon, value = line.partition(b":")
        if not colon or not name or not set(name) <= _TCHARS:
            raise BadRequest(f"part {index} has a malformed header line")
        last = name.decode("ascii").lower()
        text = value.strip(b" \t").decode("latin-1")
        headers[last] = f"{headers[last]}, {text}" if last in headers else text
    return headers


# --- streaming over a request body ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Part:
    """One complete part: its headers and its body (``None`` when it exceeded the bound)."""

    index: int
    headers: Mapping[str, str]
    body: bytes | None
    #: the body's length in bytes (also when it was dropped)
    size: int


def declared_length(header: str | None, max_bytes: int) -> int | None:
    """The Content-Length header as an int; 413 above ``max_bytes``, 400 if malformed."""
    if header is None:
        return None
    value = header.strip()
    if not value.isdigit() or not value.isascii():
        raise BadRequest("the Content-Length header is not a non-negative integer")
    length = int(value)
    if length > max_bytes:
        raise TooLarge(f"the request body of {length} bytes exceeds http.max_request_bytes ({max_bytes})")
    return length


async def bounded_body(
    chunks: AsyncIterable[bytes], *, declared: int | None, max_bytes: int
) -> AsyncGenerator[bytes, None]:
    """The chunks of a request body, checked against its Content-Length and the bound.

    More bytes than ``max_bytes`` is 413 as soon as it is seen (the rest is not read);
    a body shorter or longer than its Content-Length is 400.
    """
    total = 0
    async for chunk in chunks:
        total += len(chunk)
        if declared is not None and total > declared:
            raise BadRequest(f"the body is longer than its Content-Length ({declared} bytes)")
        if total > max_bytes:
            raise TooLarge(f"the request body exceeds http.max_request_bytes ({max_bytes})")
        if chunk:
            yield chunk
    if declared is not None and total != declared:
        raise BadRequest(f"the body ({total} bytes) is shorter than its Content-Length ({declared} bytes)")


async def parse_related(
    chunks: AsyncIterable[bytes],
    boundary: str,
    *,
    max_parts: int,
    max_part_header_bytes: int,
    max_part_bytes: int,
) -> AsyncGenerator[Part, None]:
    """The parts of a multipart body read from ``chunks``, one complete part at a time.

    Only one part's body is held (at most ``max_part_bytes``; a larger part is consumed
    and dropped, and delivered with ``body=None`` so that the caller can report it). A
    part is delivered only once its closing delimiter has been read, so a truncated body
    never yields its incomplete last part. The epilogue is read to the end of the stream
    and discarded (so that ``bounded_body`` can check the Content-Length). Errors (``BadRequest``, ``TooLarge``) are raised
    after the parts that precede them have been delivered.
    """
    parser = MultipartParser(boundary, max_parts=max_parts, max_part_header_bytes=max_part_header_bytes)
    headers: dict[str, str] = {}
    pieces: list[bytes] = []
    size = 0
    async for chunk in chunks:
        for event in parser.feed(chunk):
            if isinstance(event, PartStart):
                headers, pieces, size = event.headers, [], 0
            elif isinstance(event, PartData):
                size += len(event.data)
                if size <= max_part_bytes:
                    pieces.append(event.data)
                else:
                    pieces = []
            elif isinstance(event, PartEnd):
                body = b"".join(pieces) if size <= max_part_bytes else None
                pieces = []
                yield Part(event.index, headers, body, size)
            else:
                raise event.error
    for event in parser.close():
        assert isinstance(event, ParseFailure)
        raise event.error
