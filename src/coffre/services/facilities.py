"""Facilities, their DICOM nodes, and the admission of an association (PS3.8 7.1.1).

A calling AE title is trusted only if it is a registered node and, when
``dicom.verify_peer_host`` is on, the connection comes from an address of the node's
host. The facility of everything a node sends is the node's facility.

DICOM TLS (PS3.15 B.9, B.12; docs/dicom-tls.md): a node may be bound to the SHA-256
fingerprint of its client certificate, and a facility may require TLS. Then an AE title
alone is not trusted:

- a node bound to a certificate is admitted only over TLS with that certificate;
- a node of a facility that requires TLS is admitted only over TLS, and only with a
  certificate bound to it;
- over TLS, a node without a binding (of a facility that does not require TLS) is
  admitted on the CA's word (the transport verified its certificate chain).

Every refusal is audited (action ``association``, outcome ``refused``, with the reason
and, over TLS, the fingerprint the peer presented).
"""

from __future__ import annotations

import dataclasses
import enum
import re
import socket

from coffre.app import Context
from coffre.errors import ConfigurationError, NotAuthorized, NotFound
from coffre.index import facilities as index
from coffre.model import Actor, ActorKind, Facility, Node, Permission
from coffre.services import audit
from coffre.services.access import Action, Resource, authorize

_SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$")
_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")


def check_ae_title(title: str) -> str:
    """PS3.5 6.2 AE: 1-16 characters of the default repertoire, no backslash or control."""
    if not 0 < len(title) <= 16 or title != title.strip() or "\\" in title:
        raise ConfigurationError("an AE title is 1-16 characters without leading/trailing spaces or '\\'")
    if not all(0x20 <= ord(c) < 0x7F for c in title):
        raise ConfigurationError("an AE title uses printable ASCII characters only")
    return title


def check_fingerprint(value: str) -> str:
    """A certificate fingerprint: SHA-256 of the DER certificate, 64 hex digits (any case,
    with or without ':' separators) → lowercase without separators."""
    normal = value.strip().replace(":", "").lower()
    if not _FINGERPRINT.match(normal):
        raise ConfigurationError("a certificate fingerprint is the SHA-256 of the DER certificate, 64 hex digits")
    return normal


def add_facility(ctx: Context, actor: Actor, *, slug: str, name: str, issuer: str) -> Facility:
    if not _SLUG.match(slug):
        raise ConfigurationError("a facility slug is 1-32 characters of a-z, 0-9 and '-'")
    if not name.strip() or not issuer.strip() or len(issuer) > 64 or len(name) > 200:
        raise ConfigurationError("a facility needs a name (≤200) and an issuer of patient IDs (≤64)")
    authorize(actor, Action.MANAGE_TERRITORY, Resource(None))
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
    tls_fingerprint: str = "",
) -> Node:
    """Register a node; ``tls_fingerprint`` binds it to a client certificate at once."""
    check_ae_title(ae_title)
    fingerprint = check_fingerprint(tls_fingerprint) if tls_fingerprint else ""
    if not 0 < port <= 65535:
        raise ConfigurationError("a node port is 1-65535")
    if not host or len(host) > 255 or any(c.isspace() for c in host):
        raise ConfigurationError("a node needs a host name or address")
    with ctx.db.write() as tx:
        fac = index.get_facility(tx, facility_slug)
        authorize(actor, Action.MANAGE_FACILITY, Resource(fac.id))
        created = index.add_node(tx, ae_title=ae_title, host=host, port=port, facility_id=fac.id,
                                 permissions=permissions, description=description[:200], now=ctx.clock(),
                                 tls_fingerprint=fingerprint)
        audit.record(ctx, tx, actor, "node-add", facility_id=fac.id, object_type="node", object_id=ae_title,
                     detail={"host": host, "port": port, "permissions": sorted(p.value for p in permissions),
                             **({"tls_fingerprint": fingerprint} if fingerprint else {})})
    return created


