"""A bounded element scanner over PS3.10 files (pure, no IO, no value decoding).

pydicom reads what it is given without limits (FIELD-NOTES: deflate bombs, RecursionError
on deep nesting, 4 GB lengths over 100 bytes). This module walks the encoded bytes first,
iteratively, and refuses what would be unsafe to hand to pydicom:

- a file without the 128-byte preamble and ``DICM`` prefix (PS3.10 7.1);
- a length that does not fit in the remaining bytes or in its enclosing item/sequence
  ("element (gggg,eeee) length exceeds the data"), a truncated header;
- an undefined length (PS3.5 7.1.2) anywhere but on a sequence, an item, an explicit
  ``UN`` element (PS3.5 6.2.2: a sequence in implicit VR) or encapsulated Pixel Data
  (PS3.5 A.4), and an undefined length that is never terminated;
- sequences nested deeper than ``max_sequence_depth`` (:class:`TooDeeplyNested`);
- a non-pixel element value larger than ``max_element_bytes`` (:class:`TooLarge`);
- a deflated data set (PS3.5 A.5) inflating past ``max_inflated_bytes``: it is inflated in
  bounded chunks and abandoned as soon as the bound is passed (:class:`TooLarge`).

The File Meta group (0002) is always explicit VR little endian (PS3.10 7.1); the data set
follows in its transfer syntax. The scanner records where the top-level pixel data elements
are (Pixel Data, Float Pixel Data, Double Float Pixel Data) and, for encapsulated pixel
data, the Basic Offset Table and each fragment, so that frame byte ranges can be computed
(:func:`native_frames`, :func:`encapsulated_frames`).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from itertools import pairwise

from pydicom._dicom_dict import DicomDictionary

from coffre.dicom import transfer_syntaxes
from coffre.errors import InvalidInstance, TooDeeplyNested, TooLarge
from coffre.settings import LimitsSettings

PREAMBLE_LENGTH = 128
MAGIC = b"DICM"
DATA_START = PREAMBLE_LENGTH + len(MAGIC)

PIXEL_DATA = 0x7FE00010
FLOAT_PIXEL_DATA = 0x7FE00008
DOUBLE_FLOAT_PIXEL_DATA = 0x7FE00009
PIXEL_TAGS = frozenset({PIXEL_DATA, FLOAT_PIXEL_DATA, DOUBLE_FLOAT_PIXEL_DATA})

ITEM = 0xFFFEE000
ITEM_DELIMITER = 0xFFFEE00D
SEQUENCE_DELIMITER = 0xFFFEE0DD
UNDEFINED_LENGTH = 0xFFFFFFFF

#: VRs whose explicit header has 2 reserved bytes and a 32-bit length (PS3.5 7.1.2).
LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
SHORT_VRS = frozenset(
    {
        b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT",
        b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
    }
)  # fmt: skip

#: Public tags whose dictionary VR is SQ: how sequences are recognised in implicit VR.
_SQ_TAGS = frozenset(tag for tag, entry in DicomDictionary.items() if entry[0] == "SQ")

_TS_TRANSFER_SYNTAX = 0x00020010
_TS_SOP_CLASS = 0x00020002
_TS_SOP_INSTANCE = 0x00020003

#: Inflate output chunk: bounds the memory overshoot past ``max_inflated_bytes``.
_INFLATE_CHUNK = 1 << 20

_SEQ = 0
_ITM = 1


def tag_str(tag: int) -> str:
    """``(gggg,eeee)`` as in PS3.5 7.1; safe in messages (no patient data)."""
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


@dataclass(frozen=True, slots=True)
class Fragment:
    """One item of encapsulated pixel data (PS3.5 A.4)."""

    #: offset of the item tag (FFFE,E000)
    item_offset: int
    #: offset of the item value (item_offset + 8)
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class PixelElement:
    """A top-level pixel data element: where it is in :attr:`ScanResult.buffer`."""

    tag: int
    #: explicit VR ("OB", "OW", "OF", "OD"), or "" in implicit VR
    vr: str
    #: first byte of the element (its tag) and first byte after it (after the
    #: sequence delimiter when encapsulated)
    element_offset: int
    element_end: int
    #: native: first byte and length of the value; encapsulated: offset of the first item
    value_offset: int
    value_length: int
    encapsulated: bool
    #: encapsulated only: the Basic Offset Table item (its value may be empty)
    basic_offset_table: Fragment | None
    #: encapsulated only: the items after the Basic Offset Table
    fragments: tuple[Fragment, ...]


@dataclass(frozen=True, slots=True)
class TopElement:
    """A top-level data set element as encoded (PS3.5 7.1): its VR (``None`` in implicit
    VR), value length (``UNDEFINED_LENGTH`` for a sequence or encapsulated pixel data of
    undefined length) and where its header and value start in ``ScanResult.buffer``."""

    tag: int
    vr: str | None
    length: int
    header_offset: int
    value_offset: int


@dataclass(frozen=True, slots=True)
class ScanResult:
    transfer_syntax_uid: str
    media_storage_sop_class_uid: str
    media_storage_sop_instance_uid: str
    #: the bytes the data set offsets refer to: the given data, or the inflated data set
    #: for the deflated transfer syntax (then ``deflated`` is True)
    buffer: bytes
    dataset_offset: int
    deflated: bool
    #: top-level pixel data elements by tag
    pixels: dict[int, PixelElement]
    #: number of data set elements seen, all levels (for statistics and tests)
    element_count: int
    #: the top-level elements in order (their values end where the next header starts)
    elements: tuple[TopElement, ...] = ()

    def value_of(self, index: int) -> bytes:
        """The encoded value of ``elements[index]``; for an undefined length, the items
        without the closing Sequence Delimitation Item (PS3.5 7.5.2)."""
        element = self.elements[index]
        end = self.elements[index + 1].header_offset if index + 1 < len(self.elements) else len(self.buffer)
        if element.length == UNDEFINED_LENGTH:
            end -= 8
        return self.buffer[element.value_offset : end]

    @property
    def pixel_data(self) -> PixelElement | None:
        """Pixel Data, else Float Pixel Data, else Double Float Pixel Data."""
        for tag in (PIXEL_DATA, FLOAT_PIXEL_DATA, DOUBLE_FLOAT_PIXEL_DATA):
            if tag in self.pixels:
                return self.pixels[tag]
        return None

    def dataset_without_pixels(self) -> bytes:
        """The encoded data set with the top-level pixel data elements cut out.

        This is what pydicom is given: it then never sees (nor allocates) pixel data.
        """
        parts: list[bytes] = []
        pos = self.dataset_offset
        for pixel in sorted(self.pixels.values(), key=lambda p: p.element_offset):
            parts.append(self.buffer[pos : pixel.element_offset])
            pos = pixel.element_end
        parts.append(self.buffer[pos:])
        return b"".join(parts)


def scan(data: bytes, limits: LimitsSettings) -> ScanResult:
    """Scan a PS3.10 file; raise a :mod:`coffre.errors` exception on anything unsafe.

    The meta Transfer Syntax UID must be one the archive accepts
    (:class:`~coffre.errors.UnsupportedTransferSyntax` otherwise); it decides how the data
    set is encoded (PS3.5 10): implicit or explicit VR, byte order, deflate.
    """
    if len(data) > limits.max_object_bytes:
        raise TooLarge("object is larger than max_object_bytes")
    if len(data) < DATA_START or data[PREAMBLE_LENGTH:DATA_START] != MAGIC:
        raise InvalidInstance("not a DICOM Part 10 file: no preamble and 'DICM' prefix")
    meta, ds_offset = _scan_meta(data, limits)
    ts = meta.get(_TS_TRANSFER_SYNTAX, "")
    if not ts:
        raise InvalidInstance("File Meta Information has no TransferSyntaxUID")
    syntax = transfer_syntaxes.get(ts)
    buffer = data
    if syntax.deflated:
        buffer = inflate_bounded(
            data, ds_offset, limits.max_inflated_bytes, limits.max_element_bytes
        )
        ds_offset = 0
    pixels, count, elements = _scan_dataset(
        buffer, ds_offset, syntax.little_endian, syntax.implicit_vr, limits
    )
    return ScanResult(
        transfer_syntax_uid=ts,
        media_storage_sop_class_uid=meta.get(_TS_SOP_CLASS, ""),
        media_storage_sop_instance_uid=meta.get(_TS_SOP_INSTANCE, ""),
        buffer=buffer,
        dataset_offset=ds_offset,
        deflated=syntax.deflated,
        pixels=pixels,
        element_count=count,
        elements=tuple(elements),
    )


def _scan_meta(data: bytes, limits: LimitsSettings) -> tuple[dict[int, str], int]:
    """Walk group 0002 (explicit VR LE); return the UI values we need and the data set offset.

    The group is delimited by its tags, not by (0002,0000) Group Length, which writers
    sometimes get wrong.
    """
    pos = DATA_START
    end = len(data)
    values: dict[int, str] = {}
    while pos + 8 <= end:
        group, elem = struct.unpack_from("<HH", data, pos)
        if group != 0x0002:
            break
        tag = group << 16 | elem
        vr = data[pos + 4 : pos + 6]
        if vr in LONG_VRS:
            if pos + 12 > end:
                raise InvalidInstance("File Meta Information is truncated")
            (length,) = struct.unpack_from("<I", data, pos + 8)
            header = 12
        elif vr in SHORT_VRS:
            (length,) = struct.unpack_from("<H", data, pos + 6)
            header = 8
        else:
            raise InvalidInstance(f"File Meta element {tag_str(tag)} has an invalid VR")
        if length == UNDEFINED_LENGTH:
            raise InvalidInstance(f"File Meta element {tag_str(tag)} has an undefined length")
        value_pos = pos + header
        if value_pos + length > end:
            raise InvalidInstance(f"element {tag_str(tag)} length exceeds the data")
        if length > limits.max_element_bytes:
            raise TooLarge(f"element {tag_str(tag)} is larger than max_element_bytes")
        if tag in (_TS_TRANSFER_SYNTAX, _TS_SOP_CLASS, _TS_SOP_INSTANCE):
            raw = data[value_pos : value_pos + length]
            values[tag] = raw.decode("ascii", errors="replace").rstrip("\0 ")
        pos = value_pos + length
    else:
        if pos != end:
            raise InvalidInstance("File Meta Information is truncated")
    if pos == DATA_START:
        raise InvalidInstance("File Meta Information (0002,xxxx) is missing")
    return values, pos


def inflate_bounded(
    data: bytes, offset: int, max_inflated_bytes: int, max_element_bytes: int | None = None
) -> bytes:
    """Inflate the raw deflate stream ``data[offset:]`` (PS3.5 A.5, RFC 1951, no zlib header).

    Output is produced in chunks of at most 1 MiB; as soon as the total passes
    ``max_inflated_bytes`` the stream is abandoned with :class:`TooLarge`. While inflating,
    the top-level element headers (explicit VR LE) are followed as they arrive, so a bomb
    made of one huge element (the usual shape) fails as soon as its header is inflated:
    an element that cannot fit in ``max_inflated_bytes``, or a non-pixel element over
    ``max_element_bytes``, is refused at once. The walk stops at the first sequence or
    undefined length (the full scan of the inflated data set checks the rest); other
    bombs then cost at most ``max_inflated_bytes`` of memory and the time to inflate it.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = bytearray()
    pending: bytes | memoryview = memoryview(data)[offset:]
    walk: int | None = 0  # next top-level header offset, None once the walk gave up
    try:
        while True:
            chunk = inflater.decompress(pending, _INFLATE_CHUNK)
            out += chunk
            if len(out) > max_inflated_bytes:
                raise TooLarge("deflated data set inflates past max_inflated_bytes")
            if walk is not None:
                walk = _walk_headers(out, walk, max_inflated_bytes, max_element_bytes)
            pending = inflater.unconsumed_tail
            if inflater.eof:
                break
            if not pending and not chunk:
                raise InvalidInstance("deflated data set is truncated")
    except zlib.error:
        raise InvalidInstance("deflated data set is not a valid deflate stream") from None
    return bytes(out)


