"""Grants: the audited reasons to see another facility's data (DESIGN words: grant).

- A **care relationship** is recorded by a clinician of the treating facility for a
  person, with an expiry (at most ``[territory] care_relationship_max_days``); every
  actor of that facility (users with a care role, its PACS) then sees the person's
  studies held elsewhere.
- A **reading assignment** is given by a facility admin for one study of the facility,
  to a user (by subject) or to another facility, for ``reading_assignment_days``.
- **Break-the-glass**: a user with a care role states a reason and sees one person's
  data for ``break_glass_minutes``, even against an opposition. It raises a security
  alert (an audit event of outcome ``alert``, exported with syslog severity 1) and lands
  in the review list of the admins of the facilities whose data it opens.
- An **opposition to sharing** recorded for a person by any facility blocks every
  cross-facility access but break-the-glass.

:func:`load` gathers the grants in force for an actor; ``services.access`` turns them
into decisions and query scopes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from coffre.app import Context
from coffre.errors import BadRequest, NotAuthorized, NotFound
from coffre.index import facilities as facility_index
from coffre.index import grants as grant_index
from coffre.index.engine import Tx
from coffre.index.grants import GrantRow
from coffre.index.persons import LocalIdentity, current_person, identities_of, person_of_identity
from coffre.index.query import Scope
from coffre.model import Actor, ActorKind
from coffre.services import audit
from coffre.services.access import Action, Grants, Resource, authorize, scope

log = logging.getLogger(__name__)

MAX_REASON = audit.MAX_REASON


def load(ctx: Context, tx: Tx, actor: Actor) -> Grants:
    """The grants in force now for ``actor`` (none for the system actor, who needs none)."""
    shared = ctx.settings.territory.policy == "shared"
    if actor.kind is ActorKind.SYSTEM:
        return Grants(shared=shared)
    subject = actor.subject if actor.kind is ActorKind.USER else ""
    active = grant_index.active_grants(tx, facility_ids=actor.facility_ids, subject=subject, now=ctx.clock())
    reading_persons = {p for p in active.reading.values() if p is not None}
    opposed = (
        grant_index.opposed_persons(tx)
        if shared
        else grant_index.opposed_persons(tx, among=active.care | reading_persons)
    )
    return Grants(care=active.care, reading=frozenset(active.reading), break_glass=active.break_glass,
                  opposed=opposed, reading_persons=active.reading, shared=shared)


def scope_for(ctx: Context, tx: Tx, actor: Actor, action: Action) -> Scope:
    """The query/retrieve scope of ``actor`` now: the one predicate of DESIGN 5."""
    return scope(actor, action, load(ctx, tx, actor))


_reason = audit.stated_reason


def _person(tx: Tx, person_id: int) -> tuple[int, set[int]]:
    """The current person id and the facilities holding its identities."""
    current = current_person(tx, person_id)
    identities = identities_of(tx, current)
    if not identities:
        raise NotFound("person not found")
    return current, {i.facility_id for i in identities}


def record_care(ctx: Context, actor: Actor, person_id: int, *, days: int, reason: str) -> int:
    """A care relationship of the actor's facility with a person; returns the grant id."""
    limit = ctx.settings.territory.care_relationship_max_days
    if not 0 < days <= limit:
        raise BadRequest(f"a care relationship lasts 1 to {limit} days")
    reason = _reason(reason)
    now = ctx.clock()
    with ctx.db.write() as tx:
        current, _ = _person(tx, person_id)
        authorize(actor, Action.RECORD_CARE, Resource(actor.facility_id, current))
        grant_id = grant_index.insert_grant(
            tx, kind="care", person_id=current, study_pk=None, grantee_facility_id=actor.facility_id,
            grantee_user="", granted_by=actor.subject or actor.name, granted_by_facility_id=actor.facility_id,
            reason=reason, created_at=now, expires_at=now + timedelta(days=days))
        audit.record(ctx, tx, actor, "grant-care", object_type="grant", object_id=str(grant_id),
                     person_id=current, detail={"days": days, "reason": reason})
    return grant_id


def break_glass(ctx: Context, actor: Actor, person_id: int, *, reason: str) -> int:
    """Emergency access of one user to one person's data; audited as a security alert."""
    reason = _reason(reason)
    now = ctx.clock()
    minutes = ctx.settings.territory.break_glass_minutes
    if actor.kind is not ActorKind.USER:
        raise NotAuthorized("only a user breaks the glass, with a stated reason")
    with ctx.db.write() as tx:
        current, holders = _person(tx, person_id)
        authorize(actor, Action.BREAK_GLASS, Resource(actor.facility_id, current))
        grant_id = grant_index.insert_grant(
            tx, kind="break-glass", person_id=current, study_pk=None, grantee_facility_id=actor.facility_id,
            grantee_user=actor.subject, granted_by=actor.subject, granted_by_facility_id=actor.facility_id,
            reason=reason, created_at=now, expires_at=now + timedelta(minutes=minutes))
        audit.record(ctx, tx, actor, "break-glass", outcome="alert", object_type="grant",
                     object_id=str(grant_id), person_id=current,
                     detail={"minutes": minutes, "reason": reason,
                             "facilities": sorted(holders - actor.facility_ids)})
    log.warning("security alert: break-the-glass grant %d by %s", grant_id, actor.describe())
    return grant_id


