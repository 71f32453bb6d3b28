"""The ``coffre`` command line (Typer + Rich).

This adapter is the only place that reads the process environment: it passes
``os.environ`` to ``load_settings``. Commands act as the system actor (the operator
of the archive) and every change they make is audited by the services.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from coffre import __version__, logs
from coffre.cli.common import OPERATOR, DataOption, _context, _progress, _typer, err, out
from coffre.model import Actor
from coffre.settings import DEFAULT_TOML, SETTINGS_FILE

app = _typer("Coffre territorial imaging archive.")


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at INFO level.")] = False,
) -> None:
    logs.configure(logging.INFO if verbose else logging.WARNING)


@app.command()
def version() -> None:
    """Print the version."""
    out.print(__version__)


@app.command()
def init(data: DataOption, force: Annotated[bool, typer.Option(help="Overwrite an existing settings file.")] = False) -> None:
    """Create the data folder with a commented default settings file."""
    data.mkdir(parents=True, exist_ok=True)
    target = data / SETTINGS_FILE
    if target.exists() and not force:
        err.print(f"{target} exists; use --force to overwrite")
        raise typer.Exit(1)
    target.write_text(DEFAULT_TOML, encoding="utf-8")
    with _context(data):
        pass
    out.print(f"initialised {data} (settings: {target})")


@app.command()
def demo(data: DataOption) -> None:
    """Load the demo territory (facilities, nodes, synthetic patients); idempotent."""
    from coffre.services.demo import load_demo

    _ensure_settings(data)
    with _context(data) as ctx, _progress("demo") as progress:
        summary = load_demo(ctx, progress=progress)
    if summary.loaded:
        out.print(f"demo territory loaded: {summary.facilities} facilities, {summary.instances} instances")
    else:
        out.print("demo territory already loaded")


def _ensure_settings(data: Path) -> None:
    data.mkdir(parents=True, exist_ok=True)
    target = data / SETTINGS_FILE
    if not target.exists():
        target.write_text(DEFAULT_TOML, encoding="utf-8")


@app.command()
def serve(
    data: DataOption,
    load_demo_territory: Annotated[bool, typer.Option("--demo", help="Load the demo territory first (once).")] = False,
) -> None:
    """Run the DIMSE listener and the HTTP server in one process until SIGINT/SIGTERM."""
    import uvicorn

    from coffre.net.dimse import DimseServer
    from coffre.net.workers import DimseWorkers, Dispatcher
    from coffre.services.audit import record_application
    from coffre.services.audit_export import start_exporter
    from coffre.services.demo import load_demo
    from coffre.web.http import create_app

    _ensure_settings(data)
    with _context(data) as ctx:
        if load_demo_territory:
            with _progress("demo") as progress:
                load_demo(ctx, progress=progress)
        s = ctx.settings
        # [dicom] workers > 1: this process accepts on the DICOM port and hands each
        # connection in turn to itself and to workers - 1 worker processes (net.workers)
        dispatcher = Dispatcher(s.dicom.host, s.dicom.port) if s.dicom.workers > 1 else None
        handoff = (dispatcher.add_target()[1], dispatcher.address) if dispatcher is not None else None
        dimse = DimseServer(ctx, handoff=handoff)
        dicom_host, dicom_port = dimse.start()
        workers = DimseWorkers(s, dispatcher)
        workers.start()
        if dispatcher is not None:
            dispatcher.start()
        # The start-up heap (SQLAlchemy, pydicom's dictionaries, the presentation contexts)
        # lives as long as the process: out of the collector's sight, a full collection no
        # longer walks it with the GIL held (~90 ms here; docs/performance.md, section 4).
        gc.freeze()
        record_application(ctx, "start")
        exporter = start_exporter(ctx)  # the audit trail to [audit] syslog_host, if set
        http_socket = listening_socket(s.http.host, s.http.port)
        http_port = http_socket.getsockname()[1]
        config = uvicorn.Config(create_app(ctx), log_level="warning", access_log=False, lifespan="off")
        server = uvicorn.Server(config)
        stop = threading.Event()

        def _stop(_signum: int, _frame: Any) -> None:
            stop.set()
            server.should_exit = True

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        out.print(
            f"Coffre {__version__} ready: DICOM {s.archive.ae_title}@{dicom_host}:{dicom_port}, "
            f"HTTP http://{s.http.host}:{http_port}/healthz, "
            + (f"DICOM TLS {s.archive.ae_title}@{dimse.tls_address[0]}:{dimse.tls_address[1]}, "
               if dimse.tls_address else "")
            + f"data {s.data_dir}",
            soft_wrap=True,
        )
        if workers.count:
            out.print(f"DICOM port served by {workers.count + 1} processes (pids {os.getpid()}, "
                      f"{', '.join(map(str, workers.pids))})", soft_wrap=True)
        from coffre.viewer.bundle import status_line as viewer_status_line

        out.print(viewer_status_line(s.data_dir, f"http://{s.http.host}:{http_port}"), soft_wrap=True)
        sys.stdout.flush()
        try:
            server.run(sockets=[http_socket])
        finally:
            if dispatcher is not None:
                dispatcher.close()
            workers.stop()
            dimse.stop()
            record_application(ctx, "stop")
            if exporter is not None:
                exporter.stop()
    out.print("Coffre stopped")


def listening_socket(host: str, port: int) -> socket.socket:
    """The HTTP listening socket, created with IPPROTO_TCP explicitly: asyncio sets
    TCP_NODELAY on accepted connections only then, and without it a small response
    waits ~40 ms for the client's delayed ACK (measured: one frame 48 ms → 3.5 ms)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    return sock


