"""The audit hash chain: linking, verification of tampering, migration, concurrency.

Tampering is done with raw SQL on the real index (SQLite and PostgreSQL), as someone
with database access would do it.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, text, update

from coffre.index import audit
from coffre.index.engine import Database, open_database
from coffre.index.migrate import upgrade
from coffre.index.schema import audit_event

T0 = datetime(2026, 3, 14, 10, 26, 53, 123456, tzinfo=UTC)


def add(db: Database, n: int, *, action: str = "store", start: int = 0) -> list[int]:
    ids = []
    with db.write() as tx:
        for i in range(start, start + n):
            ids.append(audit.insert_event(
                tx, at=T0 + timedelta(seconds=i), action=action, outcome="success", actor_kind="node",
                actor_name="CT_1", actor_address="10.0.0.5:40000", facility_id=None, object_type="instance",
                object_id=f"1.2.3.{i}", detail={"n": i, "status": "stored"}, person_id=i % 3 or None))
    return ids


def verify(db: Database, anchor: str | None = None) -> audit.ChainReport:
    with db.read() as tx:
        return audit.verify(tx, anchor=anchor)


def kinds(report: audit.ChainReport) -> set[tuple[str, int]]:
    return {(f.kind, f.event_id) for f in report.findings}


def test_events_are_linked_and_hashed(database: Database) -> None:
    ids = add(database, 5)
    with database.read() as tx:
        rows = audit.list_events(tx)
    assert [r.id for r in rows] == ids
    assert rows[0].prev_hash == audit.GENESIS
    for before, row in itertools.pairwise(rows):
        assert row.prev_hash == before.hash
    assert all(len(r.hash) == 64 for r in rows)
    assert len({r.hash for r in rows}) == 5
    report = verify(database)
    assert report.ok and report.events == 5
    assert (report.head_id, report.head_hash) == (ids[-1], rows[-1].hash)
    with database.read() as tx:
        assert audit.head(tx) == (ids[-1], rows[-1].hash)


def test_canonical_serialisation_is_stable() -> None:
    """Version v1 must never change: every stored hash depends on it."""
    fields = dict(id=7, at=T0, action="move", outcome="success", actor_kind="node", actor_name="PACS",
                  actor_address="10.0.0.9", facility_id=2, object_type="study", object_id="1.2.3",
                  person_id=None, detail='{"é":1}', prev_hash="ab" * 32)
    expected = ('["v1",7,"2026-03-14T10:26:53.123456Z","move","success","node","PACS","10.0.0.9",2,'
                '"study","1.2.3",null,"{\\"é\\":1}","' + "ab" * 32 + '"]').encode()
    assert audit.canonical(**fields) == expected
    assert audit.event_hash(**fields) == hashlib.sha256(expected).hexdigest()
    # any field, the id included, changes the hash
    for key, other in (("id", 8), ("action", "get"), ("detail", '{"é":2}'), ("person_id", 1),
                       ("prev_hash", "cd" * 32), ("at", T0 + timedelta(microseconds=1))):
        assert audit.event_hash(**{**fields, key: other}) != audit.event_hash(**fields)


def test_empty_trail_is_intact(database: Database) -> None:
    report = verify(database)
    assert report.ok and report.events == 0 and report.head_id is None


def test_a_changed_detail_is_found(database: Database) -> None:
    ids = add(database, 6)
    with database.write() as tx:
        tx.execute(update(audit_event).where(audit_event.c.id == ids[2]).values(detail='{"n":99,"status":"stored"}'))
    report = verify(database)
    assert not report.ok
    assert kinds(report) == {("modified", ids[2])}
    assert report.first_bad_id == ids[2]


def test_a_changed_field_with_a_recomputed_hash_breaks_the_next_link(database: Database) -> None:
    ids = add(database, 4)
    with database.write() as tx:
        row = tx.execute(select(audit_event).where(audit_event.c.id == ids[1])).one()
        forged = dict(row._mapping, outcome="refused")
        forged["hash"] = audit.event_hash(**{k: v for k, v in forged.items() if k != "hash"})
        tx.execute(update(audit_event).where(audit_event.c.id == ids[1]).values(outcome="refused",
                                                                                hash=forged["hash"]))
    report = verify(database)
    assert kinds(report) == {("deleted", ids[2])}
    assert "between" in report.findings[0].message


def test_a_deleted_event_is_found(database: Database) -> None:
    ids = add(database, 6)
    with database.write() as tx:
        tx.execute(audit_event.delete().where(audit_event.c.id == ids[3]))
    report = verify(database)
    assert kinds(report) == {("deleted", ids[4])}
    assert report.first_bad_id == ids[4]
    assert f"#{ids[2]} and #{ids[4]}" in report.findings[0].message


def test_deleting_the_first_event_is_found(database: Database) -> None:
    ids = add(database, 3)
    with database.write() as tx:
        tx.execute(audit_event.delete().where(audit_event.c.id == ids[0]))
    assert kinds(verify(database)) == {("deleted", ids[1])}


def test_swapped_events_are_found(database: Database) -> None:
    """Two rows exchange everything but their ids (the order of events is rewritten)."""
    ids = add(database, 6)
    cols = [c for c in audit_event.c if c.name != "id"]
    with database.write() as tx:
        a, b = (tx.execute(select(*cols).where(audit_event.c.id == i)).one()._mapping for i in (ids[2], ids[3]))
        tx.execute(update(audit_event).where(audit_event.c.id == ids[2]).values(**dict(b)))
        tx.execute(update(audit_event).where(audit_event.c.id == ids[3]).values(**dict(a)))
    report = verify(database)
    found = kinds(report)
    assert ("reordered", ids[2]) in found and ("reordered", ids[3]) in found
    assert ("modified", ids[2]) in found and ("modified", ids[3]) in found  # the id is in the hash
    assert report.first_bad_id == ids[2]


def test_a_truncated_tail_needs_an_anchor(database: Database) -> None:
    ids = add(database, 5)
    with database.read() as tx:
        anchor_id, anchor_hash = audit.head(tx)  # type: ignore[misc]
    anchor = f"{anchor_id}:{anchor_hash}"
    assert verify(database, anchor).ok
    add(database, 2, start=5)  # the trail grows: the old head stays in the chain
    assert verify(database, anchor).ok
    assert verify(database, anchor_hash).ok
    with database.write() as tx:
        tx.execute(audit_event.delete().where(audit_event.c.id >= ids[3]))
    assert verify(database).ok  # undetectable without an anchor
    report = verify(database, anchor)
    assert kinds(report) == {("truncated", anchor_id)}
    # re-appending events after truncation does not bring the anchor back
    add(database, 3, start=10)
    assert kinds(verify(database, anchor)) == {("truncated", anchor_id)}


def test_a_malformed_anchor_is_refused(database: Database) -> None:
    add(database, 1)
    for bad in ("xyz", "12:abc", "a:" + "0" * 64):
        with pytest.raises(ValueError):
            verify(database, bad)


def test_a_rolled_back_event_leaves_the_chain_intact(database: Database) -> None:
    """PostgreSQL's sequence skips the id of a rolled-back insert: a gap is not a deletion."""
    add(database, 2)
    with pytest.raises(RuntimeError), database.write() as tx:
        audit.insert_event(tx, at=T0, action="store", outcome="success", actor_kind="node", actor_name="X",
                           actor_address="", facility_id=None, object_type="", object_id="", detail={})
        raise RuntimeError("the action failed: its audit event goes with it")
    add(database, 2, start=2)
    with database.read() as tx:
        ids = [r.id for r in audit.list_events(tx)]
    if database.dialect == "postgresql":
        assert ids[2] - ids[1] == 2  # the gap
    report = verify(database)
    assert report.ok and report.events == 4


