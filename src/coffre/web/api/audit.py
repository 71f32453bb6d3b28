"""REST: the audit trail, for auditors (``/api/audit``).

- ``GET /api/audit/events?since&until&action&actor&facility&person&limit&cursor``:
  events in time order within the caller's facilities (``limit`` ≤ 1000; pass
  ``next_cursor`` back as ``cursor`` for the next page).
- ``GET /api/audit/persons/{person_id}/report``: the patient access report — which
  facility, roles and purpose accessed which study, when. User names for auditors;
  "staff" for a facility admin answering a patient's request.
- ``GET /api/audit/verify?expect_head=ID:HASH``: check the hash chain.

Every route calls one function of ``services.audit``, which authorizes
(``READ_AUDIT``) and audits the read itself.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query

from coffre.services import audit
from coffre.web.deps import ActorDep, ContextDep

router = APIRouter(tags=["audit"])


def _utc(value: datetime | None) -> datetime | None:
    """A date-time without a zone is UTC."""
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _event(row: Any) -> dict[str, Any]:
    doc = asdict(row)
    doc["at"] = row.at.isoformat()
    return doc


@router.get("/audit/events", summary="Search audit events (auditors)")
def events(
    ctx: ContextDep,
    actor: ActorDep,
    since: datetime | None = None,
    until: datetime | None = None,
    action: Annotated[str | None, Query(max_length=48)] = None,
    actor_name: Annotated[str | None, Query(alias="actor", max_length=100)] = None,
    facility: Annotated[str | None, Query(max_length=32)] = None,
    person: Annotated[int | None, Query(ge=1)] = None,
    limit: Annotated[int, Query(ge=1, le=audit.MAX_PAGE)] = 100,
    cursor: Annotated[int | None, Query(ge=0)] = None,
) -> dict[str, Any]:
    page = audit.search_events(ctx, actor, since=_utc(since), until=_utc(until), action=action,
                               actor_name=actor_name, facility=facility, person_id=person, limit=limit,
                               cursor=cursor)
    return {"events": [_event(e) for e in page.events],
            "next_cursor": str(page.next_cursor) if page.next_cursor is not None else None}


@router.get("/audit/persons/{person_id}/report", summary="Who accessed a person's data")
def person_report(ctx: ContextDep, actor: ActorDep, person_id: int) -> dict[str, Any]:
    found = audit.access_report(ctx, actor, person_id)
    entries = []
    for e in found.entries:
        doc = asdict(e)
        doc["at"] = e.at.isoformat()
        doc["roles"] = list(e.roles)
        entries.append(doc)
    return {"person_id": found.person_id, "persons": list(found.persons), "staff_names": found.staff_names,
            "truncated": found.truncated, "entries": entries}


@router.get("/audit/verify", summary="Verify the audit hash chain (auditors)")
def verify(
    ctx: ContextDep, actor: ActorDep,
    expect_head: Annotated[str | None, Query(max_length=100)] = None,
) -> dict[str, Any]:
    report = audit.verify_chain(ctx, actor, anchor=expect_head)
    return {"ok": report.ok, "events": report.events,
            "head": {"id": report.head_id, "hash": report.head_hash},
            "first_bad_id": report.first_bad_id,
            "findings": [asdict(f) for f in report.findings], "more_findings": report.more_findings}
