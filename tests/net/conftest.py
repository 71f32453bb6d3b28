"""A real ``coffre serve`` process for the network tests.

``archive`` (module scope) and ``fresh_archive`` (function scope) prepare a data folder
with the test territory, start ``coffre serve`` with free ports (``COFFRE_DICOM_PORT=0``,
``COFFRE_HTTP_PORT=0``), wait for its ready line, and stop it with SIGTERM at teardown.
A server that wrote a Python traceback to stderr, or did not stop cleanly, fails the
test.

Territory:

- ``site-a``: ``MODALITY_A`` (store), ``PACS_A`` (store, query, retrieve,
  move-destination), ``NOSTORE`` (query only);
- ``site-b``: ``MODALITY_B`` (store).
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from coffre.app import build_context
from coffre.model import Actor, Permission
from coffre.services.facilities import add_facility, add_node
from coffre.settings import load_settings
from coffre.storage.filesystem import FileSystemBlobStore

COFFRE = str(Path(sys.executable).with_name("coffre"))
READY = re.compile(
    r"ready: DICOM (?P<ae>\S+)@(?P<host>[\d.]+):(?P<dicom>\d+), HTTP http://[\d.]+:(?P<http>\d+)/healthz"
)
READY_TIMEOUT = 30.0

ALL = frozenset(Permission)
STORE = frozenset({Permission.STORE})


def tool_env(**extra: str) -> dict[str, str]:
    """Environment for DCMTK tools and ``coffre`` commands (no Nagle stalls, wide tables)."""
    env = dict(os.environ)
    env.update({"TCP_NODELAY": "1", "COLUMNS": "250", "NO_COLOR": "1"})
    env.update(extra)
    return env


def prepare_territory(data: Path) -> None:
    """Create the test facilities and nodes through the services (in-process)."""
    ctx = build_context(load_settings(data, {}))
    op = Actor.system("tests")
    try:
        add_facility(ctx, op, slug="site-a", name="Site A", issuer="SITE-A")
        add_facility(ctx, op, slug="site-b", name="Site B", issuer="SITE-B")
        nodes = [
            ("MODALITY_A", "site-a", 11301, STORE),
            ("PACS_A", "site-a", 11302, ALL),
            ("NOSTORE", "site-a", 11303, frozenset({Permission.QUERY})),
            ("MODALITY_B", "site-b", 11311, STORE),
        ]
        for ae, slug, port, perms in nodes:
            add_node(ctx, op, ae_title=ae, host="127.0.0.1", port=port, facility_slug=slug,
                     permissions=perms)
    finally:
        ctx.close()


@dataclass
class Archive:
    """A running ``coffre serve`` and ways to look at its data folder."""

    data: Path
    env: dict[str, str]
    proc: subprocess.Popen[str] | None = None
    host: str = "127.0.0.1"
    ae_title: str = "COFFRE"
    dicom_port: int = 0
    http_port: int = 0
    stderr_path: Path = field(default=Path())
    stdout_lines: list[str] = field(default_factory=list)
    killed: bool = False
    #: the test checked the exit itself; teardown does not report it twice
    inspected: bool = False

    # -- process -------------------------------------------------------------------

    def start(self) -> None:
        self.stderr_path = self.data.parent / f"{self.data.name}-serve-{int(time.time() * 1000)}.stderr"
        stderr = self.stderr_path.open("w")
        self.proc = subprocess.Popen(
            [COFFRE, "serve", "--data", str(self.data)],
            stdout=subprocess.PIPE, stderr=stderr, text=True, env=self.env,
        )
        stderr.close()
        lines: queue.Queue[str | None] = queue.Queue()

        def pump(stream: Any) -> None:
            for line in stream:
                self.stdout_lines.append(line)
                lines.put(line)
            lines.put(None)

        self._pump = threading.Thread(target=pump, args=(self.proc.stdout,), daemon=True)
        self._pump.start()
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                pytest.fail(f"coffre serve not ready after {READY_TIMEOUT} s:\n{self.stderr()}")
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                code = self.proc.wait()
                self._close()
                pytest.fail(f"coffre serve exited ({code}) before it was ready:\n{self.stderr()}")
            match = READY.search(line)
            if match:
                self.ae_title = match["ae"]
                self.host = match["host"]
                self.dicom_port = int(match["dicom"])
                self.http_port = int(match["http"])
                return

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def _close(self) -> None:
        """Release the stdout pipe once the process has exited."""
        assert self.proc is not None
        pump = getattr(self, "_pump", None)
        if pump is not None:
            pump.join(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def kill(self) -> None:
        """SIGKILL (a crash); the test then owns the consequences."""
        assert self.proc is not None
        self.killed = True
        self.proc.kill()
        self.proc.wait(10)
        self._close()

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after 15 s; the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                self._close()
                return -9
        self._close()
        return int(self.proc.returncode)

    def assert_healthy_exit(self, code: int) -> None:
        text = self.stderr()
        if "Traceback (most recent call last)" in text:
            pytest.fail(f"coffre serve wrote a traceback to stderr:\n{text}")
        if not self.killed and code != 0:
            pytest.fail(f"coffre serve did not stop cleanly on SIGTERM (exit {code}):\n{text}")

    def rss_peak_kib(self) -> int:
        """VmHWM of the server process, KiB."""
        assert self.proc is not None
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", status)[1])  # type: ignore[index]

    # -- CLI -----------------------------------------------------------------------

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run ``coffre ARGS --data DATA`` (the data option is appended)."""
        return subprocess.run(
            [COFFRE, *args, "--data", str(self.data)],
            capture_output=True, text=True, env=self.env, timeout=timeout,
        )

    def info(self) -> dict[str, Any]:
        out = self.cli("info", "--json")
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def instance_counts(self) -> dict[str, int]:
        return {f["slug"]: f["instances"] for f in self.info()["facilities"]}

    def check(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.cli("check", "--grace", "0", *extra)

    # -- index and blobs -----------------------------------------------------------

    def db(self) -> sqlite3.Connection:
        conn = sqlite3.connect(f"file:{self.data / 'index.sqlite3'}?mode=ro", uri=True, timeout=30)
        conn.row_factory = sqlite3.Row
        return conn

    def query(self, sql: str, *params: Any) -> list[sqlite3.Row]:
        conn = self.db()
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    @property
    def blobs(self) -> FileSystemBlobStore:
        return FileSystemBlobStore(self.data / "blobs", fsync=False)

    def blob_path(self, key: str) -> Path:
        return self.blobs.path_for(key)

    def blob_files(self) -> set[Path]:
        """Every file under the blob folder (blobs and temporary files)."""
        root = self.data / "blobs"
        return {p for p in root.rglob("*") if p.is_file()} if root.exists() else set()

    def instance(self, sop_instance_uid: str) -> sqlite3.Row | None:
        rows = self.query(
            "SELECT i.*, f.slug FROM instance i JOIN facility f ON f.id = i.facility_id "
            "WHERE i.sop_instance_uid = ?", sop_instance_uid,
        )
        assert len(rows) <= 1, f"{sop_instance_uid} indexed {len(rows)} times"
        return rows[0] if rows else None

    def file_rows(self, sop_instance_uid: str | None = None) -> list[sqlite3.Row]:
        if sop_instance_uid is None:
            return self.query("SELECT * FROM instance_file ORDER BY id")
        return self.query("SELECT * FROM instance_file WHERE sop_instance_uid = ? ORDER BY id",
                          sop_instance_uid)

    def assert_intact(self, sop_instance_uid: str) -> Path:
        """The instance is indexed, its blob exists and matches size and SHA-256."""
        row = self.instance(sop_instance_uid)
        assert row is not None, f"{sop_instance_uid} is not in the index"
        path = self.blob_path(row["blob_key"])
        assert path.is_file(), f"blob of {sop_instance_uid} is missing"
        data = path.read_bytes()
        assert len(data) == row["size"]
        assert hashlib.sha256(data).hexdigest() == row["sha256"]
        return path

    def snapshot(self) -> tuple[int, int, frozenset[Path]]:
        """(instance rows, file rows, blob files) to prove that nothing was stored."""
        instances = self.query("SELECT count(*) FROM instance")[0][0]
        files = self.query("SELECT count(*) FROM instance_file")[0][0]
        return instances, files, frozenset(self.blob_files())


def _launch(data: Path, extra_env: dict[str, str]) -> Archive:
    prepare_territory(data)
    env = tool_env(
        COFFRE_DICOM_PORT="0", COFFRE_HTTP_PORT="0",
        COFFRE_DICOM_HOST="127.0.0.1", COFFRE_HTTP_HOST="127.0.0.1",
        **extra_env,
    )
    archive = Archive(data=data, env=env)
    archive.start()
    return archive


@pytest.fixture(scope="module")
def archive_env() -> dict[str, str]:
    """Extra COFFRE_* settings of the module's server; override in a test module."""
    return {}


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory, archive_env: dict[str, str]) -> Iterator[Archive]:
    """One ``coffre serve`` shared by the tests of a module."""
    server = _launch(tmp_path_factory.mktemp("archive") / "data", archive_env)
    try:
        yield server
    finally:
        server.assert_healthy_exit(server.stop())


