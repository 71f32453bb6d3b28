"""The ``coffre`` command line, run as a real process (the console script of the venv)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import tomllib
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.fileset import FileSet
from pydicom.uid import generate_uid

from coffre.dicom.synthetic import InstanceSpec, make_instance
from coffre.services.demo import FACILITIES, PATIENTS
from coffre.storage.filesystem import FileSystemBlobStore

COFFRE = str(Path(sys.executable).with_name("coffre"))

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def coffre(data: Path) -> Run:
    """Run ``coffre ARGS --data DATA``; blobs without fsync to keep the tests quick."""

    def run(*args: str, env: dict[str, str] | None = None, with_data: bool = True) -> subprocess.CompletedProcess[str]:
        environ = dict(os.environ, COLUMNS="250", NO_COLOR="1", COFFRE_STORAGE_FSYNC="false")
        environ.update(env or {})
        argv = [COFFRE, *args, *(["--data", str(data)] if with_data else [])]
        return subprocess.run(argv, capture_output=True, text=True, env=environ, timeout=120)

    return run


def assert_clean_error(out: subprocess.CompletedProcess[str], *words: str) -> None:
    """Non-zero exit, a message naming the problem, no Python traceback."""
    text = out.stdout + out.stderr
    assert out.returncode != 0, text
    assert "Traceback" not in text, text
    for word in words:
        assert word.lower() in " ".join(text.lower().split()), f"{word!r} not in:\n{text}"


def progress_bar(stderr: str, label: str, total: int) -> bool:
    """Rich's progress bar, finished: ``LABEL ━━━━ TOTAL/TOTAL`` on one line of stderr."""
    return any(line.startswith(label) and "━" in line and f" {total}/{total} " in f"{line} "
               for line in stderr.splitlines())


