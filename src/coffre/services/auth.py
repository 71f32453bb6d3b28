"""Access tokens: the ones Coffre signs for its built-in users, and an OpenID Connect
provider's (RFC 7519 JWT, RFC 8725 best practices).

**Coffre's tokens** are signed with EdDSA (Ed25519, RFC 8037) by the key at
``settings.signing_key_path`` (PEM, created on first use: mode 0600 in a 0700 folder,
written to a temporary file and hard-linked into place so that concurrent processes
never overwrite each other's key). Claims: ``iss``, ``aud``, ``sub`` (user name),
``iat``, ``nbf``, ``exp`` (``token_ttl_seconds``), ``jti`` (128 random bits), and for
information ``roles``, ``facilities`` (slugs) and ``name``. The header names the key
(``kid``: its RFC 7638 thumbprint). At every request the user is read again: a
disabled or deleted user is refused, and roles and facilities come from the index, so
a change applies from the next request.

**OpenID Connect** (e.g. Keycloak): tokens whose ``iss`` is ``oidc_issuer`` are verified
with the provider's key named by ``kid`` in its JWKS (``oidc_jwks_url``, fetched with
a 5 s timeout and a 1 MB bound, cached ``oidc_jwks_cache_seconds``; an unknown ``kid``
triggers at most one extra fetch per period). Roles and facilities come from the
configured claims (unknown role names and facility slugs are ignored); the actor's
subject is ``"<issuer>#<sub>"``.

**Verification** picks the key and the allowed algorithms from the issuer, never from
the token: ``EdDSA`` only for Coffre's own tokens, ``oidc_algorithms`` (asymmetric only)
for the provider's; ``none`` and ``HS*`` are never accepted, so a token "signed" with a
public key as an HMAC secret is refused. ``iss``, ``aud``, ``sub``, ``exp`` and ``iat``
are required; times are checked against the context's clock with 30 s of leeway.

**Revocation**: logging out records the token's ``jti`` in ``revoked_token`` until it
would have expired. Each process keeps the set of revoked identifiers in memory and
reloads it at most every ``revocation_cache_seconds`` (≤ 10 s): a revocation reaches
every process within that delay. Revoking all of a user's tokens (password change,
"sign out everywhere") records an instant before which its tokens are refused.

Every refusal is audited (``authenticate``/``refused`` with a reason category, never
the token) and answered with the same :class:`NotAuthenticated`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import json
import logging
import os
import secrets
import tempfile
import threading
import time
import urllib.request
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from coffre.app import Context
from coffre.errors import BadRequest, ConfigurationError, NotAuthorized
from coffre.index import users as user_index
from coffre.index.users import UserRow
from coffre.model import Actor, ActorKind, Role
from coffre.services import audit, tokens, users
from coffre.services.tokens import NotAuthenticated

log = logging.getLogger(__name__)

#: seconds of tolerance on exp, nbf and iat (clock skew between hosts)
LEEWAY = 30
MAX_TOKEN_LENGTH = 16384
MAX_JWKS_BYTES = 1 << 20
JWKS_TIMEOUT = 5.0
#: after a failed JWKS fetch, the next attempt waits at least this long (seconds)
JWKS_RETRY = 10.0
_OWN_ALGORITHM = "EdDSA"
#: explicit typing (RFC 9068 2.1, RFC 8725 3.11): other JWTs signed with the same key
#: (share-link sessions, …) carry another "typ" and are never taken for access tokens
ACCESS_TOKEN_TYPE = "at+jwt"  # noqa: S105 - a media type, not a secret
_OWN_CLAIMS = ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]
_OIDC_CLAIMS = ["exp", "iat", "iss", "aud", "sub"]
_MAX_LIST = 256
_REFUSED = "a valid bearer token is required"


@dataclass(frozen=True, slots=True)
class IssuedToken:
    access_token: str
    expires_in: int
    expires_at: datetime
    jti: str
    token_type: str = "Bearer"  # noqa: S105 - the OAuth 2.0 token type, not a secret


@dataclass(frozen=True, slots=True)
class Verified:
    """A verified token: the actor it stands for, its identifier and expiry."""

    actor: Actor
    jti: str
    expires_at: datetime
    #: "coffre" (signed by this archive) or "oidc"
    source: str


class _Refused(Exception):
    def __init__(self, category: str) -> None:
        super().__init__(category)
        self.category = category


# -- per-process state -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SigningKey:
    """The archive's token signing key (see :func:`signing_key`)."""

    private: Ed25519PrivateKey
    public: Ed25519PublicKey
    kid: str


