"""/api/auth (login, logout, me) and the bearer tokens of every route: a zoo of bad
tokens gets the same 401 on a real DICOMweb route, each refusal audited with its reason."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from fastapi.testclient import TestClient
from sqlalchemy import select

from coffre.app import Context
from coffre.index.engine import Database
from coffre.index.schema import audit_event
from coffre.model import Actor, Role
from coffre.services import users
from coffre.services.auth import key_id, load_signing_key
from coffre.settings import SecuritySettings
from coffre.web.http import create_app
from web.conftest import BASE, WebArchive, build_web_archive

OPERATOR = Actor.system("tests")
PASSWORD = "long enough password"
ISSUER = "https://keycloak.example/realms/territoire"
STUDIES = f"{BASE}/studies"


class Jwks:
    """A real HTTP server serving the OIDC provider's JWKS."""

    def __init__(self, keys: list[dict[str, Any]]) -> None:
        body = json.dumps({"keys": keys}).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/certs"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def idp_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def jwks(idp_key: rsa.RSAPrivateKey) -> Iterator[Jwks]:
    server = Jwks([{**jwt.algorithms.RSAAlgorithm.to_jwk(idp_key.public_key(), as_dict=True), "kid": "k1"}])
    yield server
    server.close()


@pytest.fixture
def site(database: Database, tmp_path: Path, jwks: Jwks) -> WebArchive:
    web = build_web_archive(database, tmp_path)
    security = replace(SecuritySettings(), revocation_cache_seconds=0.0, max_failed_logins=3, lockout_seconds=300,
                       oidc_issuer=ISSUER, oidc_audience="coffre", oidc_jwks_url=jwks.url)
    web.ctx = replace(web.ctx, settings=replace(web.ctx.settings, security=security))
    users.create_user(web.ctx, OPERATOR, username="radio.a", password=PASSWORD,
                      roles=frozenset({Role.RADIOLOGIST}), facilities=["site-a"])
    return web


@pytest.fixture
def http(site: WebArchive) -> Iterator[TestClient]:
    with TestClient(create_app(site.ctx), raise_server_exceptions=False) as client:
        yield client


def login(http: TestClient, username: str = "radio.a", password: str = PASSWORD) -> str:
    response = http.post("/api/auth/login", json={"username": username, "password": password})
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def audit_rows(ctx: Context, action: str) -> list[Any]:
    with ctx.db.read() as tx:
        return list(tx.execute(select(audit_event).where(audit_event.c.action == action).order_by(audit_event.c.id)))


# -- login, me, logout -----------------------------------------------------------------


def test_login_me_logout(http: TestClient, site: WebArchive) -> None:
    response = http.post("/api/auth/login", json={"username": "radio.a", "password": PASSWORD})
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == site.ctx.settings.security.token_ttl_seconds
    token = body["access_token"]

    me = http.get("/api/auth/me", headers=bearer(token))
    assert me.status_code == 200
    assert me.json() == {"username": "radio.a", "subject": "radio.a", "kind": "user", "roles": ["radiologist"],
                         "facilities": ["site-a"], "facility": "site-a"}
    assert http.get(STUDIES, headers=bearer(token)).status_code in (200, 204)

    users.set_roles(site.ctx, OPERATOR, "radio.a", frozenset({Role.CLINICIAN, Role.AUDITOR}))
    assert http.get("/api/auth/me", headers=bearer(token)).json()["roles"] == ["auditor", "clinician"]

    assert http.post("/api/auth/logout", headers=bearer(token)).status_code == 204
    refused = http.get("/api/auth/me", headers=bearer(token))
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
    assert http.get(STUDIES, headers=bearer(token)).status_code == 401
    assert [r.outcome for r in audit_rows(site.ctx, "logout")] == ["success"]


def test_api_tokens_still_work_and_cannot_log_out(http: TestClient, site: WebArchive) -> None:
    me = http.get("/api/auth/me", headers=bearer(site.token_a))
    assert me.status_code == 200 and me.json()["kind"] == "client" and me.json()["facilities"] == ["site-a"]
    assert http.get(STUDIES, headers=bearer(site.token_a)).status_code in (200, 204)
    assert http.post("/api/auth/logout", headers=bearer(site.token_a)).status_code == 400
    assert http.post("/api/auth/logout").status_code == 401
    assert http.post("/api/auth/logout", headers=bearer("a.b.c")).status_code == 401


