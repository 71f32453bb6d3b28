"""Retrieve: C-MOVE and C-GET (and later WADO) reach the same use case.

``plan`` authorizes, resolves the request's unique keys to instances within the
caller's scope, and audits the access study by study. ``move_destination`` resolves a
C-MOVE destination AE title to a registered node that may receive (PS3.4 C.4.2.1.4:
an unknown destination is refused with 0xA801).
"""

from __future__ import annotations

from collections import Counter

from coffre.app import Context
from coffre.dicom.query import Query
from coffre.errors import CoffreError
from coffre.index import facilities as facility_index
from coffre.index.retrieve import InstanceRef, locate
from coffre.model import Actor, Node, Permission
from coffre.services import audit
from coffre.services.access import Action, Resource, authorize
from coffre.services.grants import scope_for
from coffre.services.query import describe


class UnknownDestination(CoffreError):
    """PS3.4 C.4.2.1.4: Refused: Move Destination unknown."""

    http_status = 400
    dimse_status = 0xA801


def move_destination(ctx: Context, actor: Actor, ae_title: str) -> Node:
    """The registered node ``ae_title`` if the actor may send to it."""
    with ctx.db.read() as tx:
        found = facility_index.find_node(tx, ae_title.strip())
    if found is None:
        raise UnknownDestination("move destination unknown")
    node, facility = found
    if not node.may(Permission.MOVE_DESTINATION) or (
        actor.facility_id is not None and facility.id != actor.facility_id
    ):
        raise UnknownDestination("move destination not allowed for this caller")
    return node


def plan(
    ctx: Context, actor: Actor, query: Query, *, operation: str, destination: str = ""
) -> list[InstanceRef]:
    """The instances to send for a retrieve request, audited per study."""
    authorize(actor, Action.RETRIEVE, Resource(None))
    with ctx.db.read() as tx:
        refs = list(locate(tx, query, scope_for(ctx, tx, actor, Action.RETRIEVE)))
    studies = Counter(ref.study_instance_uid for ref in refs)
    with ctx.db.write() as tx:
        if not studies:
            audit.record(ctx, tx, actor, operation, outcome="no-match", object_type="study",
                         detail={**describe(query), "destination": destination})
        for study_uid, count in studies.items():
            audit.record(ctx, tx, actor, operation, object_type="study", object_id=study_uid,
                         detail={"instances": count, "destination": destination})
    return refs