@app.command("import")
def import_(
    data: DataOption,
    facility: Annotated[str, typer.Option("--facility", "-f", help="Slug of the facility the files belong to.")],
    paths: Annotated[list[Path], typer.Argument(help="Files, folders or DICOMDIR files.")],
) -> None:
    """Import DICOM files through the ingest service; prints a summary."""
    from coffre.services.facilities import get_facility
    from coffre.services.importer import import_paths

    with _context(data) as ctx:
        fac = get_facility(ctx, facility)
        with _progress("import") as progress:
            summary = import_paths(ctx, Actor.system("import", facility=fac), paths, progress=progress)
    out.print(f"stored: {summary.stored}, duplicate: {summary.duplicate}, "
              f"new version: {summary.new_version}, rejected: {summary.rejected_total}")
    for reason, count in sorted(summary.rejected.items()):
        out.print(f"  rejected {count}: {escape(reason)}")
    if summary.rejected_total:
        raise typer.Exit(1)


@app.command()
def check(
    data: DataOption,
    verify: Annotated[bool, typer.Option(help="Verify SHA-256 and size of every blob.")] = True,
    repair: Annotated[bool, typer.Option(help="Remove unacknowledged leftovers and orphan blobs.")] = False,
    grace: Annotated[float, typer.Option(help="Seconds a pending ingest may still be in progress.")] = 600.0,
) -> None:
    """Reconcile the index and the blob store; exit 1 if anything is missing or corrupt."""
    from coffre.services.check import check as run_check

    with _context(data) as ctx, _progress("check") as progress:
        report = run_check(ctx, OPERATOR, verify=verify, repair=repair, grace_seconds=grace, progress=progress)
    out.print(f"files: {report.files}, verified: {report.verified}, missing: {len(report.missing)}, "
              f"corrupt: {len(report.corrupt)}, unacknowledged leftovers: {len(report.pending)}, "
              f"orphan blobs: {len(report.orphans)}, temp files: {len(report.temp_files)}, "
              f"repaired: {report.repaired}")
    for key in report.missing:
        out.print(f"  missing {key}")
    for key in report.corrupt:
        out.print(f"  corrupt {key}")
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def info(data: DataOption, as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Print the archive's AE title, ports, each facility with its nodes, and the demo users."""
    from coffre.index.instances import counts_by_facility
    from coffre.services.demo import demo_tokens, demo_users
    from coffre.services.facilities import list_facilities, list_nodes

    with _context(data) as ctx:
        s = ctx.settings
        with ctx.db.read() as tx:
            counts = {c.slug: c for c in counts_by_facility(tx)}
        doc: dict[str, Any] = {
            "version": __version__,
            "data": str(s.data_dir),
            "ae_title": s.archive.ae_title,
            "dicom": {"host": s.dicom.host, "port": s.dicom.port},
            "http": {"host": s.http.host, "port": s.http.port, "url": f"http://{s.http.host}:{s.http.port}"},
            "dicomweb": {"url": f"http://{s.http.host}:{s.http.port}{s.http.dicomweb_base}"},
            "index": s.index_url.split("://", 1)[0] if "@" in s.index_url else s.index_url,
            "facilities": [],
        }
        tokens = demo_tokens(ctx)
        for fac in list_facilities(ctx):
            c = counts.get(fac.slug)
            doc["facilities"].append({
                "slug": fac.slug, "name": fac.name, "issuer": fac.issuer,
                "patients": c.patients if c else 0, "studies": c.studies if c else 0,
                "instances": c.instances if c else 0, "bytes": c.bytes if c else 0,
                "nodes": [
                    {"ae_title": n.ae_title, "host": n.host, "port": n.port,
                     "permissions": sorted(p.value for p in n.permissions)}
                    for n in list_nodes(ctx, fac.slug)
                ],
                **({"demo_token": tokens[fac.slug]} if fac.slug in tokens else {}),
            })
        # the demo's users and their public, documented passwords (docs/authentication.md)
        doc["demo_users"] = [
            {"username": u.username, "display_name": u.display_name,
             "roles": sorted(r.value for r in u.roles), "facilities": list(u.facilities), "password": u.password}
            for u in demo_users(ctx)
        ]
    if as_json:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return
    out.print(f"Coffre {doc['version']}  AE {doc['ae_title']}  DICOM {s.dicom.host}:{s.dicom.port}  "
              f"HTTP {doc['http']['url']}")
    table = Table("facility", "name", "issuer", "studies", "instances", "nodes")
    for f in doc["facilities"]:
        nodes = ", ".join(f"{n['ae_title']}@{n['host']}:{n['port']}" for n in f["nodes"])
        table.add_row(f["slug"], f["name"], f["issuer"], str(f["studies"]), str(f["instances"]), nodes)
    out.print(table)
    if doc["demo_users"]:
        users = Table("demo user", "roles", "facilities", "password")
        for u in doc["demo_users"]:
            users.add_row(u["username"], ",".join(u["roles"]), ",".join(u["facilities"]), u["password"])
        out.print(users)


@app.command()
def conflicts(
    data: DataOption,
    facility: Annotated[str | None, typer.Option(help="Only this facility.")] = None,
) -> None:
    """List SOP Instance UIDs received twice with different content."""
    from coffre.services.conflicts import list_conflicts

    with _context(data) as ctx:
        rows = list_conflicts(ctx, facility)
    table = Table("#", "facility", "SOP Instance UID", "previous sha256", "new sha256", "detected", "source")
    for c in rows:
        table.add_row(str(c.id), c.facility_slug, c.sop_instance_uid, c.previous_sha256[:12],
                      c.new_sha256[:12], c.detected_at.isoformat(timespec="seconds"), c.source)
    out.print(table)


@app.command()
def conformance() -> None:
    """Print the DICOM conformance statement (Markdown), generated from the code."""
    from coffre.conformance import statement

    sys.stdout.write(statement())


def _register() -> None:
    """Attach the command groups that live in their own modules."""
    from coffre.cli import audit, grants, identity, nodes, shares, users, viewer

    app.add_typer(nodes.facility_app, name="facility")
    app.add_typer(nodes.node_app, name="node")
    app.add_typer(users.token_app, name="token")
    app.add_typer(users.user_app, name="user")
    app.add_typer(identity.person_app, name="person")
    app.add_typer(identity.reconcile_app, name="reconcile")
    app.add_typer(grants.grant_app, name="grant")
    app.add_typer(audit.audit_app, name="audit")
    app.add_typer(viewer.viewer_app, name="viewer")
    app.add_typer(shares.share_app, name="share")


_register()


def main() -> None:
    app()
