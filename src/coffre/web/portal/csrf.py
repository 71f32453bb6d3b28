"""Cross-site request forgery protection and the portal's secrets (OWASP CSRF cheat sheet).

Every state-changing request of the portal is a POST that must pass two checks:

1. **Where it comes from** (:func:`cross_site`): browsers send ``Sec-Fetch-Site``; only
   ``same-origin`` (and ``none``, a user-typed navigation) is accepted. Without it,
   ``Origin`` must be this origin when it names one (it is ``null`` under the pages'
   ``no-referrer`` policy). A request with neither is not a browser's, so it cannot
   carry a forged form, and still needs the token.
2. **A synchronizer token** (:func:`csrf_token`): ``HMAC-SHA256(secret, session token)``
   in a hidden field ``csrf`` of every form, compared in constant time. It is bound to
   the session (a token of another session, or of no session, fails) and needs no
   server state. Before sign-in, the login form's token is bound the same way to a
   random, short-lived ``coffre_login`` cookie (login CSRF).

The **secret** is derived from the archive's token signing key (``HMAC(key, label)``),
so every node sharing the key (and only them) computes the same tokens, and a new key
invalidates them all; it is computed once per application. :class:`Sealer` uses it,
under another label, to seal short-lived cookies with AES-GCM (confidential and
authenticated): the OpenID Connect state, nonce and PKCE verifier.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
import urllib.parse
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from starlette.requests import Request

from coffre.app import Context
from coffre.services.auth import load_signing_key

CSRF_FIELD = "csrf"
LOGIN_COOKIE = "coffre_login"
LOGIN_COOKIE_SECONDS = 1800
MAX_FORM_BYTES = 16_384
MAX_FORM_FIELDS = 16
_SECRET_LABEL = b"coffre portal secret v1"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def derive_secret(ctx: Context) -> bytes:
    """The portal's 256-bit secret, derived from the token signing key (module doc)."""
    key = load_signing_key(ctx.settings.signing_key_path)
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                            serialization.NoEncryption())
    return hmac.new(raw, _SECRET_LABEL, hashlib.sha256).digest()


def portal_secret(request: Request) -> bytes:
    """The secret of this application (derived once, kept in ``app.state``)."""
    found: bytes | None = getattr(request.app.state, "coffre_portal_secret", None)
    if found is None:
        found = derive_secret(request.app.state.ctx)
        request.app.state.coffre_portal_secret = found
    return found


def _mac(secret: bytes, purpose: str, value: str) -> str:
    message = purpose.encode("ascii") + b"\0" + hashlib.sha256(value.encode("utf-8")).digest()
    return _b64(hmac.new(secret, message, hashlib.sha256).digest())


def csrf_token(secret: bytes, session_token: str) -> str:
    """The synchronizer token of a session (the same for all of its forms)."""
    return _mac(secret, "csrf", session_token)


def login_token(secret: bytes, login_nonce: str) -> str:
    """The login form's token, bound to the ``coffre_login`` cookie's random value."""
    return _mac(secret, "login", login_nonce)


def new_login_nonce() -> str:
    return secrets.token_urlsafe(24)


def valid(expected: str, submitted: str | None) -> bool:
    """Constant-time comparison; a missing or oversized value is invalid."""
    if not submitted or len(submitted) > 256:
        return False
    return hmac.compare_digest(expected.encode("ascii"), submitted.encode("ascii", "replace"))


def own_origin(request: Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc}"


def cross_site(request: Request) -> bool:
    """True for a browser request started by another site (module doc, check 1)."""
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None:
        return fetch_site.strip().lower() not in {"same-origin", "none"}
    origin = request.headers.get("origin")
    return origin is not None and origin != "null" and origin != own_origin(request)


async def read_form(request: Request) -> dict[str, str] | None:
    """The fields of an ``application/x-www-form-urlencoded`` body (first value of each),
    at most :data:`MAX_FORM_BYTES`; None when the body is not such a form or too large."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return None
    try:
        pairs = urllib.parse.parse_qsl(body.decode("utf-8"), keep_blank_values=True,
                                       max_num_fields=MAX_FORM_FIELDS, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        return None
    fields: dict[str, str] = {}
    for name, value in pairs:
        fields.setdefault(name, value)
    return fields


class Sealer:
    """Seal small JSON values into cookie-safe strings with AES-GCM and an expiry.

    ``purpose`` is bound as associated data: a value sealed for one use cannot be
    replayed in another.
    """

    def __init__(self, secret: bytes) -> None:
        key = hmac.new(secret, b"coffre portal sealing key v1", hashlib.sha256).digest()
        self._aead = AESGCM(key)

    def seal(self, purpose: str, value: dict[str, Any], ttl_seconds: int) -> str:
        payload = json.dumps({"v": value, "exp": int(time.time()) + ttl_seconds},
                             separators=(",", ":")).encode("utf-8")
        nonce = os.urandom(12)
        return _b64(nonce + self._aead.encrypt(nonce, payload, purpose.encode("ascii")))

    def unseal(self, purpose: str, sealed: str | None) -> dict[str, Any] | None:
        """The value, or None when absent, forged, for another purpose or expired."""
        if not sealed or len(sealed) > 4096:
            return None
        try:
            raw = _unb64(sealed)
            payload = json.loads(self._aead.decrypt(raw[:12], raw[12:], purpose.encode("ascii")))
        except (ValueError, InvalidTag, UnicodeDecodeError):
            return None
        if not isinstance(payload, dict) or not isinstance(payload.get("v"), dict):
            return None
        expires = payload.get("exp")
        if not isinstance(expires, int) or expires < time.time():
            return None
        value: dict[str, Any] = payload["v"]
        return value


__all__ = [
    "CSRF_FIELD",
    "LOGIN_COOKIE",
    "Sealer",
    "cross_site",
    "csrf_token",
    "derive_secret",
    "login_token",
    "new_login_nonce",
    "portal_secret",
    "read_form",
    "valid",
]
