"""Share links in the index (tables ``share_link`` and ``share_link_study``).

A link's counters change only through conditional, single-statement updates
(:func:`count_failure`, :func:`count_use`), so concurrent code entries can neither use
a link beyond its maximum nor unlock it: the database decides, not a read-then-write.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Row, Select, func, or_, select, update

from coffre.dicom.attributes import Level
from coffre.index.query import Scope, scope_condition
from coffre.index.schema import instance, patient, series, share_link, share_link_study, study

#: scopes of a link: one study, or a person's studies in a date range
SCOPES = ("study", "person")


@dataclass(frozen=True, slots=True)
class ShareRow:
    id: int
    token_hash: str
    code_hash: str
    person_id: int
    facility_id: int
    created_by: str
    recipient: str
    scope: str
    date_from: str
    date_to: str
    allow_download: bool
    max_uses: int
    uses: int
    failed_attempts: int
    locked_at: datetime | None
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    revoked_by: str

    def state(self, now: datetime) -> str:
        """``active``, ``revoked``, ``locked``, ``expired`` or ``used-up`` (first that applies)."""
        if self.revoked_at is not None:
            return "revoked"
        if self.locked_at is not None:
            return "locked"
        if self.expires_at <= now:
            return "expired"
        if self.uses >= self.max_uses:
            return "used-up"
        return "active"


def _row(r: object) -> ShareRow:
    return ShareRow(**{name: getattr(r, name) for name in ShareRow.__slots__})


def insert_share(
    conn: Connection,
    *,
    token_hash: str,
    code_hash: str,
    person_id: int,
    facility_id: int,
    created_by: str,
    recipient: str,
    scope: str,
    date_from: str,
    date_to: str,
    allow_download: bool,
    max_uses: int,
    created_at: datetime,
    expires_at: datetime,
    study_pks: Iterable[int],
) -> int:
    """A new link with its fixed set of studies; returns its id."""
    if scope not in SCOPES:
        raise ValueError(f"unknown share scope {scope!r}")
    new_id: int = conn.execute(
        share_link.insert().returning(share_link.c.id),
        dict(token_hash=token_hash, code_hash=code_hash, person_id=person_id, facility_id=facility_id,
             created_by=created_by[:200], recipient=recipient[:200], scope=scope, date_from=date_from,
             date_to=date_to, allow_download=allow_download, max_uses=max_uses, uses=0, failed_attempts=0,
             created_at=created_at, expires_at=expires_at),
    ).scalar_one()
    pks = sorted(set(study_pks))
    if pks:
        conn.execute(share_link_study.insert(), [{"share_link_id": new_id, "study_pk": pk} for pk in pks])
    return new_id


def get_share(conn: Connection, share_id: int) -> ShareRow | None:
    row = conn.execute(select(share_link).where(share_link.c.id == share_id)).first()
    return _row(row) if row is not None else None


def find_by_token_hash(conn: Connection, token_hash: str) -> ShareRow | None:
    row = conn.execute(select(share_link).where(share_link.c.token_hash == token_hash)).first()
    return _row(row) if row is not None else None


def studies_of(conn: Connection, share_id: int) -> frozenset[int]:
    """The studies (index ids) a link opens, fixed when it was created."""
    rows = conn.execute(select(share_link_study.c.study_pk).where(share_link_study.c.share_link_id == share_id))
    return frozenset(int(pk) for (pk,) in rows)


def study_counts(conn: Connection, share_ids: Iterable[int]) -> dict[int, int]:
    ids = sorted(set(share_ids))
    if not ids:
        return {}
    rows = conn.execute(
        select(share_link_study.c.share_link_id, func.count())
        .where(share_link_study.c.share_link_id.in_(ids))
        .group_by(share_link_study.c.share_link_id)
    )
    return {int(sid): int(n) for sid, n in rows}


def list_shares(
    conn: Connection,
    *,
    created_by: str | None = None,
    facility_ids: Iterable[int] | None = None,
    limit: int = 500,
) -> list[ShareRow]:
    """Links, newest first: those of ``created_by``, or of ``facility_ids``, or (both None) all.

    With both given, a link matching either is listed.
    """
    stmt = select(share_link).order_by(share_link.c.id.desc()).limit(limit)
    conditions: list[ColumnElement[bool]] = []
    if created_by is not None:
        conditions.append(share_link.c.created_by == created_by)
    if facility_ids is not None:
        conditions.append(share_link.c.facility_id.in_(sorted(set(facility_ids))))
    if conditions:
        stmt = stmt.where(or_(*conditions))
    return [_row(r) for r in conn.execute(stmt)]


def count_failure(conn: Connection, share_id: int, *, now: datetime, max_failures: int) -> tuple[int, bool]:
    """One more wrong access code; locks the link at ``max_failures``.

    Returns the number of failures and whether this one locked the link.
    """
    result = conn.execute(
        update(share_link)
        .where(share_link.c.id == share_id)
        .values(failed_attempts=share_link.c.failed_attempts + 1)
        .returning(share_link.c.failed_attempts, share_link.c.locked_at)
    ).first()
    if result is None:
        return 0, False
    failures, locked_at = int(result[0]), result[1]
    if failures >= max_failures and locked_at is None:
        locked = conn.execute(
            update(share_link)
            .where(share_link.c.id == share_id, share_link.c.locked_at.is_(None))
            .values(locked_at=now)
        ).rowcount == 1
        return failures, locked
    return failures, False


def count_use(conn: Connection, share_id: int, *, now: datetime) -> bool:
    """Count one use if the link is usable now (not revoked, locked, expired or used up)."""
    result = conn.execute(
        update(share_link)
        .where(
            share_link.c.id == share_id,
            share_link.c.revoked_at.is_(None),
            share_link.c.locked_at.is_(None),
            share_link.c.expires_at > now,
            share_link.c.uses < share_link.c.max_uses,
        )
        .values(uses=share_link.c.uses + 1)
    )
    return result.rowcount == 1


def revoke(conn: Connection, share_id: int, *, at: datetime, by: str) -> bool:
    result = conn.execute(
        update(share_link)
        .where(share_link.c.id == share_id, share_link.c.revoked_at.is_(None))
        .values(revoked_at=at, revoked_by=by[:200])
    )
    return result.rowcount == 1


# -- studies -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SharedStudy:
    """What the recipient's page shows of a study (and what creation checks)."""

    study_pk: int
    facility_id: int
    person_id: int | None
    study_instance_uid: str
    study_date: str
    study_time: str
    study_description: str
    patient_name: str
    modalities: tuple[str, ...]
    instances: int


