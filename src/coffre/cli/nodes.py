"""``coffre facility`` and ``coffre node``: the territory's sites and their DICOM nodes."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from coffre.cli.common import OPERATOR, DataOption, _context, _typer, out
from coffre.model import Permission

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
        table = Table("slug", "name", "issuer")
        for fac in list_facilities(ctx):
            table.add_row(fac.slug, fac.name, fac.issuer)
    out.print(table)


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
) -> None:
    """Register a DICOM node of a facility and what it may do."""
    from coffre.services.facilities import add_node

    perms = _permissions(allow)
    with _context(data) as ctx:
        node = add_node(ctx, OPERATOR, ae_title=ae_title, host=host, port=port, facility_slug=facility,
                        permissions=perms, description=description)
    out.print(f"node {node.ae_title} added")


@node_app.command("list")
def node_list(
    data: DataOption,
    facility: Annotated[str | None, typer.Option(help="Only this facility.")] = None,
) -> None:
    """List DICOM nodes."""
    from coffre.services.facilities import list_facilities, list_nodes

    with _context(data) as ctx:
        slugs = {f.id: f.slug for f in list_facilities(ctx)}
        table = Table("AE title", "facility", "host", "port", "may")
        for n in list_nodes(ctx, facility):
            table.add_row(n.ae_title, slugs[n.facility_id], n.host, str(n.port),
                          ",".join(sorted(p.value for p in n.permissions)))
    out.print(table)


@node_app.command("remove")
def node_remove(data: DataOption, ae_title: Annotated[str, typer.Argument()]) -> None:
    """Remove a DICOM node."""
    from coffre.services.facilities import remove_node

    with _context(data) as ctx:
        remove_node(ctx, OPERATOR, ae_title)
    out.print(f"node {ae_title} removed")


