"""The national health identifier (INS) and the demographics used to match persons.

Pure code: no IO. Two inputs give the same result: a pydicom ``Dataset``
(:func:`ins_from_dataset`) and the DICOM JSON model (PS3.18 F.2) that ingest already
holds for every object (:func:`ins_from_json`), so ingest never parses a file twice.

Where an INS is found (PS3.3 C.7.1.1, Patient Identification Module; Table 10-18,
Issuer of Patient ID Macro):

- the top-level ``PatientID`` (0010,0020) qualified by ``IssuerOfPatientIDQualifiersSequence``
  (0010,0024);
- each item of ``OtherPatientIDsSequence`` (0010,1002), whose ``PatientID`` is qualified
  by the item's own ``IssuerOfPatientIDQualifiersSequence``.

An identifier is an INS when one item of its qualifiers sequence has
``UniversalEntityID`` (0040,0032) equal to one of the INS assigning-authority OIDs of
the ANS *Référentiel INS* and ``UniversalEntityIDType`` (0040,0033) ``ISO``:

============================  ===========================================
``1.2.250.1.213.1.4.8``       INS-NIR (the NIR used as INS)
``1.2.250.1.213.1.4.9``       INS-NIA (the waiting number of the INSEE)
``1.2.250.1.213.1.4.10``      INS-NIR, test
``1.2.250.1.213.1.4.11``      INS-NIA, test
============================  ===========================================

An IssuerOfPatientID text alone never qualifies an INS. The value is 15 characters: 13
digits (sex, year, month, department with the Corsican ``2A``/``2B``, commune, order)
and a 2-digit key equal to ``97 - (number mod 97)``, where ``2A`` counts as ``19`` and
``2B`` as ``18``. An identifier qualified as an INS whose value is invalid is *ignored*,
never an error: the result carries a reason (patient-free) that ingest audits.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

from coffre.dicom.instance import normalize_da, normalize_pn

INS_NIR = "1.2.250.1.213.1.4.8"
INS_NIA = "1.2.250.1.213.1.4.9"
INS_NIR_TEST = "1.2.250.1.213.1.4.10"
INS_NIA_TEST = "1.2.250.1.213.1.4.11"

#: OID of the assigning authority -> (kind, test)
INS_OIDS: dict[str, tuple[str, bool]] = {
    INS_NIR: ("NIR", False),
    INS_NIA: ("NIA", False),
    INS_NIR_TEST: ("NIR", True),
    INS_NIA_TEST: ("NIA", True),
}

#: the DICOM JSON key of IssuerOfPatientIDQualifiersSequence: no INS without it
QUALIFIERS_KEY = '"00100024"'

_PATIENT_ID = "00100020"
_QUALIFIERS = "00100024"
_OTHER_IDS = "00101002"
_UNIVERSAL_ENTITY_ID = "00400032"
_UNIVERSAL_ENTITY_ID_TYPE = "00400033"

#: bounds on what is inspected (the parser already bounds the data set itself)
MAX_OTHER_IDS = 32
MAX_QUALIFIERS = 8
MAX_VALUE = 64

_INS = re.compile(r"[0-9]{5}(?:[0-9]{2}|2A|2B)[0-9]{8}")


@dataclass(frozen=True, slots=True)
class QualifiedIns:
    """A valid INS with the OID of its assigning authority."""

    value: str
    oid: str

    @property
    def kind(self) -> str:
        """``NIR`` or ``NIA``."""
        return INS_OIDS[self.oid][0]

    @property
    def test(self) -> bool:
        return INS_OIDS[self.oid][1]


@dataclass(frozen=True, slots=True)
class InsExtraction:
    """The INS of an object (or None) and why identifiers qualified as INS were ignored."""

    ins: QualifiedIns | None
    #: patient-free reasons (no values), for the ingest's audit event
    ignored: tuple[str, ...] = ()


NO_INS = InsExtraction(None)


def ins_key(number: str) -> int:
    """The key of a 13-character INS number: ``97 - (number mod 97)`` (Corsica: 2A→19, 2B→18)."""
    digits = number[:5] + {"2A": "19", "2B": "18"}.get(number[5:7], number[5:7]) + number[7:]
    return 97 - int(digits) % 97


def check_ins(value: str) -> str | None:
    """Why ``value`` is not a valid INS, or None when it is (format and key)."""
    if len(value) != 15:
        return "INS value is not 15 characters"
    if not _INS.fullmatch(value):
        return "INS value is not 13 digits (2A/2B for Corsica) and a 2-digit key"
    if ins_key(value[:13]) != int(value[13:]):
        return "INS key does not match the number"
    return None


def normalize_ins(value: str) -> str:
    """Trimmed, upper case (``2a`` → ``2A``); validity is :func:`check_ins`'s business."""
    return value.strip().upper()


