"""Retrieve: C-MOVE and C-GET (and later WADO) reach the same use case.

``plan`` authorizes, resolves the request's unique keys to instances within the
caller's scope, and audits the access study by study. ``move_destination`` resolves a
C-MOVE destination AE title to a registered node that may receive (PS3.4 C.4.2.1.4:
an unknown destination is refused with 0xA801).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from coffre.app import Context
from coffre.dicom.query import Query
from coffre.errors import CoffreError
from coffre.index import facilities as facility_index
from coffre.index.retrieve import InstanceRef, locate
from coffre.model import Actor, Node, Permission
from coffre.services import audit
from coffre.services.access import Action, Resource, authorize, cross_facility_reason, scope
from coffre.services.domain import Coercer, query_domain
from coffre.services.grants import load
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
    """The instances to send for a retrieve request, audited per study.

    Instances of another facility's identity carry the :class:`Coercion` into the
    caller's domain (``services.domain``). Each study's audit event names the person and
    why the caller could see it (``own``, ``care``, ``reading``, ``break-glass``,
    ``shared``), so that the patient access report can say so.
    """
    authorize(actor, Action.RETRIEVE, Resource(None))
    coercer = Coercer(actor)
    with ctx.db.read() as tx:
        grants = load(ctx, tx, actor)
        domain = query_domain(tx, actor, query, expand_patient_level=True)
        refs = list(locate(tx, query, scope(actor, Action.RETRIEVE, grants), domain))
        coercions = coercer.for_refs(tx, refs)
    if coercions:
        refs = [replace(r, coercion=coercions[r.patient_pk]) if r.patient_pk in coercions else r for r in refs]
    studies = Counter((ref.study_instance_uid, ref.facility_id) for ref in refs)
    first = {(r.study_instance_uid, r.facility_id): r for r in reversed(refs)}
    with ctx.db.write() as tx:
        if not studies:
            audit.record(ctx, tx, actor, operation, outcome="no-match", object_type="study",
                         detail={**describe(query), "destination": destination})
        for (study_uid, facility_id), count in studies.items():
            ref = first[(study_uid, facility_id)]
            reason = "own" if facility_id in actor.facility_ids or not actor.facility_ids else (
                cross_facility_reason(grants, Resource(facility_id, ref.person_id, ref.study_pk)) or "system")
            audit.record(ctx, tx, actor, operation, facility_id=facility_id, object_type="study",
                         object_id=study_uid, person_id=ref.person_id,
                         detail={"instances": count, "destination": destination, "access": reason,
                                 "requester_facility": actor.facility_id})
    return refs
