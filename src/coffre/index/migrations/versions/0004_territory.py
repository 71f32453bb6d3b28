"""Territory layer: persons and identity links, users, grants, oppositions, revoked
tokens, the audit hash chain, and DICOM TLS bindings.

Every existing patient row gets a person of its own (nothing is merged by a migration);
existing audit events are chained in id order.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 00:45:00
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from coffre.index.schema import UtcDateTime

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table('person',
    sa.Column('id', _ID, autoincrement=True, nullable=False),
    sa.Column('ins', sa.String(length=64), server_default='', nullable=False),
    sa.Column('ins_oid', sa.String(length=64), server_default='', nullable=False),
    sa.Column('merged_into', _ID, nullable=True),
    sa.Column('created_at', UtcDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['merged_into'], ['person.id'], name=op.f('fk_person_merged_into_person')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_person'))
    )
    op.create_index(op.f('ix_person_ins'), 'person', ['ins'], unique=False)
    op.create_table('revoked_token',
    sa.Column('jti', sa.String(length=64), nullable=False),
    sa.Column('revoked_at', UtcDateTime(), nullable=False),
    sa.Column('expires_at', UtcDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('jti', name=op.f('pk_revoked_token'))
    )
    op.create_index(op.f('ix_revoked_token_expires_at'), 'revoked_token', ['expires_at'], unique=False)
    op.create_table('user_account',
    sa.Column('id', _ID, autoincrement=True, nullable=False),
    sa.Column('username', sa.String(length=64), nullable=False),
    sa.Column('display_name', sa.String(length=200), server_default='', nullable=False),
    sa.Column('password_hash', sa.String(length=200), server_default='', nullable=False),
    sa.Column('roles', sa.String(length=200), nullable=False),
    sa.Column('active', sa.Boolean(), server_default=sa.true(), nullable=False),
    sa.Column('failed_logins', sa.Integer(), server_default='0', nullable=False),
    sa.Column('locked_until', UtcDateTime(), nullable=True),
    sa.Column('created_at', UtcDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_user_account')),
    sa.UniqueConstraint('username', name=op.f('uq_user_account_username'))
    )
    op.create_table('opposition',
    sa.Column('id', _ID, autoincrement=True, nullable=False),
    sa.Column('person_id', _ID, nullable=False),
    sa.Column('facility_id', _ID, nullable=False),
    sa.Column('recorded_by', sa.String(length=200), nullable=False),
    sa.Column('reason', sa.String(length=500), server_default='', nullable=False),
    sa.Column('created_at', UtcDateTime(), nullable=False),
    sa.Column('withdrawn_at', UtcDateTime(), nullable=True),
    sa.Column('withdrawn_by', sa.String(length=200), server_default='', nullable=False),
    sa.ForeignKeyConstraint(['facility_id'], ['facility.id'], name=op.f('fk_opposition_facility_id_facility')),
    sa.ForeignKeyConstraint(['person_id'], ['person.id'], name=op.f('fk_opposition_person_id_person')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_opposition'))
    )
    op.create_index(op.f('ix_opposition_person_id'), 'opposition', ['person_id'], unique=False)
    op.create_table('user_facility',
    sa.Column('user_id', _ID, nullable=False),
    sa.Column('facility_id', _ID, nullable=False),
    sa.ForeignKeyConstraint(['facility_id'], ['facility.id'], name=op.f('fk_user_facility_facility_id_facility')),
    sa.ForeignKeyConstraint(['user_id'], ['user_account.id'], name=op.f('fk_user_facility_user_id_user_account')),
    sa.PrimaryKeyConstraint('user_id', 'facility_id', name=op.f('pk_user_facility'))
    )
    op.create_table('identity_event',
    sa.Column('id', _ID, autoincrement=True, nullable=False),
    sa.Column('at', UtcDateTime(), nullable=False),
    sa.Column('action', sa.String(length=16), nullable=False),
    sa.Column('patient_pk', _ID, nullable=True),
    sa.Column('from_person', _ID, nullable=True),
    sa.Column('to_person', _ID, nullable=True),
    sa.Column('actor', sa.String(length=100), nullable=False),
    sa.Column('reason', sa.String(length=500), server_default='', nullable=False),
    sa.Column('evidence', sa.Text(), server_default='{}', nullable=False),
    sa.ForeignKeyConstraint(['from_person'], ['person.id'], name=op.f('fk_identity_event_from_person_person')),
    sa.ForeignKeyConstraint(['patient_pk'], ['patient.id'], name=op.f('fk_identity_event_patient_pk_patient')),
    sa.ForeignKeyConstraint(['to_person'], ['person.id'], name=op.f('fk_identity_event_to_person_person')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_identity_event'))
    )
    op.create_index(op.f('ix_identity_event_patient_pk'), 'identity_event', ['patient_pk'], unique=False)
    op.create_table('reconciliation_candidate',
    sa.Column('id', _ID, autoincrement=True, nullable=False),
    sa.Column('patient_pk', _ID, nullable=False),
    sa.Column('candidate_person', _ID, nullable=False),
    sa.Column('score', sa.Integer(), nullable=False),
    sa.Column('evidence', sa.Text(), server_default='{}', nullable=False),
    sa.Column('status', sa.String(length=16), server_default='open', nullable=False),
    sa.Column('created_at', UtcDateTime(), nullable=False),
    sa.Column('decided_at', UtcDateTime(), nullable=True),
    sa.Column('decided_by', sa.String(length=100), server_default='', nullable=False),
    sa.ForeignKeyConstraint(['candidate_person'], ['person.id'], name=op.f('fk_reconciliation_candidate_candidate_person_person')),
    sa.ForeignKeyConstraint(['patient_pk'], ['patient.id'], name=op.f('fk_reconciliation_candidate_patient_pk_patient')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_reconciliation_candidate')),
    sa.UniqueConstraint('patient_pk', 'candidate_person', name=op.f('uq_reconciliation_candidate_patient_pk_candidate_person'))
    )
    op.create_index(op.f('ix_reconciliation_candidate_candidate_person'), 'reconciliation_candidate', ['candidate_person'], unique=False)
    op.create_index(op.f('ix_reconciliation_candidate_patient_pk'), 'reconciliation_candidate', ['patient_pk'], unique=False)
    op.create_index(op.f('ix_reconciliation_candidate_status_created_at'), 'reconciliation_candidate', ['status', 'created_at'], unique=False)
    op.create_table('access_grant',
    sa.Column('id', _ID, autoincrement=True, nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('person_id', _ID, nullable=True),
    sa.Column('study_pk', _ID, nullable=True),
    sa.Column('grantee_facility_id', _ID, nullable=True),
    sa.Column('grantee_user', sa.String(length=200), server_default='', nullable=False),
    sa.Column('granted_by', sa.String(length=200), nullable=False),
    sa.Column('granted_by_facility_id', _ID, nullable=True),
    sa.Column('reason', sa.String(length=500), server_default='', nullable=False),
    sa.Column('created_at', UtcDateTime(), nullable=False),
    sa.Column('expires_at', UtcDateTime(), nullable=False),
    sa.Column('revoked_at', UtcDateTime(), nullable=True),
    sa.Column('revoked_by', sa.String(length=200), server_default='', nullable=False),
    sa.Column('reviewed_at', UtcDateTime(), nullable=True),
    sa.Column('reviewed_by', sa.String(length=200), server_default='', nullable=False),
    sa.Column('review_note', sa.String(length=500), server_default='', nullable=False),
    sa.ForeignKeyConstraint(['granted_by_facility_id'], ['facility.id'], name=op.f('fk_access_grant_granted_by_facility_id_facility')),
    sa.ForeignKeyConstraint(['grantee_facility_id'], ['facility.id'], name=op.f('fk_access_grant_grantee_facility_id_facility')),
    sa.ForeignKeyConstraint(['person_id'], ['person.id'], name=op.f('fk_access_grant_person_id_person')),
    sa.ForeignKeyConstraint(['study_pk'], ['study.id'], name=op.f('fk_access_grant_study_pk_study')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_access_grant'))
    )
    op.create_index(op.f('ix_access_grant_grantee_facility_id'), 'access_grant', ['grantee_facility_id'], unique=False)
    op.create_index(op.f('ix_access_grant_kind_expires_at'), 'access_grant', ['kind', 'expires_at'], unique=False)
    op.create_index(op.f('ix_access_grant_person_id'), 'access_grant', ['person_id'], unique=False)
    op.create_index(op.f('ix_access_grant_study_pk'), 'access_grant', ['study_pk'], unique=False)
    with op.batch_alter_table("audit_event") as batch:
        batch.add_column(sa.Column("prev_hash", sa.String(length=64), server_default="", nullable=False))
        batch.add_column(sa.Column("hash", sa.String(length=64), server_default="", nullable=False))
        batch.add_column(sa.Column("person_id", _ID, nullable=True))
        batch.create_index(batch.f("ix_audit_event_person_id"), ["person_id"], unique=False)
    # facility and patient are referenced by other tables: a batch copy of them would
    # break SQLite's foreign keys, and plain ADD COLUMN is enough on both backends
    op.add_column("facility", sa.Column("require_tls", sa.Boolean(), server_default=sa.false(), nullable=False))
    with op.batch_alter_table("node") as batch:
        batch.add_column(sa.Column("tls_fingerprint", sa.String(length=64), server_default="", nullable=False))
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            "ALTER TABLE patient ADD COLUMN person_id INTEGER "
            "CONSTRAINT fk_patient_person_id_person REFERENCES person (id)"
        )
    else:
        op.add_column("patient", sa.Column("person_id", _ID, nullable=True))
        op.create_foreign_key(op.f("fk_patient_person_id_person"), "patient", "person", ["person_id"], ["id"])
    op.create_index(op.f("ix_patient_person_id"), "patient", ["person_id"], unique=False)
    _one_person_per_patient()
    _chain_existing_audit_events()


def _one_person_per_patient() -> None:
    conn = op.get_bind()
    now = datetime.now(UTC)
    if conn.dialect.name == "sqlite":
        now = now.replace(tzinfo=None)  # as UtcDateTime stores it on SQLite
    person = sa.table("person", sa.column("id", _ID), sa.column("created_at", sa.DateTime()))
    patient = sa.table("patient", sa.column("id", _ID), sa.column("person_id", _ID))
    ids = [row.id for row in conn.execute(sa.select(patient.c.id).where(patient.c.person_id.is_(None)))]
    for patient_id in ids:
        person_id = conn.execute(sa.insert(person).values(created_at=now).returning(person.c.id)).scalar_one()
        conn.execute(sa.update(patient).where(patient.c.id == patient_id).values(person_id=person_id))


def _chain_existing_audit_events() -> None:
    from coffre.index.audit import chain_unhashed

    chain_unhashed(op.get_bind())


def downgrade() -> None:
    op.drop_index(op.f("ix_patient_person_id"), table_name="patient")
    if op.get_bind().dialect.name != "sqlite":
        op.drop_constraint(op.f("fk_patient_person_id_person"), "patient", type_="foreignkey")
    op.drop_column("patient", "person_id")  # SQLite ≥ 3.35 drops a column with its constraint
    with op.batch_alter_table("node") as batch:
        batch.drop_column("tls_fingerprint")
    op.drop_column("facility", "require_tls")
    with op.batch_alter_table("audit_event") as batch:
        batch.drop_index(batch.f("ix_audit_event_person_id"))
        batch.drop_column("person_id")
        batch.drop_column("hash")
        batch.drop_column("prev_hash")
    for name in ("access_grant", "reconciliation_candidate", "identity_event", "user_facility",
                 "opposition", "user_account", "revoked_token", "person"):
        op.drop_table(name)