@dataclass
class _Jwks:
    lock: threading.Lock = field(default_factory=threading.Lock)
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: monotonic time of the last fetch attempt (None: never)
    fetched_at: float | None = None
    ok: bool = False
    #: monotonic time of the last fetch caused by an unknown kid
    kid_refresh_at: float | None = None
    built: dict[tuple[str, str], jwt.PyJWK] = field(default_factory=dict)


@dataclass
class _State:
    """Caches of one process for one index: signing keys, revoked jtis, JWKS."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    signing: dict[Path, SigningKey] = field(default_factory=dict)
    revoked: frozenset[str] = frozenset()
    revoked_loaded: float | None = None
    jwks: dict[str, _Jwks] = field(default_factory=dict)


# Keyed by the index's engine (one per process and database; services do not name
# SQLAlchemy types, hence ``object``), so that the caches live exactly as long as the
# context that uses them; Context itself is a frozen value without room for them.
_STATES: weakref.WeakKeyDictionary[object, _State] = weakref.WeakKeyDictionary()
_STATES_LOCK = threading.Lock()


def _state(ctx: Context) -> _State:
    with _STATES_LOCK:
        found = _STATES.get(ctx.db.engine)
        if found is None:
            found = _STATES[ctx.db.engine] = _State()
        return found


# -- the signing key -------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def key_id(public: Ed25519PublicKey) -> str:
    """The RFC 7638 JWK thumbprint of an Ed25519 public key."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    canonical = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": _b64(raw)}, separators=(",", ":"), sort_keys=True)
    return _b64(hashlib.sha256(canonical.encode("ascii")).digest())


def _create_key_file(path: Path) -> None:
    """Write a new key to ``path`` unless one appears there first (race-safe)."""
    folder = path.parent
    if not folder.exists():
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd, temp = tempfile.mkstemp(dir=folder, prefix=".signing-key-", suffix=".tmp")  # mode 0600
    try:
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
        with contextlib.suppress(FileExistsError):  # another process linked its key first: keep it
            os.link(temp, path)
    finally:
        os.unlink(temp)
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key at ``path``, created first if there is none."""
    if not path.exists():
        _create_key_file(path)
    try:
        data = path.read_bytes()
        if path.stat().st_mode & 0o077:
            log.warning("the token signing key %s is readable by other users (chmod 600)", path)
        key = serialization.load_pem_private_key(data, password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigurationError(f"cannot read the token signing key {path}: {type(exc).__name__}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigurationError(f"the token signing key {path} is not an Ed25519 private key")
    return key


def signing_key(ctx: Context) -> SigningKey:
    """The archive's Ed25519 signing key and its ``kid`` (loaded once per process)."""
    state = _state(ctx)
    path = ctx.settings.signing_key_path
    with state.lock:
        found = state.signing.get(path)
        if found is None:
            private = load_signing_key(path)
            public = private.public_key()
            found = state.signing[path] = SigningKey(private, public, key_id(public))
        return found


_signing_key = signing_key  # the former name, still used by other modules


def public_jwks(ctx: Context) -> dict[str, Any]:
    """Coffre's own JWKS (its token signing public key), for other services."""
    key = signing_key(ctx)
    raw = key.public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": _b64(raw), "kid": key.kid, "alg": _OWN_ALGORITHM,
                      "use": "sig"}]}


# -- issuing ---------------------------------------------------------------------------


def issue_token(ctx: Context, user: UserRow) -> IssuedToken:
    """Sign an access token for a built-in user (callers have authenticated it)."""
    key = signing_key(ctx)
    s = ctx.settings.security
    now = ctx.clock()
    issued = round(now.timestamp(), 6)
    expires = int(issued) + s.token_ttl_seconds
    jti = secrets.token_hex(16)
    claims = {
        "iss": s.token_issuer, "aud": s.token_audience, "sub": user.username,
        "iat": issued, "nbf": int(issued), "exp": expires, "jti": jti,
        "roles": sorted(r.value for r in user.roles),
        "facilities": [f.slug for f in user.facilities],
        "name": user.display_name or user.username,
    }
    token = jwt.encode(claims, key.private, algorithm=_OWN_ALGORITHM, headers={"kid": key.kid, "typ": ACCESS_TOKEN_TYPE})
    return IssuedToken(access_token=token, expires_in=expires - int(issued),
                       expires_at=datetime.fromtimestamp(expires, UTC), jti=jti)


