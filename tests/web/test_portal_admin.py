"""The portal's admin pages in-process (httpx through Starlette's TestClient), on SQLite and
PostgreSQL: which role reaches which page (the services decide), the menu, every form
(nodes, TLS, facilities, users, reconciliation, break-the-glass review) with its audit
event, CSRF refusals, escaping of stored values, audit search paging, the access
report, usage and its CSV, and both languages.

Territory: ``nord``, ``sud`` and ``est``; one user per role at ``nord`` (and a few at
the others) plus a territory admin; Alice DURAND (INS) at ``nord`` and ``sud``, Pierre
DUBOIS at ``nord`` only, Luc BERNARD at ``sud`` and, without INS, at ``est`` (queued for
reconciliation); ``clin.sud`` broke the glass for Pierre DUBOIS. Stored values carry
HTML/JS injections: a facility name, a node description, a user's display name, the
break-the-glass reason.
"""

from __future__ import annotations

import csv
import html
import io
import re
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from coffre.app import Context
from coffre.dicom.synthetic import InstanceSpec, ins_identifier, make_instance
from coffre.index import audit as audit_index
from coffre.index.engine import Database
from coffre.index.persons import person_of_identity
from coffre.model import Actor, Facility, Permission, Role
from coffre.services import audit, facilities, grants, identity, users
from coffre.services.ingest import ingest
from coffre.settings import SecuritySettings, Settings
from coffre.storage.filesystem import FileSystemBlobStore
from coffre.web.http import create_app
from coffre.web.portal.admin_messages import ADMIN_MESSAGES
from coffre.web.portal.i18n import MESSAGES

OPERATOR = Actor.system("tests")
PASSWORD = "admin pages password"
ORIGIN = "http://127.0.0.1"
INS = "268047512345664"
EVIL = "<script>alert(1)</script>\"'&"
PORTAL_SRC = Path(__file__).parents[2] / "src" / "coffre" / "web" / "portal"

#: user name -> (role, facilities)
USERS: dict[str, tuple[Role, tuple[str, ...]]] = {
    "admin.nord": (Role.FACILITY_ADMIN, ("nord",)),
    "admin.est": (Role.FACILITY_ADMIN, ("est",)),
    "ident.nord": (Role.IDENTITY_MANAGER, ("nord",)),
    "ident.est": (Role.IDENTITY_MANAGER, ("est",)),
    "audit.nord": (Role.AUDITOR, ("nord",)),
    "clin.nord": (Role.CLINICIAN, ("nord",)),
    "clin.sud": (Role.CLINICIAN, ("sud",)),
    "radio.nord": (Role.RADIOLOGIST, ("nord",)),
    "manip.nord": (Role.TECHNOLOGIST, ("nord",)),
    "admin.sud": (Role.FACILITY_ADMIN, ("sud",)),
    "admin.territoire": (Role.TERRITORY_ADMIN, ()),
}

#: page -> the users who may open it (the others get 403)
PAGES: dict[str, set[str]] = {
    "/portal/admin/facilities": {"admin.nord", "admin.est", "admin.sud", "admin.territoire"},
    "/portal/admin/users": {"admin.nord", "admin.est", "admin.sud", "admin.territoire"},
    "/portal/admin/identity": {"ident.nord", "ident.est"},
    "/portal/admin/break-glass": {"admin.nord", "admin.est", "admin.sud"},
    "/portal/admin/audit": {"audit.nord"},
    "/portal/admin/usage": {"admin.nord", "admin.est", "admin.sud", "admin.territoire"},
    "/portal/admin/usage.csv": {"admin.nord", "admin.est", "admin.sud", "admin.territoire"},
}


@dataclass
class Territory:
    ctx: Context
    facilities: dict[str, Facility]
    persons: dict[str, int] = field(default_factory=dict)
    break_glass: int = 0

    def events(self, action: str) -> list[audit_index.AuditRow]:
        with self.ctx.db.read() as tx:
            return audit_index.list_events(tx, action=action, limit=100_000)

    def person_of(self, facility: str, patient_id: str) -> int:
        with self.ctx.db.read() as tx:
            found = person_of_identity(tx, self.facilities[facility].id, patient_id)
        assert found is not None
        return found

    def actor(self, username: str) -> Actor:
        role, slugs = USERS[username]
        return Actor.for_user(username, username, frozenset({role}), tuple(self.facilities[s] for s in slugs),
                              "127.0.0.1")

    def node(self, ae_title: str) -> Any:
        found = facilities.find_node(self.ctx, ae_title)
        return None if found is None else found[0]


