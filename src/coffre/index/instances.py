"""Instances in the index: the two phases of ingest and what reconciliation reads.

Phase one, :func:`reserve_file`, records a ``pending`` file row for a blob about to be
written, in its own transaction. Phase two, :func:`commit_instance`, runs in the
transaction that also writes the audit event: it upserts patient, study, series and
instance, and marks the file ``stored``. A crash between the phases leaves a pending
row (and maybe a blob) that ``coffre check`` removes: it was never acknowledged.

Upserts use ``INSERT … ON CONFLICT DO NOTHING`` then ``SELECT`` so that concurrent
associations storing the same study never fail on a unique constraint.

Phase two also links identities to persons (``index/matching.py``) in the same
transaction: a new ``patient`` row gets its person (qualified INS match, or a new
person with reconciliation candidates); an existing one is only looked at when the
object carries an INS qualifier, so storing more objects of a known patient costs one
substring test more than before.
"""

from __future__ import annotations

import enum
import functools
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, bindparam, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite

from coffre.dicom.attributes import Kind, Level, at_level
from coffre.dicom.instance import ParsedInstance
from coffre.index import matching
from coffre.index.schema import (
    change,
    facility,
    instance,
    instance_conflict,
    instance_file,
    patient,
    series,
    study,
)
from coffre.model import Conflict

PENDING = "pending"
STORED = "stored"
SUPERSEDED = "superseded"


class Outcome(enum.StrEnum):
    NEW = "new"
    DUPLICATE = "duplicate"
    NEW_VERSION = "new-version"


@dataclass(frozen=True, slots=True)
class Committed:
    outcome: Outcome
    instance_pk: int
    #: what happened to identities (None: nothing, the usual case for a known patient)
    identity: matching.IdentityOutcome | None = None


