"""The territory portal in headless Chromium against a real ``coffre serve`` on the demo
territory (its own data folder: the grants made here stay here).

A clinician of CHU Nord signs in, finds Claire MARTIN, opens her timeline, records a
care relationship and sees Clinique du Sud's MR appear; Imagerie de l'Est's patients
stay absent until she breaks the glass, then show with the marker; everything is in
the audit trail. Pages run under their Content Security Policy (a violation fails the
test) and a stored ``<script>`` never runs.

Screenshots: set ``PORTAL_SCREENSHOTS=1`` to (re)write ``docs/img/portal-*.png``.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from coffre.app import build_context
from coffre.dicom.synthetic import InstanceSpec, make_instance
from coffre.index import audit as audit_index
from coffre.index.audit import AuditRow
from coffre.settings import load_settings
from ui.conftest import demo_server

pytestmark = pytest.mark.ui

IMG = Path(__file__).parents[2] / "docs" / "img"
VIEWPORT = {"width": 1200, "height": 900}
EVIL = "<script>alert(1)</script>^Zoe \"O'Hara\""
#: reports Content Security Policy violations to the console (an init script runs
#: outside the page's policy, through the DevTools protocol)
CSP_PROBE = ("document.addEventListener('securitypolicyviolation', e => "
             "console.error('CSP-VIOLATION ' + e.violatedDirective + ' ' + e.blockedURI))")


@dataclass
class Portal:
    data: Path
    url: str
    tokens: dict[str, str]

    def events(self, action: str) -> list[AuditRow]:
        ctx = build_context(load_settings(self.data), migrate=False)
        try:
            with ctx.db.read() as tx:
                return audit_index.list_events(tx, action=action, limit=100_000)
        finally:
            ctx.close()

    def study_of(self, facility: str, **keys: str) -> str:
        r = httpx.get(self.url + "/dicomweb/studies", params=keys, timeout=30,
                      headers={"Authorization": f"Bearer {self.tokens[facility]}"})
        assert r.status_code == 200, r.text
        [study] = r.json()
        return str(study["0020000D"]["Value"][0])


@pytest.fixture(scope="module")
def portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Portal]:
    with demo_server(tmp_path_factory.mktemp("portal") / "data") as (data, url, tokens, _proc, _stderr):
        yield Portal(data, url, tokens)


@dataclass
class Browsing:
    page: Any
    context: Any
    violations: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


@pytest.fixture
def browsing(browser: Any) -> Iterator[Browsing]:
    """A fresh French-speaking browser (no cookie), its CSP violations and dialogs logged."""
    context = browser.new_context(viewport=VIEWPORT, locale="fr-FR")
    page = context.new_page()
    page.add_init_script(CSP_PROBE)
    seen = Browsing(page, context)
    page.on("console", lambda m: seen.violations.append(m.text) if m.text.startswith("CSP-VIOLATION") else None)
    page.on("dialog", lambda d: (seen.dialogs.append(d.message), d.dismiss()))
    page.on("response", lambda r: seen.failed.append(f"{r.status} {r.url}") if r.status >= 500 else None)
    try:
        yield seen
    finally:
        context.close()
    assert not seen.violations, seen.violations
    assert not seen.dialogs, seen.dialogs
    assert not seen.failed, seen.failed


def screenshot(page: Any, name: str) -> None:
    shot = page.screenshot(full_page=True)
    assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 10_000
    if os.environ.get("PORTAL_SCREENSHOTS") == "1":
        IMG.mkdir(parents=True, exist_ok=True)
        (IMG / f"{name}.png").write_bytes(shot)


def sign_in(b: Browsing, portal: Portal, username: str, password: str, *, shot: bool = False) -> None:
    b.page.goto(portal.url + "/portal/patients")
    assert "/portal/login?next=" in b.page.url
    assert b.page.get_attribute("html", "lang") == "fr"
    if shot:
        screenshot(b.page, "portal-login")
    b.page.fill("#username", username)
    b.page.fill("#password", password)
    b.page.click("main button[type=submit]")
    b.page.wait_for_url(re.compile(r"/portal/patients$"))


def search(b: Browsing, text: str) -> None:
    b.page.fill("#q", text)
    b.page.click("form[role=search] button")
    b.page.wait_for_load_state()


def study_titles(page: Any) -> list[str]:
    return [t.strip() for t in page.locator("ol.timeline li.study h3").all_inner_texts()]


def thumbnails_loaded(page: Any) -> list[int]:
    page.wait_for_load_state("networkidle")
    widths: list[int] = page.eval_on_selector_all(
        "ol.timeline img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : -1)")
    return widths


def test_care_relationship_opens_the_other_facilitys_studies(browsing: Browsing, portal: Portal) -> None:
    b = browsing
    sign_in(b, portal, "clinicien.chu-nord", "demo-clinician", shot=True)
    search(b, "martin")
    person = b.page.locator("ul.persons li.person")
    assert person.count() == 1
    card = person.inner_text()
    assert "MARTIN, CLAIRE" in card and "CN100234" in card and "CS-77812" not in card
    screenshot(b.page, "portal-search")

    b.page.click("ul.persons li.person h3 a")
    b.page.wait_for_url(re.compile(r"/portal/persons/\d+$"))
    assert study_titles(b.page) == ["RADIO THORAX", "CT THORAX"]
    assert all(w > 0 for w in thumbnails_loaded(b.page))

    b.page.click("details.dialog summary:has-text('relation de soins')")
    b.page.fill("#care-reason", "Suivi orthopédique du genou")
    b.page.click("details.dialog[open] button[type=submit]")
    b.page.wait_for_load_state()
    assert "Relation de soins enregistrée." in b.page.inner_text(".flash.ok")
    assert study_titles(b.page) == ["IRM GENOU DROIT", "RADIO THORAX", "CT THORAX"]
    mr = b.page.locator("li.study").first
    assert "Clinique du Sud" in mr.inner_text() and "RELATION DE SOINS" in mr.inner_text().upper()
    assert "pas de compte rendu" in mr.inner_text()
    widths = thumbnails_loaded(b.page)
    assert len(widths) == 3 and all(w > 0 for w in widths)
    assert mr.locator("a:has-text('Comparer')").count() == 0  # no earlier knee study
    chest = b.page.locator("li.study").nth(1)  # the chest X-ray, compared with the chest CT
    viewer = chest.locator("a:has-text('Ouvrir dans la visionneuse')").get_attribute("href")
    compare = chest.locator("a:has-text('Comparer')").get_attribute("href")
    ct_viewer = b.page.locator("li.study").nth(2).locator("a.button:not(.secondary)").get_attribute("href")
    assert re.fullmatch(r"/viewer\?StudyInstanceUIDs=[\d.]+", viewer)
    assert compare == viewer + "," + ct_viewer.split("=", 1)[1]
    screenshot(b.page, "portal-timeline")

    # the viewer accepts the portal's session (the same cookie): no second sign-in, and it
    # loads both studies of the comparison from Coffre's DICOMweb
    requested: list[str] = []
    b.page.on("request", lambda r: requested.append(r.url))
    response = b.page.goto(portal.url + compare)
    assert response is not None and response.status == 200
    assert "/viewer" in b.page.url and "/portal/" not in b.page.url
    both = compare.split("=", 1)[1].split(",")
    deadline = time.monotonic() + 60
    while not all(any(f"/dicomweb/studies/{uid}/" in u for u in requested) for uid in both):
        assert time.monotonic() < deadline, f"the viewer did not load both studies: {requested[-20:]}"
        b.page.wait_for_timeout(250)

    grants = [e for e in portal.events("grant-care") if e.actor_name == "clinicien.chu-nord"]
    assert len(grants) == 1 and grants[0].detail["reason"] == "Suivi orthopédique du genou"
    person_id = grants[0].person_id
    assert any(e.person_id == person_id for e in portal.events("timeline"))
    thumbs = [e for e in portal.events("portal-thumbnail") if e.person_id == person_id]
    assert {e.detail["access"] for e in thumbs} == {"own", "care"}
    assert any(e.outcome == "success" and e.object_id == "clinicien.chu-nord" for e in portal.events("login"))


def test_break_the_glass_shows_the_marker(browsing: Browsing, portal: Portal) -> None:
    b = browsing
    leroy_mr = portal.study_of("imagerie-est", PatientName="LEROY*", ModalitiesInStudy="MR")
    sign_in(b, portal, "radiologue.chu-nord", "demo-radiologist")
    search(b, "LEROY")
    assert b.page.locator("ul.persons li").count() == 0
    assert "Aucun patient" in b.page.inner_text("main")
    # denied data is absent data: the thumbnail of Imagerie de l'Est's study is a 404
    assert b.page.request.get(f"{portal.url}/portal/thumbnails/{leroy_mr}").status == 404

    search(b, "imagerie-est:100200")
    offer = b.page.locator(".card.warn")
    assert "bris de glace" in offer.inner_text()
    b.page.click(".card.warn button[type=submit]")  # no reason: the browser requires one
    assert "/portal/patients" in b.page.url and not portal.events("break-glass")
    b.page.fill("#btg-reason", "Patiente inconsciente aux urgences, antécédents inconnus")
    b.page.click(".card.warn button[type=submit]")
    b.page.wait_for_url(re.compile(r"/portal/persons/\d+$"))
    assert "Bris de glace enregistré" in b.page.inner_text(".flash.ok")
    assert study_titles(b.page) == ["IRM CEREBRALE", "ECHOGRAPHIE ABDOMINALE"]
    marked = b.page.locator("li.study.btg")
    assert marked.count() == 2
    assert "BRIS DE GLACE" in marked.first.inner_text().upper()
    assert "Centre d'imagerie de l'Est" in marked.first.inner_text()
    assert "Accès en bris de glace ouvert" in b.page.inner_text(".person-head")
    assert all(w > 0 for w in thumbnails_loaded(b.page))
    screenshot(b.page, "portal-break-glass")
    assert b.page.request.get(f"{portal.url}/portal/thumbnails/{leroy_mr}").status == 200

    [event] = [e for e in portal.events("break-glass") if e.actor_name == "radiologue.chu-nord"]
    assert event.outcome == "alert"
    assert event.detail["reason"] == "Patiente inconsciente aux urgences, antécédents inconnus"
    views = [e for e in portal.events("portal-thumbnail") if e.object_id == leroy_mr]
    assert len(views) >= 2 and {e.detail["access"] for e in views} == {"break-glass"}
    # the refused thumbnail before the grant left its trace too
    assert any(e.outcome == "no-match" for e in portal.events("portal-thumbnail"))


def test_a_stored_script_never_runs(browsing: Browsing, portal: Portal) -> None:
    boundary = uuid.uuid4().hex
    part = make_instance(InstanceSpec(patient_id="XSS-1", patient_name=EVIL, modality="CR", rows=32, columns=32,
                                      study_description='<img src=x onerror="alert(2)">', study_date="20250505"))
    body = (b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + part
            + b"\r\n--" + boundary.encode() + b"--\r\n")
    r = httpx.post(portal.url + "/dicomweb/studies", content=body, timeout=60, headers={
        "Authorization": f"Bearer {portal.tokens['chu-nord']}", "Accept": "application/dicom+json",
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    assert r.status_code == 200, r.text
    b = browsing
    sign_in(b, portal, "clinicien.chu-nord", "demo-clinician")
    search(b, "XSS-1")
    assert '<script>alert(1)</script>, Zoe "O\'Hara"' in b.page.inner_text("ul.persons")
    b.page.click("ul.persons li.person h3 a")
    b.page.wait_for_url(re.compile(r"/portal/persons/\d+$"))
    assert b.page.inner_text("h1") == '<script>alert(1)</script>, Zoe "O\'Hara"'
    assert study_titles(b.page) == ['<img src=x onerror="alert(2)">']
    assert b.page.locator("main script, main img[src=x]").count() == 0


def test_language_switch_and_sign_out(browsing: Browsing, portal: Portal) -> None:
    b = browsing
    sign_in(b, portal, "clinicien.clinique-sud", "demo-clinician")
    b.page.click("nav.lang a[hreflang=en]")
    b.page.wait_for_url(re.compile(r"/portal/patients$"))
    assert b.page.get_attribute("html", "lang") == "en"
    assert b.page.inner_text("h1") == "Patient search"
    search(b, "CS-77812")
    assert "Visible studies" in b.page.inner_text("ul.persons")
    b.page.click("nav.main button[type=submit]")  # sign out
    b.page.wait_for_url(re.compile(r"/portal/login$"))
    assert "You are signed out." in b.page.inner_text("main")
    b.page.goto(portal.url + "/portal/patients")
    assert "/portal/login?next=" in b.page.url
    cookies = {c["name"]: c for c in b.context.cookies()}
    assert "coffre_session" not in cookies
    assert cookies["coffre_lang"]["value"] == "en"
    logouts = [e for e in portal.events("logout") if e.actor_name == "clinicien.clinique-sud"]
    assert len(logouts) == 1
