"""Shared pieces of the Coffre benchmarks: servers, DCMTK peers, synthetic data, reports.

Nothing here is imported by ``coffre`` itself. Every benchmark starts its own processes
on free loopback ports in a temporary folder, and every DCMTK tool runs with
``TCP_NODELAY=1`` (Debian's DCMTK otherwise leaves Nagle's algorithm on and stalls
~40 ms per response).
"""

from __future__ import annotations

import collections
import datetime as _dt
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
BIN = Path(sys.executable).parent
COFFRE = str(BIN / "coffre")
PYSPY = str(BIN / "py-spy")

READY = re.compile(
    r"ready: DICOM (?P<ae>\S+)@(?P<host>[\d.]+):(?P<dicom>\d+), HTTP http://[\d.]+:(?P<http>\d+)/healthz"
)
CLK_TCK = os.sysconf("SC_CLK_TCK")
SCU_AE = "BENCH_SCU"
FACILITY = "bench"
#: DCMTK's largest receive PDU (its default is 16 KiB); Coffre's default is 256 KiB.
DCMTK_PDU = "131072"


# -- environment --------------------------------------------------------------------


def tool_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"TCP_NODELAY": "1", "COLUMNS": "250", "NO_COLOR": "1"})
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dcmtk = subprocess.run(["storescp", "--version"], capture_output=True, text=True).stdout.splitlines()
    load = os.getloadavg()
    return {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "dcmtk": dcmtk[0].strip("$ ") if dcmtk else "",
        "loadavg_at_start": [round(x, 2) for x in load],
    }


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def tree_cpu_seconds(pid: int) -> float:
    """utime + stime of a process and of its live child processes (``[dicom] workers``)."""
    total = cpu_seconds(pid)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def children_cpu_seconds(pid: int) -> float:
    """cutime + cstime: CPU of waited-for children (storescp --fork workers)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / CLK_TCK


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- synthetic data -------------------------------------------------------------------


def _write_slice(args: tuple[str, str, str, str, int, int]) -> str:
    from coffre.dicom.synthetic import InstanceSpec, make_instance

    path, patient, study, series, number, size = args
    spec = InstanceSpec(
        modality="CT", patient_id=patient, patient_name="BENCH^CT", study_uid=study, series_uid=series,
        instance_number=number, rows=size, columns=size, seed=number, study_description="BENCH CT",
    )
    Path(path).write_bytes(make_instance(spec))
    return path


def write_ct_series(folder: Path, slices: int, *, size: int = 512, patient: str = "BENCH0001") -> list[Path]:
    """``slices`` 16-bit CT slices of one study/series as Part 10 files (2 worker processes)."""
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    jobs = [(str(folder / f"ct{i:05d}.dcm"), patient, study, series, i + 1, size) for i in range(slices)]
    with ProcessPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
        paths = list(pool.map(_write_slice, jobs, chunksize=32))
    return [Path(p) for p in paths]


def total_bytes(paths: Iterable[Path]) -> int:
    return sum(p.stat().st_size for p in paths)


# -- Coffre server -------------------------------------------------------------------


@dataclass
class CoffreServer:
    """``coffre serve --data DATA`` with the benchmark facility and node."""

    data: Path
    scu_port: int = 0
    extra_env: dict[str, str] = field(default_factory=dict)
    #: the serve command (an experiment may run a patched ``coffre`` entry point)
    command: Sequence[str] = (COFFRE,)
    proc: subprocess.Popen[str] | None = None
    dicom_port: int = 0
    http_port: int = 0
    ae_title: str = "COFFRE"

    def env(self) -> dict[str, str]:
        return tool_env(**self.extra_env)

    def cli(self, *args: str) -> None:
        subprocess.run([COFFRE, *args, "--data", str(self.data)], check=True, env=self.env(),
                       capture_output=True, text=True)

    def prepare(self) -> None:
        """Facility and node through the CLI (once per data folder)."""
        if (self.data / ".bench-prepared").exists():
            return
        self.data.mkdir(parents=True, exist_ok=True)
        self.cli("facility", "add", FACILITY, "--name", "Benchmark", "--issuer", "BENCH")
        self.cli("node", "add", SCU_AE, "--facility", FACILITY, "--host", "127.0.0.1",
                 "--port", str(self.scu_port or 104), "--allow", "store,query,retrieve,move-destination")
        (self.data / ".bench-prepared").write_text("")

    def start(self) -> CoffreServer:
        self.prepare()
        env = self.env()
        env["COFFRE_DICOM_PORT"] = str(free_port())
        env["COFFRE_HTTP_PORT"] = str(free_port())
        self._stderr = (self.data.parent / f"{self.data.name}.serve.stderr").open("w")
        self.proc = subprocess.Popen([*self.command, "serve", "--data", str(self.data)], stdout=subprocess.PIPE,
                                     stderr=self._stderr, text=True, env=env)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"coffre serve exited: {self.stderr_text()}")
            m = READY.search(line)
            if m:
                self.ae_title, self.dicom_port, self.http_port = m["ae"], int(m["dicom"]), int(m["http"])
                threading.Thread(target=self.proc.stdout.read, daemon=True).start()
                return self
        raise RuntimeError("coffre serve not ready")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu(self) -> float:
        """CPU seconds of the serve process and its DIMSE worker processes."""
        return tree_cpu_seconds(self.pid)

    def stderr_text(self) -> str:
        try:
            return (self.data.parent / f"{self.data.name}.serve.stderr").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._stderr.close()
        self.proc = None

    def __enter__(self) -> CoffreServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- DCMTK peers ---------------------------------------------------------------------


class StoreSCP:
    """DCMTK ``storescp``: ``--ignore`` (receive and discard) or ``-od DIR`` (write files)."""

    def __init__(self, *, ignore: bool, folder: Path | None = None, aet: str = "STORESCP",
                 fork: bool = False, port: int | None = None) -> None:
        self.port = port or free_port()
        self.folder = folder
        args = ["storescp", "-aet", aet, "-pdu", DCMTK_PDU]
        if fork:
            args.append("--fork")
        if ignore:
            args.append("--ignore")
        else:
            assert folder is not None
            folder.mkdir(parents=True, exist_ok=True)
            args += ["-od", str(folder)]
        args.append(str(self.port))
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> StoreSCP:
        self.proc = subprocess.Popen(self.args, env=tool_env(), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_port(self.port)
        return self

    def cpu(self) -> float:
        assert self.proc is not None
        return cpu_seconds(self.proc.pid) + children_cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def __enter__(self) -> StoreSCP:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def split(items: Sequence[Path], parts: int) -> list[list[Path]]:
    return [list(items[i::parts]) for i in range(parts)]


def run_storescu(files: Sequence[Path], port: int, *, aec: str, aet: str = SCU_AE,
                 associations: int = 1) -> float:
    """Send ``files`` with ``associations`` concurrent storescu processes; wall seconds."""
    chunks = split(sorted(files), associations) if associations > 1 else [list(sorted(files))]
    started = time.perf_counter()
    procs = [
        subprocess.Popen(["storescu", "-aet", aet, "-aec", aec, "127.0.0.1", str(port), *map(str, chunk)],
                         env=tool_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for chunk in chunks
    ]
    outputs = [p.communicate()[0] for p in procs]
    elapsed = time.perf_counter() - started
    for p, output in zip(procs, outputs, strict=True):
        if p.returncode != 0:
            raise RuntimeError(f"storescu failed ({p.returncode}): {output.decode(errors='replace')[-2000:]}")
    return elapsed


def dd_ceiling(folder: Path, mib: int = 1024) -> dict[str, float]:
    """``dd if=/dev/zero of=FILE bs=1M count=MIB conv=fdatasync``: MB/s of the disk."""
    target = folder / "dd.bin"
    started = time.perf_counter()
    subprocess.run(["dd", "if=/dev/zero", f"of={target}", "bs=1M", f"count={mib}", "conv=fdatasync"],
                   check=True, capture_output=True)
    elapsed = time.perf_counter() - started
    target.unlink()
    return {"seconds": round(elapsed, 3), "MB_per_s": round(mib * 1048576 / 1e6 / elapsed, 1)}


# -- profiling -------------------------------------------------------------------------


class PySpy:
    """``py-spy record --format raw`` attached to a process; summarised into top frames."""

    def __init__(self, pid: int, out: Path, *, rate: int = 200, native: bool = False,
                 subprocesses: bool = False) -> None:
        self.out = out
        args = [PYSPY, "record", "--pid", str(pid), "--format", "raw", "--rate", str(rate),
                "--output", str(out), "--nonblocking"]
        if native:
            args.append("--native")
        if subprocesses:  # [dicom] workers: sample the worker processes too
            args.append("--subprocesses")
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.5)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _frame_name(frame: str) -> str:
    # py-spy raw frames: "function (path/to/file.py:LINE)"
    m = re.match(r"(?P<fn>.*?) \((?P<file>[^:()]+)(?::\d+)?\)$", frame.strip())
    if not m:
        return frame.strip()
    file = m["file"]
    for marker in ("site-packages/", "/src/", "lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    return f"{m['fn']} ({file})"


#: (category, substrings any of which in the raw stack puts a sample in it); first match wins
Rules = Sequence[tuple[str, Sequence[str]]]

STORE_RULES: Rules = (
    ("index: writer gate (waiting for the previous writer, thread lock + flock)", ("WriterGate.held",)),
    ("index: BEGIN IMMEDIATE (waiting for the SQLite write lock)", ("_on_begin",)),
    ("index: COMMIT (WAL fsync, synchronous=FULL)", ("do_commit",)),
    ("blob store put (write, sha256, fsync file + folder)", ("FileSystemBlobStore",)),
    ("parse_instance (pydicom header read, DICOM JSON, attributes)", ("parse_instance",)),
    ("index: SQL statements (SQLAlchemy Core compile + sqlite3)",
     ("commit_instance", "reserve_file", "find_stored_copy", "discard_file")),
    ("audit rows", ("audit.py",)),
    ("sha256 of the received bytes", ("ingest (coffre/services/ingest.py:68)",)),
    ("Event.encoded_dataset (re-joins the received fragments)", ("encoded_dataset",)),
    ("other Coffre handler code", ("coffre/",)),
    ("pynetdicom reactor 1 ms polling sleeps", ("dul.py:403)", "association.py:714)")),
    ("pynetdicom DUL: socket recv, PDU decode", ("DULServiceProvider",)),
    ("pynetdicom association/DIMSE (message decode, response encode, send)", ("pynetdicom/",)),
)

RETRIEVE_RULES: Rules = (
    ("index/audit (plan)", ("services/retrieve.py",)),
    ("blob read", ("FileSystemBlobStore.read", "FileSystemBlobStore.open")),
    ("dcmread of the archived file (coffre net/retrieve._read)", ("_read (coffre/net/retrieve.py",)),
    ("transcode", ("transcode",)),
    ("pynetdicom: encode dataset for C-STORE (pydicom write)", ("encode (pynetdicom", "dsutils.py", "filewriter.py")),
    ("pynetdicom: P-DATA fragmenting + socket send", ("send_pdu", "_send", "fragment", "P_DATA", "encode_msg")),
    ("pynetdicom reactor 1 ms polling sleeps", ("dul.py:403)", "association.py:714)")),
    ("pynetdicom: waiting for the C-STORE response", ("send_c_store", "get_msg")),
    ("pynetdicom DUL: socket recv, PDU decode", ("DULServiceProvider",)),
    ("other Coffre code", ("coffre/",)),
    ("other pynetdicom", ("pynetdicom/",)),
)


def summarize_collapsed(path: Path, top: int = 25, rules: Rules = ()) -> dict[str, Any]:
    """Self and inclusive % of samples per function from a collapsed-stack file."""
    categories: collections.Counter[str] = collections.Counter()
    self_counts: collections.Counter[str] = collections.Counter()
    incl_counts: collections.Counter[str] = collections.Counter()
    thread_counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f]
        if not frames:
            continue
        total += count
        if rules:
            for category, needles in rules:
                if any(n in stack for n in needles):
                    categories[category] += count
                    break
            else:
                categories["other (server threads, Python runtime)"] += count
        names = [_frame_name(f) for f in frames]
        if names and names[0].startswith(("process ", "thread ")):
            thread_counts[names[0]] += count
        self_counts[names[-1]] += count
        for name in set(names):
            incl_counts[name] += count

    def pct(c: collections.Counter[str]) -> list[list[Any]]:
        return [[name, round(100 * n / total, 1)] for name, n in c.most_common(top)] if total else []

    return {"samples": total, "categories": pct(categories), "self": pct(self_counts),
            "inclusive": pct(incl_counts)}


def profile_markdown(title: str, summary: dict[str, Any], top: int = 15) -> str:
    lines = [f"### {title}", "",
             f"{summary['samples']} samples of non-idle threads (py-spy counts pynetdicom's 1 ms "
             "reactor sleeps as non-idle).", ""]
    if summary.get("categories"):
        lines += ["| % of samples | where (first matching frame of the stack) |", "| ---: | --- |"]
        lines += [f"| {p} | {n} |" for n, p in summary["categories"]]
        lines.append("")
    lines += ["| self % | function (leaf frame) |", "| ---: | --- |"]
    lines += [f"| {p} | `{n}` |" for n, p in summary["self"][:top]]
    lines += ["", "| inclusive % | function |", "| ---: | --- |"]
    lines += [f"| {p} | `{n}` |" for n, p in summary["inclusive"][:top]]
    return "\n".join(lines) + "\n"


# -- reports ---------------------------------------------------------------------------


def ratio(value: float | None, ceiling: float | None) -> float | None:
    if not value or not ceiling:
        return None
    return round(value / ceiling, 3)


def write_report(name: str, doc: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    OUT.mkdir(parents=True, exist_ok=True)
    jpath, mpath = OUT / f"{name}.json", OUT / f"{name}.md"
    jpath.write_text(json.dumps(doc, indent=2) + "\n")
    mpath.write_text(markdown)
    return jpath, mpath


def rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)
