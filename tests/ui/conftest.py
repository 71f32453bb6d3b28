"""Browser tests of the OHIF viewer served by Coffre: a real ``coffre serve`` on the demo
territory, driven by Debian's headless Chromium through Playwright.

- ``viewer_bundle`` (session): the installed, pinned OHIF build (``coffre viewer
  fetch``); missing, the tests FAIL with the command to run (never skip).
- ``browser`` (session): Chromium ``/usr/bin/chromium`` (``apt-get install chromium``),
  launched with the flags of the field notes; ``playwright install`` is never used.
- ``demo`` (session): a data folder loaded by ``coffre demo``, plus a study with JPEG
  2000, JPEG-LS and RLE series stored by STOW-RS, served by ``coffre serve`` on free
  loopback ports; the demo tokens come from ``coffre info --json``.

Markers: ``ui`` (registered here too, for runs whose configuration lacks it).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless, generate_uid

from coffre.dicom.synthetic import InstanceSpec, make_instance
from coffre.viewer.bundle import Bundle, find_bundle

COFFRE = str(Path(sys.executable).with_name("coffre"))
CHROMIUM = "/usr/bin/chromium"
#: FIELD-NOTES: Debian's Chromium under Playwright, no sandbox (root, containers), no
#: network of its own (QUIC, background networking, component updates, sync)
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
READY = re.compile(r"ready: DICOM \S+@[\d.]+:\d+, HTTP http://(?P<host>[\d.]+):(?P<port>\d+)/healthz")
VIEWPORT = {"width": 1280, "height": 800}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "ui: drives headless Chromium")


def tool_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"TCP_NODELAY": "1", "COLUMNS": "250", "NO_COLOR": "1",
                # test data: durability is not under test here
                "COFFRE_STORAGE_FSYNC": "false"})
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def viewer_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    bundle = find_bundle(tmp_path_factory.mktemp("no-data"))
    if bundle is None:
        pytest.fail("the OHIF viewer is not installed for this Python: run "
                    f"`{COFFRE} viewer fetch` (once; see docs/viewer.md)", pytrace=False)
    return bundle


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium, per module: Playwright's sync API keeps an event loop running in
    the main thread while it is open, which would break the ``asyncio.run`` of later tests."""
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} not found: `apt-get install chromium` (Debian's package; "
                    "never `playwright install`)", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class DemoServer:
    """A running ``coffre serve`` on the demo territory."""

    data: Path
    url: str
    proc: subprocess.Popen[str]
    stderr_path: Path
    #: facility slug -> demo API token
    tokens: dict[str, str]
    #: the extra study: series description ("J2K", "JLS", "RLE") -> (study, series) UIDs
    codec_series: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def dicomweb(self) -> str:
        return self.url + "/dicomweb"

    def get(self, path: str, token: str | None, **headers: str) -> httpx.Response:
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return httpx.get(self.url + path, headers=headers, timeout=30)

    def find_study(self, token: str, **keys: str) -> str:
        r = self.get("/dicomweb/studies?" + "&".join(f"{k}={v}" for k, v in keys.items()), token,
                     Accept="application/dicom+json")
        assert r.status_code == 200, r.text
        studies = r.json()
        assert len(studies) == 1, f"{keys}: {len(studies)} studies"
        return str(studies[0]["0020000D"]["Value"][0])

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


def run_coffre(*args: str, timeout: float = 180) -> str:
    out = subprocess.run([COFFRE, *args], capture_output=True, text=True, env=tool_env(), timeout=timeout)
    assert out.returncode == 0, f"coffre {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def _start(data: Path) -> tuple[subprocess.Popen[str], Path, str]:
    stderr_path = data.parent / "serve.stderr"
    env = tool_env(COFFRE_DICOM_PORT="0", COFFRE_HTTP_PORT="0",
                   COFFRE_DICOM_HOST="127.0.0.1", COFFRE_HTTP_HOST="127.0.0.1")
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen([COFFRE, "serve", "--data", str(data)], stdout=subprocess.PIPE,
                                stderr=stderr, text=True, env=env)
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line is None:
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
            pytest.fail(f"coffre serve exited ({proc.returncode}):\n{stderr_path.read_text()}")
        match = READY.search(line)
        if match:
            return proc, stderr_path, f"http://{match['host']}:{match['port']}"
    proc.kill()
    pytest.fail(f"coffre serve not ready:\n{stderr_path.read_text()}")


def _stow_codec_study(server: DemoServer, token: str) -> None:
    """One CT study, three series stored JPEG 2000 / JPEG-LS / RLE lossless (STOW-RS)."""
    study = generate_uid()
    parts = []
    for number, (label, syntax) in enumerate(
        (("J2K", JPEG2000Lossless), ("JLS", JPEGLSLossless), ("RLE", RLELossless)), 1
    ):
        series = generate_uid()
        server.codec_series[label] = (study, series)
        for i in range(1, 4):
            parts.append(make_instance(InstanceSpec(
                modality="CT", patient_id="CODEC-1", patient_name="CODEC^TEST", study_uid=study,
                series_uid=series, series_number=number, instance_number=i, rows=128, columns=128,
                seed=500 + 10 * number + i, transfer_syntax=syntax, study_description="CODECS",
                series_description=label,
            )))
    boundary = uuid.uuid4().hex
    body = b"".join(
        b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n" for p in parts
    ) + b"--" + boundary.encode() + b"--\r\n"
    r = httpx.post(server.dicomweb + "/studies", content=body, timeout=60, headers={
        "Authorization": f"Bearer {token}", "Accept": "application/dicom+json",
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
    })
    assert r.status_code == 200, r.text


@contextlib.contextmanager
def demo_server(data: Path) -> Iterator[tuple[Path, str, dict[str, str], subprocess.Popen[str], Path]]:
    """``coffre demo`` in ``data``, then ``coffre serve`` on free ports until the block ends.

    Yields (data, base URL, facility slug -> demo API token, process, stderr path); at the
    end SIGTERM, and a traceback or a non-zero exit fails the test.
    """
    run_coffre("demo", "--data", str(data))
    info = json.loads(run_coffre("info", "--data", str(data), "--json"))
    tokens = {f["slug"]: f["demo_token"] for f in info["facilities"]}
    proc, stderr_path, url = _start(data)
    try:
        yield data, url, tokens, proc, stderr_path
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
        text = stderr_path.read_text(errors="replace")
        assert "Traceback (most recent call last)" not in text, text
        assert code == 0, f"coffre serve exit {code}:\n{text}"


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory, viewer_bundle: Bundle) -> Iterator[DemoServer]:
    with demo_server(tmp_path_factory.mktemp("ui") / "data") as (data, url, tokens, proc, stderr_path):
        server = DemoServer(data=data, url=url, proc=proc, stderr_path=stderr_path, tokens=tokens)
        _stow_codec_study(server, tokens["chu-nord"])
        yield server


