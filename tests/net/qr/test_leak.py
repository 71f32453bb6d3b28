"""Facility scope: a node sees only its own facility's data (DESIGN 4.3, services/query.py).

site-b holds a patient with site-a's PatientID ``PA1`` and a study with site-a's
StudyInstanceUID ``ST1``: every count and every match of a site-a node must be site-a's
alone, and the reverse for a site-b node.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import QR
from .qrtools import PENDING, SUCCESS, ToolResult, findscu

pytestmark = pytest.mark.dcmtk

CT, MR = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"


def find(qr: QR, tmp_path: Path, level: str, *keys: str, model: str = "S",
         calling: str = "PACS_A") -> ToolResult:
    r = findscu(qr.host, qr.port, tmp_path / "rsp", level, *keys, model=model, calling=calling)
    assert r.statuses[-1] == SUCCESS and set(r.statuses[:-1]) <= {PENDING}, r.log
    return r


def multi(value: object) -> list[str]:
    return sorted([value] if isinstance(value, str) else [str(v) for v in value])  # type: ignore[attr-defined]


@pytest.mark.parametrize(("calling", "name", "studies", "series", "instances"), [
    ("PACS_A", "MÜLLER^Jürgen", 2, 3, 6),
    ("PACS_B", "SCHMIDT^Hans", 2, 3, 4),
])
def test_same_patient_id_counts_only_own_facility(
    qr: QR, tmp_path: Path, calling: str, name: str, studies: int, series: int, instances: int
) -> None:
    r = find(qr, tmp_path, "PATIENT", "PatientID=PA1", "PatientName", "NumberOfPatientRelatedStudies",
             "NumberOfPatientRelatedSeries", "NumberOfPatientRelatedInstances", model="P", calling=calling)
    assert r.pending == 1
    ds = r.datasets[0]
    assert str(ds.PatientName) == name
    assert int(ds.NumberOfPatientRelatedStudies) == studies
    assert int(ds.NumberOfPatientRelatedSeries) == series
    assert int(ds.NumberOfPatientRelatedInstances) == instances


@pytest.mark.parametrize(("calling", "facility", "accession", "modalities", "sop_classes"), [
    ("PACS_A", "site-a", "A1001", ["CT"], [CT]),
    ("PACS_B", "site-b", "B2001", ["CT", "MR"], [CT, MR]),
])
def test_shared_study_uid_counts_only_own_facility(
    qr: QR, tmp_path: Path, calling: str, facility: str, accession: str,
    modalities: list[str], sop_classes: list[str],
) -> None:
    c = qr.corpus
    uid = c.studies["ST1"]
    r = find(qr, tmp_path, "STUDY", f"StudyInstanceUID={uid}", "AccessionNumber", "PatientName",
             "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances", "ModalitiesInStudy",
             "SOPClassesInStudy", calling=calling)
    assert r.pending == 1
    ds = r.datasets[0]
    own = c.of(facility, study_uid=uid)
    assert str(ds.AccessionNumber) == accession
    assert str(ds.PatientName) == own[0].patient_name
    assert int(ds.NumberOfStudyRelatedSeries) == len({i.series_uid for i in own})
    assert int(ds.NumberOfStudyRelatedInstances) == len(own)
    assert multi(ds.ModalitiesInStudy) == modalities
    assert multi(ds.SOPClassesInStudy) == sop_classes


@pytest.mark.parametrize(("calling", "facility"), [("PACS_A", "site-a"), ("PACS_B", "site-b")])
def test_shared_study_series_and_images_are_own_facility_only(
    qr: QR, tmp_path: Path, calling: str, facility: str
) -> None:
    c = qr.corpus
    uid = c.studies["ST1"]
    series = find(qr, tmp_path, "SERIES", f"StudyInstanceUID={uid}", "SeriesInstanceUID",
                  "NumberOfSeriesRelatedInstances", calling=calling)
    assert series.texts("SeriesInstanceUID") == c.series_uids(facility, study_uid=uid)
    for ds in series.datasets:
        assert int(ds.NumberOfSeriesRelatedInstances) == len(c.of(facility, series_uid=str(ds.SeriesInstanceUID)))
    for series_uid in c.series_uids(facility, study_uid=uid):
        images = find(qr, tmp_path, "IMAGE", "PatientID=PA1", f"StudyInstanceUID={uid}",
                      f"SeriesInstanceUID={series_uid}", "SOPInstanceUID", model="P", calling=calling)
        assert images.texts("SOPInstanceUID") == c.sop_uids(facility, series_uid=series_uid)
        assert images.pending == len(c.of(facility, series_uid=series_uid))


@pytest.mark.parametrize(("calling", "other_series"), [("PACS_A", "SEB1"), ("PACS_B", "SE1")])
def test_other_facility_series_of_the_shared_study_is_invisible(
    qr: QR, tmp_path: Path, calling: str, other_series: str
) -> None:
    c = qr.corpus
    r = find(qr, tmp_path, "IMAGE", f"StudyInstanceUID={c.studies['ST1']}",
             f"SeriesInstanceUID={c.series[other_series]}", "SOPInstanceUID", calling=calling)
    assert r.datasets == []


@pytest.mark.parametrize("keys", [
    ("PatientName=SCHMIDT*",),
    ("StudyDate=20190505",),
    ("AccessionNumber=B200?",),
    ("PatientID=PA1", "StudyDate=20190501-20190601"),
])
def test_site_a_never_matches_site_b_values(qr: QR, tmp_path: Path, keys: tuple[str, ...]) -> None:
    r = find(qr, tmp_path, "STUDY", *keys, "StudyInstanceUID")
    assert r.datasets == []


def test_site_b_sees_exactly_its_studies(qr: QR, tmp_path: Path) -> None:
    c = qr.corpus
    r = find(qr, tmp_path, "STUDY", "StudyInstanceUID", "PatientID", calling="PACS_B")
    assert r.texts("StudyInstanceUID") == c.study_uids("site-b") == {c.studies["ST1"], c.studies["STB2"]}
    assert r.texts("PatientID") == {"PA1"}
