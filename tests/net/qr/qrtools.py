"""DCMTK and pynetdicom Query/Retrieve clients for the tests of this folder.

DCMTK tools run with ``-d`` (debug): every incoming DIMSE message is printed with its
exact status (``DIMSE Status : 0xff00 …``) and, for C-MOVE/C-GET, the sub-operation
counters; that is parsed here instead of the human-readable summaries. ``findscu -X``
writes each pending identifier to ``rspNNNN.dcm``, read back with pydicom.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from ..conftest import tool_env

PENDING = 0xFF00
SUCCESS = 0x0000
CANCEL = 0xFE00
OUT_OF_RESOURCES = 0xA700
MOVE_DESTINATION_UNKNOWN = 0xA801
IDENTIFIER_DOES_NOT_MATCH = 0xA900
UNABLE_TO_PROCESS = 0xC000

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
VERIFICATION = "1.2.840.10008.1.1"

_BLOCK = re.compile(r"INCOMING DIMSE MESSAGE =+\n(.*?)\n[A-Z]: =+ END DIMSE MESSAGE", re.S)
_FIELD = re.compile(r"^[A-Z]: (?P<key>[A-Za-z ]+?)\s*: (?P<value>.*)$", re.M)


@dataclass
class Response:
    message_type: str
    status: int
    counts: dict[str, int]


@dataclass
class ToolResult:
    argv: list[str]
    returncode: int
    log: str
    responses: list[Response]
    datasets: list[Dataset] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    @property
    def statuses(self) -> list[int]:
        return [r.status for r in self.responses]

    @property
    def final(self) -> Response:
        assert self.responses, f"no response parsed:\n{self.log}"
        return self.responses[-1]

    @property
    def pending(self) -> int:
        return sum(1 for s in self.statuses if s == PENDING)

    def values(self, keyword: str) -> list[Any]:
        return [ds.get(keyword) for ds in self.datasets]

    def texts(self, keyword: str) -> set[str]:
        return {str(ds.get(keyword, "")) for ds in self.datasets}

    def by(self, keyword: str) -> dict[str, Dataset]:
        out = {str(ds[keyword].value): ds for ds in self.datasets}
        assert len(out) == len(self.datasets), f"duplicate {keyword} in the responses"
        return out


def parse_responses(log: str, message_type: str) -> list[Response]:
    out: list[Response] = []
    for block in _BLOCK.findall(log):
        fields = {m["key"]: m["value"].strip() for m in _FIELD.finditer(block)}
        if fields.get("Message Type") != message_type:
            continue
        status = int(fields["DIMSE Status"].split(":")[0], 16)
        counts = {
            k.split()[0].lower(): int(v)
            for k, v in fields.items() if k.endswith("Suboperations") and v.strip().isdigit()
        }
        out.append(Response(message_type, status, counts))
    return out


def run(tool: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    exe = shutil.which(tool)
    if exe is None:
        pytest.fail(f"DCMTK's {tool} is not installed (apt-get install dcmtk)", pytrace=False)
    return subprocess.run([exe, *args], capture_output=True, text=True, env=tool_env(),
                          timeout=timeout, errors="replace")


def _key_args(keys: tuple[str, ...]) -> list[str]:
    out: list[str] = ["-k", "SpecificCharacterSet=ISO_IR 192"]
    for key in keys:
        out += ["-k", key]
    return out


def findscu(host: str, port: int, out_dir: Path, level: str, *keys: str, model: str = "S",
            calling: str = "PACS_A", extra: tuple[str, ...] = ()) -> ToolResult:
    """``findscu -d -X`` at ``level`` with ``keys`` ("Keyword=value" or "Keyword")."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("rsp*.dcm"):
        old.unlink()
    argv = ["-d", f"-{model}", "-aet", calling, "-aec", "COFFRE", "-X", "-od", str(out_dir),
            "-k", f"QueryRetrieveLevel={level}", *_key_args(keys), *extra, host, str(port)]
    done = run("findscu", *argv)
    log = done.stdout + done.stderr
    files = sorted(out_dir.glob("rsp*.dcm"))
    result = ToolResult(argv, done.returncode, log, parse_responses(log, "C-FIND RSP"),
                        [dcmread(f) for f in files], files)
    assert result.responses, f"findscu got no C-FIND response:\n{log}"
    assert len(result.datasets) == result.pending, log
    return result


def movescu(host: str, port: int, destination: str, level: str, *keys: str, model: str = "S",
            calling: str = "PACS_A") -> ToolResult:
    argv = ["-d", f"-{model}", "-aet", calling, "-aec", "COFFRE", "-aem", destination,
            "-k", f"QueryRetrieveLevel={level}", *_key_args(keys), host, str(port)]
    done = run("movescu", *argv)
    log = done.stdout + done.stderr
    result = ToolResult(argv, done.returncode, log, parse_responses(log, "C-MOVE RSP"))
    assert result.responses, f"movescu got no C-MOVE response:\n{log}"
    return result


