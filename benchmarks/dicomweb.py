"""DICOMweb benchmark: QIDO-RS latency, series metadata latency, WADO-RS series throughput.

One command::

    /work/venv/bin/python benchmarks/dicomweb.py --data /tmp/coffre-bench-20k   # 20,000 instances + a 300-slice CT
    /work/venv/bin/python benchmarks/dicomweb.py --quick                        # 5,000 instances, 100 slices

Data, generated here (``coffre.dicom.synthetic``, never patient data):

- the query index of ``benchmarks/query.py`` -- 2,000 studies x 10 instances (64x64),
  500 patients -- loaded in-process through ``coffre.services.ingest.ingest`` by the same
  code (``query.load``), with the same ``--data DIR`` marker, so one loaded folder serves
  both scripts;
- one CT series of ``--slices`` (300) 16-bit 512x512 slices (study date 1999-01-01, so
  that it never matches the query benchmark's date ranges), ingested the same way and
  remembered in ``DIR/.bench-dicomweb-ct-N.json``;
- an API token of the ``bench`` facility from ``coffre token add`` (kept in
  ``DIR/.bench-dicomweb-token``).

Then ``coffre serve --data DIR`` (free ports, defaults otherwise) is measured with an
``httpx.Client`` in this process:

1. QIDO-RS ``GET /dicomweb/studies?PatientID=…`` (``Accept: application/dicom+json``,
   default return attributes), ``--requests`` (200) patients drawn at random (same seed
   as query.py): median / p95, once over one keep-alive connection and once with a new
   TCP connection per request (``httpx.Limits(max_keepalive_connections=0)``).
   Target (issue 5): <= 10 ms median.
2. Series metadata ``GET /dicomweb/studies/{s}/series/{se}/metadata`` of the CT,
   ``--metadata-requests`` (50) times over one keep-alive connection. Target <= 30 ms.
3. Whole-series WADO-RS ``GET /dicomweb/studies/{s}/series/{se}`` with
   ``Accept: multipart/related; type="application/dicom"; transfer-syntax=*``,
   ``--repeat`` (5) times, body streamed and discarded (``client.stream`` +
   ``iter_bytes``); also with ``curl -o /dev/null``. MB/s = body bytes / wall time.
   Target >= 800 MB/s.

Ceilings in the same run, same clients, same bytes (``benchmarks/_static_server.py``):

- ``uvicorn`` static server: uvicorn + h11 + asyncio like ``coffre serve``, a bare ASGI app
  answering the same QIDO JSON body, the same metadata JSON body, and the 300 archived
  blobs concatenated into one file (read in 1 MiB pieces) -- the best Coffre's HTTP stack
  can do here;
- ``sendfile`` static server: a threaded HTTP/1.1 server sending the concatenated file with
  ``socket.sendfile`` (zero copy, what nginx does) -- the loopback ceiling, fetched with
  httpx and with curl;
- ``dd if=CONCAT of=/dev/null bs=1M`` (page cache warm) and a Python read of the 300 blob
  files in 1 MiB pieces: what reading the blobs costs.

``--profile`` records py-spy on the server during extra, unmeasured QIDO, metadata and
WADO-RS runs (``benchmarks/out/dicomweb-*.pyspy.txt``). ``--experiment`` also measures
metadata and WADO-RS against ``benchmarks/_experiment_serve.py`` with the ``scoped-locate``
patch (the facility scope of ``coffre.index.retrieve.locate`` also put on series and
study, so that SQLite starts from the series UID index). Output:
``benchmarks/out/dicomweb.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import query as _query
from _common import (
    COFFRE,
    FACILITY,
    OUT,
    CoffreServer,
    PySpy,
    cpu_seconds,
    free_port,
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

TARGET_QIDO_MS = 10.0
TARGET_METADATA_MS = 30.0
TARGET_WADO_MBPS = 800.0
WADO_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
JSON_ACCEPT = "application/dicom+json"
TOKEN_NAME = "bench-dicomweb"


# -- data ----------------------------------------------------------------------------------


def _encode_ct(args: tuple[str, str, int, int]) -> bytes:
    from coffre.dicom.synthetic import InstanceSpec, make_instance

    study, series, number, size = args
    return make_instance(InstanceSpec(
        modality="CT", patient_id="BENCHWEB01", patient_name="BENCH^WEB", study_uid=study, series_uid=series,
        instance_number=number, rows=size, columns=size, seed=number, study_date="19990101",
        study_description="BENCH DICOMWEB CT",
    ))


def load_ct(data: Path, slices: int, size: int = 512) -> dict[str, Any]:
    """Ingest one CT series in-process (fsync off: set-up); remember its UIDs and blob paths."""
    from pydicom.uid import generate_uid

    from coffre.app import build_context
    from coffre.model import Actor
    from coffre.services.facilities import get_facility
    from coffre.services.ingest import ingest
    from coffre.settings import load_settings

    study, series = generate_uid(), generate_uid()
    ctx = build_context(load_settings(data, {"COFFRE_STORAGE_FSYNC": "false"}), migrate=False)
    keys: list[str] = []
    put = ctx.blobs.put

    def recording_put(key: str, payload: bytes) -> Any:
        keys.append(key)
        return put(key, payload)

    ctx.blobs.put = recording_put  # type: ignore[method-assign]
    started = time.perf_counter()
    total = 0
    try:
        actor = Actor.system("bench-loader", facility=get_facility(ctx, FACILITY))
        jobs = [(study, series, i + 1, size) for i in range(slices)]
        with ProcessPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
            for encoded in pool.map(_encode_ct, jobs, chunksize=16):
                ingest(ctx, actor, encoded, source="bench-load")
                total += len(encoded)
        paths = [str(ctx.blobs.path_for(k)) for k in keys]
    finally:
        ctx.close()
    return {"slices": slices, "study": study, "series": series, "bytes": total, "blobs": paths,
            "seconds": round(time.perf_counter() - started, 1)}


def get_token(data: Path) -> str:
    saved = data / ".bench-dicomweb-token"
    if saved.exists():
        return saved.read_text().strip()
    done = subprocess.run([COFFRE, "token", "add", "--data", str(data), TOKEN_NAME, "--facility", FACILITY,
                           "--allow", "query,retrieve"], check=True, capture_output=True, text=True, env=tool_env())
    token = done.stdout.strip().splitlines()[-1].strip()
    saved.write_text(token)
    return token


# -- ceilings ------------------------------------------------------------------------------


class StaticServer:
    def __init__(self, mode: str, folder: Path) -> None:
        self.mode, self.folder, self.port = mode, folder, free_port()
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> StaticServer:
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("_static_server.py")), self.mode,
                                      str(self.port), str(self.folder)], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("ready"):
            raise RuntimeError(f"static server {self.mode} did not start")
        time.sleep(0.3)
        return self

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu(self) -> float:
        assert self.proc is not None
        return cpu_seconds(self.proc.pid)

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def dd_read(path: Path) -> dict[str, Any]:
    path.read_bytes()  # warm the page cache
    started = time.perf_counter()
    subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=1M"], check=True, capture_output=True)
    seconds = time.perf_counter() - started
    size = path.stat().st_size
    return {"bytes": size, "seconds": round(seconds, 4), "MB_per_s": round(size / 1e6 / seconds, 1)}


def python_read(paths: list[Path]) -> dict[str, Any]:
    started = time.perf_counter()
    total = 0
    for p in paths:
        with p.open("rb") as f:
            while chunk := f.read(1 << 20):
                total += len(chunk)
    seconds = time.perf_counter() - started
    return {"bytes": total, "seconds": round(seconds, 4), "MB_per_s": round(total / 1e6 / seconds, 1)}


# -- clients -------------------------------------------------------------------------------


def _stats_ms(latencies_s: list[float]) -> dict[str, Any]:
    ms = [1000 * x for x in latencies_s]
    return {"n": len(ms), "median_ms": round(percentile(ms, 0.5), 2), "p95_ms": round(percentile(ms, 0.95), 2),
            "min_ms": round(min(ms), 2), "max_ms": round(max(ms), 2)}


def latency(urls: list[str], headers: dict[str, str], *, keep_alive: bool,
            expect: int | None = None, check_json_len: int | None = None) -> dict[str, Any]:
    """Wall time of ``client.get`` for each URL (body read), one client for the whole run."""
    import httpx

    limits = httpx.Limits() if keep_alive else httpx.Limits(max_keepalive_connections=0)
    sizes, lat = [], []
    with httpx.Client(headers=headers, limits=limits, timeout=60) as client:
        for url in urls:
            started = time.perf_counter()
            r = client.get(url)
            body = r.content
            lat.append(time.perf_counter() - started)
            if r.status_code != 200:
                raise RuntimeError(f"GET {url}: {r.status_code} {body[:300]!r}")
            sizes.append(len(body))
            if check_json_len is not None and len(json.loads(body)) != check_json_len:
                raise RuntimeError(f"GET {url}: {len(json.loads(body))} results, expected {check_json_len}")
    out = _stats_ms(lat)
    out["mean_body_bytes"] = round(sum(sizes) / len(sizes))
    return out


def stream_httpx(url: str, headers: dict[str, str], repeat: int) -> dict[str, Any]:
    import httpx

    runs = []
    with httpx.Client(headers=headers, timeout=120) as client:
        for _ in range(repeat):
            started = time.perf_counter()
            n = 0
            with client.stream("GET", url) as r:
                if r.status_code != 200:
                    raise RuntimeError(f"GET {url}: {r.status_code}")
                for chunk in r.iter_bytes():
                    n += len(chunk)
            seconds = time.perf_counter() - started
            runs.append({"bytes": n, "seconds": round(seconds, 4), "MB_per_s": round(n / 1e6 / seconds, 1)})
    return _throughput(runs)


def stream_curl(url: str, headers: dict[str, str], repeat: int) -> dict[str, Any]:
    """``curl -o /dev/null``; time = curl's own ``time_total`` (process start excluded)."""
    args = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_total}"]
    for k, v in headers.items():
        args += ["-H", f"{k}: {v}"]
    runs = []
    for _ in range(repeat):
        done = subprocess.run([*args, url], capture_output=True, text=True, check=True)
        code, size, seconds = done.stdout.split()
        if code != "200":
            raise RuntimeError(f"curl {url}: {code}")
        n, s = int(size), float(seconds)
        runs.append({"bytes": n, "seconds": round(s, 4), "MB_per_s": round(n / 1e6 / s, 1)})
    return _throughput(runs)


