"""Built-in users (embedded mode): accounts, roles, facilities, passwords, lockout.

Every change is authorized by :func:`coffre.services.access.authorize` with
``MANAGE_USERS`` on each facility the user belongs to (before and after the change):
a facility admin manages the users of its facilities, the territory admin everyone,
the operator at the command line (the system actor) everything. A user with no
facility, or holding the territory-admin role, is territory-wide: managing one also
takes ``MANAGE_TERRITORY``, so a facility admin cannot make a territory admin. Each
change is audited in its own transaction (``user-create``, ``user-password``,
``user-roles``, ``user-facilities``, ``user-disable``, ``user-enable``,
``user-tokens-revoke``).

Passwords are hashed with argon2id (``argon2-cffi``'s ``PasswordHasher``, OWASP's
parameters m = 19 MiB, t = 2, p = 1; hashes made with other parameters are upgraded
at the next successful login); the policy is 12 to 1024 characters. A login
(:func:`check_password`) does the same hashing work whether the user exists or not
and answers every failure the same way (:class:`LoginFailed`): wrong password,
unknown user, disabled user and locked user are indistinguishable to the caller, and
audited with their real reason. ``max_failed_logins`` wrong passwords in a row lock
the user for ``lockout_seconds``.
"""

from __future__ import annotations

import functools
import re
import secrets
from collections.abc import Iterable, Sequence
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from coffre.app import Context
from coffre.errors import BadRequest, NotFound
from coffre.index import users as index
from coffre.index.engine import Tx
from coffre.index.users import UserRow
from coffre.model import Actor, ActorKind, Facility, Role
from coffre.services import audit
from coffre.services.access import Action, Resource, authorize, is_allowed
from coffre.services.tokens import NotAuthenticated

#: user names: lower-case letters, digits, ".", "_" and "-" (e.g. ``radiologue.chu-nord``)
USERNAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024
MAX_DISPLAY_NAME = 200

#: argon2id with OWASP's baseline (m = 19 MiB, t = 2, p = 1): tens of milliseconds per
#: login and a bounded memory cost when many logins run at once in the thread pool
_HASHER = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)
LOGIN_FAILED = "invalid user name or password, or the account is locked for a while after too many failures"


class LoginFailed(NotAuthenticated):
    """A password login failed; the reason is audited, never told (HTTP 401)."""


def parse_roles(values: Iterable[str]) -> frozenset[Role]:
    """Role names (``radiologist``, ``facility-admin`` …) to roles; unknown names are an error."""
    roles: set[Role] = set()
    for value in values:
        name = value.strip()
        if not name:
            continue
        try:
            roles.add(Role(name))
        except ValueError:
            known = ", ".join(r.value for r in Role)
            raise BadRequest(f"unknown role {name[:40]!r} (roles: {known})") from None
    return frozenset(roles)


def check_password_policy(password: str) -> None:
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise BadRequest(f"a password has {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters")


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


@functools.cache
def _dummy_hash() -> str:
    """A hash nobody knows the password of: unknown users cost the same work."""
    return _HASHER.hash(secrets.token_urlsafe(24))


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _HASHER.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def _check_username(username: str) -> None:
    if not USERNAME.match(username):
        raise BadRequest("a user name is 1-64 characters of a-z, 0-9, '.', '_' and '-', starting with a letter or digit")


def _territory_wide(roles: frozenset[Role], facility_ids: Iterable[int]) -> bool:
    return Role.TERRITORY_ADMIN in roles or not list(facility_ids)


def _authorize_manage(actor: Actor, roles: frozenset[Role], facility_ids: Iterable[int]) -> None:
    """May ``actor`` manage a user holding ``roles`` in ``facility_ids``?"""
    ids = sorted(set(facility_ids))
    if _territory_wide(roles, ids):
        authorize(actor, Action.MANAGE_TERRITORY, Resource(None))
    authorize(actor, Action.MANAGE_USERS, Resource(None))
    for fid in ids:
        authorize(actor, Action.MANAGE_USERS, Resource(fid))