@pytest.fixture
def start_archive(tmp_path: Path) -> Iterator[Callable[..., Archive]]:
    """Factory: a fresh data folder and server per call; all stopped at teardown."""
    started: list[Archive] = []

    def start(**extra_env: str) -> Archive:
        server = _launch(tmp_path / f"data{len(started)}", extra_env)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.inspected:
            continue
        code = server.stop() if not server.killed else -9
        server.assert_healthy_exit(code)


PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
PYDICOM_DATA = Path(pydicom.__file__).parent.parent / "data_store" / "data"

#: file -> its transfer syntax; every file has its own SOP Instance UID.
COMPRESSED = {
    PYDICOM_FILES / "SC_rgb_jpeg_dcmtk.dcm": "1.2.840.10008.1.2.4.50",  # JPEG baseline
    PYDICOM_FILES / "JPEG-lossy.dcm": "1.2.840.10008.1.2.4.51",  # JPEG extended 12 bit
    PYDICOM_DATA / "JPEG-LL.dcm": "1.2.840.10008.1.2.4.70",  # JPEG lossless SV1
    PYDICOM_FILES / "MR_small_jpeg_ls_lossless.dcm": "1.2.840.10008.1.2.4.80",  # JPEG-LS
    PYDICOM_FILES / "JPEGLSNearLossless_08.dcm": "1.2.840.10008.1.2.4.81",  # JPEG-LS lossy
    PYDICOM_DATA / "693_J2KR.dcm": "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    PYDICOM_FILES / "693_J2KI.dcm": "1.2.840.10008.1.2.4.91",  # JPEG 2000
    PYDICOM_FILES / "SC_rgb_rle.dcm": "1.2.840.10008.1.2.5",  # RLE lossless
    PYDICOM_FILES / "image_dfl.dcm": "1.2.840.10008.1.2.1.99",  # deflated explicit VR LE
}


