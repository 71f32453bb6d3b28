"""The one table of indexed attributes.

Each row names a DICOM attribute the index keeps in a column of the table of its level
(PS3.4 C.6.1 / C.6.2 information model levels). The schema (``index/schema.py``), the
ingest extraction (``dicom/instance.py``) and, later, the query return keys are all
derived from this table, so that adding an attribute is one line here plus a migration.

Kinds decide how a value is stored:

- ``str``: the raw value (multi-values joined with ``\\``), trimmed;
- ``pn``: raw Person Name plus a normalised search column ``<column>_norm``
  (upper case, accents removed, PS3.5 6.2 component separators kept);
- ``date``: ``YYYYMMDD`` (DA, PS3.5 6.2), so that range matching is lexicographic;
- ``time``: ``HHMMSS.FFFFFF`` padded (TM), idem;
- ``datetime``: ``YYYYMMDDHHMMSS.FFFFFF`` padded (DT, PS3.5 6.2), converted to UTC and
  suffixed ``+0000`` when the value carries an offset from UTC
  (:func:`coffre.dicom.instance.normalize_dt`), idem;
- ``int``: an integer (IS, US), or NULL when absent or malformed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Level(enum.StrEnum):
    """Query/Retrieve levels of PS3.4 C.6."""

    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"


class Kind(enum.StrEnum):
    STR = "str"
    PN = "pn"
    DATE = "date"
    TIME = "time"
    DATETIME = "datetime"
    INT = "int"


@dataclass(frozen=True, slots=True)
class IndexedAttribute:
    keyword: str
    tag: int
    vr: str
    level: Level
    column: str
    kind: Kind
    #: column width for string kinds (the VR's maximum, PS3.5 6.2)
    length: int = 64


def _a(keyword: str, tag: int, vr: str, level: Level, column: str, kind: Kind, length: int = 64) -> IndexedAttribute:
    return IndexedAttribute(keyword, tag, vr, level, column, kind, length)


P, S, E, IM = Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE

INDEXED_ATTRIBUTES: tuple[IndexedAttribute, ...] = (
    # Patient level (the patient row is keyed by facility + issuer + PatientID).
    _a("PatientID", 0x00100020, "LO", P, "patient_id", Kind.STR),
    _a("IssuerOfPatientID", 0x00100021, "LO", P, "issuer", Kind.STR),
    _a("PatientName", 0x00100010, "PN", P, "patient_name", Kind.PN, 324),
    _a("PatientBirthDate", 0x00100030, "DA", P, "patient_birth_date", Kind.DATE, 8),
    _a("PatientSex", 0x00100040, "CS", P, "patient_sex", Kind.STR, 16),
    # Study level.
    _a("StudyInstanceUID", 0x0020000D, "UI", S, "study_instance_uid", Kind.STR),
    _a("StudyDate", 0x00080020, "DA", S, "study_date", Kind.DATE, 8),
    _a("StudyTime", 0x00080030, "TM", S, "study_time", Kind.TIME, 16),
    _a("AccessionNumber", 0x00080050, "SH", S, "accession_number", Kind.STR, 16),
    _a("StudyID", 0x00200010, "SH", S, "study_id", Kind.STR, 16),
    _a("StudyDescription", 0x00081030, "LO", S, "study_description", Kind.STR),
    _a("ReferringPhysicianName", 0x00080090, "PN", S, "referring_physician_name", Kind.PN, 324),
    # Series level.
    _a("SeriesInstanceUID", 0x0020000E, "UI", E, "series_instance_uid", Kind.STR),
    _a("Modality", 0x00080060, "CS", E, "modality", Kind.STR, 16),
    _a("SeriesNumber", 0x00200011, "IS", E, "series_number", Kind.INT),
    _a("SeriesDescription", 0x0008103E, "LO", E, "series_description", Kind.STR),
    _a("SeriesDate", 0x00080021, "DA", E, "series_date", Kind.DATE, 8),
    _a("SeriesTime", 0x00080031, "TM", E, "series_time", Kind.TIME, 16),
    _a("BodyPartExamined", 0x00180015, "CS", E, "body_part_examined", Kind.STR, 16),
    _a("InstitutionName", 0x00080080, "LO", E, "institution_name", Kind.STR),
    _a("StationName", 0x00081010, "SH", E, "station_name", Kind.STR, 16),
    # Instance level (IMAGE in PS3.4 C.6).
    _a("SOPInstanceUID", 0x00080018, "UI", IM, "sop_instance_uid", Kind.STR),
    _a("SOPClassUID", 0x00080016, "UI", IM, "sop_class_uid", Kind.STR),
    _a("InstanceNumber", 0x00200013, "IS", IM, "instance_number", Kind.INT),
    _a("ContentDate", 0x00080023, "DA", IM, "content_date", Kind.DATE, 8),
    _a("ContentTime", 0x00080033, "TM", IM, "content_time", Kind.TIME, 16),
    _a("AcquisitionDateTime", 0x0008002A, "DT", IM, "acquisition_datetime", Kind.DATETIME, 26),
    _a("NumberOfFrames", 0x00280008, "IS", IM, "number_of_frames", Kind.INT),
    _a("Rows", 0x00280010, "US", IM, "rows", Kind.INT),
    _a("Columns", 0x00280011, "US", IM, "columns", Kind.INT),
    _a("BitsAllocated", 0x00280100, "US", IM, "bits_allocated", Kind.INT),
)

BY_KEYWORD: dict[str, IndexedAttribute] = {a.keyword: a for a in INDEXED_ATTRIBUTES}
BY_TAG: dict[int, IndexedAttribute] = {a.tag: a for a in INDEXED_ATTRIBUTES}


def at_level(level: Level) -> tuple[IndexedAttribute, ...]:
    return tuple(a for a in INDEXED_ATTRIBUTES if a.level is level)
