"""API tokens: how an HTTP client proves it acts for a facility (PS3.18 has no own scheme).

Tokens are 256-bit random values shown once at creation; the index keeps only their
SHA-256. A request presents one as ``Authorization: Bearer <token>``. Users, roles and
OpenID Connect replace this for people; facility tokens remain for machine clients.
Unknown and revoked tokens are refused the same way (and audited), so a caller cannot
tell them apart.
"""

from __future__ import annotations

import hashlib
import re
import secrets

from coffre.app import Context
from coffre.errors import CoffreError, ConfigurationError
from coffre.index import facilities as facility_index
from coffre.index import tokens as index
from coffre.model import Actor, ActorKind, Permission
from coffre.services import audit

DEFAULT_PERMISSIONS = frozenset({Permission.STORE, Permission.QUERY, Permission.RETRIEVE})
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
_PREFIX = "cof_"


class NotAuthenticated(CoffreError):
    """No valid credentials (HTTP 401)."""

    http_status = 401
    dimse_status = 0x0124


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_token(
    ctx: Context, actor: Actor, *, facility_slug: str, name: str,
    permissions: frozenset[Permission] = DEFAULT_PERMISSIONS,
) -> str:
    """A new token for the facility; the clear value is returned once and never stored."""
    if not _NAME.match(name):
        raise ConfigurationError("a token name is 1-64 characters of a-z, 0-9 and '-'")
    token = _PREFIX + secrets.token_urlsafe(32)
    with ctx.db.write() as tx:
        fac = facility_index.get_facility(tx, facility_slug)
        index.add_token(tx, facility_id=fac.id, name=name, token_hash=_hash(token),
                        permissions=permissions, now=ctx.clock())
        audit.record(ctx, tx, actor, "token-create", facility_id=fac.id, object_type="token", object_id=name,
                     detail={"permissions": sorted(p.value for p in permissions)})
    return token


def revoke_token(ctx: Context, actor: Actor, *, facility_slug: str, name: str) -> None:
    with ctx.db.write() as tx:
        fac = facility_index.get_facility(tx, facility_slug)
        index.revoke(tx, facility_id=fac.id, name=name, now=ctx.clock())
        audit.record(ctx, tx, actor, "token-revoke", facility_id=fac.id, object_type="token", object_id=name)


def list_tokens(ctx: Context) -> list[index.TokenRow]:
    with ctx.db.read() as tx:
        return index.list_tokens(tx)


def authenticate(ctx: Context, token: str | None, *, address: str) -> Actor:
    """The client actor for a bearer token, or ``NotAuthenticated`` (audited)."""
    row = None
    if token and len(token) <= 256:
        with ctx.db.read() as tx:
            row = index.find_by_hash(tx, _hash(token))
    if row is None or row.revoked_at is not None:
        anonymous = Actor(kind=ActorKind.CLIENT, name="anonymous", facility=None, address=address)
        audit.record_alone(ctx, anonymous, "authenticate", outcome="refused",
                           detail={"reason": "missing token" if not token else "invalid token"})
        raise NotAuthenticated("a valid bearer token is required")
    return Actor.for_client(f"token:{row.name}", row.facility, row.permissions, address)
