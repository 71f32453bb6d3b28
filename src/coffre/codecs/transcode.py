"""Transcoding complete PS3.10 objects between transfer syntaxes (PS3.5 8, 10, Annex A).

The archive keeps what it received (DESIGN 4.7) and converts on the way out, when a
peer does not accept the stored transfer syntax. :func:`transcode` takes and returns
complete Part 10 bytes; the File Meta is rewritten (PS3.10 7.1): new Transfer Syntax UID,
Coffre's Implementation Class UID and Version Name, every other element (Media Storage
SOP Class/Instance UIDs, Source AE Title...) kept.

Routes, in a registry keyed by ``(source UID, target UID)`` (:func:`can_transcode`,
:func:`targets_for`):

- **native to native** (PS3.5 A.1 implicit VR LE, A.2 explicit VR LE, A.3 explicit VR BE,
  A.5 deflated): the data set is re-encoded without decoding pixels. A byte order change
  swaps the words of OW/OF/OL/OD/OV values (PS3.5 7.3), Pixel Data by Bits Allocated.
- **to native, decoding** encapsulated pixel data (PS3.5 8.2, A.4) with pydicom and its
  plugins (pylibjpeg first, for deterministic output): JPEG processes 1, 2-4, 14, SV1
  (A.4.1), JPEG-LS (A.4.3), JPEG 2000 (A.4.4), HTJ2K (A.4.6) and RLE (A.4.2). JPEG
  processes 1 and 2-4 decode YBR_FULL/YBR_FULL_422 to RGB (the colour transform is part
  of those codecs in practice, as pydicom does by default); other codecs keep their
  photometric interpretation (no lossy colour conversion), except JPEG 2000 with a
  multi-component transform (YBR_RCT/YBR_ICT), which its decoder returns as RGB. The
  output is interleaved (Planar Configuration 0). A lossy source (:data:`LOSSY`) sets
  Lossy Image Compression to ``01`` (PS3.3 C.7.6.1.1.5) and its method when absent.
- **to encapsulated** from native or lossless sources only (never from :data:`LOSSY`):
  pixels are decoded as above and encoded with pydicom's encoders: RLE Lossless
  (A.4.2), JPEG 2000 Lossless (A.4.4, pylibjpeg-openjpeg), JPEG 2000 (.91, encoded
  reversibly, so nothing is lost) and JPEG-LS Lossless (A.4.3, pyjpegls). One fragment
  per frame and a Basic Offset Table (A.4).
- encapsulated **video** (PS3.5 8.2.5, A.4.5-A.4.7) cannot be decoded: no route.

``source == target`` is always possible and returns the given bytes untouched.
A pair is possible per syntax (:func:`can_transcode`); an object may still fail at run
time (:class:`TranscodeError`) when its pixel format does not fit the target codec
(e.g. 32-bit pixels in RLE, Float Pixel Data in any encapsulated syntax).

Bounds (DESIGN 4.5): the object is scanned first (:func:`coffre.dicom.part10.scan`), and
before any pixel is decoded or encoded the decoded size
``Rows*Columns*SamplesPerPixel*ceil(BitsAllocated/8)*NumberOfFrames`` is compared with
``max_decoded_bytes`` (default ``LimitsSettings.max_decoded_bytes``;
:class:`~coffre.errors.TooLarge`). Peak memory is about twice
the decoded size (decoded frames, then the output being assembled).

Thread safety: pydicom's configuration is never changed; its warnings are silenced
under the process-wide lock that :mod:`coffre.dicom.instance` uses too (warning filters
are global), taken per frame so that concurrent transcodes interleave.
"""

from __future__ import annotations

import functools
import math
import struct
import threading
import warnings
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from types import MappingProxyType
from typing import Any

import numpy as np
from pydicom.charset import default_encoding
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import (
    correct_ambiguous_vr,
    write_data_element,
    write_dataset,
    write_file_meta_info,
)
from pydicom.multival import MultiValue
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.encoders.base import get_encoder
from pydicom.pixels.utils import pack_bits
from pydicom.uid import UID

