"""Persons in the index, on SQLite and PostgreSQL: linking at phase two of ingest
(qualified INS, new person, reconciliation candidates), provenance, search."""

from __future__ import annotations

import hashlib
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from coffre.dicom.ins import INS_NIR_TEST, QualifiedIns, demographics
from coffre.dicom.instance import parse_instance
from coffre.dicom.synthetic import InstanceSpec, ins_identifier, make_instance
from coffre.index import matching
from coffre.index import persons as index
from coffre.index.engine import Database
from coffre.index.facilities import add_facility
from coffre.index.instances import Committed, commit_instance, reserve_file
from coffre.index.schema import identity_event, patient, person, reconciliation_candidate
from coffre.model import Facility
from coffre.settings import Settings

NOW = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
LIMITS = Settings(data_dir=Path("/nonexistent")).limits
CLAIRE_INS = "268047512345664"
OTHER_INS = "184127645108946"


@pytest.fixture
def sites(database: Database) -> tuple[Facility, Facility, Facility]:
    with database.write() as tx:
        return (add_facility(tx, slug="nord", name="Nord", issuer="NORD", now=NOW),
                add_facility(tx, slug="sud", name="Sud", issuer="SUD", now=NOW),
                add_facility(tx, slug="est", name="Est", issuer="EST", now=NOW))


def _spec(patient_id: str, name: str, birth: str = "19680412", sex: str = "F", ins: str = "") -> InstanceSpec:
    others = (ins_identifier(ins, INS_NIR_TEST),) if ins else ()
    return InstanceSpec(patient_id=patient_id, patient_name=name, birth_date=birth, sex=sex,
                        other_patient_ids=others, rows=8, columns=8)


def _store(db: Database, fac: Facility, spec: InstanceSpec) -> Committed:
    data = make_instance(spec)
    parsed = parse_instance(data, LIMITS)
    sha = hashlib.sha256(data).hexdigest()
    key = f"{fac.slug}/{uuid.uuid4().hex}"
    with db.write() as tx:
        file_pk = reserve_file(tx, facility_id=fac.id, sop_instance_uid=parsed.sop_instance_uid, blob_key=key,
                               size=len(data), sha256=sha, source="test", now=NOW)
        return commit_instance(tx, facility_id=fac.id, default_issuer=fac.issuer, file_pk=file_pk, blob_key=key,
                               size=len(data), sha256=sha, source="test", parsed=parsed, now=NOW,
                               actor="node:TEST")


def _person(db: Database, fac: Facility, patient_id: str) -> int:
    with db.read() as tx:
        found = index.person_of_identity(tx, fac.id, patient_id)
    assert found is not None
    return found


def _events(db: Database) -> list[index.IdentityEvent]:
    with db.read() as tx:
        rows = tx.execute(select(identity_event.c.id)).scalars().all()
        return [e for e in (index.get_event(tx, r) for r in rows) if e is not None]


def _candidates(db: Database, status: str | None = "open") -> list[index.Candidate]:
    with db.read() as tx:
        return index.list_candidates(tx, status=status)


def test_new_identity_gets_a_new_person_with_a_create_event(database: Database, sites) -> None:
    nord, _, _ = sites
    committed = _store(database, nord, _spec("CN1", "MARTIN^CLAIRE"))
    assert committed.identity is not None and committed.identity.action == "new-person"
    pid = _person(database, nord, "CN1")
    assert committed.identity.person_id == pid
    with database.read() as tx:
        assert [(i.facility_slug, i.issuer, i.patient_id) for i in index.identities_of(tx, pid)] == [
            ("nord", "NORD", "CN1")]
        assert index.current_person(tx, pid) == pid
        assert index.get_person(tx, pid).ins == ""  # type: ignore[union-attr]
    [event] = _events(database)
    assert (event.action, event.to_person, event.from_person, event.actor) == ("create", pid, None, "node:TEST")
    assert committed.identity.audit_detail() == {"identity": "new-person", "person": pid}


def test_known_identity_without_ins_is_the_hot_path(database: Database, sites) -> None:
    nord, _, _ = sites
    _store(database, nord, _spec("CN1", "MARTIN^CLAIRE"))
    again = _store(database, nord, _spec("CN1", "MARTIN^CLAIRE"))
    assert again.identity is None
    assert len(_events(database)) == 1


