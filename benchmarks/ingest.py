"""C-STORE ingest benchmark: DCMTK ``storescu`` -> ``coffre serve``, against DCMTK ceilings.

One command::

    /work/venv/bin/python benchmarks/ingest.py            # 2,000 slices (~1 GB)
    /work/venv/bin/python benchmarks/ingest.py --quick    # 300 slices

Generates an N-slice 512x512 16-bit CT (Explicit VR Little Endian, ~0.5 MB a slice)
into a temporary folder once, then, for 1 and for 4 concurrent associations (4
``storescu`` processes each sending a quarter of the files), sends it to:

- DCMTK ``storescp --ignore`` (receive and discard: the loopback/DIMSE ceiling);
- DCMTK ``storescp -od DIR`` (receive and write files, no fsync: the "simple archive" ceiling);
- ``coffre serve`` on a fresh data folder (SQLite index, filesystem blobs, fsync on:
  every instance acknowledged only once fsynced and indexed).

Also ``dd if=/dev/zero of=FILE bs=1M count=1024 conv=fdatasync`` on the same disk.
``storescp`` is started with ``--fork`` for the 4-association runs (otherwise it serves
one association at a time) and ``-pdu 131072`` (DCMTK's largest). Every DCMTK tool runs
with ``TCP_NODELAY=1``. Server CPU seconds are utime+stime from ``/proc/PID/stat``
(for forked storescp: the parent plus its reaped children).

``--profile`` adds a py-spy recording of the server (``--format raw``, collapsed stacks)
during an extra, unmeasured Coffre run of each association count, and summarises the top
frames. Output: ``benchmarks/out/ingest.json`` and ``benchmarks/out/ingest.md``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    COFFRE,
    OUT,
    STORE_RULES,
    CoffreServer,
    PySpy,
    StoreSCP,
    dd_ceiling,
    log,
    machine,
    profile_markdown,
    ratio,
    rmtree,
    run_storescu,
    summarize_collapsed,
    total_bytes,
    write_ct_series,
    write_report,
)

TARGETS = {1: 210.0, 4: 420.0}


def _figures(count: int, size: int, seconds: float, cpu: float | None) -> dict[str, Any]:
    return {
        "instances": count,
        "seconds": round(seconds, 3),
        "instances_per_s": round(count / seconds, 1),
        "MB_per_s": round(size / 1e6 / seconds, 1),
        "server_cpu_ms_per_instance": None if cpu is None else round(1000 * cpu / count, 2),
        "server_cpu_cores_busy": None if cpu is None else round(cpu / seconds, 2),
    }


def _stored_blobs(data: Path) -> int:
    return sum(1 for p in (data / "blobs").rglob("*") if p.is_file() and not p.name.startswith(".tmp"))


def run_storescp(files: list[Path], work: Path, *, ignore: bool, associations: int) -> dict[str, Any]:
    target = work / "storescp-out"
    with StoreSCP(ignore=ignore, folder=None if ignore else target, fork=associations > 1) as scp:
        c0 = scp.cpu()
        seconds = run_storescu(files, scp.port, aec="STORESCP", associations=associations)
        # forked children are reaped when they exit; give the parent a moment to wait() them
        cpu = scp.cpu() - c0
    rmtree(target)
    return _figures(len(files), total_bytes(files), seconds, cpu)


def run_coffre(files: list[Path], work: Path, *, associations: int,
               profile: Path | None = None, workers: int = 1, patches: str = "") -> dict[str, Any]:
    data = work / f"coffre-{associations}-{workers}{'-profile' if profile else ''}{'-x' if patches else ''}"
    rmtree(data)
    env = {"COFFRE_DICOM_WORKERS": str(workers)}
    command: tuple[str, ...] = (COFFRE,)
    if patches:  # benchmarks/_experiment_serve.py: Coffre with a change taken back, for an A/B
        env["BENCH_COFFRE_PATCHES"] = patches
        command = (sys.executable, str(Path(__file__).with_name("_experiment_serve.py")))
    server = CoffreServer(data, extra_env=env, command=command)
    with server:
        spy = PySpy(server.pid, profile, subprocesses=workers > 1) if profile else None
        c0 = server.cpu()
        seconds = run_storescu(files, server.dicom_port, aec=server.ae_title, associations=associations)
        cpu = server.cpu() - c0
        if spy:
            spy.stop()
        rss = _vmhwm_mib(server.pid)
    stored = _stored_blobs(data)
    rmtree(data)
    out = _figures(len(files), total_bytes(files), seconds, cpu)
    out["stored_blobs"] = stored
    out["server_peak_rss_MiB"] = rss
    if stored != len(files):
        log(f"WARNING: coffre stored {stored} of {len(files)} instances")
    return out


def run_in_process(files: list[Path], work: Path) -> dict[str, Any]:
    """The ingest service alone, no network: ``coffre.services.ingest.ingest`` in a loop
    (fsync on, SQLite WAL), in a child process; wall time and that process's CPU."""
    import subprocess

    data = work / "coffre-inprocess"
    rmtree(data)
    CoffreServer(data).prepare()
    code = (
        "import sys, time, json\n"
        "from pathlib import Path\n"
        "from coffre.app import build_context\n"
        "from coffre.settings import load_settings\n"
        "from coffre.model import Actor\n"
        "from coffre.services.facilities import get_facility\n"
        "from coffre.services.ingest import ingest\n"
        "ctx = build_context(load_settings(Path(sys.argv[1]), {}), migrate=False)\n"
        "actor = Actor.system('bench', facility=get_facility(ctx, 'bench'))\n"
        "paths = sys.argv[2:]\n"
        "w = c = 0.0\n"
        "for p in paths:\n"
        "    data = Path(p).read_bytes()\n"
        "    t0, c0 = time.perf_counter(), time.process_time()\n"
        "    ingest(ctx, actor, data, source='bench')\n"
        "    w += time.perf_counter() - t0; c += time.process_time() - c0\n"
        "print(json.dumps({'seconds': w, 'cpu': c}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(data), *map(str, files)],
                          capture_output=True, text=True, check=True)
    import json

    measured = json.loads(done.stdout.strip().splitlines()[-1])
    rmtree(data)
    out = _figures(len(files), total_bytes(files), measured["seconds"], measured["cpu"])
    out["note"] = "time inside ingest() only (file reads excluded); CPU of the ingesting process"
    return out