def login(ctx: Context, username: str, password: str, *, address: str) -> IssuedToken:
    """Password login of a built-in user (audited; :class:`~coffre.services.users.LoginFailed`)."""
    return issue_token(ctx, users.check_password(ctx, username, password, address=address))


def create_access_token(ctx: Context, actor: Actor, username: str) -> IssuedToken:
    """A token for ``username`` issued by the operator (``coffre token --user``), audited."""
    if actor.kind is not ActorKind.SYSTEM:
        raise NotAuthorized(f"{actor.describe()} may not issue tokens for other users")
    with ctx.db.write() as tx:
        user = user_index.require_user(tx, username)
        if not user.active:
            raise BadRequest(f"user {username!r} is disabled")
        issued = issue_token(ctx, user)
        audit.record(ctx, tx, actor, "token-issue", facility_id=user.facilities[0].id if user.facilities else None,
                     object_type="user", object_id=username, detail={"jti": issued.jti})
    return issued


# -- verifying -------------------------------------------------------------------------


def looks_like_jwt(token: str) -> bool:
    """JWS compact serialization: three dot-separated parts (API tokens have no dot)."""
    return token.count(".") == 2


def authenticate(ctx: Context, token: str | None, *, address: str) -> Actor:
    """The actor of a bearer credential: an access token (JWT), a share link's recipient
    session (``services.shares``) or a facility API token."""
    if token and looks_like_jwt(token):
        from coffre.services import shares  # imports this module for the signing key

        if shares.is_share_token(token):
            return shares.authenticate_share_token(ctx, token, address)
        return authenticate_bearer(ctx, token, address)
    return tokens.authenticate(ctx, token, address=address)


def authenticate_bearer(ctx: Context, token: str, address: str) -> Actor:
    """The user actor of an access token (Coffre's or the OIDC provider's).

    Any failure is audited with its reason category and raises the same
    :class:`NotAuthenticated` (HTTP 401).
    """
    return verify(ctx, token, address).actor


def verify(ctx: Context, token: str, address: str) -> Verified:
    """Like :func:`authenticate_bearer`, with the token's identifier and expiry."""
    try:
        return _verify(ctx, token, address)
    except _Refused as refused:
        anonymous = Actor(kind=ActorKind.USER, name="anonymous", facility=None, address=address)
        audit.record_alone(ctx, anonymous, "authenticate", outcome="refused",
                           detail={"reason": refused.category, "scheme": "jwt"})
        raise NotAuthenticated(_REFUSED) from None


_ERRORS: Sequence[tuple[type[Exception], str]] = (
    (jwt.InvalidAlgorithmError, "algorithm"),
    (jwt.InvalidSignatureError, "signature"),
    (jwt.InvalidAudienceError, "audience"),
    (jwt.InvalidIssuerError, "issuer"),
    (jwt.MissingRequiredClaimError, "missing-claim"),
    (jwt.InvalidKeyError, "key"),
    (jwt.DecodeError, "malformed"),
    (jwt.PyJWTError, "invalid"),
)


def _verify(ctx: Context, token: str, address: str) -> Verified:
    if not token or len(token) > MAX_TOKEN_LENGTH or not looks_like_jwt(token):
        raise _Refused("malformed")
    try:
        header = jwt.get_unverified_header(token)
        unverified = jwt.decode(token, options={"verify_signature": False})
    except (jwt.PyJWTError, ValueError, TypeError):
        raise _Refused("malformed") from None
    s = ctx.settings.security
    issuer = unverified.get("iss")
    alg, kid = header.get("alg"), header.get("kid")
    key: Any
    if issuer == s.token_issuer:
        own = signing_key(ctx)
        if alg != _OWN_ALGORITHM:
            raise _Refused("algorithm")
        if header.get("typ") != ACCESS_TOKEN_TYPE:
            raise _Refused("type")
        if kid != own.kid:
            raise _Refused("unknown-key")
        key, algorithms, audience, required = own.public, [_OWN_ALGORITHM], s.token_audience, _OWN_CLAIMS
    elif s.oidc_issuer and issuer == s.oidc_issuer:
        algorithms = [a.strip() for a in s.oidc_algorithms.split(",") if a.strip()]
        if not isinstance(alg, str) or alg not in algorithms:
            raise _Refused("algorithm")
        if not isinstance(kid, str) or not kid:
            raise _Refused("unknown-key")
        key, audience, required = _oidc_key(ctx, kid, alg), s.oidc_audience, _OIDC_CLAIMS
    else:
        raise _Refused("unknown-issuer")
    try:
        claims = jwt.decode(
            token, key, algorithms=algorithms, audience=audience, issuer=issuer,
            options={"require": required, "verify_exp": False, "verify_nbf": False, "verify_iat": False,
                     "strict_aud": False, "enforce_minimum_key_length": True},
        )
    except jwt.PyJWTError as exc:
        raise _Refused(next(c for t, c in _ERRORS if isinstance(exc, t))) from None
    expires = _check_times(claims, ctx.clock().timestamp())
    jti = claims.get("jti", "")
    if not isinstance(jti, str) or len(jti) > 128:
        raise _Refused("bad-claims")
    if jti and _is_revoked(ctx, jti):
        raise _Refused("revoked")
    if issuer == s.token_issuer:
        return Verified(_builtin_actor(ctx, claims, address, jti), jti, expires, "coffre")
    return Verified(_oidc_actor(ctx, claims, address, jti), jti, expires, "oidc")


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Refused("bad-claims")
    return float(value)