def _study_select() -> Select[Any]:
    return (
        select(
            study.c.id, study.c.facility_id, patient.c.person_id, study.c.study_instance_uid, study.c.study_date,
            study.c.study_time, study.c.study_description, patient.c.patient_name,
        )
        .join(patient, patient.c.id == study.c.patient_pk)
        .order_by(study.c.study_date, study.c.study_time, study.c.id)
    )


def _shared_studies(conn: Connection, rows: list[Row[Any]]) -> list[SharedStudy]:
    pks = [int(r.id) for r in rows]
    modalities: dict[int, set[str]] = {pk: set() for pk in pks}
    counts: dict[int, int] = dict.fromkeys(pks, 0)
    if pks:
        stmt = (
            select(series.c.study_pk, series.c.modality, func.count(instance.c.id))
            .join(instance, instance.c.series_pk == series.c.id)
            .where(series.c.study_pk.in_(pks))
            .group_by(series.c.study_pk, series.c.modality)
        )
        for study_pk, modality, count in conn.execute(stmt):
            if modality:
                modalities[int(study_pk)].add(str(modality))
            counts[int(study_pk)] += int(count)
    return [
        SharedStudy(
            study_pk=int(r.id), facility_id=int(r.facility_id), person_id=r.person_id,
            study_instance_uid=r.study_instance_uid, study_date=r.study_date, study_time=r.study_time,
            study_description=r.study_description, patient_name=r.patient_name,
            modalities=tuple(sorted(modalities[int(r.id)])), instances=counts[int(r.id)],
        )
        for r in rows
    ]


