"""Index patients by (facility, PatientID) for queries that give no issuer.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 23:35:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(op.f("ix_patient_facility_id_patient_id"), "patient", ["facility_id", "patient_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_patient_facility_id_patient_id"), table_name="patient")
