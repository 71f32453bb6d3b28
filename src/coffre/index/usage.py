"""Usage of the archive per facility and calendar month, counted by SQL ``GROUP BY``.

Two sources (see ``services/usage.py`` for what the numbers mean):

- ``instance_file``: one row per stored object (a blob), ``received_at`` when it
  arrived, ``size`` its bytes; rows ``stored`` (current) and ``superseded`` (an older
  version, kept: original bytes are preserved) are blobs the archive holds, ``pending``
  rows are not (an ingest in flight or abandoned);
- ``study``: ``created_at`` is when the archive received the study's first instance.

**Months in SQL.** ``UtcDateTime`` stores different things on the two backends, so the
month of an instant is a dialect-specific expression (:func:`month_of`):

- SQLite: naive UTC text ``YYYY-MM-DD HH:MM:SS.ffffff`` → ``substr(column, 1, 7)``;
- PostgreSQL: ``timestamptz`` → ``to_char(timezone('UTC', column), 'YYYY-MM')``: the
  month in UTC whatever the session's ``TimeZone``.

The expressions use SQL literals only (no bind parameters), so the same expression in
the select list and in ``GROUP BY`` is textually identical, which PostgreSQL requires.
Period bounds are compared as instants (bound through ``UtcDateTime``), never as text.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, func, literal_column, select
from sqlalchemy.sql.elements import ColumnElement

from coffre.index.instances import STORED, SUPERSEDED
from coffre.index.schema import instance_file, study

#: file statuses whose blobs the archive holds
HELD = (STORED, SUPERSEDED)


def month_of(column: ColumnElement[datetime], dialect: str) -> ColumnElement[str]:
    """``YYYY-MM`` (UTC) of a ``UtcDateTime`` column, for ``dialect`` (module doc)."""
    if dialect == "sqlite":
        return func.substr(column, literal_column("1"), literal_column("7"))
    if dialect == "postgresql":
        utc = func.timezone(literal_column("'UTC'"), column)
        return func.to_char(utc, literal_column("'YYYY-MM'"))
    raise ValueError(f"unsupported index backend {dialect!r}")


@dataclass(frozen=True, slots=True)
class Received:
    """What one facility received in one month."""

    facility_id: int
    month: str
    #: studies whose first instance arrived in the month
    studies: int = 0
    #: objects stored in the month (each version of an instance counts)
    instances: int = 0
    #: their bytes
    bytes: int = 0


def received_by_month(
    conn: Connection, *, start: datetime, end: datetime, facility_ids: Iterable[int] | None = None
) -> list[Received]:
    """Per (facility, month) with activity in ``[start, end)``: studies, objects, bytes."""
    ids = None if facility_ids is None else sorted(set(facility_ids))
    dialect = conn.dialect.name
    file_month = month_of(instance_file.c.received_at, dialect).label("month")
    files = (
        select(instance_file.c.facility_id, file_month, func.count().label("n"),
               func.coalesce(func.sum(instance_file.c.size), 0).label("bytes"))
        .where(instance_file.c.status.in_(HELD), instance_file.c.received_at >= start,
               instance_file.c.received_at < end)
        .group_by(instance_file.c.facility_id, month_of(instance_file.c.received_at, dialect))
    )
    if ids is not None:
        files = files.where(instance_file.c.facility_id.in_(ids))
    study_month = month_of(study.c.created_at, dialect).label("month")
    studies = (
        select(study.c.facility_id, study_month, func.count().label("n"))
        .where(study.c.created_at >= start, study.c.created_at < end)
        .group_by(study.c.facility_id, month_of(study.c.created_at, dialect))
    )
    if ids is not None:
        studies = studies.where(study.c.facility_id.in_(ids))
    found: dict[tuple[int, str], Received] = {}
    for facility_id, month, count, size in conn.execute(files):
        key = (int(facility_id), str(month))
        found[key] = Received(key[0], key[1], instances=int(count), bytes=int(size))
    for facility_id, month, count in conn.execute(studies):
        key = (int(facility_id), str(month))
        before = found.get(key, Received(key[0], key[1]))
        found[key] = Received(key[0], key[1], studies=int(count), instances=before.instances, bytes=before.bytes)
    return [found[k] for k in sorted(found)]


def held_before(conn: Connection, *, before: datetime, facility_ids: Iterable[int] | None = None) -> dict[int, int]:
    """Bytes of the blobs held now that arrived before ``before``, per facility."""
    stmt = (
        select(instance_file.c.facility_id, func.coalesce(func.sum(instance_file.c.size), 0))
        .where(instance_file.c.status.in_(HELD), instance_file.c.received_at < before)
        .group_by(instance_file.c.facility_id)
    )
    if facility_ids is not None:
        stmt = stmt.where(instance_file.c.facility_id.in_(sorted(set(facility_ids))))
    return {int(fid): int(size) for fid, size in conn.execute(stmt)}


__all__ = ["HELD", "Received", "held_before", "month_of", "received_by_month"]
