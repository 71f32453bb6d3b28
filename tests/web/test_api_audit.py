"""REST ``/api/audit``: search, the patient access report, verification — with real
access tokens of built-in users (signed by Coffre), on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from fastapi.testclient import TestClient
from sqlalchemy import select, update

from coffre.dicom.query import uid_query
from coffre.dicom.synthetic import InstanceSpec
from coffre.index.schema import audit_event, patient
from coffre.model import Actor, Role
from coffre.services import audit, auth, grants, users
from coffre.services.retrieve import plan

if TYPE_CHECKING:
    from tests.web.conftest import WebArchive

OP = Actor.system("tests")


def token_for(web: WebArchive, username: str, role: Role, facility: str) -> dict[str, str]:
    users.create_user(web.ctx, OP, username=username, password=None, roles=frozenset({role}),
                      facilities=[facility], display_name=f"{username.title()} Display")
    return {"Authorization": f"Bearer {auth.create_access_token(web.ctx, OP, username).access_token}"}


def person_of(web: WebArchive, patient_id: str) -> int:
    with web.ctx.db.read() as tx:
        return int(tx.execute(select(patient.c.person_id).where(patient.c.patient_id == patient_id)).scalar_one())


def test_events_for_an_auditor_are_scoped_and_paged(web: WebArchive, client: TestClient) -> None:
    web.store(InstanceSpec(patient_id="PA-1"), site="a")
    web.store(InstanceSpec(patient_id="PB-1"), site="b")
    auditor = token_for(web, "auditor-a", Role.AUDITOR, "site-a")
    r = client.get("/api/audit/events", params={"limit": 1000}, headers=auditor)
    assert r.status_code == 200, r.text
    events = r.json()["events"]
    with web.ctx.db.read() as tx:
        site_a = {e.id for e in audit.audit_index.search(tx, facility_ids=[web.actor_a.facility_id], limit=1000)}
    assert events and {e["id"] for e in events} <= site_a
    assert {e["facility_id"] for e in events} == {web.actor_a.facility_id}
    assert all(datetime.fromisoformat(e["at"]).tzinfo for e in events)
    stores = client.get("/api/audit/events", params={"action": "store"}, headers=auditor).json()["events"]
    assert [e["action"] for e in stores] == ["store"] and stores[0]["detail"]["status"] == "stored"
    # paging: limit 2 and the cursor, until next_cursor is null
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/api/audit/events", params=params, headers=auditor).json()
        seen += [e["id"] for e in page["events"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(seen) and set(seen) >= {e["id"] for e in events}
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert client.get("/api/audit/events", params={"since": future}, headers=auditor).json()["events"] == []
    assert client.get("/api/audit/events", params={"since": "2020-01-01T00:00:00"}, headers=auditor).status_code == 200


def test_events_are_refused_to_others(web: WebArchive, client: TestClient) -> None:
    auditor = token_for(web, "auditor-a", Role.AUDITOR, "site-a")
    assert client.get("/api/audit/events").status_code == 401
    assert client.get("/api/audit/events", headers=web.headers()).status_code == 403  # an API client
    clinician = token_for(web, "clin-a", Role.CLINICIAN, "site-a")
    assert client.get("/api/audit/events", headers=clinician).status_code == 403
    assert client.get("/api/audit/events", params={"facility": "site-b"}, headers=auditor).status_code == 403
    assert client.get("/api/audit/events", params={"facility": "nowhere"}, headers=auditor).status_code == 404
    for bad in ({"limit": 1001}, {"limit": 0}, {"cursor": -1}, {"since": "yesterday"}, {"person": "x"}):
        r = client.get("/api/audit/events", params=bad, headers=auditor)
        assert r.status_code == 400, (bad, r.text)


def test_person_report_names_staff_for_auditors_only(web: WebArchive, client: TestClient) -> None:
    _, stored = web.store(InstanceSpec(patient_id="PA-7", patient_name="LEGRAND^ALICE"), site="a")
    person = person_of(web, "PA-7")
    users.create_user(web.ctx, OP, username="clin-b", password=None, roles=frozenset({Role.CLINICIAN}),
                      facilities=["site-b"], display_name="Dr B")
    clinician_b = auth.verify(web.ctx, auth.create_access_token(web.ctx, OP, "clin-b").access_token, "10.9.8.7").actor
    grants.break_glass(web.ctx, clinician_b, person, reason="emergency")
    plan(web.ctx, clinician_b, uid_query(stored.study_instance_uid, None, None), operation="wado-rs")

    auditor = token_for(web, "auditor-a", Role.AUDITOR, "site-a")
    r = client.get(f"/api/audit/persons/{person}/report", headers=auditor)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["person_id"] == person and doc["staff_names"] is True
    [access] = [e for e in doc["entries"] if e["action"] == "wado-rs"]
    assert (access["facility"], access["roles"], access["actor"], access["purpose"], access["study_uid"]) == (
        "site-b", ["clinician"], "clin-b", "break-glass", stored.study_instance_uid)
    assert "LEGRAND" not in r.text and "PA-7" not in r.text  # identifiers of the archive only

    admin = token_for(web, "admin-a", Role.FACILITY_ADMIN, "site-a")
    doc = client.get(f"/api/audit/persons/{person}/report", headers=admin).json()
    assert doc["staff_names"] is False
    assert {e["actor"] for e in doc["entries"] if e["actor_kind"] == "user"} == {"staff"}
    assert "clin-b" not in str(doc)

    auditor_b = token_for(web, "auditor-b", Role.AUDITOR, "site-b")
    assert client.get(f"/api/audit/persons/{person}/report", headers=auditor_b).status_code == 404
    assert client.get(f"/api/audit/persons/{person}/report", headers=web.headers()).status_code == 403


def test_verify_reports_tampering(web: WebArchive, client: TestClient) -> None:
    web.store(InstanceSpec(patient_id="PA-9"), site="a")
    auditor = token_for(web, "auditor-a", Role.AUDITOR, "site-a")
    doc = client.get("/api/audit/verify", headers=auditor).json()
    assert doc["ok"] is True and doc["events"] >= 3 and doc["findings"] == []
    anchor = f"{doc['head']['id']}:{doc['head']['hash']}"
    assert client.get("/api/audit/verify", params={"expect_head": anchor}, headers=auditor).json()["ok"]
    with web.ctx.db.write() as tx:
        tx.execute(update(audit_event).where(audit_event.c.action == "store").values(detail="{}"))
    doc = client.get("/api/audit/verify", params={"expect_head": anchor}, headers=auditor).json()
    assert doc["ok"] is False and {f["kind"] for f in doc["findings"]} == {"modified"}
    assert client.get("/api/audit/verify", params={"expect_head": "nope"}, headers=auditor).status_code == 400
    assert client.get("/api/audit/verify", headers=web.headers()).status_code == 403
