"""C-MOVE and C-GET benchmark: a 300-instance CT study out of Coffre into DCMTK.

One command::

    /work/venv/bin/python benchmarks/retrieve.py            # 300 slices, 3 repetitions
    /work/venv/bin/python benchmarks/retrieve.py --quick    # 100 slices, 1 repetition

Generates a 300-slice 512x512 16-bit CT study, stores it into a fresh ``coffre serve``
with ``storescu`` (the node ``BENCH_SCU`` is registered with the port of a DCMTK
``storescp`` that runs as ``BENCH_SCU``), then measures, each ``--repeat`` times
(the median is reported):

- ``movescu -S -aem BENCH_SCU`` (study level) -> Coffre sends the study over a new
  association into DCMTK ``storescp`` writing files (``-od``) and, as a second figure,
  ``storescp --ignore``;
- ``getscu -S`` (study level) -> Coffre sends the study back over the same association;
  ``getscu -od DIR`` writing files and ``getscu --ignore``;
- the ceiling, in the same run: DCMTK ``storescu`` -> ``storescp`` (``-od`` and
  ``--ignore``) of the same 300 files (what DCMTK does when it reads files and sends them).

With ``--pynetdicom-ceiling``, two more rows measure the best pynetdicom does as a sender
here: one process sends the same study, pre-read with ``dcmread``, with
``Association.send_c_store`` over one association (TCP_NODELAY on its socket) to
``storescp --ignore`` - once as pynetdicom comes, once with the two settings Coffre's
retrieve applies to its sending associations (``coffre.net.retrieve._poll_faster`` and
``_settle_reactor``). Its CPU column is that sender's CPU per instance.

Every DCMTK tool runs with ``TCP_NODELAY=1`` and ``-pdu 131072`` on the receiving side.
Times are the wall time of the ``movescu``/``getscu``/``storescu`` process. Server CPU per
instance from ``/proc/PID/stat``. ``--profile`` records py-spy on the server during one
extra C-MOVE and one extra C-GET (``--ignore`` receivers). Output:
``benchmarks/out/retrieve.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    DCMTK_PDU,
    OUT,
    SCU_AE,
    CoffreServer,
    PySpy,
    StoreSCP,
    free_port,
    log,
    machine,
    profile_markdown,
    ratio,
    rmtree,
    run_storescu,
    summarize_collapsed,
    tool_env,
    total_bytes,
    write_ct_series,
    write_report,
)

TARGET = 850.0

#: py-spy categories, first match over the whole stack wins
RETRIEVE_RULES = (
    ("index/audit (plan)", ("services/retrieve.py",)),
    ("blob read", ("FileSystemBlobStore.read", "FileSystemBlobStore.open")),
    ("raw read of the archived bytes (coffre net/retrieve.raw_dataset)", ("raw_dataset (coffre/net/retrieve.py",)),
    ("dcmread of the archived file (coffre net/retrieve._read)", ("_read (coffre/net/retrieve.py",)),
    ("transcode", ("transcode",)),
    ("waiting for the sub-association reactor (coffre _settle_reactor)", ("_settle_reactor",)),
    ("pynetdicom: build + encode DIMSE command sets (C-STORE-RQ, Pending C-MOVE/C-GET-RSP)",
     ("primitive_to_message",)),
    ("pynetdicom: encode dataset for C-STORE (pydicom write_dataset of raw elements)", ("encode (pynetdicom",)),
    ("pynetdicom: P-DATA fragmenting + socket send", ("send_pdu", "_send", "fragment", "P_DATA", "encode_msg")),
    ("pynetdicom reactor polling sleeps", ("dul.py:403)", "association.py:714)")),
    ("pynetdicom: waiting for the C-STORE response", ("send_c_store", "get_msg")),
    ("pynetdicom DUL: socket recv, PDU decode", ("DULServiceProvider",)),
    ("other Coffre code", ("coffre/",)),
    ("other pynetdicom", ("pynetdicom/",)),
)


def _count(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


FAILURES: list[dict[str, Any]] = []


def _run(args: list[str]) -> float:
    """Wall seconds of one DCMTK client run; a failed run is logged and kept in the report."""
    started = time.perf_counter()
    done = subprocess.run(args, env=tool_env(), capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        text = (done.stdout + done.stderr)[-1500:]
        log(f"WARNING: {args[0]} exited {done.returncode}: {text}")
        FAILURES.append({"command": " ".join(args[:2]), "exit": done.returncode, "output": text})
    return elapsed


def _keys(study_uid: str) -> list[str]:
    return ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}"]


def pynetdicom_ceiling(files: Sequence[Path], port: int, *, coffre_settings: bool) -> dict[str, float]:
    """pynetdicom ``send_c_store`` of ``files`` (read beforehand) over one association to
    ``storescp --ignore`` on ``port``: wall seconds and this process's CPU seconds."""
    from pydicom import dcmread
    from pynetdicom import AE, build_context, evt

    from coffre.net.retrieve import _poll_faster, _settle_reactor

    datasets = [dcmread(f) for f in files]

    def nodelay(event: Any) -> None:
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    ae = AE(ae_title="BENCH_PND")
    ae.dimse_timeout = 10  # a lost C-STORE-RSP (see _settle_reactor) costs 10 s, not 30
    syntaxes = sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets})
    ae.requested_contexts = [build_context(sop, [ts]) for sop, ts in syntaxes]
    cpu0, started = time.process_time(), time.perf_counter()
    assoc = ae.associate("127.0.0.1", port, ae_title=SCU_AE, max_pdu=int(DCMTK_PDU),
                         evt_handlers=[(evt.EVT_CONN_OPEN, nodelay)])
    if not assoc.is_established:
        raise RuntimeError("pynetdicom ceiling: association not established")
    if coffre_settings:
        _poll_faster(assoc)
    failed = 0
    for ds in datasets:
        if coffre_settings:
            _settle_reactor(assoc)
        status = assoc.send_c_store(ds)
        if status.get("Status") != 0x0000:
            failed += 1
            if not assoc.is_established:
                break
    if assoc.is_established:
        assoc.release()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu0
    if failed:
        log(f"WARNING: pynetdicom ceiling: {failed} C-STORE(s) failed (lost response, see _settle_reactor)")
        FAILURES.append({"command": "pynetdicom ceiling (send_c_store)", "exit": failed,
                         "output": f"{failed} C-STORE sub-operations without a response"})
    return {"seconds": seconds, "cpu": cpu, "received": len(files) - failed}


