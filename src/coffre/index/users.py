"""Built-in users, their facilities, and revoked access tokens in the index.

Users of an OpenID Connect provider are not stored: their roles and facilities come
from their tokens. Passwords are stored as argon2id PHC strings only (hashed by
``services.users``); this module never sees a clear password.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select
from sqlalchemy.exc import IntegrityError

from coffre.errors import AlreadyExists, NotFound
from coffre.index import state
from coffre.index.schema import facility, revoked_token, user_account, user_facility
from coffre.model import Facility, Role


@dataclass(frozen=True, slots=True)
class UserRow:
    id: int
    username: str
    display_name: str
    #: argon2id PHC string; "" = no password login
    password_hash: str
    roles: frozenset[Role]
    active: bool
    failed_logins: int
    locked_until: datetime | None
    created_at: datetime
    #: the user's facilities, by slug
    facilities: tuple[Facility, ...]


def _roles(text: str) -> frozenset[Role]:
    """Roles stored as comma-separated values; unknown names (a downgrade) are ignored."""
    known = {r.value for r in Role}
    return frozenset(Role(r) for r in text.split(",") if r in known)


def roles_text(roles: Iterable[Role]) -> str:
    return ",".join(sorted(r.value for r in roles))


def _facilities_of(conn: Connection, user_ids: list[int]) -> dict[int, tuple[Facility, ...]]:
    found: dict[int, list[Facility]] = {uid: [] for uid in user_ids}
    if not user_ids:
        return {}
    rows = conn.execute(
        select(user_facility.c.user_id, facility)
        .join(facility, facility.c.id == user_facility.c.facility_id)
        .where(user_facility.c.user_id.in_(user_ids))
        .order_by(facility.c.slug)
    )
    for r in rows:
        found[r.user_id].append(Facility(id=r.id, slug=r.slug, name=r.name, issuer=r.issuer))
    return {uid: tuple(facs) for uid, facs in found.items()}


def _user(row: Any, facilities: tuple[Facility, ...]) -> UserRow:
    return UserRow(
        id=row.id, username=row.username, display_name=row.display_name,
        password_hash=row.password_hash, roles=_roles(row.roles), active=bool(row.active),
        failed_logins=row.failed_logins, locked_until=row.locked_until, created_at=row.created_at,
        facilities=facilities,
    )


def add_user(
    conn: Connection, *, username: str, display_name: str, password_hash: str,
    roles: frozenset[Role], facility_ids: Iterable[int], now: datetime,
) -> int:
    try:
        with conn.begin_nested():
            pk = conn.execute(user_account.insert().values(
                username=username, display_name=display_name, password_hash=password_hash,
                roles=roles_text(roles), active=True, failed_logins=0, created_at=now,
            )).inserted_primary_key
    except IntegrityError:
        raise AlreadyExists(f"a user named {username!r} already exists") from None
    assert pk is not None
    user_id = int(pk[0])
    set_facilities(conn, user_id, facility_ids)
    return user_id


def get_user(conn: Connection, username: str) -> UserRow | None:
    row = conn.execute(select(user_account).where(user_account.c.username == username)).first()
    if row is None:
        return None
    return _user(row, _facilities_of(conn, [row.id])[row.id])


def require_user(conn: Connection, username: str) -> UserRow:
    user = get_user(conn, username)
    if user is None:
        raise NotFound(f"no user {username!r}")
    return user


def list_users(conn: Connection) -> list[UserRow]:
    rows = conn.execute(select(user_account).order_by(user_account.c.username)).all()
    facs = _facilities_of(conn, [r.id for r in rows])
    return [_user(r, facs[r.id]) for r in rows]


def usernames(conn: Connection, names: Iterable[str]) -> set[str]:
    """Which of ``names`` exist."""
    wanted = list(names)
    if not wanted:
        return set()
    rows = conn.execute(select(user_account.c.username).where(user_account.c.username.in_(wanted)))
    return {r.username for r in rows}


def set_password_hash(conn: Connection, user_id: int, password_hash: str) -> None:
    conn.execute(user_account.update().where(user_account.c.id == user_id).values(password_hash=password_hash))


def set_roles(conn: Connection, user_id: int, roles: frozenset[Role]) -> None:
    conn.execute(user_account.update().where(user_account.c.id == user_id).values(roles=roles_text(roles)))


def set_facilities(conn: Connection, user_id: int, facility_ids: Iterable[int]) -> None:
    conn.execute(user_facility.delete().where(user_facility.c.user_id == user_id))
    ids = sorted(set(facility_ids))
    if ids:
        conn.execute(user_facility.insert(), [{"user_id": user_id, "facility_id": f} for f in ids])


def set_active(conn: Connection, user_id: int, active: bool) -> None:
    values: dict[str, Any] = {"active": active}
    if active:
        values.update(failed_logins=0, locked_until=None)
    conn.execute(user_account.update().where(user_account.c.id == user_id).values(**values))


def count_failed_login(
    conn: Connection, user_id: int, *, now: datetime, max_failures: int, locked_until: datetime,
) -> bool:
    """Count one wrong password; lock the user at ``max_failures``. True when it locks.

    The increment is one UPDATE, so concurrent attempts (other threads, other nodes)
    all count. Locking resets the counter: after the lockout the user gets
    ``max_failures`` attempts again.
    """
    conn.execute(
        user_account.update().where(user_account.c.id == user_id)
        .values(failed_logins=user_account.c.failed_logins + 1)
    )
    count = conn.execute(select(user_account.c.failed_logins).where(user_account.c.id == user_id)).scalar_one()
    if count < max_failures:
        return False
    conn.execute(
        user_account.update().where(user_account.c.id == user_id)
        .values(failed_logins=0, locked_until=locked_until)
    )
    return True


def reset_failed_logins(conn: Connection, user_id: int) -> None:
    conn.execute(
        user_account.update().where(user_account.c.id == user_id).values(failed_logins=0, locked_until=None)
    )


def facilities_by_slugs(conn: Connection, slugs: Iterable[str]) -> dict[str, Facility]:
    """The facilities among ``slugs`` that exist, by slug."""
    wanted = sorted(set(slugs))
    if not wanted:
        return {}
    rows = conn.execute(select(facility).where(facility.c.slug.in_(wanted)))
    return {r.slug: Facility(id=r.id, slug=r.slug, name=r.name, issuer=r.issuer) for r in rows}


# -- revoked access tokens -------------------------------------------------------------


def revoke_jti(conn: Connection, *, jti: str, now: datetime, expires_at: datetime) -> None:
    """Record ``jti`` as revoked until ``expires_at`` (idempotent); purge expired rows."""
    conn.execute(revoked_token.delete().where(revoked_token.c.expires_at < now))
    exists = conn.execute(select(revoked_token.c.jti).where(revoked_token.c.jti == jti)).first()
    if exists is None:
        try:
            with conn.begin_nested():
                conn.execute(revoked_token.insert().values(jti=jti, revoked_at=now, expires_at=expires_at))
        except IntegrityError:
            pass  # revoked by a concurrent request: same outcome


def revoked_jtis(conn: Connection, now: datetime) -> frozenset[str]:
    """Every revoked jti whose token has not expired yet."""
    rows = conn.execute(select(revoked_token.c.jti).where(revoked_token.c.expires_at >= now))
    return frozenset(r.jti for r in rows)


# -- "sign out everywhere" ------------------------------------------------------------
# An instant per user before which the access tokens issued to that user are refused
# (set by a password change or an explicit revocation). Kept in ``archive_state``
# because the schema has no column for it.


def _cutoff_key(user_id: int) -> str:
    return f"user-tokens-before:{user_id}"


def set_tokens_before(conn: Connection, user_id: int, instant: float) -> None:
    state.put(conn, _cutoff_key(user_id), repr(float(instant)).encode("ascii"))


def tokens_before(conn: Connection, user_id: int) -> float | None:
    raw = state.get(conn, _cutoff_key(user_id))
    return None if raw is None else float(raw.decode("ascii"))
