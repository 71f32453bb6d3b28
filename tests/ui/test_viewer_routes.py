"""The viewer's HTTP side in-process (no browser): what is served where, with which
headers, for whom. The build is a small fake with the pinned version's manifest,
installed under ``DATA/viewer`` as ``coffre viewer fetch --dest DATA/viewer`` would.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from coffre.app import build_context
from coffre.model import Actor
from coffre.services import facilities
from coffre.services.tokens import create_token
from coffre.settings import Settings
from coffre.viewer import bundle as bundle_module
from coffre.viewer.bundle import build_dir, write_manifest
from coffre.viewer.config import viewer_config
from coffre.web.http import create_app

SCRIPT_A = b'console.time("scriptToView"),window.PUBLIC_URL="/"'
SCRIPT_B = b"function browserImportFunction(n){return import(n)}window.PUBLIC_URL=\"/\""
INDEX = (b"<!doctype html><html><head><script>" + SCRIPT_A + b'</script><script src="/app-config.js"></script>'
         b"<script>" + SCRIPT_B + b'</script><script defer src="/app.bundle.0123456789abcdef.js"></script>'
         b"</head><body></body></html>")
FILES = {
    "index.html": INDEX,
    "app.bundle.0123456789abcdef.js": b"console.log('app')",
    "app.bundle.css": b"body{}",
    "0ddf166f7a343eda.wasm": b"\x00asm\x01\x00\x00\x00",
    "assets/favicon.ico": b"\x00\x01",
    # decoys: a build must never shadow Coffre's routes
    "api": b"decoy",
    "healthz": b"decoy",
    "openapi.json": b"decoy",
}


def sha256_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


class Site:
    def __init__(self, client: TestClient, token: str, app: FastAPI) -> None:
        self.client, self.token, self.app = client, token, app

    def signed_in(self) -> TestClient:
        self.client.cookies.set("coffre_session", self.token)
        return self.client


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    monkeypatch.setattr(bundle_module, "default_root", lambda: tmp_path / "no-default-build")
    data = tmp_path / "data"
    target = build_dir(data / "viewer")
    for name, content in FILES.items():
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        (target / name).write_bytes(content)
    write_manifest(target, files={n: hashlib.sha256(c).hexdigest() for n, c in FILES.items()}, full=False)
    ctx = build_context(Settings(data_dir=data))
    op = Actor.system("tests")
    facilities.add_facility(ctx, op, slug="site-a", name="Site A", issuer="SITE-A")
    token = create_token(ctx, op, facility_slug="site-a", name="viewer")
    app = create_app(ctx)
    try:
        with TestClient(app, follow_redirects=False) as client:
            yield Site(client, token, app)
    finally:
        ctx.close()


def test_coffre_routes_are_never_shadowed(site: Site) -> None:
    c = site.client
    assert c.get("/healthz").json()["status"] == "ok"
    assert c.get("/openapi.json").json()["info"]["title"] == "Coffre"
    assert c.get("/api").content != b"decoy"
    assert c.get("/dicomweb/studies").status_code == 401
    assert c.get("/nothing.js").status_code == 404


def test_routes_registered_after_the_viewer_still_answer(site: Site) -> None:
    @site.app.get("/later.js")
    def later() -> dict[str, str]:
        return {"route": "later"}

    assert site.client.get("/later.js").json() == {"route": "later"}
    assert site.client.get("/app.bundle.css").content == b"body{}"


def test_viewer_pages_need_a_session(site: Site) -> None:
    r = site.client.get("/viewer?StudyInstanceUIDs=1.2.3")
    assert r.status_code == 303
    assert r.headers["location"] == "/portal/login?next=%2Fviewer%3FStudyInstanceUIDs%3D1.2.3"
    site.client.cookies.set("coffre_session", "cof_forged")
    assert site.client.get("/viewer/dicomweb").status_code == 303
    assert site.client.get("/").status_code == 303


def test_the_page_is_served_with_a_strict_policy(site: Site) -> None:
    r = site.signed_in().get("/viewer/dicomweb?StudyInstanceUIDs=1.2.3")
    assert r.status_code == 200 and r.content == INDEX
    h = r.headers
    policy = dict(d.strip().split(" ", 1) for d in h["content-security-policy"].split(";"))
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == f"'self' 'sha256-{sha256_b64(SCRIPT_A)}' 'sha256-{sha256_b64(SCRIPT_B)}'"
    assert policy["connect-src"] == "'self'" and policy["frame-ancestors"] == "'none'"
    assert h["cache-control"] == "no-store" and h["x-frame-options"] == "DENY"
    assert h["x-content-type-options"] == "nosniff" and h["referrer-policy"] == "no-referrer"
    assert h["cross-origin-opener-policy"] == "same-origin"
    assert h["cross-origin-embedder-policy"] == "require-corp"


def test_app_config_is_the_sessions_and_never_cached(site: Site) -> None:
    r = site.signed_in().get("/app-config.js")
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    assert r.headers["content-type"].startswith("text/javascript")
    assert json.dumps(site.token) in r.text
    urls = set(re.findall(r"https?://[^\"' ]+", r.text))
    assert urls == {"http://testserver/dicomweb", "http://testserver/dicomweb/wado"}
    site.client.cookies.clear()
    anonymous = site.client.get("/app-config.js")
    assert site.token not in anonymous.text and "/portal/session" in anonymous.text


def test_assets_are_typed_and_cached_by_name(site: Site) -> None:
    c = site.client
    js = c.get("/app.bundle.0123456789abcdef.js")
    assert js.headers["content-type"].startswith("text/javascript")
    assert js.headers["cache-control"] == "public, max-age=31536000, immutable"
    # a script's policy governs it when it runs as a worker: the decoders need eval there
    assert "'unsafe-eval'" in js.headers["content-security-policy"]
    css = c.get("/app.bundle.css")
    assert css.headers["cache-control"] == "no-cache" and css.headers["content-type"].startswith("text/css")
    assert "'unsafe-eval'" not in css.headers["content-security-policy"]
    wasm = c.get("/0ddf166f7a343eda.wasm")
    assert wasm.headers["content-type"] == "application/wasm"
    etag = css.headers["etag"]
    assert etag == '"' + hashlib.sha256(b"body{}").hexdigest()[:32] + '"'
    again = c.get("/app.bundle.css", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    head = c.head("/assets/favicon.ico")
    assert head.status_code == 200 and head.content == b"" and head.headers["content-length"] == "2"
    assert c.post("/app.bundle.css").status_code == 405


def test_without_a_build_the_viewer_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bundle_module, "default_root", lambda: tmp_path / "no-default-build")
    ctx = build_context(Settings(data_dir=tmp_path / "data"))
    try:
        with TestClient(create_app(ctx), follow_redirects=False) as client:
            r = client.get("/viewer?StudyInstanceUIDs=1.2.3")
            assert r.status_code == 503 and "coffre viewer fetch" in r.text
            assert client.get("/app-config.js").status_code == 503
            assert client.get("/app.bundle.0123456789abcdef.js").status_code == 404
            assert client.get("/healthz").status_code == 200
    finally:
        ctx.close()


def test_the_generated_config_cannot_be_broken_out_of() -> None:
    hostile = "a</script><script>alert(1)</script>\"'\u2028&"
    text = viewer_config("https://pacs.example.org/dicomweb", hostile)
    assert "</script>" not in text and "<" not in text and "\u2028" not in text
    literal = re.search(r"const accessToken = (\".*?\");", text)
    assert literal is not None and json.loads(literal.group(1)) == hostile
    config = json.loads(re.search(r"const config = (\{.*?\n\});", text, re.DOTALL).group(1))  # type: ignore[union-attr]
    (source,) = config["dataSources"]
    assert config["defaultDataSourceName"] == source["sourceName"] == "dicomweb"
    c = source["configuration"]
    assert c["qidoRoot"] == c["wadoRoot"] == "https://pacs.example.org/dicomweb"
    assert c["imageRendering"] == c["thumbnailRendering"] == "wadors"
    assert c["dicomUploadEnabled"] is False and c["bulkDataURI"] == {"enabled": True}
    assert c["supportsFuzzyMatching"] and c["supportsWildcard"] and c["enableStudyLazyLoad"]
    assert "oidc" not in config


# -- the session page --------------------------------------------------------------------


def test_a_valid_token_opens_a_session_cookie(site: Site) -> None:
    r = site.client.post("/portal/session", data={"token": site.token, "next": "/viewer?StudyInstanceUIDs=1.2"},
                         headers={"Sec-Fetch-Site": "same-origin"})
    assert r.status_code == 303 and r.headers["location"] == "/viewer?StudyInstanceUIDs=1.2"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"coffre_session={site.token};")
    attributes = {a.strip().lower() for a in cookie.split(";")[1:]}
    assert {"httponly", "path=/", "samesite=strict"} <= attributes
    assert "secure" not in attributes and not any(a.startswith(("max-age", "expires")) for a in attributes)
    assert site.client.get("/viewer").status_code == 200
    end = site.client.post("/portal/session/end")
    assert end.status_code == 303 and 'coffre_session=""' in end.headers["set-cookie"]


def test_over_https_the_cookie_is_secure(site: Site) -> None:
    with TestClient(site.app, base_url="https://testserver", follow_redirects=False) as client:
        r = client.post("/portal/session", data={"token": site.token})
        assert r.status_code == 303 and "secure" in r.headers["set-cookie"].lower()


@pytest.mark.parametrize("headers", [
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},
    {"Origin": "https://evil.example"},
    {"Origin": "null"},
])
def test_another_site_cannot_sign_a_browser_in(site: Site, headers: dict[str, str]) -> None:
    r = site.client.post("/portal/session", data={"token": site.token}, headers=headers)
    assert r.status_code == 403 and "set-cookie" not in r.headers


def test_bad_tokens_and_foreign_redirects_are_refused(site: Site) -> None:
    r = site.client.post("/portal/session", data={"token": "cof_unknown", "next": "/viewer"})
    assert r.status_code == 401 and "set-cookie" not in r.headers and 'role="alert"' in r.text
    for target in ("//evil.example/x", "https://evil.example", "/\\evil.example", "javascript:alert(1)"):
        r = site.client.post("/portal/session", data={"token": site.token, "next": target})
        assert r.headers["location"] == "/", target
    page = site.client.get("/portal/session?next=%22%3E%3Cscript%3E")
    assert "<script>" not in page.text and "script-src" not in page.headers["content-security-policy"]
