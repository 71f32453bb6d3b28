"""OHIF in headless Chromium against a real ``coffre serve`` (fixtures: conftest.py).

The image test compares what the viewer draws with what Coffre renders itself for the
same frame (``…/instances/{uid}/rendered``, the same VOI from the object's window):
the displayed region of the canvas, reduced to a coarse grid, must correlate with
Coffre's rendering and have a matching coarse histogram. A black, uniform, misplaced or
wrongly windowed image fails.
"""

from __future__ import annotations

import base64
import io
import os
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from ui.conftest import DemoServer, PageLog, open_page, sign_in

pytestmark = pytest.mark.ui

RENDER_TIMEOUT = 45.0
#: ``VIEWER_SCREENSHOT=1`` (re)writes the README's picture of the viewer
SCREENSHOT = Path(__file__).parents[2] / "docs" / "img" / "viewer.png"

_CANVAS = """() => {
  const canvas = document.querySelector('canvas.cornerstone-canvas');
  if (!canvas || !canvas.width || !canvas.height) return null;
  return canvas.toDataURL('image/png');
}"""
_IMAGE_ID = """() => {
  const cs = window.cornerstone;
  if (!cs) return null;
  const element = cs.getEnabledElements()[0];
  return element ? element.viewport.getCurrentImageId() : null;
}"""


def canvas_pixels(page: Any) -> np.ndarray | None:
    """The viewport canvas as a grayscale array (R channel: the images are grayscale)."""
    url = page.evaluate(_CANVAS)
    if not url:
        return None
    png = base64.b64decode(url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))[:, :, 0].astype(np.float64)


def wait_for_image(page: Any, timeout: float = RENDER_TIMEOUT) -> np.ndarray:
    """The canvas once it shows a non-uniform image (an empty viewport is uniform black)."""
    deadline = time.monotonic() + timeout
    pixels = None
    while time.monotonic() < deadline:
        pixels = canvas_pixels(page)
        if pixels is not None and pixels.std() > 20:
            time.sleep(0.3)  # let the first render settle, then read it again
            settled = canvas_pixels(page)
            assert settled is not None
            return settled
        time.sleep(0.25)
    detail = "no canvas" if pixels is None else f"uniform canvas (mean {pixels.mean():.1f})"
    pytest.fail(f"the viewer did not render an image within {timeout} s: {detail}")