def _columns(level: Level, values: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for attr in at_level(level):
        value = values.get(attr.column)
        out[attr.column] = value if attr.kind is Kind.INT or value is not None else ""
        if attr.kind is Kind.PN:
            out[f"{attr.column}_norm"] = values.get(f"{attr.column}_norm") or ""
    return out


@functools.lru_cache(maxsize=32)
def _insert_statement(dialect: str, table: Table, columns: tuple[str, ...], keys: tuple[str, ...]) -> Any:
    """``INSERT … ON CONFLICT DO NOTHING RETURNING id`` with bound parameters, built once.

    Values are passed at execution, so SQLAlchemy compiles the statement once per shape
    instead of once per instance (statement building was a large part of ingest's CPU).
    """
    insert: Any = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(table).values({c: bindparam(c) for c in columns})
    return stmt.on_conflict_do_nothing(index_elements=list(keys)).returning(table.c.id)


@functools.lru_cache(maxsize=32)
def _select_statement(table: Table, keys: tuple[str, ...]) -> Any:
    return select(table.c.id).where(*[table.c[k] == bindparam(f"k_{k}") for k in keys])


def _insert_ignore(
    conn: Connection, table: Table, values: dict[str, Any], keys: tuple[str, ...]
) -> int | None:
    """Insert unless a row with the same unique ``keys`` exists; the new pk, or ``None``.

    ``RETURNING`` says whether a row was inserted: the DB-API ``rowcount`` of an
    ``INSERT … ON CONFLICT DO NOTHING RETURNING`` is -1 with psycopg.
    """
    stmt = _insert_statement(conn.dialect.name, table, tuple(sorted(values)), keys)
    row = conn.execute(stmt, values).first()
    return None if row is None else int(row.id)


def _upsert(
    conn: Connection, table: Table, values: dict[str, Any], keys: tuple[str, ...]
) -> tuple[int, bool]:
    """Insert unless the unique ``keys`` exist; return (pk, created)."""
    lookup = _select_statement(table, keys)
    params = {f"k_{k}": values[k] for k in keys}
    row = conn.execute(lookup, params).first()
    if row is not None:
        return int(row.id), False
    pk = _insert_ignore(conn, table, values, keys)
    if pk is not None:
        return pk, True
    # a concurrent transaction inserted it first (and has committed: we waited for it)
    row = conn.execute(lookup, params).first()
    assert row is not None
    return int(row.id), False


#: built once: building the statement per call (and an expanding ``IN``) cost 0.5 ms of
#: CPU per stored object, more than running it (docs/performance.md, section 3)
_FIND_STORED_COPY = select(instance_file.c.instance_pk).where(
    instance_file.c.facility_id == bindparam("facility_id"),
    instance_file.c.sop_instance_uid == bindparam("sop_instance_uid"),
    instance_file.c.sha256 == bindparam("sha256"),
    or_(instance_file.c.status == STORED, instance_file.c.status == SUPERSEDED),
)
_RESERVE_FILE = instance_file.insert()
_MARK_STORED = (
    instance_file.update()
    .where(instance_file.c.id == bindparam("b_file_pk"))
    .values(status=STORED, instance_pk=bindparam("b_instance_pk"), stored_at=bindparam("b_stored_at"))
)
_INSERT_CHANGE = change.insert()


def find_stored_copy(conn: Connection, facility_id: int, sop_instance_uid: str, sha256: str) -> int | None:
    """The instance pk if these exact bytes are already archived for this facility."""
    row = conn.execute(
        _FIND_STORED_COPY, {"facility_id": facility_id, "sop_instance_uid": sop_instance_uid, "sha256": sha256}
    ).first()
    return None if row is None else int(row.instance_pk)


def reserve_file(
    conn: Connection,
    *,
    facility_id: int,
    sop_instance_uid: str,
    blob_key: str,
    size: int,
    sha256: str,
    source: str,
    now: datetime,
) -> int:
    pk = conn.execute(
        _RESERVE_FILE,
        dict(
            facility_id=facility_id,
            sop_instance_uid=sop_instance_uid,
            blob_key=blob_key,
            size=size,
            sha256=sha256,
            status=PENDING,
            source=source[:100],
            received_at=now,
        )
    ).inserted_primary_key
    assert pk is not None
    return int(pk[0])


def discard_file(conn: Connection, file_pk: int) -> None:
    """Remove a pending file row (its blob was never acknowledged)."""
    conn.execute(
        instance_file.delete().where(instance_file.c.id == file_pk, instance_file.c.status == PENDING)
    )


def commit_instance(
    conn: Connection,
    *,
    facility_id: int,
    default_issuer: str,
    file_pk: int,
    blob_key: str,
    size: int,
    sha256: str,
    source: str,
    parsed: ParsedInstance,
    now: datetime,
    actor: str = "ingest",
) -> Committed:
    """Phase two: index the instance, link a new identity to its person, mark the file
    stored (caller's transaction). ``actor`` labels the identity events (no patient data)."""
    attrs = dict(parsed.attributes)
    attrs.update(
        sop_instance_uid=parsed.sop_instance_uid,
        sop_class_uid=parsed.sop_class_uid,
        study_instance_uid=parsed.study_instance_uid,
        series_instance_uid=parsed.series_instance_uid,
    )
    if not attrs.get("issuer"):
        attrs["issuer"] = default_issuer
    stamps = {"created_at": now, "updated_at": now, "facility_id": facility_id}

    patient_pk, new_patient = _upsert(
        conn, patient, {**_columns(Level.PATIENT, attrs), **stamps}, ("facility_id", "issuer", "patient_id")
    )
    study_pk, new_study = _upsert(
        conn,
        study,
        {**_columns(Level.STUDY, attrs), **stamps, "patient_pk": patient_pk},
        ("facility_id", "study_instance_uid"),
    )
    series_pk, new_series = _upsert(
        conn,
        series,
        {**_columns(Level.SERIES, attrs), **stamps, "study_pk": study_pk},
        ("facility_id", "series_instance_uid"),
    )
    current = {
        **_columns(Level.IMAGE, attrs),
        "series_pk": series_pk,
        "file_pk": file_pk,
        "transfer_syntax_uid": parsed.transfer_syntax_uid,
        "blob_key": blob_key,
        "size": size,
        "sha256": sha256,
        "dicom_json": parsed.dicom_json,
        "frame_offsets": json.dumps(parsed.frame_offsets, separators=(",", ":")),
        "updated_at": now,
    }
    instance_pk, created = _upsert(
        conn, instance, {**current, **stamps}, ("facility_id", "sop_instance_uid")
    )
    outcome = Outcome.NEW
    if not created:
        existing = conn.execute(
            select(instance.c.sha256, instance.c.file_pk).where(instance.c.id == instance_pk)
        ).one()
        if existing.sha256 == sha256:
            return Committed(Outcome.DUPLICATE, instance_pk)
        outcome = Outcome.NEW_VERSION
        conn.execute(instance.update().where(instance.c.id == instance_pk).values(current))
        conn.execute(
            instance_file.update()
            .where(instance_file.c.id == existing.file_pk)
            .values(status=SUPERSEDED)
        )
        conn.execute(
            instance_conflict.insert().values(
                facility_id=facility_id,
                instance_pk=instance_pk,
                previous_file_pk=existing.file_pk,
                new_file_pk=file_pk,
                source=source[:100],
                detected_at=now,
            )
        )
    identity: matching.IdentityOutcome | None
    if new_patient:
        identity = matching.link_new_identity(conn, patient_pk=patient_pk, parsed=parsed, actor=actor, now=now)
    else:
        identity = matching.note_ins(conn, patient_pk=patient_pk, parsed=parsed, actor=actor, now=now)
    conn.execute(_MARK_STORED, {"b_file_pk": file_pk, "b_instance_pk": instance_pk, "b_stored_at": now})
    changes = [(new_patient, "new-patient", Level.PATIENT, patient_pk)]
    changes += [(new_study, "new-study", Level.STUDY, study_pk)]
    changes += [(new_series, "new-series", Level.SERIES, series_pk)]
    changes += [(True, "new-instance" if outcome is Outcome.NEW else "new-version", Level.IMAGE, instance_pk)]
    rows = [
        {"at": now, "facility_id": facility_id, "change_type": kind, "level": level.value, "resource_pk": pk}
        for happened, kind, level, pk in changes
        if happened
    ]
    conn.execute(_INSERT_CHANGE, rows)
    return Committed(outcome, instance_pk, identity)


def list_conflicts(conn: Connection, facility_id: int | None = None) -> list[Conflict]:
    previous = instance_file.alias("previous")
    new = instance_file.alias("new")
    query = (
        select(
            instance_conflict.c.id,
            facility.c.slug,
            new.c.sop_instance_uid,
            previous.c.sha256.label("previous_sha256"),
            new.c.sha256.label("new_sha256"),
            instance_conflict.c.detected_at,
            instance_conflict.c.source,
        )
        .join(facility, facility.c.id == instance_conflict.c.facility_id)
        .join(previous, previous.c.id == instance_conflict.c.previous_file_pk)
        .join(new, new.c.id == instance_conflict.c.new_file_pk)
        .order_by(instance_conflict.c.id)
    )
    if facility_id is not None:
        query = query.where(instance_conflict.c.facility_id == facility_id)
    return [
        Conflict(
            id=r.id,
            facility_slug=r.slug,
            sop_instance_uid=r.sop_instance_uid,
            previous_sha256=r.previous_sha256,
            new_sha256=r.new_sha256,
            detected_at=r.detected_at,
            source=r.source,
        )
        for r in conn.execute(query)
    ]


@dataclass(frozen=True, slots=True)
class FileRow:
    id: int
    facility_id: int
    blob_key: str
    size: int
    sha256: str
    status: str
    received_at: datetime


def iter_files(conn: Connection) -> Iterator[FileRow]:
    """Every file row, in primary key order (for reconciliation)."""
    result = conn.execution_options(yield_per=1000).execute(
        select(
            instance_file.c.id,
            instance_file.c.facility_id,
            instance_file.c.blob_key,
            instance_file.c.size,
            instance_file.c.sha256,
            instance_file.c.status,
            instance_file.c.received_at,
        ).order_by(instance_file.c.id)
    )
    for r in result:
        yield FileRow(r.id, r.facility_id, r.blob_key, r.size, r.sha256, r.status, r.received_at)


def count_files(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(instance_file)).scalar_one())


@dataclass(frozen=True, slots=True)
class FacilityCounts:
    slug: str
    patients: int
    studies: int
    series: int
    instances: int
    bytes: int


def counts_by_facility(conn: Connection) -> list[FacilityCounts]:
    out: list[FacilityCounts] = []
    for f in conn.execute(select(facility.c.id, facility.c.slug).order_by(facility.c.slug)):
        def n(table: Table, fid: int = f.id) -> int:
            return int(conn.execute(select(func.count()).select_from(table).where(table.c.facility_id == fid)).scalar_one())

        size = conn.execute(
            select(func.coalesce(func.sum(instance.c.size), 0)).where(instance.c.facility_id == f.id)
        ).scalar_one()
        out.append(FacilityCounts(f.slug, n(patient), n(study), n(series), n(instance), int(size)))
    return out