from coffre import __version__
from coffre.dicom import instance as _instance
from coffre.dicom import part10, transfer_syntaxes
from coffre.dicom.synthetic import IMPLEMENTATION_CLASS_UID
from coffre.dicom.transfer_syntaxes import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    HTJ2K,
    HTJ2K_LOSSLESS,
    HTJ2K_LOSSLESS_RPCL,
    IMPLICIT_VR_LITTLE_ENDIAN,
    JPEG_2000,
    JPEG_2000_LOSSLESS,
    JPEG_BASELINE_8BIT,
    JPEG_EXTENDED_12BIT,
    JPEG_LOSSLESS,
    JPEG_LOSSLESS_SV1,
    JPEG_LS_LOSSLESS,
    JPEG_LS_NEAR_LOSSLESS,
    RLE_LOSSLESS,
)
from coffre.errors import (
    CoffreError,
    InvalidInstance,
    TooLarge,
    TranscodeError,
    UnsupportedTransferSyntax,
)
from coffre.settings import LimitsSettings

__all__ = [
    "DEFAULT_MAX_DECODED_BYTES",
    "ENCODABLE",
    "LOSSY",
    "NATIVE",
    "TranscodeError",
    "can_transcode",
    "decode_frames",
    "decoded_size",
    "targets_for",
    "transcode",
]

#: Default bound on the decoded pixel data of one object (1 GiB), as
#: ``LimitsSettings.max_decoded_bytes``.
DEFAULT_MAX_DECODED_BYTES = 1024**3

#: Native (unencapsulated) syntaxes, PS3.5 A.1, A.2, A.3 (retired), A.5.
NATIVE: tuple[str, ...] = (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
)

#: Encapsulated syntaxes whose process may discard information (PS3.5 A.4.1 processes
#: 1 and 2-4, A.4.3 near-lossless, A.4.4 and A.4.6 irreversible JPEG 2000). Decoding
#: them to native is allowed; re-encoding them in a compressed syntax is not.
#: lossy image syntaxes (video excluded), from the transfer syntax table
LOSSY: frozenset[str] = frozenset(
    ts.uid for ts in transfer_syntaxes.ACCEPTED_TRANSFER_SYNTAXES if ts.lossy and not ts.video
)

#: Lossy Image Compression Method (PS3.3 C.7.6.1.1.5.1) of each lossy syntax.
_LOSSY_METHOD = {
    JPEG_BASELINE_8BIT: "ISO_10918_1",
    JPEG_EXTENDED_12BIT: "ISO_10918_1",
    JPEG_LS_NEAR_LOSSLESS: "ISO_14495_1",
    JPEG_2000: "ISO_15444_1",
    HTJ2K: "ISO_15444_15",
}

#: Syntaxes JPEG processes 1 and 2-4: decoded YBR becomes RGB.
_TO_RGB = frozenset({JPEG_BASELINE_8BIT, JPEG_EXTENDED_12BIT})

_DECODABLE_CANDIDATES: tuple[str, ...] = (
    JPEG_BASELINE_8BIT,
    JPEG_EXTENDED_12BIT,
    JPEG_LOSSLESS,
    JPEG_LOSSLESS_SV1,
    JPEG_LS_LOSSLESS,
    JPEG_LS_NEAR_LOSSLESS,
    JPEG_2000_LOSSLESS,
    JPEG_2000,
    HTJ2K_LOSSLESS,
    HTJ2K_LOSSLESS_RPCL,
    HTJ2K,
    RLE_LOSSLESS,
)