def assign_reading(
    ctx: Context, actor: Actor, study_pk: int, *, user: str = "", facility_id: int | None = None,
    days: int | None = None, reason: str = "reading assignment",
) -> int:
    """Assign one study of the actor's facility to a reader (a user subject or a facility)."""
    if bool(user) == (facility_id is not None):
        raise BadRequest("assign the study to one user or one facility")
    days = days if days is not None else ctx.settings.territory.reading_assignment_days
    if not 0 < days <= ctx.settings.territory.care_relationship_max_days:
        raise BadRequest("invalid duration")
    reason = _reason(reason)
    now = ctx.clock()
    with ctx.db.write() as tx:
        owner = grant_index.study_owner(tx, study_pk)
        if owner is None:
            raise NotFound("study not found")
        authorize(actor, Action.ASSIGN_READING, Resource(owner[0], owner[1], study_pk))
        grant_id = grant_index.insert_grant(
            tx, kind="reading", person_id=owner[1], study_pk=study_pk, grantee_facility_id=facility_id,
            grantee_user=user, granted_by=actor.subject or actor.name, granted_by_facility_id=actor.facility_id,
            reason=reason, created_at=now, expires_at=now + timedelta(days=days))
        audit.record(ctx, tx, actor, "grant-reading", facility_id=owner[0], object_type="grant",
                     object_id=str(grant_id), person_id=owner[1],
                     detail={"days": days, "reader": user or f"facility:{facility_id}"})
    return grant_id


def record_opposition(ctx: Context, actor: Actor, person_id: int, *, reason: str) -> int:
    """Record a person's opposition to sharing between facilities."""
    reason = _reason(reason)
    with ctx.db.write() as tx:
        current, holders = _person(tx, person_id)
        if actor.kind is not ActorKind.SYSTEM and not holders & actor.facility_ids:
            raise NotFound("person not found")
        authorize(actor, Action.RECORD_OPPOSITION, Resource(actor.facility_id, current))
        facility_id = actor.facility_id if actor.facility_id is not None else min(holders)
        opposition_id = grant_index.insert_opposition(
            tx, person_id=current, facility_id=facility_id, recorded_by=actor.subject or actor.name,
            reason=reason, at=ctx.clock())
        audit.record(ctx, tx, actor, "opposition", object_type="opposition", object_id=str(opposition_id),
                     person_id=current, detail={"reason": reason})
    return opposition_id


def withdraw_opposition(ctx: Context, actor: Actor, person_id: int) -> int:
    """Withdraw a person's oppositions (at the person's request); returns how many."""
    with ctx.db.write() as tx:
        current, holders = _person(tx, person_id)
        if actor.kind is not ActorKind.SYSTEM and not holders & actor.facility_ids:
            raise NotFound("person not found")
        authorize(actor, Action.RECORD_OPPOSITION, Resource(actor.facility_id, current))
        count = grant_index.withdraw_oppositions(tx, current, at=ctx.clock(), by=actor.subject or actor.name)
        audit.record(ctx, tx, actor, "opposition-withdrawn", object_type="person", object_id=str(current),
                     person_id=current, detail={"withdrawn": count})
    return count


def revoke(ctx: Context, actor: Actor, grant_id: int) -> None:
    """End a grant before its expiry (by whoever could have created it, or an admin)."""
    with ctx.db.write() as tx:
        grant = grant_index.get_grant(tx, grant_id)
        if grant is None:
            raise NotFound("grant not found")
        action = {"care": Action.RECORD_CARE, "reading": Action.ASSIGN_READING,
                  "break-glass": Action.REVIEW_BREAK_GLASS, "share": Action.SHARE}[grant.kind]
        own = grant.granted_by == (actor.subject or actor.name)
        if not own:
            authorize(actor, action, Resource(grant.granted_by_facility_id))
        grant_index.revoke_grant(tx, grant_id, at=ctx.clock(), by=actor.subject or actor.name)
        audit.record(ctx, tx, actor, "grant-revoked", object_type="grant", object_id=str(grant_id),
                     person_id=grant.person_id, detail={"kind": grant.kind})


def break_glass_to_review(ctx: Context, actor: Actor, *, include_reviewed: bool = False) -> list[GrantRow]:
    """Break-the-glass accesses by other facilities' staff into the actor's facilities' data.

    The admins of each facility whose data an emergency access opened review it; an access
    by the admin's own staff into another facility's data is that facility's to review.
    """
    authorize(actor, Action.REVIEW_BREAK_GLASS, Resource(actor.facility_id))
    with ctx.db.read() as tx:
        if actor.kind is ActorKind.SYSTEM and actor.facility is None:
            return grant_index.list_grants(tx, kind="break-glass", unreviewed=not include_reviewed)
        found = grant_index.list_grants(tx, kind="break-glass", facility_ids=actor.facility_ids,
                                        unreviewed=not include_reviewed)
        return [g for g in found if g.person_id is not None and _opened_here(tx, g, actor.facility_ids)]


