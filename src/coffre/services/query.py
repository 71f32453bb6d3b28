"""Query: the one search use case behind C-FIND (and QIDO-RS).

The caller's scope is the single authorization predicate added to every query
(DESIGN 5, Query), computed by ``services.access`` from the actor's facilities and
grants; the system actor sees everything. Each query is audited with its level and
matching keys (and the person, when the PatientID names one).
"""

from __future__ import annotations

from collections.abc import Iterator

from pydicom.datadict import keyword_for_tag

from coffre.app import Context
from coffre.dicom.query import Query
from coffre.index.query import Row, run_query
from coffre.model import Actor
from coffre.services import audit
from coffre.services.access import Action, Resource, authorize
from coffre.services.domain import Coercer, query_domain
from coffre.services.grants import scope_for


def describe(query: Query) -> dict[str, object]:
    """The audit detail of a query: level and matching keys (the audit trail, not logs)."""
    keys = {
        keyword_for_tag(f.tag) or f"{f.tag:08X}": [f.match.value, *f.values] for f in query.filters
    }
    return {"level": query.level.value, "model": query.model.value, "keys": keys}


def find(ctx: Context, actor: Actor, query: Query, *, source: str) -> Iterator[Row]:
    """Rows matching ``query`` within the actor's scope, streamed in a read transaction.

    A PatientID in the caller's own domain names the person (``services.domain``), and
    matches from other facilities come back with the caller's identifiers.
    """
    authorize(actor, Action.QUERY, Resource(None))
    with ctx.db.read() as tx:
        domain = query_domain(tx, actor, query)
    with ctx.db.write() as tx:
        audit.record(ctx, tx, actor, "query", object_type=query.level.value.lower(),
                     person_id=min(domain.person_ids) if domain and len(domain.person_ids) == 1 else None,
                     detail={**describe(query), "source": source})
    coercer = Coercer(actor)
    with ctx.db.read() as tx:
        scope = scope_for(ctx, tx, actor, Action.QUERY)
        for row in run_query(tx, query, scope, domain, origin=True):
            yield coercer.row(tx, row, query.return_tags)