def test_same_qualified_ins_at_two_facilities_is_one_person(database: Database, sites) -> None:
    nord, sud, _ = sites
    _store(database, nord, _spec("CN100234", "MARTIN^CLAIRE", ins=CLAIRE_INS))
    second = _store(database, sud, _spec("CS-77812", "MARTIN^CLAIRE^MARIE", ins=CLAIRE_INS))
    assert second.identity is not None and second.identity.action == "ins-link"
    pid = _person(database, nord, "CN100234")
    assert _person(database, sud, "CS-77812") == pid
    with database.read() as tx:
        found = index.get_person(tx, pid)
        assert found is not None and (found.ins, found.ins_oid) == (CLAIRE_INS, INS_NIR_TEST)
        assert {i.facility_slug for i in found.identities} == {"nord", "sud"}
    link = _events(database)[-1]
    assert link.action == "link" and link.to_person == pid
    assert link.evidence == {"rule": "ins", "sent_ins": {"value": CLAIRE_INS, "oid": INS_NIR_TEST}}
    assert _candidates(database) == []


def test_ins_wins_over_different_demographics(database: Database, sites) -> None:
    nord, sud, _ = sites
    _store(database, nord, _spec("A1", "DURAND^ANNE", ins=CLAIRE_INS))
    _store(database, sud, _spec("B1", "DURAND EPOUSE PETIT^ANNE", birth="19680413", ins=CLAIRE_INS))
    assert _person(database, nord, "A1") == _person(database, sud, "B1")


def test_resembling_identity_is_queued_never_merged(database: Database, sites) -> None:
    nord, sud, est = sites
    _store(database, nord, _spec("N1", "BERNARD^LUC", "19820305", "M"))
    committed = _store(database, sud, _spec("S1", "Bernard^Luc", "19820305", "M"))
    assert committed.identity is not None
    assert (committed.identity.action, committed.identity.candidates) == ("new-person", 1)
    first, second = _person(database, nord, "N1"), _person(database, sud, "S1")
    assert first != second
    [candidate] = _candidates(database)
    assert (candidate.candidate_person, candidate.score, candidate.status) == (first, 100, "open")
    with database.read() as tx:
        assert candidate.patient_pk == index.identities_of(tx, second)[0].patient_pk
    assert candidate.evidence["family"] == "equal" and candidate.evidence["given"] == "equal"
    # a third resembling identity is queued against both persons
    _store(database, est, _spec("E1", "BERNARD^LUC", "19820305", ""))
    assert sorted(c.score for c in _candidates(database)) == [90, 90, 100]


@pytest.mark.parametrize(
    ("name", "birth", "sex", "score"),
    [
        ("DUBOIS^PIERRE", "19550730", "M", None),  # other person altogether
        ("MARTIN^CLAIRE", "19680413", "F", None),  # another birth date
        ("MARTIN^CLAIRE", "19680412", "M", None),  # sexes contradict
        ("MARTIN^PAUL", "19680412", "F", None),  # a twin: 60 < threshold
        ("MARTIN-DUPONT^CLAIRE", "19680412", "F", 80),  # family name prefix
        ("MARTIN^C", "19680412", "F", 75),  # given name initial
        ("MARTIN^CLAIRE", "19680412", "", 90),  # sex unknown
        ("MARTINEAU^CLAIRE", "19680412", "F", 80),  # first 4 letters
    ],
)
def test_resemblance_rules(database: Database, sites, name: str, birth: str, sex: str,
                           score: int | None) -> None:
    nord, sud, _ = sites
    _store(database, nord, _spec("N1", "MARTIN^CLAIRE", "19680412", "F"))
    _store(database, sud, _spec("S1", name, birth, sex))
    assert [c.score for c in _candidates(database)] == ([] if score is None else [score])


def test_resemblance_function_directly() -> None:
    a = demographics("MARTIN^CLAIRE", "19680412", "F")
    assert matching.resemblance(a, demographics("MARTIN^CLAIRE", "19680412", "F")).score == 100  # type: ignore[union-attr]
    assert matching.resemblance(a, demographics("^CLAIRE", "19680412", "F")) is None
    assert matching.resemblance(demographics("MARTIN", "", "F"), demographics("MARTIN", "", "F")) is None


def test_person_with_another_ins_is_not_a_candidate(database: Database, sites) -> None:
    nord, sud, _ = sites
    _store(database, nord, _spec("N1", "MARTIN^CLAIRE", ins=OTHER_INS))
    _store(database, sud, _spec("S1", "MARTIN^CLAIRE", ins=CLAIRE_INS))
    assert _candidates(database) == []
    assert _person(database, nord, "N1") != _person(database, sud, "S1")


