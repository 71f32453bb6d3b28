"""Two-phase ingest in the index, on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from coffre.dicom.attributes import Kind, Level, at_level
from coffre.dicom.instance import ParsedInstance
from coffre.index.audit import insert_event, list_events
from coffre.index.engine import Database
from coffre.index.facilities import add_facility
from coffre.index.instances import (
    PENDING,
    STORED,
    SUPERSEDED,
    Committed,
    Outcome,
    commit_instance,
    count_files,
    counts_by_facility,
    discard_file,
    find_stored_copy,
    iter_files,
    list_conflicts,
    reserve_file,
)
from coffre.index.schema import change, instance, instance_file, patient, series, study
from coffre.model import Facility

NOW = datetime(2025, 3, 14, 9, 26, 53, 123456, tzinfo=UTC)
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def _uid() -> str:
    return f"2.25.{uuid.uuid4().int}"


def _parsed(
    *,
    sop_uid: str | None = None,
    study_uid: str = "1.2.3.4",
    series_uid: str = "1.2.3.4.5",
    patient_id: str = "P0001",
    issuer: str = "",
    patient_name: str = "DOE^JANE",
    frames: int = 1,
) -> ParsedInstance:
    sop_uid = sop_uid or _uid()
    values: dict[str, Any] = {
        "patient_id": patient_id,
        "issuer": issuer,
        "patient_name": patient_name,
        "patient_name_norm": patient_name.upper(),
        "patient_birth_date": "19700101",
        "patient_sex": "F",
        "study_instance_uid": study_uid,
        "study_date": "20250314",
        "modality": "CT",
        "series_instance_uid": series_uid,
        "series_number": 3,
        "sop_instance_uid": sop_uid,
        "sop_class_uid": CT_IMAGE,
        "instance_number": 7,
        "number_of_frames": frames,
        "rows": 64,
        "columns": 64,
        "bits_allocated": 16,
    }
    levels = [a for level in Level for a in at_level(level)]
    attributes = {
        a.column: values.get(a.column, None if a.kind is Kind.INT else "") for a in levels
    }
    attributes.update({k: v for k, v in values.items() if k.endswith("_norm")})
    dicom_json = json.dumps(
        {
            "00080018": {"vr": "UI", "Value": [sop_uid]},
            "00100020": {"vr": "LO", "Value": [patient_id]},
        }
    )
    offsets = tuple((1024 + i * 8192, 8192) for i in range(frames))
    return ParsedInstance(
        sop_class_uid=CT_IMAGE,
        sop_instance_uid=sop_uid,
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        transfer_syntax_uid=EXPLICIT_LE,
        attributes=attributes,
        dicom_json=dicom_json,
        frame_offsets=offsets,
        warnings=(),
    )


@dataclass(frozen=True)
class Stored:
    file_pk: int
    committed: Committed
    sha256: str


def _reserve(db: Database, site: Facility, sop_uid: str, data: bytes) -> tuple[int, str, str]:
    sha = hashlib.sha256(data).hexdigest()
    key = f"{site.slug}/{uuid.uuid4().hex}"
    with db.write() as conn:
        pk = reserve_file(
            conn,
            facility_id=site.id,
            sop_instance_uid=sop_uid,
            blob_key=key,
            size=len(data),
            sha256=sha,
            source="test:STORESCU@127.0.0.1",
            now=NOW,
        )
    return pk, key, sha


def _store(db: Database, site: Facility, parsed: ParsedInstance, data: bytes) -> Stored:
    """Both phases, each in its own write transaction, as the ingest service does."""
    file_pk, key, sha = _reserve(db, site, parsed.sop_instance_uid, data)
    with db.write() as conn:
        committed = commit_instance(
            conn,
            facility_id=site.id,
            default_issuer=site.issuer,
            file_pk=file_pk,
            blob_key=key,
            size=len(data),
            sha256=sha,
            source="test:STORESCU@127.0.0.1",
            parsed=parsed,
            now=NOW,
        )
    return Stored(file_pk, committed, sha)


@pytest.fixture
def sites(database: Database) -> tuple[Facility, Facility]:
    with database.write() as conn:
        a = add_facility(conn, slug="chu-se", name="CHU", issuer="CHU-SE", now=NOW)
        b = add_facility(conn, slug="clinique-b", name="Clinique B", issuer="CLIN-B", now=NOW)
    return a, b


def _count(db: Database, table: Any, **where: Any) -> int:
    query = select(func.count()).select_from(table)
    for column, value in where.items():
        query = query.where(table.c[column] == value)
    with db.read() as conn:
        return int(conn.execute(query).scalar_one())


def _file(db: Database, pk: int) -> Any:
    with db.read() as conn:
        return conn.execute(select(instance_file).where(instance_file.c.id == pk)).one()


def test_reserve_then_commit_stores(database: Database, sites: tuple[Facility, Facility]) -> None:
    site = sites[0]
    parsed = _parsed(frames=3)
    file_pk, key, sha = _reserve(database, site, parsed.sop_instance_uid, b"DICM-bytes")
    pending = _file(database, file_pk)
    assert (pending.status, pending.instance_pk, pending.stored_at) == (PENDING, None, None)
    with database.read() as conn:  # a pending file is not an archived copy
        assert find_stored_copy(conn, site.id, parsed.sop_instance_uid, sha) is None

    with database.write() as conn:
        committed = commit_instance(
            conn,
            facility_id=site.id,
            default_issuer=site.issuer,
            file_pk=file_pk,
            blob_key=key,
            size=10,
            sha256=sha,
            source="test",
            parsed=parsed,
            now=NOW,
        )
    assert committed.outcome is Outcome.NEW

    stored = _file(database, file_pk)
    assert (stored.status, stored.instance_pk, stored.stored_at) == (
        STORED,
        committed.instance_pk,
        NOW,
    )
    with database.read() as conn:
        row = conn.execute(select(instance).where(instance.c.id == committed.instance_pk)).one()
        assert (
            find_stored_copy(conn, site.id, parsed.sop_instance_uid, sha) == committed.instance_pk
        )
        assert find_stored_copy(conn, sites[1].id, parsed.sop_instance_uid, sha) is None
    assert row.facility_id == site.id
    assert row.sop_instance_uid == parsed.sop_instance_uid
    assert row.file_pk == file_pk
    assert (row.blob_key, row.size, row.sha256) == (key, 10, sha)
    assert row.transfer_syntax_uid == EXPLICIT_LE
    assert json.loads(row.dicom_json) == json.loads(parsed.dicom_json)
    assert json.loads(row.frame_offsets) == [[1024, 8192], [9216, 8192], [17408, 8192]]
    assert (row.instance_number, row.number_of_frames, row.rows) == (7, 3, 64)
    assert row.created_at == NOW  # aware UTC on both backends

    with database.read() as conn:
        s = conn.execute(select(series)).one()
        st = conn.execute(select(study)).one()
        p = conn.execute(select(patient)).one()
    assert (s.facility_id, s.modality, s.series_number, s.study_pk) == (site.id, "CT", 3, st.id)
    assert (st.facility_id, st.study_instance_uid, st.patient_pk) == (site.id, "1.2.3.4", p.id)
    # no IssuerOfPatientID in the object: the facility's issuer qualifies the PatientID
    assert (p.facility_id, p.issuer, p.patient_id) == (site.id, "CHU-SE", "P0001")
    assert p.patient_name_norm == "DOE^JANE"


def test_same_bytes_again_is_a_duplicate(
    database: Database, sites: tuple[Facility, Facility]
) -> None:
    site = sites[0]
    parsed = _parsed()
    first = _store(database, site, parsed, b"same bytes")
    again = _store(database, site, parsed, b"same bytes")
    assert again.committed == Committed(Outcome.DUPLICATE, first.committed.instance_pk)
    assert _count(database, instance) == 1
    with database.read() as conn:
        row = conn.execute(select(instance.c.file_pk)).one()
    assert row.file_pk == first.file_pk  # the archived copy stays current
    assert _file(database, again.file_pk).status == PENDING  # for the caller to discard
    with database.read() as conn:
        assert list_conflicts(conn) == []


def test_different_bytes_same_uid_is_a_new_version(
    database: Database, sites: tuple[Facility, Facility]
) -> None:
    site, other = sites
    parsed = _parsed()
    first = _store(database, site, parsed, b"version one")
    second = _store(database, site, parsed, b"version two")
    assert second.committed == Committed(Outcome.NEW_VERSION, first.committed.instance_pk)

    assert _file(database, first.file_pk).status == SUPERSEDED
    assert _file(database, second.file_pk).status == STORED
    assert _count(database, instance) == 1
    with database.read() as conn:
        row = conn.execute(select(instance.c.file_pk, instance.c.sha256)).one()
        conflicts = list_conflicts(conn)
        assert list_conflicts(conn, facility_id=site.id) == conflicts
        assert list_conflicts(conn, facility_id=other.id) == []
        # the superseded bytes are still a known copy (a resend of v1 is not new)
        assert find_stored_copy(conn, site.id, parsed.sop_instance_uid, first.sha256) is not None
    assert (row.file_pk, row.sha256) == (second.file_pk, second.sha256)
    assert len(conflicts) == 1
    c = conflicts[0]
    assert (c.facility_slug, c.sop_instance_uid) == ("chu-se", parsed.sop_instance_uid)
    assert (c.previous_sha256, c.new_sha256) == (first.sha256, second.sha256)
    assert c.source == "test:STORESCU@127.0.0.1"
    assert c.detected_at == NOW


def test_same_sop_uid_at_two_facilities(
    database: Database, sites: tuple[Facility, Facility]
) -> None:
    a, b = sites
    parsed = _parsed()
    first = _store(database, a, parsed, b"bytes")
    second = _store(database, b, parsed, b"bytes")
    assert first.committed.outcome is second.committed.outcome is Outcome.NEW
    assert first.committed.instance_pk != second.committed.instance_pk
    assert _count(database, instance) == 2
    assert _count(database, study) == 2


def test_patient_is_unique_by_facility_issuer_and_patient_id(
    database: Database, sites: tuple[Facility, Facility]
) -> None:
    a, b = sites
    # the same PatientID at two facilities: two different people
    _store(database, a, _parsed(study_uid="1.1", series_uid="1.1.1"), b"1")
    _store(database, b, _parsed(study_uid="2.1", series_uid="2.1.1"), b"2")
    # two issuers inside one facility (e.g. a merged clinic kept its numbering)
    _store(database, a, _parsed(study_uid="1.2", series_uid="1.2.1", issuer="OLD-RIS"), b"3")
    # same facility, same issuer, same PatientID: the same patient row
    _store(database, a, _parsed(study_uid="1.3", series_uid="1.3.1", issuer="CHU-SE"), b"4")

    with database.read() as conn:
        rows = conn.execute(
            select(patient.c.facility_id, patient.c.issuer, patient.c.patient_id).order_by(
                patient.c.id
            )
        ).all()
    assert [tuple(r) for r in rows] == [
        (a.id, "CHU-SE", "P0001"),
        (b.id, "CLIN-B", "P0001"),
        (a.id, "OLD-RIS", "P0001"),
    ]
    assert _count(database, study) == 4


def test_discard_file_removes_only_pending_rows(
    database: Database, sites: tuple[Facility, Facility]
) -> None:
    site = sites[0]
    stored = _store(database, site, _parsed(), b"kept")
    pending_pk, _key, _sha = _reserve(database, site, _uid(), b"never acknowledged")
    with database.write() as conn:
        discard_file(conn, stored.file_pk)
        discard_file(conn, pending_pk)
    assert _file(database, stored.file_pk).status == STORED
    assert _count(database, instance_file, id=pending_pk) == 0
    assert _count(database, instance_file) == 1


def test_concurrent_commits_of_one_new_study(
    database: Database, sites: tuple[Facility, Facility]
) -> None:
    """8 associations store instances of the same new study at the same moment."""
    site = sites[0]
    n = 8
    instances = [_parsed(study_uid="9.8.7", series_uid="9.8.7.1") for _ in range(n)]
    reserved = [
        _reserve(database, site, p.sop_instance_uid, f"i{i}".encode())
        for i, p in enumerate(instances)
    ]
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []
    outcomes: list[Outcome] = []

    def commit(i: int) -> None:
        file_pk, key, sha = reserved[i]
        try:
            barrier.wait(timeout=30)
            with database.write() as conn:
                result = commit_instance(
                    conn,
                    facility_id=site.id,
                    default_issuer=site.issuer,
                    file_pk=file_pk,
                    blob_key=key,
                    size=2,
                    sha256=sha,
                    source=f"thread-{i}",
                    parsed=instances[i],
                    now=NOW + timedelta(microseconds=i),
                )
            outcomes.append(result.outcome)
        except BaseException as exc:  # collected, asserted below
            errors.append(exc)

    threads = [threading.Thread(target=commit, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert outcomes == [Outcome.NEW] * n
    assert _count(database, patient) == 1
    assert _count(database, study) == 1
    assert _count(database, series) == 1
    assert _count(database, instance) == n
    assert _count(database, instance_file, status=STORED) == n
    assert _count(database, change, change_type="new-patient") == 1
    assert _count(database, change, change_type="new-study") == 1
    assert _count(database, change, change_type="new-series") == 1
    assert _count(database, change, change_type="new-instance") == n


def test_changes_are_recorded_in_order(
    database: Database, sites: tuple[Facility, Facility]
) -> None:
    site = sites[0]
    parsed = _parsed()
    first = _store(database, site, parsed, b"v1")
    _store(database, site, _parsed(), b"other instance, same series")
    _store(database, site, parsed, b"v2")
    _store(database, site, parsed, b"v2")  # duplicate: no change
    with database.read() as conn:
        rows = conn.execute(select(change).order_by(change.c.seq)).all()
    assert [(r.change_type, r.level) for r in rows] == [
        ("new-patient", "PATIENT"),
        ("new-study", "STUDY"),
        ("new-series", "SERIES"),
        ("new-instance", "IMAGE"),
        ("new-instance", "IMAGE"),
        ("new-version", "IMAGE"),
    ]
    assert {r.facility_id for r in rows} == {site.id}
    assert rows[3].resource_pk == rows[5].resource_pk == first.committed.instance_pk
    assert rows[0].at == NOW
    assert [r.seq for r in rows] == sorted(r.seq for r in rows)


def test_reconciliation_reads(database: Database, sites: tuple[Facility, Facility]) -> None:
    a, b = sites
    _store(database, a, _parsed(), b"aaaa")
    _store(database, b, _parsed(), b"bbbbbb")
    pending_pk, _key, _sha = _reserve(database, b, _uid(), b"pending")
    with database.read() as conn:
        files = list(iter_files(conn))
        assert count_files(conn) == 3
        counts = counts_by_facility(conn)
    assert [f.id for f in files] == sorted(f.id for f in files)
    assert [f.status for f in files] == [STORED, STORED, PENDING]
    assert files[-1].id == pending_pk
    assert files[-1].received_at == NOW
    assert [(c.slug, c.patients, c.studies, c.series, c.instances, c.bytes) for c in counts] == [
        ("chu-se", 1, 1, 1, 1, 4),
        ("clinique-b", 1, 1, 1, 1, 6),
    ]


def test_audit_roundtrip(database: Database, sites: tuple[Facility, Facility]) -> None:
    site = sites[0]
    paris = datetime(2025, 3, 14, 10, 26, 53, tzinfo=UTC).astimezone(ZoneInfo("Europe/Paris"))
    with database.write() as conn:
        insert_event(
            conn,
            at=NOW,
            action="instance-stored",
            outcome="success",
            actor_kind="node",
            actor_name="CT_SALLE1",
            actor_address="10.0.0.5:40000",
            facility_id=site.id,
            object_type="instance",
            object_id="1.2.3.4.5.6",
            detail={"size": 1234, "status": "stored"},
        )
        insert_event(
            conn,
            at=paris,
            action="login",
            outcome="failure",
            actor_kind="user",
            actor_name="x" * 150,
            actor_address="",
            facility_id=None,
            object_type="",
            object_id="",
            detail={},
        )
    with database.read() as conn:
        events = list_events(conn)
        stored = list_events(conn, action="instance-stored")
        assert len(list_events(conn, limit=1)) == 1
    assert [e.action for e in events] == ["instance-stored", "login"]
    assert stored == events[:1]
    e = events[0]
    assert (e.at, e.outcome, e.actor_kind, e.actor_name) == (NOW, "success", "node", "CT_SALLE1")
    assert (e.actor_address, e.facility_id) == ("10.0.0.5:40000", site.id)
    assert (e.object_type, e.object_id) == ("instance", "1.2.3.4.5.6")
    assert e.detail == {"size": 1234, "status": "stored"}
    login = events[1]
    assert login.at == paris  # the same instant, whatever the offset it was given with
    assert login.at.tzinfo == UTC
    assert login.actor_name == "x" * 100
    assert (login.facility_id, login.detail) == (None, {})
