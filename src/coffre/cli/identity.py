"""``coffre person`` and ``coffre reconcile``: the territory's persons (being written)."""

from __future__ import annotations

from coffre.cli.common import _typer

person_app = _typer("Persons: the local identities of one human across facilities.")
reconcile_app = _typer("The reconciliation queue: possible matches for a human to decide.")