# --- extraction -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Identifier:
    value: str
    #: (UniversalEntityID, UniversalEntityIDType) of each qualifier item
    qualifiers: tuple[tuple[str, str], ...]


def _choose(identifiers: Iterable[_Identifier]) -> InsExtraction:
    found: dict[tuple[str, str], QualifiedIns] = {}
    ignored: list[str] = []
    for ident in identifiers:
        oids = [(uid, kind) for uid, kind in ident.qualifiers if uid in INS_OIDS]
        if not oids:
            continue
        iso = [uid for uid, kind in oids if kind == "ISO"]
        if not iso:
            ignored.append("INS assigning authority without UniversalEntityIDType ISO")
            continue
        value = normalize_ins(ident.value)
        reason = check_ins(value) if len(value) <= MAX_VALUE else "INS value is too long"
        if reason is not None:
            ignored.append(reason)
            continue
        ins = QualifiedIns(value, iso[0])
        found[(ins.value, ins.oid)] = ins
    if not found:
        return InsExtraction(None, tuple(dict.fromkeys(ignored)))
    # production before test, NIR before NIA (the NIA is a waiting number)
    ranked = sorted(found.values(), key=lambda i: (i.test, i.kind != "NIR"))
    best = [i for i in ranked if (i.test, i.kind) == (ranked[0].test, ranked[0].kind)]
    if len({i.value for i in best}) > 1:
        ignored.append("several different INS in one object")
        return InsExtraction(None, tuple(dict.fromkeys(ignored)))
    return InsExtraction(best[0], tuple(dict.fromkeys(ignored)))


def _text(value: Any) -> str:
    if isinstance(value, list | tuple):
        value = value[0] if len(value) == 1 else ""
    return value.strip() if isinstance(value, str) else ""


def _ds_value(ds: Dataset, keyword: str) -> Any:
    try:
        return ds.get(keyword)
    except Exception:  # a malformed value is ignored, like an absent one
        return None


def _ds_items(ds: Dataset, keyword: str, limit: int) -> list[Dataset]:
    value = _ds_value(ds, keyword)
    if value is None:
        return []
    try:
        return [item for item in list(value)[:limit] if isinstance(item, Dataset)]
    except TypeError:
        return []


def _ds_identifier(ds: Dataset) -> _Identifier:
    qualifiers = tuple(
        (_text(_ds_value(q, "UniversalEntityID")), _text(_ds_value(q, "UniversalEntityIDType")).upper())
        for q in _ds_items(ds, "IssuerOfPatientIDQualifiersSequence", MAX_QUALIFIERS)
    )
    return _Identifier(_text(_ds_value(ds, "PatientID")), qualifiers)


def ins_from_dataset(ds: Dataset) -> InsExtraction:
    """The qualified INS of a data set (see the module docstring for where it is found)."""
    identifiers = [_ds_identifier(ds)]
    identifiers += [_ds_identifier(item) for item in _ds_items(ds, "OtherPatientIDsSequence", MAX_OTHER_IDS)]
    return _choose(identifiers)


def _json_value(model: Mapping[str, Any], key: str) -> Any:
    element = model.get(key)
    if not isinstance(element, Mapping):
        return None
    return element.get("Value")


def _json_items(model: Mapping[str, Any], key: str, limit: int) -> list[Mapping[str, Any]]:
    value = _json_value(model, key)
    if not isinstance(value, list):
        return []
    return [item for item in value[:limit] if isinstance(item, Mapping)]


