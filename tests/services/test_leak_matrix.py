"""The leak matrix at the service level, on SQLite and PostgreSQL.

Every role and machine actor x a caller from each facility x the grant state of the
target person (none, care relationship, expired care relationship, opposition with a
care relationship, break-the-glass, break-the-glass against an opposition) → exactly the
expected studies through every read use case: C-FIND/QIDO (``services.query.find``) at
STUDY and IMAGE level, PATIENT-level counts, retrieve planning (C-MOVE, C-GET, WADO-RS)
and WADO-RS metadata. Denied data must be indistinguishable from absent data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
from datetime import timedelta

import pytest

from coffre.dicom.attributes import Level
from coffre.dicom.query import Model, Query, parse_identifier, uid_query
from coffre.errors import NotAuthorized, NotFound
from coffre.model import Actor, Facility, Node, Permission, Role
from coffre.services import grants, wado
from coffre.services.query import find
from coffre.services.retrieve import plan
from coffre.settings import TerritorySettings
from services.conftest import Territory

STATES = ("none", "care", "expired-care", "opposition", "break-glass", "break-glass-opposed")
READERS = frozenset({Role.RADIOLOGIST, Role.CLINICIAN, Role.TECHNOLOGIST})
STUDY_UID = 0x0020000D
PATIENT_ID = 0x00100020
STUDIES_OF_PATIENT = 0x00201200


def _actors(facility: Facility) -> list[tuple[str, Actor]]:
    out = [(f"user:{role.value}", Actor.for_user(f"{role.value}@{facility.slug}", role.value,
                                                  frozenset({role}), (facility,), "127.0.0.1"))
           for role in Role]
    node = Node(id=0, ae_title=f"PACS_{facility.id}", host="127.0.0.1", port=104,
                           facility_id=facility.id,
                           permissions=frozenset({Permission.QUERY, Permission.RETRIEVE}))
    out.append(("node", Actor.for_node(node, facility, "127.0.0.1")))
    out.append(("client", Actor.for_client("token:t", facility, frozenset({Permission.QUERY, Permission.RETRIEVE}),
                                           "127.0.0.1")))
    out.append(("store-only-node", Actor.for_node(dataclasses.replace(node, permissions=frozenset({Permission.STORE})),
                                                  facility, "127.0.0.1")))
    return out


def _apply_state(t: Territory, state: str, caller: Actor) -> None:
    ctx = t.ctx
    target = t.persons["target"]
    clinician_here = Actor.for_user("care@x", "care", frozenset({Role.CLINICIAN}), (caller.facility,), "127.0.0.1")  # type: ignore[arg-type]
    clinician_c = Actor.for_user("care@c", "care", frozenset({Role.CLINICIAN}), (t.facilities["site-c"],), "127.0.0.1")
    if state in ("care", "opposition"):
        grants.record_care(ctx, clinician_here, target, days=30, reason="follow-up")
    if state == "expired-care":
        past = ctx.clock() - timedelta(days=40)
        grants.record_care(dataclasses.replace(ctx, clock=lambda: past), clinician_here, target, days=30,
                           reason="old follow-up")
    if state in ("opposition", "break-glass-opposed"):
        grants.record_opposition(ctx, clinician_c, target, reason="patient refuses sharing")
    if state.startswith("break-glass"):
        # a caller not allowed to break the glass stays in state "none"
        with contextlib.suppress(NotAuthorized):
            grants.break_glass(ctx, caller, target, reason="unconscious patient in ER")


def _expected(t: Territory, caller: Actor, label: str, state: str) -> set[str]:
    reads = label in ("node", "client") or any(r in READERS for r in caller.roles)
    if not reads:
        return set()
    own = {uid for uid, (slug, _) in t.studies.items() if slug == caller.facility.slug}  # type: ignore[union-attr]
    sees_target = state == "care" or (
        state.startswith("break-glass") and caller.roles & {Role.RADIOLOGIST, Role.CLINICIAN})
    if sees_target:
        own |= {uid for uid, (_, key) in t.studies.items() if key == "target"}
    return own


def _study_query() -> Query:
    from pydicom.dataset import Dataset

    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = ""
    identifier.PatientID = ""
    identifier.NumberOfStudyRelatedInstances = ""
    return parse_identifier(identifier, Model.STUDY_ROOT)


def _seen(t: Territory, actor: Actor) -> dict[str, set[str]]:
    ctx = t.ctx
    out: dict[str, set[str]] = {}
    try:
        out["find-study"] = {str(r[STUDY_UID]) for r in find(ctx, actor, _study_query(), source="t")}
    except NotAuthorized:
        out["find-study"] = set()
    image = Query(level=Level.IMAGE, model=Model.STUDY_ROOT, filters=(), return_tags=(STUDY_UID,))
    try:
        out["find-image"] = {str(r[STUDY_UID]) for r in find(ctx, actor, image, source="t")}
    except NotAuthorized:
        out["find-image"] = set()
    retrieved: set[str] = set()
    metadata: set[str] = set()
    for uid in t.studies:
        try:
            if plan(ctx, actor, uid_query(uid, None, None), operation="t"):
                retrieved.add(uid)
        except NotAuthorized:
            pass
        try:
            wado.metadata(ctx, actor, uid, None, None, base_url="http://x")
            metadata.add(uid)
        except (NotFound, NotAuthorized):
            pass
    out["retrieve"] = retrieved
    out["metadata"] = metadata
    return out


CASES = [(slug, state) for slug, state in itertools.product(("site-a", "site-c"), STATES)]


@pytest.mark.parametrize(("caller_slug", "state"), CASES, ids=[f"{s}-{st}" for s, st in CASES])
def test_leak_matrix(territory: Territory, caller_slug: str, state: str) -> None:
    t = territory
    facility = t.facilities[caller_slug]
    for label, actor in _actors(facility):
        _apply_state(t, state, actor)
        expected = _expected(t, actor, label, state)
        for operation, seen in _seen(t, actor).items():
            assert seen == expected, f"{label} of {caller_slug}, {state}: {operation}"
        # reset the grants between actors: a fresh state per actor
        _reset(t)


def _reset(t: Territory) -> None:
    from coffre.index.schema import access_grant, opposition

    with t.ctx.db.write() as tx:
        tx.execute(access_grant.delete())
        tx.execute(opposition.delete())


def test_shared_policy_sees_every_person_but_the_opposed(territory: Territory) -> None:
    t = territory
    ctx = dataclasses.replace(t.ctx, settings=dataclasses.replace(
        t.ctx.settings, territory=TerritorySettings(policy="shared")))
    t.ctx = ctx
    radiologist = Actor.for_user("r@a", "r", frozenset({Role.RADIOLOGIST}), (t.facilities["site-a"],), "127.0.0.1")
    everything = set(t.studies)
    assert _seen(t, radiologist)["find-study"] == everything
    clinician_c = Actor.for_user("c@c", "c", frozenset({Role.CLINICIAN}), (t.facilities["site-c"],), "127.0.0.1")
    grants.record_opposition(ctx, clinician_c, t.persons["target"], reason="refuses")
    target = {uid for uid, (_, key) in t.studies.items() if key == "target"}
    assert all(seen == everything - target for seen in _seen(t, radiologist).values())
    grants.break_glass(ctx, radiologist, t.persons["target"], reason="emergency")
    assert all(seen == everything for seen in _seen(t, radiologist).values())


def test_patient_level_counts_never_include_unseen_studies(territory: Territory) -> None:
    """NumberOfPatientRelatedStudies of a visible patient counts only its own visible studies."""
    from pydicom.dataset import Dataset

    t = territory
    caller = Actor.for_user("r@a", "r", frozenset({Role.RADIOLOGIST}), (t.facilities["site-a"],), "127.0.0.1")
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "PATIENT"
    identifier.PatientID = ""
    identifier.NumberOfPatientRelatedStudies = ""
    rows = list(find(t.ctx, caller, parse_identifier(identifier, Model.PATIENT_ROOT), source="t"))
    assert [(r[PATIENT_ID], r[STUDIES_OF_PATIENT]) for r in rows] == [("A-1", 1)]



def test_share_link_recipient_sees_exactly_its_studies(territory: Territory) -> None:
    t = territory
    (target,) = [uid for uid, (_, key) in t.studies.items() if key == "target"]
    with t.ctx.db.read() as tx:
        from coffre.index.grants import study_pks

        (pk,) = study_pks(tx, target, None)
    recipient = Actor.for_recipient(1, frozenset({pk}), "127.0.0.1")
    assert all(seen == {target} for seen in _seen(t, recipient).values())
    nobody = Actor.for_recipient(2, frozenset(), "127.0.0.1")
    assert all(seen == set() for seen in _seen(t, nobody).values())
