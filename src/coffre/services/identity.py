"""Identity management: persons, their local identities, the reconciliation queue.

DESIGN rule 2: a patient is never keyed by PatientID alone, and nothing merges
silently. Ingest links what it may prove (a qualified INS, ``index/matching.py``) and
queues what only resembles; the use cases here let a human change the links:

- :func:`link` moves one local identity to another person;
- :func:`unlink` detaches one local identity into a new person of its own;
- :func:`merge` moves every identity of person B to person A (``B.merged_into = A``,
  and persons merged into B earlier now point to A);
- :func:`split` undoes a merge from its recorded event (the identities the merge
  moved that are still there go back, earlier merges are re-pointed back);
- :func:`decide` works the reconciliation queue (link the identity to the candidate
  person, or reject the candidate).

Every change needs a reason, is recorded as ``identity_event`` rows (who, when, why,
evidence) and as an audit event in the same transaction, and is reversible (link back,
split). A person's INS follows its identities: it is the one INS they were sent with
(``index.persons.ins_sent_by``); a change that would give a person two different INS is
refused (:class:`~coffre.errors.Conflict`).

Authorization (``services.access``, ``Action.MANAGE_IDENTITY``): an identity manager
acts on local identities of its own facilities, the system actor (the command line) on
all. Identity vigilance is territorial: identity managers search and read persons with
the identities and demographics of every facility (never images); each read is
audited with the persons' ids.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from coffre.app import Context
from coffre.dicom.ins import QualifiedIns, check_ins, normalize_ins
from coffre.dicom.instance import normalize_da, normalize_pn
from coffre.errors import BadRequest, Conflict, NotFound
from coffre.index import facilities as facility_index
from coffre.index import persons as index
from coffre.index.engine import Tx
from coffre.index.persons import Candidate, IdentityEvent, IdentityRecord, PersonRecord
from coffre.model import Actor, ActorKind
from coffre.services import audit
from coffre.services.access import Action, Resource, authorize

__all__ = [
    "MAX_ID", "Candidate", "CandidateView", "IdentityEvent", "IdentityRecord", "IdentityRef", "PersonRecord",
    "SplitResult", "decide", "get", "history", "link", "list_persons", "merge", "reconciliation", "search",
    "split", "unlink",
]

#: the largest id of the index; larger ones are unknown
MAX_ID = index.MAX_ID
MAX_REASON = audit.MAX_REASON
MAX_LIMIT = 200
MAX_HISTORY = 1000
#: bounds on search inputs (PN is 64 characters per component group, LO 64)
MAX_NAME = 200
MAX_PATIENT_ID = 64
MAX_SLUG = 32
DECISIONS = ("link", "reject")


@dataclass(frozen=True, slots=True)
class IdentityRef:
    """A local identity named by its facility's slug and PatientID (issuer optional)."""

    facility: str
    patient_id: str
    issuer: str | None = None

    @staticmethod
    def parse(text: str, issuer: str | None = None) -> IdentityRef:
        """``FACILITY:PATIENTID`` (the PatientID may itself contain ``:``)."""
        slug, sep, patient_id = text.partition(":")
        if not sep or not slug or not patient_id:
            raise BadRequest("an identity is FACILITY:PATIENTID")
        return IdentityRef(slug, patient_id, issuer)


@dataclass(frozen=True, slots=True)
class CandidateView:
    """A queued possible match: the identity, the candidate person, and why."""

    candidate: Candidate
    identity: IdentityRecord
    person: PersonRecord


@dataclass(frozen=True, slots=True)
class SplitResult:
    person_id: int
    #: the person it had been merged into
    from_person: int
    restored: tuple[int, ...]
    #: identities the merge moved that have moved again since (left where they are)
    skipped: tuple[int, ...]


_reason = audit.stated_reason


def _label(actor: Actor) -> str:
    """Who acted, for identity events: kind and stable name (no address)."""
    return f"{actor.kind.value}:{actor.subject or actor.name}"[:100]


def _limit(limit: int) -> int:
    if not 0 < limit <= MAX_LIMIT:
        raise BadRequest(f"limit is 1 to {MAX_LIMIT}")
    return limit


def _offset(offset: int) -> int:
    if not 0 <= offset <= index.MAX_ID:
        raise BadRequest("offset must be a non-negative integer")
    return offset


def _reader(actor: Actor) -> None:
    """The actor's role first (identity managers, the system): others learn nothing."""
    authorize(actor, Action.MANAGE_IDENTITY, Resource(None))


