"""Persons and their local identities in the index (tables ``person``, ``patient``)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, select

from coffre.index.schema import facility, patient, person


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
