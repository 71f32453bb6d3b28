"""The territory portal in-process (httpx through Starlette's TestClient), on SQLite and
PostgreSQL: sign-in and lockout, sessions, CSRF refusals, security headers, escaping of
DICOM values, search scope, dialogs, thumbnails, languages, and OpenID Connect sign-in
against a real (loopback) provider with PKCE.

Territory: ``nord`` and ``sud`` know Alice DURAND (one person: both send her INS), ``est``
knows Bob MOREAU only; ``nord`` also has a patient whose name and study description are
HTML/JS injections, stored through the ingest service.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import secrets
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient

from coffre.app import Context
from coffre.dicom.synthetic import InstanceSpec, ins_identifier, make_instance
from coffre.index import audit as audit_index
from coffre.index import grants as grant_index
from coffre.index.engine import Database
from coffre.model import Actor, Facility, Role
from coffre.services import facilities, users
from coffre.services.ingest import ingest
from coffre.settings import SecuritySettings, Settings
from coffre.storage.filesystem import FileSystemBlobStore
from coffre.web.http import create_app
from coffre.web.portal.i18n import MESSAGES

OPERATOR = Actor.system("tests")
PASSWORD = "portal password 1"
ORIGIN = "http://127.0.0.1"
INS = "268047512345664"
EVIL_NAME = "<script>alert(1)</script>^O'Neil \"Bob\""
EVIL_DESCRIPTION = "<img src=x onerror=alert(2)>"
PORTAL_SRC = Path(__file__).parents[2] / "src" / "coffre" / "web" / "portal"


@dataclass
class Territory:
    ctx: Context
    facilities: dict[str, Facility]
    #: study UIDs by label
    studies: dict[str, str] = field(default_factory=dict)

    def events(self, action: str) -> list[audit_index.AuditRow]:
        with self.ctx.db.read() as tx:
            return audit_index.list_events(tx, action=action)

    def person_of(self, facility: str, patient_id: str) -> int:
        from coffre.index.persons import person_of_identity

        with self.ctx.db.read() as tx:
            found = person_of_identity(tx, self.facilities[facility].id, patient_id)
        assert found is not None
        return found


def _store(t: Territory, facility: str, label: str, **spec: Any) -> None:
    actor = Actor.system("tests", facility=t.facilities[facility])
    result = ingest(t.ctx, actor, make_instance(InstanceSpec(rows=32, columns=32, **spec)), source="test")
    t.studies[label] = result.study_instance_uid


def build_territory(database: Database, tmp_path: Path, security: SecuritySettings | None = None) -> Territory:
    security = security or SecuritySettings(max_failed_logins=3)
    settings = Settings(data_dir=tmp_path, security=security)
    ctx = Context(settings=settings, db=database, blobs=FileSystemBlobStore(tmp_path / "blobs"))
    facs = {slug: facilities.add_facility(ctx, OPERATOR, slug=slug, name=f"Hôpital {slug}", issuer=slug.upper())
            for slug in ("nord", "sud", "est")}
    t = Territory(ctx, facs)
    for username, role, facility in (("clin.nord", Role.CLINICIAN, "nord"), ("radio.nord", Role.RADIOLOGIST, "nord"),
                                     ("clin.sud", Role.CLINICIAN, "sud"), ("admin.nord", Role.FACILITY_ADMIN, "nord")):
        users.create_user(ctx, OPERATOR, username=username, password=PASSWORD, roles=frozenset({role}),
                          facilities=[facility], display_name=username)
    alice = {"patient_name": "DURAND^ALICE", "birth_date": "19800101", "sex": "F",
             "other_patient_ids": (ins_identifier(INS),)}
    _store(t, "nord", "alice-ct", patient_id="N1", modality="CT", study_date="20230105",
           study_description="CT THORAX", body_part="CHEST", **alice)
    _store(t, "nord", "alice-ct2", patient_id="N1", modality="CT", study_date="20250301",
           study_description="CT THORAX CONTROLE", body_part="CHEST", **alice)
    _store(t, "sud", "alice-mr", patient_id="S1", modality="MR", study_date="20240610",
           study_description="IRM GENOU", body_part="KNEE", **alice)
    _store(t, "est", "bob-us", patient_id="E1", patient_name="MOREAU^BOB", birth_date="19700707",
           modality="US", study_date="20220202", study_description="ECHO ABDO", body_part="ABDOMEN")
    _store(t, "nord", "evil", patient_id="N666", patient_name=EVIL_NAME, birth_date="19900909",
           modality="CR", study_date="20250101", study_description=EVIL_DESCRIPTION, body_part="HAND")
    return t


@pytest.fixture
def territory(database: Database, tmp_path: Path) -> Territory:
    return build_territory(database, tmp_path)


def portal_client(t: Territory, base_url: str = ORIGIN) -> TestClient:
    return TestClient(create_app(t.ctx), base_url=base_url, raise_server_exceptions=False,
                      follow_redirects=False)


@pytest.fixture
def client(territory: Territory) -> Iterator[TestClient]:
    with portal_client(territory) as c:
        yield c


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF field"
    return found.group(1)


def login(c: TestClient, username: str = "clin.nord", password: str = PASSWORD) -> TestClient:
    page = c.get("/portal/login")
    assert page.status_code == 200
    r = c.post("/portal/login", data={"csrf": csrf_of(page.text), "username": username, "password": password,
                                      "next": "/portal/patients"})
    assert r.status_code == 303, r.text
    assert r.headers["location"] == "/portal/patients"
    return c


def session_csrf(c: TestClient) -> str:
    return csrf_of(c.get("/portal/patients").text)


def text_of(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


# -- headers and policy -------------------------------------------------------------------


def test_pages_carry_a_strict_policy(client: TestClient) -> None:
    r = client.get("/portal/login")
    assert r.status_code == 200
    csp = {d.split(" ", 1)[0]: d.split(" ", 1)[1] for d in r.headers["content-security-policy"].split("; ")}
    assert csp["default-src"] == "'self'"
    assert csp["script-src"] == "'none'"
    assert csp["style-src"] == "'self'"
    assert csp["frame-ancestors"] == "'none'"
    assert csp["form-action"] == "'self'"
    assert csp["base-uri"] == "'none'"
    assert "unsafe" not in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["x-frame-options"] == "DENY"
    # no inline script or style anywhere: the policy would block them
    assert "<script" not in r.text and "<style" not in r.text and " style=" not in r.text
    css = client.get(re.search(r'href="(/portal/static/portal\.css\?v=[0-9a-f]+)"', r.text).group(1))
    assert css.status_code == 200
    assert css.headers["content-type"].startswith("text/css")
    assert css.headers["x-content-type-options"] == "nosniff"
    assert "immutable" in css.headers["cache-control"]
    assert client.get("/portal/static/..%2Fcsrf.py").status_code == 404


def test_patient_pages_are_never_cached(client: TestClient, territory: Territory) -> None:
    login(client)
    person = territory.person_of("nord", "N1")
    for path in ("/portal/patients?q=DURAND", f"/portal/persons/{person}"):
        r = client.get(path)
        assert r.status_code == 200
        assert r.headers["cache-control"] == "no-store"
        assert r.headers["content-security-policy"].startswith("default-src 'self'")
    thumb = client.get(f"/portal/thumbnails/{territory.studies['alice-ct']}")
    assert thumb.status_code == 200
    assert thumb.headers["content-type"] == "image/jpeg"
    assert "no-store" in thumb.headers["cache-control"]


# -- signing in ---------------------------------------------------------------------------


def test_login_sets_the_session_cookie(territory: Territory) -> None:
    for base, secure in ((ORIGIN, False), ("https://127.0.0.1", True)):
        with portal_client(territory, base) as c:
            page = c.get("/portal/login")
            assert "httponly" in page.headers["set-cookie"].lower()
            r = c.post("/portal/login", data={"csrf": csrf_of(page.text), "username": "clin.nord",
                                              "password": PASSWORD, "next": "/portal/patients?q=DURAND"})
            assert r.status_code == 303
            assert r.headers["location"] == "/portal/patients?q=DURAND"
            cookie = next(v for k, v in r.headers.multi_items()
                          if k == "set-cookie" and v.startswith("coffre_session="))
            attributes = {a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]}
            assert {"httponly", "path", "samesite"} <= attributes
            assert "samesite=strict" in cookie.lower() and "path=/;" in cookie.lower() + ";"
            assert ("secure" in attributes) is secure
            assert c.get("/portal/patients").status_code == 200
    assert [e.outcome for e in territory.events("login")][-2:] == ["success", "success"]


def test_login_failures_look_alike_and_lock_out(client: TestClient, territory: Territory) -> None:
    def attempt(username: str, password: str) -> str:
        page = client.get("/portal/login")
        r = client.post("/portal/login", data={"csrf": csrf_of(page.text), "username": username,
                                               "password": password})
        assert r.status_code == 401
        assert "coffre_session" not in r.headers.get("set-cookie", "")
        return re.search(r'class="flash error" role="alert">(.*?)</p>', r.text).group(1)

    unknown = attempt("nobody", "whatever password")
    wrong = [attempt("radio.nord", "wrong password") for _ in range(3)]  # max_failed_logins = 3
    locked = attempt("radio.nord", PASSWORD)  # the right password, but locked now
    assert unknown == wrong[0] == wrong[-1] == locked
    assert "verrouillé" in locked  # the one message mentions the lockout, for everyone
    reasons = [e.detail.get("reason") for e in territory.events("login") if e.outcome == "failure"]
    assert reasons == ["unknown-user", "wrong-password", "wrong-password", "wrong-password", "locked"]


def test_login_form_is_protected_against_csrf(client: TestClient, territory: Territory) -> None:
    page = client.get("/portal/login")
    token = csrf_of(page.text)
    fields = {"username": "clin.nord", "password": PASSWORD}
    assert client.post("/portal/login", data=fields).status_code == 403  # no token
    assert client.post("/portal/login", data={**fields, "csrf": token + "x"}).status_code == 403
    r = client.post("/portal/login", data={**fields, "csrf": token}, headers={"Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403
    with portal_client(territory) as other:  # a token without its browser's cookie
        assert other.post("/portal/login", data={**fields, "csrf": token}).status_code == 403
    assert not [e for e in territory.events("login") if e.outcome == "success"]
    assert client.post("/portal/login", data={**fields, "csrf": token}).status_code == 303


def test_pages_send_strangers_to_the_login_page(client: TestClient) -> None:
    r = client.get("/portal/patients?q=DURAND")
    assert r.status_code == 303
    assert r.headers["location"] == "/portal/login?next=%2Fportal%2Fpatients%3Fq%3DDURAND"
    assert client.get("/portal").headers["location"] == "/portal/patients"
    client.cookies.set("coffre_session", "forged.token.value")
    r = client.get("/portal/persons/1")
    assert r.status_code == 303 and r.headers["location"].startswith("/portal/login?next=")
    cookies = r.headers.get_list("set-cookie")
    assert any(c.startswith('coffre_session=""') or c.startswith("coffre_session=;") for c in cookies), cookies
    assert any(c.startswith("coffre_flash=error:login.expired") for c in cookies)
    page = client.get(r.headers["location"])
    assert "Votre session a pris fin" in page.text
    assert client.get("/portal/thumbnails/1.2.3").status_code == 401


def test_logout_revokes_the_token(client: TestClient) -> None:
    login(client)
    token = client.cookies.get("coffre_session")
    assert client.get("/dicomweb/studies", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    csrf = session_csrf(client)
    assert client.post("/portal/logout", data={"csrf": "nope"}).status_code == 403
    r = client.post("/portal/logout", data={"csrf": csrf})
    assert r.status_code == 303 and r.headers["location"] == "/portal/login"
    assert client.get("/dicomweb/studies", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert client.get("/portal/patients").status_code == 303
    client.cookies.set("coffre_session", token)  # the old cookie, replayed
    assert client.get("/portal/patients").status_code == 303


# -- search, timeline and escaping --------------------------------------------------------


def test_search_shows_only_the_callers_scope(client: TestClient, territory: Territory) -> None:
    login(client)
    found = text_of(client.get("/portal/patients?q=durand").text)
    assert "DURAND, ALICE" in found and "nord N1" in found
    assert "sud S1" not in found  # not visible before a care relationship
    assert "Examens visibles : 2" in found
    for q in ("MOREAU", "E1", "07/07/1970", "est:E1"):
        html = client.get("/portal/patients?" + urllib.parse.urlencode({"q": q})).text
        assert "Aucun patient" in text_of(html), q
        assert "BOB" not in html and 'class="card person"' not in html, q
    # the INS names Alice: found with her own identity; the PatientID alone too
    assert "DURAND, ALICE" in text_of(client.get(f"/portal/patients?q={INS}").text)
    assert "DURAND, ALICE" in text_of(client.get("/portal/patients?q=N1").text)
    assert "DURAND, ALICE" in text_of(client.get("/portal/patients?q=01/01/1980").text)
    queries = [e for e in territory.events("query") if e.detail.get("source") == "portal-search"]
    assert queries, "searches are audited"


def test_dicom_values_are_escaped(client: TestClient, territory: Territory) -> None:
    login(client)
    search = client.get("/portal/patients?q=" + urllib.parse.quote("O'Neil"))
    assert search.status_code == 200
    person = territory.person_of("nord", "N666")
    timeline = client.get(f"/portal/persons/{person}")
    for page in (search.text, timeline.text):
        assert "<script>alert" not in page and "<img src=x" not in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
        assert "O&#x27;Neil &quot;Bob&quot;" in page
    assert "&lt;img src=x onerror=alert(2)&gt;" in timeline.text
    # the reflected query is escaped too, in text and in the input's value
    reflected = client.get("/portal/patients?q=" + urllib.parse.quote('"><script>x</script>'))
    assert "<script>x" not in reflected.text
    assert 'value="&quot;&gt;&lt;script&gt;x&lt;/script&gt;"' in reflected.text


def test_timeline_and_care_relationship(client: TestClient, territory: Territory) -> None:
    login(client)
    person = territory.person_of("nord", "N1")
    before = client.get(f"/portal/persons/{person}").text
    assert territory.studies["alice-ct"] in before
    assert territory.studies["alice-mr"] not in before
    assert f'/viewer?StudyInstanceUIDs={territory.studies["alice-ct"]}"' in before
    assert "pas de compte rendu" in before
    csrf = csrf_of(before)
    r = client.post(f"/portal/persons/{person}/care", data={"csrf": csrf, "days": "30", "reason": "suivi genou"})
    assert r.status_code == 303 and r.headers["location"] == f"/portal/persons/{person}"
    after = client.get(r.headers["location"]).text
    assert "Relation de soins enregistrée." in after
    mr, ct, ct2 = territory.studies["alice-mr"], territory.studies["alice-ct"], territory.studies["alice-ct2"]
    assert mr in after
    order = [after.index(f"/portal/thumbnails/{uid}") for uid in (ct2, mr, ct)]
    assert order == sorted(order), "newest first"
    # compare with prior: the previous CT of the chest, not the knee MR in between
    assert f"/viewer?StudyInstanceUIDs={ct2},{ct}" in after
    assert f"StudyInstanceUIDs={mr}," not in after  # nothing comparable before the MR
    assert 'data-access="care"' in after and "Hôpital sud" in after
    assert client.get(f"/portal/thumbnails/{mr}").status_code == 200
    [event] = territory.events("grant-care")
    assert event.person_id == person and event.detail["reason"] == "suivi genou"
    timeline_events = territory.events("timeline")
    assert timeline_events and timeline_events[-1].person_id == person


def test_timeline_by_local_patient_id(client: TestClient, territory: Territory) -> None:
    login(client)
    alice = territory.person_of("nord", "N1")
    r = client.get("/portal/timeline?patient_id=N1")
    assert r.status_code == 303 and r.headers["location"] == f"/portal/persons/{alice}"
    # another facility's number is not the caller's: back to the search, which finds nothing
    r = client.get("/portal/timeline?patient_id=E1")
    assert r.headers["location"] == "/portal/patients?q=E1"
    assert client.get("/portal/persons/999999").status_code == 200  # nothing visible, nothing said
    assert "Aucun examen que vous puissiez voir." in client.get("/portal/persons/999999").text
    assert client.get("/portal/persons/abc").status_code == 404


def test_dialogs_refuse_forged_requests(client: TestClient, territory: Territory) -> None:
    login(client)
    person = territory.person_of("nord", "N1")
    csrf = session_csrf(client)
    url = f"/portal/persons/{person}/care"
    fields = {"days": "30", "reason": "suivi"}
    with portal_client(territory) as other:
        login(other, "radio.nord")
        other_csrf = session_csrf(other)
    refusals = [
        client.post(url, data=fields),  # no token
        client.post(url, data={**fields, "csrf": other_csrf}),  # another session's token
        client.post(url, data={**fields, "csrf": csrf}, headers={"Sec-Fetch-Site": "cross-site"}),
        client.post(url, data={**fields, "csrf": csrf}, headers={"Sec-Fetch-Site": "same-site"}),
        client.post(url, data={**fields, "csrf": csrf}, headers={"Origin": "http://evil.example"}),
        client.post(url, content=json.dumps({**fields, "csrf": csrf}), headers={"Content-Type": "application/json"}),
        client.post("/portal/break-glass", data={"csrf": other_csrf, "person": str(person), "reason": "x"}),
    ]
    for r in refusals:
        assert r.status_code == 403
        assert "La demande n&#x27;a pas pu être vérifiée" in r.text
    with territory.ctx.db.read() as tx:
        assert grant_index.list_grants(tx) == []
    ok = client.post(url, data={**fields, "csrf": csrf}, headers={"Sec-Fetch-Site": "same-origin",
                                                                  "Origin": ORIGIN})
    assert ok.status_code == 303


def test_break_the_glass(client: TestClient, territory: Territory) -> None:
    login(client)
    offer = client.get("/portal/patients?q=est:E1").text
    assert 'action="/portal/break-glass"' in offer and 'name="ref" value="est:E1"' in offer
    csrf = csrf_of(offer)
    # the same offer for an identifier that names nobody: existence is not revealed
    assert 'name="ref" value="est:E999"' in client.get("/portal/patients?q=est:E999").text
    r = client.post("/portal/break-glass", data={"csrf": csrf, "ref": "est:E1", "reason": "  "})
    assert r.status_code == 303 and r.headers["location"] == "/portal/patients?q=est%3AE1"
    assert "Le motif est obligatoire." in client.get(r.headers["location"]).text
    r = client.post("/portal/break-glass", data={"csrf": csrf, "ref": "est:E999", "reason": "urgence"})
    assert "Patient introuvable." in client.get(r.headers["location"]).text
    assert not territory.events("break-glass")
    assert client.get(f"/portal/thumbnails/{territory.studies['bob-us']}").status_code == 404
    r = client.post("/portal/break-glass", data={"csrf": csrf, "ref": "est:E1", "reason": "patient inconscient"})
    bob = territory.person_of("est", "E1")
    assert r.status_code == 303 and r.headers["location"] == f"/portal/persons/{bob}"
    page = client.get(r.headers["location"]).text
    assert territory.studies["bob-us"] in page
    assert 'class="study btg" data-access="break-glass"' in page
    assert ">bris de glace</span>" in page
    assert "Accès en bris de glace ouvert jusqu" in page
    assert client.get(f"/portal/thumbnails/{territory.studies['bob-us']}").status_code == 200
    [event] = territory.events("break-glass")
    assert event.outcome == "alert" and event.person_id == bob
    assert event.detail["reason"] == "patient inconscient"
    views = [e for e in territory.events("portal-thumbnail") if e.object_id == territory.studies["bob-us"]]
    assert views and views[-1].detail["access"] == "break-glass"


def test_opposition_recorded_and_withdrawn(client: TestClient, territory: Territory) -> None:
    login(client)
    alice = territory.person_of("nord", "N1")
    page = client.get(f"/portal/persons/{alice}").text
    csrf = csrf_of(page)
    r = client.post(f"/portal/persons/{alice}/opposition", data={"csrf": csrf, "reason": "demande écrite"})
    assert r.status_code == 303
    page = client.get(r.headers["location"]).text
    assert "Opposition enregistrée." in page and "s&#x27;oppose au partage" in page
    assert f'action="/portal/persons/{alice}/opposition/withdraw"' in page
    with portal_client(territory) as sud:  # sud's clinician: care recorded, opposition wins
        login(sud, "clin.sud")
        sud_csrf = session_csrf(sud)
        sud.post(f"/portal/persons/{alice}/care", data={"csrf": sud_csrf, "days": "10", "reason": "suivi"})
        assert territory.studies["alice-ct"] not in sud.get(f"/portal/persons/{alice}").text
    r = client.post(f"/portal/persons/{alice}/opposition/withdraw", data={"csrf": csrf})
    assert "Opposition levée." in client.get(r.headers["location"]).text
    with territory.ctx.db.read() as tx:
        assert grant_index.opposed_persons(tx, among=[alice]) == frozenset()
    assert [e.action for e in territory.events("opposition")] == ["opposition"]
    assert len(territory.events("opposition-withdrawn")) == 1


def test_dialogs_are_authorized_by_the_services(client: TestClient, territory: Territory) -> None:
    login(client, "radio.nord")  # radiologists record no care relationship
    alice = territory.person_of("nord", "N1")
    page = client.get(f"/portal/persons/{alice}").text
    assert "/care" not in page
    r = client.post(f"/portal/persons/{alice}/care", data={"csrf": csrf_of(page), "days": "5", "reason": "x"})
    assert r.status_code == 303
    assert "Vous n&#x27;êtes pas autorisé" in client.get(r.headers["location"]).text
    with portal_client(territory) as admin:
        login(admin, "admin.nord")  # no image for administrators
        refused = admin.get("/portal/patients?q=DURAND")
        assert refused.status_code == 403 and "DURAND" not in text_of(refused.text).replace("q=DURAND", "")


# -- share links --------------------------------------------------------------------------


def _share_fields(csrf: str, **fields: str) -> dict[str, str]:
    return {"csrf": csrf, "target": "all", "date_from": "", "date_to": "", "days": "7", "max_uses": "3",
            "recipient": "Dr Martin, GP", **fields}


def _created(html: str) -> tuple[str, str]:
    url = re.search(r'<code id="share-url">([^<]+)</code>', html)
    code = re.search(r'<code id="share-code">([^<]+)</code>', html)
    assert url and code, "no link or code on the result page"
    return url.group(1), code.group(1)


def _share_rows(t: Territory) -> list[Any]:
    from coffre.index import shares as share_index

    with t.ctx.db.read() as tx:
        return share_index.list_shares(tx, created_by=None, facility_ids=None)


def test_share_link_created_from_the_timeline(
    client: TestClient, territory: Territory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    login(client)
    alice = territory.person_of("nord", "N1")
    timeline = client.get(f"/portal/persons/{alice}").text
    assert f'action="/portal/persons/{alice}/share"' in timeline and "Créer un lien de partage" in timeline
    assert f'<option value="{territory.studies["alice-ct"]}">' in timeline
    assert 'href="/portal/shares"' in timeline and 'href="/portal/shares"' in client.get("/portal/patients").text
    r = client.post(f"/portal/persons/{alice}/share",
                    data=_share_fields(csrf_of(timeline), target=territory.studies["alice-ct"], allow_download="1"))
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    assert "set-cookie" not in r.headers  # nothing in a flash (or any) cookie
    url, code = _created(r.text)
    assert url.startswith(ORIGIN + "/share/") and re.fullmatch(r"[2-9A-Z]{5}-[2-9A-Z]{5}", code)
    token = url.rsplit("/", 1)[1]
    assert "Transmettez le code séparément" in r.text
    # the secrets are nowhere else: not in the list, the timeline, the audit trail, the index
    for later in ("/portal/shares", f"/portal/persons/{alice}", "/portal/patients"):
        page = client.get(later).text
        assert token not in page and code not in page
    assert all(token not in v and code not in v for v in client.cookies.values())
    [event] = territory.events("grant-share")
    assert token not in json.dumps(event.detail) and code not in json.dumps(event.detail)
    [row] = _share_rows(territory)
    assert row.recipient == "Dr Martin, GP" and row.max_uses == 3 and row.allow_download
    assert token not in row.token_hash and code not in row.code_hash
    listing = client.get("/portal/shares").text
    assert "Dr Martin, GP" in listing and "0 / 3" in listing and "actif" in listing
    # the recipient, with only the link and the code, sees the study
    with portal_client(territory) as recipient:
        assert recipient.get(f"/share/{token}").status_code == 200
        opened = recipient.post(f"/share/{token}", data={"code": code}, headers={"Sec-Fetch-Site": "same-origin"})
        assert opened.status_code == 303 and opened.headers["location"] == "/share"
        studies = recipient.get("/share").text
        assert territory.studies["alice-ct"] in studies and territory.studies["alice-ct2"] not in studies
    assert "1 / 3" in client.get("/portal/shares").text
    server_logs = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("coffre"))
    assert "share link" in server_logs and token not in server_logs and code not in server_logs


def test_share_link_of_all_studies_in_a_range(client: TestClient, territory: Territory) -> None:
    login(client, "radio.nord")
    alice = territory.person_of("nord", "N1")
    csrf = session_csrf(client)
    r = client.post(f"/portal/persons/{alice}/share",
                    data=_share_fields(csrf, date_from="2025-01-01", date_to="2025-12-31"))
    assert r.status_code == 200
    [row] = _share_rows(territory)
    assert (row.scope, row.date_from, row.date_to) == ("person", "20250101", "20251231")
    # bad fields and an empty range go back to the timeline with a message, nothing created
    for fields, message in (({"days": "0"}, "Durée invalide."), ({"days": "31"}, "Durée invalide."),
                            ({"max_uses": "x"}, "Nombre d&#x27;utilisations invalide."),
                            ({"date_from": "2025-02-01", "date_to": "2025-01-01"}, "Période invalide."),
                            ({"date_from": "2000-01-01", "date_to": "2000-12-31"}, "Aucun examen que vous puissiez")):
        r = client.post(f"/portal/persons/{alice}/share", data=_share_fields(csrf, **fields))
        assert r.status_code == 303 and r.headers["location"] == f"/portal/persons/{alice}", fields
        assert message in client.get(r.headers["location"]).text
    assert len(_share_rows(territory)) == 1


def test_share_dialog_refuses_forged_requests_and_other_roles(client: TestClient, territory: Territory) -> None:
    login(client)
    alice = territory.person_of("nord", "N1")
    url = f"/portal/persons/{alice}/share"
    with portal_client(territory) as other:
        login(other, "radio.nord")
        other_csrf = session_csrf(other)
    csrf = session_csrf(client)
    for r in (client.post(url, data=_share_fields("")), client.post(url, data=_share_fields(other_csrf)),
              client.post(url, data=_share_fields(csrf), headers={"Sec-Fetch-Site": "cross-site"})):
        assert r.status_code == 403 and "La demande n&#x27;a pas pu être vérifiée" in r.text
    assert _share_rows(territory) == [] and not territory.events("grant-share")
    with portal_client(territory) as admin:  # a facility admin is not allowed to share
        login(admin, "admin.nord")
        assert 'href="/portal/shares"' not in admin.get("/portal/patients").text
        r = admin.post(url, data=_share_fields(session_csrf(admin), target=territory.studies["alice-ct"]))
        assert r.status_code == 403 and "Vous n&#x27;êtes pas autorisé" in r.text
        assert "share-url" not in r.text
    assert _share_rows(territory) == [] and not territory.events("grant-share")


def test_share_link_revoked_from_the_list(client: TestClient, territory: Territory) -> None:
    login(client)
    alice = territory.person_of("nord", "N1")
    csrf = session_csrf(client)
    _url, code = _created(client.post(f"/portal/persons/{alice}/share", data=_share_fields(csrf)).text)
    token = _url.rsplit("/", 1)[1]
    [row] = _share_rows(territory)
    listing = client.get("/portal/shares").text
    assert f'action="/portal/shares/{row.id}/revoke"' in listing
    assert client.post(f"/portal/shares/{row.id}/revoke", data={}).status_code == 403  # no CSRF token
    with portal_client(territory) as sud:  # another user's link is not found, and stays
        login(sud, "clin.sud")
        r = sud.post(f"/portal/shares/{row.id}/revoke", data={"csrf": session_csrf(sud)})
        assert "Introuvable." in sud.get(r.headers["location"]).text
    assert _share_rows(territory)[0].revoked_at is None
    r = client.post(f"/portal/shares/{row.id}/revoke", data={"csrf": csrf})
    assert r.status_code == 303 and r.headers["location"] == "/portal/shares"
    after = client.get(r.headers["location"]).text
    assert "Lien de partage révoqué." in after and "révoqué" in after
    assert f'action="/portal/shares/{row.id}/revoke"' not in after
    assert [e.object_id for e in territory.events("grant-revoked")] == [str(row.id)]
    with portal_client(territory) as recipient:
        assert recipient.get(f"/share/{token}").status_code == 404
        refused = recipient.post(f"/share/{token}", data={"code": code}, headers={"Sec-Fetch-Site": "same-origin"})
        assert refused.status_code == 404


# -- languages ----------------------------------------------------------------------------


def test_languages(client: TestClient) -> None:
    assert '<html lang="fr">' in client.get("/portal/login").text
    english = client.get("/portal/login", headers={"Accept-Language": "en-GB,en;q=0.9,fr;q=0.5"})
    assert '<html lang="en">' in english.text and "Sign in" in english.text
    assert '<html lang="fr">' in client.get("/portal/login", headers={"Accept-Language": "de, fr;q=0.3"}).text
    r = client.get("/portal/lang/en?next=/portal/login")
    assert r.status_code == 303 and r.headers["location"] == "/portal/login"
    assert "coffre_lang=en" in r.headers["set-cookie"]
    page = client.get("/portal/login", headers={"Accept-Language": "fr"})
    assert '<html lang="en">' in page.text and "User name" in page.text
    login(client)
    assert "Patient search" in client.get("/portal/patients").text
    assert client.get("/portal/lang/fr?next=//evil.example/x").headers["location"] == "/"


def test_the_catalogue_is_complete() -> None:
    for key, pair in MESSAGES.items():
        assert len(pair) == 2 and all(pair), key
        assert set(re.findall(r"{(\w+)}", pair[0])) == set(re.findall(r"{(\w+)}", pair[1])), key
    used = set()
    for name in ("layout.py", "auth_pages.py", "patients.py", "share_dialog.py"):  # admin pages test their own
        source = PORTAL_SRC / name
        used |= set(re.findall(r"""\bt\(\s*f?["']([a-z_.-]+)["']""", source.read_text()))
    assert used, "no message found"
    assert used <= set(MESSAGES) | {"access.", "sex.", "lang.", "share.state."}, used - set(MESSAGES)


# -- OpenID Connect -----------------------------------------------------------------------


class Provider:
    """A real OpenID Connect provider on loopback: discovery, JWKS and a token endpoint
    that checks PKCE. ``authorize`` plays the user's visit to the authorization page."""

    def __init__(self, key: rsa.RSAPrivateKey) -> None:
        self.key = key
        self.codes: dict[str, dict[str, str]] = {}
        self.nonce_override: str | None = None
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, document: dict[str, Any]) -> None:
                body = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path == "/.well-known/openid-configuration":
                    self._send(200, {"issuer": provider.issuer,
                                     "authorization_endpoint": provider.issuer + "/auth",
                                     "token_endpoint": provider.issuer + "/token",
                                     "jwks_uri": provider.issuer + "/certs",
                                     "code_challenge_methods_supported": ["S256"]})
                elif self.path == "/certs":
                    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(provider.key.public_key(), as_dict=True)
                    self._send(200, {"keys": [{**jwk, "kid": "k1", "use": "sig"}]})
                else:
                    self._send(404, {})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                grant = provider.codes.pop(form.get("code", ""), None)
                challenge = base64.urlsafe_b64encode(
                    hashlib.sha256(form.get("code_verifier", "").encode()).digest()).rstrip(b"=").decode()
                if (grant is None or form.get("grant_type") != "authorization_code"
                        or challenge != grant["challenge"] or form.get("redirect_uri") != grant["redirect_uri"]
                        or form.get("client_id") != "coffre-portal"):
                    self._send(400, {"error": "invalid_grant"})
                    return
                self._send(200, provider.tokens(grant["nonce"]))

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def tokens(self, nonce: str) -> dict[str, str]:
        now = int(time.time())
        common = {"iss": self.issuer, "sub": "u-4242", "iat": now, "exp": now + 300}
        access = jwt.encode({**common, "aud": "coffre-portal", "jti": secrets.token_hex(8), "typ": "Bearer",
                             "preferred_username": "dr.oidc", "roles": ["clinician"], "facilities": ["nord"]},
                            self.key, algorithm="RS256", headers={"kid": "k1"})
        id_token = jwt.encode({**common, "aud": "coffre-portal", "nonce": self.nonce_override or nonce},
                              self.key, algorithm="RS256", headers={"kid": "k1"})
        return {"access_token": access, "id_token": id_token, "token_type": "Bearer"}

    def authorize(self, location: str) -> str:
        """The provider's authorization page, the user consenting: the callback URL."""
        parts = urllib.parse.urlsplit(location)
        assert f"{parts.scheme}://{parts.netloc}{parts.path}" == self.issuer + "/auth"
        query = dict(urllib.parse.parse_qsl(parts.query))
        assert query["response_type"] == "code" and query["client_id"] == "coffre-portal"
        assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) == 43
        assert "openid" in query["scope"].split()
        code = secrets.token_urlsafe(16)
        self.codes[code] = {"challenge": query["code_challenge"], "nonce": query["nonce"],
                            "redirect_uri": query["redirect_uri"]}
        return query["redirect_uri"] + "?" + urllib.parse.urlencode({"code": code, "state": query["state"]})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def idp_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def provider(idp_key: rsa.RSAPrivateKey) -> Iterator[Provider]:
    server = Provider(idp_key)
    yield server
    server.close()


