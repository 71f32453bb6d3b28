"""The one authorization function (DESIGN rule 3), table-driven, default deny.

At this stage actors are DICOM nodes (their permissions are registered with them),
HTTP clients holding a facility's API token (permissions registered with the token)
and the system itself (the CLI run by the archive's operator). Users, roles and the
territory's grants plug into the same table later; callers do not change.
"""

from __future__ import annotations

import enum

from coffre.errors import NotAuthorized
from coffre.model import Actor, ActorKind, Permission


class Action(enum.StrEnum):
    STORE = "store"
    QUERY = "query"
    RETRIEVE = "retrieve"
    ECHO = "echo"


#: which permission each action needs; ``None``: any registered node or client may
_PERMISSION: dict[Action, Permission | None] = {
    Action.STORE: Permission.STORE,
    Action.QUERY: Permission.QUERY,
    Action.RETRIEVE: Permission.RETRIEVE,
    Action.ECHO: None,
}


def is_allowed(actor: Actor, action: Action, facility_id: int | None) -> bool:
    """True when ``actor`` may perform ``action`` on data of ``facility_id``."""
    if actor.kind is ActorKind.SYSTEM:
        return True
    if actor.kind in (ActorKind.NODE, ActorKind.CLIENT) and actor.facility is not None:
        if facility_id is not None and facility_id != actor.facility_id:
            return False
        needed = _PERMISSION[action]
        return needed is None or needed in actor.permissions
    return False


def authorize(actor: Actor, action: Action, facility_id: int | None) -> None:
    """Raise ``NotAuthorized`` unless :func:`is_allowed`."""
    if not is_allowed(actor, action, facility_id):
        raise NotAuthorized(f"{actor.describe()} may not {action.value} here")
