"""REST API of persons and the reconciliation queue (``/api/persons``, ``/api/reconciliation``).

Facility API tokens authenticate for real (401/403 below). Identity managers are users:
until the user login of the auth layer is wired into these fixtures, the request's actor
is set through FastAPI's dependency override of ``get_actor`` — the one place that turns
credentials into an ``Actor`` — so everything after authentication runs as in production.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from coffre.dicom.ins import INS_NIR_TEST
from coffre.dicom.synthetic import InstanceSpec, ins_identifier
from coffre.model import Actor, Role
from coffre.web.deps import get_actor
from coffre.web.http import create_app
from web.conftest import WebArchive

CLAIRE_INS = "268047512345664"


class Api:
    def __init__(self, web: WebArchive, app: FastAPI, client: TestClient) -> None:
        self.web, self.app, self.http = web, app, client
        fac_a, fac_b = web.actor_a.facility, web.actor_b.facility
        assert fac_a is not None and fac_b is not None
        self.manager_a = Actor.for_user("vigil-a", "vigil-a", frozenset({Role.IDENTITY_MANAGER}), (fac_a,), "t")
        self.manager_b = Actor.for_user("vigil-b", "vigil-b", frozenset({Role.IDENTITY_MANAGER}), (fac_b,), "t")

    def act_as(self, actor: Actor | None) -> None:
        if actor is None:
            self.app.dependency_overrides.pop(get_actor, None)
        else:
            self.app.dependency_overrides[get_actor] = lambda: actor

    def store(self, site: str, patient_id: str, name: str, birth: str = "19680412", sex: str = "F",
              ins: str = "") -> None:
        others = (ins_identifier(ins, INS_NIR_TEST),) if ins else ()
        self.web.store(InstanceSpec(patient_id=patient_id, patient_name=name, birth_date=birth, sex=sex,
                                    rows=8, columns=8, other_patient_ids=others), site=site)

    def person_of(self, facility: str, patient_id: str) -> int:
        answer = self.http.get("/api/persons", params={"facility": facility, "patient_id": patient_id})
        assert answer.status_code == 200, answer.text
        [found] = answer.json()
        return int(found["id"])


@pytest.fixture
def api(web: WebArchive) -> Iterator[Api]:
    app = create_app(web.ctx)
    with TestClient(app, raise_server_exceptions=False) as client:
        result = Api(web, app, client)
        result.act_as(result.manager_a)
        yield result


def _ok(response, status: int = 200):  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    return response.json()


def test_credentials_are_required_and_tokens_may_not_manage_identities(api: Api) -> None:
    api.act_as(None)
    assert api.http.get("/api/persons", params={"name": "A"}).status_code == 401
    headers = api.web.headers()
    assert api.http.get("/api/persons", params={"name": "A"}, headers=headers).status_code == 403
    assert api.http.get("/api/reconciliation", headers=headers).status_code == 403
    answer = api.http.post("/api/persons/1/merge", json={"person": 2, "reason": "r"}, headers=headers)
    assert answer.status_code == 403


def test_search_show_and_history(api: Api) -> None:
    api.store("a", "CN100234", "MARTIN^CLAIRE", ins=CLAIRE_INS)
    api.store("b", "CS-77812", "Martin^Claire", ins=CLAIRE_INS)
    found = _ok(api.http.get("/api/persons", params={"name": "martin", "birth_date": "19680412"}))
    assert len(found) == 1
    person = found[0]
    assert (person["ins"], person["ins_oid"]) == (CLAIRE_INS, INS_NIR_TEST)
    assert sorted((i["facility"], i["patient_id"]) for i in person["identities"]) == [
        ("site-a", "CN100234"), ("site-b", "CS-77812")]
    assert {i["name"] for i in person["identities"]} == {"MARTIN^CLAIRE", "Martin^Claire"}
    assert _ok(api.http.get("/api/persons", params={"ins": CLAIRE_INS}))[0]["id"] == person["id"]
    assert _ok(api.http.get(f"/api/persons/{person['id']}"))["identities"] == person["identities"]
    history = _ok(api.http.get(f"/api/persons/{person['id']}/history"))
    assert [e["action"] for e in history] == ["create", "link"]
    assert history[1]["evidence"]["rule"] == "ins"
    assert len(_ok(api.http.get("/api/persons"))) == 1
    assert len(_ok(api.http.get("/api/persons", params={"facility": "site-b"}))) == 1


def test_link_unlink_merge_split_round_trip(api: Api) -> None:
    api.store("a", "A1", "DURAND^PAUL", "19700101", "M")
    api.store("a", "A2", "DURAND^PAUL", "19700101", "M")
    p1, p2 = api.person_of("site-a", "A1"), api.person_of("site-a", "A2")
    merged = _ok(api.http.post(f"/api/persons/{p1}/merge", json={"person": p2, "reason": "duplicate record"}))
    assert sorted(i["patient_id"] for i in merged["identities"]) == ["A1", "A2"]
    assert _ok(api.http.get(f"/api/persons/{p2}"))["merged_into"] == p1
    split = _ok(api.http.post(f"/api/persons/{p2}/split", json={"reason": "not the same"}))
    assert split["from_person"] == p1 and [i["patient_id"] for i in split["person"]["identities"]] == ["A2"]
    linked = _ok(api.http.post(f"/api/persons/{p1}/link",
                               json={"identity": {"facility": "site-a", "patient_id": "A2"}, "reason": "same"}))
    assert linked["id"] == p1 and len(linked["identities"]) == 2
    a2 = next(i["id"] for i in linked["identities"] if i["patient_id"] == "A2")
    alone = _ok(api.http.post(f"/api/persons/{p1}/unlink", json={"identity": {"id": a2}, "reason": "undo"}))
    assert alone["id"] not in (p1, p2) and [i["patient_id"] for i in alone["identities"]] == ["A2"]
    actions = [e["action"] for e in _ok(api.http.get(f"/api/persons/{alone['id']}/history"))]
    assert actions[-1] == "unlink"


def test_reconciliation_queue(api: Api) -> None:
    api.store("a", "A1", "BERNARD^LUC", "19820305", "M")
    api.store("b", "B1", "BERNARD^LUC", "19820305", "M")
    assert _ok(api.http.get("/api/reconciliation")) == []  # the queued identity is site-b's
    api.act_as(api.manager_b)
    [candidate] = _ok(api.http.get("/api/reconciliation"))
    assert candidate["identity"]["patient_id"] == "B1" and candidate["score"] == 100
    assert candidate["person"]["identities"][0]["patient_id"] == "A1"
    assert candidate["evidence"]["rule"] == "demographics"
    answer = api.http.post(f"/api/reconciliation/{candidate['id']}", json={"decision": "link", "reason": "checked"})
    decided = _ok(answer)
    assert decided["status"] == "linked" and decided["decided_by"] == "user:vigil-b"
    assert sorted(i["patient_id"] for i in decided["person"]["identities"]) == ["A1", "B1"]
    assert _ok(api.http.get("/api/reconciliation")) == []
    assert len(_ok(api.http.get("/api/reconciliation", params={"status": "linked"}))) == 1
    again = api.http.post(f"/api/reconciliation/{candidate['id']}", json={"decision": "reject", "reason": "r"})
    assert again.status_code == 409


def test_another_facilitys_identity_is_forbidden(api: Api) -> None:
    api.store("a", "A1", "X^X")
    api.store("b", "B1", "Y^Y")
    pa, pb = api.person_of("site-a", "A1"), api.person_of("site-b", "B1")
    answer = api.http.post(f"/api/persons/{pa}/link",
                           json={"identity": {"facility": "site-b", "patient_id": "B1"}, "reason": "r"})
    assert answer.status_code == 403
    assert api.http.post(f"/api/persons/{pa}/merge", json={"person": pb, "reason": "r"}).status_code == 403
    assert api.person_of("site-b", "B1") == pb


@pytest.mark.parametrize(
    ("method", "url", "body", "status"),
    [
        ("get", "/api/persons/999999", None, 404),
        ("get", "/api/persons/999999/history", None, 404),
        ("get", f"/api/persons/{2**70}", None, 400),
        ("get", "/api/persons/abc", None, 400),
        ("get", "/api/persons/0", None, 400),
        ("get", "/api/persons?ins=268047512345600", None, 400),
        ("get", "/api/persons?ins=" + "1" * 65, None, 400),
        ("get", "/api/persons?name=" + "X" * 201, None, 400),
        ("get", "/api/persons?birth_date=1968-4-1", None, 400),
        ("get", "/api/persons?patient_id=A1", None, 400),
        ("get", "/api/persons?facility=site-a&name=X", None, 400),
        ("get", "/api/persons?facility=nowhere&patient_id=A1", None, 404),
        ("get", "/api/persons?limit=0", None, 400),
        ("get", "/api/persons?limit=100000", None, 400),
        ("get", "/api/reconciliation?status=maybe", None, 400),
        ("post", "/api/persons/{p}/merge", {"person": 999999, "reason": "r"}, 404),
        ("post", "/api/persons/{p}/merge", {"person": 2**70, "reason": "r"}, 400),
        ("post", "/api/persons/{p}/merge", {"person": "{p}", "reason": "r"}, 409),
        ("post", "/api/persons/{p}/merge", {"person": 1}, 400),
        ("post", "/api/persons/{p}/merge", {"person": 1, "reason": ""}, 400),
        ("post", "/api/persons/{p}/merge", {"person": 1, "reason": "x" * 501}, 400),
        ("post", "/api/persons/{p}/split", {"reason": "not merged"}, 409),
        ("post", "/api/persons/999999/split", {"reason": "r"}, 404),
        ("post", "/api/persons/{p}/link", {"identity": {"id": 999999}, "reason": "r"}, 404),
        ("post", "/api/persons/{p}/link", {"identity": {}, "reason": "r"}, 400),
        ("post", "/api/persons/{p}/link", {"identity": {"id": 1, "facility": "site-a", "patient_id": "A1"},
                                           "reason": "r"}, 400),
        ("post", "/api/persons/{p}/link", {"identity": {"facility": "site-a", "patient_id": "P" * 65},
                                           "reason": "r"}, 400),
        ("post", "/api/persons/{p}/link", {"identity": {"facility": "site-a", "patient_id": "NOPE"},
                                           "reason": "r"}, 404),
        ("post", "/api/persons/{p}/link", {"identity": {"facility": "site-a", "patient_id": "A1"},
                                           "reason": "r"}, 409),
        ("post", "/api/persons/999999/link", {"identity": {"facility": "site-a", "patient_id": "A1"},
                                              "reason": "r"}, 404),
        ("post", "/api/persons/{p}/unlink", {"identity": {"facility": "site-a", "patient_id": "A1"},
                                             "reason": "r"}, 409),
        ("post", "/api/persons/{p}/unlink", {"identity": {"facility": "site-a", "patient_id": "A1"}}, 400),
        ("post", "/api/reconciliation/999999", {"decision": "link", "reason": "r"}, 404),
        ("post", "/api/reconciliation/1", {"decision": "merge", "reason": "r"}, 400),
        ("post", f"/api/reconciliation/{2**64}", {"decision": "link", "reason": "r"}, 400),
    ],
)
def test_hostile_input_is_a_clear_4xx(api: Api, method: str, url: str, body: dict | None, status: int) -> None:
    api.store("a", "A1", "X^X")
    p = api.person_of("site-a", "A1")
    url = url.replace("{p}", str(p))
    if body is not None:
        body = {k: (p if v == "{p}" else v) for k, v in body.items()}
    answer = api.http.request(method.upper(), url, json=body)
    assert answer.status_code == status, answer.text
    assert set(answer.json()) == {"error", "reason"}


@pytest.mark.parametrize("raw", [b"{", b"[]", b"null", b'{"reason": 5}', b"\"\\ud800\"", b"\xff\xfe"])
def test_malformed_bodies_are_400(api: Api, raw: bytes) -> None:
    api.store("a", "A1", "X^X")
    p = api.person_of("site-a", "A1")
    answer = api.http.post(f"/api/persons/{p}/split", content=raw, headers={"Content-Type": "application/json"})
    assert answer.status_code == 400, answer.text


def test_oversized_body_is_413(api: Api) -> None:
    answer = api.http.post("/api/persons/1/split", content=b'{"reason": "' + b"x" * 10_000 + b'"}',
                           headers={"Content-Type": "application/json"})
    assert answer.status_code == 413
    chunks = iter([b'{"reason": "', b"x" * 9000, b'"}'])
    streamed = api.http.post("/api/persons/1/split", content=chunks, headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413


def test_openapi_documents_the_routes(api: Api) -> None:
    paths = _ok(api.http.get("/openapi.json"))["paths"]
    for path in ("/api/persons", "/api/persons/{person_id}", "/api/persons/{person_id}/history",
                 "/api/persons/{person_id}/link", "/api/persons/{person_id}/unlink",
                 "/api/persons/{person_id}/merge", "/api/persons/{person_id}/split", "/api/reconciliation",
                 "/api/reconciliation/{candidate_id}"):
        assert path in paths
    assert "requestBody" in paths["/api/persons/{person_id}/merge"]["post"]