def _opened_here(tx: Tx, grant: GrantRow, facility_ids: frozenset[int]) -> bool:
    """True when the grant opened data held by ``facility_ids`` for another facility's user."""
    assert grant.person_id is not None
    holders = {i.facility_id for i in identities_of(tx, current_person(tx, grant.person_id))}
    return bool(holders & facility_ids) and grant.grantee_facility_id not in facility_ids


def identities_for_review(ctx: Context, actor: Actor, rows: list[GrantRow]) -> dict[int, list[LocalIdentity]]:
    """For each reviewed grant, the person's local identities in the reviewer's facilities."""
    authorize(actor, Action.REVIEW_BREAK_GLASS, Resource(actor.facility_id))
    out: dict[int, list[LocalIdentity]] = {}
    with ctx.db.read() as tx:
        for g in rows:
            if g.person_id is None:
                continue
            found = identities_of(tx, current_person(tx, g.person_id))
            out[g.id] = [i for i in found if actor.kind is ActorKind.SYSTEM or i.facility_id in actor.facility_ids]
    return out


def review_break_glass(ctx: Context, actor: Actor, grant_id: int, *, note: str) -> None:
    """Mark a break-the-glass access reviewed, with the admin's conclusion."""
    note = _reason(note)
    with ctx.db.write() as tx:
        grant = grant_index.get_grant(tx, grant_id)
        if grant is None or grant.kind != "break-glass":
            raise NotFound("break-the-glass access not found")
        if actor.kind is not ActorKind.SYSTEM and (
            grant.person_id is None or not _opened_here(tx, grant, actor.facility_ids)
        ):
            raise NotFound("break-the-glass access not found")
        authorize(actor, Action.REVIEW_BREAK_GLASS, Resource(actor.facility_id))
        grant_index.review_grant(tx, grant_id, at=ctx.clock(), by=actor.subject or actor.name, note=note)
        audit.record(ctx, tx, actor, "break-glass-reviewed", object_type="grant", object_id=str(grant_id),
                     person_id=grant.person_id, detail={"note": note})


@dataclass(frozen=True, slots=True)
class PersonRef:
    """How a caller names a person it may not see yet: an id, a facility's PatientID, or the INS."""

    person_id: int | None = None
    facility: str = ""
    patient_id: str = ""
    ins: str = ""


def resolve_person(ctx: Context, actor: Actor, ref: PersonRef) -> int:
    """The person named by ``ref`` (``NotFound`` when none or ambiguous).

    Naming by a facility's PatientID defaults to the actor's own facility. Resolution
    reveals no data; the use case it feeds is authorized and audited.
    """
    with ctx.db.read() as tx:
        if ref.person_id is not None:
            if not identities_of(tx, current_person(tx, ref.person_id)):
                raise NotFound("person not found")
            return current_person(tx, ref.person_id)
        if ref.ins:
            found = grant_index.persons_with_ins(tx, ref.ins)
        elif ref.patient_id:
            facility_id = (
                facility_index.get_facility(tx, ref.facility).id if ref.facility else actor.facility_id
            )
            if facility_id is None:
                raise BadRequest("name the facility of the PatientID")
            person_id = person_of_identity(tx, facility_id, ref.patient_id)
            found = [] if person_id is None else [current_person(tx, person_id)]
        else:
            raise BadRequest("name the person by id, by a facility's PatientID, or by INS")
    if len(found) != 1:
        raise NotFound("person not found")
    return found[0]


def resolve_study(ctx: Context, actor: Actor, study_instance_uid: str) -> int:
    """The study of the actor's facilities with this UID (for a reading assignment)."""
    facility_ids = None if actor.kind is ActorKind.SYSTEM and actor.facility is None else actor.facility_ids
    with ctx.db.read() as tx:
        found = grant_index.study_pks(tx, study_instance_uid, facility_ids)
    if len(found) != 1:
        raise NotFound("study not found" if not found else "study UID held by several facilities")
    return found[0]


def active_grants_of(ctx: Context, actor: Actor) -> list[GrantRow]:
    """The grants the actor (or its facility) holds now, newest first."""
    now = ctx.clock()
    with ctx.db.read() as tx:
        rows = grant_index.list_grants(tx, facility_ids=actor.facility_ids, limit=500)
    subject = actor.subject
    return [
        g for g in rows
        if g.revoked_at is None and g.expires_at > now
        and (g.grantee_user == subject if g.grantee_user else g.grantee_facility_id in actor.facility_ids)
    ]


def facility_id_of(ctx: Context, slug: str) -> int:
    """The id of the facility ``slug`` (``NotFound`` otherwise)."""
    with ctx.db.read() as tx:
        return facility_index.get_facility(tx, slug).id
