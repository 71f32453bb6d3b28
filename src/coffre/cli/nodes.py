"""``coffre facility`` and ``coffre node``: the territory's sites and their DICOM nodes.

DICOM TLS bindings (docs/dicom-tls.md): ``node add --certificate``, ``node
bind-certificate`` and ``node unbind-certificate`` bind a node to the SHA-256
fingerprint of its client certificate; ``facility require-tls`` admits a facility's
nodes only over TLS with their bound certificate. Every change is audited by the
services.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from coffre.cli.common import OPERATOR, DataOption, _context, _typer, err, out
from coffre.errors import ConfigurationError
from coffre.model import Permission

if TYPE_CHECKING:
    from coffre.net.tls import CertificateInfo

facility_app = _typer("Facilities (member sites) of the territory.")
node_app = _typer("DICOM nodes (AE titles) of the facilities.")


@facility_app.command("add")
def facility_add(
    data: DataOption,
    slug: Annotated[str, typer.Argument(help="Short key, e.g. chu-nord.")],
    name: Annotated[str, typer.Option(help="Display name.")],
    issuer: Annotated[str, typer.Option(help="Issuer of Patient ID (0010,0021) of this facility.")],
) -> None:
    """Add a facility."""
    from coffre.services.facilities import add_facility

    with _context(data) as ctx:
        fac = add_facility(ctx, OPERATOR, slug=slug, name=name, issuer=issuer)
    out.print(f"facility {fac.slug} added")


@facility_app.command("list")
def facility_list(data: DataOption) -> None:
    """List facilities."""
    from coffre.services.facilities import list_facilities

    with _context(data) as ctx:
        table = Table("slug", "name", "issuer", "TLS")
        for fac in list_facilities(ctx):
            table.add_row(fac.slug, fac.name, fac.issuer, "required" if fac.require_tls else "")
    out.print(table)


@facility_app.command("require-tls")
def facility_require_tls(
    data: DataOption,
    slug: Annotated[str, typer.Argument(help="The facility's slug.")],
    on: Annotated[bool, typer.Option("--on/--off", help="Require DICOM TLS with bound certificates, or not.")],
) -> None:
    """Admit the facility's nodes only over DICOM TLS with their bound certificate."""
    from coffre.services.facilities import list_nodes, set_require_tls

    with _context(data) as ctx:
        fac = set_require_tls(ctx, OPERATOR, slug, on)
        unbound = [n.ae_title for n in list_nodes(ctx, slug) if not n.tls_fingerprint]
    out.print(f"facility {fac.slug}: TLS {'required' if fac.require_tls else 'not required'}")
    if fac.require_tls and unbound:
        err.print(f"warning: nodes without a bound certificate are now refused: {', '.join(unbound)}",
                  soft_wrap=True)


def _certificate(path: Path) -> CertificateInfo:
    from coffre.net.tls import read_certificate

    try:
        return read_certificate(path)
    except ConfigurationError as exc:
        raise typer.BadParameter(exc.reason, param_hint="certificate") from None


def _permissions(value: str) -> frozenset[Permission]:
    try:
        return frozenset(Permission(p.strip()) for p in value.split(",") if p.strip())
    except ValueError:
        allowed = ", ".join(p.value for p in Permission)
        raise typer.BadParameter(f"permissions are a comma-separated list of: {allowed}") from None


@node_app.command("add")
def node_add(
    data: DataOption,
    ae_title: Annotated[str, typer.Argument(help="The node's AE title.")],
    facility: Annotated[str, typer.Option(help="Slug of the node's facility.")],
    host: Annotated[str, typer.Option(help="Host name or address of the node.")],
    port: Annotated[int, typer.Option(help="Port of the node's SCP (for C-MOVE destinations).")],
    allow: Annotated[str, typer.Option(help="store,query,retrieve,move-destination")] = "store",
    description: Annotated[str, typer.Option(help="Free text.")] = "",
    certificate: Annotated[Path | None, typer.Option(
        help="PEM client certificate of the node: binds the node to it (DICOM TLS only).")] = None,
) -> None:
    """Register a DICOM node of a facility and what it may do."""
    from coffre.services.facilities import add_node

    perms = _permissions(allow)
    cert = _certificate(certificate) if certificate is not None else None
    with _context(data) as ctx:
        node = add_node(ctx, OPERATOR, ae_title=ae_title, host=host, port=port, facility_slug=facility,
                        permissions=perms, description=description,
                        tls_fingerprint=cert.fingerprint if cert else "")
    out.print(f"node {node.ae_title} added")
    if cert is not None:
        out.print(f"  bound to certificate {cert.fingerprint} ({cert.subject})", soft_wrap=True)


@node_app.command("bind-certificate")
def node_bind_certificate(
    data: DataOption,
    ae_title: Annotated[str, typer.Argument(help="The node's AE title.")],
    certificate: Annotated[Path, typer.Argument(help="PEM file of the node's client certificate (first one).")],
) -> None:
    """Bind a node to its TLS client certificate: it is then admitted only over DICOM TLS with it."""
    from coffre.services.facilities import bind_certificate

    cert = _certificate(certificate)
    with _context(data) as ctx:
        bind_certificate(ctx, OPERATOR, ae_title, cert.fingerprint, subject=cert.subject)
    out.print(f"node {ae_title} bound to certificate {cert.fingerprint} ({cert.subject}, "
              f"valid until {cert.not_after.date().isoformat()})", soft_wrap=True)


@node_app.command("unbind-certificate")
def node_unbind_certificate(
    data: DataOption,
    ae_title: Annotated[str, typer.Argument(help="The node's AE title.")],
) -> None:
    """Remove a node's certificate binding (revokes that certificate for the node)."""
    from coffre.services.facilities import unbind_certificate

    with _context(data) as ctx:
        unbind_certificate(ctx, OPERATOR, ae_title)
    out.print(f"node {ae_title} no longer bound to a certificate")


@node_app.command("list")
def node_list(
    data: DataOption,
    facility: Annotated[str | None, typer.Option(help="Only this facility.")] = None,
) -> None:
    """List DICOM nodes."""
    from coffre.services.facilities import list_facilities, list_nodes

    with _context(data) as ctx:
        facilities = list_facilities(ctx)
        slugs = {f.id: f.slug for f in facilities}
        tls_required = {f.id for f in facilities if f.require_tls}
        table = Table("AE title", "facility", "host", "port", "may", "TLS certificate (SHA-256)")
        for n in list_nodes(ctx, facility):
            binding = n.tls_fingerprint or ("none: refused (facility requires TLS)"
                                            if n.facility_id in tls_required else "")
            table.add_row(n.ae_title, slugs[n.facility_id], n.host, str(n.port),
                          ",".join(sorted(p.value for p in n.permissions)), binding)
    out.print(table)


@node_app.command("remove")
def node_remove(data: DataOption, ae_title: Annotated[str, typer.Argument()]) -> None:
    """Remove a DICOM node."""
    from coffre.services.facilities import remove_node

    with _context(data) as ctx:
        remove_node(ctx, OPERATOR, ae_title)
    out.print(f"node {ae_title} removed")