def _walk_headers(
    out: bytearray, pos: int, max_inflated: int, max_element: int | None
) -> int | None:
    """Follow top-level explicit VR LE headers in the inflated bytes available so far."""
    while pos + 12 <= len(out):
        group, elem = struct.unpack_from("<HH", out, pos)
        tag = group << 16 | elem
        vr = bytes(out[pos + 4 : pos + 6])
        if vr in LONG_VRS:
            (length,) = struct.unpack_from("<I", out, pos + 8)
            header = 12
        elif vr in SHORT_VRS:
            (length,) = struct.unpack_from("<H", out, pos + 6)
            header = 8
        else:
            raise InvalidInstance(f"element {tag_str(tag)} has an invalid VR")
        if length == UNDEFINED_LENGTH or vr == b"SQ" or group == 0xFFFE:
            return None
        end = pos + header + length
        if end > max_inflated:
            raise TooLarge("deflated data set inflates past max_inflated_bytes")
        if max_element is not None and length > max_element and tag not in PIXEL_TAGS:
            raise TooLarge(f"element {tag_str(tag)} is larger than max_element_bytes")
        pos = end
    return pos


def _scan_dataset(
    buf: bytes, start: int, little: bool, implicit: bool, limits: LimitsSettings
) -> tuple[dict[int, PixelElement], int, list[TopElement]]:
    """Iterative walk of a data set; see the module docstring for what is enforced.

    The stack holds one entry per open sequence or item:
    ``(kind, defined end or -1, implicit VR inside, tag, limit)`` where ``limit`` is the
    innermost defined end (nothing inside may go past it).
    """
    end = len(buf)
    bo = "<" if little else ">"
    tag_fmt = struct.Struct(bo + "HH")
    u32 = struct.Struct(bo + "I")
    u16 = struct.Struct(bo + "H")
    max_depth = limits.max_sequence_depth
    max_element = limits.max_element_bytes
    stack: list[tuple[int, int, bool, int, int]] = []
    depth = 0
    pixels: dict[int, PixelElement] = {}
    top: list[TopElement] = []
    count = 0
    pos = start
    here_implicit = implicit
    limit = end

    while True:
        if stack:
            kind, fend, here_implicit, ftag, limit = stack[-1]
            if fend >= 0 and pos >= fend:
                if pos > fend:  # pragma: no cover - lengths are checked against the limit
                    raise InvalidInstance(f"element overruns its container in {tag_str(ftag)}")
                stack.pop()
                if kind == _SEQ:
                    depth -= 1
                continue
            if pos >= limit:
                what = "sequence" if kind == _SEQ else "item"
                raise InvalidInstance(f"{what} in {tag_str(ftag)} is not terminated (truncated)")
        else:
            here_implicit = implicit
            limit = end
            if pos >= end:
                break
        if pos + 8 > limit:
            raise InvalidInstance("data set is truncated inside an element header")
        group, elem = tag_fmt.unpack_from(buf, pos)
        tag = group << 16 | elem

        if stack and stack[-1][0] == _SEQ:
            (length,) = u32.unpack_from(buf, pos + 4)
            seq_tag = stack[-1][3]
            if tag == ITEM:
                count += 1
                if length == UNDEFINED_LENGTH:
                    stack.append((_ITM, -1, here_implicit, seq_tag, limit))
                    pos += 8
                    continue
                if pos + 8 + length > limit:
                    raise InvalidInstance(f"item in {tag_str(seq_tag)} length exceeds the data")
                stack.append((_ITM, pos + 8 + length, here_implicit, seq_tag, pos + 8 + length))
                pos += 8
                continue
            if tag == SEQUENCE_DELIMITER and stack[-1][1] < 0:
                stack.pop()
                depth -= 1
                pos += 8
                continue
            raise InvalidInstance(f"unexpected element {tag_str(tag)} in {tag_str(seq_tag)}")

        if group == 0xFFFE:
            if tag == ITEM_DELIMITER and stack and stack[-1][1] < 0:
                stack.pop()
                pos += 8
                continue
            raise InvalidInstance(f"unexpected delimiter {tag_str(tag)}")

        count += 1
        vr: bytes | None
        if here_implicit:
            vr = None
            (length,) = u32.unpack_from(buf, pos + 4)
            header = 8
        else:
            vr = buf[pos + 4 : pos + 6]
            if vr in LONG_VRS:
                if pos + 12 > limit:
                    raise InvalidInstance("data set is truncated inside an element header")
                (length,) = u32.unpack_from(buf, pos + 8)
                header = 12
            elif vr in SHORT_VRS:
                (length,) = u16.unpack_from(buf, pos + 6)
                header = 8
            else:
                raise InvalidInstance(f"element {tag_str(tag)} has an invalid VR")
        value_pos = pos + header
        if not stack:
            top.append(TopElement(tag, vr.decode("ascii") if vr else None, length, pos, value_pos))

        if length == UNDEFINED_LENGTH:
            if tag == PIXEL_DATA and vr in (b"OB", b"OW", None):
                pixel = _scan_fragments(buf, pos, value_pos, limit, vr, u32, tag_fmt)
                if not stack:
                    pixels[tag] = pixel
                pos = pixel.element_end
                continue
            if vr == b"SQ" or vr == b"UN" or vr is None:
                depth += 1
                if depth > max_depth:
                    raise TooDeeplyNested(
                        f"sequences nest deeper than max_sequence_depth ({max_depth})"
                    )
                # PS3.5 6.2.2, 7.5.1: an undefined-length UN is a sequence in implicit VR
                # LE; its items count towards the depth and every bound applies inside.
                # (In retired Explicit VR Big Endian it is walked in big endian, as pydicom
                # reads it, and so refused: neither could read it back.)
                inner_implicit = here_implicit or vr == b"UN"
                stack.append((_SEQ, -1, inner_implicit, tag, limit))
                pos = value_pos
                continue
            raise InvalidInstance(f"element {tag_str(tag)} has an undefined length")

        if value_pos + length > limit:
            raise InvalidInstance(f"element {tag_str(tag)} length exceeds the data")
        if vr == b"SQ" or (tag in _SQ_TAGS and (vr is None or vr == b"UN")):
            # A known sequence sent as UN is a sequence in implicit VR LE (PS3.5 6.2.2);
            # pydicom parses it so, hence it is bounded here too.
            depth += 1
            if depth > max_depth:
                raise TooDeeplyNested(
                    f"sequences nest deeper than max_sequence_depth ({max_depth})"
                )
            inner_implicit = here_implicit or vr == b"UN"
            stack.append((_SEQ, value_pos + length, inner_implicit, tag, value_pos + length))
            pos = value_pos
            continue
        if tag in PIXEL_TAGS:
            if not stack:
                pixels[tag] = PixelElement(
                    tag=tag,
                    vr=vr.decode("ascii") if vr else "",
                    element_offset=pos,
                    element_end=value_pos + length,
                    value_offset=value_pos,
                    value_length=length,
                    encapsulated=False,
                    basic_offset_table=None,
                    fragments=(),
                )
        elif length > max_element:
            raise TooLarge(f"element {tag_str(tag)} is larger than max_element_bytes")
        pos = value_pos + length

    return pixels, count, top


