"""Index AcquisitionDateTime (0008,002A) at the IMAGE level, for DT range matching
(PS3.4 C.2.2.2.5).

Existing instances are backfilled from their stored DICOM JSON (PS3.18 F.2: the
top-level key ``0008002A``), normalised by the same ``normalize_dt`` as ingest, in
batches of ``_BATCH`` rows; a malformed or multi-valued value stays ``""`` (not indexed),
as ingest leaves it. No index on the column: the other date and time columns of
``instance`` have none either (an IMAGE-level search is narrowed by its study or series).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 10:00:00
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

from coffre.dicom.instance import normalize_dt

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_KEY = "0008002A"
_BATCH = 500
_LENGTH = 26


def upgrade() -> None:
    # instance is referenced by other tables: a batch copy of it would break SQLite's
    # foreign keys, and plain ADD COLUMN is enough on both backends
    op.add_column(
        "instance",
        sa.Column("acquisition_datetime", sa.String(length=_LENGTH), server_default="", nullable=False),
    )
    backfill(op.get_bind())


def backfill(conn: sa.Connection, batch: int = _BATCH) -> int:
    """Set ``acquisition_datetime`` of every instance whose DICOM JSON has a valid one;
    the number of rows set. Keyset batches in id order: memory stays bounded."""
    instance = sa.table(
        "instance",
        sa.column("id", _ID),
        sa.column("dicom_json", sa.Text()),
        sa.column("acquisition_datetime", sa.String(_LENGTH)),
    )
    select = (
        sa.select(instance.c.id, instance.c.dicom_json)
        .where(instance.c.id > sa.bindparam("last"), instance.c.dicom_json.contains(f'"{_KEY}"'))
        .order_by(instance.c.id)
        .limit(batch)
    )
    update = (
        sa.update(instance)
        .where(instance.c.id == sa.bindparam("pk"))
        .values(acquisition_datetime=sa.bindparam("value"))
    )
    last, done = 0, 0
    while True:
        rows = conn.execute(select, {"last": last}).all()
        if not rows:
            return done
        last = rows[-1].id
        values = [{"pk": row.id, "value": value} for row in rows if (value := _value(row.dicom_json))]
        if values:
            conn.execute(update, values)
            done += len(values)


def _value(dicom_json: str) -> str:
    """The normalised top-level AcquisitionDateTime of ``dicom_json``, or ``""``."""
    try:
        element: Any = json.loads(dicom_json).get(_KEY)
    except (ValueError, AttributeError):
        return ""
    values = element.get("Value") if isinstance(element, dict) else None
    if not isinstance(values, list) or len(values) != 1 or not isinstance(values[0], str):
        return ""
    return normalize_dt(values[0]) or ""


def downgrade() -> None:
    op.drop_column("instance", "acquisition_datetime")  # SQLite ≥ 3.35 drops a column
