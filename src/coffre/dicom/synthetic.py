"""Synthetic, valid DICOM instances for the demo territory and for tests.

Never real patient data: names, identifiers and pixels are generated. Pixel data are
smooth patterns (a disc and a gradient) so that rendering and codecs have something to
show, and differ by ``seed`` so that every instance has distinct content.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from io import BytesIO

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from coffre import __version__
from coffre.dicom.ins import INS_NIA, INS_NIA_TEST, INS_NIR_TEST

#: modality -> (SOP Class UID, photometric interpretation, bits allocated, samples)
MODALITY_SOP: dict[str, tuple[str, str, int, int]] = {
    "CT": ("1.2.840.10008.5.1.4.1.1.2", "MONOCHROME2", 16, 1),
    "MR": ("1.2.840.10008.5.1.4.1.1.4", "MONOCHROME2", 16, 1),
    "CR": ("1.2.840.10008.5.1.4.1.1.1", "MONOCHROME1", 16, 1),
    "DX": ("1.2.840.10008.5.1.4.1.1.1.1", "MONOCHROME2", 16, 1),
    "MG": ("1.2.840.10008.5.1.4.1.1.1.2", "MONOCHROME2", 16, 1),
    "US": ("1.2.840.10008.5.1.4.1.1.6.1", "RGB", 8, 3),
}

IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.10.1460.1"


@dataclass(frozen=True, slots=True)
class OtherPatientID:
    """One item of OtherPatientIDsSequence (0010,1002), with the Issuer of Patient ID
    Macro (PS3.3 Table 10-18): ``universal_entity_id`` fills
    IssuerOfPatientIDQualifiersSequence > UniversalEntityID (+ UniversalEntityIDType)."""

    patient_id: str
    issuer: str = ""
    universal_entity_id: str = ""
    universal_entity_id_type: str = "ISO"
    type_of_patient_id: str = "TEXT"


def ins_identifier(value: str, oid: str = INS_NIR_TEST) -> OtherPatientID:
    """An INS as a facility sends it qualified (default: the *test* INS-NIR authority,
    since synthetic data must never look like a real person's INS)."""
    kind = "INS-NIA" if oid in (INS_NIA, INS_NIA_TEST) else "INS-NIR"
    return OtherPatientID(patient_id=value, issuer=kind, universal_entity_id=oid)


@dataclass(frozen=True, slots=True)
class InstanceSpec:
    """What one synthetic instance looks like; every field has a sensible default."""

    modality: str = "CT"
    patient_id: str = "P0001"
    patient_name: str = "DOE^JOHN"
    issuer: str = ""
    #: IssuerOfPatientIDQualifiersSequence of PatientID: (UniversalEntityID, its type)
    issuer_qualifiers: tuple[tuple[str, str], ...] = ()
    #: OtherPatientIDsSequence items (e.g. the INS, see :func:`ins_identifier`)
    other_patient_ids: tuple[OtherPatientID, ...] = ()
    birth_date: str = "19700101"
    sex: str = "M"
    study_uid: str = field(default_factory=generate_uid)
    series_uid: str = field(default_factory=generate_uid)
    sop_uid: str = field(default_factory=generate_uid)
    study_date: str = "20240101"
    study_time: str = "101500"
    accession: str = ""
    study_description: str = ""
    series_description: str = ""
    body_part: str = ""
    institution: str = ""
    series_number: int = 1
    instance_number: int = 1
    rows: int = 64
    columns: int = 64
    frames: int = 1
    seed: int = 0
    transfer_syntax: str = ExplicitVRLittleEndian


def _pixels(spec: InstanceSpec, bits: int, samples: int) -> np.ndarray:
    rng = np.random.default_rng(spec.seed)
    y, x = np.mgrid[0 : spec.rows, 0 : spec.columns]
    cy, cx = spec.rows / 2, spec.columns / 2
    radius = min(spec.rows, spec.columns) / 3
    frames = []
    for f in range(spec.frames):
        disc = ((y - cy) ** 2 + (x - cx) ** 2) < (radius * (1 + 0.1 * ((spec.seed + f) % 5))) ** 2
        gradient = (x + y + 7 * f) / (spec.rows + spec.columns)
        if bits == 16:
            img = (gradient * 1000 + disc * 1500 + rng.integers(0, 20, size=disc.shape)).astype(np.uint16)
        else:
            base = (gradient * 200 + disc * 50).astype(np.uint8)
            img = np.stack([base, np.roll(base, 5, axis=1), 255 - base], axis=-1) if samples == 3 else base
        frames.append(img)
    return np.stack(frames) if spec.frames > 1 else frames[0]


def _qualifier(universal_entity_id: str, kind: str) -> Dataset:
    item = Dataset()
    item.UniversalEntityID = universal_entity_id
    item.UniversalEntityIDType = kind
    return item


def _other_id(other: OtherPatientID) -> Dataset:
    item = Dataset()
    item.PatientID = other.patient_id
    if other.issuer:
        item.IssuerOfPatientID = other.issuer
    if other.universal_entity_id:
        item.IssuerOfPatientIDQualifiersSequence = [
            _qualifier(other.universal_entity_id, other.universal_entity_id_type)
        ]
    item.TypeOfPatientID = other.type_of_patient_id
    return item


def make_dataset(spec: InstanceSpec) -> Dataset:
    """A complete dataset (with file meta) for ``spec``."""
    sop_class, photometric, bits, samples = MODALITY_SOP[spec.modality]
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = spec.sop_uid
    ds.StudyDate = spec.study_date
    ds.SeriesDate = spec.study_date
    ds.ContentDate = spec.study_date
    ds.StudyTime = spec.study_time
    ds.ContentTime = spec.study_time
    ds.AccessionNumber = spec.accession
    ds.Modality = spec.modality
    ds.Manufacturer = "Coffre synthetic"
    ds.InstitutionName = spec.institution
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = spec.study_description
    ds.SeriesDescription = spec.series_description
    ds.PatientName = spec.patient_name
    ds.PatientID = spec.patient_id
    if spec.issuer:
        ds.IssuerOfPatientID = spec.issuer
    if spec.issuer_qualifiers:
        ds.IssuerOfPatientIDQualifiersSequence = [_qualifier(uid, kind) for uid, kind in spec.issuer_qualifiers]
    if spec.other_patient_ids:
        ds.OtherPatientIDsSequence = [_other_id(other) for other in spec.other_patient_ids]
    ds.PatientBirthDate = spec.birth_date
    ds.PatientSex = spec.sex
    if spec.body_part:
        ds.BodyPartExamined = spec.body_part
    ds.StudyInstanceUID = spec.study_uid
    ds.SeriesInstanceUID = spec.series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = spec.series_number
    ds.InstanceNumber = spec.instance_number
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    if samples == 3:
        ds.PlanarConfiguration = 0
    if spec.frames > 1:
        ds.NumberOfFrames = spec.frames
    ds.Rows = spec.rows
    ds.Columns = spec.columns
    ds.BitsAllocated = bits
    ds.BitsStored = 12 if bits == 16 else 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if spec.modality == "CT":
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.WindowCenter = 40
        ds.WindowWidth = 400
        ds.SliceThickness = 1.0
        ds.ImagePositionPatient = [0, 0, float(spec.instance_number)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.7, 0.7]
    ds.PixelData = _pixels(spec, bits, samples).tobytes()

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(spec.sop_uid)
    meta.TransferSyntaxUID = UID(ExplicitVRLittleEndian)
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = f"COFFRE_{__version__}"[:16]
    ds.file_meta = meta
    if spec.transfer_syntax != ExplicitVRLittleEndian:
        ds.compress(spec.transfer_syntax, generate_instance_uid=False)
    return ds


def encode(ds: Dataset) -> bytes:
    """Part 10 bytes (preamble, meta header, dataset) of ``ds``."""
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def make_instance(spec: InstanceSpec | None = None) -> bytes:
    return encode(make_dataset(spec or InstanceSpec()))
