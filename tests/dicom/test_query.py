"""The query model (coffre.dicom.query): frozen, transport-free, one matching type per key
(PS3.4 C.2.2.2), hierarchical rules of C.4.1.2.1 and the unique keys of C.4.2.2.1.

The SQL these filters compile to, and the rows they match on SQLite and PostgreSQL, are
tested in tests/index/test_query.py; the DIMSE behaviour in tests/net/qr/.
"""

from __future__ import annotations

import dataclasses

import pytest
from pydicom import config
from pydicom.dataset import Dataset

from coffre.dicom.attributes import Level
from coffre.dicom.query import (
    Filter,
    InvalidQuery,
    Match,
    Model,
    Query,
    make_filter,
    parse_identifier,
    parse_retrieve,
)

PATIENT_ID, PATIENT_NAME, STUDY_UID, STUDY_DATE, STUDY_TIME = (
    0x00100020, 0x00100010, 0x0020000D, 0x00080020, 0x00080030)
ACCESSION, MODALITY, SERIES_UID, SOP_UID, SERIES_NUMBER = 0x00080050, 0x00080060, 0x0020000E, 0x00080018, 0x00200011
MODALITIES_IN_STUDY, STUDY_INSTANCES = 0x00080061, 0x00201208


def identifier(level: str, **keys: str) -> Dataset:
    ds = Dataset()
    with config.disable_value_validation():
        ds.QueryRetrieveLevel = level
        for keyword, value in keys.items():
            setattr(ds, keyword, value)
    return ds


def test_query_and_filter_are_frozen_and_hashable() -> None:
    q = parse_identifier(identifier("STUDY", StudyInstanceUID="", AccessionNumber="A1*"), Model.STUDY_ROOT)
    with pytest.raises(dataclasses.FrozenInstanceError):
        q.limit = 5  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        q.filters[0].values = ()  # type: ignore[misc]
    assert hash(q) == hash(dataclasses.replace(q))
    assert q == parse_identifier(identifier("STUDY", StudyInstanceUID="", AccessionNumber="A1*"), Model.STUDY_ROOT)


@pytest.mark.parametrize(("tag", "raw", "expected"), [
    (ACCESSION, "A1001", Filter(ACCESSION, Match.SINGLE, ("A1001",))),  # C.2.2.2.1
    (ACCESSION, "A%1", Filter(ACCESSION, Match.SINGLE, ("A%1",))),  # SQL wild cards are plain text
    (ACCESSION, "A_1", Filter(ACCESSION, Match.SINGLE, ("A_1",))),
    (ACCESSION, "A%*", Filter(ACCESSION, Match.WILDCARD, ("A%*",))),  # C.2.2.2.4
    (ACCESSION, "A?1**", Filter(ACCESSION, Match.WILDCARD, ("A?1*",))),  # ** is one *
    (ACCESSION, "A1\\A2", Filter(ACCESSION, Match.LIST, ("A1", "A2"))),
    (STUDY_UID, "1.2.3\\1.2.4", Filter(STUDY_UID, Match.LIST, ("1.2.3", "1.2.4"))),  # C.2.2.2.2
    (STUDY_UID, "1.2.3", Filter(STUDY_UID, Match.SINGLE, ("1.2.3",))),
    (PATIENT_NAME, "müller^jürgen", Filter(PATIENT_NAME, Match.SINGLE, ("MULLER^JURGEN",))),  # PN folded
    (STUDY_DATE, "20190101-20191231", Filter(STUDY_DATE, Match.RANGE, ("20190101", "20191231"))),  # C.2.2.2.5
    (STUDY_DATE, "20190101-", Filter(STUDY_DATE, Match.RANGE, ("20190101", ""))),
    (STUDY_DATE, "-20191231", Filter(STUDY_DATE, Match.RANGE, ("", "20191231"))),
    (STUDY_DATE, "20190315", Filter(STUDY_DATE, Match.SINGLE, ("20190315",))),
    (STUDY_TIME, "0830", Filter(STUDY_TIME, Match.RANGE, ("083000.000000", "083059.999999"))),
    (ACCESSION, '""', Filter(ACCESSION, Match.EMPTY)),  # empty value matching
    (STUDY_DATE, '""', Filter(STUDY_DATE, Match.EMPTY)),
    (SERIES_NUMBER, "3", Filter(SERIES_NUMBER, Match.SINGLE, ("3",))),
    (SERIES_NUMBER, "three", Filter(SERIES_NUMBER, Match.NOTHING)),
    (ACCESSION, "A\x001", Filter(ACCESSION, Match.NOTHING)),  # cannot be in the index
    (ACCESSION, "A" * 2000, Filter(ACCESSION, Match.NOTHING)),
])
def test_each_matching_type(tag: int, raw: str, expected: Filter) -> None:
    assert make_filter(tag, raw) == expected


