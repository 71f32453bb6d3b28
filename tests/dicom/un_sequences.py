"""Objects holding a data element of VR UN with undefined length (PS3.5 6.2.2).

An element whose VR the sender did not know, and that was a sequence of undefined length,
is sent as UN with undefined length; its value is a sequence encoded in Implicit VR Little
Endian (PS3.5 7.5.1: items of defined or undefined length, Item Delimitation Items) ended
by a Sequence Delimitation Item. Built here byte by byte: pydicom's writer turns such an
element into SQ. The private element (0099,1010) (creator (0099,0010) "ACME 1") is put
just before Pixel Data, which the synthetic objects keep last.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

import factories

UN_TAG = 0x00991010
NESTED_TAG = 0x00991011
ITEM_UNDEFINED = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
ITEM_END = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
SEQUENCE_END = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)

#: elements and items :func:`un_value` adds to ``ScanResult.element_count`` (with the
#: creator and the UN element itself): 3 items and 7 elements
UN_ELEMENT_COUNT = 10

#: the DICOM JSON of (0099,1010) holding :func:`un_value`, as pydicom reads it (SQ)
UN_JSON: dict[str, Any] = {
    "vr": "SQ",
    "Value": [
        {
            "00080100": {"vr": "SH", "Value": ["CODE01"]},
            "00080104": {"vr": "LO", "Value": ["First meaning"]},
        },
        {
            "00080100": {"vr": "SH", "Value": ["CODE02"]},
            "00991011": {
                "vr": "SQ",
                "Value": [{"00080100": {"vr": "SH", "Value": ["INNER1"]}}],
            },
        },
    ],
}


def implicit(tag: int, value: bytes, length: int | None = None) -> bytes:
    """One Implicit VR Little Endian element (PS3.5 7.1.3); ``length`` may lie."""
    n = len(value) if length is None else length
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, n) + value


def item(body: bytes, length: int | None = None) -> bytes:
    """An item of defined length (PS3.5 7.5.1); ``length`` may lie."""
    n = len(body) if length is None else length
    return struct.pack("<HHI", 0xFFFE, 0xE000, n) + body


def un_value(*, terminated: bool = True) -> bytes:
    """Two items, one of undefined and one of defined length; the second holds a nested
    private sequence of undefined length (no VR: implicit) with one item."""
    first = (
        ITEM_UNDEFINED
        + implicit(0x00080100, b"CODE01")
        + implicit(0x00080104, b"First meaning ")
        + ITEM_END
    )
    nested = (
        implicit(NESTED_TAG, b"", length=0xFFFFFFFF)
        + ITEM_UNDEFINED + implicit(0x00080100, b"INNER1") + ITEM_END
        + SEQUENCE_END
    )  # fmt: skip
    second = item(implicit(0x00080100, b"CODE02") + nested)
    return first + second + (SEQUENCE_END if terminated else b"")


def deep_un_value(depth: int) -> bytes:
    """A UN value whose sequences nest ``depth`` levels, the UN itself being the first:
    each item holds a private element of undefined length (a sequence, PS3.5 6.2.2)."""
    leaf = implicit(0x00080100, b"LEAF")
    opening = ITEM_UNDEFINED + implicit(NESTED_TAG, b"", length=0xFFFFFFFF)
    closing = SEQUENCE_END + ITEM_END
    return (
        opening * (depth - 1)
        + ITEM_UNDEFINED + leaf + ITEM_END
        + closing * (depth - 1)
        + SEQUENCE_END
    )  # fmt: skip


def _private(value: bytes, implicit_vr: bool) -> bytes:
    if implicit_vr:  # no VR at all: an element of undefined length is a sequence
        return implicit(0x00990010, b"ACME 1") + implicit(UN_TAG, b"", 0xFFFFFFFF) + value
    creator = struct.pack("<HH2sH", 0x0099, 0x0010, b"LO", 6) + b"ACME 1"
    return creator + struct.pack("<HH2s2xI", 0x0099, 0x1010, b"UN", 0xFFFFFFFF) + value


def with_un(value: bytes, *, pixels: bool = True, **kwargs: Any) -> bytes:
    """A synthetic instance (``factories.make_dataset(**kwargs)``, little endian syntaxes)
    with (0099,1010) UN of undefined length holding ``value`` before Pixel Data.

    ``pixels=False``: the object ends with ``value`` (for truncation tests).
    """
    ds = factories.make_dataset(**kwargs)
    ts = str(ds.file_meta.TransferSyntaxUID)
    deflated = ts == DeflatedExplicitVRLittleEndian
    data = factories.encode(ds)
    meta = data[: factories._meta_end(data)]
    if deflated:  # built in explicit VR LE, then its data set is deflated
        data = factories.encode(ds, ExplicitVRLittleEndian)
    pos = factories._find_element(data, 0x7FE00010, last=True)
    tail = data[pos:] if pixels else b""
    encoded = data[:pos] + _private(value, ts == ImplicitVRLittleEndian) + tail
    if not deflated:
        return encoded
    # PS3.5 A.5: the data set after the File Meta is deflated (raw deflate, no header)
    body = encoded[factories._meta_end(encoded) :]
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return meta + compressor.compress(body) + compressor.flush()
