"""``coffre audit`` as a real process, ``coffre serve`` exporting to a real syslog
receiver, and the application logs of ``coffre serve -v`` free of patient data."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from coffre.app import build_context
from coffre.dicom.synthetic import InstanceSpec, make_instance
from coffre.model import Actor, Permission
from coffre.services.facilities import add_facility, add_node
from coffre.services.ingest import ingest
from coffre.services.tokens import create_token
from coffre.settings import load_settings
from net.conftest import READY, prepare_territory, tool_env
from services.test_audit_export import SyslogReceiver, parse

COFFRE = str(Path(sys.executable).with_name("coffre"))
Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def coffre(data: Path) -> Run:
    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        environ = dict(os.environ, COLUMNS="250", NO_COLOR="1", COFFRE_STORAGE_FSYNC="false", **(env or {}))
        return subprocess.run([COFFRE, *args, "--data", str(data)], capture_output=True, text=True,
                              env=environ, timeout=120)

    return run


@pytest.fixture
def archive(data: Path) -> tuple[int, str]:
    """A facility with two patients' instances; (person id of P-1, its study UID)."""
    ctx = build_context(load_settings(data, {}))
    try:
        fac = add_facility(ctx, Actor.system("t"), slug="site-a", name="Site A", issuer="SITE-A")
        actor = Actor.system("t", facility=fac)
        specs = [InstanceSpec(patient_id="P-1"), InstanceSpec(patient_id="P-2")]
        for spec in specs:
            ingest(ctx, actor, make_instance(spec), source="test")
    finally:
        ctx.close()
    with sqlite3.connect(data / "index.sqlite3") as conn:
        person = conn.execute("SELECT person_id FROM patient WHERE patient_id = 'P-1'").fetchone()[0]
    return int(person), specs[0].study_uid


def sql(data: Path, statement: str, *params: object) -> None:
    with sqlite3.connect(data / "index.sqlite3") as conn:
        conn.execute(statement, params)


def test_verify_head_and_tampering(coffre: Run, data: Path, archive: tuple[int, str]) -> None:
    out = coffre("audit", "verify")
    assert out.returncode == 0, out.stderr
    assert re.search(r"audit chain intact: \d+ events", out.stdout)
    head = coffre("audit", "head")
    assert head.returncode == 0 and re.fullmatch(r"\d+:[0-9a-f]{64}\n", head.stdout), head.stdout
    anchor = head.stdout.strip()
    assert coffre("audit", "verify", "--expect-head", anchor).returncode == 0

    sql(data, "UPDATE audit_event SET detail = '{}' WHERE id = 2")
    out = coffre("audit", "verify")
    assert out.returncode == 1
    assert "audit chain BROKEN" in out.stdout and "first bad event #2" in out.stdout
    assert re.search(r"modified\s+#2", out.stdout)
    doc = json.loads(coffre("audit", "verify", "--json").stdout)
    assert doc["ok"] is False and doc["first_bad_id"] == 2

    # the tail removed: only the anchor shows it (restore #2 first so that nothing else is wrong)
    with sqlite3.connect(data / "index.sqlite3") as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM audit_event ORDER BY id")]
    sql(data, "DELETE FROM audit_event WHERE id >= 2")
    assert coffre("audit", "verify").returncode == 0
    out = coffre("audit", "verify", "--expect-head", anchor)
    assert out.returncode == 1 and "truncated" in out.stdout, out.stdout
    assert len(ids) > 2
    bad = coffre("audit", "verify", "--expect-head", "not-a-hash")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and "64 hexadecimal" in bad.stderr


