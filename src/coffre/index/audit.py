"""Audit events in the index: a hash chain, written in the transaction of the action.

Every event stores ``prev_hash`` (the ``hash`` of the event before it) and ``hash``, the
SHA-256 of its canonical serialisation (:func:`canonical`): the version tag ``"v1"`` and
the event's fields in a fixed order, the ``id`` first, ``prev_hash`` last, as one
compact JSON array encoded in UTF-8. Changing, deleting, inserting or moving an event
breaks either its own hash or the link of the event after it (:func:`verify`).

**A linear chain under concurrency.** Events are appended from many threads and
processes, inside the transactions of the actions they record. The new event's id and
``prev_hash`` come from the chain head (the last event, ``ORDER BY id DESC LIMIT 1``, a
primary-key probe) read under a lock held until the transaction ends:

- SQLite: every write transaction starts with ``BEGIN IMMEDIATE`` (one writer at a
  time); the new id is ``head.id + 1``.
- PostgreSQL: ``pg_advisory_xact_lock(CHAIN_LOCK)`` first, then the head and
  ``nextval`` of the id sequence, in the same transaction.

So ids increase in chain order and an event with a larger id never commits before one
with a smaller id: a reader that sees event *n* sees every surviving event before it
(the exporter's cursor relies on this). On PostgreSQL a rolled-back transaction leaves
a gap in the ids; a gap alone is therefore not a deletion — the ``prev_hash`` link is
what proves continuity.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, select, text, update

from coffre.index.schema import archive_state, audit_event, person

#: the version tag that starts every canonical serialisation
CHAIN_VERSION = "v1"
#: ``prev_hash`` of the first event of the chain
GENESIS = ""
#: PostgreSQL advisory lock keys: the chain head, the export lease (see index/migrate.py for 0001)
CHAIN_LOCK = 0x436F_6666_7265_0002
EXPORT_LOCK = 0x436F_6666_7265_0003

#: the columns read by verification, export and search (never ``SELECT *``: a later
#: migration may add columns that older code and the 0004 migration do not know)
_COLUMNS = (
    audit_event.c.id, audit_event.c.at, audit_event.c.action, audit_event.c.outcome,
    audit_event.c.actor_kind, audit_event.c.actor_name, audit_event.c.actor_address,
    audit_event.c.facility_id, audit_event.c.object_type, audit_event.c.object_id,
    audit_event.c.person_id, audit_event.c.detail, audit_event.c.prev_hash, audit_event.c.hash,
)


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
    person_id: int | None = None
    prev_hash: str = ""
    hash: str = ""


def _row(r: Any) -> AuditRow:
    return AuditRow(
        id=r.id, at=r.at, action=r.action, outcome=r.outcome, actor_kind=r.actor_kind,
        actor_name=r.actor_name, actor_address=r.actor_address, facility_id=r.facility_id,
        object_type=r.object_type, object_id=r.object_id, detail=json.loads(r.detail),
        person_id=r.person_id, prev_hash=r.prev_hash, hash=r.hash,
    )


# -- the canonical serialisation ------------------------------------------------------


def _instant(at: datetime) -> str:
    """ISO 8601 UTC with microseconds, as both backends store and return it."""
    if at.tzinfo is None:
        raise ValueError("an aware datetime is required")
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical(
    *, id: int, at: datetime, action: str, outcome: str, actor_kind: str, actor_name: str,
    actor_address: str, facility_id: int | None, object_type: str, object_id: str,
    person_id: int | None, detail: str, prev_hash: str,
) -> bytes:
    """The bytes an event's hash covers (version ``v1``).

    ``detail`` is the stored JSON text itself (written canonically: sorted keys, no
    spaces), so re-serialisation can never change a hash.
    """
    fields = [CHAIN_VERSION, id, _instant(at), action, outcome, actor_kind, actor_name, actor_address,
              facility_id, object_type, object_id, person_id, detail, prev_hash]
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def event_hash(**fields: Any) -> str:
    """SHA-256 (hex) of :func:`canonical` of ``fields``."""
    return hashlib.sha256(canonical(**fields)).hexdigest()


def _hash_of(r: Any) -> str:
    return event_hash(
        id=r.id, at=r.at, action=r.action, outcome=r.outcome, actor_kind=r.actor_kind,
        actor_name=r.actor_name, actor_address=r.actor_address, facility_id=r.facility_id,
        object_type=r.object_type, object_id=r.object_id, person_id=r.person_id,
        detail=r.detail, prev_hash=r.prev_hash,
    )


def canonical_detail(detail: Mapping[str, Any]) -> str:
    return json.dumps(dict(detail), sort_keys=True, separators=(",", ":"))


# -- appending ------------------------------------------------------------------------


def _lock_chain(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": CHAIN_LOCK})


#: built once (every stored object and every query appends an event)
_HEAD = select(audit_event.c.id, audit_event.c.hash).order_by(audit_event.c.id.desc()).limit(1)
_INSERT = audit_event.insert()


def _next_link(conn: Connection) -> tuple[int, str]:
    """The id and ``prev_hash`` of the next event; the caller's transaction holds the chain."""
    _lock_chain(conn)
    head = conn.execute(_HEAD).first()
    head_id, head_hash = (int(head.id), str(head.hash)) if head is not None else (0, GENESIS)
    if conn.dialect.name != "postgresql":
        return head_id + 1, head_hash
    next_id = int(conn.execute(text("SELECT nextval(pg_get_serial_sequence('audit_event', 'id'))")).scalar_one())
    if next_id <= head_id:  # rows restored with explicit ids behind the sequence
        next_id = int(conn.execute(
            text("SELECT setval(pg_get_serial_sequence('audit_event', 'id'), :v)"), {"v": head_id + 1}
        ).scalar_one())
    return next_id, head_hash


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
) -> int:
    """Append one event to the chain in ``conn``'s (write) transaction; its id."""
    values: dict[str, Any] = dict(
        at=at,
        action=action[:48],
        outcome=outcome[:16],
        actor_kind=actor_kind[:16],
        actor_name=actor_name[:100],
        actor_address=actor_address[:100],
        facility_id=facility_id,
        object_type=object_type[:32],
        object_id=object_id[:128],
        person_id=person_id,
        detail=canonical_detail(detail),
    )
    event_id, prev_hash = _next_link(conn)
    values.update(id=event_id, prev_hash=prev_hash)
    values["hash"] = event_hash(**values)
    conn.execute(_INSERT, values)
    return event_id


