"""The one audit function (DESIGN rule 3).

``record`` writes an event in the caller's transaction, so an action and its audit
event commit or roll back together. ``record_alone`` is for events with no
transaction of their own (a rejected association, a refused object). Details hold
archive identifiers (UIDs, keys, statuses), never patient demographics.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from coffre.app import Context
from coffre.index import audit as audit_index
from coffre.index.engine import Tx
from coffre.model import Actor


def record(
    ctx: Context,
    tx: Tx,
    actor: Actor,
    action: str,
    *,
    outcome: str = "success",
    facility_id: int | None = None,
    object_type: str = "",
    object_id: str = "",
    person_id: int | None = None,
    detail: Mapping[str, Any] | None = None,
) -> None:
    audit_index.insert_event(
        tx,
        at=ctx.clock(),
        action=action,
        outcome=outcome,
        actor_kind=actor.kind.value,
        actor_name=actor.name,
        actor_address=actor.address,
        facility_id=facility_id if facility_id is not None else actor.facility_id,
        object_type=object_type,
        object_id=object_id,
        person_id=person_id,
        detail=detail or {},
    )


def record_alone(ctx: Context, actor: Actor, action: str, **kwargs: Any) -> None:
    with ctx.db.write() as tx:
        record(ctx, tx, actor, action, **kwargs)
