"""Coercion of patient identifiers into a receiver's identifier domain (pure).

IHE RAD TF-1 "Multiple Identity Management" (MIMA) and PS3.4 C.4.2.1.4.1 / PS3.4
Annex B.4.1.3 (the SCP may coerce attributes of the instances it sends): an instance of
a person held by facility A, sent to facility B, carries B's PatientID and
IssuerOfPatientID, and A's identifiers in an OtherPatientIDsSequence item (PS3.3
C.7.1.1, "Other Patient IDs Sequence", with the Issuer of Patient ID Macro). The
stored original is never changed: these functions work on the copy being sent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

PATIENT_ID = "00100020"
ISSUER = "00100021"
QUALIFIERS = "00100024"
OTHER_IDS = "00101002"
TYPE_OF_ID = "00100022"


@dataclass(frozen=True, slots=True)
class Coercion:
    """Replace (original_id, original_issuer) by (patient_id, issuer)."""

    patient_id: str
    issuer: str
    original_id: str
    original_issuer: str


def coerce_dataset(ds: Dataset, coercion: Coercion) -> None:
    """Rewrite ``ds`` in place into the receiver's domain; the original goes to Other Patient IDs."""
    item = Dataset()
    item.PatientID = coercion.original_id
    item.IssuerOfPatientID = coercion.original_issuer
    item.TypeOfPatientID = "TEXT"
    if "IssuerOfPatientIDQualifiersSequence" in ds:
        item.IssuerOfPatientIDQualifiersSequence = ds.IssuerOfPatientIDQualifiersSequence
        del ds.IssuerOfPatientIDQualifiersSequence
    others = list(ds.get("OtherPatientIDsSequence") or [])
    others = [
        o for o in others
        if (str(o.get("PatientID", "")), str(o.get("IssuerOfPatientID", "")))
        != (coercion.patient_id, coercion.issuer)
    ]
    ds.OtherPatientIDsSequence = Sequence([item, *others])
    ds.PatientID = coercion.patient_id
    ds.IssuerOfPatientID = coercion.issuer


def _text(value: str) -> dict[str, Any]:
    return {"vr": "LO", "Value": [value]} if value else {"vr": "LO"}


def coerce_json(document: str, coercion: Coercion) -> str:
    """The same coercion on a stored DICOM JSON document (PS3.18 F.2), returned compact."""
    doc: dict[str, Any] = json.loads(document)
    item: dict[str, Any] = {
        PATIENT_ID: _text(coercion.original_id),
        ISSUER: _text(coercion.original_issuer),
        TYPE_OF_ID: {"vr": "CS", "Value": ["TEXT"]},
    }
    qualifiers = doc.pop(QUALIFIERS, None)
    if qualifiers is not None:
        item[QUALIFIERS] = qualifiers
    others = [
        o for o in (doc.get(OTHER_IDS, {}).get("Value") or [])
        if not (
            (o.get(PATIENT_ID, {}).get("Value") or [""])[0] == coercion.patient_id
            and (o.get(ISSUER, {}).get("Value") or [""])[0] == coercion.issuer
        )
    ]
    doc[OTHER_IDS] = {"vr": "SQ", "Value": [item, *others]}
    doc[PATIENT_ID] = _text(coercion.patient_id)
    doc[ISSUER] = _text(coercion.issuer)
    return json.dumps(dict(sorted(doc.items())), ensure_ascii=False, separators=(",", ":"))
