"""``coffre share``: the operator's view of share links (list, revoke).

Links are created by radiologists and clinicians (``POST /api/shares``); the operator
lists every link of the territory and revokes any of them, as the system actor, audited
like a revocation in the portal. Tokens and access codes are never shown: they exist
only in the answer to the creation.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from coffre.cli.common import OPERATOR, DataOption, _context, _typer, out
from coffre.services import shares

share_app = _typer("Share links for GPs and patients: list, revoke.")


@share_app.command("list")
def list_(
    data: DataOption,
    active: Annotated[bool, typer.Option("--active", help="Only links that can still be opened.")] = False,
) -> None:
    """List every share link, newest first (no secrets)."""
    with _context(data) as ctx:
        rows = shares.list_shares(ctx, OPERATOR, facility_wide=True)
    table = Table("#", "state", "person", "facility", "by", "recipient", "scope", "studies", "uses",
                  "failed codes", "download", "expires")
    for s in rows:
        if active and s.state != "active":
            continue
        scope = s.scope if s.scope == "study" else f"person {s.date_from or '…'}-{s.date_to or '…'}"
        table.add_row(str(s.id), s.state, str(s.person_id), str(s.facility_id), s.created_by, s.recipient, scope,
                      str(s.studies), f"{s.uses}/{s.max_uses}", str(s.failed_attempts),
                      "yes" if s.allow_download else "no", s.expires_at.isoformat(timespec="minutes"))
    out.print(table)


@share_app.command("revoke")
def revoke(data: DataOption, share_id: Annotated[int, typer.Argument(help="The link's number.")]) -> None:
    """Revoke a share link now: its page and its open sessions stop working."""
    with _context(data) as ctx:
        shares.revoke_share(ctx, OPERATOR, share_id)
    out.print(f"share link #{share_id} revoked")