def head(conn: Connection) -> tuple[int, str] | None:
    """The last event of the chain: ``(id, hash)``, or None for an empty trail."""
    row = conn.execute(_HEAD).first()
    return (int(row.id), str(row.hash)) if row is not None else None


def chain_unhashed(conn: Connection) -> int:
    """Chain the events that have no hash yet, in id order (migration of older data).

    Each one is linked to the event just before it by id. Meant for a trail whose
    unhashed events are all at its end (0004 chains a whole pre-existing trail).
    Returns how many events were chained.
    """
    _lock_chain(conn)
    pending = conn.execute(select(audit_event.c.id).where(audit_event.c.hash == "").order_by(audit_event.c.id))
    ids = [int(i) for (i,) in pending]
    if not ids:
        return 0
    before = conn.execute(
        select(audit_event.c.hash).where(audit_event.c.id < ids[0]).order_by(audit_event.c.id.desc()).limit(1)
    ).scalar()
    prev_hash = str(before) if before is not None else GENESIS
    for start in range(0, len(ids), 1000):
        chunk = ids[start:start + 1000]
        rows = conn.execute(select(*_COLUMNS).where(audit_event.c.id.in_(chunk)).order_by(audit_event.c.id))
        for r in list(rows):
            fields = {c.name: getattr(r, c.name) for c in _COLUMNS if c.name != "hash"}
            fields["prev_hash"] = prev_hash
            digest = event_hash(**fields)
            conn.execute(update(audit_event).where(audit_event.c.id == r.id).values(prev_hash=prev_hash, hash=digest))
            prev_hash = digest
    return len(ids)


# -- verification ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Finding:
    #: modified | deleted | reordered | truncated
    kind: str
    event_id: int
    message: str


@dataclass(slots=True)
class ChainReport:
    events: int = 0
    head_id: int | None = None
    head_hash: str = ""
    findings: list[Finding] = field(default_factory=list)
    #: findings beyond the kept ones (a wholly rewritten table yields one per event)
    more_findings: int = 0

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def first_bad_id(self) -> int | None:
        return min((f.event_id for f in self.findings), default=None)


