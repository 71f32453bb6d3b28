"""Persons and their local identities in the index (tables ``person``, ``patient``,
``identity_event``, ``reconciliation_candidate``).

A *local identity* is a ``patient`` row ``(facility, issuer, PatientID)``; a *person*
links the local identities of one human (``patient.person_id``) and holds the INS when
one was sent qualified. Merges move identities and set ``person.merged_into``; they
re-point older merges, so ``merged_into`` always names a person that is not merged
itself (one level, which ``current_person`` and ``index/grants.py`` rely on).

Every change of a link is an ``identity_event`` row (its provenance). The INS a
facility sent for an identity is kept in the evidence of the ingest's events
(``{"sent_ins": {"value", "oid"}}``): a person's INS is always the one INS its
identities sent, which keeps every manual change reversible (:func:`ins_sent_by`).

The use cases (authorization, audit, rules) live in ``services/identity.py``; the
ingest step in ``index/matching.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Select, and_, func, or_, select, text

from coffre.dicom.ins import INS_OIDS, QualifiedIns, check_ins
from coffre.index.schema import facility, identity_event, patient, person, reconciliation_candidate

#: the largest primary key of the index (64-bit); larger ids are unknown, not errors
MAX_ID = 2**63 - 1

OPEN = "open"
LINKED = "linked"
REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class LocalIdentity:
    """How one facility knows a person: ``(facility, issuer, PatientID)``."""

    patient_pk: int
    facility_id: int
    facility_slug: str
    issuer: str
    patient_id: str
    person_id: int


def current_person(conn: Connection, person_id: int) -> int:
    """The person ``person_id`` stands for now (following one merge)."""
    merged = conn.execute(select(person.c.merged_into).where(person.c.id == person_id)).scalar()
    return int(merged) if merged is not None else person_id


def person_of_identity(
    conn: Connection, facility_id: int, patient_id: str, issuer: str | None = None
) -> int | None:
    """The person of a facility's local identity (issuer optional: PatientID alone)."""
    stmt = select(patient.c.person_id).where(patient.c.facility_id == facility_id,
                                            patient.c.patient_id == patient_id)
    if issuer is not None:
        stmt = stmt.where(patient.c.issuer == issuer)
    found = {pid for (pid,) in conn.execute(stmt) if pid is not None}
    return found.pop() if len(found) == 1 else None


def identities_of(conn: Connection, person_id: int) -> list[LocalIdentity]:
    """Every local identity linked to ``person_id``, by facility."""
    rows = conn.execute(
        select(patient.c.id, patient.c.facility_id, facility.c.slug, patient.c.issuer, patient.c.patient_id,
               patient.c.person_id)
        .join(facility, facility.c.id == patient.c.facility_id)
        .where(patient.c.person_id == person_id)
        .order_by(patient.c.facility_id, patient.c.id)
    )
    return [LocalIdentity(*r) for r in rows]


# --- reads with demographics ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IdentityRecord:
    """A local identity with the demographics its facility sent (latest values)."""

    patient_pk: int
    facility_id: int
    facility_slug: str
    issuer: str
    patient_id: str
    #: None only for rows written before persons existed and not yet linked
    person_id: int | None
    patient_name: str
    birth_date: str
    sex: str


@dataclass(frozen=True, slots=True)
class PersonRecord:
    id: int
    ins: str
    ins_oid: str
    merged_into: int | None
    created_at: datetime
    identities: tuple[IdentityRecord, ...]


def _identity_select() -> Select[Any]:
    return (
        select(patient.c.id, patient.c.facility_id, facility.c.slug, patient.c.issuer, patient.c.patient_id,
               patient.c.person_id, patient.c.patient_name, patient.c.patient_birth_date, patient.c.patient_sex)
        .join(facility, facility.c.id == patient.c.facility_id)
        .order_by(patient.c.person_id, patient.c.facility_id, patient.c.id)
    )