def _authorize_user(actor: Actor, user: UserRow) -> None:
    _authorize_manage(actor, user.roles, (f.id for f in user.facilities))


def _resolve(tx: Tx, slugs: Sequence[str]) -> list[Facility]:
    wanted = [s.strip() for s in slugs if s.strip()]
    found = index.facilities_by_slugs(tx, wanted)
    for slug in wanted:
        if slug not in found:
            raise NotFound(f"no facility {slug[:40]!r}")
    return sorted(found.values(), key=lambda f: f.slug)


def _event(ctx: Context, tx: Tx, actor: Actor, action: str, user: UserRow | str,
           where: Sequence[Facility] = (), **detail: object) -> None:
    name = user if isinstance(user, str) else user.username
    facs = list(where) or ([] if isinstance(user, str) else list(user.facilities))
    audit.record(ctx, tx, actor, action, facility_id=facs[0].id if facs else None,
                 object_type="user", object_id=name, detail=detail)


def create_user(
    ctx: Context, actor: Actor, *, username: str, password: str | None, roles: frozenset[Role],
    facilities: Sequence[str], display_name: str = "",
) -> UserRow:
    """Create a built-in user. ``password`` None: no password login until one is set."""
    _check_username(username)
    if len(display_name) > MAX_DISPLAY_NAME:
        raise BadRequest(f"a display name has at most {MAX_DISPLAY_NAME} characters")
    if password is not None:
        check_password_policy(password)
    password_hash = hash_password(password) if password is not None else ""
    with ctx.db.write() as tx:
        facs = _resolve(tx, facilities)
        _authorize_manage(actor, roles, (f.id for f in facs))
        index.add_user(tx, username=username, display_name=display_name, password_hash=password_hash,
                       roles=roles, facility_ids=(f.id for f in facs), now=ctx.clock())
        _event(ctx, tx, actor, "user-create", username, facs, roles=sorted(r.value for r in roles),
               facilities=[f.slug for f in facs])
        return index.require_user(tx, username)


def set_password(ctx: Context, actor: Actor, username: str, password: str) -> None:
    """Replace the user's password; the user's current access tokens are revoked."""
    check_password_policy(password)
    password_hash = hash_password(password)
    with ctx.db.write() as tx:
        user = index.require_user(tx, username)
        _authorize_user(actor, user)
        index.set_password_hash(tx, user.id, password_hash)
        index.reset_failed_logins(tx, user.id)
        index.set_tokens_before(tx, user.id, ctx.clock().timestamp())
        _event(ctx, tx, actor, "user-password", user)


def set_roles(ctx: Context, actor: Actor, username: str, roles: frozenset[Role]) -> UserRow:
    """Replace the user's roles; they apply from the user's next request."""
    with ctx.db.write() as tx:
        user = index.require_user(tx, username)
        _authorize_user(actor, user)
        _authorize_manage(actor, roles, (f.id for f in user.facilities))
        index.set_roles(tx, user.id, roles)
        _event(ctx, tx, actor, "user-roles", user, roles=sorted(r.value for r in roles),
               previous=sorted(r.value for r in user.roles))
        return index.require_user(tx, username)


def set_facilities(ctx: Context, actor: Actor, username: str, facilities: Sequence[str]) -> UserRow:
    """Replace the user's facilities; they apply from the user's next request."""
    with ctx.db.write() as tx:
        user = index.require_user(tx, username)
        facs = _resolve(tx, facilities)
        _authorize_user(actor, user)
        _authorize_manage(actor, user.roles, (f.id for f in facs))
        index.set_facilities(tx, user.id, (f.id for f in facs))
        _event(ctx, tx, actor, "user-facilities", user, facs, facilities=[f.slug for f in facs],
               previous=[f.slug for f in user.facilities])
        return index.require_user(tx, username)


def disable(ctx: Context, actor: Actor, username: str) -> None:
    """Disable the user: no login, and its tokens are refused from its next request."""
    _set_active(ctx, actor, username, False)


def enable(ctx: Context, actor: Actor, username: str) -> None:
    """Enable the user again (and lift a lockout)."""
    _set_active(ctx, actor, username, True)


