"""What WADO-RS reads from the index without opening a blob (DESIGN rule 6, PS3.18 10.4).

At ingest each instance row receives its DICOM JSON without bulk data
(``instance.dicom_json``, PS3.18 F.2, BulkDataURI values relative to the instance) and
the byte ranges of its frames in the blob (``instance.frame_offsets``). The retrieve
use cases first locate the instances of a request within the caller's scope
(:func:`coffre.index.retrieve.locate`, by way of ``services.retrieve.plan``); this
module then reads, by instance id:

- :func:`versions`: what identifies the current content of each instance (its blob
  key and the instant its row last changed), from which the metadata ETag is made;
- :func:`documents`: the stored DICOM JSON documents, in the order asked;
- :func:`frame_offsets`: the frame byte ranges of one instance.

Ids come from a located :class:`~coffre.index.retrieve.InstanceRef`, so scope was
already applied; ids are bound parameters, in batches that every backend accepts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, select

from coffre.errors import InvalidInstance
from coffre.index.schema import instance

#: ids per ``IN (…)`` list: well below SQLite's and PostgreSQL's parameter limits.
BATCH = 500


@dataclass(frozen=True, slots=True)
class Version:
    """What changes when the stored content of an instance changes."""

    id: int
    blob_key: str
    sha256: str
    updated_at: datetime


def _batches(ids: Sequence[int]) -> Iterator[Sequence[int]]:
    for start in range(0, len(ids), BATCH):
        yield ids[start : start + BATCH]


def versions(conn: Connection, ids: Sequence[int]) -> dict[int, Version]:
    """The :class:`Version` of each id (ids no longer in the index are left out)."""
    found: dict[int, Version] = {}
    for batch in _batches(ids):
        stmt = select(
            instance.c.id, instance.c.blob_key, instance.c.sha256, instance.c.updated_at
        ).where(instance.c.id.in_(batch))
        for row in conn.execute(stmt):
            found[row.id] = Version(row.id, row.blob_key, row.sha256, row.updated_at)
    return found


def documents(conn: Connection, ids: Sequence[int]) -> dict[int, str]:
    """The stored DICOM JSON of each id (ids no longer in the index are left out).

    At most :data:`BATCH` ids per call is the intended use: callers stream larger sets
    batch by batch so that a whole study's metadata never sits in memory.
    """
    found: dict[int, str] = {}
    for batch in _batches(ids):
        stmt = select(instance.c.id, instance.c.dicom_json).where(instance.c.id.in_(batch))
        for row in conn.execute(stmt):
            found[row.id] = row.dicom_json
    return found


def frame_offsets(conn: Connection, instance_id: int) -> tuple[tuple[int, int], ...]:
    """``(offset, length)`` of each frame in the blob, as stored at ingest; () when the
    instance has no pixel data or its frames could not be located (deflated syntax,
    undetermined fragment boundaries)."""
    raw = conn.execute(
        select(instance.c.frame_offsets).where(instance.c.id == instance_id)
    ).scalar_one_or_none()
    if not raw:
        return ()
    try:
        value = json.loads(raw)
        return tuple((int(offset), int(length)) for offset, length in value)
    except (ValueError, TypeError):
        raise InvalidInstance("stored frame offsets are malformed") from None
