"""``coffre token`` (API tokens of DICOMweb clients) and ``coffre user`` (built-in users)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from coffre.cli.common import OPERATOR, DataOption, _context, _typer, out
from coffre.cli.nodes import _permissions

user_app = _typer("Built-in users of the territory (embedded mode).")
token_app = _typer("API tokens of DICOMweb clients (one facility each).")


@token_app.command("add")
def token_add(
    data: DataOption,
    name: Annotated[str, typer.Argument(help="Token name, unique within the facility.")],
    facility: Annotated[str, typer.Option(help="Slug of the facility the client acts for.")],
    allow: Annotated[str, typer.Option(help="store,query,retrieve")] = "store,query,retrieve",
) -> None:
    """Create an API token; it is printed once and only its hash is kept."""
    from coffre.services.tokens import create_token

    with _context(data) as ctx:
        token = create_token(ctx, OPERATOR, facility_slug=facility, name=name, permissions=_permissions(allow))
    out.print(token, soft_wrap=True)


@token_app.command("list")
def token_list(data: DataOption) -> None:
    """List API tokens (names, facilities, permissions; never the tokens)."""
    from coffre.services.tokens import list_tokens

    with _context(data) as ctx:
        table = Table("facility", "name", "may", "created", "revoked")
        for t in list_tokens(ctx):
            table.add_row(t.facility.slug, t.name, ",".join(sorted(p.value for p in t.permissions)),
                          t.created_at.isoformat(timespec="seconds"),
                          t.revoked_at.isoformat(timespec="seconds") if t.revoked_at else "")
    out.print(table)


@token_app.command("revoke")
def token_revoke(
    data: DataOption,
    name: Annotated[str, typer.Argument()],
    facility: Annotated[str, typer.Option(help="Slug of the token's facility.")],
) -> None:
    """Revoke an API token; it is refused from the next request on."""
    from coffre.services.tokens import revoke_token

    with _context(data) as ctx:
        revoke_token(ctx, OPERATOR, facility_slug=facility, name=name)
    out.print(f"token {name} revoked")