def _set_active(ctx: Context, actor: Actor, username: str, active: bool) -> None:
    with ctx.db.write() as tx:
        user = index.require_user(tx, username)
        _authorize_user(actor, user)
        index.set_active(tx, user.id, active)
        _event(ctx, tx, actor, "user-enable" if active else "user-disable", user)


def revoke_user_tokens(ctx: Context, actor: Actor, username: str) -> None:
    """Refuse every access token issued to the user so far (sign out everywhere).

    Tokens issued afterwards work. Disabling the user refuses its tokens as well, from
    the next request (every request re-checks a built-in user).
    """
    with ctx.db.write() as tx:
        user = index.require_user(tx, username)
        if not (actor.kind is ActorKind.USER and actor.subject == user.username):
            _authorize_user(actor, user)
        index.set_tokens_before(tx, user.id, ctx.clock().timestamp())
        _event(ctx, tx, actor, "user-tokens-revoke", user)


def list_users(ctx: Context, actor: Actor) -> list[UserRow]:
    """The users ``actor`` manages: those sharing a facility it manages users of, or all."""
    authorize(actor, Action.MANAGE_USERS, Resource(None))
    with ctx.db.read() as tx:
        users = index.list_users(tx)
    return [u for u in users if _visible(actor, u)]


def _visible(actor: Actor, user: UserRow) -> bool:
    if is_allowed(actor, Action.MANAGE_TERRITORY, Resource(None)):
        return True
    return any(is_allowed(actor, Action.MANAGE_USERS, Resource(f.id)) for f in user.facilities)


def get_user(ctx: Context, username: str) -> UserRow | None:
    """The user, for authentication (no authorization: callers are the auth services)."""
    if not USERNAME.match(username):
        return None
    with ctx.db.read() as tx:
        return index.get_user(tx, username)


def check_password(ctx: Context, username: str, password: str, *, address: str) -> UserRow:
    """The active, unlocked user whose password this is, or :class:`LoginFailed` (audited)."""
    now = ctx.clock()
    user = None
    well_formed = bool(USERNAME.match(username)) and len(password) <= MAX_PASSWORD_LENGTH
    if well_formed:
        user = get_user(ctx, username)
    # the same argon2 work in every case: existence must not show in the timing
    hashed = user.password_hash if user is not None and user.password_hash else _dummy_hash()
    matches = _verify(hashed, password[:MAX_PASSWORD_LENGTH]) and user is not None and bool(user.password_hash)
    locked = user is not None and user.locked_until is not None and user.locked_until > now
    if user is not None and user.active and matches and not locked:
        return _login_succeeded(ctx, user, password, address)
    reason = (
        "malformed" if not well_formed else "unknown-user" if user is None else "disabled" if not user.active else "locked" if locked
        else "no-password" if not user.password_hash else "wrong-password"
    )
    security = ctx.settings.security
    with ctx.db.write() as tx:
        newly_locked = False
        if reason == "wrong-password" and user is not None:
            newly_locked = index.count_failed_login(
                tx, user.id, now=now, max_failures=security.max_failed_logins,
                locked_until=now + timedelta(seconds=security.lockout_seconds))
        who = _login_actor(user, address) if user is not None else Actor(
            kind=ActorKind.USER, name="anonymous", facility=None, address=address)
        audit.record(ctx, tx, who, "login", outcome="failure", object_type="user",
                     object_id=user.username if user is not None else "",
                     detail={"reason": reason, **({"locked": True} if newly_locked else {})})
    raise LoginFailed(LOGIN_FAILED)


def _login_actor(user: UserRow, address: str) -> Actor:
    return Actor.for_user(user.username, user.username, user.roles, user.facilities, address)


def _login_succeeded(ctx: Context, user: UserRow, password: str, address: str) -> UserRow:
    with ctx.db.write() as tx:
        index.reset_failed_logins(tx, user.id)
        if _HASHER.check_needs_rehash(user.password_hash):
            index.set_password_hash(tx, user.id, hash_password(password))
        audit.record(ctx, tx, _login_actor(user, address), "login", object_type="user", object_id=user.username)
    return user