def _store(t: Territory, facility: str, **spec: Any) -> None:
    actor = Actor.system("tests", facility=t.facilities[facility])
    ingest(t.ctx, actor, make_instance(InstanceSpec(rows=16, columns=16, **spec)), source="test")


def build_territory(database: Database, tmp_path: Path) -> Territory:
    settings = Settings(data_dir=tmp_path, security=SecuritySettings(max_failed_logins=20))
    ctx = Context(settings=settings, db=database, blobs=FileSystemBlobStore(tmp_path / "blobs"))
    names = {"nord": "CHU Nord", "sud": "Clinique " + EVIL, "est": "Imagerie Est"}
    facs = {slug: facilities.add_facility(ctx, OPERATOR, slug=slug, name=names[slug], issuer=slug.upper())
            for slug in ("nord", "sud", "est")}
    t = Territory(ctx, facs)
    facilities.add_node(ctx, OPERATOR, ae_title="NORD_PACS", host="127.0.0.1", port=11112, facility_slug="nord",
                        permissions=frozenset(Permission), description="PACS " + EVIL)
    facilities.add_node(ctx, OPERATOR, ae_title="SUD_PACS", host="127.0.0.1", port=11113, facility_slug="sud",
                        permissions=frozenset(Permission), tls_fingerprint="ab" * 32)
    for username, (role, slugs) in USERS.items():
        users.create_user(ctx, OPERATOR, username=username, password=PASSWORD, roles=frozenset({role}),
                          facilities=list(slugs), display_name=f"{username} {EVIL}")
    alice = {"patient_name": "DURAND^ALICE", "birth_date": "19800101", "sex": "F",
             "other_patient_ids": (ins_identifier(INS),)}
    _store(t, "nord", patient_id="N1", modality="CT", study_description="CT THORAX", **alice)
    _store(t, "sud", patient_id="S1", modality="MR", study_description="IRM GENOU", **alice)
    _store(t, "nord", patient_id="100200", patient_name="DUBOIS^PIERRE", birth_date="19550730",
           modality="CT", study_description="CT ABDOMEN")
    luc = {"patient_name": "BERNARD^LUC", "birth_date": "19820305", "sex": "M"}
    _store(t, "sud", patient_id="CS-10001", modality="DX", **luc)
    _store(t, "est", patient_id="IE-6120", modality="US", **luc)
    t.persons = {"alice": t.person_of("nord", "N1"), "pierre": t.person_of("nord", "100200"),
                 "luc-sud": t.person_of("sud", "CS-10001"), "luc-est": t.person_of("est", "IE-6120")}
    t.break_glass = grants.break_glass(ctx, t.actor("clin.sud"), t.persons["pierre"],
                                       reason="Urgence vitale " + EVIL)
    return t


@pytest.fixture
def territory(database: Database, tmp_path: Path) -> Territory:
    return build_territory(database, tmp_path)


class Browser:
    """One signed-in user's cookie jar."""

    def __init__(self, t: Territory, username: str | None = None, language: str = "fr") -> None:
        self.client = TestClient(create_app(t.ctx), base_url=ORIGIN, raise_server_exceptions=False,
                                 follow_redirects=False, headers={"Accept-Language": language})
        if username is not None:
            page = self.client.get("/portal/login")
            r = self.client.post("/portal/login", data={"csrf": csrf_of(page.text), "username": username,
                                                        "password": PASSWORD, "next": "/portal/admin"})
            assert r.status_code == 303, r.text

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.client.get(path, **kwargs)

    def csrf(self, path: str = "/portal/admin") -> str:
        return csrf_of(self.get(path).text)

    def post(self, path: str, data: dict[str, str], *, token: str | None = None, **kwargs: Any) -> Any:
        fields = {"csrf": self.csrf() if token is None else token, **data}
        return self.client.post(path, data=fields, **kwargs)

    def close(self) -> None:
        self.client.close()


