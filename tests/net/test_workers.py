"""``[dicom] workers``: several processes accept associations on one DICOM port.

The serve process accepts on the port and hands each connection in turn to itself and
to its workers (``net.workers.Dispatcher``). Checked with real peers: associations land in both
processes, DCMTK ``storescu`` over four associations stores everything intact
(``coffre check`` clean), and no worker outlives the serve process, whether it stops
on SIGTERM or is killed.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pynetdicom import AE

from coffre.errors import ConfigurationError
from coffre.settings import load_settings

from .conftest import Archive
from .dicomnet import write_instances

WORKER_LINE = re.compile(r"DICOM port served by (?P<n>\d+) processes \(pids (?P<pids>[\d, ]+)\)")


def _pids(archive: Archive) -> list[int]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in archive.stdout_lines:
            m = WORKER_LINE.search(line)
            if m:
                return [int(p) for p in m["pids"].split(",")]
        time.sleep(0.05)
    pytest.fail(f"no worker line in the serve output: {archive.stdout_lines}")


def _dicom_connections(pid: int, port: int) -> int:
    """Established TCP connections to the DICOM ``port`` held open by process ``pid``
    (its descriptors' socket inodes, looked up in /proc/net/tcp)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01" and fields[9] in inodes:  # 01: ESTABLISHED
                count += 1
    return count


def _sockets(pid: int) -> int:
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd).startswith("socket:"):
                count += 1
        except OSError:
            continue
    return count


def _gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":  # exited, not yet reaped by its parent
            return True
        time.sleep(0.05)
    return False


def test_workers_setting_is_bounded(tmp_path: Path) -> None:
    assert load_settings(tmp_path, {"COFFRE_DICOM_WORKERS": "4"}).dicom.workers == 4
    for bad in ("0", "65", "two"):
        with pytest.raises(ConfigurationError):
            load_settings(tmp_path, {"COFFRE_DICOM_WORKERS": bad})


def test_associations_are_spread_over_the_processes(start_archive: Callable[..., Archive]) -> None:
    archive = start_archive(COFFRE_DICOM_WORKERS="2")
    pids = _pids(archive)
    assert len(pids) == 2 and archive.proc is not None and pids[0] == archive.proc.pid
    ae = AE(ae_title="PACS_A")
    ae.add_requested_context("1.2.840.10008.1.1")
    # the serve process hands connections out in turn: 16 associations, 8 in each process
    assocs = [ae.associate(archive.host, archive.dicom_port, ae_title=archive.ae_title) for _ in range(16)]
    try:
        assert all(a.is_established for a in assocs)
        assert all(a.send_c_echo().Status == 0x0000 for a in assocs)
        held = {pid: _dicom_connections(pid, archive.dicom_port) for pid in pids}
        assert sorted(held.values()) == [8, 8], held
    finally:
        for a in assocs:
            a.release()


@pytest.mark.dcmtk
def test_four_storescu_associations_store_everything(
    start_archive: Callable[..., Archive], tmp_path: Path
) -> None:
    archive = start_archive(COFFRE_DICOM_WORKERS="2")
    folders = [tmp_path / f"assoc{n}" for n in range(4)]
    sent: dict[str, Path] = {}
    for n, folder in enumerate(folders):
        sent.update(write_instances(folder, 15, patient_id=f"WORK{n}"))
    senders = [
        subprocess.Popen(["storescu", "+sd", "-aet", "MODALITY_A", "-aec", archive.ae_title,
                          archive.host, str(archive.dicom_port), str(folder)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=archive.env)
        for folder in folders
    ]
    for proc in senders:
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, output
    for uid in sent:
        archive.assert_intact(uid)
    assert archive.instance_counts()["site-a"] == len(sent)
    checked = archive.check()
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_workers_stop_with_the_serve_process(start_archive: Callable[..., Archive]) -> None:
    stopped = start_archive(COFFRE_DICOM_WORKERS="3")
    pids = _pids(stopped)
    assert len(pids) == 3
    stopped.assert_healthy_exit(stopped.stop())
    stopped.inspected = True
    assert all(_gone(pid) for pid in pids[1:])

    killed = start_archive(COFFRE_DICOM_WORKERS="2")
    worker = _pids(killed)[1]
    killed.kill()
    assert _gone(worker), "a worker outlived its killed serve process"


def _children(pid: int) -> set[int]:
    """Live child processes of ``pid`` (spawned workers; multiprocessing's resource
    tracker too)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


def test_a_dead_worker_is_started_again(start_archive: Callable[..., Archive]) -> None:
    archive = start_archive(COFFRE_DICOM_WORKERS="2")
    assert archive.proc is not None
    worker = _pids(archive)[1]
    before = _children(archive.proc.pid)
    os.kill(worker, 9)
    assert _gone(worker)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        new = _children(archive.proc.pid) - before
        if new:
            break
        time.sleep(0.1)
    assert new, "no worker was started again"
    # and the port is still served by two processes: 16 associations reach both again
    ae = AE(ae_title="PACS_A")
    ae.add_requested_context("1.2.840.10008.1.1")
    replacement = next(iter(new))
    deadline = time.monotonic() + 30
    while _sockets(replacement) < 1 and time.monotonic() < deadline:  # its listening socket is up
        time.sleep(0.1)
    assocs = [ae.associate(archive.host, archive.dicom_port, ae_title=archive.ae_title) for _ in range(16)]
    try:
        assert all(a.is_established for a in assocs)
        assert _dicom_connections(replacement, archive.dicom_port) > 0
    finally:
        for a in assocs:
            a.release()