@dataclass
class PageLog:
    """What a page did: every request URL, console errors, CSP violations, HTTP errors."""

    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    responses: list[tuple[int, str]] = field(default_factory=list)

    def clear(self) -> None:
        for entries in (self.requests, self.errors, self.violations, self.responses):
            entries.clear()

    def copy(self) -> PageLog:
        return PageLog(list(self.requests), list(self.errors), list(self.violations), list(self.responses))


#: reports Content Security Policy violations of the page to the console (workers' own
#: violations surface as their failures: images that never render)
_CSP_PROBE = (
    "document.addEventListener('securitypolicyviolation', e => "
    "console.error('CSP-VIOLATION ' + e.violatedDirective + ' ' + e.blockedURI))"
)


def open_page(browser: Any) -> tuple[Any, Any, PageLog]:
    """A fresh browser context (no cookie) and page, with its activity logged."""
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    log = PageLog()
    page.add_init_script(_CSP_PROBE)
    page.on("request", lambda r: log.requests.append(r.url))
    page.on("response", lambda r: log.responses.append((r.status, r.url)))

    def console(message: Any) -> None:
        if message.type == "error":
            log.errors.append(message.text)
            if message.text.startswith("CSP-VIOLATION"):
                log.violations.append(message.text)

    page.on("console", console)
    return context, page, log


def sign_in(page: Any, server: DemoServer, token: str, next_path: str) -> None:
    """Open a viewer session through the sign-in form, as a person would."""
    page.goto(f"{server.url}/portal/session?next={urllib.parse.quote(next_path, safe='/')}")
    page.fill("#token", token)
    page.click("button[type=submit]")