def _audit_read(ctx: Context, tx: Tx, actor: Actor, action: str, found: Iterable[PersonRecord],
                **detail: object) -> list[PersonRecord]:
    found = list(found)
    ids = [p.id for p in found]
    audit.record(ctx, tx, actor, action, object_type="person",
                 object_id=str(ids[0]) if len(ids) == 1 else "",
                 person_id=ids[0] if len(ids) == 1 else None,
                 detail={**detail, "persons": ids})
    return found


# --- reads ------------------------------------------------------------------------------


def search(
    ctx: Context,
    actor: Actor,
    *,
    name: str | None = None,
    birth_date: str | None = None,
    identity: IdentityRef | None = None,
    ins: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[PersonRecord]:
    """Persons by name prefix (``MARTIN``, ``MARTIN^CL``; case and accents ignored),
    birth date (``YYYYMMDD``), a facility's PatientID, or INS; every criterion given
    must hold for one identity (INS: for the person). At least one criterion."""
    _reader(actor)
    limit, offset = _limit(limit), _offset(offset)
    criteria: list[str] = []
    name_norm = date = ins_value = None
    if name is not None and name.strip():
        if len(name) > MAX_NAME:
            raise BadRequest(f"name is longer than {MAX_NAME} characters")
        name_norm = normalize_pn(name.strip().rstrip("*").strip())
        if not name_norm:
            raise BadRequest("give at least one character of the name")
        criteria.append("name")
    if birth_date is not None and birth_date.strip():
        date = normalize_da(birth_date) if len(birth_date) <= 10 else None
        if date is None:
            raise BadRequest("birth date is YYYYMMDD")
        criteria.append("birth_date")
    if ins is not None and ins.strip():
        ins_value = normalize_ins(ins)
        if check_ins(ins_value) is not None:
            raise BadRequest("INS is 15 characters with a valid key")
        criteria.append("ins")
    with ctx.db.write() as tx:
        facility_id = patient_id = None
        if identity is not None:
            facility_id = _facility_id(tx, identity.facility)
            patient_id = _patient_id(identity.patient_id)
            criteria.append("identity")
        if not criteria:
            raise BadRequest("give a name, a birth date, an identity or an INS")
        found = index.search_persons(tx, name_norm=name_norm, birth_date=date, facility_id=facility_id,
                                     patient_id=patient_id, ins=ins_value, limit=limit, offset=offset)
        return _audit_read(ctx, tx, actor, "person-search", found, criteria=criteria)


def list_persons(
    ctx: Context, actor: Actor, *, facility: str | None = None, limit: int = 50, offset: int = 0
) -> list[PersonRecord]:
    """Persons by id, optionally those with an identity at one facility."""
    _reader(actor)
    limit, offset = _limit(limit), _offset(offset)
    with ctx.db.write() as tx:
        facility_id = _facility_id(tx, facility) if facility else None
        found = index.search_persons(tx, facility_id=facility_id, limit=limit, offset=offset)
        return _audit_read(ctx, tx, actor, "person-list", found)


def get(ctx: Context, actor: Actor, person_id: int) -> PersonRecord:
    """One person with its identities (a merged person shows ``merged_into``, no identities)."""
    _reader(actor)
    with ctx.db.write() as tx:
        found = index.get_person(tx, person_id)
        if found is None:
            raise NotFound("person not found")
        _audit_read(ctx, tx, actor, "person-read", [found])
    return found


def history(ctx: Context, actor: Actor, person_id: int) -> list[IdentityEvent]:
    """Every identity event naming the person or one of its current identities, oldest first."""
    _reader(actor)
    with ctx.db.write() as tx:
        found = index.get_person(tx, person_id)
        if found is None:
            raise NotFound("person not found")
        events = index.events_of(tx, person_id, limit=MAX_HISTORY)
        _audit_read(ctx, tx, actor, "person-history", [found], events=len(events))
    return events


# --- helpers of the changes -------------------------------------------------------------


def _facility_id(tx: Tx, slug: str) -> int:
    if not slug or len(slug) > MAX_SLUG:
        raise NotFound("facility not found")
    return facility_index.get_facility(tx, slug).id


def _patient_id(value: str) -> str:
    if not value or len(value) > MAX_PATIENT_ID:
        raise NotFound("local identity not found")
    return value


def _identity(tx: Tx, ref: IdentityRef | int) -> IdentityRecord:
    if isinstance(ref, int):
        found = index.get_identity(tx, ref)
        if found is None:
            raise NotFound("local identity not found")
        return found
    if ref.issuer is not None and len(ref.issuer) > MAX_PATIENT_ID:
        raise NotFound("local identity not found")
    matches = index.find_identities(tx, _facility_id(tx, ref.facility), _patient_id(ref.patient_id), ref.issuer)
    if not matches:
        raise NotFound("local identity not found")
    if len(matches) > 1:
        raise Conflict("several issuers use this PatientID at the facility: give the issuer")
    return matches[0]


def _current(tx: Tx, person_id: int) -> PersonRecord:
    """The person ``person_id`` stands for now (following a merge); callers lock the
    persons they change together, in id order (``index.lock_persons``)."""
    found = index.get_person(tx, person_id)
    if found is None:
        raise NotFound("person not found")
    if found.merged_into is not None:
        found = index.get_person(tx, found.merged_into)
        assert found is not None
    return found


def _authorize_identities(actor: Actor, identities: Iterable[IdentityRecord], person_id: int | None) -> None:
    checked = False
    for ident in identities:
        authorize(actor, Action.MANAGE_IDENTITY, Resource(ident.facility_id, person_id))
        checked = True
    if not checked:
        authorize(actor, Action.MANAGE_IDENTITY, Resource(None, person_id))


def _ins_of(tx: Tx, patient_pks: Iterable[int]) -> set[QualifiedIns]:
    return set(index.ins_sent_by(tx, patient_pks).values())


def _apply_ins(tx: Tx, person_id: int, patient_pks: Iterable[int]) -> None:
    """Give ``person_id`` the one INS its identities were sent with (none: no INS),
    unless another current person holds it (then the queue has it)."""
    sent = _ins_of(tx, patient_pks)
    if len(sent) > 1:
        raise Conflict("the identities would give the person two different INS")
    ins = next(iter(sent), None)
    if ins is not None and any(h != person_id for h in index.persons_with_ins(tx, ins)):
        ins = None
    if index.person_ins(tx, person_id) != ins:
        index.set_person_ins(tx, person_id, ins)


def _pks(person: PersonRecord) -> list[int]:
    return [i.patient_pk for i in person.identities]


def _move(ctx: Context, tx: Tx, actor: Actor, ident: IdentityRecord, target: PersonRecord, *,
          reason: str, action: str, evidence: dict[str, object]) -> int:
    """Move one identity to ``target`` (INS, events, candidates); returns the event id."""
    source = ident.person_id
    index.lock_persons(tx, [target.id] if source is None else [source, target.id])  # in id order
    locked = index.get_person(tx, target.id)  # as it is under the lock
    if locked is None or locked.merged_into is not None:
        raise Conflict("the person was merged meanwhile: try again")
    target = locked
    if len(_ins_of(tx, [*_pks(target), ident.patient_pk])) > 1:
        raise Conflict("the identity was sent with another INS than the person's")
    index.set_identity_person(tx, [ident.patient_pk], target.id)
    now = ctx.clock()
    event = index.record_event(tx, at=now, action=action, actor=_label(actor), patient_pk=ident.patient_pk,
                               from_person=source, to_person=target.id, reason=reason, evidence=evidence)
    if source is not None:
        _apply_ins(tx, source, [i.patient_pk for i in index.identity_records(tx, [source])])
    _apply_ins(tx, target.id, [*_pks(target), ident.patient_pk])
    index.close_resolved_candidates(tx, patient_pks=[ident.patient_pk], at=now, by=_label(actor))
    return event


# --- changes ----------------------------------------------------------------------------


def link(ctx: Context, actor: Actor, identity: IdentityRef | int, to_person: int, *, reason: str) -> int:
    """Move a local identity to ``to_person`` (or the person it was merged into); returns
    the person id. Reversible by linking it back."""
    _reader(actor)
    reason = _reason(reason)
    with ctx.db.write() as tx:
        ident = _identity(tx, identity)
        _authorize_identities(actor, [ident], ident.person_id)
        target = _current(tx, to_person)
        if ident.person_id == target.id:
            raise Conflict("the identity already belongs to this person")
        event = _move(ctx, tx, actor, ident, target, reason=reason, action="link",
                      evidence={"manual": True})
        audit.record(ctx, tx, actor, "identity-link", facility_id=ident.facility_id, object_type="patient",
                     object_id=str(ident.patient_pk), person_id=target.id,
                     detail={"reason": reason, "from_person": ident.person_id, "to_person": target.id,
                             "event": event})
        return target.id


def unlink(ctx: Context, actor: Actor, identity: IdentityRef | int, *, reason: str,
           from_person: int | None = None) -> int:
    """Detach a local identity into a new person of its own; returns the new person id.
    Reversible by linking it back. ``from_person``: refuse unless it belongs there."""
    _reader(actor)
    reason = _reason(reason)
    with ctx.db.write() as tx:
        ident = _identity(tx, identity)
        _authorize_identities(actor, [ident], ident.person_id)
        if from_person is not None and ident.person_id != from_person:
            raise NotFound("the identity does not belong to this person")
        if ident.person_id is not None:
            others = [i for i in index.identity_records(tx, [ident.person_id]) if i.patient_pk != ident.patient_pk]
            if not others:
                raise Conflict("the identity is the only one of its person")
        now = ctx.clock()
        new_person = index.create_person(tx, now=now)
        target = index.get_person(tx, new_person)
        assert target is not None
        event = _move(ctx, tx, actor, ident, target, reason=reason, action="unlink", evidence={"manual": True})
        audit.record(ctx, tx, actor, "identity-unlink", facility_id=ident.facility_id, object_type="patient",
                     object_id=str(ident.patient_pk), person_id=new_person,
                     detail={"reason": reason, "from_person": ident.person_id, "to_person": new_person,
                             "event": event})
        return new_person


def merge(ctx: Context, actor: Actor, into: int, merged: int, *, reason: str) -> int:
    """Move every identity of person ``merged`` to person ``into``; ``merged`` then points
    to ``into``, and so do the persons merged into ``merged`` before. Returns the merge
    event's id. Reversible by :func:`split`."""
    _reader(actor)
    reason = _reason(reason)
    with ctx.db.write() as tx:
        absorbed = index.get_person(tx, merged)
        if absorbed is None:
            raise NotFound("person to merge not found")
        if absorbed.merged_into is not None:
            raise Conflict("this person was already merged into another one")
        target = _current(tx, into)
        if target.id == absorbed.id:
            raise Conflict("a person cannot be merged into itself")
        _authorize_identities(actor, absorbed.identities, absorbed.id)
        index.lock_persons(tx, [absorbed.id, target.id])  # both, in id order: no deadlock
        absorbed, locked = index.get_person(tx, merged), index.get_person(tx, target.id)  # under the lock
        assert absorbed is not None and locked is not None
        if absorbed.merged_into is not None or locked.merged_into is not None:
            raise Conflict("a person was merged meanwhile: try again")
        _authorize_identities(actor, absorbed.identities, absorbed.id)
        target = locked
        moved = _pks(absorbed)
        if len(_ins_of(tx, [*_pks(target), *moved])) > 1:
            raise Conflict("the persons were sent with different INS")
        repointed = index.persons_merged_into(tx, absorbed.id)
        now, who = ctx.clock(), _label(actor)
        event = index.record_event(tx, at=now, action="merge", actor=who, from_person=absorbed.id,
                                   to_person=target.id, reason=reason,
                                   evidence={"moved": moved, "repointed": repointed})
        index.set_identity_person(tx, moved, target.id)
        for pk in moved:
            index.record_event(tx, at=now, action="merge", actor=who, patient_pk=pk, from_person=absorbed.id,
                               to_person=target.id, reason=reason, evidence={"merge_event": event})
        index.set_merged_into(tx, repointed, target.id)
        index.set_merged_into(tx, [absorbed.id], target.id)
        _apply_ins(tx, target.id, [*_pks(target), *moved])
        index.close_resolved_candidates(tx, patient_pks=moved, person_ids=[absorbed.id, target.id], at=now,
                                        by=who)
        audit.record(ctx, tx, actor, "person-merge", object_type="person", object_id=str(absorbed.id),
                     person_id=target.id,
                     detail={"reason": reason, "from_person": absorbed.id, "to_person": target.id,
                             "identities": moved, "repointed": repointed, "event": event})
        return event


def split(ctx: Context, actor: Actor, person_id: int, *, reason: str) -> SplitResult:
    """Undo the latest merge of ``person_id``: the identities it moved that are still
    with the absorbing person come back, and so do the persons it re-pointed."""
    _reader(actor)
    reason = _reason(reason)
    with ctx.db.write() as tx:
        found = index.get_person(tx, person_id)
        if found is None:
            raise NotFound("person not found")
        if found.merged_into is None:
            raise Conflict("this person is not merged")
        holder = found.merged_into
        index.lock_persons(tx, [found.id, holder])
        merge_event = index.last_merge_of(tx, found.id)
        if merge_event is None:
            raise Conflict("no merge of this person is recorded")
        moved = [int(pk) for pk in merge_event.evidence.get("moved", []) if isinstance(pk, int)]
        repointed = [int(p) for p in merge_event.evidence.get("repointed", []) if isinstance(p, int)]
        current = {i.patient_pk: i for i in index.identity_records(tx, [holder])}
        restored = [pk for pk in moved if pk in current]
        skipped = tuple(pk for pk in moved if pk not in current)
        _authorize_identities(actor, [current[pk] for pk in restored], found.id)
        now, who = ctx.clock(), _label(actor)
        event = index.record_event(tx, at=now, action="split", actor=who, from_person=holder,
                                   to_person=found.id, reason=reason,
                                   evidence={"merge_event": merge_event.id, "restored": restored,
                                             "skipped": list(skipped)})
        index.set_merged_into(tx, [found.id], None)
        index.set_identity_person(tx, restored, found.id)
        for pk in restored:
            index.record_event(tx, at=now, action="split", actor=who, patient_pk=pk, from_person=holder,
                               to_person=found.id, reason=reason, evidence={"split_event": event})
        back = [p for p in repointed
                if (again := index.get_person(tx, p)) is not None and again.merged_into == holder]
        index.set_merged_into(tx, back, found.id)
        remaining = [pk for pk in current if pk not in restored]
        _apply_ins(tx, holder, remaining)
        _apply_ins(tx, found.id, restored)
        audit.record(ctx, tx, actor, "person-split", object_type="person", object_id=str(found.id),
                     person_id=found.id,
                     detail={"reason": reason, "from_person": holder, "to_person": found.id,
                             "identities": restored, "skipped": list(skipped), "event": event})
        return SplitResult(found.id, holder, tuple(restored), skipped)


# --- the reconciliation queue -----------------------------------------------------------


def _view(tx: Tx, candidate: Candidate) -> CandidateView:
    ident = index.get_identity(tx, candidate.patient_pk)
    person = index.get_person(tx, index.current_person(tx, candidate.candidate_person))
    assert ident is not None and person is not None
    return CandidateView(candidate, ident, person)


def reconciliation(
    ctx: Context, actor: Actor, *, status: str | None = index.OPEN, limit: int = 50, offset: int = 0
) -> list[CandidateView]:
    """Candidates of the actor's facilities' identities (all for the system actor)."""
    _reader(actor)
    limit, offset = _limit(limit), _offset(offset)
    if status is not None and status not in (index.OPEN, index.LINKED, index.REJECTED):
        raise BadRequest("status is open, linked or rejected")
    facility_ids = None if actor.kind is ActorKind.SYSTEM and actor.facility is None else actor.facility_ids
    with ctx.db.write() as tx:
        found = index.list_candidates(tx, status=status, facility_ids=facility_ids, limit=limit, offset=offset)
        views = [_view(tx, c) for c in found]
        audit.record(ctx, tx, actor, "reconciliation-list", object_type="candidate",
                     detail={"status": status or "any", "candidates": [c.id for c in found]})
        return views


def decide(ctx: Context, actor: Actor, candidate_id: int, *, decision: str, reason: str) -> CandidateView:
    """``link``: the candidate's identity joins the candidate person (open or rejected
    candidates); ``reject``: not the same human (open candidates)."""
    _reader(actor)
    reason = _reason(reason)
    if decision not in DECISIONS:
        raise BadRequest("the decision is link or reject")
    with ctx.db.write() as tx:
        candidate = index.get_candidate(tx, candidate_id, for_update=True)
        if candidate is None:
            raise NotFound("candidate not found")
        ident = index.get_identity(tx, candidate.patient_pk)
        assert ident is not None
        _authorize_identities(actor, [ident], ident.person_id)
        now, who = ctx.clock(), _label(actor)
        if decision == "reject":
            if candidate.status != index.OPEN:
                raise Conflict(f"the candidate is already {candidate.status}")
            index.decide_candidate(tx, candidate.id, status=index.REJECTED, at=now, by=who)
            event: int | None = None
            target_id = index.current_person(tx, candidate.candidate_person)
        else:
            if candidate.status == index.LINKED:
                raise Conflict("the candidate is already linked")
            target = _current(tx, candidate.candidate_person)
            target_id = target.id
            event = None
            if ident.person_id != target.id:
                event = _move(ctx, tx, actor, ident, target, reason=reason, action="link",
                              evidence={"candidate": candidate.id, "score": candidate.score,
                                        **{k: v for k, v in candidate.evidence.items() if k != "matched_identity"}})
            index.decide_candidate(tx, candidate.id, status=index.LINKED, at=now, by=who)
        audit.record(ctx, tx, actor, f"reconcile-{decision}", facility_id=ident.facility_id,
                     object_type="candidate", object_id=str(candidate.id), person_id=target_id,
                     detail={"reason": reason, "patient": ident.patient_pk, "from_person": ident.person_id,
                             "to_person": target_id, "score": candidate.score, "event": event})
        decided = index.get_candidate(tx, candidate.id)
        assert decided is not None
        return _view(tx, decided)