@pytest.fixture
def browse(territory: Territory) -> Iterator[Any]:
    opened: list[Browser] = []

    def open_(username: str | None = None, language: str = "fr") -> Browser:
        b = Browser(territory, username, language)
        opened.append(b)
        return b

    yield open_
    for b in opened:
        b.close()


def csrf_of(text: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', text)
    assert found, "no CSRF field"
    return found.group(1)


def done_of(r: Any) -> str:
    """The result key a form's redirect names."""
    assert r.status_code == 303, (r.status_code, r.text[:500])
    found = re.search(r"[?&]done=([a-z_.-]+)", r.headers["location"])
    assert found, r.headers["location"]
    return found.group(1)


def text_of(page: str) -> str:
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page)))


def refused(r: Any) -> bool:
    """The forbidden page: 403 with the catalogue's message."""
    return r.status_code == 403 and "Vous n'êtes pas autorisé" in html.unescape(r.text)


# -- who reaches what ---------------------------------------------------------------------


def test_each_page_answers_only_the_roles_whose_service_allows_it(territory: Territory, browse: Any) -> None:
    stranger = browse()
    for path in [*PAGES, "/portal/admin"]:
        r = stranger.get(path)
        assert r.status_code == 303 and r.headers["location"].startswith("/portal/login?next="), path
    for username in USERS:
        b = browse(username)
        for path, allowed in PAGES.items():
            r = b.get(path)
            expected = 200 if username in allowed else 403
            assert r.status_code == expected, (username, path, r.status_code)
            if expected == 403:
                assert refused(r), (username, path)
            elif not path.endswith(".csv"):
                assert r.headers["cache-control"] == "no-store"
                assert "script-src 'none'" in r.headers["content-security-policy"]
        # the access report the review links to: auditors and admins of a facility knowing the
        # person (the territory admin's is every facility); other admins: no such person
        report = b.get(f"/portal/admin/audit/persons/{territory.persons['pierre']}")
        expected = 200 if username in {"audit.nord", "admin.nord", "admin.territoire"} else (
            404 if username in {"admin.est", "admin.sud"} else 403)
        assert report.status_code == expected, (username, report.status_code)


def test_the_menu_shows_the_sections_of_the_roles(browse: Any) -> None:
    expected = {
        "admin.nord": ["facilities", "users", "break-glass", "usage"],
        "admin.territoire": ["facilities", "users", "usage"],
        "ident.nord": ["identity"],
        "audit.nord": ["audit"],
    }
    for username, sections in expected.items():
        r = browse(username).get("/portal/admin")
        assert r.status_code == 200
        menu = re.search(r'<nav class="admin-menu".*?</nav>', r.text, re.S)
        assert menu is not None
        assert re.findall(r'href="/portal/admin/([a-z-]+)"', menu.group(0)) == sections, username
    for username in ("clin.nord", "radio.nord", "manip.nord"):
        assert browse(username).get("/portal/admin").status_code == 403


# -- facilities and nodes -------------------------------------------------------------------


