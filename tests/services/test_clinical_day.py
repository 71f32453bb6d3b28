"""A scripted clinical day across three facilities, on SQLite and PostgreSQL.

A few hundred operations — modalities storing, PACS querying and retrieving, users
signing in (and failing to), a care relationship, break-the-glass, an opposition, a
refused retrieve — each adding what the audit trail must say to an expected list. At
the end the trail holds exactly the expected events (action, outcome, actor, object),
in order; the hash chain is intact; and tampering with any single row (a changed
detail, a deleted event, two events swapped) is detected by ``verify``.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass, field

import pytest
from pydicom.dataset import Dataset
from sqlalchemy import delete, select, update

from coffre.dicom.query import Model, parse_identifier, uid_query
from coffre.dicom.synthetic import InstanceSpec, make_instance
from coffre.errors import NotAuthorized
from coffre.index import audit as audit_index
from coffre.index.schema import audit_event
from coffre.model import Actor, Node, Permission, Role
from coffre.services import auth, grants
from coffre.services.ingest import ingest
from coffre.services.query import find
from coffre.services.retrieve import plan
from coffre.services.users import LoginFailed, create_user
from services.conftest import Territory

Event = tuple[str, str, str, str]  # action, outcome, actor name, object id


@dataclass
class Day:
    t: Territory
    expected: list[Event] = field(default_factory=list)

    def expect(self, action: str, outcome: str, actor: str, object_id: str = "") -> None:
        self.expected.append((action, outcome, actor, object_id))


def _node(t: Territory, slug: str, ae: str, permissions: frozenset[Permission]) -> Actor:
    facility = t.facilities[slug]
    node = Node(id=0, ae_title=ae, host="127.0.0.1", port=104, facility_id=facility.id, permissions=permissions)
    return Actor.for_node(node, facility, "127.0.0.1")


def _studies_query(patient_id: str) -> object:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.PatientID = patient_id
    identifier.StudyInstanceUID = ""
    return parse_identifier(identifier, Model.STUDY_ROOT)


def _run_day(t: Territory) -> Day:
    day = Day(t)
    ctx = t.ctx
    store = frozenset({Permission.STORE})
    pacs = frozenset({Permission.QUERY, Permission.RETRIEVE})
    users = {}
    for slug in ("site-a", "site-c"):
        for role, prefix in ((Role.CLINICIAN, "clin"), (Role.RADIOLOGIST, "radio")):
            name = f"{prefix}.{slug}"
            create_user(ctx, Actor.system("setup"), username=name, password="correct horse battery",
                        roles=frozenset({role}), facilities=[slug])
            users[name] = None
    with ctx.db.read() as tx:
        start = audit_index.head(tx)
    assert start is not None

    # morning: the modalities of every facility send 3 studies x 20 images
    studies: dict[str, list[str]] = {}
    for slug in ("site-a", "site-b", "site-c"):
        modality = _node(t, slug, f"CT_{slug[-1].upper()}", store)
        for n in range(3):
            spec = InstanceSpec(patient_id=f"{slug[-1].upper()}-DAY{n}")
            for i in range(20):
                data = make_instance(InstanceSpec(
                    patient_id=spec.patient_id, study_uid=spec.study_uid, series_uid=spec.series_uid,
                    instance_number=i + 1))
                result = ingest(ctx, modality, data, source="dimse")
                day.expect("store", "success", modality.name, result.sop_instance_uid)
            studies.setdefault(slug, []).append(spec.study_uid)
    # a modality resends one image: an idempotent duplicate, audited as a store
    again = make_instance(InstanceSpec(patient_id="A-DAY0"))
    first = ingest(ctx, _node(t, "site-a", "CT_A", store), again, source="dimse")
    ingest(ctx, _node(t, "site-a", "CT_A", store), again, source="dimse")
    day.expect("store", "success", "CT_A", first.sop_instance_uid)
    day.expect("store", "success", "CT_A", first.sop_instance_uid)

    # the PACS query their own patients and pull the studies
    for slug in ("site-a", "site-b", "site-c"):
        node = _node(t, slug, f"PACS_{slug[-1].upper()}", pacs)
        for n in range(3):
            list(find(ctx, node, _studies_query(f"{slug[-1].upper()}-DAY{n}"), source="dimse"))  # type: ignore[arg-type]
            day.expect("query", "success", node.name, "")
        for uid in studies[slug]:
            plan(ctx, node, uid_query(uid, None, None), operation="move", destination=node.name)
            day.expect("move", "success", node.name, uid)
    # a store-only modality may not query: refused before anything is read, not audited as a query
    with pytest.raises(NotAuthorized):
        list(find(ctx, _node(t, "site-a", "CT_A", store), _studies_query("A-DAY0"), source="dimse"))  # type: ignore[arg-type]

    # users sign in; one mistypes a password twice
    for name in users:
        with contextlib.suppress(LoginFailed):
            auth.login(ctx, name, "wrong password!", address="10.0.0.9")
        day.expect("login", "failure", name, name)
    tokens = {name: auth.login(ctx, name, "correct horse battery", address="10.0.0.9") for name in users}
    for name in users:
        day.expect("login", "success", name, name)
    actors = {name: auth.authenticate_bearer(ctx, tok.access_token, "10.0.0.9") for name, tok in tokens.items()}

    # site-a's clinician records a care relationship with site-c's target person, reads her study
    target = t.persons["target"]
    (target_study,) = [u for u, (_, key) in t.studies.items() if key == "target"]
    grant_id = grants.record_care(ctx, actors["clin.site-a"], target, days=30, reason="referral for a CT")
    day.expect("grant-care", "success", "clin.site-a", str(grant_id))
    plan(ctx, actors["clin.site-a"], uid_query(target_study, None, None), operation="wado-rs")
    day.expect("wado-rs", "success", "clin.site-a", target_study)
    # the patient opposes sharing (recorded at site-c): the same read now finds nothing
    opposition_id = grants.record_opposition(ctx, actors["clin.site-c"], target, reason="refuses sharing")
    day.expect("opposition", "success", "clin.site-c", str(opposition_id))
    assert plan(ctx, actors["clin.site-a"], uid_query(target_study, None, None), operation="wado-rs") == []
    day.expect("wado-rs", "no-match", "clin.site-a", "")
    # an emergency: site-a's radiologist breaks the glass and reads the study
    btg = grants.break_glass(ctx, actors["radio.site-a"], target, reason="polytrauma, unconscious")
    day.expect("break-glass", "alert", "radio.site-a", str(btg))
    assert plan(ctx, actors["radio.site-a"], uid_query(target_study, None, None), operation="wado-rs")
    day.expect("wado-rs", "success", "radio.site-a", target_study)
    # afternoon: the radiologists of each site re-read the day's studies of their site
    for name, slug in (("radio.site-a", "site-a"), ("radio.site-c", "site-c")):
        for uid in studies[slug]:
            for _ in range(5):
                plan(ctx, actors[name], uid_query(uid, None, None), operation="wado-rs")
                day.expect("wado-rs", "success", name, uid)
    for name, tok in tokens.items():
        auth.logout(ctx, tok.access_token, address="10.0.0.9")
        day.expect("logout", "success", name, "")
    day.start = start[0]  # type: ignore[attr-defined]
    return day


def _recorded(t: Territory, after_id: int) -> list[Event]:
    with t.ctx.db.read() as tx:
        rows = tx.execute(select(audit_event).where(audit_event.c.id > after_id).order_by(audit_event.c.id)).all()
    return [(r.action, r.outcome, r.actor_name, r.object_id) for r in rows]


def test_the_audit_of_a_clinical_day_is_exactly_the_days_actions(territory: Territory) -> None:
    day = _run_day(territory)
    recorded = _recorded(territory, day.start)  # type: ignore[attr-defined]
    assert len(day.expected) >= 240

    def key(e: Event) -> Event:
        # object ids of logins/logouts and no-match retrievals are the service's business
        action, outcome, actor, object_id = e
        return (action, outcome, actor, object_id if action in {"store", "move", "wado-rs", "grant-care",
                                                               "opposition", "break-glass"} else "")

    assert Counter(map(key, recorded)) == Counter(map(key, day.expected))
    # and in the order the day happened
    assert [key(e) for e in recorded] == [key(e) for e in day.expected]
    with territory.ctx.db.read() as tx:
        report = audit_index.verify(tx)
    assert report.ok, report.findings


@pytest.mark.parametrize("tamper", ["detail", "delete", "swap", "outcome"])
def test_tampering_with_any_event_of_the_day_is_detected(territory: Territory, tamper: str) -> None:
    day = _run_day(territory)
    with territory.ctx.db.read() as tx:
        ids = [r.id for r in tx.execute(select(audit_event.c.id).where(audit_event.c.id > day.start)  # type: ignore[attr-defined]
                                        .order_by(audit_event.c.id))]
    victim = ids[len(ids) // 2]
    with territory.ctx.db.write() as tx:
        if tamper == "detail":
            tx.execute(update(audit_event).where(audit_event.c.id == victim).values(detail='{"status":"stored"}'))
        elif tamper == "outcome":
            tx.execute(update(audit_event).where(audit_event.c.id == victim).values(outcome="success-ish"))
        elif tamper == "delete":
            tx.execute(delete(audit_event).where(audit_event.c.id == victim))
        else:
            a, b = (tx.execute(select(audit_event).where(audit_event.c.id == i)).one() for i in (victim, victim + 1))
            for row, other in ((a, b), (b, a)):
                values = {c: getattr(other, c) for c in other._fields if c != "id"}
                tx.execute(update(audit_event).where(audit_event.c.id == row.id).values(**values))
    with territory.ctx.db.read() as tx:
        report = audit_index.verify(tx)
    assert not report.ok
    assert report.first_bad_id in (victim, victim + 1)