def test_known_identity_later_sending_ins_sets_it_once(database: Database, sites) -> None:
    nord, _, _ = sites
    _store(database, nord, _spec("N1", "MARTIN^CLAIRE"))
    pid = _person(database, nord, "N1")
    committed = _store(database, nord, _spec("N1", "MARTIN^CLAIRE", ins=CLAIRE_INS))
    assert committed.identity is not None and committed.identity.action == "ins-set"
    with database.read() as tx:
        assert index.person_ins(tx, pid) == QualifiedIns(CLAIRE_INS, INS_NIR_TEST)
        assert index.ins_sent_by(tx, [index.identities_of(tx, pid)[0].patient_pk]) == {
            index.identities_of(tx, pid)[0].patient_pk: QualifiedIns(CLAIRE_INS, INS_NIR_TEST)}
    event = _events(database)[-1]
    assert (event.action, event.from_person, event.to_person, event.evidence["applied"]) == ("ins", pid, pid, True)
    again = _store(database, nord, _spec("N1", "MARTIN^CLAIRE", ins=CLAIRE_INS))
    assert again.identity is None and len(_events(database)) == 2


def test_known_identity_sending_an_ins_held_elsewhere_is_queued(database: Database, sites) -> None:
    nord, sud, _ = sites
    _store(database, nord, _spec("N1", "MARTIN^CLAIRE", ins=CLAIRE_INS))
    _store(database, sud, _spec("S1", "DUPONT^JEANNE", "19900101"))
    holder, other = _person(database, nord, "N1"), _person(database, sud, "S1")
    committed = _store(database, sud, _spec("S1", "DUPONT^JEANNE", "19900101", ins=CLAIRE_INS))
    assert committed.identity is not None
    assert (committed.identity.action, committed.identity.candidates) == ("ins-held-elsewhere", 1)
    assert _person(database, sud, "S1") == other  # not linked
    [candidate] = _candidates(database)
    assert (candidate.candidate_person, candidate.score, candidate.evidence) == (holder, 100, {"rule": "ins"})
    with database.read() as tx:
        assert index.person_ins(tx, other) is None
    assert _events(database)[-1].evidence["held_by"] == [holder]
    assert _store(database, sud, _spec("S1", "DUPONT^JEANNE", "19900101", ins=CLAIRE_INS)).identity is None


def test_known_identity_with_a_different_ins_is_noted_not_applied(database: Database, sites) -> None:
    nord, _, _ = sites
    _store(database, nord, _spec("N1", "MARTIN^CLAIRE", ins=CLAIRE_INS))
    committed = _store(database, nord, _spec("N1", "MARTIN^CLAIRE", ins=OTHER_INS))
    assert committed.identity is not None and committed.identity.action == "ins-mismatch"
    with database.read() as tx:
        assert index.person_ins(tx, _person(database, nord, "N1")) == QualifiedIns(CLAIRE_INS, INS_NIR_TEST)


def test_invalid_ins_is_reported_for_the_audit(database: Database, sites) -> None:
    nord, _, _ = sites
    committed = _store(database, nord, _spec("N1", "MARTIN^CLAIRE", ins="268047512345600"))
    assert committed.identity is not None
    assert committed.identity.ins_ignored == ("INS key does not match the number",)
    assert committed.identity.audit_detail()["ins_ignored"] == ["INS key does not match the number"]
    with database.read() as tx:
        assert index.person_ins(tx, _person(database, nord, "N1")) is None
    later = _store(database, nord, _spec("N1", "MARTIN^CLAIRE", ins="268047512345600"))
    assert later.identity is not None and later.identity.action == "none"


def test_concurrent_first_objects_with_one_ins_make_one_person(database: Database, sites) -> None:
    nord, sud, est = sites
    barrier = threading.Barrier(3)
    errors: list[BaseException] = []

    def run(fac: Facility, pid: str) -> None:
        try:
            barrier.wait()
            _store(database, fac, _spec(pid, "MARTIN^CLAIRE", ins=CLAIRE_INS))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(f, f"{f.slug}-1")) for f in (nord, sud, est)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    with database.read() as tx:
        assert tx.execute(select(func.count()).select_from(person)).scalar_one() == 1
        assert tx.execute(select(func.count(func.distinct(patient.c.person_id)))).scalar_one() == 1