def test_facility_admin_manages_the_nodes_of_its_facility_only(territory: Territory, browse: Any) -> None:
    b = browse("admin.nord")
    page = b.get("/portal/admin/facilities")
    assert 'data-facility="nord"' in page.text and 'data-facility="sud"' not in page.text
    assert 'data-ae="NORD_PACS"' in page.text and "SUD_PACS" not in page.text
    assert "/portal/admin/facilities/add" not in page.text  # facilities: the territory admin's
    r = b.post("/portal/admin/nodes/add", {"facility": "nord", "ae_title": "NORD_CT2", "host": "10.0.0.7",
                                           "port": "104", "perm-store": "on", "description": "CT 2"})
    assert done_of(r) == "admin.ok.node_added"
    assert territory.node("NORD_CT2").permissions == {Permission.STORE}
    assert "Nœud DICOM ajouté." in b.get(r.headers["location"]).text
    r = b.post("/portal/admin/nodes/permissions", {"ae_title": "NORD_CT2", "perm-store": "on", "perm-query": "on"})
    assert done_of(r) == "admin.ok.node_permissions"
    changed = territory.node("NORD_CT2")
    assert changed.permissions == {Permission.STORE, Permission.QUERY}
    assert (changed.host, changed.port, changed.description) == ("10.0.0.7", 104, "CT 2")
    assert done_of(b.post("/portal/admin/nodes/add", {"facility": "nord", "ae_title": "NORD_CT2", "host": "x",
                                                      "port": "104"})) == "admin.error.exists"
    assert done_of(b.post("/portal/admin/nodes/add", {"facility": "nord", "ae_title": "BAD\\AE", "host": "x",
                                                      "port": "104"})) == "admin.error.invalid"
    assert done_of(b.post("/portal/admin/nodes/add", {"facility": "nord", "ae_title": "OK_AE", "host": "x",
                                                      "port": "99999"})) == "admin.error.port"
    assert done_of(b.post("/portal/admin/nodes/remove", {"ae_title": "NORD_CT2"})) == "admin.ok.node_removed"
    assert territory.node("NORD_CT2") is None
    assert [e.object_id for e in territory.events("node-add")][-1:] == ["NORD_CT2"]
    assert [(e.object_id, e.detail["permissions"]) for e in territory.events("node-permissions")] == [
        ("NORD_CT2", ["query", "store"])]
    assert "NORD_CT2" in [e.object_id for e in territory.events("node-remove")]
    # another facility's nodes and the facilities themselves: refused, nothing done
    changes = ("node-add", "node-remove", "node-permissions")
    before = sum(len(territory.events(a)) for a in changes)
    for path, data in (("/portal/admin/nodes/add", {"facility": "sud", "ae_title": "SUD_X", "host": "h",
                                                    "port": "104"}),
                       ("/portal/admin/nodes/remove", {"ae_title": "SUD_PACS"}),
                       ("/portal/admin/nodes/permissions", {"ae_title": "SUD_PACS"}),
                       ("/portal/admin/facilities/tls", {"facility": "sud", "require": "on"}),
                       ("/portal/admin/facilities/add", {"slug": "ouest", "name": "Ouest", "issuer": "OUEST"})):
        assert refused(b.post(path, data)), path
    assert territory.node("SUD_PACS") is not None and territory.node("SUD_PACS").permissions == set(Permission)
    assert territory.node("SUD_X") is None
    assert not territory.facilities["sud"].require_tls
    assert "ouest" not in {f.slug for f in facilities.list_facilities(territory.ctx)}
    assert sum(len(territory.events(a)) for a in changes) == before
    # an unknown node is "not found", not a crash
    assert done_of(b.post("/portal/admin/nodes/remove", {"ae_title": "NOPE"})) == "admin.error.not_found"


def test_tls_state_and_the_territory_admin(territory: Territory, browse: Any) -> None:
    b = browse("admin.territoire")
    page = b.get("/portal/admin/facilities")
    assert all(f'data-facility="{slug}"' in page.text for slug in ("nord", "sud", "est"))
    assert 'data-required="no"' in page.text
    assert "abababab…abababab" in page.text  # SUD_PACS's bound certificate
    assert done_of(b.post("/portal/admin/facilities/tls", {"facility": "sud", "require": "on"})) == \
        "admin.ok.tls_required"
    assert facilities.get_facility(territory.ctx, "sud").require_tls
    assert 'data-required="yes"' in b.get("/portal/admin/facilities").text
    assert [e.detail["require_tls"] for e in territory.events("facility-require-tls")] == [True]
    r = b.post("/portal/admin/facilities/add", {"slug": "ouest", "name": "Clinique de l'Ouest", "issuer": "OUEST"})
    assert done_of(r) == "admin.ok.facility_added"
    assert facilities.get_facility(territory.ctx, "ouest").name == "Clinique de l'Ouest"
    assert done_of(b.post("/portal/admin/facilities/add", {"slug": "Bad Slug", "name": "x", "issuer": "y"})) == \
        "admin.error.invalid"
    # a facility admin toggles its own facility's TLS
    admin = browse("admin.nord")
    assert done_of(admin.post("/portal/admin/facilities/tls", {"facility": "nord", "require": "on"})) == \
        "admin.ok.tls_required"
    assert facilities.get_facility(territory.ctx, "nord").require_tls


# -- users ----------------------------------------------------------------------------------