#: target syntax -> (pydicom encoder UID, encoder options). JPEG 2000 (.91) is written
#: with the reversible (lossless) encoder: a valid .91 code stream that loses nothing.
ENCODABLE: Mapping[str, tuple[str, Mapping[str, Any]]] = {
    JPEG_2000_LOSSLESS: (JPEG_2000_LOSSLESS, {}),
    JPEG_LS_LOSSLESS: (JPEG_LS_LOSSLESS, {}),
    RLE_LOSSLESS: (RLE_LOSSLESS, {}),
    JPEG_2000: (JPEG_2000_LOSSLESS, {}),
}

#: Order in which targets are offered by :func:`targets_for` (after the source itself):
#: cheap and universal first, then lossless compression, then the rarely wanted ones.
_PREFERENCE: tuple[str, ...] = (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    JPEG_2000_LOSSLESS,
    JPEG_LS_LOSSLESS,
    RLE_LOSSLESS,
    JPEG_2000,
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
)

#: Decoder/encoder plugins in order of preference (deterministic lossy decoding).
_PLUGIN_PREFERENCE = ("pylibjpeg", "pyjpegls", "pydicom", "gdcm", "pillow")

_PIXEL_DATA = part10.PIXEL_DATA
_EXTENDED_OFFSET_TABLES = (0x7FE00001, 0x7FE00002)
_SWAP_SIZE = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"




# --- registry -----------------------------------------------------------------------

Transcoder = Callable[["_Source", str], bytes]


@dataclass(frozen=True, slots=True)
class _Source:
    data: bytes
    scan: part10.ScanResult
    max_decoded_bytes: int


def _build_registry() -> dict[tuple[str, str], Transcoder]:
    decodable = [uid for uid in _DECODABLE_CANDIDATES if _decoder_available(uid)]
    encodable = [uid for uid, (enc, _) in ENCODABLE.items() if _encoder_available(enc)]
    registry: dict[tuple[str, str], Transcoder] = {}
    for source in NATIVE:
        for target in NATIVE:
            if source != target:
                registry[source, target] = _rewrite_native
        for target in encodable:
            registry[source, target] = _recode
    for source in decodable:
        for target in NATIVE:
            registry[source, target] = _recode
        if source not in LOSSY:
            for target in encodable:
                if target != source:
                    registry[source, target] = _recode
    return registry


def _decoder_available(uid: str) -> bool:
    try:
        return bool(get_decoder(UID(uid)).is_available)
    except NotImplementedError:
        return False


def _encoder_available(uid: str) -> bool:
    try:
        return bool(get_encoder(UID(uid)).is_available)
    except NotImplementedError:
        return False


@functools.cache
def _registry() -> Mapping[tuple[str, str], Transcoder]:
    """Built once, on first use (plugin availability is known then); read-only after."""
    return MappingProxyType(_build_registry())


def can_transcode(source: str, target: str) -> bool:
    """Whether objects in ``source`` can be produced in ``target`` (``source == target``
    included, for any accepted syntax)."""
    if source == target:
        return transfer_syntaxes.is_accepted(source)
    return (source, target) in _registry()


def targets_for(source: str) -> tuple[str, ...]:
    """Syntaxes ``source`` objects can be sent in, best first: ``source`` itself (no
    transcoding), explicit then implicit VR little endian, lossless compression (JPEG
    2000, JPEG-LS, RLE), JPEG 2000 (.91), deflated, big endian. Empty when ``source``
    is not an accepted syntax."""
    if not transfer_syntaxes.is_accepted(source):
        return ()
    return (source, *(t for t in _PREFERENCE if (source, t) in _registry()))


# --- public API ---------------------------------------------------------------------


