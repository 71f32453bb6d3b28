"""``coffre import``: files, folders and DICOMDIRs through the same ingest service.

A DICOMDIR (PS3.10 8.6, PS3.3 F) imports the files its records reference; the
references are resolved inside the DICOMDIR's folder only. In folder walks a file
named ``DICOMDIR`` is skipped (its referenced files are found by the walk itself).
Each file is read whole but only after its size is checked against the bound.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from coffre.app import Context
from coffre.dicom.dicomdir import DICOMDIR_NAME, referenced_files
from coffre.errors import CoffreError, InvalidInstance
from coffre.model import Actor, IngestStatus
from coffre.services.ingest import ingest


@dataclass(slots=True)
class ImportSummary:
    stored: int = 0
    duplicate: int = 0
    new_version: int = 0
    rejected: Counter[str] = field(default_factory=Counter)

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


def collect(paths: list[Path]) -> Iterator[Path]:
    """Every file to import, in a stable order."""
    for path in paths:
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    if name.upper() != DICOMDIR_NAME:
                        yield Path(root) / name
        elif path.name.upper() == DICOMDIR_NAME:
            yield from referenced_files(path)
        else:
            yield path


def import_paths(
    ctx: Context,
    actor: Actor,
    paths: list[Path],
    *,
    progress: Callable[[int, int], None] | None = None,
) -> ImportSummary:
    summary = ImportSummary()
    try:
        files = list(collect(paths))
    except CoffreError as exc:
        summary.rejected[exc.reason] += 1
        return summary
    limit = ctx.settings.limits.max_object_bytes
    for done, path in enumerate(files, 1):
        try:
            if path.stat().st_size > limit:
                raise InvalidInstance("file larger than limits.max_object_bytes")
            data = path.read_bytes()
            result = ingest(ctx, actor, data, source="import")
        except CoffreError as exc:
            summary.rejected[exc.reason] += 1
        except OSError as exc:
            summary.rejected[f"unreadable file ({exc.strerror or type(exc).__name__})"] += 1
        else:
            if result.status is IngestStatus.STORED:
                summary.stored += 1
            elif result.status is IngestStatus.DUPLICATE:
                summary.duplicate += 1
            else:
                summary.new_version += 1
        if progress:
            progress(done, len(files))
    return summary