def test_search_persons(database: Database, sites) -> None:
    nord, sud, est = sites
    _store(database, nord, _spec("CN100234", "MARTIN^CLAIRE", ins=CLAIRE_INS))
    _store(database, sud, _spec("CS-77812", "MARTIN^CLAIRE", ins=CLAIRE_INS))
    _store(database, nord, _spec("100200", "DUBOIS^PIERRE", "19550730", "M"))
    _store(database, est, _spec("100200", "LEROY^SOPHIE", "19901122"))
    _store(database, est, _spec("X%", "MA%TIN^X", "19901122"))
    claire = _person(database, nord, "CN100234")
    with database.read() as tx:
        assert [p.id for p in index.search_persons(tx, name_norm="MARTIN")] == [claire]
        assert [p.id for p in index.search_persons(tx, name_norm="MARTIN^CL", birth_date="19680412")] == [claire]
        assert index.search_persons(tx, name_norm="MARTIN", birth_date="19680413") == []
        assert [p.id for p in index.search_persons(tx, name_norm="MA%")] == [_person(database, est, "X%")]
        assert index.search_persons(tx, name_norm="M_RTIN") == []
        by_pid = index.search_persons(tx, patient_id="100200")
        assert len(by_pid) == 2
        assert [p.identities[0].patient_name for p in index.search_persons(tx, facility_id=est.id,
                                                                           patient_id="100200")] == ["LEROY^SOPHIE"]
        [found] = index.search_persons(tx, ins=CLAIRE_INS)
        assert found.id == claire and len(found.identities) == 2
        assert found.identities[0].birth_date == "19680412" and found.identities[0].sex == "F"
        assert len(index.search_persons(tx)) == 4
        assert len(index.search_persons(tx, limit=2, offset=3)) == 1


def test_candidates_close_when_the_identity_joins_the_person(database: Database, sites) -> None:
    nord, sud, _ = sites
    _store(database, nord, _spec("N1", "BERNARD^LUC", "19820305", "M"))
    _store(database, sud, _spec("S1", "BERNARD^LUC", "19820305", "M"))
    [candidate] = _candidates(database)
    with database.write() as tx:
        assert index.close_resolved_candidates(tx, patient_pks=[candidate.patient_pk], at=NOW, by="t") == []
        index.set_identity_person(tx, [candidate.patient_pk], candidate.candidate_person)
        assert index.close_resolved_candidates(tx, patient_pks=[candidate.patient_pk], at=NOW, by="t") == [
            candidate.id]
    assert _candidates(database) == []
    [closed] = _candidates(database, "linked")
    assert closed.decided_by == "t" and closed.decided_at == NOW


def test_add_candidate_once_per_pair(database: Database, sites) -> None:
    nord, sud, _ = sites
    _store(database, nord, _spec("N1", "A^B"))
    _store(database, sud, _spec("S1", "C^D"))
    with database.write() as tx:
        pk = index.identities_of(tx, _person(database, sud, "S1"))[0].patient_pk
        target = _person(database, nord, "N1")
        assert index.add_candidate(tx, patient_pk=pk, person_id=target, score=70, evidence={}, now=NOW)
        assert not index.add_candidate(tx, patient_pk=pk, person_id=target, score=90, evidence={}, now=NOW)
        assert tx.execute(select(func.count()).select_from(reconciliation_candidate)).scalar_one() == 1


def test_unknown_and_out_of_range_ids_are_none(database: Database) -> None:
    with database.read() as tx:
        for pid in (0, -1, 10**6, 2**63, 10**30):
            assert index.get_person(tx, pid) is None
            assert index.get_identity(tx, pid) is None
            assert index.get_candidate(tx, pid) is None


def test_resemblance_search_is_served_by_an_index_on_sqlite(tmp_path: Path) -> None:
    from coffre.index.engine import open_database
    from coffre.index.migrate import upgrade

    db = open_database(f"sqlite:///{tmp_path / 'plan.db'}")
    try:
        upgrade(db)
        with db.read() as tx:
            stmt = (select(patient.c.id).where(patient.c.facility_id.in_([1, 2, 3]),
                                               matching._prefix_condition(tx, "MART"),
                                               patient.c.patient_birth_date == "19680412"))
            sql = str(stmt.compile(tx, compile_kwargs={"literal_binds": True}))
            plan = " ".join(str(r[-1]) for r in tx.execute(text(f"EXPLAIN QUERY PLAN {sql}")))
        # an index serves it (the birth date one since migration 0005, else the name one)
        assert "SEARCH patient USING INDEX" in plan and "SCAN patient" not in plan, plan
        assert "ix_patient_patient_birth_date" in plan or "ix_patient_facility_id_patient_name_norm" in plan
    finally:
        db.dispose()
