"""The one audit function (DESIGN rule 3), and the ways to read the trail.

``record`` writes an event in the caller's transaction, so an action and its audit
event commit or roll back together; it appends to the hash chain of
``index/audit.py``. ``record_alone`` is for events with no transaction of their own (a
rejected association, a refused object). Details hold archive identifiers (UIDs,
keys, statuses) and no demographics, with one deliberate exception: a query event
keeps the query's matching keys and values (a name, a PatientID, a birth date), as the
DICOM Query audit message does (PS3.15 A.5.3.7), because "who searched for whom" is
what a patient and an auditor must be able to see. The audit trail is access
controlled (auditors only) and never written to application logs; ``record`` adds who acted, as
``detail["by"]``: the facility the actor acts for (slug), its roles, its stable
subject and the id of its access token.

Reading the trail is itself audited (``audit-search``, ``audit-report``,
``audit-verify``; DICOM "Audit Log Used"). Auditors (``Action.READ_AUDIT``) see the
events of their facilities; only the system actor (the operator at the command line)
sees the whole territory, including events of no facility (refused associations,
unknown tokens). The patient access report (:func:`access_report`) lists who — which
facility, which roles, for which purpose — touched one person's data, from the events
that carry the person's id; staff names only for auditors.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from coffre import __version__
from coffre.app import Context
from coffre.dicom import audit_message
from coffre.errors import BadRequest, NotAuthorized, NotFound
from coffre.index import audit as audit_index
from coffre.index import facilities as facility_index
from coffre.index.audit import AuditRow, ChainReport
from coffre.index.engine import Tx
from coffre.index.grants import GrantRow, list_grants
from coffre.index.persons import current_person, identities_of
from coffre.model import Actor, ActorKind
from coffre.services.access import Action, Resource, actions_of, authorize, is_allowed

log = logging.getLogger(__name__)

#: most events one search returns (REST ``limit`` ≤ this)
MAX_PAGE = 1000
#: most entries one access report lists
MAX_REPORT = 10_000
#: what a non-auditor sees instead of a user's name
STAFF = "staff"


def actor_detail(actor: Actor) -> dict[str, Any]:
    """Who acted, with which role, for which facility: identifiers only."""
    by: dict[str, Any] = {}
    if actor.facility is not None:
        by["facility"] = actor.facility.slug
    if actor.roles:
        by["roles"] = sorted(r.value for r in actor.roles)
    if actor.subject:
        by["subject"] = actor.subject
    if actor.token_id:
        by["token"] = actor.token_id
    if actor.tls:
        by["tls"] = True
    return by


#: the longest reason a person states for an audited action (grant, identity change)
MAX_REASON = 500


def stated_reason(text: str) -> str:
    """A reason a person states for an audited action: required, one line, bounded."""
    reason = " ".join(text.split())
    if not reason:
        raise BadRequest("a reason is required")
    if len(reason) > MAX_REASON:
        raise BadRequest(f"the reason is longer than {MAX_REASON} characters")
    return reason


def record(
    ctx: Context,
    tx: Tx,
    actor: Actor,
    action: str,
    *,
    outcome: str = "success",
    facility_id: int | None = None,
    object_type: str = "",
    object_id: str = "",
    person_id: int | None = None,
    detail: Mapping[str, Any] | None = None,
) -> None:
    stored = dict(detail or {})
    by = actor_detail(actor)
    if by and "by" not in stored:
        stored["by"] = by
    audit_index.insert_event(
        tx,
        at=ctx.clock(),
        action=action,
        outcome=outcome,
        actor_kind=actor.kind.value,
        actor_name=actor.name,
        actor_address=actor.address,
        facility_id=facility_id if facility_id is not None else actor.facility_id,
        object_type=object_type,
        object_id=object_id,
        person_id=person_id,
        detail=stored,
    )


def record_alone(ctx: Context, actor: Actor, action: str, **kwargs: Any) -> None:
    with ctx.db.write() as tx:
        record(ctx, tx, actor, action, **kwargs)


def record_application(ctx: Context, event: str) -> None:
    """``application-start`` / ``application-stop`` of ``coffre serve`` (DCM 110120/110121).

    A failure is logged, not raised: it must not keep the archive from stopping."""
    try:
        record_alone(ctx, Actor.system("coffre"), f"application-{event}", detail={"version": __version__})
    except Exception as exc:
        log.error("could not audit application-%s: %s", event, type(exc).__name__)


# -- reading the trail ----------------------------------------------------------------


def _reader_scope(actor: Actor) -> frozenset[int] | None:
    """The facilities whose events ``actor`` may read; None = all (the system actor)."""
    authorize(actor, Action.READ_AUDIT, Resource(None))
    if actor.kind is ActorKind.SYSTEM and actor.facility is None:
        return None
    return actor.facility_ids


@dataclass(frozen=True, slots=True)
class EventPage:
    events: list[AuditRow]
    #: pass as ``cursor`` to get the next page; None when this page is the last
    next_cursor: int | None


def search_events(
    ctx: Context,
    actor: Actor,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    action: str | None = None,
    actor_name: str | None = None,
    facility: str | None = None,
    person_id: int | None = None,
    limit: int = 100,
    cursor: int | None = None,
) -> EventPage:
    """Events in time (id) order, within the reader's facilities, filtered."""
    if not 0 < limit <= MAX_PAGE:
        raise BadRequest(f"limit must be 1 to {MAX_PAGE}")
    if cursor is not None and cursor < 0:
        raise BadRequest("invalid cursor")
    scope = _reader_scope(actor)
    with ctx.db.read() as tx:
        facility_id = None
        if facility is not None:
            fac = facility_index.get_facility(tx, facility)
            authorize(actor, Action.READ_AUDIT, Resource(fac.id))
            facility_id = fac.id
        persons = None
        if person_id is not None:
            person_id = current_person(tx, person_id)
            persons = audit_index.persons_merged_into(tx, person_id)
        rows = audit_index.search(tx, facility_ids=scope, since=since, until=until, action=action,
                                  actor_name=actor_name, facility_id=facility_id, person_ids=persons,
                                  after_id=cursor or 0, limit=limit + 1)
    page = EventPage(rows[:limit], rows[limit - 1].id if len(rows) > limit else None)
    filters = {k: v for k, v in (("since", since and since.isoformat()), ("until", until and until.isoformat()),
                                 ("action", action), ("actor", actor_name), ("facility", facility))
               if v is not None}
    record_alone(ctx, actor, "audit-search", object_type="audit", person_id=person_id,
                 detail={"filters": filters, "events": len(page.events)})
    return page