def _identity(row: Any) -> IdentityRecord:
    return IdentityRecord(int(row.id), int(row.facility_id), row.slug, row.issuer, row.patient_id,
                          None if row.person_id is None else int(row.person_id), row.patient_name,
                          row.patient_birth_date, row.patient_sex)


def get_identity(conn: Connection, patient_pk: int) -> IdentityRecord | None:
    if not 0 < patient_pk <= MAX_ID:
        return None
    row = conn.execute(_identity_select().where(patient.c.id == patient_pk)).first()
    return None if row is None else _identity(row)


def find_identities(
    conn: Connection, facility_id: int, patient_id: str, issuer: str | None = None
) -> list[IdentityRecord]:
    """The local identities of one facility with this PatientID (and issuer, if given)."""
    stmt = _identity_select().where(patient.c.facility_id == facility_id, patient.c.patient_id == patient_id)
    if issuer is not None:
        stmt = stmt.where(patient.c.issuer == issuer)
    return [_identity(r) for r in conn.execute(stmt)]


def identity_records(conn: Connection, person_ids: Iterable[int]) -> list[IdentityRecord]:
    ids = sorted(set(person_ids))
    if not ids:
        return []
    return [_identity(r) for r in conn.execute(_identity_select().where(patient.c.person_id.in_(ids)))]


def get_person(conn: Connection, person_id: int, *, for_update: bool = False) -> PersonRecord | None:
    """The person row and its identities (a merged person has none: they moved)."""
    if not 0 < person_id <= MAX_ID:
        return None
    stmt = select(person).where(person.c.id == person_id)
    if for_update:
        stmt = stmt.with_for_update()
    row = conn.execute(stmt).first()
    if row is None:
        return None
    return PersonRecord(int(row.id), row.ins, row.ins_oid, row.merged_into, row.created_at,
                        tuple(identity_records(conn, [person_id])))


def _persons(conn: Connection, ids: Sequence[int]) -> list[PersonRecord]:
    if not ids:
        return []
    rows = {int(r.id): r for r in conn.execute(select(person).where(person.c.id.in_(list(ids))))}
    by_person: dict[int, list[IdentityRecord]] = {}
    for ident in identity_records(conn, ids):
        assert ident.person_id is not None
        by_person.setdefault(ident.person_id, []).append(ident)
    return [
        PersonRecord(pid, rows[pid].ins, rows[pid].ins_oid, rows[pid].merged_into, rows[pid].created_at,
                     tuple(by_person.get(pid, ())))
        for pid in ids
        if pid in rows
    ]


def _like_prefix(value: str) -> str:
    escaped = value.replace("!", "!!").replace("%", "!%").replace("_", "!_")
    return f"{escaped}%"


