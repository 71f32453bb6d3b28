"""Filesystem blob store: the embedded default backend.

Layout
------
A key such as ``chu-nord/9f3a0c...`` is stored at::

    ROOT/chu-nord/<h0h1>/<h2h3>/chu-nord~9f3a0c...

* The first folder is the key's first segment (the facility slug), so that one
  facility's blobs can be counted, backed up or moved on their own.
* The two shard folders are the first four hex digits of ``SHA-256(key)``: any key,
  however regular its text, spreads evenly over 65,536 leaf folders per facility.
* The file name is the *whole* key with ``/`` replaced by ``~`` (a character outside
  the key alphabet ``[a-z0-9-/]``), so ``keys()`` recovers every key exactly from the
  file name alone, and a one-segment key still has a name. A key is at most four
  segments of 63 characters, so a name is at most 255 bytes (``NAME_MAX``).

Only text that passed :func:`coffre.storage.check_key` (or hex digits of a hash) ever
becomes part of a path.

Durability (DESIGN.md section 4, rule 4)
----------------------------------------
``put`` writes the bytes to ``.tmp-<uuid>`` in the destination folder (created with
``O_EXCL``), fsyncs it, then hard-links it to the final name -- ``link(2)`` fails if
the name exists, which makes "put never overwrites" atomic even between processes --
unlinks the temporary name and fsyncs the folder. Folders created on the way have
their parent fsynced, so the new entry survives a crash. Any failure removes what the
call wrote and raises :class:`coffre.errors.StorageFailure`; an existing key raises
:class:`coffre.errors.AlreadyExists`. The filesystem must support hard links (every
local POSIX filesystem does).

Files are created ``0o640`` and folders ``0o750`` whatever the process umask.
``delete`` leaves empty folders in place (removing them would race with a concurrent
``put`` into the same shard). A crash can leave ``.tmp-*`` files behind; they are
never listed by ``keys()``, are listed by ``temp_files()`` and removed by
``remove_stale_temp_files()`` (used by ``coffre check``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from coffre.errors import AlreadyExists, StorageFailure
from coffre.storage import BlobInfo, BlobNotFound, InvalidBlobKey, check_key

FILE_MODE = 0o640
DIR_MODE = 0o750
TEMP_PREFIX = ".tmp-"
#: Replaces ``/`` in file names; not in the key alphabet, so decoding is exact.
SEPARATOR = "~"
_CHUNK = 1024 * 1024
_SEGMENT = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_SHARD = re.compile(r"[0-9a-f]{2}")


def _reason(exc: OSError) -> str:
    """An OSError's reason without the file name (paths are not for logs or peers)."""
    if exc.errno is not None:
        return os.strerror(exc.errno)
    return type(exc).__name__


