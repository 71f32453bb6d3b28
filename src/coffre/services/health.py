"""Health of the archive's dependencies, for load balancers and operators."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from coffre.app import Context
from coffre.index.migrate import current_revision

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Health:
    index: str
    storage: str

    @property
    def ok(self) -> bool:
        return self.index == "ok" and self.storage == "ok"


def health(ctx: Context) -> Health:
    try:
        index = "ok" if current_revision(ctx.db) else "not migrated"
    except Exception as exc:
        log.warning("health: index unavailable: %s", type(exc).__name__)
        index = "unavailable"
    try:
        ctx.blobs.exists("health/probe")
        storage = "ok"
    except Exception as exc:
        log.warning("health: storage unavailable: %s", type(exc).__name__)
        storage = "unavailable"
    return Health(index=index, storage=storage)
