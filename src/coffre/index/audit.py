"""Audit events in the index, written in the transaction of the action they record."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from coffre.index.schema import audit_event


@dataclass(frozen=True, slots=True)
class AuditRow:
    id: int
    at: datetime
    action: str
    outcome: str
    actor_kind: str
    actor_name: str
    actor_address: str
    facility_id: int | None
    object_type: str
    object_id: str
    detail: dict[str, Any]


def insert_event(
    conn: Connection,
    *,
    at: datetime,
    action: str,
    outcome: str,
    actor_kind: str,
    actor_name: str,
    actor_address: str,
    facility_id: int | None,
    object_type: str,
    object_id: str,
    detail: Mapping[str, Any],
    person_id: int | None = None,
) -> None:
    conn.execute(
        audit_event.insert(),
        dict(
            at=at,
            action=action,
            outcome=outcome,
            actor_kind=actor_kind,
            actor_name=actor_name[:100],
            actor_address=actor_address[:100],
            facility_id=facility_id,
            object_type=object_type,
            object_id=object_id[:128],
            person_id=person_id,
            detail=json.dumps(dict(detail), sort_keys=True, separators=(",", ":")),
        )
    )


def list_events(conn: Connection, *, action: str | None = None, limit: int = 1000) -> list[AuditRow]:
    query = select(audit_event).order_by(audit_event.c.id).limit(limit)
    if action is not None:
        query = query.where(audit_event.c.action == action)
    return [
        AuditRow(
            id=r.id,
            at=r.at,
            action=r.action,
            outcome=r.outcome,
            actor_kind=r.actor_kind,
            actor_name=r.actor_name,
            actor_address=r.actor_address,
            facility_id=r.facility_id,
            object_type=r.object_type,
            object_id=r.object_id,
            detail=json.loads(r.detail),
        )
        for r in conn.execute(query)
    ]


def chain_unhashed(conn: Connection) -> None:
    """Placeholder replaced by the hash chain (being written)."""
