"""The demo territory's identity cases through DCMTK, with grants set by the CLI.

- Claire MARTIN is ``CN100234`` at chu-nord and ``CS-77812`` at clinique-sud (one person);
- ``100200`` is Pierre DUBOIS at chu-nord and Sophie LEROY at imagerie-est (two people).

chu-nord's PACS queries and retrieves with its own PatientIDs (IHE RAD MIMA): with a care
relationship it sees Claire's MR from clinique-sud under ``CN100234`` (issuer CHU-NORD),
the original identifiers in OtherPatientIDsSequence, in C-FIND responses and in the
instances C-MOVE and C-GET send; the stored originals stay untouched. Without a grant,
or against an opposition, the MR is absent.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from ..conftest import COFFRE, Archive, tool_env
from .conftest import free_port
from .qrtools import PENDING, SUCCESS, findscu, getscu, movescu, storescp

pytestmark = pytest.mark.dcmtk


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    data = tmp_path_factory.mktemp("territory") / "data"
    env = tool_env(COFFRE_DICOM_PORT="0", COFFRE_HTTP_PORT="0", COFFRE_DICOM_HOST="127.0.0.1",
                   COFFRE_HTTP_HOST="127.0.0.1")
    loaded = subprocess.run([COFFRE, "demo", "--data", str(data)], capture_output=True, text=True, env=env,
                            timeout=300)
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr
    archive = Archive(data=data, env=env)
    archive.start()
    try:
        yield archive
    finally:
        archive.assert_healthy_exit(archive.stop())


def cli(archive: Archive, *args: str) -> str:
    done = archive.cli(*args)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def studies(archive: Archive, tmp_path: Path, calling: str, patient_id: str) -> dict[str, object]:
    r = findscu(archive.host, archive.dicom_port, tmp_path / "rsp", "STUDY", f"PatientID={patient_id}",
                "IssuerOfPatientID", "PatientName", "StudyInstanceUID", "StudyDescription",
                "ModalitiesInStudy", "OtherPatientIDsSequence", calling=calling)
    assert r.statuses[-1] == SUCCESS and set(r.statuses[:-1]) <= {PENDING}, r.log
    return {str(ds.StudyDescription): ds for ds in r.datasets}


def test_identity_cases_grants_and_coercion(demo: Archive, tmp_path: Path) -> None:
    # without a grant: chu-nord sees its own two studies of Claire, nothing of clinique-sud
    own = studies(demo, tmp_path, "CHUN_PACS", "CN100234")
    assert set(own) == {"CT THORAX", "RADIO THORAX"}

    # two people, one PatientID: each facility sees its own human only
    assert set(studies(demo, tmp_path, "CHUN_PACS", "100200")) == {"CT ABDOMEN", "RADIO BASSIN"}
    assert set(studies(demo, tmp_path, "IEST_PACS", "100200")) == {"ECHOGRAPHIE ABDOMINALE", "IRM CEREBRALE"}

    mr_uid = str(studies(demo, tmp_path, "CSUD_PACS", "CS-77812")["IRM GENOU DROIT"].StudyInstanceUID)
    destination_port = free_port()
    cli(demo, "node", "add", "--data", str(demo.data), "CHUN_VIEW", "--host", "127.0.0.1",
        "--port", str(destination_port), "--facility", "chu-nord", "--allow", "move-destination")
    with storescp("CHUN_VIEW", destination_port, tmp_path / "denied") as scp:
        moved = movescu(demo.host, demo.dicom_port, "CHUN_VIEW", "STUDY", f"StudyInstanceUID={mr_uid}",
                        calling="CHUN_PACS")
        assert moved.final.status == SUCCESS and scp.files() == [], moved.log  # absent, not refused

    # a clinician of chu-nord records a care relationship: the MR appears, in chu-nord's domain
    cli(demo, "grant", "care", "--data", str(demo.data), "--facility", "chu-nord", "--patient-id", "CN100234",
        "--days", "30", "--reason", "follow-up of the knee")
    found = studies(demo, tmp_path, "CHUN_PACS", "CN100234")
    assert set(found) == {"CT THORAX", "RADIO THORAX", "IRM GENOU DROIT"}
    mr = found["IRM GENOU DROIT"]
    assert (mr.PatientID, mr.IssuerOfPatientID) == ("CN100234", "CHU-NORD")
    assert [(i.PatientID, i.IssuerOfPatientID) for i in mr.OtherPatientIDsSequence] == [("CS-77812", "CLIN-SUD")]
    # the other human under 100200 is still invisible to chu-nord
    assert set(studies(demo, tmp_path, "CHUN_PACS", "100200")) == {"CT ABDOMEN", "RADIO BASSIN"}

    with storescp("CHUN_VIEW", destination_port, tmp_path / "moved") as scp:
        moved = movescu(demo.host, demo.dicom_port, "CHUN_VIEW", "STUDY", f"StudyInstanceUID={mr_uid}",
                        calling="CHUN_PACS")
        assert moved.final.status == SUCCESS, moved.log
        received = [dcmread(p) for p in scp.files()]
    assert len(received) == 16
    assert {(ds.PatientID, ds.IssuerOfPatientID) for ds in received} == {("CN100234", "CHU-NORD")}
    assert {ds.OtherPatientIDsSequence[0].PatientID for ds in received} == {"CS-77812"}

    got = getscu(demo.host, demo.dicom_port, tmp_path / "get", "STUDY", f"StudyInstanceUID={mr_uid}",
                 calling="CHUN_PACS")
    assert got.final.status == SUCCESS, got.log
    assert {dcmread(p).PatientID for p in got.files} == {"CN100234"} and len(got.files) == 16

    # the stored originals are clinique-sud's, untouched
    stored = demo.query("SELECT i.blob_key FROM instance i JOIN study s ON s.id = "
                        "(SELECT study_pk FROM series WHERE id = i.series_pk) WHERE s.study_instance_uid = ?", mr_uid)
    assert stored and all(dcmread(demo.blob_path(r["blob_key"])).PatientID == "CS-77812" for r in stored)

    # Claire opposes sharing (recorded at clinique-sud): the MR is absent again for chu-nord
    cli(demo, "grant", "oppose", "--data", str(demo.data), "--facility", "clinique-sud",
        "--patient-id", "CS-77812", "--reason", "patient refuses sharing")
    assert set(studies(demo, tmp_path, "CHUN_PACS", "CN100234")) == {"CT THORAX", "RADIO THORAX"}