def test_search_and_report(coffre: Run, archive: tuple[int, str]) -> None:
    person, study = archive
    out = coffre("audit", "search", "--action", "store", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert [e["action"] for e in doc["events"]] == ["store", "store"] and doc["next_cursor"] is None
    page = json.loads(coffre("audit", "search", "--limit", "1", "--json").stdout)
    assert len(page["events"]) == 1 and page["next_cursor"] is not None
    table = coffre("audit", "search", "--action", "store")
    assert table.returncode == 0 and "store" in table.stdout
    assert coffre("audit", "search", "--since", "yesterday").returncode == 2
    assert coffre("audit", "search", "--limit", "5000").returncode == 1

    report = coffre("audit", "report", "--person", str(person), "--json")
    assert report.returncode == 0, report.stderr
    doc = json.loads(report.stdout)
    assert doc["person_id"] == person and doc["staff_names"] is True
    patient = json.loads(coffre("audit", "report", "--person", str(person), "--for-patient", "--json").stdout)
    assert patient["staff_names"] is False
    # the reports were audited: the second report lists the first one
    assert "audit-report" in {e["action"] for e in patient["entries"]}
    assert "access report of person" in coffre("audit", "report", "--person", str(person)).stdout
    assert study  # the store events name instances, not the person (services/ingest.py)


def test_export_once_to_a_tcp_repository(coffre: Run, archive: tuple[int, str]) -> None:
    receiver = SyslogReceiver("tcp").start()
    env = {"COFFRE_AUDIT_SYSLOG_HOST": "127.0.0.1", "COFFRE_AUDIT_SYSLOG_PORT": str(receiver.port),
           "COFFRE_AUDIT_SYSLOG_TRANSPORT": "tcp"}
    try:
        out = coffre("audit", "export", "--once", env=env)
        assert out.returncode == 0, out.stderr
        count = int(re.search(r"exported (\d+) event", out.stdout)[1])  # type: ignore[index]
        got = [parse(m) for m in receiver.wait_for(count)]
        assert [p.code("EventID") for p in got][:2] == ["110113", "110104"]  # facility-add, store
        again = coffre("audit", "export", "--once", env=env)
        assert "exported 0 event(s)" in again.stdout
    finally:
        receiver.stop()
    assert coffre("audit", "search").returncode == 0  # an audited read: one more event to export
    down = coffre("audit", "export", "--once", env=env)
    assert down.returncode == 1 and "unavailable" in down.stderr and "Traceback" not in down.stderr
    assert coffre("audit", "export", "--once").returncode == 1  # no repository configured


# -- coffre serve ----------------------------------------------------------------------


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path
    dicom_port: int = 0
    http_port: int = 0

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            return -9

    def output(self) -> str:
        return self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")


def serve(data: Path, env: dict[str, str], *, verbose: bool = False) -> Served:
    stdout, stderr = data.parent / "serve.out", data.parent / "serve.err"
    argv = [COFFRE, *(["-v"] if verbose else []), "serve", "--data", str(data)]
    with stdout.open("wb") as out, stderr.open("wb") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env)
    served = Served(proc, stdout, stderr)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = READY.search(stdout.read_text(errors="replace"))
        if match:
            served.dicom_port, served.http_port = int(match["dicom"]), int(match["http"])
            return served
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    served.stop()
    pytest.fail(f"coffre serve did not start:\n{served.output()}")


def serve_env(**extra: str) -> dict[str, str]:
    return tool_env(COFFRE_DICOM_PORT="0", COFFRE_HTTP_PORT="0", COFFRE_DICOM_HOST="127.0.0.1",
                    COFFRE_HTTP_HOST="127.0.0.1", COFFRE_STORAGE_FSYNC="false", **extra)


@pytest.fixture
def running(data: Path) -> Iterator[Callable[..., Served]]:
    started: list[Served] = []

    def start(env: dict[str, str], verbose: bool = False) -> Served:
        served = serve(data, env, verbose=verbose)
        started.append(served)
        return served

    yield start
    for served in started:
        if served.proc.poll() is None:
            served.stop()