def transcode(
    data: bytes,
    target: str,
    *,
    limits: LimitsSettings,
    max_decoded_bytes: int | None = None,
) -> bytes:
    """The PS3.10 object ``data`` re-encoded in ``target`` (module docstring).

    Raises :class:`TranscodeError` for an impossible pair or a codec failure,
    :class:`~coffre.errors.TooLarge` when the decoded pixels would pass
    ``max_decoded_bytes`` (default ``limits.max_decoded_bytes``), and the :func:`~coffre.dicom.part10.scan` errors for an
    object that is unsafe to read.
    """
    scan = part10.scan(data, limits)
    source = scan.transfer_syntax_uid
    if source == target:
        return data
    if not transfer_syntaxes.is_accepted(target):
        raise TranscodeError("target transfer syntax is not one the archive knows")
    if transfer_syntaxes.is_video(source):
        raise TranscodeError("encapsulated video cannot be decoded by the archive")
    transcoder = _registry().get((source, target))
    if transcoder is None:
        if source in LOSSY and target in ENCODABLE:
            raise TranscodeError("a lossy source can only be decompressed, not compressed again")
        raise TranscodeError(f"no codec converts {_name(source)} to {_name(target)}")
    bound = limits.max_decoded_bytes if max_decoded_bytes is None else max_decoded_bytes
    return transcoder(_Source(data, scan, bound), target)


def decode_frames(
    data: bytes,
    *,
    limits: LimitsSettings | None = None,
    max_decoded_bytes: int | None = None,
) -> np.ndarray:
    """The pixels of a PS3.10 object as :func:`transcode` decodes them.

    Shape ``(frames, rows, columns)`` or ``(frames, rows, columns, samples)``
    (interleaved); the colour policy is the module's (JPEG processes 1 and 2-4 give RGB,
    others keep their photometric interpretation). Raises :class:`TranscodeError` when
    there are no pixels or they cannot be decoded.
    """
    limits = limits or LimitsSettings()
    bound = limits.max_decoded_bytes if max_decoded_bytes is None else max_decoded_bytes
    scan = part10.scan(data, limits)
    source = scan.transfer_syntax_uid
    if transfer_syntaxes.is_video(source):
        raise TranscodeError("encapsulated video cannot be decoded by the archive")
    ds = _read_dataset(scan, with_pixels=False)
    pixel = scan.pixel_data
    if pixel is None or pixel.tag != _PIXEL_DATA:
        raise TranscodeError("the object has no Pixel Data to decode")
    frames, _ = _decode(scan, ds, pixel, bound)
    return frames


def decoded_size(ds: Dataset) -> int:
    """Bytes the decoded Pixel Data of ``ds`` occupies (one byte per sample at least)."""
    rows = _pixel_int(ds, "Rows", None)
    columns = _pixel_int(ds, "Columns", None)
    samples = _pixel_int(ds, "SamplesPerPixel", 1)
    bits = _pixel_int(ds, "BitsAllocated", None)
    frames = _pixel_int(ds, "NumberOfFrames", 1)
    return rows * columns * samples * max(1, math.ceil(bits / 8)) * frames


# --- routes -------------------------------------------------------------------------


def _rewrite_native(src: _Source, target: str) -> bytes:
    """Native to native: re-encode the data set, pixels untouched (byte order aside)."""
    source_ts = transfer_syntaxes.get(src.scan.transfer_syntax_uid)
    target_ts = transfer_syntaxes.get(target)
    ds = _read_dataset(src.scan, with_pixels=True)
    with pydicom_guard():
        try:
            if source_ts.little_endian != target_ts.little_endian:
                correct_ambiguous_vr(ds, target_ts.little_endian)
                _swap_words(ds, top_level=True)
            if not target_ts.implicit_vr and _PIXEL_DATA in ds and _bits(ds) <= 8:
                ds[_PIXEL_DATA].VR = "OB"  # PS3.5 A.2/A.3: OB allowed, no byte order
            body = _write(ds, target_ts, None)
        except CoffreError:
            raise
        except Exception:
            raise TranscodeError("data set cannot be re-encoded") from None
    del ds
    return _assemble(src.data, target, body, deflate=target_ts.deflated)


