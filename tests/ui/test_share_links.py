"""Share links in a real browser: headless Chromium against a real ``coffre serve`` on
the demo territory (fixtures ``demo`` and ``browser`` of conftest.py).

A demo clinician creates a link through the portal (the timeline's "create a share
link" dialog, the one-time result page); a fresh browser context — the
recipient, who has nothing but the link and the code — opens it: a wrong code is
refused, the right one lists the shared study, the download starts, and the OHIF viewer
opens the study and draws its pixels. Revoking the link ends the page, the link and the
viewer's session; five wrong codes lock a link for good, the right code included.
"""

from __future__ import annotations

import io
import re
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from PIL import Image
from playwright.sync_api import Page, expect

from ui.conftest import DemoServer, open_page

pytestmark = pytest.mark.ui

#: a demo user (docs/authentication.md) allowed to share
CLINICIAN = ("clinicien.chu-nord", "demo-clinician")
WRONG = "2345623456"
TIMEOUT_MS = 60_000


@contextmanager
def api(demo: DemoServer) -> Iterator[httpx.Client]:
    """The REST API as the demo clinician, signed in with its password."""
    with httpx.Client(base_url=demo.url, timeout=30) as client:
        answer = client.post("/api/auth/login", json={"username": CLINICIAN[0], "password": CLINICIAN[1]})
        assert answer.status_code == 200, answer.text
        client.headers["Authorization"] = f"Bearer {answer.json()['access_token']}"
        yield client


def share(demo: DemoServer, browser: Any, *, allow_download: bool = False, recipient: str = "") -> dict[str, object]:
    """A link to Claire MARTIN's 2021 CT (the demo's patient CN100234 at CHU Nord), created
    by the demo clinician through the portal's timeline dialog in its own browser context."""
    context, page, _log = open_page(browser)
    context.set_default_timeout(TIMEOUT_MS)
    try:
        page.goto(demo.url + "/portal/timeline?patient_id=CN100234")
        assert "/portal/login?next=" in page.url
        page.fill("#username", CLINICIAN[0])
        page.fill("#password", CLINICIAN[1])
        page.click("main button[type=submit]")
        page.wait_for_url(re.compile(r"/portal/persons/\d+$"))
        page.click("#share-dialog summary")
        page.select_option("#share-target", "all")
        page.fill("#share-from", "2021-01-01")
        page.fill("#share-to", "2021-12-31")
        page.fill("#share-days", "7")
        page.fill("#share-uses", "5")
        if allow_download:
            page.check("#share-download")
        page.fill("#share-recipient", recipient)
        page.click("#share-submit")
        page.wait_for_load_state()
        expect(page.locator("#share-created")).to_be_visible()
        url, code = page.inner_text("#share-url").strip(), page.inner_text("#share-code").strip()
        assert url.startswith(demo.url + "/share/")
        assert re.fullmatch(r"[2-9A-Z]{5}-[2-9A-Z]{5}", code)
        assert "Give the code separately" in page.inner_text("#share-created")  # the browser asks for English
        # the list shows the new link (newest first), never its secrets
        page.goto(demo.url + "/portal/shares")
        row = page.locator("tr.share").first
        expect(row).to_contain_text(recipient or "(not given)")
        share_id = int(row.get_attribute("data-share") or "0")
        listing = page.content()
        assert url.rsplit("/", 1)[1] not in listing and code not in listing
    finally:
        context.close()
    with api(demo) as client:
        [link] = [s for s in client.get("/api/shares").json() if s["id"] == share_id]
    assert link["studies"] == 1 and link["allow_download"] is allow_download
    return {"id": share_id, "url": url, "access_code": code}


@pytest.fixture
def recipient(browser: Any) -> Iterator[Page]:
    """A fresh browser context: no cookie, no history — only what the recipient was sent."""
    context, page, _log = open_page(browser)
    context.set_default_timeout(TIMEOUT_MS)
    yield page
    context.close()


def _enter(page: Page, code: str) -> None:
    page.fill("#code", code)
    page.click("button[type=submit]")
    page.wait_for_load_state()


def _drawn(page: Page) -> bool:
    """Whether the viewer's canvas shows an image (not one flat colour)."""
    canvas = page.locator("canvas.cornerstone-canvas").first
    if not canvas.is_visible():
        return False
    shot = Image.open(io.BytesIO(canvas.screenshot())).convert("L")
    low, high = shot.getextrema()
    return high - low > 40


def test_recipient_opens_the_link_and_the_viewer_draws_the_study(
    demo: DemoServer, browser: Any, recipient: Page
) -> None:
    created = share(demo, browser, allow_download=True, recipient="Dr Durand (GP)")
    page = recipient
    page.goto(str(created["url"]))
    expect(page.locator("#code")).to_be_visible()

    _enter(page, WRONG)
    expect(page.get_by_role("alert")).to_contain_text("not valid")

    _enter(page, str(created["access_code"]))
    assert page.url == demo.url + "/share"
    rows = page.locator("tr.study")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("2021-03-15")
    expect(rows.first).to_contain_text("CT THORAX")
    expect(page.locator("#download")).to_be_visible()
    with page.expect_download() as download:
        page.click("#download")
    assert download.value.suggested_filename.startswith("coffre-share-")

    viewer = page.locator("a.viewer").get_attribute("href")
    assert viewer is not None
    page.click("a.viewer")
    page.wait_for_load_state()
    assert urllib.parse.urlsplit(page.url).path == "/viewer", (
        f"the viewer refused the recipient session (now at {page.url}): services.auth.authenticate "
        "must route share session tokens to services.shares.authenticate_share_token")
    page.wait_for_selector("canvas.cornerstone-canvas", state="visible")
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while not _drawn(page):
        assert time.monotonic() < deadline, "the viewer did not draw the shared study"
        page.wait_for_timeout(500)

    # revoked: the list and the viewer's session end, the link shows the neutral page
    with api(demo) as client:
        assert client.delete(f"/api/shares/{created['id']}").status_code == 204
    page.goto(demo.url + "/share")
    expect(page.locator("#unavailable")).to_be_visible()
    page.goto(str(created["url"]))
    expect(page.locator("#unavailable")).to_be_visible()
    expect(page.locator("#code")).to_have_count(0)
    page.goto(demo.url + viewer)  # the viewer no longer accepts the session: sent to sign in
    page.wait_for_url(lambda url: urllib.parse.urlsplit(url).path != "/viewer")
    expect(page.locator("canvas.cornerstone-canvas")).to_have_count(0)


def test_five_wrong_codes_lock_the_link(demo: DemoServer, browser: Any, recipient: Page) -> None:
    created = share(demo, browser)
    page = recipient
    page.goto(str(created["url"]))
    for _ in range(4):
        _enter(page, WRONG)
        expect(page.get_by_role("alert")).to_contain_text("not valid")
    _enter(page, WRONG)
    expect(page.locator("#unavailable")).to_be_visible()  # the fifth locks it
    page.goto(str(created["url"]))
    expect(page.locator("#unavailable")).to_be_visible()
    # even the right code is refused now (posted as the form would)
    answer = page.request.post(str(created["url"]), form={"code": str(created["access_code"])},
                               headers={"Sec-Fetch-Site": "same-origin"}, max_redirects=0)
    assert answer.status == 404 and "This link is not available" in answer.text()
    with api(demo) as client:
        [link] = [s for s in client.get("/api/shares").json() if s["id"] == created["id"]]
    assert (link["state"], link["failed_attempts"], link["uses"]) == ("locked", 5, 0)
