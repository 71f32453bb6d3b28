"""C-FIND with DCMTK ``findscu`` at every level of both models (PS3.4 C.4.1, C.6.1, C.6.2).

Every expectation is computed from the corpus that was stored (``conftest.Corpus``), on
the SQLite and the PostgreSQL index.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from .conftest import QR, SC, Corpus
from .qrtools import IDENTIFIER_DOES_NOT_MATCH, PENDING, SUCCESS, ToolResult, findscu

pytestmark = pytest.mark.dcmtk

SITE_A_PATIENTS = {"PA1", "PA2", "PA3", "PA4", "BULK1"}


def find(qr: QR, tmp_path: Path, level: str, *keys: str, model: str = "S",
         calling: str = "PACS_A") -> ToolResult:
    return findscu(qr.host, qr.port, tmp_path / "rsp", level, *keys, model=model, calling=calling)


def ok(result: ToolResult) -> ToolResult:
    assert result.returncode == 0, result.log
    assert result.statuses[-1] == SUCCESS, result.log
    assert set(result.statuses[:-1]) <= {PENDING}, result.log
    return result


def failed(result: ToolResult, status: int = IDENTIFIER_DOES_NOT_MATCH) -> None:
    assert result.statuses == [status], result.log
    assert result.datasets == []


def study_expectations(c: Corpus, study: str, facility: str = "site-a") -> dict[str, object]:
    insts = c.of(facility, study_uid=study)
    return {
        "NumberOfStudyRelatedSeries": len({i.series_uid for i in insts}),
        "NumberOfStudyRelatedInstances": len(insts),
        "ModalitiesInStudy": sorted({i.modality for i in insts}),
        "SOPClassesInStudy": sorted({i.sop_class for i in insts}),
    }


def as_list(value: object) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]  # type: ignore[attr-defined]


# -- PATIENT level (Patient Root) ----------------------------------------------------


def test_patient_level_universal_with_counts(qr: QR, tmp_path: Path) -> None:
    c = qr.corpus
    r = ok(find(qr, tmp_path, "PATIENT", "PatientID", "PatientName", "PatientBirthDate",
                "NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries",
                "NumberOfPatientRelatedInstances", model="P"))
    got = r.by("PatientID")
    assert set(got) == SITE_A_PATIENTS
    for pid, ds in got.items():
        insts = c.of("site-a", patient_id=pid)
        assert str(ds.PatientName) == insts[0].patient_name
        assert ds.QueryRetrieveLevel == "PATIENT"
        assert int(ds.NumberOfPatientRelatedStudies) == len({i.study_uid for i in insts})
        assert int(ds.NumberOfPatientRelatedSeries) == len({i.series_uid for i in insts})
        assert int(ds.NumberOfPatientRelatedInstances) == len(insts)
    assert str(got["PA1"].PatientBirthDate) == "19600512"


@pytest.mark.parametrize(("name", "expected"), [
    ("MÜL*", {"PA1", "PA2"}),
    ("MÜLLER^Jürgen", {"PA1"}),
    ("müller^jürgen", {"PA1"}),  # PN: case-insensitive
    ("MULLER^JURGEN", {"PA1"}),  # PN: accent-insensitive
    ("MÜLLER^J?rgen", {"PA1"}),
    ("DUPONT^Zo?", {"PA3"}),  # ? is one (non-ASCII) character
    ("NGUYEN^T??", {"PA4"}),
    ("NGUYEN^T?", set()),  # ? is exactly one character
    ("*^Anna", {"PA2"}),
    ("MÜLLER", set()),  # single value matching is on the whole name
    ("SCHMIDT*", set()),  # site-b's patient
], ids=lambda v: repr(v) if isinstance(v, str) else None)
def test_patient_name_matching(qr: QR, tmp_path: Path, name: str, expected: set[str]) -> None:
    r = ok(find(qr, tmp_path, "PATIENT", f"PatientName={name}", "PatientID", model="P"))
    assert {str(ds.PatientID) for ds in r.datasets} == expected
    assert r.pending == len(expected)


@pytest.mark.parametrize(("pid", "expected"), [
    ("PA?", {"PA1", "PA2", "PA3", "PA4"}),
    ("pa?", set()),  # LO: case-sensitive
    ("PA1\\PA3", {"PA1", "PA3"}),
    ("B*", {"BULK1"}),
    ("PA1", {"PA1"}),
])
def test_patient_id_matching(qr: QR, tmp_path: Path, pid: str, expected: set[str]) -> None:
    r = ok(find(qr, tmp_path, "PATIENT", f"PatientID={pid}", model="P"))
    assert r.pending == len(expected)
    assert {str(ds.PatientID) for ds in r.datasets} == expected


# -- STUDY level ------------------------------------------------------------------------

STUDY_DATES = {"ST1": "20190315", "ST2": "20210620", "ST3": "20230105", "ST4": "20220830",
               "ST5": "20180202", "ST6": "20170707"}


@pytest.mark.parametrize(("dates", "expected"), [
    ("20190101-20211231", {"ST1", "ST2"}),  # closed range
    ("20190315-20190315", {"ST1"}),
    ("20220101-", {"ST3", "ST4"}),  # open upper end
    ("-20180202", {"ST5", "ST6"}),  # open lower end, inclusive
    ("20210620", {"ST2"}),
    ("20240101-", set()),
    ("20190505", set()),  # site-b's study date only
])
def test_study_date_ranges(qr: QR, tmp_path: Path, dates: str, expected: set[str]) -> None:
    st = qr.corpus.studies
    r = ok(find(qr, tmp_path, "STUDY", f"StudyDate={dates}", "StudyInstanceUID"))
    assert {str(ds.StudyInstanceUID) for ds in r.datasets} == {st[n] for n in expected}
    assert r.pending == len(expected)
    by_uid = {st[n]: d for n, d in STUDY_DATES.items()}
    for ds in r.datasets:
        assert str(ds.StudyDate) == by_uid[str(ds.StudyInstanceUID)]


def test_study_level_study_root_return_keys(qr: QR, tmp_path: Path) -> None:
    """Every site-a study with its computed return keys, exactly."""
    c = qr.corpus
    r = ok(find(qr, tmp_path, "STUDY", "StudyInstanceUID", "PatientID", "AccessionNumber",
                "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
                "ModalitiesInStudy", "SOPClassesInStudy"))
    got = r.by("StudyInstanceUID")
    assert set(got) == c.study_uids("site-a")
    assert len(got) == 6
    for uid, ds in got.items():
        want = study_expectations(c, uid)
        assert int(ds.NumberOfStudyRelatedSeries) == want["NumberOfStudyRelatedSeries"], uid
        assert int(ds.NumberOfStudyRelatedInstances) == want["NumberOfStudyRelatedInstances"], uid
        assert sorted(as_list(ds.ModalitiesInStudy)) == want["ModalitiesInStudy"], uid
        assert sorted(as_list(ds.SOPClassesInStudy)) == want["SOPClassesInStudy"], uid
        assert str(ds.PatientID) == c.of("site-a", study_uid=uid)[0].patient_id
    st2 = got[c.studies["ST2"]]
    assert sorted(as_list(st2.ModalitiesInStudy)) == ["MR", "US"]
    assert int(st2.NumberOfStudyRelatedInstances) == 3
    st5 = got[c.studies["ST5"]]
    assert as_list(st5.SOPClassesInStudy) == [SC]
    assert int(got[c.studies["ST6"]].NumberOfStudyRelatedInstances) == 60
    assert str(got[c.studies["ST1"]].AccessionNumber) == "A1001"


def test_study_level_patient_root(qr: QR, tmp_path: Path) -> None:
    st = qr.corpus.studies
    r = ok(find(qr, tmp_path, "STUDY", "PatientID=PA1", "StudyInstanceUID", "StudyDate",
                "NumberOfStudyRelatedInstances", model="P"))
    got = r.by("StudyInstanceUID")
    assert set(got) == {st["ST1"], st["ST2"]}
    assert int(got[st["ST1"]].NumberOfStudyRelatedInstances) == 3
    assert str(got[st["ST2"]].StudyDate) == "20210620"


@pytest.mark.parametrize(("key", "expected"), [
    ("ModalitiesInStudy=MR", {"ST2"}),
    ("ModalitiesInStudy=US\\NM", {"ST2", "ST5"}),
    (f"SOPClassesInStudy={SC}", {"ST5"}),
    ("AccessionNumber=A100?", {"ST1", "ST2", "ST3", "ST4", "ST5", "ST6"}),
    ("AccessionNumber=B2001", set()),  # site-b's accession
])
def test_study_matching_on_other_keys(qr: QR, tmp_path: Path, key: str, expected: set[str]) -> None:
    st = qr.corpus.studies
    r = ok(find(qr, tmp_path, "STUDY", key, "StudyInstanceUID"))
    assert r.pending == len(expected)
    assert {str(ds.StudyInstanceUID) for ds in r.datasets} == {st[n] for n in expected}


# -- SERIES level -----------------------------------------------------------------------


def test_series_level_study_root(qr: QR, tmp_path: Path) -> None:
    c = qr.corpus
    r = ok(find(qr, tmp_path, "SERIES", f"StudyInstanceUID={c.studies['ST2']}", "SeriesInstanceUID",
                "Modality", "SeriesNumber", "NumberOfSeriesRelatedInstances"))
    got = r.by("SeriesInstanceUID")
    assert set(got) == {c.series["SE2"], c.series["SE3"]}
    assert str(got[c.series["SE2"]].Modality) == "MR"
    assert int(got[c.series["SE2"]].NumberOfSeriesRelatedInstances) == 2
    assert str(got[c.series["SE3"]].Modality) == "US"
    assert int(got[c.series["SE3"]].NumberOfSeriesRelatedInstances) == 1
    assert int(got[c.series["SE3"]].SeriesNumber) == 2
    for ds in r.datasets:
        assert ds.QueryRetrieveLevel == "SERIES"
        assert str(ds.StudyInstanceUID) == c.studies["ST2"]  # unique keys above are returned


def test_series_level_uid_list(qr: QR, tmp_path: Path) -> None:
    c = qr.corpus
    wanted = f"{c.series['SE2']}\\{generate_uid()}\\{c.series['SE3']}"
    r = ok(find(qr, tmp_path, "SERIES", f"StudyInstanceUID={c.studies['ST2']}",
                f"SeriesInstanceUID={wanted}", "Modality"))
    assert r.texts("SeriesInstanceUID") == {c.series["SE2"], c.series["SE3"]}
    one = ok(find(qr, tmp_path, "SERIES", f"StudyInstanceUID={c.studies['ST2']}",
                  f"SeriesInstanceUID={c.series['SE3']}\\{c.series['SE1']}"))
    assert one.texts("SeriesInstanceUID") == {c.series["SE3"]}  # SE1 is in another study


def test_series_level_patient_root(qr: QR, tmp_path: Path) -> None:
    c = qr.corpus
    r = ok(find(qr, tmp_path, "SERIES", "PatientID=PA1", f"StudyInstanceUID={c.studies['ST1']}",
                "SeriesInstanceUID", "NumberOfSeriesRelatedInstances", model="P"))
    assert r.texts("SeriesInstanceUID") == {c.series["SE1"]}
    assert int(r.datasets[0].NumberOfSeriesRelatedInstances) == 3
    wrong = ok(find(qr, tmp_path, "SERIES", "PatientID=PA2", f"StudyInstanceUID={c.studies['ST1']}",
                    "SeriesInstanceUID", model="P"))
    assert wrong.datasets == []


# -- IMAGE level ------------------------------------------------------------------------


def test_image_level_study_root(qr: QR, tmp_path: Path) -> None:
    c = qr.corpus
    r = ok(find(qr, tmp_path, "IMAGE", f"StudyInstanceUID={c.studies['ST1']}",
                f"SeriesInstanceUID={c.series['SE1']}", "SOPInstanceUID", "SOPClassUID", "InstanceNumber"))
    got = r.by("SOPInstanceUID")
    assert set(got) == c.sop_uids("site-a", series_uid=c.series["SE1"])
    assert {int(ds.InstanceNumber) for ds in got.values()} == {1, 2, 3}
    assert {str(ds.SOPClassUID) for ds in got.values()} == {"1.2.840.10008.5.1.4.1.1.2"}
    for ds in r.datasets:
        assert ds.QueryRetrieveLevel == "IMAGE"
        assert str(ds.SeriesInstanceUID) == c.series["SE1"]


def test_image_level_uid_list(qr: QR, tmp_path: Path) -> None:
    c = qr.corpus
    uids = sorted(c.sop_uids("site-a", series_uid=c.series["SE9"]))[:5]
    other = sorted(c.sop_uids("site-a", series_uid=c.series["SE1"]))[0]  # another series
    listed = "\\".join([*uids, other])
    r = ok(find(qr, tmp_path, "IMAGE", f"StudyInstanceUID={c.studies['ST6']}",
                f"SeriesInstanceUID={c.series['SE9']}", f"SOPInstanceUID={listed}"))
    assert r.texts("SOPInstanceUID") == set(uids)
    assert r.pending == 5


def test_image_level_patient_root(qr: QR, tmp_path: Path) -> None:
    c = qr.corpus
    r = ok(find(qr, tmp_path, "IMAGE", "PatientID=PA3", f"StudyInstanceUID={c.studies['ST4']}",
                f"SeriesInstanceUID={c.series['SE5']}", "SOPInstanceUID", model="P"))
    assert r.texts("SOPInstanceUID") == c.sop_uids("site-a", series_uid=c.series["SE5"])
    assert r.pending == 2


# -- identifiers the SCP refuses, keys it does not know ------------------------------


@pytest.mark.parametrize(("model", "level", "keys"), [
    ("P", "STUDY", ("StudyInstanceUID",)),  # no PatientID
    ("P", "STUDY", ("PatientID=PA*", "StudyInstanceUID")),  # not a single value
    ("P", "SERIES", ("PatientID=PA1", "SeriesInstanceUID")),  # no StudyInstanceUID
    ("S", "SERIES", ("SeriesInstanceUID", "Modality=CT")),
    ("S", "IMAGE", ("StudyInstanceUID=1.2.3", "SOPInstanceUID")),  # no SeriesInstanceUID
    ("S", "IMAGE", ("SeriesInstanceUID=1.2.3", "SOPInstanceUID")),  # no StudyInstanceUID
    ("S", "PATIENT", ("PatientID",)),  # no PATIENT level in Study Root
    ("S", "NONSENSE", ("PatientID",)),
])
def test_missing_unique_key_of_a_higher_level_fails(
    qr: QR, tmp_path: Path, model: str, level: str, keys: tuple[str, ...]
) -> None:
    failed(find(qr, tmp_path, level, *keys, model=model))


def test_unknown_keys_are_returned_empty(qr: QR, tmp_path: Path) -> None:
    st = qr.corpus.studies
    r = ok(find(qr, tmp_path, "STUDY", f"StudyInstanceUID={st['ST1']}", "PatientComments",
                "(0009,0010)", "(0011,1001)", "OtherPatientIDsSequence"))
    assert r.pending == 1
    ds = r.datasets[0]
    for tag in (0x00104000, 0x00090010, 0x00111001, 0x00101002):
        assert tag in ds, f"({tag >> 16:04X},{tag & 0xFFFF:04X}) not returned"
        assert ds[tag].value in ("", None, b"", []), ds[tag]


def test_key_the_index_does_not_hold_does_not_filter(qr: QR, tmp_path: Path) -> None:
    """A matching value on an attribute the archive does not hold is ignored (C.2.2.1.1)."""
    st = qr.corpus.studies
    r = ok(find(qr, tmp_path, "STUDY", f"StudyInstanceUID={st['ST1']}", "PatientComments=xyz"))
    assert r.texts("StudyInstanceUID") == {st["ST1"]}
    assert r.datasets[0].PatientComments in ("", None)
