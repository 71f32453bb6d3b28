"""``coffre user …`` and ``coffre token --user``, run as real processes; the tokens they
print are checked against the HTTP application of the same data folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from coffre.app import build_context
from coffre.settings import load_settings
from coffre.web.http import create_app

COFFRE = str(Path(sys.executable).with_name("coffre"))
PASSWORD = "a long enough password"

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def coffre(data: Path) -> Run:
    """Run ``coffre ARGS`` (``--data DATA`` appended unless ``with_data=False``)."""

    def run(*args: str, stdin: str = "", with_data: bool = True) -> subprocess.CompletedProcess[str]:
        environ = dict(os.environ, COLUMNS="250", NO_COLOR="1", COFFRE_STORAGE_FSYNC="false")
        argv = [COFFRE, *args, *(["--data", str(data)] if with_data else [])]
        return subprocess.run(argv, input=stdin, capture_output=True, text=True, env=environ, timeout=120)

    return run


@pytest.fixture
def http(data: Path) -> Iterator[Callable[[], TestClient]]:
    """The HTTP app of the data folder, opened on demand (after the CLI created it)."""
    opened: list[tuple[TestClient, object]] = []

    def open_() -> TestClient:
        ctx = build_context(load_settings(data, {}))
        client = TestClient(create_app(ctx), raise_server_exceptions=False)
        opened.append((client, ctx))
        return client

    yield open_
    for client, ctx in opened:
        client.close()
        ctx.close()  # type: ignore[attr-defined]


def ok(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def clean_error(out: subprocess.CompletedProcess[str], *words: str) -> None:
    text = out.stdout + out.stderr
    assert out.returncode != 0, text
    assert "Traceback" not in text, text
    for word in words:
        assert word.lower() in " ".join(text.lower().split()), f"{word!r} not in:\n{text}"


def me(client: TestClient, token: str) -> tuple[int, dict[str, object]]:
    response = client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"})
    return response.status_code, response.json()


def test_users_and_their_tokens(coffre: Run, http: Callable[[], TestClient]) -> None:
    ok(coffre("facility", "add", "site-a", "--name", "Site A", "--issuer", "SITE-A"))
    ok(coffre("facility", "add", "site-b", "--name", "Site B", "--issuer", "SITE-B"))
    created = ok(coffre("user", "add", "radio.a", "--facility", "site-a", "--role", "radiologist",
                        "--display-name", "Dr A", "--password-stdin", stdin=PASSWORD + "\n"))
    assert "radio.a created" in created and PASSWORD not in created
    clean_error(coffre("user", "add", "shorty", "--facility", "site-a", "--role", "radiologist",
                       "--password-stdin", stdin="short\n"), "12")
    clean_error(coffre("user", "add", "x", "--role", "wizard", "--password-stdin", stdin=PASSWORD), "unknown role")
    clean_error(coffre("user", "add", "y", "--facility", "nowhere", "--role", "auditor", "--password-stdin",
                       stdin=PASSWORD), "no facility")
    clean_error(coffre("user", "add", "radio.a", "--facility", "site-a", "--role", "auditor",
                       "--password-stdin", stdin=PASSWORD), "already exists")
    ok(coffre("user", "add", "robot", "--facility", "site-b", "--role", "technologist", "--no-password"))

    listing = ok(coffre("user", "list"))
    assert "radio.a" in listing and "radiologist" in listing and "site-a" in listing and "robot" in listing
    assert PASSWORD not in listing and "argon2" not in listing

    token = ok(coffre("token", "--user", "radio.a")).strip()
    assert token.count(".") == 2 and "\n" not in token
    client = http()
    assert me(client, token) == (200, {"username": "radio.a", "subject": "radio.a", "kind": "user",
                                       "roles": ["radiologist"], "facilities": ["site-a"], "facility": "site-a"})
    assert client.get("/dicomweb/studies", headers={"Authorization": f"Bearer {token}"}).status_code in (200, 204)
    robot = ok(coffre("token", "--user", "robot")).strip()
    assert me(client, robot)[1]["roles"] == ["technologist"]

    ok(coffre("user", "roles", "radio.a", "--role", "clinician,auditor", "--facility", "site-a,site-b"))
    status, body = me(client, token)
    assert status == 200 and body["roles"] == ["auditor", "clinician"] and body["facilities"] == ["site-a", "site-b"]

    ok(coffre("user", "passwd", "radio.a", "--password-stdin", stdin="the new long password\n"))
    assert me(client, token)[0] == 401  # a password change signs the user out everywhere
    login = client.post("/api/auth/login", json={"username": "radio.a", "password": "the new long password"})
    assert login.status_code == 200
    fresh = login.json()["access_token"]
    assert me(client, fresh)[0] == 200

    ok(coffre("user", "disable", "radio.a"))
    assert me(client, fresh)[0] == 401
    clean_error(coffre("token", "--user", "radio.a"), "disabled")
    clean_error(coffre("token", "--user", "nobody"), "no user")
    ok(coffre("user", "enable", "radio.a"))
    assert me(client, fresh)[0] == 200
    ok(coffre("user", "revoke-tokens", "radio.a"))
    assert me(client, fresh)[0] == 401


def test_token_subcommands_keep_working(coffre: Run, data: Path, http: Callable[[], TestClient]) -> None:
    ok(coffre("facility", "add", "site-a", "--name", "Site A", "--issuer", "SITE-A"))
    api_token = ok(coffre("token", "add", "pacs", "--facility", "site-a")).strip()
    assert api_token.startswith("cof_")
    assert "pacs" in ok(coffre("token", "list"))
    assert "pacs" in ok(coffre("token", "--data", str(data), "list", with_data=False))
    assert "pacs" in ok(coffre("token", "-d", str(data), "list", with_data=False))
    assert me(http(), api_token)[0] == 200
    ok(coffre("token", "revoke", "pacs", "--facility", "site-a"))
    assert me(http(), api_token)[0] == 401
    clean_error(coffre("token", "--user", "x", "list"), "subcommand")
    clean_error(coffre("token", with_data=False), "usage")  # no arguments: the help
    clean_error(coffre("token"), "--user")


def test_demo_users_are_listed_and_can_log_in(coffre: Run, http: Callable[[], TestClient]) -> None:
    ok(coffre("demo"))
    doc = json.loads(ok(coffre("info", "--json")))
    assert {"facilities", "ae_title", "dicom", "http"} <= set(doc)  # the existing fields are kept
    demo = {u["username"]: u for u in doc["demo_users"]}
    assert len(demo) == 19
    assert demo["manip.chu-nord"] == {"username": "manip.chu-nord", "display_name": "Manipulateur radio CHU Nord",
                                      "roles": ["technologist"], "facilities": ["chu-nord"],
                                      "password": "demo-technologist"}
    assert demo["admin.territoire"]["roles"] == ["territory-admin"] and demo["admin.territoire"]["facilities"] == []
    text = ok(coffre("info"))
    assert "radiologue.clinique-sud" in text and "demo-radiologist" in text

    client = http()
    for name in ("radiologue.chu-nord", "identito.imagerie-est", "admin.territoire"):
        login = client.post("/api/auth/login", json={"username": name, "password": demo[name]["password"]})
        assert login.status_code == 200, name
        status, body = me(client, login.json()["access_token"])
        assert status == 200 and body["username"] == name and body["roles"] == demo[name]["roles"]
    assert "already loaded" in ok(coffre("demo"))
    assert len(json.loads(ok(coffre("info", "--json")))["demo_users"]) == 19