def _check_times(claims: dict[str, Any], now: float) -> datetime:
    """exp, iat and nbf (RFC 7519 4.1.4-6) against the context's clock, with leeway."""
    exp, iat = _number(claims["exp"]), _number(claims["iat"])
    if now > exp + LEEWAY:
        raise _Refused("expired")
    if iat > now + LEEWAY:
        raise _Refused("not-yet-valid")
    if "nbf" in claims and now < _number(claims["nbf"]) - LEEWAY:
        raise _Refused("not-yet-valid")
    try:
        return datetime.fromtimestamp(exp, UTC)
    except (OverflowError, OSError, ValueError):
        raise _Refused("bad-claims") from None


def _builtin_actor(ctx: Context, claims: dict[str, Any], address: str, jti: str) -> Actor:
    username = claims["sub"]
    if not isinstance(username, str) or not users.USERNAME.match(username):
        raise _Refused("bad-claims")
    with ctx.db.read() as tx:
        user = user_index.get_user(tx, username)
        cutoff = user_index.tokens_before(tx, user.id) if user is not None else None
    if user is None:
        raise _Refused("unknown-user")
    if not user.active:
        raise _Refused("disabled-user")
    if cutoff is not None and _number(claims["iat"]) < cutoff:
        raise _Refused("revoked")
    return Actor.for_user(username, username, user.roles, user.facilities, address, token_id=jti)


