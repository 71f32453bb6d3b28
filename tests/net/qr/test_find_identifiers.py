"""C-FIND response identifiers built from prepared raw elements (``net.find``) are the
bytes pydicom writes for the same values (PS3.4 C.4.1.1.3.2; PS3.5 6.2, 7.1).

The reference is the way identifiers were built before: one pydicom ``add_new`` per
return key, encoded by pydicom's ``write_dataset`` (what pynetdicom does).
"""

from __future__ import annotations

from typing import Any

import pytest
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom.dsutils import encode

from coffre.dicom.query import Model, parse_identifier
from coffre.net import find
from coffre.net.find import EncodedIdentifier, IdentifierTemplate, send_prepared_identifiers

SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian]
STUDY_KEYS = ("StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "PatientName", "PatientID",
              "StudyDescription", "ModalitiesInStudy", "NumberOfStudyRelatedInstances")


def _reference(row: dict[int, Any], level: str, return_tags: tuple[int, ...], identifier: Dataset) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.QueryRetrieveLevel = level
    for tag in return_tags:
        elem = identifier.get(tag)
        if elem is not None and elem.VR not in ("UN", None):
            vr = str(elem.VR)
        else:
            try:
                vr = str(dictionary_VR(tag))
            except KeyError:
                vr = "UN"
        value: Any = row.get(tag)
        if tag == find.RETRIEVE_AE_TITLE:
            value = "COFFRE"
        elif tag == find.INSTANCE_AVAILABILITY:
            value = "ONLINE"
        if vr == "SQ":
            value = find._items(value) if tag == find.OTHER_PATIENT_IDS else []
        elif vr in ("IS", "US", "UL", "SS", "SL") and isinstance(value, str) and not value:
            value = None
        ds.add_new(tag, vr, value)
    return ds


def _identifier(*keys: str, **values: Any) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    for key in keys:
        setattr(ds, key, values.get(key, []) if key.endswith("Sequence") else values.get(key, ""))
    return ds


ROWS: list[dict[int, Any]] = [
    {0x0020000D: "1.2.826.0.1.3680043.8.498.1234567890123456789", 0x00080020: "20150101", 0x00080030: "101010",
     0x00080050: "A0000001", 0x00100010: "PATIENT00001^BENCH", 0x00100020: "BQ00001",
     0x00081030: "BENCH QUERY", 0x00080061: ["CT"], 0x00201208: 10},
    {0x0020000D: "1.2.3.4", 0x00080020: None, 0x00080030: "101010.5", 0x00080050: "",
     0x00100010: "MÜLLER^Jürgen", 0x00100020: "PA1", 0x00081030: "Crâne sans injection",
     0x00080061: ["CT", "MR", "US"], 0x00201208: 0},
    {0x0020000D: "1.2.3.45", 0x00100010: "山田^太郎=やまだ^たろう", 0x00100020: "é",  # non-ASCII LO
     0x00081030: "a\\b", 0x00080061: None, 0x00201208: None},
    {0x0020000D: "1.2.3.45", 0x00080050: "X\\Y", 0x00080061: ["CT", "SR"], 0x00201208: ""},
]


@pytest.mark.parametrize("syntax", SYNTAXES, ids=lambda s: UID(s).keyword)
@pytest.mark.parametrize("row", ROWS)
def test_study_identifiers_are_the_bytes_pydicom_writes(syntax: UID, row: dict[int, Any]) -> None:
    send_prepared_identifiers()
    from pynetdicom import service_class

    identifier = _identifier(*STUDY_KEYS)
    query = parse_identifier(identifier, Model.STUDY_ROOT)
    ts = UID(syntax)
    expected = encode(_reference(row, "STUDY", query.return_tags, identifier), ts.is_implicit_VR,
                      ts.is_little_endian, ts.is_deflated)
    ds = IdentifierTemplate(query, identifier, "COFFRE", ts).dataset(row)
    sent = service_class.encode(ds, ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated)
    assert sent == expected
    assert encode(ds, ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated) == expected  # pydicom's own path
    assert ds.PatientID == (row.get(0x00100020) or "")


@pytest.mark.parametrize("syntax", SYNTAXES, ids=lambda s: UID(s).keyword)
def test_other_keys_take_pydicom_s_path_with_the_same_bytes(syntax: UID) -> None:
    """Sequences, RetrieveAETitle/InstanceAvailability, private and unknown tags, an
    ambiguous VR and a group length: each identifier still encodes as before."""
    send_prepared_identifiers()
    from pynetdicom import service_class

    identifier = _identifier("StudyInstanceUID", "PatientID", "OtherPatientIDsSequence", "RetrieveAETitle",
                             "InstanceAvailability", "SmallestImagePixelValue", "StudyComments")
    identifier.add_new(0x00091010, "LO", "")  # private, no creator
    identifier.add_new(0x00990001, "UN", b"")  # unknown to the dictionary
    identifier.add_new(0x00100000, "UL", None)  # group length
    query = parse_identifier(identifier, Model.STUDY_ROOT)
    ts = UID(syntax)
    rows: list[dict[int, Any]] = [
        {0x0020000D: "1.2.3", 0x00100020: "LOCAL", 0x00101002: ["OTHER\\SITE-B"]},
        {0x0020000D: "1.2.3", 0x00100020: "LOCAL", 0x00101002: None, 0x00091010: "x"},
    ]
    for row in rows:
        expected = encode(_reference(row, "STUDY", query.return_tags, identifier), ts.is_implicit_VR,
                          ts.is_little_endian, ts.is_deflated)
        ds = IdentifierTemplate(query, identifier, "COFFRE", ts).dataset(row)
        assert service_class.encode(ds, ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated) == expected


def test_prepared_bytes_are_dropped_once_the_identifier_is_touched() -> None:
    identifier = _identifier(*STUDY_KEYS)
    query = parse_identifier(identifier, Model.STUDY_ROOT)
    template = IdentifierTemplate(query, identifier, "COFFRE", UID(ExplicitVRLittleEndian))
    ds = template.dataset(ROWS[0])
    assert isinstance(ds, EncodedIdentifier)
    assert ds.prepared(False, True) is not None
    assert ds.prepared(True, True) is None and ds.prepared(False, False) is None  # another syntax
    ds.PatientID = "CHANGED"
    assert ds.prepared(False, True) is None
    send_prepared_identifiers()
    from pynetdicom import service_class

    assert b"CHANGED" in (service_class.encode(ds, False, True) or b"")
    read = template.dataset(ROWS[0])
    _ = read.StudyDate
    assert read.prepared(False, True) is None


def test_without_a_transfer_syntax_nothing_is_prepared() -> None:
    identifier = _identifier(*STUDY_KEYS)
    query = parse_identifier(identifier, Model.STUDY_ROOT)
    ds = IdentifierTemplate(query, identifier, "COFFRE").dataset(ROWS[0])
    assert ds.prepared(False, True) is None
    assert encode(ds, False, True) == encode(_reference(ROWS[0], "STUDY", query.return_tags, identifier), False, True)


def test_the_encode_hook_is_installed_once_and_passes_other_datasets_on() -> None:
    send_prepared_identifiers()
    from pynetdicom import service_class

    hook = service_class.encode
    send_prepared_identifiers()
    assert service_class.encode is hook
    plain = Dataset()
    plain.PatientID = "X"
    assert hook(plain, False, True) == encode(plain, False, True)
