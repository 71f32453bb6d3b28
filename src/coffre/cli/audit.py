"""``coffre audit``: verify the hash chain, search events, export (being written)."""

from __future__ import annotations

from coffre.cli.common import _typer

audit_app = _typer("The tamper-evident audit trail.")
