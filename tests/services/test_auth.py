"""Access tokens: Coffre's own (Ed25519 key, claims, re-checked user, revocation) and an
OpenID Connect provider's, verified against its JWKS served by a real local HTTP server."""

from __future__ import annotations

import json
import secrets
import stat
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import select

from coffre.app import Context
from coffre.errors import ConfigurationError, NotAuthorized
from coffre.index.engine import Database, open_database
from coffre.index.schema import audit_event
from coffre.model import Actor, ActorKind, Role
from coffre.services import auth, facilities, users
from coffre.services.tokens import NotAuthenticated, create_token
from coffre.settings import SecuritySettings, Settings
from coffre.storage.memory import MemoryBlobStore

OPERATOR = Actor.system("tests")
ISSUER = "https://idp.example/realms/territoire"


# -- fixtures --------------------------------------------------------------------------


class JwksServer:
    """The OIDC provider's JWKS endpoint: a real HTTP server on a loopback port."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.hits = 0
        self.status = 200
        self.body: bytes | None = None
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.hits += 1
                body = owner.body if owner.body is not None else json.dumps({"keys": owner.keys}).encode()
                self.send_response(owner.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/realms/territoire/certs"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


class Provider:
    """Keys of the "provider" (made with cryptography) and tokens it signs."""

    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())

    def jwks(self) -> list[dict[str, Any]]:
        rsa_jwk = jwt.algorithms.RSAAlgorithm.to_jwk(self.rsa.public_key(), as_dict=True)
        ec_jwk = jwt.algorithms.ECAlgorithm.to_jwk(self.ec.public_key(), as_dict=True)
        return [{**rsa_jwk, "kid": "rsa-1", "use": "sig", "alg": "RS256"}, {**ec_jwk, "kid": "ec-1"}]

    @staticmethod
    def claims(**overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER, "aud": ["coffre", "account"], "sub": "3f2a-77", "iat": now, "exp": now + 300,
            "jti": secrets.token_hex(8), "typ": "Bearer", "preferred_username": "dr.martin",
            "realm_access": {"roles": ["radiologist", "offline_access", "clinician"]},
            "facilities": ["site-a", "nowhere"],
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, kid: str = "rsa-1", alg: str = "RS256", key: Any = None, **overrides: Any) -> str:
        key = key if key is not None else (self.ec if alg.startswith("ES") else self.rsa)
        return jwt.encode(self.claims(**overrides), key, algorithm=alg, headers={"kid": kid})


@pytest.fixture(scope="module")
def provider() -> Provider:
    return Provider()


@pytest.fixture
def jwks_server(provider: Provider) -> Iterator[JwksServer]:
    server = JwksServer()
    server.keys = provider.jwks()
    yield server
    server.close()


def make_ctx(database: Database, tmp_path: Path, **security: Any) -> Context:
    settings = Settings(data_dir=tmp_path, security=replace(SecuritySettings(), **security))
    return Context(settings=settings, db=database, blobs=MemoryBlobStore())


@pytest.fixture
def ctx(database: Database, tmp_path: Path, jwks_server: JwksServer) -> Context:
    ctx = make_ctx(database, tmp_path, revocation_cache_seconds=0.0, oidc_issuer=ISSUER, oidc_audience="coffre",
                   oidc_jwks_url=jwks_server.url, oidc_roles_claim="realm_access.roles")
    for slug in ("site-a", "site-b"):
        facilities.add_facility(ctx, OPERATOR, slug=slug, name=slug.upper(), issuer=slug.upper())
    users.create_user(ctx, OPERATOR, username="bob", password=None, roles=frozenset({Role.RADIOLOGIST}),
                      facilities=["site-a"], display_name="Dr Bob")
    return ctx


def token_for(ctx: Context, username: str = "bob") -> str:
    return auth.create_access_token(ctx, OPERATOR, username).access_token


def refusals(ctx: Context) -> list[str]:
    with ctx.db.read() as tx:
        rows = tx.execute(select(audit_event.c.detail).where(
            audit_event.c.action == "authenticate", audit_event.c.outcome == "refused").order_by(audit_event.c.id))
        return [json.loads(r.detail)["reason"] for r in rows]


def refused(ctx: Context, token: str, reason: str) -> None:
    before = len(refusals(ctx))
    with pytest.raises(NotAuthenticated):
        auth.authenticate_bearer(ctx, token, "10.9.9.9")
    assert refusals(ctx)[before:] == [reason]


# -- the signing key -------------------------------------------------------------------


def test_signing_key_is_created_private_and_reused(ctx: Context, database: Database) -> None:
    token = token_for(ctx)
    path = ctx.settings.signing_key_path
    assert path == ctx.settings.data_dir / "secrets" / "token-signing-key.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    assert jwt.get_unverified_header(token)["kid"] == auth.public_jwks(ctx)["keys"][0]["kid"]

    # another process (another engine, so fresh caches) reads the same key
    url = database.engine.url.render_as_string(hide_password=False)
    other_db = open_database(url)
    try:
        other = Context(settings=ctx.settings, db=other_db, blobs=MemoryBlobStore())
        assert auth.authenticate_bearer(other, token, "").name == "bob"
    finally:
        other_db.dispose()


def test_signing_key_creation_is_race_safe_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "key.pem"
    script = ("import sys; from pathlib import Path; from coffre.services.auth import key_id, load_signing_key; "
              "print(key_id(load_signing_key(Path(sys.argv[1])).public_key()))")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, text=True)
             for _ in range(6)]
    kids = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(kids) == 1 and kids != {""}
    assert [p.name for p in path.parent.iterdir()] == ["key.pem"]  # no temp file left


def test_configured_key_file_and_a_wrong_key_type(database: Database, tmp_path: Path) -> None:
    key_file = tmp_path / "keys" / "signing.pem"
    ctx = make_ctx(database, tmp_path, signing_key_file=str(key_file))
    assert auth.public_jwks(ctx)["keys"][0]["crv"] == "Ed25519"
    assert key_file.exists()

    rsa_pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    wrong = tmp_path / "rsa.pem"
    wrong.write_bytes(rsa_pem)
    with pytest.raises(ConfigurationError, match="not an Ed25519"):
        auth.load_signing_key(wrong)


# -- Coffre's tokens -------------------------------------------------------------------


def test_token_claims(ctx: Context) -> None:
    issued = auth.create_access_token(ctx, OPERATOR, "bob")
    header = jwt.get_unverified_header(issued.access_token)
    assert header["alg"] == "EdDSA"
    public = auth.load_signing_key(ctx.settings.signing_key_path).public_key()
    claims = jwt.decode(issued.access_token, public, algorithms=["EdDSA"], audience="coffre", issuer="coffre")
    ttl = ctx.settings.security.token_ttl_seconds
    assert claims["sub"] == "bob" and claims["name"] == "Dr Bob"
    assert claims["roles"] == ["radiologist"] and claims["facilities"] == ["site-a"]
    assert claims["exp"] == claims["nbf"] + ttl == int(claims["iat"]) + ttl
    assert abs(claims["iat"] - time.time()) < 60
    assert len(claims["jti"]) == 32 and int(claims["jti"], 16) >= 0 and claims["jti"] == issued.jti
    assert issued.expires_in == ttl and issued.token_type == "Bearer"
    assert token_for(ctx) != issued.access_token


def test_only_the_operator_issues_tokens_for_others(ctx: Context) -> None:
    bob = auth.authenticate_bearer(ctx, token_for(ctx), "")
    with pytest.raises(NotAuthorized, match="may not issue"):
        auth.create_access_token(ctx, bob, "bob")


def test_the_actor_comes_from_the_index_at_each_request(ctx: Context) -> None:
    token = token_for(ctx)
    actor = auth.authenticate_bearer(ctx, token, "10.0.0.1")
    assert actor.kind is ActorKind.USER and actor.subject == actor.name == "bob"
    assert actor.roles == {Role.RADIOLOGIST} and actor.facility is not None and actor.facility.slug == "site-a"
    assert actor.address == "10.0.0.1" and actor.token_id == jwt.decode(
        token, options={"verify_signature": False})["jti"]

    users.set_roles(ctx, OPERATOR, "bob", frozenset({Role.AUDITOR, Role.CLINICIAN}))
    users.set_facilities(ctx, OPERATOR, "bob", ["site-b", "site-a"])
    actor = auth.authenticate_bearer(ctx, token, "")
    assert actor.roles == {Role.AUDITOR, Role.CLINICIAN}
    assert [f.slug for f in actor.facilities] == ["site-a", "site-b"]

    users.disable(ctx, OPERATOR, "bob")
    refused(ctx, token, "disabled-user")
    assert not any(token in r or token[-20:] in r for r in _audit_text(ctx))


def _audit_text(ctx: Context) -> list[str]:
    with ctx.db.read() as tx:
        return [" ".join(str(v) for v in r) for r in tx.execute(select(audit_event))]


def test_sign_out_everywhere_and_password_change(ctx: Context) -> None:
    first = token_for(ctx)
    users.revoke_user_tokens(ctx, OPERATOR, "bob")
    refused(ctx, first, "revoked")
    second = token_for(ctx)
    assert auth.authenticate_bearer(ctx, second, "").name == "bob"
    users.set_password(ctx, OPERATOR, "bob", "a brand new passphrase")
    refused(ctx, second, "revoked")
    third = auth.login(ctx, "bob", "a brand new passphrase", address="").access_token
    assert auth.authenticate_bearer(ctx, third, "").name == "bob"


def test_times_are_checked_on_the_context_clock_with_leeway(ctx: Context) -> None:
    issued = auth.create_access_token(ctx, OPERATOR, "bob")
    t0 = datetime.fromtimestamp(jwt.decode(issued.access_token, options={"verify_signature": False})["iat"], UTC)
    ttl = ctx.settings.security.token_ttl_seconds

    def at(moment: datetime) -> Context:
        return replace(ctx, clock=lambda: moment)

    assert auth.authenticate_bearer(at(t0 + timedelta(seconds=ttl + 29)), issued.access_token, "")
    refused(at(t0 + timedelta(seconds=ttl + 31)), issued.access_token, "expired")
    assert auth.authenticate_bearer(at(t0 - timedelta(seconds=29)), issued.access_token, "")
    refused(at(t0 - timedelta(seconds=31)), issued.access_token, "not-yet-valid")


def test_logout_reaches_other_processes_within_the_cache_delay(
    ctx: Context, database: Database, tmp_path: Path
) -> None:
    url = database.engine.url.render_as_string(hide_password=False)
    token = token_for(ctx)
    for delay, accepted_right_after in ((10.0, True), (1.0, False)):
        other_db = open_database(url)  # a second process: its own engine and caches
        try:
            other = replace(ctx, db=other_db, settings=replace(
                ctx.settings, security=replace(ctx.settings.security, revocation_cache_seconds=delay)))
            token = token_for(ctx)
            assert auth.authenticate_bearer(other, token, "").name == "bob"  # caches the revoked set
            auth.logout(ctx, token, address="")
            refused(ctx, token, "revoked")  # this process: at once
            if accepted_right_after:  # the other one still trusts its cache for up to 10 s
                assert auth.authenticate_bearer(other, token, "").name == "bob"
                continue
            revoked_at = time.monotonic()
            while True:
                try:
                    auth.authenticate_bearer(other, token, "")
                except NotAuthenticated:
                    break
                assert time.monotonic() - revoked_at < delay + 3, "revocation not seen in time"
                time.sleep(0.05)
        finally:
            other_db.dispose()


def test_logout_rows_expire_and_are_purged(ctx: Context) -> None:
    from coffre.index.schema import revoked_token

    token = token_for(ctx)
    auth.logout(ctx, token, address="")
    with ctx.db.read() as tx:
        [row] = tx.execute(select(revoked_token)).all()
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    assert row.expires_at == datetime.fromtimestamp(exp, UTC) + timedelta(seconds=auth.LEEWAY)
    later = replace(ctx, clock=lambda: row.expires_at + timedelta(seconds=1))
    auth.logout(later, auth.create_access_token(later, OPERATOR, "bob").access_token, address="")
    with ctx.db.read() as tx:
        assert tx.execute(select(revoked_token).where(revoked_token.c.jti == row.jti)).first() is None


def test_api_tokens_and_access_tokens_share_one_entry_point(ctx: Context) -> None:
    api = create_token(ctx, OPERATOR, facility_slug="site-a", name="pacs")
    assert auth.authenticate(ctx, api, address="").kind is ActorKind.CLIENT
    assert auth.authenticate(ctx, token_for(ctx), address="").kind is ActorKind.USER
    for bad in (None, "", "cof_nope", "a.b.c", "x" * 20000):
        with pytest.raises(NotAuthenticated):
            auth.authenticate(ctx, bad, address="")


# -- OpenID Connect --------------------------------------------------------------------


def test_oidc_token_becomes_a_user_actor(ctx: Context, provider: Provider, jwks_server: JwksServer) -> None:
    actor = auth.authenticate_bearer(ctx, provider.token(), "10.2.2.2")
    assert actor.kind is ActorKind.USER
    assert actor.subject == f"{ISSUER}#3f2a-77" and actor.name == "dr.martin"
    assert actor.roles == {Role.RADIOLOGIST, Role.CLINICIAN}  # offline_access ignored
    assert [f.slug for f in actor.facilities] == ["site-a"]  # unknown slug ignored
    assert actor.token_id

    es = auth.authenticate_bearer(ctx, provider.token(kid="ec-1", alg="ES256", facilities="site-b"), "")
    assert [f.slug for f in es.facilities] == ["site-b"]
    bare = auth.authenticate_bearer(ctx, provider.token(realm_access=None, facilities=None, jti=None,
                                                        preferred_username=None), "")
    assert bare.roles == frozenset() and bare.facility is None and bare.name == "3f2a-77" and not bare.token_id
    assert jwks_server.hits == 1  # cached


def test_oidc_refusals(ctx: Context, provider: Provider, jwks_server: JwksServer) -> None:
    public_pem = provider.rsa.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    refused(ctx, _hs256(provider.claims(), public_pem, kid="rsa-1"), "algorithm")
    refused(ctx, jwt.encode(provider.claims(), None, algorithm="none", headers={"kid": "rsa-1"}), "algorithm")
    refused(ctx, provider.token(alg="RS384"), "algorithm")  # not in oidc_algorithms
    refused(ctx, provider.token(kid="rsa-1", alg="ES256"), "algorithm")  # the key says RS256
    refused(ctx, provider.token(kid="ec-1", alg="RS256"), "key")  # an EC key cannot verify RS256
    refused(ctx, provider.token(aud="someone-else"), "audience")
    refused(ctx, provider.token(iss=ISSUER + "/other"), "unknown-issuer")
    refused(ctx, provider.token(exp=int(time.time()) - 120), "expired")
    refused(ctx, provider.token(typ="ID"), "not-an-access-token")
    refused(ctx, provider.token(sub=None), "missing-claim")
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    refused(ctx, provider.token(key=other_key), "signature")
    assert auth.authenticate_bearer(ctx, provider.token(), "").name == "dr.martin"


def _hs256(claims: dict[str, Any], secret: bytes, kid: str) -> str:
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    body = b64(json.dumps(claims).encode())
    mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(mac)}"


def test_unknown_kids_cause_at_most_one_fetch_per_period(
    ctx: Context, provider: Provider, jwks_server: JwksServer
) -> None:
    assert auth.authenticate_bearer(ctx, provider.token(), "")
    assert jwks_server.hits == 1
    for _ in range(10):
        refused(ctx, provider.token(kid=secrets.token_hex(4)), "unknown-key")
    assert jwks_server.hits == 2


def test_a_rotated_key_is_fetched_on_its_first_token(
    ctx: Context, provider: Provider, jwks_server: JwksServer
) -> None:
    assert auth.authenticate_bearer(ctx, provider.token(), "")
    new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks_server.keys = [*jwks_server.keys, {**jwt.algorithms.RSAAlgorithm.to_jwk(new_key.public_key(), as_dict=True),
                                            "kid": "rsa-2"}]
    assert auth.authenticate_bearer(ctx, provider.token(kid="rsa-2", key=new_key), "").name == "dr.martin"
    assert jwks_server.hits == 2


def test_weak_symmetric_and_oversized_jwks(ctx: Context, provider: Provider, jwks_server: JwksServer,
                                           database: Database, tmp_path: Path) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    jwks_server.keys = [
        {**jwt.algorithms.RSAAlgorithm.to_jwk(weak.public_key(), as_dict=True), "kid": "weak"},
        {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
    ]
    with warnings.catch_warnings():  # the provider signs with a weak key on purpose
        warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)
        weak_token = provider.token(kid="weak", key=weak)
    refused(ctx, weak_token, "key")
    refused(ctx, _hs256(provider.claims(), b"secret", kid="hmac"), "algorithm")

    jwks_server.body = b'{"keys": [' + b" " * (1 << 20) + b"]}"
    fresh = make_ctx(database, tmp_path, oidc_issuer=ISSUER, oidc_audience="coffre",
                     oidc_jwks_url=jwks_server.url.replace("/certs", "/certs?big"))
    refused(fresh, provider.token(), "unknown-key")


def test_an_unreachable_provider_is_a_401(database: Database, tmp_path: Path, provider: Provider) -> None:
    server = JwksServer()
    url = server.url
    server.close()  # nothing listens there any more
    ctx = make_ctx(database, tmp_path, oidc_issuer=ISSUER, oidc_audience="coffre", oidc_jwks_url=url)
    refused(ctx, provider.token(), "unknown-key")


def test_a_failing_provider_is_retried_at_most_every_few_seconds(
    ctx: Context, provider: Provider, jwks_server: JwksServer
) -> None:
    jwks_server.status = 500
    for _ in range(5):
        refused(ctx, provider.token(), "unknown-key")
        refused(ctx, provider.token(kid="other"), "unknown-key")
    assert jwks_server.hits == 1


def test_fetch_jwks_keeps_signature_keys_only(jwks_server: JwksServer, provider: Provider) -> None:
    jwks_server.keys = [*provider.jwks(), {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
                        {**provider.jwks()[0], "kid": "enc", "use": "enc"}, {**provider.jwks()[0], "kid": None},
                        "not an object"]  # type: ignore[list-item]
    assert set(auth.fetch_jwks(jwks_server.url)) == {"rsa-1", "ec-1"}
    with pytest.raises(ValueError):
        auth.fetch_jwks("file:///etc/passwd")
    jwks_server.body = b"[]"
    with pytest.raises(ValueError):
        auth.fetch_jwks(jwks_server.url)
