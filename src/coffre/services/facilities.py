"""Facilities, their DICOM nodes, and the admission of an association (PS3.8 7.1.1).

A calling AE title is trusted only if it is a registered node and, when
``dicom.verify_peer_host`` is on, the connection comes from an address of the node's
host. The facility of everything a node sends is the node's facility.
"""

from __future__ import annotations

import enum
import re
import socket

from coffre.app import Context
from coffre.errors import ConfigurationError, NotAuthorized
from coffre.index import facilities as index
from coffre.model import Actor, ActorKind, Facility, Node, Permission
from coffre.services import audit

_SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$")


def check_ae_title(title: str) -> str:
    """PS3.5 6.2 AE: 1-16 characters of the default repertoire, no backslash or control."""
    if not 0 < len(title) <= 16 or title != title.strip() or "\\" in title:
        raise ConfigurationError("an AE title is 1-16 characters without leading/trailing spaces or '\\'")
    if not all(0x20 <= ord(c) < 0x7F for c in title):
        raise ConfigurationError("an AE title uses printable ASCII characters only")
    return title


def add_facility(ctx: Context, actor: Actor, *, slug: str, name: str, issuer: str) -> Facility:
    if not _SLUG.match(slug):
        raise ConfigurationError("a facility slug is 1-32 characters of a-z, 0-9 and '-'")
    if not name.strip() or not issuer.strip() or len(issuer) > 64 or len(name) > 200:
        raise ConfigurationError("a facility needs a name (≤200) and an issuer of patient IDs (≤64)")
    with ctx.db.write() as tx:
        created = index.add_facility(tx, slug=slug, name=name.strip(), issuer=issuer.strip(), now=ctx.clock())
        audit.record(ctx, tx, actor, "facility-add", facility_id=created.id, object_type="facility",
                     object_id=slug)
    return created


def list_facilities(ctx: Context) -> list[Facility]:
    with ctx.db.read() as tx:
        return index.list_facilities(tx)


def get_facility(ctx: Context, slug: str) -> Facility:
    with ctx.db.read() as tx:
        return index.get_facility(tx, slug)


def add_node(
    ctx: Context,
    actor: Actor,
    *,
    ae_title: str,
    host: str,
    port: int,
    facility_slug: str,
    permissions: frozenset[Permission],
    description: str = "",
) -> Node:
    check_ae_title(ae_title)
    if not 0 < port <= 65535:
        raise ConfigurationError("a node port is 1-65535")
    if not host or len(host) > 255 or any(c.isspace() for c in host):
        raise ConfigurationError("a node needs a host name or address")
    with ctx.db.write() as tx:
        fac = index.get_facility(tx, facility_slug)
        created = index.add_node(tx, ae_title=ae_title, host=host, port=port, facility_id=fac.id,
                                 permissions=permissions, description=description[:200], now=ctx.clock())
        audit.record(ctx, tx, actor, "node-add", facility_id=fac.id, object_type="node", object_id=ae_title,
                     detail={"host": host, "port": port, "permissions": sorted(p.value for p in permissions)})
    return created


def remove_node(ctx: Context, actor: Actor, ae_title: str) -> None:
    with ctx.db.write() as tx:
        found = index.find_node(tx, ae_title)
        index.remove_node(tx, ae_title)
        audit.record(ctx, tx, actor, "node-remove", facility_id=found[1].id if found else None,
                     object_type="node", object_id=ae_title)


def list_nodes(ctx: Context, facility_slug: str | None = None) -> list[Node]:
    with ctx.db.read() as tx:
        fid = index.get_facility(tx, facility_slug).id if facility_slug else None
        return index.list_nodes(tx, fid)


class Refusal(enum.Enum):
    """Why an association is rejected (PS3.8 9.3.4 A-ASSOCIATE-RJ, source 1, reasons)."""

    CALLING_AE_NOT_RECOGNIZED = 3
    CALLED_AE_NOT_RECOGNIZED = 7


class AssociationRefused(NotAuthorized):
    def __init__(self, refusal: Refusal, reason: str) -> None:
        super().__init__(reason)
        self.refusal = refusal


def _addresses(host: str) -> set[str]:
    try:
        return {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except OSError:
        return set()


def admit(ctx: Context, *, calling_ae: str, called_ae: str, address: str) -> Actor:
    """The actor for an association request, or ``AssociationRefused`` (audited)."""
    calling = calling_ae.strip()
    anonymous = Actor(kind=ActorKind.NODE, name=calling[:16], facility=None, address=address)
    if called_ae.strip() != ctx.settings.archive.ae_title:
        _refuse(ctx, anonymous, Refusal.CALLED_AE_NOT_RECOGNIZED, "called AE title not recognised")
    with ctx.db.read() as tx:
        found = index.find_node(tx, calling)
    if found is None:
        _refuse(ctx, anonymous, Refusal.CALLING_AE_NOT_RECOGNIZED, "calling AE title not recognised")
    assert found is not None
    node, fac = found
    actor = Actor.for_node(node, fac, address)
    if ctx.settings.dicom.verify_peer_host and node.host not in {"*", address} and address not in _addresses(node.host):
        _refuse(ctx, actor, Refusal.CALLING_AE_NOT_RECOGNIZED, "peer address does not match the node's host")
    # Accepted associations are not audited by themselves: each operation on them is.
    return actor


def _refuse(ctx: Context, actor: Actor, refusal: Refusal, reason: str) -> None:
    audit.record_alone(ctx, actor, "association", outcome="refused", object_type="node",
                       detail={"reason": reason})
    raise AssociationRefused(refusal, reason)