def search_persons(
    conn: Connection,
    *,
    name_norm: str | None = None,
    birth_date: str | None = None,
    facility_id: int | None = None,
    patient_id: str | None = None,
    ins: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[PersonRecord]:
    """Current persons with one identity matching every given criterion, by id.

    ``name_norm`` is a normalised name prefix (``MARTIN`` or ``MARTIN^CL``) matched on
    the identities' normalised names; ``birth_date`` is ``YYYYMMDD``; ``facility_id``
    with ``patient_id`` is a local identity; ``ins`` an INS value. Without criteria:
    every person with an identity.
    """
    conditions: list[Any] = [patient.c.person_id.is_not(None)]
    if name_norm:
        conditions.append(patient.c.patient_name_norm.like(_like_prefix(name_norm), escape="!"))
    if birth_date:
        conditions.append(patient.c.patient_birth_date == birth_date)
    if facility_id is not None:
        conditions.append(patient.c.facility_id == facility_id)
    if patient_id is not None:
        conditions.append(patient.c.patient_id == patient_id)
    if ins:
        conditions.append(person.c.ins == ins)
    stmt = (
        select(patient.c.person_id)
        .join(person, person.c.id == patient.c.person_id)
        .where(and_(*conditions), person.c.merged_into.is_(None))
        .group_by(patient.c.person_id)
        .order_by(patient.c.person_id)
        .limit(limit)
        .offset(offset)
    )
    return _persons(conn, [int(pid) for (pid,) in conn.execute(stmt)])


def persons_with_ins(conn: Connection, ins: QualifiedIns, *, for_update: bool = False) -> list[int]:
    """Current (not merged) persons holding this INS."""
    stmt = select(person.c.id).where(person.c.ins == ins.value, person.c.ins_oid == ins.oid,
                                     person.c.merged_into.is_(None)).order_by(person.c.id)
    if for_update:
        stmt = stmt.with_for_update()
    return [int(pid) for (pid,) in conn.execute(stmt)]


def person_ins(conn: Connection, person_id: int) -> QualifiedIns | None:
    row = conn.execute(select(person.c.ins, person.c.ins_oid).where(person.c.id == person_id)).first()
    if row is None or not row.ins or row.ins_oid not in INS_OIDS:
        return None
    return QualifiedIns(row.ins, row.ins_oid)


# --- writes -----------------------------------------------------------------------------


def lock(conn: Connection, key: str) -> None:
    """Serialise identity decisions on ``key`` until the transaction ends.

    PostgreSQL: a transaction-level advisory lock, so that two facilities sending the
    same new INS at once cannot create two persons. SQLite: writers are already
    serialised (``BEGIN IMMEDIATE``).
    """
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": key})


def lock_persons(conn: Connection, person_ids: Iterable[int]) -> None:
    """Row locks on persons about to change (PostgreSQL; in id order, no deadlock)."""
    ids = sorted(set(person_ids))
    if ids and conn.dialect.name == "postgresql":
        conn.execute(select(person.c.id).where(person.c.id.in_(ids)).order_by(person.c.id).with_for_update())


def create_person(conn: Connection, *, now: datetime, ins: QualifiedIns | None = None) -> int:
    values: dict[str, Any] = {"created_at": now}
    if ins is not None:
        values.update(ins=ins.value, ins_oid=ins.oid)
    pk = conn.execute(person.insert().values(values)).inserted_primary_key
    assert pk is not None
    return int(pk[0])


def set_person_ins(conn: Connection, person_id: int, ins: QualifiedIns | None) -> None:
    conn.execute(person.update().where(person.c.id == person_id).values(
        ins=ins.value if ins else "", ins_oid=ins.oid if ins else ""))


def set_merged_into(conn: Connection, person_ids: Iterable[int], into: int | None) -> None:
    ids = sorted(set(person_ids))
    if ids:
        conn.execute(person.update().where(person.c.id.in_(ids)).values(merged_into=into))


def persons_merged_into(conn: Connection, person_id: int) -> list[int]:
    rows = conn.execute(select(person.c.id).where(person.c.merged_into == person_id).order_by(person.c.id))
    return [int(pid) for (pid,) in rows]


def set_identity_person(conn: Connection, patient_pks: Iterable[int], person_id: int) -> None:
    pks = sorted(set(patient_pks))
    if pks:
        conn.execute(patient.update().where(patient.c.id.in_(pks)).values(person_id=person_id))


# --- provenance -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IdentityEvent:
    id: int
    at: datetime
    #: create, link, unlink, merge, split, ins
    action: str
    patient_pk: int | None
    from_person: int | None
    to_person: int | None
    actor: str
    reason: str
    evidence: dict[str, Any]


def dumps(evidence: Mapping[str, Any]) -> str:
    return json.dumps(dict(evidence), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def record_event(
    conn: Connection,
    *,
    at: datetime,
    action: str,
    actor: str,
    patient_pk: int | None = None,
    from_person: int | None = None,
    to_person: int | None = None,
    reason: str = "",
    evidence: Mapping[str, Any] | None = None,
) -> int:
    pk = conn.execute(identity_event.insert().values(
        at=at, action=action, patient_pk=patient_pk, from_person=from_person, to_person=to_person,
        actor=actor[:100], reason=reason[:500], evidence=dumps(evidence or {}),
    )).inserted_primary_key
    assert pk is not None
    return int(pk[0])


def _event(row: Any) -> IdentityEvent:
    try:
        evidence = json.loads(row.evidence)
    except ValueError:
        evidence = {}
    return IdentityEvent(int(row.id), row.at, row.action, row.patient_pk, row.from_person, row.to_person,
                         row.actor, row.reason, evidence if isinstance(evidence, dict) else {})


def get_event(conn: Connection, event_id: int) -> IdentityEvent | None:
    row = conn.execute(select(identity_event).where(identity_event.c.id == event_id)).first()
    return None if row is None else _event(row)


def events_of(conn: Connection, person_id: int, *, limit: int = 1000) -> list[IdentityEvent]:
    """The history of a person: events naming it, and events of its current identities."""
    pks = select(patient.c.id).where(patient.c.person_id == person_id).scalar_subquery()
    rows = conn.execute(
        select(identity_event)
        .where(or_(identity_event.c.from_person == person_id, identity_event.c.to_person == person_id,
                   identity_event.c.patient_pk.in_(pks)))
        .order_by(identity_event.c.id)
        .limit(limit)
    )
    return [_event(r) for r in rows]


def last_merge_of(conn: Connection, person_id: int) -> IdentityEvent | None:
    """The person-level event of the latest merge of ``person_id`` into another person."""
    row = conn.execute(
        select(identity_event)
        .where(identity_event.c.action == "merge", identity_event.c.from_person == person_id,
               identity_event.c.patient_pk.is_(None))
        .order_by(identity_event.c.id.desc())
        .limit(1)
    ).first()
    return None if row is None else _event(row)


def ins_from_evidence(evidence: Mapping[str, Any]) -> QualifiedIns | None:
    """The INS an ingest event says the facility sent (``{"sent_ins": {...}}``)."""
    raw = evidence.get("sent_ins")
    if not isinstance(raw, Mapping):
        return None
    value, oid = raw.get("value"), raw.get("oid")
    if isinstance(value, str) and isinstance(oid, str) and oid in INS_OIDS and check_ins(value) is None:
        return QualifiedIns(value, oid)
    return None


def sent_ins(ins: QualifiedIns) -> dict[str, dict[str, str]]:
    """Evidence recording the INS a facility sent for an identity."""
    return {"sent_ins": {"value": ins.value, "oid": ins.oid}}


def ins_sent_by(conn: Connection, patient_pks: Iterable[int]) -> dict[int, QualifiedIns]:
    """The latest INS each identity's facility sent (from the ingest events)."""
    pks = sorted(set(patient_pks))
    found: dict[int, QualifiedIns] = {}
    if not pks:
        return found
    rows = conn.execute(
        select(identity_event.c.patient_pk, identity_event.c.evidence)
        .where(identity_event.c.patient_pk.in_(pks), identity_event.c.action.in_(("create", "link", "ins")),
               identity_event.c.evidence.like('%"sent_ins"%'))
        .order_by(identity_event.c.id)
    )
    for pk, raw in rows:
        try:
            evidence = json.loads(raw)
        except ValueError:
            continue
        ins = ins_from_evidence(evidence) if isinstance(evidence, dict) else None
        if ins is not None:
            found[int(pk)] = ins
    return found


# --- the reconciliation queue -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Candidate:
    id: int
    patient_pk: int
    candidate_person: int
    score: int
    evidence: dict[str, Any]
    #: open, linked, rejected
    status: str
    created_at: datetime
    decided_at: datetime | None
    decided_by: str


def _candidate(row: Any) -> Candidate:
    try:
        evidence = json.loads(row.evidence)
    except ValueError:
        evidence = {}
    return Candidate(int(row.id), int(row.patient_pk), int(row.candidate_person), int(row.score),
                     evidence if isinstance(evidence, dict) else {}, row.status, row.created_at,
                     row.decided_at, row.decided_by)


def add_candidate(
    conn: Connection, *, patient_pk: int, person_id: int, score: int, evidence: Mapping[str, Any], now: datetime
) -> bool:
    """Queue a possible match unless this pair is already queued (or was decided)."""
    exists = conn.execute(select(reconciliation_candidate.c.id).where(
        reconciliation_candidate.c.patient_pk == patient_pk,
        reconciliation_candidate.c.candidate_person == person_id)).first()
    if exists is not None:
        return False
    conn.execute(reconciliation_candidate.insert().values(
        patient_pk=patient_pk, candidate_person=person_id, score=score, evidence=dumps(evidence),
        status=OPEN, created_at=now))
    return True


def get_candidate(conn: Connection, candidate_id: int, *, for_update: bool = False) -> Candidate | None:
    if not 0 < candidate_id <= MAX_ID:
        return None
    stmt = select(reconciliation_candidate).where(reconciliation_candidate.c.id == candidate_id)
    if for_update:
        stmt = stmt.with_for_update()
    row = conn.execute(stmt).first()
    return None if row is None else _candidate(row)


def list_candidates(
    conn: Connection,
    *,
    status: str | None = OPEN,
    facility_ids: Iterable[int] | None = None,
    patient_pk: int | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[Candidate]:
    """Candidates by id, optionally of one status and of identities of some facilities."""
    stmt = select(reconciliation_candidate).order_by(reconciliation_candidate.c.id)
    if status is not None:
        stmt = stmt.where(reconciliation_candidate.c.status == status)
    if patient_pk is not None:
        stmt = stmt.where(reconciliation_candidate.c.patient_pk == patient_pk)
    if facility_ids is not None:
        of_facilities = select(patient.c.id).where(patient.c.facility_id.in_(sorted(set(facility_ids))))
        stmt = stmt.where(reconciliation_candidate.c.patient_pk.in_(of_facilities.scalar_subquery()))
    return [_candidate(r) for r in conn.execute(stmt.limit(limit).offset(offset))]


def decide_candidate(conn: Connection, candidate_id: int, *, status: str, at: datetime, by: str) -> None:
    conn.execute(reconciliation_candidate.update().where(reconciliation_candidate.c.id == candidate_id)
                 .values(status=status, decided_at=at, decided_by=by[:100]))


def close_resolved_candidates(
    conn: Connection, *, patient_pks: Iterable[int] = (), person_ids: Iterable[int] = (), at: datetime, by: str
) -> list[int]:
    """Mark ``linked`` the open candidates whose patient now belongs to the candidate
    person (after a link or a merge); returns their ids."""
    pks, persons = sorted(set(patient_pks)), sorted(set(person_ids))
    if not pks and not persons:
        return []
    rows = conn.execute(
        select(reconciliation_candidate.c.id, reconciliation_candidate.c.candidate_person,
               patient.c.person_id)
        .join(patient, patient.c.id == reconciliation_candidate.c.patient_pk)
        .where(reconciliation_candidate.c.status == OPEN,
               or_(reconciliation_candidate.c.patient_pk.in_(pks),
                   reconciliation_candidate.c.candidate_person.in_(persons),
                   patient.c.person_id.in_(persons)))
    ).all()
    closed = [int(r.id) for r in rows
              if r.person_id is not None and current_person(conn, int(r.candidate_person)) == r.person_id]
    for candidate_id in closed:
        decide_candidate(conn, candidate_id, status=LINKED, at=at, by=by)
    return closed


def count_candidates(conn: Connection, status: str = OPEN) -> int:
    return int(conn.execute(select(func.count()).select_from(reconciliation_candidate)
                            .where(reconciliation_candidate.c.status == status)).scalar_one())