def _scan_fragments(
    buf: bytes,
    element_pos: int,
    value_pos: int,
    limit: int,
    vr: bytes | None,
    u32: struct.Struct,
    tag_fmt: struct.Struct,
) -> PixelElement:
    """Encapsulated Pixel Data (PS3.5 A.4): items of defined length, then a delimiter."""
    items: list[Fragment] = []
    pos = value_pos
    while True:
        if pos + 8 > limit:
            raise InvalidInstance("encapsulated pixel data is truncated")
        group, elem = tag_fmt.unpack_from(buf, pos)
        tag = group << 16 | elem
        (length,) = u32.unpack_from(buf, pos + 4)
        if tag == SEQUENCE_DELIMITER:
            pos += 8
            break
        if tag != ITEM:
            raise InvalidInstance(f"unexpected element {tag_str(tag)} in encapsulated pixel data")
        if length == UNDEFINED_LENGTH:
            raise InvalidInstance("pixel data fragment has an undefined length")
        if pos + 8 + length > limit:
            raise InvalidInstance(f"element {tag_str(PIXEL_DATA)} length exceeds the data")
        items.append(Fragment(item_offset=pos, offset=pos + 8, length=length))
        pos += 8 + length
    if not items:
        raise InvalidInstance("encapsulated pixel data has no Basic Offset Table item")
    return PixelElement(
        tag=PIXEL_DATA,
        vr=vr.decode("ascii") if vr else "",
        element_offset=element_pos,
        element_end=pos,
        value_offset=value_pos,
        value_length=pos - value_pos,
        encapsulated=True,
        basic_offset_table=items[0],
        fragments=tuple(items[1:]),
    )


