"""Share links for GPs and patients, with the studies each one opens; patients indexed
by birth date (the reconciliation's resemblance search).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 00:50:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from coffre.index.schema import UtcDateTime

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table('share_link',
    sa.Column('id', _ID, autoincrement=True, nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('code_hash', sa.String(length=200), nullable=False),
    sa.Column('person_id', _ID, nullable=False),
    sa.Column('facility_id', _ID, nullable=False),
    sa.Column('created_by', sa.String(length=200), nullable=False),
    sa.Column('recipient', sa.String(length=200), server_default='', nullable=False),
    sa.Column('scope', sa.String(length=16), nullable=False),
    sa.Column('date_from', sa.String(length=8), server_default='', nullable=False),
    sa.Column('date_to', sa.String(length=8), server_default='', nullable=False),
    sa.Column('allow_download', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('max_uses', sa.Integer(), nullable=False),
    sa.Column('uses', sa.Integer(), server_default='0', nullable=False),
    sa.Column('failed_attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('locked_at', UtcDateTime(), nullable=True),
    sa.Column('created_at', UtcDateTime(), nullable=False),
    sa.Column('expires_at', UtcDateTime(), nullable=False),
    sa.Column('revoked_at', UtcDateTime(), nullable=True),
    sa.Column('revoked_by', sa.String(length=200), server_default='', nullable=False),
    sa.ForeignKeyConstraint(['facility_id'], ['facility.id'], name=op.f('fk_share_link_facility_id_facility')),
    sa.ForeignKeyConstraint(['person_id'], ['person.id'], name=op.f('fk_share_link_person_id_person')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_share_link')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_share_link_token_hash'))
    )
    op.create_index(op.f('ix_share_link_facility_id'), 'share_link', ['facility_id'], unique=False)
    op.create_index(op.f('ix_share_link_person_id'), 'share_link', ['person_id'], unique=False)
    op.create_table('share_link_study',
    sa.Column('share_link_id', _ID, nullable=False),
    sa.Column('study_pk', _ID, nullable=False),
    sa.ForeignKeyConstraint(['share_link_id'], ['share_link.id'], name=op.f('fk_share_link_study_share_link_id_share_link')),
    sa.ForeignKeyConstraint(['study_pk'], ['study.id'], name=op.f('fk_share_link_study_study_pk_study')),
    sa.PrimaryKeyConstraint('share_link_id', 'study_pk', name=op.f('pk_share_link_study'))
    )
    op.create_index(op.f("ix_patient_patient_birth_date"), "patient", ["patient_birth_date"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_patient_patient_birth_date"), table_name="patient")
    op.drop_table("share_link_study")
    op.drop_table("share_link")