def visible_studies(
    conn: Connection,
    scope: Scope,
    *,
    person_id: int | None = None,
    study_instance_uid: str | None = None,
    date_from: str = "",
    date_to: str = "",
) -> list[SharedStudy]:
    """Studies within ``scope`` (the caller's RETRIEVE scope: the one predicate of
    ``services.access``) of one person and/or with one UID, optionally in a date range
    (``YYYYMMDD``, inclusive; a study without a date is outside any bounded range)."""
    stmt = _study_select()
    if person_id is not None:
        stmt = stmt.where(patient.c.person_id == person_id)
    if study_instance_uid is not None:
        stmt = stmt.where(study.c.study_instance_uid == study_instance_uid)
    if date_from:
        stmt = stmt.where(study.c.study_date >= date_from, study.c.study_date != "")
    if date_to:
        stmt = stmt.where(study.c.study_date <= date_to, study.c.study_date != "")
    allowed = scope_condition(scope, Level.STUDY)
    if allowed is not None:
        stmt = stmt.where(allowed)
    return _shared_studies(conn, list(conn.execute(stmt.limit(10_000))))


def studies_by_pk(conn: Connection, study_pks: Iterable[int]) -> list[SharedStudy]:
    """The studies ``study_pks`` that still exist, by date."""
    pks = sorted(set(study_pks))
    if not pks:
        return []
    return _shared_studies(conn, list(conn.execute(_study_select().where(study.c.id.in_(pks)))))


# -- export ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExportRow:
    """One instance to export, with the keys of its DICOMDIR records (PS3.3 F.5)."""

    instance_id: int
    blob_key: str
    size: int
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    instance_number: int | None
    series_instance_uid: str
    modality: str
    series_number: int | None
    study_pk: int
    study_instance_uid: str
    study_date: str
    study_time: str
    study_description: str
    study_id: str
    accession_number: str
    study_created_at: datetime
    facility_id: int
    patient_pk: int
    patient_id: str
    patient_name: str
    person_id: int | None


def export_rows(conn: Connection, study_pks: Iterable[int]) -> Iterator[ExportRow]:
    """The current version of every instance of ``study_pks``, study by study, streamed."""
    pks = sorted(set(study_pks))
    if not pks:
        return
    stmt = (
        select(
            instance.c.id.label("instance_id"), instance.c.blob_key, instance.c.size, instance.c.sop_class_uid,
            instance.c.sop_instance_uid, instance.c.transfer_syntax_uid, instance.c.instance_number,
            series.c.series_instance_uid, series.c.modality, series.c.series_number,
            study.c.id.label("study_pk"), study.c.study_instance_uid, study.c.study_date, study.c.study_time,
            study.c.study_description, study.c.study_id, study.c.accession_number,
            study.c.created_at.label("study_created_at"), study.c.facility_id,
            patient.c.id.label("patient_pk"), patient.c.patient_id, patient.c.patient_name, patient.c.person_id,
        )
        .join(series, series.c.id == instance.c.series_pk)
        .join(study, study.c.id == series.c.study_pk)
        .join(patient, patient.c.id == study.c.patient_pk)
        .where(study.c.id.in_(pks))
        .order_by(study.c.study_date, study.c.id, series.c.series_number, series.c.id,
                  instance.c.instance_number, instance.c.id)
    )
    for r in conn.execute(stmt.execution_options(yield_per=500)):
        yield ExportRow(**{name: getattr(r, name) for name in ExportRow.__slots__})
