"""Ingest: the two-phase store shared by C-STORE, STOW-RS and ``coffre import``.

DESIGN rule 4, in order:

1. validate the encoded object with the bounded parser (``dicom.instance``), before
   any IO; check it matches what the transport announced (PS3.4 B.2.3 0xA900);
2. in one short transaction: if these exact bytes are already archived for the
   facility, idempotent success (audited), no second blob; else
3. reserve a ``pending`` file row;
4. write the blob (temp file, fsync, rename; fsync of the folder);
5. in one transaction: index patient/study/series/instance, link a new local identity
   to its person (qualified INS match, else a new person with possible matches queued
   for reconciliation; ``index/matching.py``), mark the file ``stored``, record the
   audit event (with the identity outcome: ids only); commit;
6. only then return success. On any failure after 3 the blob and the pending row are
   removed and ``StorageFailure`` is raised: nothing half-written is left, and nothing
   not acknowledged is kept. A crash between 3 and 5 leaves a pending row that
   ``coffre check`` reconciles.

The original bytes are archived exactly as received (DESIGN rule 7).
"""

from __future__ import annotations

import hashlib
import logging
import secrets

from coffre.app import Context
from coffre.dicom.instance import ParsedInstance, parse_instance
from coffre.errors import CoffreError, NotAuthorized, SOPClassMismatch, StorageFailure, TooLarge
from coffre.index import instances as index
from coffre.model import Actor, Facility, IngestResult, IngestStatus
from coffre.services import audit
from coffre.services.access import Action, Resource, authorize

log = logging.getLogger(__name__)

_STATUS = {
    index.Outcome.NEW: IngestStatus.STORED,
    index.Outcome.DUPLICATE: IngestStatus.DUPLICATE,
    index.Outcome.NEW_VERSION: IngestStatus.NEW_VERSION,
}


def new_blob_key(facility: Facility) -> str:
    """An opaque key prefixed by the facility (DESIGN rule 1); never derived from UIDs."""
    return f"{facility.slug}/{secrets.token_hex(16)}"


def ingest(
    ctx: Context,
    actor: Actor,
    data: bytes,
    *,
    source: str,
    expected_sop_class: str | None = None,
    expected_sop_instance: str | None = None,
    audit_refusals: bool = True,
) -> IngestResult:
    """Validate, durably archive and index one Part 10 object for the actor's facility.

    ``audit_refusals=False``: the caller audits refused objects itself (STOW-RS writes
    one event per request, so that a body of many bad parts costs no write per part).
    """
    facility = actor.facility
    if facility is None:
        raise NotAuthorized("the caller is not bound to a facility")
    try:
        authorize(actor, Action.STORE, Resource(facility.id))
        parsed = _validate(ctx, data, expected_sop_class, expected_sop_instance)
    except CoffreError as exc:
        if audit_refusals:
            _audit_refusal(ctx, actor, facility, exc, source)
        raise
    sha256 = hashlib.sha256(data).hexdigest()

    key = new_blob_key(facility)
    now = ctx.clock()
    with ctx.db.write() as tx:
        # one transaction for the duplicate check and the reservation (was a read, then a
        # write: one fewer BEGIN/COMMIT per stored object)
        existing = index.find_stored_copy(tx, facility.id, parsed.sop_instance_uid, sha256)
        if existing is not None:
            audit.record(ctx, tx, actor, "store", facility_id=facility.id, object_type="instance",
                         object_id=parsed.sop_instance_uid, detail={"status": "duplicate", "source": source})
        else:
            file_pk = index.reserve_file(
                tx, facility_id=facility.id, sop_instance_uid=parsed.sop_instance_uid,
                blob_key=key, size=len(data), sha256=sha256, source=source, now=now,
            )
    if existing is not None:
        return _result(IngestStatus.DUPLICATE, parsed, sha256, len(data), existing)
    written = False
    try:
        ctx.blobs.put(key, data, sha256=sha256)
        written = True
        with ctx.db.write() as tx:
            committed = index.commit_instance(
                tx, facility_id=facility.id, default_issuer=facility.issuer, file_pk=file_pk,
                blob_key=key, size=len(data), sha256=sha256, source=source, parsed=parsed, now=now,
                actor=f"{actor.kind.value}:{actor.name}",
            )
            if committed.outcome is index.Outcome.DUPLICATE:
                # a concurrent association archived the same bytes first
                index.discard_file(tx, file_pk)
            detail = {"status": _STATUS[committed.outcome].value, "source": source,
                      "sha256": sha256, "size": len(data), "study": parsed.study_instance_uid}
            identity = committed.identity
            if identity is not None:
                detail.update(identity.audit_detail())
            audit.record(ctx, tx, actor, "store", facility_id=facility.id, object_type="instance",
                         object_id=parsed.sop_instance_uid,
                         person_id=identity.person_id if identity is not None else None, detail=detail)
    except Exception as exc:
        _undo(ctx, key, file_pk, written)
        log.error("store failed for %s: %s", actor.describe(), type(exc).__name__)
        raise StorageFailure("the object could not be durably stored; nothing was kept") from exc
    if committed.outcome is index.Outcome.DUPLICATE:
        ctx.blobs.delete(key)
    return _result(_STATUS[committed.outcome], parsed, sha256, len(data), committed.instance_pk)


def _validate(
    ctx: Context, data: bytes, expected_sop_class: str | None, expected_sop_instance: str | None
) -> ParsedInstance:
    limits = ctx.settings.limits
    if len(data) > limits.max_object_bytes:
        raise TooLarge(f"object of {len(data)} bytes exceeds limits.max_object_bytes")
    parsed = parse_instance(data, limits)
    if expected_sop_class is not None and parsed.sop_class_uid != expected_sop_class:
        raise SOPClassMismatch("SOPClassUID of the dataset differs from the affected SOP Class")
    if expected_sop_instance is not None and parsed.sop_instance_uid != expected_sop_instance:
        raise SOPClassMismatch("SOPInstanceUID of the dataset differs from the affected SOP Instance")
    return parsed


def _undo(ctx: Context, key: str, file_pk: int, written: bool) -> None:
    """Remove what phase one and the blob write left, so nothing half-written remains."""
    if written:
        try:
            ctx.blobs.delete(key)
        except Exception:  # coffre check removes it later
            log.exception("could not remove blob after a failed store")
    try:
        with ctx.db.write() as tx:
            index.discard_file(tx, file_pk)
    except Exception:  # coffre check removes the pending row later
        log.exception("could not remove pending file row after a failed store")


def _audit_refusal(ctx: Context, actor: Actor, facility: Facility, exc: CoffreError, source: str) -> None:
    try:
        audit.record_alone(ctx, actor, "store", outcome="refused", facility_id=facility.id,
                           object_type="instance",
                           detail={"reason": exc.reason, "error": type(exc).__name__, "source": source})
    except Exception:
        log.exception("could not audit a refused store")


def _result(status: IngestStatus, parsed: ParsedInstance, sha256: str, size: int, pk: int) -> IngestResult:
    return IngestResult(
        status=status,
        sop_instance_uid=parsed.sop_instance_uid,
        sop_class_uid=parsed.sop_class_uid,
        study_instance_uid=parsed.study_instance_uid,
        series_instance_uid=parsed.series_instance_uid,
        sha256=sha256,
        size=size,
        instance_id=pk,
        warnings=parsed.warnings,
    )
