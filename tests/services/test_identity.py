"""Identity management through the services, on SQLite and PostgreSQL: ingest links
persons, and link/unlink/merge/split/reconciliation are reversible, authorized,
recorded (identity events) and audited in one transaction."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from sqlalchemy import select

from coffre.app import Context
from coffre.dicom.ins import INS_NIR_TEST
from coffre.dicom.synthetic import InstanceSpec, ins_identifier, make_instance
from coffre.errors import BadRequest, Conflict, NotAuthorized, NotFound
from coffre.index.engine import Database
from coffre.index.persons import person_of_identity
from coffre.index.schema import audit_event
from coffre.model import Actor, Facility, Permission, Role
from coffre.services import facilities
from coffre.services import identity as service
from coffre.services.identity import IdentityRef
from coffre.services.ingest import ingest
from coffre.settings import Settings
from coffre.storage.memory import MemoryBlobStore

CLAIRE_INS = "268047512345664"
OTHER_INS = "184127645108946"
OP = Actor.system("test")


class Territory:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.a = facilities.add_facility(ctx, OP, slug="site-a", name="A", issuer="ISS-A")
        self.b = facilities.add_facility(ctx, OP, slug="site-b", name="B", issuer="ISS-B")
        self.c = facilities.add_facility(ctx, OP, slug="site-c", name="C", issuer="ISS-C")
        self.manager_a = self.user("vigil-a", self.a)
        self.manager_b = self.user("vigil-b", self.b)

    @staticmethod
    def user(name: str, *sites: Facility, roles: frozenset[Role] = frozenset({Role.IDENTITY_MANAGER})) -> Actor:
        return Actor.for_user(name, name, roles, tuple(sites), "127.0.0.1")

    def store(self, fac: Facility, patient_id: str, name: str, birth: str = "19680412", sex: str = "F",
              ins: str = "") -> int:
        spec = InstanceSpec(patient_id=patient_id, patient_name=name, birth_date=birth, sex=sex, rows=8, columns=8,
                            other_patient_ids=(ins_identifier(ins, INS_NIR_TEST),) if ins else ())
        ingest(self.ctx, Actor.system("import", facility=fac), make_instance(spec), source="test")
        return self.person(fac, patient_id)

    def person(self, fac: Facility, patient_id: str) -> int:
        with self.ctx.db.read() as tx:
            found = person_of_identity(tx, fac.id, patient_id)
        assert found is not None
        return found

    def audit(self, action: str) -> list[dict]:
        with self.ctx.db.read() as tx:
            rows = tx.execute(select(audit_event).where(audit_event.c.action == action)
                              .order_by(audit_event.c.id)).all()
        return [{**r._mapping, "detail": json.loads(r.detail)} for r in rows]


@pytest.fixture
def t(database: Database, tmp_path: Path) -> Territory:
    return Territory(Context(settings=Settings(data_dir=tmp_path), db=database, blobs=MemoryBlobStore()))


def _ids(person: service.PersonRecord) -> list[str]:
    return sorted(f"{i.facility_slug}:{i.patient_id}" for i in person.identities)


# --- ingest -----------------------------------------------------------------------------


def test_ingest_links_a_qualified_ins_and_audits_it(t: Territory) -> None:
    first = t.store(t.a, "CN100234", "MARTIN^CLAIRE", ins=CLAIRE_INS)
    second = t.store(t.b, "CS-77812", "MARTIN^CLAIRE", ins=CLAIRE_INS)
    assert first == second
    stores = t.audit("store")
    assert [e["detail"]["identity"] for e in stores] == ["new-person", "ins-link"]
    assert [e["person_id"] for e in stores] == [first, first]
    assert all("MARTIN" not in json.dumps(e["detail"]) and CLAIRE_INS not in json.dumps(e["detail"])
               for e in stores)


def test_ingest_audits_an_ignored_ins(t: Territory) -> None:
    t.store(t.a, "P1", "DOE^JANE", ins="268047512345600")
    [event] = t.audit("store")
    assert event["detail"]["ins_ignored"] == ["INS key does not match the number"]


def test_same_patient_id_at_two_facilities_is_two_persons_without_candidate(t: Territory) -> None:
    pierre = t.store(t.a, "100200", "DUBOIS^PIERRE", "19550730", "M")
    sophie = t.store(t.c, "100200", "LEROY^SOPHIE", "19901122", "F")
    assert pierre != sophie
    assert service.reconciliation(t.ctx, OP) == []


# --- link / unlink ----------------------------------------------------------------------


def test_link_and_link_back_restore_the_previous_state(t: Territory) -> None:
    luc_a = t.store(t.a, "A1", "BERNARD^LUC", "19820305", "M")
    t.store(t.a, "A2", "BERNARD^LUC", "19820305", "M")  # a facility duplicate, queued
    luc_b = t.store(t.b, "B1", "DURAND^PAUL", "19700101", "M")
    a2 = t.person(t.a, "A2")
    moved = service.link(t.ctx, t.manager_a, IdentityRef("site-a", "A2"), luc_b, reason="same patient, checked")
    assert moved == luc_b
    assert _ids(service.get(t.ctx, t.manager_a, luc_b)) == ["site-a:A2", "site-b:B1"]
    assert service.get(t.ctx, t.manager_a, a2).identities == ()
    # back where it was
    service.link(t.ctx, t.manager_a, IdentityRef("site-a", "A2"), a2, reason="mistake, undone")
    assert t.person(t.a, "A2") == a2 and _ids(service.get(t.ctx, OP, luc_b)) == ["site-b:B1"]
    history = service.history(t.ctx, t.manager_a, a2)
    assert [(e.action, e.from_person, e.to_person) for e in history] == [
        ("create", None, a2), ("link", a2, luc_b), ("link", luc_b, a2)]
    assert [e.actor for e in history[1:]] == ["user:vigil-a", "user:vigil-a"]
    assert history[1].reason == "same patient, checked"
    audits = t.audit("identity-link")
    assert [(e["person_id"], e["detail"]["from_person"], e["detail"]["to_person"]) for e in audits] == [
        (luc_b, a2, luc_b), (a2, luc_b, a2)]
    assert audits[0]["actor_name"] == "vigil-a" and audits[0]["facility_id"] == t.a.id
    assert luc_a != luc_b


def test_link_to_a_merged_person_follows_the_merge(t: Territory) -> None:
    x = t.store(t.a, "A1", "X^X")
    y = t.store(t.a, "A2", "Y^Y")
    z = t.store(t.a, "A3", "Z^Z")
    service.merge(t.ctx, OP, x, y, reason="same")
    assert service.link(t.ctx, OP, IdentityRef("site-a", "A3"), y, reason="r") == x
    assert t.person(t.a, "A3") == x and z != x


def test_unlink_detaches_into_a_new_person_and_link_undoes_it(t: Territory) -> None:
    claire = t.store(t.a, "CN1", "MARTIN^CLAIRE", ins=CLAIRE_INS)
    t.store(t.b, "CS1", "MARTIN^CLAIRE", ins=CLAIRE_INS)
    new = service.unlink(t.ctx, OP, IdentityRef("site-b", "CS1"), reason="wrong INS sent by site b")
    assert new != claire and t.person(t.b, "CS1") == new
    # both identities were sent with the INS: the old person keeps it, the new one cannot hold it
    assert service.get(t.ctx, OP, claire).ins == CLAIRE_INS and service.get(t.ctx, OP, new).ins == ""
    service.link(t.ctx, OP, IdentityRef("site-b", "CS1"), claire, reason="undo")
    assert t.person(t.b, "CS1") == claire
    assert [e["detail"]["to_person"] for e in t.audit("identity-unlink")] == [new]


def test_unlink_moves_the_ins_with_its_identity(t: Territory) -> None:
    first = t.store(t.a, "A1", "MARTIN^CLAIRE")
    t.store(t.b, "B1", "MARTIN^CLAIRE", ins=CLAIRE_INS)
    service.link(t.ctx, OP, IdentityRef("site-b", "B1"), first, reason="checked")
    assert service.get(t.ctx, OP, first).ins == CLAIRE_INS
    new = service.unlink(t.ctx, OP, IdentityRef("site-b", "B1"), reason="not her")
    assert service.get(t.ctx, OP, first).ins == ""
    assert (service.get(t.ctx, OP, new).ins, service.get(t.ctx, OP, new).ins_oid) == (CLAIRE_INS, INS_NIR_TEST)


def test_unlink_of_the_only_identity_is_refused(t: Territory) -> None:
    t.store(t.a, "A1", "X^Y")
    with pytest.raises(Conflict):
        service.unlink(t.ctx, OP, IdentityRef("site-a", "A1"), reason="r")


def test_link_refuses_two_ins_on_one_person(t: Territory) -> None:
    claire = t.store(t.a, "A1", "MARTIN^CLAIRE", ins=CLAIRE_INS)
    t.store(t.b, "B1", "MARTIN^CLAIRE", ins=OTHER_INS)
    with pytest.raises(Conflict):
        service.link(t.ctx, OP, IdentityRef("site-b", "B1"), claire, reason="r")
    with pytest.raises(Conflict):
        service.merge(t.ctx, OP, claire, t.person(t.b, "B1"), reason="r")
    assert t.person(t.b, "B1") != claire


def test_link_to_its_own_person_is_a_conflict(t: Territory) -> None:
    p = t.store(t.a, "A1", "X^Y")
    with pytest.raises(Conflict):
        service.link(t.ctx, OP, IdentityRef("site-a", "A1"), p, reason="r")


# --- merge / split ----------------------------------------------------------------------


def test_merge_and_split_are_inverse_including_earlier_merges(t: Territory) -> None:
    a = t.store(t.a, "A1", "MARTIN^CLAIRE", ins=CLAIRE_INS)
    b = t.store(t.b, "B1", "MARTIN^CLAIRE")
    c = t.store(t.c, "C1", "MARTIN^C")
    service.merge(t.ctx, OP, b, c, reason="c is b")  # C into B first
    service.merge(t.ctx, OP, a, b, reason="b is a")  # then B (with C's identity) into A
    merged = service.get(t.ctx, OP, a)
    assert _ids(merged) == ["site-a:A1", "site-b:B1", "site-c:C1"] and merged.ins == CLAIRE_INS
    assert service.get(t.ctx, OP, b).merged_into == a
    assert service.get(t.ctx, OP, c).merged_into == a  # re-pointed: one level
    result = service.split(t.ctx, OP, b, reason="b is not a")
    assert (result.person_id, result.from_person, result.skipped) == (b, a, ())
    assert _ids(service.get(t.ctx, OP, a)) == ["site-a:A1"]
    assert _ids(service.get(t.ctx, OP, b)) == ["site-b:B1", "site-c:C1"]
    assert service.get(t.ctx, OP, b).merged_into is None
    assert service.get(t.ctx, OP, c).merged_into == b  # back to the earlier merge
    assert service.get(t.ctx, OP, b).ins == ""
    service.split(t.ctx, OP, c, reason="c is not b")
    assert _ids(service.get(t.ctx, OP, c)) == ["site-c:C1"] and _ids(service.get(t.ctx, OP, b)) == ["site-b:B1"]
    assert [e["object_id"] for e in t.audit("person-merge")] == [str(c), str(b)]
    assert [len(e["detail"]["identities"]) for e in t.audit("person-split")] == [2, 1]


def test_split_leaves_identities_moved_since_and_reports_them(t: Territory) -> None:
    a = t.store(t.a, "A1", "X^X")
    b = t.store(t.b, "B1", "Y^Y")
    t.store(t.b, "B2", "Y^Y")
    b2 = t.person(t.b, "B2")
    service.merge(t.ctx, OP, b, b2, reason="dup")
    service.merge(t.ctx, OP, a, b, reason="same")
    elsewhere = service.unlink(t.ctx, OP, IdentityRef("site-b", "B2"), reason="not her")
    result = service.split(t.ctx, OP, b, reason="undo")
    assert len(result.restored) == 1 and len(result.skipped) == 1
    assert t.person(t.b, "B1") == b and t.person(t.b, "B2") == elsewhere


def test_merge_refusals(t: Territory) -> None:
    a = t.store(t.a, "A1", "X^X")
    b = t.store(t.a, "A2", "Y^Y")
    with pytest.raises(Conflict):
        service.merge(t.ctx, OP, a, a, reason="r")
    service.merge(t.ctx, OP, a, b, reason="r")
    with pytest.raises(Conflict):
        service.merge(t.ctx, OP, a, b, reason="again")
    with pytest.raises(Conflict):
        service.merge(t.ctx, OP, b, a, reason="into its own absorber")
    with pytest.raises(Conflict):
        service.split(t.ctx, OP, a, reason="a is not merged")
    with pytest.raises(NotFound):
        service.merge(t.ctx, OP, a, 10**9, reason="r")
    with pytest.raises(NotFound):
        service.merge(t.ctx, OP, 10**30, a, reason="r")


# --- reconciliation ---------------------------------------------------------------------


def test_reconciliation_link_and_undo(t: Territory) -> None:
    first = t.store(t.a, "A1", "BERNARD^LUC", "19820305", "M")
    t.store(t.b, "B1", "BERNARD^LUC", "19820305", "M")
    [view] = service.reconciliation(t.ctx, t.manager_b)
    assert view.person.id == first and view.identity.patient_id == "B1" and view.candidate.score == 100
    assert service.reconciliation(t.ctx, t.manager_a) == []  # the identity is site-b's
    decided = service.decide(t.ctx, t.manager_b, view.candidate.id, decision="link", reason="same, checked ID card")
    assert decided.candidate.status == "linked" and decided.candidate.decided_by == "user:vigil-b"
    assert t.person(t.b, "B1") == first
    with pytest.raises(Conflict):
        service.decide(t.ctx, t.manager_b, view.candidate.id, decision="reject", reason="r")
    link = service.history(t.ctx, OP, first)[-1]
    assert (link.action, link.evidence["candidate"], link.evidence["rule"]) == ("link", view.candidate.id,
                                                                                 "demographics")
    [event] = t.audit("reconcile-link")
    assert event["person_id"] == first and event["detail"]["score"] == 100
    assert service.reconciliation(t.ctx, OP) == []
    assert [v.candidate.id for v in service.reconciliation(t.ctx, OP, status="linked")] == [view.candidate.id]
    service.unlink(t.ctx, OP, IdentityRef("site-b", "B1"), reason="undo the decision")
    assert t.person(t.b, "B1") != first


def test_reconciliation_reject_then_change_ones_mind(t: Territory) -> None:
    first = t.store(t.a, "A1", "BERNARD^LUC", "19820305", "M")
    t.store(t.b, "B1", "BERNARD^LUC", "19820305", "M")
    [view] = service.reconciliation(t.ctx, OP)
    rejected = service.decide(t.ctx, OP, view.candidate.id, decision="reject", reason="other person")
    assert rejected.candidate.status == "rejected" and t.person(t.b, "B1") != first
    assert service.reconciliation(t.ctx, OP) == []
    service.decide(t.ctx, OP, view.candidate.id, decision="link", reason="was the same after all")
    assert t.person(t.b, "B1") == first
    assert [e["action"] for e in t.audit("reconcile-reject")] == ["reconcile-reject"]


def test_merge_closes_candidates_it_resolves(t: Territory) -> None:
    first = t.store(t.a, "A1", "BERNARD^LUC", "19820305", "M")
    second = t.store(t.b, "B1", "BERNARD^LUC", "19820305", "M")
    service.merge(t.ctx, OP, first, second, reason="same")
    assert service.reconciliation(t.ctx, OP) == []
    assert len(service.reconciliation(t.ctx, OP, status="linked")) == 1


def test_decide_validates_its_input(t: Territory) -> None:
    t.store(t.a, "A1", "BERNARD^LUC", "19820305", "M")
    t.store(t.b, "B1", "BERNARD^LUC", "19820305", "M")
    [view] = service.reconciliation(t.ctx, OP)
    with pytest.raises(BadRequest):
        service.decide(t.ctx, OP, view.candidate.id, decision="merge", reason="r")
    with pytest.raises(BadRequest):
        service.decide(t.ctx, OP, view.candidate.id, decision="link", reason="   ")
    with pytest.raises(NotFound):
        service.decide(t.ctx, OP, 2**70, decision="link", reason="r")
    with pytest.raises(BadRequest):
        service.reconciliation(t.ctx, OP, status="maybe")


# --- reads ------------------------------------------------------------------------------


def test_search_by_name_birth_date_identity_and_ins(t: Territory) -> None:
    claire = t.store(t.a, "CN1", "Martin^Claire", ins=CLAIRE_INS)
    t.store(t.b, "CS1", "MARTIN^CLAIRE", ins=CLAIRE_INS)
    pierre = t.store(t.a, "100200", "DUBOIS^PIERRE", "19550730", "M")
    t.store(t.c, "100200", "LEROY^SOPHIE", "19901122")
    search = service.search
    assert [p.id for p in search(t.ctx, t.manager_a, name="martín")] == [claire]
    assert [p.id for p in search(t.ctx, t.manager_a, name="MARTIN*", birth_date="19680412")] \
        == [claire]
    assert [p.id for p in search(t.ctx, t.manager_a, identity=IdentityRef("site-a", "100200"))] == [pierre]
    assert [p.id for p in search(t.ctx, t.manager_a, ins=CLAIRE_INS)] == [claire]
    assert search(t.ctx, t.manager_a, name="NOBODY") == []
    [event] = [e for e in t.audit("person-search") if e["detail"]["criteria"] == ["ins"]]
    assert event["person_id"] == claire and CLAIRE_INS not in json.dumps(event["detail"])
    assert len(service.list_persons(t.ctx, t.manager_b)) == 3
    assert len(service.list_persons(t.ctx, t.manager_b, facility="site-c")) == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"name": "*"},
        {"name": "X" * 201},
        {"birth_date": "1968"},
        {"birth_date": "19681312"},
        {"birth_date": "1" * 5000},
        {"ins": "268047512345600"},
        {"ins": "1" * 100},
        {"name": "A", "limit": 0},
        {"name": "A", "limit": 10_000},
        {"name": "A", "offset": -1},
    ],
)
def test_bad_search_input_is_a_bad_request(t: Territory, kwargs: dict) -> None:
    with pytest.raises(BadRequest):
        service.search(t.ctx, t.manager_a, **kwargs)


def test_unknown_things_are_not_found(t: Territory) -> None:
    with pytest.raises(NotFound):
        service.get(t.ctx, OP, 12345)
    with pytest.raises(NotFound):
        service.history(t.ctx, OP, 2**64)
    with pytest.raises(NotFound):
        service.search(t.ctx, OP, identity=IdentityRef("no-such-site", "X"))
    with pytest.raises(NotFound):
        service.search(t.ctx, OP, identity=IdentityRef("x" * 100, "X"))
    with pytest.raises(NotFound):
        service.link(t.ctx, OP, IdentityRef("site-a", "NOPE"), 1, reason="r")
    with pytest.raises(NotFound):
        service.link(t.ctx, OP, IdentityRef("site-a", "P" * 65), 1, reason="r")
    p = t.store(t.a, "A1", "X^Y")
    t.store(t.a, "A2", "Z^Z")
    with pytest.raises(NotFound):
        service.link(t.ctx, OP, IdentityRef("site-a", "A2"), 99999, reason="r")
    with pytest.raises(NotFound):
        service.unlink(t.ctx, OP, IdentityRef("site-a", "A1"), reason="r", from_person=p + 1)


def test_reasons_are_required_and_bounded(t: Territory) -> None:
    t.store(t.a, "A1", "X^Y")
    b = t.store(t.a, "A2", "Z^Z")
    for reason in ("", " \n\t", "x" * 501):
        with pytest.raises(BadRequest):
            service.link(t.ctx, OP, IdentityRef("site-a", "A1"), b, reason=reason)
        with pytest.raises(BadRequest):
            service.merge(t.ctx, OP, b, t.person(t.a, "A1"), reason=reason)
    with pytest.raises(BadRequest):
        IdentityRef.parse("no-colon")


# --- authorization ----------------------------------------------------------------------


def test_nodes_clients_and_other_roles_may_not_manage_identities(t: Territory) -> None:
    a1 = t.store(t.a, "A1", "X^Y")
    a2 = t.store(t.a, "A2", "Z^Z")
    node = facilities.add_node(t.ctx, OP, ae_title="PACS_A", host="127.0.0.1", port=104, facility_slug="site-a",
                               permissions=frozenset(Permission))
    denied = [
        Actor.for_node(node, t.a, "127.0.0.1"),
        Actor.for_client("token:x", t.a, frozenset(Permission), "127.0.0.1"),
        t.user("doc", t.a, roles=frozenset({Role.CLINICIAN, Role.RADIOLOGIST, Role.FACILITY_ADMIN})),
    ]
    for actor in denied:
        with pytest.raises(NotAuthorized):
            service.search(t.ctx, actor, name="X")
        with pytest.raises(NotAuthorized):
            service.get(t.ctx, actor, a1)
        with pytest.raises(NotAuthorized):
            service.link(t.ctx, actor, IdentityRef("site-a", "A1"), a2, reason="r")
        with pytest.raises(NotAuthorized):
            service.merge(t.ctx, actor, a1, a2, reason="r")
        with pytest.raises(NotAuthorized):
            service.reconciliation(t.ctx, actor)
    assert t.person(t.a, "A1") == a1


def test_identity_managers_act_on_their_facilities_only(t: Territory) -> None:
    a = t.store(t.a, "A1", "BERNARD^LUC", "19820305", "M")
    b = t.store(t.b, "B1", "BERNARD^LUC", "19820305", "M")
    [view] = service.reconciliation(t.ctx, OP)
    with pytest.raises(NotAuthorized):  # B1 is site-b's
        service.link(t.ctx, t.manager_a, IdentityRef("site-b", "B1"), a, reason="r")
    with pytest.raises(NotAuthorized):
        service.merge(t.ctx, t.manager_a, a, b, reason="r")
    with pytest.raises(NotAuthorized):
        service.decide(t.ctx, t.manager_a, view.candidate.id, decision="link", reason="r")
    # site-b's manager may move its identity to a person known elsewhere, and merge its person
    service.merge(t.ctx, t.manager_b, a, b, reason="same person")
    with pytest.raises(NotAuthorized):
        service.split(t.ctx, t.manager_a, b, reason="r")
    service.split(t.ctx, t.manager_b, b, reason="undo")
    # a manager of both facilities
    both = t.user("vigil-ab", t.a, t.b)
    service.merge(t.ctx, both, b, a, reason="same")
    assert t.person(t.a, "A1") == b


def test_no_patient_data_in_logs(t: Territory, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    a = t.store(t.a, "CN100234", "MARTIN^CLAIRE", ins=CLAIRE_INS)
    t.store(t.b, "B1", "MARTIN^CLAIRE")
    b = t.person(t.b, "B1")
    service.merge(t.ctx, OP, a, b, reason="same")
    service.split(t.ctx, OP, b, reason="undo")
    service.search(t.ctx, OP, name="MARTIN")
    with pytest.raises(Conflict):
        service.unlink(t.ctx, OP, IdentityRef("site-a", "CN100234"), reason="r")
    text = caplog.text
    for secret in ("MARTIN", "CLAIRE", CLAIRE_INS, "CN100234", "19680412"):
        assert secret not in text
