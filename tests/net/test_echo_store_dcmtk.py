"""C-ECHO and C-STORE against a running ``coffre serve``, driven by DCMTK's tools."""

from __future__ import annotations

import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from .conftest import Archive
from .dicomnet import dataset_part, rejection, write_instances

pytestmark = pytest.mark.dcmtk

def dcmtk(tool: str, *args: str, archive: Archive, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    exe = shutil.which(tool)
    if exe is None:
        pytest.fail(f"DCMTK's {tool} is not installed (apt-get install dcmtk)", pytrace=False)
    return subprocess.run([exe, *args], capture_output=True, text=True, env=archive.env, timeout=timeout)


def storescu(archive: Archive, *paths: Path, calling: str = "MODALITY_A", called: str = "COFFRE",
             extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return dcmtk(
        "storescu", "-v", "-aet", calling, "-aec", called, *extra,
        archive.host, str(archive.dicom_port), *(str(p) for p in paths), archive=archive,
    )


def assert_stored_as_sent(archive: Archive, uid: str, source: Path, facility: str = "site-a") -> None:
    blob = archive.assert_intact(uid)
    row = archive.instance(uid)
    assert row is not None and row["slug"] == facility
    sent = dcmread(source)
    kept = dcmread(blob)
    assert kept.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
    assert kept == sent  # every data element, pixel data included


def test_echoscu_succeeds(archive: Archive) -> None:
    out = dcmtk("echoscu", "-v", "-aet", "MODALITY_A", "-aec", "COFFRE",
                archive.host, str(archive.dicom_port), archive=archive)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Received Echo Response (Success)" in out.stdout + out.stderr


def test_echoscu_from_unknown_ae_is_rejected(archive: Archive) -> None:
    out = dcmtk("echoscu", "-aet", "STRANGER", "-aec", "COFFRE",
                archive.host, str(archive.dicom_port), archive=archive)
    assert out.returncode != 0
    assert "Calling AE Title Not Recognized" in out.stdout + out.stderr


def test_storescu_one_association_of_twenty(archive: Archive, tmp_path: Path) -> None:
    made = write_instances(tmp_path / "series", 20)
    before = archive.instance_counts()

    out = storescu(archive, tmp_path / "series", extra=("+sd",))

    log = out.stdout + out.stderr
    assert out.returncode == 0, log
    assert log.count("Received Store Response (Success)") == 20, log
    assert log.count("Requesting Association") == 1
    for uid, path in made.items():
        assert_stored_as_sent(archive, uid, path)
        # DCMTK sends the dataset it read; the archive keeps exactly those bytes
        assert dataset_part(archive.assert_intact(uid)) == dataset_part(path)
    after = archive.instance_counts()
    assert after["site-a"] == before["site-a"] + 20
    assert after["site-b"] == before["site-b"]
    check = archive.check()
    assert check.returncode == 0, check.stdout + check.stderr
    assert "missing: 0, corrupt: 0" in check.stdout


def test_concurrent_storescu_associations(archive: Archive, tmp_path: Path) -> None:
    batches = [write_instances(tmp_path / f"batch{n}", 10, patient_id=f"CONC{n}") for n in range(4)]
    batches.append(write_instances(tmp_path / "site-b", 5, patient_id="CONCB"))
    before = archive.instance_counts()

    def send(n: int) -> subprocess.CompletedProcess[str]:
        calling = "MODALITY_B" if n == 4 else "MODALITY_A"
        folder = tmp_path / ("site-b" if n == 4 else f"batch{n}")
        return storescu(archive, folder, calling=calling, extra=("+sd",))

    with ThreadPoolExecutor(len(batches)) as pool:
        results = list(pool.map(send, range(len(batches))))

    for out in results:
        assert out.returncode == 0, out.stdout + out.stderr
    for n, batch in enumerate(batches):
        for uid, path in batch.items():
            assert_stored_as_sent(archive, uid, path, facility="site-b" if n == 4 else "site-a")
    after = archive.instance_counts()
    assert after["site-a"] == before["site-a"] + 40
    assert after["site-b"] == before["site-b"] + 5


#: storescu option that proposes each transfer syntax (and the uncompressed ones)
PROPOSE = {
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.5": "-xr",
    "1.2.840.10008.1.2.1.99": "-xd",
}


def test_compressed_transfer_syntaxes_archived_as_received(
    archive: Archive, compressed_files: dict[Path, str]
) -> None:
    failures = []
    for path, ts in compressed_files.items():
        # -R: only the needed SOP class; the option puts the file's own syntax first
        out = storescu(archive, path, extra=("-R", PROPOSE[ts]))
        log = out.stdout + out.stderr
        if out.returncode != 0 or "Received Store Response (Success)" not in log:
            failures.append(f"{path.name} ({ts}):\n{log}")
            continue
        assert "Converting transfer syntax" not in log or f"{ts}" not in log
        uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        row = archive.instance(uid)
        assert row is not None, path.name
        assert row["transfer_syntax_uid"] == ts, path.name
        blob = archive.assert_intact(uid)
        kept, sent = dcmread(blob), dcmread(path)
        assert kept.file_meta.TransferSyntaxUID == ts, path.name
        # no transcoding: the encapsulated (or native) pixel bytes are the file's
        assert bytes(kept.PixelData) == bytes(sent.PixelData), path.name
        # DCMTK re-encodes what it sends: it drops Data Set Trailing Padding, writes
        # encapsulated Pixel Data as OB and recomputes group lengths; every other
        # value must be the file's
        def values(ds: Dataset) -> dict[int, object]:
            return {e.tag: e.value for e in ds if e.tag != 0xFFFCFFFC and e.tag.element != 0}

        assert values(kept) == values(sent), path.name
    assert not failures, "\n".join(failures)


def test_unknown_calling_ae_is_rejected(archive: Archive, tmp_path: Path) -> None:
    made = write_instances(tmp_path / "x", 1)
    out = storescu(archive, *made.values(), calling="INTRUDER")
    log = out.stdout + out.stderr
    assert out.returncode != 0
    assert "Association Rejected" in log
    assert "Calling AE Title Not Recognized" in log
    assert archive.instance(next(iter(made))) is None
    # PS3.8 9.3.4: rejected-permanent (1), DICOM UL service-user (1), reason 3
    assert rejection(archive.dicom_port, "INTRUDER") == (1, 1, 3)


def test_wrong_called_ae_is_rejected(archive: Archive, tmp_path: Path) -> None:
    made = write_instances(tmp_path / "x", 1)
    out = storescu(archive, *made.values(), called="NOT_COFFRE")
    log = out.stdout + out.stderr
    assert out.returncode != 0
    assert "Called AE Title Not Recognized" in log
    assert archive.instance(next(iter(made))) is None
    assert rejection(archive.dicom_port, "MODALITY_A", called="NOT_COFFRE") == (1, 1, 7)


def test_node_without_store_permission_is_refused(archive: Archive, tmp_path: Path) -> None:
    made = write_instances(tmp_path / "x", 1)
    before = archive.snapshot()
    out = storescu(archive, *made.values(), calling="NOSTORE")
    log = out.stdout + out.stderr
    assert "Received Store Response (Success)" not in log
    # DCMTK has no name for 0x0124 (PS3.7 C.5.x Refused: Not Authorized)
    assert "Received Store Response (Unknown Status: 0x124)" in log, log
    assert archive.instance(next(iter(made))) is None
    assert archive.snapshot() == before