@pytest.fixture
def in_process_dimse(tmp_path: Path) -> Iterator[tuple[Any, int]]:
    """``net.dimse.DimseServer`` in this process on the test territory: (server, port),
    for tests that look at the listener's own objects (sockets, threads, contexts)."""
    from coffre.net.dimse import DimseServer

    data = tmp_path / "data"
    prepare_territory(data)
    ctx = build_context(load_settings(data, {
        "COFFRE_DICOM_PORT": "0", "COFFRE_DICOM_HOST": "127.0.0.1", "COFFRE_STORAGE_FSYNC": "false",
    }))
    dimse = DimseServer(ctx)
    try:
        _host, port = dimse.start()
        yield dimse, port
    finally:
        dimse.stop()
        ctx.close()


@pytest.fixture(scope="session")
def compressed_files(tmp_path_factory: pytest.TempPathFactory) -> dict[Path, str]:
    """Compressed files of pydicom and pydicom-data (offline), complete enough to archive."""
    missing = [str(p) for p in COMPRESSED if not p.is_file()]
    assert not missing, f"test files not available offline: {missing}"
    folder = tmp_path_factory.mktemp("compressed")
    files: dict[Path, str] = {}
    for source, ts in COMPRESSED.items():
        ds = dcmread(source)
        assert ds.file_meta.TransferSyntaxUID == ts
        if "StudyInstanceUID" in ds and "SeriesInstanceUID" in ds and "PatientID" in ds:
            files[source] = ts
            continue
        # a few pydicom files lack the identifiers every archived object needs
        ds.StudyInstanceUID = ds.get("StudyInstanceUID") or generate_uid()
        ds.SeriesInstanceUID = ds.get("SeriesInstanceUID") or generate_uid()
        ds.PatientID = ds.get("PatientID") or "JLS-NEAR"
        target = folder / source.name
        ds.save_as(target, enforce_file_format=True)  # encapsulated pixel data kept as is
        files[target] = ts
    uids = [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files]
    assert len(set(uids)) == len(uids), "compressed test files must have distinct UIDs"
    return files