def test_users_are_created_changed_and_disabled_through_the_service(territory: Territory, browse: Any) -> None:
    b = browse("admin.nord")
    page = b.get("/portal/admin/users")
    listed = set(re.findall(r'data-user="([^"]+)"', page.text))
    assert listed == {u for u, (_, slugs) in USERS.items() if "nord" in slugs}
    assert "argon2" not in page.text
    assert 'name="role-territory-admin"' not in page.text  # not the facility admin's to give
    r = b.post("/portal/admin/users/create", {"username": "radio2.nord", "display_name": "Dr Radio",
                                              "password": "a brand new password", "role-radiologist": "on",
                                              "facilities": "nord"})
    assert done_of(r) == "admin.ok.user_created"
    new = Browser(territory)
    page = new.get("/portal/login")
    ok = new.client.post("/portal/login", data={"csrf": csrf_of(page.text), "username": "radio2.nord",
                                                "password": "a brand new password"})
    assert ok.status_code == 303
    new.close()
    assert done_of(b.post("/portal/admin/users/roles", {"username": "radio2.nord", "role-radiologist": "on",
                                                        "role-clinician": "on"})) == "admin.ok.user_roles"
    assert users.get_user(territory.ctx, "radio2.nord").roles == {Role.RADIOLOGIST, Role.CLINICIAN}
    assert done_of(b.post("/portal/admin/users/disable", {"username": "radio2.nord"})) == "admin.ok.user_disabled"
    assert not users.get_user(territory.ctx, "radio2.nord").active
    assert 'data-state="disabled"' in b.get("/portal/admin/users").text
    assert done_of(b.post("/portal/admin/users/enable", {"username": "radio2.nord"})) == "admin.ok.user_enabled"
    assert done_of(b.post("/portal/admin/users/password", {"username": "radio2.nord", "password": "short"})) == \
        "admin.error.password"
    assert done_of(b.post("/portal/admin/users/password", {"username": "radio2.nord",
                                                           "password": "another long password"})) == \
        "admin.ok.user_password"
    assert done_of(b.post("/portal/admin/users/create", {"username": "Bad Name", "password": "x" * 12})) == \
        "admin.error.username"
    assert done_of(b.post("/portal/admin/users/create", {"username": "radio2.nord", "password": "x" * 12,
                                                         "facilities": "nord"})) == "admin.error.exists"
    actions = [e.action for e in territory.events("user-create")] + [e.action for e in territory.events("user-roles")]
    assert "user-create" in actions and "user-roles" in actions
    # refused by the service: another facility's user, a territory admin, a user of no facility
    for path, data in (("/portal/admin/users/disable", {"username": "clin.sud"}),
                       ("/portal/admin/users/create", {"username": "boss", "password": "x" * 12,
                                                       "role-territory-admin": "on"}),
                       ("/portal/admin/users/create", {"username": "intruder", "password": "x" * 12,
                                                       "role-clinician": "on", "facilities": "sud"}),
                       ("/portal/admin/users/facilities", {"username": "clin.nord", "facilities": "nord sud"})):
        assert b.post(path, data).status_code == 403, path
    assert users.get_user(territory.ctx, "clin.sud").active
    assert users.get_user(territory.ctx, "boss") is None and users.get_user(territory.ctx, "intruder") is None
    assert [f.slug for f in users.get_user(territory.ctx, "clin.nord").facilities] == ["nord"]
    # the territory admin manages everyone
    top = browse("admin.territoire")
    assert set(re.findall(r'data-user="([^"]+)"', top.get("/portal/admin/users").text)) >= set(USERS)
    assert done_of(top.post("/portal/admin/users/facilities", {"username": "clin.nord",
                                                               "facilities": "nord, sud"})) == \
        "admin.ok.user_facilities"
    assert [f.slug for f in users.get_user(territory.ctx, "clin.nord").facilities] == ["nord", "sud"]


# -- identity and break-the-glass -------------------------------------------------------------