@dataclass(frozen=True, slots=True)
class AccessEntry:
    """One event of a person's access report."""

    event_id: int
    at: datetime
    action: str
    outcome: str
    #: access (query, retrieve), security (grants, break-the-glass), record (store,
    #: identity, opposition), audit (someone read this report)
    category: str
    #: the facility the actor acted for (slug)
    facility: str
    actor_kind: str
    roles: tuple[str, ...]
    #: the user's name for auditors, "staff" for anyone else; a node's AE title
    actor: str
    #: why the actor could reach the data: own (its facility's patient), care, reading,
    #: break-glass, shared, system (the operator); "" when unknown
    purpose: str
    study_uid: str
    object_type: str
    object_id: str


@dataclass(frozen=True, slots=True)
class AccessReport:
    person_id: int
    #: the person and the persons merged into it, whose events are included
    persons: tuple[int, ...]
    staff_names: bool
    entries: list[AccessEntry]
    #: more than MAX_REPORT events: the oldest are listed
    truncated: bool


_CATEGORIES = {
    audit_message.QUERY: "access", audit_message.INSTANCES_ACCESSED: "access",
    audit_message.INSTANCES_TRANSFERRED: "access", audit_message.EXPORT: "access",
    audit_message.SECURITY_ALERT: "security", audit_message.USER_AUTHENTICATION: "security",
    audit_message.AUDIT_LOG_USED: "audit",
}


def _category(row: AuditRow) -> str:
    if row.action == "store":
        return "record"
    kind = audit_message.kind_of(row.action, row.detail)
    if kind.event_id == audit_message.PATIENT_RECORD and kind.action_code == "R":
        return "access"  # a person's record or timeline was read
    return _CATEGORIES.get(kind.event_id, "record")


def _in_force(grant: GrantRow, at: datetime) -> bool:
    end = min(grant.expires_at, grant.revoked_at) if grant.revoked_at else grant.expires_at
    return grant.created_at <= at <= end


def _purpose(
    ctx: Context, row: AuditRow, holders: frozenset[int], grants: Iterable[GrantRow], facility_ids: Mapping[str, int],
) -> str:
    """Why the actor could reach the person's data (what the services recorded, else
    reconstructed from the grants in force at the time)."""
    for key in ("purpose", "access"):  # retrieve events record "access" (services/retrieve.py)
        recorded = row.detail.get(key)
        if isinstance(recorded, str) and recorded:
            return recorded
    if row.action == "break-glass":
        return "break-glass"
    if row.action.startswith("grant-") and row.action != "grant-revoked":
        return row.action.removeprefix("grant-")
    if _category(row) != "access":
        return ""
    by = row.detail.get("by")
    by = by if isinstance(by, Mapping) else {}
    subject = str(by.get("subject", ""))
    acting = facility_ids.get(str(by.get("facility", "")), row.facility_id)
    if acting in holders:
        return "own"
    active = [g for g in grants if _in_force(g, row.at)]
    if subject and any(g.kind == "break-glass" and g.grantee_user == subject for g in active):
        return "break-glass"
    if any(g.kind == "care" and g.grantee_facility_id == acting and not g.grantee_user for g in active):
        return "care"
    if any(g.kind == "reading" and ((subject and g.grantee_user == subject)
                                    or (not g.grantee_user and g.grantee_facility_id == acting))
           for g in active):
        return "reading"
    return "shared" if ctx.settings.territory.policy == "shared" else ""