def _json_identifier(model: Mapping[str, Any]) -> _Identifier:
    qualifiers = tuple(
        (_text(_json_value(q, _UNIVERSAL_ENTITY_ID)), _text(_json_value(q, _UNIVERSAL_ENTITY_ID_TYPE)).upper())
        for q in _json_items(model, _QUALIFIERS, MAX_QUALIFIERS)
    )
    return _Identifier(_text(_json_value(model, _PATIENT_ID)), qualifiers)


def may_carry_ins(dicom_json: str) -> bool:
    """Cheap pre-check on DICOM JSON text: without a qualifiers sequence there is no INS."""
    return QUALIFIERS_KEY in dicom_json


def ins_from_json(dicom_json: str | Mapping[str, Any]) -> InsExtraction:
    """The qualified INS of a DICOM JSON data set (PS3.18 F.2), as text or parsed."""
    if isinstance(dicom_json, str):
        if not may_carry_ins(dicom_json):
            return NO_INS
        try:
            model = json.loads(dicom_json)
        except ValueError:
            return NO_INS
    else:
        model = dicom_json
    if not isinstance(model, Mapping):
        return NO_INS
    identifiers = [_json_identifier(model)]
    identifiers += [_json_identifier(item) for item in _json_items(model, _OTHER_IDS, MAX_OTHER_IDS)]
    return _choose(identifiers)


# --- demographics -----------------------------------------------------------------------

_FOLD = re.compile("[\\s\\-'\u2019.,]+")


def _fold(text: str) -> str:
    """Hyphens, apostrophes, dots and runs of spaces become one space (JEAN-PIERRE = JEAN PIERRE)."""
    return _FOLD.sub(" ", text).strip()


@dataclass(frozen=True, slots=True)
class Demographics:
    """What persons are compared on: normalised family and given names, birth date, sex."""

    #: family name, normalised (:func:`~coffre.dicom.instance.normalize_pn`) and folded
    family: str
    #: given names, idem (all of them: ``CLAIRE MARIE``)
    given: str
    #: ``YYYYMMDD`` or ""
    birth_date: str
    #: ``M``, ``F``, ``O`` or ""
    sex: str

    @property
    def first_given(self) -> str:
        return self.given.split(" ", 1)[0] if self.given else ""

    @property
    def family_prefix(self) -> str:
        """The leading letters of the family name (at most 4), for a prefix search."""
        return family_prefix(self.family)


def family_prefix(family: str, length: int = 4) -> str:
    """Leading alphanumeric characters of a normalised family name, at most ``length``."""
    prefix = ""
    for char in family:
        if not char.isalnum() or len(prefix) >= length:
            break
        prefix += char
    return prefix


def split_name(name_norm: str) -> tuple[str, str]:
    """(family, given) of a normalised Person Name (PS3.5 6.2: first group, components)."""
    alphabetic = name_norm.split("=", 1)[0]
    components = alphabetic.split("^")
    family = _fold(components[0])
    given = _fold(components[1]) if len(components) > 1 else ""
    return family, given


def _sex(value: str) -> str:
    sex = value.strip().upper()
    return sex if sex in ("M", "F", "O") else ""


def demographics(name: str, birth_date: str, sex: str) -> Demographics:
    """Demographics from raw values (name normalised here, birth date validated as DA)."""
    family, given = split_name(normalize_pn(name))
    date = (normalize_da(birth_date) or "") if birth_date else ""
    return Demographics(family, given, date, _sex(sex))


def demographics_from_attributes(attributes: Mapping[str, Any]) -> Demographics:
    """Demographics from a ``ParsedInstance.attributes`` or a ``patient`` row mapping."""
    family, given = split_name(str(attributes.get("patient_name_norm") or ""))
    return Demographics(family, given, str(attributes.get("patient_birth_date") or ""),
                        _sex(str(attributes.get("patient_sex") or "")))


def demographics_from_dataset(ds: Dataset) -> Demographics:
    """Demographics of a data set's Patient Module (PS3.3 C.7.1.1)."""
    return demographics(_text_of(_ds_value(ds, "PatientName")), _text_of(_ds_value(ds, "PatientBirthDate")),
                        _text_of(_ds_value(ds, "PatientSex")))


def _text_of(value: Any) -> str:
    return "" if value is None else str(value).strip()
