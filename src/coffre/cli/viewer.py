"""``coffre viewer``: the OHIF viewer bundle (being written)."""

from __future__ import annotations

from coffre.cli.common import _typer

viewer_app = _typer("The OHIF viewer served by Coffre.")
