"""Objects received twice under one SOP Instance UID with different content."""

from __future__ import annotations

from coffre.app import Context
from coffre.index import facilities as facility_index
from coffre.index import instances as index
from coffre.model import Conflict


def list_conflicts(ctx: Context, facility_slug: str | None = None) -> list[Conflict]:
    with ctx.db.read() as tx:
        fid = facility_index.get_facility(tx, facility_slug).id if facility_slug else None
        return index.list_conflicts(tx, fid)