def _recode(src: _Source, target: str) -> bytes:
    """Decode the pixels (native or encapsulated) and write them native or encoded."""
    scan = src.scan
    target_ts = transfer_syntaxes.get(target)
    ds = _read_dataset(scan, with_pixels=False)
    pixel = scan.pixel_data
    pixel_parts: list[bytes] = []
    if pixel is not None:
        if pixel.tag != _PIXEL_DATA:
            raise TranscodeError("Float Pixel Data cannot be encapsulated")
        frames, photometric = _decode(scan, ds, pixel, src.max_decoded_bytes)
        _describe_decoded(ds, photometric, frames)
        if scan.transfer_syntax_uid in LOSSY:
            _mark_lossy(ds, scan.transfer_syntax_uid)
        if target_ts.encapsulated:
            encoded = _encode(ds, frames, target)
            if target in LOSSY and "LossyImageCompression" not in ds:
                # encoded reversibly in a syntax that may be lossy: say it was not
                ds.LossyImageCompression = "00"
            del frames
            pixel_parts = _encapsulated_element(encoded)
            del encoded
        else:
            pixel_parts = _native_element(ds, frames, target_ts)
            del frames
    for tag in _EXTENDED_OFFSET_TABLES:
        if tag in ds:
            del ds[tag]
    with pydicom_guard():
        try:
            body = _write(ds, target_ts, pixel_parts if pixel is not None else None)
        except CoffreError:
            raise
        except Exception:
            raise TranscodeError("data set cannot be re-encoded") from None
    del pixel_parts
    return _assemble(src.data, target, body, deflate=target_ts.deflated)


# --- decoding -----------------------------------------------------------------------


def _decode(
    scan: part10.ScanResult, ds: Dataset, pixel: part10.PixelElement, bound: int
) -> tuple[np.ndarray, str]:
    """All frames of ``pixel`` as one array ``(frames, rows, columns[, samples])`` and
    the photometric interpretation they are in."""
    size = decoded_size(ds)
    if size > bound:
        raise TooLarge("decoded pixel data would be larger than max_decoded_bytes")
    bits = _pixel_int(ds, "BitsAllocated", None)
    if bits not in (1, 8, 16, 32, 64):
        raise TranscodeError("BitsAllocated must be 1, 8, 16, 32 or 64 to be decoded")
    ts = scan.transfer_syntax_uid
    if pixel.encapsulated:
        # PS3.5 A.4: items of the encapsulated value, without the sequence delimiter
        value = scan.buffer[pixel.value_offset : pixel.element_end - 8]
    else:
        value = scan.buffer[pixel.value_offset : pixel.value_offset + pixel.value_length]
    work = Dataset()
    for tag in ds.keys():
        if 0x00280000 <= tag < 0x00290000:
            work[tag] = ds.get_item(tag)
    work.set_original_encoding(*ds.original_encoding)
    work.file_meta = FileMetaDataset()
    work.file_meta.TransferSyntaxUID = UID(ts)
    with pydicom_guard():
        try:
            work.PixelData = value
            work["PixelData"].VR = "OB" if pixel.encapsulated or bits <= 8 else "OW"
            work["PixelData"].is_undefined_length = pixel.encapsulated
        except Exception:
            raise InvalidInstance("pixel description cannot be decoded") from None
    decoder = get_decoder(UID(ts))
    preferred = _preferred_plugin(tuple(decoder.available_plugins))
    attempts = [preferred, ""] if preferred else [""]
    for attempt, plugin in enumerate(attempts):
        try:
            return _decode_all(decoder, work, plugin, ts)
        except (CoffreError, MemoryError):
            raise
        except Exception:
            if attempt == len(attempts) - 1:
                raise TranscodeError("pixel data cannot be decoded") from None
    raise TranscodeError("pixel data cannot be decoded")  # pragma: no cover


