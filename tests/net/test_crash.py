"""DESIGN rule 4: nothing acknowledged is ever lost, even when the server is killed.

Four DCMTK ``storescu`` associations store instances concurrently; the server gets
SIGKILL while they are still sending. Every instance that received a Success status must then be in the index
with an intact blob; ``coffre check`` must pass; ``coffre check --repair`` must remove
what was never acknowledged (pending rows, orphan blobs, temporary files), and the
archive must start and serve again.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian

from coffre.dicom.synthetic import InstanceSpec, make_dataset

from . import dicomnet as net
from .conftest import Archive
from .dicomnet import dataset_part, write_instances

ASSOCIATIONS = 4
PER_ASSOCIATION = 80
KILL_AFTER = 40


def _storescu(archive: Archive, folder: Path, acknowledged: dict[str, Path], lock: threading.Lock) -> subprocess.Popen[str]:
    """One storescu association sending ``folder``; files acknowledged with Success are recorded."""
    proc = subprocess.Popen(
        ["storescu", "-v", "+sd", "-aet", "MODALITY_A", "-aec", "COFFRE",
         archive.host, str(archive.dicom_port), str(folder)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=archive.env,
    )

    def follow() -> None:
        assert proc.stdout is not None
        current: Path | None = None
        for line in proc.stdout:
            if "Sending file: " in line:
                current = Path(line.split("Sending file: ", 1)[1].strip())
            elif "Received Store Response (Success)" in line and current is not None:
                uid = str(dcmread(current, stop_before_pixels=True).SOPInstanceUID)
                with lock:
                    acknowledged[uid] = current
                current = None

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    proc.follower = thread  # type: ignore[attr-defined]
    return proc


def _plant_leftovers(archive: Archive) -> tuple[Path, Path]:
    """What a crash inside a blob write leaves: an orphan blob and a temporary file."""
    orphan = archive.blob_path("site-a/" + "0" * 32)
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"never acknowledged")
    temp = orphan.parent / ".tmp-0123456789abcdef0123456789abcdef"
    temp.write_bytes(b"half written")
    return orphan, temp


@pytest.mark.dcmtk
def test_sigkill_loses_nothing_acknowledged(start_archive: Callable[..., Archive], tmp_path: Path) -> None:
    archive = start_archive()
    folders = [tmp_path / f"assoc{n}" for n in range(ASSOCIATIONS)]
    for n, folder in enumerate(folders):
        write_instances(folder, PER_ASSOCIATION, patient_id=f"CRASH{n}")
    acknowledged: dict[str, Path] = {}
    lock = threading.Lock()
    senders = [_storescu(archive, folder, acknowledged, lock) for folder in folders]
    deadline = time.monotonic() + 60
    while len(acknowledged) < KILL_AFTER and time.monotonic() < deadline:
        time.sleep(0.002)
    archive.kill()  # SIGKILL while the four associations are still sending
    for proc in senders:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.follower.join(10)  # type: ignore[attr-defined]
        assert proc.stdout is not None
        proc.stdout.close()
    first_stderr = archive.stderr()
    with lock:
        acked = dict(acknowledged)
    assert len(acked) >= KILL_AFTER, "the server was too slow to test anything"
    assert len(acked) < ASSOCIATIONS * PER_ASSOCIATION, "the kill came after the end"
    assert any(p.returncode != 0 for p in senders), "no association was cut by the kill"
    assert "Traceback (most recent call last)" not in first_stderr, first_stderr

    out = archive.cli("check")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "missing: 0, corrupt: 0" in out.stdout
    for uid, path in acked.items():
        blob = archive.assert_intact(uid)
        assert dataset_part(blob) == dataset_part(path)  # the bytes storescu sent

    # the kill itself may have cut a blob write and left its own temporary file
    temps_before = sum(1 for p in archive.blob_files() if p.name.startswith(".tmp-"))
    orphan, temp = _plant_leftovers(archive)
    pending_before = len(archive.query("SELECT id FROM instance_file WHERE status = 'pending'"))
    report = archive.check()
    assert report.returncode == 0, report.stdout
    assert f"unacknowledged leftovers: {pending_before}," in report.stdout
    assert "orphan blobs: 0," not in report.stdout
    assert f"temp files: {temps_before + 1}," in report.stdout

    repaired = archive.check("--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert not archive.query("SELECT id FROM instance_file WHERE status = 'pending'")
    assert not orphan.exists()
    known = {row["blob_key"] for row in archive.query("SELECT blob_key FROM instance_file")}
    on_disk = {p.name.replace("~", "/") for p in archive.blob_files() if not p.name.startswith(".tmp-")}
    assert on_disk == known, f"unexpected files: {sorted(on_disk - known)[:5]}"
    for uid in acked:
        archive.assert_intact(uid)
    again = archive.check()
    assert "unacknowledged leftovers: 0, orphan blobs: 0, temp files: 0" in again.stdout, again.stdout

    # the archive starts again on the same folder and serves
    archive.killed = False
    archive.start()
    counts = archive.instance_counts()
    assert counts["site-a"] >= len(acked)
    ds = make_dataset(InstanceSpec(patient_id="AFTER-CRASH"))
    with net.association(archive.dicom_port) as assoc:
        assert net.status_of(assoc.send_c_store(ds)) == 0x0000
    archive.assert_intact(str(ds.SOPInstanceUID))

    # a crash inside a blob write leaves a .tmp- file: `check --repair` removes it
    assert not temp.exists(), "check --repair leaves temporary blob files of a crash behind"



def test_sigterm_stops_cleanly(start_archive: Callable[..., Archive]) -> None:
    """SIGTERM ends ``coffre serve`` with exit 0, its goodbye line, and no traceback."""
    archive = start_archive()
    with net.association(archive.dicom_port, contexts=[("1.2.840.10008.1.1", [ExplicitVRLittleEndian])]) as assoc:
        assert assoc.send_c_echo().Status == 0x0000
    code = archive.stop()
    archive.inspected = True
    assert "Traceback (most recent call last)" not in archive.stderr(), archive.stderr()
    assert code == 0, archive.stderr()
    assert any("Coffre stopped" in line for line in archive.stdout_lines)