def db(data: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(data / "index.sqlite3")
    conn.row_factory = sqlite3.Row
    return conn


def territory(coffre: Run) -> None:
    assert coffre("facility", "add", "site-a", "--name", "Site A", "--issuer", "SITE-A").returncode == 0
    out = coffre("node", "add", "MODALITY_A", "--facility", "site-a", "--host", "127.0.0.1",
                 "--port", "11301", "--allow", "store")
    assert out.returncode == 0, out.stderr


def write_series(folder: Path, count: int, patient_id: str = "IMP1") -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    uids = []
    for n in range(count):
        uid = generate_uid()
        spec = InstanceSpec(patient_id=patient_id, study_uid=study, series_uid=series, sop_uid=uid,
                            instance_number=n + 1, seed=n)
        (folder / f"im{n:03d}.dcm").write_bytes(make_instance(spec))
        uids.append(uid)
    return uids


# -- init ------------------------------------------------------------------------------


def test_init_writes_commented_settings(coffre: Run, data: Path) -> None:
    out = coffre("init")
    assert out.returncode == 0, out.stderr
    toml = data / "coffre.toml"
    text = toml.read_text()
    comments = [line for line in text.splitlines() if line.startswith("#")]
    assert len(comments) >= 10, "the settings file explains its keys"
    settings = tomllib.loads(text)
    assert set(settings) >= {"archive", "dicom", "http", "index", "storage", "limits"}
    assert settings["archive"]["ae_title"] == "COFFRE"
    assert settings["dicom"]["port"] == 11112
    assert (data / "index.sqlite3").is_file()

    again = coffre("init")
    assert_clean_error(again, "exists", "--force")
    assert toml.read_text() == text
    toml.write_text(text.replace('ae_title = "COFFRE"', 'ae_title = "OTHER"'))
    assert coffre("init", "--force").returncode == 0
    assert tomllib.loads(toml.read_text())["archive"]["ae_title"] == "COFFRE"


def test_invalid_settings_are_a_clean_error(coffre: Run, data: Path) -> None:
    assert coffre("init").returncode == 0
    out = coffre("info", "--json", env={"COFFRE_DICOM_PORT": "not-a-port"})
    # the message names the section: "[dicom] port must be an integer"
    assert_clean_error(out, "[dicom] port must be an integer")


# -- demo ------------------------------------------------------------------------------


def _patients(data: Path) -> set[tuple[str, str, str, str]]:
    with db(data) as conn:
        rows = conn.execute(
            "SELECT f.slug, p.issuer, p.patient_id, p.patient_name FROM patient p "
            "JOIN facility f ON f.id = p.facility_id"
        ).fetchall()
    return {(r["slug"], r["issuer"], r["patient_id"], r["patient_name"]) for r in rows}


def test_demo_loads_the_territory_once(coffre: Run, data: Path) -> None:
    expected_instances = sum(s[4] * s[5] for p in PATIENTS for s in p.studies)

    out = coffre("demo")

    assert out.returncode == 0, out.stderr
    assert f"demo territory loaded: 3 facilities, {expected_instances} instances" in out.stdout
    patients = _patients(data)
    # one person known under two PatientIDs at two facilities
    assert ("chu-nord", "CHU-NORD", "CN100234", "MARTIN^CLAIRE") in patients
    assert ("clinique-sud", "CLIN-SUD", "CS-77812", "MARTIN^CLAIRE") in patients
    # two people sharing PatientID 100200, kept apart by facility and issuer
    shared = {p for p in patients if p[2] == "100200"}
    assert shared == {
        ("chu-nord", "CHU-NORD", "100200", "DUBOIS^PIERRE"),
        ("imagerie-est", "IMG-EST", "100200", "LEROY^SOPHIE"),
    }
    assert len(patients) == len(PATIENTS)
    # CT, MR, CR/DX and US studies, spread over several years, at every facility
    with db(data) as conn:
        studies = conn.execute(
            "SELECT f.slug, st.study_date, se.modality FROM series se "
            "JOIN study st ON st.id = se.study_pk JOIN facility f ON f.id = st.facility_id"
        ).fetchall()
    modalities = {r["modality"] for r in studies}
    assert {"CT", "MR", "US"} <= modalities and modalities & {"CR", "DX"}, modalities
    years = {r["study_date"][:4] for r in studies}
    assert len(years) >= 3 and all(y.isdigit() for y in years), years
    assert {r["slug"] for r in studies} == {f.slug for f in FACILITIES}
    assert progress_bar(out.stderr, "demo", expected_instances), out.stderr

    info = json.loads(coffre("info", "--json").stdout)
    by_slug = {f["slug"]: f for f in info["facilities"]}
    assert set(by_slug) == {f.slug for f in FACILITIES}
    assert sum(f["instances"] for f in info["facilities"]) == expected_instances
    for fac in FACILITIES:
        assert {n["ae_title"] for n in by_slug[fac.slug]["nodes"]} == {n[0] for n in fac.nodes}

    again = coffre("demo")
    assert again.returncode == 0, again.stderr
    assert "already loaded" in again.stdout
    assert _patients(data) == patients
    with db(data) as conn:
        assert conn.execute("SELECT count(*) FROM instance").fetchone()[0] == expected_instances
        assert conn.execute("SELECT count(*) FROM facility").fetchone()[0] == 3
    check = coffre("check")
    assert check.returncode == 0, check.stdout
    assert f"files: {expected_instances}, verified: {expected_instances}, missing: 0, corrupt: 0" in check.stdout


# -- info ------------------------------------------------------------------------------


def test_info_json(coffre: Run) -> None:
    territory(coffre)
    out = coffre("node", "add", "PACS_A", "--facility", "site-a", "--host", "127.0.0.1", "--port", "11302",
                 "--allow", "store,query,retrieve,move-destination")
    assert out.returncode == 0, out.stderr

    doc = json.loads(coffre("info", "--json", env={"COFFRE_DICOM_PORT": "11999"}).stdout)

    assert doc["ae_title"] == "COFFRE"
    assert doc["dicom"]["port"] == 11999
    assert doc["http"]["port"] == 8042
    [site] = doc["facilities"]
    assert (site["slug"], site["name"], site["issuer"]) == ("site-a", "Site A", "SITE-A")
    assert site["instances"] == 0
    nodes = {n["ae_title"]: n for n in site["nodes"]}
    assert nodes["MODALITY_A"]["permissions"] == ["store"]
    assert nodes["PACS_A"]["permissions"] == ["move-destination", "query", "retrieve", "store"]
    assert (nodes["PACS_A"]["host"], nodes["PACS_A"]["port"]) == ("127.0.0.1", 11302)


# -- import ----------------------------------------------------------------------------


def _dicomdir(folder: Path, count: int) -> tuple[Path, list[str]]:
    staging = folder.parent / f"{folder.name}-staging"
    uids = write_series(staging, count, patient_id="DIRPAT")
    fs = FileSet()
    for path in sorted(staging.iterdir()):
        fs.add(dcmread(path))
    fs.write(folder)
    # FileSet stages in a TemporaryDirectory it never removes itself; removed here, or
    # its finalizer warns (ResourceWarning, an error here) in whichever test runs the GC
    fs._stage["t"].cleanup()
    return folder / "DICOMDIR", uids


def test_import_folder_dicomdir_and_junk(coffre: Run, data: Path, tmp_path: Path) -> None:
    territory(coffre)
    folder = tmp_path / "incoming"
    loose = write_series(folder, 5)
    (folder / "notes.txt").write_text("this is not DICOM\n")
    dicomdir, referenced = _dicomdir(tmp_path / "cd", 3)

    out = coffre("import", "--facility", "site-a", str(folder), str(dicomdir))

    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    assert "stored: 8, duplicate: 0, new version: 0, rejected: 1" in out.stdout
    assert progress_bar(out.stderr, "import", 9), out.stderr
    reasons = [line for line in out.stdout.splitlines() if line.strip().startswith("rejected 1:")]
    assert len(reasons) == 1 and len(reasons[0].split(":", 1)[1].strip()) > 5, out.stdout
    with db(data) as conn:
        stored = {r[0] for r in conn.execute("SELECT sop_instance_uid FROM instance")}
        sources = {r[0] for r in conn.execute("SELECT DISTINCT source FROM instance_file")}
    assert stored == set(loose) | set(referenced)
    assert sources == {"import"}

    again = coffre("import", "--facility", "site-a", str(folder), str(dicomdir))
    assert "stored: 0, duplicate: 8, new version: 0, rejected: 1" in again.stdout

    clean = coffre("import", "--facility", "site-a", str(dicomdir))
    assert clean.returncode == 0
    assert "stored: 0, duplicate: 3, new version: 0, rejected: 0" in clean.stdout


def test_import_refuses_a_dicomdir_pointing_outside(coffre: Run, data: Path, tmp_path: Path) -> None:
    territory(coffre)
    dicomdir, _ = _dicomdir(tmp_path / "cd", 1)
    ds = dcmread(dicomdir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom rightly says '..' is no CS value
        for record in ds.DirectoryRecordSequence:
            if "ReferencedFileID" in record:
                record.ReferencedFileID = ["..", "..", "etc", "passwd"]
        ds.save_as(dicomdir)

    out = coffre("import", "--facility", "site-a", str(dicomdir))

    assert_clean_error(out, "rejected: 1", "DICOMDIR")
    with db(data) as conn:
        assert conn.execute("SELECT count(*) FROM instance").fetchone()[0] == 0


def test_import_into_unknown_facility(coffre: Run, tmp_path: Path) -> None:
    territory(coffre)
    write_series(tmp_path / "in", 1)
    out = coffre("import", "--facility", "nowhere", str(tmp_path / "in"))
    assert_clean_error(out, "no facility", "nowhere")


# -- check -----------------------------------------------------------------------------


def _blob_paths(data: Path) -> list[Path]:
    store = FileSystemBlobStore(data / "blobs", fsync=False)
    with db(data) as conn:
        keys = [r[0] for r in conn.execute("SELECT blob_key FROM instance ORDER BY id")]
    return [store.path_for(k) for k in keys]


def test_check_detects_missing_and_corrupt_blobs(coffre: Run, data: Path, tmp_path: Path) -> None:
    territory(coffre)
    write_series(tmp_path / "in", 3)
    assert coffre("import", "--facility", "site-a", str(tmp_path / "in")).returncode == 0
    ok = coffre("check")
    assert ok.returncode == 0, ok.stdout
    assert "files: 3, verified: 3, missing: 0, corrupt: 0" in ok.stdout
    assert progress_bar(ok.stderr, "check", 3), ok.stderr

    first, second, _third = _blob_paths(data)
    first.unlink()
    missing = coffre("check")
    assert missing.returncode == 1
    assert "missing: 1, corrupt: 0" in missing.stdout
    assert "missing site-a/" in missing.stdout
    assert "Traceback" not in missing.stdout + missing.stderr

    blob = bytearray(second.read_bytes())
    blob[-10] ^= 0xFF  # one flipped bit in the pixel data, same size
    second.chmod(0o640)
    second.write_bytes(bytes(blob))
    corrupt = coffre("check")
    assert corrupt.returncode == 1
    assert "missing: 1, corrupt: 1" in corrupt.stdout
    assert "corrupt site-a/" in corrupt.stdout

    # --repair must not "repair" a loss by forgetting it
    repaired = coffre("check", "--repair")
    assert repaired.returncode == 1
    assert "missing: 1, corrupt: 1" in repaired.stdout


# -- facilities and nodes --------------------------------------------------------------


def test_facility_add_list_and_errors(coffre: Run) -> None:
    out = coffre("facility", "add", "chu-nord", "--name", "CHU Nord", "--issuer", "CHU-NORD")
    assert out.returncode == 0, out.stderr
    assert "facility chu-nord added" in out.stdout
    listing = coffre("facility", "list")
    assert "chu-nord" in listing.stdout and "CHU Nord" in listing.stdout and "CHU-NORD" in listing.stdout

    assert_clean_error(coffre("facility", "add", "chu-nord", "--name", "Again", "--issuer", "X"),
                       "already exists")
    assert_clean_error(coffre("facility", "add", "Bad Slug!", "--name", "B", "--issuer", "B"), "slug")
    assert_clean_error(coffre("facility", "add", "ok-slug", "--name", "N", "--issuer", "I" * 65), "issuer")
    assert "Again" not in coffre("facility", "list").stdout


def test_node_add_list_remove_and_errors(coffre: Run) -> None:
    territory(coffre)
    listing = coffre("node", "list")
    assert "MODALITY_A" in listing.stdout and "site-a" in listing.stdout

    def add(ae: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return coffre("node", "add", ae, "--facility", "site-a", "--host", "127.0.0.1", "--port", "104", *extra)

    assert_clean_error(add("MODALITY_A"), "already registered")
    assert_clean_error(add("A" * 17), "AE title", "1-16")
    assert_clean_error(add("BAD\\AE"), "AE title")
    assert_clean_error(add(" LEADING"), "AE title")
    assert_clean_error(add("CT_X", "--allow", "store,fly"), "store", "query", "retrieve")
    assert_clean_error(coffre("node", "add", "CT_Y", "--facility", "nowhere", "--host", "h", "--port", "104"),
                       "no facility")
    assert_clean_error(coffre("node", "add", "CT_Z", "--facility", "site-a", "--host", "h", "--port", "0"),
                       "port")
    listing = coffre("node", "list")
    for bad in ("AAAAAAAAAAAAAAAAA", "CT_X", "CT_Y", "CT_Z", "LEADING"):
        assert bad not in listing.stdout

    removed = coffre("node", "remove", "MODALITY_A")
    assert removed.returncode == 0, removed.stderr
    assert "MODALITY_A" not in coffre("node", "list").stdout
    assert_clean_error(coffre("node", "remove", "MODALITY_A"), "no node")
