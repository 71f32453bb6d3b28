"""Helpers of the network tests: raw Part 10 files, hostile datasets, pynetdicom SCUs.

Hostile objects are built here byte by byte (explicit VR little endian), never through
pydicom's writer alone, because pydicom refuses or "fixes" most of what we need to send.
``send_raw`` sends the encoded bytes of a file exactly as they are, with pynetdicom's
chunked sending (``_config.STORE_SEND_CHUNKED_DATASET``): the peer receives the bytes
after the file meta header, untouched.
"""

from __future__ import annotations

import struct
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    generate_uid,
)
from pynetdicom import AE, _config
from pynetdicom.dsutils import split_dataset

from coffre.dicom.synthetic import InstanceSpec, make_dataset

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
ARCHIVE_AE = "COFFRE"
PIXEL_DATA = 0x7FE00010

_LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}


# -- raw encoding --------------------------------------------------------------------


def element(tag: int, vr: str, value: bytes, length: int | None = None) -> bytes:
    """One explicit VR little endian element; ``length`` may lie."""
    n = len(value) if length is None else length
    group, elem = tag >> 16, tag & 0xFFFF
    if vr in _LONG_VRS:
        return struct.pack("<HH2s2xI", group, elem, vr.encode(), n) + value
    return struct.pack("<HH2sH", group, elem, vr.encode(), n) + value


def encode_body(ds: Dataset) -> bytes:
    """The dataset part (no preamble, no meta) in explicit VR little endian."""
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # hostile UIDs make pydicom warn
        write_dataset(fp, ds)
    return fp.getvalue()


def part10(sop_class: str, sop_instance: str, body: bytes, ts: str = ExplicitVRLittleEndian) -> bytes:
    """Preamble + meta header (announcing class/instance/TS) + ``body`` as given."""
    meta = FileMetaDataset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        meta.MediaStorageSOPClassUID = UID(sop_class)
        meta.MediaStorageSOPInstanceUID = UID(sop_instance)
        meta.TransferSyntaxUID = UID(ts)
        meta.ImplementationClassUID = UID("1.2.826.0.1.3680043.10.1460.99")
        fp = DicomBytesIO()
        fp.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(fp, meta, enforce_standard=True)
    return fp.getvalue() + body


def dataset_part(path: Path) -> bytes:
    """The bytes after the file meta header of a Part 10 file."""
    _meta, offset = split_dataset(path)
    return path.read_bytes()[offset:]


# -- hostile objects -----------------------------------------------------------------


@dataclass(frozen=True)
class Hostile:
    """A Part 10 object to send raw, with the DIMSE status the archive must answer."""

    name: str
    data: bytes
    sop_instance_uid: str
    status: int


def _base(spec: InstanceSpec | None = None) -> tuple[Dataset, bytes]:
    """A valid CT dataset without its pixel data, and the pixel data bytes."""
    ds = make_dataset(spec or InstanceSpec(seed=7))
    pixels = bytes(ds.PixelData)
    del ds.PixelData
    ds.file_meta = FileMetaDataset()
    return ds, pixels


def valid_raw(spec: InstanceSpec | None = None) -> tuple[bytes, str]:
    ds, pixels = _base(spec)
    uid = str(ds.SOPInstanceUID)
    body = encode_body(ds) + element(PIXEL_DATA, "OW", pixels)
    return part10(CT_IMAGE, uid, body), uid


def truncated() -> Hostile:
    data, uid = valid_raw()
    return Hostile("truncated", data[: len(data) - 3000], uid, 0xC000)


def lying_pixel_length() -> Hostile:
    """Pixel Data declares ~2 GiB (under max_object_bytes) over 100 real bytes."""
    ds, pixels = _base()
    uid = str(ds.SOPInstanceUID)
    body = encode_body(ds) + element(PIXEL_DATA, "OW", pixels[:100], length=0x7FFFFFF0)
    return Hostile("lying-pixel-length", part10(CT_IMAGE, uid, body), uid, 0xC000)


def lying_element_length() -> Hostile:
    """Patient's Name (0010,0010) declares 65,534 bytes; the dataset ends well before."""
    ds, pixels = _base()
    uid = str(ds.SOPInstanceUID)
    del ds.PatientName
    before = Dataset()
    after = Dataset()
    for elem in ds:
        (before if elem.tag < 0x00100010 else after).add(elem)
    body = (
        encode_body(before)
        + element(0x00100010, "PN", b"DOE^JOHN", length=0xFFFE)
        + encode_body(after)
        + element(PIXEL_DATA, "OW", pixels)
    )
    return Hostile("lying-element-length", part10(CT_IMAGE, uid, body), uid, 0xC000)


def nested_sequence(depth: int) -> bytes:
    """Content Sequence (0040,A730) nested ``depth`` levels, undefined lengths."""
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    item_end = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    seq_end = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    seq = struct.pack("<HH2s2xI", 0x0040, 0xA730, b"SQ", 0xFFFFFFFF)
    leaf = element(0x0040A160, "UT", b"deep")  # TextValue
    inner = leaf
    for _ in range(depth):
        inner = seq + item + inner + item_end + seq_end
    return inner


def deeply_nested(depth: int = 200) -> Hostile:
    ds, pixels = _base()
    uid = str(ds.SOPInstanceUID)
    # the synthetic dataset stops at group 0028, so (0040,A730) sorts before Pixel Data
    body = encode_body(ds) + nested_sequence(depth) + element(PIXEL_DATA, "OW", pixels)
    return Hostile("deeply-nested", part10(CT_IMAGE, uid, body), uid, 0xC003)


