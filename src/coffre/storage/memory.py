"""In-memory blob store for unit tests: same semantics as the persistent backends.

Thread-safe (one lock), keys validated with :func:`coffre.storage.check_key`, a put on
an existing key raises :class:`coffre.errors.AlreadyExists` and leaves the first
content unchanged. Nothing survives the process.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from coffre.errors import AlreadyExists
from coffre.storage import BlobInfo, BlobNotFound, check_key


class MemoryBlobStore:
    """Blobs in a dict guarded by a lock."""

    def __init__(self) -> None:
        self._blobs: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def put(self, key: str, data: bytes, *, sha256: str | None = None) -> BlobInfo:
        check_key(key)
        content = bytes(data)  # a caller's bytearray/memoryview must not alias the store
        digest = sha256 if sha256 is not None else hashlib.sha256(content).hexdigest()
        info = BlobInfo(key=key, size=len(content), sha256=digest)
        with self._lock:
            if key in self._blobs:
                raise AlreadyExists(f"blob {key} already exists")
            self._blobs[key] = content
        return info

    def open(self, key: str) -> BinaryIO:
        return io.BytesIO(self.read(key))

    def read(self, key: str) -> bytes:
        check_key(key)
        with self._lock:
            try:
                return self._blobs[key]
            except KeyError:
                raise BlobNotFound(f"blob {key} not found") from None

    def delete(self, key: str) -> None:
        check_key(key)
        with self._lock:
            self._blobs.pop(key, None)

    def incomplete_writes(self) -> list[str]:
        """A memory put is atomic: it never leaves a partial write."""
        return []

    def remove_incomplete_writes(self, older_than_seconds: float) -> int:
        return 0

    def local_path(self, key: str) -> Path | None:
        """Memory blobs have no file."""
        check_key(key)
        return None

    def exists(self, key: str) -> bool:
        check_key(key)
        with self._lock:
            return key in self._blobs

    def keys(self) -> Iterator[str]:
        """A snapshot of the keys at the time of the call."""
        with self._lock:
            snapshot = list(self._blobs)
        return iter(snapshot)
