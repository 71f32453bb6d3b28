"""Sign-in with an OpenID Connect provider: authorization code flow with PKCE.

OpenID Connect Core 1.0 §3.1 (authorization code flow), RFC 7636 (PKCE, ``S256``),
OpenID Connect Discovery 1.0 §4 (``<issuer>/.well-known/openid-configuration``).

1. ``/portal/oidc/start``: a random ``state``, ``nonce`` and PKCE ``code_verifier`` are
   sealed (AES-GCM, 10 minutes) in the ``coffre_oidc`` cookie (``HttpOnly``,
   ``SameSite=Lax``: it must come back with the provider's top-level redirect), and the
   browser goes to the provider's authorization endpoint with the ``S256`` challenge.
2. ``/portal/oidc/callback``: ``state`` must equal the cookie's; the code is exchanged at
   the token endpoint (stdlib ``urllib``, bounded size and time) with the verifier. The
   ID token comes straight from the token endpoint over TLS, so its signature is not
   needed (Core §3.1.3.7 item 6); its ``iss``, ``aud``/``azp``, ``exp`` and ``nonce`` are
   checked. The **access token** is then verified by
   :func:`coffre.services.auth.authenticate_bearer` exactly as on an API call
   (signature against the provider's JWKS, issuer, audience, expiry, revocation) and
   must name the same subject as the ID token. It becomes the session.

Settings: ``[security] oidc_issuer`` (and the existing ``oidc_*`` settings that verify
the provider's tokens) plus, read with fallbacks until they exist in ``settings.py``:
``oidc_client_id`` (default: ``oidc_audience``), ``oidc_client_secret`` (empty: a public
client), ``oidc_redirect_uri`` (default: ``<this origin>/portal/oidc/callback``),
``oidc_scopes`` (default ``openid profile``) and ``oidc_provider_name`` (the button's
label; default: the issuer's host name).
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import secrets
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

import jwt

from coffre.settings import SecuritySettings

TIMEOUT = 5.0
MAX_DOCUMENT_BYTES = 1 << 20
DISCOVERY_TTL = 3600.0
LEEWAY = 30
STATE_TTL = 600


class OidcError(Exception):
    """The provider's answer cannot be used (the reason names no user data)."""


@dataclass(frozen=True, slots=True)
class OidcConfig:
    issuer: str
    client_id: str
    client_secret: str
    redirect_uri: str
    scopes: str
    provider_name: str


def oidc_config(security: SecuritySettings) -> OidcConfig | None:
    """The client settings (module doc), or None when sign-in with a provider is off."""
    issuer = security.oidc_issuer.strip()
    client_id = (security.oidc_client_id or security.oidc_audience).strip()
    if not issuer or not client_id:
        return None
    name = security.oidc_provider_name or urllib.parse.urlsplit(issuer).hostname or issuer
    return OidcConfig(
        issuer=issuer,
        client_id=client_id,
        client_secret=security.oidc_client_secret,
        redirect_uri=security.oidc_redirect_uri,
        scopes=security.oidc_scopes or "openid profile",
        provider_name=name,
    )


@dataclass(frozen=True, slots=True)
class Provider:
    """What discovery says about the provider."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str


def _check_url(url: object, issuer: str, what: str) -> str:
    """An endpoint URL: https (or http when the issuer itself is http, e.g. on loopback)."""
    if not isinstance(url, str) or len(url) > 2048:
        raise OidcError(f"discovery: no {what}")
    parts = urllib.parse.urlsplit(url)
    allowed = {"https"} | ({"http"} if issuer.startswith("http://") else set())
    if parts.scheme not in allowed or not parts.netloc or parts.fragment:
        raise OidcError(f"discovery: {what} is not an https URL")
    return url


def _read(response: http.client.HTTPResponse, deadline: float) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        if time.monotonic() > deadline:
            raise OidcError("the provider took too long")
        chunk = response.read(65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > MAX_DOCUMENT_BYTES:
            raise OidcError("the provider's answer is too large")
        chunks.append(chunk)


def _json_request(request: urllib.request.Request) -> dict[str, Any]:
    if not request.full_url.startswith(("https://", "http://")):
        raise OidcError("not an http(s) URL")
    deadline = time.monotonic() + TIMEOUT
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:  # noqa: S310 - scheme checked above
            body = _read(response, deadline)
    except urllib.error.HTTPError as exc:
        raise OidcError(f"the provider answered HTTP {exc.code}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise OidcError(f"cannot reach the provider: {type(exc).__name__}") from None
    try:
        document = json.loads(body)
    except ValueError:
        raise OidcError("the provider's answer is not JSON") from None
    if not isinstance(document, dict):
        raise OidcError("the provider's answer is not a JSON object")
    return document


_discovered: dict[str, tuple[Provider, float]] = {}
_discovery_lock = threading.Lock()


def discover(issuer: str) -> Provider:
    """The provider's endpoints from its discovery document (cached an hour per process)."""
    with _discovery_lock:
        found = _discovered.get(issuer)
        if found is not None and time.monotonic() - found[1] < DISCOVERY_TTL:
            return found[0]
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    headers = {"Accept": "application/json", "User-Agent": "coffre"}
    document = _json_request(urllib.request.Request(url, headers=headers))  # noqa: S310 - checked in _json_request
    if document.get("issuer") != issuer:
        raise OidcError("discovery: the document is for another issuer")
    methods = document.get("code_challenge_methods_supported")
    if isinstance(methods, list) and "S256" not in methods:
        raise OidcError("discovery: the provider does not support PKCE S256")
    provider = Provider(
        issuer=issuer,
        authorization_endpoint=_check_url(document.get("authorization_endpoint"), issuer, "authorization endpoint"),
        token_endpoint=_check_url(document.get("token_endpoint"), issuer, "token endpoint"),
    )
    with _discovery_lock:
        _discovered[issuer] = (provider, time.monotonic())
    return provider


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True, slots=True)
class Attempt:
    """One sign-in attempt's secrets (kept in the sealed cookie)."""

    state: str
    nonce: str
    verifier: str
    next_path: str

    @staticmethod
    def new(next_path: str) -> Attempt:
        # RFC 7636 4.1: 43-128 characters of [A-Za-z0-9-._~]; 32 random bytes -> 43
        return Attempt(secrets.token_urlsafe(24), secrets.token_urlsafe(24), secrets.token_urlsafe(32), next_path)

    @property
    def challenge(self) -> str:
        """RFC 7636 4.2: ``BASE64URL(SHA256(ASCII(code_verifier)))``."""
        return _b64(hashlib.sha256(self.verifier.encode("ascii")).digest())

    def as_dict(self) -> dict[str, str]:
        return {"s": self.state, "n": self.nonce, "v": self.verifier, "next": self.next_path}

    @staticmethod
    def from_dict(value: dict[str, Any]) -> Attempt | None:
        fields = [value.get(k) for k in ("s", "n", "v", "next")]
        if not all(isinstance(f, str) and f for f in fields):
            return None
        return Attempt(*(str(f) for f in fields))


