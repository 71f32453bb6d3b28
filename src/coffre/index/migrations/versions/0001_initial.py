"""Initial schema: facilities, nodes, the DICOM hierarchy, files, changes, audit.

Written out explicitly (not derived from ``schema.py`` or ``dicom/attributes.py`` at
run time) so that this revision creates the same tables forever, whatever later code
says; ``tests/index/test_migrations.py`` checks that head matches ``schema.metadata``.

Revision ID: 0001
Revises:
Create Date: 2025-01-01 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _id() -> sa.types.TypeEngine[int]:
    """Surrogate keys: BIGINT on PostgreSQL, INTEGER (the rowid alias) on SQLite."""
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _pk(name: str = "id") -> sa.Column[int]:
    return sa.Column(name, _id(), autoincrement=True, nullable=False)


def _fk_facility(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["facility_id"], ["facility.id"], name=op.f(f"fk_{table}_facility_id_facility")
    )


def _str(name: str, length: int) -> sa.Column[str]:
    """A DICOM string attribute column: never NULL, empty when absent."""
    return sa.Column(name, sa.String(length=length), server_default="", nullable=False)


def _stamps() -> list[sa.Column[object]]:
    return [
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "facility",
        _pk(),
        sa.Column("slug", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("issuer", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_facility")),
        sa.UniqueConstraint("slug", name=op.f("uq_facility_slug")),
    )

    op.create_table(
        "node",
        _pk(),
        sa.Column("ae_title", sa.String(length=16), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("facility_id", _id(), nullable=False),
        sa.Column("permissions", sa.String(length=100), nullable=False),
        sa.Column("description", sa.String(length=200), server_default="", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        _fk_facility("node"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_node")),
        sa.UniqueConstraint("ae_title", name=op.f("uq_node_ae_title")),
    )
    op.create_index(op.f("ix_node_facility_id"), "node", ["facility_id"], unique=False)

    op.create_table(
        "patient",
        _pk(),
        sa.Column("facility_id", _id(), nullable=False),
        _str("patient_id", 64),
        _str("issuer", 64),
        _str("patient_name", 324),
        _str("patient_name_norm", 324),
        _str("patient_birth_date", 8),
        _str("patient_sex", 16),
        *_stamps(),
        _fk_facility("patient"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_patient")),
        sa.UniqueConstraint(
            "facility_id",
            "issuer",
            "patient_id",
            name=op.f("uq_patient_facility_id_issuer_patient_id"),
        ),
    )
    op.create_index(
        op.f("ix_patient_facility_id_patient_name_norm"),
        "patient",
        ["facility_id", "patient_name_norm"],
        unique=False,
    )

    op.create_table(
        "study",
        _pk(),
        sa.Column("facility_id", _id(), nullable=False),
        sa.Column("patient_pk", _id(), nullable=False),
        _str("study_instance_uid", 64),
        _str("study_date", 8),
        _str("study_time", 16),
        _str("accession_number", 16),
        _str("study_id", 16),
        _str("study_description", 64),
        _str("referring_physician_name", 324),
        _str("referring_physician_name_norm", 324),
        *_stamps(),
        _fk_facility("study"),
        sa.ForeignKeyConstraint(
            ["patient_pk"], ["patient.id"], name=op.f("fk_study_patient_pk_patient")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_study")),
        sa.UniqueConstraint(
            "facility_id",
            "study_instance_uid",
            name=op.f("uq_study_facility_id_study_instance_uid"),
        ),
    )
    op.create_index(
        op.f("ix_study_facility_id_accession_number"),
        "study",
        ["facility_id", "accession_number"],
        unique=False,
    )
    op.create_index(
        op.f("ix_study_facility_id_study_date"),
        "study",
        ["facility_id", "study_date"],
        unique=False,
    )
    op.create_index(op.f("ix_study_patient_pk"), "study", ["patient_pk"], unique=False)

    op.create_table(
        "series",
        _pk(),
        sa.Column("facility_id", _id(), nullable=False),
        sa.Column("study_pk", _id(), nullable=False),
        _str("series_instance_uid", 64),
        _str("modality", 16),
        sa.Column("series_number", sa.BigInteger(), nullable=True),
        _str("series_description", 64),
        _str("series_date", 8),
        _str("series_time", 16),
        _str("body_part_examined", 16),
        _str("institution_name", 64),
        _str("station_name", 16),
        *_stamps(),
        _fk_facility("series"),
        sa.ForeignKeyConstraint(["study_pk"], ["study.id"], name=op.f("fk_series_study_pk_study")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_series")),
        sa.UniqueConstraint(
            "facility_id",
            "series_instance_uid",
            name=op.f("uq_series_facility_id_series_instance_uid"),
        ),
    )
    op.create_index(
        op.f("ix_series_facility_id_modality"), "series", ["facility_id", "modality"], unique=False
    )
    op.create_index(op.f("ix_series_study_pk"), "series", ["study_pk"], unique=False)

    op.create_table(
        "instance",
        _pk(),
        sa.Column("facility_id", _id(), nullable=False),
        sa.Column("series_pk", _id(), nullable=False),
        _str("sop_instance_uid", 64),
        _str("sop_class_uid", 64),
        sa.Column("instance_number", sa.BigInteger(), nullable=True),
        _str("content_date", 8),
        _str("content_time", 16),
        sa.Column("number_of_frames", sa.BigInteger(), nullable=True),
        sa.Column("rows", sa.BigInteger(), nullable=True),
        sa.Column("columns", sa.BigInteger(), nullable=True),
        sa.Column("bits_allocated", sa.BigInteger(), nullable=True),
        # the current version (no FK: instance_file references instance already)
        sa.Column("file_pk", _id(), nullable=False),
        sa.Column("transfer_syntax_uid", sa.String(length=64), nullable=False),
        sa.Column("blob_key", sa.String(length=128), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("dicom_json", sa.Text(), nullable=False),
        sa.Column("frame_offsets", sa.Text(), nullable=False),
        *_stamps(),
        _fk_facility("instance"),
        sa.ForeignKeyConstraint(
            ["series_pk"], ["series.id"], name=op.f("fk_instance_series_pk_series")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_instance")),
        sa.UniqueConstraint(
            "facility_id",
            "sop_instance_uid",
            name=op.f("uq_instance_facility_id_sop_instance_uid"),
        ),
    )
    op.create_index(op.f("ix_instance_series_pk"), "instance", ["series_pk"], unique=False)

    op.create_table(
        "instance_file",
        _pk(),
        sa.Column("facility_id", _id(), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("instance_pk", _id(), nullable=True),
        sa.Column("blob_key", sa.String(length=128), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=100), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stored_at", sa.DateTime(timezone=True), nullable=True),
        _fk_facility("instance_file"),
        sa.ForeignKeyConstraint(
            ["instance_pk"], ["instance.id"], name=op.f("fk_instance_file_instance_pk_instance")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_instance_file")),
        sa.UniqueConstraint("blob_key", name=op.f("uq_instance_file_blob_key")),
    )
    op.create_index(
        op.f("ix_instance_file_facility_id_sop_instance_uid_sha256"),
        "instance_file",
        ["facility_id", "sop_instance_uid", "sha256"],
        unique=False,
    )
    op.create_index(
        op.f("ix_instance_file_instance_pk"), "instance_file", ["instance_pk"], unique=False
    )
    op.create_index(
        op.f("ix_instance_file_status_received_at"),
        "instance_file",
        ["status", "received_at"],
        unique=False,
    )

    op.create_table(
        "instance_conflict",
        _pk(),
        sa.Column("facility_id", _id(), nullable=False),
        sa.Column("instance_pk", _id(), nullable=False),
        sa.Column("previous_file_pk", _id(), nullable=False),
        sa.Column("new_file_pk", _id(), nullable=False),
        sa.Column("source", sa.String(length=100), nullable=False),
        sa.Column("detected_at", sa.DateTime(timezone=True), nullable=False),
        _fk_facility("instance_conflict"),
        sa.ForeignKeyConstraint(
            ["instance_pk"], ["instance.id"], name=op.f("fk_instance_conflict_instance_pk_instance")
        ),
        sa.ForeignKeyConstraint(
            ["new_file_pk"],
            ["instance_file.id"],
            name=op.f("fk_instance_conflict_new_file_pk_instance_file"),
        ),
        sa.ForeignKeyConstraint(
            ["previous_file_pk"],
            ["instance_file.id"],
            name=op.f("fk_instance_conflict_previous_file_pk_instance_file"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_instance_conflict")),
    )
    op.create_index(
        op.f("ix_instance_conflict_facility_id"), "instance_conflict", ["facility_id"], unique=False
    )

    op.create_table(
        "change",
        _pk("seq"),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("facility_id", _id(), nullable=False),
        sa.Column("change_type", sa.String(length=32), nullable=False),
        sa.Column("level", sa.String(length=16), nullable=False),
        sa.Column("resource_pk", _id(), nullable=False),
        _fk_facility("change"),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_change")),
    )

    op.create_table(
        "audit_event",
        _pk(),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("action", sa.String(length=48), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("actor_kind", sa.String(length=16), nullable=False),
        sa.Column("actor_name", sa.String(length=100), nullable=False),
        sa.Column("actor_address", sa.String(length=100), server_default="", nullable=False),
        # no FK: the audit trail outlives what it records
        sa.Column("facility_id", _id(), nullable=True),
        sa.Column("object_type", sa.String(length=32), server_default="", nullable=False),
        sa.Column("object_id", sa.String(length=128), server_default="", nullable=False),
        sa.Column("detail", sa.Text(), server_default="{}", nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_event")),
    )
    op.create_index(op.f("ix_audit_event_at"), "audit_event", ["at"], unique=False)
    op.create_index(
        op.f("ix_audit_event_facility_id_at"), "audit_event", ["facility_id", "at"], unique=False
    )

    op.create_table(
        "archive_state",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_archive_state")),
    )


def downgrade() -> None:
    op.drop_table("archive_state")
    op.drop_index(op.f("ix_audit_event_facility_id_at"), table_name="audit_event")
    op.drop_index(op.f("ix_audit_event_at"), table_name="audit_event")
    op.drop_table("audit_event")
    op.drop_table("change")
    op.drop_index(op.f("ix_instance_conflict_facility_id"), table_name="instance_conflict")
    op.drop_table("instance_conflict")
    op.drop_index(op.f("ix_instance_file_status_received_at"), table_name="instance_file")
    op.drop_index(op.f("ix_instance_file_instance_pk"), table_name="instance_file")
    op.drop_index(
        op.f("ix_instance_file_facility_id_sop_instance_uid_sha256"), table_name="instance_file"
    )
    op.drop_table("instance_file")
    op.drop_index(op.f("ix_instance_series_pk"), table_name="instance")
    op.drop_table("instance")
    op.drop_index(op.f("ix_series_study_pk"), table_name="series")
    op.drop_index(op.f("ix_series_facility_id_modality"), table_name="series")
    op.drop_table("series")
    op.drop_index(op.f("ix_study_patient_pk"), table_name="study")
    op.drop_index(op.f("ix_study_facility_id_study_date"), table_name="study")
    op.drop_index(op.f("ix_study_facility_id_accession_number"), table_name="study")
    op.drop_table("study")
    op.drop_index(op.f("ix_patient_facility_id_patient_name_norm"), table_name="patient")
    op.drop_table("patient")
    op.drop_index(op.f("ix_node_facility_id"), table_name="node")
    op.drop_table("node")
    op.drop_table("facility")