def with_sop_uid(uid: str, name: str) -> Hostile:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds, pixels = _base()
        ds.SOPInstanceUID = uid
        body = encode_body(ds) + element(PIXEL_DATA, "OW", pixels)
    return Hostile(name, part10(CT_IMAGE, uid, body), uid, 0xC002)


def without_sop_instance_uid() -> Hostile:
    ds, pixels = _base()
    announced = str(ds.SOPInstanceUID)
    del ds.SOPInstanceUID
    body = encode_body(ds) + element(PIXEL_DATA, "OW", pixels)
    return Hostile("missing-sop-instance-uid", part10(CT_IMAGE, announced, body), announced, 0xC001)


def sop_class_mismatch() -> Hostile:
    """A CT dataset announced (meta, presentation context, C-STORE) as MR Image Storage."""
    ds, pixels = _base()
    uid = str(ds.SOPInstanceUID)
    body = encode_body(ds) + element(PIXEL_DATA, "OW", pixels)
    return Hostile("sop-class-mismatch", part10(MR_IMAGE, uid, body), uid, 0xA900)


def sop_instance_mismatch() -> Hostile:
    """Affected SOP Instance UID of the request differs from the dataset's."""
    ds, pixels = _base()
    uid = str(ds.SOPInstanceUID)
    body = encode_body(ds) + element(PIXEL_DATA, "OW", pixels)
    return Hostile("sop-instance-mismatch", part10(CT_IMAGE, generate_uid(), body), uid, 0xA900)


def deflate_bomb(inflated_bytes: int = 512 * 1024**2) -> Hostile:
    """Deflated explicit VR LE dataset of ~0.5 MB whose Pixel Data inflates to 512 MiB."""
    ds, _pixels = _base()
    uid = str(ds.SOPInstanceUID)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    parts = [compressor.compress(encode_body(ds) + struct.pack("<HH2s2xI", 0x7FE0, 0x0010, b"OB", inflated_bytes))]
    chunk = b"\x00" * (16 * 1024**2)
    for _ in range(inflated_bytes // len(chunk)):
        parts.append(compressor.compress(chunk))
    parts.append(compressor.flush())
    body = b"".join(parts)
    return Hostile("deflate-bomb", part10(CT_IMAGE, uid, body, ts=DeflatedExplicitVRLittleEndian), uid, 0xA700)


# -- pynetdicom SCU ------------------------------------------------------------------


def make_ae(calling: str, contexts: list[tuple[str, list[str]]] | None = None) -> AE:
    ae = AE(ae_title=calling)
    ae.acse_timeout = 30
    ae.dimse_timeout = 60
    ae.network_timeout = 60
    for sop_class, syntaxes in contexts or [(CT_IMAGE, [ExplicitVRLittleEndian])]:
        ae.add_requested_context(sop_class, syntaxes)
    return ae


@contextmanager
def association(port: int, calling: str = "MODALITY_A", called: str = ARCHIVE_AE,
                contexts: list[tuple[str, list[str]]] | None = None) -> Iterator[Any]:
    ae = make_ae(calling, contexts)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    try:
        if not assoc.is_established:
            raise AssertionError(f"association {calling}->{called} not established")
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


@contextmanager
def chunked_sending() -> Iterator[None]:
    """Make ``send_c_store(path)`` send the file's encoded bytes without decoding."""
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        yield
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous


def status_of(rsp: Dataset) -> int | None:
    return int(rsp.Status) if "Status" in rsp else None


def send_raw(port: int, path: Path, calling: str = "MODALITY_A") -> Dataset:
    """Send the file's dataset bytes as they are in one association; the response."""
    with warnings.catch_warnings():
        # hostile UIDs in the file meta: pydicom warns when pynetdicom reads them
        warnings.filterwarnings("ignore", message="Invalid value for VR UI", category=UserWarning)
        meta, _offset = split_dataset(path)
        contexts = [(str(meta.MediaStorageSOPClassUID), [str(meta.TransferSyntaxUID)])]
        with chunked_sending(), association(port, calling, contexts=contexts) as assoc:
            return assoc.send_c_store(path)


def read(path: Path) -> Dataset:
    return dcmread(path)


def rejection(port: int, calling: str, called: str = ARCHIVE_AE) -> tuple[int, int, int] | None:
    """(result, source, reason) of the A-ASSOCIATE-RJ the archive answers, or ``None``."""
    from pynetdicom import evt

    seen: list[Any] = []

    def on_acse(event: Any) -> None:
        primitive = getattr(event, "primitive", None)
        if getattr(primitive, "result", None) is not None:
            seen.append(primitive)

    ae = make_ae(calling)
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title=called,
                             evt_handlers=[(evt.EVT_ACSE_RECV, on_acse)])
        if assoc.is_established:
            assoc.release()
            return None
        assert assoc.is_rejected, "association neither established nor rejected"
    finally:
        ae.shutdown()
    rsp = seen[-1]
    return int(rsp.result), int(rsp.result_source), int(rsp.diagnostic)


def write_instances(folder: Path, count: int, **spec: Any) -> dict[str, Path]:
    """``count`` synthetic 64x64 CT files of one series; SOP Instance UID -> path."""
    from coffre.dicom.synthetic import make_instance

    folder.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    made: dict[str, Path] = {}
    for n in range(1, count + 1):
        uid = generate_uid()
        kwargs = {"study_uid": study, "series_uid": series, "sop_uid": uid,
                  "instance_number": n, "seed": n, **spec}
        path = folder / f"ct{n:04d}.dcm"
        path.write_bytes(make_instance(InstanceSpec(**kwargs)))
        made[uid] = path
    return made