def test_reconciliation_side_by_side_then_link_with_a_reason(territory: Territory, browse: Any) -> None:
    assert "data-candidate" not in browse("ident.nord").get("/portal/admin/identity").text  # not nord's
    b = browse("ident.est")
    page = b.get("/portal/admin/identity")
    [candidate] = re.findall(r'data-candidate="(\d+)"', page.text)
    text = text_of(page.text)
    assert "est:IE-6120" in text and f"n° {territory.persons['luc-sud']}" in text
    assert text.count("BERNARD, LUC") == 2 and "05/03/1982" in text and "CS-10001" in text
    assert 'data-compare="same"' in page.text and 'data-compare="diff"' not in page.text
    assert "Score" in text and "identique" in text
    assert done_of(b.post(f"/portal/admin/identity/{candidate}/decide", {"decision": "link", "reason": " "})) == \
        "error.reason_required"
    assert territory.person_of("est", "IE-6120") == territory.persons["luc-est"]
    r = b.post(f"/portal/admin/identity/{candidate}/decide", {"decision": "link", "reason": "Même patient, "
                                                                                            "vérifié au dossier"})
    assert done_of(r) == "admin.ok.candidate_link"
    assert territory.person_of("est", "IE-6120") == territory.persons["luc-sud"]
    [event] = territory.events("reconcile-link")
    assert event.detail["reason"] == "Même patient, vérifié au dossier" and event.actor_name == "ident.est"
    assert "data-candidate" not in b.get("/portal/admin/identity").text
    assert f'data-candidate="{candidate}"' in b.get("/portal/admin/identity?status=linked").text
    assert done_of(b.post(f"/portal/admin/identity/{candidate}/decide", {"decision": "reject",
                                                                         "reason": "oops"})) == "admin.error.conflict"
    assert browse("ident.nord").post(f"/portal/admin/identity/{candidate}/decide",
                                     {"decision": "link", "reason": "x"}).status_code == 403
    assert done_of(b.post("/portal/admin/identity/999999/decide", {"decision": "link", "reason": "x"})) == \
        "admin.error.not_found"


def test_break_glass_review(territory: Territory, browse: Any) -> None:
    assert "data-grant" not in browse("admin.est").get("/portal/admin/break-glass").text
    b = browse("admin.nord")
    page = b.get("/portal/admin/break-glass")
    assert f'data-grant="{territory.break_glass}"' in page.text
    text = text_of(page.text)
    assert "clin.sud" in text and "Urgence vitale" in text and f"#{territory.persons['pierre']}" in text
    assert "en cours" in text
    path = f"/portal/admin/break-glass/{territory.break_glass}/review"
    assert done_of(b.post(path, {"note": ""})) == "error.reason_required"
    assert done_of(b.post(path, {"note": "Appel du SAMU confirmé"})) == "admin.ok.reviewed"
    assert f'data-grant="{territory.break_glass}"' not in b.get("/portal/admin/break-glass").text
    shown = b.get("/portal/admin/break-glass?all=1").text
    assert "Appel du SAMU confirmé" in shown and 'data-reviewed="yes"' in shown
    [event] = territory.events("break-glass-reviewed")
    assert event.detail["note"] == "Appel du SAMU confirmé" and event.actor_name == "admin.nord"
    assert browse("admin.est").post(path, {"note": "x"}).status_code == 303  # not found for est: a message
    assert browse("clin.nord").post(path, {"note": "x"}).status_code == 403
    # the person's access report, without staff names for the admin
    report = b.get(f"/portal/admin/audit/persons/{territory.persons['pierre']}")
    assert report.status_code == 200
    assert 'data-actor="staff"' in report.text and 'data-actor="clin.sud"' not in report.text


# -- audit ------------------------------------------------------------------------------------