def displayed_region(canvas: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """Where cornerstone draws the image: scaled to fit the canvas, centred."""
    height, width = canvas.shape
    scale = min(width / columns, height / rows)
    w, h = round(columns * scale), round(rows * scale)
    x0, y0 = (width - w) // 2, (height - h) // 2
    return canvas[y0:y0 + h, x0:x0 + w]


def coarse(pixels: np.ndarray, size: int = 32) -> np.ndarray:
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return np.asarray(image.resize((size, size), Image.Resampling.BOX)).astype(np.float64)


def histogram(pixels: np.ndarray, bins: int = 8) -> np.ndarray:
    counts, _ = np.histogram(pixels, bins=bins, range=(0, 256))
    return counts / counts.sum()


def assert_shows_frame(server: DemoServer, token: str, page: Any, canvas: np.ndarray) -> str:
    """The canvas shows the frame cornerstone says it displays, as Coffre renders it."""
    image_id = page.evaluate(_IMAGE_ID)
    assert image_id and image_id.startswith("wadors:" + server.dicomweb + "/studies/"), image_id
    instance_path = image_id[len("wadors:" + server.dicomweb):].rsplit("/frames/", 1)[0]
    meta = server.get("/dicomweb" + instance_path + "/metadata", token).json()[0]
    rows, columns = meta["00280010"]["Value"][0], meta["00280011"]["Value"][0]
    region = displayed_region(canvas, rows, columns)
    h, w = region.shape
    rendered = server.get(f"/dicomweb{instance_path}/rendered?viewport={w},{h}", token, Accept="image/png")
    assert rendered.status_code == 200, rendered.text
    expected = np.asarray(Image.open(io.BytesIO(rendered.content)).convert("L")).astype(np.float64)
    assert expected.shape == region.shape, (expected.shape, region.shape)
    shown, reference = coarse(region), coarse(expected)
    assert shown.std() > 20 and reference.std() > 20
    correlation = float(np.corrcoef(shown.ravel(), reference.ravel())[0, 1])
    difference = float(np.abs(shown - reference).mean())
    distance = float(np.abs(histogram(region) - histogram(expected)).sum())
    assert correlation > 0.95, f"canvas and Coffre's rendering differ: r={correlation:.3f}"
    assert difference < 16, f"mean absolute difference {difference:.1f} gray levels"
    assert distance < 0.2, f"histograms differ: L1 {distance:.3f}"
    # nothing is drawn outside the image (cornerstone's background is black)
    assert canvas.sum() - region.sum() < 0.01 * canvas.size * 255
    return instance_path


@dataclass
class Session:
    """A browser context signed in as CHU Nord, and its page (its HTTP cache stays warm
    from one test to the next: OHIF's ~20 MB of scripts load once)."""

    page: Any
    log: PageLog


@dataclass
class Opened:
    page: Any
    log: PageLog
    study: str
    canvas: np.ndarray
    instance_path: str


@pytest.fixture(scope="module")
def chu_nord(browser: Any, demo: DemoServer) -> Iterator[Session]:
    context, page, log = open_page(browser)
    try:
        sign_in(page, demo, demo.tokens["chu-nord"], "/")
        page.wait_for_url(demo.url + "/")
        yield Session(page=page, log=log)
    finally:
        context.close()


@pytest.fixture(scope="module")
def ct_opened(chu_nord: Session, demo: DemoServer) -> Opened:
    """CHU Nord's CT THORAX (Claire MARTIN) opened in OHIF through the session."""
    token = demo.tokens["chu-nord"]
    study = demo.find_study(token, PatientName="MARTIN*", ModalitiesInStudy="CT")
    page, log = chu_nord.page, chu_nord.log
    log.clear()
    page.goto(f"{demo.url}/viewer?StudyInstanceUIDs={study}")
    canvas = wait_for_image(page)
    instance = assert_shows_frame(demo, token, page, canvas)
    return Opened(page=page, log=log.copy(), study=study, canvas=canvas, instance_path=instance)


def test_viewer_renders_the_demo_ct_as_coffre_does(ct_opened: Opened, demo: DemoServer) -> None:
    assert ct_opened.instance_path.startswith(f"/studies/{ct_opened.study}/series/")
    region = displayed_region(ct_opened.canvas, 128, 128)
    # the synthetic CT under window 40/400: a white disc (HU > 240) on black air
    assert (region > 250).mean() > 0.3 and (region < 5).mean() > 0.1
    if os.environ.get("VIEWER_SCREENSHOT"):
        page = ct_opened.page
        for label in ("Skip all", "Confirm and hide"):  # OHIF's first-visit tour and notice
            button = page.get_by_text(label, exact=True)
            if button.count():
                button.first.click()
        time.sleep(0.5)
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT))


def test_no_request_leaves_the_origin(ct_opened: Opened, demo: DemoServer) -> None:
    origin = urllib.parse.urlsplit(demo.url)
    outside = [
        url for url in ct_opened.log.requests
        if not url.startswith(("data:", "blob:"))
        and urllib.parse.urlsplit(url)[:2] != origin[:2]
    ]
    assert not outside, outside
    dicomweb = [u for u in ct_opened.log.requests if u.startswith(demo.dicomweb + "/")]
    assert any("/frames/" in u for u in dicomweb), "no frame was fetched"


def test_the_page_runs_under_its_policy(ct_opened: Opened, demo: DemoServer) -> None:
    assert ct_opened.log.violations == []
    assert ct_opened.page.evaluate("crossOriginIsolated") is True
    failed = [(status, url) for status, url in ct_opened.log.responses if status >= 400]
    assert failed == []
    page_headers = demo.get(f"/viewer?StudyInstanceUIDs={ct_opened.study}", None,
                            Cookie=f"coffre_session={demo.tokens['chu-nord']}").headers
    policy = page_headers["content-security-policy"]
    assert "'unsafe-eval'" not in policy and "'unsafe-inline'" not in policy.split("style-src")[0]
    assert "frame-ancestors 'none'" in policy


