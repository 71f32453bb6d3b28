"""Storage used and exams received per facility and month: the territory shares the cost.

:func:`usage_by_month` answers one row per facility in the caller's scope and per
calendar month (UTC) of the period, months without activity included:

``studies``
    studies received in the month: studies whose *first* instance the archive received
    in the month (``study.created_at``). A study completed over two months counts once,
    in its first month.
``instances``
    objects stored in the month: every object the archive received and keeps
    (``instance_file`` rows ``stored`` or ``superseded``, by ``received_at``). A new
    version of an instance counts again (its blob is kept besides the older one); an
    identical copy sent again does not (it is not stored twice); an ingest that failed
    or is still in flight does not.
``bytes_received``
    the bytes of those objects, as received (original transfer syntax).
``bytes_stored``
    the bytes the facility's blobs occupy at the end of the month: every object held
    today that arrived before the first instant of the next month. Coffre deletes no
    blob yet, so this is the storage at the end of the month; once a retention rule
    removes blobs, past months will count only the blobs still held.

Counts come from SQL ``GROUP BY`` on the index (``index/usage.py``), never from the
blob store. Authorization (``services.access``): the territory admin (and the
operator) sees every facility; a facility admin sees its own facilities
(``MANAGE_FACILITY``); anyone else is refused. Reading usage is not patient data and
is not audited.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from coffre.app import Context
from coffre.errors import BadRequest
from coffre.index import facilities as facility_index
from coffre.index import usage as index
from coffre.model import Actor
from coffre.services.access import Action, Resource, authorize, is_allowed

#: the longest period one call covers (ten years of months)
MAX_MONTHS = 120
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
#: CSV cells starting with these are formulas to a spreadsheet (OWASP "CSV injection")
_FORMULA = ("=", "+", "-", "@", "\t", "\r")
CSV_COLUMNS = ("facility", "facility_name", "month", "studies", "instances", "bytes_received", "bytes_stored")


@dataclass(frozen=True, slots=True, order=True)
class Month:
    """A calendar month (UTC)."""

    year: int
    month: int

    def __post_init__(self) -> None:
        if not (1 <= self.month <= 12 and 1970 <= self.year <= 9998):
            raise BadRequest("a month is YYYY-MM (1970-01 to 9998-12)")

    @staticmethod
    def parse(text: str) -> Month:
        """``YYYY-MM`` → Month (``BadRequest`` otherwise)."""
        found = _MONTH.match(text.strip()) if len(text) <= 16 else None
        if found is None:
            raise BadRequest("a month is YYYY-MM")
        return Month(int(found.group(1)), int(found.group(2)))

    @staticmethod
    def of(instant: datetime) -> Month:
        """The month (UTC) of an aware instant."""
        utc = instant.astimezone(UTC)
        return Month(utc.year, utc.month)

    @property
    def start(self) -> datetime:
        """Its first instant (UTC)."""
        return datetime(self.year, self.month, 1, tzinfo=UTC)

    def next(self) -> Month:
        return Month(self.year + self.month // 12, self.month % 12 + 1)

    def minus(self, months: int) -> Month:
        """The month ``months`` before this one."""
        index = self.year * 12 + self.month - 1 - months
        return Month(index // 12, index % 12 + 1)

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One facility in one month (module doc for the meaning of each number)."""

    facility: str
    facility_name: str
    #: ``YYYY-MM`` (UTC)
    month: str
    studies: int
    instances: int
    bytes_received: int
    bytes_stored: int


def months(since: Month, until: Month) -> list[Month]:
    """Every month from ``since`` to ``until`` included (at most :data:`MAX_MONTHS`)."""
    if until < since:
        raise BadRequest("the period ends before it starts")
    found = [since]
    while found[-1] < until:
        if len(found) >= MAX_MONTHS:
            raise BadRequest(f"a period covers at most {MAX_MONTHS} months")
        found.append(found[-1].next())
    return found


def usage_scope(actor: Actor) -> frozenset[int] | None:
    """The facilities whose usage ``actor`` may read; None = all (module doc)."""
    authorize(actor, Action.MANAGE_FACILITY, Resource(None))
    if is_allowed(actor, Action.MANAGE_TERRITORY, Resource(None)):
        return None
    return frozenset(f for f in actor.facility_ids if is_allowed(actor, Action.MANAGE_FACILITY, Resource(f)))


def usage_by_month(ctx: Context, actor: Actor, since: Month, until: Month) -> list[UsageRow]:
    """Rows by month, then facility slug, for every month of ``[since, until]`` and every
    facility of the actor's scope (module doc)."""
    scope = usage_scope(actor)
    period = months(since, until)
    start, end = period[0].start, period[-1].next().start
    with ctx.db.read() as tx:
        facilities = [f for f in facility_index.list_facilities(tx) if scope is None or f.id in scope]
        ids = [f.id for f in facilities]
        received = index.received_by_month(tx, start=start, end=end, facility_ids=ids)
        stored = index.held_before(tx, before=start, facility_ids=ids)
    by_key = {(r.facility_id, r.month): r for r in received}
    rows: list[UsageRow] = []
    for month in period:
        label = str(month)
        for fac in facilities:
            got = by_key.get((fac.id, label), index.Received(fac.id, label))
            stored[fac.id] = stored.get(fac.id, 0) + got.bytes
            rows.append(UsageRow(facility=fac.slug, facility_name=fac.name, month=label, studies=got.studies,
                                 instances=got.instances, bytes_received=got.bytes,
                                 bytes_stored=stored[fac.id]))
    return rows


def _cell(value: object) -> str:
    text = str(value)
    return "'" + text if text.startswith(_FORMULA) else text


def to_csv(rows: Iterable[UsageRow], columns: Sequence[str] = CSV_COLUMNS) -> str:
    """The rows as CSV (RFC 4180, header first, ``\\r\\n``); text that a spreadsheet
    would take for a formula is prefixed with ``'``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(getattr(row, name)) for name in columns])
    return buffer.getvalue()


__all__ = ["CSV_COLUMNS", "MAX_MONTHS", "Month", "UsageRow", "months", "to_csv", "usage_by_month", "usage_scope"]