def test_audit_search_filters_and_pages(territory: Territory, browse: Any) -> None:
    nord = territory.facilities["nord"]
    for n in range(60):
        audit.record_alone(territory.ctx, Actor.system("batch", facility=nord), "check", object_id=f"run-{n}")
    audit.record_alone(territory.ctx, Actor.system("batch", facility=territory.facilities["sud"]), "check",
                       object_id="sud-run")
    b = browse("audit.nord")
    today = datetime.now(UTC).date().isoformat()
    first = b.get(f"/portal/admin/audit?since={today}&until={today}&action=check")
    assert first.status_code == 200
    ids = re.findall(r'data-event="(\d+)" data-action="check"', first.text)
    assert len(ids) == 50 and ids == sorted(ids, key=int)
    assert "sud-run" not in first.text  # another facility's events
    nxt = re.search(r'href="([^"]+)" rel="next"', first.text)
    assert nxt
    second = b.get(nxt.group(1).replace("&amp;", "&"))
    more = re.findall(r'data-event="(\d+)" data-action="check"', second.text)
    assert len(more) == 10 and int(more[0]) > int(ids[-1])
    assert 'rel="next"' not in second.text
    by_actor = b.get(f"/portal/admin/audit?since={today}&until={today}&actor=audit.nord")
    assert set(re.findall(r'data-action="([a-z-]+)"', by_actor.text)) == {"login", "audit-search"}
    person = territory.persons["pierre"]
    by_person = b.get(f"/portal/admin/audit?since={today}&until={today}&person={person}")
    assert set(re.findall(r'data-action="([a-z-]+)"', by_person.text)) == {"store"}
    assert b.get("/portal/admin/audit?since=2026-02-30").status_code == 400
    assert b.get("/portal/admin/audit?since=x&person=abc").status_code == 400
    searches = territory.events("audit-search")
    assert len(searches) == 4 and all(e.actor_name == "audit.nord" for e in searches)
    # the patient access report, with staff names for the auditor
    report = b.get(f"/portal/admin/audit/persons?person={person}")
    assert report.status_code == 303 and report.headers["location"] == f"/portal/admin/audit/persons/{person}"
    page = b.get(report.headers["location"])
    assert page.status_code == 200 and 'data-actor="clin.sud"' in page.text and "bris de glace" in page.text
    assert territory.events("audit-report")[-1].person_id == person
    assert b.get("/portal/admin/audit/persons/0").status_code == 404
    assert b.get("/portal/admin/audit/persons/abc").status_code == 404


# -- usage --------------------------------------------------------------------------------------


def test_usage_table_and_csv_by_scope(territory: Territory, browse: Any) -> None:
    month = datetime.now(UTC).strftime("%Y-%m")
    top = browse("admin.territoire")
    page = top.get(f"/portal/admin/usage?since={month}&until={month}")
    assert page.status_code == 200
    assert set(re.findall(r'data-month="' + month + r'" data-facility="([a-z]*)"', page.text)) == {
        "nord", "sud", "est", ""}
    r = top.get(f"/portal/admin/usage.csv?since={month}&until={month}")
    assert r.status_code == 200 and r.headers["content-type"] == "text/csv; charset=utf-8"
    assert r.headers["content-disposition"] == f'attachment; filename="coffre-usage-{month}-{month}.csv"'
    rows = {row["facility"]: row for row in csv.DictReader(io.StringIO(r.text))}
    assert set(rows) == {"nord", "sud", "est"}
    assert (rows["nord"]["studies"], rows["nord"]["instances"]) == ("2", "2")
    assert (rows["sud"]["studies"], rows["est"]["studies"]) == ("2", "1")
    assert int(rows["nord"]["bytes_stored"]) == int(rows["nord"]["bytes_received"]) > 0
    assert rows["sud"]["facility_name"] == "Clinique " + EVIL  # (no formula: it starts with a letter)
    own = browse("admin.nord").get(f"/portal/admin/usage.csv?since={month}&until={month}")
    assert [row["facility"] for row in csv.DictReader(io.StringIO(own.text))] == ["nord"]
    nord = browse("admin.nord")
    default = nord.get("/portal/admin/usage")  # the last 12 months, empty ones left out of the table
    assert re.findall(r'<tr data-month="([0-9-]+)"', default.text) == [month]
    assert "ne sont pas affichés" in html.unescape(default.text)
    assert len(list(csv.DictReader(io.StringIO(nord.get("/portal/admin/usage.csv").text)))) == 12
    empty = nord.get("/portal/admin/usage?since=2020-01&until=2020-12")
    assert "<tr data-month" not in empty.text and "Rien de stocké ni reçu" in html.unescape(empty.text)
    assert top.get("/portal/admin/usage?since=2026-13").status_code == 400
    assert top.get("/portal/admin/usage?since=2000-01&until=2026-01").status_code == 400


# -- CSRF, escaping, languages ------------------------------------------------------------------