def _report_rights(actor: Actor, holders: frozenset[int]) -> bool:
    """Whether ``actor`` may read the report of a person known at ``holders``, and
    whether it sees staff names (auditors) or only roles and facilities."""
    if actor.kind is ActorKind.SYSTEM:
        return True
    if any(is_allowed(actor, Action.READ_AUDIT, Resource(f)) for f in holders):
        return True
    if any(is_allowed(actor, Action.MANAGE_FACILITY, Resource(f)) for f in holders):
        return False
    if {Action.READ_AUDIT, Action.MANAGE_FACILITY} & actions_of(actor):
        raise NotFound("person not found")
    raise NotAuthorized(f"{actor.describe()} may not read access reports")


def access_report(
    ctx: Context, actor: Actor, person_id: int, *, staff_names: bool = True, limit: int = MAX_REPORT,
) -> AccessReport:
    """Who accessed one person's data: facility, roles, purpose, study, when.

    For an auditor of a facility that knows the person (or the system actor) with user
    names unless ``staff_names`` is False (a copy for the patient); for a facility
    admin (answering a patient's request) always with "staff" instead of user names.
    Built from the events that carry the person's id (and those of persons merged
    into it).
    """
    with ctx.db.read() as tx:
        current = current_person(tx, person_id)
        holders = frozenset(i.facility_id for i in identities_of(tx, current))
        if not holders and actor.kind is not ActorKind.SYSTEM:
            raise NotFound("person not found")
        names = _report_rights(actor, holders) and staff_names
        persons = audit_index.persons_merged_into(tx, current)
        rows = audit_index.search(tx, person_ids=persons, limit=limit + 1)
        slugs = {f.id: f.slug for f in facility_index.list_facilities(tx)}
        grants = list_grants(tx, person_id=current, limit=MAX_REPORT)
    entries = [_entry(ctx, row, slugs, holders, grants, names) for row in rows[:limit]]
    record_alone(ctx, actor, "audit-report", object_type="person", object_id=str(current), person_id=current,
                 detail={"entries": len(entries), "staff_names": names})
    return AccessReport(person_id=current, persons=tuple(persons), staff_names=names, entries=entries,
                        truncated=len(rows) > limit)


def _entry(
    ctx: Context, row: AuditRow, slugs: Mapping[int, str], holders: frozenset[int], grants: list[GrantRow],
    names: bool,
) -> AccessEntry:
    by = row.detail.get("by")
    by = by if isinstance(by, Mapping) else {}
    roles = by.get("roles")
    study = row.object_id if row.object_type == "study" else str(row.detail.get("study", ""))
    person_like = row.actor_kind == "user"
    return AccessEntry(
        event_id=row.id, at=row.at, action=row.action, outcome=row.outcome, category=_category(row),
        facility=str(by.get("facility") or slugs.get(_int(row.detail.get("requester_facility")), "")
                     or slugs.get(row.facility_id or 0, "")),
        actor_kind=row.actor_kind,
        roles=tuple(str(r) for r in roles) if isinstance(roles, list) else (),
        actor=row.actor_name if names or not person_like else STAFF,
        purpose=_purpose(ctx, row, holders, grants, {slug: i for i, slug in slugs.items()}), study_uid=study,
        object_type=row.object_type,
        object_id=row.object_id if names or row.object_type != "user" else STAFF,
    )


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0


def verify_chain(ctx: Context, actor: Actor, *, anchor: str | None = None) -> ChainReport:
    """Check the whole hash chain (and that ``anchor``, an earlier head, is still in it)."""
    _reader_scope(actor)
    if anchor:
        try:
            audit_index.parse_anchor(anchor)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
    with ctx.db.read() as tx:
        report = audit_index.verify(tx, anchor=anchor)
    if not report.ok:
        log.error("audit chain broken: %d finding(s), first at event #%s", len(report.findings), report.first_bad_id)
    record_alone(ctx, actor, "audit-verify", outcome="success" if report.ok else "failure", object_type="audit",
                 detail={"events": report.events, "findings": len(report.findings) + report.more_findings,
                         "first_bad_id": report.first_bad_id, "anchor": bool(anchor)})
    return report


def chain_head(ctx: Context, actor: Actor) -> tuple[int, str] | None:
    """``(id, hash)`` of the newest event: keep it outside the archive as an anchor."""
    _reader_scope(actor)
    with ctx.db.read() as tx:
        return audit_index.head(tx)