class FileSystemBlobStore:
    """Blobs as files under ``root`` (see the module docstring for the layout)."""

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = Path(root)
        #: fsync files and folders; turn off only in benchmarks.
        self.fsync = fsync
        try:
            if not self.root.is_dir():
                self.root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
                os.chmod(self.root, DIR_MODE)
        except OSError as exc:
            raise StorageFailure(f"cannot create the blob folder: {_reason(exc)}") from None

    # -- paths ---------------------------------------------------------------------

    def path_for(self, key: str) -> Path:
        """The final path of ``key`` (validated); the file may or may not exist."""
        check_key(key)
        digest = hashlib.sha256(key.encode("ascii")).hexdigest()
        first = key.split("/", 1)[0]
        return self.root / first / digest[0:2] / digest[2:4] / key.replace("/", SEPARATOR)

    def _ensure_folder(self, folder: Path) -> None:
        """Create ``folder`` and missing parents below ``root``; fsync each new entry."""
        missing: list[Path] = []
        current = folder
        while current != self.root and not current.is_dir():
            missing.append(current)
            current = current.parent
        for path in reversed(missing):
            try:
                os.mkdir(path, DIR_MODE)
            except FileExistsError:
                continue  # a concurrent put created it; its creator fsyncs the parent
            os.chmod(path, DIR_MODE)
            self._fsync_dir(path.parent)

    def _fsync_dir(self, folder: Path) -> None:
        if not self.fsync:
            return
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- the port ------------------------------------------------------------------

    def put(self, key: str, data: bytes, *, sha256: str | None = None) -> BlobInfo:
        final = self.path_for(key)
        if final.exists():
            raise AlreadyExists(f"blob {key} already exists")
        folder = final.parent
        temp = folder / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
        linked = False
        try:
            self._ensure_folder(folder)
            digest = hashlib.sha256() if sha256 is None else None
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
            fd = os.open(temp, flags, FILE_MODE)
            try:
                os.fchmod(fd, FILE_MODE)
                view = memoryview(data)
                offset = 0
                while offset < len(view):
                    chunk = view[offset : offset + _CHUNK]
                    written = os.write(fd, chunk)
                    if digest is not None:
                        digest.update(chunk[:written])
                    offset += written
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(temp, final)
            except FileExistsError:
                raise AlreadyExists(f"blob {key} already exists") from None
            linked = True
            os.unlink(temp)
            self._fsync_dir(folder)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            if linked:
                # Not known to be durable: take it back so the caller's rollback is whole.
                with contextlib.suppress(OSError):
                    os.unlink(final)
            raise StorageFailure(f"cannot store blob {key}: {_reason(exc)}") from None
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        return BlobInfo(key=key, size=offset, sha256=digest.hexdigest() if digest is not None else str(sha256))

    def open(self, key: str) -> BinaryIO:
        path = self.path_for(key)
        try:
            return open(path, "rb")  # the caller closes it
        except (FileNotFoundError, NotADirectoryError):
            raise BlobNotFound(f"blob {key} not found") from None
        except OSError as exc:
            raise StorageFailure(f"cannot read blob {key}: {_reason(exc)}") from None

    def read(self, key: str) -> bytes:
        with self.open(key) as stream:
            try:
                return stream.read()
            except OSError as exc:
                raise StorageFailure(f"cannot read blob {key}: {_reason(exc)}") from None

    def delete(self, key: str) -> None:
        path = self.path_for(key)
        try:
            os.unlink(path)
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            raise StorageFailure(f"cannot delete blob {key}: {_reason(exc)}") from None
        try:
            self._fsync_dir(path.parent)
        except OSError as exc:
            raise StorageFailure(f"cannot delete blob {key}: {_reason(exc)}") from None

    def local_path(self, key: str) -> Path | None:
        path = self.path_for(key)
        return path if path.is_file() else None

    def exists(self, key: str) -> bool:
        return self.path_for(key).is_file()

    def keys(self) -> Iterator[str]:
        """Every stored key, decoded from file names; foreign or misplaced files are skipped."""
        for leaf in self._leaf_folders():
            for entry in _scan(leaf):
                name = entry.name
                if name.startswith(TEMP_PREFIX) or not entry.is_file(follow_symlinks=False):
                    continue
                key = name.replace(SEPARATOR, "/")
                try:
                    expected = self.path_for(key)
                except InvalidBlobKey:
                    continue
                if expected == Path(entry.path):
                    yield key

    # -- reconciliation ------------------------------------------------------------

    def temp_files(self) -> Iterator[Path]:
        """Temporary files left by interrupted (or running) puts."""
        for leaf in self._leaf_folders():
            for entry in _scan(leaf):
                if entry.name.startswith(TEMP_PREFIX) and entry.is_file(follow_symlinks=False):
                    yield Path(entry.path)

    def incomplete_writes(self) -> list[str]:
        return [path.name for path in self.temp_files()]

    def remove_incomplete_writes(self, older_than_seconds: float) -> int:
        return self.remove_stale_temp_files(older_than_seconds)

    def remove_stale_temp_files(
        self, older_than_seconds: float, *, now: float | None = None
    ) -> int:
        """Remove temporary files last modified more than ``older_than_seconds`` ago.

        Choose an age well above the longest possible put so that a running put is never
        disturbed. Returns how many files were removed.
        """
        limit = (time.time() if now is None else now) - older_than_seconds
        removed = 0
        for path in list(self.temp_files()):
            try:
                if path.stat().st_mtime < limit:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise StorageFailure(f"cannot remove a temporary file: {_reason(exc)}") from None
        return removed

    def _leaf_folders(self) -> Iterator[Path]:
        for top in _scan(self.root):
            if not (_SEGMENT.fullmatch(top.name) and top.is_dir(follow_symlinks=False)):
                continue
            for mid in _scan(Path(top.path)):
                if not (_SHARD.fullmatch(mid.name) and mid.is_dir(follow_symlinks=False)):
                    continue
                for leaf in _scan(Path(mid.path)):
                    if _SHARD.fullmatch(leaf.name) and leaf.is_dir(follow_symlinks=False):
                        yield Path(leaf.path)


def _scan(folder: Path) -> list[os.DirEntry[str]]:
    """Entries of ``folder``; one that vanished meanwhile is empty, other errors fail."""
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise StorageFailure(f"cannot list blobs: {_reason(exc)}") from None