def _decode_all(decoder: Any, work: Dataset, plugin: str, ts: str) -> tuple[np.ndarray, str]:
    iterator = decoder.iter_array(work, decoding_plugin=plugin, as_rgb=ts in _TO_RGB)
    out: np.ndarray | None = None
    photometric = ""
    count = int(work.get("NumberOfFrames") or 1)
    index = 0
    while True:
        with pydicom_guard():
            try:
                arr, info = next(iterator)
            except StopIteration:
                break
        if out is None:
            out = np.empty((count, *arr.shape), dtype=arr.dtype)
            photometric = str(info.get("photometric_interpretation", ""))
        if index >= count or arr.shape != out.shape[1:]:
            raise TranscodeError("decoded frames do not match the pixel description")
        out[index] = arr
        index += 1
    if out is None or index != count:
        raise TranscodeError("decoded frames do not match NumberOfFrames")
    return out, photometric


def _preferred_plugin(available: tuple[str, ...]) -> str:
    for name in _PLUGIN_PREFERENCE:
        if name in available:
            return name
    return ""


def _describe_decoded(ds: Dataset, photometric: str, frames: np.ndarray) -> None:
    """Image Pixel module after decoding (PS3.3 C.7.6.3): interleaved, decoded colour."""
    if photometric:
        ds.PhotometricInterpretation = photometric
    if _pixel_int(ds, "SamplesPerPixel", 1) > 1:
        ds.PlanarConfiguration = 0
    elif "PlanarConfiguration" in ds:
        del ds.PlanarConfiguration


def _mark_lossy(ds: Dataset, ts: str) -> None:
    """PS3.3 C.7.6.1.1.5: once lossy compressed, an image stays flagged. An explicit
    ``00`` on a syntax that may also be lossless (JPEG-LS near-lossless with NEAR 0,
    reversible JPEG 2000) is the sender's statement and is kept."""
    current = str(ds.get("LossyImageCompression", "") or "").strip()
    if current == "01":
        return
    if current == "00" and ts not in _TO_RGB:
        return
    ds.LossyImageCompression = "01"
    if "LossyImageCompressionMethod" not in ds:
        ds.LossyImageCompressionMethod = _LOSSY_METHOD[ts]


# --- encoding -----------------------------------------------------------------------


def _encode(ds: Dataset, frames: np.ndarray, target: str) -> list[bytes]:
    encoder_uid, extra = ENCODABLE[target]
    encoder = get_encoder(UID(encoder_uid))
    plugin = _preferred_plugin(tuple(encoder.available_plugins))
    options: dict[str, Any] = {
        "rows": _pixel_int(ds, "Rows", None),
        "columns": _pixel_int(ds, "Columns", None),
        "samples_per_pixel": _pixel_int(ds, "SamplesPerPixel", 1),
        "bits_allocated": _pixel_int(ds, "BitsAllocated", None),
        "bits_stored": _pixel_int(ds, "BitsStored", None),
        "pixel_representation": _pixel_int(ds, "PixelRepresentation", 0, minimum=0),
        "photometric_interpretation": str(ds.PhotometricInterpretation),
        "number_of_frames": 1,
        "planar_configuration": 0,
        **extra,
    }
    encoded: list[bytes] = []
    for frame in frames:
        with pydicom_guard():
            try:
                encoded.append(bytes(encoder.encode(frame, encoding_plugin=plugin, **options)))
            except Exception:
                raise TranscodeError(f"pixel data cannot be encoded in {_name(target)}") from None
    return encoded


def _encapsulated_element(frames: list[bytes]) -> list[bytes]:
    """Pixel Data (7FE0,0010) OB of undefined length: BOT, one fragment per frame."""
    total = sum(len(f) + (len(f) & 1) + 8 for f in frames[:-1])
    if total > 0xFFFFFFFF:
        raise TranscodeError("encoded pixel data too large for a Basic Offset Table")
    header = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF)
    return [header, encapsulate(frames, has_bot=True), _SEQUENCE_DELIMITER]


