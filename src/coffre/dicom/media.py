"""Writing a DICOM File-set for removable media: File IDs and the DICOMDIR (PS3.10, PS3.3 F).

The reading side (untrusted DICOMDIRs, at import) is :mod:`coffre.dicom.dicomdir`; this
module writes one from values the index already holds (DESIGN rule 6: no DICOM file is
opened), for the ZIP export of a share link.

**File IDs** (PS3.10 8.5): at most 8 components of 1-8 characters from ``A-Z 0-9 _``;
the objects are laid out as ``DICOM/STnnnn/SEnnnn/IMnnnnnn`` (study, series, instance
counters), opaque names that carry no UID and no patient data.

**DICOMDIR** (PS3.3 F.3, Basic Directory IOD; PS3.10 7): Media Storage Directory
Storage in Explicit VR Little Endian, with the File-set Identification Module and the
Directory Information Module. The records form the four-level hierarchy PATIENT →
STUDY → SERIES → IMAGE (PS3.3 F.4, F.5.1-F.5.3 and F.5.18): each level's records are
chained by *Offset of the Next Directory Record* (0004,1400) and point to their first
child by *Offset of Referenced Lower-Level Directory Entity* (0004,1420); offsets count
bytes from the first byte of the file (the preamble), to the Item tag of the record.
The records are written depth-first, with defined lengths, so every offset is computed
before anything is written.

Type 1 keys must not be empty; where the index holds no value, a neutral one is used:
Study Date → the day the archive received the study, Study Time → ``000000``, Study ID
→ the study's number in the File-set, Modality → ``OT``, Series Number and Instance
Number → their position. A record whose keys are not all ASCII carries Specific
Character Set ``ISO_IR 192`` (UTF-8), as F.5 requires (Type 1C). Every object is listed
as an IMAGE record whatever its SOP class: readers locate files by Referenced File ID
and SOP class; the dedicated record types of non-image objects (SR DOCUMENT,
PRESENTATION …) need keys the index does not keep.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

DICOMDIR_NAME = "DICOMDIR"
#: Media Storage Directory Storage (PS3.4 Annex B, PS3.10)
MEDIA_STORAGE_DIRECTORY_STORAGE = "1.2.840.10008.1.3.10"
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.10.1460.1"
IMPLEMENTATION_VERSION_NAME = "COFFRE"
#: the folder holding the objects (first File ID component)
ROOT = "DICOM"

_COMPONENT = re.compile(r"^[A-Z0-9_]{1,8}$")
_FILE_SET_ID = re.compile(r"^[A-Z0-9_ ]{0,16}$")
_ITEM = struct.pack("<HH", 0xFFFE, 0xE000)
_SEQUENCE_HEADER = struct.pack("<HH", 0x0004, 0x1220) + b"SQ\x00\x00"
_MAX_UL = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class MediaObject:
    """One object of the File-set: where it goes and the keys of its records."""

    file_id: tuple[str, ...]
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    instance_number: int | None
    #: (local identity key, PatientID, PatientName): objects of one key share a PATIENT record
    patient_key: object
    patient_id: str
    patient_name: str
    study_instance_uid: str
    study_date: str
    study_time: str
    study_description: str
    study_id: str
    accession_number: str
    #: day the archive received the study (YYYYMMDD), used when Study Date is empty
    received_date: str
    series_instance_uid: str
    modality: str
    series_number: int | None


def file_id(study: int, series: int, instance: int) -> tuple[str, ...]:
    """The File ID of the ``instance``-th object of the ``series``-th series of the
    ``study``-th study (1-based), e.g. ``("DICOM", "ST0001", "SE0001", "IM000001")``."""
    if not (0 < study <= 9999 and 0 < series <= 9999 and 0 < instance <= 999_999):
        raise ValueError("too many studies, series or instances for File IDs")
    return (ROOT, f"ST{study:04d}", f"SE{series:04d}", f"IM{instance:06d}")


def check_file_id(components: Sequence[str]) -> None:
    """PS3.10 8.5: 1-8 components of 1-8 characters of ``A-Z 0-9 _``."""
    if not 0 < len(components) <= 8 or not all(_COMPONENT.match(c) for c in components):
        raise ValueError(f"invalid File ID {'/'.join(components)!r}")


def path_of(components: Sequence[str]) -> str:
    """The path of a File ID in a ZIP archive or a folder (``/`` separators)."""
    return "/".join(components)


# -- records ---------------------------------------------------------------------------


@dataclass
class _Record:
    dataset: Dataset
    children: list[_Record] = field(default_factory=list)
    offset: int = 0
    #: encoded length of the item's content (without its 8-byte Item header)
    length: int = 0


def _ascii(*values: str) -> bool:
    return all(v.isascii() for v in values)


def _record(record_type: str, keys: Iterable[tuple[str, object]], texts: Sequence[str]) -> _Record:
    ds = Dataset()
    ds.OffsetOfTheNextDirectoryRecord = 0
    ds.RecordInUseFlag = 0xFFFF
    ds.OffsetOfReferencedLowerLevelDirectoryEntity = 0
    ds.DirectoryRecordType = record_type
    if not _ascii(*texts):
        ds.SpecificCharacterSet = "ISO_IR 192"
    for keyword, value in keys:
        setattr(ds, keyword, value)
    return _Record(ds)


def _number(value: int | None, fallback: int) -> int:
    return value if value is not None and 0 <= value < 2**31 else fallback


def _tree(objects: Sequence[MediaObject]) -> list[_Record]:
    """PATIENT records (in order of first appearance) with their STUDY, SERIES, IMAGE records."""
    patients: dict[object, _Record] = {}
    studies: dict[tuple[object, str], _Record] = {}
    series: dict[tuple[object, str, str], _Record] = {}
    for obj in objects:
        check_file_id(obj.file_id)
        p = patients.get(obj.patient_key)
        if p is None:
            p = patients[obj.patient_key] = _record("PATIENT", [
                ("PatientName", obj.patient_name), ("PatientID", obj.patient_id or "UNKNOWN"),
            ], [obj.patient_name, obj.patient_id])
        study_key = (obj.patient_key, obj.study_instance_uid)
        s = studies.get(study_key)
        if s is None:
            number = len(studies) + 1
            s = studies[study_key] = _record("STUDY", [
                ("StudyDate", obj.study_date or obj.received_date),
                ("StudyTime", obj.study_time or "000000"),
                ("StudyDescription", obj.study_description),
                ("StudyInstanceUID", obj.study_instance_uid),
                ("StudyID", obj.study_id or str(number)),
                ("AccessionNumber", obj.accession_number),
            ], [obj.study_description, obj.study_id, obj.accession_number])
            p.children.append(s)
        series_key = (*study_key, obj.series_instance_uid)
        e = series.get(series_key)
        if e is None:
            e = series[series_key] = _record("SERIES", [
                ("Modality", obj.modality or "OT"),
                ("SeriesInstanceUID", obj.series_instance_uid),
                ("SeriesNumber", _number(obj.series_number, len(s.children) + 1)),
            ], [obj.modality])
            s.children.append(e)
        e.children.append(_record("IMAGE", [
            ("ReferencedFileID", list(obj.file_id)),
            ("ReferencedSOPClassUIDInFile", obj.sop_class_uid),
            ("ReferencedSOPInstanceUIDInFile", obj.sop_instance_uid),
            ("ReferencedTransferSyntaxUIDInFile", obj.transfer_syntax_uid),
            ("InstanceNumber", _number(obj.instance_number, len(e.children) + 1)),
        ], []))
    return list(patients.values())


def _depth_first(records: Sequence[_Record]) -> list[_Record]:
    out: list[_Record] = []
    for record in records:
        out.append(record)
        out.extend(_depth_first(record.children))
    return out


def _encode(ds: Dataset) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = False
    write_dataset(buffer, ds)
    return buffer.getvalue()


def _link(chain: Sequence[_Record]) -> None:
    """Set the next/lower offsets of each record of ``chain`` and, recursively, below."""
    for index, record in enumerate(chain):
        following = chain[index + 1].offset if index + 1 < len(chain) else 0
        record.dataset.OffsetOfTheNextDirectoryRecord = following
        record.dataset.OffsetOfReferencedLowerLevelDirectoryEntity = (
            record.children[0].offset if record.children else 0
        )
        _link(record.children)


def write_dicomdir(objects: Sequence[MediaObject], *, file_set_id: str = "COFFRE") -> bytes:
    """The DICOMDIR of a File-set holding ``objects`` (module doc), as bytes."""
    if not _FILE_SET_ID.match(file_set_id):
        raise ValueError("a File-set ID is at most 16 characters of A-Z, 0-9, space and _")
    roots = _tree(objects)
    ordered = _depth_first(roots)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(MEDIA_STORAGE_DIRECTORY_STORAGE)
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    head = DicomBytesIO()
    head.is_little_endian = True
    head.is_implicit_VR = False
    head.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(head, meta, enforce_standard=True)

    top = Dataset()
    top.FileSetID = file_set_id
    top.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = 0
    top.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = 0
    top.FileSetConsistencyFlag = 0
    # every value here has a fixed length: the offsets below do not move when set
    start = len(head.getvalue()) + len(_encode(top)) + len(_SEQUENCE_HEADER) + 4

    position = start
    for record in ordered:  # lengths do not depend on the offsets' values (UL: 4 bytes)
        record.length = len(_encode(record.dataset))
        record.offset = position
        position += 8 + record.length
    if position > _MAX_UL:
        raise ValueError("the DICOMDIR would exceed 4 GiB")
    _link(roots)
    if roots:
        top.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = roots[0].offset
        top.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = roots[-1].offset

    parts = [head.getvalue(), _encode(top), _SEQUENCE_HEADER, struct.pack("<I", position - start)]
    for record in ordered:
        encoded = _encode(record.dataset)
        if len(encoded) != record.length:  # pragma: no cover - guarded by the fixed-length design
            raise AssertionError("a directory record changed length while its offsets were set")
        parts += [_ITEM, struct.pack("<I", len(encoded)), encoded]
    return b"".join(parts)
