"""Facilities (tenants) and their DICOM nodes in the index."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, select
from sqlalchemy.exc import IntegrityError

from coffre.errors import AlreadyExists, NotFound
from coffre.index.schema import facility, node
from coffre.model import Facility, Node, Permission


def _facility(row: Any) -> Facility:
    return Facility(id=row.id, slug=row.slug, name=row.name, issuer=row.issuer,
                    require_tls=bool(row.require_tls))


def _node(row: Any) -> Node:
    perms = frozenset(Permission(p) for p in row.permissions.split(",") if p)
    return Node(
        id=row.id,
        ae_title=row.ae_title,
        host=row.host,
        port=row.port,
        facility_id=row.facility_id,
        permissions=perms,
        description=row.description,
        tls_fingerprint=row.tls_fingerprint or "",
    )


def add_facility(conn: Connection, *, slug: str, name: str, issuer: str, now: datetime) -> Facility:
    try:
        with conn.begin_nested():
            pk = conn.execute(
                facility.insert().values(slug=slug, name=name, issuer=issuer, created_at=now)
            ).inserted_primary_key
    except IntegrityError:
        raise AlreadyExists(f"facility {slug!r} already exists") from None
    assert pk is not None
    return Facility(id=int(pk[0]), slug=slug, name=name, issuer=issuer)


def list_facilities(conn: Connection) -> list[Facility]:
    return [_facility(r) for r in conn.execute(select(facility).order_by(facility.c.slug))]


def get_facility(conn: Connection, slug: str) -> Facility:
    row = conn.execute(select(facility).where(facility.c.slug == slug)).first()
    if row is None:
        raise NotFound(f"no facility {slug!r}")
    return _facility(row)


def get_facility_by_id(conn: Connection, facility_id: int) -> Facility:
    row = conn.execute(select(facility).where(facility.c.id == facility_id)).first()
    if row is None:
        raise NotFound(f"no facility #{facility_id}")
    return _facility(row)


def add_node(
    conn: Connection,
    *,
    ae_title: str,
    host: str,
    port: int,
    facility_id: int,
    permissions: frozenset[Permission],
    description: str,
    now: datetime,
    tls_fingerprint: str = "",
) -> Node:
    perms = ",".join(sorted(p.value for p in permissions))
    try:
        with conn.begin_nested():
            pk = conn.execute(
                node.insert().values(
                    ae_title=ae_title,
                    host=host,
                    port=port,
                    facility_id=facility_id,
                    permissions=perms,
                    description=description,
                    created_at=now,
                    tls_fingerprint=tls_fingerprint,
                )
            ).inserted_primary_key
    except IntegrityError:
        # unique AE title or foreign key to facility: tell which (the savepoint is gone)
        if conn.execute(select(node.c.id).where(node.c.ae_title == ae_title)).first():
            raise AlreadyExists(f"AE title {ae_title!r} is already registered") from None
        raise NotFound(f"no facility #{facility_id}") from None
    assert pk is not None
    return Node(
        id=int(pk[0]),
        ae_title=ae_title,
        host=host,
        port=port,
        facility_id=facility_id,
        permissions=permissions,
        description=description,
        tls_fingerprint=tls_fingerprint,
    )


def list_nodes(conn: Connection, facility_id: int | None = None) -> list[Node]:
    query = select(node).order_by(node.c.ae_title)
    if facility_id is not None:
        query = query.where(node.c.facility_id == facility_id)
    return [_node(r) for r in conn.execute(query)]


# run at every association (``services.facilities.admit``): built once, with a bound value
_FIND_NODE = (
    select(node, facility.c.slug, facility.c.name, facility.c.issuer, facility.c.require_tls)
    .join(facility, facility.c.id == node.c.facility_id)
    .where(node.c.ae_title == bindparam("f_ae_title"))
)


def find_node(conn: Connection, ae_title: str) -> tuple[Node, Facility] | None:
    """The node registered under ``ae_title`` and its facility, or ``None``."""
    row = conn.execute(_FIND_NODE, {"f_ae_title": ae_title}).first()
    if row is None:
        return None
    return _node(row), Facility(id=row.facility_id, slug=row.slug, name=row.name, issuer=row.issuer,
                                require_tls=bool(row.require_tls))


def remove_node(conn: Connection, ae_title: str) -> None:
    result = conn.execute(node.delete().where(node.c.ae_title == ae_title))
    if result.rowcount == 0:
        raise NotFound(f"no node {ae_title!r}")


def set_node_permissions(conn: Connection, ae_title: str, permissions: frozenset[Permission]) -> None:
    perms = ",".join(sorted(p.value for p in permissions))
    result = conn.execute(node.update().where(node.c.ae_title == ae_title).values(permissions=perms))
    if result.rowcount == 0:
        raise NotFound(f"no node {ae_title!r}")


def set_node_fingerprint(conn: Connection, ae_title: str, fingerprint: str) -> None:
    """Bind the node to the client certificate of SHA-256 ``fingerprint`` ("" unbinds)."""
    result = conn.execute(node.update().where(node.c.ae_title == ae_title).values(tls_fingerprint=fingerprint))
    if result.rowcount == 0:
        raise NotFound(f"no node {ae_title!r}")


def set_require_tls(conn: Connection, slug: str, required: bool) -> Facility:
    result = conn.execute(facility.update().where(facility.c.slug == slug).values(require_tls=required))
    if result.rowcount == 0:
        raise NotFound(f"no facility {slug!r}")
    return get_facility(conn, slug)
