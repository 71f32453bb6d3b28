"""C-FIND latency benchmark: study-level queries by PatientID and by date range.

One command::

    /work/venv/bin/python benchmarks/query.py            # 20,000 instances indexed
    /work/venv/bin/python benchmarks/query.py --quick    # 5,000 instances, 50 queries per kind

Loading: the index is filled in-process through the real ingest service
(``coffre.app.build_context`` + ``coffre.services.ingest.ingest``, the same code a
C-STORE runs) with small 64x64 CT instances: 2,000 studies x 10 instances across 500
patients (4 studies each), study dates spread over 2015-2024. The loader ingests in
one process (one SQLite writer; a helper process encodes the instances) with ``storage.fsync = false`` (the load is set-up, not measured); the
server then runs with the defaults (fsync on, SQLite WAL).

Measured, each kind 200 times (queries drawn at random, same seed every run):

- ``findscu`` (DCMTK, Study Root, one process per query): wall time of the process,
  i.e. process start + association + C-FIND + release;
- a pynetdicom SCU in this process opening one association per query: association +
  C-FIND + release (isolates the server from process start).

Floors in the same run: the same clients doing association + C-ECHO + release
(``echoscu`` / pynetdicom) against Coffre and against DCMTK ``storescp`` (which
answers C-ECHO): the cost of an association before any query work. Coffre C-FIND
latency is reported as a ratio to them. The pynetdicom server floor: the pynetdicom
client against a do-nothing pynetdicom SCP (``benchmarks/_noop_scp.py``, same transport
settings as Coffre), for a C-ECHO and for a C-FIND answered with 4 canned identifiers
(what pynetdicom's upper layer costs with no index, no audit and no dataset building),
with that SCP's CPU per C-FIND.

``--profile`` adds a pyinstrument profile of 200 in-process C-FIND calls through the
same handler the listener runs (``coffre.net.find.handle_find``), and a py-spy recording
of the server during the pynetdicom runs. Output: ``benchmarks/out/query.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    OUT,
    SCU_AE,
    CoffreServer,
    PySpy,
    StoreSCP,
    log,
    machine,
    percentile,
    profile_markdown,
    ratio,
    rmtree,
    summarize_collapsed,
    tool_env,
    write_report,
)

TARGET_MEDIAN_MS = 20.0
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
RETURN_KEYS = ("StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "PatientName",
               "PatientID", "StudyDescription", "ModalitiesInStudy", "NumberOfStudyRelatedInstances")


# -- loading ---------------------------------------------------------------------------


def _study_plan(studies: int, patients: int, per_study: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    plan = []
    for s in range(studies):
        p = s % patients
        day = rng.randrange(0, 3650)
        date = time.strftime("%Y%m%d", time.gmtime(1420070400 + day * 86400))  # from 2015-01-01
        plan.append({"patient": f"BQ{p:05d}", "name": f"PATIENT{p:05d}^BENCH", "date": date,
                     "accession": f"A{s:07d}", "instances": per_study, "index": s})
    return plan


def _encode_study(study: dict[str, Any]) -> list[bytes]:
    from pydicom.uid import generate_uid

    from coffre.dicom.synthetic import InstanceSpec, make_instance

    study_uid, series_uid = generate_uid(), generate_uid()
    return [
        make_instance(InstanceSpec(
            modality="CT", patient_id=study["patient"], patient_name=study["name"],
            study_uid=study_uid, series_uid=series_uid, study_date=study["date"],
            accession=study["accession"], study_description="BENCH QUERY",
            instance_number=i + 1, seed=study["index"] * 10 + i, rows=64, columns=64,
        ))
        for i in range(study["instances"])
    ]


def load(data: Path, *, studies: int, patients: int, per_study: int) -> dict[str, Any]:
    """Ingest in this process (one SQLite writer); a helper process encodes the instances."""
    from coffre.app import build_context
    from coffre.model import Actor
    from coffre.services.facilities import get_facility
    from coffre.services.ingest import ingest
    from coffre.settings import load_settings

    plan = _study_plan(studies, patients, per_study)
    started = time.perf_counter()
    ctx = build_context(load_settings(data, {"COFFRE_STORAGE_FSYNC": "false"}), migrate=False)
    loaded = 0
    try:
        actor = Actor.system("bench-loader", facility=get_facility(ctx, "bench"))
        with ProcessPoolExecutor(max_workers=1) as pool:
            for encoded in pool.map(_encode_study, plan, chunksize=8):
                for data_bytes in encoded:
                    ingest(ctx, actor, data_bytes, source="bench-load")
                    loaded += 1
                if loaded % 2000 == 0:
                    log(f"  {loaded} instances")
    finally:
        ctx.close()
    seconds = time.perf_counter() - started
    return {"instances": loaded, "studies": studies, "patients": patients, "seconds": round(seconds, 1),
            "instances_per_s": round(loaded / seconds, 1), "plan": plan}


# -- queries ---------------------------------------------------------------------------


def make_queries(plan: list[dict[str, Any]], count: int, seed: int = 11) -> dict[str, list[dict[str, str]]]:
    rng = random.Random(seed)
    patients = sorted({s["patient"] for s in plan})
    by_id = [{"PatientID": rng.choice(patients)} for _ in range(count)]
    by_date = []
    for _ in range(count):
        day = rng.randrange(0, 3650 - 31)
        start = time.strftime("%Y%m%d", time.gmtime(1420070400 + day * 86400))
        end = time.strftime("%Y%m%d", time.gmtime(1420070400 + (day + 30) * 86400))
        by_date.append({"StudyDate": f"{start}-{end}"})
    return {"by PatientID": by_id, "by StudyDate range (31 days)": by_date}


def _stats(latencies_s: list[float], matches: list[int] | None = None) -> dict[str, Any]:
    ms = [1000 * x for x in latencies_s]
    out: dict[str, Any] = {
        "n": len(ms), "median_ms": round(percentile(ms, 0.5), 2), "p95_ms": round(percentile(ms, 0.95), 2),
        "min_ms": round(min(ms), 2), "max_ms": round(max(ms), 2),
    }
    if matches is not None:
        out["mean_matches"] = round(sum(matches) / len(matches), 1)
    return out


def run_findscu(port: int, aec: str, queries: list[dict[str, str]]) -> dict[str, Any]:
    env = tool_env()
    latencies, matches = [], []
    for q in queries:
        args = ["findscu", "-S", "-aet", SCU_AE, "-aec", aec, "127.0.0.1", str(port),
                "-k", "QueryRetrieveLevel=STUDY"]
        for key in RETURN_KEYS:
            args += ["-k", f"{key}={q[key]}" if key in q else key]
        started = time.perf_counter()
        done = subprocess.run(args, env=env, capture_output=True, text=True)
        latencies.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise RuntimeError(f"findscu failed: {done.stderr[-1000:]}")
        lines = (done.stderr + done.stdout).splitlines()
        matches.append(sum(1 for line in lines if "Find Response:" in line and "Success" not in line))
    return _stats(latencies, matches)


def run_process_start(n: int) -> dict[str, Any]:
    """``findscu --version``: what starting a DCMTK process costs, before any network."""
    latencies = []
    for _ in range(n):
        started = time.perf_counter()
        subprocess.run(["findscu", "--version"], check=True, capture_output=True)
        latencies.append(time.perf_counter() - started)
    return _stats(latencies)


def run_echoscu(port: int, aec: str, n: int) -> dict[str, Any]:
    env = tool_env()
    latencies = []
    for _ in range(n):
        started = time.perf_counter()
        subprocess.run(["echoscu", "-aet", SCU_AE, "-aec", aec, "127.0.0.1", str(port)], env=env,
                       check=True, capture_output=True)
        latencies.append(time.perf_counter() - started)
    return _stats(latencies)


class NoopSCP:
    """``benchmarks/_noop_scp.py``: a pynetdicom SCP that does no work (the server floor)."""

    def __init__(self, matches: int = 4) -> None:
        from _common import free_port

        self.port, self.matches = free_port(), matches
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> NoopSCP:
        from _common import wait_port

        script = Path(__file__).with_name("_noop_scp.py")
        self.proc = subprocess.Popen([sys.executable, str(script), str(self.port), "--find-matches", str(self.matches)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)

    def cpu(self) -> float:
        from _common import cpu_seconds

        assert self.proc is not None
        return cpu_seconds(self.proc.pid)


def _pynetdicom_ae() -> Any:
    from pynetdicom import AE

    ae = AE(ae_title=SCU_AE)
    ae.add_requested_context(STUDY_ROOT_FIND)
    ae.add_requested_context("1.2.840.10008.1.1")
    ae.maximum_pdu_size = 262_144
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    return ae


def _nodelay_handlers() -> list[Any]:
    import socket

    from pynetdicom import evt

    def on_open(event: Any) -> None:
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    return [(evt.EVT_CONN_OPEN, on_open)]


def run_pynetdicom(port: int, aec: str, queries: list[dict[str, str]] | None, n: int = 0) -> dict[str, Any]:
    """One association per query (or per C-ECHO when ``queries`` is None)."""
    from pydicom.dataset import Dataset

    ae = _pynetdicom_ae()
    handlers = _nodelay_handlers()
    latencies, matches = [], []
    items: list[dict[str, str] | None] = list(queries) if queries is not None else [None] * n
    for q in items:
        started = time.perf_counter()
        assoc = ae.associate("127.0.0.1", port, ae_title=aec, evt_handlers=handlers)
        if not assoc.is_established:
            raise RuntimeError("association refused")
        if q is None:
            status = assoc.send_c_echo()
            found = 0
        else:
            ds = Dataset()
            ds.QueryRetrieveLevel = "STUDY"
            for key in RETURN_KEYS:
                setattr(ds, key, q.get(key, ""))
            found = 0
            for status, ident in assoc.send_c_find(ds, STUDY_ROOT_FIND):
                if status and status.Status in (0xFF00, 0xFF01) and ident is not None:
                    found += 1
        assoc.release()
        latencies.append(time.perf_counter() - started)
        matches.append(found)
        if not status or status.Status not in (0x0000,):
            raise RuntimeError(f"query ended with {status}")
    return _stats(latencies, matches if queries is not None else None)


# -- profile ---------------------------------------------------------------------------


def pyinstrument_find(data: Path, queries: list[dict[str, str]]) -> str:
    """Profile the C-FIND handler in-process (no network): 200 calls of handle_find."""
    from pydicom.dataset import Dataset
    from pydicom.uid import ExplicitVRLittleEndian
    from pyinstrument import Profiler

    from coffre.app import build_context
    from coffre.model import Actor, ActorKind, Permission
    from coffre.net.find import handle_find
    from coffre.services.facilities import get_facility
    from coffre.settings import load_settings

    ctx = build_context(load_settings(data, {}), migrate=False)
    facility = get_facility(ctx, "bench")
    actor = Actor(kind=ActorKind.NODE, name=SCU_AE, facility=facility,
                  address="127.0.0.1", permissions=frozenset(Permission))

    class _Req:
        AffectedSOPClassUID = STUDY_ROOT_FIND

    class _Context:
        transfer_syntax = ExplicitVRLittleEndian

    class _Event:
        def __init__(self, identifier: Dataset) -> None:
            self.identifier, self.request, self.is_cancelled = identifier, _Req(), False
            self.context = _Context()

    def one(q: dict[str, str]) -> None:
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        for key in RETURN_KEYS:
            setattr(ds, key, q.get(key, ""))
        for _ in handle_find(_Event(ds), ctx, actor):
            pass

    profiler = Profiler(interval=0.0005)
    started = time.perf_counter()
    with profiler:
        for q in queries:
            one(q)
    per_query = 1000 * (time.perf_counter() - started) / len(queries)
    ctx.close()
    text = profiler.output_text(unicode=False, color=False, show_all=False)
    return f"in-process handle_find: {per_query:.2f} ms per query under pyinstrument\n\n{text}"


# -- main --------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=int, default=2000)
    ap.add_argument("--patients", type=int, default=500)
    ap.add_argument("--per-study", type=int, default=10)
    ap.add_argument("--queries", type=int, default=200, help="queries of each kind; default 200")
    ap.add_argument("--floor-runs", type=int, default=50, help="C-ECHO floor runs per client; default 50")
    ap.add_argument("--quick", action="store_true", help="500 studies x 10 (5,000 instances), 50 queries")
    ap.add_argument("--data", type=Path, default=None,
                    help="keep the loaded archive here and reuse it on the next run (default: temp)")
    ap.add_argument("--profile", action="store_true", help="pyinstrument in-process + py-spy on the server")
    ap.add_argument("--experiment", action="store_true",
                    help="also measure a server with pynetdicom's per-association deepcopy of the "
                         "presentation contexts replaced by a shallow copy (benchmarks/_experiment_serve.py)")
    args = ap.parse_args()
    if args.quick:
        args.studies, args.patients, args.queries, args.floor_runs = 500, 125, 50, 20

    info = machine()
    log(f"machine: {info['nproc']} x {info['cpu']}, load {info['loadavg_at_start']}")
    temp = None
    if args.data is None:
        temp = Path(tempfile.mkdtemp(prefix="coffre-bench-query-"))
        data = temp / "archive"
    else:
        data = args.data.resolve()
    doc: dict[str, Any] = {"benchmark": "query", "machine": info, "results": {}}
    try:
        server = CoffreServer(data)
        marker = data / ".bench-loaded.json"
        plan = _study_plan(args.studies, args.patients, args.per_study)
        if marker.exists() and json.loads(marker.read_text()).get("instances") == args.studies * args.per_study:
            doc["load"] = {**json.loads(marker.read_text()), "reused": True}
            log(f"reusing the loaded archive in {data}")
        else:
            rmtree(data)
            server.prepare()
            log(f"loading {args.studies * args.per_study} instances in-process into {data}")
            loaded = load(data, studies=args.studies, patients=args.patients, per_study=args.per_study)
            loaded.pop("plan")
            marker.write_text(json.dumps(loaded))
            doc["load"] = loaded
            log(f"loaded {loaded['instances']} in {loaded['seconds']} s ({loaded['instances_per_s']}/s)")
        queries = make_queries(plan, args.queries)
        n = args.queries
        with server, StoreSCP(ignore=True, aet="STORESCP") as scp:
            results: dict[str, Any] = {}
            # warm-up: imports, page cache, pools
            run_pynetdicom(server.dicom_port, server.ae_title, queries["by PatientID"][:5])
            log("floors: association + C-ECHO")
            f = args.floor_runs
            results["floor: findscu --version (process start only)"] = run_process_start(f)
            results["floor: echoscu -> storescp"] = run_echoscu(scp.port, "STORESCP", f)
            results["floor: echoscu -> Coffre"] = run_echoscu(server.dicom_port, server.ae_title, f)
            results["floor: pynetdicom echo -> storescp"] = run_pynetdicom(scp.port, "STORESCP", None, f)
            results["floor: pynetdicom echo -> Coffre"] = run_pynetdicom(server.dicom_port, server.ae_title, None, f)
            with NoopSCP(matches=4) as noop:
                run_pynetdicom(noop.port, "NOOP", None, 5)  # warm-up
                results["floor: pynetdicom echo -> pynetdicom no-op SCP"] = run_pynetdicom(noop.port, "NOOP", None, f)
                c_noop = noop.cpu()
                results["floor: pynetdicom C-FIND -> pynetdicom no-op SCP (4 canned matches)"] = run_pynetdicom(
                    noop.port, "NOOP", queries["by PatientID"][:f])
                doc["noop_scp_cpu_ms_per_query"] = round(1000 * (noop.cpu() - c_noop) / f, 2)
            c0 = server.cpu()
            for kind, qs in queries.items():
                log(f"findscu {kind}")
                results[f"findscu {kind}"] = run_findscu(server.dicom_port, server.ae_title, qs)
            spy = None
            if args.profile:
                OUT.mkdir(parents=True, exist_ok=True)
                spy = PySpy(server.pid, OUT / "query-server.pyspy.txt")
            for kind, qs in queries.items():
                log(f"pynetdicom {kind}")
                results[f"pynetdicom {kind}"] = run_pynetdicom(server.dicom_port, server.ae_title, qs)
            if spy:
                spy.stop()
            cpu = server.cpu() - c0
            doc["server_cpu_ms_per_query"] = round(1000 * cpu / (4 * n), 2)
        if args.experiment:
            log("experiment: shallow copy of presentation contexts per association")
            patched = CoffreServer(data, command=(sys.executable, str(Path(__file__).with_name("_experiment_serve.py"))))
            with patched:
                run_pynetdicom(patched.dicom_port, patched.ae_title, queries["by PatientID"][:5])
                exp: dict[str, Any] = {
                    "pynetdicom echo": run_pynetdicom(patched.dicom_port, patched.ae_title, None, args.floor_runs),
                }
                c0 = patched.cpu()
                for kind, qs in queries.items():
                    exp[f"pynetdicom {kind}"] = run_pynetdicom(patched.dicom_port, patched.ae_title, qs)
                exp["server_cpu_ms_per_query"] = round(1000 * (patched.cpu() - c0) / (2 * n), 2)
                exp["findscu by PatientID"] = run_findscu(patched.dicom_port, patched.ae_title,
                                                          queries["by PatientID"][: max(20, n // 4)])
            doc["experiment_shallow_contexts"] = exp
        doc["results"] = results
        doc["ratios"] = {}
        for kind in queries:
            for client, floor in (("findscu", "echoscu"), ("pynetdicom", "pynetdicom echo")):
                r = results[f"{client} {kind}"]
                doc["ratios"][f"{client} {kind}"] = {
                    "vs_dcmtk_echo_median": ratio(r["median_ms"], results[f"floor: {floor} -> storescp"]["median_ms"]),
                    "vs_coffre_echo_median": ratio(r["median_ms"], results[f"floor: {floor} -> Coffre"]["median_ms"]),
                    "target_median_ms": TARGET_MEDIAN_MS,
                    "target_met": r["median_ms"] <= TARGET_MEDIAN_MS,
                }
        if args.profile:
            doc["profile_server"] = summarize_collapsed(OUT / "query-server.pyspy.txt")
            log("pyinstrument: in-process handle_find")
            text = pyinstrument_find(data, queries["by PatientID"][: n // 2] + queries["by StudyDate range (31 days)"][: n // 2])
            (OUT / "query-pyinstrument.txt").write_text(text)
            doc["profile_pyinstrument"] = str(OUT / "query-pyinstrument.txt")
    finally:
        if temp is not None:
            rmtree(temp)
    jpath, mpath = write_report("query", doc, markdown(doc))
    print(mpath.read_text())
    log(f"wrote {jpath} and {mpath}")


def markdown(doc: dict[str, Any]) -> str:
    m, load_ = doc["machine"], doc["load"]
    lines = [
        "# Query (C-FIND) benchmark", "",
        f"{m['date']} | {m['nproc']} x {m['cpu']} | Python {m['python']} | {m['dcmtk']} | "
        f"load at start {m['loadavg_at_start']}", "",
        f"Index: {load_['instances']} instances ({load_['studies']} studies, {load_['patients']} patients), "
        f"loaded in-process through the ingest service in {load_['seconds']} s"
        f"{' (reused)' if load_.get('reused') else ''}. Study-level, Study Root, "
        f"{len(RETURN_KEYS)} return keys. Latency includes association set-up and release; "
        "findscu also includes its process start.", "",
        "| client -> server | query | median ms | p95 ms | mean matches | median / DCMTK echo floor | "
        "median / Coffre echo floor | target <= 20 ms median |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, r in doc["results"].items():
        rt = doc["ratios"].get(name)
        if rt is None:
            what = ("no network (floor)" if "version" in name
                    else "C-FIND, no work (floor)" if "C-FIND" in name else "C-ECHO (floor)")
            lines.append(f"| {name.removeprefix('floor: ')} | {what} | {r['median_ms']} | {r['p95_ms']} | "
                         "- | - | - | - |")
        else:
            client, kind = name.split(" ", 1)
            met = "**met**" if rt["target_met"] else "**not met**"
            lines.append(f"| {client} -> Coffre | {kind} | **{r['median_ms']}** | {r['p95_ms']} | "
                         f"{r.get('mean_matches')} | {rt['vs_dcmtk_echo_median']} | {rt['vs_coffre_echo_median']} | {met} |")
    lines += ["", f"Server CPU per C-FIND (association included): {doc['server_cpu_ms_per_query']} ms; "
              f"the no-op pynetdicom SCP's: {doc.get('noop_scp_cpu_ms_per_query', '-')} ms.", ""]
    exp = doc.get("experiment_shallow_contexts")
    if exp:
        lines += ["## Experiment: pynetdicom without the per-association deepcopy of the contexts", "",
                  "Same data, same clients; the server is `benchmarks/_experiment_serve.py serve` (Coffre with "
                  "`pynetdicom.transport.deepcopy` replaced by a shallow copy of each presentation context).", "",
                  "| client -> patched Coffre | median ms | p95 ms | target <= 20 ms median |",
                  "| --- | ---: | ---: | --- |"]
        for name, r in exp.items():
            if isinstance(r, dict):
                met = "-" if "echo" in name else ("**met**" if r["median_ms"] <= TARGET_MEDIAN_MS else "**not met**")
                lines.append(f"| {name} | {r['median_ms']} | {r['p95_ms']} | {met} |")
        lines += ["", f"Server CPU per C-FIND (pynetdicom runs): {exp['server_cpu_ms_per_query']} ms.", ""]
    if "profile_server" in doc:
        lines.append(profile_markdown("py-spy, Coffre server during the pynetdicom C-FIND runs", doc["profile_server"]))
        lines.append(f"pyinstrument of the in-process handler: `{doc['profile_pyinstrument']}`.\n")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
