"""Grants and oppositions in the index (tables ``access_grant`` and ``opposition``).

A grant or opposition recorded for a person that was later merged into another one
applies to the absorbing person: reads map ``person.merged_into`` (one level; merges
re-point older merges, see ``index/persons.py``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, bindparam, func, or_, select, update
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


# The statements of :func:`active_grants` and :func:`opposed_persons` run for every
# C-FIND, QIDO-RS and retrieve: built once here with bound values (built per call, with
# their IN lists, they cost 0.15-0.25 ms of SQLAlchemy work each, 5-8x the execution).
# One value (the usual one-facility actor) is ``=``; several are an expanding IN.
_ONE_FACILITY = and_(access_grant.c.grantee_facility_id == bindparam("g_facility_id"),
                     access_grant.c.grantee_user == "")
_FACILITIES = and_(access_grant.c.grantee_facility_id.in_(bindparam("g_facility_ids", expanding=True)),
                   access_grant.c.grantee_user == "")
_TO_SUBJECT = access_grant.c.grantee_user == bindparam("g_subject")


def _active_statement(*to_actor: ColumnElement[bool]) -> Any:
    return select(
        access_grant.c.kind, _effective(access_grant.c.person_id).label("person_id"), access_grant.c.study_pk
    ).where(
        or_(*to_actor),
        access_grant.c.revoked_at.is_(None),
        access_grant.c.expires_at > bindparam("g_now"),
        access_grant.c.created_at <= bindparam("g_now"),
    )


# keyed by (facilities: 0 none, 1 one, 2 several; with a user subject)
_ACTIVE: dict[tuple[int, bool], Any] = {
    (1, False): _active_statement(_ONE_FACILITY),
    (2, False): _active_statement(_FACILITIES),
    (0, True): _active_statement(_TO_SUBJECT),
    (1, True): _active_statement(_ONE_FACILITY, _TO_SUBJECT),
    (2, True): _active_statement(_FACILITIES, _TO_SUBJECT),
}
_READING_PERSONS = select(study.c.id, patient.c.person_id).join(patient, patient.c.id == study.c.patient_pk)
_READING_ONE = _READING_PERSONS.where(study.c.id == bindparam("g_study_pk"))
_READING_SEVERAL = _READING_PERSONS.where(study.c.id.in_(bindparam("g_study_pks", expanding=True)))


def active_grants(
    conn: Connection, *, facility_ids: Iterable[int], subject: str, now: datetime
) -> ActiveGrants:
    """The grants in force now for an actor of ``facility_ids`` (and user ``subject``)."""
    ids = sorted(set(facility_ids))
    if not ids and not subject:
        return ActiveGrants(frozenset(), {}, frozenset())
    params: dict[str, Any] = {"g_now": now}
    if len(ids) == 1:
        params["g_facility_id"] = ids[0]
    elif ids:
        params["g_facility_ids"] = ids
    if subject:
        params["g_subject"] = subject
    stmt = _ACTIVE[min(len(ids), 2), bool(subject)]
    care: set[int] = set()
    btg: set[int] = set()
    reading_studies: set[int] = set()
    for kind, person_id, study_pk in conn.execute(stmt, params):
        if kind == "care" and person_id is not None:
            care.add(person_id)
        elif kind == "break-glass" and person_id is not None:
            btg.add(person_id)
        elif kind == "reading" and study_pk is not None:
            reading_studies.add(study_pk)
    reading: dict[int, int | None] = {}
    if reading_studies:
        studies = sorted(reading_studies)
        rows = (
            conn.execute(_READING_ONE, {"g_study_pk": studies[0]})
            if len(studies) == 1
            else conn.execute(_READING_SEVERAL, {"g_study_pks": studies})
        )
        reading = {sid: pid for sid, pid in rows}
    return ActiveGrants(frozenset(care), reading, frozenset(btg))


def _opposed_statement(among: str = "") -> Any:
    """Oppositions in force; ``among`` "one" (``= :g_person_id``) or "several" (``IN``)."""
    effective = _effective(opposition.c.person_id)
    stmt = select(effective).where(opposition.c.withdrawn_at.is_(None)).distinct()
    if among == "one":
        stmt = stmt.where(effective == bindparam("g_person_id"))
    elif among == "several":
        stmt = stmt.where(effective.in_(bindparam("g_person_ids", expanding=True)))
    return stmt


_OPPOSED = _opposed_statement()
_OPPOSED_ONE = _opposed_statement("one")
_OPPOSED_AMONG = _opposed_statement("several")


def opposed_persons(conn: Connection, among: Iterable[int] | None = None) -> frozenset[int]:
    """Persons with an opposition in force (restricted to ``among`` when given)."""
    if among is None:
        rows = conn.execute(_OPPOSED)
    else:
        wanted = sorted(set(among))
        if not wanted:
            return frozenset()
        rows = (
            conn.execute(_OPPOSED_ONE, {"g_person_id": wanted[0]})
            if len(wanted) == 1
            else conn.execute(_OPPOSED_AMONG, {"g_person_ids": wanted})
        )
    return frozenset(int(pid) for (pid,) in rows if pid is not None)


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