def bind_certificate(ctx: Context, actor: Actor, ae_title: str, fingerprint: str, *, subject: str = "") -> Node:
    """Bind a node to the client certificate of SHA-256 ``fingerprint`` (replaces a binding).

    From then on the node is admitted only over DICOM TLS presenting that certificate.
    Several nodes (AE titles of one device) may share a certificate.
    """
    normal = check_fingerprint(fingerprint)
    with ctx.db.write() as tx:
        found = index.find_node(tx, ae_title)
        if found is None:
            raise NotFound(f"no node {ae_title!r}")
        authorize(actor, Action.MANAGE_FACILITY, Resource(found[1].id))
        index.set_node_fingerprint(tx, ae_title, normal)
        audit.record(ctx, tx, actor, "node-bind-certificate", facility_id=found[1].id, object_type="node",
                     object_id=ae_title, detail={"tls_fingerprint": normal, "previous": found[0].tls_fingerprint,
                                                 **({"subject": subject[:200]} if subject else {})})
    return dataclasses.replace(found[0], tls_fingerprint=normal)


def unbind_certificate(ctx: Context, actor: Actor, ae_title: str) -> Node:
    """Remove a node's certificate binding (the way to revoke a node's certificate)."""
    with ctx.db.write() as tx:
        found = index.find_node(tx, ae_title)
        if found is None:
            raise NotFound(f"no node {ae_title!r}")
        authorize(actor, Action.MANAGE_FACILITY, Resource(found[1].id))
        index.set_node_fingerprint(tx, ae_title, "")
        audit.record(ctx, tx, actor, "node-unbind-certificate", facility_id=found[1].id, object_type="node",
                     object_id=ae_title, detail={"previous": found[0].tls_fingerprint})
    return dataclasses.replace(found[0], tls_fingerprint="")


def set_require_tls(ctx: Context, actor: Actor, slug: str, required: bool) -> Facility:
    """Admit the facility's nodes only over DICOM TLS with their bound certificate (or not)."""
    with ctx.db.write() as tx:
        authorize(actor, Action.MANAGE_FACILITY, Resource(index.get_facility(tx, slug).id))
        fac = index.set_require_tls(tx, slug, required)
        audit.record(ctx, tx, actor, "facility-require-tls", facility_id=fac.id, object_type="facility",
                     object_id=slug, detail={"require_tls": required})
    return fac


def find_node(ctx: Context, ae_title: str) -> tuple[Node, Facility] | None:
    with ctx.db.read() as tx:
        return index.find_node(tx, ae_title.strip())


def remove_node(ctx: Context, actor: Actor, ae_title: str) -> None:
    with ctx.db.write() as tx:
        found = index.find_node(tx, ae_title)
        if found is None:
            raise NotFound(f"no node {ae_title!r}")
        authorize(actor, Action.MANAGE_FACILITY, Resource(found[1].id))
        index.remove_node(tx, ae_title)
        audit.record(ctx, tx, actor, "node-remove", facility_id=found[1].id if found else None,
                     object_type="node", object_id=ae_title)


def set_node_permissions(ctx: Context, actor: Actor, ae_title: str, permissions: frozenset[Permission]) -> Node:
    """Change what a node may do (audited with the previous and the new permissions)."""
    with ctx.db.write() as tx:
        found = index.find_node(tx, ae_title)
        if found is None:
            raise NotFound(f"no node {ae_title!r}")
        authorize(actor, Action.MANAGE_FACILITY, Resource(found[1].id))
        index.set_node_permissions(tx, ae_title, permissions)
        audit.record(ctx, tx, actor, "node-permissions", facility_id=found[1].id, object_type="node",
                     object_id=ae_title, detail={"previous": sorted(p.value for p in found[0].permissions),
                                                 "permissions": sorted(p.value for p in permissions)})
    return dataclasses.replace(found[0], permissions=permissions)


def list_nodes(ctx: Context, facility_slug: str | None = None) -> list[Node]:
    with ctx.db.read() as tx:
        fid = index.get_facility(tx, facility_slug).id if facility_slug else None
        return index.list_nodes(tx, fid)


class Refusal(enum.Enum):
    """Why an association is rejected (PS3.8 9.3.4 A-ASSOCIATE-RJ, source 1, reasons)."""

    #: also for an AE title that is not proven over this transport: a plain association
    #: from a TLS-only node, or a TLS certificate that is not the node's
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


