"""The ingest service: two phases, duplicates, versions, refusals, failure atomicity.

Runs on SQLite and PostgreSQL (``database`` fixture) with the in-memory blob store,
whose failures are injected to prove nothing half-written survives.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import pytest
from sqlalchemy import func, select

import factories
from coffre.app import Context
from coffre.dicom.synthetic import InstanceSpec, make_instance
from coffre.errors import NotAuthorized, SOPClassMismatch, StorageFailure
from coffre.index.audit import list_events
from coffre.index.engine import Database
from coffre.index.instances import list_conflicts
from coffre.index.schema import instance, instance_file, patient, study
from coffre.model import Actor, IngestStatus, Permission
from coffre.services import facilities
from coffre.services.ingest import ingest
from coffre.settings import Settings
from coffre.storage.memory import MemoryBlobStore


@pytest.fixture
def ctx(database: Database, tmp_path: Path) -> Context:
    return Context(settings=Settings(data_dir=tmp_path), db=database, blobs=MemoryBlobStore())


@pytest.fixture
def modality(ctx: Context) -> Actor:
    op = Actor.system("test")
    fac = facilities.add_facility(ctx, op, slug="site-a", name="Site A", issuer="ISSUER-A")
    node = facilities.add_node(ctx, op, ae_title="MOD_A", host="127.0.0.1", port=104,
                               facility_slug="site-a", permissions=frozenset({Permission.STORE}))
    return Actor.for_node(node, fac, "127.0.0.1")


def _count(ctx: Context, table, **where) -> int:
    with ctx.db.read() as tx:
        q = select(func.count()).select_from(table)
        for k, v in where.items():
            q = q.where(table.c[k] == v)
        return int(tx.execute(q).scalar_one())


def test_stored_instance_is_indexed_and_blob_is_the_received_bytes(ctx: Context, modality: Actor) -> None:
    data = make_instance(InstanceSpec(patient_id="P1"))
    result = ingest(ctx, modality, data, source="test")
    assert result.status is IngestStatus.STORED
    with ctx.db.read() as tx:
        row = tx.execute(select(instance).where(instance.c.sop_instance_uid == result.sop_instance_uid)).one()
        pat = tx.execute(select(patient)).one()
    assert ctx.blobs.read(row.blob_key) == data
    assert row.blob_key.startswith("site-a/") and result.sop_instance_uid not in row.blob_key
    assert row.facility_id == modality.facility_id
    assert (pat.patient_id, pat.issuer) == ("P1", "ISSUER-A")  # facility's issuer by default
    assert '"00100020"' in row.dicom_json and "7FE00010" in row.dicom_json
    assert _count(ctx, instance_file, status="stored") == 1
    with ctx.db.read() as tx:
        events = list_events(tx, action="store")
    assert [e.detail["status"] for e in events] == ["stored"]


def test_identical_bytes_are_an_idempotent_success_without_second_blob(ctx: Context, modality: Actor) -> None:
    data = make_instance()
    first = ingest(ctx, modality, data, source="test")
    second = ingest(ctx, modality, data, source="test")
    assert (first.status, second.status) == (IngestStatus.STORED, IngestStatus.DUPLICATE)
    assert second.instance_id == first.instance_id
    assert len(list(ctx.blobs.keys())) == 1
    assert _count(ctx, instance_file) == 1


def test_same_uid_different_content_keeps_both_versions(ctx: Context, modality: Actor) -> None:
    spec = InstanceSpec(seed=1)
    first = ingest(ctx, modality, make_instance(spec), source="test")
    changed = dataclasses.replace(spec, seed=2)
    second = ingest(ctx, modality, make_instance(changed), source="test")
    assert second.status is IngestStatus.NEW_VERSION
    assert first.sha256 != second.sha256
    assert len(list(ctx.blobs.keys())) == 2
    assert _count(ctx, instance) == 1
    assert _count(ctx, instance_file, status="superseded") == 1
    with ctx.db.read() as tx:
        current = tx.execute(select(instance.c.sha256)).scalar_one()
        conflicts = list_conflicts(tx)
    assert current == second.sha256
    assert [(c.previous_sha256, c.new_sha256) for c in conflicts] == [(first.sha256, second.sha256)]


def test_same_patient_id_at_two_facilities_is_two_patients(ctx: Context, modality: Actor) -> None:
    op = Actor.system("test")
    fac_b = facilities.add_facility(ctx, op, slug="site-b", name="Site B", issuer="ISSUER-B")
    node_b = facilities.add_node(ctx, op, ae_title="MOD_B", host="127.0.0.1", port=104,
                                 facility_slug="site-b", permissions=frozenset({Permission.STORE}))
    other = Actor.for_node(node_b, fac_b, "127.0.0.1")
    ingest(ctx, modality, make_instance(InstanceSpec(patient_id="100200", patient_name="DUBOIS^PIERRE")), source="t")
    ingest(ctx, other, make_instance(InstanceSpec(patient_id="100200", patient_name="LEROY^SOPHIE")), source="t")
    with ctx.db.read() as tx:
        rows = tx.execute(select(patient.c.facility_id, patient.c.issuer, patient.c.patient_name)).all()
    assert sorted((r.issuer, r.patient_name) for r in rows) == [
        ("ISSUER-A", "DUBOIS^PIERRE"), ("ISSUER-B", "LEROY^SOPHIE")]


def test_node_without_store_permission_is_refused_and_audited(ctx: Context) -> None:
    op = Actor.system("test")
    fac = facilities.add_facility(ctx, op, slug="site-q", name="Q", issuer="Q")
    node = facilities.add_node(ctx, op, ae_title="QUERY_ONLY", host="127.0.0.1", port=104,
                               facility_slug="site-q", permissions=frozenset({Permission.QUERY}))
    with pytest.raises(NotAuthorized):
        ingest(ctx, Actor.for_node(node, fac, "127.0.0.1"), make_instance(), source="t")
    assert _count(ctx, instance_file) == 0
    with ctx.db.read() as tx:
        assert [e.outcome for e in list_events(tx, action="store")] == ["refused"]


def test_sop_class_must_match_what_the_transport_announced(ctx: Context, modality: Actor) -> None:
    data = make_instance(InstanceSpec(modality="CT"))
    with pytest.raises(SOPClassMismatch):
        ingest(ctx, modality, data, source="t", expected_sop_class="1.2.840.10008.5.1.4.1.1.4")
    assert list(ctx.blobs.keys()) == []


@pytest.mark.parametrize("case", ["truncated", "lying_length", "invalid_uid", "path_uid", "missing_uid"])
def test_invalid_objects_leave_nothing(ctx: Context, modality: Actor, case: str) -> None:
    good = make_instance()
    bad = {
        "truncated": lambda: factories.truncated(good),
        "lying_length": lambda: factories.lying_length(good),
        "invalid_uid": lambda: factories.with_uid(good, "SOPInstanceUID", "1.02.3"),
        "path_uid": lambda: factories.with_uid(good, "SOPInstanceUID", "../../etc/passwd"),
        "missing_uid": lambda: factories.without("SOPInstanceUID"),
    }[case]()
    with pytest.raises(Exception) as info:
        ingest(ctx, modality, bad, source="t")
    assert info.value.__class__.__module__ == "coffre.errors"
    assert list(ctx.blobs.keys()) == []
    assert _count(ctx, instance_file) == 0


class _FailingPut(MemoryBlobStore):
    def put(self, key, data, *, sha256=None):  # type: ignore[override]
        raise StorageFailure("disk full")


def test_blob_failure_leaves_no_pending_row(database: Database, tmp_path: Path) -> None:
    ctx = Context(settings=Settings(data_dir=tmp_path), db=database, blobs=_FailingPut())
    op = Actor.system("test")
    fac = facilities.add_facility(ctx, op, slug="site-a", name="A", issuer="A")
    with pytest.raises(StorageFailure):
        ingest(ctx, Actor.system("import", facility=fac), make_instance(), source="t")
    assert _count(ctx, instance_file) == 0


def test_index_failure_after_blob_write_removes_the_blob(ctx: Context, modality: Actor, monkeypatch) -> None:
    import coffre.index.instances as index

    def boom(*args, **kwargs):
        raise RuntimeError("index down")

    monkeypatch.setattr(index, "commit_instance", boom)
    with pytest.raises(StorageFailure):
        ingest(ctx, modality, make_instance(), source="t")
    assert list(ctx.blobs.keys()) == []
    assert _count(ctx, instance_file) == 0
    assert _count(ctx, instance) == 0


def test_concurrent_stores_of_one_study(ctx: Context, modality: Actor) -> None:
    spec = InstanceSpec(patient_id="P9")
    datas = [make_instance(dataclasses.replace(spec, sop_uid=f"1.2.3.{i}", seed=i, instance_number=i))
             for i in range(1, 25)]
    errors: list[BaseException] = []

    def send(chunk: list[bytes]) -> None:
        try:
            for d in chunk:
                ingest(ctx, modality, d, source="t")
                ingest(ctx, modality, d, source="t")  # and each one twice
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(datas[i::6],)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert _count(ctx, instance) == 24
    assert _count(ctx, study) == 1
    assert _count(ctx, patient) == 1
    assert _count(ctx, instance_file) == 24
    assert len(list(ctx.blobs.keys())) == 24