def authorization_url(provider: Provider, config: OidcConfig, redirect_uri: str, attempt: Attempt) -> str:
    """Core §3.1.2.1: the authentication request (code flow, PKCE S256)."""
    query = urllib.parse.urlencode({
        "response_type": "code", "client_id": config.client_id, "redirect_uri": redirect_uri,
        "scope": config.scopes if "openid" in config.scopes.split() else "openid " + config.scopes,
        "state": attempt.state, "nonce": attempt.nonce,
        "code_challenge": attempt.challenge, "code_challenge_method": "S256",
    })
    separator = "&" if urllib.parse.urlsplit(provider.authorization_endpoint).query else "?"
    return provider.authorization_endpoint + separator + query


@dataclass(frozen=True, slots=True)
class Tokens:
    access_token: str
    id_token: str


def exchange_code(provider: Provider, config: OidcConfig, code: str, redirect_uri: str,
                  attempt: Attempt) -> Tokens:
    """Core §3.1.3: the token request (client_secret_basic, or a public client)."""
    if not code or len(code) > 4096:
        raise OidcError("no authorization code")
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
            "code_verifier": attempt.verifier}
    headers = {"Accept": "application/json", "Content-Type": "application/x-www-form-urlencoded",
               "User-Agent": "coffre"}
    if config.client_secret:
        pair = f"{urllib.parse.quote(config.client_id, safe='')}:{urllib.parse.quote(config.client_secret, safe='')}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")
    else:
        form["client_id"] = config.client_id
    body = urllib.parse.urlencode(form).encode("ascii")
    request = urllib.request.Request(provider.token_endpoint, data=body, headers=headers,  # noqa: S310 - https checked
                                     method="POST")
    document = _json_request(request)
    access, id_token = document.get("access_token"), document.get("id_token")
    token_type = str(document.get("token_type", "")).lower()
    if not isinstance(access, str) or not access or token_type not in ("bearer", "dpop", ""):
        raise OidcError("the token response has no bearer access token")
    if not isinstance(id_token, str) or not id_token:
        raise OidcError("the token response has no ID token")
    return Tokens(access, id_token)


def check_id_token(id_token: str, config: OidcConfig, attempt: Attempt, now: float) -> dict[str, Any]:
    """Core §3.1.3.7: issuer, audience, authorized party, expiry and nonce of the ID token."""
    try:
        claims: dict[str, Any] = jwt.decode(id_token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise OidcError("the ID token is malformed") from None
    if claims.get("iss") != config.issuer:
        raise OidcError("the ID token is from another issuer")
    audience = claims.get("aud")
    audiences = [audience] if isinstance(audience, str) else audience if isinstance(audience, list) else []
    if config.client_id not in audiences:
        raise OidcError("the ID token is for another client")
    if len(audiences) > 1 and claims.get("azp") != config.client_id:
        raise OidcError("the ID token's authorized party is another client")
    exp, iat = claims.get("exp"), claims.get("iat")
    if not isinstance(exp, int | float) or isinstance(exp, bool) or now > exp + LEEWAY:
        raise OidcError("the ID token has expired")
    if isinstance(iat, int | float) and not isinstance(iat, bool) and iat > now + LEEWAY:
        raise OidcError("the ID token is issued in the future")
    nonce = claims.get("nonce")
    if not isinstance(nonce, str) or not secrets.compare_digest(nonce.encode(), attempt.nonce.encode()):
        raise OidcError("the ID token's nonce does not match this sign-in")
    if not isinstance(claims.get("sub"), str) or not claims["sub"]:
        raise OidcError("the ID token has no subject")
    return claims


__all__ = [
    "Attempt",
    "OidcConfig",
    "OidcError",
    "Provider",
    "Tokens",
    "authorization_url",
    "check_id_token",
    "discover",
    "exchange_code",
    "oidc_config",
]
