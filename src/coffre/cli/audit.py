"""``coffre audit``: verify the hash chain, print its head, search events, report a
person's accesses, export to the external audit repository (docs/audit.md).

The operator acts as the system actor: territory-wide, with staff names; reading the
trail is audited like any other read.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from coffre.cli.common import OPERATOR, DataOption, _context, _typer, err, out

audit_app = _typer("The tamper-evident audit trail.")

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _instant(value: str | None, name: str) -> datetime | None:
    """ISO 8601; a value without a time zone is UTC."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        err.print(f"[red]error:[/red] {name} must be an ISO 8601 date or date-time")
        raise typer.Exit(2) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")


@audit_app.command("verify")
def verify(
    data: DataOption,
    expect_head: Annotated[str | None, typer.Option(
        "--expect-head", help="An earlier head (ID:HASH from `coffre audit head`) that must still be in the chain.",
    )] = None,
    as_json: JsonOption = False,
) -> None:
    """Check the hash chain of every audit event; exit 1 if anything was changed."""
    from coffre.services.audit import verify_chain

    with _context(data) as ctx:
        report = verify_chain(ctx, OPERATOR, anchor=expect_head)
    if as_json:
        _json({"ok": report.ok, "events": report.events, "head": {"id": report.head_id, "hash": report.head_hash},
               "first_bad_id": report.first_bad_id, "findings": [asdict(f) for f in report.findings],
               "more_findings": report.more_findings})
    elif report.ok:
        out.print(f"audit chain intact: {report.events} events"
                  + (f", head {report.head_id}:{report.head_hash}" if report.head_id else ""), soft_wrap=True)
    else:
        total = len(report.findings) + report.more_findings
        out.print(f"audit chain BROKEN: {total} finding(s) in {report.events} events, "
                  f"first bad event #{report.first_bad_id}")
        for f in report.findings:
            out.print(f"  {f.kind:<9} #{f.event_id}: {escape(f.message)}", soft_wrap=True)
        if report.more_findings:
            out.print(f"  … and {report.more_findings} more")
    if not report.ok:
        raise typer.Exit(1)


@audit_app.command("head")
def head(data: DataOption, as_json: JsonOption = False) -> None:
    """Print ID:HASH of the newest event; keep it elsewhere as an anchor for `verify --expect-head`."""
    from coffre.services.audit import chain_head

    with _context(data) as ctx:
        found = chain_head(ctx, OPERATOR)
    if as_json:
        _json({"id": found[0], "hash": found[1]} if found else {"id": None, "hash": None})
        return
    if found is None:
        out.print("the audit trail is empty")
        return
    sys.stdout.write(f"{found[0]}:{found[1]}\n")


@audit_app.command("search")
def search(
    data: DataOption,
    since: Annotated[str | None, typer.Option(help="From this instant (ISO 8601, UTC if no zone).")] = None,
    until: Annotated[str | None, typer.Option(help="Before this instant.")] = None,
    action: Annotated[str | None, typer.Option(help="Only this action (store, query, move, break-glass, …).")] = None,
    actor: Annotated[str | None, typer.Option(help="Only this actor name (AE title, user, token).")] = None,
    facility: Annotated[str | None, typer.Option(help="Only events of this facility (slug).")] = None,
    person: Annotated[int | None, typer.Option(help="Only events about this person id.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many events (1-1000).")] = 100,
    cursor: Annotated[int | None, typer.Option(help="Continue after this event id.")] = None,
    as_json: JsonOption = False,
) -> None:
    """List audit events in time order."""
    from coffre.services.audit import search_events

    since_at, until_at = _instant(since, "--since"), _instant(until, "--until")
    with _context(data) as ctx:
        page = search_events(ctx, OPERATOR, since=since_at, until=until_at, action=action, actor_name=actor,
                             facility=facility, person_id=person, limit=limit, cursor=cursor)
    if as_json:
        _json({"events": [asdict(e) for e in page.events], "next_cursor": page.next_cursor})
        return
    table = Table("#", "at", "action", "outcome", "actor", "facility", "object", "person", "detail")
    for e in page.events:
        table.add_row(str(e.id), e.at.isoformat(timespec="seconds"), e.action, e.outcome,
                      escape(f"{e.actor_kind}:{e.actor_name}"), str(e.facility_id or ""),
                      escape(f"{e.object_type}:{e.object_id}" if e.object_type else ""),
                      str(e.person_id or ""), escape(json.dumps(e.detail, sort_keys=True)))
    out.print(table)
    if page.next_cursor is not None:
        out.print(f"more: --cursor {page.next_cursor}")


@audit_app.command("report")
def report(
    data: DataOption,
    person: Annotated[int, typer.Option("--person", help="Person id.")],
    for_patient: Annotated[bool, typer.Option(
        "--for-patient", help="Replace user names by 'staff' (a copy for the patient).")] = False,
    as_json: JsonOption = False,
) -> None:
    """Who accessed a person's data: facility, roles, purpose, study, when."""
    from coffre.services.audit import access_report

    with _context(data) as ctx:
        found = access_report(ctx, OPERATOR, person, staff_names=not for_patient)
    if as_json:
        _json({"person_id": found.person_id, "persons": list(found.persons), "staff_names": found.staff_names,
               "truncated": found.truncated, "entries": [asdict(e) for e in found.entries]})
        return
    table = Table("when", "category", "action", "outcome", "facility", "roles", "who", "purpose", "study")
    for e in found.entries:
        table.add_row(e.at.isoformat(timespec="seconds"), e.category, e.action, e.outcome, e.facility,
                      ",".join(e.roles), escape(e.actor), e.purpose, e.study_uid)
    out.print(f"access report of person {found.person_id}")
    out.print(table)
    if found.truncated:
        out.print("(truncated: the oldest events are listed)")


@audit_app.command("export")
def export(
    data: DataOption,
    once: Annotated[bool, typer.Option("--once", help="Drain the spool once and exit.")] = False,
) -> None:
    """Send the audit events not yet exported to the repository of [audit] syslog_host.

    With --once: exit 0 when everything was delivered, 1 when the repository is
    unreachable or another process holds the export lease. Without: keep exporting
    every [audit] syslog_interval_seconds until SIGINT/SIGTERM.
    """
    from coffre.services.audit_export import Exporter, ExporterThread, RepositoryUnavailable

    with _context(data) as ctx:
        exporter = Exporter(ctx)
        if once:
            try:
                result = exporter.drain()
            except RepositoryUnavailable as exc:
                err.print(f"[red]error:[/red] audit repository unavailable: {escape(str(exc))}")
                raise typer.Exit(1) from None
            finally:
                exporter.release()
            if not result.leased:
                err.print("[red]error:[/red] another process is exporting to this repository (lease held)")
                raise typer.Exit(1)
            out.print(f"exported {result.sent} event(s) to {exporter.repository}; cursor at event #{result.cursor}")
            return
        thread = ExporterThread(ctx, exporter)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        thread.start()
        out.print(f"exporting the audit trail to {exporter.repository} (Ctrl-C to stop)")
        sys.stdout.flush()
        while not stop.wait(1.0):
            pass
        thread.stop()
    out.print("audit export stopped")
