"""Composition root: one ``Context`` built from one ``Settings``.

The context is passed explicitly to every service call and to the pynetdicom event
handlers (as handler arguments); nothing in Coffre is a module-level global.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from coffre.index.engine import Database, open_database
from coffre.index.migrate import upgrade
from coffre.settings import Settings
from coffre.storage import BlobStore
from coffre.storage.filesystem import FileSystemBlobStore


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Context:
    settings: Settings
    db: Database
    blobs: BlobStore
    clock: Callable[[], datetime] = utc_now

    def close(self) -> None:
        self.db.dispose()


def build_context(settings: Settings, *, blobs: BlobStore | None = None, migrate: bool = True) -> Context:
    """Open the index (migrating it to the current schema) and the blob store."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = open_database(
        settings.index_url,
        busy_timeout_ms=settings.index.sqlite_busy_timeout_ms,
        pool_size=settings.index.pool_size,
    )
    if migrate:
        upgrade(db)
    if blobs is None:
        blobs = FileSystemBlobStore(settings.blob_path, fsync=settings.storage.fsync)
    return Context(settings=settings, db=db, blobs=blobs)