@pytest.fixture
def oidc_territory(database: Database, tmp_path: Path, provider: Provider) -> Territory:
    security = SecuritySettings(oidc_issuer=provider.issuer, oidc_audience="coffre-portal",
                                oidc_jwks_url=provider.issuer + "/certs", oidc_algorithms="RS256")
    return build_territory(database, tmp_path, security)


def test_oidc_sign_in_with_pkce(oidc_territory: Territory, provider: Provider) -> None:
    with portal_client(oidc_territory) as c:
        login_page = c.get("/portal/login").text
        assert "Se connecter avec 127.0.0.1" in login_page
        start = c.get("/portal/oidc/start?next=/portal/patients%3Fq%3DDURAND")
        assert start.status_code == 303
        state_cookie = start.headers["set-cookie"]
        assert state_cookie.startswith("coffre_oidc=") and "httponly" in state_cookie.lower()
        assert "samesite=lax" in state_cookie.lower()
        callback = provider.authorize(start.headers["location"])
        assert callback.startswith(ORIGIN + "/portal/oidc/callback?")
        done = c.get(callback.removeprefix(ORIGIN))
        assert done.status_code == 200, done.text
        assert '<meta http-equiv="refresh" content="0;url=/portal/patients?q=DURAND">' in done.text
        assert "coffre_session=" in done.headers["set-cookie"]
        page = c.get("/portal/patients?q=DURAND").text
        assert "dr.oidc" in page and "DURAND, ALICE" in page
        # the code is single-use and the state cookie is gone: replaying the callback fails
        assert c.get(callback.removeprefix(ORIGIN)).status_code == 400
    logins = oidc_territory.events("login")
    assert logins[-2].outcome == "success" and logins[-2].detail["scheme"] == "oidc"
    assert logins[-1].outcome == "failure"


