"""API tokens in the index (stored as SHA-256 hashes, never in clear)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Select, select
from sqlalchemy.exc import IntegrityError

from coffre.errors import AlreadyExists, NotFound
from coffre.index.schema import api_token, facility
from coffre.model import Facility, Permission


@dataclass(frozen=True, slots=True)
class TokenRow:
    id: int
    name: str
    facility: Facility
    permissions: frozenset[Permission]
    created_at: datetime
    revoked_at: datetime | None


def add_token(
    conn: Connection, *, facility_id: int, name: str, token_hash: str,
    permissions: frozenset[Permission], now: datetime,
) -> None:
    try:
        with conn.begin_nested():
            conn.execute(api_token.insert().values(
                facility_id=facility_id, name=name, token_hash=token_hash,
                permissions=",".join(sorted(p.value for p in permissions)), created_at=now,
            ))
    except IntegrityError:
        raise AlreadyExists(f"a token named {name!r} already exists for this facility") from None


def _query() -> Select[Any]:
    return select(api_token, facility.c.slug, facility.c.name.label("facility_name"), facility.c.issuer).join(
        facility, facility.c.id == api_token.c.facility_id
    )


def _row(r: Any) -> TokenRow:
    perms = frozenset(Permission(p) for p in r.permissions.split(",") if p)
    fac = Facility(id=r.facility_id, slug=r.slug, name=r.facility_name, issuer=r.issuer)
    return TokenRow(r.id, r.name, fac, perms, r.created_at, r.revoked_at)


def find_by_hash(conn: Connection, token_hash: str) -> TokenRow | None:
    row = conn.execute(_query().where(api_token.c.token_hash == token_hash)).first()
    return None if row is None else _row(row)


def list_tokens(conn: Connection) -> list[TokenRow]:
    return [_row(r) for r in conn.execute(_query().order_by(api_token.c.id))]


def revoke(conn: Connection, *, facility_id: int, name: str, now: datetime) -> None:
    result = conn.execute(
        api_token.update()
        .where(api_token.c.facility_id == facility_id, api_token.c.name == name, api_token.c.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    if result.rowcount == 0:
        raise NotFound(f"no active token {name!r} for this facility")