def _native_element(
    ds: Dataset, frames: np.ndarray, ts: transfer_syntaxes.TransferSyntax
) -> list[bytes]:
    """Native Pixel Data (PS3.5 8.1.1) in the byte order and VR encoding of ``ts``."""
    bits = _pixel_int(ds, "BitsAllocated", None)
    if bits == 1:
        value = pack_bits(frames)
    else:
        dtype = frames.dtype.newbyteorder("<" if ts.little_endian else ">")
        value = frames.astype(dtype, copy=False).tobytes()
    if len(value) & 1:
        value += b"\0"
    if len(value) > 0xFFFFFFFE:
        raise TooLarge("native pixel data would pass the 4 GiB element length")
    vr = b"OB" if bits <= 8 else b"OW"
    order = "<" if ts.little_endian else ">"
    if ts.implicit_vr:
        header = struct.pack(order + "HHI", 0x7FE0, 0x0010, len(value))
    else:
        header = struct.pack(order + "HH2sHI", 0x7FE0, 0x0010, vr, 0, len(value))
    return [header, value]


# --- data set reading and writing -----------------------------------------------------


@contextmanager
def pydicom_guard() -> Iterator[None]:
    """pydicom warnings quote values (patient data) and warning filters are global:
    silence them under the lock :mod:`coffre.dicom.instance` holds for the same reason."""
    with _LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


_LOCK: threading.Lock = _instance.PYDICOM_LOCK


def _read_dataset(scan: part10.ScanResult, *, with_pixels: bool) -> Dataset:
    syntax = transfer_syntaxes.get(scan.transfer_syntax_uid)
    raw = scan.buffer[scan.dataset_offset :] if with_pixels else scan.dataset_without_pixels()
    with pydicom_guard():
        try:
            return read_dataset(
                BytesIO(raw),
                is_implicit_VR=syntax.implicit_vr,
                is_little_endian=syntax.little_endian,
            )
        except Exception:
            raise InvalidInstance("data set cannot be parsed") from None


def _meta_end(data: bytes) -> int:
    """Offset after group 0002 (explicit VR LE, already checked by the scanner)."""
    pos = part10.DATA_START
    while pos + 8 <= len(data) and data[pos : pos + 2] == b"\x02\x00":
        if data[pos + 4 : pos + 6] in part10.LONG_VRS:
            pos += 12 + struct.unpack_from("<I", data, pos + 8)[0]
        else:
            pos += 8 + struct.unpack_from("<H", data, pos + 6)[0]
    return pos


def _read_meta(data: bytes) -> Dataset:
    with pydicom_guard():
        try:
            return read_dataset(
                BytesIO(data[part10.DATA_START : _meta_end(data)]),
                is_implicit_VR=False,
                is_little_endian=True,
            )
        except Exception:
            raise InvalidInstance("File Meta Information cannot be parsed") from None


def _write(
    ds: Dataset, ts: transfer_syntaxes.TransferSyntax, pixel: list[bytes] | None
) -> list[bytes]:
    """The data set encoded as ``ts`` says, in parts (deflating is done by the caller).

    ``pixel``, the parts of an encoded Pixel Data element, comes in tag order: between
    the elements before (7FE0,0010) and the few that may follow it (padding,
    signatures). The parts are not copied: the output is joined once, at the end.
    """
    out = DicomBytesIO()
    out.is_little_endian = ts.little_endian
    out.is_implicit_VR = ts.implicit_vr
    if pixel is None:
        write_dataset(out, ds)
        return [out.getvalue()]
    tail_tags = sorted(tag for tag in ds.keys() if tag > _PIXEL_DATA)
    same = ds.original_encoding == (ts.implicit_vr, ts.little_endian)
    tail = [ds.get_item(tag) if same else ds[tag] for tag in tail_tags]
    charset = ds.get("SpecificCharacterSet", default_encoding)
    for tag in tail_tags:
        del ds[tag]
    write_dataset(out, ds)
    rest = DicomBytesIO()
    rest.is_little_endian = ts.little_endian
    rest.is_implicit_VR = ts.implicit_vr
    for elem in tail:
        if elem.tag.element != 0:  # no group lengths (PS3.5 7.2), as pydicom does
            write_data_element(rest, elem, charset)
    return [out.getvalue(), *pixel, rest.getvalue()]