def run_noop_scp(files: list[Path], *, associations: int) -> dict[str, Any]:
    """pynetdicom's upper layer alone: a C-STORE SCP that answers Success and keeps nothing."""
    import subprocess

    from _common import cpu_seconds, free_port, wait_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("_noop_scp.py")), str(port), "--encoded"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        c0 = cpu_seconds(proc.pid)
        seconds = run_storescu(files, port, aec="NOOP", associations=associations)
        cpu = cpu_seconds(proc.pid) - c0
    finally:
        proc.terminate()
        proc.wait(10)
    return _figures(len(files), total_bytes(files), seconds, cpu)


def _vmhwm_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=2000, help="CT slices (512x512 16-bit); default 2000")
    ap.add_argument("--quick", action="store_true", help="300 slices")
    ap.add_argument("--associations", default="1,4", help="comma-separated counts; default 1,4")
    ap.add_argument("--profile", action="store_true",
                    help="also record py-spy on the server during an extra Coffre run per count")
    ap.add_argument("--profile-slices", type=int, default=600, help="slices of the profiled runs")
    ap.add_argument("--workdir", type=Path, default=None, help="where to put data (default: a temp folder)")
    ap.add_argument("--in-process", action="store_true",
                    help="also time the ingest service alone (no network), on the same files")
    ap.add_argument("--workers", default="1",
                    help="comma-separated [dicom] workers values for the Coffre runs; default 1 (e.g. 1,2)")
    ap.add_argument("--experiment", default="",
                    help="also run Coffre through benchmarks/_experiment_serve.py with these patches "
                         "(see its docstring), for an A/B in the same run")
    ap.add_argument("--pynetdicom-ceiling", action="store_true",
                    help="also measure a no-op pynetdicom C-STORE SCP (benchmarks/_noop_scp.py)")
    args = ap.parse_args()
    slices = 300 if args.quick else args.slices
    counts = [int(x) for x in args.associations.split(",")]
    worker_counts = [int(x) for x in args.workers.split(",")]

    info = machine()
    log(f"machine: {info['nproc']} x {info['cpu']}, load {info['loadavg_at_start']}")
    work = Path(tempfile.mkdtemp(prefix="coffre-bench-ingest-", dir=args.workdir))
    doc: dict[str, Any] = {"benchmark": "ingest", "machine": info, "slices": slices, "runs": {},
                           "experiment": args.experiment or None, "workers": worker_counts}
    try:
        log(f"generating {slices} CT slices in {work}")
        files = write_ct_series(work / "ct", slices)
        size = total_bytes(files)
        doc["bytes"] = size
        log(f"{slices} files, {size / 1e6:.0f} MB; dd ceiling")
        doc["dd_fdatasync"] = dd_ceiling(work)
        log(f"dd: {doc['dd_fdatasync']['MB_per_s']} MB/s")
        if args.in_process:
            log("ingest service in-process (no network)")
            doc["in_process"] = run_in_process(files, work)
            log(f"  {doc['in_process']['instances_per_s']} inst/s")
        for n in counts:
            run: dict[str, Any] = {}
            log(f"{n} association(s): storescp --ignore")
            run["storescp_ignore"] = run_storescp(files, work, ignore=True, associations=n)
            log(f"  {run['storescp_ignore']['instances_per_s']} inst/s; storescp -od")
            run["storescp_disk"] = run_storescp(files, work, ignore=False, associations=n)
            log(f"  {run['storescp_disk']['instances_per_s']} inst/s; coffre serve")
            if args.pynetdicom_ceiling:
                log("  pynetdicom no-op SCP")
                run["pynetdicom_noop"] = run_noop_scp(files, associations=n)
            for w in worker_counts:
                key = "coffre" if w == 1 else f"coffre_workers_{w}"
                run[key] = run_coffre(files, work, associations=n, workers=w)
                log(f"  coffre (workers={w}) {run[key]['instances_per_s']} inst/s, "
                    f"{run[key]['server_cpu_ms_per_instance']} ms CPU/inst")
            if args.experiment:
                for w in worker_counts:
                    key = f"experiment_{args.experiment}_workers_{w}"
                    run[key] = run_coffre(files, work, associations=n, workers=w, patches=args.experiment)
                    log(f"  experiment {args.experiment} (workers={w}) {run[key]['instances_per_s']} inst/s, "
                        f"{run[key]['server_cpu_ms_per_instance']} ms CPU/inst")
            if "coffre" not in run:
                run["coffre"] = run[f"coffre_workers_{worker_counts[0]}"]
            c = max(v["instances_per_s"] for k, v in run.items() if k.startswith("coffre"))
            # (experiment rows are reported beside, never as Coffre's figure)
            run["ratios"] = {
                "coffre_vs_storescp_ignore": ratio(c, run["storescp_ignore"]["instances_per_s"]),
                "coffre_vs_storescp_disk": ratio(c, run["storescp_disk"]["instances_per_s"]),
                "coffre_MBps_vs_dd": ratio(run["coffre"]["MB_per_s"], doc["dd_fdatasync"]["MB_per_s"]),
            }
            target = TARGETS.get(n)
            run["target_instances_per_s"] = target
            run["target_met"] = None if target is None else c >= target
            doc["runs"][str(n)] = run
        if args.profile:
            doc["profiles"] = {}
            pfiles = files[: min(args.profile_slices, len(files))]
            for n in counts:
                raw = OUT / f"ingest-{n}assoc.pyspy.txt"
                OUT.mkdir(parents=True, exist_ok=True)
                log(f"profiling coffre with py-spy, {n} association(s), {len(pfiles)} slices")
                figures = run_coffre(pfiles, work, associations=n, profile=raw, workers=max(worker_counts))
                summary = summarize_collapsed(raw, rules=STORE_RULES)
                summary["run_under_profiler"] = figures
                summary["raw"] = str(raw)
                doc["profiles"][str(n)] = summary
    finally:
        rmtree(work)
    jpath, mpath = write_report("ingest", doc, markdown(doc))
    print(mpath.read_text())
    log(f"wrote {jpath} and {mpath}")


def markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    lines = [
        "# Ingest (C-STORE) benchmark", "",
        f"{m['date']} | {m['nproc']} x {m['cpu']} | Python {m['python']} | {m['dcmtk']} | "
        f"load at start {m['loadavg_at_start']}", "",
        f"{doc['slices']} CT slices 512x512 16-bit, {doc['bytes'] / 1e6:.0f} MB, sent by DCMTK storescu "
        f"(TCP_NODELAY=1). dd bs=1M count=1024 conv=fdatasync: **{doc['dd_fdatasync']['MB_per_s']} MB/s**.", "",
        "| assoc. | receiver | inst/s | MB/s | server CPU ms/inst | Coffre ratio to it |",
        "| ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for n, run in doc["runs"].items():
        c = run["coffre"]
        for key, label in (("storescp_ignore", "DCMTK storescp --ignore"), ("storescp_disk", "DCMTK storescp -od"),
                           ("pynetdicom_noop", "pynetdicom no-op SCP (answers Success, keeps nothing)")):
            r = run.get(key)
            if r is None:
                continue
            lines.append(f"| {n} | {label} | {r['instances_per_s']} | {r['MB_per_s']} | "
                         f"{r['server_cpu_ms_per_instance']} | {ratio(c['instances_per_s'], r['instances_per_s'])} |")
        for key, r in run.items():
            if not key.startswith(("coffre", "experiment_")):
                continue
            if key == "coffre" and 1 not in doc.get("workers", [1]):
                continue  # an alias of the first workers value's run, not a run of its own
            workers = 1 if key == "coffre" else int(key.rsplit("_", 1)[1])
            if key.startswith("experiment_"):
                lines.append(f"| {n} | experiment: Coffre with `{doc.get('experiment')}` (workers = {workers}) | "
                             f"{r['instances_per_s']} | {r['MB_per_s']} | {r['server_cpu_ms_per_instance']} | |")
                continue
            met = {True: "met", False: "not met", None: "-"}[
                None if run["target_instances_per_s"] is None else r["instances_per_s"] >= run["target_instances_per_s"]]
            lines.append(f"| {n} | **Coffre** (fsync + index, workers = {workers}) | **{r['instances_per_s']}** | "
                         f"{r['MB_per_s']} | {r['server_cpu_ms_per_instance']} | "
                         f"target >= {run['target_instances_per_s']}: **{met}** |")
    lines.append("")
    lines.append("Coffre MB/s as a fraction of dd: " + ", ".join(
        f"{n} assoc. {run['ratios']['coffre_MBps_vs_dd']}" for n, run in doc["runs"].items()))
    lines.append("")
    ip = doc.get("in_process")
    if ip:
        lines += [f"Ingest service alone, in-process, no network (fsync on): **{ip['instances_per_s']} inst/s**, "
                  f"{ip['server_cpu_ms_per_instance']} ms CPU per instance.", ""]
    for n, prof in doc.get("profiles", {}).items():
        r = prof["run_under_profiler"]
        lines.append(profile_markdown(
            f"py-spy, Coffre server, {n} association(s) ({r['instances']} slices, "
            f"{r['instances_per_s']} inst/s under the profiler)", prof))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