def _throughput(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"MB_per_s": round(statistics.median(r["MB_per_s"] for r in runs), 1),
            "bytes": runs[0]["bytes"], "runs_MB_per_s": [r["MB_per_s"] for r in runs]}


# -- main ----------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=int, default=2000)
    ap.add_argument("--patients", type=int, default=500)
    ap.add_argument("--per-study", type=int, default=10)
    ap.add_argument("--slices", type=int, default=300, help="CT slices 512x512 of the WADO-RS series; default 300")
    ap.add_argument("--requests", type=int, default=200, help="QIDO-RS requests per connection mode; default 200")
    ap.add_argument("--metadata-requests", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=5, help="WADO-RS series retrievals per client; default 5")
    ap.add_argument("--quick", action="store_true", help="5,000 instances, 100 slices, 50/20/2 requests")
    ap.add_argument("--data", type=Path, default=None,
                    help="keep the loaded archive here and reuse it (shared with query.py --data)")
    ap.add_argument("--profile", action="store_true", help="py-spy on the server during extra runs")
    ap.add_argument("--experiment", action="store_true",
                    help="also measure metadata and WADO-RS against benchmarks/_experiment_serve.py with the "
                         "scoped-locate patch (facility scope also on series/study in index.retrieve.locate)")
    args = ap.parse_args()
    if args.quick:
        args.studies, args.patients, args.slices = 500, 125, 100
        args.requests, args.metadata_requests, args.repeat = 50, 20, 2

    import httpx

    info = machine()
    log(f"machine: {info['nproc']} x {info['cpu']}, load {info['loadavg_at_start']}")
    temp = Path(tempfile.mkdtemp(prefix="coffre-bench-dicomweb-"))
    data = (args.data.resolve() if args.data is not None else temp / "archive")
    doc: dict[str, Any] = {"benchmark": "dicomweb", "machine": info, "results": {}, "ceilings": {}}
    try:
        server = CoffreServer(data)
        marker = data / ".bench-loaded.json"
        plan = _query._study_plan(args.studies, args.patients, args.per_study)
        if marker.exists() and json.loads(marker.read_text()).get("instances") == args.studies * args.per_study:
            doc["load"] = {**json.loads(marker.read_text()), "reused": True}
            log(f"reusing the loaded archive in {data}")
        else:
            rmtree(data)
            server.prepare()
            log(f"loading {args.studies * args.per_study} instances in-process into {data}")
            loaded = _query.load(data, studies=args.studies, patients=args.patients, per_study=args.per_study)
            loaded.pop("plan")
            marker.write_text(json.dumps(loaded))
            doc["load"] = loaded
            log(f"loaded {loaded['instances']} in {loaded['seconds']} s")
        ct_marker = data / f".bench-dicomweb-ct-{args.slices}.json"
        if ct_marker.exists():
            ct = json.loads(ct_marker.read_text())
            log(f"reusing the {args.slices}-slice CT series")
        else:
            log(f"ingesting a {args.slices}-slice 512x512 CT series")
            ct = load_ct(data, args.slices)
            ct_marker.write_text(json.dumps(ct))
        doc["ct"] = {k: v for k, v in ct.items() if k != "blobs"}
        token = get_token(data)
        auth = {"Authorization": f"Bearer {token}"}

        # static copies of what Coffre serves (ceilings)
        static = temp / "static"
        static.mkdir()
        blobs = [Path(p) for p in ct["blobs"]]
        with (static / "series.bin").open("wb") as out:
            for p in blobs:
                with p.open("rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
        doc["ceilings"]["dd read of the concatenated blobs (page cache warm)"] = dd_read(static / "series.bin")
        doc["ceilings"]["Python read of the blob files, 1 MiB pieces (warm)"] = python_read(blobs)

        queries = _query.make_queries(plan, args.requests)["by PatientID"]
        per_patient = args.studies // args.patients
        n = args.requests
        with server:
            base = f"http://127.0.0.1:{server.http_port}/dicomweb"
            qido_urls = [f"{base}/studies?PatientID={q['PatientID']}" for q in queries]
            meta_url = f"{base}/studies/{ct['study']}/series/{ct['series']}/metadata"
            wado_url = f"{base}/studies/{ct['study']}/series/{ct['series']}"
            jh = {**auth, "Accept": JSON_ACCEPT}
            wh = {**auth, "Accept": WADO_ACCEPT}
            # warm-up, and the bodies the static server will replay
            with httpx.Client(headers=jh, timeout=60) as c:
                (static / "qido.json").write_bytes(c.get(qido_urls[0]).content)
                (static / "metadata.json").write_bytes(c.get(meta_url).content)
                for u in qido_urls[:10]:
                    c.get(u)
            stream_httpx(wado_url, wh, 1)
            res: dict[str, Any] = {}
            log("QIDO-RS")
            c0 = server.cpu()
            res["QIDO-RS by PatientID, keep-alive"] = latency(qido_urls, jh, keep_alive=True, check_json_len=per_patient)
            res["QIDO-RS by PatientID, new connection per request"] = latency(qido_urls, jh, keep_alive=False,
                                                                              check_json_len=per_patient)
            doc["server_cpu_ms_per_qido"] = round(1000 * (server.cpu() - c0) / (2 * n), 2)
            res["Coffre /healthz, keep-alive (HTTP floor of Coffre)"] = latency(
                [f"http://127.0.0.1:{server.http_port}/healthz"] * n, {}, keep_alive=True)
            log("series metadata")
            c0 = server.cpu()
            res["series metadata, keep-alive"] = latency([meta_url] * args.metadata_requests, jh, keep_alive=True,
                                                         check_json_len=ct["slices"])
            doc["server_cpu_ms_per_metadata"] = round(1000 * (server.cpu() - c0) / args.metadata_requests, 2)
            log("WADO-RS series")
            c0 = server.cpu()
            res["WADO-RS series, httpx stream"] = stream_httpx(wado_url, wh, args.repeat)
            res["WADO-RS series, curl"] = stream_curl(wado_url, wh, args.repeat)
            cpu = server.cpu() - c0
            doc["server_cpu_ms_per_MB_wado"] = round(1000 * cpu / (2 * args.repeat * res["WADO-RS series, curl"]["bytes"] / 1e6), 3)
            if args.profile:
                OUT.mkdir(parents=True, exist_ok=True)
                for name, fn in (
                    ("qido", lambda: latency(qido_urls, jh, keep_alive=True)),
                    ("metadata", lambda: latency([meta_url] * args.metadata_requests, jh, keep_alive=True)),
                    ("wado", lambda: stream_httpx(wado_url, wh, args.repeat)),
                ):
                    log(f"profile: {name}")
                    spy = PySpy(server.pid, OUT / f"dicomweb-{name}.pyspy.txt")
                    fn()
                    spy.stop()
                    doc[f"profile_{name}"] = summarize_collapsed(OUT / f"dicomweb-{name}.pyspy.txt")
        doc["results"] = res
        if args.experiment:
            log("experiment: scoped-locate")
            patched = CoffreServer(data, command=(sys.executable, str(Path(__file__).with_name("_experiment_serve.py"))),
                                   extra_env={"BENCH_COFFRE_PATCHES": "scoped-locate"})
            with patched:
                pbase = f"http://127.0.0.1:{patched.http_port}/dicomweb"
                pmeta = f"{pbase}/studies/{ct['study']}/series/{ct['series']}/metadata"
                pwado = f"{pbase}/studies/{ct['study']}/series/{ct['series']}"
                latency([pmeta] * 5, jh, keep_alive=True)
                stream_httpx(pwado, wh, 1)
                c0 = patched.cpu()
                exp: dict[str, Any] = {"series metadata, keep-alive": latency(
                    [pmeta] * args.metadata_requests, jh, keep_alive=True, check_json_len=ct["slices"])}
                exp["server_cpu_ms_per_metadata"] = round(1000 * (patched.cpu() - c0) / args.metadata_requests, 2)
                exp["WADO-RS series, httpx stream"] = stream_httpx(pwado, wh, args.repeat)
                exp["WADO-RS series, curl"] = stream_curl(pwado, wh, args.repeat)
            doc["experiment_scoped_locate"] = exp

        log("ceilings: static servers")
        for mode in ("uvicorn", "sendfile"):
            with StaticServer(mode, static) as st:
                with httpx.Client(timeout=60) as c:
                    for _ in range(5):
                        c.get(f"{st.base}/qido.json")
                if mode == "uvicorn":
                    doc["ceilings"]["uvicorn static: QIDO body, keep-alive"] = latency([f"{st.base}/qido.json"] * n, {}, keep_alive=True)
                    doc["ceilings"]["uvicorn static: QIDO body, new connection per request"] = latency(
                        [f"{st.base}/qido.json"] * n, {}, keep_alive=False)
                    doc["ceilings"]["uvicorn static: metadata body, keep-alive"] = latency(
                        [f"{st.base}/metadata.json"] * args.metadata_requests, {}, keep_alive=True)
                stream_httpx(f"{st.base}/series.bin", {}, 1)
                c0 = st.cpu()
                doc["ceilings"][f"{mode} static: series file, httpx stream"] = stream_httpx(f"{st.base}/series.bin", {}, args.repeat)
                doc["ceilings"][f"{mode} static: series file, curl"] = stream_curl(f"{st.base}/series.bin", {}, args.repeat)
                size = doc["ceilings"][f"{mode} static: series file, curl"]["bytes"]
                doc["ceilings"][f"{mode} static: server CPU ms per MB"] = round(
                    1000 * (st.cpu() - c0) / (2 * args.repeat * size / 1e6), 3)
        doc["ratios"] = ratios(doc)
    finally:
        rmtree(temp)
    jpath, mpath = write_report("dicomweb", doc, markdown(doc))
    print(mpath.read_text())
    log(f"wrote {jpath} and {mpath}")


def ratios(doc: dict[str, Any]) -> dict[str, Any]:
    r, c = doc["results"], doc["ceilings"]
    q_ka, q_new = r["QIDO-RS by PatientID, keep-alive"], r["QIDO-RS by PatientID, new connection per request"]
    meta = r["series metadata, keep-alive"]
    w_httpx, w_curl = r["WADO-RS series, httpx stream"], r["WADO-RS series, curl"]
    return {
        "qido keep-alive median / static median": ratio(q_ka["median_ms"], c["uvicorn static: QIDO body, keep-alive"]["median_ms"]),
        "qido new-connection median / static median": ratio(
            q_new["median_ms"], c["uvicorn static: QIDO body, new connection per request"]["median_ms"]),
        "qido target met (keep-alive)": q_ka["median_ms"] <= TARGET_QIDO_MS,
        "qido target met (new connection)": q_new["median_ms"] <= TARGET_QIDO_MS,
        "metadata median / static median": ratio(meta["median_ms"], c["uvicorn static: metadata body, keep-alive"]["median_ms"]),
        "metadata target met": meta["median_ms"] <= TARGET_METADATA_MS,
        "wado httpx / uvicorn static httpx": ratio(w_httpx["MB_per_s"], c["uvicorn static: series file, httpx stream"]["MB_per_s"]),
        "wado httpx / sendfile static httpx": ratio(w_httpx["MB_per_s"], c["sendfile static: series file, httpx stream"]["MB_per_s"]),
        "wado curl / uvicorn static curl": ratio(w_curl["MB_per_s"], c["uvicorn static: series file, curl"]["MB_per_s"]),
        "wado curl / sendfile static curl": ratio(w_curl["MB_per_s"], c["sendfile static: series file, curl"]["MB_per_s"]),
        "wado target met (httpx)": w_httpx["MB_per_s"] >= TARGET_WADO_MBPS,
        "wado target met (curl)": w_curl["MB_per_s"] >= TARGET_WADO_MBPS,
    }


def _met(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def markdown(doc: dict[str, Any]) -> str:
    m, r, c, rt, ld, ct = doc["machine"], doc["results"], doc["ceilings"], doc["ratios"], doc["load"], doc["ct"]
    lines = [
        "# DICOMweb benchmark", "",
        f"{m['date']} | {m['nproc']} x {m['cpu']} | Python {m['python']} | load at start {m['loadavg_at_start']}", "",
        f"Index: {ld['instances']} instances ({ld['studies']} studies, {ld['patients']} patients)"
        f"{' (reused)' if ld.get('reused') else ''}, plus one CT series of {ct['slices']} slices 512x512 "
        f"({ct['bytes'] / 1e6:.1f} MB). Client: httpx {__import__('httpx').__version__} in this process, "
        "and curl for the throughput.", "",
        "## Latency", "",
        "| request | median ms | p95 ms | body bytes | ceiling: same body from uvicorn static, median ms | ratio | target |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    q_ka, q_new = r["QIDO-RS by PatientID, keep-alive"], r["QIDO-RS by PatientID, new connection per request"]
    meta = r["series metadata, keep-alive"]
    s_ka, s_new = c["uvicorn static: QIDO body, keep-alive"], c["uvicorn static: QIDO body, new connection per request"]
    s_meta = c["uvicorn static: metadata body, keep-alive"]
    lines += [
        f"| QIDO-RS /studies?PatientID=, keep-alive | **{q_ka['median_ms']}** | {q_ka['p95_ms']} | {q_ka['mean_body_bytes']} | "
        f"{s_ka['median_ms']} | {rt['qido keep-alive median / static median']} | <= 10 ms: {_met(rt['qido target met (keep-alive)'])} |",
        f"| QIDO-RS /studies?PatientID=, new connection | **{q_new['median_ms']}** | {q_new['p95_ms']} | {q_new['mean_body_bytes']} | "
        f"{s_new['median_ms']} | {rt['qido new-connection median / static median']} | <= 10 ms: {_met(rt['qido target met (new connection)'])} |",
        f"| series metadata ({ct['slices']} instances), keep-alive | **{meta['median_ms']}** | {meta['p95_ms']} | "
        f"{meta['mean_body_bytes']} | {s_meta['median_ms']} | {rt['metadata median / static median']} | "
        f"<= 30 ms: {_met(rt['metadata target met'])} |",
    ]
    h = r["Coffre /healthz, keep-alive (HTTP floor of Coffre)"]
    lines += ["", f"Coffre `/healthz`, keep-alive: median {h['median_ms']} ms, p95 {h['p95_ms']} ms. "
              f"Server CPU per QIDO request: {doc['server_cpu_ms_per_qido']} ms; per metadata request: "
              f"{doc['server_cpu_ms_per_metadata']} ms.", "",
              "## WADO-RS whole series (transfer-syntax=*)", "",
              "| source | client | MB/s (median) | runs | body bytes | Coffre / this |", "| --- | --- | ---: | --- | ---: | ---: |"]
    wh, wc = r["WADO-RS series, httpx stream"], r["WADO-RS series, curl"]
    lines.append(f"| **Coffre** | httpx stream | **{wh['MB_per_s']}** | {wh['runs_MB_per_s']} | {wh['bytes']} | |")
    lines.append(f"| **Coffre** | curl | **{wc['MB_per_s']}** | {wc['runs_MB_per_s']} | {wc['bytes']} | |")
    for mode in ("uvicorn", "sendfile"):
        for client, key in (("httpx stream", "httpx"), ("curl", "curl")):
            v = c[f"{mode} static: series file, {client}"]
            coffre = wh if key == "httpx" else wc
            lines.append(f"| {mode} static file | {client} | {v['MB_per_s']} | {v['runs_MB_per_s']} | {v['bytes']} | "
                         f"{ratio(coffre['MB_per_s'], v['MB_per_s'])} |")
    for name in ("dd read of the concatenated blobs (page cache warm)", "Python read of the blob files, 1 MiB pieces (warm)"):
        v = c[name]
        lines.append(f"| {name} | - | {v['MB_per_s']} | - | {v['bytes']} | {ratio(wh['MB_per_s'], v['MB_per_s'])} (httpx) |")
    lines += ["", f"Target >= 800 MB/s: httpx {_met(rt['wado target met (httpx)'])}, curl {_met(rt['wado target met (curl)'])}. "
              f"Server CPU per MB sent: Coffre {doc['server_cpu_ms_per_MB_wado']} ms, uvicorn static "
              f"{c['uvicorn static: server CPU ms per MB']} ms, sendfile static {c['sendfile static: server CPU ms per MB']} ms.", ""]
    exp = doc.get("experiment_scoped_locate")
    if exp:
        em = exp["series metadata, keep-alive"]
        lines += ["## Experiment: facility scope also on series and study in `index.retrieve.locate`", "",
                  "Same data and clients; the server is `benchmarks/_experiment_serve.py serve` with "
                  "`BENCH_COFFRE_PATCHES=scoped-locate`.", "",
                  "| request | patched | unpatched (above) | target |", "| --- | ---: | ---: | --- |",
                  f"| series metadata median ms (p95) | **{em['median_ms']}** ({em['p95_ms']}) | {meta['median_ms']} "
                  f"({meta['p95_ms']}) | <= 30 ms: {_met(em['median_ms'] <= TARGET_METADATA_MS)} |",
                  f"| server CPU ms per metadata request | {exp['server_cpu_ms_per_metadata']} | "
                  f"{doc['server_cpu_ms_per_metadata']} | |"]
        for client in ("httpx stream", "curl"):
            e, u = exp[f"WADO-RS series, {client}"], r[f"WADO-RS series, {client}"]
            lines.append(f"| WADO-RS series MB/s, {client} | **{e['MB_per_s']}** {e['runs_MB_per_s']} | {u['MB_per_s']} | "
                         f">= 800 MB/s: {_met(e['MB_per_s'] >= TARGET_WADO_MBPS)} |")
        lines.append("")
    for name in ("qido", "metadata", "wado"):
        if f"profile_{name}" in doc:
            lines.append(profile_markdown(f"py-spy, Coffre server during an extra {name} run", doc[f"profile_{name}"]))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
