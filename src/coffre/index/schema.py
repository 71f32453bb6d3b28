"""The index schema in SQLAlchemy Core.

The columns of ``patient``, ``study``, ``series`` and ``instance`` that hold DICOM
attributes come from ``dicom.attributes.INDEXED_ATTRIBUTES``; the rest is archive
bookkeeping. Every DICOM row carries ``facility_id`` (DESIGN rule 1); patients are
unique by (facility, issuer, PatientID), studies/series/instances by facility and UID.

Alembic migrations under ``index/migrations`` create exactly this schema; the test
``tests/index/test_migrations.py`` compares both so that they cannot drift.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    true,
)
from sqlalchemy.engine import Dialect

from coffre.dicom.attributes import IndexedAttribute, Kind, Level, at_level

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING)

# Large text columns; Text maps to TEXT on both SQLite and PostgreSQL.
_ID = BigInteger().with_variant(Integer(), "sqlite")


class UtcDateTime(TypeDecorator[datetime]):
    """An instant: timezone-aware in, timezone-aware UTC out, on both backends.

    PostgreSQL stores ``TIMESTAMP WITH TIME ZONE``; SQLite has no time zones and
    SQLAlchemy's ``DateTime`` would silently drop the offset (12:00+02:00 stored as
    12:00) and read naive values back. Here SQLite stores naive UTC text, read back as
    aware UTC, so both backends return equal values. Naive datetimes are refused.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise ValueError(f"an aware datetime is required, not {value!r}")
        utc: datetime = value.astimezone(UTC)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _attribute_columns(level: Level, skip: frozenset[str] = frozenset()) -> list[Column[object]]:
    columns: list[Column[object]] = []
    for attr in at_level(level):
        if attr.keyword in skip:
            continue
        columns.extend(_columns_for(attr))
    return columns


def _columns_for(attr: IndexedAttribute) -> list[Column[object]]:
    if attr.kind is Kind.INT:
        return [Column(attr.column, BigInteger, nullable=True)]
    cols: list[Column[object]] = [Column(attr.column, String(attr.length), nullable=False, server_default="")]
    if attr.kind is Kind.PN:
        cols.append(Column(f"{attr.column}_norm", String(attr.length), nullable=False, server_default=""))
    return cols