@pytest.mark.parametrize("raw", ["", "*", "***", "  ", "\x00\x00"])
def test_universal_matching_is_no_filter(raw: str) -> None:
    assert make_filter(ACCESSION, raw) is None
    assert make_filter(STUDY_DATE, raw) is None


@pytest.mark.parametrize("raw", ["2019-13", "20191301", "abc", "20190101-20191301", "0860"])
def test_malformed_dates_and_times_are_refused(raw: str) -> None:
    tag = STUDY_TIME if raw == "0860" else STUDY_DATE
    with pytest.raises(InvalidQuery):
        make_filter(tag, raw)


def test_identifier_keys_unknown_lower_level_and_sequences_are_return_keys_only() -> None:
    ds = identifier("STUDY", StudyInstanceUID="", PatientComments="x*", Modality="CT",
                    NumberOfStudyRelatedInstances="3", ModalitiesInStudy="MR")
    ds.add_new(0x00091010, "LO", "private")
    ds.OtherPatientIDsSequence = []
    q = parse_identifier(ds, Model.STUDY_ROOT, limit=11)
    # only the matchable keys of this level or above filter; everything is returned
    assert [f.tag for f in q.filters] == [MODALITIES_IN_STUDY]
    assert set(q.return_tags) >= {STUDY_UID, 0x00104000, MODALITY, STUDY_INSTANCES, 0x00091010, 0x00101002}
    assert q.limit == 11 and q.level is Level.STUDY and q.model is Model.STUDY_ROOT


@pytest.mark.parametrize(("model", "level", "keys"), [
    (Model.PATIENT_ROOT, "STUDY", {"StudyInstanceUID": ""}),
    (Model.PATIENT_ROOT, "STUDY", {"PatientID": "P*"}),
    (Model.PATIENT_ROOT, "SERIES", {"PatientID": "P1", "SeriesInstanceUID": ""}),
    (Model.STUDY_ROOT, "SERIES", {"StudyInstanceUID": "1.2\\1.3"}),
    (Model.STUDY_ROOT, "IMAGE", {"StudyInstanceUID": "1.2"}),
    (Model.STUDY_ROOT, "PATIENT", {"PatientID": "P1"}),
    (Model.STUDY_ROOT, "FRAME", {"StudyInstanceUID": ""}),
])
def test_unique_keys_of_the_levels_above_are_required_as_single_values(
    model: Model, level: str, keys: dict[str, str]
) -> None:
    with pytest.raises(InvalidQuery) as raised:
        parse_identifier(identifier(level, **keys), model)
    assert raised.value.dimse_status == 0xA900


def test_unique_keys_of_this_level_and_above_are_always_returned() -> None:
    q = parse_identifier(identifier("IMAGE", PatientID="P1", StudyInstanceUID="1.2", SeriesInstanceUID="1.3"),
                         Model.PATIENT_ROOT)
    assert q.return_tags[-1] == SOP_UID
    assert {PATIENT_ID, STUDY_UID, SERIES_UID, SOP_UID} <= set(q.return_tags)
    s = parse_identifier(identifier("SERIES", StudyInstanceUID="1.2"), Model.STUDY_ROOT)
    assert PATIENT_ID not in s.return_tags and {STUDY_UID, SERIES_UID} <= set(s.return_tags)


def test_retrieve_takes_unique_keys_only_and_a_list_at_its_own_level() -> None:
    q = parse_retrieve(identifier("SERIES", StudyInstanceUID="1.2", SeriesInstanceUID="1.3\\1.4",
                                  Modality="CT"), Model.STUDY_ROOT)
    assert q == Query(level=Level.SERIES, model=Model.STUDY_ROOT, return_tags=(), filters=(
        Filter(STUDY_UID, Match.SINGLE, ("1.2",)), Filter(SERIES_UID, Match.LIST, ("1.3", "1.4"))))
    for bad in ({"StudyInstanceUID": "1.2\\1.5", "SeriesInstanceUID": "1.3"},  # list above the level
                {"StudyInstanceUID": "1.2"},  # the level's own key missing
                {"StudyInstanceUID": "1.2", "SeriesInstanceUID": "*"}):  # universal is no unique key
        with pytest.raises(InvalidQuery):
            parse_retrieve(identifier("SERIES", **bad), Model.STUDY_ROOT)
    # no wild cards in UIDs (C.2.2.2.2): "1.3*" is a literal value, which no UID equals
    q = parse_retrieve(identifier("SERIES", StudyInstanceUID="1.2", SeriesInstanceUID="1.3*"), Model.STUDY_ROOT)
    assert q.filters[1] == Filter(SERIES_UID, Match.SINGLE, ("1.3*",))