def _claim(claims: dict[str, Any], path: str) -> Any:
    """A claim by name, or by a dotted path into nested objects (``realm_access.roles``)."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return []
    return [v for v in value[:_MAX_LIST] if isinstance(v, str) and 0 < len(v) <= 64]


def _oidc_actor(ctx: Context, claims: dict[str, Any], address: str, jti: str) -> Actor:
    s = ctx.settings.security
    sub = claims["sub"]
    typ = claims.get("typ")
    if not isinstance(sub, str) or not 0 < len(sub) <= 255:
        raise _Refused("bad-claims")
    if typ is not None and (not isinstance(typ, str) or typ.lower() not in {"bearer", "at+jwt"}):
        raise _Refused("not-an-access-token")  # e.g. an ID token presented as an access token
    name = _claim(claims, s.oidc_username_claim)
    username = name if isinstance(name, str) and 0 < len(name) <= 100 else sub[:100]
    known = {r.value for r in Role}
    roles = frozenset(Role(r) for r in _strings(_claim(claims, s.oidc_roles_claim)) if r in known)
    with ctx.db.read() as tx:
        found = user_index.facilities_by_slugs(tx, _strings(_claim(claims, s.oidc_facilities_claim)))
    facilities = tuple(sorted(found.values(), key=lambda f: f.slug))
    return Actor.for_user(f"{s.oidc_issuer}#{sub}", username, roles, facilities, address, token_id=jti)


# -- revocation ------------------------------------------------------------------------


def _is_revoked(ctx: Context, jti: str) -> bool:
    period = ctx.settings.security.revocation_cache_seconds
    state = _state(ctx)
    now = time.monotonic()
    with state.lock:
        fresh = state.revoked_loaded is not None and now - state.revoked_loaded < period
        if fresh:
            return jti in state.revoked
    with ctx.db.read() as tx:
        revoked = user_index.revoked_jtis(tx, ctx.clock())
    with state.lock:
        state.revoked, state.revoked_loaded = revoked, now
    return jti in revoked


def logout(ctx: Context, token: str, *, address: str) -> None:
    """Revoke the presented access token (refused everywhere within the revocation delay)."""
    verified = verify(ctx, token, address)
    if not verified.jti:
        raise BadRequest("this token has no identifier (jti) and cannot be revoked")
    now = ctx.clock()
    with ctx.db.write() as tx:
        # kept until the token would be refused anyway: its expiry plus the leeway
        user_index.revoke_jti(tx, jti=verified.jti, now=now,
                              expires_at=verified.expires_at + timedelta(seconds=LEEWAY))
        audit.record(ctx, tx, verified.actor, "logout", object_type="token", object_id=verified.jti,
                     detail={"source": verified.source})
    state = _state(ctx)
    with state.lock:
        state.revoked = state.revoked | {verified.jti}


def revoke_user_tokens(ctx: Context, actor: Actor, username: str) -> None:
    """Refuse every token issued to ``username`` so far (see :mod:`coffre.services.users`)."""
    users.revoke_user_tokens(ctx, actor, username)


# -- OpenID Connect provider keys ------------------------------------------------------


def _oidc_key(ctx: Context, kid: str, alg: str) -> jwt.PyJWK:
    s = ctx.settings.security
    state = _state(ctx)
    with state.lock:
        cache = state.jwks.setdefault(s.oidc_jwks_url, _Jwks())
    period = float(s.oidc_jwks_cache_seconds)
    with cache.lock:  # one fetch at a time; the others wait for its result
        now = time.monotonic()
        if cache.fetched_at is None or now - cache.fetched_at >= (period if cache.ok else min(period, JWKS_RETRY)):
            _refresh(cache, s.oidc_jwks_url, now)
        elif cache.ok and kid not in cache.keys and (
                cache.kid_refresh_at is None or now - cache.kid_refresh_at >= period):
            cache.kid_refresh_at = now  # a rotated key: look once, at most once per period
            _refresh(cache, s.oidc_jwks_url, now)
        jwk = cache.keys.get(kid)
        if jwk is None:
            raise _Refused("unknown-key")
        declared = jwk.get("alg")
        if declared is not None and declared != alg:
            raise _Refused("algorithm")
        built = cache.built.get((kid, alg))
        if built is None:
            try:
                built = jwt.PyJWK(jwk, algorithm=alg)
            except (jwt.PyJWTError, ValueError, TypeError, KeyError):
                raise _Refused("key") from None
            cache.built[(kid, alg)] = built
        return built


def _refresh(cache: _Jwks, url: str, now: float) -> None:
    cache.fetched_at = now
    try:
        keys = fetch_jwks(url)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        log.warning("cannot fetch the OIDC provider's keys from %s: %s", url, type(exc).__name__)
        cache.ok = False
        return
    cache.keys, cache.ok, cache.built = keys, True, {}


def fetch_jwks(url: str) -> dict[str, dict[str, Any]]:
    """The signature keys of a JWKS document (RFC 7517 5) by ``kid``.

    Symmetric keys (``oct``), keys for encryption and keys without ``kid`` are left
    out. At most :data:`MAX_JWKS_BYTES`, within :data:`JWKS_TIMEOUT` seconds overall.
    """
    if not url.startswith(("https://", "http://")):
        raise ValueError("the JWKS URL must be http(s)")
    headers = {"Accept": "application/json", "User-Agent": "coffre"}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - scheme checked above
    deadline = time.monotonic() + JWKS_TIMEOUT
    chunks: list[bytes] = []
    size = 0
    with urllib.request.urlopen(request, timeout=JWKS_TIMEOUT) as response:  # noqa: S310 - scheme checked above
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError("JWKS fetch took too long")
            chunk = response.read(65536)
            if not chunk:
                break
            size += len(chunk)
            if size > MAX_JWKS_BYTES:
                raise ValueError("JWKS document too large")
            chunks.append(chunk)
    document = json.loads(b"".join(chunks))
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError("not a JWKS document")
    keys: dict[str, dict[str, Any]] = {}
    for jwk in entries:
        if not isinstance(jwk, dict):
            continue
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not 0 < len(kid) <= 256:
            continue
        if jwk.get("kty") not in {"RSA", "EC", "OKP"} or jwk.get("use", "sig") != "sig":
            continue
        keys[kid] = jwk
    return keys
