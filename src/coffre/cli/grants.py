"""``coffre grant``: care relationships, reading assignments, break-the-glass, oppositions."""

from __future__ import annotations

from coffre.cli.common import _typer

grant_app = _typer("Grants: audited reasons to see another facility's data.")