def store(port: int, calling: str, spec: InstanceSpec) -> int:
    ae = AE(ae_title=calling)
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title="COFFRE")
    try:
        assert assoc.is_established
        ds = dcmread(io.BytesIO(make_instance(spec)))
        status = assoc.send_c_store(ds)
        return int(status.Status) if status else -1
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


def test_serve_exports_its_audit_trail(data: Path, running: Callable[..., Served]) -> None:
    prepare_territory(data)
    receiver = SyslogReceiver("tcp").start()
    try:
        env = serve_env(COFFRE_AUDIT_SYSLOG_HOST="127.0.0.1", COFFRE_AUDIT_SYSLOG_PORT=str(receiver.port),
                        COFFRE_AUDIT_SYSLOG_TRANSPORT="tcp", COFFRE_AUDIT_SYSLOG_INTERVAL_SECONDS="0.1")
        served = running(env)
        assert store(served.dicom_port, "MODALITY_A", InstanceSpec(patient_id="S-1")) == 0
        assert served.stop() == 0, served.output()
        with sqlite3.connect(data / "index.sqlite3") as conn:
            ids = [r[0] for r in conn.execute("SELECT id FROM audit_event ORDER BY id")]
        got = [parse(m) for m in receiver.wait_for(1)]
    finally:
        receiver.stop()
    exported = list(dict.fromkeys(p.event_id for p in got))
    assert exported == ids  # everything, in order, the application-stop event included
    codes = [(p.code("EventID"), p.xml.findtext("x")) for p in got]
    assert ("110104", None) in codes  # the store
    starts = [p for p in got if p.code("EventID") == "110100"]
    assert [p.code("EventTypeCode") for p in starts][-2:] == ["110120", "110121"]  # start, stop
    assert "Traceback" not in served.output()


# distinctive patient data: none of it may appear in the application logs
PATIENTS = [
    InstanceSpec(patient_id="PIDLEAK7731", patient_name="ZYXWVU^QUENTINA", birth_date="19230417"),
    InstanceSpec(patient_id="PIDLEAK8842", patient_name="KLMNOPQ^BERTILDE", birth_date="19310922"),
    InstanceSpec(patient_id="PIDLEAK9953", patient_name="WXQVTRS^ONESIME", birth_date="19270305"),
    InstanceSpec(patient_id="PIDLEAK1064", patient_name="FGHJKLZ^PERPETUE", birth_date="19190611",
                 study_uid="1.2.3.04.5"),  # an invalid UID: refused, with its refusal logged
]
SECRETS = [s for p in PATIENTS for s in (p.patient_id, *p.patient_name.split("^"), p.birth_date,
                                         f"{p.birth_date[:4]}-{p.birth_date[4:6]}-{p.birth_date[6:]}")]


def _stow(url: str, token: str, instance: bytes) -> httpx.Response:
    boundary = "leak-test-boundary"
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + instance
            + f"\r\n--{boundary}--\r\n".encode())
    return httpx.post(f"{url}/dicomweb/studies", content=body, timeout=60, headers={
        "Authorization": f"Bearer {token}", "Accept": "application/dicom+json",
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})


def _find(port: int, keys: dict[str, str]) -> list[Dataset]:
    ae = AE(ae_title="PACS_A")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="COFFRE")
    try:
        assert assoc.is_established
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = ""
        for key, value in keys.items():
            setattr(identifier, key, value)
        return [ds for status, ds in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind)
                if status and status.Status in (0xFF00, 0xFF01) and ds is not None]
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


