"""The leak matrix over HTTP: every DICOMweb read route x every role (and a facility API
client) of site-a x the grant state of a site-c person, on SQLite and PostgreSQL.

Grants are created through the REST API with real access tokens (care relationship by a
site-a clinician, opposition by a site-c clinician, break-the-glass by the caller
itself); an expired care relationship through the service with an earlier clock. The
target study must be readable exactly when the rules of docs/security.md say so, and
otherwise be indistinguishable from a study that does not exist: the same 404 as an
unknown UID for retrievals, no match (and no count) for searches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from coffre.dicom.synthetic import InstanceSpec, make_instance
from coffre.index.engine import Database
from coffre.model import Actor, Role
from coffre.services import facilities, grants
from coffre.services.auth import issue_token
from coffre.services.ingest import ingest
from coffre.services.users import create_user
from coffre.web.http import create_app
from web.conftest import WebArchive, build_web_archive

B = "/dicomweb"
STATES = ("none", "care", "expired-care", "opposition", "break-glass", "break-glass-opposed")
READERS = frozenset({Role.RADIOLOGIST, Role.CLINICIAN, Role.TECHNOLOGIST})
GLASS = frozenset({Role.RADIOLOGIST, Role.CLINICIAN})


@dataclasses.dataclass
class Setup:
    web: WebArchive
    client: TestClient
    tokens: dict[str, str]
    study: str
    series: str
    instance: str
    person: int


@pytest.fixture
def setup(database: Database, tmp_path: Path) -> Iterator[Setup]:
    web = build_web_archive(database, tmp_path)
    ctx = web.ctx
    op = Actor.system("tests")
    site_c = facilities.add_facility(ctx, op, slug="site-c", name="Site C", issuer="SITE-C")
    spec = InstanceSpec(patient_id="C-3", patient_name="LEROY^SOPHIE")
    result = ingest(ctx, Actor.system("tests", facility=site_c), make_instance(spec), source="test")
    web.store(InstanceSpec(patient_id="A-1"))  # site-a's own study
    tokens: dict[str, str] = {}
    for role in Role:
        user = create_user(ctx, op, username=f"{role.value}-a", password=None, roles=frozenset({role}),
                           facilities=["site-a"])
        tokens[role.value] = issue_token(ctx, user).access_token
    carer = create_user(ctx, op, username="carer-c", password=None, roles=frozenset({Role.CLINICIAN}),
                        facilities=["site-c"])
    tokens["carer-c"] = issue_token(ctx, carer).access_token
    tokens["client"] = web.token_a
    person = grants.resolve_person(ctx, op, grants.PersonRef(facility="site-c", patient_id="C-3"))
    with TestClient(create_app(ctx), raise_server_exceptions=False) as client:
        yield Setup(web, client, tokens, result.study_instance_uid, result.series_instance_uid,
                    result.sop_instance_uid, person)


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _apply(s: Setup, state: str, caller: str) -> None:
    target = {"facility": "site-c", "patient_id": "C-3"}
    if state in ("care", "opposition"):
        r = s.client.post("/api/grants/care", json={**target, "days": 10, "reason": "follow-up"},
                          headers=_auth(s.tokens["clinician"]))
        assert r.status_code == 201, r.text
    if state == "expired-care":
        ctx = s.web.ctx
        past = ctx.clock() - timedelta(days=20)
        clinician = Actor.for_user("clinician-a", "clinician-a", frozenset({Role.CLINICIAN}),
                                   (s.web.actor_a.facility,), "127.0.0.1")  # type: ignore[arg-type]
        grants.record_care(dataclasses.replace(ctx, clock=lambda: past), clinician, s.person, days=10,
                           reason="old follow-up")
    if state in ("opposition", "break-glass-opposed"):
        r = s.client.post("/api/oppositions", json={"patient_id": "C-3", "reason": "refuses sharing"},
                          headers=_auth(s.tokens["carer-c"]))
        assert r.status_code == 201, r.text
    if state.startswith("break-glass"):
        r = s.client.post("/api/grants/break-glass", json={**target, "reason": "unconscious in ER"},
                          headers=_auth(s.tokens[caller]))
        assert r.status_code == (201 if caller in {g.value for g in GLASS} else 403), r.text


def _reset(s: Setup) -> None:
    from coffre.index.schema import access_grant, opposition

    with s.web.ctx.db.write() as tx:
        tx.execute(access_grant.delete())
        tx.execute(opposition.delete())


def _retrieval_urls(s: Setup, study: str, series: str, instance: str) -> list[str]:
    st, se, inst = f"{B}/studies/{study}", f"/series/{series}", f"/instances/{instance}"
    return [
        st, st + se, st + se + inst,
        st + "/metadata", st + se + "/metadata", st + se + inst + "/metadata",
        st + se + inst + "/frames/1", st + se + inst + "/bulkdata/7FE00010",
        st + "/rendered", st + se + "/rendered", st + se + inst + "/rendered", st + se + inst + "/frames/1/rendered",
        st + "/thumbnail", st + se + "/thumbnail", st + se + inst + "/thumbnail",
        st + se + inst + "/frames/1/thumbnail",
        f"{B}/wado?requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={instance}"
        "&contentType=application%2Fdicom",
    ]


def _search_urls(s: Setup) -> list[tuple[str, str]]:
    """(url, what identifies the target in the answer)."""
    return [
        (f"{B}/studies?includefield=00100020", s.study),
        (f"{B}/studies?PatientID=C-3&IssuerOfPatientID=SITE-C", s.study),
        (f"{B}/series", s.series),
        (f"{B}/instances", s.instance),
        (f"{B}/studies/{s.study}/series", s.series),
        (f"{B}/studies/{s.study}/instances", s.instance),
        (f"{B}/studies/{s.study}/series/{s.series}/instances", s.instance),
        (f"{B}/series/{s.series}/instances", s.instance),
        (f"{B}/patients?includefield=00201200", "LEROY"),
    ]


def _readable(s: Setup, token: str, url: str) -> int:
    return s.client.get(url, headers={**_auth(token), "Accept": "*/*"}).status_code


def _expected(caller: str, state: str) -> bool:
    readers = {r.value for r in READERS} | {"client"}
    if caller not in readers:
        return False
    return state == "care" or (state.startswith("break-glass") and caller in {g.value for g in GLASS})


CALLERS = [r.value for r in Role] + ["client"]


@pytest.mark.parametrize("state", STATES)
def test_http_leak_matrix(setup: Setup, state: str) -> None:
    s = setup
    unknown = _retrieval_urls(s, "1.2.3.4.5", "1.2.3.4.6", "1.2.3.4.7")
    for caller in CALLERS:
        _apply(s, state, caller)
        token = s.tokens[caller]
        allowed = _expected(caller, state)
        absent = {_readable(s, token, url) for url in unknown}
        for url in _retrieval_urls(s, s.study, s.series, s.instance):
            status = _readable(s, token, url)
            if allowed:
                assert status == 200, (caller, state, url, status)
            else:
                assert status in absent and status in (403, 404), (caller, state, url, status, absent)
        for url, marker in _search_urls(s):
            r = s.client.get(url, headers=_auth(token))
            if caller not in {x.value for x in READERS} | {"client"}:
                assert r.status_code == 403, (caller, url, r.status_code)
                continue
            assert r.status_code in (200, 204), (caller, url, r.status_code, r.text)
            assert (marker in r.text) is allowed, (caller, state, url)
        _reset(s)


def test_own_facility_study_is_readable_by_every_reading_role(setup: Setup) -> None:
    s = setup
    own = s.client.get(f"{B}/studies?PatientID=A-1", headers=_auth(s.tokens["client"])).json()
    study = own[0]["0020000D"]["Value"][0]
    for caller in CALLERS:
        status = s.client.get(f"{B}/studies/{study}/metadata", headers=_auth(s.tokens[caller])).status_code
        assert status == (200 if caller in {r.value for r in READERS} | {"client"} else 403), caller