def test_oidc_refuses_bad_state_nonce_and_verifier(oidc_territory: Territory, provider: Provider) -> None:
    with portal_client(oidc_territory) as c:
        callback = provider.authorize(c.get("/portal/oidc/start").headers["location"])
        parts = urllib.parse.urlsplit(callback)
        query = dict(urllib.parse.parse_qsl(parts.query))
        forged = c.get(parts.path + "?" + urllib.parse.urlencode({**query, "state": "attacker"}))
        assert forged.status_code == 400 and "coffre_session=" not in forged.headers.get("set-cookie", "")
    with portal_client(oidc_territory) as c:  # a callback without the browser's state cookie
        callback = provider.authorize(c.get("/portal/oidc/start").headers["location"])
    with portal_client(oidc_territory) as stranger:
        assert stranger.get(callback.removeprefix(ORIGIN)).status_code == 400
    with portal_client(oidc_territory) as c:  # an ID token for another sign-in
        provider.nonce_override = "another nonce"
        callback = provider.authorize(c.get("/portal/oidc/start").headers["location"])
        r = c.get(callback.removeprefix(ORIGIN))
        assert r.status_code == 502 and "coffre_session=" not in r.headers.get("set-cookie", "")
        provider.nonce_override = None
    with portal_client(oidc_territory) as c:  # the provider refuses a wrong verifier
        callback = provider.authorize(c.get("/portal/oidc/start").headers["location"])
        code = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(callback).query))["code"]
        provider.codes[code]["challenge"] = "A" * 43
        r = c.get(callback.removeprefix(ORIGIN))
        assert r.status_code == 502 and "La connexion avec 127.0.0.1 a échoué" in r.text
        assert c.get("/portal/patients").status_code == 303


def test_oidc_is_off_without_an_issuer(client: TestClient) -> None:
    assert "/portal/oidc/start" not in client.get("/portal/login").text
    assert client.get("/portal/oidc/start").status_code == 404
