"""Reconciliation of the index and the blob store (DESIGN rule 4), and verification.

Both ways:

- every ``stored``/``superseded`` file row must have its blob, with the recorded size
  and SHA-256 (``missing``/``corrupt``: the archive lost something; non-zero exit);
- a ``pending`` row is an ingest that never reached its commit (a crash or a failure
  between the two phases): it was never acknowledged, so with ``repair`` its blob and
  its row are removed;
- a blob that no row names is an orphan (a crash between a blob write and the
  removal of its pending row): reported, and removed with ``repair``.

Pending rows younger than ``grace_seconds`` belong to ingests still in progress and
are left alone; so are the blob store's temporary files (a write interrupted by a
crash leaves one), which ``repair`` removes once older than the grace period.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from coffre.app import Context
from coffre.index import instances as index
from coffre.model import Actor
from coffre.services import audit
from coffre.storage import BlobNotFound

_CHUNK = 1 << 20


@dataclass(slots=True)
class CheckReport:
    files: int = 0
    verified: int = 0
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    #: the blob store's temporary files (interrupted writes)
    temp_files: list[str] = field(default_factory=list)
    repaired: int = 0

    @property
    def ok(self) -> bool:
        """Nothing acknowledged is missing or corrupt."""
        return not self.missing and not self.corrupt


def _digest(ctx: Context, key: str) -> tuple[int, str]:
    sha = hashlib.sha256()
    size = 0
    with ctx.blobs.open(key) as fp:
        while chunk := fp.read(_CHUNK):
            sha.update(chunk)
            size += len(chunk)
    return size, sha.hexdigest()


def check(
    ctx: Context,
    actor: Actor,
    *,
    verify: bool = True,
    repair: bool = False,
    grace_seconds: float = 600.0,
    progress: Callable[[int, int], None] | None = None,
) -> CheckReport:
    report = CheckReport()
    cutoff = ctx.clock() - timedelta(seconds=grace_seconds)
    with ctx.db.read() as tx:
        total = index.count_files(tx)
        rows = list(index.iter_files(tx))
    known: set[str] = set()
    stale: list[index.FileRow] = []
    for done, row in enumerate(rows, 1):
        known.add(row.blob_key)
        report.files += 1
        if row.status == index.PENDING:
            received = row.received_at if row.received_at.tzinfo else row.received_at.replace(tzinfo=cutoff.tzinfo)
            if received <= cutoff:
                report.pending.append(row.blob_key)
                stale.append(row)
        elif not ctx.blobs.exists(row.blob_key):
            report.missing.append(row.blob_key)
        elif verify:
            try:
                size, sha = _digest(ctx, row.blob_key)
            except BlobNotFound:
                report.missing.append(row.blob_key)
            else:
                if size != row.size or sha != row.sha256:
                    report.corrupt.append(row.blob_key)
                else:
                    report.verified += 1
        if progress:
            progress(done, total)
    for key in ctx.blobs.keys():
        if key not in known:
            report.orphans.append(key)
    report.temp_files = ctx.blobs.incomplete_writes()
    if repair:
        report.repaired += ctx.blobs.remove_incomplete_writes(grace_seconds)
        for row in stale:
            ctx.blobs.delete(row.blob_key)
            with ctx.db.write() as tx:
                index.discard_file(tx, row.id)
            report.repaired += 1
        for key in report.orphans:
            ctx.blobs.delete(key)
            report.repaired += 1
    with ctx.db.write() as tx:
        audit.record(ctx, tx, actor, "check", outcome="success" if report.ok else "failure",
                     detail={"files": report.files, "missing": len(report.missing),
                             "corrupt": len(report.corrupt), "pending": len(report.pending),
                             "orphans": len(report.orphans), "repaired": report.repaired})
    return report
