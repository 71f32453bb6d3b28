"""Blob store port: opaque keys to immutable bytes. Knows nothing about DICOM.

Keys are produced by the archive (``facility/<random hex>``), never by a sender, and
are validated by every backend: ``[a-z0-9-]`` segments separated by ``/``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from coffre.errors import CoffreError

_KEY = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}(/[a-z0-9][a-z0-9-]{0,62}){0,3}$")


class BlobNotFound(CoffreError):
    http_status = 404


class InvalidBlobKey(CoffreError):
    http_status = 400


def check_key(key: str) -> str:
    """Return ``key`` if it is a well-formed opaque key, else raise ``InvalidBlobKey``."""
    if not _KEY.fullmatch(key):
        raise InvalidBlobKey("malformed blob key")
    return key


@dataclass(frozen=True, slots=True)
class BlobInfo:
    key: str
    size: int
    sha256: str


class BlobStore(Protocol):
    """The small port every backend implements (filesystem, memory, later S3)."""

    def put(self, key: str, data: bytes, *, sha256: str | None = None) -> BlobInfo:
        """Durably store ``data`` under a new ``key``; fails if the key exists.

        ``sha256``: the caller's digest of ``data``, when it has one already (ingest
        hashes before storing, to find duplicates); the store then does not hash again.
        ``coffre check`` verifies every stored blob against the recorded digest anyway.
        """
        ...

    def open(self, key: str) -> BinaryIO:
        """Open the blob for reading; raise ``BlobNotFound`` if absent."""
        ...

    def read(self, key: str) -> bytes: ...

    def delete(self, key: str) -> None:
        """Remove the blob; absent keys are ignored."""
        ...

    def exists(self, key: str) -> bool: ...

    def keys(self) -> Iterator[str]:
        """Every stored key (for reconciliation); in no particular order."""
        ...

    def incomplete_writes(self) -> list[str]:
        """Names of partial writes left behind (a crash inside ``put``), for reconciliation."""
        ...

    def remove_incomplete_writes(self, older_than_seconds: float) -> int:
        """Remove partial writes older than the given age; how many were removed."""
        ...

    def local_path(self, key: str) -> Path | None:
        """A local file holding the blob's bytes, if the backend has one (zero-copy sends)."""
        ...