def _summary(runs: list[dict[str, float]], count: int, size: int) -> dict[str, Any]:
    seconds = statistics.median(r["seconds"] for r in runs)
    cpus = [r["cpu"] for r in runs if r.get("cpu") is not None]
    return {
        "instances": count,
        "repeats": len(runs),
        "seconds_median": round(seconds, 3),
        "instances_per_s": round(count / seconds, 1),
        "MB_per_s": round(size / 1e6 / seconds, 1),
        "all_instances_per_s": [round(count / r["seconds"], 1) for r in runs],
        "server_cpu_ms_per_instance": round(1000 * statistics.median(cpus) / count, 2) if cpus else None,
        "received": [int(r["received"]) for r in runs if "received" in r],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="100 slices, 1 repetition")
    ap.add_argument("--profile", action="store_true", help="py-spy on the server during an extra C-MOVE and C-GET")
    ap.add_argument("--pynetdicom-ceiling", action="store_true",
                    help="also measure pynetdicom send_c_store of the pre-read study into storescp --ignore")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--experiment", action="store_true",
                    help="also measure C-MOVE/C-GET against benchmarks/_experiment_serve.py "
                         "(pynetdicom's per-association deepcopy of the contexts replaced by a shallow copy)")
    args = ap.parse_args()
    if args.quick:
        args.slices, args.repeat = 100, 1

    info = machine()
    log(f"machine: {info['nproc']} x {info['cpu']}, load {info['loadavg_at_start']}")
    work = Path(tempfile.mkdtemp(prefix="coffre-bench-retrieve-", dir=args.workdir))
    doc: dict[str, Any] = {"benchmark": "retrieve", "machine": info, "slices": args.slices, "results": {}}
    try:
        files = write_ct_series(work / "ct", args.slices)
        size = total_bytes(files)
        doc["bytes"] = size
        from pydicom import dcmread

        study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        dest_port = free_port()
        server = CoffreServer(work / "archive", scu_port=dest_port)
        res: dict[str, list[dict[str, float]]] = {}
        with server:
            log(f"storing {len(files)} slices into Coffre with storescu")
            seconds = run_storescu(files, server.dicom_port, aec=server.ae_title)
            doc["load_storescu_instances_per_s"] = round(len(files) / seconds, 1)
            for rep in range(args.repeat):
                log(f"repetition {rep + 1}/{args.repeat}")
                for mode in ("disk", "ignore"):
                    out = work / f"recv-{mode}"
                    # ceiling: storescu -> storescp
                    with StoreSCP(ignore=mode == "ignore", folder=out, aet=SCU_AE, port=dest_port) as scp:
                        c0 = scp.cpu()
                        t = run_storescu(files, dest_port, aec=SCU_AE)
                        res.setdefault(f"ceiling: storescu -> storescp ({mode})", []).append(
                            {"seconds": t, "cpu": scp.cpu() - c0, "received": _count(out)})
                    rmtree(out)
                    # C-MOVE into storescp
                    with StoreSCP(ignore=mode == "ignore", folder=out, aet=SCU_AE, port=dest_port):
                        c0 = server.cpu()
                        t = _run(["movescu", "-S", "-aet", SCU_AE, "-aec", server.ae_title, "-aem", SCU_AE,
                                  "127.0.0.1", str(server.dicom_port), *_keys(study_uid)])
                        res.setdefault(f"Coffre C-MOVE -> storescp ({mode})", []).append(
                            {"seconds": t, "cpu": server.cpu() - c0, "received": _count(out)})
                    rmtree(out)
                    # C-GET into getscu
                    get_args = ["getscu", "-S", "-aet", SCU_AE, "-aec", server.ae_title, "-pdu", DCMTK_PDU]
                    if mode == "ignore":
                        get_args.append("--ignore")
                    else:
                        out.mkdir(parents=True, exist_ok=True)
                        get_args += ["-od", str(out)]
                    c0 = server.cpu()
                    t = _run([*get_args, "127.0.0.1", str(server.dicom_port), *_keys(study_uid)])
                    res.setdefault(f"Coffre C-GET -> getscu ({mode})", []).append(
                        {"seconds": t, "cpu": server.cpu() - c0, "received": _count(out)})
                    rmtree(out)
                if args.pynetdicom_ceiling:
                    for coffre_settings, label in ((False, "as is"), (True, "with Coffre's reactor settings")):
                        with StoreSCP(ignore=True, aet=SCU_AE, port=dest_port):
                            res.setdefault(f"ceiling: pynetdicom send_c_store -> storescp (ignore), {label}",
                                           []).append(pynetdicom_ceiling(files, dest_port,
                                                                         coffre_settings=coffre_settings))
            if args.profile:
                OUT.mkdir(parents=True, exist_ok=True)
                doc["profiles"] = {}
                with StoreSCP(ignore=True, aet=SCU_AE, port=dest_port):
                    raw = OUT / "retrieve-move.pyspy.txt"
                    spy = PySpy(server.pid, raw)
                    t = _run(["movescu", "-S", "-aet", SCU_AE, "-aec", server.ae_title, "-aem", SCU_AE,
                              "127.0.0.1", str(server.dicom_port), *_keys(study_uid)])
                    spy.stop()
                    doc["profiles"]["C-MOVE"] = {**summarize_collapsed(raw, rules=RETRIEVE_RULES),
                                                 "instances_per_s_under_profiler": round(len(files) / t, 1)}
                raw = OUT / "retrieve-get.pyspy.txt"
                spy = PySpy(server.pid, raw)
                t = _run(["getscu", "-S", "-aet", SCU_AE, "-aec", server.ae_title, "-pdu", DCMTK_PDU, "--ignore",
                          "127.0.0.1", str(server.dicom_port), *_keys(study_uid)])
                spy.stop()
                doc["profiles"]["C-GET"] = {**summarize_collapsed(raw, rules=RETRIEVE_RULES),
                                            "instances_per_s_under_profiler": round(len(files) / t, 1)}
        if args.experiment:
            log("experiment: patched server (shallow copy of the presentation contexts)")
            patched = CoffreServer(work / "archive", scu_port=dest_port,
                                   command=(sys.executable, str(Path(__file__).with_name("_experiment_serve.py"))),
                                   extra_env={"BENCH_COFFRE_PATCHES": "shallow-contexts"})
            with patched:
                for _rep in range(args.repeat):
                    with StoreSCP(ignore=True, aet=SCU_AE, port=dest_port):
                        c0 = patched.cpu()
                        t = _run(["movescu", "-S", "-aet", SCU_AE, "-aec", patched.ae_title, "-aem", SCU_AE,
                                  "127.0.0.1", str(patched.dicom_port), *_keys(study_uid)])
                        res.setdefault("experiment: patched C-MOVE -> storescp (ignore)", []).append(
                            {"seconds": t, "cpu": patched.cpu() - c0})
                    c0 = patched.cpu()
                    t = _run(["getscu", "-S", "-aet", SCU_AE, "-aec", patched.ae_title, "-pdu", DCMTK_PDU,
                              "--ignore", "127.0.0.1", str(patched.dicom_port), *_keys(study_uid)])
                    res.setdefault("experiment: patched C-GET -> getscu (ignore)", []).append(
                        {"seconds": t, "cpu": patched.cpu() - c0})
        if FAILURES:
            doc["failures"] = FAILURES
            (OUT / "retrieve-serve.stderr").write_text(server.stderr_text())
        results = {name: _summary(runs, len(files), size) for name, runs in res.items()}
        for name, r in results.items():
            if r["received"] and any(n != len(files) for n in r["received"]) and "(ignore)" not in name:
                log(f"WARNING: {name} received {r['received']} of {len(files)}")
        doc["results"] = results
        doc["ratios"] = {}
        pnd = results.get("ceiling: pynetdicom send_c_store -> storescp (ignore), with Coffre's reactor settings")
        if pnd:
            doc["vs_pynetdicom_ceiling"] = {
                op: ratio(results[f"Coffre {op} (ignore)"]["instances_per_s"], pnd["instances_per_s"])
                for op in ("C-MOVE -> storescp", "C-GET -> getscu")}
        for op in ("C-MOVE -> storescp", "C-GET -> getscu"):
            for mode in ("disk", "ignore"):
                c = results[f"Coffre {op} ({mode})"]["instances_per_s"]
                doc["ratios"][f"{op} ({mode})"] = {
                    "vs_ceiling_same_mode": ratio(c, results[f"ceiling: storescu -> storescp ({mode})"]["instances_per_s"]),
                    "target_instances_per_s": TARGET,
                    "target_met": c >= TARGET,
                }
    finally:
        rmtree(work)
    jpath, mpath = write_report("retrieve", doc, markdown(doc))
    print(mpath.read_text())
    log(f"wrote {jpath} and {mpath}")


def markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    lines = [
        "# Retrieve (C-MOVE / C-GET) benchmark", "",
        f"{m['date']} | {m['nproc']} x {m['cpu']} | Python {m['python']} | {m['dcmtk']} | "
        f"load at start {m['loadavg_at_start']}", "",
        f"One study of {doc['slices']} CT slices 512x512 16-bit ({doc['bytes'] / 1e6:.0f} MB), stored "
        f"Explicit VR Little Endian and sent as stored (no transcoding). Median of the repetitions; "
        f"wall time of the DCMTK client process.", "",
        "| path | inst/s | MB/s | runs (inst/s) | server CPU ms/inst | ratio to ceiling (same receiver mode) | "
        "target >= 850 inst/s |",
        "| --- | ---: | ---: | --- | ---: | ---: | --- |",
    ]
    for name, r in doc["results"].items():
        key = name.removeprefix("Coffre ")
        rt = doc["ratios"].get(key)
        if name.startswith("experiment: "):
            ceiling = doc["results"]["ceiling: storescu -> storescp (ignore)"]["instances_per_s"]
            rt = {"vs_ceiling_same_mode": ratio(r["instances_per_s"], ceiling),
                  "target_met": r["instances_per_s"] >= TARGET}
        cells = (f"| {name} | {'**' if rt else ''}{r['instances_per_s']}{'**' if rt else ''} | {r['MB_per_s']} | "
                 f"{', '.join(map(str, r['all_instances_per_s']))} | {r['server_cpu_ms_per_instance']} | ")
        if rt:
            cells += f"{rt['vs_ceiling_same_mode']} | {'**met**' if rt['target_met'] else '**not met**'} |"
        else:
            cells += "- | - |"
        lines.append(cells)
    lines.append("")
    for op, r in doc.get("vs_pynetdicom_ceiling", {}).items():
        lines.append(f"- Coffre {op} (ignore) / pynetdicom ceiling with Coffre's reactor settings: **{r}**")
    if doc.get("vs_pynetdicom_ceiling"):
        lines.append("")
    for failure in doc.get("failures", []):
        lines += [f"**Failed run**: `{failure['command']}` exit {failure['exit']}:", "", "```",
                  failure["output"].strip(), "```", ""]
    for op, prof in doc.get("profiles", {}).items():
        lines.append(profile_markdown(
            f"py-spy, Coffre server during one {op} (--ignore receiver; "
            f"{prof['instances_per_s_under_profiler']} inst/s under the profiler)", prof))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