def test_forms_refuse_requests_without_the_sessions_token(territory: Territory, browse: Any) -> None:
    b = browse("admin.nord")
    other = browse("admin.territoire")
    data = {"ae_title": "NORD_PACS"}
    path = "/portal/admin/nodes/remove"
    assert b.client.post(path, data=data).status_code == 403  # no token
    assert b.post(path, data, token="x" * 43).status_code == 403  # a wrong one
    assert b.post(path, data, token=other.csrf()).status_code == 403  # another session's
    assert b.post(path, data, headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
    assert b.post(path, data, headers={"Origin": "https://evil.example"}).status_code == 403
    assert b.client.post(path, content=b'{"csrf": "x"}', headers={"Content-Type": "application/json"}).status_code \
        == 403
    stranger = browse()
    r = stranger.client.post(path, data={**data, "csrf": b.csrf()})
    assert r.status_code == 303 and r.headers["location"].startswith("/portal/login")
    assert territory.node("NORD_PACS") is not None
    assert not territory.events("node-remove")
    for path, fields in (("/portal/admin/users/disable", {"username": "clin.nord"}),
                         (f"/portal/admin/break-glass/{territory.break_glass}/review", {"note": "x"})):
        assert b.client.post(path, data=fields).status_code == 403
    assert users.get_user(territory.ctx, "clin.nord").active
    assert not territory.events("break-glass-reviewed")


def test_stored_values_are_escaped(territory: Territory, browse: Any) -> None:
    pages = [
        (browse("admin.territoire"), "/portal/admin/facilities"),
        (browse("admin.nord"), "/portal/admin/facilities"),
        (browse("admin.nord"), "/portal/admin/users"),
        (browse("admin.nord"), "/portal/admin/break-glass"),
        (browse("admin.territoire"), "/portal/admin/usage"),
        (browse("audit.nord"), "/portal/admin/audit?actor=" + urllib.parse.quote(EVIL)),
    ]
    for b, path in pages:
        r = b.get(path)
        assert r.status_code == 200, path
        assert "<script>alert(1)" not in r.text, path
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in r.text, path
        assert "<script" not in r.text and " style=" not in r.text and " on" + "click" not in r.text
    # the result key of a crafted link shows only catalogue messages
    b = browse("admin.nord")
    assert "<b>" not in b.get("/portal/admin/facilities?done=<b>hi</b>").text
    assert 'data-result' not in b.get("/portal/admin/facilities?done=login.title").text


def test_english_pages_and_a_complete_catalogue(browse: Any) -> None:
    r = browse("admin.nord", "en").get("/portal/admin")
    assert '<html lang="en"' in r.text and "Break-the-glass review" in r.text
    r = browse("admin.nord", "fr").get("/portal/admin")
    assert '<html lang="fr"' in r.text and "Revue des bris de glace" in r.text
    placeholders = re.compile(r"\{(\w+)\}")
    for key, (fr, en) in ADMIN_MESSAGES.items():
        assert fr.strip() and en.strip(), key
        assert set(placeholders.findall(fr)) == set(placeholders.findall(en)), key
        assert MESSAGES[key] == (fr, en)
    used: set[str] = set()
    for path in PORTAL_SRC.glob("admin*.py"):
        text = path.read_text()
        used |= set(re.findall(r"""\bt\(\s*f?["']([a-z_.-]+)""", text))  # f-strings: the prefix
        used |= set(re.findall(r'"(admin\.[a-z_]+\.[a-z_.-]+)"', text))
    assert len(used) > 100
    missing = {k for k in used if k not in MESSAGES and not (k.endswith((".", "_")) and any(
        m.startswith(k) for m in MESSAGES))}
    assert missing == set()
    for family in ("admin.role.", "admin.perm.", "admin.help.", "admin.nav."):
        assert any(k.startswith(family) for k in ADMIN_MESSAGES)
    assert {f"admin.role.{r.value}" for r in Role} <= set(ADMIN_MESSAGES)
    assert {f"admin.perm.{p.value}" for p in Permission} <= set(ADMIN_MESSAGES)
    assert {f"admin.ok.candidate_{d}" for d in identity.DECISIONS} <= set(ADMIN_MESSAGES)