def parse_anchor(anchor: str) -> tuple[int | None, str]:
    """``HASH`` or ``ID:HASH`` (as ``coffre audit head`` prints it) → (id, hash)."""
    text_ = anchor.strip()
    event_id: int | None = None
    if ":" in text_:
        left, text_ = text_.split(":", 1)
        if not left.strip().isdigit():
            raise ValueError("an anchor is HASH or ID:HASH")
        event_id = int(left)
    digest = text_.strip().lower()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError("an anchor hash is 64 hexadecimal digits")
    return event_id, digest


#: rows remembered to recognise reordering (hash -> id); bounds memory on huge trails
_WINDOW = 50_000
_MAX_FINDINGS = 1000


def verify(conn: Connection, *, anchor: str | None = None, batch: int = 2000) -> ChainReport:
    """Stream every event in id order and check the chain.

    - **modified**: the stored hash is not the hash of the event's fields (a field, or
      the event's id, was changed after it was written);
    - **deleted**: the event's ``prev_hash`` is not the hash of the event before it
      (by id): events between them were removed (or one was rewritten and rehashed);
    - **reordered**: the event links to an event found elsewhere in the trail;
    - **truncated**: the ``anchor`` (``[ID:]HASH`` of an earlier head, kept outside
      the archive) is not in the chain: events were removed from the end.

    A gap in ids with an intact link is not a finding (a PostgreSQL sequence skips the
    ids of rolled-back transactions). Without an anchor, removing the newest events
    is undetectable: the remaining chain is intact.
    """
    anchor_id, anchor_hash = parse_anchor(anchor) if anchor else (None, "")
    anchor_found = False
    report = ChainReport()
    findings: list[Finding] = []
    previous_hash, previous_id = GENESIS, None
    seen: OrderedDict[str, int] = OrderedDict()
    forward: dict[str, int] = {}
    breaks: dict[int, int | None] = {}
    stmt = select(*_COLUMNS).order_by(audit_event.c.id)
    for r in conn.execution_options(yield_per=batch).execute(stmt):
        report.events += 1
        if not r.hash:  # not part of the chain: checked against nothing, links skip it
            findings.append(Finding("modified", r.id, f"event #{r.id} has no hash (written outside the chain)"))
            continue
        if r.hash != _hash_of(r):
            findings.append(Finding("modified", r.id, f"event #{r.id} does not match its hash"))
        if r.prev_hash != previous_hash:
            if r.prev_hash in seen:
                findings.append(Finding("reordered", r.id,
                                        f"event #{r.id} follows #{seen[r.prev_hash]} in the chain, not #{previous_id}"))
            else:
                forward[r.prev_hash] = r.id
                breaks[r.id] = previous_id
        if r.hash in forward:
            earlier = forward.pop(r.hash)
            breaks.pop(earlier, None)
            findings.append(Finding("reordered", earlier,
                                    f"event #{earlier} follows #{r.id}, which comes later in the trail"))
        if anchor_hash and r.hash == anchor_hash and anchor_id in (None, r.id):
            anchor_found = True
        seen[r.hash] = r.id
        if len(seen) > _WINDOW:
            seen.popitem(last=False)
        previous_hash, previous_id = r.hash, r.id
    for event_id, before in breaks.items():
        where = f"between #{before} and #{event_id}" if before is not None else f"before #{event_id}"
        findings.append(Finding("deleted", event_id, f"the chain is broken {where}: events were deleted or rewritten"))
    if anchor_hash and not anchor_found:
        at = (previous_id or 0) + 1 if anchor_id is None else anchor_id
        findings.append(Finding("truncated", at, f"the anchor {anchor} is not in the chain: "
                                                 "events were removed from its end (or it was rewritten)"))
    findings.sort(key=lambda f: (f.event_id, f.kind))
    report.findings = findings[:_MAX_FINDINGS]
    report.more_findings = max(0, len(findings) - _MAX_FINDINGS)
    report.head_id, report.head_hash = previous_id, previous_hash
    return report


# -- reading --------------------------------------------------------------------------


def list_events(conn: Connection, *, action: str | None = None, limit: int = 1000) -> list[AuditRow]:
    query = select(*_COLUMNS).order_by(audit_event.c.id).limit(limit)
    if action is not None:
        query = query.where(audit_event.c.action == action)
    return [_row(r) for r in conn.execute(query)]