facility = Table(
    "facility",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("slug", String(32), nullable=False, unique=True),
    Column("name", String(200), nullable=False),
    Column("issuer", String(64), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    # when true, the facility's nodes are admitted only over DICOM TLS with their certificate
    Column("require_tls", Boolean, nullable=False, server_default=false()),
)

node = Table(
    "node",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("ae_title", String(16), nullable=False, unique=True),
    Column("host", String(255), nullable=False),
    Column("port", Integer, nullable=False),
    Column("facility_id", _ID, ForeignKey("facility.id"), nullable=False, index=True),
    # comma-separated values of model.Permission, sorted
    Column("permissions", String(100), nullable=False),
    Column("description", String(200), nullable=False, server_default=""),
    Column("created_at", UtcDateTime(), nullable=False),
    # SHA-256 (hex) of the DER client certificate bound to the node; "" = none (PS3.15 B.9)
    Column("tls_fingerprint", String(64), nullable=False, server_default=""),
)

# The territory's view of one human: a set of linked local identities (patient rows)
# plus the national health identifier (INS) when a facility sent it qualified.
person = Table(
    "person",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    # the INS value and the OID of its assigning authority ("" = unknown)
    Column("ins", String(64), nullable=False, server_default=""),
    Column("ins_oid", String(64), nullable=False, server_default=""),
    # set when this person was merged into another; its identities moved there
    Column("merged_into", _ID, ForeignKey("person.id"), nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Index(None, "ins"),
)

patient = Table(
    "patient",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("facility_id", _ID, ForeignKey("facility.id"), nullable=False),
    *_attribute_columns(Level.PATIENT),
    # the person this local identity belongs to (always set; a new person at ingest)
    Column("person_id", _ID, ForeignKey("person.id"), nullable=True, index=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    UniqueConstraint("facility_id", "issuer", "patient_id"),
    Index(None, "facility_id", "patient_name_norm"),
    # C-FIND/QIDO by PatientID give no issuer: the unique key above cannot serve them
    Index(None, "facility_id", "patient_id"),
    # the reconciliation's resemblance search filters on an equal birth date
    Index(None, "patient_birth_date"),
)

study = Table(
    "study",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("facility_id", _ID, ForeignKey("facility.id"), nullable=False),
    Column("patient_pk", _ID, ForeignKey("patient.id"), nullable=False, index=True),
    *_attribute_columns(Level.STUDY),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    UniqueConstraint("facility_id", "study_instance_uid"),
    Index(None, "facility_id", "study_date"),
    Index(None, "facility_id", "accession_number"),
)

series = Table(
    "series",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("facility_id", _ID, ForeignKey("facility.id"), nullable=False),
    Column("study_pk", _ID, ForeignKey("study.id"), nullable=False, index=True),
    *_attribute_columns(Level.SERIES),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    UniqueConstraint("facility_id", "series_instance_uid"),
    Index(None, "facility_id", "modality"),
)

instance = Table(
    "instance",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("facility_id", _ID, ForeignKey("facility.id"), nullable=False),
    Column("series_pk", _ID, ForeignKey("series.id"), nullable=False, index=True),
    *_attribute_columns(Level.IMAGE),
    # the current version: its blob and what metadata reads need (DESIGN rule 6)
    Column("file_pk", _ID, nullable=False),
    Column("transfer_syntax_uid", String(64), nullable=False),
    Column("blob_key", String(128), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    # PS3.18 F.2 DICOM JSON of the dataset without bulk data, UTF-8
    Column("dicom_json", Text, nullable=False),
    # JSON list of [offset, length] of each frame in the blob (stored transfer syntax)
    Column("frame_offsets", Text, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    UniqueConstraint("facility_id", "sop_instance_uid"),
)

instance_file = Table(
    "instance_file",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("facility_id", _ID, ForeignKey("facility.id"), nullable=False),
    Column("sop_instance_uid", String(64), nullable=False),
    Column("instance_pk", _ID, ForeignKey("instance.id"), nullable=True, index=True),
    Column("blob_key", String(128), nullable=False, unique=True),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    # pending -> stored -> superseded (two-phase ingest, DESIGN rule 4)
    Column("status", String(16), nullable=False),
    Column("source", String(100), nullable=False),
    Column("received_at", UtcDateTime(), nullable=False),
    Column("stored_at", UtcDateTime(), nullable=True),
    Index(None, "facility_id", "sop_instance_uid", "sha256"),
    Index(None, "status", "received_at"),
)

instance_conflict = Table(
    "instance_conflict",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("facility_id", _ID, ForeignKey("facility.id"), nullable=False, index=True),
    Column("instance_pk", _ID, ForeignKey("instance.id"), nullable=False),
    Column("previous_file_pk", _ID, ForeignKey("instance_file.id"), nullable=False),
    Column("new_file_pk", _ID, ForeignKey("instance_file.id"), nullable=False),
    Column("source", String(100), nullable=False),
    Column("detected_at", UtcDateTime(), nullable=False),
)

change = Table(
    "change",
    metadata,
    Column("seq", _ID, primary_key=True, autoincrement=True),
    Column("at", UtcDateTime(), nullable=False),
    Column("facility_id", _ID, ForeignKey("facility.id"), nullable=False),
    # new-instance, new-version, new-series, new-study, new-patient
    Column("change_type", String(32), nullable=False),
    Column("level", String(16), nullable=False),
    Column("resource_pk", _ID, nullable=False),
)

audit_event = Table(
    "audit_event",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("at", UtcDateTime(), nullable=False),
    Column("action", String(48), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("actor_kind", String(16), nullable=False),
    Column("actor_name", String(100), nullable=False),
    Column("actor_address", String(100), nullable=False, server_default=""),
    Column("facility_id", _ID, nullable=True),
    Column("object_type", String(32), nullable=False, server_default=""),
    Column("object_id", String(128), nullable=False, server_default=""),
    # JSON object; no patient demographics, only identifiers of archive objects
    Column("detail", Text, nullable=False, server_default="{}"),
    # the hash chain: SHA-256 of (prev_hash, canonical event); see index/audit.py
    Column("prev_hash", String(64), nullable=False, server_default=""),
    Column("hash", String(64), nullable=False, server_default=""),
    # the person whose data was accessed, for the patient access report (None = none)
    Column("person_id", _ID, nullable=True, index=True),
    Index(None, "at"),
    Index(None, "facility_id", "at"),
)

# API tokens of DICOMweb clients, bound to one facility (until users and roles exist).
api_token = Table(
    "api_token",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("facility_id", _ID, ForeignKey("facility.id"), nullable=False, index=True),
    Column("name", String(64), nullable=False),
    # SHA-256 of the token (tokens are 256-bit random, so a plain hash is enough)
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("permissions", String(100), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("revoked_at", UtcDateTime(), nullable=True),
    UniqueConstraint("facility_id", "name"),
)

# Every change of a person link, with its provenance (who, when, why, evidence); the
# history makes each change reversible (unlink/split restore the previous person).
identity_event = Table(
    "identity_event",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("at", UtcDateTime(), nullable=False),
    # create, link, unlink, merge, split, ins
    Column("action", String(16), nullable=False),
    Column("patient_pk", _ID, ForeignKey("patient.id"), nullable=True, index=True),
    Column("from_person", _ID, ForeignKey("person.id"), nullable=True),
    Column("to_person", _ID, ForeignKey("person.id"), nullable=True),
    Column("actor", String(100), nullable=False),
    Column("reason", String(500), nullable=False, server_default=""),
    # JSON: what the decision rested on (qualified INS, demographics score, ...)
    Column("evidence", Text, nullable=False, server_default="{}"),
)

# Possible matches found at ingest, for a human to decide (nothing merges silently).
reconciliation_candidate = Table(
    "reconciliation_candidate",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("patient_pk", _ID, ForeignKey("patient.id"), nullable=False, index=True),
    Column("candidate_person", _ID, ForeignKey("person.id"), nullable=False, index=True),
    Column("score", Integer, nullable=False),
    Column("evidence", Text, nullable=False, server_default="{}"),
    # open, linked, rejected
    Column("status", String(16), nullable=False, server_default="open"),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("decided_at", UtcDateTime(), nullable=True),
    Column("decided_by", String(100), nullable=False, server_default=""),
    UniqueConstraint("patient_pk", "candidate_person"),
    Index(None, "status", "created_at"),
)

# Built-in users (embedded mode). Users of an OpenID Connect provider are not stored.
user_account = Table(
    "user_account",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("username", String(64), nullable=False, unique=True),
    Column("display_name", String(200), nullable=False, server_default=""),
    # argon2id hash (PHC string); "" = no password login
    Column("password_hash", String(200), nullable=False, server_default=""),
    # comma-separated values of model.Role, sorted
    Column("roles", String(200), nullable=False),
    Column("active", Boolean, nullable=False, server_default=true()),
    Column("failed_logins", Integer, nullable=False, server_default="0"),
    Column("locked_until", UtcDateTime(), nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
)

user_facility = Table(
    "user_facility",
    metadata,
    Column("user_id", _ID, ForeignKey("user_account.id"), primary_key=True),
    Column("facility_id", _ID, ForeignKey("facility.id"), primary_key=True),
)

# Revoked access tokens by their "jti"; kept until they would have expired anyway.
revoked_token = Table(
    "revoked_token",
    metadata,
    Column("jti", String(64), primary_key=True),
    Column("revoked_at", UtcDateTime(), nullable=False),
    Column("expires_at", UtcDateTime(), nullable=False, index=True),
)

# A reason for an actor of a facility to see data of another facility (DESIGN words:
# grant). kind: care (a care relationship with a person, for a facility), reading (a
# reading assignment of one study, for a user or a facility), break-glass (one user,
# one person, time-limited, reviewed afterwards), share (a share link).
access_grant = Table(
    "access_grant",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),
    Column("person_id", _ID, ForeignKey("person.id"), nullable=True, index=True),
    Column("study_pk", _ID, ForeignKey("study.id"), nullable=True, index=True),
    Column("grantee_facility_id", _ID, ForeignKey("facility.id"), nullable=True, index=True),
    # a user's subject (built-in username or the OIDC "sub"); "" = the whole facility
    Column("grantee_user", String(200), nullable=False, server_default=""),
    Column("granted_by", String(200), nullable=False),
    Column("granted_by_facility_id", _ID, ForeignKey("facility.id"), nullable=True),
    Column("reason", String(500), nullable=False, server_default=""),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("expires_at", UtcDateTime(), nullable=False),
    Column("revoked_at", UtcDateTime(), nullable=True),
    Column("revoked_by", String(200), nullable=False, server_default=""),
    # break-the-glass review by the facility's admin
    Column("reviewed_at", UtcDateTime(), nullable=True),
    Column("reviewed_by", String(200), nullable=False, server_default=""),
    Column("review_note", String(500), nullable=False, server_default=""),
    Index(None, "kind", "expires_at"),
)

# A person's opposition to sharing between facilities (recorded by any facility).
opposition = Table(
    "opposition",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("person_id", _ID, ForeignKey("person.id"), nullable=False, index=True),
    Column("facility_id", _ID, ForeignKey("facility.id"), nullable=False),
    Column("recorded_by", String(200), nullable=False),
    Column("reason", String(500), nullable=False, server_default=""),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("withdrawn_at", UtcDateTime(), nullable=True),
    Column("withdrawn_by", String(200), nullable=False, server_default=""),
)

# Share links for a GP or a patient (DESIGN words: grant). The link token and the access
# code are shown once and stored hashed; the studies are fixed when the link is created.
share_link = Table(
    "share_link",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    # SHA-256 (hex) of the 256-bit link token
    Column("token_hash", String(64), nullable=False, unique=True),
    # argon2id hash of the access code given to the recipient separately
    Column("code_hash", String(200), nullable=False),
    Column("person_id", _ID, ForeignKey("person.id"), nullable=False, index=True),
    Column("facility_id", _ID, ForeignKey("facility.id"), nullable=False, index=True),
    Column("created_by", String(200), nullable=False),
    # who receives it, as the creator describes them (no patient data)
    Column("recipient", String(200), nullable=False, server_default=""),
    # "study" or "person" (all of the person's studies in [date_from, date_to])
    Column("scope", String(16), nullable=False),
    Column("date_from", String(8), nullable=False, server_default=""),
    Column("date_to", String(8), nullable=False, server_default=""),
    Column("allow_download", Boolean, nullable=False, server_default=false()),
    Column("max_uses", Integer, nullable=False),
    Column("uses", Integer, nullable=False, server_default="0"),
    Column("failed_attempts", Integer, nullable=False, server_default="0"),
    Column("locked_at", UtcDateTime(), nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("expires_at", UtcDateTime(), nullable=False),
    Column("revoked_at", UtcDateTime(), nullable=True),
    Column("revoked_by", String(200), nullable=False, server_default=""),
)

share_link_study = Table(
    "share_link_study",
    metadata,
    Column("share_link_id", _ID, ForeignKey("share_link.id"), primary_key=True),
    Column("study_pk", _ID, ForeignKey("study.id"), primary_key=True),
)

# A tiny key/value table for archive-wide state (e.g. the demo marker).
archive_state = Table(
    "archive_state",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", LargeBinary, nullable=False),
)