def _deflate(body: list[bytes]) -> list[bytes]:
    """PS3.5 A.5: a raw deflate stream (RFC 1951, no zlib header), even length."""
    compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = [compressor.compress(part) for part in body]
    out.append(compressor.flush())
    if sum(len(part) for part in out) & 1:
        out.append(b"\0")
    return out


def _assemble(original: bytes, target: str, body: list[bytes], *, deflate: bool) -> bytes:
    """Preamble (zeros), ``DICM``, File Meta (PS3.10 7.1) rewritten for ``target``, then
    the data set ``body`` (deflated when ``deflate``), joined in one copy."""
    if deflate:
        body = _deflate(body)
    old = _read_meta(original)
    meta = FileMetaDataset()
    with pydicom_guard():
        try:
            for elem in old:
                if elem.tag.element != 0:
                    meta.add(elem)
            meta.TransferSyntaxUID = UID(target)
            meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
            meta.ImplementationVersionName = f"COFFRE_{__version__}"[:16]
            out = DicomBytesIO()
            out.is_little_endian = True
            out.is_implicit_VR = False
            out.write(b"\0" * part10.PREAMBLE_LENGTH + part10.MAGIC)
            write_file_meta_info(out, meta, enforce_standard=True)
        except Exception:
            raise InvalidInstance("File Meta Information cannot be re-encoded") from None
    return b"".join([out.getvalue(), *body])


def _swap_words(ds: Dataset, *, top_level: bool) -> None:
    """Reverse the byte order of OW/OF/OL/OD/OV values (PS3.5 7.3), recursively; top
    level Pixel Data by Bits Allocated (16, 32 or 64 bits per sample)."""
    bits = _bits(ds) if top_level else 8
    for tag in list(ds.keys()):
        elem = ds[tag]
        if elem.VR == "SQ":
            for item in elem.value:
                _swap_words(item, top_level=False)
            continue
        size = _SWAP_SIZE.get(str(elem.VR))
        if not size or not isinstance(elem.value, bytes | bytearray):
            continue
        if top_level and tag == _PIXEL_DATA:
            if bits <= 8:
                continue  # bytes: written as OB, no byte order (PS3.5 8.1.1)
            size = bits // 8 if bits in (16, 32, 64) else size
        value = bytes(elem.value)
        usable = len(value) - len(value) % size
        swapped = np.frombuffer(value[:usable], dtype=f"<u{size}").byteswap().tobytes()
        elem.value = swapped + value[usable:]


# --- small helpers --------------------------------------------------------------------


def _pixel_int(ds: Dataset, keyword: str, default: int | None, *, minimum: int = 1) -> int:
    """A positive (or ``minimum``) integer Image Pixel attribute; InvalidInstance else."""
    if keyword not in ds:
        if default is None:
            raise InvalidInstance(f"pixel data present but {keyword} is missing")
        return default
    try:
        value: Any = ds[keyword].value
    except Exception:
        raise InvalidInstance(f"{keyword} is malformed") from None
    if value is None or value == "":
        if default is None:
            raise InvalidInstance(f"{keyword} is empty")
        return default
    if isinstance(value, MultiValue | list | DataElement | RawDataElement):
        raise InvalidInstance(f"{keyword} is malformed")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InvalidInstance(f"{keyword} is malformed") from None
    if number < minimum:
        raise InvalidInstance(f"{keyword} is out of range")
    return number


def _bits(ds: Dataset) -> int:
    """Bits Allocated, 8 when absent (no pixel data)."""
    return _pixel_int(ds, "BitsAllocated", 8)


def _name(uid: str) -> str:
    try:
        return transfer_syntaxes.get(uid).name
    except UnsupportedTransferSyntax:
        return "an unknown transfer syntax"