def search(
    conn: Connection,
    *,
    facility_ids: Iterable[int] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    action: str | None = None,
    actor_name: str | None = None,
    facility_id: int | None = None,
    person_ids: Iterable[int] | None = None,
    after_id: int = 0,
    limit: int = 100,
) -> list[AuditRow]:
    """Events in id (time) order after ``after_id``. ``facility_ids``: the reader's
    scope (None = every event, including those of no facility)."""
    stmt = select(*_COLUMNS).where(audit_event.c.id > after_id).order_by(audit_event.c.id).limit(limit)
    if facility_ids is not None:
        stmt = stmt.where(audit_event.c.facility_id.in_(sorted(set(facility_ids))))
    if since is not None:
        stmt = stmt.where(audit_event.c.at >= since)
    if until is not None:
        stmt = stmt.where(audit_event.c.at < until)
    if action is not None:
        stmt = stmt.where(audit_event.c.action == action)
    if actor_name is not None:
        stmt = stmt.where(audit_event.c.actor_name == actor_name)
    if facility_id is not None:
        stmt = stmt.where(audit_event.c.facility_id == facility_id)
    if person_ids is not None:
        stmt = stmt.where(audit_event.c.person_id.in_(sorted(set(person_ids))))
    return [_row(r) for r in conn.execute(stmt)]


def iter_events_after(conn: Connection, after_id: int, *, limit: int) -> Iterator[AuditRow]:
    """At most ``limit`` events with an id above ``after_id``, in id order (export)."""
    stmt = select(*_COLUMNS).where(audit_event.c.id > after_id).order_by(audit_event.c.id).limit(limit)
    for r in conn.execute(stmt):
        yield _row(r)


def persons_merged_into(conn: Connection, person_id: int) -> list[int]:
    """``person_id`` and the persons merged into it (their older events name them)."""
    merged = conn.execute(select(person.c.id).where(person.c.merged_into == person_id))
    return [person_id, *sorted(int(i) for (i,) in merged)]


# -- the export spool: a cursor and a lease per repository, in archive_state ----------


def _state_key(kind: str, repository: str) -> str:
    return f"audit-{kind}:{hashlib.sha256(repository.encode()).hexdigest()[:32]}"


def _get_state(conn: Connection, key: str) -> dict[str, Any] | None:
    value = conn.execute(select(archive_state.c.value).where(archive_state.c.key == key)).scalar()
    if value is None:
        return None
    doc: dict[str, Any] = json.loads(bytes(value).decode("utf-8"))
    return doc


def _put_state(conn: Connection, key: str, doc: Mapping[str, Any]) -> None:
    value = json.dumps(dict(doc), sort_keys=True).encode("utf-8")
    updated = conn.execute(update(archive_state).where(archive_state.c.key == key).values(value=value))
    if updated.rowcount == 0:
        conn.execute(archive_state.insert().values(key=key, value=value))


def _lock_export(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": EXPORT_LOCK})


def export_cursor(conn: Connection, repository: str) -> int:
    """The id of the last event sent to ``repository`` (0: none yet)."""
    doc = _get_state(conn, _state_key("cursor", repository))
    return int(doc["cursor"]) if doc else 0


def claim_export(conn: Connection, repository: str, owner: str, *, now: datetime, until: datetime) -> bool:
    """Take or renew the export lease of ``repository`` for ``owner`` (a write transaction).

    True when ``owner`` holds it until ``until``; False while another exporter's lease
    runs. One exporter per repository at a time, across processes.
    """
    _lock_export(conn)
    key = _state_key("lease", repository)
    lease = _get_state(conn, key)
    if lease and lease["owner"] != owner and datetime.fromisoformat(lease["until"]) > now:
        return False
    _put_state(conn, key, {"owner": owner, "until": until.astimezone(UTC).isoformat(), "repository": repository})
    return True


def release_export(conn: Connection, repository: str, owner: str) -> None:
    _lock_export(conn)
    key = _state_key("lease", repository)
    lease = _get_state(conn, key)
    if lease and lease["owner"] == owner:
        conn.execute(archive_state.delete().where(archive_state.c.key == key))


def advance_export(conn: Connection, repository: str, upto: int) -> int:
    """Move the cursor of ``repository`` forward to ``upto`` (never backwards); the cursor."""
    _lock_export(conn)
    key = _state_key("cursor", repository)
    doc = _get_state(conn, key)
    current = int(doc["cursor"]) if doc else 0
    if upto > current:
        _put_state(conn, key, {"cursor": upto, "repository": repository})
        return upto
    return current
