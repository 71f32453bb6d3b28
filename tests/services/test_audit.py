"""The audit services: who acted (roles, subject, facility), searching the trail with
the auditor's scope, the patient access report, verification — on both databases.

Territory: person P is ``A-1`` at site-a; person Q is ``B-7`` at site-b. Site-b's
clinician breaks the glass for P and retrieves P's study; site-a's radiologist
retrieves it too (through the real retrieve service).
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from coffre.app import Context
from coffre.dicom import audit_message
from coffre.dicom.query import uid_query
from coffre.dicom.synthetic import InstanceSpec, make_dataset
from coffre.errors import BadRequest, NotAuthorized, NotFound
from coffre.index import audit as audit_index
from coffre.index.engine import Database
from coffre.index.schema import audit_event, patient
from coffre.model import Actor, Facility, Role
from coffre.services import audit, facilities, grants
from coffre.services.ingest import ingest
from coffre.services.retrieve import plan
from coffre.settings import Settings
from coffre.storage.memory import MemoryBlobStore
from factories import encode


@dataclasses.dataclass
class World:
    ctx: Context
    a: Facility
    b: Facility
    p: int
    q: int
    study_p: str
    study_q: str

    def user(self, name: str, role: Role, fac: Facility) -> Actor:
        return Actor.for_user(f"{name}@{fac.slug}", name, frozenset({role}), (fac,), "10.1.2.3",
                              token_id=f"jti-{name}")


def _person(ctx: Context, facility_id: int, patient_id: str) -> int:
    with ctx.db.read() as tx:
        found = tx.execute(select(patient.c.person_id).where(patient.c.facility_id == facility_id,
                                                             patient.c.patient_id == patient_id)).scalar_one()
    assert found is not None
    return int(found)


@pytest.fixture
def world(database: Database, tmp_path: Path) -> World:
    ctx = Context(settings=Settings(data_dir=tmp_path), db=database, blobs=MemoryBlobStore())
    op = Actor.system("test")
    a = facilities.add_facility(ctx, op, slug="site-a", name="Site A", issuer="SITE-A")
    b = facilities.add_facility(ctx, op, slug="site-b", name="Site B", issuer="SITE-B")
    studies = []
    for fac, pid, name in ((a, "A-1", "MARTIN^CLAIRE"), (b, "B-7", "DUBOIS^PIERRE")):
        ds = make_dataset(InstanceSpec(patient_id=pid, patient_name=name))
        ingest(ctx, Actor.system("test", facility=fac), encode(ds), source="test")
        studies.append(str(ds.StudyInstanceUID))
    return World(ctx, a, b, _person(ctx, a.id, "A-1"), _person(ctx, b.id, "B-7"), *studies)


def events(world: World, action: str) -> list[audit_index.AuditRow]:
    with world.ctx.db.read() as tx:
        return audit_index.list_events(tx, action=action)


def test_record_adds_who_acted_with_which_roles_for_which_facility(world: World) -> None:
    w = world
    radiologist = w.user("dr-house", Role.RADIOLOGIST, w.a)
    audit.record_alone(w.ctx, radiologist, "viewer", object_type="study", object_id=w.study_p, person_id=w.p,
                       detail={"frames": 3})
    [event] = events(w, "viewer")
    assert event.detail == {"frames": 3, "by": {"facility": "site-a", "roles": ["radiologist"],
                                                 "subject": "dr-house@site-a", "token": "jti-dr-house"}}
    assert (event.facility_id, event.person_id, event.actor_kind) == (w.a.id, w.p, "user")
    # the system actor of no facility adds nothing; a node adds its facility
    audit.record_alone(w.ctx, Actor.system("cli"), "check")
    assert events(w, "check")[0].detail == {}
    [store] = [e for e in events(w, "store") if e.facility_id == w.b.id]
    assert store.detail["by"] == {"facility": "site-b"}


def test_retrieve_events_name_the_person_and_the_reason(world: World) -> None:
    w = world
    clinician_b = w.user("clin", Role.CLINICIAN, w.b)
    assert plan(w.ctx, clinician_b, uid_query(w.study_p, None, None), operation="wado-rs") == []
    grants.break_glass(w.ctx, clinician_b, w.p, reason="unconscious patient in the ER")
    assert len(plan(w.ctx, clinician_b, uid_query(w.study_p, None, None), operation="wado-rs")) == 1
    [_, seen] = events(w, "wado-rs")
    assert (seen.person_id, seen.object_id, seen.detail["access"]) == (w.p, w.study_p, "break-glass")
    assert seen.detail["by"]["facility"] == "site-b"


def _scenario(w: World) -> None:
    clinician_b = w.user("clin", Role.CLINICIAN, w.b)
    radiologist_a = w.user("rad", Role.RADIOLOGIST, w.a)
    grants.break_glass(w.ctx, clinician_b, w.p, reason="unconscious patient in the ER")
    plan(w.ctx, clinician_b, uid_query(w.study_p, None, None), operation="wado-rs")
    plan(w.ctx, radiologist_a, uid_query(w.study_p, None, None), operation="move", destination="WS_A")
    plan(w.ctx, w.user("clin", Role.CLINICIAN, w.b), uid_query(w.study_q, None, None), operation="get")


def test_access_report_for_an_auditor(world: World) -> None:
    w = world
    _scenario(w)
    report = audit.access_report(w.ctx, w.user("aud", Role.AUDITOR, w.a), w.p)
    assert report.person_id == w.p and report.staff_names
    access = [e for e in report.entries if e.category == "access"]
    assert [(e.action, e.facility, e.roles, e.actor, e.purpose, e.study_uid) for e in access] == [
        ("wado-rs", "site-b", ("clinician",), "clin", "break-glass", w.study_p),
        ("move", "site-a", ("radiologist",), "rad", "own", w.study_p),
    ]
    [glass] = [e for e in report.entries if e.action == "break-glass"]
    assert (glass.category, glass.purpose, glass.facility, glass.actor) == ("security", "break-glass", "site-b", "clin")
    assert all(e.study_uid != w.study_q for e in report.entries)  # only this person
    # reading the report is audited, with the person's id: the next report shows it
    [read] = events(w, "audit-report")
    assert (read.person_id, read.actor_name, read.detail["entries"]) == (w.p, "aud", len(report.entries))
    again = audit.access_report(w.ctx, Actor.system("cli"), w.p)
    assert [e.action for e in again.entries if e.category == "audit"] == ["audit-report"]


def test_access_report_for_a_patient_hides_staff_names(world: World) -> None:
    w = world
    _scenario(w)
    for report in (audit.access_report(w.ctx, w.user("admin", Role.FACILITY_ADMIN, w.a), w.p),
                   audit.access_report(w.ctx, Actor.system("cli"), w.p, staff_names=False),
                   audit.access_report(w.ctx, w.user("aud", Role.AUDITOR, w.a), w.p, staff_names=False)):
        assert not report.staff_names
        users = [e for e in report.entries if e.actor_kind == "user"]
        assert users and {e.actor for e in users} == {"staff"}
        assert {e.facility for e in users} >= {"site-a", "site-b"}
        assert ("clinician",) in {e.roles for e in users}


def test_access_report_is_refused_outside_the_actors_facilities(world: World) -> None:
    w = world
    _scenario(w)
    with pytest.raises(NotFound):
        audit.access_report(w.ctx, w.user("aud", Role.AUDITOR, w.b), w.p)  # P is not site-b's patient
    with pytest.raises(NotAuthorized):
        audit.access_report(w.ctx, w.user("clin", Role.CLINICIAN, w.a), w.p)
    with pytest.raises(NotFound):
        audit.access_report(w.ctx, w.user("aud", Role.AUDITOR, w.a), 999_999)


def test_access_report_follows_merged_persons(world: World) -> None:
    """Events recorded under a person later merged into another stay in its report."""
    w = world
    audit.record_alone(w.ctx, w.user("rad", Role.RADIOLOGIST, w.b), "wado-rs", object_type="study",
                       object_id=w.study_q, person_id=w.q, detail={"access": "own"})
    from coffre.index.schema import person

    with w.ctx.db.write() as tx:
        tx.execute(update(person).where(person.c.id == w.q).values(merged_into=w.p))
        tx.execute(update(patient).where(patient.c.person_id == w.q).values(person_id=w.p))
    report = audit.access_report(w.ctx, Actor.system("cli"), w.q)
    assert report.person_id == w.p and set(report.persons) == {w.p, w.q}
    assert w.study_q in {e.study_uid for e in report.entries}


def test_purpose_is_reconstructed_from_grants_for_older_events(world: World) -> None:
    w = world
    clinician_b = w.user("clin", Role.CLINICIAN, w.b)
    grants.record_care(w.ctx, clinician_b, w.p, days=30, reason="follow-up")
    # an event recorded without a purpose (older code), by site-b, about P
    audit.record_alone(w.ctx, clinician_b, "wado-rs-metadata", object_type="study", object_id=w.study_p,
                       person_id=w.p)
    later = dataclasses.replace(w.ctx, clock=lambda: w.ctx.clock() + timedelta(days=60))
    audit.record_alone(later, clinician_b, "wado-rs-metadata", object_type="study", object_id=w.study_p,
                       person_id=w.p)
    report = audit.access_report(w.ctx, Actor.system("cli"), w.p)
    assert [e.purpose for e in report.entries if e.action == "wado-rs-metadata"] == ["care", ""]


def test_search_is_scoped_to_the_auditors_facilities(world: World) -> None:
    w = world
    _scenario(w)
    audit.record_alone(w.ctx, Actor.system("net"), "association", outcome="refused", object_type="node")
    auditor_a = w.user("aud", Role.AUDITOR, w.a)
    page = audit.search_events(w.ctx, auditor_a, limit=1000)
    assert page.events and {e.facility_id for e in page.events} == {w.a.id}
    assert "association" not in {e.action for e in page.events}  # events of no facility: territory-wide only
    everything = audit.search_events(w.ctx, Actor.system("cli"), limit=1000)
    assert {e.facility_id for e in everything.events} >= {w.a.id, w.b.id, None}
    with pytest.raises(NotAuthorized):
        audit.search_events(w.ctx, auditor_a, facility="site-b")
    for who in (w.user("clin", Role.CLINICIAN, w.a), w.user("admin", Role.FACILITY_ADMIN, w.a),
                w.user("ta", Role.TERRITORY_ADMIN, w.a)):
        with pytest.raises(NotAuthorized):
            audit.search_events(w.ctx, who)


def test_search_filters_and_pages(world: World) -> None:
    w = world
    _scenario(w)
    op = Actor.system("cli")
    moves = audit.search_events(w.ctx, op, action="move")
    assert [(e.action, e.object_id) for e in moves.events] == [("move", w.study_p)]
    by_person = audit.search_events(w.ctx, op, person_id=w.p, limit=1000)
    assert by_person.events and {e.person_id for e in by_person.events} == {w.p}
    by_actor = audit.search_events(w.ctx, op, actor_name="clin", limit=1000)
    assert {e.action for e in by_actor.events} == {"break-glass", "wado-rs", "get"}
    on_b = audit.search_events(w.ctx, op, facility="site-b", limit=1000)
    assert {e.facility_id for e in on_b.events} == {w.b.id}
    first = by_actor.events[0]
    assert audit.search_events(w.ctx, op, since=first.at + timedelta(days=1)).events == []
    assert audit.search_events(w.ctx, op, until=first.at - timedelta(days=1)).events == []
    # pages of 2 cover everything once, in order
    seen: list[int] = []
    cursor = None
    total = len(audit.search_events(w.ctx, op, limit=1000).events)
    while True:
        page = audit.search_events(w.ctx, op, limit=2, cursor=cursor)
        seen += [e.id for e in page.events]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == sorted(seen) and len(seen) >= total
    for bad in (0, 1001):
        with pytest.raises(BadRequest):
            audit.search_events(w.ctx, op, limit=bad)
    searches = events(w, "audit-search")
    assert searches[0].detail["filters"] == {"action": "move"}
    assert searches[1].person_id == w.p  # a search about a person is in its access report


def test_verify_chain_is_audited(world: World) -> None:
    w = world
    auditor = w.user("aud", Role.AUDITOR, w.a)
    report = audit.verify_chain(w.ctx, auditor)
    assert report.ok and report.events >= 4
    head = audit.chain_head(w.ctx, auditor)
    assert head is not None and head[0] == events(w, "audit-verify")[0].id
    with w.ctx.db.write() as tx:
        tx.execute(update(audit_event).where(audit_event.c.action == "store").values(outcome="refused"))
    broken = audit.verify_chain(w.ctx, auditor, anchor=f"{head[0]}:{head[1]}")
    assert not broken.ok and broken.first_bad_id is not None
    assert [e.outcome for e in events(w, "audit-verify")] == ["success", "failure"]
    with pytest.raises(BadRequest):
        audit.verify_chain(w.ctx, auditor, anchor="not-a-hash")
    with pytest.raises(NotAuthorized):
        audit.verify_chain(w.ctx, w.user("clin", Role.CLINICIAN, w.a))


def test_docs_show_the_action_table_of_the_code() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "audit.md").read_text(encoding="utf-8")
    begin, end = "<!-- action table: begin -->\n", "<!-- action table: end -->"
    shown = docs[docs.index(begin) + len(begin):docs.index(end)]
    assert shown.strip() == audit_message.action_table().strip()


def test_every_recorded_action_has_a_dicom_event() -> None:
    """The action strings the services record today map to a specific DICOM event, not
    the Application Activity fallback (except the integrity check)."""
    import re

    src = Path(audit_message.__file__).resolve().parents[1]
    actions = set()
    for path in src.rglob("*.py"):
        actions |= set(re.findall(r'audit\.record(?:_alone)?\([^"]*?"([a-z][a-z-]+)"', path.read_text()))
    actions -= {"success", "refused", "failure", "alert", "no-match", "study", "grant", "node", "user", "person",
                "token", "instance", "facility", "anonymous", "audit", "share", "candidate"} - set(audit_message.ACTIONS)
    generic = {a for a in actions if audit_message.kind_of(a) == audit_message.DEFAULT}
    assert generic <= {"check"}, generic
