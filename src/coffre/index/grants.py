"""Grants and oppositions in the index (tables ``access_grant`` and ``opposition``).

A grant or opposition recorded for a person that was later merged into another one
applies to the absorbing person: reads map ``person.merged_into`` (one level; merges
re-point older merges, see ``index/persons.py``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, and_, func, or_, select, update
from sqlalchemy.sql.elements import ColumnElement

from coffre.index.schema import access_grant, opposition, patient, person, study

KINDS = ("care", "reading", "break-glass", "share")


@dataclass(frozen=True, slots=True)
class GrantRow:
    id: int
    kind: str
    person_id: int | None
    study_pk: int | None
    grantee_facility_id: int | None
    grantee_user: str
    granted_by: str
    granted_by_facility_id: int | None
    reason: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    reviewed_at: datetime | None
    reviewed_by: str
    review_note: str


def _effective(column: ColumnElement[int | None]) -> ColumnElement[int | None]:
    """The person a (possibly merged) person id stands for now."""
    merged = select(person.c.merged_into).where(person.c.id == column).scalar_subquery()
    return func.coalesce(merged, column)


def insert_grant(
    conn: Connection,
    *,
    kind: str,
    person_id: int | None,
    study_pk: int | None,
    grantee_facility_id: int | None,
    grantee_user: str,
    granted_by: str,
    granted_by_facility_id: int | None,
    reason: str,
    created_at: datetime,
    expires_at: datetime,
) -> int:
    if kind not in KINDS:
        raise ValueError(f"unknown grant kind {kind!r}")
    new_id: int = conn.execute(
        access_grant.insert().returning(access_grant.c.id),
        dict(kind=kind, person_id=person_id, study_pk=study_pk, grantee_facility_id=grantee_facility_id,
             grantee_user=grantee_user[:200], granted_by=granted_by[:200],
             granted_by_facility_id=granted_by_facility_id, reason=reason[:500],
             created_at=created_at, expires_at=expires_at),
    ).scalar_one()
    return new_id


def get_grant(conn: Connection, grant_id: int) -> GrantRow | None:
    row = conn.execute(select(access_grant).where(access_grant.c.id == grant_id)).first()
    return _grant(row) if row is not None else None


def _grant(r: object) -> GrantRow:
    return GrantRow(**{name: getattr(r, name) for name in GrantRow.__slots__})


def revoke_grant(conn: Connection, grant_id: int, *, at: datetime, by: str) -> bool:
    result = conn.execute(
        update(access_grant)
        .where(access_grant.c.id == grant_id, access_grant.c.revoked_at.is_(None))
        .values(revoked_at=at, revoked_by=by[:200])
    )
    return result.rowcount == 1


def review_grant(conn: Connection, grant_id: int, *, at: datetime, by: str, note: str) -> bool:
    result = conn.execute(
        update(access_grant)
        .where(access_grant.c.id == grant_id, access_grant.c.kind == "break-glass")
        .values(reviewed_at=at, reviewed_by=by[:200], review_note=note[:500])
    )
    return result.rowcount == 1


def list_grants(
    conn: Connection,
    *,
    kind: str | None = None,
    facility_ids: Iterable[int] | None = None,
    unreviewed: bool = False,
    person_id: int | None = None,
    limit: int = 500,
) -> list[GrantRow]:
    """Grants, newest first. ``facility_ids``: granted to, or about data of, these facilities."""
    stmt = select(access_grant).order_by(access_grant.c.id.desc()).limit(limit)
    if kind is not None:
        stmt = stmt.where(access_grant.c.kind == kind)
    if unreviewed:
        stmt = stmt.where(access_grant.c.reviewed_at.is_(None))
    if person_id is not None:
        stmt = stmt.where(_effective(access_grant.c.person_id) == person_id)
    if facility_ids is not None:
        ids = sorted(set(facility_ids))
        owning = select(patient.c.id).where(patient.c.facility_id.in_(ids),
                                            patient.c.person_id == _effective(access_grant.c.person_id))
        stmt = stmt.where(or_(access_grant.c.grantee_facility_id.in_(ids),
                              access_grant.c.granted_by_facility_id.in_(ids), owning.exists()))
    return [_grant(r) for r in conn.execute(stmt)]


@dataclass(frozen=True, slots=True)
class ActiveGrants:
    care: frozenset[int]
    reading: dict[int, int | None]
    break_glass: frozenset[int]


def active_grants(
    conn: Connection, *, facility_ids: Iterable[int], subject: str, now: datetime
) -> ActiveGrants:
    """The grants in force now for an actor of ``facility_ids`` (and user ``subject``)."""
    ids = sorted(set(facility_ids))
    to_actor: list[ColumnElement[bool]] = []
    if ids:
        to_actor.append(and_(access_grant.c.grantee_facility_id.in_(ids), access_grant.c.grantee_user == ""))
    if subject:
        to_actor.append(access_grant.c.grantee_user == subject)
    if not to_actor:
        return ActiveGrants(frozenset(), {}, frozenset())
    stmt = select(
        access_grant.c.kind, _effective(access_grant.c.person_id).label("person_id"), access_grant.c.study_pk
    ).where(
        or_(*to_actor),
        access_grant.c.revoked_at.is_(None),
        access_grant.c.expires_at > now,
        access_grant.c.created_at <= now,
    )
    care: set[int] = set()
    btg: set[int] = set()
    reading_studies: set[int] = set()
    for kind, person_id, study_pk in conn.execute(stmt):
        if kind == "care" and person_id is not None:
            care.add(person_id)
        elif kind == "break-glass" and person_id is not None:
            btg.add(person_id)
        elif kind == "reading" and study_pk is not None:
            reading_studies.add(study_pk)
    reading: dict[int, int | None] = {}
    if reading_studies:
        rows = conn.execute(
            select(study.c.id, patient.c.person_id)
            .join(patient, patient.c.id == study.c.patient_pk)
            .where(study.c.id.in_(sorted(reading_studies)))
        )
        reading = {sid: pid for sid, pid in rows}
    return ActiveGrants(frozenset(care), reading, frozenset(btg))


def opposed_persons(conn: Connection, among: Iterable[int] | None = None) -> frozenset[int]:
    """Persons with an opposition in force (restricted to ``among`` when given)."""
    effective = _effective(opposition.c.person_id)
    stmt = select(effective).where(opposition.c.withdrawn_at.is_(None)).distinct()
    if among is not None:
        wanted = sorted(set(among))
        if not wanted:
            return frozenset()
        stmt = stmt.where(effective.in_(wanted))
    return frozenset(int(pid) for (pid,) in conn.execute(stmt) if pid is not None)


def insert_opposition(
    conn: Connection, *, person_id: int, facility_id: int, recorded_by: str, reason: str, at: datetime
) -> int:
    new_id: int = conn.execute(
        opposition.insert().returning(opposition.c.id),
        dict(person_id=person_id, facility_id=facility_id, recorded_by=recorded_by[:200],
             reason=reason[:500], created_at=at),
    ).scalar_one()
    return new_id


def withdraw_oppositions(conn: Connection, person_id: int, *, at: datetime, by: str) -> int:
    result = conn.execute(
        update(opposition)
        .where(_effective(opposition.c.person_id) == person_id, opposition.c.withdrawn_at.is_(None))
        .values(withdrawn_at=at, withdrawn_by=by[:200])
    )
    return int(result.rowcount)


def study_owner(conn: Connection, study_pk: int) -> tuple[int, int | None] | None:
    """(facility id, person id) of a study, or None."""
    row = conn.execute(
        select(study.c.facility_id, patient.c.person_id)
        .join(patient, patient.c.id == study.c.patient_pk)
        .where(study.c.id == study_pk)
    ).first()
    return (row[0], row[1]) if row is not None else None


def study_pks(conn: Connection, study_instance_uid: str, facility_ids: Iterable[int] | None) -> list[int]:
    """The study rows of a StudyInstanceUID (in ``facility_ids`` when given)."""
    stmt = select(study.c.id).where(study.c.study_instance_uid == study_instance_uid)
    if facility_ids is not None:
        stmt = stmt.where(study.c.facility_id.in_(sorted(set(facility_ids))))
    return [int(pk) for (pk,) in conn.execute(stmt)]


def persons_with_ins(conn: Connection, ins: str) -> list[int]:
    """Current persons carrying the national identifier ``ins``."""
    rows = conn.execute(select(person.c.id).where(person.c.ins == ins, person.c.merged_into.is_(None)))
    return [int(pid) for (pid,) in rows]
