"""API tokens of DICOMweb clients, bound to one facility.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 22:45:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_token",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("facility_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("permissions", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["facility_id"], ["facility.id"], name=op.f("fk_api_token_facility_id_facility")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_token")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_token_token_hash")),
        sa.UniqueConstraint("facility_id", "name", name=op.f("uq_api_token_facility_id_name")),
    )
    op.create_index(op.f("ix_api_token_facility_id"), "api_token", ["facility_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_api_token_facility_id"), table_name="api_token")
    op.drop_table("api_token")