@pytest.mark.parametrize("label", ["J2K", "JLS", "RLE"])
def test_compressed_frames_are_decoded_in_the_viewer(chu_nord: Session, demo: DemoServer, label: str) -> None:
    """JPEG 2000 and JPEG-LS decode in the worker (WebAssembly under the worker's policy)."""
    study, series = demo.codec_series[label]
    page, log = chu_nord.page, chu_nord.log
    log.clear()
    page.goto(f"{demo.url}/viewer?StudyInstanceUIDs={study}&SeriesInstanceUIDs={series}")
    canvas = wait_for_image(page)
    instance = assert_shows_frame(demo, demo.tokens["chu-nord"], page, canvas)
    assert f"/series/{series}/" in instance
    assert log.violations == []
    assert not [url for status, url in log.responses if status >= 400]


def test_without_a_session_there_is_no_image(browser: Any, demo: DemoServer) -> None:
    token = demo.tokens["chu-nord"]
    study = demo.find_study(token, PatientName="MARTIN*", ModalitiesInStudy="CT")
    rendered = f"{demo.dicomweb}/studies/{study}/rendered"
    context, page, log = open_page(browser)
    try:
        page.goto(f"{demo.url}/viewer?StudyInstanceUIDs={study}")
        # sent to the sign-in page, coming back to the study afterwards
        assert urllib.parse.urlsplit(page.url).path == "/portal/login"
        assert urllib.parse.parse_qs(urllib.parse.urlsplit(page.url).query)["next"] == [
            f"/viewer?StudyInstanceUIDs={study}"
        ]
        assert page.locator("canvas").count() == 0
        assert not any("/dicomweb/" in u for u in log.requests)
        # this browser's own request for the image: 401, no pixels
        response = context.request.get(rendered)
        assert response.status == 401 and not response.headers["content-type"].startswith("image/")
        # a wrong token is refused by the token form, and opens no session
        page.goto(f"{demo.url}/portal/session?next=/viewer")
        page.fill("#token", "cof_not-a-valid-token")
        page.click("button[type=submit]")
        assert page.locator("[role=alert]").is_visible()
        assert not [c for c in context.cookies() if c["name"] == "coffre_session"]
        page.goto(f"{demo.url}/viewer?StudyInstanceUIDs={study}")
        assert urllib.parse.urlsplit(page.url).path == "/portal/login"
        # a valid session cookie is no DICOMweb credential (the viewer sends the token
        # in Authorization): a forged cross-site request carrying it gets nothing
        sign_in(page, demo, token, "/")
        assert [c for c in context.cookies() if c["name"] == "coffre_session"]
        response = context.request.get(rendered)
        assert response.status == 401 and not response.headers["content-type"].startswith("image/")
        assert context.request.get(rendered, headers={"Authorization": f"Bearer {token}"}).status == 200
    finally:
        context.close()


def test_another_facility_session_sees_nothing_of_the_study(browser: Any, demo: DemoServer) -> None:
    """Clinique du Sud's session opening CHU Nord's study: no pixels reach the browser."""
    study = demo.find_study(demo.tokens["chu-nord"], PatientName="MARTIN*", ModalitiesInStudy="CT")
    context, page, log = open_page(browser)
    try:
        sign_in(page, demo, demo.tokens["clinique-sud"], f"/viewer?StudyInstanceUIDs={study}")
        page.wait_for_url(f"**/viewer?StudyInstanceUIDs={study}")
        page.wait_for_load_state("networkidle")
        time.sleep(1.0)
        assert not any("/frames/" in u or "/rendered" in u for u in log.requests)
        for status, url in log.responses:
            if url.startswith(f"{demo.dicomweb}/studies/{study}") and status == 200:
                assert url.split("?")[0].endswith("/series"), url
        pixels = canvas_pixels(page)
        assert pixels is None or pixels.std() < 1
    finally:
        context.close()