def admit(
    ctx: Context, *, calling_ae: str, called_ae: str, address: str, tls_fingerprint: str | None = None
) -> Actor:
    """The actor for an association request, or ``AssociationRefused`` (audited).

    ``tls_fingerprint`` is ``None`` for a plain TCP association, else the SHA-256 of the
    client certificate the TLS transport verified.
    """
    calling = calling_ae.strip()
    tls = tls_fingerprint is not None
    extra: dict[str, object] = {"tls": True, "fingerprint": tls_fingerprint} if tls else {}
    anonymous = Actor(kind=ActorKind.NODE, name=calling[:16], facility=None, address=address, tls=tls)
    if called_ae.strip() != ctx.settings.archive.ae_title:
        _refuse(ctx, anonymous, Refusal.CALLED_AE_NOT_RECOGNIZED, "called AE title not recognised", extra)
    with ctx.db.read() as tx:
        found = index.find_node(tx, calling)
    if found is None:
        _refuse(ctx, anonymous, Refusal.CALLING_AE_NOT_RECOGNIZED, "calling AE title not recognised", extra)
    assert found is not None
    node, fac = found
    actor = dataclasses.replace(Actor.for_node(node, fac, address), tls=tls)
    if ctx.settings.dicom.verify_peer_host and node.host not in {"*", address} and address not in _addresses(node.host):
        _refuse(ctx, actor, Refusal.CALLING_AE_NOT_RECOGNIZED, "peer address does not match the node's host", extra)
    problem = _tls_problem(node, fac, tls_fingerprint)
    if problem:
        _refuse(ctx, actor, Refusal.CALLING_AE_NOT_RECOGNIZED, problem, extra)
    # Accepted associations are not audited by themselves: each operation on them is.
    return actor


def _tls_problem(node: Node, fac: Facility, presented: str | None) -> str:
    """Why the transport does not prove the node's identity ("" if it does)."""
    if presented is None:
        if node.tls_fingerprint:
            return "TLS required: the node is bound to a certificate"
        if fac.require_tls:
            return "TLS required by the facility"
        return ""
    if node.tls_fingerprint:
        return "" if node.tls_fingerprint == presented else "certificate mismatch"
    if fac.require_tls:
        return "no certificate bound to the node"
    return ""


def _refuse(ctx: Context, actor: Actor, refusal: Refusal, reason: str, extra: dict[str, object] | None = None) -> None:
    audit.record_alone(ctx, actor, "association", outcome="refused", object_type="node",
                       object_id=actor.name, detail={"reason": reason, **(extra or {})})
    raise AssociationRefused(refusal, reason)


def record_handshake_failure(ctx: Context, *, address: str, error: str) -> None:
    """Audit a TLS connection refused before any association (a node authentication
    failure, PS3.15 A.5.3.11 Security Alert): no certificate, an untrusted one, an old
    TLS version."""
    actor = Actor(kind=ActorKind.NODE, name="", facility=None, address=address, tls=True)
    audit.record_alone(ctx, actor, "association", outcome="refused", object_type="node",
                       detail={"reason": "TLS handshake failed", "tls": True, "error": error[:200]})


class DestinationNeedsTls(NotAuthorized):
    """A C-MOVE destination that must be reached over TLS, and the archive has no TLS."""


def tls_destination_host(ctx: Context, actor: Actor, ae_title: str, *, tls_available: bool) -> str | None:
    """The host name to verify when the archive reaches the C-MOVE destination
    ``ae_title`` over DICOM TLS, or ``None`` when it is reached over plain TCP.

    A node of a facility that requires TLS, or a node bound to a certificate, is a TLS
    node: its port is a DICOM TLS port, and its certificate must name its host. When the
    archive has no TLS client (``[tls] enabled`` off), sending to it is refused
    (``DestinationNeedsTls``, audited), never done in clear. An unknown destination is
    left to the retrieve service, which refuses it.
    """
    found = find_node(ctx, ae_title)
    if found is None:
        return None
    node, fac = found
    if not (fac.require_tls or node.tls_fingerprint):
        return None
    if not tls_available:
        reason = "the move destination requires TLS and [tls] is not enabled"
        audit.record_alone(ctx, actor, "move", outcome="refused", object_type="node", object_id=node.ae_title,
                           detail={"reason": reason, "destination": node.ae_title})
        raise DestinationNeedsTls(reason)
    return node.host