def _retrieve(port: int, study: str, destination_port: int) -> tuple[int, int]:
    """C-MOVE to LEAK_WS (a storage SCP here) and C-GET; instances received by each."""
    received: list[str] = []

    def on_store(event: evt.Event) -> int:
        received.append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    scp = AE(ae_title="LEAK_WS")
    scp.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian])
    server = scp.start_server(("127.0.0.1", destination_port), block=False,
                              evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        ae = AE(ae_title="PACS_A")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = study
        assoc = ae.associate("127.0.0.1", port, ae_title="COFFRE", ext_neg=[build_role(CTImageStorage, scp_role=True)],
                             evt_handlers=[(evt.EVT_C_STORE, on_store)])
        try:
            assert assoc.is_established
            list(assoc.send_c_move(identifier, "LEAK_WS", StudyRootQueryRetrieveInformationModelMove))
            moved = len(received)
            list(assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet))
        finally:
            if assoc.is_established:
                assoc.release()
            ae.shutdown()
    finally:
        server.shutdown()
    return moved, len(received) - moved


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_application_logs_hold_no_patient_data(data: Path, running: Callable[..., Served]) -> None:
    prepare_territory(data)
    workstation = _free_port()
    ctx = build_context(load_settings(data, {}))
    try:
        op = Actor.system("tests")
        token = create_token(ctx, op, facility_slug="site-a", name="leak")
        add_node(ctx, op, ae_title="LEAK_WS", host="127.0.0.1", port=workstation, facility_slug="site-a",
                 permissions=frozenset({Permission.MOVE_DESTINATION}))
    finally:
        ctx.close()
    served = running(serve_env(), verbose=True)
    url = f"http://127.0.0.1:{served.http_port}"
    first, second, third, refused = PATIENTS

    # store over DICOM (two facilities) and DICOMweb; one refused object
    assert store(served.dicom_port, "MODALITY_A", first) == 0
    assert store(served.dicom_port, "MODALITY_B", second) == 0
    assert _stow(url, token, make_instance(third)).status_code == 200
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid UID
        assert store(served.dicom_port, "MODALITY_A", refused) != 0
        assert _stow(url, token, make_instance(refused)).status_code in (400, 409)
    # query by name, id and birth date, over DICOM and DICOMweb
    auth = {"Authorization": f"Bearer {token}"}
    assert len(_find(served.dicom_port, {"PatientName": "ZYXWVU*", "PatientBirthDate": first.birth_date})) == 1
    assert len(_find(served.dicom_port, {"PatientID": third.patient_id})) == 1
    for params in ({"PatientName": "ZYXWVU^QUENTINA"}, {"PatientID": "PIDLEAK9953"},
                   {"PatientBirthDate": "19230417-19310922"}, {"PatientName": "KLMNOPQ*"}):
        r = httpx.get(f"{url}/dicomweb/studies", params=params, headers=auth, timeout=30)
        assert r.status_code in (200, 204), r.text
    # retrieve over DICOM and DICOMweb
    assert _retrieve(served.dicom_port, first.study_uid, workstation) == (1, 1)
    r = httpx.get(f"{url}/dicomweb/studies/{third.study_uid}/metadata", headers=auth, timeout=30)
    assert r.status_code == 200 and "WXQVTRS" in r.text
    r = httpx.get(f"{url}/dicomweb/studies/{first.study_uid}", timeout=30,
                  headers={**auth, "Accept": 'multipart/related; type="application/dicom"'})
    assert r.status_code == 200 and b"ZYXWVU" in r.content
    # a stranger and a bad token: refusals are logged too
    assert httpx.get(f"{url}/dicomweb/studies", params={"PatientName": "ZYXWVU*"},
                     headers={"Authorization": "Bearer PIDLEAK7731"}, timeout=30).status_code == 401

    assert served.stop() == 0, served.output()
    logs = served.output()
    assert "INFO" in logs and "refused" in logs, logs  # -v logged at INFO, refusals included
    leaked = sorted({s for s in SECRETS if s in logs})
    lines = [line for line in logs.splitlines() if any(s in line for s in leaked)]
    assert not leaked, "patient data in the application logs:\n" + "\n".join(lines)
    assert "Traceback" not in logs
    verify = subprocess.run([COFFRE, "audit", "verify", "--data", str(data)], capture_output=True, text=True,
                            env=serve_env(), timeout=60)
    assert verify.returncode == 0, verify.stdout + verify.stderr