def getscu(host: str, port: int, out_dir: Path, level: str, *keys: str, model: str = "S",
           calling: str = "PACS_A", extra: tuple[str, ...] = ()) -> ToolResult:
    out_dir.mkdir(parents=True, exist_ok=True)
    argv = ["-d", f"-{model}", "-aet", calling, "-aec", "COFFRE", "-od", str(out_dir), "+B", *extra,
            "-k", f"QueryRetrieveLevel={level}", *_key_args(keys), host, str(port)]
    done = run("getscu", *argv)
    log = done.stdout + done.stderr
    result = ToolResult(argv, done.returncode, log, parse_responses(log, "C-GET RSP"),
                        files=sorted(p for p in out_dir.iterdir() if p.is_file()))
    assert result.responses, f"getscu got no C-GET response:\n{log}"
    return result


# -- a DCMTK storescp as a move destination -----------------------------------------


@dataclass
class StoreSCP:
    ae_title: str
    port: int
    folder: Path
    proc: subprocess.Popen[str]
    log_path: Path

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file())

    def datasets(self) -> dict[str, Dataset]:
        """SOP Instance UID -> received dataset (pixel data included)."""
        out: dict[str, Dataset] = {}
        for path in self.files():
            ds = dcmread(path)
            out[str(ds.SOPInstanceUID)] = ds
        return out

    def paths(self) -> dict[str, Path]:
        return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in self.files()}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def listening(port: int) -> bool:
    """Whether a socket listens on ``port`` (read from /proc: no connection is made)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


@contextmanager
def storescp(ae_title: str, port: int, folder: Path, *options: str) -> Iterator[StoreSCP]:
    """DCMTK ``storescp`` (bit-preserving, one file per instance) on ``port``."""
    exe = shutil.which("storescp")
    if exe is None:
        pytest.fail("DCMTK's storescp is not installed (apt-get install dcmtk)", pytrace=False)
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder.with_name(folder.name + ".log")
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [exe, "-v", "-aet", ae_title, "+B", "-od", str(folder), *options, str(port)],
            stdout=log, stderr=subprocess.STDOUT, text=True, env=tool_env(),
        )
    scp = StoreSCP(ae_title, port, folder, proc, log_path)
    try:
        deadline = time.monotonic() + 15
        while not listening(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"storescp did not start:\n{scp.log()}")
            time.sleep(0.05)
        yield scp
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


# -- pynetdicom SCU ------------------------------------------------------------------


def raw_identifier(*elements: tuple[int, str, bytes]) -> Dataset:
    """An identifier whose element values are sent exactly as given (explicit VR LE).

    pydicom keeps the values raw (RawDataElement) and writes them back untouched when
    the association's syntax is explicit VR little endian, so NUL bytes, invalid UTF-8
    or over-long values reach the SCP as they are.
    """
    from io import BytesIO

    from pydicom.filereader import read_dataset

    from ..dicomnet import element

    def even(vr: str, value: bytes) -> bytes:
        return value + (b"\0" if vr == "UI" else b" ") if len(value) % 2 else value

    body = b"".join(element(tag, vr, even(vr, value)) for tag, vr, value in sorted(elements))
    return read_dataset(BytesIO(body), is_implicit_VR=False, is_little_endian=True)


def context_id(assoc: Any, abstract_syntax: str) -> int:
    for cx in assoc.accepted_contexts:
        if str(cx.abstract_syntax) == abstract_syntax:
            return int(cx.context_id)
    raise AssertionError(f"{abstract_syntax} not accepted")


Responses = list[tuple[int, Dataset | None]]


def find_on(assoc: Any, identifier: Dataset, model: str = STUDY_ROOT_FIND, *, msg_id: int = 7,
            cancel_after: int | None = None) -> Responses:
    """One C-FIND on an open association; optionally C-CANCEL after ``cancel_after`` responses."""
    from pynetdicom import _config

    out: Responses = []
    previous = _config.LOG_REQUEST_IDENTIFIERS
    # logging the identifier would decode (and so re-encode) the raw values
    _config.LOG_REQUEST_IDENTIFIERS = False
    try:
        for status, ds in assoc.send_c_find(identifier, model, msg_id=msg_id):
            assert status is not None and "Status" in status, "no C-FIND response (association lost)"
            out.append((int(status.Status), ds))
            if cancel_after is not None and len(out) == cancel_after:
                assoc.send_c_cancel(msg_id, context_id(assoc, model))
    finally:
        _config.LOG_REQUEST_IDENTIFIERS = previous
    return out


def find_association(port: int, calling: str = "PACS_A") -> Any:
    """A context manager: an association proposing both FIND models (explicit VR LE only)."""
    from pydicom.uid import ExplicitVRLittleEndian

    from ..dicomnet import association

    contexts = [(STUDY_ROOT_FIND, [ExplicitVRLittleEndian]), (PATIENT_ROOT_FIND, [ExplicitVRLittleEndian])]
    return association(port, calling, contexts=contexts)


def pyfind(port: int, identifier: Dataset, *, model: str = STUDY_ROOT_FIND, calling: str = "PACS_A",
           cancel_after: int | None = None) -> Responses:
    """C-FIND with pynetdicom on a new association."""
    with find_association(port, calling) as assoc:
        return find_on(assoc, identifier, model, cancel_after=cancel_after)


def echo(port: int, calling: str = "PACS_A") -> int:
    from ..dicomnet import association

    with association(port, calling, contexts=[(VERIFICATION, ["1.2.840.10008.1.2"])]) as assoc:
        status = assoc.send_c_echo()
        return int(status.Status)
