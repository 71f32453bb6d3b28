"""Synthetic DICOM data for every test: valid instances, and hostile ones.

Everything is built in memory with pydicom (no real patient data, no network). Builders
return PS3.10 bytes (preamble, ``DICM``, File Meta, data set) unless they say otherwise.

Valid:
    make_dataset(...) -> Dataset       the pydicom data set (file_meta set)
    make_instance(...) -> bytes        the same, encoded in ``transfer_syntax``
    encode(ds, transfer_syntax=None)   any Dataset to PS3.10 bytes, File Meta kept as is
    compressed_test_files()            pydicom / pydicom-data compressed files present offline

Hostile:
    truncated(data), lying_length(data), huge_pixel_claim(data), deeply_nested(depth),
    deflate_bomb(inflated_size), with_uid(data_or_kwargs, keyword, value),
    with_meta_uid(data, keyword, value), without(keyword, **kwargs)
"""

from __future__ import annotations

import struct
import warnings
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)

from coffre.dicom.synthetic import MODALITY_SOP

__all__ = [
    "COMPRESSED_TEST_FILE_NAMES",
    "MODALITY_SOP_CLASSES",
    "compressed_test_files",
    "deeply_nested",
    "deflate_bomb",
    "encapsulated_instance",
    "encode",
    "huge_pixel_claim",
    "lying_length",
    "make_dataset",
    "make_instance",
    "truncated",
    "with_meta_uid",
    "with_raw_value",
    "with_uid",
    "without",
]

#: the SOP class of each synthetic modality, from the project's own table
MODALITY_SOP_CLASSES: dict[str, UID] = {m: UID(sop) for m, (sop, *_rest) in MODALITY_SOP.items()}

_NATIVE = {
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
}


