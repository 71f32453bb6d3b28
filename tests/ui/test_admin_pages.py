"""The portal's admin pages in headless Chromium against a real ``coffre serve`` on the demo
territory (its own data folder: what is changed here stays here).

- ``clinicien.clinique-sud`` breaks the glass for CHU Nord's patient ``100200`` through
  the REST API (a token from ``coffre token --user``); ``admin.chu-nord`` finds the
  access in the break-the-glass review and marks it reviewed;
- ``identito.imagerie-est`` compares the demo's queued case (``IE-6120`` and Clinique du
  Sud's ``CS-10001``, Luc BERNARD) side by side and links them;
- ``auditeur.chu-nord`` searches the audit trail, pages through it and opens Claire
  MARTIN's access report;
- ``admin.territoire`` reads the usage table and downloads its CSV;
- ``admin.chu-nord`` adds a node and a user through the forms.

Pages run under their Content Security Policy (a violation fails the test).
Screenshots: set ``PORTAL_SCREENSHOTS=1`` to (re)write ``docs/img/admin-*.png``.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from coffre.app import build_context
from coffre.index import audit as audit_index
from coffre.index.audit import AuditRow
from coffre.index.persons import person_of_identity
from coffre.services import facilities
from coffre.settings import load_settings
from ui.conftest import demo_server
from ui.conftest import run_coffre as _coffre

pytestmark = pytest.mark.ui

IMG = Path(__file__).parents[2] / "docs" / "img"
VIEWPORT = {"width": 1280, "height": 900}
CSP_PROBE = ("document.addEventListener('securitypolicyviolation', e => "
             "console.error('CSP-VIOLATION ' + e.violatedDirective + ' ' + e.blockedURI))")
BTG_REASON = "Patient inconscient transféré aux urgences, antécédents inconnus"


@dataclass
class Archive:
    data: Path
    url: str
    tokens: dict[str, str]

    def _ctx(self) -> Any:
        return build_context(load_settings(self.data), migrate=False)

    def events(self, action: str) -> list[AuditRow]:
        ctx = self._ctx()
        try:
            with ctx.db.read() as tx:
                return audit_index.list_events(tx, action=action, limit=100_000)
        finally:
            ctx.close()

    def person_of(self, facility: str, patient_id: str) -> int:
        ctx = self._ctx()
        try:
            with ctx.db.read() as tx:
                found = person_of_identity(tx, facilities.get_facility(ctx, facility).id, patient_id)
        finally:
            ctx.close()
        assert found is not None
        return found


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    with demo_server(tmp_path_factory.mktemp("admin") / "data") as (data, url, tokens, _proc, _stderr):
        yield Archive(data, url, tokens)


@dataclass
class Browsing:
    page: Any
    context: Any
    violations: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


@pytest.fixture
def browsing(browser: Any) -> Iterator[Browsing]:
    """A fresh French-speaking browser (no cookie), its CSP violations and 5xx logged."""
    context = browser.new_context(viewport=VIEWPORT, locale="fr-FR", accept_downloads=True)
    page = context.new_page()
    page.add_init_script(CSP_PROBE)
    seen = Browsing(page, context)
    page.on("console", lambda m: seen.violations.append(m.text) if m.text.startswith("CSP-VIOLATION") else None)
    page.on("response", lambda r: seen.failed.append(f"{r.status} {r.url}") if r.status >= 500 else None)
    try:
        yield seen
    finally:
        context.close()
    assert not seen.violations, seen.violations
    assert not seen.failed, seen.failed


def screenshot(page: Any, name: str) -> None:
    shot = page.screenshot(full_page=True)
    assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 10_000
    if os.environ.get("PORTAL_SCREENSHOTS") == "1":
        IMG.mkdir(parents=True, exist_ok=True)
        (IMG / f"{name}.png").write_bytes(shot)


def sign_in(b: Browsing, archive: Archive, username: str, password: str, section: str) -> None:
    """Sign in from the admin home, then open ``section`` from the menu."""
    b.page.goto(archive.url + "/portal/admin")
    assert "/portal/login?next=" in b.page.url
    b.page.fill("#username", username)
    b.page.fill("#password", password)
    b.page.click("main button[type=submit]")
    b.page.wait_for_url(re.compile(r"/portal/admin$"))
    b.page.click(f'nav.admin-menu a:has-text("{section}")')
    b.page.wait_for_load_state()


def result(b: Browsing) -> str:
    text: str = b.page.inner_text("[data-result]")
    return text


def test_break_glass_review(browsing: Browsing, archive: Archive) -> None:
    token = _coffre("token", "--data", str(archive.data), "--user", "clinicien.clinique-sud").strip()
    r = httpx.post(archive.url + "/api/grants/break-glass", timeout=30, headers={"Authorization": f"Bearer {token}"},
                   json={"facility": "chu-nord", "patient_id": "100200", "reason": BTG_REASON})
    assert r.status_code == 201, r.text
    grant = r.json()["id"]
    b = browsing
    sign_in(b, archive, "admin.chu-nord", "demo-facility-admin", "Revue des bris de glace")
    row = b.page.locator(f"tr[data-grant='{grant}']")
    assert row.count() == 1
    text = row.inner_text()
    assert "clinicien.clinique-sud" in text and "clinique-sud" in text and BTG_REASON in text
    assert f"#{archive.person_of('chu-nord', '100200')}" in text and "EN COURS" in text.upper()
    screenshot(b.page, "admin-break-glass")

    row.locator("button[type=submit]").click()  # no note: the browser requires one
    assert not archive.events("break-glass-reviewed")
    row.locator("textarea").fill("Transfert depuis la Clinique du Sud confirmé par le SAMU")
    row.locator("button[type=submit]").click()
    b.page.wait_for_load_state()
    assert result(b) == "Accès marqué comme revu."
    assert b.page.locator(f"tr[data-grant='{grant}']").count() == 0
    b.page.click("a:has-text('Afficher aussi les accès déjà revus')")
    b.page.wait_for_load_state()
    assert "Revu par admin.chu-nord" in b.page.locator(f"tr[data-grant='{grant}']").inner_text()
    [event] = archive.events("break-glass-reviewed")
    assert event.actor_name == "admin.chu-nord" and event.object_id == str(grant)

    # what the access opened: the person's report, staff names hidden for an admin
    b.page.click(f"tr[data-grant='{grant}'] a")
    b.page.wait_for_url(re.compile(r"/portal/admin/audit/persons/\d+$"))
    assert b.page.locator("td[data-actor='staff']").count() >= 1
    assert b.page.locator("td[data-actor='clinicien.clinique-sud']").count() == 0


def test_reconciliation(browsing: Browsing, archive: Archive) -> None:
    incoming, candidate = archive.person_of("imagerie-est", "IE-6120"), archive.person_of("clinique-sud", "CS-10001")
    assert incoming != candidate
    b = browsing
    sign_in(b, archive, "identito.imagerie-est", "demo-identity-manager", "Rapprochement d'identités")
    card = b.page.locator("section.candidate")
    assert card.count() == 1
    table = card.locator("table.compare").inner_text()
    assert table.count("BERNARD, LUC") == 2 and "IE-6120" in table and "CS-10001" in table
    assert table.count("05/03/1982") == 2
    assert card.locator("td[data-compare=same]").count() == 3
    screenshot(b.page, "admin-identity")
    card.locator("textarea").fill("Même patient : carte vitale et date de naissance vérifiées")
    card.locator("button[value=link]").click()
    b.page.wait_for_load_state()
    assert result(b) == "Identité rattachée à la personne."
    assert b.page.locator("section.candidate").count() == 0
    assert archive.person_of("imagerie-est", "IE-6120") == candidate
    [event] = archive.events("reconcile-link")
    assert event.actor_name == "identito.imagerie-est"
    assert event.detail["reason"] == "Même patient : carte vitale et date de naissance vérifiées"
    b.page.click("nav.filters a:has-text('Rattachés')")
    b.page.wait_for_load_state()
    assert "Rattaché par user:identito.imagerie-est" in b.page.inner_text("section.candidate")


def test_audit_search_and_access_report(browsing: Browsing, archive: Archive) -> None:
    claire = archive.person_of("chu-nord", "CN100234")
    b = browsing
    # Claire MARTIN's studies queried by a CHU Nord clinician (for the report), a few times:
    # with the demo's own events, CHU Nord's week has more than one page
    token = _coffre("token", "--data", str(archive.data), "--user", "clinicien.chu-nord").strip()
    for _ in range(5):
        r = httpx.get(f"{archive.url}/dicomweb/studies?PatientID=CN100234", timeout=30,
                      headers={"Authorization": f"Bearer {token}", "Accept": "application/dicom+json"})
        assert r.status_code == 200 and r.json()
    sign_in(b, archive, "auditeur.chu-nord", "demo-auditor", "Journal d'audit")
    today = datetime.now(UTC).date().isoformat()
    assert b.page.input_value("#a-until") == today
    rows = b.page.locator("tr[data-event]")
    assert rows.count() == 50  # the first page of the week's CHU Nord events, oldest first
    first_ids = [int(i) for i in rows.evaluate_all("rs => rs.map(r => r.dataset.event)")]
    assert first_ids == sorted(first_ids)
    b.page.click("a[rel=next]")
    b.page.wait_for_load_state()
    more = [int(i) for i in b.page.locator("tr[data-event]").evaluate_all("rs => rs.map(r => r.dataset.event)")]
    assert more and min(more) > max(first_ids)
    b.page.fill("#a-action", "store")
    b.page.click("form[role=search] button[type=submit]")
    b.page.wait_for_load_state()
    assert b.page.locator("tr[data-action=store]").count() == 37  # CHU Nord's demo instances
    assert b.page.locator("tr[data-event]:not([data-action=store])").count() == 0
    b.page.fill("#a-action", "")
    b.page.fill("#a-actor", "clinicien.chu-nord")
    b.page.click("form[role=search] button[type=submit]")
    b.page.wait_for_load_state()
    actions = set(b.page.locator("tr[data-event]").evaluate_all("rs => rs.map(r => r.dataset.action)"))
    assert "query" in actions
    screenshot(b.page, "admin-audit")

    b.page.fill("#r-person", str(claire))
    b.page.click("form.inline-form button[type=submit]")
    b.page.wait_for_url(re.compile(rf"/portal/admin/audit/persons/{claire}$"))
    assert f"n° {claire}" in b.page.inner_text("h2")
    assert b.page.locator("td[data-actor='clinicien.chu-nord']").count() >= 1  # staff names for auditors
    assert "son établissement" in b.page.inner_text("table")
    screenshot(b.page, "admin-report")
    assert [e for e in archive.events("audit-report") if e.person_id == claire and e.actor_name == "auditeur.chu-nord"]


def test_usage_table_and_csv(browsing: Browsing, archive: Archive) -> None:
    b = browsing
    sign_in(b, archive, "admin.territoire", "demo-territory-admin", "Consommation")
    month = datetime.now(UTC).strftime("%Y-%m")  # the demo was loaded now
    current = b.page.locator(f"tr[data-month='{month}']")
    assert sorted(current.evaluate_all("rs => rs.map(r => r.dataset.facility)")) == [
        "", "chu-nord", "clinique-sud", "imagerie-est"]
    assert b.page.locator(f"tr[data-month='{month}'][data-facility='chu-nord'] td").nth(2).inner_text() == "4"
    screenshot(b.page, "admin-usage")
    with b.page.expect_download() as download_info:
        b.page.click("a[download]")
    download = download_info.value
    assert download.suggested_filename.startswith("coffre-usage-")
    rows = list(csv.DictReader(io.StringIO(Path(download.path()).read_text(encoding="utf-8"))))
    now = {r["facility"]: r for r in rows if r["month"] == month}
    assert set(now) == {"chu-nord", "clinique-sud", "imagerie-est"}
    assert now["chu-nord"]["studies"] == "4" and int(now["chu-nord"]["bytes_stored"]) > 0
    stored = b.page.locator(f"tr[data-month='{month}'][data-facility='chu-nord'] td[data-bytes]")
    assert stored.get_attribute("data-bytes") == now["chu-nord"]["bytes_stored"]


def test_nodes_and_users_forms(browsing: Browsing, archive: Archive) -> None:
    b = browsing
    sign_in(b, archive, "admin.chu-nord", "demo-facility-admin", "Établissements et nœuds")
    assert b.page.locator("section.facility").count() == 1
    card = b.page.locator("section[data-facility=chu-nord]")
    card.locator("details.dialog summary:has-text('Ajouter un nœud')").click()
    b.page.fill("#add-chu-nord-ae", "CHUN_US2")
    b.page.fill("#add-chu-nord-host", "10.1.2.3")
    b.page.fill("#add-chu-nord-port", "11204")
    b.page.fill("#add-chu-nord-description", "Échographe des urgences")
    card.locator("details[open] button[type=submit]").click()
    b.page.wait_for_load_state()
    assert result(b) == "Nœud DICOM ajouté."
    row = b.page.locator("tr[data-ae=CHUN_US2]")
    assert "10.1.2.3:11204" in row.inner_text()
    row.locator("input[name=perm-query]").check()
    row.locator("form.inline button[type=submit]").click()
    b.page.wait_for_load_state()
    assert result(b) == "Droits du nœud modifiés."
    assert b.page.locator("tr[data-ae=CHUN_US2] input[name=perm-query]").is_checked()
    screenshot(b.page, "admin-facilities")

    b.page.click("nav.admin-menu a:has-text('Utilisateurs')")
    b.page.wait_for_load_state()
    b.page.fill("#new-username", "radiologue2.chu-nord")
    b.page.fill("#new-display", "Dr Nouvelle Radiologue")
    b.page.fill("#new-password", "un mot de passe initial")
    b.page.check("#new-radiologist")
    assert b.page.input_value("#new-facilities") == "chu-nord"
    b.page.click("form[action$='/users/create'] button[type=submit]")
    b.page.wait_for_load_state()
    assert result(b) == "Utilisateur créé."
    assert "Dr Nouvelle Radiologue" in b.page.inner_text("tr[data-user='radiologue2.chu-nord']")
    screenshot(b.page, "admin-users")
    assert [e.object_id for e in archive.events("user-create")][-1] == "radiologue2.chu-nord"
    # the new user signs in with the initial password
    other = b.context.browser.new_context(viewport=VIEWPORT, locale="fr-FR")
    try:
        page = other.new_page()
        page.goto(archive.url + "/portal/login")
        page.fill("#username", "radiologue2.chu-nord")
        page.fill("#password", "un mot de passe initial")
        page.click("main button[type=submit]")
        page.wait_for_url(re.compile(r"/portal/patients$"))
    finally:
        other.close()