# --- frames -------------------------------------------------------------------------


def native_frames(
    pixel: PixelElement,
    *,
    rows: int,
    columns: int,
    samples_per_pixel: int,
    bits_allocated: int,
    number_of_frames: int,
) -> tuple[tuple[int, int], ...]:
    """Byte ranges ``(offset, length)`` of each frame of native pixel data (PS3.5 8.1).

    Frames are consecutive. With ``bits_allocated == 1`` frames are bit-packed with no
    padding between them (PS3.5 8.1.1), so a frame that does not end on a byte boundary
    shares its first/last byte with its neighbour: the range then covers every byte that
    holds one of its bits (``offset = floor(start_bit / 8)``, end ``ceil(end_bit / 8)``).
    """
    if min(rows, columns, samples_per_pixel, bits_allocated, number_of_frames) <= 0:
        raise InvalidInstance("pixel description attributes must be positive")
    if bits_allocated != 1 and bits_allocated % 8:
        raise InvalidInstance("BitsAllocated must be 1 or a multiple of 8")
    frame_bits = rows * columns * samples_per_pixel * bits_allocated
    needed = -(-frame_bits * number_of_frames // 8)
    if needed > pixel.value_length:
        raise InvalidInstance("pixel data shorter than declared")
    base = pixel.value_offset
    frames: list[tuple[int, int]] = []
    for i in range(number_of_frames):
        first = i * frame_bits // 8
        last = -(-(i + 1) * frame_bits // 8)
        frames.append((base + first, last - first))
    return tuple(frames)


_JPEG_SOI = b"\xff\xd8"
_J2K_SOC_SIZ = b"\xff\x4f\xff\x51"


def _fragment_starts_frame(buf: bytes, fragment: Fragment) -> bool:
    head = buf[fragment.offset : fragment.offset + 4]
    return head.startswith(_JPEG_SOI) or head == _J2K_SOC_SIZ


def _span(group: list[Fragment]) -> tuple[int, int]:
    if len(group) == 1:
        return group[0].offset, group[0].length
    last = group[-1]
    return group[0].item_offset, last.offset + last.length - group[0].item_offset


def encapsulated_frames(
    buf: bytes,
    pixel: PixelElement,
    *,
    number_of_frames: int,
    video: bool = False,
    extended_offsets: tuple[int, ...] | None = None,
    extended_lengths: tuple[int, ...] | None = None,
) -> tuple[tuple[tuple[int, int], ...], tuple[str, ...]]:
    """Byte ranges of each frame of encapsulated pixel data (PS3.5 A.4), plus warnings.

    A frame held in **one fragment** is ``(offset of the fragment value, its length)``: the
    bytes are exactly the compressed frame. A frame of **several fragments** is
    ``(offset of its first item tag, span to the end of its last fragment)``: a run of
    complete (FFFE,E000) items whose values, concatenated, are the frame
    (:func:`read_frame` does this). Frames are found, in order of preference, from:
    the Extended Offset Table (PS3.3 C.7.6.3.1.8; one fragment per frame), the Basic
    Offset Table when it has one entry per frame, one fragment per frame when the counts
    are equal, all fragments for a single frame, and JPEG / JPEG 2000 start-of-codestream
    markers. Encapsulated video (PS3.5 8.2.5) is one stream: one range for all fragments.
    When none of these works, no ranges are returned and a warning says so.
    """
    frags = list(pixel.fragments)
    if not frags:
        raise InvalidInstance("encapsulated pixel data has no fragments")
    if number_of_frames <= 0:
        raise InvalidInstance("NumberOfFrames must be positive")
    if video or number_of_frames == 1:
        return (_span(frags),), ()
    first_item = frags[0].item_offset
    by_rel_offset = {f.item_offset - first_item: i for i, f in enumerate(frags)}

    if extended_offsets is not None and extended_lengths is not None:
        if len(extended_offsets) == number_of_frames == len(extended_lengths):
            out: list[tuple[int, int]] = []
            for rel, length in zip(extended_offsets, extended_lengths, strict=True):
                index = by_rel_offset.get(rel)
                if index is None or frags[index].length < length:
                    break
                out.append((frags[index].offset, length))
            else:
                return tuple(out), ()
        warning = "ExtendedOffsetTable does not match the fragments; ignored"
        warnings: tuple[str, ...] = (warning,)
    else:
        warnings = ()

    bot = pixel.basic_offset_table
    if bot is not None and bot.length:
        if bot.length == 4 * number_of_frames:
            offsets = struct.unpack_from(f"<{number_of_frames}I", buf, bot.offset)
            starts = [by_rel_offset.get(o, -1) for o in offsets]
            bounds = [*starts, len(frags)]
            if starts[0] == 0 and all(0 <= a < b for a, b in pairwise(bounds)):
                groups = [frags[a:b] for a, b in pairwise(bounds)]
                return tuple(_span(g) for g in groups), warnings
        warnings += ("Basic Offset Table does not match NumberOfFrames or the fragments",)

    if len(frags) == number_of_frames:
        return tuple((f.offset, f.length) for f in frags), warnings
    if len(frags) < number_of_frames:
        raise InvalidInstance("encapsulated pixel data has fewer fragments than frames")
    starts_idx = [i for i, f in enumerate(frags) if _fragment_starts_frame(buf, f)]
    if len(starts_idx) == number_of_frames and starts_idx[0] == 0:
        bounds = [*starts_idx, len(frags)]
        return tuple(_span(frags[a:b]) for a, b in pairwise(bounds)), warnings
    return (), (*warnings, "frame boundaries in the encapsulated pixel data are undetermined")


def read_frame(buf: bytes, frame: tuple[int, int]) -> bytes:
    """The encoded bytes of one frame given its range from :func:`encapsulated_frames`
    or :func:`native_frames` (a run of items is unwrapped, anything else sliced)."""
    offset, length = frame
    end = offset + length
    if end > len(buf) or offset < 0:
        raise InvalidInstance("frame range exceeds the data")
    if buf[offset : offset + 4] == b"\xfe\xff\x00\xe0" and length >= 8:
        parts: list[bytes] = []
        pos = offset
        while pos + 8 <= end and buf[pos : pos + 4] == b"\xfe\xff\x00\xe0":
            (item_length,) = struct.unpack_from("<I", buf, pos + 4)
            if pos + 8 + item_length > end:
                break
            parts.append(buf[pos + 8 : pos + 8 + item_length])
            pos += 8 + item_length
        if pos == end:
            return b"".join(parts)
    return buf[offset:end]