def test_every_login_failure_looks_the_same(http: TestClient, site: WebArchive) -> None:
    users.create_user(site.ctx, OPERATOR, username="gone", password=PASSWORD, roles=frozenset({Role.AUDITOR}),
                      facilities=["site-a"])
    users.disable(site.ctx, OPERATOR, "gone")
    answers = [
        http.post("/api/auth/login", json={"username": name, "password": password})
        for name, password in (("radio.a", "wrong password!!"), ("nobody", PASSWORD), ("gone", PASSWORD))
    ]
    assert {a.status_code for a in answers} == {401}
    assert len({a.text for a in answers}) == 1
    assert len({a.headers["www-authenticate"] for a in answers}) == 1
    assert [json.loads(r.detail)["reason"] for r in audit_rows(site.ctx, "login")] == [
        "wrong-password", "unknown-user", "disabled"]


def test_lockout_over_http(http: TestClient, site: WebArchive) -> None:
    wrong = [http.post("/api/auth/login", json={"username": "radio.a", "password": "not the password"})
             for _ in range(3)]
    locked = http.post("/api/auth/login", json={"username": "radio.a", "password": PASSWORD})
    unknown = http.post("/api/auth/login", json={"username": "nobody", "password": PASSWORD})
    assert [r.status_code for r in [*wrong, locked, unknown]] == [401] * 5
    assert locked.text == unknown.text == wrong[0].text
    assert "locked" in locked.json()["reason"]
    users.enable(site.ctx, OPERATOR, "radio.a")  # an admin lifts the lockout
    assert login(http)