def test_several_events_in_one_transaction(database: Database) -> None:
    with database.write() as tx:
        for i in range(3):
            audit.insert_event(tx, at=T0, action="move", outcome="success", actor_kind="node", actor_name="P",
                               actor_address="", facility_id=None, object_type="study",
                               object_id=f"1.2.{i}", detail={"instances": i})
    assert verify(database).ok and verify(database).events == 3


def test_values_are_truncated_to_their_columns_before_hashing(database: Database) -> None:
    with database.write() as tx:
        audit.insert_event(tx, at=T0, action="a" * 60, outcome="o" * 20, actor_kind="user",
                           actor_name="x" * 150, actor_address="y" * 150, facility_id=None,
                           object_type="t" * 40, object_id="z" * 200, detail={"ü": "é"})
    report = verify(database)
    assert report.ok
    with database.read() as tx:
        [row] = audit.list_events(tx)
    assert (len(row.action), len(row.actor_name), len(row.object_id)) == (48, 100, 128)
    assert row.detail == {"ü": "é"}


def test_chain_unhashed_chains_raw_events_in_id_order(database: Database) -> None:
    add(database, 2)
    with database.write() as tx:
        for i in range(3):
            tx.execute(audit_event.insert().values(
                at=T0, action="legacy", outcome="success", actor_kind="system", actor_name="old",
                detail=f'{{"i":{i}}}'))
    report = verify(database)
    assert {k for k, _ in kinds(report)} == {"modified"}  # unhashed rows are findings
    with database.write() as tx:
        assert audit.chain_unhashed(tx) == 3
    with database.write() as tx:
        assert audit.chain_unhashed(tx) == 0
    report = verify(database)
    assert report.ok and report.events == 5
    add(database, 1, start=9)  # the chain continues from the chained tail
    assert verify(database).ok


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def empty_index(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    if request.param == "sqlite":
        db = open_database(f"sqlite:///{tmp_path / 'old.db'}")
    else:
        db = open_database(request.getfixturevalue("fresh_pg_url"))
    request.addfinalizer(db.dispose)
    return db


def test_migration_0004_chains_existing_events(empty_index: Database) -> None:
    upgrade(empty_index, "0003")
    with empty_index.write() as tx:
        for i in range(4):
            tx.execute(text("INSERT INTO audit_event (at, action, outcome, actor_kind, actor_name, detail) "
                            "VALUES (:at, 'store', 'success', 'node', 'CT', :d)"),
                       {"at": datetime(2025, 1, 1, 0, 0, i) if empty_index.dialect == "sqlite"
                        else datetime(2025, 1, 1, 0, 0, i, tzinfo=UTC), "d": f'{{"i":{i}}}'})
    upgrade(empty_index)
    report = verify(empty_index)
    assert report.ok and report.events == 4
    with empty_index.read() as tx:
        rows = audit.list_events(tx)
    assert rows[0].prev_hash == "" and all(r.hash for r in rows)
    add(empty_index, 1)
    assert verify(empty_index).ok


def test_concurrent_writers_keep_one_linear_chain(database: Database) -> None:
    """Threads on separate engines (separate connections, as separate processes would be)."""
    url = database.engine.url.render_as_string(hide_password=False)
    writers, per_writer = 8, 25
    errors: list[BaseException] = []
    barrier = threading.Barrier(writers)

    def write(n: int) -> None:
        db = open_database(url, pool_size=1)
        try:
            barrier.wait()
            for i in range(per_writer):
                with db.write() as tx:
                    audit.insert_event(tx, at=datetime.now(UTC), action="query", outcome="success",
                                       actor_kind="node", actor_name=f"W{n}", actor_address="", facility_id=None,
                                       object_type="study", object_id="", detail={"i": i})
        except BaseException as exc:
            errors.append(exc)
        finally:
            db.dispose()

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    report = verify(database)
    assert report.ok, report.findings
    assert report.events == writers * per_writer
    with database.read() as tx:
        assert tx.execute(select(func.count(func.distinct(audit_event.c.prev_hash)))).scalar_one() == writers * per_writer