@contextmanager
def _quiet() -> Iterator[None]:
    """pydicom warns about the invalid values hostile builders set on purpose."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def make_dataset(
    modality: str = "CT",
    patient_id: str = "P1",
    patient_name: str = "DOE^JOHN",
    issuer: str | None = None,
    birth_date: str = "19700101",
    sex: str = "M",
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    study_date: str = "20240101",
    rows: int = 64,
    columns: int = 64,
    frames: int = 1,
    transfer_syntax: str = ExplicitVRLittleEndian,
    accession: str = "",
    study_description: str = "",
    series_number: int = 1,
    instance_number: int = 1,
    pixel_seed: int = 0,
    extra: Mapping[str, Any] | None = None,
    color: bool | None = None,
) -> Dataset:
    """A small synthetic image of ``modality`` (CT, MR, CR, DX, MG, US).

    Grayscale modalities are 16-bit MONOCHROME2 (12 bits stored); US is 8-bit RGB unless
    ``color=False``. With ``frames > 1`` grayscale images use Multi-frame Grayscale Word
    SC Image Storage and US uses Ultrasound Multi-frame Image Storage. ``extra`` sets any
    further attribute by keyword (``None`` deletes it). Encapsulated ``transfer_syntax``
    values are produced with pydicom's encoders (RLE, JPEG 2000, JPEG-LS).
    """
    modality = modality.upper()
    if modality not in MODALITY_SOP_CLASSES:
        raise ValueError(f"unsupported modality {modality}")
    rgb = (modality == "US") if color is None else color
    if frames > 1:
        sop_class = (
            UltrasoundMultiFrameImageStorage
            if modality == "US"
            else MultiFrameGrayscaleWordSecondaryCaptureImageStorage
        )
    else:
        sop_class = MODALITY_SOP_CLASSES[modality]
    sop_uid = sop_uid or generate_uid()

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = study_date
    ds.SeriesDate = study_date
    ds.ContentDate = study_date
    ds.StudyTime = "101500"
    ds.SeriesTime = "101600.5"
    ds.ContentTime = "101601.123456"
    ds.AccessionNumber = accession
    ds.Modality = modality
    ds.Manufacturer = "COFFRE FACTORY"
    ds.InstitutionName = "Synthetic Hospital"
    ds.ReferringPhysicianName = "WHO^CARES"
    ds.StationName = "STATION1"
    ds.StudyDescription = study_description
    ds.SeriesDescription = f"{modality} series {series_number}"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    if issuer is not None:
        ds.IssuerOfPatientID = issuer
    ds.PatientBirthDate = birth_date
    ds.PatientSex = sex
    ds.BodyPartExamined = "CHEST"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.PatientOrientation = ["L", "P"] if modality in {"CR", "DX", "MG"} else ""

    rng = np.random.default_rng(pixel_seed)
    if rgb:
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0
        ds.BitsAllocated = 8
        ds.BitsStored = 8
        ds.HighBit = 7
        shape: tuple[int, ...] = (rows, columns, 3)
        pixels = rng.integers(0, 256, size=(frames, *shape), dtype=np.uint8)
    else:
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        shape = (rows, columns)
        pixels = rng.integers(0, 4096, size=(frames, *shape), dtype=np.uint16)
    ds.PixelRepresentation = 0
    ds.Rows = rows
    ds.Columns = columns
    if frames > 1:
        ds.NumberOfFrames = frames
    if modality == "CT":
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.KVP = 120
        ds.SliceThickness = 1.25
        ds.ImagePositionPatient = [0, 0, -10.0 * instance_number]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.5, 0.5]
    array = pixels[0] if frames == 1 else pixels
    if UID(transfer_syntax) == ExplicitVRBigEndian:
        array = array.byteswap()  # pydicom writes OW bytes as given
    ds.PixelData = array.tobytes()
    ds["PixelData"].VR = "OB" if ds.BitsAllocated <= 8 else "OW"

    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = UID("1.2.826.0.1.3680043.10.1")

    with _quiet():
        for keyword, value in (extra or {}).items():
            if value is None:
                if keyword in ds:
                    delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)

    ts = UID(transfer_syntax)
    if ts not in _NATIVE:
        ds.compress(ts)
    ds.file_meta.TransferSyntaxUID = ts
    return ds


def make_instance(**kwargs: Any) -> bytes:
    """PS3.10 bytes of :func:`make_dataset` (same keyword arguments)."""
    ds = make_dataset(**kwargs)
    return encode(ds)


def encode(ds: Dataset, transfer_syntax: str | None = None) -> bytes:
    """PS3.10 bytes of ``ds``, its File Meta written as is (no syncing with the data set).

    ``transfer_syntax`` defaults to ``ds.file_meta.TransferSyntaxUID``; native syntaxes
    only may be changed here (encapsulation is :func:`make_dataset`'s job).
    """
    meta = FileMetaDataset()
    for elem in ds.file_meta:
        if elem.tag.element != 0:
            meta.add(elem)
    ts = UID(transfer_syntax or meta.TransferSyntaxUID)
    meta.TransferSyntaxUID = ts
    out = DicomBytesIO()
    out.write(b"\0" * 128 + b"DICM")
    with _quiet():
        write_file_meta_info(out, meta, enforce_standard=True)
        body = DicomBytesIO()
        body.is_little_endian = ts != ExplicitVRBigEndian
        body.is_implicit_VR = ts == ImplicitVRLittleEndian
        plain = Dataset()
        plain.update(ds)  # data set only, no file_meta / preamble attributes
        write_dataset(body, plain)
    data = body.getvalue()
    if ts == DeflatedExplicitVRLittleEndian:
        compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -zlib.MAX_WBITS)
        data = compressor.compress(data) + compressor.flush()
    return out.getvalue() + data


# --- offline reference files ----------------------------------------------------------

#: name -> transfer syntax UID, of compressed files from pydicom and pydicom-data.
COMPRESSED_TEST_FILE_NAMES: dict[str, str] = {
    "SC_rgb_jpeg_dcmtk.dcm": "1.2.840.10008.1.2.4.50",
    "SC_rgb_small_odd_jpeg.dcm": "1.2.840.10008.1.2.4.50",
    "SC_jpeg_no_color_transform.dcm": "1.2.840.10008.1.2.4.50",
    "color3d_jpeg_baseline.dcm": "1.2.840.10008.1.2.4.50",
    "JPEG-lossy.dcm": "1.2.840.10008.1.2.4.51",
    "JPGExtended.dcm": "1.2.840.10008.1.2.4.51",
    "JPEG-LL.dcm": "1.2.840.10008.1.2.4.70",
    "SC_rgb_jpeg_gdcm.dcm": "1.2.840.10008.1.2.4.70",
    "JPGLosslessP14SV1_1s_1f_8b.dcm": "1.2.840.10008.1.2.4.70",
    "MR_small_jpeg_ls_lossless.dcm": "1.2.840.10008.1.2.4.80",
    "emri_small_jpeg_ls_lossless.dcm": "1.2.840.10008.1.2.4.80",
    "JPEGLSNearLossless_16.dcm": "1.2.840.10008.1.2.4.81",
    "emri_small_jpeg_2k_lossless.dcm": "1.2.840.10008.1.2.4.90",
    "MR2_J2KR.dcm": "1.2.840.10008.1.2.4.90",
    "US1_J2KR.dcm": "1.2.840.10008.1.2.4.90",
    "693_J2KR.dcm": "1.2.840.10008.1.2.4.90",
    "GDCMJ2K_TextGBR.dcm": "1.2.840.10008.1.2.4.90",
    "explicit_VR-UN.dcm": "1.2.840.10008.1.2.4.90",
    "JPEG2000.dcm": "1.2.840.10008.1.2.4.91",
    "RG1_J2KI.dcm": "1.2.840.10008.1.2.4.91",
    "SC_rgb_rle.dcm": "1.2.840.10008.1.2.5",
    "MR_small_RLE.dcm": "1.2.840.10008.1.2.5",
    "emri_small_RLE.dcm": "1.2.840.10008.1.2.5",
    "image_dfl.dcm": "1.2.840.10008.1.2.1.99",
}


def compressed_test_files() -> list[Path]:
    """Paths of :data:`COMPRESSED_TEST_FILE_NAMES` available offline (never downloads)."""
    paths: list[Path] = []
    for name in COMPRESSED_TEST_FILE_NAMES:
        path = get_testdata_file(name, download=False)
        if isinstance(path, str):
            paths.append(Path(path))
    return paths


# --- hostile builders -------------------------------------------------------------------


def _meta_end(data: bytes) -> int:
    """Offset of the first data set byte (after group 0002, explicit VR LE)."""
    pos = 132
    while struct.unpack_from("<H", data, pos)[0] == 0x0002:
        vr = data[pos + 4 : pos + 6]
        if vr in {b"OB", b"UN", b"UT", b"SQ", b"OW", b"UC", b"UR"}:
            pos += 12 + struct.unpack_from("<I", data, pos + 8)[0]
        else:
            pos += 8 + struct.unpack_from("<H", data, pos + 6)[0]
    return pos


def _find_element(data: bytes, tag: int, *, last: bool = False) -> int:
    """Offset of the explicit VR LE header of ``tag`` in the data set."""
    needle = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    start = _meta_end(data)
    pos = data.rfind(needle, start) if last else data.find(needle, start)
    if pos < 0:
        raise ValueError(f"tag {tag:08X} not found")
    return pos


def truncated(data: bytes, keep: int | None = None) -> bytes:
    """The first ``keep`` bytes (default: half of the file)."""
    return data[: len(data) // 2 if keep is None else keep]


def lying_length(data: bytes, tag: int = 0x00100010) -> bytes:
    """Explicit VR LE ``data`` where ``tag`` declares 2 more bytes than remain in the file."""
    pos = _find_element(data, tag)
    vr = data[pos + 4 : pos + 6]
    long_vr = vr in {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"}
    value_pos = pos + (12 if long_vr else 8)
    declared = len(data) - value_pos + 2
    patched = bytearray(data)
    if long_vr:
        struct.pack_into("<I", patched, pos + 8, declared)
    else:
        if declared > 0xFFFF:
            raise ValueError("file too large for a 16-bit lie; use a smaller instance")
        struct.pack_into("<H", patched, pos + 6, declared)
    return bytes(patched)


def huge_pixel_claim(
    data: bytes | None = None, declared: int = 0xFFFFFFF0, keep: int = 100
) -> bytes:
    """Pixel Data declaring ``declared`` bytes (4 GB) over ``keep`` real bytes."""
    data = data if data is not None else make_instance()
    pos = _find_element(data, 0x7FE00010, last=True)
    patched = bytearray(data[: pos + 12 + keep])
    struct.pack_into("<I", patched, pos + 8, declared)
    return bytes(patched)


def deeply_nested(depth: int, **kwargs: Any) -> bytes:
    """A valid explicit VR LE instance whose Content Sequence nests ``depth`` sequences.

    Built as bytes (pydicom itself recurses while writing), undefined lengths throughout.
    """
    ds = make_dataset(**kwargs)
    ds.ContentSequence = []
    data = encode(ds, ExplicitVRLittleEndian)
    header = struct.pack("<HH", 0x0040, 0xA730) + b"SQ\0\0"
    pos = data.index(header, _meta_end(data))
    (length,) = struct.unpack_from("<I", data, pos + 8)
    end = pos + 12 + (8 if length == 0xFFFFFFFF else length)
    seq_open = header + b"\xff\xff\xff\xff"
    item_open = b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    item_close = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
    seq_close = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    nested = (seq_open + item_open) * depth + (item_close + seq_close) * depth
    return data[:pos] + nested + data[end:]


def deflate_bomb(inflated_size: int, shape: str = "element", **kwargs: Any) -> bytes:
    """A Deflated Explicit VR LE instance whose data set inflates to ~``inflated_size``.

    The data set is a valid CT header followed by a private element: with
    ``shape="element"`` an OB of zeros, with ``shape="items"`` a sequence of empty items
    (many small elements, nothing large). The raw deflate stream is built from one
    compressed 1 MiB block repeated (each block ends on a full flush, so blocks are
    independent and byte aligned): building a 1 GiB bomb costs one 1 MiB compression.
    """
    ds = make_dataset(**kwargs)
    del ds.PixelData
    body = DicomBytesIO()
    body.is_little_endian = True
    body.is_implicit_VR = False
    plain = Dataset()
    plain.update(ds)
    write_dataset(body, plain)
    creator = b"COFFRE BOMB "
    prefix = body.getvalue()
    prefix += struct.pack("<HH", 0x0099, 0x0010) + b"LO" + struct.pack("<H", len(creator))
    prefix += creator
    block_size = 1 << 20
    if shape == "element":
        size = max(0, inflated_size - len(prefix) - 12) & ~1
        prefix += struct.pack("<HH", 0x0099, 0x1010) + b"OB\0\0" + struct.pack("<I", size)
        unit, suffix = b"\0", b""
    elif shape == "items":
        size = max(0, inflated_size - len(prefix) - 20) & ~7
        prefix += struct.pack("<HH", 0x0099, 0x1020) + b"SQ\0\0\xff\xff\xff\xff"
        unit, suffix = b"\xfe\xff\x00\xe0\x00\x00\x00\x00", b"\xfe\xff\xdd\xe0\0\0\0\0"
    else:
        raise ValueError(f"unknown bomb shape {shape}")

    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [compressor.compress(prefix) + compressor.flush(zlib.Z_FULL_FLUSH)]
    count, rest = divmod(size, block_size)
    if count:
        block = compressor.compress(unit * (block_size // len(unit)))
        block += compressor.flush(zlib.Z_FULL_FLUSH)
        parts.append(block * count)
    parts.append(compressor.compress(unit * (rest // len(unit)) + suffix) + compressor.flush())

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta.ImplementationClassUID = UID("1.2.826.0.1.3680043.10.1")
    out = DicomBytesIO()
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)
    return out.getvalue() + b"".join(parts)


_META_KEYWORDS = {
    "SOPInstanceUID": "MediaStorageSOPInstanceUID",
    "SOPClassUID": "MediaStorageSOPClassUID",
}


def with_uid(
    data_or_kwargs: bytes | Mapping[str, Any], keyword: str, value: str, *, meta: bool = True
) -> bytes:
    """An instance where ``keyword`` is ``value`` (any string, valid UID or not).

    ``data_or_kwargs`` is PS3.10 bytes or :func:`make_dataset` keyword arguments. For
    SOPInstanceUID / SOPClassUID the File Meta copy is changed too unless ``meta=False``
    (or ``value`` is empty: the File Meta must then keep one).
    """
    if isinstance(data_or_kwargs, bytes | bytearray):
        with _quiet():
            ds = dcmread(BytesIO(bytes(data_or_kwargs)))
    else:
        ds = make_dataset(**dict(data_or_kwargs))
    with _quiet():
        setattr(ds, keyword, value)
        if meta and keyword in _META_KEYWORDS and value:
            setattr(ds.file_meta, _META_KEYWORDS[keyword], value)
    return encode(ds)


def with_meta_uid(data: bytes, keyword: str, value: str) -> bytes:
    """``data`` with one File Meta element changed (a meta/data set mismatch)."""
    with _quiet():
        ds = dcmread(BytesIO(data))
        setattr(ds.file_meta, keyword, value)
    return encode(ds)


def without(keyword: str, **kwargs: Any) -> bytes:
    """A :func:`make_instance` with ``keyword`` removed from the data set (File Meta kept)."""
    ds = make_dataset(**kwargs)
    delattr(ds, keyword)
    return encode(ds)


def with_raw_value(data: bytes, tag: int, raw: bytes) -> bytes:
    """Explicit VR LE ``data`` with the short-VR element ``tag`` holding ``raw`` bytes as is.

    For malformed values pydicom refuses to build (IS ``abc``, DA ``2024``...).
    """
    pos = _find_element(data, tag)
    (old,) = struct.unpack_from("<H", data, pos + 6)
    value = raw + b" " if len(raw) % 2 else raw
    return data[: pos + 6] + struct.pack("<H", len(value)) + value + data[pos + 8 + old :]


def encapsulated_instance(
    frames: list[bytes],
    *,
    fragments_per_frame: int = 1,
    basic_offset_table: bool = True,
    transfer_syntax: str = "1.2.840.10008.1.2.4.90",
    **kwargs: Any,
) -> bytes:
    """An instance whose Pixel Data is ``frames`` encapsulated as given (never decoded).

    Each frame is split in ``fragments_per_frame`` fragments; ``basic_offset_table`` fills
    the Basic Offset Table (else it is empty).
    """
    from pydicom.encaps import encapsulate

    ds = make_dataset(frames=len(frames), **kwargs)
    ds.PixelData = encapsulate(
        frames, fragments_per_frame=fragments_per_frame, has_bot=basic_offset_table
    )
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    if len(frames) > 1:
        ds.NumberOfFrames = len(frames)
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    return encode(ds)