@pytest.mark.parametrize(("body", "status"), [
    (b"{", 400),
    (b"[]", 400),
    (b'{"username": "radio.a"}', 400),
    (json.dumps({"username": "u" * 65, "password": PASSWORD}).encode(), 400),
    (json.dumps({"username": "radio.a", "password": "p" * 1025}).encode(), 400),
    (b'{"username": "radio.a", "password": "' + b"p" * 9000 + b'"}', 413),
])
def test_login_requests_are_bounded(http: TestClient, body: bytes, status: int) -> None:
    response = http.post("/api/auth/login", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text


def test_jwks_publishes_the_verification_key(http: TestClient, site: WebArchive) -> None:
    token = login(http)
    [key] = http.get("/api/auth/jwks").json()["keys"]
    assert key["kid"] == jwt.get_unverified_header(token)["kid"] and "d" not in key
    claims = jwt.decode(token, jwt.PyJWK(key).key, algorithms=["EdDSA"], audience="coffre")
    assert claims["sub"] == "radio.a"


# -- the token zoo ---------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _zoo(ctx: Context, http: TestClient) -> dict[str, tuple[str, str]]:
    """name -> (token, expected audit reason)."""
    good = login(http)
    key = load_signing_key(ctx.settings.signing_key_path)
    kid = key_id(key.public_key())
    claims = jwt.decode(good, options={"verify_signature": False})
    now = int(time.time())

    def sign(signer: Any = key, headers: dict[str, Any] | None = None, **changes: Any) -> str:
        body = {k: v for k, v in {**claims, **changes}.items() if v is not None}
        return jwt.encode(body, signer, algorithm="EdDSA", headers=headers or {"kid": kid, "typ": "at+jwt"})

    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    payload = _b64(json.dumps(claims).encode())
    hs256 = f"{head}.{payload}.{_b64(hmac.new(public_pem, f'{head}.{payload}'.encode(), hashlib.sha256).digest())}"
    h, _, s = good.split(".")
    tampered = f"{h}.{_b64(json.dumps({**claims, 'roles': ['territory-admin']}).encode())}.{s}"
    other_key = ed25519.Ed25519PrivateKey.generate()

    revoked = login(http)
    assert http.post("/api/auth/logout", headers=bearer(revoked)).status_code == 204
    users.create_user(ctx, OPERATOR, username="leaver", password=PASSWORD, roles=frozenset({Role.RADIOLOGIST}),
                      facilities=["site-a"])
    leaver = login(http, "leaver")
    users.disable(ctx, OPERATOR, "leaver")

    return {
        "expired": (sign(iat=now - 7200, nbf=now - 7200, exp=now - 3600), "expired"),
        "not yet valid": (sign(nbf=now + 3600, exp=now + 7200), "not-yet-valid"),
        "issued in the future": (sign(iat=now + 3600, nbf=now, exp=now + 7200), "not-yet-valid"),
        "alg none": (jwt.encode(claims, None, algorithm="none", headers={"kid": kid}), "algorithm"),
        "HS256 with the public key": (hs256, "algorithm"),
        "wrong audience": (sign(aud="someone-else"), "audience"),
        "wrong issuer": (sign(iss="evil"), "unknown-issuer"),
        "unknown kid": (sign(other_key, headers={"kid": "other", "typ": "at+jwt"}), "unknown-key"),
        "no kid": (sign(other_key, headers={"typ": "at+jwt"}), "unknown-key"),
        "another type of token": (sign(headers={"kid": kid, "typ": "share+jwt"}), "type"),
        "untyped": (sign(headers={"kid": kid}), "type"),
        "forged with our kid": (sign(other_key), "signature"),
        "tampered payload": (tampered, "signature"),
        "missing jti": (sign(jti=None), "missing-claim"),
        "unknown user": (sign(sub="ghost"), "unknown-user"),
        "revoked jti": (revoked, "revoked"),
        "disabled user": (leaver, "disabled-user"),
        "garbage": ("eyJhbGciOi.garbage.x", "malformed"),
        "dots only": ("..", "malformed"),
        "huge": ("eyJ" + "a" * 20000 + ".b.c", "malformed"),
    }


def test_the_token_zoo_gets_401_on_a_real_route(http: TestClient, site: WebArchive) -> None:
    zoo = _zoo(site.ctx, http)
    good = login(http)
    assert http.get(STUDIES, headers=bearer(good)).status_code in (200, 204)  # the control
    for name, (token, reason) in zoo.items():
        before = len(audit_rows(site.ctx, "authenticate"))
        response = http.get(STUDIES, headers=bearer(token))
        assert response.status_code == 401, name
        assert response.headers["www-authenticate"].startswith("Bearer"), name
        assert response.json()["reason"] == "a valid bearer token is required", name
        new = audit_rows(site.ctx, "authenticate")[before:]
        assert [(r.outcome, json.loads(r.detail)["reason"]) for r in new] == [("refused", reason)], name
    text = " ".join(" ".join(str(v) for v in r) for r in audit_rows(site.ctx, "authenticate"))
    for token, _ in zoo.values():
        assert token[-16:] not in text  # never the token (nor its signature)


def test_missing_and_non_bearer_credentials(http: TestClient) -> None:
    for headers in ({}, {"Authorization": "Basic cmFkaW8uYTpwYXNz"}, {"Authorization": "Bearer"},
                    {"Authorization": "Bearer cof_not_a_token"}):
        response = http.get(STUDIES, headers=headers)
        assert response.status_code == 401 and response.headers["www-authenticate"].startswith("Bearer")


# -- OpenID Connect --------------------------------------------------------------------


def test_an_oidc_token_reaches_the_routes(http: TestClient, idp_key: rsa.RSAPrivateKey) -> None:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": "coffre", "sub": "a1b2", "iat": now, "exp": now + 300, "jti": "j-1",
              "preferred_username": "dr.oidc", "roles": ["clinician", "admin"], "facilities": ["site-b"]}
    token = jwt.encode(claims, idp_key, algorithm="RS256", headers={"kid": "k1"})
    me = http.get("/api/auth/me", headers=bearer(token))
    assert me.status_code == 200, me.text
    assert me.json() == {"username": "dr.oidc", "subject": f"{ISSUER}#a1b2", "kind": "user",
                         "roles": ["clinician"], "facilities": ["site-b"], "facility": "site-b"}
    assert http.get(STUDIES, headers=bearer(token)).status_code in (200, 204)
    assert http.post("/api/auth/logout", headers=bearer(token)).status_code == 204
    assert http.get("/api/auth/me", headers=bearer(token)).status_code == 401
    wrong = jwt.encode({**claims, "aud": "other"}, idp_key, algorithm="RS256", headers={"kid": "k1"})
    assert http.get(STUDIES, headers=bearer(wrong)).status_code == 401
